//! The certificate authority: its signing certificate and key, kept in a directory in
//! Istio's layouts, and the leaf certificates it signs.
//!
//! Two layouts, as istiod reads them:
//! - **Self-signed** (made on first start): `root-cert.pem` (a self-signed ECDSA P-256
//!   root, CA:true, keyCertSign) and `ca-key.pem` (its key, mode 0600). The root signs
//!   leaves itself.
//! - **Plug-in** (Istio's `cacerts`): `ca-cert.pem` (an intermediate), `ca-key.pem` (its
//!   key), `cert-chain.pem` (the intermediate and whatever lies between it and the root)
//!   and `root-cert.pem` (the root). Leaves are signed by the intermediate.
//!
//! In both, `root-cert.pem` is the trust anchor clients need. A chain handed out is the
//! leaf, then the intermediates, then the root, as istiod's `cert_chain`.
use super::csr::Csr;
use super::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// File names of Istio's CA layouts.
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CA_CERT: &str = "ca-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Lifetime of a root made on first start (istiod's self-signed root: 10 years).
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a leaf's `notBefore` is set, for peers whose clocks run a little behind.
const BACKDATE: Duration = Duration::from_secs(60);
/// istiod's default workload certificate lifetime, used when a request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How the CA is set up.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The trust domain of every identity the CA signs (`cluster.local`).
    pub trust_domain: String,
    /// Longest lifetime of a leaf (CreateCertificate refuses longer requests; the
    /// lifetimes meshgate picks itself are cut to it).
    pub max_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            trust_domain: "cluster.local".into(),
            max_ttl: DEFAULT_TTL,
        }
    }
}

/// Which layout the CA directory had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaLayout {
    /// The self-signed root was made now.
    Created,
    /// An existing self-signed root was loaded.
    SelfSigned,
    /// Istio's plug-in layout: leaves are signed by `ca-cert.pem`.
    PlugIn,
}

/// Why the CA cannot be loaded or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} is readable by other users (mode {mode:o}); a CA key must not be: chmod 600 {path}"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("signing failed: {0}")]
    Sign(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A signed leaf and the chain that goes with it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// PEM certificates, one per entry: the leaf first, the root last.
    pub chain: Vec<String>,
    /// The leaf in DER.
    pub leaf_der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    /// The whole chain as one PEM bundle (what a `cert-chain.pem` file holds).
    pub fn chain_pem(&self) -> String {
        let mut out = String::new();
        for c in &self.chain {
            out.push_str(c.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One loaded version of the CA directory: the signing certificate and key, and the
/// trust bundle.
struct Signer {
    trust_domain: String,
    max_ttl: Duration,
    issuer: Issuer<'static, KeyPair>,
    /// `notAfter` of the signing certificate: no leaf outlives it.
    signing_not_after: SystemTime,
    /// PEM of the certificates between a leaf and the root (empty for a self-signed CA).
    intermediates_pem: Vec<String>,
    intermediates_der: Vec<CertificateDer<'static>>,
    /// `root-cert.pem` as read (one or more roots).
    root_pem: String,
    roots_der: Vec<CertificateDer<'static>>,
    dir: PathBuf,
    layout: CaLayout,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("trust_domain", &self.trust_domain)
            .field("max_ttl", &self.max_ttl)
            .field("layout", &self.layout)
            .field("dir", &self.dir)
            .field("intermediates", &self.intermediates_der.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the CA from `dir` in either of Istio's layouts, or makes a self-signed root
    /// there if the directory holds neither.
    pub fn load_or_create(dir: &Path, options: CaOptions) -> Result<Signer, CaError> {
        SpiffeId::new(&options.trust_domain, "x", "x")
            .map_err(|e| invalid(dir, format!("trust domain: {e}")))?;
        if options.max_ttl < Duration::from_secs(60) {
            return Err(invalid(
                dir,
                "the maximum certificate lifetime must be 1m or more",
            ));
        }
        let root = dir.join(ROOT_CERT);
        let key = dir.join(CA_KEY);
        let ca_cert = dir.join(CA_CERT);
        if ca_cert.exists() {
            return Self::load_plug_in(dir, options);
        }
        match (root.exists(), key.exists()) {
            (true, true) => Self::load_self_signed(dir, options),
            (false, false) => Self::create(dir, options),
            (true, false) => Err(invalid(
                &key,
                format!("missing: {ROOT_CERT} is there but not the key that signs with it"),
            )),
            (false, true) => Err(invalid(
                &root,
                format!("missing: {CA_KEY} is there but not the certificate it belongs to"),
            )),
        }
    }

    fn create(dir: &Path, options: CaOptions) -> Result<Signer, CaError> {
        create_private_dir(dir)?;
        let (key, cert) = new_root(&options.trust_domain)?;
        // The key first: a root without its key is useless, a key without its root is
        // reported as such on the next start.
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
        write_public(&dir.join(ROOT_CERT), cert.pem().as_bytes())?;
        let mut ca = Self::load_self_signed(dir, options)?;
        ca.layout = CaLayout::Created;
        Ok(ca)
    }

    fn load_self_signed(dir: &Path, options: CaOptions) -> Result<Signer, CaError> {
        let root_path = dir.join(ROOT_CERT);
        let key = load_key(&dir.join(CA_KEY))?;
        let root_pem = read_string(&root_path)?;
        let roots = read_certs(&root_path, &root_pem)?;
        // root-cert.pem may be a bundle (a root being rotated in or out): the root that
        // signs is the one whose public key is ca-key.pem's.
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let signing = roots
            .iter()
            .find(|r| {
                x509_parser::parse_x509_certificate(r)
                    .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == spki.as_slice())
            })
            .ok_or_else(|| {
                invalid(
                    &root_path,
                    format!("no certificate here belongs to the key in {CA_KEY}"),
                )
            })?
            .clone();
        let issuer = Issuer::from_ca_cert_der(&signing, key)
            .map_err(|e| invalid(&root_path, format!("not a usable CA certificate: {e}")))?;
        let signing_not_after = ca_not_after(&root_path, &signing)?;
        let ca = Signer {
            trust_domain: options.trust_domain,
            max_ttl: options.max_ttl,
            issuer,
            signing_not_after,
            intermediates_pem: Vec::new(),
            intermediates_der: Vec::new(),
            root_pem,
            roots_der: roots,
            dir: dir.to_path_buf(),
            layout: CaLayout::SelfSigned,
        };
        ca.probe(&dir.join(CA_KEY))?;
        Ok(ca)
    }

    fn load_plug_in(dir: &Path, options: CaOptions) -> Result<Signer, CaError> {
        let (cert_path, key_path, chain_path, root_path) = (
            dir.join(CA_CERT),
            dir.join(CA_KEY),
            dir.join(CERT_CHAIN),
            dir.join(ROOT_CERT),
        );
        for p in [&key_path, &chain_path, &root_path] {
            if !p.exists() {
                return Err(invalid(
                    p,
                    format!(
                        "missing: Istio's plug-in layout needs {CA_CERT}, {CA_KEY}, {CERT_CHAIN} and {ROOT_CERT}"
                    ),
                ));
            }
        }
        let key = load_key(&key_path)?;
        let cert_pem = read_string(&cert_path)?;
        let cert = read_certs(&cert_path, &cert_pem)?.remove(0);
        let root_pem = read_string(&root_path)?;
        let roots = read_certs(&root_path, &root_pem)?;
        let chain_pem = read_string(&chain_path)?;
        let chain = read_certs(&chain_path, &chain_pem)?;
        // cert-chain.pem is usually ca-cert.pem, any intermediates above it and the root
        // (Istio's `cat ca-cert.pem root-cert.pem`): keep what lies between.
        let mut intermediates_der = vec![cert.clone()];
        for c in chain {
            if c != cert && !roots.contains(&c) && !intermediates_der.contains(&c) {
                intermediates_der.push(c);
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| invalid(&cert_path, format!("not a usable CA certificate: {e}")))?;
        let signing_not_after = ca_not_after(&cert_path, &cert)?;
        let intermediates_pem = intermediates_der.iter().map(|d| pem_of(d)).collect();
        let ca = Signer {
            trust_domain: options.trust_domain,
            max_ttl: options.max_ttl,
            issuer,
            signing_not_after,
            intermediates_pem,
            intermediates_der,
            root_pem,
            roots_der: roots,
            dir: dir.to_path_buf(),
            layout: CaLayout::PlugIn,
        };
        ca.probe(&key_path)?;
        Ok(ca)
    }

    /// Signs a throw-away leaf and verifies it up to `root-cert.pem`: a key that does not
    /// belong to its certificate, or a chain that does not reach the root, is found at
    /// start rather than by every client.
    fn probe(&self, key_path: &Path) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let id = SpiffeId::new(&self.trust_domain, "probe", "probe")
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let leaf = self.sign_key(&key, &id, Some(Duration::from_secs(60)))?;
        verify_chain(
            &leaf.leaf_der,
            &self.intermediates_der,
            &self.roots_der,
            SystemTime::now(),
        )
        .map_err(|e| {
            invalid(
                key_path,
                format!("certificates signed with this key do not verify up to {ROOT_CERT}: {e}"),
            )
        })
    }

    /// The lifetime a request for `requested` gets: the default (24 h) when none is
    /// asked for, never more than the maximum.
    pub fn ttl_for(&self, requested: Option<Duration>) -> Duration {
        requested
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TTL)
            .min(self.max_ttl)
    }

    /// Signs the public key of a verified CSR for `identity` (the caller's identity,
    /// already checked against the CSR's names), valid for `ttl` bounded by the maximum.
    pub fn sign(
        &self,
        csr: &Csr,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, CaError> {
        self.sign_key(csr.public_key(), identity, ttl)
    }

    fn sign_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::Sign(format!(
                "{identity} is not in trust domain {}",
                self.trust_domain
            )));
        }
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?;
        let mut params = leaf_params(vec![SanType::URI(uri)]);
        let (not_before, not_after) = self.validity(self.ttl_for(ttl));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(self.issued(cert, not_before, not_after))
    }

    /// Issues a workload certificate for `identity` with a new ECDSA P-256 key made here
    /// (the control plane serving a proxy's `default` secret over SDS, as istio-agent
    /// does for its Envoy). Returns the chain and the key in PKCS#8 PEM.
    pub fn issue_workload(
        &self,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<(IssuedCertificate, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = self.sign_key(&key, identity, ttl)?;
        Ok((issued, key.serialize_pem()))
    }

    /// Issues a serving certificate with its own new key for DNS names and IP addresses
    /// (the control plane's own TLS on 15012). Returns the chain and the key in PKCS#8 DER.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(IssuedCertificate, Vec<u8>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut sans = Vec::new();
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into().map_err(
                |e: rcgen::Error| CaError::Sign(format!("DNS name `{name}`: {e}")),
            )?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut params = leaf_params(sans);
        let (not_before, not_after) = self.validity(ttl.min(self.max_ttl));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((
            self.issued(cert, not_before, not_after),
            key.serialize_der(),
        ))
    }

    fn validity(&self, ttl: Duration) -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.signing_not_after);
        (now - BACKDATE, not_after)
    }

    fn issued(
        &self,
        cert: rcgen::Certificate,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> IssuedCertificate {
        let mut chain = Vec::with_capacity(self.intermediates_pem.len() + 2);
        chain.push(cert.pem());
        chain.extend(self.intermediates_pem.iter().cloned());
        chain.push(self.root_pem.trim_end().to_string() + "\n");
        IssuedCertificate {
            chain,
            leaf_der: cert.der().to_vec(),
            not_before,
            not_after,
        }
    }
}

/// The certificate authority. Holds its key in memory; the key is never printed
/// (`Debug` leaves it out) and never leaves the process.
///
/// The directory is read again by [`Ca::reload`] (see [`Ca::watch_dir`]): a new
/// `root-cert.pem` bundle or a new signing certificate and key take effect without a
/// restart, which is how a root is rotated (a bundle of both roots first, then the new
/// signer, then the bundle without the old root; docs/mesh.md). A directory that does not
/// load keeps the current version serving.
pub struct Ca {
    trust_domain: String,
    max_ttl: Duration,
    dir: PathBuf,
    state: arc_swap::ArcSwap<Signer>,
    /// The contents of the CA files the current version was loaded from.
    loaded_from: std::sync::Mutex<Vec<u8>>,
    /// Bumped on every reload that changed the CA.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("max_ttl", &self.max_ttl)
            .field("dir", &self.dir)
            .field("version", &self.version())
            .field("state", &self.state.load())
            .finish_non_exhaustive()
    }
}

/// The bytes of the CA files, in a fixed order: what a reload compares.
fn dir_contents(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for name in [ROOT_CERT, CA_KEY, CA_CERT, CERT_CHAIN] {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

impl Ca {
    /// Loads the CA from `dir` in either of Istio's layouts, or makes a self-signed root
    /// there if the directory holds neither.
    pub fn load_or_create(dir: &Path, options: CaOptions) -> Result<Ca, CaError> {
        let (trust_domain, max_ttl) = (options.trust_domain.clone(), options.max_ttl);
        let signer = Signer::load_or_create(dir, options)?;
        Ok(Ca {
            trust_domain,
            max_ttl,
            dir: dir.to_path_buf(),
            state: arc_swap::ArcSwap::from_pointee(signer),
            loaded_from: std::sync::Mutex::new(dir_contents(dir)),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// Reads the directory again. Returns whether the CA changed; on an error the
    /// current version keeps signing.
    pub fn reload(&self) -> Result<bool, CaError> {
        let mut loaded_from = self.loaded_from.lock().unwrap_or_else(|e| e.into_inner());
        let now = dir_contents(&self.dir);
        if now == *loaded_from {
            return Ok(false);
        }
        let options = CaOptions {
            trust_domain: self.trust_domain.clone(),
            max_ttl: self.max_ttl,
        };
        // Never `create` here: files half-way through being replaced are an error, tried
        // again on the next look.
        let signer = if self.dir.join(CA_CERT).exists() {
            Signer::load_plug_in(&self.dir, options)?
        } else {
            Signer::load_self_signed(&self.dir, options)?
        };
        self.state.store(Arc::new(signer));
        *loaded_from = now;
        self.changes.send_modify(|v| *v += 1);
        Ok(true)
    }

    /// Looks at the directory every `every` and reloads what changed, for as long as the
    /// future runs.
    pub async fn watch_dir(self: Arc<Self>, every: Duration) {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match self.reload() {
                Ok(true) => {
                    failing = false;
                    let roots = self.roots_der().len();
                    tracing::info!(dir = %self.dir.display(), roots, version = self.version(), "reloaded the CA: new certificates are signed by it and the new trust bundle is pushed")
                }
                Ok(false) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "the CA directory changed but does not load; the current CA keeps signing")
                }
                Err(_) => {}
            }
        }
    }

    /// How many times the CA changed since start.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Wakes on every change of the CA.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The trust domain of the identities this CA signs.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Longest lifetime of a leaf.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Which layout the directory had.
    pub fn layout(&self) -> CaLayout {
        self.state.load().layout
    }

    /// The directory the CA was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `root-cert.pem`: what clients trust (one root, or a bundle during a rotation).
    pub fn root_pem(&self) -> String {
        self.state.load().root_pem.clone()
    }

    /// The roots, DER.
    pub fn roots_der(&self) -> Vec<CertificateDer<'static>> {
        self.state.load().roots_der.clone()
    }

    /// The certificates between a leaf and the root, DER (empty when the root signs).
    pub fn intermediates_der(&self) -> Vec<CertificateDer<'static>> {
        self.state.load().intermediates_der.clone()
    }

    /// The lifetime a request for `requested` gets: the default (24 h) when none is
    /// asked for, never more than the maximum.
    pub fn ttl_for(&self, requested: Option<Duration>) -> Duration {
        self.state.load().ttl_for(requested)
    }

    /// Signs the public key of a verified CSR for `identity` (the caller's identity,
    /// already checked against the CSR's names), valid for `ttl` bounded by the maximum.
    pub fn sign(
        &self,
        csr: &Csr,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, CaError> {
        self.state.load().sign(csr, identity, ttl)
    }

    /// Issues a workload certificate for `identity` with a new ECDSA P-256 key made here
    /// (the control plane serving a proxy's `default` secret over SDS, as istio-agent
    /// does for its Envoy). Returns the chain and the key in PKCS#8 PEM.
    pub fn issue_workload(
        &self,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<(IssuedCertificate, String), CaError> {
        self.state.load().issue_workload(identity, ttl)
    }

    /// Issues a serving certificate with its own new key for DNS names and IP addresses
    /// (the control plane's own TLS on 15012). Returns the chain (leaf, intermediates,
    /// roots) and the key in PKCS#8 DER.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(IssuedCertificate, Vec<u8>), CaError> {
        self.state.load().issue_serving(dns_names, ips, ttl)
    }
}

/// A new self-signed ECDSA P-256 root for `trust_domain` (istiod's self-signed root is
/// `O=TRUST_DOMAIN`), valid ten years, and its key.
fn new_root(trust_domain: &str) -> Result<(KeyPair, rcgen::Certificate), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "meshgate root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((key, cert))
}

/// Where the next root and its key wait between the steps of a rotation.
pub const NEXT_ROOT_DIR: &str = "next-root";

/// The steps of a root rotation of a self-signed CA directory, each one file replaced at
/// once, for a control plane that reloads the directory (see [`Ca::reload`]).
pub mod rotation {
    use super::*;

    fn self_signed_layout(dir: &Path) -> Result<(), CaError> {
        if dir.join(CA_CERT).exists() {
            return Err(invalid(
                dir,
                "a plug-in CA (ca-cert.pem) is rotated with the PKI that issued it: replace ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem in the same three steps",
            ));
        }
        if !dir.join(CA_KEY).exists() || !dir.join(ROOT_CERT).exists() {
            return Err(invalid(
                dir,
                "not a CA directory (no ca-key.pem and root-cert.pem)",
            ));
        }
        Ok(())
    }

    /// Step 1: makes a new root (kept in `next-root/`) and adds it to `root-cert.pem`:
    /// proxies trust both; the current key still signs. Returns the new root's PEM.
    pub fn add_root(dir: &Path, trust_domain: &str) -> Result<String, CaError> {
        self_signed_layout(dir)?;
        let next = dir.join(NEXT_ROOT_DIR);
        if next.exists() {
            return Err(invalid(
                &next,
                "a rotation is already under way: finish it (sign, retire) or remove next-root/",
            ));
        }
        let (key, cert) = new_root(trust_domain)?;
        create_private_dir(&next)?;
        write_private(&next.join(CA_KEY), key.serialize_pem().as_bytes())?;
        write_public(&next.join(ROOT_CERT), cert.pem().as_bytes())?;
        let bundle = read_string(&dir.join(ROOT_CERT))?;
        write_public(
            &dir.join(ROOT_CERT),
            format!("{}\n{}", bundle.trim_end(), cert.pem()).as_bytes(),
        )?;
        Ok(cert.pem())
    }

    /// Step 2: the new root's key signs from now on (the bundle still holds both).
    pub fn sign_with_new_root(dir: &Path) -> Result<(), CaError> {
        self_signed_layout(dir)?;
        let next = dir.join(NEXT_ROOT_DIR);
        let key = load_key(&next.join(CA_KEY))?;
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())
    }

    /// Step 3: `root-cert.pem` keeps only the root whose key signs; `next-root/` goes.
    /// Returns how many roots were removed.
    pub fn retire_old_roots(dir: &Path) -> Result<usize, CaError> {
        self_signed_layout(dir)?;
        let root_path = dir.join(ROOT_CERT);
        let key = load_key(&dir.join(CA_KEY))?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let roots = read_certs(&root_path, &read_string(&root_path)?)?;
        let (keep, old): (Vec<_>, Vec<_>) = roots.into_iter().partition(|r| {
            x509_parser::parse_x509_certificate(r)
                .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == spki.as_slice())
        });
        let Some(signing) = keep.first() else {
            return Err(invalid(
                &root_path,
                format!("no certificate here belongs to the key in {CA_KEY}"),
            ));
        };
        write_public(&root_path, pem_of(signing).as_bytes())?;
        let next = dir.join(NEXT_ROOT_DIR);
        if next.exists() {
            std::fs::remove_dir_all(&next).map_err(io(&next))?;
        }
        Ok(old.len())
    }
}

/// The fixed part of every leaf: an empty subject (the identity is the SAN, marked
/// critical as RFC 5280 requires then), CA:false, digitalSignature and keyEncipherment,
/// serverAuth and clientAuth, a random serial.
fn leaf_params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Verifies that `leaf` chains to one of `roots` through `intermediates` (any order)
/// for client and server authentication, at `now`.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), String> {
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| format!("root: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let leaf = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    let now = rustls_pki_types::UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| e.to_string())?,
    );
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, intermediates, now, usage, None, None)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn ca_not_after(path: &Path, der: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(path, format!("cannot parse the certificate: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(invalid(
            path,
            "not a CA certificate (basicConstraints CA:true)",
        ));
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    if not_after <= SystemTime::now() {
        return Err(invalid(path, "the CA certificate has expired"));
    }
    Ok(not_after)
}

fn read_string(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn read_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Reads a private key, refusing one that other users can read (see [`check_private`]).
pub(crate) fn load_key(path: &Path) -> Result<KeyPair, CaError> {
    check_private(path)?;
    let pem = read_string(path)?;
    // The error names the file, never its content.
    KeyPair::from_pem(&pem).map_err(|_| {
        invalid(
            path,
            "not a usable private key (PKCS#8, PKCS#1 RSA or SEC1 EC, in PEM)",
        )
    })
}

/// A secret file must not be readable by other users: refused if it is (mode `o+r` or
/// any other-user bit), warned about if its group may read it (a deliberate shared
/// group, such as a service account's, is a real set-up).
pub(crate) fn check_private(path: &Path) -> Result<(), CaError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(CaError::KeyExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "a secret file is readable by its group; chmod 600 unless that group is meant to read it");
    }
    Ok(())
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Writes a secret file, mode 0600 from the start, through a temporary name so that a
/// reader never sees half of it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_file(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_file(path, bytes, 0o644)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    /// A PEM CSR for a new P-256 key asking for `sans`.
    pub(crate) fn csr_pem(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    pub(crate) fn spiffe_san(id: &SpiffeId) -> SanType {
        SanType::URI(id.uri().try_into().unwrap())
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn options(max_ttl: Duration) -> CaOptions {
        CaOptions {
            trust_domain: "cluster.local".into(),
            max_ttl,
        }
    }

    /// Parses a PEM certificate.
    fn with_cert<R>(
        pem: &str,
        f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> R,
    ) -> R {
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        f(&cert)
    }

    #[test]
    fn first_start_makes_a_root_and_a_private_key_and_reuses_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = Ca::load_or_create(&dir, CaOptions::default()).unwrap();
        assert_eq!(ca.layout(), CaLayout::Created);
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let root = std::fs::read_to_string(dir.join(ROOT_CERT)).unwrap();
        assert_eq!(ca.root_pem(), root);
        with_cert(&root, |c| {
            let bc = c.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign());
            assert_eq!(c.subject(), c.issuer());
        });
        // The key is never printed.
        let key = std::fs::read_to_string(dir.join(CA_KEY)).unwrap();
        let body = key.lines().nth(1).unwrap();
        assert!(!format!("{ca:?}").contains(body));
        let again = Ca::load_or_create(&dir, CaOptions::default()).unwrap();
        assert_eq!(again.layout(), CaLayout::SelfSigned);
        assert_eq!(again.root_pem(), root);
        assert_eq!(std::fs::read_to_string(dir.join(CA_KEY)).unwrap(), key);
    }

    #[test]
    fn a_leaf_carries_exactly_the_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        let id = SpiffeId::new("cluster.local", "edge", "ingress").unwrap();
        let csr = Csr::from_pem(&csr_pem(vec![spiffe_san(&id)])).unwrap();
        csr.check_names(&id).unwrap();
        let before = SystemTime::now();
        let issued = ca.sign(&csr, &id, Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(issued.chain.len(), 2, "leaf, root");
        assert_eq!(issued.chain[1].trim(), ca.root_pem().trim());
        with_cert(&issued.chain[0], |c| {
            assert!(c.subject().iter().next().is_none(), "empty subject");
            with_cert(&ca.root_pem(), |root| {
                assert_eq!(c.issuer(), root.subject())
            });
            let san = c.subject_alternative_name().unwrap().unwrap();
            assert!(san.critical, "SAN is critical when the subject is empty");
            assert_eq!(
                san.value.general_names,
                vec![GeneralName::URI(
                    "spiffe://cluster.local/ns/edge/sa/ingress"
                )]
            );
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && ku.key_encipherment());
            assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.non_repudiation());
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            assert!(!eku.code_signing && !eku.any && eku.other.is_empty());
            assert!(!c.basic_constraints().unwrap().unwrap().value.ca);
            assert!(c.extensions().iter().any(|e| matches!(
                e.parsed_extension(),
                ParsedExtension::AuthorityKeyIdentifier(_)
            )));
            let secs = c.validity().not_after.timestamp()
                - before
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
            assert!((3599..=3601).contains(&secs), "lifetime {secs}s");
        });
        verify_chain(
            &issued.leaf_der,
            &ca.intermediates_der(),
            &ca.roots_der(),
            SystemTime::now(),
        )
        .unwrap();
        // Two leaves never share a serial.
        let again = ca.sign(&csr, &id, None).unwrap();
        let serial = |pem: &str| with_cert(pem, |c| c.raw_serial().to_vec());
        assert_ne!(serial(&issued.chain[0]), serial(&again.chain[0]));
    }

    #[test]
    fn lifetimes_are_bounded_by_the_maximum() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), options(Duration::from_secs(7200))).unwrap();
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(
            ca.ttl_for(None),
            h(2),
            "the default (24h) cut to the maximum"
        );
        assert_eq!(ca.ttl_for(Some(Duration::ZERO)), h(2));
        assert_eq!(ca.ttl_for(Some(h(1))), h(1));
        assert_eq!(ca.ttl_for(Some(h(48))), h(2));
        let id = SpiffeId::new("cluster.local", "edge", "ingress").unwrap();
        let csr = Csr::from_pem(&csr_pem(vec![])).unwrap();
        let issued = ca.sign(&csr, &id, Some(h(48))).unwrap();
        let life = issued.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(
            life <= h(2) && life > h(2) - Duration::from_secs(5),
            "{life:?}"
        );
        with_cert(&issued.chain[0], |c| {
            let lifetime = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
            assert_eq!(lifetime, 7200 + BACKDATE.as_secs() as i64);
        });
        let default = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        assert_eq!(default.ttl_for(None), h(24));
        assert_eq!(default.ttl_for(Some(h(25))), h(24));
        // Another trust domain is never signed.
        let foreign = SpiffeId::new("evil.example", "edge", "ingress").unwrap();
        assert!(ca.sign(&csr, &foreign, None).is_err());
    }

    /// Writes Istio's plug-in layout: a root, an intermediate signed by it.
    pub(crate) fn plug_in_layout(dir: &Path) -> (String, String) {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut root = CertificateParams::default();
        root.distinguished_name = DistinguishedName::new();
        root.distinguished_name
            .push(DnType::OrganizationName, "Istio");
        root.distinguished_name.push(DnType::CommonName, "Root CA");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut int = CertificateParams::default();
        int.distinguished_name = DistinguishedName::new();
        int.distinguished_name
            .push(DnType::OrganizationName, "Istio");
        int.distinguished_name
            .push(DnType::CommonName, "Intermediate CA");
        int.distinguished_name
            .push(DnType::LocalityName, "cluster1");
        int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        int.use_authority_key_identifier_extension = true;
        let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CA_CERT), int_cert.pem()).unwrap();
        write_private(&dir.join(CA_KEY), int_key.serialize_pem().as_bytes()).unwrap();
        std::fs::write(
            dir.join(CERT_CHAIN),
            format!("{}{}", int_cert.pem(), root_cert.pem()),
        )
        .unwrap();
        std::fs::write(dir.join(ROOT_CERT), root_cert.pem()).unwrap();
        (root_cert.pem(), int_cert.pem())
    }

    #[test]
    fn the_plug_in_layout_signs_as_its_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, intermediate) = plug_in_layout(tmp.path());
        let ca = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        assert_eq!(ca.layout(), CaLayout::PlugIn);
        assert_eq!(ca.root_pem(), root);
        let id = SpiffeId::new("cluster.local", "edge", "ingress").unwrap();
        let csr = Csr::from_pem(&csr_pem(vec![spiffe_san(&id)])).unwrap();
        let issued = ca.sign(&csr, &id, None).unwrap();
        assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(issued.chain[1].trim(), intermediate.trim());
        assert_eq!(issued.chain[2].trim(), root.trim());
        with_cert(&issued.chain[0], |leaf| {
            with_cert(&intermediate, |int| {
                assert_eq!(leaf.issuer(), int.subject())
            })
        });
        verify_chain(
            &issued.leaf_der,
            &ca.intermediates_der(),
            &ca.roots_der(),
            SystemTime::now(),
        )
        .unwrap();
        // Nothing was written into the plug-in directory.
        let mut files: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT]);
    }

    #[test]
    fn a_reload_takes_a_bundle_then_a_new_signer_and_keeps_the_last_good_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        let old_root = ca.root_pem();
        assert!(!ca.reload().unwrap(), "nothing changed");
        let mut changes = ca.changes();
        // A second root, made elsewhere.
        let other = tempfile::tempdir().unwrap();
        let next = Ca::load_or_create(other.path(), CaOptions::default()).unwrap();
        let new_root = next.root_pem();
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        // 1. The bundle: both roots trusted, the old key still signs.
        std::fs::write(tmp.path().join(ROOT_CERT), format!("{old_root}{new_root}")).unwrap();
        assert!(ca.reload().unwrap());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(ca.roots_der().len(), 2);
        let (leaf, _) = ca.issue_workload(&id, None).unwrap();
        let old_only = read_certs(Path::new("old"), &old_root).unwrap();
        verify_chain(&leaf.leaf_der, &[], &old_only, SystemTime::now()).unwrap();
        // 2. The new key signs.
        std::fs::copy(other.path().join(CA_KEY), tmp.path().join(CA_KEY)).unwrap();
        assert!(ca.reload().unwrap());
        let (leaf, _) = ca.issue_workload(&id, None).unwrap();
        let new_only = read_certs(Path::new("new"), &new_root).unwrap();
        verify_chain(&leaf.leaf_der, &[], &new_only, SystemTime::now()).unwrap();
        assert!(verify_chain(&leaf.leaf_der, &[], &old_only, SystemTime::now()).is_err());
        // 3. A broken directory (a root file without the signer's root) is refused and
        // the last good version keeps signing.
        std::fs::write(tmp.path().join(ROOT_CERT), &old_root).unwrap();
        assert!(ca.reload().is_err());
        assert_eq!(ca.version(), 2);
        let (leaf, _) = ca.issue_workload(&id, None).unwrap();
        verify_chain(&leaf.leaf_der, &[], &new_only, SystemTime::now()).unwrap();
        // 4. The old root removed.
        std::fs::write(tmp.path().join(ROOT_CERT), &new_root).unwrap();
        assert!(ca.reload().unwrap());
        assert_eq!((ca.roots_der().len(), ca.version()), (1, 3));
    }

    #[test]
    fn the_rotation_steps_of_a_self_signed_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        let old = ca.root_pem();
        let new = rotation::add_root(tmp.path(), "cluster.local").unwrap();
        assert!(
            rotation::add_root(tmp.path(), "cluster.local").is_err(),
            "one at a time"
        );
        assert!(ca.reload().unwrap());
        assert_eq!(ca.roots_der().len(), 2);
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        let verifies = |leaf: &[u8], root: &str| {
            let roots = read_certs(Path::new("r"), root).unwrap();
            verify_chain(leaf, &[], &roots, SystemTime::now()).is_ok()
        };
        let (leaf, _) = ca.issue_workload(&id, None).unwrap();
        assert!(verifies(&leaf.leaf_der, &old));
        rotation::sign_with_new_root(tmp.path()).unwrap();
        assert!(ca.reload().unwrap());
        let (leaf, _) = ca.issue_workload(&id, None).unwrap();
        assert!(verifies(&leaf.leaf_der, &new) && !verifies(&leaf.leaf_der, &old));
        assert_eq!(rotation::retire_old_roots(tmp.path()).unwrap(), 1);
        assert!(ca.reload().unwrap());
        assert_eq!(ca.roots_der().len(), 1);
        assert!(!tmp.path().join(NEXT_ROOT_DIR).exists());
        // The key files stay private.
        let mode = std::fs::metadata(tmp.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // A plug-in directory is rotated by the PKI that issued it.
        std::fs::write(tmp.path().join(CA_CERT), "x").unwrap();
        let err = rotation::add_root(tmp.path(), "cluster.local").unwrap_err();
        assert!(err.to_string().contains("plug-in CA"), "{err}");
    }

    #[test]
    fn broken_layouts_and_exposed_keys_are_refused() {
        // A key readable by everyone.
        let tmp = tempfile::tempdir().unwrap();
        Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        let key = tmp.path().join(CA_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Ca::load_or_create(tmp.path(), CaOptions::default()),
            Err(CaError::KeyExposed { .. })
        ));
        // Group-readable is allowed (with a warning).
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        // A key that is not the root's.
        let other = tempfile::tempdir().unwrap();
        Ca::load_or_create(other.path(), CaOptions::default()).unwrap();
        std::fs::copy(other.path().join(CA_KEY), &key).unwrap();
        let err = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("no certificate here belongs to the key in ca-key.pem"),
            "{err}"
        );
        // Half a layout.
        std::fs::remove_file(tmp.path().join(ROOT_CERT)).unwrap();
        assert!(Ca::load_or_create(tmp.path(), CaOptions::default()).is_err());
        let plug = tempfile::tempdir().unwrap();
        plug_in_layout(plug.path());
        std::fs::remove_file(plug.path().join(CERT_CHAIN)).unwrap();
        let err = Ca::load_or_create(plug.path(), CaOptions::default()).unwrap_err();
        assert!(err.to_string().contains(CERT_CHAIN), "{err}");
        // An intermediate whose root is not root-cert.pem.
        let mixed = tempfile::tempdir().unwrap();
        plug_in_layout(mixed.path());
        let foreign = tempfile::tempdir().unwrap();
        let (foreign_root, _) = plug_in_layout(foreign.path());
        std::fs::write(mixed.path().join(ROOT_CERT), foreign_root).unwrap();
        assert!(Ca::load_or_create(mixed.path(), CaOptions::default()).is_err());
    }

    #[test]
    fn a_serving_certificate_names_hosts_and_addresses() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), CaOptions::default()).unwrap();
        let (issued, key) = ca
            .issue_serving(
                &["istiod.istio-system.svc".to_string()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(KeyPair::try_from(key.as_slice()).is_ok());
        with_cert(&issued.chain[0], |c| {
            let san = c.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                san.value.general_names,
                vec![
                    GeneralName::DNSName("istiod.istio-system.svc"),
                    GeneralName::IPAddress(&[127, 0, 0, 1])
                ]
            );
        });
    }
}
