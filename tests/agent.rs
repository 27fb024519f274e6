//! `meshgate agent` running a real Envoy 1.40 against a real `meshgate control-plane`
//! with its CA: readiness (no certificate, Envoy not LIVE, ready), xds-grpc over mutual
//! TLS with the certificate served over SDS, the SDS socket's permissions, rotation seen
//! by the same Envoy, Envoy killed and started again, and a drain on SIGTERM with a
//! request in flight.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::xds_mesh::*;
use support::*;

const NS: &str = "shop";
const SA: &str = "reviews";

/// A control plane with its CA and an Istio configuration directory.
struct Mesh {
    work: TempDir,
    config: PathBuf,
    ca_dir: PathBuf,
    cp: ControlPlaneProcess,
}

impl Mesh {
    fn start() -> Mesh {
        let work = TempDir::new();
        let config = work.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        let ca_dir = work.path().join("ca");
        // Sidecars listen on Istio's 15001 and 15006 unless told otherwise: these tests
        // run side by side on one host, so each mesh's sidecars take free ports.
        let mesh_config = work.path().join("mesh.yaml");
        std::fs::write(
            &mesh_config,
            format!(
                "proxyListenPort: {}\nproxyInboundListenPort: {}\n",
                support::free_port(),
                support::free_port()
            ),
        )
        .unwrap();
        let cp = ControlPlaneProcess::start_with_ca(
            &config,
            work.path(),
            &ca_dir,
            CaPorts::free(),
            &["--mesh-config", mesh_config.to_str().unwrap()],
        );
        Mesh {
            work,
            config,
            ca_dir,
            cp,
        }
    }

    fn root(&self) -> PathBuf {
        self.ca_dir.join("root-cert.pem")
    }

    /// A fresh join token for `ns`/`sa` in a file of the work directory.
    fn token(&self, ns: &str, sa: &str) -> PathBuf {
        let path = self.work.path().join(format!("token-{ns}-{sa}"));
        std::fs::write(&path, join_token(&self.ca_dir, ns, sa)).unwrap();
        path
    }
}

/// A `meshgate agent` process running Envoy.
struct Agent {
    child: Option<Child>,
    pub status_port: u16,
    pub admin_port: u16,
    pub run_dir: PathBuf,
    log_path: PathBuf,
}

impl Agent {
    /// Starts an agent for pod `pod` with the mesh's root, `flags` added (identity,
    /// token, type...).
    fn spawn(mesh: &Mesh, pod: &str, xds: &str, flags: &[&str]) -> Agent {
        let status_port = free_port();
        let admin_port = free_port();
        let run_dir = mesh.work.path().join(format!("run-{pod}"));
        let log_path = mesh.work.path().join(format!("agent-{pod}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let envoy = peer_bin("envoy");
        let child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .arg("agent")
            .args(["--xds", xds])
            .arg("--ca-root")
            .arg(mesh.root())
            .args(["--pod-name", pod, "--ip", "127.0.0.1"])
            .args(["--status-address", "127.0.0.1"])
            .args(["--status-port", &status_port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--run-dir")
            .arg(&run_dir)
            .args(flags)
            .arg("--")
            .arg(envoy)
            .args(["--concurrency", "1", "--log-level", "info"])
            .env("RUST_LOG", "info")
            .env_remove("POD_NAMESPACE")
            .env_remove("SERVICE_ACCOUNT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning meshgate agent");
        Agent {
            child: Some(child),
            status_port,
            admin_port,
            run_dir,
            log_path,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `/healthz/ready`: (status, body), None while nothing answers.
    fn ready(&self) -> Option<(u16, String)> {
        blocking_http_get(("127.0.0.1", self.status_port), "/healthz/ready").ok()
    }

    /// A counter of `/stats/prometheus`.
    fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) =
            blocking_http_get(("127.0.0.1", self.status_port), "/stats/prometheus").ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    fn admin(&self, path: &str) -> Option<(u16, String)> {
        blocking_http_get(("127.0.0.1", self.admin_port), path).ok()
    }

    /// Fails the test if the agent has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("the agent exited with {status}:\n{}", self.log());
        }
    }

    /// Waits until `/healthz/ready` answers 200.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Some((200, _)) = self.ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after {timeout:?}: {:?}\n{}",
                self.ready(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the agent's Envoy (its child named envoy), if one runs.
    fn envoy_pid(&self) -> Option<i32> {
        let agent = self.pid();
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...
            let (comm, rest) = stat.split_once(") ")?;
            let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            let state = rest.split_whitespace().next()?;
            (ppid == agent && comm.ends_with("(envoy") && state != "Z").then_some(pid)
        })
    }

    fn wait_envoy_pid(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Some(pid) = self.envoy_pid() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no Envoy child after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the agent to exit.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}:\n{}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The serial number of the certificate for `uri` that Envoy holds (admin `/certs`).
    fn envoy_serial(&self, uri: &str) -> Option<String> {
        let (_, body) = self.admin("/certs")?;
        let certs: serde_json::Value = serde_json::from_str(&body).ok()?;
        certs["certificates"]
            .as_array()?
            .iter()
            .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
            .find(|c| {
                c["subject_alt_names"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n["uri"] == uri))
            })
            .and_then(|c| c["serial_number"].as_str().map(str::to_string))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.split_once(") ")
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z")
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_sidecar_joins_over_mutual_tls_with_the_certificate_it_serves_over_sds() {
    let mesh = Mesh::start();
    // The token is not there yet: no certificate, so not ready and no Envoy.
    let token = mesh.work.path().join("token");
    let mut agent = Agent::spawn(
        &mesh,
        "reviews-1",
        &mesh.cp.tls_addr(),
        &[
            "--namespace",
            NS,
            "--service-account",
            SA,
            "--token-file",
            token.to_str().unwrap(),
            "--labels",
            "app=reviews,version=v1",
            "--workload-name",
            "reviews-v1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        agent.assert_running();
        if let Some(r) = agent.ready() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no status port:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no workload certificate"), "{body}");
    // A failed call to the CA has been made (the token file is missing) and Envoy has not
    // been started.
    wait_until(
        "a refused certificate request",
        Duration::from_secs(20),
        || {
            agent
                .metric("meshgate_agent_workload_certificate_failures_total")
                .is_some_and(|n| n >= 1)
        },
    );
    assert_eq!(agent.envoy_pid(), None);
    assert_eq!(agent.metric("meshgate_agent_envoy_starts_total"), Some(0));

    std::fs::write(&token, join_token(&mesh.ca_dir, NS, SA)).unwrap();
    agent.wait_ready(Duration::from_secs(40));
    assert_eq!(agent.metric("meshgate_agent_envoy_starts_total"), Some(1));

    // The control plane saw Envoy's ADS stream on its mutual-TLS port, with the client
    // certificate of the workload's SPIFFE identity (a stream without one is refused
    // there).
    let uri = format!("spiffe://cluster.local/ns/{NS}/sa/{SA}");
    mesh.cp
        .wait_syncz("the sidecar's stream", Duration::from_secs(10), |s| {
            s.iter()
                .any(|p| p["proxy_id"] == "reviews-1.shop" && p["spiffe_identity"] == uri.as_str())
        });
    let entry = mesh.cp.proxy("reviews-1").expect("the sidecar in syncz");
    assert!(
        entry["node_id"]
            .as_str()
            .unwrap()
            .starts_with("sidecar~127.0.0.1~reviews-1.shop~shop.svc"),
        "{entry}"
    );
    assert_eq!(entry["labels"]["app"], "reviews");

    // Envoy holds the certificate the agent served it over SDS.
    assert!(
        agent.envoy_serial(&uri).is_some(),
        "{:?}",
        agent.admin("/certs")
    );
    let (_, dump) = agent
        .admin("/config_dump?resource=dynamic_active_secrets")
        .unwrap();
    assert!(dump.contains("\"name\": \"default\""), "{dump}");

    // The bootstrap: Istio's node, sds-grpc on the socket, xds-grpc's certificate by SDS.
    let bootstrap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.run_dir.join("envoy-bootstrap.json")).unwrap(),
    )
    .unwrap();
    let meta = &bootstrap["node"]["metadata"];
    assert_eq!(meta["SERVICE_ACCOUNT"], SA);
    assert_eq!(meta["NAMESPACE"], NS);
    assert_eq!(meta["NAME"], "reviews-1");
    assert_eq!(meta["WORKLOAD_NAME"], "reviews-v1");
    assert_eq!(meta["INSTANCE_IPS"], "127.0.0.1");
    assert_eq!(meta["CLUSTER_ID"], "Kubernetes");
    assert_eq!(meta["LABELS"]["version"], "v1");
    assert!(meta["ISTIO_VERSION"].is_string());
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap();
    let sds = clusters.iter().find(|c| c["name"] == "sds-grpc").unwrap();
    let socket = agent.run_dir.canonicalize().unwrap().join("sds/socket");
    assert_eq!(
        sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"],
        socket.display().to_string()
    );
    let xds = clusters.iter().find(|c| c["name"] == "xds-grpc").unwrap();
    let common = &xds["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(
        common["tls_certificate_sds_secret_configs"][0]["name"],
        "default"
    );
    assert_eq!(
        xds["transport_socket"]["typed_config"]["sni"],
        "istiod.istio-system.svc"
    );

    // The socket is private and the key is nowhere on disk.
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let mut files = Vec::new();
    files_under(&agent.run_dir, &mut files);
    for f in files {
        if f == socket {
            continue;
        }
        let text = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
            "{} holds a key",
            f.display()
        );
    }

    // SIGTERM: drained (nothing open) and gone, Envoy with it.
    let envoy = agent.wait_envoy_pid(Duration::from_secs(5));
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert!(!pid_alive(envoy), "Envoy outlived the agent");
}

#[test]
fn readiness_waits_for_envoy_to_be_live() {
    let mesh = Mesh::start();
    let token = mesh.token(NS, SA);
    // The certificate comes from the CA, but nothing answers xDS where Envoy is sent.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::spawn(
        &mesh,
        "lost-1",
        &nowhere,
        &[
            "--ca-address",
            &mesh.cp.tls_addr(),
            "--namespace",
            NS,
            "--service-account",
            SA,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let envoy = agent.wait_envoy_pid(Duration::from_secs(30));
    wait_until("Envoy's admin API answers", Duration::from_secs(20), || {
        agent.admin("/ready").is_some()
    });
    let (status, body) = agent.ready().expect("the status port");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Envoy is not ready"), "{body}");
    assert_eq!(
        agent.metric("meshgate_agent_workload_certificates_issued_total"),
        Some(1)
    );
    // An agent killed outright takes its Envoy with it.
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    wait_until(
        "Envoy killed with the agent",
        Duration::from_secs(10),
        || !pid_alive(envoy),
    );
}

#[test]
fn the_certificate_rotates_under_the_same_envoy() {
    let mesh = Mesh::start();
    let token = mesh.token(NS, SA);
    let mut agent = Agent::spawn(
        &mesh,
        "rotating-1",
        &mesh.cp.tls_addr(),
        &[
            "--namespace",
            NS,
            "--service-account",
            SA,
            "--token-file",
            token.to_str().unwrap(),
            "--workload-cert-ttl",
            "4s",
        ],
    );
    agent.wait_ready(Duration::from_secs(40));
    let envoy = agent.wait_envoy_pid(Duration::from_secs(5));
    let uri = format!("spiffe://cluster.local/ns/{NS}/sa/{SA}");
    let first = agent.envoy_serial(&uri).expect("Envoy's certificate");
    // Renewed at about half of 4 s; Envoy takes the new one over SDS.
    let mut seen = vec![first.clone()];
    wait_until(
        "two rotations seen by Envoy",
        Duration::from_secs(30),
        || {
            if let Some(s) = agent.envoy_serial(&uri)
                && !seen.contains(&s)
            {
                seen.push(s);
            }
            seen.len() >= 3
        },
    );
    assert_eq!(agent.envoy_pid(), Some(envoy), "Envoy was not restarted");
    assert_eq!(agent.metric("meshgate_agent_envoy_starts_total"), Some(1));
    assert!(
        agent
            .metric("meshgate_agent_workload_certificates_issued_total")
            .unwrap()
            >= 3
    );
    // Still ready, and still connected to the control plane with the new certificates.
    assert_eq!(agent.ready().map(|r| r.0), Some(200));
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn a_killed_envoy_is_started_again() {
    let mesh = Mesh::start();
    let token = mesh.token(NS, SA);
    let mut agent = Agent::spawn(
        &mesh,
        "crashy-1",
        &mesh.cp.tls_addr(),
        &[
            "--namespace",
            NS,
            "--service-account",
            SA,
            "--token-file",
            token.to_str().unwrap(),
            "--sotw",
        ],
    );
    agent.wait_ready(Duration::from_secs(40));
    let first = agent.wait_envoy_pid(Duration::from_secs(5));
    // SAFETY: killing the test's grandchild, an Envoy it just found.
    unsafe {
        libc::kill(first, libc::SIGKILL);
    }
    // Not ready while it is gone (the restart waits a back-off of about half a second).
    wait_until("not ready without Envoy", Duration::from_secs(10), || {
        agent.ready().is_some_and(|(s, _)| s == 503)
    });
    agent.wait_ready(Duration::from_secs(30));
    let second = agent.wait_envoy_pid(Duration::from_secs(5));
    assert_ne!(first, second);
    assert_eq!(agent.metric("meshgate_agent_envoy_restarts_total"), Some(1));
    assert_eq!(
        agent.metric("meshgate_agent_envoy_unexpected_exits_total"),
        Some(1)
    );
    assert!(agent.log().contains("Envoy exited; starting it again"));
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    assert!(!pid_alive(second));
}

#[test]
fn sigterm_drains_a_request_in_flight_then_stops() {
    let mesh = Mesh::start();
    let echo = EchoUpstream::start("echo");
    let gw_port = free_port();
    std::fs::write(
        mesh.config.join("gateway.yaml"),
        gateway_yaml("gw", gw_port),
    )
    .unwrap();
    std::fs::write(
        mesh.config.join("services.yaml"),
        service_entry_yaml("echo", echo.port()),
    )
    .unwrap();
    std::fs::write(
        mesh.config.join("route.yaml"),
        route_yaml("*", &["gw"], "echo", echo.port()),
    )
    .unwrap();
    let token = mesh.token("edge", "ingress");
    let mut agent = Agent::spawn(
        &mesh,
        "gw-1",
        &mesh.cp.tls_addr(),
        &[
            "--proxy-type",
            "router",
            "--namespace",
            "edge",
            "--service-account",
            "ingress",
            "--labels",
            "proxy=gw",
            "--token-file",
            token.to_str().unwrap(),
            "--drain-duration",
            "15s",
        ],
    );
    agent.wait_ready(Duration::from_secs(40));
    let envoy = agent.wait_envoy_pid(Duration::from_secs(5));
    // A request on a new connection, read until the connection closes: asked to close
    // by the client, or (keep-alive) by Envoy draining.
    let get = move |delay_ms: u64, close: bool| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw_port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        use std::io::{Read, Write};
        write!(
            s,
            "GET /slow HTTP/1.1\r\nHost: shop.example\r\nx-echo-delay-ms: {delay_ms}\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    wait_until(
        "routed through the gateway",
        Duration::from_secs(20),
        || get(0, true).is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
    );

    // A request that takes 3 s at the upstream is in flight when SIGTERM comes.
    let before = echo.requests();
    let in_flight = std::thread::spawn(move || get(3000, false));
    wait_until(
        "the request reached the upstream",
        Duration::from_secs(10),
        || echo.requests() > before,
    );
    let signalled = Instant::now();
    agent.signal(libc::SIGTERM);
    wait_until("not ready once draining", Duration::from_secs(2), || {
        agent
            .ready()
            .is_some_and(|(s, b)| s == 503 && b.contains("draining"))
    });
    assert!(
        !in_flight.is_finished(),
        "the request finished before the drain began"
    );

    // The request completes, then the agent stops Envoy (no connection left, well before
    // the 15 s drain duration) and exits 0.
    let answer = in_flight.join().unwrap().expect("the in-flight request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the drain waited {:?}",
        signalled.elapsed()
    );
    assert!(
        agent.log().contains("no connection left"),
        "{}",
        agent.log()
    );
    assert!(!pid_alive(envoy), "Envoy outlived the agent");
    let refused = std::net::TcpStream::connect(("127.0.0.1", gw_port));
    assert!(refused.is_err(), "the gateway port still accepts");
}
