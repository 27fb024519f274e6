//! When to renew an ACME certificate, and how to back off when renewal fails. Kept apart
//! from the ACME protocol so that the schedule is tested with tokio's paused clock.
use std::future::Future;
use std::time::{Duration, SystemTime};

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Renewal timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Renew once this fraction of the lifetime has passed (default 2/3).
    pub fraction: f64,
    /// First retry delay after a failed attempt; doubles per failure.
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            fraction: 2.0 / 3.0,
            min_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(6 * 3600),
        }
    }
}

impl RenewalPolicy {
    /// The moment to renew a certificate valid for `v`.
    pub fn renew_at(&self, v: Validity) -> SystemTime {
        let lifetime = v.not_after.duration_since(v.not_before).unwrap_or_default();
        v.not_before + lifetime.mul_f64(self.fraction.clamp(0.0, 1.0))
    }

    /// How long to wait from `now` before renewing (zero if due).
    pub fn delay(&self, v: Validity, now: SystemTime) -> Duration {
        self.renew_at(v).duration_since(now).unwrap_or_default()
    }
}

/// Exponential back-off: `min`, `2·min`, `4·min`, ... capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the minimum after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Something that obtains a fresh certificate (the ACME issuer; a fake in tests).
pub trait Renew {
    fn renew(&self) -> impl Future<Output = Result<Validity, String>> + Send;
}

/// What the renewal loop did, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum RenewalEvent {
    /// Sleeping this long before the next renewal.
    Scheduled(Duration),
    /// A new certificate is in force.
    Renewed(Validity),
    /// An attempt failed; the old certificate (if any) keeps serving; retry after the delay.
    Failed { error: String, retry_in: Duration },
}

/// Runs forever: waits until renewal is due (at once if there is no certificate), renews,
/// and on failure retries with exponential back-off while the old certificate keeps
/// serving. `now` reads the wall clock (a fake one in tests).
pub async fn run<R: Renew>(
    renewer: &R,
    mut current: Option<Validity>,
    policy: RenewalPolicy,
    now: impl Fn() -> SystemTime,
    mut on_event: impl FnMut(RenewalEvent),
) {
    let mut backoff = Backoff::new(policy.min_backoff, policy.max_backoff);
    loop {
        if let Some(v) = current {
            let delay = policy.delay(v, now());
            on_event(RenewalEvent::Scheduled(delay));
            tokio::time::sleep(delay).await;
        }
        loop {
            match renewer.renew().await {
                Ok(v) => {
                    backoff.reset();
                    current = Some(v);
                    on_event(RenewalEvent::Renewed(v));
                    break;
                }
                Err(error) => {
                    let retry_in = backoff.next_delay();
                    on_event(RenewalEvent::Failed { error, retry_in });
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn renews_at_two_thirds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = Validity {
            not_before: t0,
            not_after: t0 + Duration::from_secs(90 * 86400),
        };
        let p = RenewalPolicy::default();
        assert_eq!(p.renew_at(v), t0 + Duration::from_secs(60 * 86400));
        assert_eq!(
            p.delay(v, t0 + Duration::from_secs(59 * 86400)),
            Duration::from_secs(86400)
        );
        assert_eq!(
            p.delay(v, t0 + Duration::from_secs(80 * 86400)),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    /// Fails the first `failures` attempts, then issues 90-second certificates starting
    /// at the (fake) wall-clock time of the attempt.
    struct Fake {
        failures: Mutex<u32>,
        attempts: Mutex<Vec<Duration>>,
        start: tokio::time::Instant,
    }

    impl Renew for Fake {
        async fn renew(&self) -> Result<Validity, String> {
            let elapsed = self.start.elapsed();
            self.attempts.lock().unwrap().push(elapsed);
            let mut f = self.failures.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err("directory unreachable".into());
            }
            let nb = SystemTime::UNIX_EPOCH + elapsed;
            Ok(Validity {
                not_before: nb,
                not_after: nb + Duration::from_secs(90),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_with_failures_on_paused_clock() {
        let fake = Arc::new(Fake {
            failures: Mutex::new(0),
            attempts: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        });
        let policy = RenewalPolicy {
            fraction: 2.0 / 3.0,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let (f, ev) = (fake.clone(), events.clone());
        let start = fake.start;
        // The current certificate: issued at t=0, valid 90 s, so renewal is due at t=60.
        let current = Validity {
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(90),
        };
        let task = tokio::spawn(async move {
            run(
                &*f,
                Some(current),
                policy,
                move || SystemTime::UNIX_EPOCH + start.elapsed(),
                move |e| ev.lock().unwrap().push(e),
            )
            .await
        });
        // First renewal at 60 s, then the next at 60 + 60 = 120 s.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(
            *fake.attempts.lock().unwrap(),
            vec![Duration::from_secs(60)]
        );
        // Make the next three attempts fail: retries at +1, +2, +4 s after t=120.
        *fake.failures.lock().unwrap() = 3;
        tokio::time::sleep(Duration::from_secs(70)).await;
        let attempts: Vec<u64> = fake
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(attempts, vec![60, 120, 121, 123, 127]);
        let failures = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                RenewalEvent::Failed { retry_in, .. } => Some(retry_in.as_secs()),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(failures, vec![1, 2, 4]);
        // After the success at 127 s, the next renewal is 60 s later.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let attempts: Vec<u64> = fake
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(attempts, vec![60, 120, 121, 123, 127, 187]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn no_certificate_means_issue_at_once() {
        let fake = Fake {
            failures: Mutex::new(1),
            attempts: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        };
        let policy = RenewalPolicy {
            fraction: 0.5,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        };
        let start = fake.start;
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            run(
                &fake,
                None,
                policy,
                move || SystemTime::UNIX_EPOCH + start.elapsed(),
                |_| {},
            ),
        )
        .await;
        let attempts: Vec<u64> = fake
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        // t=0 fails, t=5 succeeds (valid 90 s, half-life 45 s): next at 50 s, beyond the window.
        assert_eq!(attempts, vec![0, 5]);
    }
}
