//! HTTP on a downstream connection (plain or decrypted TLS) served by hyper: HTTP/1.1
//! with keep-alive, HTTP/2 (by ALPN, or by prior knowledge in clear text), upgrades, with
//! limits (header size and read time, idle timeout, connection age) and draining.
use crate::proxy::access_log::RequestLog;
use crate::proxy::http::hcm::HttpConnectionManager;
use crate::proxy::http::hcm::ServerHeader;
use crate::proxy::http::head_scan::{HeadScanner, Phase, TooLarge};
use crate::proxy::http::local_reply::LocalReply;
use crate::proxy::http::router::{ConnCtx, handle};
use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Live state of one downstream connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests in flight.
    pub active: AtomicU32,
    /// Milliseconds since [`EPOCH`] of the last request end.
    pub last_activity_ms: AtomicU64,
    /// Close the connection after the current response (bad framing).
    pub close: AtomicBool,
    /// Milliseconds since [`EPOCH`] (+1) when bytes of a new request head started to
    /// arrive with no request in flight; 0 when not waiting for one. Bounds slow clients
    /// without cutting idle keep-alive connections.
    pub head_started_ms: AtomicU64,
    /// What the head scan ([`HeadScanner`]) saw in the raw bytes of the current HTTP/1 request head.
    pub head_flags: AtomicU8,
    /// Milliseconds since [`EPOCH`] (+1) when a head was refused (431): the connection
    /// lingers briefly so the client reads the answer, then closes.
    pub refused_ms: AtomicU64,
    /// The connection speaks HTTP/2 (ALPN, or the prior-knowledge preface was seen).
    pub h2: AtomicBool,
    /// Requests received on the connection (for `max_requests_per_connection`).
    pub requests: AtomicU32,
    /// HTTP/2: send GOAWAY now (the request limit was reached, or the overload manager
    /// disabled keep-alive); streams in flight finish.
    pub goaway: AtomicBool,
    /// Wakes the connection's serve loop to act on `goaway` at once.
    pub wake: tokio::sync::Notify,
}

impl ConnState {
    pub fn touch(&self) {
        self.last_activity_ms
            .store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn close_after_response(&self) {
        self.close.store(true, Ordering::Relaxed);
    }

    /// HTTP/2: starts draining the connection with GOAWAY (no new streams).
    pub fn send_goaway(&self) {
        if !self.goaway.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// A request reached the router: its head is complete.
    pub fn head_complete(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) != 0 {
            self.head_started_ms.store(0, Ordering::Relaxed);
        }
    }

    fn head_waiting_for(&self) -> Option<Duration> {
        let started = self.head_started_ms.load(Ordering::Relaxed);
        if started == 0 || self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = EPOCH.elapsed().as_millis() as u64 + 1;
        Some(Duration::from_millis(now.saturating_sub(started)))
    }

    fn idle_for(&self) -> Duration {
        let now = EPOCH.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }
}

/// How long a connection whose head was refused keeps reading (and discarding) what the
/// client still sends, so that closing does not reset the answer away (Envoy's
/// `delayed_close_timeout` default).
const REFUSED_LINGER: Duration = Duration::from_secs(1);

/// Default bound on reading a request's headers (Envoy has none by default; meshgate
/// bounds slow clients unless the connection manager sets its own).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Which HTTP codec a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, or HTTP/2 when the client starts with its preface.
    Auto,
    /// ALPN `http/1.1`.
    Http1,
    /// ALPN `h2`.
    Http2,
}

/// Serves HTTP on a connection until it closes, drains or times out.
pub async fn serve_http<IO>(
    io: IO,
    cx: Arc<ConnCtx>,
    hcm: Arc<HttpConnectionManager>,
    protocol: Protocol,
    mut drain: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = cx.state.clone();
    let shared = cx.shared.clone();
    let stats = &shared.stats;
    let remote = cx.peer.remote;
    let scanner = if protocol == Protocol::Http2 {
        state.h2.store(true, Ordering::Relaxed);
        HeadScanner::off()
    } else {
        HeadScanner::new(hcm.max_request_headers_kb, hcm.max_headers_count)
    };
    let server = match hcm.server_header {
        ServerHeader::PassThrough => None,
        _ => Some(hcm.server_name.clone()),
    };
    let io = TrackedIo {
        inner: io,
        state: state.clone(),
        scanner,
        refusal: None,
        cx: cx.clone(),
        server,
    };
    let svc = hyper::service::service_fn(move |req| handle(req, cx.clone()));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = match protocol {
        Protocol::Auto => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Header reads are bounded below (TrackedIo), not by hyper's timer, which would
        // also close keep-alive connections idle between requests.
        .header_read_timeout(None)
        // Head limits are enforced by the head scan (Envoy's answer, logged and counted);
        // hyper's own, which would answer a bare 431, stay out of its way.
        .max_buf_size(((hcm.max_request_headers_kb as usize) * 2048).max(8192) + 16384)
        .max_headers(hcm.max_headers_count.max(1) + 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(hcm.http2_max_concurrent_streams.unwrap_or(2147483647))
        .max_header_list_size((hcm.max_request_headers_kb * 1024).max(8192));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = hcm.idle_timeout;
    let head_timeout = hcm
        .request_headers_timeout
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
    let tick = idle
        .unwrap_or(Duration::from_secs(1))
        .min(head_timeout)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    let max_age = hcm
        .max_connection_duration
        .map(|d| tokio::time::Instant::now() + d);
    let mut shutting_down = false;
    // Set when the connection starts draining: HTTP/1 keeps serving (responses carry
    // `connection: close`) until then, and idle connections close at that point.
    let mut drain_at: Option<tokio::time::Instant> = None;
    loop {
        let idle_check = tokio::time::sleep(tick);
        let drain_deadline = async {
            match drain_at {
                Some(at) if !shutting_down => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let age = async {
            match max_age {
                Some(at) if !shutting_down => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = drain.changed(), if !shutting_down && drain_at.is_none() => {
                if changed.is_err() || *drain.borrow() {
                    stats.downstream_cx_drain_close.fetch_add(1, Ordering::Relaxed);
                    drain_at = Some(tokio::time::Instant::now() + hcm.drain_timeout);
                    if state.h2.load(Ordering::Relaxed) {
                        // GOAWAY now; streams in flight finish, then the connection closes.
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
            _ = drain_deadline => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = idle_check => {
                if let Some(t) = idle
                    && state.active.load(Ordering::Relaxed) == 0
                    && state.idle_for() >= t
                    && !shutting_down
                {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                if !shutting_down && state.head_waiting_for().is_some_and(|w| w >= head_timeout) {
                    // A client trickling its request head: close the connection.
                    tracing::debug!(%remote, "request headers not received in time; closing");
                    break;
                }
                let refused = state.refused_ms.load(Ordering::Relaxed);
                if refused != 0
                    && EPOCH.elapsed().as_millis() as u64 + 1 >= refused + REFUSED_LINGER.as_millis() as u64
                {
                    break;
                }
                if state.close.load(Ordering::Relaxed) && !shutting_down {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            _ = age => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = state.wake.notified(), if !shutting_down => {
                if state.goaway.load(Ordering::Relaxed) {
                    stats.downstream_cx_drain_close.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// The accepted socket, noting when a new request head starts to arrive (one atomic
/// check per read; a clock read only when a head starts), scanning HTTP/1 heads, and
/// answering a head over the connection manager's limits itself.
struct TrackedIo<IO> {
    inner: IO,
    state: Arc<ConnState>,
    scanner: HeadScanner,
    /// A refused head's answer being written, then the connection drained.
    refusal: Option<Refusal>,
    cx: Arc<ConnCtx>,
    /// The `server` header of local answers (None: passed through).
    server: Option<HeaderValue>,
}

struct Refusal {
    answer: Vec<u8>,
    written: usize,
    shut: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TrackedIo<IO> {
    /// Answers a refused head as Envoy's codec does (431, its body, `connection: close`),
    /// logs and counts it; hyper only ever sees the end of the stream.
    fn refuse(&mut self, why: TooLarge) {
        let reply = match why {
            TooLarge::Bytes => LocalReply::HEAD_TOO_LARGE,
            TooLarge::Count => LocalReply::TOO_MANY_HEADERS,
        };
        let shared = &self.cx.shared;
        shared
            .stats
            .downstream_cx_protocol_error
            .fetch_add(1, Ordering::Relaxed);
        let mut log =
            RequestLog::for_refused_head(&self.cx, reply.status.as_u16(), reply.flag, reply.reason);
        log.bytes_sent = reply.body.len() as u64;
        shared.record(&log, self.cx.worker);
        tracing::debug!(remote = %self.cx.peer.remote, reason = reply.reason, "request head refused");
        self.state
            .refused_ms
            .store(EPOCH.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        self.refusal = Some(Refusal {
            answer: reply.http1_close_bytes(self.server.as_ref()),
            written: 0,
            shut: false,
        });
    }

    /// Writes the refusal, shuts the write side, then discards what the client still
    /// sends until it closes (the serve loop bounds this by [`REFUSED_LINGER`]).
    fn poll_refusal(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let Some(r) = self.refusal.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if r.written < r.answer.len() {
                match std::pin::Pin::new(&mut self.inner).poll_write(cx, &r.answer[r.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => r.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if !r.shut {
                match std::pin::Pin::new(&mut self.inner).poll_shutdown(cx) {
                    Poll::Ready(_) => r.shut = true,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let mut scratch = [0u8; 4096];
            let mut discard = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if discard.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TrackedIo<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.refusal.is_some() {
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.scanner.phase != Phase::Off
            && this.state.active.load(Ordering::Relaxed) == 0
        {
            // Bytes of a request head (no request in flight). Once the router has taken
            // the previous head (head_started_ms back to 0), new bytes start the next.
            let started = this.state.head_started_ms.load(Ordering::Relaxed);
            if started == 0 {
                this.scanner.expect_head();
            }
            let fresh = this.scanner.phase == Phase::Fresh;
            let seen = this.scanner.feed(&buf.filled()[before..]);
            // A head started, or bytes that do not start one (the rest of a pipelined
            // head, or body): either way nothing more is judged until the router takes
            // a request.
            if this.scanner.phase == Phase::Off {
                this.state.h2.store(true, Ordering::Relaxed);
            }
            if fresh && matches!(this.scanner.phase, Phase::InHead | Phase::Done) {
                let now = EPOCH.elapsed().as_millis() as u64 + 1;
                this.state.head_started_ms.store(now, Ordering::Relaxed);
                this.state.head_flags.store(seen.flags, Ordering::Relaxed);
            } else if seen.flags != 0 {
                this.state
                    .head_flags
                    .fetch_or(seen.flags, Ordering::Relaxed);
            }
            if let Some(why) = seen.too_large {
                buf.set_filled(before);
                this.refuse(why);
                return this.poll_refusal(cx);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TrackedIo<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
