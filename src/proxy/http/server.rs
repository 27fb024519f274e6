//! HTTP on a downstream connection (plain or decrypted TLS) served by hyper: HTTP/1.1
//! with keep-alive, HTTP/2 (by ALPN, or by prior knowledge in clear text), upgrades, with
//! limits (header size and read time, idle timeout, connection age) and draining.
use crate::proxy::http::hcm::HttpConnectionManager;
use crate::proxy::http::head_scan;
use crate::proxy::http::router::{ConnCtx, handle};
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
    /// What [`head_scan`] saw in the raw bytes of the current HTTP/1 request head.
    pub head_flags: AtomicU8,
}

impl ConnState {
    pub fn touch(&self) {
        self.last_activity_ms
            .store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn close_after_response(&self) {
        self.close.store(true, Ordering::Relaxed);
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
    let remote = cx.peer.remote;
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
        .max_buf_size(((hcm.max_request_headers_kb as usize) * 1024).max(8192))
        .max_headers(hcm.max_headers_count.max(1) + 1);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(hcm.http2_max_concurrent_streams.unwrap_or(2147483647))
        .max_header_list_size((hcm.max_request_headers_kb * 1024).max(8192));
    let io = TrackedIo {
        inner: io,
        state: state.clone(),
    };
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
    loop {
        let idle_check = tokio::time::sleep(tick);
        let age = async {
            match max_age {
                Some(at) if !shutting_down => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = drain.changed(), if !shutting_down => {
                if changed.is_err() || *drain.borrow() {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
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
                if state.close.load(Ordering::Relaxed) && !shutting_down {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            _ = age => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// The accepted socket, noting when a new request head starts to arrive (one atomic
/// check per read; a clock read only when a head starts).
struct TrackedIo<IO> {
    inner: IO,
    state: Arc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for TrackedIo<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.state.active.load(Ordering::Relaxed) == 0 {
            // Bytes of a request head (no request in flight).
            let starts = self.state.head_started_ms.load(Ordering::Relaxed) == 0;
            let flags = head_scan::scan(&buf.filled()[before..], starts);
            if starts {
                let now = EPOCH.elapsed().as_millis() as u64 + 1;
                self.state.head_started_ms.store(now, Ordering::Relaxed);
                self.state.head_flags.store(flags, Ordering::Relaxed);
            } else if flags != 0 {
                self.state.head_flags.fetch_or(flags, Ordering::Relaxed);
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
