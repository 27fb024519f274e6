//! ServiceEntry (+ WorkloadEntry) -> services, the way Istio's ServiceEntry registry does.
use super::locality::Locality;
use super::protocol::Protocol;
use super::service::{Endpoint, Resolution, Service, ServicePort};
use super::visibility::Visibility;
use crate::config::types::service_entry::{Location, Resolution as SeResolution};
use crate::config::{Diagnostic, Resource, ServiceEntry, WorkloadEntry};
use std::collections::BTreeMap;
use std::net::IpAddr;

const UNIX_PREFIX: &str = "unix://";

/// One service per host of the ServiceEntry, each with the entry's ports and endpoints.
pub(super) fn convert(
    se: &Resource<ServiceEntry>,
    workload_entries: &[Resource<WorkloadEntry>],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Service> {
    let spec = &se.spec;
    let resolution = match spec.resolution.unwrap_or(SeResolution::None) {
        SeResolution::None => Resolution::None,
        SeResolution::Static => Resolution::Static,
        SeResolution::Dns => Resolution::Dns,
        SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        SeResolution::DynamicDns => Resolution::DynamicDns,
    };
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            number: p.number,
            name: p.name.clone(),
            protocol: Protocol::parse(&p.protocol),
            target_port: p.target_port,
        })
        .collect();
    let is_dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);

    // The workloads behind every host: inline endpoints or selected WorkloadEntries.
    let mut workloads: Vec<Workload> = Vec::new();
    if let Some(selector) = &spec.workload_selector {
        for we in workload_entries {
            if we.meta.namespace == se.meta.namespace
                && selector
                    .labels
                    .iter()
                    .all(|(k, v)| we.spec.labels.get(k) == Some(v))
            {
                workloads.push(Workload {
                    entry: &we.spec,
                    name: we.meta.name.clone(),
                    field: None,
                });
            }
        }
    } else {
        for (i, ep) in spec.endpoints.iter().enumerate() {
            workloads.push(Workload {
                entry: ep,
                name: format!("{}-{i}", se.meta.name),
                field: Some(format!("spec.endpoints[{i}].address")),
            });
        }
    }

    let mut services = Vec::with_capacity(spec.hosts.len());
    for host in &spec.hosts {
        let mut endpoints = Vec::new();
        if workloads.is_empty() && spec.workload_selector.is_none() && is_dns {
            // A DNS entry without endpoints resolves its own host name.
            if host.starts_with('*') {
                diagnostics.push(se.warning(
                    "spec.hosts",
                    format!(
                        "host `{host}` is a wildcard and resolution is {}; it has no endpoints (list endpoints, or use resolution NONE or DYNAMIC_DNS)",
                        spec.resolution.map(|r| r.as_str()).unwrap_or("NONE")
                    ),
                ));
            } else {
                for p in &ports {
                    endpoints.push(Endpoint {
                        address: host.clone(),
                        unix: false,
                        port: if p.target_port > 0 {
                            p.target_port
                        } else {
                            p.number
                        },
                        service_port: p.number,
                        labels: BTreeMap::new(),
                        locality: Locality::default(),
                        weight: 1,
                        network: String::new(),
                        service_account: String::new(),
                        workload_name: se.meta.name.clone(),
                        namespace: se.meta.namespace.clone(),
                    });
                }
            }
        }
        for w in &workloads {
            let address = w.entry.address.as_str();
            let (address, unix) = match address.strip_prefix(UNIX_PREFIX) {
                Some(path) => (path, true),
                None => (address, false),
            };
            if !unix && resolution == Resolution::Static && address.parse::<IpAddr>().is_err() {
                // Istio drops such endpoints from EDS; say so rather than silently.
                if host == &spec.hosts[0] {
                    diagnostics.push(se.warning(
                        w.field.as_deref().unwrap_or("spec.workloadSelector"),
                        format!(
                            "endpoint address `{address}` is not an IP address; resolution STATIC needs IPs (use resolution DNS for host names), so the endpoint is left out"
                        ),
                    ));
                }
                continue;
            }
            let locality = Locality::of_workload(&w.entry.locality, &w.entry.labels);
            let labels = w.entry.endpoint_labels();
            for p in &ports {
                let port = if unix {
                    0
                } else if let Some(&port) = w.entry.ports.get(&p.name).filter(|&&n| n > 0) {
                    port
                } else if p.target_port > 0 {
                    p.target_port
                } else {
                    p.number
                };
                endpoints.push(Endpoint {
                    address: address.to_string(),
                    unix,
                    port,
                    service_port: p.number,
                    labels: labels.clone(),
                    locality: locality.clone(),
                    weight: w.entry.weight.max(1),
                    network: w.entry.network.clone(),
                    service_account: w.entry.service_account.clone(),
                    workload_name: w.name.clone(),
                    namespace: se.meta.namespace.clone(),
                });
            }
        }
        services.push(Service {
            hostname: host.clone(),
            namespace: se.meta.namespace.clone(),
            source_name: se.meta.name.clone(),
            mesh_external: spec.location.unwrap_or(Location::MeshExternal)
                == Location::MeshExternal,
            resolution,
            addresses: spec.addresses.clone(),
            ports: ports.clone(),
            endpoints,
            visibility: Visibility::from_export_to(&spec.export_to, &se.meta.namespace),
            subject_alt_names: spec.subject_alt_names.clone(),
            labels: se.meta.labels.clone(),
        });
    }
    services
}

struct Workload<'a> {
    entry: &'a WorkloadEntry,
    name: String,
    /// Field path of an inline endpoint's address, for diagnostics.
    field: Option<String>,
}
