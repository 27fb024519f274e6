//! The HTTP filters meshgate runs, one module each, and the two places a filter is
//! registered: [`build`] turns an `http_filters[]` entry into a filter, [`per_route`]
//! turns a `typed_per_filter_config` entry into the filter's per-route config.
//!
//! A type URL no arm knows is refused by the caller with an error naming it: an
//! unknown filter is never skipped.
pub mod cors;
pub mod ext_authz;
pub mod fault;
pub mod jwt_authn;
pub mod jwt_token;
pub mod local_ratelimit;
pub mod ratelimit;
pub mod rbac;

use crate::proxy::compile::route::Clusters;
use crate::proxy::compile::{CompileError, Cx};
use crate::proxy::http::filter::{HttpFilter, PerFilterConfig};
use crate::xds::pb::google::protobuf::Any;
use std::sync::Arc;

/// What a filter's builder gets besides its config.
pub(crate) struct BuildCx<'a> {
    /// The filter's configured name.
    pub name: &'a str,
    /// The clusters of the same configuration, for filters that call out (an
    /// authorizer, a rate-limit service, a key server).
    pub clusters: &'a Clusters,
}

/// The filter for an `http_filters[]` entry other than the router; `Ok(None)` when the
/// type is not one meshgate implements.
pub(crate) fn build(
    cx: &mut Cx,
    b: &BuildCx<'_>,
    any: &Any,
) -> Result<Option<Arc<dyn HttpFilter>>, CompileError> {
    Ok(Some(match any.type_url.as_str() {
        fault::TYPE_URL => fault::FaultFilter::build(cx, b, any)?,
        cors::TYPE_URL => cors::CorsFilter::build(b),
        ext_authz::TYPE_URL => ext_authz::build(cx, b, any)?,
        jwt_authn::TYPE_URL => jwt_authn::JwtAuthn::build(cx, b, any)?,
        ratelimit::TYPE_URL => ratelimit::RateLimitFilter::build(cx, b, any)?,
        local_ratelimit::TYPE_URL => local_ratelimit::LocalRateLimitFilter::build(cx, b, any)?,
        rbac::TYPE_URL => rbac::RbacFilter::build(cx, b, any)?,
        _ => return Ok(None),
    }))
}

/// A `typed_per_filter_config` entry of a filter other than fault and CORS (whose
/// per-route configs the route keeps in typed fields); `Ok(None)` when the type is not
/// one meshgate implements.
pub(crate) fn per_route(cx: &mut Cx, any: &Any) -> Result<Option<PerFilterConfig>, CompileError> {
    Ok(Some(match any.type_url.as_str() {
        ext_authz::PER_ROUTE_TYPE_URL => ext_authz::per_route(cx, any)?,
        ratelimit::PER_ROUTE_TYPE_URL => Arc::new(ratelimit::RateLimitPerRoute::compile(cx, any)?),
        local_ratelimit::TYPE_URL => local_ratelimit::per_route(cx, any)?,
        _ => return Ok(None),
    }))
}
