//! The conformance corpus: every row of the "Istio fields translated" table in
//! docs/configuration.md names a case in tests/conformance/, and every case runs here:
//!
//! 1. the configuration pipeline (what `meshgate validate` runs) finds no error, and no
//!    warning the case does not list;
//! 2. `meshgate translate` feeds a real Envoy 1.40, which must accept every resource;
//! 3. the case's requests go to Envoy, to `meshgate gateway --config` (standalone) and to
//!    `meshgate gateway --xds` joined to `meshgate control-plane` on the same files;
//! 4. every answer must match Envoy's: status, body, response headers, and what the
//!    upstream received (method, path, version, headers, body length). A case's
//!    `expect` is checked on all three too, so a case also proves what it claims.
//!
//! A case file is a header document, then Istio resources with placeholders:
//!
//! ```yaml
//! # What the case proves.
//! namespace: istio-system        # the gateway workload's namespace (default istio-system)
//! labels: istio=ingressgateway   # its labels (default)
//! warnings: ["substring"]        # validate warnings the case expects (default none)
//! differences: ["header x-y"]    # deliberate differences from Envoy (ignored, reported;
//!                                # a probe may list its own `differences` too):
//!                                # `header NAME`, `upstream header NAME`, `upstream
//!                                # method|path|version|body_len`, `body`, `cipher`
//! probes:
//! - method: POST                 # default GET
//!   path: /m                     # default /
//!   host: shop.example.com       # Host / :authority (default example.com)
//!   port: PORT2                  # which gateway port (default PORT)
//!   address: 127.0.0.2           # which loopback address to connect to (default 127.0.0.1)
//!   headers: {x-a: "1", x-b: ["1", "2"]}
//!   body: "text"
//!   http2: true                  # h2c prior knowledge, or ALPN h2 over TLS
//!   source: "127.0.0.2:{{SRC_PORT}}"  # the client's address: an IP (any loopback one),
//!                                # with a port to connect from the same one every run
//!   tls:
//!     sni: a.example.com         # default: the probe's host; "" sends none
//!     client: client             # present a certificate: client, other, foreign (below)
//!     alpn: [h2]                 # default: h2 with http2, else http/1.1
//!     verify: false              # check the server's certificate (default true)
//!     version: "1.2"             # offer only TLS 1.2 or only 1.3 (default both)
//!     ciphers: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]  # offer only these suites
//!     signature: rsa             # offer only RSA (or ECDSA) signature schemes
//!   await_stats: {"cluster.outbound|80||a.internal.outlier_detection.ejections_active": 1}
//!                                # wait (bounded) until the runtime's admin /stats say so
//!                                # (Envoy's `;` ending an alt_stat_name is ignored)
//!   repeat: 200                  # send N times, compare the distribution; `%i%` in the
//!                                # path, a header value or the source becomes the
//!                                # repetition's number
//!   expect:
//!     status: 201
//!     upstream: a                # which echo upstream answered
//!     version: HTTP/2.0          # the HTTP version the echo upstream received
//!     shares: {a: 0.7, b: 0.3}   # with repeat: each runtime's split, within 5 sd
//!     one_upstream: true         # with repeat: all answers from one upstream
//!     statuses: {200: 19, 503: 1}  # with repeat: how many answers had each status
//!     requests: {a: 1, b: 1}     # requests each upstream received (mirrors, retries)
//!     connections: {a: 5}        # connections each upstream accepted (connection reuse)
//!     min_ms: 200                # the answer took at least this long (delays)
//!     max_ms: 2000               # ... at most this long (a delay that must not apply)
//!     received:                  # fields of the last request an upstream received, for
//!       b: {headers: {host: example.com-shadow}}  # what no answer shows (a mirror's copy)
//!     refused: true              # no response at all (reset, closed, handshake refused)
//!     tls_version: "1.2"         # the TLS version the gateway negotiated
//!     cipher: TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384  # the suite it negotiated
//!     server_cert: server2       # the certificate it presented (names below)
//!     upstream_sni: a.example.com  # the SNI of every TLS upstream handshake the probe
//!                                # caused ("" for none); there must be at least one
//! ```
//!
//! Placeholders: `{{PORT}}`, `{{PORT2}}`, `{{PORT3}}`, `{{PORT4}}` (gateway ports),
//! `{{A}}`, `{{B}}`, `{{C}}` (echo upstreams answering JSON that names them and echoes
//! the request), `{{DEAD}}` (a closed port), `{{SRC_PORT}}` (a free port for a probe's
//! `source`), TLS upstreams on 127.0.0.1 with the
//! certificate `server` below: `{{TLS_A}}` and `{{TLS_B}}` (TLS in front of A and of B),
//! `{{MTLS_A}}` (in front of A, requiring a client certificate from the test CA),
//! `{{TLS_REVOKED}}` (in front of A, with a certificate for the same names that `{{CRL}}`
//! revokes), and certificates made at test time, as files:
//! - `{{CERT}}`, `{{KEY}}`: `server`, ECDSA, for `example.com`, `*.example.com`,
//!   `localhost`, from the test CA `{{CA}}`;
//! - `{{CERT2}}`, `{{KEY2}}`: `server2`, ECDSA, for `example.org`, `*.example.org`;
//! - `{{RSA_CERT}}`, `{{RSA_KEY}}`: `server-rsa`, RSA 2048, for the names of `server`;
//! - `{{CLIENT_CERT}}`, `{{CLIENT_KEY}}`: the `client` certificate (URI SAN
//!   `spiffe://cluster.local/ns/test/sa/client`); the `other` client certificate
//!   (`.../sa/other`) is revoked by `{{CRL}}`; the `foreign` one (`.../sa/foreign`) comes
//!   from another CA, `{{FOREIGN_CA}}`;
//! - `{{CLIENT_SPKI}}` (base64 SHA-256 of the client's public key), `{{CLIENT_HASH}}`
//!   (hex SHA-256 of its certificate);
//!
//! and the same as base64 for Secret `data` (`{{CERT_B64}}`, `{{KEY_B64}}`,
//! `{{CERT2_B64}}`, `{{KEY2_B64}}`, `{{RSA_CERT_B64}}`, `{{RSA_KEY_B64}}`, `{{CA_B64}}`,
//! `{{FOREIGN_CA_B64}}`, `{{CRL_B64}}`, `{{CLIENT_CERT_B64}}`, `{{CLIENT_KEY_B64}}`) and
//! as quoted YAML strings for `stringData` (`{{CERT_PEM}}`, `{{KEY_PEM}}`, `{{CA_PEM}}`,
//! `{{CRL_PEM}}`).
//!
//! Besides status, headers and bodies, the TLS version and the certificate each runtime
//! presented are compared with Envoy's.
//!
//! In `received`, an object matches the listed keys only, and a string matches a list
//! holding just that string (header values are lists); `null` means absent. The
//! `x-echo-fail-key` counts of the echo upstreams start afresh for each runtime, so one
//! key fails its first N requests on Envoy and on both meshgate runs.
//!
//! `CONFORMANCE_CASE=name` runs one case.
mod support;
#[path = "support/translate.rs"]
mod translate_support;
use support::xds_mesh;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::certs::{Leaf, TestCa};
use support::gateway::GatewayProcess;
use support::{EchoUpstream, TempDir, free_port, repo_root};
use translate_support::TlsFront;

// ---------------------------------------------------------------------------------------
// The table and the cases
// ---------------------------------------------------------------------------------------

/// (field, case) for every row of the fields table.
fn table_rows() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let start = doc
        .find("## Istio fields translated")
        .expect("the fields table section");
    let section = &doc[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut rows = Vec::new();
    for line in section[..end].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 4 || cells[0] == "resource" || cells[0].starts_with("---") {
            continue;
        }
        rows.push((format!("{} {}", cells[0], cells[1]), cells[3].to_string()));
    }
    rows
}

fn case_dir() -> PathBuf {
    repo_root().join("tests/conformance")
}

fn case_names_on_disk() -> BTreeSet<String> {
    std::fs::read_dir(case_dir())
        .expect("tests/conformance")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect()
}

#[test]
fn every_translated_field_has_a_case_and_every_case_a_field() {
    let rows = table_rows();
    assert!(
        rows.len() > 50,
        "the fields table was not found or is short"
    );
    let on_disk = case_names_on_disk();
    let missing: Vec<String> = rows
        .iter()
        .filter(|(_, case)| !on_disk.contains(case))
        .map(|(field, case)| format!("{field} -> tests/conformance/{case}.yaml"))
        .collect();
    assert!(
        missing.is_empty(),
        "rows of docs/configuration.md whose case does not exist:\n{}",
        missing.join("\n")
    );
    let named: BTreeSet<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    let orphans: Vec<&String> = on_disk
        .iter()
        .filter(|c| !named.contains(c.as_str()))
        .collect();
    assert!(
        orphans.is_empty(),
        "cases no row of docs/configuration.md names: {orphans:?}"
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_labels")]
    labels: String,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    differences: Vec<String>,
    probes: Vec<Probe>,
}

fn default_namespace() -> String {
    "istio-system".into()
}

fn default_labels() -> String {
    "istio=ingressgateway".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_host")]
    host: String,
    #[serde(default = "default_port")]
    port: String,
    #[serde(default = "default_address")]
    address: String,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    http2: bool,
    #[serde(default)]
    tls: Option<TlsProbe>,
    #[serde(default)]
    repeat: Option<usize>,
    /// The client's address: `IP` (a port the OS picks) or `IP:PORT`.
    #[serde(default)]
    source: Option<String>,
    /// Admin stats to wait for (bounded) before sending, e.g. an outlier ejection that
    /// the previous probe caused and the runtime applies asynchronously.
    #[serde(default)]
    await_stats: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    expect: Expect,
    /// Deliberate differences from Envoy for this probe only (as the case's `differences`).
    #[serde(default)]
    differences: Vec<String>,
}

impl Probe {
    /// Where the client connects from, if the probe says.
    fn source_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(s) = &self.source else {
            return Ok(None);
        };
        if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
            return Ok(Some(addr));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Some(std::net::SocketAddr::new(ip, 0)))
            .map_err(|e| format!("source {s:?}: {e}"))
    }

    /// The probe as sent the `i`th time: `%i%` in the path, header values and source
    /// replaced.
    fn repetition(&self, i: usize) -> std::borrow::Cow<'_, Probe> {
        const MARK: &str = "%i%";
        let marked = self.path.contains(MARK)
            || self.source.as_deref().is_some_and(|s| s.contains(MARK))
            || self
                .headers
                .values()
                .any(|v| v.values().iter().any(|v| v.contains(MARK)));
        if !marked {
            return std::borrow::Cow::Borrowed(self);
        }
        let n = i.to_string();
        let mut p = self.clone();
        p.path = p.path.replace(MARK, &n);
        p.source = p.source.map(|s| s.replace(MARK, &n));
        for v in p.headers.values_mut() {
            *v = match v {
                OneOrMany::One(s) => OneOrMany::One(s.replace(MARK, &n)),
                OneOrMany::Many(l) => {
                    OneOrMany::Many(l.iter().map(|s| s.replace(MARK, &n)).collect())
                }
            };
        }
        std::borrow::Cow::Owned(p)
    }
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_host() -> String {
    "example.com".into()
}
fn default_port() -> String {
    "PORT".into()
}
fn default_address() -> String {
    "127.0.0.1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsProbe {
    /// SNI (default: the probe's host; "" sends none).
    #[serde(default)]
    sni: Option<String>,
    /// `client` (a certificate from the test CA), `other` (one the CRL revokes),
    /// `foreign` (one from another CA), or none.
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    alpn: Option<Vec<String>>,
    /// Verify the server's certificate against the test CA (default true).
    #[serde(default = "yes")]
    verify: bool,
    /// Offer only this TLS version, `1.2` or `1.3`.
    #[serde(default)]
    version: Option<String>,
    /// Offer only these cipher suites (rustls/IANA names).
    #[serde(default)]
    ciphers: Option<Vec<String>>,
    /// Offer only the signature schemes of one key type, `rsa` or `ecdsa`.
    #[serde(default)]
    signature: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    upstream: Option<String>,
    /// The HTTP version the echo upstream received (`HTTP/1.1`, `HTTP/2.0`).
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    shares: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    one_upstream: bool,
    /// With repeat: how many answers had each status (`failed`: no answer).
    #[serde(default)]
    statuses: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    requests: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    connections: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    min_ms: Option<u64>,
    #[serde(default)]
    max_ms: Option<u64>,
    /// Per upstream, fields the last request it received must have.
    #[serde(default)]
    received: Option<BTreeMap<String, Value>>,
    /// No response: the connection is refused, reset or closed (an unknown SNI, say).
    #[serde(default)]
    refused: bool,
    /// The TLS version negotiated with the gateway, `1.2` or `1.3`.
    #[serde(default)]
    tls_version: Option<String>,
    /// The cipher suite negotiated with the gateway.
    #[serde(default)]
    cipher: Option<String>,
    /// The certificate the gateway presented (`server`, `server2`, `server-rsa`).
    #[serde(default)]
    server_cert: Option<String>,
    /// The SNI of every TLS handshake the probe caused at the TLS upstreams (`""`: none).
    #[serde(default)]
    upstream_sni: Option<String>,
}

/// A case: its header and the Istio YAML, both templates.
struct Case {
    name: String,
    header: Header,
    template: String,
}

/// Reads a case, filling its placeholders from `world`.
fn load_case(name: &str, world: &World) -> Case {
    let path = case_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let split = text
        .find("\n---\n")
        .unwrap_or_else(|| panic!("{}: no `---` after the header", path.display()));
    let (head, template) = (world.render(&text[..split]), &text[split + 5..]);
    let docs = meshgate::config::source::parse(&head);
    let root = match docs.into_iter().next() {
        Some(Ok(doc)) => doc.root.unwrap_or_else(|| panic!("{name}: empty header")),
        Some(Err(e)) => panic!("{name}: header: {e:?}"),
        None => panic!("{name}: no header"),
    };
    let header: Header =
        serde_json::from_value(root.to_value()).unwrap_or_else(|e| panic!("{name}: header: {e}"));
    Case {
        name: name.to_string(),
        header,
        template: template.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The world a case runs in: upstreams, certificates, ports
// ---------------------------------------------------------------------------------------

struct World {
    dir: TempDir,
    vars: Vec<(&'static str, String)>,
    ports: BTreeMap<&'static str, u16>,
    upstreams: Vec<EchoUpstream>,
    fronts: Vec<TlsFront>,
    ca_pem: String,
    client: Leaf,
    other_client: Leaf,
    foreign_client: Leaf,
    /// The DER of every server certificate a gateway may present, by name.
    server_certs: Vec<(&'static str, Vec<u8>)>,
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// PEM as a double-quoted YAML scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

fn der_of(pem: &str) -> Vec<u8> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut reader)
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// Serial numbers of the certificates `{{CRL}}` revokes.
const OTHER_CLIENT_SERIAL: u64 = 1002;
const REVOKED_SERVER_SERIAL: u64 = 1003;

impl World {
    fn new() -> World {
        let dir = TempDir::new();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ca = TestCa::new("conformance CA");
        let server_names = ["example.com", "*.example.com", "localhost"];
        let server = ca.leaf(&server_names);
        let server2 = ca.leaf(&["example.org", "*.example.org"]);
        let server_rsa = ca.leaf_custom(&server_names, 2001, true);
        let revoked_server = ca.leaf_custom(&server_names, REVOKED_SERVER_SERIAL, false);
        let client = ca.leaf_serial("spiffe://cluster.local/ns/test/sa/client", 1001);
        let other_client = ca.leaf_serial(
            "spiffe://cluster.local/ns/test/sa/other",
            OTHER_CLIENT_SERIAL,
        );
        let foreign_ca = TestCa::new("foreign CA");
        let foreign_client =
            foreign_ca.leaf_serial("spiffe://cluster.local/ns/test/sa/foreign", 1001);
        let crl = ca.crl(&[OTHER_CLIENT_SERIAL, REVOKED_SERVER_SERIAL]);
        let (cert_file, key_file) = server.write(&certs, "server");
        let (cert2_file, key2_file) = server2.write(&certs, "server2");
        let (rsa_cert_file, rsa_key_file) = server_rsa.write(&certs, "server-rsa");
        let (client_cert, client_key) = client.write(&certs, "client");
        let ca_file = ca.write_ca(&certs, "ca");
        let foreign_ca_file = foreign_ca.write_ca(&certs, "foreign-ca");
        let crl_file = certs.join("crl.pem");
        std::fs::write(&crl_file, &crl).unwrap();
        let client_der = der_of(&client.cert);
        let spki = {
            use sha2::Digest as _;
            let (_, cert) = x509_parser::parse_x509_certificate(&client_der).expect("x509");
            let digest = sha2::Sha256::digest(cert.public_key().raw);
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(digest)
        };
        let hash = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&client_der))
        };
        let upstreams: Vec<EchoUpstream> = ["a", "b", "c"]
            .iter()
            .map(|n| EchoUpstream::start(n))
            .collect();
        let fronts = vec![
            TlsFront::start(&server, None, upstreams[0].port()),
            TlsFront::start(&server, Some(&ca.pem), upstreams[0].port()),
            TlsFront::start(&server, None, upstreams[1].port()),
            TlsFront::start(&revoked_server, None, upstreams[0].port()),
        ];
        let mut ports = BTreeMap::new();
        for name in ["PORT", "PORT2", "PORT3", "PORT4"] {
            ports.insert(name, free_port());
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let vars = vec![
            ("PORT", ports["PORT"].to_string()),
            ("PORT2", ports["PORT2"].to_string()),
            ("PORT3", ports["PORT3"].to_string()),
            ("PORT4", ports["PORT4"].to_string()),
            ("A", upstreams[0].port().to_string()),
            ("B", upstreams[1].port().to_string()),
            ("C", upstreams[2].port().to_string()),
            ("DEAD", free_port().to_string()),
            ("SRC_PORT", free_port().to_string()),
            ("TLS_A", fronts[0].port.to_string()),
            ("MTLS_A", fronts[1].port.to_string()),
            ("TLS_B", fronts[2].port.to_string()),
            ("TLS_REVOKED", fronts[3].port.to_string()),
            ("CERT", path(&cert_file)),
            ("KEY", path(&key_file)),
            ("CERT2", path(&cert2_file)),
            ("KEY2", path(&key2_file)),
            ("RSA_CERT", path(&rsa_cert_file)),
            ("RSA_KEY", path(&rsa_key_file)),
            ("CA", path(&ca_file)),
            ("FOREIGN_CA", path(&foreign_ca_file)),
            ("CLIENT_CERT", path(&client_cert)),
            ("CLIENT_KEY", path(&client_key)),
            ("CRL", path(&crl_file)),
            ("CERT_B64", b64(&server.cert)),
            ("KEY_B64", b64(&server.key)),
            ("CERT2_B64", b64(&server2.cert)),
            ("KEY2_B64", b64(&server2.key)),
            ("RSA_CERT_B64", b64(&server_rsa.cert)),
            ("RSA_KEY_B64", b64(&server_rsa.key)),
            ("CA_B64", b64(&ca.pem)),
            ("FOREIGN_CA_B64", b64(&foreign_ca.pem)),
            ("CRL_B64", b64(&crl)),
            ("CLIENT_CERT_B64", b64(&client.cert)),
            ("CLIENT_KEY_B64", b64(&client.key)),
            ("CERT_PEM", quoted(&server.cert)),
            ("KEY_PEM", quoted(&server.key)),
            ("CA_PEM", quoted(&ca.pem)),
            ("CRL_PEM", quoted(&crl)),
            ("CLIENT_SPKI", spki),
            ("CLIENT_HASH", hash),
        ];
        let server_certs = vec![
            ("server", der_of(&server.cert)),
            ("server2", der_of(&server2.cert)),
            ("server-rsa", der_of(&server_rsa.cert)),
            ("server-revoked", der_of(&revoked_server.cert)),
        ];
        World {
            dir,
            vars,
            ports,
            upstreams,
            fronts,
            ca_pem: ca.pem.clone(),
            client,
            other_client,
            foreign_client,
            server_certs,
        }
    }

    fn render(&self, template: &str) -> String {
        translate_support::render(template, &self.vars)
    }

    fn upstream_counts(&self) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.requests()))
            .collect()
    }

    /// The SNI of every handshake the TLS upstreams completed so far, in order per front.
    fn upstream_snis(&self) -> Vec<Vec<Option<String>>> {
        self.fronts.iter().map(TlsFront::snis).collect()
    }

    /// The name of a server certificate, by its DER.
    fn server_cert_name(&self, der: &[u8]) -> String {
        self.server_certs
            .iter()
            .find(|(_, d)| d == der)
            .map_or_else(|| "unknown".to_string(), |(n, _)| n.to_string())
    }

    fn connection_counts(&self) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.connections()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The probe client: HTTP/1.1 or HTTP/2, plain or TLS
// ---------------------------------------------------------------------------------------

/// What a runtime answered to one request, normalized for comparison.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Response {
        status: u16,
        headers: BTreeMap<String, Vec<String>>,
        body: Body,
        elapsed_ms: u64,
        /// What the TLS handshake with the gateway settled, for TLS probes.
        tls: Option<TlsFacts>,
    },
    /// The connection failed or was reset before a response.
    Failed(String),
}

/// The outcome of a TLS handshake with the gateway.
#[derive(Debug, Clone, PartialEq)]
struct TlsFacts {
    /// `1.2` or `1.3`.
    version: String,
    cipher: String,
    /// The name of the certificate the gateway presented (see `World::server_certs`).
    server_cert: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    /// An echo upstream's description of what it received.
    Echo(Value),
    Text(String),
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Response { status, .. } => Some(*status),
            Answer::Failed(_) => None,
        }
    }

    fn upstream(&self) -> Option<String> {
        self.echoed("upstream")
    }

    /// A string the echo upstream reported (`upstream`, `version`, `method`, ...).
    fn echoed(&self, key: &str) -> Option<String> {
        match self {
            Answer::Response {
                body: Body::Echo(v),
                ..
            } => v[key].as_str().map(str::to_string),
            _ => None,
        }
    }

    fn tls(&self) -> Option<&TlsFacts> {
        match self {
            Answer::Response { tls, .. } => tls.as_ref(),
            Answer::Failed(_) => None,
        }
    }
}

/// Headers whose values differ between any two runs (compared by presence only).
const VOLATILE: &[&str] = &["date", "x-envoy-upstream-service-time", "x-request-id"];

fn normalize_headers(headers: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        let value = if VOLATILE.contains(&k.as_str()) {
            "<volatile>".to_string()
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        out.entry(k.as_str().to_string()).or_default().push(value);
    }
    out
}

fn normalize_echo(mut v: Value) -> Value {
    if let Some(headers) = v.get_mut("headers").and_then(Value::as_object_mut) {
        for name in VOLATILE {
            if let Some(values) = headers.get_mut(*name) {
                *values = Value::from(vec!["<volatile>"]);
            }
        }
    }
    v
}

struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

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
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut std::io::BufReader::new(pem.as_bytes()))
        .map(|c| c.expect("PEM certificate"))
        .collect()
}

fn pem_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut std::io::BufReader::new(pem.as_bytes()))
        .expect("PEM key")
        .expect("a key")
}

/// A verifier that offers only some signature schemes, so that a server holding
/// several certificates must present the one of that key type.
#[derive(Debug)]
struct OnlySchemes {
    inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for OnlySchemes {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

fn client_tls(world: &World, t: &TlsProbe, http2: bool) -> Result<ClientTls, String> {
    use rustls::SignatureScheme as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(names) = &t.ciphers {
        provider
            .cipher_suites
            .retain(|s| names.iter().any(|n| n == &format!("{:?}", s.suite())));
        if provider.cipher_suites.len() != names.len() {
            return Err(format!("unknown cipher suite among {names:?}"));
        }
    }
    let offered = |v: &rustls::SupportedProtocolVersion| {
        provider.cipher_suites.iter().any(|s| s.version() == v)
    };
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS13, &rustls::version::TLS12]
            .into_iter()
            .filter(|v| match t.version.as_deref() {
                None => true,
                Some("1.2") => v.version == rustls::ProtocolVersion::TLSv1_2,
                Some("1.3") => v.version == rustls::ProtocolVersion::TLSv1_3,
                Some(_) => false,
            })
            .filter(|v| offered(v))
            .collect();
    if versions.is_empty() {
        return Err(format!(
            "no TLS version to offer (version {:?}, ciphers {:?})",
            t.version, t.ciphers
        ));
    }
    let provider = Arc::new(provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("versions: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if t.verify {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&world.ca_pem) {
            roots.add(c).expect("CA");
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("verifier: {e}"))?
    } else {
        Arc::new(NoVerify)
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match t.signature.as_deref()
    {
        None => verifier,
        Some(kind) => {
            let schemes: Vec<S> = verifier
                .supported_verify_schemes()
                .into_iter()
                .filter(|s| match kind {
                    "rsa" => matches!(
                        s,
                        S::RSA_PKCS1_SHA256
                            | S::RSA_PKCS1_SHA384
                            | S::RSA_PKCS1_SHA512
                            | S::RSA_PSS_SHA256
                            | S::RSA_PSS_SHA384
                            | S::RSA_PSS_SHA512
                    ),
                    "ecdsa" => matches!(
                        s,
                        S::ECDSA_NISTP256_SHA256
                            | S::ECDSA_NISTP384_SHA384
                            | S::ECDSA_NISTP521_SHA512
                    ),
                    _ => false,
                })
                .collect();
            if schemes.is_empty() {
                return Err(format!("signature `{kind}`: expected rsa or ecdsa"));
            }
            Arc::new(OnlySchemes {
                inner: verifier,
                schemes,
            })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match t.client.as_deref() {
        None | Some("none") => builder.with_no_client_auth(),
        Some(which) => {
            let leaf = match which {
                "client" => &world.client,
                "other" => &world.other_client,
                "foreign" => &world.foreign_client,
                _ => {
                    return Err(format!(
                        "client `{which}`: expected client, other or foreign"
                    ));
                }
            };
            builder
                .with_client_auth_cert(pem_certs(&leaf.cert), pem_key(&leaf.key))
                .expect("client certificate")
        }
    };
    config.alpn_protocols = match &t.alpn {
        Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None if http2 => vec![b"h2".to_vec()],
        None => vec![b"http/1.1".to_vec()],
    };
    if t.sni.as_deref() == Some("") {
        config.enable_sni = false;
    }
    Ok(ClientTls {
        config: Arc::new(config),
    })
}

async fn send_once(world: &World, port: u16, p: &Probe) -> Answer {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(15), exchange(world, port, p)).await {
        Ok(Ok((status, headers, bytes, tls))) => {
            let body = match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) if v.get("upstream").is_some() && v.get("headers").is_some() => {
                    Body::Echo(normalize_echo(v))
                }
                _ => Body::Text(String::from_utf8_lossy(&bytes).into_owned()),
            };
            Answer::Response {
                status,
                headers: normalize_headers(&headers),
                body,
                elapsed_ms: started.elapsed().as_millis() as u64,
                tls,
            }
        }
        Ok(Err(e)) => Answer::Failed(e),
        Err(_) => Answer::Failed("no answer within 15 s".into()),
    }
}

async fn exchange(
    world: &World,
    port: u16,
    p: &Probe,
) -> Result<(u16, http::HeaderMap, Bytes, Option<TlsFacts>), String> {
    let source = p.source_addr()?;
    let tcp = match source {
        None => tokio::net::TcpStream::connect((p.address.as_str(), port)).await,
        Some(addr) => {
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            socket.set_reuseaddr(true).ok();
            if addr.port() != 0 {
                // The same address and port again for the next runtime: no TIME_WAIT.
                socket.set_zero_linger().ok();
            }
            socket.bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            socket
                .connect(std::net::SocketAddr::new(
                    p.address
                        .parse()
                        .map_err(|e| format!("address {}: {e}", p.address))?,
                    port,
                ))
                .await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let mut facts = None;
    let (io, h2, scheme): (Box<dyn IoBox>, bool, &str) = match &p.tls {
        None => (Box::new(tcp), p.http2, "http"),
        Some(t) => {
            let tls = client_tls(world, t, p.http2)?;
            let sni = t
                .sni
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| p.host.clone());
            let name =
                rustls::pki_types::ServerName::try_from(sni).map_err(|e| format!("SNI: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let conn = stream.get_ref().1;
            let h2 = conn.alpn_protocol() == Some(b"h2");
            facts = Some(TlsFacts {
                version: match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".into(),
                    Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".into(),
                    other => format!("{other:?}"),
                },
                cipher: conn
                    .negotiated_cipher_suite()
                    .map_or_else(String::new, |s| format!("{:?}", s.suite())),
                server_cert: conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map_or_else(|| "none".into(), |c| world.server_cert_name(c)),
            });
            (Box::new(stream), h2, "https")
        }
    };
    let io = hyper_util::rt::TokioIo::new(io);
    let mut builder = http::Request::builder().method(p.method.as_str());
    builder = if h2 {
        builder.uri(format!("{scheme}://{}{}", p.host, p.path))
    } else {
        let b = builder.uri(p.path.as_str());
        if p.host.is_empty() {
            b
        } else {
            b.header("host", p.host.as_str())
        }
    };
    for (k, v) in &p.headers {
        for value in v.values() {
            builder = builder.header(k.as_str(), value);
        }
    }
    let body = Full::new(Bytes::from(p.body.clone().unwrap_or_default()));
    let req = builder.body(body).map_err(|e| format!("request: {e}"))?;
    // The sender is kept until the body is read; dropping it closes the connection.
    let (resp, sender, conn): (_, Box<dyn Send>, tokio::task::JoinHandle<()>) = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        (resp, Box::new(send), conn)
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        (resp, Box::new(send), conn)
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    drop(sender);
    if source.is_some_and(|a| a.port() != 0) {
        // A fixed source port is free again only once this connection is closed.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
    Ok((status, headers, bytes, facts))
}

trait IoBox: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoBox for T {}

// ---------------------------------------------------------------------------------------
// Running a case on one runtime
// ---------------------------------------------------------------------------------------

/// What one runtime did with one probe.
#[derive(Debug, Clone)]
enum Observed {
    One(Answer),
    Many {
        statuses: BTreeMap<String, usize>,
        upstreams: BTreeMap<String, usize>,
    },
}

/// Sends every probe, checking each one's `expect`; returns the observations and the
/// expectation failures.
fn run_probes(
    world: &World,
    case: &Case,
    runtime: &str,
    stats: &dyn Fn() -> Option<String>,
) -> (Vec<Observed>, Vec<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut observed = Vec::new();
    let mut failures = Vec::new();
    // Every runtime meets upstreams that have not failed yet (`x-echo-fail-first`).
    for u in &world.upstreams {
        u.forget_failures();
    }
    for (i, p) in case.header.probes.iter().enumerate() {
        let port = *world
            .ports
            .get(p.port.as_str())
            .unwrap_or_else(|| panic!("{}: probe {i}: unknown port {}", case.name, p.port));
        if let Some(want) = &p.await_stats
            && let Err(got) = await_stats(stats, want)
        {
            failures.push(format!(
                "{runtime}: probe {i} ({} {}): stats {got:?}, awaited {want:?}",
                p.method, p.path
            ));
        }
        let before = world.upstream_counts();
        let snis_before = world.upstream_snis();
        let connections_before = world.connection_counts();
        if p.expect.received.is_some() {
            for u in &world.upstreams {
                u.clear_last();
            }
        }
        let fail = |failures: &mut Vec<String>, what: String| {
            failures.push(format!(
                "{runtime}: probe {i} ({} {}): {what}",
                p.method, p.path
            ))
        };
        match p.repeat {
            None => {
                let a = rt.block_on(send_once(world, port, p));
                if let Some(s) = p.expect.status
                    && a.status() != Some(s)
                {
                    fail(&mut failures, format!("expected status {s}, got {a:?}"));
                }
                if p.expect.refused && a.status().is_some() {
                    fail(&mut failures, format!("expected no response, got {a:?}"));
                }
                if let Some(u) = &p.expect.upstream
                    && a.upstream().as_deref() != Some(u.as_str())
                {
                    fail(&mut failures, format!("expected upstream {u}, got {a:?}"));
                }
                if let Some(v) = &p.expect.version
                    && a.echoed("version").as_deref() != Some(v.as_str())
                {
                    fail(
                        &mut failures,
                        format!("expected the upstream to see {v}, got {a:?}"),
                    );
                }
                if let (Some(min), Answer::Response { elapsed_ms, .. }) = (p.expect.min_ms, &a)
                    && *elapsed_ms < min
                {
                    fail(
                        &mut failures,
                        format!("answered in {elapsed_ms} ms, expected at least {min} ms"),
                    );
                }
                if let (Some(max), Answer::Response { elapsed_ms, .. }) = (p.expect.max_ms, &a)
                    && *elapsed_ms > max
                {
                    fail(
                        &mut failures,
                        format!("answered in {elapsed_ms} ms, expected at most {max} ms"),
                    );
                }
                let facts = a.tls();
                for (what, want, got) in [
                    (
                        "TLS version",
                        &p.expect.tls_version,
                        facts.map(|f| f.version.as_str()),
                    ),
                    (
                        "cipher suite",
                        &p.expect.cipher,
                        facts.map(|f| f.cipher.as_str()),
                    ),
                    (
                        "server certificate",
                        &p.expect.server_cert,
                        facts.map(|f| f.server_cert.as_str()),
                    ),
                ] {
                    if let Some(want) = want
                        && got != Some(want.as_str())
                    {
                        fail(
                            &mut failures,
                            format!("expected {what} {want}, got {got:?} ({a:?})"),
                        );
                    }
                }
                observed.push(Observed::One(a));
            }
            Some(n) => {
                let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
                let mut upstreams: BTreeMap<String, usize> = BTreeMap::new();
                for i in 0..n {
                    let a = rt.block_on(send_once(world, port, &p.repetition(i)));
                    let s = a
                        .status()
                        .map_or_else(|| "failed".to_string(), |s| s.to_string());
                    *statuses.entry(s).or_default() += 1;
                    *upstreams
                        .entry(a.upstream().unwrap_or_else(|| "-".into()))
                        .or_default() += 1;
                }
                if let Some(shares) = &p.expect.shares {
                    for (u, share) in shares {
                        let got = upstreams.get(u).copied().unwrap_or(0) as f64;
                        let mean = share * n as f64;
                        let sd = (n as f64 * share * (1.0 - share)).sqrt().max(1.0);
                        if (got - mean).abs() > 5.0 * sd {
                            fail(
                                &mut failures,
                                format!(
                                    "upstream {u} got {got} of {n}, expected {mean:.0} ± {:.0} (5 sd)",
                                    5.0 * sd
                                ),
                            );
                        }
                    }
                }
                if p.expect.one_upstream && upstreams.len() != 1 {
                    fail(
                        &mut failures,
                        format!("expected one upstream, got {upstreams:?}"),
                    );
                }
                if let Some(s) = p.expect.status
                    && statuses.get(&s.to_string()) != Some(&n)
                {
                    fail(
                        &mut failures,
                        format!("expected status {s} every time, got {statuses:?}"),
                    );
                }
                if let Some(want) = &p.expect.statuses {
                    let want: BTreeMap<String, usize> =
                        want.iter().map(|(s, n)| (s.to_string(), *n)).collect();
                    if want != statuses {
                        fail(
                            &mut failures,
                            format!("expected statuses {want:?}, got {statuses:?}"),
                        );
                    }
                }
                observed.push(Observed::Many {
                    statuses,
                    upstreams,
                });
            }
        }
        if let Some(want) = &p.expect.upstream_sni {
            let after = world.upstream_snis();
            let new: Vec<String> = after
                .iter()
                .zip(&snis_before)
                .flat_map(|(now, then)| now[then.len()..].iter())
                .map(|s| s.clone().unwrap_or_default())
                .collect();
            if new.is_empty() || new.iter().any(|s| s != want) {
                fail(
                    &mut failures,
                    format!("expected TLS upstream handshakes with SNI {want:?}, saw {new:?}"),
                );
            }
        }
        // Mirrors arrive after the answer: poll the upstreams' counters (bounded).
        if let Some(want) = &p.expect.requests
            && let Err(got) = await_counts(&before, want, || world.upstream_counts())
        {
            fail(
                &mut failures,
                format!("upstreams received {got:?}, expected {want:?}"),
            );
        }
        if let Some(want) = &p.expect.connections
            && let Err(got) = await_counts(&connections_before, want, || world.connection_counts())
        {
            fail(
                &mut failures,
                format!("upstreams accepted {got:?} connections, expected {want:?}"),
            );
        }
        if let Some(want) = &p.expect.received {
            // Like mirrors' counts, what they received arrives after the answer.
            let deadline = Instant::now() + Duration::from_secs(5);
            for (name, fields) in want {
                let upstream = world
                    .upstreams
                    .iter()
                    .find(|u| &u.name == name)
                    .unwrap_or_else(|| panic!("{}: probe {i}: no upstream {name}", case.name));
                loop {
                    let last = upstream.last_request();
                    if last.as_ref().is_some_and(|l| has_fields(l, fields)) {
                        break;
                    }
                    if Instant::now() > deadline {
                        fail(
                            &mut failures,
                            format!("upstream {name} last received {last:?}, expected {fields}"),
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    (observed, failures)
}

/// Polls (bounded) until the admin stats in `want` have their values; on timeout, the
/// values last seen. Envoy names a cluster's stats after its `alt_stat_name`, which
/// meshgate's translation ends with `;`: `NAME;.stat` is read as `NAME.stat`.
fn await_stats(
    stats: &dyn Fn() -> Option<String>,
    want: &BTreeMap<String, u64>,
) -> Result<(), BTreeMap<String, Option<u64>>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = stats().unwrap_or_default();
        let mut values: BTreeMap<String, u64> = BTreeMap::new();
        for line in text.lines() {
            if let Some((name, value)) = line.rsplit_once(": ")
                && let Ok(v) = value.trim().parse::<u64>()
            {
                values.insert(name.replace(";.", "."), v);
            }
        }
        let got: BTreeMap<String, Option<u64>> = want
            .keys()
            .map(|k| (k.clone(), values.get(k).copied()))
            .collect();
        if want.iter().all(|(k, v)| got[k] == Some(*v)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(got);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls (bounded) until the counters' growth since `before` is `want` (zeros omitted);
/// on timeout, the growth last seen.
fn await_counts(
    before: &BTreeMap<String, usize>,
    want: &BTreeMap<String, usize>,
    now: impl Fn() -> BTreeMap<String, usize>,
) -> Result<(), BTreeMap<String, usize>> {
    let wanted: BTreeMap<String, usize> = want
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: BTreeMap<String, usize> = now()
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        if got == wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(got);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `got` has the fields `want` lists (see `received` in the module doc).
fn has_fields(got: &Value, want: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| match g.get(k) {
            Some(gv) => has_fields(gv, v),
            None => v.is_null(),
        }),
        (Value::String(w), Value::Array(g)) => g.len() == 1 && g[0] == *w,
        (w, g) => w == g,
    }
}

/// Differences between Envoy's observation and a runtime's, ignoring what the case lists
/// under `differences`.
fn compare(case: &Case, runtime: &str, envoy: &[Observed], other: &[Observed]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (e, o)) in envoy.iter().zip(other).enumerate() {
        let p = &case.header.probes[i];
        let ignored: Vec<String> = case
            .header
            .differences
            .iter()
            .chain(&p.differences)
            .cloned()
            .collect();
        let ignored = &ignored;
        let at = format!(
            "{runtime}: probe {i} ({} {} host {})",
            p.method, p.path, p.host
        );
        match (e, o) {
            (Observed::One(e), Observed::One(o)) => out.extend(
                diff_answers(e, o, ignored)
                    .into_iter()
                    .map(|d| format!("{at}: {d}")),
            ),
            (
                Observed::Many {
                    statuses: es,
                    upstreams: eu,
                },
                Observed::Many {
                    statuses: os,
                    upstreams: ou,
                },
            ) => {
                if es != os {
                    out.push(format!("{at}: statuses envoy {es:?}, meshgate {os:?}"));
                }
                // Distributions are judged by `expect`; the upstream sets must agree
                // when every answer came from one upstream.
                if p.expect.shares.is_none() && !p.expect.one_upstream && eu != ou {
                    out.push(format!("{at}: upstreams envoy {eu:?}, meshgate {ou:?}"));
                }
            }
            _ => out.push(format!("{at}: different shapes")),
        }
    }
    out
}

fn diff_answers(e: &Answer, o: &Answer, ignored: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    match (e, o) {
        (
            Answer::Response {
                status: es,
                headers: eh,
                body: eb,
                tls: et,
                ..
            },
            Answer::Response {
                status: os,
                headers: oh,
                body: ob,
                tls: ot,
                ..
            },
        ) => {
            if es != os {
                out.push(format!("status: envoy {es}, meshgate {os}"));
            }
            if let (Some(e), Some(o)) = (et, ot) {
                if e.version != o.version {
                    out.push(format!(
                        "TLS version: envoy {}, meshgate {}",
                        e.version, o.version
                    ));
                }
                if e.server_cert != o.server_cert {
                    out.push(format!(
                        "server certificate: envoy {}, meshgate {}",
                        e.server_cert, o.server_cert
                    ));
                }
                if e.cipher != o.cipher && !ignored.iter().any(|i| i == "cipher") {
                    out.push(format!(
                        "cipher suite: envoy {}, meshgate {}",
                        e.cipher, o.cipher
                    ));
                }
            }
            let names: BTreeSet<&String> = eh.keys().chain(oh.keys()).collect();
            for n in names {
                if ignored.iter().any(|i| i == &format!("header {n}")) {
                    continue;
                }
                if eh.get(n) != oh.get(n) {
                    out.push(format!(
                        "response header {n}: envoy {:?}, meshgate {:?}",
                        eh.get(n),
                        oh.get(n)
                    ));
                }
            }
            match (eb, ob) {
                (Body::Echo(ev), Body::Echo(ov)) => {
                    for key in ["upstream", "method", "path", "version", "body_len"] {
                        if ev[key] != ov[key]
                            && !ignored.iter().any(|i| i == &format!("upstream {key}"))
                        {
                            out.push(format!(
                                "upstream saw {key}: envoy {}, meshgate {}",
                                ev[key], ov[key]
                            ));
                        }
                    }
                    let empty = serde_json::Map::new();
                    let eh = ev["headers"].as_object().unwrap_or(&empty);
                    let oh = ov["headers"].as_object().unwrap_or(&empty);
                    let names: BTreeSet<&String> = eh.keys().chain(oh.keys()).collect();
                    for n in names {
                        if ignored.iter().any(|i| i == &format!("upstream header {n}")) {
                            continue;
                        }
                        if eh.get(n) != oh.get(n) {
                            out.push(format!(
                                "upstream header {n}: envoy {}, meshgate {}",
                                eh.get(n).unwrap_or(&Value::Null),
                                oh.get(n).unwrap_or(&Value::Null)
                            ));
                        }
                    }
                }
                (eb, ob) if eb != ob && !ignored.iter().any(|i| i == "body") => {
                    out.push(format!("body: envoy {eb:?}, meshgate {ob:?}"));
                }
                _ => {}
            }
        }
        (Answer::Failed(_), Answer::Failed(_)) => {}
        (e, o) => out.push(format!("envoy {e:?}, meshgate {o:?}")),
    }
    out
}

/// Runs one case end to end; returns every problem found.
fn run_case(name: &str) -> Vec<String> {
    let world = World::new();
    let case = &load_case(name, &world);
    let config_dir = world.dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("case.yaml"), world.render(&case.template)).unwrap();
    let mut problems = Vec::new();

    // 1. The pipeline, as `validate` runs it and as this gateway runs it.
    let labels = meshgate::xds::ProxyIdentity::parse_labels(&case.header.labels).expect("labels");
    let report = meshgate::pipeline::run(&config_dir, &meshgate::pipeline::Options::all_gateways());
    for d in &report.diagnostics {
        let expected = !d.is_error()
            && case
                .header
                .warnings
                .iter()
                .any(|w| d.message.contains(w.as_str()));
        if !expected {
            problems.push(format!("validate: {d}"));
        }
    }
    if report.has_errors() {
        return problems;
    }
    let gateway_report = meshgate::pipeline::run(
        &config_dir,
        &meshgate::pipeline::Options::gateway(labels, Some(case.header.namespace.clone())),
    );
    let Some((_, set)) = gateway_report.translation else {
        problems.push(format!(
            "pipeline for the gateway: {}",
            gateway_report.error_text()
        ));
        return problems;
    };
    let listeners = set.listeners.len() as u64;

    // 2. Envoy on `meshgate translate`'s files.
    let envoy_dir = TempDir::new();
    let envoy = {
        let out = envoy_dir.path().join("envoy");
        let admin = free_port();
        let output = std::process::Command::new(translate_support::meshgate_bin())
            .arg("translate")
            .arg("--config")
            .arg(&config_dir)
            .arg("--out")
            .arg(&out)
            .args(["--admin-port", &admin.to_string()])
            .args(["--labels", &case.header.labels])
            .args(["--namespace", &case.header.namespace])
            .output()
            .expect("meshgate translate");
        if !output.status.success() {
            problems.push(format!(
                "translate: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
            return problems;
        }
        support::Envoy::start(&out.join("envoy.yaml"), admin, envoy_dir.path())
    };
    let translated = TranslatedEnvoyRef(&envoy);
    translated.wait_listeners(listeners);
    envoy.assert_no_rejections();
    let envoy_stats = || envoy.admin_get("/stats").ok().map(|(_, body)| body);
    let (envoy_seen, failures) = run_probes(&world, case, "envoy", &envoy_stats);
    problems.extend(failures);
    drop(envoy);

    // 3. meshgate standalone.
    {
        let dir = TempDir::new();
        let config = config_dir.to_string_lossy().into_owned();
        let gw = GatewayProcess::start_with(
            &[
                "--config",
                &config,
                "--labels",
                &case.header.labels,
                "--namespace",
                &case.header.namespace,
                "--access-log",
                "off",
            ],
            dir.path(),
        );
        wait_bound(&world, listeners_ports(&set));
        let stats = || Some(gw.admin("/stats").1);
        let (seen, failures) = run_probes(&world, case, "meshgate --config", &stats);
        problems.extend(failures);
        problems.extend(compare(case, "meshgate --config", &envoy_seen, &seen));
        drop(gw);
    }

    // 4. meshgate joined to meshgate's control plane.
    {
        let dir = TempDir::new();
        let cp = xds_mesh::ControlPlaneProcess::start(&config_dir, dir.path());
        let mut gw = xds_mesh::XdsGateway::spawn(
            "conformance",
            &cp.xds_addr(),
            &case.header.labels,
            &case.header.namespace,
            true,
            dir.path(),
        );
        gw.wait_ready(Duration::from_secs(20));
        wait_bound(&world, listeners_ports(&set));
        let stats = || gw.admin("/stats").map(|(_, body)| body);
        let (seen, failures) = run_probes(&world, case, "meshgate --xds", &stats);
        problems.extend(failures);
        problems.extend(compare(case, "meshgate --xds", &envoy_seen, &seen));
    }
    problems
}

/// The addresses the translation listens on (all addresses: reached on 127.0.0.1).
fn listeners_ports(set: &meshgate::xds::ResourceSet) -> Vec<std::net::SocketAddr> {
    use meshgate::xds::pb::envoy::config::core::v3::address::Address as A;
    use meshgate::xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    set.listeners
        .iter()
        .filter_map(|l| match l.address.as_ref()?.address.as_ref()? {
            A::SocketAddress(s) => match s.port_specifier.as_ref()? {
                PortSpecifier::PortValue(p) => {
                    let ip: std::net::IpAddr = match s.address.as_str() {
                        "0.0.0.0" | "" => std::net::Ipv4Addr::LOCALHOST.into(),
                        "::" => std::net::Ipv6Addr::LOCALHOST.into(),
                        a => a.parse().ok()?,
                    };
                    Some(std::net::SocketAddr::new(ip, *p as u16))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Waits (bounded) until every listener address accepts connections.
fn wait_bound(_world: &World, addrs: Vec<std::net::SocketAddr>) {
    for a in addrs {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(a).is_err() {
            assert!(Instant::now() < deadline, "{a} did not open within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `TranslatedEnvoy::wait_listeners` for an Envoy started here.
struct TranslatedEnvoyRef<'a>(&'a support::Envoy);

impl TranslatedEnvoyRef<'_> {
    fn wait_listeners(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let active = self.0.stat("listener_manager.total_listeners_active");
            let warming = self.0.stat("listener_manager.total_listeners_warming");
            if active == Some(n) && warming.unwrap_or(0) == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy has {active:?} active / {warming:?} warming listeners, expected {n}:\n{}",
                self.0.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn every_case_is_served_as_envoy_serves_it() {
    let only = std::env::var("CONFORMANCE_CASE").ok();
    let names: Vec<String> = case_names_on_disk()
        .into_iter()
        .filter(|n| only.as_deref().is_none_or(|o| o == n))
        .collect();
    assert!(!names.is_empty(), "no case to run");
    let queue = Arc::new(std::sync::Mutex::new(names));
    let results = Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<String>>::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            let results = results.clone();
            std::thread::spawn(move || {
                loop {
                    let Some(name) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let started = Instant::now();
                    let problems = match std::panic::catch_unwind(|| run_case(&name)) {
                        Ok(p) => p,
                        Err(e) => vec![format!(
                            "panicked: {}",
                            e.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        )],
                    };
                    eprintln!(
                        "conformance: {name}: {} ({:.1} s)",
                        if problems.is_empty() { "ok" } else { "FAILED" },
                        started.elapsed().as_secs_f64()
                    );
                    results.lock().unwrap().insert(name, problems);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let results = results.lock().unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(name, p)| format!("== {name}\n  {}", p.join("\n  ")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}
