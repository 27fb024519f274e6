//! Envoy's RBAC engine (`envoy.config.rbac.v3.RBAC`), shared by the HTTP filter
//! ([`crate::proxy::http::filters::rbac`]) and the network filter in front of
//! `tcp_proxy` ([`NetworkRbac`]).
//!
//! An engine holds named policies; a policy matches when one of its permissions (what
//! is done) and one of its principals (who does it) match. Policies are tried in name
//! order and the first match is the "effective policy". ALLOW allows exactly what
//! matches, DENY denies exactly what matches, LOG allows everything and records whether
//! something matched (`envoy.common` / `access_log_hint`).
//!
//! What a rule can test: and/or/not, `any`, headers (several values of one header are
//! joined with `,`, as Envoy's RBAC does), `url_path` (without the query), destination
//! IP and port (range), `requested_server_name` (SNI), dynamic metadata,
//! `authenticated` (the peer certificate's URI SANs, then DNS SANs, then subject, on a
//! TLS connection), `direct_remote_ip`, `remote_ip` (the client address after
//! X-Forwarded-For handling), `source_ip`. Anything else is a compile error naming the
//! field. Matchers are compiled once per snapshot; evaluating allocates only to join a
//! multi-valued header.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::http::filter::DynamicMetadata;
use crate::proxy::route::RequestView;
use crate::proxy::route::matcher::{HeaderKey, HeaderMatch, HeaderMatchKind, StringMatch};
use crate::tls::identity::PeerIdentity;
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::config::rbac::v3 as pb;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher_pb;
use std::net::{IpAddr, SocketAddr};

/// What an engine does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// A compiled rule set.
#[derive(Debug)]
pub struct Engine {
    pub action: Action,
    /// Sorted by name (Envoy keeps them in a `std::map`).
    policies: Vec<(Box<str>, Policy)>,
}

#[derive(Debug)]
struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

#[derive(Debug)]
enum Permission {
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Any,
    Header(HeaderMatch),
    UrlPath(StringMatch),
    DestinationIp(Cidr),
    DestinationPort(u32),
    DestinationPortRange(i64, i64),
    Metadata(MetadataMatch),
    RequestedServerName(StringMatch),
}

#[derive(Debug)]
enum Principal {
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    Any,
    Authenticated(Option<StringMatch>),
    SourceIp(Cidr),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    Metadata(MetadataMatch),
}

/// An address range (`CidrRange`).
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn compile(cx: &mut Cx, c: &core_pb::CidrRange) -> Result<Cidr, CompileError> {
        fields!(
            cx,
            c,
            core_pb::CidrRange {
                supported: [address_prefix, prefix_len],
                ignored: [],
                unsupported: [],
            }
        );
        let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
            cx.err(
                "address_prefix",
                format!("malformed IP address: {}", c.address_prefix),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map_or(0, |l| l.value).min(max) as u8;
        Ok(Cidr { addr, len })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher` over dynamic metadata.
#[derive(Debug)]
pub struct MetadataMatch {
    filter: Box<str>,
    path: Vec<Box<str>>,
    value: ValueMatch,
    invert: bool,
}

#[derive(Debug)]
enum ValueMatch {
    Null,
    Double(DoubleMatch),
    String(StringMatch),
    Bool(bool),
    Present(bool),
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}

#[derive(Debug)]
enum DoubleMatch {
    Range(f64, f64),
    Exact(f64),
}

impl MetadataMatch {
    fn compile(
        cx: &mut Cx,
        m: &matcher_pb::MetadataMatcher,
    ) -> Result<MetadataMatch, CompileError> {
        fields!(
            cx,
            m,
            matcher_pb::MetadataMatcher {
                supported: [filter, path, value, invert],
                ignored: [],
                unsupported: [],
            }
        );
        if m.filter.is_empty() {
            return Err(cx.err("filter", "value length must be at least 1 characters"));
        }
        if m.path.is_empty() {
            return Err(cx.err("path", "value must contain at least 1 item(s)"));
        }
        let mut path = Vec::with_capacity(m.path.len());
        for (i, seg) in m.path.iter().enumerate() {
            use matcher_pb::metadata_matcher::path_segment::Segment;
            match &seg.segment {
                Some(Segment::Key(k)) if !k.is_empty() => path.push(k.as_str().into()),
                _ => {
                    return Err(cx.err(
                        &format!("path[{i}].key"),
                        "value length must be at least 1 characters",
                    ));
                }
            }
        }
        let value = match &m.value {
            Some(v) => cx.at("value", |cx| ValueMatch::compile(cx, v))?,
            None => return Err(cx.err("value", "value is required")),
        };
        Ok(MetadataMatch {
            filter: m.filter.as_str().into(),
            path,
            value,
            invert: m.invert,
        })
    }

    fn matches(&self, md: Option<&DynamicMetadata>) -> bool {
        let v = md.and_then(|md| md.lookup(&self.filter, &self.path));
        self.value.matches(v) != self.invert
    }
}

impl ValueMatch {
    fn compile(cx: &mut Cx, v: &matcher_pb::ValueMatcher) -> Result<ValueMatch, CompileError> {
        use matcher_pb::value_matcher::MatchPattern as P;
        Ok(match &v.match_pattern {
            Some(P::NullMatch(_)) => ValueMatch::Null,
            Some(P::DoubleMatch(d)) => {
                use matcher_pb::double_matcher::MatchPattern as D;
                ValueMatch::Double(match &d.match_pattern {
                    Some(D::Range(r)) => DoubleMatch::Range(r.start, r.end),
                    Some(D::Exact(e)) => DoubleMatch::Exact(*e),
                    None => return Err(cx.err("double_match", "a match pattern is required")),
                })
            }
            Some(P::StringMatch(s)) => {
                ValueMatch::String(cx.at("string_match", |cx| StringMatch::compile(cx, s))?)
            }
            Some(P::BoolMatch(b)) => ValueMatch::Bool(*b),
            Some(P::PresentMatch(b)) => ValueMatch::Present(*b),
            Some(P::ListMatch(l)) => {
                use matcher_pb::list_matcher::MatchPattern as L;
                match &l.match_pattern {
                    Some(L::OneOf(inner)) => ValueMatch::ListOneOf(Box::new(
                        cx.at("list_match.one_of", |cx| ValueMatch::compile(cx, inner))?,
                    )),
                    None => return Err(cx.err("list_match", "a match pattern is required")),
                }
            }
            Some(P::OrMatch(o)) => {
                if o.value_matchers.len() < 2 {
                    return Err(cx.err(
                        "or_match.value_matchers",
                        "value must contain at least 2 item(s)",
                    ));
                }
                let mut out = Vec::with_capacity(o.value_matchers.len());
                for (i, m) in o.value_matchers.iter().enumerate() {
                    out.push(cx.at(format_args!("or_match.value_matchers[{i}]"), |cx| {
                        ValueMatch::compile(cx, m)
                    })?);
                }
                ValueMatch::Or(out)
            }
            None => return Err(cx.err("match_pattern", "a match pattern is required")),
        })
    }

    /// Envoy's `ValueMatcher` on a metadata value (`None`: absent).
    fn matches(&self, v: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as V;
        match self {
            ValueMatch::Null => matches!(v, Some(V::Null)),
            ValueMatch::Double(d) => match v.and_then(V::as_f64) {
                Some(n) => match d {
                    DoubleMatch::Range(start, end) => n >= *start && n < *end,
                    DoubleMatch::Exact(e) => n == *e,
                },
                None => false,
            },
            ValueMatch::String(s) => match v {
                Some(V::String(x)) => s.matches(x.as_bytes()),
                _ => false,
            },
            ValueMatch::Bool(b) => matches!(v, Some(V::Bool(x)) if x == b),
            ValueMatch::Present(p) => *p && v.is_some(),
            ValueMatch::ListOneOf(inner) => match v {
                Some(V::Array(items)) => items.iter().any(|i| inner.matches(Some(i))),
                _ => false,
            },
            ValueMatch::Or(list) => list.iter().any(|m| m.matches(v)),
        }
    }
}

/// Envoy's `PathMatcher`: the `:path` without query and fragment.
fn compile_path(cx: &mut Cx, p: &matcher_pb::PathMatcher) -> Result<StringMatch, CompileError> {
    use matcher_pb::path_matcher::Rule;
    match &p.rule {
        Some(Rule::Path(s)) => cx.at("path", |cx| StringMatch::compile(cx, s)),
        None => Err(cx.err("rule", "a path rule is required")),
    }
}

fn compile_header(
    cx: &mut Cx,
    h: &crate::xds::pb::envoy::config::route::v3::HeaderMatcher,
) -> Result<HeaderMatch, CompileError> {
    HeaderMatch::compile(cx, h)
}

impl Permission {
    fn compile(cx: &mut Cx, p: &pb::Permission) -> Result<Permission, CompileError> {
        use pb::permission::Rule as R;
        let set = |cx: &mut Cx, field: &str, s: &pb::permission::Set| {
            if s.rules.is_empty() {
                return Err(cx.err(
                    &format!("{field}.rules"),
                    "value must contain at least 1 item(s)",
                ));
            }
            let mut out = Vec::with_capacity(s.rules.len());
            for (i, r) in s.rules.iter().enumerate() {
                out.push(cx.at(format_args!("{field}.rules[{i}]"), |cx| {
                    Permission::compile(cx, r)
                })?);
            }
            Ok(out)
        };
        #[allow(deprecated)]
        Ok(match &p.rule {
            Some(R::AndRules(s)) => Permission::And(set(cx, "and_rules", s)?),
            Some(R::OrRules(s)) => Permission::Or(set(cx, "or_rules", s)?),
            Some(R::NotRule(n)) => Permission::Not(Box::new(
                cx.at("not_rule", |cx| Permission::compile(cx, n))?,
            )),
            Some(R::Any(true)) => Permission::Any,
            Some(R::Any(false)) => return Err(cx.err("any", "value must equal true")),
            Some(R::Header(h)) => Permission::Header(cx.at("header", |cx| compile_header(cx, h))?),
            Some(R::UrlPath(u)) => {
                Permission::UrlPath(cx.at("url_path", |cx| compile_path(cx, u))?)
            }
            Some(R::DestinationIp(c)) => {
                Permission::DestinationIp(cx.at("destination_ip", |cx| Cidr::compile(cx, c))?)
            }
            Some(R::DestinationPort(p)) => {
                if *p > 65535 {
                    return Err(cx.err(
                        "destination_port",
                        "value must be less than or equal to 65535",
                    ));
                }
                Permission::DestinationPort(*p)
            }
            Some(R::DestinationPortRange(r)) => {
                let ok = (0..=65536).contains(&r.start)
                    && (0..=65536).contains(&r.end)
                    && r.start < r.end;
                if !ok {
                    return Err(cx.err(
                        "destination_port_range",
                        format!("invalid port range [{}, {})", r.start, r.end),
                    ));
                }
                Permission::DestinationPortRange(i64::from(r.start), i64::from(r.end))
            }
            Some(R::Metadata(m)) => {
                Permission::Metadata(cx.at("metadata", |cx| MetadataMatch::compile(cx, m))?)
            }
            Some(R::RequestedServerName(s)) => Permission::RequestedServerName(
                cx.at("requested_server_name", |cx| StringMatch::compile(cx, s))?,
            ),
            Some(R::Matcher(_)) => return Err(cx.unsupported("matcher")),
            Some(R::UriTemplate(_)) => return Err(cx.unsupported("uri_template")),
            Some(R::SourcedMetadata(_)) => return Err(cx.unsupported("sourced_metadata")),
            None => return Err(cx.err("rule", "a permission rule is required")),
        })
    }

    fn matches(&self, r: &Input<'_>) -> bool {
        match self {
            Permission::And(l) => l.iter().all(|p| p.matches(r)),
            Permission::Or(l) => l.iter().any(|p| p.matches(r)),
            Permission::Not(p) => !p.matches(r),
            Permission::Any => true,
            Permission::Header(h) => header_matches(h, r.request.as_ref()),
            Permission::UrlPath(m) => path_matches(m, r.request.as_ref()),
            Permission::DestinationIp(c) => c.contains(r.local.ip()),
            Permission::DestinationPort(p) => u32::from(r.local.port()) == *p,
            Permission::DestinationPortRange(s, e) => {
                let p = i64::from(r.local.port());
                p >= *s && p < *e
            }
            Permission::Metadata(m) => m.matches(r.metadata),
            Permission::RequestedServerName(m) => m.matches(r.sni.unwrap_or("").as_bytes()),
        }
    }
}

impl Principal {
    fn compile(cx: &mut Cx, p: &pb::Principal) -> Result<Principal, CompileError> {
        use pb::principal::Identifier as I;
        let set = |cx: &mut Cx, field: &str, s: &pb::principal::Set| {
            if s.ids.is_empty() {
                return Err(cx.err(
                    &format!("{field}.ids"),
                    "value must contain at least 1 item(s)",
                ));
            }
            let mut out = Vec::with_capacity(s.ids.len());
            for (i, r) in s.ids.iter().enumerate() {
                out.push(cx.at(format_args!("{field}.ids[{i}]"), |cx| {
                    Principal::compile(cx, r)
                })?);
            }
            Ok(out)
        };
        #[allow(deprecated)]
        Ok(match &p.identifier {
            Some(I::AndIds(s)) => Principal::And(set(cx, "and_ids", s)?),
            Some(I::OrIds(s)) => Principal::Or(set(cx, "or_ids", s)?),
            Some(I::NotId(n)) => {
                Principal::Not(Box::new(cx.at("not_id", |cx| Principal::compile(cx, n))?))
            }
            Some(I::Any(true)) => Principal::Any,
            Some(I::Any(false)) => return Err(cx.err("any", "value must equal true")),
            Some(I::Authenticated(a)) => Principal::Authenticated(match &a.principal_name {
                None => None,
                Some(m) => Some(cx.at("authenticated.principal_name", |cx| {
                    StringMatch::compile(cx, m)
                })?),
            }),
            Some(I::SourceIp(c)) => {
                Principal::SourceIp(cx.at("source_ip", |cx| Cidr::compile(cx, c))?)
            }
            Some(I::DirectRemoteIp(c)) => {
                Principal::DirectRemoteIp(cx.at("direct_remote_ip", |cx| Cidr::compile(cx, c))?)
            }
            Some(I::RemoteIp(c)) => {
                Principal::RemoteIp(cx.at("remote_ip", |cx| Cidr::compile(cx, c))?)
            }
            Some(I::Header(h)) => Principal::Header(cx.at("header", |cx| compile_header(cx, h))?),
            Some(I::UrlPath(u)) => Principal::UrlPath(cx.at("url_path", |cx| compile_path(cx, u))?),
            Some(I::Metadata(m)) => {
                Principal::Metadata(cx.at("metadata", |cx| MetadataMatch::compile(cx, m))?)
            }
            Some(I::FilterState(_)) => return Err(cx.unsupported("filter_state")),
            Some(I::SourcedMetadata(_)) => return Err(cx.unsupported("sourced_metadata")),
            Some(I::Custom(_)) => return Err(cx.unsupported("custom")),
            None => return Err(cx.err("identifier", "a principal identifier is required")),
        })
    }

    fn matches(&self, r: &Input<'_>) -> bool {
        match self {
            Principal::And(l) => l.iter().all(|p| p.matches(r)),
            Principal::Or(l) => l.iter().any(|p| p.matches(r)),
            Principal::Not(p) => !p.matches(r),
            Principal::Any => true,
            Principal::Authenticated(m) => authenticated(m.as_ref(), r),
            // The connection's peer: on a connection, the direct remote address.
            Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => c.contains(r.direct_remote),
            Principal::RemoteIp(c) => c.contains(r.remote),
            Principal::Header(h) => header_matches(h, r.request.as_ref()),
            Principal::UrlPath(m) => path_matches(m, r.request.as_ref()),
            Principal::Metadata(m) => m.matches(r.metadata),
        }
    }
}

/// Envoy's `AuthenticatedMatcher`: only on a TLS connection; without a name any; else
/// any URI SAN, then any DNS SAN, then the subject (empty without a certificate).
fn authenticated(m: Option<&StringMatch>, r: &Input<'_>) -> bool {
    if !r.tls {
        return false;
    }
    let Some(m) = m else {
        return true;
    };
    match r.peer {
        None => m.matches(b""),
        Some(p) => {
            p.uri_sans.iter().any(|u| m.matches(u.as_bytes()))
                || p.dns_sans.iter().any(|d| m.matches(d.as_bytes()))
                || m.matches(p.subject.as_bytes())
        }
    }
}

/// Envoy's RBAC header rule: the header's values joined with `,`; a missing header fails
/// every test but a presence one (or `treat_missing_header_as_empty`). A network filter
/// sees no headers.
fn header_matches(h: &HeaderMatch, req: Option<&RequestView<'_>>) -> bool {
    let test = |v: &[u8]| -> bool {
        match &h.kind {
            HeaderMatchKind::String(s) => s.matches(v),
            HeaderMatchKind::AnyValue => true,
            HeaderMatchKind::Present(p) => *p,
            HeaderMatchKind::Range(start, end) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| n >= *start && n < *end),
        }
    };
    let missing = || -> bool {
        if h.treat_missing_as_empty {
            return test(b"") != h.invert;
        }
        match h.kind {
            HeaderMatchKind::Present(p) => p == h.invert,
            _ => false,
        }
    };
    let Some(req) = req else {
        return missing();
    };
    match &h.key {
        HeaderKey::Name(name) => {
            let mut values = req.headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return missing();
            };
            match values.next() {
                None => test(first.as_bytes()) != h.invert,
                Some(second) => {
                    let mut joined = first.as_bytes().to_vec();
                    for v in std::iter::once(second).chain(values) {
                        joined.push(b',');
                        joined.extend_from_slice(v.as_bytes());
                    }
                    test(&joined) != h.invert
                }
            }
        }
        HeaderKey::Absent => missing(),
        pseudo => match req.pseudo(pseudo) {
            Some(v) => test(&v) != h.invert,
            None => missing(),
        },
    }
}

fn path_matches(m: &StringMatch, req: Option<&RequestView<'_>>) -> bool {
    match req {
        None => false,
        Some(r) => {
            let path = r.path.split('#').next().unwrap_or(r.path);
            m.matches(path.as_bytes())
        }
    }
}

/// What a rule is evaluated against.
#[derive(Debug)]
pub struct Input<'a> {
    /// The connection's peer address.
    pub direct_remote: IpAddr,
    /// The client address after the connection manager's X-Forwarded-For handling (the
    /// peer on a network filter).
    pub remote: IpAddr,
    /// The address the connection was made to.
    pub local: SocketAddr,
    /// The SNI the client sent, if any.
    pub sni: Option<&'a str>,
    /// Whether the connection is TLS terminated here.
    pub tls: bool,
    /// The verified client certificate.
    pub peer: Option<&'a PeerIdentity>,
    /// The request (None on a network filter).
    pub request: Option<RequestView<'a>>,
    pub metadata: Option<&'a DynamicMetadata>,
}

/// An engine's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'e> {
    pub allowed: bool,
    /// The first policy (by name) that matched.
    pub policy: Option<&'e str>,
}

impl Engine {
    pub(crate) fn compile(cx: &mut Cx, r: &pb::Rbac) -> Result<Engine, CompileError> {
        fields!(
            cx,
            r,
            pb::Rbac {
                supported: [action, policies],
                ignored: [],
                unsupported: [audit_logging_options],
            }
        );
        let action = match pb::rbac::Action::try_from(r.action) {
            Ok(pb::rbac::Action::Allow) => Action::Allow,
            Ok(pb::rbac::Action::Deny) => Action::Deny,
            Ok(pb::rbac::Action::Log) => Action::Log,
            Err(_) => return Err(cx.err("action", format!("unknown action {}", r.action))),
        };
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let p = &r.policies[name];
            let policy = cx.at(format_args!("policies[{name:?}]"), |cx| {
                fields!(
                    cx,
                    p,
                    pb::Policy {
                        supported: [permissions, principals],
                        ignored: [],
                        unsupported: [condition, checked_condition, cel_config],
                    }
                );
                if p.permissions.is_empty() {
                    return Err(cx.err("permissions", "value must contain at least 1 item(s)"));
                }
                if p.principals.is_empty() {
                    return Err(cx.err("principals", "value must contain at least 1 item(s)"));
                }
                let mut permissions = Vec::with_capacity(p.permissions.len());
                for (i, x) in p.permissions.iter().enumerate() {
                    permissions.push(cx.at(format_args!("permissions[{i}]"), |cx| {
                        Permission::compile(cx, x)
                    })?);
                }
                let mut principals = Vec::with_capacity(p.principals.len());
                for (i, x) in p.principals.iter().enumerate() {
                    principals.push(cx.at(format_args!("principals[{i}]"), |cx| {
                        Principal::compile(cx, x)
                    })?);
                }
                Ok(Policy {
                    permissions,
                    principals,
                })
            })?;
            policies.push((name.as_str().into(), policy));
        }
        Ok(Engine { action, policies })
    }

    /// The first policy matching `r`, by name.
    pub fn matching(&self, r: &Input<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| {
                p.permissions.iter().any(|x| x.matches(r))
                    && p.principals.iter().any(|x| x.matches(r))
            })
            .map(|(n, _)| &**n)
    }

    /// Envoy's `handleAction` without its LOG side effect (the caller records it).
    pub fn decide(&self, r: &Input<'_>) -> Decision<'_> {
        let policy = self.matching(r);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        Decision { allowed, policy }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// Envoy's `responseDetail`: `rbac_access_denied_matched_policy[ID]` (`none` without a
/// matching policy), with whitespace made `_`.
pub fn response_detail(policy: Option<&str>) -> String {
    let id: String = policy
        .unwrap_or("none")
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    format!("rbac_access_denied_matched_policy[{id}]")
}

/// A compiled `envoy.filters.network.rbac`: decided once per connection, on its first
/// bytes (Envoy's ONE_TIME_ON_FIRST_BYTE); a denied connection is closed.
#[derive(Debug)]
pub struct NetworkRbac {
    pub rules: Option<Engine>,
    pub shadow: Option<Engine>,
    /// `stat_prefix` and `shadow_rules_stat_prefix`, kept for logs.
    pub stat_prefix: Box<str>,
    pub shadow_rules_stat_prefix: Box<str>,
}

impl NetworkRbac {
    pub(crate) fn compile(
        cx: &mut Cx,
        r: &crate::xds::pb::envoy::extensions::filters::network::rbac::v3::Rbac,
    ) -> Result<NetworkRbac, CompileError> {
        use crate::xds::pb::envoy::extensions::filters::network::rbac::v3 as net;
        fields!(
            cx,
            r,
            net::Rbac {
                supported: [
                    rules,
                    shadow_rules,
                    shadow_rules_stat_prefix,
                    stat_prefix,
                    enforcement_type
                ],
                ignored: [],
                unsupported: [matcher, shadow_matcher, delay_deny],
            }
        );
        if r.stat_prefix.is_empty() {
            return Err(cx.err("stat_prefix", "value length must be at least 1 characters"));
        }
        if r.enforcement_type != net::rbac::EnforcementType::OneTimeOnFirstByte as i32 {
            return Err(cx.unsupported("enforcement_type"));
        }
        Ok(NetworkRbac {
            rules: match &r.rules {
                Some(x) => Some(cx.at("rules", |cx| Engine::compile(cx, x))?),
                None => None,
            },
            shadow: match &r.shadow_rules {
                Some(x) => Some(cx.at("shadow_rules", |cx| Engine::compile(cx, x))?),
                None => None,
            },
            stat_prefix: r.stat_prefix.as_str().into(),
            shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.as_str().into(),
        })
    }

    /// Whether the connection may go on; counts in `stats`.
    pub fn allows(&self, input: &Input<'_>, stats: &crate::proxy::stats::Stats) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(shadow) = &self.shadow {
            let d = shadow.decide(input);
            let c = if d.allowed {
                &stats.tcp_rbac_shadow_allowed
            } else {
                &stats.tcp_rbac_shadow_denied
            };
            c.fetch_add(1, Relaxed);
        }
        let Some(rules) = &self.rules else {
            return true;
        };
        let d = rules.decide(input);
        if d.allowed {
            stats.tcp_rbac_allowed.fetch_add(1, Relaxed);
        } else {
            stats.tcp_rbac_denied.fetch_add(1, Relaxed);
            tracing::debug!(
                policy = d.policy.unwrap_or("none"),
                "network RBAC denied the connection"
            );
        }
        d.allowed
    }
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
