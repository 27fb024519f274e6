//! Route configurations: one per HTTP route name, with a virtual host per host
//! (`host:port`) holding the routes of every VirtualService bound to the servers.
use super::gateways::{Server, strip_namespace};
use super::http_route::{self, References, RouteTarget};
use super::names;
use super::pb;
use super::scope::Scope;
use crate::config::Diagnostic;
use crate::config::hosts;
use crate::xds::pb::envoy::config::route::v3 as route;
use std::collections::BTreeMap;

/// Istio's limit on direct response bodies (1 MiB).
pub const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// Builds the route configuration `name` for the servers that share it.
pub fn route_configuration(
    scope: &Scope,
    name: &str,
    servers: &[&Server],
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> route::RouteConfiguration {
    // host -> virtual host, in host order (Istio keys its dedup map by host).
    let mut vhosts: BTreeMap<String, route::VirtualHost> = BTreeMap::new();
    // (gateway, vs namespace, vs name) -> routes, built once per gateway.
    let mut cache: BTreeMap<(String, String, String), Option<Vec<route::Route>>> = BTreeMap::new();
    let port = servers.first().map(|s| s.port).unwrap_or_default();

    for server in servers {
        let https_redirect = server.spec.tls.as_ref().is_some_and(|t| t.https_redirect);
        for vs in scope.virtual_services_for_gateway(&server.gateway_name) {
            let server_hosts = hosts_for_namespace(&server.hosts, &vs.res.meta.namespace);
            let common = intersection_with(&server_hosts, vs);
            if common.is_empty() {
                continue;
            }
            let key = (
                server.gateway_name.clone(),
                vs.res.meta.namespace.clone(),
                vs.res.meta.name.clone(),
            );
            let routes = cache
                .entry(key)
                .or_insert_with(|| {
                    http_route::build_routes(
                        scope,
                        vs,
                        &RouteTarget {
                            port: server.port,
                            gateway_name: &server.gateway_name,
                            is_tls: server.spec.tls.is_some(),
                        },
                        diagnostics,
                        references,
                    )
                })
                .clone();
            let Some(routes) = routes else { continue };
            for host in common {
                let host = host.to_ascii_lowercase();
                let vh = vhosts
                    .entry(host.clone())
                    .or_insert_with(|| route::VirtualHost {
                        name: names::virtual_host_name(&host, server.port),
                        domains: vec![host.clone()],
                        include_request_attempt_count: true,
                        ..Default::default()
                    });
                vh.routes.extend(routes.iter().cloned());
                if https_redirect {
                    vh.require_tls = route::virtual_host::TlsRequirementType::All as i32;
                }
            }
        }
        // Hosts that redirect to HTTPS get a virtual host even without routes.
        if https_redirect {
            for host in &server.hosts {
                let host = strip_namespace(host).to_ascii_lowercase();
                let vh = vhosts
                    .entry(host.clone())
                    .or_insert_with(|| route::VirtualHost {
                        name: names::virtual_host_name(&host, server.port),
                        domains: vec![host.clone()],
                        include_request_attempt_count: true,
                        ..Default::default()
                    });
                vh.require_tls = route::virtual_host::TlsRequirementType::All as i32;
            }
        }
    }

    let mut virtual_hosts: Vec<route::VirtualHost> = if vhosts.is_empty() {
        // Nothing bound: answer 404 (no route) for everything.
        vec![route::VirtualHost {
            name: names::virtual_host_name("blackhole", port),
            domains: vec!["*".into()],
            ..Default::default()
        }]
    } else {
        collapse_duplicates(vhosts)
            .into_iter()
            .map(|mut vh| {
                vh.routes = catch_all_last(std::mem::take(&mut vh.routes));
                vh
            })
            .collect()
    };
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));

    route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(pb::boolv(false)),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: Some(pb::u32v(MAX_DIRECT_RESPONSE_BODY_BYTES)),
        ..Default::default()
    }
}

/// Server hosts that apply to VirtualServices of `namespace` (Istio's `NamesForNamespace`).
fn hosts_for_namespace(hosts: &[String], namespace: &str) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| match h.split_once('/') {
            Some((ns, host)) if ns == namespace || ns == "*" => Some(host.to_string()),
            Some(_) => None,
            None => Some(h.clone()),
        })
        .collect()
}

/// Istio's host intersection: for each pair that overlaps, the more specific name.
fn intersection(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = Picks::default();
    for x in a {
        pairs_with(x, b, &mut out);
    }
    out.list
}

/// [`intersection`] of server hosts with a VirtualService's hosts, without comparing
/// every pair: a name that is not a wildcard meets the VirtualService's exact names in
/// one look-up (only wildcards on either side are compared one by one).
fn intersection_with(
    a: &[String],
    vs: &crate::translate::scope::BoundVirtualService<'_>,
) -> Vec<String> {
    if vs.exact_hosts.len() != vs.hosts.len() {
        return intersection(a, &vs.hosts);
    }
    let mut out = Picks::default();
    for x in a {
        if hosts::is_wildcard(x) {
            pairs_with(x, &vs.hosts, &mut out);
        } else if vs.exact_hosts.contains(x) {
            out.push(x);
        }
    }
    out.list
}

/// The names picked so far, in order, each once.
#[derive(Default)]
struct Picks {
    list: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl Picks {
    fn push(&mut self, h: &str) {
        if !self.seen.contains(h) {
            self.seen.insert(h.to_string());
            self.list.push(h.to_string());
        }
    }
}

/// The picks of `x` against each of `b`, in `b`'s order.
fn pairs_with(x: &str, b: &[String], out: &mut Picks) {
    for y in b {
        if hosts::is_subset_of(x, y) {
            out.push(x);
        } else if hosts::is_subset_of(y, x) {
            out.push(y);
        }
    }
}

/// Virtual hosts with identical routes merge into one with several domains (Istio's
/// route collapse); the alphabetically first host names the result.
fn collapse_duplicates(vhosts: BTreeMap<String, route::VirtualHost>) -> Vec<route::VirtualHost> {
    let mut out: Vec<route::VirtualHost> = Vec::with_capacity(vhosts.len());
    // Candidates are found by a fingerprint of the routes, then compared whole: a gateway
    // with thousands of hosts must not compare every pair.
    let mut by_print: std::collections::HashMap<u64, Vec<usize>> = std::collections::HashMap::new();
    for (_, vh) in vhosts {
        let print = fingerprint(&vh);
        let candidates = by_print.entry(print).or_default();
        if let Some(&i) = candidates.iter().find(|&&i| {
            let e = &out[i];
            e.routes == vh.routes
                && e.require_tls == vh.require_tls
                && e.include_request_attempt_count == vh.include_request_attempt_count
        }) {
            out[i].domains.extend(vh.domains);
        } else {
            candidates.push(out.len());
            out.push(vh);
        }
    }
    out
}

/// A cheap summary of a virtual host's routes: equal routes have equal fingerprints.
fn fingerprint(vh: &route::VirtualHost) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        vh.routes.len(),
        vh.require_tls,
        vh.include_request_attempt_count,
    )
        .hash(&mut h);
    for r in &vh.routes {
        r.name.hash(&mut h);
        if let Some(m) = &r.r#match {
            format!("{:?}", m.path_specifier).hash(&mut h);
        }
        match &r.action {
            Some(route::route::Action::Route(a)) => match &a.cluster_specifier {
                Some(route::route_action::ClusterSpecifier::Cluster(c)) => c.hash(&mut h),
                Some(route::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    for c in &w.clusters {
                        c.name.hash(&mut h);
                        c.weight.map(|w| w.value).hash(&mut h);
                    }
                }
                _ => {}
            },
            Some(route::route::Action::Redirect(r)) => r.response_code.hash(&mut h),
            Some(route::route::Action::DirectResponse(d)) => d.status.hash(&mut h),
            _ => {}
        }
    }
    h.finish()
}

/// Catch-all routes move to the end (keeping their order), so that routes from a later
/// VirtualService for the same host stay reachable.
fn catch_all_last(routes: Vec<route::Route>) -> Vec<route::Route> {
    let (all, specific): (Vec<_>, Vec<_>) = routes.into_iter().partition(http_route::is_catch_all);
    specific.into_iter().chain(all).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_intersection_and_namespaces() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            intersection(&s(&["*.foo.com"]), &s(&["a.foo.com", "b.bar.com"])),
            s(&["a.foo.com"])
        );
        assert_eq!(
            intersection(&s(&["a.foo.com", "b.foo.com"]), &s(&["*.foo.com"])),
            s(&["a.foo.com", "b.foo.com"])
        );
        assert_eq!(intersection(&s(&["*"]), &s(&["x.com"])), s(&["x.com"]));
        assert!(intersection(&s(&["a.com"]), &s(&["b.com"])).is_empty());
        assert_eq!(
            hosts_for_namespace(&s(&["ns1/a.com", "b.com", "ns2/c.com"]), "ns1"),
            s(&["a.com", "b.com"])
        );
    }
}
