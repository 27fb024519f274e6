//! A compiled cluster: how its endpoints are found, how one is chosen, and the limits that
//! protect it. Runtime state that must survive config updates lives in [`ClusterState`].
use crate::proxy::upstream::host::{EndpointSet, Host};
use crate::proxy::upstream::lb::{self, LbContext, LbPolicy, SlowStart};
use crate::proxy::upstream::outlier::OutlierConfig;
use crate::proxy::upstream::tls::TransportSockets;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How a cluster's endpoints are discovered.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    Static,
    Eds,
    StrictDns(DnsConfig),
    LogicalDns(DnsConfig),
}

/// One name to resolve for a DNS cluster, with where its answers go.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    pub hostname: Arc<str>,
    pub port: u16,
    pub weight: u32,
    pub priority: u32,
    pub locality: Arc<str>,
    pub locality_weight: u32,
}

/// DNS cluster settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub targets: Vec<DnsTarget>,
    /// `dns_refresh_rate` (default 5 s).
    pub refresh: Duration,
    /// When to try again after a failed resolution.
    pub failure_refresh: FailureRefresh,
    /// `respect_dns_ttl`: refresh at the answer's TTL instead of `refresh`.
    pub respect_ttl: bool,
    /// `dns_jitter`: a random delay below this is added to every successful refresh.
    pub jitter: Duration,
    pub family: DnsFamily,
    /// Which name servers to ask (`typed_dns_resolver_config` or the deprecated fields).
    pub resolver: ResolverConfig,
}

/// `dns_failure_refresh_rate`: without it a failed resolution is retried after
/// `dns_refresh_rate`; with it, after a fully jittered exponential back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRefresh {
    Fixed(Duration),
    Backoff { base: Duration, max: Duration },
}

/// A DNS resolver configuration; clusters with equal ones share one resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ResolverConfig {
    /// Name servers to ask instead of /etc/resolv.conf's (empty: the system's).
    pub servers: Vec<SocketAddr>,
    /// `use_resolvers_as_fallback`: use `servers` only when the system names none.
    pub servers_as_fallback: bool,
    /// `use_tcp_for_dns_lookups`.
    pub tcp: bool,
    /// `no_default_search_domain`: names are asked as written, never with search domains.
    pub no_search: bool,
    /// `query_timeout_seconds` (the resolver's default, 5 s, when unset).
    pub query_timeout: Option<Duration>,
    /// `rotate_nameservers`: round-robin over the name servers.
    pub rotate: bool,
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

/// The protocol spoken to the cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// `use_downstream_protocol_config`: HTTP/2 for HTTP/2 clients, else HTTP/1.1.
    UseDownstream,
}

/// Circuit-breaker thresholds (default priority).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, it bounds concurrent retries instead of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// A retry budget (`circuit_breakers.thresholds[].retry_budget`): concurrent retries may
/// be `percent` of the cluster's active and pending requests, never fewer than
/// `min_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// 0 to 100 (Envoy's default 20).
    pub percent: f64,
    /// Envoy's default 3.
    pub min_concurrency: u32,
}

impl Thresholds {
    /// How many retries may be active at once when `active_and_pending` requests are
    /// active or pending on the cluster: `max_retries`, or with a budget Envoy's
    /// `max(percent / 100 × active_and_pending, min_concurrency)`, the product truncated.
    pub fn retry_limit(&self, active_and_pending: u32) -> u32 {
        match self.retry_budget {
            None => self.max_retries,
            Some(b) => {
                let share = (b.percent / 100.0 * f64::from(active_and_pending)) as u32;
                share.max(b.min_concurrency)
            }
        }
    }
}

/// Counters of one cluster, named like Envoy's `cluster.<name>.*` stats.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_completed: AtomicU64,
    pub upstream_rq_2xx: AtomicU64,
    pub upstream_rq_3xx: AtomicU64,
    pub upstream_rq_4xx: AtomicU64,
    pub upstream_rq_5xx: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_per_try_timeout: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_retry_success: AtomicU64,
    pub upstream_rq_retry_overflow: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_rq_pending_total: AtomicU64,
    pub upstream_rq_rx_reset: AtomicU64,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_connect_timeout: AtomicU64,
    pub upstream_cx_overflow: AtomicU64,
    pub upstream_cx_destroy: AtomicU64,
    pub upstream_rq_maintenance_mode: AtomicU64,
    pub upstream_cx_none_healthy: AtomicU64,
    pub outlier_detection_ejections_enforced_total: AtomicU64,
    pub outlier_detection_ejections_overflow: AtomicU64,
    pub lb_healthy_panic: AtomicU64,
    /// DNS resolutions: started, answered, failed, answered with no change.
    pub update_attempt: AtomicU64,
    pub update_success: AtomicU64,
    pub update_failure: AtomicU64,
    pub update_no_rebuild: AtomicU64,
    /// TLS origination (Envoy's `cluster.<name>.ssl.*`).
    pub ssl_handshake: AtomicU64,
    pub ssl_connection_error: AtomicU64,
    pub ssl_session_reused: AtomicU64,
    pub ssl_fail_verify_san: AtomicU64,
    pub ssl_fail_verify_error: AtomicU64,
}

impl ClusterStats {
    /// (name, value) pairs for `/stats` and Prometheus.
    pub fn counters(&self) -> [(&'static str, u64); 32] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("upstream_rq_total", g(&self.upstream_rq_total)),
            ("upstream_rq_completed", g(&self.upstream_rq_completed)),
            ("upstream_rq_2xx", g(&self.upstream_rq_2xx)),
            ("upstream_rq_3xx", g(&self.upstream_rq_3xx)),
            ("upstream_rq_4xx", g(&self.upstream_rq_4xx)),
            ("upstream_rq_5xx", g(&self.upstream_rq_5xx)),
            ("upstream_rq_timeout", g(&self.upstream_rq_timeout)),
            (
                "upstream_rq_per_try_timeout",
                g(&self.upstream_rq_per_try_timeout),
            ),
            ("upstream_rq_retry", g(&self.upstream_rq_retry)),
            (
                "upstream_rq_retry_success",
                g(&self.upstream_rq_retry_success),
            ),
            (
                "upstream_rq_retry_overflow",
                g(&self.upstream_rq_retry_overflow),
            ),
            (
                "upstream_rq_pending_overflow",
                g(&self.upstream_rq_pending_overflow),
            ),
            (
                "upstream_rq_pending_total",
                g(&self.upstream_rq_pending_total),
            ),
            ("upstream_rq_rx_reset", g(&self.upstream_rq_rx_reset)),
            ("upstream_cx_total", g(&self.upstream_cx_total)),
            (
                "upstream_cx_connect_fail",
                g(&self.upstream_cx_connect_fail),
            ),
            (
                "upstream_cx_connect_timeout",
                g(&self.upstream_cx_connect_timeout),
            ),
            ("upstream_cx_overflow", g(&self.upstream_cx_overflow)),
            ("upstream_cx_destroy", g(&self.upstream_cx_destroy)),
            (
                "upstream_cx_none_healthy",
                g(&self.upstream_cx_none_healthy),
            ),
            (
                "outlier_detection.ejections_enforced_total",
                g(&self.outlier_detection_ejections_enforced_total),
            ),
            (
                "outlier_detection.ejections_overflow",
                g(&self.outlier_detection_ejections_overflow),
            ),
            ("lb_healthy_panic", g(&self.lb_healthy_panic)),
            ("update_attempt", g(&self.update_attempt)),
            ("update_success", g(&self.update_success)),
            ("update_failure", g(&self.update_failure)),
            ("update_no_rebuild", g(&self.update_no_rebuild)),
            ("ssl.handshake", g(&self.ssl_handshake)),
            ("ssl.connection_error", g(&self.ssl_connection_error)),
            ("ssl.session_reused", g(&self.ssl_session_reused)),
            ("ssl.fail_verify_san", g(&self.ssl_fail_verify_san)),
            ("ssl.fail_verify_error", g(&self.ssl_fail_verify_error)),
        ]
    }

    pub fn count_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.upstream_rq_2xx,
            300..=399 => &self.upstream_rq_3xx,
            400..=499 => &self.upstream_rq_4xx,
            _ => &self.upstream_rq_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// State of a cluster shared by all workers and kept across updates of the same name:
/// circuit-breaker gauges and stats.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub stats: ClusterStats,
    pub rq_active: AtomicU32,
    pub rq_pending: AtomicU32,
    pub cx_active: AtomicU32,
    /// Woken when a connection of the cluster ends, so that requests pending under
    /// `max_connections` can open one in its place.
    pub cx_freed: tokio::sync::Notify,
    pub retries_active: AtomicU32,
    pub ejections_active: AtomicU32,
}

/// A compiled cluster.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    /// `alt_stat_name` if set, else the name: what Envoy's `%UPSTREAM_CLUSTER%` prints.
    pub observability_name: Arc<str>,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    /// Round robin and least request only.
    pub slow_start: Option<SlowStart>,
    pub protocol: UpstreamProtocol,
    /// Upstream connection idle timeout (Envoy default 1 h).
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub thresholds: Thresholds,
    pub outlier: Option<OutlierConfig>,
    /// Below this percentage of healthy hosts, load balancing ignores health (panic).
    pub panic_threshold: f64,
    pub locality_weighted: bool,
    /// Replaced by DNS re-resolution; EDS/STATIC clusters get a new one per update.
    pub endpoints: Arc<ArcSwap<EndpointSet>>,
    pub state: Arc<ClusterState>,
    /// TLS origination per host; empty for plain-text clusters.
    pub transport: TransportSockets,
}

impl Cluster {
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Chooses a host with the cluster's load balancer (`None`: the cluster has no
    /// hosts), counting `lb_healthy_panic` when panic mode was used.
    pub fn choose_host(&self, cx: LbContext<'_>) -> Option<Arc<Host>> {
        let set = self.endpoints();
        let mut panicked = false;
        let h = lb::choose(
            &set,
            &set.lb,
            self.lb,
            self.slow_start.as_ref(),
            self.panic_threshold,
            self.locality_weighted,
            cx,
            &mut panicked,
        );
        if panicked {
            self.state
                .stats
                .lb_healthy_panic
                .fetch_add(1, Ordering::Relaxed);
        }
        h
    }
}

/// A held slot of a circuit-breaker gauge, released on drop.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An owned variant of [`Slot`] for state that outlives a borrow (response bodies).
#[derive(Debug)]
pub struct OwnedSlot(Arc<ClusterState>, fn(&ClusterState) -> &AtomicU32);

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes one unit of `gauge` if it is below `max`.
pub fn try_acquire(gauge: &AtomicU32, max: u32) -> bool {
    gauge
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            (v < max).then_some(v + 1)
        })
        .is_ok()
}

impl ClusterState {
    /// An active-request slot (max_requests), owned so it can live in a response body.
    pub fn acquire_request(self: &Arc<Self>, max: u32) -> Option<OwnedSlot> {
        try_acquire(&self.rq_active, max).then(|| OwnedSlot(self.clone(), |s| &s.rq_active))
    }

    /// A retry slot, within `max_retries` or the retry budget (which is measured against
    /// the active and pending requests at this moment). `answered`: the failed attempt
    /// got a response; meshgate has released its request slot already, Envoy still counts
    /// its open stream while it decides.
    pub fn acquire_retry(&self, thresholds: &Thresholds, answered: bool) -> Option<Slot<'_>> {
        let max = match thresholds.retry_budget {
            None => thresholds.max_retries,
            Some(_) => thresholds.retry_limit(
                self.rq_active
                    .load(Ordering::Relaxed)
                    .saturating_add(self.rq_pending.load(Ordering::Relaxed))
                    .saturating_add(u32::from(answered)),
            ),
        };
        try_acquire(&self.retries_active, max).then(|| Slot(&self.retries_active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_limit_is_envoys_budget_formula() {
        let budget = |percent, min_concurrency| Thresholds {
            max_retries: 1,
            retry_budget: Some(RetryBudget {
                percent,
                min_concurrency,
            }),
            ..Default::default()
        };
        // (thresholds, active + pending requests, allowed concurrent retries)
        let cases = [
            (Thresholds::default(), 1000, 3),
            (
                Thresholds {
                    max_retries: 0,
                    ..Default::default()
                },
                50,
                0,
            ),
            // max_retries is ignored under a budget.
            (budget(20.0, 3), 0, 3),
            (budget(20.0, 3), 10, 3),
            (budget(20.0, 3), 19, 3),
            (budget(20.0, 3), 20, 4),
            (budget(20.0, 3), 24, 4),
            (budget(20.0, 3), 25, 5),
            (budget(20.0, 3), 1000, 200),
            // The product is truncated, not rounded.
            (budget(25.0, 0), 7, 1),
            (budget(33.3, 1), 10, 3),
            (budget(0.0, 2), 1000, 2),
            (budget(0.0, 0), 1000, 0),
            (budget(100.0, 0), 12, 12),
            (budget(100.0, 0), u32::MAX, u32::MAX),
        ];
        for (i, (t, active, want)) in cases.into_iter().enumerate() {
            assert_eq!(t.retry_limit(active), want, "case {i}: {t:?} at {active}");
        }
    }

    #[test]
    fn retry_slots_follow_the_budget_and_the_current_load() {
        let state = ClusterState::default();
        let t = Thresholds {
            max_retries: 0,
            retry_budget: Some(RetryBudget {
                percent: 50.0,
                min_concurrency: 1,
            }),
            ..Default::default()
        };
        // Nothing active: the minimum, one.
        let first = state.acquire_retry(&t, false).expect("minimum concurrency");
        assert!(state.acquire_retry(&t, false).is_none());
        // A refusal takes nothing and gives nothing back.
        assert_eq!(state.retries_active.load(Ordering::Relaxed), 1);
        // Four active and two pending requests: half of six.
        state.rq_active.store(4, Ordering::Relaxed);
        state.rq_pending.store(2, Ordering::Relaxed);
        let second = state.acquire_retry(&t, false).expect("budget of three");
        let third = state.acquire_retry(&t, false).expect("budget of three");
        assert!(state.acquire_retry(&t, false).is_none());
        // An attempt that answered still counts: half of seven is still three, half of
        // eight is four.
        assert!(state.acquire_retry(&t, true).is_none());
        state.rq_active.store(5, Ordering::Relaxed);
        assert!(state.acquire_retry(&t, false).is_none());
        let fourth = state.acquire_retry(&t, true).expect("budget of four");
        drop(fourth);
        state.rq_active.store(4, Ordering::Relaxed);
        assert_eq!(state.retries_active.load(Ordering::Relaxed), 3);
        // Slots are released on drop; the load fell, so the limit is back to one.
        drop((first, second, third));
        state.rq_active.store(0, Ordering::Relaxed);
        state.rq_pending.store(0, Ordering::Relaxed);
        let _one = state.acquire_retry(&t, false).expect("minimum concurrency");
        assert!(state.acquire_retry(&t, false).is_none());
        // Without a budget max_retries counts, here zero.
        let plain = Thresholds {
            max_retries: 0,
            ..Default::default()
        };
        let fresh = ClusterState::default();
        assert!(fresh.acquire_retry(&plain, false).is_none());
    }
}
