//! The mesh end to end in network namespaces: `meshgate control-plane` (with its CA) in a
//! pod of its own, `meshgate gateway --xds` joined to it, and application pods each with
//! real Envoy 1.40 under `meshgate agent` and its traffic captured by `meshgate iptables`.
//!
//! Each application is `tests/support/pod_app.py`: it answers with the request it saw
//! (headers included, so `x-forwarded-client-cert` shows who called it) and, told to,
//! calls another service from inside its pod first, through its sidecar.
//!
//! Needs root and network namespaces (see tests/support/pods.rs).
mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::TempDir;
use support::pods::{PROXY_UID, Pod, PodNet, PodProcess};

const APP_PORT: u16 = 8080;
const GATEWAY_PORT: u16 = 80;
const TRUST_DOMAIN: &str = "cluster.local";

fn meshgate() -> &'static str {
    env!("CARGO_BIN_EXE_meshgate")
}

/// A service of the mesh: `NAME.default.svc.cluster.local` on a VIP, port 8080 (HTTP),
/// its endpoints the WorkloadEntries labelled `app: NAME` (in the mesh: `tlsMode: istio`).
fn service_yaml(name: &str, vip: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  addresses: [{vip}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {APP_PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: {name}}}}}
"#
    )
}

fn workload_entry_yaml(name: &str, ip: &str, service_account: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}-1, namespace: default}}
spec:
  address: {ip}
  serviceAccount: {service_account}
  labels: {{app: {name}, security.istio.io/tlsMode: istio}}
"#
    )
}

fn peer_authentication_yaml(mode: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: {mode}}}
"#
    )
}

/// The ingress Gateway on port 80 and a route for every host to service `to`.
fn ingress_yaml(to: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route:
    - destination: {{host: {to}.default.svc.cluster.local, port: {{number: {APP_PORT}}}}}
"#
    )
}

/// A directory the proxy's uid can read (test directories are private to root).
fn shared_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// Polls `check` until it gives `Some`, panicking with `what` and the last failure.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not so after {timeout:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The switch, the control plane's pod and the configuration folder.
struct PodMesh {
    work: TempDir,
    config: PathBuf,
    ca_dir: PathBuf,
    net: PodNet,
    cp_pod: Pod,
    cp: Option<PodProcess>,
}

impl PodMesh {
    fn new() -> PodMesh {
        let work = TempDir::new();
        shared_dir(work.path());
        let config = shared_dir(&work.path().join("config"));
        let ca_dir = work.path().join("ca");
        let net = PodNet::new();
        let cp_pod = net.pod("istiod");
        PodMesh {
            work,
            config,
            ca_dir,
            net,
            cp_pod,
            cp: None,
        }
    }

    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.config.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config.join(file)).unwrap();
    }

    /// Starts the control plane (xDS 15010, mutual TLS and the CA on 15012) in its pod and
    /// waits until it serves.
    fn start_control_plane(&mut self) {
        let log = self.work.path().join("control-plane.log");
        let mut cmd = self.cp_pod.command(meshgate());
        cmd.arg("control-plane")
            .arg("--config")
            .arg(&self.config)
            .arg("--ca-dir")
            .arg(&self.ca_dir)
            .args(["--xds-addr", "0.0.0.0:15010"])
            .args(["--xds-tls-addr", "0.0.0.0:15012"])
            .args(["--debug-addr", "127.0.0.1:15014"])
            .args(["--debounce-after-ms", "50", "--debounce-max-ms", "1000"])
            .env("RUST_LOG", "info");
        let mut cp = self.cp_pod.spawn("control plane", &mut cmd, &log);
        wait_for("the control plane serves", Duration::from_secs(30), || {
            cp.assert_running();
            match self.cp_pod.curl(None, &["http://127.0.0.1:15014/ready"]).0 {
                200 => Ok(()),
                s => Err(format!("/ready answered {s}")),
            }
        });
        // The CA directory is private; the pods get a copy of the root, as a ConfigMap.
        std::fs::copy(self.ca_dir.join("root-cert.pem"), self.root_cert()).unwrap();
        std::fs::set_permissions(self.root_cert(), std::fs::Permissions::from_mode(0o644)).unwrap();
        self.cp = Some(cp);
    }

    fn xds_tls(&self) -> String {
        format!("{}:15012", self.cp_pod.ip)
    }

    fn root_cert(&self) -> PathBuf {
        self.work.path().join("root-cert.pem")
    }

    /// A join token for default/`sa`, in a file the proxy's uid can read.
    fn token_file(&self, sa: &str) -> PathBuf {
        let out = std::process::Command::new(meshgate())
            .args(["token", "create", "--ca-dir"])
            .arg(&self.ca_dir)
            .args(["--namespace", "default", "--service-account", sa])
            .output()
            .expect("meshgate token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.work.path().join(format!("token-{sa}"));
        std::fs::write(&path, out.stdout).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// Starts the application of `pod` (`pod_app.py NAME 8080`, as root: its traffic is
    /// captured), captures the pod's traffic, and runs Envoy under `meshgate agent` as
    /// the proxy's uid; waits until the agent reports ready.
    fn start_workload(&self, pod: &Pod, sa: &str) -> Workload {
        let log = self.work.path().join(format!("{}-app.log", pod.name));
        let mut cmd = pod.command(support::python_peer());
        cmd.arg(support::repo_root().join("tests/support/pod_app.py"))
            .args([pod.name.as_str(), &APP_PORT.to_string()])
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("no_proxy");
        let app = pod.spawn("application", &mut cmd, &log);

        pod.iptables(&[]);

        let run_dir = self.work.path().join(format!("{}-run", pod.name));
        std::fs::create_dir_all(&run_dir).unwrap();
        chown(&run_dir, PROXY_UID);
        let token = self.token_file(sa);
        let log = self.work.path().join(format!("{}-agent.log", pod.name));
        let mut cmd = pod.command_as(PROXY_UID, meshgate());
        cmd.arg("agent")
            .args(["--xds", &self.xds_tls()])
            .arg("--ca-root")
            .arg(self.root_cert())
            .arg("--token-file")
            .arg(&token)
            .args(["--namespace", "default", "--service-account", sa])
            .args(["--pod-name", &format!("{}-1", pod.name)])
            .args(["--ip", &pod.ip.to_string()])
            .args(["--labels", &format!("app={}", pod.name)])
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--status-address", "127.0.0.1"])
            .arg("--")
            .arg(support::peer_bin("envoy"))
            .args(["--log-level", "warn"])
            .env("RUST_LOG", "info");
        let mut agent = pod.spawn("agent", &mut cmd, &log);
        wait_for(
            &format!("pod {}'s agent is ready", pod.name),
            Duration::from_secs(60),
            || {
                agent.assert_running();
                match pod.curl(None, &["http://127.0.0.1:15021/healthz/ready"]).0 {
                    200 => Ok(()),
                    s => Err(format!("readiness {s}")),
                }
            },
        );
        Workload {
            _app: app,
            _agent: agent,
        }
    }

    /// Starts `meshgate gateway --xds` in `pod`, joined with identity default/`sa`, and
    /// waits until it is ready.
    fn start_gateway(&self, pod: &Pod, sa: &str) -> PodProcess {
        let token = self.token_file(sa);
        let log = self.work.path().join("gateway.log");
        let mut cmd = pod.command(meshgate());
        cmd.args(["gateway", "--xds", &self.xds_tls()])
            .arg("--ca-root")
            .arg(self.root_cert())
            .arg("--token-file")
            .arg(&token)
            .args(["--service-account", sa, "--namespace", "default"])
            .args([
                "--node-id",
                "edge-gateway",
                "--labels",
                "istio=ingressgateway",
            ])
            .args(["--concurrency", "1", "--access-log", "off"])
            .args(["--health-address", "127.0.0.1:15021"])
            .env("RUST_LOG", "info");
        let mut gw = pod.spawn("gateway", &mut cmd, &log);
        wait_for("the gateway is ready", Duration::from_secs(60), || {
            gw.assert_running();
            match pod.curl(None, &["http://127.0.0.1:15021/healthz/ready"]).0 {
                200 => Ok(()),
                s => Err(format!("readiness {s}")),
            }
        });
        gw
    }
}

/// A running application pod: its app and its agent (with Envoy), stopped when dropped.
struct Workload {
    _app: PodProcess,
    _agent: PodProcess,
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

/// Gateway → pod a → pod b, mutual TLS on both hops under a mesh-wide STRICT policy: each
/// application sees its caller's SPIFFE id in `x-forwarded-client-cert`. A client outside
/// the mesh is refused by a's sidecar under STRICT and let through under PERMISSIVE.
#[test]
fn gateway_to_pod_to_pod_with_mutual_tls_on_every_hop() {
    let mut mesh = PodMesh::new();
    let (gw_pod, a, b, outsider) = (
        mesh.net.pod("gw"),
        mesh.net.pod("a"),
        mesh.net.pod("b"),
        mesh.net.pod("outsider"),
    );
    let vip_b = "10.96.0.2";
    mesh.write(
        "services.yaml",
        &[
            service_yaml("a", "10.96.0.1"),
            service_yaml("b", vip_b),
            workload_entry_yaml("a", &a.ip.to_string(), "sa-a"),
            workload_entry_yaml("b", &b.ip.to_string(), "sa-b"),
        ]
        .join("---\n"),
    );
    mesh.write(
        "peer-authentication.yaml",
        &peer_authentication_yaml("STRICT"),
    );
    mesh.write("ingress.yaml", &ingress_yaml("a"));
    mesh.start_control_plane();

    let _wa = mesh.start_workload(&a, "sa-a");
    let _wb = mesh.start_workload(&b, "sa-b");
    let _gw = mesh.start_gateway(&gw_pod, "edge");

    let url = format!(
        "http://{}:{GATEWAY_PORT}/hello?call=http://{vip_b}:{APP_PORT}/from-a",
        gw_pod.ip
    );
    let answer = wait_for(
        "gateway → a → b answers",
        Duration::from_secs(30),
        || {
            let (status, body) = outsider.curl(None, &[&url]);
            if status != 200 {
                return Err(format!("{status} {body}"));
            }
            let v = json(&body);
            if v["called"]["status"] != 200 {
                return Err(format!("a's call to b: {}", v["called"]));
            }
            Ok(v)
        },
    );
    eprintln!("gateway → a → b: {answer:#}");
    assert_eq!(answer["app"], "a", "{answer}");
    let xfcc_a = answer["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("a saw no client certificate: {answer}"));
    assert!(
        xfcc_a.contains(&format!("URI={}", spiffe("edge"))),
        "a's caller is the gateway: {xfcc_a}"
    );
    assert!(
        xfcc_a.contains(&format!("By={}", spiffe("sa-a"))),
        "a's sidecar is a: {xfcc_a}"
    );
    let called = &answer["called"]["body"];
    assert_eq!(called["app"], "b", "{answer}");
    assert_eq!(called["path"], "/from-a");
    let xfcc_b = called["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("b saw no client certificate: {called}"));
    assert!(
        xfcc_b.contains(&format!("URI={}", spiffe("sa-a"))) && !xfcc_b.contains("sa/edge"),
        "b's caller is a, and only a: {xfcc_b}"
    );

    // Outside the mesh, straight to a's address: STRICT refuses plain text.
    let direct = format!("http://{}:{APP_PORT}/direct", a.ip);
    let (status, body) = outsider.curl(None, &[&direct]);
    assert_eq!(status, 0, "plain text reached a under STRICT: {body}");

    mesh.write(
        "peer-authentication.yaml",
        &peer_authentication_yaml("PERMISSIVE"),
    );
    let v = wait_for(
        "plain text is accepted under PERMISSIVE",
        Duration::from_secs(30),
        || match outsider.curl(None, &[&direct]) {
            (200, body) => Ok(json(&body)),
            (s, body) => Err(format!("{s} {body}")),
        },
    );
    assert_eq!(v["app"], "a");
    assert!(
        v["headers"].get("x-forwarded-client-cert").is_none(),
        "a plain-text caller has no certificate to show: {v}"
    );
    // And mutual TLS still works under PERMISSIVE.
    let (status, body) = outsider.curl(None, &[&url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["called"]["status"], 200, "{body}");
}
