//! The config layer: Istio resources as users write them.
//!
//! It owns the resource types ([`types`]), reading YAML/JSON files with source positions
//! ([`source`], [`load`]), validation of each resource and across resources
//! ([`validate`](mod@validate), [`analyze`]), the list of fields not acted on yet
//! ([`support`]), and every positioned [`Diagnostic`] about them. It knows nothing of
//! sockets or xDS: the translator reads a [`Config`] and builds Envoy resources from it.
pub mod analyze;
pub mod diag;
pub mod duration;
pub mod hosts;
pub mod load;
pub mod mesh;
pub mod source;
pub mod support;
pub mod types;
pub mod validate;

pub use diag::{Diagnostic, Severity};
pub use duration::Duration;
pub use load::{Config, FileCache, LoadOutcome, load, load_bytes, load_cached, load_str};
pub use types::{
    DestinationRule, Gateway, Kind, ObjectMeta, Origin, PeerAuthentication, RequestAuthentication,
    Resource, Secret, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
pub use validate::validate;
