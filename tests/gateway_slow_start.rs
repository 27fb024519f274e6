//! Slow start from Istio's DestinationRule `warmup`: an endpoint that joins a cluster gets
//! a reduced share of the traffic during the warm-up window (Envoy's `slow_start_config`,
//! translated and served by meshgate's own data plane).
mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;

/// The DestinationRule's warm-up window.
const WINDOW: Duration = Duration::from_secs(3);

fn istio_yaml(port: u16, endpoints: &[u16]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|p| format!("{{address: 127.0.0.1, ports: {{http: {p}}}}}"))
        .collect();
    format!(
        r#"{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: app.internal}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{endpoints}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: edge}}
spec:
  host: app.internal
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {{duration: 3s, minimumPercent: 10, aggression: 1.0}}
"#,
        endpoints = endpoints.join(", "),
        gateway = istio_http_gateway("edge", port)
    )
}

fn translated(dir: &TempDir, yaml: &str) -> meshgate::xds::ResourceSet {
    std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
    translate_istio(dir.path())
}

fn upstream_counts(port: u16, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let (status, body) = blocking_http_get(("127.0.0.1", port), "/").unwrap();
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        *out.entry(echo["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

#[test]
fn a_new_endpoint_warms_up() {
    let (old, new) = (EchoUpstream::start("old"), EchoUpstream::start("new"));
    let port = free_port();
    let dir = TempDir::new();
    let one = translated(&dir, &istio_yaml(port, &[old.port()]));
    let cluster = &one.clusters[0];
    let json = meshgate::xds::json::to_json(cluster).unwrap();
    assert_eq!(
        json["roundRobinLbConfig"]["slowStartConfig"]["slowStartWindow"]
            .as_str()
            .or(json["round_robin_lb_config"]["slow_start_config"]["slow_start_window"].as_str()),
        Some("3s"),
        "the translator emits slow start: {json}"
    );
    let gw = InProcess::start_set(one);
    let before = upstream_counts(port, 20);
    assert_eq!(before.get("old"), Some(&20));
    // Every host is in slow start for the window after it joined, including those of a
    // new cluster: wait until the first endpoint has left it.
    std::thread::sleep(WINDOW + Duration::from_millis(100));

    // The second endpoint joins with a third of its weight (max(age, 1 s) / 3 s) for its
    // first second, so it gets about a quarter of the requests, not half. Only answers
    // that came back within that second count (a busy machine sends fewer, and the
    // band widens accordingly).
    let two = translated(&dir, &istio_yaml(port, &[old.port(), new.port()]));
    let joined = Instant::now();
    gw.gw().apply(two, "2").expect("slow start compiles");
    let (mut n, mut to_new) = (0, 0);
    while n < 300 {
        let (status, body) = blocking_http_get(("127.0.0.1", port), "/").unwrap();
        if joined.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        n += 1;
        if echo["upstream"] == "new" {
            to_new += 1;
        }
    }
    assert_binomial(
        "the new endpoint during its first second",
        to_new,
        n,
        0.25,
        &[0.5],
    );

    // After the window: plain round robin.
    std::thread::sleep(
        (joined + WINDOW + Duration::from_millis(100)).saturating_duration_since(Instant::now()),
    );
    let after = upstream_counts(port, 200);
    assert_eq!(
        (after.get("old"), after.get("new")),
        (Some(&100), Some(&100))
    );
}
