//! DNS clusters: STRICT_DNS (every address of every name is a host) and LOGICAL_DNS (the
//! first address of its one name), resolved with a stub resolver (hickory) that reports
//! the TTL of every record.
//!
//! Each name of a cluster has its own schedule, as in Envoy's DNS cluster:
//! - After an answer the name is resolved again after `dns_refresh_rate` (default 5 s);
//!   with `respect_dns_ttl`, after the smallest TTL of the answer's records instead,
//!   unless that TTL is 0 or the answer holds no address (then `dns_refresh_rate`).
//!   Envoy applies no lower bound to a cluster's TTL (`dns_min_refresh_rate` belongs to
//!   the dynamic forward proxy's cache): a 1 s TTL means a query every second.
//!   `dns_jitter` adds a random delay below it.
//! - After a failure (no answer, SERVFAIL, timeout) the hosts from the last answer keep
//!   serving, and the name is tried again after `dns_refresh_rate`, or with
//!   `dns_failure_refresh_rate` after a fully jittered exponential back-off: uniform in
//!   [0, base·2ⁿ), the interval capped at `max_interval` (default 10 × base), shared by
//!   the cluster's names and reset by any answer.
//! - STRICT_DNS takes an answer without addresses (NXDOMAIN, no data) as "this name has
//!   no hosts now"; LOGICAL_DNS takes it as a failure and keeps its host.
//! - Names in /etc/hosts, `localhost` and IP literals are answered locally with TTL 0,
//!   as c-ares does, so they follow `dns_refresh_rate`. A name in /etc/hosts is never
//!   sent to a name server, whatever family is asked for.
//! - No answer cache: every resolution asks the name servers (Envoy's c-ares resolver
//!   also runs without its cache by default, `qcache_max_ttl` 0).
//! - `dns_lookup_family`: V4_ONLY asks A, V6_ONLY AAAA, V4_PREFERRED A then AAAA when A
//!   gives nothing, AUTO the other way round, ALL both at once.
//!
//! Clusters with equal [`ResolverConfig`]s share one resolver; it reads /etc/resolv.conf
//! and /etc/hosts once, on a blocking thread, when the first such cluster appears.
//!
//! Deliberate differences from Envoy: a new cluster is published once every one of its
//! names has been resolved (or failed) once, where Envoy waits for the first name only;
//! /etc/hosts is read when the resolver is made, where c-ares notices later edits.
use crate::proxy::compile::cluster::add_host;
use crate::proxy::upstream::cluster::{
    Cluster, ClusterState, Discovery, DnsConfig, DnsFamily, FailureRefresh, ResolverConfig,
};
use crate::proxy::upstream::host::{EndpointSet, Host};
use crate::xds::pb::envoy::config::endpoint::v3 as ep_pb;
use arc_swap::ArcSwap;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ServerOrderingStrategy,
};
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("setting up the DNS resolver: {0}")]
    Setup(String),
    #[error("{0:?} is not a valid DNS name")]
    BadName(Arc<str>),
    #[error("resolving {name}: {source}")]
    Lookup {
        name: Arc<str>,
        #[source]
        source: NetError,
    },
    #[error("resolving {0}: no address")]
    NoAddress(Arc<str>),
}

/// One name's answer: its addresses (in answer order, without duplicates) and the
/// smallest TTL of the records that gave them (`None` when there is no address).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub ttl: Option<Duration>,
}

impl Answer {
    fn local(addrs: Vec<IpAddr>) -> Answer {
        let ttl = (!addrs.is_empty()).then_some(Duration::ZERO);
        Answer { addrs, ttl }
    }

    fn merge(mut self, other: Answer) -> Answer {
        for a in other.addrs {
            if !self.addrs.contains(&a) {
                self.addrs.push(a);
            }
        }
        self.ttl = match (self.ttl, other.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }
}

/// A stub resolver and the hosts file it answers from first.
pub struct DnsResolver {
    resolver: TokioResolver,
    hosts: Hosts,
}

/// Resolvers in use, by configuration; a resolver lives while a cluster holds it.
static SHARED: LazyLock<Mutex<HashMap<ResolverConfig, Weak<DnsResolver>>>> =
    LazyLock::new(Default::default);

/// The resolver for `config`, shared with every cluster that has the same one.
pub async fn shared(config: &ResolverConfig) -> Result<Arc<DnsResolver>, DnsError> {
    let lookup =
        |map: &HashMap<ResolverConfig, Weak<DnsResolver>>| map.get(config).and_then(Weak::upgrade);
    if let Some(r) = lookup(&SHARED.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(r);
    }
    // Reading /etc/resolv.conf and /etc/hosts blocks: not on the runtime's threads.
    let c = config.clone();
    let built = tokio::task::spawn_blocking(move || DnsResolver::new(&c))
        .await
        .map_err(|e| DnsError::Setup(e.to_string()))??;
    let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = lookup(&map) {
        return Ok(r);
    }
    map.retain(|_, w| w.strong_count() > 0);
    let r = Arc::new(built);
    map.insert(config.clone(), Arc::downgrade(&r));
    Ok(r)
}

fn name_server(addr: SocketAddr, tcp: bool) -> NameServerConfig {
    let mut conns = if tcp {
        vec![ConnectionConfig::tcp()]
    } else {
        vec![ConnectionConfig::udp(), ConnectionConfig::tcp()]
    };
    for c in &mut conns {
        c.port = addr.port();
    }
    NameServerConfig::new(addr.ip(), true, conns)
}

impl DnsResolver {
    /// Builds a resolver from the system configuration and the cluster's overrides.
    /// Blocks (reads files).
    pub fn new(config: &ResolverConfig) -> Result<DnsResolver, DnsError> {
        let (system, mut opts) = match hickory_resolver::system_conf::read_system_conf() {
            Ok((c, o)) => (Some(c), o),
            Err(e) => {
                tracing::debug!(error = %e, "no usable /etc/resolv.conf");
                (None, Default::default())
            }
        };
        let (domain, search, mut servers) = match system {
            Some(c) => c.into_parts(),
            None => (None, Vec::new(), Vec::new()),
        };
        // `use_resolvers_as_fallback`: the cluster's servers only when the system has none.
        let own = !config.servers.is_empty() && (!config.servers_as_fallback || servers.is_empty());
        if own {
            servers = config
                .servers
                .iter()
                .map(|a| name_server(*a, config.tcp))
                .collect();
        } else if config.tcp {
            for s in &mut servers {
                let port = s.connections.first().map(|c| c.port).unwrap_or(53);
                s.connections = vec![ConnectionConfig::tcp()];
                s.connections[0].port = port;
            }
        }
        let (domain, search) = if config.no_search {
            (None, Vec::new())
        } else {
            (domain, search)
        };
        // Every refresh must reach the name servers; hosts are answered here, first.
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        if let Some(t) = config.query_timeout {
            opts.timeout = t;
        }
        if config.rotate {
            opts.server_ordering_strategy = ServerOrderingStrategy::RoundRobin;
        }
        let conf = hickory_resolver::config::ResolverConfig::from_parts(domain, search, servers);
        let mut builder = TokioResolver::builder_with_config(conf, Default::default());
        *builder.options_mut() = opts;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        let hosts = Hosts::from_system().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no usable /etc/hosts");
            Hosts::default()
        });
        Ok(DnsResolver { resolver, hosts })
    }

    /// Resolves `name` for `family`.
    pub async fn resolve(&self, name: &Arc<str>, family: DnsFamily) -> Result<Answer, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            let wanted = match family {
                DnsFamily::V4Only => ip.is_ipv4(),
                DnsFamily::V6Only => ip.is_ipv6(),
                _ => true,
            };
            return Ok(Answer::local(if wanted { vec![ip] } else { Vec::new() }));
        }
        let dns_name = Name::from_str(name).map_err(|_| DnsError::BadName(name.clone()))?;
        if let Some(local) = self.local(&dns_name, family) {
            return Ok(local);
        }
        let (a, aaaa) = (RecordType::A, RecordType::AAAA);
        match family {
            DnsFamily::V4Only => self.query(name, &dns_name, a).await,
            DnsFamily::V6Only => self.query(name, &dns_name, aaaa).await,
            DnsFamily::V4Preferred => self.first_then(name, &dns_name, a, aaaa).await,
            DnsFamily::Auto => self.first_then(name, &dns_name, aaaa, a).await,
            DnsFamily::All => {
                let (v4, v6) = futures::join!(
                    self.query(name, &dns_name, a),
                    self.query(name, &dns_name, aaaa)
                );
                match (v4, v6) {
                    (Err(e), Err(_)) => Err(e),
                    (v4, v6) => Ok(v4.unwrap_or_default().merge(v6.unwrap_or_default())),
                }
            }
        }
    }

    async fn first_then(
        &self,
        name: &Arc<str>,
        dns_name: &Name,
        first: RecordType,
        then: RecordType,
    ) -> Result<Answer, DnsError> {
        match self.query(name, dns_name, first).await {
            Ok(a) if !a.addrs.is_empty() => Ok(a),
            _ => self.query(name, dns_name, then).await,
        }
    }

    /// /etc/hosts, then the loopback names (RFC 6761); `None` sends the name to DNS.
    fn local(&self, name: &Name, family: DnsFamily) -> Option<Answer> {
        let from_hosts = |rt| {
            self.hosts
                .lookup_static_host(&Query::query(name.clone(), rt))
                .map(|l| addresses(l.answers()).map(|(ip, _)| ip).collect::<Vec<_>>())
        };
        let (v4, v6) = (from_hosts(RecordType::A), from_hosts(RecordType::AAAA));
        let (v4, v6) = if v4.is_some() || v6.is_some() {
            (v4.unwrap_or_default(), v6.unwrap_or_default())
        } else if Name::from_ascii("localhost.").is_ok_and(|l| l.zone_of(&name.to_lowercase())) {
            (
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            )
        } else {
            return None;
        };
        let addrs = match family {
            DnsFamily::V4Only => v4,
            DnsFamily::V6Only => v6,
            DnsFamily::V4Preferred if !v4.is_empty() => v4,
            DnsFamily::V4Preferred => v6,
            DnsFamily::Auto if !v6.is_empty() => v6,
            DnsFamily::Auto => v4,
            DnsFamily::All => v4.into_iter().chain(v6).collect(),
        };
        Some(Answer::local(addrs))
    }

    /// One query; "no such name" and "no such record" are answers without addresses.
    async fn query(
        &self,
        name: &Arc<str>,
        dns_name: &Name,
        rt: RecordType,
    ) -> Result<Answer, DnsError> {
        match self.resolver.lookup(dns_name.clone(), rt).await {
            Ok(lookup) => {
                let mut answer = Answer::default();
                for (ip, _) in addresses(lookup.answers()) {
                    if !answer.addrs.contains(&ip) {
                        answer.addrs.push(ip);
                    }
                }
                // The chain's smallest TTL (CNAMEs included), as c-ares reports it.
                if !answer.addrs.is_empty() {
                    answer.ttl = lookup
                        .answers()
                        .iter()
                        .map(|r| Duration::from_secs(r.ttl.into()))
                        .min();
                }
                Ok(answer)
            }
            Err(e) if e.is_no_records_found() => Ok(Answer::default()),
            Err(source) => Err(DnsError::Lookup {
                name: name.clone(),
                source,
            }),
        }
    }
}

fn addresses(records: &[Record]) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
    records.iter().filter_map(|r| match &r.data {
        RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
        RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
        _ => None,
    })
}

/// The delay before resolving a name again after an answer with `ttl`.
pub fn refresh_after(dns: &DnsConfig, ttl: Option<Duration>, random: u64) -> Duration {
    let base = match ttl {
        Some(t) if dns.respect_ttl && !t.is_zero() => t,
        _ => dns.refresh,
    };
    base + jitter(dns.jitter, random)
}

fn jitter(max: Duration, random: u64) -> Duration {
    match max.as_millis() as u64 {
        0 => Duration::ZERO,
        ms => Duration::from_millis(random % ms),
    }
}

/// Envoy's DNS failure back-off: fixed at `dns_refresh_rate`, or fully jittered
/// exponential between `base_interval` and `max_interval`.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: FailureRefresh,
    next: Duration,
}

impl Backoff {
    pub fn new(policy: FailureRefresh) -> Backoff {
        let next = match policy {
            FailureRefresh::Fixed(d) => d,
            FailureRefresh::Backoff { base, .. } => base,
        };
        Backoff { policy, next }
    }

    /// The delay before the next try after a failure.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        match self.policy {
            FailureRefresh::Fixed(d) => d,
            FailureRefresh::Backoff { max, .. } => {
                let current = self.next;
                self.next = if current < max / 2 { current * 2 } else { max };
                let ms = (current.as_millis() as u64).max(1);
                Duration::from_millis(random % ms)
            }
        }
    }

    /// An answer came: the next failure starts from `base_interval` again.
    pub fn reset(&mut self) {
        *self = Backoff::new(self.policy);
    }
}

fn config(d: &Discovery) -> Option<(&DnsConfig, bool)> {
    match d {
        Discovery::StrictDns(c) => Some((c, false)),
        Discovery::LogicalDns(c) => Some((c, true)),
        _ => None,
    }
}

/// Starts resolving a DNS cluster's names on `runtime`, until its endpoint set is dropped
/// (the cluster was removed or its DNS settings changed). The receiver fires once every
/// name has been resolved, or has failed, once. `None` for other clusters.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    c: &Cluster,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (dns, logical) = config(&c.discovery)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime.spawn(run(
        c.name.clone(),
        dns.clone(),
        logical,
        Arc::downgrade(&c.endpoints),
        c.state.clone(),
        tx,
    ));
    Some(rx)
}

/// One name's current hosts and when it is resolved next.
struct TargetState {
    hosts: Vec<Arc<Host>>,
    due: Instant,
}

async fn run(
    name: Arc<str>,
    dns: DnsConfig,
    logical: bool,
    endpoints: Weak<ArcSwap<EndpointSet>>,
    state: Arc<ClusterState>,
    first_round: tokio::sync::oneshot::Sender<()>,
) {
    let stats = &state.stats;
    let start = Instant::now();
    let mut targets: Vec<TargetState> = dns
        .targets
        .iter()
        .map(|_| TargetState {
            hosts: Vec::new(),
            due: start,
        })
        .collect();
    let mut backoff = Backoff::new(dns.failure_refresh);
    let mut first_round = Some(first_round);
    let mut resolver: Option<Arc<DnsResolver>> = None;
    loop {
        let Some(next) = targets.iter().map(|t| t.due).min() else {
            return;
        };
        tokio::time::sleep_until(next).await;
        if endpoints.strong_count() == 0 {
            return;
        }
        let now = Instant::now();
        let due: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].due <= now)
            .collect();
        stats
            .update_attempt
            .fetch_add(due.len() as u64, Ordering::Relaxed);
        if resolver.is_none() {
            match shared(&dns.resolver).await {
                Ok(r) => resolver = Some(r),
                Err(e) => tracing::warn!(cluster = %name, error = %e, "DNS resolver unavailable"),
            }
        }
        let results: Vec<Result<Answer, DnsError>> = match &resolver {
            Some(r) => {
                futures::future::join_all(
                    due.iter()
                        .map(|&i| r.resolve(&dns.targets[i].hostname, dns.family)),
                )
                .await
            }
            None => due
                .iter()
                .map(|_| Err(DnsError::Setup("no resolver".into())))
                .collect(),
        };
        let done = Instant::now();
        let mut changed = false;
        for (&i, result) in due.iter().zip(results) {
            let target = &dns.targets[i];
            let result = match result {
                Ok(a) if logical && a.addrs.is_empty() => {
                    Err(DnsError::NoAddress(target.hostname.clone()))
                }
                other => other,
            };
            match result {
                Ok(mut answer) => {
                    stats.update_success.fetch_add(1, Ordering::Relaxed);
                    backoff.reset();
                    if logical {
                        answer.addrs.truncate(1);
                    }
                    let t = &mut targets[i];
                    let mut old: Vec<SocketAddr> = t.hosts.iter().map(|h| h.addr).collect();
                    let mut new: Vec<SocketAddr> = answer
                        .addrs
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, target.port))
                        .collect();
                    let hosts = new
                        .iter()
                        .map(|a| match t.hosts.iter().find(|h| h.addr == *a) {
                            Some(h) => h.clone(),
                            None => Arc::new(Host::new(
                                *a,
                                Some(target.hostname.clone()),
                                target.weight,
                                true,
                            )),
                        })
                        .collect();
                    old.sort();
                    new.sort();
                    if old != new {
                        t.hosts = hosts;
                        changed = true;
                    } else {
                        stats.update_no_rebuild.fetch_add(1, Ordering::Relaxed);
                    }
                    t.due = done + refresh_after(&dns, answer.ttl, rand::random());
                    tracing::debug!(cluster = %name, host = %target.hostname, ttl = ?answer.ttl,
                        next = ?(t.due - done), "DNS answer");
                }
                Err(e) => {
                    stats.update_failure.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_delay(rand::random());
                    targets[i].due = done + wait;
                    tracing::warn!(cluster = %name, error = %e, retry_in = ?wait,
                        "DNS resolution failed; keeping the last answer");
                }
            }
        }
        if changed {
            let Some(published) = endpoints.upgrade() else {
                return;
            };
            let set = endpoint_set(&dns, &targets);
            tracing::info!(cluster = %name, hosts = set.hosts.len(), "DNS answer changed");
            published.store(Arc::new(set));
        }
        if let Some(tx) = first_round.take() {
            let _ = tx.send(());
        }
    }
}

/// The cluster's endpoint set from every name's current hosts.
fn endpoint_set(dns: &DnsConfig, targets: &[TargetState]) -> EndpointSet {
    let mut levels = Vec::new();
    for (t, state) in dns.targets.iter().zip(targets) {
        let le = ep_pb::LocalityLbEndpoints {
            priority: t.priority,
            load_balancing_weight: Some(crate::xds::pb::google::protobuf::UInt32Value {
                value: t.locality_weight,
            }),
            locality: None,
            ..Default::default()
        };
        for h in &state.hosts {
            add_host(&mut levels, &le, h.clone());
        }
    }
    EndpointSet::new(levels, 1.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(refresh_ms: u64, respect_ttl: bool, jitter_ms: u64) -> DnsConfig {
        DnsConfig {
            targets: Vec::new(),
            refresh: Duration::from_millis(refresh_ms),
            failure_refresh: FailureRefresh::Fixed(Duration::from_millis(refresh_ms)),
            respect_ttl,
            jitter: Duration::from_millis(jitter_ms),
            family: DnsFamily::V4Only,
            resolver: ResolverConfig::default(),
        }
    }

    #[test]
    fn refresh_interval_after_an_answer() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (refresh ms, respect_ttl, jitter ms, answer ttl, random, expected)
        type Case = (u64, bool, u64, Option<Duration>, u64, Duration);
        let cases: &[Case] = &[
            (5000, true, 0, Some(s(1)), 0, s(1)),
            (5000, true, 0, Some(s(300)), 0, s(300)),
            // TTL 0 (hosts file, literals, or a zero-TTL record): the refresh rate.
            (5000, true, 0, Some(s(0)), 0, s(5)),
            // No address in the answer: the refresh rate.
            (5000, true, 0, None, 0, s(5)),
            // Without respect_dns_ttl the TTL plays no part.
            (5000, false, 0, Some(s(1)), 0, s(5)),
            (60000, false, 0, Some(s(300)), 0, s(60)),
            // No lower bound: a TTL below the refresh rate wins.
            (60000, true, 0, Some(s(1)), 0, s(1)),
            // Jitter: random % jitter is added.
            (5000, false, 100, None, 1234, ms(5034)),
            (5000, true, 100, Some(s(2)), 99, ms(2099)),
            (5000, true, 100, Some(s(2)), 100, s(2)),
        ];
        for (i, &(refresh, respect, jit, ttl, random, want)) in cases.iter().enumerate() {
            let got = refresh_after(&dns(refresh, respect, jit), ttl, random);
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn failure_backoff() {
        let ms = Duration::from_millis;
        // Fixed: always dns_refresh_rate.
        let mut b = Backoff::new(FailureRefresh::Fixed(ms(5000)));
        assert_eq!(b.next_delay(7), ms(5000));
        assert_eq!(b.next_delay(u64::MAX), ms(5000));
        // Jittered exponential, base 1 s, max 5 s: the interval is 1, 2, 4, 5, 5 s and the
        // delay is random % interval.
        let mut b = Backoff::new(FailureRefresh::Backoff {
            base: ms(1000),
            max: ms(5000),
        });
        let r = u64::MAX; // the largest delay each interval allows
        let got: Vec<Duration> = (0..5).map(|_| b.next_delay(r)).collect();
        let want: Vec<Duration> = [1000, 2000, 4000, 5000, 5000]
            .iter()
            .map(|i| ms(r % i))
            .collect();
        assert_eq!(got, want);
        assert_eq!(b.next_delay(0), ms(0));
        b.reset();
        assert_eq!(b.next_delay(1500), ms(500), "back at base after an answer");
    }

    #[test]
    fn answers_merge_addresses_and_keep_the_smallest_ttl() {
        let a = Answer {
            addrs: vec!["127.0.0.1".parse().unwrap()],
            ttl: Some(Duration::from_secs(30)),
        };
        let b = Answer {
            addrs: vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            ttl: Some(Duration::from_secs(10)),
        };
        let m = a.clone().merge(b);
        assert_eq!(m.addrs.len(), 2);
        assert_eq!(m.ttl, Some(Duration::from_secs(10)));
        assert_eq!(a.clone().merge(Answer::default()), a);
    }

    /// Loopback names and IP literals never reach a name server.
    #[tokio::test]
    async fn local_answers_have_ttl_zero() {
        let r = shared(&ResolverConfig {
            // Nothing listens here: a query that leaves the process fails.
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            query_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
        let cases: &[(&str, DnsFamily, &[&str])] = &[
            ("127.0.0.7", DnsFamily::V4Only, &["127.0.0.7"]),
            ("127.0.0.7", DnsFamily::V6Only, &[]),
            ("::1", DnsFamily::Auto, &["::1"]),
            ("localhost", DnsFamily::V4Only, &["127.0.0.1"]),
            ("localhost", DnsFamily::V4Preferred, &["127.0.0.1"]),
            ("api.localhost", DnsFamily::V4Only, &["127.0.0.1"]),
        ];
        for (name, family, want) in cases {
            let got = r.resolve(&Arc::from(*name), *family).await.unwrap();
            let want: Vec<IpAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(got.addrs, want, "{name} {family:?}");
            if !want.is_empty() {
                assert_eq!(got.ttl, Some(Duration::ZERO), "{name}");
            }
        }
        // Same configuration, same resolver.
        let again = shared(&ResolverConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            query_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(Arc::ptr_eq(&r, &again));
    }
}
