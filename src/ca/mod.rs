//! The certificate authority: mesh identities (SPIFFE) and the certificates that prove
//! them, issued to workloads and gateways over Istio's CSR API.
//!
//! - [`authority`]: the CA itself, [`Ca`]: its root or plug-in intermediate in Istio's
//!   directory layouts, and [`Ca::sign`] for a verified CSR and an identity.
//! - [`csr`]: CSRs parsed, signature verified, requested names checked.
//! - [`spiffe`]: identities of the form `spiffe://TD/ns/NS/sa/SA`.
//! - [`token`] / [`jwt`] / [`authn`]: the credentials a certificate request may carry
//!   (single-use join tokens, service-account JWTs, the caller's current certificate) and
//!   the identity each grants.
//! - [`service`]: `IstioCertificateService/CreateCertificate` over gRPC.
//! - [`serving`]: the control plane's TLS on 15012 (its serving certificate from this CA,
//!   client certificates verified against it, the peer's identity per connection).
//!
//! The CA serves no xDS: the control plane uses [`serving`] for ADS over mutual TLS and
//! mounts [`service`] next to it.
pub mod authn;
pub mod authority;
pub mod csr;
pub mod jwt;
pub mod service;
pub mod serving;
pub mod spiffe;
pub mod token;

pub use authn::{AuthError, AuthSource, Authenticator, Caller};
pub use authority::{Ca, CaError, CaLayout, CaOptions, IssuedCertificate};
pub use csr::{Csr, CsrError, NameError};
pub use jwt::JwtIssuer;
pub use service::CertificateService;
pub use serving::{PeerInfo, ServingNames, XdsTls};
pub use spiffe::SpiffeId;
pub use token::JoinTokens;
