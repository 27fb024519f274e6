//! Distributed tracing with the Zipkin tracer: a Zipkin receiver runs in the test;
//! meshgate and real Envoy 1.40 serve the same resources (an OUTBOUND listener whose
//! connection manager traces to the receiver's cluster, as istiod configures gateways),
//! and for the same requests (sampled, incoming context in the multi and the single B3
//! form, unsampled, client-forced, 404 NR, 503 UF) both send the same B3 context
//! upstream, pack the same trace reason into `x-request-id`, and report the same span
//! tree: names, kinds, parents, tags. With the collector down or slow, no request fails
//! and the spans that cannot be held are dropped and counted. Istio configuration with a
//! Telemetry resource, translated for a gateway, reports to the receiver too.
mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::gateway::*;
use support::*;

/// A Zipkin v2 receiver: keeps every span POSTed to `/api/v2/spans` and answers 202, or
/// with `hold` never answers (a collector that is too slow).
struct ZipkinReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    reports: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl ZipkinReceiver {
    fn start(hold: bool) -> ZipkinReceiver {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reports: Arc<Mutex<Vec<BTreeMap<String, String>>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (s, r) = (spans.clone(), reports.clone());
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
                            let (spans, reports) = (s.clone(), r.clone());
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    receive(req, spans.clone(), reports.clone(), hold)
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
        ZipkinReceiver {
            port,
            spans,
            reports,
            _shutdown: tx,
        }
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits, boundedly, until spans whose `http.url` ends with each of `paths` arrived.
    fn wait_for(&self, paths: &[&str]) -> Vec<Value> {
        wait_until(
            "the spans of every request reach the collector",
            Duration::from_secs(30),
            || {
                let spans = self.spans();
                paths.iter().all(|p| {
                    spans.iter().any(|s| {
                        s["tags"]["http.url"]
                            .as_str()
                            .is_some_and(|u| u.ends_with(p))
                    })
                })
            },
        );
        self.spans()
    }
}

async fn receive(
    req: hyper::Request<hyper::body::Incoming>,
    spans: Arc<Mutex<Vec<Value>>>,
    reports: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    hold: bool,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    if hold {
        std::future::pending::<()>().await;
    }
    let mut head = BTreeMap::new();
    head.insert(":path".to_string(), req.uri().path().to_string());
    head.insert(":method".to_string(), req.method().to_string());
    for (k, v) in req.headers() {
        head.insert(k.to_string(), v.to_str().unwrap_or("").to_string());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&body) {
        spans.lock().unwrap().extend(list);
    }
    reports.lock().unwrap().push(head);
    Ok(hyper::Response::builder()
        .status(202)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap())
}

/// The resources both proxies serve: an OUTBOUND listener tracing every request
/// (random sampling `random`%) to the `zipkin` cluster, routes `/` to `up` (with
/// istiod's decorator) and `/uf` to `dead` (a closed port) for host `svc.test` only.
fn resources(port: u16, up: u16, zipkin: u16, random: f64, spawn: bool) -> Value {
    let dead = free_port();
    let mut tracing = json!({
        "client_sampling": {"value": 100.0},
        "random_sampling": {"value": random},
        "overall_sampling": {"value": 100.0},
        "custom_tags": [
            {"tag": "istio.canonical_revision", "literal": {"value": "latest"}},
            {"tag": "istio.canonical_service", "literal": {"value": "gw"}},
            {"tag": "x-tag", "request_header": {"name": "x-tag", "default_value": "none"}},
        ],
        "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": "zipkin",
            "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON",
            "trace_id_128bit": true,
            "shared_span_context": false,
            "collector_hostname": "zipkin.istio-system.svc.cluster.local",
        }},
    });
    if spawn {
        tracing["spawn_upstream_span"] = json!(true);
    }
    let mut listener = hcm_listener(
        "gw",
        port,
        "gw",
        json!({
            "use_remote_address": true,
            "tracing": tracing,
            "request_id_extension": {"typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                "use_request_id_for_trace_sampling": true,
            }},
        }),
        vec![],
    );
    listener["traffic_direction"] = json!("OUTBOUND");
    json!({
        "listeners": [listener],
        "routes": [{
            "name": "gw",
            "virtual_hosts": [{"name": "svc", "domains": ["svc.test"], "routes": [
                {"match": {"prefix": "/uf"}, "route": {"cluster": "dead"}, "decorator": {"operation": "dead.default:80/*"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "up"}, "decorator": {"operation": "up.default.svc.cluster.local:80/*"}},
            ]}],
        }],
        "clusters": [
            static_cluster("up", &[up], json!({})),
            static_cluster("dead", &[dead], json!({})),
            static_cluster("zipkin", &[zipkin], json!({})),
        ],
    })
}

/// One request of the differential run: a path and the request headers it carries.
struct Case {
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

const TRACE_128: &str = "0000000000000001000000000000000a";
const SINGLE: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";

fn cases() -> Vec<Case> {
    let c = |path, headers| Case {
        path,
        host: "svc.test",
        headers,
    };
    vec![
        c("/root?q=1", vec![("user-agent", "ua/1"), ("x-tag", "t1")]),
        c(
            "/incoming",
            vec![
                ("x-b3-traceid", TRACE_128),
                ("x-b3-spanid", "000000000000000b"),
                ("x-b3-sampled", "1"),
            ],
        ),
        c("/single", vec![("b3", SINGLE)]),
        c(
            "/unsampled",
            vec![
                ("x-b3-traceid", "000000000000000c"),
                ("x-b3-spanid", "000000000000000d"),
                ("x-b3-sampled", "0"),
            ],
        ),
        c(
            "/client",
            vec![("x-client-trace-id", "abc"), ("x-envoy-force-trace", "1")],
        ),
        c("/uf", vec![]),
        Case {
            path: "/nr",
            host: "other.test",
            headers: vec![],
        },
    ]
}

/// What a proxy did with one request: the status, the upstream's trace headers (if it
/// got the request) and the request id's trace-reason digit.
#[derive(Debug)]
struct Seen {
    status: u16,
    upstream: Option<BTreeMap<String, String>>,
}

fn send(port: u16, c: &Case) -> Seen {
    let r = get(port, c.host, c.path, &c.headers);
    let upstream = (r.status == 200).then(|| {
        let echo = r.echo();
        let mut h = BTreeMap::new();
        for name in [
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "b3",
            "x-request-id",
            "x-envoy-decorator-operation",
            "x-envoy-force-trace",
        ] {
            if let Some(v) = echo["headers"][name][0].as_str() {
                h.insert(name.to_string(), v.to_string());
            }
        }
        h
    });
    Seen {
        status: r.status,
        upstream,
    }
}

/// The upstream headers with the random parts replaced by their shape, and the
/// relations the proxy must keep: a root span's id is the low half of its trace id,
/// a received span id becomes the parent.
fn shape(h: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let hex = |v: &str| format!("hex{}", v.len());
    let mut out = BTreeMap::new();
    for (k, v) in h {
        let s = match k.as_str() {
            "x-b3-traceid" if v == TRACE_128 || v == "000000000000000c" => v.clone(),
            "x-b3-traceid" => hex(v),
            "x-b3-spanid" | "x-b3-parentspanid" => {
                let trace = &h["x-b3-traceid"];
                if trace.ends_with(v.as_str()) {
                    "low half of the trace id".into()
                } else if v == "000000000000000b" || v == "000000000000000d" {
                    v.clone()
                } else {
                    hex(v)
                }
            }
            "b3" => {
                let parts: Vec<&str> = v.split('-').collect();
                let parent = parts.get(3).map_or(String::new(), |p| {
                    if *p == "e457b5a2e4d86bd1" {
                        p.to_string()
                    } else {
                        hex(p)
                    }
                });
                format!(
                    "{}-{}-{}-{parent}",
                    parts[0],
                    hex(parts[1]),
                    parts.get(2).unwrap_or(&"")
                )
            }
            // The trace reason is the digit at offset 14.
            "x-request-id" => format!("reason {}", &v[14..15]),
            _ => v.clone(),
        };
        out.insert(k.clone(), s);
    }
    out
}

/// A span reduced to what both proxies must agree on, keyed by its request's path.
fn span_view(s: &Value) -> Value {
    // Sorted by name: the order of a JSON object carries nothing.
    let mut tags: BTreeMap<String, Value> = s["tags"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // Per-process and per-request values: present, not compared.
    for k in [
        "node_id",
        "guid:x-request-id",
        "zone",
        "peer.address",
        "upstream_address",
    ] {
        if let Some(v) = tags.get_mut(k) {
            *v = json!("<present>");
        }
    }
    // The URL's host:port differs (each proxy listens on its own port).
    if let Some(u) = tags.get_mut("http.url") {
        let url = u.as_str().unwrap_or("").to_string();
        *u = json!(
            url.split_once("/svc.test")
                .map_or(url.clone(), |(_, p)| p.to_string())
        );
    }
    json!({
        "name": s["name"],
        "kind": s["kind"],
        "has_parent": s["parentId"].is_string(),
        "annotations": s["annotations"].as_array().map(|a| a.iter().map(|x| x["value"].clone()).collect::<Vec<_>>()),
        "tags": tags,
    })
}

/// The spans of one request, by trace: the connection manager's span (with the http.url
/// tag) and the spans in the same trace.
fn trace_of<'a>(spans: &'a [Value], path: &str) -> Vec<&'a Value> {
    let Some(root) = spans.iter().find(|s| {
        s["tags"]["http.url"]
            .as_str()
            .is_some_and(|u| u.ends_with(path))
    }) else {
        return Vec::new();
    };
    let mut out: Vec<&Value> = spans
        .iter()
        .filter(|s| s["traceId"] == root["traceId"])
        .collect();
    out.sort_by_key(|s| s["name"].as_str().unwrap_or("").to_string());
    out
}

fn differential(spawn: bool) {
    let up = EchoUpstream::start("up");
    let zipkin_mg = ZipkinReceiver::start(false);
    let zipkin_envoy = ZipkinReceiver::start(false);
    let (mg_port, envoy_port) = (free_port(), free_port());
    let mg = InProcess::start(&resources(mg_port, up.port(), zipkin_mg.port, 100.0, spawn));
    let dir = TempDir::new();
    let envoy = envoy_with(
        &resources(envoy_port, up.port(), zipkin_envoy.port, 100.0, spawn),
        &dir,
    );
    wait_for_port(mg_port, Duration::from_secs(10));
    let cases = cases();
    for c in &cases {
        let m = send(mg_port, c);
        let e = send(envoy_port, c);
        assert_eq!(m.status, e.status, "{}: status", c.path);
        assert_eq!(
            m.upstream.as_ref().map(shape),
            e.upstream.as_ref().map(shape),
            "{}: the context and request id the upstream receives",
            c.path
        );
        if let Some(h) = &m.upstream
            && !spawn
        {
            // Without upstream spans, the connection manager's span is the parent.
            match c.path {
                "/incoming" => assert_eq!(h["x-b3-parentspanid"], "000000000000000b"),
                "/single" => assert!(h["b3"].ends_with("-1-e457b5a2e4d86bd1"), "{h:?}"),
                _ => {}
            }
        }
    }
    // Every sampled request has its spans; the unsampled one has none.
    let sampled = ["/root?q=1", "/incoming", "/single", "/client", "/uf", "/nr"];
    let m_spans = zipkin_mg.wait_for(&sampled);
    let e_spans = zipkin_envoy.wait_for(&sampled);
    for path in sampled {
        let m: Vec<Value> = trace_of(&m_spans, path)
            .into_iter()
            .map(span_view)
            .collect();
        let e: Vec<Value> = trace_of(&e_spans, path)
            .into_iter()
            .map(span_view)
            .collect();
        assert_eq!(
            serde_json::to_string_pretty(&m).unwrap(),
            serde_json::to_string_pretty(&e).unwrap(),
            "{path}: the span tree"
        );
        assert_eq!(
            m.len(),
            if spawn && path != "/nr" { 2 } else { 1 },
            "{path}"
        );
    }
    for spans in [&m_spans, &e_spans] {
        assert!(
            !spans.iter().any(|s| s["tags"]["http.url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/unsampled"))),
            "an unsampled request reports no span"
        );
        // A span with a received context keeps its trace and names its parent.
        let incoming = trace_of(spans, "/incoming");
        assert!(incoming.iter().all(|s| s["traceId"] == TRACE_128));
        let downstream = incoming
            .iter()
            .find(|s| s["tags"]["http.url"].is_string())
            .unwrap();
        assert_eq!(downstream["parentId"], "000000000000000b");
        if spawn {
            let upstream = incoming.iter().find(|s| s["kind"] == "CLIENT").unwrap();
            assert_eq!(upstream["parentId"], downstream["id"]);
        }
    }
    // Both report with Envoy's request: POST, JSON, to the collector's host.
    for r in [&zipkin_mg, &zipkin_envoy] {
        let reports = r.reports.lock().unwrap().clone();
        assert!(reports.iter().all(|h| h[":method"] == "POST"
            && h[":path"] == "/api/v2/spans"
            && h["content-type"] == "application/json"
            && h["host"] == "zipkin.istio-system.svc.cluster.local"));
    }
    drop(envoy);
    drop(mg);
}

#[test]
fn spans_and_propagation_match_envoy() {
    differential(false);
}

#[test]
fn spawned_upstream_spans_match_envoy() {
    differential(true);
}

#[test]
fn random_sampling_follows_the_request_id_like_envoy() {
    let up = EchoUpstream::start("up");
    let zipkin = ZipkinReceiver::start(false);
    let port = free_port();
    // 0%: only x-client-trace-id (client sampling 100%) makes a trace.
    let mg = InProcess::start(&resources(port, up.port(), zipkin.port, 0.0, false));
    wait_for_port(port, Duration::from_secs(10));
    let plain = send(
        port,
        &Case {
            path: "/plain",
            host: "svc.test",
            headers: vec![],
        },
    );
    let forced = send(
        port,
        &Case {
            path: "/forced",
            host: "svc.test",
            headers: vec![("x-client-trace-id", "t")],
        },
    );
    let p = plain.upstream.unwrap();
    assert_eq!(p["x-b3-sampled"], "0");
    assert_eq!(&p["x-request-id"][14..15], "4");
    let f = forced.upstream.unwrap();
    assert_eq!(f["x-b3-sampled"], "1");
    assert_eq!(&f["x-request-id"][14..15], "b");
    let spans = zipkin.wait_for(&["/forced"]);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0]["tags"]["guid:x-client-trace-id"], "t");
    drop(mg);
}

/// Sends `n` requests over `connections` keep-alive connections with h2load; returns
/// (succeeded, 2xx, h2load's report).
fn load(port: u16, n: usize, connections: usize) -> (usize, usize, String) {
    let out = std::process::Command::new(peer_bin("h2load"))
        .args([
            "--h1",
            "-n",
            &n.to_string(),
            "-c",
            &connections.to_string(),
            "-H",
            ":authority: svc.test",
            &format!("http://127.0.0.1:{port}/load"),
        ])
        .output()
        .expect("h2load runs (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let number_after = |what: &str| -> usize {
        text.lines()
            .find_map(|l| {
                let i = l.find(what)?;
                l[..i].split_whitespace().last()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no `{what}` in h2load output:\n{text}"))
    };
    (number_after(" succeeded"), number_after("2xx"), text)
}

#[test]
fn a_collector_that_is_down_fails_no_request() {
    let up = EchoUpstream::start("up");
    let port = free_port();
    let closed = free_port();
    let mg = InProcess::start(&resources(port, up.port(), closed, 100.0, false));
    wait_for_port(port, Duration::from_secs(10));
    let n = 200;
    let (ok, twoxx, report) = load(port, n, 4);
    assert_eq!((ok, twoxx), (n, n), "every request succeeds:\n{report}");
    wait_until(
        "the failed reports are counted",
        Duration::from_secs(20),
        || mg.stat("tracing.zipkin.reports_failed").unwrap_or(0) > 0,
    );
    assert_eq!(mg.stat("tracing.zipkin.reports_sent"), Some(0));
    let sent = mg.stat("tracing.zipkin.spans_sent").unwrap_or(0);
    assert!(sent > 0 && sent <= n as u64, "spans_sent {sent}");
}

#[test]
fn a_slow_collector_drops_spans_and_counts_them() {
    let up = EchoUpstream::start("up");
    let zipkin = ZipkinReceiver::start(true);
    let port = free_port();
    let mg = InProcess::start(&resources(port, up.port(), zipkin.port, 100.0, false));
    wait_for_port(port, Duration::from_secs(10));
    // More spans than a worker holds while its report waits on the collector (5 s).
    let n = 3000;
    let (ok, twoxx, report) = load(port, n, 8);
    assert_eq!((ok, twoxx), (n, n), "every request succeeds:\n{report}");
    wait_until(
        "spans are either reported, dropped or still buffered (at most 1000)",
        Duration::from_secs(30),
        || {
            let sent = mg.stat("tracing.zipkin.spans_sent").unwrap_or(0);
            let dropped = mg.stat("tracing.zipkin.spans_dropped").unwrap_or(0);
            sent + dropped + 1000 >= n as u64 && sent + dropped <= n as u64
        },
    );
    let dropped = mg.stat("tracing.zipkin.spans_dropped").unwrap_or(0);
    assert!(dropped > 0, "a held collector makes the buffer overflow");
    // ... on the Prometheus endpoint too, under Envoy's naming.
    let (_, prom) =
        blocking_http_get(mg.gw().prometheus_addr().unwrap(), "/stats/prometheus").unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("envoy_tracing_zipkin_spans_dropped")),
        "{prom}"
    );
    assert!(
        zipkin.reports.lock().unwrap().is_empty(),
        "the held collector answered nothing"
    );
}

/// A meshgate gateway in front of an Envoy proxy (as a gateway before a sidecar), both
/// tracing to one collector: one trace, Envoy's span the child of meshgate's upstream
/// span, the upstream's context the child of Envoy's.
#[test]
fn a_gateway_and_envoy_behind_it_make_one_trace() {
    let up = EchoUpstream::start("up");
    let zipkin = ZipkinReceiver::start(false);
    let (mg_port, envoy_port) = (free_port(), free_port());
    let dir = TempDir::new();
    // Envoy: the second hop, egress span without upstream spans (a sidecar's shape).
    let envoy = envoy_with(
        &resources(envoy_port, up.port(), zipkin.port, 100.0, false),
        &dir,
    );
    // meshgate: the gateway, spawning an upstream span towards Envoy.
    let mg = InProcess::start(&resources(mg_port, envoy_port, zipkin.port, 100.0, true));
    wait_for_port(mg_port, Duration::from_secs(10));
    let r = get(mg_port, "svc.test", "/chain", &[]);
    assert_eq!(r.status, 200);
    let echo = r.echo();
    let at_upstream = |h: &str| echo["headers"][h][0].as_str().unwrap_or("").to_string();
    // Spans of both proxies: meshgate's downstream and upstream span, Envoy's span.
    wait_until(
        "three spans of the request",
        Duration::from_secs(30),
        || zipkin.spans().len() >= 3,
    );
    let spans = zipkin.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let trace = &spans[0]["traceId"];
    assert!(spans.iter().all(|s| &s["traceId"] == trace), "{spans:#?}");
    assert_eq!(at_upstream("x-b3-traceid"), trace.as_str().unwrap());
    let find = |kind: &str, has_url: bool| {
        spans
            .iter()
            .filter(|s| s["kind"] == kind && s["tags"]["http.url"].is_string() == has_url)
            .collect::<Vec<_>>()
    };
    let gateway = find("SERVER", true);
    let gateway_upstream = find("CLIENT", false);
    let second_hop = find("CLIENT", true);
    assert_eq!(
        (gateway.len(), gateway_upstream.len(), second_hop.len()),
        (1, 1, 1)
    );
    assert!(
        gateway[0]["parentId"].is_null(),
        "the gateway's span is the root"
    );
    assert_eq!(gateway_upstream[0]["parentId"], gateway[0]["id"]);
    assert_eq!(second_hop[0]["parentId"], gateway_upstream[0]["id"]);
    // The upstream received the second hop's span (an egress span stands for the
    // upstream request itself).
    assert_eq!(
        at_upstream("x-b3-spanid"),
        second_hop[0]["id"].as_str().unwrap()
    );
    assert_eq!(
        at_upstream("x-b3-parentspanid"),
        gateway_upstream[0]["id"].as_str().unwrap()
    );
    assert_eq!(at_upstream("x-b3-sampled"), "1");
    drop(mg);
    drop(envoy);
}

/// Istio configuration translated for a gateway: a root-namespace Telemetry naming the
/// mesh's zipkin provider with 100% sampling (the mesh itself names no default
/// provider) makes the gateway report every request's span, with the Telemetry's tags.
#[test]
fn a_telemetry_resource_turns_on_tracing_for_a_gateway() {
    let up = EchoUpstream::start("up");
    let zipkin = ZipkinReceiver::start(false);
    let port = free_port();
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {zipkin}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {up}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: backend.internal}}}}]}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: zipkin}}]
    randomSamplingPercentage: 100
    customTags:
      team: {{literal: {{value: edge}}}}
",
        zipkin = zipkin.port,
        up = up.port(),
    );
    let loaded = meshgate::config::load_str("telemetry.yaml", &config);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = meshgate::registry::Registry::from_config(&loaded.config);
    let mesh = meshgate::config::mesh::parse_mesh_config(
        "mesh.yaml",
        &format!(
            "extensionProviders:\n- name: zipkin\n  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: {}}}\n",
            zipkin.port
        ),
    )
    .expect("mesh config");
    assert!(
        meshgate::translate::tracing::check(&registry, &mesh, &loaded.config).is_empty(),
        "the Telemetry's provider is usable"
    );
    let proxy = meshgate::xds::ProxyIdentity::gateway(
        "istio-system",
        BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
    );
    let t = meshgate::translate::gateway_in_mesh(&loaded.config, &registry, &proxy, &mesh);
    let mg = InProcess::start_set(t.resources);
    wait_for_port(port, Duration::from_secs(10));
    for i in 0..3 {
        let r = get(port, "svc.test", &format!("/traced/{i}"), &[]);
        assert_eq!(r.status, 200);
    }
    let spans = zipkin.wait_for(&["/traced/0", "/traced/1", "/traced/2"]);
    let server: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "SERVER").collect();
    assert_eq!(server.len(), 3, "{spans:#?}");
    assert!(
        server.iter().all(|s| s["tags"]["team"] == "edge"),
        "{spans:#?}"
    );
    drop(mg);
}
