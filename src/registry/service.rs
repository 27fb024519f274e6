//! A service, its ports and endpoints.
use super::locality::Locality;
use super::protocol::Protocol;
use super::visibility::Visibility;
use std::collections::BTreeMap;

/// How a service's endpoints are found (ServiceEntry `resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Endpoints are the listed addresses (Envoy EDS).
    Static,
    /// Endpoint names are resolved by DNS, every address used (Envoy STRICT_DNS).
    Dns,
    /// Endpoint names are resolved by DNS, one address at a time (Envoy LOGICAL_DNS).
    DnsRoundRobin,
    /// Traffic goes to the address the client asked for (Envoy ORIGINAL_DST for
    /// sidecars; a gateway has no original destination and uses EDS, as Istio does).
    None,
    /// Resolved per request from the Host (Envoy's dynamic forward proxy).
    DynamicDns,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients address.
    pub number: u32,
    /// Port name (matched against WorkloadEntry `ports` keys).
    pub name: String,
    /// Protocol of the port.
    pub protocol: Protocol,
    /// Port on the endpoints when the endpoint does not name one (0: same as `number`).
    pub target_port: u32,
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, DNS name, or a Unix socket path (see `unix`).
    pub address: String,
    /// Whether `address` is a Unix domain socket path (`unix://` in Istio).
    pub unix: bool,
    /// Port on the endpoint (0 for Unix sockets).
    pub port: u32,
    /// The service port this endpoint serves.
    pub service_port: u32,
    /// Labels, including the topology labels Istio adds (region, zone, network).
    pub labels: BTreeMap<String, String>,
    /// Where the endpoint runs.
    pub locality: Locality,
    /// Load balancing weight (at least 1).
    pub weight: u32,
    /// Network of the endpoint (multi-network meshes).
    pub network: String,
    /// Service account (mesh identity) of the workload.
    pub service_account: String,
    /// The workload's name (WorkloadEntry name, or `SERVICEENTRY-INDEX` for inline ones).
    pub workload_name: String,
    /// Namespace of the workload.
    pub namespace: String,
}

/// A service: a host name with ports and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Fully qualified host name (or a wildcard such as `*.example.com`).
    pub hostname: String,
    /// Namespace of the resource that defined it.
    pub namespace: String,
    /// Name of the ServiceEntry that defined it.
    pub source_name: String,
    /// Outside the mesh (MESH_EXTERNAL, the ServiceEntry default).
    pub mesh_external: bool,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Virtual IPs or CIDRs.
    pub addresses: Vec<String>,
    /// Ports, in definition order.
    pub ports: Vec<ServicePort>,
    /// Endpoints of all ports.
    pub endpoints: Vec<Endpoint>,
    /// Namespaces that see the service.
    pub visibility: Visibility,
    /// Identities expected from the endpoints (ServiceEntry `subjectAltNames`).
    pub subject_alt_names: Vec<String>,
    /// Labels of the ServiceEntry.
    pub labels: BTreeMap<String, String>,
}

impl Service {
    /// Whether a proxy in `namespace` sees this service.
    pub fn visible_from(&self, namespace: &str) -> bool {
        self.visibility.includes(namespace)
    }

    /// The port numbered `number`.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The endpoints of a service port whose labels include all of `subset_labels`.
    pub fn endpoints_for<'a>(
        &'a self,
        port: u32,
        subset_labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| {
            e.service_port == port
                && subset_labels
                    .iter()
                    .all(|(k, v)| e.labels.get(k).is_some_and(|have| have == v))
        })
    }
}
