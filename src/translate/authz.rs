//! AuthorizationPolicy as istiod translates it (`pilot/pkg/security/authz/builder` and
//! `model`): Envoy RBAC filters for one workload.
//!
//! Which policies apply to a workload: those of the root namespace and of the workload's
//! namespace whose selector is absent or matches the workload's labels. Per action, all
//! its policies become one RBAC config whose policies are named
//! `ns[NAMESPACE]-policy[NAME]-rule[INDEX]`: AUDIT as a LOG rule set, then DENY, then
//! ALLOW, each its own `envoy.filters.http.rbac` filter (or `envoy.filters.network.rbac`
//! before `tcp_proxy` on TCP chains). A policy with the `istio.io/dry-run: "true"`
//! annotation goes to the filter's shadow rules instead. A policy without rules becomes
//! a policy that never matches (an ALLOW policy without rules denies everything).
//!
//! One rule becomes one Envoy policy: its `from` sources are principals (any of them),
//! its `to` operations are permissions (any of them), its `when` conditions are added to
//! every principal or permission they concern; within a field any value matches, a
//! `notX` field matches none of its values.
//!
//! On TCP chains the HTTP-only attributes (hosts, methods, paths, request principals,
//! headers, JWT claims) cannot be evaluated: a rule of an ALLOW policy that uses one is
//! left out (it never allows), while for DENY and AUDIT only that value is left out (the
//! rule matches more widely), as istiod does.
//!
//! JWT attributes read what `envoy.filters.http.jwt_authn` leaves in dynamic metadata
//! (namespace `envoy.filters.http.jwt_authn`, keyed by issuer, per meshgate's
//! RequestAuthentication translation): `requestPrincipals: [ISS/SUB]` is the payload of
//! `ISS` having `sub` SUB; wildcard issuers expand over the issuers the workload's
//! RequestAuthentications accept.
use super::pb;
use crate::config::types::authorization_policy::{AuthzAction, Rule};
use crate::config::types::{AuthorizationPolicy, Resource};
use crate::config::validate::authorization_policy::{DRY_RUN_ANNOTATION, claim_path, parse_bool};
use crate::config::{Config, Diagnostic};
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::config::rbac::v3 as rbac;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use std::collections::BTreeMap;

/// The HTTP RBAC filter's name (and its dynamic metadata namespace).
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// The network RBAC filter's name.
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// The dynamic metadata namespace JWT payloads are read from.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Istio's stat prefix of network RBAC filters.
pub const TCP_STAT_PREFIX: &str = "tcp.";
/// Shadow rule stat prefixes of dry-run policies.
pub const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
pub const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
/// Shadow rule stat prefix of the CUSTOM action's RBAC filter: its metadata keys are
/// `istio_ext_authz_shadow_effective_policy_id` / `..._shadow_engine_result`.
pub const EXT_AUTHZ_SHADOW_PREFIX: &str = "istio_ext_authz_";
/// The prefix of the CUSTOM action's policy names, which ext_authz's
/// `filter_enabled_metadata` matches.
pub const EXT_AUTHZ_POLICY_PREFIX: &str = "istio-ext-authz";

/// The policies that apply to one workload, by action, in load order.
#[derive(Debug, Default)]
pub struct WorkloadPolicies<'a> {
    pub custom: Vec<&'a Resource<AuthorizationPolicy>>,
    pub deny: Vec<&'a Resource<AuthorizationPolicy>>,
    pub allow: Vec<&'a Resource<AuthorizationPolicy>>,
    pub audit: Vec<&'a Resource<AuthorizationPolicy>>,
}

impl WorkloadPolicies<'_> {
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
    }
}

/// The policies of `config` applying to a workload with `labels` in `namespace`, where
/// `root` is the mesh's root namespace (istiod's `ListAuthorizationPolicies`).
pub fn for_workload<'a>(
    config: &'a Config,
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> WorkloadPolicies<'a> {
    let mut out = WorkloadPolicies::default();
    for p in &config.authorization_policies {
        if p.meta.namespace != root && p.meta.namespace != namespace {
            continue;
        }
        if let Some(sel) = p.spec.match_labels()
            && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        {
            continue;
        }
        match p.spec.action() {
            AuthzAction::Custom => out.custom.push(p),
            AuthzAction::Deny => out.deny.push(p),
            AuthzAction::Allow => out.allow.push(p),
            AuthzAction::Audit => out.audit.push(p),
        }
    }
    out
}

/// What the translation of a workload's policies needs besides the policies.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The mesh's trust domain: principals naming `cluster.local` mean it.
    pub trust_domain: &'a str,
    /// The issuers the workload's RequestAuthentications accept (wildcard request
    /// principals and JWT claims expand over them).
    pub issuers: &'a [String],
}

/// The issuers of the RequestAuthentications that apply to a workload (with `labels` in
/// `namespace`), whose JWT payloads its policies read (keyed by issuer in the
/// `envoy.filters.http.jwt_authn` metadata). Without one, a request principal or claim
/// matches no request, as for a request without a token.
pub fn request_issuers(
    config: &Config,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = super::jwt::rules_for_workload(config, namespace, labels)
        .into_iter()
        .map(|r| r.rule.issuer.clone())
        .collect();
    out.dedup();
    out
}

/// The rule sets built for one action.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    /// Enforced rules (None: no policy of this action is enforced).
    pub rules: Option<rbac::Rbac>,
    /// Dry-run rules.
    pub shadow_rules: Option<rbac::Rbac>,
}

fn is_dry_run(p: &Resource<AuthorizationPolicy>, diagnostics: &mut Vec<Diagnostic>) -> bool {
    match p.meta.annotations.get(DRY_RUN_ANNOTATION) {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diagnostics.push(p.warning(
                "metadata.annotations",
                format!("`{DRY_RUN_ANNOTATION}: {v}` is not a boolean; the policy is enforced"),
            ));
            false
        }),
    }
}

/// Istio's `policyName`.
pub fn policy_name(namespace: &str, name: &str, rule: usize, custom: bool) -> String {
    let prefix = if custom {
        format!("{EXT_AUTHZ_POLICY_PREFIX}-")
    } else {
        String::new()
    };
    format!("{prefix}ns[{namespace}]-policy[{name}]-rule[{rule}]")
}

/// The RBAC policy that never matches (a policy without rules).
fn never_policy() -> rbac::Policy {
    rbac::Policy {
        permissions: vec![perm_not(perm_any())],
        principals: vec![princ_not(princ_any())],
        ..Default::default()
    }
}

/// istiod's `Builder.build` for one action: each policy's rules into the enforced or the
/// dry-run rule set.
pub fn build(
    cx: Context<'_>,
    policies: &[&Resource<AuthorizationPolicy>],
    action: rbac::rbac::Action,
    for_tcp: bool,
    custom: bool,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Built> {
    if policies.is_empty() {
        return None;
    }
    let new = || rbac::Rbac {
        action: action as i32,
        ..Default::default()
    };
    let (mut enforced, mut shadow) = (None::<rbac::Rbac>, None::<rbac::Rbac>);
    for p in policies {
        let target = if is_dry_run(p, diagnostics) {
            shadow.get_or_insert_with(new)
        } else {
            enforced.get_or_insert_with(new)
        };
        for (i, rule) in p.spec.rules.iter().enumerate() {
            let name = policy_name(&p.meta.namespace, &p.meta.name, i, custom);
            if let Some(policy) = generate(cx, rule, for_tcp, action) {
                target.policies.insert(name, policy);
            }
        }
        if p.spec.rules.is_empty() {
            let name = policy_name(&p.meta.namespace, &p.meta.name, 0, custom);
            target.policies.insert(name, never_policy());
        }
    }
    Some(Built {
        rules: enforced,
        shadow_rules: shadow,
    })
}

fn shadow_prefix(shadow: &Option<rbac::Rbac>) -> String {
    match shadow
        .as_ref()
        .map(|r| rbac::rbac::Action::try_from(r.action))
    {
        Some(Ok(rbac::rbac::Action::Allow)) => DRY_RUN_ALLOW_PREFIX.into(),
        Some(Ok(rbac::rbac::Action::Deny)) => DRY_RUN_DENY_PREFIX.into(),
        _ => String::new(),
    }
}

/// The actions in istiod's filter order: AUDIT, DENY, ALLOW.
fn by_action<'p, 'a>(
    policies: &'p WorkloadPolicies<'a>,
) -> [(&'p [&'a Resource<AuthorizationPolicy>], rbac::rbac::Action); 3] {
    [
        (&policies.audit, rbac::rbac::Action::Log),
        (&policies.deny, rbac::rbac::Action::Deny),
        (&policies.allow, rbac::rbac::Action::Allow),
    ]
}

/// The HTTP RBAC filters of a workload's ALLOW, DENY and AUDIT policies, in order
/// (istiod's `BuildHTTP`). CUSTOM policies are [`custom_shadow_rbac`]'s.
pub fn http_filters(
    cx: Context<'_>,
    policies: &WorkloadPolicies<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<hcm::HttpFilter> {
    let mut out = Vec::new();
    for (list, action) in by_action(policies) {
        if let Some(b) = build(cx, list, action, false, false, diagnostics) {
            let config = http_rbac::Rbac {
                shadow_rules_stat_prefix: shadow_prefix(&b.shadow_rules),
                rules: b.rules,
                shadow_rules: b.shadow_rules,
                ..Default::default()
            };
            out.push(http_filter(HTTP_RBAC_FILTER, pb::any(&config)));
        }
    }
    out
}

/// The network RBAC filters of a workload's ALLOW, DENY and AUDIT policies for a TCP
/// filter chain, in order (istiod's `BuildTCP`); they go before `tcp_proxy`.
pub fn network_filters(
    cx: Context<'_>,
    policies: &WorkloadPolicies<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<listener::Filter> {
    let mut out = Vec::new();
    for (list, action) in by_action(policies) {
        if let Some(b) = build(cx, list, action, true, false, diagnostics) {
            let config = network_rbac::Rbac {
                stat_prefix: TCP_STAT_PREFIX.into(),
                shadow_rules_stat_prefix: shadow_prefix(&b.shadow_rules),
                rules: b.rules,
                shadow_rules: b.shadow_rules,
                ..Default::default()
            };
            out.push(listener::Filter {
                name: NETWORK_RBAC_FILTER.into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pb::any(&config))),
            });
        }
    }
    out
}

/// The RBAC filter that goes first for a workload's CUSTOM policies (istiod's CUSTOM
/// builder): it enforces nothing, its shadow rules (stat prefix `istio_ext_authz_`)
/// record in dynamic metadata `envoy.filters.http.rbac` /
/// `istio_ext_authz_shadow_effective_policy_id` which policy matched (names prefixed
/// `istio-ext-authz-`), and the ext_authz filter placed right after it runs only when
/// that key starts with `istio-ext-authz` (`filter_enabled_metadata`). Dry-run CUSTOM
/// policies go to `rules` with the same names, as istiod does.
///
/// Returns the filter and the providers the policies name (sorted, distinct); None when
/// no CUSTOM policy applies.
pub fn custom_shadow_rbac(
    cx: Context<'_>,
    policies: &WorkloadPolicies<'_>,
    for_tcp: bool,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(http_rbac::Rbac, Vec<String>)> {
    // CUSTOM is evaluated as DENY so that HTTP-only values widen the match on TCP.
    let b = build(
        cx,
        &policies.custom,
        rbac::rbac::Action::Deny,
        for_tcp,
        true,
        diagnostics,
    )?;
    let mut providers: Vec<String> = policies
        .custom
        .iter()
        .filter_map(|p| p.spec.provider.as_ref().map(|p| p.name.clone()))
        .collect();
    providers.sort();
    providers.dedup();
    let config = http_rbac::Rbac {
        rules: b.shadow_rules.filter(|r| !r.policies.is_empty()),
        shadow_rules: b.rules,
        shadow_rules_stat_prefix: EXT_AUTHZ_SHADOW_PREFIX.into(),
        ..Default::default()
    };
    Some((config, providers))
}

/// An HTTP filter with a typed config.
pub fn http_filter(name: &str, config: crate::xds::pb::google::protobuf::Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// Inserts `filters` before the fault filter of a connection manager (after any filter
/// placed earlier, such as JWT authentication), keeping the router last.
pub fn insert_http_filters(
    manager: &mut hcm::HttpConnectionManager,
    filters: Vec<hcm::HttpFilter>,
) {
    if filters.is_empty() {
        return;
    }
    let at = manager
        .http_filters
        .iter()
        .position(|f| f.name == super::http_route::FAULT_FILTER)
        .unwrap_or(manager.http_filters.len().saturating_sub(1));
    manager.http_filters.splice(at..at, filters);
}

// ---- one rule -> one Envoy policy (istiod's `model.New` / `Generate`) ----

/// Which generator a rule field uses.
#[derive(Debug, Clone)]
enum Attr {
    // Permissions.
    DestIp,
    DestPort,
    ConnSni,
    EnvoyFilter(String, String),
    Host,
    Method,
    Path,
    // Principals.
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcPrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    Header(String),
    Claim(Vec<String>),
}

/// A rule field: its generator and values.
#[derive(Debug, Clone)]
struct Field {
    attr: Attr,
    values: Vec<String>,
    not_values: Vec<String>,
}

/// An HTTP-only attribute on a TCP chain.
struct HttpOnly;

impl Attr {
    fn is_permission(&self) -> bool {
        matches!(
            self,
            Attr::DestIp
                | Attr::DestPort
                | Attr::ConnSni
                | Attr::EnvoyFilter(..)
                | Attr::Host
                | Attr::Method
                | Attr::Path
        )
    }

    fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::Host
                | Attr::Method
                | Attr::Path
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Header(_)
                | Attr::Claim(_)
        )
    }

    /// The attribute of a `when` key (validation refuses the others).
    fn of_key(key: &str) -> Option<Attr> {
        Some(match key {
            "destination.ip" => Attr::DestIp,
            "destination.port" => Attr::DestPort,
            "connection.sni" => Attr::ConnSni,
            "source.ip" => Attr::SrcIp,
            "remote.ip" => Attr::RemoteIp,
            "source.namespace" => Attr::SrcNamespace,
            "source.principal" => Attr::SrcPrincipal,
            "request.auth.principal" => Attr::RequestPrincipal,
            "request.auth.audiences" => Attr::Audiences,
            "request.auth.presenter" => Attr::Presenter,
            k => {
                if let Some(rest) = k.strip_prefix("request.headers") {
                    let name = rest.strip_prefix('[')?.strip_suffix(']')?;
                    Attr::Header(name.to_string())
                } else if let Some(rest) = k.strip_prefix("request.auth.claims") {
                    Attr::Claim(
                        claim_path(rest)
                            .ok()?
                            .into_iter()
                            .map(String::from)
                            .collect(),
                    )
                } else if let Some(rest) = k.strip_prefix("experimental.") {
                    let (filter, tail) = rest.split_once('[')?;
                    let key = tail.strip_suffix(']')?;
                    Attr::EnvoyFilter(filter.to_string(), key.to_string())
                } else {
                    return None;
                }
            }
        })
    }
}

/// The fields of one rule, as istiod orders them: per `from` source (principals,
/// request principals, namespaces, remote IPs, IPs, then the `when` principals) and per
/// `to` operation (hosts, methods, paths, ports, then the `when` permissions).
fn generate(
    cx: Context<'_>,
    rule: &Rule,
    for_tcp: bool,
    action: rbac::rbac::Action,
) -> Option<rbac::Policy> {
    let mut base_perm: Vec<Field> = Vec::new();
    let mut base_princ: Vec<Field> = Vec::new();
    for c in &rule.when {
        let Some(attr) = Attr::of_key(&c.key) else {
            continue;
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            continue;
        }
        let f = Field {
            attr,
            values: c.values.clone(),
            not_values: c.not_values.clone(),
        };
        if f.attr.is_permission() {
            base_perm.push(f);
        } else {
            base_princ.push(f);
        }
    }
    let field = |attr: Attr, values: &[String], not_values: &[String]| {
        (!values.is_empty() || !not_values.is_empty()).then(|| Field {
            attr,
            values: values.to_vec(),
            not_values: not_values.to_vec(),
        })
    };
    let mut principal_lists: Vec<Vec<Field>> = Vec::new();
    for from in rule.from.iter().flatten() {
        let mut merged = Vec::new();
        if let Some(s) = &from.source {
            merged.extend(field(Attr::SrcPrincipal, &s.principals, &s.not_principals));
            merged.extend(field(
                Attr::RequestPrincipal,
                &s.request_principals,
                &s.not_request_principals,
            ));
            merged.extend(field(Attr::SrcNamespace, &s.namespaces, &s.not_namespaces));
            merged.extend(field(
                Attr::RemoteIp,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            ));
            merged.extend(field(Attr::SrcIp, &s.ip_blocks, &s.not_ip_blocks));
        }
        merged.extend(base_princ.iter().cloned());
        principal_lists.push(merged);
    }
    if rule.from.as_ref().is_none_or(Vec::is_empty) {
        principal_lists.push(base_princ);
    }
    let mut permission_lists: Vec<Vec<Field>> = Vec::new();
    for to in rule.to.iter().flatten() {
        let mut merged = Vec::new();
        if let Some(o) = &to.operation {
            merged.extend(field(Attr::Host, &o.hosts, &o.not_hosts));
            merged.extend(field(Attr::Method, &o.methods, &o.not_methods));
            merged.extend(field(Attr::Path, &o.paths, &o.not_paths));
            merged.extend(field(Attr::DestPort, &o.ports, &o.not_ports));
        }
        merged.extend(base_perm.iter().cloned());
        permission_lists.push(merged);
    }
    if rule.to.as_ref().is_none_or(Vec::is_empty) {
        permission_lists.push(base_perm);
    }
    // An HTTP-only value on TCP: ALLOW drops the whole rule, DENY and LOG drop the value.
    let allow = action == rbac::rbac::Action::Allow;
    let mut permissions = Vec::new();
    for list in &permission_lists {
        let mut and = Vec::new();
        for f in list {
            match permission_field(cx, f, for_tcp) {
                Ok(mut p) => and.append(&mut p),
                Err(HttpOnly) if allow => return None,
                Err(HttpOnly) => {}
            }
        }
        if and.is_empty() {
            and.push(perm_any());
        }
        permissions.push(perm_and(and));
    }
    let mut principals = Vec::new();
    for list in &principal_lists {
        let mut and = Vec::new();
        for f in list {
            match principal_field(cx, f, for_tcp) {
                Ok(mut p) => and.append(&mut p),
                Err(HttpOnly) if allow => return None,
                Err(HttpOnly) => {}
            }
        }
        if and.is_empty() {
            and.push(princ_any());
        }
        principals.push(princ_and(and));
    }
    Some(rbac::Policy {
        permissions,
        principals,
        ..Default::default()
    })
}

/// `or(values)` and `not(or(notValues))` of a permission field.
fn permission_field(
    cx: Context<'_>,
    f: &Field,
    for_tcp: bool,
) -> Result<Vec<rbac::Permission>, HttpOnly> {
    if for_tcp && f.attr.http_only() {
        return Err(HttpOnly);
    }
    let _ = cx;
    let mut out = Vec::new();
    let or: Vec<rbac::Permission> = f
        .values
        .iter()
        .filter_map(|v| permission(&f.attr, v))
        .collect();
    if !or.is_empty() {
        out.push(perm_or(or));
    }
    let or: Vec<rbac::Permission> = f
        .not_values
        .iter()
        .filter_map(|v| permission(&f.attr, v))
        .collect();
    if !or.is_empty() {
        out.push(perm_not(perm_or(or)));
    }
    Ok(out)
}

fn principal_field(
    cx: Context<'_>,
    f: &Field,
    for_tcp: bool,
) -> Result<Vec<rbac::Principal>, HttpOnly> {
    if for_tcp && f.attr.http_only() {
        return Err(HttpOnly);
    }
    let migrate = |values: &[String]| -> Vec<String> {
        if matches!(f.attr, Attr::SrcPrincipal) {
            migrate_trust_domain(values, cx.trust_domain)
        } else {
            values.to_vec()
        }
    };
    let mut out = Vec::new();
    let or: Vec<rbac::Principal> = migrate(&f.values)
        .iter()
        .filter_map(|v| principal(cx, &f.attr, v))
        .collect();
    if !or.is_empty() {
        out.push(princ_or(or));
    }
    let or: Vec<rbac::Principal> = migrate(&f.not_values)
        .iter()
        .filter_map(|v| principal(cx, &f.attr, v))
        .collect();
    if !or.is_empty() {
        out.push(princ_not(princ_or(or)));
    }
    Ok(out)
}

/// istiod's `ReplaceTrustDomainAliases` with no aliases: a principal naming
/// `cluster.local` (or the mesh's trust domain) names the mesh's trust domain.
fn migrate_trust_domain(values: &[String], trust_domain: &str) -> Vec<String> {
    values
        .iter()
        .map(|p| {
            if p.starts_with('*') {
                return p.clone();
            }
            match p.split_once("/ns/") {
                Some((td, rest))
                    if td == crate::config::mesh::DEFAULT_TRUST_DOMAIN || td == trust_domain =>
                {
                    format!("{trust_domain}/ns/{rest}")
                }
                _ => p.clone(),
            }
        })
        .collect()
}

fn permission(attr: &Attr, v: &str) -> Option<rbac::Permission> {
    use rbac::permission::Rule as R;
    let rule = match attr {
        Attr::DestIp => R::DestinationIp(cidr(v)?),
        Attr::DestPort => R::DestinationPort(v.parse::<u32>().ok().filter(|p| *p <= 65535)?),
        Attr::ConnSni => R::RequestedServerName(string_matcher(v, "")),
        Attr::EnvoyFilter(filter, key) => {
            let value = match v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                Some(inner) => list_one_of(value_string(string_matcher(inner, ""))),
                None => value_string(string_matcher(v, "")),
            };
            #[allow(deprecated)]
            R::Metadata(metadata_matcher(filter, &[key.as_str()], value))
        }
        Attr::Host => R::Header(header_matcher(":authority", v, true)),
        Attr::Method => R::Header(header_matcher(":method", v, false)),
        Attr::Path => R::UrlPath(matcher::PathMatcher {
            rule: Some(matcher::path_matcher::Rule::Path(string_matcher(v, ""))),
        }),
        _ => return None,
    };
    Some(rbac::Permission { rule: Some(rule) })
}

fn principal(cx: Context<'_>, attr: &Attr, v: &str) -> Option<rbac::Principal> {
    use rbac::principal::Identifier as I;
    let id = match attr {
        Attr::SrcIp => I::DirectRemoteIp(cidr(v)?),
        Attr::RemoteIp => I::RemoteIp(cidr(v)?),
        Attr::SrcNamespace => {
            let ns = v.replace('*', ".*");
            I::Authenticated(rbac::principal::Authenticated {
                principal_name: Some(regex_matcher(&format!(".*/ns/{ns}/.*"))),
            })
        }
        Attr::SrcPrincipal => I::Authenticated(rbac::principal::Authenticated {
            principal_name: Some(string_matcher(v, "spiffe://")),
        }),
        Attr::Header(name) => I::Header(header_matcher(name, v, false)),
        Attr::RequestPrincipal => return Some(request_principal(cx, v)),
        Attr::Audiences => return Some(claim(cx, &["aud"], v)),
        Attr::Presenter => return Some(claim(cx, &["azp"], v)),
        Attr::Claim(path) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            return Some(claim(cx, &path, v));
        }
        _ => return None,
    };
    Some(rbac::Principal {
        identifier: Some(id),
    })
}

/// A string matched as one of Istio's wildcard forms with a test usable at translation
/// time (issuers are known then).
enum Wild<'s> {
    Any,
    Exact(&'s str),
    Prefix(&'s str),
    Suffix(&'s str),
}

impl Wild<'_> {
    fn test(&self, s: &str) -> bool {
        match self {
            Wild::Any => !s.is_empty(),
            Wild::Exact(e) => s == *e,
            Wild::Prefix(p) => s.starts_with(p),
            Wild::Suffix(x) => s.ends_with(x),
        }
    }

    fn matcher(&self) -> matcher::StringMatcher {
        match self {
            Wild::Any => regex_matcher(".+"),
            Wild::Exact(e) => exact(e),
            Wild::Prefix(p) => {
                with_pattern(matcher::string_matcher::MatchPattern::Prefix(p.to_string()))
            }
            Wild::Suffix(s) => {
                with_pattern(matcher::string_matcher::MatchPattern::Suffix(s.to_string()))
            }
        }
    }
}

/// `requestPrincipals` / `request.auth.principal`: `ISS/SUB` with istiod's wildcard
/// forms, as `sub` of the payload of each matching issuer.
fn request_principal(cx: Context<'_>, v: &str) -> rbac::Principal {
    let (iss, sub, found) = match v.rfind('/') {
        Some(i) => (&v[..i], &v[i + 1..], true),
        None => (v, "", false),
    };
    let (match_iss, match_sub) = if v == "*" {
        (Wild::Any, Wild::Any)
    } else if let Some(rest) = v.strip_prefix('*') {
        if found {
            let i = if iss == "*" {
                Wild::Any
            } else {
                Wild::Suffix(iss.strip_prefix('*').unwrap_or(iss))
            };
            (i, Wild::Exact(sub))
        } else {
            (Wild::Any, Wild::Suffix(rest))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        if found {
            let s = if sub == "*" {
                Wild::Any
            } else {
                Wild::Prefix(sub.strip_suffix('*').unwrap_or(sub))
            };
            (Wild::Exact(iss), s)
        } else {
            (Wild::Prefix(rest), Wild::Any)
        }
    } else {
        (Wild::Exact(iss), Wild::Exact(sub))
    };
    let issuers: Vec<&str> = match match_iss {
        Wild::Exact(i) => vec![i],
        ref w => cx
            .issuers
            .iter()
            .map(String::as_str)
            .filter(|i| w.test(i))
            .collect(),
    };
    let ids: Vec<rbac::Principal> = issuers
        .iter()
        .map(|i| {
            metadata_principal(metadata_matcher(
                JWT_AUTHN_FILTER,
                &[i, "sub"],
                value_string(match_sub.matcher()),
            ))
        })
        .collect();
    one_or_never(ids)
}

/// A JWT claim at `path` of each issuer's payload: a string equal to `v`, or a list
/// containing it (istiod's `MetadataListValueMatcherForJWTClaims`).
fn claim(cx: Context<'_>, path: &[&str], v: &str) -> rbac::Principal {
    let ids: Vec<rbac::Principal> = cx
        .issuers
        .iter()
        .map(|iss| {
            let mut full = vec![iss.as_str()];
            full.extend_from_slice(path);
            let m = string_matcher(v, "");
            let value = matcher::ValueMatcher {
                match_pattern: Some(matcher::value_matcher::MatchPattern::OrMatch(
                    matcher::OrMatcher {
                        value_matchers: vec![list_one_of(value_string(m.clone())), value_string(m)],
                    },
                )),
            };
            metadata_principal(metadata_matcher(JWT_AUTHN_FILTER, &full, value))
        })
        .collect();
    one_or_never(ids)
}

/// One principal, an or of several, or (none) one that never matches.
fn one_or_never(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    match ids.len() {
        0 => princ_not(princ_any()),
        1 => ids.remove(0),
        _ => princ_or(ids),
    }
}

// ---- Envoy matcher builders (istiod's `matcher` package) ----

fn with_pattern(p: matcher::string_matcher::MatchPattern) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn exact(s: &str) -> matcher::StringMatcher {
    with_pattern(matcher::string_matcher::MatchPattern::Exact(s.to_string()))
}

fn regex_matcher(re: &str) -> matcher::StringMatcher {
    with_pattern(matcher::string_matcher::MatchPattern::SafeRegex(
        matcher::RegexMatcher {
            regex: re.to_string(),
            ..Default::default()
        },
    ))
}

/// istiod's `StringMatcherWithPrefix`: `*` any non-empty, `*x` suffix, `x*` prefix,
/// else exact, with `prefix` prepended.
fn string_matcher(v: &str, prefix: &str) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    if v == "*" {
        regex_matcher(".+")
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            with_pattern(P::Suffix(rest.to_string()))
        } else {
            regex_matcher(&format!("{prefix}.*{}", regex::escape(rest)))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        with_pattern(P::Prefix(format!("{prefix}{rest}")))
    } else {
        exact(&format!("{prefix}{v}"))
    }
}

/// istiod's `HeaderMatcher` / `HostMatcher` (case-insensitive).
fn header_matcher(name: &str, v: &str, ignore_case: bool) -> route::HeaderMatcher {
    use matcher::string_matcher::MatchPattern as P;
    use route::header_matcher::HeaderMatchSpecifier as S;
    let spec = if v == "*" {
        S::PresentMatch(true)
    } else {
        let pattern = if let Some(rest) = v.strip_prefix('*') {
            P::Suffix(rest.to_string())
        } else if let Some(rest) = v.strip_suffix('*') {
            P::Prefix(rest.to_string())
        } else {
            P::Exact(v.to_string())
        };
        S::StringMatch(matcher::StringMatcher {
            match_pattern: Some(pattern),
            ignore_case,
        })
    };
    route::HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// An IP or CIDR block (validation refuses others).
fn cidr(v: &str) -> Option<core::CidrRange> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Some(core::CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(pb::u32v(len.unwrap_or(max).min(max))),
    })
}

fn value_string(m: matcher::StringMatcher) -> matcher::ValueMatcher {
    matcher::ValueMatcher {
        match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(m)),
    }
}

fn list_one_of(v: matcher::ValueMatcher) -> matcher::ValueMatcher {
    matcher::ValueMatcher {
        match_pattern: Some(matcher::value_matcher::MatchPattern::ListMatch(Box::new(
            matcher::ListMatcher {
                match_pattern: Some(matcher::list_matcher::MatchPattern::OneOf(Box::new(v))),
            },
        ))),
    }
}

fn metadata_matcher(
    filter: &str,
    path: &[&str],
    value: matcher::ValueMatcher,
) -> matcher::MetadataMatcher {
    matcher::MetadataMatcher {
        filter: filter.to_string(),
        path: path
            .iter()
            .map(|k| matcher::metadata_matcher::PathSegment {
                segment: Some(matcher::metadata_matcher::path_segment::Segment::Key(
                    k.to_string(),
                )),
            })
            .collect(),
        value: Some(value),
        invert: false,
    }
}

#[allow(deprecated)]
fn metadata_principal(m: matcher::MetadataMatcher) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Metadata(m)),
    }
}

fn perm_any() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}

fn perm_and(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
            rules,
        })),
    }
}

fn perm_or(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}

fn perm_not(p: rbac::Permission) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::NotRule(Box::new(p))),
    }
}

fn princ_any() -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Any(true)),
    }
}

fn princ_and(ids: Vec<rbac::Principal>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
            ids,
        })),
    }
}

fn princ_or(ids: Vec<rbac::Principal>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}

fn princ_not(p: rbac::Principal) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::NotId(Box::new(p))),
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
