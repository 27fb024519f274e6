//! Load balancing as Envoy does it: priority levels with overprovisioning, panic mode,
//! optional locality weighting, then the cluster's policy among the candidate hosts
//! (round robin, random, least request with power of two choices, ring hash, maglev),
//! with slow start for round robin and least request.
use crate::proxy::upstream::host::{EndpointSet, Host};
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cluster's `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { min_ring: u64, max_ring: u64 },
    Maglev { table_size: u64 },
}

impl LbPolicy {
    pub fn uses_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// Slow start (`slow_start_config`; Istio's DestinationRule `warmup`): for `window` after a
/// host joins the cluster its weight is scaled by
/// `max(min_weight, (max(age in s, 1) / window in s) ^ (1 / aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    /// `min_weight_percent` / 100 (Envoy's default 10%).
    pub min_weight: f64,
}

impl SlowStart {
    /// The factor on the weight of a host that joined `age` ago (1 once the window passed).
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        let t = (age.as_secs_f64().max(1.0) / self.window.as_secs_f64()).min(1.0);
        t.powf(1.0 / self.aggression).max(self.min_weight)
    }
}

/// Per endpoint-set balancing state.
#[derive(Debug, Default)]
pub struct LbState {
    rr: AtomicUsize,
    /// Bumped when a host's health changes (outlier ejection), invalidating hash tables.
    pub health_gen: AtomicU64,
    table: Mutex<Option<(u64, Arc<HashTable>)>>,
}

/// A consistent-hash lookup table (ring or maglev) over a fixed host list.
#[derive(Debug)]
enum HashTable {
    Ring(Vec<(u64, Arc<Host>)>),
    Maglev(Vec<Arc<Host>>),
}

/// What the request contributes to host selection.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext<'a> {
    /// The request's hash (hash policies), for ring hash and maglev.
    pub hash: Option<u64>,
    /// Hosts to avoid if possible (retry host predicate `previous_hosts`).
    pub avoid: &'a [SocketAddr],
    /// Priority levels (bit i: level i) the priority load leaves out (retry priority
    /// `previous_priorities`), unless that leaves nothing available.
    pub exclude_priorities: u64,
}

/// Envoy's `envoy.retry_priorities.previous_priorities` for one request: once
/// `update_frequency` hosts were attempted, and again every `update_frequency` attempts,
/// the levels of the attempted hosts are left out of the priority load; when that leaves
/// no level available the record starts over (and the load is the cluster's own).
#[derive(Debug)]
pub struct PreviousPriorities {
    update_frequency: usize,
    /// The level of each attempted host (`None`: no longer in the cluster).
    attempted: Vec<Option<usize>>,
    excluded: u64,
}

impl PreviousPriorities {
    pub fn new(update_frequency: u32) -> PreviousPriorities {
        PreviousPriorities {
            update_frequency: update_frequency.max(1) as usize,
            attempted: Vec::new(),
            excluded: 0,
        }
    }

    /// Notes a host attempted (at `level`, if it is still in the cluster).
    pub fn attempted(&mut self, level: Option<usize>) {
        self.attempted.push(level);
    }

    /// The levels the next host selection leaves out.
    pub fn exclusion(&mut self, set: &EndpointSet) -> u64 {
        let n = self.attempted.len();
        if n < self.update_frequency {
            return 0;
        }
        if n.is_multiple_of(self.update_frequency) {
            for level in self.attempted.iter().flatten() {
                if *level < 64 {
                    self.excluded |= 1 << level;
                }
            }
            let available: f64 = (0..set.priorities.len())
                .filter(|l| *l >= 64 || self.excluded & (1 << l) == 0)
                .map(|l| set.availability(l))
                .sum();
            if available <= 0.0 {
                self.excluded = 0;
                self.attempted.clear();
            }
        }
        self.excluded
    }
}

enum Candidates<'a> {
    All(&'a [Arc<Host>]),
    Some(SmallVec<[&'a Arc<Host>; 8]>),
}

impl<'a> Candidates<'a> {
    fn len(&self) -> usize {
        match self {
            Candidates::All(s) => s.len(),
            Candidates::Some(v) => v.len(),
        }
    }
    fn get(&self, i: usize) -> &'a Arc<Host> {
        match self {
            Candidates::All(s) => &s[i],
            Candidates::Some(v) => v[i],
        }
    }
    fn iter(&self) -> impl Iterator<Item = &'a Arc<Host>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

fn random_below(n: u64) -> u64 {
    if n <= 1 { 0 } else { rand::random_range(0..n) }
}

/// Chooses a host, or `None` when the cluster has no hosts at all, or none healthy with
/// panic mode off (Envoy's "no healthy upstream": in panic mode unhealthy hosts are still
/// chosen). `panicked` is set when
/// panic mode was used.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    set: &EndpointSet,
    lb_state: &LbState,
    policy: LbPolicy,
    slow_start: Option<&SlowStart>,
    panic_threshold: f64,
    locality_weighted: bool,
    cx: LbContext<'_>,
    panicked: &mut bool,
) -> Option<Arc<Host>> {
    if set.hosts.is_empty() {
        return None;
    }
    // Priority loads from each level's health, overprovisioned (Envoy's default 1.4).
    let mut health: SmallVec<[(f64, usize, usize); 4]> = SmallVec::new();
    for (level, p) in set.priorities.iter().enumerate() {
        let total = p.hosts.len();
        let healthy = p.hosts.iter().filter(|h| h.healthy()).count();
        health.push((set.availability(level), healthy, total));
    }
    // Levels a retry leaves out carry no load, unless nothing would be left.
    let excluded = |level: usize| level < 64 && cx.exclude_priorities & (1 << level) != 0;
    if cx.exclude_priorities != 0
        && health
            .iter()
            .enumerate()
            .any(|(level, h)| !excluded(level) && h.0 > 0.0)
    {
        for (level, h) in health.iter_mut().enumerate() {
            if excluded(level) {
                h.0 = 0.0;
            }
        }
    }
    let sum: f64 = health.iter().map(|h| h.0).sum();
    let level = if sum <= 0.0 {
        // Nothing healthy anywhere: the first non-empty level, in panic; with panic mode
        // off (threshold 0), no host at all, as in Envoy.
        if panic_threshold <= 0.0 {
            return None;
        }
        set.priorities.iter().position(|p| !p.hosts.is_empty())?
    } else {
        let norm = sum.min(100.0);
        let mut remaining = 100.0f64;
        let roll = rand::random::<f64>() * norm.min(100.0);
        let mut acc = 0.0;
        let mut chosen = health.len() - 1;
        for (i, (h, _, _)) in health.iter().enumerate() {
            let load = h.min(remaining);
            remaining -= load;
            acc += load;
            if roll < acc {
                chosen = i;
                break;
            }
        }
        chosen
    };
    let prio = &set.priorities[level];
    let (_, healthy, total) = health[level];
    let panic = total > 0 && (healthy as f64 * 100.0 / total as f64) < panic_threshold;
    *panicked = panic;
    let hosts: &[Arc<Host>] = if locality_weighted && !panic && prio.localities.len() > 1 {
        // Locality weight scaled by the locality's availability.
        let eff: SmallVec<[f64; 8]> = prio
            .localities
            .iter()
            .map(|l| {
                let t = l.hosts.len();
                let h = l.hosts.iter().filter(|h| h.healthy()).count();
                if t == 0 {
                    0.0
                } else {
                    l.weight as f64 * (set.overprovisioning * h as f64 / t as f64).min(1.0)
                }
            })
            .collect();
        let total_w: f64 = eff.iter().sum();
        if total_w <= 0.0 {
            &prio.hosts
        } else {
            let mut roll = rand::random::<f64>() * total_w;
            let mut idx = eff.len() - 1;
            for (i, w) in eff.iter().enumerate() {
                if roll < *w {
                    idx = i;
                    break;
                }
                roll -= w;
            }
            &prio.localities[idx].hosts
        }
    } else {
        &prio.hosts
    };
    let all_ok = |h: &Arc<Host>| (panic || h.healthy()) && !cx.avoid.contains(&h.addr);
    let mut cands = if hosts.iter().all(all_ok) {
        Candidates::All(hosts)
    } else {
        let v: SmallVec<[&Arc<Host>; 8]> = hosts.iter().filter(|h| all_ok(h)).collect();
        if v.is_empty() {
            // Avoiding previous hosts left nothing: fall back to health only.
            Candidates::Some(hosts.iter().filter(|h| panic || h.healthy()).collect())
        } else {
            Candidates::Some(v)
        }
    };
    if cands.len() == 0 {
        cands = Candidates::All(hosts);
    }
    let n = cands.len();
    if n == 0 {
        return None;
    }
    if let Some(ss) = slow_start
        && matches!(policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. })
        && let Some(h) = slow_start_pick(&cands, policy, ss)
    {
        return Some(h.clone());
    }
    let equal_weights = {
        let w0 = cands.get(0).weight;
        cands.iter().all(|h| h.weight == w0)
    };
    let pick = match policy {
        LbPolicy::RoundRobin => {
            let i = lb_state.rr.fetch_add(1, Ordering::Relaxed);
            if equal_weights {
                cands.get(i % n)
            } else {
                let total: u64 = cands.iter().map(|h| h.weight as u64).sum();
                weighted_at(&cands, i as u64 % total)
            }
        }
        // Envoy's random balancer picks uniformly: host weights play no part.
        LbPolicy::Random => cands.get(random_below(n as u64) as usize),
        LbPolicy::LeastRequest { choice_count } => {
            let mut best = random_pick(&cands, equal_weights);
            for _ in 1..choice_count.max(2) {
                let other = random_pick(&cands, equal_weights);
                if other.active_requests.load(Ordering::Relaxed)
                    < best.active_requests.load(Ordering::Relaxed)
                {
                    best = other;
                }
            }
            best
        }
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
            let hash = cx.hash.unwrap_or_else(rand::random);
            let key = lb_state.health_gen.load(Ordering::Relaxed) * 1024
                + (level as u64) * 4
                + (panic as u64) * 2
                + matches!(cands, Candidates::Some(_)) as u64;
            let table = {
                let mut cache = lb_state.table.lock().unwrap_or_else(|e| e.into_inner());
                match &*cache {
                    Some((k, t)) if *k == key && !cx.avoid.iter().any(|_| true) => t.clone(),
                    _ => {
                        let list: Vec<Arc<Host>> = cands.iter().cloned().collect();
                        let t = Arc::new(build_table(policy, &list));
                        if cx.avoid.is_empty() {
                            *cache = Some((key, t.clone()));
                        }
                        t
                    }
                }
            };
            return Some(lookup(&table, hash));
        }
    };
    Some(pick.clone())
}

/// While a candidate is in its slow-start window: a pick by the scaled weights (random in
/// proportion for round robin; power of two such draws for least request). `None` when
/// no candidate is in its window, and the usual policy applies.
fn slow_start_pick<'a>(
    cands: &Candidates<'a>,
    policy: LbPolicy,
    ss: &SlowStart,
) -> Option<&'a Arc<Host>> {
    let now = tokio::time::Instant::now();
    let age = |h: &Host| now.saturating_duration_since(h.created);
    if cands.iter().all(|h| age(h) >= ss.window) {
        return None;
    }
    let weights: SmallVec<[f64; 8]> = cands
        .iter()
        .map(|h| h.weight as f64 * ss.factor(age(h)))
        .collect();
    let total: f64 = weights.iter().sum();
    let draw = || {
        let mut roll = rand::random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if roll < *w {
                return cands.get(i);
            }
            roll -= w;
        }
        cands.get(cands.len() - 1)
    };
    Some(match policy {
        LbPolicy::LeastRequest { choice_count } => {
            let mut best = draw();
            for _ in 1..choice_count.max(2) {
                let other = draw();
                if other.active_requests.load(Ordering::Relaxed)
                    < best.active_requests.load(Ordering::Relaxed)
                {
                    best = other;
                }
            }
            best
        }
        _ => draw(),
    })
}

fn weighted_at<'a>(cands: &Candidates<'a>, mut point: u64) -> &'a Arc<Host> {
    for h in cands.iter() {
        if point < h.weight as u64 {
            return h;
        }
        point -= h.weight as u64;
    }
    cands.get(cands.len() - 1)
}

fn random_pick<'a>(cands: &Candidates<'a>, equal_weights: bool) -> &'a Arc<Host> {
    if equal_weights {
        cands.get(random_below(cands.len() as u64) as usize)
    } else {
        let total: u64 = cands.iter().map(|h| h.weight as u64).sum();
        weighted_at(cands, random_below(total))
    }
}

/// xxHash64 with seed 0, Envoy's hash for ring building and hash policies.
pub fn xxhash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// Envoy combines several hash policies by rotating the running hash and xor-ing.
pub fn combine_hash(acc: Option<u64>, h: u64) -> u64 {
    match acc {
        None => h,
        Some(a) => a.rotate_left(1) ^ h,
    }
}

fn build_table(policy: LbPolicy, hosts: &[Arc<Host>]) -> HashTable {
    let total_w: f64 = hosts.iter().map(|h| h.weight as f64).sum();
    match policy {
        LbPolicy::RingHash { min_ring, max_ring } => {
            // Envoy's ring: each host gets hashes in proportion to its normalized weight,
            // keyed "address_i", scaled so the lightest host has enough entries.
            let min_w = hosts
                .iter()
                .map(|h| h.weight as f64 / total_w)
                .fold(f64::INFINITY, f64::min);
            let scale = ((min_w * min_ring as f64).ceil() / min_w).min(max_ring as f64);
            let mut ring = Vec::with_capacity(scale as usize + hosts.len());
            let mut current = 0.0f64;
            let mut target = 0.0f64;
            let mut key = String::with_capacity(64);
            for h in hosts {
                let base = h.addr.to_string();
                target += scale * (h.weight as f64 / total_w);
                let mut i = 0u64;
                while current < target {
                    key.clear();
                    key.push_str(&base);
                    key.push('_');
                    key.push_str(&i.to_string());
                    ring.push((xxhash(key.as_bytes()), h.clone()));
                    i += 1;
                    current += 1.0;
                }
            }
            ring.sort_by_key(|(h, _)| *h);
            HashTable::Ring(ring)
        }
        LbPolicy::Maglev { table_size } => {
            // Envoy's Maglev: hosts in the order of their keys (the address), each with a
            // permutation (offset, skip) of the table; in iteration r a host whose
            // normalized weight w has r * w >= its target takes its next free entry and
            // its target grows by the largest weight (every host takes one in the first).
            struct Entry {
                host: usize,
                offset: u64,
                skip: u64,
                weight: f64,
                target: f64,
                next: u64,
            }
            let m = table_size as usize;
            let mut keyed: Vec<(String, usize)> = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.addr.to_string(), i))
                .collect();
            keyed.sort();
            let mut entries: Vec<Entry> = keyed
                .iter()
                .map(|(key, i)| Entry {
                    host: *i,
                    offset: xxhash(key.as_bytes()) % table_size,
                    skip: xxhash_rust::xxh64::xxh64(key.as_bytes(), 1) % (table_size - 1) + 1,
                    weight: hosts[*i].weight as f64 / total_w,
                    target: 0.0,
                    next: 0,
                })
                .collect();
            let max_w = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
            let mut table: Vec<Option<usize>> = vec![None; m];
            let mut filled = 0;
            let mut iteration = 1u64;
            while filled < m && !entries.is_empty() {
                for e in entries.iter_mut() {
                    if filled >= m {
                        break;
                    }
                    if (iteration as f64) * e.weight < e.target {
                        continue;
                    }
                    e.target += max_w;
                    let mut c = ((e.offset + e.skip * e.next) % table_size) as usize;
                    while table[c].is_some() {
                        e.next += 1;
                        c = ((e.offset + e.skip * e.next) % table_size) as usize;
                    }
                    table[c] = Some(e.host);
                    e.next += 1;
                    filled += 1;
                }
                iteration += 1;
            }
            HashTable::Maglev(
                table
                    .into_iter()
                    .map(|i| hosts[i.unwrap_or(0)].clone())
                    .collect(),
            )
        }
        _ => HashTable::Maglev(hosts.to_vec()),
    }
}

fn lookup(table: &HashTable, hash: u64) -> Arc<Host> {
    match table {
        HashTable::Ring(ring) => {
            let i = ring.partition_point(|(h, _)| *h < hash);
            ring[if i == ring.len() { 0 } else { i }].1.clone()
        }
        HashTable::Maglev(t) => t[(hash % t.len() as u64) as usize].clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::host::{Locality, Priority};
    use std::collections::HashMap;

    fn host(port: u16, weight: u32) -> Arc<Host> {
        Arc::new(Host::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            None,
            weight,
            true,
        ))
    }

    fn set(levels: Vec<Vec<Arc<Host>>>) -> EndpointSet {
        EndpointSet::new(
            levels
                .into_iter()
                .map(|hosts| Priority {
                    localities: vec![Locality {
                        name: "".into(),
                        weight: 1,
                        hosts: hosts.clone(),
                    }],
                    hosts,
                })
                .collect(),
            1.4,
        )
    }

    fn distribution(
        set: &EndpointSet,
        policy: LbPolicy,
        slow_start: Option<&SlowStart>,
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<u16, usize> {
        let st = LbState::default();
        let mut out = HashMap::new();
        for i in 0..n {
            let mut p = false;
            let h = choose(
                set,
                &st,
                policy,
                slow_start,
                50.0,
                false,
                LbContext {
                    hash: hash(i),
                    avoid: &[],
                    exclude_priorities: 0,
                },
                &mut p,
            )
            .unwrap();
            *out.entry(h.addr.port()).or_default() += 1;
        }
        out
    }

    #[test]
    fn round_robin_and_weights() {
        let s = set(vec![vec![host(1, 1), host(2, 1), host(3, 1)]]);
        let d = distribution(&s, LbPolicy::RoundRobin, None, 300, |_| None);
        assert_eq!(d.values().copied().collect::<Vec<_>>(), vec![100; 3]);
        let s = set(vec![vec![host(1, 1), host(2, 3)]]);
        let d = distribution(&s, LbPolicy::RoundRobin, None, 400, |_| None);
        assert_eq!((d[&1], d[&2]), (100, 300));
        // Random ignores weights, as Envoy's does.
        let d = distribution(&s, LbPolicy::Random, None, 8000, |_| None);
        let share = d[&2] as f64 / 8000.0;
        assert!((0.47..0.53).contains(&share), "{share}");
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let busy = host(1, 1);
        busy.active_requests.store(10, Ordering::Relaxed);
        let s = set(vec![vec![busy, host(2, 1)]]);
        let d = distribution(
            &s,
            LbPolicy::LeastRequest { choice_count: 2 },
            None,
            1000,
            |_| None,
        );
        // P2C picks the busy host only when both draws land on it (~25%).
        let busy_share = *d.get(&1).unwrap_or(&0) as f64 / 1000.0;
        assert!((0.18..0.32).contains(&busy_share), "{busy_share}");
    }

    #[test]
    fn ring_hash_is_consistent_and_spreads() {
        let s = set(vec![vec![host(1, 1), host(2, 1), host(3, 1)]]);
        let policy = LbPolicy::RingHash {
            min_ring: 1024,
            max_ring: 8 * 1024 * 1024,
        };
        let st = LbState::default();
        let mut p = false;
        let pick = |k: &str| {
            choose(
                &s,
                &st,
                policy,
                None,
                50.0,
                false,
                LbContext {
                    hash: Some(xxhash(k.as_bytes())),
                    avoid: &[],
                    exclude_priorities: 0,
                },
                &mut p.clone(),
            )
            .unwrap()
            .addr
        };
        assert_eq!(pick("user-1"), pick("user-1"));
        let d = distribution(&s, policy, None, 3000, |i| {
            Some(xxhash(format!("k{i}").as_bytes()))
        });
        for v in d.values() {
            assert!((700..1300).contains(v), "{d:?}");
        }
        let m = LbPolicy::Maglev { table_size: 65537 };
        let d = distribution(&s, m, None, 3000, |i| {
            Some(xxhash(format!("k{i}").as_bytes()))
        });
        for v in d.values() {
            assert!((800..1200).contains(v), "{d:?}");
        }
        p = true;
        let _ = p;
    }

    #[test]
    fn maglev_tables_follow_envoys_construction() {
        let owners = |hosts: Vec<Arc<Host>>, size: u64| -> Vec<u16> {
            match build_table(LbPolicy::Maglev { table_size: size }, &hosts) {
                HashTable::Maglev(t) => t.iter().map(|h| h.addr.port()).collect(),
                HashTable::Ring(_) => unreachable!(),
            }
        };
        // Hosts are taken in the order of their addresses, not of the endpoint list.
        let (a, b, c) = (host(9000, 1), host(10000, 1), host(8000, 1));
        let one = owners(vec![a.clone(), b.clone(), c.clone()], 17);
        assert_eq!(one, owners(vec![c.clone(), a.clone(), b.clone()], 17));
        // The first entries: "127.0.0.1:10000" < "127.0.0.1:8000" < "127.0.0.1:9000" take
        // their offsets in that order, as Envoy's first iteration does.
        let first = |port: u16| xxhash(format!("127.0.0.1:{port}").as_bytes()) % 17;
        assert_eq!(one[first(10000) as usize], 10000);
        // Weights: every host takes an entry in the first iteration, then one each time
        // iteration * weight reaches its next target (weights 2:1 → 2/3 of the table).
        let counts = owners(vec![host(1, 2), host(2, 1)], 65537);
        let heavy = counts.iter().filter(|p| **p == 1).count();
        assert!((43600..43800).contains(&heavy), "{heavy}");
    }

    #[test]
    fn priorities_failover_and_panic() {
        let p0 = vec![host(1, 1), host(2, 1)];
        let p1 = vec![host(3, 1)];
        let s = set(vec![p0.clone(), p1]);
        // All of P0 healthy: P1 gets nothing.
        let d = distribution(&s, LbPolicy::RoundRobin, None, 100, |_| None);
        assert_eq!(d.get(&3), None);
        // One of two P0 hosts ejected: P0 health = 1.4 * 50% = 70%, P1 takes the other 30%.
        p0[0].ejected.store(true, Ordering::Relaxed);
        let d = distribution(&s, LbPolicy::RoundRobin, None, 4000, |_| None);
        assert_eq!(d.get(&1), None);
        let p1_share = d[&3] as f64 / 4000.0;
        assert!((0.26..0.34).contains(&p1_share), "{d:?}");
        // A single level with every host ejected: panic mode still routes to them.
        let only = vec![host(5, 1)];
        only[0].ejected.store(true, Ordering::Relaxed);
        let s = set(vec![only]);
        let st = LbState::default();
        let mut panicked = false;
        let h = choose(
            &s,
            &st,
            LbPolicy::RoundRobin,
            None,
            50.0,
            false,
            LbContext::default(),
            &mut panicked,
        );
        assert_eq!(h.unwrap().addr.port(), 5);
        assert!(panicked);
        // Panic mode off (threshold 0, Istio's minHealthPercent default): no host.
        assert!(
            choose(
                &s,
                &st,
                LbPolicy::RoundRobin,
                None,
                0.0,
                false,
                LbContext::default(),
                &mut panicked
            )
            .is_none()
        );
        // No hosts at all: no healthy upstream.
        assert!(
            choose(
                &set(vec![vec![]]),
                &st,
                LbPolicy::RoundRobin,
                None,
                50.0,
                false,
                LbContext::default(),
                &mut panicked
            )
            .is_none()
        );
    }

    #[test]
    fn retries_leave_out_the_priorities_already_tried() {
        let s = set(vec![vec![host(1, 1)], vec![host(2, 1)], vec![host(3, 1)]]);
        let st = LbState::default();
        let pick = |exclude_priorities: u64| {
            let mut p = false;
            let cx = LbContext {
                exclude_priorities,
                ..Default::default()
            };
            choose(&s, &st, LbPolicy::RoundRobin, None, 50.0, false, cx, &mut p)
                .unwrap()
                .addr
                .port()
        };
        assert_eq!(pick(0), 1);
        assert_eq!(pick(0b1), 2);
        assert_eq!(pick(0b11), 3);
        // Nothing left: the cluster's own load.
        assert_eq!(pick(0b111), 1);

        // update_frequency 2: the first two attempts use the cluster's load, the third
        // leaves out what the first two tried, the fourth keeps that; at the sixth, every
        // level has been tried, so the record starts over.
        let mut pp = PreviousPriorities::new(2);
        assert_eq!(pp.exclusion(&s), 0);
        pp.attempted(Some(0));
        assert_eq!(pp.exclusion(&s), 0);
        pp.attempted(Some(0));
        assert_eq!(pp.exclusion(&s), 0b1);
        pp.attempted(Some(1));
        assert_eq!(pp.exclusion(&s), 0b1);
        pp.attempted(Some(1));
        assert_eq!(pp.exclusion(&s), 0b11);
        pp.attempted(Some(2));
        assert_eq!(pp.exclusion(&s), 0b11);
        pp.attempted(Some(2));
        assert_eq!(pp.exclusion(&s), 0);
        pp.attempted(Some(0));
        assert_eq!(pp.exclusion(&s), 0);
        pp.attempted(Some(0));
        assert_eq!(pp.exclusion(&s), 0b1);
    }

    #[test]
    fn avoid_previous_hosts_when_possible() {
        let s = set(vec![vec![host(1, 1), host(2, 1)]]);
        let st = LbState::default();
        let avoid = [SocketAddr::from(([127, 0, 0, 1], 1))];
        for _ in 0..20 {
            let mut p = false;
            let h = choose(
                &s,
                &st,
                LbPolicy::Random,
                None,
                50.0,
                false,
                LbContext {
                    hash: None,
                    avoid: &avoid,
                    exclude_priorities: 0,
                },
                &mut p,
            )
            .unwrap();
            assert_eq!(h.addr.port(), 2);
        }
    }

    #[test]
    fn slow_start_factor_follows_envoys_formula() {
        let ss = |aggression: f64, min: f64| SlowStart {
            window: Duration::from_secs(10),
            aggression,
            min_weight: min,
        };
        let secs = Duration::from_secs;
        for (s, age, want) in [
            // Linear: max(age, 1 s) / window, floored at min_weight.
            (ss(1.0, 0.1), secs(0), 0.1),
            (ss(1.0, 0.0), secs(0), 0.1),
            (ss(1.0, 0.1), secs(5), 0.5),
            (ss(1.0, 0.1), Duration::from_millis(9_900), 0.99),
            (ss(1.0, 0.1), secs(10), 1.0),
            (ss(1.0, 0.1), secs(60), 1.0),
            // Aggression 2: the square root of the time factor.
            (ss(2.0, 0.1), Duration::from_millis(2_500), 0.5),
            // Aggression 0.5: the square; the floor applies early on.
            (ss(0.5, 0.1), secs(2), 0.1),
            (ss(0.5, 0.1), secs(5), 0.25),
        ] {
            let got = s.factor(age);
            assert!(
                (got - want).abs() < 1e-9,
                "{s:?} at {age:?}: {got} != {want}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_scales_new_hosts_until_the_window_ends() {
        let old = host(1, 1);
        tokio::time::advance(Duration::from_secs(100)).await;
        let new = host(2, 1);
        let s = set(vec![vec![old, new]]);
        let ss = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight: 0.1,
        };
        let n = 20_000;
        let share = |d: &HashMap<u16, usize>| *d.get(&2).unwrap_or(&0) as f64 / n as f64;
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest { choice_count: 2 },
        ] {
            // Just added: weight 0.1 against 1.
            let d = distribution(&s, policy, Some(&ss), n, |_| None);
            let expected = match policy {
                LbPolicy::RoundRobin => 0.1 / 1.1,
                // Two draws, both of the new host (no requests in flight anywhere).
                _ => 1.0 - (1.0 / 1.1f64).powi(2) - (1.0 / 1.1) * (0.1 / 1.1),
            };
            let sd = (expected * (1.0 - expected) / n as f64).sqrt();
            assert!(
                (share(&d) - expected).abs() < 5.0 * sd,
                "{policy:?}: new host share {} (expected {expected})",
                share(&d)
            );
        }
        // Half way: weight 0.5.
        tokio::time::advance(Duration::from_secs(5)).await;
        let d = distribution(&s, LbPolicy::RoundRobin, Some(&ss), n, |_| None);
        let expected = 0.5 / 1.5;
        let sd = (expected * (1.0 - expected) / n as f64).sqrt();
        assert!((share(&d) - expected).abs() < 5.0 * sd, "{}", share(&d));
        // After the window: plain round robin, exactly even.
        tokio::time::advance(Duration::from_secs(5)).await;
        let d = distribution(&s, LbPolicy::RoundRobin, Some(&ss), 1000, |_| None);
        assert_eq!((d[&1], d[&2]), (500, 500));
    }
}
