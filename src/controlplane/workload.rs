//! The mesh's own secrets, under the names Istio's proxies ask for over SDS:
//!
//! - `default`: the proxy's workload certificate (`tls_certificate`): a new ECDSA P-256
//!   key made here and a certificate of the mesh CA for exactly the SPIFFE identity of
//!   the stream's verified client certificate (15012), the chain as istio-agent serves
//!   it (the CA's answer concatenated: leaf, intermediates, root).
//! - `ROOTCA`: the trust bundle (`validation_context` with `root-cert.pem`, every root).
//!
//! They are added to the snapshots of mutual-TLS streams only, and those snapshots are
//! keyed by the proxy's identity key *and* its verified SPIFFE identity (see `server`),
//! so a key never reaches a stream of another identity nor a plaintext one: there,
//! `default` does not exist. One key and certificate is held per snapshot key, shared
//! by the proxies of that key; it is re-issued at about half its life (with jitter)
//! and the new one pushed.
use crate::ca::{Ca, SpiffeId};
use crate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret::Type,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The workload certificate's SDS name.
pub const WORKLOAD_SECRET: &str = "default";
/// The trust bundle's SDS name.
pub const ROOT_SECRET: &str = "ROOTCA";

/// How long a failed issuance waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The CA that signs workload certificates, and their lifetime.
#[derive(Debug, Clone)]
pub struct WorkloadCa {
    pub ca: Arc<Ca>,
    /// Lifetime of a workload certificate (bounded by the CA's maximum).
    pub ttl: Duration,
}

/// A workload certificate held for one snapshot key.
pub(crate) struct WorkloadCert {
    chain_pem: String,
    key_pem: String,
    /// When to issue the next one.
    pub renew_at: Instant,
    /// The version of the CA that signed it: a reloaded CA (a root rotation) re-issues.
    ca_version: u64,
}

impl WorkloadCa {
    /// A new key and certificate for `identity`.
    pub(crate) fn issue(&self, identity: &SpiffeId) -> Result<WorkloadCert, String> {
        let ca_version = self.ca.version();
        let (issued, key_pem) = self
            .ca
            .issue_workload(identity, Some(self.ttl))
            .map_err(|e| e.to_string())?;
        let life = issued
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // Half-life, less up to a tenth of the life at random, so that the proxies of
        // many keys do not all renew at once.
        let jitter = life.mul_f64(rand::random::<f64>() / 10.0);
        let renew_at = Instant::now() + (life / 2).saturating_sub(jitter);
        tracing::info!(%identity, ?life, "issued a workload certificate");
        Ok(WorkloadCert {
            chain_pem: issued.chain_pem(),
            key_pem,
            renew_at,
            ca_version,
        })
    }

    /// `default` and `ROOTCA` for `cert`.
    pub(crate) fn secrets(&self, cert: &WorkloadCert) -> [Secret; 2] {
        let inline = |s: &str| DataSource {
            specifier: Some(Specifier::InlineString(s.to_string())),
            ..Default::default()
        };
        [
            Secret {
                name: WORKLOAD_SECRET.into(),
                r#type: Some(Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(&cert.chain_pem)),
                    private_key: Some(inline(&cert.key_pem)),
                    ..Default::default()
                })),
            },
            Secret {
                name: ROOT_SECRET.into(),
                r#type: Some(Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(&self.ca.root_pem())),
                    ..Default::default()
                })),
            },
        ]
    }
}

/// The workload certificate of one snapshot key, issued on first use and again once
/// due.
#[derive(Default)]
pub(crate) struct WorkloadSlot {
    cert: std::sync::Mutex<Option<WorkloadCert>>,
}

impl WorkloadSlot {
    /// The secrets to serve now, issuing a certificate if none is held or it is due.
    /// A failed renewal keeps serving the current one.
    pub(crate) fn current(
        &self,
        ca: &WorkloadCa,
        identity: &SpiffeId,
    ) -> Result<[Secret; 2], String> {
        let mut held = self.cert.lock().unwrap_or_else(|e| e.into_inner());
        let due = held
            .as_ref()
            .is_none_or(|c| Instant::now() >= c.renew_at || c.ca_version != ca.ca.version());
        if due {
            match ca.issue(identity) {
                Ok(c) => *held = Some(c),
                Err(e) => {
                    tracing::error!(%identity, error = %e, "issuing a workload certificate failed");
                    match held.as_mut() {
                        Some(c) => c.renew_at = Instant::now() + RETRY,
                        None => return Err(format!("workload certificate for {identity}: {e}")),
                    }
                }
            }
        }
        let cert = held.as_ref().expect("issued above");
        Ok(ca.secrets(cert))
    }

    /// When the held certificate is due (`None` while none is held yet).
    pub(crate) fn renew_at(&self) -> Option<Instant> {
        let held = self.cert.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|c| c.renew_at)
    }
}

/// True for the names of the mesh's own secrets.
pub(crate) fn is_mesh_secret(name: &str) -> bool {
    name == WORKLOAD_SECRET || name == ROOT_SECRET
}
