//! The agent next to an Envoy proxy (`meshgate agent`): the job of Istio's pilot-agent
//! for one pod.
//!
//! - [`run`]: writes Envoy's bootstrap (Istio's node id and metadata, `xds-grpc` over
//!   mutual TLS to the control plane, `sds-grpc` to the agent), obtains and renews the
//!   workload certificate with [`crate::identity::CertificateManager`], starts Envoy
//!   once it is there, and drains Envoy on SIGTERM/SIGINT.
//! - [`sds`]: serves the certificate (`default`) and the trust bundle (`ROOTCA`) to
//!   Envoy over SDS on a Unix socket, with the control plane's own SDS service; the key
//!   stays in memory.
//! - [`supervisor`]: runs Envoy as a child, restarts it with back-off when it dies, and
//!   has the kernel kill it when the agent dies.
//! - [`envoy`]: Envoy's command line and the admin calls the agent makes.
//! - [`status`]: the status port, `/healthz/ready` (certificate valid and Envoy LIVE).
pub mod envoy;
pub mod run;
pub mod sds;
pub mod status;
pub mod supervisor;

pub use run::{AgentError, AgentOptions, run};
