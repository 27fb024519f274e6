//! `meshgate control-plane`: serves the Istio configuration at PATH over xDS (ADS and
//! SDS) to Envoy proxies and meshgate gateways, with debug and metrics endpoints; with
//! `--ca-dir`, also the mesh CA and ADS over mutual TLS on `--xds-tls-addr` (15012).
use clap::Args as ClapArgs;
use meshgate::ca::{
    Authenticator, Ca, CaLayout, CaOptions, CertificateService, JoinTokens, JwtIssuer,
    ServingNames, XdsTls,
};
use meshgate::config::mesh::{MeshConfig, load_mesh_config};
use meshgate::controlplane::config_source::ConfigSource;
use meshgate::controlplane::{ControlPlane, Debounce, Options, debug};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `meshgate control-plane`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Istio configuration: a YAML/JSON file or a directory of them (watched).
    #[arg(long)]
    config: PathBuf,
    /// Where to serve xDS (ADS, SDS), plaintext gRPC.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Where to serve the status page (/), /ready, /debug/syncz, /debug/config_dump and
    /// /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_addr: SocketAddr,
    /// Quiet time that ends a burst of changes before a push, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_after_ms: u64,
    /// Longest a burst of changes can delay a push, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    debounce_max_ms: u64,
    /// Largest xDS request accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_recv_message_size: usize,
    /// The mesh CA's directory: a self-signed root is made there on first start, or
    /// Istio's plug-in layout (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) is
    /// used. Turns on --xds-tls-addr.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Trust domain of the identities the CA issues (spiffe://TRUST_DOMAIN/ns/NS/sa/SA).
    /// Default: --mesh-config's `trustDomain`, else cluster.local.
    #[arg(long, requires = "ca_dir")]
    trust_domain: Option<String>,
    /// Istio MeshConfig (YAML): mesh-wide settings such as `trustDomain`. Read at start;
    /// any error in it refuses to start.
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// Longest lifetime of a certificate the CA issues (longer requests are refused).
    #[arg(long, default_value = "24h", value_parser = super::token::parse_duration, requires = "ca_dir")]
    ca_max_ttl: Duration,
    /// Lifetime of the workload certificates served as the SDS secret `default` over
    /// mutual TLS (Istio's SECRET_TTL; at most --ca-max-ttl); renewed at about half-life.
    #[arg(long, default_value = "24h", value_parser = super::token::parse_duration, requires = "ca_dir")]
    workload_cert_ttl: Duration,
    /// Where to serve ADS over mutual TLS and Istio's certificate service (needs --ca-dir).
    #[arg(long, default_value = "127.0.0.1:15012", requires = "ca_dir")]
    xds_tls_addr: SocketAddr,
    /// Another DNS name or IP address for the TLS port's certificate (repeatable); it
    /// always has istiod.istio-system.svc[.cluster.local] and the address listened on.
    #[arg(long = "xds-tls-san", requires = "ca_dir")]
    xds_tls_sans: Vec<String>,
    /// Issuer of service-account JWTs the CA accepts (with --jwks-file).
    #[arg(long, requires_all = ["ca_dir", "jwks_file"])]
    jwt_issuer: Option<String>,
    /// JWKS file with that issuer's keys (read again when it changes).
    #[arg(long, requires = "jwt_issuer")]
    jwks_file: Option<PathBuf>,
    /// Audience those JWTs must carry (repeatable).
    #[arg(
        long = "jwt-audience",
        default_value = "istio-ca",
        requires = "jwt_issuer"
    )]
    jwt_audiences: Vec<String>,
    #[command(flatten)]
    ratelimit: super::ratelimit::RateLimitArgs,
    /// Where the proxies reach the rate-limit service (the endpoint of their
    /// `meshgate-ratelimit` cluster); default: `--ratelimit-address`, which must then name
    /// an address, not 0.0.0.0.
    #[arg(long, value_name = "ADDR", requires = "ratelimit_redis")]
    ratelimit_advertise: Option<std::net::SocketAddr>,
}

/// How often the CA directory is looked at for changes.
const CA_RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The CA and the mutual-TLS port, set up from the flags.
struct MeshIdentity {
    tls: Arc<XdsTls>,
    service: CertificateService,
    ca: Arc<Ca>,
    listener: tokio::net::TcpListener,
}

/// The mesh configuration, with --trust-domain applied: a flag and a file that disagree
/// are refused rather than one silently winning.
fn mesh_config(args: &Args) -> Result<MeshConfig, String> {
    let mut mesh = match &args.mesh_config {
        Some(path) => load_mesh_config(path).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            format!(
                "--mesh-config: the mesh configuration is refused:\n{}",
                lines.join("\n")
            )
        })?,
        None => MeshConfig::default(),
    };
    if let Some(td) = &args.trust_domain {
        if args.mesh_config.is_some() && *td != mesh.trust_domain {
            return Err(format!(
                "--trust-domain {td} disagrees with the mesh configuration's trustDomain {}; give one",
                mesh.trust_domain
            ));
        }
        mesh.trust_domain = td.clone();
    }
    Ok(mesh)
}

fn mesh_identity(args: &Args, mesh: &MeshConfig) -> Result<Option<MeshIdentity>, String> {
    let Some(dir) = &args.ca_dir else {
        return Ok(None);
    };
    let trust_domain = mesh.trust_domain.clone();
    let options = CaOptions {
        trust_domain: trust_domain.clone(),
        max_ttl: args.ca_max_ttl,
    };
    let ca = Arc::new(Ca::load_or_create(dir, options).map_err(|e| e.to_string())?);
    let root = dir.join(meshgate::ca::authority::ROOT_CERT);
    match ca.layout() {
        CaLayout::Created => {
            tracing::info!(root = %root.display(), "made a self-signed root CA (distribute root-cert.pem to clients)")
        }
        CaLayout::SelfSigned => {
            tracing::info!(root = %root.display(), "loaded the self-signed root CA")
        }
        CaLayout::PlugIn => {
            tracing::info!(root = %root.display(), "loaded Istio's plug-in CA (ca-cert.pem signs)")
        }
    }
    let join = JoinTokens::open(dir, &trust_domain).map_err(|e| e.to_string())?;
    let jwt = match (&args.jwt_issuer, &args.jwks_file) {
        (Some(iss), Some(file)) => Some(
            JwtIssuer::new(iss, file, args.jwt_audiences.clone(), &trust_domain)
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let authn = Arc::new(Authenticator::new(join, jwt));
    let names = ServingNames::for_listener(args.xds_tls_addr, &args.xds_tls_sans);
    let tls = Arc::new(XdsTls::new(ca.clone(), names).map_err(|e| e.to_string())?);
    let listener = meshgate::controlplane::listen(args.xds_tls_addr)
        .map_err(|e| format!("binding {}: {e}", args.xds_tls_addr))?;
    Ok(Some(MeshIdentity {
        tls,
        service: CertificateService::new(ca.clone(), authn),
        ca,
        listener,
    }))
}

/// glibc gives each thread that allocates its own arena, up to 8 per core, and returns
/// little of them: the translation of a change runs on a blocking thread, the pushes on
/// the workers, and each grows its own heap. Two arenas hold the control plane's peak
/// at 1000 proxies x 1000 services to ~230 MiB instead of ~350 MiB at the same CPU.
/// `MALLOC_ARENA_MAX` in the environment still decides when set.
fn limit_malloc_arenas() {
    meshgate::proxy::malloc::limit_arenas(2);
}

pub fn run(args: Args) -> ExitCode {
    limit_malloc_arenas();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate control-plane: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let mesh = match mesh_config(&args) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let source = match ConfigSource::load_in_mesh(&args.config, mesh.clone()) {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            for d in &errors {
                eprintln!("{d}");
            }
            eprintln!(
                "meshgate control-plane: {} has {} error(s); not starting",
                args.config.display(),
                errors.len()
            );
            return ExitCode::from(1);
        }
    };
    // The debounce below merges bursts of changes; the watch only waits for an editor's
    // writes to end.
    let _watch = source.watch(Duration::from_millis(20));
    // A changed mesh configuration is taken up as configuration changes are, but for the
    // trust domain, which the CA was started in.
    let _mesh_watch = args.mesh_config.clone().map(|path| {
        let running = mesh.trust_domain.clone();
        source.watch_mesh(path, Duration::from_millis(20), move |m| {
            if m.trust_domain == running {
                Ok(())
            } else {
                Err(format!(
                    "trustDomain cannot change while the control plane runs ({running} -> {}); restart it",
                    m.trust_domain
                ))
            }
        })
    });
    let options = Options {
        debounce: Debounce {
            after: Duration::from_millis(args.debounce_after_ms),
            max: Duration::from_millis(args.debounce_max_ms),
        },
        max_recv_message_size: args.max_recv_message_size,
        ..Options::default()
    };
    let cp = ControlPlane::new(source.clone(), options);
    // Global rate limits: the service every proxy's `meshgate-ratelimit` cluster calls,
    // given the RateLimitPolicy resources' limits with every load.
    let _ratelimit = match args.ratelimit.start(None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate control-plane: {e:#}");
            return ExitCode::from(2);
        }
    };
    if _ratelimit.is_none()
        && let Err(errors) = source.refuse_global_limits()
    {
        for d in &errors {
            eprintln!("{d}");
        }
        eprintln!(
            "meshgate control-plane: {} has {} error(s); not starting",
            args.config.display(),
            errors.len()
        );
        return ExitCode::from(1);
    }
    if let Some(rl) = &_ratelimit {
        let advertise = args.ratelimit_advertise.unwrap_or(rl.local_addr());
        if advertise.ip().is_unspecified() {
            eprintln!(
                "meshgate control-plane: --ratelimit-address {} is not an address proxies can call; give --ratelimit-advertise ADDR",
                rl.local_addr()
            );
            return ExitCode::from(2);
        }
        let base = (*rl.service().limits()).clone();
        source.serve_rate_limits(rl.service().clone(), advertise, base);
    }
    let identity = match mesh_identity(&args, &mesh) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let debug_listener = match debug::bind(args.debug_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(debug::serve(
        cp.clone(),
        debug_listener,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    if let Some(MeshIdentity {
        tls,
        service,
        ca,
        listener,
    }) = identity
    {
        // A changed CA directory (a root rotation, a new plug-in certificate) is taken
        // up without a restart.
        tokio::spawn(ca.clone().watch_dir(CA_RELOAD_EVERY));
        cp.serve_workload_certificates(meshgate::controlplane::WorkloadCa {
            ca,
            ttl: args.workload_cert_ttl,
        });
        tokio::spawn(tls.clone().renew_forever());
        let (cp, stop) = (cp.clone(), stopped(stop_rx.clone()));
        tracing::info!(xds_tls = %args.xds_tls_addr, "serving ADS over mutual TLS and the CA");
        tokio::spawn(async move {
            if let Err(e) = cp.serve_tls(listener, tls, Some(service), stop).await {
                tracing::error!(error = %e, "the TLS xDS server stopped");
            }
        });
    }
    tracing::info!(xds = %args.xds_addr, debug = %args.debug_addr, config = %args.config.display(), "control plane serving");
    match cp.bind_and_serve(args.xds_addr, stopped(stop_rx)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            ExitCode::from(2)
        }
    }
}
