//! A downstream connection from `accept()` to its filter chain: the `tls_inspector`'s
//! ClientHello read (bounded in size and time), ACME TLS-ALPN-01 validations, filter
//! chain selection, TLS termination with the chain's context, then the chain's network
//! filter: the HTTP connection manager, or `tcp_proxy` (plain TCP, TLS passed through
//! with the ClientHello bytes already read, or TLS terminated to TCP).
//!
//! Every way a connection can fail here ends that connection only, with a debug log
//! line saying why and a counter in `/stats`: no matching chain (reset, as Envoy),
//! oversized or slow ClientHello, a chain whose certificate has not arrived yet (reset,
//! as Envoy with a missing SDS secret), a failed handshake, a TLS 1.2 renegotiation.
use crate::acme::ChallengeResponses;
use crate::proxy::http::hcm::ClientCertDetails;
use crate::proxy::http::request::Peer;
use crate::proxy::http::router::ConnCtx;
use crate::proxy::http::server::{ConnState, Protocol, serve_http};
use crate::proxy::listener::{ChainAction, Detected, FilterChain, Listener, TransportProtocol};
use crate::proxy::proxy_protocol::{
    ProxyProtocolError, ProxyProtocolFilter, Version as PpVersion, read_header,
};
use crate::proxy::runtime::Shared;
use crate::tls::identity::{PeerIdentity, xfcc_element};
use crate::tls::{
    ClientHelloError, ClientHelloInfo, ClientHelloReader, RenegotiationGuard, Rewind,
};
use bytes::BytesMut;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Largest ClientHello the inspector reads (Envoy's `tls_inspector` default).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// How long an ACME TLS-ALPN-01 validation handshake may take.
const ACME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the listener filters detected, kept for choosing the chain again when a new
/// snapshot arrives while the connection is open.
#[derive(Debug, Clone, Default)]
pub struct ChainKey {
    pub server_name: Option<Box<str>>,
    pub tls: bool,
    pub alpn: Vec<Vec<u8>>,
}

impl ChainKey {
    pub fn detected(&self, local_port: u16) -> Detected<'_> {
        Detected {
            local_port,
            server_name: self.server_name.as_deref(),
            transport: if self.tls {
                TransportProtocol::Tls
            } else {
                TransportProtocol::RawBuffer
            },
            alpn: &self.alpn,
        }
    }
}

/// The TLS side of a terminated connection: what routing, access logs, `x-forwarded-
/// client-cert` and (later) authorization know about the client.
#[derive(Debug)]
pub struct ConnTls {
    /// The SNI the client sent.
    pub server_name: Option<Box<str>>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Box<[u8]>>,
    /// The verified client certificate (MUTUAL, OPTIONAL_MUTUAL with one presented).
    pub peer: Option<PeerIdentity>,
    local_uri_sans: Vec<String>,
    /// This proxy's XFCC element for the peer, made once per connection.
    xfcc: OnceLock<(ClientCertDetails, HeaderValue)>,
}

impl ConnTls {
    /// The first URI SAN of this proxy's own certificate on the connection.
    pub fn local_uri_san(&self) -> Option<&str> {
        self.local_uri_sans.first().map(String::as_str)
    }

    /// This proxy's `x-forwarded-client-cert` element for the client certificate with
    /// `details`; `None` without a client certificate.
    pub fn xfcc_element(&self, details: ClientCertDetails) -> Option<HeaderValue> {
        let peer = self.peer.as_ref()?;
        let make =
            || HeaderValue::from_str(&xfcc_element(peer, &self.local_uri_sans, details)).ok();
        match self.xfcc.get() {
            Some((d, v)) if *d == details => Some(v.clone()),
            Some(_) => make(),
            None => {
                let v = make()?;
                let _ = self.xfcc.set((details, v.clone()));
                Some(v)
            }
        }
    }
}

/// Serves one accepted connection until it closes, drains or times out.
pub async fn serve_connection(
    mut stream: TcpStream,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    worker: usize,
    drain: watch::Receiver<bool>,
) {
    let (Ok(remote), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    shared
        .stats
        .downstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .downstream_cx_active
        .fetch_add(1, Ordering::Relaxed);
    let _active = CxActive(shared.clone());

    let mut prefix = BytesMut::new();
    // Listener filters share one `listener_filters_timeout`, as in Envoy.
    let filters_deadline = tokio::time::Instant::now() + listener.listener_filters_timeout;
    let direct = remote;
    let (mut remote, mut local) = (remote, local);
    let mut proxy_tlvs: Arc<[(u8, bytes::Bytes)]> = Arc::new([]);
    if let Some(pp) = &listener.proxy_protocol {
        match proxy_protocol(&mut stream, &mut prefix, pp, &listener, &shared, direct).await {
            PeerFound::Header(addresses, tlvs) => {
                if let Some((source, destination)) = addresses {
                    remote = source;
                    local = destination;
                }
                if !tlvs.is_empty() {
                    proxy_tlvs = tlvs.into();
                }
            }
            PeerFound::Close => return,
        }
    }
    let mut hello: Option<ClientHelloInfo> = None;
    if listener.tls_inspector {
        let left = filters_deadline.saturating_duration_since(tokio::time::Instant::now());
        match inspect(&mut stream, &mut prefix, &listener, &shared, remote, left).await {
            Inspected::Tls(info) => hello = Some(info),
            Inspected::Raw => {}
            Inspected::Close => return reset(stream),
        }
    }
    if let Some(h) = &hello
        && ChallengeResponses::is_tls_alpn_validation(&h.alpn)
        && !shared.tls.challenges.is_empty()
    {
        return answer_tls_alpn(Rewind::new(prefix.freeze(), stream), &shared, remote).await;
    }
    let key = match hello {
        Some(h) => ChainKey {
            server_name: h.server_name.map(String::into_boxed_str),
            tls: true,
            alpn: h.alpn,
        },
        None => ChainKey::default(),
    };
    let Some(chain) = listener.select(&key.detected(local.port())) else {
        shared
            .stats
            .no_filter_chain_match
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(listener = %listener.name, %remote, %direct, sni = ?key.server_name, tls = key.tls, "no filter chain matches; resetting the connection");
        return reset(stream);
    };
    let io = Rewind::new(prefix.freeze(), stream);
    let conn = Conn {
        listener: &listener,
        chain,
        shared,
        worker,
        drain,
        remote,
        direct,
        local,
        proxy_tlvs,
        key,
    };
    match &chain.tls {
        None => conn.dispatch(io, None).await,
        Some(tls) => {
            if !tls.certificates_ready() {
                crate::tls::TlsStats::bump(&tls.stats().no_certificate);
                tracing::debug!(listener = %listener.name, chain = %chain.name, %remote, "the filter chain has no certificate yet; resetting the connection");
                return reset(io.into_parts().1);
            }
            let guard = RenegotiationGuard::new(io, tls.stats().clone(), Some(remote));
            let accepted = match tls.accept(guard, chain.handshake_timeout).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(listener = %listener.name, chain = %chain.name, %remote, error = %e, "TLS handshake failed; closing the connection");
                    return;
                }
            };
            let mut stream = accepted.stream;
            let tls12 =
                stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
            stream.get_mut().0.handshake_done(tls12);
            let conn_tls = ConnTls {
                server_name: accepted.server_name.map(String::into_boxed_str),
                alpn: accepted.alpn.map(Vec::into_boxed_slice),
                peer: accepted.peer,
                local_uri_sans: tls.local_uri_sans.clone(),
                xfcc: OnceLock::new(),
            };
            conn.dispatch(stream, Some(Arc::new(conn_tls))).await
        }
    }
}

/// What the inspector decided.
enum Inspected {
    Tls(ClientHelloInfo),
    Raw,
    Close,
}

/// Reads the ClientHello (Envoy's `tls_inspector`): not TLS, or malformed, continues as
/// `raw_buffer`; too large, too slow (unless the listener continues on timeouts) or cut
/// short closes the connection.
async fn inspect(
    stream: &mut TcpStream,
    prefix: &mut BytesMut,
    listener: &Listener,
    shared: &Shared,
    remote: SocketAddr,
    timeout: Duration,
) -> Inspected {
    let reader = ClientHelloReader {
        max_size: MAX_CLIENT_HELLO,
        timeout,
    };
    let stats = &shared.stats;
    let bump = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    match reader.read(stream, prefix).await {
        Ok(info) => {
            bump(&stats.tls_inspector_tls_found);
            Inspected::Tls(info)
        }
        Err(ClientHelloError::NotTls) => {
            bump(&stats.tls_inspector_tls_not_found);
            Inspected::Raw
        }
        Err(e @ ClientHelloError::Malformed(_)) => {
            bump(&stats.tls_inspector_client_hello_malformed);
            bump(&stats.tls_inspector_tls_not_found);
            tracing::debug!(listener = %listener.name, %remote, error = %e, "not a valid ClientHello; continuing as raw_buffer");
            Inspected::Raw
        }
        Err(e @ ClientHelloError::TooLarge { .. }) => {
            bump(&stats.tls_inspector_client_hello_too_large);
            tracing::debug!(listener = %listener.name, %remote, error = %e, "ClientHello too large; resetting the connection");
            Inspected::Close
        }
        Err(e @ ClientHelloError::Timeout(_)) => {
            bump(&stats.downstream_pre_cx_timeout);
            if listener.continue_on_listener_filters_timeout {
                Inspected::Raw
            } else {
                tracing::debug!(listener = %listener.name, %remote, error = %e, "closing the connection");
                Inspected::Close
            }
        }
        Err(e) => {
            bump(&stats.tls_inspector_read_error);
            tracing::debug!(listener = %listener.name, %remote, error = %e, "connection ended before a filter chain was chosen");
            Inspected::Close
        }
    }
}

/// What the PROXY protocol filter decided.
enum PeerFound {
    /// Carry on, with the header's (source, destination) when it named them, and the
    /// TLVs kept.
    Header(Option<(SocketAddr, SocketAddr)>, Vec<(u8, bytes::Bytes)>),
    Close,
}

/// Reads the PROXY protocol header (Envoy's `proxy_protocol` listener filter): a
/// missing (unless allowed), disallowed, malformed, cut short or slow header closes the
/// connection; bytes after it stay in `prefix` for the tls_inspector and the chain.
async fn proxy_protocol(
    stream: &mut TcpStream,
    prefix: &mut BytesMut,
    filter: &ProxyProtocolFilter,
    listener: &Listener,
    shared: &Shared,
    peer: SocketAddr,
) -> PeerFound {
    let stats = &shared.stats;
    let bump = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    match read_header(stream, prefix, filter, listener.listener_filters_timeout).await {
        Ok(Some(h)) => {
            bump(match h.version {
                PpVersion::V1 => &stats.proxy_proto_v1_found,
                PpVersion::V2 => &stats.proxy_proto_v2_found,
            });
            PeerFound::Header(h.addresses, h.tlvs)
        }
        Ok(None) => {
            bump(&stats.proxy_proto_not_found_allowed);
            PeerFound::Header(None, Vec::new())
        }
        Err(ProxyProtocolError::Timeout(_)) if listener.continue_on_listener_filters_timeout => {
            bump(&stats.downstream_pre_cx_timeout);
            PeerFound::Header(None, Vec::new())
        }
        Err(e) => {
            match &e {
                ProxyProtocolError::Missing => bump(&stats.proxy_proto_not_found_disallowed),
                ProxyProtocolError::Disallowed(PpVersion::V1) => {
                    bump(&stats.proxy_proto_v1_disallowed)
                }
                ProxyProtocolError::Disallowed(PpVersion::V2) => {
                    bump(&stats.proxy_proto_v2_disallowed)
                }
                ProxyProtocolError::Timeout(_) => bump(&stats.downstream_pre_cx_timeout),
                ProxyProtocolError::Malformed(m) if m.starts_with("v1") => {
                    bump(&stats.proxy_proto_v1_error)
                }
                _ => bump(&stats.proxy_proto_v2_error),
            }
            tracing::debug!(listener = %listener.name, %peer, error = %e, "closing the connection");
            PeerFound::Close
        }
    }
}

/// Answers an ACME TLS-ALPN-01 validation with the pending challenge certificate.
async fn answer_tls_alpn<IO>(io: IO, shared: &Shared, remote: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.challenges.tls_alpn_server_config());
    match tokio::time::timeout(ACME_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(mut tls)) => {
            shared
                .stats
                .acme_tls_alpn_validations
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, "answered an ACME TLS-ALPN-01 validation");
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "ACME TLS-ALPN-01 handshake failed")
        }
        Err(_) => tracing::debug!(%remote, "ACME TLS-ALPN-01 handshake timed out"),
    }
}

/// A connection whose filter chain is chosen.
struct Conn<'a> {
    listener: &'a Arc<Listener>,
    chain: &'a FilterChain,
    shared: Arc<Shared>,
    worker: usize,
    drain: watch::Receiver<bool>,
    /// The client: the PROXY header's source, else the peer.
    remote: SocketAddr,
    /// The peer of the TCP connection (a load balancer speaking the PROXY protocol).
    direct: SocketAddr,
    local: SocketAddr,
    /// The PROXY header's TLVs the listener keeps.
    proxy_tlvs: Arc<[(u8, bytes::Bytes)]>,
    key: ChainKey,
}

impl Conn<'_> {
    /// Hands the (decrypted) stream to the chain's network filter.
    async fn dispatch<IO>(self, io: IO, tls: Option<Arc<ConnTls>>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.chain.action {
            ChainAction::Http(hcm) => {
                let protocol = match tls.as_ref().and_then(|t| t.alpn.as_deref()) {
                    Some(b"h2") => Protocol::Http2,
                    Some(b"http/1.1") => Protocol::Http1,
                    _ => Protocol::Auto,
                };
                let state = Arc::new(ConnState::default());
                state.touch();
                let cx = Arc::new(ConnCtx {
                    peer: Peer::new(self.remote, self.local, tls.is_some())
                        .with_direct(self.direct, self.proxy_tlvs.clone()),
                    worker: self.worker,
                    shared: self.shared,
                    listener: self.listener.name.clone(),
                    initial: hcm.clone(),
                    state,
                    tls,
                    key: self.key,
                });
                serve_http(io, cx, hcm.clone(), protocol, self.drain).await
            }
            ChainAction::Tcp(proxy) => {
                let conn = crate::proxy::tcp::TcpConn {
                    remote: self.remote,
                    direct: self.direct,
                    local: self.local,
                    proxy_tlvs: &self.proxy_tlvs,
                    sni: self.key.server_name.as_deref(),
                    tls: tls.as_deref(),
                };
                crate::proxy::tcp::serve_tcp(io, proxy, &self.shared, conn).await;
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

/// Closes with RST (linger 0), as Envoy does when no filter chain matches.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
