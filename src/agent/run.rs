//! One agent's life: bootstrap written, certificate obtained and served over SDS,
//! Envoy started and kept running, readiness reported, and on SIGTERM or SIGINT a
//! drain and a clean exit.
use super::envoy::{EnvoyAdmin, EnvoyCommand, bootstrap_path};
use super::sds::{SecretServer, bind_socket};
use super::status::AgentStatus;
use super::supervisor::{EnvoyCounters, Phase, Supervisor, SupervisorError, SupervisorOptions};
use crate::ca::SpiffeId;
use crate::controlplane::bootstrap::{BootstrapError, EnvoyBootstrap, XdsTlsFiles};
use crate::identity::{CertificateManager, ControlPlaneTls, ManagerOptions, TransportError};
use crate::xds::ProxyKind;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Everything an agent is told.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The control plane's xDS over mutual TLS (its 15012), `HOST:PORT`.
    pub xds_address: String,
    /// The CA's address (Istio's `CreateCertificate`), `HOST:PORT`.
    pub ca_address: String,
    /// The mesh's root certificate(s): the control plane's and the CA's serving
    /// certificates are verified with it.
    pub ca_root: PathBuf,
    /// The name the control plane's serving certificate must carry (sent as SNI).
    pub server_name: String,
    /// A join token or service-account JWT for the first certificate.
    pub token_file: Option<PathBuf>,
    /// The workload's identity, `spiffe://TD/ns/NS/sa/SA`.
    pub identity: SpiffeId,
    pub pod_name: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub cluster_id: String,
    pub workload_name: Option<String>,
    pub kind: ProxyKind,
    /// The certificate lifetime asked for (the CA may grant less).
    pub workload_cert_ttl: Duration,
    /// Holds the bootstrap and the SDS socket's directory.
    pub run_dir: PathBuf,
    pub status_address: SocketAddr,
    pub admin_port: u16,
    /// The longest a shutdown waits for Envoy's connections to finish.
    pub drain_duration: Duration,
    /// Delta ADS (`DELTA_GRPC`) rather than state-of-the-world.
    pub delta: bool,
    pub envoy_program: PathBuf,
    /// Arguments for Envoy after the agent's own.
    pub envoy_args: Vec<OsString>,
    pub supervisor: SupervisorOptions,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the run directory {path}: {error}")]
    RunDir {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("the Envoy bootstrap: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("--ca-root: {0}")]
    Transport(#[from] TransportError),
    #[error("the SDS socket in {path}: {error}")]
    Socket {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("the status port {addr}: {error}")]
    Status {
        addr: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("Envoy: {0}")]
    Envoy(#[from] SupervisorError),
}

fn run_dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |error| AgentError::RunDir {
        path: path.display().to_string(),
        error,
    }
}

impl AgentOptions {
    /// The bootstrap of this agent's Envoy, with its SDS socket at `socket`.
    pub fn bootstrap(&self, socket: &Path) -> EnvoyBootstrap {
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "SERVICE_ACCOUNT".to_string(),
            self.identity.service_account.clone(),
        );
        metadata.insert("NAME".to_string(), self.pod_name.clone());
        metadata.insert("MESH_ID".to_string(), self.identity.trust_domain.clone());
        if let Some(w) = &self.workload_name {
            metadata.insert("WORKLOAD_NAME".to_string(), w.clone());
        }
        EnvoyBootstrap {
            xds_address: self.xds_address.clone(),
            node_id: self.pod_name.clone(),
            kind: self.kind,
            namespace: self.identity.namespace.clone(),
            labels: self.labels.clone(),
            ip: self.ip.clone(),
            delta: self.delta,
            admin_address: "127.0.0.1".into(),
            admin_port: self.admin_port,
            cluster: None,
            cluster_id: self.cluster_id.clone(),
            network: String::new(),
            xds_tls: Some(XdsTlsFiles {
                root_cert: self.ca_root.clone(),
                cert_chain: None,
                private_key: None,
                agent_certificate: true,
                server_name: self.server_name.clone(),
            }),
            agent_sds_socket: Some(socket.to_path_buf()),
            istio_version: env!("CARGO_PKG_VERSION").to_string(),
            metadata,
            proxy_config: None,
        }
    }
}

/// Writes `text` to `path` through a file beside it and a rename, so that Envoy never
/// reads half a bootstrap.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// How often the `--ca-root` file is read again.
const ROOT_FILE_POLL: Duration = Duration::from_secs(5);

/// Reads the `--ca-root` file again every few seconds; when its roots change (a root
/// rotated in by whoever maintains it, as Istio's `istio-ca-root-cert` ConfigMap),
/// `ROOTCA` carries them from then on. An unreadable or empty file changes nothing.
async fn follow_root_file(path: PathBuf, secrets: SecretServer) {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| super::sds::pem_certificates(&t))
            .filter(|r| !r.is_empty())
    };
    let mut last = read(&path);
    loop {
        tokio::time::sleep(ROOT_FILE_POLL).await;
        let Some(now) = read(&path) else { continue };
        if last.as_ref() != Some(&now) {
            tracing::info!(file = %path.display(), roots = now.len(), "the root certificate file changed; ROOTCA follows it");
            secrets.set_extra_roots(now.clone());
            last = Some(now);
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT, then drains Envoy and returns. An error is
/// returned for what makes it impossible to start (files, ports, Envoy's program).
pub async fn run(o: AgentOptions) -> Result<(), AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;

    std::fs::create_dir_all(&o.run_dir).map_err(run_dir_error(&o.run_dir))?;
    let run_dir = std::fs::canonicalize(&o.run_dir).map_err(run_dir_error(&o.run_dir))?;
    let sds_dir = run_dir.join("sds");
    let (listener, socket) = bind_socket(&sds_dir).map_err(|error| AgentError::Socket {
        path: sds_dir.display().to_string(),
        error,
    })?;
    let bootstrap = o.bootstrap(&socket);
    let json = serde_json::to_string_pretty(&bootstrap.to_json()?).unwrap_or_default();
    let bootstrap_file = bootstrap_path(&run_dir);
    write_file(&bootstrap_file, &json).map_err(run_dir_error(&bootstrap_file))?;
    let node_id = bootstrap.full_node_id()?;

    let transport = ControlPlaneTls::from_file(&o.ca_root, &o.server_name)?;
    let mut manager_options = ManagerOptions::new(&o.ca_address, transport, o.identity.clone());
    manager_options.token_file = o.token_file.clone();
    manager_options.requested_ttl = o.workload_cert_ttl;
    let mut manager = CertificateManager::new(manager_options);
    let secrets = SecretServer::new();
    let publish = secrets.clone();
    // Before the certificate is published to the handles: Envoy, once started, finds
    // it on the socket.
    manager.on_issue(move |cert| publish.publish(cert));

    let counters = Arc::new(EnvoyCounters::default());
    let status = Arc::new(AgentStatus {
        certificate: manager.handle(),
        identity: manager.status(),
        envoy: counters.clone(),
        admin: EnvoyAdmin::new(o.admin_port),
        draining: Default::default(),
    });
    let status_listener = tokio::net::TcpListener::bind(o.status_address)
        .await
        .map_err(|error| AgentError::Status {
            addr: o.status_address,
            error,
        })?;
    let status_addr = status_listener.local_addr().unwrap_or(o.status_address);

    let (stop_sds, sds_stopped) = tokio::sync::oneshot::channel::<()>();
    let sds_task = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            if let Err(e) = secrets
                .serve(listener, async {
                    let _ = sds_stopped.await;
                })
                .await
            {
                tracing::error!(error = %e, "the SDS server stopped");
            }
        }
    });
    let status_task = tokio::spawn(super::status::serve(status_listener, status.clone()));
    let roots_task = tokio::spawn(follow_root_file(o.ca_root.clone(), secrets.clone()));
    let mut handle = manager.handle();
    let identity_task = tokio::spawn(manager.run());
    tracing::info!(node = %node_id, identity = %o.identity, xds = %o.xds_address, ca = %o.ca_address, bootstrap = %bootstrap_file.display(), sds = %socket.display(), status = %status_addr, admin_port = o.admin_port, "agent started; waiting for the workload certificate");

    let cleanup = |sds_task: tokio::task::JoinHandle<()>| async move {
        identity_task.abort();
        status_task.abort();
        roots_task.abort();
        let _ = stop_sds.send(());
        let _ = sds_task.await;
    };

    // Envoy starts with the first certificate: without it, xds-grpc cannot connect.
    tokio::select! {
        cert = handle.wait_valid() => {
            tracing::info!(serial = %cert.serial, "workload certificate obtained; starting Envoy");
        }
        _ = term.recv() => {
            tracing::info!("SIGTERM before Envoy was started; exiting");
            cleanup(sds_task).await;
            return Ok(());
        }
        _ = int.recv() => {
            tracing::info!("SIGINT before Envoy was started; exiting");
            cleanup(sds_task).await;
            return Ok(());
        }
    }

    let (phase, phase_rx) = watch::channel(Phase::Running);
    let supervisor = Supervisor {
        command: EnvoyCommand {
            program: o.envoy_program.clone(),
            extra_args: o.envoy_args.clone(),
            bootstrap: bootstrap_file.clone(),
            drain_time: o.drain_duration,
            ipv6: o.ip.parse::<std::net::Ipv6Addr>().is_ok(),
        },
        options: o.supervisor.clone(),
        counters: counters.clone(),
    };
    let mut envoy_task = tokio::spawn(supervisor.run(phase_rx));

    let signal_name = tokio::select! {
        ended = &mut envoy_task => {
            // Only a failure to start the first Envoy ends the supervisor on its own.
            cleanup(sds_task).await;
            return match ended {
                Ok(Err(e)) => Err(e.into()),
                _ => Ok(()),
            };
        }
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };

    // Not ready from now on: the kubelet takes the pod out of its Services' endpoints
    // while Envoy finishes what it has.
    status.draining.store(true, Ordering::SeqCst);
    phase.send_replace(Phase::Draining);
    tracing::info!(signal = signal_name, drain_duration = ?o.drain_duration, "draining Envoy");
    let admin = EnvoyAdmin::new(o.admin_port);
    if counters.running() {
        if let Err(e) = admin.drain_listeners(o.kind == ProxyKind::Sidecar).await {
            tracing::warn!(error = %e, "asking Envoy to drain failed");
        }
        let deadline = tokio::time::Instant::now() + o.drain_duration;
        let drained = async {
            loop {
                match admin.active_connections().await {
                    Ok(0) => return "no connection left",
                    Ok(_) => {}
                    Err(_) if !counters.running() => return "Envoy exited",
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let why = tokio::select! {
            why = drained => why,
            _ = tokio::time::sleep_until(deadline) => "the drain duration is over",
            _ = term.recv() => "a second signal",
            _ = int.recv() => "a second signal",
        };
        tracing::info!(reason = why, "drain done; stopping Envoy");
    }
    phase.send_replace(Phase::Stop);
    let _ = envoy_task.await;
    cleanup(sds_task).await;
    tracing::info!("agent stopped");
    Ok(())
}
