//! An ADS client: how a meshgate gateway joins a control plane (`--xds ADDR`).
//!
//! It speaks delta xDS by default and state-of-the-world on request, to any conforming
//! server. CDS and LDS are wildcard subscriptions; EDS, RDS and SDS names follow what
//! the accepted clusters and listeners reference. Each response is decoded by a typed
//! handler per resource type and checked by the [`ConfigConsumer`]; what cannot be
//! applied is rejected in ONE NACK listing every resource and why, and is never recorded
//! as known (so a reconnect asks for it again). The consumer gets complete
//! [`ResourceSet`]s: the first after the first full sync (CDS, LDS and everything they
//! reference), later ones when an update is complete or has warmed for too long. When
//! the server goes away the last applied set stays in force; the client reconnects with
//! capped exponential back-off and jitter and re-subscribes with what it holds (delta
//! `initial_resource_versions`, SotW `version_info`).
//!
//! The first sync has Envoy's `initial_fetch_timeout` semantics: a subscription (CDS,
//! LDS, or one EDS/RDS/SDS name) whose first response has not come within
//! [`ClientOptions::initial_fetch_timeout`] is given up on, counted as empty, so that the
//! first set is applied and listeners bind; its resource is applied normally when it
//! comes later. Unlike Envoy, whose timer starts with the subscription, a timer runs only
//! while connected to the server: a gateway started before its control plane waits for
//! it, and a reconnect restarts the timers of what is still awaited.
mod state;

pub use state::{Decoded, decode};

use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use crate::xds::pb::google::rpc::Status as RpcStatus;
use crate::xds::{ResourceSet, TypeUrl};
use state::{Incoming, State, Subscription, Update};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// A resource the consumer (or its decoder) cannot apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: TypeUrl,
    pub name: String,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.type_url.short(),
            self.name,
            self.message
        )
    }
}

/// What the client feeds: the data plane, or anything that applies resource sets.
pub trait ConfigConsumer: Send + Sync + 'static {
    /// Checks a candidate set (everything accepted plus one response's changes) and
    /// returns the resources it could not apply, each with a precise reason. Referenced
    /// resources that have not arrived yet are not errors: they may still come.
    fn check(&self, candidate: &ResourceSet) -> Vec<Rejection>;

    /// Applies a complete set. Only sets that passed `check` are applied. The set has no
    /// secrets: those come through `update_secrets`.
    fn apply(&self, set: Arc<ResourceSet>);

    /// Takes SDS secrets as they arrive, apart from the rest, as Envoy does: a secret
    /// applies when it comes, without rebuilding the listeners that name it. `removed`:
    /// secrets the server deleted or the client no longer subscribes to. Returns the
    /// secrets that cannot be used (they are NACKed and keep their previous material).
    /// The default takes every secret and keeps none.
    fn update_secrets(
        &self,
        secrets: &[crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
        removed: &[String],
    ) -> Vec<Rejection> {
        let _ = (secrets, removed);
        Vec::new()
    }
}

/// How to reach and talk to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://HOST:PORT` or `HOST:PORT`.
    pub address: String,
    /// The node this client presents (id, cluster, metadata such as `LABELS`).
    pub node: Node,
    /// Delta xDS (default) or state of the world.
    pub delta: bool,
    /// Largest response accepted. Configurations can be large; 64 MiB by default.
    pub max_recv_message_size: usize,
    /// Largest request sent (gRPC's default, 4 MiB).
    pub max_send_message_size: usize,
    pub connect_timeout: Duration,
    /// First reconnection delay; doubles up to `backoff_max`, with ±50% jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// After the first sync, how long an incomplete update (a new cluster whose
    /// endpoints have not arrived) waits before it is applied anyway.
    pub warming_timeout: Duration,
    /// For the first sync: how long each subscription waits for its first response,
    /// while connected to the server, before it counts as empty (Envoy's
    /// `initial_fetch_timeout`, 15 s by default). Zero waits forever.
    pub initial_fetch_timeout: Duration,
    /// Mutual TLS to the server (its 15012 port) with the gateway's workload
    /// certificate; plaintext without. The first connection waits for a valid
    /// certificate; each connection presents the one current at its handshake.
    pub tls: Option<ClientTls>,
    /// SDS names satisfied locally (the workload certificate and trust bundle that the
    /// gateway's own certificate manager provides): never subscribed to, never waited
    /// for.
    pub local_secrets: BTreeSet<String>,
}

/// How the client reaches a server over mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub transport: crate::identity::ControlPlaneTls,
    pub certificate: crate::identity::CertificateHandle,
}

impl ClientOptions {
    /// Defaults for `address` and `node`.
    pub fn new(address: &str, node: Node) -> ClientOptions {
        ClientOptions {
            address: address.to_string(),
            node,
            delta: true,
            max_recv_message_size: 64 << 20,
            max_send_message_size: 4 << 20,
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(15),
            warming_timeout: Duration::from_secs(5),
            initial_fetch_timeout: Duration::from_secs(15),
            tls: None,
            local_secrets: BTreeSet::new(),
        }
    }
}

/// Errors of one stream (the client itself retries them all).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid xDS server address `{0}`")]
    Address(String),
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
    #[error("the server does not read requests")]
    Stuck,
    #[error("TLS: {0}")]
    Tls(String),
}

/// Per-type status, for admin pages and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeStatus {
    pub resources: usize,
    /// SotW: the accepted version; delta: the server's system version of the last ACK.
    pub version: String,
    pub acks: u64,
    pub nacks: u64,
    /// The message of the last NACK sent.
    pub last_nack: Option<String>,
    /// When the last ACK and the last NACK were sent.
    pub last_ack_at: Option<std::time::SystemTime>,
    pub last_nack_at: Option<std::time::SystemTime>,
}

/// What the client is doing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStatus {
    /// The server's address, as configured.
    pub server: String,
    /// Speaks delta xDS (else state of the world).
    pub delta: bool,
    pub connected: bool,
    /// Since when the current connection is up (None while disconnected).
    pub connected_since: Option<std::time::SystemTime>,
    /// Why the last stream ended.
    pub last_error: Option<String>,
    /// The first full sync happened (a set was applied).
    pub ready: bool,
    pub connects: u64,
    pub applies: u64,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

/// An ADS client; [`XdsClient::run`] drives it until dropped.
pub struct XdsClient {
    options: ClientOptions,
    consumer: Arc<dyn ConfigConsumer>,
    state: State,
    status: Arc<Mutex<ClientStatus>>,
    ready_tx: watch::Sender<bool>,
    /// An update held back while warming, and since when.
    warming_since: Option<Instant>,
    applied_once: bool,
    dirty: bool,
    /// When the current connection to the server was established (None between them).
    connected_since: Option<Instant>,
    /// Before the first sync: when names were subscribed on the current stream after the
    /// connection was established (the rest have waited since `connected_since`).
    subscribed_at: BTreeMap<Subscription, Instant>,
}

/// A handle to watch a running client.
#[derive(Clone)]
pub struct ClientHandle {
    status: Arc<Mutex<ClientStatus>>,
    ready: watch::Receiver<bool>,
}

impl ClientHandle {
    pub fn status(&self) -> ClientStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once the first full sync was applied (stays true across reconnects).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until ready.
    pub async fn wait_ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }
}

enum Outcome {
    /// The stream delivered at least one response before it ended.
    Progress(ClientError),
    Failed(ClientError),
}

impl Outcome {
    /// How a stream ended with `e`, after delivering something or not.
    fn of(progressed: bool, e: ClientError) -> Outcome {
        if progressed {
            Outcome::Progress(e)
        } else {
            Outcome::Failed(e)
        }
    }
}

/// Sends a request on a stream; false when the stream is gone or the server has read
/// nothing for 30 s.
async fn send_on<T>(tx: &mpsc::Sender<T>, req: T) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(30), tx.send(req)).await,
        Ok(Ok(()))
    )
}

/// The NACK detail for a response of a type this client does not know.
fn unsupported_type(type_url: &str) -> RpcStatus {
    rpc_status(format!("resource type {type_url} is not supported"))
}

/// Names for one log line: the first few, and how many more (a gateway may wait on
/// thousands of secrets; one line must stay readable).
fn listed(names: impl Iterator<Item = String>, total: usize) -> String {
    const SHOWN: usize = 10;
    let mut s = names.take(SHOWN).collect::<Vec<_>>().join(", ");
    if total > SHOWN {
        s.push_str(&format!(" and {} more", total - SHOWN));
    }
    s
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.5..1.5);
    d.mul_f64(f)
}

fn rpc_status(message: String) -> RpcStatus {
    RpcStatus {
        // INTERNAL, as Envoy reports rejected configuration.
        code: 13,
        message,
        details: Vec::new(),
    }
}

/// One NACK message for every rejection, bounded in size.
fn nack_message(rejections: &[Rejection]) -> String {
    let mut s = rejections
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if s.len() > 16 * 1024 {
        let mut end = 16 * 1024;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" ...");
    }
    s
}

impl XdsClient {
    pub fn new(options: ClientOptions, consumer: Arc<dyn ConfigConsumer>) -> XdsClient {
        let mut state = State::default();
        state.set_local_secrets(options.local_secrets.clone());
        let status = ClientStatus {
            server: options.address.clone(),
            delta: options.delta,
            ..Default::default()
        };
        XdsClient {
            options,
            consumer,
            state,
            status: Arc::new(Mutex::new(status)),
            ready_tx: watch::channel(false).0,
            warming_since: None,
            applied_once: false,
            dirty: false,
            connected_since: None,
            subscribed_at: BTreeMap::new(),
        }
    }

    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            status: self.status.clone(),
            ready: self.ready_tx.subscribe(),
        }
    }

    fn with_status(&self, f: impl FnOnce(&mut ClientStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs forever: connect, follow the stream, reconnect with back-off.
    pub async fn run(mut self) {
        let mut backoff = self.options.backoff_initial;
        loop {
            let outcome = self.connect_and_follow().await;
            self.connected_since = None;
            let err = match outcome {
                Outcome::Progress(e) => {
                    backoff = self.options.backoff_initial;
                    e
                }
                Outcome::Failed(e) => e,
            };
            self.with_status(|s| {
                s.connected = false;
                s.connected_since = None;
                s.last_error = Some(err.to_string());
            });
            let wait = jitter(backoff);
            tracing::warn!(server = %self.options.address, error = %err, retry_in = ?wait, "xDS stream ended; keeping the last applied configuration");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    fn endpoint(&self) -> Result<tonic::transport::Endpoint, ClientError> {
        let addr = if self.options.address.contains("://") {
            self.options.address.clone()
        } else if self.options.tls.is_some() {
            format!("https://{}", self.options.address)
        } else {
            format!("http://{}", self.options.address)
        };
        Ok(tonic::transport::Endpoint::from_shared(addr)
            .map_err(|_| ClientError::Address(self.options.address.clone()))?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10)))
    }

    /// A channel to the server: plaintext, or mutual TLS once a valid workload
    /// certificate is held.
    async fn connect(&self) -> Result<tonic::transport::Channel, ClientError> {
        let endpoint = self.endpoint()?;
        let Some(tls) = &self.options.tls else {
            return Ok(endpoint.connect().await?);
        };
        let mut certificate = tls.certificate.clone();
        if certificate.current_valid().is_none() {
            tracing::info!(server = %self.options.address, "waiting for a valid workload certificate before connecting to the xDS server");
        }
        certificate.wait_valid().await;
        let config = tls
            .transport
            .client_config(Some(certificate.resolver()))
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(endpoint
            .connect_with_connector(tls.transport.connector(config))
            .await?)
    }

    async fn connect_and_follow(&mut self) -> Outcome {
        let channel = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.options.max_recv_message_size)
            .max_encoding_message_size(self.options.max_send_message_size);
        self.with_status(|s| {
            s.connected = true;
            s.connected_since = Some(std::time::SystemTime::now());
            s.connects += 1;
        });
        self.start_initial_fetch_timers();
        tracing::info!(server = %self.options.address, delta = self.options.delta, "connected to the xDS server");
        if self.options.delta {
            self.follow_delta(client).await
        } else {
            self.follow_sotw(client).await
        }
    }

    /// The named subscriptions the accepted state calls for.
    fn wanted(&self) -> BTreeMap<TypeUrl, BTreeSet<String>> {
        let refs = self.state.references();
        TypeUrl::ALL
            .iter()
            .filter_map(|&t| self.state.wanted(t, &refs).map(|n| (t, n)))
            .collect()
    }

    /// Applies the state to the consumer when it is complete, or after warming too long.
    fn maybe_apply(&mut self) {
        if !self.dirty {
            return;
        }
        let complete = self.state.complete();
        let warmed_out = self.applied_once
            && self
                .warming_since
                .is_some_and(|t| t.elapsed() >= self.options.warming_timeout);
        if !complete && !warmed_out {
            if self.warming_since.is_none() {
                self.warming_since = Some(Instant::now());
            }
            tracing::debug!(missing = ?self.state.missing(), "waiting for referenced resources");
            return;
        }
        if warmed_out && !complete {
            let missing = self.state.missing();
            tracing::warn!(missing = %listed(missing.iter().cloned(), missing.len()), "applying an update whose referenced resources did not arrive");
        }
        self.dirty = false;
        self.warming_since = None;
        self.applied_once = true;
        self.subscribed_at.clear();
        self.consumer.apply(Arc::new(self.state.to_set()));
        self.ready_tx.send_replace(true);
        self.with_status(|s| {
            s.ready = true;
            s.applies += 1;
        });
    }

    /// Drops a resource no longer subscribed to; a secret is dropped by the consumer.
    fn forget(&mut self, t: TypeUrl, name: &str) {
        self.state.forget(t, name);
        if t == TypeUrl::Secret {
            self.consumer.update_secrets(&[], &[name.to_string()]);
        } else {
            self.dirty = true;
        }
    }

    /// The connection to the server is up and the stream being opened: the initial fetch
    /// timers of what the first sync still awaits start now.
    fn start_initial_fetch_timers(&mut self) {
        self.connected_since = Some(Instant::now());
        self.subscribed_at.clear();
    }

    /// Names subscribed on the current stream: their initial fetch timers start now.
    fn subscribing(&mut self, t: TypeUrl, names: impl IntoIterator<Item = String>) {
        if self.applied_once {
            return;
        }
        let now = Instant::now();
        for n in names {
            self.subscribed_at.insert(Subscription::Named(t, n), now);
        }
    }

    /// When `s` started waiting on the connection established at `connected`.
    fn waited_since(&self, s: &Subscription, connected: Instant) -> Instant {
        self.subscribed_at
            .get(s)
            .copied()
            .unwrap_or(connected)
            .max(connected)
    }

    /// When an awaited subscription of the first sync exceeds the initial fetch timeout.
    fn initial_fetch_deadline(&self) -> Option<Instant> {
        let since = self.connected_since?;
        if self.applied_once || self.options.initial_fetch_timeout.is_zero() {
            return None;
        }
        self.state
            .waiting()
            .iter()
            .map(|s| self.waited_since(s, since))
            .min()
            .map(|t| t + self.options.initial_fetch_timeout)
    }

    /// Gives up on the awaited subscriptions whose initial fetch timeout passed, as Envoy
    /// does: they count as empty, and the first set may be applied without them.
    fn initial_fetch_timed_out(&mut self) {
        let (Some(since), timeout) = (self.connected_since, self.options.initial_fetch_timeout)
        else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<Subscription> = self
            .state
            .waiting()
            .into_iter()
            .filter(|s| self.waited_since(s, since) + timeout <= now)
            .collect();
        if expired.is_empty() {
            return;
        }
        let names = listed(expired.iter().map(|s| s.to_string()), expired.len());
        tracing::warn!(server = %self.options.address, ?timeout, subscriptions = %names, "initial fetch timeout: initializing without these subscriptions' first responses; what they bring later is applied as it comes");
        self.state.give_up(expired);
        self.dirty = true;
        self.maybe_apply();
    }

    fn warming_deadline(&self) -> Option<Instant> {
        if !self.applied_once {
            return None;
        }
        self.warming_since.map(|t| t + self.options.warming_timeout)
    }

    fn record(&self, t: TypeUrl, version: &str, rejections: &[Rejection]) {
        let resources = self.state.of(t).resources.len();
        let message = (!rejections.is_empty()).then(|| nack_message(rejections));
        self.with_status(|s| {
            let ts = s.types.entry(t.short()).or_default();
            ts.resources = resources;
            match &message {
                None => {
                    ts.acks += 1;
                    ts.version = version.to_string();
                    ts.last_ack_at = Some(std::time::SystemTime::now());
                }
                Some(m) => {
                    ts.nacks += 1;
                    ts.last_nack = Some(m.clone());
                    ts.last_nack_at = Some(std::time::SystemTime::now());
                }
            }
        });
        if let Some(m) = message {
            tracing::warn!(ty = t.short(), error = %m, "rejecting xDS update (NACK)");
        }
    }

    /// What a new stream subscribes to, in xDS order: every type with its resource names
    /// (empty: wildcard), except types whose references currently name nothing.
    fn initial_subscriptions(&self) -> Vec<(TypeUrl, BTreeSet<String>)> {
        let wanted = self.wanted();
        TypeUrl::ALL
            .into_iter()
            .filter_map(|t| match wanted.get(&t) {
                Some(n) if n.is_empty() => None,
                Some(n) => Some((t, n.clone())),
                None => Some((t, BTreeSet::new())),
            })
            .collect()
    }

    /// Waits for the server to accept a stream (some servers answer the call only with
    /// their first response), giving up on subscriptions meanwhile as their initial fetch
    /// timeouts pass.
    async fn opening<F: std::future::Future>(&mut self, call: F) -> F::Output {
        tokio::pin!(call);
        loop {
            let initial_fetch = self.initial_fetch_deadline();
            tokio::select! {
                r = &mut call => return r,
                _ = tokio::time::sleep_until(initial_fetch.unwrap_or_else(Instant::now)), if initial_fetch.is_some() => {
                    self.initial_fetch_timed_out();
                }
            }
        }
    }

    /// The next response on a stream, or how the stream ended (`progressed`: it delivered
    /// before). Config whose warming deadline passes meanwhile is applied.
    async fn receive<T: prost::Message + Default>(
        &mut self,
        inbound: &mut tonic::Streaming<T>,
        progressed: bool,
    ) -> Result<T, Outcome> {
        loop {
            let deadline = self.warming_deadline();
            let initial_fetch = self.initial_fetch_deadline();
            tokio::select! {
                m = inbound.message() => return match m {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err(Outcome::of(progressed, ClientError::Closed)),
                    Err(status) => Err(Outcome::of(progressed, status.into())),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.maybe_apply();
                }
                _ = tokio::time::sleep_until(initial_fetch.unwrap_or_else(Instant::now)), if initial_fetch.is_some() => {
                    self.initial_fetch_timed_out();
                }
            }
        }
    }

    // ----- delta -----

    async fn follow_delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Outcome {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        // Subscriptions as the server knows them on this stream.
        let mut subscribed: BTreeMap<TypeUrl, BTreeSet<String>> = BTreeMap::new();
        let mut first = true;
        for (t, names) in self.initial_subscriptions() {
            let req = DeltaDiscoveryRequest {
                node: first.then(|| self.options.node.clone()),
                type_url: t.as_str().to_string(),
                resource_names_subscribe: names.iter().cloned().collect(),
                initial_resource_versions: self.state.versions(t),
                ..Default::default()
            };
            first = false;
            subscribed.insert(t, names);
            let _ = tx.try_send(req);
        }
        let opening = client.delta_aggregated_resources(ReceiverStream::new(rx));
        let mut inbound = match self.opening(opening).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Outcome::Failed(status.into()),
        };
        let mut progressed = false;
        loop {
            let resp: DeltaDiscoveryResponse = match self.receive(&mut inbound, progressed).await {
                Ok(r) => r,
                Err(end) => return end,
            };
            progressed = true;
            let Some(t) = TypeUrl::parse(&resp.type_url) else {
                // A type we never asked for: refuse it so the server knows.
                let nack = DeltaDiscoveryRequest {
                    error_detail: Some(unsupported_type(&resp.type_url)),
                    type_url: resp.type_url,
                    response_nonce: resp.nonce,
                    ..Default::default()
                };
                if !send_on(&tx, nack).await {
                    return Outcome::of(progressed, ClientError::Stuck);
                }
                continue;
            };
            let update = Update {
                ty: t,
                resources: resp
                    .resources
                    .into_iter()
                    .filter_map(|r| {
                        r.resource.map(|any| Incoming {
                            name: r.name,
                            version: r.version,
                            resource: any,
                        })
                    })
                    .collect(),
                removed: resp.removed_resources,
                complete_list: false,
                version: resp.system_version_info.clone(),
            };
            let named = subscribed
                .get(&t)
                .filter(|_| matches!(t, TypeUrl::Endpoint | TypeUrl::Route | TypeUrl::Secret));
            let rejections = self.state.apply(&update, self.consumer.as_ref(), named);
            self.record(t, &resp.system_version_info, &rejections);
            // Secrets were handed to the consumer as they came: no set to apply for them.
            if t != TypeUrl::Secret
                && (rejections.len() < update.resources.len() || !update.removed.is_empty())
            {
                self.dirty = true;
            }
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                error_detail: (!rejections.is_empty())
                    .then(|| rpc_status(nack_message(&rejections))),
                ..Default::default()
            };
            if !send_on(&tx, ack).await {
                return Outcome::of(progressed, ClientError::Stuck);
            }
            // Follow the references of what was accepted.
            for (t, names) in self.wanted() {
                let old = subscribed.entry(t).or_default();
                if *old == names {
                    continue;
                }
                let req = DeltaDiscoveryRequest {
                    type_url: t.as_str().to_string(),
                    resource_names_subscribe: names.difference(old).cloned().collect(),
                    resource_names_unsubscribe: old.difference(&names).cloned().collect(),
                    ..Default::default()
                };
                // Unsubscribed resources are dropped: the server no longer tracks them.
                for n in &req.resource_names_unsubscribe {
                    self.forget(t, n);
                }
                self.subscribing(t, req.resource_names_subscribe.iter().cloned());
                *old = names;
                if !send_on(&tx, req).await {
                    return Outcome::of(progressed, ClientError::Stuck);
                }
            }
            self.maybe_apply();
        }
    }

    // ----- state of the world -----

    async fn follow_sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Outcome {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        let mut names: BTreeMap<TypeUrl, BTreeSet<String>> = BTreeMap::new();
        let mut nonces: BTreeMap<TypeUrl, String> = BTreeMap::new();
        let mut first = true;
        for (t, n) in self.initial_subscriptions() {
            let req = DiscoveryRequest {
                node: first.then(|| self.options.node.clone()),
                type_url: t.as_str().to_string(),
                version_info: self.state.of(t).version.clone(),
                resource_names: n.iter().cloned().collect(),
                ..Default::default()
            };
            first = false;
            names.insert(t, n);
            let _ = tx.try_send(req);
        }
        let opening = client.stream_aggregated_resources(ReceiverStream::new(rx));
        let mut inbound = match self.opening(opening).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Outcome::Failed(status.into()),
        };
        let mut progressed = false;
        loop {
            let resp: DiscoveryResponse = match self.receive(&mut inbound, progressed).await {
                Ok(r) => r,
                Err(end) => return end,
            };
            progressed = true;
            let Some(t) = TypeUrl::parse(&resp.type_url) else {
                let nack = DiscoveryRequest {
                    error_detail: Some(unsupported_type(&resp.type_url)),
                    type_url: resp.type_url,
                    response_nonce: resp.nonce,
                    ..Default::default()
                };
                if !send_on(&tx, nack).await {
                    return Outcome::of(progressed, ClientError::Stuck);
                }
                continue;
            };
            let wildcard = matches!(t, TypeUrl::Cluster | TypeUrl::Listener);
            let update = Update {
                ty: t,
                resources: resp
                    .resources
                    .into_iter()
                    .map(|any| Incoming {
                        name: String::new(),
                        version: resp.version_info.clone(),
                        resource: any,
                    })
                    .collect(),
                removed: Vec::new(),
                complete_list: wildcard,
                version: resp.version_info.clone(),
            };
            let named = if wildcard { None } else { names.get(&t) };
            let rejections = self.state.apply(&update, self.consumer.as_ref(), named);
            self.record(t, &resp.version_info, &rejections);
            self.dirty |=
                t != TypeUrl::Secret && (rejections.len() < update.resources.len() || wildcard);
            nonces.insert(t, resp.nonce.clone());
            let ack = DiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                // A NACK names the last version accepted, an ACK the one just applied.
                version_info: self.state.of(t).version.clone(),
                resource_names: names
                    .get(&t)
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default(),
                error_detail: (!rejections.is_empty())
                    .then(|| rpc_status(nack_message(&rejections))),
                ..Default::default()
            };
            if !send_on(&tx, ack).await {
                return Outcome::of(progressed, ClientError::Stuck);
            }
            for (t, n) in self.wanted() {
                if names.get(&t).map_or(n.is_empty(), |old| *old == n) {
                    continue;
                }
                // Resources no longer referenced are dropped.
                let old = names.get(&t).cloned().unwrap_or_default();
                for gone in old.difference(&n) {
                    self.forget(t, gone);
                }
                self.subscribing(t, n.difference(&old).cloned());
                let req = DiscoveryRequest {
                    type_url: t.as_str().to_string(),
                    version_info: self.state.of(t).version.clone(),
                    response_nonce: nonces.get(&t).cloned().unwrap_or_default(),
                    resource_names: n.iter().cloned().collect(),
                    ..Default::default()
                };
                names.insert(t, n);
                if !send_on(&tx, req).await {
                    return Outcome::of(progressed, ClientError::Stuck);
                }
            }
            self.maybe_apply();
        }
    }
}
