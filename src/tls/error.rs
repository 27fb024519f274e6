//! Errors of the TLS layer. Each says what was wrong with which input, so that a rejected
//! secret or TLS context can be logged (and NACKed) with a reason an operator can act on.
use std::path::PathBuf;

/// Why certificate material, a TLS context or a secret could not be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    #[error("{what}: not valid PEM: {reason}")]
    Pem { what: String, reason: String },
    #[error("{what}: no {expected} found in the PEM data")]
    Missing {
        what: String,
        expected: &'static str,
    },
    #[error("{what}: more than one private key in the PEM data")]
    ManyKeys { what: String },
    #[error("{what}: unsupported private key: {reason}")]
    Key { what: String, reason: String },
    #[error("{what}: certificate cannot be parsed: {reason}")]
    Certificate { what: String, reason: String },
    #[error("{what}: the private key does not match the leaf certificate")]
    KeyMismatch { what: String },
    #[error("{what}: certificate `{subject}` expired at {not_after}")]
    Expired {
        what: String,
        subject: String,
        not_after: String,
    },
    #[error("{what}: certificate `{subject}` is not valid before {not_before}")]
    NotYetValid {
        what: String,
        subject: String,
        not_before: String,
    },
    #[error("{what}: CRL cannot be used: {reason}")]
    Crl { what: String, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("secret `{name}` is not available")]
    SecretMissing { name: String },
    #[error("secret `{name}` holds {found}, expected {expected}")]
    SecretKind {
        name: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("rustls: {0}")]
    Rustls(String),
}

impl TlsError {
    pub(crate) fn unsupported(field: &str, reason: impl Into<String>) -> TlsError {
        TlsError::Unsupported {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> TlsError {
        TlsError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e.to_string())
    }
}
