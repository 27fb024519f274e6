//! `ServiceEntry` (networking.istio.io): a service and its endpoints, declared rather than
//! discovered. In standalone mode this is where every service comes from.
use super::common::istio_enum;
use super::workload_entry::WorkloadEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

istio_enum! {
    /// Whether the service is part of the mesh.
    Location {
        /// Outside the mesh (no mTLS).
        MeshExternal = 0 => "MESH_EXTERNAL",
        /// Inside the mesh.
        MeshInternal = 1 => "MESH_INTERNAL",
    }
}

istio_enum! {
    /// How endpoints are found.
    Resolution {
        /// Connect to the original destination address.
        None = 0 => "NONE",
        /// The listed endpoint addresses.
        Static = 1 => "STATIC",
        /// Resolve the hosts or endpoint names by DNS, all addresses used.
        Dns = 2 => "DNS",
        /// Resolve by DNS, using the first address only.
        DnsRoundRobin = 3 => "DNS_ROUND_ROBIN",
        /// Resolve per request (wildcard hosts).
        DynamicDns = 4 => "DYNAMIC_DNS",
    }
}

/// The spec of a `ServiceEntry`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Host names of the service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh (default MESH_EXTERNAL).
    pub location: Option<Location>,
    /// How endpoints are found (default NONE).
    pub resolution: Option<Resolution>,
    /// Endpoints, inline.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Select WorkloadEntries (and pods) by labels instead of listing endpoints.
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces this service is visible in.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Identities accepted from the service's endpoints.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, MONGO, REDIS, MYSQL, ...
    #[serde(default)]
    pub protocol: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints, when it differs from `number`.
    #[serde(default)]
    pub target_port: u32,
}

/// Label selector of a ServiceEntry (`labels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
