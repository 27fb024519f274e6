//! `meshgate explain` predicts what the gateway does: for a table of requests against the
//! examples in `gateway-config/` (and a local configuration for what they do not show:
//! no endpoints, redirects, RBAC), explain's route, cluster, status and response flags
//! must equal what a running `meshgate gateway --config` on the same files did, as its
//! JSON access log records it. `--admin` on that gateway must say the same as `--config`.
//!
//! The examples run on copies whose ports are swapped for free loopback ports, with
//! certificates made by `meshgate certs dev` and echo servers as their applications.
mod support;
#[path = "support/translate.rs"]
mod translating;

use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::gateway::GatewayProcess;
use support::{EchoUpstream, TempDir, free_port, repo_root};

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

/// Copies an example directory, applying text substitutions to every YAML file.
fn copy_example(name: &str, dest: &Path, substitutions: &[(String, String)]) -> PathBuf {
    let src = repo_root().join("gateway-config").join(name);
    let dir = dest.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in substitutions {
                text = text.replace(from, to);
            }
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    dir
}

/// (cluster, endpoint address) pairs of an explanation.
fn endpoints(e: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in e["clusters"].as_array().unwrap() {
        for ep in c["endpoints"].as_array().unwrap() {
            out.push((
                c["name"].as_str().unwrap().to_string(),
                ep["address"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// An explanation from a running proxy's admin: every endpoint has the proxy's health
/// flags, and they say healthy.
fn assert_live_and_healthy(e: &Value) {
    for c in e["clusters"].as_array().unwrap() {
        for ep in c["endpoints"].as_array().unwrap() {
            assert_eq!(ep["health_flags"], "healthy", "{e:#}");
        }
    }
}

/// `meshgate explain ARGS --output json`, which must succeed.
fn explain(args: &[&str]) -> Value {
    let out = meshgate()
        .arg("explain")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshgate explain {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain output is not JSON: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn start_gateway(config: &Path, dir: &Path) -> GatewayProcess {
    GatewayProcess::start_with(
        &["--config", config.to_str().unwrap(), "--access-log", "json"],
        dir,
    )
}

/// The access log lines the gateway wrote so far.
fn access_log(gw: &GatewayProcess) -> Vec<Value> {
    gw.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("response_code").is_some())
        .collect()
}

/// The access log line written after the first `before` ones (bounded wait: the log is
/// written when the request ends).
fn next_log(gw: &GatewayProcess, before: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_log(gw);
        if lines.len() > before {
            assert_eq!(lines.len(), before + 1, "one request, one line: {lines:?}");
            return lines[before].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the request:\n{}",
            gw.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request sent with curl: returns the status (0 when curl got no HTTP answer).
struct Curl<'a> {
    url: &'a str,
    port: u16,
    headers: &'a [&'a str],
    cacert: Option<&'a Path>,
    cert: Option<(&'a Path, &'a Path)>,
    /// HTTP/1.0 instead of curl's default.
    http10: bool,
}

impl Curl<'_> {
    fn send(&self) -> (u16, String) {
        let uri: http::Uri = self.url.parse().unwrap();
        let host = uri.host().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["--max-time", "10"])
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", self.port)]);
        for h in self.headers {
            cmd.args(["-H", h]);
        }
        if let Some(ca) = self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some((c, k)) = self.cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        if self.http10 {
            cmd.arg("--http1.0");
        }
        let out = cmd
            .arg(self.url)
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (code, location) = text.split_once(' ').unwrap_or((&text, ""));
        (code.parse().unwrap_or(0), location.to_string())
    }
}

/// Sends the request to the gateway and checks that explain predicted what it did.
fn check(gw: &GatewayProcess, curl: Curl<'_>, explained: &Value) {
    let o = &explained["outcome"];
    let before = access_log(gw).len();
    let (status, location) = curl.send();
    let log = next_log(gw, before);
    let what = format!("{}\nexplain: {explained:#}\naccess log: {log:#}", curl.url);
    // A forwarded request is answered by the upstream: the echo servers answer 200.
    let expected = match o["kind"].as_str() {
        Some("forwarded") => 200,
        _ => o["status"]
            .as_u64()
            .unwrap_or_else(|| panic!("no status: {what}")),
    };
    assert_eq!(u64::from(status), expected, "status: {what}");
    assert_eq!(log["response_code"], expected, "response_code: {what}");
    assert_eq!(
        log["response_flags"], o["response_flags"],
        "response_flags: {what}"
    );
    assert_eq!(log["route_name"], o["route_name"], "route_name: {what}");
    // The gateway's own answers say why in their details (no route, no endpoint, RBAC).
    if let (Some(got), Some(want)) = (
        log["response_code_details"].as_str(),
        o["response_code_details"].as_str(),
    ) {
        assert_eq!(got, want, "response_code_details: {what}");
    }
    if let Some(l) = o["location"].as_str() {
        assert_eq!(location, l, "location: {what}");
    }
    match o["kind"].as_str() {
        Some("forwarded") => {
            // A weighted split: the cluster chosen is one of those explain listed.
            let clusters: Vec<&str> = explained["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            let got = log["upstream_cluster"].as_str().unwrap_or("");
            assert!(clusters.contains(&got), "upstream_cluster: {what}");
            if clusters.len() == 1 {
                let host = log["upstream_host"].as_str().unwrap_or("");
                let endpoints: Vec<&str> = explained["clusters"][0]["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["address"].as_str().unwrap())
                    .collect();
                // DNS clusters resolve at run time: explain lists no address for them.
                if !endpoints.is_empty() {
                    assert!(endpoints.contains(&host), "upstream_host: {what}");
                }
            }
        }
        _ => assert_eq!(
            log["upstream_cluster"], o["cluster"],
            "upstream_cluster: {what}"
        ),
    }
}

#[test]
fn quickstart_direct_response_forward_and_no_route() {
    let app = EchoUpstream::start("local-app");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "quickstart",
        dir.path(),
        &[
            ("8080".into(), port.to_string()),
            ("8000".into(), app.port().to_string()),
        ],
    );
    let gw = start_gateway(&config, dir.path());
    let c = config.to_str().unwrap();
    let cases: &[(&str, &str, Option<&str>, u64)] = &[
        // (path, outcome kind, route name, status)
        ("/hello", "local_reply", Some("hello"), 200),
        ("/app/items?id=7", "forwarded", Some("app"), 200),
        ("/other", "local_reply", None, 404),
    ];
    for (path, kind, route, status) in cases {
        let url = format!("http://localhost:{port}{path}");
        let e = explain(&["--config", c, &url]);
        assert_eq!(e["outcome"]["kind"], *kind, "{path}: {e:#}");
        assert_eq!(e["outcome"]["route_name"].as_str(), *route, "{path}");
        assert_eq!(
            e["outcome"]["status"].as_u64().unwrap_or(200),
            *status,
            "{path}"
        );
        check(
            &gw,
            Curl {
                url: &url,
                port,
                headers: &[],
                cacert: None,
                cert: None,
                http10: false,
            },
            &e,
        );
    }
    // HTTP/1.0: Istio's connection manager does not take it.
    let url = format!("http://localhost:{port}/hello");
    let e = explain(&["--config", c, "--http1.0", &url]);
    assert_eq!(e["outcome"]["status"], 426, "{e:#}");
    assert_eq!(e["outcome"]["response_flags"], "DPE");
    check(
        &gw,
        Curl {
            url: &url,
            port,
            headers: &[],
            cacert: None,
            cert: None,
            http10: true,
        },
        &e,
    );
    let e = explain(&["--config", c, &format!("http://localhost:{port}/other")]);
    assert_eq!(e["outcome"]["response_flags"], "NR");
    assert_eq!(e["http"]["routes_not_matched"].as_array().unwrap().len(), 2);
    assert_eq!(
        e["http"]["routes_not_matched"][1]["reason"],
        "uri prefix /app/ does not match /other"
    );
}

#[test]
fn ingress_header_match_weights_and_admin() {
    let productpage = EchoUpstream::start("productpage");
    let v1 = EchoUpstream::start("reviews-v1");
    let v2 = EchoUpstream::start("reviews-v2");
    let v3 = EchoUpstream::start("reviews-v3");
    let ratings = EchoUpstream::start("ratings");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "ingress",
        dir.path(),
        &[
            ("number: 8080".into(), format!("number: {port}")),
            (
                "http: 9080}".into(),
                format!("http: {}}}", productpage.port()),
            ),
            ("http: 9081}".into(), format!("http: {}}}", v1.port())),
            ("http: 9082}".into(), format!("http: {}}}", v2.port())),
            ("http: 9083}".into(), format!("http: {}}}", v3.port())),
            ("http: 9084}".into(), format!("http: {}}}", ratings.port())),
        ],
    );
    let gw = start_gateway(&config, dir.path());
    let c = config.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", gw.admin_port);
    let base = format!("http://bookinfo.example.com:{port}");

    // The test user: rule reviews-test-user, subset v2.
    let url = format!("{base}/reviews/1");
    let e = explain(&["--config", c, &url, "-H", "end-user: jason"]);
    assert_eq!(e["outcome"]["route_name"], "reviews-test-user", "{e:#}");
    assert_eq!(
        e["outcome"]["cluster"],
        "outbound|9080|v2|reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(e["clusters"][0]["subset"], "v2");
    assert_eq!(
        e["clusters"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{}", v2.port())
    );
    assert_eq!(
        e["http"]["route"]["istio_config"],
        "/apis/networking.istio.io/v1/namespaces/bookinfo/virtual-service/bookinfo"
    );
    check(
        &gw,
        Curl {
            url: &url,
            port,
            headers: &["end-user: jason"],
            cacert: None,
            cert: None,
            http10: false,
        },
        &e,
    );

    // Anyone else: the header rule fails, the weighted rule takes it.
    let e = explain(&["--config", c, &url, "-H", "end-user: bob"]);
    assert_eq!(e["outcome"]["route_name"], "reviews", "{e:#}");
    let skipped = e["http"]["routes_not_matched"].as_array().unwrap();
    assert_eq!(
        skipped.last().unwrap()["reason"],
        "header end-user: exact jason, request has bob"
    );
    let e_none = explain(&["--config", c, &url]);
    let skipped = e_none["http"]["routes_not_matched"].as_array().unwrap();
    assert_eq!(
        skipped.last().unwrap()["reason"],
        "header end-user: exact jason, request has none"
    );
    let weights: Vec<(String, f64)> = e["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["subset"].as_str().unwrap().to_string(),
                c["probability"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(weights, vec![("v1".into(), 0.8), ("v3".into(), 0.2)]);
    for _ in 0..3 {
        check(
            &gw,
            Curl {
                url: &url,
                port,
                headers: &["end-user: bob"],
                cacert: None,
                cert: None,
                http10: false,
            },
            &e,
        );
    }

    // Unknown path and unknown host: 404 NR.
    for url in [
        format!("{base}/productpage/extra"),
        format!("http://other.example.com:{port}/productpage"),
    ] {
        let e = explain(&["--config", c, &url]);
        assert_eq!(e["outcome"]["status"], 404, "{e:#}");
        check(
            &gw,
            Curl {
                url: &url,
                port,
                headers: &[],
                cacert: None,
                cert: None,
                http10: false,
            },
            &e,
        );
    }

    // The running gateway's /config_dump says the same as the files.
    for (url, headers) in [
        (format!("{base}/reviews/1"), vec!["end-user: jason"]),
        (format!("{base}/reviews/1"), vec![]),
        (format!("{base}/productpage"), vec![]),
        (format!("{base}/nothing"), vec![]),
        (format!("http://other.example.com:{port}/"), vec![]),
    ] {
        let mut args = vec![url.as_str()];
        for h in &headers {
            args.extend(["-H", h]);
        }
        let mut from_config = vec!["--config", c];
        from_config.extend(&args);
        let mut from_admin = vec!["--admin", admin.as_str()];
        from_admin.extend(&args);
        let a = explain(&from_config);
        let b = explain(&from_admin);
        assert_eq!(a["outcome"], b["outcome"], "{url}");
        assert_eq!(a["http"], b["http"], "{url}");
        assert_eq!(endpoints(&a), endpoints(&b), "{url}");
        assert_live_and_healthy(&b);
    }
}

const EDGE: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: PORT, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: istio-system}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: APP}, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: istio-system}
spec:
  host: app.internal
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - name: moved
    match: [{uri: {prefix: /old/}}]
    redirect: {uri: /new/, redirectCode: 301}
  - name: retired
    match: [{uri: {prefix: /v9/}}]
    route: [{destination: {host: app.internal, subset: v9}}]
  - name: maintenance
    match: [{uri: {exact: /status}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
  - name: app
    route: [{destination: {host: app.internal, subset: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: http://127.0.0.1:9/keys
"#;

/// Writes [`EDGE`] for a gateway on `port` in front of an upstream on `app` into
/// `DIR/edge`, and returns that folder.
fn write_edge(dir: &TempDir, port: u16, app: u16) -> std::path::PathBuf {
    let config = dir.path().join("edge");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("edge.yaml"),
        EDGE.replace("PORT", &port.to_string())
            .replace("APP", &app.to_string()),
    )
    .unwrap();
    config
}

#[test]
fn redirect_no_endpoints_direct_response_and_rbac() {
    let app = EchoUpstream::start("app");
    let port = free_port();
    let dir = TempDir::new();
    let config = write_edge(&dir, port, app.port());
    let gw = start_gateway(&config, dir.path());
    let c = config.to_str().unwrap();
    let base = format!("http://app.example.com:{port}");
    let cases: &[(&str, Option<u64>, &str, Option<&str>)] = &[
        // (path, status the gateway answers itself, response flags, route name)
        ("/old/page?x=1", Some(301), "-", Some("moved")),
        ("/v9/thing", Some(503), "UH", Some("retired")),
        ("/status", Some(503), "-", Some("maintenance")),
        ("/admin/users", Some(403), "-", Some("app")),
        ("/anything", None, "-", Some("app")),
    ];
    for (path, status, flags, route) in cases {
        let url = format!("{base}{path}");
        let e = explain(&["--config", c, &url]);
        let o = &e["outcome"];
        assert_eq!(o["status"].as_u64(), *status, "{path}: {e:#}");
        assert_eq!(o["response_flags"], *flags, "{path}");
        assert_eq!(o["route_name"].as_str(), *route, "{path}");
        check(
            &gw,
            Curl {
                url: &url,
                port,
                headers: &[],
                cacert: None,
                cert: None,
                http10: false,
            },
            &e,
        );
    }
    let e = explain(&["--config", c, &format!("{base}/old/page?x=1")]);
    assert_eq!(
        e["outcome"]["location"],
        format!("http://app.example.com:{port}/new/?x=1")
    );
    let e = explain(&["--config", c, &format!("{base}/admin/users")]);
    let rbac = e["http"]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.rbac")
        .unwrap_or_else(|| panic!("no RBAC filter: {e:#}"));
    assert!(
        rbac["decision"]
            .as_str()
            .unwrap()
            .starts_with("denied: policy ns[istio-system]-policy[no-admin]-rule[0]"),
        "{rbac}"
    );
    assert_eq!(
        e["outcome"]["response_code_details"],
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[no-admin]-rule[0]]"
    );
    // RequestAuthentication: a token is checked when present, none is needed.
    let jwt = e["http"]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.jwt_authn")
        .unwrap_or_else(|| panic!("no JWT filter: {e:#}"));
    assert_eq!(
        jwt["decision"],
        "requires any of [a valid JWT from https://issuer.example], or no token at all: an invalid token gets 401 (not verified here)"
    );
    let e = explain(&["--config", c, &format!("{base}/v9/thing")]);
    assert_eq!(e["clusters"][0]["endpoints"], serde_json::json!([]));
    assert_eq!(e["clusters"][0]["subset"], "v9");
}

/// `meshgate certs dev` into `out`.
fn dev_certs(out: &Path, hosts: &str, secret: Option<&str>) {
    let mut cmd = meshgate();
    cmd.args(["certs", "dev", "--hosts", hosts, "--out"])
        .arg(out);
    if let Some(s) = secret {
        cmd.args(["--secret", s, "--namespace", "default"]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "meshgate certs dev: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_sni_chains_mutual_redirect_and_passthrough() {
    let app = EchoUpstream::start("local-app");
    // The passthrough backend: a TCP listener that records what arrives.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let (http_port, https_port, pass_port) = (free_port(), free_port(), free_port());
    let dir = TempDir::new();
    let config = copy_example(
        "tls",
        dir.path(),
        &[
            ("number: 8080".into(), format!("number: {http_port}")),
            ("number: 8443".into(), format!("number: {https_port}")),
            ("number: 9443".into(), format!("number: {pass_port}")),
            ("number: 8000".into(), format!("number: {}", app.port())),
            ("number: 9000".into(), format!("number: {backend_port}")),
        ],
    );
    let local = config.join("local");
    dev_certs(&local, "shop.example.com", Some("shop-credential"));
    dev_certs(&local, "api.example.com", Some("api-credential"));
    dev_certs(&local, "client.example.com", None);
    let ca = local.join("ca.crt");
    let (client_crt, client_key) = (
        local.join("client.example.com.crt"),
        local.join("client.example.com.key"),
    );
    let gw = start_gateway(&config, dir.path());
    let c = config.to_str().unwrap();

    // Plain HTTP: the virtual host requires TLS.
    let url = format!("http://shop.example.com:{http_port}/x?y=1");
    let e = explain(&["--config", c, &url]);
    assert_eq!(e["outcome"]["status"], 301, "{e:#}");
    assert_eq!(
        e["outcome"]["location"],
        format!("https://shop.example.com:{http_port}/x?y=1")
    );
    check(
        &gw,
        Curl {
            url: &url,
            port: http_port,
            headers: &[],
            cacert: None,
            cert: None,
            http10: false,
        },
        &e,
    );

    // SIMPLE for shop by SNI; the api chain is passed over because of its name.
    let url = format!("https://shop.example.com:{https_port}/cart");
    let e = explain(&["--config", c, &url]);
    assert_eq!(e["filter_chain"]["tls_mode"], "SIMPLE", "{e:#}");
    assert_eq!(e["filter_chain"]["client_certificate_required"], false);
    assert!(
        e["chains_not_matched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["reason"]
                .as_str()
                .unwrap()
                .contains("SNI shop.example.com is none of them")),
        "{e:#}"
    );
    assert!(
        e["filter_chain"]["gateway_server"]
            .as_str()
            .unwrap()
            .contains("https-shop"),
        "{e:#}"
    );
    check(
        &gw,
        Curl {
            url: &url,
            port: https_port,
            headers: &[],
            cacert: Some(&ca),
            cert: None,
            http10: false,
        },
        &e,
    );

    // MUTUAL for api: with a client certificate it is served; without one the handshake
    // fails, and curl gets no answer.
    let url = format!("https://api.example.com:{https_port}/");
    let e = explain(&[
        "--config",
        c,
        &url,
        "--client-cert",
        client_crt.to_str().unwrap(),
    ]);
    assert_eq!(e["filter_chain"]["tls_mode"], "MUTUAL", "{e:#}");
    assert_eq!(e["filter_chain"]["client_certificate_required"], true);
    check(
        &gw,
        Curl {
            url: &url,
            port: https_port,
            headers: &[],
            cacert: Some(&ca),
            cert: Some((&client_crt, &client_key)),
            http10: false,
        },
        &e,
    );
    let e = explain(&["--config", c, &url]);
    assert_eq!(e["outcome"]["kind"], "tls_handshake_failure", "{e:#}");
    let before = access_log(&gw).len();
    let (status, _) = Curl {
        url: &url,
        port: https_port,
        headers: &[],
        cacert: Some(&ca),
        cert: None,
        http10: false,
    }
    .send();
    assert_eq!(
        status, 0,
        "a MUTUAL server answered a client without a certificate"
    );
    assert_eq!(access_log(&gw).len(), before);

    // PASSTHROUGH: the ClientHello reaches the backend untouched.
    let url = format!("https://backend.example.com:{pass_port}/");
    let e = explain(&["--config", c, &url]);
    assert_eq!(e["filter_chain"]["tls_mode"], "PASSTHROUGH", "{e:#}");
    assert_eq!(e["outcome"]["kind"], "tcp_proxied");
    assert_eq!(
        e["outcome"]["cluster"],
        format!("outbound|{backend_port}||local-tls-backend.internal")
    );
    assert_eq!(
        e["clusters"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{backend_port}")
    );
    let curl = std::thread::spawn({
        let url = url.clone();
        let ca = ca.clone();
        move || {
            Curl {
                url: &url,
                port: pass_port,
                headers: &[],
                cacert: Some(&ca),
                cert: None,
                http10: false,
            }
            .send()
        }
    });
    let first = first_bytes(&backend);
    assert!(
        first.len() > 5 && first[0] == 0x16,
        "not a TLS ClientHello: {first:?}"
    );
    assert!(
        contains(&first, b"backend.example.com"),
        "the SNI did not pass through"
    );
    let _ = curl.join();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The first bytes of the first connection to `listener` (bounded wait).
fn first_bytes(listener: &TcpListener) -> Vec<u8> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "nothing reached the backend");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 2048];
    let n = conn.read(&mut first).unwrap();
    first[..n].to_vec()
}

#[test]
fn egress_dns_cluster_and_direct_response() {
    let external = EchoUpstream::start("external");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "egress",
        dir.path(),
        &[
            ("number: 8080".into(), format!("number: {port}")),
            // httpbin.org is resolved as localhost, where the echo server plays it.
            (
                "  resolution: DNS\n".into(),
                format!(
                    "  resolution: DNS\n  endpoints: [{{address: localhost, ports: {{http: {}}}}}]\n",
                    external.port()
                ),
            ),
        ],
    );
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--access-log",
            "json",
            "--labels",
            "istio=egressgateway",
        ],
        dir.path(),
    );
    let c = config.to_str().unwrap();
    let url = format!("http://httpbin.org:{port}/get");
    let e = explain(&["--config", c, "--labels", "istio=egressgateway", &url]);
    assert_eq!(e["outcome"]["kind"], "forwarded", "{e:#}");
    assert_eq!(e["outcome"]["cluster"], "outbound|80||httpbin.org");
    assert_eq!(
        e["clusters"][0]["discovery"],
        format!("DNS (localhost:{})", external.port())
    );
    assert!(
        e["http"]["route"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "timeout 10s"),
        "{e:#}"
    );
    check(
        &gw,
        Curl {
            url: &url,
            port,
            headers: &[],
            cacert: None,
            cert: None,
            http10: false,
        },
        &e,
    );
    let url = format!("http://httpbin.org:{port}/admin/users");
    let e = explain(&["--config", c, "--labels", "istio=egressgateway", &url]);
    assert_eq!(e["outcome"]["status"], 403, "{e:#}");
    assert_eq!(e["outcome"]["route_name"], "blocked");
    check(
        &gw,
        Curl {
            url: &url,
            port,
            headers: &[],
            cacert: None,
            cert: None,
            http10: false,
        },
        &e,
    );
    // The running gateway has resolved httpbin.org: --admin lists the address.
    let url = format!("http://httpbin.org:{port}/get");
    let admin = format!("127.0.0.1:{}", gw.admin_port);
    let e = explain(&["--admin", &admin, &url]);
    let resolved = endpoints(&e);
    assert!(
        resolved
            .iter()
            .any(|(_, a)| a.ends_with(&format!(":{}", external.port()))),
        "{e:#}"
    );
    assert_live_and_healthy(&e);
    // The ingress labels select no Gateway: nothing listens.
    let e = explain(&[
        "--config",
        c,
        &format!("http://httpbin.org:{port}/admin/users"),
    ]);
    assert_eq!(e["outcome"]["kind"], "connection_refused", "{e:#}");
}

#[test]
fn east_west_auto_passthrough_by_sni() {
    let workload = TcpListener::bind("127.0.0.1:0").unwrap();
    let workload_port = workload.local_addr().unwrap().port();
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "east-west",
        dir.path(),
        &[
            ("number: 15443".into(), format!("number: {port}")),
            ("http: 15006}".into(), format!("http: {workload_port}}}")),
        ],
    );
    let _gw = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--labels",
            "istio=eastwestgateway",
        ],
        dir.path(),
    );
    let c = config.to_str().unwrap();
    let sni = "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local";
    let url = format!("https://reviews.bookinfo.svc.cluster.local:{port}/");
    let e = explain(&[
        "--config",
        c,
        "--labels",
        "istio=eastwestgateway",
        "--sni",
        sni,
        "--alpn",
        "istio",
        &url,
    ]);
    assert_eq!(e["filter_chain"]["tls_mode"], "AUTO_PASSTHROUGH", "{e:#}");
    assert_eq!(e["outcome"]["kind"], "tcp_proxied");
    assert_eq!(e["outcome"]["cluster"], sni);
    assert_eq!(
        e["clusters"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{workload_port}")
    );
    assert_eq!(
        e["clusters"][0]["endpoints"][0]["labels"],
        serde_json::json!([["app", "reviews"], ["version", "v1"]])
    );
    // The client's own TLS reaches the workload, SNI and all.
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", sni, "-alpn", "istio"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl (apt-get install openssl)");
    let first = first_bytes(&workload);
    let _ = client.kill();
    let _ = client.wait();
    assert!(first.first() == Some(&0x16), "not a ClientHello: {first:?}");
    assert!(contains(&first, sni.as_bytes()), "the SNI did not arrive");

    // A service the gateway does not know: no chain, the connection is reset.
    let e = explain(&[
        "--config",
        c,
        "--labels",
        "istio=eastwestgateway",
        "--sni",
        "outbound_.9080_._.ratings.bookinfo.svc.cluster.local",
        &url,
    ]);
    assert_eq!(e["outcome"]["kind"], "connection_reset", "{e:#}");
}

/// A `meshgate control-plane` process, killed on drop.
struct ControlPlaneProcess(std::process::Child);

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn xds_explains_what_the_control_plane_serves() {
    let app = EchoUpstream::start("app");
    let port = free_port();
    let dir = TempDir::new();
    let config = write_edge(&dir, port, app.port());
    let (xds_port, debug_port) = (free_port(), free_port());
    let xds = format!("127.0.0.1:{xds_port}");
    let _cp = ControlPlaneProcess(
        meshgate()
            .args(["control-plane", "--config"])
            .arg(&config)
            .args(["--xds-addr", &xds])
            .args(["--debug-addr", &format!("127.0.0.1:{debug_port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&xds).is_err() {
        assert!(
            Instant::now() < deadline,
            "the control plane does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = config.to_str().unwrap();
    for path in ["/old/a", "/v9/b", "/status", "/admin", "/anything"] {
        let url = format!("http://app.example.com:{port}{path}");
        let from_files = explain(&["--config", c, &url]);
        let from_xds = explain(&["--xds", &xds, "--namespace", "istio-system", &url]);
        assert_eq!(from_files["outcome"], from_xds["outcome"], "{path}");
        assert_eq!(
            from_files["http"]["route"], from_xds["http"]["route"],
            "{path}"
        );
    }
}

#[test]
fn envoy_config_dump_explains_the_same_and_envoy_answers_as_predicted() {
    let app = EchoUpstream::start("app");
    let port = free_port();
    let yaml = EDGE
        .replace("PORT", &port.to_string())
        .replace("APP", &app.port().to_string());
    let envoy = translating::TranslatedEnvoy::start(&yaml, "istio=ingressgateway", 1);
    let config = envoy.dir.path().join("config");
    let c = config.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", envoy.envoy.admin_port);
    for path in ["/old/a?b=1", "/v9/b", "/status", "/admin", "/anything", "/"] {
        let url = format!("http://app.example.com:{port}{path}");
        let from_files = explain(&["--config", c, &url]);
        // Envoy's own /config_dump (with EDS) carries the routes' Istio metadata too.
        let from_envoy = explain(&["--admin", &admin, &url]);
        assert_eq!(from_files["outcome"], from_envoy["outcome"], "{path}");
        assert_eq!(
            from_files["http"]["route"], from_envoy["http"]["route"],
            "{path}"
        );
        assert_eq!(endpoints(&from_files), endpoints(&from_envoy), "{path}");
        assert_live_and_healthy(&from_envoy);
        // And Envoy answers as predicted.
        let (status, location) = Curl {
            url: &url,
            port,
            headers: &[],
            cacert: None,
            cert: None,
            http10: false,
        }
        .send();
        let o = &from_files["outcome"];
        let want = o["status"].as_u64().unwrap_or(200);
        assert_eq!(u64::from(status), want, "Envoy on {path}: {o:#}");
        if let Some(l) = o["location"].as_str() {
            assert_eq!(location, l, "Envoy's location on {path}");
        }
    }
    envoy.envoy.assert_no_rejections();
}

#[test]
fn egress_tls_origination_names_the_sni_the_gateway_sends() {
    // The external services: TCP listeners that record the gateway's ClientHello.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let mtls = TcpListener::bind("127.0.0.1:0").unwrap();
    let (api_port, mtls_port) = (
        api.local_addr().unwrap().port(),
        mtls.local_addr().unwrap().port(),
    );
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "egress-tls-origination",
        dir.path(),
        &[
            ("9443".into(), api_port.to_string()),
            ("9444".into(), mtls_port.to_string()),
            ("8080".into(), port.to_string()),
        ],
    );
    let out = meshgate()
        .args([
            "certs",
            "dev",
            "--hosts",
            "api.example.com,mtls.example.com",
        ])
        .args([
            "--secret",
            "egress-client",
            "--namespace",
            "egress",
            "--out",
        ])
        .arg(config.join("local"))
        .arg("--ca-dir")
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _gw = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--labels",
            "istio=egressgateway",
        ],
        dir.path(),
    );
    let c = config.to_str().unwrap();
    for (host, listener, port_of) in [
        ("api.example.com", api, api_port),
        ("mtls.example.com", mtls, mtls_port),
    ] {
        let url = format!("http://{host}:{port}/x");
        let e = explain(&["--config", c, "--labels", "istio=egressgateway", &url]);
        assert_eq!(e["outcome"]["kind"], "forwarded", "{e:#}");
        assert_eq!(
            e["outcome"]["cluster"],
            format!("outbound|{port_of}||{host}")
        );
        assert_eq!(
            e["clusters"][0]["tls_origination"],
            format!("TLS, SNI {host}"),
            "{e:#}"
        );
        // The gateway does open TLS to the service, with that SNI.
        let client = std::thread::spawn({
            let url = url.clone();
            move || {
                Curl {
                    url: &url,
                    port,
                    headers: &[],
                    cacert: None,
                    cert: None,
                    http10: false,
                }
                .send()
            }
        });
        let first = first_bytes(&listener);
        // Closed: the gateway's retries are refused at once and the client answered.
        drop(listener);
        assert!(first.first() == Some(&0x16), "not a ClientHello: {first:?}");
        assert!(contains(&first, host.as_bytes()), "SNI {host} not sent");
        let _ = client.join();
    }
}

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: mesh, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: app.internal}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: istio-system}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: 9999}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: istio-system}
spec:
  host: app.internal
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"#;

/// Mesh mTLS is told apart from MUTUAL by its trust bundle (the SDS secret ROOTCA);
/// the gateway's behaviour for it is tested against Envoy in tests/mesh_mtls.rs.
#[test]
fn istio_mutual_termination_and_origination_are_named() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    dev_certs(&dir.path().join("certs"), "client.example.com", None);
    let c = dir.path().to_str().unwrap();
    let url = "https://app.example:15443/";
    let e = explain(&["--config", c, url]);
    assert_eq!(e["filter_chain"]["tls_mode"], "ISTIO_MUTUAL", "{e:#}");
    assert_eq!(e["outcome"]["kind"], "tls_handshake_failure");
    let cert = dir.path().join("certs/client.example.com.crt");
    let e = explain(&["--config", c, url, "--client-cert", cert.to_str().unwrap()]);
    assert_eq!(e["outcome"]["kind"], "forwarded", "{e:#}");
    assert_eq!(e["request"]["client_certificate"], "client.example.com");
    assert_eq!(
        e["clusters"][0]["tls_origination"], "TLS, SNI outbound_.80_._.app.internal",
        "{e:#}"
    );
}
