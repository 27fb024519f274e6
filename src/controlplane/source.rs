//! Where resources come from: a [`SnapshotSource`] computes the [`ResourceSet`] of one
//! proxy identity and announces [`Change`]s. The translator over the watched Istio
//! configuration is the real source; [`StaticSource`] serves hand-built sets.
use crate::xds::{ProxyIdentity, ResourceSet, TypeUrl};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Why a source could not produce a proxy's resources.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A predicate over identities, for scoping a change.
pub type IdentityFilter = Arc<dyn Fn(&ProxyIdentity) -> bool + Send + Sync>;

/// Which proxies a change can affect. Scopes are evaluated on identity keys (everything
/// but the node id), since proxies with equal keys share one snapshot.
#[derive(Clone, Default)]
pub enum ProxyScope {
    /// Every connected proxy.
    #[default]
    All,
    /// Only proxies whose identity matches.
    Matching(IdentityFilter),
}

impl std::fmt::Debug for ProxyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyScope::All => f.write_str("All"),
            ProxyScope::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// A set of resource types (a bit per [`TypeUrl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet(u8);

impl TypeSet {
    /// Every type.
    pub const ALL: TypeSet = TypeSet(0b11111);

    pub fn of(types: &[TypeUrl]) -> TypeSet {
        TypeSet(types.iter().fold(0, |acc, t| acc | bit(*t)))
    }
    pub fn contains(self, t: TypeUrl) -> bool {
        self.0 & bit(t) != 0
    }
    pub fn union(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 | other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = TypeUrl> {
        TypeUrl::ALL.into_iter().filter(move |t| self.contains(*t))
    }
}

fn bit(t: TypeUrl) -> u8 {
    1 << TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// A change of the configuration behind a source: which proxies and which resource
/// types it may affect. What is pushed is decided by comparing content hashes; the
/// types say why a push happened (an endpoint-only change says `[Endpoint]`).
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub scope: ProxyScope,
    pub types: TypeSet,
}

impl Change {
    /// A change that may affect every type of every proxy.
    pub fn all() -> Change {
        Change {
            scope: ProxyScope::All,
            types: TypeSet::ALL,
        }
    }

    /// Merges `other` into `self` (the union of both).
    pub fn merge(&mut self, other: Change) {
        self.types = self.types.union(other.types);
        self.scope = match (std::mem::take(&mut self.scope), other.scope) {
            (ProxyScope::All, _) | (_, ProxyScope::All) => ProxyScope::All,
            (ProxyScope::Matching(a), ProxyScope::Matching(b)) => {
                ProxyScope::Matching(Arc::new(move |p| a(p) || b(p)))
            }
        };
    }

    /// True when the change can affect `identity`.
    pub fn affects(&self, identity: &ProxyIdentity) -> bool {
        match &self.scope {
            ProxyScope::All => true,
            ProxyScope::Matching(f) => f(identity),
        }
    }
}

/// Computes the resources of each proxy and tells the control plane when they change.
pub trait SnapshotSource: Send + Sync + 'static {
    /// The complete resource set for `proxy`. May be slow (translation); it runs on a
    /// blocking thread.
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError>;

    /// A receiver of change notifications. A lagging receiver is treated as a change
    /// of everything.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// What `proxy`'s resources depend on, when the source can tell: proxies of different
    /// identity keys with equal share keys get equal resources, so the control plane
    /// translates and packs them once. A share key must change whenever the resources
    /// would (a new configuration generation). `None`: never shared across keys.
    fn share_key(&self, _proxy: &ProxyIdentity) -> Option<ShareKey> {
        None
    }

    /// What the source serves, in the user's terms, for the status page; `None` when
    /// the source has no such view (hand-built resource sets).
    fn overview(&self) -> Option<SourceOverview> {
        None
    }
}

/// The configuration a source serves, summarized for people (the status page): the
/// services, the Gateways and the VirtualServices, and the source's recent errors.
#[derive(Debug, Clone, Default)]
pub struct SourceOverview {
    /// Where the configuration comes from (a path).
    pub origin: String,
    /// The generation in force (1 for the first load) and when it was loaded.
    pub generation: u64,
    pub loaded_at: Option<std::time::SystemTime>,
    pub services: Vec<ServiceRow>,
    pub gateways: Vec<GatewayRow>,
    pub routes: Vec<RouteRow>,
    /// Changes that were rejected, oldest first.
    pub errors: Vec<super::errors::ErrorEvent>,
}

/// A service of the registry.
#[derive(Debug, Clone, Default)]
pub struct ServiceRow {
    pub host: String,
    /// `namespace/name` of the resource that defined it.
    pub source: String,
    /// `name number/PROTOCOL` per port.
    pub ports: Vec<String>,
    pub location: &'static str,
    pub resolution: &'static str,
    /// `address:port` per endpoint.
    pub endpoints: Vec<String>,
}

/// A Gateway resource.
#[derive(Debug, Clone, Default)]
pub struct GatewayRow {
    /// `namespace/name`.
    pub name: String,
    /// `key=value` of the selector.
    pub selector: String,
    /// Per server: port, protocol, hosts and TLS mode.
    pub servers: Vec<String>,
}

/// A VirtualService.
#[derive(Debug, Clone, Default)]
pub struct RouteRow {
    /// `namespace/name`.
    pub name: String,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub rules: Vec<RuleRow>,
}

/// One rule of a VirtualService: what it matches and where it sends.
#[derive(Debug, Clone, Default)]
pub struct RuleRow {
    /// `http`, `tls` or `tcp`.
    pub protocol: &'static str,
    /// The conditions, readable (`uri prefix /api`), or empty for any request.
    pub matches: Vec<String>,
    /// (destination `host[:port][/subset]` or what the rule does instead, weight in
    /// percent when given).
    pub destinations: Vec<(String, Option<i32>)>,
}

/// See [`SnapshotSource::share_key`]: the configuration generation and the parts of an
/// identity the resources depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareKey {
    pub generation: u64,
    pub view: ProxyIdentity,
}

/// A source of hand-built resource sets selected by proxy labels: the first entry whose
/// labels are all among the proxy's labels wins; no match gives the default set.
pub struct StaticSource {
    state: Mutex<StaticState>,
    tx: broadcast::Sender<Change>,
}

#[derive(Default)]
struct StaticState {
    entries: Vec<(BTreeMap<String, String>, Arc<ResourceSet>)>,
    default: Arc<ResourceSet>,
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl StaticSource {
    /// A source serving `default` to every proxy.
    pub fn new(default: ResourceSet) -> StaticSource {
        let (tx, _) = broadcast::channel(1024);
        StaticSource {
            state: Mutex::new(StaticState {
                entries: Vec::new(),
                default: Arc::new(default),
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StaticState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the default set and announces a change to every proxy.
    pub fn set_default(&self, set: ResourceSet, types: TypeSet) {
        self.lock().default = Arc::new(set);
        let _ = self.tx.send(Change {
            scope: ProxyScope::All,
            types,
        });
    }

    /// Serves `set` to proxies whose labels include `selector` (replacing an entry with
    /// the same selector) and announces a change scoped to them.
    pub fn set_for(&self, selector: BTreeMap<String, String>, set: ResourceSet, types: TypeSet) {
        {
            let mut st = self.lock();
            let set = Arc::new(set);
            match st.entries.iter_mut().find(|(s, _)| *s == selector) {
                Some(e) => e.1 = set,
                None => st.entries.push((selector.clone(), set)),
            }
        }
        let _ = self.tx.send(Change {
            scope: ProxyScope::Matching(Arc::new(move |p: &ProxyIdentity| {
                selects(&selector, &p.labels)
            })),
            types,
        });
    }
}

impl SnapshotSource for StaticSource {
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
        let st = self.lock();
        Ok(st
            .entries
            .iter()
            .find(|(sel, _)| selects(sel, &proxy.labels))
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| st.default.clone()))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_scopes_and_types() {
        let only = |ns: &'static str| Change {
            scope: ProxyScope::Matching(Arc::new(move |p: &ProxyIdentity| p.namespace == ns)),
            types: TypeSet::of(&[TypeUrl::Endpoint]),
        };
        let mut c = only("a");
        c.merge(only("b"));
        let id = |ns: &str| ProxyIdentity {
            namespace: ns.into(),
            ..Default::default()
        };
        assert!(c.affects(&id("a")) && c.affects(&id("b")) && !c.affects(&id("c")));
        assert_eq!(c.types.iter().collect::<Vec<_>>(), vec![TypeUrl::Endpoint]);
        c.merge(Change::all());
        assert!(c.affects(&id("c")));
        assert_eq!(c.types, TypeSet::ALL);
    }

    #[test]
    fn static_source_selects_by_labels() {
        let src = StaticSource::new(ResourceSet::default());
        let mut rx = src.changes();
        let mut sel = BTreeMap::new();
        sel.insert("app".to_string(), "x".to_string());
        let mut special = ResourceSet::default();
        special.listeners.push(Default::default());
        src.set_for(sel.clone(), special, TypeSet::ALL);
        let change = rx.try_recv().unwrap();
        let mut labels = sel.clone();
        labels.insert("more".into(), "1".into());
        let p = ProxyIdentity {
            labels,
            ..Default::default()
        };
        assert!(change.affects(&p));
        assert!(!change.affects(&ProxyIdentity::default()));
        assert_eq!(src.resources(&p).unwrap().listeners.len(), 1);
        assert!(
            src.resources(&ProxyIdentity::default())
                .unwrap()
                .listeners
                .is_empty()
        );
    }
}
