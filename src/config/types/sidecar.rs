//! `Sidecar` (networking.istio.io): what the sidecars of a namespace (or of the workloads
//! a selector picks) reach and accept: egress listeners importing services by
//! `namespace/host`, ingress listeners, and the outbound traffic policy.
use super::common::istio_enum;
use super::destination_rule::ConnectionPoolSettings;
use super::gateway::{Port, ServerTlsSettings};
use super::virtual_service::Destination;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec of a `Sidecar`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// The workloads of the namespace this Sidecar applies to (none: all of them).
    pub workload_selector: Option<SidecarWorkloadSelector>,
    /// Listeners for traffic to the workload.
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    /// Listeners for traffic from the workload, and the hosts each imports.
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool settings of the workload's inbound side.
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What happens to traffic for destinations not imported.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Selects workloads by labels (`labels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarWorkloadSelector {
    /// Labels a workload must all have.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

istio_enum! {
    /// How traffic reaches a listener.
    CaptureMode {
        /// The mesh's default (iptables redirect).
        Default = 0 => "DEFAULT",
        /// Captured by iptables.
        Iptables = 1 => "IPTABLES",
        /// Not captured: the listener binds its address for applications to call.
        None = 2 => "NONE",
    }
}

/// An egress listener: a port (none: every port, the catch-all) and the hosts it imports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// The port, with its protocol.
    pub port: Option<Port>,
    /// The address (or `unix://` socket) to bind.
    #[serde(default)]
    pub bind: String,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Hosts imported, as `namespace/dnsName` (`./`, `*/`, `~ns/` to leave out).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// An ingress listener.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// The port, with its protocol.
    pub port: Option<Port>,
    /// The address to bind.
    #[serde(default)]
    pub bind: String,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Where the workload listens (`127.0.0.1:PORT`, `0.0.0.0:PORT`, `unix://...`).
    #[serde(default)]
    pub default_endpoint: String,
    /// TLS terminated by the sidecar.
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool settings for this port.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

istio_enum! {
    /// What happens to traffic for destinations not in the registry.
    OutboundTrafficPolicyMode {
        /// Refused: only imported services are reachable.
        RegistryOnly = 0 => "REGISTRY_ONLY",
        /// Forwarded to the address the application asked for.
        AllowAny = 1 => "ALLOW_ANY",
    }
}

/// The outbound traffic policy of a Sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// The mode; unset is REGISTRY_ONLY (the protobuf default), as in Istio.
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// Where ALLOW_ANY traffic goes instead of its original destination.
    pub egress_proxy: Option<Destination>,
}

impl OutboundTrafficPolicy {
    /// The mode in force (REGISTRY_ONLY when unset).
    pub fn mode(&self) -> OutboundTrafficPolicyMode {
        self.mode.unwrap_or(OutboundTrafficPolicyMode::RegistryOnly)
    }
}
