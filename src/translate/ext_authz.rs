//! The external authorizer behind AuthorizationPolicy `action: CUSTOM` (istiod's
//! `builder/extauthz.go`): the mesh configuration's `envoyExtAuthzHttp` /
//! `envoyExtAuthzGrpc` provider named by the policies becomes an
//! `envoy.filters.http.ext_authz` filter placed right after the CUSTOM policies' shadow
//! RBAC filter. The RBAC filter enforces nothing; it writes the name of the CUSTOM
//! policy a request matches (`istio-ext-authz-...`) under
//! `istio_ext_authz_shadow_effective_policy_id` in its dynamic metadata, and the
//! ext_authz filter's `filter_enabled_metadata` sends only those requests to the
//! authorizer.
//!
//! The provider's `service` (`<namespace>/<hostname>`, or a hostname defined in one
//! namespace only) is looked up in the registry: the filter calls the cluster
//! `outbound|PORT||HOSTNAME`, which the proxy must carry (see [`BuiltExtAuthz::service`]).
//! A provider that cannot be used (unknown, of another kind, unknown service) is an
//! error, and the CUSTOM policies then deny every request they match, as istiod's
//! "bad CUSTOM action" rules do.
use super::authz::{self, WorkloadPolicies};
use super::names::cluster_name;
use super::pb;
use crate::config::mesh::{
    ExtAuthzGrpcProvider, ExtAuthzHttpProvider, ExtAuthzProvider, ExtAuthzRequestBody,
    ExtensionProvider, MeshConfig, ext_authz_status,
};
use crate::config::types::authorization_policy::AuthzAction;
use crate::config::{Config, Diagnostic};
use crate::registry::Registry;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::config::rbac::v3 as rbac;
use crate::xds::pb::envoy::extensions::filters::http::ext_authz::v3 as ext_authz;
use crate::xds::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use crate::xds::pb::envoy::r#type::v3 as types;
use std::time::Duration;

/// The filter's name in the connection manager (Envoy's well-known name).
pub const FILTER_NAME: &str = "envoy.filters.http.ext_authz";
/// The RBAC filter whose dynamic metadata enables the ext_authz filter.
pub const RBAC_FILTER_NAME: &str = "envoy.filters.http.rbac";
/// The metadata key the CUSTOM shadow rules write (stat prefix `istio_ext_authz_`).
pub const SHADOW_POLICY_KEY: &str = "istio_ext_authz_shadow_effective_policy_id";
/// The prefix of CUSTOM policies' names, matched by `filter_enabled_metadata`.
pub const MATCH_PREFIX: &str = "istio-ext-authz";
/// Suffix of the deny rules made of CUSTOM policies whose provider cannot be used.
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";
/// istiod's timeout when the provider sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a provider cannot serve a CUSTOM policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "extension provider {name:?} is not defined in the mesh configuration (extensionProviders); defined: [{defined}]"
    )]
    Unknown { name: String, defined: String },
    #[error(
        "extension provider {name:?} is a `{kind}` provider; CUSTOM authorization needs envoyExtAuthzHttp or envoyExtAuthzGrpc"
    )]
    NotAuthorizer { name: String, kind: String },
    #[error("extension provider {name:?}: {message}")]
    Service { name: String, message: String },
}

/// The provider `name` of `providers` (MeshConfig `extensionProviders`), if it is an
/// external authorizer meshgate serves.
pub fn provider(
    providers: &[ExtensionProvider],
    name: &str,
) -> Result<ExtAuthzProvider, ProviderError> {
    let Some(p) = providers.iter().find(|p| p.name == name) else {
        let defined: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
        return Err(ProviderError::Unknown {
            name: name.to_string(),
            defined: defined.join(", "),
        });
    };
    p.ext_authz().ok_or_else(|| ProviderError::NotAuthorizer {
        name: name.to_string(),
        kind: p.kind.clone(),
    })
}

/// Checks that every CUSTOM AuthorizationPolicy of `config` names an external
/// authorizer of the mesh: an error on `spec.provider.name` otherwise.
pub fn check_policies(config: &Config, mesh: &MeshConfig) -> Vec<Diagnostic> {
    config
        .authorization_policies
        .iter()
        .filter(|p| p.spec.action() == AuthzAction::Custom)
        .filter_map(|p| {
            let name = p.spec.provider.as_ref().map(|pr| pr.name.as_str())?;
            provider(&mesh.extension_providers, name)
                .err()
                .map(|e| p.error("spec.provider.name", e.to_string()))
        })
        .collect()
}

/// An ext_authz filter and the service whose cluster it calls.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltExtAuthz {
    pub config: ext_authz::ExtAuthz,
    /// `(hostname, namespace)` of the authorizer's service: a gateway carries only the
    /// clusters of services it references, and must reference this one.
    pub service: (String, String),
}

impl BuiltExtAuthz {
    /// The connection manager's filter entry.
    pub fn http_filter(&self) -> hcm::HttpFilter {
        hcm::HttpFilter {
            name: FILTER_NAME.to_string(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(
                &self.config,
            ))),
            ..Default::default()
        }
    }
}

/// Istio's `LookupCluster`: the service's hostname, namespace and cluster for `port`.
pub(crate) fn lookup_cluster(
    registry: &Registry,
    service: &str,
    port: u32,
) -> Result<(String, String, String), String> {
    if service.is_empty() {
        return Err("service must not be empty".into());
    }
    let found = match service.split_once('/') {
        Some((namespace, host)) if !host.contains('/') => registry.service_in(host, namespace),
        Some(_) => None,
        None => {
            let mut namespaces: Vec<&str> = registry
                .services()
                .iter()
                .filter(|s| s.hostname == service)
                .map(|s| s.namespace.as_str())
                .collect();
            namespaces.sort();
            namespaces.dedup();
            match namespaces.as_slice() {
                [ns] => registry.service_in(service, ns),
                [] => None,
                several => {
                    return Err(format!(
                        "found {service} in multiple namespaces {several:?}, specify the namespace explicitly in the format of <Namespace>/<Hostname>"
                    ));
                }
            }
        }
    };
    let Some(svc) = found else {
        return Err(format!(
            "could not find service {service} in the service registry"
        ));
    };
    if svc.port(port).is_none() {
        return Err(format!("service {} has no port {port}", svc.hostname));
    }
    Ok((
        svc.hostname.clone(),
        svc.namespace.clone(),
        cluster_name("", &svc.hostname, port),
    ))
}

/// Builds the ext_authz filter for provider `name` (istiod's `buildExtAuthzHTTP` /
/// `buildExtAuthzGRPC`).
pub fn build(
    providers: &[ExtensionProvider],
    registry: &Registry,
    name: &str,
) -> Result<BuiltExtAuthz, ProviderError> {
    let service_error = |message: String| ProviderError::Service {
        name: name.to_string(),
        message,
    };
    let (config, service) = match provider(providers, name)? {
        ExtAuthzProvider::Http(p) => {
            let (host, ns, cluster) =
                lookup_cluster(registry, &p.service, p.port).map_err(service_error)?;
            (http_config(&host, &cluster, &p), (host, ns))
        }
        ExtAuthzProvider::Grpc(p) => {
            let (host, ns, cluster) =
                lookup_cluster(registry, &p.service, p.port).map_err(service_error)?;
            (grpc_config(&host, &cluster, &p), (host, ns))
        }
    };
    Ok(BuiltExtAuthz { config, service })
}

fn status_on_error(s: &str) -> Option<types::HttpStatus> {
    ext_authz_status(s).map(|code| types::HttpStatus { code: code as i32 })
}

fn timeout(
    t: Option<crate::config::duration::Duration>,
) -> Option<crate::xds::pb::google::protobuf::Duration> {
    Some(pb::duration(t.map_or(DEFAULT_TIMEOUT, |d| d.0)))
}

fn with_body(b: &Option<ExtAuthzRequestBody>) -> Option<ext_authz::BufferSettings> {
    b.as_ref().map(|b| ext_authz::BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

/// `filter_enabled_metadata`: the RBAC filter's shadow result names a CUSTOM policy.
pub fn filter_matcher() -> matcher::MetadataMatcher {
    use matcher::metadata_matcher::{PathSegment, path_segment::Segment};
    matcher::MetadataMatcher {
        filter: RBAC_FILTER_NAME.into(),
        path: vec![PathSegment {
            segment: Some(Segment::Key(SHADOW_POLICY_KEY.into())),
        }],
        value: Some(matcher::ValueMatcher {
            match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                        MATCH_PREFIX.into(),
                    )),
                    ..Default::default()
                },
            )),
        }),
        invert: false,
    }
}

/// istiod's `generateHeaders`: case-insensitive exact names, `*`-suffixed prefixes and
/// `*`-prefixed suffixes; `None` for an empty list.
fn header_list(headers: &[String]) -> Option<matcher::ListStringMatcher> {
    use matcher::string_matcher::MatchPattern as P;
    if headers.is_empty() {
        return None;
    }
    Some(matcher::ListStringMatcher {
        patterns: headers
            .iter()
            .map(|h| matcher::StringMatcher {
                ignore_case: true,
                match_pattern: Some(if let Some(suffix) = h.strip_prefix('*') {
                    P::Suffix(suffix.to_string())
                } else if let Some(prefix) = h.strip_suffix('*') {
                    P::Prefix(prefix.to_string())
                } else {
                    P::Exact(h.clone())
                }),
            })
            .collect(),
    })
}

fn http_config(host: &str, cluster: &str, p: &ExtAuthzHttpProvider) -> ext_authz::ExtAuthz {
    let mut service = ext_authz::HttpService {
        path_prefix: p.path_prefix.clone(),
        server_uri: Some(core::HttpUri {
            // Required by Envoy, not used for the call: the cluster is.
            uri: format!("http://{host}"),
            timeout: timeout(p.timeout),
            http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                cluster.to_string(),
            )),
        }),
        ..Default::default()
    };
    let allowed_headers = header_list(&p.include_request_headers_in_check)
        .or_else(|| header_list(&p.include_headers_in_check));
    let headers_to_add: Vec<core::HeaderValue> = p
        .include_additional_headers_in_check
        .iter()
        .map(|(k, v)| core::HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        })
        .collect();
    if !headers_to_add.is_empty() {
        service.authorization_request = Some(ext_authz::AuthorizationRequest {
            headers_to_add,
            ..Default::default()
        });
    }
    if !p.headers_to_upstream_on_allow.is_empty()
        || !p.headers_to_downstream_on_deny.is_empty()
        || !p.headers_to_downstream_on_allow.is_empty()
    {
        service.authorization_response = Some(ext_authz::AuthorizationResponse {
            allowed_upstream_headers: header_list(&p.headers_to_upstream_on_allow),
            allowed_client_headers: header_list(&p.headers_to_downstream_on_deny),
            allowed_client_headers_on_success: header_list(&p.headers_to_downstream_on_allow),
            ..Default::default()
        });
    }
    ext_authz::ExtAuthz {
        status_on_error: status_on_error(&p.status_on_error),
        failure_mode_allow: p.fail_open,
        transport_api_version: core::ApiVersion::V3 as i32,
        services: Some(ext_authz::ext_authz::Services::HttpService(service)),
        filter_enabled_metadata: Some(filter_matcher()),
        with_request_body: with_body(&p.include_request_body_in_check),
        allowed_headers,
        ..Default::default()
    }
}

fn grpc_config(host: &str, cluster: &str, p: &ExtAuthzGrpcProvider) -> ext_authz::ExtAuthz {
    let grpc = core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
            core::grpc_service::EnvoyGrpc {
                cluster_name: cluster.to_string(),
                authority: host.to_string(),
                ..Default::default()
            },
        )),
        timeout: timeout(p.timeout),
        ..Default::default()
    };
    ext_authz::ExtAuthz {
        status_on_error: status_on_error(&p.status_on_error),
        failure_mode_allow: p.fail_open,
        services: Some(ext_authz::ext_authz::Services::GrpcService(grpc)),
        filter_enabled_metadata: Some(filter_matcher()),
        transport_api_version: core::ApiVersion::V3 as i32,
        with_request_body: with_body(&p.include_request_body_in_check),
        ..Default::default()
    }
}

/// The HTTP filters of a workload's CUSTOM policies, first in its chain: the shadow
/// RBAC filter followed by the ext_authz filter of the one provider the policies name
/// (istiod's CUSTOM builder). When the provider cannot be used, or the policies name
/// several, the problem is an error on the policies' `spec.provider.name` and the
/// filters become one RBAC filter denying what the CUSTOM policies match (istiod's
/// `-deny-due-to-bad-CUSTOM-action` rules).
///
/// Also returns the authorizer's service `(hostname, namespace)`, whose cluster the
/// proxy must carry. Nothing when no CUSTOM policy applies.
pub fn custom_http_filters(
    cx: authz::Context<'_>,
    policies: &WorkloadPolicies<'_>,
    providers: &[ExtensionProvider],
    registry: &Registry,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Vec<hcm::HttpFilter>, Option<(String, String)>) {
    let Some((shadow, names)) = authz::custom_shadow_rbac(cx, policies, false, diagnostics) else {
        return (Vec::new(), None);
    };
    let built = match names.as_slice() {
        [one] => build(providers, registry, one).map_err(|e| e.to_string()),
        several => Err(format!(
            "the CUSTOM policies of one workload must name one provider, found {several:?}"
        )),
    };
    match built {
        Ok(b) => (vec![rbac_filter(&shadow), b.http_filter()], Some(b.service)),
        Err(message) => {
            for p in &policies.custom {
                diagnostics.push(p.error(
                    "spec.provider.name",
                    format!("{message}; the requests this policy matches are denied"),
                ));
            }
            let deny = http_rbac::Rbac {
                rules: Some(bad_custom_deny(&shadow.shadow_rules.unwrap_or_default())),
                ..Default::default()
            };
            (vec![rbac_filter(&deny)], None)
        }
    }
}

/// Whether a gateway serves TCP chains: a TCP-like protocol, or TLS passed through.
pub fn gateway_has_tcp_chains(
    gateways: &[&crate::config::types::Resource<crate::config::types::Gateway>],
) -> bool {
    use crate::config::types::gateway::ServerTlsMode;
    gateways.iter().flat_map(|g| &g.spec.servers).any(|s| {
        let protocol = s
            .port
            .as_ref()
            .map(|p| p.protocol.to_ascii_uppercase())
            .unwrap_or_default();
        let passthrough = s.tls.as_ref().and_then(|t| t.mode).is_some_and(|m| {
            matches!(
                m,
                ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            )
        });
        passthrough
            || !matches!(
                protocol.as_str(),
                "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" | "HTTPS"
            )
    })
}

/// The network filters of a workload's CUSTOM policies for its TCP chains. Istio sends
/// TCP connections to a gRPC authorizer through the network ext_authz filter, which
/// meshgate does not serve: the connections those policies match are refused instead
/// (fail closed), with a warning. HTTP authorizers do not apply to TCP (as in Istio).
///
/// `tcp_chains`: whether the proxy has TCP chains at all (the warning is said only then).
pub fn custom_network_filters(
    cx: authz::Context<'_>,
    policies: &WorkloadPolicies<'_>,
    providers: &[ExtensionProvider],
    tcp_chains: bool,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<listener::Filter> {
    let grpc: Vec<_> = policies
        .custom
        .iter()
        .filter(|p| {
            p.spec.provider.as_ref().is_some_and(|pr| {
                matches!(
                    provider(providers, &pr.name),
                    Ok(ExtAuthzProvider::Grpc(_)) | Err(_)
                )
            })
        })
        .copied()
        .collect();
    if grpc.is_empty() {
        return Vec::new();
    }
    let only = WorkloadPolicies {
        custom: grpc,
        ..Default::default()
    };
    let mut ignored = Vec::new();
    let Some((shadow, _)) = authz::custom_shadow_rbac(cx, &only, true, &mut ignored) else {
        return Vec::new();
    };
    for p in only.custom.iter().filter(|_| tcp_chains) {
        diagnostics.push(p.warning(
            "spec.provider.name",
            "TCP connections are not sent to an external authorizer (the network ext_authz filter is not served); the TCP connections this policy matches are refused",
        ));
    }
    let config = network_rbac::Rbac {
        stat_prefix: authz::TCP_STAT_PREFIX.into(),
        rules: Some(bad_custom_deny(&shadow.shadow_rules.unwrap_or_default())),
        ..Default::default()
    };
    vec![listener::Filter {
        name: authz::NETWORK_RBAC_FILTER.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pb::any(&config))),
    }]
}

fn rbac_filter(config: &http_rbac::Rbac) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: RBAC_FILTER_NAME.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(config))),
        ..Default::default()
    }
}

/// istiod's `getBadCustomDenyRules`: the CUSTOM policies as DENY rules.
fn bad_custom_deny(rules: &rbac::Rbac) -> rbac::Rbac {
    rbac::Rbac {
        action: rbac::rbac::Action::Deny as i32,
        policies: rules
            .policies
            .iter()
            .map(|(k, v)| (format!("{k}{BAD_CUSTOM_SUFFIX}"), v.clone()))
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "ext_authz_tests.rs"]
mod tests;
