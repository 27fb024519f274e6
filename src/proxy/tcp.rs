//! Envoy's `tcp_proxy` network filter: a connection (plain, decrypted TLS, or TLS passed
//! through untouched with the ClientHello already read) is copied both ways to a host of
//! its cluster — Istio's TCP servers, `tls` routes by SNI (PASSTHROUGH) and east-west
//! AUTO_PASSTHROUGH.
//!
//! The cluster (one, or one of several by weight) is chosen per connection, its host by
//! the cluster's load balancer; the copy keeps half-closes (a FIN one way still lets the
//! other way finish), ends after `idle_timeout` without bytes either way (Envoy's default
//! one hour) or after `max_downstream_connection_duration`.
use crate::proxy::runtime::Shared;
use crate::proxy::upstream::Cluster;
use crate::proxy::upstream::cluster::try_acquire;
use crate::proxy::upstream::lb::LbContext;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Envoy's `tcp_proxy` idle timeout when none is configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a `tcp_proxy` sends its connections.
#[derive(Debug, Clone)]
pub enum TcpClusters {
    One(Arc<str>),
    /// `(cluster, weight)` with positive weights, and their sum.
    Weighted(Vec<(Arc<str>, u32)>, u64),
}

/// A compiled `envoy.filters.network.tcp_proxy`.
#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: Box<str>,
    pub clusters: TcpClusters,
    /// No bytes either way for this long ends the connection (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    /// `envoy.filters.network.rbac` filters before the proxy, in order.
    pub rbac: Vec<crate::proxy::rbac::NetworkRbac>,
}

/// What the network filters know of a connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpConn<'a> {
    /// The client (a PROXY header's source, else the peer).
    pub remote: SocketAddr,
    /// The TCP peer.
    pub direct: SocketAddr,
    /// The TLVs of the downstream PROXY header the listener kept.
    pub proxy_tlvs: &'a [(u8, bytes::Bytes)],
    pub local: SocketAddr,
    /// The SNI the client sent (TLS passed through or terminated).
    pub sni: Option<&'a str>,
    /// The TLS session when the chain terminates TLS.
    pub tls: Option<&'a crate::proxy::connection::ConnTls>,
}

impl TcpProxy {
    /// The cluster for a new connection (weights drawn per connection).
    pub fn pick_cluster(&self) -> &Arc<str> {
        match &self.clusters {
            TcpClusters::One(c) => c,
            TcpClusters::Weighted(list, total) => {
                let mut at = rand::random_range(0..(*total).max(1));
                for (name, w) in list {
                    if at < u64::from(*w) {
                        return name;
                    }
                    at -= u64::from(*w);
                }
                &list[list.len() - 1].0
            }
        }
    }
}

/// Why a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEnd {
    /// Both directions finished (or one failed).
    Closed,
    IdleTimeout,
    MaxDuration,
    NoCluster,
    /// A network RBAC filter denied the connection.
    Denied,
    NoHealthyUpstream,
    Overflow,
    ConnectFailed,
}

/// Proxies `downstream` to the proxy's cluster until both sides are done, once the
/// network RBAC filters allow it.
pub async fn serve_tcp<IO>(
    mut downstream: IO,
    proxy: &TcpProxy,
    shared: &Shared,
    conn: TcpConn<'_>,
) -> TcpEnd
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let remote = conn.remote;
    let stats = &shared.stats;
    if !proxy.rbac.is_empty() {
        let input = crate::proxy::rbac::Input {
            direct_remote: conn.direct.ip(),
            remote: conn.remote.ip(),
            local: conn.local,
            sni: conn.sni,
            tls: conn.tls.is_some(),
            peer: conn.tls.and_then(|t| t.peer.as_ref()),
            request: None,
            metadata: None,
        };
        if !proxy.rbac.iter().all(|f| f.allows(&input, stats)) {
            close_on_first_byte(&mut downstream, proxy.idle_timeout).await;
            tracing::debug!(%remote, "tcp_proxy: denied by network RBAC; connection closed");
            return TcpEnd::Denied;
        }
    }
    stats
        .tcp_downstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    let name = proxy.pick_cluster();
    let snap = shared.snapshot.load();
    let Some(cluster) = snap.clusters.get(&**name).cloned() else {
        stats
            .tcp_downstream_cx_no_route
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, cluster = %name, "tcp_proxy: unknown cluster; closing the connection");
        return TcpEnd::NoCluster;
    };
    drop(snap);
    let downstream_peer = (conn.remote, conn.local, conn.proxy_tlvs);
    let upstream = match connect(&cluster, downstream_peer).await {
        Ok(u) => u,
        Err(end) => {
            stats
                .tcp_upstream_connect_fail
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, cluster = %name, reason = ?end, "tcp_proxy: no upstream connection; closing");
            return end;
        }
    };
    let (upstream, _slot) = upstream;
    let end = copy(downstream, upstream, proxy, stats).await;
    match end {
        TcpEnd::IdleTimeout => {
            stats.tcp_idle_timeout.fetch_add(1, Ordering::Relaxed);
        }
        TcpEnd::MaxDuration => {
            stats
                .tcp_max_downstream_connection_duration
                .fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    tracing::debug!(%remote, cluster = %name, reason = ?end, "tcp_proxy connection ended");
    end
}

/// The cluster's `cx_active` slot held while an upstream connection lives.
struct CxSlot(Arc<Cluster>);
impl Drop for CxSlot {
    fn drop(&mut self) {
        self.0.state.cx_active.fetch_sub(1, Ordering::Relaxed);
        self.0
            .state
            .stats
            .upstream_cx_destroy
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects to a host of `cluster`; a cluster with `upstream_proxy_protocol` gets the
/// downstream client's PROXY header (`downstream`: remote, local, TLVs) first.
async fn connect(
    cluster: &Arc<Cluster>,
    downstream: (SocketAddr, SocketAddr, &[(u8, bytes::Bytes)]),
) -> Result<(TcpStream, CxSlot), TcpEnd> {
    let state = &cluster.state;
    let host = cluster.choose_host(LbContext::default());
    let Some(host) = host else {
        state
            .stats
            .upstream_cx_none_healthy
            .fetch_add(1, Ordering::Relaxed);
        return Err(TcpEnd::NoHealthyUpstream);
    };
    if !try_acquire(&state.cx_active, cluster.thresholds.max_connections) {
        state
            .stats
            .upstream_cx_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(TcpEnd::Overflow);
    }
    state
        .stats
        .upstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    let slot = CxSlot(cluster.clone());
    match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(host.addr)).await {
        Ok(Ok(mut s)) => {
            let _ = s.set_nodelay(true);
            if let Some(pp) = &cluster.transport.proxy_protocol {
                let header = pp.header(downstream.0, downstream.1, downstream.2);
                if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut s, &header).await {
                    tracing::debug!(host = %host.addr, error = %e, "tcp_proxy: writing the PROXY header failed");
                    state
                        .stats
                        .upstream_cx_connect_fail
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(TcpEnd::ConnectFailed);
                }
            }
            Ok((s, slot))
        }
        Ok(Err(_)) => {
            state
                .stats
                .upstream_cx_connect_fail
                .fetch_add(1, Ordering::Relaxed);
            host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            Err(TcpEnd::ConnectFailed)
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
            Err(TcpEnd::ConnectFailed)
        }
    }
}

/// Envoy decides network RBAC on a connection's first bytes and closes a denied one
/// then: wait for them (or the client's close, or the idle timeout) before closing. No
/// upstream connection is made for a denied client.
async fn close_on_first_byte<IO: AsyncRead + Unpin>(downstream: &mut IO, idle: Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read = downstream.read(&mut buf);
    match idle {
        Some(t) => {
            let _ = tokio::time::timeout(t, read).await;
        }
        None => {
            let _ = read.await;
        }
    }
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Copies both ways with half-close, bounded by the idle timeout and the connection's
/// maximum duration.
async fn copy<D, U>(
    downstream: D,
    upstream: U,
    proxy: &TcpProxy,
    stats: &crate::proxy::stats::Stats,
) -> TcpEnd
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(now_ms()));
    let mut down = Counted {
        inner: downstream,
        last: last.clone(),
    };
    let mut up = Counted {
        inner: upstream,
        last: last.clone(),
    };
    let idle = async {
        let Some(idle) = proxy.idle_timeout else {
            return std::future::pending().await;
        };
        let idle_ms = idle.as_millis() as u64;
        loop {
            let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
            if since >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
        }
    };
    let max = async {
        match proxy.max_connection_duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Ok((rx, tx)) = r {
                stats.tcp_downstream_rx_bytes.fetch_add(rx, Ordering::Relaxed);
                stats.tcp_downstream_tx_bytes.fetch_add(tx, Ordering::Relaxed);
            }
            TcpEnd::Closed
        }
        _ = idle => TcpEnd::IdleTimeout,
        _ = max => TcpEnd::MaxDuration,
    }
}

/// A stream noting when bytes last moved (for the idle timeout).
struct Counted<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn proxy(idle: Option<Duration>) -> TcpProxy {
        TcpProxy {
            stat_prefix: "t".into(),
            clusters: TcpClusters::One("c".into()),
            idle_timeout: idle,
            max_connection_duration: None,
            rbac: Vec::new(),
        }
    }

    fn stats() -> crate::proxy::stats::Stats {
        let labels = crate::proxy::stats::SourceLabels {
            workload: "w".into(),
            namespace: "n".into(),
            app: "a".into(),
        };
        crate::proxy::stats::Stats::new(1, labels)
    }

    #[test]
    fn weights_are_drawn_per_connection() {
        let p = TcpProxy {
            clusters: TcpClusters::Weighted(vec![("a".into(), 70), ("b".into(), 30)], 100),
            ..proxy(None)
        };
        let a = (0..10_000).filter(|_| &**p.pick_cluster() == "a").count();
        assert!((6_500..7_500).contains(&a), "{a}");
    }

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        let (mut client, down) = tokio::io::duplex(64);
        let (up, mut server) = tokio::io::duplex(64);
        let stats = stats();
        let p = proxy(Some(Duration::from_secs(5)));
        let task = async { copy(down, up, &p, &stats).await };
        let peer = async {
            client.write_all(b"request").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"request");
            // The server answers after the client's FIN.
            server.write_all(b"response").await.unwrap();
            server.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"response");
        };
        let (end, ()) = tokio::join!(task, peer);
        assert_eq!(end, TcpEnd::Closed);
        assert_eq!(stats.tcp_downstream_rx_bytes.load(Ordering::Relaxed), 7);
        assert_eq!(stats.tcp_downstream_tx_bytes.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn idle_connections_end() {
        let (_client, down) = tokio::io::duplex(64);
        let (up, _server) = tokio::io::duplex(64);
        let stats = stats();
        let p = proxy(Some(Duration::from_millis(50)));
        let end = tokio::time::timeout(Duration::from_secs(5), copy(down, up, &p, &stats))
            .await
            .expect("ends");
        assert_eq!(end, TcpEnd::IdleTimeout);
    }
}
