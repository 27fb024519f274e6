//! TLS to the control plane's mutual-TLS port (15012) for tonic channels: the server's
//! certificate verified against the trust anchors of `--ca-root` and the name of
//! `--xds-server-name` (istiod's `istiod.istio-system.svc`), the client certificate
//! resolved at each handshake, so that a connection made after a rotation presents the
//! new one.
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Why the control plane's TLS cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: String },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    #[error("{source_name}: a trust anchor cannot be used: {error}")]
    Anchor { source_name: String, error: String },
    #[error("server name `{0}` is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The trust anchors and server name of the control plane's TLS port. Clones share the
/// anchors: roots learned later from the CA's answers ([`ControlPlaneTls::trust_roots`],
/// a root being rotated in) apply to every connection made after.
#[derive(Clone)]
pub struct ControlPlaneTls {
    roots_der: Arc<Vec<CertificateDer<'static>>>,
    verifier: Arc<LearnedRoots>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ControlPlaneTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneTls")
            .field("anchors", &self.roots_der.len())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Verifies the server against the anchors and the roots learned since.
#[derive(Debug)]
struct LearnedRoots {
    current: arc_swap::ArcSwap<WebPkiServerVerifier>,
}

impl LearnedRoots {
    fn verifier(roots: &[CertificateDer<'static>]) -> Result<Arc<WebPkiServerVerifier>, String> {
        let mut store = RootCertStore::empty();
        for der in roots {
            store.add(der.clone()).map_err(|e| e.to_string())?;
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), crate::tls::provider())
            .build()
            .map_err(|e| e.to_string())
    }
}

impl rustls::client::danger::ServerCertVerifier for LearnedRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.current.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

impl ControlPlaneTls {
    /// From a PEM file of trust anchors (`--ca-root`).
    pub fn from_file(path: &Path, server_name: &str) -> Result<ControlPlaneTls, TransportError> {
        let pem = std::fs::read_to_string(path).map_err(|e| TransportError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        Self::from_pem(&pem, &path.display().to_string(), server_name)
    }

    /// From PEM trust anchors; `source_name` names them in errors.
    pub fn from_pem(
        pem: &str,
        source_name: &str,
        server_name: &str,
    ) -> Result<ControlPlaneTls, TransportError> {
        let mut roots_der = Vec::new();
        for item in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots_der.push(item.map_err(|e| TransportError::Anchor {
                source_name: source_name.to_string(),
                error: e.to_string(),
            })?);
        }
        if roots_der.is_empty() {
            return Err(TransportError::NoCertificate(source_name.to_string()));
        }
        let verifier =
            LearnedRoots::verifier(&roots_der).map_err(|error| TransportError::Anchor {
                source_name: source_name.to_string(),
                error,
            })?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TransportError::ServerName(server_name.to_string()))?;
        Ok(ControlPlaneTls {
            roots_der: Arc::new(roots_der),
            verifier: Arc::new(LearnedRoots {
                current: arc_swap::ArcSwap::new(verifier),
            }),
            server_name,
        })
    }

    /// The trust anchors given at start, DER.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    /// Trusts `roots` (the roots of the CA's latest answer, received over a verified
    /// connection) besides the anchors, for connections made from now on: when the mesh
    /// root is rotated, the control plane's new serving certificate stays trusted.
    pub fn trust_roots(&self, roots: &[CertificateDer<'static>]) {
        let mut all = self.roots_der.as_ref().clone();
        for r in roots {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        match LearnedRoots::verifier(&all) {
            Ok(v) => self.verifier.current.store(v),
            Err(e) => {
                tracing::warn!(error = %e, "a root of the CA's answer cannot be used; keeping the current ones")
            }
        }
    }

    /// A client configuration: the server verified against the anchors (and the roots
    /// learned since), and `client_cert` (resolved at each handshake) presented when the
    /// server asks.
    pub fn client_config(
        &self,
        client_cert: Option<Arc<dyn ResolvesClientCert>>,
    ) -> Result<Arc<ClientConfig>, TransportError> {
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone());
        let mut config = match client_cert {
            Some(r) => builder.with_client_cert_resolver(r),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A tonic connector that makes TLS connections with `config`.
    pub fn connector(&self, config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector {
            config,
            server_name: self.server_name.clone(),
        }
    }

    /// A gRPC channel to `address` (`HOST:PORT`, or `https://HOST:PORT`) over TLS with
    /// `config`.
    pub async fn channel(
        &self,
        address: &str,
        config: Arc<ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("https://{address}")
        };
        tonic::transport::Endpoint::from_shared(uri)?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_with_connector(self.connector(config))
            .await
    }
}

/// Presents one certificate (a renewal call authenticated by the current one).
#[derive(Debug)]
pub struct FixedClientCert(pub Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connects TCP, then TLS, for a tonic channel.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
