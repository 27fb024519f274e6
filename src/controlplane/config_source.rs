//! The control plane's source of resources: Istio configuration loaded from a file or a
//! directory, watched for changes, and translated per proxy identity.
//!
//! Translations are not kept: the control plane asks once per identity key and change,
//! packs the result into a snapshot (whose resources are shared across identities by
//! content) and drops the unpacked form, which is many times larger.
//!
//! A change that loads and validates cleanly replaces the configuration in one swap
//! and is announced to the control plane; a change with errors is logged with file,
//! line and column and ignored: the last good configuration keeps being served.
use super::source::{
    Change, GatewayRow, RouteRow, RuleRow, ServiceRow, SnapshotSource, SourceError, SourceOverview,
};
use crate::config::{self, Config, Diagnostic};
use crate::pipeline;
use crate::registry::Registry;
use crate::xds::{ProxyIdentity, ProxyKind, ResourceSet};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// One loaded, validated configuration.
struct Loaded {
    generation: u64,
    config: Config,
    registry: Registry,
    at: std::time::SystemTime,
}

/// Istio configuration from a path, translated per proxy.
pub struct ConfigSource {
    path: PathBuf,
    loaded: ArcSwap<Loaded>,
    /// Serializes reloads, and keeps the files parsed by the last one.
    reload_lock: Mutex<config::FileCache>,
    tx: broadcast::Sender<Change>,
    /// The pipeline's options: every gateway workload, in this mesh (replaced when the
    /// mesh configuration changes).
    options: ArcSwap<pipeline::Options>,
    /// The rate-limit service the proxies' Global RateLimitPolicies call, when the
    /// control plane runs one.
    rate_limits: std::sync::OnceLock<RateLimitHook>,
    /// Set when the control plane runs no rate-limit service: Global policies are refused.
    refuse_global_limits: std::sync::atomic::AtomicBool,
    /// Changes rejected lately, for the status page.
    errors: super::errors::RecentErrors,
}

/// The control plane's rate-limit service: given the limits of every load, and named in
/// the `meshgate-ratelimit` cluster of every proxy.
struct RateLimitHook {
    service: Arc<crate::ratelimit::RateLimitService>,
    /// Where the proxies reach it.
    advertise: std::net::SocketAddr,
    /// Limits from outside the resources (`--ratelimit-limits`); the resources' are added.
    base: crate::ratelimit::LimitTable,
}

/// Errors for the Global RateLimitPolicies of `config` when no rate-limit service counts
/// them: accepted, they would be limits not enforced.
pub fn unserved_global_limits(config: &Config) -> Vec<Diagnostic> {
    use crate::config::types::rate_limit_policy::Mode;
    config
        .rate_limit_policies
        .iter()
        .filter(|p| p.spec.mode() == Mode::Global)
        .map(|p| Diagnostic {
            file: p.origin.file.to_string(),
            line: p.origin.line,
            column: p.origin.column,
            severity: crate::config::diag::Severity::Error,
            resource: Some(format!(
                "RateLimitPolicy/{}/{}",
                p.meta.namespace, p.meta.name
            )),
            field: Some("spec.type".into()),
            message: "a Global limit needs the control plane's rate-limit service: start it with --ratelimit-redis URL".into(),
        })
        .collect()
}

impl RateLimitHook {
    fn push(&self, config: &Config) {
        let mut limits = self.base.clone();
        limits.extend(crate::translate::ratelimit::limit_table(config));
        self.service.set_limits(limits);
    }
}

/// Runs the configuration pipeline on `path` for every gateway workload the Gateways
/// select: the configuration, or every error found (warnings are logged, not returned).
/// The files certificates name are not read: they live on the gateways' hosts.
fn load_checked(
    path: &Path,
    options: &pipeline::Options,
    cache: &mut config::FileCache,
) -> Result<(Config, Registry), Vec<Diagnostic>> {
    let report = pipeline::run_cached(path, options, cache);
    if report.has_errors() {
        return Err(report.errors().cloned().collect());
    }
    for d in report.warnings() {
        tracing::warn!("{d}");
    }
    Ok((report.config, report.registry))
}

impl ConfigSource {
    /// Loads `path`; fails with the errors if it does not validate.
    pub fn load(path: &Path) -> Result<ConfigSource, Vec<Diagnostic>> {
        Self::load_in_mesh(path, Default::default())
    }

    /// [`ConfigSource::load`] for a mesh with these settings (MeshConfig).
    pub fn load_in_mesh(
        path: &Path,
        mesh: Arc<crate::config::mesh::MeshConfig>,
    ) -> Result<ConfigSource, Vec<Diagnostic>> {
        let options = pipeline::Options {
            mesh,
            ..pipeline::Options::all_gateways()
        };
        let mut cache = config::FileCache::default();
        let (config, registry) = load_checked(path, &options, &mut cache)?;
        let (tx, _) = broadcast::channel(64);
        Ok(ConfigSource {
            path: path.to_path_buf(),
            loaded: ArcSwap::from_pointee(Loaded {
                generation: 1,
                config,
                registry,
                at: std::time::SystemTime::now(),
            }),
            reload_lock: Mutex::new(cache),
            tx,
            options: ArcSwap::from_pointee(options),
            rate_limits: std::sync::OnceLock::new(),
            refuse_global_limits: std::sync::atomic::AtomicBool::new(false),
            errors: Default::default(),
        })
    }

    /// Serves Global RateLimitPolicies through `service`: it gets the policies' limits
    /// (beside `base`) with this and every later load, and every proxy's
    /// `meshgate-ratelimit` cluster names `advertise`. Set once; later calls are ignored.
    pub fn serve_rate_limits(
        &self,
        service: Arc<crate::ratelimit::RateLimitService>,
        advertise: std::net::SocketAddr,
        base: crate::ratelimit::LimitTable,
    ) {
        let hook = RateLimitHook {
            service,
            advertise,
            base,
        };
        hook.push(&self.loaded.load().config);
        let _ = self.rate_limits.set(hook);
        let _ = self.tx.send(Change::all());
    }

    /// Refuses Global RateLimitPolicies from now on (no rate-limit service runs): the
    /// configuration in force is checked at once, later ones when they load.
    pub fn refuse_global_limits(&self) -> Result<(), Vec<Diagnostic>> {
        self.refuse_global_limits
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let errors = unserved_global_limits(&self.loaded.load().config);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The errors of a configuration about to be put in force that only this source
    /// knows (Global limits without a rate-limit service).
    fn check(&self, config: &Config) -> Result<(), Vec<Diagnostic>> {
        if self
            .refuse_global_limits
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let errors = unserved_global_limits(config);
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        Ok(())
    }

    /// Keeps a rejected change's errors among the recent ones, and returns them.
    fn rejected(&self, errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
        for d in errors.iter().take(super::errors::KEPT) {
            let subject = match &d.resource {
                Some(r) => format!("{} {r}", d.file),
                None => d.file.clone(),
            };
            self.errors
                .push(super::errors::ErrorKind::Config, subject, &d.to_string());
        }
        errors
    }

    /// Records a mesh configuration change that was refused.
    fn mesh_rejected(&self, path: &Path, reason: &str) {
        self.errors.push(
            super::errors::ErrorKind::Config,
            path.display().to_string(),
            reason,
        );
    }

    /// Gives the rate-limit service the limits of `config`, now in force.
    fn push_limits(&self, config: &Config) {
        if let Some(h) = self.rate_limits.get() {
            h.push(config);
        }
    }

    /// The generation of the configuration in force (1 for the first load).
    pub fn generation(&self) -> u64 {
        self.loaded.load().generation
    }

    /// Reloads the path. On errors nothing changes and the errors are returned.
    pub fn reload(&self) -> Result<u64, Vec<Diagnostic>> {
        let mut cache = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (config, registry) = load_checked(&self.path, &self.options.load(), &mut cache)
            .and_then(|c| self.check(&c.0).map(|()| c))
            .map_err(|e| self.rejected(e))?;
        self.push_limits(&config);
        let generation = self.loaded.load().generation + 1;
        self.loaded.store(Arc::new(Loaded {
            generation,
            config,
            registry,
            at: std::time::SystemTime::now(),
        }));
        let _ = self.tx.send(Change::all());
        Ok(generation)
    }

    /// The mesh configuration in force.
    pub fn mesh(&self) -> Arc<crate::config::mesh::MeshConfig> {
        self.options.load().mesh.clone()
    }

    /// Runs the configuration in a new mesh configuration: in force (and pushed) if the
    /// configuration passes in it, else nothing changes and the errors are returned.
    pub fn set_mesh(
        &self,
        mesh: Arc<crate::config::mesh::MeshConfig>,
    ) -> Result<u64, Vec<Diagnostic>> {
        let mut cache = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let options = pipeline::Options {
            mesh,
            ..(**self.options.load()).clone()
        };
        let (config, registry) = load_checked(&self.path, &options, &mut cache)
            .and_then(|c| self.check(&c.0).map(|()| c))
            .map_err(|e| self.rejected(e))?;
        self.push_limits(&config);
        self.options.store(Arc::new(options));
        let generation = self.loaded.load().generation + 1;
        self.loaded.store(Arc::new(Loaded {
            generation,
            config,
            registry,
            at: std::time::SystemTime::now(),
        }));
        let _ = self.tx.send(Change::all());
        Ok(generation)
    }

    /// Watches the mesh configuration file `path` and runs the configuration in each new
    /// version that parses and that `allowed` accepts (a setting that cannot change while
    /// running, such as the CA's trust domain, is refused with its reason). Runs until
    /// dropped.
    pub fn watch_mesh(
        self: &Arc<Self>,
        path: std::path::PathBuf,
        settle: Duration,
        allowed: impl Fn(&crate::config::mesh::MeshConfig) -> Result<(), String> + Send + 'static,
    ) -> ConfigWatch {
        let mut watch = pipeline::ConfigWatch::start(&path, settle, WATCH_POLL);
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                watch.changed().await;
                let Some(source) = me.upgrade() else { return };
                let mesh = match crate::config::mesh::load_mesh_config(&path) {
                    Ok(m) => m,
                    Err(errors) => {
                        for d in &errors {
                            tracing::error!("{d}");
                        }
                        source.rejected(errors);
                        tracing::error!(
                            "mesh configuration change rejected; keeping the last good one"
                        );
                        continue;
                    }
                };
                if *source.mesh() == mesh {
                    continue;
                }
                if let Err(reason) = allowed(&mesh) {
                    source.mesh_rejected(&path, &reason);
                    tracing::error!(%reason, "mesh configuration change rejected; keeping the last good one");
                    continue;
                }
                let outcome =
                    tokio::task::spawn_blocking(move || source.set_mesh(Arc::new(mesh))).await;
                match outcome {
                    Ok(Ok(generation)) => {
                        tracing::info!(generation, "mesh configuration reloaded")
                    }
                    Ok(Err(errors)) => {
                        for d in &errors {
                            tracing::error!("{d}");
                        }
                        tracing::error!(
                            "the configuration does not pass in the new mesh configuration; keeping the last good one"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "reloading panicked"),
                }
            }
        });
        ConfigWatch { task }
    }

    /// Watches the path and reloads on change (after `settle` without further events,
    /// so that an editor's several writes make one reload). Runs until dropped.
    pub fn watch(self: &Arc<Self>, settle: Duration) -> ConfigWatch {
        let mut watch = pipeline::ConfigWatch::start(&self.path, settle, WATCH_POLL);
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                watch.changed().await;
                let Some(source) = me.upgrade() else { return };
                let outcome = tokio::task::spawn_blocking(move || source.reload()).await;
                match outcome {
                    Ok(Ok(generation)) => tracing::info!(generation, "configuration reloaded"),
                    Ok(Err(errors)) => {
                        for d in &errors {
                            tracing::error!("{d}");
                        }
                        tracing::error!(
                            errors = errors.len(),
                            "configuration change rejected; keeping the last good configuration"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "reloading panicked"),
                }
            }
        });
        ConfigWatch { task }
    }
}

/// How often the files are looked at without a filesystem event.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// A running watch; stops when dropped.
pub struct ConfigWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SnapshotSource for ConfigSource {
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
        let loaded = self.loaded.load_full();
        let mesh = &self.options.load().mesh;
        let translation = match proxy.kind {
            ProxyKind::Router => {
                crate::translate::gateway_in_mesh(&loaded.config, &loaded.registry, proxy, mesh)
            }
            ProxyKind::Sidecar => {
                crate::translate::sidecar(&loaded.config, &loaded.registry, proxy, mesh)
            }
            ProxyKind::Grpc => {
                crate::translate::proxyless_grpc(&loaded.config, &loaded.registry, proxy, mesh)
            }
        };
        for d in &translation.diagnostics {
            tracing::warn!(proxy = %proxy.id, "{d}");
        }
        let mut resources = translation.resources;
        if let Some(h) = self.rate_limits.get() {
            crate::translate::ratelimit::point_service_cluster(&mut resources, h.advertise);
        }
        Ok(Arc::new(resources))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn overview(&self) -> Option<SourceOverview> {
        let loaded = self.loaded.load();
        let (services, gateways, routes) = overview_of(&loaded);
        Some(SourceOverview {
            origin: self.path.display().to_string(),
            generation: loaded.generation,
            loaded_at: Some(loaded.at),
            services,
            gateways,
            routes,
            errors: self.errors.all(),
        })
    }

    /// Sidecars differ from each other by their addresses, but only the addresses that
    /// are some service's endpoints change what a sidecar is sent (its inbound side):
    /// sidecars in one namespace with the same labels and no such address (clients) see
    /// the same, and are translated once per configuration generation.
    fn share_key(&self, proxy: &ProxyIdentity) -> Option<super::source::ShareKey> {
        if proxy.kind != ProxyKind::Sidecar {
            return None;
        }
        let loaded = self.loaded.load();
        let mut view = proxy.clone();
        view.id.clear();
        view.ip_addresses
            .retain(|ip| loaded.registry.is_endpoint_address(ip));
        Some(super::source::ShareKey {
            generation: loaded.generation,
            view,
        })
    }
}

/// Readable `name number/PROTOCOL` of a service port.
fn port_row(p: &crate::registry::ServicePort) -> String {
    format!("{} {}/{}", p.name, p.number, p.protocol)
}

fn string_match(what: &str, m: &crate::config::types::common::StringMatch) -> String {
    use crate::config::types::common::StringMatch;
    match m {
        StringMatch::Exact(v) => format!("{what} = {v}"),
        StringMatch::Prefix(v) => format!("{what} prefix {v}"),
        StringMatch::Regex(v) => format!("{what} ~ {v}"),
        StringMatch::Empty => format!("{what} present"),
    }
}

fn destination(d: &crate::config::types::virtual_service::Destination) -> String {
    let mut s = d.host.clone();
    if let Some(p) = &d.port
        && p.number != 0
    {
        s.push_str(&format!(":{}", p.number));
    }
    if !d.subset.is_empty() {
        s.push_str(&format!(" /{}", d.subset));
    }
    s
}

/// The overview of one loaded configuration.
fn overview_of(loaded: &Loaded) -> (Vec<ServiceRow>, Vec<GatewayRow>, Vec<RouteRow>) {
    let services = loaded
        .registry
        .services()
        .iter()
        .map(|svc| ServiceRow {
            host: svc.hostname.clone(),
            source: format!("{}/{}", svc.namespace, svc.source_name),
            ports: svc.ports.iter().map(port_row).collect(),
            location: if svc.mesh_external {
                "MESH_EXTERNAL"
            } else {
                "MESH_INTERNAL"
            },
            resolution: match svc.resolution {
                crate::registry::Resolution::Static => "STATIC",
                crate::registry::Resolution::Dns => "DNS",
                crate::registry::Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
                crate::registry::Resolution::None => "NONE",
                crate::registry::Resolution::DynamicDns => "DYNAMIC_DNS",
            },
            endpoints: svc
                .endpoints
                .iter()
                .map(|e| {
                    if e.unix {
                        format!("unix://{}", e.address)
                    } else {
                        format!("{}:{}", e.address, e.port)
                    }
                })
                .collect(),
        })
        .collect();
    let gateways = loaded
        .config
        .gateways
        .iter()
        .map(|g| GatewayRow {
            name: format!("{}/{}", g.meta.namespace, g.meta.name),
            selector: g
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            servers: g
                .spec
                .servers
                .iter()
                .map(|srv| {
                    let port = srv
                        .port
                        .as_ref()
                        .map(|p| format!("{}/{}", p.number, p.protocol))
                        .unwrap_or_default();
                    let tls = srv
                        .tls
                        .as_ref()
                        .and_then(|t| t.mode)
                        .map(|m| format!(" TLS {}", m.as_str()))
                        .unwrap_or_default();
                    format!("{port} {}{tls}", srv.hosts.join(" "))
                })
                .collect(),
        })
        .collect();
    let routes = loaded
        .config
        .virtual_services
        .iter()
        .map(|vs| {
            let mut rules = Vec::new();
            for r in &vs.spec.http {
                let matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        let mut parts = Vec::new();
                        if let Some(u) = &m.uri {
                            parts.push(string_match("uri", u));
                        }
                        if let Some(u) = &m.method {
                            parts.push(string_match("method", u));
                        }
                        if let Some(u) = &m.authority {
                            parts.push(string_match("authority", u));
                        }
                        for (h, v) in &m.headers {
                            parts.push(string_match(&format!("header {h}"), v));
                        }
                        for (q, v) in &m.query_params {
                            parts.push(string_match(&format!("query {q}"), v));
                        }
                        if m.port != 0 {
                            parts.push(format!("port {}", m.port));
                        }
                        parts.join(", ")
                    })
                    .collect();
                let mut destinations: Vec<(String, Option<i32>)> = r
                    .route
                    .iter()
                    .filter_map(|d| {
                        let w = (d.weight != 0).then_some(d.weight);
                        d.destination.as_ref().map(|d| (destination(d), w))
                    })
                    .collect();
                if let Some(redirect) = &r.redirect {
                    destinations.push((
                        format!("redirect {}{}", redirect.authority, redirect.uri),
                        None,
                    ));
                }
                if let Some(direct) = &r.direct_response {
                    destinations.push((format!("direct response {}", direct.status), None));
                }
                if let Some(d) = &r.delegate {
                    destinations.push((format!("delegate {}/{}", d.namespace, d.name), None));
                }
                rules.push(RuleRow {
                    protocol: "http",
                    matches,
                    destinations,
                });
            }
            for r in &vs.spec.tls {
                rules.push(RuleRow {
                    protocol: "tls",
                    matches: r
                        .matches
                        .iter()
                        .map(|m| format!("sni {}", m.sni_hosts.join(" ")))
                        .collect(),
                    destinations: r
                        .route
                        .iter()
                        .filter_map(|d| {
                            let w = (d.weight != 0).then_some(d.weight);
                            d.destination.as_ref().map(|d| (destination(d), w))
                        })
                        .collect(),
                });
            }
            for r in &vs.spec.tcp {
                rules.push(RuleRow {
                    protocol: "tcp",
                    matches: r
                        .matches
                        .iter()
                        .filter(|m| m.port != 0)
                        .map(|m| format!("port {}", m.port))
                        .collect(),
                    destinations: r
                        .route
                        .iter()
                        .filter_map(|d| {
                            let w = (d.weight != 0).then_some(d.weight);
                            d.destination.as_ref().map(|d| (destination(d), w))
                        })
                        .collect(),
                });
            }
            RouteRow {
                name: format!("{}/{}", vs.meta.namespace, vs.meta.name),
                hosts: vs.spec.hosts.clone(),
                gateways: vs.spec.gateways.clone(),
                rules,
            }
        })
        .collect();
    (services, gateways, routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(ip: &str, app: &str) -> ProxyIdentity {
        ProxyIdentity {
            id: format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local"),
            kind: ProxyKind::Sidecar,
            namespace: "default".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip_addresses: vec![ip.into()],
            domain_suffix: "cluster.local".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sidecars_share_a_view_unless_an_address_is_an_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("svc.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec:\n  hosts: [a.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.5}]\n",
        )
        .unwrap();
        let source = ConfigSource::load(dir.path()).unwrap();
        let key = |p: &ProxyIdentity| source.share_key(p).expect("sidecars have share keys");
        assert_eq!(
            key(&sidecar("10.0.0.1", "client")),
            key(&sidecar("10.0.0.2", "client")),
            "two clients with the same labels see the same"
        );
        assert_ne!(
            key(&sidecar("10.0.0.1", "client")),
            key(&sidecar("10.0.0.1", "other")),
            "labels select policies"
        );
        assert_ne!(
            key(&sidecar("10.0.0.5", "client")),
            key(&sidecar("10.0.0.1", "client")),
            "an endpoint's sidecar has inbound ports of its own"
        );
        assert!(
            source
                .share_key(&ProxyIdentity::gateway("default", Default::default()))
                .is_none(),
            "gateways are keyed by their identity already"
        );
    }
}
