//! The admin API (Envoy's paths on 127.0.0.1:15000, and the status page at `/`), the
//! health endpoint (15021) and Prometheus (15090).
use crate::proxy::runtime::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

type Handler = fn(&Request<Incoming>, &Shared) -> Response<Full<Bytes>>;

/// The admin, health and Prometheus servers' state: not accepting yet (a successor
/// before it serves), accepting, stopped (a successor took over).
pub const SERVER_PAUSED: u8 = 0;
pub const SERVER_ACCEPTING: u8 = 1;
pub const SERVER_STOPPED: u8 = 2;

/// A listening socket for one of these servers: bound here, or handed over by the
/// gateway this one replaces.
pub enum ServerSocket {
    Bind(SocketAddr),
    Inherited(std::net::TcpListener),
}

impl ServerSocket {
    fn listen(self) -> std::io::Result<std::net::TcpListener> {
        match self {
            ServerSocket::Bind(addr) => std::net::TcpListener::bind(addr),
            ServerSocket::Inherited(l) => Ok(l),
        }
    }
}

fn serve(
    rt: &tokio::runtime::Handle,
    socket: ServerSocket,
    shared: Arc<Shared>,
    mut state: tokio::sync::watch::Receiver<u8>,
    handler: Handler,
) -> std::io::Result<std::net::TcpListener> {
    let std_listener = socket.listen()?;
    std_listener.set_nonblocking(true)?;
    // A copy is kept for a successor: this server stops accepting when it takes over.
    let kept = std_listener.try_clone()?;
    rt.spawn(async move {
        // A successor answers only once it serves (before, its predecessor does).
        if state.wait_for(|s| *s != SERVER_PAUSED).await.is_err() {
            return;
        }
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        loop {
            if *state.borrow() == SERVER_STOPPED {
                return;
            }
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                r = state.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let shared = shared.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut resp = handler(&req, &shared);
                    if *state.borrow() == SERVER_STOPPED {
                        // A successor serves: the client's next request goes to it.
                        resp.headers_mut()
                            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(kept)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

/// Serves the admin API on `socket` while `state` says so; returns a copy of the listening socket.
pub fn serve_admin(
    rt: &tokio::runtime::Handle,
    socket: ServerSocket,
    shared: Arc<Shared>,
    state: tokio::sync::watch::Receiver<u8>,
) -> std::io::Result<std::net::TcpListener> {
    serve(rt, socket, shared, state, admin)
}

/// Serves `/healthz/ready` on `addr`.
pub fn serve_health(
    rt: &tokio::runtime::Handle,
    socket: ServerSocket,
    shared: Arc<Shared>,
    state: tokio::sync::watch::Receiver<u8>,
) -> std::io::Result<std::net::TcpListener> {
    serve(rt, socket, shared, state, |req, shared| {
        match req.uri().path() {
            "/healthz/ready" => ready(shared),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    })
}

/// Serves `/stats/prometheus` on `addr`.
pub fn serve_prometheus(
    rt: &tokio::runtime::Handle,
    socket: ServerSocket,
    shared: Arc<Shared>,
    state: tokio::sync::watch::Receiver<u8>,
) -> std::io::Result<std::net::TcpListener> {
    serve(rt, socket, shared, state, |req, shared| {
        match req.uri().path() {
            "/stats/prometheus" => prometheus(shared),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    })
}

fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    // A probe this process accepted just before its successor took over is answered for
    // the service, which the successor serves: a load balancer must not see it drain.
    let serving =
        !shared.draining.load(Ordering::Relaxed) || shared.handed_over.load(Ordering::Relaxed);
    if shared.ready.load(Ordering::Relaxed) && serving {
        text(StatusCode::OK, "LIVE\n")
    } else if shared.draining.load(Ordering::Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
    }
}

fn admin(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let post = req.method() == Method::POST;
    match req.uri().path() {
        "/ready" => ready(shared),
        "/config_dump" => {
            let snap = shared.snapshot.load();
            match crate::xds::json::config_dump(&snap.resources.unpack(), &snap.version) {
                Ok(v) => {
                    let mut r = Response::new(Full::new(Bytes::from(
                        serde_json::to_string_pretty(&v).unwrap_or_default(),
                    )));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/clusters" => text(StatusCode::OK, clusters(shared)),
        "/certs" => certs(shared),
        "/stats" => text(StatusCode::OK, stats(shared)),
        "/stats/prometheus" => prometheus(shared),
        "/quitquitquit" if post => {
            let _ = shared.admin_quit.send(true);
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" if post => {
            shared.draining.store(true, Ordering::Relaxed);
            let _ = shared.drain_requested.send(true);
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" | "/drain_listeners" => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST.\n",
        ),
        "/" | "/status" => {
            let body = crate::proxy::status_page::render(shared, req.uri().query().unwrap_or(""));
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/help" => text(
            StatusCode::OK,
            "meshgate admin: / (status page) /ready /config_dump /certs /clusters /stats /stats/prometheus /quitquitquit /drain_listeners\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "invalid path\n"),
    }
}

/// The gateway's workload certificate (identity, serial, validity, chain and trust
/// bundle; never the key), in the spirit of Envoy's `/certs`.
fn certs(shared: &Shared) -> Response<Full<Bytes>> {
    let certificates: Vec<serde_json::Value> = shared
        .identity
        .load_full()
        .and_then(|s| s.current())
        .map(|c| c.summary())
        .into_iter()
        .collect();
    let body = serde_json::json!({ "certificates": certificates });
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Envoy's `/clusters` text format.
fn clusters(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let c = &snap.clusters[name];
        let t = &c.thresholds;
        let _ = writeln!(out, "{name}::observability_name::{name}");
        let _ = writeln!(
            out,
            "{name}::default_priority::max_connections::{}",
            t.max_connections
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_pending_requests::{}",
            t.max_pending_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_requests::{}",
            t.max_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_retries::{}",
            t.max_retries
        );
        let _ = writeln!(out, "{name}::added_via_api::true");
        let set = c.endpoints();
        for (p, level) in set.priorities.iter().enumerate() {
            for loc in &level.localities {
                for h in &loc.hosts {
                    let a = h.addr;
                    let g = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}::{a}::cx_active::{}",
                        h.active_connections.load(Ordering::Relaxed)
                    );
                    let _ = writeln!(
                        out,
                        "{name}::{a}::cx_connect_fail::{}",
                        g(&h.cx_connect_fail)
                    );
                    let _ = writeln!(
                        out,
                        "{name}::{a}::rq_active::{}",
                        h.active_requests.load(Ordering::Relaxed)
                    );
                    let _ = writeln!(out, "{name}::{a}::rq_error::{}", g(&h.rq_error));
                    let _ = writeln!(out, "{name}::{a}::rq_success::{}", g(&h.rq_success));
                    let _ = writeln!(out, "{name}::{a}::rq_total::{}", g(&h.rq_total));
                    let _ = writeln!(
                        out,
                        "{name}::{a}::hostname::{}",
                        h.hostname.as_deref().unwrap_or("")
                    );
                    let mut flags = Vec::new();
                    if !h.eds_healthy {
                        flags.push("/failed_eds_health");
                    }
                    if h.ejected.load(Ordering::Relaxed) {
                        flags.push("/failed_outlier_check");
                    }
                    let health = if flags.is_empty() {
                        "healthy".to_string()
                    } else {
                        flags.concat()
                    };
                    let _ = writeln!(out, "{name}::{a}::health_flags::{health}");
                    let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight);
                    let mut loc_parts = loc.name.split('/');
                    let _ = writeln!(
                        out,
                        "{name}::{a}::region::{}",
                        loc_parts.next().unwrap_or("")
                    );
                    let _ = writeln!(out, "{name}::{a}::zone::{}", loc_parts.next().unwrap_or(""));
                    let _ = writeln!(
                        out,
                        "{name}::{a}::sub_zone::{}",
                        loc_parts.next().unwrap_or("")
                    );
                    let _ = writeln!(out, "{name}::{a}::canary::false");
                    let _ = writeln!(out, "{name}::{a}::priority::{p}");
                    let _ = writeln!(out, "{name}::{a}::success_rate::-1");
                    let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::-1");
                }
            }
        }
    }
    out
}

fn stats(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let mut lines: Vec<(String, u64)> = Vec::new();
    for (name, c) in &snap.clusters {
        for (k, v) in c.state.stats.counters() {
            lines.push((format!("cluster.{name}.{k}"), v));
        }
        let s = &c.state;
        lines.push((
            format!("cluster.{name}.upstream_cx_active"),
            s.cx_active.load(Ordering::Relaxed) as u64,
        ));
        lines.push((
            format!("cluster.{name}.upstream_rq_active"),
            s.rq_active.load(Ordering::Relaxed) as u64,
        ));
        lines.push((
            format!("cluster.{name}.upstream_rq_pending_active"),
            s.rq_pending.load(Ordering::Relaxed) as u64,
        ));
        let set = c.endpoints();
        lines.push((
            format!("cluster.{name}.membership_total"),
            set.hosts.len() as u64,
        ));
        lines.push((
            format!("cluster.{name}.membership_healthy"),
            set.hosts.iter().filter(|h| h.healthy()).count() as u64,
        ));
        lines.push((
            format!("cluster.{name}.outlier_detection.ejections_active"),
            set.hosts
                .iter()
                .filter(|h| h.ejected.load(Ordering::Relaxed))
                .count() as u64,
        ));
    }
    lines.extend(shared.stats.envoy_counters());
    lines.extend(shared.overload.stats());
    lines.extend(tls_counters(shared));
    if let Some(id) = shared.identity.load_full() {
        lines.extend(crate::proxy::stats::identity_stats(&id));
    }
    lines.sort();
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}

/// The TLS layer's counters (secrets, handshakes, ACME), kept across snapshots.
fn tls_counters(shared: &Shared) -> impl Iterator<Item = (String, u64)> {
    shared
        .tls
        .store
        .stats()
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
}

fn prometheus(shared: &Shared) -> Response<Full<Bytes>> {
    let mut out = String::new();
    shared.stats.prometheus_istio(&mut out);
    let snap = shared.snapshot.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut by_stat: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for name in names {
        for (k, v) in snap.clusters[name].state.stats.counters() {
            let metric = format!("envoy_cluster_{}", k.replace('.', "_"));
            by_stat.entry(metric).or_default().push((name.clone(), v));
        }
    }
    for (metric, values) in by_stat {
        let _ = writeln!(out, "# TYPE {metric} counter");
        for (cluster, v) in values {
            let _ = writeln!(out, "{metric}{{cluster_name=\"{cluster}\"}} {v}");
        }
    }
    for (k, v) in shared
        .stats
        .envoy_counters()
        .into_iter()
        .chain(tls_counters(shared))
    {
        let metric = format!("envoy_{}", k.replace('.', "_"));
        let _ = writeln!(out, "# TYPE {metric} counter\n{metric} {v}");
    }
    shared.overload.prometheus(&mut out);
    if let Some(id) = shared.identity.load_full() {
        crate::proxy::stats::prometheus_identity(&id, &mut out);
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
