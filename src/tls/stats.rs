//! Counters of the TLS layer, read by the admin `/stats` endpoint and by tests.
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for secrets and handshakes. Cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// New material published for an existing secret (a file changed, an SDS update, a renewal).
    pub secret_rotations: AtomicU64,
    /// Material refused (garbage, key mismatch, expired, unreadable); the old one kept serving.
    pub secret_rejections: AtomicU64,
    /// Secrets published for the first time.
    pub secret_loads: AtomicU64,
    /// Handshakes that completed.
    pub handshakes: AtomicU64,
    /// Handshakes that failed (any reason, after the ClientHello was read).
    pub handshake_failures: AtomicU64,
    /// Handshakes refused because no certificate was available for the SNI.
    pub no_certificate: AtomicU64,
    /// Peer certificates refused by the validation context.
    pub peer_certificate_rejected: AtomicU64,
    /// ClientHellos that could not be read (garbage, truncated, oversized, timeout).
    pub client_hello_errors: AtomicU64,
    /// Connections that were not TLS where TLS was expected (e.g. plain HTTP).
    pub not_tls: AtomicU64,
    /// TLS 1.2 connections ended because the client tried to renegotiate.
    pub renegotiation_refused: AtomicU64,
    /// Certificates issued by ACME (first issuance and renewals).
    pub acme_issued: AtomicU64,
    /// Failed ACME issuance attempts (each retried with back-off).
    pub acme_failures: AtomicU64,
}

impl TlsStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter as `(name, value)`, in Envoy-like naming, for `/stats`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tls.secret_rotations", get(&self.secret_rotations)),
            ("tls.secret_rejections", get(&self.secret_rejections)),
            ("tls.secret_loads", get(&self.secret_loads)),
            ("tls.handshake", get(&self.handshakes)),
            ("tls.handshake_failures", get(&self.handshake_failures)),
            ("tls.no_certificate", get(&self.no_certificate)),
            (
                "tls.peer_certificate_rejected",
                get(&self.peer_certificate_rejected),
            ),
            ("tls.client_hello_errors", get(&self.client_hello_errors)),
            ("tls.not_tls", get(&self.not_tls)),
            (
                "tls.renegotiation_refused",
                get(&self.renegotiation_refused),
            ),
            ("acme.issued", get(&self.acme_issued)),
            ("acme.failures", get(&self.acme_failures)),
        ]
    }

    /// The value of one counter by its `snapshot` name (tests, admin).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}
