//! The control plane's debug and metrics endpoints (istiod's port 15014): the status
//! page (`/`, `/status`), `/ready`, `/debug/syncz`, `/debug/config_dump?proxyID=`,
//! `/metrics`.
use super::server::ControlPlane;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use std::net::SocketAddr;

/// Errors starting the debug server.
#[derive(Debug, thiserror::Error)]
#[error("binding the debug server on {addr}: {source}")]
pub struct DebugError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

#[derive(Serialize)]
struct SyncEntry {
    #[serde(flatten)]
    status: super::status::ProxyStatus,
    states: std::collections::BTreeMap<&'static str, &'static str>,
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one debug request.
pub fn handle(
    cp: &ControlPlane,
    method: &Method,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match path {
        "/" | "/status" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::status_page::render(cp, query),
        ),
        "/ready" => {
            if cp.serving() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not serving xDS yet\n",
                )
            }
        }
        "/metrics" | "/stats/prometheus" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            cp.metrics().render(),
        ),
        "/debug/syncz" => {
            let entries: Vec<SyncEntry> = cp
                .syncz()
                .into_iter()
                .map(|status| SyncEntry {
                    states: status.states(),
                    status,
                })
                .collect();
            match serde_json::to_vec_pretty(&entries) {
                Ok(body) => respond(StatusCode::OK, "application/json", body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/debug/config_dump" => {
            let Some(id) = query_param(query, "proxyID").filter(|s| !s.is_empty()) else {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "proxyID is required (node id or POD.NAMESPACE)\n",
                );
            };
            match cp.config_dump(&id) {
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("no connected proxy {id} with resources\n"),
                ),
                Some(Err(e)) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
                Some(Ok(v)) => match serde_json::to_vec_pretty(&v) {
                    Ok(body) => respond(StatusCode::OK, "application/json", body),
                    Err(e) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                },
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "endpoints: / (status page) /ready /metrics /debug/syncz /debug/config_dump?proxyID=\n",
        ),
    }
}

/// Serves the debug endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    cp: ControlPlane,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let cp = cp.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let resp = handle(
                        &cp,
                        req.method(),
                        req.uri().path(),
                        req.uri().query().unwrap_or(""),
                    );
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Binds `addr` and serves the debug endpoints.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, DebugError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DebugError { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("proxyID=gw-1.edge", "proxyID").as_deref(),
            Some("gw-1.edge")
        );
        assert_eq!(
            query_param(
                "a=1&proxyID=router%7E1.2.3.4%7Ep.ns%7Ens.svc.cluster.local",
                "proxyID"
            )
            .as_deref(),
            Some("router~1.2.3.4~p.ns~ns.svc.cluster.local")
        );
        assert_eq!(query_param("a=1", "proxyID"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
