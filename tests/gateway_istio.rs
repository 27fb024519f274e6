//! Istio YAML end to end: translated once, served by real Envoy 1.40 and by meshgate,
//! the same requests get the same answers; `meshgate gateway --config` and Envoy on
//! `meshgate translate`'s files agree on method, authority and scheme matches; and
//! `meshgate gateway --config` reloads valid changes and reports invalid ones with their
//! position while serving the last good one.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;
use translating::TranslatedEnvoy;

fn istio_yaml(port: u16, a: u16, b: u16, greeting: &str) -> String {
    format!(
        r#"{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: ["shop.example.com"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /api}}, headers: {{x-variant: {{exact: beta}}}}}}]
    route: [{{destination: {{host: b.internal, port: {{number: {b}}}}}}}]
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, redirectCode: 302}}
  - match: [{{uri: {{prefix: /rewrite/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
  - match: [{{uri: {{exact: /hello}}}}]
    directResponse: {{status: 200, body: {{string: "{greeting}"}}}}
  - match: [{{uri: {{prefix: /fault}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: a.internal, port: {{number: {a}}}}}, weight: 80}}
    - {{destination: {{host: b.internal, port: {{number: {b}}}}}, weight: 20}}
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 0.3s
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
  - headers:
      request: {{set: {{x-added: "yes"}}, remove: [x-drop]}}
      response: {{add: {{x-resp: "yes"}}}}
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {a}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: b, namespace: default}}
spec:
  hosts: [b.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {b}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#,
        gateway = istio_http_gateway("default", port)
    )
}

fn translated(port: u16, a: u16, b: u16) -> meshgate::xds::ResourceSet {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("config.yaml"), istio_yaml(port, a, b, "hi")).unwrap();
    translate_istio(dir.path())
}

#[test]
fn translated_config_same_answers_as_envoy() {
    let (a, b) = (EchoUpstream::start("a"), EchoUpstream::start("b"));
    let (envoy_port, mesh_port) = (free_port(), free_port());
    let dir = TempDir::new();
    let envoy = envoy_with(
        &resource_json(&translated(envoy_port, a.port(), b.port())),
        &dir,
    );
    envoy.assert_no_rejections();
    let _mesh = InProcess::start_set(translated(mesh_port, a.port(), b.port()));
    let h = "shop.example.com";
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("/api/x", h, vec![("x-variant", "beta")]),
        ("/api/x", h, vec![]),
        ("/old/page?q=1", h, vec![]),
        ("/rewrite/deep", h, vec![]),
        ("/hello", h, vec![]),
        ("/fault", h, vec![]),
        ("/slow", h, vec![("x-echo-delay-ms", "1000")]),
        ("/any", h, vec![("x-drop", "1")]),
        ("/any", "other.example.com", vec![]),
        ("/any", "shop.example.com:8080", vec![]),
    ];
    let mut diffs = Vec::new();
    for (path, host, extra) in &cases {
        let e = get(envoy_port, host, path, extra);
        let m = get(mesh_port, host, path, extra);
        let key = |r: &RawResponse| {
            let echo = r.echo();
            (
                r.status,
                r.header("location").map(str::to_string),
                r.header("x-resp").map(str::to_string),
                r.header("server").map(str::to_string),
                r.header("content-type").map(str::to_string),
                if echo.is_object() {
                    None
                } else {
                    Some(r.body_str())
                },
                echo["upstream"].as_str().map(str::to_string),
                echo["path"].as_str().map(str::to_string),
                echo["headers"]["x-added"].clone(),
                echo["headers"]["x-drop"].clone(),
                echo["headers"]["x-forwarded-for"].clone(),
                echo["headers"]["x-envoy-expected-rq-timeout-ms"].clone(),
            )
        };
        if key(&e) != key(&m) {
            diffs.push(format!(
                "{host}{path}:\n  envoy    {:?}\n  meshgate {:?}",
                key(&e),
                key(&m)
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // Weights, statistically: 80/20 on both, within five standard deviations (n = 400:
    // 320 ± 40), which an even split or a single destination falls outside of.
    for (who, port) in [("envoy", envoy_port), ("meshgate", mesh_port)] {
        let n = 400;
        let to_a = (0..n)
            .filter(|_| get(port, h, "/split", &[]).echo()["upstream"] == "a")
            .count();
        assert_binomial(
            &format!("{who}: to a at weight 80"),
            to_a,
            n,
            0.8,
            &[0.5, 1.0],
        );
    }
}

#[test]
fn gateway_config_reloads_and_reports_positions() {
    let a = EchoUpstream::start("a");
    let dir = TempDir::new();
    let cfg = dir.path().join("istio");
    std::fs::create_dir(&cfg).unwrap();
    let port = free_port();
    std::fs::write(
        cfg.join("config.yaml"),
        istio_yaml(port, a.port(), a.port(), "one"),
    )
    .unwrap();
    let gw = GatewayProcess::start_with(&["--config", cfg.to_str().unwrap()], dir.path());
    let hello = || get(port, "shop.example.com", "/hello", &[]).body_str();
    assert_eq!(hello(), "one");
    assert_eq!(
        get(port, "shop.example.com", "/rewrite/x", &[]).echo()["path"],
        "/x"
    );
    // A valid change applies within a second or so.
    std::fs::write(
        cfg.join("config.yaml"),
        istio_yaml(port, a.port(), a.port(), "two"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hello() != "two" {
        assert!(
            Instant::now() < deadline,
            "change not applied:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An invalid file is reported with file:line:column and changes nothing.
    std::fs::write(cfg.join("broken.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken}\nspec:\n  hosts: [x]\n  htp: []\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.stderr().contains("broken.yaml:6:") {
        assert!(
            Instant::now() < deadline,
            "no positioned error:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hello(), "two");
}

/// A VirtualService matching on method, authority and scheme (Envoy header conditions on
/// `:method`, `:authority`, `:scheme`), next to a route to an upstream.
fn pseudo_header_yaml(port: u16, a: u16) -> String {
    format!(
        r#"{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: matches, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{exact: /m}}, method: {{exact: POST}}}}]
    directResponse: {{status: 200, body: {{string: "post"}}}}
  - match: [{{uri: {{exact: /m}}, method: {{regex: "PUT|PATCH"}}}}]
    directResponse: {{status: 200, body: {{string: "put-or-patch"}}}}
  - match: [{{uri: {{prefix: /a}}, authority: {{prefix: shop.}}}}]
    directResponse: {{status: 200, body: {{string: "shop"}}}}
  - match: [{{uri: {{prefix: /a}}, authority: {{exact: "api.example.com:8080"}}}}]
    directResponse: {{status: 200, body: {{string: "api-with-port"}}}}
  - match: [{{uri: {{prefix: /s}}, scheme: {{exact: https}}}}]
    directResponse: {{status: 200, body: {{string: "https"}}}}
  - match: [{{uri: {{prefix: /s}}, scheme: {{exact: http}}}}]
    directResponse: {{status: 200, body: {{string: "http"}}}}
  - match: [{{method: {{exact: POST}}, authority: {{prefix: shop.}}, scheme: {{exact: http}}}}]
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
  - directResponse: {{status: 200, body: {{string: "fallback"}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {a}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#,
        gateway = istio_http_gateway("default", port)
    )
}

#[test]
fn method_authority_scheme_matches_same_as_envoy() {
    let a = EchoUpstream::start("a");
    let (envoy_port, mesh_port) = (free_port(), free_port());
    let envoy = TranslatedEnvoy::start(
        &pseudo_header_yaml(envoy_port, a.port()),
        "istio=ingressgateway",
        1,
    );
    let dir = TempDir::new();
    let cfg = dir.path().join("istio");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.yaml"),
        pseudo_header_yaml(mesh_port, a.port()),
    )
    .unwrap();
    let gw = GatewayProcess::start_with(&["--config", cfg.to_str().unwrap()], dir.path());
    wait_for_port(mesh_port, Duration::from_secs(10));

    let send = |port: u16, method: &str, host: &str, target: &str| {
        let body = if method == "GET" {
            ""
        } else {
            "Content-Length: 0\r\n"
        };
        let r = raw(
            port,
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{body}\r\n"
            )
            .as_bytes(),
        );
        let echo = r.echo();
        match echo["upstream"].as_str() {
            Some(u) => (r.status, format!("upstream {u}")),
            None => (r.status, r.body_str()),
        }
    };
    let cases: &[(&str, &str, &str, (u16, &str))] = &[
        ("POST", "any.example.com", "/m", (200, "post")),
        ("GET", "any.example.com", "/m", (200, "fallback")),
        ("PUT", "any.example.com", "/m", (200, "put-or-patch")),
        ("GET", "shop.example.com", "/a", (200, "shop")),
        ("POST", "shop.example.com", "/a", (200, "shop")),
        ("GET", "api.example.com:8080", "/a", (200, "api-with-port")),
        ("GET", "api.example.com", "/a", (200, "fallback")),
        ("GET", "other.example.com", "/a", (200, "fallback")),
        ("GET", "any.example.com", "/s", (200, "http")),
        ("POST", "any.example.com", "/s", (200, "http")),
        ("POST", "shop.example.com", "/other", (200, "upstream a")),
        ("GET", "shop.example.com", "/other", (200, "fallback")),
        ("POST", "api.example.com", "/other", (200, "fallback")),
        // An absolute-form target's authority is the one matched.
        (
            "POST",
            "api.example.com",
            "http://shop.example.com/other",
            (200, "upstream a"),
        ),
        // https in an absolute-form target on a plaintext connection is refused.
        (
            "GET",
            "any.example.com",
            "https://shop.example.com/s",
            (403, "Forbidden"),
        ),
    ];
    let mut diffs = Vec::new();
    for (method, host, target, want) in cases {
        let e = send(envoy_port, method, host, target);
        let m = send(mesh_port, method, host, target);
        let want = (want.0, want.1.to_string());
        if e != want || m != want {
            diffs.push(format!(
                "{method} {host} {target}: want {want:?}, envoy {e:?}, meshgate {m:?}"
            ));
        }
    }
    assert!(diffs.is_empty(), "{}\n{}", diffs.join("\n"), gw.stderr());
    envoy.envoy.assert_no_rejections();
}

/// A DestinationRule `retryBudget` reaches both data planes as Envoy's
/// `circuit_breakers.thresholds[].retry_budget`.
fn retry_budget_yaml(port: u16, a: u16) -> String {
    format!(
        r#"{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: retried, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - retries: {{attempts: 1, retryOn: 5xx}}
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: a, namespace: default}}
spec:
  host: a.internal
  trafficPolicy:
    retryBudget: {{percent: 0, minRetryConcurrency: 1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {a}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#,
        gateway = istio_http_gateway("default", port)
    )
}

#[test]
fn destination_rule_retry_budget_same_as_envoy() {
    let a = EchoUpstream::start("a");
    let (envoy_port, mesh_port) = (free_port(), free_port());
    let translated = |port: u16| {
        let dir = TempDir::new();
        std::fs::write(
            dir.path().join("config.yaml"),
            retry_budget_yaml(port, a.port()),
        )
        .unwrap();
        translate_istio(dir.path())
    };
    let resources = resource_json(&translated(envoy_port));
    let budgets: Vec<&serde_json::Value> = resources["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["circuit_breakers"]["thresholds"][0].get("retry_budget"))
        .collect();
    assert_eq!(
        budgets,
        // Percent 0 is the default value, so JSON leaves it out.
        vec![&serde_json::json!({"budget_percent": {}, "min_retry_concurrency": 1})],
        "{resources:#}"
    );
    let dir = TempDir::new();
    let envoy = envoy_with(&resources, &dir);
    envoy.assert_no_rejections();
    let _mesh = InProcess::start_set(translated(mesh_port));
    for (who, port) in [("envoy", envoy_port), ("meshgate", mesh_port)] {
        // Alone, a failing request is retried once.
        let before = a.requests();
        assert_eq!(get(port, "x", "/", &[("x-echo-status", "503")]).status, 503);
        assert_eq!(a.requests() - before, 2, "{who}");
        // Three failing at once: the budget (a minimum of one, no share) lets one retry.
        let before = a.requests();
        let handles: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    get(
                        port,
                        "x",
                        "/",
                        &[("x-echo-status", "503"), ("x-echo-delay-ms", "800")],
                    )
                    .status
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(statuses, vec![503, 503, 503], "{who}");
        assert_eq!(a.requests() - before, 4, "{who}: three tries, one retry");
    }
}
