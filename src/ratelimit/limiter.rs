//! [`RedisLimiter`]: token buckets in Redis, one atomic script per check, behind the
//! circuit breaker.
//!
//! A check never decides what a failure means: it returns [`LimitError`] and the caller
//! (the rate-limit service, and through it the proxy's `failure_mode_deny`) fails open
//! or closed.
use crate::ratelimit::Limit;
use crate::ratelimit::breaker::{BreakerConfig, CircuitBreaker};
use crate::ratelimit::bucket::{Bucket, SCRIPT};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How the limiter talks to Redis.
#[derive(Debug, Clone)]
pub struct LimiterOptions {
    /// Longest a check may take (connecting included) before it counts as failed.
    pub timeout: Duration,
    /// Prefix of every key (several meshgate installations may share a Redis).
    pub key_prefix: String,
    pub breaker: BreakerConfig,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            timeout: Duration::from_millis(200),
            key_prefix: "meshgate:rl".into(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// One descriptor to check: its bucket's identity, its limit and the tokens it takes.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    pub domain: &'a str,
    /// The descriptor's entries, in order: together with the domain, the bucket.
    pub entries: &'a [(&'a str, &'a str)],
    pub limit: Limit,
    pub hits: u64,
}

/// What a check decided for one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// For a refused descriptor: until it would pass.
    pub retry_after: Duration,
}

/// Why a check could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The circuit breaker is open: Redis failed recently and is not asked.
    #[error("the rate-limit store is unavailable (circuit breaker open)")]
    BreakerOpen,
    #[error("the rate-limit store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("rate-limit store: {0}")]
    Store(String),
}

/// Token buckets in Redis, shared by every replica that uses the same Redis.
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    breaker: CircuitBreaker,
    opts: LimiterOptions,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port[/db]`, `rediss://` for TLS is
    /// not built in). Connects lazily: Redis need not be up yet (checks fail until it
    /// is). Must be called inside a tokio runtime, which runs the connection.
    pub fn new(url: &str, opts: LimiterOptions) -> Result<RedisLimiter, LimitError> {
        let client = redis::Client::open(url)
            .map_err(|e| LimitError::Store(format!("Redis URL {url:?}: {e}")))?;
        // The breaker, not the connection manager, decides when to try again: one
        // reconnection attempt per call, bounded by the check's timeout.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LimitError::Store(e.to_string()))?;
        Ok(RedisLimiter {
            conn,
            script: redis::Script::new(SCRIPT),
            breaker: CircuitBreaker::new(opts.breaker),
            opts,
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The Redis key of a descriptor's bucket: the prefix, the domain and a hash of the
    /// entries (bounded length whatever the header values are).
    pub fn key(&self, domain: &str, entries: &[(&str, &str)]) -> String {
        let mut h = Sha256::new();
        for (k, v) in entries {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        let digest = h.finalize();
        format!(
            "{}:{}:{}",
            self.opts.key_prefix,
            domain,
            hex::encode(&digest[..16])
        )
    }

    /// Checks every descriptor of one request at once: all are admitted (and charged)
    /// or none is charged. Outcomes are in the order of `checks`.
    pub async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, LimitError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let permit = self.breaker.admit().map_err(|_| LimitError::BreakerOpen)?;
        let mut inv = self.script.prepare_invoke();
        for c in checks {
            let b = Bucket::of(&c.limit);
            inv.key(self.key(c.domain, c.entries))
                .arg(format!("{:.6}", b.interval_us))
                .arg(format!("{:.6}", b.tolerance_us))
                .arg(c.hits);
        }
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(
            self.opts.timeout,
            inv.invoke_async::<Vec<(u64, u64, u64, u64)>>(&mut conn),
        )
        .await;
        let rows = match result {
            Ok(Ok(rows)) if rows.len() == checks.len() => rows,
            Ok(Ok(rows)) => {
                permit.failure();
                return Err(LimitError::Store(format!(
                    "the script answered {} rows for {} descriptors",
                    rows.len(),
                    checks.len()
                )));
            }
            Ok(Err(e)) => {
                permit.failure();
                tracing::debug!(error = %e, "rate-limit check failed");
                return Err(LimitError::Store(e.to_string()));
            }
            Err(_) => {
                permit.failure();
                return Err(LimitError::Timeout(self.opts.timeout));
            }
        };
        permit.success();
        Ok(rows
            .into_iter()
            .map(|(allowed, remaining, reset_us, retry_us)| Outcome {
                allowed: allowed == 1,
                remaining,
                reset: Duration::from_micros(reset_us),
                retry_after: Duration::from_micros(retry_us),
            })
            .collect())
    }
}
