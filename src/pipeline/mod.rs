//! The configuration pipeline: the one door from Istio YAML on disk to Envoy resources.
//!
//! Load (YAML with positions) -> validate (each resource, across resources) -> registry
//! (services and endpoints) -> translate (per gateway workload) -> serve check (meshgate's
//! data plane compiles the translation). Every step reports positioned [`Diagnostic`]s
//! with one set of severities: any error refuses the whole configuration, whoever asks.
//! `meshgate validate`, `meshgate translate`, the standalone gateway and the control
//! plane all call [`run`], so one file is accepted or refused the same way everywhere,
//! and whatever `validate` accepts, the gateway serves. [`watch`] is the file watcher
//! they share.
pub mod mesh_identity;
mod serve_check;
pub mod watch;

use crate::config::{self, Config, Diagnostic};
use crate::registry::Registry;
use crate::translate::{self, Translation};
use crate::xds::{ProxyIdentity, ResourceSet};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use watch::ConfigWatch;

/// Which gateway workloads the configuration is translated and checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workloads {
    /// One gateway: its labels, and its namespace (`None`: each Gateway's credentials
    /// are looked up in the Gateway's own namespace).
    Gateway {
        labels: BTreeMap<String, String>,
        namespace: Option<String>,
    },
    /// Every workload some Gateway selects, one per distinct selector: what `validate`
    /// and the control plane check, not knowing which gateways will connect.
    AllGateways,
}

/// How the pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub workloads: Workloads,
    /// Read the certificate and key files (and inline Secrets) the gateway would serve,
    /// as a gateway on this host does before it applies them. Off where the files live on
    /// other hosts (the control plane, `validate` in CI): Secrets are then checked as
    /// configuration only.
    pub secret_material: bool,
    /// The mesh-wide settings (MeshConfig) translation follows.
    pub mesh: std::sync::Arc<crate::config::mesh::MeshConfig>,
}

impl Options {
    /// A gateway on this host with these labels.
    pub fn gateway(labels: BTreeMap<String, String>, namespace: Option<String>) -> Options {
        Options {
            workloads: Workloads::Gateway { labels, namespace },
            secret_material: true,
            mesh: Default::default(),
        }
    }

    /// Every gateway workload the configuration selects, files not read.
    pub fn all_gateways() -> Options {
        Options {
            workloads: Workloads::AllGateways,
            secret_material: false,
            mesh: Default::default(),
        }
    }
}

/// Everything the pipeline found.
#[derive(Debug, Default)]
pub struct Report {
    pub config: Config,
    pub registry: Registry,
    /// Every problem, sorted by file and position, duplicates removed.
    pub diagnostics: Vec<Diagnostic>,
    /// With [`Workloads::Gateway`] and no error before translation: that gateway's
    /// identity and resources.
    pub translation: Option<(ProxyIdentity, ResourceSet)>,
}

impl Report {
    /// Whether the configuration is refused.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    /// The errors, one per line, as `validate` prints them.
    pub fn error_text(&self) -> String {
        self.errors()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs the whole pipeline on a file or directory.
pub fn run(path: &Path, options: &Options) -> Report {
    run_cached(path, options, &mut config::FileCache::default())
}

/// [`run`] for a path loaded again and again (a watched configuration): files unchanged
/// since the last load are not parsed again.
pub fn run_cached(path: &Path, options: &Options, cache: &mut config::FileCache) -> Report {
    let started = std::time::Instant::now();
    let outcome = config::load_cached(path, cache);
    tracing::debug!(elapsed = ?started.elapsed(), resources = outcome.config.len(), "configuration loaded");
    let report = finish(outcome.config, outcome.diagnostics, options);
    tracing::debug!(elapsed = ?started.elapsed(), "configuration pipeline done");
    report
}

/// Runs the pipeline on YAML text (`name` stands for the file in diagnostics).
pub fn run_str(name: &str, text: &str, options: &Options) -> Report {
    let outcome = config::load_str(name, text);
    finish(outcome.config, outcome.diagnostics, options)
}

fn finish(config: Config, mut diagnostics: Vec<Diagnostic>, options: &Options) -> Report {
    let started = std::time::Instant::now();
    diagnostics.extend(config::validate(&config));
    // CUSTOM policies name an external authorizer of the mesh configuration.
    diagnostics.extend(translate::ext_authz::check_policies(&config, &options.mesh));
    tracing::debug!(elapsed = ?started.elapsed(), "configuration validated");
    let (registry, registry_diagnostics) = Registry::from_config(&config);
    // The registry repeats, as warnings about what it leaves out, some problems that
    // validation already reported as errors on the same field.
    let reported = |r: &Diagnostic, d: &Diagnostic| {
        d.is_error()
            && (&d.file, d.line, d.column, &d.field) == (&r.file, r.line, r.column, &r.field)
    };
    let fresh: Vec<Diagnostic> = registry_diagnostics
        .into_iter()
        .filter(|r| !diagnostics.iter().any(|d| reported(r, d)))
        .collect();
    diagnostics.extend(fresh);
    // The tracing providers' services must be known to the registry.
    diagnostics.extend(translate::tracing::check(&registry, &options.mesh, &config));
    let mut report = Report {
        config,
        registry,
        diagnostics,
        translation: None,
    };
    // A configuration with errors is not translated: the translator assumes valid input.
    if !report.has_errors() {
        let proxies = match &options.workloads {
            Workloads::Gateway { labels, namespace } => vec![gateway_identity(
                &report.config,
                labels.clone(),
                namespace.as_deref(),
            )],
            Workloads::AllGateways => selected_workloads(&report.config)
                .into_iter()
                .map(|labels| gateway_identity(&report.config, labels, None))
                .collect(),
        };
        for proxy in proxies {
            let Translation {
                resources,
                diagnostics,
            } = translate::gateway_in_mesh(&report.config, &report.registry, &proxy, &options.mesh);
            tracing::debug!(elapsed = ?started.elapsed(), labels = ?proxy.labels, "translated");
            report.diagnostics.extend(diagnostics);
            report.diagnostics.extend(serve_check::check(
                &report.config,
                &resources,
                options.secret_material,
            ));
            tracing::debug!(elapsed = ?started.elapsed(), "serve check done");
            if matches!(options.workloads, Workloads::Gateway { .. }) {
                report.translation = Some((proxy, resources));
            }
        }
    }
    Diagnostic::sort(&mut report.diagnostics);
    report.diagnostics.dedup();
    if report.has_errors() {
        report.translation = None;
    }
    report
}

/// The identity of a gateway workload with these labels: in `namespace`, or with no
/// namespace of its own (each Gateway's credentials then resolve in the Gateway's
/// namespace, and `exportTo` scoping uses that of the first Gateway selecting it).
pub fn gateway_identity(
    config: &Config,
    labels: BTreeMap<String, String>,
    namespace: Option<&str>,
) -> ProxyIdentity {
    let ns = namespace
        .map(str::to_string)
        .unwrap_or_else(|| translate::default_namespace(config, &labels));
    let mut proxy = ProxyIdentity::gateway(&ns, labels);
    if namespace.is_none() {
        proxy.namespace.clear();
    }
    proxy
}

/// The label sets of the gateway workloads the configuration selects: each distinct
/// Gateway selector.
pub fn selected_workloads(config: &Config) -> Vec<BTreeMap<String, String>> {
    let selectors: BTreeSet<BTreeMap<String, String>> = config
        .gateways
        .iter()
        .map(|g| g.spec.selector.clone())
        .collect();
    selectors.into_iter().collect()
}

#[cfg(test)]
mod tests;
