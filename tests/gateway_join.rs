//! A meshgate gateway joining the mesh over mutual TLS (`meshgate gateway --xds
//! ADDR:15012 --ca-root FILE --token-file FILE`) against a `meshgate control-plane
//! --ca-dir` process: its first certificate obtained with a join token, ADS over mutual
//! TLS with it, traffic through the configuration it syncs; refusals (no token, a used
//! token, another identity); rotation under traffic with a few-second certificate
//! lifetime asked for; the control plane away for longer than a certificate lives; and the key
//! kept off disk and out of the logs.
mod support;
use support::mesh_identity::rotate_root;
use support::xds_mesh;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;
use xds_mesh::*;

/// The Istio Gateway's name and the proxy label that selects the gateway.
const GW: &str = "gw";
const IDENTITY: &str = "spiffe://cluster.local/ns/edge/sa/ingress";

/// A control plane with its CA, an Istio configuration routing every host on the
/// gateway's port to an echo upstream, and a second upstream to switch the route to.
struct Mesh {
    work: TempDir,
    config: PathBuf,
    ca_dir: PathBuf,
    ports: CaPorts,
    cp: ControlPlaneProcess,
    echo: EchoUpstream,
    echo2: EchoUpstream,
    gw_port: u16,
}

impl Mesh {
    fn start(cp_flags: &[&str]) -> Mesh {
        let work = TempDir::new();
        let config = work.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        let (echo, echo2) = (EchoUpstream::start("echo"), EchoUpstream::start("echo2"));
        let gw_port = free_port();
        std::fs::write(config.join("gateway.yaml"), gateway_yaml(GW, gw_port)).unwrap();
        let services = [
            service_entry_yaml("echo", echo.port()),
            service_entry_yaml("echo2", echo2.port()),
        ];
        std::fs::write(config.join("services.yaml"), services.join("---\n")).unwrap();
        std::fs::write(
            config.join("route.yaml"),
            route_yaml("*", &[GW], "echo", echo.port()),
        )
        .unwrap();
        let ca_dir = work.path().join("ca");
        let ports = CaPorts::free();
        let cp = ControlPlaneProcess::start_with_ca(&config, work.path(), &ca_dir, ports, cp_flags);
        Mesh {
            work,
            config,
            ca_dir,
            ports,
            cp,
            echo,
            echo2,
            gw_port,
        }
    }

    /// Writes a fresh join token for edge/`sa` to `file` (in the work directory).
    fn write_token(&self, file: &str, sa: &str) -> PathBuf {
        let path = self.work.path().join(file);
        std::fs::write(&path, join_token(&self.ca_dir, "edge", sa)).unwrap();
        path
    }

    /// A gateway in namespace edge selected by the Gateway, joining over mutual TLS.
    fn gateway(&self, name: &str, token: &Path, service_account: &str) -> XdsGateway {
        self.gateway_with(name, token, service_account, &[])
    }

    /// The same with more flags.
    fn gateway_with(
        &self,
        name: &str,
        token: &Path,
        service_account: &str,
        extra: &[&str],
    ) -> XdsGateway {
        let root = self.ca_dir.join("root-cert.pem");
        let mut flags = vec![
            "--ca-root",
            root.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--service-account",
            service_account,
        ];
        flags.extend_from_slice(extra);
        XdsGateway::spawn_with(
            name,
            &format!("127.0.0.1:{}", self.ports.tls),
            &format!("proxy={GW}"),
            "edge",
            true,
            self.work.path(),
            &flags,
        )
    }

    /// A joined gateway asking for 4 s certificates (the CA grants the lifetime asked
    /// for, up to its maximum), ready and routing, with requests sent through it until
    /// the flag is set.
    fn rotating_gateway(
        &self,
        name: &str,
    ) -> (
        XdsGateway,
        Arc<AtomicBool>,
        std::thread::JoinHandle<(usize, usize, String)>,
    ) {
        let token = self.write_token("token", "ingress");
        let mut gw = self.gateway_with(name, &token, "ingress", &["--workload-cert-ttl", "4s"]);
        gw.wait_ready(Duration::from_secs(30));
        self.wait_routed("echo", Duration::from_secs(20));
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = request_loop(self.gw_port, stop.clone());
        (gw, stop, traffic)
    }

    /// Routes every host to `upstream` (echo or echo2).
    fn route_to(&self, upstream: &str, port: u16) {
        write_atomically(
            &self.config.join("route.yaml"),
            &route_yaml("*", &[GW], upstream, port),
        );
    }

    /// One request through the gateway: (status, the answering upstream).
    fn request(&self) -> Option<(u16, String)> {
        let (status, body) = blocking_http_get(("127.0.0.1", self.gw_port), "/").ok()?;
        let upstream = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["upstream"].as_str().map(str::to_string))
            .unwrap_or_default();
        Some((status, upstream))
    }

    /// Waits (bounded) until requests are answered by `upstream`.
    fn wait_routed(&self, upstream: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, u)) = self.request()
                && u == upstream
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "requests through the gateway not answered by {upstream} within {timeout:?} (last: {:?})",
                self.request()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The workload certificate the gateway shows on `/certs` (None without one).
fn cert_of(gw: &XdsGateway) -> Option<Value> {
    let (status, body) = gw.admin("/certs")?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("/certs JSON");
    v["certificates"].as_array()?.first().cloned()
}

/// A counter or gauge of `/stats`.
fn stat(gw: &XdsGateway, name: &str) -> Option<u64> {
    let (_, body) = gw.admin("/stats")?;
    body.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(": "))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every file under `dir` whose content holds a PEM private key, but the CA's own key.
fn private_keys_on_disk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "ca-key.pem") {
                continue;
            } else if let Ok(bytes) = std::fs::read(&p)
                && String::from_utf8_lossy(&bytes).contains("PRIVATE KEY")
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_gateway_joins_with_a_token_syncs_over_mutual_tls_and_serves() {
    let mesh = Mesh::start(&[]);
    let token = mesh.write_token("token", "ingress");
    let mut gw = mesh.gateway("joined", &token, "ingress");
    gw.wait_ready(Duration::from_secs(30));
    mesh.wait_routed("echo", Duration::from_secs(20));

    // The certificate names exactly the identity of the token, and is valid now.
    let cert = cert_of(&gw).expect("a workload certificate on /certs");
    assert_eq!(cert["identity"], IDENTITY, "{cert}");
    assert!(
        cert["not_after_unix"].as_u64().unwrap() > now_unix(),
        "{cert}"
    );
    let chain = cert["cert_chain"].as_array().unwrap();
    let root = std::fs::read_to_string(mesh.ca_dir.join("root-cert.pem")).unwrap();
    assert_eq!(chain.last().unwrap().as_str().unwrap().trim(), root.trim());
    assert_eq!(cert["ca_cert"].as_array().unwrap().len(), 1, "{cert}");
    let leaf = rustls_pemfile::certs(&mut chain[0].as_str().unwrap().as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![x509_parser::extensions::GeneralName::URI(IDENTITY)]
    );

    // The CA issued it for the token, and the control plane serves the gateway on its
    // mutual-TLS port (the only address the gateway was given).
    let cp_log = mesh.cp.log();
    assert!(
        cp_log.lines().any(|l| l.contains("certificate issued")
            && l.contains(IDENTITY)
            && l.contains("join-token")),
        "{cp_log}"
    );
    assert!(mesh.cp.proxy("joined").is_some(), "{:?}", mesh.cp.syncz());
    let gw_log = gw.log();
    assert!(gw_log.contains("workload certificate obtained"), "{gw_log}");
    assert!(gw_log.contains("connected to the xDS server"), "{gw_log}");

    // The data plane holds them as the SDS secrets `default` and `ROOTCA`.
    assert_eq!(stat(&gw, "tls.secret_loads"), Some(2));
    assert!(
        gw_log
            .lines()
            .any(|l| l.contains("loaded validation context") && l.contains("ROOTCA")),
        "{gw_log}"
    );

    // Stats: one certificate, its expiry; Prometheus has the gauge.
    assert_eq!(stat(&gw, "workload_cert.issued"), Some(1));
    let expiry = stat(&gw, "workload_cert.expiry_timestamp_seconds").unwrap();
    assert_eq!(Some(expiry), cert["not_after_unix"].as_u64());
    let (_, prom) = gw.admin("/stats/prometheus").unwrap();
    assert!(
        prom.contains(&format!("meshgate_workload_cert_expiry_seconds {expiry}")),
        "{prom}"
    );

    // State of the world joins the same way (with a token of its own: each is single
    // use).
    let token2 = mesh.write_token("token-sotw", "ingress");
    let mut sotw = mesh.gateway_with("joined-sotw", &token2, "ingress", &["--xds-sotw"]);
    sotw.wait_ready(Duration::from_secs(30));
    assert_eq!(cert_of(&sotw).unwrap()["identity"], IDENTITY);
    assert!(mesh.cp.proxy("joined-sotw").is_some());
    assert_eq!(stat(&sotw, "tls.secret_loads"), Some(2));

    // The key is nowhere but in the gateway's memory.
    for path in ["/config_dump", "/certs", "/stats", "/stats/prometheus"] {
        let (_, body) = gw.admin(path).unwrap();
        assert!(!body.contains("PRIVATE KEY"), "{path} shows a key");
    }
    assert!(
        !gw.log().contains("PRIVATE KEY"),
        "the gateway logged a key"
    );
    assert_eq!(
        private_keys_on_disk(mesh.work.path()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn without_a_usable_token_the_gateway_does_not_join_and_says_why() {
    let mesh = Mesh::start(&[]);

    // No token file at all.
    let missing = mesh.work.path().join("no-such-token");
    let mut none = mesh.gateway("none", &missing, "ingress");
    none.wait_log("reading the token file", Duration::from_secs(20));

    // A token made for another service account than the gateway asks for.
    let other = mesh.write_token("other-token", "ingress");
    let mut wrong = mesh.gateway("wrong", &other, "payments");
    wrong.wait_log("the CA refuses to issue", Duration::from_secs(20));
    assert!(
        wrong
            .log()
            .contains("the credential is for another identity"),
        "{}",
        wrong.log()
    );

    // A token already used by another gateway.
    let token = mesh.write_token("token", "ingress");
    let mut first = mesh.gateway("first", &token, "ingress");
    first.wait_ready(Duration::from_secs(30));
    let mut second = mesh.gateway("second", &token, "ingress");
    second.wait_log("has been used already", Duration::from_secs(20));

    let cp_log = mesh.cp.log();
    assert!(cp_log.contains("names not allowed"), "{cp_log}");
    assert!(cp_log.contains("has been used already"), "{cp_log}");
    for gw in [&none, &wrong, &second] {
        assert_ne!(gw.health(), Some(200), "{} is ready", gw.name);
        assert!(cert_of(gw).is_none(), "{} has a certificate", gw.name);
        assert_eq!(stat(gw, "workload_cert.issued"), Some(0), "{}", gw.name);
        assert!(
            stat(gw, "workload_cert.renewal_failures").unwrap() >= 1,
            "{}",
            gw.name
        );
        assert!(
            gw.log().contains("no valid workload certificate"),
            "{}",
            gw.log()
        );
        assert!(
            mesh.cp.proxy(&gw.name).is_none(),
            "{} reached ADS without a certificate",
            gw.name
        );
    }
    assert!(mesh.cp.proxy("first").is_some());
}

/// Sends requests through the gateway until stopped: (sent, failed, first failure).
fn request_loop(
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, String)> {
    std::thread::spawn(move || {
        let (mut sent, mut failed, mut first) = (0, 0, String::new());
        while !stop.load(Ordering::Relaxed) {
            sent += 1;
            match blocking_http_get(("127.0.0.1", port), "/") {
                Ok((200, _)) => {}
                other => {
                    failed += 1;
                    if first.is_empty() {
                        first = format!("{other:?}");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, failed, first)
    })
}

#[test]
fn rotation_under_traffic_loses_no_request_and_the_stream_keeps_working() {
    let mesh = Mesh::start(&[]);
    let (gw, stop, traffic) = mesh.rotating_gateway("rotating");
    // Four certificates: three rotations, each at about half of a 4 s life.
    let mut serials = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while serials.len() < 4 {
        if let Some(c) = cert_of(&gw) {
            serials.insert(c["serial_number"].as_str().unwrap().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "only {} certificates within 30 s:\n{}",
            serials.len(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stat(&gw, "workload_cert.rotations").unwrap() >= 3);
    // Each new certificate reached the data plane as `default` (the trust bundle is the
    // same each time).
    assert!(stat(&gw, "tls.secret_rotations").unwrap() >= 3);
    // A configuration change still arrives over the stream opened before the rotations.
    mesh.route_to("echo2", mesh.echo2.port());
    mesh.wait_routed("echo2", Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, first) = traffic.join().unwrap();
    eprintln!("{sent} requests during {} certificates", serials.len());
    assert!(sent >= 100, "only {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed; first: {first}"
    );
    assert!(mesh.echo.requests() > 0 && mesh.echo2.requests() > 0);
    // Renewed by the certificate itself, not by the (spent) token.
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("workload certificate rotated")
                && l.contains("credential=\"certificate\"")),
        "{log}"
    );
    let cp_log = mesh.cp.log();
    assert!(
        cp_log
            .lines()
            .any(|l| l.contains("certificate issued") && l.contains("client-certificate")),
        "{cp_log}"
    );
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn the_control_plane_away_longer_than_a_certificate_lives() {
    let mut mesh = Mesh::start(&[]);
    let token = mesh.write_token("token", "ingress");
    let mut gw = mesh.gateway_with("away", &token, "ingress", &["--workload-cert-ttl", "3s"]);
    gw.wait_ready(Duration::from_secs(30));
    mesh.wait_routed("echo", Duration::from_secs(20));

    mesh.cp.kill();
    let last = cert_of(&gw).unwrap();
    let failures_before = stat(&gw, "workload_cert.renewal_failures").unwrap();
    // Until the last certificate has expired, and a while after: traffic keeps flowing
    // on the last configuration.
    let expired_at = last["not_after_unix"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while now_unix() <= expired_at + 1 {
        assert_eq!(mesh.request(), Some((200, "echo".to_string())));
        assert!(Instant::now() < deadline, "the certificate did not expire");
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = cert_of(&gw).unwrap();
    assert_eq!(held["seconds_until_expiration"], 0, "{held}");
    // The gateway has tried again since, and says it has no valid certificate (the spent
    // token cannot help, and the CA is away).
    gw.wait_log("no valid workload certificate", Duration::from_secs(30));
    assert!(gw.log().contains("keeping the current one"), "{}", gw.log());
    assert!(stat(&gw, "workload_cert.renewal_failures").unwrap() > failures_before);
    assert_eq!(mesh.request(), Some((200, "echo".to_string())));

    // The used token cannot serve again: a fresh one is written, then the control plane
    // comes back on the same port with the same CA.
    std::fs::write(&token, join_token(&mesh.ca_dir, "edge", "ingress")).unwrap();
    mesh.route_to("echo2", mesh.echo2.port());
    mesh.cp = ControlPlaneProcess::start_with_ca(
        &mesh.config,
        mesh.work.path(),
        &mesh.ca_dir,
        mesh.ports,
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(c) = cert_of(&gw)
            && c["serial_number"] != last["serial_number"]
            && c["not_after_unix"].as_u64().unwrap() > now_unix()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new certificate:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Resynced over mutual TLS with the new certificate: the change made while away is
    // served.
    mesh.wait_routed("echo2", Duration::from_secs(60));
    assert!(mesh.cp.proxy("away").is_some());
    let cp_log = mesh.cp.log();
    assert!(
        cp_log
            .lines()
            .any(|l| l.contains("certificate issued") && l.contains("join-token")),
        "{cp_log}"
    );
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("workload certificate rotated")
                && l.contains("credential=\"token\"")),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"));
    assert_eq!(
        private_keys_on_disk(mesh.work.path()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn the_join_flags_need_xds_and_a_token() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .arg("gateway")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--ca-root", "root.pem", "--token-file", "t"]);
    assert!(e.contains("--xds"), "{e}");
    let e = run(&["--xds", "127.0.0.1:15012", "--ca-root", "root.pem"]);
    assert!(e.contains("--token-file"), "{e}");
    let e = run(&["--xds", "127.0.0.1:15012", "--service-account", "x"]);
    assert!(e.contains("--ca-root"), "{e}");
    // A trust anchor file without a certificate stops the start, naming the file.
    let dir = TempDir::new();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, "not a certificate\n").unwrap();
    let e = run(&[
        "--xds",
        "127.0.0.1:15012",
        "--ca-root",
        root.to_str().unwrap(),
        "--token-file",
        "t",
        "--admin-address",
        &format!("127.0.0.1:{}", free_port()),
        "--health-address",
        &format!("127.0.0.1:{}", free_port()),
        "--prometheus-address",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(e.contains("no PEM certificate"), "{e}");
}

/// The serials of the workload certificates an Envoy holds from SDS.
fn envoy_leaf_serials(envoy: &Envoy) -> Vec<String> {
    let Ok((200, body)) = envoy.admin_get("/certs") else {
        return Vec::new();
    };
    let certs: Value = serde_json::from_str(&body).unwrap_or_default();
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .filter(|leaf| leaf["path"] == "<inline>")
        .filter_map(|leaf| leaf["serial_number"].as_str().map(str::to_string))
        .collect()
}

/// The whole mesh path: a gateway that joined with a token sends ISTIO_MUTUAL to a real
/// Envoy sidecar that got its identity from the same control plane; both sides rotate
/// few-second certificates under traffic, and the control plane restarts, with no
/// failed request.
#[test]
fn a_joined_gateway_reaches_an_envoy_sidecar_over_mesh_mtls_through_rotations_and_a_restart() {
    use support::mesh_identity::{echo_hcm, mesh_downstream_socket, mesh_envoy, static_cluster};
    let work = TempDir::new();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let app = EchoUpstream::start("app");
    let (gw_port, sidecar_port) = (free_port(), free_port());
    let yaml = format!(
        "{gateway}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [\"*\"]
  gateways: [{GW}]
  http:
  - route: [{{destination: {{host: app.edge.svc.cluster.local, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [app.edge.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {sidecar_port}}}, serviceAccount: app}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: edge}}
spec:
  host: app.edge.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
    # A new connection (a new handshake with the certificates of the moment) per request.
    connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
",
        gateway = gateway_yaml(GW, gw_port)
    );
    std::fs::write(config.join("mesh.yaml"), yaml).unwrap();
    let ca_dir = work.path().join("ca");
    let ports = CaPorts::free();
    let cp_flags = ["--workload-cert-ttl", "4s"];
    let mut cp =
        ControlPlaneProcess::start_with_ca(&config, work.path(), &ca_dir, ports, &cp_flags);

    // The sidecar: inbound mesh mTLS only (Istio's SNI and ALPN), its certificate and
    // roots from the control plane over SDS, in front of the application.
    let sni = "outbound_.8080_._.app.edge.svc.cluster.local";
    let inbound = serde_json::json!({
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": sidecar_port}},
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
        }],
        "filter_chains": [{
            "filter_chain_match": {"server_names": [sni], "application_protocols": ["istio"]},
            "transport_socket": mesh_downstream_socket(),
            "filters": [echo_hcm(&work.path().join("sidecar-access.log"))]
        }]
    });
    let app_id = meshgate::ca::SpiffeId::parse("spiffe://cluster.local/ns/edge/sa/app").unwrap();
    let sidecar = mesh_envoy(
        ports.tls,
        &ca_dir,
        &app_id,
        &work.path().join("sidecar"),
        vec![inbound],
        vec![static_cluster("echo", app.port(), None)],
    );

    let token = work.path().join("token");
    std::fs::write(&token, join_token(&ca_dir, "edge", "ingress")).unwrap();
    let root = ca_dir.join("root-cert.pem");
    let started = Instant::now();
    let mut gw = XdsGateway::spawn_with(
        "meshgw",
        &format!("127.0.0.1:{}", ports.tls),
        &format!("proxy={GW}"),
        "edge",
        true,
        work.path(),
        &[
            "--ca-root",
            root.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--service-account",
            "ingress",
            "--workload-cert-ttl",
            "4s",
        ],
    );
    gw.wait_ready(Duration::from_secs(30));
    wait_until(
        "a request through mesh mTLS",
        Duration::from_secs(20),
        || matches!(blocking_http_get(("127.0.0.1", gw_port), "/"), Ok((200, _))),
    );
    eprintln!(
        "gateway start to the first request over mesh mTLS: {:?} (debug build)",
        started.elapsed()
    );
    // Each side saw the other's SPIFFE id: the sidecar put the gateway's in the XFCC it
    // forwards, and the gateway verified the sidecar's (the DestinationRule's SAN).
    let seen = app.last_request().expect("the application saw the request");
    let xfcc = seen["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xfcc.contains(&format!("URI={IDENTITY}")), "{seen}");
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/edge/sa/app;"),
        "{xfcc}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = request_loop(gw_port, stop.clone());
    // Both sides rotate their 4 s certificates at least three times.
    let (mut gw_serials, mut sidecar_serials) = (BTreeSet::new(), BTreeSet::new());
    let mut watch = |until: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(40);
        let (gw_at, sc_at) = (gw_serials.len(), sidecar_serials.len());
        while gw_serials.len() < gw_at + until || sidecar_serials.len() < sc_at + until {
            if let Some(c) = cert_of(&gw) {
                gw_serials.insert(c["serial_number"].as_str().unwrap().to_string());
            }
            sidecar_serials.extend(envoy_leaf_serials(&sidecar));
            assert!(
                Instant::now() < deadline,
                "{what}: {} gateway and {} sidecar certificates within 40 s",
                gw_serials.len() - gw_at,
                sidecar_serials.len() - sc_at
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    watch(4, "rotations");
    // The control plane (and its CA) restarts on the same address: both sides renew
    // with it again and traffic goes on.
    cp.kill();
    let cp = ControlPlaneProcess::start_with_ca(&config, work.path(), &ca_dir, ports, &cp_flags);
    watch(2, "renewals after the restart");
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, first) = traffic.join().unwrap();
    eprintln!(
        "{sent} requests over mesh mTLS during {} gateway and {} sidecar certificates",
        gw_serials.len(),
        sidecar_serials.len()
    );
    assert!(sent >= 200, "only {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed; first: {first}"
    );
    sidecar.assert_no_rejections();
    assert!(!gw.log().contains("PRIVATE KEY"));
    // The gateway made its own key: the control plane issued no `default` for it.
    assert!(
        !cp.log()
            .lines()
            .any(|l| l.contains("issued a workload certificate") && l.contains("sa/ingress")),
        "{}",
        cp.log()
    );
    drop(cp);
}

/// A joined gateway follows a root rotation of the CA directory (bundle, new signer, old
/// root removed) and, with only the old root in its `--ca-root` file, still reconnects to
/// the restarted control plane, whose serving certificate the new root signs.
#[test]
fn a_joined_gateway_follows_a_root_rotation_and_reconnects_after_it() {
    let mut mesh = Mesh::start(&[]);
    let (gw, stop, traffic) = mesh.rotating_gateway("rotating-root");

    let leaf_of = |gw: &XdsGateway| {
        let c = cert_of(gw)?;
        let pem = c["cert_chain"][0].as_str()?.to_string();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        Some(der.contents)
    };
    let signed_by = |leaf: &[u8], root_pem: &str| {
        let roots: Vec<_> = rustls_pemfile::certs(&mut root_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        meshgate::ca::authority::verify_chain(leaf, &[], &roots, SystemTime::now()).is_ok()
    };

    // 1. Both roots in the bundle: the gateway's next certificate comes with both.
    rotate_root(&mesh.ca_dir, "add");
    let new_root = std::fs::read_to_string(mesh.ca_dir.join("next-root/root-cert.pem")).unwrap();
    wait_until(
        "the gateway trusting both roots",
        Duration::from_secs(20),
        || cert_of(&gw).is_some_and(|c| c["ca_cert"].as_array().is_some_and(|r| r.len() == 2)),
    );
    // 2. The new key signs: the gateway renews (with its old-root certificate, which the
    // control plane still trusts) and gets one of the new root.
    rotate_root(&mesh.ca_dir, "sign");
    wait_until(
        "a certificate of the new root",
        Duration::from_secs(20),
        || leaf_of(&gw).is_some_and(|leaf| signed_by(&leaf, &new_root)),
    );
    // 3. The old root goes; the control plane restarts with the new root only.
    rotate_root(&mesh.ca_dir, "retire");
    wait_until(
        "a certificate after the old root left",
        Duration::from_secs(20),
        || {
            cert_of(&gw).is_some_and(|c| {
                c["ca_cert"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|p| p.as_str() == Some(new_root.as_str())))
            })
        },
    );
    mesh.cp.kill();
    mesh.cp = ControlPlaneProcess::start_with_ca(
        &mesh.config,
        mesh.work.path(),
        &mesh.ca_dir,
        mesh.ports,
        &[],
    );
    // The gateway reconnects (verifying the new serving certificate with the root it
    // learned) and takes a configuration change.
    mesh.route_to("echo2", mesh.echo2.port());
    mesh.wait_routed("echo2", Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, first) = traffic.join().unwrap();
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed; first: {first}"
    );
}
