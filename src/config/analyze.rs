//! Cross-resource analysis, like `istioctl analyze`: references between resources that
//! each validate on their own but do not fit together.
//!
//! In standalone mode every service comes from a ServiceEntry, so a destination that
//! matches none has nowhere to go.
use super::diag::{Diagnostic, Severity};
use super::hosts::{self, DEFAULT_DOMAIN_SUFFIX};
use super::load::Config;
use super::types::common::nearest;
use super::types::gateway::ServerTlsSettings;
use super::types::service_entry::Resolution;
use super::types::virtual_service::Destination;
use super::types::{
    DestinationRule, Gateway, Kind, Protocol, Resource, Secret, ServiceEntry, VirtualService,
    WorkloadEntry,
};
use super::validate::virtual_service::{MESH_GATEWAY, applies_to_gateways};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Runs every cross-resource check.
pub fn analyze(config: &Config, out: &mut Vec<Diagnostic>) {
    let index = Index::new(config);
    for vs in &config.virtual_services {
        check_gateway_refs(&index, vs, out);
        check_destinations(&index, vs, out);
    }
    check_virtual_service_conflicts(&index, config, out);
    check_gateway_conflicts(config, out);
    check_destination_rules(&index, config, out);
    check_credentials(config, out);
    check_workload_entries(config, out);
}

/// `file:line` of a resource, to point from one diagnostic to another resource.
fn at<T>(r: &Resource<T>) -> String {
    format!("{}:{}", r.origin.file, r.origin.line)
}

fn name<T>(r: &Resource<T>) -> String {
    format!("{}/{}", r.meta.namespace, r.meta.name)
}

/// A host a ServiceEntry defines, fully resolved.
struct Service<'a> {
    host: String,
    entry: &'a Resource<ServiceEntry>,
}

struct Index<'a> {
    gateways: HashMap<(String, String), &'a Resource<Gateway>>,
    services: Vec<Service<'a>>,
    /// Indexes into `services` by exact host; wildcard hosts are listed apart.
    services_by_host: HashMap<String, Vec<usize>>,
    wildcard_services: Vec<usize>,
    rules: Vec<(String, &'a Resource<DestinationRule>)>,
    /// Indexes into `rules` by exact host; wildcard hosts are listed apart.
    rules_by_host: HashMap<String, Vec<usize>>,
    wildcard_rules: Vec<usize>,
}

impl<'a> Index<'a> {
    fn new(config: &'a Config) -> Self {
        let mut gateways = HashMap::new();
        for gw in &config.gateways {
            gateways
                .entry((gw.meta.namespace.clone(), gw.meta.name.clone()))
                .or_insert(gw);
        }
        let mut services = Vec::new();
        for se in &config.service_entries {
            for host in &se.spec.hosts {
                services.push(Service {
                    host: hosts::resolve_short_name(
                        host,
                        &se.meta.namespace,
                        DEFAULT_DOMAIN_SUFFIX,
                    ),
                    entry: se,
                });
            }
        }
        let rules: Vec<(String, &Resource<DestinationRule>)> = config
            .destination_rules
            .iter()
            .map(|dr| {
                (
                    hosts::resolve_short_name(
                        &dr.spec.host,
                        &dr.meta.namespace,
                        DEFAULT_DOMAIN_SUFFIX,
                    ),
                    dr,
                )
            })
            .collect();
        let mut services_by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_services = Vec::new();
        for (i, s) in services.iter().enumerate() {
            if hosts::is_wildcard(&s.host) {
                wildcard_services.push(i);
            } else {
                services_by_host.entry(s.host.clone()).or_default().push(i);
            }
        }
        let mut rules_by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_rules = Vec::new();
        for (i, (host, _)) in rules.iter().enumerate() {
            if hosts::is_wildcard(host) {
                wildcard_rules.push(i);
            } else {
                rules_by_host.entry(host.clone()).or_default().push(i);
            }
        }
        Index {
            gateways,
            services,
            services_by_host,
            wildcard_services,
            rules,
            rules_by_host,
            wildcard_rules,
        }
    }

    /// Services whose hosts cover `host`: those with exactly this host, else wildcards.
    fn services_for(&self, host: &str) -> Vec<&Service<'a>> {
        if let Some(exact) = self.services_by_host.get(host) {
            return exact.iter().map(|i| &self.services[*i]).collect();
        }
        self.wildcard_services
            .iter()
            .map(|i| &self.services[*i])
            .filter(|s| hosts::is_subset_of(host, &s.host))
            .collect()
    }

    /// Services a DestinationRule for `host` can apply to: those [`Self::services_for`]
    /// finds and, for a wildcard host, every service whose host the wildcard covers.
    fn services_for_rule(&self, host: &str) -> Vec<&Service<'a>> {
        let mut out = self.services_for(host);
        if hosts::is_wildcard(host) {
            for s in &self.services {
                if hosts::is_subset_of(&s.host, host) && !out.iter().any(|o| std::ptr::eq(*o, s)) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// DestinationRules whose host covers `host`.
    fn rules_for(&self, host: &str) -> Vec<&'a Resource<DestinationRule>> {
        let exact = self.rules_by_host.get(host).into_iter().flatten();
        let wildcard = self
            .wildcard_rules
            .iter()
            .filter(|i| hosts::is_subset_of(host, &self.rules[**i].0));
        exact.chain(wildcard).map(|i| self.rules[*i].1).collect()
    }

    fn gateway(&self, reference: &str, namespace: &str) -> (String, String) {
        match reference.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => match reference.split_once('.') {
                // Legacy `name.namespace[.svc.cluster.local]`.
                Some((name, rest)) => (
                    rest.split('.').next().unwrap_or(rest).to_string(),
                    name.to_string(),
                ),
                None => (namespace.to_string(), reference.to_string()),
            },
        }
    }
}

fn check_gateway_refs(index: &Index<'_>, vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
    let ns = &vs.meta.namespace;
    let mut refs: Vec<(String, &str)> = vs
        .spec
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("spec.gateways[{i}]"), g.as_str()))
        .collect();
    for (i, route) in vs.spec.http.iter().enumerate() {
        for (j, m) in route.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                refs.push((
                    format!("spec.http[{i}].match[{j}].gateways[{k}]"),
                    g.as_str(),
                ));
            }
        }
    }
    for (field, reference) in refs {
        if reference == MESH_GATEWAY {
            continue;
        }
        let key = index.gateway(reference, ns);
        let Some(gw) = index.gateways.get(&key) else {
            let known: Vec<String> = index
                .gateways
                .keys()
                .map(|(n, g)| format!("{n}/{g}"))
                .collect();
            let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = match nearest(&format!("{}/{}", key.0, key.1), &known_refs) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            out.push(vs.error(
                &field,
                format!("Gateway {}/{} not found{hint}", key.0, key.1),
            ));
            continue;
        };
        if !field.starts_with("spec.gateways") {
            continue;
        }
        // The Gateway's server hosts as (namespace scope, DNS name): exact names indexed,
        // wildcards apart, so that thousands of hosts on both sides are not compared
        // pairwise.
        let mut exact: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut wildcards: Vec<(&str, &str)> = Vec::new();
        for entry in gw.spec.servers.iter().flat_map(|s| &s.hosts) {
            let (scope, dns) = entry.split_once('/').unwrap_or(("*", entry));
            if hosts::is_wildcard(dns) {
                wildcards.push((scope, dns));
            } else {
                exact.entry(dns).or_default().push(scope);
            }
        }
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let resolved = hosts::resolve_short_name(host, ns, DEFAULT_DOMAIN_SUFFIX);
            let mut host_matches = false;
            let mut namespace_allowed = false;
            let mut consider = |scope: &str| {
                host_matches = true;
                if scope == "*"
                    || scope == ns.as_str()
                    || (scope == "." && *ns == gw.meta.namespace)
                {
                    namespace_allowed = true;
                }
            };
            if hosts::is_wildcard(&resolved) {
                for (dns, scopes) in &exact {
                    if hosts::matches(&resolved, dns) {
                        scopes.iter().for_each(|s| consider(s));
                    }
                }
            } else if let Some(scopes) = exact.get(resolved.as_str()) {
                scopes.iter().for_each(|s| consider(s));
            }
            for (scope, dns) in &wildcards {
                if hosts::matches(&resolved, dns) {
                    consider(scope);
                }
            }
            let field = format!("spec.hosts[{i}]");
            if !host_matches {
                let served: Vec<&str> = gw
                    .spec
                    .servers
                    .iter()
                    .flat_map(|s| s.hosts.iter().map(String::as_str))
                    .collect();
                let shown = if resolved == *host {
                    format!("`{host}`")
                } else {
                    format!("`{host}` ({resolved})")
                };
                out.push(vs.warning(
                    &field,
                    format!("host {shown} is not served by Gateway {} (its hosts: {}), so these routes are never used there", name(gw), served.join(", ")),
                ));
            } else if !namespace_allowed {
                out.push(vs.warning(
                    &field,
                    format!("Gateway {} serves `{host}` only to VirtualServices of other namespaces, not `{ns}`", name(gw)),
                ));
            }
        }
    }
}

/// Every destination of a VirtualService, with its field path.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.http[{i}].route[{j}].destination"), dest));
            }
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                out.push((format!("spec.http[{i}].mirrors[{j}].destination"), dest));
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.tls[{i}].route[{j}].destination"), dest));
            }
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.tcp[{i}].route[{j}].destination"), dest));
            }
        }
    }
    out
}

fn check_destinations(index: &Index<'_>, vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
    for (path, dest) in destinations(&vs.spec) {
        if dest.host.is_empty() || dest.host == "*" {
            continue;
        }
        let host = hosts::resolve_short_name(&dest.host, &vs.meta.namespace, DEFAULT_DOMAIN_SUFFIX);
        let services = index.services_for(&host);
        let shown = format!("`{}`", dest.host);
        let resolved_note = if host == dest.host {
            String::new()
        } else {
            format!(" (resolved to {host})")
        };
        if services.is_empty() {
            let known: Vec<&str> = index.services.iter().map(|s| s.host.as_str()).collect();
            let hint = match nearest(&host, &known) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            out.push(vs.error(
                &format!("{path}.host"),
                format!("no ServiceEntry defines host {shown}{resolved_note}; in standalone mode every destination needs one{hint}"),
            ));
            continue;
        }
        let mut ports: Vec<u32> = services
            .iter()
            .flat_map(|s| s.entry.spec.ports.iter().map(|p| p.number))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let list = ports
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match &dest.port {
            Some(p) if !ports.is_empty() && !ports.contains(&p.number) => {
                out.push(vs.error(
                    &format!("{path}.port.number"),
                    format!(
                        "port {} is not a port of {shown}; its ports: {list}",
                        p.number
                    ),
                ));
            }
            None if ports.len() > 1 => {
                out.push(vs.error(
                    &path,
                    format!(
                        "{shown} has several ports ({list}); set destination.port to choose one"
                    ),
                ));
            }
            _ => {}
        }
        if !dest.subset.is_empty() {
            let rules = index.rules_for(&host);
            if !rules
                .iter()
                .any(|r| r.spec.subsets.iter().any(|s| s.name == dest.subset))
            {
                let defined: Vec<&str> = rules
                    .iter()
                    .flat_map(|r| r.spec.subsets.iter().map(|s| s.name.as_str()))
                    .collect();
                let detail = if defined.is_empty() {
                    String::new()
                } else {
                    format!("; defined subsets: {}", defined.join(", "))
                };
                out.push(vs.error(
                    &format!("{path}.subset"),
                    format!(
                        "subset `{}` is not defined by any DestinationRule for {shown}{detail}",
                        dest.subset
                    ),
                ));
            }
        }
    }
}

/// Two VirtualServices routing the same host on the same gateway (or both in the mesh).
fn check_virtual_service_conflicts(index: &Index<'_>, config: &Config, out: &mut Vec<Diagnostic>) {
    // (gateway, host) -> first VirtualService and the index of its host.
    let mut claimed: BTreeMap<(String, String), &Resource<VirtualService>> = BTreeMap::new();
    for vs in &config.virtual_services {
        let gateways: Vec<String> = if applies_to_gateways(&vs.spec) {
            vs.spec
                .gateways
                .iter()
                .map(|g| {
                    let (ns, n) = index.gateway(g, &vs.meta.namespace);
                    format!("{ns}/{n}")
                })
                .collect()
        } else {
            vec![MESH_GATEWAY.to_string()]
        };
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let resolved =
                hosts::resolve_short_name(host, &vs.meta.namespace, DEFAULT_DOMAIN_SUFFIX);
            for gw in &gateways {
                let key = (gw.clone(), resolved.clone());
                let Some(first) = claimed.get(&key) else {
                    claimed.insert(key, vs);
                    continue;
                };
                if std::ptr::eq(*first, vs) {
                    continue;
                }
                let field = format!("spec.hosts[{i}]");
                let message = if gw == MESH_GATEWAY {
                    format!(
                        "host `{host}` is also routed in the mesh by VirtualService {} ({}); only one of them takes effect, and meshgate uses the one loaded first",
                        name(first),
                        at(first)
                    )
                } else {
                    let catch_all = first.spec.http.iter().any(|r| r.matches.is_empty());
                    let shadowed = if catch_all {
                        format!(
                            "; {} has a rule without match conditions, so these HTTP routes are never used",
                            name(first)
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "host `{host}` on Gateway {gw} is also routed by VirtualService {} ({}); Istio merges them in creation order, meshgate in load order, so {}'s routes come first{shadowed}",
                        name(first),
                        at(first),
                        name(first)
                    )
                };
                out.push(vs.warning(&field, message));
            }
        }
    }
}

/// Whether two servers' protocols can share a port (both HTTP, or both TLS).
fn protocol_class(protocol: &str, tls: Option<&ServerTlsSettings>) -> &'static str {
    match Protocol::parse(protocol) {
        Some(p) if p.is_http() => "HTTP",
        Some(p) if p.is_tls() || tls.is_some() => "TLS",
        Some(_) => "TCP",
        None => "unknown",
    }
}

/// Gateways selecting the same workloads whose servers collide on port and host. Servers
/// bound to different addresses are different listeners and never collide.
fn check_gateway_conflicts(config: &Config, out: &mut Vec<Diagnostic>) {
    struct Entry<'a> {
        gw: &'a Resource<Gateway>,
        server: usize,
        port: u32,
        bind: &'a str,
        class: &'static str,
        protocol: &'a str,
        hosts: Vec<(usize, &'a str)>,
    }
    let mut by_selector: BTreeMap<&BTreeMap<String, String>, Vec<Entry>> = BTreeMap::new();
    for gw in &config.gateways {
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(port) = &server.port else { continue };
            by_selector
                .entry(&gw.spec.selector)
                .or_default()
                .push(Entry {
                    gw,
                    server: i,
                    port: port.number,
                    bind: &server.bind,
                    class: protocol_class(&port.protocol, server.tls.as_ref()),
                    protocol: &port.protocol,
                    hosts: server
                        .hosts
                        .iter()
                        .enumerate()
                        .map(|(j, h)| (j, h.split_once('/').map_or(h.as_str(), |(_, d)| d)))
                        .collect(),
                });
        }
    }
    for entries in by_selector.values() {
        // Only servers on the same port and bind can conflict: each group is walked in
        // order with an index of the hosts seen so far, so a Gateway with thousands of
        // servers costs what it has, not its square.
        let mut groups: HashMap<(u32, &str), Vec<&Entry>> = HashMap::new();
        for e in entries.iter().filter(|e| e.port != 0) {
            groups.entry((e.port, e.bind)).or_default().push(e);
        }
        for group in groups.values() {
            let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
            let mut with_wildcards: Vec<usize> = Vec::new();
            let mut classes: HashMap<&str, usize> = HashMap::new();
            for (b_index, b) in group.iter().enumerate() {
                let earlier = &group[..b_index];
                // The earlier servers that may conflict with this one, in order.
                let mut candidates: BTreeSet<usize> = BTreeSet::new();
                if classes.get(b.class).copied().unwrap_or(0) < b_index {
                    candidates.extend(
                        earlier
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| a.class != b.class)
                            .map(|(i, _)| i),
                    );
                }
                for (_, host) in &b.hosts {
                    if hosts::is_wildcard(host) {
                        candidates.extend(0..b_index);
                        break;
                    }
                    candidates.extend(exact.get(host).into_iter().flatten().copied());
                    candidates.extend(with_wildcards.iter().copied());
                }
                for a in candidates.into_iter().map(|i| earlier[i]) {
                    let a_where = || {
                        if std::ptr::eq(a.gw, b.gw) {
                            format!("spec.servers[{}]", a.server)
                        } else {
                            format!(
                                "Gateway {} ({}) spec.servers[{}]",
                                name(a.gw),
                                at(a.gw),
                                a.server
                            )
                        }
                    };
                    let path = format!("spec.servers[{}]", b.server);
                    if a.class != b.class {
                        out.push(b.gw.error(
                            &format!("{path}.port"),
                            format!(
                                "port {} is served as {} here and as {} by {}; one port cannot carry both",
                                b.port,
                                b.protocol,
                                a.protocol,
                                a_where()
                            ),
                        ));
                        continue;
                    }
                    for (j, host) in &b.hosts {
                        let Some((_, other)) =
                            a.hosts.iter().find(|(_, h)| hosts::matches(host, h))
                        else {
                            continue;
                        };
                        let field = format!("{path}.hosts[{j}]");
                        if b.class == "HTTP" {
                            out.push(b.gw.diagnostic(
                                Severity::Warning,
                                &field,
                                format!("host `{host}` on port {} is also served by {} (`{other}`); their routes are merged", b.port, a_where()),
                            ));
                        } else {
                            out.push(b.gw.error(
                                &field,
                                format!("host `{host}` on port {} is also served by {} (`{other}`); only one TLS server can answer a given SNI", b.port, a_where()),
                            ));
                        }
                    }
                }
                *classes.entry(b.class).or_default() += 1;
                let mut wildcard = false;
                for (_, host) in &b.hosts {
                    if hosts::is_wildcard(host) {
                        wildcard = true;
                    } else {
                        exact.entry(host).or_default().push(b_index);
                    }
                }
                if wildcard {
                    with_wildcards.push(b_index);
                }
            }
        }
    }
}

fn check_destination_rules(index: &Index<'_>, config: &Config, out: &mut Vec<Diagnostic>) {
    let mut first_for: HashMap<(String, String), &Resource<DestinationRule>> = HashMap::new();
    for (host, dr) in &index.rules {
        let services = index.services_for_rule(host);
        if services.is_empty() && !host.is_empty() {
            out.push(dr.warning(
                "spec.host",
                format!("no ServiceEntry defines host `{host}`, so this rule applies to nothing"),
            ));
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            if subset.labels.is_empty() || services.is_empty() {
                continue;
            }
            let mut known = true;
            let mut selected = false;
            for s in &services {
                match endpoint_labels(config, s.entry) {
                    Some(labels) => {
                        selected |= labels
                            .iter()
                            .any(|l| subset.labels.iter().all(|(k, v)| l.get(k) == Some(v)))
                    }
                    None => known = false,
                }
            }
            if known && !selected {
                out.push(dr.warning(
                    &format!("spec.subsets[{i}].labels"),
                    format!("subset `{}` selects no endpoint of `{host}`", subset.name),
                ));
            }
        }
        if dr.spec.workload_selector.is_some() {
            continue;
        }
        let key = (dr.meta.namespace.clone(), host.clone());
        let Some(first) = first_for.get(&key) else {
            first_for.insert(key, dr);
            continue;
        };
        out.push(dr.warning(
            "spec.host",
            format!(
                "DestinationRule {} ({}) has the same host in this namespace; Istio merges them, and where they overlap the one loaded first ({}) wins",
                name(first),
                at(first),
                name(first)
            ),
        ));
        if dr.spec.traffic_policy.is_some() && first.spec.traffic_policy.is_some() {
            out.push(dr.warning(
                "spec.trafficPolicy",
                format!("ignored: {}'s trafficPolicy applies", name(first)),
            ));
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            if first.spec.subsets.iter().any(|s| s.name == subset.name) {
                out.push(dr.warning(
                    &format!("spec.subsets[{i}].name"),
                    format!(
                        "subset `{}` is also defined by {}, whose definition wins",
                        subset.name,
                        name(first)
                    ),
                ));
            }
        }
    }
}

/// Labels of the endpoints of a ServiceEntry, when they are known from the configuration.
fn endpoint_labels(
    config: &Config,
    se: &Resource<ServiceEntry>,
) -> Option<Vec<BTreeMap<String, String>>> {
    match se.spec.resolution.unwrap_or(Resolution::None) {
        Resolution::None | Resolution::DynamicDns => return None,
        _ => {}
    }
    if let Some(sel) = &se.spec.workload_selector {
        return Some(
            config
                .workload_entries
                .iter()
                .filter(|we| {
                    we.meta.namespace == se.meta.namespace && selects(&sel.labels, &we.spec.labels)
                })
                .map(|we| we.spec.endpoint_labels())
                .collect(),
        );
    }
    if se.spec.endpoints.is_empty() {
        return None;
    }
    Some(
        se.spec
            .endpoints
            .iter()
            .map(|e| e.endpoint_labels())
            .collect(),
    )
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// TLS secrets named by gateways must exist, in the gateway's namespace.
fn check_credentials(config: &Config, out: &mut Vec<Diagnostic>) {
    // Secrets by (namespace, name), the first of each: one probe per credential.
    let mut secrets: HashMap<(&str, &str), &Resource<Secret>> = HashMap::new();
    for s in &config.secrets {
        secrets
            .entry((s.meta.namespace.as_str(), s.meta.name.as_str()))
            .or_insert(s);
    }
    for gw in &config.gateways {
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(tls) = &server.tls else { continue };
            let mut names: Vec<(String, &str)> = Vec::new();
            if !tls.credential_name.is_empty() {
                names.push((
                    format!("spec.servers[{i}].tls.credentialName"),
                    &tls.credential_name,
                ));
            }
            for (j, n) in tls.credential_names.iter().enumerate() {
                names.push((format!("spec.servers[{i}].tls.credentialNames[{j}]"), n));
            }
            for (field, credential) in names {
                let secret_name = credential
                    .strip_prefix("kubernetes://")
                    .unwrap_or(credential);
                let Some(secret) = secrets
                    .get(&(gw.meta.namespace.as_str(), secret_name))
                    .copied()
                else {
                    out.push(gw.warning(
                        &field,
                        format!("Secret {}/{secret_name} not found (credentials are read from the gateway's namespace)", gw.meta.namespace),
                    ));
                    continue;
                };
                let pair = [("tls.crt", "tls.key"), ("cert", "key")]
                    .iter()
                    .any(|(c, k)| secret.spec.get(c).is_some() && secret.spec.get(k).is_some());
                if !pair {
                    out.push(gw.warning(
                        &field,
                        format!(
                            "Secret {} has neither tls.crt/tls.key nor cert/key",
                            name(secret)
                        ),
                    ));
                }
            }
        }
    }
}

/// A WorkloadEntry no ServiceEntry selects receives no traffic.
fn check_workload_entries(config: &Config, out: &mut Vec<Diagnostic>) {
    for we in &config.workload_entries {
        let selected = config.service_entries.iter().any(|se| {
            se.meta.namespace == we.meta.namespace
                && se
                    .spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| selects(&sel.labels, &we.spec.labels))
        });
        if !selected {
            out.push(we.warning(
                "spec.labels",
                format!(
                    "no ServiceEntry in namespace `{}` selects this {}, so it receives no traffic",
                    we.meta.namespace,
                    WorkloadEntry::KIND
                ),
            ));
        }
    }
}
