//! The CORS filter (envoy.extensions.filters.http.cors.v3): per-route policies, preflight
//! answers and response headers as Envoy gives them.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::http::body::ResponseBody;
use crate::proxy::http::filter::{HttpFilter, RequestCx, ResponseCx, Step};
use crate::proxy::http::filters::BuildCx;
use crate::proxy::http::local_reply;
use crate::proxy::route::action::Action;
use crate::proxy::route::matcher::{StringMatch, fraction_per_million};
use crate::xds::pb::envoy::config::route::v3 as route_pb;
use crate::xds::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use std::sync::Arc;

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
        crate::proxy::http::filters::fault::roll(self.enabled_per_million)
    }
}

/// The filter's config type.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";

/// The CORS filter on the chain. Its policies are per route; it only acts on routes
/// that forward (a direct response or a redirect has no route entry in Envoy).
#[derive(Debug)]
pub struct CorsFilter {
    name: Box<str>,
}

impl CorsFilter {
    pub(crate) fn build(b: &BuildCx<'_>) -> Arc<dyn HttpFilter> {
        Arc::new(CorsFilter {
            name: b.name.into(),
        })
    }
}

/// What the request phase leaves for the response phase: an allowed origin.
#[derive(Clone)]
struct AllowedOrigin(Arc<CorsPolicy>, HeaderValue);

impl HttpFilter for CorsFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        let Some(route) = cx.route else {
            return Step::CONTINUE;
        };
        if !matches!(route.action, Action::Route(_)) {
            return Step::CONTINUE;
        }
        let Some(policy) = route.cors.as_ref() else {
            return Step::CONTINUE;
        };
        let Some(origin) = cx.req.headers().get(header::ORIGIN) else {
            return Step::CONTINUE;
        };
        if !policy.enabled() {
            return Step::CONTINUE;
        }
        let allowed = policy.origin_allowed(origin.as_bytes());
        let preflight = cx.req.method() == Method::OPTIONS
            && cx
                .req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            if allowed {
                return Step::respond(preflight_response(policy, Some(origin), cx.req.headers()));
            }
            if !policy.forward_not_matching_preflights {
                return Step::respond(preflight_response(policy, None, cx.req.headers()));
            }
        } else if allowed {
            let origin = origin.clone();
            cx.state.insert(AllowedOrigin(policy.clone(), origin));
        }
        Step::CONTINUE
    }

    fn on_response(&self, cx: &mut ResponseCx<'_>) {
        let Some(AllowedOrigin(policy, origin)) = cx.state.remove::<AllowedOrigin>() else {
            return;
        };
        let h = cx.resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if policy.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &policy.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

/// The answer to a preflight: for an allowed origin, the origin and the exposed headers;
/// for any other (not forwarded: `forward_not_matching_preflights` false) only what the
/// policy allows, which lets the browser refuse.
fn preflight_response(
    policy: &CorsPolicy,
    origin: Option<&HeaderValue>,
    req: &HeaderMap,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &policy.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &policy.allow_methods {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
    }
    if let Some(v) = &policy.allow_headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    if let Some(v) = &policy.max_age {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    if policy.allow_private_network_access
        && req
            .get("access-control-request-private-network")
            .is_some_and(|v| v == "true")
    {
        h.insert(
            HeaderName::from_static("access-control-allow-private-network"),
            HeaderValue::from_static("true"),
        );
    }
    resp.extensions_mut().insert(local_reply::FilterEncoded);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflights_name_the_origin_only_when_it_is_allowed() {
        let policy = CorsPolicy {
            allow_origins: vec![],
            allow_methods: Some(HeaderValue::from_static("GET")),
            allow_headers: Some(HeaderValue::from_static("x-h")),
            expose_headers: Some(HeaderValue::from_static("x-e")),
            max_age: Some(HeaderValue::from_static("10")),
            allow_credentials: true,
            allow_private_network_access: false,
            enabled_per_million: 1_000_000,
            forward_not_matching_preflights: false,
        };
        let origin = HeaderValue::from_static("https://a.example.com");
        fn names(r: &Response<ResponseBody>) -> Vec<&str> {
            let mut n: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
            n.sort();
            n
        }
        let allowed = preflight_response(&policy, Some(&origin), &HeaderMap::new());
        assert_eq!(
            names(&allowed),
            [
                "access-control-allow-credentials",
                "access-control-allow-headers",
                "access-control-allow-methods",
                "access-control-allow-origin",
                "access-control-expose-headers",
                "access-control-max-age"
            ]
        );
        let other = preflight_response(&policy, None, &HeaderMap::new());
        assert_eq!(
            names(&other),
            [
                "access-control-allow-credentials",
                "access-control-allow-headers",
                "access-control-allow-methods",
                "access-control-max-age"
            ]
        );
        assert!(
            other
                .extensions()
                .get::<local_reply::FilterEncoded>()
                .is_some()
        );
    }
}
