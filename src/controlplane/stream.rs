//! One xDS stream's life, shared by state-of-the-world and delta: wait for the node,
//! attach to the proxy's snapshot, then react to requests and new snapshots and send
//! the next response whenever the proxy can take one.
//!
//! Responses are built lazily, when the bounded send queue has room: a proxy that reads
//! slowly gets the latest state rather than every intermediate one, a proxy that never
//! reads costs a queue of `send_queue` responses and is dropped after `send_timeout`,
//! and neither slows any other stream.
use super::metrics::Mode;
use super::node::{NodeInfo, parse_node};
use super::server::{Attachment, Inner};
use super::snapshot::Snapshot;
use super::status::ProxyStatus;
use super::wire::RequestStream;
use crate::xds::TypeUrl;
use crate::xds::pb::envoy::config::core::v3::Node;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

/// What a protocol flavour (SotW or delta) does with requests and snapshots.
pub(crate) trait Engine: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;

    fn node(req: &Self::Request) -> Option<&Node>;
    /// The nonce a request answers (ACK or NACK), empty for none.
    fn response_nonce(req: &Self::Request) -> &str;
    /// A response's nonce, encoded size and type.
    fn response_meta(resp: &Self::Response) -> (&str, usize, TypeUrl);
    /// Handles a request; an error closes the stream with that status.
    fn on_request(&mut self, req: Self::Request, ctx: &mut StreamCtx) -> Result<(), Status>;
    /// A new snapshot for this proxy.
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>, ctx: &mut StreamCtx);
    /// True when a response may be due (cheap: flags only).
    fn has_pending(&self) -> bool;
    /// Builds the next response, in push order; `None` when nothing differs after all.
    fn next_response(&mut self, ctx: &mut StreamCtx) -> Option<Self::Response>;
    /// True when everything sent has been ACKed or NACKed and nothing is pending.
    fn settled(&self) -> bool;
}

/// Per-stream context the engines share.
pub(crate) struct StreamCtx {
    pub inner: Arc<Inner>,
    pub status: Arc<Mutex<ProxyStatus>>,
    pub node: NodeInfo,
    /// Restricts the stream to one type (the standalone SDS service).
    pub only: Option<TypeUrl>,
    nonce_prefix: String,
    nonce_counter: u64,
    warned_unknown: bool,
    /// The stream's client certificate was verified (mutual TLS): it may be served the
    /// mesh's own secrets.
    pub verified: bool,
    /// The stream came over the agent's Unix socket: its secrets are the pod's own.
    local: bool,
    warned_mesh_secret: bool,
    /// The stream's connection id in the registry.
    pub conn_id: u64,
    /// The stream asked for `default` or `ROOTCA` (verified streams only).
    asked_mesh_secrets: bool,
    /// A snapshot with a change time whose ACKs are awaited (for convergence time).
    pub converging: Option<Instant>,
}

impl StreamCtx {
    /// A nonce unique to this stream and process.
    pub fn next_nonce(&mut self) -> String {
        self.nonce_counter += 1;
        format!("{}-{}", self.nonce_prefix, self.nonce_counter)
    }

    pub fn with_status<R>(&self, f: impl FnOnce(&mut ProxyStatus) -> R) -> R {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st)
    }

    /// A NACK of type `t`: kept in the stream's status and among the recent errors.
    pub fn record_nack(&self, t: TypeUrl, nack: super::status::Nack) {
        let subject = format!("{} {}", self.node.proxy_id, t.short());
        self.inner
            .errors
            .push(super::errors::ErrorKind::Nack, subject, &nack.error);
        self.with_status(|s| s.ty(t).nacked = Some(nack));
    }

    /// Maps a request's type URL: `Ok(None)` for types not served (ignored, as istiod
    /// does), an error for a missing type URL or one outside the stream's restriction.
    pub fn parse_type(&mut self, url: &str) -> Result<Option<TypeUrl>, Status> {
        let url = if url.is_empty() {
            match self.only {
                Some(t) => t.as_str(),
                None => {
                    return Err(Status::invalid_argument(
                        "type_url is required on an aggregated stream",
                    ));
                }
            }
        } else {
            url
        };
        match TypeUrl::parse(url) {
            Some(t) if self.only.is_some_and(|o| o != t) => Err(Status::invalid_argument(format!(
                "this service serves only {}",
                self.only.map(TypeUrl::as_str).unwrap_or_default()
            ))),
            Some(t) => {
                self.inner.metrics.request(t);
                Ok(Some(t))
            }
            None => {
                self.inner
                    .metrics
                    .unknown_types
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !self.warned_unknown {
                    self.warned_unknown = true;
                    tracing::warn!(node = %self.node.identity.id, type_url = %truncate(url, 200), "request for a resource type this control plane does not serve; ignored");
                }
                Ok(None)
            }
        }
    }

    /// Notes secret names a stream subscribes to: the workload certificate is served
    /// only to streams with a verified client certificate; others asking for it are told
    /// it does not exist, and logged once.
    /// A verified stream asking for them has its key's workload certificate issued then
    /// (and renewed from then on): proxies that make their own key never ask.
    pub fn note_secret_names<'a>(&mut self, t: TypeUrl, mut names: impl Iterator<Item = &'a str>) {
        if t != TypeUrl::Secret {
            return;
        }
        if self.verified {
            if !self.asked_mesh_secrets && names.any(super::workload::is_mesh_secret) {
                self.asked_mesh_secrets = true;
                self.inner.want_mesh_secrets(self.conn_id);
            }
            return;
        }
        if self.warned_mesh_secret || self.local {
            return;
        }
        if names.any(|n| n == super::workload::WORKLOAD_SECRET) {
            self.warned_mesh_secret = true;
            tracing::warn!(node = %self.node.identity.id, "a stream without a verified client certificate asked for the workload certificate `default`; it is served only over mutual TLS (15012)");
        }
    }

    /// Checks a subscription's size against the configured bound.
    pub fn check_names(&self, n: usize) -> Result<(), Status> {
        let max = self.inner.options.max_resource_names;
        if n > max {
            return Err(Status::resource_exhausted(format!(
                "{n} resource names in one subscription; at most {max} are allowed"
            )));
        }
        Ok(())
    }
}

/// The push budget: how many bytes of responses may be sent and not yet answered (ACKed
/// or NACKed) across all streams, as istiod's push throttle bounds concurrent pushes. A
/// change that touches every proxy then goes out in waves instead of every stream's
/// response sitting in memory at once, and a proxy that reads slowly holds only its own
/// share. Streams wait in FIFO order; a response is never held back by its own size (it
/// takes at most the whole budget), and a share is returned after `ack_timeout` even if
/// the proxy never answers.
pub(crate) struct PushBudget {
    pub semaphore: Arc<tokio::sync::Semaphore>,
    /// The budget, in KiB.
    total: u32,
    pub ack_timeout: std::time::Duration,
}

impl PushBudget {
    pub fn new(bytes: usize, ack_timeout: std::time::Duration) -> PushBudget {
        let total = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX >> 4);
        PushBudget {
            semaphore: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
            ack_timeout,
        }
    }

    /// The share (KiB, at least 1, at most the whole budget) of a response of `size`.
    pub fn share(&self, size: usize) -> u32 {
        u32::try_from(size.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }
}

type Acquiring = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

/// A stream's responses that hold a share of the push budget.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<(String, tokio::sync::OwnedSemaphorePermit, Instant)>);

impl InFlight {
    fn add(&mut self, nonce: &str, share: tokio::sync::OwnedSemaphorePermit) {
        self.0.push_back((nonce.to_string(), share, Instant::now()));
    }

    fn answered(&mut self, nonce: &str) {
        if !nonce.is_empty() {
            self.0.retain(|(n, _, _)| n != nonce);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn oldest(&self) -> Instant {
        self.0.front().map_or_else(Instant::now, |(_, _, t)| *t)
    }

    fn expire(&mut self, timeout: std::time::Duration) {
        let now = Instant::now();
        self.0.retain(|(_, _, t)| now.duration_since(*t) < timeout);
    }
}

/// Shortens untrusted text for logs.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn send_error<T>(tx: &mpsc::Sender<Result<T, Status>>, status: Status, inner: &Inner) {
    inner
        .metrics
        .stream_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The queue may be full of responses the client never reads: do not wait for it.
    let _ = tx.try_send(Err(status));
}

/// How a stream was opened: its flavour, its restriction to one type (the standalone
/// SDS service), and the peer's address when the transport gives it.
pub(crate) struct Opening {
    pub mode: Mode,
    pub only: Option<TypeUrl>,
    pub peer: Option<std::net::SocketAddr>,
}

/// Runs one stream to its end.
pub(crate) async fn run<E: Engine>(
    inner: Arc<Inner>,
    mut inbound: RequestStream<E::Request>,
    tx: mpsc::Sender<Result<E::Response, Status>>,
    opening: Opening,
    auth: super::authz::StreamAuth,
    new_engine: impl FnOnce() -> E,
) {
    let Opening { mode, only, peer } = opening;
    let first =
        match tokio::time::timeout(inner.options.first_request_timeout, inbound.message()).await {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                // A request the transport refused (too large, undecodable): say so.
                tracing::debug!(%status, "the first request was refused");
                send_error(&tx, status, &inner).await;
                return;
            }
            Err(_) => {
                send_error(
                    &tx,
                    Status::deadline_exceeded("no request received"),
                    &inner,
                )
                .await;
                return;
            }
        };
    let node = match parse_node(E::node(&first)) {
        Ok(n) => n,
        Err(e) => {
            send_error(&tx, Status::invalid_argument(e.to_string()), &inner).await;
            return;
        }
    };
    if let Err(status) = auth.authorize(&node, E::node(&first)) {
        tracing::warn!(node = %node.identity.id, %status, "xDS stream refused");
        send_error(&tx, status, &inner).await;
        return;
    }
    let Attachment {
        mut snapshots,
        status,
        guard: _guard,
        conn_id,
    } = inner.attach(&node, auth.verified_identity(), mode);
    let verified = auth.verified_identity();
    {
        let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
        st.spiffe_identity = verified.as_ref().map(|id| id.to_string());
        st.peer = peer.map(|p| p.to_string());
    }
    tracing::info!(conn = conn_id, node = %node.identity.id, ?mode, identity = ?verified.as_ref().map(|i| i.to_string()), "proxy connected");
    let mut ctx = StreamCtx {
        inner: inner.clone(),
        status,
        node,
        only,
        nonce_prefix: format!("{:x}-{conn_id}", inner.boot_id),
        nonce_counter: 0,
        warned_unknown: false,
        converging: None,
        verified: verified.is_some(),
        local: matches!(auth, super::authz::StreamAuth::Local),
        warned_mesh_secret: false,
        conn_id,
        asked_mesh_secrets: false,
    };
    let mut engine = new_engine();
    if let Err(status) = engine.on_request(first, &mut ctx) {
        send_error(&tx, status, &inner).await;
        return;
    }
    let initial = snapshots.borrow_and_update().clone();
    if let Some(s) = initial {
        engine.on_snapshot(s, &mut ctx);
    }
    let send_timeout = inner.options.send_timeout;
    let mut closing = inner.closing.subscribe();
    let mut blocked_since: Option<Instant> = None;
    // The push budget (see `PushBudget`): a response waits here for its share, which
    // it holds until the proxy answers it.
    let mut inflight = InFlight::default();
    let mut parked: Option<(E::Response, u32, Instant)> = None;
    let mut acquiring: Option<Acquiring> = None;
    loop {
        let pending = parked.is_none() && engine.has_pending();
        if pending && blocked_since.is_none() {
            blocked_since = Some(Instant::now());
        }
        let deadline = blocked_since
            .map(|t| t + send_timeout)
            .unwrap_or_else(Instant::now);
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    inflight.answered(E::response_nonce(&req));
                    if let Err(status) = engine.on_request(req, &mut ctx) {
                        tracing::warn!(node = %ctx.node.identity.id, %status, "closing stream");
                        send_error(&tx, status, &inner).await;
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    // A request the transport refused (too large, undecodable): say so.
                    tracing::debug!(node = %ctx.node.identity.id, %status, "stream error");
                    send_error(&tx, status, &inner).await;
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    send_error(&tx, Status::unavailable("control plane shutting down"), &inner).await;
                    break;
                }
                let s = snapshots.borrow_and_update().clone();
                if let Some(s) = s {
                    engine.on_snapshot(s, &mut ctx);
                }
            }
            permit = tx.reserve(), if pending => match permit {
                Ok(permit) => {
                    blocked_since = None;
                    let started = Instant::now();
                    if let Some(resp) = engine.next_response(&mut ctx) {
                        let (nonce, size, t) = E::response_meta(&resp);
                        let n = inner.push_budget.share(size);
                        match inner.push_budget.semaphore.clone().try_acquire_many_owned(n) {
                            Ok(share) => {
                                inflight.add(nonce, share);
                                inner.metrics.sent(t, size, started.elapsed());
                                permit.send(Ok(resp));
                            }
                            Err(_) => {
                                inner.metrics.push_throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let budget = inner.push_budget.semaphore.clone();
                                acquiring = Some(Box::pin(async move { budget.acquire_many_owned(n).await }));
                                parked = Some((resp, n, started));
                            }
                        }
                    }
                }
                Err(_) => break,
            },
            share = async { acquiring.as_mut().expect("guarded").await }, if acquiring.is_some() => {
                acquiring = None;
                let (Ok(share), Some((resp, _, started))) = (share, parked.take()) else { break };
                let (nonce, size, t) = E::response_meta(&resp);
                inflight.add(nonce, share);
                inner.metrics.sent(t, size, started.elapsed());
                // The queue has room for it unless the proxy stopped reading, which the
                // send timeout ends.
                match tokio::time::timeout(send_timeout, tx.send(Ok(resp))).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            _ = tokio::time::sleep_until(inflight.oldest() + inner.push_budget.ack_timeout), if !inflight.is_empty() => {
                inflight.expire(inner.push_budget.ack_timeout);
            }
            _ = closing.changed() => {
                send_error(&tx, Status::unavailable("control plane shutting down"), &inner).await;
                break;
            }
            _ = tokio::time::sleep_until(deadline), if pending => {
                inner.metrics.write_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(node = %ctx.node.identity.id, timeout = ?send_timeout, "proxy is not reading its pushes; closing the stream");
                send_error(&tx, Status::deadline_exceeded("pushes not read in time"), &inner).await;
                break;
            }
        }
        if let Some(since) = ctx.converging
            && engine.settled()
        {
            inner.metrics.convergence.observe(since.elapsed());
            ctx.converging = None;
        }
    }
    tracing::info!(conn = conn_id, node = %ctx.node.identity.id, "proxy disconnected");
}

/// Engines driven by hand, without a connection: for the engines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::controlplane::server::Options;
    use crate::controlplane::snapshot::Interner;
    use crate::controlplane::source::StaticSource;
    use crate::xds::{ProxyIdentity, ResourceSet};

    /// The context of a stream of node `test` (an empty control plane behind it).
    pub fn ctx(mode: Mode) -> StreamCtx {
        let inner = Arc::new(Inner::new(
            Arc::new(StaticSource::new(ResourceSet::default())),
            Options::default(),
        ));
        let node = parse_node(Some(&Node {
            id: "test".into(),
            ..Default::default()
        }))
        .expect("a valid node");
        StreamCtx {
            inner,
            status: Arc::new(Mutex::new(ProxyStatus::new(1, &node, mode))),
            node,
            only: None,
            nonce_prefix: "test".into(),
            nonce_counter: 0,
            warned_unknown: false,
            converging: None,
            verified: false,
            local: false,
            warned_mesh_secret: false,
            conn_id: 1,
            asked_mesh_secrets: false,
        }
    }

    /// `set` as a proxy's snapshot.
    pub fn snapshot(set: &ResourceSet, generation: u64) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::build(
                ProxyIdentity::default(),
                set,
                generation,
                None,
                &Interner::default(),
            )
            .expect("a consistent set"),
        )
    }

    /// Every response the engine has to send now, in order.
    pub fn drain<E: Engine>(engine: &mut E, ctx: &mut StreamCtx) -> Vec<E::Response> {
        let mut out = Vec::new();
        // Bounded: a pending flag that never clears is a bug the test should see.
        for _ in 0..100 {
            if !engine.has_pending() {
                return out;
            }
            if let Some(r) = engine.next_response(ctx) {
                out.push(r);
            }
        }
        panic!("the engine stays pending");
    }
}
