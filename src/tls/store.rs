//! The secret store: every named secret (SDS `Secret`s from a snapshot, certificate files,
//! ACME issuance) as a `tokio::sync::watch` of parsed, ready-to-use material.
//!
//! Handshakes read the current value (`borrow`) at accept time, so publishing new
//! material reaches the next handshake without rebuilding listeners, and open
//! connections keep the keys they started with. Only valid material is ever published:
//! a bad update (garbage, key/cert mismatch, expired, a file pair half-replaced) is logged
//! and counted, and the previous material keeps serving.
use crate::tls::error::TlsError;
use crate::tls::material::{CertificateMaterial, format_time};
use crate::tls::stats::TlsStats;
use crate::tls::verify::ValidationMaterial;
use crate::tls::watcher::{FileWatcher, WatchedSource};
use crate::xds::pb::envoy::config::core::v3::DataSource;
use crate::xds::pb::envoy::config::core::v3::data_source::Specifier;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The latest certificate of a secret; `None` until the first valid material arrives.
pub type CertificateWatch = watch::Receiver<Option<Arc<CertificateMaterial>>>;
/// The latest validation context of a secret; `None` until the first valid one arrives.
pub type ValidationWatch = watch::Receiver<Option<Arc<ValidationMaterial>>>;

/// Where a secret's material comes from (for logs, and to know which ones a new SDS
/// snapshot replaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// A `Secret` resource of the current xDS snapshot.
    Sds,
    /// Inline in a TLS context (never changes).
    Inline,
    /// Files on disk, watched.
    File,
    /// Issued by ACME.
    Acme,
}

/// Tuning of the store's file watching.
#[derive(Debug, Clone)]
pub struct SecretStoreOptions {
    /// How often watched files are checked even without a filesystem event (a fallback for
    /// filesystems that do not report changes).
    pub poll_interval: Duration,
    /// Quiet time after a filesystem event before files are re-read, so that a writer that
    /// replaces both files of a pair is usually seen once, complete.
    pub debounce: Duration,
}

impl Default for SecretStoreOptions {
    fn default() -> Self {
        SecretStoreOptions {
            poll_interval: Duration::from_secs(5),
            debounce: Duration::from_millis(100),
        }
    }
}

/// A secret parsed by [`SecretStore::prepare_sds`], ready to publish.
pub struct PreparedSecret {
    name: String,
    material: Prepared,
    watch: Option<WatchedSource>,
}

enum Prepared {
    Certificate(CertificateMaterial),
    Validation(ValidationMaterial),
    /// The store already serves these inputs under this name.
    Unchanged,
}

struct Slot<T> {
    tx: watch::Sender<Option<Arc<T>>>,
    source: SecretSource,
}

impl<T> Slot<T> {
    fn new(source: SecretSource) -> Slot<T> {
        Slot {
            tx: watch::Sender::new(None),
            source,
        }
    }
}

pub(crate) struct Inner {
    certificates: Mutex<HashMap<String, Slot<CertificateMaterial>>>,
    /// Certificate secrets a listener serves without material, already logged (one line
    /// per secret until it arrives).
    missing_logged: Mutex<std::collections::HashSet<String>>,
    validations: Mutex<HashMap<String, Slot<ValidationMaterial>>>,
    watcher: Mutex<Option<FileWatcher>>,
    stats: Arc<TlsStats>,
    options: SecretStoreOptions,
}

/// Named secrets as watches of parsed material. Cheap to clone (shared).
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Inner>,
}

impl Default for SecretStore {
    fn default() -> Self {
        SecretStore::new(SecretStoreOptions::default())
    }
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("certificates", &lock(&self.inner.certificates).len())
            .field("validations", &lock(&self.inner.validations).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that
    // matters here (each operation is one insert or send), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecretStore {
    /// An empty store.
    pub fn new(options: SecretStoreOptions) -> SecretStore {
        SecretStore {
            inner: Arc::new(Inner {
                certificates: Mutex::default(),
                missing_logged: Mutex::default(),
                validations: Mutex::default(),
                watcher: Mutex::default(),
                stats: Arc::default(),
                options,
            }),
        }
    }

    /// The store's counters.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.inner.stats.clone()
    }

    /// A watch of the certificate secret `name`. A name not yet known gets an empty slot
    /// that fills when the secret arrives (like Envoy's SDS subscription by name).
    pub fn certificate(&self, name: &str) -> CertificateWatch {
        lock(&self.inner.certificates)
            .entry(name.to_string())
            .or_insert_with(|| Slot::new(SecretSource::Sds))
            .tx
            .subscribe()
    }

    /// A watch of the validation-context secret `name` (e.g. Istio's `NAME-cacert`).
    pub fn validation(&self, name: &str) -> ValidationWatch {
        lock(&self.inner.validations)
            .entry(name.to_string())
            .or_insert_with(|| Slot::new(SecretSource::Sds))
            .tx
            .subscribe()
    }

    /// The current certificate of `name`, if any.
    pub fn current_certificate(&self, name: &str) -> Option<Arc<CertificateMaterial>> {
        lock(&self.inner.certificates)
            .get(name)
            .and_then(|s| s.tx.borrow().clone())
    }

    /// The current validation context of `name`, if any.
    pub fn current_validation(&self, name: &str) -> Option<Arc<ValidationMaterial>> {
        lock(&self.inner.validations)
            .get(name)
            .and_then(|s| s.tx.borrow().clone())
    }

    /// Names of the certificate secrets that currently hold material.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.certificates)
            .iter()
            .filter(|(_, s)| s.tx.borrow().is_some())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Publishes certificate material under `name` (ACME, tests, a caller that parsed it).
    /// Returns false if it equals what is already served (nothing sent).
    pub fn publish_certificate(
        &self,
        name: &str,
        material: CertificateMaterial,
        source: SecretSource,
    ) -> bool {
        let mut map = lock(&self.inner.certificates);
        let slot = map
            .entry(name.to_string())
            .or_insert_with(|| Slot::new(source));
        slot.source = source;
        let previous = slot.tx.borrow().as_ref().map(|m| m.digest);
        if previous == Some(material.digest) {
            return false;
        }
        // A rotation is news; a first load is not (a gateway may load ten thousand at
        // start-up): that one is at debug level.
        if previous.is_some() {
            tracing::info!(
                secret = name,
                subject = %material.leaf.subject,
                not_after = %format_time(material.leaf.not_after),
                source = ?source,
                "rotated certificate"
            );
        } else {
            tracing::debug!(
                secret = name,
                subject = %material.leaf.subject,
                not_after = %format_time(material.leaf.not_after),
                source = ?source,
                "loaded certificate"
            );
        }
        TlsStats::bump(if previous.is_some() {
            &self.inner.stats.secret_rotations
        } else {
            &self.inner.stats.secret_loads
        });
        slot.tx.send_replace(Some(Arc::new(material)));
        drop(map);
        lock(&self.inner.missing_logged).remove(name);
        true
    }

    /// Says once that listeners serve `name` without a certificate (its SDS secret has
    /// not arrived, or its ACME certificate is not issued yet): one log line per secret,
    /// not one per filter chain or per update, until it arrives.
    pub fn log_missing_once(&self, name: &str, listener: &str) {
        if self.current_certificate(name).is_some() {
            return;
        }
        if lock(&self.inner.missing_logged).insert(name.to_string()) {
            tracing::warn!(
                secret = name,
                listener,
                "no certificate yet: TLS connections for the filter chains naming this secret are reset until it arrives"
            );
        }
    }

    /// Publishes a validation context under `name`. Returns false if unchanged.
    pub fn publish_validation(
        &self,
        name: &str,
        material: ValidationMaterial,
        source: SecretSource,
    ) -> bool {
        let mut map = lock(&self.inner.validations);
        let slot = map
            .entry(name.to_string())
            .or_insert_with(|| Slot::new(source));
        slot.source = source;
        let previous = slot.tx.borrow().as_ref().map(|m| m.digest);
        if previous == Some(material.digest) {
            return false;
        }
        tracing::info!(
            secret = name,
            source = ?source,
            "{} validation context",
            if previous.is_some() { "rotated" } else { "loaded" }
        );
        TlsStats::bump(if previous.is_some() {
            &self.inner.stats.secret_rotations
        } else {
            &self.inner.stats.secret_loads
        });
        slot.tx.send_replace(Some(Arc::new(material)));
        true
    }

    /// Records a refused update: one warning line and one count. The old material stays.
    pub fn reject(&self, name: &str, error: &TlsError) {
        TlsStats::bump(&self.inner.stats.secret_rejections);
        tracing::warn!(
            secret = name,
            error = %error,
            "rejected new secret material; the previous material keeps serving"
        );
    }

    /// Applies the `Secret` resources of a new xDS snapshot (state of the world): each is
    /// parsed and published (file-based ones are watched from now on); SDS secrets missing
    /// from `secrets` are forgotten (watchers keep their last value). Returns one error per
    /// secret that could not be used; those keep their previous material.
    pub fn apply_sds(&self, secrets: &[Secret]) -> Vec<TlsError> {
        let (prepared, errors) = self.prepare_sds(secrets);
        self.publish_sds(prepared);
        let errors = errors
            .into_iter()
            .map(|(name, e)| {
                self.reject(&name, &e);
                e
            })
            .collect();
        self.forget_sds_except(secrets);
        errors
    }

    /// Parses SDS `Secret`s without publishing them: each certificate whose inputs equal
    /// what the store already serves under its name is not parsed again (a new snapshot
    /// that changes one secret of ten thousand parses one). Returns what to publish with
    /// [`publish_sds`](Self::publish_sds), and the secrets that cannot be used.
    pub fn prepare_sds(
        &self,
        secrets: &[Secret],
    ) -> (Vec<PreparedSecret>, Vec<(String, TlsError)>) {
        let now = SystemTime::now();
        // Parsing a key costs tens of microseconds (its public key is derived and
        // compared with the certificate's): thousands are parsed on every core.
        const PER_THREAD_MIN: usize = 128;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(secrets.len().div_ceil(PER_THREAD_MIN))
            .max(1);
        let results: Vec<Result<PreparedSecret, TlsError>> = if threads == 1 {
            secrets.iter().map(|s| self.prepare_one(s, now)).collect()
        } else {
            let chunk = secrets.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = secrets
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|s| self.prepare_one(s, now))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .zip(secrets.chunks(chunk))
                    .flat_map(|(h, part)| {
                        h.join().unwrap_or_else(|_| {
                            part.iter().map(|s| self.prepare_one(s, now)).collect()
                        })
                    })
                    .collect()
            })
        };
        let mut prepared = Vec::with_capacity(secrets.len());
        let mut errors = Vec::new();
        for (s, r) in secrets.iter().zip(results) {
            match r {
                Ok(p) => prepared.push(p),
                Err(e) => errors.push((s.name.clone(), e)),
            }
        }
        (prepared, errors)
    }

    fn prepare_one(&self, s: &Secret, now: SystemTime) -> Result<PreparedSecret, TlsError> {
        let (material, watch) = match &s.r#type {
            Some(secret::Type::TlsCertificate(tc)) => {
                let files = tls_certificate_files(tc);
                let stamps = crate::tls::watcher::stamps(&files);
                let current = lock(&self.inner.certificates)
                    .get(&s.name)
                    .and_then(|slot| slot.tx.borrow().as_ref().map(|m| m.digest));
                let material = match load_tls_certificate_if_changed(&s.name, tc, now, current)? {
                    Some(m) => Prepared::Certificate(m),
                    None => Prepared::Unchanged,
                };
                let watch = (!files.is_empty()).then(|| {
                    WatchedSource::certificate(
                        &s.name,
                        tc.clone(),
                        files,
                        stamps,
                        SecretSource::Sds,
                    )
                });
                (material, watch)
            }
            Some(secret::Type::ValidationContext(vc)) => {
                let files = validation_files(vc);
                let stamps = crate::tls::watcher::stamps(&files);
                let material = ValidationMaterial::from_context(vc, &s.name)?;
                let watch = (!files.is_empty()).then(|| {
                    WatchedSource::validation(&s.name, vc.clone(), files, stamps, SecretSource::Sds)
                });
                (Prepared::Validation(material), watch)
            }
            Some(secret::Type::SessionTicketKeys(_)) => {
                return Err(TlsError::unsupported(
                    &format!("secret {}: session_ticket_keys", s.name),
                    "session ticket keys are not supported; rustls rotates its own",
                ));
            }
            Some(secret::Type::GenericSecret(_)) => {
                return Err(TlsError::unsupported(
                    &format!("secret {}: generic_secret", s.name),
                    "generic secrets are not used by TLS contexts",
                ));
            }
            None => {
                return Err(TlsError::invalid(
                    &format!("secret {}", s.name),
                    "has no type (tls_certificate or validation_context)",
                ));
            }
        };
        Ok(PreparedSecret {
            name: s.name.clone(),
            material,
            watch,
        })
    }

    /// Publishes what [`prepare_sds`](Self::prepare_sds) parsed, as SDS secrets.
    pub fn publish_sds(&self, prepared: Vec<PreparedSecret>) {
        for p in prepared {
            match p.material {
                Prepared::Certificate(m) => {
                    self.publish_certificate(&p.name, m, SecretSource::Sds);
                }
                Prepared::Validation(m) => {
                    self.publish_validation(&p.name, m, SecretSource::Sds);
                }
                Prepared::Unchanged => {
                    if let Some(slot) = lock(&self.inner.certificates).get_mut(&p.name) {
                        slot.source = SecretSource::Sds;
                    }
                }
            }
            if let Some(w) = p.watch {
                self.watch(w);
            }
        }
    }

    /// Forgets the SDS secrets not in `secrets` that no listener names (a new snapshot
    /// replaced them); their files are no longer watched.
    pub fn forget_sds_except(&self, secrets: &[Secret]) {
        let names: std::collections::HashSet<&str> =
            secrets.iter().map(|s| s.name.as_str()).collect();
        lock(&self.inner.certificates).retain(|n, s| keep_slot(&names, n, s));
        lock(&self.inner.validations).retain(|n, s| keep_slot(&names, n, s));
        if let Some(w) = lock(&self.inner.watcher).as_ref() {
            w.forget_sds_except(&names);
        }
    }

    /// Updates SDS secrets one by one, as an xDS client receives them (Envoy applies an
    /// SDS response as it comes, without touching listeners): the usable ones are
    /// published at once, the others are returned and keep their previous material.
    /// `removed` secrets are forgotten unless a listener still names them (it keeps the
    /// last material, as Envoy's does).
    pub fn update_sds(&self, secrets: &[Secret], removed: &[String]) -> Vec<(String, TlsError)> {
        let (prepared, errors) = self.prepare_sds(secrets);
        self.publish_sds(prepared);
        for (name, e) in &errors {
            self.reject(name, e);
        }
        if !removed.is_empty() {
            let gone: std::collections::HashSet<&str> =
                removed.iter().map(String::as_str).collect();
            let drop_unwatched = |n: &String, s: &mut Slot<_>| -> bool {
                !(gone.contains(n.as_str())
                    && s.source == SecretSource::Sds
                    && s.tx.receiver_count() == 0)
            };
            lock(&self.inner.certificates).retain(|n, s| drop_unwatched(n, s));
            lock(&self.inner.validations).retain(|n, s| {
                !(gone.contains(n.as_str())
                    && s.source == SecretSource::Sds
                    && s.tx.receiver_count() == 0)
            });
            if let Some(w) = lock(&self.inner.watcher).as_ref() {
                w.forget_sds(&gone);
            }
        }
        errors
    }

    /// Loads a `TlsCertificate` (inline, file or environment data sources) under `name`
    /// and, when it names files, watches them for changes.
    pub fn add_tls_certificate(
        &self,
        name: &str,
        tc: &TlsCertificate,
        source: SecretSource,
    ) -> Result<(), TlsError> {
        let files = tls_certificate_files(tc);
        let stamps = crate::tls::watcher::stamps(&files);
        let material = load_tls_certificate(name, tc, SystemTime::now())?;
        self.publish_certificate(name, material, source);
        if !files.is_empty() {
            self.watch(WatchedSource::certificate(
                name,
                tc.clone(),
                files,
                stamps,
                source,
            ));
        }
        Ok(())
    }

    /// Loads a `CertificateValidationContext` under `name`, watching its files.
    pub fn add_validation_context(
        &self,
        name: &str,
        vc: &CertificateValidationContext,
        source: SecretSource,
    ) -> Result<(), TlsError> {
        let files = validation_files(vc);
        let stamps = crate::tls::watcher::stamps(&files);
        let material = ValidationMaterial::from_context(vc, name)?;
        self.publish_validation(name, material, source);
        if !files.is_empty() {
            self.watch(WatchedSource::validation(
                name,
                vc.clone(),
                files,
                stamps,
                source,
            ));
        }
        Ok(())
    }

    /// Watches a certificate/key file pair (Istio's file-mounted gateway certificates) and
    /// publishes it under `name`.
    pub fn add_certificate_files(
        &self,
        name: &str,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<(), TlsError> {
        let tc = TlsCertificate {
            certificate_chain: Some(file_source(cert.into())),
            private_key: Some(file_source(key.into())),
            ..Default::default()
        };
        self.add_tls_certificate(name, &tc, SecretSource::File)
    }

    fn watch(&self, source: WatchedSource) {
        let mut w = lock(&self.inner.watcher);
        let watcher = w.get_or_insert_with(|| {
            FileWatcher::start(Arc::downgrade(&self.inner), self.inner.options.clone())
        });
        watcher.add(source);
    }

    /// Re-reads a watched source after its files changed (called by the watcher thread).
    pub(crate) fn reload(inner: &Arc<Inner>, source: &WatchedSource) {
        let store = SecretStore {
            inner: inner.clone(),
        };
        let result = match &source.kind {
            crate::tls::watcher::SourceKind::Certificate(tc) => {
                load_tls_certificate(&source.name, tc, SystemTime::now()).map(|m| {
                    store.publish_certificate(&source.name, m, source.source);
                })
            }
            crate::tls::watcher::SourceKind::Validation(vc) => {
                ValidationMaterial::from_context(vc, &source.name).map(|m| {
                    store.publish_validation(&source.name, m, source.source);
                })
            }
        };
        if let Err(e) = result {
            store.reject(&source.name, &e);
        }
    }
}

/// A slot survives a new SDS snapshot if it is not an SDS secret, is still in the
/// snapshot, or someone still watches it (a listener waiting for it).
fn keep_slot<T>(names: &std::collections::HashSet<&str>, name: &str, slot: &Slot<T>) -> bool {
    slot.source != SecretSource::Sds || names.contains(name) || slot.tx.receiver_count() > 0
}

fn file_source(path: PathBuf) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string_lossy().into_owned())),
        ..Default::default()
    }
}

/// Reads an Envoy `DataSource`: a file, inline bytes or string, or an environment variable.
pub fn read_data_source(ds: &DataSource, field: &str) -> Result<Vec<u8>, TlsError> {
    match &ds.specifier {
        Some(Specifier::Filename(path)) => std::fs::read(path).map_err(|e| TlsError::Read {
            path: PathBuf::from(path),
            reason: e.to_string(),
        }),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::EnvironmentVariable(var)) => {
            std::env::var(var).map(String::into_bytes).map_err(|_| {
                TlsError::invalid(field, format!("environment variable {var} is not set"))
            })
        }
        None => Err(TlsError::invalid(field, "data source is empty")),
    }
}

fn data_source_file(ds: Option<&DataSource>) -> Option<PathBuf> {
    match ds?.specifier.as_ref()? {
        Specifier::Filename(p) => Some(PathBuf::from(p)),
        _ => None,
    }
}

fn tls_certificate_files(tc: &TlsCertificate) -> Vec<PathBuf> {
    [
        tc.certificate_chain.as_ref(),
        tc.private_key.as_ref(),
        tc.ocsp_staple.as_ref(),
    ]
    .into_iter()
    .filter_map(data_source_file)
    .collect()
}

fn validation_files(vc: &CertificateValidationContext) -> Vec<PathBuf> {
    [vc.trusted_ca.as_ref(), vc.crl.as_ref()]
        .into_iter()
        .filter_map(data_source_file)
        .collect()
}

/// Parses a `TlsCertificate` into material, refusing the fields meshgate does not
/// implement rather than ignoring them.
pub fn load_tls_certificate(
    name: &str,
    tc: &TlsCertificate,
    now: SystemTime,
) -> Result<CertificateMaterial, TlsError> {
    load_tls_certificate_if_changed(name, tc, now, None)?.ok_or_else(|| {
        TlsError::invalid(&format!("secret {name}"), "unchanged material (internal)")
    })
}

/// [`load_tls_certificate`], or `None` when the inputs' digest equals `current` (the
/// digest of what is served now): nothing is parsed or checked again.
pub fn load_tls_certificate_if_changed(
    name: &str,
    tc: &TlsCertificate,
    now: SystemTime,
    current: Option<[u8; 32]>,
) -> Result<Option<CertificateMaterial>, TlsError> {
    let field = |f: &str| format!("secret {name}: {f}");
    if tc.private_key_provider.is_some() {
        return Err(TlsError::unsupported(
            &field("private_key_provider"),
            "private key providers are not supported",
        ));
    }
    if tc.password.is_some() {
        return Err(TlsError::unsupported(
            &field("password"),
            "encrypted private keys are not supported",
        ));
    }
    if tc.pkcs12.is_some() {
        return Err(TlsError::unsupported(
            &field("pkcs12"),
            "PKCS#12 bundles are not supported; use PEM",
        ));
    }
    if !tc.signed_certificate_timestamp.is_empty() {
        return Err(TlsError::unsupported(
            &field("signed_certificate_timestamp"),
            "not supported",
        ));
    }
    let chain_ds = tc
        .certificate_chain
        .as_ref()
        .ok_or_else(|| TlsError::invalid(&field("certificate_chain"), "is required"))?;
    let key_ds = tc
        .private_key
        .as_ref()
        .ok_or_else(|| TlsError::invalid(&field("private_key"), "is required"))?;
    let chain = read_data_source(chain_ds, &field("certificate_chain"))?;
    let key = read_data_source(key_ds, &field("private_key"))?;
    if current.is_some()
        && tc.ocsp_staple.is_none()
        && current == Some(crate::tls::material::pem_digest(&chain, &key))
    {
        return Ok(None);
    }
    let what = format!("secret {name}");
    let material = CertificateMaterial::from_pem(&chain, &key, &what, now)?;
    match &tc.ocsp_staple {
        Some(ds) => Ok(Some(
            material.with_ocsp(read_data_source(ds, &field("ocsp_staple"))?),
        )),
        None => Ok(Some(material)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::core::v3::DataSource;

    pub(crate) fn pair(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn inline(s: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(s.to_string())),
            ..Default::default()
        })
    }

    fn sds_cert(name: &str, cert: &str, key: &str) -> Secret {
        Secret {
            name: name.to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(cert),
                private_key: inline(key),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn sds_secrets_publish_reject_and_forget() {
        let store = SecretStore::default();
        let mut rx = store.certificate("kubernetes://a");
        assert!(rx.borrow().is_none());
        let (c1, k1) = pair("a.example.com");
        assert!(
            store
                .apply_sds(&[sds_cert("kubernetes://a", &c1, &k1)])
                .is_empty()
        );
        assert!(rx.has_changed().unwrap());
        let first = rx.borrow_and_update().clone().unwrap();
        assert_eq!(first.leaf.dns_names, vec!["a.example.com"]);

        // Same content again: nothing sent.
        assert!(
            store
                .apply_sds(&[sds_cert("kubernetes://a", &c1, &k1)])
                .is_empty()
        );
        assert!(!rx.has_changed().unwrap());

        // Mismatched pair: rejected, old material kept, counted.
        let (c2, _) = pair("a.example.com");
        let errs = store.apply_sds(&[sds_cert("kubernetes://a", &c2, &k1)]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("does not match"),
            "{}",
            errs[0]
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(store.stats().get("tls.secret_rejections"), Some(1));

        // A secret nobody watches and that left the snapshot is forgotten.
        let (c3, k3) = pair("b.example.com");
        store.apply_sds(&[
            sds_cert("kubernetes://a", &c1, &k1),
            sds_cert("kubernetes://b", &c3, &k3),
        ]);
        assert!(store.current_certificate("kubernetes://b").is_some());
        store.apply_sds(&[sds_cert("kubernetes://a", &c1, &k1)]);
        assert!(store.current_certificate("kubernetes://b").is_none());
        assert_eq!(store.stats().get("tls.secret_loads"), Some(2));
    }

    #[test]
    fn unsupported_fields_are_refused_not_ignored() {
        let (c, k) = pair("a.example.com");
        let mut tc = TlsCertificate {
            certificate_chain: inline(&c),
            private_key: inline(&k),
            password: inline("x"),
            ..Default::default()
        };
        let err = load_tls_certificate("s", &tc, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        tc.password = None;
        tc.private_key = None;
        let err = load_tls_certificate("s", &tc, SystemTime::now()).unwrap_err();
        assert!(
            err.to_string().contains("private_key: is required"),
            "{err}"
        );
    }
}
