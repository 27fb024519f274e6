//! TLS termination by `meshgate gateway --config DIR`, compared with a real Envoy 1.40
//! serving what `meshgate translate` makes of the same Istio YAML: the certificate each
//! SNI gets, no SNI and unknown SNI, ALPN and HTTP/2 over TLS, minimum/maximum protocol
//! versions and cipher suites, MUTUAL and OPTIONAL_MUTUAL with `x-forwarded-client-cert`,
//! and `httpsRedirect`. Clients: rustls, curl --http2, openssl s_client.
mod support;
#[path = "support/translate.rs"]
mod translating;

use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use support::gateway::GatewayProcess;
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
