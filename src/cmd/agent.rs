//! `meshgate agent [FLAGS] -- ENVOY [ARGS]`: Istio's pilot-agent for one pod. Writes
//! Envoy's bootstrap, obtains and renews the workload certificate, serves it to Envoy
//! over SDS on a Unix socket, runs Envoy (restarting it if it dies), reports readiness
//! on the status port and drains Envoy on SIGTERM.
use anyhow::Context as _;
use clap::{Args as ClapArgs, ValueEnum};
use meshgate::agent::supervisor::SupervisorOptions;
use meshgate::agent::{AgentOptions, run as run_agent};
use meshgate::ca::SpiffeId;
use meshgate::config::mesh::{DEFAULT_TRUST_DOMAIN, MeshConfig, load_mesh_config};
use meshgate::xds::{ProxyIdentity, ProxyKind};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProxyType {
    /// An application's sidecar.
    Sidecar,
    /// A gateway (Istio's `router`).
    Router,
}

/// Flags of `meshgate agent`. The pod's identity flags default to the environment
/// variables Istio's injector sets from the downward API.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The control plane's xDS over mutual TLS (istiod's 15012), HOST:PORT. Envoy's
    /// `xds-grpc` cluster connects there with the workload certificate.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "istiod.istio-system.svc:15012"
    )]
    xds: String,
    /// The CA (Istio's certificate service), HOST:PORT. Default: --xds.
    #[arg(long, value_name = "ADDR")]
    ca_address: Option<String>,
    /// PEM root certificate(s) of the mesh (the CA's root-cert.pem): the control plane
    /// and the CA are verified with it, and so is xds-grpc in Envoy.
    #[arg(long, value_name = "FILE")]
    ca_root: PathBuf,
    /// A join token (`meshgate token create`) or a service-account JWT for the first
    /// certificate (and whenever no valid one is held); read again at each use.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The name the control plane's serving certificate must carry (sent as SNI).
    #[arg(long, default_value = "istiod.istio-system.svc")]
    xds_server_name: String,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The pod's service account: the identity is
    /// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// The pod's name (in the node id and the `NAME` metadata).
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// The pod's IP (in the node id and `INSTANCE_IPS`).
    #[arg(long, env = "INSTANCE_IP")]
    ip: IpAddr,
    /// The pod's labels, k=v,k2=v2 (Sidecar and Gateway selectors match them).
    #[arg(long, default_value = "")]
    labels: String,
    /// The mesh's trust domain. Default: --mesh-config's `trustDomain`, else
    /// cluster.local.
    #[arg(long)]
    trust_domain: Option<String>,
    /// The cluster's id (`CLUSTER_ID` metadata).
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// The workload's name (`WORKLOAD_NAME` metadata), e.g. its Deployment.
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME")]
    workload_name: Option<String>,
    /// The workload certificate lifetime asked for (the CA may grant less); renewed
    /// at about half of it.
    #[arg(long, default_value = "24h", value_parser = super::token::parse_duration)]
    workload_cert_ttl: Duration,
    /// sidecar (node id `sidecar~...`) or router (a gateway, `router~...`).
    #[arg(long, value_enum, default_value_t = ProxyType::Sidecar)]
    proxy_type: ProxyType,
    /// Where the bootstrap (`envoy-bootstrap.json`) and the SDS socket (`sds/socket`,
    /// the directory 0700, the socket 0600) are made.
    #[arg(long, value_name = "DIR", default_value = "/var/run/meshgate")]
    run_dir: PathBuf,
    /// The status port: `/healthz/ready` and `/stats/prometheus`.
    #[arg(long, default_value_t = 15021)]
    status_port: u16,
    /// The status port's address (the kubelet probes the pod's IP).
    #[arg(long, default_value = "0.0.0.0")]
    status_address: IpAddr,
    /// Envoy's admin port, on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// On SIGTERM: the longest the agent waits for Envoy's connections to finish
    /// (also Envoy's --drain-time-s). Default: --mesh-config's
    /// `defaultConfig.terminationDrainDuration`, else 5s.
    #[arg(long, value_parser = super::token::parse_duration)]
    drain_duration: Option<Duration>,
    /// Istio MeshConfig (YAML): the trust domain and the drain duration.
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// Incremental xDS for Envoy's ADS (the default).
    #[arg(long, conflicts_with = "sotw")]
    delta: bool,
    /// State-of-the-world xDS for Envoy's ADS.
    #[arg(long)]
    sotw: bool,
    /// Envoy's program and extra arguments, after `--`. The agent adds `-c BOOTSTRAP`,
    /// `--drain-time-s`, `--drain-strategy immediate`, `--local-address-ip-version` and
    /// `--disable-hot-restart` (each unless given here).
    #[arg(last = true, required = true, value_name = "ENVOY")]
    envoy: Vec<OsString>,
}

pub fn run(args: Args) -> ExitCode {
    super::gateway::init_tracing();
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("meshgate agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(args: Args) -> anyhow::Result<()> {
    let mesh = match &args.mesh_config {
        Some(path) => load_mesh_config(path).map_err(|diags| {
            anyhow::anyhow!(
                "--mesh-config: the mesh configuration is refused:\n{}",
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?,
        None => MeshConfig::default(),
    };
    let trust_domain = match (&args.trust_domain, &args.mesh_config) {
        (Some(td), Some(_)) if *td != mesh.trust_domain => anyhow::bail!(
            "--trust-domain {td} disagrees with the mesh configuration's trustDomain {}; give one",
            mesh.trust_domain
        ),
        (Some(td), _) => td.clone(),
        (None, Some(_)) => mesh.trust_domain.clone(),
        (None, None) => DEFAULT_TRUST_DOMAIN.to_string(),
    };
    let identity = SpiffeId::new(&trust_domain, &args.namespace, &args.service_account)
        .context("the workload identity (--trust-domain, --namespace, --service-account)")?;
    let labels =
        ProxyIdentity::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let drain_duration = args
        .drain_duration
        .or(mesh.termination_drain_duration)
        .unwrap_or(Duration::from_secs(5));
    let (program, envoy_args) = args
        .envoy
        .split_first()
        .context("the Envoy command after `--`")?;
    let options = AgentOptions {
        ca_address: args.ca_address.clone().unwrap_or_else(|| args.xds.clone()),
        xds_address: args.xds,
        ca_root: args.ca_root,
        server_name: args.xds_server_name,
        token_file: args.token_file,
        identity,
        pod_name: args.pod_name,
        ip: args.ip.to_string(),
        labels,
        cluster_id: args.cluster_id,
        workload_name: args.workload_name,
        kind: match args.proxy_type {
            ProxyType::Sidecar => ProxyKind::Sidecar,
            ProxyType::Router => ProxyKind::Router,
        },
        workload_cert_ttl: args.workload_cert_ttl,
        run_dir: args.run_dir,
        status_address: SocketAddr::new(args.status_address, args.status_port),
        admin_port: args.admin_port,
        drain_duration,
        delta: !args.sotw,
        envoy_program: PathBuf::from(program),
        envoy_args: envoy_args.to_vec(),
        supervisor: SupervisorOptions::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("the runtime")?;
    rt.block_on(run_agent(options))?;
    Ok(())
}
