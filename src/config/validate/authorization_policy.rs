//! Checks of `AuthorizationPolicy`s as Istio's webhook checks them
//! (`ValidateAuthorizationPolicy`), plus what meshgate does not serve: `targetRef(s)`,
//! path templates, service-account and trust-domain sources. (Whether a CUSTOM
//! policy's provider exists is checked against the mesh configuration:
//! `translate::ext_authz::check_policies`.)
use super::common::{Sink, check_labels_map};
use crate::config::diag::Diagnostic;
use crate::config::types::authorization_policy::{AuthzAction, Condition, Operation, Source};
use crate::config::types::{AuthorizationPolicy, Resource};

/// The annotation that turns a policy into a dry run (shadow rules).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Validates one AuthorizationPolicy.
pub fn validate(ap: &Resource<AuthorizationPolicy>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(ap, out);
    let spec = &ap.spec;
    for (field, set) in [
        ("spec.targetRef", spec.target_ref.is_some()),
        ("spec.targetRefs", spec.target_refs.is_some()),
    ] {
        if set {
            s.error(
                field,
                "policies attached to Gateway API resources are not served; select the workloads with `selector`",
            );
        }
    }
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
    if let Some(v) = ap.meta.annotations.get(DRY_RUN_ANNOTATION)
        && parse_bool(v).is_none()
    {
        s.error(
            &format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            format!("`{v}` is not a boolean (true or false)"),
        );
    }
    let action = spec.action();
    match action {
        AuthzAction::Custom => {
            if spec.rules.is_empty() {
                s.error(
                    "spec.rules",
                    "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
                );
            } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                s.error("spec.provider.name", "`provider.name` must not be empty");
            }
        }
        _ if spec.provider.is_some() => s.error(
            "spec.provider",
            format!("`provider` must not be with non CUSTOM action, found {action}"),
        ),
        AuthzAction::Deny if spec.rules.is_empty() => s.error(
            "spec.rules",
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
        ),
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut tcp_in_from = false;
        let mut tcp_in_to = false;
        let mut from_exists = false;
        let mut to_exists = false;
        if let Some(from) = &rule.from {
            if from.is_empty() {
                s.error(&format!("{at}.from"), "`from` must not be empty");
            }
            for (j, f) in from.iter().enumerate() {
                let at = format!("{at}.from[{j}].source");
                match &f.source {
                    None => s.error(&at, "`from.source` must not be nil"),
                    Some(src) => {
                        from_exists = true;
                        tcp_in_from |= source(&mut s, &at, src, action);
                    }
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                s.error(&format!("{at}.to"), "`to` must not be empty");
            }
            for (j, t) in to.iter().enumerate() {
                let at = format!("{at}.to[{j}].operation");
                match &t.operation {
                    None => s.error(&at, "`to.operation` must not be nil"),
                    Some(op) => {
                        to_exists = true;
                        tcp_in_to |= operation(&mut s, &at, op);
                    }
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            condition(&mut s, &format!("{at}.when[{j}]"), c, action);
        }
        if action == AuthzAction::Deny
            && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
        {
            s.warning(
                &at,
                "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port",
            );
        }
    }
}

/// Istio's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Checks a source; returns whether it names TCP attributes.
fn source<T: crate::config::types::Kind>(
    s: &mut Sink<'_, T>,
    at: &str,
    src: &Source,
    action: AuthzAction,
) -> bool {
    if src.is_empty() {
        s.error(at, "`from.source` must not be empty");
    }
    for (field, values) in [
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
    ] {
        if !values.is_empty() {
            s.error(
                &format!("{at}.{field}"),
                "service account sources are not served; use `principals` (`<trust domain>/ns/<namespace>/sa/<name>`)",
            );
        }
    }
    for (field, values) in [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("namespaces", &src.namespaces),
        ("notNamespaces", &src.not_namespaces),
    ] {
        empty_values(s, at, field, values);
        if action == AuthzAction::Custom && !values.is_empty() {
            s.error(
                &format!("{at}.{field}"),
                format!(
                    "From.{} is currently not supported with CUSTOM action",
                    upper_first(field)
                ),
            );
        }
    }
    for (field, values) in [
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ] {
        empty_values(s, at, field, values);
        for (k, v) in values.iter().enumerate() {
            if let Err(e) = check_ip(v) {
                s.error(&format!("{at}.{field}[{k}]"), e);
            }
        }
    }
    !(src.principals.is_empty()
        && src.not_principals.is_empty()
        && src.ip_blocks.is_empty()
        && src.not_ip_blocks.is_empty()
        && src.namespaces.is_empty()
        && src.not_namespaces.is_empty()
        && src.remote_ip_blocks.is_empty()
        && src.not_remote_ip_blocks.is_empty())
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// Checks an operation; returns whether it names ports.
fn operation<T: crate::config::types::Kind>(s: &mut Sink<'_, T>, at: &str, op: &Operation) -> bool {
    if op.is_empty() {
        s.error(at, "`to.operation` must not be empty");
    }
    for (field, values) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ] {
        empty_values(s, at, field, values);
    }
    for (field, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, v) in values.iter().enumerate() {
            if let Err(e) = check_port(v) {
                s.error(&format!("{at}.{field}[{k}]"), e);
            }
        }
    }
    for (field, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (k, v) in values.iter().enumerate() {
            if is_path_template(v) {
                s.error(
                    &format!("{at}.{field}[{k}]"),
                    format!("path templates (`{{*}}`, `{{**}}`) are not served, found `{v}`"),
                );
            }
        }
    }
    !(op.ports.is_empty() && op.not_ports.is_empty())
}

/// Istio's `ContainsPathTemplate`.
pub fn is_path_template(v: &str) -> bool {
    v.contains("{*}") || v.contains("{**}")
}

fn empty_values<T: crate::config::types::Kind>(
    s: &mut Sink<'_, T>,
    at: &str,
    field: &str,
    values: &[String],
) {
    if let Some(k) = values.iter().position(String::is_empty) {
        s.error(
            &format!("{at}.{field}[{k}]"),
            format!("empty value not allowed, found in {}", upper_first(field)),
        );
    }
}

/// An IP address or CIDR block as Istio's `ValidateIPs` reads it.
pub fn check_ip(v: &str) -> Result<(), String> {
    match v.split_once('/') {
        Some((addr, len)) => {
            let ip: std::net::IpAddr = addr
                .parse()
                .map_err(|_| format!("bad CIDR range ({v}): not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(n) if n <= max && !len.starts_with('+') => Ok(()),
                _ => Err(format!("bad CIDR range ({v}): bad prefix length")),
            }
        }
        None => v
            .parse::<std::net::IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("bad IP address ({v})")),
    }
}

/// A port as Istio's `ValidatePorts` reads it (0 to 65535).
pub fn check_port(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 && !v.starts_with('+') => Ok(()),
        _ => Err(format!("bad port ({v})")),
    }
}

/// The `when` keys meshgate translates, by how they are written.
pub fn condition_key_kind(key: &str) -> Result<(), String> {
    const EXACT: &[&str] = &[
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ];
    if EXACT.contains(&key) {
        return Ok(());
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        return bracketed(rest)
            .map(|_| ())
            .map_err(|e| format!("{key}: {e}"));
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return claim_path(rest)
            .map(|_| ())
            .map_err(|e| format!("{key}: {e}"));
    }
    if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
        return match rest.split_once('[') {
            Some((filter, tail)) if !filter.is_empty() && tail.ends_with(']') => Ok(()),
            _ => Err(format!(
                "{key}: expecting format experimental.envoy.filters.<filter>[<key>]"
            )),
        };
    }
    Err(match key {
        "source.serviceAccount" | "source.trustDomain" => {
            format!("attribute {key} is not served")
        }
        "destination.namespace" => {
            format!("attribute {key} is replaced by the metadata.namespace")
        }
        k if k.starts_with("destination.labels") => {
            format!("attribute {key} is replaced by the workload selector")
        }
        "destination.name" | "destination.user" => {
            format!("deprecated attribute {key}: only supported in v1alpha1")
        }
        _ => format!("unknown attribute: {key}"),
    })
}

/// `[name]` -> `name` (Istio's `extractNameInBrackets`).
pub fn bracketed(s: &str) -> Result<&str, String> {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("expecting format [<NAME>], but found {s}"))
}

/// `[a][b]` -> `[a, b]`, or `[a.b]` -> `[a.b]` (Istio's `extractNameInNestedBrackets`).
pub fn claim_path(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return bracketed(s).map(|n| vec![n]);
        };
        let Some(end) = inner.find(']') else {
            return bracketed(s).map(|n| vec![n]);
        };
        let name = &inner[..end];
        if name.contains('[') {
            return bracketed(s).map(|n| vec![n]);
        }
        out.push(name);
        rest = &inner[end + 1..];
    }
    if out.is_empty() || out.iter().any(|n| n.is_empty()) {
        return Err(format!("expecting format [<NAME>], but found {s}"));
    }
    Ok(out)
}

fn condition<T: crate::config::types::Kind>(
    s: &mut Sink<'_, T>,
    at: &str,
    c: &Condition,
    action: AuthzAction,
) {
    if c.key.is_empty() {
        s.error(&format!("{at}.key"), "`key` must not be empty");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        s.error(
            at,
            format!(
                "at least one of `values` or `notValues` must be set for key {}",
                c.key
            ),
        );
        return;
    }
    if let Err(e) = condition_key_kind(&c.key) {
        s.error(&format!("{at}.key"), e);
        return;
    }
    if action == AuthzAction::Custom
        && (c.key == "source.namespace"
            || c.key == "source.principal"
            || c.key.starts_with("request.auth."))
    {
        s.error(
            &format!("{at}.key"),
            format!("{} is currently not supported with CUSTOM action", c.key),
        );
    }
    for (field, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        if let Some(k) = values.iter().position(String::is_empty) {
            s.error(
                &format!("{at}.{field}[{k}]"),
                format!("empty value not allowed, found in {}", c.key),
            );
        }
        for (k, v) in values.iter().enumerate() {
            let check = match c.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => check_ip(v),
                "destination.port" => check_port(v),
                _ => Ok(()),
            };
            if let Err(e) = check {
                s.error(&format!("{at}.{field}[{k}]"), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn diagnostics(spec: &str) -> Vec<String> {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
        );
        let loaded = crate::config::load_str("ap.yaml", &text);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        crate::config::validate(&loaded.config)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn valid_policies_pass() {
        for spec in [
            "  rules: [{}]\n",
            "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]\n",
            "  action: AUDIT\n  rules: [{to: [{operation: {ports: [\"80\"]}}]}]\n",
            "  selector: {matchLabels: {app: a}}\n",
            "  rules: [{when: [{key: \"request.auth.claims[groups][0]\", values: [a]}, {key: \"experimental.envoy.filters.a.b[c]\", values: [\"[x]\"]}]}]\n",
        ] {
            assert_eq!(diagnostics(spec), Vec::<String>::new(), "{spec}");
        }
    }

    #[test]
    fn errors_are_positioned_at_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "  targetRef: {kind: Gateway, name: g}\n",
                "ap.yaml:5:3: error: AuthorizationPolicy/shop/p: spec.targetRef: policies attached to Gateway API resources are not served",
            ),
            (
                "  action: CUSTOM\n  provider: {name: \"\"}\n  rules: [{}]\n",
                "spec.provider.name: `provider.name` must not be empty",
            ),
            (
                "  action: DENY\n",
                "spec.rules: DENY action without `rules` is meaningless",
            ),
            (
                "  provider: {name: opa}\n",
                "spec.provider: `provider` must not be with non CUSTOM action, found ALLOW",
            ),
            (
                "  rules: [{from: []}]\n",
                "spec.rules[0].from: `from` must not be empty",
            ),
            (
                "  rules: [{from: [{source: {}}]}]\n",
                "spec.rules[0].from[0].source: `from.source` must not be empty",
            ),
            (
                "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]\n",
                "ap.yaml:5:40: error: AuthorizationPolicy/shop/p: spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range (10.0.0.0/33)",
            ),
            (
                "  rules: [{from: [{source: {serviceAccounts: [a/b]}}]}]\n",
                "spec.rules[0].from[0].source.serviceAccounts: service account sources are not served",
            ),
            (
                "  rules: [{to: [{operation: {ports: [\"70000\"]}}]}]\n",
                "spec.rules[0].to[0].operation.ports[0]: bad port (70000)",
            ),
            (
                "  rules: [{to: [{operation: {paths: [\"/a/{*}\"]}}]}]\n",
                "spec.rules[0].to[0].operation.paths[0]: path templates",
            ),
            (
                "  rules: [{to: [{operation: {methods: [\"\"]}}]}]\n",
                "spec.rules[0].to[0].operation.methods[0]: empty value not allowed, found in Methods",
            ),
            (
                "  rules: [{when: [{key: source.ip}]}]\n",
                "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key source.ip",
            ),
            (
                "  rules: [{when: [{key: \"destination.labels[v]\", values: [a]}]}]\n",
                "spec.rules[0].when[0].key: attribute destination.labels[v] is replaced by the workload selector",
            ),
            (
                "  rules: [{when: [{key: request.headers, values: [a]}]}]\n",
                "spec.rules[0].when[0].key: request.headers: expecting format [<NAME>]",
            ),
            (
                "  rules: [{when: [{key: remote.ip, values: [nope]}]}]\n",
                "spec.rules[0].when[0].values[0]: bad IP address (nope)",
            ),
            (
                "  action: DENY\n  rules: [{to: [{operation: {paths: [/a]}}]}]\n",
                "warning: AuthorizationPolicy/shop/p: spec.rules[0]: configured AuthorizationPolicy will deny all traffic to TCP ports",
            ),
        ];
        for (spec, want) in cases {
            let got = diagnostics(spec);
            assert!(
                got.iter().any(|d| d.contains(want)),
                "{spec}: wanted {want:?} in {got:#?}"
            );
        }
    }
}
