//! Client certificate verification details on the server side: CRLs, SPKI and hash pins,
//! the client identity handed to routing/logs, CA rotation through SDS, renegotiation
//! attempts, and unsupported settings refused with the field's name.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use meshgate::tls::server::{DownstreamTls, ServerSessionState};
use meshgate::tls::{SecretStore, TlsError};
use meshgate::xds::json::from_json;
use meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret,
};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tls_support::*;

fn server(ctx: Value, store: &SecretStore) -> Result<TlsTestServer, TlsError> {
    let tls = DownstreamTls::from_context(
        &from_json::<DownstreamTlsContext>(&ctx).unwrap(),
        store,
        &ServerSessionState::new(64)?,
        "test chain",
    )?;
    Ok(TlsTestServer::start(
        vec![Chain {
            server_names: vec![],
            tls,
        }],
        store.stats(),
    ))
}

async fn call(ca: &TestCa, port: u16, id: Option<&Leaf>) -> Result<Value, String> {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .resolve("srv.example.com", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .timeout(Duration::from_secs(5));
    if let Some(id) = id {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{}{}", id.cert, id.key).as_bytes()).unwrap(),
        );
    }
    let r = b
        .build()
        .unwrap()
        .get(format!("https://srv.example.com:{port}/"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    r.json().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_pins_identity_and_ca_rotation() {
    let dir = TempDir::new();
    let ca = TestCa::new("mutual CA");
    let (c, k) = ca.leaf(&["srv.example.com"]).write(dir.path(), "srv");
    let good = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/good", 1001);
    let revoked = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/revoked", 1002);
    let ca_path = ca.write_ca(dir.path(), "ca");
    let crl_path = dir.path().join("ca.crl");
    std::fs::write(&crl_path, ca.crl(&[1002])).unwrap();
    let cert = json!([{"certificate_chain": {"filename": c}, "private_key": {"filename": k}}]);

    // CRL: the revoked serial is refused, the other accepted; identity exposed.
    let store = SecretStore::default();
    let crl = server(
        json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert,
            "validation_context": {"trusted_ca": {"filename": ca_path}, "crl": {"filename": crl_path}}}}),
        &store,
    )
    .unwrap();
    let body = call(&ca, crl.port(), Some(&good)).await.unwrap();
    assert_eq!(
        body["peer"]["spiffe"],
        "spiffe://cluster.local/ns/a/sa/good"
    );
    assert_eq!(
        body["peer"]["uri"][0],
        "spiffe://cluster.local/ns/a/sa/good"
    );
    assert!(
        body["peer"]["subject"]
            .as_str()
            .unwrap()
            .contains("CN=client")
    );
    assert_eq!(body["peer"]["hash"].as_str().unwrap().len(), 64);
    assert!(
        call(&ca, crl.port(), Some(&revoked)).await.is_err(),
        "revoked client refused"
    );

    // Hash pin (Envoy's colon-separated upper-case form): only the pinned certificate passes.
    let good_hash = body["peer"]["hash"].as_str().unwrap().to_string();
    let colon = good_hash
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let pinned = server(
        json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert,
            "validation_context": {"trusted_ca": {"filename": ca_path}, "verify_certificate_hash": [colon]}}}),
        &SecretStore::default(),
    )
    .unwrap();
    assert!(call(&ca, pinned.port(), Some(&good)).await.is_ok());
    let other = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/good", 1003);
    assert!(
        call(&ca, pinned.port(), Some(&other)).await.is_err(),
        "unpinned certificate refused"
    );

    // SPKI pin.
    let spki = {
        let der = meshgate::tls::material::parse_certificates(other.cert.as_bytes(), "x").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(parsed.public_key().raw))
    };
    let spki_server = server(
        json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert,
            "validation_context": {"trusted_ca": {"filename": ca_path}, "verify_certificate_spki": [spki]}}}),
        &SecretStore::default(),
    )
    .unwrap();
    assert!(call(&ca, spki_server.port(), Some(&other)).await.is_ok());
    assert!(call(&ca, spki_server.port(), Some(&good)).await.is_err());

    // CA rotation through SDS: clients of the new CA are accepted after the update,
    // without rebuilding the server.
    let store = SecretStore::default();
    let new_ca = TestCa::new("next CA");
    let sds = |ca: &TestCa| {
        from_json::<Secret>(&json!({"name": "kubernetes://gw-cacert", "validation_context": {"trusted_ca": {"inline_string": ca.pem}}})).unwrap()
    };
    assert!(store.apply_sds(&[sds(&ca)]).is_empty());
    let rotating = server(
        json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert,
            "validation_context_sds_secret_config": {"name": "kubernetes://gw-cacert"}}}),
        &store,
    )
    .unwrap();
    let new_client = new_ca.leaf_serial("spiffe://cluster.local/ns/a/sa/new", 7);
    assert!(call(&ca, rotating.port(), Some(&good)).await.is_ok());
    assert!(call(&ca, rotating.port(), Some(&new_client)).await.is_err());
    assert!(store.apply_sds(&[sds(&new_ca)]).is_empty());
    assert!(call(&ca, rotating.port(), Some(&new_client)).await.is_ok());
    assert!(call(&ca, rotating.port(), Some(&good)).await.is_err());

    // A client asking to renegotiate (TLS 1.2 `R`) gets no new handshake; the server
    // keeps serving everyone else.
    let s = s_client_within(
        crl.port(),
        &[
            "-tls1_2",
            "-servername",
            "srv.example.com",
            "-cert",
            dir.path().join("srv.crt").to_str().unwrap(),
            "-key",
            dir.path().join("srv.key").to_str().unwrap(),
        ],
        "R\n",
        Duration::from_secs(3),
    );
    let after = s
        .output
        .split("RENEGOTIATING")
        .nth(1)
        .unwrap_or_else(|| panic!("no renegotiation attempt: {}", s.output));
    assert!(
        !after.contains("Cipher is") && !after.contains("Certificate chain"),
        "no second handshake: {after}"
    );
    assert!(call(&ca, crl.port(), Some(&good)).await.is_ok());
}

#[test]
fn unsupported_or_contradictory_contexts_are_refused_with_the_field() {
    let store = SecretStore::default();
    let sessions = ServerSessionState::new(8).unwrap();
    let ca = TestCa::new("x");
    let leaf = ca.leaf(&["a.example.com"]);
    let cert = json!([{"certificate_chain": {"inline_string": leaf.cert}, "private_key": {"inline_string": leaf.key}}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"common_tls_context": {}}), "no certificate"),
        (
            json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert}}),
            "require_client_certificate",
        ),
        (
            json!({"session_ticket_keys": {"keys": [{"inline_string": "x"}]}, "common_tls_context": {"tls_certificates": cert}}),
            "session_ticket_keys",
        ),
        (
            json!({"common_tls_context": {"tls_certificates": cert, "tls_params": {"cipher_suites": ["BOGUS"]}}}),
            "unknown cipher suite",
        ),
        (
            json!({"common_tls_context": {"tls_certificates": cert, "tls_params": {"tls_maximum_protocol_version": "TLSv1_1"}}}),
            "TLS 1.0 and 1.1",
        ),
        (
            json!({"common_tls_context": {"tls_certificates": cert, "validation_context": {"allow_expired_certificate": true}}}),
            "allow_expired_certificate",
        ),
        (
            json!({"common_tls_context": {"tls_certificates": [{"certificate_chain": {"inline_string": leaf.cert}, "private_key": {"inline_string": "junk"}}]}}),
            "no private key",
        ),
        (
            json!({"session_timeout": "10s", "common_tls_context": {"tls_certificates": cert}}),
            "session_timeout",
        ),
    ];
    for (ctx, want) in cases {
        let err = DownstreamTls::from_context(
            &from_json::<DownstreamTlsContext>(&ctx).unwrap(),
            &store,
            &sessions,
            "listener 0.0.0.0_443 chain 0",
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(err.contains("listener 0.0.0.0_443 chain 0"), "{err}");
    }
}
