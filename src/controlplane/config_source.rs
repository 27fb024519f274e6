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
use super::source::{Change, SnapshotSource, SourceError};
use crate::config::{self, Config, Diagnostic};
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
}

/// Istio configuration from a path, translated per proxy.
pub struct ConfigSource {
    path: PathBuf,
    loaded: ArcSwap<Loaded>,
    /// Serializes reloads.
    reload_lock: Mutex<()>,
    tx: broadcast::Sender<Change>,
}

/// Loads and validates `path`: the configuration, or every error found (warnings are
/// logged, not returned).
fn load_checked(path: &Path) -> Result<(Config, Registry), Vec<Diagnostic>> {
    let outcome = config::load(path);
    let mut diagnostics = outcome.diagnostics;
    diagnostics.extend(config::validate(&outcome.config));
    let (registry, registry_diags) = Registry::from_config(&outcome.config);
    diagnostics.extend(registry_diags);
    let errors: Vec<Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    for d in diagnostics {
        tracing::warn!("{d}");
    }
    Ok((outcome.config, registry))
}

impl ConfigSource {
    /// Loads `path`; fails with the errors if it does not validate.
    pub fn load(path: &Path) -> Result<ConfigSource, Vec<Diagnostic>> {
        let (config, registry) = load_checked(path)?;
        let (tx, _) = broadcast::channel(64);
        Ok(ConfigSource {
            path: path.to_path_buf(),
            loaded: ArcSwap::from_pointee(Loaded {
                generation: 1,
                config,
                registry,
            }),
            reload_lock: Mutex::new(()),
            tx,
        })
    }

    /// The generation of the configuration in force (1 for the first load).
    pub fn generation(&self) -> u64 {
        self.loaded.load().generation
    }

    /// Reloads the path. On errors nothing changes and the errors are returned.
    pub fn reload(&self) -> Result<u64, Vec<Diagnostic>> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (config, registry) = load_checked(&self.path)?;
        let generation = self.loaded.load().generation + 1;
        self.loaded.store(Arc::new(Loaded {
            generation,
            config,
            registry,
        }));
        let _ = self.tx.send(Change::all());
        Ok(generation)
    }

    /// Watches the path and reloads on change (after `settle` without further events,
    /// so that an editor's several writes make one reload). Runs until dropped.
    pub fn watch(self: &Arc<Self>, settle: Duration) -> Result<ConfigWatch, notify::Error> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(e) = event
                    && !matches!(e.kind, notify::EventKind::Access(_))
                {
                    let _ = tx.send(());
                }
            })?;
        // Watch the parent of a file too, so that editors that replace the file by
        // renaming a new one over it are seen.
        let target = if self.path.is_file() {
            self.path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.path.clone())
        } else {
            self.path.clone()
        };
        watcher.watch(&target, RecursiveMode::Recursive)?;
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let the burst of events settle.
                loop {
                    match tokio::time::timeout(settle, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
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
        Ok(ConfigWatch {
            _watcher: watcher,
            task,
        })
    }
}

/// A running watch; stops when dropped.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SnapshotSource for ConfigSource {
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
        if proxy.kind == ProxyKind::Sidecar {
            return Err(SourceError(
                "sidecar proxies are not configured yet: only gateways (router~ node ids) are"
                    .into(),
            ));
        }
        let loaded = self.loaded.load_full();
        let translation = crate::translate::gateway(&loaded.config, &loaded.registry, proxy);
        for d in &translation.diagnostics {
            tracing::warn!(proxy = %proxy.id, "{d}");
        }
        Ok(Arc::new(translation.resources))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
