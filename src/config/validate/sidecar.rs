//! Checks of one `Sidecar` on its own (Istio's `ValidateSidecar`), and of the fields
//! meshgate does not serve yet: each is an error naming it, never silently ignored.
use super::common::{Sink, check_labels_map, check_port, check_wildcard_host, is_dns1123_label};
use crate::config::diag::Diagnostic;
use crate::config::types::common::{nearest, quoted_list};
use crate::config::types::gateway::Port;
use crate::config::types::sidecar::{CaptureMode, IstioEgressListener};
use crate::config::types::{Protocol, Resource, Sidecar};
use std::collections::{BTreeMap, BTreeSet};

const NOT_SERVED: &str = "is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)";

/// Validates one Sidecar.
pub fn validate(sc: &Resource<Sidecar>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(sc, out);
    let spec = &sc.spec;
    if let Some(selector) = &spec.workload_selector {
        if selector.labels.is_empty() {
            s.warning(
                "spec.workloadSelector",
                "a workloadSelector without labels selects every workload of the namespace",
            );
        }
        for (key, message) in check_labels_map(&selector.labels) {
            s.error(&format!("spec.workloadSelector.labels.{key}"), message);
        }
    }
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        s.error(
            "spec",
            "a Sidecar needs egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    // The inbound side does not read the Sidecar resource yet.
    if !spec.ingress.is_empty() {
        s.error("spec.ingress", format!("`ingress` {NOT_SERVED}"));
    }
    if spec.inbound_connection_pool.is_some() {
        s.error(
            "spec.inboundConnectionPool",
            format!("`inboundConnectionPool` {NOT_SERVED}"),
        );
    }

    let mut ports: BTreeMap<u32, usize> = BTreeMap::new();
    let last = spec.egress.len().saturating_sub(1);
    let mut catch_all: Option<usize> = None;
    for (i, egress) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &egress.port {
            None => {
                if let Some(first) = catch_all {
                    s.error(
                        &path,
                        format!("only one egress listener may have no port (spec.egress[{first}] has none)"),
                    );
                } else if i != last {
                    s.error(
                        &path,
                        "the egress listener without a port (the catch-all) must be the last one",
                    );
                }
                catch_all.get_or_insert(i);
            }
            Some(port) => {
                validate_port(&mut s, &format!("{path}.port"), port);
                if let Some(first) = ports.insert(port.number, i) {
                    s.error(
                        &format!("{path}.port.number"),
                        format!(
                            "port {} is already declared by spec.egress[{first}]; ports of egress listeners must be unique",
                            port.number
                        ),
                    );
                }
            }
        }
        validate_egress(&mut s, &path, egress, &sc.meta.namespace);
    }

    if let Some(policy) = &spec.outbound_traffic_policy
        && policy.egress_proxy.is_some()
    {
        s.error(
            "spec.outboundTrafficPolicy.egressProxy",
            format!("`egressProxy` {NOT_SERVED}"),
        );
    }
}

fn validate_port(s: &mut Sink<'_, Sidecar>, path: &str, port: &Port) {
    if !port.name.is_empty() && !is_dns1123_label(&port.name) {
        s.error(
            &format!("{path}.name"),
            format!("port name `{}` must be a DNS-1123 label", port.name),
        );
    }
    if port.number == 0 {
        // Port 0 is Istio's Unix domain socket listener, with a `unix://` bind.
        s.error(
            &format!("{path}.number"),
            format!("port 0 (a Unix domain socket listener) {NOT_SERVED}"),
        );
    } else {
        s.check(&format!("{path}.number"), check_port(port.number));
    }
    if port.target_port > 0 {
        s.error(
            &format!("{path}.targetPort"),
            "targetPort has no effect on Sidecars",
        );
    }
    match Protocol::parse(&port.protocol) {
        None => {
            let hint = match nearest(&port.protocol, Protocol::NAMES) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("expected one of {}", quoted_list(Protocol::NAMES)),
            };
            s.error(
                &format!("{path}.protocol"),
                format!("unknown protocol `{}`; {hint}", port.protocol),
            );
        }
        Some(Protocol::HttpProxy) => s.error(
            &format!("{path}.protocol"),
            format!("an HTTP_PROXY egress listener (an explicit proxy the application connects to) {NOT_SERVED}"),
        ),
        Some(Protocol::Udp) => s.error(
            &format!("{path}.protocol"),
            "UDP is not proxied by sidecars",
        ),
        Some(_) => {}
    }
}

fn validate_egress(
    s: &mut Sink<'_, Sidecar>,
    path: &str,
    egress: &IstioEgressListener,
    namespace: &str,
) {
    if !egress.bind.is_empty() {
        s.error(&format!("{path}.bind"), format!("`bind` {NOT_SERVED}"));
    }
    if egress.capture_mode == Some(CaptureMode::None) {
        s.error(
            &format!("{path}.captureMode"),
            format!("captureMode NONE (a listener bound for applications to call) {NOT_SERVED}"),
        );
    }
    if egress.hosts.is_empty() {
        s.error(
            &format!("{path}.hosts"),
            "an egress listener needs at least one host",
        );
    }
    // namespace -> hosts imported, for Istio's duplicate warnings.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (j, host) in egress.hosts.iter().enumerate() {
        let field = format!("{path}.hosts[{j}]");
        let Some((ns, name)) = host.split_once('/') else {
            s.error(
                &field,
                format!(
                    "host `{host}` must be of the form namespace/dnsName (`./*`, `*/*`, `ns/host`)"
                ),
            );
            continue;
        };
        if ns.is_empty() || name.is_empty() {
            s.error(
                &field,
                format!("`{host}`: the namespace and the dnsName cannot be empty"),
            );
            continue;
        }
        let bare = ns.strip_prefix('~').unwrap_or(ns);
        if !bare.is_empty() && bare != "*" && bare != "." && !is_dns1123_label(bare) {
            s.error(&field, format!("`{host}`: invalid namespace `{ns}`"));
        }
        if name != "*"
            && let Err(message) = check_wildcard_host(name)
        {
            s.error(&field, format!("`{host}`: {message}"));
        }
        if ns.starts_with('~') {
            continue;
        }
        let ns = if ns == "." { namespace } else { ns };
        let hosts = seen.entry(ns.to_string()).or_default();
        let duplicate = if name == "*" {
            !hosts.is_empty()
        } else {
            hosts.contains(name) || hosts.contains("*")
        };
        if duplicate {
            s.warning(&field, format!("duplicated egress host `{host}`"));
        }
        hosts.insert(name.to_string());
    }
    if seen.get("*").is_some_and(|h| h.contains("*")) && seen.len() > 1 {
        s.warning(
            &format!("{path}.hosts"),
            "`*/*` imports everything; the other hosts add nothing",
        );
    }
}

/// Sidecars whose choice would be undefined in Istio: two without a selector in one
/// namespace, or two with the same selector.
pub fn conflicts(sidecars: &[Resource<Sidecar>], out: &mut Vec<Diagnostic>) {
    // (namespace, selector labels) -> the first Sidecar with them.
    type Key<'a> = (&'a str, Option<&'a BTreeMap<String, String>>);
    let mut seen: BTreeMap<Key, &Resource<Sidecar>> = BTreeMap::new();
    for sc in sidecars {
        let selector = sc.spec.workload_selector.as_ref().map(|w| &w.labels);
        let key = (sc.meta.namespace.as_str(), selector);
        match seen.get(&key) {
            Some(first) => {
                let what = if selector.is_some() {
                    "the same workloadSelector"
                } else {
                    "no workloadSelector"
                };
                out.push(sc.error(
                    if selector.is_some() {
                        "spec.workloadSelector"
                    } else {
                        "metadata.name"
                    },
                    format!(
                        "Sidecar {}/{} ({}:{}) also has {what} in namespace `{}`; which one applies would be undefined",
                        first.meta.namespace,
                        first.meta.name,
                        first.origin.file,
                        first.origin.line,
                        sc.meta.namespace
                    ),
                ));
            }
            None => {
                seen.insert(key, sc);
            }
        }
    }
}
