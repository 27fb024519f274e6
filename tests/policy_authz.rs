//! AuthorizationPolicy against real Envoy 1.40: the same Istio resources, translated by
//! `meshgate translate` for Envoy and served by `meshgate gateway --config`, must give
//! every request of a table the same answer (status and body), and count the same RBAC
//! decisions — enforced, shadow (dry-run) and AUDIT alike.
//!
//! The wider matrix (client addresses, certificates, TCP and TLS passthrough servers) is
//! in the conformance cases `ap-http`, `ap-mtls` and `ap-tcp`
//! (`CONFORMANCE_CASE=ap-http cargo test --test conformance`).
mod support;
#[path = "support/translate.rs"]
mod translate_support;

use std::time::{Duration, Instant};
use support::gateway::{GatewayProcess, RawResponse, raw};
use support::{EchoUpstream, Envoy, TempDir, free_port};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{PORT}}, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.internal]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: {{A}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /routed}}, {uri: {prefix: /open}}, {uri: {prefix: /shadow}}, {uri: {prefix: /audit}}, {uri: {prefix: /blocked}}]
    route: [{destination: {host: a.internal}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {paths: ["/open*", "/shadow*", "/audit*", "/blocked*", "/unrouted*"], notMethods: [PUT]}}]
  - when: [{key: "request.headers[x-pass]", values: ["let-me-in", "ok*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/blocked*"]}}]
  - when: [{key: "request.headers[x-evil]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: istio-system
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/shadow*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/audit*"]}}]
"#;

/// One request: method, path, extra headers, expected status.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

const TABLE: &[Case] = &[
    ("GET", "/open", &[], 200),
    ("GET", "/open/deep?x=1", &[], 200),
    ("PUT", "/open", &[], 403),
    ("GET", "/routed", &[], 403),
    ("GET", "/routed", &[("x-pass", "let-me-in")], 200),
    ("GET", "/routed", &[("x-pass", "ok-too")], 200),
    ("GET", "/routed", &[("x-pass", "nope")], 403),
    ("GET", "/blocked", &[], 403),
    ("GET", "/blocked", &[("x-pass", "let-me-in")], 403),
    ("GET", "/open", &[("x-evil", "")], 403),
    ("GET", "/open", &[("x-evil", "1")], 403),
    ("GET", "/shadow", &[], 200),
    ("GET", "/audit", &[], 200),
    // Authorization comes before the router: an unrouted request is still denied first.
    ("GET", "/nowhere", &[], 403),
    ("GET", "/unrouted", &[], 404),
];

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n");
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(port, req.as_bytes())
}

/// Sums the counters whose names end with `suffix` in `/stats` text (`name: value`),
/// restricted to names `keep` accepts.
fn sum(stats: &str, suffix: &str, keep: impl Fn(&str) -> bool) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(suffix) && keep(name))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// (allowed, denied, shadow allowed, shadow denied) of the HTTP RBAC filters.
type Counts = (u64, u64, u64, u64);

fn envoy_counts(stats: &str) -> Counts {
    let http = |n: &str| n.starts_with("http.") && n.contains(".rbac.");
    (
        sum(stats, ".rbac.allowed", http),
        sum(stats, ".rbac.denied", http),
        sum(stats, "shadow_allowed", http),
        sum(stats, "shadow_denied", http),
    )
}

fn meshgate_counts(stats: &str) -> Counts {
    let own = |n: &str| n.starts_with("rbac.");
    (
        sum(stats, "rbac.allowed", own),
        sum(stats, "rbac.denied", own),
        sum(stats, "rbac.shadow_allowed", own),
        sum(stats, "rbac.shadow_denied", own),
    )
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn decisions_and_counters_match_envoy() {
    let a = EchoUpstream::start("a");
    let dir = TempDir::new();
    let port = free_port();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let yaml = translate_support::render(
        CONFIG,
        &[("PORT", port.to_string()), ("A", a.port().to_string())],
    );
    std::fs::write(config_dir.join("authz.yaml"), yaml).unwrap();
    let labels = "istio=ingressgateway";

    // Envoy on `meshgate translate`'s output.
    let out = dir.path().join("envoy");
    let admin = free_port();
    let translated = std::process::Command::new(translate_support::meshgate_bin())
        .arg("translate")
        .arg("--config")
        .arg(&config_dir)
        .arg("--out")
        .arg(&out)
        .args(["--admin-port", &admin.to_string()])
        .args(["--labels", labels])
        .args(["--namespace", "istio-system"])
        .output()
        .expect("meshgate translate");
    assert!(
        translated.status.success(),
        "{}",
        String::from_utf8_lossy(&translated.stderr)
    );
    let envoy = Envoy::start(&out.join("envoy.yaml"), admin, dir.path());
    wait_port(port);
    envoy.assert_no_rejections();
    let mut envoy_answers = Vec::new();
    for (method, path, headers, want) in TABLE {
        let r = send(port, method, path, headers);
        assert_eq!(r.status, *want, "envoy: {method} {path} {headers:?}");
        envoy_answers.push(r);
    }
    let (_, envoy_stats) = envoy.admin_get("/stats").expect("envoy stats");
    let envoy_counted = envoy_counts(&envoy_stats);
    drop(envoy);

    // meshgate on the same files.
    let gw_dir = TempDir::new();
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config_dir.to_str().unwrap(),
            "--labels",
            labels,
            "--namespace",
            "istio-system",
        ],
        gw_dir.path(),
    );
    wait_port(port);
    for ((method, path, headers, _), e) in TABLE.iter().zip(&envoy_answers) {
        let m = send(port, method, path, headers);
        assert_eq!(m.status, e.status, "{method} {path} {headers:?}");
        if m.status == 200 {
            // Forwarded: the same request reached the upstream (request ids differ).
            assert_eq!(m.echo()["path"], e.echo()["path"], "{method} {path}");
            assert_eq!(m.echo()["upstream"], "a");
        } else {
            assert_eq!(m.body_str(), e.body_str(), "{method} {path} {headers:?}");
        }
        assert_eq!(
            m.header("content-type"),
            e.header("content-type"),
            "{method} {path} {headers:?}"
        );
        if m.status == 403 {
            assert_eq!(m.body_str(), "RBAC: access denied");
        }
    }
    let meshgate_counted = meshgate_counts(&gw.admin("/stats").1);
    assert_eq!(
        meshgate_counted, envoy_counted,
        "(allowed, denied, shadow allowed, shadow denied)"
    );
    // Every request passes the AUDIT filter, and the dry-run policy saw /shadow only.
    assert_eq!(envoy_counted.3, 1, "{envoy_stats}");
    assert!(envoy_counted.0 >= TABLE.len() as u64);

    // The access log (flushed in the background) says which policy denied: the DENY
    // policy's first rule, or none for an ALLOW that nothing matched.
    let wanted = [
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny]-rule[0]]",
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny]-rule[1]]",
        "rbac_access_denied_matched_policy[none]",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.stdout();
        if wanted.iter().all(|w| log.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "{wanted:?} not all in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
