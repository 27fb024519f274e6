//! TLS origination: the transport sockets of a cluster (`transport_socket` and
//! `transport_socket_matches`), which one each host uses, and the handshake on a fresh
//! upstream connection with its `ssl.*` stats.
//!
//! A [`UpstreamTransport`] is built once per cluster configuration and reused by the next
//! snapshot while the configuration is byte-for-byte the same, so session resumption
//! state carries over and pooled connections stay usable. Certificates and trust are read
//! from the secret store at handshake time: a rotated secret reaches the next connection.
use crate::proxy::upstream::cluster::ClusterStats;
use crate::tls::UpstreamTls;
use crate::tls::verify::PeerRejected;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// One TLS transport socket of a cluster, ready to originate.
pub struct UpstreamTransport {
    /// What it was built from (encoded context and cluster options): equal keys mean the
    /// same behaviour, so an update can keep this value.
    pub key: Vec<u8>,
    /// Offers `http/1.1` by ALPN unless the context names its own protocols.
    pub h1: UpstreamTls,
    /// Offers `h2` by ALPN unless the context names its own protocols.
    pub h2: UpstreamTls,
    /// SNI from the request's host (`auto_sni` / `auto_host_sni`): connections are then
    /// pooled per server name.
    pub auto_sni: bool,
}

impl std::fmt::Debug for UpstreamTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTransport")
            .field("sni", &self.h1.sni)
            .field("auto_sni", &self.auto_sni)
            .finish_non_exhaustive()
    }
}

/// The transport sockets of a cluster: which one each host uses. `None` is plain text.
#[derive(Debug, Default)]
pub struct TransportSockets {
    /// For hosts without a metadata-selected socket: the first `transport_socket_matches`
    /// entry with an empty match, else the cluster's `transport_socket`.
    pub fallback: Option<Arc<UpstreamTransport>>,
    /// Hosts whose `envoy.transport_socket_match` metadata selected a socket.
    pub by_host: HashMap<SocketAddr, Option<Arc<UpstreamTransport>>>,
    /// Every distinct TLS socket of the cluster (for reuse by the next update).
    pub all: Vec<Arc<UpstreamTransport>>,
    /// `upstream_proxy_protocol` around the sockets: the PROXY header every new
    /// connection starts with.
    pub proxy_protocol: Option<UpstreamProxyProtocol>,
}

/// Envoy's `upstream_proxy_protocol` transport socket: a PROXY header naming the
/// downstream client first on each upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxyProtocol {
    pub version: crate::proxy::proxy_protocol::Version,
    /// The downstream header's TLVs sent on (v2 only).
    pub pass_through: crate::proxy::proxy_protocol::PassThroughTlvs,
}

impl UpstreamProxyProtocol {
    /// The header for a downstream client at `remote` that connected to `local`, with
    /// the downstream TLVs this socket passes on.
    pub fn header(
        &self,
        remote: SocketAddr,
        local: SocketAddr,
        tlvs: &[(u8, bytes::Bytes)],
    ) -> Vec<u8> {
        let passed: Vec<(u8, bytes::Bytes)> = tlvs
            .iter()
            .filter(|(ty, _)| self.pass_through.passes(*ty))
            .cloned()
            .collect();
        crate::proxy::proxy_protocol::encode(self.version, remote, local, &passed)
    }
}

impl TransportSockets {
    /// The socket for connections to `addr`.
    #[inline]
    pub fn for_host(&self, addr: SocketAddr) -> Option<&Arc<UpstreamTransport>> {
        if self.by_host.is_empty() {
            return self.fallback.as_ref();
        }
        match self.by_host.get(&addr) {
            Some(s) => s.as_ref(),
            None => self.fallback.as_ref(),
        }
    }

    /// A socket of this cluster built from the same `key`, to keep across an update.
    pub fn reusable(&self, key: &[u8]) -> Option<Arc<UpstreamTransport>> {
        self.all.iter().find(|t| t.key == key).cloned()
    }
}

/// Why a TLS handshake with an upstream failed, for stats and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The certificate was refused by SAN, SPKI or hash rules (`ssl.fail_verify_san`).
    VerifySan,
    /// The chain did not verify: unknown issuer, expired, bad signature, no CA yet
    /// (`ssl.fail_verify_error`).
    VerifyError,
    /// Anything else: alerts from the peer, protocol errors, a closed connection.
    Other,
}

fn classify(e: &std::io::Error) -> HandshakeFailure {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Other(o)))
            if o.0.downcast_ref::<PeerRejected>().is_some_and(|r| {
                !r.0.starts_with("no trusted CA") && !r.0.starts_with("validation context")
            }) =>
        {
            HandshakeFailure::VerifySan
        }
        Some(Error::InvalidCertificate(_)) => HandshakeFailure::VerifyError,
        _ => HandshakeFailure::Other,
    }
}

/// Runs the client handshake for a new connection and counts it in the cluster's
/// `ssl.*` stats. `sni_host` is the request's host for `auto_sni` sockets.
pub async fn handshake<IO>(
    transport: &UpstreamTransport,
    h2: bool,
    io: IO,
    sni_host: Option<&str>,
    stats: &ClusterStats,
) -> std::io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let tls = if h2 { &transport.h2 } else { &transport.h1 };
    let host = if transport.auto_sni { sni_host } else { None };
    match tls.connect(io, host).await {
        Ok(s) => {
            stats.ssl_handshake.fetch_add(1, Ordering::Relaxed);
            if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.ssl_session_reused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(s)
        }
        Err(e) => {
            stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            match classify(&e) {
                HandshakeFailure::VerifySan => {
                    stats.ssl_fail_verify_san.fetch_add(1, Ordering::Relaxed);
                }
                HandshakeFailure::VerifyError => {
                    stats.ssl_fail_verify_error.fetch_add(1, Ordering::Relaxed);
                }
                HandshakeFailure::Other => {}
            }
            Err(e)
        }
    }
}
