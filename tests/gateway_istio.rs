//! Istio YAML end to end: translated once, served by real Envoy 1.40 and by meshgate,
//! the same requests get the same answers; and `meshgate gateway --config` reloads valid
//! changes and reports invalid ones with their position while serving the last good one.
mod support;

use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;

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
