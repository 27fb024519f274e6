//! The HTTP filters of the filter chain, one file each, compiled from Envoy's protos.
pub mod local_ratelimit;
