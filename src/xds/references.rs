//! The names a set of listeners and clusters refers to over ADS: the route
//! configurations (RDS), cluster load assignments (EDS) and secrets (SDS) a proxy must
//! subscribe to after LDS and CDS. The control plane checks its snapshots with it, the
//! xDS client derives its subscriptions from it.
use crate::xds::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use crate::xds::pb::envoy::config::core::v3::{
    ConfigSource, TransportSocket, config_source::ConfigSourceSpecifier,
    transport_socket::ConfigType,
};
use crate::xds::pb::envoy::config::listener::v3::Listener;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
    common_tls_context::ValidationContextType,
};
use crate::xds::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::collections::BTreeSet;

fn is_ads(source: Option<&ConfigSource>) -> bool {
    matches!(
        source.and_then(|s| s.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_))
    )
}

fn decode_any<M: Message + Name + Default>(any: &Any) -> Option<M> {
    if any.type_url != M::type_url() {
        return None;
    }
    M::decode(any.value.as_slice()).ok()
}

fn sds_in_common(ctx: Option<&CommonTlsContext>, out: &mut Vec<String>) {
    let Some(ctx) = ctx else { return };
    let mut push = |c: &SdsSecretConfig| {
        if is_ads(c.sds_config.as_ref()) {
            out.push(c.name.clone());
        }
    };
    ctx.tls_certificate_sds_secret_configs
        .iter()
        .for_each(&mut push);
    match &ctx.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(c)) => push(c),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            if let Some(c) = &c.validation_context_sds_secret_config {
                push(c)
            }
        }
        _ => {}
    }
}

fn sds_in_transport_socket(ts: Option<&TransportSocket>, out: &mut Vec<String>) {
    let Some(ConfigType::TypedConfig(any)) = ts.and_then(|t| t.config_type.as_ref()) else {
        return;
    };
    if let Some(d) = decode_any::<DownstreamTlsContext>(any) {
        sds_in_common(d.common_tls_context.as_ref(), out);
    } else if let Some(u) = decode_any::<UpstreamTlsContext>(any) {
        sds_in_common(u.common_tls_context.as_ref(), out);
    }
}

/// The names a resource set refers to over ADS, by type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    pub routes: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// The RDS, EDS and SDS names that listeners and clusters reference through ADS
/// (the names a client subscribes to after CDS and LDS).
pub fn references(listeners: &[Listener], clusters: &[Cluster]) -> References {
    references_of(listeners, clusters)
}

/// [`references`] of listeners and clusters held anywhere (no copy of them is made).
pub fn references_of<'a>(
    listeners: impl IntoIterator<Item = &'a Listener>,
    clusters: impl IntoIterator<Item = &'a Cluster>,
) -> References {
    let mut refs = References::default();
    let mut secrets = Vec::new();
    for l in listeners {
        // A proxyless gRPC client's listener: the HTTP connection manager is the
        // `api_listener` itself.
        if let Some(any) = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
            && let Some(hcm) = decode_any::<HttpConnectionManager>(any)
            && let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier
            && is_ads(rds.config_source.as_ref())
        {
            refs.routes.insert(rds.route_config_name.clone());
        }
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            sds_in_transport_socket(fc.transport_socket.as_ref(), &mut secrets);
            for f in &fc.filters {
                let Some(
                    crate::xds::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                        any,
                    ),
                ) = &f.config_type
                else {
                    continue;
                };
                if let Some(hcm) = decode_any::<HttpConnectionManager>(any)
                    && let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier
                    && is_ads(rds.config_source.as_ref())
                {
                    refs.routes.insert(rds.route_config_name.clone());
                }
            }
        }
    }
    for c in clusters {
        if matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
        {
            let eds = c.eds_cluster_config.as_ref();
            if eds.is_none_or(|e| is_ads(e.eds_config.as_ref())) {
                let name = eds
                    .map(|e| e.service_name.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&c.name);
                refs.endpoints.insert(name.to_string());
            }
        }
        sds_in_transport_socket(c.transport_socket.as_ref(), &mut secrets);
        for m in &c.transport_socket_matches {
            sds_in_transport_socket(m.transport_socket.as_ref(), &mut secrets);
        }
    }
    refs.secrets.extend(secrets);
    refs
}
