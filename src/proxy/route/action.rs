//! What a matched route does: forward to a cluster (with rewrites, timeouts, retries,
//! hashing, mirroring), redirect, or answer directly.
use crate::proxy::route::headers::HeaderMutations;
use crate::proxy::upstream::Cluster;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;

/// A route's action.
#[derive(Debug, Clone)]
pub enum Action {
    Route(Box<RouteAction>),
    Redirect(Box<Redirect>),
    Direct(DirectResponse),
}

/// A cluster named by a route, resolved at compile time (`None`: no such cluster, which
/// Envoy answers with `cluster_not_found_response_code`, 503 by default).
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub name: Arc<str>,
    pub cluster: Option<Arc<Cluster>>,
}

/// One entry of `weighted_clusters`.
#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub cluster: ClusterRef,
    pub weight: u32,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite: Option<HeaderValue>,
}

/// Where a route forwards.
#[derive(Debug, Clone)]
pub enum ClusterTarget {
    Single(ClusterRef),
    Weighted {
        clusters: Vec<WeightedCluster>,
        total: u64,
    },
}

/// How the Host/:authority is rewritten.
#[derive(Debug, Clone)]
pub enum HostRewrite {
    None,
    Literal(HeaderValue),
    /// `auto_host_rewrite`: the chosen endpoint's hostname (DNS clusters) or address.
    Auto,
    /// `host_rewrite_header`: the value of another request header.
    Header(HeaderName),
    /// `host_rewrite_path_regex`.
    PathRegex(Regex, String),
}

/// Envoy's retry conditions (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(pub u32);

impl RetryOn {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RESET: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const REFUSED_STREAM: u32 = 1 << 6;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 7;
    pub const GRPC_CANCELLED: u32 = 1 << 8;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 9;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 10;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 11;
    pub const GRPC_INTERNAL: u32 = 1 << 12;
    pub const ENVOY_RATELIMITED: u32 = 1 << 13;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// Parses Envoy's comma-separated `retry_on` (HTTP and gRPC conditions).
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut bits = 0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            bits |= match part {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "connect-failure" => Self::CONNECT_FAILURE,
                "reset" => Self::RESET,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "refused-stream" => Self::REFUSED_STREAM,
                "reset-before-request" => Self::RESET_BEFORE_REQUEST,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                "internal" => Self::GRPC_INTERNAL,
                "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
                other => return Err(format!("retry condition {other:?} is not supported")),
            };
        }
        Ok(RetryOn(bits))
    }
}

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub back_off_base: Duration,
    pub back_off_max: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    pub avoid_previous_hosts: bool,
    pub host_selection_max_attempts: u32,
    /// `envoy.retry_priorities.previous_priorities`: its `update_frequency`.
    pub previous_priorities: Option<u32>,
}

/// What a consistent-hash policy hashes.
#[derive(Debug, Clone)]
pub enum HashPolicyKind {
    /// A header or pseudo-header (`:authority`, `:path`, ...), as header matchers read it.
    Header(crate::proxy::route::matcher::HeaderKey),
    /// A cookie; with `ttl` set, Envoy generates it when absent.
    Cookie {
        name: Box<str>,
        ttl: Option<Duration>,
        path: Option<Box<str>>,
        /// Extra attributes of a generated cookie, `name` or `name=value`.
        attributes: Box<[(Box<str>, Box<str>)]>,
    },
    SourceIp,
    Query(Box<str>),
}

/// One `hash_policy` entry.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    pub terminal: bool,
}

/// One `request_mirror_policies` entry.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub cluster: ClusterRef,
    pub per_million: u32,
    pub append_shadow_suffix: bool,
}

/// `upgrade_configs` at the route level (overrides the connection manager's).
#[derive(Debug, Clone)]
pub struct RouteUpgrade {
    pub upgrade_type: Box<str>,
    pub enabled: bool,
}

/// Forwarding to a cluster.
#[derive(Debug, Clone)]
pub struct RouteAction {
    pub target: ClusterTarget,
    pub cluster_not_found_status: u16,
    pub prefix_rewrite: Option<Box<str>>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    pub append_x_forwarded_host: bool,
    /// `None`: no timeout (0s in the config); default 15 s.
    pub timeout: Option<Duration>,
    /// `idle_timeout`: replaces the connection manager's `stream_idle_timeout` for this
    /// route (`Some(ZERO)` disables it; None keeps the connection manager's).
    pub idle_timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub hash_policy: Vec<HashPolicy>,
    pub mirrors: Vec<MirrorPolicy>,
    pub upgrades: Vec<RouteUpgrade>,
    /// `x-envoy-expected-rq-timeout-ms` for this route (per-try timeout, else the route
    /// timeout), formatted once.
    pub expected_timeout_header: Option<HeaderValue>,
}

/// Where a redirect's path comes from.
#[derive(Debug, Clone)]
pub enum PathRedirect {
    Keep,
    Path { path: Box<str>, has_query: bool },
    Prefix(Box<str>),
    Regex(Regex, String),
}

/// A redirect (Envoy's `RedirectAction`).
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: PathRedirect,
    pub strip_query: bool,
    pub status: http::StatusCode,
}

/// A direct response.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: Option<Bytes>,
}
