//! A compiled RouteConfiguration: virtual hosts selected in Envoy's order and routes
//! matched first-to-last.
use crate::proxy::http::filters::cors::CorsPolicy;
use crate::proxy::http::filters::fault::Fault;
use crate::proxy::route::action::{Action, RetryPolicy};
use crate::proxy::route::headers::HeaderMutations;
use crate::proxy::route::matcher::{RequestView, RouteMatch};
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: std::sync::Arc<str>,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// The most specific fault config for this route (route, virtual host, route
    /// configuration); the connection manager's filter config applies when `None`.
    pub fault: Option<Arc<Fault>>,
    pub cors: Option<Arc<CorsPolicy>>,
    /// Per-route configs of the other HTTP filters, by filter name (most specific of
    /// route, virtual host and route configuration).
    pub filters: crate::proxy::http::filter::PerFilterConfigs,
    /// The route's `rate_limits` (the `ratelimit` filter makes descriptors from them).
    pub rate_limits: crate::proxy::http::filters::ratelimit::RateLimitPolicy,
    /// `include_vh_rate_limits`: the virtual host's `rate_limits` apply too.
    pub include_vh_rate_limits: bool,
    /// The route's `decorator`: the operation name its spans take, and whether an egress
    /// request carries it upstream (`x-envoy-decorator-operation`).
    pub decorator: Option<Decorator>,
}

/// A route's `decorator`.
#[derive(Debug, Clone)]
pub struct Decorator {
    pub operation: std::sync::Arc<str>,
    pub header: http::HeaderValue,
    pub propagate: bool,
}

impl Route {
    /// The per-route config for the filter named `name`, if it is a `T`.
    pub fn filter_config<T: std::any::Any + Send + Sync>(&self, name: &str) -> Option<&T> {
        self.filters.get::<T>(name)
    }
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    pub name: Box<str>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub include_request_attempt_count: bool,
    pub include_attempt_count_in_response: bool,
    /// Used by routes that have no retry policy of their own.
    pub retry: Option<Arc<RetryPolicy>>,
    /// `require_tls` (ALL or EXTERNAL_ONLY; every client is external): requests that
    /// did not arrive over TLS get a 301 to `https://` (Istio's `httpsRedirect`).
    pub require_tls: bool,
    /// The virtual host's `rate_limits`, for routes that use them.
    pub rate_limits: crate::proxy::http::filters::ratelimit::RateLimitPolicy,
}

impl VirtualHost {
    /// The first route that matches.
    pub fn route(&self, req: &RequestView<'_>, random: u64) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req, random))
    }
}

/// A compiled RouteConfiguration.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub name: Box<str>,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Exact domains (lower-case) -> virtual host index.
    pub(crate) exact: HashMap<Box<str>, usize>,
    /// `*.x` / `*-x` wildcards as (suffix without `*`, index), longest suffix first.
    pub(crate) suffixes: Vec<(Box<str>, usize)>,
    /// `x.*` wildcards as (prefix without `*`, index), longest prefix first.
    pub(crate) prefixes: Vec<(Box<str>, usize)>,
    pub(crate) default: Option<usize>,
    pub ignore_port_in_host_matching: bool,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// Apply route-configuration, then virtual host, then route mutations (so the most
    /// specific wins); Envoy's default is the reverse order.
    pub most_specific_header_mutations_wins: bool,
    pub internal_only_headers: Vec<http::HeaderName>,
}

const HOST_BUF: usize = 256;

impl RouteTable {
    /// Envoy's virtual host selection: exact domain, longest suffix wildcard, longest
    /// prefix wildcard, then `*`. Host matching is case-insensitive.
    pub fn virtual_host(&self, host: &[u8]) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            strip_port(host)
        } else {
            host
        };
        let mut buf = [0u8; HOST_BUF];
        let owned;
        let lower: &[u8] = if host.len() <= HOST_BUF {
            for (d, s) in buf.iter_mut().zip(host) {
                *d = s.to_ascii_lowercase();
            }
            &buf[..host.len()]
        } else {
            owned = host.to_ascii_lowercase();
            &owned
        };
        let Ok(lower) = std::str::from_utf8(lower) else {
            return self.default.map(|i| &self.virtual_hosts[i]);
        };
        let idx = self
            .exact
            .get(lower)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| lower.len() > s.len() && lower.ends_with(&**s))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| lower.len() > p.len() && lower.starts_with(&**p))
                    .map(|(_, i)| *i)
            })
            .or(self.default)?;
        Some(&self.virtual_hosts[idx])
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
pub fn strip_port(host: &[u8]) -> &[u8] {
    if let Some(end) = host.iter().rposition(|&b| b == b']') {
        return &host[..=end];
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(domains: &[&[&str]], ignore_port: bool) -> RouteTable {
        use crate::xds::pb::envoy::config::route::v3 as pb;
        let rc = pb::RouteConfiguration {
            name: "t".into(),
            ignore_port_in_host_matching: ignore_port,
            virtual_hosts: domains
                .iter()
                .enumerate()
                .map(|(i, d)| pb::VirtualHost {
                    name: format!("vh{i}"),
                    domains: d.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        crate::proxy::compile::route::compile_route_config(&rc, &Default::default()).unwrap()
    }

    #[test]
    fn virtual_host_selection_order() {
        let t = table(
            &[
                &["*"],
                &["*.example.com"],
                &["*.b.example.com"],
                &["api.example.com", "API2.example.com"],
                &["api.*"],
                &["api.example.com:8080"],
                &["*-x.org"],
            ],
            false,
        );
        let cases: &[(&str, Option<&str>)] = &[
            ("api.example.com", Some("vh3")),
            ("API.EXAMPLE.COM", Some("vh3")),
            ("api2.example.com", Some("vh3")),
            ("api.example.com:8080", Some("vh5")),
            ("x.b.example.com", Some("vh2")),
            ("a.b.c.example.com", Some("vh1")),
            ("example.com", Some("vh0")),
            ("api.other", Some("vh4")),
            ("api.example.com.", Some("vh4")),
            ("www.example.com.", Some("vh0")),
            ("foo-x.org", Some("vh6")),
            ("-x.org", Some("vh0")),
            ("nothing", Some("vh0")),
        ];
        for (host, want) in cases {
            let got = t.virtual_host(host.as_bytes()).map(|v| &*v.name);
            assert_eq!(got, *want, "host {host}");
        }
        let no_default = table(&[&["a.com"]], false);
        assert!(no_default.virtual_host(b"b.com").is_none());
        assert!(no_default.virtual_host(b"a.com:80").is_none());
        let ignore_port = table(&[&["a.com"]], true);
        assert_eq!(&*ignore_port.virtual_host(b"a.com:80").unwrap().name, "vh0");
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port(b"a:80"), b"a");
        assert_eq!(strip_port(b"a"), b"a");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"[::1]"), b"[::1]");
    }
}
