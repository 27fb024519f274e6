//! State-of-the-world ADS, the way Envoy speaks it.
//!
//! - LDS and CDS are wildcard when their first request names nothing (Envoy): every
//!   response carries all listeners or clusters, and one left out is deleted by the
//!   proxy. A client that named resources (gRPC asks for `HOST:PORT` listeners) and
//!   later names none has unsubscribed from all, which is not a wildcard (the xDS
//!   protocol's legacy-wildcard rule). Removals from a wildcard response are
//!   held back: while other types still have updates to push, the wildcard response
//!   keeps the resources being removed, and a final response without them follows once
//!   everything else went out (make before break).
//! - RDS, EDS and SDS name their resources in every request, ACKs included; the answer
//!   carries exactly the named ones that exist.
//! - ACK: the nonce of our last response, no error. NACK: same with `error_detail`;
//!   recorded, and the same content is never sent again (only a change of content or of
//!   the requested names sends something new).
//! - The first request of a type on a stream (a reconnect's included) is always answered,
//!   with an empty list and a version if nothing exists: the proxy's initialization waits
//!   for it. Named types with no names at all are not answered (as istiod does).
//! - A request whose nonce is not our latest for the type is stale and ignored; the
//!   next ACK carries the full name list again and is compared with what we answered.
use super::snapshot::{Entry, Snapshot, VersionFold, version_string};
use super::status::Nack;
use super::stream::{Engine, StreamCtx, truncate};
use super::wire::SotwResponse;
use crate::xds::TypeUrl;
use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;
use tonic::Status;

/// Types that Envoy subscribes to by wildcard.
pub(crate) fn wildcard_type(t: TypeUrl) -> bool {
    matches!(t, TypeUrl::Cluster | TypeUrl::Listener)
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Subscription {
    wildcard: bool,
    /// Shared with every stream subscribed to the same names.
    names: Arc<BTreeSet<String>>,
}

struct Sent {
    nonce: String,
    version: u64,
    subscription: Subscription,
    /// For a wildcard type, what the response carried: every entry of the type in this
    /// snapshot, plus these held ones it no longer had.
    wildcard: Option<(Arc<Snapshot>, Vec<Arc<Entry>>)>,
}

#[derive(Default)]
struct TypeState {
    requested: bool,
    /// A request of this type named resources: an empty list later is no wildcard.
    named: bool,
    subscription: Subscription,
    /// Answer even if the content is unchanged (a new request or new names).
    force: bool,
    /// Content may differ from what was sent.
    dirty: bool,
    /// The last response still holds resources the snapshot no longer has.
    holds_removed: bool,
    last: Option<Sent>,
    /// The last response was ACKed or NACKed.
    answered: bool,
}

/// The SotW engine of one stream.
pub(crate) struct Sotw {
    types: [TypeState; 5],
    snapshot: Option<Arc<Snapshot>>,
}

fn i(t: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

impl Sotw {
    pub fn new() -> Sotw {
        Sotw {
            types: Default::default(),
            snapshot: None,
        }
    }

    /// The entries to send for `t`, their version, and the entries of the last
    /// response that the snapshot dropped (wildcard types). With `hold`, those are kept
    /// in the entries.
    fn desired(&self, t: TypeUrl, hold: bool) -> (Vec<Arc<Entry>>, u64, Vec<Arc<Entry>>) {
        let st = &self.types[i(t)];
        let Some(snap) = &self.snapshot else {
            return (Vec::new(), VersionFold::default().finish(0), Vec::new());
        };
        let ts = snap.of(t);
        let mut out: Vec<Arc<Entry>> = if st.subscription.wildcard {
            ts.entries().to_vec()
        } else {
            st.subscription
                .names
                .iter()
                .filter_map(|n| ts.get(n).cloned())
                .collect()
        };
        let mut gone = Vec::new();
        if st.subscription.wildcard
            && let Some(Sent {
                wildcard: Some((from, held)),
                ..
            }) = &st.last
        {
            gone = from
                .of(t)
                .entries()
                .iter()
                .chain(held)
                .filter(|e| ts.get(&e.name).is_none())
                .cloned()
                .collect();
            if hold && !gone.is_empty() {
                out.extend(gone.iter().cloned());
                out.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        let mut fold = VersionFold::default();
        out.iter().for_each(|e| fold.add(e.hash));
        let v = fold.finish(out.len());
        (out, v, gone)
    }

    /// A response with `entries`; `held` are those of them the snapshot no longer has.
    fn build(
        &mut self,
        t: TypeUrl,
        entries: Vec<Arc<Entry>>,
        held: Vec<Arc<Entry>>,
        version: u64,
        ctx: &mut StreamCtx,
    ) -> SotwResponse {
        let nonce = ctx.next_nonce();
        let st = &mut self.types[i(t)];
        st.force = false;
        st.answered = false;
        let sent_resources = entries.len();
        let resp = SotwResponse {
            version_info: version_string(version),
            resources: entries,
            type_url: t,
            nonce: nonce.clone(),
            control_plane: ctx.inner.identifier.clone(),
        };
        ctx.inner.metrics.pushed(t);
        ctx.with_status(|s| {
            let ts = s.ty(t);
            ts.sent_version = resp.version_info.clone();
            ts.sent_nonce = nonce.clone();
            ts.sent_at = Some(SystemTime::now());
            ts.sent_resources = sent_resources;
        });
        let wildcard = match &self.snapshot {
            Some(snap) if st.subscription.wildcard => Some((snap.clone(), held)),
            _ => None,
        };
        st.last = Some(Sent {
            nonce,
            version,
            subscription: st.subscription.clone(),
            wildcard,
        });
        resp
    }

    fn try_upsert(&mut self, t: TypeUrl, ctx: &mut StreamCtx) -> Option<SotwResponse> {
        let st = &self.types[i(t)];
        if !st.dirty || !st.requested {
            return None;
        }
        // Named types with no names: nothing to answer (istiod does the same).
        if !st.subscription.wildcard && st.subscription.names.is_empty() {
            self.types[i(t)].dirty = false;
            self.types[i(t)].force = false;
            return None;
        }
        self.snapshot.as_ref()?;
        let (entries, version, gone) = self.desired(t, true);
        let st = &mut self.types[i(t)];
        st.dirty = false;
        st.holds_removed = !gone.is_empty();
        if !st.force && st.last.as_ref().is_some_and(|l| l.version == version) {
            return None;
        }
        Some(self.build(t, entries, gone, version, ctx))
    }

    fn try_final(&mut self, t: TypeUrl, ctx: &mut StreamCtx) -> Option<SotwResponse> {
        if !self.types[i(t)].holds_removed {
            return None;
        }
        self.types[i(t)].holds_removed = false;
        let (entries, version, _) = self.desired(t, false);
        if self.types[i(t)]
            .last
            .as_ref()
            .is_some_and(|l| l.version == version)
        {
            return None;
        }
        Some(self.build(t, entries, Vec::new(), version, ctx))
    }
}

impl Engine for Sotw {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn response_nonce(req: &DiscoveryRequest) -> &str {
        &req.response_nonce
    }

    fn response_meta(resp: &SotwResponse) -> (&str, usize, TypeUrl) {
        (
            &resp.nonce,
            super::wire::WireMessage::encoded_len(resp),
            resp.type_url,
        )
    }

    fn on_request(&mut self, req: DiscoveryRequest, ctx: &mut StreamCtx) -> Result<(), Status> {
        let Some(t) = ctx.parse_type(&req.type_url)? else {
            return Ok(());
        };
        ctx.check_names(req.resource_names.len())?;
        ctx.note_secret_names(t, req.resource_names.iter().map(String::as_str));
        let st = &mut self.types[i(t)];
        let wildcard = (wildcard_type(t) && req.resource_names.is_empty() && !st.named)
            || req.resource_names.iter().any(|n| n == "*");
        st.named |= !wildcard && !req.resource_names.is_empty();
        let names: BTreeSet<String> = if wildcard {
            BTreeSet::new()
        } else {
            req.resource_names.into_iter().collect()
        };
        // Every request repeats the whole list: most often the one already held.
        let names = if *st.subscription.names == names {
            st.subscription.names.clone()
        } else {
            ctx.inner.sotw_names.intern(Arc::new(names))
        };
        let subscription = Subscription { wildcard, names };
        let fresh = req.response_nonce.is_empty() || st.last.is_none();
        if fresh {
            // A new subscription, or a reconnecting proxy naming a nonce of an earlier
            // stream: answer it in full.
            st.requested = true;
            st.subscription = subscription;
            st.force = true;
            st.dirty = true;
        } else {
            let Some(last) = &st.last else { return Ok(()) };
            if req.response_nonce != last.nonce {
                ctx.inner
                    .metrics
                    .stale_nonces
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            st.answered = true;
            let version = version_string(last.version);
            if let Some(err) = req.error_detail {
                ctx.inner.metrics.rejected(t);
                let message = truncate(&err.message, 4096).to_string();
                tracing::warn!(node = %ctx.node.identity.id, ty = t.short(), %version, error = %message, "proxy rejected a push (NACK)");
                let nonce = last.nonce.clone();
                ctx.record_nack(
                    t,
                    Nack {
                        version,
                        nonce,
                        error: message,
                        at: SystemTime::now(),
                    },
                );
            } else {
                let nonce = last.nonce.clone();
                ctx.with_status(|s| {
                    let ts = s.ty(t);
                    ts.acked_version = version;
                    ts.acked_nonce = nonce;
                    ts.acked_at = Some(SystemTime::now());
                    ts.nacked = None;
                });
            }
            if subscription != last.subscription {
                st.subscription = subscription;
                st.force = true;
                st.dirty = true;
            } else if st.subscription != last.subscription {
                // A stale request changed the names; this ACK restores what was answered.
                st.subscription = subscription;
                st.dirty = true;
            }
        }
        let sub = st.subscription.clone();
        ctx.with_status(|s| {
            let ts = s.ty(t);
            ts.wildcard = sub.wildcard;
            ts.subscribed = sub.names.len();
        });
        Ok(())
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>, ctx: &mut StreamCtx) {
        if let Some(old) = &self.snapshot {
            let eds = &mut self.types[i(TypeUrl::Endpoint)];
            let resend = super::snapshot::changed_eds_services(old, &snapshot)
                .iter()
                .any(|n| eds.subscription.wildcard || eds.subscription.names.contains(&**n));
            if resend {
                eds.force = true;
                eds.dirty = true;
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
                .any(|s| (s.dirty && s.requested) || s.holds_removed)
    }

    fn next_response(&mut self, ctx: &mut StreamCtx) -> Option<SotwResponse> {
        for t in TypeUrl::ALL {
            if let Some(r) = self.try_upsert(t, ctx) {
                return Some(r);
            }
        }
        for t in TypeUrl::ALL {
            if let Some(r) = self.try_final(t, ctx) {
                return Some(r);
            }
        }
        None
    }

    fn settled(&self) -> bool {
        !self.has_pending() && self.types.iter().all(|s| s.last.is_none() || s.answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::metrics::Mode;
    use crate::controlplane::sample::{SampleGateway, SampleService};
    use crate::controlplane::stream::testing::{ctx, drain, snapshot};
    use crate::xds::ResourceSet;

    fn request(t: TypeUrl, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// A gateway whose routes all answer by themselves: no cluster at all.
    fn no_clusters() -> ResourceSet {
        let mut set = SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec!["127.0.0.1:9000".parse().unwrap()],
            )],
        )
        .resources();
        set.clusters.clear();
        set.endpoints.clear();
        set.routes[0].virtual_hosts[0].routes.clear();
        set
    }

    #[test]
    fn named_listeners_then_none_is_no_wildcard() {
        let set = SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec!["127.0.0.1:9000".parse().unwrap()],
            )],
        )
        .resources();
        let listener = set.listeners[0].name.clone();
        let mut ctx = ctx(Mode::Sotw);
        let mut s = Sotw::new();
        s.on_snapshot(snapshot(&set, 1), &mut ctx);
        // A gRPC client names the listener it wants.
        s.on_request(request(TypeUrl::Listener, &[&listener], "", ""), &mut ctx)
            .unwrap();
        let first = drain(&mut s, &mut ctx);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resources.len(), 1);
        // It drops its last channel: an ACK naming nothing. Nothing is sent (no
        // wildcard, and nothing named).
        s.on_request(
            request(
                TypeUrl::Listener,
                &[],
                &first[0].version_info,
                &first[0].nonce,
            ),
            &mut ctx,
        )
        .unwrap();
        assert!(drain(&mut s, &mut ctx).is_empty());
        assert!(s.settled());
        // `*` still subscribes to everything.
        s.on_request(
            request(
                TypeUrl::Listener,
                &["*"],
                &first[0].version_info,
                &first[0].nonce,
            ),
            &mut ctx,
        )
        .unwrap();
        let all = drain(&mut s, &mut ctx);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].resources.len(), set.listeners.len());
    }

    #[test]
    fn every_first_request_is_answered_even_with_nothing() {
        let set = no_clusters();
        let mut ctx = ctx(Mode::Sotw);
        let mut s = Sotw::new();
        s.on_request(request(TypeUrl::Cluster, &[], "", ""), &mut ctx)
            .unwrap();
        s.on_snapshot(snapshot(&set, 1), &mut ctx);
        s.on_request(request(TypeUrl::Endpoint, &["nothing"], "", ""), &mut ctx)
            .unwrap();
        let first = drain(&mut s, &mut ctx);
        let got: Vec<(TypeUrl, usize)> = first
            .iter()
            .map(|r| (r.type_url, r.resources.len()))
            .collect();
        // An empty CDS list, with a version; no such assignment, said by an empty list.
        assert_eq!(got, vec![(TypeUrl::Cluster, 0), (TypeUrl::Endpoint, 0)]);
        assert!(
            first
                .iter()
                .all(|r| !r.version_info.is_empty() && !r.nonce.is_empty())
        );
        for r in &first {
            let names: Vec<&str> = if r.type_url == TypeUrl::Endpoint {
                vec!["nothing"]
            } else {
                vec![]
            };
            s.on_request(
                request(r.type_url, &names, &r.version_info, &r.nonce),
                &mut ctx,
            )
            .unwrap();
        }
        assert!(s.settled());
        // Later pushes that change nothing for the proxy send nothing.
        s.on_snapshot(snapshot(&set, 2), &mut ctx);
        assert!(drain(&mut s, &mut ctx).is_empty());

        // A reconnect names the version it holds, with no nonce: answered again.
        let version = first[0].version_info.clone();
        let mut ctx = crate::controlplane::stream::testing::ctx(Mode::Sotw);
        let mut s = Sotw::new();
        s.on_snapshot(snapshot(&set, 2), &mut ctx);
        s.on_request(request(TypeUrl::Cluster, &[], &version, ""), &mut ctx)
            .unwrap();
        let again = drain(&mut s, &mut ctx);
        assert_eq!(again.len(), 1);
        assert_eq!(
            (
                again[0].type_url,
                again[0].resources.len(),
                &again[0].version_info
            ),
            (TypeUrl::Cluster, 0, &version)
        );
    }
}
