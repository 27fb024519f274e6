//! The data plane's TLS state: the secret store every filter chain and cluster reads its
//! certificates from (SDS secrets of the snapshot, watched files, ACME issuance), the
//! session state shared by all server configurations, and the pending ACME challenge
//! responses the listeners answer.
use crate::acme::ChallengeResponses;
use crate::tls::error::TlsError;
use crate::tls::store::load_tls_certificate;
use crate::tls::verify::ValidationMaterial;
use crate::tls::{SecretStore, SecretStoreOptions, ServerSessionState};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use std::sync::Arc;
use std::time::SystemTime;

/// Session cache entries shared by every downstream TLS context (TLS 1.2 session IDs and
/// TLS 1.3 stateful tickets).
const SESSION_CACHE_SIZE: usize = 4096;

/// The TLS state of one gateway; lives as long as the gateway, across snapshots.
pub struct TlsRuntime {
    pub store: SecretStore,
    pub sessions: ServerSessionState,
    /// Pending ACME challenges (HTTP-01 tokens, TLS-ALPN-01 certificates).
    pub challenges: ChallengeResponses,
}

impl std::fmt::Debug for TlsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRuntime")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl TlsRuntime {
    pub fn new(options: SecretStoreOptions) -> Result<Arc<TlsRuntime>, TlsError> {
        Ok(Arc::new(TlsRuntime {
            store: SecretStore::new(options),
            sessions: ServerSessionState::new(SESSION_CACHE_SIZE)?,
            challenges: ChallengeResponses::default(),
        }))
    }
}

/// Checks that an SDS `Secret` can be used, without publishing it: certificate and key
/// parse and match, validation contexts parse, files are readable. The store applies
/// the same rules when the secret is published.
pub fn validate_secret(s: &Secret) -> Result<(), TlsError> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(tc)) => {
            load_tls_certificate(&s.name, tc, SystemTime::now()).map(|_| ())
        }
        Some(secret::Type::ValidationContext(vc)) => {
            ValidationMaterial::from_context(vc, &s.name).map(|_| ())
        }
        Some(secret::Type::SessionTicketKeys(_)) => Err(TlsError::Unsupported {
            field: "session_ticket_keys".into(),
            reason: "session ticket keys are not supported; rustls rotates its own".into(),
        }),
        Some(secret::Type::GenericSecret(_)) => Err(TlsError::Unsupported {
            field: "generic_secret".into(),
            reason: "generic secrets are not used by TLS contexts".into(),
        }),
        None => Err(TlsError::Invalid {
            field: "type".into(),
            reason: "has no type (tls_certificate or validation_context)".into(),
        }),
    }
}
