//! Upstream TLS origination (DestinationRule SIMPLE/MUTUAL, ServiceEntry egress) from
//! Envoy's `UpstreamTlsContext`, against a TLS server built from a `DownstreamTlsContext`
//! and against `openssl s_server`; and `credentialName` Secrets served end to end.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use meshgate::tls::credential::secrets_from_kubernetes;
use meshgate::tls::server::{DownstreamTls, ServerSessionState};
use meshgate::tls::{SecretStore, UpstreamTls};
use meshgate::xds::json::from_json;
use meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use tls_support::*;

const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/gateway";

fn upstream(
    ctx: serde_json::Value,
    store: &SecretStore,
) -> Result<UpstreamTls, meshgate::tls::TlsError> {
    UpstreamTls::from_context(
        &from_json::<UpstreamTlsContext>(&ctx).unwrap(),
        store,
        "cluster outbound|443||backend",
    )
}

/// Connects, sends one HTTP/1.1 request, returns the response head line or an error.
async fn request(tls: &UpstreamTls, port: u16, host: Option<&str>) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut s = tls.connect(tcp, host).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /x HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_mutual_origination() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend CA");
    let other_ca = TestCa::new("other CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let other_path = other_ca.write_ca(dir.path(), "other");
    let (srv_cert, srv_key) = ca
        .leaf_with(
            "backend",
            &["backend.shop.svc.cluster.local"],
            &[SERVER_ID],
            0,
            30,
        )
        .write(dir.path(), "srv");
    let (cli_cert, cli_key) = ca
        .leaf_with("gateway", &[], &[CLIENT_ID], 0, 30)
        .write(dir.path(), "cli");

    // The backend requires a client certificate from `ca` with the gateway's identity.
    let server_store = SecretStore::default();
    let backend_ctx = json!({
        "require_client_certificate": true,
        "common_tls_context": {
            "alpn_protocols": ["http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": srv_cert}, "private_key": {"filename": srv_key}}],
            "validation_context": {"trusted_ca": {"filename": ca_path}, "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": CLIENT_ID}}]},
        },
    });
    let backend = DownstreamTls::from_context(
        &from_json::<DownstreamTlsContext>(&backend_ctx).unwrap(),
        &server_store,
        &ServerSessionState::new(64).unwrap(),
        "backend",
    )
    .unwrap();
    let server = TlsTestServer::start(
        vec![Chain {
            server_names: vec![],
            tls: backend,
        }],
        server_store.stats(),
    );
    let port = server.port();

    let store = SecretStore::default();
    let mutual = |sans: serde_json::Value, trusted: &std::path::Path| {
        json!({
            "sni": "backend.shop.svc.cluster.local",
            "common_tls_context": {
                "alpn_protocols": ["http/1.1"],
                "tls_certificates": [{"certificate_chain": {"filename": cli_cert}, "private_key": {"filename": cli_key}}],
                "validation_context": {"trusted_ca": {"filename": trusted}, "match_typed_subject_alt_names": sans},
            },
        })
    };
    // MUTUAL with the right CA and SAN: the backend sees the gateway's SPIFFE identity.
    let ok = upstream(
        mutual(
            json!([{"san_type": "URI", "matcher": {"exact": SERVER_ID}}]),
            &ca_path,
        ),
        &store,
    )
    .unwrap();
    let resp = request(&ok, port, None).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(CLIENT_ID),
        "backend saw the client identity: {resp}"
    );
    assert!(
        resp.contains("backend.shop.svc.cluster.local"),
        "SNI sent: {resp}"
    );

    // Server SAN mismatch, untrusted server CA: refused by the gateway.
    let wrong_san = upstream(mutual(json!([{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/impostor"}}]), &ca_path), &store).unwrap();
    let err = request(&wrong_san, port, None).await.unwrap_err();
    assert!(err.contains("subject alternative name"), "{err}");
    let wrong_ca = upstream(mutual(json!([]), &other_path), &store).unwrap();
    assert!(request(&wrong_ca, port, None).await.is_err());

    // SIMPLE (no client certificate): the backend refuses the connection.
    let simple = upstream(
        json!({"sni": "backend.shop.svc.cluster.local", "common_tls_context": {"validation_context": {"trusted_ca": {"filename": ca_path}}}}),
        &store,
    )
    .unwrap();
    assert!(request(&simple, port, None).await.is_err());

    // An empty validation context (how Istio writes insecureSkipVerify) verifies nothing,
    // as in Envoy: the server, from a CA the gateway does not know, is accepted.
    let insecure = upstream(
        json!({"common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": cli_cert}, "private_key": {"filename": cli_key}}],
            "validation_context": {}}}),
        &store,
    )
    .unwrap();
    let resp = request(&insecure, port, None).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Envoy checks the host name only with auto_sni_san_validation.
    let checked = upstream(
        json!({"sni": "wrong.name.example", "auto_sni_san_validation": true, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": cli_cert}, "private_key": {"filename": cli_key}}],
            "validation_context": {"trusted_ca": {"filename": ca_path}}}}),
        &store,
    )
    .unwrap();
    let err = request(&checked, port, None).await.unwrap_err();
    assert!(err.to_lowercase().contains("not valid for name"), "{err}");

    // Unsupported fields are refused, not ignored.
    let e = upstream(json!({"allow_renegotiation": true}), &store)
        .unwrap_err()
        .to_string();
    assert!(e.contains("allow_renegotiation"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_to_openssl_s_server_with_default_upstream_versions() {
    let dir = TempDir::new();
    let ca = TestCa::new("egress CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let (c, k) = ca.leaf(&["api.example.com"]).write(dir.path(), "api");
    let port = free_port();
    let mut child = std::process::Command::new(peer_bin("openssl"))
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .args(["-www", "-naccept", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    let store = SecretStore::default();
    let tls = upstream(json!({"sni": "api.example.com", "common_tls_context": {"validation_context": {"trusted_ca": {"filename": ca_path}}}}), &store).unwrap();
    let resp = request(&tls, port, None).await;
    let _ = child.kill();
    let _ = child.wait();
    let resp = resp.unwrap();
    // s_server -www describes the session; Envoy's upstream default is at most TLS 1.2.
    assert!(resp.contains("HTTP/1.0 200"), "{resp}");
    assert!(resp.contains("Protocol  : TLSv1.2"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_name_secret_serves_and_rotates_through_sds() {
    let ca = TestCa::new("credential CA");
    let first = ca.leaf(&["shop.example.com"]);
    let data = |l: &Leaf| -> BTreeMap<String, Vec<u8>> {
        [
            ("tls.crt", &l.cert),
            ("tls.key", &l.key),
            ("ca.crt", &ca.pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    };
    let store = SecretStore::default();
    assert!(
        store
            .apply_sds(&secrets_from_kubernetes("shop-cred", &data(&first)).unwrap())
            .is_empty()
    );
    // What the translator emits for a Gateway server with `credentialName: shop-cred`, MUTUAL.
    let ctx = json!({
        "require_client_certificate": true,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": "kubernetes://shop-cred", "sds_config": {"ads": {}, "resource_api_version": "V3"}}],
            "combined_validation_context": {
                "default_validation_context": {},
                "validation_context_sds_secret_config": {"name": "kubernetes://shop-cred-cacert", "sds_config": {"ads": {}, "resource_api_version": "V3"}},
            },
        },
    });
    let tls = DownstreamTls::from_context(
        &from_json::<DownstreamTlsContext>(&ctx).unwrap(),
        &store,
        &ServerSessionState::new(64).unwrap(),
        "gw",
    )
    .unwrap();
    let server = TlsTestServer::start(
        vec![Chain {
            server_names: vec!["shop.example.com".into()],
            tls,
        }],
        store.stats(),
    );
    let client = ca.leaf_with("client", &[], &["spiffe://x/client"], 0, 30);
    let get = || async {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
            .identity(
                reqwest::Identity::from_pem(format!("{}{}", client.cert, client.key).as_bytes())
                    .unwrap(),
            )
            .resolve("shop.example.com", ([127, 0, 0, 1], server.port()).into())
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("https://shop.example.com:{}/", server.port()))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(get().await.unwrap(), 200);
    // A new snapshot with a rotated Secret: new handshakes use it; broken data is refused.
    let second = ca.leaf(&["shop.example.com"]);
    assert!(
        store
            .apply_sds(&secrets_from_kubernetes("shop-cred", &data(&second)).unwrap())
            .is_empty()
    );
    assert_eq!(get().await.unwrap(), 200);
    assert_eq!(store.stats().get("tls.secret_rotations"), Some(1));
    let mut broken = data(&second);
    broken.insert("tls.key".into(), first.key.as_bytes().to_vec());
    let errs = store.apply_sds(&secrets_from_kubernetes("shop-cred", &broken).unwrap());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(get().await.unwrap(), 200);
}
