//! Checks of `PeerAuthentication`s: each one as Istio's webhook and CRD schema check it,
//! and across them where a file-based configuration would leave one silently unused.
use super::common::{Sink, check_labels_map};
use crate::config::diag::Diagnostic;
use crate::config::types::{PeerAuthentication, Resource};
use std::collections::HashMap;

/// Istio's root namespace: its selector-less policy is mesh-wide. MeshConfig
/// `rootNamespace` is only served at this value.
const ROOT_NAMESPACE: &str = crate::config::mesh::DEFAULT_ROOT_NAMESPACE;

/// Validates one PeerAuthentication.
pub fn validate(pa: &Resource<PeerAuthentication>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(pa, out);
    let spec = &pa.spec;
    if let Some(selector) = &spec.selector {
        if selector.match_labels.is_empty() {
            s.warning(
                "spec.selector",
                "workload selector specified without labels; the policy applies to the whole namespace",
            );
        }
        for (key, message) in check_labels_map(&selector.match_labels) {
            s.error(&format!("spec.selector.matchLabels.{key}"), message);
        }
    }
    if let Some(ports) = &spec.port_level_mtls {
        if spec.match_labels().is_none() {
            s.error(
                "spec.portLevelMtls",
                "portLevelMtls needs a selector with labels: a mesh-wide or namespace-wide policy cannot set port-level mTLS",
            );
        }
        if ports.is_empty() {
            s.error(
                "spec.portLevelMtls",
                "portLevelMtls, if given, must have at least one port",
            );
        }
        for port in ports.keys() {
            if !(1..=65535).contains(port) {
                s.error(
                    &format!("spec.portLevelMtls.{port}"),
                    format!("port {port} must be in the range 1..65535"),
                );
            }
        }
    }
    if pa.meta.namespace == ROOT_NAMESPACE && spec.match_labels().is_some() {
        s.error(
            "spec.selector",
            format!(
                "a policy with a selector in the root namespace {ROOT_NAMESPACE} applies to no workload (istiod ignores it); put it in the workloads' namespace, or remove the selector to make it mesh-wide"
            ),
        );
    }
}

/// One selector-less policy per namespace: istiod keeps the oldest and ignores the
/// others, and files say nothing of which is oldest.
pub fn one_per_namespace(policies: &[Resource<PeerAuthentication>], out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, &Resource<PeerAuthentication>> = HashMap::new();
    for pa in policies {
        if pa.spec.match_labels().is_some() {
            continue;
        }
        let ns = pa.meta.namespace.as_str();
        match seen.get(ns) {
            Some(first) => {
                let scope = if ns == ROOT_NAMESPACE {
                    "mesh-wide".to_string()
                } else {
                    format!("namespace-wide for `{ns}`")
                };
                out.push(pa.error(
                    "spec.selector",
                    format!(
                        "PeerAuthentication {ns}/{} is already {scope} ({}:{}); only one policy without a selector may exist per namespace",
                        first.meta.name, first.origin.file, first.origin.line
                    ),
                ));
            }
            None => {
                seen.insert(ns, pa);
            }
        }
    }
}
