//! TLS at the edge, judged side by side: the same Envoy TLS resources (DownstreamTlsContext
//! per filter chain matched on server names, certificates and the client CA delivered as
//! SDS secrets from files) are served by real Envoy 1.40 and by meshgate's TLS library
//! (composed the way the data plane uses it), and the same clients — openssl s_client,
//! curl --http2, reqwest with client certificates — must see the same behaviour.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use meshgate::tls::server::{DownstreamTls, ServerSessionState};
use meshgate::tls::{SecretStore, SecretStoreOptions};
use meshgate::xds::json::from_json;
use meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tls_support::*;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// Certificates, SDS secret files and TLS contexts shared by both servers.
struct Fixture {
    dir: TempDir,
    ca: TestCa,
    evil: TestCa,
    /// (server names, DownstreamTlsContext JSON) per filter chain.
    chains: Vec<(Vec<String>, Value)>,
    /// Secret resources (JSON), also written as SDS files for Envoy.
    secrets: Vec<Value>,
    a_files: (PathBuf, PathBuf),
}

fn sds_ref(dir: &Path, name: &str) -> Value {
    json!({"name": name, "sds_config": {"path_config_source": {"path": dir.join(format!("{name}.sds.json"))}, "resource_api_version": "V3"}})
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new();
        let d = dir.path();
        let ca = TestCa::new("meshgate test CA");
        let evil = TestCa::new("someone else's CA");
        let ca_path = ca.write_ca(d, "client-ca");
        let a_files = ca.leaf(&["a.example.com"]).write(d, "a");
        let wild = ca.leaf(&["*.wild.example.com"]).write(d, "wild");
        let m = ca
            .leaf(&[
                "m.example.com",
                "o.example.com",
                "v12.example.com",
                "v13.example.com",
            ])
            .write(d, "m");
        let cert_secret = |name: &str, (c, k): &(PathBuf, PathBuf)| json!({"name": name, "tls_certificate": {"certificate_chain": {"filename": c}, "private_key": {"filename": k}}});
        let secrets = vec![
            cert_secret("a-cert", &a_files),
            cert_secret("wild-cert", &wild),
            cert_secret("m-cert", &m),
            json!({"name": "client-ca", "validation_context": {"trusted_ca": {"filename": ca_path}}}),
        ];
        for s in &secrets {
            let name = s["name"].as_str().unwrap();
            let mut typed = s.clone();
            typed["@type"] =
                json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
            std::fs::write(
                d.join(format!("{name}.sds.json")),
                json!({"resources": [typed]}).to_string(),
            )
            .unwrap();
        }
        let alpn = json!(["h2", "http/1.1"]);
        let simple = |cert: &str| json!({"common_tls_context": {"alpn_protocols": alpn, "tls_certificate_sds_secret_configs": [sds_ref(d, cert)]}});
        let mutual = |require: bool, sans: Value| {
            json!({
                "require_client_certificate": require,
                "common_tls_context": {
                    "alpn_protocols": alpn,
                    "tls_certificate_sds_secret_configs": [sds_ref(d, "m-cert")],
                    "combined_validation_context": {
                        "default_validation_context": {"match_typed_subject_alt_names": sans},
                        "validation_context_sds_secret_config": sds_ref(d, "client-ca"),
                    },
                },
            })
        };
        let versions = |params: Value| json!({"common_tls_context": {"alpn_protocols": alpn, "tls_params": params, "tls_certificate_sds_secret_configs": [sds_ref(d, "m-cert")]}});
        let chains = vec![
            (vec!["a.example.com".to_string()], simple("a-cert")),
            (vec!["*.wild.example.com".to_string()], simple("wild-cert")),
            (
                vec!["m.example.com".to_string()],
                mutual(
                    true,
                    json!([{"san_type": "URI", "matcher": {"exact": CLIENT_ID}}]),
                ),
            ),
            (vec!["o.example.com".to_string()], mutual(false, json!([]))),
            (
                vec!["v12.example.com".to_string()],
                versions(json!({"tls_maximum_protocol_version": "TLSv1_2"})),
            ),
            (
                vec!["v13.example.com".to_string()],
                versions(json!({"tls_minimum_protocol_version": "TLSv1_3"})),
            ),
        ];
        Fixture {
            dir,
            ca,
            evil,
            chains,
            secrets,
            a_files,
        }
    }

    fn secrets(&self) -> Vec<Secret> {
        self.secrets
            .iter()
            .map(|s| from_json::<Secret>(s).unwrap())
            .collect()
    }

    /// meshgate's side: the secrets applied to a store (files watched), one
    /// `DownstreamTls` per chain.
    fn meshgate(&self) -> (TlsTestServer, SecretStore) {
        let store = SecretStore::new(SecretStoreOptions {
            poll_interval: Duration::from_millis(500),
            debounce: Duration::from_millis(50),
        });
        assert!(store.apply_sds(&self.secrets()).is_empty());
        let sessions = ServerSessionState::new(256).unwrap();
        let chains = self
            .chains
            .iter()
            .enumerate()
            .map(|(i, (names, ctx))| Chain {
                server_names: names.clone(),
                tls: DownstreamTls::from_context(
                    &from_json::<DownstreamTlsContext>(ctx).unwrap(),
                    &store,
                    &sessions,
                    &format!("chain {i}"),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            })
            .collect();
        (TlsTestServer::start(chains, store.stats()), store)
    }

    /// Envoy's side: one listener with the same filter chains, HTTP to an echo upstream
    /// with Istio's XFCC settings.
    fn envoy(&self, upstream: u16) -> (Envoy, u16) {
        let admin = free_port();
        let port = free_port();
        let hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "https",
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"subject": true, "cert": true, "uri": true, "dns": true},
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        });
        let chains: Vec<Value> = self
            .chains
            .iter()
            .map(|(names, ctx)| {
                let mut typed = ctx.clone();
                typed["@type"] = json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext");
                json!({
                    "filter_chain_match": {"server_names": names},
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": typed},
                    "filters": [hcm],
                })
            })
            .collect();
        let bootstrap = json!({
            "node": {"id": "tls-edge-test", "cluster": "tls-edge-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{
                    "name": "https",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                    "filter_chains": chains,
                }],
                "clusters": [{
                    "name": "echo", "type": "STATIC",
                    "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]},
                }],
            },
        });
        let path = self.dir.path().join("envoy.json");
        std::fs::write(&path, bootstrap.to_string()).unwrap();
        (Envoy::start(&path, admin, self.dir.path()), port)
    }
}

/// What a client saw: a status and the connection facts, or an error.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Ok { status: u16, http: String },
    Failed,
}

async fn get(client: &reqwest::Client, host: &str, port: u16) -> (Seen, Value) {
    let url = format!("https://{host}:{port}/path");
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let http = format!("{:?}", r.version());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (Seen::Ok { status, http }, body)
        }
        Err(_) => (Seen::Failed, Value::Null),
    }
}

/// A reqwest client resolving the test names to 127.0.0.1.
fn with_resolve(fx: &Fixture, identity: Option<&Leaf>, port: u16) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(fx.ca.pem.as_bytes()).unwrap()])
        .no_proxy()
        .timeout(Duration::from_secs(5));
    for h in [
        "a.example.com",
        "x.wild.example.com",
        "m.example.com",
        "o.example.com",
        "v12.example.com",
        "v13.example.com",
    ] {
        b = b.resolve(h, ([127, 0, 0, 1], port).into());
    }
    if let Some(id) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{}{}", id.cert, id.key).as_bytes()).unwrap(),
        );
    }
    b.build().unwrap()
}

fn xfcc_of(body: &Value, envoy: bool) -> Option<String> {
    if envoy {
        body["headers"]["x-forwarded-client-cert"][0]
            .as_str()
            .map(str::to_string)
    } else {
        body["xfcc"].as_str().map(str::to_string)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_behaviour_as_envoy_for_sni_mutual_versions_and_alpn() {
    let fx = Fixture::new();
    let echo = EchoUpstream::start("echo");
    let (envoy, envoy_port) = fx.envoy(echo.port());
    let (mesh, _store) = fx.meshgate();
    let client_ok = fx
        .ca
        .leaf_with("client", &["client.example.com"], &[CLIENT_ID], 0, 30);
    let client_other_san = fx.ca.leaf_with(
        "client",
        &[],
        &["spiffe://cluster.local/ns/default/sa/other"],
        0,
        30,
    );
    let client_evil = fx.evil.leaf_with("client", &[], &[CLIENT_ID], 0, 30);
    let client_expired = fx.ca.leaf_with("client", &[], &[CLIENT_ID], -30, -1);

    let mut xfcc = Vec::new();
    for (label, port, is_envoy) in [
        ("envoy", envoy_port, true),
        ("meshgate", mesh.port(), false),
    ] {
        let plain = with_resolve(&fx, None, port);
        // SNI picks the filter chain and its certificate; ALPN h2 negotiated.
        let (seen, _) = get(&plain, "a.example.com", port).await;
        assert_eq!(
            seen,
            Seen::Ok {
                status: 200,
                http: "HTTP/2.0".into()
            },
            "{label}: a.example.com"
        );
        let (seen, _) = get(&plain, "x.wild.example.com", port).await;
        assert_eq!(
            seen,
            Seen::Ok {
                status: 200,
                http: "HTTP/2.0".into()
            },
            "{label}: wildcard"
        );
        let s = s_client(port, &["-servername", "x.wild.example.com"], "");
        assert!(
            s.subject()
                .is_some_and(|l| l.contains("*.wild.example.com")),
            "{label}: {}",
            s.output
        );

        // Unknown SNI, no SNI, plain HTTP on the TLS port: the connection is reset.
        let s = s_client(port, &["-servername", "nope.example.com"], "");
        assert!(
            !s.handshake_done(),
            "{label}: unknown SNI must fail: {}",
            s.output
        );
        let s = s_client(port, &["-noservername"], "");
        assert!(
            !s.handshake_done(),
            "{label}: no SNI must fail: {}",
            s.output
        );
        let (ok, out) = curl(&[&format!("http://127.0.0.1:{port}/")]);
        assert!(
            !ok && (out.contains("reset") || out.contains("Empty reply")),
            "{label}: plain HTTP: {out}"
        );

        // curl --http2 with the CA.
        let (ok, out) = curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--cacert",
            fx.dir.path().join("client-ca.pem").to_str().unwrap(),
            "--resolve",
            &format!("a.example.com:{port}:127.0.0.1"),
            &format!("https://a.example.com:{port}/"),
        ]);
        assert!(ok && out.trim() == "2", "{label}: curl --http2: {out}");

        // h2load: many HTTP/2 streams over TLS with SNI.
        let (ok, out) = h2load(&[
            "-n",
            "200",
            "-c",
            "4",
            "-m",
            "10",
            &format!("--connect-to=127.0.0.1:{port}"),
            &format!("https://a.example.com:{port}/"),
        ]);
        assert!(
            ok && out.contains("200 succeeded") && out.contains("Application protocol: h2"),
            "{label}: h2load: {out}"
        );

        // ALPN: h2 chosen; an offer with nothing in common still completes without ALPN.
        let s = s_client(
            port,
            &["-servername", "a.example.com", "-alpn", "h2,http/1.1"],
            "",
        );
        assert_eq!(s.alpn().as_deref(), Some("h2"), "{label}: {}", s.output);
        let s = s_client(port, &["-servername", "a.example.com", "-alpn", "foo"], "");
        assert!(
            s.handshake_done() && s.alpn().is_none(),
            "{label}: ALPN foo: {}",
            s.output
        );

        // MUTUAL: a good client certificate passes and is described in XFCC.
        let (seen, body) = get(
            &with_resolve(&fx, Some(&client_ok), port),
            "m.example.com",
            port,
        )
        .await;
        assert_eq!(
            seen,
            Seen::Ok {
                status: 200,
                http: "HTTP/2.0".into()
            },
            "{label}: mutual ok"
        );
        xfcc.push(xfcc_of(&body, is_envoy).unwrap_or_else(|| panic!("{label}: no XFCC in {body}")));
        // Without a certificate, from another CA, with the wrong SAN, expired: refused.
        for (what, id) in [
            ("no cert", None),
            ("other SAN", Some(&client_other_san)),
            ("wrong CA", Some(&client_evil)),
            ("expired", Some(&client_expired)),
        ] {
            let (seen, _) = get(&with_resolve(&fx, id, port), "m.example.com", port).await;
            assert_eq!(seen, Seen::Failed, "{label}: mutual {what}");
        }
        // TLS 1.3 without a client certificate: the client's handshake completes, the
        // first read fails (the server's alert or EOF).
        let s = s_client(
            port,
            &["-servername", "m.example.com", "-tls1_3"],
            "GET / HTTP/1.1\r\nHost: m\r\n\r\n",
        );
        assert!(
            s.handshake_done(),
            "{label}: TLS 1.3 handshake completes client-side: {}",
            s.output
        );
        assert!(
            !s.output.contains("HTTP/1.1 200"),
            "{label}: no response without a certificate: {}",
            s.output
        );

        // OPTIONAL_MUTUAL: no certificate is fine, a bad one is not.
        let (seen, _) = get(&plain, "o.example.com", port).await;
        assert!(
            matches!(seen, Seen::Ok { status: 200, .. }),
            "{label}: optional without cert"
        );
        let (seen, _) = get(
            &with_resolve(&fx, Some(&client_ok), port),
            "o.example.com",
            port,
        )
        .await;
        assert!(
            matches!(seen, Seen::Ok { status: 200, .. }),
            "{label}: optional with cert"
        );
        let (seen, _) = get(
            &with_resolve(&fx, Some(&client_evil), port),
            "o.example.com",
            port,
        )
        .await;
        assert_eq!(
            seen,
            Seen::Failed,
            "{label}: optional with an untrusted cert"
        );

        // Protocol versions.
        let s = s_client(port, &["-servername", "v12.example.com"], "");
        assert_eq!(
            s.protocol().as_deref(),
            Some("TLSv1.2"),
            "{label}: {}",
            s.output
        );
        let s = s_client(port, &["-servername", "v12.example.com", "-tls1_3"], "");
        assert!(
            !s.handshake_done(),
            "{label}: max 1.2 refuses 1.3-only: {}",
            s.output
        );
        let s = s_client(port, &["-servername", "v13.example.com", "-tls1_2"], "");
        assert!(
            !s.handshake_done(),
            "{label}: min 1.3 refuses 1.2-only: {}",
            s.output
        );
        let s = s_client(port, &["-servername", "v13.example.com"], "");
        assert_eq!(
            s.protocol().as_deref(),
            Some("TLSv1.3"),
            "{label}: {}",
            s.output
        );
    }
    // The same client certificate yields the same x-forwarded-client-cert.
    assert_eq!(xfcc[0], xfcc[1], "XFCC: envoy vs meshgate");
    assert!(
        xfcc[1].contains(&format!("URI={CLIENT_ID}")) && xfcc[1].contains("DNS=client.example.com"),
        "{}",
        xfcc[1]
    );
    assert!(mesh.stats.get("tls.not_tls").unwrap() >= 1);
    assert!(mesh.stats.get("tls.peer_certificate_rejected").unwrap() >= 3);
    envoy.assert_no_rejections();
}

/// The certificate a fresh handshake to `port` with SNI `host` gets (its SHA-256).
async fn served_hash(ca: &TestCa, port: u16, host: &str) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(pem_der(&ca.pem)))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(meshgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from(host.to_string()).ok()?,
            tcp,
        )
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(meshgate::tls::PeerIdentity::from_chain(&[leaf])?.sha256_hex)
}

fn pem_der(pem: &str) -> Vec<u8> {
    meshgate::tls::material::parse_certificates(pem.as_bytes(), "ca").unwrap()[0].to_vec()
}

fn leaf_hash(l: &Leaf) -> String {
    let der = meshgate::tls::material::parse_certificates(l.cert.as_bytes(), "leaf").unwrap();
    meshgate::tls::PeerIdentity::from_chain(&der)
        .unwrap()
        .sha256_hex
}

/// Replaces a file atomically (write beside, rename over), as secret mounts do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_served(ca: &TestCa, port: u16, want: &str, label: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if served_hash(ca, port, "a.example.com").await.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: new certificate not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rotation_like_envoy_open_connections_undisturbed_half_pairs_rejected() {
    let fx = Fixture::new();
    let echo = EchoUpstream::start("echo");
    let (_envoy, envoy_port) = fx.envoy(echo.port());
    let (mesh, store) = fx.meshgate();
    let ports = [("envoy", envoy_port), ("meshgate", mesh.port())];

    // A keep-alive connection per server, opened before the rotation.
    let mut open = Vec::new();
    for (_, port) in ports {
        let c = with_resolve(&fx, None, port);
        let (seen, _) = get(&c, "a.example.com", port).await;
        assert!(matches!(seen, Seen::Ok { status: 200, .. }));
        open.push(c);
    }
    let first = served_hash(&fx.ca, mesh.port(), "a.example.com")
        .await
        .unwrap();

    // A new pair: key first, then certificate (the moment between is a mismatch).
    let next = fx.ca.leaf(&["a.example.com"]);
    let (cert_path, key_path) = &fx.a_files;
    replace(key_path, &next.key);
    replace(cert_path, &next.cert);
    let want = leaf_hash(&next);
    assert_ne!(want, first);
    for (label, port) in ports {
        wait_served(&fx.ca, port, &want, label).await;
    }
    // The connections opened before still work (same TLS session, no reconnect needed).
    for ((label, port), c) in ports.iter().zip(&open) {
        let (seen, _) = get(c, "a.example.com", *port).await;
        assert!(
            matches!(seen, Seen::Ok { status: 200, .. }),
            "{label}: open connection after rotation"
        );
    }
    assert!(store.stats().get("tls.secret_rotations").unwrap() >= 1);

    // Only the certificate replaced: the pair does not match; both keep serving the last
    // good pair, meshgate counts a rejection.
    let rejections = store.stats().get("tls.secret_rejections").unwrap();
    let half = fx.ca.leaf(&["a.example.com"]);
    replace(cert_path, &half.cert);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().get("tls.secret_rejections").unwrap() == rejections {
        assert!(
            tokio::time::Instant::now() < deadline,
            "half-replaced pair not rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (label, port) in ports {
        assert_eq!(
            served_hash(&fx.ca, port, "a.example.com").await.as_deref(),
            Some(want.as_str()),
            "{label}: keeps the last good pair"
        );
    }
    // Garbage: same.
    replace(cert_path, "not a certificate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (label, port) in ports {
        assert_eq!(
            served_hash(&fx.ca, port, "a.example.com").await.as_deref(),
            Some(want.as_str()),
            "{label}: garbage ignored"
        );
    }
}
