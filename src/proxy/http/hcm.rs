//! The compiled HTTP connection manager of a filter chain: request-handling settings,
//! the HTTP filters in order, and the route table.
use crate::proxy::http::filter::HttpFilter;
use crate::proxy::route::RouteTable;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    Keep,
    Reject,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// `strip_matching_host_port` / `strip_any_host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    None,
    Matching,
    Any,
}

/// The connection manager's `forward_client_cert_details` and
/// `set_current_client_cert_details`.
pub use crate::tls::identity::{ClientCertDetails, ForwardClientCert};

/// The compiled connection manager.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: Box<str>,
    pub routes: Arc<RouteTable>,
    /// The HTTP filters in configured order (the router is implicit and last).
    pub filters: Vec<Arc<dyn HttpFilter>>,
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`: how many `x-forwarded-for` hops are trusted proxies.
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub strip_port: StripPort,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    /// Downstream connection idle timeout (common_http_protocol_options.idle_timeout).
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    /// `stream_idle_timeout`: no activity on a stream for this long ends it (None:
    /// disabled, `0s`, as Istio sets on gateways; Envoy's default is 5 minutes).
    pub stream_idle_timeout: Option<Duration>,
    /// `drain_timeout`: how long a draining connection keeps serving new requests before
    /// it closes once idle (HTTP/2: between the GOAWAY notice and the final GOAWAY).
    pub drain_timeout: Duration,
    pub max_headers_count: usize,
    pub max_request_headers_kb: u32,
    pub reject_underscore_headers: bool,
    pub drop_underscore_headers: bool,
    /// Upgrade types allowed (lower-case), e.g. `websocket`.
    pub upgrades: Vec<Box<str>>,
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<HeaderValue>,
    pub forward_client_cert: ForwardClientCert,
    /// What this proxy's own XFCC element carries (`Hash` always).
    pub client_cert_details: ClientCertDetails,
    pub suppress_envoy_headers: bool,
    pub http2_max_concurrent_streams: Option<u32>,
    /// `common_http_protocol_options.max_requests_per_connection` when set (0: no
    /// limit); unset, `--max-requests-per-connection` applies.
    pub max_requests_per_connection: Option<u32>,
    /// `tracing`: how requests are sampled, and where their spans go.
    pub tracing: Option<Arc<crate::proxy::trace::Tracing>>,
    /// The overload counters of this `stat_prefix`, resolved on first use.
    pub overload_counters: std::sync::OnceLock<Arc<crate::proxy::overload::HcmCounters>>,
}

impl HttpConnectionManager {
    /// `http.<stat_prefix>.*` overload counters (one lock the first time per snapshot).
    pub fn overload_counters(
        &self,
        overload: &crate::proxy::overload::Overload,
    ) -> &crate::proxy::overload::HcmCounters {
        self.overload_counters
            .get_or_init(|| overload.hcm_counters(&self.stat_prefix))
    }

    /// The requests a connection may carry: this connection manager's setting, else the
    /// gateway's default (`--max-requests-per-connection`); `None`: no limit.
    #[inline]
    pub fn max_requests_per_connection(&self, default: Option<u32>) -> Option<u32> {
        self.max_requests_per_connection
            .or(default)
            .filter(|n| *n > 0)
    }
}
