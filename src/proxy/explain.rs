//! Why a request gets the answer it gets: the path one request takes through a compiled
//! [`Snapshot`] — listener, filter chain, TLS, virtual host, the routes tried in order,
//! the HTTP filters' decisions, the cluster and its endpoints — and the answer at the end.
//!
//! Every decision here is made by the data plane's own code: [`Listener::select`] for the
//! filter chain, [`RouteTable::virtual_host`] and [`RouteMatch::first_mismatch`] for the
//! route, the filters' [`crate::proxy::http::filter::HttpFilter::explain`] (the RBAC engine), the router's
//! [`redirect_location`] and [`LocalReply`] answers. What the request handling does before
//! routing (port stripping, path normalization) is replayed with the same functions.
//! Istio names come from the resources' metadata (`filter_metadata.istio.config`) and
//! from Istio's resource naming (`https.443.NAME.GATEWAY.NAMESPACE`,
//! `outbound|PORT|SUBSET|HOST`).
use crate::proxy::http::hcm::{HttpConnectionManager, StripPort};
use crate::proxy::http::local_reply::{Flags, LocalReply};
use crate::proxy::http::router::redirect_location;
use crate::proxy::listener::{ChainAction, Detected, FilterChain, Listener, TransportProtocol};
use crate::proxy::route::action::{ClusterTarget, HostRewrite};
use crate::proxy::route::matcher::{HeaderKey, HeaderMatchKind, Mismatch, QueryMatch};
use crate::proxy::route::{
    Action, ClusterRef, HeaderMatch, PathMatch, RequestView, Route, RouteMatch, RouteTable,
    StringMatch,
};
use crate::proxy::snapshot::Snapshot;
use crate::proxy::tcp::TcpClusters;
use crate::proxy::upstream::Cluster;
use crate::proxy::upstream::cluster::Discovery;
use crate::proxy::upstream::lb::LbPolicy;
use crate::tls::identity::PeerIdentity;
use crate::tls::server::ClientAuth;
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::core::v3::Metadata;
use crate::xds::pb::envoy::config::core::v3::transport_socket::ConfigType;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// The request to explain, as a client would send it.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    pub method: http::Method,
    /// `https://` URL: the client speaks TLS.
    pub https: bool,
    /// Host header / `:authority` (with a port when the URL has one).
    pub authority: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    /// The gateway port the client connects to.
    pub port: u16,
    /// The SNI of the ClientHello (TLS only).
    pub sni: Option<String>,
    /// The client's ALPN offer (TLS only), in its order.
    pub alpn: Vec<Vec<u8>>,
    /// The certificate the client presents, if any.
    pub client_cert: Option<PeerIdentity>,
    /// The client's address.
    pub source_ip: IpAddr,
    /// An HTTP/1.0 request (the connection manager may refuse those: 426).
    pub http10: bool,
}

/// The whole explanation; serialized as `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub request: RequestSummary,
    pub listener: Option<ListenerStep>,
    pub filter_chain: Option<ChainStep>,
    /// The listener's other chains and why each did not take the connection.
    pub chains_not_matched: Vec<Skipped>,
    pub http: Option<HttpStep>,
    pub tcp: Option<TcpStep>,
    /// The clusters the request may go to, with their endpoints.
    pub clusters: Vec<ClusterStep>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub method: String,
    pub url: String,
    pub port: u16,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub client_certificate: Option<String>,
    pub source_ip: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerStep {
    pub name: String,
    pub address: String,
    pub tls_inspector: bool,
}

/// A chain, or a route, that was passed over, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainStep {
    pub name: String,
    /// `http` (connection manager) or `tcp` (tcp_proxy).
    pub kind: &'static str,
    /// What the chain matches: server names, transport, ALPN.
    pub matches: String,
    /// Whether this is the listener's `default_filter_chain`.
    pub default_chain: bool,
    /// SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL, PASSTHROUGH, AUTO_PASSTHROUGH, or
    /// none (plain text).
    pub tls_mode: String,
    pub client_certificate_required: bool,
    /// The Istio Gateway server the chain was made for, when its names say so.
    pub gateway_server: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpStep {
    pub route_configuration: String,
    /// The authority routing sees (after port stripping) and the path.
    pub authority: String,
    pub path: String,
    pub virtual_host: Option<String>,
    pub virtual_host_domains: Vec<String>,
    /// The routes of the virtual host tried before the one that matched, each with the
    /// condition it failed (all of them when none matched).
    pub routes_not_matched: Vec<RouteSkipped>,
    pub route: Option<RouteStep>,
    /// The HTTP filters in order, with what each decides.
    pub filters: Vec<FilterStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteSkipped {
    pub index: usize,
    pub name: String,
    pub istio_config: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStep {
    pub index: usize,
    pub name: String,
    /// `/apis/networking.istio.io/v1/namespaces/NS/virtual-service/NAME`.
    pub istio_config: Option<String>,
    pub matches: String,
    /// `forward`, `redirect` or `direct_response`.
    pub action: &'static str,
    /// Everything else the route does, one line each.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilterStep {
    pub name: String,
    pub decision: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpStep {
    pub stat_prefix: String,
    pub network_rbac: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStep {
    pub name: String,
    /// Share of requests (1.0 for a single cluster).
    pub probability: f64,
    pub istio_config: Option<String>,
    /// `outbound|PORT|SUBSET|HOST` parsed: the service host and subset.
    pub service: Option<String>,
    pub subset: Option<String>,
    pub exists: bool,
    pub discovery: String,
    pub lb_policy: String,
    pub tls_origination: Option<String>,
    pub endpoints: Vec<EndpointStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStep {
    pub address: String,
    pub healthy: bool,
    /// A running proxy's `health_flags` from its admin `/clusters` (`healthy`,
    /// `/failed_outlier_check`, ...), with `--admin`; null otherwise.
    pub health_flags: Option<String>,
    pub weight: u32,
    pub priority: usize,
    pub locality: String,
    pub labels: Vec<(String, String)>,
}

/// What happens in the end.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `forwarded`, `local_reply`, `tcp_proxied`, `connection_reset`,
    /// `connection_refused`, `tls_handshake_failure`.
    pub kind: &'static str,
    pub status: Option<u16>,
    /// Envoy's response flags as the access log prints them (`-` for none).
    pub response_flags: String,
    pub response_code_details: Option<String>,
    pub route_name: Option<String>,
    /// For a forwarded request or connection, the cluster (the first of a weighted split).
    pub cluster: Option<String>,
    pub location: Option<String>,
    pub body: Option<String>,
    pub summary: String,
}

impl Outcome {
    fn new(kind: &'static str, summary: String) -> Outcome {
        Outcome {
            kind,
            status: None,
            response_flags: "-".into(),
            response_code_details: None,
            route_name: None,
            cluster: None,
            location: None,
            body: None,
            summary,
        }
    }

    fn local(reply: LocalReply, summary: String) -> Outcome {
        Outcome {
            status: Some(reply.status.as_u16()),
            response_flags: Flags(reply.flag).to_string_lossy(),
            response_code_details: Some(reply.reason.to_string()),
            body: (!reply.body.is_empty()).then(|| reply.body.to_string()),
            ..Outcome::new("local_reply", summary)
        }
    }
}

/// Explains `req` against `snap`; `set` is what `snap` was compiled from (read for the
/// resources' metadata and endpoint labels).
pub fn explain(snap: &Snapshot, set: &ResourceSet, req: &ExplainRequest) -> Explanation {
    let mut out = Explanation {
        request: summary(req),
        listener: None,
        filter_chain: None,
        chains_not_matched: Vec::new(),
        http: None,
        tcp: None,
        clusters: Vec::new(),
        outcome: Outcome::new("connection_refused", String::new()),
    };
    let Some(listener) = snap.listeners.iter().find(|l| l.addr.port() == req.port) else {
        let ports: Vec<String> = snap
            .listeners
            .iter()
            .map(|l| l.addr.port().to_string())
            .collect();
        out.outcome.summary = format!(
            "no listener on port {}: the connection is refused (listening on: {})",
            req.port,
            if ports.is_empty() {
                "nothing".into()
            } else {
                ports.join(", ")
            }
        );
        return out;
    };
    out.listener = Some(ListenerStep {
        name: listener.name.to_string(),
        address: listener.addr.to_string(),
        tls_inspector: listener.tls_inspector,
    });

    // The listener filters: the ClientHello is read only with the TLS inspector.
    let inspected = req.https && listener.tls_inspector;
    let detected = Detected {
        local_port: req.port,
        server_name: if inspected { req.sni.as_deref() } else { None },
        transport: if inspected {
            TransportProtocol::Tls
        } else {
            TransportProtocol::RawBuffer
        },
        alpn: if inspected { &req.alpn } else { &[] },
    };
    let chosen = listener.select(&detected);
    for c in &listener.chains {
        if chosen.is_some_and(|x| std::ptr::eq(x, c)) {
            continue;
        }
        let reason = match c.matcher.mismatch(&detected) {
            Some(r) => r,
            None => "matches too, but a more specific chain is preferred (Envoy's order: port, server name, transport, ALPN)".into(),
        };
        out.chains_not_matched.push(Skipped {
            name: chain_name(c, listener),
            reason,
        });
    }
    let Some(chain) = chosen else {
        out.outcome = Outcome::new(
            "connection_reset",
            format!(
                "no filter chain of listener {} matches (SNI {}, transport {}) and it has no default chain: the connection is reset",
                listener.name,
                detected.server_name.unwrap_or("none"),
                detected.transport.name()
            ),
        );
        return out;
    };
    let is_default = listener
        .default_chain
        .as_ref()
        .is_some_and(|d| std::ptr::eq(d, chain));
    let (tls_mode, required) = tls_mode(chain, listener, set);
    out.filter_chain = Some(ChainStep {
        name: chain_name(chain, listener),
        kind: match chain.action {
            ChainAction::Http(_) => "http",
            ChainAction::Tcp(_) => "tcp",
        },
        matches: chain_matches(chain),
        default_chain: is_default,
        tls_mode: tls_mode.clone(),
        client_certificate_required: required,
        gateway_server: None,
    });

    // TLS: terminated here, passed through, or plain text.
    if let Some(tls) = &chain.tls {
        if !req.https {
            out.outcome = Outcome::new(
                "tls_handshake_failure",
                "the chain terminates TLS but the client speaks plain text: the handshake fails and the connection is closed".into(),
            );
            return out;
        }
        if tls.client_auth == ClientAuth::Required && req.client_cert.is_none() {
            out.outcome = Outcome::new(
                "tls_handshake_failure",
                format!(
                    "{tls_mode} needs a client certificate and the client presents none: the TLS handshake fails"
                ),
            );
            return out;
        }
    } else if req.https && matches!(chain.action, ChainAction::Http(_)) {
        out.outcome = Outcome::new(
            "tls_handshake_failure",
            "the chain serves plain-text HTTP but the client speaks TLS: the ClientHello is not HTTP and the connection fails".into(),
        );
        return out;
    }

    match &chain.action {
        ChainAction::Tcp(tcp) => {
            let input = rbac_input(req, listener, chain.tls.is_some(), None);
            let mut notes = Vec::new();
            for f in &tcp.rbac {
                if let Some(e) = &f.rules {
                    let d = e.decide(&input);
                    notes.push(format!(
                        "{}: {}{}",
                        f.stat_prefix,
                        if d.allowed { "allowed" } else { "denied" },
                        d.policy
                            .map(|p| format!(" by policy {p}"))
                            .unwrap_or_default()
                    ));
                    if !d.allowed {
                        out.tcp = Some(TcpStep {
                            stat_prefix: tcp.stat_prefix.to_string(),
                            network_rbac: notes,
                        });
                        out.outcome = Outcome::new(
                            "connection_reset",
                            "network RBAC denies the connection: it is closed".into(),
                        );
                        return out;
                    }
                }
            }
            out.tcp = Some(TcpStep {
                stat_prefix: tcp.stat_prefix.to_string(),
                network_rbac: notes,
            });
            let targets: Vec<(Arc<str>, f64)> = match &tcp.clusters {
                TcpClusters::One(c) => vec![(c.clone(), 1.0)],
                TcpClusters::Weighted(list, total) => list
                    .iter()
                    .map(|(c, w)| (c.clone(), f64::from(*w) / (*total).max(1) as f64))
                    .collect(),
            };
            for (name, p) in &targets {
                out.clusters
                    .push(cluster_step(name, snap.clusters.get(&**name), *p, set));
            }
            let first = &targets[0].0;
            let what = if chain.tls.is_some() {
                "decrypted bytes are"
            } else if req.https {
                "the client's TLS passes through untouched,"
            } else {
                "bytes are"
            };
            out.outcome = match snap.clusters.get(&**first) {
                None => Outcome::new(
                    "connection_reset",
                    format!("cluster {first} does not exist: the connection is closed"),
                ),
                Some(c) if no_hosts(c) => Outcome::new(
                    "connection_reset",
                    format!("cluster {first} has no endpoints: the connection is closed"),
                ),
                Some(_) => Outcome::new(
                    "tcp_proxied",
                    format!("{what} copied to cluster {}", split_summary(&targets, snap)),
                ),
            };
            out.outcome.cluster = Some(first.to_string());
            out
        }
        ChainAction::Http(hcm) => {
            explain_http(&mut out, snap, set, req, listener, chain, hcm);
            if let (Some(fc), Some(http)) = (&mut out.filter_chain, &out.http) {
                fc.gateway_server = gateway_server(&http.route_configuration);
            }
            out
        }
    }
}

fn explain_http(
    out: &mut Explanation,
    snap: &Snapshot,
    set: &ResourceSet,
    req: &ExplainRequest,
    listener: &Listener,
    chain: &FilterChain,
    hcm: &HttpConnectionManager,
) {
    let table: &RouteTable = &hcm.routes;
    if req.http10 && !hcm.accept_http_10 {
        out.http = Some(HttpStep {
            route_configuration: table.name.to_string(),
            authority: req.authority.clone(),
            path: req.path_and_query.clone(),
            virtual_host: None,
            virtual_host_domains: Vec::new(),
            routes_not_matched: Vec::new(),
            route: None,
            filters: Vec::new(),
        });
        out.outcome = Outcome::local(
            LocalReply::HTTP10,
            "the connection manager does not accept HTTP/1.0 (accept_http_10 is off): 426".into(),
        );
        return;
    }
    // The connection manager's request handling before routing, as the router does it.
    let mut authority = req.authority.clone();
    if hcm.strip_port != StripPort::None {
        let stripped = crate::proxy::route::table::strip_port(authority.as_bytes());
        if stripped.len() != authority.len() {
            let port = &authority[stripped.len() + 1..];
            if hcm.strip_port == StripPort::Any || port.parse::<u16>().ok() == Some(req.port) {
                authority = String::from_utf8_lossy(stripped).into_owned();
            }
        }
    }
    let (path, query) = req
        .path_and_query
        .split_once('?')
        .map_or((req.path_and_query.as_str(), None), |(p, q)| (p, Some(q)));
    let mut new_path: Option<String> = None;
    if hcm.normalize_path {
        match crate::proxy::http::normalize::normalize(path) {
            Err(_) => {
                out.outcome = Outcome::local(
                    LocalReply::PATH_NORMALIZATION_FAILED,
                    "the path cannot be normalized: 400".into(),
                );
                return;
            }
            Ok(p) => new_path = p,
        }
    }
    if hcm.merge_slashes
        && let Some(p) =
            crate::proxy::http::normalize::merge_slashes(new_path.as_deref().unwrap_or(path))
    {
        new_path = Some(p);
    }
    let pq = match new_path {
        Some(p) => match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        },
        None => req.path_and_query.clone(),
    };
    // The connection manager (use_remote_address) sets x-forwarded-proto from the
    // connection.
    let mut headers = req.headers.clone();
    let xfp = &crate::proxy::http::request::X_FORWARDED_PROTO;
    let trusted = !hcm.use_remote_address || hcm.xff_num_trusted_hops > 0;
    if !(trusted && headers.contains_key(xfp)) {
        headers.insert(
            xfp.clone(),
            http::HeaderValue::from_static(if req.https { "https" } else { "http" }),
        );
    }
    let proto: String = headers
        .get(xfp)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if req.https { "https" } else { "http" })
        .to_string();
    let proto = proto.as_str();
    for name in &table.internal_only_headers {
        headers.remove(name);
    }
    let view = RequestView::new(
        &req.method,
        authority.as_bytes(),
        &pq,
        None,
        req.https,
        &headers,
    );

    let rc_pb = set.routes.iter().find(|r| r.name.as_str() == &*table.name);
    let mut step = HttpStep {
        route_configuration: table.name.to_string(),
        authority: authority.clone(),
        path: pq.clone(),
        virtual_host: None,
        virtual_host_domains: Vec::new(),
        routes_not_matched: Vec::new(),
        route: None,
        filters: Vec::new(),
    };
    let vhost = table.virtual_host(authority.as_bytes());
    let vh_index = vhost.and_then(|v| table.virtual_hosts.iter().position(|x| std::ptr::eq(x, v)));
    let vh_pb = vh_index.and_then(|i| rc_pb.and_then(|rc| rc.virtual_hosts.get(i)));
    if let Some(v) = vhost {
        step.virtual_host = Some(v.name.to_string());
        step.virtual_host_domains = vh_pb.map(|v| v.domains.clone()).unwrap_or_default();
    }
    let tls_redirect = vhost.is_some_and(|v| v.require_tls && proto != "https");
    let mut route: Option<&Route> = None;
    if let Some(v) = vhost.filter(|_| !tls_redirect) {
        for (i, r) in v.routes.iter().enumerate() {
            let config = vh_pb
                .and_then(|v| v.routes.get(i))
                .and_then(|r| istio_config(r.metadata.as_ref()));
            // `random` 0: a runtime fraction above zero takes the request.
            match r.matcher.first_mismatch(&view, 0) {
                None => {
                    step.route = Some(RouteStep {
                        index: i,
                        name: r.name.to_string(),
                        istio_config: config,
                        matches: describe_match(&r.matcher),
                        action: match r.action {
                            Action::Route(_) => "forward",
                            Action::Redirect(_) => "redirect",
                            Action::Direct(_) => "direct_response",
                        },
                        details: route_details(r),
                    });
                    route = Some(r);
                    break;
                }
                Some(m) => step.routes_not_matched.push(RouteSkipped {
                    index: i,
                    name: r.name.to_string(),
                    istio_config: config,
                    reason: mismatch_reason(&r.matcher, m, &view),
                }),
            }
        }
    }

    // The HTTP filters, in order, before the router.
    let input = rbac_input(req, listener, chain.tls.is_some(), Some(view));
    let mut denied: Option<(String, u16, String)> = None;
    for f in &hcm.filters {
        let name = f.name().to_string();
        if denied.is_some() {
            step.filters.push(FilterStep {
                name,
                decision: "not reached".into(),
            });
            continue;
        }
        let decision = match f.explain(&input) {
            Some(e) => {
                if let Some((status, details)) = e.answer {
                    denied = Some((name.clone(), status, details));
                }
                e.summary
            }
            None => filter_note(&name, route),
        };
        step.filters.push(FilterStep { name, decision });
    }
    // As the access log has it: the route's name, empty for an unnamed one.
    let route_name = route.map(|r| r.name.to_string());
    out.http = Some(step);

    if let Some((name, status, details)) = denied {
        out.outcome = Outcome {
            status: Some(status),
            response_code_details: Some(details.clone()),
            route_name,
            body: (status == 403).then(|| "RBAC: access denied".to_string()),
            ..Outcome::new(
                "local_reply",
                format!("filter {name} answers {status} ({details})"),
            )
        };
        return;
    }
    if tls_redirect {
        out.outcome = Outcome {
            status: Some(301),
            location: Some(format!("https://{authority}{pq}")),
            ..Outcome::new(
                "local_reply",
                "the virtual host requires TLS (Istio's httpsRedirect): 301 to https".into(),
            )
        };
        return;
    }
    let Some(route) = route else {
        let why = match vhost {
            None => format!(
                "no virtual host of {} has a domain matching {authority}",
                table.name
            ),
            Some(v) => format!(
                "no route of virtual host {} matches {} {pq}",
                v.name, req.method
            ),
        };
        out.outcome = Outcome::local(LocalReply::NO_ROUTE, format!("{why}: 404 NR"));
        return;
    };
    match &route.action {
        Action::Direct(d) => {
            let url = format!("{proto}://{authority}{pq}");
            out.outcome = Outcome {
                status: Some(d.status.as_u16()),
                route_name,
                body: d
                    .body
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                location: (d.status == http::StatusCode::CREATED || d.status.is_redirection())
                    .then_some(url),
                response_code_details: Some("direct_response".into()),
                ..Outcome::new(
                    "local_reply",
                    format!("the route answers directly with {}", d.status.as_u16()),
                )
            };
        }
        Action::Redirect(r) => {
            let location = redirect_location(r, proto, &authority, &pq, &route.matcher);
            out.outcome = Outcome {
                status: Some(r.status.as_u16()),
                route_name,
                location: Some(location.clone()),
                ..Outcome::new(
                    "local_reply",
                    format!("the route redirects: {} to {location}", r.status.as_u16()),
                )
            };
        }
        Action::Route(ra) => {
            if let Some(u) = headers.get(http::header::UPGRADE) {
                let enabled = match ra.upgrades.iter().find(|ru| {
                    ru.upgrade_type
                        .as_bytes()
                        .eq_ignore_ascii_case(u.as_bytes())
                }) {
                    Some(ru) => ru.enabled,
                    None => hcm
                        .upgrades
                        .iter()
                        .any(|t| t.as_bytes().eq_ignore_ascii_case(u.as_bytes())),
                };
                if !enabled {
                    out.outcome = Outcome {
                        route_name,
                        ..Outcome::local(
                            LocalReply::UPGRADE_FAILED,
                            format!(
                                "upgrade {} is not enabled on this route: 403",
                                u.to_str().unwrap_or("?")
                            ),
                        )
                    };
                    return;
                }
            }
            let targets: Vec<(&ClusterRef, f64)> = match &ra.target {
                ClusterTarget::Single(c) => vec![(c, 1.0)],
                ClusterTarget::Weighted { clusters, total } => clusters
                    .iter()
                    .map(|w| (&w.cluster, f64::from(w.weight) / (*total).max(1) as f64))
                    .collect(),
            };
            for (c, p) in &targets {
                out.clusters
                    .push(cluster_step(&c.name, c.cluster.as_ref(), *p, set));
            }
            let first = targets[0].0;
            let mut outcome = match &first.cluster {
                None => {
                    let mut reply = LocalReply::CLUSTER_NOT_FOUND;
                    reply.status = http::StatusCode::from_u16(ra.cluster_not_found_status)
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
                    Outcome::local(
                        reply,
                        format!(
                            "cluster {} does not exist: {} NC",
                            first.name, ra.cluster_not_found_status
                        ),
                    )
                }
                Some(c) if no_hosts(c) => Outcome::local(
                    LocalReply::NO_HEALTHY_UPSTREAM,
                    format!("cluster {} has no endpoints: 503 UH", first.name),
                ),
                Some(c) => {
                    let hosts: Vec<String> = c
                        .endpoints()
                        .hosts
                        .iter()
                        .map(|h| h.addr.to_string())
                        .collect();
                    let endpoint = match (&c.discovery, hosts.len()) {
                        (Discovery::StrictDns(_) | Discovery::LogicalDns(_), 0) => {
                            "an address DNS resolves at run time".to_string()
                        }
                        (_, 1) => format!("endpoint {}", hosts[0]),
                        _ => format!("one of endpoints {} ({})", hosts.join(", "), lb_name(c.lb)),
                    };
                    Outcome::new(
                        "forwarded",
                        if targets.len() == 1 {
                            format!("forwarded to cluster {} {endpoint}", first.name)
                        } else {
                            format!(
                                "forwarded to cluster {}",
                                split_summary(
                                    &targets
                                        .iter()
                                        .map(|(c, p)| (c.name.clone(), *p))
                                        .collect::<Vec<_>>(),
                                    snap
                                )
                            )
                        },
                    )
                }
            };
            outcome.route_name = route_name;
            outcome.cluster = Some(first.name.to_string());
            out.outcome = outcome;
        }
    }
}

/// Whether a cluster has no host at all (the router's `choose_host` then finds none: UH).
/// DNS clusters resolve at run time: their hosts are not known here.
fn no_hosts(c: &Cluster) -> bool {
    matches!(c.discovery, Discovery::Static | Discovery::Eds) && c.endpoints().hosts.is_empty()
}

fn split_summary(targets: &[(Arc<str>, f64)], snap: &Snapshot) -> String {
    if targets.len() == 1 {
        return targets[0].0.to_string();
    }
    let parts: Vec<String> = targets
        .iter()
        .map(|(n, p)| {
            let missing = match snap.clusters.get(&**n) {
                None => " (missing: NC)",
                Some(c) if no_hosts(c) => " (no endpoints: UH)",
                Some(_) => "",
            };
            format!("{n} with probability {:.1}%{missing}", p * 100.0)
        })
        .collect();
    format!("by weight: {}", parts.join(", "))
}

fn summary(req: &ExplainRequest) -> RequestSummary {
    RequestSummary {
        method: req.method.to_string(),
        url: format!(
            "{}://{}{}",
            if req.https { "https" } else { "http" },
            req.authority,
            req.path_and_query
        ),
        port: req.port,
        sni: req.sni.clone().filter(|_| req.https),
        alpn: req
            .alpn
            .iter()
            .filter(|_| req.https)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        client_certificate: req.client_cert.as_ref().map(|c| {
            c.spiffe_id
                .clone()
                .or_else(|| c.dns_sans.first().cloned())
                .unwrap_or_else(|| c.subject.clone())
        }),
        source_ip: req.source_ip.to_string(),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

fn rbac_input<'a>(
    req: &'a ExplainRequest,
    listener: &Listener,
    tls: bool,
    view: Option<RequestView<'a>>,
) -> crate::proxy::rbac::Input<'a> {
    crate::proxy::rbac::Input {
        direct_remote: req.source_ip,
        remote: req.source_ip,
        local: std::net::SocketAddr::new(listener.addr.ip(), req.port),
        sni: req.sni.as_deref().filter(|_| req.https),
        tls,
        peer: req.client_cert.as_ref().filter(|_| tls),
        request: view,
        metadata: None,
    }
}

fn chain_name(c: &FilterChain, listener: &Listener) -> String {
    if !c.name.is_empty() {
        return c.name.to_string();
    }
    let i = listener
        .chains
        .iter()
        .position(|x| std::ptr::eq(x, c))
        .map(|i| format!("filter_chains[{i}]"))
        .unwrap_or_else(|| "default_filter_chain".into());
    match c.matcher.server_names.first() {
        Some(n) => format!("{i} ({n})"),
        None => i,
    }
}

fn chain_matches(c: &FilterChain) -> String {
    let m = &c.matcher;
    let mut parts = Vec::new();
    if let Some(p) = m.destination_port {
        parts.push(format!("destination port {p}"));
    }
    if !m.server_names.is_empty() {
        parts.push(format!("server names [{}]", m.server_names.join(", ")));
    }
    if let Some(t) = m.transport_protocol {
        parts.push(format!("transport {}", t.name()));
    }
    if !m.application_protocols.is_empty() {
        let a: Vec<String> = m
            .application_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        parts.push(format!("ALPN [{}]", a.join(", ")));
    }
    if parts.is_empty() {
        "any connection".into()
    } else {
        parts.join(", ")
    }
}

/// The SDS secret of the mesh's trust bundle (Istio's ISTIO_MUTUAL validation context).
const ROOTCA: &[u8] = b"ROOTCA";

/// The TLS mode in Istio's words, and whether a client certificate is required.
fn tls_mode(chain: &FilterChain, listener: &Listener, set: &ResourceSet) -> (String, bool) {
    match &chain.tls {
        Some(tls) => {
            let required = tls.client_auth == ClientAuth::Required;
            // Istio's mesh mTLS validates with the SDS secret ROOTCA.
            let mesh = chain_pb(chain, listener, set)
                .and_then(|fc| fc.transport_socket.as_ref())
                .and_then(|ts| ts.config_type.as_ref())
                .map(|ConfigType::TypedConfig(any)| &any.value)
                .is_some_and(|tls| {
                    // The SDS name is a string field of the encoded context.
                    tls.windows(ROOTCA.len()).any(|w| w == ROOTCA)
                });
            let mode = match (tls.client_auth, mesh) {
                (ClientAuth::None, _) => "SIMPLE",
                (ClientAuth::Optional, _) => "OPTIONAL_MUTUAL",
                (ClientAuth::Required, true) => "ISTIO_MUTUAL",
                (ClientAuth::Required, false) => "MUTUAL",
            };
            (mode.into(), required)
        }
        None => match (&chain.action, chain.matcher.transport_protocol) {
            (ChainAction::Tcp(_), Some(TransportProtocol::Tls)) | (ChainAction::Tcp(_), None)
                if !chain.matcher.server_names.is_empty() =>
            {
                let auto = chain
                    .matcher
                    .server_names
                    .iter()
                    .all(|n| n.starts_with("outbound_."));
                (
                    if auto {
                        "AUTO_PASSTHROUGH"
                    } else {
                        "PASSTHROUGH"
                    }
                    .into(),
                    false,
                )
            }
            _ => ("none (plain text)".into(), false),
        },
    }
}

/// The listener resource's filter chain a compiled chain came from (same order).
fn chain_pb<'s>(
    chain: &FilterChain,
    listener: &Listener,
    set: &'s ResourceSet,
) -> Option<&'s crate::xds::pb::envoy::config::listener::v3::FilterChain> {
    let l = set.listeners.iter().find(|l| l.name == *listener.name)?;
    if listener
        .default_chain
        .as_ref()
        .is_some_and(|d| std::ptr::eq(d, chain))
    {
        return l.default_filter_chain.as_ref();
    }
    let i = listener
        .chains
        .iter()
        .position(|x| std::ptr::eq(x, chain))?;
    l.filter_chains.get(i)
}

/// Istio's gateway route names: `https.PORT.SERVER.GATEWAY.NAMESPACE` for an HTTPS
/// server, `http.PORT` for every plain HTTP server of a port.
fn gateway_server(route_config: &str) -> Option<String> {
    let parts: Vec<&str> = route_config.split('.').collect();
    match parts.as_slice() {
        ["https", port, server, gateway, ns] => Some(format!(
            "Gateway {ns}/{gateway}, server {server} (port {port}, HTTPS)"
        )),
        ["http", port] => Some(format!("the HTTP servers on port {port}")),
        _ => None,
    }
}

/// `filter_metadata.istio.config` of a resource.
fn istio_config(m: Option<&Metadata>) -> Option<String> {
    use crate::xds::pb::google::protobuf::value::Kind;
    let v = m?.filter_metadata.get("istio")?.fields.get("config")?;
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn string_match(m: &StringMatch) -> String {
    let ic = |b: &bool| if *b { " (any case)" } else { "" };
    match m {
        StringMatch::Exact(s, i) => format!("exact {s}{}", ic(i)),
        StringMatch::Prefix(s, i) => format!("prefix {s}{}", ic(i)),
        StringMatch::Suffix(s, i) => format!("suffix {s}{}", ic(i)),
        StringMatch::Contains(s, i) => format!("contains {s}{}", ic(i)),
        StringMatch::Regex(r) => format!("regex {}", regex_source(r)),
    }
}

/// A compiled full-match regex shown as configured (without the `^(?:...)$` anchor).
fn regex_source(r: &regex::Regex) -> &str {
    r.as_str()
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(r.as_str())
}

fn path_match(m: &RouteMatch) -> String {
    let ic = if m.case_sensitive { "" } else { " (any case)" };
    match &m.path {
        PathMatch::Prefix(p) => format!("uri prefix {p}{ic}"),
        PathMatch::Exact(p) => format!("uri exact {p}{ic}"),
        PathMatch::Separated(p) => format!("uri path-separated prefix {p}{ic}"),
        PathMatch::Regex(r) => format!("uri regex {}", regex_source(r)),
    }
}

fn header_name(h: &HeaderMatch) -> String {
    match &h.key {
        HeaderKey::Name(n) => n.to_string(),
        HeaderKey::Method => ":method".into(),
        HeaderKey::Authority => ":authority".into(),
        HeaderKey::Path => ":path".into(),
        HeaderKey::Scheme => ":scheme".into(),
        HeaderKey::Absent => "(a header no request carries)".into(),
    }
}

fn header_match(h: &HeaderMatch) -> String {
    let what = match &h.kind {
        HeaderMatchKind::String(s) => string_match(s),
        HeaderMatchKind::AnyValue => "any value".into(),
        HeaderMatchKind::Present(true) => "present".into(),
        HeaderMatchKind::Present(false) => "absent".into(),
        HeaderMatchKind::Range(a, b) => format!("in range [{a}, {b})"),
    };
    format!(
        "header {}: {}{what}",
        header_name(h),
        if h.invert { "not " } else { "" }
    )
}

fn query_match(q: &QueryMatch) -> String {
    match &q.value {
        None => format!("query parameter {} present", q.name),
        Some(v) => format!("query parameter {}: {}", q.name, string_match(v)),
    }
}

fn describe_match(m: &RouteMatch) -> String {
    let mut parts = vec![path_match(m)];
    if let Some(f) = m.fraction_per_million {
        parts.push(format!("{:.4}% of requests", f as f64 / 10_000.0));
    }
    parts.extend(m.headers.iter().map(header_match));
    parts.extend(m.query.iter().map(query_match));
    parts.join(", ")
}

/// The reason in words: the condition and what the request has instead.
fn mismatch_reason(m: &RouteMatch, why: Mismatch, req: &RequestView<'_>) -> String {
    match why {
        Mismatch::Path => format!("{} does not match {}", path_match(m), req.path),
        Mismatch::Fraction => "outside the route's runtime fraction".into(),
        Mismatch::Header(i) => {
            let h = &m.headers[i];
            let has = match &h.key {
                HeaderKey::Name(n) => {
                    let values: Vec<String> = req
                        .headers
                        .get_all(n)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    if values.is_empty() {
                        "request has none".to_string()
                    } else {
                        format!("request has {}", values.join(", "))
                    }
                }
                HeaderKey::Absent => "request has none".into(),
                k => req
                    .pseudo(k)
                    .map(|v| format!("request has {}", String::from_utf8_lossy(&v)))
                    .unwrap_or_else(|| "request has none".into()),
            };
            format!("{}, {has}", header_match(h))
        }
        Mismatch::Query(i) => {
            let q = &m.query[i];
            let has = req
                .query
                .split('&')
                .find_map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k == &*q.name).then(|| format!("request has {v}"))
                })
                .unwrap_or_else(|| "request has none".into());
            format!("{}, {has}", query_match(q))
        }
    }
}

/// What a forwarding route does besides choosing the cluster.
fn route_details(r: &Route) -> Vec<String> {
    let mut d = Vec::new();
    if let Action::Route(ra) = &r.action {
        if let Some(p) = &ra.prefix_rewrite {
            d.push(format!("rewrite: the matched prefix becomes {p}"));
        }
        if let Some((re, sub)) = &ra.regex_rewrite {
            d.push(format!("rewrite: regex {} -> {sub}", re.as_str()));
        }
        match &ra.host_rewrite {
            HostRewrite::None => {}
            HostRewrite::Literal(v) => d.push(format!(
                "authority rewritten to {}",
                v.to_str().unwrap_or("?")
            )),
            HostRewrite::Auto => d.push("authority rewritten to the endpoint's host".into()),
            HostRewrite::Header(h) => d.push(format!("authority taken from header {h}")),
            HostRewrite::PathRegex(re, s) => {
                d.push(format!("authority from the path: {} -> {s}", re.as_str()))
            }
        }
        match ra.timeout {
            Some(t) => d.push(format!("timeout {}", humantime(t))),
            None => d.push("no timeout".into()),
        }
        if let Some(rp) = &ra.retry {
            d.push(format!(
                "retries: {} on {}{}",
                rp.num_retries,
                retry_on(rp.on),
                rp.per_try_timeout
                    .map(|t| format!(", {} per try", humantime(t)))
                    .unwrap_or_default()
            ));
        }
        for m in &ra.mirrors {
            d.push(format!(
                "mirrored to {} ({:.1}% of requests)",
                m.cluster.name,
                m.per_million as f64 / 10_000.0
            ));
        }
        if !ra.hash_policy.is_empty() {
            d.push(format!(
                "consistent hash on {} value(s) of the request",
                ra.hash_policy.len()
            ));
        }
    }
    if !r.request_headers.is_empty() {
        d.push(format!(
            "request headers: {}",
            header_ops(&r.request_headers)
        ));
    }
    if !r.response_headers.is_empty() {
        d.push(format!(
            "response headers: {}",
            header_ops(&r.response_headers)
        ));
    }
    if let Some(f) = &r.fault {
        d.push(format!("fault injection: {}", fault_summary(f)));
    }
    if r.cors.is_some() {
        d.push("CORS policy (preflights answered by the gateway)".into());
    }
    if !r.rate_limits.is_empty() {
        d.push("rate limits (descriptors sent to the rate-limit service)".into());
    }
    d
}

/// Header changes as Istio's `headers.{request,response}` name them (`set`, `add`,
/// `remove`).
fn header_ops(m: &crate::proxy::route::HeaderMutations) -> String {
    use crate::proxy::route::headers::AppendAction as A;
    let mut ops: Vec<String> = m.remove.iter().map(|n| format!("remove {n}")).collect();
    for a in &m.add {
        let verb = match a.action {
            A::AppendIfExistsOrAdd => "add",
            A::AddIfAbsent => "add if absent",
            A::OverwriteIfExistsOrAdd => "set",
            A::OverwriteIfExists => "overwrite if present",
        };
        ops.push(format!(
            "{verb} {}: {}",
            a.name,
            String::from_utf8_lossy(a.value.as_bytes())
        ));
    }
    ops.join(", ")
}

/// An RBAC policy id in Istio's words: `ns[NS]-policy[NAME]-rule[N]` is rule N of
/// AuthorizationPolicy NS/NAME.
pub fn authorization_policy(id: &str) -> Option<String> {
    let rest = id.strip_prefix("ns[")?;
    let (ns, rest) = rest.split_once("]-policy[")?;
    let (name, rest) = rest.split_once("]-rule[")?;
    let rule = rest.strip_suffix(']')?;
    Some(format!("AuthorizationPolicy {ns}/{name}, rule {rule}"))
}

fn fault_summary(f: &crate::proxy::http::filters::fault::Fault) -> String {
    use crate::proxy::http::filters::fault::FaultAbort;
    let pct = |per_million: u32| per_million as f64 / 10_000.0;
    let mut parts = Vec::new();
    if let Some((d, p)) = f.delay {
        parts.push(format!(
            "delay {} for {}% of requests",
            humantime(d),
            pct(p)
        ));
    }
    if let Some((a, p)) = f.abort {
        let what = match a {
            FaultAbort::Http(s) => format!("HTTP {s} (flag FI)"),
            FaultAbort::Grpc(s) => format!("gRPC status {s} (flag FI)"),
        };
        parts.push(format!("abort with {what} for {}% of requests", pct(p)));
    }
    if !f.headers.is_empty() {
        parts.push(format!("when {} header condition(s) hold", f.headers.len()));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn retry_on(on: crate::proxy::route::action::RetryOn) -> String {
    use crate::proxy::route::action::RetryOn as R;
    let names = [
        (R::FIVE_XX, "5xx"),
        (R::GATEWAY_ERROR, "gateway-error"),
        (R::CONNECT_FAILURE, "connect-failure"),
        (R::RESET, "reset"),
        (R::RETRIABLE_4XX, "retriable-4xx"),
        (R::RETRIABLE_STATUS_CODES, "retriable-status-codes"),
        (R::REFUSED_STREAM, "refused-stream"),
        (R::RESET_BEFORE_REQUEST, "reset-before-request"),
        (R::GRPC_CANCELLED, "cancelled"),
        (R::GRPC_DEADLINE_EXCEEDED, "deadline-exceeded"),
        (R::GRPC_RESOURCE_EXHAUSTED, "resource-exhausted"),
        (R::GRPC_UNAVAILABLE, "unavailable"),
        (R::GRPC_INTERNAL, "internal"),
        (R::ENVOY_RATELIMITED, "envoy-ratelimited"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| on.has(*b))
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(",")
    }
}

fn humantime(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What is known of a filter that cannot decide here.
fn filter_note(name: &str, route: Option<&Route>) -> String {
    let short = name.rsplit('.').next().unwrap_or(name);
    match short {
        "fault" => match route.and_then(|r| r.fault.as_ref()) {
            Some(_) => "the route injects faults (see the route)".into(),
            None => "no fault on this route".into(),
        },
        "cors" => match route.and_then(|r| r.cors.as_ref()) {
            Some(_) => "the route has a CORS policy".into(),
            None => "no CORS policy on this route".into(),
        },
        "local_ratelimit" | "ratelimit" => {
            "rate limited: a request over the limit gets 429 RL (not predicted: depends on traffic)"
                .into()
        }
        "ext_authz" => "asks the external authorizer (not predicted here)".into(),
        _ => "not evaluated here".into(),
    }
}

fn lb_name(lb: LbPolicy) -> &'static str {
    match lb {
        LbPolicy::RoundRobin => "ROUND_ROBIN",
        LbPolicy::LeastRequest { .. } => "LEAST_REQUEST",
        LbPolicy::Random => "RANDOM",
        LbPolicy::RingHash { .. } => "RING_HASH",
        LbPolicy::Maglev { .. } => "MAGLEV",
    }
}

fn cluster_step(name: &str, c: Option<&Arc<Cluster>>, p: f64, set: &ResourceSet) -> ClusterStep {
    let pb = set.clusters.iter().find(|x| x.name == name);
    let parts: Vec<&str> = name.split('|').collect();
    let (service, subset) = match parts.as_slice() {
        [_, _, subset, host] => (
            Some(host.to_string()),
            (!subset.is_empty()).then(|| subset.to_string()),
        ),
        _ => (None, None),
    };
    let mut step = ClusterStep {
        name: name.to_string(),
        probability: p,
        istio_config: pb.and_then(|c| istio_config(c.metadata.as_ref())),
        service,
        subset,
        exists: c.is_some(),
        discovery: String::new(),
        lb_policy: String::new(),
        tls_origination: None,
        endpoints: Vec::new(),
    };
    let Some(c) = c else {
        return step;
    };
    step.discovery = match &c.discovery {
        Discovery::Static => "STATIC".into(),
        Discovery::Eds => "EDS".into(),
        Discovery::StrictDns(d) | Discovery::LogicalDns(d) => format!(
            "DNS ({})",
            d.targets
                .iter()
                .map(|t| format!("{}:{}", t.hostname, t.port))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    step.lb_policy = lb_name(c.lb).into();
    step.tls_origination = c.transport.fallback.as_ref().map(|t| {
        if t.auto_sni {
            "TLS, SNI from the request's host".to_string()
        } else {
            match &t.h1.sni {
                Some(s) => format!("TLS, SNI {}", s.to_str()),
                None => "TLS".to_string(),
            }
        }
    });
    let cla = set.endpoints.iter().find(|e| e.cluster_name == name);
    let set_now = c.endpoints();
    for (pi, prio) in set_now.priorities.iter().enumerate() {
        for loc in &prio.localities {
            for h in &loc.hosts {
                step.endpoints.push(EndpointStep {
                    address: h.addr.to_string(),
                    healthy: h.healthy(),
                    health_flags: None,
                    weight: h.weight,
                    priority: pi,
                    // `region/zone/sub_zone`; nothing when all three are empty.
                    locality: if loc.name.chars().all(|c| c == '/') {
                        String::new()
                    } else {
                        loc.name.to_string()
                    },
                    labels: cla.map(|e| endpoint_labels(e, h.addr)).unwrap_or_default(),
                });
            }
        }
    }
    step
}

/// The labels of an endpoint: `filter_metadata.istio.labels` as meshgate's translator
/// writes them, else the subset labels Envoy matches (`envoy.lb`).
fn endpoint_labels(
    cla: &crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    addr: std::net::SocketAddr,
) -> Vec<(String, String)> {
    use crate::xds::pb::envoy::config::core::v3::address::Address as A;
    use crate::xds::pb::envoy::config::core::v3::socket_address::PortSpecifier as P;
    use crate::xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier as H;
    use crate::xds::pb::google::protobuf::value::Kind;
    for loc in &cla.endpoints {
        for e in &loc.lb_endpoints {
            let Some(H::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            let Some(A::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let port = match sa.port_specifier {
                Some(P::PortValue(p)) => p,
                _ => 0,
            };
            let same = sa.address.parse::<IpAddr>().ok() == Some(addr.ip())
                && port == u32::from(addr.port());
            if !same {
                continue;
            }
            let meta = e.metadata.as_ref();
            let istio_labels = meta
                .and_then(|m| m.filter_metadata.get("istio"))
                .and_then(|s| s.fields.get("labels"))
                .and_then(|v| match &v.kind {
                    Some(Kind::StructValue(s)) => Some(s),
                    _ => None,
                });
            let Some(labels) =
                istio_labels.or_else(|| meta.and_then(|m| m.filter_metadata.get("envoy.lb")))
            else {
                return Vec::new();
            };
            let mut labels: Vec<(String, String)> = labels
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            labels.sort();
            return labels;
        }
    }
    Vec::new()
}

impl Explanation {
    /// Takes a running proxy's view of its endpoints (`/clusters` text: lines
    /// `CLUSTER::ADDRESS::health_flags::FLAGS` and `CLUSTER::ADDRESS::weight::N`): the
    /// health flags of known endpoints, and the hosts of DNS clusters, which only the
    /// running proxy has resolved.
    pub fn add_live_endpoints(&mut self, clusters_text: &str) {
        for c in &mut self.clusters {
            let prefix = format!("{}::", c.name);
            for line in clusters_text.lines() {
                let Some(rest) = line.strip_prefix(&prefix) else {
                    continue;
                };
                let mut parts = rest.splitn(3, "::");
                let (Some(addr), Some("health_flags"), Some(flags)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                match c.endpoints.iter_mut().find(|e| e.address == addr) {
                    Some(e) => {
                        e.healthy = flags == "healthy";
                        e.health_flags = Some(flags.to_string());
                    }
                    None if c.discovery.starts_with("DNS") => {
                        let weight = clusters_text
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix(&prefix)?
                                    .strip_prefix(addr)?
                                    .strip_prefix("::weight::")?
                                    .parse()
                                    .ok()
                            })
                            .unwrap_or(1);
                        c.endpoints.push(EndpointStep {
                            address: addr.to_string(),
                            healthy: flags == "healthy",
                            health_flags: Some(flags.to_string()),
                            weight,
                            priority: 0,
                            locality: String::new(),
                            labels: Vec::new(),
                        });
                    }
                    None => {}
                }
            }
        }
    }

    /// The explanation for people: one section per step.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let r = &self.request;
        let _ = writeln!(s, "request   {} {} (port {})", r.method, r.url, r.port);
        for (k, v) in &r.headers {
            let _ = writeln!(s, "          {k}: {v}");
        }
        if let Some(sni) = &r.sni {
            let _ = writeln!(s, "          SNI {sni}, ALPN [{}]", r.alpn.join(", "));
        }
        if let Some(c) = &r.client_certificate {
            let _ = writeln!(s, "          client certificate {c}");
        }
        if let Some(l) = &self.listener {
            let _ = writeln!(s, "listener  {} ({})", l.name, l.address);
        }
        if let Some(c) = &self.filter_chain {
            let _ = writeln!(
                s,
                "chain     {}{}: {} -> {}",
                c.name,
                if c.default_chain { " (default)" } else { "" },
                c.matches,
                c.kind
            );
            let _ = writeln!(
                s,
                "          TLS {}{}",
                c.tls_mode,
                if c.client_certificate_required {
                    ", client certificate required"
                } else {
                    ""
                }
            );
            if let Some(g) = &c.gateway_server {
                let _ = writeln!(s, "          from {g}");
            }
        }
        for x in &self.chains_not_matched {
            let _ = writeln!(s, "  not     {}: {}", x.name, x.reason);
        }
        if let Some(h) = &self.http {
            let _ = writeln!(
                s,
                "routes    {} (authority {})",
                h.route_configuration, h.authority
            );
            match &h.virtual_host {
                Some(v) => {
                    let _ = writeln!(s, "vhost     {v} [{}]", h.virtual_host_domains.join(", "));
                }
                None => {
                    let _ = writeln!(s, "vhost     none matches {}", h.authority);
                }
            }
            for x in &h.routes_not_matched {
                let _ = writeln!(
                    s,
                    "  no      #{} {}{}: {}",
                    x.index,
                    if x.name.is_empty() {
                        "(unnamed)"
                    } else {
                        &x.name
                    },
                    x.istio_config
                        .as_deref()
                        .map(|c| format!(" [{}]", short_config(c)))
                        .unwrap_or_default(),
                    x.reason
                );
            }
            if let Some(rt) = &h.route {
                let _ = writeln!(
                    s,
                    "route     #{} {}{}: {} -> {}",
                    rt.index,
                    if rt.name.is_empty() {
                        "(unnamed)"
                    } else {
                        &rt.name
                    },
                    rt.istio_config
                        .as_deref()
                        .map(|c| format!(" [{}]", short_config(c)))
                        .unwrap_or_default(),
                    rt.matches,
                    rt.action
                );
                for d in &rt.details {
                    let _ = writeln!(s, "          {d}");
                }
            }
            for f in &h.filters {
                let _ = writeln!(s, "filter    {}: {}", f.name, f.decision);
            }
        }
        if let Some(t) = &self.tcp {
            let _ = writeln!(s, "tcp       {}", t.stat_prefix);
            for n in &t.network_rbac {
                let _ = writeln!(s, "          RBAC {n}");
            }
        }
        for c in &self.clusters {
            let _ = writeln!(
                s,
                "cluster   {} ({:.1}%){}",
                c.name,
                c.probability * 100.0,
                if c.exists { "" } else { " MISSING" }
            );
            if let Some(svc) = &c.service {
                let _ = writeln!(
                    s,
                    "          service {svc}{}",
                    c.subset
                        .as_deref()
                        .map(|x| format!(", subset {x}"))
                        .unwrap_or_default()
                );
            }
            if let Some(cfg) = &c.istio_config {
                let _ = writeln!(s, "          from {}", short_config(cfg));
            }
            if c.exists {
                let _ = writeln!(s, "          {}, {}", c.discovery, c.lb_policy);
            }
            if let Some(t) = &c.tls_origination {
                let _ = writeln!(s, "          origination: {t}");
            }
            for e in &c.endpoints {
                let labels: Vec<String> =
                    e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(
                    s,
                    "  endpoint {} {} weight {}{}{}",
                    e.address,
                    e.health_flags.as_deref().unwrap_or(if e.healthy {
                        "healthy"
                    } else {
                        "UNHEALTHY"
                    }),
                    e.weight,
                    if e.locality.is_empty() {
                        String::new()
                    } else {
                        format!(" locality {}", e.locality)
                    },
                    if labels.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", labels.join(", "))
                    }
                );
            }
        }
        let o = &self.outcome;
        let mut answer = match o.status {
            Some(st) => format!("{st} {}", o.response_flags),
            None => o.kind.to_string(),
        };
        if let Some(l) = &o.location {
            answer.push_str(&format!(", location {l}"));
        }
        let _ = writeln!(s, "answer    {answer}");
        let _ = writeln!(s, "          {}", o.summary);
        s
    }
}

/// `/apis/networking.istio.io/v1/namespaces/NS/KIND/NAME` -> `KIND NS/NAME`.
fn short_config(c: &str) -> String {
    let parts: Vec<&str> = c.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [_, _, _, "namespaces", ns, kind, name] => format!("{kind} {ns}/{name}"),
        _ => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_back_to_istio() {
        assert_eq!(
            gateway_server("https.443.https-shop.tls.default").as_deref(),
            Some("Gateway default/tls, server https-shop (port 443, HTTPS)")
        );
        assert_eq!(
            gateway_server("http.8080").as_deref(),
            Some("the HTTP servers on port 8080")
        );
        assert_eq!(gateway_server("custom"), None);
        assert_eq!(
            authorization_policy("ns[istio-system]-policy[no-admin]-rule[0]").as_deref(),
            Some("AuthorizationPolicy istio-system/no-admin, rule 0")
        );
        assert_eq!(authorization_policy("custom-policy"), None);
        assert_eq!(
            short_config(
                "/apis/networking.istio.io/v1/namespaces/bookinfo/virtual-service/bookinfo"
            ),
            "virtual-service bookinfo/bookinfo"
        );
    }
}
