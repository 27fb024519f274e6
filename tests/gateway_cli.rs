//! The `meshgate gateway` process: serving Envoy resources from a watched file, the JSON
//! access log, config reloads and rejections, and draining on SIGTERM.
mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;

fn resources(listen: u16, cluster_port: u16, body: &str) -> Value {
    json!({
        "listeners": [hcm_listener("l", listen, "r", json!({"use_remote_address": true}), vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "none", "domains": ["nr.example.com"], "routes": []}, {"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": body}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}],
        "clusters": [static_cluster("a", &[cluster_port], json!({}))],
    })
}

fn write(path: &std::path::Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_reloads_logs_and_drains() {
    let a = EchoUpstream::start("a");
    let dir = TempDir::new();
    let file = dir.path().join("xds.json");
    let port = free_port();
    write(&file, &resources(port, a.port(), "one"));
    let mut gw = GatewayProcess::start(
        &file,
        dir.path(),
        &["--access-log", "json", "--drain-timeout", "5"],
    );

    let r = get(
        port,
        "a.example.com",
        "/direct",
        &[("user-agent", "cli-test")],
    );
    assert_eq!((r.status, r.body_str().as_str()), (200, "one"));
    assert_eq!(get(port, "a.example.com", "/up", &[]).status, 200);

    // A valid change applies within a second or so.
    write(&file, &resources(port, a.port(), "two"));
    wait_until("reload", || {
        get(port, "x", "/direct", &[]).body_str() == "two"
    });
    // An invalid one is logged and the last good config keeps serving.
    let mut bad = resources(port, a.port(), "three");
    bad["clusters"][0]["health_checks"] =
        json!([{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}]);
    write(&file, &bad);
    wait_until("rejection in the log", || {
        gw.stderr().contains("cluster \\\"a\\\": health_checks")
            || gw.stderr().contains("cluster \"a\": health_checks")
    });
    assert_eq!(get(port, "x", "/direct", &[]).body_str(), "two");

    // The access log: one JSON line per request with Envoy's fields.
    wait_until("access log", || gw.stdout().lines().count() >= 3);
    let first: Value = serde_json::from_str(gw.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/direct");
    assert_eq!(first["response_code"], 200);
    assert_eq!(first["response_flags"], "-");
    assert_eq!(first["user_agent"], "cli-test");
    assert_eq!(first["authority"], "a.example.com");
    assert!(first["request_id"].is_string());
    let second: Value = serde_json::from_str(gw.stdout().lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["upstream_host"], format!("127.0.0.1:{}", a.port()));
    assert_eq!(second["upstream_cluster"], "a");
    // No route: 404 with NR only (the response was sent whole, so no DC).
    assert_eq!(get(port, "nr.example.com", "/nr", &[]).status, 404);
    wait_until("404 in the access log", || gw.stdout().contains("\"/nr\""));
    let nr: Value = gw
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["path"] == "/nr")
        .unwrap();
    assert_eq!(
        (nr["response_code"].as_u64(), nr["response_flags"].as_str()),
        (Some(404), Some("NR"))
    );

    // SIGTERM while a request is in flight: it completes, the connection is told to
    // close, the process exits cleanly.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let before = a.requests();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nx-echo-delay-ms: 1000\r\n\r\n")
        .unwrap();
    wait_until("the slow request at the upstream", || a.requests() > before);
    let child_id = gw.child.as_ref().unwrap().id();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child_id.to_string()])
        .status();
    let r = read_response(&mut s);
    assert_eq!(r.status, 200, "in-flight request finished during the drain");
    assert_eq!(r.header("connection"), Some("close"));
    let mut buf = [0u8; 8];
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the gateway did not close the connection: {other:?}"),
    }
    let status = gw.terminate();
    assert!(status.success(), "exit status {status}");
}
