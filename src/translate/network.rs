//! Opaque TCP forwarding: VirtualService `tcp` and `tls` routes -> Envoy's `tcp_proxy`
//! network filter, to one cluster or weighted clusters, as istiod builds them.
use super::http_route::References;
use super::names;
use super::pb;
use super::scope::Scope;
use crate::config::types::virtual_service::RouteDestination;
use crate::config::{Diagnostic, Resource, VirtualService};
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

/// Name of Envoy's TCP proxy network filter.
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// The `tcp_proxy` filter for a route's destinations. `port` is the gateway port (the
/// destination port when a destination names none and its service has several).
pub fn tcp_proxy_filters(
    scope: &Scope,
    vs: &Resource<VirtualService>,
    field: &str,
    destinations: &[RouteDestination],
    port: u32,
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> Vec<listener::Filter> {
    tcp_proxy_config(
        scope,
        vs,
        field,
        destinations,
        port,
        diagnostics,
        references,
    )
    .map(|proxy| vec![tcp_proxy_filter(&proxy)])
    .unwrap_or_default()
}

/// The `tcp_proxy` of a route's destinations (see [`tcp_proxy_filters`]); None when no
/// destination is usable.
pub fn tcp_proxy_config(
    scope: &Scope,
    vs: &Resource<VirtualService>,
    field: &str,
    destinations: &[RouteDestination],
    port: u32,
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> Option<tcp::TcpProxy> {
    let mut cluster = |k: usize, d: &RouteDestination| -> Option<String> {
        let dest = d.destination.as_ref()?;
        let host = scope.resolve_host(&dest.host, &vs.meta.namespace);
        let service = scope
            .registry
            .service(&host, &scope.namespace, Some(&vs.meta.namespace));
        let p = match (&dest.port, service) {
            (Some(p), _) => p.number,
            (None, Some(s)) if s.ports.len() == 1 => s.ports[0].number,
            _ => port,
        };
        match service {
            Some(s) => {
                references.insert((s.hostname.clone(), s.namespace.clone()));
            }
            None => diagnostics.push(vs.warning(
                &format!("{field}.route[{k}].destination.host"),
                format!(
                    "no ServiceEntry visible from namespace `{}` defines host `{host}`; connections routed here are closed",
                    scope.namespace
                ),
            )),
        }
        Some(names::cluster_name(&dest.subset, &host, p))
    };
    // Idle timeout and connection lifetime come from the first destination's rule.
    let first_host = destinations
        .first()
        .and_then(|d| d.destination.as_ref())
        .map(|d| scope.resolve_host(&d.host, &vs.meta.namespace));
    let pool_tcp = first_host.as_ref().and_then(|h| {
        let ns = scope
            .registry
            .service(h, &scope.namespace, Some(&vs.meta.namespace))
            .map(|s| s.namespace.clone());
        scope
            .destination_rule(h, ns.as_deref())
            .and_then(|dr| dr.traffic_policy)
            .and_then(|tp| tp.connection_pool)
            .and_then(|cp| cp.tcp)
    });
    let mut proxy = tcp::TcpProxy {
        idle_timeout: pool_tcp
            .as_ref()
            .and_then(|t| t.idle_timeout)
            .map(|d| pb::duration(d.get())),
        max_downstream_connection_duration: pool_tcp
            .as_ref()
            .and_then(|t| t.max_connection_duration)
            .map(|d| pb::duration(d.get())),
        ..Default::default()
    };
    if destinations.len() == 1 {
        let name = cluster(0, &destinations[0])?;
        proxy.stat_prefix = name.clone();
        proxy.cluster_specifier = Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(name));
    } else {
        let mut clusters = Vec::new();
        for (k, d) in destinations.iter().enumerate() {
            if d.weight <= 0 {
                continue;
            }
            if let Some(name) = cluster(k, d) {
                clusters.push(tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                    name,
                    weight: u32::try_from(d.weight).unwrap_or(0),
                    ..Default::default()
                });
            }
        }
        if clusters.is_empty() {
            return None;
        }
        proxy.stat_prefix = format!("{}.{}", vs.meta.name, vs.meta.namespace);
        proxy.cluster_specifier = Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp::tcp_proxy::WeightedCluster { clusters },
        ));
    }
    Some(proxy)
}

/// The `tcp_proxy` of a service port without a route (istiod's
/// `buildOutboundNetworkFiltersWithSingleDestination`): to `cluster`, with the idle
/// timeout and connection lifetime of the service's DestinationRule.
pub fn tcp_proxy_to_service(
    scope: &Scope,
    service: &crate::registry::Service,
    cluster: &str,
) -> tcp::TcpProxy {
    let pool_tcp = scope
        .destination_rule(&service.hostname, Some(&service.namespace))
        .and_then(|dr| dr.traffic_policy)
        .and_then(|tp| tp.connection_pool)
        .and_then(|cp| cp.tcp);
    tcp::TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        idle_timeout: pool_tcp
            .as_ref()
            .and_then(|t| t.idle_timeout)
            .map(|d| pb::duration(d.get())),
        max_downstream_connection_duration: pool_tcp
            .as_ref()
            .and_then(|t| t.max_connection_duration)
            .map(|d| pb::duration(d.get())),
        ..Default::default()
    }
}

/// A `tcp_proxy` to one cluster (AUTO_PASSTHROUGH chains).
pub fn tcp_proxy_to(cluster: &str) -> listener::Filter {
    tcp_proxy_filter(&tcp::TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        ..Default::default()
    })
}

/// The network filter around a `tcp_proxy`.
pub fn tcp_proxy_filter(proxy: &tcp::TcpProxy) -> listener::Filter {
    listener::Filter {
        name: TCP_PROXY.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pb::any(proxy))),
    }
}
