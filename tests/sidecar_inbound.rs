//! A sidecar's inbound side end to end, judged by real Envoy 1.40 in "pods" (network
//! namespaces on a switch of their own, tests/support/pods.rs):
//!
//! - `istiod`: `meshgate control-plane --ca-dir` serving ADS and SDS over mutual TLS;
//! - `reviews`: the application (tests/support/pod_app.py, which answers with the request
//!   headers it saw) on ports 8080 and 8081 (declared by its ServiceEntry) and 8082 (not
//!   declared: the catch-all chains), behind a real Envoy bootstrapped by
//!   `meshgate bootstrap envoy --kind sidecar` (running as the proxy's uid 1337, its
//!   mesh secrets over the `sds-grpc` cluster) and `meshgate iptables`;
//! - `client`: plain-text curl, and an Envoy client that speaks Istio's mesh mTLS (its
//!   ALPN `istio-peer-exchange`/`istio`, a certificate of the mesh CA) as a client
//!   sidecar would.
//!
//! Connecting to 15006 directly proves nothing: without iptables' REDIRECT the original
//! destination is 15006 itself, which only the blackhole chain matches. Real traffic to
//! the pod's ports is what reaches the per-port chains.
//!
//! Needs root (network namespaces, iptables), Envoy, curl and Python 3.
mod support;

use meshgate::ca::SpiffeId;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::mesh_identity::{issue_files, mesh_cert_dir, mesh_upstream_socket};
use support::pods::{PROXY_UID, Pod, PodNet, PodProcess};
use support::{TempDir, blocking_http_get, peer_bin, repo_root};

const XDS_TLS: u16 = 15012;
const DEBUG: u16 = 15014;
const ADMIN: u16 = 15000;
const CLIENT_PORT: u16 = 18080;

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 9081, name: http-admin, protocol: HTTP, targetPort: 8081}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: shop}
spec:
  address: ADDRESS
  labels: {app: reviews}
  serviceAccount: reviews
"#;

fn pa(name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec: {body}\n---\n"
    )
}

/// Files and directories the proxy's uid must read.
fn readable(path: &Path) {
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            readable(&e.unwrap().path());
        }
    }
}

/// GET on a pod's own loopback (Envoy's admin), from inside the pod.
fn pod_get(pod: &Pod, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    pod.in_ns(move || blocking_http_get(("127.0.0.1", port), &path).ok())
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Dropped in this order: processes, pods, the switch, the files.
struct Mesh {
    istiod: PodProcess,
    envoy: PodProcess,
    _apps: Vec<PodProcess>,
    client_envoy: PodProcess,
    server: Pod,
    client: Pod,
    _istiod_pod: Pod,
    _net: PodNet,
    config: PathBuf,
    _tmp: TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        let tmp = TempDir::new();
        let work = tmp.path().to_path_buf();
        let net = PodNet::new();
        let istiod_pod = net.pod("istiod");
        let server = net.pod("reviews");
        let client = net.pod("client");
        let config = work.join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("services.yaml"),
            SERVICES.replace("ADDRESS", &server.ip.to_string()),
        )
        .unwrap();
        let ca_dir = work.join("ca");

        // The control plane, in its own pod.
        let istiod_ip = istiod_pod.ip;
        let mut cmd = istiod_pod.command(env!("CARGO_BIN_EXE_meshgate"));
        cmd.arg("control-plane")
            .arg("--config")
            .arg(&config)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--xds-addr", &format!("{istiod_ip}:15010")])
            .args(["--xds-tls-addr", &format!("{istiod_ip}:{XDS_TLS}")])
            .args(["--debug-addr", &format!("{istiod_ip}:{DEBUG}")])
            .args(["--debounce-after-ms", "50", "--debounce-max-ms", "1000"])
            .env("RUST_LOG", "info");
        let istiod = istiod_pod.spawn("control plane", &mut cmd, &work.join("istiod.log"));
        let ready = |pod: &Pod| {
            let addr = std::net::SocketAddr::from((istiod_ip, DEBUG));
            pod.in_ns(move || matches!(blocking_http_get(addr, "/ready"), Ok((200, _))))
        };
        wait(
            "the control plane serves",
            Duration::from_secs(30),
            || ready(&istiod_pod) && ca_dir.join("root-cert.pem").exists(),
            || std::fs::read_to_string(work.join("istiod.log")).unwrap_or_default(),
        );

        // The application: two ports, answering with the headers they saw.
        let app = repo_root().join("tests/support/pod_app.py");
        let apps: Vec<PodProcess> = [
            ("reviews", 8080),
            ("reviews-admin", 8081),
            ("undeclared", 8082),
        ]
        .into_iter()
        .map(|(name, port)| {
            let mut c = server.command(peer_bin("python3"));
            c.arg(&app).arg(name).arg(port.to_string());
            server.spawn(name, &mut c, &work.join(format!("{name}.log")))
        })
        .collect();

        // The sidecar: the iptables rules first, as istio-init does (a connection made
        // before them would be taken mid-stream by the new NAT rules), then Envoy as uid
        // 1337, bootstrapped by meshgate.
        server.iptables(&[]);
        let envoy = sidecar_envoy(&work, &ca_dir, &server, istiod_ip);

        // The client pod's mesh-mTLS Envoy.
        let client_envoy = client_envoy(&work, &ca_dir, &client, &server);

        let mesh = Mesh {
            istiod,
            envoy,
            _apps: apps,
            client_envoy,
            server,
            client,
            _istiod_pod: istiod_pod,
            _net: net,
            config,
            _tmp: tmp,
        };
        for port in [8080, 8081, 8082] {
            // Straight to the application (the proxy's uid is not captured).
            wait(
                "the application answers",
                Duration::from_secs(20),
                || {
                    mesh.server
                        .curl(Some(PROXY_UID), &[&format!("http://127.0.0.1:{port}/")])
                        .0
                        == 200
                },
                || mesh.logs(),
            );
        }
        mesh
    }

    fn logs(&self) -> String {
        format!(
            "--- control plane ---\n{}\n--- sidecar envoy ---\n{}\n{}\n--- client envoy ---\n{}",
            self.istiod.output(),
            self.envoy.output(),
            self.admin("/stats?filter=(lds|cds|sds|listener_manager|15006)"),
            self.client_envoy.output()
        )
    }

    fn admin(&self, path: &str) -> String {
        pod_get(&self.server, ADMIN, path)
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn stat(&self, name: &str) -> Option<u64> {
        let escaped: String = name
            .chars()
            .flat_map(|c| {
                let special = "\\.+*?()|[]{}^$".contains(c);
                special.then_some('\\').into_iter().chain([c])
            })
            .collect();
        self.admin(&format!("/stats?filter=^{escaped}$"))
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    fn assert_no_rejections(&self) {
        let stats = self.admin("/stats");
        let rejected: Vec<&str> = stats
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
            .collect();
        assert!(rejected.is_empty(), "{rejected:?}\n{}", self.logs());
        assert!(
            stats.contains("listener_manager.lds.update_success"),
            "{stats}"
        );
    }

    /// Plain-text HTTP from the client pod to the reviews pod's `port`: (status, body).
    fn plain(&self, port: u16) -> (u16, Value) {
        let url = format!("http://{}:{port}/plain", self.server.ip);
        let (status, body) = self.client.curl(None, &[&url]);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// HTTP through the client's mesh-mTLS Envoy to the reviews pod's 8080.
    fn mtls(&self) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{CLIENT_PORT}/mtls");
        let (status, body) = self.client.curl(None, &[&url]);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Replaces the PeerAuthentications and waits until `settled` holds.
    fn policies(&self, yaml: &str, what: &str, settled: impl Fn(&Mesh) -> bool) {
        let file = self.config.join("policies.yaml");
        let tmp = self.config.join(".policies.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        wait(
            what,
            Duration::from_secs(30),
            || settled(self),
            || self.logs(),
        );
        self.assert_no_rejections();
    }
}

fn sidecar_envoy(work: &Path, ca_dir: &Path, pod: &Pod, istiod: std::net::Ipv4Addr) -> PodProcess {
    let dir = work.join("sidecar");
    std::fs::create_dir_all(&dir).unwrap();
    // The proxy's uid reads its files: the work directory is traversable, and the root
    // certificate is copied out of the CA's (private) directory.
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.join("root-cert.pem");
    std::fs::copy(ca_dir.join("root-cert.pem"), &root).unwrap();
    let identity = SpiffeId::new("cluster.local", "shop", "reviews").unwrap();
    let (chain, key) = issue_files(ca_dir, &identity, &dir.join("xds-cert"));
    let generated = dir.join("bootstrap.json");
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "envoy", "--kind", "sidecar"])
        .args(["--xds", &format!("{istiod}:{XDS_TLS}")])
        .args([
            "--node-id",
            "reviews-1",
            "--namespace",
            "shop",
            "--labels",
            "app=reviews",
        ])
        .args(["--ip", &pod.ip.to_string()])
        .args(["--admin-port", &ADMIN.to_string(), "--format", "json"])
        .arg("--xds-root-cert")
        .arg(&root)
        .arg("--xds-cert-chain")
        .arg(&chain)
        .arg("--xds-key")
        .arg(&key)
        .arg("--out")
        .arg(&generated)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bootstrap: Value =
        serde_json::from_str(&std::fs::read_to_string(&generated).unwrap()).unwrap();
    // The agent's SDS server in a real pod; here the control plane's own SDS service on
    // the same mutual-TLS port, which serves each verified stream its identity.
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let mut sds = clusters[0].clone();
    assert_eq!(sds["name"], "xds-grpc");
    sds["name"] = json!("sds-grpc");
    sds["load_assignment"]["cluster_name"] = json!("sds-grpc");
    clusters.push(sds);
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    readable(&dir);
    let mut cmd = pod.command_as(PROXY_UID, peer_bin("envoy"));
    cmd.arg("-c")
        .arg(&path)
        .args(["--base-id", &(pod.ip.octets()[3] as u32 + 7000).to_string()])
        .args([
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--disable-hot-restart",
        ]);
    let envoy = pod.spawn("sidecar envoy", &mut cmd, &work.join("sidecar-envoy.log"));
    wait(
        "the sidecar's Envoy is ready with its inbound listener",
        Duration::from_secs(60),
        || {
            matches!(pod_get(pod, ADMIN, "/ready"), Some((200, _)))
                && pod_get(pod, ADMIN, "/listeners")
                    .is_some_and(|(_, b)| b.contains("virtualInbound"))
        },
        || std::fs::read_to_string(work.join("sidecar-envoy.log")).unwrap_or_default(),
    );
    envoy
}

fn client_envoy(work: &Path, ca_dir: &Path, pod: &Pod, server: &Pod) -> PodProcess {
    let dir = work.join("client");
    let identity = SpiffeId::new("cluster.local", "shop", "client").unwrap();
    let certs = mesh_cert_dir(ca_dir, &identity, &dir.join("certs"));
    let socket = mesh_upstream_socket(
        &certs,
        "outbound_.9080_._.reviews.shop.svc.cluster.local",
        Some("spiffe://cluster.local/ns/shop/sa/reviews"),
    );
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN}}},
        "static_resources": {
            "listeners": [{
                "name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": CLIENT_PORT}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": {"virtual_hosts": [{
                            "name": "reviews", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "reviews"}}]
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "reviews",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "reviews", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": server.ip.to_string(), "port_value": 8080}}}}
                ]}]},
                "transport_socket": socket
            }]
        }
    });
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    let mut cmd = pod.command(peer_bin("envoy"));
    cmd.arg("-c")
        .arg(&path)
        .args(["--base-id", &(pod.ip.octets()[3] as u32 + 7000).to_string()])
        .args([
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--disable-hot-restart",
        ]);
    let envoy = pod.spawn("client envoy", &mut cmd, &work.join("client-envoy.log"));
    wait(
        "the client's Envoy is ready",
        Duration::from_secs(30),
        || matches!(pod_get(pod, ADMIN, "/ready"), Some((200, _))),
        || std::fs::read_to_string(work.join("client-envoy.log")).unwrap_or_default(),
    );
    envoy
}

fn xfcc(body: &Value) -> String {
    body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn peer_authentication_decides_what_reaches_the_application() {
    let mesh = Mesh::start();
    mesh.assert_no_rejections();
    let dump = mesh.admin("/config_dump?resource=dynamic_active_clusters");
    for name in [
        "inbound|8080||",
        "inbound|8081||",
        "InboundPassthroughCluster",
    ] {
        assert!(dump.contains(name), "{name} in {dump}\n{}", mesh.logs());
    }

    // No policy: PERMISSIVE. Plain text reaches the application, without XFCC.
    let (status, body) = mesh.plain(8080);
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert_eq!(body["app"], "reviews");
    assert_eq!(body["path"], "/plain");
    assert_eq!(xfcc(&body), "");
    // Mesh mTLS too, and the application sees the caller's SPIFFE id.
    let (status, body) = mesh.mtls();
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    let seen = xfcc(&body);
    assert!(
        seen.contains("URI=spiffe://cluster.local/ns/shop/sa/client"),
        "XFCC `{seen}`"
    );
    assert!(
        seen.contains("By=spiffe://cluster.local/ns/shop/sa/reviews"),
        "XFCC `{seen}`"
    );
    // Both went through inbound|8080|| (its stats under Istio's alt_stat_name).
    assert!(
        mesh.stat("cluster.inbound|8080||;.upstream_rq_total")
            .is_some_and(|n| n >= 2),
        "{}",
        mesh.admin("/stats?filter=8080")
    );

    // A port no service declares goes through the catch-all chains.
    let (status, body) = mesh.plain(8082);
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert_eq!(body["app"], "undeclared");
    assert!(
        mesh.stat("cluster.InboundPassthroughCluster;.upstream_rq_total")
            .is_some_and(|n| n >= 1),
        "{}",
        mesh.admin("/stats?filter=InboundPassthrough")
    );

    // STRICT for the namespace: plain text finds no chain and is closed; mTLS still in.
    mesh.policies(
        &pa("default", "{mtls: {mode: STRICT}}"),
        "plain text is refused under STRICT",
        |m| m.plain(8080).0 == 0,
    );
    assert_eq!(mesh.plain(8081).0, 0);
    assert_eq!(mesh.plain(8082).0, 0);
    let (status, body) = mesh.mtls();
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(xfcc(&body).contains("URI=spiffe://cluster.local/ns/shop/sa/client"));
    assert!(
        mesh.stat("listener.0.0.0.0_15006.no_filter_chain_match")
            .is_some_and(|n| n > 0),
        "{}",
        mesh.admin("/stats?filter=15006")
    );

    // A port-level override: the workload's 8081 accepts plain text, 8080 stays STRICT.
    mesh.policies(
        &format!(
            "{}{}",
            pa("default", "{mtls: {mode: STRICT}}"),
            pa(
                "reviews",
                "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {8081: {mode: PERMISSIVE}}}"
            )
        ),
        "port 8081 accepts plain text",
        |m| m.plain(8081).0 == 200,
    );
    assert_eq!(mesh.plain(8081).1["app"], "reviews-admin");
    assert_eq!(mesh.plain(8080).0, 0);
    assert_eq!(mesh.mtls().0, 200);

    // PERMISSIVE explicitly: both again.
    mesh.policies(
        &pa("default", "{mtls: {mode: PERMISSIVE}}"),
        "plain text is accepted under PERMISSIVE",
        |m| m.plain(8080).0 == 200,
    );
    assert_eq!(mesh.mtls().0, 200);

    // DISABLE: plain text only; the mesh client's TLS is not terminated.
    mesh.policies(
        &pa("default", "{mtls: {mode: DISABLE}}"),
        "mTLS is no longer terminated under DISABLE",
        |m| m.mtls().0 != 200,
    );
    let (status, body) = mesh.plain(8080);
    assert_eq!(status, 200, "{body}");
    assert_eq!(xfcc(&body), "");
    mesh.assert_no_rejections();
}
