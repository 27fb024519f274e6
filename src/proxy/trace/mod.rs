//! Distributed tracing, as Envoy's connection manager does it with the Zipkin tracer
//! (`tracing` of the HTTP connection manager, `envoy.tracers.zipkin`):
//!
//! - the sampling decision: `x-client-trace-id` (client sampling), the request id's
//!   random value against `random_sampling`, `overall_sampling`; the reason is packed
//!   into the UUID `x-request-id` as Envoy's UUID extension does (`pack_trace_reason`);
//! - the span: B3 context read from the request (a received sampling state wins over the
//!   local decision), the operation name from the route's decorator (else the host),
//!   Envoy's standard tags and the custom tags, timestamps;
//! - propagation: the upstream request carries the child context (the connection
//!   manager's span, or with `spawn_upstream_span` one span per upstream attempt);
//! - export: [`zipkin`] buffers finished spans per worker and reports them.
//!
//! When the connection manager has no `tracing`, a request pays one branch. An
//! unsampled request carries its context upstream but records nothing.
pub mod b3;
pub mod zipkin;

use crate::proxy::access_log::RequestLog;
use crate::proxy::http::filter::DynamicMetadata;
use crate::proxy::http::request::X_REQUEST_ID;
use crate::proxy::stats::Stats;
use b3::SpanContext;
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

pub static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
pub static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
pub static X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");

/// What spans say about the proxy that made them (Envoy's local info: the node's id,
/// cluster and zone, and the host's address).
#[derive(Debug, Clone)]
pub struct LocalInfo {
    pub node_id: String,
    /// The node's cluster: the service name of every span (Istio:
    /// `istio-ingressgateway.istio-system`).
    pub cluster: String,
    pub zone: String,
    pub address: String,
}

impl LocalInfo {
    /// This host's address, with no node named yet.
    pub fn of_host() -> LocalInfo {
        LocalInfo {
            node_id: "meshgate".into(),
            cluster: "meshgate".into(),
            zone: String::new(),
            address: crate::proxy::http::request::host_address(true)
                .to_str()
                .unwrap_or("127.0.0.1")
                .to_string(),
        }
    }
}

static LOCAL: OnceLock<LocalInfo> = OnceLock::new();

/// Sets this process's [`LocalInfo`] (once; later calls are ignored).
pub fn set_local_info(info: LocalInfo) {
    let _ = LOCAL.set(info);
}

fn local_info() -> &'static LocalInfo {
    LOCAL.get_or_init(LocalInfo::of_host)
}

/// Why a request is traced: Envoy's `Tracing::Reason`, which the UUID request id
/// carries in its version digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    fn traced(self) -> bool {
        self != Reason::NotTraceable
    }

    /// The digit at offset 14 of the UUID (Envoy's `TRACE_*` bytes).
    fn digit(self) -> u8 {
        match self {
            Reason::NotTraceable => b'4',
            Reason::Sampling => b'9',
            Reason::ServiceForced => b'a',
            Reason::ClientForced => b'b',
        }
    }

    fn of_request_id(id: &[u8]) -> Reason {
        match id.get(14) {
            Some(b'9') if id.len() == 36 => Reason::Sampling,
            Some(b'a') if id.len() == 36 => Reason::ServiceForced,
            Some(b'b') if id.len() == 36 => Reason::ClientForced,
            _ => Reason::NotTraceable,
        }
    }
}

/// One custom tag's value source.
#[derive(Debug, Clone)]
pub enum TagValue {
    /// A literal, or an environment variable read when the configuration was compiled.
    Literal(Box<str>),
    RequestHeader {
        name: HeaderName,
        default: Option<Box<str>>,
    },
    /// A value of the request's dynamic metadata (`filter`, then the key path).
    Metadata {
        filter: Box<str>,
        path: Vec<Box<str>>,
        default: Option<Box<str>>,
    },
}

/// A compiled `custom_tags` entry.
#[derive(Debug, Clone)]
pub struct CustomTag {
    pub tag: Box<str>,
    pub value: TagValue,
}

/// The connection manager's compiled `tracing`.
#[derive(Debug)]
pub struct Tracing {
    /// Percentages in ten-thousandths, as Envoy turns them into fractional percents.
    pub client_sampling: u32,
    pub random_sampling: u32,
    pub overall_sampling: u32,
    pub custom_tags: Vec<CustomTag>,
    pub max_path_tag_length: usize,
    /// The listener's traffic direction is OUTBOUND: Envoy's egress operation (the
    /// connection manager's span is a CLIENT span, its decorator goes upstream).
    pub egress: bool,
    /// `spawn_upstream_span`: each upstream attempt gets its own CLIENT span, child of
    /// the connection manager's (which is then a SERVER span).
    pub spawn_upstream_span: bool,
    /// Not `no_context_propagation`: the upstream request carries the context.
    pub propagate: bool,
    /// The UUID request id extension's `pack_trace_reason`.
    pub pack_trace_reason: bool,
    pub zipkin: Arc<zipkin::Collector>,
}

/// The facts a sampled span reports that the access log does not keep.
#[derive(Debug)]
struct Facts {
    url: String,
    user_agent: Option<HeaderValue>,
    downstream_cluster: Option<HeaderValue>,
    client_trace_id: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    tags: Vec<(Box<str>, String)>,
    /// Metadata tags are read when the request's filters have run.
    metadata_tags_read: bool,
}

/// The connection manager's span of one request.
#[derive(Debug)]
pub struct ActiveSpan {
    tracing: Arc<Tracing>,
    pub context: SpanContext,
    /// The context came in the single `b3` header; it goes on in the same form.
    single: bool,
    name: Arc<str>,
    start: SystemTime,
    /// `Some` when sampled.
    facts: Option<Box<Facts>>,
}

/// An upstream attempt's span (`spawn_upstream_span`).
#[derive(Debug)]
pub struct UpstreamSpan {
    pub context: SpanContext,
    start: SystemTime,
}

/// How an upstream attempt ended, for its span.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOutcome<'a> {
    pub cluster: &'a str,
    pub observability_name: &'a str,
    pub host: Option<std::net::SocketAddr>,
    /// The upstream connection's protocol, `None` without a connection.
    pub version: Option<Version>,
    /// 0 when no response came.
    pub status: u16,
    pub flags: crate::proxy::http::local_reply::Flags,
    /// Envoy's reset reason when no response came.
    pub reason: Option<&'static str>,
}

/// Envoy's `mutateTracingRequestHeader`: the sampling decision, packed into the request
/// id. A request without a UUID-shaped id is not traceable.
pub fn sampling_decision(t: &Tracing, h: &mut HeaderMap) -> Reason {
    let Some(id) = h.get(&X_REQUEST_ID) else {
        return Reason::NotTraceable;
    };
    let bytes = id.as_bytes();
    let Some(value) = bytes
        .get(..8)
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| u64::from_str_radix(p, 16).ok())
    else {
        return Reason::NotTraceable;
    };
    let result = value % 10_000;
    let mut reason = Reason::of_request_id(bytes);
    let before = reason;
    if reason == Reason::NotTraceable {
        if h.contains_key(&X_CLIENT_TRACE_ID)
            && rand::random::<u64>() % 10_000 < u64::from(t.client_sampling)
        {
            reason = Reason::ClientForced;
        } else if result < u64::from(t.random_sampling) {
            reason = Reason::Sampling;
        }
    }
    if reason.traced() && result >= u64::from(t.overall_sampling) {
        reason = Reason::NotTraceable;
    }
    if reason != before && t.pack_trace_reason && bytes.len() == 36 {
        let mut packed = [0u8; 36];
        packed.copy_from_slice(bytes);
        packed[14] = reason.digit();
        if let Ok(v) = HeaderValue::from_bytes(&packed) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
    }
    reason
}

fn new_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn header_str(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// Starts the connection manager's span for a request whose route (if any) is known.
/// `None`: the request's B3 context is malformed (no span, nothing propagated).
pub fn start(
    t: &Arc<Tracing>,
    h: &mut HeaderMap,
    authority: &HeaderValue,
    decorator: Option<&crate::proxy::route::table::Decorator>,
    path: &str,
    start: SystemTime,
) -> Option<Box<ActiveSpan>> {
    let reason = sampling_decision(t, h);
    let received = b3::sampled(h).ok()?;
    let sampled = received.unwrap_or(reason.traced());
    let extracted = b3::extract(h, sampled).ok()?;
    // The connection manager's span is a SERVER span (sharing the received id under
    // `shared_span_context`) unless it is an egress span that also stands for the
    // upstream request.
    let server = !t.egress || t.spawn_upstream_span;
    let (context, single) = match extracted {
        Some(e) => {
            let parent = e.context;
            let context = if server && t.zipkin.shared_span_context {
                parent
            } else {
                SpanContext {
                    id: new_id(),
                    parent_id: parent.id,
                    ..parent
                }
            };
            (context, e.single)
        }
        None => {
            let id = new_id();
            (
                SpanContext {
                    trace_id_high: if t.zipkin.trace_id_128bit {
                        new_id()
                    } else {
                        0
                    },
                    trace_id: id,
                    id,
                    parent_id: 0,
                    sampled,
                },
                false,
            )
        }
    };
    let name: Arc<str> = match decorator {
        Some(d) => d.operation.clone(),
        None => Arc::from(authority.to_str().unwrap_or("")),
    };
    if let Some(d) = decorator
        && t.egress
        && d.propagate
    {
        h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), d.header.clone());
    }
    let facts = context.sampled.then(|| {
        let scheme = h
            .get(&crate::proxy::http::request::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http");
        let mut url = format!("{scheme}://{}{path}", authority.to_str().unwrap_or(""));
        if url.len() > t.max_path_tag_length {
            let mut end = t.max_path_tag_length;
            while !url.is_char_boundary(end) {
                end -= 1;
            }
            url.truncate(end);
        }
        let mut tags = Vec::with_capacity(t.custom_tags.len());
        for c in &t.custom_tags {
            let value = match &c.value {
                TagValue::Literal(v) => Some(v.to_string()),
                TagValue::RequestHeader { name, default } => h
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| default.as_deref().map(str::to_string)),
                TagValue::Metadata { .. } => None,
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                tags.push((c.tag.clone(), v));
            }
        }
        Box::new(Facts {
            url,
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            downstream_cluster: h.get(&X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER).cloned(),
            client_trace_id: h.get(&X_CLIENT_TRACE_ID).cloned(),
            request_id: h.get(&X_REQUEST_ID).cloned(),
            tags,
            metadata_tags_read: false,
        })
    });
    Some(Box::new(ActiveSpan {
        tracing: t.clone(),
        context,
        single,
        name,
        start,
        facts,
    }))
}

impl ActiveSpan {
    /// Reads the metadata custom tags once the request's filters have run.
    pub fn read_metadata(&mut self, metadata: &DynamicMetadata) {
        let Some(facts) = self.facts.as_mut() else {
            return;
        };
        if facts.metadata_tags_read {
            return;
        }
        facts.metadata_tags_read = true;
        for c in &self.tracing.custom_tags {
            if let TagValue::Metadata {
                filter,
                path,
                default,
            } = &c.value
            {
                let value = metadata
                    .lookup(filter, path)
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .or_else(|| default.as_deref().map(str::to_string));
                if let Some(v) = value {
                    facts.tags.push((c.tag.clone(), v));
                }
            }
        }
    }

    /// Writes the context the upstream request carries: this span's, or with
    /// `spawn_upstream_span` a new upstream span's (returned, to be finished with the
    /// attempt).
    pub fn inject(&self, h: &mut HeaderMap) -> Option<UpstreamSpan> {
        let upstream = self.tracing.spawn_upstream_span.then(|| UpstreamSpan {
            context: SpanContext {
                id: new_id(),
                parent_id: self.context.id,
                ..self.context
            },
            start: SystemTime::now(),
        });
        if self.tracing.propagate {
            let context = upstream.as_ref().map_or(&self.context, |u| &u.context);
            b3::inject(h, context, self.single);
        }
        upstream
    }

    /// Finishes an upstream attempt's span.
    pub fn finish_upstream(
        &self,
        span: UpstreamSpan,
        o: &UpstreamOutcome<'_>,
        stats: &Stats,
        worker: usize,
    ) {
        let Some(facts) = self.facts.as_ref() else {
            return;
        };
        let name = format!("router {} egress", o.observability_name);
        let status_s = o.status.to_string();
        let flags_s = o.flags.to_string_lossy();
        let host_s = o.host.map(|h| h.to_string());
        let mut tags: Vec<(&str, &str)> = Vec::with_capacity(12 + facts.tags.len());
        tags.push(("component", "proxy"));
        tags.push(("http.protocol", o.version.map_or("-", protocol)));
        tags.push(("http.status_code", &status_s));
        tags.push(("response_flags", &flags_s));
        tags.push(("upstream_cluster", o.observability_name));
        tags.push(("upstream_cluster.name", o.cluster));
        if let Some(h) = &host_s {
            tags.push(("peer.address", h));
            tags.push(("upstream_address", h));
        }
        if o.status == 0 || o.status >= 500 {
            tags.push(("error", "true"));
        }
        if let Some(r) = o.reason {
            tags.push(("error.reason", r));
        }
        for (k, v) in &facts.tags {
            tags.push((k, v));
        }
        self.report(
            &span.context,
            &name,
            false,
            span.start,
            &tags,
            stats,
            worker,
        );
    }

    /// Finishes the connection manager's span with what the request's log says.
    pub fn finish(&self, log: &RequestLog, stats: &Stats, worker: usize) {
        let Some(facts) = self.facts.as_ref() else {
            return;
        };
        let local = local_info();
        let status_s = log.status.to_string();
        let flags_s = log.flags.to_string_lossy();
        let request_size = log.bytes_received.to_string();
        let response_size = log.bytes_sent.to_string();
        let peer = log.downstream_remote.ip().to_string();
        let mut tags: Vec<(&str, &str)> = Vec::with_capacity(20 + facts.tags.len());
        tags.push(("component", "proxy"));
        tags.push(("node_id", &local.node_id));
        if !local.zone.is_empty() {
            tags.push(("zone", &local.zone));
        }
        tags.push(("guid:x-request-id", header_str(&facts.request_id)));
        tags.push(("http.url", &facts.url));
        tags.push(("http.method", log.method.as_str()));
        tags.push(("downstream_cluster", header_str(&facts.downstream_cluster)));
        tags.push(("user_agent", header_str(&facts.user_agent)));
        tags.push(("http.protocol", protocol(log.version)));
        tags.push(("peer.address", &peer));
        if facts.client_trace_id.is_some() {
            tags.push(("guid:x-client-trace-id", header_str(&facts.client_trace_id)));
        }
        tags.push(("request_size", &request_size));
        tags.push(("response_size", &response_size));
        tags.push(("response_flags", &flags_s));
        tags.push(("http.status_code", &status_s));
        if log.status == 0 || log.status >= 500 {
            tags.push(("error", "true"));
        }
        if let Some(c) = &log.cluster {
            tags.push((
                "upstream_cluster",
                log.cluster_observability_name.as_deref().unwrap_or(c),
            ));
            tags.push(("upstream_cluster.name", c));
        }
        for (k, v) in &facts.tags {
            tags.push((k, v));
        }
        let server = !self.tracing.egress || self.tracing.spawn_upstream_span;
        self.report(
            &self.context,
            &self.name,
            server,
            self.start,
            &tags,
            stats,
            worker,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        context: &SpanContext,
        name: &str,
        server: bool,
        start: SystemTime,
        tags: &[(&str, &str)],
        stats: &Stats,
        worker: usize,
    ) {
        let local = local_info();
        let timestamp_us = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let duration_us = start.elapsed().map_or(0, |d| d.as_micros() as u64);
        let span = zipkin::FinishedSpan {
            context,
            name,
            server,
            timestamp_us,
            duration_us,
            tags,
            service_name: &local.cluster,
            ipv4: &local.address,
        };
        self.tracing.zipkin.report(span.to_json(), stats, worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(random: u32, overall: u32) -> Tracing {
        Tracing {
            client_sampling: 10_000,
            random_sampling: random,
            overall_sampling: overall,
            custom_tags: Vec::new(),
            max_path_tag_length: 256,
            egress: true,
            spawn_upstream_span: false,
            propagate: true,
            pack_trace_reason: true,
            zipkin: Arc::new(zipkin::Collector::new(
                "zipkin",
                None,
                http::uri::PathAndQuery::from_static("/api/v2/spans"),
                HeaderValue::from_static("zipkin"),
                true,
                false,
            )),
        }
    }

    fn with_id(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(id).unwrap());
        h
    }

    #[test]
    fn the_request_id_decides_random_sampling_and_carries_the_reason() {
        // 0x00001388 = 5000: sampled under 50.01%, not under 50%.
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        assert_eq!(
            sampling_decision(&tracing(5001, 10_000), &mut h),
            Reason::Sampling
        );
        assert_eq!(h[&X_REQUEST_ID], "00001388-aaaa-9aaa-8aaa-aaaaaaaaaaaa");
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        assert_eq!(
            sampling_decision(&tracing(5000, 10_000), &mut h),
            Reason::NotTraceable
        );
        assert_eq!(h[&X_REQUEST_ID], "00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        // Overall sampling takes a sampled request back out.
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        assert_eq!(
            sampling_decision(&tracing(10_000, 100), &mut h),
            Reason::NotTraceable
        );
        // x-client-trace-id forces the trace.
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        h.insert(X_CLIENT_TRACE_ID.clone(), HeaderValue::from_static("abc"));
        assert_eq!(
            sampling_decision(&tracing(0, 10_000), &mut h),
            Reason::ClientForced
        );
        assert_eq!(h[&X_REQUEST_ID], "00001388-aaaa-baaa-8aaa-aaaaaaaaaaaa");
        // A reason already in the id stands.
        let mut h = with_id("00001388-aaaa-aaaa-8aaa-aaaaaaaaaaaa");
        assert_eq!(
            sampling_decision(&tracing(0, 10_000), &mut h),
            Reason::ServiceForced
        );
        // No usable id: not traceable.
        let mut h = with_id("zz");
        assert_eq!(
            sampling_decision(&tracing(10_000, 10_000), &mut h),
            Reason::NotTraceable
        );
    }

    #[test]
    fn a_root_span_takes_its_id_as_the_low_trace_id() {
        let t = Arc::new(tracing(10_000, 10_000));
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        let s = start(
            &t,
            &mut h,
            &HeaderValue::from_static("a.example"),
            None,
            "/x",
            SystemTime::now(),
        )
        .unwrap();
        assert!(s.context.sampled);
        assert_eq!(s.context.id, s.context.trace_id);
        assert_ne!(s.context.trace_id_high, 0);
        assert_eq!(&*s.name, "a.example");
        let mut up = HeaderMap::new();
        assert!(s.inject(&mut up).is_none());
        assert_eq!(up["x-b3-sampled"], "1");
        assert!(!up.contains_key("x-b3-parentspanid"));
    }

    #[test]
    fn a_received_sampling_state_wins_and_a_malformed_context_makes_no_span() {
        let t = Arc::new(tracing(10_000, 10_000));
        let mut h = with_id("00001388-aaaa-4aaa-8aaa-aaaaaaaaaaaa");
        h.insert("x-b3-traceid", HeaderValue::from_static("000000000000000c"));
        h.insert("x-b3-spanid", HeaderValue::from_static("000000000000000d"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let a = HeaderValue::from_static("a");
        let s = start(&t, &mut h, &a, None, "/", SystemTime::now()).unwrap();
        assert!(!s.context.sampled);
        assert_eq!(s.context.trace_id, 12);
        assert_eq!(s.context.parent_id, 13);
        h.insert("x-b3-spanid", HeaderValue::from_static("nope"));
        assert!(start(&t, &mut h, &a, None, "/", SystemTime::now()).is_none());
    }
}
