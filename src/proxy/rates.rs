//! Request and error rates for the status page, from the counters the data plane keeps
//! anyway: a bounded ring of samples of the gateway's `http.downstream_rq_*` and each
//! cluster's `upstream_rq_*` counters, taken every [`INTERVAL`] by the control thread
//! and kept for [`WINDOW`]. A rate is the difference between the counters now and the
//! sample closest to the window's start, over the time between them: the request path
//! pays nothing beyond the counters it already increments.
//!
//! There are no per-route counters (Envoy has none either, only virtual clusters), so
//! rates are per cluster: a route's rate is its cluster's.
use crate::proxy::runtime::Shared;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How often counters are sampled.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How long samples are kept.
pub const WINDOW: Duration = Duration::from_secs(300);

/// Most clusters sampled: beyond it the page shows totals only for the rest.
const MAX_CLUSTERS: usize = 2000;

/// Request counters at one moment: total, 2xx, 3xx, 4xx, 5xx.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub c2xx: u64,
    pub c3xx: u64,
    pub c4xx: u64,
    pub c5xx: u64,
}

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            total: self.total.saturating_sub(earlier.total),
            c2xx: self.c2xx.saturating_sub(earlier.c2xx),
            c3xx: self.c3xx.saturating_sub(earlier.c3xx),
            c4xx: self.c4xx.saturating_sub(earlier.c4xx),
            c5xx: self.c5xx.saturating_sub(earlier.c5xx),
        }
    }
}

/// One sample of every counter followed.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// The gateway's downstream requests (local replies included).
    pub downstream: Counts,
    /// Each cluster's upstream requests and responses.
    pub clusters: HashMap<String, Counts>,
}

/// Rates over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Requests per second.
    pub rps: f64,
    /// 5xx responses per second.
    pub errors_ps: f64,
    /// 5xx among the responses, 0 to 1 (`None` without responses).
    pub error_ratio: Option<f64>,
    /// The seconds the rate was measured over.
    pub over: f64,
}

impl Rate {
    fn of(delta: Counts, secs: f64) -> Rate {
        let responses = delta.c2xx + delta.c3xx + delta.c4xx + delta.c5xx;
        Rate {
            rps: delta.total as f64 / secs,
            errors_ps: delta.c5xx as f64 / secs,
            error_ratio: (responses > 0).then(|| delta.c5xx as f64 / responses as f64),
            over: secs,
        }
    }
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

/// The counters now.
pub fn sample(shared: &Shared) -> Sample {
    let s = &shared.stats;
    let downstream = Counts {
        total: s.downstream_rq_total.load(Relaxed),
        c2xx: s.downstream_rq_2xx.load(Relaxed),
        c3xx: s.downstream_rq_3xx.load(Relaxed),
        c4xx: s.downstream_rq_4xx.load(Relaxed),
        c5xx: s.downstream_rq_5xx.load(Relaxed),
    };
    let snap = shared.snapshot.load();
    let clusters = snap
        .clusters
        .iter()
        .take(MAX_CLUSTERS)
        .map(|(name, c)| {
            let st = &c.state.stats;
            (
                name.clone(),
                Counts {
                    total: st.upstream_rq_total.load(Relaxed),
                    c2xx: st.upstream_rq_2xx.load(Relaxed),
                    c3xx: st.upstream_rq_3xx.load(Relaxed),
                    c4xx: st.upstream_rq_4xx.load(Relaxed),
                    c5xx: st.upstream_rq_5xx.load(Relaxed),
                },
            )
        })
        .collect();
    Sample {
        at: Instant::now(),
        downstream,
        clusters,
    }
}

impl Rates {
    /// Keeps `s`, dropping samples older than the window (one older is kept, so that a
    /// full window can be measured).
    pub fn push(&self, s: Sample) {
        let mut ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        ring.push_back(s);
        let cap = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize + 2;
        while ring.len() > cap {
            ring.pop_front();
        }
    }

    /// The sample to measure a window of `window` back from `now`: the newest at least
    /// that old, else the oldest (a shorter window, said in [`Rate::over`]).
    fn base(ring: &VecDeque<Sample>, now: Instant, window: Duration) -> Option<&Sample> {
        ring.iter()
            .rev()
            .find(|s| now.duration_since(s.at) >= window)
            .or_else(|| ring.front())
    }

    /// Rates over about `window` up to `current`, for the gateway and each cluster.
    pub fn rates(&self, current: &Sample, window: Duration) -> Option<Measured> {
        let ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let base = Self::base(&ring, current.at, window)?;
        let secs = current.at.duration_since(base.at).as_secs_f64();
        if secs < 0.5 {
            return None;
        }
        let clusters = current
            .clusters
            .iter()
            .map(|(name, now)| {
                let before = base.clusters.get(name).copied().unwrap_or_default();
                (name.clone(), Rate::of(now.since(&before), secs))
            })
            .collect();
        Some(Measured {
            downstream: Rate::of(current.downstream.since(&base.downstream), secs),
            clusters,
        })
    }

    /// Samples kept.
    pub fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rates of the gateway and of each cluster over one window.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub downstream: Rate,
    pub clusters: HashMap<String, Rate>,
}

/// Samples `shared`'s counters every [`INTERVAL`] on `rt`, the first at once, for as long
/// as the gateway lives.
pub fn spawn_sampler(rt: &tokio::runtime::Handle, shared: &std::sync::Arc<Shared>) {
    let weak = std::sync::Arc::downgrade(shared);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            let s = sample(&shared);
            shared.rates.push(s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64, total: u64, c5xx: u64) -> Sample {
        let c = Counts {
            total,
            c2xx: total - c5xx,
            c5xx,
            ..Default::default()
        };
        Sample {
            at: base + Duration::from_secs(secs),
            downstream: c,
            clusters: [("a".to_string(), c)].into(),
        }
    }

    #[test]
    fn rates_are_measured_from_the_sample_a_window_back() {
        let t0 = Instant::now();
        let rates = Rates::default();
        assert!(
            rates.rates(&at(t0, 0, 0, 0), WINDOW).is_none(),
            "no samples"
        );
        for i in 0..100u64 {
            // 10 requests a second, 1 of them a 5xx.
            rates.push(at(t0, i * 5, i * 50, i * 5));
        }
        assert!(rates.len() <= (WINDOW.as_secs() / INTERVAL.as_secs()) as usize + 2);
        let now = at(t0, 500, 5000, 500);
        let m = rates.rates(&now, Duration::from_secs(60)).unwrap();
        assert!((m.downstream.rps - 10.0).abs() < 1e-9, "{m:?}");
        assert!((m.downstream.errors_ps - 1.0).abs() < 1e-9);
        assert_eq!(m.downstream.error_ratio, Some(0.1));
        assert_eq!(m.downstream.over, 60.0);
        assert!((m.clusters["a"].rps - 10.0).abs() < 1e-9);
        // The 5-minute window reaches back to the oldest sample kept.
        let m = rates.rates(&now, WINDOW).unwrap();
        assert_eq!(m.downstream.over, 300.0);
    }

    #[test]
    fn a_young_ring_measures_what_it_has() {
        let t0 = Instant::now();
        let rates = Rates::default();
        rates.push(at(t0, 0, 0, 0));
        let m = rates.rates(&at(t0, 2, 20, 0), WINDOW).unwrap();
        assert_eq!(m.downstream.over, 2.0);
        assert!((m.downstream.rps - 10.0).abs() < 1e-9);
        assert_eq!(m.downstream.error_ratio, Some(0.0));
    }
}
