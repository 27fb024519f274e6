//! Everything TLS the translator emits for Istio's Gateway and DestinationRule TLS modes
//! (tests/testdata/translate/tls.yaml: SIMPLE from Secrets and files, MUTUAL,
//! OPTIONAL_MUTUAL, wildcard, PASSTHROUGH, origination SIMPLE/MUTUAL) is accepted by
//! meshgate's TLS layer: every Secret loads, every DownstreamTlsContext and
//! UpstreamTlsContext builds, and a handshake on each terminating chain succeeds.
mod support;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/translate.rs"]
mod translating;

use meshgate::tls::server::{DownstreamTls, ServerSessionState};
use meshgate::tls::{ClientHelloReader, Rewind, SecretStore, UpstreamTls};
use meshgate::xds::ProxyIdentity;
use meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use prost::Message;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_tls_resources_are_served_by_the_tls_layer() {
    let ca = translating::TestCa::new("meshgate test CA");
    let files = TempDir::new();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let leaf = |names: &[&str]| ca.issue(names);
    let (a, b, o, m, w, t) = (
        leaf(&["a.example.com"]),
        leaf(&["b.example.com"]),
        leaf(&["optional.example.com"]),
        leaf(&["mtls.example.com"]),
        leaf(&["*.wild.example.com"]),
        leaf(&["term.example.com"]),
    );
    let client = leaf(&["gateway-client", "spiffe://test/gateway"]);
    // The identity the MUTUAL server's subjectAltNames allow.
    let allowed = leaf(&["client.example.com", "spiffe://test/allowed"]);
    let block = |s: &str| translating::yaml_block(s, 4);
    let port = |_: &str| free_port().to_string();
    let vars = vec![
        ("HTTPS_PORT", port("https")),
        ("PASS_PORT", port("pass")),
        ("TERM_PORT", port("term")),
        ("TCP_PORT", port("tcp")),
        ("AUTO_PORT", port("auto")),
        ("ORIG_PORT", port("orig")),
        ("ECHO", port("echo")),
        ("PASS_1", port("p1")),
        ("PASS_2", port("p2")),
        ("APP_TLS", port("app")),
        ("SECURE", port("secure")),
        ("MSECURE", port("msecure")),
        ("B_CERT", write("b.crt", &b.cert)),
        ("B_KEY", write("b.key", &b.key)),
        ("O_CERT", write("o.crt", &o.cert)),
        ("O_KEY", write("o.key", &o.key)),
        ("CA_FILE", write("ca.crt", &ca.pem)),
        ("A_CERT_PEM", block(&a.cert)),
        ("A_KEY_PEM", block(&a.key)),
        ("M_CERT_PEM", block(&m.cert)),
        ("M_KEY_PEM", block(&m.key)),
        ("W_CERT_PEM", block(&w.cert)),
        ("W_KEY_PEM", block(&w.key)),
        ("T_CERT_PEM", block(&t.cert)),
        ("T_KEY_PEM", block(&t.key)),
        ("C_CERT_PEM", block(&client.cert)),
        ("C_KEY_PEM", block(&client.key)),
        ("CA_PEM", block(&ca.pem)),
    ];
    let yaml = translating::render(&translating::testdata("tls.yaml"), &vars);
    let config_path = files.path().join("tls.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let outcome = meshgate::config::load(&config_path);
    let labels = ProxyIdentity::parse_labels("istio=ingressgateway").unwrap();
    let mut proxy = ProxyIdentity::gateway("", labels);
    proxy.namespace.clear();
    let (registry, _) = meshgate::registry::Registry::from_config(&outcome.config);
    let set = meshgate::translate::gateway(&outcome.config, &registry, &proxy).resources;
    assert!(!set.secrets.is_empty());

    // Secrets: every one loads (Kubernetes Secrets inlined, files watched, system roots).
    let store = SecretStore::default();
    let errors = store.apply_sds(&set.secrets);
    assert!(errors.is_empty(), "{errors:?}");

    // Every terminating filter chain builds and completes a handshake for its SNI.
    let sessions = ServerSessionState::new(64).unwrap();
    let mut downstream = 0;
    for l in &set.listeners {
        for (i, fc) in l.filter_chains.iter().enumerate() {
            let Some(ts) = &fc.transport_socket else {
                continue;
            };
            let Some(meshgate::xds::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else { continue };
            let ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
            let tls = DownstreamTls::from_context(
                &ctx,
                &store,
                &sessions,
                &format!("{} chain {i}", l.name),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let sni = fc
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.server_names.first().cloned())
                .unwrap_or_else(|| "any.example.com".into())
                .replace('*', "x");
            handshake(
                &tls,
                &sni,
                &ca.pem,
                tls.client_auth != meshgate::tls::server::ClientAuth::None,
                &allowed,
            )
            .await;
            downstream += 1;
        }
    }
    assert!(downstream >= 6, "terminating chains: {downstream}");

    // Every upstream TLS context builds.
    let mut upstream = 0;
    for c in &set.clusters {
        let Some(ts) = &c.transport_socket else {
            continue;
        };
        let Some(
            meshgate::xds::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = &ts.config_type
        else {
            continue;
        };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        UpstreamTls::from_context(&ctx, &store, &c.name).unwrap_or_else(|e| panic!("{e}"));
        upstream += 1;
    }
    assert!(upstream >= 2, "upstream TLS clusters: {upstream}");
}

/// One in-memory handshake through the ClientHello reader and the chain's acceptor.
async fn handshake(
    tls: &DownstreamTls,
    sni: &str,
    ca_pem: &str,
    with_client_cert: bool,
    client: &translating::Leaf,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in meshgate::tls::material::parse_certificates(ca_pem.as_bytes(), "ca").unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(meshgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if with_client_cert {
        let chain =
            meshgate::tls::material::parse_certificates(client.cert.as_bytes(), "c").unwrap();
        let key = meshgate::tls::material::parse_private_key(client.key.as_bytes(), "k").unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let connect =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, client_io);
    let serve = async {
        let mut buf = bytes::BytesMut::new();
        let hello = ClientHelloReader::default()
            .read(&mut server_io, &mut buf)
            .await
            .unwrap();
        assert_eq!(hello.server_name.as_deref(), Some(sni));
        tls.accept(Rewind::new(buf.freeze(), server_io), Duration::from_secs(5))
            .await
    };
    let (c, s) = tokio::join!(connect, serve);
    let c = c.unwrap_or_else(|e| panic!("{sni}: client: {e}"));
    let s = s.unwrap_or_else(|e| panic!("{sni}: server: {e}"));
    assert_eq!(s.server_name.as_deref(), Some(sni));
    if with_client_cert {
        let peer = s.peer.expect("client identity");
        assert!(
            peer.uri_sans.contains(&"spiffe://test/allowed".to_string()),
            "{peer:?}"
        );
    }
    drop(c);
}
