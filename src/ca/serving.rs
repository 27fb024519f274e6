//! The control plane's own TLS on 15012: a serving certificate from the CA, renewed at
//! half its life, and client certificates from the CA verified when a client sends one.
//!
//! A client certificate is optional at the handshake (a workload asking for its first
//! certificate has none, only a token); what needs one refuses the call itself: ADS
//! streams require it, CreateCertificate takes it as a renewal credential. Every
//! accepted connection carries a [`PeerInfo`] that tonic puts into each request's
//! extensions.
use super::authority::{Ca, CaError};
use super::spiffe::SpiffeId;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The DNS names istiod's serving certificate carries, which Istio's agents expect.
pub const ISTIOD_NAMES: [&str; 2] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
];
/// Longest a serving certificate lives (renewed at half of it).
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; further connections wait in the accept queue.
const MAX_HANDSHAKES: usize = 512;

/// The names of the serving certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// istiod's DNS names, the address listened on (loopback for both families when it
    /// is unspecified), and `extra` names or addresses.
    pub fn for_listener(addr: SocketAddr, extra: &[String]) -> ServingNames {
        let mut names = ServingNames {
            dns: ISTIOD_NAMES.iter().map(|s| s.to_string()).collect(),
            ips: Vec::new(),
        };
        if addr.ip().is_unspecified() {
            names.ips.push(IpAddr::from([127, 0, 0, 1]));
            names.ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        } else {
            names.ips.push(addr.ip());
        }
        for e in extra {
            match e.parse::<IpAddr>() {
                Ok(ip) if !names.ips.contains(&ip) => names.ips.push(ip),
                Ok(_) => {}
                Err(_) if !names.dns.contains(e) => names.dns.push(e.clone()),
                Err(_) => {}
            }
        }
        names
    }
}

/// Who is on the other end of a 15012 connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// The client sent a certificate, and it chains to the CA.
    pub verified_certificate: bool,
    /// The SPIFFE identity of that certificate, in the CA's trust domain; `None` without
    /// one (no certificate, or not exactly one such URI).
    pub identity: Option<SpiffeId>,
}

/// The serving certificate, swapped when renewed.
#[derive(Debug)]
struct ServingCert {
    current: arc_swap::ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Verifies client certificates against the CA's roots, lending the CA's own
/// intermediates to clients that send only their leaf. Follows the CA: after a reload
/// (a root rotated in or out), the next handshake uses the new trust bundle.
struct CaClientVerifier {
    ca: Arc<Ca>,
    current: arc_swap::ArcSwap<CaTrust>,
}

impl std::fmt::Debug for CaClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClientVerifier")
            .field("version", &self.current.load().version)
            .finish_non_exhaustive()
    }
}

/// The verifier of one version of the CA.
struct CaTrust {
    version: u64,
    inner: Arc<dyn ClientCertVerifier>,
    intermediates: Vec<CertificateDer<'static>>,
}

impl CaTrust {
    fn of(ca: &Ca) -> Result<CaTrust, ServingError> {
        let version = ca.version();
        let mut roots = rustls::RootCertStore::empty();
        for r in ca.roots_der() {
            roots
                .add(r)
                .map_err(|e| ServingError::Tls(format!("root certificate: {e}")))?;
        }
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServingError::Tls(e.to_string()))?;
        Ok(CaTrust {
            version,
            inner,
            intermediates: ca.intermediates_der(),
        })
    }
}

impl CaClientVerifier {
    fn new(ca: Arc<Ca>) -> Result<CaClientVerifier, ServingError> {
        let current = arc_swap::ArcSwap::from_pointee(CaTrust::of(&ca)?);
        Ok(CaClientVerifier { ca, current })
    }

    /// The verifier of the CA's current version.
    fn trust(&self) -> Arc<CaTrust> {
        let held = self.current.load_full();
        if held.version == self.ca.version() {
            return held;
        }
        match CaTrust::of(&self.ca) {
            Ok(next) => {
                let next = Arc::new(next);
                self.current.store(next.clone());
                next
            }
            Err(e) => {
                tracing::error!(error = %e, "the reloaded CA's roots are unusable; verifying with the previous ones");
                held
            }
        }
    }
}

impl ClientCertVerifier for CaClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the roots change with the CA, and mesh clients send their one
        // certificate whatever the server names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust();
        if trust.intermediates.is_empty() {
            return trust
                .inner
                .verify_client_cert(end_entity, intermediates, now);
        }
        let mut all: Vec<CertificateDer<'_>> = intermediates.to_vec();
        all.extend(trust.intermediates.iter().cloned());
        trust.inner.verify_client_cert(end_entity, &all, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust()
            .inner
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust()
            .inner
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust().inner.supported_verify_schemes()
    }
}

/// TLS for the control plane's 15012 port.
pub struct XdsTls {
    ca: Arc<Ca>,
    names: ServingNames,
    cert: Arc<ServingCert>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl XdsTls {
    /// Issues the serving certificate for `names` and builds the server configuration
    /// (HTTP/2 only, TLS 1.2 and 1.3, optional client certificates of the CA).
    pub fn new(ca: Arc<Ca>, names: ServingNames) -> Result<XdsTls, ServingError> {
        let provider = crate::tls::provider();
        let first = issue(&ca, &names)?;
        let cert = Arc::new(ServingCert {
            current: arc_swap::ArcSwap::from_pointee(first),
        });
        let verifier = Arc::new(CaClientVerifier::new(ca.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ServingError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(XdsTls {
            ca,
            names,
            cert,
            config: Arc::new(config),
        })
    }

    /// The rustls configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The names of the serving certificate.
    pub fn names(&self) -> &ServingNames {
        &self.names
    }

    /// The serving certificate's chain, DER, leaf first.
    pub fn serving_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current.load().cert.clone()
    }

    /// Renews the serving certificate at half its life and whenever the CA is reloaded,
    /// for as long as the future runs;
    /// a failed renewal is retried every minute while the current one still serves.
    pub async fn renew_forever(self: Arc<Self>) {
        let mut changes = self.ca.changes();
        loop {
            let wait = {
                let leaf = self.cert.current.load();
                half_life_left(leaf.end_entity_cert().ok().map(|c| c.as_ref()))
            };
            // A reloaded CA (a new signer) re-issues at once, so that clients which
            // trust only the new root can still connect.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = changes.changed() => if changed.is_err() {
                    tokio::time::sleep(wait).await;
                },
            }
            match issue(&self.ca, &self.names) {
                Ok(next) => {
                    self.cert.current.store(Arc::new(next));
                    tracing::info!("renewed the control plane's serving certificate");
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewing the control plane's serving certificate failed; retrying in 1m");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }

    /// Accepts connections on `listener`, handshakes in their own tasks, and yields the
    /// connections that completed one, for tonic's `serve_with_incoming`.
    pub fn incoming(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let trust_domain = self.ca.trust_domain().to_string();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, addr) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait rather than spin.
                            tracing::warn!(error = %e, "accepting on the TLS xDS port");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, td) = (acceptor.clone(), tx.clone(), trust_domain.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let peer = peer_info(&stream, addr, &td);
                            let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn issue(ca: &Ca, names: &ServingNames) -> Result<CertifiedKey, ServingError> {
    let (issued, key) = ca.issue_serving(&names.dns, &names.ips, SERVING_TTL)?;
    let mut chain = vec![CertificateDer::from(issued.leaf_der)];
    chain.extend(ca.intermediates_der().iter().cloned());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ServingError::Tls(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Time until half of a certificate's remaining life from its `notBefore` has passed.
fn half_life_left(leaf: Option<&[u8]>) -> Duration {
    let Some((nb, na)) = leaf
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| {
            (
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
            )
        })
    else {
        return Duration::from_secs(60);
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let renew_at = nb + (na - nb) / 2;
    Duration::from_secs((renew_at - now).max(1) as u64)
}

/// The identity in a leaf certificate: exactly one SPIFFE URI SAN in `trust_domain`.
pub fn certificate_identity(der: &[u8], trust_domain: &str) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(uri)
        .ok()
        .filter(|id| id.trust_domain == trust_domain)
}

fn peer_info(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
    trust_domain: &str,
) -> PeerInfo {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    PeerInfo {
        addr: Some(addr),
        verified_certificate: leaf.is_some(),
        identity: leaf.and_then(|c| certificate_identity(c, trust_domain)),
    }
}

/// A TLS connection on 15012 and who is on its other end.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
