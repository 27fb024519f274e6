//! Checks of one `VirtualService` on its own: hosts, gateways, and every HTTP, TLS and
//! TCP route.
use super::common::{
    Sink, check_duration, check_export_to, check_header_name, check_header_value, check_labels_map,
    check_percentage, check_port, check_wildcard_host, is_dns1123_label, is_ip, report_regex,
};
use crate::config::diag::Diagnostic;
use crate::config::hosts;
use crate::config::types::StringMatch;
use crate::config::types::virtual_service::{
    AbortError, CorsPolicy, DelayType, Destination, HeaderOperations, Headers, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute, HttpRouteDestination, RedirectPort,
    RouteDestination, TcpRoute, TlsRoute,
};
use crate::config::types::{Resource, VirtualService};
use std::collections::HashMap;

/// The gateway name that means "the sidecars of the mesh".
pub const MESH_GATEWAY: &str = "mesh";

/// Retry conditions Envoy understands in `x-envoy-retry-on` and `x-envoy-retry-grpc-on`.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted by fault injection.
pub const GRPC_STATUS: &[&str] = &[
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

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// Whether a VirtualService applies to gateways (and not to the mesh's sidecars).
pub fn applies_to_gateways(vs: &VirtualService) -> bool {
    !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// Validates one VirtualService.
pub fn validate(vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(vs, out);
    let spec = &vs.spec;
    if spec.hosts.is_empty() {
        if !spec.gateways.is_empty() {
            s.error(
                "spec.gateways",
                "a VirtualService without hosts is a delegate and cannot name gateways",
            );
        }
        if !spec.tls.is_empty() {
            s.error(
                "spec.tls",
                "a delegate VirtualService (no hosts) cannot have tls routes",
            );
        }
        if !spec.tcp.is_empty() {
            s.error(
                "spec.tcp",
                "a delegate VirtualService (no hosts) cannot have tcp routes",
            );
        }
    }
    for (i, gw) in spec.gateways.iter().enumerate() {
        check_gateway_name(&mut s, &format!("spec.gateways[{i}]"), gw);
    }
    let to_gateway = applies_to_gateways(spec);
    let to_mesh = !to_gateway;
    let mut hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if is_ip(host) {
            if !spec.http.is_empty() {
                s.warning(
                    &field,
                    format!("`{host}` is an IP address: HTTP routes match it only when clients send it as the Host"),
                );
            }
            continue;
        }
        if let Err(message) = check_wildcard_host(host) {
            s.error(&field, message);
            hosts_valid = false;
        } else if to_mesh && host == "*" {
            s.error(
                &field,
                "host `*` is not allowed for a VirtualService that applies to the mesh",
            );
            hosts_valid = false;
        }
    }
    if hosts_valid {
        // Overlapping pairs (i < j): equal names found by look-up, wildcards compared
        // one by one (a VirtualService may name thousands of hosts).
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut exact: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        let mut wildcards: Vec<usize> = Vec::new();
        for (j, b) in spec.hosts.iter().enumerate() {
            if hosts::is_wildcard(b) {
                pairs.extend(
                    (0..j)
                        .filter(|&i| hosts::matches(&spec.hosts[i], b))
                        .map(|i| (i, j)),
                );
                wildcards.push(j);
            } else {
                pairs.extend(exact.get(b.as_str()).into_iter().flatten().map(|&i| (i, j)));
                pairs.extend(
                    wildcards
                        .iter()
                        .filter(|&&i| hosts::matches(&spec.hosts[i], b))
                        .map(|&i| (i, j)),
                );
                exact.entry(b.as_str()).or_default().push(j);
            }
        }
        pairs.sort_unstable();
        for (i, j) in pairs {
            let (a, b) = (&spec.hosts[i], &spec.hosts[j]);
            s.error(
                &format!("spec.hosts[{j}]"),
                format!("duplicate hosts in virtual service: `{a}` and `{b}` overlap"),
            );
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        s.error("spec", "a VirtualService needs http, tls or tcp routes");
    }
    let delegate = spec.hosts.is_empty();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, route) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        validate_http_route(&mut s, &path, route, delegate);
        if !route.name.is_empty() {
            if let Some(first) = names.get(route.name.as_str()) {
                s.error(
                    &format!("{path}.name"),
                    format!(
                        "route name `{}` is already used by spec.http[{first}]",
                        route.name
                    ),
                );
            } else {
                names.insert(&route.name, i);
            }
        }
        for (j, m) in route.matches.iter().enumerate() {
            for (k, gw) in m.gateways.iter().enumerate() {
                let field = format!("{path}.match[{j}].gateways[{k}]");
                check_gateway_name(&mut s, &field, gw);
                if !spec.gateways.is_empty() && !spec.gateways.contains(gw) && gw != MESH_GATEWAY {
                    s.warning(
                        &field,
                        format!(
                            "gateway `{gw}` is not among spec.gateways, so this match never applies"
                        ),
                    );
                }
            }
        }
    }
    unreachable_http_rules(&mut s, &spec.http);
    for (i, route) in spec.tls.iter().enumerate() {
        validate_tls_route(&mut s, &format!("spec.tls[{i}]"), route, spec, to_gateway);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        validate_tcp_route(&mut s, &format!("spec.tcp[{i}]"), route);
    }
    for (i, message) in check_export_to(&spec.export_to) {
        s.error(&format!("spec.exportTo[{i}]"), message);
    }
}

/// `name`, `namespace/name`, `mesh`; the legacy `name.namespace` is accepted with a warning.
fn check_gateway_name(s: &mut Sink<'_, VirtualService>, field: &str, name: &str) {
    if name == MESH_GATEWAY {
        return;
    }
    match name.split_once('/') {
        Some((ns, gw)) => {
            if ns.is_empty() || gw.is_empty() {
                s.error(
                    field,
                    format!("`{name}`: namespace and gateway name cannot be empty"),
                );
                return;
            }
            if !is_dns1123_label(ns) {
                s.error(field, format!("`{name}`: invalid namespace `{ns}`"));
            }
            if !is_dns1123_label(gw) {
                s.error(field, format!("`{name}`: invalid gateway name `{gw}`"));
            }
        }
        None if name.contains('.') => {
            let (gw, ns) = name.split_once('.').unwrap_or((name, ""));
            s.warning(
                field,
                format!(
                    "legacy gateway name form `{name}`; prefer `namespace/name`: `{}/{gw}`",
                    ns.split('.').next().unwrap_or(ns)
                ),
            );
        }
        None => {
            if !is_dns1123_label(name) {
                s.error(field, format!("invalid gateway name `{name}`"));
            }
        }
    }
}

fn validate_http_route(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    r: &HttpRoute,
    in_delegate: bool,
) {
    let f = |name: &str| format!("{path}.{name}");
    let has_route = !r.route.is_empty();
    if let Some(_delegate) = &r.delegate {
        if in_delegate {
            s.error(
                &f("delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if has_route {
            s.error(
                &f("route"),
                "a route with `delegate` cannot also have `route`",
            );
        }
        if r.redirect.is_some() {
            s.error(
                &f("redirect"),
                "a route with `delegate` cannot also have `redirect`",
            );
        }
        if r.direct_response.is_some() {
            s.error(
                &f("directResponse"),
                "a route with `delegate` cannot also have `directResponse`",
            );
        }
    } else if r.redirect.is_some() {
        if has_route {
            s.error(
                &f("redirect"),
                "a route cannot have both `route` and `redirect`",
            );
        }
        if r.fault.is_some() {
            s.error(
                &f("fault"),
                "a route cannot have both `fault` and `redirect`",
            );
        }
        if r.rewrite.is_some() {
            s.error(
                &f("rewrite"),
                "a route cannot have both `rewrite` and `redirect`",
            );
        }
        if r.direct_response.is_some() {
            s.error(
                &f("directResponse"),
                "a route cannot have both `directResponse` and `redirect`",
            );
        }
    } else if r.direct_response.is_some() {
        if has_route {
            s.error(
                &f("directResponse"),
                "a route cannot have both `route` and `directResponse`",
            );
        }
        if r.fault.is_some() {
            s.error(
                &f("fault"),
                "a route cannot have both `fault` and `directResponse`",
            );
        }
        if r.rewrite.is_some() {
            s.error(
                &f("rewrite"),
                "a route cannot have both `rewrite` and `directResponse`",
            );
        }
    } else if !has_route {
        s.error(
            path,
            "an HTTP route needs `route`, `redirect`, `directResponse` or `delegate`",
        );
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        s.error(
            &f("mirrors"),
            "a route cannot have both `mirror` and `mirrors`",
        );
    }
    for (j, m) in r.matches.iter().enumerate() {
        validate_match(s, &format!("{path}.match[{j}]"), m, r.delegate.is_some());
    }
    if let Some(headers) = &r.headers {
        validate_headers(s, &f("headers"), headers);
    }
    if let Some(cors) = &r.cors_policy {
        validate_cors(s, &f("corsPolicy"), cors);
    }
    if let Some(fault) = &r.fault {
        validate_fault(s, &f("fault"), fault);
    }
    if let Some(percent) = r.mirror_percent {
        if percent > 100 {
            s.error(
                &f("mirrorPercent"),
                format!("mirrorPercent {percent} is above 100"),
            );
        }
        s.warning(
            &f("mirrorPercent"),
            "mirrorPercent is deprecated; use mirrorPercentage",
        );
    }
    if let Some(p) = &r.mirror_percentage {
        s.check(&f("mirrorPercentage.value"), check_percentage(p.value));
    }
    if let Some(mirror) = &r.mirror {
        validate_destination(s, &f("mirror"), mirror);
    }
    for (j, mirror) in r.mirrors.iter().enumerate() {
        let mp = format!("{path}.mirrors[{j}]");
        match &mirror.destination {
            Some(d) => validate_destination(s, &format!("{mp}.destination"), d),
            None => s.error(&mp, "a mirror needs a destination"),
        }
        if let Some(p) = &mirror.percentage {
            s.check(&format!("{mp}.percentage.value"), check_percentage(p.value));
        }
    }
    if let Some(redirect) = &r.redirect {
        validate_redirect(s, &f("redirect"), redirect, &r.matches);
    }
    if let Some(dr) = &r.direct_response {
        if !(200..=599).contains(&dr.status) {
            s.error(
                &f("directResponse.status"),
                format!("HTTP status {} is not in the range 200-599", dr.status),
            );
        }
        let size = match &dr.body {
            Some(crate::config::types::virtual_service::HttpBody::String(b)) => b.len(),
            Some(crate::config::types::virtual_service::HttpBody::Bytes(b)) => b.len(),
            None => 0,
        };
        if size > 1024 * 1024 {
            s.error(
                &f("directResponse.body"),
                "a direct response body must be smaller than 1 MiB",
            );
        } else if size > 100 * 1024 {
            s.warning(
                &f("directResponse.body"),
                "direct response bodies above 100 KiB are held in every route table copy",
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        let rp = f("rewrite");
        if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            s.error(
                &rp,
                "rewrite may have only one of `uri` and `uriRegexRewrite`",
            );
        }
        if rw.uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.is_empty() {
            s.error(&rp, "rewrite needs `uri`, `uriRegexRewrite` or `authority`");
        }
        if let Some(re) = &rw.uri_regex_rewrite {
            if re.pattern.is_empty() || re.rewrite.is_empty() {
                s.error(
                    &format!("{rp}.uriRegexRewrite"),
                    "uriRegexRewrite needs both `match` and `rewrite`",
                );
            }
            if !re.pattern.is_empty() {
                report_regex(s, &format!("{rp}.uriRegexRewrite.match"), &re.pattern);
            }
        }
        if !rw.uri.is_empty()
            && r.matches
                .iter()
                .any(|m| matches!(m.uri, Some(StringMatch::Regex(_))))
        {
            s.warning(
                &format!("{rp}.uri"),
                "rewrite.uri with a regex uri match replaces the whole path; use uriRegexRewrite to keep parts of it",
            );
        }
    }
    check_authority_set_once(s, path, r);
    if let Some(t) = r.timeout {
        s.check(&f("timeout"), check_duration(t));
    }
    if let Some(retries) = &r.retries {
        validate_retries(s, &f("retries"), retries, r.timeout);
    }
    validate_http_destinations(s, path, &r.route);
}

fn check_authority_set_once(s: &mut Sink<'_, VirtualService>, path: &str, r: &HttpRoute) {
    let is_authority =
        |k: &str| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host");
    let mut current = r
        .rewrite
        .as_ref()
        .map(|rw| rw.authority.clone())
        .unwrap_or_default();
    let Some(req) = r.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (op, map) in [("set", &req.set), ("add", &req.add)] {
        for (k, v) in map {
            if !is_authority(k) {
                continue;
            }
            if !current.is_empty() {
                s.error(
                    &format!("{path}.headers.request.{op}.{k}"),
                    format!("the authority is already rewritten to `{current}`; it cannot also be set to `{v}`"),
                );
            }
            current = v.clone();
        }
    }
}

fn validate_match(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    m: &HttpMatchRequest,
    delegating: bool,
) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            validate_string_match(s, &format!("{path}.{name}"), sm, delegating);
        }
    }
    for (map_name, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let field = format!("{path}.{map_name}.{name}");
            if !name.starts_with("@request.auth.claims") {
                s.check(&field, check_header_name(name));
            }
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                s.warning(
                    &field,
                    format!(
                        "header names are matched in lower case; `{name}` never matches as written"
                    ),
                );
            }
            validate_string_match(s, &field, sm, delegating);
        }
    }
    for (name, sm) in &m.query_params {
        validate_string_match(s, &format!("{path}.queryParams.{name}"), sm, delegating);
    }
    if m.port != 0 {
        s.check(&format!("{path}.port"), check_port(m.port));
    }
    for (key, message) in check_labels_map(&m.source_labels) {
        s.error(&format!("{path}.sourceLabels.{key}"), message);
    }
    if !m.source_namespace.is_empty() && !is_dns1123_label(&m.source_namespace) {
        s.error(
            &format!("{path}.sourceNamespace"),
            format!(
                "sourceNamespace `{}` is not a namespace name",
                m.source_namespace
            ),
        );
    }
}

fn validate_string_match(
    s: &mut Sink<'_, VirtualService>,
    field: &str,
    sm: &StringMatch,
    delegating: bool,
) {
    match sm {
        StringMatch::Regex(re) => {
            if delegating {
                s.error(
                    &format!("{field}.regex"),
                    "regex matches are not supported on a route that delegates",
                );
            }
            report_regex(s, &format!("{field}.regex"), re);
        }
        StringMatch::Prefix(p) if p.is_empty() => {
            s.error(
                &format!("{field}.prefix"),
                "prefix must not be empty (omit the match to match everything)",
            );
        }
        _ => {}
    }
}

fn validate_headers(s: &mut Sink<'_, VirtualService>, path: &str, headers: &Headers) {
    if let Some(req) = &headers.request {
        validate_header_ops(s, &format!("{path}.request"), req, true);
    }
    if let Some(resp) = &headers.response {
        validate_header_ops(s, &format!("{path}.response"), resp, false);
    }
}

fn validate_header_ops(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    ops: &HeaderOperations,
    request: bool,
) {
    for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let field = format!("{path}.{op}.{name}");
            let authority =
                name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host");
            if !(request && authority) {
                check_operation_header_name(s, &field, name);
            }
            s.check(&field, check_header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        check_operation_header_name(s, &format!("{path}.remove[{i}]"), name);
    }
}

fn check_operation_header_name(s: &mut Sink<'_, VirtualService>, field: &str, name: &str) {
    if name.is_empty() {
        s.error(field, "header name cannot be empty");
    } else if name.eq_ignore_ascii_case("host") {
        s.error(
            field,
            "the Host header cannot be changed here; use rewrite.authority",
        );
    } else if name.starts_with(':') {
        s.error(field, format!("pseudo-header `{name}` cannot be changed"));
    } else {
        s.check(field, check_header_name(name));
    }
}

fn validate_cors(s: &mut Sink<'_, VirtualService>, path: &str, cors: &CorsPolicy) {
    if !cors.allow_origin.is_empty() {
        s.warning(
            &format!("{path}.allowOrigin"),
            "allowOrigin is deprecated; use allowOrigins",
        );
    }
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let field = format!("{path}.allowOrigins[{i}]");
        match origin {
            StringMatch::Empty => s.error(&field, "an allowed origin needs exact, prefix or regex"),
            StringMatch::Exact(v) | StringMatch::Prefix(v) if v.is_empty() => {
                s.error(&field, "an allowed origin cannot be empty")
            }
            StringMatch::Regex(re) => report_regex(s, &format!("{field}.regex"), re),
            _ => {}
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            s.error(
                &format!("{path}.allowMethods[{i}]"),
                format!("`{method}` is not an HTTP method (methods are upper case)"),
            );
        }
    }
    for (list, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" {
                s.check(&format!("{path}.{list}[{i}]"), check_header_name(name));
            }
        }
    }
    if let Some(max_age) = cors.max_age {
        s.check(&format!("{path}.maxAge"), check_duration(max_age));
        if max_age.get().subsec_nanos() != 0 {
            s.error(&format!("{path}.maxAge"), "maxAge is sent in whole seconds");
        }
    }
}

fn validate_fault(s: &mut Sink<'_, VirtualService>, path: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        s.error(path, "fault injection needs `abort` and/or `delay`");
    }
    if let Some(abort) = &fault.abort {
        let ap = format!("{path}.abort");
        if let Some(p) = &abort.percentage {
            s.check(&format!("{ap}.percentage.value"), check_percentage(p.value));
        }
        match &abort.error_type {
            Some(AbortError::HttpStatus(status)) => {
                if !(200..=599).contains(status) {
                    s.error(
                        &format!("{ap}.httpStatus"),
                        format!("HTTP status {status} is not in the range 200-599"),
                    );
                }
            }
            Some(AbortError::GrpcStatus(status)) => {
                if !GRPC_STATUS.contains(&status.as_str()) {
                    s.error(
                        &format!("{ap}.grpcStatus"),
                        format!("`{status}` is not a gRPC status name such as `UNAVAILABLE` or `NOT_FOUND`"),
                    );
                }
            }
            Some(AbortError::Http2Error(_)) => {
                s.error(
                    &format!("{ap}.http2Error"),
                    "HTTP/2 error aborts are not supported (by Istio either)",
                );
            }
            None => s.warning(
                &ap,
                "abort has no httpStatus or grpcStatus, so it does nothing",
            ),
        }
    }
    if let Some(delay) = &fault.delay {
        let dp = format!("{path}.delay");
        if let Some(p) = &delay.percentage {
            s.check(&format!("{dp}.percentage.value"), check_percentage(p.value));
        }
        if delay.percent != 0 {
            if !(0..=100).contains(&delay.percent) {
                s.error(
                    &format!("{dp}.percent"),
                    format!("percent {} is not in the range 0..100", delay.percent),
                );
            }
            s.warning(
                &format!("{dp}.percent"),
                "percent is deprecated; use percentage",
            );
        }
        match delay.delay_type {
            Some(DelayType::FixedDelay(d)) => {
                s.check(&format!("{dp}.fixedDelay"), check_duration(d))
            }
            Some(DelayType::ExponentialDelay(_)) => s.error(
                &format!("{dp}.exponentialDelay"),
                "exponentialDelay is not supported (by Istio either)",
            ),
            None => s.error(&dp, "delay needs fixedDelay"),
        }
    }
}

fn validate_redirect(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    r: &HttpRedirect,
    matches: &[HttpMatchRequest],
) {
    if !r.uri.is_empty() && !r.prefix_rewrite.is_empty() {
        s.error(
            path,
            "redirect may have only one of `uri` and `prefixRewrite`",
        );
    }
    if !r.prefix_rewrite.is_empty()
        && matches.iter().any(|m| {
            m.uri
                .as_ref()
                .is_some_and(|u| !matches!(u, StringMatch::Prefix(_)))
        })
    {
        s.error(
            &format!("{path}.prefixRewrite"),
            "prefixRewrite needs every uri match of the route to be a prefix match",
        );
    }
    if r.uri.is_empty()
        && r.prefix_rewrite.is_empty()
        && r.authority.is_empty()
        && r.redirect_port.is_none()
        && r.scheme.is_empty()
    {
        s.error(
            path,
            "redirect needs uri, prefixRewrite, authority, scheme or port",
        );
    }
    if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
        s.error(
            &format!("{path}.redirectCode"),
            format!("{} is not a redirect code (3xx)", r.redirect_code),
        );
    }
    if !r.scheme.is_empty() && r.scheme != "http" && r.scheme != "https" {
        s.error(
            &format!("{path}.scheme"),
            format!("redirect scheme `{}` must be `http` or `https`", r.scheme),
        );
    }
    if let Some(RedirectPort::Port(p)) = r.redirect_port {
        s.check(&format!("{path}.port"), check_port(p));
    }
}

fn validate_retries(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    r: &HttpRetry,
    timeout: Option<crate::config::Duration>,
) {
    if r.attempts < 0 {
        s.error(&format!("{path}.attempts"), "attempts cannot be negative");
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        s.error(
            &format!("{path}.attempts"),
            "retry settings are given but attempts is 0, which disables retries",
        );
    }
    if let Some(t) = r.per_try_timeout {
        s.check(&format!("{path}.perTryTimeout"), check_duration(t));
        if let Some(total) = timeout
            && t > total
        {
            s.warning(
                &format!("{path}.perTryTimeout"),
                format!("perTryTimeout {t} is longer than the route timeout {total}, so no retry can happen in time"),
            );
        }
    }
    if !r.retry_on.is_empty() {
        for token in r.retry_on.split(',') {
            let known = RETRY_ON.contains(&token)
                || token
                    .parse::<u16>()
                    .is_ok_and(|code| (100..=599).contains(&code));
            if !known {
                let hint = if token.trim() != token {
                    " (no spaces around commas)".to_string()
                } else {
                    match crate::config::types::common::nearest(token, RETRY_ON) {
                        Some(near) => format!("; did you mean `{near}`?"),
                        None => String::new(),
                    }
                };
                s.error(
                    &format!("{path}.retryOn"),
                    format!("`{token}` is not a retry condition{hint}"),
                );
            }
        }
    }
    if let Some(b) = r.backoff {
        s.check(&format!("{path}.backoff"), check_duration(b));
    }
}

/// A destination on its own: host, subset name, port.
pub fn validate_destination(s: &mut Sink<'_, VirtualService>, path: &str, d: &Destination) {
    if d.host.is_empty() {
        s.error(&format!("{path}.host"), "destination host is required");
    } else if d.host == "*" {
        s.error(&format!("{path}.host"), "destination host cannot be `*`");
    } else if !is_ip(&d.host) {
        s.check(&format!("{path}.host"), check_wildcard_host(&d.host));
    }
    if !d.subset.is_empty() && !is_dns1123_label(&d.subset) {
        s.error(
            &format!("{path}.subset"),
            format!("subset name `{}` must be a DNS-1123 label", d.subset),
        );
    }
    if let Some(port) = &d.port {
        s.check(&format!("{path}.port.number"), check_port(port.number));
    }
}

fn validate_http_destinations(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    route: &[HttpRouteDestination],
) {
    let weights: Vec<i32> = route.iter().map(|d| d.weight).collect();
    for (i, d) in route.iter().enumerate() {
        let dp = format!("{path}.route[{i}]");
        match &d.destination {
            Some(dest) => validate_destination(s, &format!("{dp}.destination"), dest),
            None => s.error(&dp, "destination is required"),
        }
        if let Some(h) = &d.headers {
            validate_headers(s, &format!("{dp}.headers"), h);
        }
    }
    check_weights(s, &format!("{path}.route"), &weights);
}

fn check_weights(s: &mut Sink<'_, VirtualService>, path: &str, weights: &[i32]) {
    for (i, w) in weights.iter().enumerate() {
        if *w < 0 {
            s.error(
                &format!("{path}[{i}].weight"),
                format!("weight {w} is negative"),
            );
        }
    }
    if weights.len() < 2 || weights.iter().any(|w| *w < 0) {
        return;
    }
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if total == 0 {
        s.error(path, "destinations have no weights; with several destinations, give each a weight (summing to 100)");
        return;
    }
    if total != 100 {
        s.warning(
            path,
            format!("weights sum to {total}, not 100; they are used as relative shares of {total}"),
        );
    }
    for (i, w) in weights.iter().enumerate() {
        if *w == 0 {
            s.warning(
                &format!("{path}[{i}]"),
                "this destination has weight 0 and receives no traffic",
            );
        }
    }
}

fn validate_route_destinations(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    route: &[RouteDestination],
) {
    for (i, d) in route.iter().enumerate() {
        let dp = format!("{path}.route[{i}]");
        match &d.destination {
            Some(dest) => validate_destination(s, &format!("{dp}.destination"), dest),
            None => s.error(&dp, "destination is required"),
        }
    }
    let weights: Vec<i32> = route.iter().map(|d| d.weight).collect();
    check_weights(s, &format!("{path}.route"), &weights);
}

fn validate_subnet(s: &mut Sink<'_, VirtualService>, field: &str, subnet: &str) {
    let ok = match subnet.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => is_ip(subnet),
    };
    if !ok {
        s.error(
            field,
            format!("`{subnet}` is not an IP address or CIDR block"),
        );
    }
}

fn validate_tls_route(
    s: &mut Sink<'_, VirtualService>,
    path: &str,
    r: &TlsRoute,
    vs: &VirtualService,
    to_gateway: bool,
) {
    if r.matches.is_empty() {
        s.error(path, "a TLS route needs at least one match");
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if m.sni_hosts.is_empty() {
            s.error(&mp, "a TLS match needs at least one sniHosts entry");
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let field = format!("{mp}.sniHosts[{k}]");
            if is_ip(sni) {
                s.warning(
                    &field,
                    format!("`{sni}` is an IP address; clients do not send IP addresses as SNI"),
                );
                continue;
            }
            let auto_sni = to_gateway && sni.starts_with("outbound_");
            if !auto_sni && let Err(message) = check_wildcard_host(sni) {
                s.error(&field, message);
                continue;
            }
            if !auto_sni && !vs.hosts.iter().any(|h| hosts::is_subset_of(sni, h)) {
                s.error(
                    &field,
                    format!(
                        "SNI host `{sni}` is not covered by the VirtualService hosts [{}]",
                        vs.hosts.join(", ")
                    ),
                );
            }
        }
        for (k, subnet) in m.destination_subnets.iter().enumerate() {
            validate_subnet(s, &format!("{mp}.destinationSubnets[{k}]"), subnet);
        }
        if m.port != 0 {
            s.check(&format!("{mp}.port"), check_port(m.port));
        }
    }
    if r.route.is_empty() {
        s.error(path, "a TLS route needs `route`");
    }
    validate_route_destinations(s, path, &r.route);
}

fn validate_tcp_route(s: &mut Sink<'_, VirtualService>, path: &str, r: &TcpRoute) {
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        for (k, subnet) in m.destination_subnets.iter().enumerate() {
            validate_subnet(s, &format!("{mp}.destinationSubnets[{k}]"), subnet);
        }
        if !m.source_subnet.is_empty() {
            validate_subnet(s, &format!("{mp}.sourceSubnet"), &m.source_subnet);
        }
        if m.port != 0 {
            s.check(&format!("{mp}.port"), check_port(m.port));
        }
    }
    if r.route.is_empty() {
        s.error(path, "a TCP route needs `route`");
    }
    validate_route_destinations(s, path, &r.route);
}

/// Rules that can never match: after a rule without conditions, and matches identical
/// to an earlier one (Istio's VirtualServiceUnreachableRule / IneffectiveMatch).
fn unreachable_http_rules(s: &mut Sink<'_, VirtualService>, routes: &[HttpRoute]) {
    let mut catch_all: Option<usize> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if let Some(first) = catch_all {
            s.warning(
                &path,
                format!("this rule is never used: spec.http[{first}] before it has no match conditions and takes every request"),
            );
            continue;
        }
        if route.matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in route.matches.iter().enumerate() {
            let key = serde_json::to_string(m).unwrap_or_default();
            match seen.get(&key) {
                Some(first) => {
                    duplicates += 1;
                    if duplicates < route.matches.len() {
                        s.warning(
                            &format!("{path}.match[{j}]"),
                            format!("this match is never used: spec.http[{first}] has the same conditions"),
                        );
                    }
                }
                None => {
                    seen.insert(key, i);
                }
            }
        }
        if duplicates == route.matches.len() {
            s.warning(
                &path,
                "this rule is never used: every one of its matches appears in an earlier rule",
            );
        }
    }
}
