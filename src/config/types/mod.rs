//! The Istio (and Kubernetes) resource types meshgate reads, as serde types.
//!
//! Fields follow Istio's API one for one, named as in Kubernetes YAML (camelCase);
//! unknown fields are errors. Protobuf `oneof`s become Rust enums and reject two members
//! set at once; `google.protobuf` wrappers are plain `Option`s; durations are
//! [`Duration`](crate::config::Duration).
pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod gateway;
pub mod meta;
pub mod peer_authentication;
pub mod rate_limit_policy;
pub mod request_authentication;
pub mod secret;
pub mod service_entry;
pub mod sidecar;
pub mod telemetry;
pub mod virtual_service;
pub mod workload_entry;

pub use authorization_policy::AuthorizationPolicy;
pub use common::{Percent, PortSelector, Protocol, StringMatch};
pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use meta::{DEFAULT_NAMESPACE, Kind, ObjectMeta, Origin, Resource};
pub use peer_authentication::PeerAuthentication;
pub use rate_limit_policy::RateLimitPolicy;
pub use request_authentication::RequestAuthentication;
pub use secret::Secret;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use telemetry::Telemetry;
pub use virtual_service::VirtualService;
pub use workload_entry::WorkloadEntry;

impl Kind for Gateway {
    const KIND: &'static str = "Gateway";
}
impl Kind for VirtualService {
    const KIND: &'static str = "VirtualService";
}
impl Kind for DestinationRule {
    const KIND: &'static str = "DestinationRule";
}
impl Kind for ServiceEntry {
    const KIND: &'static str = "ServiceEntry";
}
impl Kind for Sidecar {
    const KIND: &'static str = "Sidecar";
}
impl Kind for WorkloadEntry {
    const KIND: &'static str = "WorkloadEntry";
}
impl Kind for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";
}
impl Kind for RequestAuthentication {
    const KIND: &'static str = "RequestAuthentication";
}
impl Kind for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";
}
impl Kind for Telemetry {
    const KIND: &'static str = "Telemetry";
}
impl Kind for Secret {
    const KIND: &'static str = "Secret";
}
/// meshgate's `AcmeCertificate` (`meshgate.io/v1alpha1`), defined by the ACME layer.
impl Kind for crate::acme::resource::AcmeCertificateSpec {
    const KIND: &'static str = crate::acme::resource::KIND;
}
/// meshgate's `RateLimitPolicy` (`meshgate.io/v1alpha1`).
impl Kind for RateLimitPolicy {
    const KIND: &'static str = rate_limit_policy::KIND;
}
