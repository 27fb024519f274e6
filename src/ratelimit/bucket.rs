//! The token bucket as GCRA (the generic cell rate algorithm): a bucket is one number,
//! its theoretical arrival time (TAT), the instant at which it would be full again.
//! A request of `hits` tokens moves TAT forward by `hits` emission intervals and is
//! admitted when the new TAT is no further ahead of now than the bucket's tolerance
//! (capacity × interval). This is exactly a token bucket refilled continuously, with no
//! window edges, and needs one read and one write per check.
//!
//! [`SCRIPT`] runs the same arithmetic inside Redis, on Redis's own clock, for every
//! descriptor of a request at once: all are admitted or none is charged. [`gcra`] is the
//! same function in Rust, the reference the script is tested against.
use crate::ratelimit::Limit;
use std::time::Duration;

/// A bucket's constants, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Time one token takes to come back (`per / requests`); 0: nothing is admitted.
    pub interval_us: f64,
    /// How far TAT may run ahead of now: capacity × interval.
    pub tolerance_us: f64,
}

impl Bucket {
    pub fn of(limit: &Limit) -> Bucket {
        if limit.requests == 0 {
            return Bucket {
                interval_us: 0.0,
                tolerance_us: -1.0,
            };
        }
        let interval_us = limit.per.as_secs_f64() * 1e6 / limit.requests as f64;
        Bucket {
            interval_us,
            tolerance_us: interval_us * limit.capacity() as f64,
        }
    }
}

/// What one check decided for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Tokens left after this check (single-token requests that would pass now).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// For a refused check: until it would pass.
    pub retry_after: Duration,
}

/// Slack for floating-point rounding, as a fraction of one interval.
const SLACK: f64 = 1e-6;

/// One GCRA step: the bucket's stored TAT (`None`: never used or expired), now and the
/// tokens asked for. Returns the decision and the TAT to store when charged; `commit`
/// says whether this check is charged (it is not when another descriptor of the same
/// request refused).
pub fn gcra(
    b: &Bucket,
    stored_tat: Option<f64>,
    now: f64,
    hits: u64,
    commit: bool,
) -> (Decision, Option<f64>) {
    if b.interval_us == 0.0 {
        let d = Decision {
            allowed: false,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        };
        return (d, None);
    }
    let tat = stored_tat.filter(|t| *t > now).unwrap_or(now);
    let new_tat = tat + hits as f64 * b.interval_us;
    let allowed = admits(b, new_tat, now);
    let charged = allowed && commit;
    let effective = if charged { new_tat } else { tat };
    let remaining = ((b.tolerance_us - (effective - now)) / b.interval_us + SLACK)
        .floor()
        .max(0.0);
    let retry = if allowed {
        0.0
    } else {
        (new_tat - b.tolerance_us - now).max(0.0)
    };
    let d = Decision {
        allowed,
        remaining: remaining as u64,
        reset: micros(effective - now),
        retry_after: micros(retry),
    };
    (d, charged.then_some(new_tat))
}

fn admits(b: &Bucket, new_tat: f64, now: f64) -> bool {
    new_tat - now <= b.tolerance_us + b.interval_us * SLACK
}

fn micros(us: f64) -> Duration {
    Duration::from_micros(us.max(0.0).ceil() as u64)
}

/// The check run in Redis. `KEYS[i]`: descriptor i's bucket; `ARGV[3i-2..3i]`: its
/// interval (µs, 0: admits nothing), tolerance (µs) and hits. Every descriptor is
/// admitted or none is charged. Returns, per key, `{allowed, remaining, reset_us,
/// retry_us}`. Keys expire when their bucket is full again, so idle clients cost nothing.
/// Time is Redis's (`TIME`): replicas' clocks do not matter.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slack = 1e-6
local n = #KEYS
local s = {}
local all = true
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local hits = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + hits * interval
  local ok = interval > 0 and (new_tat - now <= tolerance + interval * slack)
  if not ok then all = false end
  s[i] = {interval, tolerance, tat, new_tat, ok}
end
local out = {}
for i = 1, n do
  local interval, tolerance, tat, new_tat, ok = s[i][1], s[i][2], s[i][3], s[i][4], s[i][5]
  if interval == 0 then
    out[i] = {0, 0, 0, 0}
  else
    local effective = tat
    if all then
      effective = new_tat
      if new_tat > now then
        redis.call('SET', KEYS[i], string.format('%.17g', new_tat), 'PX',
          math.ceil((new_tat - now) / 1000) + 1)
      end
    end
    local remaining = math.floor((tolerance - (effective - now)) / interval + slack)
    if remaining < 0 then remaining = 0 end
    local retry = 0
    if not ok then
      retry = math.ceil(new_tat - tolerance - now)
      if retry < 0 then retry = 0 end
    end
    out[i] = {ok and 1 or 0, remaining, math.ceil(effective - now), retry}
  end
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u64, per_ms: u64, burst: u64) -> Bucket {
        Bucket::of(&Limit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        })
    }

    /// Runs `hits` single-token checks at `now`, charging each admitted one.
    fn run(b: &Bucket, tat: &mut Option<f64>, now: f64, hits: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..hits {
            let (d, new) = gcra(b, *tat, now, 1, true);
            if d.allowed {
                admitted += 1;
                *tat = new;
            }
        }
        admitted
    }

    #[test]
    fn a_full_bucket_admits_its_capacity_at_once() {
        let b = limit(10, 1000, 0);
        let mut tat = None;
        assert_eq!(run(&b, &mut tat, 5e12, 25), 10);
        // Thirds of an interval do not round into an extra token.
        let b = limit(3, 1000, 0);
        let mut tat = None;
        assert_eq!(run(&b, &mut tat, 1.7e15, 5), 3);
        let b = limit(3, 1000, 7);
        let mut tat = None;
        assert_eq!(run(&b, &mut tat, 1.7e15, 20), 7);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        // 10 per second: one token every 100 ms.
        let b = limit(10, 1000, 0);
        let mut tat = None;
        let t0 = 1.7e15;
        assert_eq!(run(&b, &mut tat, t0, 10), 10);
        assert_eq!(run(&b, &mut tat, t0 + 99_000.0, 1), 0);
        assert_eq!(run(&b, &mut tat, t0 + 100_000.0, 2), 1);
        assert_eq!(run(&b, &mut tat, t0 + 350_000.0, 5), 2);
        // Idle for longer than a period: full again, never fuller.
        assert_eq!(run(&b, &mut tat, t0 + 10e6, 30), 10);
    }

    #[test]
    fn remaining_reset_and_retry_after() {
        let b = limit(4, 2000, 0);
        let now = 1e15;
        let (d, tat) = gcra(&b, None, now, 1, true);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.reset, Duration::from_millis(500));
        let (d, tat) = gcra(&b, tat, now, 3, true);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset, Duration::from_secs(2));
        let (d, none) = gcra(&b, tat, now + 100_000.0, 1, true);
        assert!(!d.allowed);
        assert_eq!(none, None);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Duration::from_millis(400));
        assert_eq!(d.reset, Duration::from_millis(1900));
        // A check that is not charged (another descriptor refused) leaves the bucket.
        let (d, none) = gcra(&b, None, now, 1, false);
        assert!(d.allowed);
        assert_eq!(none, None);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn hits_larger_than_the_bucket_never_pass_and_zero_requests_block() {
        let b = limit(5, 1000, 0);
        assert!(!gcra(&b, None, 1e15, 6, true).0.allowed);
        assert!(gcra(&b, None, 1e15, 5, true).0.allowed);
        let z = limit(0, 1000, 0);
        assert!(!gcra(&z, None, 1e15, 1, true).0.allowed);
        assert!(!gcra(&z, None, 1e15, 0, true).0.allowed);
    }

    #[test]
    fn steady_load_is_admitted_at_the_rate() {
        // 100 per second with a bucket of 10, offered 1000 per second for 5 s: the bucket's
        // 10 plus 5 s of refill.
        let b = limit(100, 1000, 10);
        let mut tat = None;
        let t0 = 1.7e15;
        let mut admitted = 0;
        for i in 0..5000 {
            admitted += run(&b, &mut tat, t0 + i as f64 * 1000.0, 1);
        }
        assert!((509..=511).contains(&admitted), "{admitted}");
    }
}
