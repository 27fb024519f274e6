//! Upstreams: clusters, their hosts, load balancing, circuit breakers, outlier detection,
//! DNS re-resolution, the per-worker connection pools and TLS origination.
pub mod cluster;
pub mod dns;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod tls;

pub use cluster::{Cluster, ClusterState, Discovery, Thresholds, UpstreamProtocol};
pub use host::{EndpointSet, Host};
