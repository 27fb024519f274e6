//! Istio mesh mTLS (`ISTIO_MUTUAL`) at the gateway, against real Envoy 1.40 peers that
//! take their identity from `meshgate control-plane --ca-dir` over SDS:
//!
//! - origination: meshgate's gateway (standalone, `--mesh-certs`) reaches an Envoy
//!   "sidecar" through a DestinationRule ISTIO_MUTUAL; Envoy sees the gateway's SPIFFE
//!   id, Istio's SNI and ALPN; the gateway verifies Envoy's SPIFFE id (a wrong one is a
//!   503, never plain text); auto mTLS follows the endpoints' `tlsMode` label;
//! - termination: an Envoy client with a mesh certificate reaches a Gateway server with
//!   `tls.mode: ISTIO_MUTUAL`; the upstream gets Envoy's XFCC, byte for byte the same
//!   from meshgate's data plane and from real Envoy serving the same translation (from
//!   the control plane); a client without a mesh certificate is refused;
//! - fail closed: without `--mesh-certs`, the standalone gateway refuses to start and
//!   `meshgate translate --out` writes nothing;
//! - the same Envoy comparison for `meshgate translate --out --mesh-certs` files.
mod support;

use meshgate::ca::SpiffeId;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::gateway::{GatewayProcess, get, istio_http_gateway};
use support::mesh_identity::{
    MeshControlPlane, echo_hcm, mesh_cert_dir, mesh_downstream_socket, mesh_envoy,
    mesh_upstream_socket, static_cluster,
};
use support::*;

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/ingress";
const APP_ID: &str = "spiffe://cluster.local/ns/edge/sa/app";

fn gateway_identity() -> SpiffeId {
    SpiffeId::parse(GATEWAY_ID).unwrap()
}

fn app_identity() -> SpiffeId {
    SpiffeId::parse(APP_ID).unwrap()
}

/// The Envoy "sidecar" of `app`: an inbound listener on `port` that takes only mesh
/// mTLS with Istio's SNI and ALPN (as a sidecar's inbound chain matches them), in
/// front of the echo upstream.
fn sidecar(cp: &MeshControlPlane, ca_dir: &Path, work: &Path, port: u16, echo: u16) -> Envoy {
    let sni: Vec<String> = ["app", "wrong", "auto"]
        .iter()
        .map(|s| format!("outbound_.8080_._.{s}.edge.svc.cluster.local"))
        .collect();
    let listener = json!({
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
        }],
        "filter_chains": [{
            "filter_chain_match": {
                "server_names": sni,
                "application_protocols": ["istio-peer-exchange", "istio"]
            },
            "transport_socket": mesh_downstream_socket(),
            "filters": [echo_hcm(&work.join("access.log"))]
        }]
    });
    mesh_envoy(
        cp.tls_port,
        ca_dir,
        &app_identity(),
        work,
        vec![listener],
        vec![static_cluster("echo", echo, None)],
    )
}

/// The gateway's configuration: hosts routed to services of namespace edge.
/// `app` and `wrong` have a DestinationRule ISTIO_MUTUAL (`wrong` expecting another
/// identity); `auto` has none but its endpoint is labelled `tlsMode: istio`; `plain`
/// has neither and is the echo upstream itself.
fn origination_yaml(gw_port: u16, sidecar: u16, echo: u16) -> String {
    let mut y = istio_http_gateway("istio-system", gw_port);
    let service = |name: &str, port: u16, labels: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: edge}}\nspec:\n  hosts: [{name}.edge.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: app{labels}}}]\n---\n"
        )
    };
    let route = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  hosts: [{name}.example]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: {name}.edge.svc.cluster.local, port: {{number: 8080}}}}}}]\n---\n"
        )
    };
    for name in ["app", "wrong", "auto", "plain"] {
        y.push_str(&route(name));
    }
    y.push_str(&service("app", sidecar, ""));
    y.push_str(&service("wrong", sidecar, ""));
    y.push_str(&service(
        "auto",
        sidecar,
        ", labels: {security.istio.io/tlsMode: istio}",
    ));
    y.push_str(&service("plain", echo, ""));
    y.push_str("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: app, namespace: edge}\nspec:\n  host: app.edge.svc.cluster.local\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n---\n");
    y.push_str("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: wrong, namespace: edge}\nspec:\n  host: wrong.edge.svc.cluster.local\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/edge/sa/other\"]}}\n");
    y
}

fn xfcc(echo: &Value) -> Option<String> {
    echo["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .map(str::to_string)
}

/// `x` with the hex of its `Hash=` element replaced (it is per certificate).
fn without_hash(x: &str) -> String {
    x.split(';')
        .map(|e| {
            if e.starts_with("Hash=") {
                "Hash=…"
            } else {
                e
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn gateway_originates_istio_mutual_to_an_envoy_sidecar() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let echo = EchoUpstream::start("app");
    let sidecar_port = free_port();
    // Real Envoy as a second gateway, fed the same translation by the control plane
    // (with the same SPIFFE id as meshgate's).
    let envoy_gw_port = free_port();
    std::fs::create_dir_all(work.path().join("config")).unwrap();
    std::fs::write(
        work.path().join("config").join("mesh.yaml"),
        origination_yaml(envoy_gw_port, sidecar_port, echo.port()),
    )
    .unwrap();
    let cp = MeshControlPlane::start(work.path(), &ca_dir, &[]);
    let envoy = sidecar(
        &cp,
        &ca_dir,
        &work.path().join("sidecar"),
        sidecar_port,
        echo.port(),
    );
    let envoy_gw = envoy_gateway(&cp, &ca_dir, &work.path().join("envoy-gw"));

    let certs = mesh_cert_dir(&ca_dir, &gateway_identity(), &work.path().join("gw-certs"));
    let config = work.path().join("gw-config");
    std::fs::create_dir_all(&config).unwrap();
    let gw_port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        origination_yaml(gw_port, sidecar_port, echo.port()),
    )
    .unwrap();
    let gw_dir = work.path().join("gw");
    std::fs::create_dir_all(&gw_dir).unwrap();
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--mesh-certs",
            certs.to_str().unwrap(),
        ],
        &gw_dir,
    );
    wait_for_port(gw_port, Duration::from_secs(20));
    wait_until("Envoy's gateway listener", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", envoy_gw_port)).is_ok()
    });

    // ISTIO_MUTUAL by DestinationRule: Envoy verified the gateway's certificate and
    // puts its SPIFFE id into XFCC; the SNI and ALPN were Istio's (the chain matches
    // only them).
    let r = get(gw_port, "app.example", "/hello", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = r.echo();
    let x = xfcc(&seen).expect("XFCC from the sidecar");
    assert!(x.starts_with(&format!("By={APP_ID};Hash=")), "{x}");
    assert!(
        x.ends_with(&format!(";Subject=\"\";URI={GATEWAY_ID}")),
        "{x}"
    );
    let log_path = work.path().join("sidecar").join("access.log");
    wait_until("the sidecar's access log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| {
            l.contains(&format!(
                "sni=outbound_.8080_._.app.edge.svc.cluster.local peer={GATEWAY_ID}"
            ))
        })
    });

    // Auto mTLS: the endpoint labelled tlsMode istio gets mesh mTLS (through the
    // sidecar), the unlabelled one plain text (straight to the echo upstream).
    let r = get(gw_port, "auto.example", "/auto", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let x = xfcc(&r.echo()).expect("XFCC: the request went through the sidecar");
    assert!(x.contains(&format!("URI={GATEWAY_ID}")), "{x}");
    let r = get(gw_port, "plain.example", "/plain", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        xfcc(&r.echo()),
        None,
        "plain text reaches the echo directly"
    );

    // The gateway verifies the sidecar's SPIFFE id: one it does not expect is a 503
    // (an upstream connection failure, after Istio's default retries), and nothing
    // reaches the upstream.
    let before = echo.requests();
    let r = get(gw_port, "wrong.example", "/wrong", &[]);
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_eq!(echo.requests(), before);
    wait_until(
        "meshgate's access log of /wrong",
        Duration::from_secs(10),
        || {
            gw.stdout().lines().any(|l| {
                l.contains("\"path\":\"/wrong\"") && l.contains("\"response_flags\":\"UF,URX\"")
            })
        },
    );

    // Real Envoy on the same translation: the same answers, the same XFCC (but for the
    // hash of the gateway's own certificate).
    for host in ["app", "auto", "plain", "wrong"] {
        let path = format!("/{host}");
        let answers: Vec<(u16, Option<String>)> = [gw_port, envoy_gw_port]
            .iter()
            .map(|port| {
                let r = get(*port, &format!("{host}.example"), &path, &[]);
                let x = (r.status == 200).then(|| xfcc(&r.echo())).flatten();
                (r.status, x.as_deref().map(without_hash))
            })
            .collect();
        assert_eq!(answers[0], answers[1], "{host}");
    }
    envoy.assert_no_rejections();
    envoy_gw.assert_no_rejections();
}

/// A Gateway server on `port` with `tls.mode: ISTIO_MUTUAL`, routing to the echo
/// upstream in plain text.
fn termination_yaml(port: u16, echo: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mtls, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-mesh, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [mtls]
  http:
  - route: [{{destination: {{host: echo.internal, port: {{number: {echo}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: [echo.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {echo}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

/// A plain-text listener on `port` of the client Envoy, sending to `cluster`.
fn client_listener(name: &str, port: u16, cluster: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }
        }]}]
    })
}

#[test]
fn envoy_reaches_an_istio_mutual_gateway_server_and_xfcc_matches_envoy() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let echo = EchoUpstream::start("echo");

    // Real Envoy as the gateway, configured by the control plane from the same
    // translation, with its mesh identity over SDS.
    let envoy_gw_port = free_port();
    std::fs::create_dir_all(work.path().join("config")).unwrap();
    std::fs::write(
        work.path().join("config").join("mesh.yaml"),
        termination_yaml(envoy_gw_port, echo.port()),
    )
    .unwrap();
    let cp = MeshControlPlane::start(work.path(), &ca_dir, &[]);
    let envoy_gw = envoy_gateway(&cp, &ca_dir, &work.path().join("envoy-gw"));

    // meshgate's gateway, standalone, with certificates of the same CA.
    let certs = mesh_cert_dir(&ca_dir, &gateway_identity(), &work.path().join("gw-certs"));
    let config = work.path().join("gw-config");
    std::fs::create_dir_all(&config).unwrap();
    let gw_port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        termination_yaml(gw_port, echo.port()),
    )
    .unwrap();
    let gw_dir = work.path().join("gw");
    std::fs::create_dir_all(&gw_dir).unwrap();
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--mesh-certs",
            certs.to_str().unwrap(),
        ],
        &gw_dir,
    );
    wait_for_port(gw_port, Duration::from_secs(20));
    wait_until("Envoy's gateway listener", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", envoy_gw_port)).is_ok()
    });
    // And real Envoy on `meshgate translate --out` files, with the same mesh
    // certificate files as meshgate.
    let translated_port = free_port();
    let translated = translated_envoy(
        &termination_yaml(translated_port, echo.port()),
        &certs,
        &work.path().join("translated"),
    );

    // The client: an Envoy with a certificate of the mesh for `app`, ISTIO_MUTUAL-style
    // clusters to both gateways, verifying their SPIFFE id.
    let (to_meshgate, to_envoy, to_translated) = (free_port(), free_port(), free_port());
    let sni = "outbound_.443_._.gateway.istio-system.svc.cluster.local";
    let client_certs = mesh_cert_dir(&ca_dir, &app_identity(), &work.path().join("client-certs"));
    let client = mesh_envoy(
        cp.tls_port,
        &ca_dir,
        &app_identity(),
        &work.path().join("client"),
        vec![
            client_listener("to-meshgate", to_meshgate, "meshgate"),
            client_listener("to-envoy", to_envoy, "envoy"),
            client_listener("to-translated", to_translated, "translated"),
        ],
        vec![
            static_cluster(
                "meshgate",
                gw_port,
                Some(mesh_upstream_socket(&client_certs, sni, Some(GATEWAY_ID))),
            ),
            static_cluster(
                "envoy",
                envoy_gw_port,
                Some(mesh_upstream_socket(&client_certs, sni, Some(GATEWAY_ID))),
            ),
            static_cluster(
                "translated",
                translated_port,
                Some(mesh_upstream_socket(&client_certs, sni, Some(GATEWAY_ID))),
            ),
        ],
    );

    let mut answers = Vec::new();
    for port in [to_meshgate, to_envoy, to_translated] {
        let mut last = None;
        wait_until("the gateway answering", Duration::from_secs(30), || {
            let r = get(port, "echo.example", "/mesh", &[]);
            let ok = r.status == 200;
            last = Some(r);
            ok
        });
        let r = last.expect("polled");
        answers.push((r.status, xfcc(&r.echo())));
    }
    let meshgate_xfcc = answers[0].1.clone().expect("XFCC from meshgate");
    // Istio's gateway settings: By (the gateway), Hash, Cert, Subject, URI (the client).
    assert!(
        meshgate_xfcc.starts_with(&format!("By={GATEWAY_ID};Hash=")),
        "{meshgate_xfcc}"
    );
    assert!(meshgate_xfcc.contains(";Cert=\""), "{meshgate_xfcc}");
    assert!(
        meshgate_xfcc.ends_with(&format!(";Subject=\"\";URI={APP_ID}")),
        "{meshgate_xfcc}"
    );
    // The same client certificate through real Envoy serving the same translation: the
    // same answer and the same header, byte for byte.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);

    // meshgate's access log names the peer.
    wait_until("meshgate's access log", Duration::from_secs(10), || {
        gw.stdout()
            .contains(&format!("\"downstream_peer_uri_san\":\"{APP_ID}\""))
    });

    // The mesh certificate rotates without a restart: new files, and the next
    // handshake serves the new certificate.
    let old = served_leaf(gw_port, &client_certs);
    assert_eq!(old, first_pem(&certs.join("cert-chain.pem")));
    mesh_cert_dir(&ca_dir, &gateway_identity(), &certs);
    let new = first_pem(&certs.join("cert-chain.pem"));
    assert_ne!(old, new);
    wait_until(
        "the rotated certificate served",
        Duration::from_secs(20),
        || served_leaf(gw_port, &client_certs) == new,
    );

    // A client without a mesh certificate is refused at the handshake, by both.
    for port in [gw_port, envoy_gw_port, translated_port] {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "port {port}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "port {port}");
    }
    client.assert_no_rejections();
    envoy_gw.assert_no_rejections();
    translated.assert_no_rejections();
}

/// Real Envoy running `meshgate translate --out` files of `yaml`, with the mesh
/// identity of `certs` (`--mesh-certs`).
fn translated_envoy(yaml: &str, certs: &Path, work: &Path) -> Envoy {
    let config = work.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), yaml).unwrap();
    let out = work.join("out");
    let admin = free_port();
    let status = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["translate", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--admin-port", &admin.to_string()])
        .arg("--mesh-certs")
        .arg(certs)
        .status()
        .unwrap();
    assert!(status.success(), "meshgate translate failed");
    Envoy::start(&out.join("envoy.yaml"), admin, work)
}

/// The first certificate of a PEM file, as PEM.
fn first_pem(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let end = "-----END CERTIFICATE-----";
    let stop = text.find(end).expect("a certificate") + end.len();
    text[text.find("-----BEGIN CERTIFICATE-----").unwrap()..stop].to_string()
}

/// The leaf certificate (PEM) a server on `port` presents to a client with the mesh
/// certificate of `certs`; empty when the handshake fails.
fn served_leaf(port: u16, certs: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(certs.join("root-cert.pem"))
        .arg("-cert")
        .arg(certs.join("cert-chain.pem"))
        .arg("-key")
        .arg(certs.join("key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let end = "-----END CERTIFICATE-----";
    match (text.find("-----BEGIN CERTIFICATE-----"), text.find(end)) {
        (Some(a), Some(b)) if b > a => text[a..b + end.len()].to_string(),
        _ => String::new(),
    }
}

/// Real Envoy as the gateway `istio=ingressgateway` in istio-system, configured by the
/// control plane over mutual TLS (its identity: the gateway's).
fn envoy_gateway(cp: &MeshControlPlane, ca_dir: &Path, work: &Path) -> Envoy {
    std::fs::create_dir_all(work).unwrap();
    let identity = gateway_identity();
    let (chain, key) =
        support::mesh_identity::issue_files(ca_dir, &identity, &work.join("xds-cert"));
    let admin = free_port();
    let bootstrap = work.join("bootstrap.yaml");
    let status = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "envoy", "--xds"])
        .arg(format!("127.0.0.1:{}", cp.tls_port))
        .args(["--node-id", "ingress-1", "--namespace", "istio-system"])
        .args(["--labels", "istio=ingressgateway"])
        .args(["--admin-port", &admin.to_string()])
        .arg("--xds-root-cert")
        .arg(ca_dir.join("root-cert.pem"))
        .arg("--xds-cert-chain")
        .arg(&chain)
        .arg("--xds-key")
        .arg(&key)
        .arg("--out")
        .arg(&bootstrap)
        .status()
        .unwrap();
    assert!(status.success());
    Envoy::spawn(&bootstrap, admin, work)
}

#[test]
fn standalone_gateway_without_mesh_certs_refuses_istio_mutual() {
    let work = TempDir::new();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("mesh.yaml"),
        origination_yaml(free_port(), free_port(), free_port()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["gateway", "--config"])
        .arg(&config)
        .args(["--admin-address", &format!("127.0.0.1:{}", free_port())])
        .args(["--health-address", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--prometheus-address",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DestinationRule/edge/app: spec.trafficPolicy.tls.mode: cluster outbound|8080||app.edge.svc.cluster.local: ISTIO_MUTUAL"),
        "{err}"
    );
    assert!(
        err.contains("ServiceEntry/edge/auto: spec: cluster outbound|8080||auto.edge.svc.cluster.local: auto mTLS"),
        "{err}"
    );
    assert!(err.contains("--mesh-certs DIR"), "{err}");

    // So do Envoy files from `meshgate translate --out`.
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["translate", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(work.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DestinationRule/edge/app: spec.trafficPolicy.tls.mode: cluster outbound|8080||app.edge.svc.cluster.local: ISTIO_MUTUAL"),
        "{err}"
    );
    assert!(!work.path().join("out").join("envoy.yaml").exists());
}
