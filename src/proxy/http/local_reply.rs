//! Answers meshgate gives itself (no route, no healthy upstream, overflow, timeouts,
//! faults...), with Envoy's status codes, headers and bodies, and the response flag and
//! response code details for the access log.
use crate::proxy::http::body::ResponseBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Envoy's response flags (the short codes of `%RESPONSE_FLAGS%`), as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u32);

impl Flags {
    pub const NR: u32 = 1;
    pub const UH: u32 = 1 << 1;
    pub const UF: u32 = 1 << 2;
    pub const UO: u32 = 1 << 3;
    pub const UT: u32 = 1 << 4;
    pub const URX: u32 = 1 << 5;
    pub const UC: u32 = 1 << 6;
    pub const UR: u32 = 1 << 7;
    pub const DI: u32 = 1 << 8;
    pub const FI: u32 = 1 << 9;
    pub const NC: u32 = 1 << 10;
    pub const DC: u32 = 1 << 11;
    pub const LR: u32 = 1 << 12;
    pub const UPE: u32 = 1 << 13;
    pub const SI: u32 = 1 << 14;
    pub const DPE: u32 = 1 << 15;
    /// Rate limited (a rate-limit filter answered 429).
    pub const RL: u32 = 1 << 16;
    /// The rate-limit service failed and the filter fails closed.
    pub const RLSE: u32 = 1 << 17;
    /// Denied by the external authorization service (or its failure).
    pub const UAEX: u32 = 1 << 18;

    const NAMES: [(u32, &'static str); 19] = [
        (Self::NR, "NR"),
        (Self::UH, "UH"),
        (Self::UF, "UF"),
        (Self::UO, "UO"),
        (Self::UT, "UT"),
        (Self::URX, "URX"),
        (Self::UC, "UC"),
        (Self::UR, "UR"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::NC, "NC"),
        (Self::DC, "DC"),
        (Self::LR, "LR"),
        (Self::UPE, "UPE"),
        (Self::SI, "SI"),
        (Self::DPE, "DPE"),
        (Self::RL, "RL"),
        (Self::RLSE, "RLSE"),
        (Self::UAEX, "UAEX"),
    ];

    pub fn set(&mut self, f: u32) {
        self.0 |= f;
    }

    pub fn has(self, f: u32) -> bool {
        self.0 & f != 0
    }

    /// Writes the flags the way Envoy prints them (`UF,URX`, or `-` when none).
    pub fn write(self, out: &mut String) {
        if self.0 == 0 {
            out.push('-');
            return;
        }
        let mut first = true;
        for (bit, name) in Self::NAMES {
            if self.0 & bit != 0 {
                if !first {
                    out.push(',');
                }
                out.push_str(name);
                first = false;
            }
        }
    }

    pub fn to_string_lossy(self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

/// A local answer: status, Envoy's body text, flag and reason.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply {
    pub status: StatusCode,
    /// Envoy's body (empty for some answers, e.g. no route).
    pub body: &'static str,
    pub flag: u32,
    /// Short machine-readable reason: Envoy's response code details, for the access log.
    pub reason: &'static str,
}

impl LocalReply {
    pub const NO_ROUTE: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        body: "",
        flag: Flags::NR,
        reason: "route_not_found",
    };
    pub const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "no healthy upstream",
        flag: Flags::UH,
        reason: "no_healthy_upstream",
    };
    pub const CONNECT_FAILURE: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        flag: Flags::UF,
        reason: "upstream_reset_before_response_started{remote_connection_failure}",
    };
    pub const CONNECT_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
        flag: Flags::UF,
        reason: "upstream_reset_before_response_started{connection_timeout}",
    };
    pub const OVERFLOW: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        flag: Flags::UO,
        reason: "upstream_reset_before_response_started{overflow}",
    };
    pub const RESET: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        flag: Flags::UC,
        reason: "upstream_reset_before_response_started{connection_termination}",
    };
    pub const PROTOCOL_ERROR: LocalReply = LocalReply {
        status: StatusCode::BAD_GATEWAY,
        body: "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
        flag: Flags::UPE,
        reason: "upstream_reset_before_response_started{protocol_error}",
    };
    pub const TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        body: "upstream request timeout",
        flag: Flags::UT,
        reason: "upstream_response_timeout",
    };
    pub const CLUSTER_NOT_FOUND: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "",
        flag: Flags::NC,
        reason: "cluster_not_found",
    };
    pub const FAULT_ABORT: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "fault filter abort",
        flag: Flags::FI,
        reason: "fault_filter_abort",
    };
    pub const HTTP10: LocalReply = LocalReply {
        status: StatusCode::UPGRADE_REQUIRED,
        body: "Upgrade Required",
        flag: Flags::DPE,
        reason: "low_version",
    };
    pub const MISSING_HOST: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: "",
        flag: Flags::DPE,
        reason: "missing_host_header",
    };
    pub const BAD_REQUEST: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: "",
        flag: Flags::DPE,
        reason: "http1.codec_error",
    };
    /// Content-Length together with Transfer-Encoding (Envoy's HTTP/1 codec answers
    /// this one with a body).
    pub const CONTENT_LENGTH_AND_CHUNKED: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: "Bad Request",
        flag: Flags::DPE,
        reason: "http1.content_length_and_chunked_not_allowed",
    };
    /// An HTTP/1 absolute-form target with a scheme other than http or https.
    pub const INVALID_SCHEME: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: "Bad Request",
        flag: Flags::DPE,
        reason: "http1.invalid_scheme",
    };
    /// An HTTP/1 absolute-form `https://` target on a plaintext connection: it would make
    /// `:scheme` claim an encryption the connection lacks.
    pub const HTTPS_IN_PLAINTEXT: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        body: "Forbidden",
        flag: Flags::DPE,
        reason: "http1.https_url_on_plaintext_connection",
    };
    pub const PATH_NORMALIZATION_FAILED: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: "",
        flag: Flags::DPE,
        reason: "path_normalization_failed",
    };
    pub const HEADERS_TOO_LARGE: LocalReply = LocalReply {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        body: "",
        flag: Flags::DPE,
        reason: "request_headers_too_large",
    };
    /// An HTTP/1 head over `max_request_headers_kb` (Envoy's codec answer; the
    /// connection is closed).
    pub const HEAD_TOO_LARGE: LocalReply = LocalReply {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        body: "Request Header Fields Too Large",
        flag: Flags::DPE,
        reason: "http1.headers_too_large",
    };
    /// An HTTP/1 head with more header lines than `max_headers_count`.
    pub const TOO_MANY_HEADERS: LocalReply = LocalReply {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        body: "Request Header Fields Too Large",
        flag: Flags::DPE,
        reason: "http1.too_many_headers",
    };
    pub const UPGRADE_FAILED: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        body: "",
        flag: 0,
        reason: "upgrade_failed",
    };
    /// No activity on a stream for `stream_idle_timeout` (or the route's `idle_timeout`)
    /// before the response started. Envoy answers 408 while the request is still being
    /// received, 504 once it is complete (see [`LocalReply::stream_idle_timeout`]).
    pub const STREAM_IDLE_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::REQUEST_TIMEOUT,
        body: "stream timeout",
        flag: Flags::SI,
        reason: "stream_idle_timeout",
    };
    pub const REQUEST_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::REQUEST_TIMEOUT,
        body: "request timeout",
        flag: 0,
        reason: "request_overall_timeout",
    };
    /// Envoy's answer while `stop_accepting_requests` is active. Envoy 1.40 sets no
    /// response flag on it (`OL` marks streams the overload manager resets).
    pub const OVERLOADED: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "envoy overloaded",
        flag: 0,
        reason: "overload",
    };
    pub const PAYLOAD_TOO_LARGE: LocalReply = LocalReply {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        body: "Payload Too Large",
        flag: 0,
        reason: "request_payload_too_large",
    };

    /// The same answer after the router retried: Envoy's body then says "retried and
    /// the latest reset reason: ..." for upstream resets; other answers are unchanged.
    pub fn after_retries(mut self) -> LocalReply {
        const PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";
        self.body = match self.body.strip_prefix(PREFIX) {
            Some("reset reason: remote connection failure") => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
            }
            Some("reset reason: connection timeout") => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout"
            }
            Some("reset reason: overflow") => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: overflow"
            }
            Some("reset reason: connection termination") => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
            }
            Some("reset reason: protocol error") => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: protocol error"
            }
            _ => self.body,
        };
        self
    }

    /// The stream idle timeout's answer: 504 when the whole request was received, else
    /// 408.
    pub fn stream_idle_timeout(request_complete: bool) -> LocalReply {
        let mut r = LocalReply::STREAM_IDLE_TIMEOUT;
        if request_complete {
            r.status = StatusCode::GATEWAY_TIMEOUT;
        }
        r
    }

    /// The whole HTTP/1.1 response, for answers written before hyper has a request
    /// (a refused head): status line, Envoy's headers (`content-length`, `content-type`,
    /// `date`, `server` unless passed through, `connection: close`) and the body.
    pub fn http1_close_bytes(&self, server: Option<&HeaderValue>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            self.status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        if !self.body.is_empty() {
            out.extend_from_slice(b"\r\ncontent-type: text/plain");
        }
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        if let Some(s) = server {
            out.extend_from_slice(b"\r\nserver: ");
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    /// The response, as Envoy answers: a `text/plain` body when there is one. Why it was
    /// given (`reason`, Envoy's response code details) goes to the access log.
    pub fn response(&self) -> Response<ResponseBody> {
        self.response_with_status(self.status)
    }

    pub fn response_with_status(&self, status: StatusCode) -> Response<ResponseBody> {
        let mut resp = Response::new(if self.body.is_empty() {
            ResponseBody::empty()
        } else {
            ResponseBody::full(Bytes::from_static(self.body.as_bytes()))
        });
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if !self.body.is_empty() {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        resp
    }
}

/// The gRPC status an answer names for a gRPC request (a fault's `grpc_status` abort),
/// kept beside the HTTP status it gives other requests.
#[derive(Debug, Clone, Copy)]
pub struct GrpcStatus(pub u32);

/// Marks an answer a filter encodes itself (a CORS preflight): Envoy does not turn it
/// into a gRPC answer as it does its local replies.
#[derive(Debug, Clone, Copy)]
pub struct FilterEncoded;

/// Whether Envoy answers the request's local replies the gRPC way: `content-type` is
/// `application/grpc` or `application/grpc+...` (not `application/grpc-web`).
pub fn is_grpc_request(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
    })
}

/// gRPC's mapping of an HTTP status to a gRPC status (doc/http-grpc-status-mapping.md).
pub fn grpc_status_of(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Turns a local answer to a gRPC request into Envoy's gRPC local reply: 200 with
/// trailers only, `content-type: application/grpc`, `grpc-status` (the answer's own, else
/// its HTTP status mapped) and the body text, percent-encoded, as `grpc-message` (none
/// for HEAD); the other headers (a route's, a redirect's `location`) stay.
pub fn into_grpc(resp: &mut Response<ResponseBody>, head: bool) {
    let code = match resp.extensions().get::<GrpcStatus>() {
        Some(GrpcStatus(c)) => *c,
        None => grpc_status_of(resp.status()),
    };
    let message = resp
        .body()
        .local_bytes()
        .filter(|b| !b.is_empty() && !head)
        .map(|b| percent_encode(b));
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = ResponseBody::empty();
    let h = resp.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if !h.contains_key("grpc-status") {
        h.insert("grpc-status", HeaderValue::from(code));
    }
    if let Some(m) = message.and_then(|m| HeaderValue::from_bytes(&m).ok()) {
        h.insert("grpc-message", m);
    }
}

/// Envoy's `PercentEncoding::encode`: `%`, and bytes outside printable ASCII, as `%XX`.
fn percent_encode(b: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        if !(b' '..=b'~').contains(&c) || c == b'%' {
            out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_get_grpc_local_replies() {
        let grpc = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc_request(&h)
        };
        assert!(grpc("application/grpc"));
        assert!(grpc("application/grpc+proto"));
        assert!(!grpc("application/grpc-web"));
        assert!(!grpc("application/json"));
        assert!(!is_grpc_request(&http::HeaderMap::new()));

        let mut r = LocalReply::CONNECT_FAILURE.response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/x"));
        into_grpc(&mut r, false);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            LocalReply::CONNECT_FAILURE.body
        );
        assert_eq!(r.headers()["location"], "/x");
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        assert!(http_body::Body::is_end_stream(r.body()));

        let mut r = LocalReply::NO_ROUTE.response();
        into_grpc(&mut r, false);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert!(!r.headers().contains_key("grpc-message"));

        let mut r = LocalReply::FAULT_ABORT.response_with_status(StatusCode::OK);
        r.extensions_mut().insert(GrpcStatus(8));
        into_grpc(&mut r, true);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert!(!r.headers().contains_key("grpc-message"));

        assert_eq!(percent_encode(b"a%b\nc\xff~"), b"a%25b%0Ac%FF~");
        for (s, g) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (200, 2),
            (418, 2),
            (500, 2),
        ] {
            assert_eq!(grpc_status_of(StatusCode::from_u16(s).unwrap()), g, "{s}");
        }
    }

    #[test]
    fn flags_print_like_envoy() {
        let mut f = Flags::default();
        assert_eq!(f.to_string_lossy(), "-");
        f.set(Flags::URX);
        f.set(Flags::UF);
        assert_eq!(f.to_string_lossy(), "UF,URX");
    }

    #[test]
    fn reset_reasons_after_retries_are_worded_like_envoy() {
        for r in [
            LocalReply::CONNECT_FAILURE,
            LocalReply::CONNECT_TIMEOUT,
            LocalReply::OVERFLOW,
            LocalReply::RESET,
            LocalReply::PROTOCOL_ERROR,
        ] {
            let retried = r.after_retries();
            let reason = r.body.rsplit("reset reason: ").next().unwrap();
            assert_eq!(
                retried.body,
                format!(
                    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: {reason}"
                )
            );
            assert_eq!((retried.status, retried.reason), (r.status, r.reason));
        }
        assert_eq!(
            LocalReply::TIMEOUT.after_retries().body,
            "upstream request timeout"
        );
    }

    #[test]
    fn local_replies_are_text_plain_with_reason() {
        let r = LocalReply::NO_HEALTHY_UPSTREAM.response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["content-length"], "19");
        assert!(r.headers().get("x-meshgate-reason").is_none());
        let r = LocalReply::NO_ROUTE.response();
        assert!(r.headers().get("content-type").is_none());
    }

    #[test]
    fn answers_after_retries_say_so_for_resets() {
        for r in [
            LocalReply::CONNECT_FAILURE,
            LocalReply::CONNECT_TIMEOUT,
            LocalReply::OVERFLOW,
            LocalReply::RESET,
            LocalReply::PROTOCOL_ERROR,
        ] {
            let after = r.after_retries();
            assert_eq!(
                after.body,
                r.body
                    .replace("reset reason:", "retried and the latest reset reason:")
            );
            assert_eq!((after.status, after.reason), (r.status, r.reason));
        }
        for r in [LocalReply::NO_HEALTHY_UPSTREAM, LocalReply::TIMEOUT] {
            assert_eq!(r.after_retries().body, r.body);
        }
    }

    #[test]
    fn refused_head_answer_is_a_whole_http1_response() {
        let bytes = LocalReply::HEAD_TOO_LARGE
            .http1_close_bytes(Some(&HeaderValue::from_static("istio-envoy")));
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(
            lines.next(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"content-length: 31"), "{headers:?}");
        assert!(headers.contains(&"content-type: text/plain"));
        assert!(headers.contains(&"server: istio-envoy"));
        assert!(headers.contains(&"connection: close"));
        assert!(headers.iter().any(|h| h.starts_with("date: ")));
        assert_eq!(body, "Request Header Fields Too Large");
        assert_eq!(LocalReply::stream_idle_timeout(true).status, 504);
        assert_eq!(LocalReply::stream_idle_timeout(false).status, 408);
    }
}
