//! Listener (+ HttpConnectionManager) -> [`Listener`].
use crate::proxy::compile::route::{Clusters, compile_route_config};
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::filter::HttpFilter;
use crate::proxy::http::hcm::*;
use crate::proxy::listener::{ChainAction, ChainMatch, FilterChain, Listener, TransportProtocol};
use crate::proxy::proxy_protocol::ProxyProtocolFilter;
use crate::proxy::route::RouteTable;
use crate::proxy::tcp::{DEFAULT_IDLE_TIMEOUT as DEFAULT_TCP_IDLE_TIMEOUT, TcpClusters, TcpProxy};
use crate::proxy::tls::TlsRuntime;
use crate::tls::{DownstreamTls, DownstreamTlsSet};
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::config::listener::v3 as pb;
use crate::xds::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol as ProxyProtocolPb;

use crate::xds::pb::envoy::extensions::filters::http::router::v3 as router_pb;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use crate::xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use http::HeaderValue;
use prost::{Message, Name};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const PROXY_PROTOCOL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
/// Envoy's bound on a downstream TLS handshake when `transport_socket_connect_timeout`
/// is unset.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's telemetry filter: meshgate produces Istio's standard metrics natively.
const ISTIO_STATS: &[&str] = &["type.googleapis.com/stats.PluginConfig"];

pub(crate) fn compile_listeners(
    set: &ResourceSet,
    routes: &HashMap<String, Arc<RouteTable>>,
    clusters: &Clusters,
    tls: &TlsRuntime,
) -> Result<Vec<Arc<Listener>>, CompileError> {
    let mut out: Vec<Arc<Listener>> = Vec::new();
    for l in &set.listeners {
        let compiled = compile_listener(l, routes, clusters, tls)?;
        if out.iter().any(|o| o.name == compiled.name) {
            return Err(Cx::new("listener", &l.name).err("name", "duplicate listener name"));
        }
        if let Some(o) = out.iter().find(|o| o.addr == compiled.addr) {
            return Err(Cx::new("listener", &l.name).err(
                "address",
                format!(
                    "address {} is already used by listener {:?}",
                    compiled.addr, o.name
                ),
            ));
        }
        out.push(Arc::new(compiled));
    }
    Ok(out)
}

fn compile_listener(
    l: &pb::Listener,
    routes: &HashMap<String, Arc<RouteTable>>,
    clusters: &Clusters,
    tls: &TlsRuntime,
) -> Result<Listener, CompileError> {
    let cx = &mut Cx::new("listener", &l.name);
    fields!(
        cx,
        l,
        pb::Listener {
            supported: [
                name,
                address,
                filter_chains,
                default_filter_chain,
                listener_filters,
                continue_on_listener_filters_timeout,
                listener_filters_timeout,
                stat_prefix,
                ignore_global_conn_limit
            ],
            ignored: [
                metadata,
                per_connection_buffer_limit_bytes,
                traffic_direction,
                access_log,
                drain_type,
                tcp_backlog_size,
                bind_to_port,
                bypass_overload_manager,
                reuse_port,
                enable_reuse_port,
                socket_options,
                max_connections_to_accept_per_socket_event,
                tcp_fast_open_queue_length,
                per_connection_buffer_high_watermark_timeout,
                stats_matcher
            ],
            unsupported: [
                additional_addresses,
                fcds_config,
                filter_chain_matcher,
                use_original_dst,
                deprecated_v1,
                transparent,
                freebind,
                udp_listener_config,
                api_listener,
                connection_balance_config,
                enable_mptcp,
                tcp_keepalive,
                listener_specifier
            ],
        }
    );
    let addr = listener_address(cx, &l.address)?;
    let mut tls_inspector = false;
    let mut proxy_protocol = None;
    for (i, f) in l.listener_filters.iter().enumerate() {
        use pb::listener_filter::ConfigType;
        let ty = match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => a.type_url.as_str(),
            _ => "",
        };
        if ty == TLS_INSPECTOR
            || (ty.is_empty() && f.name == "envoy.filters.listener.tls_inspector")
        {
            if f.filter_disabled.is_some() {
                return Err(cx.err(
                    &format!("listener_filters[{i}].filter_disabled"),
                    "conditionally disabled listener filters are not supported",
                ));
            }
            tls_inspector = true;
        } else if ty == PROXY_PROTOCOL
            || (ty.is_empty() && f.name == "envoy.filters.listener.proxy_protocol")
        {
            if f.filter_disabled.is_some() {
                return Err(cx.err(
                    &format!("listener_filters[{i}].filter_disabled"),
                    "conditionally disabled listener filters are not supported",
                ));
            }
            if tls_inspector {
                // Envoy runs listener filters in order: a tls_inspector before it would
                // read the PROXY header as a (non-TLS) ClientHello.
                return Err(cx.err(
                    &format!("listener_filters[{i}]"),
                    "the proxy_protocol listener filter must come before the tls_inspector",
                ));
            }
            if proxy_protocol.is_some() {
                return Err(cx.err(
                    &format!("listener_filters[{i}]"),
                    "the proxy_protocol listener filter is configured twice",
                ));
            }
            let config = match &f.config_type {
                Some(ConfigType::TypedConfig(a)) => ProxyProtocolPb::decode(a.value.as_slice())
                    .map_err(|e| {
                        cx.err(
                            &format!("listener_filters[{i}].typed_config"),
                            format!("decoding ProxyProtocol: {e}"),
                        )
                    })?,
                _ => ProxyProtocolPb::default(),
            };
            proxy_protocol = Some(
                cx.at(format_args!("listener_filters[{i}].typed_config"), |cx| {
                    compile_proxy_protocol(cx, &config)
                })?,
            );
        } else {
            return Err(cx.err(
                &format!("listener_filters[{i}]"),
                format!("listener filter {:?} is not supported", f.name),
            ));
        }
    }
    // Chains whose TLS contexts differ only by certificate share one server configuration.
    let mut tls_set = DownstreamTlsSet::new(&tls.store, &tls.sessions);
    // Envoy's tracing operation: egress on OUTBOUND listeners, ingress otherwise.
    let egress = l.traffic_direction == core_pb::TrafficDirection::Outbound as i32;
    let mut chains = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        chains.push(cx.at(format_args!("filter_chains[{i}]"), |cx| {
            compile_chain(cx, fc, routes, clusters, &mut tls_set, &l.name, egress)
        })?);
    }
    let default_chain = match &l.default_filter_chain {
        Some(fc) => Some(cx.at("default_filter_chain", |cx| {
            compile_chain(cx, fc, routes, clusters, &mut tls_set, &l.name, egress)
        })?),
        None => None,
    };
    tls_set.finish();
    if chains.is_empty() && default_chain.is_none() {
        return Err(cx.err(
            "filter_chains",
            "a listener needs at least one filter chain",
        ));
    }
    // Envoy refuses chains whose criteria overlap: which one applies would be undefined.
    type Criteria<'a> = (Option<u16>, &'a str, Option<TransportProtocol>, &'a [u8]);
    let mut seen: std::collections::HashSet<Criteria<'_>> = std::collections::HashSet::new();
    for (i, c) in chains.iter().enumerate() {
        let m = &c.matcher;
        let names: Vec<&str> = if m.server_names.is_empty() {
            vec![""]
        } else {
            m.server_names.iter().map(|n| &**n).collect()
        };
        let alpns: Vec<&[u8]> = if m.application_protocols.is_empty() {
            vec![&[]]
        } else {
            m.application_protocols.iter().map(|p| &**p).collect()
        };
        for n in &names {
            for a in &alpns {
                if !seen.insert((m.destination_port, n, m.transport_protocol, a)) {
                    return Err(cx.err(
                        &format!("filter_chains[{i}]"),
                        "multiple filter chains with the same matching rules",
                    ));
                }
            }
        }
    }
    let uses_tls_match = chains.iter().any(|c| {
        !c.matcher.server_names.is_empty()
            || !c.matcher.application_protocols.is_empty()
            || c.matcher.transport_protocol == Some(TransportProtocol::Tls)
    });
    if uses_tls_match && !tls_inspector {
        // Envoy accepts this too; such chains never match without the inspector.
        tracing::warn!(listener = %l.name, "filter chains match on SNI, ALPN or `tls` but the listener has no tls_inspector: they never match");
    }
    let mut listener = Listener::new(
        l.name.as_str().into(),
        addr,
        chains,
        default_chain,
        tls_inspector,
    );
    if let Some(t) = duration(cx, "listener_filters_timeout", &l.listener_filters_timeout)? {
        // Zero disables the bound in Envoy; meshgate keeps one (an hour) so that a client
        // that never speaks cannot hold a connection forever.
        listener.listener_filters_timeout = if t.is_zero() {
            Duration::from_secs(3600)
        } else {
            t
        };
    }
    listener.continue_on_listener_filters_timeout = l.continue_on_listener_filters_timeout;
    listener.stat_name = crate::proxy::overload::listener_stat_name(&l.stat_prefix, addr).into();
    listener.ignore_global_conn_limit = l.ignore_global_conn_limit;
    listener.proxy_protocol = proxy_protocol.map(Arc::new);
    Ok(listener)
}

/// `envoy.filters.listener.proxy_protocol`.
fn compile_proxy_protocol(
    cx: &mut Cx,
    p: &ProxyProtocolPb,
) -> Result<ProxyProtocolFilter, CompileError> {
    fields!(
        cx,
        p,
        ProxyProtocolPb {
            supported: [
                allow_requests_without_proxy_protocol,
                disallowed_versions,
                pass_through_tlvs
            ],
            ignored: [stat_prefix],
            // TLV values as dynamic metadata: nothing in meshgate reads a connection's
            // dynamic metadata yet, so they are refused rather than dropped.
            unsupported: [rules, tlv_location],
        }
    );
    let mut filter = ProxyProtocolFilter {
        allow_without: p.allow_requests_without_proxy_protocol,
        ..Default::default()
    };
    for (i, v) in p.disallowed_versions.iter().enumerate() {
        match core_pb::proxy_protocol_config::Version::try_from(*v) {
            Ok(core_pb::proxy_protocol_config::Version::V1) => filter.v1 = false,
            Ok(core_pb::proxy_protocol_config::Version::V2) => filter.v2 = false,
            Err(_) => {
                return Err(cx.err(
                    &format!("disallowed_versions[{i}]"),
                    "unknown PROXY protocol version",
                ));
            }
        }
    }
    if let Some(pt) = &p.pass_through_tlvs {
        filter.pass_through = cx.at("pass_through_tlvs", |cx| {
            super::cluster::pass_through_tlvs(cx, pt)
        })?;
    }
    Ok(filter)
}

fn listener_address(cx: &Cx, a: &Option<core_pb::Address>) -> Result<SocketAddr, CompileError> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier;
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => {
            let ip: IpAddr = s.address.parse().map_err(|_| {
                cx.err(
                    "address.socket_address.address",
                    format!("{:?} is not an IP address", s.address),
                )
            })?;
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
                _ => return Err(cx.err("address.socket_address.port_value", "a port is required")),
            };
            if s.protocol != core_pb::socket_address::Protocol::Tcp as i32 {
                return Err(cx.err(
                    "address.socket_address.protocol",
                    "only TCP listeners are supported",
                ));
            }
            Ok(SocketAddr::new(ip, port))
        }
        _ => Err(cx.err("address", "a socket address is required")),
    }
}

fn compile_chain(
    cx: &mut Cx,
    fc: &pb::FilterChain,
    routes: &HashMap<String, Arc<RouteTable>>,
    clusters: &Clusters,
    tls: &mut DownstreamTlsSet<'_>,
    listener: &str,
    egress: bool,
) -> Result<FilterChain, CompileError> {
    fields!(
        cx,
        fc,
        pb::FilterChain {
            supported: [
                filter_chain_match,
                filters,
                transport_socket,
                name,
                transport_socket_connect_timeout
            ],
            ignored: [metadata],
            unsupported: [use_proxy_proto],
        }
    );
    let handshake_timeout = duration(
        cx,
        "transport_socket_connect_timeout",
        &fc.transport_socket_connect_timeout,
    )?
    .filter(|d| !d.is_zero())
    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let downstream_tls = match &fc.transport_socket {
        None => None,
        Some(ts) => cx.at("transport_socket", |cx| {
            let names = fc
                .filter_chain_match
                .as_ref()
                .map_or(&[][..], |m| m.server_names.as_slice());
            downstream_transport_socket(cx, ts, tls, names, listener, &fc.name)
        })?,
    };
    let matcher = match &fc.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => cx.at("filter_chain_match", |cx| chain_match(cx, m))?,
    };
    // Network RBAC filters, then one http_connection_manager or tcp_proxy.
    let Some((f, before)) = fc.filters.split_last() else {
        return Err(cx.err(
            "filters",
            "a network filter (http_connection_manager or tcp_proxy) is required",
        ));
    };
    let mut rbac = Vec::with_capacity(before.len());
    for (i, nf) in before.iter().enumerate() {
        rbac.push(cx.at(format_args!("filters[{i}]"), |cx| network_rbac(cx, nf))?);
    }
    let last = fc.filters.len() - 1;
    let action = cx.at(format_args!("filters[{last}]"), |cx| {
        use pb::filter::ConfigType;
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => a,
            _ => return Err(cx.err("typed_config", "required")),
        };
        if any.type_url == tcp_pb::TcpProxy::type_url() {
            let t = tcp_pb::TcpProxy::decode(any.value.as_slice())
                .map_err(|e| cx.err("typed_config", format!("decoding TcpProxy: {e}")))?;
            let rbac = std::mem::take(&mut rbac);
            return cx.at("typed_config", |cx| {
                compile_tcp_proxy(cx, &t).map(|p| ChainAction::Tcp(Arc::new(TcpProxy { rbac, ..p })))
            });
        }
        if !rbac.is_empty() {
            return Err(cx.err(
                "",
                "network RBAC filters are only supported before tcp_proxy (HTTP chains take envoy.filters.http.rbac)",
            ));
        }
        if any.type_url != hcm_pb::HttpConnectionManager::type_url() {
            return Err(cx.err(
                "typed_config",
                format!("network filter {} is not supported", any.type_url),
            ));
        }
        let h = hcm_pb::HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            cx.err(
                "typed_config",
                format!("decoding HttpConnectionManager: {e}"),
            )
        })?;
        cx.at("typed_config", |cx| compile_hcm(cx, &h, routes, clusters, egress))
            .map(|h| ChainAction::Http(Arc::new(h)))
    })?;
    Ok(FilterChain {
        name: fc.name.as_str().into(),
        matcher,
        tls: downstream_tls,
        handshake_timeout,
        action,
    })
}

/// `envoy.filters.network.rbac` before a `tcp_proxy`.
fn network_rbac(
    cx: &mut Cx,
    f: &pb::Filter,
) -> Result<crate::proxy::rbac::NetworkRbac, CompileError> {
    use crate::xds::pb::envoy::extensions::filters::network::rbac::v3 as rbac_pb;
    use pb::filter::ConfigType;
    let any = match &f.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        _ => return Err(cx.err("typed_config", "required")),
    };
    if any.type_url != rbac_pb::Rbac::type_url() {
        return Err(cx.err(
            "typed_config",
            format!(
                "network filter {} is not supported here (only envoy.filters.network.rbac may precede the last filter)",
                any.type_url
            ),
        ));
    }
    let r = rbac_pb::Rbac::decode(any.value.as_slice())
        .map_err(|e| cx.err("typed_config", format!("decoding RBAC: {e}")))?;
    cx.at("typed_config", |cx| {
        crate::proxy::rbac::NetworkRbac::compile(cx, &r)
    })
}

/// A filter chain's transport socket: raw buffer (plain text) or TLS termination.
fn downstream_transport_socket(
    cx: &mut Cx,
    ts: &core_pb::TransportSocket,
    tls: &mut DownstreamTlsSet<'_>,
    server_names: &[String],
    listener: &str,
    chain: &str,
) -> Result<Option<DownstreamTls>, CompileError> {
    use core_pb::transport_socket::ConfigType;
    let any = match &ts.config_type {
        None => return Ok(None),
        Some(ConfigType::TypedConfig(a)) => a,
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if any.type_url != tls_pb::DownstreamTlsContext::type_url() {
        return Err(cx.err(
            "typed_config",
            format!("transport socket {} is not supported", any.type_url),
        ));
    }
    let ctx = tls_pb::DownstreamTlsContext::decode(any.value.as_slice()).map_err(|e| {
        cx.err(
            "typed_config",
            format!("decoding DownstreamTlsContext: {e}"),
        )
    })?;
    let name = format!("listener {listener} filter chain {chain:?}");
    // A certificate secret that has not arrived is not an error: the chain's handshakes
    // fail until it comes (logged once per secret when the listener is applied).
    let built = tls
        .build(&ctx, server_names, &name)
        .map_err(|e| cx.err("typed_config", e.to_string()))?;
    Ok(Some(built))
}

/// `FilterChainMatch`: destination port, server names, transport protocol, ALPN.
fn chain_match(cx: &mut Cx, m: &pb::FilterChainMatch) -> Result<ChainMatch, CompileError> {
    fields!(
        cx,
        m,
        pb::FilterChainMatch {
            supported: [
                destination_port,
                server_names,
                transport_protocol,
                application_protocols
            ],
            ignored: [],
            unsupported: [
                prefix_ranges,
                address_suffix,
                suffix_len,
                direct_source_prefix_ranges,
                source_type,
                source_prefix_ranges,
                source_ports
            ],
        }
    );
    let mut server_names: Vec<Box<str>> = Vec::with_capacity(m.server_names.len());
    for (i, n) in m.server_names.iter().enumerate() {
        let lower = n.to_ascii_lowercase();
        let body = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !body.is_empty()
            && !body.contains('*')
            && body.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(cx.err(
                &format!("server_names[{i}]"),
                format!("{n:?}: server names are host names or `*.suffix` wildcards"),
            ));
        }
        if !server_names.iter().any(|s| **s == *lower) {
            server_names.push(lower.into());
        }
    }
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        "raw_buffer" => Some(TransportProtocol::RawBuffer),
        "tls" => Some(TransportProtocol::Tls),
        other => {
            return Err(cx.err(
                "transport_protocol",
                format!("unknown transport protocol {other:?} (tls, raw_buffer)"),
            ));
        }
    };
    let mut application_protocols: Vec<Box<[u8]>> = Vec::new();
    for (i, p) in m.application_protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(cx.err(
                &format!("application_protocols[{i}]"),
                "an ALPN protocol is 1 to 255 bytes",
            ));
        }
        application_protocols.push(p.as_bytes().into());
    }
    let destination_port = match m.destination_port {
        None => None,
        Some(p) if p.value >= 1 && p.value <= 65535 => Some(p.value as u16),
        Some(_) => return Err(cx.err("destination_port", "not a port number")),
    };
    Ok(ChainMatch {
        destination_port,
        server_names,
        transport_protocol,
        application_protocols,
    })
}

/// `tcp_proxy`: one cluster or weighted clusters, idle timeout, maximum duration.
fn compile_tcp_proxy(cx: &mut Cx, t: &tcp_pb::TcpProxy) -> Result<TcpProxy, CompileError> {
    fields!(
        cx,
        t,
        tcp_pb::TcpProxy {
            supported: [
                stat_prefix,
                cluster_specifier,
                idle_timeout,
                max_downstream_connection_duration
            ],
            ignored: [
                access_log,
                access_log_flush_interval,
                flush_access_log_on_connected,
                access_log_options,
                check_drain_close
            ],
            unsupported: [
                on_demand,
                metadata_match,
                downstream_idle_timeout,
                upstream_idle_timeout,
                max_connect_attempts,
                backoff_options,
                hash_policy,
                tunneling_config,
                max_downstream_connection_duration_jitter_percentage,
                proxy_protocol_tlvs,
                proxy_protocol_tlv_merge_policy,
                upstream_connect_mode,
                max_early_data_bytes
            ],
        }
    );
    use tcp_pb::tcp_proxy::ClusterSpecifier as C;
    let clusters = match &t.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => TcpClusters::One(name.as_str().into()),
        Some(C::WeightedClusters(w)) => {
            let mut list = Vec::with_capacity(w.clusters.len());
            let mut total = 0u64;
            for (i, c) in w.clusters.iter().enumerate() {
                if c.metadata_match.is_some() {
                    return Err(
                        cx.unsupported(&format!("weighted_clusters.clusters[{i}].metadata_match"))
                    );
                }
                if c.name.is_empty() {
                    return Err(cx.err(
                        &format!("weighted_clusters.clusters[{i}].name"),
                        "a cluster name is required",
                    ));
                }
                if c.weight > 0 {
                    total += u64::from(c.weight);
                    list.push((Arc::<str>::from(c.name.as_str()), c.weight));
                }
            }
            if list.is_empty() {
                return Err(cx.err(
                    "weighted_clusters",
                    "at least one cluster with a positive weight is required",
                ));
            }
            TcpClusters::Weighted(list, total)
        }
        _ => return Err(cx.err("cluster", "cluster or weighted_clusters is required")),
    };
    let idle_timeout = match duration(cx, "idle_timeout", &t.idle_timeout)? {
        None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
        Some(d) => nonzero(Some(d)),
    };
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.as_str().into(),
        clusters,
        idle_timeout,
        max_connection_duration: nonzero(duration(
            cx,
            "max_downstream_connection_duration",
            &t.max_downstream_connection_duration,
        )?),
        rbac: Vec::new(),
    })
}

/// Envoy's `stream_idle_timeout` when the connection manager does not set one.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's `drain_timeout` when the connection manager does not set one.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn compile_hcm(
    cx: &mut Cx,
    h: &hcm_pb::HttpConnectionManager,
    routes: &HashMap<String, Arc<RouteTable>>,
    clusters: &Clusters,
    egress: bool,
) -> Result<HttpConnectionManager, CompileError> {
    use hcm_pb::http_connection_manager::RouteSpecifier as R;
    fields!(
        cx,
        h,
        hcm_pb::HttpConnectionManager {
            supported: [
                codec_type,
                stat_prefix,
                http_filters,
                common_http_protocol_options,
                http_protocol_options,
                http2_protocol_options,
                server_name,
                server_header_transformation,
                max_request_headers_kb,
                request_timeout,
                request_headers_timeout,
                use_remote_address,
                xff_num_trusted_hops,
                skip_xff_append,
                generate_request_id,
                preserve_external_request_id,
                always_set_request_id_in_response,
                forward_client_cert_details,
                set_current_client_cert_details,
                upgrade_configs,
                normalize_path,
                merge_slashes,
                path_with_escaped_slashes_action,
                strip_port_mode,
                route_specifier,
                strip_matching_host_port,
                request_id_extension,
                stream_idle_timeout,
                drain_timeout,
                tracing
            ],
            ignored: [
                add_user_agent,
                access_log,
                access_log_flush_interval,
                flush_access_log_on_new_request,
                access_log_options,
                delayed_close_timeout,
                stream_error_on_invalid_http_message,
                represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
                drain_timeout_jitter,
                stream_flush_timeout,
                proxy_100_continue,
                http1_safe_max_connection_duration
            ],
            unsupported: [
                http3_protocol_options,
                scheme_header_transformation,
                original_ip_detection_extensions,
                early_header_mutation_extensions,
                internal_address_config,
                via,
                forward_client_cert_matcher,
                local_reply_config,
                path_normalization_options,
                typed_header_validation_config,
                append_x_forwarded_port,
                append_local_overload,
                add_proxy_protocol_connection_state,
                strip_trailing_host_dot,
                proxy_status_config,
                forward_proto_config
            ],
        }
    );
    use hcm_pb::http_connection_manager::CodecType;
    match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto | CodecType::Http1 | CodecType::Http2) => {}
        _ => return Err(cx.err("codec_type", "only AUTO, HTTP1 and HTTP2 are supported")),
    }
    let route_table = match &h.route_specifier {
        Some(R::Rds(rds)) => match routes.get(&rds.route_config_name) {
            Some(t) => t.clone(),
            // Not delivered (yet): an empty table answers 404, as Envoy does once warming gives up.
            None => Arc::new(RouteTable {
                name: rds.route_config_name.as_str().into(),
                ..Default::default()
            }),
        },
        Some(R::RouteConfig(rc)) => Arc::new(compile_route_config(rc, clusters)?),
        Some(R::ScopedRoutes(_)) => return Err(cx.unsupported("scoped_routes")),
        None => return Err(cx.err("route_specifier", "rds or route_config is required")),
    };
    let filters = compile_http_filters(cx, h, clusters)?;
    let common = h.common_http_protocol_options.as_ref();
    let idle_timeout = match common.and_then(|c| c.idle_timeout) {
        None => Some(Duration::from_secs(3600)),
        Some(d) => nonzero(duration(
            cx,
            "common_http_protocol_options.idle_timeout",
            &Some(d),
        )?),
    };
    let max_connection_duration = nonzero(duration(
        cx,
        "common_http_protocol_options.max_connection_duration",
        &common.and_then(|c| c.max_connection_duration),
    )?);
    let max_headers_count = common
        .and_then(|c| c.max_headers_count)
        .map(|v| v.value as usize)
        .unwrap_or(100);
    use core_pb::http_protocol_options::HeadersWithUnderscoresAction as U;
    let underscores = common
        .map(|c| U::try_from(c.headers_with_underscores_action).unwrap_or(U::Allow))
        .unwrap_or(U::Allow);
    if let Some(c) = common
        && (c.max_stream_duration.is_some() || c.max_response_headers_kb.is_some())
    {
        return Err(cx.err("common_http_protocol_options", "only idle_timeout, max_connection_duration, max_headers_count, max_requests_per_connection and headers_with_underscores_action are supported"));
    }
    let max_requests_per_connection = common
        .and_then(|c| c.max_requests_per_connection)
        .map(|v| v.value);
    let (accept_http_10, default_host_for_http_10) = match &h.http_protocol_options {
        None => (false, None),
        Some(o) => {
            let host = if o.default_host_for_http_10.is_empty() {
                None
            } else {
                Some(
                    HeaderValue::from_str(&o.default_host_for_http_10).map_err(|_| {
                        cx.err(
                            "http_protocol_options.default_host_for_http_10",
                            "invalid host",
                        )
                    })?,
                )
            };
            (o.accept_http_10, host)
        }
    };
    let http2_max_concurrent_streams = h
        .http2_protocol_options
        .as_ref()
        .and_then(|o| o.max_concurrent_streams)
        .map(|v| v.value);
    use hcm_pb::http_connection_manager::ServerHeaderTransformation as S;
    let server_header = match S::try_from(h.server_header_transformation) {
        Ok(S::Overwrite) => ServerHeader::Overwrite,
        Ok(S::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
        Ok(S::PassThrough) => ServerHeader::PassThrough,
        Err(_) => return Err(cx.err("server_header_transformation", "unknown value")),
    };
    let server_name = HeaderValue::from_str(if h.server_name.is_empty() {
        "envoy"
    } else {
        &h.server_name
    })
    .map_err(|_| cx.err("server_name", "invalid header value"))?;
    use hcm_pb::http_connection_manager::PathWithEscapedSlashesAction as E;
    let escaped_slashes = match E::try_from(h.path_with_escaped_slashes_action) {
        Ok(E::ImplementationSpecificDefault | E::KeepUnchanged) => EscapedSlashes::Keep,
        Ok(E::RejectRequest) => EscapedSlashes::Reject,
        Ok(E::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Ok(E::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Err(_) => return Err(cx.err("path_with_escaped_slashes_action", "unknown value")),
    };
    use hcm_pb::http_connection_manager::StripPortMode;
    let strip_port = match (&h.strip_port_mode, h.strip_matching_host_port) {
        (Some(StripPortMode::StripAnyHostPort(true)), _) => StripPort::Any,
        (_, true) => StripPort::Matching,
        _ => StripPort::None,
    };
    let forward_client_cert = ForwardClientCert::from_proto(h.forward_client_cert_details)
        .ok_or_else(|| cx.err("forward_client_cert_details", "unknown value"))?;
    let client_cert_details = match &h.set_current_client_cert_details {
        None => ClientCertDetails::default(),
        Some(d) => ClientCertDetails {
            subject: d.subject.is_some_and(|b| b.value),
            cert: d.cert,
            chain: d.chain,
            dns: d.dns,
            uri: d.uri,
        },
    };
    let mut upgrades = Vec::new();
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        if !u.filters.is_empty() {
            return Err(cx.err(
                &format!("upgrade_configs[{i}].filters"),
                "per-upgrade filters are not supported",
            ));
        }
        if u.enabled.map(|b| b.value).unwrap_or(true) {
            upgrades.push(u.upgrade_type.to_ascii_lowercase().into());
        }
    }
    let mut uuid_config = None;
    if let Some(ext) = &h.request_id_extension
        && let Some(tc) = &ext.typed_config
    {
        use crate::xds::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
        if tc.type_url != UuidRequestIdConfig::type_url() {
            return Err(cx.err(
                "request_id_extension",
                format!("request id extension {} is not supported", tc.type_url),
            ));
        }
        uuid_config = Some(
            UuidRequestIdConfig::decode(tc.value.as_slice()).map_err(|e| {
                cx.err(
                    "request_id_extension",
                    format!("decoding UuidRequestIdConfig: {e}"),
                )
            })?,
        );
    }
    let tracing = match &h.tracing {
        None => None,
        Some(t) => Some(cx.at("tracing", |cx| {
            super::tracing::compile_tracing(cx, t, uuid_config.as_ref(), clusters, egress)
        })?),
    };
    let suppress_envoy_headers = filters.1;
    Ok(HttpConnectionManager {
        stat_prefix: h.stat_prefix.as_str().into(),
        routes: route_table,
        filters: filters.0,
        use_remote_address: h.use_remote_address.is_some_and(|b| b.value),
        xff_num_trusted_hops: h.xff_num_trusted_hops,
        skip_xff_append: h.skip_xff_append,
        generate_request_id: h.generate_request_id.map(|b| b.value).unwrap_or(true),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        server_name,
        server_header,
        normalize_path: h.normalize_path.is_some_and(|b| b.value),
        merge_slashes: h.merge_slashes,
        escaped_slashes,
        strip_port,
        request_timeout: nonzero(duration(cx, "request_timeout", &h.request_timeout)?),
        request_headers_timeout: nonzero(duration(
            cx,
            "request_headers_timeout",
            &h.request_headers_timeout,
        )?),
        idle_timeout,
        max_connection_duration,
        // Envoy's defaults: 5 minutes of stream inactivity, 5 s of drain grace.
        stream_idle_timeout: match duration(cx, "stream_idle_timeout", &h.stream_idle_timeout)? {
            None => Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            Some(d) => nonzero(Some(d)),
        },
        drain_timeout: duration(cx, "drain_timeout", &h.drain_timeout)?
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        max_headers_count,
        max_request_headers_kb: h.max_request_headers_kb.map(|v| v.value).unwrap_or(60),
        reject_underscore_headers: underscores == U::RejectRequest,
        drop_underscore_headers: underscores == U::DropHeader,
        upgrades,
        accept_http_10,
        default_host_for_http_10,
        forward_client_cert,
        client_cert_details,
        suppress_envoy_headers,
        http2_max_concurrent_streams,
        max_requests_per_connection,
        tracing,
        overload_counters: Default::default(),
    })
}

/// The HTTP filters in order; the router must be last. Returns the filters and the
/// router's `suppress_envoy_headers`.
fn compile_http_filters(
    cx: &mut Cx,
    h: &hcm_pb::HttpConnectionManager,
    clusters: &Clusters,
) -> Result<(Vec<Arc<dyn HttpFilter>>, bool), CompileError> {
    use hcm_pb::http_filter::ConfigType;
    let mut out = Vec::new();
    let mut suppress = false;
    let n = h.http_filters.len();
    if n == 0 {
        return Err(cx.err("http_filters", "the router filter is required"));
    }
    for (i, f) in h.http_filters.iter().enumerate() {
        cx.at(format_args!("http_filters[{i}]"), |cx| {
            let any = match &f.config_type {
                Some(ConfigType::TypedConfig(a)) => a,
                _ => {
                    return Err(cx.err(
                        "typed_config",
                        format!("filter {:?} needs a typed_config", f.name),
                    ));
                }
            };
            let is_router = any.type_url == router_pb::Router::type_url();
            if is_router != (i == n - 1) {
                return Err(cx.err("", "the router filter must be the last HTTP filter"));
            }
            if is_router {
                let r = router_pb::Router::decode(any.value.as_slice())
                    .map_err(|e| cx.err("typed_config", e.to_string()))?;
                fields!(
                    cx,
                    &r,
                    router_pb::Router {
                        supported: [suppress_envoy_headers],
                        ignored: [
                            dynamic_stats,
                            start_child_span,
                            upstream_log,
                            upstream_log_options,
                            strict_check_headers,
                            respect_expected_rq_timeout,
                            suppress_grpc_request_failure_code_stats,
                            reject_connect_request_early_data
                        ],
                        unsupported: [upstream_http_filters],
                    }
                );
                suppress = r.suppress_envoy_headers;
            } else if ISTIO_STATS.contains(&any.type_url.as_str()) {
                // Istio's standard metrics are always produced.
            } else {
                let b = crate::proxy::http::filters::BuildCx {
                    name: &f.name,
                    clusters,
                };
                match crate::proxy::http::filters::build(cx, &b, any)? {
                    Some(filter) => out.push(filter),
                    None => {
                        return Err(cx.err(
                            "typed_config",
                            format!(
                                "HTTP filter {:?} ({}) is not supported",
                                f.name, any.type_url
                            ),
                        ));
                    }
                }
            }
            if f.is_optional || f.disabled {
                return Err(cx.err("", "optional or disabled HTTP filters are not supported"));
            }
            Ok(())
        })?;
    }
    Ok((out, suppress))
}
