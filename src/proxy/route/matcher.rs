//! Precompiled matchers: strings, paths, headers, query parameters, as Envoy applies them.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::xds::pb::envoy::config::route::v3 as route_pb;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher_pb;
use http::HeaderMap;
use regex::Regex;

/// Compiles an RE2-syntax regex for a full match (Envoy's `safe_regex` matches the
/// whole input).
pub(crate) fn full_regex(cx: &Cx, field: &str, re: &str) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| cx.err(field, format!("invalid regex {re:?}: {e}")))
}

/// Compiles an RE2-syntax regex used for search/substitution (not anchored).
pub(crate) fn search_regex(cx: &Cx, field: &str, re: &str) -> Result<Regex, CompileError> {
    Regex::new(re).map_err(|e| cx.err(field, format!("invalid regex {re:?}: {e}")))
}

pub(crate) fn compile_regex_matcher(
    cx: &mut Cx,
    m: &matcher_pb::RegexMatcher,
) -> Result<Regex, CompileError> {
    fields!(
        cx,
        m,
        matcher_pb::RegexMatcher {
            supported: [regex],
            ignored: [engine_type],
            unsupported: [],
        }
    );
    if m.regex.is_empty() {
        return Err(cx.err("regex", "value length must be at least 1 characters"));
    }
    full_regex(cx, "regex", &m.regex)
}

/// Envoy's `min_len: 1` on prefix, suffix and contains patterns.
fn non_empty<'s>(cx: &Cx, field: &str, s: &'s str) -> Result<&'s str, CompileError> {
    if s.is_empty() {
        return Err(cx.err(field, "value length must be at least 1 characters"));
    }
    Ok(s)
}

/// envoy.type.matcher.v3.StringMatcher, compiled.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(Box<str>, bool),
    Prefix(Box<str>, bool),
    Suffix(Box<str>, bool),
    Contains(Box<str>, bool),
    Regex(Regex),
}

fn lower_if(s: &str, ignore_case: bool) -> Box<str> {
    if ignore_case {
        s.to_ascii_lowercase().into()
    } else {
        s.into()
    }
}

fn contains_ignore_case(hay: &[u8], needle_lower: &[u8]) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    hay.windows(needle_lower.len())
        .any(|w| w.eq_ignore_ascii_case(needle_lower))
}

impl StringMatch {
    pub(crate) fn compile(
        cx: &mut Cx,
        m: &matcher_pb::StringMatcher,
    ) -> Result<StringMatch, CompileError> {
        use matcher_pb::string_matcher::MatchPattern as P;
        fields!(
            cx,
            m,
            matcher_pb::StringMatcher {
                supported: [ignore_case, match_pattern],
                ignored: [],
                unsupported: [],
            }
        );
        let ic = m.ignore_case;
        Ok(match &m.match_pattern {
            Some(P::Exact(s)) => StringMatch::Exact(lower_if(s, ic), ic),
            Some(P::Prefix(s)) => {
                StringMatch::Prefix(lower_if(non_empty(cx, "prefix", s)?, ic), ic)
            }
            Some(P::Suffix(s)) => {
                StringMatch::Suffix(lower_if(non_empty(cx, "suffix", s)?, ic), ic)
            }
            Some(P::Contains(s)) => {
                StringMatch::Contains(lower_if(non_empty(cx, "contains", s)?, ic), ic)
            }
            Some(P::SafeRegex(r)) => cx.at("safe_regex", |cx| {
                compile_regex_matcher(cx, r).map(StringMatch::Regex)
            })?,
            Some(P::Custom(_)) => return Err(cx.unsupported("custom")),
            None => return Err(cx.err("match_pattern", "a match pattern is required")),
        })
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            StringMatch::Exact(s, false) => v == s.as_bytes(),
            StringMatch::Exact(s, true) => v.eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Prefix(s, false) => v.starts_with(s.as_bytes()),
            StringMatch::Prefix(s, true) => {
                v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Suffix(s, false) => v.ends_with(s.as_bytes()),
            StringMatch::Suffix(s, true) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Contains(s, false) => {
                s.is_empty() || v.windows(s.len()).any(|w| w == s.as_bytes())
            }
            StringMatch::Contains(s, true) => contains_ignore_case(v, s.as_bytes()),
            StringMatch::Regex(r) => std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// How a route matches the path (without the query string).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    /// `path_separated_prefix`: the prefix followed by end of path or `/`.
    Separated(Box<str>),
    Regex(Regex),
}

/// What header conditions see of a request: the headers, and the pseudo-headers Envoy
/// keeps in the same map (`:method`, `:authority`, `:path`, `:scheme`), as they stand
/// when the route is chosen (after the connection manager's path normalization, port
/// stripping and `x-forwarded-proto` sanitizing). Built once per request from borrowed
/// parts; nothing is copied.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// `:authority`: HTTP/2's `:authority`, HTTP/1's Host (or the authority of an
    /// absolute-form target); Envoy also answers `host` with it.
    pub authority: &'a [u8],
    /// `:path`: the path with its query string.
    pub path_and_query: &'a str,
    /// The path without the query string (route path matching).
    pub path: &'a str,
    /// What follows `?`, or empty.
    pub query: &'a str,
    /// The scheme the request itself carried: HTTP/2's `:scheme`, or the scheme of an
    /// HTTP/1 absolute-form target.
    pub given_scheme: Option<&'a str>,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// A view of `path_and_query` (split at the first `?`) and `headers`.
    pub fn new(
        method: &'a http::Method,
        authority: &'a [u8],
        path_and_query: &'a str,
        given_scheme: Option<&'a str>,
        tls: bool,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        RequestView {
            method,
            authority,
            path_and_query,
            path,
            query,
            given_scheme,
            tls,
            headers,
        }
    }

    /// Envoy's `:scheme`: the one the request carried (lower-cased), else for HTTP/1 the
    /// (already sanitized) `x-forwarded-proto` when it is `http` or `https`, else by the
    /// downstream connection's encryption. Allocates only for a given scheme with
    /// upper-case letters.
    pub fn scheme(&self) -> std::borrow::Cow<'a, [u8]> {
        request_scheme(self.given_scheme, self.headers, self.tls)
    }
}

/// Envoy's `:scheme` of a request: `given` (HTTP/2's `:scheme` or an HTTP/1
/// absolute-form target's), lower-cased; else `x-forwarded-proto` in `headers` when it is
/// `http` or `https`; else by `tls`.
pub fn request_scheme<'a>(
    given: Option<&'a str>,
    headers: &HeaderMap,
    tls: bool,
) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    if let Some(s) = given {
        return if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase().into_bytes())
        } else {
            Cow::Borrowed(s.as_bytes())
        };
    }
    let mut xfp = headers
        .get_all(&crate::proxy::http::request::X_FORWARDED_PROTO)
        .iter();
    if let (Some(v), None) = (xfp.next(), xfp.next()) {
        if v.as_bytes().eq_ignore_ascii_case(b"https") {
            return Cow::Borrowed(b"https");
        }
        if v.as_bytes().eq_ignore_ascii_case(b"http") {
            return Cow::Borrowed(b"http");
        }
    }
    Cow::Borrowed(if tls { b"https" } else { b"http" })
}

impl<'a> RequestView<'a> {
    /// The `:scheme` Envoy's router sends to HTTP/2 upstreams: the request's when it is
    /// http or https, else a valid `x-forwarded-proto`, else by the downstream's TLS.
    pub fn upstream_scheme(&self) -> &'static str {
        let pick = |s: &[u8]| match s {
            b"https" => Some("https"),
            b"http" => Some("http"),
            _ => None,
        };
        pick(&self.scheme()).unwrap_or_else(|| {
            let derived = RequestView {
                given_scheme: None,
                ..*self
            };
            pick(&derived.scheme()).unwrap_or("http")
        })
    }

    /// The value of a pseudo-header key (`None` for a plain header name, which may have
    /// several values, and for names no request carries).
    pub fn pseudo(&self, key: &HeaderKey) -> Option<std::borrow::Cow<'a, [u8]>> {
        use std::borrow::Cow;
        match key {
            HeaderKey::Method => Some(Cow::Borrowed(self.method.as_str().as_bytes())),
            HeaderKey::Authority => Some(Cow::Borrowed(self.authority)),
            HeaderKey::Path => Some(Cow::Borrowed(self.path_and_query.as_bytes())),
            HeaderKey::Scheme => Some(self.scheme()),
            HeaderKey::Name(_) | HeaderKey::Absent => None,
        }
    }
}

/// Which part of a request a header condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Name(http::HeaderName),
    Method,
    /// `:authority`, and `host` (Envoy's header map answers `host` with `:authority`).
    Authority,
    Path,
    Scheme,
    /// A name no request carries at routing time: other pseudo-headers (`:protocol`,
    /// `:status`, ...) and names no codec accepts; Envoy takes them and never finds them.
    Absent,
}

impl HeaderKey {
    /// The key for a configured header name (case-insensitive), as Envoy's
    /// `LowerCaseString` lookup would resolve it.
    pub(crate) fn parse(name: &str) -> Option<HeaderKey> {
        // Envoy's HTTP_HEADER_NAME (non-strict): non-empty, no NUL, CR or LF.
        if name.is_empty() || name.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            ":method" => HeaderKey::Method,
            ":authority" | "host" => HeaderKey::Authority,
            ":path" => HeaderKey::Path,
            ":scheme" => HeaderKey::Scheme,
            _ => match http::HeaderName::from_bytes(lower.as_bytes()) {
                Ok(n) => HeaderKey::Name(n),
                Err(_) => HeaderKey::Absent,
            },
        })
    }
}

/// One header condition of a route (envoy.config.route.v3.HeaderMatcher).
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub key: HeaderKey,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What a header condition tests.
#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    String(StringMatch),
    /// Any value of a present header (not a presence test: a missing header fails it
    /// even when inverted).
    AnyValue,
    Present(bool),
    Range(i64, i64),
}

impl HeaderMatch {
    #[allow(deprecated)]
    pub(crate) fn compile(
        cx: &mut Cx,
        m: &route_pb::HeaderMatcher,
    ) -> Result<HeaderMatch, CompileError> {
        use route_pb::header_matcher::HeaderMatchSpecifier as S;
        fields!(
            cx,
            m,
            route_pb::HeaderMatcher {
                supported: [
                    name,
                    invert_match,
                    treat_missing_header_as_empty,
                    header_match_specifier
                ],
                ignored: [],
                unsupported: [],
            }
        );
        let key = HeaderKey::parse(&m.name)
            .ok_or_else(|| cx.err("name", format!("invalid header name {:?}", m.name)))?;
        let kind = match &m.header_match_specifier {
            // The deprecated `exact_match: ""` takes any value (Envoy's
            // `HeaderDataExactMatch`); `string_match: {exact: ""}` takes only an empty one.
            Some(S::ExactMatch(s)) if s.is_empty() => HeaderMatchKind::AnyValue,
            Some(S::ExactMatch(s)) => {
                HeaderMatchKind::String(StringMatch::Exact(s.as_str().into(), false))
            }
            Some(S::PrefixMatch(s)) => HeaderMatchKind::String(StringMatch::Prefix(
                non_empty(cx, "prefix_match", s)?.into(),
                false,
            )),
            Some(S::SuffixMatch(s)) => HeaderMatchKind::String(StringMatch::Suffix(
                non_empty(cx, "suffix_match", s)?.into(),
                false,
            )),
            Some(S::ContainsMatch(s)) => HeaderMatchKind::String(StringMatch::Contains(
                non_empty(cx, "contains_match", s)?.into(),
                false,
            )),
            Some(S::SafeRegexMatch(r)) => HeaderMatchKind::String(StringMatch::Regex(
                cx.at("safe_regex_match", |cx| compile_regex_matcher(cx, r))?,
            )),
            Some(S::StringMatch(s)) => {
                HeaderMatchKind::String(cx.at("string_match", |cx| StringMatch::compile(cx, s))?)
            }
            Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
            Some(S::RangeMatch(r)) => HeaderMatchKind::Range(r.start, r.end),
            // No specifier: Envoy matches on presence.
            None => HeaderMatchKind::Present(true),
        };
        Ok(HeaderMatch {
            key,
            kind,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Envoy's rule (1.40, `route_match_headers_individually`): a header with several
    /// values matches when one of them does, and inverted when none does (the values are
    /// no longer joined with `,`, which let `a` + `admin` slip past an `admin` rule); a
    /// missing header matches only a presence test (`present_match: false`, or `true`
    /// inverted) unless `treat_missing_header_as_empty`. Pseudo-headers are always present.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let name = match &self.key {
            HeaderKey::Name(n) => n,
            HeaderKey::Absent => return self.missing(),
            pseudo => {
                return req
                    .pseudo(pseudo)
                    .is_some_and(|v| self.test(&v) != self.invert);
            }
        };
        let mut values = req.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return self.missing();
        }
        values.any(|v| self.test(v.as_bytes())) != self.invert
    }

    fn missing(&self) -> bool {
        if self.treat_missing_as_empty {
            return self.test(b"") != self.invert;
        }
        match self.kind {
            HeaderMatchKind::Present(p) => p == self.invert,
            _ => false,
        }
    }

    fn test(&self, v: &[u8]) -> bool {
        match &self.kind {
            HeaderMatchKind::String(s) => s.matches(v),
            HeaderMatchKind::AnyValue => true,
            HeaderMatchKind::Present(p) => *p,
            HeaderMatchKind::Range(start, end) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| n >= *start && n < *end),
        }
    }
}

/// One query parameter condition (envoy.config.route.v3.QueryParameterMatcher).
#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: Box<str>,
    /// `None` = present match.
    pub value: Option<StringMatch>,
}

impl QueryMatch {
    pub(crate) fn compile(
        cx: &mut Cx,
        m: &route_pb::QueryParameterMatcher,
    ) -> Result<QueryMatch, CompileError> {
        use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        fields!(
            cx,
            m,
            route_pb::QueryParameterMatcher {
                supported: [name, query_parameter_match_specifier],
                ignored: [],
                unsupported: [],
            }
        );
        let value = match &m.query_parameter_match_specifier {
            Some(S::StringMatch(s)) => {
                Some(cx.at("string_match", |cx| StringMatch::compile(cx, s))?)
            }
            Some(S::PresentMatch(true)) => None,
            Some(S::PresentMatch(false)) => {
                return Err(cx.err("present_match", "present_match must be true"));
            }
            None => return Err(cx.err("", "a query parameter match specifier is required")),
        };
        Ok(QueryMatch {
            name: m.name.as_str().into(),
            value,
        })
    }

    /// Matches the FIRST occurrence of the parameter in `query` (Envoy's behaviour with
    /// repeated parameters). Values are percent-decoded? No: Envoy compares the raw value.
    pub fn matches(&self, query: &str) -> bool {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == &*self.name {
                return match &self.value {
                    None => true,
                    Some(m) => m.matches(v.as_bytes()),
                };
            }
        }
        false
    }
}

/// Everything a route's `match` tests.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// Percent of requests (out of 1,000,000) that match, from `runtime_fraction`.
    pub fraction_per_million: Option<u32>,
}

impl RouteMatch {
    pub(crate) fn compile(
        cx: &mut Cx,
        m: &route_pb::RouteMatch,
    ) -> Result<RouteMatch, CompileError> {
        use route_pb::route_match::PathSpecifier as P;
        fields!(
            cx,
            m,
            route_pb::RouteMatch {
                supported: [
                    case_sensitive,
                    runtime_fraction,
                    headers,
                    query_parameters,
                    path_specifier
                ],
                ignored: [],
                unsupported: [cookies, grpc, tls_context, dynamic_metadata, filter_state],
            }
        );
        let case_sensitive = m.case_sensitive.map(|b| b.value).unwrap_or(true);
        let path = match &m.path_specifier {
            Some(P::Prefix(p)) => PathMatch::Prefix(lower_if(p, !case_sensitive)),
            Some(P::Path(p)) => PathMatch::Exact(lower_if(p, !case_sensitive)),
            Some(P::PathSeparatedPrefix(p)) => {
                if p.contains(['?', '#']) || p.ends_with('/') {
                    return Err(cx.err(
                        "path_separated_prefix",
                        "must not contain ? or # nor end with /",
                    ));
                }
                PathMatch::Separated(lower_if(p, !case_sensitive))
            }
            Some(P::SafeRegex(r)) => {
                PathMatch::Regex(cx.at("safe_regex", |cx| compile_regex_matcher(cx, r))?)
            }
            Some(P::ConnectMatcher(_)) => return Err(cx.unsupported("connect_matcher")),
            Some(P::PathMatchPolicy(_)) => return Err(cx.unsupported("path_match_policy")),
            None => return Err(cx.err("path_specifier", "a path specifier is required")),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                cx.at(format_args!("headers[{i}]"), |cx| {
                    HeaderMatch::compile(cx, h)
                })
            })
            .collect::<Result<_, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                cx.at(format_args!("query_parameters[{i}]"), |cx| {
                    QueryMatch::compile(cx, q)
                })
            })
            .collect::<Result<_, _>>()?;
        let fraction_per_million = match &m.runtime_fraction {
            None => None,
            Some(rf) => cx.at("runtime_fraction", |cx| {
                let d = rf
                    .default_value
                    .as_ref()
                    .ok_or_else(|| cx.err("default_value", "required"))?;
                Ok(Some(fraction_per_million(d)))
            })?,
        };
        Ok(RouteMatch {
            path,
            case_sensitive,
            headers,
            query,
            fraction_per_million,
        })
    }

    /// Whether a request matches. `random` is a per-request random number used for
    /// `runtime_fraction`.
    #[inline]
    pub fn matches(&self, req: &RequestView<'_>, random: u64) -> bool {
        self.first_mismatch(req, random).is_none()
    }

    /// The first condition a request fails, in the order they are tested (path, runtime
    /// fraction, headers, query parameters); `None` when the request matches. Routing
    /// and `meshgate explain` both ask this, so an explanation names the condition that
    /// routing itself found failing.
    pub fn first_mismatch(&self, req: &RequestView<'_>, random: u64) -> Option<Mismatch> {
        let path = req.path;
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == &**p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Separated(p) => {
                starts_with(path, p, self.case_sensitive)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        if !path_ok {
            return Some(Mismatch::Path);
        }
        if let Some(f) = self.fraction_per_million
            && (random % 1_000_000) as u32 >= f
        {
            return Some(Mismatch::Fraction);
        }
        if let Some(i) = self.headers.iter().position(|h| !h.matches(req)) {
            return Some(Mismatch::Header(i));
        }
        self.query
            .iter()
            .position(|q| !q.matches(req.query))
            .map(Mismatch::Query)
    }
}

/// The condition of a [`RouteMatch`] a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The path condition.
    Path,
    /// The request fell outside the `runtime_fraction`.
    Fraction,
    /// `headers[i]`.
    Header(usize),
    /// `query_parameters[i]`.
    Query(usize),
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// A FractionalPercent as parts per million.
pub(crate) fn fraction_per_million(
    f: &crate::xds::pb::envoy::r#type::v3::FractionalPercent,
) -> u32 {
    use crate::xds::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let scale = match D::try_from(f.denominator).unwrap_or(D::Hundred) {
        D::Hundred => 10_000,
        D::TenThousand => 100,
        D::Million => 1,
    };
    f.numerator.saturating_mul(scale).min(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Cx {
        Cx::new("route_configuration", "t")
    }

    fn sm(p: matcher_pb::string_matcher::MatchPattern, ic: bool) -> StringMatch {
        StringMatch::compile(
            &mut cx(),
            &matcher_pb::StringMatcher {
                ignore_case: ic,
                match_pattern: Some(p),
            },
        )
        .unwrap()
    }

    #[test]
    fn string_matchers() {
        use matcher_pb::string_matcher::MatchPattern as P;
        let cases: &[(StringMatch, &str, bool)] = &[
            (sm(P::Exact("abc".into()), false), "abc", true),
            (sm(P::Exact("abc".into()), false), "ABC", false),
            (sm(P::Exact("abc".into()), true), "ABC", true),
            (sm(P::Prefix("/api".into()), false), "/apiv2", true),
            (sm(P::Prefix("/API".into()), true), "/apiv2", true),
            (sm(P::Suffix(".js".into()), false), "a.js", true),
            (sm(P::Suffix(".JS".into()), true), "a.js", true),
            (sm(P::Contains("mid".into()), false), "amidb", true),
            (sm(P::Contains("MID".into()), true), "amidb", true),
            (sm(P::Contains("x".into()), false), "abc", false),
            (
                sm(
                    P::SafeRegex(matcher_pb::RegexMatcher {
                        regex: "a[0-9]+".into(),
                        ..Default::default()
                    }),
                    false,
                ),
                "a12",
                true,
            ),
            (
                sm(
                    P::SafeRegex(matcher_pb::RegexMatcher {
                        regex: "a[0-9]+".into(),
                        ..Default::default()
                    }),
                    false,
                ),
                "xa12",
                false,
            ),
        ];
        for (i, (m, v, want)) in cases.iter().enumerate() {
            assert_eq!(m.matches(v.as_bytes()), *want, "case {i}: {m:?} on {v}");
        }
    }

    fn hm(json: serde_json::Value) -> HeaderMatch {
        let m: route_pb::HeaderMatcher = crate::xds::json::from_json(&json).unwrap();
        HeaderMatch::compile(&mut cx(), &m).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_matchers_follow_envoy() {
        use serde_json::json;
        let cases = [
            (
                json!({"name": "x", "exact_match": "a"}),
                vec![("x", "a")],
                true,
            ),
            (json!({"name": "x", "exact_match": "a"}), vec![], false),
            (
                json!({"name": "x", "exact_match": "a", "invert_match": true}),
                vec![],
                false,
            ),
            (
                json!({"name": "x", "exact_match": "a", "invert_match": true}),
                vec![("x", "b")],
                true,
            ),
            (
                json!({"name": "x", "exact_match": "a", "invert_match": true, "treat_missing_header_as_empty": true}),
                vec![],
                true,
            ),
            (
                json!({"name": "x", "present_match": true}),
                vec![("x", "")],
                true,
            ),
            (json!({"name": "x", "present_match": true}), vec![], false),
            (json!({"name": "x", "present_match": false}), vec![], true),
            (
                json!({"name": "x", "present_match": true, "invert_match": true}),
                vec![],
                true,
            ),
            // Several values: one matching is enough; inverted, none may match.
            (
                json!({"name": "x", "string_match": {"exact": "a,b"}}),
                vec![("x", "a"), ("x", "b")],
                false,
            ),
            (
                json!({"name": "x", "string_match": {"exact": "a,b"}}),
                vec![("x", "a,b")],
                true,
            ),
            (
                json!({"name": "x", "string_match": {"exact": "a"}}),
                vec![("x", "b"), ("x", "a")],
                true,
            ),
            (
                json!({"name": "x", "safe_regex_match": {"regex": "v[0-9]"}}),
                vec![("x", "v1"), ("x", "v12")],
                true,
            ),
            (
                json!({"name": "x", "string_match": {"exact": "a"}, "invert_match": true}),
                vec![("x", "a"), ("x", "b")],
                false,
            ),
            (
                json!({"name": "x", "string_match": {"exact": "a"}, "invert_match": true}),
                vec![("x", "b"), ("x", "c")],
                true,
            ),
            (
                json!({"name": "X-Up", "string_match": {"prefix": "AB", "ignore_case": true}}),
                vec![("x-up", "abc")],
                true,
            ),
            (
                json!({"name": "x", "safe_regex_match": {"regex": "v[0-9]"}}),
                vec![("x", "v1")],
                true,
            ),
            (
                json!({"name": "x", "safe_regex_match": {"regex": "v[0-9]"}}),
                vec![("x", "v12")],
                false,
            ),
            (
                json!({"name": "x", "range_match": {"start": 1, "end": 10}}),
                vec![("x", "9")],
                true,
            ),
            (
                json!({"name": "x", "range_match": {"start": 1, "end": 10}}),
                vec![("x", "10")],
                false,
            ),
            // The deprecated exact_match "" takes any value of a present header.
            (
                json!({"name": "x", "exact_match": ""}),
                vec![("x", "abc")],
                true,
            ),
            (json!({"name": "x", "exact_match": ""}), vec![], false),
            (
                json!({"name": "x", "exact_match": "", "invert_match": true}),
                vec![],
                false,
            ),
            (
                json!({"name": "x", "exact_match": "", "treat_missing_header_as_empty": true}),
                vec![],
                true,
            ),
            (
                json!({"name": "x", "string_match": {"exact": ""}}),
                vec![("x", "abc")],
                false,
            ),
            (
                json!({"name": "x", "string_match": {"exact": ""}}),
                vec![("x", "")],
                true,
            ),
        ];
        for (i, (m, h, want)) in cases.into_iter().enumerate() {
            let m = hm(m);
            let h = headers(&h);
            let req = RequestView::new(&http::Method::GET, b"h", "/", None, false, &h);
            assert_eq!(m.matches(&req), want, "case {i}: {m:?} on {h:?}");
        }
    }

    /// A request for the pseudo-header tables: method, authority, path with query, the
    /// scheme the request carried (HTTP/2 or absolute-form), TLS, headers.
    struct Req {
        method: http::Method,
        authority: &'static str,
        pq: &'static str,
        given_scheme: Option<&'static str>,
        tls: bool,
        headers: HeaderMap,
    }

    impl Req {
        fn get(authority: &'static str, pq: &'static str) -> Req {
            Req {
                method: http::Method::GET,
                authority,
                pq,
                given_scheme: None,
                tls: false,
                headers: HeaderMap::new(),
            }
        }
        fn method(mut self, m: &str) -> Req {
            self.method = m.parse().unwrap();
            self
        }
        fn scheme(mut self, s: &'static str) -> Req {
            self.given_scheme = Some(s);
            self
        }
        fn tls(mut self) -> Req {
            self.tls = true;
            self
        }
        fn header(mut self, k: &str, v: &str) -> Req {
            self.headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView::new(
                &self.method,
                self.authority.as_bytes(),
                self.pq,
                self.given_scheme,
                self.tls,
                &self.headers,
            )
        }
    }

    #[test]
    fn pseudo_header_matchers_follow_envoy() {
        use serde_json::json;
        let get = || Req::get("shop.example.com:8080", "/a/b?x=1&y=2");
        let cases = [
            // :method, every specifier.
            (
                json!({"name": ":method", "exact_match": "GET"}),
                get(),
                true,
            ),
            (
                json!({"name": ":method", "exact_match": "POST"}),
                get(),
                false,
            ),
            (
                json!({"name": ":method", "string_match": {"exact": "POST"}}),
                get().method("POST"),
                true,
            ),
            (
                json!({"name": ":method", "string_match": {"exact": "post", "ignore_case": true}}),
                get().method("POST"),
                true,
            ),
            (
                json!({"name": ":method", "string_match": {"exact": "post"}}),
                get().method("POST"),
                false,
            ),
            (
                json!({"name": ":METHOD", "prefix_match": "PU"}),
                get().method("PUT"),
                true,
            ),
            (
                json!({"name": ":method", "exact_match": "GET", "invert_match": true}),
                get().method("DELETE"),
                true,
            ),
            (
                json!({"name": ":method", "safe_regex_match": {"regex": "GET|HEAD"}}),
                get().method("HEAD"),
                true,
            ),
            (
                json!({"name": ":method", "safe_regex_match": {"regex": "GET|HEAD"}}),
                get().method("OPTIONS"),
                false,
            ),
            // Pseudo-headers are always present.
            (
                json!({"name": ":method", "present_match": true}),
                get(),
                true,
            ),
            (
                json!({"name": ":method", "present_match": false}),
                get(),
                false,
            ),
            (
                json!({"name": ":path", "present_match": true, "invert_match": true}),
                get(),
                false,
            ),
            (json!({"name": ":scheme"}), get(), true),
            // :authority and host: the same value, port included.
            (
                json!({"name": ":authority", "exact_match": "shop.example.com:8080"}),
                get(),
                true,
            ),
            (
                json!({"name": ":authority", "string_match": {"prefix": "shop."}}),
                get(),
                true,
            ),
            (
                json!({"name": ":authority", "string_match": {"suffix": ":8080"}}),
                get(),
                true,
            ),
            (
                json!({"name": ":authority", "string_match": {"contains": "EXAMPLE", "ignore_case": true}}),
                get(),
                true,
            ),
            (
                json!({"name": "Host", "string_match": {"exact": "shop.example.com:8080"}}),
                get(),
                true,
            ),
            (
                json!({"name": "host", "string_match": {"exact": "shop.example.com"}}),
                get(),
                false,
            ),
            (
                json!({"name": ":authority", "string_match": {"prefix": "other"}, "invert_match": true}),
                get(),
                true,
            ),
            // A Host header in the map (HTTP/2 sending both) does not count: the
            // authority does.
            (
                json!({"name": "host", "exact_match": "other"}),
                get().header("host", "other"),
                false,
            ),
            // :path includes the query.
            (
                json!({"name": ":path", "exact_match": "/a/b?x=1&y=2"}),
                get(),
                true,
            ),
            (
                json!({"name": ":path", "exact_match": "/a/b"}),
                get(),
                false,
            ),
            (
                json!({"name": ":path", "string_match": {"suffix": "y=2"}}),
                get(),
                true,
            ),
            (
                json!({"name": ":path", "safe_regex_match": {"regex": "/a/[a-z]+\\?x=[0-9].*"}}),
                get(),
                true,
            ),
            (
                json!({"name": ":path", "contains_match": "x=1"}),
                get(),
                true,
            ),
            (
                json!({"name": ":path", "range_match": {"start": 0, "end": 10}}),
                get(),
                false,
            ),
            // :scheme: given (HTTP/2, absolute-form) wins, lower-cased.
            (
                json!({"name": ":scheme", "exact_match": "http"}),
                get(),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get().tls(),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get().scheme("https"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get().scheme("HTTPS"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "http"}),
                get().scheme("http").tls(),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "foo"}),
                get().scheme("foo"),
                true,
            ),
            // HTTP/1 without a given scheme: a sanitized x-forwarded-proto of http or
            // https decides, case-insensitively; anything else falls back to TLS.
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get().header("x-forwarded-proto", "HTTPS"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "http"}),
                get().tls().header("x-forwarded-proto", "http"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "http"}),
                get().header("x-forwarded-proto", "https, http"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get().tls().header("x-forwarded-proto", "ftp"),
                true,
            ),
            (
                json!({"name": ":scheme", "exact_match": "https"}),
                get()
                    .header("x-forwarded-proto", "https")
                    .header("x-forwarded-proto", "https"),
                false,
            ),
            (
                json!({"name": ":scheme", "exact_match": "http", "invert_match": true}),
                get().tls(),
                true,
            ),
            // Names no request carries: other pseudo-headers, names no codec accepts.
            (
                json!({"name": ":protocol", "present_match": true}),
                get(),
                false,
            ),
            (
                json!({"name": ":status", "present_match": false}),
                get(),
                true,
            ),
            (
                json!({"name": ":protocol", "exact_match": "", "treat_missing_header_as_empty": true}),
                get(),
                true,
            ),
            (
                json!({"name": "x y", "present_match": true, "invert_match": true}),
                get(),
                true,
            ),
            (json!({"name": "a:b", "exact_match": "c"}), get(), false),
        ];
        for (i, (m, req, want)) in cases.into_iter().enumerate() {
            let m = hm(m);
            assert_eq!(m.matches(&req.view()), want, "case {i}: {m:?}");
        }
    }

    #[test]
    fn empty_patterns_envoy_refuses() {
        use serde_json::json;
        let cases = [
            (json!({"name": "x", "prefix_match": ""}), "prefix_match"),
            (json!({"name": "x", "suffix_match": ""}), "suffix_match"),
            (json!({"name": "x", "contains_match": ""}), "contains_match"),
            (
                json!({"name": "x", "string_match": {"prefix": ""}}),
                "string_match.prefix",
            ),
            (
                json!({"name": "x", "string_match": {"suffix": ""}}),
                "string_match.suffix",
            ),
            (
                json!({"name": "x", "string_match": {"contains": ""}}),
                "string_match.contains",
            ),
            (
                json!({"name": "x", "safe_regex_match": {"regex": ""}}),
                "safe_regex_match.regex",
            ),
        ];
        for (m, path) in cases {
            let pb: route_pb::HeaderMatcher = crate::xds::json::from_json(&m).unwrap();
            let e = HeaderMatch::compile(&mut cx(), &pb).unwrap_err();
            assert_eq!(e.path, path, "{m}");
            assert!(e.to_string().contains("at least 1"), "{e}");
        }
    }

    #[test]
    fn header_names_envoy_refuses() {
        for name in ["", "a\nb", "a\rb", "a\0b"] {
            let m: route_pb::HeaderMatcher = crate::xds::json::from_json(
                &serde_json::json!({"name": name, "present_match": true}),
            )
            .unwrap();
            let e = HeaderMatch::compile(&mut cx(), &m).unwrap_err();
            assert_eq!(e.path, "name", "{name:?}");
        }
    }

    fn rm(json: serde_json::Value) -> RouteMatch {
        let m: route_pb::RouteMatch = crate::xds::json::from_json(&json).unwrap();
        RouteMatch::compile(&mut cx(), &m).unwrap()
    }

    #[test]
    fn first_mismatch_names_the_condition_routing_fails() {
        use serde_json::json;
        let method = http::Method::GET;
        let m = rm(json!({
            "prefix": "/reviews/",
            "headers": [
                {"name": "end-user", "string_match": {"exact": "jason"}},
                {"name": "x-canary", "present_match": true}
            ],
            "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]
        }));
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<Mismatch>);
        let cases: &[Case<'_>] = &[
            ("/ratings/1", &[], Some(Mismatch::Path)),
            ("/reviews/1", &[], Some(Mismatch::Header(0))),
            (
                "/reviews/1",
                &[("end-user", "bob")],
                Some(Mismatch::Header(0)),
            ),
            (
                "/reviews/1",
                &[("end-user", "jason")],
                Some(Mismatch::Header(1)),
            ),
            (
                "/reviews/1?v=1",
                &[("end-user", "jason"), ("x-canary", "1")],
                Some(Mismatch::Query(0)),
            ),
            (
                "/reviews/1?v=2",
                &[("end-user", "jason"), ("x-canary", "1")],
                None,
            ),
        ];
        for (pq, hs, want) in cases {
            let h = headers(hs);
            let req = RequestView::new(&method, b"h", pq, None, false, &h);
            assert_eq!(m.first_mismatch(&req, 0), *want, "{pq} {hs:?}");
            assert_eq!(m.matches(&req, 0), want.is_none(), "{pq} {hs:?}");
        }
        let fraction = rm(json!({
            "prefix": "/",
            "runtime_fraction": {"default_value": {"numerator": 10}}
        }));
        let h = HeaderMap::new();
        let req = RequestView::new(&method, b"h", "/", None, false, &h);
        assert_eq!(fraction.first_mismatch(&req, 0), None);
        assert_eq!(
            fraction.first_mismatch(&req, 100_000),
            Some(Mismatch::Fraction)
        );
    }

    #[test]
    fn route_matches_paths_and_queries() {
        use serde_json::json;
        let none = HeaderMap::new();
        let method = http::Method::GET;
        let cases = [
            (json!({"prefix": "/static"}), "/staticfoo", "", true),
            (json!({"prefix": "/static"}), "/Static", "", false),
            (
                json!({"prefix": "/static", "case_sensitive": false}),
                "/STATIC/x",
                "",
                true,
            ),
            (json!({"path": "/a"}), "/a", "x=1", true),
            (json!({"path": "/a"}), "/a/", "", false),
            (
                json!({"path": "/A", "case_sensitive": false}),
                "/a",
                "",
                true,
            ),
            (json!({"path_separated_prefix": "/api"}), "/api", "", true),
            (
                json!({"path_separated_prefix": "/api"}),
                "/api/v1",
                "",
                true,
            ),
            (
                json!({"path_separated_prefix": "/api"}),
                "/apiv1",
                "",
                false,
            ),
            (
                json!({"safe_regex": {"regex": "/v[0-9]+/.*"}}),
                "/v1/x",
                "",
                true,
            ),
            (
                json!({"safe_regex": {"regex": "/v[0-9]+"}}),
                "/v1/x",
                "",
                false,
            ),
            (
                json!({"prefix": "/", "query_parameters": [{"name": "a", "string_match": {"exact": "1"}}]}),
                "/",
                "a=1&a=2",
                true,
            ),
            (
                json!({"prefix": "/", "query_parameters": [{"name": "a", "string_match": {"exact": "2"}}]}),
                "/",
                "a=1&a=2",
                false,
            ),
            (
                json!({"prefix": "/", "query_parameters": [{"name": "a", "present_match": true}]}),
                "/",
                "b=1&a",
                true,
            ),
            (
                json!({"prefix": "/", "query_parameters": [{"name": "a", "present_match": true}]}),
                "/",
                "b=1",
                false,
            ),
        ];
        for (i, (m, path, q, want)) in cases.into_iter().enumerate() {
            let m = rm(m);
            let pq = if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            };
            let req = RequestView::new(&method, b"h", &pq, None, false, &none);
            assert_eq!(m.matches(&req, 0), want, "case {i}: {m:?} on {path}?{q}");
        }
    }

    #[test]
    fn invalid_regex_is_a_positioned_error() {
        let m: route_pb::RouteMatch =
            crate::xds::json::from_json(&serde_json::json!({"safe_regex": {"regex": "("}}))
                .unwrap();
        let mut cx = cx();
        let e = cx
            .at("routes[1].match", |cx| RouteMatch::compile(cx, &m))
            .unwrap_err();
        assert_eq!(e.path, "routes[1].match.safe_regex.regex");
    }
}
