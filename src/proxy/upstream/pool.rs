//! Per-worker upstream connection pools on hyper's client connections.
//!
//! Each host has one pool per worker (no cross-core sharing). HTTP/1.1 connections are
//! taken most-recently-used first and given back when the response body ends; when the
//! cluster's `max_connections` is reached, requests wait in the pool's pending queue (up
//! to `max_pending_requests`, else overflow). HTTP/2 keeps one multiplexed connection per
//! TLS context and server name.
//!
//! Connections are tagged with the TLS transport socket they were made with (and the
//! server name for `auto_sni` sockets): a request only reuses a connection made for the
//! socket its cluster selects now, so two TLS contexts never share a connection, and
//! connections of a replaced context are dropped when met.
use crate::proxy::http::body::RequestBody;
use crate::proxy::upstream::cluster::{Cluster, ClusterState, try_acquire};
use crate::proxy::upstream::host::Host;
use crate::proxy::upstream::tls::{self as upstream_tls, UpstreamTransport};
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

/// What a connection was made with: its TLS transport socket (none: plain text) and,
/// for `auto_sni` sockets, the server name it presented.
#[derive(Clone, Default)]
struct ConnKey {
    transport: Option<Arc<UpstreamTransport>>,
    sni: Option<Arc<str>>,
    /// The PROXY header it started with (`upstream_proxy_protocol`): such a connection
    /// serves only requests of the same downstream client, as Envoy's pools are keyed.
    proxy: Option<Arc<[u8]>>,
}

impl ConnKey {
    /// Made with the socket in force (same value, not merely equal settings).
    fn current(&self, transport: Option<&Arc<UpstreamTransport>>) -> bool {
        match (&self.transport, transport) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn matches(
        &self,
        transport: Option<&Arc<UpstreamTransport>>,
        sni: Option<&str>,
        proxy: Option<&[u8]>,
    ) -> bool {
        self.current(transport) && self.sni.as_deref() == sni && self.proxy.as_deref() == proxy
    }
}

/// A connection checked out of a pool for one request.
pub struct PooledConn {
    pub sender: Sender,
    uses: u32,
    /// Set for a fresh connection (no reuse yet): a reset on it is not retried as stale.
    pub fresh: bool,
    key: ConnKey,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    uses: u32,
    key: ConnKey,
}

#[derive(Default)]
struct Inner {
    idle: Vec<Idle>,
    /// Pending requests, each waiting for a connection made with its key.
    waiters: VecDeque<(ConnKey, oneshot::Sender<PooledConn>)>,
    h2: Vec<H2Conn>,
}

/// An HTTP/2 connection new streams may use, and how many it has carried.
struct H2Conn {
    key: ConnKey,
    sender: http2::SendRequest<RequestBody>,
    streams: u32,
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

/// Checks out a connection to `host` for a request not at hand (`auto_sni` sockets send
/// no server name).
pub async fn acquire(
    cluster: &Cluster,
    host: &Arc<Host>,
    worker: usize,
    h2: bool,
) -> Result<PooledConn, PoolError> {
    acquire_for(cluster, host, worker, h2, None, None).await
}

/// The host a request is for (`Host` header, else the URI's authority), without port:
/// the server name of `auto_sni` TLS connections.
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    let h = match req.headers().get(http::header::HOST) {
        Some(v) => v.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    // Strip a port (but not from a bracketed IPv6 literal).
    let h = match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => &h[..i],
        _ => h,
    };
    (!h.is_empty()).then_some(h)
}

/// Checks out a connection to `host` for `request`, whose host is the server name of
/// connections made by `auto_sni` TLS sockets.
pub async fn acquire_for(
    cluster: &Cluster,
    host: &Arc<Host>,
    worker: usize,
    h2: bool,
    request: Option<&http::Request<RequestBody>>,
    downstream: Option<&crate::proxy::http::request::Peer>,
) -> Result<PooledConn, PoolError> {
    let pool = host.pool(worker);
    let transport = cluster.transport.for_host(host.addr);
    // Without a downstream connection at hand (a mirrored request's copy is sent with
    // its own), the header says this proxy's own connection is the source: LOCAL.
    let proxy_header = cluster
        .transport
        .proxy_protocol
        .as_ref()
        .map(|pp| match downstream {
            Some(p) => pp.header(p.remote, p.local, &p.proxy_tlvs),
            None => crate::proxy::proxy_protocol::encode_local(pp.version),
        });
    let proxy = proxy_header.as_deref();
    let sni = match transport {
        Some(t) if t.auto_sni => request.and_then(request_host),
        _ => None,
    };
    if h2 {
        // A connection that reached max_requests_per_connection takes no new streams (it
        // closes once its streams end), as Envoy drains it.
        let max_streams = cluster.max_requests_per_connection;
        let existing = {
            let mut inner = pool.lock();
            inner.h2.retain(|c| c.key.current(transport));
            match inner
                .h2
                .iter()
                .position(|c| c.key.matches(transport, sni, proxy))
            {
                Some(i) => {
                    let c = &mut inner.h2[i];
                    c.streams += 1;
                    let taken = (c.key.clone(), c.sender.clone());
                    if max_streams.is_some_and(|m| c.streams >= m) {
                        inner.h2.remove(i);
                    }
                    Some(taken)
                }
                None => None,
            }
        };
        if let Some((key, mut s)) = existing {
            if s.ready().await.is_ok() {
                return Ok(PooledConn {
                    sender: Sender::H2(s),
                    uses: 0,
                    fresh: false,
                    key,
                });
            }
            pool.lock()
                .h2
                .retain(|c| !c.key.matches(transport, sni, proxy));
        }
        let conn = Box::pin(connect(cluster, host, true, transport, sni, proxy)).await?;
        if let Sender::H2(s) = &conn.sender
            && max_streams.is_none_or(|m| m > 1)
        {
            pool.lock().h2.push(H2Conn {
                key: conn.key.clone(),
                sender: s.clone(),
                streams: 1,
            });
        }
        return Ok(conn);
    }
    loop {
        let idle = {
            let mut inner = pool.lock();
            // Connections of a replaced TLS context are never used again.
            if inner.idle.iter().any(|i| !i.key.current(transport)) {
                inner.idle.retain(|i| i.key.current(transport));
            }
            inner
                .idle
                .iter()
                .rposition(|i| i.key.matches(transport, sni, proxy))
                .map(|pos| inner.idle.remove(pos))
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
                key: idle.key,
            });
        }
    }
    let state = &cluster.state;
    if try_acquire(&state.cx_active, cluster.thresholds.max_connections) {
        // Boxed: connecting is the cold path, and its large state would otherwise be
        // part of every request's future.
        return Box::pin(connect_counted(cluster, host, false, transport, sni, proxy)).await;
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
    let key = ConnKey {
        transport: transport.cloned(),
        sni: sni.map(Arc::from),
        proxy: proxy.map(Arc::from),
    };
    pool.lock().waiters.push_back((key, tx));
    // A connection is handed over when another request finishes with one; when one
    // closes instead, its slot under max_connections lets this request open a new one.
    let mut rx = rx;
    loop {
        let freed = state.cx_freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if try_acquire(&state.cx_active, cluster.thresholds.max_connections) {
            drop(rx);
            return Box::pin(connect_counted(cluster, host, false, transport, sni, proxy)).await;
        }
        tokio::select! {
            conn = &mut rx => return conn.map_err(|_| PoolError::Overflow),
            _ = freed => {}
        }
    }
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
        key: conn.key,
    };
    let mut i = 0;
    while i < inner.waiters.len() {
        let (key, w) = &inner.waiters[i];
        if w.is_closed() {
            inner.waiters.remove(i);
        } else if key.matches(
            conn.key.transport.as_ref(),
            conn.key.sni.as_deref(),
            conn.key.proxy.as_deref(),
        ) {
            if let Some((_, w)) = inner.waiters.remove(i) {
                match w.send(conn) {
                    Ok(()) => return,
                    Err(back) => conn = back,
                }
            }
        } else {
            i += 1;
        }
    }
    if let Sender::H1(sender) = conn.sender {
        inner.idle.push(Idle {
            sender,
            since: Instant::now(),
            uses: conn.uses,
            key: conn.key,
        });
    }
}

async fn connect(
    cluster: &Cluster,
    host: &Arc<Host>,
    h2: bool,
    transport: Option<&Arc<UpstreamTransport>>,
    sni: Option<&str>,
    proxy: Option<&[u8]>,
) -> Result<PooledConn, PoolError> {
    if !try_acquire(&cluster.state.cx_active, cluster.thresholds.max_connections) {
        cluster
            .state
            .stats
            .upstream_cx_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(PoolError::Overflow);
    }
    Box::pin(connect_counted(cluster, host, h2, transport, sni, proxy)).await
}

/// Opens a connection whose `cx_active` slot is already taken: TCP, then the TLS
/// handshake for TLS sockets, both within `connect_timeout` (as Envoy, whose connection
/// is established once the transport socket is).
async fn connect_counted(
    cluster: &Cluster,
    host: &Arc<Host>,
    h2: bool,
    transport: Option<&Arc<UpstreamTransport>>,
    sni: Option<&str>,
    proxy: Option<&[u8]>,
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
    let key = ConnKey {
        transport: transport.cloned(),
        sni: sni.map(Arc::from),
        proxy: proxy.map(Arc::from),
    };
    let fail = |e: PoolError| {
        if e == PoolError::ConnectTimeout {
            state
                .stats
                .upstream_cx_connect_timeout
                .fetch_add(1, Ordering::Relaxed);
        }
        state
            .stats
            .upstream_cx_connect_fail
            .fetch_add(1, Ordering::Relaxed);
        host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
        e
    };
    let deadline = Instant::now() + cluster.connect_timeout;
    let stream =
        match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(host.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(host = %host.addr, error = %e, "upstream connect failed");
                return Err(fail(PoolError::ConnectFailure));
            }
            Err(_) => return Err(fail(PoolError::ConnectTimeout)),
        };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    if let Some(header) = proxy {
        let write = tokio::io::AsyncWriteExt::write_all(&mut stream, header);
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(host = %host.addr, error = %e, "writing the PROXY header failed");
                return Err(fail(PoolError::ConnectFailure));
            }
            Err(_) => return Err(fail(PoolError::ConnectTimeout)),
        }
    }
    let Some(t) = transport else {
        return handshake_http(TokioIo::new(stream), h2, guard, key).await;
    };
    let handshake = upstream_tls::handshake(t, h2, stream, sni, &state.stats);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => handshake_http(TokioIo::new(tls), h2, guard, key).await,
        Ok(Err(e)) => {
            tracing::debug!(
                cluster = %cluster.name, host = %host.addr, error = %e,
                "upstream TLS handshake failed"
            );
            Err(fail(PoolError::ConnectFailure))
        }
        Err(_) => Err(fail(PoolError::ConnectTimeout)),
    }
}

/// The HTTP/1.1 or HTTP/2 client handshake on an established connection; the connection
/// task owns `guard` for as long as it runs.
async fn handshake_http<IO>(
    io: TokioIo<IO>,
    h2: bool,
    guard: ConnGuard,
    key: ConnKey,
) -> Result<PooledConn, PoolError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
            key,
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
            key,
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
        self.state.cx_freed.notify_waiters();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_host_is_the_server_name_of_auto_sni_connections() {
        let cases: [(&str, Option<&str>, Option<&str>); 5] = [
            (
                "http://ignored/x",
                Some("api.example.com:8443"),
                Some("api.example.com"),
            ),
            ("http://api.example.com/x", None, Some("api.example.com")),
            ("/x", Some("[::1]"), Some("[::1]")),
            ("/x", Some("a.example"), Some("a.example")),
            ("/x", None, None),
        ];
        for (uri, host, want) in cases {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(http::header::HOST, h);
            }
            let req = b.body(()).unwrap();
            assert_eq!(request_host(&req), want, "{uri} {host:?}");
        }
    }
}
