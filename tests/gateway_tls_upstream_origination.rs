//! TLS origination by the data plane, side by side with Envoy 1.40: clusters with an
//! UpstreamTlsContext connect to real TLS servers made at test time (HTTP/1.1 and HTTP/2
//! by ALPN), wrong SANs and untrusted CAs give 503, MUTUAL presents the client
//! certificate the upstream checks, and rotated CAs and client certificates reach new
//! connections without a restart.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use serde_json::{Value, json};
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;
use tls_support::{Leaf, TestCa};

// ---------------------------------------------------------------------------------------
// A TLS upstream
// ---------------------------------------------------------------------------------------

/// An HTTPS server on 127.0.0.1 (HTTP/1.1 and HTTP/2 by ALPN) answering every request with
/// JSON: the server name, ALPN and HTTP version it saw, and the SHA-256 of the client
/// certificate, if one was presented. With `client_ca`, a certificate signed by it is
/// required. HTTP/1.1 connections are closed after each response, so that every request
/// makes a new handshake.
struct TlsUpstream {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsUpstream {
    fn start(leaf: &Leaf, client_ca: Option<&str>) -> TlsUpstream {
        let provider = meshgate::tls::provider();
        let certs: Vec<_> = rustls_pemfile::certs(&mut leaf.cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut leaf.key.as_bytes())
            .unwrap()
            .unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            tokio::spawn(serve(acceptor, tcp));
                        }
                    }
                }
            });
        });
        TlsUpstream {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

async fn serve(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let (_, conn) = tls.get_ref();
    let sni = conn.server_name().unwrap_or("").to_string();
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    let client = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| hex::encode(sha2::Sha256::digest(c.as_ref())))
        .unwrap_or_default();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let body = json!({
            "sni": sni, "alpn": alpn, "client_cert": client,
            "version": format!("{:?}", req.version()),
            "scheme": req.uri().scheme_str(),
        })
        .to_string();
        async move {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().keep_alive(false);
    let _ = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
        .await;
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cert_sha256(leaf: &Leaf) -> String {
    let der = rustls_pemfile::certs(&mut leaf.cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    hex::encode(sha2::Sha256::digest(der.as_ref()))
}

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

fn file(p: &Path) -> Value {
    json!({"filename": p.display().to_string()})
}

/// An UpstreamTlsContext transport socket: SNI, trusted CA file, exact DNS SAN, optional
/// client certificate files, ALPN.
fn tls_socket(
    sni: &str,
    ca: &Path,
    san: &str,
    client: Option<(&Path, &Path)>,
    alpn: &[&str],
) -> Value {
    let mut common = json!({
        "alpn_protocols": alpn,
        "validation_context": {
            "trusted_ca": file(ca),
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}],
        },
    });
    if let Some((cert, key)) = client {
        common["tls_certificates"] =
            json!([{"certificate_chain": file(cert), "private_key": file(key)}]);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": sni,
        "common_tls_context": common,
    }})
}

fn h2_options() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}})
}

fn config(listen: u16, routes: &[(&str, &str)], clusters: Vec<Value>) -> Value {
    let routes: Vec<Value> = routes
        .iter()
        .map(
            |(prefix, cluster)| json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}}),
        )
        .collect();
    json!({
        "listeners": [hcm_listener("l", listen, "r", json!({}), vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}],
        "clusters": clusters,
    })
}

/// Runs `f` against Envoy and meshgate serving `make(port)`; returns the stats of
/// meshgate's cluster `stats_of` read after `f`.
fn both(make: impl Fn(u16) -> Value, mut f: impl FnMut(&str, u16), check: impl Fn(&InProcess)) {
    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = envoy_with(&make(envoy_port), &dir);
    envoy.assert_no_rejections();
    f("envoy", envoy_port);
    drop(envoy);
    let mesh_port = free_port();
    let mesh = InProcess::start(&make(mesh_port));
    f("meshgate", mesh_port);
    check(&mesh);
}

const API: &str = "api.example.com";

#[test]
fn origination_like_envoy() {
    let dir = TempDir::new();
    let ca = TestCa::new("upstream CA");
    let other = TestCa::new("other CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let server = ca.leaf(&[API]);
    let untrusted_server = other.leaf(&[API]);
    let client = ca.leaf(&["gateway.example.com"]);
    let (client_cert, client_key) = client.write(dir.path(), "client");
    let simple = TlsUpstream::start(&server, None);
    let untrusted = TlsUpstream::start(&untrusted_server, None);
    let mutual = TlsUpstream::start(&server, Some(ca.pem.as_str()));
    let make = |port| {
        config(
            port,
            &[
                ("/h1", "h1"),
                ("/h2", "h2"),
                ("/san", "wrong_san"),
                ("/ca", "untrusted"),
                ("/mtls", "mutual"),
                ("/nocert", "mutual_no_cert"),
            ],
            vec![
                static_cluster(
                    "h1",
                    &[simple.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, API, None, &[])}),
                ),
                static_cluster(
                    "h2",
                    &[simple.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, API, None, &["h2"]),
                           "typed_extension_protocol_options": h2_options()}),
                ),
                static_cluster(
                    "wrong_san",
                    &[simple.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, "other.example.com", None, &[])}),
                ),
                static_cluster(
                    "untrusted",
                    &[untrusted.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, API, None, &[])}),
                ),
                static_cluster(
                    "mutual",
                    &[mutual.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, API, Some((&client_cert, &client_key)), &[])}),
                ),
                static_cluster(
                    "mutual_no_cert",
                    &[mutual.port],
                    json!({"transport_socket": tls_socket(API, &ca_path, API, None, &[])}),
                ),
            ],
        )
    };
    let client_sha = cert_sha256(&client);
    both(
        make,
        |who, port| {
            let r = get(port, "a.example", "/h1", &[]);
            assert_eq!(r.status, 200, "{who} /h1: {}", r.body_str());
            assert_eq!(r.echo()["sni"], API, "{who}");
            assert_eq!(r.echo()["version"], "HTTP/1.1", "{who}");
            let r = get(port, "a.example", "/h2", &[]);
            assert_eq!(r.status, 200, "{who} /h2: {}", r.body_str());
            assert_eq!(r.echo()["version"], "HTTP/2.0", "{who}");
            assert_eq!(r.echo()["alpn"], "h2", "{who}");
            // The downstream request's scheme, not the upstream transport's.
            assert_eq!(
                r.echo()["scheme"],
                "http",
                "{who}: :scheme of HTTP/2 over TLS"
            );
            for path in ["/san", "/ca", "/nocert"] {
                let r = get(port, "a.example", path, &[]);
                assert_eq!(r.status, 503, "{who} {path}: {}", r.body_str());
                assert!(
                    r.body_str().starts_with("upstream connect error"),
                    "{who} {path}: {}",
                    r.body_str()
                );
            }
            let r = get(port, "a.example", "/mtls", &[]);
            assert_eq!(r.status, 200, "{who} /mtls: {}", r.body_str());
            assert_eq!(r.echo()["client_cert"], client_sha.as_str(), "{who}");
        },
        |mesh| {
            let stat = |s: &str| mesh.stat(s).unwrap_or(0);
            assert!(stat("cluster.wrong_san.ssl.fail_verify_san") >= 1);
            assert!(stat("cluster.untrusted.ssl.fail_verify_error") >= 1);
            for c in ["wrong_san", "untrusted", "mutual_no_cert"] {
                assert!(
                    stat(&format!("cluster.{c}.upstream_cx_connect_fail")) >= 1,
                    "{c}"
                );
                assert!(
                    stat(&format!("cluster.{c}.ssl.connection_error")) >= 1,
                    "{c}"
                );
            }
            assert!(stat("cluster.h1.ssl.handshake") >= 1);
            assert_eq!(stat("cluster.h1.upstream_cx_connect_fail"), 0);
        },
    );
}

/// Polls `f` until it returns true (bounded).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rotated_ca_and_client_certificate_reach_new_connections() {
    let dir = TempDir::new();
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    // The gateway trusts the old CA; the upstream's certificate is from the new one.
    let ca_path = old_ca.write_ca(dir.path(), "ca");
    let server = new_ca.leaf(&[API]);
    let upstream = TlsUpstream::start(&server, Some(new_ca.pem.as_str()));
    let first = new_ca.leaf(&["first.gateway.example.com"]);
    let second = new_ca.leaf(&["second.gateway.example.com"]);
    let (cert, key) = first.write(dir.path(), "client");
    let listen = free_port();
    let mesh = InProcess::start(&config(
        listen,
        &[("/", "api")],
        vec![static_cluster(
            "api",
            &[upstream.port],
            json!({"transport_socket": tls_socket(API, &ca_path, API, Some((&cert, &key)), &[])}),
        )],
    ));
    assert_eq!(get(listen, "a.example", "/", &[]).status, 503);
    // The CA file is replaced: new handshakes trust the new CA.
    new_ca.write_ca(dir.path(), "ca");
    eventually("the rotated CA is trusted", || {
        get(listen, "a.example", "/", &[]).status == 200
    });
    let r = get(listen, "a.example", "/", &[]);
    assert_eq!(r.echo()["client_cert"], cert_sha256(&first).as_str());
    // The client certificate files are replaced: the next connection presents it.
    second.write(dir.path(), "client");
    eventually("the rotated client certificate is presented", || {
        let r = get(listen, "a.example", "/", &[]);
        r.status == 200 && r.echo()["client_cert"] == cert_sha256(&second).as_str()
    });
    assert!(mesh.stat("cluster.api.ssl.handshake").unwrap_or(0) >= 2);
}

#[test]
fn sds_secrets_rotate_and_a_missing_secret_fails_like_a_connect_failure() {
    let ca = TestCa::new("mesh CA");
    let other = TestCa::new("next mesh CA");
    let server = ca.leaf(&[API]);
    let next_server = other.leaf(&[API]);
    let upstream = TlsUpstream::start(&server, None);
    let next_upstream = TlsUpstream::start(&next_server, None);
    let socket = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": API,
        "common_tls_context": {"combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": API}}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}});
    let root = |ca: &TestCa| json!({"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": ca.pem}}});
    let listen = free_port();
    let resources = |secrets: Vec<Value>| {
        let mut r = config(
            listen,
            &[("/now", "now"), ("/next", "next")],
            vec![
                static_cluster("now", &[upstream.port], json!({"transport_socket": socket})),
                static_cluster(
                    "next",
                    &[next_upstream.port],
                    json!({"transport_socket": socket}),
                ),
            ],
        );
        r["secrets"] = json!(secrets);
        r
    };
    // No ROOTCA yet: connections fail, 503 with Envoy's connect-failure body.
    let mesh = InProcess::start(&resources(vec![]));
    let r = get(listen, "a.example", "/now", &[]);
    assert_eq!(r.status, 503);
    assert!(r.body_str().starts_with("upstream connect error"));
    mesh.apply(&resources(vec![root(&ca)]), "2").unwrap();
    assert_eq!(get(listen, "a.example", "/now", &[]).status, 200);
    assert_eq!(get(listen, "a.example", "/next", &[]).status, 503);
    // The secret rotates to the next CA: no other resource changes.
    mesh.apply(&resources(vec![root(&other)]), "3").unwrap();
    assert_eq!(get(listen, "a.example", "/next", &[]).status, 200);
    assert_eq!(get(listen, "a.example", "/now", &[]).status, 503);
}

const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/gateway";

/// An UpstreamTlsContext transport socket from its JSON.
fn upstream_tls(ctx: Value) -> Value {
    let mut typed = ctx;
    typed["@type"] =
        json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
    json!({"name": "envoy.transport_sockets.tls", "typed_config": typed})
}

/// Mesh-style origination: the gateway presents a SPIFFE identity to a backend that
/// requires a client certificate from the mesh CA, and checks the backend's own SPIFFE
/// identity; a wrong server identity, an untrusted server and a missing client
/// certificate all end in 503, counted per cluster.
#[test]
fn mutual_origination_presents_the_gateway_identity_and_checks_the_server_like_envoy() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend CA");
    let other_ca = TestCa::new("other CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let other_path = other_ca.write_ca(dir.path(), "other");
    let server = ca.leaf_with(
        "backend",
        &["backend.shop.svc.cluster.local"],
        &[SERVER_ID],
        0,
        30,
    );
    let gateway_cert = ca.leaf_with("gateway", &[], &[CLIENT_ID], 0, 30);
    let (cli_cert, cli_key) = gateway_cert.write(dir.path(), "cli");
    let backend = TlsUpstream::start(&server, Some(ca.pem.as_str()));
    let mutual = |sans: Value, trusted: &Path, with_cert: bool| {
        let mut common = json!({
            "validation_context": {"trusted_ca": file(trusted), "match_typed_subject_alt_names": sans},
        });
        if with_cert {
            common["tls_certificates"] =
                json!([{"certificate_chain": file(&cli_cert), "private_key": file(&cli_key)}]);
        }
        upstream_tls(json!({"sni": "backend.shop.svc.cluster.local", "common_tls_context": common}))
    };
    let spiffe = |id: &str| json!([{"san_type": "URI", "matcher": {"exact": id}}]);
    let make = |port| {
        config(
            port,
            &[
                ("/ok", "ok"),
                ("/impostor", "impostor"),
                ("/untrusted", "untrusted"),
                ("/no-cert", "no_cert"),
            ],
            vec![
                static_cluster(
                    "ok",
                    &[backend.port],
                    json!({"transport_socket": mutual(spiffe(SERVER_ID), &ca_path, true)}),
                ),
                static_cluster(
                    "impostor",
                    &[backend.port],
                    json!({"transport_socket": mutual(spiffe("spiffe://cluster.local/ns/shop/sa/impostor"), &ca_path, true)}),
                ),
                static_cluster(
                    "untrusted",
                    &[backend.port],
                    json!({"transport_socket": mutual(json!([]), &other_path, true)}),
                ),
                static_cluster(
                    "no_cert",
                    &[backend.port],
                    json!({"transport_socket": mutual(spiffe(SERVER_ID), &ca_path, false)}),
                ),
            ],
        )
    };
    let gateway_sha = cert_sha256(&gateway_cert);
    both(
        make,
        |who, port| {
            let r = get(port, "a.example", "/ok", &[]);
            assert_eq!(r.status, 200, "{who}: {}", r.body_str());
            assert_eq!(r.echo()["sni"], "backend.shop.svc.cluster.local", "{who}");
            assert_eq!(
                r.echo()["client_cert"],
                gateway_sha.as_str(),
                "{who}: the backend saw the gateway's certificate"
            );
            for path in ["/impostor", "/untrusted", "/no-cert"] {
                let r = get(port, "a.example", path, &[]);
                assert_eq!(r.status, 503, "{who} {path}: {}", r.body_str());
                assert!(
                    r.body_str().starts_with("upstream connect error"),
                    "{who} {path}: {}",
                    r.body_str()
                );
            }
        },
        |mesh| {
            let stat = |s: &str| mesh.stat(s).unwrap_or(0);
            assert!(stat("cluster.impostor.ssl.fail_verify_san") >= 1);
            assert!(stat("cluster.untrusted.ssl.fail_verify_error") >= 1);
            assert!(stat("cluster.no_cert.ssl.connection_error") >= 1);
            assert!(stat("cluster.ok.ssl.handshake") >= 1);
        },
    );
}

/// Envoy checks the server's name against the SNI only with `auto_sni_san_validation`;
/// settings meshgate cannot honour are refused with the field's name.
#[test]
fn auto_sni_san_validation_and_refused_fields() {
    let dir = TempDir::new();
    let ca = TestCa::new("upstream CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let upstream = TlsUpstream::start(&ca.leaf(&[API]), None);
    let checked = |sni: &str| {
        upstream_tls(json!({"sni": sni, "auto_sni_san_validation": true,
            "common_tls_context": {"validation_context": {"trusted_ca": file(&ca_path)}}}))
    };
    let listen = free_port();
    let resources = |extra: Value| {
        config(
            listen,
            &[("/right", "right"), ("/wrong", "wrong")],
            vec![
                static_cluster(
                    "right",
                    &[upstream.port],
                    json!({"transport_socket": checked(API)}),
                ),
                static_cluster(
                    "wrong",
                    &[upstream.port],
                    json!({"transport_socket": checked("wrong.name.example")}),
                ),
                static_cluster("extra", &[upstream.port], extra),
            ],
        )
    };
    let mesh = InProcess::start(&resources(json!({})));
    assert_eq!(get(listen, "a.example", "/right", &[]).status, 200);
    let r = get(listen, "a.example", "/wrong", &[]);
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert!(
        mesh.stat("cluster.wrong.ssl.fail_verify_error")
            .unwrap_or(0)
            + mesh.stat("cluster.wrong.ssl.fail_verify_san").unwrap_or(0)
            >= 1
    );
    let err = mesh
        .apply(
            &resources(
                json!({"transport_socket": upstream_tls(json!({"allow_renegotiation": true}))}),
            ),
            "2",
        )
        .unwrap_err();
    assert!(err.contains("allow_renegotiation"), "{err}");
    assert!(err.contains("extra"), "the cluster is named: {err}");
}

/// Origination to `openssl s_server`, which describes the session it got: without
/// version settings both proxies offer at most TLS 1.2 upstream (Envoy's default).
#[test]
fn origination_to_openssl_s_server_with_default_upstream_versions_like_envoy() {
    let dir = TempDir::new();
    let ca = TestCa::new("egress CA");
    let ca_path = ca.write_ca(dir.path(), "ca");
    let (c, k) = ca.leaf(&[API]).write(dir.path(), "api");
    let port = free_port();
    let mut child = std::process::Command::new(peer_bin("openssl"))
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .args(["-www", "-quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    let make = |listen| {
        config(
            listen,
            &[("/", "api")],
            vec![static_cluster(
                "api",
                &[port],
                json!({"transport_socket": upstream_tls(json!({"sni": API, "common_tls_context": {"validation_context": {"trusted_ca": file(&ca_path)}}}))}),
            )],
        )
    };
    let mut seen = Vec::new();
    both(
        make,
        |who, listen| {
            let r = get(listen, "a.example", "/", &[]);
            seen.push((who.to_string(), r.status, r.body_str()));
        },
        |_| {},
    );
    let _ = child.kill();
    let _ = child.wait();
    for (who, status, body) in seen {
        // s_server -www answers HTTP/1.0 with a page describing the session.
        assert_eq!(status, 200, "{who}: {body}");
        assert!(body.contains("Protocol  : TLSv1.2"), "{who}: {body}");
    }
}

/// gateway-config/egress-tls-origination as a user runs it: certificates from
/// `meshgate certs dev`, the Istio YAML translated for the egress gateway, plain HTTP in
/// and TLS (SIMPLE, MUTUAL) out.
#[test]
fn egress_tls_origination_example() {
    let dir = TempDir::new();
    let certs = dir.path().join("certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args([
            "certs",
            "dev",
            "--hosts",
            "api.example.com,mtls.example.com",
            "--secret",
            "egress-client",
            "--namespace",
            "egress",
        ])
        .arg("--out")
        .arg(&certs)
        .arg("--ca-dir")
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let leaf = |stem: &str| Leaf {
        cert: read(&format!("{stem}.crt")),
        key: read(&format!("{stem}.key")),
    };
    let ca = read("ca.crt");
    let api = TlsUpstream::start(&leaf("api.example.com"), None);
    let mtls = TlsUpstream::start(&leaf("mtls.example.com"), Some(ca.as_str()));
    let listen = free_port();
    let example = repo_root().join("gateway-config/egress-tls-origination");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for f in ["external.yaml", "gateway.yaml"] {
        let text = std::fs::read_to_string(example.join(f))
            .unwrap()
            .replace("9443", &api.port.to_string())
            .replace("9444", &mtls.port.to_string())
            .replace("8080", &listen.to_string());
        std::fs::write(config.join(f), text).unwrap();
    }
    std::fs::copy(
        certs.join("egress-client.secret.yaml"),
        config.join("egress-client.secret.yaml"),
    )
    .unwrap();
    let outcome = meshgate::config::load(&config);
    assert!(
        outcome.diagnostics.is_empty(),
        "{:?}",
        outcome
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    );
    let labels = meshgate::xds::ProxyIdentity::parse_labels("istio=egressgateway").unwrap();
    let ns = meshgate::translate::default_namespace(&outcome.config, &labels);
    let proxy = meshgate::xds::ProxyIdentity::gateway(&ns, labels);
    let (registry, _) = meshgate::registry::Registry::from_config(&outcome.config);
    let t = meshgate::translate::gateway(&outcome.config, &registry, &proxy);
    assert!(
        t.diagnostics.is_empty(),
        "{:?}",
        t.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    );
    let _mesh = InProcess::start_set(t.resources);
    let r = get(listen, "api.example.com", "/", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.echo()["sni"], "api.example.com");
    assert_eq!(r.echo()["client_cert"], "");
    let r = get(listen, "mtls.example.com", "/", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.echo()["sni"], "mtls.example.com");
    assert_ne!(
        r.echo()["client_cert"],
        "",
        "the Secret's certificate is presented"
    );
}
