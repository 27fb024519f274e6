//! Who may open an xDS stream for which node, on the mutual-TLS port (15012).
//!
//! As istiod does (`checkConnectionIdentity`): the client certificate's SPIFFE identity
//! must be in the namespace the proxy's configuration is computed for (the node's
//! `NAMESPACE` metadata, else its id's), the namespace of an Istio node id must be the
//! same, and a `SERVICE_ACCOUNT` in the metadata must be the certificate's. A stream
//! without a client certificate is `UNAUTHENTICATED`; one whose certificate names
//! another namespace is `PERMISSION_DENIED`. The plaintext port (15010) checks nothing.
use super::node::{IstioNodeId, NodeInfo};
use crate::ca::PeerInfo;
use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::pb::google::protobuf::value::Kind;
use tonic::Status;

/// What a stream's transport says about its client.
#[derive(Debug, Clone)]
pub(crate) enum StreamAuth {
    /// The plaintext port: nothing is checked.
    Plaintext,
    /// The mutual-TLS port, with what the handshake established (`None` if tonic did not
    /// pass the connection's details, which is refused too).
    Mtls(Option<PeerInfo>),
    /// A Unix socket of the pod's agent: the socket's permissions admit only the proxy
    /// next to it, which is served the secrets the agent holds.
    Local,
}

impl StreamAuth {
    /// The SPIFFE identity of a verified client certificate (mutual TLS only).
    pub(crate) fn verified_identity(&self) -> Option<crate::ca::SpiffeId> {
        match self {
            StreamAuth::Mtls(Some(peer)) if peer.verified_certificate => peer.identity.clone(),
            _ => None,
        }
    }

    /// Checks that the stream's client may be served as `node`.
    pub(crate) fn authorize(&self, node: &NodeInfo, raw: Option<&Node>) -> Result<(), Status> {
        let peer = match self {
            StreamAuth::Plaintext | StreamAuth::Local => return Ok(()),
            StreamAuth::Mtls(peer) => peer.as_ref(),
        };
        let Some(peer) = peer.filter(|p| p.verified_certificate) else {
            return Err(Status::unauthenticated(
                "xDS on this port needs a client certificate issued by the mesh CA",
            ));
        };
        let Some(id) = &peer.identity else {
            return Err(Status::permission_denied(
                "the client certificate has no SPIFFE identity of this trust domain",
            ));
        };
        let denied = |what: String| {
            Err(Status::permission_denied(format!(
                "authorization failed: {id} may not be served as {what}"
            )))
        };
        if node.identity.namespace != id.namespace {
            return denied(format!("a proxy of namespace {}", node.identity.namespace));
        }
        if let Some(istio) = IstioNodeId::parse(&node.identity.id)
            && istio.namespace != id.namespace
        {
            return denied(format!("node {}", node.identity.id));
        }
        let service_account = raw
            .and_then(|n| n.metadata.as_ref())
            .and_then(|m| m.fields.get("SERVICE_ACCOUNT"))
            .and_then(|v| match v.kind.as_ref() {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
                _ => None,
            });
        if let Some(sa) = service_account
            && sa != id.service_account
        {
            return denied(format!("service account {sa}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::SpiffeId;
    use crate::controlplane::node::parse_node;
    use crate::xds::pb::google::protobuf::{Struct, Value};

    fn node(id: &str, meta: &[(&str, &str)]) -> Node {
        let fields = meta
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect();
        Node {
            id: id.into(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    fn mtls(ns: Option<&str>, cert: bool) -> StreamAuth {
        StreamAuth::Mtls(Some(PeerInfo {
            addr: None,
            verified_certificate: cert,
            identity: ns.map(|ns| SpiffeId::new("cluster.local", ns, "ingress").unwrap()),
        }))
    }

    #[test]
    fn namespaces_must_match() {
        let id = "router~10.0.0.1~gw-1.edge~edge.svc.cluster.local";
        let cases: &[(&str, Node, StreamAuth, Option<tonic::Code>)] = &[
            ("plaintext", node(id, &[]), StreamAuth::Plaintext, None),
            (
                "same namespace",
                node(id, &[]),
                mtls(Some("edge"), true),
                None,
            ),
            (
                "metadata agrees",
                node(id, &[("NAMESPACE", "edge"), ("SERVICE_ACCOUNT", "ingress")]),
                mtls(Some("edge"), true),
                None,
            ),
            (
                "other namespace",
                node(id, &[]),
                mtls(Some("shop"), true),
                Some(tonic::Code::PermissionDenied),
            ),
            (
                "metadata names the certificate's namespace, the id another",
                node(id, &[("NAMESPACE", "shop")]),
                mtls(Some("shop"), true),
                Some(tonic::Code::PermissionDenied),
            ),
            (
                "other service account",
                node(id, &[("SERVICE_ACCOUNT", "admin")]),
                mtls(Some("edge"), true),
                Some(tonic::Code::PermissionDenied),
            ),
            (
                "plain node id in the certificate's namespace",
                node("envoy-1", &[("NAMESPACE", "edge")]),
                mtls(Some("edge"), true),
                None,
            ),
            (
                "plain node id defaults to namespace default",
                node("envoy-1", &[]),
                mtls(Some("edge"), true),
                Some(tonic::Code::PermissionDenied),
            ),
            (
                "certificate without identity",
                node(id, &[]),
                mtls(None, true),
                Some(tonic::Code::PermissionDenied),
            ),
            (
                "no certificate",
                node(id, &[]),
                mtls(None, false),
                Some(tonic::Code::Unauthenticated),
            ),
            (
                "no connection details",
                node(id, &[]),
                StreamAuth::Mtls(None),
                Some(tonic::Code::Unauthenticated),
            ),
        ];
        for (name, raw, auth, want) in cases {
            let info = parse_node(Some(raw)).unwrap();
            let got = auth.authorize(&info, Some(raw)).err().map(|s| s.code());
            assert_eq!(got, *want, "{name}");
        }
    }
}
