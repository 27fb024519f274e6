//! Translation for sidecars: the Envoy next to an application, configured the way
//! istiod configures it, with istiod's names.
//!
//! - [`outbound`]: what the application reaches through its sidecar: the virtual
//!   listener on 15001 (original destination), a listener per service port the proxy
//!   sees, route tables named by port (`9080`), clusters `outbound|PORT|SUBSET|HOST`,
//!   `PassthroughCluster` and `BlackHoleCluster`.
//! - [`inbound`]: what reaches the application: the virtual listener on 15006, a filter
//!   chain per port of the workload's services to `inbound|PORT||`, mutual TLS as
//!   PeerAuthentication says.
//!
//! The mesh's secrets (`default`, `ROOTCA`) come from the agent in the pod over the
//! `sds-grpc` cluster of the bootstrap ([`MeshSecrets::Agent`]): the key never leaves it.
mod access_log;
mod egress;
mod inbound;
mod outbound;
mod virtual_hosts;

use super::Translation;
use super::tls::MeshSecrets;
use crate::config::Config;
use crate::config::mesh::MeshConfig;
use crate::registry::Registry;
use crate::xds::ProxyIdentity;

/// Translates the configuration for a sidecar proxy of a mesh with these settings.
pub fn sidecar(
    config: &Config,
    registry: &Registry,
    proxy: &ProxyIdentity,
    mesh: &MeshConfig,
) -> Translation {
    let mut scope = super::scope_in_mesh(config, registry, proxy, mesh);
    scope.mesh_secrets = MeshSecrets::Agent;
    let mut translation = Translation {
        diagnostics: std::mem::take(&mut scope.diagnostics),
        ..Default::default()
    };
    outbound::build(&scope, mesh, &mut translation);
    inbound::build(&scope, mesh, &mut translation);
    super::ratelimit::apply_sidecar(
        config,
        proxy,
        inbound::VIRTUAL_INBOUND,
        &mut translation.resources,
        &mut translation.diagnostics,
    );
    translation.resources.sort();
    translation
}

#[cfg(test)]
mod tests;
