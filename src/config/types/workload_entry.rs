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

/// Label Kubernetes puts the region in.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Label Kubernetes puts the zone in.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Label Istio puts the subzone in.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Label Istio puts the network in.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Istio's own locality label, `region.zone.subzone` (dots because `/` is not allowed).
pub const ISTIO_LOCALITY_LABEL: &str = "istio-locality";

impl WorkloadEntry {
    /// The workload's locality as written: `locality`, else its `istio-locality` label
    /// (`region/zone/subzone`, possibly partial; empty when neither is set).
    pub fn locality_text(&self) -> String {
        if !self.locality.is_empty() {
            return self.locality.clone();
        }
        self.labels
            .get(ISTIO_LOCALITY_LABEL)
            .map(|l| l.replace('.', "/"))
            .unwrap_or_default()
    }

    /// The labels of the workload's endpoints, as Istio gives them: its own, plus the
    /// topology labels of its locality and network where it does not set them, so that
    /// subsets and `failoverPriority` can select on region, zone, subzone and network.
    pub fn endpoint_labels(&self) -> BTreeMap<String, String> {
        let mut out = self.labels.clone();
        let locality = self.locality_text();
        let mut parts = locality.splitn(3, '/');
        for key in [REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL] {
            if let Some(value) = parts.next().filter(|v| !v.is_empty()) {
                out.entry(key.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        if !self.network.is_empty() {
            out.entry(NETWORK_LABEL.to_string())
                .or_insert_with(|| self.network.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_add_topology_from_the_locality_and_network() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let we = WorkloadEntry {
            labels: labels(&[("app", "x"), (ZONE_LABEL, "own-zone")]),
            locality: "r1/z1/s1".into(),
            network: "n1".into(),
            ..Default::default()
        };
        assert_eq!(
            we.endpoint_labels(),
            labels(&[
                ("app", "x"),
                (REGION_LABEL, "r1"),
                (ZONE_LABEL, "own-zone"),
                (SUBZONE_LABEL, "s1"),
                (NETWORK_LABEL, "n1"),
            ])
        );
        let we = WorkloadEntry {
            labels: labels(&[(ISTIO_LOCALITY_LABEL, "r2.z2")]),
            ..Default::default()
        };
        assert_eq!(
            we.endpoint_labels(),
            labels(&[
                (ISTIO_LOCALITY_LABEL, "r2.z2"),
                (REGION_LABEL, "r2"),
                (ZONE_LABEL, "z2"),
            ])
        );
        assert!(WorkloadEntry::default().endpoint_labels().is_empty());
    }
}
