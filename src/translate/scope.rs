//! What one proxy sees of the configuration: the Gateways that select it, the
//! VirtualServices bound to them, and the DestinationRules that apply to each service —
//! with Istio's short-name resolution, `exportTo` visibility and namespace precedence.
use crate::config::hosts;
use crate::config::types::destination_rule::{Subset, TrafficPolicy};
use crate::config::{Config, DestinationRule, Gateway, Resource, VirtualService};
use crate::registry::{Locality, Registry, Visibility};
use crate::xds::ProxyIdentity;
use std::collections::BTreeMap;

/// Istio's root configuration namespace: mesh-wide DestinationRules live there.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A VirtualService with its hosts and gateways resolved.
pub struct BoundVirtualService<'a> {
    pub res: &'a Resource<VirtualService>,
    /// Hosts, short names resolved in the VirtualService's namespace.
    pub hosts: Vec<String>,
    /// Gateways as `namespace/name` (or `mesh`).
    pub gateways: Vec<String>,
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
    /// Where the proxy runs (from its topology labels), for locality load balancing.
    pub locality: Locality,
    /// Gateways whose selector matches the proxy, in Istio's order (name, namespace).
    pub gateways: Vec<&'a Resource<Gateway>>,
    /// VirtualServices visible to the proxy, in Istio's order (name, namespace).
    pub virtual_services: Vec<BoundVirtualService<'a>>,
    destination_rules: Vec<ResolvedDestinationRule<'a>>,
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

        let mut virtual_services: Vec<BoundVirtualService> = config
            .virtual_services
            .iter()
            .filter(|vs| {
                Visibility::from_export_to(&vs.spec.export_to, &vs.meta.namespace)
                    .includes(&namespace)
            })
            .map(|vs| BoundVirtualService {
                res: vs,
                hosts: vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| hosts::resolve_short_name(h, &vs.meta.namespace, &domain_suffix))
                    .collect(),
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
                visibility: Visibility::from_export_to(&dr.spec.export_to, &dr.meta.namespace),
            })
            .collect();

        Scope {
            config,
            registry,
            proxy,
            namespace,
            domain_suffix,
            locality: Locality::of_workload("", &proxy.labels),
            gateways,
            virtual_services,
            destination_rules,
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

    /// The DestinationRule(s) for a service host, Istio's way: rules in the proxy's
    /// namespace first, then rules exported by the service's namespace, then by the root
    /// namespace; within a namespace the exact host beats the most specific wildcard, and
    /// several rules for the same host merge.
    pub fn destination_rule(
        &self,
        host: &str,
        service_namespace: Option<&str>,
    ) -> Option<MergedDestinationRule<'a>> {
        let mut owners: Vec<&str> = Vec::with_capacity(3);
        if self.namespace != ROOT_NAMESPACE {
            owners.push(&self.namespace);
        }
        if let Some(ns) = service_namespace {
            owners.push(ns);
        }
        owners.push(ROOT_NAMESPACE);
        for (i, owner) in owners.iter().enumerate() {
            // Rules in the proxy's own namespace apply whatever their exportTo says.
            let local = i == 0 && *owner == self.namespace;
            let in_namespace: Vec<&ResolvedDestinationRule> = self
                .destination_rules
                .iter()
                .filter(|dr| dr.res.meta.namespace == *owner)
                .filter(|dr| local || dr.visibility.includes(&self.namespace))
                .collect();
            if let Some(merged) = most_specific(host, &in_namespace) {
                return Some(merged);
            }
        }
        None
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
