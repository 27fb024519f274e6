//! What a sidecar imports (istiod's `SidecarScope`): per egress listener of its Sidecar
//! resource, the services and VirtualServices it sees, and its outbound traffic policy.
//!
//! Without a Sidecar resource a proxy has one catch-all listener importing `*/*`: every
//! service and every VirtualService bound to `mesh` that `exportTo` lets its namespace
//! see. Egress `hosts` (`ns/dnsName`, `./dnsName`, `*/dnsName`, `~ns/dnsName` to leave
//! out) narrow that: a service is imported by the hosts of its own namespace (or `*`), a
//! VirtualService by those of the VirtualService's namespace. DestinationRules follow the
//! services: only imported services get clusters, and so only their rules apply.
use super::super::scope::{BoundVirtualService, Scope};
use crate::config::hosts;
use crate::config::mesh::{MeshConfig, OutboundMode};
use crate::config::types::sidecar::OutboundTrafficPolicyMode;
use crate::config::{Config, Resource, Sidecar};
use crate::registry::{Protocol, Service, ServicePort};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// A port of an egress listener (`egress[].port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPort {
    pub number: u32,
    pub protocol: Protocol,
    pub name: String,
}

/// One egress listener as written: its port (none: the catch-all listener) and hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressSpec {
    pub port: Option<EgressPort>,
    pub hosts: Vec<String>,
}

impl EgressSpec {
    /// The listener a proxy without a Sidecar resource has: everything, on every port.
    pub fn import_all() -> EgressSpec {
        EgressSpec {
            port: None,
            hosts: vec!["*/*".to_string()],
        }
    }
}

/// The Sidecar resource of a proxy (istiod's `getSidecarScope`): in its namespace, the
/// first whose `workloadSelector` selects it, else the one without a selector; else the
/// root namespace's without a selector.
pub fn selected_sidecar<'c>(
    config: &'c Config,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'c Resource<Sidecar>> {
    let without_selector = |ns: &str| {
        config
            .sidecars
            .iter()
            .find(|s| s.meta.namespace == ns && s.spec.workload_selector.is_none())
    };
    config
        .sidecars
        .iter()
        .filter(|s| s.meta.namespace == namespace)
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|w| w.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .or_else(|| without_selector(namespace))
        .or_else(|| without_selector(root_namespace))
}

/// The egress listeners of a Sidecar (or the import-all one without any), and the
/// outbound policy: the Sidecar's when it sets one (an unset mode is REGISTRY_ONLY, the
/// protobuf default), else the mesh's.
pub fn egress_of(
    sidecar: Option<&Resource<Sidecar>>,
    mesh: &MeshConfig,
) -> (Vec<EgressSpec>, OutboundMode) {
    let mut specs: Vec<EgressSpec> = sidecar
        .map(|s| {
            s.spec
                .egress
                .iter()
                .map(|e| EgressSpec {
                    port: e.port.as_ref().map(|p| EgressPort {
                        number: p.number,
                        protocol: Protocol::parse(&p.protocol),
                        name: p.name.clone(),
                    }),
                    hosts: e.hosts.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    if specs.is_empty() {
        specs.push(EgressSpec::import_all());
    }
    let mode = match sidecar.and_then(|s| s.spec.outbound_traffic_policy.as_ref()) {
        Some(p) => match p.mode() {
            OutboundTrafficPolicyMode::RegistryOnly => OutboundMode::RegistryOnly,
            OutboundTrafficPolicyMode::AllowAny => OutboundMode::AllowAny,
        },
        None => mesh.outbound_traffic_policy,
    };
    (specs, mode)
}

/// A service an egress listener imports, on the ports it imports.
#[derive(Debug, Clone)]
pub struct ImportedService<'a> {
    pub service: &'a Service,
    pub ports: Vec<&'a ServicePort>,
}

/// One egress listener with what it imports.
pub struct EgressListener<'s, 'a> {
    pub port: Option<EgressPort>,
    pub services: Vec<ImportedService<'a>>,
    /// VirtualServices bound to `mesh` it imports, in Istio's order.
    pub virtual_services: Vec<&'s BoundVirtualService<'a>>,
}

/// Everything a sidecar imports.
pub struct Imports<'s, 'a> {
    /// The egress listeners: those with a port first, the catch-all last.
    pub listeners: Vec<EgressListener<'s, 'a>>,
    /// What happens to traffic for destinations not imported.
    pub mode: OutboundMode,
}

impl<'s, 'a> Imports<'s, 'a> {
    /// What `specs` import for the proxy of `scope`, with outbound policy `mode`.
    pub fn new(scope: &'s Scope<'a>, specs: &[EgressSpec], mode: OutboundMode) -> Imports<'s, 'a> {
        let mesh_bound: Vec<&'s BoundVirtualService<'a>> = scope
            .virtual_services
            .iter()
            .filter(|vs| bound_to_mesh(vs))
            .collect();
        let visible: Vec<&'a Service> = scope
            .registry
            .services()
            .iter()
            .filter(|s| s.visible_from(&scope.namespace))
            .collect();
        let listeners = specs
            .iter()
            .map(|spec| {
                let imports = HostImports::parse(&spec.hosts, &scope.namespace);
                EgressListener {
                    port: spec.port.clone(),
                    services: imports.services(&visible, spec.port.as_ref(), &scope.namespace),
                    virtual_services: imports.virtual_services(&mesh_bound),
                }
            })
            .collect();
        Imports { listeners, mode }
    }

    /// The egress listener that serves listener port `port`: the one declared on that
    /// port, else the catch-all (istiod's `GetEgressListenerForRDS`).
    pub fn listener_for_port(&self, port: u32) -> Option<&EgressListener<'s, 'a>> {
        self.listeners
            .iter()
            .find(|l| l.port.as_ref().is_none_or(|p| p.number == port))
    }

    /// Every imported service with the union of its imported ports, once per
    /// (host, namespace): what gets clusters.
    pub fn services(&self) -> BTreeMap<(String, String), (&'a Service, BTreeSet<u32>)> {
        let mut out: BTreeMap<(String, String), (&'a Service, BTreeSet<u32>)> = BTreeMap::new();
        for l in &self.listeners {
            for s in &l.services {
                out.entry((s.service.hostname.clone(), s.service.namespace.clone()))
                    .or_insert_with(|| (s.service, BTreeSet::new()))
                    .1
                    .extend(s.ports.iter().map(|p| p.number));
            }
        }
        out
    }
}

/// Whether a VirtualService applies to sidecars: no `gateways` (then `mesh` is implied),
/// or `mesh` among them.
pub fn bound_to_mesh(vs: &BoundVirtualService<'_>) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
}

/// The hosts of one namespace scope (Istio's `hostClassification`).
#[derive(Default)]
struct HostSet {
    exact: HashSet<String>,
    all: Vec<String>,
    excluded: Vec<String>,
}

impl HostSet {
    fn excludes(&self, host: &str) -> bool {
        self.excluded.iter().any(|e| hosts::is_subset_of(host, e))
    }

    /// Whether a service host is imported (Istio's `Matches`).
    fn imports_service(&self, host: &str) -> bool {
        self.exact.contains(host)
            || self.all.iter().any(|i| {
                (hosts::is_wildcard(host) || hosts::is_wildcard(i)) && hosts::is_subset_of(host, i)
            })
    }

    /// Whether a VirtualService host is imported (Istio's `VSMatches`, both ways).
    fn imports_vs_host(&self, host: &str) -> bool {
        self.exact.contains(host)
            || self.all.iter().any(|i| {
                (hosts::is_wildcard(host) || hosts::is_wildcard(i)) && hosts::matches(host, i)
            })
    }
}

/// Egress hosts by namespace scope (`*` for every namespace).
struct HostImports {
    by_namespace: BTreeMap<String, HostSet>,
}

impl HostImports {
    fn parse(entries: &[String], proxy_namespace: &str) -> HostImports {
        let mut by_namespace: BTreeMap<String, HostSet> = BTreeMap::new();
        for entry in entries {
            // Validation refuses anything but `ns/dnsName`.
            let Some((ns, name)) = entry.split_once('/') else {
                continue;
            };
            let (excluded, ns) = match ns.strip_prefix('~') {
                Some("") => (true, "*"),
                Some(rest) => (true, rest),
                None => (false, ns),
            };
            let ns = if ns == "." { proxy_namespace } else { ns };
            let set = by_namespace.entry(ns.to_string()).or_default();
            if excluded {
                set.excluded.push(name.to_string());
                continue;
            }
            if !hosts::is_wildcard(name) {
                set.exact.insert(name.to_string());
            }
            set.all.push(name.to_string());
        }
        HostImports { by_namespace }
    }

    fn excluded(&self, namespace: &str, host: &str) -> bool {
        [namespace, "*"]
            .iter()
            .any(|ns| self.by_namespace.get(*ns).is_some_and(|s| s.excludes(host)))
    }

    /// The visible services imported (Istio's `selectServices`), ports narrowed to the
    /// listener's port; one namespace per host name, the proxy's own first.
    fn services<'a>(
        &self,
        visible: &[&'a Service],
        port: Option<&EgressPort>,
        proxy_namespace: &str,
    ) -> Vec<ImportedService<'a>> {
        let mut imported: Vec<ImportedService<'a>> = Vec::new();
        for &service in visible {
            if self.excluded(&service.namespace, &service.hostname) {
                continue;
            }
            let matched = [service.namespace.as_str(), "*"].iter().any(|ns| {
                self.by_namespace
                    .get(*ns)
                    .is_some_and(|s| s.imports_service(&service.hostname))
            });
            if !matched {
                continue;
            }
            let ports: Vec<&'a ServicePort> = match port {
                Some(p) => service
                    .ports
                    .iter()
                    .filter(|sp| sp.number == p.number)
                    .collect(),
                None => service.ports.iter().collect(),
            };
            if ports.is_empty() {
                continue;
            }
            imported.push(ImportedService { service, ports });
        }
        // One namespace per host name: the proxy's own, else the first seen.
        let mut chosen: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &imported {
            let e = chosen
                .entry(s.service.hostname.as_str())
                .or_insert(s.service.namespace.as_str());
            if s.service.namespace == proxy_namespace {
                *e = s.service.namespace.as_str();
            }
        }
        let chosen: BTreeMap<String, String> = chosen
            .into_iter()
            .map(|(h, n)| (h.to_string(), n.to_string()))
            .collect();
        imported.retain(|s| chosen.get(&s.service.hostname) == Some(&s.service.namespace));
        imported
    }

    /// The VirtualServices imported (Istio's `SelectVirtualServices`): one of its hosts
    /// matches the hosts of its namespace (or of `*`) and is not left out.
    fn virtual_services<'s, 'a>(
        &self,
        candidates: &[&'s BoundVirtualService<'a>],
    ) -> Vec<&'s BoundVirtualService<'a>> {
        candidates
            .iter()
            .copied()
            .filter(|vs| {
                let ns = vs.res.meta.namespace.as_str();
                vs.hosts.iter().any(|h| {
                    !self.excluded(ns, h)
                        && [ns, "*"].iter().any(|scope| {
                            self.by_namespace
                                .get(*scope)
                                .is_some_and(|s| s.imports_vs_host(h))
                        })
                })
            })
            .collect()
    }
}
