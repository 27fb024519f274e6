//! TLS termination by `meshgate gateway --config DIR`, compared with a real Envoy 1.40
//! serving what `meshgate translate` makes of the same Istio YAML: the certificate each
//! SNI gets, no SNI and unknown SNI, ALPN and HTTP/2 over TLS, minimum/maximum protocol
//! versions and cipher suites, MUTUAL and OPTIONAL_MUTUAL with `x-forwarded-client-cert`,
//! and `httpsRedirect`. Clients: rustls, curl --http2, openssl s_client.
mod support;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/translate.rs"]
mod translating;

use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use support::gateway::{GatewayProcess, InProcess, envoy_with, static_cluster};
use support::*;
use translating::*;

/// Certificates made for one run, and the files some servers read.
struct Material {
    ca: TestCa,
    leaves: Vec<(&'static str, Leaf)>,
    client_allowed: Leaf,
    client_other: Leaf,
    files: TempDir,
}

impl Material {
    fn new() -> Material {
        let ca = TestCa::new("termination CA");
        let leaves = vec![
            ("a", ca.issue(&["a.example.com"])),
            ("b", ca.issue(&["b.example.com"])),
            ("wild", ca.issue(&["*.wild.example.com"])),
            ("mtls", ca.issue(&["mtls.example.com"])),
            ("optional", ca.issue(&["optional.example.com"])),
        ];
        Material {
            client_allowed: ca.issue(&["client.example.com", "spiffe://test/allowed"]),
            client_other: ca.issue(&["other.example.com", "spiffe://test/other"]),
            ca,
            leaves,
            files: TempDir::new(),
        }
    }

    fn leaf(&self, name: &str) -> &Leaf {
        &self
            .leaves
            .iter()
            .find(|(n, _)| *n == name)
            .expect("leaf")
            .1
    }

    /// Which of the run's certificates `der` is.
    fn which(&self, der_bytes: &[u8]) -> String {
        self.leaves
            .iter()
            .find(|(_, l)| der(&l.cert) == der_bytes)
            .map_or_else(|| "unknown certificate".into(), |(n, _)| n.to_string())
    }

    fn render(&self, https: u16, http: u16, echo: u16) -> String {
        let write = |name: &str, text: &str| {
            let p = self.files.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (a, b, w, m, o) = (
            self.leaf("a"),
            self.leaf("b"),
            self.leaf("wild"),
            self.leaf("mtls"),
            self.leaf("optional"),
        );
        render(
            &std::fs::read_to_string(
                repo_root().join("tests/testdata/gateway_tls/termination.yaml"),
            )
            .unwrap(),
            &[
                ("HTTPS_PORT", https.to_string()),
                ("HTTP_PORT", http.to_string()),
                ("ECHO", echo.to_string()),
                ("A_CERT_B64", b64(&a.cert)),
                ("A_KEY_B64", b64(&a.key)),
                ("B_CERT", write("b.crt", &b.cert)),
                ("B_KEY", write("b.key", &b.key)),
                ("O_CERT", write("o.crt", &o.cert)),
                ("O_KEY", write("o.key", &o.key)),
                ("CA_FILE", write("ca.crt", &self.ca.pem)),
                ("W_CERT_PEM", yaml_block(&w.cert, 4)),
                ("W_KEY_PEM", yaml_block(&w.key, 4)),
                ("M_CERT_PEM", yaml_block(&m.cert, 4)),
                ("M_KEY_PEM", yaml_block(&m.key, 4)),
                ("CA_PEM", yaml_block(&self.ca.pem, 4)),
            ],
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How a client connects: SNI (None: an IP address, so no SNI is sent), ALPN offer,
/// TLS 1.2 only, cipher suites, client certificate.
#[derive(Default, Clone)]
struct Probe<'a> {
    sni: Option<&'a str>,
    alpn: &'a [&'a str],
    tls12_only: bool,
    tls12_cipher: Option<rustls::CipherSuite>,
    identity: Option<&'a Leaf>,
}

/// Connects with `probe`, sends a GET over HTTP/1.1 and describes what happened:
/// `cert=NAME alpn=.. version=.. status=..`, or `refused` when the handshake or the
/// first exchange failed (a MUTUAL server over TLS 1.3 refuses after the client's
/// handshake has completed).
async fn probe(m: &Material, port: u16, p: Probe<'_>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut prov = (*provider()).clone();
    if let Some(cs) = p.tls12_cipher {
        prov.cipher_suites.retain(|s| s.suite() == cs);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if p.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::ALL_VERSIONS
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&m.ca.pem) {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(prov))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match p.identity {
        Some(l) => builder
            .with_client_auth_cert(
                pem_certs(&l.cert),
                rustls_pemfile::private_key(&mut l.key.as_bytes())
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = p.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    if p.sni.is_none() {
        // Without SNI the name cannot be checked; only the handshake's outcome matters.
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyServer(provider())));
    }
    let name = match p.sni {
        Some(h) => rustls::pki_types::ServerName::try_from(h.to_string()).unwrap(),
        None => rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let handshake = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connector.connect(name, tcp),
    )
    .await
    .expect("handshake bounded");
    let Ok(mut tls) = handshake else {
        return "refused".into();
    };
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| m.which(c))
        .unwrap_or_default();
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_else(|| "-".into());
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "?",
    };
    if alpn == "h2" {
        return format!("cert={cert} alpn=h2 version={version}");
    }
    let host = p.sni.unwrap_or("a.example.com");
    let req = format!("GET /probe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if tls.write_all(req.as_bytes()).await.is_err() {
        return "refused".into();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    match text.split(' ').nth(1) {
        Some(status) if text.starts_with("HTTP/1.1") => {
            format!("cert={cert} alpn={alpn} version={version} status={status}")
        }
        _ => "refused".into(),
    }
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Everything observed of one gateway, as `case -> outcome` lines.
async fn observe(m: &Material, https: u16, http: u16) -> BTreeMap<&'static str, String> {
    let mut o = BTreeMap::new();
    let base = Probe::default();
    let with = |sni: &'static str| Probe {
        sni: Some(sni),
        ..base.clone()
    };
    for (case, sni) in [
        ("sni a", "a.example.com"),
        ("sni b", "b.example.com"),
        ("sni wildcard", "x.wild.example.com"),
        ("sni deep wildcard", "x.y.wild.example.com"),
        ("sni unknown", "unknown.example.com"),
        ("sni wildcard parent", "wild.example.com"),
        ("sni mixed case", "A.Example.COM"),
    ] {
        o.insert(case, probe(m, https, with(sni)).await);
    }
    o.insert("no sni", probe(m, https, base.clone()).await);
    let alpn_h2: &[&str] = &["h2", "http/1.1"];
    let alpn_h1: &[&str] = &["http/1.1"];
    o.insert(
        "alpn h2",
        probe(
            m,
            https,
            Probe {
                alpn: alpn_h2,
                ..with("a.example.com")
            },
        )
        .await,
    );
    o.insert(
        "alpn http/1.1",
        probe(
            m,
            https,
            Probe {
                alpn: alpn_h1,
                ..with("a.example.com")
            },
        )
        .await,
    );
    for (case, sni) in [
        ("tls1.2 a", "a.example.com"),
        ("tls1.2 b (min 1.3)", "b.example.com"),
        ("tls1.2 wildcard", "x.wild.example.com"),
    ] {
        o.insert(
            case,
            probe(
                m,
                https,
                Probe {
                    tls12_only: true,
                    ..with(sni)
                },
            )
            .await,
        );
    }
    use rustls::CipherSuite as C;
    o.insert(
        "tls1.2 wildcard allowed cipher",
        probe(
            m,
            https,
            Probe {
                tls12_only: true,
                tls12_cipher: Some(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
                ..with("x.wild.example.com")
            },
        )
        .await,
    );
    o.insert(
        "tls1.2 wildcard other cipher",
        probe(
            m,
            https,
            Probe {
                tls12_only: true,
                tls12_cipher: Some(C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
                ..with("x.wild.example.com")
            },
        )
        .await,
    );
    let allowed = Some(&m.client_allowed);
    let other = Some(&m.client_other);
    o.insert(
        "mutual no cert",
        probe(m, https, with("mtls.example.com")).await,
    );
    o.insert(
        "mutual wrong san",
        probe(
            m,
            https,
            Probe {
                identity: other,
                ..with("mtls.example.com")
            },
        )
        .await,
    );
    o.insert(
        "mutual allowed",
        probe(
            m,
            https,
            Probe {
                identity: allowed,
                ..with("mtls.example.com")
            },
        )
        .await,
    );
    o.insert(
        "optional no cert",
        probe(m, https, with("optional.example.com")).await,
    );
    o.insert(
        "optional with cert",
        probe(
            m,
            https,
            Probe {
                identity: other,
                ..with("optional.example.com")
            },
        )
        .await,
    );

    // What the upstream sees: x-forwarded-client-cert and x-forwarded-proto, over h2.
    let hosts = ["mtls.example.com", "optional.example.com", "a.example.com"];
    for (case, host, who) in [
        ("xfcc mutual", "mtls.example.com", &m.client_allowed),
        ("xfcc optional", "optional.example.com", &m.client_other),
    ] {
        let c = https_client(&m.ca.pem, &hosts, https, Some(who));
        let r = c
            .get(format!("https://{host}:{https}/x"))
            .header("x-forwarded-client-cert", "By=spoofed")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{case}");
        let body: serde_json::Value = r.json().await.unwrap();
        o.insert(
            case,
            format!(
                "{} proto={}",
                body["headers"]["x-forwarded-client-cert"], body["headers"]["x-forwarded-proto"][0]
            ),
        );
    }
    let c = https_client(&m.ca.pem, &hosts, https, None);
    let r = c
        .get(format!("https://optional.example.com:{https}/x"))
        .header("x-forwarded-client-cert", "By=spoofed")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    o.insert(
        "xfcc optional without cert",
        body["headers"]["x-forwarded-client-cert"].to_string(),
    );

    // httpsRedirect on the plain-text port keeps the port the request came in on.
    let r = get(&http_client(), http, "a.example.com", "/r?q=1").await;
    o.insert(
        "https redirect",
        format!(
            "{} {}",
            r.status,
            r.header("location")
                .unwrap_or_default()
                .replace(&http.to_string(), "PORT")
        ),
    );

    // curl --http2 and openssl s_client.
    let ca_file = m.files.path().join("ca-for-clients.pem");
    std::fs::write(&ca_file, &m.ca.pem).unwrap();
    let curl = std::process::Command::new(peer_bin("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--http2",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("x.wild.example.com:{https}:127.0.0.1"),
            &format!("https://x.wild.example.com:{https}/curl"),
        ])
        .output()
        .unwrap();
    o.insert("curl --http2", String::from_utf8_lossy(&curl.stdout).into());
    let s_client = std::process::Command::new(peer_bin("openssl"))
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}")])
        .args(["-servername", "b.example.com", "-alpn", "h2,http/1.1"])
        .arg("-CAfile")
        .arg(&ca_file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&s_client.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    o.insert(
        "openssl s_client b",
        format!(
            "{} | {} | {}",
            line("ALPN protocol"),
            line("Verify return code"),
            line("New, TLSv1.3")
        ),
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_matches_envoy() {
    let m = Material::new();
    let echo = EchoUpstream::start("echo");

    let (mg_https, mg_http) = (free_port(), free_port());
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join("config.yaml"),
        m.render(mg_https, mg_http, echo.port()),
    )
    .unwrap();
    let config = dir.path().display().to_string();
    let gw = GatewayProcess::start_with(&["--config", &config], dir.path());
    wait_for_port(mg_https, std::time::Duration::from_secs(10));
    let meshgate = observe(&m, mg_https, mg_http).await;

    let (ev_https, ev_http) = (free_port(), free_port());
    let envoy = TranslatedEnvoy::start(
        &m.render(ev_https, ev_http, echo.port()),
        "istio=ingressgateway",
        2,
    );
    let envoy_seen = observe(&m, ev_https, ev_http).await;
    envoy.envoy.assert_no_rejections();

    // What both must do (so that agreeing on a failure cannot pass).
    let expected: &[(&str, &str)] = &[
        ("sni a", "cert=a alpn=- version=1.3 status=200"),
        ("sni b", "cert=b alpn=- version=1.3 status=200"),
        ("sni wildcard", "cert=wild alpn=- version=1.2 status=200"),
        ("sni deep wildcard", "refused"),
        ("sni unknown", "refused"),
        ("sni wildcard parent", "refused"),
        ("no sni", "refused"),
        ("alpn h2", "cert=a alpn=h2 version=1.3"),
        (
            "alpn http/1.1",
            "cert=a alpn=http/1.1 version=1.3 status=200",
        ),
        ("tls1.2 a", "cert=a alpn=- version=1.2 status=200"),
        ("tls1.2 b (min 1.3)", "refused"),
        ("tls1.2 wildcard other cipher", "refused"),
        ("mutual no cert", "refused"),
        ("mutual wrong san", "refused"),
        ("mutual allowed", "cert=mtls alpn=- version=1.3 status=200"),
        (
            "optional no cert",
            "cert=optional alpn=- version=1.3 status=200",
        ),
        ("xfcc optional without cert", "null"),
        ("curl --http2", "2 200"),
    ];
    for (case, want) in expected {
        assert_eq!(meshgate[case], *want, "meshgate: {case}\n{}", gw.stderr());
    }
    assert!(meshgate["xfcc mutual"].contains("URI=spiffe://test/allowed"));
    assert!(meshgate["https redirect"].starts_with("301 https://a.example.com"));
    // The client's identity reaches the access log.
    let log = gw.stdout();
    assert!(
        log.lines().any(
            |l| l.contains(r#""requested_server_name":"mtls.example.com""#)
                && l.contains(r#""downstream_peer_uri_san":"spiffe://test/allowed""#)
        ),
        "access log:\n{log}"
    );
    eprintln!("observed (meshgate):\n{meshgate:#?}");
    let mut differences = Vec::new();
    for (case, seen) in &meshgate {
        if envoy_seen.get(case) != Some(seen) {
            differences.push(format!(
                "{case}:\n  meshgate: {seen}\n  envoy:    {}",
                envoy_seen.get(case).cloned().unwrap_or_default()
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "meshgate and Envoy differ:\n{}",
        differences.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Envoy's TLS resources themselves (DownstreamTlsContext per filter chain, matched on
// server names, certificates and the client CA as SDS secrets from files) served by
// meshgate's data plane and by Envoy, with openssl s_client, curl --http2, h2load and
// reqwest as clients.
// ---------------------------------------------------------------------------------------

const EDGE_CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// Certificates, secret files and TLS contexts shared by both proxies.
struct Edge {
    dir: TempDir,
    ca: TestCa,
    evil: TestCa,
    /// (server names, DownstreamTlsContext with `SDS` standing for each secret's config
    /// source) per filter chain.
    chains: Vec<(Vec<String>, serde_json::Value)>,
    /// Secret resources (JSON), also written as SDS files for Envoy.
    secrets: Vec<serde_json::Value>,
    a_files: (std::path::PathBuf, std::path::PathBuf),
}

impl Edge {
    fn new() -> Edge {
        use serde_json::json;
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
        let cert_secret = |name: &str, (c, k): &(std::path::PathBuf, std::path::PathBuf)| json!({"name": name, "tls_certificate": {"certificate_chain": {"filename": c}, "private_key": {"filename": k}}});
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
        let sds = |name: &str| json!({"name": name, "sds_config": "SDS"});
        let alpn = json!(["h2", "http/1.1"]);
        let simple = |cert: &str| json!({"common_tls_context": {"alpn_protocols": alpn, "tls_certificate_sds_secret_configs": [sds(cert)]}});
        let mutual = |require: bool, sans: serde_json::Value| {
            json!({
                "require_client_certificate": require,
                "common_tls_context": {
                    "alpn_protocols": alpn,
                    "tls_certificate_sds_secret_configs": [sds("m-cert")],
                    "combined_validation_context": {
                        "default_validation_context": {"match_typed_subject_alt_names": sans},
                        "validation_context_sds_secret_config": sds("client-ca"),
                    },
                },
            })
        };
        let versions = |params: serde_json::Value| json!({"common_tls_context": {"alpn_protocols": alpn, "tls_params": params, "tls_certificate_sds_secret_configs": [sds("m-cert")]}});
        let chains = vec![
            (vec!["a.example.com".to_string()], simple("a-cert")),
            (vec!["*.wild.example.com".to_string()], simple("wild-cert")),
            (
                vec!["m.example.com".to_string()],
                mutual(
                    true,
                    json!([{"san_type": "URI", "matcher": {"exact": EDGE_CLIENT_ID}}]),
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
        Edge {
            dir,
            ca,
            evil,
            chains,
            secrets,
            a_files,
        }
    }

    /// One listener on `port` with the filter chains, HTTP to the echo upstream with
    /// Istio's XFCC settings; secrets from files (Envoy: an SDS file per secret) or in the
    /// resource set (meshgate: over its xDS input).
    fn resources(&self, port: u16, echo: u16, envoy: bool) -> serde_json::Value {
        use serde_json::json;
        let source = |name: &str| {
            if envoy {
                json!({"path_config_source": {"path": self.dir.path().join(format!("{name}.sds.json"))}, "resource_api_version": "V3"})
            } else {
                json!({"ads": {}, "resource_api_version": "V3"})
            }
        };
        // Fill in each `"sds_config": "SDS"` with the side's config source.
        fn fill(v: &mut serde_json::Value, source: &dyn Fn(&str) -> serde_json::Value) {
            match v {
                serde_json::Value::Object(o) => {
                    if o.get("sds_config") == Some(&json!("SDS")) {
                        let name = o["name"].as_str().unwrap().to_string();
                        o.insert("sds_config".into(), source(&name));
                    }
                    for (_, x) in o.iter_mut() {
                        fill(x, source);
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| fill(x, source)),
                _ => {}
            }
        }
        let hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "https",
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"subject": true, "cert": true, "uri": true, "dns": true},
                "route_config": {"name": "edge", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        });
        let chains: Vec<serde_json::Value> = self
            .chains
            .iter()
            .map(|(names, ctx)| {
                let mut typed = ctx.clone();
                fill(&mut typed, &source);
                typed["@type"] = json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext");
                json!({
                    "filter_chain_match": {"server_names": names},
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": typed},
                    "filters": [hcm],
                })
            })
            .collect();
        let mut r = json!({
            "listeners": [{
                "name": "https",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                "filter_chains": chains,
            }],
            "clusters": [static_cluster("echo", &[echo], json!({}))],
        });
        if !envoy {
            r["secrets"] = json!(self.secrets);
        }
        r
    }

    /// Both proxies: (meshgate, its port), (Envoy, its port).
    fn start(&self, echo: u16) -> (InProcess, u16, Envoy, u16, TempDir) {
        let (mesh_port, envoy_port) = (free_port(), free_port());
        let mesh = InProcess::start(&self.resources(mesh_port, echo, false));
        let envoy_dir = TempDir::new();
        let envoy = envoy_with(&self.resources(envoy_port, echo, true), &envoy_dir);
        envoy.assert_no_rejections();
        (mesh, mesh_port, envoy, envoy_port, envoy_dir)
    }

    /// A reqwest client resolving the test names to 127.0.0.1:`port`.
    fn client(&self, identity: Option<&Leaf>, port: u16) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap()])
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10));
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
}

/// What a client saw over HTTPS: `STATUS VERSION`, and the echo's JSON; or `failed`.
async fn edge_get(client: &reqwest::Client, host: &str, port: u16) -> (String, serde_json::Value) {
    match client
        .get(format!("https://{host}:{port}/path"))
        .send()
        .await
    {
        Ok(r) => {
            let seen = format!("{} {:?}", r.status().as_u16(), r.version());
            (seen, r.json().await.unwrap_or_default())
        }
        Err(_) => ("failed".into(), serde_json::Value::Null),
    }
}

/// The gateway's own counter from its admin `/stats`.
fn mesh_stat(mesh: &InProcess, name: &str) -> u64 {
    mesh.stat(name)
        .unwrap_or_else(|| panic!("meshgate has no stat {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_tls_resources_same_behaviour_for_sni_mutual_versions_and_alpn() {
    use tls_support::{curl, h2load, s_client, s_client_within};
    let fx = Edge::new();
    let echo = EchoUpstream::start("echo");
    let (mesh, mesh_port, envoy, envoy_port, _envoy_dir) = fx.start(echo.port());
    let client_ok = fx
        .ca
        .leaf_with("client", &["client.example.com"], &[EDGE_CLIENT_ID], 0, 30);
    let client_other_san = fx.ca.leaf_with(
        "client",
        &[],
        &["spiffe://cluster.local/ns/default/sa/other"],
        0,
        30,
    );
    let client_evil = fx.evil.leaf_with("client", &[], &[EDGE_CLIENT_ID], 0, 30);
    let client_expired = fx.ca.leaf_with("client", &[], &[EDGE_CLIENT_ID], -30, -1);
    let no_chain_before = mesh_stat(&mesh, "listener.no_filter_chain_match");
    let rejected_before = mesh_stat(&mesh, "tls.peer_certificate_rejected");

    let mut xfcc = Vec::new();
    for (label, port) in [("meshgate", mesh_port), ("envoy", envoy_port)] {
        let plain = fx.client(None, port);
        // SNI picks the filter chain and its certificate; ALPN h2 negotiated.
        for host in ["a.example.com", "x.wild.example.com"] {
            let (seen, body) = edge_get(&plain, host, port).await;
            assert_eq!(seen, "200 HTTP/2.0", "{label}: {host}");
            assert_eq!(body["upstream"], "echo", "{label}: {host}");
        }
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
        let (seen, body) =
            edge_get(&fx.client(Some(&client_ok), port), "m.example.com", port).await;
        assert_eq!(seen, "200 HTTP/2.0", "{label}: mutual ok");
        xfcc.push(
            body["headers"]["x-forwarded-client-cert"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{label}: no XFCC in {body}"))
                .to_string(),
        );
        // Without a certificate, from another CA, with the wrong SAN, expired: refused.
        for (what, id) in [
            ("no cert", None),
            ("other SAN", Some(&client_other_san)),
            ("wrong CA", Some(&client_evil)),
            ("expired", Some(&client_expired)),
        ] {
            let (seen, _) = edge_get(&fx.client(id, port), "m.example.com", port).await;
            assert_eq!(seen, "failed", "{label}: mutual {what}");
        }
        // TLS 1.3 without a client certificate: the client's handshake completes, then
        // the server's certificate-required alert ends the connection (s_client waits
        // for that end: -ign_eof).
        let s = s_client_within(
            port,
            &["-servername", "m.example.com", "-tls1_3", "-ign_eof"],
            "GET / HTTP/1.1\r\nHost: m\r\n\r\n",
            std::time::Duration::from_secs(20),
        );
        assert!(
            s.handshake_done(),
            "{label}: TLS 1.3 handshake completes client-side: {}",
            s.output
        );
        assert!(
            s.output.contains("alert") && !s.output.contains("HTTP/1.1 200"),
            "{label}: refused after the handshake: {}",
            s.output
        );

        // OPTIONAL_MUTUAL: no certificate is fine, a good one too, an untrusted one not.
        let (seen, _) = edge_get(&plain, "o.example.com", port).await;
        assert!(seen.starts_with("200 "), "{label}: optional without cert");
        let (seen, _) = edge_get(&fx.client(Some(&client_ok), port), "o.example.com", port).await;
        assert!(seen.starts_with("200 "), "{label}: optional with cert");
        let (seen, _) = edge_get(&fx.client(Some(&client_evil), port), "o.example.com", port).await;
        assert_eq!(seen, "failed", "{label}: optional with an untrusted cert");

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
    assert_eq!(xfcc[0], xfcc[1], "XFCC: meshgate vs envoy");
    assert!(
        xfcc[0].contains(&format!("URI={EDGE_CLIENT_ID}"))
            && xfcc[0].contains("DNS=client.example.com"),
        "{}",
        xfcc[0]
    );
    // Counted by each proxy: the connections no filter chain took (unknown SNI, no SNI,
    // plain HTTP), and by meshgate the refused client certificates.
    assert_eq!(
        (
            mesh_stat(&mesh, "listener.no_filter_chain_match") - no_chain_before,
            envoy.stat(&format!(
                "listener.127.0.0.1_{envoy_port}.no_filter_chain_match"
            )),
        ),
        (3, Some(3)),
        "no filter chain: (meshgate, envoy)"
    );
    assert!(mesh_stat(&mesh, "tls.peer_certificate_rejected") >= rejected_before + 3);
    envoy.assert_no_rejections();
}

/// The certificate a fresh handshake to `port` with SNI `host` gets (its SHA-256).
async fn served_hash(ca: &TestCa, port: u16, host: &str) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&ca.pem) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_string()).ok()?,
            tcp,
        )
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(meshgate::tls::PeerIdentity::from_chain(&[leaf])?.sha256_hex)
}

fn leaf_hash(l: &Leaf) -> String {
    let der = meshgate::tls::material::parse_certificates(l.cert.as_bytes(), "leaf").unwrap();
    meshgate::tls::PeerIdentity::from_chain(&der)
        .unwrap()
        .sha256_hex
}

/// Replaces a file atomically (write beside, rename over), as secret mounts do.
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_tls_resources_file_rotation_like_envoy() {
    use std::time::{Duration, Instant};
    let fx = Edge::new();
    let echo = EchoUpstream::start("echo");
    let (mesh, mesh_port, envoy, envoy_port, _envoy_dir) = fx.start(echo.port());
    let ports = [("meshgate", mesh_port), ("envoy", envoy_port)];
    // Each proxy counts the file contents it could not use: meshgate's
    // `tls.secret_rejections`, Envoy's `sds.<secret>.key_rotation_failed`.
    let refusals = || {
        (
            mesh_stat(&mesh, "tls.secret_rejections"),
            envoy.stat("sds.a-cert.key_rotation_failed").unwrap_or(0),
        )
    };

    // A keep-alive connection per proxy, opened before the rotation.
    let mut open = Vec::new();
    for (label, port) in ports {
        let c = fx.client(None, port);
        let (seen, _) = edge_get(&c, "a.example.com", port).await;
        assert!(seen.starts_with("200 "), "{label}");
        open.push(c);
    }
    let first = served_hash(&fx.ca, mesh_port, "a.example.com")
        .await
        .unwrap();

    // A new pair: key first, then certificate (the moment between is a mismatch).
    let next = fx.ca.leaf(&["a.example.com"]);
    let (cert_path, key_path) = &fx.a_files;
    replace_file(key_path, &next.key);
    replace_file(cert_path, &next.cert);
    let want = leaf_hash(&next);
    assert_ne!(want, first);
    for (label, port) in ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        while served_hash(&fx.ca, port, "a.example.com").await.as_deref() != Some(want.as_str()) {
            assert!(
                Instant::now() < deadline,
                "{label}: new certificate not served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The connections opened before still work (same TLS session, no reconnect needed).
    for ((label, port), c) in ports.iter().zip(&open) {
        let (seen, _) = edge_get(c, "a.example.com", *port).await;
        assert!(
            seen.starts_with("200 "),
            "{label}: open connection after rotation"
        );
    }
    assert!(mesh_stat(&mesh, "tls.secret_rotations") >= 1);

    // Only the certificate replaced: the pair does not match; once each proxy has
    // refused it, both still serve the last good pair. Then garbage: the same.
    let half = fx.ca.leaf(&["a.example.com"]);
    for (what, contents) in [
        ("a certificate without its key", half.cert.as_str()),
        ("garbage", "not a certificate"),
    ] {
        let (mesh_before, envoy_before) = refusals();
        replace_file(cert_path, contents);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (m, e) = refusals();
            if m > mesh_before && e > envoy_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not refused by both: (meshgate, envoy) = {:?}",
                refusals()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (label, port) in ports {
            assert_eq!(
                served_hash(&fx.ca, port, "a.example.com").await.as_deref(),
                Some(want.as_str()),
                "{label}: {what}: keeps the last good pair"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client certificate checks of a DownstreamTlsContext on meshgate's listeners: CRLs,
// hash and SPKI pins, the client identity forwarded upstream, the CA rotated through
// SDS, renegotiation, Kubernetes Secrets rotating, and contexts refused with the field.
// ---------------------------------------------------------------------------------------

/// A listener on `port` terminating TLS with `ctx` (any SNI), HTTP to the echo upstream,
/// forwarding the client's certificate details in `x-forwarded-client-cert`.
fn mutual_listener(name: &str, port: u16, ctx: serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let mut typed = ctx;
    typed["@type"] =
        json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext");
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": typed},
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"subject": true, "uri": true, "dns": true},
                "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}],
        }],
    })
}

/// An HTTPS GET to `srv.example.com` on `port` trusting `ca`, with a client certificate:
/// the `x-forwarded-client-cert` the upstream got, or the error.
async fn xfcc_via(ca: &TestCa, port: u16, id: Option<&Leaf>) -> Result<String, String> {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .resolve("srv.example.com", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10));
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
    let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    Ok(body["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or("")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_crl_pins_identity_ca_rotation_and_renegotiation() {
    use serde_json::json;
    use std::time::{Duration, Instant};
    let dir = TempDir::new();
    let echo = EchoUpstream::start("echo");
    let ca = TestCa::new("mutual CA");
    let (c, k) = ca.leaf(&["srv.example.com"]).write(dir.path(), "srv");
    let good = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/good", 1001);
    let revoked = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/revoked", 1002);
    let other = ca.leaf_serial("spiffe://cluster.local/ns/a/sa/good", 1003);
    let ca_path = ca.write_ca(dir.path(), "ca");
    let crl_path = dir.path().join("ca.crl");
    std::fs::write(&crl_path, ca.crl(&[1002])).unwrap();
    let cert = json!([{"certificate_chain": {"filename": c}, "private_key": {"filename": k}}]);
    let require = |validation: serde_json::Value| json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert, "validation_context": validation}});
    // Hash pin in Envoy's colon-separated upper-case form; SPKI pin in base64.
    let good_hash = leaf_hash(&good);
    let colon = good_hash
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let spki = {
        let der = meshgate::tls::material::parse_certificates(other.cert.as_bytes(), "x").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(parsed.public_key().raw))
    };
    let new_ca = TestCa::new("next CA");
    let ca_secret = |ca: &TestCa| json!({"name": "kubernetes://gw-cacert", "validation_context": {"trusted_ca": {"inline_string": ca.pem}}});
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let resources = |ca_in_sds: &TestCa| {
        json!({
            "listeners": [
                mutual_listener("crl", ports[0], require(json!({"trusted_ca": {"filename": ca_path}, "crl": {"filename": crl_path}}))),
                mutual_listener("hash", ports[1], require(json!({"trusted_ca": {"filename": ca_path}, "verify_certificate_hash": [colon]}))),
                mutual_listener("spki", ports[2], require(json!({"trusted_ca": {"filename": ca_path}, "verify_certificate_spki": [spki]}))),
                mutual_listener("rotating", ports[3], json!({"require_client_certificate": true, "common_tls_context": {"tls_certificates": cert,
                    "validation_context_sds_secret_config": {"name": "kubernetes://gw-cacert", "sds_config": {"ads": {}, "resource_api_version": "V3"}}}})),
            ],
            "clusters": [static_cluster("echo", &[echo.port()], json!({}))],
            "secrets": [ca_secret(ca_in_sds)],
        })
    };
    let mesh = InProcess::start(&resources(&ca));

    // CRL: the revoked serial is refused, the other accepted; its identity reaches the
    // upstream (certificate hash, subject, SPIFFE URI).
    let xfcc = xfcc_via(&ca, ports[0], Some(&good)).await.unwrap();
    assert!(xfcc.contains(&format!("Hash={good_hash}")), "{xfcc}");
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/a/sa/good"),
        "{xfcc}"
    );
    assert!(xfcc.contains("CN=client"), "{xfcc}");
    assert!(
        xfcc_via(&ca, ports[0], Some(&revoked)).await.is_err(),
        "revoked client refused"
    );
    // Hash pin: only the pinned certificate passes (the other has the same identity).
    assert!(xfcc_via(&ca, ports[1], Some(&good)).await.is_ok());
    assert!(
        xfcc_via(&ca, ports[1], Some(&other)).await.is_err(),
        "unpinned certificate refused"
    );
    // SPKI pin.
    assert!(xfcc_via(&ca, ports[2], Some(&other)).await.is_ok());
    assert!(xfcc_via(&ca, ports[2], Some(&good)).await.is_err());

    // CA rotation through SDS: clients of the new CA are accepted after the update
    // (a secret-only change), those of the old one no longer.
    let new_client = new_ca.leaf_serial("spiffe://cluster.local/ns/a/sa/new", 7);
    assert!(xfcc_via(&ca, ports[3], Some(&good)).await.is_ok());
    assert!(xfcc_via(&ca, ports[3], Some(&new_client)).await.is_err());
    mesh.apply(&resources(&new_ca), "2").unwrap();
    assert!(xfcc_via(&ca, ports[3], Some(&new_client)).await.is_ok());
    assert!(xfcc_via(&ca, ports[3], Some(&good)).await.is_err());

    // A client asking to renegotiate (TLS 1.2 `R`) gets no new handshake: the gateway
    // refuses it (and counts it); everyone else is served on.
    let refused = mesh_stat(&mesh, "tls.renegotiation_refused");
    let s = tls_support::s_client_within(
        ports[0],
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
        Duration::from_secs(20),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh_stat(&mesh, "tls.renegotiation_refused") == refused {
        assert!(
            Instant::now() < deadline,
            "renegotiation not refused: {}",
            s.output
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = s
        .output
        .split("RENEGOTIATING")
        .nth(1)
        .unwrap_or_else(|| panic!("no renegotiation attempt: {}", s.output));
    assert!(
        !after.contains("Cipher is") && !after.contains("Certificate chain"),
        "no second handshake: {after}"
    );
    assert!(xfcc_via(&ca, ports[0], Some(&good)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_or_contradictory_contexts_are_refused_with_the_field() {
    use serde_json::{Value, json};
    let echo = EchoUpstream::start("echo");
    let ca = TestCa::new("x");
    let leaf = ca.leaf(&["a.example.com"]);
    let cert = json!([{"certificate_chain": {"inline_string": leaf.cert}, "private_key": {"inline_string": leaf.key}}]);
    let port = free_port();
    let with = |ctx: Value| {
        json!({
            "listeners": [mutual_listener("edge", port, ctx)],
            "clusters": [static_cluster("echo", &[echo.port()], json!({}))],
        })
    };
    let mesh = InProcess::start(&with(
        json!({"common_tls_context": {"tls_certificates": cert}}),
    ));
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
    for (i, (ctx, want)) in cases.into_iter().enumerate() {
        let err = mesh.apply(&with(ctx), &format!("bad-{i}")).expect_err(want);
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(err.contains("\"edge\""), "the listener is named: {err}");
        assert!(
            err.contains("filter_chains[0]"),
            "the chain is named: {err}"
        );
    }
    // The last good configuration serves throughout.
    let r = https_client(&ca.pem, &["a.example.com"], port, None)
        .get(format!("https://a.example.com:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_name_secrets_serve_and_rotate_through_sds() {
    use serde_json::json;
    use std::collections::BTreeMap;
    let echo = EchoUpstream::start("echo");
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
    let secrets = |d: &BTreeMap<String, Vec<u8>>| {
        meshgate::tls::credential::secrets_from_kubernetes("shop-cred", d)
            .unwrap()
            .iter()
            .map(|s| meshgate::xds::json::to_json(s).unwrap())
            .collect::<Vec<_>>()
    };
    // What the translator emits for a Gateway server with `credentialName: shop-cred`,
    // MUTUAL.
    let port = free_port();
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
    let resources = |d: &BTreeMap<String, Vec<u8>>| {
        json!({
            "listeners": [mutual_listener("shop", port, ctx.clone())],
            "clusters": [static_cluster("echo", &[echo.port()], json!({}))],
            "secrets": secrets(d),
        })
    };
    let mesh = InProcess::start(&resources(&data(&first)));
    let client = ca.leaf_with("client", &[], &["spiffe://x/client"], 0, 30);
    let served = || async {
        let c = https_client(&ca.pem, &["shop.example.com"], port, Some(&client));
        let r = c
            .get(format!("https://shop.example.com:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        peer_certificate(&r)
    };
    assert_eq!(served().await, der(&first.cert));
    // A new snapshot with the rotated Secret: new handshakes use it.
    let second = ca.leaf(&["shop.example.com"]);
    mesh.apply(&resources(&data(&second)), "2").unwrap();
    assert_eq!(served().await, der(&second.cert));
    assert_eq!(mesh_stat(&mesh, "tls.secret_rotations"), 1);
    // A Secret whose key does not match its certificate is refused, with its name; the
    // previous one keeps serving.
    let mut broken = data(&second);
    broken.insert("tls.key".into(), first.key.as_bytes().to_vec());
    let err = mesh.apply(&resources(&broken), "3").unwrap_err();
    assert!(err.contains("kubernetes://shop-cred"), "{err}");
    assert_eq!(served().await, der(&second.cert));
}
