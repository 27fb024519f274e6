//! What one proxy sees of the configuration: the Gateways that select it, the
//! VirtualServices bound to them, and the DestinationRules that apply to each service —
//! with Istio's short-name resolution, `exportTo` visibility and namespace precedence.
use crate::config::hosts;
use crate::config::types::StringMatch;
use crate::config::types::destination_rule::{Subset, TrafficPolicy};
use crate::config::types::virtual_service::{HttpMatchRequest, HttpRoute};
use crate::config::{Config, DestinationRule, Diagnostic, Gateway, Resource, VirtualService};
use crate::registry::{Locality, Registry, Visibility};
use crate::xds::ProxyIdentity;
use std::collections::BTreeMap;

/// Istio's root configuration namespace: mesh-wide DestinationRules live there.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A VirtualService with its hosts and gateways resolved and its delegates merged in.
pub struct BoundVirtualService<'a> {
    pub res: &'a Resource<VirtualService>,
    /// Hosts, short names resolved in the VirtualService's namespace.
    pub hosts: Vec<String>,
    /// The hosts that are not wildcards, for look-ups (a VirtualService may name
    /// thousands of hosts, each bound to its own Gateway server).
    pub exact_hosts: std::collections::HashSet<String>,
    /// Gateways as `namespace/name` (or `mesh`).
    pub gateways: Vec<String>,
    /// HTTP routes, with `delegate` routes replaced by the delegate's routes.
    pub http: Vec<BoundHttpRoute<'a>>,
}

/// One HTTP route and where it came from.
pub struct BoundHttpRoute<'a> {
    pub route: HttpRoute,
    /// The resource the route was written in (the delegate for delegated routes).
    pub source: &'a Resource<VirtualService>,
    /// Its field path there, e.g. `spec.http[2]`.
    pub field: String,
    /// The namespace its short host names resolve in.
    pub namespace: String,
}

/// A DestinationRule with its host resolved.
struct ResolvedDestinationRule<'a> {
    res: &'a Resource<DestinationRule>,
    host: String,
    visibility: Visibility,
}

/// The DestinationRules that apply to one service, merged the way Istio consolidates
/// several rules for one host: the first rule's traffic policy, every distinct subset.
#[derive(Debug, Clone, Default)]
pub struct MergedDestinationRule<'a> {
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    /// The rules merged, first one first (for metadata).
    pub sources: Vec<&'a Resource<DestinationRule>>,
}

impl MergedDestinationRule<'_> {
    /// The subset named `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// Everything the translator reads, seen from one proxy.
pub struct Scope<'a> {
    pub config: &'a Config,
    pub registry: &'a Registry,
    pub proxy: &'a ProxyIdentity,
    /// The proxy's namespace (visibility and DestinationRule precedence).
    pub namespace: String,
    pub domain_suffix: String,
    /// The mesh's trust domain: the `TD` of the SPIFFE ids mesh mTLS verifies.
    pub trust_domain: String,
    /// MeshConfig `enableAutoMtls`.
    pub auto_mtls: bool,
    /// MeshConfig `connectTimeout`: for clusters whose DestinationRule sets none.
    pub connect_timeout: std::time::Duration,
    /// Where the proxy's mesh secrets come from (ADS for gateways, the agent for sidecars).
    pub mesh_secrets: super::tls::MeshSecrets,
    /// MeshConfig `extensionProviders`: the external authorizers CUSTOM policies name.
    pub extension_providers: Vec<crate::config::mesh::ExtensionProvider>,
    /// The mesh's tracing: `defaultProviders.tracing` and `defaultConfig.tracing`.
    pub tracing: crate::config::mesh::MeshTracing,
    /// MeshConfig `rootNamespace`: its selector-less Telemetry applies mesh-wide.
    pub root_namespace: String,
    /// `gatewayTopology` of the gateway's ProxyConfig: trusted XFF hops, XFCC handling,
    /// the PROXY protocol on its listeners.
    pub gateway_topology: crate::config::mesh::GatewayTopology,
    /// Where the proxy runs (from its topology labels), for locality load balancing.
    pub locality: Locality,
    /// Gateways whose selector matches the proxy, in Istio's order (name, namespace).
    pub gateways: Vec<&'a Resource<Gateway>>,
    /// VirtualServices visible to the proxy, in Istio's order (name, namespace).
    pub virtual_services: Vec<BoundVirtualService<'a>>,
    destination_rules: Vec<ResolvedDestinationRule<'a>>,
    /// The rules the proxy's namespace keeps for itself, indexed by host.
    own_rules: RuleIndex,
    /// Per namespace, its rules exported to the proxy, indexed by host.
    exported_rules: std::collections::HashMap<String, RuleIndex>,
    /// Problems found while scoping (delegation), drained by the translator.
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Scope<'a> {
    pub fn new(config: &'a Config, registry: &'a Registry, proxy: &'a ProxyIdentity) -> Scope<'a> {
        let domain_suffix = if proxy.domain_suffix.is_empty() {
            hosts::DEFAULT_DOMAIN_SUFFIX.to_string()
        } else {
            proxy.domain_suffix.clone()
        };
        let gateways = selected_gateways(config, &proxy.labels);
        // Without an explicit namespace the proxy lives with the Gateways that select it.
        let namespace = if !proxy.namespace.is_empty() {
            proxy.namespace.clone()
        } else {
            gateways
                .first()
                .map(|g| g.meta.namespace.clone())
                .unwrap_or_else(|| crate::config::types::DEFAULT_NAMESPACE.to_string())
        };

        let mut diagnostics = Vec::new();
        let mut virtual_services: Vec<BoundVirtualService> = config
            .virtual_services
            .iter()
            // Delegates (no hosts) are only reachable through a root VirtualService.
            .filter(|vs| !vs.spec.hosts.is_empty())
            .filter(|vs| {
                Visibility::from_export_to(&vs.spec.export_to, &vs.meta.namespace)
                    .includes(&namespace)
            })
            .map(|vs| {
                let resolved: Vec<String> = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| hosts::resolve_short_name(h, &vs.meta.namespace, &domain_suffix))
                    .collect();
                (vs, resolved)
            })
            .map(|(vs, resolved)| BoundVirtualService {
                http: bind_http_routes(config, vs, &mut diagnostics),
                res: vs,
                exact_hosts: resolved
                    .iter()
                    .filter(|h| !hosts::is_wildcard(h))
                    .cloned()
                    .collect(),
                hosts: resolved,
                gateways: vs
                    .spec
                    .gateways
                    .iter()
                    .map(|g| resolve_gateway_name(g, &vs.meta.namespace))
                    .collect(),
            })
            .collect();
        virtual_services.sort_by(|a, b| {
            (&a.res.meta.name, &a.res.meta.namespace)
                .cmp(&(&b.res.meta.name, &b.res.meta.namespace))
        });

        let destination_rules = config
            .destination_rules
            .iter()
            .filter(|dr| match &dr.spec.workload_selector {
                Some(sel) => sel
                    .match_labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v)),
                None => true,
            })
            .map(|dr| ResolvedDestinationRule {
                res: dr,
                host: hosts::resolve_short_name(&dr.spec.host, &dr.meta.namespace, &domain_suffix),
                // Istio never exports a rule with a workload selector: it applies to the
                // workloads it selects in its own namespace only.
                visibility: if dr.spec.workload_selector.is_some() {
                    Visibility::Namespaces([dr.meta.namespace.clone()].into())
                } else {
                    Visibility::from_export_to(&dr.spec.export_to, &dr.meta.namespace)
                },
            })
            .collect::<Vec<_>>();
        let (own_rules, exported_rules) = index_rules(&destination_rules, &namespace);

        Scope {
            config,
            registry,
            proxy,
            namespace,
            domain_suffix,
            trust_domain: super::DEFAULT_TRUST_DOMAIN.to_string(),
            auto_mtls: true,
            connect_timeout: std::time::Duration::from_secs(
                super::cluster::DEFAULT_CONNECT_TIMEOUT_SECS,
            ),
            mesh_secrets: super::tls::MeshSecrets::Ads,
            extension_providers: Vec::new(),
            tracing: Default::default(),
            root_namespace: crate::config::mesh::DEFAULT_ROOT_NAMESPACE.to_string(),
            gateway_topology: Default::default(),
            locality: Locality::of_workload("", &proxy.labels),
            gateways,
            virtual_services,
            destination_rules,
            own_rules,
            exported_rules,
            diagnostics,
        }
    }

    /// A warning positioned at a field of the ServiceEntry that defined `service`.
    pub fn service_warning(
        &self,
        service: &crate::registry::Service,
        field: &str,
        message: String,
    ) -> crate::config::Diagnostic {
        match self.config.service_entries.iter().find(|se| {
            se.meta.namespace == service.namespace && se.meta.name == service.source_name
        }) {
            Some(se) => se.warning(field, message),
            None => crate::config::Diagnostic {
                file: String::new(),
                line: 0,
                column: 0,
                severity: crate::config::Severity::Warning,
                resource: Some(format!(
                    "ServiceEntry/{}/{}",
                    service.namespace, service.source_name
                )),
                field: (!field.is_empty()).then(|| field.to_string()),
                message,
            },
        }
    }

    /// Resolves a host written in a resource of `namespace` (`reviews` ->
    /// `reviews.NAMESPACE.svc.cluster.local`).
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        hosts::resolve_short_name(host, namespace, &self.domain_suffix)
    }

    /// The VirtualServices bound to the gateway `namespace/name`.
    pub fn virtual_services_for_gateway<'s>(
        &'s self,
        gateway: &'s str,
    ) -> impl Iterator<Item = &'s BoundVirtualService<'a>> + 's {
        self.virtual_services
            .iter()
            .filter(move |vs| vs.gateways.iter().any(|g| g == gateway))
    }

    /// The DestinationRule(s) for a service host, Istio's way: first the rules the proxy's
    /// namespace keeps for itself (for a proxy in the root namespace, only the root
    /// namespace's private rules, so that its mesh-wide defaults do not hide the service
    /// namespace's rules), then rules exported to the proxy by the service's namespace,
    /// then by the root namespace. Within a namespace the exact host beats the most
    /// specific wildcard, and several rules for the same host merge.
    pub fn destination_rule(
        &self,
        host: &str,
        service_namespace: Option<&str>,
    ) -> Option<MergedDestinationRule<'a>> {
        if let Some(merged) = most_specific(
            host,
            &self.own_rules.candidates(&self.destination_rules, host),
        ) {
            return Some(merged);
        }
        for owner in [service_namespace, Some(ROOT_NAMESPACE)]
            .into_iter()
            .flatten()
        {
            let Some(index) = self.exported_rules.get(owner) else {
                continue;
            };
            if let Some(merged) =
                most_specific(host, &index.candidates(&self.destination_rules, host))
            {
                return Some(merged);
            }
        }
        None
    }
}

/// Rules indexed by host, so that finding a service's rules does not scan every rule:
/// exact hosts by name, wildcards in a list (few in practice).
#[derive(Default)]
struct RuleIndex {
    exact: std::collections::HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
}

impl RuleIndex {
    fn add(&mut self, i: usize, host: &str) {
        if hosts::is_wildcard(host) {
            self.wildcard.push(i);
        } else {
            self.exact.entry(host.to_string()).or_default().push(i);
        }
    }

    /// The rules that may cover `host`, in configuration order.
    fn candidates<'r, 'a>(
        &self,
        rules: &'r [ResolvedDestinationRule<'a>],
        host: &str,
    ) -> Vec<&'r ResolvedDestinationRule<'a>> {
        let mut idx: Vec<usize> = self.wildcard.clone();
        if let Some(exact) = self.exact.get(host) {
            idx.extend(exact);
            idx.sort_unstable();
        }
        idx.into_iter().map(|i| &rules[i]).collect()
    }
}

/// The tiers of Istio's DestinationRule precedence for a proxy in `proxy_ns`: the rules
/// its namespace keeps for itself (for a proxy in the root namespace, only the root
/// namespace's private rules), and per namespace the rules it exports to the proxy.
fn index_rules(
    rules: &[ResolvedDestinationRule<'_>],
    proxy_ns: &str,
) -> (RuleIndex, std::collections::HashMap<String, RuleIndex>) {
    let root_private = Visibility::Namespaces([ROOT_NAMESPACE.to_string()].into());
    let mut own = RuleIndex::default();
    let mut exported: std::collections::HashMap<String, RuleIndex> =
        std::collections::HashMap::new();
    for (i, dr) in rules.iter().enumerate() {
        let ns = dr.res.meta.namespace.as_str();
        if ns == proxy_ns {
            let keeps = if proxy_ns == ROOT_NAMESPACE {
                dr.visibility == root_private
            } else {
                dr.visibility.includes(proxy_ns)
            };
            if keeps {
                own.add(i, &dr.host);
            }
        }
        if dr.visibility.includes(proxy_ns) {
            exported.entry(ns.to_string()).or_default().add(i, &dr.host);
        }
    }
    (own, exported)
}

/// The HTTP routes of a VirtualService, each `delegate` route replaced by the delegate
/// VirtualService's routes merged with it the way Istio merges them: matches combined
/// (a delegate match that conflicts with every root match drops that route), and the
/// root's settings filling what the delegate leaves unset.
fn bind_http_routes<'a>(
    config: &'a Config,
    vs: &'a Resource<VirtualService>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<BoundHttpRoute<'a>> {
    let mut out = Vec::with_capacity(vs.spec.http.len());
    for (i, root) in vs.spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let Some(delegate) = &root.delegate else {
            out.push(BoundHttpRoute {
                route: root.clone(),
                source: vs,
                field,
                namespace: vs.meta.namespace.clone(),
            });
            continue;
        };
        let ns = if delegate.namespace.is_empty() {
            vs.meta.namespace.as_str()
        } else {
            delegate.namespace.as_str()
        };
        let Some(target) = config
            .virtual_services
            .iter()
            .find(|d| d.meta.namespace == ns && d.meta.name == delegate.name)
        else {
            diagnostics.push(vs.warning(
                &format!("{field}.delegate"),
                format!(
                    "delegate VirtualService {ns}/{} does not exist; the route is left out",
                    delegate.name
                ),
            ));
            continue;
        };
        if !Visibility::from_export_to(&target.spec.export_to, &target.meta.namespace)
            .includes(&vs.meta.namespace)
        {
            diagnostics.push(vs.warning(
                &format!("{field}.delegate"),
                format!(
                    "delegate VirtualService {ns}/{} is not exported to namespace {}; the route is left out",
                    delegate.name, vs.meta.namespace
                ),
            ));
            continue;
        }
        if !target.spec.hosts.is_empty() {
            diagnostics.push(vs.warning(
                &format!("{field}.delegate"),
                format!(
                    "VirtualService {ns}/{} has hosts, so it cannot be a delegate; the route is left out",
                    delegate.name
                ),
            ));
            continue;
        }
        for (j, leaf) in target.spec.http.iter().enumerate() {
            let leaf_field = format!("spec.http[{j}]");
            if leaf.delegate.is_some() {
                diagnostics.push(target.warning(
                    &format!("{leaf_field}.delegate"),
                    "a delegate cannot delegate again; the route is left out",
                ));
                continue;
            }
            match merge_http_route(root, leaf) {
                Some(route) => out.push(BoundHttpRoute {
                    route,
                    source: target,
                    field: leaf_field,
                    namespace: target.meta.namespace.clone(),
                }),
                None => diagnostics.push(target.warning(
                    &format!("{leaf_field}.match"),
                    format!(
                        "no match of this delegated route fits within the matches of {}/{} {field}; the route is left out",
                        vs.meta.namespace, vs.meta.name
                    ),
                )),
            }
        }
    }
    out
}

/// A delegate's route merged with its root route (Istio's `mergeHTTPRoute`).
fn merge_http_route(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &leaf.matches)?;
    let mut out = leaf.clone();
    out.matches = matches;
    out.name = join_names(&root.name, &leaf.name);
    if out.rewrite.is_none() {
        out.rewrite = root.rewrite.clone();
    }
    if out.direct_response.is_none() {
        out.direct_response = root.direct_response.clone();
    }
    if out.timeout.is_none() {
        out.timeout = root.timeout;
    }
    if out.retries.is_none() {
        out.retries = root.retries.clone();
    }
    if out.fault.is_none() {
        out.fault = root.fault.clone();
    }
    if out.mirror.is_none() {
        out.mirror = root.mirror.clone();
    }
    if out.mirror_percent.is_none() {
        out.mirror_percent = root.mirror_percent;
    }
    if out.mirror_percentage.is_none() {
        out.mirror_percentage = root.mirror_percentage;
    }
    if out.cors_policy.is_none() {
        out.cors_policy = root.cors_policy.clone();
    }
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    if out.headers.is_none() {
        out.headers = root.headers.clone();
    }
    Some(out)
}

fn join_names(root: &str, leaf: &str) -> String {
    match (root.is_empty(), leaf.is_empty()) {
        (_, true) => root.to_string(),
        (true, false) => leaf.to_string(),
        (false, false) => format!("{root}-{leaf}"),
    }
}

/// Every delegate match combined with every root match it does not conflict with; None
/// when a delegate match fits no root match.
fn merge_matches(
    root: &[HttpMatchRequest],
    leaf: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let mut found = false;
        for r in root {
            if match_conflict(r, l) {
                continue;
            }
            out.push(merge_match(r, l));
            found = true;
        }
        if !found {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = join_names(&root.name, &leaf.name);
    if out.uri.is_none() {
        out.uri = root.uri.clone();
    }
    if out.scheme.is_none() {
        out.scheme = root.scheme.clone();
    }
    if out.method.is_none() {
        out.method = root.method.clone();
    }
    if out.authority.is_none() {
        out.authority = root.authority.clone();
    }
    let merge = |a: &BTreeMap<String, StringMatch>, b: &BTreeMap<String, StringMatch>| {
        let mut m = a.clone();
        m.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = merge(&root.headers, &leaf.headers);
    out.without_headers = merge(&root.without_headers, &leaf.without_headers);
    out.query_params = merge(&root.query_params, &leaf.query_params);
    if out.port == 0 {
        out.port = root.port;
    }
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    if out.source_namespace.is_empty() {
        out.source_namespace = root.source_namespace.clone();
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix = root.stat_prefix.clone();
    }
    out
}

/// Istio's `hasConflict`: a delegate match must narrow the root match, not contradict it.
fn match_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter()
            .any(|(k, v)| string_match_conflict(r.get(k), Some(v)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if root.port > 0 && leaf.port > 0 && root.port != leaf.port {
        return true;
    }
    if !root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    if !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && (root.gateways.len() < leaf.gateways.len()
            || leaf.gateways.iter().any(|g| !root.gateways.contains(g)))
    {
        return true;
    }
    false
}

/// Istio's `stringMatchConflict`: regexes never combine; an exact root needs the same
/// exact; a prefix root needs a leaf inside it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Exact(_), _) => true,
        (StringMatch::Prefix(r), StringMatch::Prefix(l)) => !l.starts_with(r.as_str()),
        (StringMatch::Prefix(r), StringMatch::Exact(l)) => !l.starts_with(r.as_str()),
        (StringMatch::Prefix(_), StringMatch::Empty) => true,
        (StringMatch::Empty, _) => true,
    }
}

/// The Gateways whose selector matches `labels` (an empty selector matches every
/// workload), in Istio's order: by name, then namespace.
pub fn selected_gateways<'a>(
    config: &'a Config,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Resource<Gateway>> {
    let mut gateways: Vec<&Resource<Gateway>> = config
        .gateways
        .iter()
        .filter(|g| {
            g.spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    gateways
        .sort_by(|a, b| (&a.meta.name, &a.meta.namespace).cmp(&(&b.meta.name, &b.meta.namespace)));
    gateways
}

/// The rules for the most specific host in `rules` that covers `host`, merged.
fn most_specific<'a>(
    host: &str,
    rules: &[&ResolvedDestinationRule<'a>],
) -> Option<MergedDestinationRule<'a>> {
    let best = rules
        .iter()
        .filter(|dr| hosts::is_subset_of(host, &dr.host))
        .map(|dr| dr.host.as_str())
        .max_by_key(|h| (!hosts::is_wildcard(h), h.len()))?;
    // Rules selecting this workload by label come before rules for every workload.
    let mut chosen: Vec<&ResolvedDestinationRule> =
        rules.iter().copied().filter(|dr| dr.host == best).collect();
    chosen.sort_by_key(|dr| dr.res.spec.workload_selector.is_none());
    let mut merged = MergedDestinationRule::default();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for dr in chosen {
        if merged.traffic_policy.is_none() {
            merged.traffic_policy = dr.res.spec.traffic_policy.clone();
        }
        for subset in &dr.res.spec.subsets {
            if seen.insert(subset.name.clone(), ()).is_none() {
                merged.subsets.push(subset.clone());
            }
        }
        merged.sources.push(dr.res);
    }
    Some(merged)
}

/// A gateway reference from a VirtualService as `namespace/name`: `name` is in the
/// VirtualService's namespace, `ns/name` is explicit, and the legacy
/// `name.namespace.svc.cluster.local` form names its namespace.
pub fn resolve_gateway_name(gateway: &str, vs_namespace: &str) -> String {
    if gateway == "mesh" {
        return gateway.to_string();
    }
    if let Some((ns, name)) = gateway.split_once('/') {
        let ns = if ns == "." { vs_namespace } else { ns };
        return format!("{ns}/{name}");
    }
    if let Some((name, rest)) = gateway.split_once('.') {
        let ns = rest.split('.').next().unwrap_or(vs_namespace);
        return format!("{ns}/{name}");
    }
    format!("{vs_namespace}/{gateway}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DestinationRule `NAME` in `NS` for `HOST`, with optional extra spec lines.
    fn rule(ns: &str, name: &str, host: &str, extra: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {host}\n{extra}---\n"
        )
    }

    /// Which rule applies to each host, seen from a gateway in `proxy_ns`.
    fn winners(yaml: &str, proxy_ns: &str, hosts: &[(&str, &str)]) -> Vec<(String, String)> {
        let loaded = crate::config::load_str("t.yaml", yaml);
        assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
        let (registry, _) = Registry::from_config(&loaded.config);
        let proxy = ProxyIdentity::gateway(
            proxy_ns,
            BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
        );
        let scope = Scope::new(&loaded.config, &registry, &proxy);
        hosts
            .iter()
            .map(|(host, service_ns)| {
                let name = scope
                    .destination_rule(host, Some(service_ns))
                    .and_then(|m| {
                        m.sources
                            .first()
                            .map(|s| format!("{}/{}", s.meta.namespace, s.meta.name))
                    })
                    .unwrap_or_else(|| "-".into());
                (host.to_string(), name)
            })
            .collect()
    }

    #[test]
    fn destination_rules_are_found_in_istios_namespace_order() {
        let mut yaml = String::new();
        // A gateway in `ingress`: its own namespace's rules first (unless private to
        // another namespace), then the service's namespace, then the root namespace.
        yaml += &rule("ingress", "own", "a.internal", "");
        yaml += &rule("shop", "a-shop", "a.internal", "");
        yaml += &rule(
            "ingress",
            "elsewhere-only",
            "b.internal",
            "  exportTo: [shop]\n",
        );
        yaml += &rule("shop", "b-shop", "b.internal", "");
        yaml += &rule("shop", "c-private", "c.internal", "  exportTo: [.]\n");
        yaml += &rule("istio-system", "c-root", "c.internal", "");
        yaml += &rule("shop", "d-named", "d.internal", "  exportTo: [ingress]\n");
        yaml += &rule("istio-system", "d-root", "d.internal", "");
        // A workloadSelector rule is never exported, even with exportTo `*`.
        yaml += &rule(
            "shop",
            "e-selector",
            "e.internal",
            "  exportTo: ['*']\n  workloadSelector: {matchLabels: {istio: ingressgateway}}\n",
        );
        yaml += &rule("istio-system", "e-root", "e.internal", "");
        yaml += &rule(
            "ingress",
            "f-selector",
            "f.internal",
            "  workloadSelector: {matchLabels: {istio: ingressgateway}}\n",
        );
        yaml += &rule("ingress", "f-all", "f.internal", "");
        // A gateway in the root namespace: the root namespace's private rules first, then
        // the service's namespace, then the root namespace's exported rules.
        yaml += &rule("istio-system", "g-root", "g.internal", "");
        yaml += &rule("shop", "g-shop", "g.internal", "");
        yaml += &rule(
            "istio-system",
            "h-root-private",
            "h.internal",
            "  exportTo: [.]\n",
        );
        yaml += &rule("shop", "h-shop", "h.internal", "");
        let from_ingress = winners(
            &yaml,
            "ingress",
            &[
                ("a.internal", "shop"),
                ("b.internal", "shop"),
                ("c.internal", "shop"),
                ("d.internal", "shop"),
                ("e.internal", "shop"),
                ("f.internal", "shop"),
            ],
        );
        let want: Vec<(String, String)> = [
            ("a.internal", "ingress/own"),
            ("b.internal", "shop/b-shop"),
            ("c.internal", "istio-system/c-root"),
            ("d.internal", "shop/d-named"),
            ("e.internal", "istio-system/e-root"),
            ("f.internal", "ingress/f-selector"),
        ]
        .iter()
        .map(|(h, n)| (h.to_string(), n.to_string()))
        .collect();
        assert_eq!(from_ingress, want);
        let from_root = winners(
            &yaml,
            "istio-system",
            &[("g.internal", "shop"), ("h.internal", "shop")],
        );
        assert_eq!(
            from_root,
            vec![
                ("g.internal".to_string(), "shop/g-shop".to_string()),
                (
                    "h.internal".to_string(),
                    "istio-system/h-root-private".to_string()
                ),
            ]
        );
    }

    #[test]
    fn gateway_names_resolve_like_istio() {
        let cases = [
            ("gw", "shop", "shop/gw"),
            ("istio-system/gw", "shop", "istio-system/gw"),
            ("./gw", "shop", "shop/gw"),
            (
                "gw.istio-system.svc.cluster.local",
                "shop",
                "istio-system/gw",
            ),
            ("mesh", "shop", "mesh"),
        ];
        for (input, ns, want) in cases {
            assert_eq!(resolve_gateway_name(input, ns), want, "{input}");
        }
    }
}
