//! `envoy.filters.http.local_ratelimit`: token buckets counted in this proxy.
//!
//! As Envoy 1.40 does it: the request's descriptors come from the filter's own
//! `rate_limits`, else from the route's (and the virtual host's, per `vh_rate_limits`)
//! of the filter's stage; every configured descriptor that one of them matches
//! (exactly, or a wildcard entry per distinct value) takes a token, slowest-filling
//! bucket first, and the first empty one refuses the request with a 429
//! `local_rate_limited` (flag RL). The default bucket counts requests no descriptor
//! matched (all of them with `always_consume_default_token_bucket`). Buckets refill
//! continuously (`tokens_per_fill` per `fill_interval`) up to `max_tokens`, and start
//! full. `x-ratelimit-limit/remaining/reset` describe the bucket that decided.
//!
//! Buckets are [`governor`] GCRA limiters (equivalent to that token bucket) and live in
//! the runtime ([`LocalRateLimits`]), keyed by where the config sits and the limit, so
//! a configuration update that keeps a limit keeps its state. A wildcard descriptor
//! keeps at most `max_dynamic_descriptors` values, forgetting the least recently used
//! (Envoy's LRU), and values whose bucket is full again are pruned (`retain_recent`).
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::body::ResponseBody;
use crate::proxy::http::filter::{HttpFilter, PerFilterConfig, RequestCx, ResponseCx, Step};
use crate::proxy::http::filters::ratelimit::{
    Descriptor, DescriptorInput, RateLimitPolicy, VhRateLimits, peer_uri_sans,
};
use crate::proxy::http::local_reply::Flags;
use crate::proxy::route::action::{Action as RouteActionKind, ClusterTarget};
use crate::xds::pb::envoy::extensions::filters::http::local_ratelimit::v3 as pb;
use crate::xds::pb::google::protobuf::Any;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use prost::Message;
use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The filter's config type.
pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// The body of Envoy's answer.
pub const BODY: &str = "local_rate_limited";
/// The first descriptor key of meshgate's rules, counted per rule in the stats.
const RULE_KEY: &str = crate::translate::ratelimit::RULE_KEY;
/// Envoy's default `max_dynamic_descriptors`.
const DEFAULT_MAX_DYNAMIC: u32 = 20;

/// One filter in a connection manager.
#[derive(Debug)]
pub struct LocalRateLimitFilter {
    name: Box<str>,
    config: Arc<LocalRateLimitConfig>,
}

impl LocalRateLimitFilter {
    pub(crate) fn build(
        cx: &mut Cx,
        b: &super::BuildCx<'_>,
        any: &Any,
    ) -> Result<Arc<dyn HttpFilter>, CompileError> {
        let l = pb::LocalRateLimit::decode(any.value.as_slice())
            .map_err(|e| cx.err("typed_config", e.to_string()))?;
        let scope = format!("{}|{}", where_(cx), b.name);
        let config = cx.at("typed_config", |cx| {
            LocalRateLimitConfig::compile(cx, &l, false, scope)
        })?;
        Ok(Arc::new(LocalRateLimitFilter {
            name: b.name.into(),
            config: Arc::new(config),
        }))
    }
}

/// A `typed_per_filter_config` entry: a config of its own (with a token bucket), whose
/// buckets are this route's (or virtual host's).
pub(crate) fn per_route(cx: &mut Cx, any: &Any) -> Result<PerFilterConfig, CompileError> {
    let l =
        pb::LocalRateLimit::decode(any.value.as_slice()).map_err(|e| cx.err("", e.to_string()))?;
    let scope = where_(cx);
    Ok(Arc::new(LocalRateLimitConfig::compile(
        cx, &l, true, scope,
    )?))
}

/// The resource and path being compiled: where a config sits.
fn where_(cx: &Cx) -> String {
    let e = cx.err("", "");
    format!("{}|{}", e.resource, e.path)
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketSpec {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

impl BucketSpec {
    fn compile(
        cx: &mut Cx,
        tb: &crate::xds::pb::envoy::r#type::v3::TokenBucket,
    ) -> Result<BucketSpec, CompileError> {
        let fill_interval = duration(cx, "fill_interval", &tb.fill_interval)?
            .ok_or_else(|| cx.err("fill_interval", "required"))?;
        if fill_interval < Duration::from_millis(50) {
            return Err(cx.err(
                "fill_interval",
                "local rate limit token bucket fill timer must be >= 50ms",
            ));
        }
        let tokens_per_fill = tb.tokens_per_fill.map(|v| v.value).unwrap_or(1);
        if tb.max_tokens == 0 || tokens_per_fill == 0 {
            return Err(cx.err(
                "max_tokens",
                "max_tokens and tokens_per_fill must be at least 1",
            ));
        }
        Ok(BucketSpec {
            max_tokens: tb.max_tokens,
            tokens_per_fill,
            fill_interval,
        })
    }

    /// Tokens per second, to consume the slowest-filling bucket first.
    fn fill_rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) / self.fill_interval.as_secs_f64()
    }

    /// The time one token takes to come back.
    fn per_token(&self) -> Duration {
        (self.fill_interval / self.tokens_per_fill).max(Duration::from_nanos(1))
    }
}

/// A configured descriptor: entries (a `None` value matches any value, one bucket per
/// distinct value) and its bucket.
#[derive(Debug, Clone)]
struct ConfigDescriptor {
    entries: Vec<(Box<str>, Option<Box<str>>)>,
    bucket: BucketSpec,
    /// `meshgate.io/rule` value, for per-rule counters.
    rule: Option<Box<str>>,
}

impl ConfigDescriptor {
    fn wildcard(&self) -> bool {
        self.entries.iter().any(|(_, v)| v.is_none())
    }

    fn matches(&self, d: &Descriptor) -> bool {
        d.entries.len() == self.entries.len()
            && self
                .entries
                .iter()
                .zip(&d.entries)
                .all(|((k, v), (dk, dv))| **k == **dk && v.as_deref().is_none_or(|v| v == dv))
    }
}

/// A header added to the 429.
#[derive(Debug, Clone)]
struct AddHeader {
    name: HeaderName,
    value: HeaderValue,
    mode: AddMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddMode {
    Append,
    IfAbsent,
    Overwrite,
}

/// A compiled `LocalRateLimit`, as the filter's config or a per-route config.
#[derive(Debug)]
pub struct LocalRateLimitConfig {
    /// Where the config sits (listener filter or route), part of its buckets' keys.
    scope: Box<str>,
    stat_prefix: Box<str>,
    status: StatusCode,
    default_bucket: Option<BucketSpec>,
    enabled: Fraction,
    enforced: Fraction,
    response_headers: Vec<AddHeader>,
    descriptors: Vec<ConfigDescriptor>,
    stage: u32,
    x_ratelimit_headers: bool,
    vh_rate_limits: VhRateLimits,
    always_consume_default: bool,
    /// The filter's own `rate_limits` (stage not read, as in Envoy).
    rate_limits: RateLimitPolicy,
    max_dynamic: u32,
    retry_after: bool,
    state: OnceLock<Arc<Resolved>>,
}

/// A runtime fraction: how many of `denominator` requests.
#[derive(Debug, Clone, Copy)]
struct Fraction {
    numerator: u32,
    denominator: u32,
}

impl Fraction {
    fn compile(
        cx: &mut Cx,
        field: &str,
        f: &Option<crate::xds::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
    ) -> Result<Fraction, CompileError> {
        use crate::xds::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
        // Unset: the filter is disabled (Envoy's "0% for safety").
        let Some(f) = f else {
            return Ok(Fraction {
                numerator: 0,
                denominator: 100,
            });
        };
        let Some(v) = &f.default_value else {
            return Err(cx.err(&format!("{field}.default_value"), "required"));
        };
        let denominator = match D::try_from(v.denominator) {
            Ok(D::Hundred) => 100,
            Ok(D::TenThousand) => 10_000,
            Ok(D::Million) => 1_000_000,
            Err(_) => return Err(cx.err(&format!("{field}.default_value"), "unknown denominator")),
        };
        Ok(Fraction {
            numerator: v.numerator,
            denominator,
        })
    }

    fn hit(self) -> bool {
        if self.numerator >= self.denominator {
            true
        } else if self.numerator == 0 {
            false
        } else {
            rand::random::<u32>() % self.denominator < self.numerator
        }
    }
}

impl LocalRateLimitConfig {
    /// Compiles a `LocalRateLimit`; `per_route` configs need a token bucket (as Envoy
    /// requires). `scope` names where it sits, for its buckets' state keys.
    pub(crate) fn compile(
        cx: &mut Cx,
        l: &pb::LocalRateLimit,
        per_route: bool,
        scope: String,
    ) -> Result<LocalRateLimitConfig, CompileError> {
        fields!(
            cx,
            l,
            pb::LocalRateLimit {
                supported: [
                    stat_prefix,
                    status,
                    token_bucket,
                    filter_enabled,
                    filter_enforced,
                    response_headers_to_add,
                    descriptors,
                    stage,
                    local_rate_limit_per_downstream_connection,
                    enable_x_ratelimit_headers,
                    vh_rate_limits,
                    always_consume_default_token_bucket,
                    rate_limits,
                    max_dynamic_descriptors,
                    enable_retry_after_header
                ],
                ignored: [],
                unsupported: [
                    request_headers_to_add_when_not_enforced,
                    local_cluster_rate_limit,
                    rate_limited_as_resource_exhausted
                ],
            }
        );
        if l.stat_prefix.is_empty() {
            return Err(cx.err("stat_prefix", "required"));
        }
        if l.local_rate_limit_per_downstream_connection {
            return Err(cx.err(
                "local_rate_limit_per_downstream_connection",
                "per-connection buckets are not supported (only per-proxy buckets)",
            ));
        }
        if l.stage > 10 {
            return Err(cx.err("stage", "stages are 0 to 10"));
        }
        let status = match &l.status {
            Some(s) if s.code >= 400 => StatusCode::from_u16(s.code as u16)
                .map_err(|_| cx.err("status.code", "invalid status"))?,
            _ => StatusCode::TOO_MANY_REQUESTS,
        };
        let default_bucket = match &l.token_bucket {
            Some(tb) => Some(cx.at("token_bucket", |cx| BucketSpec::compile(cx, tb))?),
            None if per_route => {
                return Err(cx.err(
                    "token_bucket",
                    "local rate limit token bucket must be set for per filter configs",
                ));
            }
            None => None,
        };
        let enabled = Fraction::compile(cx, "filter_enabled", &l.filter_enabled)?;
        let enforced = Fraction::compile(cx, "filter_enforced", &l.filter_enforced)?;
        let mut response_headers = Vec::new();
        for (i, h) in l.response_headers_to_add.iter().enumerate() {
            response_headers.push(cx.at(format_args!("response_headers_to_add[{i}]"), |cx| {
                add_header(cx, h)
            })?);
        }
        let mut descriptors: Vec<ConfigDescriptor> = Vec::with_capacity(l.descriptors.len());
        for (i, d) in l.descriptors.iter().enumerate() {
            let c = cx.at(format_args!("descriptors[{i}]"), |cx| {
                if d.shadow_mode {
                    return Err(cx.unsupported("shadow_mode"));
                }
                if d.entries.is_empty() {
                    return Err(cx.err("entries", "at least one entry is required"));
                }
                let tb = d
                    .token_bucket
                    .as_ref()
                    .ok_or_else(|| cx.err("token_bucket", "required"))?;
                let bucket = cx.at("token_bucket", |cx| BucketSpec::compile(cx, tb))?;
                let entries: Vec<(Box<str>, Option<Box<str>>)> = d
                    .entries
                    .iter()
                    .map(|e| {
                        (
                            e.key.as_str().into(),
                            (!e.value.is_empty()).then(|| e.value.as_str().into()),
                        )
                    })
                    .collect();
                let rule = entries
                    .first()
                    .filter(|(k, _)| &**k == RULE_KEY)
                    .and_then(|(_, v)| v.clone());
                Ok(ConfigDescriptor {
                    entries,
                    bucket,
                    rule,
                })
            })?;
            if descriptors.iter().any(|o| o.entries == c.entries) {
                return Err(cx.err(
                    &format!("descriptors[{i}]"),
                    "duplicate descriptor in the local rate descriptor",
                ));
            }
            descriptors.push(c);
        }
        use crate::xds::pb::envoy::extensions::common::ratelimit::v3 as common;
        let x_ratelimit_headers =
            match common::XRateLimitHeadersRfcVersion::try_from(l.enable_x_ratelimit_headers) {
                Ok(common::XRateLimitHeadersRfcVersion::Off) => false,
                Ok(common::XRateLimitHeadersRfcVersion::DraftVersion03) => true,
                Err(_) => return Err(cx.err("enable_x_ratelimit_headers", "unknown value")),
            };
        let vh_rate_limits = match common::VhRateLimitsOptions::try_from(l.vh_rate_limits) {
            Ok(common::VhRateLimitsOptions::Override) => VhRateLimits::Override,
            Ok(common::VhRateLimitsOptions::Include) => VhRateLimits::Include,
            Ok(common::VhRateLimitsOptions::Ignore) => VhRateLimits::Ignore,
            Err(_) => return Err(cx.err("vh_rate_limits", "unknown value")),
        };
        for (i, r) in l.rate_limits.iter().enumerate() {
            if r.stage.is_some_and(|s| s.value != 0) {
                return Err(cx.err(
                    &format!("rate_limits[{i}].stage"),
                    "a filter's own rate_limits have no stage",
                ));
            }
        }
        let rate_limits = cx.at("rate_limits", |cx| {
            RateLimitPolicy::compile(cx, &l.rate_limits)
        })?;
        let max_dynamic = l
            .max_dynamic_descriptors
            .map(|v| v.value)
            .unwrap_or(DEFAULT_MAX_DYNAMIC);
        if max_dynamic == 0 {
            return Err(cx.err("max_dynamic_descriptors", "must be at least 1"));
        }
        Ok(LocalRateLimitConfig {
            scope: scope.into(),
            stat_prefix: l.stat_prefix.as_str().into(),
            status,
            default_bucket,
            enabled,
            enforced,
            response_headers,
            descriptors,
            stage: l.stage,
            x_ratelimit_headers,
            vh_rate_limits,
            always_consume_default: l
                .always_consume_default_token_bucket
                .map(|b| b.value)
                .unwrap_or(true),
            rate_limits,
            max_dynamic,
            retry_after: l.enable_retry_after_header,
            state: OnceLock::new(),
        })
    }

    /// The buckets and counters, from the runtime on first use.
    fn resolved(&self, runtime: &LocalRateLimits, stats: &crate::proxy::stats::Stats) -> &Resolved {
        self.state.get_or_init(|| {
            let counter = |s: &str| {
                stats
                    .filter_counters
                    .counter(&format!("{}.http_local_rate_limit.{s}", self.stat_prefix))
            };
            let rule_counter = |rule: &str, s: &str| {
                stats.filter_counters.counter(&format!(
                    "{}.http_local_rate_limit.rule.{rule}.{s}",
                    self.stat_prefix
                ))
            };
            Arc::new(Resolved {
                default: self
                    .default_bucket
                    .map(|b| runtime.bucket(format!("{}|default", self.scope), b, None)),
                descriptors: self
                    .descriptors
                    .iter()
                    .map(|d| {
                        let key = format!("{}|{:?}", self.scope, d.entries);
                        let lru = d.wildcard().then_some(self.max_dynamic);
                        (
                            runtime.bucket(key, d.bucket, lru),
                            d.rule
                                .as_ref()
                                .map(|r| (rule_counter(r, "ok"), rule_counter(r, "rate_limited"))),
                        )
                    })
                    .collect(),
                enabled: counter("enabled"),
                ok: counter("ok"),
                rate_limited: counter("rate_limited"),
                enforced: counter("enforced"),
            })
        })
    }

    /// The decision for a request's descriptors.
    fn decide(&self, r: &Resolved, descriptors: &[Descriptor]) -> Decision {
        // (bucket index, key of the value for wildcard descriptors, tokens)
        let mut matched: smallvec::SmallVec<[(usize, u64, u32); 4]> = smallvec::SmallVec::new();
        for d in descriptors {
            let exact = self
                .descriptors
                .iter()
                .position(|c| !c.wildcard() && c.matches(d));
            let found = exact.or_else(|| {
                self.descriptors
                    .iter()
                    .position(|c| c.wildcard() && c.matches(d))
            });
            if let Some(i) = found {
                let key = if self.descriptors[i].wildcard() {
                    value_key(d)
                } else {
                    0
                };
                let hits = d.hits_addend.unwrap_or(1).clamp(1, u64::from(u32::MAX)) as u32;
                matched.push((i, key, hits));
            }
        }
        matched.sort_by(|a, b| {
            self.descriptors[a.0]
                .bucket
                .fill_rate()
                .total_cmp(&self.descriptors[b.0].bucket.fill_rate())
        });
        let mut first: Option<Taken> = None;
        for (i, key, hits) in &matched {
            let (bucket, rule) = &r.descriptors[*i];
            let taken = bucket.take_n(*key, *hits);
            if let Some((ok, limited)) = rule {
                if taken.allowed { ok } else { limited }.fetch_add(1, Ordering::Relaxed);
            }
            if !taken.allowed {
                return Decision::Limited(taken);
            }
            first.get_or_insert(taken);
        }
        if (matched.is_empty() || self.always_consume_default)
            && let Some(bucket) = &r.default
        {
            let taken = bucket.take(0);
            if !taken.allowed {
                return Decision::Limited(taken);
            }
            return Decision::Allowed(Some(first.unwrap_or(taken)));
        }
        Decision::Allowed(first)
    }
}

fn add_header(
    cx: &mut Cx,
    h: &crate::xds::pb::envoy::config::core::v3::HeaderValueOption,
) -> Result<AddHeader, CompileError> {
    use crate::xds::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as A;
    let Some(hv) = &h.header else {
        return Err(cx.err("header", "required"));
    };
    let value = if hv.raw_value.is_empty() {
        hv.value.as_bytes().to_vec()
    } else {
        hv.raw_value.clone()
    };
    if value.contains(&b'%') {
        return Err(cx.err(
            "header.value",
            "formatted header values are not supported here",
        ));
    }
    let name = HeaderName::from_bytes(hv.key.to_ascii_lowercase().as_bytes())
        .map_err(|_| cx.err("header.key", "invalid header name"))?;
    let value =
        HeaderValue::from_bytes(&value).map_err(|_| cx.err("header.value", "invalid value"))?;
    #[allow(deprecated)]
    let mode = match &h.append {
        Some(b) if !b.value => AddMode::Overwrite,
        Some(_) => AddMode::Append,
        None => match A::try_from(h.append_action) {
            Ok(A::AppendIfExistsOrAdd) => AddMode::Append,
            Ok(A::AddIfAbsent) => AddMode::IfAbsent,
            Ok(A::OverwriteIfExistsOrAdd) => AddMode::Overwrite,
            _ => return Err(cx.err("append_action", "not supported")),
        },
    };
    Ok(AddHeader { name, value, mode })
}

/// A distinct value's key in a wildcard descriptor's bucket map: a hash of the values
/// under a per-process random seed, so that clients cannot aim at each other's buckets.
fn value_key(d: &Descriptor) -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(rand::random);
    let mut h = xxhash_rust::xxh64::Xxh64::new(seed);
    for (_, v) in &d.entries {
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}

/// What a bucket said.
#[derive(Debug, Clone)]
struct Taken<C: Clock = DefaultClock> {
    allowed: bool,
    limit: u32,
    /// Seconds until a token is available (0 when one is).
    reset: u64,
    /// The bucket and value that decided, read again for the response headers.
    bucket: Arc<Bucket<C>>,
    key: u64,
}

enum Decision {
    Allowed(Option<Taken>),
    Limited(Taken),
}

/// A rule's `ok` and `rate_limited` counters.
type RuleCounters = (Arc<AtomicU64>, Arc<AtomicU64>);

/// The buckets and counters of one config, from the runtime.
#[derive(Debug)]
struct Resolved {
    default: Option<Arc<Bucket>>,
    descriptors: Vec<(Arc<Bucket>, Option<RuleCounters>)>,
    enabled: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    rate_limited: Arc<AtomicU64>,
    enforced: Arc<AtomicU64>,
}

/// A clock that remembers its first reading: the limiter's start, which governor's
/// times are relative to.
#[derive(Debug, Clone)]
pub struct AnchoredClock<C: Clock> {
    inner: C,
    start: Arc<OnceLock<C::Instant>>,
}

impl<C: Clock> AnchoredClock<C> {
    pub fn new(inner: C) -> AnchoredClock<C> {
        AnchoredClock {
            inner,
            start: Arc::new(OnceLock::new()),
        }
    }

    /// Now, relative to the first reading.
    fn since_start(&self) -> u64 {
        let now = self.inner.now();
        match self.start.get() {
            Some(s) => now.duration_since(*s).as_u64(),
            None => 0,
        }
    }
}

impl<C: Clock> Clock for AnchoredClock<C> {
    type Instant = C::Instant;
    fn now(&self) -> C::Instant {
        let n = self.inner.now();
        let _ = self.start.get_or_init(|| n);
        n
    }
}

/// Rate-limit states by key, at most `capacity`, the least recently used forgotten first
/// (Envoy's dynamic descriptor LRU). A state is the GCRA's theoretical arrival time.
#[derive(Debug)]
pub struct LruStore {
    inner: Mutex<Lru>,
}

#[derive(Debug)]
struct Lru {
    capacity: usize,
    index: HashMap<u64, usize, rustc_hash::FxBuildHasher>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    free: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    key: u64,
    tat: u64,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        self.index.remove(&self.nodes[i].key);
        self.free.push(i);
    }
}

impl LruStore {
    pub fn new(capacity: usize) -> LruStore {
        LruStore {
            inner: Mutex::new(Lru {
                capacity: capacity.max(1),
                index: HashMap::default(),
                nodes: Vec::new(),
                head: NIL,
                tail: NIL,
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `key`, if kept.
    fn tat(&self, key: u64) -> Option<u64> {
        let l = self.lock();
        l.index.get(&key).map(|&i| l.nodes[i].tat)
    }
}

/// The limiter's handle on a store the bucket also reads (governor keeps its store
/// private).
#[derive(Debug, Clone)]
pub struct SharedStore(Arc<LruStore>);

impl StateStore for SharedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut l = self.0.lock();
        match l.index.get(key).copied() {
            Some(i) => {
                let (t, tat) = f(Some(Nanos::from(l.nodes[i].tat)))?;
                l.nodes[i].tat = tat.as_u64();
                if l.head != i {
                    l.unlink(i);
                    l.push_front(i);
                }
                Ok(t)
            }
            None => {
                let (t, tat) = f(None)?;
                if l.index.len() >= l.capacity && l.tail != NIL {
                    let lru = l.tail;
                    l.remove(lru);
                }
                let node = Node {
                    key: *key,
                    tat: tat.as_u64(),
                    prev: NIL,
                    next: NIL,
                };
                let i = match l.free.pop() {
                    Some(i) => {
                        l.nodes[i] = node;
                        i
                    }
                    None => {
                        l.nodes.push(node);
                        l.nodes.len() - 1
                    }
                };
                l.index.insert(*key, i);
                l.push_front(i);
                Ok(t)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut l = self.0.lock();
        let old: Vec<usize> = l
            .index
            .values()
            .copied()
            .filter(|&i| l.nodes[i].tat <= drop_below.as_u64())
            .collect();
        for i in old {
            l.remove(i);
        }
    }

    fn shrink_to_fit(&self) {
        let mut l = self.0.lock();
        if l.index.is_empty() {
            l.nodes.clear();
            l.free.clear();
        }
        l.index.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.lock().index.len()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().index.is_empty()
    }
}

/// Checks between two prunes of a keyed bucket's full states.
const PRUNE_EVERY: u64 = 1024;

/// One token bucket (or one per distinct value), as a governor limiter.
pub struct Bucket<C: Clock = DefaultClock> {
    spec: BucketSpec,
    limiter: RateLimiter<u64, SharedStore, AnchoredClock<C>, StateInformationMiddleware>,
    store: Arc<LruStore>,
    clock: AnchoredClock<C>,
    keyed: bool,
    checks: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for Bucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("spec", &self.spec)
            .field("keyed", &self.keyed)
            .finish()
    }
}

impl<C: Clock + Clone> Bucket<C> {
    /// A bucket; `lru`: one per distinct value, at most that many.
    pub fn new(spec: BucketSpec, lru: Option<u32>, clock: C) -> Bucket<C> {
        let burst = NonZeroU32::new(spec.max_tokens).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(spec.per_token())
            .unwrap_or(Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = AnchoredClock::new(clock);
        let store = Arc::new(LruStore::new(lru.map_or(1, |n| n as usize)));
        let limiter: RateLimiter<u64, SharedStore, AnchoredClock<C>, StateInformationMiddleware> =
            RateLimiter::new(quota, SharedStore(store.clone()), clock.clone());
        Bucket {
            spec,
            limiter,
            store,
            clock,
            keyed: lru.is_some(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token for `key` (0 for a single bucket).
    fn take(self: &Arc<Self>, key: u64) -> Taken<C> {
        self.take_n(key, 1)
    }

    /// Takes `n` tokens for `key` (a descriptor's `hits_addend`), all or none.
    fn take_n(self: &Arc<Self>, key: u64, n: u32) -> Taken<C> {
        if self.keyed
            && self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1
        {
            self.limiter.retain_recent();
        }
        let limit = self.spec.max_tokens;
        let t = self.spec.per_token().as_nanos() as u64;
        let outcome = match NonZeroU32::new(n) {
            Some(n) if n.get() > 1 => self.limiter.check_key_n(&key, n),
            _ => Ok(self.limiter.check_key(&key)),
        };
        let denied = |reset: u64| Taken {
            allowed: false,
            limit,
            reset,
            bucket: self.clone(),
            key,
        };
        match outcome {
            // More than the bucket can ever hold.
            Err(_) => denied(self.peek(key).1.max(1)),
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = if remaining >= 1 {
                    0
                } else {
                    // The next token comes when the arrival time less the burst
                    // tolerance is reached.
                    let tau = t.saturating_mul(u64::from(limit.saturating_sub(1)));
                    let tat = self.store.tat(key).unwrap_or(0);
                    let wait = tat
                        .saturating_sub(tau)
                        .saturating_sub(self.clock.since_start());
                    wait.div_ceil(1_000_000_000)
                };
                Taken {
                    allowed: true,
                    limit,
                    reset,
                    bucket: self.clone(),
                    key,
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.inner.now());
                denied((wait.as_nanos() as u64).div_ceil(1_000_000_000))
            }
        }
    }

    /// What is left for `key` now: (whole tokens, seconds until the next token), as
    /// Envoy reads its bucket when the response headers go out.
    fn peek(&self, key: u64) -> (u32, u64) {
        let limit = u64::from(self.spec.max_tokens);
        let t = self.spec.per_token().as_nanos() as u64;
        let tau = t.saturating_mul(limit.saturating_sub(1));
        let Some(tat) = self.store.tat(key) else {
            return (self.spec.max_tokens, 0);
        };
        let now = self.clock.since_start();
        // Tokens = (now + tau + t - tat) / t, at most the burst.
        let have = (now + tau + t).saturating_sub(tat) / t;
        let remaining = have.min(limit) as u32;
        let reset = if remaining >= 1 {
            0
        } else {
            tat.saturating_sub(tau)
                .saturating_sub(now)
                .div_ceil(1_000_000_000)
        };
        (remaining, reset)
    }

    /// Distinct values kept.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Where a config sits, its bucket, and the distinct values kept (wildcards).
type BucketKey = (String, BucketSpec, Option<u32>);

/// The buckets of every local rate limit config, by where the config sits and the
/// limit: a configuration update that keeps both keeps the bucket's state. Entries no
/// config holds any more are dropped when the next one is added.
#[derive(Debug, Default)]
pub struct LocalRateLimits {
    buckets: Mutex<HashMap<BucketKey, Weak<Bucket>>>,
}

impl LocalRateLimits {
    fn bucket(&self, key: String, spec: BucketSpec, lru: Option<u32>) -> Arc<Bucket> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let k = (key, spec, lru);
        if let Some(b) = map.get(&k).and_then(Weak::upgrade) {
            return b;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let b = Arc::new(Bucket::new(spec, lru, DefaultClock::default()));
        map.insert(k, Arc::downgrade(&b));
        b
    }

    /// Buckets kept (for tests and the admin page).
    pub fn len(&self) -> usize {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bucket whose state the `x-ratelimit-*` headers report.
#[derive(Debug, Clone)]
struct RateLimitHeaders(Taken);

impl LocalRateLimitFilter {
    /// The request's descriptors for `config`: from its own `rate_limits`, else from
    /// the route's and (per `vh_rate_limits`) the virtual host's of its stage.
    fn descriptors(&self, config: &LocalRateLimitConfig, cx: &RequestCx<'_>) -> Vec<Descriptor> {
        let mut out = Vec::new();
        if config.descriptors.is_empty() {
            return out;
        }
        let own = !config.rate_limits.is_empty();
        let route = cx.route;
        // Route actions are read only on routes that forward, as in Envoy.
        let cluster = match route.map(|r| &r.action) {
            Some(RouteActionKind::Route(ra)) => match &ra.target {
                ClusterTarget::Single(c) => Some(&*c.name),
                ClusterTarget::Weighted { .. } => None,
            },
            _ if own => None,
            _ => return out,
        };
        let input = DescriptorInput {
            view: cx.request_view(),
            remote: cx.remote,
            metadata: cx.metadata,
            cluster,
            peer_uri_sans: peer_uri_sans(cx),
        };
        if own {
            config.rate_limits.descriptors(0, &input, &mut out);
            return out;
        }
        let Some(route) = route else {
            return out;
        };
        route
            .rate_limits
            .descriptors(config.stage, &input, &mut out);
        let mode = if route.include_vh_rate_limits {
            VhRateLimits::Include
        } else {
            config.vh_rate_limits
        };
        let use_vh = match mode {
            VhRateLimits::Ignore => false,
            VhRateLimits::Include => true,
            VhRateLimits::Override => route.rate_limits.is_empty(),
        };
        if let (true, Some(vhost)) = (use_vh, cx.vhost) {
            vhost
                .rate_limits
                .descriptors(config.stage, &input, &mut out);
        }
        out
    }

    fn limited(&self, config: &LocalRateLimitConfig, taken: &Taken) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(bytes::Bytes::from_static(
            BODY.as_bytes(),
        )));
        *resp.status_mut() = config.status;
        let h = resp.headers_mut();
        for a in &config.response_headers {
            match a.mode {
                AddMode::Append => {
                    h.append(a.name.clone(), a.value.clone());
                }
                AddMode::Overwrite => {
                    h.insert(a.name.clone(), a.value.clone());
                }
                AddMode::IfAbsent => {
                    if !h.contains_key(&a.name) {
                        h.insert(a.name.clone(), a.value.clone());
                    }
                }
            }
        }
        if config.retry_after
            && config.status == StatusCode::TOO_MANY_REQUESTS
            && !h.contains_key(http::header::RETRY_AFTER)
        {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(taken.reset.max(1)),
            );
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(BODY.len()));
        resp
    }
}

impl HttpFilter for LocalRateLimitFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        // The route outlives this borrow of the request.
        let route = cx.route;
        let config: &LocalRateLimitConfig = route
            .and_then(|r| r.filter_config::<LocalRateLimitConfig>(&self.name))
            .unwrap_or(&self.config);
        if !config.enabled.hit() {
            return Step::CONTINUE;
        }
        let shared = &cx.conn.shared;
        let resolved = config.resolved(&shared.local_rate_limits, &shared.stats);
        resolved.enabled.fetch_add(1, Ordering::Relaxed);
        let descriptors = self.descriptors(config, cx);
        match config.decide(resolved, &descriptors) {
            Decision::Allowed(taken) => {
                resolved.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = taken
                    && config.x_ratelimit_headers
                {
                    cx.state.insert(RateLimitHeaders(t));
                }
                Step::CONTINUE
            }
            Decision::Limited(taken) => {
                resolved.rate_limited.fetch_add(1, Ordering::Relaxed);
                if !config.enforced.hit() {
                    return Step::CONTINUE;
                }
                resolved.enforced.fetch_add(1, Ordering::Relaxed);
                let resp = self.limited(config, &taken);
                if config.x_ratelimit_headers {
                    cx.state.insert(RateLimitHeaders(taken));
                }
                cx.log.flags.set(Flags::RL);
                cx.log.details = Some(BODY);
                Step::respond(resp)
            }
        }
    }

    fn on_response(&self, cx: &mut ResponseCx<'_>) {
        let Some(RateLimitHeaders(t)) = cx.state.remove::<RateLimitHeaders>() else {
            return;
        };
        let (remaining, reset) = t.bucket.peek(t.key);
        let h = cx.resp.headers_mut();
        h.append(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(t.limit),
        );
        h.append(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(remaining),
        );
        h.append(
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(reset),
        );
    }
}

#[cfg(test)]
#[path = "local_ratelimit_tests.rs"]
mod tests;
