//! The running data plane: protocols (h2c downstream, HTTP/2 upstream, WebSocket
//! upgrades), mirroring, config updates on open connections, rejected updates, listener
//! removal, idle timeouts, and the admin/health/Prometheus endpoints.
mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::gateway::*;
use support::*;

fn simple(listen: u16, cluster_ports: &[(&str, u16)], route_list: Vec<Value>, hcm: Value) -> Value {
    json!({
        "listeners": [hcm_listener("l", listen, "r", hcm, vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": route_list}]}],
        "clusters": cluster_ports.iter().map(|(n, p)| static_cluster(n, &[*p], json!({}))).collect::<Vec<_>>(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_http2_upstream() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let mut cfg = simple(
        port,
        &[("a", a.port())],
        vec![
            json!({"match": {"prefix": "/h2"}, "route": {"cluster": "a2"}}),
            json!({"match": {"prefix": "/same"}, "route": {"cluster": "same"}}),
            json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}}),
        ],
        json!({}),
    );
    cfg["clusters"].as_array_mut().unwrap().push(static_cluster(
        "a2",
        &[a.port()],
        json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}}),
    ));
    cfg["clusters"].as_array_mut().unwrap().push(static_cluster(
        "same",
        &[a.port()],
        json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {"http2_protocol_options": {}}}}}),
    ));
    let _mesh = InProcess::start(&cfg);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // use_downstream_protocol_config: the client's protocol is used upstream too.
    assert_eq!(get(port, "x", "/same", &[]).echo()["version"], "HTTP/1.1");
    let body: Value = client
        .get(format!("http://127.0.0.1:{port}/same"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["version"], "HTTP/2.0");
    let r = client
        .get(format!("http://127.0.0.1:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["version"], "HTTP/1.1",
        "HTTP/2 client, HTTP/1.1 upstream"
    );
    assert_eq!(body["headers"]["host"][0], format!("127.0.0.1:{port}"));
    let r = client
        .get(format!("http://127.0.0.1:{port}/h2"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["version"], "HTTP/2.0",
        "cluster with http2_protocol_options"
    );
    // Many concurrent streams on one connection.
    let futs = (0..50).map(|i| client.get(format!("http://127.0.0.1:{port}/s{i}")).send());
    for r in futures::future::join_all(futs).await {
        assert_eq!(r.unwrap().status(), 200);
    }
}

/// A minimal upstream that accepts one WebSocket-style upgrade and echoes bytes.
fn upgrade_upstream() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                assert!(text.contains("upgrade: websocket"), "{text}");
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn websocket_upgrade_passes_through() {
    let up = upgrade_upstream();
    let port = free_port();
    let cfg = simple(
        port,
        &[("ws", up)],
        vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "ws"}})],
        json!({"upgrade_configs": [{"upgrade_type": "websocket"}]}),
    );
    let _mesh = InProcess::start(&cfg);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"hello over the tunnel"] {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    // Without upgrade_configs the upgrade is refused with 403, like Envoy.
    let port2 = free_port();
    let _mesh2 = InProcess::start(&simple(
        port2,
        &[("ws", up)],
        vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "ws"}})],
        json!({}),
    ));
    let r = raw(
        port2,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(r.status, 403);
}

/// The mirrored requests `shadow` saw among `n` POSTs to `prefix/i` on `port`; a final
/// POST to `/all/sentinel` (mirrored at 100%) must arrive first, so that every earlier
/// mirror would have arrived too.
fn mirrored_of(port: u16, shadow: &RecordingUpstream, prefix: &str, n: usize) -> Vec<Recorded> {
    shadow.take();
    let post = |path: &str| {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: shop.example.com:8080\r\nConnection: close\r\nContent-Length: 9\r\n\r\nthe body!"
        );
        let r = raw(port, req.as_bytes());
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.echo()["upstream"], "a", "{path}: the primary answers");
    };
    for i in 0..n {
        post(&format!("{prefix}/{i}"));
    }
    post("/all/sentinel");
    wait_until("the sentinel's mirror", Duration::from_secs(10), || {
        shadow.seen().iter().any(|r| r.path == "/all/sentinel")
    });
    shadow
        .seen()
        .into_iter()
        .filter(|r| r.path.starts_with(&format!("{prefix}/")) && r.path != "/all/sentinel")
        .collect()
}

#[test]
fn mirrors_copy_host_method_and_body_at_their_fraction_like_envoy() {
    let a = EchoUpstream::start("a");
    let shadow = RecordingUpstream::start();
    let mirror = |prefix: &str, numerator: u32| {
        json!({"match": {"prefix": prefix}, "route": {"cluster": "a", "request_mirror_policies": [{"cluster": "shadow",
            "runtime_fraction": {"default_value": {"numerator": numerator, "denominator": "HUNDRED"}}}]}})
    };
    let make = |port| {
        simple(
            port,
            &[("a", a.port()), ("shadow", shadow.port)],
            vec![mirror("/all", 100), mirror("/none", 0), mirror("/half", 50)],
            json!({}),
        )
    };
    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = gateway::envoy_with(&make(envoy_port), &dir);
    envoy.assert_no_rejections();
    let mesh_port = free_port();
    let _mesh = InProcess::start(&make(mesh_port));
    for (who, port) in [("meshgate", mesh_port), ("envoy", envoy_port)] {
        // Every request at 100%: the same method, path and body, the Host with `-shadow`
        // before its port.
        let all = mirrored_of(port, &shadow, "/all", 20);
        assert_eq!(all.len(), 20, "{who}: mirrored at 100%");
        for r in &all {
            assert_eq!(r.method, "POST", "{who}");
            assert_eq!(
                r.headers.get("host").map(String::as_str),
                Some("shop.example.com-shadow:8080"),
                "{who}"
            );
            assert_eq!(String::from_utf8_lossy(&r.body), "the body!", "{who}");
        }
        // None at 0%, about half at 50%.
        let none = mirrored_of(port, &shadow, "/none", 20);
        assert_eq!(none.len(), 0, "{who}: mirrored at 0%");
        let n = 200;
        let half = mirrored_of(port, &shadow, "/half", n).len();
        assert_binomial(
            &format!("{who}: mirrored at 50%"),
            half,
            n,
            0.5,
            &[0.0, 1.0],
        );
    }
}

#[test]
fn config_update_applies_to_open_connections_and_bad_updates_are_rejected() {
    let (a, b) = (EchoUpstream::start("a"), EchoUpstream::start("b"));
    let port = free_port();
    let to = |cluster: &str| {
        simple(
            port,
            &[("a", a.port()), ("b", b.port())],
            vec![json!({"match": {"prefix": "/"}, "route": {"cluster": cluster}})],
            json!({}),
        )
    };
    let mesh = InProcess::start(&to("a"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_response(s)
    };
    assert_eq!(ask(&mut s).echo()["upstream"], "a");
    mesh.apply(&to("b"), "2").unwrap();
    // Same keep-alive connection, new config.
    assert_eq!(ask(&mut s).echo()["upstream"], "b");
    // An update meshgate cannot serve is rejected as a whole with a precise message...
    let mut bad = to("a");
    bad["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["hedge_policy"] =
        json!({"hedge_on_per_try_timeout": true});
    let err = mesh.apply(&bad, "3").unwrap_err();
    assert!(
        err.contains("route_configuration \"r\": virtual_hosts[0].routes[0].route.hedge_policy"),
        "{err}"
    );
    // ...and the last good config keeps serving, on the same connection.
    assert_eq!(ask(&mut s).echo()["upstream"], "b");
    let (_, dump) = mesh.admin("/config_dump");
    assert!(
        dump.contains("\"version_info\": \"2\""),
        "config_dump shows the serving version"
    );
}

#[test]
fn removed_listener_drains_and_idle_connections_close() {
    let a = EchoUpstream::start("a");
    let held = HeldUpstream::start();
    let (p1, p2) = (free_port(), free_port());
    let two = json!({
        "listeners": [
            hcm_listener("one", p1, "r", json!({"common_http_protocol_options": {"idle_timeout": "0.3s"}}), vec![]),
            hcm_listener("two", p2, "held", json!({}), vec![]),
        ],
        "routes": [
            {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]},
            {"name": "held", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "held", "timeout": "0s"}}]}]},
        ],
        "clusters": [static_cluster("a", &[a.port()], json!({})), static_cluster("held", &[held.port], json!({}))],
    });
    let mesh = InProcess::start(&two);
    // Idle timeout: a kept-alive connection is closed by the gateway once 0.3 s pass
    // without requests (the read timeout only guards against a hang).
    // The gateway's idle clock starts once its response is written, which is after
    // the request is sent: time from there, so the bound below cannot be undercut by
    // the time this client takes to read the response.
    let mut idle = TcpStream::connect(("127.0.0.1", p1)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = std::time::Instant::now();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut idle);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("connection"), Some("close"), "kept alive");
    let mut buf = [0u8; 16];
    match idle.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the idle connection was not closed by the gateway: {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the idle timeout",
        t.elapsed()
    );
    // Removing listener "two" while a request on it is in flight (the upstream holds
    // its answer): new connections are refused, and the request still completes.
    let mut open = TcpStream::connect(("127.0.0.1", p2)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"GET /in-flight HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until(
        "the request reached the upstream",
        Duration::from_secs(10),
        || held.arrived() == 1,
    );
    let mut one = two.clone();
    one["listeners"].as_array_mut().unwrap().pop();
    mesh.apply(&one, "2").unwrap();
    wait_until(
        "listener two refuses new connections",
        Duration::from_secs(10),
        || TcpStream::connect(("127.0.0.1", p2)).is_err(),
    );
    held.release();
    let r = read_response(&mut open);
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "held"),
        "the in-flight request completes on the removed listener"
    );
    assert_eq!(
        get(p1, "x", "/", &[]).status,
        200,
        "listener one still serves"
    );
}

#[test]
fn admin_health_and_prometheus() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let mesh = InProcess::start(&simple(
        port,
        &[("outbound|80||httpbin.default.svc.cluster.local", a.port())],
        vec![
            json!({"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||httpbin.default.svc.cluster.local"}}),
        ],
        json!({}),
    ));
    for _ in 0..3 {
        assert_eq!(get(port, "x", "/", &[]).status, 200);
    }
    assert_eq!(get(port, "x", "/", &[("x-echo-status", "503")]).status, 503);
    let gw = mesh.gw();
    assert_eq!(mesh.admin("/ready"), (200, "LIVE\n".to_string()));
    let (s, _) = blocking_http_get(gw.health_addr().unwrap(), "/healthz/ready").unwrap();
    assert_eq!(s, 200);
    let (s, prom) = blocking_http_get(gw.prometheus_addr().unwrap(), "/stats/prometheus").unwrap();
    assert_eq!(s, 200);
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("{prom}"));
    assert!(line.contains("reporter=\"source\""), "{line}");
    assert!(
        line.contains("destination_service=\"httpbin.default.svc.cluster.local\""),
        "{line}"
    );
    assert!(
        line.contains("destination_service_name=\"httpbin\""),
        "{line}"
    );
    assert!(
        line.contains("destination_service_namespace=\"default\""),
        "{line}"
    );
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        prom.contains("istio_request_duration_milliseconds_bucket{"),
        "histograms present"
    );
    assert!(prom.contains("istio_response_bytes_count{"));
    assert!(prom.contains("envoy_cluster_upstream_rq_total{cluster_name=\"outbound|80||httpbin.default.svc.cluster.local\"} 4"), "{prom}");
    assert_eq!(
        mesh.stat("cluster.outbound|80||httpbin.default.svc.cluster.local.upstream_rq_5xx"),
        Some(1)
    );
    let (_, dump) = mesh.admin("/config_dump");
    let v: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        v["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    );
    let (s, _) = blocking_http(gw.admin_addr().unwrap(), "POST", "/drain_listeners").unwrap();
    assert_eq!(s, 200);
    let (s, _) = blocking_http_get(gw.health_addr().unwrap(), "/healthz/ready").unwrap();
    assert_eq!(s, 503, "draining gateways report not ready");
}

/// Envoy's route timeout spans the whole upstream response: before the headers it is a
/// 504, after them the response is reset where it stands.
#[test]
fn route_timeout_covers_the_whole_response() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let mesh = InProcess::start(&simple(
        port,
        &[("up", a.port())],
        vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0.5s"}})],
        json!({}),
    ));
    // Within the timeout, the whole streamed body arrives.
    let r = get(port, "x", "/", &[("x-echo-body-delay-ms", "50")]);
    assert_eq!(r.status, 200);
    assert!(r.body_str().ends_with(".tail"), "{}", r.body_str());
    // No headers in time: 504.
    let r = get(port, "x", "/", &[("x-echo-delay-ms", "1500")]);
    assert_eq!(r.status, 504);
    // Headers in time, the body not: the response stops short and the connection closes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-echo-body-delay-ms: 3000\r\n\r\n")
        .unwrap();
    // (Without the timeout the tail would arrive after 3 s, before the read timeout.)
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(!got.contains(".tail"), "{got}");
    assert_eq!(mesh.stat("cluster.up.upstream_rq_timeout"), Some(2));
}

#[test]
fn header_timeout_bounds_slow_clients_but_not_idle_keep_alive() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let _mesh = InProcess::start(&simple(
        port,
        &[("a", a.port())],
        vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}})],
        json!({"request_headers_timeout": "0.5s"}),
    ));
    // A keep-alive connection, idle between requests...
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    // ...while a client that trickles its headers, connected later, is cut off (408 or a
    // close; the read timeout only guards against a hang)...
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 256];
    match slow.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("the trickling client was not cut off: {e}"),
    }
    // ...and the idle one, idle for longer than that, still serves.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut s).status,
        200,
        "idle keep-alive connection kept"
    );
}

#[test]
fn max_connections_per_listener_closes_further_clients() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let mesh = InProcess::start_with(
        &simple(
            port,
            &[("a", a.port())],
            vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}})],
            json!({}),
        ),
        |o| o.max_connections = 1,
    );
    let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut first).status, 200);
    // A second client is accepted and closed at once while the first is open (Envoy's
    // listener connection limit), and counted...
    let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 64];
    let closed = match second.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "closed unanswered while over the limit");
    assert_eq!(
        mesh.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_overflow")),
        Some(1)
    );
    // ...and a client is served again once the first connection closes.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = raw(
            port,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served after the first closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
