//! A sidecar's inbound side (see the module above).
use super::super::Translation;
use super::super::scope::Scope;
use crate::config::mesh::MeshConfig;

/// Adds the inbound listener and clusters of the proxy to `out`.
pub(super) fn build(_scope: &Scope, _mesh: &MeshConfig, _out: &mut Translation) {}
