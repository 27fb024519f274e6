//! Zero-downtime upgrades of `meshgate gateway` (the real binary, copied to a scratch
//! path and replaced there between upgrades): the successor takes the listening sockets
//! over the upgrade socket, the old one stops accepting, drains and exits 0. Load runs
//! through two upgrades (one started by hand with `--upgrade`, one by SIGUSR2) and a
//! configuration change: HTTP/1.1 keep-alive and new connections, HTTP/2, TLS; not one
//! request may fail nor one connection be reset, and the health port answers throughout.
//! systemd's notify protocol is checked with a datagram socket standing in for
//! `$NOTIFY_SOCKET`. A successor that fails leaves the old one serving.
mod support;

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::certs::TestCa;
use support::*;

/// A stand-in for systemd's notify socket: every datagram, with when it came.
struct Notify {
    path: PathBuf,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                s.lock().unwrap().push((Instant::now(), text));
            }
        });
        Notify { path, seen }
    }

    fn messages(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits for the datagram saying `MAINPID=` a pid other than `not`; returns the pid
    /// and when it came.
    fn wait_mainpid(&self, not: u32, timeout: Duration) -> (u32, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            for (at, m) in self.seen.lock().unwrap().iter() {
                if let Some(pid) = m
                    .lines()
                    .find_map(|l| l.strip_prefix("MAINPID="))
                    .and_then(|p| p.parse::<u32>().ok())
                    && pid != not
                {
                    return (pid, *at);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no MAINPID from a successor; seen {:?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The ports and files one gateway lineage shares.
struct Setup {
    dir: TempDir,
    exe: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    http: u16,
    https: u16,
    admin: u16,
    health: u16,
    prometheus: u16,
    ca: TestCa,
    echo: EchoUpstream,
}

impl Setup {
    fn new() -> Setup {
        let dir = TempDir::new();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("meshgate");
        std::fs::copy(env!("CARGO_BIN_EXE_meshgate"), &exe).unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let ca = TestCa::new("upgrade CA");
        let leaf = ca.issue(&["shop.example.com"]);
        let (cert, key) = leaf.write(dir.path(), "shop");
        let s = Setup {
            socket: run.join("gateway-upgrade.sock"),
            exe,
            config,
            http: free_port(),
            https: free_port(),
            admin: free_port(),
            health: free_port(),
            prometheus: free_port(),
            ca,
            echo: EchoUpstream::start("echo"),
            dir,
        };
        s.write_config(&cert, &key, "one");
        s
    }

    /// The configuration: HTTP and HTTPS servers routing to the echo upstream, with a
    /// response header telling which version is served.
    fn write_config(&self, cert: &Path, key: &Path, version: &str) {
        let https = format!(
            "  - port: {{number: {}, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: \"{}\", privateKey: \"{}\"}}\n",
            self.https,
            cert.display(),
            key.display()
        );
        let version = format!("    headers: {{response: {{set: {{x-config: {version}}}}}}}\n");
        let yaml = echo_gateway(self.http, self.echo.port(), &https, &version);
        // Written aside and renamed: the watcher never reads half a file.
        let tmp = self.dir.path().join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config.join("config.yaml")).unwrap();
    }

    fn args(&self, config: &Path) -> Vec<String> {
        self.args_with(config, &self.socket)
    }

    fn args_with(&self, config: &Path, socket: &Path) -> Vec<String> {
        [
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--drain-timeout",
            "3",
            "--access-log",
            "off",
            "--upgrade-socket",
            socket.to_str().unwrap(),
            "--admin-address",
            &format!("127.0.0.1:{}", self.admin),
            "--health-address",
            &format!("127.0.0.1:{}", self.health),
            "--prometheus-address",
            &format!("127.0.0.1:{}", self.prometheus),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts the copied binary; its output goes to `NAME.log` (a successor it starts
    /// writes there too).
    fn spawn(&self, name: &str, extra: &[&str], config: &Path, notify: &Notify) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Command::new(&self.exe)
            .args(self.args(config))
            .args(extra)
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_serving(&self, child: &mut Child, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = blocking_http_get(("127.0.0.1", self.health), "/healthz/ready")
                && std::net::TcpStream::connect(("127.0.0.1", self.https)).is_ok()
            {
                return;
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!("{name} exited with {s}:\n{}", self.log(name));
            }
            assert!(
                Instant::now() < deadline,
                "{name} not serving:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a build to install later as `exe.NAME` (flushed to disk now, so that the
    /// upgrade itself runs without a burst of writeback): a copy of the binary with
    /// `NAME` appended, which the ELF loader ignores, so its contents differ.
    fn stage_binary(&self, name: &str) -> PathBuf {
        let staged = self.exe.with_extension(name);
        std::fs::copy(env!("CARGO_BIN_EXE_meshgate"), &staged).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&staged)
            .unwrap();
        std::io::Write::write_all(&mut f, name.as_bytes()).unwrap();
        f.sync_all().unwrap();
        staged
    }

    /// Replaces the binary on disk as a package manager does: the new file renamed over
    /// the old path. Returns its inode.
    fn replace_binary(&self, staged: &Path) -> u64 {
        std::fs::rename(staged, &self.exe).unwrap();
        std::fs::metadata(&self.exe).unwrap().ino()
    }
}

/// A process started by one of ours (the SIGUSR2 successor): killed if the test fails.
struct Pid(u32);
impl Drop for Pid {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie nobody reaped (its parent exited) has exited all the same.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits for a child's exit (bounded); returns its status and when it was seen.
fn wait_exit(child: &mut Child, timeout: Duration) -> (std::process::ExitStatus, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return (s, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn exe_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    health_ok: AtomicU64,
    /// Responses carrying `x-config: two` (the configuration change is served).
    second_config: AtomicU64,
}

impl Tally {
    fn fail(&self, what: String) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.failures
            .lock()
            .unwrap()
            .push(format!("at {:.3}s: {what}", at.as_secs_f64() % 3600.0));
    }
}

/// One client's loop until `stop`: each request must be answered 200 by the echo
/// upstream.
async fn client_loop(
    name: &'static str,
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::Relaxed) {
        match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                let second = r
                    .headers()
                    .get("x-config")
                    .is_some_and(|v| v.as_bytes() == b"two");
                match r.bytes().await {
                    Ok(body) if body.starts_with(b"{") => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if second {
                            tally.second_config.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(body) => {
                        tally.fail(format!("{name}: body {:?}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => tally.fail(format!("{name}: body: {e:?}")),
                }
            }
            Ok(r) => tally.fail(format!("{name}: status {}", r.status())),
            Err(e) => tally.fail(format!("{name}: {e:?}")),
        }
    }
}

/// The health port probed as a load balancer does, a new connection each time.
fn health_loop(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        match blocking_http_get(("127.0.0.1", port), "/healthz/ready") {
            Ok((200, _)) => {
                tally.health_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => tally.fail(format!("health: {status} {body}")),
            Err(e) => tally.fail(format!("health: {e}")),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The running load: every client loop, stopped together.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    health: std::thread::JoinHandle<()>,
}

impl Load {
    /// Stops the clients and waits until each has finished the request it was making
    /// (dropping them mid-request would fail it here, not in the gateway).
    fn finish(self, rt: &tokio::runtime::Runtime) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for c in self.clients {
                tokio::time::timeout(Duration::from_secs(15), c)
                    .await
                    .expect("a client finishes its last request")
                    .unwrap();
            }
        });
        self.health.join().unwrap();
        self.tally
    }
}

fn start_load(s: &Setup, rt: &tokio::runtime::Runtime) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let base = || {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
    };
    let tls = || {
        base()
            .tls_certs_only([reqwest::Certificate::from_pem(s.ca.pem.as_bytes()).unwrap()])
            .resolve("shop.example.com", ([127, 0, 0, 1], s.https).into())
    };
    let plain = format!("http://127.0.0.1:{}/load", s.http);
    let secure = format!("https://shop.example.com:{}/load", s.https);
    let clients: Vec<(&'static str, reqwest::Client, String)> = vec![
        (
            "http1 keep-alive",
            base().http1_only().build().unwrap(),
            plain.clone(),
        ),
        (
            "http1 keep-alive 2",
            base().http1_only().build().unwrap(),
            plain.clone(),
        ),
        (
            "http1 new connections",
            base()
                .http1_only()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            plain.clone(),
        ),
        (
            "http2",
            base().http2_prior_knowledge().build().unwrap(),
            plain.clone(),
        ),
        (
            "tls http1",
            tls().http1_only().build().unwrap(),
            secure.clone(),
        ),
        (
            "tls http1 new connections",
            tls()
                .http1_only()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            secure.clone(),
        ),
        ("tls http2", tls().build().unwrap(), secure.clone()),
    ];
    let mut handles = Vec::new();
    for (name, client, url) in clients {
        handles.push(rt.spawn(client_loop(name, client, url, stop.clone(), tally.clone())));
    }
    let health = s.health;
    let (st, ta) = (stop.clone(), tally.clone());
    let health = std::thread::spawn(move || health_loop(health, st, ta));
    Load {
        stop,
        tally,
        clients: handles,
        health,
    }
}

/// Waits until the load has `more` successful requests beyond now.
fn wait_for_load(tally: &Tally, more: u64) {
    let target = tally.ok.load(Ordering::Relaxed) + more;
    wait_until("load progresses", Duration::from_secs(30), || {
        tally.ok.load(Ordering::Relaxed) >= target
    });
}

/// A Gateway with an HTTP server on `http` (and `more_servers`, YAML list items), routing
/// everything to the echo upstream on `echo`; `route_extra` is added to the route.
fn echo_gateway(http: u16, echo: u16, more_servers: &str, route_extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: ["*"]
{more_servers}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: edge}}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: all, namespace: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]
{route_extra}"#
    )
}

#[test]
fn two_upgrades_and_a_config_change_under_load_fail_nothing() {
    let s = Setup::new();
    let notify = Notify::bind(s.dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let config = s.config.clone();
    let (second_build, third_build) = (s.stage_binary("second"), s.stage_binary("third"));
    // Three workers, then one: the successor accepts on all three sockets of each
    // listener it was given, and hands all of them on in turn.
    let mut first = s.spawn("first", &["--concurrency", "3"], &config, &notify);
    s.wait_serving(&mut first, "first");
    wait_until(
        "READY=1 from the first gateway",
        Duration::from_secs(10),
        || notify.messages().iter().any(|m| m == "READY=1"),
    );
    let socket_mode = std::fs::metadata(&s.socket).unwrap().mode() & 0o777;
    assert_eq!(socket_mode, 0o600, "the upgrade socket is private");
    let load = start_load(&s, &rt);
    let tally = load.tally.clone();
    wait_for_load(&tally, 300);

    // Upgrade 1: a new binary on disk, its successor started by hand.
    let second_inode = s.replace_binary(&second_build);
    let started = Instant::now();
    let mut second = s.spawn(
        "second",
        &["--upgrade", "--concurrency", "1"],
        &config,
        &notify,
    );
    let (pid, serving_at) = notify.wait_mainpid(first.id(), Duration::from_secs(30));
    assert_eq!(pid, second.id());
    let (status, exited_at) = wait_exit(&mut first, Duration::from_secs(30));
    assert!(
        status.success(),
        "the old gateway exits 0: {status}\n{}",
        s.log("first")
    );
    let by_hand = (serving_at - started, exited_at - started);
    assert_eq!(
        exe_inode(second.id()),
        second_inode,
        "the successor runs the new binary"
    );
    wait_for_load(&tally, 300);

    // A configuration change while the load runs.
    let (cert, key) = (s.dir.path().join("shop.crt"), s.dir.path().join("shop.key"));
    s.write_config(&cert, &key, "two");
    wait_until(
        "the new configuration is served",
        Duration::from_secs(30),
        || tally.second_config.load(Ordering::Relaxed) > 50,
    );

    // Upgrade 2: another binary on disk; SIGUSR2 makes the gateway start it.
    let third_inode = s.replace_binary(&third_build);
    let started = Instant::now();
    unsafe {
        libc::kill(second.id() as i32, libc::SIGUSR2);
    }
    let (third, serving_at) = notify.wait_mainpid(second.id(), Duration::from_secs(30));
    let third = Pid(third);
    let (status, exited_at) = wait_exit(&mut second, Duration::from_secs(30));
    assert!(
        status.success(),
        "the old gateway exits 0: {status}\n{}",
        s.log("second")
    );
    let by_signal = (serving_at - started, exited_at - started);
    assert_eq!(
        exe_inode(third.0),
        third_inode,
        "the successor runs the replaced binary"
    );
    wait_for_load(&tally, 300);

    let tally = load.finish(&rt);
    rt.shutdown_timeout(Duration::from_secs(15));
    let failures = tally.failures.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    let health = tally.health_ok.load(Ordering::Relaxed);
    eprintln!(
        "upgrade by hand: serving after {:?}, old exited after {:?}; by SIGUSR2: serving after {:?}, old exited after {:?}; {ok} requests, {health} health probes, {} failed",
        by_hand.0,
        by_hand.1,
        by_signal.0,
        by_signal.1,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:#?}\n--- first ---\n{}\n--- second ---\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(20)],
        s.log("first"),
        s.log("second")
    );
    assert!(health > 10, "the health port was probed: {health}");

    // systemd heard READY=1 at the start, then each successor's MAINPID with READY=1, and
    // nothing saying the service stops.
    let msgs = notify.messages();
    assert_eq!(
        msgs,
        vec![
            "READY=1".to_string(),
            format!("MAINPID={}\nREADY=1", pid),
            format!("MAINPID={}\nREADY=1", third.0),
        ],
        "notifications"
    );

    // The last successor serves on and can itself be stopped cleanly.
    let r = blocking_http_get(("127.0.0.1", s.http), "/after").unwrap();
    assert_eq!(r.0, 200);
    unsafe {
        libc::kill(third.0 as i32, libc::SIGTERM);
    }
    wait_until("the last gateway exits", Duration::from_secs(20), || {
        gone(third.0)
    });
}

#[test]
fn failed_successors_leave_the_old_gateway_serving() {
    let s = Setup::new();
    let notify = Notify::bind(s.dir.path());
    let config = s.config.clone();
    let mut gw = s.spawn("gw", &["--concurrency", "2"], &config, &notify);
    s.wait_serving(&mut gw, "gw");

    // No gateway at the path: the would-be successor exits non-zero.
    let out = Command::new(&s.exe)
        .args(s.args_with(&config, &s.dir.path().join("run/nobody.sock")))
        .arg("--upgrade")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no gateway to take over"), "{err}");

    // A second gateway without --upgrade may not take the socket.
    let out = Command::new(&s.exe).args(s.args(&config)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another gateway listens there"), "{err}");

    // A successor with a configuration that cannot be served.
    let bad = s.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("bad.yaml"), "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x}\nspec: {servers: 7}\n").unwrap();
    let mut bad_successor = s.spawn("bad", &["--upgrade", "--concurrency", "2"], &bad, &notify);
    let (status, _) = wait_exit(&mut bad_successor, Duration::from_secs(30));
    assert!(!status.success(), "{}", s.log("bad"));
    let r = blocking_http_get(("127.0.0.1", s.http), "/still").unwrap();
    assert_eq!(r.0, 200, "the old gateway serves");
    let r = blocking_http_get(("127.0.0.1", s.health), "/healthz/ready").unwrap();
    assert_eq!(r.0, 200, "and says it is ready");
    wait_until(
        "the old gateway logs the failure",
        Duration::from_secs(10),
        || {
            s.log("gw")
                .contains("upgrade failed; this gateway keeps serving")
        },
    );

    // SIGUSR2 while the configuration on disk is bad: the successor started fails, the
    // old one (which refused the bad version and serves the last good one) serves on.
    std::fs::copy(bad.join("bad.yaml"), s.config.join("bad.yaml")).unwrap();
    wait_until(
        "the bad version is refused",
        Duration::from_secs(20),
        || s.log("gw").contains("rejected update"),
    );
    unsafe {
        libc::kill(gw.id() as i32, libc::SIGUSR2);
    }
    wait_until(
        "the successor's failure is logged",
        Duration::from_secs(30),
        || {
            s.log("gw")
                .contains("the successor failed; this gateway keeps serving")
        },
    );
    assert!(gw.try_wait().unwrap().is_none(), "the old gateway runs");
    let r = blocking_http_get(("127.0.0.1", s.http), "/still").unwrap();
    assert_eq!(r.0, 200);
    assert_eq!(notify.messages(), vec!["READY=1".to_string()]);

    // Fixed on disk, the next SIGUSR2 upgrades.
    std::fs::remove_file(s.config.join("bad.yaml")).unwrap();
    unsafe {
        libc::kill(gw.id() as i32, libc::SIGUSR2);
    }
    let (next, _) = notify.wait_mainpid(gw.id(), Duration::from_secs(30));
    let next = Pid(next);
    let (status, _) = wait_exit(&mut gw, Duration::from_secs(30));
    assert!(status.success(), "{}", s.log("gw"));
    let r = blocking_http_get(("127.0.0.1", s.http), "/after").unwrap();
    assert_eq!(r.0, 200);
    unsafe {
        libc::kill(next.0 as i32, libc::SIGTERM);
    }
    wait_until("the successor exits", Duration::from_secs(20), || {
        gone(next.0)
    });
}

/// A listener renamed (or replaced) at the same address keeps its sockets: a client
/// opening new connections all along sees none refused nor reset.
#[test]
fn a_listener_replaced_at_the_same_address_refuses_no_connection() {
    use serde_json::json;
    use support::gateway::{InProcess, hcm_listener, static_cluster};
    let echo = EchoUpstream::start("echo");
    let port = free_port();
    let resources = |name: &str| {
        json!({
            "listeners": [hcm_listener(name, port, "r", json!({}), vec![])],
            "routes": [{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}],
            "clusters": [static_cluster("a", &[echo.port()], json!({}))],
        })
    };
    let gw = InProcess::start_with(&resources("first"), |o| o.concurrency = 2);
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match blocking_http_get(("127.0.0.1", port), "/x") {
                        Ok((200, _)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => {
                            failures.lock().unwrap().push(format!("{status} {body}"))
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for i in 0..20 {
        let before = done.load(Ordering::Relaxed);
        wait_until("requests flow", Duration::from_secs(10), || {
            done.load(Ordering::Relaxed) >= before + 20
        });
        gw.apply(&resources(&format!("renamed-{i}")), &format!("v{i}"))
            .unwrap();
    }
    let before = done.load(Ordering::Relaxed);
    wait_until("requests flow", Duration::from_secs(10), || {
        done.load(Ordering::Relaxed) >= before + 20
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        done.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(
        gw.gw().listener_addr("renamed-19").map(|a| a.port()),
        Some(port)
    );
}

/// With `--xds`, the successor serves once its first full sync from `meshgate
/// control-plane` is applied; SIGUSR2 upgrades it under load as with `--config`.
#[test]
fn an_xds_gateway_upgrades_by_sigusr2_under_load() {
    let dir = TempDir::new();
    let echo = EchoUpstream::start("echo");
    let http = free_port();
    let (admin, health, prometheus) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("mesh.yaml"),
        echo_gateway(http, echo.port(), "", ""),
    )
    .unwrap();
    let cp = support::xds_mesh::ControlPlaneProcess::start(&cfg, dir.path());
    let notify = Notify::bind(dir.path());
    let socket = dir.path().join("gateway-upgrade.sock");
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["gateway", "--xds", &cp.xds_addr(), "--node-id", "gw"])
        .args([
            "--namespace",
            "edge",
            "--concurrency",
            "2",
            "--drain-timeout",
            "3",
        ])
        .args(["--access-log", "off", "--upgrade-socket"])
        .arg(&socket)
        .args(["--admin-address", &format!("127.0.0.1:{admin}")])
        .args(["--health-address", &format!("127.0.0.1:{health}")])
        .args(["--prometheus-address", &format!("127.0.0.1:{prometheus}")])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let gateway_log =
        || std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    wait_until("the gateway serves", Duration::from_secs(30), || {
        assert!(first.try_wait().unwrap().is_none(), "{}", gateway_log());
        matches!(blocking_http_get(("127.0.0.1", http), "/"), Ok((200, _)))
    });
    wait_until("READY=1", Duration::from_secs(10), || {
        notify.messages() == ["READY=1"]
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let url = format!("http://127.0.0.1:{http}/load");
    let base = || {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
    };
    let mut clients = Vec::new();
    for (name, client) in [
        ("http1 keep-alive", base().http1_only().build().unwrap()),
        (
            "http1 new connections",
            base()
                .http1_only()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        ),
        ("http2", base().http2_prior_knowledge().build().unwrap()),
    ] {
        clients.push(rt.spawn(client_loop(
            name,
            client,
            url.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    let (st, ta) = (stop.clone(), tally.clone());
    let health_probe = std::thread::spawn(move || health_loop(health, st, ta));
    let load = Load {
        stop,
        tally: tally.clone(),
        clients,
        health: health_probe,
    };
    wait_for_load(&tally, 300);

    let started = Instant::now();
    unsafe {
        libc::kill(first.id() as i32, libc::SIGUSR2);
    }
    let (next, serving_at) = notify.wait_mainpid(first.id(), Duration::from_secs(30));
    let next = Pid(next);
    let (status, exited_at) = wait_exit(&mut first, Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", gateway_log());
    wait_for_load(&tally, 300);
    let tally = load.finish(&rt);
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "xds upgrade by SIGUSR2: serving after {:?}, old exited after {:?}; {} requests, {} failed",
        serving_at - started,
        exited_at - started,
        tally.ok.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}\n{}", gateway_log());
    assert!(
        gateway_log().contains("first full sync applied; ready"),
        "{}",
        gateway_log()
    );
    unsafe {
        libc::kill(next.0 as i32, libc::SIGTERM);
    }
    wait_until("the successor exits", Duration::from_secs(20), || {
        gone(next.0)
    });
}

/// A `redis-server` on 127.0.0.1, nothing on disk; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = free_port();
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new(peer_bin("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning redis-server");
        wait_for_port(port, Duration::from_secs(10));
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rate-limit service started beside the gateway (`--ratelimit-redis`) is handed
/// over with the listeners: a gateway with a Global RateLimitPolicy (`failureMode:
/// Closed`, so a call the service does not answer is a 500) is upgraded by SIGUSR2
/// under a request loop. Every request is answered by the rate-limit filter as the
/// limit says, none fails, and the limit counts across the upgrade: of N per day (no token comes back while the test runs),
/// exactly the first N are admitted.
#[test]
fn a_rate_limited_gateway_upgrades_by_sigusr2_counting_across() {
    const LIMIT: usize = 1000;
    let s = Setup::new();
    let redis = Redis::start(s.dir.path());
    let notify = Notify::bind(s.dir.path());
    let config = s.dir.path().join("rl-config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("config.yaml"),
        echo_gateway(s.http, s.echo.port(), "", "")
            + &format!(
                r#"---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: shared, namespace: edge}}
spec:
  targetRefs: [{{kind: Gateway, name: gw}}]
  type: Global
  global:
    failureMode: Closed
    rules:
    - name: everyone
      clientSelectors: [{{sourceCIDR: {{type: Distinct}}}}]
      limit: {{requests: {LIMIT}, unit: Day}}
"#
            ),
    )
    .unwrap();
    let rls = format!("127.0.0.1:{}", free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let extra = [
        "--concurrency",
        "2",
        "--ratelimit-redis",
        &redis_url,
        "--ratelimit-address",
        &rls,
    ];
    let mut gw = s.spawn("rl", &extra, &config, &notify);
    // Serving: the health port answers and a request passes the filter.
    wait_until("the gateway serves", Duration::from_secs(30), || {
        if let Ok(Some(st)) = gw.try_wait() {
            panic!("the gateway exited with {st}:\n{}", s.log("rl"));
        }
        matches!(
            blocking_http_get(("127.0.0.1", s.health), "/healthz/ready"),
            Ok((200, _))
        )
    });
    let mut statuses = Vec::new();
    let request = |statuses: &mut Vec<u16>| {
        let r = blocking_http_get(("127.0.0.1", s.http), "/rl");
        statuses.push(match r {
            Ok((status, _)) => status,
            Err(e) => panic!("request {} failed: {e}\n{}", statuses.len(), s.log("rl")),
        });
    };
    for _ in 0..20 {
        request(&mut statuses);
    }
    let old = gw.id();
    unsafe {
        libc::kill(old as i32, libc::SIGUSR2);
    }
    // Requests all through the upgrade, until the old gateway has exited (bounded: the
    // limit must not be reached before, or the upgrade would not be counted across).
    let mut exited = None;
    while statuses.len() < LIMIT - 100 {
        request(&mut statuses);
        if let Ok(Some(st)) = gw.try_wait() {
            exited = Some(st);
            break;
        }
    }
    let during = statuses.len() - 20;
    let status = exited.unwrap_or_else(|| {
        panic!(
            "the old gateway did not exit within {during} requests:\n{}",
            s.log("rl")
        )
    });
    assert!(status.success(), "{}", s.log("rl"));
    let (next, _) = notify.wait_mainpid(old, Duration::from_secs(10));
    let next = Pid(next);
    assert!(!gone(next.0), "the successor runs");
    // The rest, served by the successor alone, past the limit.
    while statuses.len() < LIMIT + 20 {
        request(&mut statuses);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let others: Vec<(usize, u16)> = statuses
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| *s != 200 && *s != 429)
        .collect();
    eprintln!(
        "rate-limited upgrade: {during} requests during the upgrade, {admitted} admitted of {}",
        statuses.len()
    );
    assert!(others.is_empty(), "failed: {others:?}\n{}", s.log("rl"));
    assert_eq!(admitted, LIMIT, "{}", s.log("rl"));
    assert!(
        statuses[..LIMIT].iter().all(|s| *s == 200) && statuses[LIMIT..].iter().all(|s| *s == 429),
        "the first {LIMIT} admitted, then refused"
    );
    assert!(
        s.log("rl").contains("rate-limit service listening")
            && s.log("rl").contains("inherited=true"),
        "the successor's service took the socket over:\n{}",
        s.log("rl")
    );
    unsafe {
        libc::kill(next.0 as i32, libc::SIGTERM);
    }
    wait_until("the successor exits", Duration::from_secs(20), || {
        gone(next.0)
    });
}
