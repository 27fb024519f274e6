//! ACME through the gateway: `meshgate gateway --config DIR` with two `AcmeCertificate`
//! resources obtains certificates from a real pebble on loopback, answering HTTP-01 on
//! its own HTTP listener and TLS-ALPN-01 on its own TLS listener, stores them (0600),
//! serves them to the Gateway servers naming their `credentialName`, and renews the
//! short-lived ones.
mod support;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/translate.rs"]
mod translating;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use support::gateway::GatewayProcess;
use support::*;
use tls_support::Pebble;

/// The certificate the gateway presents for `sni`, if the handshake verifies against
/// pebble's issuing root.
async fn served(port: u16, sni: &str, root: &str) -> Option<Vec<u8>> {
    let s = translating::tls_connect(port, sni, &[], Some(root))
        .await
        .ok()?;
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

fn stat(gw: &GatewayProcess, name: &str) -> u64 {
    let (_, body) = gw.admin("/stats");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_through_the_gateway_and_renewed() {
    // 9-second certificates: each is renewed about 6 s after issuance.
    let pebble = Pebble::start(Some(9));
    let echo = EchoUpstream::start("echo");
    let dir = TempDir::new();
    let storage = dir.path().join("acme");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let (http, tls) = (pebble.http01_port, pebble.tls_alpn_port);
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: [shop.example.test]
  - port: {{number: {tls}, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.test]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: {tls}, name: https-alpn, protocol: HTTPS}}
    hosts: [alpn.example.test]
    tls: {{mode: SIMPLE, credentialName: alpn-cert}}
---
apiVersion: meshgate.io/v1alpha1
kind: AcmeCertificate
metadata: {{name: shop, namespace: edge}}
spec:
  hosts: [shop.example.test]
  directory: {directory}
  directoryCaCertificates: {ca}
  email: ops@example.test
  acceptTermsOfService: true
  credentialName: shop-cert
  challenge: http-01
  storage: {storage}
---
apiVersion: meshgate.io/v1alpha1
kind: AcmeCertificate
metadata: {{name: alpn, namespace: edge}}
spec:
  hosts: [alpn.example.test]
  directory: {directory}
  directoryCaCertificates: {ca}
  acceptTermsOfService: true
  credentialName: alpn-cert
  challenge: tls-alpn-01
  storage: {storage}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: edge}}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: edge}}
spec:
  hosts: [shop.example.test, alpn.example.test]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: echo.internal}}}}]}}]
"#,
        directory = pebble.directory_url,
        ca = pebble.listener_ca.display(),
        storage = storage.display(),
        echo = echo.port(),
    );
    std::fs::write(config_dir.join("gateway.yaml"), yaml).unwrap();
    let check = translating::meshgate(&["validate", config_dir.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "validate: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config_dir.to_str().unwrap(),
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    let root = pebble.root_pem().await;
    let logs = || format!("{}\n--- pebble ---\n{}", gw.stderr(), pebble.log());

    // Both certificates arrive and are served by SNI, verified against pebble's root.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = std::collections::BTreeMap::new();
    for host in ["shop.example.test", "alpn.example.test"] {
        loop {
            if let Some(der) = served(tls, host, &root).await {
                first.insert(host, der);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: no certificate\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(stat(&gw, "acme.http01_answers") >= 1, "{}", logs());
    assert!(stat(&gw, "acme.tls_alpn_validations") >= 1, "{}", logs());
    // Requests are served with the issued certificate.
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve("shop.example.test", ([127, 0, 0, 1], tls).into())
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .get(format!("https://shop.example.test:{tls}/acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Stored with 0600.
    for credential in ["shop-cert", "alpn-cert"] {
        for file in ["tls.crt", "tls.key"] {
            let p = storage.join("certificates").join(credential).join(file);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    // Renewed: new handshakes get a new certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(tls, "shop.example.test", &root).await.as_ref() == first.get("shop.example.test") {
        assert!(Instant::now() < deadline, "not renewed\n{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(stat(&gw, "acme.issued") >= 3, "{}", logs());
}

#[test]
fn invalid_acme_resources_are_reported_with_positions() {
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join("acme.yaml"),
        r#"apiVersion: meshgate.io/v1alpha1
kind: AcmeCertificate
metadata: {name: bad, namespace: edge}
spec:
  hosts: ["*.example.test"]
  directory: http://insecure.example.test/dir
  credentialName: shop-cert
---
apiVersion: meshgate.io/v1alpha1
kind: AcmeCertificate
metadata: {name: twin, namespace: edge}
spec:
  hosts: [a.example.test]
  directory: letsencrypt-staging
  acceptTermsOfService: true
  credentialName: shop-cert
  challange: http-01
---
apiVersion: meshgate.io/v1
kind: AcmeCertificate
metadata: {name: old}
spec: {}
"#,
    )
    .unwrap();
    let out = translating::meshgate(&["validate", dir.path().to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for want in [
        "acme.yaml:5:",
        "wildcard names need the DNS-01 challenge",
        "spec.directory",
        "spec.acceptTermsOfService",
        "challange",
        "needs apiVersion meshgate.io/v1alpha1",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
