//! What the control plane knows about each connected proxy, per resource type: what was
//! sent, what was ACKed, what was NACKed and why (`/debug/syncz`).
use super::metrics::Mode;
use super::node::NodeInfo;
use crate::xds::TypeUrl;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// A NACK as the proxy reported it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nack {
    /// Version (SotW) or nonce (delta) of the rejected response.
    pub version: String,
    pub nonce: String,
    pub error: String,
    #[serde(with = "unix_seconds")]
    pub at: SystemTime,
}

/// The sync state of one resource type on one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// Subscribed by wildcard (all resources of the type).
    pub wildcard: bool,
    /// Names explicitly subscribed.
    pub subscribed: usize,
    pub sent_version: String,
    pub sent_nonce: String,
    /// Resources in (SotW) or changed by (delta) the last response.
    pub sent_resources: usize,
    /// When the last response was sent.
    #[serde(with = "unix_seconds_opt")]
    pub sent_at: Option<SystemTime>,
    pub acked_version: String,
    pub acked_nonce: String,
    /// When the last ACK came.
    #[serde(with = "unix_seconds_opt")]
    pub acked_at: Option<SystemTime>,
    pub nacked: Option<Nack>,
}

impl TypeStatus {
    /// istioctl's words: SYNCED, STALE (sent, not yet ACKed), NACKED, NOT SENT.
    pub fn state(&self) -> &'static str {
        if self.sent_nonce.is_empty() {
            "NOT SENT"
        } else if self
            .nacked
            .as_ref()
            .is_some_and(|n| n.nonce == self.sent_nonce)
        {
            "NACKED"
        } else if self.acked_nonce == self.sent_nonce {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// One connected stream.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub connection_id: u64,
    pub node_id: String,
    /// `POD.NAMESPACE` for Istio nodes, else the node id.
    pub proxy_id: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `gateway`, `sidecar` or `proxyless` (gRPC).
    pub kind: &'static str,
    /// The stream's peer address (TCP), when known.
    pub peer: Option<String>,
    pub user_agent: String,
    pub istio_version: Option<String>,
    /// The SPIFFE identity of the stream's verified client certificate (the mutual-TLS
    /// port only).
    pub spiffe_identity: Option<String>,
    pub mode: Mode,
    #[serde(with = "unix_seconds")]
    pub connected_at: SystemTime,
    /// Generation of the snapshot the stream is working from.
    pub snapshot_generation: u64,
    /// The last error computing this proxy's resources, if the latest attempt failed.
    pub snapshot_error: Option<String>,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

impl ProxyStatus {
    /// A stream of `node` that has just connected.
    pub fn new(connection_id: u64, node: &NodeInfo, mode: Mode) -> ProxyStatus {
        ProxyStatus {
            connection_id,
            node_id: node.identity.id.clone(),
            proxy_id: node.proxy_id.clone(),
            namespace: node.identity.namespace.clone(),
            labels: node.identity.labels.clone(),
            kind: match node.identity.kind {
                crate::xds::ProxyKind::Router => "gateway",
                crate::xds::ProxyKind::Sidecar => "sidecar",
                crate::xds::ProxyKind::Grpc => "proxyless",
            },
            peer: None,
            user_agent: node.user_agent.clone(),
            istio_version: node.istio_version.clone(),
            spiffe_identity: None,
            mode,
            connected_at: SystemTime::now(),
            snapshot_generation: 0,
            snapshot_error: None,
            types: Default::default(),
        }
    }

    pub fn ty(&mut self, t: TypeUrl) -> &mut TypeStatus {
        self.types.entry(t.short()).or_default()
    }

    /// Per-type states as `/debug/syncz` shows them.
    pub fn states(&self) -> BTreeMap<&'static str, &'static str> {
        self.types.iter().map(|(k, v)| (*k, v.state())).collect()
    }
}

mod unix_seconds_opt {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_seconds::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

mod unix_seconds {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        s.serialize_f64(secs)
    }
}
