//! Hand-built resource sets of the shape the translator produces for a gateway (Istio's
//! names: listener `0.0.0.0_PORT`, route configuration `http.PORT`, clusters
//! `outbound|80||HOST`, EDS over ADS). The control plane's tests, its benchmark and the
//! examples in the docs serve these when no Istio configuration is involved.
use crate::xds::ResourceSet;
use crate::xds::json::from_json;
use crate::xds::pb::envoy::config::cluster::v3::Cluster;
use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::xds::pb::envoy::config::listener::v3::Listener;
use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use serde_json::json;
use std::net::SocketAddr;

/// One upstream service of a sample gateway.
#[derive(Debug, Clone)]
pub struct SampleService {
    /// Short name; the cluster is `outbound|80||NAME.default.svc.cluster.local`.
    pub name: String,
    /// Host names routed to it (`*` for the catch-all).
    pub domains: Vec<String>,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
}

impl SampleService {
    /// A service reached by `NAME.example.com` with the given endpoints.
    pub fn new(name: &str, endpoints: Vec<SocketAddr>) -> SampleService {
        SampleService {
            name: name.to_string(),
            domains: vec![format!("{name}.example.com")],
            endpoints,
        }
    }

    /// The service's cluster name.
    pub fn cluster_name(&self) -> String {
        cluster_name(&self.name)
    }
}

/// Istio's outbound cluster name for sample service `name`.
pub fn cluster_name(name: &str) -> String {
    format!("outbound|80||{name}.default.svc.cluster.local")
}

/// A gateway listening on `address:port` with one virtual host per service.
#[derive(Debug, Clone)]
pub struct SampleGateway {
    pub address: String,
    pub port: u16,
    pub services: Vec<SampleService>,
    /// When set, the listener terminates TLS with this SDS secret (delivered over ADS).
    pub tls_secret: Option<String>,
}

impl SampleGateway {
    /// A plain-HTTP gateway on 127.0.0.1:`port`.
    pub fn new(port: u16, services: Vec<SampleService>) -> SampleGateway {
        SampleGateway {
            address: "127.0.0.1".into(),
            port,
            services,
            tls_secret: None,
        }
    }

    /// The resource set (without secrets: add them with [`tls_secret`]).
    pub fn resources(&self) -> ResourceSet {
        let mut set = ResourceSet {
            listeners: vec![listener(
                &self.address,
                self.port,
                self.tls_secret.as_deref(),
            )],
            routes: vec![route_configuration(self.port, &self.services)],
            ..Default::default()
        };
        for s in &self.services {
            set.clusters.push(eds_cluster(&s.cluster_name()));
            set.endpoints
                .push(load_assignment(&s.cluster_name(), &s.endpoints));
        }
        set.sort();
        set
    }
}

fn parse<M: prost::Message + prost::Name + Default>(v: serde_json::Value) -> M {
    // The JSON below is fixed and known to match Envoy's schema; the unit tests check it.
    from_json(&v).unwrap_or_else(|e| panic!("sample {} does not parse: {e}", M::full_name()))
}

/// Listener `0.0.0.0_PORT` bound to `address:port`, HTTP connection manager with RDS
/// `http.PORT` over ADS.
pub fn listener(address: &str, port: u16, tls_secret: Option<&str>) -> Listener {
    let mut chain = json!({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("outbound_0.0.0.0_{port}"),
                "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": format!("http.{port}")},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
            }
        }]
    });
    if let Some(secret) = tls_secret {
        chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": secret, "sds_config": {"ads": {}, "resource_api_version": "V3"}}]
                }
            }
        });
    }
    parse(json!({
        "name": format!("0.0.0.0_{port}"),
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [chain],
    }))
}

/// Route configuration `http.PORT`: a virtual host per service, `/` to its cluster.
pub fn route_configuration(port: u16, services: &[SampleService]) -> RouteConfiguration {
    let vhosts: Vec<serde_json::Value> = services
        .iter()
        .map(|s| {
            json!({
                "name": format!("{}:{port}", s.domains.first().map(String::as_str).unwrap_or(&s.name)),
                "domains": s.domains,
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": s.cluster_name()}}]
            })
        })
        .collect();
    parse(json!({
        "name": format!("http.{port}"),
        "virtual_hosts": vhosts,
        "ignore_port_in_host_matching": true,
    }))
}

/// An EDS cluster (endpoints over ADS).
pub fn eds_cluster(name: &str) -> Cluster {
    parse(json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name},
    }))
}

/// The endpoints of a cluster.
pub fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    let lb: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    parse(json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": lb}]}))
}

/// A TLS certificate secret from PEM text.
pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    parse(json!({
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": cert_pem},
            "private_key": {"inline_string": key_pem},
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_gateway_is_consistent() {
        let g = SampleGateway::new(
            8080,
            vec![SampleService::new(
                "a",
                vec!["127.0.0.1:9000".parse().unwrap()],
            )],
        );
        let set = g.resources();
        assert_eq!(set.listeners[0].name, "0.0.0.0_8080");
        assert_eq!(set.routes[0].name, "http.8080");
        assert_eq!(
            set.clusters[0].name,
            "outbound|80||a.default.svc.cluster.local"
        );
        assert!(crate::controlplane::snapshot::check_consistency(&set).is_empty());
        let _ = tls_secret("s", "cert", "key");
    }
}
