//! The access log: one line per request, JSON with Istio's field names (Envoy's default
//! fields and response flags) or Envoy's default text format. Lines are formatted into a
//! reused buffer and written in batches, never one syscall per request.
use crate::proxy::http::local_reply::Flags;
use crate::proxy::http::router::ConnCtx;
use http::{HeaderValue, Method, Request, Version};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Which access log to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogMode {
    Off,
    #[default]
    Json,
    Text,
}

impl std::str::FromStr for AccessLogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AccessLogMode::Off),
            "json" => Ok(AccessLogMode::Json),
            "text" => Ok(AccessLogMode::Text),
            other => Err(format!(
                "unknown access log mode {other:?} (off, json, text)"
            )),
        }
    }
}

/// What is known about one request by the time it ends.
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub start_time: SystemTime,
    pub method: Method,
    /// The request target as received.
    pub path: http::Uri,
    pub version: Version,
    pub authority: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub xff: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub status: u16,
    pub flags: Flags,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_service_time: Option<Duration>,
    pub cluster: Option<Arc<str>>,
    /// The cluster's `alt_stat_name` when it has one (`%UPSTREAM_CLUSTER%`).
    pub cluster_observability_name: Option<Arc<str>>,
    pub route_name: Option<Arc<str>>,
    pub downstream_remote: SocketAddr,
    /// The TCP peer (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`): a PROXY protocol load
    /// balancer, where `downstream_remote` is the client it names.
    pub downstream_direct: SocketAddr,
    pub downstream_local: SocketAddr,
    /// `content-type: application/grpc*` (Istio's request_protocol label).
    pub grpc: bool,
    /// The connection's TLS session (SNI, client certificate), when logging.
    pub tls: Option<Arc<crate::proxy::connection::ConnTls>>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when meshgate answered itself (None:
    /// `via_upstream` if an upstream answered).
    pub details: Option<&'static str>,
    /// Details a filter composed for its local answer (e.g. RBAC's
    /// `rbac_access_denied_matched_policy[ID]`); preferred over `details`.
    pub filter_details: Option<Box<str>>,
    /// The head was refused before it made a request: method and path are unknown
    /// (`-`, as Envoy logs them).
    pub refused_head: bool,
    /// The request body was handed on towards an upstream (not left unread by a local
    /// answer).
    pub body_forwarded: bool,
    /// The connection manager's span, when it traces.
    pub span: Option<Box<crate::proxy::trace::ActiveSpan>>,
}

impl RequestLog {
    pub fn start<B>(req: &Request<B>, cx: &ConnCtx) -> RequestLog {
        let h = req.headers();
        let logging = cx.shared.access_log.mode != AccessLogMode::Off;
        RequestLog {
            start: Instant::now(),
            start_time: if logging {
                SystemTime::now()
            } else {
                SystemTime::UNIX_EPOCH
            },
            method: req.method().clone(),
            path: req.uri().clone(),
            version: req.version(),
            authority: if logging {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .or_else(|| h.get(http::header::HOST).cloned())
            } else {
                None
            },
            user_agent: if logging {
                h.get(http::header::USER_AGENT).cloned()
            } else {
                None
            },
            xff: if logging {
                h.get("x-forwarded-for").cloned()
            } else {
                None
            },
            request_id: None,
            status: 0,
            flags: Flags::default(),
            bytes_received: h
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            bytes_sent: 0,
            upstream_host: None,
            upstream_service_time: None,
            cluster: None,
            cluster_observability_name: None,
            route_name: None,
            downstream_remote: cx.peer.remote,
            downstream_direct: cx.peer.direct,
            downstream_local: cx.peer.local,
            tls: if logging { cx.tls.clone() } else { None },
            grpc: h
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            details: None,
            filter_details: None,
            refused_head: false,
            body_forwarded: false,
            span: None,
        }
    }

    /// The log of an HTTP/1 head refused by the codec checks before it became a request.
    pub fn for_refused_head(
        cx: &ConnCtx,
        status: u16,
        flag: u32,
        details: &'static str,
    ) -> RequestLog {
        let logging = cx.shared.access_log.mode != AccessLogMode::Off;
        let mut flags = Flags::default();
        flags.set(flag);
        RequestLog {
            start: Instant::now(),
            start_time: if logging {
                SystemTime::now()
            } else {
                SystemTime::UNIX_EPOCH
            },
            method: Method::GET,
            path: http::Uri::from_static("/"),
            version: Version::HTTP_11,
            authority: None,
            user_agent: None,
            xff: None,
            request_id: None,
            status,
            flags,
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_service_time: None,
            cluster: None,
            cluster_observability_name: None,
            route_name: None,
            downstream_remote: cx.peer.remote,
            downstream_direct: cx.peer.direct,
            downstream_local: cx.peer.local,
            tls: if logging { cx.tls.clone() } else { None },
            grpc: false,
            details: Some(details),
            filter_details: None,
            refused_head: true,
            body_forwarded: false,
            span: None,
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`.
    pub fn response_code_details(&self) -> Option<&str> {
        if let Some(d) = &self.filter_details {
            return Some(d);
        }
        match self.details {
            Some(d) => Some(d),
            None if self.upstream_service_time.is_some() => Some("via_upstream"),
            None => None,
        }
    }
}

/// The access log sink: a shared buffer flushed by a background thread.
pub struct AccessLog {
    pub mode: AccessLogMode,
    buf: Mutex<Vec<u8>>,
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
}

impl AccessLog {
    pub fn new(mode: AccessLogMode) -> Arc<AccessLog> {
        let log = Arc::new(AccessLog {
            mode,
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
        });
        if mode != AccessLogMode::Off {
            let weak = Arc::downgrade(&log);
            std::thread::Builder::new()
                .name("meshgate-accesslog".into())
                .spawn(move || {
                    while let Some(log) = weak.upgrade() {
                        log.flush();
                        drop(log);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .ok();
        }
        log
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let data = {
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            if b.is_empty() {
                return;
            }
            std::mem::replace(&mut *b, Vec::with_capacity(64 * 1024))
        };
        let out = std::io::stdout();
        let mut out = out.lock();
        let _ = out.write_all(&data);
        let _ = out.flush();
    }

    pub fn write(&self, r: &RequestLog) {
        if self.mode == AccessLogMode::Off {
            return;
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            match self.mode {
                AccessLogMode::Json => format_json(&mut line, r),
                AccessLogMode::Text => format_text(&mut line, r),
                AccessLogMode::Off => {}
            }
            let big = {
                let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                b.extend_from_slice(line.as_bytes());
                b.len() > 256 * 1024
            };
            if big {
                self.flush();
            }
        });
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

fn json_str(out: &mut String, v: Option<&[u8]>) {
    match v {
        None => out.push_str("null"),
        Some(b) => {
            out.push('"');
            for &c in b {
                match c {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    0x20..=0x7e => out.push(c as char),
                    _ => {
                        let _ = write!(out, "\\u{:04x}", c);
                    }
                }
            }
            out.push('"');
        }
    }
}

/// RFC 3339 UTC with milliseconds, like Envoy's %START_TIME%.
pub fn rfc3339(t: SystemTime, out: &mut String) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    );
}

fn format_json(out: &mut String, r: &RequestLog) {
    out.push_str("{\"start_time\":\"");
    rfc3339(r.start_time, out);
    out.push_str("\",\"method\":");
    if r.refused_head {
        out.push_str("null,\"path\":null");
    } else {
        json_str(out, Some(r.method.as_str().as_bytes()));
        out.push_str(",\"path\":");
        json_str(
            out,
            Some(
                r.path
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .as_bytes(),
            ),
        );
    }
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"response_code\":{},\"response_flags\":\"",
        protocol(r.version),
        r.status
    );
    r.flags.write(out);
    out.push_str("\",\"response_code_details\":");
    json_str(out, r.response_code_details().map(str::as_bytes));
    let _ = write!(
        out,
        ",\"bytes_received\":{},\"bytes_sent\":{},\"duration\":{},\"upstream_service_time\":",
        r.bytes_received,
        r.bytes_sent,
        r.start.elapsed().as_millis()
    );
    match r.upstream_service_time {
        Some(t) => {
            let _ = write!(out, "\"{}\"", t.as_millis());
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"x_forwarded_for\":");
    json_str(out, r.xff.as_ref().map(|v| v.as_bytes()));
    out.push_str(",\"user_agent\":");
    json_str(out, r.user_agent.as_ref().map(|v| v.as_bytes()));
    out.push_str(",\"request_id\":");
    json_str(out, r.request_id.as_ref().map(|v| v.as_bytes()));
    out.push_str(",\"authority\":");
    json_str(out, r.authority.as_ref().map(|v| v.as_bytes()));
    out.push_str(",\"upstream_host\":");
    match r.upstream_host {
        Some(h) => {
            let _ = write!(out, "\"{h}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"upstream_cluster\":");
    json_str(out, r.cluster.as_deref().map(str::as_bytes));
    let _ = write!(
        out,
        ",\"downstream_local_address\":\"{}\",\"downstream_remote_address\":\"{}\",\"downstream_direct_remote_address\":\"{}\",\"route_name\":",
        r.downstream_local, r.downstream_remote, r.downstream_direct
    );
    json_str(out, r.route_name.as_deref().map(str::as_bytes));
    // Istio's default JSON log has the SNI; the client certificate's first URI SAN is
    // Envoy's %DOWNSTREAM_PEER_URI_SAN%.
    let tls = r.tls.as_deref();
    out.push_str(",\"requested_server_name\":");
    json_str(
        out,
        tls.and_then(|t| t.server_name.as_deref())
            .map(str::as_bytes),
    );
    out.push_str(",\"downstream_peer_uri_san\":");
    json_str(
        out,
        tls.and_then(|t| t.peer.as_ref())
            .and_then(|p| p.uri_sans.first())
            .map(|u| u.as_bytes()),
    );
    out.push_str("}\n");
}

fn dash(out: &mut String, v: Option<&HeaderValue>) {
    match v.and_then(|v| v.to_str().ok()) {
        Some(s) => out.push_str(s),
        None => out.push('-'),
    }
}

/// Envoy's default format:
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ...`
fn format_text(out: &mut String, r: &RequestLog) {
    out.push('[');
    rfc3339(r.start_time, out);
    if r.refused_head {
        let _ = write!(out, "] \"- - {}\" {} ", protocol(r.version), r.status);
    } else {
        let _ = write!(
            out,
            "] \"{} {} {}\" {} ",
            r.method,
            r.path.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            protocol(r.version),
            r.status
        );
    }
    r.flags.write(out);
    let _ = write!(
        out,
        " {} {} {} ",
        r.bytes_received,
        r.bytes_sent,
        r.start.elapsed().as_millis()
    );
    match r.upstream_service_time {
        Some(t) => {
            let _ = write!(out, "{}", t.as_millis());
        }
        None => out.push('-'),
    }
    out.push_str(" \"");
    dash(out, r.xff.as_ref());
    out.push_str("\" \"");
    dash(out, r.user_agent.as_ref());
    out.push_str("\" \"");
    dash(out, r.request_id.as_ref());
    out.push_str("\" \"");
    dash(out, r.authority.as_ref());
    out.push_str("\" \"");
    match r.upstream_host {
        Some(h) => {
            let _ = write!(out, "{h}");
        }
        None => out.push('-'),
    }
    out.push_str("\"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let mut s = String::new();
        rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            &mut s,
        );
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        s.clear();
        rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400),
            &mut s,
        );
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }
}
