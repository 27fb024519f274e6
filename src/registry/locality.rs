//! Localities (`region/zone/subzone`), from WorkloadEntries, endpoint labels and proxies.
use std::collections::BTreeMap;
use std::fmt;

pub use crate::config::types::workload_entry::{
    ISTIO_LOCALITY_LABEL, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL,
};

/// Where an endpoint or a proxy runs. Empty parts are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses `region/zone/subzone` (any suffix may be missing).
    pub fn parse(s: &str) -> Locality {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or_default().to_string();
        Locality {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }

    /// The locality of a workload: its explicit locality if given, else the
    /// `istio-locality` label, else the topology labels.
    pub fn of_workload(explicit: &str, labels: &BTreeMap<String, String>) -> Locality {
        if !explicit.is_empty() {
            return Locality::parse(explicit);
        }
        if let Some(l) = labels.get(ISTIO_LOCALITY_LABEL) {
            return Locality::parse(&l.replace('.', "/"));
        }
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Locality {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        }
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Whether this locality matches a pattern such as `us-east/*`, `us-east/zone1/*` or
    /// `*` (Istio's `LocalityMatch` for `distribute` rules).
    pub fn matches(&self, pattern: &str) -> bool {
        let mut parts = pattern.splitn(3, '/');
        for (i, have) in [&self.region, &self.zone, &self.subzone]
            .into_iter()
            .enumerate()
        {
            match parts.next() {
                None | Some("*") => return true,
                // A missing zone or subzone matches any (the region must be given).
                Some("") if i > 0 => return true,
                Some(want) if want != have => return false,
                Some(_) => {}
            }
        }
        true
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}
