//! Who is on the other end of a stream: the xDS `Node` turned into a [`ProxyIdentity`].
//!
//! Istio's node ids have four parts, `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`
//! (`router~10.0.0.1~ingress-7d9.istio-system~istio-system.svc.cluster.local`), and the
//! metadata carries `LABELS`, `NAMESPACE`, `ISTIO_VERSION`, `CLUSTER_ID`, `NETWORK` and
//! `INSTANCE_IPS`. Metadata wins over what the id says. A plain Envoy node (any id) is
//! treated as a gateway in namespace `default` unless its metadata says otherwise.
//! `GENERATOR: grpc` in the metadata (Istio's gRPC bootstrap) makes the node a
//! proxyless gRPC client, whatever its id says.
use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::pb::google::protobuf::{Struct, Value, value::Kind};
use crate::xds::{ProxyIdentity, ProxyKind};
use std::collections::BTreeMap;

/// Why a node cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("the first request of a stream must carry the node")]
    Missing,
    #[error("node id is empty")]
    EmptyId,
    #[error("node metadata {field} is too large ({len} bytes, at most {max})")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("node metadata PROXY_CONFIG: {0}")]
    ProxyConfig(String),
}

/// Longest node id or metadata string accepted; real ones are well under 1 KiB.
const MAX_FIELD: usize = 16 * 1024;

/// The node metadata key naming the generator istiod answers a node with.
pub const GENERATOR: &str = "GENERATOR";
/// The generator of proxyless gRPC clients.
pub const GRPC_GENERATOR: &str = "grpc";

/// Everything the control plane keeps about a connected node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// What the translator needs.
    pub identity: ProxyIdentity,
    /// Envoy's `node.cluster` (Istio: `SERVICE.NAMESPACE`).
    pub cluster: String,
    /// `ISTIO_VERSION` from the metadata, when present.
    pub istio_version: Option<String>,
    /// `user_agent_name` and build version (`envoy 1.40.0`), for the debug pages.
    pub user_agent: String,
    /// `POD.NAMESPACE` from an Istio id (istioctl's proxy id), else the node id.
    pub proxy_id: String,
}

/// The part of an identity that a proxy's resources depend on: proxies with equal keys
/// share one computed snapshot. The node id is left out (every pod has its own), and so
/// are the addresses of gateways and gRPC clients: gateways are configured by selector
/// labels, gRPC clients only get outbound resources. The kind is part of the key, so a
/// gRPC client never shares a snapshot with an Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    kind: u8,
    namespace: String,
    labels: BTreeMap<String, String>,
    ip_addresses: Vec<String>,
    network: String,
    cluster_id: String,
    domain_suffix: String,
}

impl IdentityKey {
    /// The key of `identity`.
    pub fn of(identity: &ProxyIdentity) -> IdentityKey {
        IdentityKey {
            kind: match identity.kind {
                ProxyKind::Router => 0,
                ProxyKind::Sidecar => 1,
                ProxyKind::Grpc => 2,
            },
            namespace: identity.namespace.clone(),
            labels: identity.labels.clone(),
            ip_addresses: match identity.kind {
                ProxyKind::Router | ProxyKind::Grpc => Vec::new(),
                ProxyKind::Sidecar => identity.ip_addresses.clone(),
            },
            network: identity.network.clone(),
            cluster_id: identity.cluster_id.clone(),
            domain_suffix: identity.domain_suffix.clone(),
        }
    }
}

/// The parts of an Istio node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioNodeId {
    pub kind: ProxyKind,
    pub ip: String,
    /// `POD.NAMESPACE`
    pub pod_and_namespace: String,
    pub namespace: String,
    /// `NAMESPACE.svc.DOMAIN`
    pub dns_domain: String,
}

impl IstioNodeId {
    /// Parses `TYPE~IP~POD.NS~NS.svc.DOMAIN`; `None` if `id` is not in that form or the
    /// type is not one meshgate serves (`router`, `sidecar`).
    pub fn parse(id: &str) -> Option<IstioNodeId> {
        let mut parts = id.split('~');
        let (kind, ip, pod_ns, domain) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let kind = match kind {
            "router" => ProxyKind::Router,
            "sidecar" => ProxyKind::Sidecar,
            _ => return None,
        };
        let namespace = pod_ns
            .split_once('.')
            .map(|(_, ns)| ns)
            .filter(|ns| !ns.is_empty())
            .or_else(|| domain.split('.').next().filter(|ns| !ns.is_empty()))?;
        Some(IstioNodeId {
            kind,
            ip: ip.to_string(),
            pod_and_namespace: pod_ns.to_string(),
            namespace: namespace.to_string(),
            dns_domain: domain.to_string(),
        })
    }

    /// Formats an Istio node id.
    pub fn format(kind: ProxyKind, ip: &str, pod: &str, namespace: &str, domain: &str) -> String {
        // Istio's agent gives gRPC clients sidecar ids (the metadata tells them apart).
        let ty = match kind {
            ProxyKind::Router => "router",
            ProxyKind::Sidecar | ProxyKind::Grpc => "sidecar",
        };
        format!("{ty}~{ip}~{pod}.{namespace}~{namespace}.svc.{domain}")
    }
}

fn string_field<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a str> {
    match meta?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn value_to_string(v: &Value) -> Option<String> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(n.to_string()),
        Kind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn check_len(field: &'static str, s: &str) -> Result<(), NodeError> {
    if s.len() > MAX_FIELD {
        return Err(NodeError::TooLarge {
            field,
            len: s.len(),
            max: MAX_FIELD,
        });
    }
    Ok(())
}

/// Parses the node of a stream's first request.
pub fn parse_node(node: Option<&Node>) -> Result<NodeInfo, NodeError> {
    let node = node.ok_or(NodeError::Missing)?;
    if node.id.is_empty() {
        return Err(NodeError::EmptyId);
    }
    check_len("id", &node.id)?;
    let meta = node.metadata.as_ref();
    let istio = IstioNodeId::parse(&node.id);

    let namespace = string_field(meta, "NAMESPACE")
        .map(str::to_string)
        .or_else(|| istio.as_ref().map(|i| i.namespace.clone()))
        .unwrap_or_else(|| "default".to_string());
    check_len("NAMESPACE", &namespace)?;

    let mut labels = BTreeMap::new();
    if let Some(Kind::StructValue(s)) = meta
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| v.kind.as_ref())
    {
        for (k, v) in &s.fields {
            if let Some(v) = value_to_string(v) {
                check_len("LABELS", k)?;
                check_len("LABELS", &v)?;
                labels.insert(k.clone(), v);
            }
        }
    }

    let ip_addresses: Vec<String> = match string_field(meta, "INSTANCE_IPS") {
        Some(ips) => ips
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => istio
            .as_ref()
            .map(|i| vec![i.ip.clone()])
            .unwrap_or_default(),
    };

    let domain_suffix = string_field(meta, "DNS_DOMAIN")
        .map(str::to_string)
        .or_else(|| {
            istio.as_ref().and_then(|i| {
                i.dns_domain
                    .strip_prefix(&format!("{}.svc.", i.namespace))
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| "cluster.local".to_string());

    let identity = ProxyIdentity {
        id: node.id.clone(),
        kind: if string_field(meta, GENERATOR) == Some(GRPC_GENERATOR) {
            ProxyKind::Grpc
        } else {
            istio.as_ref().map(|i| i.kind).unwrap_or(ProxyKind::Router)
        },
        namespace,
        labels,
        ip_addresses,
        network: string_field(meta, "NETWORK")
            .unwrap_or_default()
            .to_string(),
        cluster_id: string_field(meta, "CLUSTER_ID")
            .unwrap_or_default()
            .to_string(),
        domain_suffix,
        gateway_topology: match meta.and_then(|m| m.fields.get("PROXY_CONFIG")) {
            None => None,
            Some(v) => {
                let json = value_to_json(v);
                crate::config::mesh::GatewayTopology::from_proxy_config_json(&json)
                    .map_err(NodeError::ProxyConfig)?
            }
        },
    };
    let build = match &node.user_agent_version_type {
        Some(crate::xds::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(crate::xds::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(NodeInfo {
        proxy_id: istio
            .as_ref()
            .map(|i| i.pod_and_namespace.clone())
            .unwrap_or_else(|| node.id.clone()),
        identity,
        cluster: node.cluster.clone(),
        istio_version: string_field(meta, "ISTIO_VERSION").map(str::to_string),
        user_agent: format!("{} {}", node.user_agent_name, build)
            .trim()
            .to_string(),
    })
}

/// A protobuf `Value` as JSON.
fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(|n| {
                // Whole numbers as integers, as protobuf's JSON mapping reads them.
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (f as i64).into(),
                    _ => serde_json::Value::Number(n),
                }
            })
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

/// Builds node metadata (`LABELS`, `NAMESPACE`, ...) the way Istio's agent writes it.
pub fn istio_metadata(identity: &ProxyIdentity, istio_version: &str) -> Struct {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = std::collections::HashMap::new();
    let labels = Struct {
        fields: identity
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), s(v)))
            .collect(),
    };
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    fields.insert("NAMESPACE".to_string(), s(&identity.namespace));
    if !istio_version.is_empty() {
        fields.insert("ISTIO_VERSION".to_string(), s(istio_version));
    }
    if !identity.cluster_id.is_empty() {
        fields.insert("CLUSTER_ID".to_string(), s(&identity.cluster_id));
    }
    if !identity.network.is_empty() {
        fields.insert("NETWORK".to_string(), s(&identity.network));
    }
    if !identity.ip_addresses.is_empty() {
        fields.insert(
            "INSTANCE_IPS".to_string(),
            s(&identity.ip_addresses.join(",")),
        );
    }
    if !identity.domain_suffix.is_empty() {
        fields.insert("DNS_DOMAIN".to_string(), s(&identity.domain_suffix));
    }
    if identity.kind == ProxyKind::Grpc {
        fields.insert(GENERATOR.to_string(), s(GRPC_GENERATOR));
    }
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, meta: Option<Struct>) -> Node {
        Node {
            id: id.to_string(),
            metadata: meta,
            ..Default::default()
        }
    }

    /// (kind, ip, namespace, POD.NAMESPACE)
    type Parsed<'a> = Option<(ProxyKind, &'a str, &'a str, &'a str)>;

    #[test]
    fn istio_ids() {
        let cases: &[(&str, Parsed)] = &[
            (
                "router~10.0.0.1~ingress-abc.istio-system~istio-system.svc.cluster.local",
                Some((
                    ProxyKind::Router,
                    "10.0.0.1",
                    "istio-system",
                    "ingress-abc.istio-system",
                )),
            ),
            (
                "sidecar~10.1.2.3~reviews-v1.shop~shop.svc.corp.example",
                Some((ProxyKind::Sidecar, "10.1.2.3", "shop", "reviews-v1.shop")),
            ),
            ("waypoint~1.2.3.4~w.ns~ns.svc.cluster.local", None),
            ("envoy-oracle", None),
            ("router~1.2.3.4~pod~", None),
            ("a~b~c~d~e", None),
        ];
        for (id, want) in cases {
            let got =
                IstioNodeId::parse(id).map(|i| (i.kind, i.ip, i.namespace, i.pod_and_namespace));
            let want =
                want.map(|(k, ip, ns, p)| (k, ip.to_string(), ns.to_string(), p.to_string()));
            assert_eq!(got, want, "{id}");
        }
    }

    #[test]
    fn istio_node_with_metadata() {
        let id = IstioNodeId::format(
            ProxyKind::Router,
            "10.0.0.1",
            "gw-1",
            "edge",
            "cluster.local",
        );
        let mut ident = ProxyIdentity {
            namespace: "edge".into(),
            cluster_id: "Kubernetes".into(),
            network: "net1".into(),
            ..Default::default()
        };
        ident.labels.insert("istio".into(), "ingressgateway".into());
        let info = parse_node(Some(&node(&id, Some(istio_metadata(&ident, "1.24.0"))))).unwrap();
        assert_eq!(info.identity.kind, ProxyKind::Router);
        assert_eq!(info.identity.namespace, "edge");
        assert_eq!(info.identity.labels["istio"], "ingressgateway");
        assert_eq!(info.identity.cluster_id, "Kubernetes");
        assert_eq!(info.identity.network, "net1");
        assert_eq!(info.identity.ip_addresses, vec!["10.0.0.1"]);
        assert_eq!(info.identity.domain_suffix, "cluster.local");
        assert_eq!(info.istio_version.as_deref(), Some("1.24.0"));
        assert_eq!(info.proxy_id, "gw-1.edge");
    }

    #[test]
    fn metadata_namespace_wins_and_plain_nodes_fall_back() {
        let mut meta = Struct::default();
        meta.fields.insert(
            "NAMESPACE".into(),
            Value {
                kind: Some(Kind::StringValue("other".into())),
            },
        );
        let info = parse_node(Some(&node(
            "sidecar~1.1.1.1~p.shop~shop.svc.cluster.local",
            Some(meta),
        )))
        .unwrap();
        assert_eq!(info.identity.namespace, "other");
        assert_eq!(info.identity.kind, ProxyKind::Sidecar);

        let plain = parse_node(Some(&node("envoy-oracle", None))).unwrap();
        assert_eq!(plain.identity.kind, ProxyKind::Router);
        assert_eq!(plain.identity.namespace, "default");
        assert!(plain.identity.labels.is_empty());
        assert_eq!(plain.identity.domain_suffix, "cluster.local");
        assert_eq!(plain.proxy_id, "envoy-oracle");
    }

    #[test]
    fn bad_nodes() {
        assert_eq!(parse_node(None), Err(NodeError::Missing));
        assert_eq!(parse_node(Some(&node("", None))), Err(NodeError::EmptyId));
        let long = "x".repeat(MAX_FIELD + 1);
        assert!(matches!(
            parse_node(Some(&node(&long, None))),
            Err(NodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn grpc_generator_makes_a_grpc_client_with_its_own_key() {
        let id = "sidecar~10.0.0.7~client-1.shop~shop.svc.cluster.local";
        let mut meta = Struct::default();
        for (k, v) in [("GENERATOR", "grpc"), ("NAMESPACE", "shop")] {
            meta.fields.insert(
                k.into(),
                Value {
                    kind: Some(Kind::StringValue(v.into())),
                },
            );
        }
        let grpc = parse_node(Some(&node(id, Some(meta.clone())))).unwrap();
        assert_eq!(grpc.identity.kind, ProxyKind::Grpc);
        assert_eq!(grpc.identity.namespace, "shop");
        assert_eq!(grpc.proxy_id, "client-1.shop");
        // Written back the way it was read.
        let written = istio_metadata(&grpc.identity, "");
        assert_eq!(
            string_field(Some(&written), GENERATOR),
            Some(GRPC_GENERATOR)
        );

        // The same node without the generator is a sidecar, and never shares a snapshot.
        meta.fields.remove("GENERATOR");
        let sidecar = parse_node(Some(&node(id, Some(meta.clone())))).unwrap();
        assert_eq!(sidecar.identity.kind, ProxyKind::Sidecar);
        assert_ne!(
            IdentityKey::of(&grpc.identity),
            IdentityKey::of(&sidecar.identity)
        );
        // Another generator is not gRPC's.
        meta.fields.insert(
            "GENERATOR".into(),
            Value {
                kind: Some(Kind::StringValue("api".into())),
            },
        );
        let other = parse_node(Some(&node(id, Some(meta)))).unwrap();
        assert_eq!(other.identity.kind, ProxyKind::Sidecar);

        // gRPC clients of one namespace and labels share a key whatever their addresses;
        // a gateway with the same namespace and labels does not.
        let other_client = ProxyIdentity {
            id: "sidecar~10.0.0.8~client-2.shop~shop.svc.cluster.local".into(),
            ip_addresses: vec!["10.0.0.8".into()],
            ..grpc.identity.clone()
        };
        assert_eq!(
            IdentityKey::of(&grpc.identity),
            IdentityKey::of(&other_client)
        );
        let gateway = ProxyIdentity {
            kind: ProxyKind::Router,
            ..grpc.identity.clone()
        };
        assert_ne!(IdentityKey::of(&grpc.identity), IdentityKey::of(&gateway));
    }

    #[test]
    fn keys_ignore_gateway_ips_but_not_sidecar_ips() {
        let a = ProxyIdentity {
            id: "a".into(),
            ip_addresses: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        let b = ProxyIdentity {
            id: "b".into(),
            ip_addresses: vec!["2.2.2.2".into()],
            ..Default::default()
        };
        assert_eq!(IdentityKey::of(&a), IdentityKey::of(&b));
        let (sa, sb) = (
            ProxyIdentity {
                kind: ProxyKind::Sidecar,
                ..a
            },
            ProxyIdentity {
                kind: ProxyKind::Sidecar,
                ..b
            },
        );
        assert_ne!(IdentityKey::of(&sa), IdentityKey::of(&sb));
    }

    #[test]
    fn proxy_config_metadata_gives_the_gateway_topology() {
        let topo = |v: Value| {
            let meta = Struct {
                fields: [("PROXY_CONFIG".to_string(), v)].into_iter().collect(),
            };
            parse_node(Some(&node(
                "router~1.1.1.1~gw.ns~ns.svc.cluster.local",
                Some(meta),
            )))
            .map(|n| n.identity.gateway_topology)
        };
        let num = |n: f64| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let st = |fields: Vec<(&str, Value)>| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })),
        };
        // As Envoy sends it: a Struct, numbers as doubles; other ProxyConfig fields are
        // the proxy's own.
        let t = topo(st(vec![
            (
                "gatewayTopology",
                st(vec![
                    ("numTrustedProxies", num(2.0)),
                    ("proxyProtocol", st(vec![])),
                ]),
            ),
            (
                "binaryPath",
                Value {
                    kind: Some(Kind::StringValue("/usr/bin/envoy".into())),
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.num_trusted_proxies, 2);
        assert!(t.proxy_protocol.is_some());
        // As a JSON string (pilot-agent's environment form).
        let t = topo(Value {
            kind: Some(Kind::StringValue(
                r#"{"gatewayTopology":{"numTrustedProxies":1}}"#.into(),
            )),
        })
        .unwrap()
        .unwrap();
        assert_eq!(t.num_trusted_proxies, 1);
        assert_eq!(topo(st(vec![])).unwrap(), None);
        let e = topo(st(vec![(
            "gatewayTopology",
            st(vec![("numTrustedProxys", num(1.0))]),
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("numTrustedProxys"), "{e}");
    }
}
