//! Challenge responses shared between the ACME issuer (which adds them while an order is
//! pending) and whatever answers the ACME server: the gateway's HTTP listener serving
//! `/.well-known/acme-challenge/TOKEN`, its TLS listener answering ALPN `acme-tls/1`,
//! or the small standalone responders here.
use bytes::Bytes;
use http_body_util::Full;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The path prefix of HTTP-01 challenges.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
struct Maps {
    http01: HashMap<String, String>,
    tls_alpn: HashMap<String, Arc<CertifiedKey>>,
}

/// Pending challenge responses. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ChallengeResponses {
    maps: Arc<RwLock<Maps>>,
}

impl std::fmt::Debug for ChallengeResponses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.read();
        f.debug_struct("ChallengeResponses")
            .field("http01", &m.http01.len())
            .field("tls_alpn", &m.tls_alpn.len())
            .finish()
    }
}

impl ChallengeResponses {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers `token` with `key_authorization` until removed.
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        self.write()
            .http01
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_http01(&self, token: &str) {
        self.write().http01.remove(token);
    }

    /// The response body for an HTTP request path, if it is a pending HTTP-01 challenge.
    /// The gateway's HTTP listeners call this before routing.
    pub fn http01_for_path(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        if token.is_empty() || token.contains('/') {
            return None;
        }
        self.read().http01.get(token).cloned()
    }

    /// Serves `domain`'s TLS-ALPN-01 certificate until removed.
    pub fn set_tls_alpn(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.write()
            .tls_alpn
            .insert(domain.to_ascii_lowercase(), key);
    }

    pub fn remove_tls_alpn(&self, domain: &str) {
        self.write().tls_alpn.remove(&domain.to_ascii_lowercase());
    }

    /// Whether anything is pending (listeners may skip checks otherwise).
    pub fn is_empty(&self) -> bool {
        let m = self.read();
        m.http01.is_empty() && m.tls_alpn.is_empty()
    }

    /// Whether a ClientHello's ALPN offer is an ACME TLS-ALPN-01 validation (exactly
    /// `acme-tls/1`): the gateway then answers with [`tls_alpn_server_config`](Self::tls_alpn_server_config)
    /// instead of the filter chain's own TLS context.
    pub fn is_tls_alpn_validation(alpn: &[Vec<u8>]) -> bool {
        alpn.len() == 1 && alpn[0] == ACME_TLS_ALPN
    }

    /// A rustls server configuration answering TLS-ALPN-01 validations from this map.
    pub fn tls_alpn_server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(Arc::new(self.clone()))
            })
            // The default provider supports both versions; this branch cannot be taken.
            .unwrap_or_else(|_| {
                rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .expect("default protocol versions")
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(self.clone()))
            });
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ChallengeResponses {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let alpn_ok = hello
            .alpn()
            .is_some_and(|mut it| it.any(|p| p == ACME_TLS_ALPN));
        if !alpn_ok {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        self.read().tls_alpn.get(&name).cloned()
    }
}

/// Builds the self-signed TLS-ALPN-01 certificate for `domain` (RFC 8737): the domain as
/// its only SAN and a critical `acmeIdentifier` extension holding the SHA-256 digest of
/// the key authorization.
pub fn tls_alpn_certificate(
    domain: &str,
    key_authorization_digest: &[u8],
) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(
            key_authorization_digest,
        ));
    let cert = params.self_signed(&key)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Serves HTTP-01 challenges on `listener` until `shutdown` resolves: a minimal HTTP/1.1
/// server answering `GET /.well-known/acme-challenge/TOKEN`, 404 otherwise. For setups
/// without a gateway HTTP listener on the validation port, and for tests.
pub async fn serve_http01(
    listener: tokio::net::TcpListener,
    responses: ChallengeResponses,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP-01 responder accept failed");
                    continue;
                }
            },
        };
        let responses = responses.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = responses.http01_for_path(req.uri().path());
                    async move {
                        match answer {
                            Some(body) => hyper::Response::builder()
                                .header("content-type", "application/octet-stream")
                                .body(Full::new(Bytes::from(body))),
                            None => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        }
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, svc);
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await {
                tracing::debug!(error = %e, "HTTP-01 responder connection timed out");
            }
        });
    }
}

/// Serves TLS-ALPN-01 validations on `listener` until `shutdown` resolves.
pub async fn serve_tls_alpn(
    listener: tokio::net::TcpListener,
    responses: ChallengeResponses,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(responses.tls_alpn_server_config());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // The validation is the handshake itself; the server then closes.
            let hs =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                    .await;
            if let Ok(Ok(mut tls)) = hs {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_paths() {
        let c = ChallengeResponses::default();
        c.set_http01("tok", "tok.thumb");
        let cases = [
            ("/.well-known/acme-challenge/tok", Some("tok.thumb")),
            ("/.well-known/acme-challenge/other", None),
            ("/.well-known/acme-challenge/", None),
            ("/.well-known/acme-challenge/tok/x", None),
            ("/tok", None),
        ];
        for (path, want) in cases {
            assert_eq!(c.http01_for_path(path).as_deref(), want, "{path}");
        }
        c.remove_http01("tok");
        assert!(c.is_empty());
        assert!(ChallengeResponses::is_tls_alpn_validation(&[
            b"acme-tls/1".to_vec()
        ]));
        assert!(!ChallengeResponses::is_tls_alpn_validation(&[
            b"h2".to_vec(),
            b"acme-tls/1".to_vec()
        ]));
    }
}
