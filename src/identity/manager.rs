//! The gateway's workload certificate: obtained from the control plane's CA with a join
//! token (or a service-account JWT), then renewed with itself, at about half its life.
//!
//! One worker, as ztunnel's `identity/manager.rs` and istio-agent's secret cache: a new
//! ECDSA P-256 key for each certificate, made in memory; a CSR naming exactly the
//! configured SPIFFE identity; Istio's `CreateCertificate` over TLS to the control plane,
//! authenticated by `authorization: Bearer TOKEN` (the token file is read again at each
//! use, so it can be rotated) when no valid certificate is held, by the current
//! certificate over mutual TLS otherwise. A failed call is retried with capped,
//! jittered exponential back-off while the current certificate keeps serving; a renewal
//! the CA refuses for the certificate's sake is tried next with the token.
use super::transport::{ControlPlaneTls, FixedClientCert};
use crate::ca::SpiffeId;
use crate::ca::service::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};
use crate::controlplane::workload::{ROOT_SECRET, WORKLOAD_SECRET};
use crate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret::Type,
};
use base64::Engine as _;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, pki_types::CertificateDer};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A workload certificate and its key, as the CA issued it.
pub struct WorkloadCertificate {
    pub identity: SpiffeId,
    /// PEM certificates as the CA answered: the leaf first, the root last.
    pub chain: Vec<String>,
    /// The trust bundle: the root of the CA's answer and the `--ca-root` anchors (PEM).
    pub roots: Vec<String>,
    /// The leaf's serial number (hex, `:`-separated).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// PKCS#8 PEM, in memory only.
    key_pem: String,
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &unix(self.not_after))
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl WorkloadCertificate {
    /// True while `t` is within the leaf's validity.
    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        self.not_before <= t && t < self.not_after
    }

    /// The certificate (leaf and intermediates) and signing key for TLS handshakes.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The SDS secrets Istio's proxies use: `default` (the chain as the CA answered it
    /// and the key) and `ROOTCA` (the trust bundle).
    pub fn sds_secrets(&self) -> [Secret; 2] {
        let inline = |s: String| DataSource {
            specifier: Some(Specifier::InlineString(s)),
            ..Default::default()
        };
        [
            Secret {
                name: WORKLOAD_SECRET.into(),
                r#type: Some(Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(self.chain.concat())),
                    private_key: Some(inline(self.key_pem.clone())),
                    ..Default::default()
                })),
            },
            Secret {
                name: ROOT_SECRET.into(),
                r#type: Some(Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(self.roots.concat())),
                    ..Default::default()
                })),
            },
        ]
    }

    /// What an admin page shows: identity, serial, validity, chain and roots; never the
    /// key.
    pub fn summary(&self) -> serde_json::Value {
        let now = SystemTime::now();
        serde_json::json!({
            "identity": self.identity.to_string(),
            "serial_number": self.serial,
            "valid_from": httpdate::fmt_http_date(self.not_before),
            "expiration_time": httpdate::fmt_http_date(self.not_after),
            "not_after_unix": unix(self.not_after),
            "seconds_until_expiration": self.not_after.duration_since(now).map_or(0, |d| d.as_secs()),
            "cert_chain": self.chain,
            "ca_cert": self.roots,
        })
    }
}

/// Follows the current workload certificate.
#[derive(Clone, Debug)]
pub struct CertificateHandle {
    rx: watch::Receiver<Option<Arc<WorkloadCertificate>>>,
}

impl CertificateHandle {
    /// The certificate held now (possibly expired).
    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        self.rx.borrow().clone()
    }

    /// The certificate held now if it is valid now.
    pub fn current_valid(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current().filter(|c| c.is_valid_at(SystemTime::now()))
    }

    /// Waits for a certificate that is valid now.
    pub async fn wait_valid(&mut self) -> Arc<WorkloadCertificate> {
        loop {
            if let Some(c) = self.current_valid() {
                return c;
            }
            // An expired one is replaced by the manager; one not valid yet (a clock
            // behind the CA's) becomes valid by itself: looked at again every second.
            let next = self.rx.changed();
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), next).await {
                // The manager is gone: no certificate will come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A client-certificate resolver presenting the current valid certificate at each
    /// handshake.
    pub fn resolver(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(CurrentClientCert(self.clone()))
    }
}

#[derive(Debug)]
struct CurrentClientCert(CertificateHandle);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current_valid().map(|c| c.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Counters and the current certificate, for stats and admin pages.
#[derive(Debug, Default)]
pub struct IdentityStatus {
    /// Certificates obtained, the first included.
    pub issued: AtomicU64,
    /// Calls to the CA that failed (or were refused).
    pub failures: AtomicU64,
    current: Mutex<Option<Arc<WorkloadCertificate>>>,
}

impl IdentityStatus {
    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Certificates that replaced an earlier one.
    pub fn rotations(&self) -> u64 {
        self.issued.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Unix time of the current certificate's expiry (0 without one).
    pub fn expiry_unix(&self) -> u64 {
        self.current().map_or(0, |c| unix(c.not_after))
    }
}

/// How the manager reaches the CA and what it asks for.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The control plane's TLS port, `HOST:PORT`.
    pub address: String,
    pub transport: ControlPlaneTls,
    /// The identity asked for; the credential decides what the CA grants.
    pub identity: SpiffeId,
    /// A join token or a service-account JWT, read at each use.
    pub token_file: Option<PathBuf>,
    /// Lifetime asked for (the CA bounds it).
    pub requested_ttl: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Longest a call to the CA (connection included) may take.
    pub call_timeout: Duration,
}

impl ManagerOptions {
    /// Defaults for everything but where to go and what to ask for.
    pub fn new(address: &str, transport: ControlPlaneTls, identity: SpiffeId) -> ManagerOptions {
        ManagerOptions {
            address: address.to_string(),
            transport,
            identity,
            token_file: None,
            requested_ttl: Duration::from_secs(24 * 3600),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a certificate was not obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("no credential: {0}")]
    Credential(String),
    #[error("connecting to the CA at {address}: {error}")]
    Connect { address: String, error: String },
    #[error("the CA did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the CA refuses to issue {identity}: {message}")]
    OtherIdentity { identity: String, message: String },
    #[error("the CA refuses ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the CA's answer cannot be used: {0}")]
    Answer(String),
    #[error("making the key or CSR: {0}")]
    Key(String),
}

impl IssueError {
    /// The CA refused the credential itself (not a passing fault).
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            IssueError::Refused {
                code: tonic::Code::Unauthenticated | tonic::Code::PermissionDenied,
                ..
            } | IssueError::OtherIdentity { .. }
        )
    }
}

/// The credential of one call.
enum Credential {
    Token(String),
    Certificate(Arc<WorkloadCertificate>),
}

impl Credential {
    fn name(&self) -> &'static str {
        match self {
            Credential::Token(_) => "token",
            Credential::Certificate(_) => "certificate",
        }
    }
}

type IssueHook = Box<dyn Fn(&Arc<WorkloadCertificate>) + Send + Sync>;

/// Obtains and renews the workload certificate; [`CertificateManager::run`] drives it.
pub struct CertificateManager {
    options: ManagerOptions,
    tx: watch::Sender<Option<Arc<WorkloadCertificate>>>,
    status: Arc<IdentityStatus>,
    hooks: Vec<IssueHook>,
}

/// When to renew a certificate of `life`: at half of it, less up to a tenth at random
/// (as the control plane renews its workload certificates), so that gateways started
/// together do not all renew at once. Never sooner than a second: a CA granting
/// lifetimes of a blink is not called in a tight loop.
pub fn renewal_delay(life: Duration) -> Duration {
    let jitter = life.mul_f64(rand::random::<f64>() / 10.0);
    (life / 2)
        .saturating_sub(jitter)
        .max(Duration::from_secs(1))
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..1.5))
}

/// An error and its causes, on one line (tonic's transport errors say little alone).
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        next = c.source();
    }
    s
}

impl CertificateManager {
    pub fn new(options: ManagerOptions) -> CertificateManager {
        CertificateManager {
            options,
            tx: watch::channel(None).0,
            status: Arc::default(),
            hooks: Vec::new(),
        }
    }

    /// Follows the current certificate.
    pub fn handle(&self) -> CertificateHandle {
        CertificateHandle {
            rx: self.tx.subscribe(),
        }
    }

    pub fn status(&self) -> Arc<IdentityStatus> {
        self.status.clone()
    }

    /// Called with each new certificate before it is published to the handles (the data
    /// plane takes its secrets here, before any connection can present it).
    pub fn on_issue(&mut self, f: impl Fn(&Arc<WorkloadCertificate>) + Send + Sync + 'static) {
        self.hooks.push(Box::new(f));
    }

    /// Runs forever: obtain, renew at half-life, retry with back-off.
    pub async fn run(self) {
        let o = &self.options;
        let mut backoff = o.backoff_initial;
        // The CA refused a renewal by certificate: the next call uses the token.
        let mut token_next = false;
        loop {
            let current = self.tx.borrow().clone();
            // A certificate about to expire would fail the handshake: the token then.
            let usable = current
                .clone()
                .filter(|c| c.is_valid_at(SystemTime::now() + Duration::from_secs(1)));
            let credential = match usable {
                Some(c) if !token_next => Ok(Credential::Certificate(c)),
                _ => self.read_token().map(Credential::Token),
            };
            token_next = false;
            let outcome = match credential {
                Ok(c) => {
                    let source = c.name();
                    let result = self.issue(&c).await;
                    if result.as_ref().is_err_and(IssueError::is_refusal)
                        && matches!(c, Credential::Certificate(_))
                    {
                        token_next = true;
                    }
                    result.map(|cert| (cert, source))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok((cert, source)) => {
                    let cert = Arc::new(cert);
                    let n = self.status.issued.fetch_add(1, Ordering::Relaxed) + 1;
                    let life = cert
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let wait = renewal_delay(life);
                    tracing::info!(identity = %cert.identity, serial = %cert.serial, credential = source, lifetime = ?life, renew_in = ?wait, "{}", if n == 1 { "workload certificate obtained" } else { "workload certificate rotated" });
                    for hook in &self.hooks {
                        hook(&cert);
                    }
                    *self
                        .status
                        .current
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(cert.clone());
                    self.tx.send_replace(Some(cert));
                    backoff = o.backoff_initial;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = jitter(backoff);
                    match current.filter(|c| c.is_valid_at(SystemTime::now())) {
                        Some(c) => {
                            let left = c
                                .not_after
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            tracing::warn!(identity = %o.identity, error = %e, retry_in = ?wait, valid_for = ?left, "renewing the workload certificate failed; keeping the current one")
                        }
                        None => {
                            tracing::error!(identity = %o.identity, error = %e, retry_in = ?wait, "no valid workload certificate: the gateway cannot join the mesh until one is issued")
                        }
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(o.backoff_max);
                }
            }
        }
    }

    fn read_token(&self) -> Result<String, IssueError> {
        let Some(path) = &self.options.token_file else {
            return Err(IssueError::Credential(
                "no valid certificate to renew with and no --token-file".into(),
            ));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            IssueError::Credential(format!("reading the token file {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(IssueError::Credential(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        Ok(token.to_string())
    }

    /// One CreateCertificate call with a new key.
    async fn issue(&self, credential: &Credential) -> Result<WorkloadCertificate, IssueError> {
        let o = &self.options;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Key(e.to_string()))?;
        let csr = csr_pem(&key, &o.identity)?;
        let client_cert: Option<Arc<dyn ResolvesClientCert>> = match credential {
            Credential::Token(_) => None,
            Credential::Certificate(c) => Some(Arc::new(FixedClientCert(c.certified_key()))),
        };
        let config = o
            .transport
            .client_config(client_cert)
            .map_err(|e| IssueError::Key(e.to_string()))?;
        let call = async {
            let channel = o
                .transport
                .channel(&o.address, config, o.call_timeout)
                .await
                .map_err(|e| IssueError::Connect {
                    address: o.address.clone(),
                    error: causes(&e),
                })?;
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr,
                validity_duration: o.requested_ttl.as_secs() as i64,
                metadata: None,
            });
            if let Credential::Token(t) = credential {
                let value = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| IssueError::Credential("the token is not header text".into()))?;
                request.metadata_mut().insert("authorization", value);
            }
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| IssueError::Connect {
                address: o.address.clone(),
                error: causes(&e),
            })?;
            let codec = tonic_prost::ProstCodec::<
                IstioCertificateRequest,
                IstioCertificateResponse,
            >::default();
            let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
            grpc.unary(request, path, codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| self.refusal(s))
        };
        let response = tokio::time::timeout(o.call_timeout, call)
            .await
            .map_err(|_| IssueError::Timeout(o.call_timeout))??;
        let cert = accept(response, key, &o.identity, o.transport.anchors())?;
        // The CA's roots, received over a verified connection, are trusted for the
        // control plane too: a root rotated in keeps the next connection verified.
        let learned: Vec<CertificateDer<'static>> = cert
            .roots
            .iter()
            .filter_map(|pem| rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok())
            .collect();
        o.transport.trust_roots(&learned);
        Ok(cert)
    }

    fn refusal(&self, s: tonic::Status) -> IssueError {
        let message = s.message().to_string();
        match s.code() {
            tonic::Code::PermissionDenied if message.contains("the CSR asks for") => {
                IssueError::OtherIdentity {
                    identity: self.options.identity.to_string(),
                    message: format!(
                        "{message} (the credential is for another identity: --trust-domain, --namespace and --service-account must name the identity the token was made for)"
                    ),
                }
            }
            tonic::Code::Unavailable | tonic::Code::Unknown if message.is_empty() => {
                IssueError::Connect {
                    address: self.options.address.clone(),
                    error: causes(&s),
                }
            }
            code => IssueError::Refused { code, message },
        }
    }
}

/// A PEM CSR for exactly `identity`, signed by `key`.
fn csr_pem(key: &rcgen::KeyPair, identity: &SpiffeId) -> Result<String, IssueError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        identity
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Key(e.to_string()))?,
    )];
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| IssueError::Key(e.to_string()))
}

/// Checks the CA's answer against what was asked (the leaf names exactly `identity` and
/// carries `key`'s public key) and makes the certificate of it.
fn accept(
    response: IstioCertificateResponse,
    key: rcgen::KeyPair,
    identity: &SpiffeId,
    anchors: &[CertificateDer<'static>],
) -> Result<WorkloadCertificate, IssueError> {
    let bad = |m: String| IssueError::Answer(m);
    let mut ders: Vec<CertificateDer<'static>> = Vec::new();
    for pem in &response.cert_chain {
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            ders.push(c.map_err(|e| bad(format!("a certificate of the chain: {e}")))?);
        }
    }
    let leaf_der = ders
        .first()
        .ok_or_else(|| bad("no certificate".into()))?
        .clone();
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
        .map_err(|e| bad(format!("the leaf: {e}")))?;
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris != [identity.uri()] {
        return Err(bad(format!(
            "the leaf names {uris:?}, not exactly {identity}"
        )));
    }
    if leaf.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(bad("the leaf does not carry the key of the CSR".into()));
    }
    let at = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let not_before = at(leaf.validity().not_before);
    let not_after = at(leaf.validity().not_after);
    if not_after <= SystemTime::now() {
        return Err(bad("the leaf has already expired".into()));
    }
    let serial = leaf.raw_serial_as_string();
    // The roots (the self-signed certificates after the leaf: one, or several while a
    // root is rotated) are not sent in handshakes.
    let self_signed = |d: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(d.as_ref())
            .is_ok_and(|(_, c)| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
    };
    let (mut roots, mut presented): (Vec<CertificateDer<'static>>, Vec<_>) =
        (Vec::new(), vec![leaf_der.clone()]);
    for d in ders.iter().skip(1) {
        if self_signed(d) {
            roots.push(d.clone());
        } else {
            presented.push(d.clone());
        }
    }
    for a in anchors {
        if !roots.contains(a) {
            roots.push(a.clone());
        }
    }
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| IssueError::Key(e.to_string()))?;
    Ok(WorkloadCertificate {
        identity: identity.clone(),
        chain: ders.iter().map(|d| der_to_pem(d)).collect(),
        roots: roots.iter().map(|d| der_to_pem(d)).collect(),
        serial,
        not_before,
        not_after,
        key_pem: key.serialize_pem(),
        certified: Arc::new(CertifiedKey::new(presented, signing)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Ca, CaOptions, Csr};

    fn edge() -> SpiffeId {
        SpiffeId::new("cluster.local", "edge", "ingress").unwrap()
    }

    #[test]
    fn the_csr_names_exactly_the_identity() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = Csr::from_pem(&csr_pem(&key, &edge()).unwrap()).unwrap();
        assert_eq!(csr.uris(), [edge().uri()]);
        assert!(csr.check_names(&edge()).is_ok());
    }

    #[test]
    fn an_answer_is_checked_and_made_into_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), CaOptions::default()).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = Csr::from_pem(&csr_pem(&key, &edge()).unwrap()).unwrap();
        let issued = ca.sign(&csr, &edge(), None).unwrap();
        let answer = IstioCertificateResponse {
            cert_chain: issued.chain.clone(),
        };

        // Another key than the CSR's: refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            accept(answer.clone(), other, &edge(), &[]),
            Err(IssueError::Answer(_))
        ));
        // Another identity than asked for: refused.
        let mut asked = edge();
        asked.service_account = "other".into();
        let key2 = rcgen::KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert!(matches!(
            accept(answer.clone(), key2, &asked, &[]),
            Err(IssueError::Answer(_))
        ));

        let cert = accept(answer, key, &edge(), &[]).unwrap();
        assert_eq!(cert.roots.len(), 1);
        assert_eq!(cert.roots[0].trim(), ca.root_pem().trim());
        assert!(cert.is_valid_at(SystemTime::now()));
        assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
        assert!(!cert.summary().to_string().contains("PRIVATE KEY"));
        let [default, rootca] = cert.sds_secrets();
        assert_eq!(default.name, "default");
        assert_eq!(rootca.name, "ROOTCA");
        let Some(Type::TlsCertificate(tls)) = default.r#type else {
            panic!("default is a tls_certificate");
        };
        let key_pem = match tls.private_key.and_then(|d| d.specifier) {
            Some(Specifier::InlineString(s)) => s,
            other => panic!("inline key expected, got {other:?}"),
        };
        assert!(key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_is_at_about_half_life() {
        let life = Duration::from_secs(100);
        for _ in 0..100 {
            let d = renewal_delay(life);
            assert!(
                d <= Duration::from_secs(50) && d >= Duration::from_secs(40),
                "{d:?}"
            );
        }
        assert_eq!(
            renewal_delay(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
    }
}
