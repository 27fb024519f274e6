//! TLS at the edge: certificate material, the secret store that rotates it, and rustls
//! configurations built from Envoy's TLS resources.
//!
//! - [`material`]: PEM chains, keys, CA bundles and CRLs parsed and checked once, ready
//!   for handshakes.
//! - [`store`]: named secrets (Envoy SDS `Secret`s, files, ACME) published through
//!   `tokio::sync::watch`, with rotation that keeps the last good material on bad input.
//! - [`server`] / [`client`]: rustls configurations from `DownstreamTlsContext` and
//!   `UpstreamTlsContext`; certificates and trust are read from the store at handshake
//!   time, so a rotation needs no rebuild.
//! - [`client_hello`]: SNI and ALPN read from the first bytes of a connection without
//!   terminating it (filter-chain selection, passthrough).
//! - [`identity`]: the verified peer of a connection and Envoy's `x-forwarded-client-cert`.
//! - [`dev`]: a local CA and leaf certificates for trying meshgate out.
//!
//! How a listener uses this layer (what `tests/support/tls.rs` does in miniature):
//!
//! ```text
//! per snapshot:   store.apply_sds(&set.secrets)                  -> errors to NACK
//!                 DownstreamTls::from_context(ctx, &store, &sessions, name)? per filter chain
//!                 ServerNameTable<chain> from filter_chain_match.server_names
//!                 UpstreamTls::from_context(ctx, &store, name)? per cluster transport socket
//! per connection: ClientHelloReader::read(&mut tcp, &mut buf)     -> SNI, ALPN (or NotTls)
//!                 ACME TLS-ALPN-01? ChallengeResponses::is_tls_alpn_validation(&alpn)
//!                 chain = table.lookup(sni)                       (none: reset, like Envoy)
//!                 passthrough: write `buf` upstream, then copy both ways
//!                 terminate: chain.accept(RenegotiationGuard(Rewind::new(buf.freeze(), tcp)), timeout)
//!                            -> Accepted { stream, peer: Option<PeerIdentity>, alpn, .. }
//! per request:    identity::xfcc_element / xfcc_header for x-forwarded-client-cert;
//!                 ChallengeResponses::http01_for_path on the HTTP port
//! ```
pub mod client;
pub mod client_hello;
pub mod credential;
pub mod dev;
pub mod error;
pub mod identity;
pub mod material;
pub mod params;
pub mod renegotiation;
pub mod rewind;
pub mod server;
pub mod sni;
pub mod stats;
pub mod store;
pub mod verify;
mod watcher;

pub use client::UpstreamTls;
pub use client_hello::{ClientHelloError, ClientHelloInfo, ClientHelloReader};
pub use error::TlsError;
pub use identity::{ClientCertDetails, PeerIdentity};
pub use material::{CertificateMaterial, TrustMaterial};
pub use renegotiation::RenegotiationGuard;
pub use rewind::Rewind;
pub use server::{DownstreamTls, DownstreamTlsSet, ServerSessionState};
pub use stats::TlsStats;
pub use store::{SecretStore, SecretStoreOptions};

use std::sync::{Arc, OnceLock};

/// The crypto provider every rustls configuration in meshgate uses (aws-lc-rs), with
/// TLS 1.2 suites in the order of Envoy's default cipher list (AES-128-GCM and
/// CHACHA20-POLY1305 before AES-256-GCM, ECDSA before RSA), so that a server without
/// `cipher_suites` settles on the suite Envoy would.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            let rank = |s: &rustls::SupportedCipherSuite| {
                ENVOY_TLS12_ORDER
                    .iter()
                    .position(|n| *n == s.suite())
                    .unwrap_or(ENVOY_TLS12_ORDER.len())
            };
            // A stable sort: the TLS 1.3 suites stay first, in rustls's order.
            p.cipher_suites.sort_by_key(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => 0,
                rustls::SupportedCipherSuite::Tls12(_) => 1 + rank(s),
            });
            Arc::new(p)
        })
        .clone()
}

/// Envoy's default TLS 1.2 cipher preference (client and server contexts).
const ENVOY_TLS12_ORDER: [rustls::CipherSuite; 6] = [
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

#[cfg(test)]
mod provider_tests {
    #[test]
    fn tls12_suites_follow_envoys_default_order() {
        let p = super::provider();
        let tls12: Vec<rustls::CipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(tls12, super::ENVOY_TLS12_ORDER.to_vec());
        assert!(
            p.cipher_suites[..3]
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13),
            "TLS 1.3 suites first, in rustls's order"
        );
    }
}
