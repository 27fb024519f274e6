//! `meshgate explain`: why a request gets a 404, a 503, or goes where it goes. The
//! configuration comes from Istio files (`--config`, as `meshgate gateway --config`
//! loads them), a running gateway's `/config_dump` (`--admin`), or a control plane
//! (`--xds`, as `meshgate gateway --xds` subscribes); it is compiled by the data plane's
//! compiler and the request is followed through it (`meshgate::proxy::explain`).
//!
//! Exit codes: 0 explained, 1 the configuration cannot be loaded or compiled, 2 could not
//! run (bad flags, unreachable source).
use clap::ValueEnum;
use meshgate::proxy::explain::{ExplainRequest, explain};
use meshgate::xds::{ProxyIdentity, ResourceSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For tools (the schema is in docs/explain.md).
    Json,
}

/// Arguments of `meshgate explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The request: `[METHOD] URL`, e.g. `GET https://shop.example.com/cart?id=3`.
    /// The URL's host is the Host header and (for https) the SNI; its port, else 80 or
    /// 443, the gateway port connected to.
    #[arg(value_name = "REQUEST")]
    pub request: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Istio configuration (a file or a directory), loaded as `meshgate gateway --config`
    /// loads it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["admin", "xds"], required_unless_present_any = ["admin", "xds"])]
    pub config: Option<PathBuf>,
    /// A running gateway's admin address (HOST:PORT): its `/config_dump` is explained.
    #[arg(long, value_name = "ADDR", conflicts_with = "xds")]
    pub admin: Option<String>,
    /// A control plane's plaintext xDS address (HOST:PORT): what it serves a gateway with
    /// --labels and --namespace is explained.
    #[arg(long, value_name = "ADDR")]
    pub xds: Option<String>,
    /// The gateway port the client connects to (default: the URL's port, else 80/443).
    #[arg(long)]
    pub port: Option<u16>,
    /// The SNI the client sends (default: the URL's host, for https).
    #[arg(long)]
    pub sni: Option<String>,
    /// The ALPN protocols the client offers, comma-separated (https only).
    #[arg(long, default_value = "h2,http/1.1")]
    pub alpn: String,
    /// A PEM certificate the client presents (its SANs are what policies see).
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Send the request as HTTP/1.0.
    #[arg(long = "http1.0")]
    pub http10: bool,
    /// The client's address (what AuthorizationPolicy `ipBlocks` see).
    #[arg(long, default_value = "127.0.0.1")]
    pub source_ip: IpAddr,
    /// With --config: Istio MeshConfig (YAML), as the gateway reads it.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// With --config: the gateway's own ProxyConfig (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
    /// The gateway's workload labels (Gateway selectors match them).
    #[arg(long, default_value = "istio=ingressgateway")]
    pub labels: String,
    /// The gateway's namespace (default: that of the Gateways selecting it; with --xds,
    /// istio-system).
    #[arg(long)]
    pub namespace: Option<String>,
    /// text (default) or json.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs the subcommand.
pub fn run(args: Args) -> ExitCode {
    if args.config.is_none() && (args.mesh_config.is_some() || args.proxy_config.is_some()) {
        eprintln!(
            "meshgate explain: --mesh-config and --proxy-config go with --config (a running gateway or control plane has its own)"
        );
        return ExitCode::from(2);
    }
    let req = match request(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate explain: {e}");
            return ExitCode::from(2);
        }
    };
    let set = match resources(&args) {
        Ok(s) => s,
        Err((code, e)) => {
            eprintln!("meshgate explain: {e}");
            return ExitCode::from(code);
        }
    };
    let snap = match meshgate::proxy::compile::compile_without_secret_material(&set, "explain") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshgate explain: the gateway would reject this configuration: {e}");
            return ExitCode::from(1);
        }
    };
    let mut explanation = explain(&snap, &set, &req);
    // A running proxy knows its endpoints' health and its DNS answers.
    if let Some(admin) = &args.admin {
        match http_get(admin, "/clusters") {
            Ok(text) => explanation.add_live_endpoints(&String::from_utf8_lossy(&text)),
            Err(e) => eprintln!("meshgate explain: --admin {admin}: /clusters: {e}"),
        }
    }
    let text = match args.output {
        Output::Text => explanation.to_text(),
        Output::Json => match serde_json::to_string_pretty(&explanation) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("meshgate explain: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

fn request(args: &Args) -> Result<ExplainRequest, String> {
    let mut words = args.request.split_whitespace();
    let (method, url) = match (words.next(), words.next(), words.next()) {
        (Some(url), None, _) => ("GET", url),
        (Some(m), Some(url), None) => (m, url),
        _ => return Err(format!("request {:?}: expected [METHOD] URL", args.request)),
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid method {method:?}"))?;
    let uri: http::Uri = url.parse().map_err(|e| format!("URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("URL {url:?}: needs http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?}: no host"))?;
    let port = args
        .port
        .or(authority.port_u16())
        .unwrap_or(if https { 443 } else { 80 });
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?}: expected NAME: VALUE"))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("header {h:?}: invalid name"))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|_| format!("header {h:?}: invalid value"))?;
        headers.append(name, value);
    }
    // A Host header given with -H wins over the URL's (as curl does).
    let authority_text = headers
        .remove(http::header::HOST)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| authority.as_str().to_string());
    let client_cert = match &args.client_cert {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--client-cert {}: {e}", path.display()))?;
            let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--client-cert {}: {e}", path.display()))?;
            Some(
                meshgate::tls::PeerIdentity::from_chain(&chain).ok_or_else(|| {
                    format!("--client-cert {}: no certificate in it", path.display())
                })?,
            )
        }
    };
    Ok(ExplainRequest {
        method,
        https,
        sni: args
            .sni
            .clone()
            .or_else(|| https.then(|| authority.host().to_string())),
        authority: authority_text,
        path_and_query: uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        headers,
        port,
        alpn: args
            .alpn
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| a.as_bytes().to_vec())
            .collect(),
        client_cert,
        source_ip: args.source_ip,
        http10: args.http10,
    })
}

/// The resources to explain with, and the exit code for a failure.
fn resources(args: &Args) -> Result<ResourceSet, (u8, String)> {
    if let Some(admin) = &args.admin {
        return from_admin(admin);
    }
    let labels =
        ProxyIdentity::parse_labels(&args.labels).map_err(|e| (2, format!("--labels: {e}")))?;
    if let Some(xds) = &args.xds {
        return from_xds(xds, args, labels);
    }
    let Some(config) = &args.config else {
        return Err((2, "one of --config, --admin, --xds is needed".into()));
    };
    let mut mesh = match &args.mesh_config {
        None => meshgate::config::mesh::MeshConfig::default(),
        Some(path) => meshgate::config::mesh::load_mesh_config(path)
            .map_err(|d| (1, format!("--mesh-config: {}", joined(&d))))?,
    };
    if let Some(path) = &args.proxy_config {
        let pc = meshgate::config::mesh::load_proxy_config(path)
            .map_err(|d| (1, format!("--proxy-config: {}", joined(&d))))?;
        mesh = mesh.with_proxy_config(&pc);
    }
    let options = meshgate::pipeline::Options {
        mesh: Arc::new(mesh),
        ..meshgate::pipeline::Options::gateway(labels, args.namespace.clone())
    };
    let mut report = meshgate::pipeline::run(config, &options);
    let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    match report.translation.take() {
        Some((_, set)) => Ok(set),
        None => Err((
            1,
            format!(
                "{} error(s) in the configuration; nothing to explain{}",
                errors.len(),
                if errors.is_empty() { "" } else { " (above)" }
            ),
        )),
    }
}

fn joined(d: &[meshgate::config::Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET /config_dump` from a gateway's (or Envoy's) admin address, decoded.
fn from_admin(addr: &str) -> Result<ResourceSet, (u8, String)> {
    let body = http_get(addr, "/config_dump?include_eds")
        .map_err(|e| (2, format!("--admin {addr}: {e}")))?;
    let dump: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| (2, format!("--admin {addr}: /config_dump is not JSON: {e}")))?;
    config_dump_set(&dump).map_err(|e| (1, format!("--admin {addr}: /config_dump: {e}")))
}

/// The resources of an Envoy `/config_dump` (static and dynamic, active ones).
fn config_dump_set(dump: &serde_json::Value) -> Result<ResourceSet, String> {
    use serde_json::Value;
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let configs = dump
        .get("configs")
        .and_then(Value::as_array)
        .ok_or("no `configs`")?;
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("@type");
        }
        v
    };
    for c in configs {
        let ty = c.get("@type").and_then(Value::as_str).unwrap_or("");
        let list = |key: &str, inner: &[&str]| -> Vec<Value> {
            c.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| {
                            let mut v = e;
                            for k in inner {
                                v = v.get(*k)?;
                            }
                            Some(strip(v))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if ty.ends_with("ListenersConfigDump") {
            listeners.extend(list("static_listeners", &["listener"]));
            listeners.extend(list("dynamic_listeners", &["active_state", "listener"]));
        } else if ty.ends_with("RoutesConfigDump") {
            routes.extend(list("static_route_configs", &["route_config"]));
            routes.extend(list("dynamic_route_configs", &["route_config"]));
        } else if ty.ends_with("ClustersConfigDump") {
            clusters.extend(list("static_clusters", &["cluster"]));
            clusters.extend(list("dynamic_active_clusters", &["cluster"]));
        } else if ty.ends_with("EndpointsConfigDump") {
            endpoints.extend(list("static_endpoint_configs", &["endpoint_config"]));
            endpoints.extend(list("dynamic_endpoint_configs", &["endpoint_config"]));
        }
    }
    let json = serde_json::json!({
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
        "endpoints": endpoints,
    });
    meshgate::proxy::json_input::resource_set_from_json(&json)
}

/// A plain HTTP/1.1 GET (the admin API is plaintext on a local address).
fn http_get(addr: &str, path: &str) -> Result<Vec<u8>, String> {
    use std::net::ToSocketAddrs;
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{path} answered {status}"));
    }
    let body = buf[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(&body));
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        }
    }
    out
}

/// Collects the first complete set a control plane serves.
struct Collector {
    set: Mutex<Option<Arc<ResourceSet>>>,
}

impl meshgate::xds::client::ConfigConsumer for Collector {
    /// Everything is taken: a set the gateway would NACK is reported as such when it is
    /// compiled after the sync, rather than waited on here.
    fn check(&self, _candidate: &ResourceSet) -> Vec<meshgate::xds::client::Rejection> {
        Vec::new()
    }

    fn apply(&self, set: Arc<ResourceSet>) {
        if let Ok(mut s) = self.set.lock() {
            *s = Some(set);
        }
    }
}

/// What a control plane serves a gateway with these labels, as `meshgate gateway --xds`
/// subscribes (delta ADS, plaintext).
fn from_xds(
    addr: &str,
    args: &Args,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<ResourceSet, (u8, String)> {
    use meshgate::controlplane::bootstrap::EnvoyBootstrap;
    let bootstrap = EnvoyBootstrap {
        xds_address: addr.to_string(),
        node_id: "meshgate-explain".into(),
        kind: meshgate::xds::ProxyKind::Router,
        namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| "istio-system".into()),
        labels,
        delta: true,
        ..Default::default()
    };
    let node = meshgate::proxy::xds_consumer::gateway_node(&bootstrap)
        .map_err(|e| (2, format!("--xds: {e}")))?;
    let options = meshgate::xds::client::ClientOptions::new(addr, node);
    let collector = Arc::new(Collector {
        set: Mutex::new(None),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (2, e.to_string()))?;
    let got = rt.block_on(async {
        let client = meshgate::xds::client::XdsClient::new(options, collector.clone());
        let mut handle = client.handle();
        let task = tokio::spawn(client.run());
        let ready = tokio::time::timeout(Duration::from_secs(30), handle.wait_ready()).await;
        task.abort();
        ready.is_ok()
    });
    if !got {
        return Err((
            2,
            format!("--xds {addr}: no complete configuration within 30 s"),
        ));
    }
    let set = collector.set.lock().ok().and_then(|s| s.clone());
    set.map(|s| (*s).clone())
        .ok_or_else(|| (2, format!("--xds {addr}: nothing was served")))
}
