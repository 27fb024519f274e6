//! Upstream TLS: a rustls client configuration built from Envoy's `UpstreamTlsContext`
//! (DestinationRule `tls` SIMPLE/MUTUAL origination, ServiceEntry egress).
use crate::tls::error::TlsError;
use crate::tls::params::{self, Side};
use crate::tls::server::{certificate_watches, check_common_unsupported, validation_source};
use crate::tls::store::{CertificateWatch, SecretStore, ValidationWatch};
use crate::tls::verify::UpstreamServerVerifier;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// Presents the current material of a certificate secret as the client certificate.
#[derive(Debug)]
struct ClientCertFromStore {
    cert: CertificateWatch,
}

impl ResolvesClientCert for ClientCertFromStore {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let m = self.cert.borrow().clone()?;
        m.certified_key.key.choose_scheme(schemes)?;
        Some(m.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Session resumption that forgets its sessions when the trusted CA or the client
/// certificate changes: a resumed session skips certificate verification and keeps the
/// old client identity, so a rotation must force full handshakes (as Envoy, which builds
/// a new SSL context, with an empty session cache, on every secret update).
struct RotationAwareSessions {
    trust: Option<ValidationWatch>,
    cert: Option<CertificateWatch>,
    size: usize,
    /// The material the sessions were made with (held, so that comparing by address is
    /// sound) and the sessions.
    inner: std::sync::Mutex<Generation>,
}

type Generation = (
    Option<Arc<crate::tls::verify::ValidationMaterial>>,
    Option<Arc<crate::tls::CertificateMaterial>>,
    Arc<rustls::client::ClientSessionMemoryCache>,
);

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl std::fmt::Debug for RotationAwareSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationAwareSessions")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RotationAwareSessions {
    fn new(trust: Option<ValidationWatch>, cert: Option<CertificateWatch>, size: usize) -> Self {
        let s = RotationAwareSessions {
            trust,
            cert,
            size,
            inner: std::sync::Mutex::new((
                None,
                None,
                Arc::new(rustls::client::ClientSessionMemoryCache::new(size)),
            )),
        };
        let _ = s.cache();
        s
    }

    /// The cache for the material in force, emptied if the material changed.
    fn cache(&self) -> Arc<rustls::client::ClientSessionMemoryCache> {
        let trust = self.trust.as_ref().and_then(|w| w.borrow().clone());
        let cert = self.cert.as_ref().and_then(|w| w.borrow().clone());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !same(&inner.0, &trust) || !same(&inner.1, &cert) {
            *inner = (
                trust,
                cert,
                Arc::new(rustls::client::ClientSessionMemoryCache::new(self.size)),
            );
        }
        inner.2.clone()
    }
}

impl rustls::client::ClientSessionStore for RotationAwareSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.cache().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.cache().kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.cache().set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.cache().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache().take_tls13_ticket(server_name)
    }
}

/// Sessions kept per upstream TLS context unless `max_session_keys` says otherwise
/// (rustls' own default).
const DEFAULT_SESSIONS: usize = 256;

/// An upstream TLS context ready to connect.
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// The SNI to send (`sni`); `None` means none unless the caller gives a host.
    pub sni: Option<ServerName<'static>>,
    /// Use the request's host as SNI (`auto_host_sni`): the caller passes it to `connect`.
    pub auto_host_sni: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Builds the client side of a cluster's transport socket. Without a validation
    /// context, or with an empty one, the server certificate is not verified, as in
    /// Envoy (Istio writes an empty one for `insecureSkipVerify`).
    pub fn from_context(
        ctx: &UpstreamTlsContext,
        store: &SecretStore,
        name: &str,
    ) -> Result<UpstreamTls, TlsError> {
        let default_common = Default::default();
        let common = ctx.common_tls_context.as_ref().unwrap_or(&default_common);
        check_common_unsupported(common, name)?;
        if ctx.allow_renegotiation {
            return Err(TlsError::unsupported(
                &format!("{name}: allow_renegotiation"),
                "renegotiation is not supported",
            ));
        }
        #[allow(deprecated)]
        if ctx.enforce_rsa_key_usage.is_some_and(|b| b.value) {
            return Err(TlsError::unsupported(
                &format!("{name}: enforce_rsa_key_usage"),
                "not supported",
            ));
        }
        let params = params::resolve(
            common.tls_params.as_ref(),
            Side::Upstream,
            &format!("{name}: common_tls_context.tls_params"),
        )?;
        let builder = ClientConfig::builder_with_provider(params.provider)
            .with_protocol_versions(&params.versions)?;
        let stats = store.stats();
        // A validation context with no CA, names or pins verifies nothing in Envoy (its
        // verify mode stays SSL_VERIFY_NONE): Istio's insecureSkipVerify is written so.
        let source = validation_source(common, store, name)?
            .filter(|s| s.dynamic.is_some() || s.default.as_ref().is_some_and(|m| !m.is_empty()));
        let trust_watch = source.as_ref().and_then(|s| s.dynamic.clone());
        let builder = match source {
            Some(source) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UpstreamServerVerifier {
                    source,
                    check_server_name: ctx.auto_sni_san_validation,
                    stats,
                })),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification)),
        };
        let has_cert = !common.tls_certificates.is_empty()
            || !common.tls_certificate_sds_secret_configs.is_empty();
        let mut cert_watch = None;
        let mut config = if has_cert {
            let mut watches = certificate_watches(common, store, name)?;
            let cert = watches.remove(0);
            cert_watch = Some(cert.clone());
            builder.with_client_cert_resolver(Arc::new(ClientCertFromStore { cert }))
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        config.enable_sni = true;
        let sessions = ctx
            .max_session_keys
            .map(|n| n.value as usize)
            .unwrap_or(DEFAULT_SESSIONS);
        config.resumption = if sessions == 0 {
            rustls::client::Resumption::disabled()
        } else {
            rustls::client::Resumption::store(Arc::new(RotationAwareSessions::new(
                trust_watch,
                cert_watch,
                sessions,
            )))
        };
        let sni = if ctx.sni.is_empty() {
            None
        } else {
            Some(ServerName::try_from(ctx.sni.clone()).map_err(|e| {
                TlsError::invalid(&format!("{name}: sni"), format!("`{}`: {e}", ctx.sni))
            })?)
        };
        Ok(UpstreamTls {
            config: Arc::new(config),
            sni,
            auto_host_sni: ctx.auto_host_sni,
        })
    }

    /// The rustls configuration.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Runs the client handshake on `io`. `host` is used as SNI when `auto_host_sni` is
    /// set or no `sni` is configured; failing both, an IP-literal name is used, which
    /// rustls sends without SNI.
    pub async fn connect<IO>(&self, io: IO, host: Option<&str>) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let from_host = || host.and_then(|h| ServerName::try_from(h.to_string()).ok());
        let name = if self.auto_host_sni {
            from_host().or_else(|| self.sni.clone())
        } else {
            self.sni.clone().or_else(from_host)
        };
        let name = name.unwrap_or(ServerName::IpAddress(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
        ));
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
    }
}

/// Envoy without a validation context accepts any server certificate; signatures are
/// still checked so the handshake proves possession of the key.
#[derive(Debug)]
pub(crate) struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
