//! A gateway's own mesh identity: the workload certificate it holds to join a control
//! plane over mutual TLS (`meshgate gateway --xds ADDR --ca-root FILE --token-file FILE`),
//! as Istio's agent holds one for its Envoy.
//!
//! - [`transport`]: TLS to the control plane's 15012 port (the server verified against
//!   `--ca-root` and a server name), as a connector for tonic channels; the client
//!   certificate, if any, is resolved at each handshake.
//! - [`manager`]: the [`CertificateManager`]: an ECDSA P-256 key made in memory, a CSR for
//!   exactly `spiffe://TD/ns/NS/sa/SA`, Istio's `CreateCertificate` called with the join
//!   token (or JWT) first and with the current certificate afterwards, renewed at about
//!   half-life with jitter, retried with capped back-off while the CA is away, the old
//!   certificate kept meanwhile. Each new certificate is published through a `watch`
//!   channel ([`CertificateHandle`]) that the ADS connection and the data plane follow.
//!
//! The key never leaves the process: it is not written to disk nor logged, and
//! [`WorkloadCertificate`]'s `Debug` leaves it out.
pub mod manager;
pub mod transport;

pub use manager::{
    CertificateHandle, CertificateManager, IdentityStatus, ManagerOptions, WorkloadCertificate,
};
pub use transport::{ControlPlaneTls, TransportError};
