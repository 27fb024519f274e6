//! Envoy's substitution format strings in header values (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x-a?x-b):10%`, `%START_TIME(%s.%3f)%`, `%%` for a literal percent).
//!
//! A value is parsed once, when the route configuration compiles, into literals and
//! commands; a value without commands stays a plain `HeaderValue` and costs nothing per
//! request. The grammar and the error messages are Envoy's: a command is
//! `%NAME(SUBCOMMAND):LENGTH%` with `NAME` in `[A-Z0-9_]`, an unknown name rejects the
//! configuration. In headers an unavailable value renders as nothing (not `-`), so a value
//! that renders empty omits the header unless `keep_empty_value` is set.
use crate::proxy::connection::ConnTls;
use http::{HeaderMap, HeaderName, Method, Version};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

/// Why a format string was refused (Envoy's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// A parsed header value: literal pieces and commands, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Box<[Part]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(Box<[u8]>),
    Command(Command),
}

/// Which address of the connection or the upstream host a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    DownstreamRemote,
    DownstreamDirectRemote,
    DownstreamLocal,
    Upstream,
}

/// How an address prints: `ip:port` (`[v6]:port`), the IP alone, or the port alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrShape {
    WithPort,
    WithoutPort,
    Port,
}

/// Which header map `%REQ()%`/`%RESP()%` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// A certificate detail of the client's TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    UriSan,
    DnsSan,
    Subject,
    Fingerprint256,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Address(Addr, AddrShape),
    UpstreamCluster,
    UpstreamClusterRaw,
    Protocol,
    RequestedServerName,
    /// Resolved when the configuration compiles, as Envoy does.
    Hostname(Box<[u8]>),
    StartTime(Option<Box<str>>),
    Header {
        side: Side,
        main: HeaderKey,
        alt: Option<HeaderKey>,
        max_len: Option<usize>,
    },
    Peer(Peer),
}

/// A header `%REQ()%` reads: a regular header or one of the request line's pseudo-headers.
#[derive(Debug, Clone, PartialEq)]
enum HeaderKey {
    Name(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
    Status,
}

/// The request line `%REQ(:PATH)%` and friends read (a `HeaderMap` holds no pseudo-headers).
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub authority: &'a [u8],
    /// The scheme the request carried (HTTP/2's `:scheme`, an HTTP/1 absolute-form
    /// target's); `:scheme` is derived as header matchers derive it.
    pub scheme: Option<&'a str>,
    pub https: bool,
}

/// What a request knows when its headers are mutated.
#[derive(Debug, Clone, Copy)]
pub struct FormatContext<'a> {
    /// The client (a PROXY header's source, else the peer).
    pub remote: SocketAddr,
    /// The TCP peer (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`).
    pub direct: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<&'a ConnTls>,
    pub version: Version,
    /// When the request started (monotonic); START_TIME derives the wall clock from it.
    pub started: tokio::time::Instant,
    /// The chosen cluster, once the route picked one.
    pub cluster: Option<&'a str>,
    /// Its `alt_stat_name`, when it has one.
    pub cluster_observability_name: Option<&'a str>,
    /// The upstream host that answered (response headers only).
    pub upstream: Option<SocketAddr>,
    /// For response mutations: the request's headers and line, when still at hand.
    pub request: Option<(&'a HeaderMap, RequestLine<'a>)>,
    /// For request mutations: the line of the request being mutated.
    pub line: Option<RequestLine<'a>>,
    /// The response status (response mutations only).
    pub status: Option<u16>,
}

impl Template {
    /// Parses a header value. `Ok(None)`: no command, the value is a literal (with `%%`
    /// already turned into `%`), returned in `literal`.
    pub fn parse(value: &[u8], literal: &mut Vec<u8>) -> Result<Option<Template>, FormatError> {
        let mut parts = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        let mut pos = 0;
        while pos < value.len() {
            if value[pos] != b'%' {
                current.push(value[pos]);
                pos += 1;
                continue;
            }
            if value.get(pos + 1) == Some(&b'%') {
                current.push(b'%');
                pos += 2;
                continue;
            }
            let Some((name, sub, max_len, end)) = command_at(value, pos) else {
                return Err(FormatError(format!(
                    "Incorrect configuration: {}. Couldn't find valid command at position {pos}",
                    String::from_utf8_lossy(value)
                )));
            };
            if !current.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut current).into()));
            }
            parts.push(Part::Command(command(name, sub, max_len)?));
            pos = end;
        }
        if parts.is_empty() {
            *literal = current;
            return Ok(None);
        }
        if !current.is_empty() {
            parts.push(Part::Literal(current.into()));
        }
        Ok(Some(Template {
            parts: parts.into(),
        }))
    }

    /// Whether rendering reads the request's headers or line (response mutations then
    /// need them kept after the request went upstream).
    pub fn reads_request(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Command(Command::Header {
                    side: Side::Request,
                    ..
                })
            )
        })
    }

    /// Renders into `out`. `own` is the header map being mutated: the request's for
    /// request mutations, the response's for response mutations (`response` tells which).
    pub fn render(
        &self,
        cx: &FormatContext<'_>,
        own: &HeaderMap,
        response: bool,
        out: &mut Vec<u8>,
    ) {
        for p in self.parts.iter() {
            match p {
                Part::Literal(l) => out.extend_from_slice(l),
                Part::Command(c) => render_command(c, cx, own, response, out),
            }
        }
    }
}

/// Envoy's command syntax at `pos` (a `%`): `%NAME(SUB):LEN%`, the subcommand the
/// shortest text up to a `)` that the rest of the syntax follows. Returns the name, the
/// subcommand, the length and the position after the closing `%`.
fn command_at(v: &[u8], pos: usize) -> Option<(&str, &[u8], Option<usize>, usize)> {
    let start = pos + 1;
    let mut i = start;
    while i < v.len() && (v[i].is_ascii_uppercase() || v[i].is_ascii_digit() || v[i] == b'_') {
        i += 1;
    }
    if i == start {
        return None;
    }
    let name = std::str::from_utf8(&v[start..i]).ok()?;
    // `(:LEN)?%` from `at`: the length and the end.
    let tail = |at: usize| -> Option<(Option<usize>, usize)> {
        match v.get(at) {
            Some(b'%') => Some((None, at + 1)),
            Some(b':') => {
                let mut j = at + 1;
                while j < v.len() && v[j].is_ascii_digit() {
                    j += 1;
                }
                if j == at + 1 || v.get(j) != Some(&b'%') {
                    return None;
                }
                let n = std::str::from_utf8(&v[at + 1..j]).ok()?.parse().ok()?;
                Some((Some(n), j + 1))
            }
            _ => None,
        }
    };
    if v.get(i) == Some(&b'(') {
        let sub_start = i + 1;
        for j in sub_start..v.len() {
            if v[j] == b')'
                && let Some((len, end)) = tail(j + 1)
            {
                return Some((name, &v[sub_start..j], len, end));
            }
        }
        return None;
    }
    let (len, end) = tail(i)?;
    Some((name, &[], len, end))
}

/// Envoy's `CommandSyntaxChecker` flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    CommandOnly,
    ParamsOptional,
    ParamsRequiredLengthAllowed,
}

fn check(
    syntax: Syntax,
    name: &str,
    sub: &[u8],
    max_len: Option<usize>,
) -> Result<(), FormatError> {
    match syntax {
        Syntax::CommandOnly if !sub.is_empty() || max_len.is_some() => Err(FormatError(format!(
            "{name} does not take any parameters or length"
        ))),
        Syntax::ParamsRequiredLengthAllowed if sub.is_empty() => {
            Err(FormatError(format!("{name} requires parameters")))
        }
        Syntax::ParamsOptional if max_len.is_some() => Err(FormatError(format!(
            "{name} does not allow length to be specified."
        ))),
        _ => Ok(()),
    }
}

/// Envoy commands meshgate does not render: refused by name rather than as unknown.
const NOT_RENDERED: &[&str] = &[
    "UPSTREAM_METADATA",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_HOST_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "PER_REQUEST_STATE",
    "TRAILER",
    "ENVIRONMENT",
    "CEL",
    "METADATA",
    "VIRTUAL_CLUSTER_NAME",
    "ROUTE_NAME",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_TLS_VERSION",
    "RESPONSE_FLAGS",
    "RESPONSE_CODE_DETAILS",
    "STREAM_ID",
    "CONNECTION_ID",
    "UPSTREAM_PROTOCOL",
    "GRPC_STATUS",
    "REQUEST_HEADERS_BYTES",
];

fn command(name: &str, sub: &[u8], max_len: Option<usize>) -> Result<Command, FormatError> {
    use AddrShape::*;
    let address = |a, shape| Command::Address(a, shape);
    let c = match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => address(Addr::DownstreamRemote, WithPort),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => address(Addr::DownstreamRemote, WithoutPort),
        "DOWNSTREAM_REMOTE_PORT" => address(Addr::DownstreamRemote, Port),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => address(Addr::DownstreamDirectRemote, WithPort),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            address(Addr::DownstreamDirectRemote, WithoutPort)
        }
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => address(Addr::DownstreamDirectRemote, Port),
        "DOWNSTREAM_LOCAL_ADDRESS" => address(Addr::DownstreamLocal, WithPort),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => address(Addr::DownstreamLocal, WithoutPort),
        "DOWNSTREAM_LOCAL_PORT" => address(Addr::DownstreamLocal, Port),
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => address(Addr::Upstream, WithPort),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => address(Addr::Upstream, WithoutPort),
        "UPSTREAM_REMOTE_PORT" => address(Addr::Upstream, Port),
        // The cluster's `alt_stat_name` when it has one (Istio's `outbound|80||h;`).
        "UPSTREAM_CLUSTER" => Command::UpstreamCluster,
        "UPSTREAM_CLUSTER_RAW" => Command::UpstreamClusterRaw,
        "PROTOCOL" => Command::Protocol,
        "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
        "HOSTNAME" => Command::Hostname(hostname().into()),
        "DOWNSTREAM_PEER_URI_SAN" => Command::Peer(Peer::UriSan),
        "DOWNSTREAM_PEER_DNS_SAN" => Command::Peer(Peer::DnsSan),
        "DOWNSTREAM_PEER_SUBJECT" => Command::Peer(Peer::Subject),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Command::Peer(Peer::Fingerprint256),
        "START_TIME" => {
            check(Syntax::ParamsOptional, name, sub, max_len)?;
            let f = std::str::from_utf8(sub)
                .map_err(|_| FormatError(format!("{name}: format is not UTF-8")))?;
            return Ok(Command::StartTime(
                (!f.is_empty()).then(|| f.to_string().into_boxed_str()),
            ));
        }
        "REQ" | "RESP" => {
            check(Syntax::ParamsRequiredLengthAllowed, name, sub, max_len)?;
            let side = if name == "REQ" {
                Side::Request
            } else {
                Side::Response
            };
            let (main, alt) = header_keys(sub)?;
            return Ok(Command::Header {
                side,
                main,
                alt,
                max_len,
            });
        }
        n if NOT_RENDERED.contains(&n) => {
            return Err(FormatError(format!(
                "%{n}% is a valid Envoy command that meshgate does not render in headers"
            )));
        }
        n => {
            return Err(FormatError(format!(
                "Not supported field in StreamInfo: {n}"
            )));
        }
    };
    check(Syntax::CommandOnly, name, sub, max_len)?;
    Ok(c)
}

/// `main?alt` of `%REQ()%`: at most one alternative, valid header names.
fn header_keys(sub: &[u8]) -> Result<(HeaderKey, Option<HeaderKey>), FormatError> {
    let text = String::from_utf8_lossy(sub);
    let mut it = sub.split(|&b| b == b'?');
    let main = it.next().unwrap_or_default();
    let alt = it.next();
    if it.next().is_some() {
        return Err(FormatError(format!(
            "More than 1 alternative header specified in token: {text}"
        )));
    }
    let key = |raw: &[u8]| -> Result<HeaderKey, FormatError> {
        let lower = raw.to_ascii_lowercase();
        Ok(match lower.as_slice() {
            b":method" => HeaderKey::Method,
            b":path" => HeaderKey::Path,
            // Envoy's header map answers `host` with `:authority`.
            b":authority" | b"host" => HeaderKey::Authority,
            b":scheme" => HeaderKey::Scheme,
            b":status" => HeaderKey::Status,
            _ => HeaderKey::Name(HeaderName::from_bytes(&lower).map_err(|_| {
                FormatError(
                    "Invalid header configuration. Format string contains invalid characters."
                        .to_string(),
                )
            })?),
        })
    };
    Ok((key(main)?, alt.map(key).transpose()?))
}

fn hostname() -> Vec<u8> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer outlives the call and its length is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Vec::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf[..end].to_vec()
}

fn render_command(
    c: &Command,
    cx: &FormatContext<'_>,
    own: &HeaderMap,
    response: bool,
    out: &mut Vec<u8>,
) {
    match c {
        Command::Address(which, shape) => {
            let addr = match which {
                Addr::DownstreamRemote => Some(cx.remote),
                Addr::DownstreamDirectRemote => Some(cx.direct),
                Addr::DownstreamLocal => Some(cx.local),
                Addr::Upstream => cx.upstream,
            };
            if let Some(a) = addr {
                write_addr(a, *shape, out);
            }
        }
        Command::UpstreamCluster => {
            if let Some(c) = cx.cluster_observability_name.or(cx.cluster) {
                out.extend_from_slice(c.as_bytes());
            }
        }
        Command::UpstreamClusterRaw => {
            if let Some(c) = cx.cluster {
                out.extend_from_slice(c.as_bytes());
            }
        }
        Command::Protocol => out.extend_from_slice(match cx.version {
            Version::HTTP_09 => b"HTTP/0.9",
            Version::HTTP_10 => b"HTTP/1.0",
            Version::HTTP_2 => b"HTTP/2",
            Version::HTTP_3 => b"HTTP/3",
            _ => b"HTTP/1.1",
        }),
        Command::RequestedServerName => {
            if let Some(sni) = cx.tls.and_then(|t| t.server_name.as_deref()) {
                out.extend_from_slice(sni.as_bytes());
            }
        }
        Command::Hostname(h) => out.extend_from_slice(h),
        Command::StartTime(f) => {
            let now = SystemTime::now();
            let start = now
                .checked_sub(cx.started.elapsed())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut s = String::new();
            match f {
                None => crate::proxy::access_log::rfc3339(start, &mut s),
                Some(f) => strftime(f, start, &mut s),
            }
            out.extend_from_slice(s.as_bytes());
        }
        Command::Header {
            side,
            main,
            alt,
            max_len,
        } => {
            let (headers, line, status) = match (side, response) {
                (Side::Request, false) => (Some(own), cx.line, None),
                (Side::Request, true) => match cx.request {
                    Some((h, l)) => (Some(h), Some(l), None),
                    None => (None, None, None),
                },
                (Side::Response, true) => (Some(own), None, cx.status),
                // A request has no response yet.
                (Side::Response, false) => (None, None, None),
            };
            // Writes the key's value; false when the request or response lacks it.
            let write = |k: &HeaderKey, out: &mut Vec<u8>| -> bool {
                let v: &[u8] = match k {
                    HeaderKey::Name(n) => match headers.and_then(|h| h.get(n)) {
                        Some(v) => v.as_bytes(),
                        None => return false,
                    },
                    HeaderKey::Status => {
                        let Some(s) = status else { return false };
                        let _ = write!(ByteWriter(out), "{s}");
                        return true;
                    }
                    HeaderKey::Scheme => {
                        let Some(l) = line else { return false };
                        let none = http::HeaderMap::new();
                        let scheme = crate::proxy::route::matcher::request_scheme(
                            l.scheme,
                            headers.unwrap_or(&none),
                            l.https,
                        );
                        out.extend_from_slice(&scheme);
                        return true;
                    }
                    _ => {
                        let Some(l) = line else { return false };
                        match k {
                            HeaderKey::Method => l.method.as_str().as_bytes(),
                            HeaderKey::Path => l.path.as_bytes(),
                            _ => l.authority,
                        }
                    }
                };
                out.extend_from_slice(v);
                true
            };
            let start = out.len();
            if !write(main, out)
                && let Some(a) = alt
            {
                write(a, out);
            }
            if let Some(m) = max_len {
                out.truncate(start + (*m).min(out.len() - start));
            }
        }
        Command::Peer(which) => {
            let Some(p) = cx.tls.and_then(|t| t.peer.as_ref()) else {
                return;
            };
            match which {
                Peer::UriSan => join(&p.uri_sans, out),
                Peer::DnsSan => join(&p.dns_sans, out),
                Peer::Subject => out.extend_from_slice(p.subject.as_bytes()),
                Peer::Fingerprint256 => out.extend_from_slice(p.sha256_hex.as_bytes()),
            }
        }
    }
}

/// `fmt::Write` onto bytes.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn join(items: &[String], out: &mut Vec<u8>) {
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s.as_bytes());
    }
}

fn write_addr(a: SocketAddr, shape: AddrShape, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let ip = a.ip().to_canonical();
    let _ = match (shape, ip) {
        (AddrShape::Port, _) => write!(out, "{}", a.port()),
        (AddrShape::WithoutPort, ip) => write!(out, "{ip}"),
        (AddrShape::WithPort, std::net::IpAddr::V6(v6)) => write!(out, "[{v6}]:{}", a.port()),
        (AddrShape::WithPort, ip) => write!(out, "{ip}:{}", a.port()),
    };
}

/// `strftime` in UTC with Envoy's extensions: `%s` (epoch seconds), `%f`/`%1f`..`%9f`
/// (fraction digits, 9 by default), `%E3S`-style seconds with N fraction digits and
/// `%E*S` (all of them).
fn strftime(f: &str, t: SystemTime, out: &mut String) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let nanos = d.subsec_nanos();
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return;
    };
    let frac = |digits: usize, out: &mut String| {
        let s = format!("{nanos:09}");
        out.push_str(&s[..digits.min(9)]);
    };
    let b = f.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' || i + 1 >= b.len() {
            // Copy one UTF-8 character.
            let ch_len = f[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&f[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        let spec = b[i + 1];
        // `%Nf` and `%ENS`.
        if spec.is_ascii_digit() && b.get(i + 2) == Some(&b'f') {
            frac((spec - b'0') as usize, out);
            i += 3;
            continue;
        }
        if spec == b'E' {
            match (b.get(i + 2), b.get(i + 3)) {
                (Some(n), Some(b'S')) if n.is_ascii_digit() || *n == b'*' => {
                    let _ = write!(out, "{:02}", dt.second());
                    let digits = if *n == b'*' {
                        let s = format!("{nanos:09}");
                        s.trim_end_matches('0').len()
                    } else {
                        (n - b'0') as usize
                    };
                    if digits > 0 {
                        out.push('.');
                        frac(digits, out);
                    }
                    i += 4;
                    continue;
                }
                _ => {}
            }
        }
        let _ = match spec {
            b'Y' => write!(out, "{}", dt.year()),
            b'C' => write!(out, "{:02}", dt.year() / 100),
            b'y' => write!(out, "{:02}", dt.year() % 100),
            b'm' => write!(out, "{:02}", u8::from(dt.month())),
            b'd' => write!(out, "{:02}", dt.day()),
            b'e' => write!(out, "{:2}", dt.day()),
            b'j' => write!(out, "{:03}", dt.ordinal()),
            b'H' => write!(out, "{:02}", dt.hour()),
            b'I' => write!(out, "{:02}", (dt.hour() + 11) % 12 + 1),
            b'p' => write!(out, "{}", if dt.hour() < 12 { "AM" } else { "PM" }),
            b'M' => write!(out, "{:02}", dt.minute()),
            b'S' => write!(out, "{:02}", dt.second()),
            b's' => write!(out, "{secs}"),
            b'f' => {
                frac(9, out);
                Ok(())
            }
            b'z' => write!(out, "+0000"),
            b'Z' => write!(out, "UTC"),
            b'a' => write!(out, "{}", &weekday(dt)[..3]),
            b'A' => write!(out, "{}", weekday(dt)),
            b'b' | b'h' => write!(out, "{}", &month_name(dt)[..3]),
            b'B' => write!(out, "{}", month_name(dt)),
            b'u' => write!(out, "{}", dt.weekday().number_from_monday()),
            b'w' => write!(out, "{}", dt.weekday().number_days_from_sunday()),
            b'F' => write!(
                out,
                "{}-{:02}-{:02}",
                dt.year(),
                u8::from(dt.month()),
                dt.day()
            ),
            b'T' => write!(
                out,
                "{:02}:{:02}:{:02}",
                dt.hour(),
                dt.minute(),
                dt.second()
            ),
            b'R' => write!(out, "{:02}:{:02}", dt.hour(), dt.minute()),
            b'D' => write!(
                out,
                "{:02}/{:02}/{:02}",
                u8::from(dt.month()),
                dt.day(),
                dt.year() % 100
            ),
            b't' => write!(out, "\t"),
            b'%' => write!(out, "%"),
            other => write!(out, "%{}", other as char),
        };
        i += 2;
    }
}

fn weekday(dt: time::OffsetDateTime) -> &'static str {
    use time::Weekday::*;
    match dt.weekday() {
        Monday => "Monday",
        Tuesday => "Tuesday",
        Wednesday => "Wednesday",
        Thursday => "Thursday",
        Friday => "Friday",
        Saturday => "Saturday",
        Sunday => "Sunday",
    }
}

fn month_name(dt: time::OffsetDateTime) -> &'static str {
    const NAMES: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    NAMES[(u8::from(dt.month()) as usize).saturating_sub(1) % 12]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> FormatContext<'static> {
        FormatContext {
            remote: "[::1]:40000".parse().unwrap(),
            direct: "[::1]:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            version: Version::HTTP_2,
            started: tokio::time::Instant::now(),
            cluster: Some("backend"),
            cluster_observability_name: Some("outbound|80||backend;"),
            upstream: Some("127.0.0.2:9000".parse().unwrap()),
            request: None,
            line: None,
            status: Some(503),
        }
    }

    fn render(value: &str, own: &HeaderMap, response: bool) -> Result<String, FormatError> {
        let mut literal = Vec::new();
        Ok(match Template::parse(value.as_bytes(), &mut literal)? {
            None => format!("literal:{}", String::from_utf8(literal).unwrap()),
            Some(t) => {
                let mut out = Vec::new();
                t.render(&cx(), own, response, &mut out);
                String::from_utf8(out).unwrap()
            }
        })
    }

    #[test]
    fn parses_and_renders_like_envoy() {
        let mut own = HeaderMap::new();
        own.insert("x-a", http::HeaderValue::from_static("alpha"));
        own.insert("x-b", http::HeaderValue::from_static("bravo"));
        let cases: &[(&str, bool, &str)] = &[
            ("plain", false, "literal:plain"),
            ("", false, "literal:"),
            ("100%% sure %%%%", false, "literal:100% sure %%"),
            ("%DOWNSTREAM_REMOTE_ADDRESS%", false, "[::1]:40000"),
            ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", false, "::1"),
            ("%DOWNSTREAM_REMOTE_PORT%", false, "40000"),
            ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", false, "[::1]:40000"),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", false, "127.0.0.1:8080"),
            (
                "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
                false,
                "127.0.0.1",
            ),
            ("%DOWNSTREAM_LOCAL_PORT%", false, "8080"),
            ("%UPSTREAM_HOST%", true, "127.0.0.2:9000"),
            ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", true, "127.0.0.2"),
            ("%UPSTREAM_CLUSTER%", false, "outbound|80||backend;"),
            ("%UPSTREAM_CLUSTER_RAW%", false, "backend"),
            ("%PROTOCOL%", false, "HTTP/2"),
            // No TLS: nothing.
            ("[%REQUESTED_SERVER_NAME%]", false, "[]"),
            ("[%DOWNSTREAM_PEER_URI_SAN%]", false, "[]"),
            ("%REQ(x-a)%", false, "alpha"),
            ("%REQ(X-A)%", false, "alpha"),
            ("%REQ(x-missing?x-b)%", false, "bravo"),
            ("%REQ(x-a?x-b)%", false, "alpha"),
            ("%REQ(x-a):3%", false, "alp"),
            ("%REQ(x-a):30%", false, "alpha"),
            ("%REQ(x-missing)%", false, ""),
            // On a request there is no response yet; on a response `own` is it.
            ("%RESP(x-a)%", false, ""),
            ("%RESP(x-a)%", true, "alpha"),
            ("%RESP(:status)%", true, "503"),
            // Response formats read the request only when it is kept.
            ("%REQ(x-a)%", true, ""),
            (
                "a%PROTOCOL%b%%c%UPSTREAM_CLUSTER%",
                false,
                "aHTTP/2b%coutbound|80||backend;",
            ),
            ("%START_TIME(%%)%", false, "%"),
            ("%START_TIME(%Y)%x", false, "YEAR"),
        ];
        for (value, response, want) in cases {
            let got = render(value, &own, *response).unwrap();
            if *want == "YEAR" {
                assert_eq!(got.len(), 5, "{value}: {got}");
                continue;
            }
            assert_eq!(&got, want, "{value}");
        }
    }

    #[test]
    fn refuses_what_envoy_refuses() {
        let own = HeaderMap::new();
        let cases: &[(&str, &str)] = &[
            (
                "100%",
                "Incorrect configuration: 100%. Couldn't find valid command at position 3",
            ),
            (
                "%DOWNSTREAM_REMOTE_ADDRESS",
                "Incorrect configuration: %DOWNSTREAM_REMOTE_ADDRESS. Couldn't find valid command at position 0",
            ),
            (
                "a %lower% b",
                "Incorrect configuration: a %lower% b. Couldn't find valid command at position 2",
            ),
            ("%NOPE%", "Not supported field in StreamInfo: NOPE"),
            (
                "%PROTOCOL(x)%",
                "PROTOCOL does not take any parameters or length",
            ),
            (
                "%PROTOCOL:3%",
                "PROTOCOL does not take any parameters or length",
            ),
            ("%REQ%", "REQ requires parameters"),
            ("%REQ()%", "REQ requires parameters"),
            (
                "%REQ(a?b?c)%",
                "More than 1 alternative header specified in token: a?b?c",
            ),
            (
                "%REQ(a b)%",
                "Invalid header configuration. Format string contains invalid characters.",
            ),
            (
                "%START_TIME:3%",
                "START_TIME does not allow length to be specified.",
            ),
            (
                "%DYNAMIC_METADATA(a:b)%",
                "%DYNAMIC_METADATA% is a valid Envoy command that meshgate does not render in headers",
            ),
        ];
        for (value, want) in cases {
            let e = render(value, &own, false).unwrap_err();
            assert_eq!(&e.0, want, "{value}");
        }
    }

    #[test]
    fn subcommand_is_the_shortest_text_the_syntax_allows() {
        assert_eq!(
            command_at(b"%START_TIME(%s.%3f)%", 0),
            Some(("START_TIME", &b"%s.%3f"[..], None, 20))
        );
        assert_eq!(
            command_at(b"%REQ(a)b)%", 0),
            Some(("REQ", &b"a)b"[..], None, 10))
        );
        assert_eq!(
            command_at(b"%REQ(a):12%x", 0),
            Some(("REQ", &b"a"[..], Some(12), 11))
        );
        assert_eq!(command_at(b"%REQ(a)", 0), None);
        assert_eq!(command_at(b"%REQ(a):%", 0), None);
    }

    #[test]
    fn start_time_formats_in_utc_with_envoy_extensions() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_527_590_590, 528_123_456);
        let cases = [
            ("%s.%3f", "1527590590.528"),
            ("%s.%6f", "1527590590.528123"),
            ("%f", "528123456"),
            ("%Y-%m-%dT%H:%M:%E3SZ", "2018-05-29T10:43:10.528Z"),
            ("%Y/%m/%dT%H:%M:%S%z", "2018/05/29T10:43:10+0000"),
            ("%a %b %e %T %Y", "Tue May 29 10:43:10 2018"),
            ("%F %j %%", "2018-05-29 149 %"),
        ];
        for (f, want) in cases {
            let mut s = String::new();
            strftime(f, t, &mut s);
            assert_eq!(s, want, "{f}");
        }
    }
}
