//! The test harness itself against real Envoy: a static Envoy config proxies to an echo
//! upstream, so every later Envoy-judged test stands on something proven.
mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_proxies_to_echo_upstream() {
    let up = EchoUpstream::start("echo-a");
    let dir = TempDir::new();
    let admin = free_port();
    let listen = free_port();
    let config = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          route_config:
            virtual_hosts:
            - {{name: a, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
"#,
        up = up.port()
    );
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let envoy = Envoy::start(&path, admin, dir.path());

    let resp = http_client()
        .get(format!("http://127.0.0.1:{listen}/hello?x=1"))
        .header("x-echo-header", "x-test=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-test"], "yes");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["upstream"], "echo-a");
    assert_eq!(body["path"], "/hello?x=1");
    assert!(body["headers"]["x-request-id"].is_array());

    let resp = http_client()
        .get(format!("http://127.0.0.1:{listen}/"))
        .header("x-echo-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(up.requests(), 2);
    envoy.assert_no_rejections();
}
