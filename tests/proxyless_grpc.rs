//! Proxyless gRPC clients configured by the control plane: a real gRPC library (grpcio,
//! in Python) dials `xds:///HOST:PORT` with the bootstrap `meshgate bootstrap grpc`
//! writes, and `meshgate control-plane` answers it as istiod's `grpc` generator does.
//! Two grpcio servers on loopback are the service's v1 and v2 endpoints; a mesh
//! VirtualService splits calls 80/20, sends `x-version: v2` to v2, injects a fault,
//! bounds a slow call with a timeout and retries a failing one; rewriting it moves the
//! traffic without restarting the client. Every push must be ACKed: a NACK from the gRPC
//! client fails the test with the client's reason (from `/debug/syncz`).
mod support;
#[path = "support/controlplane.rs"]
mod test_control_plane;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;
use support::xds_mesh::{ControlPlaneProcess, write_atomically};
use support::{TempDir, assert_binomial, python_peer, repo_root, wait_until};

const HOST: &str = "echo.grpc.internal";
const PORT: u16 = 7070;
const CLIENT: &str = "grpc-client-1";

fn peer_script() -> std::path::PathBuf {
    repo_root().join("tests/support/grpc_peer.py")
}

/// A grpcio server answering with its name; stops with the test.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(name: &str) -> Server {
        let mut child = Command::new(python_peer())
            .arg(peer_script())
            .args(["serve", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gRPC server did not start within 30 s");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the gRPC server: {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio client with one channel to `xds:///HOST:PORT` for its whole life.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn start(bootstrap: &Path, log: &Path) -> Client {
        let log = std::fs::File::create(log).expect("client log");
        let mut child = Command::new(python_peer())
            .arg(peer_script())
            .args(["client", &format!("xds:///{HOST}:{PORT}")])
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting the gRPC client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Client {
            child,
            stdin,
            stdout,
        }
    }

    /// `n` calls with `metadata`: the servers that answered, the status codes, and the
    /// first errors. Each call has a 10 s deadline, so this returns.
    fn call(&mut self, n: usize, metadata: &[(&str, &str)]) -> Value {
        let meta: Vec<String> = metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(self.stdin, "call {n} {}", meta.join(" ")).expect("client stdin");
        self.stdin.flush().expect("client stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("client stdout");
        assert!(!line.is_empty(), "the gRPC client exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Calls answered by `server`.
    fn count(result: &Value, server: &str) -> usize {
        result["servers"][server].as_u64().unwrap_or(0) as usize
    }

    fn code(result: &Value, code: &str) -> usize {
        result["codes"][code].as_u64().unwrap_or(0) as usize
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn service_entry(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: grpc, protocol: GRPC}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{grpc: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

/// The first VirtualService: faults, a timeout, retries, a header match and an 80/20
/// split.
fn split_vs() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - name: fault
    match: [{{headers: {{x-fault: {{exact: abort}}}}}}]
    fault: {{abort: {{grpcStatus: PERMISSION_DENIED, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: slow
    match: [{{headers: {{x-delay-ms: {{regex: "[0-9]+"}}}}}}]
    timeout: 3s
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: flaky
    match: [{{headers: {{x-fail: {{exact: unavailable}}}}}}]
    retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: pinned-v2
    match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
  - name: pinned-v1
    match: [{{headers: {{x-version: {{exact: v1}}}}}}]
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: split
    route:
    - {{destination: {{host: {HOST}, subset: v1}}, weight: 80}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: 20}}
"#
    )
}

/// The second: everything to v2, `x-version: v1` to v1.
fn moved_vs() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - name: pinned
    match: [{{headers: {{x-version: {{exact: v1}}}}}}]
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: all-v2
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
"#
    )
}

/// The client's syncz entry, once each of LDS, RDS, CDS and EDS has been sent and the
/// latest response of each ACKed. A NACK fails at once with the client's reason.
fn wait_synced(cp: &ControlPlaneProcess, what: &str) -> Value {
    let mut entry = Value::Null;
    wait_until(what, Duration::from_secs(30), || {
        let Some(p) = cp.proxy(CLIENT) else {
            return false;
        };
        for t in ["lds", "rds", "cds", "eds"] {
            if let Some(nack) = p["types"][t]["nacked"].as_object() {
                panic!(
                    "the gRPC client rejected the {t} push: {}\n{}",
                    nack.get("error").and_then(Value::as_str).unwrap_or(""),
                    serde_json::to_string_pretty(&p).unwrap_or_default()
                );
            }
        }
        entry = p.clone();
        ["lds", "rds", "cds", "eds"]
            .iter()
            .all(|t| p["states"][t] == "SYNCED")
    });
    entry
}

#[test]
fn a_grpc_client_follows_the_mesh_virtual_service() {
    let tmp = TempDir::new();
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let v1 = Server::start("v1");
    let v2 = Server::start("v2");
    std::fs::write(config.join("echo.yaml"), service_entry(v1.port, v2.port)).expect("write");
    let vs_path = config.join("vs.yaml");
    std::fs::write(&vs_path, split_vs()).expect("write");
    let cp = ControlPlaneProcess::start(&config, tmp.path());

    // The bootstrap Istio's agent would write, from meshgate.
    let bootstrap = tmp.path().join("grpc-bootstrap.json");
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "grpc", "--xds", &cp.xds_addr()])
        .args(["--node-id", CLIENT, "--namespace", "default"])
        .args(["--labels", "app=grpc-client"])
        .arg("--out")
        .arg(&bootstrap)
        .output()
        .expect("meshgate bootstrap grpc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = Client::start(&bootstrap, &tmp.path().join("client.log"));

    // The first call waits for the client's LDS, RDS, CDS and EDS.
    let first = client.call(1, &[]);
    assert_eq!(Client::code(&first, "OK"), 1, "{first}");
    let synced = wait_synced(&cp, "the gRPC client ACKs every type");
    assert_eq!(
        synced["node_id"]
            .as_str()
            .map(|id| id.starts_with("sidecar~")),
        Some(true)
    );
    let connection = synced["connection_id"].clone();
    // The client asked for its listener by name and got just that one.
    assert_eq!(synced["types"]["lds"]["wildcard"], false, "{synced}");
    assert_eq!(synced["types"]["lds"]["sent_resources"], 1, "{synced}");

    // 80/20 by weight.
    let n = 400;
    let split = client.call(n, &[]);
    assert_eq!(Client::code(&split, "OK"), n, "{split}");
    assert_binomial(
        "calls to v2 under an 80/20 split",
        Client::count(&split, "v2"),
        n,
        0.2,
        &[0.0, 0.5, 1.0],
    );
    // The header match sends everything to v2.
    let pinned = client.call(50, &[("x-version", "v2")]);
    assert_eq!(Client::count(&pinned, "v2"), 50, "{pinned}");
    // The fault filter aborts with the configured status.
    let fault = client.call(5, &[("x-fault", "abort")]);
    assert_eq!(Client::code(&fault, "PERMISSION_DENIED"), 5, "{fault}");
    // The route timeout bounds a call the server holds for 8 s (the call's own
    // deadline is 10 s). grpcio applies timeouts from its service config (which is
    // where xDS route timeouts go) early, by about the time between its start and its
    // first call (grpc/grpc#34547), so only the upper bound is checked.
    let slow = client.call(1, &[("x-delay-ms", "8000")]);
    assert_eq!(Client::code(&slow, "DEADLINE_EXCEEDED"), 1, "{slow}");
    let elapsed = slow["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(
        elapsed < 3_000 + 1_000,
        "the 3 s route timeout did not end the call: {elapsed} ms"
    );
    // A call that keeps failing is tried 1 + 3 times; v1 counts them.
    let failed_on_v1 = |client: &mut Client| {
        let r = client.call(1, &[("x-version", "v1")]);
        assert_eq!(r["last"]["server"], "v1", "{r}");
        r["last"]["failed"].as_u64().expect("a count")
    };
    let before = failed_on_v1(&mut client);
    let flaky = client.call(1, &[("x-fail", "unavailable")]);
    assert_eq!(Client::code(&flaky, "UNAVAILABLE"), 1, "{flaky}");
    assert_eq!(
        failed_on_v1(&mut client) - before,
        4,
        "attempts of the failing call"
    );
    wait_synced(&cp, "still in sync after the calls");

    // The VirtualService changes; the same client follows.
    write_atomically(&vs_path, &moved_vs());
    wait_until(
        "calls move to v2 after the VirtualService change",
        Duration::from_secs(30),
        || Client::count(&client.call(20, &[]), "v2") == 20,
    );
    let moved = client.call(200, &[]);
    assert_eq!(Client::count(&moved, "v2"), 200, "{moved}");
    let pinned = client.call(50, &[("x-version", "v1")]);
    assert_eq!(Client::count(&pinned, "v1"), 50, "{pinned}");
    let synced = wait_synced(&cp, "the gRPC client ACKs the change");
    assert_eq!(
        synced["connection_id"], connection,
        "the client reconnected instead of following the push"
    );
    drop((v1, v2));
}

/// The resources `meshgate control-plane` serves the client for `yaml`.
fn grpc_resources(yaml: &str) -> meshgate::xds::ResourceSet {
    let loaded = meshgate::config::load_str("test.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = meshgate::registry::Registry::from_config(&loaded.config);
    let proxy = meshgate::xds::ProxyIdentity {
        kind: meshgate::xds::ProxyKind::Grpc,
        namespace: "default".into(),
        domain_suffix: "cluster.local".into(),
        ..Default::default()
    };
    meshgate::translate::proxyless_grpc(
        &loaded.config,
        &registry,
        &proxy,
        &meshgate::config::mesh::MeshConfig::default(),
    )
    .resources
}

/// What gRPC rejects shows in `/debug/syncz` with gRPC's reason, and the client keeps
/// the last configuration it accepted. The rejected push is the one meshgate never makes:
/// a CORS policy in a route's per-filter configuration, as Envoy gets it (gRPC has no
/// CORS filter, so it rejects the whole route configuration).
#[test]
fn a_nack_from_the_grpc_client_shows_and_the_last_good_routes_keep_serving() {
    use meshgate::controlplane::{StaticSource, TypeSet};
    use meshgate::xds::TypeUrl;
    use test_control_plane::{TestControlPlane, test_options};

    let tmp = TempDir::new();
    let v1 = Server::start("v1");
    let v2 = Server::start("v2");
    let split = grpc_resources(&format!(
        "{}---\n{}",
        service_entry(v1.port, v2.port),
        split_vs()
    ));
    let moved = grpc_resources(&format!(
        "{}---\n{}",
        service_entry(v1.port, v2.port),
        moved_vs()
    ));
    let source = std::sync::Arc::new(StaticSource::new(split));
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let bootstrap = tmp.path().join("grpc-bootstrap.json");
    let doc = meshgate::controlplane::bootstrap::GrpcBootstrap {
        xds_address: cp.xds_addr(),
        node_id: CLIENT.into(),
        ..Default::default()
    }
    .to_json()
    .expect("bootstrap");
    std::fs::write(&bootstrap, doc.to_string()).expect("write bootstrap");
    let mut client = Client::start(&bootstrap, &tmp.path().join("client.log"));
    let first = client.call(100, &[]);
    assert_eq!(Client::code(&first, "OK"), 100, "{first}");
    assert!(Client::count(&first, "v1") > 0, "{first}");

    // Everything to v2, with a CORS policy on the route.
    let mut rejected = moved.clone();
    let cors = meshgate::xds::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
        allow_methods: "POST".into(),
        ..Default::default()
    };
    for rc in &mut rejected.routes {
        for vh in &mut rc.virtual_hosts {
            for r in &mut vh.routes {
                r.typed_per_filter_config.insert(
                    "envoy.filters.http.cors".into(),
                    meshgate::xds::pb::google::protobuf::Any {
                        type_url:
                            "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
                                .into(),
                        value: prost::Message::encode_to_vec(&cors),
                    },
                );
            }
        }
    }
    source.set_default(rejected, TypeSet::of(&[TypeUrl::Route]));
    let mut nack = String::new();
    wait_until(
        "the gRPC client NACKs the route configuration",
        Duration::from_secs(30),
        || {
            let entry = cp.syncz().into_iter().find(|p| {
                p["node_id"]
                    .as_str()
                    .is_some_and(|id| id.contains(&format!("~{CLIENT}.")))
            });
            let Some(p) = entry else { return false };
            nack = p["types"]["rds"]["nacked"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            p["states"]["rds"] == "NACKED"
        },
    );
    assert!(nack.contains("unsupported filter type"), "{nack}");
    // The split still applies: v1 keeps answering.
    let kept = client.call(100, &[]);
    assert_eq!(Client::code(&kept, "OK"), 100, "{kept}");
    assert!(
        Client::count(&kept, "v1") > 0,
        "the rejected routes applied: {kept}"
    );

    // The same routes without the CORS policy are taken.
    source.set_default(moved, TypeSet::of(&[TypeUrl::Route]));
    wait_until(
        "calls move to v2 once the routes are accepted",
        Duration::from_secs(30),
        || Client::count(&client.call(20, &[]), "v2") == 20,
    );
    cp.kill();
}
