//! The control plane: serves each connected proxy the Envoy resources a
//! [`SnapshotSource`] computes for it, over ADS (state-of-the-world and delta) and SDS.
//!
//! It owns the xDS protocol (versions, nonces, ACK/NACK, subscriptions, push order),
//! per-proxy snapshots shared by identity, debounced and scoped pushes, and the debug
//! and metrics endpoints. It never builds resources itself: that is the translator's
//! job, behind [`SnapshotSource`].
mod authz;
pub mod bootstrap;
pub mod config_source;
pub mod debounce;
pub mod debug;
mod delta;
pub mod errors;
pub mod metrics;
pub mod node;
pub mod sample;
mod server;
mod sets;
pub mod snapshot;
mod sotw;
pub mod source;
pub mod status;
pub mod status_page;
mod stream;
mod wire;
pub mod workload;

pub use debounce::Debounce;
pub use node::{IdentityKey, NodeInfo, parse_node};
pub use server::{AdsService, ControlPlane, Options, SdsService, ServeError, listen};
pub use snapshot::{Snapshot, SnapshotError};
pub use source::{Change, ProxyScope, SnapshotSource, SourceError, StaticSource, TypeSet};
pub use workload::WorkloadCa;
