//! PeerAuthentication as istiod resolves it (`pilot/pkg/security/authn`,
//! `ComposePeerAuthentication`): which mutual TLS mode a workload's sidecar enforces on
//! each port, and what a client may infer of a service's namespace for auto mTLS.
//!
//! For a workload: the policy selecting it in its own namespace beats its namespace's
//! policy without a selector, which beats the mesh-wide one (the root namespace's policy
//! without a selector). UNSET inherits from the next wider one; with nothing set the mode
//! is PERMISSIVE. `portLevelMtls` of the workload policy overrides per workload port, an
//! UNSET port taking the workload's resolved mode.
use super::scope::ROOT_NAMESPACE;
use crate::config::types::peer_authentication::MtlsMode;
use crate::config::{Config, Diagnostic, PeerAuthentication, Resource};
use std::collections::BTreeMap;

/// The mutual TLS mode a sidecar enforces on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Plain text only.
    Disable,
    /// Mutual TLS and plain text.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl Mode {
    /// The resolved mode of a policy's mode, `None` for UNSET (inherit).
    fn of(mode: MtlsMode) -> Option<Mode> {
        match mode {
            MtlsMode::Unset => None,
            MtlsMode::Disable => Some(Mode::Disable),
            MtlsMode::Permissive => Some(Mode::Permissive),
            MtlsMode::Strict => Some(Mode::Strict),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Disable => "DISABLE",
            Mode::Permissive => "PERMISSIVE",
            Mode::Strict => "STRICT",
        })
    }
}

/// The policy in force for one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadMtls {
    /// The mode of every port without a port-level setting.
    pub mode: Mode,
    /// Per workload port (target port), from the workload policy's `portLevelMtls`.
    pub per_port: BTreeMap<u32, Mode>,
}

impl WorkloadMtls {
    /// The mode on workload port `port`.
    pub fn for_port(&self, port: u32) -> Mode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }
}

/// The policy without a selector of `namespace`, the first loaded (validation refuses a
/// second one).
fn namespace_wide<'a>(config: &'a Config, namespace: &str) -> Option<&'a PeerAuthentication> {
    config
        .peer_authentications
        .iter()
        .find(|p| p.meta.namespace == namespace && p.spec.match_labels().is_none())
        .map(|p| &p.spec)
}

/// The mode a namespace's workloads have by their namespace-wide or the mesh-wide
/// policy (istiod's `GetNamespaceMutualTLSMode` falling back to PERMISSIVE): what auto
/// mTLS infers of a service in `namespace`, not knowing its workloads' own policies.
pub fn namespace_mode(config: &Config, namespace: &str) -> Mode {
    let mesh = namespace_wide(config, ROOT_NAMESPACE).and_then(|p| Mode::of(p.mode()));
    let ns = (namespace != ROOT_NAMESPACE)
        .then(|| namespace_wide(config, namespace))
        .flatten()
        .and_then(|p| Mode::of(p.mode()));
    ns.or(mesh).unwrap_or(Mode::Permissive)
}

/// The policy in force for the workload with `labels` in `namespace`. When several
/// policies with a selector select it, istiod takes the oldest; here the first loaded
/// (files in path order, documents in file order), with a warning naming the others.
pub fn for_workload(
    config: &Config,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> WorkloadMtls {
    let selecting: Vec<&Resource<PeerAuthentication>> = if namespace == ROOT_NAMESPACE {
        // istiod ignores policies with a selector in the root namespace (validation
        // refuses them).
        Vec::new()
    } else {
        config
            .peer_authentications
            .iter()
            .filter(|p| p.meta.namespace == namespace)
            .filter(|p| {
                p.spec
                    .match_labels()
                    .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .collect()
    };
    if let [first, others @ ..] = selecting.as_slice() {
        for other in others {
            diagnostics.push(other.warning(
                "spec.selector",
                format!(
                    "the workload with labels {labels:?} in `{namespace}` is also selected by PeerAuthentication {}/{} ({}:{}), which was loaded first and applies; this one does not",
                    first.meta.namespace, first.meta.name, first.origin.file, first.origin.line
                ),
            ));
        }
    }
    let workload = selecting.first().map(|p| &p.spec);
    let mut mode = namespace_mode(config, namespace);
    if let Some(m) = workload.and_then(|w| Mode::of(w.mode())) {
        mode = m;
    }
    let per_port = workload
        .and_then(|w| w.port_level_mtls.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|(&port, mtls)| (port, Mode::of(mtls.mode()).unwrap_or(mode)))
                .collect()
        })
        .unwrap_or_default();
    WorkloadMtls { mode, per_port }
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
