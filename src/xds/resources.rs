//! The set of Envoy resources computed for one proxy.
use crate::xds::pb::envoy::config::cluster::v3::Cluster;
use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::xds::pb::envoy::config::listener::v3::Listener;
use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::xds::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The xDS resource types meshgate produces and consumes, in ADS push order
/// (CDS, EDS, LDS, RDS, SDS), which is also the order Envoy warms them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TypeUrl {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl TypeUrl {
    /// All types in ADS push order.
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    /// The full `type.googleapis.com/...` URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// Parses a type URL; `None` for types meshgate does not serve.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// The short name operators know from Envoy's stats (`cds`, `eds`, ...).
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
            TypeUrl::Secret => "sds",
        }
    }
}

impl std::fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every resource computed for one proxy: the output of translation and the input of the
/// data plane's compiler. Each list is sorted by resource name so that equal
/// configurations produce byte-identical resources (stable versions, minimal pushes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub secrets: Vec<Secret>,
}

/// One resource, named and packed, as it travels in a DiscoveryResponse.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub resource: Any,
}

/// Packs a resource with a deterministic encoding (maps sorted), so that equal resources
/// have equal bytes and equal content hashes.
fn pack<M: Message + Name>(name: &str, m: &M) -> NamedResource {
    NamedResource {
        name: name.to_string(),
        resource: Any {
            type_url: M::type_url(),
            value: crate::xds::canonical::canonicalize_named(&M::full_name(), &m.encode_to_vec()),
        },
    }
}

impl ResourceSet {
    /// Sorts every list by name (the translator calls this before returning).
    pub fn sort(&mut self) {
        self.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        self.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The resources of one type, packed as `Any` with their names.
    pub fn packed(&self, ty: TypeUrl) -> Vec<NamedResource> {
        match ty {
            TypeUrl::Cluster => self.clusters.iter().map(|c| pack(&c.name, c)).collect(),
            TypeUrl::Endpoint => self
                .endpoints
                .iter()
                .map(|c| pack(&c.cluster_name, c))
                .collect(),
            TypeUrl::Listener => self.listeners.iter().map(|l| pack(&l.name, l)).collect(),
            TypeUrl::Route => self.routes.iter().map(|r| pack(&r.name, r)).collect(),
            TypeUrl::Secret => self.secrets.iter().map(|s| pack(&s.name, s)).collect(),
        }
    }

    /// Names of the resources of one type.
    pub fn names(&self, ty: TypeUrl) -> Vec<&str> {
        match ty {
            TypeUrl::Cluster => self.clusters.iter().map(|c| c.name.as_str()).collect(),
            TypeUrl::Endpoint => self
                .endpoints
                .iter()
                .map(|c| c.cluster_name.as_str())
                .collect(),
            TypeUrl::Listener => self.listeners.iter().map(|l| l.name.as_str()).collect(),
            TypeUrl::Route => self.routes.iter().map(|r| r.name.as_str()).collect(),
            TypeUrl::Secret => self.secrets.iter().map(|s| s.name.as_str()).collect(),
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn endpoint(&self, cluster_name: &str) -> Option<&ClusterLoadAssignment> {
        self.endpoints
            .iter()
            .find(|c| c.cluster_name == cluster_name)
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_match_prost_names() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(TypeUrl::Listener.as_str(), Listener::type_url());
        assert_eq!(TypeUrl::Route.as_str(), RouteConfiguration::type_url());
        assert_eq!(TypeUrl::Cluster.as_str(), Cluster::type_url());
        assert_eq!(
            TypeUrl::Endpoint.as_str(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(TypeUrl::Secret.as_str(), Secret::type_url());
        assert_eq!(TypeUrl::parse("type.googleapis.com/nope"), None);
    }
}
