//! meshgate's `RateLimitPolicy` (`meshgate.io/v1alpha1`): request rate limits on a
//! Gateway, one host of a Gateway, VirtualService routes, or a workload's sidecar
//! inbound, counted on each proxy (`Local`) or in the shared rate-limit service
//! (`Global`). Istio has no rate-limit API of its own; the shape follows Envoy Gateway's
//! `BackendTrafficPolicy.rateLimit` (rules of client selectors and a limit).
//!
//! ```yaml
//! apiVersion: meshgate.io/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: api, namespace: shop}
//! spec:
//!   targetRefs:
//!   - kind: Gateway
//!     name: ingress               # namespace: the policy's unless given
//!   type: Local
//!   local:
//!     rules:
//!     - name: per-client
//!       clientSelectors:
//!       - sourceCIDR: {type: Distinct}
//!       limit: {requests: 10, unit: Second, burst: 20}
//! ```
use crate::config::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind name.
pub const KIND: &str = "RateLimitPolicy";
/// The API version.
pub const API_VERSION: &str = "meshgate.io/v1alpha1";

/// The spec of a `RateLimitPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// What the limits attach to: Gateways, hosts of a Gateway, VirtualServices or their
    /// routes. Exclusive with `selector`.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// The workloads (in the policy's namespace) whose sidecar inbound is limited.
    /// Exclusive with `targetRefs`.
    pub selector: Option<WorkloadSelector>,
    /// Where requests are counted.
    #[serde(rename = "type")]
    pub mode: Option<Mode>,
    /// The rules of `type: Local`.
    pub local: Option<LocalRateLimit>,
    /// The rules of `type: Global`.
    pub global: Option<GlobalRateLimit>,
}

/// Workload labels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// The kinds a policy attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    /// An Istio `Gateway`: every HTTP server of it (optionally one host).
    Gateway,
    /// An Istio `VirtualService`: its HTTP routes (optionally one, by name).
    VirtualService,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `meshgate.io`-style group; only the Istio networking group is accepted.
    #[serde(default)]
    pub group: Option<String>,
    pub kind: TargetKind,
    pub name: String,
    /// The target's namespace; the policy's when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// For a Gateway: one host its servers serve (the virtual host of that name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// For a VirtualService: the `name` of one of its HTTP routes.
    #[serde(default)]
    pub route: Option<String>,
}

/// Where requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// In each proxy (Envoy's `local_ratelimit`): N proxies admit N times the limit.
    Local,
    /// In the shared rate-limit service (Envoy's `ratelimit` filter, domain `meshgate`).
    Global,
}

/// `type: Local`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `type: Global`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalRateLimit {
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What happens when the rate-limit service cannot answer: `Open` admits the
    /// request (the default, as Envoy's), `Closed` answers 500.
    pub failure_mode: Option<FailureMode>,
}

/// Behaviour when the rate-limit service is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FailureMode {
    #[default]
    Open,
    Closed,
}

/// One rule: which requests it counts and its limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The rule's name in descriptors and stats; its index when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions that must all hold for the rule to count a request (none: every
    /// request); a `Distinct` condition gives each distinct value its own bucket.
    #[serde(default)]
    pub client_selectors: Vec<ClientSelector>,
    pub limit: Limit,
}

/// Conditions on the request, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSelector {
    /// Request headers.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// The client address: the remote address the connection manager computes (the
    /// peer, or the trusted `x-forwarded-for` hop).
    #[serde(rename = "sourceCIDR")]
    pub source_cidr: Option<SourceMatch>,
    /// The request path (with its query string, as `:path`).
    pub path: Option<PathMatch>,
    /// The mutual-TLS peer's identity (SPIFFE id without `spiffe://`, as Istio writes
    /// principals).
    pub principal: Option<ValueMatch>,
    /// A claim of a JWT verified by a RequestAuthentication.
    pub jwt_claim: Option<ClaimMatch>,
}

/// `Exact`: the value must equal `value` (one bucket for all such requests);
/// `Distinct`: each distinct value gets its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MatchType {
    #[default]
    Exact,
    Distinct,
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(rename = "type", default)]
    pub match_type: MatchType,
    #[serde(default)]
    pub value: Option<String>,
}

/// A client address condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceMatch {
    #[serde(rename = "type", default)]
    pub match_type: MatchType,
    /// `Exact`: the CIDR whose clients share one bucket. `Distinct`: absent (every
    /// client gets its own bucket).
    #[serde(default)]
    pub value: Option<String>,
}

/// How a path condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The path (without query) equals `value`.
    #[default]
    Exact,
    /// The path is `value` or below it (whole segments).
    PathPrefix,
    /// Each distinct `:path` (query included) gets its own bucket.
    Distinct,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,
    #[serde(default)]
    pub value: Option<String>,
}

/// A condition on one value (the principal).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub match_type: MatchType,
    #[serde(default)]
    pub value: Option<String>,
}

/// A JWT claim condition: the claim `claim` (top level, a string) of the token issued by
/// `issuer`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMatch {
    pub issuer: String,
    pub claim: String,
    #[serde(rename = "type", default)]
    pub match_type: MatchType,
    #[serde(default)]
    pub value: Option<String>,
}

/// Time units of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    /// The unit's length.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86400,
        })
    }
}

/// A token bucket: `requests` tokens are added every `unit` (or `per`), the bucket holds
/// at most `burst` (default `requests`) and starts full; each request takes one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    pub requests: u64,
    pub unit: Option<Unit>,
    /// The refill period as a duration, instead of `unit`.
    pub per: Option<Duration>,
    pub burst: Option<u64>,
}

impl Limit {
    /// The refill period (`unit` or `per`; one second if neither, which validation
    /// refuses).
    pub fn period(&self) -> std::time::Duration {
        match (self.unit, self.per) {
            (Some(u), _) => u.duration(),
            (None, Some(d)) => d.get(),
            (None, None) => std::time::Duration::from_secs(1),
        }
    }

    /// The bucket size.
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.requests)
    }
}

impl RateLimitPolicy {
    /// The mode, `Local` when not written.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Local)
    }

    /// The rules of the mode in force.
    pub fn rules(&self) -> &[Rule] {
        match self.mode() {
            Mode::Local => self.local.as_ref().map(|l| l.rules.as_slice()),
            Mode::Global => self.global.as_ref().map(|g| g.rules.as_slice()),
        }
        .unwrap_or(&[])
    }

    /// The YAML path of the rules of the mode in force.
    pub fn rules_field(&self) -> &'static str {
        match self.mode() {
            Mode::Local => "spec.local.rules",
            Mode::Global => "spec.global.rules",
        }
    }
}

impl Rule {
    /// The rule's name in descriptors: its `name`, else its index.
    pub fn id(&self, index: usize) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => index.to_string(),
        }
    }
}
