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
//! [`sidecar`] builds what istiod builds for a sidecar, and [`proxyless_grpc`] what its
//! `grpc` generator answers a gRPC library configured over xDS itself.
//!
//! What cannot be translated becomes a [`Diagnostic`] instead of being silently dropped.
mod authn;
pub mod authz;
mod cluster;
mod endpoints;
pub mod envoy_files;
pub mod ext_authz;
mod gateways;
mod grpc;
mod http_route;
mod jwt;
mod listener;
mod names;
mod network;
mod pb;
pub mod ratelimit;
mod retry;
mod routes;
mod scope;
mod servers;
mod sidecar;
mod tls;
pub mod tracing;

pub use grpc::proxyless_grpc;
pub use names::{cluster_name, listener_name, sni_cluster_name, virtual_host_name};
pub use sidecar::sidecar;
pub use tls::{AGENT_SDS_CLUSTER, MESH_CERT_SECRET, MESH_ROOT_SECRET, MeshSecrets};

use crate::config::mesh::MeshConfig;
use crate::config::{Config, Diagnostic};
use crate::registry::Registry;
use crate::xds::{ProxyIdentity, ResourceSet};

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

/// The trust domain of mesh identities when MeshConfig `trustDomain` sets no other.
pub const DEFAULT_TRUST_DOMAIN: &str = crate::config::mesh::DEFAULT_TRUST_DOMAIN;

/// Translates the configuration for a gateway proxy, with Istio's default mesh settings.
pub fn gateway(config: &Config, registry: &Registry, proxy: &ProxyIdentity) -> Translation {
    gateway_in_mesh(config, registry, proxy, &MeshConfig::default())
}

/// Translates the configuration for a gateway proxy of a mesh with these settings: its
/// trust domain (the SPIFFE ids mesh mTLS verifies upstream), `enableAutoMtls`, and
/// `connectTimeout` for clusters whose DestinationRule sets none.
pub fn gateway_in_mesh(
    config: &Config,
    registry: &Registry,
    proxy: &ProxyIdentity,
    mesh: &MeshConfig,
) -> Translation {
    let mut scope = scope_in_mesh(config, registry, proxy, mesh);
    let diagnostics = std::mem::take(&mut scope.diagnostics);
    let mut build = servers::Build::new(&scope, diagnostics);
    let mut resources = ResourceSet::default();

    let ports = gateways::merge(&scope, &mut build.diagnostics);
    for port in &ports {
        if let Some(l) = build.port_listener(port) {
            resources.listeners.push(l);
        }
    }
    let served = gateways::served_by(&ports);

    let servers::Build {
        mut diagnostics,
        references,
        sni_services,
        mut secrets,
        routes,
        ..
    } = build;
    resources.routes = routes;
    for (services, naming) in [
        (&references, cluster::Naming::Outbound),
        (&sni_services, cluster::Naming::SniDnat),
    ] {
        for (host, namespace) in services {
            let Some(service) = registry.service_in(host, namespace) else {
                continue;
            };
            for built in
                cluster::service_clusters(&scope, service, naming, &mut secrets, &mut diagnostics)
            {
                resources.clusters.push(built.cluster);
                if let Some(cla) = built.load_assignment {
                    resources.endpoints.push(cla);
                }
            }
        }
    }
    resources.secrets = secrets.into_secrets();
    ratelimit::apply_gateway(config, &served, &mut resources, &mut diagnostics);

    // RequestAuthentication: the gateway workload's JWT filter on every HTTP connection
    // manager, and the clusters its keys are fetched from.
    let jwt_rules = jwt::rules_for_workload(config, &scope.namespace, &proxy.labels);
    let jwt_policy = jwt::translate(&jwt_rules, scope.connect_timeout, &mut diagnostics);
    if let Some(filter) = &jwt_policy.filter {
        for l in &mut resources.listeners {
            jwt::apply_to_listener(l, filter);
        }
    }
    resources.clusters.extend(jwt_policy.clusters);

    resources.sort();
    Translation {
        resources,
        diagnostics,
    }
}

/// What `proxy` sees of the configuration, with the mesh's settings.
fn scope_in_mesh<'a>(
    config: &'a Config,
    registry: &'a Registry,
    proxy: &'a ProxyIdentity,
    mesh: &MeshConfig,
) -> scope::Scope<'a> {
    let mut scope = scope::Scope::new(config, registry, proxy);
    scope.trust_domain = mesh.trust_domain.clone();
    scope.auto_mtls = mesh.enable_auto_mtls;
    scope.connect_timeout = mesh.connect_timeout;
    scope.extension_providers = mesh.extension_providers.clone();
    scope.tracing = mesh.tracing.clone();
    scope.root_namespace = mesh.root_namespace.clone();
    scope.gateway_topology = proxy
        .gateway_topology
        .or(mesh.gateway_topology)
        .unwrap_or_default();
    scope
}

#[cfg(test)]
mod tests;
