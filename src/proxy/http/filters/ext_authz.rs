//! `envoy.filters.http.ext_authz`: asks an external authorization service about each
//! request, over HTTP (`http_service`) or gRPC (`grpc_service`, Envoy's
//! `envoy.service.auth.v3.Authorization/Check`), and lets the request on, answers it with
//! the service's denial, or, when the service fails, with `status_on_error` (or lets it
//! on under `failure_mode_allow`).
//!
//! The call goes to the named cluster through the data plane's own upstream: the
//! cluster's load balancer picks a host and the worker's connection pool carries the
//! call (HTTP/1.1 or HTTP/2 as the cluster says for `http_service`; always HTTP/2 for
//! gRPC, which is framed here on the pooled connection). TLS origination, circuit
//! breakers' connection limits and connection reuse are the cluster's, as in Envoy.
//!
//! Istio's CUSTOM action runs this filter behind an RBAC filter whose shadow rules
//! name the matching policy in dynamic metadata; `filter_enabled_metadata` reads it, so
//! only requests a CUSTOM policy selects are sent to the authorizer.
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::body::{RequestBody, ResponseBody};
use crate::proxy::http::filter::{
    DynamicMetadata, HttpFilter, PerFilterConfig, RequestCx, ResponseCx, Step, Verdict,
};
use crate::proxy::http::filters::BuildCx;
use crate::proxy::http::local_reply::Flags;
use crate::proxy::route::format::{FormatContext, RequestLine};
use crate::proxy::route::headers::HeaderMutations;
use crate::proxy::route::matcher::StringMatch;
use crate::proxy::upstream::Cluster;
use crate::proxy::upstream::cluster::UpstreamProtocol;
use crate::proxy::upstream::lb::LbContext;
use crate::proxy::upstream::pool::{self, Sender};
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use crate::xds::pb::envoy::extensions::filters::http::ext_authz::v3 as pb;
use crate::xds::pb::envoy::service::auth::v3 as auth_pb;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher_pb;
use crate::xds::pb::google::protobuf as protobuf_pb;
use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::BodyExt;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The namespace of the dynamic metadata the filter writes (Envoy's canonical name,
/// whatever the filter's configured name).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// Envoy's default timeout of a gRPC authorization call.
const DEFAULT_GRPC_TIMEOUT: Duration = Duration::from_millis(200);

/// Largest authorization answer read (status, headers and body); a larger one is an
/// error of the call.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The request header naming headers an HTTP authorizer removes from the request.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Added to requests let through by `failure_mode_allow` when asked to.
const FAILURE_MODE_ALLOWED: &str = "x-envoy-auth-failure-mode-allowed";

/// The gRPC method of Envoy's authorization service.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Response code details of the two local answers (Envoy's).
const DETAILS_DENIED: &str = "ext_authz_denied";
const DETAILS_ERROR: &str = "ext_authz_error";

/// The compiled filter.
#[derive(Debug)]
pub struct ExtAuthz {
    name: Box<str>,
    service: Service,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: StatusCode,
    include_peer_certificate: bool,
    include_tls_session: bool,
    enabled_metadata: Option<MetadataMatch>,
    /// Which request headers go to the authorizer (`allowed_headers`, and for the HTTP
    /// service its older `authorization_request.allowed_headers`); `None`: all for gRPC,
    /// the defaults for HTTP.
    allowed_headers: Option<Vec<StringMatch>>,
    disallowed_headers: Vec<StringMatch>,
    metadata_context_namespaces: Vec<String>,
}

#[derive(Debug)]
enum Service {
    Http(HttpService),
    Grpc(GrpcService),
}

/// Where a call goes: the cluster (resolved in the same snapshot; `None` if the
/// snapshot has no such cluster, which makes every call an error, as in Envoy).
#[derive(Debug)]
struct Target {
    cluster_name: Box<str>,
    cluster: Option<Arc<Cluster>>,
    timeout: Duration,
}

#[derive(Debug)]
struct HttpService {
    target: Target,
    path_prefix: Box<str>,
    headers_to_add: HeaderMutations,
    upstream: Vec<StringMatch>,
    upstream_append: Vec<StringMatch>,
    /// `None`: every header but `:authority`/`host` goes to the client on a denial.
    client: Option<Vec<StringMatch>>,
    client_on_success: Vec<StringMatch>,
    metadata_from_headers: Vec<StringMatch>,
}

#[derive(Debug)]
struct GrpcService {
    target: Target,
    authority: HeaderValue,
    initial_metadata: Vec<(HeaderName, HeaderValue)>,
}

/// `ExtAuthzPerRoute`, compiled.
#[derive(Debug, Default)]
pub struct ExtAuthzPerRoute {
    disabled: bool,
    context_extensions: BTreeMap<String, String>,
}

/// What the authorizer answered.
#[derive(Debug)]
enum Outcome {
    Ok(Allowed),
    Denied(Denied),
    Error,
}

#[derive(Debug, Default)]
struct Allowed {
    /// Overwrite (or add) on the request.
    set: Vec<(HeaderName, HeaderValue)>,
    /// Add another value on the request.
    add: Vec<(HeaderName, HeaderValue)>,
    /// Append to the existing value (comma-separated); absent headers stay absent.
    append: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    query_set: Vec<(String, String)>,
    query_remove: Vec<String>,
    /// For the client's response.
    response: Vec<ResponseHeader>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
struct Denied {
    status: StatusCode,
    body: Bytes,
    /// Replace any header of the local answer by the same name.
    set: Vec<(HeaderName, HeaderValue)>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseAction {
    Add,
    Set,
    AddIfAbsent,
    OverwriteIfExists,
}

/// What the response phase adds, per ext_authz filter of the chain.
#[derive(Default, Clone)]
struct ResponseHeaders(Vec<(Box<str>, Vec<ResponseHeader>)>);

/// A header the authorizer adds to the client's response, and how.
type ResponseHeader = (HeaderName, HeaderValue, ResponseAction);

impl HttpFilter for ExtAuthz {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        // Without a route Envoy skips the check (the router then answers 404); direct
        // responses and redirects are checked.
        if cx.route.is_none() {
            return Step::CONTINUE;
        }
        let per_route = cx.per_route::<ExtAuthzPerRoute>(&self.name);
        if per_route.is_some_and(|p| p.disabled) {
            return Step::CONTINUE;
        }
        if let Some(m) = &self.enabled_metadata
            && !m.matches(cx.metadata)
        {
            return Step::CONTINUE;
        }
        let context_extensions = per_route
            .map(|p| p.context_extensions.clone())
            .unwrap_or_default();
        // Everything the call needs is taken from the request before it starts.
        let worker = cx.conn.worker;
        let call = match &self.service {
            Service::Http(s) => s.prepare(self, cx),
            Service::Grpc(s) => s.prepare(self.check_request(cx, context_extensions)),
        };
        Step::Wait(Box::pin(async move {
            let outcome = match (&self.service, call) {
                (_, None) => Outcome::Error,
                (Service::Http(s), Some(call)) => match call_cluster(&s.target, call, worker).await
                {
                    Some(answer) => s.outcome(answer),
                    None => Outcome::Error,
                },
                (Service::Grpc(s), Some(call)) => match call_cluster(&s.target, call, worker).await
                {
                    Some(answer) => grpc_outcome(answer),
                    None => Outcome::Error,
                },
            };
            self.apply(cx, outcome)
        }))
    }

    fn on_response(&self, cx: &mut ResponseCx<'_>) {
        let Some(ResponseHeaders(all)) = cx.state.get::<ResponseHeaders>() else {
            return;
        };
        let Some((_, headers)) = all.iter().find(|(n, _)| **n == *self.name) else {
            return;
        };
        let h = cx.resp.headers_mut();
        for (name, value, action) in headers {
            match action {
                ResponseAction::Add => {
                    h.append(name.clone(), value.clone());
                }
                ResponseAction::Set => {
                    h.insert(name.clone(), value.clone());
                }
                ResponseAction::AddIfAbsent => {
                    if !h.contains_key(name) {
                        h.insert(name.clone(), value.clone());
                    }
                }
                ResponseAction::OverwriteIfExists => {
                    if h.contains_key(name) {
                        h.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

impl ExtAuthz {
    /// Acts on the authorizer's answer: Envoy's `onComplete`.
    fn apply(&self, cx: &mut RequestCx<'_>, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Ok(ok) => {
                let headers = cx.req.headers_mut();
                for (name, value) in ok.set {
                    headers.insert(name, value);
                }
                for (name, value) in ok.add {
                    headers.append(name, value);
                }
                for (name, value) in ok.append {
                    append_to_existing(headers, name, &value);
                }
                for name in ok.remove {
                    // Envoy never removes the host (`:authority`) this way.
                    if name != header::HOST {
                        headers.remove(name);
                    }
                }
                if !ok.query_set.is_empty() || !ok.query_remove.is_empty() {
                    mutate_query(cx.req, &ok.query_set, &ok.query_remove);
                }
                if !ok.metadata.is_empty() {
                    cx.metadata
                        .namespace_mut(METADATA_NAMESPACE)
                        .extend(ok.metadata);
                }
                if !ok.response.is_empty() {
                    let state = cx.state.get_or_insert_default::<ResponseHeaders>();
                    state.0.push((self.name.clone(), ok.response));
                }
                Verdict::Continue
            }
            Outcome::Denied(mut d) => {
                if !d.metadata.is_empty() {
                    cx.metadata
                        .namespace_mut(METADATA_NAMESPACE)
                        .extend(std::mem::take(&mut d.metadata));
                }
                cx.log.flags.set(Flags::UAEX);
                cx.log.details = Some(DETAILS_DENIED);
                Verdict::respond(denied_response(d))
            }
            Outcome::Error if self.failure_mode_allow => {
                if self.failure_mode_allow_header_add {
                    cx.req.headers_mut().insert(
                        HeaderName::from_static(FAILURE_MODE_ALLOWED),
                        HeaderValue::from_static("true"),
                    );
                }
                Verdict::Continue
            }
            Outcome::Error => {
                cx.log.flags.set(Flags::UAEX);
                cx.log.details = Some(DETAILS_ERROR);
                let mut resp = Response::new(ResponseBody::empty());
                *resp.status_mut() = self.status_on_error;
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                Verdict::respond(resp)
            }
        }
    }

    /// Whether the request header `name` goes to the authorizer. The HTTP service
    /// always sends the method, path, host and `authorization` (Envoy's defaults).
    fn header_allowed(&self, name: &str, http: bool) -> bool {
        if self
            .disallowed_headers
            .iter()
            .any(|m| m.matches(name.as_bytes()))
        {
            return false;
        }
        if http && matches!(name, ":method" | ":path" | ":authority" | "authorization") {
            return true;
        }
        match &self.allowed_headers {
            Some(list) => list.iter().any(|m| m.matches(name.as_bytes())),
            None => !http,
        }
    }

    /// The `CheckRequest` Envoy sends for this request.
    fn check_request(
        &self,
        cx: &RequestCx<'_>,
        context_extensions: BTreeMap<String, String>,
    ) -> auth_pb::CheckRequest {
        use auth_pb::attribute_context::{HttpRequest, Peer, Request as AttrRequest, TlsSession};
        let conn = cx.conn;
        let tls = conn.tls.as_deref();
        let peer_identity = tls.and_then(|t| t.peer.as_ref());
        let source = Peer {
            address: Some(socket_address(conn.peer.remote)),
            principal: peer_identity
                .map(|p| match p.uri_sans.first() {
                    Some(u) => u.clone(),
                    None => p.subject.clone(),
                })
                .unwrap_or_default(),
            certificate: if self.include_peer_certificate {
                peer_identity
                    .and_then(|p| p.leaf_pem_url_encoded())
                    .unwrap_or_default()
            } else {
                String::new()
            },
            ..Default::default()
        };
        let destination = Peer {
            address: Some(socket_address(conn.peer.local)),
            principal: tls
                .and_then(|t| t.local_uri_san())
                .map(str::to_string)
                .unwrap_or_default(),
            ..Default::default()
        };
        let req = &*cx.req;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let scheme = request_scheme(cx);
        let host = String::from_utf8_lossy(cx.authority.as_bytes()).into_owned();
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in [
            (":authority", host.as_str()),
            (":method", req.method().as_str()),
            (":path", path),
            (":scheme", scheme),
        ] {
            if self.header_allowed(name, false) {
                headers.insert(name.to_string(), value.to_string());
            }
        }
        for name in req.headers().keys() {
            if !self.header_allowed(name.as_str(), false) {
                continue;
            }
            let joined = join_values(req.headers(), name);
            headers.insert(name.as_str().to_string(), joined);
        }
        let size = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1);
        let http = HttpRequest {
            id: rand::random::<u64>().to_string(),
            method: req.method().as_str().to_string(),
            headers,
            path: path.to_string(),
            host,
            scheme: scheme.to_string(),
            size,
            protocol: protocol_name(req.version()).to_string(),
            ..Default::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut metadata_context = core_pb::Metadata::default();
        for ns in &self.metadata_context_namespaces {
            if let Some(m) = cx.metadata.namespace(ns) {
                metadata_context
                    .filter_metadata
                    .insert(ns.clone(), json_to_struct(m));
            }
        }
        auth_pb::CheckRequest {
            attributes: Some(auth_pb::AttributeContext {
                source: Some(source),
                destination: Some(destination),
                request: Some(AttrRequest {
                    time: Some(protobuf_pb::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    }),
                    http: Some(http),
                }),
                context_extensions: context_extensions.into_iter().collect(),
                metadata_context: (!metadata_context.filter_metadata.is_empty())
                    .then_some(metadata_context),
                tls_session: if self.include_tls_session {
                    tls.and_then(|t| t.server_name.as_deref())
                        .map(|sni| TlsSession {
                            sni: sni.to_string(),
                        })
                } else {
                    None
                },
                ..Default::default()
            }),
        }
    }
}

/// Appends `value` to the header's existing value (comma-separated); a header the map
/// does not have is left absent (Envoy's `headers_to_append`).
fn append_to_existing(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    if let Some(existing) = headers.get(&name) {
        let mut v = existing.as_bytes().to_vec();
        v.push(b',');
        v.extend_from_slice(value.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            headers.insert(name, v);
        }
    }
}

/// The local answer to a denied request: the authorizer's status and body, and its
/// headers replacing the answer's own (Envoy removes every name it sets, then adds all
/// values, so that e.g. several `set-cookie` survive).
fn denied_response(d: Denied) -> Response<ResponseBody> {
    let len = d.body.len();
    let mut resp = Response::new(ResponseBody::full(d.body));
    *resp.status_mut() = d.status;
    let h = resp.headers_mut();
    if len > 0 {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    for (name, _) in &d.set {
        h.remove(name);
    }
    for (name, value) in d.set {
        h.append(name, value);
    }
    // The body is the authorizer's: the length is its length whatever it said.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

impl HttpService {
    /// The request's check as an HTTP request: the client's method, the path behind
    /// `path_prefix`, the allowed headers and no body.
    fn prepare(&self, f: &ExtAuthz, cx: &RequestCx<'_>) -> Option<Call> {
        let req = &*cx.req;
        let mut headers = HeaderMap::new();
        for name in req.headers().keys() {
            let n = name.as_str();
            if n == "content-length" || n == "host" || !f.header_allowed(n, true) {
                continue;
            }
            for v in req.headers().get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        if !self.headers_to_add.is_empty() {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let line = RequestLine {
                method: req.method(),
                path,
                authority: cx.authority.as_bytes(),
                scheme: req.uri().scheme_str(),
                https: cx.conn.peer.https,
            };
            let fcx = FormatContext {
                remote: cx.conn.peer.remote,
                direct: cx.conn.peer.direct,
                local: cx.conn.peer.local,
                tls: cx.conn.tls.as_deref(),
                version: req.version(),
                started: cx.log.start,
                cluster: None,
                cluster_observability_name: None,
                upstream: None,
                request: None,
                line: Some(line),
                status: None,
            };
            self.headers_to_add.apply(&mut headers, &fcx, false);
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut full_path = String::with_capacity(self.path_prefix.len() + path.len());
        full_path.push_str(&self.path_prefix);
        full_path.push_str(path);
        let path = full_path.parse::<http::uri::PathAndQuery>().ok()?;
        let mut request = Request::new(RequestBody::Empty);
        *request.method_mut() = req.method().clone();
        *request.headers_mut() = headers;
        Some(Call {
            request,
            path,
            authority: cx.authority.clone(),
            h2: None,
        })
    }

    /// Envoy's `toResponse`: 5xx is an error, 200 allows, anything else denies.
    fn outcome(&self, answer: Answer) -> Outcome {
        let status = answer.status;
        if status.is_server_error() {
            return Outcome::Error;
        }
        let mut headers = answer.headers;
        let remove: Vec<HeaderName> = if status == StatusCode::OK {
            headers
                .get_all(HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .collect()
        } else {
            Vec::new()
        };
        headers.remove(HEADERS_TO_REMOVE);
        let mut metadata = serde_json::Map::new();
        for (name, value) in headers.iter() {
            if any_matches(&self.metadata_from_headers, name) {
                metadata.insert(
                    name.as_str().to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into()),
                );
            }
        }
        if status == StatusCode::OK {
            let mut ok = Allowed {
                remove,
                metadata,
                ..Default::default()
            };
            for (name, value) in headers.iter() {
                if any_matches(&self.upstream, name) {
                    ok.set.push((name.clone(), value.clone()));
                }
                if any_matches(&self.upstream_append, name) {
                    ok.add.push((name.clone(), value.clone()));
                }
                if any_matches(&self.client_on_success, name) {
                    ok.response
                        .push((name.clone(), value.clone(), ResponseAction::Add));
                }
            }
            return Outcome::Ok(ok);
        }
        let mut set = Vec::new();
        for (name, value) in headers.iter() {
            let to_client = match &self.client {
                None => *name != header::HOST,
                Some(list) => {
                    any_matches(list, name)
                        || matches!(
                            name.as_str(),
                            "content-length" | "www-authenticate" | "location"
                        )
                }
            };
            if to_client {
                set.push((name.clone(), value.clone()));
            }
        }
        Outcome::Denied(Denied {
            status,
            body: answer.body,
            set,
            metadata,
        })
    }
}

impl GrpcService {
    /// The `Check` call carrying `check`.
    fn prepare(&self, check: auth_pb::CheckRequest) -> Option<Call> {
        let mut frame = BytesMut::with_capacity(5 + check.encoded_len());
        frame.extend_from_slice(&[0]);
        frame.extend_from_slice(&(check.encoded_len() as u32).to_be_bytes());
        check.encode(&mut frame).ok()?;
        let mut call = Request::new(RequestBody::Full(Some(frame.freeze())));
        *call.method_mut() = Method::POST;
        let h = call.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Ok(v) = HeaderValue::from_str(&format!("{}m", self.target.timeout.as_millis())) {
            h.insert(HeaderName::from_static("grpc-timeout"), v);
        }
        for (name, value) in &self.initial_metadata {
            h.append(name.clone(), value.clone());
        }
        Some(Call {
            request: call,
            path: http::uri::PathAndQuery::from_static(CHECK_PATH),
            authority: self.authority.clone(),
            h2: Some(true),
        })
    }
}

/// Reads a `CheckResponse` out of a gRPC answer: a failed call is an error, an OK
/// status allows, any other status denies.
fn grpc_outcome(answer: Answer) -> Outcome {
    if answer.status != StatusCode::OK {
        return Outcome::Error;
    }
    let grpc_status = answer
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| answer.headers.get("grpc-status"));
    if grpc_status.is_none_or(|s| s.as_bytes() != b"0") {
        return Outcome::Error;
    }
    let mut body = answer.body;
    if body.len() < 5 || body[0] != 0 {
        return Outcome::Error;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Outcome::Error;
    }
    let Ok(resp) = auth_pb::CheckResponse::decode(body) else {
        return Outcome::Error;
    };
    check_response_outcome(resp)
}

/// Envoy's gRPC client's reading of a decoded `CheckResponse`.
fn check_response_outcome(resp: auth_pb::CheckResponse) -> Outcome {
    use auth_pb::check_response::HttpResponse;
    let mut metadata = resp
        .dynamic_metadata
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let mut ok = Allowed::default();
        if let Some(HttpResponse::OkResponse(o)) = resp.http_response {
            for opt in &o.headers {
                let Some((name, value)) = header_of(opt) else {
                    continue;
                };
                // `append` unset is false: the value replaces the request's.
                #[allow(deprecated)]
                if opt.append.as_ref().is_some_and(|b| b.value) {
                    ok.append.push((name, value));
                } else {
                    ok.set.push((name, value));
                }
            }
            ok.remove = o
                .headers_to_remove
                .iter()
                .filter(|n| !n.starts_with(':'))
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .collect();
            for opt in &o.response_headers_to_add {
                let Some((name, value)) = header_of(opt) else {
                    continue;
                };
                #[allow(deprecated)]
                let action = match opt.append.as_ref().map(|b| b.value) {
                    Some(true) => ResponseAction::Add,
                    Some(false) => ResponseAction::Set,
                    None => response_action(opt.append_action),
                };
                ok.response.push((name, value, action));
            }
            for q in &o.query_parameters_to_set {
                ok.query_set.push((q.key.clone(), q.value.clone()));
            }
            ok.query_remove = o.query_parameters_to_remove.clone();
            #[allow(deprecated)]
            if let Some(m) = &o.dynamic_metadata
                && metadata.is_empty()
            {
                metadata = struct_to_json(m);
            }
        }
        ok.metadata = metadata;
        return Outcome::Ok(ok);
    }
    let mut denied = Denied {
        status: StatusCode::FORBIDDEN,
        body: Bytes::new(),
        set: Vec::new(),
        metadata,
    };
    if let Some(HttpResponse::DeniedResponse(d)) = resp.http_response {
        let status = d.status.as_ref().map_or(0, |s| s.code);
        if status > 0
            && let Ok(s) = StatusCode::from_u16(status as u16)
        {
            denied.status = s;
        }
        // Headers to append are not applied to the local answer (Envoy's behaviour).
        for opt in &d.headers {
            #[allow(deprecated)]
            let append = opt.append.as_ref().is_some_and(|b| b.value);
            if let Some(h) = header_of(opt).filter(|_| !append) {
                denied.set.push(h);
            }
        }
        denied.body = Bytes::from(d.body);
    }
    Outcome::Denied(denied)
}

fn response_action(action: i32) -> ResponseAction {
    use core_pb::header_value_option::HeaderAppendAction as A;
    match A::try_from(action) {
        Ok(A::AppendIfExistsOrAdd) => ResponseAction::Add,
        Ok(A::AddIfAbsent) => ResponseAction::AddIfAbsent,
        Ok(A::OverwriteIfExistsOrAdd) => ResponseAction::Set,
        Ok(A::OverwriteIfExists) => ResponseAction::OverwriteIfExists,
        Err(_) => ResponseAction::Set,
    }
}

fn header_of(opt: &core_pb::HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = opt.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
    let raw: &[u8] = if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    };
    let value = HeaderValue::from_bytes(raw).ok()?;
    Some((name, value))
}

/// An authorizer's whole answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// A call to the authorizer, ready to go.
struct Call {
    request: Request<RequestBody>,
    path: http::uri::PathAndQuery,
    authority: HeaderValue,
    /// `Some(true)`: HTTP/2 whatever the cluster says (gRPC); `None`: the cluster's.
    h2: Option<bool>,
}

/// One call to the target cluster: a host from its load balancer, a connection from the
/// worker's pool, the whole answer read within the timeout. `None`: no answer (no
/// cluster, no host, connect failure, reset, timeout, oversized answer).
async fn call_cluster(target: &Target, call: Call, worker: usize) -> Option<Answer> {
    let Call {
        request: mut call,
        path,
        authority,
        h2,
    } = call;
    let Some(cluster) = target.cluster.as_ref() else {
        tracing::debug!(cluster = %target.cluster_name, "ext_authz: the authorization cluster does not exist");
        return None;
    };
    let work = async {
        let host = cluster.choose_host(LbContext::default())?;
        let h2 = h2.unwrap_or(cluster.protocol == UpstreamProtocol::Http2);
        if h2 {
            *call.version_mut() = http::Version::HTTP_2;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = authority.to_str().ok().and_then(|a| a.parse().ok());
            parts.path_and_query = Some(path);
            *call.uri_mut() = Uri::from_parts(parts).ok()?;
        } else {
            *call.version_mut() = http::Version::HTTP_11;
            call.headers_mut().insert(header::HOST, authority);
            *call.uri_mut() = Uri::from(path);
        }
        cluster
            .state
            .stats
            .upstream_rq_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = pool::acquire_for(cluster, &host, worker, h2, Some(&call), None)
            .await
            .ok()?;
        let resp = match &mut conn.sender {
            Sender::H1(s) => s.send_request(call).await,
            Sender::H2(s) => s.send_request(call).await,
        }
        .ok()?;
        cluster.state.stats.count_status(resp.status().as_u16());
        let (parts, body) = resp.into_parts();
        let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .ok()?;
        pool::release(cluster, &host, worker, conn);
        let trailers = collected.trailers().cloned();
        Some(Answer {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    };
    tokio::time::timeout(target.timeout, work).await.ok()?
}

/// Applies a gRPC authorizer's query parameter changes to the request's target.
fn mutate_query<B>(req: &mut Request<B>, set: &[(String, String)], remove: &[String]) {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let mut params: Vec<(String, String)> = query
        .map(|q| {
            q.split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    params.retain(|(k, _)| !remove.contains(k));
    for (k, v) in set {
        match params.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v.clone(),
            None => params.push((k.clone(), v.clone())),
        }
    }
    let mut out = path.to_string();
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(v);
        }
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = out.parse() {
        parts.path_and_query = Some(p);
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

fn any_matches(list: &[StringMatch], name: &HeaderName) -> bool {
    list.iter().any(|m| m.matches(name.as_str().as_bytes()))
}

fn join_values(h: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for (i, v) in h.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out
}

fn request_scheme(cx: &RequestCx<'_>) -> &'static str {
    match cx.req.uri().scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        Some(_) => "http",
        None if cx.conn.peer.https => "https",
        None => "http",
    }
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/1.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn socket_address(a: std::net::SocketAddr) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: a.ip().to_canonical().to_string(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(
                    a.port() as u32
                )),
                ..Default::default()
            },
        )),
    }
}

/// A JSON object as a protobuf `Struct`.
fn json_to_struct(m: &serde_json::Map<String, serde_json::Value>) -> protobuf_pb::Struct {
    protobuf_pb::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &serde_json::Value) -> protobuf_pb::Value {
    use protobuf_pb::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(protobuf_pb::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    protobuf_pb::Value { kind: Some(kind) }
}

/// A protobuf `Struct` as a JSON object.
fn struct_to_json(s: &protobuf_pb::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &protobuf_pb::Value) -> serde_json::Value {
    use protobuf_pb::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher` over the request's dynamic metadata: the
/// value at `path` in namespace `filter`, matched by a string, presence, boolean or
/// null matcher (what `filter_enabled_metadata` needs; Istio uses a string prefix).
#[derive(Debug)]
struct MetadataMatch {
    filter: String,
    path: Vec<String>,
    value: ValueMatch,
    invert: bool,
}

#[derive(Debug)]
enum ValueMatch {
    Null,
    String(StringMatch),
    Bool(bool),
    Present(bool),
}

impl MetadataMatch {
    fn compile(
        cx: &mut Cx,
        m: &matcher_pb::MetadataMatcher,
    ) -> Result<MetadataMatch, CompileError> {
        use matcher_pb::metadata_matcher::path_segment::Segment;
        use matcher_pb::value_matcher::MatchPattern as P;
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
        let mut path = Vec::new();
        for (i, seg) in m.path.iter().enumerate() {
            match &seg.segment {
                Some(Segment::Key(k)) if !k.is_empty() => path.push(k.clone()),
                _ => return Err(cx.err(&format!("path[{i}].key"), "a non-empty key is required")),
            }
        }
        let v = m
            .value
            .as_ref()
            .ok_or_else(|| cx.err("value", "a value matcher is required"))?;
        let value = cx.at("value", |cx| {
            Ok(match &v.match_pattern {
                Some(P::NullMatch(_)) => ValueMatch::Null,
                Some(P::StringMatch(s)) => {
                    ValueMatch::String(cx.at("string_match", |cx| StringMatch::compile(cx, s))?)
                }
                Some(P::BoolMatch(b)) => ValueMatch::Bool(*b),
                Some(P::PresentMatch(b)) => ValueMatch::Present(*b),
                Some(P::DoubleMatch(_)) => return Err(cx.unsupported("double_match")),
                Some(P::ListMatch(_)) => return Err(cx.unsupported("list_match")),
                Some(P::OrMatch(_)) => return Err(cx.unsupported("or_match")),
                None => return Err(cx.err("match_pattern", "a match pattern is required")),
            })
        })?;
        Ok(MetadataMatch {
            filter: m.filter.clone(),
            path,
            value,
            invert: m.invert,
        })
    }

    fn matches(&self, md: &DynamicMetadata) -> bool {
        let v = md.lookup(&self.filter, &self.path);
        let matched = match (&self.value, v) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (ValueMatch::Null, Some(serde_json::Value::Null)) => true,
            (ValueMatch::String(m), Some(serde_json::Value::String(s))) => m.matches(s.as_bytes()),
            (ValueMatch::Bool(want), Some(serde_json::Value::Bool(b))) => b == want,
            _ => false,
        };
        matched != self.invert
    }
}

/// The type URL of the filter's config.
pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";

/// The type URL of its per-route config.
pub const PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

fn string_matches(
    cx: &mut Cx,
    field: &str,
    list: &Option<matcher_pb::ListStringMatcher>,
) -> Result<Option<Vec<StringMatch>>, CompileError> {
    let Some(list) = list else { return Ok(None) };
    cx.at(field, |cx| {
        fields!(
            cx,
            list,
            matcher_pb::ListStringMatcher {
                supported: [patterns],
                ignored: [],
                unsupported: [],
            }
        );
        let mut out = Vec::new();
        for (i, p) in list.patterns.iter().enumerate() {
            out.push(cx.at(format_args!("patterns[{i}]"), |cx| {
                StringMatch::compile(cx, p)
            })?);
        }
        Ok(Some(out))
    })
}

fn resolve(
    cx: &Cx,
    field: &str,
    name: &str,
    timeout: Duration,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<Target, CompileError> {
    if name.is_empty() {
        return Err(cx.err(field, "a cluster name is required"));
    }
    Ok(Target {
        cluster_name: name.into(),
        cluster: clusters.get(name).cloned(),
        timeout,
    })
}

/// Compiles the filter from its `typed_config`.
pub(crate) fn build(
    cx: &mut Cx,
    b: &BuildCx<'_>,
    any: &protobuf_pb::Any,
) -> Result<Arc<dyn HttpFilter>, CompileError> {
    let c = pb::ExtAuthz::decode(any.value.as_slice())
        .map_err(|e| cx.err("typed_config", format!("decoding ExtAuthz: {e}")))?;
    cx.at("typed_config", |cx| {
        compile_config(cx, b.name, &c, b.clusters)
    })
    .map(|f| Arc::new(f) as Arc<dyn HttpFilter>)
}

fn compile_config(
    cx: &mut Cx,
    name: &str,
    c: &pb::ExtAuthz,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<ExtAuthz, CompileError> {
    fields!(
        cx,
        c,
        pb::ExtAuthz {
            supported: [
                transport_api_version,
                failure_mode_allow,
                failure_mode_allow_header_add,
                status_on_error,
                filter_enabled_metadata,
                include_peer_certificate,
                include_tls_session,
                allowed_headers,
                disallowed_headers,
                metadata_context_namespaces,
                services
            ],
            ignored: [
                stat_prefix,
                charge_cluster_response_stats,
                emit_filter_state_stats,
                emit_client_span,
                bootstrap_metadata_labels_key,
                validate_mutations
            ],
            unsupported: [
                with_request_body,
                clear_route_cache,
                typed_metadata_context_namespaces,
                route_metadata_context_namespaces,
                route_typed_metadata_context_namespaces,
                filter_enabled,
                deny_at_disable,
                encode_raw_headers,
                decoder_header_mutation_rules,
                enable_dynamic_metadata_ingestion,
                filter_metadata,
                max_denied_response_body_bytes,
                enforce_response_header_limits,
                shadow_mode
            ],
        }
    );
    // AUTO (unset) means V3, the only version Envoy still speaks.
    #[allow(deprecated)]
    let v2 = core_pb::ApiVersion::V2 as i32;
    if c.transport_api_version == v2 {
        return Err(cx.err(
            "transport_api_version",
            "the v2 API has been removed; only V3 is supported",
        ));
    }
    let status_on_error = match c.status_on_error.as_ref().map(|s| s.code) {
        None | Some(0) => StatusCode::FORBIDDEN,
        Some(code) => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|s| s.as_u16() >= 200)
            .ok_or_else(|| cx.err("status_on_error.code", "not an HTTP status"))?,
    };
    let enabled_metadata = match &c.filter_enabled_metadata {
        Some(m) => Some(cx.at("filter_enabled_metadata", |cx| {
            MetadataMatch::compile(cx, m)
        })?),
        None => None,
    };
    let mut allowed_headers = string_matches(cx, "allowed_headers", &c.allowed_headers)?;
    let disallowed_headers =
        string_matches(cx, "disallowed_headers", &c.disallowed_headers)?.unwrap_or_default();
    let service = match &c.services {
        None => {
            return Err(cx.err(
                "services",
                "one of http_service or grpc_service is required",
            ));
        }
        Some(pb::ext_authz::Services::HttpService(s)) => {
            Service::Http(cx.at("http_service", |cx| {
                compile_http_service(cx, s, clusters, &mut allowed_headers)
            })?)
        }
        Some(pb::ext_authz::Services::GrpcService(g)) => {
            Service::Grpc(cx.at("grpc_service", |cx| compile_grpc_service(cx, g, clusters))?)
        }
    };
    Ok(ExtAuthz {
        name: name.into(),
        service,
        failure_mode_allow: c.failure_mode_allow,
        failure_mode_allow_header_add: c.failure_mode_allow_header_add,
        status_on_error,
        include_peer_certificate: c.include_peer_certificate,
        include_tls_session: c.include_tls_session,
        enabled_metadata,
        allowed_headers,
        disallowed_headers,
        metadata_context_namespaces: c.metadata_context_namespaces.clone(),
    })
}

fn compile_http_service(
    cx: &mut Cx,
    s: &pb::HttpService,
    clusters: &HashMap<String, Arc<Cluster>>,
    allowed_headers: &mut Option<Vec<StringMatch>>,
) -> Result<HttpService, CompileError> {
    fields!(
        cx,
        s,
        pb::HttpService {
            supported: [
                server_uri,
                path_prefix,
                authorization_request,
                authorization_response
            ],
            ignored: [],
            unsupported: [path_override, retry_policy],
        }
    );
    let uri = s
        .server_uri
        .as_ref()
        .ok_or_else(|| cx.err("server_uri", "required"))?;
    let target = cx.at("server_uri", |cx| {
        fields!(
            cx,
            uri,
            core_pb::HttpUri {
                supported: [http_upstream_type, timeout],
                ignored: [uri],
                unsupported: [],
            }
        );
        let timeout =
            duration(cx, "timeout", &uri.timeout)?.ok_or_else(|| cx.err("timeout", "required"))?;
        let core_pb::http_uri::HttpUpstreamType::Cluster(name) = uri
            .http_upstream_type
            .as_ref()
            .ok_or_else(|| cx.err("cluster", "required"))?;
        resolve(cx, "cluster", name, timeout, clusters)
    })?;
    if !s.path_prefix.is_empty() && !s.path_prefix.starts_with('/') {
        return Err(cx.err("path_prefix", "must start with '/'"));
    }
    let mut headers_to_add = HeaderMutations::default();
    if let Some(r) = &s.authorization_request {
        cx.at("authorization_request", |cx| {
            fields!(
                cx,
                r,
                pb::AuthorizationRequest {
                    supported: [allowed_headers, headers_to_add],
                    ignored: [],
                    unsupported: [],
                }
            );
            #[allow(deprecated)]
            let old = string_matches(cx, "allowed_headers", &r.allowed_headers)?;
            if allowed_headers.is_none() {
                *allowed_headers = old;
            }
            let options: Vec<core_pb::HeaderValueOption> = r
                .headers_to_add
                .iter()
                .map(|h| core_pb::HeaderValueOption {
                    header: Some(h.clone()),
                    append_action:
                        core_pb::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                            as i32,
                    ..Default::default()
                })
                .collect();
            headers_to_add = HeaderMutations::compile(cx, "headers_to_add", &options, "", &[])?;
            Ok(())
        })?;
    }
    let mut upstream = Vec::new();
    let mut upstream_append = Vec::new();
    let mut client = None;
    let mut client_on_success = Vec::new();
    let mut metadata_from_headers = Vec::new();
    if let Some(r) = &s.authorization_response {
        cx.at("authorization_response", |cx| {
            fields!(
                cx,
                r,
                pb::AuthorizationResponse {
                    supported: [
                        allowed_upstream_headers,
                        allowed_upstream_headers_to_append,
                        allowed_client_headers,
                        allowed_client_headers_on_success,
                        dynamic_metadata_from_headers
                    ],
                    ignored: [],
                    unsupported: [],
                }
            );
            upstream = string_matches(cx, "allowed_upstream_headers", &r.allowed_upstream_headers)?
                .unwrap_or_default();
            upstream_append = string_matches(
                cx,
                "allowed_upstream_headers_to_append",
                &r.allowed_upstream_headers_to_append,
            )?
            .unwrap_or_default();
            client = string_matches(cx, "allowed_client_headers", &r.allowed_client_headers)?
                .filter(|l| !l.is_empty());
            client_on_success = string_matches(
                cx,
                "allowed_client_headers_on_success",
                &r.allowed_client_headers_on_success,
            )?
            .unwrap_or_default();
            metadata_from_headers = string_matches(
                cx,
                "dynamic_metadata_from_headers",
                &r.dynamic_metadata_from_headers,
            )?
            .unwrap_or_default();
            Ok(())
        })?;
    }
    Ok(HttpService {
        target,
        path_prefix: s.path_prefix.as_str().into(),
        headers_to_add,
        upstream,
        upstream_append,
        client,
        client_on_success,
        metadata_from_headers,
    })
}

fn compile_grpc_service(
    cx: &mut Cx,
    g: &core_pb::GrpcService,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<GrpcService, CompileError> {
    use core_pb::grpc_service::TargetSpecifier;
    fields!(
        cx,
        g,
        core_pb::GrpcService {
            supported: [target_specifier, timeout, initial_metadata],
            ignored: [],
            unsupported: [retry_policy],
        }
    );
    let timeout = duration(cx, "timeout", &g.timeout)?.unwrap_or(DEFAULT_GRPC_TIMEOUT);
    let e = match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(TargetSpecifier::GoogleGrpc(_)) => return Err(cx.unsupported("google_grpc")),
        None => return Err(cx.err("envoy_grpc", "required")),
    };
    let target = cx.at("envoy_grpc", |cx| {
        fields!(
            cx,
            e,
            core_pb::grpc_service::EnvoyGrpc {
                supported: [cluster_name, authority],
                ignored: [max_receive_message_length, skip_envoy_headers],
                unsupported: [retry_policy],
            }
        );
        resolve(cx, "cluster_name", &e.cluster_name, timeout, clusters)
    })?;
    let authority_text = if e.authority.is_empty() {
        e.cluster_name.as_str()
    } else {
        e.authority.as_str()
    };
    let authority = HeaderValue::from_str(authority_text)
        .map_err(|_| cx.err("envoy_grpc.authority", "not a valid authority"))?;
    let mut initial_metadata = Vec::new();
    for (i, h) in g.initial_metadata.iter().enumerate() {
        let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
            .map_err(|_| cx.err(&format!("initial_metadata[{i}].key"), "invalid header name"))?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| {
            cx.err(
                &format!("initial_metadata[{i}].value"),
                "invalid header value",
            )
        })?;
        initial_metadata.push((name, value));
    }
    Ok(GrpcService {
        target,
        authority,
        initial_metadata,
    })
}

/// Compiles an `ExtAuthzPerRoute` of `typed_per_filter_config`.
pub(crate) fn per_route(
    cx: &mut Cx,
    any: &protobuf_pb::Any,
) -> Result<PerFilterConfig, CompileError> {
    use pb::ext_authz_per_route::Override;
    let p = pb::ExtAuthzPerRoute::decode(any.value.as_slice())
        .map_err(|e| cx.err("", format!("decoding ExtAuthzPerRoute: {e}")))?;
    let out = match &p.r#override {
        None => {
            return Err(cx.err("override", "one of disabled or check_settings is required"));
        }
        Some(Override::Disabled(d)) => ExtAuthzPerRoute {
            disabled: *d,
            ..Default::default()
        },
        Some(Override::CheckSettings(s)) => cx.at("check_settings", |cx| {
            fields!(
                cx,
                s,
                pb::CheckSettings {
                    supported: [context_extensions, disable_request_body_buffering],
                    ignored: [emit_client_span],
                    unsupported: [with_request_body, service_override],
                }
            );
            Ok(ExtAuthzPerRoute {
                disabled: false,
                context_extensions: s
                    .context_extensions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        })?,
    };
    Ok(Arc::new(out))
}

#[cfg(test)]
#[path = "ext_authz_tests.rs"]
mod tests;
