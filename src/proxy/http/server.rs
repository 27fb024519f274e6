//! Downstream connections: accepted per worker, matched to a filter chain, served by
//! hyper (HTTP/1.1 with keep-alive, HTTP/2 cleartext by prior knowledge, upgrades), with
//! limits (header size and read time, idle timeout, connection age) and draining.
use crate::proxy::http::request::Peer;
use crate::proxy::http::router::{ConnCtx, handle};
use crate::proxy::listener::Listener;
use crate::proxy::runtime::Shared;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
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
}

impl ConnState {
    pub fn touch(&self) {
        self.last_activity_ms
            .store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn close_after_response(&self) {
        self.close.store(true, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = EPOCH.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }
}

/// Default bound on reading a request's headers (Envoy has none by default; meshgate
/// bounds slow clients unless the connection manager sets its own).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one accepted connection until it closes, drains or times out.
pub async fn serve_connection(
    stream: TcpStream,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    worker: usize,
    mut drain: watch::Receiver<bool>,
) {
    let (Ok(remote), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let Some(chain) = listener.select_chain(local.port()) else {
        tracing::debug!(listener = %listener.name, %remote, "no filter chain matches; closing");
        return;
    };
    let hcm = chain.hcm.clone();
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::default());
    state.touch();
    shared
        .stats
        .downstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .downstream_cx_active
        .fetch_add(1, Ordering::Relaxed);
    let _active = CxActive(shared.clone());
    let cx = Arc::new(ConnCtx {
        peer: Peer::new(remote, local, false),
        worker,
        shared: shared.clone(),
        listener: listener.name.clone(),
        initial: hcm.clone(),
        state: state.clone(),
    });
    let svc = hyper::service::service_fn(move |req| handle(req, cx.clone()));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(
            hcm.request_headers_timeout
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        )
        .max_buf_size(((hcm.max_request_headers_kb as usize) * 1024).max(8192))
        .max_headers(hcm.max_headers_count.max(1) + 1);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(hcm.http2_max_concurrent_streams.unwrap_or(2147483647))
        .max_header_list_size((hcm.max_request_headers_kb * 1024).max(8192));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let idle = hcm.idle_timeout;
    let max_age = hcm
        .max_connection_duration
        .map(|d| tokio::time::Instant::now() + d);
    let mut shutting_down = false;
    loop {
        let idle_check = async {
            match idle {
                Some(t) => {
                    tokio::time::sleep(t.min(Duration::from_secs(1)).max(Duration::from_millis(50)))
                        .await
                }
                None => std::future::pending().await,
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

struct CxActive(Arc<Shared>);
impl Drop for CxActive {
    fn drop(&mut self) {
        self.0
            .stats
            .downstream_cx_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}
