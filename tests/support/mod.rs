//! Shared helpers for meshgate's integration tests: real peers on loopback.
//!
//! - [`EchoUpstream`]: an HTTP/1.1 + HTTP/2 (cleartext) server that answers every request
//!   with a JSON description of what it received, and can be told by request headers to
//!   answer with a status, delay, or reset.
//! - [`Envoy`]: a real Envoy 1.40 process started on a config file, with its admin API.
//! - [`free_port`], [`repo_root`], [`peer_bin`].
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port that was free a moment ago on both 0.0.0.0 and 127.0.0.1.
///
/// Ports come from 20000..32000, below Linux's ephemeral range (32768..60999), so the
/// kernel never hands the same port to an outgoing connection between this call and the
/// peer's bind. Each test process starts at a random offset and walks the range, so
/// concurrent tests and test processes rarely try the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        // Bound and closed in turn: a port held on either address is skipped.
        if StdListener::bind(("0.0.0.0", port)).is_ok()
            && StdListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free TCP port in {LOW}..{}", LOW + SPAN)
}

/// Finds a peer program: `$MESHGATE_<NAME>` (upper-case), then `.peers/bin/<name>`, then
/// PATH. A missing peer fails the test with the command that installs it.
pub fn peer_bin(name: &str) -> PathBuf {
    let env = format!("MESHGATE_{}", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&env) {
        return PathBuf::from(p);
    }
    let local = repo_root().join(".peers/bin").join(name);
    if local.exists() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` is needed by this test and was not found; install it with: scripts/install-peers.sh {name}"
    );
}

/// The Python of the test virtualenv (grpcio, grpcio-tools, cryptography):
/// `$MESHGATE_PYTHON_PEER`, else `.peers/python-venv/bin/python`. Missing, it fails the
/// test with the command that installs it.
pub fn python_peer() -> PathBuf {
    if let Ok(p) = std::env::var("MESHGATE_PYTHON_PEER") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".peers/python-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "the Python test peer (grpcio, cryptography) is needed by this test and was not found; install it with: scripts/install-peers.sh python"
    );
}

/// A scratch directory removed when dropped (kept if MESHGATE_KEEP_TMP is set).
pub struct TempDir(pub tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix("meshgate-test-")
                .tempdir()
                .expect("tempdir"),
        )
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MESHGATE_KEEP_TMP").is_some() {
            let p = self.0.path().to_path_buf();
            eprintln!("keeping {}", p.display());
            std::mem::forget(std::mem::replace(
                &mut self.0,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Echo upstream
// ---------------------------------------------------------------------------------------

/// An upstream server on 127.0.0.1 that echoes each request as JSON:
/// `{"upstream": NAME, "method", "path" (with query), "scheme" (HTTP/2's `:scheme`, else
/// null), "version", "headers": {lowercase name: [values]}, "body_len"}`.
///
/// Request headers steer it:
/// - `x-echo-status: 503` answer with that status
/// - `x-echo-delay-ms: 200` wait before answering
/// - `x-echo-reset: 1` close the connection without answering
/// - `x-echo-header: name=value` add a response header (repeatable)
/// - `x-echo-body-delay-ms: 200` send the headers and the JSON at once, then wait before
///   sending the rest of the body (`.tail`)
/// - `x-echo-fail-first: N` answer 503 to the first N requests carrying the same header value pair
///   `x-echo-fail-key` (for retry tests; [`EchoUpstream::forget_failures`] starts the counts
///   afresh)
///
/// It keeps the description of the last request it answered ([`EchoUpstream::last_request`]):
/// what a proxy sent where the client never sees the answer (a mirror).
pub struct EchoUpstream {
    pub name: String,
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Requests seen per `x-echo-fail-key`.
    fail_counts: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    last: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoUpstream {
    /// Starts an echo server on a free port of 127.0.0.1.
    pub fn start(name: &str) -> EchoUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// Starts an echo server on `addr` (e.g. another 127.0.0.x address).
    pub fn start_on(addr: SocketAddr, name: &str) -> EchoUpstream {
        Self::start_with(StdListener::bind(addr).expect("bind echo upstream"), name)
    }

    /// Starts an echo server on a listener already bound (e.g. in a pod's network
    /// namespace, see `pods`).
    pub fn start_with(std_listener: StdListener, name: &str) -> EchoUpstream {
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let name_owned = name.to_string();
        let counter = requests.clone();
        let accepted_counter = connections.clone();
        let fail_counts: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
        let last: Arc<std::sync::Mutex<Option<serde_json::Value>>> = Arc::default();
        let (fails, seen) = (fail_counts.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            accepted_counter.fetch_add(1, Ordering::SeqCst);
                            let name = name_owned.clone();
                            let counter = counter.clone();
                            let fail_counts = fails.clone();
                            let last = seen.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    echo(
                                        req,
                                        name.clone(),
                                        counter.clone(),
                                        fail_counts.clone(),
                                        last.clone(),
                                    )
                                });
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection_with_upgrades(io, svc)
                                .await;
                            });
                        }
                    }
                }
            });
        });
        EchoUpstream {
            name: name.to_string(),
            addr,
            requests,
            connections,
            fail_counts,
            last,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered (or reset) so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Forgets the requests counted per `x-echo-fail-key`: each key fails its first N
    /// requests again.
    pub fn forget_failures(&self) {
        self.fail_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The JSON description of the last request answered since [`Self::clear_last`].
    pub fn last_request(&self) -> Option<serde_json::Value> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear_last(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct ResetConnection;
impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested")
    }
}
impl std::error::Error for ResetConnection {}

async fn echo(
    req: Request<Incoming>,
    name: String,
    counter: Arc<AtomicUsize>,
    fail_counts: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    last: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
) -> Result<Response<EchoBody>, ResetConnection> {
    counter.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(ms) = header("x-echo-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body_delay = header("x-echo-body-delay-ms").and_then(|v| v.parse::<u64>().ok());
    if header("x-echo-reset").is_some() {
        return Err(ResetConnection);
    }
    let mut status = header("x-echo-status")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    if let (Some(n), Some(key)) = (
        header("x-echo-fail-first").and_then(|v| v.parse::<usize>().ok()),
        header("x-echo-fail-key"),
    ) {
        let mut counts = fail_counts.lock().unwrap();
        let seen = counts.entry(key).or_insert(0);
        *seen += 1;
        if *seen <= n {
            status = 503;
        }
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let extra: Vec<String> = req
        .headers()
        .get_all("x-echo-header")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let scheme = req.uri().scheme_str().map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "upstream": name,
        "method": method,
        "path": path,
        "scheme": scheme,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    *last.lock().unwrap() = Some(json.clone());
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name.as_str());
    for e in extra {
        if let Some((k, v)) = e.split_once('=') {
            resp = resp.header(k.trim(), v.trim());
        }
    }
    let json = Bytes::from(json.to_string());
    let body = match body_delay {
        None => Full::new(json).boxed(),
        Some(ms) => {
            let frames = futures::stream::unfold(0u8, move |step| {
                let json = json.clone();
                async move {
                    match step {
                        0 => Some((Ok(hyper::body::Frame::data(json)), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            Some((
                                Ok(hyper::body::Frame::data(Bytes::from_static(b".tail"))),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            http_body_util::StreamBody::new(frames).boxed()
        }
    };
    Ok(resp.body(body).expect("response"))
}

/// The echo upstream's response body: whole, or streamed with a pause.
type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

// ---------------------------------------------------------------------------------------
// A recording upstream (for mirrors: the proxy drops the mirror's response)
// ---------------------------------------------------------------------------------------

/// What a recording upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 that answers 200 and remembers every request.
pub struct RecordingUpstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingUpstream {
    pub fn start() -> RecordingUpstream {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind recording upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let store = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let store = store.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                    let store = store.clone();
                                    async move {
                                        let headers = req
                                            .headers()
                                            .iter()
                                            .map(|(k, v)| {
                                                (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                                            })
                                            .collect();
                                        let method = req.method().to_string();
                                        let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                                        let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                                        store.lock().expect("lock").push(Recorded { method, path, headers, body });
                                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"recorded"))))
                                    }
                                });
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(io, svc)
                                .await;
                            });
                        }
                    }
                }
            });
        });
        RecordingUpstream {
            port,
            seen,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    /// Removes and returns the requests seen so far.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }

    /// Waits (bounded) until at least `n` requests were seen.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "recording upstream saw {} request(s), expected {n}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// An upstream that holds its answers
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream on 127.0.0.1 that reads each request head, counts it, and answers
/// `200 held` only once [`HeldUpstream::release`] was called: a request through the
/// gateway stays in flight for exactly as long as the test needs.
pub struct HeldUpstream {
    pub port: u16,
    arrived: Arc<AtomicUsize>,
    released: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl HeldUpstream {
    pub fn start() -> HeldUpstream {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind held upstream");
        let port = listener.local_addr().expect("addr").port();
        let arrived = Arc::new(AtomicUsize::new(0));
        let released: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let (count, gate) = (arrived.clone(), released.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (count, gate) = (count.clone(), gate.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    drop(open);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld",
                    );
                });
            }
        });
        HeldUpstream {
            port,
            arrived,
            released,
        }
    }

    /// Requests whose head has arrived so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Lets every held request (and every later one) be answered.
    pub fn release(&self) {
        let (lock, cv) = &*self.released;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        // Answers whatever still waits; the accepting thread ends with the process.
        self.release();
    }
}

// ---------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------

/// A real Envoy process. Killed when dropped; its log is printed if the test panicked.
pub struct Envoy {
    child: Option<Child>,
    pub admin_port: u16,
    pub log_path: PathBuf,
    pub base_id: u32,
}

impl Envoy {
    /// Starts `envoy -c CONFIG` with the admin API on `admin_port` (which the config must
    /// also use: Envoy takes admin from the bootstrap) and waits until it is LIVE and every
    /// listener of the config is bound (`/ready` answers 200).
    pub fn start(config: &Path, admin_port: u16, workdir: &Path) -> Envoy {
        let mut envoy = Envoy::spawn(config, admin_port, workdir);
        envoy.wait_ready(Duration::from_secs(20));
        envoy
    }

    /// Starts `envoy -c CONFIG` without waiting for it to be ready (for an Envoy that is
    /// not expected to get its configuration).
    pub fn spawn(config: &Path, admin_port: u16, workdir: &Path) -> Envoy {
        let log_path = workdir.join("envoy.log");
        let log = std::fs::File::create(&log_path).expect("envoy log file");
        // A distinct base id per process so that concurrent tests do not share
        // Envoy's shared-memory region.
        let base_id = admin_port as u32;
        let child = Command::new(peer_bin("envoy"))
            .arg("-c")
            .arg(config)
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", "1", "--log-level", "info"])
            .args(["--disable-hot-restart"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .current_dir(workdir)
            .spawn()
            .expect("spawning envoy");
        Envoy {
            child: Some(child),
            admin_port,
            log_path,
            base_id,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("envoy exited with {status}:\n{}", self.log());
            }
            if let Ok((200, _)) = self.admin_get("/ready") {
                return;
            }
            if Instant::now() > deadline {
                panic!("envoy not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin API: (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        blocking_http_get(("127.0.0.1", self.admin_port), path)
    }

    /// POST on the admin API.
    pub fn admin_post(&self, path: &str) -> std::io::Result<(u16, String)> {
        blocking_http(("127.0.0.1", self.admin_port), "POST", path)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A stat's value from `/stats?filter=` (None if absent).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Fails the test if Envoy rejected any configuration: xDS `update_rejected` counters,
    /// or rejection messages in its log.
    pub fn assert_no_rejections(&self) {
        let (_, stats) = self.admin_get("/stats").expect("admin /stats");
        let rejected: Vec<&str> = stats
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
            .collect();
        let log = self.log();
        let bad_log: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("rejected") || l.contains("nack") || l.contains("[critical]")
            })
            .collect();
        assert!(
            rejected.is_empty() && bad_log.is_empty(),
            "envoy rejected config:\n{}\n{}\n--- full log ---\n{log}",
            rejected.join("\n"),
            bad_log.join("\n")
        );
    }

    /// Waits until `check` holds for the admin stats text (bounded).
    pub fn wait_for_stat(&self, name: &str, pred: impl Fn(u64) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stat(name).is_some_and(&pred) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "stat {name} = {:?} did not reach the expected value:\n{}",
                    self.stat(name),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- envoy log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Minimal blocking HTTP for admin APIs (no client library needed in sync code)
// ---------------------------------------------------------------------------------------

/// GET `path` on `addr` over a fresh HTTP/1.1 connection: (status, body).
pub fn blocking_http_get(
    addr: impl std::net::ToSocketAddrs,
    path: &str,
) -> std::io::Result<(u16, String)> {
    blocking_http(addr, "GET", path)
}

/// One request with `method` on a fresh connection; the whole response is read.
pub fn blocking_http(
    addr: impl std::net::ToSocketAddrs,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(head, b)| {
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(b)
            } else {
                b.to_string()
            }
        })
        .unwrap_or_default();
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A reqwest client that never follows redirects, resolves every name to 127.0.0.1 via
/// the URL (callers put the port in the URL and the Host in a header or `resolve`).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

/// Waits until a TCP port accepts connections (bounded).
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {port} did not open within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
/// Asserts that `hits` successes in `n` independent trials fit probability `p`: within
/// five binomial standard deviations (`sqrt(n p (1 - p))`). Each of `unlike` (the share a
/// broken feature would give, e.g. 0.5 for a split that ignores its weights) must fall
/// outside that band, or the sample is too small to tell the two apart and the test
/// itself is wrong.
#[track_caller]
pub fn assert_binomial(what: &str, hits: usize, n: usize, p: f64, unlike: &[f64]) {
    let (lo, hi) = binomial_band(n, p);
    for &q in unlike {
        let expected = q * n as f64;
        assert!(
            expected < lo || expected > hi,
            "{what}: {n} trials cannot tell p = {p} from {q} (band {lo:.1}..={hi:.1})"
        );
    }
    let h = hits as f64;
    assert!(
        (lo..=hi).contains(&h),
        "{what}: {hits}/{n}, expected {:.1} ± {:.1} (p = {p}, five standard deviations)",
        p * n as f64,
        (hi - lo) / 2.0
    );
}

/// The range of successes within five standard deviations of `n p`.
pub fn binomial_band(n: usize, p: f64) -> (f64, f64) {
    let n = n as f64;
    let sd = (n * p * (1.0 - p)).sqrt();
    (n * p - 5.0 * sd, n * p + 5.0 * sd)
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub mod certs;
pub mod dns;
pub mod gateway;
pub mod mesh_identity;
pub mod pods;
pub mod scripted_ads;
pub mod xds_mesh;
