//! Counters and Istio's standard metrics.
//!
//! Listener/HTTP counters are atomics. Istio's request metrics are kept per worker in a
//! map keyed by (cluster, status, flags, protocol), merged only when scraped, so the hot
//! path takes an uncontended lock and allocates nothing for a known key.
use crate::proxy::access_log::RequestLog;
use rustc_hash::FxHashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Istio's duration buckets (milliseconds).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
pub const SIZE_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    cluster: Option<Arc<str>>,
    code: u16,
    flags: u32,
    grpc: bool,
}

#[derive(Debug, Clone)]
struct Histogram<const N: usize> {
    buckets: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: [0; N],
            count: 0,
            sum: 0.0,
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&mut self, bounds: &[f64; N], v: f64) {
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn merge(&mut self, o: &Self) {
        for i in 0..N {
            self.buckets[i] += o.buckets[i];
        }
        self.count += o.count;
        self.sum += o.sum;
    }
}

#[derive(Debug, Clone, Default)]
struct Cell {
    requests: u64,
    duration: Histogram<19>,
    request_bytes: Histogram<9>,
    response_bytes: Histogram<9>,
}

/// Who this gateway is, for the `source_*` labels.
#[derive(Debug, Clone)]
pub struct SourceLabels {
    pub workload: String,
    pub namespace: String,
    pub app: String,
}

/// All counters of the data plane.
pub struct Stats {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicU64,
    pub downstream_rq_total: AtomicU64,
    pub downstream_rq_1xx: AtomicU64,
    pub downstream_rq_2xx: AtomicU64,
    pub downstream_rq_3xx: AtomicU64,
    pub downstream_rq_4xx: AtomicU64,
    pub downstream_rq_5xx: AtomicU64,
    pub no_route: AtomicU64,
    /// HTTP/1 request heads rejected by the codec checks (too large, too many headers).
    pub downstream_cx_protocol_error: AtomicU64,
    /// Streams ended by the stream idle timeout (`stream_idle_timeout`, route `idle_timeout`).
    pub downstream_rq_idle_timeout: AtomicU64,
    /// Connections that started draining (listener removed, gateway draining).
    pub downstream_cx_drain_close: AtomicU64,
    pub config_updates: AtomicU64,
    pub config_rejections: AtomicU64,
    /// Connections no filter chain (nor a default chain) matched: reset.
    pub no_filter_chain_match: AtomicU64,
    /// Connections closed because listener filters (the ClientHello read) took too long.
    pub downstream_pre_cx_timeout: AtomicU64,
    pub tls_inspector_tls_found: AtomicU64,
    /// The PROXY protocol listener filter (Envoy's `proxy_proto.*`).
    pub proxy_proto_v1_found: AtomicU64,
    pub proxy_proto_v2_found: AtomicU64,
    pub proxy_proto_v1_error: AtomicU64,
    pub proxy_proto_v2_error: AtomicU64,
    pub proxy_proto_v1_disallowed: AtomicU64,
    pub proxy_proto_v2_disallowed: AtomicU64,
    pub proxy_proto_not_found_allowed: AtomicU64,
    pub proxy_proto_not_found_disallowed: AtomicU64,
    pub tls_inspector_tls_not_found: AtomicU64,
    pub tls_inspector_client_hello_too_large: AtomicU64,
    /// Bytes that started like TLS but were not a valid ClientHello.
    pub tls_inspector_client_hello_malformed: AtomicU64,
    /// Connections closed (or failed) before their ClientHello was complete.
    pub tls_inspector_read_error: AtomicU64,
    /// TLS-ALPN-01 validation handshakes answered for ACME.
    pub acme_tls_alpn_validations: AtomicU64,
    /// HTTP-01 challenge requests answered for ACME.
    pub acme_http01_answers: AtomicU64,
    /// Connections handed to a `tcp_proxy` (all of them; Envoy counts per stat prefix).
    pub tcp_downstream_cx_total: AtomicU64,
    /// `tcp_proxy` connections whose cluster does not exist.
    pub tcp_downstream_cx_no_route: AtomicU64,
    /// `tcp_proxy` connections closed without an upstream (none healthy, overflow, connect failure).
    pub tcp_upstream_connect_fail: AtomicU64,
    pub tcp_idle_timeout: AtomicU64,
    pub tcp_max_downstream_connection_duration: AtomicU64,
    pub tcp_downstream_rx_bytes: AtomicU64,
    pub tcp_downstream_tx_bytes: AtomicU64,
    /// HTTP RBAC filters: requests allowed and denied by enforced rules, and what the
    /// shadow rules would have done (all RBAC filters together).
    pub rbac_allowed: AtomicU64,
    pub rbac_denied: AtomicU64,
    pub rbac_shadow_allowed: AtomicU64,
    pub rbac_shadow_denied: AtomicU64,
    /// Network RBAC filters, per connection.
    pub tcp_rbac_allowed: AtomicU64,
    pub tcp_rbac_denied: AtomicU64,
    pub tcp_rbac_shadow_allowed: AtomicU64,
    pub tcp_rbac_shadow_denied: AtomicU64,
    per_worker: Box<[Mutex<FxHashMap<Key, Cell>>]>,
    pub source: SourceLabels,
    /// Counters of HTTP filters, by Envoy stat name (e.g.
    /// `PREFIX.http_local_rate_limit.rate_limited`).
    pub filter_counters: FilterCounters,
}

/// Named counters that filters create when they are first used; never removed (as
/// Envoy's stats outlive the config that made them).
#[derive(Debug, Default)]
pub struct FilterCounters(Mutex<std::collections::BTreeMap<String, Arc<AtomicU64>>>);

impl FilterCounters {
    /// The counter `name`, created at zero.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(name) {
            return c.clone();
        }
        let c = Arc::new(AtomicU64::new(0));
        m.insert(name.to_string(), c.clone());
        c
    }

    /// Every counter, by name.
    pub fn values(&self) -> Vec<(String, u64)> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Stats {
    pub fn new(workers: usize, source: SourceLabels) -> Stats {
        Stats {
            downstream_cx_total: AtomicU64::new(0),
            downstream_cx_active: AtomicU64::new(0),
            downstream_rq_total: AtomicU64::new(0),
            downstream_rq_1xx: AtomicU64::new(0),
            downstream_rq_2xx: AtomicU64::new(0),
            downstream_rq_3xx: AtomicU64::new(0),
            downstream_rq_4xx: AtomicU64::new(0),
            downstream_rq_5xx: AtomicU64::new(0),
            no_route: AtomicU64::new(0),
            downstream_cx_protocol_error: AtomicU64::new(0),
            downstream_rq_idle_timeout: AtomicU64::new(0),
            downstream_cx_drain_close: AtomicU64::new(0),
            config_updates: AtomicU64::new(0),
            config_rejections: AtomicU64::new(0),
            no_filter_chain_match: AtomicU64::new(0),
            downstream_pre_cx_timeout: AtomicU64::new(0),
            tls_inspector_tls_found: AtomicU64::new(0),
            proxy_proto_v1_found: AtomicU64::new(0),
            proxy_proto_v2_found: AtomicU64::new(0),
            proxy_proto_v1_error: AtomicU64::new(0),
            proxy_proto_v2_error: AtomicU64::new(0),
            proxy_proto_v1_disallowed: AtomicU64::new(0),
            proxy_proto_v2_disallowed: AtomicU64::new(0),
            proxy_proto_not_found_allowed: AtomicU64::new(0),
            proxy_proto_not_found_disallowed: AtomicU64::new(0),
            tls_inspector_tls_not_found: AtomicU64::new(0),
            tls_inspector_client_hello_too_large: AtomicU64::new(0),
            tls_inspector_client_hello_malformed: AtomicU64::new(0),
            tls_inspector_read_error: AtomicU64::new(0),
            acme_tls_alpn_validations: AtomicU64::new(0),
            acme_http01_answers: AtomicU64::new(0),
            tcp_downstream_cx_total: AtomicU64::new(0),
            tcp_downstream_cx_no_route: AtomicU64::new(0),
            tcp_upstream_connect_fail: AtomicU64::new(0),
            tcp_idle_timeout: AtomicU64::new(0),
            tcp_max_downstream_connection_duration: AtomicU64::new(0),
            tcp_downstream_rx_bytes: AtomicU64::new(0),
            tcp_downstream_tx_bytes: AtomicU64::new(0),
            rbac_allowed: AtomicU64::new(0),
            rbac_denied: AtomicU64::new(0),
            rbac_shadow_allowed: AtomicU64::new(0),
            rbac_shadow_denied: AtomicU64::new(0),
            tcp_rbac_allowed: AtomicU64::new(0),
            tcp_rbac_denied: AtomicU64::new(0),
            tcp_rbac_shadow_allowed: AtomicU64::new(0),
            tcp_rbac_shadow_denied: AtomicU64::new(0),
            per_worker: (0..workers.max(1))
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            source,
            filter_counters: FilterCounters::default(),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, r: &RequestLog, worker: usize) {
        self.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
        let c = match r.status {
            100..=199 => &self.downstream_rq_1xx,
            200..=299 => &self.downstream_rq_2xx,
            300..=399 => &self.downstream_rq_3xx,
            400..=499 => &self.downstream_rq_4xx,
            _ => &self.downstream_rq_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if r.flags.has(crate::proxy::http::local_reply::Flags::NR) {
            self.no_route.fetch_add(1, Ordering::Relaxed);
        }
        let key = Key {
            cluster: r.cluster.clone(),
            code: r.status,
            flags: r.flags.0,
            grpc: r.grpc,
        };
        let ms = r.start.elapsed().as_secs_f64() * 1000.0;
        let mut map = self.per_worker[worker % self.per_worker.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let cell = map.entry(key).or_default();
        cell.requests += 1;
        cell.duration.observe(&DURATION_BUCKETS, ms);
        cell.request_bytes
            .observe(&SIZE_BUCKETS, r.bytes_received as f64);
        cell.response_bytes
            .observe(&SIZE_BUCKETS, r.bytes_sent as f64);
    }

    fn merged(&self) -> Vec<(Key, Cell)> {
        let mut all: FxHashMap<Key, Cell> = FxHashMap::default();
        for m in self.per_worker.iter() {
            let m = m.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in m.iter() {
                let e = all.entry(k.clone()).or_default();
                e.requests += v.requests;
                e.duration.merge(&v.duration);
                e.request_bytes.merge(&v.request_bytes);
                e.response_bytes.merge(&v.response_bytes);
            }
        }
        let mut v: Vec<(Key, Cell)> = all.into_iter().collect();
        v.sort_by(|a, b| {
            (a.0.cluster.as_deref(), a.0.code, a.0.flags).cmp(&(
                b.0.cluster.as_deref(),
                b.0.code,
                b.0.flags,
            ))
        });
        v
    }

    /// Istio's metrics in Prometheus text format.
    pub fn prometheus_istio(&self, out: &mut String) {
        let cells = self.merged();
        let labels: Vec<String> = cells.iter().map(|(k, _)| self.labels(k)).collect();
        out.push_str("# TYPE istio_requests_total counter\n");
        for ((_, c), l) in cells.iter().zip(&labels) {
            let _ = writeln!(out, "istio_requests_total{{{l}}} {}", c.requests);
        }
        histogram(
            out,
            "istio_request_duration_milliseconds",
            &cells,
            &labels,
            &DURATION_BUCKETS,
            |c| &c.duration,
        );
        histogram(
            out,
            "istio_request_bytes",
            &cells,
            &labels,
            &SIZE_BUCKETS,
            |c| &c.request_bytes,
        );
        histogram(
            out,
            "istio_response_bytes",
            &cells,
            &labels,
            &SIZE_BUCKETS,
            |c| &c.response_bytes,
        );
    }

    fn labels(&self, k: &Key) -> String {
        let (service, name, namespace) = match k.cluster.as_deref() {
            None => (
                "unknown".to_string(),
                "unknown".to_string(),
                "unknown".to_string(),
            ),
            Some(c) => destination_service(c),
        };
        let mut flags = String::new();
        crate::proxy::http::local_reply::Flags(k.flags).write(&mut flags);
        format!(
            "reporter=\"source\",source_workload=\"{sw}\",source_workload_namespace=\"{sn}\",source_principal=\"unknown\",source_app=\"{sa}\",source_version=\"unknown\",source_cluster=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"{service}\",destination_service_name=\"{name}\",destination_service_namespace=\"{namespace}\",destination_cluster=\"unknown\",request_protocol=\"{proto}\",response_code=\"{code}\",grpc_response_status=\"\",response_flags=\"{flags}\",connection_security_policy=\"unknown\"",
            sw = self.source.workload,
            sn = self.source.namespace,
            sa = self.source.app,
            proto = if k.grpc { "grpc" } else { "http" },
            code = k.code,
        )
    }

    /// Envoy-style counters for `/stats` (text `name: value`).
    pub fn envoy_counters(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = self.core_counters(&g);
        out.extend(self.filter_counters.values());
        out
    }

    fn core_counters(&self, g: &dyn Fn(&AtomicU64) -> u64) -> Vec<(String, u64)> {
        vec![
            (
                "http.downstream_cx_total".into(),
                g(&self.downstream_cx_total),
            ),
            (
                "http.downstream_cx_active".into(),
                g(&self.downstream_cx_active),
            ),
            (
                "http.downstream_rq_total".into(),
                g(&self.downstream_rq_total),
            ),
            ("http.downstream_rq_1xx".into(), g(&self.downstream_rq_1xx)),
            ("http.downstream_rq_2xx".into(), g(&self.downstream_rq_2xx)),
            ("http.downstream_rq_3xx".into(), g(&self.downstream_rq_3xx)),
            ("http.downstream_rq_4xx".into(), g(&self.downstream_rq_4xx)),
            ("http.downstream_rq_5xx".into(), g(&self.downstream_rq_5xx)),
            ("http.no_route".into(), g(&self.no_route)),
            (
                "http.downstream_cx_protocol_error".into(),
                g(&self.downstream_cx_protocol_error),
            ),
            (
                "http.downstream_rq_idle_timeout".into(),
                g(&self.downstream_rq_idle_timeout),
            ),
            (
                "http.downstream_cx_drain_close".into(),
                g(&self.downstream_cx_drain_close),
            ),
            ("meshgate.config_updates".into(), g(&self.config_updates)),
            (
                "meshgate.config_rejections".into(),
                g(&self.config_rejections),
            ),
            (
                "listener.no_filter_chain_match".into(),
                g(&self.no_filter_chain_match),
            ),
            (
                "listener.downstream_pre_cx_timeout".into(),
                g(&self.downstream_pre_cx_timeout),
            ),
            (
                "proxy_proto.versions.v1.found".into(),
                g(&self.proxy_proto_v1_found),
            ),
            (
                "proxy_proto.versions.v2.found".into(),
                g(&self.proxy_proto_v2_found),
            ),
            (
                "proxy_proto.versions.v1.error".into(),
                g(&self.proxy_proto_v1_error),
            ),
            (
                "proxy_proto.versions.v2.error".into(),
                g(&self.proxy_proto_v2_error),
            ),
            (
                "proxy_proto.versions.v1.disallowed".into(),
                g(&self.proxy_proto_v1_disallowed),
            ),
            (
                "proxy_proto.versions.v2.disallowed".into(),
                g(&self.proxy_proto_v2_disallowed),
            ),
            (
                "proxy_proto.not_found_allowed".into(),
                g(&self.proxy_proto_not_found_allowed),
            ),
            (
                "proxy_proto.not_found_disallowed".into(),
                g(&self.proxy_proto_not_found_disallowed),
            ),
            (
                "tls_inspector.tls_found".into(),
                g(&self.tls_inspector_tls_found),
            ),
            (
                "tls_inspector.tls_not_found".into(),
                g(&self.tls_inspector_tls_not_found),
            ),
            (
                "tls_inspector.client_hello_too_large".into(),
                g(&self.tls_inspector_client_hello_too_large),
            ),
            (
                "tls_inspector.client_hello_malformed".into(),
                g(&self.tls_inspector_client_hello_malformed),
            ),
            (
                "tls_inspector.read_error".into(),
                g(&self.tls_inspector_read_error),
            ),
            (
                "acme.tls_alpn_validations".into(),
                g(&self.acme_tls_alpn_validations),
            ),
            ("acme.http01_answers".into(), g(&self.acme_http01_answers)),
            (
                "tcp.downstream_cx_total".into(),
                g(&self.tcp_downstream_cx_total),
            ),
            (
                "tcp.downstream_cx_no_route".into(),
                g(&self.tcp_downstream_cx_no_route),
            ),
            (
                "tcp.upstream_connect_fail".into(),
                g(&self.tcp_upstream_connect_fail),
            ),
            ("tcp.idle_timeout".into(), g(&self.tcp_idle_timeout)),
            (
                "tcp.max_downstream_connection_duration".into(),
                g(&self.tcp_max_downstream_connection_duration),
            ),
            (
                "tcp.downstream_cx_rx_bytes_total".into(),
                g(&self.tcp_downstream_rx_bytes),
            ),
            (
                "tcp.downstream_cx_tx_bytes_total".into(),
                g(&self.tcp_downstream_tx_bytes),
            ),
            ("rbac.allowed".into(), g(&self.rbac_allowed)),
            ("rbac.denied".into(), g(&self.rbac_denied)),
            ("rbac.shadow_allowed".into(), g(&self.rbac_shadow_allowed)),
            ("rbac.shadow_denied".into(), g(&self.rbac_shadow_denied)),
            ("tcp.rbac.allowed".into(), g(&self.tcp_rbac_allowed)),
            ("tcp.rbac.denied".into(), g(&self.tcp_rbac_denied)),
            (
                "tcp.rbac.shadow_allowed".into(),
                g(&self.tcp_rbac_shadow_allowed),
            ),
            (
                "tcp.rbac.shadow_denied".into(),
                g(&self.tcp_rbac_shadow_denied),
            ),
        ]
    }
}

fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    cells: &[(Key, Cell)],
    labels: &[String],
    bounds: &[f64; N],
    get: impl Fn(&Cell) -> &Histogram<N>,
) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    for ((_, c), l) in cells.iter().zip(labels) {
        let h = get(c);
        for (i, b) in bounds.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {}", h.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
    }
}

/// (destination_service, _name, _namespace) from a cluster name in Istio's form
/// `outbound|PORT|SUBSET|HOST`.
pub fn destination_service(cluster: &str) -> (String, String, String) {
    let host = cluster.rsplit('|').next().unwrap_or(cluster);
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or(host).to_string();
    let namespace = if host.contains(".svc.") {
        parts.next().unwrap_or("unknown").to_string()
    } else {
        "unknown".to_string()
    };
    (host.to_string(), name, namespace)
}

/// The gateway's workload certificate on `/stats`: its expiry (Unix seconds), the
/// certificates obtained, the rotations among them, and the failed calls to the CA.
pub fn identity_stats(s: &crate::identity::IdentityStatus) -> Vec<(String, u64)> {
    vec![
        (
            "workload_cert.expiry_timestamp_seconds".into(),
            s.expiry_unix(),
        ),
        (
            "workload_cert.issued".into(),
            s.issued.load(Ordering::Relaxed),
        ),
        ("workload_cert.rotations".into(), s.rotations()),
        (
            "workload_cert.renewal_failures".into(),
            s.failures.load(Ordering::Relaxed),
        ),
    ]
}

/// The same for Prometheus.
pub fn prometheus_identity(s: &crate::identity::IdentityStatus, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP meshgate_workload_cert_expiry_seconds When the gateway's workload certificate expires (Unix time).\n\
         # TYPE meshgate_workload_cert_expiry_seconds gauge\n\
         meshgate_workload_cert_expiry_seconds {}\n\
         # TYPE meshgate_workload_cert_rotations_total counter\n\
         meshgate_workload_cert_rotations_total {}\n\
         # TYPE meshgate_workload_cert_renewal_failures_total counter\n\
         meshgate_workload_cert_renewal_failures_total {}",
        s.expiry_unix(),
        s.rotations(),
        s.failures.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_labels_from_istio_cluster_names() {
        assert_eq!(
            destination_service("outbound|80||httpbin.default.svc.cluster.local"),
            (
                "httpbin.default.svc.cluster.local".into(),
                "httpbin".into(),
                "default".into()
            )
        );
        assert_eq!(
            destination_service("outbound|443||api.example.com").2,
            "unknown"
        );
    }
}
