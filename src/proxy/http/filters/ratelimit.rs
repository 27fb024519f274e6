//! `envoy.filters.http.ratelimit`: global rate limiting through a rate-limit service.
//!
//! The route's (and virtual host's) `rate_limits` turn a request into descriptors (lists
//! of key/value entries); the filter asks the rate-limit service about them over gRPC
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) and answers 429 when
//! the service says OVER_LIMIT, as Envoy's filter does: flag RL, details
//! `request_rate_limited`, `x-envoy-ratelimited: true`, and with
//! `enable_x_ratelimit_headers: DRAFT_VERSION_03` the `x-ratelimit-limit/-remaining/-reset`
//! headers (also on admitted responses). When the service cannot answer in `timeout`
//! (20 ms by default) or answers an error, `failure_mode_deny` decides: 500 (or
//! `status_on_error`) with flag RLSE and details `rate_limiter_error`, else the request
//! goes on.
//!
//! The call goes to the service's cluster through the data plane's own upstream: a host
//! chosen by the cluster's load balancer, an HTTP/2 connection from this worker's pool
//! (TLS if the cluster originates it), so the rate-limit cluster is configured, balanced
//! and observed like any other.
use crate::proxy::compile::route::Clusters;
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::body::{RequestBody, ResponseBody};
use crate::proxy::http::filter::{
    DynamicMetadata, HttpFilter, RequestCx, ResponseCx, Step, Verdict,
};
use crate::proxy::http::filters::BuildCx;
use crate::proxy::http::local_reply::{Flags, GrpcStatus};
use crate::proxy::route::action::{Action as RouteActionKind, ClusterTarget};
use crate::proxy::route::matcher::{HeaderKey, HeaderMatch, RequestView};
use crate::proxy::upstream::Cluster;
use crate::proxy::upstream::lb::LbContext;
use crate::proxy::upstream::pool::{self, Sender};
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::config::route::v3 as route_pb;
use crate::xds::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use crate::xds::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use crate::xds::pb::envoy::extensions::filters::http::ratelimit::v3 as rl_pb;
use crate::xds::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, rate_limit::Unit,
};
use crate::xds::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use crate::xds::pb::google::protobuf::Any;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use prost::Message;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The filter's config type.
pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
/// The per-route config's type.
pub const PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

const SERVICE_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

// ---------------------------------------------------------------------------------------
// Descriptors: a route's `rate_limits`
// ---------------------------------------------------------------------------------------

/// The `rate_limits` of a route or virtual host, compiled.
#[derive(Debug, Clone, Default)]
pub struct RateLimitPolicy(Arc<[RateLimitEntry]>);

/// One `rate_limits` entry: the actions that make one descriptor.
#[derive(Debug)]
pub struct RateLimitEntry {
    stage: u32,
    actions: Vec<DescriptorAction>,
    hits_addend: Option<u64>,
}

/// One action: one entry of the descriptor (or none, or no descriptor at all).
#[derive(Debug)]
enum DescriptorAction {
    GenericKey {
        key: Box<str>,
        value: Box<str>,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    DestinationCluster,
    RequestHeaders {
        header: HeaderKey,
        key: Box<str>,
        skip_if_absent: bool,
    },
    HeaderValueMatch {
        key: Box<str>,
        value: Box<str>,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
    /// Dynamic metadata (a JWT's claims, another filter's facts): string values only.
    Metadata {
        key: Box<str>,
        namespace: Box<str>,
        path: Vec<Box<str>>,
        default: Box<str>,
        skip_if_absent: bool,
    },
}

/// What actions read of a request.
pub struct DescriptorInput<'a> {
    pub view: RequestView<'a>,
    /// Envoy's downstream remote address (the client, or the last `x-forwarded-for`
    /// entry when the connection manager does not use the remote address).
    pub remote: IpAddr,
    pub metadata: &'a DynamicMetadata,
    /// The route's cluster (single-cluster routes).
    pub cluster: Option<&'a str>,
}

/// A descriptor made for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub hits_addend: Option<u64>,
}

impl RateLimitPolicy {
    pub(crate) fn compile(
        cx: &mut Cx,
        limits: &[route_pb::RateLimit],
    ) -> Result<RateLimitPolicy, CompileError> {
        let mut out = Vec::with_capacity(limits.len());
        for (i, rl) in limits.iter().enumerate() {
            out.push(cx.at(format_args!("rate_limits[{i}]"), |cx| compile_entry(cx, rl))?);
        }
        Ok(RateLimitPolicy(out.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the descriptors of the entries of `stage` (an entry whose actions do not
    /// all apply makes none, as in Envoy).
    pub fn descriptors(&self, stage: u32, input: &DescriptorInput<'_>, out: &mut Vec<Descriptor>) {
        for e in self.0.iter().filter(|e| e.stage == stage) {
            let mut entries = Vec::with_capacity(e.actions.len());
            if e.actions.iter().all(|a| a.populate(input, &mut entries)) {
                out.push(Descriptor {
                    entries,
                    hits_addend: e.hits_addend,
                });
            }
        }
    }
}

fn compile_entry(cx: &mut Cx, rl: &route_pb::RateLimit) -> Result<RateLimitEntry, CompileError> {
    fields!(
        cx,
        rl,
        route_pb::RateLimit {
            supported: [stage, actions, hits_addend],
            ignored: [],
            unsupported: [disable_key, limit, apply_on_stream_done, x_ratelimit_option],
        }
    );
    let stage = rl.stage.map(|s| s.value).unwrap_or(0);
    if stage > 10 {
        return Err(cx.err("stage", "must be at most 10"));
    }
    if rl.actions.is_empty() {
        return Err(cx.err("actions", "at least one action is required"));
    }
    let hits_addend = match &rl.hits_addend {
        None => None,
        Some(h) => cx.at("hits_addend", |cx| {
            fields!(
                cx,
                h,
                route_pb::rate_limit::HitsAddend {
                    supported: [number],
                    ignored: [],
                    unsupported: [format, is_negative_hits],
                }
            );
            Ok(h.number.map(|n| n.value))
        })?,
    };
    let mut actions = Vec::with_capacity(rl.actions.len());
    for (i, a) in rl.actions.iter().enumerate() {
        actions.push(cx.at(format_args!("actions[{i}]"), |cx| compile_action(cx, a))?);
    }
    Ok(RateLimitEntry {
        stage,
        actions,
        hits_addend,
    })
}

/// A literal descriptor value: one with a `%COMMAND%` would be formatted by Envoy,
/// which meshgate does not do.
fn literal(cx: &Cx, field: &str, v: &str) -> Result<Box<str>, CompileError> {
    if v.contains('%') {
        return Err(cx.err(
            field,
            "substitution formats in descriptor values are not supported",
        ));
    }
    Ok(v.into())
}

#[allow(deprecated)]
fn compile_action(
    cx: &mut Cx,
    a: &route_pb::rate_limit::Action,
) -> Result<DescriptorAction, CompileError> {
    use route_pb::rate_limit::action::ActionSpecifier as A;
    Ok(match &a.action_specifier {
        Some(A::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err(cx.err("generic_key.descriptor_value", "required"));
            }
            DescriptorAction::GenericKey {
                key: if g.descriptor_key.is_empty() {
                    "generic_key".into()
                } else {
                    g.descriptor_key.as_str().into()
                },
                value: literal(cx, "generic_key.descriptor_value", &g.descriptor_value)?,
            }
        }
        Some(A::RemoteAddress(_)) => DescriptorAction::RemoteAddress,
        Some(A::MaskedRemoteAddress(m)) => {
            let v4 = m.v4_prefix_mask_len.map(|v| v.value).unwrap_or(32);
            let v6 = m.v6_prefix_mask_len.map(|v| v.value).unwrap_or(128);
            if v4 > 32 || v6 > 128 {
                return Err(cx.err("masked_remote_address", "prefix length out of range"));
            }
            DescriptorAction::MaskedRemoteAddress {
                v4: v4 as u8,
                v6: v6 as u8,
            }
        }
        Some(A::DestinationCluster(_)) => DescriptorAction::DestinationCluster,
        Some(A::RequestHeaders(h)) => {
            if h.descriptor_key.is_empty() {
                return Err(cx.err("request_headers.descriptor_key", "required"));
            }
            DescriptorAction::RequestHeaders {
                header: HeaderKey::parse(&h.header_name).ok_or_else(|| {
                    cx.err(
                        "request_headers.header_name",
                        format!("invalid header name {:?}", h.header_name),
                    )
                })?,
                key: h.descriptor_key.as_str().into(),
                skip_if_absent: h.skip_if_absent,
            }
        }
        Some(A::HeaderValueMatch(m)) => cx.at("header_value_match", |cx| {
            if m.descriptor_value.is_empty() {
                return Err(cx.err("descriptor_value", "required"));
            }
            if !m.default_value.is_empty() {
                return Err(cx.unsupported("default_value"));
            }
            if m.headers.is_empty() {
                return Err(cx.err("headers", "at least one header matcher is required"));
            }
            let mut headers = Vec::with_capacity(m.headers.len());
            for (i, h) in m.headers.iter().enumerate() {
                headers.push(cx.at(format_args!("headers[{i}]"), |cx| {
                    HeaderMatch::compile(cx, h)
                })?);
            }
            Ok(DescriptorAction::HeaderValueMatch {
                key: if m.descriptor_key.is_empty() {
                    "header_match".into()
                } else {
                    m.descriptor_key.as_str().into()
                },
                value: literal(cx, "descriptor_value", &m.descriptor_value)?,
                expect_match: m.expect_match.map(|b| b.value).unwrap_or(true),
                headers,
            })
        })?,
        Some(A::Metadata(m)) => cx.at("metadata", |cx| {
            use route_pb::rate_limit::action::meta_data::Source;
            if Source::try_from(m.source) != Ok(Source::Dynamic) {
                return Err(cx.err("source", "only DYNAMIC metadata is supported"));
            }
            metadata_action(
                cx,
                &m.descriptor_key,
                &m.metadata_key,
                &m.default_value,
                m.skip_if_absent,
            )
        })?,
        Some(A::DynamicMetadata(m)) => cx.at("dynamic_metadata", |cx| {
            metadata_action(
                cx,
                &m.descriptor_key,
                &m.metadata_key,
                &m.default_value,
                false,
            )
        })?,
        Some(A::SourceCluster(_)) => return Err(cx.unsupported("source_cluster")),
        Some(A::QueryParameters(_)) => return Err(cx.unsupported("query_parameters")),
        Some(A::QueryParameterValueMatch(_)) => {
            return Err(cx.unsupported("query_parameter_value_match"));
        }
        Some(A::RemoteAddressMatch(_)) => return Err(cx.unsupported("remote_address_match")),
        Some(A::Extension(_)) => return Err(cx.unsupported("extension")),
        None => return Err(cx.err("action_specifier", "required")),
    })
}

fn metadata_action(
    cx: &mut Cx,
    key: &str,
    metadata_key: &Option<crate::xds::pb::envoy::r#type::metadata::v3::MetadataKey>,
    default: &str,
    skip_if_absent: bool,
) -> Result<DescriptorAction, CompileError> {
    use crate::xds::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
    if key.is_empty() {
        return Err(cx.err("descriptor_key", "required"));
    }
    let mk = metadata_key
        .as_ref()
        .ok_or_else(|| cx.err("metadata_key", "required"))?;
    if mk.key.is_empty() || mk.path.is_empty() {
        return Err(cx.err("metadata_key", "key and path are required"));
    }
    let path = mk
        .path
        .iter()
        .map(|p| match &p.segment {
            Some(Segment::Key(k)) => Ok(k.as_str().into()),
            Some(Segment::Index(_)) => Err(cx.unsupported("metadata_key.path.index")),
            None => Err(cx.err("metadata_key.path", "a segment needs a key")),
        })
        .collect::<Result<_, _>>()?;
    Ok(DescriptorAction::Metadata {
        key: key.into(),
        namespace: mk.key.as_str().into(),
        path,
        default: default.into(),
        skip_if_absent,
    })
}

impl DescriptorAction {
    /// Envoy's `populateDescriptor`: false when the descriptor must not be made; an
    /// action that applies without an entry (`skip_if_absent`) adds none.
    fn populate(&self, input: &DescriptorInput<'_>, out: &mut Vec<(String, String)>) -> bool {
        match self {
            DescriptorAction::GenericKey { key, value } => {
                out.push((key.to_string(), value.to_string()));
                true
            }
            DescriptorAction::RemoteAddress => {
                out.push(("remote_address".into(), input.remote.to_string()));
                true
            }
            DescriptorAction::MaskedRemoteAddress { v4, v6 } => {
                out.push((
                    "masked_remote_address".into(),
                    masked(input.remote, *v4, *v6),
                ));
                true
            }
            DescriptorAction::DestinationCluster => match input.cluster {
                Some(c) => {
                    out.push(("destination_cluster".into(), c.to_string()));
                    true
                }
                None => false,
            },
            DescriptorAction::RequestHeaders {
                header,
                key,
                skip_if_absent,
            } => {
                let value = match input.view.pseudo(header) {
                    Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                    None => match header {
                        HeaderKey::Name(n) => input
                            .view
                            .headers
                            .get(n)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                        _ => None,
                    },
                };
                match value {
                    Some(v) => {
                        out.push((key.to_string(), v));
                        true
                    }
                    None => *skip_if_absent,
                }
            }
            DescriptorAction::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                if headers.iter().all(|h| h.matches(&input.view)) != *expect_match {
                    return false;
                }
                out.push((key.to_string(), value.to_string()));
                true
            }
            DescriptorAction::Metadata {
                key,
                namespace,
                path,
                default,
                skip_if_absent,
            } => {
                let found = input
                    .metadata
                    .lookup(namespace, path)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty());
                match found {
                    Some(s) => out.push((key.to_string(), s.to_string())),
                    None if !default.is_empty() => out.push((key.to_string(), default.to_string())),
                    None => return *skip_if_absent,
                }
                true
            }
        }
    }
}

/// `a.b.c.0/24`: the address masked to its prefix, as Envoy's `CidrRange::asString`.
fn masked(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if v4 == 0 {
                0
            } else {
                u32::MAX << (32 - v4 as u32)
            };
            format!("{}/{}", std::net::Ipv4Addr::from(bits & mask), v4)
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if v6 == 0 {
                0
            } else {
                u128::MAX << (128 - v6 as u32)
            };
            format!("{}/{}", std::net::Ipv6Addr::from(bits & mask), v6)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Per-route config
// ---------------------------------------------------------------------------------------

/// Whether a route's request also uses its virtual host's `rate_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// Only when the route has none (the default).
    Override,
    Include,
    Ignore,
}

/// `RateLimitPerRoute`, compiled.
#[derive(Debug, Clone)]
pub struct RateLimitPerRoute {
    pub vh_rate_limits: VhRateLimits,
    /// Replaces the filter's domain.
    pub domain: Option<Arc<str>>,
    /// Used instead of the route's and virtual host's `rate_limits` when not empty.
    pub rate_limits: RateLimitPolicy,
}

impl RateLimitPerRoute {
    pub(crate) fn compile(cx: &mut Cx, any: &Any) -> Result<RateLimitPerRoute, CompileError> {
        let c = rl_pb::RateLimitPerRoute::decode(any.value.as_slice())
            .map_err(|e| cx.err("", format!("decoding RateLimitPerRoute: {e}")))?;
        fields!(
            cx,
            &c,
            rl_pb::RateLimitPerRoute {
                supported: [vh_rate_limits, rate_limits, domain],
                ignored: [],
                unsupported: [override_option],
            }
        );
        use rl_pb::rate_limit_per_route::VhRateLimitsOptions as V;
        let vh_rate_limits = match V::try_from(c.vh_rate_limits) {
            Ok(V::Override) => VhRateLimits::Override,
            Ok(V::Include) => VhRateLimits::Include,
            Ok(V::Ignore) => VhRateLimits::Ignore,
            Err(_) => return Err(cx.err("vh_rate_limits", "unknown value")),
        };
        Ok(RateLimitPerRoute {
            vh_rate_limits,
            domain: (!c.domain.is_empty()).then(|| c.domain.as_str().into()),
            rate_limits: RateLimitPolicy::compile(cx, &c.rate_limits)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------

/// The compiled filter.
#[derive(Debug)]
pub struct RateLimitFilter {
    name: Box<str>,
    domain: Arc<str>,
    stage: u32,
    /// `request_type: internal`: meshgate treats every request as external, so such a
    /// filter never calls.
    internal_only: bool,
    timeout: Duration,
    failure_mode_deny: bool,
    rate_limited_as_resource_exhausted: bool,
    x_ratelimit_headers: bool,
    x_envoy_ratelimited: bool,
    rate_limited_status: StatusCode,
    status_on_error: StatusCode,
    client: RlsClient,
}

/// The gRPC client of the rate-limit service: its cluster, the `:authority` of calls and
/// the `initial_metadata` headers.
#[derive(Debug)]
struct RlsClient {
    cluster: Arc<Cluster>,
    uri: http::Uri,
    metadata: Vec<(HeaderName, HeaderValue)>,
}

/// Envoy's default `timeout` of the call.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

impl RateLimitFilter {
    /// Builds the filter from its `typed_config`; the rate-limit service's cluster must
    /// be one of the same configuration, as Envoy requires of `envoy_grpc`.
    pub(crate) fn build(
        cx: &mut Cx,
        b: &BuildCx<'_>,
        any: &Any,
    ) -> Result<Arc<dyn HttpFilter>, CompileError> {
        Ok(Arc::new(Self::compile(cx, b.name, any, b.clusters)?))
    }

    /// Compiles the filter's `typed_config` against `clusters`.
    pub(crate) fn compile(
        cx: &mut Cx,
        name: &str,
        any: &Any,
        clusters: &Clusters,
    ) -> Result<RateLimitFilter, CompileError> {
        let c = rl_pb::RateLimit::decode(any.value.as_slice())
            .map_err(|e| cx.err("typed_config", format!("decoding RateLimit: {e}")))?;
        cx.at("typed_config", |cx| {
            Self::compile_config(cx, name, &c, clusters)
        })
    }

    fn compile_config(
        cx: &mut Cx,
        name: &str,
        c: &rl_pb::RateLimit,
        clusters: &Clusters,
    ) -> Result<RateLimitFilter, CompileError> {
        fields!(
            cx,
            c,
            rl_pb::RateLimit {
                supported: [
                    domain,
                    stage,
                    request_type,
                    timeout,
                    failure_mode_deny,
                    rate_limited_as_resource_exhausted,
                    rate_limit_service,
                    enable_x_ratelimit_headers,
                    disable_x_envoy_ratelimited_header,
                    rate_limited_status,
                    status_on_error
                ],
                ignored: [stat_prefix],
                unsupported: [
                    response_headers_to_add,
                    filter_enabled,
                    filter_enforced,
                    failure_mode_deny_percent,
                    rate_limits,
                    metadata_namespace,
                    enable_retry_after_header
                ],
            }
        );
        if c.domain.is_empty() {
            return Err(cx.err("domain", "required"));
        }
        if c.stage > 10 {
            return Err(cx.err("stage", "must be at most 10"));
        }
        let internal_only = match c.request_type.as_str() {
            "" | "both" | "external" => false,
            "internal" => true,
            other => {
                return Err(cx.err(
                    "request_type",
                    format!("{other:?} is not one of internal, external, both"),
                ));
            }
        };
        let status = |field: &str,
                      s: &Option<crate::xds::pb::envoy::r#type::v3::HttpStatus>,
                      default: StatusCode| {
            match s {
                None => Ok(default),
                Some(s) => u16::try_from(s.code)
                    .ok()
                    .filter(|c| (400..600).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| cx.err(field, format!("{} is not a 4xx or 5xx status", s.code))),
            }
        };
        let rate_limited_status = status(
            "rate_limited_status",
            &c.rate_limited_status,
            StatusCode::TOO_MANY_REQUESTS,
        )?;
        let status_on_error = status(
            "status_on_error",
            &c.status_on_error,
            StatusCode::INTERNAL_SERVER_ERROR,
        )?;
        use rl_pb::rate_limit::XRateLimitHeadersRfcVersion as X;
        let x_ratelimit_headers = match X::try_from(c.enable_x_ratelimit_headers) {
            Ok(X::Off) => false,
            Ok(X::DraftVersion03) => true,
            Err(_) => return Err(cx.err("enable_x_ratelimit_headers", "unknown value")),
        };
        let svc = c
            .rate_limit_service
            .as_ref()
            .ok_or_else(|| cx.err("rate_limit_service", "required"))?;
        let client = cx.at("rate_limit_service", |cx| compile_client(cx, svc, clusters))?;
        Ok(RateLimitFilter {
            name: name.into(),
            domain: c.domain.as_str().into(),
            stage: c.stage,
            internal_only,
            timeout: duration(cx, "timeout", &c.timeout)?.unwrap_or(DEFAULT_TIMEOUT),
            failure_mode_deny: c.failure_mode_deny,
            rate_limited_as_resource_exhausted: c.rate_limited_as_resource_exhausted,
            x_ratelimit_headers,
            x_envoy_ratelimited: !c.disable_x_envoy_ratelimited_header,
            rate_limited_status,
            status_on_error,
            client,
        })
    }
}

fn compile_client(
    cx: &mut Cx,
    svc: &crate::xds::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig,
    clusters: &Clusters,
) -> Result<RlsClient, CompileError> {
    use crate::xds::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
    use core_pb::grpc_service::TargetSpecifier;
    fields!(
        cx,
        svc,
        RateLimitServiceConfig {
            supported: [grpc_service, transport_api_version],
            ignored: [],
            unsupported: [],
        }
    );
    if core_pb::ApiVersion::try_from(svc.transport_api_version) != Ok(core_pb::ApiVersion::V3) {
        return Err(cx.err("transport_api_version", "must be V3"));
    }
    let g = svc
        .grpc_service
        .as_ref()
        .ok_or_else(|| cx.err("grpc_service", "required"))?;
    cx.at("grpc_service", |cx| {
        fields!(
            cx,
            g,
            core_pb::GrpcService {
                supported: [target_specifier, initial_metadata],
                // The filter's own `timeout` bounds each call, as in Envoy.
                ignored: [timeout],
                unsupported: [retry_policy],
            }
        );
        let e = match &g.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(e)) => e,
            Some(TargetSpecifier::GoogleGrpc(_)) => return Err(cx.unsupported("google_grpc")),
            None => return Err(cx.err("envoy_grpc", "required")),
        };
        cx.at("envoy_grpc", |cx| {
            fields!(
                cx,
                e,
                core_pb::grpc_service::EnvoyGrpc {
                    supported: [cluster_name, authority],
                    ignored: [max_receive_message_length, skip_envoy_headers],
                    unsupported: [retry_policy],
                }
            );
            Ok(())
        })?;
        let cluster = clusters.get(&e.cluster_name).cloned().ok_or_else(|| {
            cx.err(
                "envoy_grpc.cluster_name",
                format!("unknown gRPC client cluster {:?}", e.cluster_name),
            )
        })?;
        let authority = if e.authority.is_empty() {
            &e.cluster_name
        } else {
            &e.authority
        };
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(SERVICE_PATH)
            .build()
            .map_err(|_| {
                cx.err(
                    "envoy_grpc.authority",
                    format!("invalid authority {authority:?}"),
                )
            })?;
        let mut metadata = Vec::with_capacity(g.initial_metadata.len());
        for (i, h) in g.initial_metadata.iter().enumerate() {
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes());
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value)
            } else {
                HeaderValue::from_bytes(&h.raw_value)
            };
            match (name, value) {
                (Ok(n), Ok(v)) => metadata.push((n, v)),
                _ => return Err(cx.err(&format!("initial_metadata[{i}]"), "invalid header")),
            }
        }
        Ok(RlsClient {
            cluster,
            uri,
            metadata,
        })
    })
}

/// Headers for the answer to an admitted request (the `x-ratelimit-*` headers), kept for
/// the response phase.
#[derive(Debug, Clone)]
struct PendingHeaders(Vec<(HeaderName, HeaderValue)>);

/// How the rate-limit service answered.
enum Answer {
    Ok(RateLimitResponse),
    OverLimit(RateLimitResponse),
    Error,
}

impl HttpFilter for RateLimitFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        if self.internal_only {
            return Step::CONTINUE;
        }
        let Some((domain, descriptors)) = self.descriptors(cx) else {
            return Step::CONTINUE;
        };
        let request = RateLimitRequest {
            domain: domain.to_string(),
            descriptors: descriptors
                .into_iter()
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .entries
                        .into_iter()
                        .map(|(key, value)| Entry { key, value })
                        .collect(),
                    hits_addend: d
                        .hits_addend
                        .map(|value| crate::xds::pb::google::protobuf::UInt64Value { value }),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        };
        let worker = cx.conn.worker;
        Step::Wait(Box::pin(async move {
            let answer = match tokio::time::timeout(
                self.timeout,
                self.client.call(worker, request, self.timeout),
            )
            .await
            {
                Ok(Ok(r)) if r.overall_code == Code::OverLimit as i32 => Answer::OverLimit(r),
                Ok(Ok(r)) => Answer::Ok(r),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "rate-limit service call failed");
                    Answer::Error
                }
                Err(_) => {
                    tracing::debug!(timeout = ?self.timeout, "rate-limit service call timed out");
                    Answer::Error
                }
            };
            self.decide(cx, answer)
        }))
    }

    fn on_response(&self, cx: &mut ResponseCx<'_>) {
        if let Some(PendingHeaders(h)) = cx.state.remove::<PendingHeaders>() {
            for (n, v) in h {
                cx.resp.headers_mut().append(n, v);
            }
        }
    }
}

impl RateLimitFilter {
    /// The domain and the descriptors of a request, if it is to be checked: routes that
    /// forward to an existing cluster only, as Envoy's filter.
    fn descriptors(&self, cx: &RequestCx<'_>) -> Option<(Arc<str>, Vec<Descriptor>)> {
        let route = cx.route?;
        let RouteActionKind::Route(ra) = &route.action else {
            return None;
        };
        let cluster = match &ra.target {
            ClusterTarget::Single(c) => {
                c.cluster.as_ref()?;
                Some(&*c.name)
            }
            ClusterTarget::Weighted { .. } => None,
        };
        let input = DescriptorInput {
            view: cx.request_view(),
            remote: cx.remote,
            metadata: cx.metadata,
            cluster,
        };
        let per_route = cx.per_route::<RateLimitPerRoute>(&self.name);
        let mut out = Vec::new();
        match per_route {
            Some(p) if !p.rate_limits.is_empty() => {
                p.rate_limits.descriptors(self.stage, &input, &mut out)
            }
            _ => {
                route.rate_limits.descriptors(self.stage, &input, &mut out);
                let vh = if route.include_vh_rate_limits {
                    VhRateLimits::Include
                } else {
                    per_route
                        .map(|p| p.vh_rate_limits)
                        .unwrap_or(VhRateLimits::Override)
                };
                let use_vh = match vh {
                    VhRateLimits::Include => true,
                    VhRateLimits::Override => route.rate_limits.is_empty(),
                    VhRateLimits::Ignore => false,
                };
                if let (true, Some(vhost)) = (use_vh, cx.vhost) {
                    vhost.rate_limits.descriptors(self.stage, &input, &mut out);
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        let domain = per_route
            .and_then(|p| p.domain.clone())
            .unwrap_or_else(|| self.domain.clone());
        Some((domain, out))
    }

    /// Envoy's `complete`: the answer, the response flag and the headers.
    fn decide(&self, cx: &mut RequestCx<'_>, answer: Answer) -> Verdict {
        let mut headers = Vec::new();
        let (over, error) = match &answer {
            Answer::Ok(r) | Answer::OverLimit(r) => {
                if self.x_ratelimit_headers {
                    x_ratelimit_headers(&r.statuses, &mut headers);
                }
                append_service_headers(&r.response_headers_to_add, &mut headers);
                (matches!(answer, Answer::OverLimit(_)), false)
            }
            Answer::Error => (false, true),
        };
        if over {
            if self.x_envoy_ratelimited {
                headers.push((
                    X_ENVOY_RATELIMITED.clone(),
                    HeaderValue::from_static("true"),
                ));
            }
            cx.log.flags.set(Flags::RL);
            cx.log.details = Some("request_rate_limited");
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = self.rate_limited_status;
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            for (n, v) in headers {
                resp.headers_mut().append(n, v);
            }
            if self.rate_limited_as_resource_exhausted {
                resp.extensions_mut().insert(GrpcStatus(8));
            }
            return Verdict::respond(resp);
        }
        if error && self.failure_mode_deny {
            cx.log.flags.set(Flags::RLSE);
            cx.log.details = Some("rate_limiter_error");
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = self.status_on_error;
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            // Envoy 1.40 marks neither this answer nor a failed-open one with
            // `x-envoy-ratelimited`.
            return Verdict::respond(resp);
        }
        if let Answer::Ok(r) = &answer {
            for h in &r.request_headers_to_add {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()),
                    header_value(h),
                ) {
                    cx.req.headers_mut().append(n, v);
                }
            }
        }
        if !headers.is_empty() {
            cx.state.insert(PendingHeaders(headers));
        }
        Verdict::Continue
    }
}

fn header_value(h: &core_pb::HeaderValue) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value)
    } else {
        HeaderValue::from_bytes(&h.raw_value)
    }
}

fn append_service_headers(add: &[core_pb::HeaderValue], out: &mut Vec<(HeaderName, HeaderValue)>) {
    for h in add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()),
            header_value(h),
        ) {
            out.push((n, v));
        }
    }
}

/// Envoy's `XRateLimitHeaderUtils::create` (draft 03): the status with the least
/// remaining names the limit, remaining and reset; every status with a limit adds its
/// quota policy `, N;w=SECONDS`.
fn x_ratelimit_headers(statuses: &[DescriptorStatus], out: &mut Vec<(HeaderName, HeaderValue)>) {
    let mut min: Option<&DescriptorStatus> = None;
    let mut policy = String::new();
    for s in statuses {
        let Some(limit) = &s.current_limit else {
            continue;
        };
        if min.is_none_or(|m| s.limit_remaining < m.limit_remaining) {
            min = Some(s);
        }
        let window: u64 = match Unit::try_from(limit.unit) {
            Ok(Unit::Second) => 1,
            Ok(Unit::Minute) => 60,
            Ok(Unit::Hour) => 3600,
            Ok(Unit::Day) => 86400,
            Ok(Unit::Week) => 7 * 86400,
            Ok(Unit::Month) => 30 * 86400,
            Ok(Unit::Year) => 365 * 86400,
            _ => 0,
        };
        if window > 0 {
            policy.push_str(&format!(", {};w={}", limit.requests_per_unit, window));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(m) = min else { return };
    let limit = m
        .current_limit
        .as_ref()
        .map(|l| l.requests_per_unit)
        .unwrap_or(0);
    let reset = m
        .duration_until_reset
        .as_ref()
        .map(|d| d.seconds)
        .unwrap_or(0);
    let values = [
        (&X_RATELIMIT_LIMIT, format!("{limit}{policy}")),
        (&X_RATELIMIT_REMAINING, m.limit_remaining.to_string()),
        (&X_RATELIMIT_RESET, reset.to_string()),
    ];
    for (n, v) in values {
        if let Ok(v) = HeaderValue::from_str(&v) {
            out.push((n.clone(), v));
        }
    }
}

/// Why a call to the rate-limit service failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("the rate-limit cluster has no host")]
    NoHost,
    #[error("connecting to the rate-limit service: {0:?}")]
    Connect(pool::PoolError),
    #[error("the rate-limit service connection is not HTTP/2")]
    NotH2,
    #[error("rate-limit service: {0}")]
    Http(#[from] hyper::Error),
    #[error("rate-limit service answered HTTP {0}")]
    Status(StatusCode),
    #[error("rate-limit service answered grpc-status {0}")]
    Grpc(String),
    #[error("rate-limit service answer: {0}")]
    Decode(String),
}

impl RlsClient {
    /// One unary call over an HTTP/2 connection of this worker's pool.
    async fn call(
        &self,
        worker: usize,
        req: RateLimitRequest,
        timeout: Duration,
    ) -> Result<RateLimitResponse, CallError> {
        let host = self
            .cluster
            .choose_host(LbContext::default())
            .ok_or(CallError::NoHost)?;
        let mut conn = pool::acquire(&self.cluster, &host, worker, true)
            .await
            .map_err(CallError::Connect)?;
        let mut body = BytesMut::with_capacity(5 + req.encoded_len());
        body.put_u8(0);
        body.put_u32(req.encoded_len() as u32);
        req.encode(&mut body)
            .map_err(|e| CallError::Decode(e.to_string()))?;
        let mut b = Request::builder()
            .method(http::Method::POST)
            .uri(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)));
        for (n, v) in &self.metadata {
            b = b.header(n, v);
        }
        let request = b
            .body(RequestBody::Full(Some(body.freeze())))
            .map_err(|e| CallError::Decode(e.to_string()))?;
        let Sender::H2(sender) = &mut conn.sender else {
            return Err(CallError::NotH2);
        };
        let resp = sender.send_request(request).await?;
        pool::release(&self.cluster, &host, worker, conn);
        if resp.status() != StatusCode::OK {
            return Err(CallError::Status(resp.status()));
        }
        let head_status = resp.headers().get("grpc-status").cloned();
        use http_body_util::BodyExt;
        let collected = resp.into_body().collect().await?;
        let status = head_status.or_else(|| {
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
        });
        match status.as_ref().map(|s| s.as_bytes()) {
            Some(b"0") => {}
            Some(other) => {
                return Err(CallError::Grpc(String::from_utf8_lossy(other).into_owned()));
            }
            None => return Err(CallError::Grpc("missing".into())),
        }
        decode_unary(collected.to_bytes())
    }
}

/// The one message of a unary gRPC answer (uncompressed).
fn decode_unary(mut b: Bytes) -> Result<RateLimitResponse, CallError> {
    if b.len() < 5 {
        return Err(CallError::Decode("short message".into()));
    }
    if b.get_u8() != 0 {
        return Err(CallError::Decode(
            "compressed messages are not supported".into(),
        ));
    }
    let len = b.get_u32() as usize;
    if b.len() != len {
        return Err(CallError::Decode(format!(
            "message of {} bytes, framed as {len}",
            b.len()
        )));
    }
    RateLimitResponse::decode(b).map_err(|e| CallError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Result<RateLimitPolicy, CompileError> {
        let limits: Vec<route_pb::RateLimit> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|l| crate::xds::json::from_json(l).unwrap())
            .collect();
        RateLimitPolicy::compile(&mut Cx::new("route_configuration", "r"), &limits)
    }

    fn eval(
        p: &RateLimitPolicy,
        headers: &[(&str, &str)],
        path: &str,
        md: &DynamicMetadata,
    ) -> Vec<Vec<(String, String)>> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = http::Method::GET;
        let input = DescriptorInput {
            view: RequestView::new(&method, b"example.com", path, None, false, &h),
            remote: "10.1.2.3".parse().unwrap(),
            metadata: md,
            cluster: Some("backend"),
        };
        let mut out = Vec::new();
        p.descriptors(0, &input, &mut out);
        out.into_iter().map(|d| d.entries).collect()
    }

    fn e(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn actions_make_descriptors_as_envoy() {
        let p = policy(json!([
            {"actions": [
                {"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": "ns/p/0"}},
                {"remote_address": {}}]},
            {"actions": [
                {"generic_key": {"descriptor_value": "x"}},
                {"request_headers": {"header_name": "x-user", "descriptor_key": "header:x-user"}}]},
            {"actions": [
                {"generic_key": {"descriptor_value": "y"}},
                {"request_headers": {"header_name": "x-user", "descriptor_key": "u", "skip_if_absent": true}},
                {"request_headers": {"header_name": ":path", "descriptor_key": "path"}},
                {"masked_remote_address": {"v4_prefix_mask_len": 16}},
                {"destination_cluster": {}}]},
            {"actions": [
                {"header_value_match": {"descriptor_value": "post", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}}]},
            {"actions": [
                {"header_value_match": {"descriptor_key": "k", "descriptor_value": "not-post", "expect_match": false,
                    "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}}]},
            {"stage": 1, "actions": [{"generic_key": {"descriptor_value": "other stage"}}]}
        ]))
        .unwrap();
        let md = DynamicMetadata::default();
        // No x-user: the second entry makes no descriptor, the third skips the entry.
        assert_eq!(
            eval(&p, &[], "/a?b", &md),
            vec![
                vec![
                    e("meshgate.io/rule", "ns/p/0"),
                    e("remote_address", "10.1.2.3")
                ],
                vec![
                    e("generic_key", "y"),
                    e("path", "/a?b"),
                    e("masked_remote_address", "10.1.0.0/16"),
                    e("destination_cluster", "backend")
                ],
                vec![e("k", "not-post")],
            ]
        );
        let with_user = eval(&p, &[("x-user", "alice")], "/", &md);
        assert_eq!(
            with_user[1],
            vec![e("generic_key", "x"), e("header:x-user", "alice")]
        );
        assert_eq!(with_user[2][1], e("u", "alice"));
    }

    #[test]
    fn metadata_actions_read_jwt_claims() {
        let p = policy(json!([{"actions": [
            {"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": "ns/p/1"}},
            {"metadata": {"descriptor_key": "claim:sub", "metadata_key": {"key": "envoy.filters.http.jwt_authn",
                "path": [{"key": "https://issuer"}, {"key": "sub"}]}}}]},
            {"actions": [{"metadata": {"descriptor_key": "tier", "default_value": "free", "metadata_key": {"key": "ns",
                "path": [{"key": "tier"}]}}}]},
            {"actions": [{"metadata": {"descriptor_key": "n", "skip_if_absent": true, "metadata_key": {"key": "ns",
                "path": [{"key": "num"}]}}}]}
        ]))
        .unwrap();
        let empty = DynamicMetadata::default();
        assert_eq!(
            eval(&p, &[], "/", &empty),
            vec![vec![e("tier", "free")], vec![]]
        );
        let mut md = DynamicMetadata::default();
        md.namespace_mut("envoy.filters.http.jwt_authn")
            .insert("https://issuer".into(), json!({"sub": "alice", "n": 1}));
        md.namespace_mut("ns").insert("tier".into(), json!("gold"));
        md.namespace_mut("ns").insert("num".into(), json!(3));
        assert_eq!(
            eval(&p, &[], "/", &md),
            vec![
                vec![e("meshgate.io/rule", "ns/p/1"), e("claim:sub", "alice")],
                vec![e("tier", "gold")],
                vec![]
            ]
        );
    }

    #[test]
    fn unsupported_actions_are_refused_by_name() {
        let cases = [
            (
                json!([{"actions": [{"query_parameters": {"query_parameter_name": "a", "descriptor_key": "b"}}]}]),
                "rate_limits[0].actions[0].query_parameters",
            ),
            (
                json!([{"disable_key": "x", "actions": [{"remote_address": {}}]}]),
                "rate_limits[0].disable_key",
            ),
            (
                json!([{"actions": [{"generic_key": {"descriptor_value": "%REQ(x)%"}}]}]),
                "rate_limits[0].actions[0].generic_key.descriptor_value",
            ),
            (json!([{"actions": []}]), "rate_limits[0].actions"),
        ];
        for (v, path) in cases {
            let err = policy(v).unwrap_err();
            assert_eq!(err.path, path, "{err}");
        }
    }

    #[test]
    fn x_ratelimit_headers_as_envoy() {
        use crate::xds::pb::envoy::service::ratelimit::v3::rate_limit_response::RateLimit as L;
        let st = |n: u32, unit: Unit, remaining: u32, reset: i64| DescriptorStatus {
            code: Code::Ok as i32,
            current_limit: Some(L {
                name: String::new(),
                requests_per_unit: n,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(crate::xds::pb::google::protobuf::Duration {
                seconds: reset,
                nanos: 900_000_000,
            }),
            quota: None,
        };
        let mut out = Vec::new();
        x_ratelimit_headers(
            &[
                DescriptorStatus::default(),
                st(10, Unit::Second, 4, 1),
                st(100, Unit::Hour, 2, 3000),
            ],
            &mut out,
        );
        let got: Vec<(String, String)> = out
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                e("x-ratelimit-limit", "100, 10;w=1, 100;w=3600"),
                e("x-ratelimit-remaining", "2"),
                e("x-ratelimit-reset", "3000")
            ]
        );
        let mut none = Vec::new();
        x_ratelimit_headers(&[DescriptorStatus::default()], &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn masks_addresses_like_cidr_ranges() {
        assert_eq!(masked("10.1.2.3".parse().unwrap(), 24, 128), "10.1.2.0/24");
        assert_eq!(masked("10.1.2.3".parse().unwrap(), 32, 128), "10.1.2.3/32");
        assert_eq!(masked("10.1.2.3".parse().unwrap(), 0, 128), "0.0.0.0/0");
        assert_eq!(
            masked("2001:db8::1".parse().unwrap(), 32, 64),
            "2001:db8::/64"
        );
    }

    #[test]
    fn unary_frames() {
        let r = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            ..Default::default()
        };
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(r.encoded_len() as u32);
        r.encode(&mut b).unwrap();
        assert_eq!(decode_unary(b.clone().freeze()).unwrap(), r);
        let mut bad = b.clone();
        bad[0] = 1;
        assert!(decode_unary(bad.freeze()).is_err());
        assert!(decode_unary(Bytes::from_static(b"\0\0\0")).is_err());
    }
}
