//! Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`) on the
//! [`RedisLimiter`]: what Envoy's and meshgate's `ratelimit` HTTP filters call.
//!
//! Each descriptor's limit is found by its first entry, `meshgate.io/rule`, in the
//! [`LimitTable`] (or in the descriptor's own `limit` override); a descriptor with no
//! limit is answered OK without touching Redis, as Envoy's reference service answers
//! descriptors it has no configuration for. Over the limit, the answer is OVER_LIMIT with
//! each descriptor's status (its limit, what remains, when the bucket is full again), from
//! which the proxy writes its `x-ratelimit-*` headers. When Redis cannot be asked, the
//! answer is a gRPC error (UNAVAILABLE) and the proxy's `failure_mode_deny` decides.
use crate::ratelimit::limiter::{Check, LimitError, LimiterOptions, RedisLimiter};
use crate::ratelimit::{DOMAIN, Limit, LimitTable, RULE_KEY};
use crate::xds::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use crate::xds::pb::envoy::service::ratelimit::v3 as rls;
use crate::xds::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as CurrentLimit, rate_limit::Unit,
};
use crate::xds::pb::envoy::r#type::v3::RateLimitUnit;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The rate-limit service: the limiter and the table of limits it enforces.
#[derive(Debug)]
pub struct RateLimitService {
    limiter: RedisLimiter,
    limits: ArcSwap<LimitTable>,
    domain: String,
}

impl RateLimitService {
    /// A service on `limiter` for domain `meshgate`, with no limits yet.
    pub fn new(limiter: RedisLimiter) -> RateLimitService {
        RateLimitService {
            limiter,
            limits: ArcSwap::from_pointee(LimitTable::new()),
            domain: DOMAIN.into(),
        }
    }

    /// Replaces the limits (the RateLimitPolicy resources' translation calls this with
    /// every configuration change). Buckets of rules that stay keep their state: it is
    /// in Redis, keyed by the descriptors, not by the table.
    pub fn set_limits(&self, limits: LimitTable) {
        self.limits.store(Arc::new(limits));
    }

    pub fn limits(&self) -> Arc<LimitTable> {
        self.limits.load_full()
    }

    pub fn limiter(&self) -> &RedisLimiter {
        &self.limiter
    }

    /// Answers one `ShouldRateLimit` request.
    pub async fn should_rate_limit(
        &self,
        req: &rls::RateLimitRequest,
    ) -> Result<rls::RateLimitResponse, LimitError> {
        let table = self.limits.load();
        let hits = if req.hits_addend == 0 {
            1
        } else {
            req.hits_addend as u64
        };
        // Entries as borrowed pairs, one vector per descriptor, for the keys.
        let entries: Vec<Vec<(&str, &str)>> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect()
            })
            .collect();
        let mut checks = Vec::new();
        // For each descriptor, the index of its check (None: no limit applies).
        let mut which = Vec::with_capacity(req.descriptors.len());
        for (d, entries) in req.descriptors.iter().zip(&entries) {
            let limit = if req.domain == self.domain {
                descriptor_limit(d, &table)
            } else {
                None
            };
            match limit {
                Some(limit) if !d.is_negative_hits => {
                    which.push(Some(checks.len()));
                    checks.push(Check {
                        domain: &req.domain,
                        entries,
                        limit,
                        hits: d.hits_addend.map(|h| h.value).unwrap_or(hits),
                    });
                }
                _ => which.push(None),
            }
        }
        let outcomes = self.limiter.check(&checks).await?;
        let mut overall = Code::Ok;
        let statuses = which
            .iter()
            .map(|w| match w {
                None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Some(i) => {
                    let (o, limit) = (&outcomes[*i], &checks[*i].limit);
                    if !o.allowed {
                        overall = Code::OverLimit;
                    }
                    DescriptorStatus {
                        code: if o.allowed { Code::Ok } else { Code::OverLimit } as i32,
                        current_limit: Some(current_limit(limit)),
                        limit_remaining: u32::try_from(o.remaining).unwrap_or(u32::MAX),
                        duration_until_reset: Some(proto_duration(o.reset)),
                        quota: None,
                    }
                }
            })
            .collect();
        Ok(rls::RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }
}

/// The limit of a descriptor: its own override, else its rule's in the table.
fn descriptor_limit(d: &RateLimitDescriptor, table: &LimitTable) -> Option<Limit> {
    if let Some(o) = &d.limit {
        let per = unit_period(RateLimitUnit::try_from(o.unit).ok()?)?;
        return Some(Limit {
            requests: o.requests_per_unit as u64,
            per,
            burst: 0,
        });
    }
    let first = d.entries.first().filter(|e| e.key == RULE_KEY)?;
    table.get(&first.value).copied()
}

fn unit_period(u: RateLimitUnit) -> Option<Duration> {
    let secs = match u {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3600,
        RateLimitUnit::Day => 86400,
        RateLimitUnit::Month => 30 * 86400,
        RateLimitUnit::Year => 365 * 86400,
        RateLimitUnit::Unknown => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The limit as Envoy's proto states it (a count per calendar unit, from which the proxy
/// writes `x-ratelimit-limit: N, N;w=SECONDS`): the unit `per` is, else the largest unit
/// `per` is a whole number of, with the count scaled to it (rounded, at least 1).
pub fn current_limit(limit: &Limit) -> CurrentLimit {
    const UNITS: [(Unit, u64); 4] = [
        (Unit::Day, 86400),
        (Unit::Hour, 3600),
        (Unit::Minute, 60),
        (Unit::Second, 1),
    ];
    let per_ms = limit.per.as_millis() as u64;
    for (unit, secs) in UNITS {
        let unit_ms = secs * 1000;
        if per_ms >= unit_ms && per_ms.is_multiple_of(unit_ms) {
            let periods = per_ms / unit_ms;
            let n = (limit.requests as f64 / periods as f64).round() as u64;
            let n = if limit.requests > 0 { n.max(1) } else { 0 };
            return CurrentLimit {
                name: String::new(),
                requests_per_unit: u32::try_from(n).unwrap_or(u32::MAX),
                unit: unit as i32,
            };
        }
    }
    // Under a second, or not a whole number of seconds: per second.
    let n = (limit.requests as f64 / limit.per.as_secs_f64()).round() as u64;
    CurrentLimit {
        name: String::new(),
        requests_per_unit: u32::try_from(n).unwrap_or(u32::MAX),
        unit: Unit::Second as i32,
    }
}

fn proto_duration(d: Duration) -> crate::xds::pb::google::protobuf::Duration {
    crate::xds::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The gRPC face of [`RateLimitService`].
#[derive(Debug, Clone)]
struct Grpc(Arc<RateLimitService>);

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for Grpc {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<rls::RateLimitRequest>,
    ) -> Result<tonic::Response<rls::RateLimitResponse>, tonic::Status> {
        match self.0.should_rate_limit(request.get_ref()).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}

/// Where and how the rate-limit service runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    pub listen: SocketAddr,
    pub limiter: LimiterOptions,
}

/// The rate-limit service running on a thread of its own (its own tokio runtime, so
/// that neither a gateway's workers nor a control plane's pushes delay its answers).
/// Stops when dropped.
#[derive(Debug)]
pub struct RateLimitServer {
    service: Arc<RateLimitService>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RateLimitServer {
    /// Binds `opts.listen` and starts serving. Redis need not be reachable yet. May be
    /// called from inside another runtime: the service's own is built on its thread.
    pub fn start(opts: ServerOptions) -> Result<RateLimitServer, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let redis = redact(&opts.redis_url);
        let thread = std::thread::Builder::new()
            .name("ratelimit".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ratelimit")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!(
                            "starting the rate-limit service's runtime: {e}"
                        )));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let limiter = RedisLimiter::new(&opts.redis_url, opts.limiter.clone())
                            .map_err(|e| e.to_string())?;
                        let listener =
                            tokio::net::TcpListener::bind(opts.listen)
                                .await
                                .map_err(|e| {
                                    format!(
                                        "binding the rate-limit service on {}: {e}",
                                        opts.listen
                                    )
                                })?;
                        let addr = listener
                            .local_addr()
                            .map_err(|e| format!("rate-limit service address: {e}"))?;
                        Ok::<_, String>((Arc::new(RateLimitService::new(limiter)), listener, addr))
                    };
                    let (service, listener, addr) = match setup.await {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((service.clone(), addr)));
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let result = tonic::transport::Server::builder()
                        .tcp_nodelay(true)
                        .add_service(rls::rate_limit_service_server::RateLimitServiceServer::new(
                            Grpc(service),
                        ))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stop_rx.await;
                        })
                        .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "the rate-limit service stopped");
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("starting the rate-limit service's thread: {e}"))?;
        let (service, addr) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err("the rate-limit service's thread ended".into());
            }
        };
        tracing::info!(%addr, %redis, "rate-limit service listening");
        Ok(RateLimitServer {
            service,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service(&self) -> &Arc<RateLimitService> {
        &self.service
    }

    /// See [`RateLimitService::set_limits`].
    pub fn set_limits(&self, limits: LimitTable) {
        self.service.set_limits(limits);
    }
}

impl Drop for RateLimitServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u64, secs: u64) -> Limit {
        Limit {
            requests,
            per: Duration::from_secs(secs),
            burst: 0,
        }
    }

    #[test]
    fn current_limit_in_envoy_units() {
        let cases = [
            (limit(10, 1), 10, Unit::Second),
            (limit(10, 60), 10, Unit::Minute),
            (limit(100, 3600), 100, Unit::Hour),
            (limit(7, 86400), 7, Unit::Day),
            (limit(100, 10), 10, Unit::Second),
            (limit(100, 120), 50, Unit::Minute),
            (limit(1, 90), 1, Unit::Second),
            (
                Limit {
                    requests: 5,
                    per: Duration::from_millis(500),
                    burst: 0,
                },
                10,
                Unit::Second,
            ),
        ];
        for (l, n, unit) in cases {
            let c = current_limit(&l);
            assert_eq!((c.requests_per_unit, c.unit), (n, unit as i32), "{l:?}");
        }
    }

    #[test]
    fn descriptors_find_their_rule_by_the_first_entry() {
        use crate::xds::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
            Entry, RateLimitOverride,
        };
        let mut table = LimitTable::new();
        table.insert("ns/p/0".into(), limit(3, 1));
        let entry = |k: &str, v: &str| Entry {
            key: k.into(),
            value: v.into(),
        };
        let d = |entries: Vec<Entry>| RateLimitDescriptor {
            entries,
            ..Default::default()
        };
        let known = d(vec![
            entry(RULE_KEY, "ns/p/0"),
            entry("remote_address", "1.2.3.4"),
        ]);
        assert_eq!(descriptor_limit(&known, &table), Some(limit(3, 1)));
        let unknown = d(vec![entry(RULE_KEY, "ns/p/1")]);
        assert_eq!(descriptor_limit(&unknown, &table), None);
        let not_first = d(vec![entry("a", "b"), entry(RULE_KEY, "ns/p/0")]);
        assert_eq!(descriptor_limit(&not_first, &table), None);
        let overridden = RateLimitDescriptor {
            limit: Some(RateLimitOverride {
                requests_per_unit: 42,
                unit: RateLimitUnit::Minute as i32,
            }),
            ..d(vec![entry("generic_key", "x")])
        };
        assert_eq!(descriptor_limit(&overridden, &table), Some(limit(42, 60)));
    }

    #[test]
    fn urls_are_logged_without_passwords() {
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
