//! Who a set of resources is computed for.
use std::collections::BTreeMap;

/// The kind of proxy, from Istio's node id (`router~...` for gateways,
/// `sidecar~...` for application pods) and, for proxyless gRPC clients, the node
/// metadata (`GENERATOR: grpc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyKind {
    /// A gateway (Istio's `router`): listeners come from Gateway resources.
    #[default]
    Router,
    /// A sidecar in an application pod.
    Sidecar,
    /// A gRPC library configured over xDS itself (no proxy): its node metadata says
    /// `GENERATOR: grpc`, as in the bootstrap Istio's agent writes for it.
    Grpc,
}

/// The identity of one proxy: what the translator needs to know to compute its
/// resources. Built from CLI flags in standalone mode, or from the xDS node
/// (id, metadata `LABELS`, `NAMESPACE`, ...) by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProxyIdentity {
    /// Node id, e.g. `router~10.0.0.1~ingress-abc.istio-system~istio-system.svc.cluster.local`.
    pub id: String,
    pub kind: ProxyKind,
    /// The proxy's namespace: Gateway `credentialName`s and Sidecar scoping resolve here.
    pub namespace: String,
    /// Workload labels, matched against Gateway `selector`s.
    pub labels: BTreeMap<String, String>,
    /// Addresses of the workload (for sidecars' inbound listeners).
    pub ip_addresses: Vec<String>,
    /// The network the proxy is on (multi-network east-west).
    pub network: String,
    /// Kubernetes cluster id of the proxy (multi-cluster).
    pub cluster_id: String,
    /// DNS domain suffix, `cluster.local` unless told otherwise.
    pub domain_suffix: String,
    /// `gatewayTopology` of the proxy's own ProxyConfig (node metadata `PROXY_CONFIG`),
    /// which replaces MeshConfig `defaultConfig`'s for it.
    pub gateway_topology: Option<crate::config::mesh::GatewayTopology>,
}

impl ProxyIdentity {
    /// A gateway identified by its labels, in `namespace`.
    pub fn gateway(namespace: &str, labels: BTreeMap<String, String>) -> ProxyIdentity {
        ProxyIdentity {
            id: format!("router~127.0.0.1~meshgate.{namespace}~{namespace}.svc.cluster.local"),
            kind: ProxyKind::Router,
            namespace: namespace.to_string(),
            labels,
            domain_suffix: "cluster.local".into(),
            ..Default::default()
        }
    }

    /// Parses `k=v,k2=v2` (the `--labels` flag).
    pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("label `{part}` is not of the form key=value"))?;
            if k.is_empty() {
                return Err(format!("label `{part}` has an empty key"));
            }
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels() {
        let l = ProxyIdentity::parse_labels("istio=ingressgateway, app=x").unwrap();
        assert_eq!(l["istio"], "ingressgateway");
        assert_eq!(l["app"], "x");
        assert!(ProxyIdentity::parse_labels("novalue").is_err());
        assert!(ProxyIdentity::parse_labels("=v").is_err());
        assert!(ProxyIdentity::parse_labels("").unwrap().is_empty());
    }
}
