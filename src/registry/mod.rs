//! The registry layer: services, their ports and endpoints, as the translator sees them.
//!
//! In standalone mode every service comes from a `ServiceEntry` (with its inline
//! endpoints, or the `WorkloadEntry`s its `workloadSelector` picks in its namespace).
//! The registry is pure: it never resolves DNS names — a DNS service keeps its host names
//! as endpoint addresses, and the data plane (Envoy, or meshgate's own) resolves them.
//!
//! Lookups are made "as seen from a namespace", honouring `exportTo` the way Istio does.
mod locality;
mod protocol;
mod service;
mod service_entry;
mod visibility;

pub use locality::Locality;
pub use protocol::Protocol;
pub use service::{Endpoint, Resolution, Service, ServicePort};
pub use visibility::Visibility;

use crate::config::hosts;
use crate::config::{Config, Diagnostic};
use std::collections::BTreeMap;

/// Every service known, indexed by host name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    services: Vec<Service>,
    /// Host name -> indexes into `services`, in load order.
    by_host: BTreeMap<String, Vec<usize>>,
    /// Every endpoint address (a workload's IP, or a DNS name).
    endpoint_addresses: std::collections::HashSet<String>,
}

impl Registry {
    /// Builds the registry from the ServiceEntries and WorkloadEntries of `config`.
    /// Problems that make an endpoint unusable are returned as diagnostics; the rest of
    /// the service still registers.
    pub fn from_config(config: &Config) -> (Registry, Vec<Diagnostic>) {
        let mut diagnostics = Vec::new();
        let mut services = Vec::new();
        for se in &config.service_entries {
            services.extend(service_entry::convert(
                se,
                &config.workload_entries,
                &mut diagnostics,
            ));
        }
        (Registry::from_services(services), diagnostics)
    }

    /// A registry holding exactly these services (for tests and other registries).
    pub fn from_services(services: Vec<Service>) -> Registry {
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, s) in services.iter().enumerate() {
            by_host.entry(s.hostname.clone()).or_default().push(i);
        }
        let endpoint_addresses = services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.address.clone()))
            .collect();
        Registry {
            services,
            by_host,
            endpoint_addresses,
        }
    }

    /// Whether some service has an endpoint at `address`: a workload at that address
    /// has inbound service ports.
    pub fn is_endpoint_address(&self, address: &str) -> bool {
        self.endpoint_addresses.contains(address)
    }

    /// All services, in load order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The service for `host` defined in `namespace`, whatever its visibility.
    pub fn service_in(&self, host: &str, namespace: &str) -> Option<&Service> {
        self.by_host
            .get(host)?
            .iter()
            .map(|&i| &self.services[i])
            .find(|s| s.namespace == namespace)
    }

    /// The services visible from `namespace`, in load order.
    pub fn visible_from<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> {
        self.services
            .iter()
            .filter(move |s| s.visible_from(namespace))
    }

    /// The service named exactly `host`, as seen from `viewer` (the proxy's namespace).
    ///
    /// When several namespaces define the host, the one in `preferred` wins if it is
    /// visible (Istio prefers the VirtualService's own namespace), then the viewer's own,
    /// then the first loaded.
    pub fn service(&self, host: &str, viewer: &str, preferred: Option<&str>) -> Option<&Service> {
        let candidates: Vec<&Service> = self
            .by_host
            .get(host)?
            .iter()
            .map(|&i| &self.services[i])
            .filter(|s| s.visible_from(viewer))
            .collect();
        let pick = |ns: &str| candidates.iter().find(|s| s.namespace == ns).copied();
        preferred
            .and_then(pick)
            .or_else(|| pick(viewer))
            .or_else(|| candidates.first().copied())
    }

    /// The service for `host`, exactly or else through the most specific wildcard
    /// ServiceEntry host that covers it (`*.example.com` covers `api.example.com`).
    pub fn service_matching(&self, host: &str, viewer: &str) -> Option<&Service> {
        if let Some(s) = self.service(host, viewer, None) {
            return Some(s);
        }
        self.services
            .iter()
            .filter(|s| {
                hosts::is_wildcard(&s.hostname)
                    && s.visible_from(viewer)
                    && hosts::is_subset_of(host, &s.hostname)
            })
            .max_by_key(|s| s.hostname.len())
    }
}

#[cfg(test)]
mod tests;
