//! `PeerAuthentication` (security.istio.io): whether a workload's sidecar accepts plain
//! text, mutual TLS, or both, for the whole workload or per port.
use super::common::istio_enum;
use super::destination_rule::MatchLabelsSelector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

istio_enum! {
    /// What a sidecar accepts from its peers.
    MtlsMode {
        /// Inherit from the parent: the namespace's policy, then the mesh's (PERMISSIVE
        /// when none says otherwise).
        Unset = 0 => "UNSET",
        /// Plain text only: no mutual TLS is terminated.
        Disable = 1 => "DISABLE",
        /// Mutual TLS and plain text both.
        Permissive = 2 => "PERMISSIVE",
        /// Mutual TLS only.
        Strict = 3 => "STRICT",
    }
}

/// The spec of a `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// The workloads (in the policy's namespace) it applies to; none: the whole
    /// namespace, or the whole mesh for a policy in the root namespace.
    pub selector: Option<MatchLabelsSelector>,
    /// The mode for every port of the selected workloads.
    pub mtls: Option<MutualTls>,
    /// Per workload port (the port the application listens on), overriding `mtls`.
    /// Needs a selector.
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

/// Mutual TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode (UNSET when absent).
    pub mode: Option<MtlsMode>,
}

impl MutualTls {
    /// The mode, UNSET when not written.
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or(MtlsMode::Unset)
    }
}

impl PeerAuthentication {
    /// The labels of its selector (empty: namespace-wide or mesh-wide).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// The policy's own mode, UNSET when not written.
    pub fn mode(&self) -> MtlsMode {
        self.mtls
            .as_ref()
            .map(MutualTls::mode)
            .unwrap_or(MtlsMode::Unset)
    }
}
