//! Envoy's substitution formatters in header values (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x-foo?x-bar):10%`, ...). A value is parsed once when the route configuration is
//! compiled; values without a command stay plain header values, so only formatted ones
//! cost anything per request. A command whose value is not available renders as nothing,
//! and a header whose whole value renders empty is not added (unless `keep_empty_value`).
use crate::proxy::connection::ConnTls;
use crate::proxy::http::request::Peer;
use http::{HeaderMap, HeaderValue, Version};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// Which headers a value is added to: some commands only make sense on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// A parsed header value: literal text and commands.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Command(Command),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    DownstreamRemote,
    DownstreamDirectRemote,
    DownstreamLocal,
    UpstreamRemote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrForm {
    WithPort,
    WithoutPort,
    Port,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Address(Addr, AddrForm),
    Protocol,
    RequestedServerName,
    Hostname,
    StartTime,
    PeerUriSan,
    PeerSubject,
    PeerFingerprint256,
    /// `REQ` / `RESP`: the first header present, cut to `max_len` characters.
    Header {
        names: Vec<http::HeaderName>,
        max_len: Option<usize>,
    },
}

/// What a formatter reads for one request.
pub struct FormatContext<'a> {
    pub peer: &'a Peer,
    pub tls: Option<&'a ConnTls>,
    pub version: Version,
    pub upstream: Option<SocketAddr>,
}

/// A compiled header value.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// No command in it (`%%` already unescaped): used as it is.
    Literal(String),
    Formatted(Template),
}

/// Why a header value does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl Template {
    /// Parses a header value for headers on `side`.
    pub fn parse(raw: &str, side: Side) -> Result<Parsed, FormatError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let end = command_end(rest).ok_or_else(|| {
                FormatError(format!(
                    "Invalid header configuration. Un-terminated variable expression '{rest}'"
                ))
            })?;
            let cmd = parse_command(&rest[..end], side)?;
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(Part::Command(cmd));
            rest = &rest[end + 1..];
        }
        lit.push_str(rest);
        if parts.is_empty() {
            return Ok(Parsed::Literal(lit));
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Parsed::Formatted(Template { parts }))
    }

    /// The value for one request; `headers` are the request's (request side) or the
    /// response's (response side). `None` when it is not a valid header value.
    pub fn render(&self, cx: &FormatContext<'_>, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Command(c) => c.render(cx, headers, &mut out),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// The index of the `%` closing a command, skipping over a parenthesised argument.
fn command_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_command(s: &str, side: Side) -> Result<Command, FormatError> {
    let (name, arg, max_len) = match s.find('(') {
        None => (s, None, None),
        Some(open) => {
            let close = s
                .rfind(')')
                .filter(|c| *c > open)
                .ok_or_else(|| FormatError(format!("Invalid header configuration: {s}")))?;
            let max_len = match &s[close + 1..] {
                "" => None,
                tail => Some(
                    tail.strip_prefix(':')
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| FormatError(format!("Invalid header configuration: {s}")))?,
                ),
            };
            (&s[..open], Some(&s[open + 1..close]), max_len)
        }
    };
    let plain = |c: Command| {
        if arg.is_some() || max_len.is_some() {
            Err(FormatError(format!("{name} takes no argument")))
        } else {
            Ok(c)
        }
    };
    use AddrForm::*;
    let addr = |a: Addr, f: AddrForm| plain(Command::Address(a, f));
    match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => addr(Addr::DownstreamRemote, WithPort),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => addr(Addr::DownstreamRemote, WithoutPort),
        "DOWNSTREAM_REMOTE_PORT" => addr(Addr::DownstreamRemote, Port),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => addr(Addr::DownstreamDirectRemote, WithPort),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            addr(Addr::DownstreamDirectRemote, WithoutPort)
        }
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => addr(Addr::DownstreamDirectRemote, Port),
        "DOWNSTREAM_LOCAL_ADDRESS" => addr(Addr::DownstreamLocal, WithPort),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => addr(Addr::DownstreamLocal, WithoutPort),
        "DOWNSTREAM_LOCAL_PORT" => addr(Addr::DownstreamLocal, Port),
        "UPSTREAM_REMOTE_ADDRESS" => addr(Addr::UpstreamRemote, WithPort),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => addr(Addr::UpstreamRemote, WithoutPort),
        "UPSTREAM_REMOTE_PORT" => addr(Addr::UpstreamRemote, Port),
        "PROTOCOL" => plain(Command::Protocol),
        "REQUESTED_SERVER_NAME" => plain(Command::RequestedServerName),
        "HOSTNAME" => plain(Command::Hostname),
        "START_TIME" if arg.is_none_or(str::is_empty) && max_len.is_none() => {
            Ok(Command::StartTime)
        }
        "START_TIME" => Err(FormatError(
            "START_TIME with a format is not supported by meshgate".into(),
        )),
        "DOWNSTREAM_PEER_URI_SAN" => plain(Command::PeerUriSan),
        "DOWNSTREAM_PEER_SUBJECT" => plain(Command::PeerSubject),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => plain(Command::PeerFingerprint256),
        "REQ" | "RESP" => {
            let wanted = if name == "REQ" {
                Side::Request
            } else {
                Side::Response
            };
            if side != wanted {
                return Err(FormatError(format!(
                    "{name}() in {} headers is not supported by meshgate",
                    match side {
                        Side::Request => "request",
                        Side::Response => "response",
                    }
                )));
            }
            let arg = arg.unwrap_or("");
            let names = arg
                .split('?')
                .map(|n| {
                    http::HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
                        .map_err(|_| FormatError(format!("{name}({arg}): invalid header name")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() || names.len() > 2 {
                return Err(FormatError(format!(
                    "{name}({arg}): one header name, or two separated by '?'"
                )));
            }
            Ok(Command::Header { names, max_len })
        }
        // Envoy has more commands (metadata, filter state, ...) and refuses unknown
        // ones; both are refused here.
        _ => Err(FormatError(format!(
            "%{name}%: command not supported by meshgate"
        ))),
    }
}

impl Command {
    fn render(&self, cx: &FormatContext<'_>, headers: &HeaderMap, out: &mut String) {
        match self {
            Command::Address(a, form) => {
                let addr = match a {
                    // Every client is the direct peer: meshgate trusts no X-Forwarded-For
                    // hops (xff_num_trusted_hops 0).
                    Addr::DownstreamRemote | Addr::DownstreamDirectRemote => Some(cx.peer.remote),
                    Addr::DownstreamLocal => Some(cx.peer.local),
                    Addr::UpstreamRemote => cx.upstream,
                };
                if let Some(addr) = addr {
                    let _ = match form {
                        AddrForm::WithPort => write!(out, "{addr}"),
                        AddrForm::WithoutPort => write!(out, "{}", addr.ip()),
                        AddrForm::Port => write!(out, "{}", addr.port()),
                    };
                }
            }
            Command::Protocol => out.push_str(match cx.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            }),
            Command::RequestedServerName => {
                if let Some(sni) = cx.tls.and_then(|t| t.server_name.as_deref()) {
                    out.push_str(sni);
                }
            }
            Command::Hostname => out.push_str(hostname()),
            Command::StartTime => {
                crate::proxy::access_log::rfc3339(std::time::SystemTime::now(), out)
            }
            Command::PeerUriSan => {
                if let Some(p) = cx.tls.and_then(|t| t.peer.as_ref()) {
                    out.push_str(&p.uri_sans.join(","));
                }
            }
            Command::PeerSubject => {
                if let Some(p) = cx.tls.and_then(|t| t.peer.as_ref()) {
                    out.push_str(&p.subject);
                }
            }
            Command::PeerFingerprint256 => {
                if let Some(p) = cx.tls.and_then(|t| t.peer.as_ref()) {
                    out.push_str(&p.sha256_hex);
                }
            }
            Command::Header { names, max_len } => {
                if let Some(v) = names
                    .iter()
                    .find_map(|n| headers.get(n))
                    .and_then(|v| v.to_str().ok())
                {
                    match max_len {
                        Some(n) => out.extend(v.chars().take(*n)),
                        None => out.push_str(v),
                    }
                }
            }
        }
    }
}

/// This host's name, read once.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // or truncates, and the last byte is left as 0.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            remote: "10.1.2.3:5555".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            remote_ip: HeaderValue::from_static("10.1.2.3"),
            xff_ip: HeaderValue::from_static("10.1.2.3"),
            https: false,
        }
    }

    #[test]
    fn parse_and_render() {
        let p = peer();
        let cx = FormatContext {
            peer: &p,
            tls: None,
            version: Version::HTTP_11,
            upstream: Some("127.0.0.9:9000".parse().unwrap()),
        };
        let mut h = HeaderMap::new();
        h.insert("x-b", HeaderValue::from_static("bee-value"));
        for (raw, side, want) in [
            (
                "%DOWNSTREAM_REMOTE_ADDRESS%",
                Side::Request,
                "10.1.2.3:5555",
            ),
            (
                "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;",
                Side::Request,
                "ip=10.1.2.3;",
            ),
            ("%DOWNSTREAM_REMOTE_PORT%", Side::Request, "5555"),
            (
                "%DOWNSTREAM_LOCAL_ADDRESS%",
                Side::Request,
                "127.0.0.1:8080",
            ),
            ("%DOWNSTREAM_LOCAL_PORT%", Side::Request, "8080"),
            (
                "%UPSTREAM_REMOTE_ADDRESS%",
                Side::Response,
                "127.0.0.9:9000",
            ),
            ("%PROTOCOL%", Side::Request, "HTTP/1.1"),
            ("%REQUESTED_SERVER_NAME%", Side::Request, ""),
            ("%REQ(x-a?x-b)%", Side::Request, "bee-value"),
            ("%REQ(X-B):3%", Side::Request, "bee"),
            ("%RESP(x-b)%", Side::Response, "bee-value"),
            ("%REQ(x-missing)%", Side::Request, ""),
            ("50%% of %PROTOCOL%", Side::Request, "50% of HTTP/1.1"),
        ] {
            let Parsed::Formatted(t) = Template::parse(raw, side).unwrap() else {
                panic!("{raw}: no command found")
            };
            let got = t.render(&cx, &h).unwrap();
            assert_eq!(got, want, "{raw}");
        }
    }

    #[test]
    fn literals_stay_literal() {
        assert_eq!(
            Template::parse("100%% sure", Side::Request).unwrap(),
            Parsed::Literal("100% sure".to_string())
        );
        assert_eq!(
            Template::parse("plain", Side::Response).unwrap(),
            Parsed::Literal("plain".to_string())
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (raw, side) in [
            ("50%", Side::Request),
            ("%NOT_A_COMMAND%", Side::Request),
            ("%PROTOCOL(x)%", Side::Request),
            ("%REQ(x-a)%", Side::Response),
            ("%RESP(x-a)%", Side::Request),
            ("%REQ(a?b?c)%", Side::Request),
            ("%REQ(x):abc%", Side::Request),
            ("%START_TIME(%s)%", Side::Request),
        ] {
            assert!(Template::parse(raw, side).is_err(), "{raw}");
        }
    }
}
