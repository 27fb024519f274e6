//! Per-worker upstream connection pools on hyper's client connections.
//!
//! Each host has one pool per worker (no cross-core sharing). HTTP/1.1 connections are
//! taken most-recently-used first and given back when the response body ends; when the
//! cluster's `max_connections` is reached, requests wait in the pool's pending queue (up
//! to `max_pending_requests`, else overflow). HTTP/2 keeps one multiplexed connection.
use crate::proxy::http::body::RequestBody;
use crate::proxy::upstream::cluster::{Cluster, ClusterState, try_acquire};
use crate::proxy::upstream::host::Host;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    ConnectFailure,
    ConnectTimeout,
    /// Circuit breaker: max_connections reached and the pending queue is full.
    Overflow,
}

/// A sender on an upstream connection.
pub enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

/// A connection checked out of a pool for one request.
pub struct PooledConn {
    pub sender: Sender,
    uses: u32,
    /// Set for a fresh connection (no reuse yet): a reset on it is not retried as stale.
    pub fresh: bool,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    uses: u32,
}

#[derive(Default)]
struct Inner {
    idle: Vec<Idle>,
    waiters: VecDeque<oneshot::Sender<PooledConn>>,
    h2: Option<http2::SendRequest<RequestBody>>,
}

/// One host's pool on one worker.
#[derive(Default)]
pub struct HostPool {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostPool")
    }
}

impl HostPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle HTTP/1.1 connections (for tests and stats).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Drops every idle connection (draining).
    pub fn clear_idle(&self) {
        self.lock().idle.clear();
    }
}

/// Checks out a connection to `host` for one request.
pub async fn acquire(
    cluster: &Cluster,
    host: &Arc<Host>,
    worker: usize,
    h2: bool,
) -> Result<PooledConn, PoolError> {
    let pool = host.pool(worker);
    if h2 {
        let existing = pool.lock().h2.clone();
        if let Some(mut s) = existing {
            if s.ready().await.is_ok() {
                return Ok(PooledConn {
                    sender: Sender::H2(s),
                    uses: 0,
                    fresh: false,
                });
            }
            pool.lock().h2 = None;
        }
        let conn = Box::pin(connect(cluster, host, true)).await?;
        if let Sender::H2(s) = &conn.sender {
            pool.lock().h2 = Some(s.clone());
        }
        return Ok(conn);
    }
    loop {
        let idle = {
            let mut inner = pool.lock();
            inner.idle.pop()
        };
        let Some(mut idle) = idle else { break };
        if idle.sender.is_closed()
            || cluster
                .idle_timeout
                .is_some_and(|t| idle.since.elapsed() >= t)
        {
            continue;
        }
        if idle.sender.ready().await.is_ok() {
            return Ok(PooledConn {
                sender: Sender::H1(idle.sender),
                uses: idle.uses,
                fresh: false,
            });
        }
    }
    let state = &cluster.state;
    if try_acquire(&state.cx_active, cluster.thresholds.max_connections) {
        // Boxed: connecting is the cold path, and its large state would otherwise be
        // part of every request's future.
        return Box::pin(connect_counted(cluster, host, false)).await;
    }
    state
        .stats
        .upstream_cx_overflow
        .fetch_add(1, Ordering::Relaxed);
    if !try_acquire(&state.rq_pending, cluster.thresholds.max_pending_requests) {
        state
            .stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(PoolError::Overflow);
    }
    state
        .stats
        .upstream_rq_pending_total
        .fetch_add(1, Ordering::Relaxed);
    let _pending = PendingSlot(state);
    let (tx, rx) = oneshot::channel();
    pool.lock().waiters.push_back(tx);
    // A connection is handed over when another request finishes with one.
    rx.await.map_err(|_| PoolError::Overflow)
}

struct PendingSlot<'a>(&'a ClusterState);
impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.rq_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gives a connection back after its response ended: to a pending request first, else
/// to the idle list (unless it reached max_requests_per_connection).
pub fn release(cluster: &Cluster, host: &Host, worker: usize, mut conn: PooledConn) {
    let Sender::H1(sender) = conn.sender else {
        return;
    };
    conn.uses += 1;
    if sender.is_closed()
        || cluster
            .max_requests_per_connection
            .is_some_and(|m| conn.uses >= m)
    {
        return;
    }
    let pool = host.pool(worker);
    let mut inner = pool.lock();
    let mut conn = PooledConn {
        sender: Sender::H1(sender),
        uses: conn.uses,
        fresh: false,
    };
    while let Some(w) = inner.waiters.pop_front() {
        match w.send(conn) {
            Ok(()) => return,
            Err(back) => conn = back,
        }
    }
    if let Sender::H1(sender) = conn.sender {
        inner.idle.push(Idle {
            sender,
            since: Instant::now(),
            uses: conn.uses,
        });
    }
}

async fn connect(cluster: &Cluster, host: &Arc<Host>, h2: bool) -> Result<PooledConn, PoolError> {
    if !try_acquire(&cluster.state.cx_active, cluster.thresholds.max_connections) {
        cluster
            .state
            .stats
            .upstream_cx_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(PoolError::Overflow);
    }
    Box::pin(connect_counted(cluster, host, h2)).await
}

/// Opens a connection whose `cx_active` slot is already taken.
async fn connect_counted(
    cluster: &Cluster,
    host: &Arc<Host>,
    h2: bool,
) -> Result<PooledConn, PoolError> {
    let state = cluster.state.clone();
    let guard = ConnGuard {
        state: state.clone(),
        host: Arc::downgrade(host),
    };
    host.active_connections.fetch_add(1, Ordering::Relaxed);
    state
        .stats
        .upstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    let stream = match tokio::time::timeout(
        cluster.connect_timeout,
        tokio::net::TcpStream::connect(host.addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(host = %host.addr, error = %e, "upstream connect failed");
            state
                .stats
                .upstream_cx_connect_fail
                .fetch_add(1, Ordering::Relaxed);
            host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::ConnectFailure);
        }
        Err(_) => {
            state
                .stats
                .upstream_cx_connect_timeout
                .fetch_add(1, Ordering::Relaxed);
            state
                .stats
                .upstream_cx_connect_fail
                .fetch_add(1, Ordering::Relaxed);
            host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::ConnectTimeout);
        }
    };
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|_| PoolError::ConnectFailure)?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        Ok(PooledConn {
            sender: Sender::H2(sender),
            uses: 0,
            fresh: true,
        })
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|_| PoolError::ConnectFailure)?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.with_upgrades().await;
        });
        Ok(PooledConn {
            sender: Sender::H1(sender),
            uses: 0,
            fresh: true,
        })
    }
}

/// Keeps the connection gauges right for as long as a connection task lives.
struct ConnGuard {
    state: Arc<ClusterState>,
    /// Weak: the host's pool holds this connection's sender, so a strong reference would
    /// keep a removed host (and its connections) alive forever.
    host: std::sync::Weak<Host>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.cx_active.fetch_sub(1, Ordering::Relaxed);
        self.state
            .stats
            .upstream_cx_destroy
            .fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.host.upgrade() {
            h.active_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Default upstream idle timeout (Envoy's common_http_protocol_options default, 1 h).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
