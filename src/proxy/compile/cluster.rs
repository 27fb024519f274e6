//! Cluster + ClusterLoadAssignment -> [`Cluster`].
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::proxy_protocol::{PassThroughTlvs, Version as ProxyVersion};
use crate::proxy::snapshot::Snapshot;
use crate::proxy::tls::TlsRuntime;
use crate::proxy::upstream::cluster::*;
use crate::proxy::upstream::host::{EndpointSet, Host, Locality, Priority};
use crate::proxy::upstream::lb::{LbPolicy, SlowStart};
use crate::proxy::upstream::outlier::OutlierConfig;
use crate::proxy::upstream::pool::DEFAULT_IDLE_TIMEOUT;
use crate::proxy::upstream::tls::{TransportSockets, UpstreamProxyProtocol, UpstreamTransport};
use crate::tls::UpstreamTls;
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::cluster::v3 as pb;
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::config::endpoint::v3 as ep_pb;
use crate::xds::pb::envoy::extensions::upstreams::http::v3 as http_opts_pb;
use arc_swap::ArcSwap;
use prost::{Message, Name};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// The endpoint metadata namespace `transport_socket_matches` are matched against.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

pub(crate) fn compile_clusters(
    set: &ResourceSet,
    previous: Option<&Snapshot>,
    tls: &TlsRuntime,
) -> Result<HashMap<String, Arc<Cluster>>, CompileError> {
    let mut out = HashMap::new();
    for c in &set.clusters {
        let prev = previous.and_then(|p| p.clusters.get(&c.name));
        let compiled = compile_cluster(c, set, prev.map(|p| &**p), tls)?;
        if out.insert(c.name.clone(), Arc::new(compiled)).is_some() {
            return Err(Cx::new("cluster", &c.name).err("name", "duplicate cluster name"));
        }
    }
    Ok(out)
}

pub(crate) fn compile_cluster(
    c: &pb::Cluster,
    set: &ResourceSet,
    prev: Option<&Cluster>,
    tls: &TlsRuntime,
) -> Result<Cluster, CompileError> {
    use pb::cluster::ClusterDiscoveryType as T;
    use pb::cluster::DiscoveryType as D;
    use pb::cluster::LbConfig;
    let cx = &mut Cx::new("cluster", &c.name);
    fields!(
        cx,
        c,
        pb::Cluster {
            supported: [
                name,
                alt_stat_name,
                eds_cluster_config,
                connect_timeout,
                lb_policy,
                load_assignment,
                max_requests_per_connection,
                circuit_breakers,
                common_http_protocol_options,
                http_protocol_options,
                http2_protocol_options,
                typed_extension_protocol_options,
                dns_refresh_rate,
                dns_failure_refresh_rate,
                respect_dns_ttl,
                dns_lookup_family,
                dns_jitter,
                dns_resolvers,
                use_tcp_for_dns_lookups,
                dns_resolution_config,
                typed_dns_resolver_config,
                outlier_detection,
                common_lb_config,
                transport_socket,
                transport_socket_matches,
                cluster_discovery_type,
                lb_config
            ],
            ignored: [
                per_connection_buffer_limit_bytes,
                metadata,
                cleanup_interval,
                upstream_connection_options,
                track_timeout_budgets,
                track_cluster_stats,
                wait_for_warm_on_init,
                connection_pool_per_downstream_connection,
                stats_matcher
            ],
            unsupported: [
                transport_socket_matcher,
                per_connection_buffer_high_watermark_timeout,
                health_checks,
                upstream_http_protocol_options,
                close_connections_on_host_health_failure,
                ignore_health_on_host_removal,
                filters,
                load_balancing_policy,
                lrs_server,
                lrs_report_endpoint_metrics,
                upstream_bind_config,
                protocol_selection,
                lb_subset_config,
                preconnect_policy,
                upstream_config,
                queuing_policies
            ],
        }
    );
    let connect_timeout =
        duration(cx, "connect_timeout", &c.connect_timeout)?.unwrap_or(Duration::from_secs(5));
    let lb = match pb::cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => {
                    l.choice_count.map(|c| c.value).unwrap_or(2)
                }
                _ => 2,
            },
        },
        Ok(pb::cluster::LbPolicy::RingHash) => {
            let (min_ring, max_ring) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size.map(|v| v.value).unwrap_or(1024),
                    r.maximum_ring_size
                        .map(|v| v.value)
                        .unwrap_or(8 * 1024 * 1024),
                ),
                _ => (1024, 8 * 1024 * 1024),
            };
            if min_ring == 0 || min_ring > max_ring || max_ring > 8 * 1024 * 1024 {
                return Err(cx.err("ring_hash_lb_config", "invalid ring sizes"));
            }
            LbPolicy::RingHash { min_ring, max_ring }
        }
        Ok(pb::cluster::LbPolicy::Maglev) => LbPolicy::Maglev {
            table_size: match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.map(|v| v.value).unwrap_or(65537),
                _ => 65537,
            },
        },
        _ => return Err(cx.err("lb_policy", "load balancing policy not supported")),
    };
    if let LbPolicy::Maglev { table_size } = lb
        && (table_size < 2 || !is_prime(table_size))
    {
        return Err(cx.err("maglev_lb_config.table_size", "must be a prime number"));
    }
    let slow_start = match &c.lb_config {
        Some(LbConfig::OriginalDstLbConfig(_)) => {
            return Err(cx.unsupported("original_dst_lb_config"));
        }
        Some(LbConfig::LeastRequestLbConfig(l)) if l.active_request_bias.is_some() => {
            return Err(cx.unsupported("least_request_lb_config.active_request_bias"));
        }
        Some(LbConfig::RoundRobinLbConfig(r)) => cx.at("round_robin_lb_config", |cx| {
            slow_start(cx, r.slow_start_config.as_ref())
        })?,
        Some(LbConfig::LeastRequestLbConfig(l)) => cx.at("least_request_lb_config", |cx| {
            slow_start(cx, l.slow_start_config.as_ref())
        })?,
        _ => None,
    };
    let options = protocol_options(cx, c)?;
    let (protocol, idle_timeout, mut max_requests_per_connection) =
        (options.protocol, options.idle, options.max_requests);
    // The deprecated cluster field applies when the protocol options do not say (as in
    // Envoy); 0 is no limit.
    #[allow(deprecated)]
    if max_requests_per_connection.is_none()
        && let Some(m) = c.max_requests_per_connection.filter(|m| m.value > 0)
    {
        max_requests_per_connection = Some(m.value);
    }
    let thresholds = match &c.circuit_breakers {
        None => Thresholds::default(),
        Some(cb) => cx.at("circuit_breakers", |cx| {
            if !cb.per_host_thresholds.is_empty() {
                return Err(cx.unsupported("per_host_thresholds"));
            }
            let mut t = None;
            for (i, th) in cb.thresholds.iter().enumerate() {
                cx.at(format_args!("thresholds[{i}]"), |cx| {
                    fields!(
                        cx,
                        th,
                        pb::circuit_breakers::Thresholds {
                            supported: [
                                priority,
                                max_connections,
                                max_pending_requests,
                                max_requests,
                                max_retries,
                                retry_budget
                            ],
                            ignored: [track_remaining],
                            unsupported: [max_connection_pools],
                        }
                    );
                    let retry_budget = match &th.retry_budget {
                        None => None,
                        Some(b) => cx.at("retry_budget", |cx| compile_retry_budget(cx, b))?,
                    };
                    // Meshgate does not route by priority; HIGH thresholds never apply.
                    // Envoy takes the first entry of the priority.
                    if th.priority != core_pb::RoutingPriority::Default as i32 || t.is_some() {
                        return Ok(());
                    }
                    let get = |v: &Option<crate::xds::pb::google::protobuf::UInt32Value>,
                               d: u32| {
                        v.map(|v| v.value).unwrap_or(d)
                    };
                    t = Some(Thresholds {
                        max_connections: get(&th.max_connections, 1024),
                        max_pending_requests: get(&th.max_pending_requests, 1024),
                        max_requests: get(&th.max_requests, 1024),
                        max_retries: get(&th.max_retries, 3),
                        retry_budget,
                    });
                    Ok(())
                })?;
            }
            Ok(t.unwrap_or_default())
        })?,
    };
    let outlier = match &c.outlier_detection {
        None => None,
        Some(o) => Some(cx.at("outlier_detection", |cx| compile_outlier(cx, o))?),
    };
    let (panic_threshold, locality_weighted) = match &c.common_lb_config {
        None => (50.0, false),
        Some(l) => cx.at("common_lb_config", |cx| {
            use pb::cluster::common_lb_config::LocalityConfigSpecifier as L;
            fields!(
                cx,
                l,
                pb::cluster::CommonLbConfig {
                    supported: [healthy_panic_threshold, locality_config_specifier],
                    ignored: [update_merge_window, close_connections_on_host_set_change],
                    unsupported: [
                        ignore_new_hosts_until_first_hc,
                        consistent_hashing_lb_config,
                        override_host_status
                    ],
                }
            );
            let panic = l.healthy_panic_threshold.map(|p| p.value).unwrap_or(50.0);
            let lw = match &l.locality_config_specifier {
                None => false,
                Some(L::LocalityWeightedLbConfig(_)) => true,
                Some(L::ZoneAwareLbConfig(_)) => return Err(cx.unsupported("zone_aware_lb_config")),
            };
            Ok((panic, lw))
        })?,
    };
    let discovery_type = match &c.cluster_discovery_type {
        None => D::Static,
        Some(T::Type(t)) => {
            D::try_from(*t).map_err(|_| cx.err("type", "unknown discovery type"))?
        }
        Some(T::ClusterType(_)) => return Err(cx.unsupported("cluster_type")),
    };
    let state = prev.map(|p| p.state.clone()).unwrap_or_default();
    let prev_set = prev.map(|p| p.endpoints.load_full());
    let (discovery, endpoints) = match discovery_type {
        D::Static => {
            let cla = c
                .load_assignment
                .as_ref()
                .ok_or_else(|| cx.err("load_assignment", "required for STATIC clusters"))?;
            let set = cx.at("load_assignment", |cx| {
                endpoint_set(cx, cla, prev_set.as_deref())
            })?;
            (Discovery::Static, Arc::new(ArcSwap::from_pointee(set)))
        }
        D::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            let set = match set.endpoint(service) {
                Some(cla) => {
                    let mut ecx = Cx::new("cluster_load_assignment", service);
                    endpoint_set(&mut ecx, cla, prev_set.as_deref())?
                }
                // Not delivered (yet): a cluster with no hosts answers "no healthy upstream".
                None => EndpointSet::new(Vec::new(), 1.4),
            };
            (Discovery::Eds, Arc::new(ArcSwap::from_pointee(set)))
        }
        D::StrictDns | D::LogicalDns => {
            let cla = c
                .load_assignment
                .as_ref()
                .ok_or_else(|| cx.err("load_assignment", "required for DNS clusters"))?;
            let dns = cx.at("load_assignment", |cx| dns_config(cx, c, cla))?;
            if discovery_type == D::LogicalDns && dns.targets.len() != 1 {
                return Err(cx.err(
                    "load_assignment",
                    "LOGICAL_DNS clusters need exactly one endpoint",
                ));
            }
            let discovery = if discovery_type == D::StrictDns {
                Discovery::StrictDns(dns)
            } else {
                Discovery::LogicalDns(dns)
            };
            // Same DNS settings as before: keep the resolved hosts and the resolver.
            let endpoints = match prev {
                Some(p) if p.discovery == discovery => p.endpoints.clone(),
                _ => Arc::new(ArcSwap::from_pointee(EndpointSet::new(Vec::new(), 1.4))),
            };
            (discovery, endpoints)
        }
        D::OriginalDst => return Err(cx.err("type", "ORIGINAL_DST clusters are not supported")),
    };
    let transport = transport_sockets(cx, c, set, &options, prev, tls)?;
    Ok(Cluster {
        name: c.name.as_str().into(),
        observability_name: if c.alt_stat_name.is_empty() {
            c.name.as_str().into()
        } else {
            c.alt_stat_name.as_str().into()
        },
        discovery,
        connect_timeout,
        lb,
        protocol,
        idle_timeout,
        max_requests_per_connection,
        thresholds,
        outlier,
        panic_threshold,
        locality_weighted,
        slow_start: slow_start
            .filter(|_| matches!(lb, LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. })),
        endpoints,
        state,
        transport,
    })
}

/// `slow_start_config` (Istio's `warmup`): window, aggression (default 1.0, must be
/// positive), minimum weight percent (default 10).
fn slow_start(
    cx: &mut Cx,
    c: Option<&pb::cluster::SlowStartConfig>,
) -> Result<Option<SlowStart>, CompileError> {
    let Some(c) = c else { return Ok(None) };
    cx.at("slow_start_config", |cx| {
        let Some(window) = duration(cx, "slow_start_window", &c.slow_start_window)? else {
            return Ok(None);
        };
        if window.is_zero() {
            return Ok(None);
        }
        let aggression = c.aggression.as_ref().map_or(1.0, |a| a.default_value);
        if !(aggression > 0.0 && aggression.is_finite()) {
            return Err(cx.err("aggression", "must be greater than 0"));
        }
        let min = c.min_weight_percent.as_ref().map_or(10.0, |p| p.value);
        if !(0.0..=100.0).contains(&min) {
            return Err(cx.err("min_weight_percent", "must be between 0 and 100"));
        }
        Ok(Some(SlowStart {
            window,
            aggression,
            min_weight: min / 100.0,
        }))
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// A compiled `transport_socket`: plain text, or TLS.
fn transport_socket(
    cx: &mut Cx,
    field: &str,
    ts: &core_pb::TransportSocket,
    options: &ProtocolOptions,
    prev: Option<&Cluster>,
    tls: &TlsRuntime,
    cluster: &str,
) -> Result<Option<Arc<UpstreamTransport>>, CompileError> {
    use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use core_pb::transport_socket::ConfigType;
    let any = match &ts.config_type {
        None => return Ok(None),
        Some(ConfigType::TypedConfig(a)) if a.type_url == RAW_BUFFER => return Ok(None),
        Some(ConfigType::TypedConfig(a)) if a.type_url == UPSTREAM_TLS_CONTEXT => a,
        Some(ConfigType::TypedConfig(a)) => {
            return Err(cx.err(
                field,
                format!(
                    "upstream transport socket {} is not supported (raw_buffer and tls only)",
                    a.type_url
                ),
            ));
        }
    };
    let mut ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| cx.err(field, format!("decoding UpstreamTlsContext: {e}")))?;
    // The cluster's HTTP options that shape the handshake are part of the socket.
    ctx.auto_host_sni |= options.auto_sni;
    ctx.auto_sni_san_validation |= options.auto_san_validation;
    let mut key = ctx.encode_to_vec();
    key.push(options.protocol as u8);
    if let Some(t) = prev.and_then(|p| p.transport.reusable(&key)) {
        return Ok(Some(t));
    }
    let name = format!("cluster {cluster}: {field}");
    let build = |alpn: &str| -> Result<UpstreamTls, CompileError> {
        let mut ctx = ctx.clone();
        let common = ctx.common_tls_context.get_or_insert_with(Default::default);
        // Envoy's fallback when the context names no protocols: the cluster's own.
        if common.alpn_protocols.is_empty() {
            common.alpn_protocols = vec![alpn.to_string()];
        }
        UpstreamTls::from_context(&ctx, &tls.store, &name).map_err(|e| cx.err(field, e.to_string()))
    };
    let (h1, h2) = match options.protocol {
        UpstreamProtocol::Http1 => {
            let t = build("http/1.1")?;
            (t.clone(), t)
        }
        UpstreamProtocol::Http2 => {
            let t = build("h2")?;
            (t.clone(), t)
        }
        UpstreamProtocol::UseDownstream => (build("http/1.1")?, build("h2")?),
    };
    Ok(Some(Arc::new(UpstreamTransport {
        key,
        h1,
        h2,
        auto_sni: ctx.auto_host_sni,
    })))
}

const UPSTREAM_PROXY_PROTOCOL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

/// `envoy.transport_sockets.upstream_proxy_protocol`: the PROXY header it writes, and
/// the socket it wraps.
fn unwrap_proxy_protocol<'a>(
    cx: &mut Cx,
    field: &str,
    ts: &'a core_pb::TransportSocket,
) -> Result<
    (
        Option<UpstreamProxyProtocol>,
        std::borrow::Cow<'a, core_pb::TransportSocket>,
    ),
    CompileError,
> {
    use crate::xds::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    use core_pb::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) if a.type_url == UPSTREAM_PROXY_PROTOCOL => a,
        _ => return Ok((None, std::borrow::Cow::Borrowed(ts))),
    };
    let p = ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).map_err(|e| {
        cx.err(
            field,
            format!("decoding ProxyProtocolUpstreamTransport: {e}"),
        )
    })?;
    cx.at(field, |cx| {
        fields!(
            cx,
            &p,
            ProxyProtocolUpstreamTransport {
                supported: [config, transport_socket],
                ignored: [],
                unsupported: [allow_unspecified_address, tlv_as_pool_key],
            }
        );
        let config = p.config.clone().unwrap_or_default();
        cx.at("config", |cx| {
            fields!(
                cx,
                &config,
                core_pb::ProxyProtocolConfig {
                    supported: [version, pass_through_tlvs],
                    ignored: [],
                    unsupported: [added_tlvs],
                }
            );
            Ok(())
        })?;
        let version = match core_pb::proxy_protocol_config::Version::try_from(config.version) {
            Ok(core_pb::proxy_protocol_config::Version::V1) => ProxyVersion::V1,
            Ok(core_pb::proxy_protocol_config::Version::V2) => ProxyVersion::V2,
            Err(_) => return Err(cx.err("config.version", "unknown PROXY protocol version")),
        };
        let pass_through = match &config.pass_through_tlvs {
            None => PassThroughTlvs::None,
            Some(pt) => cx.at("config.pass_through_tlvs", |cx| pass_through_tlvs(cx, pt))?,
        };
        let Some(inner) = p.transport_socket.clone() else {
            return Err(cx.err(
                "transport_socket",
                "the wrapped transport socket is required",
            ));
        };
        Ok((
            Some(UpstreamProxyProtocol {
                version,
                pass_through,
            }),
            std::borrow::Cow::Owned(inner),
        ))
    })
}

/// `ProxyProtocolPassThroughTLVs`.
pub(crate) fn pass_through_tlvs(
    cx: &mut Cx,
    pt: &core_pb::ProxyProtocolPassThroughTlVs,
) -> Result<PassThroughTlvs, CompileError> {
    use core_pb::proxy_protocol_pass_through_tl_vs::PassTlVsMatchType;
    match PassTlVsMatchType::try_from(pt.match_type) {
        Ok(PassTlVsMatchType::IncludeAll) => Ok(PassThroughTlvs::All),
        Ok(PassTlVsMatchType::Include) => {
            let mut types = Vec::with_capacity(pt.tlv_type.len());
            for (i, t) in pt.tlv_type.iter().enumerate() {
                match u8::try_from(*t) {
                    Ok(t) => types.push(t),
                    Err(_) => {
                        return Err(cx.err(&format!("tlv_type[{i}]"), "a TLV type is 0 to 255"));
                    }
                }
            }
            Ok(PassThroughTlvs::Only(types))
        }
        Err(_) => Err(cx.err("match_type", "unknown match type")),
    }
}

/// The cluster's transport sockets and which one each endpoint uses: an endpoint whose
/// `envoy.transport_socket_match` metadata has every key/value of a match's `match`
/// uses that match's socket (the first one); others use the cluster's socket.
fn transport_sockets(
    cx: &mut Cx,
    c: &pb::Cluster,
    set: &ResourceSet,
    options: &ProtocolOptions,
    prev: Option<&Cluster>,
    tls: &TlsRuntime,
) -> Result<TransportSockets, CompileError> {
    let mut out = TransportSockets::default();
    // `upstream_proxy_protocol` wraps each socket (istiod wraps them all alike); the
    // header is one setting of the cluster.
    let mut proxy: Option<Option<UpstreamProxyProtocol>> = None;
    let mut agree = |cx: &mut Cx, field: &str, p: Option<UpstreamProxyProtocol>| match &proxy {
        Some(q) if *q != p => Err(cx.err(
            field,
            "upstream_proxy_protocol must wrap every transport socket of a cluster alike",
        )),
        _ => {
            proxy = Some(p);
            Ok(())
        }
    };
    let default = match &c.transport_socket {
        Some(ts) => {
            let (p, ts) = unwrap_proxy_protocol(cx, "transport_socket", ts)?;
            agree(cx, "transport_socket", p)?;
            transport_socket(cx, "transport_socket", &ts, options, prev, tls, &c.name)?
        }
        None => None,
    };
    out.all.extend(default.clone());
    let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let socket = cx.at(format_args!("transport_socket_matches[{i}]"), |cx| {
            fields!(
                cx,
                m,
                pb::cluster::TransportSocketMatch {
                    supported: [name, r#match, transport_socket],
                    ignored: [],
                    unsupported: [],
                }
            );
            match &m.transport_socket {
                Some(ts) => {
                    let (p, ts) = unwrap_proxy_protocol(cx, "transport_socket", ts)?;
                    agree(cx, "transport_socket", p)?;
                    transport_socket(cx, "transport_socket", &ts, options, prev, tls, &c.name)
                }
                None => {
                    agree(cx, "transport_socket", None)?;
                    Ok(None)
                }
            }
        })?;
        out.all.extend(socket.clone());
        let criteria = m.r#match.as_ref().map(|s| &s.fields);
        matches.push((criteria, socket));
    }
    let select = |metadata: Option<&crate::xds::pb::google::protobuf::Struct>| {
        matches
            .iter()
            .find(|(criteria, _)| {
                criteria.is_none_or(|want| {
                    want.iter().all(|(k, v)| {
                        metadata
                            .and_then(|m| m.fields.get(k))
                            .is_some_and(|have| have == v)
                    })
                })
            })
            .map(|(_, socket)| socket.clone())
    };
    out.proxy_protocol = proxy.flatten();
    out.fallback = select(None).unwrap_or(default.clone());
    if matches.is_empty() {
        return Ok(out);
    }
    let cla = match c.load_assignment.as_ref() {
        Some(cla) => Some(cla),
        None => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            set.endpoint(service)
        }
    };
    for le in cla.iter().flat_map(|cla| cla.endpoints.iter()) {
        for e in &le.lb_endpoints {
            use ep_pb::lb_endpoint::HostIdentifier;
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            let Ok((ip, port)) = socket_addr(cx, "", &ep.address) else {
                continue;
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            let metadata = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH));
            let socket = select(metadata).unwrap_or(default.clone());
            out.by_host.insert(SocketAddr::new(ip, port), socket);
        }
    }
    Ok(out)
}

/// What a cluster's HTTP protocol options say.
struct ProtocolOptions {
    protocol: UpstreamProtocol,
    idle: Option<Duration>,
    max_requests: Option<u32>,
    /// `upstream_http_protocol_options.auto_sni`.
    auto_sni: bool,
    /// `upstream_http_protocol_options.auto_san_validation`.
    auto_san_validation: bool,
}

fn protocol_options(cx: &mut Cx, c: &pb::Cluster) -> Result<ProtocolOptions, CompileError> {
    let mut protocol = UpstreamProtocol::Http1;
    let mut idle = Some(DEFAULT_IDLE_TIMEOUT);
    let mut max_rq = None;
    let (mut auto_sni, mut auto_san_validation) = (false, false);
    #[allow(deprecated)]
    {
        if c.http2_protocol_options.is_some() {
            protocol = UpstreamProtocol::Http2;
        }
        if let Some(common) = &c.common_http_protocol_options {
            cx.at("common_http_protocol_options", |cx| {
                let (i, m) = common_options(cx, common)?;
                idle = i;
                max_rq = m;
                Ok(())
            })?;
        }
    }
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys {
        let any = &c.typed_extension_protocol_options[key];
        cx.at(
            format_args!("typed_extension_protocol_options[{key}]"),
            |cx| {
                if any.type_url != http_opts_pb::HttpProtocolOptions::type_url() {
                    return Err(cx.err(
                        "",
                        format!(
                            "protocol options of type {} are not supported",
                            any.type_url
                        ),
                    ));
                }
                if key != HTTP_PROTOCOL_OPTIONS {
                    return Err(cx.err("", format!("expected the key {HTTP_PROTOCOL_OPTIONS}")));
                }
                let o = http_opts_pb::HttpProtocolOptions::decode(any.value.as_slice())
                    .map_err(|e| cx.err("", format!("decoding HttpProtocolOptions: {e}")))?;
                use http_opts_pb::http_protocol_options::UpstreamProtocolOptions as U;
                use http_opts_pb::http_protocol_options::explicit_http_config::ProtocolConfig as P;
                fields!(
                    cx,
                    &o,
                    http_opts_pb::HttpProtocolOptions {
                        supported: [
                            common_http_protocol_options,
                            upstream_protocol_options,
                            upstream_http_protocol_options
                        ],
                        ignored: [],
                        unsupported: [
                            http_filters,
                            header_validation_config,
                            outlier_detection,
                            request_mirror_policies,
                            hash_policy,
                            retry_policy
                        ],
                    }
                );
                if let Some(u) = &o.upstream_http_protocol_options {
                    cx.at("upstream_http_protocol_options", |cx| {
                        fields!(
                            cx,
                            u,
                            core_pb::UpstreamHttpProtocolOptions {
                                supported: [auto_sni, auto_san_validation],
                                ignored: [],
                                unsupported: [override_auto_sni_header],
                            }
                        );
                        auto_sni = u.auto_sni;
                        auto_san_validation = u.auto_san_validation;
                        Ok(())
                    })?;
                }
                if let Some(common) = &o.common_http_protocol_options {
                    let (i, m) = cx.at("common_http_protocol_options", |cx| {
                        common_options(cx, common)
                    })?;
                    idle = i;
                    max_rq = m;
                }
                protocol = match &o.upstream_protocol_options {
                    None => UpstreamProtocol::Http1,
                    Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                        Some(P::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                        Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                        Some(P::Http3ProtocolOptions(_)) => {
                            return Err(cx.err(
                                "explicit_http_config",
                                "HTTP/3 upstreams are not supported",
                            ));
                        }
                    },
                    Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
                    Some(U::AutoConfig(_)) => {
                        return Err(cx.err(
                            "auto_config",
                            "ALPN-negotiated upstream protocol is not supported",
                        ));
                    }
                };
                Ok(())
            },
        )?;
    }
    Ok(ProtocolOptions {
        protocol,
        idle,
        max_requests: max_rq,
        auto_sni,
        auto_san_validation,
    })
}

fn common_options(
    cx: &mut Cx,
    o: &core_pb::HttpProtocolOptions,
) -> Result<(Option<Duration>, Option<u32>), CompileError> {
    fields!(
        cx,
        o,
        core_pb::HttpProtocolOptions {
            supported: [idle_timeout, max_requests_per_connection],
            ignored: [
                max_headers_count,
                max_connection_duration,
                max_connection_duration_jitter,
                headers_with_underscores_action,
                max_stream_duration,
                max_response_headers_kb
            ],
            unsupported: [],
        }
    );
    let idle = match duration(cx, "idle_timeout", &o.idle_timeout)? {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    Ok((
        idle,
        o.max_requests_per_connection
            .map(|v| v.value)
            .filter(|v| *v > 0),
    ))
}

/// A threshold's `retry_budget`. Like Envoy, a budget with neither `budget_percent` nor
/// `min_retry_concurrency` set is no budget (max_retries applies).
fn compile_retry_budget(
    cx: &mut Cx,
    b: &pb::circuit_breakers::thresholds::RetryBudget,
) -> Result<Option<RetryBudget>, CompileError> {
    fields!(
        cx,
        b,
        pb::circuit_breakers::thresholds::RetryBudget {
            supported: [budget_percent, min_retry_concurrency, budget_interval],
            ignored: [],
            unsupported: [],
        }
    );
    // Counting requests over a window instead of the active ones is not implemented.
    if duration(cx, "budget_interval", &b.budget_interval)?.is_some_and(|d| !d.is_zero()) {
        return Err(cx.unsupported("budget_interval"));
    }
    if b.budget_percent.is_none() && b.min_retry_concurrency.is_none() {
        return Ok(None);
    }
    let percent = b.budget_percent.map_or(20.0, |p| p.value);
    if !(0.0..=100.0).contains(&percent) {
        return Err(cx.err(
            "budget_percent.value",
            format!("{percent} is not between 0 and 100"),
        ));
    }
    Ok(Some(RetryBudget {
        percent,
        min_concurrency: b.min_retry_concurrency.map_or(3, |m| m.value),
    }))
}

fn compile_outlier(cx: &mut Cx, o: &pb::OutlierDetection) -> Result<OutlierConfig, CompileError> {
    fields!(
        cx,
        o,
        pb::OutlierDetection {
            supported: [
                consecutive_5xx,
                interval,
                base_ejection_time,
                max_ejection_percent,
                enforcing_consecutive_5xx,
                enforcing_success_rate,
                consecutive_gateway_failure,
                enforcing_consecutive_gateway_failure,
                split_external_local_origin_errors,
                consecutive_local_origin_failure,
                enforcing_consecutive_local_origin_failure,
                max_ejection_time,
                always_eject_one_host,
                enforcing_local_origin_success_rate,
                enforcing_failure_percentage,
                enforcing_failure_percentage_local_origin
            ],
            ignored: [
                success_rate_minimum_hosts,
                success_rate_request_volume,
                success_rate_stdev_factor,
                failure_percentage_threshold,
                failure_percentage_minimum_hosts,
                failure_percentage_request_volume,
                max_ejection_time_jitter
            ],
            unsupported: [
                successful_active_health_check_uneject_host,
                monitors,
                detect_degraded_hosts
            ],
        }
    );
    // Success-rate ejection is not implemented: it must be switched off explicitly
    // (Envoy enforces it at 100% by default; Istio always emits 0).
    if o.enforcing_success_rate.map(|v| v.value) != Some(0) {
        return Err(cx.err(
            "enforcing_success_rate",
            "success-rate ejection is not supported; set enforcing_success_rate to 0",
        ));
    }
    let split = o.split_external_local_origin_errors;
    if split && o.enforcing_local_origin_success_rate.map(|v| v.value) != Some(0) {
        return Err(cx.err(
            "enforcing_local_origin_success_rate",
            "success-rate ejection is not supported; set it to 0",
        ));
    }
    if o.enforcing_failure_percentage.is_some_and(|v| v.value > 0) {
        return Err(cx.unsupported("enforcing_failure_percentage"));
    }
    if o.enforcing_failure_percentage_local_origin
        .is_some_and(|v| v.value > 0)
    {
        return Err(cx.unsupported("enforcing_failure_percentage_local_origin"));
    }
    let d = OutlierConfig::default();
    let u = |v: &Option<crate::xds::pb::google::protobuf::UInt32Value>, def: u32| {
        v.map(|v| v.value).unwrap_or(def)
    };
    let interval = duration(cx, "interval", &o.interval)?.unwrap_or(d.interval);
    let base =
        duration(cx, "base_ejection_time", &o.base_ejection_time)?.unwrap_or(d.base_ejection_time);
    let max_time =
        duration(cx, "max_ejection_time", &o.max_ejection_time)?.unwrap_or(d.max_ejection_time);
    if interval.is_zero() {
        return Err(cx.err("interval", "must be greater than 0"));
    }
    Ok(OutlierConfig {
        consecutive_5xx: u(&o.consecutive_5xx, d.consecutive_5xx),
        enforcing_consecutive_5xx: u(&o.enforcing_consecutive_5xx, d.enforcing_consecutive_5xx)
            .min(100),
        consecutive_gateway_failure: u(
            &o.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        enforcing_consecutive_gateway_failure: u(
            &o.enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
        )
        .min(100),
        split_external_local_origin_errors: split,
        consecutive_local_origin_failure: u(
            &o.consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_local_origin_failure: u(
            &o.enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
        )
        .min(100),
        interval,
        base_ejection_time: base,
        max_ejection_time: max_time,
        max_ejection_percent: u(&o.max_ejection_percent, d.max_ejection_percent).min(100),
        always_eject_one_host: o.always_eject_one_host.is_some_and(|b| b.value),
    })
}

fn socket_addr(
    cx: &Cx,
    field: &str,
    a: &Option<core_pb::Address>,
) -> Result<(String, u16), CompileError> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier;
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => {
            if s.protocol != core_pb::socket_address::Protocol::Tcp as i32 {
                return Err(cx.err(field, "only TCP addresses are supported"));
            }
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
                Some(PortSpecifier::NamedPort(_)) => {
                    return Err(cx.err(field, "named ports are not supported"));
                }
                _ => return Err(cx.err(field, "a port is required")),
            };
            Ok((s.address.clone(), port))
        }
        Some(_) => Err(cx.err(field, "only socket addresses are supported")),
        None => Err(cx.err(field, "an address is required")),
    }
}

fn endpoint_iter<'a>(
    cx: &mut Cx,
    cla: &'a ep_pb::ClusterLoadAssignment,
    mut f: impl FnMut(
        &mut Cx,
        &'a ep_pb::LocalityLbEndpoints,
        &'a ep_pb::LbEndpoint,
        &'a ep_pb::Endpoint,
    ) -> Result<(), CompileError>,
) -> Result<(), CompileError> {
    use ep_pb::lb_endpoint::HostIdentifier;
    fields!(
        cx,
        cla,
        ep_pb::ClusterLoadAssignment {
            supported: [cluster_name, endpoints, policy],
            ignored: [],
            unsupported: [named_endpoints],
        }
    );
    for (i, le) in cla.endpoints.iter().enumerate() {
        cx.at(format_args!("endpoints[{i}]"), |cx| {
            fields!(
                cx,
                le,
                ep_pb::LocalityLbEndpoints {
                    supported: [locality, lb_endpoints, load_balancing_weight, priority],
                    ignored: [metadata, proximity],
                    unsupported: [lb_config],
                }
            );
            for (j, e) in le.lb_endpoints.iter().enumerate() {
                cx.at(format_args!("lb_endpoints[{j}]"), |cx| {
                    fields!(
                        cx,
                        e,
                        ep_pb::LbEndpoint {
                            supported: [health_status, load_balancing_weight, host_identifier],
                            ignored: [metadata],
                            unsupported: [],
                        }
                    );
                    match &e.host_identifier {
                        Some(HostIdentifier::Endpoint(ep)) => {
                            fields!(
                                cx,
                                ep,
                                ep_pb::Endpoint {
                                    supported: [address, hostname],
                                    ignored: [health_check_config, observability_name],
                                    unsupported: [additional_addresses],
                                }
                            );
                            f(cx, le, e, ep)
                        }
                        Some(HostIdentifier::EndpointName(_)) => {
                            Err(cx.unsupported("endpoint_name"))
                        }
                        None => Err(cx.err("endpoint", "required")),
                    }
                })?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn locality_name(l: &Option<core_pb::Locality>) -> Arc<str> {
    match l {
        None => "".into(),
        Some(l) => format!("{}/{}/{}", l.region, l.zone, l.sub_zone).into(),
    }
}

fn overprovisioning(cla: &ep_pb::ClusterLoadAssignment) -> f64 {
    cla.policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor)
        .map(|v| v.value as f64 / 100.0)
        .unwrap_or(1.4)
}

/// Builds an endpoint set, reusing hosts (and their state) from `prev` by address.
fn endpoint_set(
    cx: &mut Cx,
    cla: &ep_pb::ClusterLoadAssignment,
    prev: Option<&EndpointSet>,
) -> Result<EndpointSet, CompileError> {
    if let Some(p) = &cla.policy {
        #[allow(deprecated)]
        let bad = p.drop_overloads.len() + p.endpoint_stale_after.is_some() as usize;
        if bad > 0 {
            return Err(cx.err(
                "policy",
                "drop_overloads and endpoint_stale_after are not supported",
            ));
        }
    }
    let mut levels: Vec<Priority> = Vec::new();
    endpoint_iter(cx, cla, |cx, le, e, ep| {
        let (ip, port) = socket_addr(cx, "endpoint.address", &ep.address)?;
        let ip: IpAddr = ip.parse().map_err(|_| {
            cx.err(
                "endpoint.address",
                format!("{ip:?} is not an IP address (use a DNS cluster for names)"),
            )
        })?;
        let addr = SocketAddr::new(ip, port);
        let hostname: Option<Arc<str>> =
            (!ep.hostname.is_empty()).then(|| ep.hostname.as_str().into());
        let weight = e.load_balancing_weight.map(|w| w.value).unwrap_or(1);
        let healthy = !matches!(
            core_pb::HealthStatus::try_from(e.health_status),
            Ok(core_pb::HealthStatus::Unhealthy
                | core_pb::HealthStatus::Draining
                | core_pb::HealthStatus::Timeout)
        );
        let host = match prev.and_then(|p| p.find(addr)) {
            Some(h) if h.same_endpoint(&hostname, weight, healthy) => h.clone(),
            _ => Arc::new(Host::new(addr, hostname, weight, healthy)),
        };
        add_host(&mut levels, le, host);
        Ok(())
    })?;
    Ok(EndpointSet::new(levels, overprovisioning(cla)))
}

pub(crate) fn add_host(
    levels: &mut Vec<Priority>,
    le: &ep_pb::LocalityLbEndpoints,
    host: Arc<Host>,
) {
    let p = le.priority as usize;
    while levels.len() <= p {
        levels.push(Priority::default());
    }
    let level = &mut levels[p];
    let name = locality_name(&le.locality);
    let weight = le.load_balancing_weight.map(|w| w.value).unwrap_or(1);
    match level.localities.iter_mut().find(|l| l.name == name) {
        Some(l) => l.hosts.push(host.clone()),
        None => level.localities.push(Locality {
            name,
            weight,
            hosts: vec![host.clone()],
        }),
    }
    level.hosts.push(host);
}

#[allow(deprecated)]
fn dns_config(
    cx: &mut Cx,
    c: &pb::Cluster,
    cla: &ep_pb::ClusterLoadAssignment,
) -> Result<DnsConfig, CompileError> {
    let mut targets = Vec::new();
    endpoint_iter(cx, cla, |cx, le, e, ep| {
        let (hostname, port) = socket_addr(cx, "endpoint.address", &ep.address)?;
        targets.push(DnsTarget {
            hostname: hostname.into(),
            port,
            weight: e.load_balancing_weight.map(|w| w.value).unwrap_or(1),
            priority: le.priority,
            locality: locality_name(&le.locality),
            locality_weight: le.load_balancing_weight.map(|w| w.value).unwrap_or(1),
        });
        Ok(())
    })?;
    use pb::cluster::DnsLookupFamily as F;
    let family = match F::try_from(c.dns_lookup_family) {
        Ok(F::Auto) => DnsFamily::Auto,
        Ok(F::V4Only) => DnsFamily::V4Only,
        Ok(F::V6Only) => DnsFamily::V6Only,
        Ok(F::V4Preferred) => DnsFamily::V4Preferred,
        Ok(F::All) => DnsFamily::All,
        Err(_) => return Err(cx.err("dns_lookup_family", "unknown value")),
    };
    let refresh =
        duration(cx, "dns_refresh_rate", &c.dns_refresh_rate)?.unwrap_or(Duration::from_secs(5));
    if refresh < Duration::from_millis(1) {
        return Err(cx.err("dns_refresh_rate", "must be at least 1ms"));
    }
    let failure_refresh = match &c.dns_failure_refresh_rate {
        None => FailureRefresh::Fixed(refresh),
        Some(r) => {
            let base = duration(
                cx,
                "dns_failure_refresh_rate.base_interval",
                &r.base_interval,
            )?
            .ok_or_else(|| cx.err("dns_failure_refresh_rate.base_interval", "required"))?;
            if base <= Duration::from_millis(1) {
                return Err(cx.err(
                    "dns_failure_refresh_rate.base_interval",
                    "must be greater than 1ms",
                ));
            }
            let max = duration(cx, "dns_failure_refresh_rate.max_interval", &r.max_interval)?
                .unwrap_or(base * 10);
            if max < base {
                return Err(cx.err(
                    "dns_failure_refresh_rate.max_interval",
                    "must be greater than or equal to the base_interval",
                ));
            }
            FailureRefresh::Backoff { base, max }
        }
    };
    let jitter = duration(cx, "dns_jitter", &c.dns_jitter)?.unwrap_or_default();
    let resolver = resolver_config(cx, c)?;
    Ok(DnsConfig {
        targets,
        refresh,
        failure_refresh,
        respect_ttl: c.respect_dns_ttl,
        jitter,
        family,
        resolver,
    })
}

const CARES_RESOLVER: &str = "envoy.network.dns_resolver.cares";

/// The cluster's resolver, in Envoy's order of precedence: `typed_dns_resolver_config`,
/// then `dns_resolution_config`, then the legacy `dns_resolvers` and
/// `use_tcp_for_dns_lookups`.
#[allow(deprecated)]
fn resolver_config(cx: &mut Cx, c: &pb::Cluster) -> Result<ResolverConfig, CompileError> {
    use crate::xds::pb::envoy::extensions::network::dns_resolver::cares::v3 as cares_pb;
    if let Some(t) = &c.typed_dns_resolver_config {
        return cx.at("typed_dns_resolver_config", |cx| {
            let any = t
                .typed_config
                .as_ref()
                .ok_or_else(|| cx.err("typed_config", "required"))?;
            if any.type_url != cares_pb::CaresDnsResolverConfig::type_url() {
                return Err(cx.err(
                    "typed_config",
                    format!(
                        "DNS resolver {} ({}) is not supported; meshgate implements {CARES_RESOLVER}",
                        t.name, any.type_url
                    ),
                ));
            }
            let cares = cares_pb::CaresDnsResolverConfig::decode(any.value.as_slice())
                .map_err(|e| cx.err("typed_config", format!("decoding: {e}")))?;
            cx.at("typed_config", |cx| cares_config(cx, &cares))
        });
    }
    if let Some(r) = &c.dns_resolution_config {
        return cx.at("dns_resolution_config", |cx| {
            let mut out = ResolverConfig {
                servers: resolver_addrs(cx, "resolvers", &r.resolvers)?,
                ..Default::default()
            };
            resolver_options(&r.dns_resolver_options, &mut out)?;
            Ok(out)
        });
    }
    Ok(ResolverConfig {
        servers: resolver_addrs(cx, "dns_resolvers", &c.dns_resolvers)?,
        tcp: c.use_tcp_for_dns_lookups,
        ..Default::default()
    })
}

fn cares_config(
    cx: &mut Cx,
    c: &crate::xds::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig,
) -> Result<ResolverConfig, CompileError> {
    fields!(
        cx,
        c,
        crate::xds::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig {
            supported: [
                resolvers,
                use_resolvers_as_fallback,
                dns_resolver_options,
                query_timeout_seconds,
                rotate_nameservers,
                qcache_max_ttl
            ],
            // Every query goes out on a fresh UDP socket, which meets any cap.
            ignored: [udp_max_queries],
            unsupported: [
                filter_unroutable_families,
                query_tries,
                edns0_max_payload_size,
                max_udp_channel_duration,
                reinit_channel_on_timeout
            ],
        }
    );
    // Envoy's default (0) disables c-ares' answer cache; meshgate never caches answers.
    if c.qcache_max_ttl.is_some_and(|v| v.value != 0) {
        return Err(cx.err(
            "qcache_max_ttl",
            "an answer cache is not supported (only 0, the default)",
        ));
    }
    let mut out = ResolverConfig {
        servers: resolver_addrs(cx, "resolvers", &c.resolvers)?,
        servers_as_fallback: c.use_resolvers_as_fallback,
        rotate: c.rotate_nameservers,
        ..Default::default()
    };
    if let Some(t) = c.query_timeout_seconds {
        if t.value == 0 {
            return Err(cx.err("query_timeout_seconds", "must be at least 1"));
        }
        out.query_timeout = Some(Duration::from_secs(t.value.min(3600)));
    }
    resolver_options(&c.dns_resolver_options, &mut out)?;
    Ok(out)
}

fn resolver_options(
    o: &Option<core_pb::DnsResolverOptions>,
    out: &mut ResolverConfig,
) -> Result<(), CompileError> {
    // Both fields are implemented; the pattern breaks the build when a new one appears.
    if let Some(core_pb::DnsResolverOptions {
        use_tcp_for_dns_lookups,
        no_default_search_domain,
    }) = o
    {
        out.tcp = *use_tcp_for_dns_lookups;
        out.no_search = *no_default_search_domain;
    }
    Ok(())
}

/// Name server addresses: IP socket addresses; port 0 means 53.
fn resolver_addrs(
    cx: &mut Cx,
    field: &str,
    addrs: &[core_pb::Address],
) -> Result<Vec<SocketAddr>, CompileError> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier;
    let mut out = Vec::with_capacity(addrs.len());
    for (i, a) in addrs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(A::SocketAddress(s)) = &a.address else {
            return Err(cx.err(&f, "a DNS resolver must be a socket address"));
        };
        let ip: IpAddr = s.address.parse().map_err(|_| {
            cx.err(
                &f,
                format!("DNS resolver {:?} is not an IP address", s.address),
            )
        })?;
        let port = match s.port_specifier {
            None => 53,
            Some(PortSpecifier::PortValue(0)) => 53,
            Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
            Some(_) => return Err(cx.err(&f, "a DNS resolver needs a numeric port")),
        };
        if !s.resolver_name.is_empty() {
            return Err(cx.unsupported(&format!("{f}.resolver_name")));
        }
        out.push(SocketAddr::new(ip, port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(json: serde_json::Value) -> Result<Cluster, CompileError> {
        let c: pb::Cluster = crate::xds::json::from_json(&json).unwrap();
        let tls = TlsRuntime::new(Default::default()).unwrap();
        compile_cluster(&c, &ResourceSet::default(), None, &tls)
    }

    fn dns_cluster(extra: serde_json::Value) -> Result<DnsConfig, CompileError> {
        let mut c = serde_json::json!({
            "name": "d", "type": "STRICT_DNS",
            "load_assignment": {"cluster_name": "d", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "app.test", "port_value": 80}}}}]}]},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        match cluster(c)?.discovery {
            Discovery::StrictDns(d) => Ok(d),
            other => panic!("{other:?}"),
        }
    }

    const CARES: &str =
        "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

    #[test]
    fn dns_settings_compile_like_envoy_reads_them() {
        use serde_json::json;
        let ms = Duration::from_millis;
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let cares = |cfg: serde_json::Value| {
            let mut t = json!({"@type": CARES});
            for (k, v) in cfg.as_object().into_iter().flatten() {
                t[k] = v.clone();
            }
            json!({"typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares", "typed_config": t}})
        };
        let server =
            |port: u32| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
        // (fields, check)
        type Check = Box<dyn Fn(&DnsConfig)>;
        let cases: Vec<(serde_json::Value, Check)> = vec![
            (
                json!({}),
                Box::new(move |d| {
                    assert_eq!(d.refresh, ms(5000));
                    assert_eq!(d.failure_refresh, FailureRefresh::Fixed(ms(5000)));
                    assert!(!d.respect_ttl);
                    assert_eq!(d.jitter, Duration::ZERO);
                    assert_eq!(d.resolver, ResolverConfig::default());
                }),
            ),
            (
                json!({"dns_refresh_rate": "60s", "respect_dns_ttl": true, "dns_jitter": "0.1s"}),
                Box::new(move |d| {
                    assert_eq!(d.refresh, ms(60000));
                    assert_eq!(d.failure_refresh, FailureRefresh::Fixed(ms(60000)));
                    assert!(d.respect_ttl);
                    assert_eq!(d.jitter, ms(100));
                }),
            ),
            (
                json!({"dns_failure_refresh_rate": {"base_interval": "2s"}}),
                Box::new(move |d| {
                    let want = FailureRefresh::Backoff {
                        base: ms(2000),
                        max: ms(20000),
                    };
                    assert_eq!(d.failure_refresh, want, "max defaults to 10 x base");
                }),
            ),
            (
                json!({"dns_failure_refresh_rate": {"base_interval": "1s", "max_interval": "3s"}}),
                Box::new(move |d| {
                    let want = FailureRefresh::Backoff {
                        base: ms(1000),
                        max: ms(3000),
                    };
                    assert_eq!(d.failure_refresh, want);
                }),
            ),
            (
                cares(
                    json!({"resolvers": [server(5353), server(0)], "use_resolvers_as_fallback": true,
                    "dns_resolver_options": {"use_tcp_for_dns_lookups": true, "no_default_search_domain": true},
                    "query_timeout_seconds": 2, "rotate_nameservers": true, "udp_max_queries": 100}),
                ),
                Box::new(move |d| {
                    assert_eq!(
                        d.resolver,
                        ResolverConfig {
                            servers: vec![addr("127.0.0.1:5353"), addr("127.0.0.1:53")],
                            servers_as_fallback: true,
                            tcp: true,
                            no_search: true,
                            query_timeout: Some(ms(2000)),
                            rotate: true,
                        }
                    );
                }),
            ),
            (
                json!({"dns_resolution_config": {"resolvers": [server(5300)],
                    "dns_resolver_options": {"no_default_search_domain": true}}}),
                Box::new(move |d| {
                    assert_eq!(d.resolver.servers, vec![addr("127.0.0.1:5300")]);
                    assert!(d.resolver.no_search && !d.resolver.tcp);
                }),
            ),
            (
                json!({"dns_resolvers": [server(5301)], "use_tcp_for_dns_lookups": true}),
                Box::new(move |d| {
                    assert_eq!(d.resolver.servers, vec![addr("127.0.0.1:5301")]);
                    assert!(d.resolver.tcp);
                }),
            ),
            (
                // typed_dns_resolver_config wins over the deprecated fields.
                {
                    let mut v = cares(json!({"resolvers": [server(5302)]}));
                    v["dns_resolvers"] = json!([server(5303)]);
                    v
                },
                Box::new(move |d| assert_eq!(d.resolver.servers, vec![addr("127.0.0.1:5302")])),
            ),
        ];
        for (i, (extra, check)) in cases.into_iter().enumerate() {
            let d = dns_cluster(extra.clone()).unwrap_or_else(|e| panic!("case {i} {extra}: {e}"));
            check(&d);
        }
    }

    #[test]
    fn dns_settings_envoy_would_reject_or_meshgate_lacks_are_nacked() {
        use serde_json::json;
        let cares = |cfg: serde_json::Value| {
            let mut t = json!({"@type": CARES});
            for (k, v) in cfg.as_object().into_iter().flatten() {
                t[k] = v.clone();
            }
            json!({"typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares", "typed_config": t}})
        };
        // Another resolver extension (its config type stands in: any type but c-ares').
        let getaddrinfo = json!({"typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.getaddrinfo",
            "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}}}});
        // (fields, expected path in the error)
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"dns_refresh_rate": "0s"}), "dns_refresh_rate"),
            (
                json!({"dns_failure_refresh_rate": {}}),
                "dns_failure_refresh_rate.base_interval",
            ),
            (
                json!({"dns_failure_refresh_rate": {"base_interval": "2s", "max_interval": "1s"}}),
                "dns_failure_refresh_rate.max_interval",
            ),
            (
                cares(json!({"filter_unroutable_families": true})),
                "typed_dns_resolver_config.typed_config.filter_unroutable_families",
            ),
            (
                cares(json!({"query_tries": 3})),
                "typed_dns_resolver_config.typed_config.query_tries",
            ),
            (
                cares(json!({"edns0_max_payload_size": 1232})),
                "typed_dns_resolver_config.typed_config.edns0_max_payload_size",
            ),
            (
                cares(json!({"qcache_max_ttl": 60})),
                "typed_dns_resolver_config.typed_config.qcache_max_ttl",
            ),
            (
                cares(
                    json!({"resolvers": [{"socket_address": {"address": "dns.example", "port_value": 53}}]}),
                ),
                "typed_dns_resolver_config.typed_config.resolvers[0]",
            ),
            (getaddrinfo, "typed_dns_resolver_config.typed_config"),
        ];
        for (extra, path) in cases {
            match dns_cluster(extra.clone()) {
                Ok(d) => panic!("{extra} compiled: {d:?}"),
                Err(e) => assert!(e.path.ends_with(path), "{extra}: {e}"),
            }
        }
    }

    #[test]
    fn static_cluster_with_options() {
        use serde_json::json;
        let c = cluster(json!({
            "name": "c", "type": "STATIC", "connect_timeout": "2s", "lb_policy": "LEAST_REQUEST",
            "circuit_breakers": {"thresholds": [{"max_connections": 1, "max_pending_requests": 2, "max_requests": 3, "max_retries": 4}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "7s", "max_requests_per_connection": 9},
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "c", "endpoints": [
                {"priority": 0, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}, "load_balancing_weight": 3}]},
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.2", "port_value": 2}}}}]}]}
        }))
        .unwrap();
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.lb, LbPolicy::LeastRequest { choice_count: 2 });
        assert_eq!(
            c.thresholds,
            Thresholds {
                max_connections: 1,
                max_pending_requests: 2,
                max_requests: 3,
                max_retries: 4,
                retry_budget: None,
            }
        );
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.max_requests_per_connection, Some(9));
        let e = c.endpoints();
        assert_eq!(e.priorities.len(), 2);
        assert_eq!(e.priorities[0].hosts[0].weight, 3);
    }

    #[test]
    fn max_requests_per_connection_from_options_then_the_deprecated_field() {
        use serde_json::json;
        let max = |extra: serde_json::Value| {
            let mut c = json!({"name": "c", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "c", "endpoints": []}});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            cluster(c).unwrap().max_requests_per_connection
        };
        let options = |n: u32| {
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": n},
                "explicit_http_config": {"http_protocol_options": {}}}})
        };
        assert_eq!(max(json!({})), None);
        assert_eq!(max(json!({"max_requests_per_connection": 3})), Some(3));
        // 0 is no limit.
        assert_eq!(max(json!({"max_requests_per_connection": 0})), None);
        assert_eq!(
            max(
                json!({"max_requests_per_connection": 3, "typed_extension_protocol_options": options(9)})
            ),
            Some(9)
        );
    }

    #[test]
    fn retry_budgets_as_envoy_reads_them() {
        use serde_json::json;
        let budget = |th: serde_json::Value| {
            cluster(
                json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
                "circuit_breakers": {"thresholds": th}}),
            )
            .map(|c| c.thresholds)
        };
        let b = |percent, min_concurrency| {
            Some(RetryBudget {
                percent,
                min_concurrency,
            })
        };
        let cases = [
            (
                json!([{"max_retries": 7, "retry_budget": {"budget_percent": {"value": 25.5}, "min_retry_concurrency": 2}}]),
                7,
                b(25.5, 2),
            ),
            // Either field alone turns the budget on, the other takes Envoy's default.
            (
                json!([{"retry_budget": {"budget_percent": {"value": 50}}}]),
                3,
                b(50.0, 3),
            ),
            (
                json!([{"retry_budget": {"min_retry_concurrency": 0}}]),
                3,
                b(20.0, 0),
            ),
            // An empty budget is no budget.
            (json!([{"max_retries": 1, "retry_budget": {}}]), 1, None),
            (
                json!([{"retry_budget": {"budget_percent": {"value": 10}, "budget_interval": "0s"}}]),
                3,
                b(10.0, 3),
            ),
            // HIGH priority thresholds do not apply; the first DEFAULT entry does.
            (
                json!([{"priority": "HIGH", "retry_budget": {"budget_percent": {"value": 1}}},
                       {"max_retries": 2}, {"max_retries": 9, "retry_budget": {"min_retry_concurrency": 5}}]),
                2,
                None,
            ),
        ];
        for (th, max_retries, want) in cases {
            let t = budget(th.clone()).unwrap();
            assert_eq!((t.max_retries, t.retry_budget), (max_retries, want), "{th}");
        }
        let e =
            budget(json!([{"retry_budget": {"budget_percent": {"value": 100.5}}}])).unwrap_err();
        assert_eq!(
            e.path,
            "circuit_breakers.thresholds[0].retry_budget.budget_percent.value"
        );
        let e = budget(
            json!([{"retry_budget": {"budget_percent": {"value": 10}, "budget_interval": "1s"}}]),
        )
        .unwrap_err();
        assert_eq!(
            e.path,
            "circuit_breakers.thresholds[0].retry_budget.budget_interval"
        );
    }

    #[test]
    fn rejects_what_is_not_implemented() {
        use serde_json::json;
        let e = cluster(
            json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
            "health_checks": [{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}]}),
        )
        .unwrap_err();
        assert_eq!(e.path, "health_checks");
        let e = cluster(
            json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
            "outlier_detection": {"consecutive_5xx": 3}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "outlier_detection.enforcing_success_rate");
        let mut c: pb::Cluster = crate::xds::json::from_json(
            &json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"}}),
        )
        .unwrap();
        c.transport_socket = Some(core_pb::TransportSocket {
            name: "pp".into(),
            config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
                crate::xds::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport".into(),
                    value: Vec::new(),
                },
            )),
        });
        let tls = TlsRuntime::new(Default::default()).unwrap();
        let e = compile_cluster(&c, &ResourceSet::default(), None, &tls).unwrap_err();
        assert_eq!(e.path, "transport_socket.transport_socket");
        assert!(e.message.contains("is required"), "{e}");
    }

    fn tls_socket(sni: &str, alpn: &[&str]) -> serde_json::Value {
        serde_json::json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [{"name": "default"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}]},
                    "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}})
    }

    fn endpoint(ip: &str, meta: Option<serde_json::Value>) -> serde_json::Value {
        let mut e = serde_json::json!({"endpoint": {"address": {"socket_address": {"address": ip, "port_value": 443}}}});
        if let Some(m) = meta {
            e["metadata"] =
                serde_json::json!({"filter_metadata": {"envoy.transport_socket_match": m}});
        }
        e
    }

    #[test]
    fn tls_transport_socket_with_alpn_from_the_cluster_protocol() {
        use serde_json::json;
        let c = cluster(json!({"name": "c", "type": "STATIC",
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [endpoint("127.0.0.1", None)]}]},
            "transport_socket": tls_socket("api.example.com", &[]),
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "upstream_http_protocol_options": {"auto_sni": true, "auto_san_validation": true},
                "explicit_http_config": {"http2_protocol_options": {}}}}}))
        .unwrap();
        let t = c
            .transport
            .for_host("127.0.0.1:443".parse().unwrap())
            .expect("a TLS socket");
        assert!(t.auto_sni);
        assert_eq!(t.h2.client_config().alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            t.h1.sni.as_ref().map(|n| n.to_str().into_owned()),
            Some("api.example.com".into())
        );
        let c = cluster(
            json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
            "transport_socket": tls_socket("", &["h2", "http/1.1"])}),
        )
        .unwrap();
        let t = c.transport.fallback.as_ref().expect("a TLS socket");
        assert!(!t.auto_sni);
        assert_eq!(t.h1.client_config().alpn_protocols.len(), 2);
        let c = cluster(
            json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
            "transport_socket": tls_socket("", &[])}),
        )
        .unwrap();
        assert_eq!(
            c.transport
                .fallback
                .as_ref()
                .unwrap()
                .h1
                .client_config()
                .alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        let e = cluster(
            json!({"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"},
            "transport_socket": tls_socket("not a name", &[])}),
        )
        .unwrap_err();
        assert_eq!(e.path, "transport_socket");
    }

    #[test]
    fn transport_socket_matches_select_by_endpoint_metadata() {
        use serde_json::json;
        let c = cluster(json!({"name": "c", "type": "STATIC",
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                endpoint("127.0.0.1", Some(json!({"tlsMode": "istio"}))),
                endpoint("127.0.0.2", None),
                endpoint("127.0.0.3", Some(json!({"tlsMode": "disabled"})))]}]},
            "transport_socket_matches": [
                {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": tls_socket("", &["istio"])},
                {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]}))
        .unwrap();
        let t = &c.transport;
        assert!(t.for_host("127.0.0.1:443".parse().unwrap()).is_some());
        assert!(t.for_host("127.0.0.2:443".parse().unwrap()).is_none());
        assert!(t.for_host("127.0.0.3:443".parse().unwrap()).is_none());
        assert!(t.fallback.is_none());
        // No catch-all: unmatched endpoints use the cluster's socket.
        let c = cluster(json!({"name": "c", "type": "STATIC",
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                endpoint("127.0.0.1", Some(json!({"tlsMode": "istio"}))), endpoint("127.0.0.2", None)]}]},
            "transport_socket": tls_socket("plain.example", &[]),
            "transport_socket_matches": [{"name": "m", "match": {"tlsMode": "istio"}, "transport_socket": tls_socket("mesh.example", &[])}]}))
        .unwrap();
        let sni = |ip: &str| {
            c.transport
                .for_host(format!("{ip}:443").parse().unwrap())
                .and_then(|t| t.h1.sni.as_ref().map(|n| n.to_str().into_owned()))
        };
        assert_eq!(sni("127.0.0.1").as_deref(), Some("mesh.example"));
        assert_eq!(sni("127.0.0.2").as_deref(), Some("plain.example"));
    }

    #[test]
    fn unchanged_tls_socket_is_kept_across_updates() {
        use serde_json::json;
        let tls = TlsRuntime::new(Default::default()).unwrap();
        let compile = |sni: &str, prev: Option<&Cluster>| {
            let c: pb::Cluster = crate::xds::json::from_json(&json!({"name": "c", "type": "STATIC",
                "load_assignment": {"cluster_name": "c"}, "transport_socket": tls_socket(sni, &[])}))
            .unwrap();
            compile_cluster(&c, &ResourceSet::default(), prev, &tls).unwrap()
        };
        let a = compile("a.example", None);
        let b = compile("a.example", Some(&a));
        let c = compile("c.example", Some(&b));
        let (ta, tb, tc) = (
            a.transport.fallback.clone().unwrap(),
            b.transport.fallback.clone().unwrap(),
            c.transport.fallback.clone().unwrap(),
        );
        assert!(Arc::ptr_eq(&ta, &tb));
        assert!(!Arc::ptr_eq(&tb, &tc));
    }
}
