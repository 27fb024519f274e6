//! `WorkloadEntry` (networking.istio.io): one endpoint (VM, external host) with labels,
//! selected by ServiceEntries; also the shape of a ServiceEntry's inline endpoints.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec of a `WorkloadEntry`, and one endpoint of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address, DNS name or `unix://` socket path.
    #[serde(default)]
    pub address: String,
    /// Port name to endpoint port, overriding the service's target ports.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels, used by subsets and selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint is on (multi-network meshes).
    #[serde(default)]
    pub network: String,
    /// Locality, `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// Load balancing weight (default 1).
    #[serde(default)]
    pub weight: u32,
    /// Service account of the workload (mesh identity).
    #[serde(default)]
    pub service_account: String,
}
