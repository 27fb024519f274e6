//! `meshgate gateway`: the data plane, standalone.
use anyhow::Context as _;
use clap::Args;
use meshgate::acme::AcmeCertificate;
use meshgate::config::mesh::AccessLogEncoding;
use meshgate::pipeline::{self, ConfigWatch, mesh_identity, watch::fingerprint};
use meshgate::proxy::access_log::AccessLogMode;
use meshgate::proxy::stats::SourceLabels;
use meshgate::proxy::{Gateway, GatewayOptions};
use meshgate::ratelimit::{LimitTable, RateLimitServer};
use meshgate::xds::ResourceSet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `meshgate gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Istio configuration (a file or a directory of YAML), watched for changes.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["xds_json", "xds"])]
    pub config: Option<PathBuf>,
    /// Join a control plane: the xDS (ADS) server's HOST:PORT. Any conforming server
    /// works; `meshgate control-plane` serves on 127.0.0.1:15010.
    #[arg(long, value_name = "ADDR", conflicts_with = "xds_json")]
    pub xds: Option<String>,
    /// With --xds: state-of-the-world xDS instead of delta.
    #[arg(long, requires = "xds")]
    pub xds_sotw: bool,
    /// With --xds: how long the first sync waits for each subscription's first response
    /// before counting it as empty, as Envoy's initial_fetch_timeout (seconds; 0: wait
    /// forever). Timed from when the connection to the server is up.
    #[arg(long, requires = "xds", value_name = "SECONDS", default_value_t = 15.0)]
    pub xds_initial_fetch_timeout: f64,
    /// With --xds: the node id, Istio's router~IP~POD.NS~NS.svc.cluster.local, or a pod
    /// name that is expanded into it (with 127.0.0.1 as the IP).
    #[arg(long, requires = "xds", default_value = "meshgate-gateway")]
    pub node_id: String,
    /// With --config: the gateway's mesh identity for ISTIO_MUTUAL, in Istio's
    /// file-mounted layout (`cert-chain.pem`, `key.pem`, `root-cert.pem`), served as the
    /// SDS secrets `default` and `ROOTCA` and reloaded when the files change. Without
    /// it, a configuration that needs mesh mTLS is refused.
    #[arg(long, value_name = "DIR", requires = "config")]
    pub mesh_certs: Option<PathBuf>,
    /// With --xds: join the mesh over mutual TLS. PEM trust anchor(s) for the control
    /// plane's serving certificate and the mesh (the CA's root-cert.pem). ADS and
    /// certificate requests then go over TLS to --xds (the control plane's 15012 port),
    /// with a workload certificate obtained with --token-file; without it, plaintext.
    #[arg(long, value_name = "FILE", requires_all = ["xds", "token_file"])]
    pub ca_root: Option<PathBuf>,
    /// With --ca-root: a join token (`meshgate token create`) or a service-account JWT,
    /// presented for the first certificate and whenever no valid one is held. Read
    /// again at each use, so it can be replaced.
    #[arg(long, value_name = "FILE", requires_all = ["xds", "ca_root"])]
    pub token_file: Option<PathBuf>,
    /// With --ca-root: the name the control plane's serving certificate must carry
    /// (sent as SNI).
    #[arg(long, requires = "xds", default_value = "istiod.istio-system.svc")]
    pub xds_server_name: String,
    /// With --ca-root: the service account of the identity asked for,
    /// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (the default is that of
    /// Istio's ingress gateway). The token decides what the CA grants: one made for
    /// another identity is refused.
    #[arg(
        long,
        requires = "ca_root",
        default_value = "istio-ingressgateway-service-account"
    )]
    pub service_account: String,
    /// With --ca-root: the mesh's trust domain. Default: --mesh-config's `trustDomain`,
    /// else cluster.local.
    #[arg(long, requires = "ca_root")]
    pub trust_domain: Option<String>,
    /// With --ca-root: the workload certificate lifetime asked for (the CA may grant
    /// less); renewed at about half of it.
    #[arg(long, requires = "ca_root", default_value = "24h", value_parser = super::token::parse_duration)]
    pub workload_cert_ttl: Duration,
    /// Envoy resources as JSON (`{"listeners": [...], "routes": [...], "clusters": [...],
    /// "endpoints": [...]}`), watched for changes.
    #[arg(long, value_name = "FILE", hide = true)]
    pub xds_json: Option<PathBuf>,
    /// The gateway's workload labels (Istio Gateway `selector`s match them).
    #[arg(long, default_value = "istio=ingressgateway")]
    pub labels: String,
    /// The gateway's namespace (default: that of the first Gateway selecting it).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Istio MeshConfig (YAML): mesh-wide settings (trust domain, access log,
    /// `defaultConfig`). Flags given explicitly win over it.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// This gateway's own ProxyConfig (YAML or JSON, what Istio's
    /// `proxy.istio.io/config` pod annotation holds), laid over --mesh-config's
    /// `defaultConfig`: e.g. `gatewayTopology: {numTrustedProxies: 1, proxyProtocol: {}}`.
    /// With --xds it is sent to the control plane as the `PROXY_CONFIG` node metadata.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
    /// Worker threads, each with its own listeners and upstream pools (0: one per core).
    /// Default: `defaultConfig.concurrency` of --mesh-config, else 0.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Admin API address (`/ready`, `/config_dump`, `/clusters`, `/stats`, ...).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Health endpoint address (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub health_address: SocketAddr,
    /// Prometheus endpoint address (`/stats/prometheus`).
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub prometheus_address: SocketAddr,
    /// Access log on stdout: json, text or off. Default: as --mesh-config's
    /// `accessLogFile`/`accessLogEncoding` say if set, else json.
    #[arg(long)]
    pub access_log: Option<AccessLogMode>,
    /// How long in-flight requests may take to finish on shutdown (seconds). Default:
    /// `defaultConfig.terminationDrainDuration` of --mesh-config, else 5.
    #[arg(long)]
    pub drain_timeout: Option<f64>,
    /// Open downstream connections per listener.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Open downstream connections across all listeners (Envoy's
    /// `global_downstream_max_connections`). Default: no limit beyond --max-connections.
    #[arg(long, value_name = "N")]
    pub max_connections_total: Option<usize>,
    /// Requests served on one downstream connection before it is closed (HTTP/1.1:
    /// `connection: close`; HTTP/2: GOAWAY). Default: no limit.
    #[arg(long, value_name = "N")]
    pub max_requests_per_connection: Option<u32>,
    /// Heap size the overload manager protects (bytes, or with a unit: 512Mi, 1G), or
    /// `P%`: P percent of the process's cgroup memory limit (a container's memory limit),
    /// read at start; no limit found is an error. Near it, new requests are shed with 503
    /// and new connections refused. Default: none.
    #[arg(long, value_name = "SIZE|P%", env = "MESHGATE_MAX_HEAP", value_parser = parse_max_heap)]
    pub max_heap: Option<MaxHeap>,
    /// With --max-heap: the fraction of it at which keep-alive is disabled (HTTP/1
    /// responses say `connection: close`, HTTP/2 connections get GOAWAY; Envoy's
    /// `disable_http_keepalive`).
    #[arg(
        long,
        value_name = "FRACTION",
        requires = "max_heap",
        default_value_t = 0.92
    )]
    pub heap_disable_keepalive_at: f64,
    /// With --max-heap: the fraction of it at which new requests are answered 503
    /// `envoy overloaded` (response flag OL; Envoy's `stop_accepting_requests`).
    #[arg(
        long,
        value_name = "FRACTION",
        requires = "max_heap",
        default_value_t = 0.95
    )]
    pub heap_stop_requests_at: f64,
    /// With --max-heap: the fraction of it at which listeners stop accepting
    /// connections (they wait in the backlog; Envoy's `stop_accepting_connections`).
    #[arg(
        long,
        value_name = "FRACTION",
        requires = "max_heap",
        default_value_t = 0.98
    )]
    pub heap_stop_connections_at: f64,
    /// Unix socket through which this gateway hands its listening sockets to a successor
    /// (`meshgate gateway --upgrade`), for upgrades that refuse no connection.
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the gateway serving --upgrade-socket; once
    /// this one serves, that one stops accepting, drains and exits.
    #[arg(long, requires = "upgrade_socket")]
    pub upgrade: bool,
    #[command(flatten)]
    pub ratelimit: super::ratelimit::RateLimitArgs,
}

/// glibc arenas of the gateway (see `proxy::malloc`): one. Configuration is built on
/// several threads in turn (file parsing, the xDS client, compiling); with an arena per
/// thread each kept its own peak: 10,000 SNI hosts peaked at 288 MiB standalone and
/// 320-394 MiB with `--xds` (it depends on which threads ran what) with glibc's default,
/// 262 and 248 MiB with one arena. The price is start-up time, the parse threads sharing
/// the arena: 1.74 s instead of 1.35 s to the last of 10,000 hosts. Request handling
/// allocates little, mostly from glibc's per-thread caches: S1's CPU per request did not
/// move beyond its run-to-run spread.
const MALLOC_ARENAS: i32 = 1;

pub fn run(args: GatewayArgs) -> ExitCode {
    meshgate::proxy::malloc::limit_arenas(MALLOC_ARENAS);
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

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs collected from a pipe or file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run_inner(args: GatewayArgs) -> anyhow::Result<()> {
    let heap_thresholds = meshgate::proxy::overload::HeapThresholds {
        disable_keepalive: args.heap_disable_keepalive_at,
        stop_accepting_requests: args.heap_stop_requests_at,
        stop_accepting_connections: args.heap_stop_connections_at,
    };
    heap_thresholds.validate().map_err(|e| anyhow::anyhow!(e))?;
    let labels =
        meshgate::xds::ProxyIdentity::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!(e))?;
    let app = labels
        .get("app")
        .or_else(|| labels.get("istio"))
        .cloned()
        .unwrap_or_else(|| "meshgate".into());
    let mut mesh = match &args.mesh_config {
        Some(path) => meshgate::config::mesh::load_mesh_config(path).map_err(|diags| {
            anyhow::anyhow!(
                "--mesh-config: the mesh configuration is refused:\n{}",
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?,
        None => meshgate::config::mesh::MeshConfig::default(),
    };
    match &args.trust_domain {
        Some(td) if args.mesh_config.is_some() && *td != mesh.trust_domain => anyhow::bail!(
            "--trust-domain {td} disagrees with the mesh configuration's trustDomain {}; give one",
            mesh.trust_domain
        ),
        Some(td) => mesh.trust_domain = td.clone(),
        None => {}
    }
    if let Some(path) = &args.proxy_config {
        mesh = mesh.with_proxy_config(&load_proxy_config(path)?);
    }
    let access_log = args.access_log.unwrap_or(match mesh.access_log {
        None => AccessLogMode::Json,
        Some(None) => AccessLogMode::Off,
        Some(Some(AccessLogEncoding::Json)) => AccessLogMode::Json,
        Some(Some(AccessLogEncoding::Text)) => AccessLogMode::Text,
    });
    let drain_timeout = match args.drain_timeout {
        Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
        None => mesh
            .termination_drain_duration
            .unwrap_or(Duration::from_secs(5)),
    };
    let (max_heap_bytes, memory_limit_bytes) = match args.max_heap {
        None => (None, None),
        Some(MaxHeap::Bytes(b)) => (Some(b), None),
        Some(m @ MaxHeap::PercentOfLimit(_)) => {
            let (bytes, limit) = m.resolve(Path::new("/"))?;
            (Some(bytes), limit)
        }
    };
    let opts = GatewayOptions {
        concurrency: args
            .concurrency
            .or(mesh.concurrency.map(|c| c as usize))
            .unwrap_or(0),
        admin_addr: Some(args.admin_address),
        health_addr: Some(args.health_address),
        prometheus_addr: Some(args.prometheus_address),
        access_log,
        drain_timeout,
        max_connections: args.max_connections,
        max_connections_total: args.max_connections_total,
        max_requests_per_connection: args.max_requests_per_connection,
        max_heap_bytes,
        memory_limit_bytes,
        heap_thresholds,
        source: SourceLabels {
            workload: app.clone(),
            namespace: args
                .namespace
                .clone()
                .unwrap_or_else(|| "istio-system".into()),
            app: app.clone(),
        },
    };
    // With --upgrade, the running gateway's sockets are taken over here, first: the
    // rate-limit service's among them.
    let (mut upgrades, mut inherited) =
        super::gateway_upgrade::Upgrades::start(args.upgrade_socket.clone(), args.upgrade)?;
    // The rate-limit service runs beside the data plane, for its `meshgate-ratelimit`
    // cluster (and any other proxy given its address); dropped, it stops.
    let ratelimit_socket = match (&args.ratelimit.ratelimit_redis, inherited.as_mut()) {
        (Some(_), Some(inherited)) => inherited.take_server(
            meshgate::proxy::handoff::SocketKind::RateLimit,
            args.ratelimit.ratelimit_address,
        ),
        _ => None,
    };
    let ratelimit = args.ratelimit.start(ratelimit_socket)?;
    upgrades.set_ratelimit(ratelimit.as_ref().map(|r| r.socket().clone()));
    // Limits from `--ratelimit-limits`; the RateLimitPolicy resources' are added to them
    // with every configuration load.
    let file_limits = ratelimit
        .as_ref()
        .map(|r| r.service().limits())
        .unwrap_or_default();
    if let Some(addr) = args.xds.clone() {
        let args = GatewayArgs {
            trust_domain: Some(mesh.trust_domain.clone()),
            ..args
        };
        return crate::cmd::gateway_xds::run(&addr, &args, labels, opts, (upgrades, inherited));
    }
    // Standalone, spans name the gateway as istiod would name its node.
    let namespace = args.namespace.as_deref().unwrap_or("istio-system");
    let host = meshgate::proxy::trace::LocalInfo::of_host();
    meshgate::proxy::trace::set_local_info(meshgate::proxy::trace::LocalInfo {
        node_id: format!(
            "router~{}~{app}.{namespace}~{namespace}.svc.cluster.local",
            host.address
        ),
        cluster: format!("{app}.{namespace}"),
        ..host
    });
    let source = match (&args.config, &args.xds_json) {
        (Some(path), _) => Source::Istio {
            path: path.clone(),
            labels,
            namespace: args.namespace.clone(),
            mesh_certs: args.mesh_certs.clone(),
            mesh: std::sync::Arc::new(mesh.clone()),
            cache: Default::default(),
        },
        (None, Some(file)) => Source::Json(file.clone()),
        (None, None) => {
            anyhow::bail!("nothing to serve: give --config PATH (Istio YAML) or --xds ADDR")
        }
    };
    let gateway = Gateway::start_inherited(opts, inherited).context("starting the gateway")?;
    tracing::info!(admin = ?gateway.admin_addr(), health = ?gateway.health_addr(), prometheus = ?gateway.prometheus_addr(), "gateway started");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut acme = AcmeRunner::new(&gateway, rt.handle().clone());

    let mut quit = gateway.quit_requested();
    rt.block_on(async {
        // Watching starts before the first load, so no change in between is missed.
        let mut watch = ConfigWatch::start(source.path(), WATCH_SETTLE, WATCH_POLL);
        let limits = (ratelimit.as_ref(), &*file_limits);
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
        if let Err(e) = source.load(&gateway, &mut acme, true, limits) {
            upgrades.failed(&e);
            return Err(e);
        }
        upgrades.serving(&gateway)?;
        let mut handed_over = upgrades.handed_over();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = quit.changed() => break,
                _ = usr2.recv() => upgrades.start_successor(),
                _ = handed_over.wait_for(|h| *h) => {
                    tracing::info!("handed over to the successor");
                    break;
                }
                _ = watch.changed() => {
                    if let Err(e) = source.load(&gateway, &mut acme, false, limits) {
                        tracing::error!("{e:#}");
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

/// Reads `--proxy-config FILE`; a refused file stops the gateway with its diagnostics.
pub fn load_proxy_config(
    path: &std::path::Path,
) -> anyhow::Result<meshgate::config::mesh::ProxyConfigOverlay> {
    meshgate::config::mesh::load_proxy_config(path).map_err(|diags| {
        anyhow::anyhow!(
            "--proxy-config: the proxy configuration is refused:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// Quiet time that ends a burst of file events, and how often files are looked at
/// without an event.
const WATCH_SETTLE: Duration = Duration::from_millis(100);
const WATCH_POLL: Duration = Duration::from_millis(500);

/// Where the gateway's configuration comes from.
enum Source {
    /// Istio YAML, through the configuration pipeline for this gateway.
    Istio {
        path: PathBuf,
        labels: BTreeMap<String, String>,
        namespace: Option<String>,
        /// Where the gateway's mesh certificate and trust bundle are mounted.
        mesh_certs: Option<PathBuf>,
        /// The mesh-wide settings (--mesh-config).
        mesh: std::sync::Arc<meshgate::config::mesh::MeshConfig>,
        /// The files parsed by the last load (a reload parses only changed ones).
        cache: std::cell::RefCell<meshgate::config::FileCache>,
    },
    /// Envoy resources as JSON.
    Json(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Istio { path, .. } | Source::Json(path) => path,
        }
    }

    /// Loads and applies the configuration. The first load must succeed; later bad
    /// versions are reported (with positions) and the last good config keeps serving.
    fn load(
        &self,
        gateway: &Gateway,
        acme: &mut AcmeRunner,
        first: bool,
        (ratelimit, file_limits): (Option<&RateLimitServer>, &LimitTable),
    ) -> anyhow::Result<()> {
        let version = format!("{:016x}", fingerprint(self.path()));
        let resources = match self {
            Source::Istio {
                path,
                labels,
                namespace,
                mesh_certs,
                mesh,
                cache,
            } => translate_config(
                path,
                labels,
                namespace.as_deref(),
                mesh_certs.as_deref(),
                mesh,
                &mut cache.borrow_mut(),
            ),
            Source::Json(path) => read_json(path).map(|set| (set, Vec::new(), None)),
        };
        let outcome = resources.and_then(|(mut set, certificates, policy_limits)| {
            // A Global limit nobody counts would be a limit accepted and not enforced.
            if let (None, Some(policies)) = (ratelimit, &policy_limits)
                && !policies.is_empty()
            {
                anyhow::bail!(
                    "{} Global RateLimitPolicy rule(s) need the rate-limit service: give --ratelimit-redis URL",
                    policies.len()
                );
            }
            if let (Some(rl), Some(_)) = (ratelimit, &policy_limits) {
                meshgate::translate::ratelimit::point_service_cluster(&mut set, rl.local_addr());
            }
            gateway
                .apply(set, &version)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((certificates, policy_limits))
        });
        match outcome {
            Ok((certificates, policy_limits)) => {
                acme.update(certificates);
                if let (Some(rl), Some(policies)) = (ratelimit, policy_limits) {
                    let mut limits = file_limits.clone();
                    limits.extend(policies);
                    rl.set_limits(limits);
                }
                tracing::info!(version, "config applied");
                Ok(())
            }
            Err(e) if !first => {
                tracing::error!("rejected update, keeping the last good config:\n{e:#}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The gateway's ACME issuers, one per `AcmeCertificate` resource: started when the
/// resource appears, restarted when it changes, stopped when it goes. Each publishes
/// its certificate into the gateway's secret store (where listeners read
/// `kubernetes://CREDENTIAL`) and answers challenges through the gateway's listeners.
struct AcmeRunner {
    store: meshgate::tls::SecretStore,
    challenges: meshgate::acme::ChallengeResponses,
    runtime: tokio::runtime::Handle,
    running: BTreeMap<String, (AcmeCertificate, tokio::task::AbortHandle)>,
}

impl AcmeRunner {
    fn new(gateway: &Gateway, runtime: tokio::runtime::Handle) -> AcmeRunner {
        AcmeRunner {
            store: gateway.tls().store.clone(),
            challenges: gateway.tls().challenges.clone(),
            runtime,
            running: BTreeMap::new(),
        }
    }

    fn update(&mut self, wanted: Vec<AcmeCertificate>) {
        let key = |c: &AcmeCertificate| {
            format!(
                "{}/{}",
                c.metadata.namespace.as_deref().unwrap_or_default(),
                c.metadata.name
            )
        };
        let wanted: BTreeMap<String, AcmeCertificate> =
            wanted.into_iter().map(|c| (key(&c), c)).collect();
        self.running.retain(|k, (c, task)| {
            let keep = wanted.get(k) == Some(c);
            if !keep {
                tracing::info!(resource = %k, "stopping the ACME issuer");
                task.abort();
            }
            keep
        });
        for (k, c) in wanted {
            if self.running.contains_key(&k) {
                continue;
            }
            match meshgate::acme::AcmeIssuer::new(
                c.clone(),
                self.store.clone(),
                self.challenges.clone(),
            ) {
                Ok(issuer) => {
                    tracing::info!(resource = %k, hosts = ?c.spec.hosts, credential = %c.spec.credential_name, "starting the ACME issuer");
                    let task = self
                        .runtime
                        .spawn(issuer.run(meshgate::acme::RenewalPolicy::default()));
                    self.running.insert(k, (c, task.abort_handle()));
                }
                Err(e) => tracing::error!(resource = %k, error = %e, "ACME issuer not started"),
            }
        }
    }
}

/// Istio YAML -> this gateway's Envoy resources (the configuration pipeline, serve check
/// included), and the `AcmeCertificate`s whose certificates the gateway obtains.
fn translate_config(
    path: &Path,
    labels: &BTreeMap<String, String>,
    namespace: Option<&str>,
    mesh_certs: Option<&Path>,
    mesh: &std::sync::Arc<meshgate::config::mesh::MeshConfig>,
    cache: &mut meshgate::config::FileCache,
) -> anyhow::Result<(ResourceSet, Vec<AcmeCertificate>, Option<LimitTable>)> {
    // Secret material is parsed once, by the gateway when it applies the set (a
    // certificate that cannot be used refuses the update there, with its secret's
    // name): the serve check does not parse ten thousand keys a second time.
    let options = pipeline::Options {
        secret_material: false,
        mesh: mesh.clone(),
        ..pipeline::Options::gateway(labels.clone(), namespace.map(str::to_string))
    };
    let report = pipeline::run_cached(path, &options, cache);
    if report.has_errors() {
        anyhow::bail!(
            "{} error(s) in {}:\n{}",
            report.errors().count(),
            path.display(),
            report.error_text()
        );
    }
    for d in report.warnings() {
        tracing::warn!("{d}");
    }
    let Some((_, mut resources)) = report.translation else {
        anyhow::bail!("{}: nothing was translated", path.display());
    };
    match mesh_certs {
        Some(dir) => {
            resources
                .secrets
                .extend(mesh_identity::mesh_cert_secrets(dir));
            resources.sort();
        }
        None => {
            // Fail closed: mesh mTLS without a mesh certificate is refused, never
            // served in plain text.
            let needs = mesh_identity::needs_mesh_identity(
                &report.config,
                &resources,
                "give `--mesh-certs DIR` (cert-chain.pem, key.pem, root-cert.pem)",
            );
            if !needs.is_empty() {
                let text: Vec<String> = needs.iter().map(ToString::to_string).collect();
                anyhow::bail!(
                    "{} error(s) in {}:\n{}",
                    needs.len(),
                    path.display(),
                    text.join("\n")
                );
            }
        }
    }
    if resources.listeners.is_empty() {
        tracing::warn!("no Gateway server selects these labels; nothing is listening");
    }
    let certificates = report
        .config
        .acme_certificates
        .iter()
        .map(AcmeCertificate::from_config)
        .collect();
    let limits = meshgate::translate::ratelimit::limit_table(&report.config);
    Ok((resources, certificates, Some(limits)))
}

/// A byte size: a number, optionally with a unit (`k`/`Ki`, `M`/`Mi`, `G`/`Gi`, `T`/`Ti`;
/// Kubernetes' quantity suffixes).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number, optionally with Ki, Mi, Gi)"))?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use Ki, Mi, Gi, Ti or k, M, G, T)"
            ));
        }
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{text:?}: a size must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// `--max-heap`: a size, or a percentage of the cgroup memory limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum MaxHeap {
    Bytes(u64),
    PercentOfLimit(f64),
}

impl MaxHeap {
    /// The bytes, and the memory limit they were taken from: for a percentage, the
    /// limit of this process's cgroups read under `root` (`/`).
    fn resolve(self, root: &Path) -> anyhow::Result<(u64, Option<u64>)> {
        match self {
            MaxHeap::Bytes(b) => Ok((b, None)),
            MaxHeap::PercentOfLimit(p) => {
                let limit = meshgate::proxy::cgroup::memory_limit(root).map_err(|e| {
                    anyhow::anyhow!("--max-heap {p}% is a share of the memory limit, but {e}")
                })?;
                let bytes = percent_of(p, limit.bytes);
                tracing::info!(
                    memory_limit = limit.bytes,
                    from = %limit.file.display(),
                    max_heap = bytes,
                    "--max-heap {p}% of the cgroup memory limit"
                );
                Ok((bytes, Some(limit.bytes)))
            }
        }
    }
}

/// `percent` (in (0, 100]) of `limit`, rounded down, at least one byte.
fn percent_of(percent: f64, limit: u64) -> u64 {
    ((limit as f64 * percent / 100.0).floor() as u64).max(1)
}

/// `--max-heap`: `P%` (0 < P <= 100, decimals allowed) or a [`parse_size`] size.
pub(crate) fn parse_max_heap(text: &str) -> Result<MaxHeap, String> {
    let Some(p) = text.trim().strip_suffix('%') else {
        return parse_size(text).map(MaxHeap::Bytes);
    };
    match p.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && p > 0.0 && p <= 100.0 => Ok(MaxHeap::PercentOfLimit(p)),
        _ => Err(format!(
            "{text:?}: a percentage of the memory limit must be in (0, 100]"
        )),
    }
}

fn read_json(path: &Path) -> anyhow::Result<ResourceSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
    meshgate::proxy::json_input::resource_set_from_json(&v)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5Ki"), Ok(1536));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_max_heap("1024M"), Ok(MaxHeap::Bytes(1_024_000_000)));
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_max_heap("75%"), Ok(MaxHeap::PercentOfLimit(75.0)));
        assert_eq!(parse_max_heap(" 62.5% "), Ok(MaxHeap::PercentOfLimit(62.5)));
        assert_eq!(parse_max_heap("100%"), Ok(MaxHeap::PercentOfLimit(100.0)));
        for bad in ["0%", "-5%", "100.1%", "%", "x%", "inf%", "NaN%"] {
            assert!(parse_max_heap(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_of(75.0, 1 << 30), 805_306_368);
        assert_eq!(percent_of(62.5, 1 << 30), 671_088_640);
        assert_eq!(percent_of(100.0, 1 << 30), 1 << 30);
        assert_eq!(percent_of(0.0001, 100), 1);
    }

    #[test]
    fn a_percentage_of_the_cgroup_limit() {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("proc/self/cgroup", "4:memory:/pod\n0::/\n");
        put(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        put(
            "sys/fs/cgroup/memory/pod/memory.limit_in_bytes",
            "1073741824\n",
        );
        let m = parse_max_heap("75%").unwrap();
        assert_eq!(
            m.resolve(root.path()).unwrap(),
            (805_306_368, Some(1 << 30))
        );
        assert_eq!(MaxHeap::Bytes(5).resolve(root.path()).unwrap(), (5, None));
        // No limit: the error names the flag and the files read.
        put(
            "sys/fs/cgroup/memory/pod/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let e = m.resolve(root.path()).unwrap_err().to_string();
        assert!(e.contains("--max-heap 75%"), "{e}");
        assert!(e.contains("pod/memory.limit_in_bytes: no limit"), "{e}");
    }
}
