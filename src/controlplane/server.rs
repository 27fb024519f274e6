//! The control plane: the registry of connected proxies and their shared snapshots, the
//! push loop, and the gRPC services (ADS, standalone SDS).
use super::authz::StreamAuth;
use super::debounce::{Burst, Debounce, next_burst};
use super::delta::Delta;
use super::metrics::{Metrics, Mode};
use super::node::{IdentityKey, NodeInfo, parse_node};
use super::snapshot::{Interner, Snapshot, version_string};
use super::sotw::Sotw;
use super::source::{Change, SnapshotSource};
use super::status::ProxyStatus;
use super::stream;
use super::wire::{RequestStream, ResponseBody, WireMessage};
use super::workload::{WorkloadCa, WorkloadSlot, is_mesh_secret};
use crate::xds::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use crate::xds::{ProxyIdentity, TypeUrl};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

/// Limits and timings of a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    pub debounce: Debounce,
    /// Largest request accepted (gRPC's default, 4 MiB).
    pub max_recv_message_size: usize,
    /// Largest response sent.
    pub max_send_message_size: usize,
    /// Responses queued per stream before the stream waits for the proxy to read.
    pub send_queue: usize,
    /// How long a stream may wait for its proxy to read before it is closed.
    pub send_timeout: Duration,
    /// Most resource names one subscription (one type of one stream) may hold.
    pub max_resource_names: usize,
    /// How long a new stream may take to send its first request.
    pub first_request_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest delta response, by the encoded size of its resources; larger updates are
    /// split there (and only there: Envoy applies thousands of clusters in one response,
    /// and every extra CDS response makes it warm clusters again).
    pub max_delta_response_bytes: usize,
    /// Bytes of responses that may be sent and not yet ACKed, across all streams (the
    /// push throttle): a push to every proxy goes out in waves of this size.
    pub push_budget_bytes: usize,
    /// How long a response holds its share of the budget without an answer.
    pub push_ack_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debounce: Debounce::default(),
            max_recv_message_size: 4 << 20,
            max_send_message_size: 256 << 20,
            send_queue: 4,
            send_timeout: Duration::from_secs(30),
            max_resource_names: 100_000,
            first_request_timeout: Duration::from_secs(30),
            max_concurrent_streams: 128,
            max_delta_response_bytes: 8 << 20,
            push_budget_bytes: 64 << 20,
            push_ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors running the control plane's servers.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// What snapshots are shared by: the proxy's identity key and, for a mutual-TLS
/// stream, the SPIFFE identity of its verified client certificate. Only snapshots with
/// one hold that identity's workload certificate and key (`workload`), so they are
/// never shared with a plaintext stream or a stream of another identity.
type SnapshotKey = (IdentityKey, Option<crate::ca::SpiffeId>);

/// The proxies sharing one snapshot key, and their current snapshot.
struct KeyEntry {
    identity: ProxyIdentity,
    /// The verified SPIFFE identity of the key's streams (mutual TLS only).
    workload: Option<crate::ca::SpiffeId>,
    /// Its workload certificate, when `workload` is set and a stream asked for it.
    cert: WorkloadSlot,
    /// A stream of the key asked for `default` or `ROOTCA`: they are in its snapshots.
    mesh_wanted: std::sync::atomic::AtomicBool,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    /// Serializes recomputation so that snapshots are published in the order computed.
    compute: tokio::sync::Mutex<u64>,
}

struct Keyed {
    entry: Arc<KeyEntry>,
    streams: usize,
}

#[derive(Default)]
struct Registry {
    keys: HashMap<SnapshotKey, Keyed>,
    conns: HashMap<u64, (SnapshotKey, Arc<Mutex<ProxyStatus>>)>,
}

/// Packed resources by share key (see `SnapshotSource::share_key`): the first key of a
/// view translates and packs, the others (waiting for it rather than computing the same
/// again) reuse the result. Held weakly: an entry lives as long as a snapshot serves it.
#[derive(Default)]
pub(crate) struct SharedPacks {
    slots: Mutex<HashMap<super::source::ShareKey, Arc<Mutex<PackSlot>>>>,
}

type PackSlot = std::sync::Weak<[super::snapshot::TypeSnapshot; 5]>;
type Packed = Arc<[super::snapshot::TypeSnapshot; 5]>;

impl SharedPacks {
    /// `identity`'s resources packed: shared when the source gives a share key.
    fn packed(
        &self,
        source: &dyn SnapshotSource,
        identity: &ProxyIdentity,
        interner: &Interner,
    ) -> Result<Packed, String> {
        let pack = || -> Result<Packed, String> {
            let set = source.resources(identity).map_err(|e| e.to_string())?;
            Snapshot::pack(&set, interner)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        };
        let Some(key) = source.share_key(identity) else {
            return pack();
        };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // Sweep views no snapshot serves any more (older generations) before growing.
            if slots.len() >= 64 && slots.len().is_power_of_two() {
                slots.retain(|_, s| {
                    Arc::strong_count(s) > 1
                        || s.lock().unwrap_or_else(|e| e.into_inner()).strong_count() > 0
                });
            }
            slots.entry(key).or_default().clone()
        };
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(types) = held.upgrade() {
            return Ok(types);
        }
        let types = pack()?;
        *held = Arc::downgrade(&types);
        Ok(types)
    }
}

/// Shared state of a control plane.
pub(crate) struct Inner {
    pub source: Arc<dyn SnapshotSource>,
    pub options: Options,
    pub metrics: Metrics,
    /// `control_plane.identifier` in responses.
    pub identifier: Arc<str>,
    /// The resources of every snapshot, held once per distinct content.
    pub interner: Interner,
    /// Packed resources by share key, for keys the source says see the same.
    pub shared: SharedPacks,
    /// Subscribed name sets, held once per distinct set.
    pub delta_names: super::sets::SetInterner<std::collections::HashSet<Arc<str>>>,
    pub sotw_names: super::sets::SetInterner<std::collections::BTreeSet<String>>,
    /// Random per process, in every nonce, so nonces of an earlier run never match.
    pub boot_id: u32,
    registry: Mutex<Registry>,
    next_conn: AtomicU64,
    serving: AtomicBool,
    /// Set when the server shuts down: every stream ends with UNAVAILABLE.
    pub closing: watch::Sender<bool>,
    /// Bytes of responses sent and not yet answered, across streams.
    pub push_budget: super::stream::PushBudget,
    /// The mesh CA, when workload certificates are served (`default`, `ROOTCA`).
    pub workload_ca: OnceLock<WorkloadCa>,
    /// Recent NACKs and snapshot errors, for the status page.
    pub errors: super::errors::RecentErrors,
}

/// What a stream gets when it attaches.
pub(crate) struct Attachment {
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub status: Arc<Mutex<ProxyStatus>>,
    pub guard: Detach,
    pub conn_id: u64,
}

/// Detaches a stream from the registry when dropped.
pub(crate) struct Detach {
    inner: Arc<Inner>,
    conn_id: u64,
    mode: Mode,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.inner.metrics.connected(self.mode, -1);
        let mut reg = self.inner.lock();
        if let Some((key, _)) = reg.conns.remove(&self.conn_id)
            && let Some(k) = reg.keys.get_mut(&key)
        {
            k.streams -= 1;
            if k.streams == 0 {
                // The last proxy of this identity left: drop its snapshot.
                reg.keys.remove(&key);
            }
        }
    }
}

impl Inner {
    /// The shared state alone, without the push loop.
    pub(crate) fn new(source: Arc<dyn SnapshotSource>, options: Options) -> Inner {
        let push_budget =
            super::stream::PushBudget::new(options.push_budget_bytes, options.push_ack_timeout);
        Inner {
            source,
            options,
            metrics: Metrics::default(),
            identifier: Arc::from(format!("meshgate {}", env!("CARGO_PKG_VERSION"))),
            interner: Interner::default(),
            shared: Default::default(),
            delta_names: Default::default(),
            sotw_names: Default::default(),
            boot_id: rand::random(),
            registry: Mutex::new(Registry::default()),
            next_conn: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            closing: watch::channel(false).0,
            push_budget,
            workload_ca: OnceLock::new(),
            errors: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream of `node`, whose client certificate proved `workload` (mutual
    /// TLS only); computes the key's first snapshot if it is new.
    pub(crate) fn attach(
        self: &Arc<Self>,
        node: &NodeInfo,
        workload: Option<crate::ca::SpiffeId>,
        mode: Mode,
    ) -> Attachment {
        let key: SnapshotKey = (IdentityKey::of(&node.identity), workload.clone());
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let status = Arc::new(Mutex::new(ProxyStatus::new(conn_id, node, mode)));
        let (entry, created) = {
            let mut reg = self.lock();
            reg.conns.insert(conn_id, (key.clone(), status.clone()));
            match reg.keys.get_mut(&key) {
                Some(k) => {
                    k.streams += 1;
                    (k.entry.clone(), false)
                }
                None => {
                    let (tx, _) = watch::channel(None);
                    let entry = Arc::new(KeyEntry {
                        identity: node.identity.clone(),
                        workload,
                        cert: WorkloadSlot::default(),
                        mesh_wanted: std::sync::atomic::AtomicBool::new(false),
                        tx,
                        compute: tokio::sync::Mutex::new(0),
                    });
                    reg.keys.insert(
                        key,
                        Keyed {
                            entry: entry.clone(),
                            streams: 1,
                        },
                    );
                    (entry, true)
                }
            }
        };
        self.metrics.connected(mode, 1);
        let snapshots = entry.tx.subscribe();
        if created {
            let inner = self.clone();
            let entry = entry.clone();
            let first = entry.clone();
            tokio::spawn(async move { inner.recompute(&first, None).await });
        }
        Attachment {
            snapshots,
            status,
            guard: Detach {
                inner: self.clone(),
                conn_id,
                mode,
            },
            conn_id,
        }
    }

    /// A verified stream (`conn_id`) asked for the mesh's secrets: its key's snapshots
    /// hold them from now on, and its certificate is renewed when due.
    pub(crate) fn want_mesh_secrets(self: &Arc<Self>, conn_id: u64) {
        if self.workload_ca.get().is_none() {
            return;
        }
        let entry = {
            let reg = self.lock();
            let Some((key, _)) = reg.conns.get(&conn_id) else {
                return;
            };
            match reg.keys.get(key) {
                Some(k) => k.entry.clone(),
                None => return,
            }
        };
        if entry.workload.is_none() || entry.mesh_wanted.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        let first = entry.clone();
        tokio::spawn(async move { inner.recompute(&first, None).await });
        self.spawn_renewal(&entry);
    }

    /// Recomputes a key's snapshot whenever its workload certificate is due, for as long
    /// as the key has streams.
    fn spawn_renewal(self: &Arc<Self>, entry: &Arc<KeyEntry>) {
        let mut changes = self.workload_ca.get().map(|w| w.ca.changes());
        let (inner, entry) = (Arc::downgrade(self), Arc::downgrade(entry));
        tokio::spawn(async move {
            loop {
                let due = match entry.upgrade() {
                    // None: the first certificate is being issued (or failed to be):
                    // look again shortly, and try again if it still is not there.
                    Some(e) => e
                        .cert
                        .renew_at()
                        .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(1)),
                    None => return,
                };
                // Also at once when the CA is reloaded: a new trust bundle (ROOTCA) and,
                // with a new signer, a new workload certificate.
                let reloaded = async {
                    let Some(rx) = changes.as_mut() else {
                        return std::future::pending().await;
                    };
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(due)) => {}
                    _ = reloaded => {}
                }
                let (Some(inner), Some(e)) = (inner.upgrade(), entry.upgrade()) else {
                    return;
                };
                inner.recompute(&e, None).await;
            }
        });
    }

    /// Computes a key's snapshot and publishes it if its content changed.
    async fn recompute(self: &Arc<Self>, entry: &Arc<KeyEntry>, changed_at: Option<Instant>) {
        let mut generation = entry.compute.lock().await;
        let source = self.source.clone();
        let identity = entry.identity.clone();
        let next = *generation + 1;
        let inner = self.clone();
        let keyed = entry.clone();
        let built = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let own_secrets = match (
                &keyed.workload,
                inner.workload_ca.get(),
                keyed.mesh_wanted.load(Ordering::SeqCst),
            ) {
                (Some(id), Some(ca), true) => Some(keyed.cert.current(ca, id)?),
                _ => None,
            };
            let snap = match own_secrets {
                Some(mesh) => {
                    let mut set = source.resources(&identity).map_err(|e| e.to_string())?;
                    // A copy of the proxy's resources, with the stream identity's own
                    // secrets: never shared with another key.
                    let own = Arc::make_mut(&mut set);
                    own.secrets.retain(|s| !is_mesh_secret(&s.name));
                    own.secrets.extend(mesh);
                    Snapshot::build(identity, &set, next, changed_at, &inner.interner)
                        .map_err(|e| e.to_string())
                }
                None => inner
                    .shared
                    .packed(source.as_ref(), &identity, &inner.interner)
                    .map(|types| Snapshot::from_packed(identity, types, next, changed_at)),
            };
            tracing::debug!(took = ?started.elapsed(), "snapshot computed");
            snap
        })
        .await
        .unwrap_or_else(|e| Err(format!("computing the snapshot panicked: {e}")));
        match built {
            Ok(snap) => {
                let same = entry
                    .tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|cur| cur.same_content(&snap));
                if !same {
                    *generation = next;
                    entry.tx.send_replace(Some(Arc::new(snap)));
                }
            }
            Err(error) => {
                self.metrics.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(namespace = %entry.identity.namespace, labels = ?entry.identity.labels, %error, "cannot compute proxy resources; keeping the last good snapshot");
                self.errors.push(
                    super::errors::ErrorKind::Snapshot,
                    format!(
                        "namespace {} labels {:?}",
                        entry.identity.namespace, entry.identity.labels
                    ),
                    &error,
                );
                let key: SnapshotKey = (IdentityKey::of(&entry.identity), entry.workload.clone());
                let reg = self.lock();
                for (k, st) in reg.conns.values() {
                    if *k == key {
                        st.lock().unwrap_or_else(|e| e.into_inner()).snapshot_error =
                            Some(error.clone());
                    }
                }
            }
        }
    }

    /// One debounced push: recompute the snapshots of every key the change affects.
    async fn push(self: &Arc<Self>, burst: Burst) {
        self.metrics.push_rounds.fetch_add(1, Ordering::Relaxed);
        self.metrics.push_started();
        for t in burst.change.types.iter() {
            self.metrics.triggered(t);
        }
        let entries: Vec<Arc<KeyEntry>> = {
            let reg = self.lock();
            reg.keys
                .values()
                .filter(|k| burst.change.affects(&k.entry.identity))
                .map(|k| k.entry.clone())
                .collect()
        };
        tracing::debug!(keys = entries.len(), merged = burst.merged, "push");
        // A few at a time: translation is CPU work and the machine has few cores.
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut set = tokio::task::JoinSet::new();
        for e in entries {
            while set.len() >= parallel {
                set.join_next().await;
            }
            let inner = self.clone();
            set.spawn(async move { inner.recompute(&e, Some(burst.first_at)).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Binds a listening socket with a deep accept queue: after a control plane restart
/// every proxy reconnects at once, and a short queue turns that into resets.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// A control plane serving the resources of a [`SnapshotSource`] over ADS and SDS.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Creates the control plane and starts its push loop (needs a Tokio runtime).
    pub fn new(source: Arc<dyn SnapshotSource>, options: Options) -> ControlPlane {
        let inner = Arc::new(Inner::new(source, options));
        let weak = Arc::downgrade(&inner);
        let mut changes = inner.source.changes();
        let timing = inner.options.debounce;
        tokio::spawn(async move {
            while let Some(burst) = next_burst(&mut changes, timing).await {
                let Some(inner) = weak.upgrade() else { break };
                inner.push(burst).await;
            }
        });
        ControlPlane { inner }
    }

    /// Serves the mesh's own secrets to mutual-TLS streams: `default`, a workload
    /// certificate of `ca` for the stream's verified identity, and `ROOTCA` (see
    /// `workload`). Without this, those names do not exist for any stream. Set once.
    pub fn serve_workload_certificates(&self, ca: WorkloadCa) {
        let _ = self.inner.workload_ca.set(ca);
    }

    /// The ADS gRPC service, with the configured message size limits.
    pub fn ads_service(&self) -> AdsService {
        AdsService {
            inner: self.inner.clone(),
            mtls: false,
        }
    }

    /// The standalone SDS gRPC service.
    pub fn sds_service(&self) -> SdsService {
        SdsService {
            inner: self.inner.clone(),
            transport: Transport::Plaintext,
        }
    }

    /// Serves SDS alone on a Unix socket until `shutdown` completes: a pod's agent
    /// serving its Envoy the secrets it holds (`meshgate agent`). Whoever can open the
    /// socket is served, so its directory's permissions are the access control.
    pub async fn serve_local_sds(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        self.inner.serving.store(true, Ordering::Relaxed);
        let inner = self.inner.clone();
        let shutdown = async move {
            shutdown.await;
            inner.serving.store(false, Ordering::Relaxed);
            inner.closing.send_replace(true);
        };
        let sds = SdsService {
            inner: self.inner.clone(),
            transport: Transport::Local,
        };
        let result = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(self.inner.options.max_concurrent_streams))
            .add_service(sds)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        self.inner.serving.store(false, Ordering::Relaxed);
        Ok(result?)
    }

    /// Serves ADS and SDS on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        self.inner.serving.store(true, Ordering::Relaxed);
        let inner = self.inner.clone();
        let shutdown = async move {
            shutdown.await;
            // Streams never end on their own: tell them to, so the server can stop.
            inner.serving.store(false, Ordering::Relaxed);
            inner.closing.send_replace(true);
        };
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(self.inner.options.max_concurrent_streams))
            .tcp_nodelay(true)
            .add_service(self.ads_service())
            .add_service(self.sds_service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        self.inner.serving.store(false, Ordering::Relaxed);
        Ok(result?)
    }

    /// Serves ADS over mutual TLS on `listener` (Istio's 15012), with Istio's certificate
    /// service next to it when `ca` is given, until `shutdown` completes. Every ADS stream
    /// must come with a client certificate of the CA whose identity matches its node (see
    /// `authz`); so must every stream of the standalone SDS service, which sidecars use
    /// for the secrets of their static clusters.
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: Arc<crate::ca::XdsTls>,
        ca: Option<crate::ca::CertificateService>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        if let Some(ca) = &ca {
            self.inner.metrics.attach_ca(ca.metrics().clone());
        }
        let incoming = tls.incoming(listener);
        let inner = self.inner.clone();
        let shutdown = async move {
            shutdown.await;
            inner.closing.send_replace(true);
        };
        let ads = AdsService {
            inner: self.inner.clone(),
            mtls: true,
        };
        let sds = SdsService {
            inner: self.inner.clone(),
            transport: Transport::Mtls,
        };
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(self.inner.options.max_concurrent_streams))
            .add_service(ads)
            .add_service(sds)
            .add_optional_service(ca)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        Ok(result?)
    }

    /// Binds `addr` and serves until `shutdown`.
    pub async fn bind_and_serve(
        &self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let listener = listen(addr).map_err(|source| ServeError::Bind { addr, source })?;
        self.serve(listener, shutdown).await
    }

    /// True while the gRPC server is serving.
    pub fn serving(&self) -> bool {
        self.inner.serving.load(Ordering::Relaxed)
    }

    /// The control plane's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Every connected stream's sync status.
    pub fn syncz(&self) -> Vec<ProxyStatus> {
        let reg = self.inner.lock();
        let mut out: Vec<ProxyStatus> = reg
            .conns
            .values()
            .map(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        out.sort_by_key(|s| s.connection_id);
        out
    }

    /// Recent NACKs and snapshot errors, oldest first.
    pub fn recent_errors(&self) -> Vec<super::errors::ErrorEvent> {
        self.inner.errors.all()
    }

    /// What the source says about the configuration it serves, when it can.
    pub fn source_overview(&self) -> Option<super::source::SourceOverview> {
        self.inner.source.overview()
    }

    /// How long a response may wait for its ACK before the status page calls it stale.
    pub fn ack_timeout(&self) -> Duration {
        self.inner.options.push_ack_timeout
    }

    /// The config dump of the connected proxy whose node id or `POD.NAMESPACE` is
    /// `proxy_id`; `None` if no such proxy is connected or it has no snapshot yet.
    pub fn config_dump(
        &self,
        proxy_id: &str,
    ) -> Option<Result<serde_json::Value, crate::xds::json::JsonError>> {
        let snap = {
            let reg = self.inner.lock();
            let (key, _) = reg.conns.values().find(|(_, s)| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.node_id == proxy_id || s.proxy_id == proxy_id
            })?;
            reg.keys.get(key)?.entry.tx.borrow().clone()?
        };
        let version = version_string(
            TypeUrl::ALL
                .iter()
                .fold(0u64, |acc, t| acc.rotate_left(7) ^ snap.of(*t).version),
        );
        let set = match snap.unpacked() {
            Ok(set) => set,
            Err(source) => {
                return Some(Err(crate::xds::json::JsonError::Decode {
                    ty: "snapshot resource".into(),
                    source,
                }));
            }
        };
        Some(crate::xds::json::config_dump(&set, &version))
    }

    /// Number of distinct resources (by content) the snapshots hold, plus freed ones
    /// not swept yet.
    pub fn interned_resources(&self) -> usize {
        self.inner.interner.len()
    }

    /// Number of distinct identity keys (shared snapshots) currently held.
    pub fn snapshot_keys(&self) -> usize {
        self.inner.lock().keys.len()
    }

    /// Pushes now, skipping the debounce (for callers that batch changes themselves).
    pub async fn push_now(&self, change: Change) {
        self.inner
            .push(Burst {
                change,
                first_at: Instant::now(),
                merged: 1,
            })
            .await;
    }
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;
type GrpcFuture = Pin<Box<dyn Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

/// Refuses a request whose messages are compressed (no compression is offered), as a
/// generated server does.
fn refuse_compressed(req: &GrpcRequest) -> Option<Status> {
    let encoding = req.headers().get("grpc-encoding")?;
    if encoding == "identity" {
        return None;
    }
    Some(Status::unimplemented(format!(
        "Content is compressed with `{}` which isn't supported",
        String::from_utf8_lossy(encoding.as_bytes())
    )))
}

/// Starts one xDS stream: decodes the requests, runs the engine in its own task, and
/// answers with a body that frames the engine's responses as the connection takes them.
fn open_stream<E>(
    inner: &Arc<Inner>,
    req: GrpcRequest,
    mode: Mode,
    only: Option<TypeUrl>,
    transport: Transport,
    engine: impl FnOnce() -> E + Send + 'static,
) -> GrpcResponse
where
    E: stream::Engine,
    E::Request: prost::Message + Default,
    E::Response: WireMessage,
{
    if let Some(status) = refuse_compressed(&req) {
        return status.into_http();
    }
    // On the mutual-TLS port the connection's peer (put there by the TLS acceptor) is
    // checked against the node once the stream names it.
    let auth = match transport {
        Transport::Mtls => StreamAuth::Mtls(req.extensions().get::<crate::ca::PeerInfo>().cloned()),
        Transport::Plaintext => StreamAuth::Plaintext,
        Transport::Local => StreamAuth::Local,
    };
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .or_else(|| {
            req.extensions()
                .get::<crate::ca::PeerInfo>()
                .and_then(|p| p.addr)
        });
    let inbound = RequestStream::new(req.into_body(), inner.options.max_recv_message_size);
    let (tx, rx) = mpsc::channel(inner.options.send_queue.max(1));
    tokio::spawn(stream::run(
        inner.clone(),
        inbound,
        tx,
        stream::Opening { mode, only, peer },
        auth,
        engine,
    ));
    let body = ResponseBody::new(rx, inner.options.max_send_message_size);
    let mut resp = http::Response::new(tonic::body::Body::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    resp
}

/// Envoy's AggregatedDiscoveryService (state-of-the-world and delta).
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
    /// Served on the mutual-TLS port: every stream is authorized (see `authz`).
    mtls: bool,
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tonic::codegen::Service<GrpcRequest> for AdsService {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = std::future::Ready<Result<GrpcResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        let resp = match req.uri().path() {
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources" => {
                open_stream(
                    &self.inner,
                    req,
                    Mode::Sotw,
                    None,
                    self.transport(),
                    Sotw::new,
                )
            }
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources" => {
                open_stream(
                    &self.inner,
                    req,
                    Mode::Delta,
                    None,
                    self.transport(),
                    Delta::new,
                )
            }
            _ => Status::unimplemented("").into_http(),
        };
        std::future::ready(Ok(resp))
    }
}

impl AdsService {
    fn transport(&self) -> Transport {
        if self.mtls {
            Transport::Mtls
        } else {
            Transport::Plaintext
        }
    }
}

/// What a service is served over, which decides how its streams are authorized.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Plaintext,
    /// The mutual-TLS port: streams are checked against their client certificates.
    Mtls,
    /// The agent's Unix socket.
    Local,
}

/// Envoy's SecretDiscoveryService, for proxies that fetch secrets on their own stream.
#[derive(Clone)]
pub struct SdsService {
    inner: Arc<Inner>,
    transport: Transport,
}

impl tonic::server::NamedService for SdsService {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl tonic::codegen::Service<GrpcRequest> for SdsService {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = GrpcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        let secrets = Some(TypeUrl::Secret);
        let resp = match req.uri().path() {
            "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets" => open_stream(
                &self.inner,
                req,
                Mode::Delta,
                secrets,
                self.transport,
                Delta::new,
            ),
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets" => open_stream(
                &self.inner,
                req,
                Mode::Sotw,
                secrets,
                self.transport,
                Sotw::new,
            ),
            "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets" => {
                let options = &self.inner.options;
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    DiscoveryResponse,
                    DiscoveryRequest,
                >::default())
                .apply_max_message_size_config(
                    Some(options.max_recv_message_size),
                    Some(options.max_send_message_size),
                );
                let fetch = FetchSecrets {
                    inner: self.inner.clone(),
                };
                return Box::pin(async move { Ok(grpc.unary(fetch, req).await) });
            }
            _ => Status::unimplemented("").into_http(),
        };
        Box::pin(std::future::ready(Ok(resp)))
    }
}

/// The unary FetchSecrets call.
struct FetchSecrets {
    inner: Arc<Inner>,
}

impl tonic::server::UnaryService<DiscoveryRequest> for FetchSecrets {
    type Response = DiscoveryResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<DiscoveryResponse>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<DiscoveryRequest>) -> Self::Future {
        Box::pin(fetch_secrets(self.inner.clone(), request.into_inner()))
    }
}

async fn fetch_secrets(
    inner: Arc<Inner>,
    req: DiscoveryRequest,
) -> Result<tonic::Response<DiscoveryResponse>, Status> {
    if !req.type_url.is_empty() && req.type_url != TypeUrl::Secret.as_str() {
        return Err(Status::invalid_argument("FetchSecrets serves only secrets"));
    }
    let node =
        parse_node(req.node.as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let source = inner.source.clone();
    let identity = node.identity.clone();
    let set = tokio::task::spawn_blocking(move || source.resources(&identity))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let snap = Snapshot::build(node.identity, &set, 0, None, &inner.interner)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let ts = snap.of(TypeUrl::Secret);
    let entries: Vec<_> = req
        .resource_names
        .iter()
        .filter_map(|n| ts.get(n))
        .collect();
    let mut fold = super::snapshot::VersionFold::default();
    entries.iter().for_each(|e| fold.add(e.hash));
    Ok(tonic::Response::new(DiscoveryResponse {
        version_info: version_string(fold.finish(entries.len())),
        resources: entries.iter().map(|e| e.any()).collect(),
        type_url: TypeUrl::Secret.as_str().to_string(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::source::{ShareKey, SourceError};
    use crate::xds::ResourceSet;
    use std::sync::atomic::AtomicUsize;

    /// Shares by the `view` label; counts translations.
    struct Counting {
        calls: AtomicUsize,
        tx: tokio::sync::broadcast::Sender<Change>,
    }

    impl SnapshotSource for Counting {
        fn resources(&self, _: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(ResourceSet::default()))
        }
        fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
            self.tx.subscribe()
        }
        fn share_key(&self, proxy: &ProxyIdentity) -> Option<ShareKey> {
            let view = proxy.labels.get("view")?;
            Some(ShareKey {
                generation: 1,
                view: ProxyIdentity {
                    namespace: view.clone(),
                    ..Default::default()
                },
            })
        }
    }

    fn proxy(id: &str, view: Option<&str>) -> ProxyIdentity {
        let mut p = ProxyIdentity::gateway("default", Default::default());
        p.id = id.into();
        if let Some(v) = view {
            p.labels.insert("view".into(), v.into());
        }
        p
    }

    #[test]
    fn keys_with_one_share_key_are_translated_and_packed_once() {
        let source = Counting {
            calls: AtomicUsize::new(0),
            tx: tokio::sync::broadcast::channel(1).0,
        };
        let (shared, interner) = (SharedPacks::default(), Interner::default());
        let a = shared
            .packed(&source, &proxy("a", Some("x")), &interner)
            .unwrap();
        let b = shared
            .packed(&source, &proxy("b", Some("x")), &interner)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one view, one packed set");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);

        let c = shared
            .packed(&source, &proxy("c", Some("y")), &interner)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "another view is its own");
        let d = shared
            .packed(&source, &proxy("d", None), &interner)
            .unwrap();
        let e = shared
            .packed(&source, &proxy("e", None), &interner)
            .unwrap();
        assert!(
            !Arc::ptr_eq(&d, &e),
            "without a share key nothing is shared"
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 4);

        // Held weakly: once no snapshot serves a view, it is computed again.
        drop((a, b));
        shared
            .packed(&source, &proxy("f", Some("x")), &interner)
            .unwrap();
        assert_eq!(source.calls.load(Ordering::SeqCst), 5);
    }
}
