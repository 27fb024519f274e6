//! Helpers for the data plane's tests: an in-process meshgate gateway fed Envoy JSON, the
//! same resources served by a real Envoy (filesystem xDS), a `meshgate gateway` process,
//! and a raw HTTP/1.1 client for requests no library would send.
use super::{Envoy, TempDir, blocking_http_get, free_port};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// meshgate's data plane running in this process.
pub struct InProcess {
    pub gateway: Option<meshgate::proxy::Gateway>,
}

impl InProcess {
    /// Starts a gateway (one worker, no access log, admin/health/Prometheus on free
    /// ports) and applies `resources`.
    pub fn start(resources: &Value) -> InProcess {
        Self::start_with(resources, |_| {})
    }

    pub fn start_with(
        resources: &Value,
        tweak: impl FnOnce(&mut meshgate::proxy::GatewayOptions),
    ) -> InProcess {
        let mut opts = meshgate::proxy::GatewayOptions {
            concurrency: 1,
            admin_addr: Some("127.0.0.1:0".parse().unwrap()),
            health_addr: Some("127.0.0.1:0".parse().unwrap()),
            prometheus_addr: Some("127.0.0.1:0".parse().unwrap()),
            access_log: meshgate::proxy::access_log::AccessLogMode::Off,
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        tweak(&mut opts);
        let gateway = meshgate::proxy::Gateway::start(opts).expect("gateway starts");
        gateway
            .apply(resource_set(resources), "1")
            .expect("resources compile");
        InProcess {
            gateway: Some(gateway),
        }
    }

    /// Starts a gateway serving an already-built resource set.
    pub fn start_set(set: meshgate::xds::ResourceSet) -> InProcess {
        let opts = meshgate::proxy::GatewayOptions {
            concurrency: 1,
            admin_addr: Some("127.0.0.1:0".parse().unwrap()),
            health_addr: None,
            prometheus_addr: None,
            access_log: meshgate::proxy::access_log::AccessLogMode::Off,
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let gateway = meshgate::proxy::Gateway::start(opts).expect("gateway starts");
        gateway.apply(set, "1").expect("resources compile");
        InProcess {
            gateway: Some(gateway),
        }
    }

    pub fn gw(&self) -> &meshgate::proxy::Gateway {
        self.gateway.as_ref().expect("running")
    }

    pub fn apply(&self, resources: &Value, version: &str) -> Result<(), String> {
        self.gw()
            .apply(resource_set(resources), version)
            .map_err(|e| e.to_string())
    }

    pub fn admin(&self, path: &str) -> (u16, String) {
        blocking_http_get(self.gw().admin_addr().unwrap(), path).expect("admin")
    }

    /// A stat's value from the admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin("/stats");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown();
        }
    }
}

/// Renders a resource set in the `{"listeners": [...], ...}` JSON form.
pub fn resource_json(set: &meshgate::xds::ResourceSet) -> Value {
    use meshgate::xds::json::to_json;
    json!({
        "listeners": set.listeners.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "routes": set.routes.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "clusters": set.clusters.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "endpoints": set.endpoints.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
    })
}

/// Translates Istio YAML in `dir` for an ingress gateway (`istio=ingressgateway`).
pub fn translate_istio(dir: &Path) -> meshgate::xds::ResourceSet {
    let outcome = meshgate::config::load(dir);
    let errors: Vec<String> = outcome
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let labels = meshgate::xds::ProxyIdentity::parse_labels("istio=ingressgateway").unwrap();
    let ns = meshgate::translate::default_namespace(&outcome.config, &labels);
    let mut proxy = meshgate::xds::ProxyIdentity::gateway(&ns, labels);
    proxy.namespace.clear();
    let (registry, _) = meshgate::registry::Registry::from_config(&outcome.config);
    meshgate::translate::gateway(&outcome.config, &registry, &proxy).resources
}

/// Parses resources in the `{"listeners": [...], ...}` JSON form.
pub fn resource_set(v: &Value) -> meshgate::xds::ResourceSet {
    meshgate::proxy::json_input::resource_set_from_json(v).expect("valid resource JSON")
}

/// Real Envoy serving the same resources through filesystem xDS.
pub fn envoy_with(resources: &Value, dir: &TempDir) -> Envoy {
    let admin = free_port();
    let d = dir.path();
    let mut r = resources.clone();
    let path_source = |file: &str| json!({"path_config_source": {"path": d.join(file).display().to_string()}, "resource_api_version": "V3"});
    // Route and endpoint subscriptions come from files instead of ADS.
    for l in r["listeners"].as_array_mut().into_iter().flatten() {
        for fc in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in fc["filters"].as_array_mut().into_iter().flatten() {
                if f["typed_config"]["rds"].is_object() {
                    f["typed_config"]["rds"]["config_source"] = path_source("rds.json");
                }
            }
        }
    }
    // Filesystem EDS: one file per cluster, holding exactly its assignment.
    let mut eds_files: Vec<(String, Value)> = Vec::new();
    for (i, c) in r["clusters"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if c["eds_cluster_config"].is_object() {
            let service = c["eds_cluster_config"]["service_name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .or(c["name"].as_str())
                .unwrap_or_default()
                .to_string();
            let file = format!("eds-{i}.json");
            c["eds_cluster_config"]["eds_config"] = path_source(&file);
            let cla = resources["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["cluster_name"] == service.as_str())
                .cloned()
                .collect::<Vec<_>>();
            eds_files.push((file, Value::Array(cla)));
        }
    }
    let write = |file: &str, ty: &str, list: &Value| {
        let resources: Vec<Value> = list
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut v| {
                v["@type"] = json!(format!("type.googleapis.com/{ty}"));
                v
            })
            .collect();
        let doc = json!({"version_info": "1", "resources": resources});
        let tmp = d.join(format!("{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        std::fs::rename(&tmp, d.join(file)).unwrap();
    };
    // Files a subscription names must exist before it is made: endpoints and routes
    // first, then clusters and listeners.
    for (file, list) in &eds_files {
        write(file, "envoy.config.endpoint.v3.ClusterLoadAssignment", list);
    }
    write(
        "rds.json",
        "envoy.config.route.v3.RouteConfiguration",
        &r["routes"],
    );
    write(
        "cds.json",
        "envoy.config.cluster.v3.Cluster",
        &r["clusters"],
    );
    write(
        "lds.json",
        "envoy.config.listener.v3.Listener",
        &r["listeners"],
    );
    let bootstrap = json!({
        "node": {"id": "router~127.0.0.1~envoy.test~test.svc.cluster.local", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "lds_config": path_source("lds.json"),
            "cds_config": path_source("cds.json"),
        },
    });
    let path = d.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    let envoy = Envoy::start(&path, admin, d);
    // Listeners appear after CDS/LDS warm; wait until every listener is bound.
    for l in r["listeners"].as_array().into_iter().flatten() {
        if let Some(port) = l["address"]["socket_address"]["port_value"].as_u64() {
            super::wait_for_port(port as u16, Duration::from_secs(20));
        }
    }
    envoy
}

/// A `meshgate gateway --xds-json FILE` process.
pub struct GatewayProcess {
    pub child: Option<Child>,
    pub admin_port: u16,
    pub health_port: u16,
    pub prometheus_port: u16,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl GatewayProcess {
    pub fn start(json_file: &Path, dir: &Path, extra: &[&str]) -> GatewayProcess {
        let file = json_file.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["--xds-json", file.as_str()];
        args.extend_from_slice(extra);
        Self::start_with(&args, dir)
    }

    /// Starts `meshgate gateway ARGS...` with admin/health/Prometheus on free ports.
    pub fn start_with(args: &[&str], dir: &Path) -> GatewayProcess {
        let admin_port = free_port();
        let health_port = free_port();
        let prometheus_port = free_port();
        let stdout_path = dir.join("meshgate.stdout");
        let stderr_path = dir.join("meshgate.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .arg("gateway")
            .args(args)
            .args(["--concurrency", "1"])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .args(["--health-address", &format!("127.0.0.1:{health_port}")])
            .args([
                "--prometheus-address",
                &format!("127.0.0.1:{prometheus_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn meshgate");
        let mut p = GatewayProcess {
            child: Some(child),
            admin_port,
            health_port,
            prometheus_port,
            stdout_path,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = blocking_http_get(("127.0.0.1", admin_port), "/ready") {
                break;
            }
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                panic!("meshgate exited with {status}:\n{}", p.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "meshgate not ready:\n{}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn admin(&self, path: &str) -> (u16, String) {
        blocking_http_get(("127.0.0.1", self.admin_port), path).expect("admin")
    }

    /// Sends SIGTERM and waits for the exit (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("meshgate did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- meshgate stderr ---\n{}", self.stderr());
        }
    }
}

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo upstream's JSON description of the request it got.
    pub fn echo(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends raw bytes on a new connection and reads one response (or EOF: status 0).
pub fn raw(port: u16, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

/// Reads one HTTP/1.1 response from a stream (content-length, chunked or close-delimited).
pub fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => {
                return RawResponse {
                    status: 0,
                    headers: vec![],
                    body: buf,
                };
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&tmp[..n]),
            }
        }
        body.truncate(len);
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while find(&body, b"0\r\n\r\n").is_none() {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&tmp[..n]),
            }
        }
        body = dechunk(&body);
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        loop {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&tmp[..n]),
            }
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
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

/// A GET with the given Host and extra header lines, `Connection: close`.
pub fn get(port: u16, host: &str, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(port, req.as_bytes())
}

/// An HCM listener on `port` using RDS route configuration `route`, with the given
/// extra HCM fields and HTTP filters before the router.
pub fn hcm_listener(
    name: &str,
    port: u16,
    route: &str,
    hcm_extra: Value,
    filters: Vec<Value>,
) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "rds": {"route_config_name": route, "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": http_filters,
    });
    if let (Some(h), Some(extra)) = (hcm.as_object_mut(), hcm_extra.as_object()) {
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
    }
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    })
}

/// A STATIC cluster with endpoints on 127.0.0.1 at `ports`.
pub fn static_cluster(name: &str, ports: &[u16], extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": ports.iter().map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}})).collect::<Vec<_>>()}]},
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

/// An Istio Gateway `gw` in `namespace` serving plain HTTP for every host on `port`,
/// selecting `istio=ingressgateway`, followed by a document separator.
pub fn istio_http_gateway(namespace: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: {namespace}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\n"
    )
}
