//! The rate-limit service flags shared by `meshgate gateway` and `meshgate
//! control-plane`: both can serve Envoy's rate-limit service for global rate limits,
//! with the token buckets in Redis.
use clap::Args;
use meshgate::ratelimit::{LimiterOptions, RateLimitServer, ServerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of the rate-limit service.
#[derive(Debug, Args)]
pub struct RateLimitArgs {
    /// Serve the rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`) for
    /// global rate limits, with the token buckets in this Redis (`redis://HOST:PORT`).
    /// Every replica given the same Redis shares the same limits.
    #[arg(long, value_name = "URL")]
    pub ratelimit_redis: Option<String>,
    /// Where the rate-limit service listens (plaintext gRPC): the address of the
    /// `meshgate-ratelimit` cluster.
    #[arg(long, value_name = "ADDR", default_value = meshgate::ratelimit::DEFAULT_ADDR, requires = "ratelimit_redis")]
    pub ratelimit_address: SocketAddr,
    /// Limits by rule id, as JSON (`{"RULE": {"requests": N, "per": "1m", "burst": N}}`),
    /// for rules that do not come from RateLimitPolicy resources.
    #[arg(long, value_name = "FILE", requires = "ratelimit_redis")]
    pub ratelimit_limits: Option<PathBuf>,
    /// Longest a Redis check may take before it counts as failed (milliseconds).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 200,
        requires = "ratelimit_redis"
    )]
    pub ratelimit_redis_timeout_ms: u64,
}

impl RateLimitArgs {
    /// Starts the service when `--ratelimit-redis` is given: on `inherited`, the socket
    /// a gateway being upgraded handed over (accepting only once told to), else bound.
    pub fn start(
        &self,
        inherited: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Option<RateLimitServer>> {
        let Some(url) = &self.ratelimit_redis else {
            return Ok(None);
        };
        let limits = match &self.ratelimit_limits {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                meshgate::ratelimit::parse_limits(&text)
                    .map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?
            }
            None => Default::default(),
        };
        let server = RateLimitServer::start(ServerOptions {
            redis_url: url.clone(),
            listen: self.ratelimit_address,
            limiter: LimiterOptions {
                timeout: std::time::Duration::from_millis(self.ratelimit_redis_timeout_ms.max(1)),
                ..Default::default()
            },
            inherited,
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(rules = limits.len(), "rate limits loaded");
        server.set_limits(limits);
        Ok(Some(server))
    }
}
