//! A sidecar's inbound side, as istiod builds it (`listener_inbound.go`,
//! `filterchain_options.go`, `buildInboundClusters`): what reaches the application.
//!
//! - The workload's **instances**: every service port whose endpoint address is one of the
//!   proxy's IPs (services of the proxy's namespace only, as istiod's ServiceEntry
//!   registry does), one per workload (target) port, the first loaded winning a port.
//! - The listener `virtualInbound` on 0.0.0.0:15006, where iptables redirects inbound
//!   TCP. Listener filters `original_dst` (recovering the port the client asked for),
//!   `tls_inspector` and `http_inspector`, each disabled on the ports whose chains do not
//!   need it. Per workload port, filter chains matching `destination_port` — HTTP ports
//!   end in an HTTP connection manager with an inline route table `inbound|PORT||`, TCP
//!   ports in `tcp_proxy`, ports of unknown protocol get both (told apart by ALPN) — and
//!   catch-all chains to `InboundPassthroughCluster` for ports no service declares. A
//!   connection to 15006 itself goes to `BlackHoleCluster`, never looping.
//! - Which chains a port gets follows its PeerAuthentication mode
//!   ([`authn`](super::super::authn)): STRICT only chains matching transport `tls`, whose
//!   DownstreamTlsContext requires a client certificate of the mesh (`default` and
//!   `ROOTCA` from the pod's agent); DISABLE only plain-text chains; PERMISSIVE both, the
//!   mTLS ones matching Istio's ALPNs. A connection no chain matches is closed.
//! - Clusters `inbound|PORT||`: ORIGINAL_DST to the address the client asked for, from
//!   source 127.0.0.6 (which iptables leaves alone), as Istio since 1.10; and
//!   `InboundPassthroughCluster` likewise.
//!
//! HTTP chains forward the caller's certificate details to the application:
//! `x-forwarded-client-cert` is appended to (APPEND_FORWARD) with the peer's subject,
//! URI SAN (its SPIFFE id) and DNS SANs.
//!
//! Left out, as they need Istio's own Envoy build: the metadata exchange and stats
//! filters, and `grpc_stats`.
use super::super::Translation;
use super::super::authn::{self, Mode, WorkloadMtls};
use super::super::authz;
use super::super::cluster as clusters;
use super::super::jwt;
use super::super::listener as listeners;
use super::super::names;
use super::super::network;
use super::super::pb;
use super::super::scope::Scope;
use super::super::tls;
use crate::config::mesh::MeshConfig;
use crate::registry::{Protocol, Service, ServicePort};
use crate::xds::pb::envoy::config::cluster::v3 as cluster;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use crate::xds::pb::envoy::r#type::v3 as types;
use crate::xds::pb::google::protobuf as wkt;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The inbound listener's name.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// The name of the passthrough chains that carry HTTP.
pub const CATCH_ALL_HTTP_CHAIN: &str = "virtualInbound-catchall-http";
/// The chain of connections made to 15006 itself.
pub const BLACKHOLE_CHAIN: &str = "virtualInbound-blackhole";
/// The cluster of inbound traffic to ports no service declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The cluster that closes every connection (defined by the outbound side).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// The source address of the proxy's connections to the application, which iptables
/// exempts from capture (Istio's `InboundPassthroughBindIpv4`).
pub const PASSTHROUGH_BIND_IPV4: &str = "127.0.0.6";
/// The address the inbound listener's chains are named after.
const WILDCARD: &str = "0.0.0.0";

/// Transport protocols of filter chain matches.
const TLS: &str = "tls";
const RAW_BUFFER: &str = "raw_buffer";
/// ALPN of plain-text HTTP, as the HTTP inspector reports it.
const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.1", "h2c"];
/// ALPN of Istio clients' mTLS carrying HTTP.
const MTLS_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// Every ALPN an Istio client's mTLS may carry.
const ALL_ISTIO_MTLS_ALPNS: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// ALPN of Istio clients' mTLS carrying TCP.
const MTLS_TCP_WITH_MXC_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];
/// istiod's "no cleanup" for ORIGINAL_DST inbound clusters: the longest duration.
const MAX_SECONDS: i64 = (i64::MAX - 999_999_999) / 1_000_000_000;

/// How a port's traffic is read: istiod's `ListenerProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerProtocol {
    Http,
    Tcp,
    /// Unknown protocol: HTTP and TCP chains told apart by sniffing.
    Auto,
}

impl ListenerProtocol {
    fn of(p: &Protocol) -> ListenerProtocol {
        match p {
            p if p.is_http() => ListenerProtocol::Http,
            Protocol::Unsupported(_) => ListenerProtocol::Auto,
            _ => ListenerProtocol::Tcp,
        }
    }
}

/// One filter chain's match and purpose (istiod's `FilterChainMatchOptions`).
struct MatchOption {
    alpn: &'static [&'static str],
    transport: &'static str,
    /// An HTTP connection manager (else `tcp_proxy`).
    http: bool,
    /// Terminates mutual TLS.
    mtls: bool,
}

/// A [`MatchOption`] literal (constant, so that the tables below are static).
macro_rules! opt {
    ($alpn:expr, $transport:expr, $http:expr, $mtls:expr) => {
        MatchOption {
            alpn: $alpn,
            transport: $transport,
            http: $http,
            mtls: $mtls,
        }
    };
}

/// The chains of a port by mode and protocol, in istiod's order.
fn match_options(mode: Mode, protocol: ListenerProtocol) -> &'static [MatchOption] {
    use ListenerProtocol::*;
    const NONE: &[&str] = &[];
    match (protocol, mode) {
        (Http, Mode::Strict) => &[opt!(NONE, TLS, true, true)],
        (Http, Mode::Permissive) => &[
            opt!(ALL_ISTIO_MTLS_ALPNS, TLS, true, true),
            opt!(NONE, RAW_BUFFER, true, false),
        ],
        (Http, Mode::Disable) => &[opt!(NONE, RAW_BUFFER, true, false)],
        (Tcp, Mode::Strict) => &[opt!(NONE, TLS, false, true)],
        (Tcp, Mode::Permissive) => &[
            opt!(ALL_ISTIO_MTLS_ALPNS, TLS, false, true),
            // One-way TLS from a client outside the mesh, passed on as bytes.
            opt!(NONE, TLS, false, false),
            opt!(NONE, RAW_BUFFER, false, false),
        ],
        (Tcp, Mode::Disable) => &[opt!(NONE, RAW_BUFFER, false, false)],
        (Auto, Mode::Strict) => &[
            opt!(MTLS_HTTP_ALPNS, TLS, true, true),
            opt!(NONE, TLS, false, true),
        ],
        (Auto, Mode::Permissive) => &[
            opt!(MTLS_HTTP_ALPNS, TLS, true, true),
            opt!(PLAINTEXT_HTTP_ALPNS, RAW_BUFFER, true, false),
            opt!(MTLS_TCP_WITH_MXC_ALPNS, TLS, false, true),
            opt!(NONE, RAW_BUFFER, false, false),
            opt!(NONE, TLS, false, false),
        ],
        (Auto, Mode::Disable) => &[
            opt!(PLAINTEXT_HTTP_ALPNS, RAW_BUFFER, true, false),
            opt!(NONE, RAW_BUFFER, false, false),
        ],
    }
}

/// The workload's AuthorizationPolicies as the filters of its HTTP and TCP chains.
struct AuthzFilters {
    http: Vec<hcm::HttpFilter>,
    tcp: Vec<listener::Filter>,
}

/// One workload port and what serves it (istiod's `inboundChainConfig`).
struct ChainConfig<'a> {
    /// The workload port (0: every port, for the passthrough chains).
    target_port: u32,
    /// The service port clients address (0 for passthrough).
    service_port: u32,
    protocol: Protocol,
    cluster: String,
    /// The service the port was built for, and the others on the same port and service
    /// port (cluster metadata).
    services: Vec<&'a Service>,
    passthrough: bool,
}

impl ChainConfig<'_> {
    fn name(&self, http: bool) -> String {
        match (self.passthrough, http) {
            (true, true) => CATCH_ALL_HTTP_CHAIN.to_string(),
            (true, false) => VIRTUAL_INBOUND.to_string(),
            (false, _) => names::listener_name(WILDCARD, self.target_port),
        }
    }

    fn stat_prefix(&self) -> String {
        if self.passthrough {
            names::delimited_stat_prefix(&self.cluster)
        } else {
            names::delimited_stat_prefix(&format!("inbound_{}", self.name(true)))
        }
    }

    fn host(&self) -> &str {
        self.services
            .first()
            .map(|s| s.hostname.as_str())
            .unwrap_or("")
    }
}

/// The workload's instances, one per target port, and the labels policies select it by.
struct Instances<'a> {
    ports: BTreeMap<u32, ChainConfig<'a>>,
    labels: BTreeMap<String, String>,
}

/// istiod's `GetProxyServiceTargets` over the ServiceEntry registry, and
/// `SetWorkloadLabels`: the registry's labels of the workload over the proxy's own.
fn instances<'a>(scope: &Scope<'a>, out: &mut Translation) -> Instances<'a> {
    let proxy = scope.proxy;
    let mut ports: BTreeMap<u32, ChainConfig<'a>> = BTreeMap::new();
    let mut labels = proxy.labels.clone();
    let mut labelled = false;
    for service in scope.registry.services() {
        if !proxy.namespace.is_empty() && service.namespace != proxy.namespace {
            continue;
        }
        for e in &service.endpoints {
            if e.unix || !proxy.ip_addresses.iter().any(|ip| ip == &e.address) {
                continue;
            }
            let Some(port) = service.port(e.service_port) else {
                continue;
            };
            if port.protocol == Protocol::Udp {
                continue;
            }
            if !labelled {
                labels.extend(e.labels.clone());
                labelled = true;
            }
            add_instance(scope, &mut ports, service, port, e.port, out);
        }
    }
    Instances { ports, labels }
}

fn add_instance<'a>(
    scope: &Scope<'a>,
    ports: &mut BTreeMap<u32, ChainConfig<'a>>,
    service: &'a Service,
    port: &ServicePort,
    target_port: u32,
    out: &mut Translation,
) {
    match ports.get_mut(&target_port) {
        None => {
            ports.insert(
                target_port,
                ChainConfig {
                    target_port,
                    service_port: port.number,
                    protocol: port.protocol.clone(),
                    cluster: names::inbound_cluster_name(target_port),
                    services: vec![service],
                    passthrough: false,
                },
            );
        }
        Some(first) => {
            if first.services.iter().any(|s| std::ptr::eq(*s, service)) {
                return;
            }
            if first.protocol != port.protocol && first.host() != service.hostname {
                out.diagnostics.push(scope.service_warning(
                    service,
                    "spec.ports",
                    format!(
                        "workload port {target_port} in `{}` is served as {} for `{}` (loaded first), not as {} for `{}`",
                        service.namespace,
                        first.protocol,
                        first.host(),
                        port.protocol,
                        service.hostname
                    ),
                ));
            }
            if first.service_port == port.number {
                first.services.push(service);
            }
        }
    }
}

/// Adds the inbound listener and clusters of the proxy to `out`.
pub(super) fn build(scope: &Scope, mesh: &MeshConfig, out: &mut Translation) {
    let port = mesh.proxy_inbound_listen_port;
    let Instances { ports, labels } = instances(scope, out);
    let mtls = authn::for_workload(
        scope.config,
        &scope.namespace,
        &labels,
        &mut out.diagnostics,
    );

    let policies = authz::for_workload(
        scope.config,
        super::super::scope::ROOT_NAMESPACE,
        &scope.namespace,
        &labels,
    );
    let issuers = authz::request_issuers(scope.config, &scope.namespace, &labels);
    let cx = authz::Context {
        trust_domain: &scope.trust_domain,
        issuers: &issuers,
    };
    // CUSTOM policies' filters go first; the authorizer's cluster is among the outbound
    // side's clusters.
    let (mut http, _) = super::super::ext_authz::custom_http_filters(
        cx,
        &policies,
        &scope.extension_providers,
        scope.registry,
        &mut out.diagnostics,
    );
    http.extend(authz::http_filters(cx, &policies, &mut out.diagnostics));
    let mut tcp = super::super::ext_authz::custom_network_filters(
        cx,
        &policies,
        &scope.extension_providers,
        true,
        &mut out.diagnostics,
    );
    tcp.extend(authz::network_filters(cx, &policies, &mut out.diagnostics));
    let authz = AuthzFilters { http, tcp };

    let mut chains = vec![blackhole_chain(port)];
    chains.extend(passthrough_chains(scope, &mtls, &ports, &authz));
    for cc in ports.values() {
        let mode = mtls.for_port(cc.target_port);
        chains.extend(port_chains(scope, cc, mode, &authz));
    }
    let mut inbound = virtual_inbound(port, chains);
    // RequestAuthentication: the workload's JWT filter on every inbound HTTP chain.
    let jwt_rules = jwt::rules_for_workload(scope.config, &scope.namespace, &labels);
    let jwt_policy = jwt::translate(&jwt_rules, scope.connect_timeout, &mut out.diagnostics);
    if let Some(filter) = &jwt_policy.filter {
        jwt::apply_to_listener(&mut inbound, filter);
    }
    out.resources.listeners.push(inbound);
    out.resources.clusters.extend(jwt_policy.clusters);

    for cc in ports.values() {
        out.resources.clusters.push(inbound_cluster(scope, cc));
    }
    out.resources
        .clusters
        .push(inbound_passthrough_cluster(scope));
}

/// The chain of connections addressed to 15006 itself: closed, never looped back in.
fn blackhole_chain(port: u32) -> listener::FilterChain {
    listener::FilterChain {
        name: BLACKHOLE_CHAIN.into(),
        filter_chain_match: Some(listener::FilterChainMatch {
            destination_port: Some(pb::u32v(port)),
            ..Default::default()
        }),
        filters: vec![network::tcp_proxy_to(BLACKHOLE_CLUSTER)],
        ..Default::default()
    }
}

/// The catch-all chains to `InboundPassthroughCluster` (istiod's
/// `buildInboundPassthroughChains`): for every port with the workload's mode, and for
/// each port-level mode on a port no service declares.
fn passthrough_chains(
    scope: &Scope,
    mtls: &WorkloadMtls,
    ports: &BTreeMap<u32, ChainConfig>,
    authz: &AuthzFilters,
) -> Vec<listener::FilterChain> {
    let mut out = Vec::new();
    let extra = mtls
        .per_port
        .iter()
        .filter(|(port, _)| !ports.contains_key(port));
    for (port, mode) in std::iter::once((&0, &mtls.mode)).chain(extra) {
        let cc = ChainConfig {
            target_port: *port,
            service_port: 0,
            protocol: Protocol::Unsupported(String::new()),
            cluster: INBOUND_PASSTHROUGH_CLUSTER.into(),
            services: Vec::new(),
            passthrough: true,
        };
        out.extend(port_chains(scope, &cc, *mode, authz));
    }
    out
}

/// The chains of one port for its mode (istiod's `inboundChainForOpts`).
fn port_chains(
    scope: &Scope,
    cc: &ChainConfig,
    mode: Mode,
    authz: &AuthzFilters,
) -> Vec<listener::FilterChain> {
    match_options(mode, ListenerProtocol::of(&cc.protocol))
        .iter()
        .map(|o| listener::FilterChain {
            name: cc.name(o.http),
            filter_chain_match: Some(listener::FilterChainMatch {
                destination_port: (cc.target_port > 0).then(|| pb::u32v(cc.target_port)),
                transport_protocol: o.transport.to_string(),
                application_protocols: o.alpn.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            filters: if o.http {
                vec![http_connection_manager(cc, authz.http.clone(), scope)]
            } else {
                authz
                    .tcp
                    .iter()
                    .cloned()
                    .chain([network::tcp_proxy_to(&cc.cluster)])
                    .collect()
            },
            transport_socket: o.mtls.then(|| {
                tls::transport_socket(&tls::istio_mutual_downstream_context(
                    o.http,
                    scope.mesh_secrets,
                ))
            }),
            ..Default::default()
        })
        .collect()
}

/// The HTTP connection manager of an inbound chain (istiod's `buildSidecarInboundHTTPOpts`):
/// the application's address is not the client's (no use_remote_address), the caller's
/// certificate details appended to `x-forwarded-client-cert`, and the inline route table.
fn http_connection_manager(
    cc: &ChainConfig,
    authz: Vec<hcm::HttpFilter>,
    scope: &Scope,
) -> listener::Filter {
    let mut manager = hcm::HttpConnectionManager {
        use_remote_address: Some(pb::boolv(false)),
        forward_client_cert_details:
            hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32,
        set_current_client_cert_details: Some(
            hcm::http_connection_manager::SetCurrentClientCertDetails {
                subject: Some(pb::boolv(true)),
                uri: true,
                dns: true,
                ..Default::default()
            },
        ),
        ..listeners::istio_http_connection_manager(
            &cc.stat_prefix(),
            hcm::http_connection_manager::RouteSpecifier::RouteConfig(route_configuration(cc)),
        )
    };
    // The mesh's tracing (a SERVER span on the inbound listener).
    manager.tracing = crate::translate::tracing::build(
        scope,
        crate::config::types::telemetry::WorkloadMode::Server,
    )
    .ok()
    .flatten()
    .map(|t| t.tracing);
    if cc.protocol.is_http2() {
        manager.http2_protocol_options = Some(core::Http2ProtocolOptions::default());
    }
    authz::insert_http_filters(&mut manager, authz);
    listeners::http_connection_manager_filter(&manager)
}

/// The route table `inbound|PORT||` (istiod's `buildSidecarInboundHTTPRouteConfig`): every
/// request to the port's cluster, without timeout, retried on resets before the request
/// reached the application (except gRPC).
fn route_configuration(cc: &ChainConfig) -> route::RouteConfiguration {
    let retry_policy = (cc.protocol != Protocol::Grpc).then(|| route::RetryPolicy {
        retry_on: "reset-before-request".into(),
        num_retries: Some(pb::u32v(super::super::retry::DEFAULT_ATTEMPTS)),
        ..Default::default()
    });
    let operation = format!("{}/*", names::virtual_host_name(cc.host(), cc.service_port));
    route::RouteConfiguration {
        name: cc.cluster.clone(),
        virtual_hosts: vec![route::VirtualHost {
            name: format!("inbound|http|{}", cc.service_port),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                name: "default".into(),
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                decorator: Some(route::Decorator {
                    operation,
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cc.cluster.clone(),
                    )),
                    timeout: Some(pb::seconds(0)),
                    max_stream_duration: Some(route::route_action::MaxStreamDuration {
                        max_stream_duration: Some(pb::seconds(0)),
                        grpc_timeout_header_max: Some(pb::seconds(0)),
                        ..Default::default()
                    }),
                    retry_policy,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    }
}

/// The inbound listener around its chains (istiod's `buildInboundListener`).
fn virtual_inbound(port: u32, chains: Vec<listener::FilterChain>) -> listener::Listener {
    let mut l = listener::Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(pb::socket_address(WILDCARD, port)),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        continue_on_listener_filters_timeout: true,
        // MeshConfig `protocolDetectionTimeout`'s default: no timeout.
        listener_filters_timeout: Some(pb::seconds(0)),
        filter_chains: chains,
        ..Default::default()
    };
    l.listener_filters = listener_filters(&l.filter_chains);
    l
}

/// `original_dst`, then the TLS and HTTP inspectors where some chain needs them (istiod's
/// `populateListenerFilters`): each is disabled on the ports none of whose chains match
/// on what it detects.
fn listener_filters(chains: &[listener::FilterChain]) -> Vec<listener::ListenerFilter> {
    // Per destination port (0: chains without one), whether a chain there needs each.
    let mut needs: HashMap<u32, (bool, bool)> = HashMap::new();
    for c in chains {
        let m = c.filter_chain_match.as_ref();
        let port = m
            .and_then(|m| m.destination_port.as_ref())
            .map_or(0, |p| p.value);
        let tls = m.is_some_and(|m| m.transport_protocol == TLS);
        let http = m.is_some_and(|m| {
            m.application_protocols
                .iter()
                .any(|a| a == "http/1.1" || a == "h2c")
        });
        let entry = needs.entry(port).or_default();
        entry.0 |= tls;
        entry.1 |= http;
    }
    let mut out = vec![listener_filter(
        "envoy.filters.listener.original_dst",
        pb::any(&OriginalDst::default()),
        None,
    )];
    if needs.values().any(|n| n.0) {
        let on_for_all = needs.get(&0).is_some_and(|n| n.0);
        let ports: BTreeSet<u32> = needs
            .iter()
            .filter(|(p, n)| **p != 0 && n.0 != on_for_all)
            .map(|(p, _)| *p)
            .collect();
        let disabled = (!ports.is_empty()).then(|| {
            if on_for_all {
                ports_predicate(&ports)
            } else {
                not(ports_predicate(&ports))
            }
        });
        out.push(listener::ListenerFilter {
            filter_disabled: disabled,
            ..super::super::listener::tls_inspector()
        });
    }
    if needs.values().any(|n| n.1) {
        let ports: BTreeSet<u32> = needs
            .iter()
            .filter(|(_, n)| !n.1)
            .map(|(p, _)| *p)
            .collect();
        out.push(listener::ListenerFilter {
            filter_disabled: (!ports.is_empty()).then(|| ports_predicate(&ports)),
            ..super::super::listener::http_inspector()
        });
    }
    out
}

fn listener_filter(
    name: &str,
    config: wkt::Any,
    filter_disabled: Option<listener::ListenerFilterChainMatchPredicate>,
) -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(config)),
        filter_disabled,
    }
}

/// Matches connections to any of `ports` (istiod's `listenerPredicateExcludePorts`).
fn ports_predicate(ports: &BTreeSet<u32>) -> listener::ListenerFilterChainMatchPredicate {
    use listener::listener_filter_chain_match_predicate::{MatchSet, Rule};
    let mut rules: Vec<listener::ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|&p| {
            let start = i32::try_from(p).unwrap_or(i32::MAX);
            listener::ListenerFilterChainMatchPredicate {
                rule: Some(Rule::DestinationPortRange(types::Int32Range {
                    start,
                    end: start.saturating_add(1),
                })),
            }
        })
        .collect();
    if rules.len() == 1 {
        return rules.remove(0);
    }
    listener::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::OrMatch(MatchSet { rules })),
    }
}

fn not(
    p: listener::ListenerFilterChainMatchPredicate,
) -> listener::ListenerFilterChainMatchPredicate {
    use listener::listener_filter_chain_match_predicate::Rule;
    listener::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::NotMatch(Box::new(p))),
    }
}

/// The upstream source address of the proxy's connections to the application.
fn passthrough_bind() -> core::BindConfig {
    core::BindConfig {
        source_address: Some(core::SocketAddress {
            address: PASSTHROUGH_BIND_IPV4.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cluster `inbound|PORT||` (istiod's `buildInboundCluster` with MeshConfig
/// `inboundTrafficPolicy` PASSTHROUGH, its default): ORIGINAL_DST, never cleaned up, from
/// 127.0.0.6; the upstream protocol of the port (the client's for unknown protocols),
/// and the connection pool of the service's DestinationRule for the port, as istiod
/// gives the receiving side the capacity the senders were allowed.
fn inbound_cluster(scope: &Scope, cc: &ChainConfig) -> cluster::Cluster {
    let mut c = cluster::Cluster {
        name: cc.cluster.clone(),
        alt_stat_name: names::delimited_stat_prefix(&cc.cluster),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        common_lb_config: Some(cluster::cluster::CommonLbConfig::default()),
        connect_timeout: Some(pb::duration(scope.connect_timeout)),
        cleanup_interval: Some(wkt::Duration {
            seconds: MAX_SECONDS,
            nanos: 0,
        }),
        upstream_bind_config: Some(passthrough_bind()),
        ..Default::default()
    };
    let mut http_options: Option<upstream_http::HttpProtocolOptions> = None;
    if cc.protocol.is_http2() {
        clusters::set_h2(&mut http_options);
    } else if matches!(cc.protocol, Protocol::Unsupported(_)) {
        http_options = Some(use_downstream_protocol());
    }
    let policy = cc.services.first().and_then(|s| {
        let dr = scope.destination_rule(&s.hostname, Some(&s.namespace));
        clusters::effective_policy(dr.as_ref(), cc.service_port, None)
    });
    let pool = policy
        .as_ref()
        .and_then(|p| p.connection_pool.clone())
        .unwrap_or_default();
    clusters::apply_connection_pool(&mut c, &mut http_options, &pool, policy.as_ref());
    if let Some(options) = http_options {
        clusters::set_http_protocol_options(&mut c, options);
    }
    c.metadata = Some(services_metadata(&cc.services));
    c
}

/// Upstream HTTP/1.1 or HTTP/2 as the client spoke (istiod's `setUseDownstreamProtocol`).
fn use_downstream_protocol() -> upstream_http::HttpProtocolOptions {
    upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                upstream_http::http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(core::Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(core::Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// `istio.services`: the services served on the cluster's port (telemetry).
fn services_metadata(services: &[&Service]) -> core::Metadata {
    let values = services
        .iter()
        .map(|s| {
            pb::string_map_value(&BTreeMap::from([
                ("host".to_string(), s.hostname.clone()),
                ("name".to_string(), s.hostname.clone()),
                ("namespace".to_string(), s.namespace.clone()),
            ]))
        })
        .collect();
    let istio = wkt::Struct {
        fields: std::collections::HashMap::from([(
            "services".to_string(),
            wkt::Value {
                kind: Some(wkt::value::Kind::ListValue(wkt::ListValue { values })),
            },
        )]),
    };
    core::Metadata {
        filter_metadata: std::collections::HashMap::from([("istio".to_string(), istio)]),
        ..Default::default()
    }
}

/// `InboundPassthroughCluster` (istiod's `buildInboundPassthroughCluster`): ORIGINAL_DST
/// from 127.0.0.6, HTTP as the client spoke it with a 5 minute idle timeout.
fn inbound_passthrough_cluster(scope: &Scope) -> cluster::Cluster {
    cluster::Cluster {
        upstream_bind_config: Some(passthrough_bind()),
        ..clusters::original_dst_passthrough(scope, INBOUND_PASSTHROUGH_CLUSTER)
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
