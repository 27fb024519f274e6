//! A sidecar's outbound route tables (istiod's `BuildSidecarOutboundVirtualHosts`): one
//! per HTTP port (`9080`), with a virtual host per service on that port
//! (`reviews.shop.svc.cluster.local:9080`) answering to every name an application may
//! use for it (`reviews`, `reviews.shop`, `reviews.shop.svc`, the FQDN with and without
//! its final dot, the service's addresses); the routes of the mesh VirtualService for the
//! host (built by the gateway's route builder), else a default route to its cluster; and
//! last `allow_any` (to `PassthroughCluster`) or `block_all` (502) for every other host.
//!
//! Like istiod, domains carry no `:PORT` (the table sets `ignore_port_in_host_matching`,
//! so Envoy never compares the port).
use super::super::http_route::{self, References, RouteTarget};
use super::super::names;
use super::super::pb;
use super::super::routes::MAX_DIRECT_RESPONSE_BODY_BYTES;
use super::super::scope::{BoundVirtualService, Scope};
use super::egress::Imports;
use super::outbound::MESH;
use crate::config::Diagnostic;
use crate::config::hosts;
use crate::config::mesh::OutboundMode;
use crate::registry::Service;
use crate::xds::pb::envoy::config::route::v3 as route;
use std::collections::{BTreeMap, HashSet};

/// Name of the catch-all virtual host (and route) of ALLOW_ANY.
pub const ALLOW_ANY: &str = "allow_any";
/// Name of the catch-all virtual host (and route) of REGISTRY_ONLY.
pub const BLOCK_ALL: &str = "block_all";

/// Virtual hosts that share routes (istiod's `VirtualHostWrapper`).
struct Wrapper<'a> {
    services: Vec<&'a Service>,
    /// VirtualService hosts that name no service on the port.
    vs_hosts: Vec<String>,
    routes: Vec<route::Route>,
}

/// Route table `name` of listener port `port`. `sniffed_host` is set for the table of
/// one service on a port of unknown protocol (`HOST:PORT`): it holds that service only,
/// for every host name, and no catch-all.
pub fn route_configuration(
    scope: &Scope,
    imports: &Imports,
    name: &str,
    port: u32,
    sniffed_host: Option<&str>,
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> route::RouteConfiguration {
    let mut virtual_hosts = match imports.listener_for_port(port) {
        Some(egress) => {
            let services: BTreeMap<String, &Service> = egress
                .services
                .iter()
                .filter(|s| s.ports.iter().any(|p| p.number == port))
                .map(|s| (s.service.hostname.to_ascii_lowercase(), s.service))
                .collect();
            let wrappers = wrappers(
                scope,
                &egress.virtual_services,
                services,
                port,
                diagnostics,
                references,
            );
            build_virtual_hosts(scope, wrappers, port)
        }
        None => Vec::new(),
    };
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    match sniffed_host {
        Some(host) => {
            let route_name = format!("{host}:{port}");
            virtual_hosts.retain(|vh| vh.domains.iter().any(|d| *d == route_name || d == host));
            if virtual_hosts.len() == 1 {
                virtual_hosts[0].domains = vec!["*".to_string()];
            }
        }
        None => virtual_hosts.push(catch_all_virtual_host(imports.mode)),
    }
    route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(pb::boolv(false)),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: Some(pb::u32v(MAX_DIRECT_RESPONSE_BODY_BYTES)),
        ..Default::default()
    }
}

/// istiod's `BuildSidecarVirtualHostWrapper`: first the VirtualServices, each with the
/// services on the port it names, then a default route for every other service.
fn wrappers<'a>(
    scope: &Scope,
    virtual_services: &[&BoundVirtualService<'_>],
    mut services: BTreeMap<String, &'a Service>,
    port: u32,
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> Vec<Wrapper<'a>> {
    // Istio's historical exception: on port 80 every VirtualService counts, so that
    // hosts outside the registry can be routed.
    let selected: Vec<&BoundVirtualService> = virtual_services
        .iter()
        .copied()
        .filter(|vs| port == 80 || names_a_service(vs, &services))
        .collect();
    let most_specific = most_specific_virtual_service(&selected, &services);
    let mut out = Vec::new();
    for vs in &selected {
        let target = RouteTarget {
            port,
            gateway_name: MESH,
            is_tls: false,
        };
        let Some(routes) = http_route::build_routes(scope, vs, &target, diagnostics, references)
        else {
            continue;
        };
        let (vs_hosts, matched) = separate_hosts(vs, &services, &most_specific);
        let matched: Vec<&'a Service> = matched
            .into_iter()
            .filter(|s| s.port(port).is_some_and(|p| serves_http(&p.protocol)))
            .collect();
        if matched.is_empty() && port != 80 {
            continue;
        }
        out.push(Wrapper {
            services: matched,
            vs_hosts,
            routes,
        });
    }
    for w in &out {
        for s in &w.services {
            services.remove(&s.hostname.to_ascii_lowercase());
        }
    }
    for service in services.values() {
        if service.port(port).is_some_and(|p| serves_http(&p.protocol)) {
            out.push(Wrapper {
                services: vec![service],
                vs_hosts: Vec::new(),
                routes: vec![http_route::default_outbound_route(scope, service, port)],
            });
        }
    }
    out
}

/// HTTP, or unknown and maybe HTTP (istiod's `IsHTTPOrSniffed`).
fn serves_http(p: &crate::registry::Protocol) -> bool {
    p.is_http() || matches!(p, crate::registry::Protocol::Unsupported(_))
}

/// Whether one of a VirtualService's hosts names one of the services (istiod's
/// `selectVirtualServices`).
fn names_a_service(vs: &BoundVirtualService, services: &BTreeMap<String, &Service>) -> bool {
    vs.hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        services.contains_key(&h)
            || services
                .keys()
                .any(|s| (hosts::is_wildcard(&h) || hosts::is_wildcard(s)) && hosts::matches(&h, s))
    })
}

/// For each service, the VirtualService (by namespace/name) whose host names it most
/// specifically: its exact name, else the longest wildcard; the first one on ties.
fn most_specific_virtual_service(
    virtual_services: &[&BoundVirtualService],
    services: &BTreeMap<String, &Service>,
) -> BTreeMap<String, (String, String)> {
    let mut exact: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut wildcard: BTreeMap<String, (String, String)> = BTreeMap::new();
    for vs in virtual_services {
        let key = (vs.res.meta.namespace.clone(), vs.res.meta.name.clone());
        for h in &vs.hosts {
            let index = if hosts::is_wildcard(h) {
                &mut wildcard
            } else {
                &mut exact
            };
            index.entry(h.to_ascii_lowercase()).or_insert(key.clone());
        }
    }
    let mut out = BTreeMap::new();
    for svc in services.keys() {
        let found = if hosts::is_wildcard(svc) {
            wildcard
                .get(svc)
                .cloned()
                .or_else(|| longest_wildcard(&svc[1..], &wildcard))
        } else {
            exact
                .get(svc)
                .cloned()
                .or_else(|| longest_wildcard(svc, &wildcard))
        };
        if let Some(f) = found {
            out.insert(svc.clone(), f);
        }
    }
    out
}

fn longest_wildcard(
    needle: &str,
    wildcard: &BTreeMap<String, (String, String)>,
) -> Option<(String, String)> {
    wildcard
        .iter()
        .filter(|(h, _)| needle.ends_with(&h[1..]))
        .max_by_key(|(h, _)| h.len())
        .map(|(_, v)| v.clone())
}

/// istiod's `separateVSHostsAndServices`: the services a VirtualService's hosts name on
/// the port (a wildcard only those it names most specifically), and the hosts that
/// name none.
fn separate_hosts<'a>(
    vs: &BoundVirtualService,
    services: &BTreeMap<String, &'a Service>,
    most_specific: &BTreeMap<String, (String, String)>,
) -> (Vec<String>, Vec<&'a Service>) {
    let key = (vs.res.meta.namespace.clone(), vs.res.meta.name.clone());
    let mut other_hosts = Vec::new();
    let mut matched: Vec<&'a Service> = Vec::new();
    let mut wildcards = Vec::new();
    for h in &vs.hosts {
        let h = h.to_ascii_lowercase();
        if hosts::is_wildcard(&h) {
            wildcards.push(h);
        } else if let Some(s) = services.get(&h) {
            matched.push(s);
        } else {
            other_hosts.push(h);
        }
    }
    for h in wildcards {
        let mut found = false;
        for (svc_host, svc) in services {
            if !hosts::matches(svc_host, &h) {
                continue;
            }
            found = true;
            if most_specific.get(svc_host) == Some(&key) {
                matched.push(svc);
            }
        }
        if !found {
            other_hosts.push(h);
        }
    }
    (other_hosts, matched)
}

/// The virtual hosts of the wrappers, each domain claimed once (first come first
/// served, as istiod's `dedupeDomains`).
fn build_virtual_hosts(
    scope: &Scope,
    wrappers: Vec<Wrapper>,
    port: u32,
) -> Vec<route::VirtualHost> {
    let proxy_domain = format!("{}.svc.{}", scope.namespace, scope.domain_suffix);
    let mut names_seen: HashSet<String> = HashSet::new();
    let mut domains_seen: HashSet<String> = HashSet::new();
    let mut known_fqdn: HashSet<String> = HashSet::new();
    for w in &wrappers {
        for s in &w.services {
            known_fqdn.insert(names::virtual_host_name(&s.hostname, port));
            known_fqdn.insert(s.hostname.clone());
        }
    }
    let mut out = Vec::new();
    for w in wrappers {
        if w.routes.is_empty() {
            continue;
        }
        let mut candidates: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        for h in &w.vs_hosts {
            candidates.push((h.clone(), vec![ipv6_compliant(h)], Vec::new()));
        }
        for s in &w.services {
            let (domains, alt) = service_domains(s, &proxy_domain);
            candidates.push((s.hostname.clone(), domains, alt));
        }
        for (host, domains, alt) in candidates {
            let name = names::virtual_host_name(&host, port);
            if !names_seen.insert(name.clone()) {
                continue;
            }
            let domains: Vec<String> = domains
                .into_iter()
                .filter(|d| {
                    let lower = d.to_ascii_lowercase();
                    if domains_seen.contains(&lower) || (alt.contains(d) && known_fqdn.contains(d))
                    {
                        return false;
                    }
                    domains_seen.insert(lower);
                    true
                })
                .collect();
            if domains.is_empty() {
                continue;
            }
            out.push(route::VirtualHost {
                name,
                domains,
                routes: w.routes.clone(),
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
    }
    out
}

/// Every name of a service (istiod's `generateVirtualHostDomains` without ports), and
/// which of them are short forms.
fn service_domains(service: &Service, proxy_domain: &str) -> (Vec<String>, Vec<String>) {
    let alt = alt_hosts(&service.hostname, proxy_domain);
    let mut domains = vec![ipv6_compliant(&service.hostname)];
    domains.extend(alt.iter().cloned());
    for address in &service.addresses {
        if !address.is_empty() && address != "0.0.0.0" {
            domains.push(ipv6_compliant(address));
        }
    }
    (domains, alt)
}

/// The other names of `host` seen from a proxy in DNS domain `NS.svc.SUFFIX` (istiod's
/// `GenerateAltVirtualHosts` without ports): the absolute name (`host.`), and for a
/// Kubernetes-style host `NAME.NS.svc.SUFFIX` its short forms (`NAME`, `NAME.NS.svc`,
/// `NAME.NS` in the proxy's namespace; `NAME.NS`, `NAME.NS.svc` from others).
pub fn alt_hosts(host: &str, proxy_domain: &str) -> Vec<String> {
    let mut out = Vec::new();
    if host.parse::<std::net::IpAddr>().is_err() {
        out.push(format!("{host}."));
    }
    if let Some(idx) = proxy_domain.find(".svc.") {
        let suffix = &proxy_domain[idx..];
        let proxy_ns = &proxy_domain[..idx];
        if !host.ends_with(suffix) {
            return out;
        }
        let Some(ih) = host.find(".svc.") else {
            return out;
        };
        let Some(ns) = host.find('.') else {
            return out;
        };
        if ns + 1 > ih {
            return out;
        }
        if &host[ns + 1..ih] == proxy_ns {
            out.push(host[..ns].to_string());
            out.push(format!("{}.svc", &host[..ih]));
            out.push(host[..ih].to_string());
        } else {
            out.push(host[..ih].to_string());
            out.push(format!("{}.svc", &host[..ih]));
        }
        return out;
    }
    // A proxy outside Kubernetes-style domains: the host relative to the shared suffix.
    let fqdn: Vec<&str> = host.split('.').collect();
    let domain: Vec<&str> = proxy_domain.split('.').collect();
    let shared = fqdn
        .iter()
        .rev()
        .zip(domain.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if shared == 0 || shared >= fqdn.len() {
        return out;
    }
    let unique = &fqdn[..fqdn.len() - shared];
    out.push(unique.join("."));
    if unique.len() == 2 {
        out.push(format!(
            "{}.{}",
            unique.join("."),
            fqdn[fqdn.len() - shared]
        ));
    }
    out
}

fn ipv6_compliant(host: &str) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]"),
        Err(_) => host.to_string(),
    }
}

/// The last virtual host: unknown hosts to `PassthroughCluster` (ALLOW_ANY), or 502
/// (REGISTRY_ONLY), istiod's `buildCatchAllVirtualHost`.
pub fn catch_all_virtual_host(mode: OutboundMode) -> route::VirtualHost {
    let (name, action) = match mode {
        OutboundMode::AllowAny => {
            #[allow(deprecated)]
            let action = route::RouteAction {
                cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                    super::super::cluster::PASSTHROUGH_CLUSTER.to_string(),
                )),
                timeout: Some(pb::seconds(0)),
                max_grpc_timeout: Some(pb::seconds(0)),
                ..Default::default()
            };
            (ALLOW_ANY, route::route::Action::Route(action))
        }
        OutboundMode::RegistryOnly => (
            BLOCK_ALL,
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    route::VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![route::Route {
            name: name.to_string(),
            r#match: Some(route::RouteMatch {
                path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}
