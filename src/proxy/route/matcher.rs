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
    full_regex(cx, "regex", &m.regex)
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
            Some(P::Prefix(s)) => StringMatch::Prefix(lower_if(s, ic), ic),
            Some(P::Suffix(s)) => StringMatch::Suffix(lower_if(s, ic), ic),
            Some(P::Contains(s)) => StringMatch::Contains(lower_if(s, ic), ic),
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

/// One header condition of a route (envoy.config.route.v3.HeaderMatcher).
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What a header condition tests.
#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    String(StringMatch),
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
        let name = http::HeaderName::from_bytes(m.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| cx.err("name", format!("invalid header name {:?}", m.name)))?;
        let kind = match &m.header_match_specifier {
            Some(S::ExactMatch(s)) => {
                HeaderMatchKind::String(StringMatch::Exact(s.as_str().into(), false))
            }
            Some(S::PrefixMatch(s)) => {
                HeaderMatchKind::String(StringMatch::Prefix(s.as_str().into(), false))
            }
            Some(S::SuffixMatch(s)) => {
                HeaderMatchKind::String(StringMatch::Suffix(s.as_str().into(), false))
            }
            Some(S::ContainsMatch(s)) => {
                HeaderMatchKind::String(StringMatch::Contains(s.as_str().into(), false))
            }
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
            name,
            kind,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Envoy's rule: several values of one header are matched joined with `,`; a missing
    /// header matches only a presence test (`present_match: false`, or `true` inverted)
    /// unless `treat_missing_header_as_empty`.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let first = values.next();
        let Some(first) = first else {
            if self.treat_missing_as_empty {
                return self.test(b"") != self.invert;
            }
            return match self.kind {
                HeaderMatchKind::Present(p) => p == self.invert,
                _ => false,
            };
        };
        let second = values.next();
        let ok = match second {
            None => self.test(first.as_bytes()),
            Some(second) => {
                let mut joined = Vec::with_capacity(first.len() + second.len() + 16);
                joined.extend_from_slice(first.as_bytes());
                joined.push(b',');
                joined.extend_from_slice(second.as_bytes());
                for v in values {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                self.test(&joined)
            }
        };
        ok != self.invert
    }

    fn test(&self, v: &[u8]) -> bool {
        match &self.kind {
            HeaderMatchKind::String(s) => s.matches(v),
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

    /// Whether a request matches. `path` excludes the query; `query` is what follows `?`.
    /// `random` is a per-request random number used for `runtime_fraction`.
    pub fn matches(&self, path: &str, query: &str, headers: &HeaderMap, random: u64) -> bool {
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
            return false;
        }
        if let Some(f) = self.fraction_per_million
            && (random % 1_000_000) as u32 >= f
        {
            return false;
        }
        self.headers.iter().all(|h| h.matches(headers))
            && self.query.iter().all(|q| q.matches(query))
    }
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
            (
                json!({"name": "x", "string_match": {"exact": "a,b"}}),
                vec![("x", "a"), ("x", "b")],
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
        ];
        for (i, (m, h, want)) in cases.into_iter().enumerate() {
            let m = hm(m);
            assert_eq!(m.matches(&headers(&h)), want, "case {i}: {m:?} on {h:?}");
        }
    }

    fn rm(json: serde_json::Value) -> RouteMatch {
        let m: route_pb::RouteMatch = crate::xds::json::from_json(&json).unwrap();
        RouteMatch::compile(&mut cx(), &m).unwrap()
    }

    #[test]
    fn route_matches_paths_and_queries() {
        use serde_json::json;
        let none = HeaderMap::new();
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
            assert_eq!(
                m.matches(path, q, &none, 0),
                want,
                "case {i}: {m:?} on {path}?{q}"
            );
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
