//! The JWT authentication filter (`envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`),
//! as Envoy's (`source/extensions/filters/http/jwt_authn`): providers, requirement rules,
//! token extraction, verification, and what a verified token adds to the request.
//!
//! - Providers: issuer, audiences, keys inline (`local_jwks`) or fetched from a cluster
//!   (`remote_jwks`), token locations (headers with a value prefix, query parameters,
//!   cookies; none: `Authorization: Bearer` and `access_token`), `forward`,
//!   `forward_payload_header`, `claim_to_headers`, `payload_in_metadata` (with
//!   `normalize_payload_in_metadata`), `clock_skew_seconds` (60 by default).
//! - Rules: the first whose `match` (prefix / path) fits the request gives the
//!   requirement: a provider, `requires_any`, `requires_all`, `allow_missing`,
//!   `allow_missing_or_failed`; Envoy's aggregation of `requires_any` errors (a real
//!   error beats "wrong issuer", which beats "missing").
//! - Answers: 401 with the status text as body and `www-authenticate: Bearer
//!   realm="<scheme>://<host><path>"` (plus `, error="invalid_token"` unless the token is
//!   missing); 403 for audiences not allowed; details `jwt_authn_access_denied{...}`.
//!
//! Remote keys live in the runtime ([`JwksStore`], keyed by cluster and URI), so they
//! survive configuration updates. They are fetched on first use (the request waits, as
//! Envoy's on-demand fetch), then kept `cache_duration`; with `async_fetch` a background
//! task refreshes them before they expire and a failed refresh keeps the old keys and
//! retries after `failed_refetch_duration` (1s). Where meshgate goes further than
//! Envoy: a token whose `kid` no cached key has triggers one refetch, at most once per
//! [`KID_REFETCH_INTERVAL`] per key set, so that keys rotated at the issuer are
//! accepted without waiting out the cache (Envoy answers "Jwks doesn't have key to
//! match kid or alg from Jwt" until its next refresh).
use super::BuildCx;
use super::jwt_token::{Audiences, Jwks, Jwt, Status, claim, claim_header_value};
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::body::{RequestBody, ResponseBody};
use crate::proxy::http::filter::{HttpFilter, RequestCx, Step, Verdict};
use crate::proxy::runtime::Shared;
use crate::proxy::upstream::cluster::Cluster;
use crate::proxy::upstream::lb::LbContext;
use crate::proxy::upstream::pool::{self, Sender};
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::config::route::v3 as route_pb;
use crate::xds::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use crate::xds::pb::google::protobuf::Any;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use prost::Message;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The type URL of the filter's config.
pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// The filter's metadata namespace (Envoy writes verified payloads there).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Envoy's default clock skew.
const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
/// Envoy's default `cache_duration`.
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
/// Envoy's default `failed_refetch_duration`.
const DEFAULT_FAILED_REFETCH: Duration = Duration::from_secs(1);
/// Envoy refreshes asynchronously fetched keys this long before they expire.
const REFETCH_BEFORE_EXPIRY: Duration = Duration::from_secs(5);
/// At most one refetch per key set in this time for tokens naming an unknown `kid`.
pub const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest key set read from a key server.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Key sets unused this long are dropped from the runtime.
const JWKS_IDLE_PRUNE: Duration = Duration::from_secs(3600);
/// Envoy's bound on the path in the `www-authenticate` realm.
const MAX_REALM_PATH: usize = 256;
/// The request headers Envoy keeps inline: several of one name are joined with `,` into
/// one value (an `authorization` sent twice is one value there), while other headers keep
/// one entry per line.
const ENVOY_INLINE_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "access-control-request-private-network",
    "authentication",
    "authorization",
    "cache-control",
    "cdn-loop",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "origin",
    "pragma",
    "proxy-connection",
    "proxy-status",
    "referer",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-request-id",
];
/// The characters a token is made of (base64url and the dots).
const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// Where a provider's keys come from.
#[derive(Debug)]
enum Keys {
    /// Inline; `Err` when the set has no usable key (every token then fails as Envoy's
    /// "Jwks doesn't have any valid public key").
    Local(Result<Arc<Jwks>, Status>),
    Remote(Arc<RemoteJwks>),
}

/// A `remote_jwks`.
#[derive(Debug)]
pub struct RemoteJwks {
    pub cluster: Box<str>,
    pub uri: Box<str>,
    /// `Host` and path of the GET.
    host: HeaderValue,
    path: http::uri::PathAndQuery,
    pub timeout: Duration,
    pub cache_duration: Duration,
    /// `async_fetch`: refreshed in the background, `failed_refetch_duration`.
    pub async_fetch: Option<Duration>,
}

/// One provider.
#[derive(Debug)]
struct Provider {
    issuer: String,
    audiences: Audiences,
    locations: Locations,
    forward: bool,
    forward_payload_header: Option<HeaderName>,
    pad_forward_payload_header: bool,
    claim_to_headers: Vec<(HeaderName, String)>,
    payload_in_metadata: String,
    space_delimited_claims: Vec<String>,
    clock_skew: u64,
    keys: Keys,
}

/// A header token location: its name, its value prefix, the issuers that use it.
#[derive(Debug, Clone)]
struct HeaderLocation {
    name: HeaderName,
    prefix: String,
    issuers: Issuers,
}

/// The issuers a location is configured for (empty issuer: any).
#[derive(Debug, Clone, Default)]
struct Issuers {
    any: bool,
    names: Vec<String>,
}

impl Issuers {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.any = true;
        } else if !self.names.iter().any(|n| n == issuer) {
            self.names.push(issuer.to_string());
        }
    }

    fn allows(&self, issuer: &str) -> bool {
        self.any || self.names.iter().any(|n| n == issuer)
    }
}

/// Where tokens are looked for (Envoy's extractor): headers sorted by name and prefix,
/// then query parameters and cookies sorted by name.
#[derive(Debug, Clone, Default)]
struct Locations {
    headers: Vec<HeaderLocation>,
    params: BTreeMap<String, Issuers>,
    cookies: BTreeMap<String, Issuers>,
    /// Headers removed before verification (a provider's output headers).
    sanitize: Vec<HeaderName>,
}

impl Locations {
    fn add_provider(&mut self, p: &pb::JwtProvider, cx: &Cx) -> Result<(), CompileError> {
        let mut header = |name: &str, prefix: &str| -> Result<(), CompileError> {
            let name = HeaderName::try_from(name.to_ascii_lowercase())
                .map_err(|_| cx.err("from_headers", format!("invalid header name {name:?}")))?;
            match self
                .headers
                .iter_mut()
                .find(|h| h.name == name && h.prefix == prefix)
            {
                Some(h) => h.issuers.add(&p.issuer),
                None => {
                    let mut issuers = Issuers::default();
                    issuers.add(&p.issuer);
                    self.headers.push(HeaderLocation {
                        name,
                        prefix: prefix.to_string(),
                        issuers,
                    });
                }
            }
            Ok(())
        };
        for h in &p.from_headers {
            header(&h.name, &h.value_prefix)?;
        }
        if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
            header("authorization", "Bearer ")?;
            self.params
                .entry("access_token".into())
                .or_default()
                .add(&p.issuer);
        }
        for q in &p.from_params {
            self.params.entry(q.clone()).or_default().add(&p.issuer);
        }
        for c in &p.from_cookies {
            self.cookies.entry(c.clone()).or_default().add(&p.issuer);
        }
        self.headers.sort_by(|a, b| {
            (a.name.as_str(), a.prefix.as_str()).cmp(&(b.name.as_str(), b.prefix.as_str()))
        });
        if !p.forward_payload_header.is_empty()
            && let Ok(h) = HeaderName::try_from(p.forward_payload_header.to_ascii_lowercase())
        {
            self.sanitize.push(h);
        }
        for c in &p.claim_to_headers {
            if let Ok(h) = HeaderName::try_from(c.header_name.to_ascii_lowercase()) {
                self.sanitize.push(h);
            }
        }
        Ok(())
    }

    /// The tokens of a request, in Envoy's order.
    fn extract(&self, req: &Request<hyper::body::Incoming>) -> Vec<Token> {
        let mut out = Vec::new();
        for loc in &self.headers {
            let mut values: Vec<std::borrow::Cow<'_, [u8]>> = req
                .headers()
                .get_all(&loc.name)
                .iter()
                .map(|v| std::borrow::Cow::Borrowed(v.as_bytes()))
                .collect();
            if values.len() > 1 && ENVOY_INLINE_REQUEST_HEADERS.contains(&loc.name.as_str()) {
                values = vec![std::borrow::Cow::Owned(values.join(&b","[..]))];
            }
            for v in &values {
                let Ok(s) = std::str::from_utf8(v) else {
                    continue;
                };
                let token = if loc.prefix.is_empty() {
                    s
                } else {
                    let Some(pos) = s.find(&loc.prefix) else {
                        continue;
                    };
                    let after = &s[pos + loc.prefix.len()..];
                    match after.find(|c| TOKEN_CHARS.contains(c)) {
                        Some(start) => &after[start..],
                        None => s,
                    }
                };
                out.push(Token {
                    value: token.to_string(),
                    issuers: loc.issuers.clone(),
                    place: Place::Header(loc.name.clone()),
                });
            }
        }
        if !self.params.is_empty()
            && let Some(q) = req.uri().query()
        {
            for (name, issuers) in &self.params {
                if let Some(v) = query_params(q).find(|(k, _)| k == name).map(|(_, v)| v) {
                    out.push(Token {
                        value: v,
                        issuers: issuers.clone(),
                        place: Place::Param(name.clone()),
                    });
                }
            }
        }
        if !self.cookies.is_empty() {
            for (name, issuers) in &self.cookies {
                if let Some(v) = cookie(req.headers(), name) {
                    out.push(Token {
                        value: v,
                        issuers: issuers.clone(),
                        place: Place::Cookie,
                    });
                }
            }
        }
        out
    }

    fn sanitize(&self, headers: &mut http::HeaderMap) {
        for h in &self.sanitize {
            headers.remove(h);
        }
    }
}

/// A query string's parameters, percent-decoded.
fn query_params(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The first value of a cookie, quotes removed (Envoy's `parseCookies`).
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            let part = part.trim_start_matches(' ');
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if k == name {
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.to_string());
            }
        }
    }
    None
}

/// Where a token was found, to remove it once verified.
#[derive(Debug, Clone)]
enum Place {
    Header(HeaderName),
    Param(String),
    /// Envoy leaves cookies in place.
    Cookie,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    issuers: Issuers,
    place: Place,
}

/// A requirement (Envoy's verifier tree).
#[derive(Debug)]
enum Verifier {
    Provider {
        provider: usize,
        /// `provider_and_audiences`: these instead of the provider's.
        audiences: Option<Audiences>,
    },
    Any {
        children: Vec<Verifier>,
        allow_missing: bool,
        allow_missing_or_failed: bool,
    },
    All(Vec<Verifier>),
    AllowMissing,
    AllowMissingOrFailed,
    AllowAll,
}

/// A rule: which requests, and their requirement.
#[derive(Debug)]
struct Rule {
    prefix: Option<String>,
    path: Option<String>,
    case_sensitive: bool,
    verifier: Verifier,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or(path);
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        if let Some(p) = &self.prefix {
            return path.len() >= p.len() && eq(&path[..p.len()], p);
        }
        if let Some(p) = &self.path {
            return eq(path, p);
        }
        false
    }
}

/// The compiled filter.
#[derive(Debug)]
pub struct JwtAuthn {
    name: Box<str>,
    providers: Vec<Provider>,
    /// Provider indices by name (sorted: Envoy's map order is unspecified).
    by_name: BTreeMap<String, usize>,
    /// Every provider's locations (the `allow_missing*` extractor).
    all_locations: Locations,
    rules: Vec<Rule>,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
}

impl JwtAuthn {
    /// The filter of an `http_filters[]` entry.
    pub(crate) fn build(
        cx: &mut Cx,
        b: &BuildCx<'_>,
        any: &Any,
    ) -> Result<Arc<dyn HttpFilter>, CompileError> {
        Ok(Arc::new(JwtAuthn::compile(cx, b.name, &any.value)?))
    }

    /// Compiles the filter's config.
    pub(crate) fn compile(cx: &mut Cx, name: &str, any: &[u8]) -> Result<JwtAuthn, CompileError> {
        let c = pb::JwtAuthentication::decode(any)
            .map_err(|e| cx.err("typed_config", e.to_string()))?;
        cx.at("typed_config", |cx| JwtAuthn::from_proto(cx, name, &c))
    }

    fn from_proto(
        cx: &mut Cx,
        name: &str,
        c: &pb::JwtAuthentication,
    ) -> Result<JwtAuthn, CompileError> {
        fields!(
            cx,
            c,
            pb::JwtAuthentication {
                supported: [
                    providers,
                    rules,
                    bypass_cors_preflight,
                    strip_failure_response
                ],
                ignored: [stat_prefix],
                unsupported: [filter_state_rules, requirement_map],
            }
        );
        let mut names: Vec<&String> = c.providers.keys().collect();
        names.sort();
        let mut providers = Vec::new();
        let mut by_name = BTreeMap::new();
        let mut all_locations = Locations::default();
        for n in names {
            let p = &c.providers[n];
            let compiled = cx.at(format_args!("providers[{n}]"), |cx| {
                all_locations.add_provider(p, cx)?;
                compile_provider(cx, p)
            })?;
            by_name.insert(n.clone(), providers.len());
            providers.push(compiled);
        }
        let mut rules = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            rules.push(cx.at(format_args!("rules[{i}]"), |cx| {
                compile_rule(cx, r, &by_name)
            })?);
        }
        Ok(JwtAuthn {
            name: name.into(),
            providers,
            by_name,
            all_locations,
            rules,
            bypass_cors_preflight: c.bypass_cors_preflight,
            strip_failure_response: c.strip_failure_response,
        })
    }
}

fn compile_provider(cx: &mut Cx, p: &pb::JwtProvider) -> Result<Provider, CompileError> {
    fields!(
        cx,
        p,
        pb::JwtProvider {
            supported: [
                issuer,
                audiences,
                forward,
                from_headers,
                from_params,
                from_cookies,
                forward_payload_header,
                pad_forward_payload_header,
                payload_in_metadata,
                normalize_payload_in_metadata,
                clock_skew_seconds,
                claim_to_headers,
                jwks_source_specifier,
                clear_route_cache
            ],
            ignored: [],
            unsupported: [
                subjects,
                require_expiration,
                max_lifetime,
                header_in_metadata,
                failed_status_in_metadata,
                jwt_cache_config
            ],
        }
    );
    if p.clear_route_cache {
        // Choosing the route again after claims became headers is not implemented.
        return Err(cx.unsupported("clear_route_cache"));
    }
    let header = |cx: &Cx, field: &str, name: &str| {
        HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|_| cx.err(field, format!("invalid header name {name:?}")))
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let h = cx.at(format_args!("claim_to_headers[{i}]"), |cx| {
            fields!(
                cx,
                c,
                pb::JwtClaimToHeader {
                    supported: [header_name, claim_name],
                    ignored: [],
                    unsupported: [claim_path],
                }
            );
            header(cx, "header_name", &c.header_name)
        })?;
        claim_to_headers.push((h, c.claim_name.clone()));
    }
    for (i, h) in p.from_headers.iter().enumerate() {
        cx.at(format_args!("from_headers[{i}]"), |cx| {
            fields!(
                cx,
                h,
                pb::JwtHeader {
                    supported: [name, value_prefix],
                    ignored: [],
                    unsupported: [],
                }
            );
            header(cx, "name", &h.name).map(|_| ())
        })?;
    }
    let keys = match &p.jwks_source_specifier {
        None => Keys::Local(Err(Status::JwksNoValidKeys)),
        Some(pb::jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
            let doc = cx.at("local_jwks", |cx| data_source(cx, ds))?;
            Keys::Local(Jwks::parse(&doc).map(Arc::new))
        }
        Some(pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(r)) => {
            Keys::Remote(cx.at("remote_jwks", |cx| remote_jwks(cx, r))?)
        }
    };
    let mut space_delimited_claims = Vec::new();
    if let Some(n) = &p.normalize_payload_in_metadata {
        space_delimited_claims = n.space_delimited_claims.clone();
    }
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: Audiences::new(&p.audiences),
        locations: {
            let mut l = Locations::default();
            l.add_provider(p, cx)?;
            l
        },
        forward: p.forward,
        forward_payload_header: if p.forward_payload_header.is_empty() {
            None
        } else {
            Some(header(
                cx,
                "forward_payload_header",
                &p.forward_payload_header,
            )?)
        },
        pad_forward_payload_header: p.pad_forward_payload_header,
        claim_to_headers,
        payload_in_metadata: p.payload_in_metadata.clone(),
        space_delimited_claims,
        clock_skew: if p.clock_skew_seconds > 0 {
            u64::from(p.clock_skew_seconds)
        } else {
            DEFAULT_CLOCK_SKEW_SECONDS
        },
        keys,
    })
}

fn data_source(cx: &mut Cx, ds: &core_pb::DataSource) -> Result<Vec<u8>, CompileError> {
    use core_pb::data_source::Specifier;
    fields!(
        cx,
        ds,
        core_pb::DataSource {
            supported: [specifier],
            ignored: [],
            unsupported: [watched_directory],
        }
    );
    match &ds.specifier {
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::Filename(f)) => {
            std::fs::read(f).map_err(|e| cx.err("filename", format!("reading {f}: {e}")))
        }
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(String::into_bytes)
            .map_err(|_| cx.err("environment_variable", format!("{v} is not set"))),
        None => Ok(Vec::new()),
    }
}

fn remote_jwks(cx: &mut Cx, r: &pb::RemoteJwks) -> Result<Arc<RemoteJwks>, CompileError> {
    fields!(
        cx,
        r,
        pb::RemoteJwks {
            supported: [http_uri, cache_duration, async_fetch],
            ignored: [],
            unsupported: [retry_policy],
        }
    );
    let Some(u) = &r.http_uri else {
        return Err(cx.err("http_uri", "remote_jwks needs http_uri"));
    };
    let (cluster, timeout) = cx.at("http_uri", |cx| {
        fields!(
            cx,
            u,
            core_pb::HttpUri {
                supported: [uri, timeout, http_upstream_type],
                ignored: [],
                unsupported: [],
            }
        );
        let cluster = match &u.http_upstream_type {
            Some(core_pb::http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
            _ => return Err(cx.err("cluster", "a cluster is required")),
        };
        let timeout = duration(cx, "timeout", &u.timeout)?
            .ok_or_else(|| cx.err("timeout", "a timeout is required"))?;
        Ok((cluster, timeout))
    })?;
    let uri: http::Uri = u
        .uri
        .parse()
        .map_err(|e| cx.err("http_uri.uri", format!("{:?}: {e}", u.uri)))?;
    let (Some(authority), Some(_)) = (uri.authority(), uri.scheme()) else {
        return Err(cx.err(
            "http_uri.uri",
            format!("{:?} is not an absolute URI", u.uri),
        ));
    };
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|e| cx.err("http_uri.uri", e.to_string()))?;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let cache_duration =
        duration(cx, "cache_duration", &r.cache_duration)?.unwrap_or(DEFAULT_CACHE_DURATION);
    let async_fetch = match &r.async_fetch {
        None => None,
        Some(a) => Some(cx.at("async_fetch", |cx| {
            fields!(
                cx,
                a,
                pb::JwksAsyncFetch {
                    supported: [failed_refetch_duration],
                    // Listeners never wait for key fetches here.
                    ignored: [fast_listener],
                    unsupported: [],
                }
            );
            Ok(
                duration(cx, "failed_refetch_duration", &a.failed_refetch_duration)?
                    .unwrap_or(DEFAULT_FAILED_REFETCH),
            )
        })?),
    };
    Ok(Arc::new(RemoteJwks {
        cluster: cluster.into(),
        uri: u.uri.as_str().into(),
        host,
        path,
        timeout,
        cache_duration,
        async_fetch,
    }))
}

fn compile_rule(
    cx: &mut Cx,
    r: &pb::RequirementRule,
    providers: &BTreeMap<String, usize>,
) -> Result<Rule, CompileError> {
    fields!(
        cx,
        r,
        pb::RequirementRule {
            supported: [r#match, requirement_type],
            ignored: [],
            unsupported: [],
        }
    );
    let Some(m) = &r.r#match else {
        return Err(cx.err("match", "a rule needs a match"));
    };
    let (prefix, path, case_sensitive) = cx.at("match", |cx| {
        fields!(
            cx,
            m,
            route_pb::RouteMatch {
                supported: [path_specifier, case_sensitive],
                ignored: [],
                unsupported: [
                    runtime_fraction,
                    headers,
                    query_parameters,
                    grpc,
                    tls_context,
                    dynamic_metadata,
                    filter_state,
                    cookies
                ],
            }
        );
        use route_pb::route_match::PathSpecifier;
        let cs = m.case_sensitive.as_ref().is_none_or(|b| b.value);
        match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => Ok((Some(p.clone()), None, cs)),
            Some(PathSpecifier::Path(p)) => Ok((None, Some(p.clone()), cs)),
            _ => Err(cx.err(
                "path_specifier",
                "only prefix and path matches are supported in JWT rules",
            )),
        }
    })?;
    let verifier = match &r.requirement_type {
        None => Verifier::AllowAll,
        Some(pb::requirement_rule::RequirementType::Requires(req)) => {
            cx.at("requires", |cx| requirement(cx, req, providers))?
        }
        Some(pb::requirement_rule::RequirementType::RequirementName(_)) => {
            return Err(cx.unsupported("requirement_name"));
        }
    };
    Ok(Rule {
        prefix,
        path,
        case_sensitive,
        verifier,
    })
}

fn requirement(
    cx: &mut Cx,
    r: &pb::JwtRequirement,
    providers: &BTreeMap<String, usize>,
) -> Result<Verifier, CompileError> {
    use pb::jwt_requirement::RequiresType;
    let provider = |cx: &Cx, name: &str| {
        providers.get(name).copied().ok_or_else(|| {
            cx.err(
                "provider_name",
                format!("Required provider ['{name}'] is not configured."),
            )
        })
    };
    Ok(match &r.requires_type {
        None => Verifier::AllowAll,
        Some(RequiresType::ProviderName(n)) => Verifier::Provider {
            provider: provider(cx, n)?,
            audiences: None,
        },
        Some(RequiresType::ProviderAndAudiences(pa)) => Verifier::Provider {
            provider: provider(cx, &pa.provider_name)?,
            audiences: (!pa.audiences.is_empty()).then(|| Audiences::new(&pa.audiences)),
        },
        Some(RequiresType::RequiresAny(list)) => {
            let mut children = Vec::new();
            let (mut allow_missing, mut allow_missing_or_failed) = (false, false);
            for (i, c) in list.requirements.iter().enumerate() {
                match &c.requires_type {
                    Some(RequiresType::AllowMissing(_)) => allow_missing = true,
                    Some(RequiresType::AllowMissingOrFailed(_)) => allow_missing_or_failed = true,
                    _ => children.push(
                        cx.at(format_args!("requires_any.requirements[{i}]"), |cx| {
                            requirement(cx, c, providers)
                        })?,
                    ),
                }
            }
            if children.is_empty() {
                if allow_missing_or_failed {
                    children.push(Verifier::AllowMissingOrFailed);
                } else if allow_missing {
                    children.push(Verifier::AllowMissing);
                }
            }
            Verifier::Any {
                children,
                allow_missing,
                allow_missing_or_failed,
            }
        }
        Some(RequiresType::RequiresAll(list)) => {
            let mut children = Vec::new();
            for (i, c) in list.requirements.iter().enumerate() {
                children.push(cx.at(format_args!("requires_all.requirements[{i}]"), |cx| {
                    requirement(cx, c, providers)
                })?);
            }
            Verifier::All(children)
        }
        Some(RequiresType::AllowMissingOrFailed(_)) => Verifier::AllowMissingOrFailed,
        Some(RequiresType::AllowMissing(_)) => Verifier::AllowMissing,
        Some(_) => return Err(cx.unsupported("requires_type")),
    })
}

/// What one request's verification has gathered.
struct Verification<'r, 'c> {
    cx: &'r mut RequestCx<'c>,
    /// Verified payloads, by metadata key, written when the whole requirement is decided.
    payloads: Map<String, Value>,
}

impl JwtAuthn {
    /// A verifier's requirement in words (issuers, and what a missing token gets).
    fn requirement(&self, v: &Verifier) -> String {
        match v {
            Verifier::Provider { provider, .. } => match self.providers.get(*provider) {
                Some(p) => format!("a valid JWT from {}", p.issuer),
                None => "a valid JWT".into(),
            },
            Verifier::Any {
                children,
                allow_missing,
                allow_missing_or_failed,
            } => {
                let any: Vec<String> = children.iter().map(|c| self.requirement(c)).collect();
                let mut s = format!("any of [{}]", any.join(", "));
                if *allow_missing_or_failed {
                    s.push_str(", or none valid (never refused)");
                } else if *allow_missing {
                    s.push_str(", or no token at all");
                }
                s
            }
            Verifier::All(children) => {
                let all: Vec<String> = children.iter().map(|c| self.requirement(c)).collect();
                format!("all of [{}]", all.join(", "))
            }
            Verifier::AllowMissing => "no token, or a valid one".into(),
            Verifier::AllowMissingOrFailed => "anything (tokens checked, never refused)".into(),
            Verifier::AllowAll => "nothing".into(),
        }
    }
}

impl HttpFilter for JwtAuthn {
    fn name(&self) -> &str {
        &self.name
    }

    /// The requirement of the rule this request's path selects; tokens are not verified
    /// here (that needs the keys, and the time), so the filter never answers.
    fn explain(
        &self,
        input: &crate::proxy::rbac::Input<'_>,
    ) -> Option<crate::proxy::http::filter::FilterExplanation> {
        let path = input.request.as_ref().map_or("/", |r| r.path_and_query);
        let summary = match self.rules.iter().find(|r| r.matches(path)) {
            None
            | Some(Rule {
                verifier: Verifier::AllowAll,
                ..
            }) => "no JWT requirement for this path".to_string(),
            Some(rule) => format!(
                "requires {}: an invalid token gets 401 (not verified here)",
                self.requirement(&rule.verifier)
            ),
        };
        Some(crate::proxy::http::filter::FilterExplanation {
            summary,
            answer: None,
        })
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        if self.bypass_cors_preflight && is_cors_preflight(cx.req) {
            return Step::CONTINUE;
        }
        let path = cx
            .req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Some(rule) = self.rules.iter().find(|r| r.matches(path)) else {
            return Step::CONTINUE;
        };
        if let Verifier::AllowAll = rule.verifier {
            return Step::CONTINUE;
        }
        Step::Wait(Box::pin(async move {
            let realm = realm(cx);
            let mut v = Verification {
                cx,
                payloads: Map::new(),
            };
            let status = self.verify(&rule.verifier, &mut v).await;
            let Verification { cx, payloads } = v;
            if !payloads.is_empty() {
                let ns = cx.metadata.namespace_mut(METADATA_NAMESPACE);
                for (k, p) in payloads {
                    ns.insert(k, p);
                }
            }
            if status == Status::Ok {
                return Verdict::Continue;
            }
            cx.log.details = Some(status.details());
            Verdict::respond(self.deny(status, &realm))
        }))
    }
}

fn is_cors_preflight(req: &Request<hyper::body::Incoming>) -> bool {
    req.method() == http::Method::OPTIONS
        && req
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|v| !v.is_empty())
        && req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|v| !v.is_empty())
}

/// Envoy's `buildOriginalUri`: scheme, host and path (at most 256 bytes of it).
fn realm(cx: &RequestCx<'_>) -> String {
    let scheme =
        cx.req
            .uri()
            .scheme_str()
            .unwrap_or(if cx.conn.peer.https { "https" } else { "http" });
    let host = String::from_utf8_lossy(cx.authority.as_bytes());
    let path = cx
        .req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("");
    let mut end = path.len().min(MAX_REALM_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{scheme}://{host}{}", &path[..end])
}

impl JwtAuthn {
    fn deny(&self, status: Status, realm: &str) -> Response<ResponseBody> {
        let code = if status == Status::JwtAudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let body = if self.strip_failure_response {
            ""
        } else {
            status.message()
        };
        let mut resp = Response::new(if body.is_empty() {
            ResponseBody::empty()
        } else {
            ResponseBody::full(Bytes::from_static(body.as_bytes()))
        });
        *resp.status_mut() = code;
        let h = resp.headers_mut();
        if !body.is_empty() {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !self.strip_failure_response {
            let mut v = format!("Bearer realm=\"{realm}\"");
            if status != Status::JwtMissed {
                v.push_str(", error=\"invalid_token\"");
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }

    /// Decides a requirement (Envoy's verifiers, children in order).
    fn verify<'s>(
        &'s self,
        v: &'s Verifier,
        st: &'s mut Verification<'_, '_>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Status> + Send + 's>> {
        Box::pin(async move {
            match v {
                Verifier::AllowAll => Status::Ok,
                Verifier::Provider {
                    provider,
                    audiences,
                } => {
                    let p = &self.providers[*provider];
                    p.locations.sanitize(st.cx.req.headers_mut());
                    let tokens = p.locations.extract(st.cx.req);
                    self.authenticate(tokens, Some((p, audiences.as_ref())), false, false, st)
                        .await
                }
                Verifier::AllowMissing | Verifier::AllowMissingOrFailed => {
                    let failed = matches!(v, Verifier::AllowMissingOrFailed);
                    self.all_locations.sanitize(st.cx.req.headers_mut());
                    let tokens = self.all_locations.extract(st.cx.req);
                    self.authenticate(tokens, None, failed, true, st).await
                }
                Verifier::All(children) => {
                    for c in children {
                        let s = self.verify(c, st).await;
                        if s != Status::Ok {
                            return s;
                        }
                    }
                    Status::Ok
                }
                Verifier::Any {
                    children,
                    allow_missing,
                    allow_missing_or_failed,
                } => {
                    let mut statuses = Vec::with_capacity(children.len());
                    for c in children {
                        let s = self.verify(c, st).await;
                        if s == Status::Ok {
                            return Status::Ok;
                        }
                        statuses.push(s);
                    }
                    let mut fin = Status::JwtMissed;
                    for s in statuses {
                        if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer)
                            || fin == Status::JwtMissed
                        {
                            fin = s;
                        }
                    }
                    if *allow_missing_or_failed || (*allow_missing && fin == Status::JwtMissed) {
                        Status::Ok
                    } else {
                        fin
                    }
                }
            }
        })
    }

    /// Envoy's authenticator: every token must verify (the last found first) unless
    /// failures are allowed.
    async fn authenticate(
        &self,
        mut tokens: Vec<Token>,
        provider: Option<(&Provider, Option<&Audiences>)>,
        allow_failed: bool,
        allow_missing: bool,
        st: &mut Verification<'_, '_>,
    ) -> Status {
        if tokens.is_empty() {
            return if allow_failed || allow_missing {
                Status::Ok
            } else {
                Status::JwtMissed
            };
        }
        while let Some(token) = tokens.pop() {
            let status = self.verify_token(&token, provider, st).await;
            if (status != Status::Ok && !allow_failed && !allow_missing) || tokens.is_empty() {
                return if allow_failed || (allow_missing && status == Status::JwtMissed) {
                    Status::Ok
                } else {
                    status
                };
            }
        }
        Status::Ok
    }

    async fn verify_token(
        &self,
        token: &Token,
        provider: Option<(&Provider, Option<&Audiences>)>,
        st: &mut Verification<'_, '_>,
    ) -> Status {
        let jwt = match Jwt::parse(&token.value) {
            Ok(j) => j,
            Err(s) => return s,
        };
        if !token.issuers.allows(&jwt.iss) {
            return Status::JwtUnknownIssuer;
        }
        let (p, audiences) = match provider {
            Some((p, a)) => (p, a),
            None => match self.by_issuer(&jwt.iss) {
                Some(p) => (p, None),
                None => return Status::JwtUnknownIssuer,
            },
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let s = jwt.check_time(now, p.clock_skew);
        if s != Status::Ok {
            return s;
        }
        if !audiences.unwrap_or(&p.audiences).allows(&jwt.audiences) {
            return Status::JwtAudienceNotAllowed;
        }
        let s = match &p.keys {
            Keys::Local(Ok(jwks)) => jwt.verify(jwks),
            Keys::Local(Err(_)) => Status::JwksNoValidKeys,
            Keys::Remote(r) => {
                let shared = st.cx.conn.shared.clone();
                let worker = st.cx.conn.worker;
                verify_remote(&shared, r, worker, &jwt).await
            }
        };
        if s != Status::Ok {
            return s;
        }
        // A good token: what it adds to the request.
        let headers = st.cx.req.headers_mut();
        if let Some(h) = &p.forward_payload_header {
            let mut v = jwt.payload_b64.clone();
            if p.pad_forward_payload_header {
                while v.len() % 4 != 0 {
                    v.push('=');
                }
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.append(h.clone(), v);
            }
        }
        for (h, c) in &p.claim_to_headers {
            if let Some(v) = claim(&jwt.payload, c).and_then(claim_header_value)
                && let Ok(v) = HeaderValue::from_str(&v)
            {
                headers.append(h.clone(), v);
            }
        }
        if !p.forward {
            match &token.place {
                Place::Header(h) => {
                    headers.remove(h);
                }
                Place::Param(name) => remove_param(st.cx.req, name),
                Place::Cookie => {}
            }
        }
        if !p.payload_in_metadata.is_empty() {
            let mut payload = jwt.payload;
            for c in &p.space_delimited_claims {
                if let Some(Value::String(s)) = payload.get(c) {
                    let parts: Vec<Value> = s
                        .split(' ')
                        .filter(|x| !x.is_empty())
                        .map(|x| Value::String(x.to_string()))
                        .collect();
                    payload.insert(c.clone(), Value::Array(parts));
                }
            }
            st.payloads
                .insert(p.payload_in_metadata.clone(), Value::Object(payload));
        }
        Status::Ok
    }

    /// The provider for an issuer (for `allow_missing*`): the first with that issuer,
    /// else the first without one.
    fn by_issuer(&self, iss: &str) -> Option<&Provider> {
        let ordered = || self.by_name.values().map(|i| &self.providers[*i]);
        ordered()
            .find(|p| p.issuer == iss)
            .or_else(|| ordered().find(|p| p.issuer.is_empty()))
    }
}

/// Removes a query parameter from the request's URI (every occurrence).
fn remove_param(req: &mut Request<hyper::body::Incoming>, name: &str) {
    let Some(pq) = req.uri().path_and_query() else {
        return;
    };
    let Some(q) = pq.query() else { return };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| percent_decode(p.split('=').next().unwrap_or(p)) != name)
        .collect();
    let new = if kept.is_empty() {
        pq.path().to_string()
    } else {
        format!("{}?{}", pq.path(), kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = http::uri::PathAndQuery::try_from(new) {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// Verifies against a remote key set: the cached keys when fresh, else a fetch (the
/// request waits); a `kid` no key has triggers one rate-limited refetch.
async fn verify_remote(
    shared: &Arc<Shared>,
    r: &Arc<RemoteJwks>,
    worker: usize,
    jwt: &Jwt,
) -> Status {
    let entry = shared.jwks.entry(r);
    if r.async_fetch.is_some() {
        entry.start_refresher(shared, r, worker);
    }
    let keys = match entry.current(r) {
        Some(k) => k,
        None => match entry.fetch(shared, r, worker).await {
            Ok(k) => k,
            Err(()) => return Status::JwksFetchFail,
        },
    };
    let s = jwt.verify(&keys);
    if s == Status::JwksKidAlgMismatch
        && entry.may_refetch_for_kid()
        && let Ok(k) = entry.fetch(shared, r, worker).await
    {
        return jwt.verify(&k);
    }
    s
}

/// A key set's identity: its cluster and URI.
type JwksKey = (Box<str>, Box<str>);

/// Remote key sets, by cluster and URI, kept by the runtime across configuration
/// updates; sets unused for an hour are dropped.
#[derive(Debug, Default)]
pub struct JwksStore {
    entries: Mutex<HashMap<JwksKey, Arc<JwksEntry>>>,
}

/// One remote key set.
#[derive(Debug, Default)]
pub struct JwksEntry {
    keys: arc_swap::ArcSwapOption<Cached>,
    /// One fetch at a time; waiters take its result.
    fetching: tokio::sync::Mutex<()>,
    /// When a fetch was last started for an unknown `kid`.
    last_kid_refetch: Mutex<Option<Instant>>,
    /// Seconds since the store's epoch of the last use (for pruning).
    last_used: AtomicU64,
    /// The shortest cache duration a provider asked for, in milliseconds.
    refresh_ms: AtomicU64,
    refresher: Mutex<bool>,
}

#[derive(Debug)]
struct Cached {
    jwks: Arc<Jwks>,
    fetched: Instant,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl JwksStore {
    /// The entry of a key set (made empty if new).
    pub fn entry(&self, r: &RemoteJwks) -> Arc<JwksEntry> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = epoch().elapsed().as_secs();
        let e = map
            .entry((r.cluster.clone(), r.uri.clone()))
            .or_insert_with(|| {
                Arc::new(JwksEntry {
                    refresh_ms: AtomicU64::new(u64::MAX),
                    ..Default::default()
                })
            })
            .clone();
        e.last_used.store(now, Ordering::Relaxed);
        e.refresh_ms
            .fetch_min(r.cache_duration.as_millis() as u64, Ordering::Relaxed);
        if map.len() > 1 {
            let idle = JWKS_IDLE_PRUNE.as_secs();
            map.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle);
        }
        e
    }

    /// How many key sets are held.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl JwksEntry {
    /// The cached keys if any; without `async_fetch` only while within `cache_duration`
    /// (with it, keys never expire: the background task replaces them).
    fn current(&self, r: &RemoteJwks) -> Option<Arc<Jwks>> {
        let c = self.keys.load_full()?;
        if r.async_fetch.is_none() && c.fetched.elapsed() >= r.cache_duration {
            return None;
        }
        Some(c.jwks.clone())
    }

    fn may_refetch_for_kid(&self) -> bool {
        let mut last = self
            .last_kid_refetch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Fetches the keys (one fetch at a time: a request that waited for another's fetch
    /// takes its result if it is newer than the wait).
    async fn fetch(&self, shared: &Shared, r: &RemoteJwks, worker: usize) -> Result<Arc<Jwks>, ()> {
        let asked = Instant::now();
        let _one = self.fetching.lock().await;
        if let Some(c) = self.keys.load_full()
            && c.fetched >= asked
        {
            return Ok(c.jwks.clone());
        }
        let jwks = Arc::new(fetch_jwks(shared, r, worker).await?);
        self.keys.store(Some(Arc::new(Cached {
            jwks: jwks.clone(),
            fetched: Instant::now(),
        })));
        Ok(jwks)
    }

    /// Starts the background refresh of an `async_fetch` key set, once: it refetches
    /// `REFETCH_BEFORE_EXPIRY` before the cache duration ends (after the failure delay
    /// when a fetch fails) and stops when the set is dropped from the store.
    fn start_refresher(self: &Arc<Self>, shared: &Arc<Shared>, r: &Arc<RemoteJwks>, worker: usize) {
        {
            let mut started = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
            if *started {
                return;
            }
            *started = true;
        }
        let entry = Arc::downgrade(self);
        let shared: Weak<Shared> = Arc::downgrade(shared);
        let r = r.clone();
        tokio::spawn(async move {
            let failed = r.async_fetch.unwrap_or(DEFAULT_FAILED_REFETCH);
            loop {
                let wait = {
                    let Some(e) = entry.upgrade() else { return };
                    let cache = Duration::from_millis(e.refresh_ms.load(Ordering::Relaxed));
                    let good = if cache > REFETCH_BEFORE_EXPIRY {
                        cache - REFETCH_BEFORE_EXPIRY
                    } else {
                        cache
                    };
                    match e.keys.load_full() {
                        None => Duration::ZERO,
                        Some(c) => good.saturating_sub(c.fetched.elapsed()),
                    }
                };
                tokio::time::sleep(wait).await;
                let (Some(e), Some(s)) = (entry.upgrade(), shared.upgrade()) else {
                    return;
                };
                let dropped = !s
                    .jwks
                    .entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .any(|x| Arc::ptr_eq(x, &e));
                if dropped {
                    return;
                }
                if e.fetch(&s, &r, worker).await.is_err() {
                    drop((e, s));
                    tokio::time::sleep(failed).await;
                }
            }
        });
    }
}

/// One GET of the key set through the named cluster: 200 and a valid set, or an error.
async fn fetch_jwks(shared: &Shared, r: &RemoteJwks, worker: usize) -> Result<Jwks, ()> {
    let cluster: Arc<Cluster> = shared
        .snapshot
        .load()
        .clusters
        .get(&*r.cluster)
        .cloned()
        .ok_or(())?;
    let work = async {
        let host = cluster.choose_host(LbContext::default()).ok_or(())?;
        let h2 = cluster.protocol == crate::proxy::upstream::cluster::UpstreamProtocol::Http2;
        let mut conn = pool::acquire(&cluster, &host, worker, h2)
            .await
            .map_err(|_| ())?;
        let mut req = Request::new(RequestBody::Empty);
        *req.uri_mut() = http::Uri::from(r.path.clone());
        if h2 {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = http::uri::Authority::try_from(r.host.as_bytes()).ok();
            if let Ok(u) = http::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
            *req.version_mut() = http::Version::HTTP_2;
        }
        req.headers_mut().insert(header::HOST, r.host.clone());
        let resp = match &mut conn.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|_| ())?;
        let ok = resp.status() == StatusCode::OK;
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES);
        use http_body_util::BodyExt;
        let bytes = body.collect().await.map_err(|_| ())?.to_bytes();
        pool::release(&cluster, &host, worker, conn);
        if !ok {
            return Err(());
        }
        Jwks::parse(&bytes).map_err(|_| ())
    };
    tokio::time::timeout(r.timeout, work)
        .await
        .map_err(|_| ())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locations(p: pb::JwtProvider) -> Locations {
        let mut l = Locations::default();
        l.add_provider(&p, &Cx::new("listener", "l")).unwrap();
        l
    }

    #[test]
    fn default_locations_are_bearer_and_access_token() {
        let l = locations(pb::JwtProvider {
            issuer: "i".into(),
            ..Default::default()
        });
        assert_eq!(l.headers.len(), 1);
        assert_eq!(l.headers[0].name, "authorization");
        assert_eq!(l.headers[0].prefix, "Bearer ");
        assert!(l.params.contains_key("access_token"));
        let l = locations(pb::JwtProvider {
            issuer: "i".into(),
            from_cookies: vec!["c".into()],
            forward_payload_header: "x-payload".into(),
            ..Default::default()
        });
        assert!(l.headers.is_empty() && l.params.is_empty());
        assert_eq!(l.sanitize, [HeaderName::from_static("x-payload")]);
    }

    #[test]
    fn cookies_and_params_are_read_as_envoy_reads_them() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tok=\"abc\"; tok=2"),
        );
        assert_eq!(cookie(&h, "tok").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        let q: Vec<_> = query_params("a=1&tok=x%2Ey&&b").collect();
        assert_eq!(
            q,
            [
                ("a".to_string(), "1".to_string()),
                ("tok".to_string(), "x.y".to_string()),
                ("b".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn rules_match_by_prefix_or_path() {
        let r = |prefix: Option<&str>, path: Option<&str>, cs| Rule {
            prefix: prefix.map(str::to_string),
            path: path.map(str::to_string),
            case_sensitive: cs,
            verifier: Verifier::AllowAll,
        };
        assert!(r(Some("/"), None, true).matches("/x?y"));
        assert!(r(Some("/api"), None, true).matches("/api/v1"));
        assert!(!r(Some("/api"), None, true).matches("/API"));
        assert!(r(Some("/api"), None, false).matches("/API"));
        assert!(r(None, Some("/a"), true).matches("/a?q=1"));
        assert!(!r(None, Some("/a"), true).matches("/ab"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let e = JwksEntry::default();
        assert!(e.may_refetch_for_kid());
        assert!(!e.may_refetch_for_kid());
        tokio::time::advance(KID_REFETCH_INTERVAL - Duration::from_millis(1)).await;
        assert!(!e.may_refetch_for_kid());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(e.may_refetch_for_kid());
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let mut cx = Cx::new("listener", "l");
        let c = pb::JwtAuthentication {
            providers: [(
                "p".to_string(),
                pb::JwtProvider {
                    require_expiration: true,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let e = JwtAuthn::compile(&mut cx, "jwt", &c.encode_to_vec()).unwrap_err();
        assert!(e.path.ends_with("require_expiration"), "{e}");
        let c = pb::JwtAuthentication {
            rules: vec![pb::RequirementRule {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                requirement_type: Some(pb::requirement_rule::RequirementType::Requires(
                    pb::JwtRequirement {
                        requires_type: Some(pb::jwt_requirement::RequiresType::ProviderName(
                            "nope".into(),
                        )),
                    },
                )),
            }],
            ..Default::default()
        };
        let e = JwtAuthn::compile(&mut cx, "jwt", &c.encode_to_vec()).unwrap_err();
        assert!(
            e.message
                .contains("Required provider ['nope'] is not configured."),
            "{e}"
        );
    }
}
