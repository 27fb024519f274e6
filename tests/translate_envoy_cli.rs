//! `meshgate translate` as a command: exit codes, the config-dump output, and re-running
//! it against a live Envoy, which must pick up the new files without a restart.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::time::{Duration, Instant};
use support::*;
use translating::*;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: {{GW_PORT}}, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: {{SERVICE}}}
spec:
  hosts: [{{SERVICE}}.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: {{ECHO}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {exact: /version}}]
    directResponse: {status: 200, body: {string: "{{VERSION}}"}}
  - route: [{destination: {host: {{SERVICE}}.internal}}]
"#;

#[test]
fn exit_codes_and_diagnostics() {
    let dir = TempDir::new();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.com]\n  http:\n  - route: [{destination: {host: a.com}, weight: 30}, {destination: {host: b.com}, weight: 30}]\n    match: [{uri: {regex: '(['}}]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = meshgate(&[
        "translate",
        "--config",
        bad.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:8:"),
        "positioned errors: {stderr}"
    );
    assert!(
        !out_dir.exists(),
        "nothing is written for an invalid configuration"
    );

    let out = meshgate(&["translate", "--config", "gateway-config/quickstart"]);
    assert_eq!(out.status.code(), Some(2), "no --out and no --format json");
    let out = meshgate(&[
        "translate",
        "--config",
        "/nonexistent/x.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = meshgate(&[
        "translate",
        "--config",
        "gateway-config/quickstart",
        "--format",
        "json",
        "--labels",
        "novalue",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_dump_output() {
    let out = meshgate(&[
        "translate",
        "--config",
        "gateway-config/quickstart",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        ]
    );
    let listeners = &dump["configs"][1]["dynamic_listeners"];
    assert_eq!(listeners[0]["name"], "0.0.0.0_8080");
    let cluster = &dump["configs"][0]["dynamic_active_clusters"][0]["cluster"];
    assert_eq!(cluster["name"], "outbound|8000||local-app.internal");
    // The same input gives the same bytes.
    let again = meshgate(&[
        "translate",
        "--config",
        "gateway-config/quickstart",
        "--format",
        "json",
    ]);
    assert_eq!(out.stdout, again.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_translate_updates_a_live_envoy() {
    let first = EchoUpstream::start("first");
    let second = EchoUpstream::start("second");
    let port = free_port();
    let yaml = |version: &str, service: &str, echo: u16| {
        render(
            CONFIG,
            &[
                ("GW_PORT", port.to_string()),
                ("VERSION", version.to_string()),
                ("SERVICE", service.to_string()),
                ("ECHO", echo.to_string()),
            ],
        )
    };
    let gw = TranslatedEnvoy::start(
        &yaml("one", "first", first.port()),
        "istio=ingressgateway",
        1,
    );
    let c = http_client();
    assert_eq!(get(&c, port, "x", "/version").await.body, "one");
    assert_eq!(get(&c, port, "x", "/").await.upstream(), "first");
    let old_eds = std::fs::read_dir(gw.out_dir().join("eds")).unwrap().count();
    assert_eq!(old_eds, 1);

    // New route body, a different service: translate again into the same directory.
    let config = gw.dir.path().join("config/config.yaml");
    std::fs::write(&config, yaml("two", "second", second.port())).unwrap();
    translate(
        &config,
        &gw.out_dir(),
        gw.envoy.admin_port,
        "istio=ingressgateway",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(&c, port, "x", "/version").await;
        let up = get(&c, port, "x", "/").await;
        if v.body == "two" && up.status == 200 && up.upstream() == "second" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "envoy still serves {:?} / {:?}:\n{}",
            v.body,
            up.body,
            gw.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old cluster's endpoint file is gone, the new one is there.
    let eds: Vec<String> = std::fs::read_dir(gw.out_dir().join("eds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(eds.len(), 1, "{eds:?}");
    assert!(eds[0].contains("second"), "{eds:?}");
    gw.envoy.assert_no_rejections();
}
