//! Translation for proxyless gRPC clients: a gRPC library dialling `xds:///HOST:PORT`
//! and configured over ADS itself, the way istiod's `grpc` generator answers a node whose
//! metadata says `GENERATOR: grpc`.
//!
//! For every service port the client sees (one host per name, visibility as for any
//! proxy in its namespace):
//!
//! - a Listener `HOST:PORT` whose `api_listener` is an HTTP connection manager with the
//!   fault and router filters, reading the route configuration `outbound|PORT||HOST`
//!   by RDS (istiod's names);
//! - that RouteConfiguration, with one virtual host for the service: the HTTP routes of
//!   the mesh VirtualService for the host (one without `gateways`, or naming `mesh`)
//!   that apply to the port, else a default route to `outbound|PORT||HOST`;
//! - Clusters `outbound|PORT|SUBSET|HOST` (EDS) for the port and each DestinationRule
//!   subset, with the load balancing gRPC implements, and their ClusterLoadAssignments.
//!
//! Everything is computed for every visible service; the client asks for listeners and
//! clusters by name and the control plane answers with those only (and the client then
//! asks for what they reference), so a client that dials one service receives one
//! listener, one route configuration, the clusters its routes name and their endpoints.
//!
//! gRPC's xDS client validates strictly and rejects a whole resource for one field it
//! does not support, so only what gRPC reads is written (gRFCs A27, A28, A31 timeouts,
//! A32 circuit breaking, A33 faults, A42 ring hash, A44 retries): route timeouts become
//! `max_stream_duration`, CORS is left out, TLS is not originated (a DestinationRule
//! asking for TLS leaves its clusters out, failing closed), and load balancing is round
//! robin or ring hash. What a VirtualService asks for that gRPC ignores (rewrites, header
//! changes, mirrors, query parameter matches) or cannot do (redirects, direct
//! responses) is reported as a warning.
use super::Translation;
use super::endpoints::{self, LocalityPolicy};
use super::http_route::{self, FAULT_FILTER, RouteTarget};
use super::listener::ROUTER_FILTER;
use super::names;
use super::pb;
use super::scope::{BoundVirtualService, MergedDestinationRule, Scope};
use crate::config::hosts;
use crate::config::mesh::MeshConfig;
use crate::config::types::destination_rule::{
    ClientTlsMode, HashAlgorithm, LbPolicy, LocalityLoadBalancerSetting, SimpleLb, Subset,
};
use crate::config::{Config, Diagnostic};
use crate::registry::{Protocol, Registry, Resolution, Service, ServicePort};
use crate::xds::ProxyIdentity;
use crate::xds::pb::envoy::config::cluster::v3 as cluster;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::endpoint::v3 as endpoint;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use crate::xds::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The largest ring gRPC accepts (`ring_hash_lb_config` sizes above it are rejected).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// The name mesh VirtualServices are bound to.
const MESH_GATEWAY: &str = "mesh";

/// Translates the configuration for a proxyless gRPC client of a mesh with these
/// settings.
pub fn proxyless_grpc(
    config: &Config,
    registry: &Registry,
    proxy: &ProxyIdentity,
    mesh: &MeshConfig,
) -> Translation {
    let mut scope = super::scope_in_mesh(config, registry, proxy, mesh);
    let mut out = Translation {
        diagnostics: std::mem::take(&mut scope.diagnostics),
        ..Default::default()
    };
    let vhosts = MeshVirtualServices::index(&scope, &mut out.diagnostics);
    let mut seen: HashSet<&str> = HashSet::new();
    for candidate in registry.visible_from(&scope.namespace) {
        let host = candidate.hostname.as_str();
        // A client cannot dial a wildcard; each host once (several namespaces may
        // define it: the one the proxy's namespace sees wins, as for routes).
        if hosts::is_wildcard(host) || !seen.insert(host) {
            continue;
        }
        let Some(service) = registry.service(host, &scope.namespace, None) else {
            continue;
        };
        let vs = vhosts.for_host(host);
        let dr = scope.destination_rule(&service.hostname, Some(&service.namespace));
        for port in service.ports.iter().filter(|p| p.protocol != Protocol::Udp) {
            let route_name = names::cluster_name("", host, port.number);
            out.resources
                .listeners
                .push(api_listener(service, port.number, &route_name));
            out.resources.routes.push(route_configuration(
                &scope,
                service,
                port.number,
                &route_name,
                vs,
                &mut out.diagnostics,
            ));
            let mut ctx = Clusters {
                scope: &scope,
                service,
                port,
                dr: dr.as_ref(),
                out: &mut out,
            };
            ctx.build(None);
            for subset in dr.iter().flat_map(|d| d.subsets.iter()) {
                ctx.build(Some(subset));
            }
        }
    }
    out.resources.sort();
    out
}

/// The mesh VirtualServices the proxy sees, indexed by host: each service takes the first
/// one naming its host exactly, else the most specific wildcard covering it.
struct MeshVirtualServices<'s, 'a> {
    exact: HashMap<&'s str, &'s BoundVirtualService<'a>>,
    wildcard: Vec<(&'s str, &'s BoundVirtualService<'a>)>,
}

impl<'s, 'a> MeshVirtualServices<'s, 'a> {
    fn index(scope: &'s Scope<'a>, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut exact: HashMap<&str, &BoundVirtualService> = HashMap::new();
        let mut wildcard = Vec::new();
        for vs in scope
            .virtual_services
            .iter()
            .filter(|vs| vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == MESH_GATEWAY))
        {
            let mut used = false;
            for host in &vs.hosts {
                if hosts::is_wildcard(host) {
                    wildcard.push((host.as_str(), vs));
                    used = true;
                    continue;
                }
                match exact.get(host.as_str()) {
                    Some(first) => diagnostics.push(vs.res.warning(
                        "spec.hosts",
                        format!(
                            "host `{host}` is already routed by VirtualService {}/{} for proxyless gRPC clients; this one is ignored for it",
                            first.res.meta.namespace, first.res.meta.name
                        ),
                    )),
                    None => {
                        exact.insert(host.as_str(), vs);
                        used = true;
                    }
                }
            }
            if used {
                unsupported_features(vs, diagnostics);
            }
        }
        MeshVirtualServices { exact, wildcard }
    }

    fn for_host(&self, host: &str) -> Option<&'s BoundVirtualService<'a>> {
        if let Some(vs) = self.exact.get(host) {
            return Some(vs);
        }
        self.wildcard
            .iter()
            .filter(|(w, _)| hosts::is_subset_of(host, w))
            .max_by_key(|(w, _)| w.len())
            .map(|(_, vs)| *vs)
    }
}

/// Warns about what a VirtualService asks for that a gRPC client does not do.
fn unsupported_features(vs: &BoundVirtualService, diagnostics: &mut Vec<Diagnostic>) {
    for bound in &vs.http {
        let r = &bound.route;
        let mut ignored = Vec::new();
        if r.cors_policy.is_some() {
            ignored.push("corsPolicy");
        }
        if r.rewrite.is_some() {
            ignored.push("rewrite");
        }
        if r.headers.is_some() || r.route.iter().any(|d| d.headers.is_some()) {
            ignored.push("headers");
        }
        if r.mirror.is_some() || !r.mirrors.is_empty() {
            ignored.push("mirror");
        }
        if r.matches.iter().any(|m| !m.query_params.is_empty()) {
            ignored.push("match.queryParams (gRPC skips such a route)");
        }
        if !ignored.is_empty() {
            diagnostics.push(bound.source.warning(
                &bound.field,
                format!("proxyless gRPC clients do not apply {}", ignored.join(", ")),
            ));
        }
        if r.redirect.is_some() || r.direct_response.is_some() {
            diagnostics.push(bound.source.warning(
                &bound.field,
                "proxyless gRPC clients cannot answer with a redirect or a direct response; calls this route matches fail with UNAVAILABLE",
            ));
        }
    }
}

/// The client listener for a service port: an HTTP connection manager as
/// `api_listener`, reading `route_name` by RDS.
fn api_listener(service: &Service, port: u32, route_name: &str) -> listener::Listener {
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(pb::ads_config_source()),
                route_config_name: route_name.to_string(),
            },
        )),
        http_filters: vec![
            http_filter(FAULT_FILTER, pb::any(&HttpFault::default())),
            http_filter(ROUTER_FILTER, pb::any(&Router::default())),
        ],
        ..Default::default()
    };
    // The service's address, as istiod writes it; gRPC does not read it.
    let address = service
        .addresses
        .first()
        .filter(|a| !a.contains('/'))
        .map_or("0.0.0.0", String::as_str);
    listener::Listener {
        name: names::virtual_host_name(&service.hostname, port),
        address: Some(pb::socket_address(address, port)),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(pb::any(&manager)),
        }),
        ..Default::default()
    }
}

fn http_filter(name: &str, config: crate::xds::pb::google::protobuf::Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// The route configuration of a service port: the VirtualService's routes for it, else
/// the default route to the service.
fn route_configuration(
    scope: &Scope,
    service: &Service,
    port: u32,
    name: &str,
    vs: Option<&BoundVirtualService>,
    diagnostics: &mut Vec<Diagnostic>,
) -> route::RouteConfiguration {
    let host = service.hostname.as_str();
    let mut references = http_route::References::new();
    let routes = vs
        .and_then(|vs| {
            http_route::build_routes(
                scope,
                vs,
                &RouteTarget {
                    port,
                    gateway_name: MESH_GATEWAY,
                    is_tls: false,
                },
                diagnostics,
                &mut references,
            )
        })
        .unwrap_or_else(|| vec![default_route(host, port)])
        .into_iter()
        .filter_map(grpc_route)
        .collect();
    let host_port = names::virtual_host_name(host, port);
    route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![route::VirtualHost {
            name: host_port.clone(),
            // gRPC matches the target's authority, `HOST:PORT` (and `HOST` when a
            // client overrides the authority without a port).
            domains: vec![host_port, host.to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Istio's default route for a service: everything to the service port's cluster, with
/// the mesh's default retries.
fn default_route(host: &str, port: u32) -> route::Route {
    route::Route {
        name: "default".into(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                names::cluster_name("", host, port),
            )),
            retry_policy: super::retry::policy(None, false),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route as gRPC reads it (gRFCs A28, A31, A44): the timeout as `max_stream_duration`
/// (gRPC does not read `timeout`), per-route configuration only for the fault filter
/// (gRPC rejects the route configuration over one it has no filter for), and none of
/// the Envoy-only fields gRPC ignores (decorator, metadata, header changes, rewrites,
/// mirrors, retry predicates), so that a config dump shows what the client applies.
/// `None` for a route gRPC would reject: weighted destinations that all weigh nothing.
fn grpc_route(mut r: route::Route) -> Option<route::Route> {
    r.typed_per_filter_config.retain(|k, _| k == FAULT_FILTER);
    r.decorator = None;
    r.metadata = None;
    r.request_headers_to_add.clear();
    r.request_headers_to_remove.clear();
    r.response_headers_to_add.clear();
    r.response_headers_to_remove.clear();
    if let Some(route::route::Action::Route(action)) = r.action.as_mut() {
        #[allow(deprecated)]
        {
            action.max_grpc_timeout = None;
        }
        action.max_stream_duration = action
            .timeout
            .take()
            .filter(|t| t.seconds != 0 || t.nanos != 0)
            .map(|t| route::route_action::MaxStreamDuration {
                max_stream_duration: Some(t),
                ..Default::default()
            });
        action.prefix_rewrite.clear();
        action.regex_rewrite = None;
        action.host_rewrite_specifier = None;
        action.request_mirror_policies.clear();
        if let Some(retry) = action.retry_policy.as_mut() {
            // gRPC retries on the gRPC status names in `retry_on` only.
            *retry = route::RetryPolicy {
                retry_on: std::mem::take(&mut retry.retry_on),
                num_retries: retry.num_retries,
                retry_back_off: retry.retry_back_off,
                ..Default::default()
            };
        }
        if let Some(route::route_action::ClusterSpecifier::WeightedClusters(w)) =
            action.cluster_specifier.as_mut()
        {
            if w.clusters.is_empty() {
                return None;
            }
            for c in &mut w.clusters {
                *c = route::weighted_cluster::ClusterWeight {
                    name: std::mem::take(&mut c.name),
                    weight: c.weight,
                    ..Default::default()
                };
            }
        }
    }
    Some(r)
}

/// Builds a service port's clusters into the translation.
struct Clusters<'c, 'a> {
    scope: &'c Scope<'a>,
    service: &'c Service,
    port: &'c ServicePort,
    dr: Option<&'c MergedDestinationRule<'a>>,
    out: &'c mut Translation,
}

impl Clusters<'_, '_> {
    fn warn(&mut self, field: &str, message: String) {
        let d = match self.dr.and_then(|d| d.sources.first()) {
            Some(src) if field.starts_with("spec.trafficPolicy") => src.warning(field, message),
            _ => self.scope.service_warning(self.service, "spec", message),
        };
        self.out.diagnostics.push(d);
    }

    /// The cluster for the port (and subset), with its endpoints.
    fn build(&mut self, subset: Option<&Subset>) {
        let service = self.service;
        let port = self.port.number;
        let subset_name = subset.map_or("", |s| s.name.as_str());
        let name = names::cluster_name(subset_name, &service.hostname, port);
        let policy = super::cluster::effective_policy(self.dr, port, subset);

        // gRPC originates TLS only from certificate providers of its own bootstrap,
        // which this control plane does not configure: fail closed rather than send
        // plain text where the rule asks for TLS.
        if let Some(mode) = policy
            .as_ref()
            .and_then(|p| p.tls.as_ref())
            .and_then(|t| t.mode)
            .filter(|m| *m != ClientTlsMode::Disable)
        {
            self.warn(
                "spec.trafficPolicy.tls",
                format!(
                    "TLS mode {mode} is not served to proxyless gRPC clients; {name} is left out for them"
                ),
            );
            return;
        }

        let mut c = cluster::Cluster {
            name: name.clone(),
            ..Default::default()
        };
        let lb = policy.as_ref().and_then(|p| p.load_balancer.as_ref());
        match lb.and_then(|l| l.lb_policy.as_ref()) {
            None | Some(LbPolicy::Simple(SimpleLb::Unspecified | SimpleLb::RoundRobin)) => {
                c.lb_policy = cluster::cluster::LbPolicy::RoundRobin as i32;
            }
            Some(LbPolicy::Simple(other)) => {
                c.lb_policy = cluster::cluster::LbPolicy::RoundRobin as i32;
                self.warn(
                    "spec.trafficPolicy.loadBalancer.simple",
                    format!(
                        "load balancing {other} is not served to proxyless gRPC clients; {name} uses ROUND_ROBIN for them"
                    ),
                );
            }
            Some(LbPolicy::ConsistentHash(hash)) => {
                let size = match hash.hash_algorithm {
                    Some(HashAlgorithm::RingHash(r)) => r.minimum_ring_size,
                    Some(HashAlgorithm::Maglev(_)) => {
                        self.warn(
                            "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
                            format!(
                                "proxyless gRPC clients have no Maglev; {name} uses a hash ring for them"
                            ),
                        );
                        0
                    }
                    None => hash.minimum_ring_size,
                };
                let size = if size == 0 { 1024 } else { size };
                if size > MAX_RING_SIZE {
                    self.warn(
                        "spec.trafficPolicy.loadBalancer.consistentHash",
                        format!(
                            "a ring of {size} entries is larger than gRPC's limit; {name} uses {MAX_RING_SIZE} for proxyless gRPC clients"
                        ),
                    );
                }
                c.lb_policy = cluster::cluster::LbPolicy::RingHash as i32;
                c.lb_config = Some(cluster::cluster::LbConfig::RingHashLbConfig(
                    cluster::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(pb::u64v(size.min(MAX_RING_SIZE))),
                        ..Default::default()
                    },
                ));
            }
        }

        // Circuit breaking (gRFC A32): the most requests in flight.
        if let Some(n) = policy
            .as_ref()
            .and_then(|p| p.connection_pool.as_ref())
            .and_then(|p| p.http.as_ref())
            .and_then(|h| u32::try_from(h.http2_max_requests).ok())
            .filter(|&n| n > 0)
        {
            c.circuit_breakers = Some(cluster::CircuitBreakers {
                thresholds: vec![cluster::circuit_breakers::Thresholds {
                    max_requests: Some(pb::u32v(n)),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }

        let empty = BTreeMap::new();
        let labels = subset.map_or(&empty, |s| &s.labels);
        let groups = endpoints::locality_groups(service, port, labels);
        let mesh_default = LocalityLoadBalancerSetting::default();
        let setting = match lb.and_then(|l| l.locality_lb_setting.as_ref()) {
            Some(s) if s.enabled == Some(false) => None,
            Some(s) => Some(s),
            None => Some(&mesh_default),
        };
        let locality = setting.map(|setting| LocalityPolicy {
            setting,
            failover_enabled: policy
                .as_ref()
                .is_some_and(|p| p.outlier_detection.is_some()),
            proxy_locality: &self.scope.locality,
            proxy_labels: &self.scope.proxy.labels,
        });
        let localities =
            grpc_localities(endpoints::locality_lb_endpoints(&groups, locality.as_ref()));

        match service.resolution {
            Resolution::Static | Resolution::None => {
                c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                    cluster::cluster::DiscoveryType::Eds as i32,
                ));
                c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
                    eds_config: Some(pb::ads_config_source()),
                    service_name: name.clone(),
                });
                self.out.resources.clusters.push(c);
                self.out
                    .resources
                    .endpoints
                    .push(endpoint::ClusterLoadAssignment {
                        cluster_name: name,
                        endpoints: localities,
                        ..Default::default()
                    });
            }
            // gRPC resolves one DNS name itself (LOGICAL_DNS); it has no STRICT_DNS.
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let count: usize = localities.iter().map(|l| l.lb_endpoints.len()).sum();
                if count != 1 {
                    self.warn(
                        "spec.endpoints",
                        format!(
                            "proxyless gRPC clients resolve one DNS name per cluster and {name} has {count} endpoints; it is left out for them"
                        ),
                    );
                    return;
                }
                c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                    cluster::cluster::DiscoveryType::LogicalDns as i32,
                ));
                c.load_assignment = Some(endpoint::ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: localities,
                    ..Default::default()
                });
                self.out.resources.clusters.push(c);
            }
            Resolution::DynamicDns => self.warn(
                "spec.resolution",
                format!(
                    "resolution DYNAMIC_DNS (host `{}`) is not translated; {name} is left out",
                    service.hostname
                ),
            ),
        }
    }
}

/// Locality endpoints as gRPC accepts them: socket addresses only (no Unix sockets),
/// each address once in the whole assignment, localities without weight or endpoints
/// left out (gRPC drops the first and would reject a priority left empty), and
/// priorities numbered without gaps.
fn grpc_localities(
    localities: Vec<endpoint::LocalityLbEndpoints>,
) -> Vec<endpoint::LocalityLbEndpoints> {
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    let mut out: Vec<endpoint::LocalityLbEndpoints> = Vec::with_capacity(localities.len());
    for mut l in localities {
        l.lb_endpoints.retain(|e| match socket_of(e) {
            Some(key) => seen.insert(key),
            None => false,
        });
        let weight: u32 = l
            .lb_endpoints
            .iter()
            .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
            .fold(0, u32::saturating_add);
        match l.load_balancing_weight.as_ref().map(|w| w.value) {
            Some(0) | None => continue,
            Some(_) if weight == 0 => continue,
            _ => {}
        }
        out.push(l);
    }
    let priorities: BTreeSet<u32> = out.iter().map(|l| l.priority).collect();
    for l in &mut out {
        l.priority = priorities
            .iter()
            .position(|&p| p == l.priority)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0);
    }
    out
}

/// An endpoint's socket address and port.
fn socket_of(e: &endpoint::LbEndpoint) -> Option<(String, u32)> {
    let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return None;
    };
    match ep.address.as_ref()?.address.as_ref()? {
        core::address::Address::SocketAddress(s) => match s.port_specifier {
            Some(core::socket_address::PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
