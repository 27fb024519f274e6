//! The Envoy bootstrap for a proxy managed by this control plane (the job of Istio's
//! pilot-agent): node id and metadata in Istio's form, everything over one ADS stream
//! (SotW or delta), a static cluster for the control plane with HTTP/2, admin on
//! loopback.
//!
//! For a proxy whose agent runs next to it (`meshgate agent`), a second static cluster,
//! `sds-grpc`, reaches the agent's SDS server on a Unix socket: the workload certificate
//! `default` and the trust bundle `ROOTCA` come from there, for the `xds-grpc` cluster's
//! own mutual TLS and for the mesh's (the translator refers to the same cluster). Those
//! secrets travel on their own `api_config_source` stream, not over ADS: Envoy 1.40
//! crashes on a static cluster whose secrets come over ADS.
//!
//! The document is built as JSON, parsed into Envoy's `Bootstrap` proto (unknown or
//! mistyped fields are errors, as in Envoy) and rendered back, so what is written is
//! what Envoy's own parser accepts.
use super::node::{IstioNodeId, istio_metadata};
use crate::xds::json::{JsonError, from_json, to_json};
use crate::xds::pb::envoy::config::bootstrap::v3::Bootstrap;
use crate::xds::{ProxyIdentity, ProxyKind};
use serde_json::{Value, json};
use std::fmt::Write;

/// What goes into a bootstrap.
#[derive(Debug, Clone)]
pub struct EnvoyBootstrap {
    /// The control plane, `HOST:PORT` (an IP or a DNS name).
    pub xds_address: String,
    /// The node id: Istio's four-part form, or a pod name that is expanded into it.
    pub node_id: String,
    pub kind: ProxyKind,
    pub namespace: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The workload's IP for the node id when `node_id` is a plain name.
    pub ip: String,
    /// Delta xDS (`DELTA_GRPC`) rather than state-of-the-world (`GRPC`).
    pub delta: bool,
    pub admin_address: String,
    pub admin_port: u16,
    /// `node.cluster` (Istio: `SERVICE.NAMESPACE`); defaults to `istio-ingressgateway.NS`
    /// for gateways and the pod name's prefix otherwise.
    pub cluster: Option<String>,
    pub cluster_id: String,
    pub network: String,
    /// Reach the control plane over TLS (its 15012 port) with these files.
    pub xds_tls: Option<XdsTlsFiles>,
    /// The agent's SDS server, a Unix socket: the `sds-grpc` cluster.
    pub agent_sds_socket: Option<std::path::PathBuf>,
    /// `ISTIO_VERSION` in the node metadata (left out when empty).
    pub istio_version: String,
    /// More node metadata strings, as Istio's agent sets them (`SERVICE_ACCOUNT`,
    /// `NAME`, `WORKLOAD_NAME`, ...). They do not replace the ones made from the
    /// fields above.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The proxy's own ProxyConfig (`--proxy-config`), sent as the `PROXY_CONFIG` node
    /// metadata as Istio's agent does: the control plane translates for this proxy with
    /// its `gatewayTopology`.
    pub proxy_config: Option<serde_json::Value>,
}

/// The cluster of the agent's SDS server (`translate::AGENT_SDS_CLUSTER`).
pub const AGENT_SDS_CLUSTER: &str = crate::translate::AGENT_SDS_CLUSTER;

/// The files of a TLS connection to the control plane's 15012 port, as Istio's agent
/// writes them for Envoy: the mesh root to verify the control plane with and, for
/// mutual TLS, the proxy's certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTlsFiles {
    /// `root-cert.pem` of the mesh CA.
    pub root_cert: std::path::PathBuf,
    /// The proxy's certificate chain and key (both or neither).
    pub cert_chain: Option<std::path::PathBuf>,
    pub private_key: Option<std::path::PathBuf>,
    /// The proxy's certificate is the agent's SDS secret `default` (from `sds-grpc`)
    /// rather than files; needs [`EnvoyBootstrap::agent_sds_socket`].
    pub agent_certificate: bool,
    /// The name the control plane's certificate must carry, sent as SNI
    /// (`istiod.istio-system.svc`).
    pub server_name: String,
}

impl Default for EnvoyBootstrap {
    fn default() -> Self {
        EnvoyBootstrap {
            xds_address: "127.0.0.1:15010".into(),
            node_id: "meshgate-gateway".into(),
            kind: ProxyKind::Router,
            namespace: "default".into(),
            labels: Default::default(),
            ip: "127.0.0.1".into(),
            delta: true,
            admin_address: "127.0.0.1".into(),
            admin_port: 15000,
            cluster: None,
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            xds_tls: None,
            agent_sds_socket: None,
            istio_version: String::new(),
            metadata: Default::default(),
            proxy_config: None,
        }
    }
}

/// Why a bootstrap cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("xDS address `{0}` is not HOST:PORT")]
    Address(String),
    #[error(
        "node id `{0}` looks like an Istio id but is not TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN"
    )]
    NodeId(String),
    #[error("rendering the bootstrap: {0}")]
    Json(#[from] JsonError),
    #[error("the xds-grpc certificate from the agent needs the agent's SDS socket")]
    NoAgentSocket,
}

/// Splits `HOST:PORT` (`[v6]:PORT` too).
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

impl EnvoyBootstrap {
    /// The full node id.
    pub fn full_node_id(&self) -> Result<String, BootstrapError> {
        if self.node_id.contains('~') {
            IstioNodeId::parse(&self.node_id)
                .ok_or_else(|| BootstrapError::NodeId(self.node_id.clone()))?;
            return Ok(self.node_id.clone());
        }
        Ok(IstioNodeId::format(
            self.kind,
            &self.ip,
            &self.node_id,
            &self.namespace,
            "cluster.local",
        ))
    }

    /// The bootstrap as Envoy's proto.
    pub fn build(&self) -> Result<Bootstrap, BootstrapError> {
        let (host, port) = split_host_port(&self.xds_address)
            .ok_or_else(|| BootstrapError::Address(self.xds_address.clone()))?;
        let node_id = self.full_node_id()?;
        let identity = ProxyIdentity {
            id: node_id.clone(),
            kind: self.kind,
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            ip_addresses: vec![self.ip.clone()],
            network: self.network.clone(),
            cluster_id: self.cluster_id.clone(),
            domain_suffix: "cluster.local".into(),
            gateway_topology: None,
        };
        let mut metadata = to_json(&istio_metadata(&identity, &self.istio_version))?;
        if let Some(fields) = metadata.as_object_mut() {
            if let Some(pc) = &self.proxy_config {
                fields.insert("PROXY_CONFIG".into(), pc.clone());
            }
            for (k, v) in &self.metadata {
                fields
                    .entry(k.clone())
                    .or_insert_with(|| Value::String(v.clone()));
            }
        }
        let cluster = self.cluster.clone().unwrap_or_else(|| match self.kind {
            ProxyKind::Router => format!("istio-ingressgateway.{}", self.namespace),
            ProxyKind::Sidecar | ProxyKind::Grpc => {
                let pod = IstioNodeId::parse(&node_id)
                    .map(|i| i.pod_and_namespace)
                    .unwrap_or_default();
                let app = self
                    .labels
                    .get("app")
                    .cloned()
                    .unwrap_or_else(|| pod.split('.').next().unwrap_or("").to_string());
                format!("{app}.{}", self.namespace)
            }
        });
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        let mut doc = json!({
            "node": {"id": node_id, "cluster": cluster, "metadata": metadata},
            "admin": {"address": {"socket_address": {"address": self.admin_address, "port_value": self.admin_port}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if self.delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {
                "clusters": [{
                    "name": "xds-grpc",
                    "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
                    },
                }]
            },
        });
        if let Some(tls) = &self.xds_tls {
            if tls.agent_certificate && self.agent_sds_socket.is_none() {
                return Err(BootstrapError::NoAgentSocket);
            }
            doc["static_resources"]["clusters"][0]["transport_socket"] = tls_transport_socket(tls);
        }
        if let (Some(socket), Some(clusters)) = (
            &self.agent_sds_socket,
            doc["static_resources"]["clusters"].as_array_mut(),
        ) {
            clusters.push(agent_sds_cluster(socket));
        }
        Ok(from_json::<Bootstrap>(&doc)?)
    }

    /// The bootstrap as Envoy-style JSON.
    pub fn to_json(&self) -> Result<Value, BootstrapError> {
        Ok(to_json(&self.build()?)?)
    }

    /// The bootstrap as YAML.
    pub fn to_yaml(&self) -> Result<String, BootstrapError> {
        Ok(yaml(&self.to_json()?))
    }
}

/// The bootstrap file of a proxyless gRPC client: what Istio's agent writes to the path
/// in `GRPC_XDS_BOOTSTRAP` (grpc-go, grpc-java, grpc-core and its wrappers read it). The
/// control plane is the one xDS server (plain text, xDS v3), and the node is in Istio's
/// form with `GENERATOR: grpc` in its metadata, which makes the control plane answer it
/// the way istiod's `grpc` generator does.
#[derive(Debug, Clone)]
pub struct GrpcBootstrap {
    /// The control plane, `HOST:PORT`.
    pub xds_address: String,
    /// The node id: Istio's four-part form, or a pod name that is expanded into it.
    pub node_id: String,
    pub namespace: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The workload's IP for the node id when `node_id` is a plain name.
    pub ip: String,
    pub cluster_id: String,
    pub network: String,
}

impl Default for GrpcBootstrap {
    fn default() -> Self {
        GrpcBootstrap {
            xds_address: "127.0.0.1:15010".into(),
            node_id: "grpc-client".into(),
            namespace: "default".into(),
            labels: Default::default(),
            ip: "127.0.0.1".into(),
            cluster_id: "Kubernetes".into(),
            network: String::new(),
        }
    }
}

impl GrpcBootstrap {
    /// The bootstrap document.
    pub fn to_json(&self) -> Result<Value, BootstrapError> {
        split_host_port(&self.xds_address)
            .ok_or_else(|| BootstrapError::Address(self.xds_address.clone()))?;
        let node_id = EnvoyBootstrap {
            node_id: self.node_id.clone(),
            kind: ProxyKind::Grpc,
            namespace: self.namespace.clone(),
            ip: self.ip.clone(),
            ..Default::default()
        }
        .full_node_id()?;
        let identity = ProxyIdentity {
            id: node_id.clone(),
            kind: ProxyKind::Grpc,
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            ip_addresses: vec![self.ip.clone()],
            network: self.network.clone(),
            cluster_id: self.cluster_id.clone(),
            domain_suffix: "cluster.local".into(),
            gateway_topology: None,
        };
        let metadata = to_json(&istio_metadata(&identity, ""))?;
        Ok(json!({
            "xds_servers": [{
                "server_uri": self.xds_address,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": node_id, "metadata": metadata},
        }))
    }
}

/// The xds-grpc cluster's TLS: HTTP/2 by ALPN, the control plane verified by the mesh
/// root and its DNS name, the proxy's own certificate from files when given.
fn tls_transport_socket(tls: &XdsTlsFiles) -> Value {
    let file = |p: &std::path::Path| json!({"filename": p.display().to_string()});
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": file(&tls.root_cert),
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
            ],
        },
    });
    if tls.agent_certificate {
        common["tls_certificate_sds_secret_configs"] =
            json!([agent_sds_secret(super::workload::WORKLOAD_SECRET)]);
    } else if let (Some(chain), Some(key)) = (&tls.cert_chain, &tls.private_key) {
        common["tls_certificates"] =
            json!([{"certificate_chain": file(chain), "private_key": file(key)}]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": common,
        }
    })
}

/// A reference to secret `name` of the agent's SDS server, as Istio's bootstrap and
/// the translator (`MeshSecrets::Agent`) write it: its own gRPC stream on `sds-grpc`,
/// no initial fetch timeout (nothing works without the certificate anyway).
fn agent_sds_secret(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": AGENT_SDS_CLUSTER}}],
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
        }
    })
}

/// The `sds-grpc` cluster: the agent's SDS server on a Unix socket, HTTP/2.
fn agent_sds_cluster(socket: &std::path::Path) -> Value {
    json!({
        "name": AGENT_SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": AGENT_SDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket.display().to_string()}}}}]}],
        },
    })
}

/// Renders JSON as block-style YAML. Strings are double-quoted (JSON escapes are valid
/// YAML), so no value can change meaning.
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(_) | Value::Array(_) => None,
        // Envoy reads a YAML scalar in a `Struct` (node metadata) as a number only when it
        // is an integer; `1.0` would reach the control plane as the string "1.0". Protobuf
        // Struct numbers are doubles, so whole ones are written as integers.
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        }),
        other => Some(other.to_string()),
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{}: {s}", key(k));
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{}:", key(k));
                        emit(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match scalar(item) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        // The item's first line goes after the dash, the rest indented.
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        let inner = inner.trim_start();
                        let _ = write!(out, "{pad}- {inner}");
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("127.0.0.1:15010"),
            Some(("127.0.0.1".into(), 15010))
        );
        assert_eq!(
            split_host_port("istiod.istio-system.svc:15010"),
            Some(("istiod.istio-system.svc".into(), 15010))
        );
        assert_eq!(split_host_port("[::1]:15010"), Some(("::1".into(), 15010)));
        for bad in ["127.0.0.1", ":15010", "h:0", "h:x", "h:70000"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn builds_an_istio_style_bootstrap() {
        let mut b = EnvoyBootstrap {
            node_id: "gw-1".into(),
            namespace: "edge".into(),
            delta: false,
            ..Default::default()
        };
        b.labels.insert("istio".into(), "ingressgateway".into());
        let j = b.to_json().unwrap();
        assert_eq!(
            j["node"]["id"],
            "router~127.0.0.1~gw-1.edge~edge.svc.cluster.local"
        );
        assert_eq!(j["node"]["metadata"]["LABELS"]["istio"], "ingressgateway");
        assert_eq!(j["node"]["metadata"]["NAMESPACE"], "edge");
        assert_eq!(j["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert_eq!(j["static_resources"]["clusters"][0]["type"], "STATIC");
        assert_eq!(j["admin"]["address"]["socket_address"]["port_value"], 15000);
        b.node_id = "router~10.0.0.1~gw-1.edge~edge.svc.cluster.local".into();
        b.xds_address = "istiod.istio-system.svc:15010".into();
        b.delta = true;
        let j = b.to_json().unwrap();
        assert_eq!(
            j["node"]["id"],
            "router~10.0.0.1~gw-1.edge~edge.svc.cluster.local"
        );
        assert_eq!(
            j["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(j["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        b.node_id = "router~x".into();
        assert!(matches!(b.build(), Err(BootstrapError::NodeId(_))));
    }

    #[test]
    fn builds_a_grpc_bootstrap_with_the_grpc_generator() {
        let mut b = GrpcBootstrap {
            node_id: "client-1".into(),
            namespace: "shop".into(),
            xds_address: "127.0.0.1:15999".into(),
            ..Default::default()
        };
        b.labels.insert("app".into(), "client".into());
        let j = b.to_json().unwrap();
        assert_eq!(j["xds_servers"][0]["server_uri"], "127.0.0.1:15999");
        assert_eq!(j["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(j["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(
            j["node"]["id"],
            "sidecar~127.0.0.1~client-1.shop~shop.svc.cluster.local"
        );
        assert_eq!(j["node"]["metadata"]["GENERATOR"], "grpc");
        assert_eq!(j["node"]["metadata"]["NAMESPACE"], "shop");
        assert_eq!(j["node"]["metadata"]["LABELS"]["app"], "client");
        // What the control plane makes of that node.
        let node: crate::xds::pb::envoy::config::core::v3::Node = from_json(&j["node"]).unwrap();
        let info = super::super::node::parse_node(Some(&node)).unwrap();
        assert_eq!(info.identity.kind, ProxyKind::Grpc);
        assert_eq!(info.identity.namespace, "shop");
        b.xds_address = "nowhere".into();
        assert!(matches!(b.to_json(), Err(BootstrapError::Address(_))));
    }

    #[test]
    fn an_agent_managed_sidecar_gets_sds_grpc_and_mutual_tls_by_sds() {
        let mut b = EnvoyBootstrap {
            node_id: "reviews-1".into(),
            kind: ProxyKind::Sidecar,
            namespace: "shop".into(),
            ip: "10.1.2.3".into(),
            xds_address: "istiod.istio-system.svc:15012".into(),
            istio_version: "1.2.3".into(),
            xds_tls: Some(XdsTlsFiles {
                root_cert: "/etc/root.pem".into(),
                cert_chain: None,
                private_key: None,
                agent_certificate: true,
                server_name: "istiod.istio-system.svc".into(),
            }),
            ..Default::default()
        };
        // The certificate from the agent needs the agent's socket.
        assert!(matches!(b.build(), Err(BootstrapError::NoAgentSocket)));
        b.agent_sds_socket = Some("/run/agent/sds/socket".into());
        b.metadata
            .insert("SERVICE_ACCOUNT".into(), "reviews".into());
        // Metadata made from the fields wins over the extra map.
        b.metadata.insert("NAMESPACE".into(), "other".into());
        let j = b.to_json().unwrap();
        assert_eq!(
            j["node"]["id"],
            "sidecar~10.1.2.3~reviews-1.shop~shop.svc.cluster.local"
        );
        let meta = &j["node"]["metadata"];
        assert_eq!(meta["SERVICE_ACCOUNT"], "reviews");
        assert_eq!(meta["NAMESPACE"], "shop");
        assert_eq!(meta["ISTIO_VERSION"], "1.2.3");
        let clusters = j["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        let sds = &clusters[1];
        assert_eq!(sds["name"], crate::translate::AGENT_SDS_CLUSTER);
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
                ["path"],
            "/run/agent/sds/socket"
        );
        assert!(
            sds["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]
                .is_object()
        );
        let tls = &clusters[0]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "istiod.istio-system.svc");
        let common = &tls["common_tls_context"];
        assert!(common.get("tls_certificates").is_none());
        let cert = &common["tls_certificate_sds_secret_configs"][0];
        assert_eq!(cert["name"], "default");
        let source = &cert["sds_config"]["api_config_source"];
        assert_eq!(source["api_type"], "GRPC");
        assert_eq!(
            source["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            "sds-grpc"
        );
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"],
            "/etc/root.pem"
        );
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "istiod.istio-system.svc"
        );
    }

    #[test]
    fn yaml_block_style() {
        let v = json!({"a": {"b": [1, {"c": "x: y", "@type": "t"}, []], "e": {}}, "s": "quo\"te", "t": true});
        let want = "a:\n  b:\n    - 1\n    - c: \"x: y\"\n      \"@type\": \"t\"\n    - []\n  e: {}\ns: \"quo\\\"te\"\nt: true\n";
        assert_eq!(yaml(&v), want);
    }

    #[test]
    fn whole_doubles_are_written_as_integers() {
        // Node metadata numbers are Struct doubles; Envoy would read `1.0` as a string.
        let v = json!({"n": 1.0, "f": 0.5, "i": 3, "neg": -2.0});
        assert_eq!(yaml(&v), "n: 1\nf: 0.5\ni: 3\nneg: -2\n");
    }
}
