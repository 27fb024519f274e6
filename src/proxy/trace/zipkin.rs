//! The Zipkin collector of `envoy.tracers.zipkin`: finished spans in Zipkin's v2 JSON,
//! buffered per worker and POSTed to the collector cluster through the data plane's own
//! upstream (the cluster's load balancer and the worker's connection pool), as Envoy's
//! reporter does: a report when `min_flush_spans` (5) spans are buffered, or when the
//! flush interval (5 s) passes with spans waiting.
//!
//! A request never waits for the collector. Each worker has one report in flight at
//! most and a bounded buffer; spans that find the buffer full are dropped and counted
//! (`tracing.zipkin.spans_dropped`), so a slow or absent collector costs memory for at
//! most [`MAX_BUFFERED_SPANS`] spans per worker.
use crate::proxy::http::body::RequestBody;
use crate::proxy::stats::Stats;
use crate::proxy::upstream::Cluster;
use crate::proxy::upstream::cluster::UpstreamProtocol;
use crate::proxy::upstream::lb::LbContext;
use crate::proxy::upstream::pool::{self, Sender};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Envoy's `tracing.zipkin.min_flush_spans` default.
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `tracing.zipkin.flush_interval_ms` default.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's `tracing.zipkin.request_timeout` default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans a worker holds while its report is in flight; more are dropped.
pub const MAX_BUFFERED_SPANS: usize = 1000;

/// Envoy's `tracing.zipkin.*` counters, and the spans dropped on a full buffer.
#[derive(Debug)]
struct Counters {
    spans_sent: Arc<AtomicU64>,
    spans_dropped: Arc<AtomicU64>,
    timer_flushed: Arc<AtomicU64>,
    reports_sent: Arc<AtomicU64>,
    reports_dropped: Arc<AtomicU64>,
    reports_failed: Arc<AtomicU64>,
    reports_skipped_no_cluster: Arc<AtomicU64>,
}

impl Counters {
    fn new(stats: &Stats) -> Counters {
        let c = |n: &str| {
            stats
                .filter_counters
                .counter(&format!("tracing.zipkin.{n}"))
        };
        Counters {
            spans_sent: c("spans_sent"),
            spans_dropped: c("spans_dropped"),
            timer_flushed: c("timer_flushed"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
        }
    }
}

/// One worker's spans waiting for a report.
#[derive(Debug, Default)]
struct Buffer {
    /// Encoded spans, comma-separated.
    json: String,
    count: usize,
    timer_armed: bool,
    in_flight: bool,
}

/// A compiled `ZipkinConfig`: where spans go and how ids are made.
#[derive(Debug)]
pub struct Collector {
    pub cluster_name: Box<str>,
    /// `None` when the snapshot has no such cluster: reports are skipped and counted.
    pub cluster: Option<Arc<Cluster>>,
    pub endpoint: http::uri::PathAndQuery,
    /// The `host` of reports (`collector_hostname`, else the cluster's name).
    pub hostname: HeaderValue,
    pub trace_id_128bit: bool,
    pub shared_span_context: bool,
    buffers: OnceLock<Box<[Mutex<Buffer>]>>,
    counters: OnceLock<Counters>,
}

impl Collector {
    pub fn new(
        cluster_name: &str,
        cluster: Option<Arc<Cluster>>,
        endpoint: http::uri::PathAndQuery,
        hostname: HeaderValue,
        trace_id_128bit: bool,
        shared_span_context: bool,
    ) -> Collector {
        Collector {
            cluster_name: cluster_name.into(),
            cluster,
            endpoint,
            hostname,
            trace_id_128bit,
            shared_span_context,
            buffers: OnceLock::new(),
            counters: OnceLock::new(),
        }
    }

    fn buffer(&self, worker: usize) -> &Mutex<Buffer> {
        let buffers = self.buffers.get_or_init(|| {
            (0..crate::proxy::runtime::worker_count().max(1))
                .map(|_| Mutex::new(Buffer::default()))
                .collect()
        });
        &buffers[worker.min(buffers.len() - 1)]
    }

    /// Takes one finished span (its JSON object) on `worker`: buffered, reported when
    /// enough are waiting, or dropped and counted when the buffer is full.
    pub fn report(self: &Arc<Self>, span: String, stats: &Stats, worker: usize) {
        let counters = self.counters.get_or_init(|| Counters::new(stats));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut b = self
            .buffer(worker)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if b.count >= MAX_BUFFERED_SPANS {
            counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if b.count > 0 {
            b.json.push(',');
        }
        b.json.push_str(&span);
        b.count += 1;
        if b.count >= MIN_FLUSH_SPANS && !b.in_flight {
            let batch = take(&mut b);
            drop(b);
            runtime.spawn(self.clone().send(batch, worker));
        } else if !b.timer_armed {
            b.timer_armed = true;
            drop(b);
            runtime.spawn(self.clone().flush_timer(worker));
        }
    }

    /// Reports what is waiting when the flush interval has passed.
    async fn flush_timer(self: Arc<Self>, worker: usize) {
        loop {
            tokio::time::sleep(FLUSH_INTERVAL).await;
            let batch = {
                let mut b = self
                    .buffer(worker)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if b.count == 0 {
                    b.timer_armed = false;
                    return;
                }
                // With a report in flight, that report sends what it finds when it
                // ends; look again after another interval.
                if b.in_flight {
                    None
                } else {
                    b.timer_armed = false;
                    Some(take(&mut b))
                }
            };
            if let Some(batch) = batch {
                if let Some(c) = self.counters.get() {
                    c.timer_flushed.fetch_add(1, Ordering::Relaxed);
                }
                self.send(batch, worker).await;
                return;
            }
        }
    }

    /// Sends one report, then any batch that filled up meanwhile.
    async fn send(self: Arc<Self>, mut batch: (String, usize), worker: usize) {
        loop {
            self.post(batch.0, batch.1, worker).await;
            let next = {
                let mut b = self
                    .buffer(worker)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if b.count >= MIN_FLUSH_SPANS {
                    Some(take(&mut b))
                } else {
                    b.in_flight = false;
                    None
                }
            };
            match next {
                Some(n) => batch = n,
                None => return,
            }
        }
    }

    async fn post(&self, json: String, count: usize, worker: usize) {
        let Some(counters) = self.counters.get() else {
            return;
        };
        counters
            .spans_sent
            .fetch_add(count as u64, Ordering::Relaxed);
        let Some(cluster) = self.cluster.as_ref() else {
            counters
                .reports_skipped_no_cluster
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut body = String::with_capacity(json.len() + 2);
        body.push('[');
        body.push_str(&json);
        body.push(']');
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.call(cluster, Bytes::from(body), worker),
        )
        .await;
        match outcome {
            Ok(Some(202)) => counters.reports_sent.fetch_add(1, Ordering::Relaxed),
            Ok(Some(_)) => counters.reports_dropped.fetch_add(1, Ordering::Relaxed),
            Ok(None) | Err(_) => counters.reports_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// One POST through the cluster: the answer's status, `None` on no host or a
    /// connection failure.
    async fn call(&self, cluster: &Arc<Cluster>, body: Bytes, worker: usize) -> Option<u16> {
        let host = cluster.choose_host(LbContext::default())?;
        let h2 = cluster.protocol == UpstreamProtocol::Http2;
        let len = body.len();
        let mut req = Request::new(RequestBody::Full(Some(body)));
        *req.method_mut() = Method::POST;
        if h2 {
            *req.version_mut() = http::Version::HTTP_2;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = self.hostname.to_str().ok().and_then(|a| a.parse().ok());
            parts.path_and_query = Some(self.endpoint.clone());
            *req.uri_mut() = Uri::from_parts(parts).ok()?;
        } else {
            req.headers_mut()
                .insert(header::HOST, self.hostname.clone());
            *req.uri_mut() = Uri::from(self.endpoint.clone());
        }
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        cluster
            .state
            .stats
            .upstream_rq_total
            .fetch_add(1, Ordering::Relaxed);
        let mut conn = pool::acquire_for(cluster, &host, worker, h2, Some(&req), None)
            .await
            .ok()?;
        let resp = match &mut conn.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .ok()?;
        let status = resp.status().as_u16();
        cluster.state.stats.count_status(status);
        // The answer's body is read so the connection can carry the next report.
        use http_body_util::BodyExt;
        if resp.into_body().collect().await.is_ok() {
            pool::release(cluster, &host, worker, conn);
        }
        Some(status)
    }
}

fn take(b: &mut Buffer) -> (String, usize) {
    b.in_flight = true;
    let count = std::mem::take(&mut b.count);
    (std::mem::take(&mut b.json), count)
}

/// A finished span, to be written as Zipkin v2 JSON.
#[derive(Debug)]
pub struct FinishedSpan<'a> {
    pub context: &'a super::b3::SpanContext,
    pub name: &'a str,
    /// `CLIENT` or `SERVER`.
    pub server: bool,
    /// Wall-clock start and duration, in microseconds.
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub tags: &'a [(&'a str, &'a str)],
    pub service_name: &'a str,
    pub ipv4: &'a str,
}

impl FinishedSpan<'_> {
    /// The span as Envoy's Zipkin v2 JSON encoder writes it: the kind from the
    /// `cs`/`sr` annotation, the closing `cr`/`ss` annotation kept, the local endpoint
    /// with the node's cluster as service name.
    pub fn to_json(&self) -> String {
        use serde_json::{Map, Value, json};
        let mut span = Map::new();
        span.insert(
            "traceId".into(),
            Value::String(super::b3::hex_trace_id(self.context)),
        );
        span.insert(
            "id".into(),
            Value::String(super::b3::hex_id(self.context.id)),
        );
        if self.context.parent_id != 0 {
            span.insert(
                "parentId".into(),
                Value::String(super::b3::hex_id(self.context.parent_id)),
            );
        }
        span.insert("name".into(), Value::String(self.name.to_string()));
        span.insert(
            "kind".into(),
            Value::String(if self.server { "SERVER" } else { "CLIENT" }.into()),
        );
        span.insert("timestamp".into(), json!(self.timestamp_us));
        span.insert("duration".into(), json!(self.duration_us));
        span.insert(
            "localEndpoint".into(),
            json!({"serviceName": self.service_name, "ipv4": self.ipv4, "port": 0}),
        );
        span.insert(
            "annotations".into(),
            json!([{
                "timestamp": self.timestamp_us + self.duration_us,
                "value": if self.server { "ss" } else { "cr" },
            }]),
        );
        let tags: Map<String, Value> = self
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        if !tags.is_empty() {
            span.insert("tags".into(), Value::Object(tags));
        }
        Value::Object(span).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::trace::b3::SpanContext;

    #[test]
    fn spans_are_zipkin_v2_json() {
        let cx = SpanContext {
            trace_id_high: 1,
            trace_id: 10,
            id: 11,
            parent_id: 12,
            sampled: true,
        };
        let s = FinishedSpan {
            context: &cx,
            name: "up.default:80/*",
            server: false,
            timestamp_us: 1_000,
            duration_us: 20,
            tags: &[("http.status_code", "200"), ("component", "proxy")],
            service_name: "istio-ingressgateway.istio-system",
            ipv4: "10.0.0.1",
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["traceId"], "0000000000000001000000000000000a");
        assert_eq!(v["id"], "000000000000000b");
        assert_eq!(v["parentId"], "000000000000000c");
        assert_eq!(v["kind"], "CLIENT");
        assert_eq!(v["annotations"][0]["value"], "cr");
        assert_eq!(v["annotations"][0]["timestamp"], 1_020);
        assert_eq!(v["tags"]["http.status_code"], "200");
        assert_eq!(
            v["localEndpoint"]["serviceName"],
            "istio-ingressgateway.istio-system"
        );
    }
}
