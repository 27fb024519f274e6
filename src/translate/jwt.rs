//! RequestAuthentication -> Envoy's `envoy.filters.http.jwt_authn`, as istiod builds it
//! (`pilot/pkg/security/authn/policy_applier.go`, `convertToEnvoyJwtConfig`).
//!
//! - The policies of a workload: every RequestAuthentication of its namespace and of the
//!   root namespace whose selector is empty or a subset of its labels (istiod's
//!   `getConfigsForWorkload`); their rules together, stably sorted by issuer.
//! - One provider per rule, `origins-<i>`: issuer, audiences, token locations (none
//!   given: Envoy's default `Authorization: Bearer` and `access_token`), `forward`,
//!   `forward_payload_header`, `claim_to_headers`, `payload_in_metadata: <issuer>` (the
//!   verified payload in dynamic metadata `envoy.filters.http.jwt_authn`, key = the
//!   issuer, where authorization reads it), and `normalize_payload_in_metadata` splitting
//!   `scope`, `permission` and the rule's `spaceDelimitedClaims` on spaces.
//! - One rule for `/`: with one provider `requires_any [origins-0, allow_missing]`;
//!   with several `requires_any [origins-0, .., requires_all [any [origins-i,
//!   allow_missing]...]]`. A missing token passes on, an invalid one is refused (401).
//!   CORS preflights pass.
//! - Keys: `jwks` inline becomes `local_jwks`; `jwksUri` becomes `remote_jwks` fetched
//!   by the proxy from a cluster this translation adds, `jwks|HOST|PORT` (STATIC for an
//!   IP, STRICT_DNS otherwise, TLS with the system's roots and the host's name checked for
//!   `https`), cached for `cache_duration` (Istio's 5 minutes, or the policy's
//!   `meshgate.io/jwks-cache-duration` annotation) and fetched in the background
//!   (`async_fetch` with `fast_listener`: listeners do not wait for it).
//!
//! Where istiod differs: it names the JWKS host's mesh cluster when a ServiceEntry
//! declares it, or fetches the keys itself and inlines them; a translation is a pure
//! function, so the proxy fetches, from its own cluster. The payload key is the issuer
//! (the contract with authorization), as istiod wrote it before it moved to `payload`.
use super::cluster as clusters;
use super::names;
use super::pb;
use super::scope::ROOT_NAMESPACE;
use crate::config::types::request_authentication::{JwksUri, JwtRule};
use crate::config::{Config, Diagnostic, Duration, RequestAuthentication, Resource};
use crate::xds::pb::envoy::config::cluster::v3 as cluster;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::endpoint::v3 as endpoint;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use prost::Message;
use std::collections::{BTreeMap, HashMap};

/// The filter's name, and the dynamic metadata namespace of verified payloads.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// How long fetched keys are kept (istiod's `remote_jwks.cache_duration`).
pub const DEFAULT_JWKS_CACHE_DURATION: std::time::Duration = std::time::Duration::from_secs(300);
/// How long a key fetch may take when the rule sets no `timeout` (istiod's 5s).
pub const DEFAULT_JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The annotation that sets `cache_duration` for a policy's remote keys.
pub const CACHE_DURATION_ANNOTATION: &str = "meshgate.io/jwks-cache-duration";
/// Claims istiod always has split on spaces in the verified payload.
const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["permission", "scope"];
/// The names of the filters the JWT filter goes before (the first found), so that it
/// runs after `ext_authz` (CUSTOM) and before RBAC, as in istiod's chains.
const BEFORE: [&str; 4] = [
    "envoy.filters.http.rbac",
    super::http_route::FAULT_FILTER,
    super::http_route::CORS_FILTER,
    super::listener::ROUTER_FILTER,
];

/// One rule and the policy it came from.
#[derive(Clone, Copy)]
pub struct PolicyRule<'a> {
    pub policy: &'a Resource<RequestAuthentication>,
    pub rule: &'a JwtRule,
}

/// The rules in force for a workload with `labels` in `namespace`, sorted by issuer.
pub fn rules_for_workload<'a>(
    config: &'a Config,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<PolicyRule<'a>> {
    let mut out: Vec<PolicyRule<'a>> = config
        .request_authentications
        .iter()
        .filter(|p| p.meta.namespace == namespace || p.meta.namespace == ROOT_NAMESPACE)
        .filter(|p| p.spec.selects(labels))
        .flat_map(|p| {
            p.spec
                .jwt_rules
                .iter()
                .map(move |rule| PolicyRule { policy: p, rule })
        })
        .collect();
    out.sort_by(|a, b| a.rule.issuer.cmp(&b.rule.issuer));
    out
}

/// What the rules of one workload translate to: the filter and the JWKS clusters.
#[derive(Debug, Clone, Default)]
pub struct JwtPolicy {
    pub filter: Option<hcm::HttpFilter>,
    pub clusters: Vec<cluster::Cluster>,
}

/// Translates a workload's rules (empty: no filter, no clusters).
pub fn translate(
    rules: &[PolicyRule],
    connect_timeout: std::time::Duration,
    diagnostics: &mut Vec<Diagnostic>,
) -> JwtPolicy {
    if rules.is_empty() {
        return JwtPolicy::default();
    }
    let mut providers = HashMap::new();
    let mut clusters: BTreeMap<String, cluster::Cluster> = BTreeMap::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, pr) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let Some(provider) = provider(pr, connect_timeout, &mut clusters, diagnostics) else {
            continue;
        };
        providers.insert(name.clone(), provider);
        inner_and.push(requires_any(vec![
            provider_requirement(&name),
            allow_missing(),
        ]));
        outer_or.push(provider_requirement(&name));
    }
    if providers.is_empty() {
        return JwtPolicy::default();
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(jwt::JwtRequirement {
            requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAll(
                jwt::JwtRequirementAndList {
                    requirements: inner_and,
                },
            )),
        });
        requires_any(outer_or)
    };
    let config = jwt::JwtAuthentication {
        providers,
        rules: vec![jwt::RequirementRule {
            r#match: Some(route::RouteMatch {
                path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    JwtPolicy {
        filter: Some(hcm::HttpFilter {
            name: JWT_AUTHN_FILTER.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(&config))),
            ..Default::default()
        }),
        clusters: clusters.into_values().collect(),
    }
}

fn provider_requirement(name: &str) -> jwt::JwtRequirement {
    jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(
            name.to_string(),
        )),
    }
}

fn allow_missing() -> jwt::JwtRequirement {
    jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    }
}

fn requires_any(requirements: Vec<jwt::JwtRequirement>) -> jwt::JwtRequirement {
    jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
            jwt::JwtRequirementOrList { requirements },
        )),
    }
}

/// The provider of one rule, or None (with an error) when its keys cannot be had.
fn provider(
    pr: &PolicyRule,
    connect_timeout: std::time::Duration,
    clusters: &mut BTreeMap<String, cluster::Cluster>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<jwt::JwtProvider> {
    let rule = pr.rule;
    let mut claims: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS
        .iter()
        .map(|c| c.to_string())
        .chain(rule.space_delimited_claims.iter().cloned())
        .collect();
    claims.sort();
    claims.dedup();
    let mut p = jwt::JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: rule.issuer.clone(),
        normalize_payload_in_metadata: Some(jwt::jwt_provider::NormalizePayload {
            space_delimited_claims: claims,
        }),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| jwt::JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| jwt::JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    if !rule.jwks.is_empty() {
        p.jwks_source_specifier = Some(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
            core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(
                    rule.jwks.clone(),
                )),
                ..Default::default()
            },
        ));
        return Some(p);
    }
    let uri = match JwksUri::parse(&rule.jwks_uri) {
        Ok(u) => u,
        Err(e) => {
            diagnostics.push(pr.policy.error("spec.jwtRules.jwksUri", e));
            return None;
        }
    };
    let cache_duration = match pr.policy.meta.annotations.get(CACHE_DURATION_ANNOTATION) {
        None => DEFAULT_JWKS_CACHE_DURATION,
        Some(v) => match Duration::parse(v) {
            Ok(d) if !d.get().is_zero() => d.get(),
            _ => {
                diagnostics.push(pr.policy.error(
                    &format!("metadata.annotations.{CACHE_DURATION_ANNOTATION}"),
                    format!("`{v}` is not a duration such as `300s` or `5m`"),
                ));
                return None;
            }
        },
    };
    let name = jwks_cluster_name(&uri);
    clusters
        .entry(name.clone())
        .or_insert_with(|| jwks_cluster(&name, &uri, connect_timeout));
    p.jwks_source_specifier = Some(jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(
        jwt::RemoteJwks {
            http_uri: Some(core::HttpUri {
                uri: rule.jwks_uri.clone(),
                timeout: Some(pb::duration(
                    rule.timeout
                        .map(|t| t.get())
                        .unwrap_or(DEFAULT_JWKS_TIMEOUT),
                )),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(name)),
            }),
            cache_duration: Some(pb::duration(cache_duration)),
            async_fetch: Some(jwt::JwksAsyncFetch {
                fast_listener: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    Some(p)
}

/// `jwks|HOST|PORT`.
pub fn jwks_cluster_name(uri: &JwksUri) -> String {
    format!("jwks|{}|{}", uri.host, uri.port)
}

/// The cluster keys are fetched from.
fn jwks_cluster(
    name: &str,
    uri: &JwksUri,
    connect_timeout: std::time::Duration,
) -> cluster::Cluster {
    let ip = uri.host.parse::<std::net::IpAddr>().is_ok();
    let discovery = if ip {
        cluster::cluster::DiscoveryType::Static
    } else {
        cluster::cluster::DiscoveryType::StrictDns
    };
    let mut c = cluster::Cluster {
        name: name.to_string(),
        alt_stat_name: names::delimited_stat_prefix(name),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            discovery as i32,
        )),
        connect_timeout: Some(pb::duration(connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(pb::socket_address(&uri.host, u32::from(uri.port))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    if !ip {
        clusters::set_dns_options(&mut c);
    }
    if uri.https {
        let san = (!ip).then(|| tls::SubjectAltNameMatcher {
            san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                    uri.host.clone(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        });
        let ctx = tls::UpstreamTlsContext {
            sni: if ip { String::new() } else { uri.host.clone() },
            common_tls_context: Some(tls::CommonTlsContext {
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::ValidationContext(
                        tls::CertificateValidationContext {
                            system_root_certs: Some(
                                tls::certificate_validation_context::SystemRootCerts {},
                            ),
                            match_typed_subject_alt_names: san.into_iter().collect(),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.transport_socket = Some(super::tls::transport_socket(&ctx));
    }
    c
}

/// Puts the JWT filter into an HTTP connection manager network filter, before RBAC (or
/// fault, CORS, the router: the first found), after anything else (ext_authz).
pub fn insert_filter(
    network_filter: &mut crate::xds::pb::envoy::config::listener::v3::Filter,
    jwt_filter: &hcm::HttpFilter,
) {
    use crate::xds::pb::envoy::config::listener::v3::filter::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &mut network_filter.config_type else {
        return;
    };
    let Ok(mut manager) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
        return;
    };
    insert_into(&mut manager, jwt_filter);
    any.value = manager.encode_to_vec();
}

/// Puts the JWT filter into every HTTP connection manager of a listener.
pub fn apply_to_listener(
    l: &mut crate::xds::pb::envoy::config::listener::v3::Listener,
    jwt_filter: &hcm::HttpFilter,
) {
    for chain in l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut())
    {
        for f in chain.filters.iter_mut() {
            if f.name == super::listener::HTTP_CONNECTION_MANAGER {
                insert_filter(f, jwt_filter);
            }
        }
    }
}

/// Puts the JWT filter into a connection manager's filter list (see [`insert_filter`]).
pub fn insert_into(manager: &mut hcm::HttpConnectionManager, jwt_filter: &hcm::HttpFilter) {
    let at = manager
        .http_filters
        .iter()
        .position(|f| BEFORE.contains(&f.name.as_str()))
        .unwrap_or(manager.http_filters.len());
    manager.http_filters.insert(at, jwt_filter.clone());
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
