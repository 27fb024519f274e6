//! The agent's status port (Istio's 15021): `GET /healthz/ready` for the kubelet, and
//! the agent's own counters at `GET /stats/prometheus`.
//!
//! Ready means: the workload certificate is valid now, Envoy runs and its admin `/ready`
//! says LIVE (its initial xDS fetch is done, its listeners bound), and the agent is not
//! shutting down. Anything else is a 503 whose body says why.
use super::envoy::{EnvoyAdmin, EnvoyReadiness};
use super::supervisor::EnvoyCounters;
use crate::identity::{CertificateHandle, IdentityStatus};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// What the status port reports on.
pub struct AgentStatus {
    pub certificate: CertificateHandle,
    pub identity: Arc<IdentityStatus>,
    pub envoy: Arc<EnvoyCounters>,
    pub admin: EnvoyAdmin,
    /// Set when the agent starts shutting down.
    pub draining: AtomicBool,
}

impl AgentStatus {
    /// `Ok` when ready, else why not.
    pub async fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: the agent is shutting down".into());
        }
        let Some(cert) = self.certificate.current() else {
            return Err("no workload certificate yet".into());
        };
        if !cert.is_valid_at(SystemTime::now()) {
            return Err(format!(
                "the workload certificate {} is not valid now",
                cert.serial
            ));
        }
        if !self.envoy.running() {
            return Err("Envoy is not running".into());
        }
        match self.admin.readiness().await {
            EnvoyReadiness::Live => Ok(()),
            EnvoyReadiness::NotLive(s) => Err(format!("Envoy is not ready: {s}")),
            EnvoyReadiness::Unreachable(e) => {
                Err(format!("Envoy's admin API does not answer: {e}"))
            }
        }
    }

    /// The agent's counters in Prometheus' text format.
    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        metric(
            "meshgate_agent_envoy_starts_total",
            "counter",
            "Times Envoy was started, the first included.",
            self.envoy.starts.load(Ordering::Relaxed),
        );
        metric(
            "meshgate_agent_envoy_restarts_total",
            "counter",
            "Times Envoy was started again after it exited.",
            self.envoy.restarts(),
        );
        metric(
            "meshgate_agent_envoy_unexpected_exits_total",
            "counter",
            "Times Envoy exited without being asked to.",
            self.envoy.unexpected_exits.load(Ordering::Relaxed),
        );
        metric(
            "meshgate_agent_envoy_running",
            "gauge",
            "1 while Envoy runs.",
            u64::from(self.envoy.running()),
        );
        metric(
            "meshgate_agent_workload_certificates_issued_total",
            "counter",
            "Workload certificates obtained from the CA, the first included.",
            self.identity.issued.load(Ordering::Relaxed),
        );
        metric(
            "meshgate_agent_workload_certificate_failures_total",
            "counter",
            "Calls to the CA that failed or were refused.",
            self.identity.failures.load(Ordering::Relaxed),
        );
        metric(
            "meshgate_agent_workload_certificate_expiry_seconds",
            "gauge",
            "Unix time at which the current workload certificate expires (0 without one).",
            self.identity.expiry_unix(),
        );
        out
    }
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

async fn handle(req: Request<Incoming>, status: Arc<AgentStatus>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz/ready" => match status.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/stats/prometheus" => text(StatusCode::OK, status.prometheus()),
        _ => text(
            StatusCode::NOT_FOUND,
            "meshgate agent: /healthz/ready /stats/prometheus\n",
        ),
    }
}

/// Serves the status port on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<AgentStatus>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or the like: try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, status).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
