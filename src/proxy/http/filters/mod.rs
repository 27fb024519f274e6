//! The HTTP filters on the [`HttpFilter`](super::filter::HttpFilter) trait, one file per
//! filter, each compiled from its Envoy proto.
pub mod jwt_authn;
pub mod jwt_token;
