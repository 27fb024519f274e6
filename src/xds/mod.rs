//! Envoy xDS v3: the one contract between meshgate's layers.
//!
//! The translator produces a [`ResourceSet`]; the control plane serves it over ADS, the
//! standalone gateway compiles it in-process, and `meshgate translate` writes it to disk
//! for a real Envoy. [`json`] renders any of these resources the way Envoy's
//! `/config_dump` does.
pub mod canonical;
pub mod client;
pub mod json;
pub mod proxy;
pub mod references;
pub mod resources;

pub use proxy::{ProxyIdentity, ProxyKind};
pub use resources::{NamedResource, ResourceSet, TypeUrl};

/// Envoy's protobuf types (re-exported from the `envoy-types` crate).
pub use envoy_types::pb;
