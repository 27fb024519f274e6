//! Hosts (endpoints) and the endpoint set of a cluster, grouped by priority and locality.
use crate::proxy::upstream::pool::HostPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One upstream endpoint. Shared by every worker; survives config updates that keep its
/// address (so outlier state, counters and pooled connections carry over).
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// The endpoint's hostname (for `auto_host_rewrite`), if known.
    pub hostname: Option<Arc<str>>,
    pub weight: u32,
    /// Health from EDS (`health_status`): false for UNHEALTHY, DRAINING, TIMEOUT.
    pub eds_healthy: bool,
    /// Set while outlier detection has ejected the host.
    pub ejected: AtomicBool,
    pub active_requests: AtomicU32,
    pub active_connections: AtomicU32,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway_failure: AtomicU32,
    /// When the current ejection started (outlier detection only; off the hot path).
    pub ejected_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    pub times_ejected: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_success: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// When the host joined the cluster (slow start counts from here).
    pub created: tokio::time::Instant,
    pools: Box<[HostPool]>,
}

impl Host {
    pub fn new(
        addr: SocketAddr,
        hostname: Option<Arc<str>>,
        weight: u32,
        eds_healthy: bool,
    ) -> Host {
        let workers = crate::proxy::runtime::worker_count().max(1);
        Host {
            addr,
            hostname,
            weight: weight.max(1),
            eds_healthy,
            ejected: AtomicBool::new(false),
            active_requests: AtomicU32::new(0),
            active_connections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway_failure: AtomicU32::new(0),
            ejected_at: std::sync::Mutex::new(None),
            times_ejected: AtomicU32::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            rq_success: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            created: tokio::time::Instant::now(),
            pools: (0..workers).map(|_| HostPool::default()).collect(),
        }
    }

    /// Whether load balancing may pick this host outside panic mode.
    pub fn healthy(&self) -> bool {
        self.eds_healthy && !self.ejected.load(Ordering::Relaxed)
    }

    /// The connection pool of the calling worker.
    pub fn pool(&self, worker: usize) -> &HostPool {
        &self.pools[worker % self.pools.len()]
    }

    /// The same endpoint with new EDS attributes, keeping the runtime state.
    pub fn same_endpoint(
        &self,
        hostname: &Option<Arc<str>>,
        weight: u32,
        eds_healthy: bool,
    ) -> bool {
        &self.hostname == hostname
            && self.weight == weight.max(1)
            && self.eds_healthy == eds_healthy
    }
}

/// The hosts of one locality within a priority.
#[derive(Debug, Clone)]
pub struct Locality {
    pub name: Arc<str>,
    pub weight: u32,
    pub hosts: Vec<Arc<Host>>,
}

/// The hosts of one priority level.
#[derive(Debug, Clone, Default)]
pub struct Priority {
    pub localities: Vec<Locality>,
    pub hosts: Vec<Arc<Host>>,
}

/// All hosts of a cluster at one moment, grouped by priority then locality.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub priorities: Vec<Priority>,
    /// Every host once, in config order.
    pub hosts: Vec<Arc<Host>>,
    /// `policy.overprovisioning_factor` / 100 (Envoy's default 1.4).
    pub overprovisioning: f64,
    /// Load-balancer state for this set (round-robin position, hash tables).
    pub lb: crate::proxy::upstream::lb::LbState,
}

impl EndpointSet {
    pub fn new(priorities: Vec<Priority>, overprovisioning: f64) -> EndpointSet {
        let hosts = priorities
            .iter()
            .flat_map(|p| p.hosts.iter().cloned())
            .collect();
        EndpointSet {
            priorities,
            hosts,
            overprovisioning,
            lb: Default::default(),
        }
    }

    pub fn find(&self, addr: SocketAddr) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.addr == addr)
    }

    /// The priority level of the host at `addr`.
    pub fn priority_of(&self, addr: SocketAddr) -> Option<usize> {
        self.priorities
            .iter()
            .position(|p| p.hosts.iter().any(|h| h.addr == addr))
    }

    /// Envoy's availability of a level: its healthy share, overprovisioned, in percent.
    pub fn availability(&self, level: usize) -> f64 {
        let p = &self.priorities[level];
        if p.hosts.is_empty() {
            return 0.0;
        }
        let healthy = p.hosts.iter().filter(|h| h.healthy()).count();
        (self.overprovisioning * healthy as f64 * 100.0 / p.hosts.len() as f64).min(100.0)
    }
}
