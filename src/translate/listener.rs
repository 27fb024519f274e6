//! Gateway listeners: one per port, with the HTTP connection manager istiod configures
//! for gateways.
use super::gateways::Port;
use super::http_route::{CORS_FILTER, FAULT_FILTER};
use super::names;
use super::pb;
use crate::config::mesh::{ForwardClientCertDetails, GatewayTopology};
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::extensions::filters::http::cors::v3::Cors;
use crate::xds::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use crate::xds::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::xds::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use crate::xds::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use crate::xds::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;

/// Name of the HTTP connection manager network filter.
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
/// Name of the router HTTP filter.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The `server` header Istio gateways answer with.
pub const SERVER_NAME: &str = "istio-envoy";
/// Istio's bound on TLS handshakes on gateway filter chains (15 s).
pub const TRANSPORT_SOCKET_CONNECT_TIMEOUT_SECS: u64 = 15;

/// Name of the TLS inspector listener filter.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// Name of the HTTP inspector listener filter.
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
/// Name of the PROXY protocol listener filter.
pub const PROXY_PROTOCOL: &str = "envoy.filters.listener.proxy_protocol";

/// The PROXY protocol listener filter as istiod adds it for `gatewayTopology.proxyProtocol`
/// (an empty config: v1 and v2 accepted, a connection without a header refused).
pub fn proxy_protocol() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: PROXY_PROTOCOL.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pb::any(
            &ProxyProtocol::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS inspector as istiod configures it (it reads at most 512 bytes of a
/// ClientHello before giving up, not Envoy's 64 KiB).
pub fn tls_inspector() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pb::any(
            &TlsInspector {
                initial_read_buffer_size: Some(pb::u32v(512)),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

/// The HTTP inspector: tells plain-text HTTP (`http/1.1`, `h2c`) from other bytes.
pub fn http_inspector() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: HTTP_INSPECTOR.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pb::any(
            &HttpInspector {},
        ))),
        ..Default::default()
    }
}

/// The address a gateway listener binds: the server's `bind`, else all IPv4 addresses.
pub fn bind_address(bind: &str) -> &str {
    if bind.is_empty() { "0.0.0.0" } else { bind }
}

/// An empty listener for a port (filter chains are added by the caller).
pub fn listener(port: &Port) -> listener::Listener {
    let bind = bind_address(&port.bind);
    let address = match bind.strip_prefix("unix://") {
        Some(path) => pb::pipe_address(path),
        None => pb::socket_address(bind, port.number),
    };
    listener::Listener {
        name: names::listener_name(bind, port.number),
        address: Some(address),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// A filter chain around network filters, with Istio's handshake bound.
pub fn filter_chain(
    filters: Vec<listener::Filter>,
    filter_chain_match: Option<listener::FilterChainMatch>,
    transport_socket: Option<core::TransportSocket>,
) -> listener::FilterChain {
    listener::FilterChain {
        filter_chain_match,
        filters,
        transport_socket,
        transport_socket_connect_timeout: Some(pb::seconds(TRANSPORT_SOCKET_CONNECT_TIMEOUT_SECS)),
        ..Default::default()
    }
}

/// The HTTP connection manager of a gateway server, reading routes `route_name` by RDS.
///
/// Istio's gateway settings on top of [`istio_http_connection_manager`]'s
/// (`buildGatewayConnectionManager`): the client address is the peer
/// (use_remote_address) or, with `gatewayTopology.numTrustedProxies` N, the Nth
/// `x-forwarded-for` entry from the right; client certificate details as
/// `forwardClientCertDetails` says (default SANITIZE_SET), with the current client's
/// details set when they are forwarded. `filters` (authorization) go before Istio's
/// fault, CORS and router filters. `tracing` is the mesh's (see `translate::tracing`).
pub fn http_connection_manager(
    route_name: &str,
    stat_prefix: &str,
    filters: Vec<hcm::HttpFilter>,
    topology: &GatewayTopology,
    tracing: Option<hcm::http_connection_manager::Tracing>,
) -> listener::Filter {
    use hcm::http_connection_manager::ForwardClientCertDetails as Fcc;
    let fcc = match topology.forward_client_cert_details {
        ForwardClientCertDetails::Undefined | ForwardClientCertDetails::SanitizeSet => {
            Fcc::SanitizeSet
        }
        ForwardClientCertDetails::Sanitize => Fcc::Sanitize,
        ForwardClientCertDetails::ForwardOnly => Fcc::ForwardOnly,
        ForwardClientCertDetails::AppendForward => Fcc::AppendForward,
        ForwardClientCertDetails::AlwaysForwardOnly => Fcc::AlwaysForwardOnly,
    };
    let set_details = matches!(fcc, Fcc::AppendForward | Fcc::SanitizeSet).then(|| {
        hcm::http_connection_manager::SetCurrentClientCertDetails {
            subject: Some(pb::boolv(true)),
            cert: true,
            dns: true,
            uri: true,
            ..Default::default()
        }
    });
    let mut manager = hcm::HttpConnectionManager {
        use_remote_address: Some(pb::boolv(true)),
        xff_num_trusted_hops: topology.num_trusted_proxies,
        forward_client_cert_details: fcc as i32,
        set_current_client_cert_details: set_details,
        http_protocol_options: Some(core::Http1ProtocolOptions::default()),
        tracing,
        ..istio_http_connection_manager(
            stat_prefix,
            hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(pb::ads_config_source()),
                route_config_name: route_name.to_string(),
            }),
        )
    };
    super::authz::insert_http_filters(&mut manager, filters);
    http_connection_manager_filter(&manager)
}

/// The connection manager of a sidecar's outbound HTTP listener (istiod's
/// `buildSidecarOutboundHTTPListenerOpts`): the application is the client, so its
/// address is not the peer's (no use_remote_address), Envoy's own `server` name (Istio
/// leaves it unset on outbound), and the mesh's access log.
pub fn sidecar_outbound_http_connection_manager(
    route_name: &str,
    stat_prefix: &str,
    access_log: Vec<crate::xds::pb::envoy::config::accesslog::v3::AccessLog>,
    tracing: Option<hcm::http_connection_manager::Tracing>,
) -> listener::Filter {
    let mut manager = istio_http_connection_manager(
        stat_prefix,
        hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(pb::ads_config_source()),
            route_config_name: route_name.to_string(),
        }),
    );
    manager.use_remote_address = Some(pb::boolv(false));
    manager.server_name = String::new();
    manager.http_protocol_options = Some(core::Http1ProtocolOptions::default());
    manager.access_log = access_log;
    manager.tracing = tracing;
    http_connection_manager_filter(&manager)
}

/// What istiod sets on every HTTP connection manager it builds (`buildHTTPConnectionManager`):
/// automatic codec, `server: istio-envoy`, paths normalised without touching escaped
/// slashes, websocket upgrades, no stream idle timeout, UUID request ids, `100-continue`
/// answered by the proxy, and the fault, CORS and router filters (router last).
pub fn istio_http_connection_manager(
    stat_prefix: &str,
    routes: hcm::http_connection_manager::RouteSpecifier,
) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        http_filters: vec![
            http_filter(FAULT_FILTER, pb::any(&HttpFault::default())),
            http_filter(CORS_FILTER, pb::any(&Cors::default())),
            http_filter(ROUTER_FILTER, pb::any(&Router::default())),
        ],
        server_name: SERVER_NAME.to_string(),
        server_header_transformation:
            hcm::http_connection_manager::ServerHeaderTransformation::Overwrite as i32,
        proxy_100_continue: true,
        normalize_path: Some(pb::boolv(true)),
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(pb::seconds(0)),
        request_id_extension: Some(hcm::RequestIdExtension {
            typed_config: Some(pb::any(&UuidRequestIdConfig {
                use_request_id_for_trace_sampling: Some(pb::boolv(true)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// The network filter of an HTTP connection manager.
pub fn http_connection_manager_filter(manager: &hcm::HttpConnectionManager) -> listener::Filter {
    listener::Filter {
        name: HTTP_CONNECTION_MANAGER.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pb::any(manager))),
    }
}

fn http_filter(name: &str, config: crate::xds::pb::google::protobuf::Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// Istio's HTTP stat prefix for a listener: `outbound_LISTENER;`.
pub fn http_stat_prefix(listener_name: &str) -> String {
    names::delimited_stat_prefix(&format!("outbound_{listener_name}"))
}
