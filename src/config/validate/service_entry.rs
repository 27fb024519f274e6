//! Checks of one `ServiceEntry` (hosts, addresses, ports, resolution vs endpoints) and of
//! one `WorkloadEntry`.
use super::common::{
    Sink, check_export_to, check_fqdn, check_labels_map, check_port, check_wildcard_host,
    is_dns1123_label, is_ip, is_partial_wildcard,
};
use crate::config::diag::Diagnostic;
use crate::config::types::common::{nearest, quoted_list};
use crate::config::types::service_entry::Resolution;
use crate::config::types::{Kind, Protocol, Resource, ServiceEntry, WorkloadEntry};
use std::collections::{HashMap, HashSet};

/// unix:// endpoints parse (Istio allows them) but meshgate's upstreams are TCP only.
const UNIX_ENDPOINT: &str =
    "unix domain socket endpoints are not served by meshgate's data plane yet; use an IP address";

/// Validates one ServiceEntry.
pub fn validate(se: &Resource<ServiceEntry>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(se, out);
    let spec = &se.spec;
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    if spec.hosts.is_empty() {
        s.error("spec.hosts", "a ServiceEntry needs at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            s.error(&field, "host `*` is not allowed in a ServiceEntry");
        } else if let Err(message) = check_wildcard_host(host) {
            s.error(&field, message);
        } else if is_partial_wildcard(host) && resolution != Resolution::DynamicDns {
            s.warning(
                &field,
                format!("partial wildcard `{host}` is not supported; use `*.` and a whole domain"),
            );
        }
    }
    let mut cidr = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr |= address.contains('/');
        if !is_ip_or_cidr(address) {
            s.error(
                &format!("spec.addresses[{i}]"),
                format!("`{address}` is not an IP address or CIDR block"),
            );
        }
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        s.error(
            "spec.addresses",
            "CIDR addresses are only allowed with resolution NONE or STATIC",
        );
    }
    let mut port_names: HashMap<&str, usize> = HashMap::new();
    let mut port_numbers: HashMap<u32, usize> = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        s.check(&format!("{pp}.number"), check_port(port.number));
        if let Some(first) = port_numbers.insert(port.number, i) {
            s.error(
                &format!("{pp}.number"),
                format!(
                    "port {} is already defined by spec.ports[{first}]",
                    port.number
                ),
            );
        }
        if !is_dns1123_label(&port.name) {
            s.error(
                &format!("{pp}.name"),
                format!(
                    "invalid port name `{}`: it must be a DNS-1123 label",
                    port.name
                ),
            );
        } else if let Some(first) = port_names.insert(&port.name, i) {
            s.error(
                &format!("{pp}.name"),
                format!(
                    "port name `{}` is already used by spec.ports[{first}]",
                    port.name
                ),
            );
        }
        if !port.protocol.is_empty() && Protocol::parse(&port.protocol).is_none() {
            let hint = match nearest(&port.protocol, Protocol::NAMES) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("expected one of {}", quoted_list(Protocol::NAMES)),
            };
            s.error(
                &format!("{pp}.protocol"),
                format!("unknown protocol `{}`; {hint}", port.protocol),
            );
        }
        if port.target_port != 0 {
            s.check(&format!("{pp}.targetPort"), check_port(port.target_port));
        }
    }
    let port_name_set: HashSet<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        s.error(
            "spec.workloadSelector",
            "only one of workloadSelector and endpoints can be set",
        );
    }
    if let Some(sel) = &spec.workload_selector {
        if sel.labels.is_empty() {
            s.warning(
                "spec.workloadSelector",
                "an empty workloadSelector selects every WorkloadEntry in the namespace",
            );
        }
        for (key, message) in check_labels_map(&sel.labels) {
            s.error(&format!("spec.workloadSelector.labels.{key}"), message);
        }
    }
    match resolution {
        Resolution::None => {
            // A workloadSelector is fine: a gateway, which has no original destination,
            // sends NONE traffic to the selected workloads (istiod's EDS for routers).
            if !spec.endpoints.is_empty() {
                s.error("spec.endpoints", "resolution NONE takes no endpoints (traffic goes to the address the client asked for)");
            }
        }
        Resolution::Static => {
            if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
                s.error(
                    "spec.resolution",
                    "resolution STATIC needs endpoints with IP addresses or a workloadSelector; this service has no endpoints",
                );
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                let ep_path = format!("spec.endpoints[{i}]");
                if ep.address.is_empty() {
                    s.error(&ep_path, "an endpoint needs an address");
                } else if ep.address.starts_with("unix://") {
                    s.error(&format!("{ep_path}.address"), UNIX_ENDPOINT);
                    if !ep.ports.is_empty() {
                        s.error(
                            &format!("{ep_path}.ports"),
                            "a unix:// endpoint takes no ports",
                        );
                    }
                    if spec.ports.len() != 1 {
                        s.error(
                            &format!("{ep_path}.address"),
                            "unix:// endpoints need exactly one service port",
                        );
                    }
                } else if !is_ip(&ep.address) {
                    s.error(
                        &format!("{ep_path}.address"),
                        format!("`{}` is not an IP address; resolution STATIC needs IP endpoints (use DNS for host names)", ep.address),
                    );
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints.is_empty() {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if host.starts_with('*') {
                        s.error(
                            &format!("spec.hosts[{i}]"),
                            format!("resolution {resolution} without endpoints resolves the hosts themselves, and wildcard `{host}` cannot be resolved; list endpoints or use DYNAMIC_DNS"),
                        );
                    } else if let Err(message) = check_fqdn(host) {
                        s.error(
                            &format!("spec.hosts[{i}]"),
                            format!("resolution {resolution} without endpoints resolves the hosts themselves, so they must be DNS names: {message}"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                s.error(
                    "spec.endpoints",
                    "resolution DNS_ROUND_ROBIN takes at most one endpoint",
                );
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                if !is_ip(&ep.address) && check_fqdn(&ep.address).is_err() {
                    s.error(
                        &format!("spec.endpoints[{i}].address"),
                        format!("`{}` is not a DNS name or an IP address", ep.address),
                    );
                }
            }
        }
        Resolution::DynamicDns => {
            for (i, host) in spec.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    s.error(
                        &format!("spec.hosts[{i}]"),
                        "resolution DYNAMIC_DNS needs wildcard hosts",
                    );
                }
            }
            if !spec.addresses.is_empty() {
                s.error(
                    "spec.addresses",
                    "resolution DYNAMIC_DNS takes no addresses",
                );
            }
            if !spec.endpoints.is_empty() {
                s.error(
                    "spec.endpoints",
                    "resolution DYNAMIC_DNS takes no endpoints",
                );
            }
            for (i, port) in spec.ports.iter().enumerate() {
                let ok = Protocol::parse(&port.protocol).is_some_and(|p| {
                    matches!(
                        p,
                        Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                    )
                });
                if !ok {
                    s.error(
                        &format!("spec.ports[{i}].protocol"),
                        "resolution DYNAMIC_DNS supports only HTTP, TLS, GRPC and HTTP2 ports",
                    );
                }
            }
        }
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let ep_path = format!("spec.endpoints[{i}]");
        for (name, number) in &ep.ports {
            if !port_name_set.contains(name.as_str()) {
                s.error(
                    &format!("{ep_path}.ports.{name}"),
                    format!("endpoint port `{name}` is not a port name of this ServiceEntry"),
                );
            }
            s.check(&format!("{ep_path}.ports.{name}"), check_port(*number));
        }
        for (key, message) in check_labels_map(&ep.labels) {
            s.error(&format!("{ep_path}.labels.{key}"), message);
        }
        check_locality(&mut s, &format!("{ep_path}.locality"), &ep.locality);
    }
    if resolution != Resolution::None && spec.hosts.len() > 1 {
        for (i, port) in spec.ports.iter().enumerate() {
            let p = Protocol::parse(&port.protocol);
            if !p.is_some_and(|p| p.is_http() || p.is_tls()) {
                s.error(
                    &format!("spec.ports[{i}].protocol"),
                    "several hosts on a non-HTTP, non-TLS port cannot be told apart; use one host per ServiceEntry or resolution NONE",
                );
                break;
            }
        }
    }
    if spec.export_to.iter().any(|e| e == "~") {
        // ServiceEntries alone may be exported to no namespace (`~`), as Istio allows.
        if spec.export_to.len() > 1 {
            s.error(
                "spec.exportTo",
                "`~` exports to no namespace and cannot be combined with others",
            );
        }
    } else {
        for (i, message) in check_export_to(&spec.export_to) {
            s.error(&format!("spec.exportTo[{i}]"), message);
        }
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => is_ip(s),
    }
}

fn check_locality<T: Kind>(s: &mut Sink<'_, T>, field: &str, locality: &str) {
    if !locality.is_empty()
        && (locality.split('/').count() > 3 || locality.split('/').any(str::is_empty))
    {
        s.error(
            field,
            format!("locality `{locality}` must be region, region/zone or region/zone/subzone"),
        );
    }
}

/// Validates one WorkloadEntry.
pub fn validate_workload_entry(we: &Resource<WorkloadEntry>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(we, out);
    let spec = &we.spec;
    if spec.address.is_empty() {
        if spec.network.is_empty() {
            s.error("spec.address", "address is required");
        } else {
            s.warning(
                "spec",
                format!("address is unset with network `{}`", spec.network),
            );
        }
    } else if spec.address.starts_with("unix://") {
        s.error("spec.address", UNIX_ENDPOINT);
        if !spec.ports.is_empty() {
            s.error("spec.ports", "a unix:// endpoint takes no ports");
        }
    } else if !is_ip(&spec.address) && check_fqdn(&spec.address).is_err() {
        s.error(
            "spec.address",
            format!("`{}` is not an IP address or a DNS name", spec.address),
        );
    }
    for (name, number) in &spec.ports {
        let field = format!("spec.ports.{name}");
        if !is_dns1123_label(name) {
            s.error(&field, format!("invalid port name `{name}`"));
        }
        s.check(&field, check_port(*number));
    }
    for (key, message) in check_labels_map(&spec.labels) {
        s.error(&format!("spec.labels.{key}"), message);
    }
    check_locality(&mut s, "spec.locality", &spec.locality);
}
