//! Included by the `translate_envoy_*` tests next to `support` (`#[path]`).
//!
//! Helpers for tests that judge `meshgate translate` with a real Envoy: render a
//! configuration template with the test's ports, translate it with the real binary,
//! start Envoy on the files, and talk HTTP to it.
#![allow(dead_code)]

use crate::support::{Envoy, TempDir, free_port};
use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The meshgate binary built for these tests.
pub fn meshgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshgate"))
}

/// Replaces every `{{NAME}}` in `template`; panics on a placeholder left unfilled.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let end = out[start..].find("}}").map_or(out.len(), |e| start + e + 2);
        panic!("template placeholder {} has no value", &out[start..end]);
    }
    out
}

/// Reads a test configuration template from `tests/testdata/translate/`.
pub fn testdata(name: &str) -> String {
    let path = crate::support::repo_root()
        .join("tests/testdata/translate")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs `meshgate ARGS...`.
pub fn meshgate(args: &[&str]) -> Output {
    Command::new(meshgate_bin())
        .args(args)
        .current_dir(crate::support::repo_root())
        .output()
        .expect("running meshgate")
}

/// A real Envoy serving what `meshgate translate` made of a configuration.
pub struct TranslatedEnvoy {
    pub envoy: Envoy,
    /// Scratch directory: `config/` (the Istio YAML) and `envoy/` (translate's output).
    pub dir: TempDir,
    /// What translate printed on stderr (diagnostics).
    pub translate_stderr: String,
}

impl TranslatedEnvoy {
    /// Writes `yaml` to a scratch directory, translates it with `--labels labels`,
    /// starts Envoy on the result and waits until `listeners` listeners are active.
    pub fn start(yaml: &str, labels: &str, listeners: u64) -> TranslatedEnvoy {
        let dir = TempDir::new();
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        std::fs::write(config_dir.join("config.yaml"), yaml).expect("write config");
        Self::start_dir(dir, &config_dir, labels, listeners)
    }

    /// Translates an existing configuration directory (or file) and starts Envoy.
    pub fn start_dir(dir: TempDir, config: &Path, labels: &str, listeners: u64) -> TranslatedEnvoy {
        let out = dir.path().join("envoy");
        let admin = free_port();
        let stderr = translate(config, &out, admin, labels);
        let envoy = Envoy::start(&out.join("envoy.yaml"), admin, dir.path());
        let started = TranslatedEnvoy {
            envoy,
            dir,
            translate_stderr: stderr,
        };
        started.wait_listeners(listeners);
        started.envoy.assert_no_rejections();
        started
    }

    /// The directory translate writes to.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("envoy")
    }

    /// Waits (bounded) until Envoy has `n` active listeners and no warming ones.
    pub fn wait_listeners(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let active = self.envoy.stat("listener_manager.total_listeners_active");
            let warming = self.envoy.stat("listener_manager.total_listeners_warming");
            if active == Some(n) && warming.unwrap_or(0) == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy has {active:?} active / {warming:?} warming listeners, expected {n}:\n{}",
                self.envoy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's `/config_dump` (including EDS), as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self
            .envoy
            .admin_get("/config_dump?include_eds")
            .expect("admin /config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("config dump JSON")
    }
}

/// Runs `meshgate translate --config CONFIG --out OUT --admin-port ADMIN --labels LABELS`,
/// asserting success; returns its stderr.
pub fn translate(config: &Path, out: &Path, admin: u16, labels: &str) -> String {
    let output = Command::new(meshgate_bin())
        .arg("translate")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(["--admin-port", &admin.to_string(), "--labels", labels])
        .output()
        .expect("running meshgate translate");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "meshgate translate failed ({}):\n{stderr}",
        output.status
    );
    stderr
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    /// The echo upstream's JSON description of the request it received.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo response ({e}): {self:?}"))
    }

    /// The name of the echo upstream that answered.
    pub fn upstream(&self) -> String {
        self.echo()["upstream"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first value of a request header as the upstream saw it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"][name][0].as_str().map(str::to_string)
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Sends one request to 127.0.0.1:`port` with `Host: host`.
pub async fn send(
    client: &reqwest::Client,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send_body(client, method, port, host, path, headers, None).await
}

/// [`send`] with a request body.
pub async fn send_body(
    client: &reqwest::Client,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let url = format!("http://127.0.0.1:{port}{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, &url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_vec());
    }
    let start = Instant::now();
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
        elapsed: start.elapsed(),
    }
}

/// GET with `Host: host`.
pub async fn get(client: &reqwest::Client, port: u16, host: &str, path: &str) -> Reply {
    send(client, "GET", port, host, path, &[]).await
}

// ---------------------------------------------------------------------------------------
// TLS: a test CA, a TLS terminator in front of an upstream, HTTPS clients
// ---------------------------------------------------------------------------------------

#[allow(unused_imports)]
pub use crate::support::certs::{Leaf, TestCa, yaml_block};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("PEM key")
        .expect("a key")
}

/// A TLS terminator on 127.0.0.1 in front of a plain-text upstream: it completes the
/// handshake with its certificate (optionally requiring a client certificate from a CA)
/// and copies the bytes to `backend`. It remembers each handshake's SNI.
pub struct TlsFront {
    pub port: u16,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    pub fn start(leaf: &Leaf, client_ca: Option<&str>, backend: u16) -> TlsFront {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca) {
                    roots.add(c).expect("CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs(&leaf.cert), key(&leaf.key))
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = StdListener::bind("127.0.0.1:0").expect("bind TLS front");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let snis: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = snis.clone();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            let seen = seen.clone();
                            tokio::spawn(async move {
                                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                                let sni = tls.get_ref().1.server_name().map(str::to_string);
                                seen.lock().expect("lock").push(sni);
                                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await else { return };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                            });
                        }
                    }
                }
            });
        });
        TlsFront {
            port,
            snis,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The SNI of every completed handshake so far.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().expect("lock").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTPS client trusting only `ca`, resolving `hosts` to 127.0.0.1:`port`, with an
/// optional client certificate; it exposes the server's certificate (`tls_info`).
pub fn https_client(
    ca: &str,
    hosts: &[&str],
    port: u16,
    identity: Option<&Leaf>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_info(true)
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA")]);
    for h in hosts {
        b = b.resolve(h, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("https client")
}

/// A raw TLS connection to 127.0.0.1:`port` with `sni` and `alpn`, trusting `ca` (or
/// nothing checked when `ca` is None). Returns the stream once the handshake is done.
pub async fn tls_connect(
    port: u16,
    sni: &str,
    alpn: &[&str],
    ca: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let mut config = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).expect("CA");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    connector.connect(name, tcp).await
}

/// Sends a bare HTTP/1.1 GET over an established stream and reads the whole response.
pub async fn http1_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Accepts any server certificate (for routing tests where identity is not the point).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
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
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The DER of the certificate a response's server presented.
pub fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .expect("TLS info with the peer certificate")
}

/// The DER of a PEM certificate.
pub fn der(pem: &str) -> Vec<u8> {
    certs(pem)[0].to_vec()
}

/// A Gateway with two HTTPS servers on `port`: `file.example.com` with the certificate
/// files `cert`/`key`, `secret.example.com` with the `secret-cert` Secret holding `secret`;
/// both routed to the echo upstream on `echo`.
pub fn file_and_secret_gateway_yaml(
    port: u16,
    echo: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
    secret: &Leaf,
) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-file, protocol: HTTPS}}
    hosts: [file.example.com]
    tls: {{mode: SIMPLE, serverCertificate: "{cert}", privateKey: "{key}"}}
  - port: {{number: {port}, name: https-secret, protocol: HTTPS}}
    hosts: [secret.example.com]
    tls: {{mode: SIMPLE, credentialName: secret-cert}}
---
apiVersion: v1
kind: Secret
metadata: {{name: secret-cert}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{secret_cert}
  tls.key: |
{secret_key}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [file.example.com, secret.example.com]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: echo.internal}}}}]}}]
"#,
        cert = cert.display(),
        key = key.display(),
        secret_cert = yaml_block(&secret.cert, 4),
        secret_key = yaml_block(&secret.key, 4),
    )
}

// ---------------------------------------------------------------------------------------
// The same Istio YAML on real Envoy and on meshgate, compared request by request
// ---------------------------------------------------------------------------------------

/// One of the two gateways a scenario runs against, with its listener ports by template
/// placeholder.
#[derive(Debug, Clone)]
pub struct Side {
    pub who: &'static str,
    pub ports: Vec<(&'static str, u16)>,
}

impl Side {
    /// The port this side uses for placeholder `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no port {name}"))
            .1
    }

    /// The placeholders and their values, for [`render`].
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        self.ports
            .iter()
            .map(|(n, p)| (*n, p.to_string()))
            .collect()
    }

    pub fn is_envoy(&self) -> bool {
        self.who == "envoy"
    }
}

/// An Istio configuration served twice: by `meshgate gateway --config DIR` (meshgate's
/// own data plane) and by real Envoy on what `meshgate translate` makes of it. Each has
/// its own listener ports (`gateway_ports` placeholders); everything else in the
/// template (upstreams, certificates) is shared.
pub struct BothGateways {
    pub meshgate: crate::support::gateway::GatewayProcess,
    pub envoy: TranslatedEnvoy,
    /// meshgate first, then Envoy.
    pub sides: Vec<Side>,
    _meshgate_dir: TempDir,
}

impl BothGateways {
    /// `yaml` renders the configuration for one side's ports; `listeners` is how many
    /// listeners Envoy must end up with.
    pub fn start(
        gateway_ports: &[&'static str],
        labels: &str,
        listeners: u64,
        yaml: impl Fn(&Side) -> String,
    ) -> BothGateways {
        let side = |who| Side {
            who,
            ports: gateway_ports.iter().map(|n| (*n, free_port())).collect(),
        };
        let (mesh_side, envoy_side) = (side("meshgate"), side("envoy"));
        let dir = TempDir::new();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        std::fs::write(config.join("config.yaml"), yaml(&mesh_side)).expect("write config");
        let meshgate = crate::support::gateway::GatewayProcess::start_with(
            &[
                "--config",
                config.to_str().expect("utf-8 path"),
                "--labels",
                labels,
                "--access-log",
                "off",
            ],
            dir.path(),
        );
        for (_, port) in &mesh_side.ports {
            crate::support::wait_for_port(*port, Duration::from_secs(20));
        }
        let envoy = TranslatedEnvoy::start(&yaml(&envoy_side), labels, listeners);
        BothGateways {
            meshgate,
            envoy,
            sides: vec![mesh_side, envoy_side],
            _meshgate_dir: dir,
        }
    }

    /// A stat of either gateway (Envoy's admin `/stats`, meshgate's admin `/stats`).
    pub fn stat(&self, side: &Side, name: &str) -> Option<u64> {
        let (_, body) = if side.is_envoy() {
            self.envoy
                .envoy
                .admin_get("/stats")
                .expect("envoy admin /stats")
        } else {
            self.meshgate.admin("/stats")
        };
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Response headers whose values differ from one request to the next, or that only
/// describe the framing.
const VOLATILE_RESPONSE_HEADERS: &[&str] = &[
    "date",
    "x-envoy-upstream-service-time",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// `s` with the side's listener port numbers replaced by their placeholder names.
fn unport(side: &Side, s: &str) -> String {
    let mut s = s.to_string();
    for (name, port) in &side.ports {
        s = s.replace(&port.to_string(), &format!("{{{{{name}}}}}"));
    }
    s
}

/// What one side answered to a request, field by field (`status`, `response <header>`,
/// `upstream <field>`, `upstream header <name>`, `body`), with the side's own listener
/// ports replaced by their placeholder names.
pub fn reply_fields(side: &Side, r: &Reply) -> BTreeMap<String, String> {
    let unport = |s: &str| unport(side, s);
    let mut out = BTreeMap::new();
    out.insert("status".to_string(), r.status.to_string());
    for name in r.headers.keys() {
        if VOLATILE_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let values: Vec<String> = r
            .headers
            .get_all(name)
            .iter()
            .map(|v| unport(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        out.insert(format!("response {name}"), values.join(" | "));
    }
    match serde_json::from_str::<serde_json::Value>(&r.body) {
        Ok(echo) if echo.get("upstream").is_some() && echo.get("headers").is_some() => {
            for field in ["upstream", "method", "path", "version", "body_len"] {
                out.insert(
                    format!("upstream {field}"),
                    unport(&echo[field].to_string()),
                );
            }
            for (name, values) in echo["headers"].as_object().into_iter().flatten() {
                // The test's own steering headers, and ids that are random per request.
                if name.starts_with("x-echo-") || name == "x-side" {
                    continue;
                }
                let value = if name == "x-request-id" {
                    "(present)".to_string()
                } else {
                    unport(&values.to_string())
                };
                out.insert(format!("upstream header {name}"), value);
            }
        }
        _ => {
            out.insert("body".to_string(), unport(&r.body));
        }
    }
    out
}

/// The requests a scenario made of one side, and what came back; plus facts the
/// scenario observed otherwise (`note`). Two transcripts of the same scenario are
/// compared entry by entry.
pub struct Transcript {
    pub side: Side,
    pub client: reqwest::Client,
    pub entries: Vec<(String, BTreeMap<String, String>)>,
}

impl Transcript {
    pub fn new(side: &Side) -> Transcript {
        Transcript {
            side: side.clone(),
            client: crate::support::http_client(),
            entries: Vec::new(),
        }
    }

    pub fn who(&self) -> &'static str {
        self.side.who
    }

    pub fn port(&self, name: &str) -> u16 {
        self.side.port(name)
    }

    /// Sends a request to this side's listener `port_name` and records the answer.
    /// Header values that start with the side's name (`envoy-…`, `meshgate-…`: keys that
    /// must differ per side) are left out of the label.
    pub async fn send(
        &mut self,
        method: &str,
        port_name: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let client = self.client.clone();
        self.send_via(&client, method, port_name, host, path, headers)
            .await
    }

    /// [`Transcript::send`] with another client (e.g. bound to another source address).
    pub async fn send_via(
        &mut self,
        client: &reqwest::Client,
        method: &str,
        port_name: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.exchange(client, method, port_name, host, path, headers, None)
            .await
    }

    /// [`Transcript::send`] with a request body.
    pub async fn send_body(
        &mut self,
        method: &str,
        port_name: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let client = self.client.clone();
        self.exchange(&client, method, port_name, host, path, headers, Some(body))
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        client: &reqwest::Client,
        method: &str,
        port_name: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let r = send_body(
            client,
            method,
            self.side.port(port_name),
            host,
            path,
            headers,
            body,
        )
        .await;
        let shown: Vec<_> = headers
            .iter()
            .filter(|(_, v)| !v.starts_with(self.side.who))
            .collect();
        let label = unport(
            &self.side,
            &format!("{method} {port_name} {host}{path} {shown:?}"),
        );
        let fields = reply_fields(&self.side, &r);
        self.entries.push((label, fields));
        r
    }

    pub async fn get(&mut self, port_name: &str, host: &str, path: &str) -> Reply {
        self.send("GET", port_name, host, path, &[]).await
    }

    /// Records an observation that is not one HTTP answer (a count, a handshake's
    /// outcome): compared like answers.
    pub fn note(&mut self, label: impl Into<String>, outcome: impl std::fmt::Display) {
        let mut fields = BTreeMap::new();
        fields.insert("outcome".to_string(), outcome.to_string());
        self.entries.push((label.into(), fields));
    }
}

/// What one side's value of a field must be, where the two sides differ on purpose.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Absent,
    /// Any value, or none.
    Any,
    Is(&'static str),
}

impl Expect {
    fn holds(self, v: Option<&String>) -> bool {
        match self {
            Expect::Absent => v.is_none(),
            Expect::Any => true,
            Expect::Is(want) => v.is_some_and(|v| v == want),
        }
    }
}

/// A field where meshgate answers differently from Envoy on purpose (each listed in
/// docs/xds-support.md, "Differences from Envoy"): for every request whose label
/// contains `label`, `field` must be `meshgate` on meshgate and `envoy` on Envoy.
pub struct Deliberate {
    pub label: &'static str,
    pub field: &'static str,
    pub meshgate: Expect,
    pub envoy: Expect,
}

/// Compares meshgate's transcript with Envoy's, entry by entry; every difference that is
/// not listed in `deliberate` fails the test, all reported at once.
pub fn assert_same_answers(meshgate: &Transcript, envoy: &Transcript, deliberate: &[Deliberate]) {
    assert_eq!(
        meshgate.entries.len(),
        envoy.entries.len(),
        "the scenario made a different number of requests on each side"
    );
    let mut differences = Vec::new();
    for ((ml, mf), (el, ef)) in meshgate.entries.iter().zip(&envoy.entries) {
        assert_eq!(ml, el, "the scenario diverged");
        let fields: std::collections::BTreeSet<&String> = mf.keys().chain(ef.keys()).collect();
        for field in fields {
            let (m, e) = (mf.get(field), ef.get(field));
            if let Some(d) = deliberate
                .iter()
                .find(|d| ml.contains(d.label) && field == d.field)
            {
                if !d.meshgate.holds(m) || !d.envoy.holds(e) {
                    differences.push(format!(
                        "{ml}\n    {field}: meshgate {m:?} (expected {:?})\n    {field}: envoy    {e:?} (expected {:?})",
                        d.meshgate, d.envoy
                    ));
                }
                continue;
            }
            if m == e {
                continue;
            }
            differences.push(format!(
                "{ml}\n    {field}: meshgate {m:?}\n    {field}: envoy    {e:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "meshgate and Envoy answered differently ({}):\n{}",
        differences.len(),
        differences.join("\n")
    );
}
