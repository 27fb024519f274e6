//! `meshgate gateway`: the data plane, standalone.
use anyhow::Context as _;
use clap::Args;
use meshgate::proxy::access_log::AccessLogMode;
use meshgate::proxy::stats::SourceLabels;
use meshgate::proxy::{Gateway, GatewayOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Flags of `meshgate gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Envoy resources as JSON (`{"listeners": [...], "routes": [...], "clusters": [...],
    /// "endpoints": [...]}`), watched for changes.
    #[arg(long, value_name = "FILE", hide = true)]
    pub xds_json: Option<PathBuf>,
    /// The gateway's workload labels (Istio Gateway `selector`s match them).
    #[arg(long, default_value = "istio=ingressgateway")]
    pub labels: String,
    /// The gateway's namespace.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Worker threads, each with its own listeners and upstream pools (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Admin API address (`/ready`, `/config_dump`, `/clusters`, `/stats`, ...).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Health endpoint address (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub health_address: SocketAddr,
    /// Prometheus endpoint address (`/stats/prometheus`).
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub prometheus_address: SocketAddr,
    /// Access log on stdout: json, text or off.
    #[arg(long, default_value = "json")]
    pub access_log: AccessLogMode,
    /// How long in-flight requests may take to finish on shutdown (seconds).
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Open downstream connections per listener.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
}

pub fn run(args: GatewayArgs) -> ExitCode {
    init_tracing();
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("meshgate gateway: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_inner(args: GatewayArgs) -> anyhow::Result<()> {
    let labels =
        meshgate::xds::ProxyIdentity::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!(e))?;
    let app = labels
        .get("app")
        .or_else(|| labels.get("istio"))
        .cloned()
        .unwrap_or_else(|| "meshgate".into());
    let opts = GatewayOptions {
        concurrency: args.concurrency,
        admin_addr: Some(args.admin_address),
        health_addr: Some(args.health_address),
        prometheus_addr: Some(args.prometheus_address),
        access_log: args.access_log,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.0)),
        max_connections: args.max_connections,
        source: SourceLabels {
            workload: app.clone(),
            namespace: args.namespace.clone(),
            app,
        },
    };
    let Some(source) = args.xds_json.clone() else {
        anyhow::bail!("nothing to serve: give --xds-json FILE");
    };
    let gateway = Gateway::start(opts).context("starting the gateway")?;
    tracing::info!(admin = ?gateway.admin_addr(), health = ?gateway.health_addr(), prometheus = ?gateway.prometheus_addr(), "gateway started");
    let mut loaded = load_json(&gateway, &source, None)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut quit = gateway.quit_requested();
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = quit.changed() => break,
                _ = tick.tick() => {
                    match load_json(&gateway, &source, Some(loaded)) {
                        Ok(t) => loaded = t,
                        Err(e) => tracing::error!("{e:#}"),
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    tracing::info!("draining");
    gateway.shutdown();
    Ok(())
}

/// Loads the JSON resources if the file changed since `seen`; a bad file is reported and
/// the last good config keeps serving.
fn load_json(
    gateway: &Gateway,
    path: &PathBuf,
    seen: Option<SystemTime>,
) -> anyhow::Result<SystemTime> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", path.display()))?;
    if seen == Some(modified) {
        return Ok(modified);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
        .and_then(|v| {
            meshgate::proxy::json_input::resource_set_from_json(&v)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        });
    let set = match parsed {
        Ok(s) => s,
        Err(e) if seen.is_some() => {
            tracing::error!("rejected update, keeping the last good config: {e:#}");
            return Ok(modified);
        }
        Err(e) => return Err(e),
    };
    let version = format!(
        "{}",
        modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    match gateway.apply(set, &version) {
        Ok(()) => tracing::info!(version, "config applied"),
        Err(e) if seen.is_some() => {
            tracing::error!("rejected update, keeping the last good config: {e}")
        }
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    }
    Ok(modified)
}
