//! The HTTP connection manager's limits and timeouts, side by side with real Envoy 1.40
//! fed the same resources: request heads over `max_request_headers_kb` or
//! `max_headers_count` (Envoy's 431, logged and counted, connection closed),
//! `stream_idle_timeout` and the route's `idle_timeout` (408 / 504 `stream timeout`
//! before the response starts, a reset after), and draining with `drain_timeout`.
mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::gateway::*;
use support::*;

/// Envoy's access log line for these tests: what Istio's JSON log carries as
/// `response_code`, `response_flags` and `response_code_details`.
const ENVOY_LOG_FORMAT: &str =
    "ACCESS %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(:METHOD)%\n";

fn envoy_access_log() -> Value {
    json!([{"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"text_format": ENVOY_LOG_FORMAT}}}])
}

fn write_json(path: &std::path::Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A whole HTTP/1.1 exchange on its own connection: the status line, lower-cased
/// headers, the body (by content-length or chunked framing, else until the server
/// closes), and whether the server closed the connection while answering. Reads are
/// bounded only to guard against a hang.
struct Exchange {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    closed: bool,
    stream: TcpStream,
}

impl Exchange {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn status(&self) -> u16 {
        self.status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the server closes the connection after this answer: end of stream or a
    /// reset, not the hang guard's timeout.
    fn closes(&mut self) -> bool {
        if self.closed {
            return true;
        }
        let mut tmp = [0u8; 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Whether the connection still serves: a second request on it gets an answer.
    fn stays_open(&mut self) -> bool {
        !self.closed
            && self
                .stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
                .is_ok()
            && read_exchange(self.stream.try_clone().unwrap()).status() == 200
    }
}

fn exchange(port: u16, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    // A server may answer (and close) before the whole request is written.
    let _ = s.write_all(request);
    read_exchange(s)
}

/// Only against a hang: no answer a test waits for takes this long.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn read_exchange(mut s: TcpStream) -> Exchange {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let mut closed = false;
    let head_end = |buf: &[u8]| buf.windows(4).position(|w| w == b"\r\n\r\n");
    let complete = |buf: &[u8]| {
        let Some(end) = head_end(buf) else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body = &buf[end + 4..];
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        match length {
            Some(n) => body.len() >= n,
            None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
            None => false,
        }
    };
    while !complete(&buf) {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let split = head_end(&buf).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Exchange {
        status_line,
        headers,
        body: buf.get(split + 4..).unwrap_or_default().to_vec(),
        closed,
        stream: s,
    }
}

/// A GET whose head has `count` header lines (Host and Connection included) and, if
/// `value_len` > 0, one `x-big` header of that many bytes among them.
fn head_with(count: usize, value_len: usize) -> Vec<u8> {
    let mut r = b"GET /limits HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n".to_vec();
    let mut n = 2;
    if value_len > 0 {
        r.extend_from_slice(format!("x-big: {}\r\n", "x".repeat(value_len)).as_bytes());
        n += 1;
    }
    while n < count {
        r.extend_from_slice(format!("x-h{n}: v\r\n").as_bytes());
        n += 1;
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn limits_resources(default_port: u16, small_port: u16, upstream: u16) -> Value {
    let hcm = |extra: Value| {
        let mut h = json!({
            "server_name": "istio-envoy",
            "stream_idle_timeout": "0s",
            "access_log": envoy_access_log(),
        });
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    json!({
        "listeners": [
            hcm_listener("default", default_port, "r", hcm(json!({})), vec![]),
            hcm_listener("small", small_port, "r", hcm(json!({
                "max_request_headers_kb": 2,
                "common_http_protocol_options": {"max_headers_count": 5},
            })), vec![]),
        ],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "a", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}],
        "clusters": [static_cluster("a", &[upstream], json!({}))],
    })
}

/// meshgate's JSON access log lines so far (bounded wait for `n` of them).
fn meshgate_log(gw: &GatewayProcess, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let lines: Vec<Value> = gw
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Envoy's `ACCESS ...` lines so far (bounded wait for `n`; Envoy flushes its stdout
/// log about once a second).
fn envoy_log(envoy: &Envoy, n: usize) -> Vec<String> {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let lines: Vec<String> = envoy
            .log()
            .lines()
            .filter_map(|l| l.strip_prefix("ACCESS ").map(str::to_string))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// meshgate's log line as Envoy's `CODE FLAGS DETAILS METHOD`.
fn as_envoy_line(v: &Value) -> String {
    format!(
        "{} {} {} {}",
        v["response_code"],
        v["response_flags"].as_str().unwrap_or("?"),
        v["response_code_details"].as_str().unwrap_or("-"),
        v["method"].as_str().unwrap_or("-"),
    )
}

#[test]
fn oversized_request_heads_get_envoys_431() {
    let up = EchoUpstream::start("a");
    let dir = TempDir::new();
    let (e_default, e_small) = (free_port(), free_port());
    let envoy = envoy_with(&limits_resources(e_default, e_small, up.port()), &dir);
    envoy.assert_no_rejections();
    let (m_default, m_small) = (free_port(), free_port());
    let file = dir.path().join("meshgate.json");
    write_json(&file, &limits_resources(m_default, m_small, up.port()));
    let gw = GatewayProcess::start(&file, dir.path(), &["--access-log", "json"]);

    // (name, which listener, request, expected status, expected access log line)
    let cases: Vec<(&str, bool, Vec<u8>, u16, &str)> = vec![
        (
            "61 KiB header",
            false,
            head_with(3, 61 * 1024),
            431,
            "431 DPE http1.headers_too_large -",
        ),
        (
            "101 headers",
            false,
            head_with(101, 0),
            431,
            "431 DPE http1.too_many_headers -",
        ),
        // 100 headers pass the proxy; the echo upstream (hyper, at most 100 headers)
        // then refuses the request with the headers the proxy added.
        (
            "100 headers pass",
            false,
            head_with(100, 0),
            431,
            "431 - via_upstream GET",
        ),
        (
            "59 KiB header passes",
            false,
            head_with(3, 59 * 1024),
            200,
            "200 - via_upstream GET",
        ),
        (
            "3 KiB over a 2 KiB limit",
            true,
            head_with(3, 3 * 1024),
            431,
            "431 DPE http1.headers_too_large -",
        ),
        (
            "6 headers over a limit of 5",
            true,
            head_with(6, 0),
            431,
            "431 DPE http1.too_many_headers -",
        ),
        (
            "5 headers pass",
            true,
            head_with(5, 0),
            200,
            "200 - via_upstream GET",
        ),
    ];
    let mut mismatches = Vec::new();
    for (name, small, request, want, _) in &cases {
        let (ep, mp) = if *small {
            (e_small, m_small)
        } else {
            (e_default, m_default)
        };
        let mut e = exchange(ep, request);
        let mut m = exchange(mp, request);
        assert_eq!(e.status(), *want, "[{name}] envoy: {}", e.status_line);
        let mut diff = |what: &str, ev: Option<&str>, mv: Option<&str>| {
            if ev != mv {
                mismatches.push(format!("[{name}] {what}: envoy={ev:?} meshgate={mv:?}"));
            }
        };
        diff("status line", Some(&e.status_line), Some(&m.status_line));
        for h in ["content-type", "server", "connection"] {
            diff(h, e.header(h), m.header(h));
        }
        if *want == 431 {
            diff(
                "content-length",
                e.header("content-length"),
                m.header("content-length"),
            );
            diff(
                "body",
                Some(&String::from_utf8_lossy(&e.body)),
                Some(&String::from_utf8_lossy(&m.body)),
            );
            assert!(
                e.closes() && m.closes(),
                "[{name}] both close the connection"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // Both log every request with the same code, flag and details; the refused heads
    // have no method (Envoy: `-`, meshgate's JSON: null).
    let mut want: Vec<&str> = cases.iter().map(|c| c.4).collect();
    want.sort();
    let mut envoy_lines = envoy_log(&envoy, cases.len());
    envoy_lines.sort();
    assert_eq!(envoy_lines, want, "envoy's access log");
    let mut mesh_lines: Vec<String> = meshgate_log(&gw, cases.len())
        .iter()
        .map(as_envoy_line)
        .collect();
    mesh_lines.sort();
    assert_eq!(mesh_lines, want, "meshgate's access log");

    // Counted alike: 4xx and codec protocol errors.
    let envoy_count = |stat: &str| {
        ["default", "small"]
            .iter()
            .map(|p| envoy.stat(&format!("http.{p}.{stat}")).unwrap_or(0))
            .sum::<u64>()
    };
    let mesh_stat = |name: &str| {
        let (_, body) = gw.admin("/stats");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    for (stat, n) in [
        ("downstream_rq_4xx", 5),
        ("downstream_cx_protocol_error", 4),
    ] {
        assert_eq!(
            (envoy_count(stat), mesh_stat(&format!("http.{stat}"))),
            (n, n),
            "{stat}: (envoy, meshgate)"
        );
    }
    // Logs collected from a pipe carry no colour codes.
    assert!(
        !gw.stderr().contains('\u{1b}'),
        "ANSI codes in:\n{}",
        gw.stderr()
    );
}

fn idle_resources(port: u16, upstream: u16) -> Value {
    let route = |prefix: &str, extra: Value| {
        let mut r = json!({"cluster": "a", "timeout": "0s"});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        json!({"match": {"prefix": prefix}, "route": r})
    };
    json!({
        "listeners": [hcm_listener("idle", port, "r", json!({
            "stream_idle_timeout": "1s",
            "access_log": envoy_access_log(),
        }), vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
            route("/short", json!({"idle_timeout": "0.3s"})),
            route("/off", json!({"idle_timeout": "0s"})),
            route("/", json!({})),
        ]}]}],
        "clusters": [static_cluster("a", &[upstream], json!({}))],
    })
}

#[test]
fn stream_idle_timeout_like_envoy() {
    let up = EchoUpstream::start("a");
    let dir = TempDir::new();
    let ep = free_port();
    let envoy = envoy_with(&idle_resources(ep, up.port()), &dir);
    envoy.assert_no_rejections();
    let mp = free_port();
    let file = dir.path().join("meshgate.json");
    write_json(&file, &idle_resources(mp, up.port()));
    let gw = GatewayProcess::start(&file, dir.path(), &["--access-log", "json"]);

    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a.example.com\r\n{extra}\r\n").into_bytes()
    };
    // Each timeout is proven by the answer: the upstream (or the client) would have
    // answered otherwise, and only then.
    struct Case {
        name: &'static str,
        request: Vec<u8>,
        status: u16,
        body: Option<&'static str>,
        closed: bool,
        log: &'static str,
    }
    let cases = vec![
        Case {
            // The upstream would answer 200 after 2.5 s.
            name: "upstream silent before headers: 504",
            request: get("/", "x-echo-delay-ms: 2500\r\n"),
            status: 504,
            body: Some("stream timeout"),
            closed: false,
            log: "504 SI stream_idle_timeout GET",
        },
        Case {
            // The route's 0.3 s, not the listener's 1 s: the upstream would answer 200
            // after 0.7 s.
            name: "route idle_timeout overrides",
            request: get("/short", "x-echo-delay-ms: 700\r\n"),
            status: 504,
            body: Some("stream timeout"),
            closed: false,
            log: "504 SI stream_idle_timeout GET",
        },
        Case {
            name: "route idle_timeout 0s disables",
            request: get("/off", "x-echo-delay-ms: 1500\r\nConnection: close\r\n"),
            status: 200,
            body: None,
            closed: true,
            log: "200 - via_upstream GET",
        },
        Case {
            name: "client stops sending its body: 408 and close",
            request: b"POST / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 10\r\n\r\nabc"
                .to_vec(),
            status: 408,
            body: Some("stream timeout"),
            closed: true,
            log: "408 SI stream_idle_timeout POST",
        },
        Case {
            // The rest of the body would come after 2.5 s, completing the response.
            name: "upstream stalls mid-body: reset",
            request: get("/", "x-echo-body-delay-ms: 2500\r\n"),
            status: 200,
            body: None,
            closed: true,
            log: "200 SI stream_idle_timeout GET",
        },
    ];
    for (who, port) in [("envoy", ep), ("meshgate", mp)] {
        for c in &cases {
            let mut x = exchange(port, &c.request);
            assert_eq!(
                x.status(),
                c.status,
                "[{who}] {}: {}",
                c.name,
                x.status_line
            );
            if let Some(b) = c.body {
                assert_eq!(String::from_utf8_lossy(&x.body), b, "[{who}] {}", c.name);
                assert_eq!(
                    x.header("content-type"),
                    Some("text/plain"),
                    "[{who}] {}",
                    c.name
                );
            }
            assert_eq!(
                x.header("connection") == Some("close"),
                c.closed && c.status == 408 || c.name.contains("disables"),
                "[{who}] {}: connection header",
                c.name
            );
            if c.name.contains("mid-body") {
                // The streamed body never ended: its final chunk is missing.
                assert!(!x.body.ends_with(b"0\r\n\r\n"), "[{who}] body completed");
            }
            if c.closed {
                assert!(x.closes(), "[{who}] {}: connection closed", c.name);
            } else {
                assert!(x.stays_open(), "[{who}] {}: connection kept", c.name);
            }
        }
    }
    // Each case's line, and the second request on each connection kept open.
    let mut want: Vec<&str> = cases.iter().map(|c| c.log).collect();
    want.extend(
        cases
            .iter()
            .filter(|c| !c.closed)
            .map(|_| "200 - via_upstream GET"),
    );
    want.sort();
    let mut envoy_lines = envoy_log(&envoy, want.len());
    envoy_lines.sort();
    assert_eq!(envoy_lines, want, "envoy's access log");
    let mut mesh_lines: Vec<String> = meshgate_log(&gw, want.len())
        .iter()
        .map(as_envoy_line)
        .collect();
    mesh_lines.sort();
    assert_eq!(mesh_lines, want, "meshgate's access log");
    let (_, stats) = gw.admin("/stats");
    assert!(
        stats.contains("http.downstream_rq_idle_timeout: 4"),
        "meshgate idle timeouts counted:\n{stats}"
    );
    assert_eq!(envoy.stat("http.idle.downstream_rq_idle_timeout"), Some(4));
}

fn drain_resources(port: u16, upstream: u16) -> Value {
    json!({
        "listeners": [hcm_listener("l", port, "r", json!({
            "drain_timeout": "1s",
            "stream_idle_timeout": "0s",
        }), vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "a", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "0s"}}]}]}],
        "clusters": [static_cluster("a", &[upstream], json!({}))],
    })
}

/// Draining (`POST /drain_listeners`): an HTTP/2 client gets GOAWAY at once, its stream in
/// flight completes, no new stream is served on that connection, and the connection
/// closes; HTTP/1 responses carry `connection: close`, and an idle HTTP/1 connection is
/// kept for `drain_timeout` (a request racing the drain is still served) and then closed.
///
/// Envoy 1.40 was observed doing the same with `--drain-strategy immediate`, except that
/// it sends its GOAWAY with the next response rather than at once; under its default
/// gradual strategy the choice is random over `--drain-time-s`, so this is not compared
/// side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_and_finishes_streams() {
    let up = EchoUpstream::start("a");
    let port = free_port();
    let mesh = InProcess::start(&drain_resources(port, up.port()));
    let admin = mesh.gw().admin_addr().unwrap();

    // HTTP/2 (prior knowledge) with a slow request in flight.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let h2_task = tokio::spawn(h2_conn);
    let request = |delay: &str| {
        http::Request::get(format!("http://a.example.com:{port}/"))
            .header("x-echo-delay-ms", delay)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let before = up.requests();
    let in_flight = h2.send_request(request("1200"));

    // Two idle HTTP/1 keep-alive connections, and one with a request in flight.
    let keep_alive = || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(HANG_GUARD)).unwrap();
        assert_eq!(read_response(&mut c).status, 200);
        c
    };
    let (mut idle, mut racing) = (keep_alive(), keep_alive());
    let mut busy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nx-echo-delay-ms: 800\r\n\r\n")
        .unwrap();
    busy.set_read_timeout(Some(HANG_GUARD)).unwrap();
    // Both slow requests are at the upstream (after the two keep-alive ones).
    let deadline = Instant::now() + HANG_GUARD;
    while up.requests() < before + 4 {
        assert!(Instant::now() < deadline, "the slow requests never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_at = Instant::now();
    let (code, _) = tokio::task::spawn_blocking(move || {
        blocking_http(admin, "POST", "/drain_listeners").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 200);

    // HTTP/1 during drain_timeout: a request on an idle connection is still served, with
    // `connection: close`, and that connection then closes.
    let (raced, raced_closed) = tokio::task::spawn_blocking(move || {
        racing
            .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .unwrap();
        let raced = read_response(&mut racing);
        let mut buf = [0u8; 1];
        (raced, matches!(racing.read(&mut buf), Ok(0)))
    })
    .await
    .unwrap();
    // The idle one stays open for drain_timeout, then closes.
    let idle_checks = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1];
        let eof = idle.read(&mut buf);
        (eof.map(|n| n == 0), drained_at.elapsed())
    });

    // Once every connection drains (the HTTP/2 one has sent its GOAWAY then), a new
    // stream on it is refused without reaching the upstream.
    let deadline = Instant::now() + HANG_GUARD;
    while mesh.stat("http.downstream_cx_drain_close").unwrap_or(0) < 4 {
        assert!(Instant::now() < deadline, "the connections never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The counter moves when the gateway sends its GOAWAY; the client reads it on its own
    // task, so a stream it opens first races the frame and may still be served, as HTTP/2
    // allows. Once the client has read it, a new stream is refused.
    let deadline = Instant::now() + HANG_GUARD;
    let served = loop {
        let served = up.requests();
        if h2.send_request(request("0")).await.is_err() {
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "streams opened after GOAWAY were still served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The stream in flight completes.
    let resp = in_flight.await.expect("in-flight stream completes");
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(!body.is_empty());
    assert_eq!(
        up.requests(),
        served,
        "the refused stream reached the upstream"
    );
    tokio::time::timeout(HANG_GUARD, h2_task)
        .await
        .expect("the HTTP/2 connection closes after its streams")
        .unwrap()
        .ok();

    let busy_resp = tokio::task::spawn_blocking(move || read_response(&mut busy))
        .await
        .unwrap();
    assert_eq!(busy_resp.status, 200);
    assert_eq!(busy_resp.header("connection"), Some("close"));

    let (idle_eof, idle_closed_after) = idle_checks.await.unwrap();
    assert_eq!(
        raced.status, 200,
        "a request during drain_timeout is served"
    );
    assert_eq!(raced.header("connection"), Some("close"));
    assert!(raced_closed, "the connection closes after that response");
    assert!(
        matches!(idle_eof, Ok(true)),
        "idle connection: {idle_eof:?}"
    );
    // Kept for drain_timeout first (closing is proven by the end of stream above; the
    // read timeout only guards against a hang).
    assert!(
        idle_closed_after >= Duration::from_millis(1000),
        "idle connection closed after {idle_closed_after:?}, before drain_timeout (1 s)"
    );
}
