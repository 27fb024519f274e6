//! Incremental (delta) ADS.
//!
//! Per type the stream tracks what the proxy holds (name -> content hash), starting from
//! the `initial_resource_versions` a reconnecting proxy sends, so only differences are
//! pushed. LDS/CDS subscribe by legacy wildcard (an empty first subscribe) or `*`;
//! EDS/RDS/SDS by name. A subscribed name the snapshot lacks is answered once in
//! `removed_resources` ("does not exist") so the proxy does not wait for it. A new
//! wildcard subscription (the first request of the type on a stream, a reconnect
//! included, or a later `*`) is always answered, with an empty response if the proxy
//! already holds everything or there is nothing: Envoy completes its initialization only
//! on a response (go-control-plane and istiod answer it too). Otherwise nothing is sent
//! when nothing differs. Removals of
//! resources the proxy holds go out after every type's updates (make before break).
//! An ACK or NACK carries only the nonce; a NACKed resource stays recorded as sent, so
//! it is not pushed again until its content changes.
use super::snapshot::{Entry, Snapshot, parse_version, version_string};
use super::sotw::wildcard_type;
use super::status::Nack;
use super::stream::{Engine, StreamCtx, truncate};
use super::wire::DeltaResponse;
use crate::xds::TypeUrl;
use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::Status;

/// Responses awaiting an ACK that are remembered; older ones count as lost.
const MAX_OUTSTANDING: usize = 64;

#[derive(Default)]
struct TypeState {
    requested: bool,
    wildcard: bool,
    /// Subscribed names, shared with every stream subscribed to the same ones.
    names: Arc<HashSet<Arc<str>>>,
    /// What the proxy holds.
    has: Holdings,
    /// Subscribed names already answered as not existing.
    told_absent: HashSet<Arc<str>>,
    dirty: bool,
    removals: bool,
    /// Held entries to send again although unchanged (the endpoints of changed clusters).
    resend: HashSet<Arc<str>>,
    /// A wildcard subscription was made that no response has answered yet.
    unanswered: bool,
}

/// What a proxy holds of one type: name -> our content hash (`None`: a version we did not
/// make). Stored as a shared base, the snapshot the proxy was last fully in sync with
/// (it holds exactly that snapshot's wanted entries), plus the differences since. A proxy
/// in sync costs no per-name memory, however many resources it holds.
#[derive(Default)]
struct Holdings {
    base: Option<Arc<Snapshot>>,
    /// Held entries that differ from the base (or are not in it).
    overlay: HashMap<Arc<str>, Option<u64>>,
    /// Wanted entries of the base that are not held.
    not_held: HashSet<Arc<str>>,
}

impl Holdings {
    fn get(&self, t: TypeUrl, name: &str, wanted: impl Fn(&str) -> bool) -> Option<Option<u64>> {
        if let Some(v) = self.overlay.get(name) {
            return Some(*v);
        }
        let base = self.base.as_ref()?;
        if self.not_held.contains(name) || !wanted(name) {
            return None;
        }
        base.of(t).get(name).map(|e| Some(e.hash))
    }

    fn insert(&mut self, name: Arc<str>, hash: Option<u64>) {
        self.not_held.remove(&name);
        self.overlay.insert(name, hash);
    }

    fn remove(&mut self, t: TypeUrl, name: &str) {
        self.overlay.remove(name);
        if let Some(e) = self.base.as_ref().and_then(|b| b.of(t).get(name)) {
            self.not_held.insert(e.name.clone());
        }
    }

    /// A name newly subscribed: the base does not stand for it.
    fn subscribed(&mut self, t: TypeUrl, name: &str) {
        if self.overlay.contains_key(name) {
            return;
        }
        if let Some(e) = self.base.as_ref().and_then(|b| b.of(t).get(name)) {
            self.not_held.insert(e.name.clone());
        }
    }

    /// Held names that `ts` lacks.
    fn missing_from(
        &self,
        t: TypeUrl,
        ts: &super::snapshot::TypeSnapshot,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .overlay
            .keys()
            .filter(|n| ts.get(n).is_none())
            .cloned()
            .collect();
        if let Some(base) = &self.base {
            out.extend(
                base.of(t)
                    .entries()
                    .iter()
                    .filter(|e| {
                        ts.get(&e.name).is_none()
                            && wanted(&e.name)
                            && !self.not_held.contains(&e.name)
                            && !self.overlay.contains_key(&e.name)
                    })
                    .map(|e| e.name.clone()),
            );
        }
        out
    }

    /// The proxy now holds exactly the wanted entries of `snapshot`.
    fn rebase(&mut self, snapshot: &Arc<Snapshot>) {
        self.base = Some(snapshot.clone());
        self.overlay = HashMap::new();
        self.not_held = HashSet::new();
    }

    /// Forgets the base, listing what it stood for (when the meaning of "wanted"
    /// changes under it).
    fn materialize(&mut self, t: TypeUrl, wanted: impl Fn(&str) -> bool) {
        if let Some(base) = self.base.take() {
            for e in base.of(t).entries() {
                if wanted(&e.name)
                    && !self.not_held.contains(&e.name)
                    && !self.overlay.contains_key(&e.name)
                {
                    self.overlay.insert(e.name.clone(), Some(e.hash));
                }
            }
            self.not_held = HashSet::new();
        }
    }
}

struct Outstanding {
    nonce: String,
    ty: TypeUrl,
    version: String,
}

/// The delta engine of one stream.
pub(crate) struct Delta {
    types: [TypeState; 5],
    snapshot: Option<Arc<Snapshot>>,
    outstanding: VecDeque<Outstanding>,
}

fn i(t: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

impl Delta {
    pub fn new() -> Delta {
        Delta {
            types: Default::default(),
            snapshot: None,
            outstanding: VecDeque::new(),
        }
    }

    fn respond(
        &mut self,
        t: TypeUrl,
        resources: Vec<Arc<Entry>>,
        removed: Vec<String>,
        ctx: &mut StreamCtx,
    ) -> DeltaResponse {
        let nonce = ctx.next_nonce();
        let version = self
            .snapshot
            .as_ref()
            .map(|s| version_string(s.of(t).version))
            .unwrap_or_default();
        ctx.inner.metrics.pushed(t);
        self.types[i(t)].unanswered = false;
        let count = resources.len() + removed.len();
        ctx.with_status(|s| {
            let ts = s.ty(t);
            ts.sent_version = version.clone();
            ts.sent_nonce = nonce.clone();
            ts.sent_at = Some(SystemTime::now());
            ts.sent_resources = count;
        });
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            nonce: nonce.clone(),
            ty: t,
            version: version.clone(),
        });
        DeltaResponse {
            system_version_info: version,
            resources,
            type_url: t,
            removed_resources: removed,
            nonce,
            control_plane: ctx.inner.identifier.clone(),
        }
    }

    fn try_upsert(&mut self, t: TypeUrl, ctx: &mut StreamCtx) -> Option<DeltaResponse> {
        let snap = self.snapshot.clone()?;
        let limit = ctx.inner.options.max_delta_response_bytes;
        let st = &mut self.types[i(t)];
        if !st.dirty || !st.requested {
            return None;
        }
        st.dirty = false;
        let ts = snap.of(t);
        let (wildcard, names) = (st.wildcard, &st.names);
        let wanted = |n: &str| wildcard || names.contains(n);
        let resend = &mut st.resend;
        let mut resources = Vec::new();
        // An update beyond the size limit goes out in several responses (delta allows any
        // split), so that no response exceeds what a proxy accepts.
        let mut full = false;
        let mut bytes = 0usize;
        let mut send = |e: &Arc<Entry>, has: &mut Holdings| {
            if has.get(t, &e.name, wanted) == Some(Some(e.hash)) && !resend.contains(&e.name) {
                return;
            }
            let len = super::wire::resource_len(e);
            if !resources.is_empty() && bytes + len > limit {
                full = true;
                return;
            }
            bytes += len;
            resend.remove(&e.name);
            has.insert(e.name.clone(), Some(e.hash));
            resources.push(e.clone());
        };
        if wildcard {
            for e in ts.entries() {
                send(e, &mut st.has);
            }
        }
        let mut absent = Vec::new();
        for n in names.iter() {
            match ts.get(n) {
                Some(e) => {
                    if !wildcard {
                        send(e, &mut st.has);
                    }
                }
                None => {
                    if st.has.get(t, n, wanted).is_none() && st.told_absent.insert(n.clone()) {
                        absent.push(n.to_string());
                    }
                }
            }
        }
        if full {
            st.dirty = true;
        }
        st.removals = !st.has.missing_from(t, ts, wanted).is_empty();
        if !full && !st.removals {
            // In sync with this snapshot: keep no per-name state.
            st.has.rebase(&snap);
        }
        // A new wildcard subscription gets an answer even if it is empty, unless the
        // removals that follow answer it.
        let answer = st.unanswered && st.wildcard && !st.removals;
        if resources.is_empty() && absent.is_empty() && !answer {
            return None;
        }
        Some(self.respond(t, resources, absent, ctx))
    }

    fn try_removals(&mut self, t: TypeUrl, ctx: &mut StreamCtx) -> Option<DeltaResponse> {
        let snap = self.snapshot.clone()?;
        let st = &mut self.types[i(t)];
        if !st.removals {
            return None;
        }
        st.removals = false;
        let ts = snap.of(t);
        let (wildcard, names) = (st.wildcard, &st.names);
        let gone = st
            .has
            .missing_from(t, ts, |n| wildcard || names.contains(n));
        for n in &gone {
            st.has.remove(t, n);
            if st.names.contains(n) {
                st.told_absent.insert(n.clone());
            }
        }
        if !st.dirty {
            st.has.rebase(&snap);
        }
        if gone.is_empty() {
            return None;
        }
        let removed = gone.iter().map(|n| n.to_string()).collect();
        Some(self.respond(t, Vec::new(), removed, ctx))
    }
}

impl Engine for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn response_nonce(req: &DeltaDiscoveryRequest) -> &str {
        &req.response_nonce
    }

    fn response_meta(resp: &DeltaResponse) -> (&str, usize, TypeUrl) {
        (
            &resp.nonce,
            super::wire::WireMessage::encoded_len(resp),
            resp.type_url,
        )
    }

    fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        ctx: &mut StreamCtx,
    ) -> Result<(), Status> {
        let Some(t) = ctx.parse_type(&req.type_url)? else {
            return Ok(());
        };
        ctx.check_names(req.resource_names_subscribe.len())?;
        ctx.check_names(req.initial_resource_versions.len())?;
        ctx.note_secret_names(t, req.resource_names_subscribe.iter().map(String::as_str));
        let st = &mut self.types[i(t)];
        if !st.requested {
            st.requested = true;
            st.dirty = true;
            // Legacy wildcard: the first request of LDS/CDS subscribes to nothing by name.
            st.wildcard = wildcard_type(t) && req.resource_names_subscribe.is_empty();
            st.unanswered = st.wildcard;
            for (name, v) in req.initial_resource_versions {
                st.has.insert(Arc::from(name), parse_version(&v));
            }
        }
        let mut names_changed = false;
        for n in req.resource_names_subscribe {
            if n == "*" {
                if !st.wildcard {
                    let names = &st.names;
                    st.has.materialize(t, |x| names.contains(x));
                    st.unanswered = true;
                }
                st.wildcard = true;
                st.dirty = true;
            } else if !st.names.contains(n.as_str()) {
                // Share the snapshot's copy of the name when it has one.
                let name = self
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.of(t).get(&n).map(|e| e.name.clone()))
                    .unwrap_or_else(|| Arc::from(n));
                // Not held yet, whatever the base says (unless the proxy said it
                // holds it, in its initial versions).
                if !st.wildcard {
                    st.has.subscribed(t, &name);
                }
                Arc::make_mut(&mut st.names).insert(name);
                names_changed = true;
                st.dirty = true;
            }
        }
        for n in req.resource_names_unsubscribe {
            if n == "*" {
                if st.wildcard {
                    st.has.materialize(t, |_| true);
                }
                st.wildcard = false;
            } else {
                if st.names.contains(n.as_str()) {
                    Arc::make_mut(&mut st.names).remove(n.as_str());
                    names_changed = true;
                }
                st.resend.remove(n.as_str());
                st.has.remove(t, &n);
                st.told_absent.remove(n.as_str());
            }
        }
        ctx.check_names(st.names.len())?;
        if names_changed {
            st.names = ctx.inner.delta_names.intern(std::mem::take(&mut st.names));
        }
        let (wildcard, subscribed) = (st.wildcard, st.names.len());
        ctx.with_status(|s| {
            let ts = s.ty(t);
            ts.wildcard = wildcard;
            ts.subscribed = subscribed;
        });
        if req.response_nonce.is_empty() {
            return Ok(());
        }
        let Some(pos) = self
            .outstanding
            .iter()
            .position(|o| o.nonce == req.response_nonce && o.ty == t)
        else {
            ctx.inner
                .metrics
                .stale_nonces
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        };
        let Some(o) = self.outstanding.remove(pos) else {
            return Ok(());
        };
        match req.error_detail {
            Some(err) => {
                ctx.inner.metrics.rejected(t);
                let message = truncate(&err.message, 4096).to_string();
                tracing::warn!(node = %ctx.node.identity.id, ty = t.short(), nonce = %o.nonce, error = %message, "proxy rejected a push (NACK)");
                ctx.record_nack(
                    t,
                    Nack {
                        version: o.version,
                        nonce: o.nonce,
                        error: message,
                        at: SystemTime::now(),
                    },
                );
            }
            None => ctx.with_status(|s| {
                let ts = s.ty(t);
                ts.acked_version = o.version;
                ts.acked_nonce = o.nonce;
                ts.acked_at = Some(SystemTime::now());
                ts.nacked = None;
            }),
        }
        Ok(())
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>, ctx: &mut StreamCtx) {
        if let Some(old) = &self.snapshot {
            let eds = &mut self.types[i(TypeUrl::Endpoint)];
            for n in super::snapshot::changed_eds_services(old, &snapshot) {
                if eds.wildcard || eds.names.contains(&n) {
                    eds.resend.insert(n);
                    eds.dirty = true;
                }
            }
        }
        let mut changed = false;
        for t in TypeUrl::ALL {
            let differs = self
                .snapshot
                .as_ref()
                .is_none_or(|old| old.of(t).version != snapshot.of(t).version);
            if differs {
                self.types[i(t)].dirty = true;
                changed |= self.types[i(t)].requested;
            }
            // A base whose entries of this type equal the new snapshot's moves to it, so
            // that old snapshots are not kept alive by types that did not change.
            let has = &mut self.types[i(t)].has;
            if has.base.as_ref().is_some_and(|b| {
                !Arc::ptr_eq(b, &snapshot)
                    && b.of(t).version == snapshot.of(t).version
                    && b.of(t).len() == snapshot.of(t).len()
            }) {
                has.base = Some(snapshot.clone());
            }
        }
        if changed && ctx.converging.is_none() {
            ctx.converging = snapshot.changed_at;
        }
        ctx.with_status(|s| {
            s.snapshot_generation = snapshot.generation;
            s.snapshot_error = None;
        });
        self.snapshot = Some(snapshot);
    }

    fn has_pending(&self) -> bool {
        self.snapshot.is_some()
            && self
                .types
                .iter()
                .any(|s| (s.dirty && s.requested) || s.removals)
    }

    fn next_response(&mut self, ctx: &mut StreamCtx) -> Option<DeltaResponse> {
        for t in TypeUrl::ALL {
            if let Some(r) = self.try_upsert(t, ctx) {
                return Some(r);
            }
        }
        // Removals only once no type has updates left.
        if self.types.iter().any(|s| s.dirty && s.requested) {
            return None;
        }
        for t in TypeUrl::ALL {
            if let Some(r) = self.try_removals(t, ctx) {
                return Some(r);
            }
        }
        None
    }

    fn settled(&self) -> bool {
        !self.has_pending() && self.outstanding.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::metrics::Mode;
    use crate::controlplane::sample::{SampleGateway, SampleService, cluster_name};
    use crate::controlplane::stream::testing::{ctx, drain, snapshot};
    use crate::xds::ResourceSet;

    fn subscribe(t: TypeUrl, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(r: &DeltaResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: r.type_url.as_str().into(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        }
    }

    fn gateway() -> ResourceSet {
        SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec!["127.0.0.1:9000".parse().unwrap()],
            )],
        )
        .resources()
    }

    /// (type, resource names, removed names) of each response.
    fn summary(rs: &[DeltaResponse]) -> Vec<(TypeUrl, Vec<String>, Vec<String>)> {
        rs.iter()
            .map(|r| {
                (
                    r.type_url,
                    r.resources.iter().map(|e| e.name.to_string()).collect(),
                    r.removed_resources.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn streams_subscribed_to_the_same_names_share_one_set() {
        let mut ctx1 = ctx(Mode::Delta);
        let mut ctx2 = ctx(Mode::Delta);
        ctx2.inner = ctx1.inner.clone();
        let (mut d1, mut d2) = (Delta::new(), Delta::new());
        let names = ["c1", "c2", "c3"];
        d1.on_request(subscribe(TypeUrl::Endpoint, &names), &mut ctx1)
            .unwrap();
        // The same names, in another order and in two requests.
        d2.on_request(subscribe(TypeUrl::Endpoint, &["c3", "c1"]), &mut ctx2)
            .unwrap();
        d2.on_request(subscribe(TypeUrl::Endpoint, &["c2"]), &mut ctx2)
            .unwrap();
        let set = |d: &Delta| d.types[i(TypeUrl::Endpoint)].names.clone();
        assert!(Arc::ptr_eq(&set(&d1), &set(&d2)));
        // One stream leaves a name: it gets its own set, the other keeps all three.
        d2.on_request(
            DeltaDiscoveryRequest {
                type_url: TypeUrl::Endpoint.as_str().into(),
                resource_names_unsubscribe: vec!["c2".into()],
                ..Default::default()
            },
            &mut ctx2,
        )
        .unwrap();
        assert_eq!(set(&d1).len(), 3);
        assert_eq!(set(&d2).len(), 2);
        assert!(!Arc::ptr_eq(&set(&d1), &set(&d2)));
    }

    #[test]
    fn a_wildcard_subscription_to_nothing_is_answered_with_an_empty_response() {
        let mut ctx = ctx(Mode::Delta);
        let mut d = Delta::new();
        // A gateway whose routes all answer by themselves: no cluster at all.
        let mut set = gateway();
        set.clusters.clear();
        set.endpoints.clear();
        set.routes[0].virtual_hosts[0].routes.clear();
        d.on_request(subscribe(TypeUrl::Cluster, &[]), &mut ctx)
            .unwrap();
        assert!(drain(&mut d, &mut ctx).is_empty(), "no snapshot yet");
        d.on_snapshot(snapshot(&set, 1), &mut ctx);
        d.on_request(subscribe(TypeUrl::Listener, &[]), &mut ctx)
            .unwrap();
        let first = drain(&mut d, &mut ctx);
        assert_eq!(
            summary(&first),
            vec![
                (TypeUrl::Cluster, vec![], vec![]),
                (TypeUrl::Listener, vec!["0.0.0.0_8080".into()], vec![]),
            ]
        );
        assert!(!first[0].nonce.is_empty() && !first[0].system_version_info.is_empty());
        for r in &first {
            d.on_request(ack(r), &mut ctx).unwrap();
        }
        assert!(d.settled());
        // Later pushes with nothing new for the proxy send nothing.
        d.on_snapshot(snapshot(&set, 2), &mut ctx);
        assert!(drain(&mut d, &mut ctx).is_empty());
        // A name that does not exist is answered in removed_resources, once.
        d.on_request(subscribe(TypeUrl::Route, &["http.8080", "gone"]), &mut ctx)
            .unwrap();
        assert_eq!(
            summary(&drain(&mut d, &mut ctx)),
            vec![(
                TypeUrl::Route,
                vec!["http.8080".into()],
                vec!["gone".into()]
            )]
        );
        d.on_snapshot(snapshot(&set, 3), &mut ctx);
        assert!(drain(&mut d, &mut ctx).is_empty());
    }

    #[test]
    fn a_reconnecting_proxy_holding_everything_gets_its_wildcard_answered() {
        let set = gateway();
        let snap = snapshot(&set, 1);
        let held = |t: TypeUrl| {
            snap.of(t)
                .entries()
                .iter()
                .map(|e| (e.name.to_string(), e.version().to_string()))
                .collect()
        };
        let mut ctx = ctx(Mode::Delta);
        let mut d = Delta::new();
        d.on_snapshot(snap.clone(), &mut ctx);
        for t in [TypeUrl::Cluster, TypeUrl::Listener] {
            let mut req = subscribe(t, &[]);
            req.initial_resource_versions = held(t);
            d.on_request(req, &mut ctx).unwrap();
        }
        let ca = cluster_name("a");
        for (t, name) in [
            (TypeUrl::Endpoint, ca.as_str()),
            (TypeUrl::Route, "http.8080"),
        ] {
            let mut req = subscribe(t, &[name]);
            req.initial_resource_versions = held(t);
            d.on_request(req, &mut ctx).unwrap();
        }
        // The wildcard types are confirmed with empty responses; the named ones, held
        // and current, need nothing.
        assert_eq!(
            summary(&drain(&mut d, &mut ctx)),
            vec![
                (TypeUrl::Cluster, vec![], vec![]),
                (TypeUrl::Listener, vec![], vec![]),
            ]
        );
        // A wildcard subscription added later (`*`) is answered too.
        let mut ctx = crate::controlplane::stream::testing::ctx(Mode::Delta);
        let mut d = Delta::new();
        d.on_snapshot(snap.clone(), &mut ctx);
        let mut req = subscribe(TypeUrl::Cluster, &[&ca]);
        req.initial_resource_versions = held(TypeUrl::Cluster);
        d.on_request(req, &mut ctx).unwrap();
        assert!(drain(&mut d, &mut ctx).is_empty(), "held and current");
        d.on_request(subscribe(TypeUrl::Cluster, &["*"]), &mut ctx)
            .unwrap();
        assert_eq!(
            summary(&drain(&mut d, &mut ctx)),
            vec![(TypeUrl::Cluster, vec![], vec![])]
        );
    }
}
