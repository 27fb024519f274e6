//! The ACME issuer of one `AcmeCertificate`: account (created once, stored 0600, then
//! restored), order, challenges answered through [`ChallengeResponses`], finalize with a
//! freshly generated key, certificate and key stored 0600, and publication into the
//! [`SecretStore`] under the resource's credential name.
use crate::acme::challenge::{ChallengeResponses, tls_alpn_certificate};
use crate::acme::renewal::{self, Renew, RenewalEvent, RenewalPolicy, Validity};
use crate::acme::resource::{AcmeCertificate, Challenge, ValidationError};
use crate::tls::dev::write_private;
use crate::tls::material::{CertificateMaterial, format_time};
use crate::tls::store::{SecretSource, SecretStore};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("invalid AcmeCertificate: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("{path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("order for {hosts}: {reason}")]
    Order { hosts: String, reason: String },
    #[error("issued certificate unusable: {0}")]
    Certificate(#[from] crate::tls::TlsError),
    #[error("key or CSR generation: {0}")]
    Key(#[from] rcgen::Error),
}

/// Obtains and renews the certificate of one `AcmeCertificate` resource.
#[derive(Clone)]
pub struct AcmeIssuer {
    resource: AcmeCertificate,
    store: SecretStore,
    challenges: ChallengeResponses,
    /// How long to wait for the ACME server to validate and issue.
    pub order_timeout: Duration,
}

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer")
            .field("name", &self.resource.metadata.name)
            .field("hosts", &self.resource.spec.hosts)
            .finish_non_exhaustive()
    }
}

fn storage_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |e| AcmeError::Storage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl AcmeIssuer {
    /// An issuer for a validated resource.
    pub fn new(
        resource: AcmeCertificate,
        store: SecretStore,
        challenges: ChallengeResponses,
    ) -> Result<AcmeIssuer, AcmeError> {
        let errors = resource.validate();
        if !errors.is_empty() {
            return Err(AcmeError::Invalid(errors));
        }
        Ok(AcmeIssuer {
            resource,
            store,
            challenges,
            order_timeout: Duration::from_secs(120),
        })
    }

    /// Where the account credentials live: one file per directory URL and contact.
    pub fn account_path(&self) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.resource.directory_url().as_bytes());
        h.update([0]);
        h.update(self.resource.spec.email.as_deref().unwrap_or("").as_bytes());
        let id = hex::encode(&h.finalize()[..8]);
        self.resource
            .storage()
            .join("accounts")
            .join(format!("{id}.json"))
    }

    /// Where the certificate and key live.
    pub fn certificate_dir(&self) -> PathBuf {
        self.resource
            .storage()
            .join("certificates")
            .join(&self.resource.spec.credential_name)
    }

    /// Publishes the stored certificate if it is usable (parses, matches its key, still
    /// valid, covers exactly the resource's hosts). Returns its validity.
    pub fn load_stored(&self) -> Option<Validity> {
        let dir = self.certificate_dir();
        let cert = std::fs::read(dir.join("tls.crt")).ok()?;
        let key = std::fs::read(dir.join("tls.key")).ok()?;
        let name = self.resource.sds_name();
        let material = match CertificateMaterial::from_pem(
            &cert,
            &key,
            &format!("{}", dir.display()),
            SystemTime::now(),
        ) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "stored ACME certificate unusable; a new one will be ordered");
                return None;
            }
        };
        if !self.covers_hosts(&material) {
            tracing::info!(dir = %dir.display(), "stored ACME certificate covers other hosts; a new one will be ordered");
            return None;
        }
        let v = Validity {
            not_before: material.leaf.not_before,
            not_after: material.leaf.not_after,
        };
        self.store
            .publish_certificate(&name, material, SecretSource::Acme);
        Some(v)
    }

    fn covers_hosts(&self, m: &CertificateMaterial) -> bool {
        let mut want: Vec<String> = self
            .resource
            .spec
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut have = m.leaf.dns_names.clone();
        want.sort();
        have.sort();
        want == have
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = match &self.resource.spec.directory_ca_certificates {
            Some(ca) => Account::builder_with_root(ca)?,
            None => Account::builder()?,
        };
        let path = self.account_path();
        if let Ok(json) = std::fs::read(&path) {
            match serde_json::from_slice::<AccountCredentials>(&json) {
                Ok(creds) => return Ok(builder.from_credentials(creds).await?),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "stored ACME account unreadable; creating a new account")
                }
            }
        }
        let contact = self
            .resource
            .spec
            .email
            .as_ref()
            .map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: self.resource.spec.accept_terms_of_service,
                    only_return_existing: false,
                },
                self.resource.directory_url().to_string(),
                None,
            )
            .await?;
        let json = serde_json::to_vec_pretty(&creds).map_err(|e| AcmeError::Storage {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(storage_err(parent))?;
        }
        write_private(&path, &json).map_err(|e| AcmeError::Storage {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(account = account.id(), path = %path.display(), "created ACME account");
        Ok(account)
    }

    /// Orders a certificate now, answers its challenges, stores and publishes it.
    pub async fn issue(&self) -> Result<Validity, AcmeError> {
        let hosts = self.resource.spec.hosts.join(",");
        let order_err = |reason: String| AcmeError::Order {
            hosts: hosts.clone(),
            reason,
        };
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .resource
            .spec
            .hosts
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(p) = &self.resource.spec.profile {
            new_order = new_order.profile(p);
        }
        let mut order = account.new_order(&new_order).await?;
        let mut tokens: Vec<String> = Vec::new();
        let mut alpn_domains: Vec<String> = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => return Err(order_err(format!("authorization is {other:?}"))),
                }
                let domain = authz.identifier().to_string();
                let ty = match self.resource.spec.challenge {
                    Challenge::Http01 => ChallengeType::Http01,
                    Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge = authz.challenge(ty.clone()).ok_or_else(|| {
                    order_err(format!(
                        "the server offers no {ty:?} challenge for {domain}"
                    ))
                })?;
                let key_auth = challenge.key_authorization();
                match ty {
                    ChallengeType::Http01 => {
                        self.challenges
                            .set_http01(&challenge.token, key_auth.as_str());
                        tokens.push(challenge.token.clone());
                    }
                    _ => {
                        let cert = tls_alpn_certificate(&domain, key_auth.digest().as_ref())?;
                        self.challenges.set_tls_alpn(&domain, cert);
                        alpn_domains.push(domain.clone());
                    }
                }
                challenge.set_ready().await?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .backoff(1.5)
                .timeout(self.order_timeout);
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                return Err(order_err(format!("order is {status:?} (challenge failed)")));
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(self.resource.spec.hosts.clone())?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params.serialize_request(&key)?;
            order.finalize_csr(csr.der()).await?;
            let chain = order.poll_certificate(&retry).await?;
            Ok((chain, key.serialize_pem()))
        }
        .await;
        for t in &tokens {
            self.challenges.remove_http01(t);
        }
        for d in &alpn_domains {
            self.challenges.remove_tls_alpn(d);
        }
        let (chain, key) = result?;
        let dir = self.certificate_dir();
        let material = CertificateMaterial::from_pem(
            chain.as_bytes(),
            key.as_bytes(),
            &format!("ACME order for {hosts}"),
            SystemTime::now(),
        )?;
        std::fs::create_dir_all(&dir).map_err(storage_err(&dir))?;
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        let store_err = |path: &Path, e: crate::tls::dev::DevCertError| AcmeError::Storage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        write_private(&key_path, key.as_bytes()).map_err(|e| store_err(&key_path, e))?;
        // The certificate too is 0600: the directory holds key material side by side.
        write_private(&cert_path, chain.as_bytes()).map_err(|e| store_err(&cert_path, e))?;
        let v = Validity {
            not_before: material.leaf.not_before,
            not_after: material.leaf.not_after,
        };
        tracing::info!(
            hosts,
            not_after = %format_time(v.not_after),
            secret = %self.resource.sds_name(),
            "ACME certificate issued"
        );
        crate::tls::TlsStats::bump(&self.store.stats().acme_issued);
        self.store
            .publish_certificate(&self.resource.sds_name(), material, SecretSource::Acme);
        Ok(v)
    }

    /// Serves the stored certificate at once if usable, then keeps it renewed forever
    /// (renewal at the resource's fraction of the lifetime, back-off on failure, the old
    /// certificate serving meanwhile). Spawn it; abort the task to stop.
    pub async fn run(self, policy: RenewalPolicy) {
        let current = self.load_stored();
        let name = self.resource.metadata.name.clone();
        let policy = RenewalPolicy {
            fraction: self.resource.renewal_fraction(),
            ..policy
        };
        renewal::run(&self, current, policy, SystemTime::now, |event| match event {
            RenewalEvent::Scheduled(d) => tracing::info!(resource = %name, in_secs = d.as_secs(), "ACME renewal scheduled"),
            RenewalEvent::Renewed(_) => {}
            RenewalEvent::Failed { error, retry_in } => tracing::warn!(
                resource = %name,
                %error,
                retry_in_secs = retry_in.as_secs(),
                "ACME issuance failed; the previous certificate (if any) keeps serving"
            ),
        })
        .await
    }
}

impl Renew for AcmeIssuer {
    async fn renew(&self) -> Result<Validity, String> {
        self.issue().await.map_err(|e| {
            crate::tls::TlsStats::bump(&self.store.stats().acme_failures);
            e.to_string()
        })
    }
}
