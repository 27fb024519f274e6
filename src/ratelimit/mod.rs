//! Global rate limiting: one limit shared by every replica, kept in Redis.
//!
//! - [`Limit`] and [`LimitTable`]: the limit of each rule, looked up by the rule id that
//!   is the first entry (`meshgate.io/rule`) of every descriptor meshgate's routes send.
//! - [`bucket`]: the token bucket (GCRA) both in Rust and as the Lua script Redis runs
//!   atomically, so that replicas never race on a counter.
//! - [`breaker`]: the circuit breaker around Redis: after consecutive failures every
//!   check fails fast for a back-off, then one probe decides.
//! - [`limiter`]: [`RedisLimiter`], which checks descriptors against Redis through the
//!   breaker and leaves a failed check to its caller (fail open or closed is the
//!   proxy's `failure_mode_deny`).
//! - [`service`]: Envoy's `envoy.service.ratelimit.v3.RateLimitService` over gRPC on that
//!   limiter, served by `meshgate control-plane` and by a standalone `meshgate gateway`.
use std::collections::HashMap;
use std::time::Duration;

pub mod breaker;
pub mod bucket;
pub mod limiter;
pub mod service;

pub use breaker::{BreakerConfig, CircuitBreaker};
pub use limiter::{Check, LimitError, LimiterOptions, Outcome, RedisLimiter};
pub use service::{RateLimitServer, RateLimitService, RateLimitSocket, ServerOptions};

/// The rate-limit domain meshgate's routes use (`ratelimit` filter `domain`).
pub const DOMAIN: &str = "meshgate";

/// The first entry of every descriptor meshgate's routes send: its value names the rule
/// (`<namespace>/<policy>/<rule name or index>`) whose [`Limit`] applies.
pub const RULE_KEY: &str = "meshgate.io/rule";

/// The cluster meshgate's `ratelimit` filter calls.
pub const CLUSTER: &str = "meshgate-ratelimit";

/// Where `meshgate gateway` and `meshgate control-plane` serve the rate-limit service
/// unless told otherwise (the port of Envoy's reference rate-limit service).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";

/// One rule's limit: a token bucket refilled with `requests` tokens every `per`, holding
/// at most `burst` tokens (`burst == 0`: `requests`, so a full bucket admits a whole
/// period's worth at once). Every request takes one token (or its hits addend).
/// `requests == 0` admits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

impl Limit {
    /// The bucket's size: `burst`, or `requests` when no burst is given.
    pub fn capacity(&self) -> u64 {
        if self.burst > 0 {
            self.burst
        } else {
            self.requests
        }
    }
}

/// Each rule's limit, by rule id (the value of the descriptors' `meshgate.io/rule`).
pub type LimitTable = HashMap<String, Limit>;

/// Reads a limits file: JSON `{"<rule>": {"requests": N, "per": "1s", "burst": N}}`
/// (`per` as `500ms`, `1s`, `1m`, `1h` or `1d`; `burst` optional). For running the
/// rate-limit service on rules that do not come from RateLimitPolicy resources.
pub fn parse_limits(text: &str) -> Result<LimitTable, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        requests: u64,
        per: String,
        #[serde(default)]
        burst: u64,
    }
    let raw: std::collections::BTreeMap<String, Entry> =
        serde_json::from_str(text).map_err(|e| format!("{}:{}: {e}", e.line(), e.column()))?;
    let mut out = LimitTable::new();
    for (rule, e) in raw {
        let per = parse_period(&e.per).ok_or_else(|| {
            format!(
                "{rule}: per {:?} is not a duration such as 1s, 500ms, 1m, 1h",
                e.per
            )
        })?;
        out.insert(
            rule,
            Limit {
                requests: e.requests,
                per,
                burst: e.burst,
            },
        );
    }
    Ok(out)
}

/// `500ms`, `1s`, `2m`, `1h`, `1d` (a positive whole number and a unit).
fn parse_period(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match &s[digits..] {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => return None,
    };
    let d = unit.checked_mul(u32::try_from(n).ok()?)?;
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_file() {
        let t = parse_limits(
            r#"{"ns/p/0": {"requests": 10, "per": "1m"}, "ns/p/1": {"requests": 5, "per": "500ms", "burst": 20}}"#,
        )
        .unwrap();
        assert_eq!(
            t["ns/p/0"],
            Limit {
                requests: 10,
                per: Duration::from_secs(60),
                burst: 0
            }
        );
        assert_eq!(t["ns/p/0"].capacity(), 10);
        assert_eq!(t["ns/p/1"].per, Duration::from_millis(500));
        assert_eq!(t["ns/p/1"].capacity(), 20);
        for bad in [
            r#"{"r": {"requests": 1, "per": "0s"}}"#,
            r#"{"r": {"requests": 1, "per": "1w"}}"#,
            r#"{"r": {"requests": 1, "per": "s"}}"#,
            r#"{"r": {"requests": 1, "per": "1s", "extra": 1}}"#,
        ] {
            assert!(parse_limits(bad).is_err(), "{bad}");
        }
    }
}
