//! `VirtualService` (networking.istio.io): routing rules for traffic to a set of hosts.
use super::common::{Percent, PortSelector, StringMatch, base64_bytes, check_oneof, istio_enum};
use crate::config::duration::Duration;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The spec of a `VirtualService`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Destination hosts these rules apply to (short names resolve in the namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`name`, `ns/name`) and/or `mesh` the rules apply to; default `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, tried in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS/HTTPS passthrough routes (by SNI).
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Opaque TCP routes.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this VirtualService is visible in (`.`, `*`, or names).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// Where traffic goes: a service host, an optional subset and port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host (short names resolve in the VirtualService's namespace).
    #[serde(default)]
    pub host: String,
    /// A subset defined by a DestinationRule for this host.
    #[serde(default)]
    pub subset: String,
    /// The service port, needed when the service has several.
    pub port: Option<PortSelector>,
}

/// One HTTP route: conditions and what to do with matching requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name of the route, for logs and stats.
    #[serde(default)]
    pub name: String,
    /// Conditions, ORed together; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly with a fixed status and body.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite the path and/or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Overall request timeout.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination (deprecated form of `mirrors`).
    pub mirror: Option<Destination>,
    /// Mirror traffic to several destinations.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated percentage for `mirror`, as an integer.
    pub mirror_percent: Option<u32>,
    /// Percentage of traffic mirrored by `mirror`.
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation.
    pub headers: Option<Headers>,
}

/// Points to another VirtualService that holds the routes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    #[serde(default)]
    pub name: String,
    /// Its namespace (default: the delegating VirtualService's).
    #[serde(default)]
    pub namespace: String,
}

/// Request and response header operations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Applied to the request before forwarding.
    pub request: Option<HeaderOperations>,
    /// Applied to the response before returning it.
    pub response: Option<HeaderOperations>,
}

/// Set, add and remove headers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route for TLS traffic, matched by SNI.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions, ORed together.
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// A route for opaque TCP traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions, ORed together.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Conditions on an HTTP request; all set conditions must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name of the match, appended to the route's name.
    #[serde(default)]
    pub name: String,
    /// Path condition.
    pub uri: Option<StringMatch>,
    /// Scheme condition.
    pub scheme: Option<StringMatch>,
    /// Method condition.
    pub method: Option<StringMatch>,
    /// Authority (Host) condition.
    pub authority: Option<StringMatch>,
    /// Header conditions, keyed by lower-case header name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Port the request arrived on.
    #[serde(default)]
    pub port: u32,
    /// Labels of the calling workload (sidecars only).
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match the path case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload (sidecars only).
    #[serde(default)]
    pub source_namespace: String,
    /// Statistics prefix for this match.
    #[serde(default)]
    pub stat_prefix: String,
}

/// A weighted HTTP destination with its own header operations.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the traffic.
    pub destination: Option<Destination>,
    /// Share of traffic (all weights of a route sum to 100; one destination may omit it).
    #[serde(default)]
    pub weight: i32,
    /// Header operations for this destination.
    pub headers: Option<Headers>,
}

/// A weighted TCP/TLS destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the traffic.
    pub destination: Option<Destination>,
    /// Share of traffic.
    #[serde(default)]
    pub weight: i32,
}

/// Conditions on a TCP connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default)]
    pub port: u32,
    /// Source IP or CIDR.
    #[serde(default)]
    pub source_subnet: String,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default)]
    pub source_namespace: String,
}

/// Conditions on a TLS connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (wildcards allowed).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default)]
    pub port: u32,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default)]
    pub source_namespace: String,
}

istio_enum! {
    /// Which port a redirect's Location uses when none is given.
    RedirectPortSelection {
        /// 80 for http, 443 for https.
        FromProtocolDefault = 0 => "FROM_PROTOCOL_DEFAULT",
        /// The port the request came in on.
        FromRequestPort = 1 => "FROM_REQUEST_PORT",
    }
}

/// The `redirect_port` oneof of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// `port`: this port.
    Port(u32),
    /// `derivePort`: derived from the protocol or the request.
    DerivePort(RedirectPortSelection),
}

/// Answer with an HTTP redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    /// Replace the path.
    pub uri: String,
    /// Replace the authority.
    pub authority: String,
    /// The port of the Location (`port` or `derivePort`).
    pub redirect_port: Option<RedirectPort>,
    /// Replace the scheme.
    pub scheme: String,
    /// Status code (default 301).
    pub redirect_code: u32,
    /// Replace the matched prefix of the path.
    pub prefix_rewrite: String,
}

impl<'de> Deserialize<'de> for HttpRedirect {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            uri: String,
            #[serde(default)]
            authority: String,
            port: Option<u32>,
            derive_port: Option<RedirectPortSelection>,
            #[serde(default)]
            scheme: String,
            #[serde(default)]
            redirect_code: u32,
            #[serde(default)]
            prefix_rewrite: String,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("port", f.port.is_some()),
            ("derivePort", f.derive_port.is_some()),
        ])?;
        Ok(HttpRedirect {
            uri: f.uri,
            authority: f.authority,
            redirect_port: f
                .port
                .map(RedirectPort::Port)
                .or(f.derive_port.map(RedirectPort::DerivePort)),
            scheme: f.scheme,
            redirect_code: f.redirect_code,
            prefix_rewrite: f.prefix_rewrite,
        })
    }
}

/// Answer directly with a status and optional body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// HTTP status code.
    #[serde(default)]
    pub status: u32,
    /// Response body.
    pub body: Option<HttpBody>,
}

/// A response body: text or bytes (base64 in YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpBody {
    /// `string`: the body as text.
    String(String),
    /// `bytes`: the body as base64-encoded bytes.
    #[serde(with = "base64_bytes")]
    Bytes(Vec<u8>),
}

impl<'de> Deserialize<'de> for HttpBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            string: Option<String>,
            #[serde(default, deserialize_with = "optional_base64")]
            bytes: Option<Vec<u8>>,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[("string", f.string.is_some()), ("bytes", f.bytes.is_some())])?;
        Ok(match (f.string, f.bytes) {
            (Some(s), _) => HttpBody::String(s),
            (_, Some(b)) => HttpBody::Bytes(b),
            _ => HttpBody::String(String::new()),
        })
    }
}

fn optional_base64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<u8>>, D::Error> {
    base64_bytes::deserialize(deserializer).map(Some)
}

/// Rewrite a request before forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched path or prefix.
    #[serde(default)]
    pub uri: String,
    /// Replace the authority (Host).
    #[serde(default)]
    pub authority: String,
    /// Rewrite the path with a regex substitution.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex substitution.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(default, rename = "match")]
    pub pattern: String,
    /// Replacement, with `\1`-style group references.
    #[serde(default)]
    pub rewrite: String,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries (0 disables retries).
    #[serde(default)]
    pub attempts: i32,
    /// Timeout per attempt.
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated retry conditions (Envoy's `x-envoy-retry-on` values, status codes).
    #[serde(default)]
    pub retry_on: String,
    /// Retry on other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    pub backoff: Option<Duration>,
}

istio_enum! {
    /// What to do with CORS preflights that do not match the policy.
    UnmatchedPreflights {
        /// Istio's default (forward).
        Unspecified = 0 => "UNSPECIFIED",
        /// Forward them upstream.
        Forward = 1 => "FORWARD",
        /// Answer them without CORS headers.
        Ignore = 2 => "IGNORE",
    }
}

/// Cross-origin resource sharing policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins; use `allowOrigins`.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached.
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    pub allow_credentials: Option<bool>,
    /// Handling of preflights that do not match.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Fault injection: delays and aborts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay requests.
    pub delay: Option<Delay>,
    /// Abort requests.
    pub abort: Option<Abort>,
}

/// The `http_delay_type` oneof of a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DelayType {
    /// `fixedDelay`.
    FixedDelay(Duration),
    /// `exponentialDelay` (not implemented by Istio either).
    ExponentialDelay(Duration),
}

/// Delay a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    /// Deprecated integer percentage; use `percentage`.
    pub percent: i32,
    /// The delay (`fixedDelay` or `exponentialDelay`).
    pub delay_type: Option<DelayType>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
}

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            percent: i32,
            fixed_delay: Option<Duration>,
            exponential_delay: Option<Duration>,
            percentage: Option<Percent>,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("fixedDelay", f.fixed_delay.is_some()),
            ("exponentialDelay", f.exponential_delay.is_some()),
        ])?;
        Ok(Delay {
            percent: f.percent,
            delay_type: f
                .fixed_delay
                .map(DelayType::FixedDelay)
                .or(f.exponential_delay.map(DelayType::ExponentialDelay)),
            percentage: f.percentage,
        })
    }
}

/// The `error_type` oneof of an abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortError {
    /// `httpStatus`: answer with this HTTP status.
    HttpStatus(i32),
    /// `grpcStatus`: answer with this gRPC status name.
    GrpcStatus(String),
    /// `http2Error`: reset with this HTTP/2 error.
    Http2Error(String),
}

/// Abort a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// The error (`httpStatus`, `grpcStatus` or `http2Error`).
    pub error_type: Option<AbortError>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
}

impl<'de> Deserialize<'de> for Abort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            http_status: Option<i32>,
            grpc_status: Option<String>,
            http2_error: Option<String>,
            percentage: Option<Percent>,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("httpStatus", f.http_status.is_some()),
            ("grpcStatus", f.grpc_status.is_some()),
            ("http2Error", f.http2_error.is_some()),
        ])?;
        let error_type = match (f.http_status, f.grpc_status, f.http2_error) {
            (Some(s), _, _) => Some(AbortError::HttpStatus(s)),
            (_, Some(s), _) => Some(AbortError::GrpcStatus(s)),
            (_, _, Some(s)) => Some(AbortError::Http2Error(s)),
            _ => None,
        };
        Ok(Abort {
            error_type,
            percentage: f.percentage,
        })
    }
}

/// Mirror a share of traffic to a destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where mirrored requests go.
    pub destination: Option<Destination>,
    /// Share of traffic mirrored (default 100%).
    pub percentage: Option<Percent>,
}
