//! Per-proxy snapshots: a [`ResourceSet`] packed for the wire, with a content hash per
//! resource (the resource's version in delta xDS) and per type (the SotW version).
//!
//! Snapshots are immutable and shared: every proxy with the same identity key holds the
//! same `Arc<Snapshot>`, and streams compare hashes, never bytes, to decide what to push.
//! Resources are shared too, across snapshots: an [`Interner`] hands every snapshot
//! built with it the same [`Entry`] for the same content, so proxies of different
//! identities that are served the same clusters and endpoints hold them once.
use crate::xds::pb::google::protobuf::Any;
use crate::xds::references::references;
use crate::xds::{NamedResource, ProxyIdentity, ResourceSet, TypeUrl};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use tokio::time::Instant;

/// One resource as served: its name, content hash and serialized bytes. Immutable and
/// shared by every snapshot (and every response) that serves this content.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub name: Arc<str>,
    pub ty: TypeUrl,
    /// Hash of the name and the encoded resource; equal hashes mean equal resources.
    pub hash: u64,
    /// The serialized resource: the `value` of its `Any`.
    pub value: Bytes,
    /// The hash as the opaque version string sent in delta responses.
    version: Box<str>,
}

impl Entry {
    /// The hash as the opaque version string sent in delta responses.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resource packed as an `Any` (a copy; responses are written from the shared
    /// bytes instead).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.ty.as_str().to_string(),
            value: self.value.to_vec(),
        }
    }
}

/// Formats a hash as a version string (16 hex digits).
pub fn version_string(hash: u64) -> String {
    format!("{hash:016x}")
}

/// Parses a version string made by [`version_string`]; `None` for any other text
/// (for example versions another server gave the client).
pub fn parse_version(v: &str) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    u64::from_str_radix(v, 16).ok()
}

fn hash_resource(name: &str, bytes: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(bytes);
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The resources every snapshot of a control plane serves, by content: building a
/// snapshot looks each packed resource up by (type, hash) and reuses the live entry with
/// the same name and bytes, so equal resources are held once however many snapshots
/// (identities, generations) serve them. Entries are held weakly: one no snapshot
/// serves any more is freed, and its slot swept later.
#[derive(Default)]
pub struct Interner {
    map: Mutex<InternMap>,
}

#[derive(Default)]
struct InternMap {
    entries: HashMap<(TypeUrl, u64), Weak<Entry>>,
    /// Insertions since dead slots were last swept.
    inserted: usize,
}

impl Interner {
    /// The shared entries for `resources` of type `ty`, in the same order.
    pub fn intern(&self, ty: TypeUrl, resources: Vec<NamedResource>) -> Vec<Arc<Entry>> {
        // Hash outside the lock: it is the costly part.
        let hashed: Vec<(u64, NamedResource)> = resources
            .into_iter()
            .map(|r| (hash_resource(&r.name, &r.resource.value), r))
            .collect();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(hashed.len());
        for (hash, r) in hashed {
            let live = map.entries.get(&(ty, hash)).and_then(Weak::upgrade);
            if let Some(e) = live
                && *e.name == *r.name
                && e.value[..] == r.resource.value[..]
            {
                out.push(e);
                continue;
            }
            let e = Arc::new(Entry {
                name: Arc::from(r.name),
                ty,
                hash,
                value: Bytes::from(r.resource.value),
                version: version_string(hash).into_boxed_str(),
            });
            map.entries.insert((ty, hash), Arc::downgrade(&e));
            map.inserted += 1;
            out.push(e);
        }
        // Sweep once insertions since the last sweep rival the table's size: amortized
        // constant work per insertion, and dead slots never outnumber live ones for long.
        if map.inserted > map.entries.len() / 2 + 1024 {
            map.entries.retain(|_, w| w.strong_count() > 0);
            map.inserted = 0;
        }
        out
    }

    /// Number of slots (live resources, plus dead ones not yet swept).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Folds entry hashes (in name order) into one version: equal lists, equal versions.
#[derive(Debug, Clone, Copy)]
pub struct VersionFold(u64);

impl Default for VersionFold {
    fn default() -> Self {
        VersionFold(0xcbf2_9ce4_8422_2325)
    }
}

impl VersionFold {
    pub fn add(&mut self, hash: u64) {
        self.0 = (self.0 ^ hash)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(17);
    }
    pub fn finish(self, count: usize) -> u64 {
        (self.0 ^ count as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// The resources of one type, sorted by name.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    entries: Vec<Arc<Entry>>,
    index: HashMap<Arc<str>, usize>,
    /// Version of the whole list (what a wildcard SotW response of it carries).
    pub version: u64,
}

impl TypeSnapshot {
    fn build(
        ty: TypeUrl,
        resources: Vec<NamedResource>,
        interner: &Interner,
    ) -> Result<TypeSnapshot, String> {
        let mut entries = interner.intern(ty, resources);
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut index = HashMap::with_capacity(entries.len());
        let mut fold = VersionFold::default();
        for (i, e) in entries.iter().enumerate() {
            if e.name.is_empty() {
                return Err("a resource has an empty name".to_string());
            }
            if index.insert(e.name.clone(), i).is_some() {
                return Err(format!("two resources are named `{}`", e.name));
            }
            fold.add(e.hash);
        }
        let version = fold.finish(entries.len());
        Ok(TypeSnapshot {
            entries,
            index,
            version,
        })
    }

    /// All entries, by name.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a resource set cannot be served as a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{ty}: {message}")]
    Invalid { ty: &'static str, message: String },
    #[error("inconsistent resources: {}", .0.join("; "))]
    Inconsistent(Vec<String>),
}

/// Everything one proxy (one identity key) is served, ready for the wire.
#[derive(Debug)]
pub struct Snapshot {
    /// The identity the resources were computed for (any proxy of the key).
    pub identity: ProxyIdentity,
    /// The packed resources, shared by the snapshots of keys the source says see the
    /// same (see `SnapshotSource::share_key`).
    types: Arc<[TypeSnapshot; 5]>,
    /// Increases with every snapshot published for a key.
    pub generation: u64,
    /// When the first config change that led to this snapshot happened (for the
    /// convergence-time histogram); `None` for the first snapshot of a key.
    pub changed_at: Option<Instant>,
}

fn index(ty: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|t| *t == ty).unwrap_or(0)
}

impl Snapshot {
    /// Packs and hashes `resources`, after checking that every RDS, EDS and SDS name
    /// the listeners and clusters reference over ADS is present. Resources whose
    /// content `interner` already holds are shared, not copied; the unpacked set is not
    /// kept (a config dump decodes the packed bytes again).
    pub fn build(
        identity: ProxyIdentity,
        resources: &ResourceSet,
        generation: u64,
        changed_at: Option<Instant>,
        interner: &Interner,
    ) -> Result<Snapshot, SnapshotError> {
        Ok(Snapshot {
            identity,
            types: Arc::new(Self::pack(resources, interner)?),
            generation,
            changed_at,
        })
    }

    /// A snapshot of resources packed beforehand ([`Snapshot::pack`]), shared with other
    /// keys' snapshots.
    pub fn from_packed(
        identity: ProxyIdentity,
        types: Arc<[TypeSnapshot; 5]>,
        generation: u64,
        changed_at: Option<Instant>,
    ) -> Snapshot {
        Snapshot {
            identity,
            types,
            generation,
            changed_at,
        }
    }

    /// The packed resources this snapshot serves (to share with another key's).
    pub fn packed(&self) -> &Arc<[TypeSnapshot; 5]> {
        &self.types
    }

    /// Checks and packs `resources` (see [`Snapshot::build`]).
    pub fn pack(
        resources: &ResourceSet,
        interner: &Interner,
    ) -> Result<[TypeSnapshot; 5], SnapshotError> {
        let problems = check_consistency(resources);
        if !problems.is_empty() {
            return Err(SnapshotError::Inconsistent(problems));
        }
        let build = |ty: TypeUrl| {
            TypeSnapshot::build(ty, resources.packed(ty), interner).map_err(|message| {
                SnapshotError::Invalid {
                    ty: ty.short(),
                    message,
                }
            })
        };
        Ok([
            build(TypeUrl::ALL[0])?,
            build(TypeUrl::ALL[1])?,
            build(TypeUrl::ALL[2])?,
            build(TypeUrl::ALL[3])?,
            build(TypeUrl::ALL[4])?,
        ])
    }

    /// The resources of one type.
    pub fn of(&self, ty: TypeUrl) -> &TypeSnapshot {
        &self.types[index(ty)]
    }

    /// The resources decoded from their packed bytes (for config dumps).
    pub fn unpacked(&self) -> Result<ResourceSet, prost::DecodeError> {
        fn decode<M: prost::Message + Default>(
            ts: &TypeSnapshot,
        ) -> Result<Vec<M>, prost::DecodeError> {
            ts.entries()
                .iter()
                .map(|e| M::decode(e.value.clone()))
                .collect()
        }
        Ok(ResourceSet {
            listeners: decode(self.of(TypeUrl::Listener))?,
            routes: decode(self.of(TypeUrl::Route))?,
            clusters: decode(self.of(TypeUrl::Cluster))?,
            endpoints: decode(self.of(TypeUrl::Endpoint))?,
            secrets: decode(self.of(TypeUrl::Secret))?,
        })
    }

    /// True when both snapshots serve the same content for every type.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        TypeUrl::ALL.iter().all(|&t| {
            self.of(t).version == other.of(t).version && self.of(t).len() == other.of(t).len()
        })
    }
}

/// The EDS service names of clusters whose content changed from `old` to `new` (not
/// those added). Envoy re-creates a changed cluster and keeps it warming until a load
/// assignment for it arrives, even an unchanged one: a push that changes an EDS cluster
/// must send its endpoints again (istiod does the same).
pub fn changed_eds_services(old: &Snapshot, new: &Snapshot) -> Vec<Arc<str>> {
    use crate::xds::pb::envoy::config::cluster::v3::Cluster;
    use crate::xds::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use prost::Message;
    let (before, after) = (old.of(TypeUrl::Cluster), new.of(TypeUrl::Cluster));
    if before.version == after.version {
        return Vec::new();
    }
    let endpoints = new.of(TypeUrl::Endpoint);
    let mut out = Vec::new();
    for e in after.entries() {
        if before.get(&e.name).is_none_or(|b| b.hash == e.hash) {
            continue;
        }
        let Ok(c) = Cluster::decode(e.value.clone()) else {
            continue;
        };
        if !matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
        {
            continue;
        }
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|x| x.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&c.name);
        if let Some(cla) = endpoints.get(service) {
            out.push(cla.name.clone());
        }
    }
    out
}

/// Every problem that would leave a proxy waiting for a resource that never comes:
/// a referenced route configuration, cluster load assignment or secret that is missing.
pub fn check_consistency(set: &ResourceSet) -> Vec<String> {
    let refs = references(&set.listeners, &set.clusters);
    let mut problems = Vec::new();
    let have = |ty: TypeUrl| set.names(ty).into_iter().collect::<BTreeSet<&str>>();
    let (routes, endpoints, secrets) = (
        have(TypeUrl::Route),
        have(TypeUrl::Endpoint),
        have(TypeUrl::Secret),
    );
    for r in &refs.routes {
        if !routes.contains(r.as_str()) {
            problems.push(format!(
                "route configuration `{r}` is referenced by a listener but missing"
            ));
        }
    }
    for e in &refs.endpoints {
        if !endpoints.contains(e.as_str()) {
            problems.push(format!(
                "cluster load assignment `{e}` is referenced by an EDS cluster but missing"
            ));
        }
    }
    // The mesh's own secrets are the proxy's identity: made by the proxy itself (a
    // meshgate gateway with its own key, an agent), or added for a verified stream that
    // asks for them; a proxy without one cannot use them and fails closed.
    for s in &refs.secrets {
        if !secrets.contains(s.as_str()) && !super::workload::is_mesh_secret(s) {
            problems.push(format!("secret `{s}` is referenced over SDS but missing"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::sample::{SampleGateway, SampleService, tls_secret};

    fn gateway(endpoint_port: u16) -> SampleGateway {
        SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec![std::net::SocketAddr::from(([127, 0, 0, 1], endpoint_port))],
            )],
        )
    }

    fn build(set: ResourceSet) -> Result<Snapshot, SnapshotError> {
        Snapshot::build(
            ProxyIdentity::default(),
            &set,
            1,
            None,
            &Interner::default(),
        )
    }

    #[test]
    fn hashes_and_versions_are_stable_and_content_sensitive() {
        let s1 = build(gateway(8001).resources()).unwrap();
        let s2 = build(gateway(8001).resources()).unwrap();
        assert!(s1.same_content(&s2));
        let s3 = build(gateway(8002).resources()).unwrap();
        // Only the endpoints differ.
        for t in TypeUrl::ALL {
            assert_eq!(
                s1.of(t).version == s3.of(t).version,
                t != TypeUrl::Endpoint,
                "{t:?}"
            );
        }
        let e = s1
            .of(TypeUrl::Cluster)
            .get("outbound|80||a.default.svc.cluster.local")
            .unwrap();
        assert_eq!(parse_version(e.version()), Some(e.hash));
        assert_eq!(parse_version("v1"), None);
    }

    #[test]
    fn consistency_finds_missing_references() {
        let mut set = gateway(8001).resources();
        assert!(check_consistency(&set).is_empty());
        set.routes.clear();
        set.endpoints.clear();
        let problems = check_consistency(&set);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("route configuration `http.8080`"));
        assert!(problems[1].contains("outbound|80||a.default.svc.cluster.local"));
        assert!(matches!(build(set), Err(SnapshotError::Inconsistent(_))));
    }

    #[test]
    fn secrets_referenced_over_ads_are_checked() {
        let mut g = gateway(8001);
        g.tls_secret = Some("gw-cert".into());
        let mut set = g.resources();
        let problems = check_consistency(&set);
        assert_eq!(
            problems,
            vec!["secret `gw-cert` is referenced over SDS but missing".to_string()]
        );
        set.secrets.push(tls_secret("gw-cert", "cert", "key"));
        assert!(check_consistency(&set).is_empty());
    }

    #[test]
    fn changed_eds_clusters_name_their_endpoints() {
        let s1 = build(gateway(8001).resources()).unwrap();
        // Same cluster, new endpoints: nothing to resend beyond the endpoint change.
        let s2 = build(gateway(8002).resources()).unwrap();
        assert!(changed_eds_services(&s1, &s2).is_empty());
        let mut set = gateway(8001).resources();
        set.clusters[0].connect_timeout = Some(crate::xds::pb::google::protobuf::Duration {
            seconds: 7,
            nanos: 0,
        });
        let s3 = build(set).unwrap();
        let names: Vec<String> = changed_eds_services(&s1, &s3)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, vec!["outbound|80||a.default.svc.cluster.local"]);
    }

    #[test]
    fn equal_resources_are_shared_across_snapshots() {
        let interner = Interner::default();
        let build = |set: &ResourceSet| {
            Snapshot::build(ProxyIdentity::default(), set, 1, None, &interner).unwrap()
        };
        let s1 = build(&gateway(8001).resources());
        let s2 = build(&gateway(8001).resources());
        let s3 = build(&gateway(8002).resources());
        for t in TypeUrl::ALL {
            for (a, b) in s1.of(t).entries().iter().zip(s2.of(t).entries()) {
                assert!(Arc::ptr_eq(a, b), "{t:?} {}", a.name);
            }
        }
        let cla = "outbound|80||a.default.svc.cluster.local";
        let (e1, e3) = (
            s1.of(TypeUrl::Endpoint).get(cla).unwrap(),
            s3.of(TypeUrl::Endpoint).get(cla).unwrap(),
        );
        assert!(!Arc::ptr_eq(e1, e3) && e1.hash != e3.hash);
        let c = "outbound|80||a.default.svc.cluster.local";
        assert!(Arc::ptr_eq(
            s1.of(TypeUrl::Cluster).get(c).unwrap(),
            s3.of(TypeUrl::Cluster).get(c).unwrap()
        ));
        // Same bytes under another type are another resource.
        assert_eq!(e1.ty, TypeUrl::Endpoint);
        // Freed entries are not served again: a new build makes them anew.
        let before = interner.len();
        drop((s1, s2, s3));
        let s4 = build(&gateway(8003).resources());
        assert!(interner.len() >= before);
        assert_eq!(s4.of(TypeUrl::Endpoint).len(), 1);
    }

    #[test]
    fn dead_entries_are_swept() {
        let interner = Interner::default();
        for port in 0..3000u16 {
            let set = gateway(10000 + port).resources();
            let s = Snapshot::build(ProxyIdentity::default(), &set, 1, None, &interner).unwrap();
            drop(s);
        }
        // Every endpoint differed and was freed: the table stays bounded.
        assert!(interner.len() < 1000, "{}", interner.len());
    }

    #[test]
    fn unpacked_resources_equal_the_built_set() {
        let mut g = gateway(8001);
        g.tls_secret = Some("gw-cert".into());
        let mut set = g.resources();
        set.secrets.push(tls_secret("gw-cert", "cert", "key"));
        let s = build(set.clone()).unwrap();
        assert_eq!(s.unpacked().unwrap(), set);
        for t in TypeUrl::ALL {
            for e in s.of(t).entries() {
                assert_eq!(e.any().type_url, t.as_str());
            }
        }
        let packed = set.packed(TypeUrl::Cluster);
        assert_eq!(packed[0].resource.type_url, TypeUrl::Cluster.as_str());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut set = gateway(8001).resources();
        let dup = set.clusters[0].clone();
        set.clusters.push(dup);
        assert!(matches!(
            build(set),
            Err(SnapshotError::Invalid { ty: "cds", .. })
        ));
    }
}
