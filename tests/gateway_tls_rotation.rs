//! Certificates rotating under a running gateway, without a restart and without
//! disturbing open connections: certificate files named by a Gateway, `credentialName`
//! Secrets in the config folder (`meshgate gateway --config DIR`), and SDS secrets from a
//! control plane (`meshgate gateway --xds`). Broken material is refused with a log line
//! and a count while the previous certificate keeps serving.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;
#[path = "support/translate.rs"]
mod translating;
use support::xds_mesh;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::GatewayProcess;
use support::*;
use translating::*;

/// The certificate the gateway on `port` presents for `sni` on a new connection.
async fn served(port: u16, sni: &str) -> Option<Vec<u8>> {
    let s = tls_connect(port, sni, &[], None).await.ok()?;
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

/// Waits (bounded) until new handshakes for `sni` get `want`.
async fn wait_served(port: u16, sni: &str, want: &[u8], what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(port, sni).await.as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "{what} not rotated:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_secrets_rotate_and_broken_material_is_refused() {
    let ca = TestCa::new("rotation CA");
    let echo = EchoUpstream::start("echo");
    let dir = TempDir::new();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let cert_path = dir.path().join("file.crt");
    let key_path = dir.path().join("file.key");
    let file_1 = ca.issue(&["file.example.com"]);
    std::fs::write(&cert_path, &file_1.cert).unwrap();
    std::fs::write(&key_path, &file_1.key).unwrap();
    let secret_1 = ca.issue(&["secret.example.com"]);
    let port = free_port();
    let config_file = config_dir.join("gateway.yaml");
    let write_config = |secret: &Leaf| {
        replace(
            &config_file,
            &file_and_secret_gateway_yaml(port, echo.port(), &cert_path, &key_path, secret),
        )
    };
    write_config(&secret_1);
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            config_dir.to_str().unwrap(),
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    wait_for_port(port, Duration::from_secs(10));
    let log = || gw.stderr();
    assert_eq!(
        served(port, "file.example.com").await,
        Some(der(&file_1.cert))
    );
    assert_eq!(
        served(port, "secret.example.com").await,
        Some(der(&secret_1.cert))
    );

    // A connection opened before the rotations, kept alive throughout.
    let hosts = ["file.example.com", "secret.example.com"];
    let kept = https_client(&ca.pem, &hosts, port, None);
    let r = kept
        .get(format!("https://file.example.com:{port}/before"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_certificate(&r), der(&file_1.cert));

    // Files: key and certificate replaced (each atomically).
    let file_2 = ca.issue(&["file.example.com"]);
    replace(&key_path, &file_2.key);
    replace(&cert_path, &file_2.cert);
    wait_served(
        port,
        "file.example.com",
        &der(&file_2.cert),
        "file certificate",
        log,
    )
    .await;

    // Secret: the YAML changes; the new Secret reaches new handshakes.
    let secret_2 = ca.issue(&["secret.example.com"]);
    write_config(&secret_2);
    wait_served(
        port,
        "secret.example.com",
        &der(&secret_2.cert),
        "secret",
        log,
    )
    .await;

    // The open connection carried on, on the certificate it started with.
    let r = kept
        .get(format!("https://file.example.com:{port}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_certificate(&r), der(&file_1.cert), "same connection");

    // Broken Secret (the key of another certificate): refused, the old one serves.
    let mismatched = Leaf {
        cert: ca.issue(&["secret.example.com"]).cert,
        key: ca.issue(&["secret.example.com"]).key,
    };
    write_config(&mismatched);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("rejected update") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log().contains("kubernetes://secret-cert"),
        "the log names the secret:\n{}",
        log()
    );
    assert_eq!(
        served(port, "secret.example.com").await,
        Some(der(&secret_2.cert))
    );

    // Garbage in a watched file: refused and counted, the old pair serves.
    let rejections = |gw: &GatewayProcess| stat(gw, "tls.secret_rejections");
    let before = rejections(&gw);
    replace(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejections(&gw) == before {
        assert!(Instant::now() < deadline, "garbage not refused:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log().contains("previous material keeps serving"),
        "{}",
        log()
    );
    assert_eq!(
        served(port, "file.example.com").await,
        Some(der(&file_2.cert))
    );
    // Repaired: served again.
    let file_3 = ca.issue(&["file.example.com"]);
    replace(&key_path, &file_3.key);
    replace(&cert_path, &file_3.cert);
    wait_served(
        port,
        "file.example.com",
        &der(&file_3.cert),
        "repaired file",
        log,
    )
    .await;
    assert!(stat(&gw, "tls.secret_rotations") >= 3);
}

fn stat(gw: &GatewayProcess, name: &str) -> u64 {
    let (_, body) = gw.admin("/stats");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}:\n{body}"))
}

/// Certificates delivered by SDS on the ADS stream of `meshgate gateway --xds` (delta
/// and state of the world): served, rotated by a secret-only push, and a broken secret
/// NACKed while the previous one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_secrets_from_a_control_plane_rotate() {
    use cp_support::*;
    use meshgate::controlplane::sample::{SampleGateway, SampleService, tls_secret};
    use meshgate::controlplane::{StaticSource, TypeSet};
    use meshgate::xds::{ResourceSet, TypeUrl};
    let echo = EchoUpstream::start("echo-a");
    let cert = |cn: &str| {
        let ck =
            rcgen::generate_simple_self_signed(vec!["a.example.com".into(), cn.into()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    };
    let tls_set = |port: u16, (c, k): &(String, String)| {
        let mut g = SampleGateway::new(port, vec![SampleService::new("a", vec![echo.addr])]);
        g.tls_secret = Some("gw-cert".into());
        let mut set = g.resources();
        set.secrets.push(tls_secret("gw-cert", c, k));
        set
    };
    let first = cert("first.example.com");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let ports = [("tls-sotw", free_port()), ("tls-delta", free_port())];
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            tls_set(port, &first),
            TypeSet::ALL,
        );
    }
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let dir = TempDir::new();
    let gateways: Vec<_> = ports
        .iter()
        .map(|(name, _)| {
            xds_mesh::XdsGateway::start(
                name,
                &cp.xds_addr(),
                &format!("proxy={name}"),
                "default",
                *name == "tls-delta",
                dir.path(),
            )
        })
        .collect();
    for ((_, port), g) in ports.iter().zip(&gateways) {
        wait_for_port(*port, Duration::from_secs(10));
        wait_served(*port, "a.example.com", &der(&first.0), "first", || g.log()).await;
    }
    // Snapshots compiled so far (listeners included): a secret-only push adds none.
    let compiled = |g: &xds_mesh::XdsGateway| {
        let (_, body) = g.admin("/stats").expect("admin answers");
        body.lines()
            .find_map(|l| l.strip_prefix("meshgate.config_updates: "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no meshgate.config_updates:\n{body}"))
    };
    let before: Vec<u64> = gateways.iter().map(compiled).collect();
    let second = cert("second.example.com");
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            tls_set(port, &second),
            TypeSet::of(&[TypeUrl::Secret]),
        );
    }
    for ((_, port), g) in ports.iter().zip(&gateways) {
        wait_served(
            *port,
            "a.example.com",
            &der(&second.0),
            "SDS secret",
            || g.log(),
        )
        .await;
    }
    let after: Vec<u64> = gateways.iter().map(compiled).collect();
    assert_eq!(
        after, before,
        "a secret rotation compiled the listeners again"
    );
    // A key that does not match the certificate: NACKed, the second one keeps serving.
    let broken = (second.0.clone(), cert("third.example.com").1);
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            tls_set(port, &broken),
            TypeSet::of(&[TypeUrl::Secret]),
        );
    }
    for ((_, port), g) in ports.iter().zip(&gateways) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.log().contains("(NACK)") {
            assert!(Instant::now() < deadline, "no NACK:\n{}", g.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(served(*port, "a.example.com").await, Some(der(&second.0)));
    }
    drop(cp);
}
