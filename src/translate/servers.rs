//! One listener per gateway port: the filter chains of its servers — plain-text HTTP,
//! HTTPS terminated per SNI, TLS terminated or passed through to `tls`/`tcp` routes,
//! plain TCP, and AUTO_PASSTHROUGH's SNI routing to every mesh service.
use super::authz;
use super::gateways::{Port, PortKind, Server};
use super::http_route::References;
use super::listener;
use super::names;
use super::network;
use super::routes;
use super::scope::{BoundVirtualService, Scope, resolve_gateway_name};
use super::tls::{self, SecretBook};
use crate::config::Diagnostic;
use crate::config::hosts;
use crate::config::types::gateway::ServerTlsMode;
use crate::registry::Protocol;
use crate::xds::pb::envoy::config::listener::v3 as envoy_listener;
use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::BTreeMap;

/// The ALPN values Istio's mTLS clients send, matched by AUTO_PASSTHROUGH chains.
pub const ISTIO_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// Everything built while translating the ports.
pub struct Build<'s, 'a> {
    pub scope: &'s Scope<'a>,
    pub diagnostics: Vec<Diagnostic>,
    /// Services routes send to: they get `outbound|...` clusters.
    pub references: References,
    /// Services reached by AUTO_PASSTHROUGH: they get `outbound_.PORT_...` clusters.
    pub sni_services: References,
    pub secrets: SecretBook,
    pub routes: Vec<RouteConfiguration>,
    /// The gateway workload's AuthorizationPolicies as HTTP filters (before fault).
    pub authz_http: Vec<crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter>,
    /// ... and as network filters before each `tcp_proxy`.
    pub authz_tcp: Vec<envoy_listener::Filter>,
    /// The connection managers' tracing, when the mesh names a tracing provider.
    pub tracing: Option<crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing>,
}

impl<'s, 'a> Build<'s, 'a> {
    pub fn new(scope: &'s Scope<'a>, mut diagnostics: Vec<Diagnostic>) -> Build<'s, 'a> {
        // Istio applies policies to a gateway as to any workload: by its labels and the
        // namespace it runs in.
        let policies = authz::for_workload(
            scope.config,
            super::scope::ROOT_NAMESPACE,
            &scope.namespace,
            &scope.proxy.labels,
        );
        let cx = authz::Context {
            trust_domain: &scope.trust_domain,
            issuers: &authz::request_issuers(scope.config, &scope.namespace, &scope.proxy.labels),
        };
        // CUSTOM policies' filters go first (istiod's order: CUSTOM, DENY, ALLOW).
        let (mut authz_http, authorizer) = super::ext_authz::custom_http_filters(
            cx,
            &policies,
            &scope.extension_providers,
            scope.registry,
            &mut diagnostics,
        );
        authz_http.extend(authz::http_filters(cx, &policies, &mut diagnostics));
        let mut authz_tcp = super::ext_authz::custom_network_filters(
            cx,
            &policies,
            &scope.extension_providers,
            super::ext_authz::gateway_has_tcp_chains(&scope.gateways),
            &mut diagnostics,
        );
        authz_tcp.extend(authz::network_filters(cx, &policies, &mut diagnostics));
        // The gateway carries the clusters of the services it references: the
        // authorizer's is one.
        let mut references: References = authorizer.into_iter().collect();
        // ... and the tracing collector's.
        let tracing = match super::tracing::build(
            scope,
            crate::config::types::telemetry::WorkloadMode::Client,
        ) {
            Ok(t) => t.map(|t| {
                references.insert(t.service);
                t.tracing
            }),
            Err(e) => {
                tracing::warn!("{e}; the gateway's connection managers do not trace");
                None
            }
        };
        Build {
            scope,
            diagnostics,
            authz_http,
            authz_tcp,
            references,
            sni_services: References::new(),
            tracing,
            secrets: SecretBook::new(&scope.namespace),
            routes: Vec::new(),
        }
    }

    /// The listener of a port, or None when none of its servers yields a filter chain.
    pub fn port_listener(&mut self, port: &Port) -> Option<envoy_listener::Listener> {
        let mut l = listener::listener(port);
        match &port.kind {
            PortKind::Http { route_name } => {
                let stat_prefix = listener::http_stat_prefix(&l.name);
                l.filter_chains.push(listener::filter_chain(
                    vec![listener::http_connection_manager(
                        route_name,
                        &stat_prefix,
                        self.authz_http.clone(),
                        &self.scope.gateway_topology,
                        self.tracing.clone(),
                    )],
                    None,
                    None,
                ));
                let servers: Vec<&Server> = port.servers.iter().collect();
                let rc = routes::route_configuration(
                    self.scope,
                    route_name,
                    &servers,
                    &mut self.diagnostics,
                    &mut self.references,
                );
                self.routes.push(rc);
            }
            PortKind::Tcp => {
                let server = &port.servers[0];
                let filters = self.tcp_route_filters(server);
                if filters.is_empty() {
                    self.diagnostics.push(server.gateway.warning(
                        &server.field(""),
                        format!(
                            "no VirtualService bound to {} has a `tcp` route for this server; port {} gets no listener",
                            server.gateway_name, server.port
                        ),
                    ));
                    return None;
                }
                l.filter_chains
                    .push(listener::filter_chain(filters, None, None));
            }
            PortKind::Tls => {
                // SNI names already claimed on this port by passthrough routes.
                let mut claimed: BTreeMap<String, String> = BTreeMap::new();
                for server in &port.servers {
                    let chains = self.tls_server_chains(server, &l.name, &mut claimed);
                    l.filter_chains.extend(chains);
                }
                if l.filter_chains.is_empty() {
                    return None;
                }
            }
        }
        let needs_inspector = l.filter_chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty() || !m.application_protocols.is_empty())
                || c.transport_socket.is_some()
        });
        // istiod's gateway listener builder: the PROXY header is stripped first, then
        // the ClientHello is read behind it.
        if self.scope.gateway_topology.proxy_protocol.is_some() {
            l.listener_filters.push(listener::proxy_protocol());
        }
        if needs_inspector {
            l.listener_filters.push(listener::tls_inspector());
        }
        Some(l)
    }

    /// Where credentials of a server are looked up: the proxy's namespace when it was
    /// given, else the Gateway's own namespace.
    fn credential_namespace(&self, server: &Server) -> String {
        if self.scope.proxy.namespace.is_empty() {
            server.gateway.meta.namespace.clone()
        } else {
            self.scope.proxy.namespace.clone()
        }
    }

    fn tls_server_chains(
        &mut self,
        server: &Server,
        listener_name: &str,
        claimed: &mut BTreeMap<String, String>,
    ) -> Vec<envoy_listener::FilterChain> {
        let Some(settings) = server.spec.tls.as_ref() else {
            return Vec::new();
        };
        let mode = server.tls_mode().unwrap_or(ServerTlsMode::Passthrough);
        match mode {
            ServerTlsMode::Passthrough => return self.passthrough_chains(server, claimed),
            ServerTlsMode::AutoPassthrough => return self.auto_passthrough_chains(server),
            ServerTlsMode::IstioMutual
            | ServerTlsMode::Simple
            | ServerTlsMode::Mutual
            | ServerTlsMode::OptionalMutual => {}
        }
        let namespace = self.credential_namespace(server);
        let ctx = match tls::downstream_context(
            settings,
            self.scope.config,
            &namespace,
            &mut self.secrets,
        ) {
            Ok(ctx) => ctx,
            Err(e) => {
                self.diagnostics.push(
                    server
                        .gateway
                        .warning(&server.field("tls"), format!("{e}; the server is left out")),
                );
                return Vec::new();
            }
        };
        let sni = server.sni_hosts();
        let chain_match =
            (!sni.iter().any(|h| h == "*")).then(|| envoy_listener::FilterChainMatch {
                server_names: sni.clone(),
                ..Default::default()
            });
        let filters = if server.protocol == Protocol::Https {
            let stat_prefix = if server.spec.name.is_empty() {
                listener::http_stat_prefix(listener_name)
            } else {
                server.spec.name.clone()
            };
            let rc = routes::route_configuration(
                self.scope,
                &server.route_name,
                &[server],
                &mut self.diagnostics,
                &mut self.references,
            );
            self.routes.push(rc);
            vec![listener::http_connection_manager(
                &server.route_name,
                &stat_prefix,
                self.authz_http.clone(),
                &self.scope.gateway_topology,
                self.tracing.clone(),
            )]
        } else {
            let filters = self.tcp_route_filters(server);
            if filters.is_empty() {
                self.diagnostics.push(server.gateway.warning(
                    &server.field(""),
                    format!(
                        "no VirtualService bound to {} has a `tcp` route for this TLS server; it is left out",
                        server.gateway_name
                    ),
                ));
                return Vec::new();
            }
            filters
        };
        vec![listener::filter_chain(
            filters,
            chain_match,
            Some(tls::transport_socket(&ctx)),
        )]
    }

    /// VirtualServices bound to the server's gateway with a host the server serves
    /// (Istio's `pickMatchingGatewayHosts`).
    fn bound_to<'x>(
        scope: &'x Scope<'a>,
        server: &'x Server,
    ) -> impl Iterator<Item = &'x BoundVirtualService<'a>> + 'x {
        scope
            .virtual_services_for_gateway(&server.gateway_name)
            .filter(move |vs| {
                server.hosts.iter().any(|gw_host| {
                    let h = match gw_host.split_once('/') {
                        Some((ns, h)) if ns == vs.res.meta.namespace => h,
                        Some(_) => return false,
                        None => gw_host.as_str(),
                    };
                    vs.hosts.iter().any(|v| hosts::matches(h, v))
                })
            })
    }

    /// Istio's `l4SingleMatch`: the port (if any) is the server's, the gateways (if any)
    /// include the server's gateway.
    fn l4_match(server: &Server, port: u32, gateways: &[String], vs_namespace: &str) -> bool {
        (port == 0 || port == server.port)
            && (gateways.is_empty()
                || gateways
                    .iter()
                    .any(|g| resolve_gateway_name(g, vs_namespace) == server.gateway_name))
    }

    /// The filters of the first `tcp` route that applies to the server.
    fn tcp_route_filters(&mut self, server: &Server) -> Vec<envoy_listener::Filter> {
        let scope = self.scope;
        let candidates: Vec<(usize, &BoundVirtualService)> = Self::bound_to(scope, server)
            .flat_map(|vs| {
                vs.res
                    .spec
                    .tcp
                    .iter()
                    .enumerate()
                    .filter(move |(_, t)| {
                        !t.route.is_empty()
                            && (t.matches.is_empty()
                                || t.matches.iter().any(|m| {
                                    Self::l4_match(
                                        server,
                                        m.port,
                                        &m.gateways,
                                        &vs.res.meta.namespace,
                                    )
                                }))
                    })
                    .map(move |(i, _)| (i, vs))
            })
            .collect();
        let Some((i, vs)) = candidates.first().copied() else {
            return Vec::new();
        };
        let route = &vs.res.spec.tcp[i].route;
        let filters = network::tcp_proxy_filters(
            self.scope,
            vs.res,
            &format!("spec.tcp[{i}]"),
            route,
            server.port,
            &mut self.diagnostics,
            &mut self.references,
        );
        self.with_authz(filters)
    }

    /// The network filters of a TCP chain behind the workload's authorization filters
    /// (none when there is no `tcp_proxy`).
    fn with_authz(&self, filters: Vec<envoy_listener::Filter>) -> Vec<envoy_listener::Filter> {
        if filters.is_empty() {
            return filters;
        }
        self.authz_tcp.iter().cloned().chain(filters).collect()
    }

    /// PASSTHROUGH: a filter chain per `tls` route match, on its SNI names.
    fn passthrough_chains(
        &mut self,
        server: &Server,
        claimed: &mut BTreeMap<String, String>,
    ) -> Vec<envoy_listener::FilterChain> {
        let scope = self.scope;
        let mut wanted: Vec<(&BoundVirtualService, usize, usize)> = Vec::new();
        for vs in Self::bound_to(scope, server) {
            for (i, t) in vs.res.spec.tls.iter().enumerate() {
                if t.route.is_empty() {
                    continue;
                }
                for (j, m) in t.matches.iter().enumerate() {
                    if Self::l4_match(server, m.port, &m.gateways, &vs.res.meta.namespace) {
                        wanted.push((vs, i, j));
                    }
                }
            }
        }
        let mut chains = Vec::new();
        for (vs, i, j) in wanted {
            let m = &vs.res.spec.tls[i].matches[j];
            let field = format!("spec.tls[{i}].match[{j}].sniHosts");
            let dup: Vec<&String> = m
                .sni_hosts
                .iter()
                .filter(|h| claimed.contains_key(h.as_str()))
                .collect();
            if !dup.is_empty() {
                let by = claimed[dup[0].as_str()].clone();
                self.diagnostics.push(vs.res.warning(
                    &field,
                    format!(
                        "SNI host(s) {} already routed on port {} by {by}; this match is left out",
                        dup.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                        server.port
                    ),
                ));
                continue;
            }
            let filters = network::tcp_proxy_filters(
                self.scope,
                vs.res,
                &format!("spec.tls[{i}]"),
                &vs.res.spec.tls[i].route,
                server.port,
                &mut self.diagnostics,
                &mut self.references,
            );
            if filters.is_empty() {
                continue;
            }
            let filters = self.with_authz(filters);
            for h in &m.sni_hosts {
                claimed.insert(h.clone(), vs.res.id());
            }
            let mut sni = m.sni_hosts.clone();
            sni.sort();
            let chain_match =
                (!sni.iter().any(|h| h == "*")).then(|| envoy_listener::FilterChainMatch {
                    server_names: sni,
                    ..Default::default()
                });
            chains.push(listener::filter_chain(filters, chain_match, None));
        }
        if chains.is_empty() {
            self.diagnostics.push(server.gateway.warning(
                &server.field(""),
                format!(
                    "no VirtualService bound to {} has a `tls` route matching this PASSTHROUGH server; it is left out",
                    server.gateway_name
                ),
            ));
        }
        chains
    }

    /// AUTO_PASSTHROUGH: for every mesh service the server's hosts cover, a chain on the
    /// SNI `outbound_.PORT_.SUBSET_.HOST` (as sent by Istio's mTLS clients, with their ALPN)
    /// forwarding the TLS stream untouched to that service port (and subset).
    fn auto_passthrough_chains(&mut self, server: &Server) -> Vec<envoy_listener::FilterChain> {
        let hosts: Vec<String> = server.sni_hosts();
        let mut chains = Vec::new();
        for service in self.scope.registry.visible_from(&self.scope.namespace) {
            if service.mesh_external
                || !hosts
                    .iter()
                    .any(|h| hosts::is_subset_of(&service.hostname, h))
            {
                continue;
            }
            let subsets: Vec<String> = self
                .scope
                .destination_rule(&service.hostname, Some(&service.namespace))
                .map(|dr| dr.subsets.iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default();
            let mut any = false;
            for port in &service.ports {
                if port.protocol == Protocol::Udp {
                    continue;
                }
                for subset in std::iter::once("").chain(subsets.iter().map(String::as_str)) {
                    let name = names::sni_cluster_name(subset, &service.hostname, port.number);
                    chains.push(listener::filter_chain(
                        self.with_authz(vec![network::tcp_proxy_to(&name)]),
                        Some(envoy_listener::FilterChainMatch {
                            server_names: vec![name.clone()],
                            application_protocols: ISTIO_MTLS_ALPNS
                                .iter()
                                .map(|s| s.to_string())
                                .collect(),
                            ..Default::default()
                        }),
                        None,
                    ));
                    any = true;
                }
            }
            if any {
                self.sni_services
                    .insert((service.hostname.clone(), service.namespace.clone()));
            }
        }
        if chains.is_empty() {
            self.diagnostics.push(server.gateway.warning(
                &server.field("hosts"),
                "no MESH_INTERNAL service matches the hosts of this AUTO_PASSTHROUGH server; it is left out",
            ));
        }
        chains
    }
}
