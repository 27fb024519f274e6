//! The translate layer: Istio configuration -> Envoy xDS resources for one proxy.
//!
//! [`gateway`] is a pure function of the configuration, the registry and the proxy's
//! identity, and builds what istiod builds for a gateway, with istiod's names:
//!
//! - a Listener per Gateway port (`0.0.0.0_8080`) with the HTTP connection manager
//!   istiod configures for gateways, reading routes by RDS;
//! - a RouteConfiguration per HTTP route name (`http.8080`,
//!   `https.443.PORTNAME.GATEWAY.NAMESPACE`) with a virtual host per host (`host:port`)
//!   holding the bound VirtualServices' routes in order;
//! - Clusters `outbound|PORT|SUBSET|HOST` carrying the DestinationRule policy, and
//!   ClusterLoadAssignments for the EDS ones.
//!
//! Which clusters a gateway gets: only those of services its routes reference (every
//! port of each such service, and every subset its DestinationRule defines) — istiod's
//! behaviour with `PILOT_FILTER_GATEWAY_CLUSTER_CONFIG=true`. A gateway never routes to
//! anything else, so the other clusters would only cost memory and pushes.
//!
//! What cannot be translated becomes a [`Diagnostic`] instead of being silently dropped.
mod cluster;
mod endpoints;
pub mod envoy_files;
mod gateways;
mod http_route;
mod listener;
mod names;
mod pb;
mod retry;
mod routes;
mod scope;

pub use names::{cluster_name, listener_name, sni_cluster_name, virtual_host_name};

use crate::config::{Config, Diagnostic};
use crate::registry::Registry;
use crate::xds::{ProxyIdentity, ResourceSet};
use gateways::PortKind;
use http_route::References;

/// The result of translating: the resources, and what could not be translated.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// The Envoy resources, each list sorted by name.
    pub resources: ResourceSet,
    /// Problems found while translating (never fatal: the rest is translated).
    pub diagnostics: Vec<Diagnostic>,
}

/// The namespace a gateway with these labels is taken to run in when none is given: that
/// of the first Gateway selecting it (Istio's order), else `default`.
pub fn default_namespace(
    config: &Config,
    labels: &std::collections::BTreeMap<String, String>,
) -> String {
    scope::selected_gateways(config, labels)
        .first()
        .map(|g| g.meta.namespace.clone())
        .unwrap_or_else(|| crate::config::types::DEFAULT_NAMESPACE.to_string())
}

/// Translates the configuration for a gateway proxy.
pub fn gateway(config: &Config, registry: &Registry, proxy: &ProxyIdentity) -> Translation {
    let mut scope = scope::Scope::new(config, registry, proxy);
    let mut diagnostics = std::mem::take(&mut scope.diagnostics);
    let mut resources = ResourceSet::default();
    let mut references = References::new();

    let ports = gateways::merge(&scope, &mut diagnostics);
    for port in &ports {
        let mut l = listener::listener(port);
        match &port.kind {
            PortKind::Http { route_name } => {
                let stat_prefix = listener::http_stat_prefix(&l.name);
                l.filter_chains.push(listener::filter_chain(
                    vec![listener::http_connection_manager(route_name, &stat_prefix)],
                    None,
                    None,
                ));
                let servers: Vec<&gateways::Server> = port.servers.iter().collect();
                resources.routes.push(routes::route_configuration(
                    &scope,
                    route_name,
                    &servers,
                    &mut diagnostics,
                    &mut references,
                ));
            }
            PortKind::Tcp | PortKind::Tls => {
                for s in &port.servers {
                    diagnostics.push(s.gateway.warning(
                        &s.field(""),
                        format!(
                            "{} servers are not translated yet; port {} gets no listener",
                            s.protocol, s.port
                        ),
                    ));
                }
                continue;
            }
        }
        resources.listeners.push(l);
    }

    for (host, namespace) in &references {
        let Some(service) = registry
            .services()
            .iter()
            .find(|s| &s.hostname == host && &s.namespace == namespace)
        else {
            continue;
        };
        for built in cluster::service_clusters(&scope, service, &mut diagnostics) {
            resources.clusters.push(built.cluster);
            if let Some(cla) = built.load_assignment {
                resources.endpoints.push(cla);
            }
        }
    }

    resources.sort();
    Translation {
        resources,
        diagnostics,
    }
}

#[cfg(test)]
mod tests;
