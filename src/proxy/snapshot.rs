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
    /// The resources this snapshot was compiled from (for `/config_dump`), kept encoded.
    pub resources: Arc<PackedResources>,
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
            resources: Arc::new(PackedResources::pack(resources)),
            listeners,
            clusters,
            tls: None,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// A resource set kept for `/config_dump` only, protobuf-encoded: a listener with
/// thousands of filter chains and thousands of route tables take several times less
/// memory encoded than decoded, and are decoded only when the dump is asked for.
/// Secrets stay decoded (without private keys): updates compare them.
#[derive(Debug, Default)]
pub struct PackedResources {
    listeners: Vec<Vec<u8>>,
    routes: Vec<Vec<u8>>,
    clusters: Vec<Vec<u8>>,
    endpoints: Vec<Vec<u8>>,
    pub secrets: Vec<crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
}

impl PackedResources {
    pub fn pack(set: ResourceSet) -> PackedResources {
        use prost::Message;
        fn encode<M: Message>(v: Vec<M>) -> Vec<Vec<u8>> {
            v.into_iter().map(|m| m.encode_to_vec()).collect()
        }
        PackedResources {
            listeners: encode(set.listeners),
            routes: encode(set.routes),
            clusters: encode(set.clusters),
            endpoints: encode(set.endpoints),
            secrets: set.secrets,
        }
    }

    /// The set again (what was encoded decodes; nothing else can fail).
    pub fn unpack(&self) -> ResourceSet {
        use prost::Message;
        fn decode<M: Message + Default>(v: &[Vec<u8>]) -> Vec<M> {
            v.iter()
                .filter_map(|b| M::decode(b.as_slice()).ok())
                .collect()
        }
        ResourceSet {
            listeners: decode(&self.listeners),
            routes: decode(&self.routes),
            clusters: decode(&self.clusters),
            endpoints: decode(&self.endpoints),
            secrets: self.secrets.clone(),
        }
    }
}
