//! One request, from the connection manager's checks to the upstream and back: request
//! validation and header handling, route selection, the fault and CORS filters, then the
//! route's action (direct response, redirect, or forwarding with retries, timeouts,
//! mirroring and load balancing).
use crate::proxy::access_log::RequestLog;
use crate::proxy::connection::{ChainKey, ConnTls};
use crate::proxy::http::body::{RequestBody, ResponseBody, StreamActivity, buffer_up_to};
use crate::proxy::http::filter::{
    DynamicMetadata, HttpFilter, RequestCx, ResponseCx, Step, Verdict,
};
use crate::proxy::http::hcm::{EscapedSlashes, HttpConnectionManager, ServerHeader, StripPort};
use crate::proxy::http::head_scan;
use crate::proxy::http::local_reply::{self, Flags, LocalReply};
use crate::proxy::http::normalize;
use crate::proxy::http::request::*;
use crate::proxy::route::action::*;
use crate::proxy::route::format::{FormatContext, RequestLine};
use crate::proxy::route::matcher::HeaderKey;
use crate::proxy::route::{HeaderMutations, RequestView, Route, RouteTable, VirtualHost};
use crate::proxy::runtime::Shared;
use crate::proxy::upstream::cluster::{Cluster, UpstreamProtocol};
use crate::proxy::upstream::host::Host;
use crate::proxy::upstream::lb::{LbContext, PreviousPriorities, combine_hash, xxhash};
use crate::proxy::upstream::outlier::{self, Outcome};
use crate::proxy::upstream::pool::{self, PoolError, PooledConn, Sender};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Largest request body buffered for retries and mirrors (Envoy's default buffer limit).
const REPLAY_BUFFER_LIMIT: usize = 1024 * 1024;

/// Per-connection context shared by the requests of one downstream connection.
pub struct ConnCtx {
    pub peer: Peer,
    pub worker: usize,
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    /// The connection manager the connection was accepted with; used if its listener is
    /// removed while the connection lives (it then drains).
    pub initial: Arc<HttpConnectionManager>,
    pub state: Arc<crate::proxy::http::server::ConnState>,
    /// The client's TLS session when the chain terminates TLS: SNI, ALPN and the
    /// verified client certificate, for headers, logs and authorization.
    pub tls: Option<Arc<ConnTls>>,
    /// What chose the filter chain, to choose it again in a newer snapshot.
    pub key: ChainKey,
}

impl ConnCtx {
    /// The connection manager for a new request: the current snapshot's, so that config
    /// changes apply to open connections; the original one if the listener is gone.
    fn current_hcm(&self) -> (Arc<HttpConnectionManager>, bool) {
        let snap = self.shared.snapshot.load();
        match snap
            .listener(&self.listener)
            .and_then(|l| l.select(&self.key.detected(self.peer.local.port())))
            .and_then(|c| c.hcm())
        {
            Some(h) => (h.clone(), false),
            None => (self.initial.clone(), true),
        }
    }
}

/// The service function: never fails, every problem is an HTTP answer.
pub async fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnCtx>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let (hcm, removed) = cx.current_hcm();
    let mut log = RequestLog::start(&req, &cx);
    let grpc = local_reply::is_grpc_request(req.headers());
    cx.state.active.fetch_add(1, Ordering::Relaxed);
    cx.state.head_complete();
    let body_pending =
        req.version() <= Version::HTTP_11 && !http_body::Body::is_end_stream(req.body());
    let h2 = req.version() == Version::HTTP_2;
    let overload = &cx.shared.overload;
    // Envoy counts the stream towards the connection's limit before anything else,
    // then refuses it if the overload manager says so.
    if let Some(max) = hcm.max_requests_per_connection(overload.default_max_requests_per_connection)
    {
        let n = cx.state.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= max {
            if h2 {
                cx.state.send_goaway();
            } else {
                cx.state.close_after_response();
            }
            hcm.overload_counters(overload)
                .downstream_cx_max_requests_reached
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    let served = if overload.stop_accepting_requests() {
        hcm.overload_counters(overload)
            .downstream_rq_overload_close
            .fetch_add(1, Ordering::Relaxed);
        Err(LocalReply::OVERLOADED)
    } else {
        request_timeout(&hcm, serve(req, &cx, &hcm, &mut log)).await
    };
    let mut resp = match served {
        Ok(r) => r,
        Err(r) => {
            log.flags.set(r.flag);
            log.details = Some(r.reason);
            r.response()
        }
    };
    if overload.disable_keepalive() {
        disable_keepalive(&cx, &hcm, h2);
    }
    if grpc
        && resp.body().is_local()
        && resp
            .extensions()
            .get::<local_reply::FilterEncoded>()
            .is_none()
    {
        local_reply::into_grpc(&mut resp, log.method == Method::HEAD);
    }
    local_answer_framing(&mut resp, log.version, log.method == Method::HEAD);
    if closes_after_answer(body_pending, log.body_forwarded) {
        cx.state.close_after_response();
    }
    finalize_response(&mut resp, &hcm, &cx, &log, removed);
    log.status = resp.status().as_u16();
    resp.body_mut().finish = Some(Finish {
        log,
        cx: cx.clone(),
    });
    Ok(resp)
}

/// The overload manager's `disable_http_keepalive`: the connection drains after this
/// response (HTTP/1: `connection: close`; HTTP/2: GOAWAY), counted once per connection.
fn disable_keepalive(cx: &ConnCtx, hcm: &HttpConnectionManager, h2: bool) {
    let already = if h2 {
        cx.state.goaway.load(Ordering::Relaxed)
    } else {
        cx.state.close.load(Ordering::Relaxed)
    };
    if already {
        return;
    }
    if h2 {
        cx.state.send_goaway();
    } else {
        cx.state.close_after_response();
    }
    hcm.overload_counters(&cx.shared.overload)
        .downstream_cx_overload_disable_keepalive
        .fetch_add(1, Ordering::Relaxed);
}

/// Envoy's HTTP/1 rule for an answer given before the request was received whole (a
/// redirect, a direct response, a local error made at routing time): the rest of the
/// body would be read as the next request, so the connection closes after the answer,
/// which says `connection: close`. HTTP/2 streams end on their own.
fn closes_after_answer(http1_body_pending: bool, body_forwarded: bool) -> bool {
    http1_body_pending && !body_forwarded
}

async fn request_timeout(
    hcm: &HttpConnectionManager,
    fut: impl std::future::Future<Output = Result<Response<ResponseBody>, LocalReply>>,
) -> Result<Response<ResponseBody>, LocalReply> {
    match hcm.request_timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .unwrap_or(Err(LocalReply::REQUEST_TIMEOUT)),
    }
}

/// Runs when the response body has been sent (or abandoned): stats, access log,
/// connection activity.
pub struct Finish {
    log: RequestLog,
    cx: Arc<ConnCtx>,
}

impl Finish {
    /// The route timeout fired while the response body was streaming.
    pub(crate) fn timed_out(&mut self) {
        self.log.flags.set(Flags::UT);
    }

    /// The stream idle timeout fired while the response body was streaming.
    pub(crate) fn stream_idle_timed_out(&mut self) {
        self.log.flags.set(Flags::SI);
        self.log.details = Some(LocalReply::STREAM_IDLE_TIMEOUT.reason);
        self.cx
            .shared
            .stats
            .downstream_rq_idle_timeout
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn done(&mut self, complete: bool, bytes: u64) {
        self.log.bytes_sent = bytes;
        if !complete && self.log.status != 0 && !self.log.flags.has(Flags::UT | Flags::SI) {
            self.log.flags.set(Flags::DC);
        }
        self.cx.state.active.fetch_sub(1, Ordering::Relaxed);
        self.cx.state.touch();
        if let Some(span) = self.log.span.take() {
            span.finish(&self.log, &self.cx.shared.stats, self.cx.worker);
        }
        self.cx.shared.record(&self.log, self.cx.worker);
    }
}

/// What Envoy's codecs do to an answer the gateway gave itself: without a body HTTP/2
/// sends no `content-length`, HTTP/1 `content-length: 0`, but none to HEAD (where Envoy
/// writes `transfer-encoding: chunked`, which hyper does not).
fn local_answer_framing(resp: &mut Response<ResponseBody>, version: Version, head: bool) {
    if resp.body().is_local()
        && http_body::Body::is_end_stream(resp.body())
        && (version == Version::HTTP_2 || head)
    {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
}

fn finalize_response(
    resp: &mut Response<ResponseBody>,
    hcm: &HttpConnectionManager,
    cx: &ConnCtx,
    log: &RequestLog,
    draining: bool,
) {
    let h = resp.headers_mut();
    match hcm.server_header {
        ServerHeader::Overwrite => {
            h.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !h.contains_key(header::SERVER) {
                h.insert(header::SERVER, hcm.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
    if hcm.always_set_request_id_in_response
        && let Some(id) = &log.request_id
    {
        h.insert(X_REQUEST_ID.clone(), id.clone());
    }
    if draining
        || cx.shared.draining.load(Ordering::Relaxed)
        || cx.state.close.load(Ordering::Relaxed)
    {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Everything between the request line and the response headers.
async fn serve(
    mut req: Request<Incoming>,
    cx: &ConnCtx,
    hcm: &Arc<HttpConnectionManager>,
    log: &mut RequestLog,
) -> Result<Response<ResponseBody>, LocalReply> {
    // Codec-level checks Envoy makes before routing.
    match req.version() {
        Version::HTTP_10 | Version::HTTP_09 if !hcm.accept_http_10 => {
            return Err(LocalReply::HTTP10);
        }
        _ => {}
    }
    if req.version() <= Version::HTTP_11 {
        // What the HTTP/1 codec repaired silently: a `#fragment` in the request target,
        // Content-Length next to Transfer-Encoding. Envoy's codec rejects both.
        let seen = cx.state.head_flags.swap(0, Ordering::Relaxed);
        let both = head_scan::CONTENT_LENGTH | head_scan::TRANSFER_ENCODING;
        if seen & both == both {
            cx.state.close_after_response();
            return Err(LocalReply::CONTENT_LENGTH_AND_CHUNKED);
        }
        if seen & head_scan::FRAGMENT != 0 {
            cx.state.close_after_response();
            return Err(LocalReply::BAD_REQUEST);
        }
        // An absolute-form target's scheme becomes `:scheme`: only http, and https over
        // TLS, are believed (Envoy's codec).
        if let Some(scheme) = req.uri().scheme_str() {
            let https = scheme.eq_ignore_ascii_case("https");
            if !https && !scheme.eq_ignore_ascii_case("http") {
                cx.state.close_after_response();
                return Err(LocalReply::INVALID_SCHEME);
            }
            if https && !cx.peer.https {
                cx.state.close_after_response();
                return Err(LocalReply::HTTPS_IN_PLAINTEXT);
            }
        }
    }
    let h = req.headers();
    if h.len() > hcm.max_headers_count {
        return Err(LocalReply::HEADERS_TOO_LARGE);
    }
    if hcm.reject_underscore_headers && h.keys().any(|k| k.as_str().contains('_')) {
        return Err(LocalReply::BAD_REQUEST);
    }
    if hcm.drop_underscore_headers {
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            req.headers_mut().remove(n);
        }
    }
    // The authority: :authority (HTTP/2, absolute-form) or Host.
    let mut authority = authority_of(&req);
    if authority.is_none() {
        if req.version() == Version::HTTP_10
            && let Some(d) = &hcm.default_host_for_http_10
        {
            authority = Some(d.clone());
        } else {
            return Err(LocalReply::MISSING_HOST);
        }
    }
    let mut authority = authority.unwrap_or(HeaderValue::from_static(""));
    if hcm.strip_port != StripPort::None {
        let stripped = crate::proxy::route::table::strip_port(authority.as_bytes());
        if stripped.len() != authority.len() {
            let port_matches = || {
                std::str::from_utf8(&authority.as_bytes()[stripped.len() + 1..])
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok())
                    == Some(cx.peer.local.port())
            };
            if hcm.strip_port == StripPort::Any || port_matches() {
                authority = HeaderValue::from_bytes(stripped).unwrap_or(authority);
            }
        }
    }

    // Upgrade (WebSocket) requests: allowed by the connection manager or answered 403.
    let upgrade = requested_upgrade(req.headers());

    // Path handling.
    let mut path_and_query: Option<String> = None;
    {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let (path, query) = split_query(pq);
        let mut new_path: Option<String> = None;
        if hcm.escaped_slashes != EscapedSlashes::Keep && normalize::has_escaped_slash(path) {
            match hcm.escaped_slashes {
                EscapedSlashes::Reject => return Err(LocalReply::PATH_NORMALIZATION_FAILED),
                EscapedSlashes::UnescapeAndRedirect => {
                    let p = normalize::unescape_slashes(path);
                    let loc = format!("{p}{}", query.map(|q| format!("?{q}")).unwrap_or_default());
                    let mut r = Response::new(ResponseBody::empty());
                    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                    if let Ok(v) = HeaderValue::from_str(&loc) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    return Ok(r);
                }
                _ => new_path = Some(normalize::unescape_slashes(path)),
            }
        }
        if hcm.normalize_path {
            let current = new_path.as_deref().unwrap_or(path);
            match normalize::normalize(current) {
                Err(_) => return Err(LocalReply::PATH_NORMALIZATION_FAILED),
                Ok(Some(p)) => new_path = Some(p),
                Ok(None) => {}
            }
        }
        if hcm.merge_slashes
            && let Some(p) = normalize::merge_slashes(new_path.as_deref().unwrap_or(path))
        {
            new_path = Some(p);
        }
        if let Some(p) = new_path {
            path_and_query = Some(match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            });
        }
    }
    if let Some(pq) = &path_and_query {
        set_path(&mut req, pq);
    }

    let remote = mutate_request_headers(req.headers_mut(), hcm, &cx.peer, cx.tls.as_deref());
    // Envoy's downstream remote address for the request: the connection's, or the one
    // `x-forwarded-for` names past the trusted hops (without a port).
    if remote != cx.peer.remote.ip().to_canonical() {
        log.downstream_remote = std::net::SocketAddr::new(remote, 0);
    }
    log.request_id = req.headers().get(&X_REQUEST_ID).cloned();
    // Envoy logs `%REQ(X-FORWARDED-FOR)%` as the connection manager left it: with the
    // address it appended.
    if cx.shared.access_log.mode != crate::proxy::access_log::AccessLogMode::Off {
        log.xff = req
            .headers()
            .get(&crate::proxy::http::request::X_FORWARDED_FOR)
            .cloned();
    }

    // ACME HTTP-01 challenges are answered before routing.
    if req
        .uri()
        .path()
        .starts_with(crate::acme::challenge::HTTP01_PREFIX)
        && let Some(answer) = cx.shared.tls.challenges.http01_for_path(req.uri().path())
    {
        cx.shared
            .stats
            .acme_http01_answers
            .fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(ResponseBody::full(bytes::Bytes::from(answer)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }

    // Route.
    let table: &RouteTable = &hcm.routes;
    // Every client is external: headers only internal clients may send are removed.
    for name in &table.internal_only_headers {
        req.headers_mut().remove(name);
    }
    let vhost = table.virtual_host(authority.as_bytes());
    // `require_tls` on a plain request: the answer is a redirect to https, made after
    // the filters (in Envoy it is a route of its own, the router's to answer).
    let tls_redirect = vhost.is_some_and(|v| {
        v.require_tls
            && req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .is_none_or(|p| p.as_bytes() != b"https")
    });
    let route = match vhost {
        Some(v) if !tls_redirect => {
            let random: u64 = rand::random();
            v.route(&request_view(&req, &authority, cx.peer.https), random)
        }
        _ => None,
    };
    if let Some(r) = route {
        log.route_name = Some(r.name.clone());
    }
    // Tracing starts once the route (and its decorator) is known, as in Envoy.
    if let Some(t) = &hcm.tracing {
        let started = std::time::SystemTime::now() - log.start.elapsed();
        // A cheap copy (shared bytes): the headers are changed while the path is read.
        let uri = req.uri().clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let decorator = route.and_then(|r| r.decorator.as_ref());
        log.span =
            crate::proxy::trace::start(t, req.headers_mut(), &authority, decorator, path, started);
        log.request_id = req.headers().get(&X_REQUEST_ID).cloned();
    }

    // The HTTP filters, in configured order; the router is last.
    let mut metadata = DynamicMetadata::default();
    let mut state = http::Extensions::new();
    if !hcm.filters.is_empty() {
        let answered = request_filters(
            &mut req,
            &authority,
            remote,
            vhost.zip(route),
            cx,
            hcm,
            log,
            &mut metadata,
            &mut state,
        )
        .await;
        if let Some(span) = log.span.as_mut() {
            span.read_metadata(&metadata);
        }
        if let Some(resp) = answered {
            return Ok(resp);
        }
    }
    if tls_redirect {
        let mut resp = https_redirect(&req, &authority);
        response_filters(&hcm.filters, &mut resp, &metadata, &mut state);
        return Ok(resp);
    }
    let (Some(vhost), Some(route)) = (vhost, route) else {
        return Err(LocalReply::NO_ROUTE);
    };

    let mut resp = match &route.action {
        Action::Direct(d) => {
            let mut resp = Response::new(match &d.body {
                Some(b) => ResponseBody::full(b.clone()),
                None => ResponseBody::empty(),
            });
            *resp.status_mut() = d.status;
            let len = d.body.as_ref().map_or(0, |b| b.len());
            if len > 0 {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            // RFC 7231 7.1.2: Envoy gives a 201 or 3xx direct response the request's own
            // URL as its location.
            if (d.status == StatusCode::CREATED || d.status.is_redirection())
                && let Ok(v) = HeaderValue::from_str(&request_url(&req, &authority, cx.peer.https))
            {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            let fcx = FormatContext {
                request: Some((req.headers(), request_line(&req, &authority, cx.peer.https))),
                status: Some(resp.status().as_u16()),
                ..format_cx(cx, log.start, log.version, log.downstream_remote)
            };
            apply_response_mutations(resp.headers_mut(), table, vhost, route, None, &fcx);
            resp
        }
        Action::Redirect(r) => {
            let mut resp = redirect_response(r, &req, &authority, route, cx.peer.https);
            let fcx = FormatContext {
                request: Some((req.headers(), request_line(&req, &authority, cx.peer.https))),
                status: Some(resp.status().as_u16()),
                ..format_cx(cx, log.start, log.version, log.downstream_remote)
            };
            apply_response_mutations(resp.headers_mut(), table, vhost, route, None, &fcx);
            resp
        }
        Action::Route(ra) => {
            if upgrade.is_some() {
                let enabled = match upgrade.as_ref().and_then(|u| {
                    ra.upgrades.iter().find(|ru| {
                        ru.upgrade_type
                            .as_bytes()
                            .eq_ignore_ascii_case(u.as_bytes())
                    })
                }) {
                    Some(ru) => ru.enabled,
                    None => upgrade.as_ref().is_some_and(|u| {
                        hcm.upgrades
                            .iter()
                            .any(|t| t.as_bytes().eq_ignore_ascii_case(u.as_bytes()))
                    }),
                };
                if !enabled {
                    return Err(LocalReply::UPGRADE_FAILED);
                }
            }
            // The stream idle timeout: the route's, else the connection manager's.
            let idle = match ra.idle_timeout {
                Some(t) if t.is_zero() => None,
                Some(t) => Some(t),
                None => hcm.stream_idle_timeout,
            };
            let activity = idle.map(|_| {
                Arc::new(StreamActivity::new(http_body::Body::is_end_stream(
                    req.body(),
                )))
            });
            let mut forwarding = Box::pin(forward(
                req,
                cx,
                hcm,
                table,
                vhost,
                route,
                ra,
                authority,
                upgrade,
                log,
                activity.as_ref(),
                idle,
            ));
            let forwarded = match (idle, &activity) {
                (Some(t), Some(a)) => tokio::select! {
                    r = &mut forwarding => Some(r),
                    _ = a.idle_for(t) => None,
                },
                _ => Some(forwarding.as_mut().await),
            };
            drop(forwarding);
            let forwarded = match (forwarded, &activity) {
                (Some(r), _) => r,
                (None, activity) => {
                    // Nothing moved before the response started: Envoy's local answer,
                    // and the connection closes if the request was not received whole.
                    let complete = activity.as_ref().is_some_and(|a| a.request_complete());
                    if !complete {
                        cx.state.close_after_response();
                    }
                    cx.shared
                        .stats
                        .downstream_rq_idle_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(LocalReply::stream_idle_timeout(complete));
                }
            };
            match forwarded {
                Ok(r) => r,
                Err(reply) => {
                    // The router's own answers carry the route's response headers.
                    log.flags.set(reply.flag);
                    log.details = Some(reply.reason);
                    let mut r = reply.response();
                    // The request went to the router: its headers are no longer at hand.
                    let fcx = FormatContext {
                        status: Some(r.status().as_u16()),
                        cluster: log.cluster.as_deref(),
                        cluster_observability_name: log.cluster_observability_name.as_deref(),
                        upstream: log.upstream_host,
                        ..format_cx(cx, log.start, log.version, log.downstream_remote)
                    };
                    apply_response_mutations(r.headers_mut(), table, vhost, route, None, &fcx);
                    r
                }
            }
        }
    };
    response_filters(&hcm.filters, &mut resp, &metadata, &mut state);
    Ok(resp)
}

/// The request phase of the connection manager's filters: `Some` with the answer when
/// a filter answers locally (the route's response headers added, and the response phase
/// run for the filters that saw the request).
#[allow(clippy::too_many_arguments)]
async fn request_filters(
    req: &mut Request<Incoming>,
    authority: &HeaderValue,
    remote: std::net::IpAddr,
    routed: Option<(&VirtualHost, &Route)>,
    cx: &ConnCtx,
    hcm: &HttpConnectionManager,
    log: &mut RequestLog,
    metadata: &mut DynamicMetadata,
    state: &mut http::Extensions,
) -> Option<Response<ResponseBody>> {
    for (i, f) in hcm.filters.iter().enumerate() {
        let mut fcx = RequestCx {
            req,
            authority,
            remote,
            vhost: routed.map(|r| r.0),
            route: routed.map(|r| r.1),
            conn: cx,
            log,
            metadata,
            state,
        };
        let verdict = match f.on_request(&mut fcx) {
            Step::Done(v) => v,
            Step::Wait(fut) => fut.await,
        };
        if let Verdict::Respond(mut resp) = verdict {
            // A local reply carries the route's response headers; an answer the filter
            // encoded itself (a CORS preflight) does not.
            let encoded = resp
                .extensions()
                .get::<local_reply::FilterEncoded>()
                .is_some();
            if let Some((vhost, route)) = routed.filter(|_| !encoded) {
                let fcx = FormatContext {
                    request: Some((req.headers(), request_line(req, authority, cx.peer.https))),
                    status: Some(resp.status().as_u16()),
                    ..format_cx(cx, log.start, log.version, log.downstream_remote)
                };
                apply_response_mutations(resp.headers_mut(), &hcm.routes, vhost, route, None, &fcx);
            }
            response_filters(&hcm.filters[..=i], &mut resp, metadata, state);
            return Some(*resp);
        }
    }
    None
}

/// The response phase of `filters`, in reverse order.
fn response_filters(
    filters: &[Arc<dyn HttpFilter>],
    resp: &mut Response<ResponseBody>,
    metadata: &DynamicMetadata,
    state: &mut http::Extensions,
) {
    for f in filters.iter().rev() {
        f.on_response(&mut ResponseCx {
            resp,
            metadata,
            state,
        });
    }
}

/// `:authority` of HTTP/2 and absolute-form requests, else Host.
fn authority_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers().get(header::HOST).cloned()
}

fn requested_upgrade(h: &HeaderMap) -> Option<HeaderValue> {
    let conn = h.get(header::CONNECTION)?;
    let has_upgrade_token = conn
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !has_upgrade_token {
        return None;
    }
    h.get(header::UPGRADE).cloned()
}

pub fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

fn set_path<B>(req: &mut Request<B>, pq: &str) {
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = pq.parse() {
        parts.path_and_query = Some(p);
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// Envoy's header mutation order: most specific first (so the route configuration's
/// wins), or the reverse with `most_specific_header_mutations_wins`.
fn apply_request_mutations(
    h: &mut HeaderMap,
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    wc: Option<&WeightedCluster>,
    fcx: &FormatContext<'_>,
) {
    let levels = [
        wc.map(|w| &w.request_headers),
        Some(&route.request_headers),
        Some(&vhost.request_headers),
        Some(&table.request_headers),
    ];
    apply_levels(
        h,
        &levels,
        table.most_specific_header_mutations_wins,
        fcx,
        false,
    );
}

fn response_levels<'a>(
    table: &'a RouteTable,
    vhost: &'a VirtualHost,
    route: &'a Route,
    wc: Option<&'a WeightedCluster>,
) -> [Option<&'a HeaderMutations>; 4] {
    [
        wc.map(|w| &w.response_headers),
        Some(&route.response_headers),
        Some(&vhost.response_headers),
        Some(&table.response_headers),
    ]
}

fn apply_response_mutations(
    h: &mut HeaderMap,
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    wc: Option<&WeightedCluster>,
    fcx: &FormatContext<'_>,
) {
    let levels = response_levels(table, vhost, route, wc);
    apply_levels(
        h,
        &levels,
        table.most_specific_header_mutations_wins,
        fcx,
        true,
    );
}

/// Whether the response mutations read the request (`%REQ()%`): its headers are then
/// kept after they went upstream.
fn response_reads_request(
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    wc: Option<&WeightedCluster>,
) -> bool {
    response_levels(table, vhost, route, wc)
        .iter()
        .flatten()
        .any(|m| m.reads_request())
}

fn apply_levels(
    h: &mut HeaderMap,
    levels: &[Option<&HeaderMutations>; 4],
    reverse: bool,
    fcx: &FormatContext<'_>,
    response: bool,
) {
    if reverse {
        for m in levels.iter().rev().flatten() {
            m.apply(h, fcx, response);
        }
    } else {
        for m in levels.iter().flatten() {
            m.apply(h, fcx, response);
        }
    }
}

/// What header formats know about the request and its connection; the upstream, the
/// request kept for response formats and the status are filled in where known.
fn format_cx(
    cx: &ConnCtx,
    started: Instant,
    version: Version,
    remote: std::net::SocketAddr,
) -> FormatContext<'_> {
    FormatContext {
        remote,
        direct: cx.peer.direct,
        local: cx.peer.local,
        tls: cx.tls.as_deref(),
        version,
        started,
        cluster: None,
        cluster_observability_name: None,
        upstream: None,
        request: None,
        line: None,
        status: None,
    }
}

/// The request line of a request still at hand, for `%REQ(:PATH)%` and friends.
/// What route and fault conditions see: the headers plus Envoy's pseudo-headers, with
/// the authority the connection manager settled on (port stripped, HTTP/1.0 default).
pub(crate) fn request_view<'a, B>(
    req: &'a Request<B>,
    authority: &'a HeaderValue,
    tls: bool,
) -> RequestView<'a> {
    RequestView::new(
        req.method(),
        authority.as_bytes(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.uri().scheme_str(),
        tls,
        req.headers(),
    )
}

fn request_line<'a, B>(
    req: &'a Request<B>,
    authority: &'a HeaderValue,
    https: bool,
) -> RequestLine<'a> {
    RequestLine {
        method: req.method(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        authority: authority.as_bytes(),
        scheme: req.uri().scheme_str(),
        https,
    }
}

/// Envoy's answer on a virtual host that requires TLS: 301 to the same host (port
/// included) and path over `https`. Empty answers set no `content-length`: over HTTP/1
/// the codec writes `content-length: 0`, over HTTP/2 nothing, as Envoy's codecs do.
fn https_redirect(req: &Request<Incoming>, authority: &HeaderValue) -> Response<ResponseBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut location = Vec::with_capacity(8 + authority.len() + pq.len());
    location.extend_from_slice(b"https://");
    location.extend_from_slice(authority.as_bytes());
    location.extend_from_slice(pq.as_bytes());
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_bytes(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The scheme a redirect keeps: the client's, as `x-forwarded-proto` says, else the
/// connection's.
fn request_scheme(req: &Request<Incoming>, https: bool) -> &str {
    req.headers()
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if https { "https" } else { "http" })
}

/// `scheme://authority/path?query` of the request.
fn request_url(req: &Request<Incoming>, authority: &HeaderValue, https: bool) -> String {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    format!(
        "{}://{}{pq}",
        request_scheme(req, https),
        authority.to_str().unwrap_or("")
    )
}

fn redirect_response(
    r: &Redirect,
    req: &Request<Incoming>,
    authority: &HeaderValue,
    route: &Route,
    https: bool,
) -> Response<ResponseBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = redirect_location(
        r,
        request_scheme(req, https),
        authority.to_str().unwrap_or(""),
        pq,
        &route.matcher,
    );
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The `location` of a redirect route's answer to a request with this scheme (the
/// client's, see [`request_scheme`]), authority and path: Envoy's `RedirectAction`.
pub fn redirect_location(
    r: &Redirect,
    request_scheme: &str,
    authority: &str,
    pq: &str,
    matcher: &crate::proxy::route::RouteMatch,
) -> String {
    let scheme: &str = r.scheme.as_deref().unwrap_or(request_scheme);
    let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
    let host: String = match &r.host {
        Some(h) => h.to_string(),
        None => {
            let host = authority;
            let stripped =
                std::str::from_utf8(crate::proxy::route::table::strip_port(host.as_bytes()))
                    .unwrap_or(host);
            let mut remove_port = !port.is_empty();
            if stripped.len() != host.len() && scheme != request_scheme {
                let req_port = &host[stripped.len()..];
                remove_port |= (request_scheme == "https" && req_port == ":443")
                    || (request_scheme == "http" && req_port == ":80");
            }
            if remove_port {
                stripped.to_string()
            } else {
                host.to_string()
            }
        }
    };
    let (path, query) = split_query(pq);
    let mut final_path = match &r.path {
        PathRedirect::Keep => path.to_string(),
        PathRedirect::Path {
            path: p,
            has_query: true,
        } => p.to_string(),
        PathRedirect::Path { path: p, .. } => p.to_string(),
        PathRedirect::Prefix(p) => rewrite_prefix(path, matcher, p),
        PathRedirect::Regex(re, sub) => re.replace_all(path, sub.as_str()).into_owned(),
    };
    let path_has_query = matches!(
        r.path,
        PathRedirect::Path {
            has_query: true,
            ..
        }
    );
    if !path_has_query
        && !r.strip_query
        && let Some(q) = query
    {
        final_path.push('?');
        final_path.push_str(q);
    }
    format!("{scheme}://{host}{port}{final_path}")
}

/// Replaces the route's matched prefix with `new` (Envoy's prefix_rewrite).
pub fn rewrite_prefix(path: &str, m: &crate::proxy::route::RouteMatch, new: &str) -> String {
    use crate::proxy::route::PathMatch;
    let matched_len = match &m.path {
        PathMatch::Prefix(p) | PathMatch::Separated(p) => p.len().min(path.len()),
        PathMatch::Exact(_) => path.len(),
        PathMatch::Regex(_) => 0,
    };
    let mut s = String::with_capacity(new.len() + path.len());
    s.push_str(new);
    s.push_str(&path[matched_len..]);
    s
}

fn choose_cluster(ra: &RouteAction) -> (&ClusterRef, Option<&WeightedCluster>) {
    match &ra.target {
        ClusterTarget::Single(c) => (c, None),
        ClusterTarget::Weighted { clusters, total } => {
            let mut point = rand::random_range(0..*total);
            for wc in clusters {
                if point < wc.weight as u64 {
                    return (&wc.cluster, Some(wc));
                }
                point -= wc.weight as u64;
            }
            let last = &clusters[clusters.len() - 1];
            (&last.cluster, Some(last))
        }
    }
}

/// The request's hash from the route's hash policies (None: no policy produced one).
fn request_hash(
    ra: &RouteAction,
    req: &RequestView<'_>,
    peer: &Peer,
    generated_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    let h = req.headers;
    let mut acc: Option<u64> = None;
    for p in &ra.hash_policy {
        let hv: Option<u64> = match &p.kind {
            HashPolicyKind::Header(HeaderKey::Name(name)) => {
                let mut vals = h.get_all(name).iter();
                match (vals.next(), vals.next()) {
                    (None, _) => None,
                    (Some(v), None) => Some(xxhash(v.as_bytes())),
                    (Some(first), Some(second)) => {
                        // Several values: Envoy hashes them sorted and joined.
                        let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
                        all.extend(vals.map(|v| v.as_bytes()));
                        all.sort();
                        Some(xxhash(&all.concat()))
                    }
                }
            }
            HashPolicyKind::Header(key) => req.pseudo(key).map(|v| xxhash(&v)),
            HashPolicyKind::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match cookie_value(h, name) {
                Some(v) => Some(xxhash(v.as_bytes())),
                None => match ttl {
                    Some(ttl) => {
                        let value = generated_cookie_value(peer);
                        let hv = xxhash(value.as_bytes());
                        *generated_cookie =
                            set_cookie(name, &value, *ttl, path.as_deref(), attributes);
                        Some(hv)
                    }
                    None => None,
                },
            },
            HashPolicyKind::SourceIp => Some(xxhash(
                peer.remote.ip().to_canonical().to_string().as_bytes(),
            )),
            HashPolicyKind::Query(name) => req.query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == &**name).then(|| xxhash(v.as_bytes()))
            }),
        };
        if let Some(hv) = hv {
            acc = Some(combine_hash(acc, hv));
            if p.terminal {
                break;
            }
        }
    }
    acc
}

/// The value of cookie `name`, without the double quotes it may be wrapped in (RFC 6265),
/// as Envoy reads it; an empty value counts as absent.
fn cookie_value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for v in h.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            let part = part.trim();
            if let Some((k, val)) = part.split_once('=')
                && k == name
            {
                let val = match val.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) => inner,
                    None => val,
                };
                return (!val.is_empty()).then_some(val);
            }
        }
    }
    None
}

/// The value of a generated hash-policy cookie, as Envoy's router makes it: the hash of
/// the connection's remote and local addresses, so that every request of a connection
/// gets the same cookie (and the same upstream host).
fn generated_cookie_value(peer: &Peer) -> String {
    format!(
        "{:016x}",
        xxhash(format!("{}{}", peer.remote, peer.local).as_bytes())
    )
}

/// `set-cookie` for a generated cookie, in Envoy's form:
/// `name="value"; Max-Age=N; Path=P; attributes; HttpOnly`, without `Max-Age` for a zero
/// ttl (a session cookie).
fn set_cookie(
    name: &str,
    value: &str,
    ttl: Duration,
    path: Option<&str>,
    attributes: &[(Box<str>, Box<str>)],
) -> Option<HeaderValue> {
    let mut c = format!("{name}=\"{value}\"");
    if ttl.as_secs() > 0 {
        c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(p) = path {
        c.push_str("; Path=");
        c.push_str(p);
    }
    for (n, v) in attributes {
        c.push_str("; ");
        c.push_str(n);
        if !v.is_empty() {
            c.push('=');
            c.push_str(v);
        }
    }
    c.push_str("; HttpOnly");
    HeaderValue::from_str(&c).ok()
}

/// Why one upstream attempt did not produce a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptError {
    NoHealthy,
    Pool(PoolError),
    Reset,
    PerTryTimeout,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut req: Request<Incoming>,
    cx: &ConnCtx,
    hcm: &Arc<HttpConnectionManager>,
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    ra: &RouteAction,
    authority: HeaderValue,
    upgrade: Option<HeaderValue>,
    log: &mut RequestLog,
    activity: Option<&Arc<StreamActivity>>,
    idle: Option<Duration>,
) -> Result<Response<ResponseBody>, LocalReply> {
    let (cref, wc) = choose_cluster(ra);
    log.cluster = Some(cref.name.clone());
    log.cluster_observability_name = cref.cluster.as_ref().map(|c| c.observability_name.clone());
    let Some(cluster) = cref.cluster.clone() else {
        let mut r = LocalReply::CLUSTER_NOT_FOUND;
        r.status = StatusCode::from_u16(ra.cluster_not_found_status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Err(r);
    };
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    // Request line and headers for the upstream.
    let (mut parts, body) = req.into_parts();
    log.body_forwarded = true;
    let original_uri = parts.uri.clone();
    let pq = original_uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (path, query) = split_query(pq);
    // `:scheme` for HTTP/2 upstreams, from the request before its target is rewritten.
    let upstream_scheme = if cluster.protocol == UpstreamProtocol::Http1 {
        "http"
    } else {
        RequestView::new(
            &parts.method,
            authority.as_bytes(),
            pq,
            original_uri.scheme_str(),
            cx.peer.https,
            &parts.headers,
        )
        .upstream_scheme()
    };
    let mut generated_cookie = None;
    let hash = if cluster.lb.uses_hash() {
        // Envoy chooses the host before the route's rewrites and header changes.
        let view = RequestView::new(
            &parts.method,
            authority.as_bytes(),
            pq,
            original_uri.scheme_str(),
            cx.peer.https,
            &parts.headers,
        );
        request_hash(ra, &view, &cx.peer, &mut generated_cookie)
    } else {
        None
    };
    let new_path = if let Some(p) = &ra.prefix_rewrite {
        Some(rewrite_prefix(path, &route.matcher, p))
    } else {
        ra.regex_rewrite
            .as_ref()
            .map(|(re, sub)| re.replace_all(path, sub.as_str()).into_owned())
    };
    if let Some(np) = new_path {
        if !hcm.suppress_envoy_headers {
            parts.headers.insert(
                X_ENVOY_ORIGINAL_PATH.clone(),
                HeaderValue::from_str(pq).unwrap_or(HeaderValue::from_static("/")),
            );
        }
        let full = match query {
            Some(q) => format!("{np}?{q}"),
            None => np,
        };
        if let Ok(p) = full.parse::<http::uri::PathAndQuery>() {
            let mut up = http::uri::Parts::default();
            up.path_and_query = Some(p);
            if let Ok(u) = Uri::from_parts(up) {
                parts.uri = u;
            }
        }
    } else if parts.uri.authority().is_some() {
        // Absolute-form or HTTP/2: send origin-form upstream.
        let mut up = http::uri::Parts::default();
        up.path_and_query = parts.uri.path_and_query().cloned();
        if let Ok(u) = Uri::from_parts(up) {
            parts.uri = u;
        }
    }
    let mut host_value = authority.clone();
    let mut auto_host = false;
    let mut rewritten = false;
    match &ra.host_rewrite {
        HostRewrite::None => {}
        HostRewrite::Literal(v) => {
            host_value = v.clone();
            rewritten = true;
        }
        HostRewrite::Auto => auto_host = true,
        HostRewrite::Header(n) => {
            if let Some(v) = parts.headers.get(n).filter(|v| !v.is_empty()) {
                host_value = v.clone();
                rewritten = true;
            }
        }
        HostRewrite::PathRegex(re, sub) => {
            if let Ok(v) = HeaderValue::from_str(&re.replace_all(path, sub.as_str())) {
                host_value = v;
                rewritten = true;
            }
        }
    }
    if let Some(v) = wc.and_then(|w| w.host_rewrite.clone()) {
        host_value = v;
        rewritten = true;
    }
    // Envoy keeps the host it replaced, unless the router suppresses its headers.
    if rewritten && !hcm.suppress_envoy_headers {
        parts
            .headers
            .insert(X_ENVOY_ORIGINAL_HOST.clone(), authority.clone());
    }
    if ra.append_x_forwarded_host && host_value != authority {
        parts
            .headers
            .append(X_FORWARDED_HOST.clone(), authority.clone());
    }
    let (started, version, remote) = (log.start, log.version, log.downstream_remote);
    {
        let line = RequestLine {
            method: &parts.method,
            path: pq,
            authority: authority.as_bytes(),
            scheme: original_uri.scheme_str(),
            https: cx.peer.https,
        };
        let fcx = FormatContext {
            cluster: Some(&cref.name),
            cluster_observability_name: cref.cluster.as_deref().map(|c| &*c.observability_name),
            line: Some(line),
            ..format_cx(cx, started, version, remote)
        };
        apply_request_mutations(&mut parts.headers, table, vhost, route, wc, &fcx);
    }
    // Response formats reading the request see it as it went upstream.
    let request_for_response =
        response_reads_request(table, vhost, route, wc).then(|| parts.headers.clone());
    let retry = ra.retry.as_deref();
    let timeout = ra.timeout;
    let per_try = retry.and_then(|r| r.per_try_timeout);
    if !hcm.suppress_envoy_headers
        && let Some(v) = &ra.expected_timeout_header
    {
        parts
            .headers
            .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), v.clone());
    }
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }

    // Body: streamed, unless retries or mirrors need to replay it.
    let has_body = !http_body::Body::is_end_stream(&body);
    let needs_replay = has_body
        && (retry.is_some_and(|r| r.num_retries > 0) || !ra.mirrors.is_empty())
        && upgrade.is_none();
    let mut body = if !has_body {
        drop(body);
        // Envoy's HTTP/1 codec sends `content-length: 0` for bodyless requests except
        // GET, HEAD, DELETE, CONNECT and TRACE.
        let m = &parts.method;
        if *m != Method::GET
            && *m != Method::HEAD
            && *m != Method::DELETE
            && *m != Method::CONNECT
            && *m != Method::TRACE
            && upgrade.is_none()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        RequestBody::Empty
    } else if needs_replay {
        Box::pin(buffer_up_to(body, REPLAY_BUFFER_LIMIT, activity.cloned()))
            .await
            .map_err(|_| LocalReply::BAD_REQUEST)?
    } else {
        RequestBody::Stream(body, activity.cloned())
    };
    if let RequestBody::Full(Some(b)) = &body {
        log.bytes_received = b.len() as u64;
    }
    let replayable = matches!(body, RequestBody::Full(_) | RequestBody::Empty);

    // Mirrors: fire and forget, with the Host suffixed `-shadow`.
    for m in &ra.mirrors {
        if let Some(mc) = m.cluster.cluster.clone()
            && crate::proxy::http::filters::fault::roll(m.per_million)
            && replayable
        {
            let mut h = parts.headers.clone();
            let shadow_host = if m.append_shadow_suffix {
                shadow_host(&host_value)
            } else {
                host_value.clone()
            };
            h.insert(header::HOST, shadow_host);
            let b = match &body {
                RequestBody::Full(Some(b)) => RequestBody::Full(Some(b.clone())),
                _ => RequestBody::Empty,
            };
            let mut mreq = Request::new(b);
            *mreq.method_mut() = parts.method.clone();
            *mreq.uri_mut() = parts.uri.clone();
            *mreq.headers_mut() = h;
            let worker = cx.worker;
            tokio::spawn(async move {
                let _ = shadow(mc, mreq, worker).await;
            });
        }
    }

    let deadline = timeout.map(|t| Instant::now() + t);
    let max_attempts = 1 + retry.map_or(0, |r| r.num_retries);
    let mut tried: smallvec::SmallVec<[SocketAddr; 4]> = smallvec::SmallVec::new();
    let mut attempt = 0u32;
    let mut retry_slot = None;
    let mut previous_priorities = retry
        .and_then(|r| r.previous_priorities)
        .map(PreviousPriorities::new);
    loop {
        attempt += 1;
        let last_possible = attempt >= max_attempts || !replayable || upgrade.is_some();
        let mut headers = if last_possible {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        if vhost.include_request_attempt_count {
            headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
        }
        let attempt_body = match &body {
            RequestBody::Full(Some(b)) => RequestBody::Full(Some(b.clone())),
            RequestBody::Full(None) | RequestBody::Empty => RequestBody::Empty,
            _ => std::mem::replace(&mut body, RequestBody::Empty),
        };
        let mut upreq = Request::new(attempt_body);
        *upreq.method_mut() = parts.method.clone();
        *upreq.uri_mut() = parts.uri.clone();
        *upreq.headers_mut() = headers;
        let upstream_span = log
            .span
            .as_deref()
            .and_then(|span| span.inject(upreq.headers_mut()));
        let avoid: &[SocketAddr] = if retry.is_some_and(|r| r.avoid_previous_hosts) {
            &tried
        } else {
            &[]
        };
        let exclude_priorities = previous_priorities
            .as_mut()
            .map_or(0, |p| p.exclusion(&cluster.endpoints()));
        // The host this attempt goes to, if one is chosen.
        log.upstream_host = None;
        let result = attempt_once(
            &cluster,
            upreq,
            cx,
            hcm,
            LbContext {
                hash,
                avoid,
                exclude_priorities,
            },
            deadline,
            per_try,
            &host_value,
            auto_host,
            upstream_scheme,
            log,
        )
        .await;
        if let (Some(us), Some(span)) = (upstream_span, log.span.as_deref()) {
            finish_upstream_span(span, us, &result, &cluster, log, cx);
        }
        let (status, retriable_outcome) = match &result {
            Ok((resp, _, _)) => (
                Some(resp.status()),
                retry.is_some_and(|r| retriable_status(r, resp)),
            ),
            Err(e) => (None, retry.is_some_and(|r| retriable_error(r, *e))),
        };
        if let Some(h) = log.upstream_host {
            if !tried.contains(&h) {
                tried.push(h);
            }
            if let Some(p) = previous_priorities.as_mut() {
                p.attempted(cluster.endpoints().priority_of(h));
            }
        }
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        let can_retry = retriable_outcome
            && attempt < max_attempts
            && replayable
            && !out_of_time
            && upgrade.is_none();
        if can_retry {
            // A retry needs a slot of the retry circuit breaker (max_retries or the
            // retry budget); without one the current answer stands.
            drop(retry_slot.take());
            match cluster
                .state
                .acquire_retry(&cluster.thresholds, result.is_ok())
            {
                Some(slot) => {
                    retry_slot = Some(slot);
                    cluster
                        .state
                        .stats
                        .upstream_rq_retry
                        .fetch_add(1, Ordering::Relaxed);
                    drop(result);
                    let r = retry.expect("retriable implies a retry policy");
                    let backoff = backoff(r, attempt);
                    let sleep = match deadline {
                        Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                        None => backoff,
                    };
                    tokio::time::sleep(sleep).await;
                    continue;
                }
                None => {
                    cluster
                        .state
                        .stats
                        .upstream_rq_retry_overflow
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if attempt > 1 && retriable_outcome {
            log.flags.set(Flags::URX);
        }
        let _ = status;
        return match result {
            Ok((mut resp, host, conn)) => {
                if attempt > 1 && !retriable_outcome {
                    cluster
                        .state
                        .stats
                        .upstream_rq_retry_success
                        .fetch_add(1, Ordering::Relaxed);
                }
                let response_cx = FormatContext {
                    cluster: Some(&cref.name),
                    cluster_observability_name: cref
                        .cluster
                        .as_deref()
                        .map(|c| &*c.observability_name),
                    upstream: Some(host.addr),
                    status: Some(resp.status().as_u16()),
                    request: request_for_response.as_ref().map(|h| {
                        (
                            h,
                            RequestLine {
                                method: &parts.method,
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str())
                                    .unwrap_or("/"),
                                authority: host_value.as_bytes(),
                                // As sent upstream: an invalid scheme was replaced by
                                // the derived one.
                                scheme: original_uri.scheme_str().filter(|s| {
                                    s.eq_ignore_ascii_case("http")
                                        || s.eq_ignore_ascii_case("https")
                                }),
                                https: cx.peer.https,
                            },
                        )
                    }),
                    ..format_cx(cx, started, version, remote)
                };
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(down) = downstream_upgrade {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(async move {
                            if let (Ok(d), Ok(u)) = (down.await, up.await) {
                                let mut d = hyper_util::rt::TokioIo::new(d);
                                let mut u = hyper_util::rt::TokioIo::new(u);
                                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                            }
                        });
                    }
                    drop(conn);
                    let (mut rparts, _) = resp.into_parts();
                    finalize_upstream_headers(
                        &mut rparts.headers,
                        hcm,
                        table,
                        vhost,
                        route,
                        wc,
                        log,
                        true,
                        &response_cx,
                    );
                    return Ok(Response::from_parts(rparts, ResponseBody::empty()));
                }
                let (mut rparts, rbody) = resp.into_parts();
                finalize_upstream_headers(
                    &mut rparts.headers,
                    hcm,
                    table,
                    vhost,
                    route,
                    wc,
                    log,
                    false,
                    &response_cx,
                );
                if let Some(v) = generated_cookie {
                    rparts.headers.append(header::SET_COOKIE, v);
                }
                if vhost.include_attempt_count_in_response {
                    rparts
                        .headers
                        .insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
                }
                let mut body = ResponseBody::upstream(rbody)
                    .with_deadline(deadline)
                    .with_idle_timeout(idle);
                body.upstream_done = Some(UpstreamDone {
                    cluster: cluster.clone(),
                    host,
                    conn: Some(conn),
                    worker: cx.worker,
                });
                Ok(Response::from_parts(rparts, body))
            }
            Err(e) => {
                let reply = match e {
                    AttemptError::NoHealthy => LocalReply::NO_HEALTHY_UPSTREAM,
                    AttemptError::Pool(PoolError::ConnectFailure) => LocalReply::CONNECT_FAILURE,
                    AttemptError::Pool(PoolError::ConnectTimeout) => LocalReply::CONNECT_TIMEOUT,
                    AttemptError::Pool(PoolError::Overflow) => LocalReply::OVERFLOW,
                    AttemptError::Reset => LocalReply::RESET,
                    AttemptError::PerTryTimeout => LocalReply::TIMEOUT,
                };
                Err(if attempt > 1 {
                    reply.after_retries()
                } else {
                    reply
                })
            }
        };
    }
}

fn shadow_host(host: &HeaderValue) -> HeaderValue {
    let b = host.as_bytes();
    let stripped = crate::proxy::route::table::strip_port(b);
    let mut v = Vec::with_capacity(b.len() + 7);
    v.extend_from_slice(stripped);
    v.extend_from_slice(b"-shadow");
    v.extend_from_slice(&b[stripped.len()..]);
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| host.clone())
}

/// Sends a mirrored request and discards the answer.
async fn shadow(cluster: Arc<Cluster>, req: Request<RequestBody>, worker: usize) -> Option<()> {
    let host = cluster.choose_host(LbContext::default())?;
    let mut conn = pool::acquire(
        &cluster,
        &host,
        worker,
        cluster.protocol == UpstreamProtocol::Http2,
    )
    .await
    .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(15), send(&mut conn, req))
        .await
        .ok()?
        .ok()?;
    use http_body_util::BodyExt;
    let _ = resp.into_body().collect().await;
    pool::release(&cluster, &host, worker, conn);
    Some(())
}

fn backoff(r: &RetryPolicy, attempt: u32) -> Duration {
    // Envoy: fully jittered exponential back-off, base * [0, 2^(n) - 1], capped.
    let n = attempt.min(16);
    let max_mult = (1u64 << n) - 1;
    let ms = r.back_off_base.as_millis() as u64 * rand::random_range(0..=max_mult.max(1));
    Duration::from_millis(ms).min(r.back_off_max)
}

fn retriable_status(r: &RetryPolicy, resp: &Response<Incoming>) -> bool {
    let s = resp.status().as_u16();
    let on = r.on;
    if on.has(RetryOn::FIVE_XX) && s >= 500 {
        return true;
    }
    if on.has(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504) {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_4XX) && s == 409 {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_STATUS_CODES) && r.retriable_status_codes.contains(&s) {
        return true;
    }
    if let Some(g) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    {
        let bit = match g {
            1 => RetryOn::GRPC_CANCELLED,
            4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
            8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            13 => RetryOn::GRPC_INTERNAL,
            14 => RetryOn::GRPC_UNAVAILABLE,
            _ => 0,
        };
        if on.has(bit) {
            return true;
        }
    }
    false
}

fn retriable_error(r: &RetryPolicy, e: AttemptError) -> bool {
    let on = r.on;
    let broad =
        on.has(RetryOn::FIVE_XX) || on.has(RetryOn::GATEWAY_ERROR) || on.has(RetryOn::RESET);
    match e {
        AttemptError::NoHealthy | AttemptError::Pool(PoolError::Overflow) => false,
        AttemptError::Pool(_) => {
            broad || on.has(RetryOn::CONNECT_FAILURE) || on.has(RetryOn::RESET_BEFORE_REQUEST)
        }
        AttemptError::Reset => broad,
        AttemptError::PerTryTimeout => {
            on.has(RetryOn::FIVE_XX) || on.has(RetryOn::GATEWAY_ERROR) || on.has(RetryOn::RESET)
        }
    }
}

/// One upstream attempt: choose a host, get a connection, send, wait for headers.
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cluster: &Arc<Cluster>,
    mut req: Request<RequestBody>,
    cx: &ConnCtx,
    hcm: &HttpConnectionManager,
    lb: LbContext<'_>,
    deadline: Option<Instant>,
    per_try: Option<Duration>,
    host_value: &HeaderValue,
    auto_host: bool,
    scheme: &'static str,
    log: &mut RequestLog,
) -> Result<(Response<Incoming>, Arc<Host>, PooledConn), AttemptError> {
    let state = &cluster.state;
    state
        .stats
        .upstream_rq_total
        .fetch_add(1, Ordering::Relaxed);
    let Some(rq_slot) = state.acquire_request(cluster.thresholds.max_requests) else {
        state
            .stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        log.flags.set(Flags::UO);
        return Err(AttemptError::Pool(PoolError::Overflow));
    };
    let host = cluster.choose_host(lb);
    let Some(host) = host else {
        state
            .stats
            .upstream_cx_none_healthy
            .fetch_add(1, Ordering::Relaxed);
        log.flags.set(Flags::UH);
        return Err(AttemptError::NoHealthy);
    };
    log.upstream_host = Some(host.addr);
    let h2 = match cluster.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => log.version == Version::HTTP_2,
    };
    // Envoy rewrites to the host's name only when it has one (DNS clusters).
    let auto_host = auto_host && host.hostname.is_some();
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        let auth = if auto_host {
            host_header(&host)
        } else {
            host_value.clone()
        };
        req.headers_mut().remove(header::HOST);
        let mut parts = req.uri().clone().into_parts();
        // `:scheme` is the downstream request's, whatever the upstream transport (what
        // Envoy 1.40 sends).
        parts.scheme = Some(if scheme == "https" {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = auth.to_str().ok().and_then(|a| a.parse().ok());
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    } else {
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut().insert(
            header::HOST,
            if auto_host {
                host_header(&host)
            } else {
                host_value.clone()
            },
        );
    }
    if auto_host && !hcm.suppress_envoy_headers {
        req.headers_mut()
            .insert(X_ENVOY_ORIGINAL_HOST.clone(), host_value.clone());
    }
    let try_deadline = match (deadline, per_try) {
        (Some(d), Some(p)) => Some(d.min(Instant::now() + p)),
        (Some(d), None) => Some(d),
        (None, Some(p)) => Some(Instant::now() + p),
        (None, None) => None,
    };
    let per_try_fires_first =
        per_try.is_some() && deadline.is_none_or(|d| try_deadline.is_some_and(|t| t < d));
    host.active_requests.fetch_add(1, Ordering::Relaxed);
    host.rq_total.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveRequest(host.clone());
    let work = async {
        let mut conn = pool::acquire_for(cluster, &host, cx.worker, h2, Some(&req), Some(&cx.peer))
            .await
            .map_err(AttemptError::Pool)?;
        let start = Instant::now();
        let resp = send(&mut conn, req)
            .await
            .map_err(|_| AttemptError::Reset)?;
        Ok::<_, AttemptError>((resp, conn, start))
    };
    let result = match try_deadline {
        None => work.await,
        Some(d) => match tokio::time::timeout_at(d, work).await {
            Ok(r) => r,
            Err(_) => {
                if per_try_fires_first {
                    state
                        .stats
                        .upstream_rq_per_try_timeout
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    state
                        .stats
                        .upstream_rq_timeout
                        .fetch_add(1, Ordering::Relaxed);
                }
                outlier::record(cluster, &host, Outcome::Timeout);
                host.rq_error.fetch_add(1, Ordering::Relaxed);
                log.flags.set(Flags::UT);
                return Err(AttemptError::PerTryTimeout);
            }
        },
    };
    match result {
        Ok((resp, conn, start)) => {
            let status = resp.status().as_u16();
            state.stats.count_status(status);
            outlier::record(cluster, &host, Outcome::Status(status));
            if status >= 500 {
                host.rq_error.fetch_add(1, Ordering::Relaxed);
            } else {
                host.rq_success.fetch_add(1, Ordering::Relaxed);
            }
            log.upstream_service_time = Some(start.elapsed());
            log.flags.0 &= !(Flags::UF | Flags::UO | Flags::UC | Flags::UT | Flags::UH);
            drop(rq_slot);
            Ok((resp, host, conn))
        }
        Err(e) => {
            match e {
                AttemptError::Pool(PoolError::ConnectFailure | PoolError::ConnectTimeout) => {
                    outlier::record(cluster, &host, Outcome::ConnectFailure);
                    log.flags.set(Flags::UF);
                }
                AttemptError::Pool(PoolError::Overflow) => {
                    log.flags.set(Flags::UO);
                }
                AttemptError::Reset => {
                    state
                        .stats
                        .upstream_rq_rx_reset
                        .fetch_add(1, Ordering::Relaxed);
                    outlier::record(cluster, &host, Outcome::Reset);
                    log.flags.set(Flags::UC);
                }
                _ => {}
            }
            host.rq_error.fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

struct ActiveRequest(Arc<Host>);
impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

fn host_header(host: &Host) -> HeaderValue {
    host.hostname
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
        .unwrap_or(HeaderValue::from_static(""))
}

async fn send(
    conn: &mut PooledConn,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    match &mut conn.sender {
        Sender::H1(s) => s.send_request(req).await,
        Sender::H2(s) => s.send_request(req).await,
    }
}

#[allow(clippy::too_many_arguments)]
fn finalize_upstream_headers(
    h: &mut HeaderMap,
    hcm: &HttpConnectionManager,
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    wc: Option<&WeightedCluster>,
    log: &RequestLog,
    upgrade: bool,
    fcx: &FormatContext<'_>,
) {
    let upgrade_headers = if upgrade {
        (
            h.get(header::CONNECTION).cloned(),
            h.get(header::UPGRADE).cloned(),
        )
    } else {
        (None, None)
    };
    remove_hop_by_hop(h);
    if let (Some(c), Some(u)) = upgrade_headers {
        h.insert(header::CONNECTION, c);
        h.insert(header::UPGRADE, u);
    }
    if !hcm.suppress_envoy_headers
        && let Some(t) = log.upstream_service_time
    {
        h.insert(
            X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    apply_response_mutations(h, table, vhost, route, wc, fcx);
}

/// Finishes the span of one upstream attempt (`spawn_upstream_span`). An attempt that
/// found no healthy host never became an upstream request, and has no span (Envoy
/// answers before making one).
fn finish_upstream_span(
    span: &crate::proxy::trace::ActiveSpan,
    upstream: crate::proxy::trace::UpstreamSpan,
    result: &Result<(Response<Incoming>, Arc<Host>, PooledConn), AttemptError>,
    cluster: &Cluster,
    log: &RequestLog,
    cx: &ConnCtx,
) {
    let (status, version, reason) = match result {
        Ok((resp, _, _)) => (resp.status().as_u16(), Some(resp.version()), None),
        Err(AttemptError::NoHealthy) => return,
        // Envoy's names for the reset reasons.
        Err(AttemptError::Pool(PoolError::ConnectFailure)) => {
            (0, None, Some("remote connection failure"))
        }
        Err(AttemptError::Pool(PoolError::ConnectTimeout)) => (0, None, Some("connection timeout")),
        Err(AttemptError::Pool(PoolError::Overflow)) => (0, None, Some("overflow")),
        Err(AttemptError::Reset) => (0, None, Some("remote reset")),
        Err(AttemptError::PerTryTimeout) => (0, None, None),
    };
    span.finish_upstream(
        upstream,
        &crate::proxy::trace::UpstreamOutcome {
            cluster: &cluster.name,
            observability_name: &cluster.observability_name,
            host: log.upstream_host,
            version,
            status,
            flags: log.flags,
            reason,
        },
        &cx.shared.stats,
        cx.worker,
    );
}

/// Returns the upstream connection to its pool when the response body is done.
pub struct UpstreamDone {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    conn: Option<PooledConn>,
    worker: usize,
}

impl UpstreamDone {
    /// The route timeout fired while the response body was streaming.
    pub(crate) fn timed_out(&self) {
        self.cluster
            .state
            .stats
            .upstream_rq_timeout
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn done(&mut self, complete: bool) {
        if let Some(conn) = self.conn.take() {
            self.cluster
                .state
                .stats
                .upstream_rq_completed
                .fetch_add(1, Ordering::Relaxed);
            if complete {
                pool::release(&self.cluster, &self.host, self.worker, conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_answers_are_framed_as_envoys_codecs_frame_them() {
        let empty = || LocalReply::NO_ROUTE.response();
        // HTTP/2: no length without a body; a body keeps its length.
        let mut r = empty();
        local_answer_framing(&mut r, Version::HTTP_2, false);
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        let mut r = LocalReply::FAULT_ABORT.response();
        local_answer_framing(&mut r, Version::HTTP_2, false);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "18");
        // HTTP/1: `content-length: 0` stays, but not for HEAD; a body keeps its length.
        let mut r = empty();
        local_answer_framing(&mut r, Version::HTTP_11, false);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "0");
        let mut r = empty();
        local_answer_framing(&mut r, Version::HTTP_11, true);
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        let mut r = LocalReply::FAULT_ABORT.response();
        local_answer_framing(&mut r, Version::HTTP_11, true);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "18");
    }

    #[test]
    fn an_answer_before_the_body_closes_http1_connections() {
        // (HTTP/1 body still pending, body handed to the upstream) -> close
        let cases = [
            (true, false, true),
            (true, true, false),
            (false, false, false),
            (false, true, false),
        ];
        for (pending, forwarded, close) in cases {
            assert_eq!(
                closes_after_answer(pending, forwarded),
                close,
                "pending {pending}, forwarded {forwarded}"
            );
        }
    }

    #[test]
    fn shadow_host_suffix_goes_before_the_port() {
        assert_eq!(
            shadow_host(&HeaderValue::from_static("shop.example.com")),
            "shop.example.com-shadow"
        );
        assert_eq!(
            shadow_host(&HeaderValue::from_static("shop.example.com:8080")),
            "shop.example.com-shadow:8080"
        );
    }

    #[test]
    fn hash_cookies_are_read_and_generated_as_envoy_does() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; s=\"abc\""));
        h.append(header::COOKIE, HeaderValue::from_static("e=; q=\""));
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        // Quotes around a value are not part of it; an empty value is no cookie.
        assert_eq!(cookie_value(&h, "s"), Some("abc"));
        assert_eq!(cookie_value(&h, "e"), None);
        assert_eq!(cookie_value(&h, "q"), Some("\""));
        assert_eq!(cookie_value(&h, "missing"), None);

        // One value per connection: xxHash64 of the remote then the local address.
        let peer = Peer::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            false,
        );
        assert_eq!(
            generated_cookie_value(&peer),
            format!("{:016x}", xxhash(b"127.0.0.1:40000127.0.0.1:8080"))
        );
        assert_eq!(generated_cookie_value(&peer).len(), 16);

        let attrs: Vec<(Box<str>, Box<str>)> = vec![
            ("SameSite".into(), "Strict".into()),
            ("Secure".into(), "".into()),
        ];
        assert_eq!(
            set_cookie("s", "00ff", Duration::from_secs(60), Some("/p"), &attrs).unwrap(),
            "s=\"00ff\"; Max-Age=60; Path=/p; SameSite=Strict; Secure; HttpOnly"
        );
        // A zero ttl makes a session cookie: no Max-Age.
        assert_eq!(
            set_cookie("s", "00ff", Duration::ZERO, None, &[]).unwrap(),
            "s=\"00ff\"; HttpOnly"
        );
    }

    #[test]
    fn retry_back_off_is_jittered_and_capped() {
        let r = RetryPolicy {
            on: RetryOn(RetryOn::FIVE_XX),
            num_retries: 5,
            per_try_timeout: None,
            retriable_status_codes: vec![],
            back_off_base: Duration::from_millis(25),
            back_off_max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
            previous_priorities: None,
        };
        for attempt in 1..8 {
            for _ in 0..50 {
                let b = backoff(&r, attempt);
                assert!(b <= Duration::from_millis(250));
                assert!(b <= Duration::from_millis(25 * ((1 << attempt) - 1).max(1)));
            }
        }
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    fn size_of_future<F, Fut>(_: F) -> usize
    where
        F: Fn(Request<Incoming>, Arc<ConnCtx>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The request future is moved into hyper's connection state for every request:
    /// keep it small (cold paths such as connecting are boxed).
    #[test]
    fn request_future_stays_small() {
        let size = size_of_future(handle);
        eprintln!("request future: {size} bytes");
        assert!(size < 4096, "request future is {size} bytes");
    }
}
