//! External authorization (`envoy.filters.http.ext_authz`): an HTTP and a gRPC
//! authorization server run in the test; meshgate and real Envoy 1.40 serve the same
//! hand-written resources (ext_authz before the router, clusters to the servers), and
//! every request gets the same answer from both: status, headers to the client and to
//! the upstream, the local answer's body, what the authorizer was asked; and the same
//! failure handling (`failure_mode_allow`, `status_on_error`) when the server is down.
mod support;

#[path = "support/tls.rs"]
mod tls_support;

use support::certs::TestCa;
use tls_support::curl;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::service::auth::v3 as auth_pb;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::gateway::*;
use support::*;

/// What an authorization server was asked, reduced to what both proxies must agree on.
type Seen = Arc<Mutex<Vec<Value>>>;

/// The decision the test servers make from the request's `x-ext-authz` header:
/// `allow`, `error` (a 5xx / a failed call), `slow` (answers after 3 s), `unauthorized`
/// (401 with `www-authenticate`), anything else denied with 403.
fn decision(v: Option<&str>) -> &str {
    v.unwrap_or("deny")
}

/// An HTTP authorization server in the style of Istio's sample `ext-authz`.
struct HttpAuthz {
    port: u16,
    seen: Seen,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl HttpAuthz {
    fn start() -> HttpAuthz {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let s = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let seen = s.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    http_authz(req, seen.clone())
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                            });
                        }
                    }
                }
            });
        });
        HttpAuthz {
            port,
            seen,
            _shutdown: tx,
        }
    }
}

async fn http_authz(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Seen,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.insert(k.as_str().to_string(), v.to_str().unwrap_or("").to_string());
    }
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let d = decision(headers.get("x-ext-authz").map(String::as_str)).to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(json!({
        "method": method, "path": path, "headers": headers, "body_len": body.len(),
    }));
    let mut b = hyper::Response::builder();
    let (status, text) = match d.as_str() {
        "allow" => {
            b = b
                .header("x-authz-upstream", "from-authz")
                .header("x-ext-authz-check-result", "allowed")
                .header("x-authz-client", "client-ok")
                .header("x-ext-authz-append", "from-authz")
                .header("x-authz-not-listed", "nope")
                .header("x-envoy-auth-headers-to-remove", "x-remove-by-authz");
            (200, "")
        }
        "error" => (500, "authz broke"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (200, "")
        }
        "unauthorized" => {
            b = b
                .header("www-authenticate", "Bearer realm=\"test\"")
                .header("x-authz-deny-reason", "no token")
                .header("x-authz-not-listed", "nope");
            (401, "token required")
        }
        _ => {
            b = b
                .header("x-ext-authz-check-result", "denied")
                .header("x-authz-deny-reason", "header x-ext-authz is not allow")
                .header("x-authz-not-listed", "nope")
                .header("content-type", "application/json");
            (403, "{\"denied\":true}")
        }
    };
    Ok(b.status(status)
        .body(http_body_util::Full::new(bytes::Bytes::from(text)))
        .unwrap())
}

/// A gRPC `envoy.service.auth.v3.Authorization` server.
struct GrpcAuthz {
    port: u16,
    seen: Seen,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct GrpcAuthzService(Seen);

fn hvo(key: &str, value: &str, append: Option<bool>) -> core_pb::HeaderValueOption {
    #[allow(deprecated)]
    core_pb::HeaderValueOption {
        header: Some(core_pb::HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl auth_pb::authorization_server::Authorization for GrpcAuthzService {
    async fn check(
        &self,
        request: tonic::Request<auth_pb::CheckRequest>,
    ) -> Result<tonic::Response<auth_pb::CheckResponse>, tonic::Status> {
        use auth_pb::check_response::HttpResponse;
        let check = request.into_inner();
        let attrs = check.attributes.clone().unwrap_or_default();
        let http = attrs
            .request
            .clone()
            .and_then(|r| r.http)
            .unwrap_or_default();
        let addr = |p: &Option<auth_pb::attribute_context::Peer>| -> Value {
            let a = p.as_ref().and_then(|p| p.address.as_ref());
            match a.and_then(|a| a.address.as_ref()) {
                Some(core_pb::address::Address::SocketAddress(s)) => json!({
                    "ip": s.address,
                    "port": match s.port_specifier {
                        Some(core_pb::socket_address::PortSpecifier::PortValue(p)) => p,
                        _ => 0,
                    },
                }),
                _ => Value::Null,
            }
        };
        let headers: BTreeMap<String, String> = http.headers.clone().into_iter().collect();
        let ctx: BTreeMap<String, String> = attrs.context_extensions.clone().into_iter().collect();
        self.0.lock().unwrap().push(json!({
            "method": http.method, "path": http.path, "host": http.host, "scheme": http.scheme,
            "protocol": http.protocol, "headers": headers, "context_extensions": ctx,
            "source": addr(&attrs.source), "destination": addr(&attrs.destination),
            "source_principal": attrs.source.as_ref().map(|p| p.principal.clone()),
            "source_certificate": attrs.source.as_ref().map(|p| p.certificate.clone()),
            "destination_principal": attrs.destination.as_ref().map(|p| p.principal.clone()),
            "sni": attrs.tls_session.as_ref().map(|t| t.sni.clone()),
            "has_time": attrs.request.as_ref().is_some_and(|r| r.time.is_some()),
            "id_set": !http.id.is_empty(),
        }));
        let status = |code: i32| {
            Some(envoy_types::pb::google::rpc::Status {
                code,
                ..Default::default()
            })
        };
        let resp = match decision(headers.get("x-ext-authz").map(String::as_str)) {
            "allow" => auth_pb::CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(auth_pb::OkHttpResponse {
                    headers: vec![
                        hvo("x-authz-upstream", "from-grpc", None),
                        hvo("x-appended", "grpc", Some(true)),
                        hvo("x-overwritten", "grpc", Some(false)),
                    ],
                    headers_to_remove: vec!["x-remove-by-authz".into()],
                    response_headers_to_add: vec![
                        hvo("x-authz-client", "grpc-ok", None),
                        hvo("x-authz-client-appended", "grpc-ok", Some(true)),
                    ],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "error" => return Err(tonic::Status::unavailable("authz broke")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                auth_pb::CheckResponse {
                    status: status(0),
                    ..Default::default()
                }
            }
            "unauthorized" => auth_pb::CheckResponse {
                status: status(16),
                http_response: Some(HttpResponse::DeniedResponse(auth_pb::DeniedHttpResponse {
                    status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                    headers: vec![
                        hvo("www-authenticate", "Bearer realm=\"grpc\"", None),
                        hvo("x-authz-deny-reason", "no token", Some(false)),
                        hvo("x-authz-deny-added", "one", Some(true)),
                        hvo("content-type", "charset=utf-8", Some(true)),
                    ],
                    body: "token required".into(),
                })),
                ..Default::default()
            },
            _ => auth_pb::CheckResponse {
                status: status(7),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(resp))
    }
}

impl GrpcAuthz {
    fn start() -> GrpcAuthz {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = GrpcAuthzService(seen.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(auth_pb::authorization_server::AuthorizationServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        wait_for_port(port, Duration::from_secs(5));
        GrpcAuthz {
            port,
            seen,
            _shutdown: tx,
        }
    }
}

const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

fn ext_authz(config: Value) -> Value {
    let mut c = config;
    c["@type"] = json!(EXT_AUTHZ);
    c["transport_api_version"] = json!("V3");
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": c})
}

fn http_service(cluster: &str, extra: Value) -> Value {
    let mut s = json!({
        "server_uri": {"uri": "http://authz.test", "cluster": cluster, "timeout": "0.5s"},
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

/// The listeners of the comparison: each an ext_authz configuration in front of the
/// echo upstream.
struct Ports {
    http: u16,
    grpc: u16,
    open: u16,
    closed: u16,
    grpc_down: u16,
    /// A listener whose only virtual host is `only.example.com`.
    no_route: u16,
}

fn resources(p: &Ports, echo: u16, http_authz: u16, grpc_authz: u16, dead: u16) -> Value {
    // One route configuration for every listener (filesystem RDS serves one).
    let routes = json!({"name": "main", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/public"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, "disabled": true}}},
        {"match": {"prefix": "/ctx"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE,
            "check_settings": {"context_extensions": {"route": "ctx", "tier": "gold"}}}}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "echo"}},
    ]}]});
    let http_filter = ext_authz(json!({
        "http_service": http_service("authz-http", json!({
            "path_prefix": "/check",
            "authorization_request": {"headers_to_add": [{"key": "x-added-by-proxy", "value": "gw"}]},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"exact": "x-authz-upstream"}, {"prefix": "x-ext-authz-check"}]},
                "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-ext-authz-append"}]},
                "allowed_client_headers": {"patterns": [{"exact": "x-authz-deny-reason"}, {"exact": "x-ext-authz-check-result"}]},
                "allowed_client_headers_on_success": {"patterns": [{"exact": "x-authz-client"}]},
            },
        })),
        "allowed_headers": {"patterns": [{"exact": "x-ext-authz"}, {"prefix": "x-allowed-"}]},
    }));
    let grpc_filter = |cluster: &str| {
        ext_authz(json!({
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "0.5s"},
            "disallowed_headers": {"patterns": [{"exact": "x-secret"}]},
        }))
    };
    let open_filter = ext_authz(json!({
        "http_service": http_service("dead", json!({})),
        "failure_mode_allow": true,
        "failure_mode_allow_header_add": true,
    }));
    let closed_filter = ext_authz(json!({
        "http_service": http_service("dead", json!({})),
        "status_on_error": {"code": 503},
    }));
    let h2 = json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}});
    let hcm = json!({"use_remote_address": true, "server_name": "istio-envoy"});
    json!({
        "listeners": [
            hcm_listener("http", p.http, "main", hcm.clone(), vec![http_filter]),
            hcm_listener("grpc", p.grpc, "main", hcm.clone(), vec![grpc_filter("authz-grpc")]),
            hcm_listener("open", p.open, "main", hcm.clone(), vec![open_filter]),
            hcm_listener("closed", p.closed, "main", hcm.clone(), vec![closed_filter]),
            hcm_listener("grpc-down", p.grpc_down, "main", hcm.clone(), vec![grpc_filter("dead-grpc")]),
            no_route_listener(p.no_route, hcm, grpc_filter("authz-grpc")),
        ],
        "routes": [routes],
        "clusters": [
            static_cluster("echo", &[echo], json!({})),
            static_cluster("authz-http", &[http_authz], json!({})),
            static_cluster("authz-grpc", &[grpc_authz], h2.clone()),
            static_cluster("dead", &[dead], json!({})),
            static_cluster("dead-grpc", &[dead], h2),
        ],
    })
}

/// A listener with an inline route configuration that routes only `only.example.com`.
fn no_route_listener(port: u16, hcm: Value, filter: Value) -> Value {
    let mut l = hcm_listener("no-route", port, "unused", hcm, vec![filter]);
    let h = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    h.as_object_mut().unwrap().remove("rds");
    h["route_config"] = json!({"name": "inline", "virtual_hosts": [{"name": "only",
        "domains": ["only.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]});
    l
}

/// One request of the corpus, to the listener `which` names.
struct Case {
    name: &'static str,
    listener: &'static str,
    request: String,
}

fn req(
    name: &'static str,
    listener: &'static str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Case {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        r.push_str("Content-Length: 5\r\n\r\nhello");
    } else {
        r.push_str("\r\n");
    }
    Case {
        name,
        listener,
        request: r,
    }
}

fn corpus() -> Vec<Case> {
    let allow = ("x-ext-authz", "allow");
    vec![
        req(
            "http allow",
            "http",
            "GET",
            "/items?x=1",
            &[
                allow,
                ("x-remove-by-authz", "1"),
                ("x-authz-upstream", "client"),
                ("x-allowed-extra", "e"),
                ("x-not-sent", "n"),
                ("authorization", "Bearer t"),
            ],
        ),
        req("http allow post", "http", "POST", "/items", &[allow]),
        req(
            "http deny",
            "http",
            "GET",
            "/items",
            &[("x-ext-authz", "nope")],
        ),
        req("http deny without header", "http", "GET", "/", &[]),
        req(
            "http unauthorized",
            "http",
            "GET",
            "/login",
            &[("x-ext-authz", "unauthorized")],
        ),
        req(
            "http authz 5xx",
            "http",
            "GET",
            "/",
            &[("x-ext-authz", "error")],
        ),
        req(
            "http authz timeout",
            "http",
            "GET",
            "/",
            &[("x-ext-authz", "slow")],
        ),
        req(
            "http disabled route",
            "http",
            "GET",
            "/public/x",
            &[("x-ext-authz", "nope")],
        ),
        req(
            "http direct response checked",
            "http",
            "GET",
            "/direct",
            &[("x-ext-authz", "nope")],
        ),
        req(
            "grpc allow",
            "grpc",
            "GET",
            "/items?x=1",
            &[
                allow,
                ("x-remove-by-authz", "1"),
                ("x-authz-upstream", "client"),
                ("x-appended", "client"),
                ("x-overwritten", "client"),
                ("x-secret", "s"),
            ],
        ),
        req("grpc allow post", "grpc", "POST", "/items", &[allow]),
        req(
            "grpc deny",
            "grpc",
            "GET",
            "/items",
            &[("x-ext-authz", "nope")],
        ),
        req(
            "grpc unauthorized",
            "grpc",
            "GET",
            "/",
            &[("x-ext-authz", "unauthorized")],
        ),
        req(
            "grpc error",
            "grpc",
            "GET",
            "/",
            &[("x-ext-authz", "error")],
        ),
        req(
            "grpc timeout",
            "grpc",
            "GET",
            "/",
            &[("x-ext-authz", "slow")],
        ),
        req(
            "grpc disabled route",
            "grpc",
            "GET",
            "/public",
            &[("x-ext-authz", "nope")],
        ),
        req("grpc context extensions", "grpc", "GET", "/ctx", &[allow]),
        req("fail open", "open", "GET", "/", &[allow]),
        req("fail closed", "closed", "GET", "/", &[allow]),
        req("grpc server down", "grpc-down", "GET", "/", &[allow]),
        req(
            "no route, denied",
            "no-route",
            "GET",
            "/",
            &[("x-ext-authz", "nope")],
        ),
        req("no route, allowed", "no-route", "GET", "/", &[allow]),
    ]
}

/// Response headers compared between the two proxies.
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "server",
    "www-authenticate",
    "x-authz-deny-reason",
    "x-authz-deny-added",
    "x-ext-authz-check-result",
    "x-authz-client",
    "x-authz-client-appended",
    "x-authz-not-listed",
    "x-authz-upstream",
    "x-upstream",
];

/// Headers the upstream received, compared.
const UPSTREAM_HEADERS: &[&str] = &[
    "x-ext-authz",
    "x-ext-authz-append",
    "x-authz-upstream",
    "x-ext-authz-check-result",
    "x-authz-not-listed",
    "x-remove-by-authz",
    "x-appended",
    "x-overwritten",
    "x-envoy-auth-failure-mode-allowed",
    "x-authz-client",
    "content-length",
];

/// Headers the HTTP authorizer received, compared (its own request's host is the
/// client's).
const AUTHZ_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "x-ext-authz",
    "x-allowed-extra",
    "x-not-sent",
    "authorization",
    "x-added-by-proxy",
    "x-remove-by-authz",
    "x-forwarded-proto",
    "x-request-id",
    "transfer-encoding",
];

/// gRPC `CheckRequest` headers compared (present or not, and value where stable).
const CHECK_HEADERS: &[&str] = &[
    ":authority",
    ":method",
    ":path",
    ":scheme",
    "x-ext-authz",
    "x-secret",
    "x-remove-by-authz",
    "content-length",
    "x-forwarded-proto",
];

/// Every value of a response header, in order, joined by `|`.
fn all_values(r: &RawResponse, name: &str) -> Option<String> {
    let vals: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!vals.is_empty()).then(|| vals.join("|"))
}

fn upstream_header(echo: &Value, name: &str) -> Option<String> {
    echo["headers"][name].as_array().map(|vals| {
        vals.iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The parts of an authorizer's record both proxies must agree on.
fn authz_view(seen: &[Value], grpc: bool, listener_port: u16) -> Vec<Value> {
    seen.iter()
        .map(|s| {
            if grpc {
                let mut h = serde_json::Map::new();
                for name in CHECK_HEADERS {
                    h.insert(name.to_string(), s["headers"][*name].clone());
                }
                // Request ids are random: present on both.
                h.insert(
                    "x-request-id present".into(),
                    json!(s["headers"]["x-request-id"].is_string()),
                );
                json!({
                    "method": s["method"], "path": s["path"], "host": s["host"],
                    "scheme": s["scheme"], "protocol": s["protocol"], "headers": h,
                    "context_extensions": s["context_extensions"],
                    "source ip": s["source"]["ip"],
                    "destination is the listener": s["destination"]["port"] == json!(listener_port),
                    "destination ip": s["destination"]["ip"],
                    "has_time": s["has_time"], "id_set": s["id_set"],
                })
            } else {
                let mut h = serde_json::Map::new();
                for name in AUTHZ_HEADERS {
                    let v = &s["headers"][*name];
                    let v = if *name == "x-request-id" { json!(v.is_string()) } else { v.clone() };
                    h.insert(name.to_string(), v);
                }
                json!({"method": s["method"], "path": s["path"], "headers": h, "body_len": s["body_len"]})
            }
        })
        .collect()
}

#[test]
fn same_answers_as_envoy() {
    let echo = EchoUpstream::start("echo");
    let http_authz = HttpAuthz::start();
    let grpc_authz = GrpcAuthz::start();
    let dead = free_port();
    let ports = || Ports {
        http: free_port(),
        grpc: free_port(),
        open: free_port(),
        closed: free_port(),
        grpc_down: free_port(),
        no_route: free_port(),
    };
    let (ep, mp) = (ports(), ports());
    let dir = TempDir::new();
    let envoy = envoy_with(
        &resources(&ep, echo.port(), http_authz.port, grpc_authz.port, dead),
        &dir,
    );
    envoy.assert_no_rejections();
    let _mesh = InProcess::start(&resources(
        &mp,
        echo.port(),
        http_authz.port,
        grpc_authz.port,
        dead,
    ));
    let port_of = |p: &Ports, l: &str| match l {
        "http" => p.http,
        "grpc" => p.grpc,
        "open" => p.open,
        "closed" => p.closed,
        "no-route" => p.no_route,
        _ => p.grpc_down,
    };

    let mut mismatches = Vec::new();
    for c in corpus() {
        let grpc = c.listener.starts_with("grpc") || c.listener == "no-route";
        let seen = if grpc {
            &grpc_authz.seen
        } else {
            &http_authz.seen
        };
        seen.lock().unwrap().clear();
        let e = raw(port_of(&ep, c.listener), c.request.as_bytes());
        let e_seen = std::mem::take(&mut *seen.lock().unwrap());
        let m = raw(port_of(&mp, c.listener), c.request.as_bytes());
        let m_seen = std::mem::take(&mut *seen.lock().unwrap());
        let mut diff = |what: String, ev: Option<String>, mv: Option<String>| {
            if ev != mv {
                mismatches.push(format!("[{}] {what}: envoy={ev:?} meshgate={mv:?}", c.name));
            }
        };
        diff(
            "status".into(),
            Some(e.status.to_string()),
            Some(m.status.to_string()),
        );
        for h in RESPONSE_HEADERS {
            diff(
                format!("response header {h}"),
                all_values(&e, h),
                all_values(&m, h),
            );
        }
        let (ee, me) = (e.echo(), m.echo());
        if ee.is_object() || me.is_object() {
            for h in UPSTREAM_HEADERS {
                diff(
                    format!("upstream header {h}"),
                    upstream_header(&ee, h),
                    upstream_header(&me, h),
                );
            }
            diff(
                "upstream path".into(),
                ee["path"].as_str().map(str::to_string),
                me["path"].as_str().map(str::to_string),
            );
        } else {
            diff("body".into(), Some(e.body_str()), Some(m.body_str()));
        }
        let ev = authz_view(&e_seen, grpc, port_of(&ep, c.listener));
        let mv = authz_view(&m_seen, grpc, port_of(&mp, c.listener));
        if ev != mv {
            mismatches.push(format!(
                "[{}] authorizer asked:\n  envoy   ={}\n  meshgate={}",
                c.name,
                Value::Array(ev),
                Value::Array(mv)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The answers the comparison agrees on, spelled out: the differential test alone would
/// pass if both proxies ignored the authorizer.
#[test]
fn authorizer_decisions_reach_client_and_upstream() {
    let echo = EchoUpstream::start("echo");
    let http_authz = HttpAuthz::start();
    let grpc_authz = GrpcAuthz::start();
    let p = Ports {
        http: free_port(),
        grpc: free_port(),
        open: free_port(),
        closed: free_port(),
        grpc_down: free_port(),
        no_route: free_port(),
    };
    let _mesh = InProcess::start(&resources(
        &p,
        echo.port(),
        http_authz.port,
        grpc_authz.port,
        free_port(),
    ));
    let send = |port: u16, method: &str, path: &str, headers: &[(&str, &str)]| {
        raw(port, req("", "", method, path, headers).request.as_bytes())
    };

    let r = send(
        p.http,
        "GET",
        "/items",
        &[
            ("x-ext-authz", "allow"),
            ("x-remove-by-authz", "1"),
            ("x-echo-header", "x-authz-client=upstream"),
        ],
    );
    assert_eq!(r.status, 200);
    let up = r.echo();
    assert_eq!(
        upstream_header(&up, "x-authz-upstream").as_deref(),
        Some("from-authz")
    );
    assert_eq!(upstream_header(&up, "x-remove-by-authz"), None);
    assert_eq!(upstream_header(&up, "x-authz-not-listed"), None);
    assert_eq!(
        all_values(&r, "x-authz-client").as_deref(),
        Some("upstream|client-ok")
    );
    let asked = http_authz.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked["path"], "/check/items");
    assert_eq!(asked["headers"]["x-added-by-proxy"], "gw");
    assert_eq!(asked["headers"]["x-echo-header"], Value::Null);

    let r = send(p.http, "GET", "/items", &[("x-ext-authz", "no")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body_str(), "{\"denied\":true}");
    // The authorizer's content-type is not among allowed_client_headers.
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        r.header("x-authz-deny-reason"),
        Some("header x-ext-authz is not allow")
    );
    assert_eq!(r.header("x-authz-not-listed"), None);

    let r = send(p.grpc, "GET", "/ctx", &[("x-ext-authz", "allow")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_header(&r.echo(), "x-authz-upstream").as_deref(),
        Some("from-grpc")
    );
    let asked = grpc_authz.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        asked["context_extensions"],
        json!({"route": "ctx", "tier": "gold"})
    );
    assert_eq!(asked["headers"][":path"], "/ctx");

    let r = send(p.grpc, "GET", "/", &[("x-ext-authz", "unauthorized")]);
    assert_eq!((r.status, r.body_str().as_str()), (401, "token required"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"grpc\""));
    let r = send(p.grpc, "GET", "/", &[("x-ext-authz", "no")]);
    assert_eq!((r.status, r.body_str().as_str()), (403, ""));

    let r = send(p.open, "GET", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_header(&r.echo(), "x-envoy-auth-failure-mode-allowed").as_deref(),
        Some("true")
    );
    assert_eq!(send(p.closed, "GET", "/", &[]).status, 503);
    assert_eq!(send(p.grpc_down, "GET", "/", &[]).status, 403);
    assert_eq!(
        send(p.http, "GET", "/", &[("x-ext-authz", "slow")]).status,
        403
    );
}

/// Over mutual TLS the gRPC authorizer is told the client's identity (first URI SAN),
/// its certificate (`include_peer_certificate`), the gateway's own identity and the SNI
/// (`include_tls_session`), as Envoy tells it.
#[test]
fn mutual_tls_identity_reaches_the_authorizer_as_from_envoy() {
    let echo = EchoUpstream::start("echo");
    let grpc_authz = GrpcAuthz::start();
    let dir = TempDir::new();
    let ca = TestCa::new("ext_authz test CA");
    let ca_file = ca.write_ca(dir.path(), "ca");
    let server = ca.leaf_with(
        "gateway",
        &["localhost"],
        &["spiffe://cluster.local/ns/istio-system/sa/gw"],
        0,
        2,
    );
    let (server_cert, server_key) = server.write(dir.path(), "server");
    let client = ca.issue(&["client", "spiffe://cluster.local/ns/foo/sa/sleep"]);
    let (client_cert, client_key) = client.write(dir.path(), "client");
    let resources = |port: u16| {
        let filter = ext_authz(json!({
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz-grpc"}, "timeout": "1s"},
            "include_peer_certificate": true,
            "include_tls_session": true,
        }));
        let mut l = hcm_listener(
            "mtls",
            port,
            "main",
            json!({"use_remote_address": true}),
            vec![filter],
        );
        l["filter_chains"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": server_cert.display().to_string()},
                        "private_key": {"filename": server_key.display().to_string()}}],
                    "validation_context": {"trusted_ca": {"filename": ca_file.display().to_string()}},
                },
            },
        });
        let h2 = json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}});
        json!({
            "listeners": [l],
            "routes": [{"name": "main", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}],
            "clusters": [
                static_cluster("echo", &[echo.port()], json!({})),
                static_cluster("authz-grpc", &[grpc_authz.port], h2),
            ],
        })
    };
    let (ep, mp) = (free_port(), free_port());
    let envoy = envoy_with(&resources(ep), &dir);
    envoy.assert_no_rejections();
    let _mesh = InProcess::start(&resources(mp));
    let ask = |port: u16| {
        grpc_authz.seen.lock().unwrap().clear();
        let (ok, out) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca_file.display().to_string(),
            "--cert",
            &client_cert.display().to_string(),
            "--key",
            &client_key.display().to_string(),
            "-H",
            "x-ext-authz: allow",
            &format!("https://localhost:{port}/who"),
        ]);
        assert!(ok, "curl: {out}");
        let seen = std::mem::take(&mut *grpc_authz.seen.lock().unwrap());
        assert_eq!(seen.len(), 1, "{seen:?}");
        (out, seen[0].clone())
    };
    let (e_status, e) = ask(ep);
    let (m_status, m) = ask(mp);
    assert_eq!(e_status, "200");
    assert_eq!(m_status, e_status);
    for key in [
        "source_principal",
        "source_certificate",
        "destination_principal",
        "sni",
        "scheme",
    ] {
        assert_eq!(
            m[key], e[key],
            "{key}: envoy={} meshgate={}",
            e[key], m[key]
        );
    }
    assert_eq!(
        m["source_principal"],
        "spiffe://cluster.local/ns/foo/sa/sleep"
    );
    assert_eq!(
        m["destination_principal"],
        "spiffe://cluster.local/ns/istio-system/sa/gw"
    );
    assert_eq!(
        (m["sni"].as_str(), m["scheme"].as_str()),
        (Some("localhost"), Some("https"))
    );
    assert!(
        m["source_certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{}",
        m["source_certificate"]
    );
}

/// A gRPC client denied by the authorizer gets the denial as a gRPC status, over HTTP/2,
/// as from Envoy (HTTP and gRPC authorizers).
#[test]
fn grpc_clients_get_denials_as_grpc_status_as_from_envoy() {
    let echo = EchoUpstream::start("echo");
    let http_authz = HttpAuthz::start();
    let grpc_authz = GrpcAuthz::start();
    let dead = free_port();
    let ports = || Ports {
        http: free_port(),
        grpc: free_port(),
        open: free_port(),
        closed: free_port(),
        grpc_down: free_port(),
        no_route: free_port(),
    };
    let (ep, mp) = (ports(), ports());
    let dir = TempDir::new();
    let envoy = envoy_with(
        &resources(&ep, echo.port(), http_authz.port, grpc_authz.port, dead),
        &dir,
    );
    envoy.assert_no_rejections();
    let _mesh = InProcess::start(&resources(
        &mp,
        echo.port(),
        http_authz.port,
        grpc_authz.port,
        dead,
    ));
    let call = |port: u16, decision: &str| {
        let (ok, out) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            &format!("x-ext-authz: {decision}"),
            "--data-binary",
            "",
            &format!("http://127.0.0.1:{port}/pkg.Svc/Method"),
        ]);
        assert!(ok, "curl: {out}");
        let mut kept: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("http/")
                    || l.starts_with("grpc-")
                    || l.starts_with("content-type")
                    || l.starts_with("x-authz-deny-reason")
            })
            .map(str::to_string)
            .collect();
        kept.sort();
        kept
    };
    for (listener, decision) in [
        ("http", "nope"),
        ("grpc", "nope"),
        ("grpc", "unauthorized"),
        ("closed", "allow"),
    ] {
        let port = |p: &Ports| match listener {
            "http" => p.http,
            "grpc" => p.grpc,
            _ => p.closed,
        };
        let e = call(port(&ep), decision);
        let m = call(port(&mp), decision);
        assert!(e.iter().any(|l| l.starts_with("grpc-status")), "{e:?}");
        assert_eq!(m, e, "{listener} {decision}");
    }
}

/// Istio resources for the end-to-end case: a gateway on `port`, a backend, the
/// authorizer's service, and a CUSTOM policy sending `/admin/*` to the authorizer.
fn istio_yaml(port: u16, echo: u16, authz: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: istio-system}}
spec:
  hosts: [backend.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: foo}}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {authz}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: backend.test, port: {{number: 80}}}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: CUSTOM
  provider: {{name: sample-authz}}
  rules:
  - to: [{{operation: {{paths: ["/admin/*"]}}}}]
"#
    )
}

const MESH_YAML: &str = r#"extensionProviders:
- name: sample-authz
  envoyExtAuthzHttp:
    service: foo/ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 1s
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-authz-upstream]
    headersToDownstreamOnDeny: [x-authz-deny-reason]
    headersToDownstreamOnAllow: [x-authz-client]
"#;

/// AuthorizationPolicy CUSTOM with a mesh `envoyExtAuthzHttp` provider, end to end:
/// `meshgate gateway --config DIR --mesh-config FILE` and real Envoy fed the same
/// translation send only the requests the policy matches to the authorizer, and act on
/// its answers alike.
#[test]
fn custom_policy_from_istio_resources_end_to_end() {
    let echo = EchoUpstream::start("echo");
    let http_authz = HttpAuthz::start();
    let (envoy_port, mesh_port) = (free_port(), free_port());
    let work = TempDir::new();
    let mesh_file = work.path().join("mesh.yaml");
    std::fs::write(&mesh_file, MESH_YAML).unwrap();
    let config_for = |port: u16, name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("istio.yaml"),
            istio_yaml(port, echo.port(), http_authz.port),
        )
        .unwrap();
        d
    };

    // Real Envoy: the translation of the same resources with the same mesh settings.
    let envoy_dir = config_for(envoy_port, "envoy-config");
    let loaded = meshgate::config::load(&envoy_dir);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh = meshgate::config::mesh::load_mesh_config(&mesh_file).expect("mesh config");
    let (registry, _) = meshgate::registry::Registry::from_config(&loaded.config);
    let proxy = meshgate::xds::ProxyIdentity::gateway(
        "istio-system",
        meshgate::xds::ProxyIdentity::parse_labels("istio=ingressgateway").unwrap(),
    );
    let t = meshgate::translate::gateway_in_mesh(&loaded.config, &registry, &proxy, &mesh);
    assert!(
        t.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        t.diagnostics
    );
    let envoy_work = TempDir::new();
    let envoy = envoy_with(&resource_json(&t.resources), &envoy_work);
    envoy.assert_no_rejections();

    let mesh_dir = config_for(mesh_port, "meshgate-config");
    let _gw = GatewayProcess::start_with(
        &[
            "--config",
            mesh_dir.to_str().unwrap(),
            "--mesh-config",
            mesh_file.to_str().unwrap(),
        ],
        work.path(),
    );
    wait_for_port(mesh_port, Duration::from_secs(10));

    // (path, request headers, status, calls to the authorizer)
    type Step<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, usize);
    let cases: [Step; 4] = [
        ("/public/page", &[("x-ext-authz", "nope")], 200, 0),
        ("/admin/users", &[("x-ext-authz", "allow")], 200, 1),
        ("/admin/users", &[("x-ext-authz", "nope")], 403, 1),
        ("/admin/users", &[("x-ext-authz", "error")], 403, 1),
    ];
    for (path, headers, want, calls) in cases {
        let mut answers = Vec::new();
        for (who, port) in [("envoy", envoy_port), ("meshgate", mesh_port)] {
            http_authz.seen.lock().unwrap().clear();
            let r = get(port, "app.example.com", path, headers);
            let seen = std::mem::take(&mut *http_authz.seen.lock().unwrap());
            assert_eq!(r.status, want, "{who} {path} {headers:?}: {}", r.body_str());
            assert_eq!(seen.len(), calls, "{who} {path}: {seen:?}");
            if calls == 1 {
                assert_eq!(seen[0]["path"], format!("/check{path}"), "{who}");
            }
            let up = r.echo();
            answers.push((
                r.status,
                all_values(&r, "x-authz-deny-reason"),
                all_values(&r, "x-authz-client"),
                upstream_header(&up, "x-authz-upstream"),
                if up.is_object() {
                    String::new()
                } else {
                    r.body_str()
                },
                seen.first().map(|s| s["headers"]["x-ext-authz"].clone()),
            ));
        }
        assert_eq!(
            answers[0], answers[1],
            "{path} {headers:?}: envoy, then meshgate"
        );
    }
}
