//! Debouncing config changes into pushes, as istiod does: a push starts after
//! `after` of quiet, or at the latest `max` after the first change of a burst.
use super::source::Change;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

/// Debounce timings.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet time that ends a burst (istiod's PILOT_DEBOUNCE_AFTER, 100 ms).
    pub after: Duration,
    /// Longest a burst can delay a push (istiod's PILOT_DEBOUNCE_MAX, 10 s).
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            after: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// A burst of changes merged into one push.
#[derive(Debug, Clone)]
pub struct Burst {
    pub change: Change,
    /// When the first change of the burst arrived (convergence is measured from here).
    pub first_at: Instant,
    /// How many changes were merged.
    pub merged: usize,
}

async fn recv(rx: &mut broadcast::Receiver<Change>) -> Option<Change> {
    match rx.recv().await {
        Ok(c) => Some(c),
        // Missed notifications: we no longer know what changed, so everything did.
        Err(RecvError::Lagged(_)) => Some(Change::all()),
        Err(RecvError::Closed) => None,
    }
}

/// Waits for the next burst; `None` once the source is gone and nothing is pending.
pub async fn next_burst(rx: &mut broadcast::Receiver<Change>, timing: Debounce) -> Option<Burst> {
    let mut change = recv(rx).await?;
    let first_at = Instant::now();
    let mut last = first_at;
    let mut merged = 1;
    loop {
        let deadline = (last + timing.after).min(first_at + timing.max);
        tokio::select! {
            c = recv(rx) => match c {
                Some(c) => {
                    change.merge(c);
                    merged += 1;
                    last = Instant::now();
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Some(Burst {
        change,
        first_at,
        merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::source::TypeSet;
    use crate::xds::TypeUrl;

    fn eds() -> Change {
        Change {
            types: TypeSet::of(&[TypeUrl::Endpoint]),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_period_ends_a_burst() {
        let (tx, mut rx) = broadcast::channel(16);
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(eds()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tx);
        });
        let b = next_burst(&mut rx, Debounce::default()).await.unwrap();
        assert_eq!(b.merged, 5);
        // Last change at 200 ms, then 100 ms of quiet.
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
        assert_eq!(b.change.types, TypeSet::of(&[TypeUrl::Endpoint]));
        feeder.await.unwrap();
        assert!(next_burst(&mut rx, Debounce::default()).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn max_delay_bounds_a_busy_burst() {
        let (tx, mut rx) = broadcast::channel(16);
        let start = Instant::now();
        let timing = Debounce {
            after: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let feeder = tokio::spawn(async move {
            for _ in 0..40 {
                if tx.send(eds()).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let b = next_burst(&mut rx, timing).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert!(b.merged >= 20, "{}", b.merged);
        drop(rx);
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_means_everything_changed() {
        let (tx, mut rx) = broadcast::channel(2);
        for _ in 0..5 {
            tx.send(eds()).unwrap();
        }
        let b = next_burst(&mut rx, Debounce::default()).await.unwrap();
        assert_eq!(b.change.types, TypeSet::ALL);
    }
}
