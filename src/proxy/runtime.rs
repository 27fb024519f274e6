//! The running gateway: one current-thread tokio runtime per worker (each with its own
//! `SO_REUSEPORT` socket per listener and its own upstream pools), a control thread for
//! DNS, outlier detection and the admin servers, and the one `ArcSwap<Snapshot>` that
//! every request reads its config from.
use crate::proxy::access_log::{AccessLog, AccessLogMode, RequestLog};
use crate::proxy::compile::{CompileError, compile_parts, secret_error};
use crate::proxy::connection::serve_connection;
use crate::proxy::handoff::{HandOver, HandedSocket, Inherited, SocketKind};
use crate::proxy::listener::Listener;
use crate::proxy::snapshot::Snapshot;
use crate::proxy::stats::{SourceLabels, Stats};
use crate::proxy::tls::TlsRuntime;
use crate::proxy::upstream::cluster::Discovery;
use crate::xds::ResourceSet;
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

static WORKERS: AtomicUsize = AtomicUsize::new(1);

/// The number of workers (hosts size their per-worker pools with it).
pub fn worker_count() -> usize {
    WORKERS.load(Ordering::Relaxed)
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Worker threads (0 = one per core).
    pub concurrency: usize,
    pub admin_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    pub prometheus_addr: Option<SocketAddr>,
    pub access_log: AccessLogMode,
    /// How long in-flight requests may take to finish when draining.
    pub drain_timeout: Duration,
    /// Open connections per listener (across workers); further ones are accepted and
    /// closed at once (Envoy's listener connection limit).
    pub max_connections: usize,
    /// Open connections across all listeners; `None`: no global limit.
    pub max_connections_total: Option<usize>,
    /// Requests per downstream connection; `None`: no limit.
    pub max_requests_per_connection: Option<u32>,
    /// The heap size the overload manager protects; `None`: no memory protection.
    pub max_heap_bytes: Option<u64>,
    /// The cgroup memory limit `max_heap_bytes` was computed from (`--max-heap P%`),
    /// shown in `/stats`.
    pub memory_limit_bytes: Option<u64>,
    /// Fractions of `max_heap_bytes` at which the overload actions start.
    pub heap_thresholds: crate::proxy::overload::HeapThresholds,
    pub source: SourceLabels,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            concurrency: 0,
            admin_addr: None,
            health_addr: None,
            prometheus_addr: None,
            access_log: AccessLogMode::Json,
            drain_timeout: Duration::from_secs(5),
            max_connections: 100_000,
            max_connections_total: None,
            max_requests_per_connection: None,
            max_heap_bytes: None,
            memory_limit_bytes: None,
            heap_thresholds: Default::default(),
            source: SourceLabels {
                workload: "meshgate".into(),
                namespace: "istio-system".into(),
                app: "meshgate".into(),
            },
        }
    }
}

/// State every worker and the admin servers share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Secrets, TLS sessions and ACME challenges, shared by every snapshot.
    pub tls: Arc<TlsRuntime>,
    pub stats: Stats,
    pub access_log: Arc<AccessLog>,
    /// Set when the whole gateway drains: responses carry `connection: close`.
    pub draining: AtomicBool,
    /// Set after the first snapshot is published.
    pub ready: AtomicBool,
    /// Set when a successor process took the listening sockets over: the service is
    /// ready (the successor serves it) while this process drains.
    pub handed_over: AtomicBool,
    /// Whether listeners accept: false in a successor until its predecessor stopped
    /// accepting (connections wait in the accept queues meanwhile).
    pub(crate) accepting: watch::Sender<bool>,
    pub workers: usize,
    pub(crate) quit: watch::Sender<bool>,
    pub(crate) drain_requested: watch::Sender<bool>,
    /// `/quitquitquit` was called.
    pub(crate) admin_quit: watch::Sender<bool>,
    /// The gateway's own workload certificate, when it has joined a mesh with one.
    pub identity: arc_swap::ArcSwapOption<crate::identity::IdentityStatus>,
    /// Local rate limit buckets, kept across configuration updates.
    pub local_rate_limits: crate::proxy::http::filters::local_ratelimit::LocalRateLimits,
    /// Remote JWT key sets, kept across configuration updates.
    pub jwks: crate::proxy::http::filters::jwt_authn::JwksStore,
    /// Connection limits, requests per connection and the heap monitor's actions.
    pub overload: Arc<crate::proxy::overload::Overload>,
    /// Samples of the request counters, for the status page's rates.
    pub rates: crate::proxy::rates::Rates,
    /// The xDS client's state, when the gateway follows a control plane.
    pub xds: std::sync::OnceLock<crate::xds::client::ClientHandle>,
}

impl Shared {
    /// Accounts one finished request (stats, access log).
    pub fn record(&self, log: &RequestLog, worker: usize) {
        self.stats.record(log, worker);
        self.access_log.write(log);
    }
}

enum WorkerCmd {
    Listen {
        listener: Arc<Listener>,
        socket: std::net::TcpListener,
        stop: watch::Receiver<bool>,
        conns: Arc<AtomicUsize>,
        max_connections: usize,
    },
}

struct Bound {
    addr: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    /// Copies of the workers' sockets: handed to a listener replacing this one at the
    /// same address, or to a successor process, so no accept queue is ever dropped.
    sockets: Vec<std::net::TcpListener>,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    workers: Vec<(
        mpsc::UnboundedSender<WorkerCmd>,
        std::thread::JoinHandle<()>,
    )>,
    bound: Arc<Mutex<HashMap<String, Bound>>>,
    /// Sockets handed over by the gateway this one replaces, until used or released.
    inherited: Mutex<Inherited>,
    /// The admin, health and Prometheus sockets (copies), and whether they accept.
    servers: Arc<Vec<HandedSocket>>,
    server_state: Arc<watch::Sender<u8>>,
    control: tokio::runtime::Handle,
    control_stop: Option<tokio::sync::oneshot::Sender<()>>,
    dns_tasks: Mutex<HashSet<usize>>,
    apply_lock: Mutex<()>,
    opts: GatewayOptions,
    admin_local: Option<SocketAddr>,
    health_local: Option<SocketAddr>,
    prometheus_local: Option<SocketAddr>,
}

impl Gateway {
    /// Starts the workers, the control thread and the admin/health/Prometheus servers.
    /// Listeners come with the first [`Gateway::apply`].
    pub fn start(opts: GatewayOptions) -> std::io::Result<Gateway> {
        Gateway::start_inherited(opts, None)
    }

    /// Like [`start`](Self::start), taking over the sockets a running gateway handed
    /// over: listeners (matched by configured address) and the admin, health and
    /// Prometheus servers use them instead of binding. The servers answer only after
    /// [`serve_inherited`](Self::serve_inherited).
    pub fn start_inherited(
        opts: GatewayOptions,
        inherited: Option<Inherited>,
    ) -> std::io::Result<Gateway> {
        let upgrading = inherited.is_some();
        let mut inherited = inherited.unwrap_or_default();
        let n = if opts.concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.concurrency
        };
        WORKERS.store(n, Ordering::Relaxed);
        let (quit, _) = watch::channel(false);
        let (drain_requested, _) = watch::channel(false);
        let tls = TlsRuntime::new(Default::default()).map_err(std::io::Error::other)?;
        let initial = Snapshot {
            tls: Some(tls.clone()),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(initial),
            tls,
            stats: Stats::new(n, opts.source.clone()),
            access_log: AccessLog::new(opts.access_log),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            accepting: watch::channel(!upgrading).0,
            workers: n,
            identity: arc_swap::ArcSwapOption::empty(),
            local_rate_limits: Default::default(),
            quit,
            drain_requested,
            admin_quit: watch::channel(false).0,
            jwks: Default::default(),
            overload: Arc::new(
                crate::proxy::overload::Overload::new(
                    opts.max_connections_total,
                    opts.max_requests_per_connection,
                    opts.max_heap_bytes,
                    opts.heap_thresholds,
                )
                .with_memory_limit(opts.memory_limit_bytes),
            ),
            rates: Default::default(),
            xds: std::sync::OnceLock::new(),
        });
        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("meshgate-worker-{id}"))
                .spawn(move || worker_main(id, shared, rx))?;
            workers.push((tx, handle));
        }
        let control_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let control = control_rt.handle().clone();
        shared.overload.spawn_monitor(&control);
        crate::proxy::rates::spawn_sampler(&control, &shared);
        let (control_stop, control_stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("meshgate-control".into())
            .spawn(move || {
                control_rt.block_on(async move {
                    let _ = control_stop_rx.await;
                })
            })?;
        let (server_state, _) = watch::channel(if upgrading {
            crate::proxy::admin::SERVER_PAUSED
        } else {
            crate::proxy::admin::SERVER_ACCEPTING
        });
        let mut servers = Vec::new();
        let mut locals = [None; 3];
        for (i, (kind, addr, serve)) in [
            (
                SocketKind::Admin,
                opts.admin_addr,
                crate::proxy::admin::serve_admin as ServeFn,
            ),
            (
                SocketKind::Health,
                opts.health_addr,
                crate::proxy::admin::serve_health,
            ),
            (
                SocketKind::Prometheus,
                opts.prometheus_addr,
                crate::proxy::admin::serve_prometheus,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(addr) = addr else { continue };
            let socket = match inherited.take_server(kind, addr) {
                Some(s) => crate::proxy::admin::ServerSocket::Inherited(s),
                None => crate::proxy::admin::ServerSocket::Bind(addr),
            };
            let socket = serve(&control, socket, shared.clone(), server_state.subscribe())?;
            locals[i] = Some(socket.local_addr()?);
            servers.push(HandedSocket { kind, addr, socket });
        }
        let [admin_local, health_local, prometheus_local] = locals;
        // Outlier detection intervals.
        {
            let shared = shared.clone();
            control.spawn(async move {
                let mut last: HashMap<String, tokio::time::Instant> = HashMap::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let snap = shared.snapshot.load_full();
                    let now = tokio::time::Instant::now();
                    for (name, c) in &snap.clusters {
                        let Some(o) = &c.outlier else { continue };
                        let due = last.get(name).is_none_or(|t| now >= *t + o.interval);
                        if due {
                            crate::proxy::upstream::outlier::tick(c, now);
                            last.insert(name.clone(), now);
                        }
                    }
                    last.retain(|k, _| snap.clusters.contains_key(k));
                }
            });
        }
        Ok(Gateway {
            shared,
            workers,
            bound: Arc::new(Mutex::new(HashMap::new())),
            inherited: Mutex::new(inherited),
            servers: Arc::new(servers),
            server_state: Arc::new(server_state),
            control,
            control_stop: Some(control_stop),
            dns_tasks: Mutex::new(HashSet::new()),
            apply_lock: Mutex::new(()),
            opts,
            admin_local,
            health_local,
            prometheus_local,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The gateway's TLS state: the secret store (ACME publishes its certificates there)
    /// and the pending ACME challenges its listeners answer.
    pub fn tls(&self) -> &Arc<TlsRuntime> {
        &self.shared.tls
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_local
    }

    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_local
    }

    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus_local
    }

    /// The address a listener is bound to (resolves port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|b| b.local)
    }

    /// Compiles and publishes a resource set: one atomic swap. On error nothing changes
    /// (the last good snapshot keeps serving), as an Envoy NACK. The set's `Secret`s are
    /// the gateway's SDS secrets from now on (others are forgotten).
    pub fn apply(&self, set: ResourceSet, version: &str) -> Result<(), ApplyError> {
        let applied = self.apply_set(set, version, true);
        // The set and what compiling it took are freed: their pages go back to the OS.
        crate::proxy::malloc::release_freed_memory();
        applied
    }

    /// Like [`apply`](Self::apply) for a set whose secrets come on their own
    /// ([`update_secrets`](Self::update_secrets), an xDS client's SDS): the secret store
    /// is left as it is, and the set needs no `Secret`s.
    pub fn apply_without_secrets(&self, set: ResourceSet, version: &str) -> Result<(), ApplyError> {
        let applied = self.apply_set(set, version, false);
        crate::proxy::malloc::release_freed_memory();
        applied
    }

    /// Publishes SDS secrets as they arrive, without compiling anything: filter chains
    /// read their certificates from the store at each handshake, so the next handshake
    /// of every chain naming a secret serves the new one. Returns the secrets that
    /// cannot be used (they keep their previous material). `removed` ones are forgotten
    /// unless a listener still names them.
    /// Shows the status of the gateway's workload certificate on the stats and admin
    /// pages.
    pub fn set_identity_status(&self, status: Arc<crate::identity::IdentityStatus>) {
        self.shared.identity.store(Some(status));
    }

    /// Shows the state of the xDS client that configures this gateway on the status
    /// page. Set once.
    pub fn set_xds_client(&self, client: crate::xds::client::ClientHandle) {
        let _ = self.shared.xds.set(client);
    }

    pub fn update_secrets(
        &self,
        secrets: &[crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
        removed: &[String],
    ) -> Vec<(String, crate::tls::TlsError)> {
        self.shared.tls.store.update_sds(secrets, removed)
    }

    fn apply_set(
        &self,
        set: ResourceSet,
        version: &str,
        own_secrets: bool,
    ) -> Result<(), ApplyError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.shared.snapshot.load_full();
        let store = &self.shared.tls.store;
        // Secrets are parsed (those that changed) and checked first: one that cannot be
        // used refuses the update. They are published into the store before the TLS
        // contexts are built (they read them by name); open connections keep the keys
        // they started with.
        let compiled = if own_secrets {
            let (prepared, errors) = store.prepare_sds(&set.secrets);
            match errors.first() {
                Some((name, e)) => Err(secret_error(name, e)),
                None => {
                    store.publish_sds(prepared);
                    store.forget_sds_except(&set.secrets);
                    compile_parts(&set, Some(&previous), &self.shared.tls)
                }
            }
        } else {
            compile_parts(&set, Some(&previous), &self.shared.tls)
        };
        let snap = match compiled {
            Ok((listeners, clusters)) => {
                // The snapshot keeps the set for /config_dump, without private keys
                // (the store holds the parsed material; nothing else needs the PEM).
                let mut set = set;
                for s in &mut set.secrets {
                    crate::xds::json::redact_secret_in_place(s);
                }
                let mut snap = Snapshot::new(version, set, listeners, clusters);
                snap.tls = Some(self.shared.tls.clone());
                snap
            }
            Err(e) => {
                self.shared
                    .stats
                    .config_rejections
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApplyError::Compile(e));
            }
        };
        // DNS clusters new in this snapshot are resolved once before it is published
        // (Envoy warms clusters before using them).
        let new_dns: Vec<_> = snap
            .clusters
            .values()
            .filter(|c| {
                matches!(
                    c.discovery,
                    Discovery::StrictDns(_) | Discovery::LogicalDns(_)
                )
            })
            .filter(|c| {
                !self
                    .dns_tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&(Arc::as_ptr(&c.endpoints) as usize))
            })
            .cloned()
            .collect();
        // Their resolvers start now and keep running while the endpoint set lives (a
        // rejected update drops it, and its resolver stops).
        if !new_dns.is_empty() {
            let first_rounds: Vec<_> = new_dns
                .iter()
                .filter_map(|c| crate::proxy::upstream::dns::spawn(&self.control, c))
                .collect();
            let (tx, rx) = std::sync::mpsc::channel();
            self.control.spawn(async move {
                let all = futures::future::join_all(first_rounds);
                let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(6));
        }
        // Bind new listeners before publishing; a bind failure rejects the update.
        let mut to_start: Vec<(Arc<Listener>, Vec<std::net::TcpListener>, SocketAddr)> = Vec::new();
        {
            let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            for l in &snap.listeners {
                let keep = bound.get(&*l.name).is_some_and(|b| b.addr == l.addr);
                if keep {
                    continue;
                }
                let rebinding_same_addr = bound.values().any(|b| b.addr == l.addr);
                if rebinding_same_addr {
                    // Another (removed or renamed) listener holds this address: its
                    // sockets are handed to this one, so no connection is refused (if
                    // they cannot be copied, it is stopped first below, then bound).
                    let handed = bound
                        .values()
                        .find(|b| b.addr == l.addr)
                        .map(|b| (clone_sockets(&b.sockets), b.local));
                    match handed {
                        Some((Ok(socks), local)) if !socks.is_empty() => {
                            to_start.push((l.clone(), socks, local))
                        }
                        _ => to_start.push((l.clone(), Vec::new(), l.addr)),
                    }
                    continue;
                }
                match self.listener_sockets(l.addr) {
                    Ok((socks, local)) => to_start.push((l.clone(), socks, local)),
                    Err(e) => {
                        self.shared
                            .stats
                            .config_rejections
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(ApplyError::Bind {
                            listener: l.name.to_string(),
                            addr: l.addr,
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
        let snap = Arc::new(snap);
        self.shared.snapshot.store(snap.clone());
        self.shared
            .stats
            .config_updates
            .fetch_add(1, Ordering::Relaxed);
        // Stop listeners that are gone or moved: their sockets close, their connections drain.
        {
            let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = bound
                .iter()
                .filter(|(name, b)| snap.listener(name).is_none_or(|l| l.addr != b.addr))
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                if let Some(b) = bound.remove(&name) {
                    let _ = b.stop.send(true);
                    tracing::info!(listener = %name, addr = %b.addr, "listener removed; draining its connections");
                }
            }
        }
        for (l, mut socks, mut local) in to_start {
            if socks.is_empty() {
                // Give the stopped listener's accept loops a moment to close their sockets.
                let mut tries = 0;
                loop {
                    match bind_reuseport(l.addr, self.workers.len()) {
                        Ok((s, a)) => {
                            socks = s;
                            local = a;
                            break;
                        }
                        Err(e) if tries < 50 => {
                            tries += 1;
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tracing::error!(listener = %l.name, error = %e, "rebinding listener failed");
                            break;
                        }
                    }
                }
                if socks.is_empty() {
                    continue;
                }
            }
            let (stop, stop_rx) = watch::channel(false);
            let conns = Arc::new(AtomicUsize::new(0));
            let kept = match clone_sockets(&socks) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(listener = %l.name, error = %e, "copying the listening sockets; a replacement will rebind them");
                    Vec::new()
                }
            };
            for (i, sock) in socks.into_iter().enumerate() {
                // More sockets than workers (handed over by a gateway with more): every
                // one is accepted on, so no accept queue is left behind.
                let i = i % self.workers.len();
                let _ = self.workers[i].0.send(WorkerCmd::Listen {
                    listener: l.clone(),
                    socket: sock,
                    stop: stop_rx.clone(),
                    conns: conns.clone(),
                    max_connections: self.opts.max_connections,
                });
            }
            tracing::info!(listener = %l.name, addr = %local, "listener bound");
            self.bound.lock().unwrap_or_else(|e| e.into_inner()).insert(
                l.name.to_string(),
                Bound {
                    addr: l.addr,
                    local,
                    stop,
                    sockets: kept,
                },
            );
        }
        // Record the resolvers started for new DNS clusters.
        for c in new_dns {
            self.dns_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(Arc::as_ptr(&c.endpoints) as usize);
        }
        self.dns_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| {
                snap.clusters
                    .values()
                    .any(|c| Arc::as_ptr(&c.endpoints) as usize == *k)
            });
        // Filter chains served without a certificate: one line per secret, once.
        for l in &snap.listeners {
            for chain in l.chains.iter().chain(l.default_chain.iter()) {
                if let Some(tls) = &chain.tls
                    && !tls.certificates_ready()
                {
                    for name in tls.certificate_secrets() {
                        store.log_missing_once(name, &l.name);
                    }
                }
            }
        }
        self.shared.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Drains: stops accepting, asks open connections to close (`connection: close`,
    /// GOAWAY), waits for in-flight requests up to the drain timeout, then stops.
    pub fn shutdown(mut self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shared.drain_requested.send(true);
        {
            let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            for (_, b) in bound.drain() {
                let _ = b.stop.send(true);
            }
        }
        let deadline = std::time::Instant::now() + self.opts.drain_timeout;
        while std::time::Instant::now() < deadline
            && self
                .shared
                .stats
                .downstream_cx_active
                .load(Ordering::Relaxed)
                > 0
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.shared.quit.send(true);
        for (tx, handle) in self.workers {
            drop(tx);
            let _ = handle.join();
        }
        self.shared.access_log.flush();
        drop(self.control_stop.take());
    }

    /// Changes to true when `/quitquitquit` is called on the admin API.
    pub fn quit_requested(&self) -> watch::Receiver<bool> {
        self.shared.admin_quit.subscribe()
    }

    /// Resolves when `/drain_listeners` is called on the admin API.
    pub fn drain_requested(&self) -> watch::Receiver<bool> {
        self.shared.drain_requested.subscribe()
    }
}

/// Why an update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error("listener {listener:?}: binding {addr}: {error}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        error: String,
    },
}

type ServeFn = fn(
    &tokio::runtime::Handle,
    crate::proxy::admin::ServerSocket,
    Arc<Shared>,
    watch::Receiver<u8>,
) -> std::io::Result<std::net::TcpListener>;

/// Binds one `SO_REUSEPORT` socket per worker on `addr` (port 0: the first socket's port
/// is reused for the others).
fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut target = addr;
    for _ in 0..n {
        let s = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.set_tcp_nodelay(true)?;
        s.bind(&target.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        if target.port() == 0 {
            target = l.local_addr()?;
        }
        out.push(l);
    }
    Ok((out, target))
}

fn worker_main(id: usize, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<WorkerCmd>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let drain_rx = shared.drain_requested.subscribe();
    let mut quit = shared.quit.subscribe();
    rt.block_on(async move {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(WorkerCmd::Listen { listener, socket, stop, conns, max_connections }) => {
                        let shared = shared.clone();
                        let drain = drain_rx.clone();
                        tokio::spawn(accept_loop(id, listener, socket, stop, drain, shared, conns, max_connections));
                    }
                    None => break,
                },
                _ = quit.changed() => break,
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    worker: usize,
    listener: Arc<Listener>,
    socket: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
    shared: Arc<Shared>,
    conns: Arc<AtomicUsize>,
    max_connections: usize,
) {
    let Ok(socket) = tokio::net::TcpListener::from_std(socket) else {
        return;
    };
    let mut drain_stop = drain.clone();
    // Connections drain when the gateway drains or when this listener is removed.
    let (conn_drain_tx, conn_drain_rx) = watch::channel(false);
    {
        let mut drain = drain.clone();
        let mut stop = stop.clone();
        let tx = conn_drain_tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = drain.changed() => { if r.is_err() || *drain.borrow() { break; } }
                    r = stop.changed() => { if r.is_err() || *stop.borrow() { break; } }
                }
            }
            let _ = tx.send(true);
        });
    }
    let limits = shared.overload.listener_counters(&listener.stat_name);
    // A successor accepts only once its predecessor stopped: until then new clients wait
    // in the backlog (the predecessor accepts them).
    let mut gate = shared.accepting.subscribe();
    tokio::select! {
        r = gate.wait_for(|open| *open) => if r.is_err() { return; },
        _ = stop.wait_for(|s| *s) => return,
        _ = drain_stop.wait_for(|d| *d) => return,
    }
    // The overload manager's stop_accepting_connections: new clients wait in the backlog.
    let mut paused = shared.overload.accept_paused();
    loop {
        let accepting = !*paused.borrow_and_update();
        tokio::select! {
            accepted = socket.accept(), if accepting => match accepted {
                Ok((stream, _)) => {
                    // Over a connection limit: closed at once and counted, as Envoy does.
                    let Some(guard) = shared.overload.admit(&conns, max_connections, listener.ignore_global_conn_limit, &limits) else {
                        drop(stream);
                        continue;
                    };
                    let listener = listener.clone();
                    let shared = shared.clone();
                    let drain = conn_drain_rx.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        serve_connection(stream, listener, shared, worker, drain).await;
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = paused.changed() => {}
            _ = drain_stop.changed() => {
                if *drain_stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Copies (`dup`) of listening sockets: the same sockets, each copy closed on its own.
fn clone_sockets(socks: &[std::net::TcpListener]) -> std::io::Result<Vec<std::net::TcpListener>> {
    socks.iter().map(|s| s.try_clone()).collect()
}

/// Upgrades: sockets taken over from a predecessor, and handed to a successor.
impl Gateway {
    /// The sockets of the listener configured at `addr`: those handed over by the
    /// gateway this one replaces if any (every one of them, and at least one per
    /// worker), else one new `SO_REUSEPORT` socket per worker.
    fn listener_sockets(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
        let n = self.workers.len();
        let taken = self
            .inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_listener(addr);
        match taken {
            Some(mut socks) if !socks.is_empty() => {
                let local = socks[0].local_addr()?;
                if socks.len() < n {
                    socks.extend(bind_reuseport(local, n - socks.len())?.0);
                }
                tracing::info!(%addr, sockets = socks.len(), "listener taken over");
                Ok((socks, local))
            }
            _ => bind_reuseport(addr, n),
        }
    }

    /// A successor takes over once its predecessor stopped accepting: the listeners and
    /// the admin, health and Prometheus servers start accepting on the sockets handed
    /// over. Until then they accept nothing.
    pub fn serve_inherited(&self) {
        self.shared.accepting.send_replace(true);
        let _ = self
            .server_state
            .send(crate::proxy::admin::SERVER_ACCEPTING);
    }

    /// Closes the handed-over sockets this gateway's configuration does not use (called
    /// once the predecessor stopped accepting on them). Returns how many.
    pub fn release_inherited(&self) -> usize {
        let rest = std::mem::take(&mut *self.inherited.lock().unwrap_or_else(|e| e.into_inner()));
        let n = rest.len();
        if n > 0 {
            tracing::info!(sockets = n, "closing handed-over sockets no listener uses");
        }
        n
    }

    /// What the upgrade socket hands to a successor, and how this gateway then stops
    /// accepting.
    pub fn hand_over(&self) -> GatewayHandOver {
        GatewayHandOver {
            shared: self.shared.clone(),
            bound: self.bound.clone(),
            servers: self.servers.clone(),
            server_state: self.server_state.clone(),
        }
    }
}

/// A running gateway's side of an upgrade (see [`crate::proxy::handoff`]).
pub struct GatewayHandOver {
    shared: Arc<Shared>,
    bound: Arc<Mutex<HashMap<String, Bound>>>,
    servers: Arc<Vec<HandedSocket>>,
    server_state: Arc<watch::Sender<u8>>,
}

impl HandOver for GatewayHandOver {
    fn sockets(&self) -> std::io::Result<Vec<HandedSocket>> {
        let mut out = Vec::new();
        for b in self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            for s in &b.sockets {
                out.push(HandedSocket {
                    kind: SocketKind::Listener,
                    addr: b.addr,
                    socket: s.try_clone()?,
                });
            }
        }
        for s in self.servers.iter() {
            out.push(HandedSocket {
                kind: s.kind,
                addr: s.addr,
                socket: s.socket.try_clone()?,
            });
        }
        Ok(out)
    }

    /// Every accept loop and server stops (closing this process's copies only) and open
    /// connections start draining: `connection: close`, GOAWAY.
    fn stop_accepting(&self) {
        let _ = self.server_state.send(crate::proxy::admin::SERVER_STOPPED);
        self.shared.handed_over.store(true, Ordering::Relaxed);
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shared.drain_requested.send(true);
        for b in self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = b.stop.send(true);
        }
    }
}
