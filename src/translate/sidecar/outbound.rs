//! A sidecar's outbound side (see the module above).
use super::super::Translation;
use super::super::scope::Scope;
use crate::config::mesh::MeshConfig;

/// Adds the outbound listeners, routes and clusters of the proxy to `out`.
pub(super) fn build(_scope: &Scope, _mesh: &MeshConfig, _out: &mut Translation) {}
