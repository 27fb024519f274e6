//! Checks of `RateLimitPolicy`s: each one's own rules, and that every attachment names
//! something that exists. A limit that cannot be attached is an error, never a policy
//! silently left out: serving without it would admit what the operator meant to refuse.
use super::common::{Sink, check_header_name, check_labels_map};
use crate::config::diag::Diagnostic;
use crate::config::hosts;
use crate::config::load::{Config, NETWORKING_GROUP};
use crate::config::types::rate_limit_policy::{
    ClientSelector, MatchType, Mode, PathMatchType, RateLimitPolicy, Rule, TargetKind,
};
use crate::config::types::{Resource, VirtualService};
use std::collections::HashSet;

/// Envoy refuses token buckets that refill more often than this.
pub const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Validates one policy on its own.
pub fn validate(p: &Resource<RateLimitPolicy>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(p, out);
    let spec = &p.spec;
    match (spec.target_refs.is_empty(), &spec.selector) {
        (true, None) => s.error(
            "spec",
            "a RateLimitPolicy needs `targetRefs` (Gateways, hosts, VirtualServices, routes) or a workload `selector`",
        ),
        (false, Some(_)) => s.error(
            "spec.selector",
            "`selector` and `targetRefs` are exclusive: a policy attaches to gateway targets or to workloads",
        ),
        _ => {}
    }
    if let Some(sel) = &spec.selector {
        for (key, message) in check_labels_map(&sel.match_labels) {
            s.error(&format!("spec.selector.matchLabels.{key}"), message);
        }
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let at = |f: &str| format!("spec.targetRefs[{i}].{f}");
        if let Some(g) = &t.group
            && !g.is_empty()
            && g != NETWORKING_GROUP
        {
            s.error(
                &at("group"),
                format!("group `{g}`: targets are Istio {NETWORKING_GROUP} resources"),
            );
        }
        if t.name.is_empty() {
            s.error(&at("name"), "`name` is required");
        }
        match t.kind {
            TargetKind::Gateway if t.route.is_some() => s.error(
                &at("route"),
                "`route` names an HTTP route of a VirtualService; a Gateway target takes `hostname`",
            ),
            TargetKind::VirtualService if t.hostname.is_some() => s.error(
                &at("hostname"),
                "`hostname` selects a host of a Gateway; a VirtualService target takes `route`",
            ),
            _ => {}
        }
        if let Some(h) = &t.hostname
            && let Err(e) = super::common::check_wildcard_host(h)
        {
            s.error(&at("hostname"), e);
        }
        if t.route.as_deref() == Some("") {
            s.error(&at("route"), "an empty route name matches nothing");
        }
    }
    let (rules_field, other, other_field) = match spec.mode() {
        Mode::Local => ("spec.local", spec.global.is_some(), "spec.global"),
        Mode::Global => ("spec.global", spec.local.is_some(), "spec.local"),
    };
    if other {
        s.error(
            other_field,
            format!(
                "set, but `type` is {:?}: only `{rules_field}` is used; remove one of them",
                spec.mode()
            ),
        );
    }
    let rules = spec.rules();
    if rules.is_empty() {
        s.error(
            rules_field,
            format!("`{rules_field}.rules` needs at least one rule"),
        );
    }
    let mut ids = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("{}[{i}]", spec.rules_field());
        check_rule(&mut s, &field, rule);
        let id = rule.id(i);
        if !ids.insert(id.clone()) {
            s.error(
                &format!("{field}.name"),
                format!("rule name `{id}` is used twice in this policy"),
            );
        }
    }
}

fn check_rule(s: &mut Sink<'_, RateLimitPolicy>, field: &str, rule: &Rule) {
    if let Some(name) = &rule.name
        && (name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        s.error(
            &format!("{field}.name"),
            format!("rule name `{name}` must be letters, digits, `-`, `_` or `.`"),
        );
    }
    let limit = &rule.limit;
    let lf = format!("{field}.limit");
    if limit.requests == 0 {
        s.error(
            &format!("{lf}.requests"),
            "`requests` must be at least 1 (to refuse every request, use an AuthorizationPolicy)",
        );
    }
    if limit.requests > u64::from(u32::MAX) {
        s.error(
            &format!("{lf}.requests"),
            format!("`requests` is at most {}", u32::MAX),
        );
    }
    match (limit.unit, limit.per) {
        (None, None) => s.error(
            &lf,
            "one of `unit` (Second, Minute, Hour, Day) or `per` (a duration) is required",
        ),
        (Some(_), Some(_)) => s.error(&format!("{lf}.per"), "`unit` and `per` are exclusive"),
        (None, Some(d)) => {
            let d = d.get();
            if d < MIN_FILL_INTERVAL {
                s.error(
                    &format!("{lf}.per"),
                    format!("`per` must be at least 50ms (Envoy refills token buckets at most every 50ms), not {d:?}"),
                );
            } else if d.subsec_nanos() % 1_000_000 != 0 {
                s.error(
                    &format!("{lf}.per"),
                    "`per` must be a whole number of milliseconds",
                );
            }
        }
        (Some(_), None) => {}
    }
    if let Some(b) = limit.burst {
        if b == 0 {
            s.error(&format!("{lf}.burst"), "`burst` must be at least 1");
        }
        if b > u64::from(u32::MAX) {
            s.error(
                &format!("{lf}.burst"),
                format!("`burst` is at most {}", u32::MAX),
            );
        }
    }
    for (j, sel) in rule.client_selectors.iter().enumerate() {
        check_selector(s, &format!("{field}.clientSelectors[{j}]"), sel);
    }
}

fn value_for(
    s: &mut Sink<'_, RateLimitPolicy>,
    field: &str,
    t: MatchType,
    value: &Option<String>,
    what: &str,
) {
    match (t, value) {
        (MatchType::Exact, None) => s.error(
            &format!("{field}.value"),
            format!("type Exact needs the {what} in `value`"),
        ),
        (MatchType::Exact, Some(v)) if v.is_empty() => s.error(
            &format!("{field}.value"),
            "an empty value never matches (use type Distinct for one bucket per value)",
        ),
        (MatchType::Distinct, Some(_)) => s.error(
            &format!("{field}.value"),
            "type Distinct takes no `value`: every distinct value gets its own bucket",
        ),
        _ => {}
    }
}

fn check_selector(s: &mut Sink<'_, RateLimitPolicy>, field: &str, sel: &ClientSelector) {
    if sel.headers.is_empty()
        && sel.source_cidr.is_none()
        && sel.path.is_none()
        && sel.principal.is_none()
        && sel.jwt_claim.is_none()
    {
        s.error(
            field,
            "an empty client selector: set `headers`, `sourceCIDR`, `path`, `principal` or `jwtClaim` (or remove it: a rule without selectors counts every request)",
        );
    }
    let mut names = HashSet::new();
    for (k, h) in sel.headers.iter().enumerate() {
        let hf = format!("{field}.headers[{k}]");
        if let Err(e) = check_header_name(&h.name) {
            s.error(&format!("{hf}.name"), e);
        } else if h.name.starts_with(':') {
            s.error(
                &format!("{hf}.name"),
                "pseudo-headers are not selectable; use `path` for the path",
            );
        } else if !names.insert(h.name.to_ascii_lowercase()) {
            s.error(
                &format!("{hf}.name"),
                format!("header `{}` appears twice in this selector", h.name),
            );
        }
        value_for(s, &hf, h.match_type, &h.value, "header value");
    }
    if let Some(src) = &sel.source_cidr {
        let sf = format!("{field}.sourceCIDR");
        match (src.match_type, src.value.as_deref()) {
            (MatchType::Exact, None) => {
                s.error(&format!("{sf}.value"), "type Exact needs a CIDR in `value`")
            }
            (MatchType::Exact, Some(v)) => {
                if let Err(e) = parse_cidr(v) {
                    s.error(&format!("{sf}.value"), e);
                }
            }
            (MatchType::Distinct, None | Some("0.0.0.0/0" | "::/0")) => {}
            (MatchType::Distinct, Some(v)) => s.error(
                &format!("{sf}.value"),
                format!("type Distinct counts every client address separately; a narrower range (`{v}`) is not supported"),
            ),
        }
    }
    if let Some(p) = &sel.path {
        let pf = format!("{field}.path");
        match (p.match_type, p.value.as_deref()) {
            (PathMatchType::Distinct, Some(_)) => s.error(
                &format!("{pf}.value"),
                "type Distinct takes no `value`: every distinct path gets its own bucket",
            ),
            (PathMatchType::Distinct, None) => {}
            (_, None) => s.error(&format!("{pf}.value"), "the path to match is required"),
            (t, Some(v)) => {
                if !v.starts_with('/') || v.contains('?') || v.contains('#') {
                    s.error(
                        &format!("{pf}.value"),
                        format!(
                            "`{v}` must be a path starting with `/`, without query or fragment"
                        ),
                    );
                } else if t == PathMatchType::PathPrefix && v.len() > 1 && v.ends_with('/') {
                    s.error(
                        &format!("{pf}.value"),
                        "a PathPrefix matches whole segments; write it without the trailing `/`",
                    );
                }
            }
        }
    }
    if let Some(p) = &sel.principal {
        let pf = format!("{field}.principal");
        value_for(s, &pf, p.match_type, &p.value, "principal");
        if let Some(v) = &p.value
            && v.starts_with("spiffe://")
        {
            s.error(
                &format!("{pf}.value"),
                "principals are written without `spiffe://` (as in AuthorizationPolicy), e.g. cluster.local/ns/shop/sa/web",
            );
        }
    }
    if let Some(c) = &sel.jwt_claim {
        let cf = format!("{field}.jwtClaim");
        if c.issuer.is_empty() {
            s.error(
                &format!("{cf}.issuer"),
                "the token issuer (`iss`) is required",
            );
        }
        if c.claim.is_empty() {
            s.error(&format!("{cf}.claim"), "the claim name is required");
        }
        value_for(s, &cf, c.match_type, &c.value, "claim value");
    }
}

/// A CIDR `addr/len` (or a bare address, a /32 or /128).
pub fn parse_cidr(v: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("`{v}` is not a CIDR (address/prefix length)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("`{v}`: the prefix length must be 0 to {max}")),
        },
    };
    Ok((ip, len))
}

/// Every attachment must name something that exists: a Gateway (and one of its hosts),
/// a VirtualService (and one of its HTTP routes).
pub fn attachments(config: &Config, out: &mut Vec<Diagnostic>) {
    for p in &config.rate_limit_policies {
        for (i, t) in p.spec.target_refs.iter().enumerate() {
            let ns = t.namespace.as_deref().unwrap_or(&p.meta.namespace);
            let at = |f: &str| format!("spec.targetRefs[{i}].{f}");
            match t.kind {
                TargetKind::Gateway => {
                    let Some(gw) = config
                        .gateways
                        .iter()
                        .find(|g| g.meta.namespace == ns && g.meta.name == t.name)
                    else {
                        out.push(p.error(
                            &at("name"),
                            format!(
                                "Gateway {ns}/{} does not exist; the limit cannot be attached",
                                t.name
                            ),
                        ));
                        continue;
                    };
                    if let Some(h) = &t.hostname
                        && !gateway_serves(&gw.spec, h)
                    {
                        out.push(p.error(
                            &at("hostname"),
                            format!(
                                "no server of Gateway {ns}/{} serves host `{h}`; the limit cannot be attached",
                                t.name
                            ),
                        ));
                    }
                }
                TargetKind::VirtualService => {
                    let Some(vs) = config
                        .virtual_services
                        .iter()
                        .find(|v| v.meta.namespace == ns && v.meta.name == t.name)
                    else {
                        out.push(p.error(
                            &at("name"),
                            format!(
                                "VirtualService {ns}/{} does not exist; the limit cannot be attached",
                                t.name
                            ),
                        ));
                        continue;
                    };
                    if let Some(r) = &t.route
                        && !has_route(&vs.spec, r)
                    {
                        let names: Vec<&str> = vs
                            .spec
                            .http
                            .iter()
                            .map(|h| h.name.as_str())
                            .filter(|n| !n.is_empty())
                            .collect();
                        let hint = if names.is_empty() {
                            " (its HTTP routes have no names)".to_string()
                        } else {
                            format!(" (its HTTP routes: {})", names.join(", "))
                        };
                        out.push(p.error(
                            &at("route"),
                            format!(
                                "VirtualService {ns}/{} has no HTTP route named `{r}`{hint}; the limit cannot be attached",
                                t.name
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// Whether a server of the Gateway serves `host` (a name its hosts cover).
pub fn gateway_serves(gw: &crate::config::types::Gateway, host: &str) -> bool {
    gw.servers.iter().any(|s| {
        s.hosts.iter().any(|h| {
            let h = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
            hosts::is_subset_of(host, h)
        })
    })
}

fn has_route(vs: &VirtualService, name: &str) -> bool {
    vs.http.iter().any(|h| h.name == name)
}

#[cfg(test)]
mod tests {
    use crate::config::load::load_str;

    fn diags(text: &str) -> Vec<String> {
        let outcome = load_str("t.yaml", text);
        let mut out: Vec<String> = outcome.diagnostics.iter().map(|d| d.to_string()).collect();
        out.extend(
            crate::config::validate(&outcome.config)
                .iter()
                .map(|d| d.to_string()),
        );
        out
    }

    const TARGETS: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [\"*.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http:
  - name: checkout
    directResponse:
      status: 200
---
";

    fn policy(spec: &str) -> String {
        format!(
            "{TARGETS}apiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn a_valid_policy_has_no_diagnostics() {
        let text = policy(
            "  targetRefs:
  - {kind: Gateway, name: gw}
  - {kind: Gateway, name: gw, hostname: a.example.com}
  - {kind: VirtualService, name: vs, route: checkout}
  type: Local
  local:
    rules:
    - name: per-ip
      clientSelectors:
      - sourceCIDR: {type: Distinct}
        headers: [{name: x-user, type: Distinct}, {name: x-tier, value: gold}]
      limit: {requests: 10, unit: Second, burst: 20}
    - clientSelectors:
      - path: {type: PathPrefix, value: /api}
        principal: {value: cluster.local/ns/a/sa/b}
        jwtClaim: {issuer: https://issuer, claim: sub, type: Distinct}
      limit: {requests: 5, per: 500ms}
",
        );
        assert_eq!(diags(&text), Vec::<String>::new());
    }

    #[test]
    fn errors_are_positioned_at_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "  targetRefs: [{kind: Gateway, name: nope}]\n  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:24:32: error: RateLimitPolicy/shop/p: spec.targetRefs[0].name: Gateway shop/nope does not exist; the limit cannot be attached",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw, hostname: b.other.com}]\n  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:24:42: error: RateLimitPolicy/shop/p: spec.targetRefs[0].hostname: no server of Gateway shop/gw serves host `b.other.com`; the limit cannot be attached",
            ),
            (
                "  targetRefs: [{kind: VirtualService, name: vs, route: pay}]\n  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:24:49: error: RateLimitPolicy/shop/p: spec.targetRefs[0].route: VirtualService shop/vs has no HTTP route named `pay` (its HTTP routes: checkout); the limit cannot be attached",
            ),
            (
                "  targetRefs: [{kind: VirtualService, name: other, namespace: x}]\n  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:24:39: error: RateLimitPolicy/shop/p: spec.targetRefs[0].name: VirtualService x/other does not exist; the limit cannot be attached",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{limit: {requests: 0, unit: Second}}]}\n",
                "t.yaml:25:28: error: RateLimitPolicy/shop/p: spec.local.rules[0].limit.requests: `requests` must be at least 1 (to refuse every request, use an AuthorizationPolicy)",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{limit: {requests: 1, per: 10ms}}]}\n",
                "t.yaml:25:41: error: RateLimitPolicy/shop/p: spec.local.rules[0].limit.per: `per` must be at least 50ms (Envoy refills token buckets at most every 50ms), not 10ms",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{limit: {requests: 1}}]}\n",
                "t.yaml:25:20: error: RateLimitPolicy/shop/p: spec.local.rules[0].limit: one of `unit` (Second, Minute, Hour, Day) or `per` (a duration) is required",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{clientSelectors: [{headers: [{name: x-user, type: Distinct, value: a}]}], limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:25:80: error: RateLimitPolicy/shop/p: spec.local.rules[0].clientSelectors[0].headers[0].value: type Distinct takes no `value`: every distinct value gets its own bucket",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{clientSelectors: [{sourceCIDR: {value: 10.0.0.0/33}}], limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:25:52: error: RateLimitPolicy/shop/p: spec.local.rules[0].clientSelectors[0].sourceCIDR.value: `10.0.0.0/33`: the prefix length must be 0 to 32",
            ),
            (
                "  selector: {matchLabels: {app: a}}\n  type: Global\n  global: {rules: [{limit: {requests: 1, unit: Second}}]}\n  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:27:3: error: RateLimitPolicy/shop/p: spec.local: set, but `type` is Global: only `spec.global` is used; remove one of them",
            ),
            (
                "  local: {rules: [{limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:23:1: error: RateLimitPolicy/shop/p: spec: a RateLimitPolicy needs `targetRefs` (Gateways, hosts, VirtualServices, routes) or a workload `selector`",
            ),
            (
                "  selector: {matchLabels: {app: a}}\n  local: {rules: [{name: a, limit: {requests: 1, unit: Second}}, {name: a, limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:25:67: error: RateLimitPolicy/shop/p: spec.local.rules[1].name: rule name `a` is used twice in this policy",
            ),
            (
                "  selector: {matchLabels: {app: a}}\n  local: {rules: [{clientSelectors: [{principal: {value: spiffe://cluster.local/ns/a/sa/b}}], limit: {requests: 1, unit: Second}}]}\n",
                "t.yaml:25:51: error: RateLimitPolicy/shop/p: spec.local.rules[0].clientSelectors[0].principal.value: principals are written without `spiffe://` (as in AuthorizationPolicy), e.g. cluster.local/ns/shop/sa/web",
            ),
        ];
        let mut wrong = Vec::new();
        for (spec, want) in cases {
            let got = diags(&policy(spec));
            if got != vec![want.to_string()] {
                wrong.push(format!("{spec}\n  got:  {got:?}\n  want: {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn unknown_fields_and_kinds_have_hints() {
        let got = diags(&policy(
            "  targetRefs: [{kind: Gateway, name: gw}]\n  local: {rules: [{limit: {requests: 1, unit: Second, brust: 2}}]}\n",
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("unknown field `brust`"), "{got:?}");
        let got =
            diags("apiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolcy\nmetadata: {name: p}\n");
        assert_eq!(
            got,
            [
                "t.yaml:2:1: error: RateLimitPolcy/default/p: kind: unknown kind `RateLimitPolcy` in meshgate.io; did you mean `RateLimitPolicy`?"
            ]
        );
    }
}
