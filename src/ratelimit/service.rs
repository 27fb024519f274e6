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
#[derive(Debug)]
pub struct ServerOptions {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// The configured address: bound, unless `inherited` is given.
    pub listen: SocketAddr,
    pub limiter: LimiterOptions,
    /// The socket a gateway being upgraded handed over for `listen`: used instead of
    /// binding, and accepted on only after [`RateLimitServer::start_accepting`] (until
    /// then the gateway that handed it over accepts).
    pub inherited: Option<std::net::TcpListener>,
}

/// Whether the service accepts connections.
const PAUSED: u8 = 0;
const ACCEPTING: u8 = 1;
const STOPPED: u8 = 2;

/// How long, once stopped, connections still open are waited for (their calls in
/// flight finish; clients were told to go away) before they are closed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The rate-limit service running on a thread of its own (its own tokio runtime, so
/// that neither a gateway's workers nor a control plane's pushes delay its answers).
/// Stops when dropped.
#[derive(Debug)]
pub struct RateLimitServer {
    service: Arc<RateLimitService>,
    addr: SocketAddr,
    socket: RateLimitSocket,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The listening socket of a running [`RateLimitServer`], for handing it over to a
/// gateway's successor and then stopping accepting on it.
#[derive(Debug, Clone)]
pub struct RateLimitSocket {
    /// The configured address (`--ratelimit-address`).
    pub addr: SocketAddr,
    socket: Arc<std::net::TcpListener>,
    state: Arc<tokio::sync::watch::Sender<u8>>,
}

impl RateLimitSocket {
    /// A copy (`dup`) of the listening socket: the same socket and accept queue.
    pub fn duplicate(&self) -> std::io::Result<std::net::TcpListener> {
        self.socket.try_clone()
    }

    /// Starts accepting (a service started on an inherited socket waits for this).
    pub fn start_accepting(&self) {
        self.state.send_if_modified(|s| {
            let paused = *s == PAUSED;
            if paused {
                *s = ACCEPTING;
            }
            paused
        });
    }

    /// Stops accepting for good: this process's copy of the socket closes (another
    /// process holding one accepts what comes next), open connections are told to go
    /// away (HTTP/2 GOAWAY) and the calls in flight finish.
    pub fn stop_accepting(&self) {
        self.state.send_replace(STOPPED);
    }
}

impl RateLimitServer {
    /// Binds `opts.listen` (or uses `opts.inherited`) and starts serving. Redis need not
    /// be reachable yet. May be called from inside another runtime: the service's own is
    /// built on its thread.
    pub fn start(opts: ServerOptions) -> Result<RateLimitServer, String> {
        let ServerOptions {
            redis_url,
            listen,
            limiter,
            inherited,
        } = opts;
        let (listener, initial) = match inherited {
            Some(l) => (l, PAUSED),
            None => (
                std::net::TcpListener::bind(listen)
                    .map_err(|e| format!("binding the rate-limit service on {listen}: {e}"))?,
                ACCEPTING,
            ),
        };
        let addr = listener
            .local_addr()
            .map_err(|e| format!("rate-limit service address: {e}"))?;
        let kept = listener
            .try_clone()
            .and_then(|l| listener.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("rate-limit service socket: {e}"))?;
        let state = Arc::new(tokio::sync::watch::channel(initial).0);
        let socket = RateLimitSocket {
            addr: listen,
            socket: Arc::new(kept),
            state: state.clone(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let redis = redact(&redis_url);
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
                        let limiter = RedisLimiter::new(&redis_url, limiter)
                            .map_err(|e| e.to_string())?;
                        let listener = tokio::net::TcpListener::from_std(listener)
                            .map_err(|e| format!("rate-limit service socket: {e}"))?;
                        Ok::<_, String>((Arc::new(RateLimitService::new(limiter)), listener))
                    };
                    let (service, listener) = match setup.await {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(service.clone()));
                    let incoming = Box::pin(incoming(listener, state.subscribe()));
                    let mut stopped = state.subscribe();
                    let serve = tonic::transport::Server::builder()
                        .add_service(rls::rate_limit_service_server::RateLimitServiceServer::new(
                            Grpc(service),
                        ))
                        .serve_with_incoming_shutdown(incoming, async move {
                            let _ = stopped.wait_for(|s| *s == STOPPED).await;
                        });
                    let mut stopped = state.subscribe();
                    tokio::select! {
                        result = serve => if let Err(e) = result {
                            tracing::error!(error = %e, "the rate-limit service stopped");
                        },
                        _ = async {
                            let _ = stopped.wait_for(|s| *s == STOPPED).await;
                            tokio::time::sleep(STOP_GRACE).await;
                        } => tracing::warn!("rate-limit service connections still open after {STOP_GRACE:?}: closed"),
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("starting the rate-limit service's thread: {e}"))?;
        let service = match ready_rx.recv() {
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
        tracing::info!(%addr, %redis, inherited = initial == PAUSED, "rate-limit service listening");
        Ok(RateLimitServer {
            service,
            addr,
            socket,
            thread: Some(thread),
        })
    }

    /// The listening socket, for handing over and stopping accepting.
    pub fn socket(&self) -> &RateLimitSocket {
        &self.socket
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
        self.socket.stop_accepting();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The connections accepted on `listener`: none while paused, and none more (the socket
/// closed) once stopped.
fn incoming(
    listener: tokio::net::TcpListener,
    state: tokio::sync::watch::Receiver<u8>,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold((listener, state), |(listener, mut state)| async move {
        loop {
            let now = *state.borrow_and_update();
            match now {
                STOPPED => return None,
                ACCEPTING => {}
                _ => {
                    if state.changed().await.is_err() {
                        return None;
                    }
                    continue;
                }
            }
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((Ok(stream), (listener, state)));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "rate-limit service: accept failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                },
                r = state.changed() => if r.is_err() { return None; },
            }
        }
    })
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
