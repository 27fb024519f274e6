//! The control plane's Prometheus metrics, named after istiod's where the meaning is
//! the same (`pilot_xds_pushes`, `pilot_total_xds_rejects`, `pilot_xds`,
//! `pilot_proxy_convergence_time`) so that existing dashboards apply.
use crate::xds::TypeUrl;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the convergence histogram: istiod's buckets.
pub const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

fn idx(t: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

#[derive(Default)]
struct PerType([AtomicU64; 5]);

impl PerType {
    fn inc(&self, t: TypeUrl) {
        self.0[idx(t)].fetch_add(1, Relaxed);
    }
    fn get(&self, t: TypeUrl) -> u64 {
        self.0[idx(t)].load(Relaxed)
    }
}

/// Upper bounds (seconds) of the push-time histogram: istiod's.
pub const PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0];

/// Upper bounds (bytes) of the response-size histogram: istiod's.
pub const CONFIG_SIZE_BUCKETS: [f64; 6] = [1.0, 10e3, 1e6, 4e6, 10e6, 40e6];

/// A histogram with fixed buckets. Samples are kept as integers of `1/scale` units
/// (microseconds for durations, bytes for sizes).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    pub fn seconds(bounds: &'static [f64]) -> Histogram {
        Histogram::new(bounds, 1e6)
    }

    pub fn bytes(bounds: &'static [f64]) -> Histogram {
        Histogram::new(bounds, 1.0)
    }

    fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, d: Duration) {
        self.observe_units(d.as_micros() as u64);
    }

    pub fn observe_value(&self, v: u64) {
        self.observe_units(v);
    }

    fn observe_units(&self, units: u64) {
        let v = units as f64 / self.scale;
        for (i, le) in self.bounds.iter().enumerate() {
            if v <= *le {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(units, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of the samples, in the histogram's unit (seconds or bytes).
    pub fn sum(&self) -> f64 {
        self.sum.load(Relaxed) as f64 / self.scale
    }

    /// (upper bound, cumulative count) of each bucket.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .zip(&self.buckets)
            .map(|(le, c)| (*le, c.load(Relaxed)))
            .collect()
    }

    /// The smallest bucket bound at or under which at least `q` (0..1) of the samples
    /// fall, as Prometheus's `histogram_quantile` bounds it; `None` without samples or
    /// when the quantile is past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let want = (q * count as f64).ceil() as u64;
        self.buckets()
            .into_iter()
            .find(|(_, c)| *c >= want.max(1))
            .map(|(le, _)| le)
    }

    /// The sample lines of this histogram, `labels` (`k="v"` pairs or empty) on each.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in self.bounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |out: &mut String, suffix: &str, v: String| {
            if labels.is_empty() {
                let _ = writeln!(out, "{name}_{suffix} {v}");
            } else {
                let _ = writeln!(out, "{name}_{suffix}{{{labels}}} {v}");
            }
        };
        braces(
            out,
            "sum",
            format!("{}", self.sum.load(Relaxed) as f64 / self.scale),
        );
        braces(out, "count", count.to_string());
    }
}

/// One histogram per resource type.
struct PerTypeHistogram([Histogram; 5]);

impl PerTypeHistogram {
    fn new(make: impl Fn() -> Histogram) -> PerTypeHistogram {
        PerTypeHistogram(std::array::from_fn(|_| make()))
    }
    fn get(&self, t: TypeUrl) -> &Histogram {
        &self.0[idx(t)]
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for t in TypeUrl::ALL {
            self.get(t)
                .render(out, name, &format!("type=\"{}\"", t.short()));
        }
    }
}

/// Which xDS flavour a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sotw,
    Delta,
}

/// Counters and gauges of one control plane.
pub struct Metrics {
    pushes: PerType,
    push_errors: PerType,
    rejects: PerType,
    requests: PerType,
    responses: PerType,
    triggers: PerType,
    /// Snapshots that could not be computed (source error or inconsistent resources).
    pub snapshot_errors: AtomicU64,
    pub stale_nonces: AtomicU64,
    pub unknown_types: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub stream_errors: AtomicU64,
    /// Responses that waited for a share of the push budget.
    pub push_throttled: AtomicU64,
    connected_sotw: AtomicI64,
    connected_delta: AtomicI64,
    /// Proxy convergence: from the config change to the proxy's ACK of it.
    pub convergence: Histogram,
    /// Debounced pushes started (each may reach many proxies).
    pub push_rounds: AtomicU64,
    /// When the last push round started (Unix milliseconds; 0: none yet).
    last_push_ms: AtomicU64,
    /// From computing a response until it is handed to the stream, by type.
    push_time: PerTypeHistogram,
    /// Encoded size of each response, by type.
    config_size: PerTypeHistogram,
    /// The certificate authority's counters, when the control plane is one.
    ca: std::sync::OnceLock<std::sync::Arc<crate::ca::service::CaMetrics>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            pushes: PerType::default(),
            push_errors: PerType::default(),
            rejects: PerType::default(),
            requests: PerType::default(),
            responses: PerType::default(),
            triggers: PerType::default(),
            snapshot_errors: AtomicU64::new(0),
            stale_nonces: AtomicU64::new(0),
            unknown_types: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            push_throttled: AtomicU64::new(0),
            connected_sotw: AtomicI64::new(0),
            connected_delta: AtomicI64::new(0),
            convergence: Histogram::seconds(&CONVERGENCE_BUCKETS),
            push_rounds: AtomicU64::new(0),
            last_push_ms: AtomicU64::new(0),
            push_time: PerTypeHistogram::new(|| Histogram::seconds(&PUSH_TIME_BUCKETS)),
            config_size: PerTypeHistogram::new(|| Histogram::bytes(&CONFIG_SIZE_BUCKETS)),
            ca: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Renders the certificate authority's counters with these.
    pub fn attach_ca(&self, ca: std::sync::Arc<crate::ca::service::CaMetrics>) {
        let _ = self.ca.set(ca);
    }
    pub fn pushed(&self, t: TypeUrl) {
        self.pushes.inc(t);
        self.responses.inc(t);
    }
    /// A response of `bytes` (encoded) was handed to its stream `d` after it was
    /// computed (any wait for the push budget included).
    pub fn sent(&self, t: TypeUrl, bytes: usize, d: Duration) {
        self.config_size.get(t).observe_value(bytes as u64);
        self.push_time.get(t).observe(d);
    }
    /// A push round starts now.
    pub fn push_started(&self) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_push_ms.store(ms, Relaxed);
    }

    /// When the last push round started.
    pub fn last_push(&self) -> Option<std::time::SystemTime> {
        match self.last_push_ms.load(Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Responses sent and NACKs received, by type.
    pub fn per_type(&self) -> Vec<(TypeUrl, u64, u64)> {
        TypeUrl::ALL
            .iter()
            .map(|t| (*t, self.pushes(*t), self.rejects(*t)))
            .collect()
    }

    pub fn push_error(&self, t: TypeUrl) {
        self.push_errors.inc(t);
    }
    pub fn rejected(&self, t: TypeUrl) {
        self.rejects.inc(t);
    }
    pub fn request(&self, t: TypeUrl) {
        self.requests.inc(t);
    }
    pub fn triggered(&self, t: TypeUrl) {
        self.triggers.inc(t);
    }
    pub fn pushes(&self, t: TypeUrl) -> u64 {
        self.pushes.get(t)
    }
    pub fn rejects(&self, t: TypeUrl) -> u64 {
        self.rejects.get(t)
    }
    pub fn connected(&self, mode: Mode, delta: i64) {
        match mode {
            Mode::Sotw => self.connected_sotw.fetch_add(delta, Relaxed),
            Mode::Delta => self.connected_delta.fetch_add(delta, Relaxed),
        };
    }
    pub fn connections(&self) -> i64 {
        self.connected_sotw.load(Relaxed) + self.connected_delta.load(Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let per_type = |out: &mut String, name: &str, help: &str, v: &PerType| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for t in TypeUrl::ALL {
                let _ = writeln!(out, "{name}{{type=\"{}\"}} {}", t.short(), v.get(t));
            }
        };
        per_type(
            &mut out,
            "pilot_xds_pushes",
            "Responses pushed to proxies, by type.",
            &self.pushes,
        );
        per_type(
            &mut out,
            "pilot_xds_push_errors",
            "Pushes that could not be sent (closed stream or write timeout), by type.",
            &self.push_errors,
        );
        per_type(
            &mut out,
            "pilot_total_xds_rejects",
            "Responses proxies rejected (NACKs), by type.",
            &self.rejects,
        );
        per_type(
            &mut out,
            "meshgate_xds_requests_total",
            "Discovery requests received, by type.",
            &self.requests,
        );
        per_type(
            &mut out,
            "meshgate_xds_responses_total",
            "Discovery responses sent, by type.",
            &self.responses,
        );
        per_type(
            &mut out,
            "pilot_push_triggers",
            "Types named by the config changes behind pushes.",
            &self.triggers,
        );
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "meshgate_xds_push_rounds_total",
            "Debounced push rounds.",
            self.push_rounds.load(Relaxed),
        );
        counter(
            &mut out,
            "meshgate_xds_snapshot_errors_total",
            "Proxy snapshots that could not be computed (kept the last good one).",
            self.snapshot_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "meshgate_xds_stale_nonces_total",
            "Requests ignored for carrying a stale or unknown nonce.",
            self.stale_nonces.load(Relaxed),
        );
        counter(
            &mut out,
            "meshgate_xds_unknown_types_total",
            "Requests for resource types this control plane does not serve.",
            self.unknown_types.load(Relaxed),
        );
        counter(
            &mut out,
            "pilot_xds_write_timeout",
            "Streams closed because the proxy did not read its pushes in time.",
            self.write_timeouts.load(Relaxed),
        );
        counter(
            &mut out,
            "meshgate_xds_stream_errors_total",
            "Streams closed with an error status.",
            self.stream_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "meshgate_xds_push_throttled_total",
            "Responses that waited for a share of the push budget.",
            self.push_throttled.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP pilot_xds Connected xDS streams.\n# TYPE pilot_xds gauge"
        );
        let _ = writeln!(
            out,
            "pilot_xds{{mode=\"sotw\"}} {}",
            self.connected_sotw.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "pilot_xds{{mode=\"delta\"}} {}",
            self.connected_delta.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP pilot_proxy_convergence_time Seconds from a configuration change until a proxy ACKed all of it.\n# TYPE pilot_proxy_convergence_time histogram"
        );
        self.convergence
            .render(&mut out, "pilot_proxy_convergence_time", "");
        self.push_time.render(
            &mut out,
            "pilot_xds_push_time",
            "Seconds from computing a response until it is handed to the proxy's stream (push budget wait included), by type.",
        );
        self.config_size.render(
            &mut out,
            "pilot_xds_config_size_bytes",
            "Encoded size of each response pushed, by type.",
        );
        if let Some(ca) = self.ca.get() {
            let v = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
            let all = v(&ca.issued)
                + v(&ca.unauthenticated)
                + v(&ca.denied)
                + v(&ca.invalid)
                + v(&ca.failed);
            for (name, help, value) in [
                (
                    "citadel_server_csr_count",
                    "Certificate signing requests received.",
                    all,
                ),
                (
                    "citadel_server_success_cert_issuance_count",
                    "Certificates issued.",
                    v(&ca.issued),
                ),
                (
                    "citadel_server_authentication_failure_count",
                    "Requests without a valid credential.",
                    v(&ca.unauthenticated),
                ),
                (
                    "citadel_server_csr_parsing_err_count",
                    "Requests whose CSR could not be parsed or verified.",
                    v(&ca.invalid),
                ),
                (
                    "meshgate_ca_permission_denied_total",
                    "Requests for an identity the credential does not entitle.",
                    v(&ca.denied),
                ),
                (
                    "citadel_server_csr_sign_err_count",
                    "Requests that failed while signing.",
                    v(&ca.failed),
                ),
            ] {
                counter(&mut out, name, help, value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.pushed(TypeUrl::Cluster);
        m.sent(TypeUrl::Cluster, 20_000, Duration::from_millis(50));
        m.rejected(TypeUrl::Listener);
        m.connected(Mode::Delta, 1);
        m.convergence.observe(Duration::from_millis(200));
        let text = m.render();
        for line in [
            "pilot_xds_pushes{type=\"cds\"} 1",
            "pilot_total_xds_rejects{type=\"lds\"} 1",
            "pilot_xds{mode=\"delta\"} 1",
            "pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0",
            "pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1",
            "pilot_proxy_convergence_time_count 1",
            "pilot_xds_config_size_bytes_bucket{type=\"cds\",le=\"10000\"} 0",
            "pilot_xds_config_size_bytes_bucket{type=\"cds\",le=\"1000000\"} 1",
            "pilot_xds_config_size_bytes_sum{type=\"cds\"} 20000",
            "pilot_xds_push_time_bucket{type=\"cds\",le=\"0.1\"} 1",
            "pilot_xds_push_time_count{type=\"cds\"} 1",
            "pilot_xds_push_time_count{type=\"eds\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Every sample line belongs to a declared metric.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{l}");
        }
    }
}
