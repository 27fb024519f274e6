//! Outlier detection (consecutive 5xx, consecutive gateway failures, local-origin
//! failures), with Envoy's ejection limits and back-off.
use crate::proxy::upstream::cluster::Cluster;
use crate::proxy::upstream::host::Host;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// A cluster's `outlier_detection`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            always_eject_one_host: false,
        }
    }
}

/// What happened to one request on a host, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    ConnectFailure,
    Timeout,
    Reset,
}

fn roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::random_range(0..100u32) < percent)
}

/// Records a request's outcome on `host` and ejects it if a threshold is crossed.
pub fn record(cluster: &Cluster, host: &Host, outcome: Outcome) {
    let Some(cfg) = &cluster.outlier else { return };
    // Without the split, local-origin failures count as the gateway errors Envoy maps them
    // to (connect failure/reset 503, timeout 504).
    let status = match outcome {
        Outcome::Status(s) => Some(s),
        Outcome::ConnectFailure | Outcome::Reset if !cfg.split_external_local_origin_errors => {
            Some(503)
        }
        Outcome::Timeout if !cfg.split_external_local_origin_errors => Some(504),
        _ => None,
    };
    match status {
        None => {
            let n = host.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.consecutive_local_origin_failure {
                host.consecutive_5xx.store(0, Ordering::Relaxed);
                if roll(cfg.enforcing_consecutive_local_origin_failure) {
                    eject(cluster, cfg, host);
                }
            }
        }
        Some(s) if s >= 500 => {
            let n5 = host.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            let gw = matches!(s, 502..=504);
            let ngw = if gw {
                host.consecutive_gateway_failure
                    .fetch_add(1, Ordering::Relaxed)
                    + 1
            } else {
                host.consecutive_gateway_failure.store(0, Ordering::Relaxed);
                0
            };
            if gw && ngw >= cfg.consecutive_gateway_failure {
                host.consecutive_gateway_failure.store(0, Ordering::Relaxed);
                if roll(cfg.enforcing_consecutive_gateway_failure) {
                    host.consecutive_5xx.store(0, Ordering::Relaxed);
                    eject(cluster, cfg, host);
                    return;
                }
            }
            if n5 >= cfg.consecutive_5xx {
                host.consecutive_5xx.store(0, Ordering::Relaxed);
                if roll(cfg.enforcing_consecutive_5xx) {
                    eject(cluster, cfg, host);
                }
            }
        }
        Some(_) => {
            host.consecutive_5xx.store(0, Ordering::Relaxed);
            host.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
    }
}

fn eject(cluster: &Cluster, cfg: &OutlierConfig, host: &Host) {
    if host.ejected.load(Ordering::Relaxed) {
        return;
    }
    let endpoints = cluster.endpoints();
    let total = endpoints.hosts.len().max(1) as f64;
    let active = endpoints
        .hosts
        .iter()
        .filter(|h| h.ejected.load(Ordering::Relaxed))
        .count() as f64;
    let percent_after = 100.0 * (active + 1.0) / total;
    let allowed = percent_after <= cfg.max_ejection_percent as f64
        || (cfg.always_eject_one_host && active == 0.0);
    if !allowed {
        cluster
            .state
            .stats
            .outlier_detection_ejections_overflow
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    if host.ejected.swap(true, Ordering::AcqRel) {
        return;
    }
    host.times_ejected.fetch_add(1, Ordering::Relaxed);
    *host.ejected_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    endpoints.lb.health_gen.fetch_add(1, Ordering::Relaxed);
    cluster
        .state
        .stats
        .outlier_detection_ejections_enforced_total
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(cluster = %cluster.name, host = %host.addr, "outlier detection ejected host");
}

/// One interval tick for a cluster: un-ejects hosts whose ejection time has passed
/// (base time x number of ejections, capped) and lets healthy hosts' multipliers decay.
pub fn tick(cluster: &Cluster, now: Instant) {
    let Some(cfg) = &cluster.outlier else { return };
    let endpoints = cluster.endpoints();
    for h in &endpoints.hosts {
        if h.ejected.load(Ordering::Relaxed) {
            let n = h.times_ejected.load(Ordering::Relaxed).max(1);
            let ejection =
                (cfg.base_ejection_time * n).min(cfg.max_ejection_time.max(cfg.base_ejection_time));
            let since = *h.ejected_at.lock().unwrap_or_else(|e| e.into_inner());
            if since.is_none_or(|t| now >= t + ejection) {
                h.ejected.store(false, Ordering::Release);
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway_failure.store(0, Ordering::Relaxed);
                endpoints.lb.health_gen.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cluster = %cluster.name, host = %h.addr, "outlier detection returned host");
            }
        } else {
            let n = h.times_ejected.load(Ordering::Relaxed);
            if n > 0 {
                h.times_ejected.store(n - 1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::cluster::{ClusterState, Discovery, Thresholds, UpstreamProtocol};
    use crate::proxy::upstream::host::{EndpointSet, Locality, Priority};
    use crate::proxy::upstream::lb::LbPolicy;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn cluster(n: u16, cfg: OutlierConfig) -> Cluster {
        let hosts: Vec<Arc<Host>> = (1..=n)
            .map(|p| {
                Arc::new(Host::new(
                    SocketAddr::from(([127, 0, 0, 1], p)),
                    None,
                    1,
                    true,
                ))
            })
            .collect();
        let set = EndpointSet::new(
            vec![Priority {
                localities: vec![Locality {
                    name: "".into(),
                    weight: 1,
                    hosts: hosts.clone(),
                }],
                hosts,
            }],
            1.4,
        );
        Cluster {
            name: "c".into(),
            observability_name: "c".into(),
            discovery: Discovery::Static,
            connect_timeout: Duration::from_secs(1),
            lb: LbPolicy::RoundRobin,
            slow_start: None,
            protocol: UpstreamProtocol::Http1,
            idle_timeout: None,
            max_requests_per_connection: None,
            thresholds: Thresholds::default(),
            outlier: Some(cfg),
            panic_threshold: 50.0,
            locality_weighted: false,
            endpoints: Arc::new(arc_swap::ArcSwap::from_pointee(set)),
            state: Arc::new(ClusterState::default()),
            transport: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_and_time_returns() {
        let cfg = OutlierConfig {
            consecutive_5xx: 3,
            max_ejection_percent: 100,
            base_ejection_time: Duration::from_secs(30),
            ..Default::default()
        };
        let c = cluster(2, cfg);
        let h = c.endpoints().hosts[0].clone();
        record(&c, &h, Outcome::Status(500));
        record(&c, &h, Outcome::Status(200));
        record(&c, &h, Outcome::Status(500));
        record(&c, &h, Outcome::Status(503));
        assert!(h.healthy(), "a success reset the count");
        record(&c, &h, Outcome::Status(502));
        assert!(!h.healthy(), "three consecutive 5xx eject");
        assert!(h.ejected.load(Ordering::Relaxed));
        tokio::time::advance(Duration::from_secs(29)).await;
        tick(&c, Instant::now());
        assert!(!h.healthy());
        tokio::time::advance(Duration::from_secs(2)).await;
        tick(&c, Instant::now());
        assert!(h.healthy());
        // Ejected a second time: twice the base time.
        for _ in 0..3 {
            record(&c, &h, Outcome::ConnectFailure);
        }
        assert!(!h.healthy());
        tokio::time::advance(Duration::from_secs(31)).await;
        tick(&c, Instant::now());
        assert!(!h.healthy(), "second ejection lasts 60s");
        tokio::time::advance(Duration::from_secs(30)).await;
        tick(&c, Instant::now());
        assert!(h.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_limits() {
        let c = cluster(
            4,
            OutlierConfig {
                consecutive_5xx: 1,
                max_ejection_percent: 25,
                ..Default::default()
            },
        );
        let hosts = c.endpoints().hosts.clone();
        record(&c, &hosts[0], Outcome::Status(500));
        record(&c, &hosts[1], Outcome::Status(500));
        assert!(!hosts[0].healthy());
        assert!(hosts[1].healthy(), "a second ejection would exceed 25%");
        assert_eq!(
            c.state
                .stats
                .outlier_detection_ejections_overflow
                .load(Ordering::Relaxed),
            1
        );
        // 10% of 2 hosts: nothing may be ejected unless always_eject_one_host.
        let c = cluster(
            2,
            OutlierConfig {
                consecutive_5xx: 1,
                ..Default::default()
            },
        );
        let h = c.endpoints().hosts[0].clone();
        record(&c, &h, Outcome::Status(500));
        assert!(h.healthy());
        let c = cluster(
            2,
            OutlierConfig {
                consecutive_5xx: 1,
                always_eject_one_host: true,
                ..Default::default()
            },
        );
        let h = c.endpoints().hosts[0].clone();
        record(&c, &h, Outcome::Status(500));
        assert!(!h.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_only_when_enforced() {
        let c = cluster(
            1,
            OutlierConfig {
                consecutive_5xx: 100,
                consecutive_gateway_failure: 2,
                enforcing_consecutive_gateway_failure: 100,
                max_ejection_percent: 100,
                ..Default::default()
            },
        );
        let h = c.endpoints().hosts[0].clone();
        record(&c, &h, Outcome::Status(500));
        record(&c, &h, Outcome::Status(502));
        assert!(h.healthy(), "500 resets the gateway-failure count");
        record(&c, &h, Outcome::Timeout);
        assert!(!h.healthy());
    }
}
