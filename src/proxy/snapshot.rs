//! The immutable runtime snapshot published by one update.
use crate::proxy::listener::Listener;
use crate::proxy::tls::TlsRuntime;
use crate::proxy::upstream::Cluster;
use crate::xds::ResourceSet;
use std::collections::HashMap;
use std::sync::Arc;

/// Everything the data plane serves from, compiled from one [`ResourceSet`]. Replaced as
/// a whole (one `ArcSwap` store per update); requests keep the snapshot they started with.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: String,
    /// The resources this snapshot was compiled from (for `/config_dump`).
    pub resources: Arc<ResourceSet>,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// The gateway's TLS state the snapshot's TLS contexts read from (kept by the next
    /// snapshot).
    pub tls: Option<Arc<TlsRuntime>>,
}

impl Snapshot {
    pub fn new(
        version: &str,
        resources: ResourceSet,
        listeners: Vec<Arc<Listener>>,
        clusters: HashMap<String, Arc<Cluster>>,
    ) -> Snapshot {
        Snapshot {
            version: version.to_string(),
            resources: Arc::new(resources),
            listeners,
            clusters,
            tls: None,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}
