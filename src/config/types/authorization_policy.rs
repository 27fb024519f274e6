//! `AuthorizationPolicy` (security.istio.io): who may do what to a workload — ALLOW,
//! DENY and AUDIT rules over the request's source, operation and conditions, enforced by
//! Envoy's RBAC filters; CUSTOM delegates to an external authorizer.
use super::common::istio_enum;
use super::destination_rule::MatchLabelsSelector;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

istio_enum! {
    /// What a matching rule does.
    AuthzAction {
        /// Allow a request only if it matches a rule (of some ALLOW policy).
        Allow = 0 => "ALLOW",
        /// Deny a request if it matches any rule.
        Deny = 1 => "DENY",
        /// Audit a request if it matches any rule; the decision is unchanged.
        Audit = 2 => "AUDIT",
        /// Delegate the decision to the extension provider named in `provider`.
        Custom = 3 => "CUSTOM",
    }
}

/// The spec of an `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// The workloads (in the policy's namespace; in every namespace for a policy in the
    /// root namespace) it applies to; none: the whole namespace, or the whole mesh.
    pub selector: Option<MatchLabelsSelector>,
    /// A Gateway API resource the policy attaches to (not served: refused).
    #[serde(skip_serializing)]
    pub target_ref: Option<IgnoredAny>,
    /// Gateway API resources the policy attaches to (not served: refused).
    #[serde(skip_serializing)]
    pub target_refs: Option<IgnoredAny>,
    /// What a match does; ALLOW when absent.
    pub action: Option<AuthzAction>,
    /// The extension provider of a CUSTOM policy.
    pub provider: Option<ExtensionProvider>,
    /// The rules; a request matching any rule matches the policy.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `provider` of a CUSTOM policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The name of a MeshConfig `extensionProviders` entry.
    #[serde(default)]
    pub name: String,
}

/// One rule: every field that is set must match (`from` any of its sources, `to` any of
/// its operations, every `when` condition).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources; absent: any source. Present and empty is an error.
    pub from: Option<Vec<From>>,
    /// Operations; absent: any operation. Present and empty is an error.
    pub to: Option<Vec<To>>,
    /// Further conditions.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Option<Source>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Option<Operation>,
}

/// Where a request comes from. Every field set must match; within a field, any value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (mTLS), `<trust domain>/ns/<ns>/sa/<sa>`, with `*` wildcards.
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Request (JWT) identities, `<iss>/<sub>`, with `*` wildcards.
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity (mTLS).
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// The connection's peer address: IPs or CIDR blocks.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// The original client address (X-Forwarded-For as the connection manager trusts it).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Not served (Istio 1.24+): refused by validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
}

impl Source {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
    }
}

/// What a request does. Every field set must match; within a field, any value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (`:authority`), case-insensitive, with `*` wildcards.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (without the query string), with `*` wildcards.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

impl Operation {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.ports.is_empty()
            && self.not_ports.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
    }
}

/// `rules[].when[]`: a condition on an attribute (`request.headers[x-token]`, `source.ip`,
/// ...), matching when the attribute has one of `values` and none of `notValues`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicy {
    /// The action, ALLOW when not written.
    pub fn action(&self) -> AuthzAction {
        self.action.unwrap_or(AuthzAction::Allow)
    }

    /// The labels of its selector (None: namespace-wide or mesh-wide).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }
}
