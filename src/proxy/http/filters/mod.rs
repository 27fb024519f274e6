//! The HTTP filters on the [`HttpFilter`](crate::proxy::http::filter::HttpFilter) trait,
//! one file each, compiled from Envoy's own filter protos.
pub mod ratelimit;
