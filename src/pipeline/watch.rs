//! Watching a configuration path: filesystem events (inotify) settled into one change
//! per burst, with a periodic look at the files (names, sizes, times, inodes) as a
//! safety net for filesystems and volume updates that send no events. Reading a file
//! sends no event that counts (access events are ignored).
use notify::{RecursiveMode, Watcher as _};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// A running watch of one path; stops when dropped.
pub struct ConfigWatch {
    changes: mpsc::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigWatch {
    /// Starts watching `path` (a file or a directory, recursively) on the current tokio
    /// runtime. `settle` is the quiet time that ends a burst of events (an editor's
    /// several writes, a `kubectl cp`); `poll` how often the files are looked at
    /// without an event. If events cannot be had (no inotify), polling alone serves.
    pub fn start(path: &Path, settle: Duration, poll: Duration) -> ConfigWatch {
        let (event_tx, mut events) = mpsc::unbounded_channel::<()>();
        let watcher = watch_events(path, event_tx);
        let (tx, changes) = mpsc::channel(1);
        let path = path.to_path_buf();
        // Taken now, so that a change made right after `start` returns is not missed.
        let mut seen = fingerprint(&path);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut events_open = true;
            loop {
                // An event is a change even when names, sizes and times look the same (a
                // same-size write within the clock's granularity); a tick only when they
                // differ.
                let evented = tokio::select! {
                    e = events.recv(), if events_open => match e {
                        Some(()) => {
                            // Let the burst settle, for at most ten quiet times: a file
                            // rewritten without end still reloads.
                            let until = tokio::time::Instant::now() + settle * 10;
                            while tokio::time::Instant::now() < until
                                && let Ok(Some(())) =
                                    tokio::time::timeout(settle, events.recv()).await
                            {}
                            true
                        }
                        None => {
                            // No event source any more: polling alone serves.
                            events_open = false;
                            false
                        }
                    },
                    _ = tick.tick() => false,
                };
                let now = fingerprint(&path);
                if evented || now != seen {
                    seen = now;
                    // A full channel already holds a change not yet taken: one suffices.
                    let _ = tx.try_send(());
                    if tx.is_closed() {
                        return;
                    }
                }
            }
        });
        ConfigWatch {
            changes,
            _watcher: watcher,
            task,
        }
    }

    /// Waits for the next change.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

fn watch_events(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    // A file is watched through its directory (editors and Kubernetes replace it by a
    // rename), and only events about it count: a log written next to it is no change.
    let file = path.is_file().then(|| path.to_path_buf());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
            && e.paths.iter().any(|p| relevant(p, file.as_deref()))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "no filesystem events; the configuration is polled"))
    .ok()?;
    let (target, mode) = if path.is_file() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        (dir, RecursiveMode::NonRecursive)
    } else {
        (path.to_path_buf(), RecursiveMode::Recursive)
    };
    match watcher.watch(&target, mode) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(path = %target.display(), error = %e, "no filesystem events; the configuration is polled");
            None
        }
    }
}

/// Whether an event about `changed` can concern the configuration: the watched file
/// itself, Kubernetes' `..data` swap of a mounted volume, or (watching a directory) a
/// file the loader reads (`.yaml`, `.yml`, `.json`) or a directory.
fn relevant(changed: &Path, file: Option<&Path>) -> bool {
    let name = changed.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("..") {
        return true;
    }
    match file {
        Some(f) => f.file_name() == changed.file_name(),
        None => match changed.extension().and_then(|e| e.to_str()) {
            Some(ext) => matches!(ext, "yaml" | "yml" | "json"),
            None => !name.starts_with('.'),
        },
    }
}

/// A fingerprint of the files under a path (names, sizes, modification and change times,
/// inodes), to notice changes without reading them. Symbolic links are followed, so Kubernetes'
/// `..data` swap of a mounted ConfigMap counts as a change.
pub fn fingerprint(path: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![path.to_path_buf()];
    let mut files = Vec::new();
    while let Some(p) = stack.pop() {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt as _;
                // The inode and change time catch a file replaced by a rename (how editors
                // and Kubernetes volumes update), whatever its size and modification time.
                files.push((
                    p,
                    m.len(),
                    m.modified().ok(),
                    m.ino(),
                    m.ctime(),
                    m.ctime_nsec(),
                ))
            }
            Err(_) => files.push((p, 0, None, 0, 0, 0)),
        }
    }
    files.sort();
    files.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_reported_once_and_nothing_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "one").unwrap();
        let mut watch = ConfigWatch::start(
            dir.path(),
            Duration::from_millis(20),
            Duration::from_millis(50),
        );
        std::fs::write(&file, "two, longer").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the change is reported");
        // A second change after the first was taken is reported again.
        std::fs::write(dir.path().join("b.yaml"), "new file").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the new file is reported");
    }

    #[test]
    fn only_events_about_the_configuration_count() {
        let file = Path::new("/etc/mg/gateway.yaml");
        assert!(relevant(file, Some(file)));
        assert!(relevant(Path::new("/etc/mg/..data"), Some(file)));
        assert!(!relevant(Path::new("/etc/mg/gateway.log"), Some(file)));
        assert!(!relevant(Path::new("/etc/mg/other.yaml"), Some(file)));
        assert!(relevant(Path::new("/etc/mg/routes.yml"), None));
        assert!(relevant(Path::new("/etc/mg/x.json"), None));
        assert!(relevant(Path::new("/etc/mg/subdir"), None));
        assert!(!relevant(Path::new("/etc/mg/meshgate.stdout"), None));
        assert!(!relevant(Path::new("/etc/mg/.routes.yaml.swp"), None));
    }

    #[tokio::test]
    async fn a_log_written_next_to_a_watched_file_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "one").unwrap();
        let mut watch =
            ConfigWatch::start(&file, Duration::from_millis(20), Duration::from_secs(3600));
        for i in 0..50 {
            std::fs::write(dir.path().join("gateway.log"), format!("line {i}")).unwrap();
        }
        std::fs::write(&file, "two, longer").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the file's change is reported");
        // The log keeps being written; nothing else is reported.
        for i in 0..20 {
            std::fs::write(dir.path().join("gateway.log"), format!("more {i}")).unwrap();
        }
        std::fs::write(dir.path().join("b.yaml"), "not the watched file").unwrap();
        // A later change of the file is still seen, and it is the next one reported.
        std::fs::write(&file, "three, longer still").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the second change is reported");
    }

    #[test]
    fn fingerprint_follows_names_sizes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let a = fingerprint(dir.path());
        std::fs::write(dir.path().join("x.yaml"), "1").unwrap();
        let b = fingerprint(dir.path());
        assert_ne!(a, b);
        assert_eq!(b, fingerprint(dir.path()));
        std::fs::write(dir.path().join("x.yaml"), "12").unwrap();
        assert_ne!(b, fingerprint(dir.path()));
    }
}
