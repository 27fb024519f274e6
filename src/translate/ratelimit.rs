//! `RateLimitPolicy` -> Envoy: the rate limit filters of the connection managers that
//! serve what a policy attaches to.
//!
//! Every rule becomes one `RateLimit` whose actions produce the descriptor
//! `("meshgate.io/rule", "NS/POLICY/RULE")` followed by one entry per condition (client
//! address `remote_address`, a CIDR `masked_remote_address`, header `header:NAME`, path
//! `path`, principal `principal`, JWT claim `claim:NAME`).
//!
//! - `Local`: `envoy.filters.http.local_ratelimit` configs that carry their own
//!   `rate_limits` and one token bucket per rule (`descriptors`; a `Distinct` condition
//!   is a wildcard entry, one bucket per value). Each level has its own filter instance,
//!   so that every policy attached at any level applies (a route's own limit does not
//!   lift its Gateway's) and each keeps its own buckets: Gateway and workload policies
//!   in the filter config of the connection manager (one bucket per listener, every
//!   request, 404s included); host policies in virtual host configs of the instance
//!   [`LOCAL_RATELIMIT_HOST_FILTER`]; route policies in route configs of the instance
//!   [`LOCAL_RATELIMIT_ROUTE_FILTER`] (one bucket per Envoy route, as Envoy keeps them).
//! - `Global`: `envoy.filters.http.ratelimit` (domain [`DOMAIN`]) asks the rate-limit
//!   service over gRPC (cluster [`RATELIMIT_CLUSTER`]) with the actions every covering
//!   policy put on the route (stage 0); the limits it enforces are [`limit_table`]'s.
use super::pb;
use crate::config::types::rate_limit_policy::{
    ClientSelector, MatchType, Mode, PathMatchType, RateLimitPolicy, Rule, TargetKind,
};
use crate::config::types::{Resource, VirtualService};
use crate::config::{Config, Diagnostic};
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3 as listener;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::common::ratelimit::v3 as rl_common;
use crate::xds::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use crate::xds::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as GlobalFilter;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::r#type::v3 as types;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Name of Envoy's local rate limit filter.
pub const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// The local rate limit filter instance that reads host (virtual host) configs.
pub const LOCAL_RATELIMIT_HOST_FILTER: &str = "envoy.filters.http.local_ratelimit.host";
/// The local rate limit filter instance that reads route configs.
pub const LOCAL_RATELIMIT_ROUTE_FILTER: &str = "envoy.filters.http.local_ratelimit.route";
/// Name of Envoy's global rate limit filter.
pub const RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
/// The rate-limit service domain of every global rule.
pub const DOMAIN: &str = crate::ratelimit::DOMAIN;
/// The cluster of the rate-limit service.
pub const RATELIMIT_CLUSTER: &str = crate::ratelimit::CLUSTER;
/// The first descriptor entry's key: which rule.
pub const RULE_KEY: &str = crate::ratelimit::RULE_KEY;
/// Distinct values kept per `Distinct` rule (Envoy's `max_dynamic_descriptors`; least
/// recently used values are forgotten beyond it, starting again with a full bucket).
pub const MAX_DYNAMIC_DESCRIPTORS: u32 = 10_000;
/// Stat prefix of the local filter: `<prefix>.http_local_rate_limit.*`.
pub const LOCAL_STAT_PREFIX: &str = "meshgate_local_rate_limit";
/// Dynamic metadata namespace of verified JWT payloads (keyed by issuer).
pub const JWT_METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The CEL expression giving the peer certificate's first URI SAN.
pub const PRINCIPAL_EXPR: &str = "connection.uri_san_peer_certificate";
/// Type URL of the CEL descriptor extension.
pub const EXPR_DESCRIPTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor";
/// Name of the CEL descriptor extension.
pub const EXPR_DESCRIPTOR_NAME: &str = "envoy.rate_limit_descriptors.expr";

/// One rule, ready to translate.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `NS/POLICY/RULE`, the first descriptor entry's value.
    pub id: String,
    pub mode: Mode,
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
    /// The route actions producing the descriptor.
    pub actions: Vec<route::rate_limit::Action>,
    /// The descriptor's entries as configured (empty value: one bucket per value).
    pub entries: Vec<(String, String)>,
}

impl CompiledRule {
    /// The route `rate_limits` entry.
    fn rate_limit(&self) -> route::RateLimit {
        route::RateLimit {
            actions: self.actions.clone(),
            ..Default::default()
        }
    }

    /// The `rate_limits` entry of a local filter config (which reads its own).
    fn embedded_rate_limit(&self) -> route::RateLimit {
        route::RateLimit {
            actions: self.actions.clone(),
            ..Default::default()
        }
    }

    /// The local filter's descriptor with its token bucket.
    fn descriptor(&self) -> rl_common::LocalRateLimitDescriptor {
        rl_common::LocalRateLimitDescriptor {
            entries: self
                .entries
                .iter()
                .map(|(k, v)| crate::xds::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            token_bucket: Some(token_bucket(self.requests, self.per, self.burst)),
            ..Default::default()
        }
    }

    /// The IETF `RateLimit-Policy` item: quota per window of whole seconds.
    fn policy_item(&self) -> String {
        let ms = self.per.as_millis().max(1) as u64;
        let (q, w) = if ms.is_multiple_of(1000) {
            (self.requests, ms / 1000)
        } else {
            ((self.requests.saturating_mul(1000) / ms).max(1), 1)
        };
        format!("\"{}\";q={q};w={w}", self.id)
    }
}

/// A token bucket: `burst` tokens at most, `requests` added every `per`.
pub fn token_bucket(requests: u64, per: Duration, burst: u64) -> types::TokenBucket {
    types::TokenBucket {
        max_tokens: u32::try_from(burst).unwrap_or(u32::MAX),
        tokens_per_fill: Some(pb::u32v(u32::try_from(requests).unwrap_or(u32::MAX))),
        fill_interval: Some(pb::duration(per)),
    }
}

/// The rules of one policy. Rules whose conditions cannot be expressed are left out with
/// an error (validation reports them first).
pub fn compile_policy(p: &Resource<RateLimitPolicy>) -> Vec<CompiledRule> {
    let mode = p.spec.mode();
    p.spec
        .rules()
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            let id = format!("{}/{}/{}", p.meta.namespace, p.meta.name, rule.id(i));
            compile_rule(id, mode, rule)
        })
        .collect()
}

fn compile_rule(id: String, mode: Mode, rule: &Rule) -> Option<CompiledRule> {
    use route::rate_limit::action::ActionSpecifier as A;
    use route::rate_limit::action::{
        GenericKey, HeaderValueMatch, MaskedRemoteAddress, MetaData, RemoteAddress, RequestHeaders,
    };
    let mut actions = vec![route::rate_limit::Action {
        action_specifier: Some(A::GenericKey(GenericKey {
            descriptor_key: RULE_KEY.into(),
            descriptor_value: id.clone(),
            ..Default::default()
        })),
    }];
    let mut entries = vec![(RULE_KEY.to_string(), id.clone())];
    let mut push = |a: A, key: String, value: String| {
        actions.push(route::rate_limit::Action {
            action_specifier: Some(a),
        });
        entries.push((key, value));
    };
    for sel in &rule.client_selectors {
        let ClientSelector {
            headers,
            source_cidr,
            path,
            principal,
            jwt_claim,
        } = sel;
        for h in headers {
            let name = h.name.to_ascii_lowercase();
            let key = format!("header:{name}");
            match (h.match_type, &h.value) {
                (MatchType::Exact, Some(v)) => push(
                    A::HeaderValueMatch(HeaderValueMatch {
                        descriptor_key: key.clone(),
                        descriptor_value: v.clone(),
                        expect_match: Some(pb::boolv(true)),
                        headers: vec![route::HeaderMatcher {
                            name: name.clone(),
                            header_match_specifier: Some(
                                route::header_matcher::HeaderMatchSpecifier::StringMatch(
                                    pb::exact(v),
                                ),
                            ),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    key,
                    v.clone(),
                ),
                (MatchType::Distinct, _) => push(
                    A::RequestHeaders(RequestHeaders {
                        header_name: name,
                        descriptor_key: key.clone(),
                        skip_if_absent: false,
                    }),
                    key,
                    String::new(),
                ),
                (MatchType::Exact, None) => return None,
            }
        }
        if let Some(src) = source_cidr {
            match (src.match_type, &src.value) {
                (MatchType::Exact, Some(v)) => {
                    let (ip, len) =
                        crate::config::validate::rate_limit_policy::parse_cidr(v).ok()?;
                    let (v4, v6) = if ip.is_ipv4() {
                        (u32::from(len), 128)
                    } else {
                        (32, u32::from(len))
                    };
                    push(
                        A::MaskedRemoteAddress(MaskedRemoteAddress {
                            v4_prefix_mask_len: Some(pb::u32v(v4)),
                            v6_prefix_mask_len: Some(pb::u32v(v6)),
                        }),
                        "masked_remote_address".into(),
                        format!("{}/{len}", network(ip, len)),
                    );
                }
                (MatchType::Distinct, _) => push(
                    A::RemoteAddress(RemoteAddress {}),
                    "remote_address".into(),
                    String::new(),
                ),
                (MatchType::Exact, None) => return None,
            }
        }
        if let Some(p) = path {
            match (p.match_type, &p.value) {
                (PathMatchType::Distinct, _) => push(
                    A::RequestHeaders(RequestHeaders {
                        header_name: ":path".into(),
                        descriptor_key: "path".into(),
                        skip_if_absent: false,
                    }),
                    "path".into(),
                    String::new(),
                ),
                (t, Some(v)) => {
                    let re = path_regex(t, v);
                    push(
                        A::HeaderValueMatch(HeaderValueMatch {
                            descriptor_key: "path".into(),
                            descriptor_value: v.clone(),
                            expect_match: Some(pb::boolv(true)),
                            headers: vec![route::HeaderMatcher {
                                name: ":path".into(),
                                header_match_specifier: Some(
                                    route::header_matcher::HeaderMatchSpecifier::StringMatch(
                                        crate::xds::pb::envoy::r#type::matcher::v3::StringMatcher {
                                            match_pattern: Some(crate::xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::SafeRegex(pb::regex(&re))),
                                            ..Default::default()
                                        },
                                    ),
                                ),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        "path".into(),
                        v.clone(),
                    );
                }
                (_, None) => return None,
            }
        }
        if let Some(p) = principal {
            let ext = crate::xds::pb::envoy::extensions::rate_limit_descriptors::expr::v3::Descriptor {
                descriptor_key: "principal".into(),
                skip_if_error: false,
                expr_specifier: Some(crate::xds::pb::envoy::extensions::rate_limit_descriptors::expr::v3::descriptor::ExprSpecifier::Text(PRINCIPAL_EXPR.into())),
            };
            let value = match (p.match_type, &p.value) {
                (MatchType::Exact, Some(v)) => format!("spiffe://{v}"),
                (MatchType::Distinct, _) => String::new(),
                (MatchType::Exact, None) => return None,
            };
            push(
                A::Extension(core::TypedExtensionConfig {
                    name: EXPR_DESCRIPTOR_NAME.into(),
                    typed_config: Some(pb::any(&ext)),
                }),
                "principal".into(),
                value,
            );
        }
        if let Some(c) = jwt_claim {
            let key = format!("claim:{}", c.claim);
            let value = match (c.match_type, &c.value) {
                (MatchType::Exact, Some(v)) => v.clone(),
                (MatchType::Distinct, _) => String::new(),
                (MatchType::Exact, None) => return None,
            };
            use crate::xds::pb::envoy::r#type::metadata::v3 as md;
            let seg = |k: &str| md::metadata_key::PathSegment {
                segment: Some(md::metadata_key::path_segment::Segment::Key(k.into())),
            };
            push(
                A::Metadata(MetaData {
                    descriptor_key: key.clone(),
                    metadata_key: Some(md::MetadataKey {
                        key: JWT_METADATA_NAMESPACE.into(),
                        path: vec![seg(&c.issuer), seg(&c.claim)],
                    }),
                    source: route::rate_limit::action::meta_data::Source::Dynamic as i32,
                    ..Default::default()
                }),
                key,
                value,
            );
        }
    }
    Some(CompiledRule {
        id,
        mode,
        requests: rule.limit.requests,
        per: rule.limit.period(),
        burst: rule.limit.burst(),
        actions,
        entries,
    })
}

/// The network address of `ip/len`.
fn network(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            std::net::IpAddr::V4((bits & mask).into())
        }
        std::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            std::net::IpAddr::V6((bits & mask).into())
        }
    }
}

/// A regex over `:path` (query included) for an Exact or PathPrefix path condition.
fn path_regex(t: PathMatchType, v: &str) -> String {
    let escaped = regex::escape(v);
    match t {
        PathMatchType::PathPrefix if v == "/" => "/.*".to_string(),
        PathMatchType::PathPrefix => format!("{escaped}([/?].*)?"),
        _ => format!("{escaped}(\\?.*)?"),
    }
}

/// The local rate limit config counting `rules` with the request descriptors of its own
/// `rate_limits`. `per_route` configs must carry a default token bucket (Envoy requires
/// one): it admits everything, and only counts requests no rule matched.
pub fn local_filter_config(rules: &[&CompiledRule], per_route: bool) -> LocalRateLimit {
    let hundred = || core::RuntimeFractionalPercent {
        default_value: Some(pb::percent_of_hundred(100)),
        runtime_key: String::new(),
    };
    let mut response_headers_to_add = Vec::new();
    if !rules.is_empty() {
        let items: Vec<String> = rules.iter().map(|r| r.policy_item()).collect();
        response_headers_to_add.push(pb::header_value_option(
            "ratelimit-policy",
            &items.join(", "),
            false,
        ));
        // A 429 means the rule that refused has nothing left; which rule that was is
        // only known statically when there is one.
        if let [one] = rules {
            response_headers_to_add.push(pb::header_value_option(
                "ratelimit",
                &format!("\"{}\";r=0", one.id),
                false,
            ));
        }
    }
    LocalRateLimit {
        stat_prefix: LOCAL_STAT_PREFIX.into(),
        token_bucket: per_route.then(|| types::TokenBucket {
            max_tokens: u32::MAX,
            tokens_per_fill: Some(pb::u32v(u32::MAX)),
            fill_interval: Some(pb::duration(Duration::from_secs(1))),
        }),
        filter_enabled: Some(hundred()),
        filter_enforced: Some(hundred()),
        response_headers_to_add,
        descriptors: rules.iter().map(|r| r.descriptor()).collect(),
        local_rate_limit_per_downstream_connection: false,
        enable_x_ratelimit_headers: rl_common::XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        always_consume_default_token_bucket: Some(pb::boolv(false)),
        rate_limits: rules.iter().map(|r| r.embedded_rate_limit()).collect(),
        max_dynamic_descriptors: Some(pb::u32v(MAX_DYNAMIC_DESCRIPTORS)),
        enable_retry_after_header: true,
        ..Default::default()
    }
}

/// The global rate limit filter: the rate-limit service decides, `deny` says what
/// happens when it cannot.
pub fn global_filter_config(deny: bool) -> GlobalFilter {
    use crate::xds::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
    GlobalFilter {
        domain: DOMAIN.into(),
        stage: 0,
        failure_mode_deny: deny,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(core::GrpcService {
                target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core::grpc_service::EnvoyGrpc {
                        cluster_name: RATELIMIT_CLUSTER.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: core::ApiVersion::V3 as i32,
        }),
        enable_x_ratelimit_headers: rl_common::XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        ..Default::default()
    }
}

/// The limits the rate-limit service enforces, one per global rule, by rule id. The
/// service keys its buckets by the whole descriptor, so a `Distinct` rule counts each
/// value on its own.
pub fn limit_table(config: &Config) -> crate::ratelimit::LimitTable {
    config
        .rate_limit_policies
        .iter()
        .filter(|p| p.spec.mode() == Mode::Global)
        .flat_map(compile_policy)
        .map(|r| {
            let limit = crate::ratelimit::Limit {
                requests: r.requests,
                per: r.per,
                burst: r.burst,
            };
            (r.id, limit)
        })
        .collect()
}

/// A policy's rules.
struct Attached {
    rules: Vec<CompiledRule>,
    failure_deny: bool,
    policy: usize,
}

/// The policies by attachment.
#[derive(Default)]
struct Index {
    attached: Vec<Attached>,
    /// `ns/name` of a Gateway -> policies.
    gateways: BTreeMap<String, Vec<usize>>,
    /// (`ns/name` of a Gateway, hostname) -> policies.
    hosts: Vec<(String, String, usize)>,
    /// (vs namespace, vs name, route name or None) -> policies.
    routes: Vec<(String, String, Option<String>, usize)>,
}

impl Index {
    fn new(config: &Config) -> Index {
        let mut ix = Index::default();
        for (pi, p) in config.rate_limit_policies.iter().enumerate() {
            let a = ix.attached.len();
            ix.attached.push(Attached {
                rules: compile_policy(p),
                failure_deny: p
                    .spec
                    .global
                    .as_ref()
                    .and_then(|g| g.failure_mode)
                    .is_some_and(|m| {
                        m == crate::config::types::rate_limit_policy::FailureMode::Closed
                    }),
                policy: pi,
            });
            for t in &p.spec.target_refs {
                let ns = t
                    .namespace
                    .clone()
                    .unwrap_or_else(|| p.meta.namespace.clone());
                match (t.kind, &t.hostname) {
                    (TargetKind::Gateway, None) => ix
                        .gateways
                        .entry(format!("{ns}/{}", t.name))
                        .or_default()
                        .push(a),
                    (TargetKind::Gateway, Some(h)) => {
                        ix.hosts
                            .push((format!("{ns}/{}", t.name), h.to_ascii_lowercase(), a))
                    }
                    (TargetKind::VirtualService, _) => {
                        ix.routes.push((ns, t.name.clone(), t.route.clone(), a))
                    }
                }
            }
        }
        ix
    }

    fn rules(&self, policies: &[usize], mode: Mode) -> Vec<&CompiledRule> {
        policies
            .iter()
            .flat_map(|a| self.attached[*a].rules.iter())
            .filter(|r| r.mode == mode)
            .collect()
    }
}

/// The VirtualService an Envoy route was built from, from its `istio.config` metadata.
fn route_origin(r: &route::Route) -> Option<(&str, &str)> {
    let v = r
        .metadata
        .as_ref()?
        .filter_metadata
        .get("istio")?
        .fields
        .get("config")?;
    let Some(crate::xds::pb::google::protobuf::value::Kind::StringValue(s)) = &v.kind else {
        return None;
    };
    let rest = s.strip_prefix("/apis/networking.istio.io/v1/namespaces/")?;
    let (ns, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("virtual-service/")?;
    Some((ns, name))
}

/// Whether the Envoy route `envoy_name` was built from the HTTP route `http_name` of
/// `vs` (Envoy names are the HTTP route's name, `.MATCH` appended for named matches).
fn is_route_of(vs: &VirtualService, envoy_name: &str, http_name: &str) -> bool {
    if envoy_name == http_name {
        return true;
    }
    vs.http.iter().filter(|h| h.name == http_name).any(|h| {
        h.matches
            .iter()
            .any(|m| !m.name.is_empty() && envoy_name == format!("{http_name}.{}", m.name))
    })
}

/// What a route configuration's routes ended up carrying.
#[derive(Default, Clone)]
struct Carried {
    host_configs: bool,
    route_configs: bool,
    /// Policies with global rules on its routes.
    global: BTreeSet<usize>,
}

/// Adds the policies to a gateway proxy: `served` says, per route configuration name,
/// which Gateways (`ns/name`) serve it.
pub fn apply_gateway(
    config: &Config,
    served: &BTreeMap<String, BTreeSet<String>>,
    resources: &mut ResourceSet,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if config.rate_limit_policies.is_empty() {
        return;
    }
    let ix = Index::new(config);
    let empty = BTreeSet::new();
    let mut carried: BTreeMap<String, Carried> = BTreeMap::new();
    for rc in &mut resources.routes {
        let gateways = served.get(&rc.name).unwrap_or(&empty);
        let c = decorate_route_config(config, &ix, rc, gateways, diagnostics);
        carried.insert(rc.name.clone(), c);
    }
    for (rc, gateways) in served {
        if gateways.len() < 2 {
            continue;
        }
        for g in gateways {
            for a in ix.gateways.get(g).into_iter().flatten() {
                let p = &config.rate_limit_policies[ix.attached[*a].policy];
                diagnostics.push(p.warning(
                    "spec.targetRefs",
                    format!(
                        "Gateway {g} shares its listener ({rc}) with {}: Envoy has one connection manager there, so the limit covers their servers too",
                        gateways.iter().filter(|o| *o != g).cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    let mut global = false;
    for l in &mut resources.listeners {
        for chain in &mut l.filter_chains {
            for f in &mut chain.filters {
                with_hcm(f, |manager| {
                    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) =
                        &manager.route_specifier
                    else {
                        return;
                    };
                    let c = carried
                        .get(&rds.route_config_name)
                        .cloned()
                        .unwrap_or_default();
                    let level: Vec<usize> = served
                        .get(&rds.route_config_name)
                        .into_iter()
                        .flatten()
                        .flat_map(|g| ix.gateways.get(g).into_iter().flatten().copied())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    global |= add_filters(config, &ix, manager, &level, &c, diagnostics);
                });
            }
        }
    }
    if global {
        add_service_cluster(resources);
    }
}

/// Adds the policies to a sidecar: VirtualService route attachments on its outbound
/// routes, workload (`selector`) policies on every request of its inbound listener.
pub fn apply_sidecar(
    config: &Config,
    proxy: &crate::xds::ProxyIdentity,
    inbound_listener: &str,
    resources: &mut ResourceSet,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if config.rate_limit_policies.is_empty() {
        return;
    }
    let ix = Index::new(config);
    let workload: Vec<usize> = ix
        .attached
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            let p = &config.rate_limit_policies[a.policy];
            p.meta.namespace == proxy.namespace
                && p.spec.selector.as_ref().is_some_and(|s| {
                    s.match_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
                })
        })
        .map(|(i, _)| i)
        .collect();
    let empty = BTreeSet::new();
    let mut carried: BTreeMap<String, Carried> = BTreeMap::new();
    for rc in &mut resources.routes {
        let c = decorate_route_config(config, &ix, rc, &empty, diagnostics);
        carried.insert(rc.name.clone(), c);
    }
    let mut global = false;
    for l in &mut resources.listeners {
        let inbound = l.name == inbound_listener;
        for chain in &mut l.filter_chains {
            for f in &mut chain.filters {
                with_hcm(f, |manager| {
                    let c = match &manager.route_specifier {
                        Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) => carried
                            .get(&rds.route_config_name)
                            .cloned()
                            .unwrap_or_default(),
                        _ => Carried::default(),
                    };
                    let level: &[usize] = if inbound { &workload } else { &[] };
                    global |= add_filters(config, &ix, manager, level, &c, diagnostics);
                });
            }
        }
    }
    if global {
        add_service_cluster(resources);
    }
}

/// Sets the local configs of host and route policies on virtual hosts and routes, and
/// appends the global rules' actions to the routes they cover.
fn decorate_route_config(
    config: &Config,
    ix: &Index,
    rc: &mut route::RouteConfiguration,
    gateways: &BTreeSet<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Carried {
    let mut carried = Carried::default();
    split_host_attachments(ix, rc, gateways);
    let gateway_level: Vec<usize> = gateways
        .iter()
        .flat_map(|g| ix.gateways.get(g).into_iter().flatten().copied())
        .collect();
    for vh in &mut rc.virtual_hosts {
        let host_policies: Vec<usize> = ix
            .hosts
            .iter()
            .filter(|(g, h, _)| {
                gateways.contains(g)
                    && !vh.domains.is_empty()
                    && vh
                        .domains
                        .iter()
                        .all(|d| crate::config::hosts::is_subset_of(d, h))
            })
            .map(|(_, _, a)| *a)
            .collect();
        let local = ix.rules(&host_policies, Mode::Local);
        if !local.is_empty() {
            vh.typed_per_filter_config.insert(
                LOCAL_RATELIMIT_HOST_FILTER.into(),
                pb::any(&local_filter_config(&local, true)),
            );
            carried.host_configs = true;
        }
        for r in &mut vh.routes {
            let mut route_policies: Vec<usize> = Vec::new();
            if let Some((ns, name)) = route_origin(r) {
                let vs = config
                    .virtual_services
                    .iter()
                    .find(|v| v.meta.namespace == ns && v.meta.name == name);
                for (vns, vname, http, a) in &ix.routes {
                    if vns == ns
                        && vname == name
                        && http
                            .as_deref()
                            .is_none_or(|h| vs.is_some_and(|v| is_route_of(&v.spec, &r.name, h)))
                    {
                        route_policies.push(*a);
                    }
                }
            }
            let local = ix.rules(&route_policies, Mode::Local);
            if !local.is_empty() {
                r.typed_per_filter_config.insert(
                    LOCAL_RATELIMIT_ROUTE_FILTER.into(),
                    pb::any(&local_filter_config(&local, true)),
                );
                carried.route_configs = true;
            }
            // Global rules of every level go on the route's actions.
            let mut global: Vec<usize> = gateway_level
                .iter()
                .chain(&host_policies)
                .chain(&route_policies)
                .copied()
                .filter(|a| ix.attached[*a].rules.iter().any(|r| r.mode == Mode::Global))
                .collect();
            global.sort();
            global.dedup();
            if global.is_empty() {
                continue;
            }
            let Some(route::route::Action::Route(action)) = &mut r.action else {
                for a in &global {
                    let p = &config.rate_limit_policies[ix.attached[*a].policy];
                    diagnostics.push(p.warning(
                        "spec",
                        format!(
                            "route `{}` of {} answers without forwarding (redirect or direct response): Envoy asks the rate-limit service only for forwarding routes, so this global policy does not limit it",
                            r.name, rc.name
                        ),
                    ));
                }
                continue;
            };
            for a in &global {
                for rule in ix.attached[*a]
                    .rules
                    .iter()
                    .filter(|r| r.mode == Mode::Global)
                {
                    action.rate_limits.push(rule.rate_limit());
                }
                carried.global.insert(*a);
            }
        }
    }
    carried
}

/// Gives the hosts a host policy covers virtual hosts of their own where Istio's route
/// collapse merged them with other hosts (identical routes), so that the policy lands
/// on their requests only.
fn split_host_attachments(
    ix: &Index,
    rc: &mut route::RouteConfiguration,
    gateways: &BTreeSet<String>,
) {
    let hosts: Vec<&str> = ix
        .hosts
        .iter()
        .filter(|(g, _, _)| gateways.contains(g))
        .map(|(_, h, _)| h.as_str())
        .collect();
    if hosts.is_empty() {
        return;
    }
    let covered = |d: &str| {
        hosts
            .iter()
            .any(|h| crate::config::hosts::is_subset_of(d, h))
    };
    let mut split = Vec::new();
    for vh in &mut rc.virtual_hosts {
        if vh.domains.len() < 2 || vh.domains.iter().all(|d| covered(d)) {
            continue;
        }
        if !vh.domains.iter().any(|d| covered(d)) {
            continue;
        }
        let port = vh.name.rsplit_once(':').map(|(_, p)| p.to_string());
        let (mine, rest): (Vec<String>, Vec<String>) =
            vh.domains.drain(..).partition(|d| covered(d));
        vh.domains = rest;
        for d in mine {
            let mut own = vh.clone();
            own.name = match &port {
                Some(p) => format!("{d}:{p}"),
                None => d.clone(),
            };
            own.domains = vec![d];
            split.push(own);
        }
    }
    if !split.is_empty() {
        rc.virtual_hosts.extend(split);
        rc.virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// Runs `f` on the HTTP connection manager of a network filter, if it is one.
fn with_hcm(f: &mut listener::Filter, mut edit: impl FnMut(&mut hcm::HttpConnectionManager)) {
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        return;
    };
    if any.type_url
        != "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    {
        return;
    }
    let Ok(mut manager) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
        return;
    };
    let before = manager.http_filters.len();
    edit(&mut manager);
    if manager.http_filters.len() != before {
        *any = pb::any(&manager);
    }
}

/// Inserts the rate limit filters a connection manager needs, before the router:
/// the listener-level local rules (`level`: Gateway or workload policies), the
/// instances that read host and route configs, and the global filter.
fn add_filters(
    config: &Config,
    ix: &Index,
    manager: &mut hcm::HttpConnectionManager,
    level: &[usize],
    carried: &Carried,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    let mut filters = Vec::new();
    let filter = |name: &str, cfg: crate::xds::pb::google::protobuf::Any| hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(cfg)),
        ..Default::default()
    };
    let local = ix.rules(level, Mode::Local);
    if !local.is_empty() {
        filters.push(filter(
            LOCAL_RATELIMIT_FILTER,
            pb::any(&local_filter_config(&local, false)),
        ));
    }
    if carried.host_configs {
        filters.push(filter(
            LOCAL_RATELIMIT_HOST_FILTER,
            pb::any(&local_filter_config(&[], false)),
        ));
    }
    if carried.route_configs {
        filters.push(filter(
            LOCAL_RATELIMIT_ROUTE_FILTER,
            pb::any(&local_filter_config(&[], false)),
        ));
    }
    let mut global: BTreeSet<usize> = carried.global.clone();
    global.extend(level.iter().filter(|a| {
        ix.attached[**a]
            .rules
            .iter()
            .any(|r| r.mode == Mode::Global)
    }));
    if !global.is_empty() {
        let deny = global.iter().any(|a| ix.attached[*a].failure_deny);
        if deny && global.iter().any(|a| !ix.attached[*a].failure_deny) {
            for a in &global {
                let p = &config.rate_limit_policies[ix.attached[*a].policy];
                diagnostics.push(p.warning(
                    "spec.global.failureMode",
                    "policies with failureMode Open and Closed share a connection manager: the rate-limit service being unreachable refuses their requests (Closed wins)",
                ));
            }
        }
        filters.push(filter(
            RATELIMIT_FILTER,
            pb::any(&global_filter_config(deny)),
        ));
    }
    if filters.is_empty() {
        return false;
    }
    let at = manager
        .http_filters
        .iter()
        .position(|h| h.name == super::listener::ROUTER_FILTER)
        .unwrap_or(manager.http_filters.len());
    manager.http_filters.splice(at..at, filters);
    !global.is_empty()
}

/// Points the rate-limit service cluster of `resources` (if any) at `addr`: where the
/// service the proxy should call listens (a standalone gateway's own, or the control
/// plane's for the proxies it configures).
pub fn point_service_cluster(resources: &mut ResourceSet, addr: std::net::SocketAddr) {
    use crate::xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(c) = resources
        .clusters
        .iter_mut()
        .find(|c| c.name == RATELIMIT_CLUSTER)
    else {
        return;
    };
    for e in c
        .load_assignment
        .iter_mut()
        .flat_map(|a| a.endpoints.iter_mut())
        .flat_map(|l| l.lb_endpoints.iter_mut())
    {
        if let Some(HostIdentifier::Endpoint(ep)) = &mut e.host_identifier {
            ep.address = Some(pb::socket_address(
                &addr.ip().to_string(),
                u32::from(addr.port()),
            ));
        }
    }
}

/// The cluster of the rate-limit service, where the gateway's own service listens by
/// default (`meshgate gateway --ratelimit-redis`); added when a global filter uses it
/// and the resources do not define it already.
fn add_service_cluster(resources: &mut ResourceSet) {
    use crate::xds::pb::envoy::config::cluster::v3 as cluster;
    use crate::xds::pb::envoy::config::endpoint::v3 as endpoint;
    use crate::xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
    if resources
        .clusters
        .iter()
        .any(|c| c.name == RATELIMIT_CLUSTER)
    {
        return;
    }
    let (host, port) = crate::ratelimit::DEFAULT_ADDR
        .rsplit_once(':')
        .unwrap_or(("127.0.0.1", "8081"));
    let options = upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            core::Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    let mut c = cluster::Cluster {
        name: RATELIMIT_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(pb::seconds(1)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: RATELIMIT_CLUSTER.into(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(pb::socket_address(host, port.parse().unwrap_or(8081))),
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
    c.typed_extension_protocol_options.insert(
        super::cluster::HTTP_PROTOCOL_OPTIONS.to_string(),
        pb::any(&options),
    );
    resources.clusters.push(c);
}

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
mod tests;
