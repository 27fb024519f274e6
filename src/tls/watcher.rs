//! Watches the files behind file-based secrets: filesystem events (notify) wake a check
//! early, and a periodic stat of every file catches what events miss. A source is
//! re-read when any of its files changed identity (inode), size or modification time,
//! which also covers Kubernetes' atomic `..data` symlink swap.
use crate::tls::store::{Inner, SecretSource, SecretStore, SecretStoreOptions};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, TlsCertificate,
};
use notify::Watcher;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc;
use std::time::Instant;

/// What a watched source publishes when reloaded.
#[derive(Debug, Clone)]
pub(crate) enum SourceKind {
    Certificate(TlsCertificate),
    Validation(CertificateValidationContext),
}

/// A secret backed by files.
#[derive(Debug, Clone)]
pub(crate) struct WatchedSource {
    pub name: String,
    pub kind: SourceKind,
    pub files: Vec<PathBuf>,
    /// Extra directories whose events trigger a check (Envoy's `watched_directory`).
    pub dirs: Vec<PathBuf>,
    /// Whether the source came from an SDS snapshot (then a later snapshot may drop it).
    pub from_sds: bool,
    pub source: SecretSource,
    /// The files' stamps taken before they were read, so that a change racing the first
    /// read is still seen.
    pub stamps: Vec<Option<Stamp>>,
}

impl WatchedSource {
    pub fn certificate(
        name: &str,
        tc: TlsCertificate,
        files: Vec<PathBuf>,
        stamps: Vec<Option<Stamp>>,
        origin: SecretSource,
    ) -> WatchedSource {
        let dirs = tc
            .watched_directory
            .iter()
            .map(|d| PathBuf::from(&d.path))
            .collect();
        WatchedSource {
            name: name.to_string(),
            kind: SourceKind::Certificate(tc),
            files,
            dirs,
            from_sds: origin == SecretSource::Sds,
            source: origin,
            stamps,
        }
    }

    pub fn validation(
        name: &str,
        vc: CertificateValidationContext,
        files: Vec<PathBuf>,
        stamps: Vec<Option<Stamp>>,
        origin: SecretSource,
    ) -> WatchedSource {
        let dirs = vc
            .watched_directory
            .iter()
            .map(|d| PathBuf::from(&d.path))
            .collect();
        WatchedSource {
            name: name.to_string(),
            kind: SourceKind::Validation(vc),
            files,
            dirs,
            from_sds: origin == SecretSource::Sds,
            source: origin,
            stamps,
        }
    }
}

/// A file's identity and version as far as stat can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    ino: u64,
    dev: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The current stamps of `files`.
pub(crate) fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files.iter().map(|f| stamp(f)).collect()
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        dev: m.dev(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

enum Msg {
    Add(Box<WatchedSource>),
    ForgetSdsExcept(HashSet<String>),
    ForgetSds(HashSet<String>),
    Event,
    Stop,
}

/// The handle the store keeps; the thread ends when the store is dropped.
pub(crate) struct FileWatcher {
    tx: mpsc::Sender<Msg>,
    /// Registered from the caller's thread, so that a change right after a secret was
    /// added is never missed.
    notifier: std::sync::Mutex<(Option<notify::RecommendedWatcher>, HashSet<PathBuf>)>,
}

struct Entry {
    source: WatchedSource,
    stamps: Vec<Option<Stamp>>,
}

impl FileWatcher {
    pub fn start(store: Weak<Inner>, options: SecretStoreOptions) -> FileWatcher {
        let (tx, rx) = mpsc::channel::<Msg>();
        let event_tx = tx.clone();
        let notifier = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = event_tx.send(Msg::Event);
            }
        });
        let notifier = match notifier {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "filesystem events unavailable; secret files are polled only");
                None
            }
        };
        let spawned = std::thread::Builder::new()
            .name("meshgate-secret-files".into())
            .spawn(move || run(store, options, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the secret file watcher; files will not be reloaded");
        }
        FileWatcher {
            tx,
            notifier: std::sync::Mutex::new((notifier, HashSet::new())),
        }
    }

    pub fn add(&self, source: WatchedSource) {
        {
            let mut guard = self.notifier.lock().unwrap_or_else(|p| p.into_inner());
            let (notifier, watched) = &mut *guard;
            watch_dirs(notifier, watched, &source);
        }
        let _ = self.tx.send(Msg::Add(Box::new(source)));
        // Files may have changed between their first read and the watch being set up.
        let _ = self.tx.send(Msg::Event);
    }

    pub fn forget_sds_except(&self, names: &HashSet<&str>) {
        let names = names.iter().map(|s| s.to_string()).collect();
        let _ = self.tx.send(Msg::ForgetSdsExcept(names));
    }

    /// Stops watching these SDS secrets' files.
    pub fn forget_sds(&self, names: &HashSet<&str>) {
        let names = names.iter().map(|s| s.to_string()).collect();
        let _ = self.tx.send(Msg::ForgetSds(names));
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

fn run(store: Weak<Inner>, options: SecretStoreOptions, rx: mpsc::Receiver<Msg>) {
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let mut next_poll = Instant::now() + options.poll_interval;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        let mut check = false;
        match rx.recv_timeout(wait) {
            Ok(Msg::Add(source)) => {
                let stamps = source.stamps.clone();
                entries.insert(
                    source.name.clone(),
                    Entry {
                        source: *source,
                        stamps,
                    },
                );
            }
            Ok(Msg::ForgetSdsExcept(keep)) => {
                entries.retain(|name, e| !e.source.from_sds || keep.contains(name));
            }
            Ok(Msg::ForgetSds(gone)) => {
                entries.retain(|name, e| !e.source.from_sds || !gone.contains(name));
            }
            Ok(Msg::Event) => {
                // Let a burst of events settle (both files of a pair being replaced).
                let deadline = Instant::now() + options.debounce * 10;
                while Instant::now() < deadline {
                    match rx.recv_timeout(options.debounce) {
                        Ok(Msg::Event) => continue,
                        Ok(Msg::Add(s)) => {
                            let stamps = s.stamps.clone();
                            entries.insert(s.name.clone(), Entry { source: *s, stamps });
                        }
                        Ok(Msg::ForgetSdsExcept(keep)) => {
                            entries.retain(|name, e| !e.source.from_sds || keep.contains(name));
                        }
                        Ok(Msg::ForgetSds(gone)) => {
                            entries.retain(|name, e| !e.source.from_sds || !gone.contains(name));
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                check = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                check = true;
                next_poll = Instant::now() + options.poll_interval;
            }
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if !check {
            continue;
        }
        let Some(inner) = store.upgrade() else { return };
        for entry in entries.values_mut() {
            let now: Vec<Option<Stamp>> = entry.source.files.iter().map(|f| stamp(f)).collect();
            if now != entry.stamps {
                entry.stamps = now;
                SecretStore::reload(&inner, &entry.source);
            }
        }
        drop(inner);
    }
}

fn watch_dirs(
    notifier: &mut Option<notify::RecommendedWatcher>,
    watched: &mut HashSet<PathBuf>,
    source: &WatchedSource,
) {
    let Some(n) = notifier.as_mut() else { return };
    let dirs = source
        .files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .chain(source.dirs.iter().cloned());
    for dir in dirs {
        if watched.contains(&dir) {
            continue;
        }
        match n.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on polling")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tls::store::{SecretStore, SecretStoreOptions};
    use std::time::Duration;

    fn pair(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rotation_case(poll_only: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("a.example.com");
        std::fs::write(&cert_path, &c1).unwrap();
        std::fs::write(&key_path, &k1).unwrap();
        let options = SecretStoreOptions {
            poll_interval: if poll_only {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(3600)
            },
            debounce: Duration::from_millis(50),
        };
        let store = SecretStore::new(options);
        store
            .add_certificate_files("file-cert:a", &cert_path, &key_path)
            .unwrap();
        let rx = store.certificate("file-cert:a");
        let first = rx.borrow().clone().unwrap().digest;

        // Only the certificate replaced: the pair no longer matches; rejected, old kept.
        let (c2, k2) = pair("a.example.com");
        std::fs::write(&cert_path, &c2).unwrap();
        wait_until("rejection", || {
            store.stats().get("tls.secret_rejections") == Some(1)
        });
        assert_eq!(rx.borrow().clone().unwrap().digest, first);

        // Then the key: the new pair is served.
        std::fs::write(&key_path, &k2).unwrap();
        wait_until("rotation", || rx.borrow().clone().unwrap().digest != first);
        assert_eq!(store.stats().get("tls.secret_rotations"), Some(1));

        // Garbage: rejected, the second pair keeps serving.
        let second = rx.borrow().clone().unwrap().digest;
        std::fs::write(&cert_path, "garbage").unwrap();
        wait_until("second rejection", || {
            store.stats().get("tls.secret_rejections") == Some(2)
        });
        assert_eq!(rx.borrow().clone().unwrap().digest, second);
    }

    #[test]
    fn file_pair_rotates_on_events_and_rejects_half_replaced_pairs() {
        rotation_case(false);
    }

    #[test]
    fn file_pair_rotates_by_polling_alone() {
        rotation_case(true);
    }

    #[test]
    fn kubernetes_style_symlink_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        let (c1, k1) = pair("a.example.com");
        let (c2, k2) = pair("a.example.com");
        std::fs::write(v1.join("tls.crt"), &c1).unwrap();
        std::fs::write(v1.join("tls.key"), &k1).unwrap();
        std::fs::write(v2.join("tls.crt"), &c2).unwrap();
        std::fs::write(v2.join("tls.key"), &k2).unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("..v1", &data).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
        let store = SecretStore::new(SecretStoreOptions {
            poll_interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(50),
        });
        store
            .add_certificate_files("k", dir.path().join("tls.crt"), dir.path().join("tls.key"))
            .unwrap();
        let rx = store.certificate("k");
        let first = rx.borrow().clone().unwrap().digest;
        // Atomic swap the way the kubelet does it: new link, rename over ..data.
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..v2", &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        wait_until("rotation", || rx.borrow().clone().unwrap().digest != first);
    }
}
