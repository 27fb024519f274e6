//! What an xDS client holds: the accepted resources of each type with the server's
//! versions, decoded by a typed handler per type, and the rules that turn a response
//! into accepted changes and rejections.
use super::{ConfigConsumer, Rejection};
use crate::xds::pb::envoy::config::cluster::v3::Cluster;
use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::xds::pb::envoy::config::listener::v3::Listener;
use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::xds::pb::google::protobuf::Any;
use crate::xds::references::{References, references_of};
use crate::xds::{ResourceSet, TypeUrl};
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet};

/// A decoded resource of one of the served types (boxed: they differ a lot in size).
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
    Cluster(Box<Cluster>),
    Endpoint(Box<ClusterLoadAssignment>),
    Secret(Box<Secret>),
}

fn decode_as<M: Message + Name + Default>(any: &Any) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!(
            "resource is a {}, expected {}",
            any.type_url,
            M::type_url()
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", M::full_name()))
}

/// The typed handler of each type: decodes a resource and tells its name.
pub fn decode(t: TypeUrl, any: &Any) -> Result<(String, Decoded), String> {
    Ok(match t {
        TypeUrl::Listener => {
            decode_as::<Listener>(any).map(|r| (r.name.clone(), Decoded::Listener(Box::new(r))))?
        }
        TypeUrl::Route => decode_as::<RouteConfiguration>(any)
            .map(|r| (r.name.clone(), Decoded::Route(Box::new(r))))?,
        TypeUrl::Cluster => {
            decode_as::<Cluster>(any).map(|r| (r.name.clone(), Decoded::Cluster(Box::new(r))))?
        }
        TypeUrl::Endpoint => decode_as::<ClusterLoadAssignment>(any)
            .map(|r| (r.cluster_name.clone(), Decoded::Endpoint(Box::new(r))))?,
        TypeUrl::Secret => {
            decode_as::<Secret>(any).map(|r| (r.name.clone(), Decoded::Secret(Box::new(r))))?
        }
    })
}

/// Adds a copy of a resource to a set.
fn push_into(set: &mut ResourceSet, r: &Decoded) {
    match r {
        Decoded::Listener(r) => set.listeners.push((**r).clone()),
        Decoded::Route(r) => set.routes.push((**r).clone()),
        Decoded::Cluster(r) => set.clusters.push((**r).clone()),
        Decoded::Endpoint(r) => set.endpoints.push((**r).clone()),
        Decoded::Secret(r) => set.secrets.push((**r).clone()),
    }
}

/// One accepted resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The server's version of it (delta), or the SotW response version.
    pub version: String,
    /// The resource, protobuf-encoded: several times smaller than decoded (a listener
    /// with thousands of filter chains, thousands of route tables), decoded when a set is
    /// built.
    pub encoded: Vec<u8>,
}

impl Held {
    fn new(version: String, resource: &Decoded) -> Held {
        Held {
            version,
            encoded: encode(resource),
        }
    }

    /// The resource, decoded as type `t` (what was encoded decodes).
    pub fn decoded(&self, t: TypeUrl) -> Option<Decoded> {
        fn d<M: Message + Default>(b: &[u8]) -> Option<Box<M>> {
            M::decode(b).ok().map(Box::new)
        }
        let b = self.encoded.as_slice();
        Some(match t {
            TypeUrl::Listener => Decoded::Listener(d(b)?),
            TypeUrl::Route => Decoded::Route(d(b)?),
            TypeUrl::Cluster => Decoded::Cluster(d(b)?),
            TypeUrl::Endpoint => Decoded::Endpoint(d(b)?),
            TypeUrl::Secret => Decoded::Secret(d(b)?),
        })
    }
}

fn encode(r: &Decoded) -> Vec<u8> {
    match r {
        Decoded::Listener(m) => m.encode_to_vec(),
        Decoded::Route(m) => m.encode_to_vec(),
        Decoded::Cluster(m) => m.encode_to_vec(),
        Decoded::Endpoint(m) => m.encode_to_vec(),
        Decoded::Secret(m) => m.encode_to_vec(),
    }
}

/// The accepted resources of one type.
#[derive(Debug, Clone, Default)]
pub struct TypeState {
    pub resources: BTreeMap<String, Held>,
    /// At least one response of this type was accepted (even an empty one).
    pub received: bool,
    /// Names the server said do not exist (delta `removed_resources`).
    pub absent: BTreeSet<String>,
    /// The last accepted SotW `version_info`.
    pub version: String,
}

/// One subscription the first sync waits on: a wildcard type (CDS, LDS), or one name of
/// a named type (EDS, RDS, SDS). Shown as `cds` or `rds/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subscription {
    Wildcard(TypeUrl),
    Named(TypeUrl, String),
}

impl std::fmt::Display for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subscription::Wildcard(t) => f.write_str(t.short()),
            Subscription::Named(t, n) => write!(f, "{}/{n}", t.short()),
        }
    }
}

/// Everything the client has accepted.
#[derive(Debug, Clone, Default)]
pub struct State {
    types: [TypeState; 5],
    /// Subscriptions whose first response did not come within the initial fetch
    /// timeout: they no longer hold back completeness (Envoy's init target is done) until
    /// their resource arrives or they are dropped.
    given_up: BTreeSet<Subscription>,
    /// What the accepted listeners and clusters reference (kept up to date as they
    /// change: listeners with thousands of filter chains are not walked per response).
    refs: References,
    /// SDS names provided locally: left out of the references, so never subscribed to
    /// nor waited for.
    local_secrets: BTreeSet<String>,
}

fn i(t: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// One resource of a response.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub name: String,
    pub version: String,
    pub resource: Any,
}

/// A response, as the state sees it.
#[derive(Debug, Clone)]
pub struct Update {
    pub ty: TypeUrl,
    pub resources: Vec<Incoming>,
    pub removed: Vec<String>,
    /// SotW wildcard types: the response is the complete list; anything else goes.
    pub complete_list: bool,
    /// SotW version of the response.
    pub version: String,
}

impl State {
    pub fn of(&self, t: TypeUrl) -> &TypeState {
        &self.types[i(t)]
    }

    fn of_mut(&mut self, t: TypeUrl) -> &mut TypeState {
        &mut self.types[i(t)]
    }

    /// SDS names the server is not asked for (provided locally).
    pub fn set_local_secrets(&mut self, names: BTreeSet<String>) {
        self.local_secrets = names;
        self.update_references();
    }

    /// The names referenced over ADS by the accepted listeners and clusters.
    pub fn references(&self) -> References {
        self.refs.clone()
    }

    fn update_references(&mut self) {
        let listeners: Vec<Listener> = self
            .of(TypeUrl::Listener)
            .resources
            .values()
            .filter_map(|h| Listener::decode(h.encoded.as_slice()).ok())
            .collect();
        let clusters: Vec<Cluster> = self
            .of(TypeUrl::Cluster)
            .resources
            .values()
            .filter_map(|h| Cluster::decode(h.encoded.as_slice()).ok())
            .collect();
        self.refs = references_of(&listeners, &clusters);
        let local = &self.local_secrets;
        self.refs.secrets.retain(|n| !local.contains(n));
    }

    /// The names to subscribe to for a named type (EDS/RDS/SDS); `None` for the wildcard
    /// types (CDS/LDS).
    pub fn wanted(&self, t: TypeUrl, refs: &References) -> Option<BTreeSet<String>> {
        match t {
            TypeUrl::Cluster | TypeUrl::Listener => None,
            TypeUrl::Endpoint => Some(refs.endpoints.clone()),
            TypeUrl::Route => Some(refs.routes.clone()),
            TypeUrl::Secret => Some(refs.secrets.clone()),
        }
    }

    /// True when CDS and LDS arrived and every referenced name is held or known absent
    /// (or was given up on).
    pub fn complete(&self) -> bool {
        self.waiting().is_empty()
    }

    /// The subscriptions still awaited: CDS or LDS before their first response, and
    /// referenced names neither held nor known absent; not those given up on.
    pub fn waiting(&self) -> Vec<Subscription> {
        let mut out: Vec<Subscription> = [TypeUrl::Cluster, TypeUrl::Listener]
            .into_iter()
            .filter(|&t| !self.of(t).received)
            .map(Subscription::Wildcard)
            .filter(|s| !self.given_up.contains(s))
            .collect();
        for t in TypeUrl::ALL {
            if let Some(names) = self.wanted(t, &self.refs) {
                let ts = self.of(t);
                out.extend(
                    names
                        .into_iter()
                        .filter(|n| !ts.resources.contains_key(n) && !ts.absent.contains(n))
                        .map(|n| Subscription::Named(t, n))
                        .filter(|s| !self.given_up.contains(s)),
                );
            }
        }
        out
    }

    /// The referenced names not yet held (for logs while warming).
    pub fn missing(&self) -> Vec<String> {
        self.waiting()
            .iter()
            .filter(|s| matches!(s, Subscription::Named(..)))
            .map(|s| s.to_string())
            .collect()
    }

    /// Stops waiting for these subscriptions' first responses (initial fetch timeout).
    pub fn give_up(&mut self, subscriptions: impl IntoIterator<Item = Subscription>) {
        self.given_up.extend(subscriptions);
    }

    fn to_set_of(&self, types: &[TypeUrl]) -> ResourceSet {
        let mut set = ResourceSet::default();
        for &t in types {
            for h in self.of(t).resources.values() {
                if let Some(r) = h.decoded(t) {
                    push_into(&mut set, &r);
                }
            }
        }
        set.sort();
        set
    }

    /// Every accepted resource but the secrets, which the consumer took as they came
    /// ([`ConfigConsumer::update_secrets`]); the state keeps only their names and versions.
    pub fn to_set(&self) -> ResourceSet {
        self.to_set_of(&[
            TypeUrl::Cluster,
            TypeUrl::Endpoint,
            TypeUrl::Listener,
            TypeUrl::Route,
        ])
    }

    /// Versions held for a type (delta `initial_resource_versions`).
    pub fn versions(&self, t: TypeUrl) -> std::collections::HashMap<String, String> {
        self.of(t)
            .resources
            .iter()
            .map(|(n, h)| (n.clone(), h.version.clone()))
            .collect()
    }

    /// The set the consumer would get with this update applied: one copy of the
    /// resources, for the check (the state itself is not copied: a listener with
    /// thousands of filter chains is large).
    fn candidate_set(
        &self,
        update: &Update,
        accepted: &[(String, String, Decoded)],
        kept: &BTreeSet<String>,
    ) -> ResourceSet {
        let t = update.ty;
        let mut set = self.to_set_of(
            &[
                TypeUrl::Cluster,
                TypeUrl::Endpoint,
                TypeUrl::Listener,
                TypeUrl::Route,
            ]
            .into_iter()
            .filter(|x| *x != t)
            .collect::<Vec<_>>(),
        );
        let replaced: BTreeSet<&str> = accepted.iter().map(|(n, _, _)| n.as_str()).collect();
        let held = self.of(t).resources.iter().filter(|(n, _)| {
            (!update.complete_list || kept.contains(*n))
                && !update.removed.contains(n)
                && !replaced.contains(n.as_str())
        });
        for (_, h) in held {
            if let Some(r) = h.decoded(t) {
                push_into(&mut set, &r);
            }
        }
        for (_, _, r) in accepted {
            push_into(&mut set, r);
        }
        set.sort();
        set
    }

    /// Records an update checked with [`candidate_set`](Self::candidate_set).
    fn commit(
        &mut self,
        update: &Update,
        accepted: Vec<(String, String, Decoded)>,
        kept: &BTreeSet<String>,
    ) {
        let t = update.ty;
        let answered: BTreeSet<String> = accepted
            .iter()
            .map(|(n, _, _)| n.clone())
            .chain(update.removed.iter().cloned())
            .collect();
        let ts = self.of_mut(t);
        if update.complete_list {
            // Keep what the response carried but could not be accepted (the old version
            // stays), drop everything the response left out.
            ts.resources.retain(|n, _| kept.contains(n));
        }
        for n in &update.removed {
            ts.resources.remove(n);
            ts.absent.insert(n.clone());
        }
        for (name, version, resource) in accepted {
            ts.absent.remove(&name);
            ts.resources.insert(name, Held::new(version, &resource));
        }
        ts.received = true;
        // What was given up on and has now been answered is awaited no more.
        self.given_up.retain(|s| match s {
            Subscription::Wildcard(w) => *w != t,
            Subscription::Named(n, name) => *n != t || !answered.contains(name),
        });
    }

    /// Applies a response: decodes each resource with its type's handler, lets the
    /// consumer check the resulting set, and keeps what is accepted. Returns the
    /// rejections (empty: ACK); rejected resources are never recorded.
    pub fn apply(
        &mut self,
        update: &Update,
        consumer: &dyn ConfigConsumer,
        subscribed: Option<&BTreeSet<String>>,
    ) -> Vec<Rejection> {
        let t = update.ty;
        if t == TypeUrl::Secret {
            return self.apply_secrets(update, consumer, subscribed);
        }
        let mut rejections = Vec::new();
        let mut accepted = Vec::new();
        for r in &update.resources {
            match decode(t, &r.resource) {
                Ok((name, _)) if !r.name.is_empty() && name != r.name => {
                    rejections.push(Rejection {
                        type_url: t,
                        name: r.name.clone(),
                        message: format!("resource is named `{name}` inside"),
                    })
                }
                Ok((name, _)) if subscribed.is_some_and(|s| !s.contains(&name)) => {
                    // Not asked for (a server may send more than named): ignored.
                }
                Ok((name, decoded)) => accepted.push((name, r.version.clone(), decoded)),
                Err(message) => rejections.push(Rejection {
                    type_url: t,
                    name: r.name.clone(),
                    message,
                }),
            }
        }
        // Resources in the response that fail keep their old version (SotW lists).
        let mut kept: BTreeSet<String> = accepted.iter().map(|(n, _, _)| n.clone()).collect();
        kept.extend(rejections.iter().map(|r| r.name.clone()));
        for round in 0..2 {
            let candidate = self.candidate_set(update, &accepted, &kept);
            let problems = consumer.check(&candidate);
            drop(candidate);
            if problems.is_empty() {
                self.commit(update, accepted, &kept);
                if rejections.is_empty() {
                    self.of_mut(t).version = update.version.clone();
                }
                if matches!(t, TypeUrl::Listener | TypeUrl::Cluster) {
                    self.update_references();
                }
                return rejections;
            }
            let in_response: BTreeSet<&str> = accepted.iter().map(|(n, _, _)| n.as_str()).collect();
            let isolated = problems
                .iter()
                .all(|p| p.type_url == t && in_response.contains(p.name.as_str()));
            if round == 0 && isolated {
                let bad: BTreeSet<String> = problems.iter().map(|p| p.name.clone()).collect();
                accepted.retain(|(n, _, _)| !bad.contains(n));
                rejections.extend(problems);
                continue;
            }
            // The problem is not in one of this response's resources alone: the response
            // as a whole cannot be applied.
            rejections.extend(problems);
            return rejections;
        }
        rejections
    }
}

impl State {
    /// Applies an SDS response: the consumer takes each usable secret at once (no
    /// listener is compiled for it); the state records its name and version only (the
    /// material lives in the consumer), and nothing of a rejected one.
    fn apply_secrets(
        &mut self,
        update: &Update,
        consumer: &dyn ConfigConsumer,
        subscribed: Option<&BTreeSet<String>>,
    ) -> Vec<Rejection> {
        let t = TypeUrl::Secret;
        let mut rejections = Vec::new();
        let mut accepted: Vec<(Secret, &str)> = Vec::new();
        for r in &update.resources {
            match decode_as::<Secret>(&r.resource) {
                Ok(s) if !r.name.is_empty() && s.name != r.name => rejections.push(Rejection {
                    type_url: t,
                    name: r.name.clone(),
                    message: format!("resource is named `{}` inside", s.name),
                }),
                Ok(s) if subscribed.is_some_and(|n| !n.contains(&s.name)) => {}
                Ok(s) => accepted.push((s, &r.version)),
                Err(message) => rejections.push(Rejection {
                    type_url: t,
                    name: r.name.clone(),
                    message,
                }),
            }
        }
        let (secrets, versions): (Vec<Secret>, Vec<&str>) = accepted.into_iter().unzip();
        let refused = consumer.update_secrets(&secrets, &update.removed);
        let refused_names: BTreeSet<String> = refused.iter().map(|r| r.name.clone()).collect();
        let answered: BTreeSet<&str> = secrets
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !refused_names.contains(*n))
            .chain(update.removed.iter().map(String::as_str))
            .collect();
        let ts = &mut self.types[i(t)];
        for n in &update.removed {
            ts.resources.remove(n);
            ts.absent.insert(n.clone());
        }
        for (s, version) in secrets.iter().zip(versions) {
            if refused_names.contains(&s.name) {
                continue;
            }
            ts.absent.remove(&s.name);
            ts.resources.insert(
                s.name.clone(),
                Held {
                    version: version.to_string(),
                    // Nothing of it: the consumer holds the material.
                    encoded: Vec::new(),
                },
            );
        }
        ts.received = true;
        rejections.extend(refused);
        if rejections.is_empty() {
            ts.version = update.version.clone();
        }
        self.given_up.retain(|s| match s {
            Subscription::Wildcard(w) => *w != t,
            Subscription::Named(n, name) => *n != t || !answered.contains(name.as_str()),
        });
        rejections
    }

    /// Drops a resource the client no longer subscribes to.
    pub fn forget(&mut self, t: TypeUrl, name: &str) {
        let ts = self.of_mut(t);
        ts.resources.remove(name);
        ts.absent.remove(name);
        self.given_up
            .remove(&Subscription::Named(t, name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::sample::{SampleGateway, SampleService, cluster_name, eds_cluster};
    use std::sync::Mutex;

    /// Rejects clusters whose name contains `bad`, and any listener when `no_listeners`.
    #[derive(Default)]
    struct Picky {
        checks: Mutex<usize>,
    }

    impl ConfigConsumer for Picky {
        fn check(&self, c: &ResourceSet) -> Vec<Rejection> {
            *self.checks.lock().unwrap() += 1;
            c.clusters
                .iter()
                .filter(|x| x.name.contains("bad"))
                .map(|x| Rejection {
                    type_url: TypeUrl::Cluster,
                    name: x.name.clone(),
                    message: "bad name".into(),
                })
                .collect()
        }
        fn apply(&self, _: std::sync::Arc<ResourceSet>) {}
    }

    fn gw() -> ResourceSet {
        SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec!["127.0.0.1:1".parse().unwrap()],
            )],
        )
        .resources()
    }

    fn update(t: TypeUrl, set: &ResourceSet, complete_list: bool, version: &str) -> Update {
        Update {
            ty: t,
            resources: set
                .packed(t)
                .into_iter()
                .map(|r| Incoming {
                    name: r.name,
                    version: version.into(),
                    resource: r.resource,
                })
                .collect(),
            removed: vec![],
            complete_list,
            version: version.into(),
        }
    }

    #[test]
    fn rejected_resources_are_not_recorded_and_the_rest_is() {
        let mut state = State::default();
        let consumer = Picky::default();
        let mut set = gw();
        set.clusters.push(eds_cluster("bad-one"));
        let r = state.apply(&update(TypeUrl::Cluster, &set, true, "v1"), &consumer, None);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "bad-one");
        let held = &state.of(TypeUrl::Cluster).resources;
        assert!(held.contains_key(&cluster_name("a")));
        assert!(!held.contains_key("bad-one"));
        // A NACKed SotW response does not move the accepted version.
        assert_eq!(state.of(TypeUrl::Cluster).version, "");
        let r = state.apply(
            &update(TypeUrl::Cluster, &gw(), true, "v2"),
            &consumer,
            None,
        );
        assert!(r.is_empty());
        assert_eq!(state.of(TypeUrl::Cluster).version, "v2");
    }

    #[test]
    fn completeness_follows_references() {
        let mut state = State::default();
        let consumer = Picky::default();
        let set = gw();
        assert!(!state.complete());
        state.apply(&update(TypeUrl::Cluster, &set, true, "1"), &consumer, None);
        state.apply(&update(TypeUrl::Listener, &set, true, "1"), &consumer, None);
        assert!(!state.complete());
        assert_eq!(
            state.missing(),
            vec![
                format!("eds/{}", cluster_name("a")),
                "rds/http.8080".to_string()
            ]
        );
        state.apply(
            &update(TypeUrl::Endpoint, &set, false, "1"),
            &consumer,
            None,
        );
        // A route the server says does not exist counts as answered.
        let gone = Update {
            ty: TypeUrl::Route,
            resources: vec![],
            removed: vec!["http.8080".into()],
            complete_list: false,
            version: String::new(),
        };
        state.apply(&gone, &consumer, None);
        assert!(state.complete());
        // SotW: a CDS list without the cluster removes it.
        state.apply(
            &update(TypeUrl::Cluster, &ResourceSet::default(), true, "2"),
            &consumer,
            None,
        );
        assert!(state.of(TypeUrl::Cluster).resources.is_empty());
    }

    #[test]
    fn local_secrets_are_neither_subscribed_to_nor_waited_for() {
        use crate::xds::pb::envoy::config::core::v3::{
            AggregatedConfigSource, ConfigSource, TransportSocket,
            config_source::ConfigSourceSpecifier, transport_socket::ConfigType,
        };
        use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
            CommonTlsContext, SdsSecretConfig, UpstreamTlsContext,
            common_tls_context::ValidationContextType,
        };
        let sds = |name: &str| SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
        };
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("default"), sds("kubernetes://cred")],
                validation_context_type: Some(
                    ValidationContextType::ValidationContextSdsSecretConfig(sds("ROOTCA")),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut set = gw();
        set.clusters[0].transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(ConfigType::TypedConfig(
                crate::xds::pb::google::protobuf::Any {
                    type_url: <UpstreamTlsContext as prost::Name>::type_url(),
                    value: prost::Message::encode_to_vec(&tls),
                },
            )),
        });
        let consumer = Picky::default();
        let mut state = State::default();
        state.set_local_secrets(["default".to_string(), "ROOTCA".to_string()].into());
        state.apply(&update(TypeUrl::Cluster, &set, true, "1"), &consumer, None);
        let refs = state.references();
        assert_eq!(
            state.wanted(TypeUrl::Secret, &refs),
            Some(["kubernetes://cred".to_string()].into())
        );
        let secrets_missing: Vec<String> = state
            .missing()
            .into_iter()
            .filter(|m| m.starts_with("sds/"))
            .collect();
        assert_eq!(secrets_missing, ["sds/kubernetes://cred"]);

        // Without local secrets, all three are asked for.
        let mut plain = State::default();
        plain.apply(&update(TypeUrl::Cluster, &set, true, "1"), &consumer, None);
        assert_eq!(
            plain
                .wanted(TypeUrl::Secret, &plain.references())
                .map(|s| s.len()),
            Some(3)
        );
    }

    #[test]
    fn subscriptions_given_up_on_count_as_answered_until_they_come() {
        let mut state = State::default();
        let consumer = Picky::default();
        let set = gw();
        let (cds, lds) = (
            Subscription::Wildcard(TypeUrl::Cluster),
            Subscription::Wildcard(TypeUrl::Listener),
        );
        let rds = Subscription::Named(TypeUrl::Route, "http.8080".into());
        assert_eq!(state.waiting(), vec![cds.clone(), lds.clone()]);
        state.apply(&update(TypeUrl::Listener, &set, true, "1"), &consumer, None);
        assert_eq!(state.waiting(), vec![cds.clone(), rds.clone()]);
        assert_eq!(
            state
                .waiting()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            vec!["cds", "rds/http.8080"]
        );
        // The initial fetch timeout passes for both: the first set is complete without
        // them.
        state.give_up(state.waiting());
        assert!(state.complete());
        // CDS comes late: its clusters' endpoints are awaited like any new reference,
        // while the route given up on still is not.
        state.apply(&update(TypeUrl::Cluster, &set, true, "1"), &consumer, None);
        let eds = Subscription::Named(TypeUrl::Endpoint, cluster_name("a"));
        assert_eq!(state.waiting(), vec![eds]);
        state.apply(
            &update(TypeUrl::Endpoint, &set, false, "1"),
            &consumer,
            None,
        );
        assert!(state.complete());
        // The route comes late too, and is held; removed later, it is known absent.
        state.apply(&update(TypeUrl::Route, &set, false, "1"), &consumer, None);
        assert!(state.of(TypeUrl::Route).resources.contains_key("http.8080"));
        assert!(state.given_up.is_empty());
        // Dropped and subscribed again, a name is awaited afresh.
        state.give_up([rds.clone()]);
        state.forget(TypeUrl::Route, "http.8080");
        assert_eq!(state.waiting(), vec![rds]);
    }

    #[test]
    fn decode_checks_the_type() {
        let set = gw();
        let any = &set.packed(TypeUrl::Listener)[0].resource;
        assert!(decode(TypeUrl::Listener, any).is_ok());
        let err = decode(TypeUrl::Cluster, any).unwrap_err();
        assert!(
            err.contains("expected type.googleapis.com/envoy.config.cluster.v3.Cluster"),
            "{err}"
        );
    }
}
