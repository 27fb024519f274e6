//! Helpers for tests where real processes join a mesh: a `meshgate control-plane`
//! process on fixed ports (so it can be killed and started again on the same address),
//! `meshgate gateway --xds` processes, Envoy bootstraps written by
//! `meshgate bootstrap envoy`, and Istio YAML for gateways on loopback ports. A control
//! plane can run its CA too (`--ca-dir`, mutual TLS on its own port), with join tokens
//! from `meshgate token create`.
#![allow(dead_code)]

use crate::support::{blocking_http_get, free_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

fn wait_exit_or(child: &mut Child, what: &str, log: &Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "{what} exited with {status}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// A `meshgate control-plane --config DIR` process.
pub struct ControlPlaneProcess {
    child: Option<Child>,
    pub config: PathBuf,
    pub xds_port: u16,
    pub debug_port: u16,
    /// The mutual-TLS port (15012), when the control plane runs its CA.
    pub tls_port: Option<u16>,
    pub log_path: PathBuf,
}

/// The ports of a control plane with a CA: plaintext xDS, debug, mutual TLS.
#[derive(Debug, Clone, Copy)]
pub struct CaPorts {
    pub xds: u16,
    pub debug: u16,
    pub tls: u16,
}

impl CaPorts {
    pub fn free() -> CaPorts {
        CaPorts {
            xds: free_port(),
            debug: free_port(),
            tls: free_port(),
        }
    }
}

impl ControlPlaneProcess {
    /// Starts with its CA in `ca_dir` (made on first start) on `ports`, with `extra`
    /// flags (`--ca-max-ttl`, ...), and waits until both ports serve.
    pub fn start_with_ca(
        config: &Path,
        workdir: &Path,
        ca_dir: &Path,
        ports: CaPorts,
        extra: &[&str],
    ) -> ControlPlaneProcess {
        Self::start_with_ca_logging(config, workdir, ca_dir, ports, extra, "info")
    }

    /// [`ControlPlaneProcess::start_with_ca`] logging at `rust_log` (`RUST_LOG`).
    pub fn start_with_ca_logging(
        config: &Path,
        workdir: &Path,
        ca_dir: &Path,
        ports: CaPorts,
        extra: &[&str],
        rust_log: &str,
    ) -> ControlPlaneProcess {
        let mut args: Vec<String> = vec![
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--xds-tls-addr".into(),
            format!("127.0.0.1:{}", ports.tls),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Self::spawn_args(config, workdir, ports.xds, ports.debug, &args, rust_log);
        p.tls_port = Some(ports.tls);
        p.wait_serving(Duration::from_secs(20));
        p
    }

    /// `127.0.0.1:TLS_PORT` (panics without a CA).
    pub fn tls_addr(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.tls_port.expect("a control plane with a CA")
        )
    }

    /// Starts on fresh ports with `extra` flags and waits until it serves.
    pub fn start_with_args(config: &Path, workdir: &Path, extra: &[&str]) -> ControlPlaneProcess {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let p = Self::spawn_args(config, workdir, free_port(), free_port(), &extra, "info");
        p.wait_serving(Duration::from_secs(20));
        p
    }

    /// Starts on fresh ports and waits until it serves.
    pub fn start(config: &Path, workdir: &Path) -> ControlPlaneProcess {
        Self::start_on(config, workdir, free_port(), free_port())
    }

    /// Starts on the given ports and waits until it serves (`/ready` on the debug port).
    pub fn start_on(
        config: &Path,
        workdir: &Path,
        xds_port: u16,
        debug_port: u16,
    ) -> ControlPlaneProcess {
        let p = Self::spawn(config, workdir, xds_port, debug_port);
        p.wait_serving(Duration::from_secs(20));
        p
    }

    /// Starts without waiting.
    pub fn spawn(
        config: &Path,
        workdir: &Path,
        xds_port: u16,
        debug_port: u16,
    ) -> ControlPlaneProcess {
        Self::spawn_args(config, workdir, xds_port, debug_port, &[], "info")
    }

    fn spawn_args(
        config: &Path,
        workdir: &Path,
        xds_port: u16,
        debug_port: u16,
        extra: &[String],
        rust_log: &str,
    ) -> ControlPlaneProcess {
        let log_path = workdir.join(format!("control-plane-{xds_port}.log"));
        // Appends, so that a restarted control plane's log follows the killed one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("control plane log");
        let child = meshgate()
            .arg("control-plane")
            .arg("--config")
            .arg(config)
            .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
            .args(["--debug-addr", &format!("127.0.0.1:{debug_port}")])
            .args(["--debounce-after-ms", "50", "--debounce-max-ms", "1000"])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawning meshgate control-plane");
        ControlPlaneProcess {
            child: Some(child),
            config: config.to_path_buf(),
            xds_port,
            debug_port,
            tls_port: None,
            log_path,
        }
    }

    pub fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let tls_up = self
                .tls_port
                .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if let Ok((200, _)) = blocking_http_get(("127.0.0.1", self.debug_port), "/ready")
                && tls_up
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane not serving after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn xds_addr(&self) -> String {
        format!("127.0.0.1:{}", self.xds_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: every connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn debug_get(&self, path: &str) -> (u16, String) {
        blocking_http_get(("127.0.0.1", self.debug_port), path).expect("debug endpoint")
    }

    /// `/debug/syncz` as JSON.
    pub fn syncz(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.debug_get("/debug/syncz");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("syncz json")
    }

    /// The syncz entry of the proxy whose node id contains `name`.
    pub fn proxy(&self, name: &str) -> Option<serde_json::Value> {
        self.syncz().into_iter().find(|p| {
            p["node_id"]
                .as_str()
                .is_some_and(|id| id.contains(&format!("~{name}.")))
        })
    }

    /// Waits until `pred` holds for the syncz list (bounded).
    pub fn wait_syncz(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.syncz();
            if pred(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}:\n{}",
                serde_json::to_string_pretty(&s).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- control plane log ---\n{}", self.log());
        }
    }
}

/// A single-use join token for `spiffe://cluster.local/ns/NAMESPACE/sa/SA` from the CA in
/// `ca_dir` (`meshgate token create`).
pub fn join_token(ca_dir: &Path, namespace: &str, service_account: &str) -> String {
    let out = meshgate()
        .args(["token", "create", "--ca-dir"])
        .arg(ca_dir)
        .args([
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ])
        .output()
        .expect("meshgate token create");
    assert!(
        out.status.success(),
        "meshgate token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("token text")
        .trim()
        .to_string()
}

/// Writes the Envoy bootstrap with the `meshgate bootstrap envoy` command.
pub fn bootstrap_envoy(
    dir: &Path,
    name: &str,
    xds_addr: &str,
    labels: &str,
    namespace: &str,
    delta: bool,
    admin_port: u16,
) -> PathBuf {
    let out = dir.join(format!("{name}-bootstrap.yaml"));
    let status = meshgate()
        .args(["bootstrap", "envoy", "--xds", xds_addr, "--node-id", name])
        .args(["--labels", labels, "--namespace", namespace])
        .arg(if delta { "--delta" } else { "--sotw" })
        .args(["--admin-port", &admin_port.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("meshgate bootstrap envoy");
    assert!(status.success(), "meshgate bootstrap envoy failed");
    out
}

/// A `meshgate gateway --xds ADDR` process (not waited for: it may start before its
/// control plane).
pub struct XdsGateway {
    child: Option<Child>,
    pub name: String,
    pub admin_port: u16,
    pub health_port: u16,
    pub log_path: PathBuf,
}

impl XdsGateway {
    pub fn spawn(
        name: &str,
        xds_addr: &str,
        labels: &str,
        namespace: &str,
        delta: bool,
        workdir: &Path,
    ) -> XdsGateway {
        Self::spawn_with(name, xds_addr, labels, namespace, delta, workdir, &[])
    }

    /// Spawns with more flags.
    pub fn spawn_with(
        name: &str,
        xds_addr: &str,
        labels: &str,
        namespace: &str,
        delta: bool,
        workdir: &Path,
        extra: &[&str],
    ) -> XdsGateway {
        let admin_port = free_port();
        let health_port = free_port();
        let log_path = workdir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("gateway log");
        let mut cmd = meshgate();
        cmd.args(["gateway", "--xds", xds_addr, "--node-id", name])
            .args(["--labels", labels, "--namespace", namespace])
            .args(["--concurrency", "1", "--access-log", "off"])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .args(["--health-address", &format!("127.0.0.1:{health_port}")])
            .args([
                "--prometheus-address",
                &format!("127.0.0.1:{}", free_port()),
            ]);
        if !delta {
            cmd.arg("--xds-sotw");
        }
        cmd.args(extra);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawning meshgate gateway --xds");
        XdsGateway {
            child: Some(child),
            name: name.to_string(),
            admin_port,
            health_port,
            log_path,
        }
    }

    /// Spawns and waits for readiness (the first full sync).
    pub fn start(
        name: &str,
        xds_addr: &str,
        labels: &str,
        namespace: &str,
        delta: bool,
        workdir: &Path,
    ) -> XdsGateway {
        let mut g = Self::spawn(name, xds_addr, labels, namespace, delta, workdir);
        g.wait_ready(Duration::from_secs(20));
        g
    }

    /// The status of `/healthz/ready` (None while nothing answers).
    pub fn health(&self) -> Option<u16> {
        blocking_http_get(("127.0.0.1", self.health_port), "/healthz/ready")
            .ok()
            .map(|(s, _)| s)
    }

    pub fn admin(&self, path: &str) -> Option<(u16, String)> {
        blocking_http_get(("127.0.0.1", self.admin_port), path).ok()
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                wait_exit_or(c, "meshgate gateway", &self.log_path);
            }
            if self.health() == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} not ready after {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `text`; panics if the gateway exits.
    pub fn wait_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                wait_exit_or(c, "meshgate gateway", &self.log_path);
            }
            if self.log().contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {}: `{text}` not logged within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for XdsGateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway {} log ---\n{}", self.name, self.log());
        }
    }
}

/// An Istio Gateway named `name` for workloads labelled `proxy: NAME`, plain HTTP on
/// 127.0.0.1:`port` for every host.
pub fn gateway_yaml(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: edge}}
spec:
  selector: {{proxy: {name}}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
"#
    )
}

/// A ServiceEntry `NAME.internal` for an upstream on 127.0.0.1:`port` (EDS endpoints).
pub fn service_entry_yaml(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: edge}}
spec:
  hosts: [{name}.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

/// A VirtualService for `host` on `gateways` sending everything to `NAME.internal:PORT`.
pub fn route_yaml(host: &str, gateways: &[&str], upstream: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: route, namespace: edge}}
spec:
  hosts: ["{host}"]
  gateways: [{gateways}]
  http:
  - route: [{{destination: {{host: {upstream}.internal, port: {{number: {port}}}}}}}]
"#,
        gateways = gateways.join(", ")
    )
}

/// Replaces a file the way editors do (write aside, rename over), so a watcher sees one
/// complete change.
pub fn write_atomically(path: &Path, text: &str) {
    // Written outside the watched directory, so the watcher sees only the rename.
    let dir = path
        .parent()
        .and_then(Path::parent)
        .expect("a file two levels deep");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
