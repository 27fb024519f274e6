//! One VirtualService's HTTP routes -> Envoy routes, the way istiod's
//! `BuildHTTPRoutesForVirtualService` / `TranslateRoute` does for a gateway.
use super::names;
use super::pb;
use super::retry;
use super::scope::{BoundHttpRoute, BoundVirtualService, Scope};
use crate::config::Diagnostic;
use crate::config::types::StringMatch;
use crate::config::types::destination_rule::{ConsistentHashLb, HashKey, LbPolicy};
use crate::config::types::virtual_service::{
    AbortError, CorsPolicy, DelayType, Destination, Headers, HttpFaultInjection, HttpMatchRequest,
    HttpRedirect, HttpRoute, HttpRouteDestination, RedirectPort, RedirectPortSelection,
    UnmatchedPreflights,
};
use crate::registry::Service;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use crate::xds::pb::envoy::extensions::filters::http::cors::v3 as cors;
use crate::xds::pb::envoy::extensions::filters::http::fault::v3 as fault;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use std::collections::{BTreeMap, BTreeSet};

/// Name of Envoy's fault filter (also the key of its per-route config).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Name of Envoy's CORS filter.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Services referenced by routes, as (host, namespace): the clusters a gateway needs.
pub type References = BTreeSet<(String, String)>;

/// Where the routes being built will be served.
pub struct RouteTarget<'x> {
    /// The listener port (Istio's "listenPort").
    pub port: u32,
    /// `namespace/name` of the Gateway the server belongs to.
    pub gateway_name: &'x str,
    /// Whether the server terminates TLS (redirects default to https).
    pub is_tls: bool,
}

/// Builds the routes of one VirtualService for one gateway server. Returns `None` when no
/// route applies to this port/gateway (Istio then leaves the VirtualService out).
pub fn build_routes(
    scope: &Scope,
    vs: &BoundVirtualService,
    target: &RouteTarget,
    diagnostics: &mut Vec<Diagnostic>,
    references: &mut References,
) -> Option<Vec<route::Route>> {
    let mut out = Vec::with_capacity(vs.http.len());
    let mut builder = RouteBuilder {
        scope,
        vs,
        target,
        diagnostics,
        references,
        current: 0,
    };
    for (i, bound) in vs.http.iter().enumerate() {
        builder.current = i;
        let http = &bound.route;
        let mut catchall = false;
        if http.matches.is_empty() {
            if let Some(r) = builder.translate(http, None) {
                out.push(r);
            }
            catchall = true;
        } else {
            for (j, m) in http.matches.iter().enumerate() {
                if let Some(r) = builder.translate(http, Some((j, m))) {
                    let all = is_catch_all(&r);
                    out.push(r);
                    // Later matches (and routes) can never be reached.
                    if all {
                        catchall = true;
                        break;
                    }
                }
            }
        }
        if catchall {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Istio's name of the route of a service without a VirtualService.
pub const DEFAULT_ROUTE_NAME: &str = "default";

/// The route of a service port no VirtualService routes (istiod's
/// `buildSidecarVirtualHostForService` with `BuildDefaultHTTPOutboundRoute`): every path
/// to `outbound|PORT||HOST`, Istio's default retries, no timeout, and the consistent hash
/// of the service's DestinationRule (port-level settings first).
pub fn default_outbound_route(scope: &Scope, service: &Service, port: u32) -> route::Route {
    let cluster = names::cluster_name("", &service.hostname, port);
    let hash = scope
        .destination_rule(&service.hostname, Some(&service.namespace))
        .and_then(|dr| dr.traffic_policy)
        .and_then(|tp| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.map(|s| s.number) == Some(port))
                .and_then(|p| consistent_hash(p.load_balancer.as_ref()))
                .or_else(|| consistent_hash(tp.load_balancer.as_ref()))
        })
        .and_then(|c| hash_policy(&c));
    #[allow(deprecated)]
    let action = route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
        timeout: Some(pb::seconds(0)),
        max_grpc_timeout: Some(pb::seconds(0)),
        retry_policy: retry::policy(None, false),
        hash_policy: hash.into_iter().collect(),
        ..Default::default()
    };
    route::Route {
        name: DEFAULT_ROUTE_NAME.to_string(),
        r#match: Some(default_match()),
        decorator: Some(route::Decorator {
            operation: format!("{}/*", names::virtual_host_name(&service.hostname, port)),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(action)),
        ..Default::default()
    }
}

/// Whether a route matches every request (prefix `/` or regex `.*`, no other condition).
pub fn is_catch_all(r: &route::Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path_all = match &m.path_specifier {
        Some(route::route_match::PathSpecifier::Prefix(p)) => p == "/",
        Some(route::route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(route::route_match::PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path_all
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.dynamic_metadata.is_empty()
}

struct RouteBuilder<'r, 's, 'a> {
    scope: &'r Scope<'a>,
    vs: &'r BoundVirtualService<'s>,
    target: &'r RouteTarget<'r>,
    diagnostics: &'r mut Vec<Diagnostic>,
    references: &'r mut References,
    /// Index of the route being translated in `vs.http`.
    current: usize,
}

impl<'s> RouteBuilder<'_, 's, '_> {
    /// The route being translated.
    fn current(&self) -> &BoundHttpRoute<'s> {
        &self.vs.http[self.current]
    }

    /// Field path of a part of the current route, in the resource it came from.
    fn field(&self, rest: &str) -> String {
        let base = &self.current().field;
        if rest.is_empty() {
            base.clone()
        } else {
            format!("{base}.{rest}")
        }
    }

    fn warn(&mut self, field: &str, message: String) {
        let d = self.current().source.warning(field, message);
        self.diagnostics.push(d);
    }

    /// The namespace short host names of the current route resolve in.
    fn namespace(&self) -> &str {
        &self.current().namespace
    }

    fn translate(
        &mut self,
        http: &HttpRoute,
        m: Option<(usize, &HttpMatchRequest)>,
    ) -> Option<route::Route> {
        if let Some((_, m)) = m {
            if m.port != 0 && m.port != self.target.port {
                return None;
            }
            if !self.source_matches(m) {
                return None;
            }
        }
        let mut name = http.name.clone();
        if let Some((_, m)) = m
            && !m.name.is_empty()
        {
            name = format!("{name}.{}", m.name);
        }
        let route_match = match m {
            Some((j, m)) => self.route_match(j, m)?,
            None => default_match(),
        };
        let mut out = route::Route {
            name,
            r#match: Some(route_match),
            metadata: Some(config_metadata(
                "virtual-service",
                &self.vs.res.meta.namespace,
                &self.vs.res.meta.name,
            )),
            ..Default::default()
        };
        if let Some((_, m)) = m
            && !m.stat_prefix.is_empty()
        {
            out.stat_prefix = m.stat_prefix.clone();
        }

        let mut authority = String::new();
        if let Some(headers) = &http.headers {
            let ops = header_operations(headers);
            out.request_headers_to_add = ops.request_add;
            out.request_headers_to_remove = ops.request_remove;
            out.response_headers_to_add = ops.response_add;
            out.response_headers_to_remove = ops.response_remove;
            authority = ops.authority;
        }

        if let Some(redirect) = &http.redirect {
            out.action = Some(self.redirect(redirect)?);
        } else if let Some(dr) = &http.direct_response {
            let body = dr.body.as_ref().map(|b| core::DataSource {
                specifier: Some(match b {
                    crate::config::types::virtual_service::HttpBody::String(s) => {
                        core::data_source::Specifier::InlineString(s.clone())
                    }
                    crate::config::types::virtual_service::HttpBody::Bytes(b) => {
                        core::data_source::Specifier::InlineBytes(b.clone())
                    }
                }),
                ..Default::default()
            });
            out.action = Some(route::route::Action::DirectResponse(
                route::DirectResponseAction {
                    status: dr.status,
                    body,
                    ..Default::default()
                },
            ));
        } else if http.route.is_empty() {
            let what = if http.delegate.is_some() {
                "a delegate VirtualService that could not be used"
            } else {
                "no destination, redirect or direct response"
            };
            self.warn(&self.field(""), format!("route has {what}; it is left out"));
            return None;
        } else {
            let action = self.route_action(http, &mut out, authority);
            out.action = Some(route::route::Action::Route(action));
        }

        out.decorator = Some(route::Decorator {
            operation: operation(&out, &self.vs.res.meta.name, self.target.port),
            ..Default::default()
        });
        if let Some(f) = &http.fault
            && let Some(fault) = self.fault(f)
        {
            out.typed_per_filter_config
                .insert(FAULT_FILTER.to_string(), pb::any(&fault));
        }
        if let Some(c) = &http.cors_policy {
            out.typed_per_filter_config
                .insert(CORS_FILTER.to_string(), pb::any(&cors_policy(c)));
        }
        Some(out)
    }

    /// `gateways` on a match restrict it to those gateways; `sourceLabels` and
    /// `sourceNamespace` to callers the gateway itself must match.
    fn source_matches(&self, m: &HttpMatchRequest) -> bool {
        if !m.gateways.is_empty() {
            return m.gateways.iter().any(|g| {
                super::scope::resolve_gateway_name(g, self.namespace()) == self.target.gateway_name
            });
        }
        m.source_labels
            .iter()
            .all(|(k, v)| self.scope.proxy.labels.get(k) == Some(v))
            && (m.source_namespace.is_empty() || m.source_namespace == self.scope.namespace)
    }

    fn route_match(&mut self, j: usize, m: &HttpMatchRequest) -> Option<route::RouteMatch> {
        let mut out = default_match();
        for (name, sm) in &m.headers {
            if name.starts_with("@request.auth.claims") {
                self.warn(
                    &self.field(&format!("match[{j}].headers")),
                    format!(
                        "`{name}` matches JWT claims, which need request authentication that is not translated; the route is left out"
                    ),
                );
                return None;
            }
            out.headers.push(header_matcher(name, sm));
        }
        for (name, sm) in &m.without_headers {
            if name.starts_with("@request.auth.claims") {
                self.warn(
                    &self.field(&format!("match[{j}].withoutHeaders")),
                    format!(
                        "`{name}` matches JWT claims, which need request authentication that is not translated; the route is left out"
                    ),
                );
                return None;
            }
            let mut h = header_matcher(name, sm);
            h.invert_match = true;
            // Envoy refuses treat_missing_header_as_empty with a presence match.
            if !is_presence(sm) {
                h.treat_missing_header_as_empty = true;
            }
            out.headers.push(h);
        }
        out.headers.sort_by(|a, b| a.name.cmp(&b.name));

        if let Some(uri) = &m.uri {
            out.path_specifier = match uri {
                StringMatch::Exact(p) => Some(route::route_match::PathSpecifier::Path(p.clone())),
                StringMatch::Prefix(p) => {
                    Some(route::route_match::PathSpecifier::Prefix(p.clone()))
                }
                StringMatch::Regex(r) => {
                    Some(route::route_match::PathSpecifier::SafeRegex(pb::regex(r)))
                }
                StringMatch::Empty => out.path_specifier,
            };
        }
        out.case_sensitive = Some(pb::boolv(!m.ignore_uri_case));
        if let Some(method) = &m.method {
            out.headers.push(header_matcher(":method", method));
        }
        if let Some(authority) = &m.authority {
            out.headers.push(header_matcher(":authority", authority));
        }
        if let Some(scheme) = &m.scheme {
            out.headers.push(header_matcher(":scheme", scheme));
        }
        for (name, sm) in &m.query_params {
            let specifier = if is_presence(sm) {
                route::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
            } else {
                match string_matcher(sm) {
                    Some(s) => {
                        route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(s)
                    }
                    None => {
                        route::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(
                            true,
                        )
                    }
                }
            };
            out.query_parameters.push(route::QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(specifier),
            });
        }
        Some(out)
    }

    fn redirect(&mut self, r: &HttpRedirect) -> Option<route::route::Action> {
        use route::redirect_action::{
            PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
        };
        let mut action = route::RedirectAction {
            host_redirect: r.authority.clone(),
            ..Default::default()
        };
        action.path_rewrite_specifier = if !r.prefix_rewrite.is_empty() {
            Some(PathRewriteSpecifier::PrefixRewrite(
                r.prefix_rewrite.clone(),
            ))
        } else if !r.uri.is_empty() {
            Some(PathRewriteSpecifier::PathRedirect(r.uri.clone()))
        } else {
            None
        };
        if !r.scheme.is_empty() {
            action.scheme_rewrite_specifier =
                Some(SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone()));
        }
        if let Some(port) = r.redirect_port {
            action.port_redirect = match port {
                RedirectPort::Port(p) => p,
                // Envoy cannot derive the port from the request, but these routes serve
                // exactly one listener port, which is the request's port.
                RedirectPort::DerivePort(RedirectPortSelection::FromRequestPort) => {
                    self.target.port
                }
                RedirectPort::DerivePort(RedirectPortSelection::FromProtocolDefault) => 0,
            };
            let scheme = if !r.scheme.is_empty() {
                r.scheme.as_str()
            } else if self.target.is_tls {
                "https"
            } else {
                "http"
            };
            if (action.port_redirect == 80 && scheme == "http")
                || (action.port_redirect == 443 && scheme == "https")
            {
                action.port_redirect = 0;
            }
        }
        action.response_code = match r.redirect_code {
            0 | 301 => RedirectResponseCode::MovedPermanently,
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            other => {
                self.warn(
                    &self.field("redirect.redirectCode"),
                    format!(
                        "redirect code {other} is not one of 301, 302, 303, 307, 308; the route is left out"
                    ),
                );
                return None;
            }
        } as i32;
        Some(route::route::Action::Redirect(action))
    }

    fn route_action(
        &mut self,
        http: &HttpRoute,
        out: &mut route::Route,
        mut authority: String,
    ) -> route::RouteAction {
        let timeout = http
            .timeout
            .map(|t| pb::duration(t.get()))
            .unwrap_or_else(|| pb::seconds(0));
        // Istio's choice, kept: the deprecated `max_grpc_timeout` lets gRPC clients'
        // `grpc-timeout` apply up to the route timeout. Its replacement,
        // `max_stream_duration`, would switch Envoy to stream timeouts and make it ignore
        // `timeout` altogether.
        #[allow(deprecated)]
        let mut action = route::RouteAction {
            // Istio disables Envoy's 15 s default: no timeout unless the route sets one.
            timeout: Some(timeout),
            max_grpc_timeout: Some(timeout),
            ..Default::default()
        };
        if let Some(rw) = &http.rewrite {
            if let Some(rr) = &rw.uri_regex_rewrite {
                action.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                    pattern: Some(pb::regex(&rr.pattern)),
                    substitution: rr.rewrite.clone(),
                });
            } else if !rw.uri.is_empty() {
                action.prefix_rewrite = rw.uri.clone();
            }
            if !rw.authority.is_empty() {
                authority = rw.authority.clone();
            }
        }
        if !authority.is_empty() {
            action.host_rewrite_specifier =
                Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(authority));
        }

        // Mirrors: the deprecated single `mirror` first, then `mirrors`.
        if let Some(mirror) = &http.mirror {
            let percent = match (http.mirror_percentage, http.mirror_percent) {
                (Some(p), _) => (p.value > 0.0).then(|| pb::percent_of_million(p.value)),
                (None, Some(p)) => (p > 0).then(|| pb::percent_of_hundred(p)),
                (None, None) => Some(pb::percent_of_hundred(100)),
            };
            if let Some(percent) = percent {
                let cluster = self.destination_cluster("mirror", mirror);
                action
                    .request_mirror_policies
                    .push(mirror_policy(cluster, percent));
            }
        }
        for (k, m) in http.mirrors.iter().enumerate() {
            let percent = match m.percentage {
                Some(p) => (p.value > 0.0).then(|| pb::percent_of_million(p.value)),
                None => Some(pb::percent_of_hundred(100)),
            };
            if let (Some(percent), Some(dest)) = (percent, &m.destination) {
                let cluster = self.destination_cluster(&format!("mirrors[{k}].destination"), dest);
                action
                    .request_mirror_policies
                    .push(mirror_policy(cluster, percent));
            }
        }

        let mut consistent_hash = false;
        if http.route.len() == 1 {
            let dst = &http.route[0];
            let cluster = match &dst.destination {
                Some(d) => self.destination_cluster("route[0].destination", d),
                None => "UnknownService".to_string(),
            };
            action.cluster_specifier =
                Some(route::route_action::ClusterSpecifier::Cluster(cluster));
            if let Some(h) = &dst.headers {
                let ops = header_operations(h);
                out.request_headers_to_add.extend(ops.request_add);
                out.request_headers_to_remove.extend(ops.request_remove);
                out.response_headers_to_add.extend(ops.response_add);
                out.response_headers_to_remove.extend(ops.response_remove);
                // A route-level authority rewrite wins over a destination's.
                if !ops.authority.is_empty() && action.host_rewrite_specifier.is_none() {
                    action.host_rewrite_specifier = Some(
                        route::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                            ops.authority,
                        ),
                    );
                }
            }
            if let Some(hash) = self.hash_policy(dst) {
                consistent_hash = true;
                action.hash_policy.push(hash);
            }
        } else {
            let mut clusters = Vec::with_capacity(http.route.len());
            for (k, dst) in http.route.iter().enumerate() {
                if dst.weight == 0 {
                    continue;
                }
                let name = match &dst.destination {
                    Some(d) => self.destination_cluster(&format!("route[{k}].destination"), d),
                    None => "UnknownService".to_string(),
                };
                let mut cw = route::weighted_cluster::ClusterWeight {
                    name,
                    weight: Some(pb::u32v(u32::try_from(dst.weight).unwrap_or(0))),
                    ..Default::default()
                };
                if let Some(h) = &dst.headers {
                    let ops = header_operations(h);
                    cw.request_headers_to_add = ops.request_add;
                    cw.request_headers_to_remove = ops.request_remove;
                    cw.response_headers_to_add = ops.response_add;
                    cw.response_headers_to_remove = ops.response_remove;
                    if !ops.authority.is_empty() {
                        cw.host_rewrite_specifier = Some(
                            route::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                                ops.authority,
                            ),
                        );
                    }
                }
                if let Some(hash) = self.hash_policy(dst) {
                    action.hash_policy.push(hash);
                }
                clusters.push(cw);
            }
            action.cluster_specifier = Some(
                route::route_action::ClusterSpecifier::WeightedClusters(route::WeightedCluster {
                    clusters,
                    ..Default::default()
                }),
            );
        }
        action.retry_policy = retry::policy(http.retries.as_ref(), consistent_hash);
        action
    }

    /// The service a destination host names, as this gateway sees it.
    fn service(&self, host: &str) -> Option<&Service> {
        self.scope
            .registry
            .service(host, &self.scope.namespace, Some(self.namespace()))
    }

    /// Istio's `GetDestinationCluster`: the port is the destination's, else the service's
    /// only port, else the listener port. Records the service as referenced.
    fn destination_cluster(&mut self, field: &str, d: &Destination) -> String {
        if d.host.is_empty() {
            return "UnknownService".to_string();
        }
        let host = self.scope.resolve_host(&d.host, self.namespace());
        let service = self.service(&host).cloned();
        let port = match (&d.port, &service) {
            (Some(p), _) => p.number,
            (None, Some(s)) if s.ports.len() == 1 => s.ports[0].number,
            _ => self.target.port,
        };
        match &service {
            Some(s) => {
                self.references
                    .insert((s.hostname.clone(), s.namespace.clone()));
                if s.port(port).is_none() {
                    self.warn(
                        &self.field(field),
                        format!(
                            "service `{host}` has no port {port}; requests routed here get 503 (no cluster)"
                        ),
                    );
                }
            }
            None => self.warn(
                &self.field(&format!("{field}.host")),
                format!(
                    "no ServiceEntry visible from namespace `{}` defines host `{host}`; requests routed here get 503 (no cluster)",
                    self.scope.namespace
                ),
            ),
        }
        names::cluster_name(&d.subset, &host, port)
    }

    /// The route hash policy from the destination's DestinationRule consistent hash.
    fn hash_policy(&self, dst: &HttpRouteDestination) -> Option<route::route_action::HashPolicy> {
        let d = dst.destination.as_ref()?;
        let host = self.scope.resolve_host(&d.host, self.namespace());
        let service_ns = self.service(&host).map(|s| s.namespace.clone());
        let dr = self.scope.destination_rule(&host, service_ns.as_deref())?;
        let port = d.port.map(|p| p.number);
        let hash_of = |policy: Option<&crate::config::types::destination_rule::TrafficPolicy>| {
            policy.and_then(|tp| consistent_hash(tp.load_balancer.as_ref()))
        };
        let port_hash_of =
            |policy: Option<&crate::config::types::destination_rule::TrafficPolicy>| {
                let port = port?;
                policy?
                    .port_level_settings
                    .iter()
                    .find(|p| p.port.map(|s| s.number) == Some(port))
                    .and_then(|p| consistent_hash(p.load_balancer.as_ref()))
            };
        let top = dr.traffic_policy.as_ref();
        let subset = dr
            .subset(&d.subset)
            .filter(|_| !d.subset.is_empty())
            .and_then(|s| s.traffic_policy.as_ref());
        let chosen = port_hash_of(subset)
            .or_else(|| hash_of(subset))
            .or_else(|| port_hash_of(top))
            .or_else(|| hash_of(top))?;
        hash_policy(&chosen)
    }

    fn fault(&mut self, f: &HttpFaultInjection) -> Option<fault::HttpFault> {
        let mut out = fault::HttpFault::default();
        if let Some(d) = &f.delay {
            match d.delay_type {
                Some(DelayType::FixedDelay(fixed)) => {
                    let percentage = match d.percentage {
                        Some(p) => pb::percent_of_million(p.value),
                        None => pb::percent_of_hundred(u32::try_from(d.percent).unwrap_or(0)),
                    };
                    out.delay = Some(common_fault::FaultDelay {
                        percentage: Some(percentage),
                        fault_delay_secifier: Some(
                            common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                                pb::duration(fixed.get()),
                            ),
                        ),
                    });
                }
                _ => self.warn(
                    &self.field("fault.delay"),
                    "only fixedDelay is supported (as in Istio); the delay is left out".into(),
                ),
            }
        }
        if let Some(a) = &f.abort {
            let error_type = match &a.error_type {
                Some(AbortError::HttpStatus(s)) => Some(fault::fault_abort::ErrorType::HttpStatus(
                    u32::try_from(*s).unwrap_or(0),
                )),
                Some(AbortError::GrpcStatus(name)) => match grpc_status(name) {
                    Some(code) => Some(fault::fault_abort::ErrorType::GrpcStatus(code)),
                    None => {
                        self.warn(
                            &self.field("fault.abort.grpcStatus"),
                            format!("unknown gRPC status `{name}`; the abort is left out"),
                        );
                        None
                    }
                },
                _ => {
                    self.warn(
                        &self.field("fault.abort"),
                        "only httpStatus and grpcStatus aborts are supported (as in Istio); the abort is left out".into(),
                    );
                    None
                }
            };
            if let Some(error_type) = error_type {
                out.abort = Some(fault::FaultAbort {
                    percentage: a.percentage.map(|p| pb::percent_of_million(p.value)),
                    error_type: Some(error_type),
                    ..Default::default()
                });
            }
        }
        (out.delay.is_some() || out.abort.is_some()).then_some(out)
    }
}

/// A match on every path, case-sensitive unless told otherwise.
fn default_match() -> route::RouteMatch {
    route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    }
}

/// Whether a string match means "present" (`{}`, or the regex `*` Istio reads as "any").
fn is_presence(sm: &StringMatch) -> bool {
    match sm {
        StringMatch::Empty => true,
        StringMatch::Regex(r) => r == "*",
        _ => false,
    }
}

/// An Envoy string matcher for an Istio string match (None for presence).
pub fn string_matcher(sm: &StringMatch) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern;
    let pattern = match sm {
        StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(r) => MatchPattern::SafeRegex(pb::regex(r)),
        StringMatch::Empty => return None,
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn header_matcher(name: &str, sm: &StringMatch) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier;
    let specifier = if is_presence(sm) {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        match string_matcher(sm) {
            Some(s) => HeaderMatchSpecifier::StringMatch(s),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }
    };
    route::HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// Header operations of a route or destination.
#[derive(Default)]
struct HeaderOps {
    request_add: Vec<core::HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<core::HeaderValueOption>,
    response_remove: Vec<String>,
    /// `:authority`/`host` set or added: becomes a host rewrite.
    authority: String,
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// `set` (overwrite) then `add` (append), each sorted by name; pseudo-headers and
/// `host` cannot be set by Envoy and become an authority rewrite instead.
fn header_operations(h: &Headers) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let translate = |map: &BTreeMap<String, String>, append: bool, authority: &mut String| {
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            if is_authority_header(k) {
                *authority = v.clone();
            }
            if is_internal_header(k) {
                continue;
            }
            out.push(pb::header_value_option(k, v, append));
        }
        out
    };
    let keep = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| !is_internal_header(n))
            .cloned()
            .collect()
    };
    if let Some(req) = &h.request {
        let mut set_authority = String::new();
        let mut add_authority = String::new();
        ops.request_add = translate(&req.set, false, &mut set_authority);
        ops.request_add
            .extend(translate(&req.add, true, &mut add_authority));
        ops.request_remove = keep(&req.remove);
        ops.authority = if set_authority.is_empty() {
            add_authority
        } else {
            set_authority
        };
    }
    if let Some(resp) = &h.response {
        let mut ignored = String::new();
        ops.response_add = translate(&resp.set, false, &mut ignored);
        ops.response_add
            .extend(translate(&resp.add, true, &mut ignored));
        ops.response_remove = keep(&resp.remove);
    }
    ops
}

fn mirror_policy(
    cluster: String,
    percent: crate::xds::pb::envoy::r#type::v3::FractionalPercent,
) -> route::route_action::RequestMirrorPolicy {
    route::route_action::RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(core::RuntimeFractionalPercent {
            default_value: Some(percent),
            runtime_key: String::new(),
        }),
        trace_sampled: Some(pb::boolv(false)),
        ..Default::default()
    }
}

/// `istio.config` route/cluster metadata pointing back at the Istio resource.
pub fn config_metadata(kind: &str, namespace: &str, name: &str) -> core::Metadata {
    let path = format!("/apis/networking.istio.io/v1/namespaces/{namespace}/{kind}/{name}");
    let mut fields = std::collections::HashMap::new();
    fields.insert("config".to_string(), pb::string_value(&path));
    let mut filter_metadata = std::collections::HashMap::new();
    filter_metadata.insert(
        "istio".to_string(),
        crate::xds::pb::google::protobuf::Struct { fields },
    );
    core::Metadata {
        filter_metadata,
        ..Default::default()
    }
}

/// The decorator operation Istio writes: `host:port/path*` for a single cluster, else
/// `vs-name:port/path*`.
fn operation(r: &route::Route, vs_name: &str, port: u32) -> String {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route::route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route::route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route::route_match::PathSpecifier::SafeRegex(re)) => re.regex.clone(),
        _ => "/*".to_string(),
    };
    if let Some(route::route::Action::Route(a)) = &r.action
        && let Some(route::route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier
    {
        let parts: Vec<&str> = c.split('|').collect();
        if parts.len() == 4 && parts[0] == names::OUTBOUND {
            return format!("{}:{}{path}", parts[3], parts[1]);
        }
    }
    format!("{vs_name}:{port}{path}")
}

fn cors_policy(c: &CorsPolicy) -> cors::CorsPolicy {
    let allow_origin_string_match = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().filter_map(string_matcher).collect()
    } else {
        c.allow_origin.iter().map(|o| pb::exact(o)).collect()
    };
    cors::CorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(pb::boolv),
        filter_enabled: Some(core::RuntimeFractionalPercent {
            default_value: Some(pb::percent_of_hundred(100)),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: Some(pb::boolv(
            c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        )),
        ..Default::default()
    }
}

/// The consistent-hash settings of a load balancer, if it uses consistent hashing.
pub fn consistent_hash(
    lb: Option<&crate::config::types::destination_rule::LoadBalancerSettings>,
) -> Option<ConsistentHashLb> {
    match lb?.lb_policy.as_ref()? {
        LbPolicy::ConsistentHash(c) => Some(c.clone()),
        LbPolicy::Simple(_) => None,
    }
}

/// The route hash policy for a consistent hash (None without a hash key).
fn hash_policy(c: &ConsistentHashLb) -> Option<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{self as hp, PolicySpecifier};
    let specifier = match c.hash_key.as_ref()? {
        HashKey::HttpHeaderName(name) => PolicySpecifier::Header(hp::Header {
            header_name: name.clone(),
            regex_rewrite: None,
        }),
        HashKey::HttpCookie(cookie) => PolicySpecifier::Cookie(hp::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|t| pb::duration(t.get())),
            path: cookie.path.clone(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| hp::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                })
                .collect(),
        }),
        HashKey::UseSourceIp(on) => {
            PolicySpecifier::ConnectionProperties(hp::ConnectionProperties { source_ip: *on })
        }
        HashKey::HttpQueryParameterName(name) => {
            PolicySpecifier::QueryParameter(hp::QueryParameter { name: name.clone() })
        }
    };
    Some(route::route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    })
}

/// gRPC status codes by name, as Istio accepts them.
fn grpc_status(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
}
