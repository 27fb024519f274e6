//! ACME: certificates issued and renewed automatically for the hostnames of a meshgate
//! `AcmeCertificate` resource, published into the [`SecretStore`](crate::tls::SecretStore)
//! under the resource's `credentialName` — the same path Gateways use for Kubernetes
//! Secrets (`kubernetes://NAME`).
//!
//! - [`resource`]: the `meshgate.io/v1alpha1` `AcmeCertificate` kind and its validation.
//! - [`challenge`]: the shared challenge responses (HTTP-01 tokens, TLS-ALPN-01
//!   certificates) the gateway's listeners answer from, and a small HTTP-01 responder.
//! - [`issuer`]: account, order, challenges, finalize, storage on disk (0600).
//! - [`renewal`]: when to renew (a fraction of the lifetime) and back-off on failure.
pub mod challenge;
pub mod issuer;
pub mod renewal;
pub mod resource;

pub use challenge::ChallengeResponses;
pub use issuer::{AcmeError, AcmeIssuer};
pub use renewal::RenewalPolicy;
pub use resource::AcmeCertificate;
