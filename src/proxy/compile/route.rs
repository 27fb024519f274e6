//! RouteConfiguration -> [`RouteTable`].
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::filter::PerFilterConfigs;
use crate::proxy::http::filters::cors::CorsPolicy;
use crate::proxy::http::filters::fault::Fault;
use crate::proxy::http::filters::ratelimit::RateLimitPolicy;
use crate::proxy::route::action::*;
use crate::proxy::route::headers::HeaderMutations;
use crate::proxy::route::matcher::{HeaderKey, RouteMatch, fraction_per_million, search_regex};
use crate::proxy::route::table::{Route, RouteTable, VirtualHost};
use crate::proxy::upstream::Cluster;
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::route::v3 as pb;
use crate::xds::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use crate::xds::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use crate::xds::pb::google::protobuf::Any;
use bytes::Bytes;
use prost::{Message, Name};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Clusters by name, as compiled for the same update.
pub(crate) type Clusters = HashMap<String, Arc<Cluster>>;

pub(crate) fn compile_route_configs(
    set: &ResourceSet,
    clusters: &Clusters,
) -> Result<HashMap<String, Arc<RouteTable>>, CompileError> {
    let mut out = HashMap::new();
    for rc in &set.routes {
        if out.contains_key(&rc.name) {
            return Err(Cx::new("route_configuration", &rc.name)
                .err("name", "duplicate route configuration name"));
        }
        out.insert(
            rc.name.clone(),
            Arc::new(compile_route_config(rc, clusters)?),
        );
    }
    Ok(out)
}

/// Per-filter configs meshgate understands, from `typed_per_filter_config`.
#[derive(Default, Clone)]
struct FilterConfigs {
    fault: Option<Arc<Fault>>,
    cors: Option<Arc<CorsPolicy>>,
    /// The other filters' configs, by filter name.
    others: PerFilterConfigs,
}

impl FilterConfigs {
    fn or(self, outer: &FilterConfigs) -> FilterConfigs {
        FilterConfigs {
            fault: self.fault.or_else(|| outer.fault.clone()),
            cors: self.cors.or_else(|| outer.cors.clone()),
            others: self.others.or(&outer.others),
        }
    }
}

fn filter_configs(cx: &mut Cx, map: &HashMap<String, Any>) -> Result<FilterConfigs, CompileError> {
    let mut out = FilterConfigs::default();
    let mut others = Vec::new();
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let any = &map[name];
        cx.at(format_args!("typed_per_filter_config[{name}]"), |cx| {
            if any.type_url == fault_pb::HttpFault::type_url() {
                let f = fault_pb::HttpFault::decode(any.value.as_slice())
                    .map_err(|e| cx.err("", format!("decoding HTTPFault: {e}")))?;
                out.fault = Some(Arc::new(Fault::compile(cx, &f)?));
            } else if any.type_url == cors_pb::CorsPolicy::type_url() {
                let p = cors_pb::CorsPolicy::decode(any.value.as_slice())
                    .map_err(|e| cx.err("", format!("decoding CorsPolicy: {e}")))?;
                out.cors = Some(Arc::new(CorsPolicy::compile(cx, &p)?));
            } else if let Some(c) = crate::proxy::http::filters::per_route(cx, any)? {
                others.push((name.as_str().into(), c));
            } else {
                return Err(cx.err(
                    "",
                    format!(
                        "per-filter config of type {} is not supported",
                        any.type_url
                    ),
                ));
            }
            Ok(())
        })?;
    }
    out.others = PerFilterConfigs::new(others);
    Ok(out)
}

pub(crate) fn compile_route_config(
    rc: &pb::RouteConfiguration,
    clusters: &Clusters,
) -> Result<RouteTable, CompileError> {
    let cx = &mut Cx::new("route_configuration", &rc.name);
    fields!(
        cx,
        rc,
        pb::RouteConfiguration {
            supported: [
                name,
                virtual_hosts,
                internal_only_headers,
                response_headers_to_add,
                response_headers_to_remove,
                request_headers_to_add,
                request_headers_to_remove,
                most_specific_header_mutations_wins,
                ignore_port_in_host_matching,
                typed_per_filter_config,
                max_direct_response_body_size_bytes
            ],
            ignored: [validate_clusters, metadata],
            unsupported: [
                vhds,
                cluster_specifier_plugins,
                request_mirror_policies,
                vhost_header,
                ignore_path_parameters_in_path_matching,
                route_specifiers
            ],
        }
    );
    let rc_filters = filter_configs(cx, &rc.typed_per_filter_config)?;
    // Envoy's default limit on direct response bodies is 4 KiB.
    let max_body = rc
        .max_direct_response_body_size_bytes
        .map(|v| v.value as usize)
        .unwrap_or(4096);
    let mut table = RouteTable {
        name: rc.name.as_str().into(),
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
        request_headers: HeaderMutations::compile(
            cx,
            "request_headers_to_add",
            &rc.request_headers_to_add,
            "request_headers_to_remove",
            &rc.request_headers_to_remove,
        )?,
        response_headers: HeaderMutations::compile(
            cx,
            "response_headers_to_add",
            &rc.response_headers_to_add,
            "response_headers_to_remove",
            &rc.response_headers_to_remove,
        )?,
        ..Default::default()
    };
    for (i, h) in rc.internal_only_headers.iter().enumerate() {
        let name =
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                cx.err(
                    &format!("internal_only_headers[{i}]"),
                    "invalid header name",
                )
            })?;
        table.internal_only_headers.push(name);
    }
    let mut seen_domains: HashMap<String, ()> = HashMap::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let compiled = cx.at(format_args!("virtual_hosts[{i}]"), |cx| {
            for (j, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                if seen_domains.insert(d.clone(), ()).is_some() {
                    return Err(cx.err(
                        &format!("domains[{j}]"),
                        format!("only unique values for domains are permitted; duplicate entry of domain {d}"),
                    ));
                }
                if d == "*" {
                    if table.default.is_some() {
                        return Err(cx.err(&format!("domains[{j}]"), "only a single wildcard domain is permitted"));
                    }
                    table.default = Some(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    table.suffixes.push((suffix.into(), i));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    table.prefixes.push((prefix.into(), i));
                } else if d.is_empty() || d.contains('*') {
                    return Err(cx.err(&format!("domains[{j}]"), format!("invalid domain {d:?}")));
                } else {
                    table.exact.insert(d.into(), i);
                }
            }
            compile_virtual_host(cx, vh, clusters, &rc_filters, max_body)
        })?;
        table.virtual_hosts.push(compiled);
    }
    // Longest wildcard first; ties keep config order (stable sort).
    table
        .suffixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    table
        .prefixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    Ok(table)
}

#[allow(deprecated)]
fn compile_virtual_host(
    cx: &mut Cx,
    vh: &pb::VirtualHost,
    clusters: &Clusters,
    rc_filters: &FilterConfigs,
    max_body: usize,
) -> Result<VirtualHost, CompileError> {
    fields!(
        cx,
        vh,
        pb::VirtualHost {
            supported: [
                name,
                domains,
                routes,
                request_headers_to_add,
                request_headers_to_remove,
                response_headers_to_add,
                response_headers_to_remove,
                cors,
                typed_per_filter_config,
                include_request_attempt_count,
                include_attempt_count_in_response,
                retry_policy,
                require_tls,
                rate_limits
            ],
            ignored: [metadata, virtual_clusters],
            unsupported: [
                matcher,
                retry_policy_typed_config,
                hedge_policy,
                include_is_timeout_retry_header,
                per_request_buffer_limit_bytes,
                request_body_buffer_limit,
                request_mirror_policies,
                route_specifiers
            ],
        }
    );
    let mut vh_filters = filter_configs(cx, &vh.typed_per_filter_config)?;
    if let Some(c) = &vh.cors {
        vh_filters.cors = Some(Arc::new(
            cx.at("cors", |cx| CorsPolicy::compile_route_field(cx, c))?,
        ));
    }
    let vh_filters = vh_filters.or(rc_filters);
    let retry = match &vh.retry_policy {
        Some(p) => Some(Arc::new(cx.at("retry_policy", |cx| compile_retry(cx, p))?)),
        None => None,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(cx.at(format_args!("routes[{i}]"), |cx| {
            compile_route(cx, r, clusters, &vh_filters, retry.as_ref(), max_body)
        })?);
    }
    use pb::virtual_host::TlsRequirementType as T;
    let require_tls = match T::try_from(vh.require_tls) {
        Ok(T::None) => false,
        Ok(T::All | T::ExternalOnly) => true,
        Err(_) => return Err(cx.err("require_tls", "unknown value")),
    };
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        routes,
        require_tls,
        request_headers: HeaderMutations::compile(
            cx,
            "request_headers_to_add",
            &vh.request_headers_to_add,
            "request_headers_to_remove",
            &vh.request_headers_to_remove,
        )?,
        response_headers: HeaderMutations::compile(
            cx,
            "response_headers_to_add",
            &vh.response_headers_to_add,
            "response_headers_to_remove",
            &vh.response_headers_to_remove,
        )?,
        include_request_attempt_count: vh.include_request_attempt_count,
        include_attempt_count_in_response: vh.include_attempt_count_in_response,
        retry,
        rate_limits: RateLimitPolicy::compile(cx, &vh.rate_limits)?,
    })
}

#[allow(deprecated)]
fn compile_route(
    cx: &mut Cx,
    r: &pb::Route,
    clusters: &Clusters,
    vh_filters: &FilterConfigs,
    vh_retry: Option<&Arc<RetryPolicy>>,
    max_body: usize,
) -> Result<Route, CompileError> {
    use pb::route::Action as A;
    fields!(
        cx,
        r,
        pb::Route {
            supported: [
                name,
                r#match,
                action,
                typed_per_filter_config,
                request_headers_to_add,
                request_headers_to_remove,
                response_headers_to_add,
                response_headers_to_remove,
                decorator
            ],
            ignored: [metadata, stat_prefix, tracing],
            unsupported: [
                per_request_buffer_limit_bytes,
                request_body_buffer_limit,
                route_specifiers
            ],
        }
    );
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| cx.err("match", "required"))?;
    let matcher = cx.at("match", |cx| RouteMatch::compile(cx, m))?;
    let mut filters = filter_configs(cx, &r.typed_per_filter_config)?;
    let mut rate_limits = RateLimitPolicy::default();
    let mut include_vh_rate_limits = false;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            rate_limits = cx.at("route", |cx| RateLimitPolicy::compile(cx, &ra.rate_limits))?;
            include_vh_rate_limits = ra.include_vh_rate_limits.is_some_and(|b| b.value);
            if let Some(c) = &ra.cors {
                filters.cors =
                    Some(Arc::new(cx.at("route.cors", |cx| {
                        CorsPolicy::compile_route_field(cx, c)
                    })?));
            }
            Action::Route(Box::new(cx.at("route", |cx| {
                compile_route_action(cx, ra, clusters, vh_retry)
            })?))
        }
        Some(A::Redirect(rd)) => {
            Action::Redirect(Box::new(cx.at("redirect", |cx| compile_redirect(cx, rd))?))
        }
        Some(A::DirectResponse(d)) => {
            Action::Direct(cx.at("direct_response", |cx| compile_direct(cx, d, max_body))?)
        }
        Some(A::FilterAction(_)) => return Err(cx.unsupported("filter_action")),
        Some(A::NonForwardingAction(_)) => return Err(cx.unsupported("non_forwarding_action")),
        None => return Err(cx.err("action", "a route needs route, redirect or direct_response")),
    };
    let filters = filters.or(vh_filters);
    let decorator = match &r.decorator {
        None => None,
        Some(d) if d.operation.is_empty() => {
            return Err(cx.err("decorator.operation", "an operation name is required"));
        }
        Some(d) => Some(crate::proxy::route::table::Decorator {
            operation: d.operation.as_str().into(),
            header: http::HeaderValue::from_str(&d.operation)
                .map_err(|_| cx.err("decorator.operation", "not a valid header value"))?,
            propagate: d.propagate.is_none_or(|b| b.value),
        }),
    };
    Ok(Route {
        name: r.name.as_str().into(),
        decorator,
        matcher,
        action,
        request_headers: HeaderMutations::compile(
            cx,
            "request_headers_to_add",
            &r.request_headers_to_add,
            "request_headers_to_remove",
            &r.request_headers_to_remove,
        )?,
        response_headers: HeaderMutations::compile(
            cx,
            "response_headers_to_add",
            &r.response_headers_to_add,
            "response_headers_to_remove",
            &r.response_headers_to_remove,
        )?,
        fault: filters.fault,
        cors: filters.cors,
        filters: filters.others,
        rate_limits,
        include_vh_rate_limits,
    })
}

fn cluster_ref(name: &str, clusters: &Clusters) -> ClusterRef {
    ClusterRef {
        name: name.into(),
        cluster: clusters.get(name).cloned(),
    }
}

fn compile_route_action(
    cx: &mut Cx,
    ra: &pb::RouteAction,
    clusters: &Clusters,
    vh_retry: Option<&Arc<RetryPolicy>>,
) -> Result<RouteAction, CompileError> {
    use pb::route_action::ClusterSpecifier as C;
    use pb::route_action::HostRewriteSpecifier as H;
    fields!(
        cx,
        ra,
        pb::RouteAction {
            supported: [
                cluster_not_found_response_code,
                prefix_rewrite,
                regex_rewrite,
                append_x_forwarded_host,
                timeout,
                idle_timeout,
                retry_policy,
                request_mirror_policies,
                hash_policy,
                cors,
                upgrade_configs,
                rate_limits,
                include_vh_rate_limits,
                cluster_specifier,
                host_rewrite_specifier
            ],
            ignored: [priority, max_grpc_timeout, grpc_timeout_offset],
            unsupported: [
                metadata_match,
                path_rewrite_policy,
                path_rewrite,
                flush_timeout,
                early_data_policy,
                retry_policy_typed_config,
                internal_redirect_policy,
                internal_redirect_action,
                max_internal_redirects,
                hedge_policy,
                max_stream_duration
            ],
        }
    );
    let target = match &ra.cluster_specifier {
        Some(C::Cluster(name)) => ClusterTarget::Single(cluster_ref(name, clusters)),
        Some(C::WeightedClusters(w)) => {
            cx.at("weighted_clusters", |cx| compile_weighted(cx, w, clusters))?
        }
        Some(C::ClusterHeader(_)) => return Err(cx.unsupported("cluster_header")),
        Some(C::ClusterSpecifierPlugin(_)) => {
            return Err(cx.unsupported("cluster_specifier_plugin"));
        }
        Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(cx.unsupported("inline_cluster_specifier_plugin"));
        }
        None => return Err(cx.err("cluster", "a cluster specifier is required")),
    };
    use pb::route_action::ClusterNotFoundResponseCode as NF;
    let cluster_not_found_status = match NF::try_from(ra.cluster_not_found_response_code) {
        Ok(NF::ServiceUnavailable) => 503,
        Ok(NF::NotFound) => 404,
        Ok(NF::InternalServerError) => 500,
        Err(_) => return Err(cx.err("cluster_not_found_response_code", "unknown value")),
    };
    let prefix_rewrite = (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.as_str().into());
    let regex_rewrite = match &ra.regex_rewrite {
        None => None,
        Some(rr) => Some(cx.at("regex_rewrite", |cx| {
            let p = rr
                .pattern
                .as_ref()
                .ok_or_else(|| cx.err("pattern", "required"))?;
            Ok((
                search_regex(cx, "pattern.regex", &p.regex)?,
                envoy_substitution(&rr.substitution),
            ))
        })?),
    };
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        return Err(cx.err(
            "regex_rewrite",
            "only one of prefix_rewrite and regex_rewrite may be set",
        ));
    }
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => HostRewrite::None,
        Some(H::HostRewriteLiteral(h)) => HostRewrite::Literal(
            http::HeaderValue::from_str(h)
                .map_err(|_| cx.err("host_rewrite_literal", "invalid host"))?,
        ),
        Some(H::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => HostRewrite::None,
        Some(H::HostRewriteHeader(h)) => HostRewrite::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| cx.err("host_rewrite_header", "invalid header name"))?,
        ),
        Some(H::HostRewrite(_)) => return Err(cx.unsupported("host_rewrite")),
        Some(H::HostRewritePathRegex(rr)) => cx.at("host_rewrite_path_regex", |cx| {
            let p = rr
                .pattern
                .as_ref()
                .ok_or_else(|| cx.err("pattern", "required"))?;
            Ok(HostRewrite::PathRegex(
                search_regex(cx, "pattern.regex", &p.regex)?,
                envoy_substitution(&rr.substitution),
            ))
        })?,
    };
    // Envoy's default route timeout is 15 s; an explicit 0 disables it.
    let timeout = match duration(cx, "timeout", &ra.timeout)? {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let retry = match &ra.retry_policy {
        Some(p) => Some(Arc::new(cx.at("retry_policy", |cx| compile_retry(cx, p))?)),
        None => vh_retry.cloned(),
    };
    let mut hash_policy = Vec::new();
    for (i, h) in ra.hash_policy.iter().enumerate() {
        hash_policy.push(cx.at(format_args!("hash_policy[{i}]"), |cx| {
            compile_hash_policy(cx, h)
        })?);
    }
    let mut mirrors = Vec::new();
    for (i, m) in ra.request_mirror_policies.iter().enumerate() {
        mirrors.push(cx.at(format_args!("request_mirror_policies[{i}]"), |cx| {
            fields!(
                cx,
                m,
                pb::route_action::RequestMirrorPolicy {
                    supported: [cluster, runtime_fraction, disable_shadow_host_suffix_append],
                    ignored: [trace_sampled],
                    unsupported: [
                        cluster_header,
                        request_headers_mutations,
                        host_rewrite_literal
                    ],
                }
            );
            if m.cluster.is_empty() {
                return Err(cx.err("cluster", "required"));
            }
            Ok(MirrorPolicy {
                cluster: cluster_ref(&m.cluster, clusters),
                per_million: m
                    .runtime_fraction
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref())
                    .map(fraction_per_million)
                    .unwrap_or(1_000_000),
                append_shadow_suffix: !m.disable_shadow_host_suffix_append,
            })
        })?);
    }
    let mut upgrades = Vec::new();
    for (i, u) in ra.upgrade_configs.iter().enumerate() {
        upgrades.push(cx.at(format_args!("upgrade_configs[{i}]"), |cx| {
            fields!(
                cx,
                u,
                pb::route_action::UpgradeConfig {
                    supported: [upgrade_type, enabled],
                    ignored: [],
                    unsupported: [connect_config],
                }
            );
            Ok(RouteUpgrade {
                upgrade_type: u.upgrade_type.to_ascii_lowercase().into(),
                enabled: u.enabled.map(|b| b.value).unwrap_or(true),
            })
        })?);
    }
    let expected_timeout_header = retry
        .as_ref()
        .and_then(|r| r.per_try_timeout)
        .or(timeout)
        .map(|t| http::HeaderValue::from(t.as_millis() as u64));
    let idle_timeout = duration(cx, "idle_timeout", &ra.idle_timeout)?;
    Ok(RouteAction {
        expected_timeout_header,
        idle_timeout,
        target,
        cluster_not_found_status,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        append_x_forwarded_host: ra.append_x_forwarded_host,
        timeout,
        retry,
        hash_policy,
        mirrors,
        upgrades,
    })
}

/// RE2 substitutions use `\1`; the regex crate uses `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn compile_weighted(
    cx: &mut Cx,
    w: &pb::WeightedCluster,
    clusters: &Clusters,
) -> Result<ClusterTarget, CompileError> {
    fields!(
        cx,
        w,
        pb::WeightedCluster {
            supported: [clusters, total_weight],
            ignored: [runtime_key_prefix],
            unsupported: [random_value_specifier],
        }
    );
    let mut out = Vec::new();
    let mut sum: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        out.push(cx.at(format_args!("clusters[{i}]"), |cx| {
            use pb::weighted_cluster::cluster_weight::HostRewriteSpecifier as H;
            fields!(
                cx,
                c,
                pb::weighted_cluster::ClusterWeight {
                    supported: [
                        name,
                        weight,
                        request_headers_to_add,
                        request_headers_to_remove,
                        response_headers_to_add,
                        response_headers_to_remove,
                        host_rewrite_specifier
                    ],
                    ignored: [],
                    unsupported: [cluster_header, metadata_match, typed_per_filter_config],
                }
            );
            if c.name.is_empty() {
                return Err(cx.err("name", "required"));
            }
            let weight = c.weight.map(|w| w.value).unwrap_or(0);
            sum += weight as u64;
            Ok(WeightedCluster {
                cluster: cluster_ref(&c.name, clusters),
                weight,
                request_headers: HeaderMutations::compile(
                    cx,
                    "request_headers_to_add",
                    &c.request_headers_to_add,
                    "request_headers_to_remove",
                    &c.request_headers_to_remove,
                )?,
                response_headers: HeaderMutations::compile(
                    cx,
                    "response_headers_to_add",
                    &c.response_headers_to_add,
                    "response_headers_to_remove",
                    &c.response_headers_to_remove,
                )?,
                host_rewrite: match &c.host_rewrite_specifier {
                    None => None,
                    Some(H::HostRewriteLiteral(h)) => Some(
                        http::HeaderValue::from_str(h)
                            .map_err(|_| cx.err("host_rewrite_literal", "invalid host"))?,
                    ),
                },
            })
        })?);
    }
    #[allow(deprecated)]
    let total = match w.total_weight {
        Some(t) if t.value as u64 != sum => {
            return Err(cx.err(
                "total_weight",
                format!("sum of weights ({sum}) != total_weight ({})", t.value),
            ));
        }
        _ => sum,
    };
    if total == 0 {
        return Err(cx.err("clusters", "sum of weights must be greater than 0"));
    }
    Ok(ClusterTarget::Weighted {
        clusters: out,
        total,
    })
}

pub(crate) fn compile_retry(cx: &mut Cx, p: &pb::RetryPolicy) -> Result<RetryPolicy, CompileError> {
    fields!(
        cx,
        p,
        pb::RetryPolicy {
            supported: [
                retry_on,
                num_retries,
                per_try_timeout,
                retry_host_predicate,
                host_selection_retry_max_attempts,
                retriable_status_codes,
                retry_back_off,
                retry_priority
            ],
            ignored: [],
            unsupported: [
                per_try_idle_timeout,
                retry_options_predicates,
                rate_limited_retry_back_off,
                retriable_headers,
                retriable_request_headers,
                refresh_cluster_on_retry
            ],
        }
    );
    let on = RetryOn::parse(&p.retry_on).map_err(|e| cx.err("retry_on", e))?;
    let mut avoid_previous_hosts = false;
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        use pb::retry_policy::retry_host_predicate::ConfigType;
        let is_previous = pred.name == "envoy.retry_host_predicates.previous_hosts"
            || matches!(&pred.config_type, Some(ConfigType::TypedConfig(a))
                if a.type_url.ends_with("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"));
        if !is_previous {
            return Err(cx.err(
                &format!("retry_host_predicate[{i}]"),
                format!("retry host predicate {:?} is not supported", pred.name),
            ));
        }
        avoid_previous_hosts = true;
    }
    let previous_priorities = match &p.retry_priority {
        None => None,
        Some(rp) => Some(cx.at("retry_priority", |cx| {
            use crate::xds::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
            use pb::retry_policy::retry_priority::ConfigType;
            let Some(ConfigType::TypedConfig(any)) = &rp.config_type else {
                return Err(cx.err("typed_config", "required"));
            };
            if any.type_url != PreviousPrioritiesConfig::type_url() {
                return Err(cx.err(
                    "typed_config",
                    format!("retry priority {} is not supported", any.type_url),
                ));
            }
            let c = PreviousPrioritiesConfig::decode(any.value.as_slice())
                .map_err(|e| cx.err("typed_config", format!("decoding: {e}")))?;
            if c.update_frequency <= 0 {
                return Err(cx.err("typed_config.update_frequency", "must be greater than 0"));
            }
            Ok(c.update_frequency as u32)
        })?),
    };
    let (back_off_base, back_off_max) = match &p.retry_back_off {
        None => (Duration::from_millis(25), Duration::from_millis(250)),
        Some(b) => cx.at("retry_back_off", |cx| {
            let base = duration(cx, "base_interval", &b.base_interval)?
                .ok_or_else(|| cx.err("base_interval", "required"))?;
            if base < Duration::from_millis(1) {
                return Err(cx.err("base_interval", "must be at least 1ms"));
            }
            let max = duration(cx, "max_interval", &b.max_interval)?.unwrap_or(base * 10);
            if max < base {
                return Err(cx.err("max_interval", "must be >= base_interval"));
            }
            Ok((base, max))
        })?,
    };
    let mut codes = Vec::new();
    for (i, c) in p.retriable_status_codes.iter().enumerate() {
        if !(100..600).contains(c) {
            return Err(cx.err(
                &format!("retriable_status_codes[{i}]"),
                "not an HTTP status",
            ));
        }
        codes.push(*c as u16);
    }
    Ok(RetryPolicy {
        on,
        num_retries: p.num_retries.map(|n| n.value).unwrap_or(1),
        per_try_timeout: duration(cx, "per_try_timeout", &p.per_try_timeout)?
            .filter(|d| !d.is_zero()),
        retriable_status_codes: codes,
        back_off_base,
        back_off_max,
        avoid_previous_hosts,
        host_selection_max_attempts: p.host_selection_retry_max_attempts.clamp(1, 100) as u32,
        previous_priorities,
    })
}

fn compile_hash_policy(
    cx: &mut Cx,
    h: &pb::route_action::HashPolicy,
) -> Result<HashPolicy, CompileError> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    fields!(
        cx,
        h,
        pb::route_action::HashPolicy {
            supported: [terminal, policy_specifier],
            ignored: [],
            unsupported: [],
        }
    );
    let kind = match &h.policy_specifier {
        Some(P::Header(hd)) => {
            if hd.regex_rewrite.is_some() {
                return Err(cx.unsupported("header.regex_rewrite"));
            }
            HashPolicyKind::Header(HeaderKey::parse(&hd.header_name).ok_or_else(|| {
                cx.err(
                    "header.header_name",
                    format!("invalid header name {:?}", hd.header_name),
                )
            })?)
        }
        Some(P::Cookie(c)) => {
            let mut attributes = Vec::with_capacity(c.attributes.len());
            for a in &c.attributes {
                if a.name.is_empty() {
                    return Err(cx.err("cookie.attributes.name", "required"));
                }
                // Envoy's non-strict header name and value rules: no NUL, CR or LF.
                let clean = |s: &str| !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'));
                if !clean(&a.name) || !clean(&a.value) {
                    return Err(cx.err(
                        "cookie.attributes",
                        format!("invalid cookie attribute {:?}={:?}", a.name, a.value),
                    ));
                }
                attributes.push((a.name.as_str().into(), a.value.as_str().into()));
            }
            HashPolicyKind::Cookie {
                name: c.name.as_str().into(),
                ttl: duration(cx, "cookie.ttl", &c.ttl)?,
                path: (!c.path.is_empty()).then(|| c.path.as_str().into()),
                attributes: attributes.into(),
            }
        }
        Some(P::ConnectionProperties(cp)) if cp.source_ip => HashPolicyKind::SourceIp,
        Some(P::ConnectionProperties(_)) => {
            return Err(cx.err("connection_properties", "source_ip must be true"));
        }
        Some(P::QueryParameter(q)) => HashPolicyKind::Query(q.name.as_str().into()),
        Some(P::FilterState(_)) => return Err(cx.unsupported("filter_state")),
        None => return Err(cx.err("policy_specifier", "required")),
    };
    Ok(HashPolicy {
        kind,
        terminal: h.terminal,
    })
}

fn compile_redirect(cx: &mut Cx, r: &pb::RedirectAction) -> Result<Redirect, CompileError> {
    use pb::redirect_action::PathRewriteSpecifier as P;
    use pb::redirect_action::RedirectResponseCode as C;
    use pb::redirect_action::SchemeRewriteSpecifier as S;
    fields!(
        cx,
        r,
        pb::RedirectAction {
            supported: [
                host_redirect,
                port_redirect,
                response_code,
                strip_query,
                scheme_rewrite_specifier,
                path_rewrite_specifier
            ],
            ignored: [],
            unsupported: [],
        }
    );
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".into()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase().into()),
    };
    let path = match &r.path_rewrite_specifier {
        None => PathRedirect::Keep,
        Some(P::PathRedirect(p)) => PathRedirect::Path {
            path: p.as_str().into(),
            has_query: p.contains('?'),
        },
        Some(P::PrefixRewrite(p)) => PathRedirect::Prefix(p.as_str().into()),
        Some(P::PathRewrite(_)) => return Err(cx.unsupported("path_rewrite")),
        Some(P::RegexRewrite(rr)) => cx.at("regex_rewrite", |cx| {
            let p = rr
                .pattern
                .as_ref()
                .ok_or_else(|| cx.err("pattern", "required"))?;
            Ok(PathRedirect::Regex(
                search_regex(cx, "pattern.regex", &p.regex)?,
                envoy_substitution(&rr.substitution),
            ))
        })?,
    };
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => return Err(cx.err("response_code", "unknown value")),
    };
    let port = match r.port_redirect {
        0 => None,
        p if p <= 65535 => Some(p as u16),
        _ => return Err(cx.err("port_redirect", "not a port")),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.as_str().into()),
        port,
        path,
        strip_query: r.strip_query,
        status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
    })
}

fn compile_direct(
    cx: &mut Cx,
    d: &pb::DirectResponseAction,
    max_body: usize,
) -> Result<DirectResponse, CompileError> {
    use crate::xds::pb::envoy::config::core::v3::data_source::Specifier;
    fields!(
        cx,
        d,
        pb::DirectResponseAction {
            supported: [status, body],
            ignored: [],
            unsupported: [body_format],
        }
    );
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| cx.err("status", format!("{} is not in [200, 600)", d.status)))?;
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Some(Bytes::from(b.clone())),
        Some(Specifier::Filename(f)) => {
            Some(Bytes::from(std::fs::read(f).map_err(|e| {
                cx.err("body.filename", format!("reading {f}: {e}"))
            })?))
        }
        Some(Specifier::EnvironmentVariable(v)) => {
            Some(Bytes::from(std::env::var(v).map_err(|_| {
                cx.err("body.environment_variable", format!("{v} is not set"))
            })?))
        }
    };
    // Envoy caps direct response bodies at 4 KiB unless told otherwise.
    if body.as_ref().is_some_and(|b| b.len() > max_body) {
        return Err(cx.err(
            "body",
            format!("direct response body is larger than {max_body} bytes (max_direct_response_body_size_bytes)"),
        ));
    }
    Ok(DirectResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(json: serde_json::Value) -> Result<RouteTable, CompileError> {
        let rc: pb::RouteConfiguration = crate::xds::json::from_json(&json).unwrap();
        compile_route_config(&rc, &Clusters::new())
    }

    #[test]
    fn rejects_unsupported_with_precise_path() {
        use serde_json::json;
        let e = rc(
            json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "hedge_policy": {}}}]}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route_configuration \"r\": virtual_hosts[0].routes[0].route.hedge_policy: field not supported by meshgate (see docs/xds-support.md)"
        );
        let e = rc(json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["a", "A"]}]}))
            .unwrap_err();
        assert!(e.message.contains("duplicate entry of domain a"), "{e}");
        let e = rc(json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}}]}]}))
        .unwrap_err();
        assert!(e.message.contains("greater than 0"), "{e}");
    }

    #[test]
    fn substitution_translation() {
        assert_eq!(envoy_substitution(r"/v\1/x"), "/v${1}/x");
        assert_eq!(envoy_substitution("a$b"), "a$$b");
    }

    #[test]
    fn defaults_like_envoy() {
        use serde_json::json;
        let t = rc(json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}]}]}))
        .unwrap();
        let Action::Route(a) = &t.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(a.timeout, Some(Duration::from_secs(15)));
        let retry = a.retry.as_ref().unwrap();
        assert_eq!(retry.num_retries, 1);
        assert_eq!(retry.back_off_base, Duration::from_millis(25));
        assert!(matches!(&a.target, ClusterTarget::Single(c) if c.cluster.is_none()));
        let Action::Route(b) = &t.virtual_hosts[0].routes[1].action else {
            panic!()
        };
        assert_eq!(b.timeout, None);
    }

    #[test]
    fn rate_limits_are_compiled_into_routes_and_virtual_hosts() {
        use crate::proxy::http::filters::ratelimit::{RateLimitPerRoute, VhRateLimits};
        use serde_json::json;
        let rule = json!([{"actions": [{"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": "ns/p/0"}}]}]);
        let t = rc(json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "rate_limits": rule, "routes": [
            {"match": {"prefix": "/a"}, "route": {"cluster": "c", "rate_limits": rule, "include_vh_rate_limits": true}},
            {"match": {"prefix": "/b"}, "route": {"cluster": "c"}, "typed_per_filter_config": {"envoy.filters.http.ratelimit": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
                "vh_rate_limits": "IGNORE", "domain": "other"}}}]}]}))
        .unwrap();
        let vh = &t.virtual_hosts[0];
        assert!(!vh.rate_limits.is_empty());
        assert!(!vh.routes[0].rate_limits.is_empty() && vh.routes[0].include_vh_rate_limits);
        assert!(vh.routes[1].rate_limits.is_empty() && !vh.routes[1].include_vh_rate_limits);
        let per_route = vh.routes[1]
            .filter_config::<RateLimitPerRoute>("envoy.filters.http.ratelimit")
            .unwrap();
        assert_eq!(per_route.vh_rate_limits, VhRateLimits::Ignore);
        assert_eq!(per_route.domain.as_deref(), Some("other"));
        let e = rc(json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "rate_limits": [{"actions": [{"source_cluster": {}}]}]}}]}]}))
        .unwrap_err();
        assert_eq!(
            e.path,
            "virtual_hosts[0].routes[0].route.rate_limits[0].actions[0].source_cluster"
        );
    }
}
