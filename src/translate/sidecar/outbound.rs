//! A sidecar's outbound side (see the module above), as istiod's
//! `buildSidecarOutboundListeners` and `buildVirtualOutboundListener` build it:
//!
//! - `virtualOutbound` on 0.0.0.0:15001 (`proxyListenPort`), where iptables sends the application's
//!   connections: `use_original_dst` hands each one to the listener of its original
//!   destination; what no listener takes goes to `PassthroughCluster` (ALLOW_ANY) or
//!   `BlackHoleCluster` (REGISTRY_ONLY).
//! - a listener per service port (`bind_to_port: false`): `0.0.0.0_PORT` for HTTP,
//!   reading route table `PORT`; `VIP_PORT` for TCP (or `0.0.0.0_PORT`, or one per
//!   endpoint address for services without one), forwarding to `outbound|PORT||HOST` or
//!   as a mesh VirtualService's `tcp` route says; TLS ports by SNI (`tls` routes). Ports
//!   of unknown protocol get both, told apart by the HTTP inspector. What no filter
//!   chain takes goes the way of the outbound traffic policy.
//! - route tables (`sidecar::virtual_hosts`) and clusters `outbound|PORT|SUBSET|HOST` of
//!   every imported service (the gateway's cluster builder), `PassthroughCluster` and
//!   `BlackHoleCluster`.
use super::super::Translation;
use super::super::cluster::{self, Naming};
use super::super::http_route::{References, config_metadata};
use super::super::listener as lb;
use super::super::names;
use super::super::network;
use super::super::pb;
use super::super::scope::{BoundVirtualService, Scope};
use super::super::tls::SecretBook;
use super::access_log;
use super::egress::{self, EgressListener, Imports};
use super::virtual_hosts;
use crate::config::Diagnostic;
use crate::config::hosts;
use crate::config::mesh::{MeshConfig, OutboundMode};
use crate::registry::{Protocol, Resolution, Service, ServicePort};
use crate::xds::pb::envoy::config::accesslog::v3::AccessLog;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Istio's name of the virtual outbound listener.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Ports of the sidecar's own listeners (with MeshConfig `proxyListenPort`): an
/// outbound listener on 0.0.0.0 there would collide with them (istiod's
/// `conflictWithReservedListener`).
pub const RESERVED_PORTS: [u32; 4] = [15001, 15006, 15021, 15090];
/// The virtual listener's chain for connections addressed to 15001 itself.
pub const BLACKHOLE_CHAIN: &str = "virtualOutbound-blackhole";
/// The virtual listener's chain for everything else.
pub const CATCH_ALL_CHAIN: &str = "virtualOutbound-catchall-tcp";
/// The default chain of a port listener, for connections no other chain takes.
pub const PASSTHROUGH_CHAIN: &str = "PassthroughFilterChain";
/// What the HTTP inspector reports for plain-text HTTP (istiod's `plaintextHTTPALPNs`).
pub const PLAINTEXT_HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];
/// Transport protocol of connections that are not TLS.
pub const RAW_BUFFER: &str = "raw_buffer";
/// The gateway name of sidecars in VirtualService `gateways` and matches.
pub const MESH: &str = "mesh";
const WILDCARD: &str = "0.0.0.0";

/// Adds the outbound listeners, routes and clusters of the proxy to `out`.
pub(super) fn build(scope: &Scope, mesh: &MeshConfig, out: &mut Translation) {
    let sidecar = egress::selected_sidecar(
        scope.config,
        &scope.namespace,
        &scope.proxy.labels,
        &mesh.root_namespace,
    );
    let (specs, mode) = egress::egress_of(sidecar, mesh);
    let imports = Imports::new(scope, &specs, mode);
    let mut b = Outbound {
        scope,
        capture_port: mesh.proxy_listen_port,
        imports: &imports,
        access_log: access_log::file_access_log(mesh),
        entries: BTreeMap::new(),
        diagnostics: Vec::new(),
        references: References::new(),
    };
    b.port_listeners();
    let Outbound {
        entries,
        mut diagnostics,
        mut references,
        access_log,
        ..
    } = b;

    let catch_all = catch_all_cluster(imports.mode);
    // The mesh's tracing, on every outbound connection manager (the collector's
    // cluster is among the services the sidecar sees, or validation refused it).
    let tracing = crate::translate::tracing::build(
        scope,
        crate::config::types::telemetry::WorkloadMode::Client,
    )
    .ok()
    .flatten()
    .map(|t| t.tracing);
    let mut route_names: BTreeMap<String, (u32, Option<String>)> = BTreeMap::new();
    for entry in entries.values() {
        out.resources.listeners.push(entry_listener(
            entry,
            catch_all,
            access_log.as_ref(),
            tracing.as_ref(),
        ));
        for chain in &entry.chains {
            if let ChainBody::Http {
                route_name,
                sniffed_host,
            } = &chain.body
            {
                route_names.insert(route_name.clone(), (entry.port, sniffed_host.clone()));
            }
        }
    }
    out.resources.listeners.push(virtual_outbound_listener(
        mesh.proxy_listen_port,
        catch_all,
        access_log.as_ref(),
        access_log::listener_access_log(mesh),
    ));

    for (name, (port, sniffed_host)) in &route_names {
        out.resources
            .routes
            .push(virtual_hosts::route_configuration(
                scope,
                &imports,
                name,
                *port,
                sniffed_host.as_deref(),
                &mut diagnostics,
                &mut references,
            ));
    }

    // Clusters: every imported service on its imported ports, and every service a
    // mesh VirtualService sends to (all its ports), as istiod's sidecar scope collects.
    // (host, namespace) -> the service and its ports (None: all of them).
    type Wanted<'s> = BTreeMap<(String, String), (&'s Service, Option<BTreeSet<u32>>)>;
    let mut wanted: Wanted = imports
        .services()
        .into_iter()
        .map(|(k, (s, ports))| (k, (s, Some(ports))))
        .collect();
    references.extend(vs_destination_services(scope, &imports));
    for (host, namespace) in &references {
        let Some(service) = scope.registry.service_in(host, namespace) else {
            continue;
        };
        wanted
            .entry((host.clone(), namespace.clone()))
            .and_modify(|(_, ports)| *ports = None)
            .or_insert((service, None));
    }
    let mut secrets = SecretBook::new(&scope.namespace);
    for (service, ports) in wanted.values() {
        for built in cluster::service_clusters_for_ports(
            scope,
            service,
            ports.as_ref(),
            Naming::Outbound,
            &mut secrets,
            &mut diagnostics,
        ) {
            out.resources.clusters.push(built.cluster);
            if let Some(cla) = built.load_assignment {
                out.resources.endpoints.push(cla);
            }
        }
    }
    out.resources
        .clusters
        .push(cluster::passthrough_cluster(scope));
    out.resources
        .clusters
        .push(cluster::blackhole_cluster(scope));
    out.resources.secrets.extend(secrets.into_secrets());

    let mut seen = HashSet::new();
    diagnostics.retain(|d| seen.insert(d.to_string()));
    out.diagnostics.extend(diagnostics);
}

/// Where traffic for unknown destinations goes.
pub fn catch_all_cluster(mode: OutboundMode) -> &'static str {
    match mode {
        OutboundMode::AllowAny => cluster::PASSTHROUGH_CLUSTER,
        OutboundMode::RegistryOnly => cluster::BLACKHOLE_CLUSTER,
    }
}

/// How a port's traffic is told apart (istiod's `ModelProtocolToListenerProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerProtocol {
    Http,
    Tcp,
    /// Unknown protocol: HTTP when the HTTP inspector recognises it, else TCP.
    Auto,
}

fn listener_protocol(p: &Protocol) -> Option<ListenerProtocol> {
    match p {
        Protocol::Udp => None,
        p if p.is_http() => Some(ListenerProtocol::Http),
        p if p.is_tcp() => Some(ListenerProtocol::Tcp),
        _ => Some(ListenerProtocol::Auto),
    }
}

/// What a filter chain does.
#[derive(Debug, Clone)]
enum ChainBody {
    /// The HTTP connection manager reading route table `route_name`.
    Http {
        route_name: String,
        /// For a sniffed port on a service's own address: the service host (its route
        /// table holds that service only).
        sniffed_host: Option<String>,
    },
    /// Network filters (a `tcp_proxy`).
    Network(Vec<listener::Filter>),
}

/// A filter chain before it is built (istiod's `filterChainOpts`).
#[derive(Debug, Clone)]
struct Chain {
    sni_hosts: Vec<String>,
    cidrs: Vec<String>,
    application_protocols: Vec<String>,
    transport_protocol: String,
    metadata: Option<core::Metadata>,
    body: ChainBody,
}

impl Chain {
    fn network(cidrs: Vec<String>, filters: Vec<listener::Filter>) -> Chain {
        Chain {
            sni_hosts: Vec::new(),
            cidrs,
            application_protocols: Vec::new(),
            transport_protocol: String::new(),
            metadata: None,
            body: ChainBody::Network(filters),
        }
    }

    fn is_match_all(&self) -> bool {
        (self.sni_hosts.is_empty() || self.sni_hosts.iter().any(|h| h == "*"))
            && self.application_protocols.is_empty()
            && self.transport_protocol.is_empty()
            && self.cidrs.is_empty()
    }

    /// Whether two chains match the same connections (istiod's `conflictsWith`).
    fn conflicts_with(&self, other: &Chain) -> bool {
        let sni = |c: &Chain| -> BTreeSet<String> {
            c.sni_hosts.iter().filter(|h| *h != "*").cloned().collect()
        };
        let cidrs = |c: &Chain| -> BTreeSet<String> {
            c.cidrs
                .iter()
                .filter_map(|s| masked_cidr(s))
                .filter(|s| !s.starts_with("0.0.0.0/"))
                .collect()
        };
        self.transport_protocol == other.transport_protocol
            && self.application_protocols == other.application_protocols
            && sni(self) == sni(other)
            && cidrs(self) == cidrs(other)
    }

    fn filter_chain_match(&self) -> Option<listener::FilterChainMatch> {
        if self.is_match_all() {
            return None;
        }
        let mut m = listener::FilterChainMatch {
            application_protocols: self.application_protocols.clone(),
            transport_protocol: self.transport_protocol.clone(),
            ..Default::default()
        };
        if !self.sni_hosts.iter().any(|h| h == "*") {
            let mut sni = self.sni_hosts.clone();
            sni.sort();
            m.server_names = sni;
        }
        let mut cidrs = self.cidrs.clone();
        cidrs.sort();
        m.prefix_ranges = cidrs
            .iter()
            .filter_map(|c| cidr_range(c))
            .filter(|r| r.address_prefix != WILDCARD)
            .collect();
        Some(m)
    }
}

/// `ADDR/LEN` with the host bits cleared, for comparing CIDRs.
fn masked_cidr(s: &str) -> Option<String> {
    let r = cidr_range(s)?;
    let addr: std::net::IpAddr = r.address_prefix.parse().ok()?;
    let len = r.prefix_len.map_or(0, |l| l.value);
    let masked = match addr {
        std::net::IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            std::net::IpAddr::V4((bits & mask).into())
        }
        std::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            std::net::IpAddr::V6((bits & mask).into())
        }
    };
    Some(format!("{masked}/{len}"))
}

/// An address or CIDR as an Envoy CIDR range (a bare address is a /32 or /128).
fn cidr_range(s: &str) -> Option<core::CidrRange> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let len = len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
    Some(core::CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(pb::u32v(len)),
    })
}

/// One outbound listener being built (istiod's `outboundListenerEntry`).
#[derive(Debug)]
struct Entry {
    bind: String,
    port: u32,
    /// Unsupported (any name) once HTTP and TCP share the listener.
    protocol: Protocol,
    chains: Vec<Chain>,
    /// Made for a port an egress listener declares: the catch-all adds nothing to it.
    locked: bool,
}

struct Outbound<'o, 's, 'a> {
    scope: &'o Scope<'a>,
    /// MeshConfig `proxyListenPort`, where the virtual listener is.
    capture_port: u32,
    imports: &'o Imports<'s, 'a>,
    access_log: Option<AccessLog>,
    /// (bind, port) -> listener.
    entries: BTreeMap<(String, u32), Entry>,
    diagnostics: Vec<Diagnostic>,
    references: References,
}

impl<'o, 's, 'a> Outbound<'o, 's, 'a> {
    /// Every egress listener's service ports: those with a port first, then the
    /// catch-all, which adds nothing to a port an earlier one declared.
    fn port_listeners(&mut self) {
        let imports = self.imports;
        for egress in &imports.listeners {
            match &egress.port {
                Some(p) => {
                    let port = ServicePort {
                        number: p.number,
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        target_port: 0,
                    };
                    for imported in &egress.services {
                        self.add_service_port(egress, imported.service, &port);
                    }
                }
                None => {
                    for e in self.entries.values_mut() {
                        e.locked = true;
                    }
                    for imported in &egress.services {
                        for port in &imported.ports {
                            self.add_service_port(egress, imported.service, port);
                        }
                    }
                }
            }
        }
    }

    /// The listener(s) of one service port: on each of the service's addresses, or, for
    /// a TCP service without one that forwards to the original destination, on each
    /// endpoint's address (istiod's headless-service listeners).
    fn add_service_port(
        &mut self,
        egress: &EgressListener<'s, 'a>,
        service: &'a Service,
        port: &ServicePort,
    ) {
        let Some(protocol) = listener_protocol(&port.protocol) else {
            return;
        };
        if protocol == ListenerProtocol::Http {
            self.add_listener(egress, service, port, WILDCARD, Vec::new());
            return;
        }
        if service.addresses.is_empty() {
            let own_ip = self.scope.proxy.ip_addresses.first();
            let endpoint_ips: Vec<String> = if service.resolution == Resolution::None {
                service
                    .endpoints
                    .iter()
                    .filter(|e| e.service_port == port.number && !e.unix)
                    .filter(|e| e.address.parse::<std::net::IpAddr>().is_ok())
                    .map(|e| e.address.clone())
                    .collect::<BTreeSet<String>>()
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            };
            if endpoint_ips.is_empty() {
                self.add_listener(egress, service, port, WILDCARD, Vec::new());
            }
            for ip in endpoint_ips {
                if Some(&ip) != own_ip {
                    self.add_listener(egress, service, port, &ip, Vec::new());
                }
            }
            return;
        }
        for address in &service.addresses {
            if address.contains('/') {
                self.add_listener(egress, service, port, WILDCARD, vec![address.clone()]);
            } else {
                self.add_listener(egress, service, port, address, Vec::new());
            }
        }
    }

    /// istiod's `buildSidecarOutboundListener`: the chains of one service port on
    /// `bind`, merged into the listener already there as Istio resolves conflicts.
    fn add_listener(
        &mut self,
        egress: &EgressListener<'s, 'a>,
        service: &'a Service,
        port: &ServicePort,
        bind: &str,
        cidrs: Vec<String>,
    ) {
        let Some(protocol) = listener_protocol(&port.protocol) else {
            return;
        };
        if bind == WILDCARD
            && (RESERVED_PORTS.contains(&port.number) || port.number == self.capture_port)
        {
            self.diagnostics.push(self.scope.service_warning(
                service,
                "spec.ports",
                format!(
                    "port {} of `{}` is one of the sidecar's own ports; sidecars get no outbound listener for it",
                    port.number, service.hostname
                ),
            ));
            return;
        }
        let key = (bind.to_string(), port.number);
        let existing = self.entries.get(&key);
        if existing.is_some_and(|e| e.locked) {
            return;
        }
        let existing_protocol = existing.map(|e| listener_protocol(&e.protocol));
        let mut entry_protocol = port.protocol.clone();
        let chains = match protocol {
            ListenerProtocol::Http => {
                if let Some(p) = existing_protocol
                    && p != Some(ListenerProtocol::Tcp)
                {
                    // The port's route table already serves every HTTP service on it.
                    return;
                }
                let mut chain = self.http_chain(service, port, bind);
                if bind == WILDCARD {
                    chain.application_protocols =
                        PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect();
                    chain.transport_protocol = RAW_BUFFER.to_string();
                    entry_protocol = Protocol::Unsupported(String::new());
                }
                vec![chain]
            }
            ListenerProtocol::Tcp => self.tcp_chains(egress, service, port, bind, cidrs),
            ListenerProtocol::Auto => {
                if existing_protocol == Some(Some(ListenerProtocol::Auto)) {
                    let chains = self.tcp_chains(egress, service, port, bind, cidrs);
                    self.merge(&key, chains, &port.protocol);
                    return;
                }
                let mut chains = self.tcp_chains(egress, service, port, bind, cidrs);
                let mut http = self.http_chain(service, port, bind);
                http.application_protocols =
                    PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect();
                http.transport_protocol = RAW_BUFFER.to_string();
                chains.push(http);
                chains
            }
        };
        match (existing_protocol, protocol) {
            (None, _) | (Some(Some(ListenerProtocol::Http)), ListenerProtocol::Auto) => {
                self.entries.insert(
                    key,
                    Entry {
                        bind: bind.to_string(),
                        port: port.number,
                        protocol: entry_protocol,
                        chains,
                        locked: false,
                    },
                );
            }
            _ => self.merge(&key, chains, &port.protocol),
        }
    }

    /// Adds chains to an existing listener, each unless one there matches the same
    /// connections (istiod's `mergeTCPFilterChains`); HTTP and TCP together make it a
    /// sniffed listener. MongoDB and MySQL never share a port with another protocol
    /// (istiod's `isConflictWithWellKnownPort`).
    fn merge(&mut self, key: &(String, u32), incoming: Vec<Chain>, protocol: &Protocol) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let server_first = |p: &Protocol| matches!(p, Protocol::Mongo | Protocol::Mysql);
        if (server_first(protocol) || server_first(&entry.protocol)) && *protocol != entry.protocol
        {
            return;
        }
        let was = listener_protocol(&entry.protocol);
        let now = listener_protocol(protocol);
        for chain in incoming {
            if !entry.chains.iter().any(|c| c.conflicts_with(&chain)) {
                entry.chains.push(chain);
            }
        }
        if was != now {
            entry.protocol = Protocol::Unsupported(String::new());
        }
    }

    /// The HTTP chain of a port: the port's shared route table `PORT`, or, for a sniffed
    /// port on the service's own address, the service's own `HOST:PORT`.
    fn http_chain(&self, service: &Service, port: &ServicePort, bind: &str) -> Chain {
        let sniffed =
            listener_protocol(&port.protocol) == Some(ListenerProtocol::Auto) && bind != WILDCARD;
        let (route_name, sniffed_host) = if sniffed {
            (
                format!("{}:{}", service.hostname, port.number),
                Some(service.hostname.clone()),
            )
        } else {
            (port.number.to_string(), None)
        };
        Chain {
            sni_hosts: Vec::new(),
            cidrs: Vec::new(),
            application_protocols: Vec::new(),
            transport_protocol: String::new(),
            metadata: None,
            body: ChainBody::Http {
                route_name,
                sniffed_host,
            },
        }
    }

    /// The imported mesh VirtualServices for a service host (istiod's
    /// `getConfigsForHost`).
    fn configs_for_host(
        egress: &EgressListener<'s, 'a>,
        host: &str,
    ) -> Vec<&'s BoundVirtualService<'a>> {
        egress
            .virtual_services
            .iter()
            .copied()
            .filter(|vs| vs.hosts.iter().any(|h| hosts::matches(h, host)))
            .collect()
    }

    /// Whether an L4 match applies to this proxy on `port` (istiod's `matchTCP` and
    /// `matchTLS`): gateways include `mesh`, the source labels and namespace are the
    /// proxy's, the port is the listener's.
    fn l4_match(
        &self,
        gateways: &[String],
        source_labels: &BTreeMap<String, String>,
        source_namespace: &str,
        match_port: u32,
        port: u32,
    ) -> bool {
        (gateways.is_empty() || gateways.iter().any(|g| g == MESH))
            && source_labels
                .iter()
                .all(|(k, v)| self.scope.proxy.labels.get(k) == Some(v))
            && (match_port == 0 || match_port == port)
            && (source_namespace.is_empty() || source_namespace == self.scope.namespace)
    }

    /// The `tcp_proxy` of a route, with the access log.
    fn route_filters(
        &mut self,
        vs: &BoundVirtualService<'a>,
        field: &str,
        route: &[crate::config::types::virtual_service::RouteDestination],
        port: u32,
    ) -> Option<Vec<listener::Filter>> {
        let mut proxy = network::tcp_proxy_config(
            self.scope,
            vs.res,
            field,
            route,
            port,
            &mut self.diagnostics,
            &mut self.references,
        )?;
        proxy.access_log.extend(self.access_log.clone());
        Some(vec![network::tcp_proxy_filter(&proxy)])
    }

    /// The chain to the service's own cluster, for a port no route takes.
    fn service_filters(&self, service: &Service, port: &ServicePort) -> Vec<listener::Filter> {
        // A port an egress listener declares that the service does not have: its only
        // port, else the declared one (which likely goes nowhere), as istiod does.
        let number = if service.ports.len() == 1 {
            service.ports[0].number
        } else {
            port.number
        };
        let name = names::cluster_name("", &service.hostname, number);
        let mut proxy = network::tcp_proxy_to_service(self.scope, service, &name);
        proxy.access_log.extend(self.access_log.clone());
        vec![network::tcp_proxy_filter(&proxy)]
    }

    /// The TCP/TLS chains of a service port (istiod's
    /// `buildSidecarOutboundTCPListenerOpts`).
    fn tcp_chains(
        &mut self,
        egress: &EgressListener<'s, 'a>,
        service: &'a Service,
        port: &ServicePort,
        bind: &str,
        cidrs: Vec<String>,
    ) -> Vec<Chain> {
        let configs = Self::configs_for_host(egress, &service.hostname);
        if port.protocol.is_tls() {
            self.tls_chains(&configs, service, port, bind, cidrs)
        } else {
            self.plain_tcp_chains(&configs, service, port, cidrs)
        }
    }

    /// istiod's `buildSidecarOutboundTLSFilterChainOpts`: a chain per `tls` route match
    /// (by SNI), else one to the service (by its host name when the listener is shared).
    fn tls_chains(
        &mut self,
        configs: &[&'s BoundVirtualService<'a>],
        service: &'a Service,
        port: &ServicePort,
        bind: &str,
        cidrs: Vec<String>,
    ) -> Vec<Chain> {
        let mut out = Vec::new();
        let mut handled: HashSet<String> = HashSet::new();
        for vs in configs {
            for (i, t) in vs.res.spec.tls.iter().enumerate() {
                if t.route.is_empty() {
                    continue;
                }
                for m in &t.matches {
                    if !self.l4_match(
                        &m.gateways,
                        &m.source_labels,
                        &m.source_namespace,
                        m.port,
                        port.number,
                    ) {
                        continue;
                    }
                    let key = format!(
                        "{}|{}",
                        m.sni_hosts.join(","),
                        m.destination_subnets.join(",")
                    );
                    if !handled.insert(key) {
                        continue;
                    }
                    let chain_cidrs = if m.destination_subnets.is_empty() {
                        cidrs.clone()
                    } else {
                        m.destination_subnets.clone()
                    };
                    let Some(filters) =
                        self.route_filters(vs, &format!("spec.tls[{i}]"), &t.route, port.number)
                    else {
                        continue;
                    };
                    out.push(Chain {
                        sni_hosts: m.sni_hosts.clone(),
                        metadata: Some(config_metadata(
                            "virtual-service",
                            &vs.res.meta.namespace,
                            &vs.res.meta.name,
                        )),
                        ..Chain::network(chain_cidrs, filters)
                    });
                }
            }
        }
        if out.is_empty() {
            // On a shared listener (no address of the service's own) only SNI tells the
            // services apart.
            let sni_hosts = if !cidrs.is_empty() || bind == WILDCARD {
                vec![service.hostname.clone()]
            } else {
                Vec::new()
            };
            out.push(Chain {
                sni_hosts,
                ..Chain::network(cidrs, self.service_filters(service, port))
            });
        }
        out
    }

    /// istiod's `buildSidecarOutboundTCPFilterChainOpts`: the first `tcp` route that
    /// applies (those matching destination subnets each get a chain of their own), else
    /// the service's cluster.
    fn plain_tcp_chains(
        &mut self,
        configs: &[&'s BoundVirtualService<'a>],
        service: &'a Service,
        port: &ServicePort,
        cidrs: Vec<String>,
    ) -> Vec<Chain> {
        let mut out = Vec::new();
        let mut default_added = false;
        'routes: for vs in configs {
            let meta =
                config_metadata("virtual-service", &vs.res.meta.namespace, &vs.res.meta.name);
            for (i, t) in vs.res.spec.tcp.iter().enumerate() {
                if t.route.is_empty() {
                    continue;
                }
                let field = format!("spec.tcp[{i}]");
                if t.matches.is_empty() {
                    if let Some(filters) = self.route_filters(vs, &field, &t.route, port.number) {
                        out.push(Chain {
                            metadata: Some(meta.clone()),
                            ..Chain::network(cidrs.clone(), filters)
                        });
                        default_added = true;
                        break 'routes;
                    }
                    continue;
                }
                let mut subnets: Vec<String> = Vec::new();
                for m in &t.matches {
                    if !self.l4_match(
                        &m.gateways,
                        &m.source_labels,
                        &m.source_namespace,
                        m.port,
                        port.number,
                    ) {
                        continue;
                    }
                    if m.destination_subnets.is_empty() {
                        if let Some(filters) = self.route_filters(vs, &field, &t.route, port.number)
                        {
                            out.push(Chain {
                                metadata: Some(meta.clone()),
                                ..Chain::network(cidrs.clone(), filters)
                            });
                            default_added = true;
                            break 'routes;
                        }
                        continue 'routes;
                    }
                    subnets.extend(m.destination_subnets.iter().cloned());
                }
                if !subnets.is_empty()
                    && let Some(filters) = self.route_filters(vs, &field, &t.route, port.number)
                {
                    let mut sorted_subnets = subnets.clone();
                    sorted_subnets.sort();
                    let mut sorted_cidrs = cidrs.clone();
                    sorted_cidrs.sort();
                    out.push(Chain::network(subnets, filters));
                    if sorted_subnets == sorted_cidrs {
                        default_added = true;
                    }
                }
            }
        }
        if !default_added {
            out.push(Chain::network(cidrs, self.service_filters(service, port)));
        }
        out
    }
}

/// The `tcp_proxy` for unknown destinations, with the access log.
fn catch_all_filters(cluster: &str, access_log: Option<&AccessLog>) -> Vec<listener::Filter> {
    let proxy = tcp::TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        access_log: access_log.into_iter().cloned().collect(),
        ..Default::default()
    };
    vec![network::tcp_proxy_filter(&proxy)]
}

/// istiod's `buildListenerFromEntry`.
fn entry_listener(
    entry: &Entry,
    catch_all: &str,
    access_log: Option<&AccessLog>,
    tracing: Option<&crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing>,
) -> listener::Listener {
    let name = names::listener_name(&entry.bind, entry.port);
    let mut l = listener::Listener {
        name: name.clone(),
        address: Some(pb::socket_address(&entry.bind, entry.port)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        continue_on_listener_filters_timeout: true,
        bind_to_port: Some(pb::boolv(false)),
        listener_filters_timeout: Some(pb::seconds(0)),
        ..Default::default()
    };
    if entry.chains.iter().any(|c| !c.sni_hosts.is_empty()) {
        l.listener_filters.push(lb::tls_inspector());
    }
    if entry
        .chains
        .iter()
        .any(|c| !c.application_protocols.is_empty())
    {
        l.listener_filters.push(lb::http_inspector());
    }
    let mut default_chain = None;
    for chain in &entry.chains {
        let filters = match &chain.body {
            ChainBody::Network(filters) => filters.clone(),
            ChainBody::Http { route_name, .. } => {
                vec![lb::sidecar_outbound_http_connection_manager(
                    route_name,
                    &lb::http_stat_prefix(&name),
                    access_log.into_iter().cloned().collect(),
                    tracing.cloned(),
                )]
            }
        };
        let mut fc = lb::filter_chain(filters, None, None);
        fc.metadata = chain.metadata.clone();
        if chain.is_match_all() {
            default_chain = Some(fc);
        } else {
            fc.filter_chain_match = chain.filter_chain_match();
            l.filter_chains.push(fc);
        }
    }
    match default_chain {
        Some(fc) if l.filter_chains.is_empty() => l.filter_chains.push(fc),
        Some(fc) => l.default_filter_chain = Some(fc),
        None => {
            l.default_filter_chain = Some(listener::FilterChain {
                name: PASSTHROUGH_CHAIN.to_string(),
                filter_chain_match: Some(listener::FilterChainMatch::default()),
                filters: catch_all_filters(catch_all, access_log),
                ..Default::default()
            })
        }
    }
    l
}

/// istiod's `buildVirtualOutboundListener`, on `port` (MeshConfig `proxyListenPort`).
fn virtual_outbound_listener(
    port: u32,
    catch_all: &str,
    access_log: Option<&AccessLog>,
    listener_log: Option<AccessLog>,
) -> listener::Listener {
    listener::Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(pb::socket_address(WILDCARD, port)),
        use_original_dst: Some(pb::boolv(true)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![
            // Connections addressed to this port itself were not redirected: forwarding
            // them to their original destination would loop.
            listener::FilterChain {
                name: BLACKHOLE_CHAIN.to_string(),
                filter_chain_match: Some(listener::FilterChainMatch {
                    destination_port: Some(pb::u32v(port)),
                    ..Default::default()
                }),
                filters: catch_all_filters(cluster::BLACKHOLE_CLUSTER, None),
                ..Default::default()
            },
            listener::FilterChain {
                name: CATCH_ALL_CHAIN.to_string(),
                filters: catch_all_filters(catch_all, access_log),
                ..Default::default()
            },
        ],
        access_log: listener_log.into_iter().collect(),
        ..Default::default()
    }
}

/// The services imported mesh VirtualServices send to (istiod's
/// `collectImportedServices`): they need clusters even when not imported themselves.
fn vs_destination_services(scope: &Scope, imports: &Imports) -> References {
    let mut out = References::new();
    for egress in &imports.listeners {
        for vs in &egress.virtual_services {
            let spec = &vs.res.spec;
            let mut hosts: Vec<(&str, &str)> = Vec::new();
            for r in &vs.http {
                for d in r.route.route.iter().filter_map(|d| d.destination.as_ref()) {
                    hosts.push((&d.host, &r.namespace));
                }
            }
            for d in spec
                .tcp
                .iter()
                .flat_map(|t| &t.route)
                .chain(spec.tls.iter().flat_map(|t| &t.route))
                .filter_map(|d| d.destination.as_ref())
            {
                hosts.push((&d.host, &vs.res.meta.namespace));
            }
            for (host, ns) in hosts {
                let host = scope.resolve_host(host, ns);
                if let Some(s) = scope.registry.service(&host, &scope.namespace, Some(ns)) {
                    out.insert((s.hostname.clone(), s.namespace.clone()));
                }
            }
        }
    }
    out
}
