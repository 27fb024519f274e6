//! The CORS filter (envoy.extensions.filters.http.cors.v3): per-route policies, preflight
//! answers and response headers as Envoy gives them.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::route::matcher::{StringMatch, fraction_per_million};
use crate::xds::pb::envoy::config::route::v3 as route_pb;
use crate::xds::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use http::HeaderValue;

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub allow_private_network_access: bool,
    pub enabled_per_million: u32,
    pub forward_not_matching_preflights: bool,
}

fn opt_value(cx: &Cx, field: &str, s: &str) -> Result<Option<HeaderValue>, CompileError> {
    if s.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(s)
        .map(Some)
        .map_err(|_| cx.err(field, "invalid header value"))
}

impl CorsPolicy {
    /// The filter's per-route config (typed_per_filter_config).
    pub(crate) fn compile(
        cx: &mut Cx,
        p: &cors_pb::CorsPolicy,
    ) -> Result<CorsPolicy, CompileError> {
        fields!(
            cx,
            p,
            cors_pb::CorsPolicy {
                supported: [
                    allow_origin_string_match,
                    allow_methods,
                    allow_headers,
                    expose_headers,
                    max_age,
                    allow_credentials,
                    filter_enabled,
                    allow_private_network_access,
                    forward_not_matching_preflights
                ],
                ignored: [shadow_enabled],
                unsupported: [],
            }
        );
        let allow_origins = p
            .allow_origin_string_match
            .iter()
            .enumerate()
            .map(|(i, m)| {
                cx.at(format_args!("allow_origin_string_match[{i}]"), |cx| {
                    StringMatch::compile(cx, m)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CorsPolicy {
            allow_origins,
            allow_methods: opt_value(cx, "allow_methods", &p.allow_methods)?,
            allow_headers: opt_value(cx, "allow_headers", &p.allow_headers)?,
            expose_headers: opt_value(cx, "expose_headers", &p.expose_headers)?,
            max_age: opt_value(cx, "max_age", &p.max_age)?,
            allow_credentials: p.allow_credentials.is_some_and(|b| b.value),
            allow_private_network_access: p.allow_private_network_access.is_some_and(|b| b.value),
            enabled_per_million: p
                .filter_enabled
                .as_ref()
                .and_then(|f| f.default_value.as_ref())
                .map(fraction_per_million)
                .unwrap_or(1_000_000),
            forward_not_matching_preflights: p
                .forward_not_matching_preflights
                .map(|b| b.value)
                .unwrap_or(true),
        })
    }

    /// The older route-level `cors` field (route.v3.CorsPolicy), same semantics.
    pub(crate) fn compile_route_field(
        cx: &mut Cx,
        p: &route_pb::CorsPolicy,
    ) -> Result<CorsPolicy, CompileError> {
        let converted = cors_pb::CorsPolicy {
            allow_origin_string_match: p.allow_origin_string_match.clone(),
            allow_methods: p.allow_methods.clone(),
            allow_headers: p.allow_headers.clone(),
            expose_headers: p.expose_headers.clone(),
            max_age: p.max_age.clone(),
            allow_credentials: p.allow_credentials,
            filter_enabled: p
                .enabled_specifier
                .as_ref()
                .map(|route_pb::cors_policy::EnabledSpecifier::FilterEnabled(f)| f.clone()),
            allow_private_network_access: p.allow_private_network_access,
            forward_not_matching_preflights: p.forward_not_matching_preflights,
            shadow_enabled: None,
        };
        fields!(
            cx,
            p,
            route_pb::CorsPolicy {
                supported: [
                    allow_origin_string_match,
                    allow_methods,
                    allow_headers,
                    expose_headers,
                    max_age,
                    allow_credentials,
                    enabled_specifier,
                    allow_private_network_access,
                    forward_not_matching_preflights
                ],
                ignored: [shadow_enabled],
                unsupported: [],
            }
        );
        Self::compile(cx, &converted)
    }

    /// Envoy accepts an origin if any matcher matches it, or a matcher matches `*`.
    pub fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches(origin) || m.matches(b"*"))
    }

    pub fn enabled(&self) -> bool {
        crate::proxy::http::fault::roll(self.enabled_per_million)
    }
}
