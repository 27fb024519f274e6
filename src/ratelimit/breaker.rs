//! A circuit breaker around the rate-limit store.
//!
//! Closed, every call goes through; `failures_to_open` consecutive failures open it.
//! Open, every call fails at once (no connection attempt, no timeout waited out) for the
//! back-off. Then it is half-open: one call goes through as a probe while the others
//! still fail fast; the probe's success closes it, its failure opens it again for twice
//! the back-off (up to `max_open_for`). A probe dropped before it finished counts as a
//! failure, so a cancelled request never leaves the breaker half-open for good.
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How the breaker opens and recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures_to_open: u32,
    /// The first back-off after opening.
    pub open_for: Duration,
    /// The longest back-off after repeated failed probes.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, backoff: Duration },
    HalfOpen { backoff: Duration },
}

/// What a caller sees of the breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// The breaker (shared by every call to one store).
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Leave to make one call; report how it went with [`Permit::success`] or
/// [`Permit::failure`].
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

/// The breaker is open: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Leave to call the store, or [`Open`] while it must not be called.
    pub fn admit(&self) -> Result<Permit<'_>, Open> {
        let mut s = self.lock();
        let probe = match *s {
            State::Closed { .. } => false,
            State::HalfOpen { .. } => return Err(Open),
            State::Open { until, backoff } => {
                if Instant::now() < until {
                    return Err(Open);
                }
                *s = State::HalfOpen { backoff };
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            done: false,
        })
    }

    fn succeeded(&self, probe: bool) {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => *s = State::Closed { failures: 0 },
            State::HalfOpen { .. } if probe => {
                tracing::info!("rate-limit store reachable again; circuit breaker closed");
                *s = State::Closed { failures: 0 }
            }
            // A call made before the breaker opened says nothing about the store now.
            _ => {}
        }
    }

    fn failed(&self, probe: bool) {
        let mut s = self.lock();
        match *s {
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failures_to_open {
                    tracing::warn!(
                        failures,
                        back_off = ?self.config.open_for,
                        "rate-limit store failing; circuit breaker open"
                    );
                    *s = State::Open {
                        until: Instant::now() + self.config.open_for,
                        backoff: self.config.open_for,
                    };
                } else {
                    *s = State::Closed { failures };
                }
            }
            State::HalfOpen { backoff } if probe => {
                let backoff = (backoff * 2).min(self.config.max_open_for);
                *s = State::Open {
                    until: Instant::now() + backoff,
                    backoff,
                };
            }
            _ => {}
        }
    }
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.succeeded(self.probe);
    }

    pub fn failure(mut self) {
        self.done = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.failed(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(3),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = breaker();
        b.admit().unwrap().failure();
        b.admit().unwrap().failure();
        b.admit().unwrap().success();
        b.admit().unwrap().failure();
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().unwrap_err(), Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_backs_off_on_failure() {
        let b = breaker();
        for _ in 0..3 {
            b.admit().unwrap().failure();
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "a second call while the probe runs");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        // Twice the back-off now.
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        b.admit().unwrap().failure();
        // Capped at max_open_for (3 s), not 4 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        let probe = b.admit().unwrap();
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().success();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_counts_as_failed_and_late_answers_are_ignored() {
        let b = breaker();
        let late = b.admit().unwrap();
        for _ in 0..3 {
            b.admit().unwrap().failure();
        }
        // A call admitted before the breaker opened succeeds late: still open.
        late.success();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(2)).await;
        b.admit().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
