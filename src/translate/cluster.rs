//! Clusters `outbound|PORT|SUBSET|HOST` for the services a gateway routes to, carrying
//! the DestinationRule's traffic policy (merged per port and per subset), and their
//! endpoints (EDS for STATIC entries, inline for DNS ones).
use super::endpoints::{self, LocalityPolicy};
use super::http_route::{config_metadata, consistent_hash};
use super::names;
use super::pb;
use super::scope::{MergedDestinationRule, Scope};
use super::tls::{self, SecretBook};
use crate::config::Diagnostic;
use crate::config::types::destination_rule::{
    ClientTlsMode, ConnectionPoolSettings, H2UpgradePolicy, HashAlgorithm, LbPolicy,
    LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection, SimpleLb, Subset,
    TrafficPolicy,
};
use crate::registry::{Resolution, Service, ServicePort};
use crate::xds::pb::envoy::config::cluster::v3 as cluster;
use crate::xds::pb::envoy::config::common::matcher::v3 as common_matcher;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::endpoint::v3 as endpoint;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::transport_sockets::raw_buffer::v3 as raw_buffer;
use crate::xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use crate::xds::pb::envoy::r#type::v3 as types;
use crate::xds::pb::google::protobuf as wkt;
use std::collections::{BTreeMap, HashMap};

/// Istio's mesh-wide default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
/// meshConfig `dnsRefreshRate`'s default, which istiod gives every DNS cluster.
pub const DNS_REFRESH_RATE_SECS: u64 = 60;
/// istiod's `PILOT_DNS_JITTER_DURATION` default.
pub const DNS_JITTER_MILLIS: u64 = 100;
/// istiod's `PILOT_DNS_CARES_UDP_MAX_QUERIES` default.
pub const DNS_CARES_UDP_MAX_QUERIES: u32 = 100;

pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A cluster and, for EDS clusters, its endpoints.
pub struct Built {
    pub cluster: cluster::Cluster,
    pub load_assignment: Option<endpoint::ClusterLoadAssignment>,
}

/// How a service's clusters are named and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `outbound|PORT|SUBSET|HOST`, with the DestinationRule's TLS origination.
    Outbound,
    /// `outbound_.PORT_.SUBSET_.HOST`: AUTO_PASSTHROUGH's SNI-routed clusters, which
    /// forward the client's TLS untouched (no TLS origination).
    SniDnat,
}

/// Every cluster of a service: one per port, and one per port and subset.
pub fn service_clusters(
    scope: &Scope,
    service: &Service,
    naming: Naming,
    secrets: &mut SecretBook,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Built> {
    service_clusters_for_ports(scope, service, None, naming, secrets, diagnostics)
}

/// [`service_clusters`] for the ports in `ports` only (all of them with `None`): a
/// sidecar whose Sidecar resource imports a service on one port gets that port's.
pub fn service_clusters_for_ports(
    scope: &Scope,
    service: &Service,
    ports: Option<&std::collections::BTreeSet<u32>>,
    naming: Naming,
    secrets: &mut SecretBook,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Built> {
    let mut out = Vec::new();
    if service.resolution == Resolution::DynamicDns {
        diagnostics.push(scope.service_warning(
            service,
            "spec.resolution",
            format!(
                "resolution DYNAMIC_DNS (host `{}`) is not translated; routes to it get 503",
                service.hostname
            ),
        ));
        return out;
    }
    let dr = scope.destination_rule(&service.hostname, Some(&service.namespace));
    for port in &service.ports {
        if port.protocol == crate::registry::Protocol::Udp
            || ports.is_some_and(|p| !p.contains(&port.number))
        {
            continue;
        }
        let mut ctx = Context {
            scope,
            service,
            naming,
            secrets: &mut *secrets,
            diagnostics: &mut *diagnostics,
        };
        if let Some(b) = ctx.build(port, None, dr.as_ref()) {
            out.push(b);
        }
        if let Some(dr) = &dr {
            for subset in &dr.subsets {
                if let Some(b) = ctx.build(port, Some(subset), Some(dr)) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// The traffic policy for a port: port-level settings replace the rule's (Istio copies
/// only the port-level connection pool, load balancer, outlier detection and TLS).
fn port_policy(policy: Option<&TrafficPolicy>, port: u32) -> (Option<TrafficPolicy>, bool) {
    let Some(policy) = policy else {
        return (None, false);
    };
    match policy
        .port_level_settings
        .iter()
        .find(|p| p.port.map(|s| s.number) == Some(port))
    {
        Some(p) => (
            Some(TrafficPolicy {
                load_balancer: p.load_balancer.clone(),
                connection_pool: p.connection_pool.clone(),
                outlier_detection: p.outlier_detection.clone(),
                tls: p.tls.clone(),
                ..Default::default()
            }),
            true,
        ),
        None => (Some(policy.clone()), false),
    }
}

/// The effective policy of a cluster: the rule's (for the port), overridden by the
/// subset's (for the port) as Istio's `MergeSubsetTrafficPolicy` does.
pub fn effective_policy(
    dr: Option<&MergedDestinationRule>,
    port: u32,
    subset: Option<&Subset>,
) -> Option<TrafficPolicy> {
    let (original, _) = port_policy(dr.and_then(|d| d.traffic_policy.as_ref()), port);
    let Some(subset_policy) = subset.and_then(|s| s.traffic_policy.as_ref()) else {
        return original;
    };
    let (subset_policy, has_port_level) = port_policy(Some(subset_policy), port);
    let subset_policy = subset_policy?;
    let Some(mut merged) = original else {
        return Some(subset_policy);
    };
    if subset_policy.connection_pool.is_some() || has_port_level {
        merged.connection_pool = subset_policy.connection_pool;
    }
    if subset_policy.outlier_detection.is_some() || has_port_level {
        merged.outlier_detection = subset_policy.outlier_detection;
    }
    if subset_policy.load_balancer.is_some() || has_port_level {
        merged.load_balancer = subset_policy.load_balancer;
    }
    if subset_policy.tls.is_some() || has_port_level {
        merged.tls = subset_policy.tls;
    }
    if subset_policy.tunnel.is_some() {
        merged.tunnel = subset_policy.tunnel;
    }
    if subset_policy.proxy_protocol.is_some() {
        merged.proxy_protocol = subset_policy.proxy_protocol;
    }
    if subset_policy.retry_budget.is_some() {
        merged.retry_budget = subset_policy.retry_budget;
    }
    Some(merged)
}

struct Context<'c, 's, 'a> {
    scope: &'c Scope<'a>,
    service: &'s Service,
    naming: Naming,
    secrets: &'c mut SecretBook,
    diagnostics: &'c mut Vec<Diagnostic>,
}

impl Context<'_, '_, '_> {
    fn build(
        &mut self,
        port: &ServicePort,
        subset: Option<&Subset>,
        dr: Option<&MergedDestinationRule>,
    ) -> Option<Built> {
        let scope = self.scope;
        let service = self.service;
        let subset_name = subset.map(|s| s.name.as_str()).unwrap_or("");
        let name = match self.naming {
            Naming::Outbound => names::cluster_name(subset_name, &service.hostname, port.number),
            Naming::SniDnat => names::sni_cluster_name(subset_name, &service.hostname, port.number),
        };
        let policy = effective_policy(dr, port.number, subset);
        let lb = policy.as_ref().and_then(|p| p.load_balancer.as_ref());
        let passthrough_lb = matches!(
            lb.and_then(|l| l.lb_policy.as_ref()),
            Some(LbPolicy::Simple(SimpleLb::Passthrough))
        );
        // A sidecar forwards `resolution: NONE` services (and PASSTHROUGH load
        // balancing) to the address the application asked for; a gateway has no
        // original destination, so Istio gives it EDS.
        let original_dst = scope.proxy.kind == crate::xds::ProxyKind::Sidecar
            && (service.resolution == Resolution::None || passthrough_lb);
        let discovery = match service.resolution {
            _ if original_dst => cluster::cluster::DiscoveryType::OriginalDst,
            Resolution::Dns => cluster::cluster::DiscoveryType::StrictDns,
            Resolution::DnsRoundRobin => cluster::cluster::DiscoveryType::LogicalDns,
            Resolution::Static | Resolution::None | Resolution::DynamicDns => {
                cluster::cluster::DiscoveryType::Eds
            }
        };
        let empty = BTreeMap::new();
        let subset_labels = subset.map(|s| &s.labels).unwrap_or(&empty);
        let groups = endpoints::locality_groups(service, port.number, subset_labels);

        let mut c = cluster::Cluster {
            name: name.clone(),
            alt_stat_name: names::delimited_stat_prefix(&name),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                discovery as i32,
            )),
            common_lb_config: Some(cluster::cluster::CommonLbConfig::default()),
            ..Default::default()
        };
        let mut http_options: Option<upstream_http::HttpProtocolOptions> = None;

        // Upstream protocol from the port.
        if port.protocol.is_http2() {
            set_h2(&mut http_options);
        }

        let connection_pool = policy
            .as_ref()
            .and_then(|p| p.connection_pool.clone())
            .unwrap_or_default();
        if port.protocol.is_http() && should_upgrade_h2(&connection_pool) {
            set_h2(&mut http_options);
        }
        c.connect_timeout = Some(pb::duration(scope.connect_timeout));
        apply_connection_pool(&mut c, &mut http_options, &connection_pool, policy.as_ref());

        let outlier = policy.as_ref().and_then(|p| p.outlier_detection.as_ref());
        if let Some(od) = outlier {
            apply_outlier_detection(&mut c, &mut http_options, od);
        }
        apply_load_balancer(&mut c, lb);
        if original_dst {
            // Envoy picks the host from the connection (istiod's `CLUSTER_PROVIDED`).
            c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
            c.lb_config = None;
        } else if passthrough_lb {
            self.diagnostics.push(dr_warning(
            dr,
            "spec.trafficPolicy.loadBalancer.simple",
            format!(
                "PASSTHROUGH load balancing forwards to the original destination, which a gateway does not have; {name} uses LEAST_REQUEST"
            ),
        ));
        }

        // Locality load balancing (when enabled; failover needs outlier detection). A rule
        // without its own setting gets istiod's mesh-wide default: enabled, no options,
        // which fails over by proximity once outlier detection is on.
        let mesh_default = LocalityLoadBalancerSetting::default();
        let locality_setting = match lb.and_then(|l| l.locality_lb_setting.as_ref()) {
            _ if original_dst => None,
            Some(s) if s.enabled == Some(false) => None,
            Some(s) => Some(s),
            None => Some(&mesh_default),
        };
        let locality_policy = locality_setting.map(|setting| LocalityPolicy {
            setting,
            failover_enabled: c.outlier_detection.is_some(),
            proxy_locality: &scope.locality,
            proxy_labels: &scope.proxy.labels,
        });
        if let Some(p) = &locality_policy
            && (!p.setting.distribute.is_empty()
                || (p.failover_enabled
                    && (!p.setting.failover.is_empty() || !p.setting.failover_priority.is_empty())))
            && let Some(common) = c.common_lb_config.as_mut()
        {
            common.locality_config_specifier = Some(
            cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cluster::cluster::common_lb_config::LocalityWeightedLbConfig {},
            ),
        );
        }
        let lb_endpoints = endpoints::locality_lb_endpoints(&groups, locality_policy.as_ref());

        if self.naming == Naming::Outbound {
            let settings = policy.as_ref().and_then(|p| p.tls.as_ref());
            let h2 = h2_options(&mut http_options).is_some();
            // Istio's default SNI of mesh mTLS: `outbound_.PORT_.SUBSET_.HOST`.
            let mesh_sni = names::sni_cluster_name(subset_name, &service.hostname, port.number);
            match settings.map(|s| (s, s.mode.unwrap_or(ClientTlsMode::Disable))) {
                Some((_, ClientTlsMode::Disable)) => {}
                Some((settings, ClientTlsMode::IstioMutual)) => {
                    let sni = if settings.sni.is_empty() {
                        mesh_sni
                    } else {
                        settings.sni.clone()
                    };
                    let sans = if settings.subject_alt_names.is_empty() {
                        service_accounts(service, &scope.trust_domain)
                    } else {
                        settings.subject_alt_names.clone()
                    };
                    let ctx =
                        tls::istio_mutual_upstream_context(&sans, &sni, h2, scope.mesh_secrets);
                    c.transport_socket = Some(tls::transport_socket(&ctx));
                }
                Some((settings, ClientTlsMode::Simple | ClientTlsMode::Mutual)) => {
                    match tls::upstream_context(
                        settings,
                        scope.config,
                        &scope.namespace,
                        &service.subject_alt_names,
                        h2,
                        self.secrets,
                    ) {
                        Ok(ctx) => {
                            if settings.sni.is_empty() {
                                // Istio: SNI (and, without names to check, the SAN) from
                                // the request's Host.
                                let options = http_options.get_or_insert_with(Default::default);
                                let upstream = options
                                    .upstream_http_protocol_options
                                    .get_or_insert_with(Default::default);
                                upstream.auto_sni = true;
                                if settings.subject_alt_names.is_empty()
                                    && service.subject_alt_names.is_empty()
                                    && settings.insecure_skip_verify != Some(true)
                                {
                                    upstream.auto_san_validation = true;
                                }
                            }
                            c.transport_socket = Some(tls::transport_socket(&ctx));
                        }
                        Err(e) => {
                            self.diagnostics.push(dr_warning(
                                dr,
                                "spec.trafficPolicy.tls",
                                format!("{e}; {name} is left out"),
                            ));
                            return None;
                        }
                    }
                }
                // Auto mTLS (istiod's `buildAutoMtlsSettings`): without TLS settings, a
                // mesh-internal service's endpoints labelled `tlsMode: istio` get mesh
                // mTLS and the others plain text, chosen per endpoint by its
                // `envoy.transport_socket_match` metadata. Left out when no endpoint is
                // labelled, so that a gateway without mesh identity can still serve it,
                // and when the service's namespace (or the mesh) has a PeerAuthentication
                // DISABLE: its sidecars then accept plain text only.
                None if scope.auto_mtls
                    && !service.mesh_external
                    && super::authn::namespace_mode(scope.config, &service.namespace)
                        != super::authn::Mode::Disable
                    && groups
                        .iter()
                        .any(|g| g.endpoints.iter().any(endpoints::is_istio_mtls)) =>
                {
                    let sans = service_accounts(service, &scope.trust_domain);
                    let ctx = tls::istio_mutual_upstream_context(
                        &sans,
                        &mesh_sni,
                        h2,
                        scope.mesh_secrets,
                    );
                    c.transport_socket_matches = vec![
                        cluster::cluster::TransportSocketMatch {
                            name: "tlsMode-istio".into(),
                            r#match: Some(wkt::Struct {
                                fields: HashMap::from([(
                                    endpoints::TLS_MODE_SHORT.to_string(),
                                    pb::string_value(endpoints::TLS_MODE_ISTIO),
                                )]),
                            }),
                            transport_socket: Some(tls::transport_socket(&ctx)),
                        },
                        cluster::cluster::TransportSocketMatch {
                            name: "tlsMode-disabled".into(),
                            r#match: Some(wkt::Struct::default()),
                            transport_socket: Some(core::TransportSocket {
                                name: RAW_BUFFER_TRANSPORT_SOCKET.into(),
                                config_type: Some(core::transport_socket::ConfigType::TypedConfig(
                                    pb::any(&raw_buffer::RawBuffer {}),
                                )),
                            }),
                        },
                    ];
                }
                None => {}
            }
            if let Some(pp) = policy.as_ref().and_then(|p| p.proxy_protocol.as_ref()) {
                apply_upstream_proxy_protocol(&mut c, pp);
            }
        }

        // Metadata: the service, and the DestinationRule (and subset) that shaped it.
        let mut istio: HashMap<String, wkt::Value> = HashMap::new();
        istio.insert(
            "services".into(),
            wkt::Value {
                kind: Some(wkt::value::Kind::ListValue(wkt::ListValue {
                    values: vec![pb::string_map_value(&BTreeMap::from([
                        ("host".to_string(), service.hostname.clone()),
                        ("name".to_string(), service.hostname.clone()),
                        ("namespace".to_string(), service.namespace.clone()),
                    ]))],
                })),
            },
        );
        if let Some(source) = dr.and_then(|d| d.sources.first()) {
            let meta = config_metadata(
                "destination-rule",
                &source.meta.namespace,
                &source.meta.name,
            );
            if let Some(v) = meta
                .filter_metadata
                .get("istio")
                .and_then(|s| s.fields.get("config"))
            {
                istio.insert("config".into(), v.clone());
            }
        }
        if !subset_name.is_empty() {
            istio.insert("subset".into(), pb::string_value(subset_name));
        }
        let mut filter_metadata = HashMap::new();
        filter_metadata.insert("istio".to_string(), wkt::Struct { fields: istio });
        c.metadata = Some(core::Metadata {
            filter_metadata,
            ..Default::default()
        });

        if let Some(options) = http_options {
            set_http_protocol_options(&mut c, options);
        }

        let load_assignment = endpoint::ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: lb_endpoints,
            ..Default::default()
        };
        match discovery {
            cluster::cluster::DiscoveryType::OriginalDst => Some(Built {
                cluster: c,
                load_assignment: None,
            }),
            cluster::cluster::DiscoveryType::Eds => {
                c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
                    eds_config: Some(pb::ads_config_source()),
                    service_name: name,
                });
                Some(Built {
                    cluster: c,
                    load_assignment: Some(load_assignment),
                })
            }
            _ => {
                if load_assignment.endpoints.is_empty() {
                    self.diagnostics.push(scope.service_warning(
                    service,
                    "spec",
                    format!(
                        "DNS cluster {name} has no endpoints (no endpoint has the subset's labels); it is left out, as in Istio"
                    ),
                ));
                    return None;
                }
                set_dns_options(&mut c);
                c.load_assignment = Some(load_assignment);
                Some(Built {
                    cluster: c,
                    load_assignment: None,
                })
            }
        }
    }
}

/// Istio's cluster for traffic to destinations it does not know (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's cluster that goes nowhere (REGISTRY_ONLY, unknown destinations).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// `PassthroughCluster` (istiod's `buildDefaultPassthroughCluster`): to the address the
/// application asked for (ORIGINAL_DST, `CLUSTER_PROVIDED`), the mesh's connect timeout,
/// the default circuit breakers, HTTP as the client speaks it, idle after 5 minutes.
pub fn passthrough_cluster(scope: &Scope) -> cluster::Cluster {
    original_dst_passthrough(scope, PASSTHROUGH_CLUSTER)
}

/// An ORIGINAL_DST passthrough cluster named `name` as istiod builds them
/// (`PassthroughCluster`, and the inbound side's `InboundPassthroughCluster`).
pub fn original_dst_passthrough(scope: &Scope, name: &str) -> cluster::Cluster {
    let mut c = cluster::Cluster {
        name: name.to_string(),
        alt_stat_name: names::delimited_stat_prefix(name),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(pb::duration(scope.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    let mut options = Some(upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(pb::seconds(300)),
            ..Default::default()
        }),
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
    });
    apply_connection_pool(
        &mut c,
        &mut options,
        &ConnectionPoolSettings::default(),
        None,
    );
    if let Some(options) = options {
        c.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&options));
    }
    c
}

/// `BlackHoleCluster` (istiod's `buildBlackHoleCluster`): STATIC without endpoints, so
/// every connection to it fails at once (`UH`, no healthy upstream).
pub fn blackhole_cluster(scope: &Scope) -> cluster::Cluster {
    cluster::Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        alt_stat_name: names::delimited_stat_prefix(BLACKHOLE_CLUSTER),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(pb::duration(scope.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// What istiod sets on a STRICT_DNS / LOGICAL_DNS cluster for an IPv4 gateway: V4_ONLY,
/// the mesh's DNS refresh rate with the records' TTL respected, its jitter, and the
/// c-ares resolver with its UDP query cap.
#[allow(deprecated)]
pub(super) fn set_dns_options(c: &mut cluster::Cluster) {
    use crate::xds::pb::envoy::extensions::network::dns_resolver::cares::v3 as cares;
    c.dns_lookup_family = cluster::cluster::DnsLookupFamily::V4Only as i32;
    c.dns_refresh_rate = Some(pb::seconds(DNS_REFRESH_RATE_SECS));
    c.respect_dns_ttl = true;
    c.dns_jitter = Some(pb::duration(std::time::Duration::from_millis(
        DNS_JITTER_MILLIS,
    )));
    c.typed_dns_resolver_config = Some(core::TypedExtensionConfig {
        name: "envoy.network.dns_resolver.cares".into(),
        typed_config: Some(pb::any(&cares::CaresDnsResolverConfig {
            udp_max_queries: Some(pb::u32v(DNS_CARES_UDP_MAX_QUERIES)),
            ..Default::default()
        })),
    });
}

/// Name of Envoy's plain-text transport socket.
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// The identities a service's workloads run as (istiod's `GetServiceAccounts`): the
/// ServiceEntry's `subjectAltNames` and `spiffe://TD/ns/NS/sa/SA` of each endpoint's
/// service account; sorted, without duplicates.
fn service_accounts(service: &Service, trust_domain: &str) -> Vec<String> {
    let mut out: Vec<String> = service.subject_alt_names.clone();
    for e in &service.endpoints {
        if !e.service_account.is_empty() {
            let ns = if e.namespace.is_empty() {
                &service.namespace
            } else {
                &e.namespace
            };
            out.push(format!(
                "spiffe://{trust_domain}/ns/{ns}/sa/{}",
                e.service_account
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A warning about a DestinationRule field (or a general one without a rule).
fn dr_warning(dr: Option<&MergedDestinationRule>, field: &str, message: String) -> Diagnostic {
    match dr.and_then(|d| d.sources.first()) {
        Some(src) => src.warning(field, message),
        None => Diagnostic {
            file: String::new(),
            line: 0,
            column: 0,
            severity: crate::config::Severity::Warning,
            resource: None,
            field: None,
            message,
        },
    }
}

/// Puts the upstream HTTP options on the cluster (HTTP/1.1 when they name no protocol).
pub(super) fn set_http_protocol_options(
    c: &mut cluster::Cluster,
    mut options: upstream_http::HttpProtocolOptions,
) {
    if options.upstream_protocol_options.is_none() {
        options.upstream_protocol_options = Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            core::Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        );
    }
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&options));
}

/// Upstream HTTP/2 (explicit), unless a protocol is already chosen.
pub(super) fn set_h2(options: &mut Option<upstream_http::HttpProtocolOptions>) {
    let o = options.get_or_insert_with(Default::default);
    if o.upstream_protocol_options.is_none() {
        o.upstream_protocol_options = Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            core::Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        );
    }
}

fn h2_options(
    options: &mut Option<upstream_http::HttpProtocolOptions>,
) -> Option<&mut core::Http2ProtocolOptions> {
    use upstream_http::http_protocol_options::{
        UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    match options.as_mut()?.upstream_protocol_options.as_mut()? {
        UpstreamProtocolOptions::ExplicitHttpConfig(e) => match e.protocol_config.as_mut()? {
            ProtocolConfig::Http2ProtocolOptions(h2) => Some(h2),
            _ => None,
        },
        _ => None,
    }
}

/// Istio upgrades HTTP/1.1 to HTTP/2 only when asked (the mesh default is not to).
fn should_upgrade_h2(pool: &ConnectionPoolSettings) -> bool {
    match &pool.http {
        Some(h) if h.use_client_protocol => false,
        Some(h) => h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade),
        None => false,
    }
}

/// A connection pool's settings as istiod applies them (`applyConnectionPool`): circuit
/// breakers at their maximum unless set, timeouts, keep-alives and HTTP limits.
pub(super) fn apply_connection_pool(
    c: &mut cluster::Cluster,
    http_options: &mut Option<upstream_http::HttpProtocolOptions>,
    pool: &ConnectionPoolSettings,
    policy: Option<&TrafficPolicy>,
) {
    let mut threshold = cluster::circuit_breakers::Thresholds {
        max_connections: Some(pb::u32v(u32::MAX)),
        max_pending_requests: Some(pb::u32v(u32::MAX)),
        max_requests: Some(pb::u32v(u32::MAX)),
        max_retries: Some(pb::u32v(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    };
    if let Some(budget) = policy.and_then(|p| p.retry_budget.as_ref()) {
        threshold.retry_budget = Some(cluster::circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(types::Percent {
                value: budget.percent.unwrap_or(20.0),
            }),
            min_retry_concurrency: Some(pb::u32v(if budget.min_retry_concurrency > 0 {
                budget.min_retry_concurrency
            } else {
                3
            })),
            budget_interval: budget.budget_interval.map(|d| pb::duration(d.get())),
        });
    }
    let positive = |n: i32| u32::try_from(n).ok().filter(|&n| n > 0);
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    let mut max_concurrent_streams = None;
    let mut keepalive = None;
    if let Some(h) = &pool.http {
        if let Some(n) = positive(h.http2_max_requests) {
            threshold.max_requests = Some(pb::u32v(n));
        }
        if let Some(n) = positive(h.http1_max_pending_requests) {
            threshold.max_pending_requests = Some(pb::u32v(n));
        }
        if let Some(n) = positive(h.max_retries) {
            threshold.max_retries = Some(pb::u32v(n));
        }
        idle_timeout = h.idle_timeout;
        max_requests_per_connection = positive(h.max_requests_per_connection);
        max_concurrent_streams = positive(h.max_concurrent_streams);
        keepalive = h.http2_keep_alive.clone();
    }
    let mut max_connection_duration = None;
    if let Some(t) = &pool.tcp {
        if let Some(d) = t.connect_timeout {
            c.connect_timeout = Some(pb::duration(d.get()));
        }
        if let Some(n) = positive(t.max_connections) {
            threshold.max_connections = Some(pb::u32v(n));
        }
        max_connection_duration = t.max_connection_duration;
        if idle_timeout.is_none() {
            idle_timeout = t.idle_timeout;
        }
        if let Some(k) = &t.tcp_keepalive {
            let mut ka = core::TcpKeepalive::default();
            if k.probes > 0 {
                ka.keepalive_probes = Some(pb::u32v(k.probes));
            }
            if let Some(d) = k.time {
                ka.keepalive_time = Some(pb::u32v(
                    u32::try_from(d.get().as_secs()).unwrap_or(u32::MAX),
                ));
            }
            if let Some(d) = k.interval {
                ka.keepalive_interval = Some(pb::u32v(
                    u32::try_from(d.get().as_secs()).unwrap_or(u32::MAX),
                ));
            }
            c.upstream_connection_options = Some(cluster::UpstreamConnectionOptions {
                tcp_keepalive: Some(ka),
                ..Default::default()
            });
        }
    }
    c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![threshold],
        ..Default::default()
    });

    if max_connection_duration.is_some()
        || idle_timeout.is_some()
        || max_requests_per_connection.is_some()
        || max_concurrent_streams.is_some()
        || keepalive.is_some()
    {
        let options = http_options.get_or_insert_with(Default::default);
        let common = options
            .common_http_protocol_options
            .get_or_insert_with(Default::default);
        if let Some(d) = idle_timeout {
            common.idle_timeout = Some(pb::duration(d.get()));
        }
        if let Some(n) = max_requests_per_connection {
            common.max_requests_per_connection = Some(pb::u32v(n));
        }
        if let Some(d) = max_connection_duration {
            common.max_connection_duration = Some(pb::duration(d.get()));
        }
        if let Some(h2) = h2_options(http_options) {
            if let Some(n) = max_concurrent_streams {
                h2.max_concurrent_streams = Some(pb::u32v(n));
            }
            if let Some(k) = &keepalive {
                h2.connection_keepalive = Some(core::KeepaliveSettings {
                    interval: k.interval.map(|d| pb::duration(d.get())),
                    timeout: k.timeout.map(|d| pb::duration(d.get())),
                    ..Default::default()
                });
            }
        }
    }
    if pool.http.as_ref().is_some_and(|h| h.use_client_protocol) {
        let options = http_options.get_or_insert_with(Default::default);
        options.upstream_protocol_options = Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                upstream_http::http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(core::Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(core::Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            ),
        );
    }
}

fn apply_outlier_detection(
    c: &mut cluster::Cluster,
    http_options: &mut Option<upstream_http::HttpProtocolOptions>,
    od: &OutlierDetection,
) {
    let mut out = cluster::OutlierDetection {
        enforcing_success_rate: Some(pb::u32v(0)),
        ..Default::default()
    };
    if let Some(n) = od.consecutive_5xx_errors {
        out.consecutive_5xx = Some(pb::u32v(n));
        out.enforcing_consecutive_5xx = Some(pb::u32v(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(pb::u32v(n));
        out.enforcing_consecutive_gateway_failure = Some(pb::u32v(if n > 0 { 100 } else { 0 }));
    }
    if let Some(d) = od.interval {
        out.interval = Some(pb::duration(d.get()));
    }
    if let Some(d) = od.base_ejection_time {
        out.base_ejection_time = Some(pb::duration(d.get()));
    }
    if od.max_ejection_percent > 0 {
        out.max_ejection_percent = Some(pb::u32v(
            u32::try_from(od.max_ejection_percent).unwrap_or(100),
        ));
    }
    if od.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(n) = od.consecutive_local_origin_failures.filter(|&n| n > 0) {
            out.consecutive_local_origin_failure = Some(pb::u32v(n));
            out.enforcing_consecutive_local_origin_failure = Some(pb::u32v(100));
        }
        out.enforcing_local_origin_success_rate = Some(pb::u32v(0));
    }
    c.outlier_detection = Some(out);
    if od.min_health_percent >= 0
        && let Some(common) = c.common_lb_config.as_mut()
    {
        common.healthy_panic_threshold = Some(types::Percent {
            value: f64::from(od.min_health_percent),
        });
    }
    if !od.outlier_detection_http_error_codes.is_empty() {
        let rules: Vec<common_matcher::MatchPredicate> = od
            .outlier_detection_http_error_codes
            .iter()
            .map(|code| common_matcher::MatchPredicate {
                rule: Some(
                    common_matcher::match_predicate::Rule::HttpResponseHeadersMatch(
                        common_matcher::HttpHeadersMatch {
                            headers: vec![route::HeaderMatcher {
                                name: ":status".into(),
                                header_match_specifier: Some(
                                    route::header_matcher::HeaderMatchSpecifier::StringMatch(
                                        pb::exact(&code.to_string()),
                                    ),
                                ),
                                ..Default::default()
                            }],
                        },
                    ),
                ),
            })
            .collect();
        let predicate = if rules.len() == 1 {
            rules.into_iter().next()
        } else {
            Some(common_matcher::MatchPredicate {
                rule: Some(common_matcher::match_predicate::Rule::OrMatch(
                    common_matcher::match_predicate::MatchSet { rules },
                )),
            })
        };
        http_options
            .get_or_insert_with(Default::default)
            .outlier_detection = Some(upstream_http::http_protocol_options::OutlierDetection {
            error_matcher: predicate,
        });
    }
}

fn apply_load_balancer(c: &mut cluster::Cluster, lb: Option<&LoadBalancerSettings>) {
    use cluster::cluster::{LbConfig, LbPolicy as EnvoyLb};
    let slow_start = lb.and_then(|l| {
        if let Some(w) = &l.warmup {
            Some(cluster::cluster::SlowStartConfig {
                slow_start_window: w.duration.map(|d| pb::duration(d.get())),
                aggression: Some(core::RuntimeDouble {
                    default_value: w.aggression.unwrap_or(1.0),
                    runtime_key: "meshgate.slow_start.aggression".into(),
                }),
                min_weight_percent: Some(types::Percent {
                    value: w.minimum_percent.unwrap_or(10.0),
                }),
            })
        } else {
            l.warmup_duration_secs
                .map(|d| cluster::cluster::SlowStartConfig {
                    slow_start_window: Some(pb::duration(d.get())),
                    ..Default::default()
                })
        }
    });
    let simple = match lb.and_then(|l| l.lb_policy.as_ref()) {
        Some(LbPolicy::Simple(s)) => Some(*s),
        _ => None,
    };
    match simple {
        Some(SimpleLb::Random) => c.lb_policy = EnvoyLb::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            c.lb_policy = EnvoyLb::RoundRobin as i32;
            if let Some(s) = slow_start {
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(
                    cluster::cluster::RoundRobinLbConfig {
                        slow_start_config: Some(s),
                    },
                ));
            }
        }
        Some(SimpleLb::Passthrough) => {
            // A gateway has no original destination; keep the default algorithm.
            c.lb_policy = EnvoyLb::LeastRequest as i32;
        }
        // LEAST_REQUEST, LEAST_CONN and the default.
        _ => {
            c.lb_policy = EnvoyLb::LeastRequest as i32;
            if let Some(s) = slow_start {
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(
                    cluster::cluster::LeastRequestLbConfig {
                        slow_start_config: Some(s),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    if let Some(hash) = consistent_hash(lb) {
        match hash.hash_algorithm {
            Some(HashAlgorithm::Maglev(m)) => {
                c.lb_policy = EnvoyLb::Maglev as i32;
                c.lb_config = (m.table_size != 0).then(|| {
                    LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                        table_size: Some(pb::u64v(m.table_size)),
                    })
                });
            }
            Some(HashAlgorithm::RingHash(r)) => {
                c.lb_policy = EnvoyLb::RingHash as i32;
                c.lb_config = (r.minimum_ring_size != 0).then(|| {
                    LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(pb::u64v(r.minimum_ring_size)),
                        ..Default::default()
                    })
                });
            }
            None => {
                c.lb_policy = EnvoyLb::RingHash as i32;
                let size = if hash.minimum_ring_size != 0 {
                    hash.minimum_ring_size
                } else {
                    1024
                };
                c.lb_config = Some(LbConfig::RingHashLbConfig(
                    cluster::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(pb::u64v(size)),
                        ..Default::default()
                    },
                ));
            }
        }
    }
}

/// Name of Envoy's upstream PROXY protocol transport socket.
pub const UPSTREAM_PROXY_PROTOCOL: &str = "envoy.transport_sockets.upstream_proxy_protocol";

/// DestinationRule `trafficPolicy.proxyProtocol` (istiod's `applyUpstreamProxyProtocol`):
/// the cluster's transport socket, and each of its `transport_socket_matches`, wrapped
/// in `upstream_proxy_protocol`; a plain-text cluster gets it around `raw_buffer`.
fn apply_upstream_proxy_protocol(
    c: &mut cluster::Cluster,
    pp: &crate::config::types::destination_rule::ProxyProtocol,
) {
    use crate::config::types::destination_rule::ProxyProtocolVersion;
    use crate::xds::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    let version = match pp.version.unwrap_or(ProxyProtocolVersion::V1) {
        ProxyProtocolVersion::V1 => core::proxy_protocol_config::Version::V1,
        ProxyProtocolVersion::V2 => core::proxy_protocol_config::Version::V2,
    };
    let wrap = |inner: core::TransportSocket| core::TransportSocket {
        name: UPSTREAM_PROXY_PROTOCOL.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pb::any(
            &ProxyProtocolUpstreamTransport {
                config: Some(core::ProxyProtocolConfig {
                    version: version as i32,
                    ..Default::default()
                }),
                transport_socket: Some(inner),
                ..Default::default()
            },
        ))),
    };
    if c.transport_socket.is_none() && c.transport_socket_matches.is_empty() {
        c.transport_socket = Some(wrap(core::TransportSocket {
            name: RAW_BUFFER_TRANSPORT_SOCKET.into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pb::any(
                &raw_buffer::RawBuffer {},
            ))),
        }));
        return;
    }
    if let Some(ts) = c.transport_socket.take() {
        c.transport_socket = Some(wrap(ts));
    }
    for m in &mut c.transport_socket_matches {
        if let Some(ts) = m.transport_socket.take() {
            m.transport_socket = Some(wrap(ts));
        }
    }
}
