//! The Envoy the agent runs: its command line, and the few admin API calls the agent
//! makes (`/ready`, `/drain_listeners`, the listeners' active connections).
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How Envoy is started: the program and the user's arguments (what follows `--` on the
/// agent's command line), and what the agent adds.
#[derive(Debug, Clone)]
pub struct EnvoyCommand {
    pub program: PathBuf,
    /// Given after the agent's own flags; a flag given here replaces the agent's.
    pub extra_args: Vec<OsString>,
    pub bootstrap: PathBuf,
    /// `--drain-time-s`: how long listeners drain after `/drain_listeners?graceful`
    /// before they close.
    pub drain_time: Duration,
    /// `--local-address-ip-version v6` for an IPv6 workload.
    pub ipv6: bool,
}

/// The flags the agent gives Envoy besides `-c`, with their values (Istio's agent
/// gives the same): connections are told to close as soon as a drain starts, listeners
/// close `drain_time` later; no hot restart (a restart is a new process, started by
/// the agent; this also needs no shared memory, so several Envoys run side by side).
fn agent_flags(c: &EnvoyCommand) -> Vec<(&'static str, Option<String>)> {
    vec![
        (
            "--drain-time-s",
            Some(c.drain_time.as_secs().max(1).to_string()),
        ),
        ("--drain-strategy", Some("immediate".into())),
        (
            "--local-address-ip-version",
            Some(if c.ipv6 { "v6" } else { "v4" }.into()),
        ),
        ("--disable-hot-restart", None),
    ]
}

/// Why Envoy's command line cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{0}` after `--`: the agent gives Envoy its bootstrap itself (-c / --config-path)")]
    Config(String),
}

impl EnvoyCommand {
    /// The arguments: `-c BOOTSTRAP`, the agent's flags the user did not give, then the
    /// user's.
    pub fn args(&self) -> Result<Vec<OsString>, CommandError> {
        let given: Vec<String> = self
            .extra_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for a in &given {
            let name = a.split('=').next().unwrap_or_default();
            if matches!(name, "-c" | "--config-path" | "--config-yaml") {
                return Err(CommandError::Config(a.clone()));
            }
        }
        let mut out: Vec<OsString> = vec!["-c".into(), self.bootstrap.clone().into()];
        for (flag, value) in agent_flags(self) {
            let user_has = given
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if user_has {
                continue;
            }
            out.push(flag.into());
            if let Some(v) = value {
                out.push(v.into());
            }
        }
        out.extend(self.extra_args.iter().cloned());
        Ok(out)
    }
}

/// Envoy's admin API on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct EnvoyAdmin {
    pub port: u16,
    pub timeout: Duration,
}

/// What Envoy's `/ready` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoyReadiness {
    /// 200 `LIVE`: the initial xDS fetch is done and the listeners are bound.
    Live,
    /// Another answer (`PRE_INITIALIZING`, `INITIALIZING`, `DRAINING`).
    NotLive(String),
    /// No answer.
    Unreachable(String),
}

impl EnvoyAdmin {
    pub fn new(port: u16) -> EnvoyAdmin {
        EnvoyAdmin {
            port,
            timeout: Duration::from_secs(2),
        }
    }

    /// One request on a fresh connection: (status, body).
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let call = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .map_err(std::io::Error::other)?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
    }

    /// `GET /ready`.
    pub async fn readiness(&self) -> EnvoyReadiness {
        match self.request(http::Method::GET, "/ready").await {
            Ok((200, _)) => EnvoyReadiness::Live,
            Ok((status, body)) => EnvoyReadiness::NotLive(format!("{status} {}", body.trim())),
            Err(e) => EnvoyReadiness::Unreachable(e.to_string()),
        }
    }

    /// `POST /drain_listeners?graceful` (with `inboundonly` for a sidecar: its
    /// application may still call out while it shuts down, as Istio's agent does).
    pub async fn drain_listeners(&self, inbound_only: bool) -> std::io::Result<()> {
        let path = if inbound_only {
            "/drain_listeners?inboundonly&graceful"
        } else {
            "/drain_listeners?graceful"
        };
        match self.request(http::Method::POST, path).await? {
            (200, _) => Ok(()),
            (status, body) => Err(std::io::Error::other(format!(
                "{path}: {status} {}",
                body.trim()
            ))),
        }
    }

    /// Downstream connections open on Envoy's listeners (the admin listener's left
    /// out), from the per-listener `downstream_cx_active` gauges.
    pub async fn active_connections(&self) -> std::io::Result<u64> {
        let (status, body) = self
            .request(http::Method::GET, "/stats?filter=downstream_cx_active$")
            .await?;
        if status != 200 {
            return Err(std::io::Error::other(format!("/stats: {status}")));
        }
        Ok(listener_connections(&body))
    }
}

/// Sums `listener.NAME.downstream_cx_active` (not the admin's, not per worker).
fn listener_connections(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| {
            name.starts_with("listener.")
                && !name.starts_with("listener.admin.")
                && !name.contains(".worker_")
                && name.ends_with(".downstream_cx_active")
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The bootstrap file in the agent's run directory.
pub fn bootstrap_path(run_dir: &Path) -> PathBuf {
    run_dir.join("envoy-bootstrap.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(extra: &[&str]) -> EnvoyCommand {
        EnvoyCommand {
            program: "envoy".into(),
            extra_args: extra.iter().map(OsString::from).collect(),
            bootstrap: "/run/b.json".into(),
            drain_time: Duration::from_millis(5500),
            ipv6: false,
        }
    }

    #[test]
    fn agent_flags_unless_given() {
        let args: Vec<String> = command(&["--concurrency", "2"])
            .args()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-c",
                "/run/b.json",
                "--drain-time-s",
                "5",
                "--drain-strategy",
                "immediate",
                "--local-address-ip-version",
                "v4",
                "--disable-hot-restart",
                "--concurrency",
                "2"
            ]
        );
        let args: Vec<String> = command(&["--drain-time-s", "45", "--drain-strategy=gradual"])
            .args()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-c",
                "/run/b.json",
                "--local-address-ip-version",
                "v4",
                "--disable-hot-restart",
                "--drain-time-s",
                "45",
                "--drain-strategy=gradual"
            ]
        );
        assert!(command(&["-c", "x.yaml"]).args().is_err());
        assert!(command(&["--config-yaml={}"]).args().is_err());
    }

    #[test]
    fn counts_listener_connections_only() {
        let stats = "http.admin.downstream_cx_active: 1\n\
            http.h.downstream_cx_active: 1\n\
            listener.127.0.0.1_29902.downstream_cx_active: 2\n\
            listener.127.0.0.1_29902.worker_0.downstream_cx_active: 2\n\
            listener.0.0.0.0_15006.downstream_cx_active: 3\n\
            listener.admin.downstream_cx_active: 1\n\
            listener.admin.main_thread.downstream_cx_active: 1\n";
        assert_eq!(listener_connections(stats), 5);
        assert_eq!(listener_connections(""), 0);
    }
}
