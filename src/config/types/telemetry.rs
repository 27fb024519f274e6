//! `Telemetry` (telemetry.istio.io): how a workload's telemetry is produced. meshgate
//! serves its `tracing`; `metrics` and `accessLogging` are read only to warn that they
//! are ignored.
use super::destination_rule::MatchLabelsSelector;
use super::request_authentication::PolicyTargetReference;
use crate::config::mesh::TracingCustomTag;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The spec of a `Telemetry`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// The workloads of the resource's namespace it applies to; none: the whole
    /// namespace (the whole mesh in the root namespace).
    pub selector: Option<MatchLabelsSelector>,
    /// A Gateway API resource it applies to (not served: meshgate selects by labels).
    pub target_ref: Option<PolicyTargetReference>,
    /// Several such resources (not served either).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing overrides; istiod merges them from mesh to namespace to workload.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Metrics overrides (not served; ignored with a warning).
    pub metrics: Option<Value>,
    /// Access logging overrides (not served; ignored with a warning).
    pub access_logging: Option<Value>,
}

/// One tracing override (Istio's `Tracing`); every unset field keeps the value of the
/// less specific level.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Which connection managers it applies to; none: client and server.
    #[serde(rename = "match")]
    pub match_: Option<TracingSelector>,
    /// The providers spans go to (istiod uses the first).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Tags added to spans; when set, replaces the inherited set as a whole.
    pub custom_tags: Option<BTreeMap<String, TracingCustomTag>>,
    /// Stops reporting spans: the connection managers get no tracing.
    pub disable_span_reporting: Option<bool>,
    /// Percentage of requests sampled, 0 to 100.
    pub random_sampling_percentage: Option<f64>,
    /// Whether the request id's trace bit decides sampling (only `true` is served).
    pub use_request_id_for_trace_sampling: Option<bool>,
}

/// `match` of a tracing override.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// The side of the traffic a workload's override applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    /// Outbound requests: gateways and sidecars' outbound listeners.
    Client,
    /// Inbound requests: sidecars' inbound listeners.
    Server,
}

impl WorkloadMode {
    /// Whether an override with this mode applies to connection managers of `side`
    /// (`Client` or `Server`).
    pub fn covers(self, side: WorkloadMode) -> bool {
        self == WorkloadMode::ClientAndServer || self == side
    }
}

/// A reference to an extension provider of the mesh configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    #[serde(default)]
    pub name: String,
}

impl Telemetry {
    /// The labels of its selector (none or empty: namespace-wide or mesh-wide).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }
}
