//! Merging the servers of every Gateway that selects a proxy into ports, the way istiod's
//! `mergeGateways` does: one listener per port (and bind address); plain-text HTTP
//! servers on a port share one route table (`http.PORT`); TLS servers each get their own
//! filter chain; conflicting servers are dropped with a diagnostic.
use super::names;
use super::scope::Scope;
use crate::config::types::gateway::{Server as ServerSpec, ServerTlsMode};
use crate::config::{Diagnostic, Gateway, Resource};
use crate::registry::Protocol;
use std::collections::BTreeMap;

/// One Gateway server, with its hosts and names worked out.
pub struct Server<'a> {
    pub gateway: &'a Resource<Gateway>,
    /// `namespace/name` of the Gateway.
    pub gateway_name: String,
    pub spec: &'a ServerSpec,
    /// Index in `spec.servers`, for diagnostics.
    pub index: usize,
    pub port: u32,
    pub port_name: String,
    pub protocol: Protocol,
    pub bind: String,
    /// Hosts, `namespace/host` where the Gateway restricts a host to one namespace.
    pub hosts: Vec<String>,
    /// The RDS name (`http.8080`, `https.443.PORTNAME.GATEWAY.NS`), empty for non-HTTP.
    pub route_name: String,
}

impl Server<'_> {
    /// The TLS mode (Istio's default when `tls` is given without a mode: PASSTHROUGH).
    pub fn tls_mode(&self) -> Option<ServerTlsMode> {
        self.spec
            .tls
            .as_ref()
            .map(|t| t.mode.unwrap_or(ServerTlsMode::Passthrough))
    }

    /// Whether TLS passes through untouched (PASSTHROUGH, AUTO_PASSTHROUGH).
    pub fn is_passthrough(&self) -> bool {
        matches!(
            self.tls_mode(),
            Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)
        )
    }

    /// Istio's "TLS server": TLS settings on a port that is not plain-text HTTP.
    pub fn is_tls_server(&self) -> bool {
        self.spec.tls.is_some() && !self.protocol.is_http()
    }

    /// Whether this server speaks HTTP to the proxy (plain HTTP, or HTTPS terminated).
    pub fn is_http(&self) -> bool {
        self.protocol.is_http() || (self.protocol == Protocol::Https && !self.is_passthrough())
    }

    /// The SNI names of a TLS server: its hosts without namespaces, sorted, deduplicated.
    pub fn sni_hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.hosts.iter().map(|h| strip_namespace(h)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Field path of this server, for diagnostics.
    pub fn field(&self, rest: &str) -> String {
        if rest.is_empty() {
            format!("spec.servers[{}]", self.index)
        } else {
            format!("spec.servers[{}].{rest}", self.index)
        }
    }
}

/// The host part of a `namespace/host` server host.
pub fn strip_namespace(host: &str) -> String {
    host.split_once('/')
        .map(|(_, h)| h)
        .unwrap_or(host)
        .to_string()
}

/// Everything served on one port (and bind address): one listener.
pub struct Port<'a> {
    pub number: u32,
    /// Address to bind ("" for all addresses).
    pub bind: String,
    /// Plain-text servers (all HTTP sharing one route table, or a single TCP server), or
    /// TLS servers (one filter chain each).
    pub kind: PortKind,
    pub servers: Vec<Server<'a>>,
}

/// What a port carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// Plain-text HTTP; every server shares the route table named here.
    Http { route_name: String },
    /// Plain-text TCP (one server).
    Tcp,
    /// TLS (terminated or passed through), one filter chain per server.
    Tls,
}

/// Merges the servers of the selected Gateways into ports.
pub fn merge<'a>(scope: &Scope<'a>, diagnostics: &mut Vec<Diagnostic>) -> Vec<Port<'a>> {
    let mut ports: Vec<Port<'a>> = Vec::new();
    // (port, bind) -> index in `ports`
    let mut by_key: BTreeMap<(u32, String), usize> = BTreeMap::new();
    // (port, bind, sni host): TLS hosts already claimed.
    let mut tls_hosts: BTreeMap<(u32, String, String), String> = BTreeMap::new();
    // (index in `ports`, route name) of every server placed: a port with thousands of
    // HTTPS servers checks a new one's route name in one probe.
    let mut route_names: std::collections::HashSet<(usize, String)> = Default::default();

    for gateway in &scope.gateways {
        let gateway_name = format!("{}/{}", gateway.meta.namespace, gateway.meta.name);
        for (index, spec) in gateway.spec.servers.iter().enumerate() {
            let Some(port) = &spec.port else {
                diagnostics.push(gateway.error(
                    &format!("spec.servers[{index}]"),
                    "server has no port; it is left out",
                ));
                continue;
            };
            let protocol = Protocol::parse(&port.protocol);
            let mut server = Server {
                gateway,
                gateway_name: gateway_name.clone(),
                spec,
                index,
                port: port.number,
                port_name: port.name.clone(),
                protocol,
                bind: spec.bind.clone(),
                hosts: sanitize_hosts(&spec.hosts, &gateway.meta.namespace),
                route_name: String::new(),
            };
            server.route_name = names::route_name(
                server.protocol.is_http(),
                server.protocol == Protocol::Https && !server.is_passthrough(),
                server.port,
                &server.port_name,
                &gateway.meta.name,
                &gateway.meta.namespace,
                &server.bind,
            );
            if server.protocol == Protocol::Https && spec.tls.is_none() {
                diagnostics.push(gateway.error(
                    &server.field("tls"),
                    "an HTTPS server needs `tls` settings; the server is left out",
                ));
                continue;
            }
            if matches!(server.protocol, Protocol::Udp | Protocol::Unsupported(_)) {
                diagnostics.push(gateway.error(
                    &server.field("port.protocol"),
                    format!(
                        "protocol `{}` cannot be served by a gateway; the server is left out",
                        port.protocol
                    ),
                ));
                continue;
            }

            let key = (server.port, server.bind.clone());
            if server.is_tls_server() {
                // Two TLS servers may not claim the same host on one port.
                let dup: Vec<String> = server
                    .sni_hosts()
                    .into_iter()
                    .filter(|h| {
                        tls_hosts.contains_key(&(server.port, server.bind.clone(), h.clone()))
                    })
                    .collect();
                if !dup.is_empty() {
                    diagnostics.push(gateway.error(
                        &server.field("hosts"),
                        format!(
                            "host(s) {} already served over TLS on port {} by {}; the server is left out",
                            dup.join(", "),
                            server.port,
                            tls_hosts[&(server.port, server.bind.clone(), dup[0].clone())]
                        ),
                    ));
                    continue;
                }
            }
            let port_index = by_key.get(&key).copied();
            match port_index.map(|i| &mut ports[i]) {
                None => {
                    let kind = if server.is_tls_server() {
                        PortKind::Tls
                    } else if server.protocol.is_http() {
                        PortKind::Http {
                            route_name: server.route_name.clone(),
                        }
                    } else {
                        PortKind::Tcp
                    };
                    claim_tls_hosts(&server, &mut tls_hosts);
                    route_names.insert((ports.len(), server.route_name.clone()));
                    by_key.insert(key, ports.len());
                    ports.push(Port {
                        number: server.port,
                        bind: server.bind.clone(),
                        kind,
                        servers: vec![server],
                    });
                }
                Some(existing) => {
                    let conflict = match existing.kind {
                        PortKind::Http { .. } => !server.protocol.is_http(),
                        PortKind::Tcp => true,
                        PortKind::Tls => !server.is_tls_server(),
                    };
                    if conflict {
                        let first = &existing.servers[0];
                        diagnostics.push(gateway.error(
                            &server.field("port"),
                            format!(
                                "port {} is already served as {} by gateway {} (server {}); a port carries either plain-text HTTP servers, one TCP server, or TLS servers; this server is left out",
                                server.port, first.protocol, first.gateway_name, first.index
                            ),
                        ));
                        continue;
                    }
                    let at = port_index.unwrap_or_default();
                    if existing.kind == PortKind::Tls
                        && server.is_http()
                        && route_names.contains(&(at, server.route_name.clone()))
                    {
                        diagnostics.push(gateway.error(
                            &server.field("port.name"),
                            format!(
                                "another HTTPS server of this gateway on port {} has the port name `{}`; HTTPS servers need distinct port names (they name the route table {}); this server is left out",
                                server.port, server.port_name, server.route_name
                            ),
                        ));
                        continue;
                    }
                    claim_tls_hosts(&server, &mut tls_hosts);
                    route_names.insert((at, server.route_name.clone()));
                    existing.servers.push(server);
                }
            }
        }
    }
    ports
}

fn claim_tls_hosts(server: &Server, tls_hosts: &mut BTreeMap<(u32, String, String), String>) {
    if server.is_tls_server() {
        for h in server.sni_hosts() {
            tls_hosts.insert(
                (server.port, server.bind.clone(), h),
                format!("{} (server {})", server.gateway_name, server.index),
            );
        }
    }
}

/// Istio's host sanitising: `./host` is in the Gateway's namespace, `*/host` in any.
fn sanitize_hosts(hosts: &[String], namespace: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        match h.split_once('/') {
            Some(("*", "*")) => return vec!["*".to_string()],
            Some(("*", host)) => out.push(host.to_string()),
            Some((".", host)) => out.push(format!("{namespace}/{host}")),
            _ => out.push(h.clone()),
        }
    }
    out
}

/// Which Gateways (`ns/name`) serve each HTTP route configuration of these ports.
pub fn served_by(ports: &[Port<'_>]) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for port in ports {
        for server in &port.servers {
            let name = match &port.kind {
                PortKind::Http { route_name } => route_name,
                _ if !server.route_name.is_empty() => &server.route_name,
                _ => continue,
            };
            out.entry(name.clone())
                .or_default()
                .insert(server.gateway_name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_sanitized_like_istio() {
        let cases: [(&[&str], &[&str]); 4] = [
            (&["./a.com", "b.com"], &["gw-ns/a.com", "b.com"]),
            (&["*/a.com"], &["a.com"]),
            (&["x/a.com"], &["x/a.com"]),
            (&["a.com", "*/*"], &["*"]),
        ];
        for (input, want) in cases {
            let input: Vec<String> = input.iter().map(|s| s.to_string()).collect();
            assert_eq!(sanitize_hosts(&input, "gw-ns"), want);
        }
    }
}
