//! Loading configuration: files and directory trees of YAML/JSON documents into a
//! [`Config`], with every problem as a positioned [`Diagnostic`].
//!
//! Loading never stops at the first problem: a broken document becomes a diagnostic and
//! the other documents (and files) still load.
use super::diag::{Diagnostic, Severity};
use super::source::{self, Node, NodeValue};
use super::types::common::{nearest, quoted_list};
use super::types::{
    AuthorizationPolicy, DestinationRule, Gateway, Kind, ObjectMeta, Origin, PeerAuthentication,
    RequestAuthentication, Resource, Secret, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest file read, in bytes.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;
/// Deepest directory nesting followed when loading a tree.
pub const MAX_DIR_DEPTH: usize = 32;

/// The Istio API group meshgate reads.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// The Istio API group of security policies.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The versions of that group accepted for the kinds meshgate reads from it.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// The telemetry.istio.io versions of `Telemetry`.
pub const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];
/// The API group of meshgate's own resources (`AcmeCertificate`).
pub const MESHGATE_GROUP: &str = "meshgate.io";
/// The versions of that group accepted for every kind meshgate reads.
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// Every resource loaded, by kind, in load order (files sorted, documents in file order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `Gateway`s.
    pub gateways: Vec<Resource<Gateway>>,
    /// `VirtualService`s.
    pub virtual_services: Vec<Resource<VirtualService>>,
    /// `DestinationRule`s.
    pub destination_rules: Vec<Resource<DestinationRule>>,
    /// `ServiceEntry`s.
    pub service_entries: Vec<Resource<ServiceEntry>>,
    /// `WorkloadEntry`s.
    pub workload_entries: Vec<Resource<WorkloadEntry>>,
    /// `Sidecar`s.
    pub sidecars: Vec<Resource<Sidecar>>,
    /// `PeerAuthentication`s (security.istio.io).
    pub peer_authentications: Vec<Resource<PeerAuthentication>>,
    /// `RequestAuthentication`s (security.istio.io).
    pub request_authentications: Vec<Resource<RequestAuthentication>>,
    /// `AuthorizationPolicy`s (security.istio.io).
    pub authorization_policies: Vec<Resource<AuthorizationPolicy>>,
    /// `Telemetry`s (telemetry.istio.io): their tracing is served.
    pub telemetries: Vec<Resource<super::types::Telemetry>>,
    /// Kubernetes `Secret`s.
    pub secrets: Vec<Resource<Secret>>,
    /// meshgate `AcmeCertificate`s (`meshgate.io/v1alpha1`).
    pub acme_certificates: Vec<Resource<crate::acme::resource::AcmeCertificateSpec>>,
    /// meshgate `RateLimitPolicy`s (`meshgate.io/v1alpha1`).
    pub rate_limit_policies: Vec<Resource<super::types::RateLimitPolicy>>,
}

impl Config {
    /// Number of resources of all kinds.
    pub fn len(&self) -> usize {
        self.gateways.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.sidecars.len()
            + self.peer_authentications.len()
            + self.request_authentications.len()
            + self.authorization_policies.len()
            + self.telemetries.len()
            + self.secrets.len()
            + self.acme_certificates.len()
            + self.rate_limit_policies.len()
    }

    /// Whether nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends every resource of `other`.
    pub fn extend(&mut self, other: Config) {
        self.gateways.extend(other.gateways);
        self.virtual_services.extend(other.virtual_services);
        self.destination_rules.extend(other.destination_rules);
        self.service_entries.extend(other.service_entries);
        self.workload_entries.extend(other.workload_entries);
        self.sidecars.extend(other.sidecars);
        self.peer_authentications.extend(other.peer_authentications);
        self.request_authentications
            .extend(other.request_authentications);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.telemetries.extend(other.telemetries);
        self.secrets.extend(other.secrets);
        self.acme_certificates.extend(other.acme_certificates);
        self.rate_limit_policies.extend(other.rate_limit_policies);
    }
}

/// What loading produced: the resources that loaded, and the problems found.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    /// Resources that loaded.
    pub config: Config,
    /// Problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadOutcome {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads a file, or every `.yaml`/`.yml`/`.json` file under a directory (sorted by path,
/// hidden files and directories skipped).
pub fn load(path: &Path) -> LoadOutcome {
    load_cached(path, &mut FileCache::default())
}

/// What the file system says of a file: equal stamps mean an unchanged file (a rename
/// over it changes the inode, a write the times and usually the size).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    ctime: (i64, i64),
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
        })
    }
}

/// Files parsed by an earlier load of the same path, so that a reload parses only the
/// files that changed (a watched folder of thousands of files, one edited).
#[derive(Debug, Default)]
pub struct FileCache {
    files: std::collections::HashMap<PathBuf, (FileStamp, LoadOutcome)>,
}

/// [`load`], reusing what `cache` holds of unchanged files and keeping what it parsed.
pub fn load_cached(path: &Path, cache: &mut FileCache) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            out.diagnostics.push(Diagnostic::file_error(
                path.display().to_string(),
                0,
                0,
                format!("cannot read: {e}"),
            ));
            return out;
        }
    };
    let mut files = Vec::new();
    if meta.is_dir() {
        collect_files(path, 0, &mut files, &mut out.diagnostics);
    } else {
        files.push(path.to_path_buf());
    }
    let mut kept = std::collections::HashMap::with_capacity(files.len());
    let stamped: Vec<(PathBuf, Option<FileStamp>, Option<LoadOutcome>)> = files
        .into_iter()
        .map(|file| {
            let stamp = FileStamp::of(&file);
            let cached = cache
                .files
                .remove(&file)
                .filter(|(s, _)| Some(s) == stamp.as_ref())
                .map(|(_, parsed)| parsed);
            (file, stamp, cached)
        })
        .collect();
    // Files not in the cache are parsed on every core (a folder may hold ten thousand
    // Secrets); the results are then taken in file order, as before.
    let to_parse: Vec<&Path> = stamped
        .iter()
        .filter(|(_, _, cached)| cached.is_none())
        .map(|(f, _, _)| f.as_path())
        .collect();
    let mut fresh = parse_files(&to_parse).into_iter();
    for (file, stamp, cached) in stamped {
        let parsed = match cached {
            Some(parsed) => parsed,
            None => fresh.next().unwrap_or_default(),
        };
        out.config.extend(parsed.config.clone());
        out.diagnostics.extend(parsed.diagnostics.iter().cloned());
        if let Some(stamp) = stamp {
            kept.insert(file, (stamp, parsed));
        }
    }
    // Files gone since the last load leave the cache with it.
    cache.files = kept;
    out
}

/// Reads and parses one file.
fn parse_file(file: &Path) -> LoadOutcome {
    let name = file.display().to_string();
    let mut parsed = LoadOutcome::default();
    match read_file(file) {
        Ok(bytes) => load_document_bytes(&name, &bytes, &mut parsed),
        Err(message) => parsed
            .diagnostics
            .push(Diagnostic::file_error(name, 0, 0, message)),
    }
    parsed
}

/// Parses files on up to one thread per core; the results are in `files`' order.
fn parse_files(files: &[&Path]) -> Vec<LoadOutcome> {
    const PER_THREAD_MIN: usize = 64;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().div_ceil(PER_THREAD_MIN))
        .max(1);
    if threads == 1 {
        return files.iter().map(|f| parse_file(f)).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|f| parse_file(f)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(chunk))
            .flat_map(|(h, part)| {
                // A parser that panicked: its files are parsed again here, so the panic
                // shows where it happens.
                h.join()
                    .unwrap_or_else(|_| part.iter().map(|f| parse_file(f)).collect())
            })
            .collect()
    })
}

/// Loads the documents of one file's content; `name` is used in diagnostics.
pub fn load_bytes(name: &str, bytes: &[u8]) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    if bytes.len() as u64 > MAX_FILE_SIZE {
        out.diagnostics.push(Diagnostic::file_error(
            name,
            0,
            0,
            format!("file is larger than {} MiB", MAX_FILE_SIZE / (1024 * 1024)),
        ));
        return out;
    }
    load_document_bytes(name, bytes, &mut out);
    out
}

/// Loads YAML or JSON text; `name` is used in diagnostics.
pub fn load_str(name: &str, text: &str) -> LoadOutcome {
    load_bytes(name, text.as_bytes())
}

fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn collect_files(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let name = dir.display().to_string();
    if depth > MAX_DIR_DEPTH {
        diags.push(Diagnostic::file_error(
            name,
            0,
            0,
            format!(
                "directory nesting deeper than {MAX_DIR_DEPTH} levels (symlink loop?); not read"
            ),
        ));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            diags.push(Diagnostic::file_error(
                name,
                0,
                0,
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if is_hidden(&path) {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => collect_files(&path, depth + 1, files, diags),
            Ok(_) if is_config_file(&path) => files.push(path),
            Ok(_) => {}
            Err(e) if is_config_file(&path) => {
                diags.push(Diagnostic::file_error(
                    path.display().to_string(),
                    0,
                    0,
                    format!("cannot read: {e}"),
                ));
            }
            Err(_) => {}
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(format!(
            "file is larger than {} MiB",
            MAX_FILE_SIZE / (1024 * 1024)
        ));
    }
    Ok(bytes)
}

fn load_document_bytes(name: &str, bytes: &[u8], out: &mut LoadOutcome) {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // The valid prefix is UTF-8 by construction.
            let prefix = String::from_utf8_lossy(valid);
            let line = prefix.matches('\n').count() + 1;
            let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let byte = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
            out.diagnostics.push(Diagnostic::file_error(
                name,
                u32::try_from(line).unwrap_or(u32::MAX),
                u32::try_from(column).unwrap_or(u32::MAX),
                format!("invalid UTF-8 (byte 0x{byte:02x}); configuration files must be UTF-8"),
            ));
            return;
        }
    };
    let file: Arc<str> = Arc::from(name);
    for doc in source::parse(text) {
        match doc {
            Err(e) => out.diagnostics.push(Diagnostic::file_error(
                name,
                e.pos.line,
                e.pos.column,
                e.message,
            )),
            Ok(doc) => {
                if let Some(root) = doc.root {
                    load_object(&file, root, &mut out.config, &mut out.diagnostics);
                }
            }
        }
    }
}

/// Splits `group/version` (`v1` alone is the core group).
fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// What ignoring a recognised-but-unimplemented Istio kind would do to traffic.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unenforced {
    /// It only adds features (telemetry, extensions): ignored with a warning.
    AddsFeatures,
    /// It restricts or protects traffic: refused, since serving without it fails open.
    /// (Every such Istio kind is enforced today; the rule stays for the next one.)
    #[allow(dead_code)]
    Guards,
}

/// Istio kinds meshgate recognises but does not act on yet, by group.
const UNSUPPORTED_ISTIO_KINDS: &[(&str, &str, Unenforced)] = &[
    (
        "networking.istio.io",
        "EnvoyFilter",
        Unenforced::AddsFeatures,
    ),
    (
        "networking.istio.io",
        "WorkloadGroup",
        Unenforced::AddsFeatures,
    ),
    (
        "networking.istio.io",
        "ProxyConfig",
        Unenforced::AddsFeatures,
    ),
    ("telemetry.istio.io", "Telemetry", Unenforced::AddsFeatures),
    (
        "extensions.istio.io",
        "WasmPlugin",
        Unenforced::AddsFeatures,
    ),
];

/// The diagnostics for a recognised kind meshgate does not implement: an error for what
/// guards traffic, a warning for the rest.
fn unenforced_kind(
    root: &Node,
    kind: &str,
    effect: Unenforced,
    at: &dyn Fn(&Node, &str, Severity, String) -> Diagnostic,
    diags: &mut Vec<Diagnostic>,
) {
    match effect {
        Unenforced::AddsFeatures => diags.push(at(
            root,
            "kind",
            Severity::Warning,
            format!("kind {kind} is not supported yet; ignored"),
        )),
        Unenforced::Guards => diags.push(at(
            root,
            "kind",
            Severity::Error,
            format!(
                "{kind} is not enforced yet; the configuration is refused rather than served as if the policy were absent"
            ),
        )),
    }
}

const NETWORKING_KINDS: &[&str] = &[
    "Gateway",
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "WorkloadEntry",
    "Sidecar",
];

/// The security.istio.io kinds meshgate reads.
const SECURITY_KINDS: &[&str] = &[
    "PeerAuthentication",
    "RequestAuthentication",
    "AuthorizationPolicy",
];

fn scalar_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    match &node.get(key)?.value.value {
        NodeValue::String(s) => Some(s.as_str()),
        _ => None,
    }
}

fn load_object(file: &Arc<str>, root: Node, config: &mut Config, diags: &mut Vec<Diagnostic>) {
    let at = |node: &Node, field: &str, severity: Severity, message: String| {
        let pos = node.locate(field);
        Diagnostic {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            severity,
            resource: resource_label(node),
            field: (!field.is_empty()).then(|| field.to_string()),
            message,
        }
    };
    if !matches!(root.value, NodeValue::Map(_)) {
        diags.push(at(
            &root,
            "",
            Severity::Error,
            "a document must be a mapping with `apiVersion` and `kind`".to_string(),
        ));
        return;
    }
    let (Some(api_version), Some(kind)) =
        (scalar_str(&root, "apiVersion"), scalar_str(&root, "kind"))
    else {
        let missing = if scalar_str(&root, "apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        diags.push(at(
            &root,
            missing,
            Severity::Error,
            format!("missing or non-string `{missing}`"),
        ));
        return;
    };
    let (group, version) = split_api_version(api_version);
    let (api_version, kind) = (api_version.to_string(), kind.to_string());

    if group.is_empty() && version == "v1" && kind == "List" {
        load_list(file, root, config, diags);
        return;
    }
    if group.is_empty() && version == "v1" && kind == "Secret" {
        if let Some(r) = deserialize_secret(file, root, diags) {
            config.secrets.push(r);
        }
        return;
    }
    if group == MESHGATE_GROUP {
        let expected = match kind.as_str() {
            k if k == crate::acme::resource::KIND => crate::acme::resource::API_VERSION,
            k if k == super::types::rate_limit_policy::KIND => {
                super::types::rate_limit_policy::API_VERSION
            }
            _ => {
                let known = [
                    crate::acme::resource::KIND,
                    super::types::rate_limit_policy::KIND,
                ];
                let hint = match nearest(&kind, &known) {
                    Some(near) => format!("; did you mean `{near}`?"),
                    None => format!("; expected one of {}", quoted_list(&known)),
                };
                diags.push(at(
                    &root,
                    "kind",
                    Severity::Error,
                    format!("unknown kind `{kind}` in {MESHGATE_GROUP}{hint}"),
                ));
                return;
            }
        };
        if api_version != expected {
            diags.push(at(
                &root,
                "apiVersion",
                Severity::Error,
                format!("{kind} needs apiVersion {expected}, not `{api_version}`"),
            ));
        } else if kind == crate::acme::resource::KIND {
            push(config, file, root, diags, |c| &mut c.acme_certificates);
        } else {
            push(config, file, root, diags, |c| &mut c.rate_limit_policies);
        }
        return;
    }
    let istio_group = group == "istio.io" || group.ends_with(".istio.io");
    if NETWORKING_KINDS.contains(&kind.as_str()) && (group == NETWORKING_GROUP || group.is_empty())
    {
        if group != NETWORKING_GROUP || !NETWORKING_VERSIONS.contains(&version) {
            diags.push(at(
                &root,
                "apiVersion",
                Severity::Error,
                format!(
                    "{kind} needs apiVersion {NETWORKING_GROUP}/v1, v1beta1 or v1alpha3, not `{api_version}`"
                ),
            ));
            return;
        }
        match kind.as_str() {
            "Gateway" => push(config, file, root, diags, |c| &mut c.gateways),
            "VirtualService" => push(config, file, root, diags, |c| &mut c.virtual_services),
            "DestinationRule" => push(config, file, root, diags, |c| &mut c.destination_rules),
            "ServiceEntry" => push(config, file, root, diags, |c| &mut c.service_entries),
            "Sidecar" => push(config, file, root, diags, |c| &mut c.sidecars),
            _ => push(config, file, root, diags, |c| &mut c.workload_entries),
        }
        return;
    }
    if SECURITY_KINDS.contains(&kind.as_str()) && group == SECURITY_GROUP {
        if !SECURITY_VERSIONS.contains(&version) {
            diags.push(at(
                &root,
                "apiVersion",
                Severity::Error,
                format!(
                    "{kind} needs apiVersion {SECURITY_GROUP}/v1 or v1beta1, not `{api_version}`"
                ),
            ));
            return;
        }
        match kind.as_str() {
            "RequestAuthentication" => push(config, file, root, diags, |c| {
                &mut c.request_authentications
            }),
            "AuthorizationPolicy" => {
                push(config, file, root, diags, |c| &mut c.authorization_policies)
            }
            _ => push(config, file, root, diags, |c| &mut c.peer_authentications),
        }
        return;
    }
    if let Some((_, _, effect)) = UNSUPPORTED_ISTIO_KINDS
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
    {
        if kind == "Telemetry" {
            if !TELEMETRY_VERSIONS.contains(&version) {
                diags.push(at(
                    &root,
                    "apiVersion",
                    Severity::Error,
                    format!(
                        "Telemetry needs apiVersion {group}/v1 or v1alpha1, not `{api_version}`"
                    ),
                ));
                return;
            }
            // Its tracing is served; what else it says (metrics, access logging) is
            // ignored with a warning, as the whole kind was before.
            let spec = root.get("spec");
            let has = |f: &str| spec.and_then(|s| s.value.get(f)).is_some();
            if !has("tracing") {
                unenforced_kind(&root, &kind, *effect, &at, diags);
            } else {
                for field in ["metrics", "accessLogging"] {
                    if has(field) {
                        diags.push(at(
                            &root,
                            &format!("spec.{field}"),
                            Severity::Warning,
                            format!("Telemetry {field} is not supported yet; ignored (only tracing is served)"),
                        ));
                    }
                }
            }
            push(config, file, root, diags, |c| &mut c.telemetries);
            return;
        }
        unenforced_kind(&root, &kind, *effect, &at, diags);
        return;
    }
    if istio_group {
        let known: Vec<&str> = UNSUPPORTED_ISTIO_KINDS
            .iter()
            .filter(|(g, _, _)| *g == group)
            .map(|(_, k, _)| *k)
            .chain(
                NETWORKING_KINDS
                    .iter()
                    .copied()
                    .filter(|_| group == NETWORKING_GROUP),
            )
            .chain(
                SECURITY_KINDS
                    .iter()
                    .copied()
                    .filter(|_| group == SECURITY_GROUP),
            )
            .collect();
        let hint = match nearest(&kind, &known) {
            Some(near) => format!("; did you mean `{near}`?"),
            None if known.is_empty() => String::new(),
            None => format!("; expected one of {}", quoted_list(&known)),
        };
        diags.push(at(
            &root,
            "kind",
            Severity::Error,
            format!("unknown kind `{kind}` in {group}{hint}"),
        ));
        return;
    }
    diags.push(at(
        &root,
        "kind",
        Severity::Warning,
        format!("kind {kind} ({api_version}) is not an Istio networking resource meshgate reads; ignored"),
    ));
}

/// `kind: List` (as `kubectl get -o yaml` prints): each item loads as its own document.
fn load_list(file: &Arc<str>, root: Node, config: &mut Config, diags: &mut Vec<Diagnostic>) {
    let NodeValue::Map(entries) = root.value else {
        return;
    };
    for entry in entries {
        if entry.key != "items" {
            continue;
        }
        if let NodeValue::Seq(items) = entry.value.value {
            for item in items {
                load_object(file, item, config, diags);
            }
        }
    }
}

/// `Kind/namespace/name` read directly from the tree, for diagnostics about resources
/// that did not deserialize.
fn resource_label(root: &Node) -> Option<String> {
    let kind = scalar_str(root, "kind")?;
    let meta = &root.get("metadata")?.value;
    let name = scalar_str(meta, "name")?;
    let namespace = scalar_str(meta, "namespace").unwrap_or(super::types::DEFAULT_NAMESPACE);
    Some(format!("{kind}/{namespace}/{name}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IstioDocument<T> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    spec: Option<T>,
    #[allow(dead_code)]
    #[serde(default)]
    status: Option<IgnoredAny>,
}

struct SecretDocument {
    metadata: ObjectMeta,
    secret: Secret,
}

fn push<T>(
    config: &mut Config,
    file: &Arc<str>,
    root: Node,
    diags: &mut Vec<Diagnostic>,
    list: impl FnOnce(&mut Config) -> &mut Vec<Resource<T>>,
) where
    T: Kind + DeserializeOwned + Default,
{
    let root = Arc::new(root);
    let Some(doc) = deserialize::<IstioDocument<T>>(file, &root, diags) else {
        return;
    };
    if let Some(resource) = finish(
        file,
        root,
        doc.metadata,
        doc.spec.unwrap_or_default(),
        diags,
    ) {
        list(config).push(resource);
    }
}

fn deserialize_secret(
    file: &Arc<str>,
    root: Node,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resource<Secret>> {
    let root = Arc::new(root);
    let doc = deserialize_secret_document(file, &root, diags)?;
    // The tree is kept for positions only: the values (certificates, keys) live in the
    // spec, and a copy of every key in the tree would double what ten thousand
    // credentials cost.
    let mut root = root;
    keep_secret_positions(Arc::make_mut(&mut root));
    finish(file, root, doc.metadata, doc.secret, diags)
}

/// Reduces a Secret's tree to what later diagnostics point at once it is loaded: its
/// `metadata.name` and `metadata.namespace` (problems with its values were reported while
/// loading). Ten thousand credentials otherwise keep ten thousand envelopes.
fn keep_secret_positions(root: &mut Node) {
    let NodeValue::Map(entries) = &mut root.value else {
        return;
    };
    entries.retain(|e| e.key == "metadata");
    for e in entries.iter_mut() {
        if let NodeValue::Map(fields) = &mut e.value.value {
            fields.retain(|f| f.key == "name" || f.key == "namespace");
            fields.shrink_to_fit();
        }
    }
    entries.shrink_to_fit();
}

/// Secrets cannot use `flatten` with `deny_unknown_fields`; read the envelope and the
/// payload separately from the same tree.
fn deserialize_secret_document(
    file: &Arc<str>,
    root: &Arc<Node>,
    diags: &mut Vec<Diagnostic>,
) -> Option<SecretDocument> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Envelope {
        #[allow(dead_code)]
        api_version: String,
        #[allow(dead_code)]
        kind: String,
        metadata: ObjectMeta,
        #[allow(dead_code)]
        #[serde(default, rename = "type")]
        secret_type: Option<IgnoredAny>,
        #[allow(dead_code)]
        #[serde(default)]
        data: Option<IgnoredAny>,
        #[allow(dead_code)]
        #[serde(default)]
        string_data: Option<IgnoredAny>,
        #[allow(dead_code)]
        #[serde(default)]
        immutable: Option<IgnoredAny>,
    }
    let envelope = deserialize::<Envelope>(file, root, diags)?;
    // The payload: the same document without the envelope's own keys.
    let payload = match root.to_value() {
        serde_json::Value::Object(mut map) => {
            map.remove("apiVersion");
            map.remove("kind");
            map.remove("metadata");
            serde_json::Value::Object(map)
        }
        other => other,
    };
    let secret = match serde_path_to_error::deserialize::<_, Secret>(payload) {
        Ok(s) => s,
        Err(e) => {
            diags.push(serde_diagnostic(file, root, e));
            return None;
        }
    };
    Some(SecretDocument {
        metadata: envelope.metadata,
        secret,
    })
}

fn finish<T: Kind>(
    file: &Arc<str>,
    root: Arc<Node>,
    metadata: ObjectMeta,
    spec: T,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resource<T>> {
    let resource = Resource {
        meta: metadata,
        spec,
        origin: Origin::new(file.clone(), root),
    };
    if resource.meta.name.is_empty() {
        diags.push(resource.error("metadata.name", "`metadata.name` is required"));
        return None;
    }
    if resource.meta.namespace.is_empty() {
        diags.push(resource.error(
            "metadata.namespace",
            "`metadata.namespace` must not be empty",
        ));
        return None;
    }
    Some(resource)
}

fn deserialize<T: DeserializeOwned>(
    file: &Arc<str>,
    root: &Arc<Node>,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(root.to_value()) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(serde_diagnostic(file, root, e));
            None
        }
    }
}

/// Turns a serde error into a diagnostic at the failing field, with a did-you-mean hint
/// for unknown fields.
pub(crate) fn serde_diagnostic(
    file: &Arc<str>,
    root: &Node,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> Diagnostic {
    let path = e.path().to_string();
    let field = if path == "." { String::new() } else { path };
    let message = improve_message(&e.inner().to_string());
    let pos = root.locate(&field);
    Diagnostic {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        severity: Severity::Error,
        resource: resource_label(root),
        field: (!field.is_empty()).then_some(field),
        message,
    }
}

/// serde names Rust types ("expected u32"); say what YAML needs instead.
fn plain_type_names(message: &str) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("expected u32", "expected an integer from 0 to 4294967295"),
        (
            "expected u64",
            "expected an integer from 0 to 18446744073709551615",
        ),
        (
            "expected i32",
            "expected an integer from -2147483648 to 2147483647",
        ),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    for (rust, yaml) in NAMES {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{yaml}");
        }
    }
    message.to_string()
}

/// serde's "unknown field `hots`, expected one of `hosts`, ..." becomes
/// "unknown field `hots`; did you mean `hosts`?".
fn improve_message(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return plain_type_names(message);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    match nearest(field, &candidates) {
        Some(near) => format!("unknown field `{field}`; did you mean `{near}`?"),
        None if candidates.is_empty() => {
            format!("unknown field `{field}`; this object has no fields")
        }
        None => format!(
            "unknown field `{field}`; expected one of {}",
            quoted_list(&candidates)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::common::StringMatch;
    use crate::config::types::destination_rule::{HashKey, LbPolicy, SimpleLb};
    use crate::config::types::service_entry::Resolution;
    use crate::config::types::virtual_service::{AbortError, DelayType, RedirectPort};

    const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: shop
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["bookinfo.example.com"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
  uid: 1234
  resourceVersion: "77"
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  hosts: [bookinfo.example.com]
  gateways: [bookinfo-gateway]
  http:
  - name: v2
    match:
    - uri: {prefix: /reviews}
      headers:
        end-user: {exact: jason}
        x-any: {}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 80
    - destination: {host: reviews, subset: v1}
      weight: 20
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset"}
    fault:
      delay: {fixedDelay: 5s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 1.5}}
  - redirect: {uri: /new, derivePort: FROM_REQUEST_PORT}
status: {}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: 4}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - address: 127.0.0.1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1}
spec: {address: 127.0.0.2, labels: {app: reviews}, ports: {http: 19080}}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: aGVsbG8=}
stringData: {tls.key: secret}
"#;

    fn errors(outcome: &LoadOutcome) -> Vec<String> {
        outcome
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn one_diagnostic(text: &str) -> String {
        let outcome = load_str("t.yaml", text);
        assert_eq!(outcome.diagnostics.len(), 1, "{:?}", errors(&outcome));
        outcome.diagnostics[0].to_string()
    }

    #[test]
    fn loads_every_kind_with_every_oneof_form() {
        let outcome = load_str("bookinfo.yaml", BOOKINFO);
        assert!(outcome.diagnostics.is_empty(), "{:?}", errors(&outcome));
        let c = &outcome.config;
        assert_eq!(c.len(), 6);
        let gw = &c.gateways[0];
        assert_eq!(gw.id(), "Gateway/shop/bookinfo-gateway");
        assert_eq!(
            gw.spec.servers[0].port.as_ref().map(|p| p.number),
            Some(8080)
        );
        assert_eq!((gw.origin.line, gw.origin.column), (2, 1));

        let vs = &c.virtual_services[0];
        let route = &vs.spec.http[0];
        assert_eq!(
            route.matches[0].uri,
            Some(StringMatch::Prefix("/reviews".into()))
        );
        assert_eq!(route.matches[0].headers["x-any"], StringMatch::Empty);
        assert_eq!(route.route[1].weight, 20);
        assert_eq!(
            route.timeout.map(|d| d.get()),
            Some(std::time::Duration::from_millis(1500))
        );
        let fault = route.fault.as_ref().unwrap();
        assert!(matches!(
            fault.delay.as_ref().unwrap().delay_type,
            Some(DelayType::FixedDelay(_))
        ));
        assert_eq!(
            fault.abort.as_ref().unwrap().error_type,
            Some(AbortError::HttpStatus(503))
        );
        assert!(matches!(
            vs.spec.http[1].redirect.as_ref().unwrap().redirect_port,
            Some(RedirectPort::DerivePort(_))
        ));
        assert_eq!(vs.origin.position("spec.http[0].route[1].weight"), (36, 7));

        let dr = &c.destination_rules[0];
        let lb = dr
            .spec
            .traffic_policy
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap();
        let Some(LbPolicy::ConsistentHash(hash)) = &lb.lb_policy else {
            panic!("{lb:?}");
        };
        assert_eq!(
            hash.hash_key,
            Some(HashKey::HttpHeaderName("x-user".into()))
        );
        let subset_lb = dr.spec.subsets[0]
            .traffic_policy
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap();
        assert_eq!(
            subset_lb.lb_policy,
            Some(LbPolicy::Simple(SimpleLb::RoundRobin))
        );

        assert_eq!(
            c.service_entries[0].spec.resolution,
            Some(Resolution::Static)
        );
        assert_eq!(c.workload_entries[0].meta.namespace, "default");
        assert_eq!(c.workload_entries[0].spec.ports["http"], 19080);
        let secret = &c.secrets[0].spec;
        assert_eq!(secret.get("tls.crt"), Some(&b"hello"[..]));
        assert_eq!(secret.get("tls.key"), Some(&b"secret"[..]));
    }

    #[test]
    fn a_secret_keeps_the_positions_of_its_name_only() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  namespace: ns\n  name: cert\n  labels: {a: b}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: hello\n  tls.key: secret\n";
        let out = load_str("s.yaml", text);
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        let secret = &out.config.secrets[0];
        assert_eq!(secret.spec.get("tls.key"), Some(&b"secret"[..]));
        assert_eq!(secret.origin.position("metadata.name"), (5, 3));
        assert_eq!(secret.origin.position("metadata.namespace"), (4, 3));
        let NodeValue::Map(entries) = &secret.origin.tree().unwrap().value else {
            panic!("not a map");
        };
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["metadata"]);
        let NodeValue::Map(fields) = &entries[0].value.value else {
            panic!("not a map");
        };
        let keys: Vec<&str> = fields.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["namespace", "name"]);
    }

    #[test]
    fn schema_errors_are_positioned_with_hints() {
        let head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: s}\nspec:\n";
        let cases: &[(&str, &str)] = &[
            (
                "  hots: [a]\n",
                "t.yaml:5:3: error: VirtualService/s/r: spec.hots: unknown field `hots`; did you mean `hosts`?",
            ),
            (
                "  http:\n  - route:\n    - destination: {host: a}\n      wieght: 5\n",
                "t.yaml:8:7: error: VirtualService/s/r: spec.http[0].route[0].wieght: unknown field `wieght`; did you mean `weight`?",
            ),
            (
                "  export_to: [\".\"]\n",
                "t.yaml:5:3: error: VirtualService/s/r: spec.export_to: unknown field `export_to`; did you mean `exportTo`?",
            ),
            (
                "  http:\n  - match:\n    - uri: {exact: /a, prefix: /b}\n",
                "t.yaml:7:7: error: VirtualService/s/r: spec.http[0].match[0].uri: only one of `exact`, `prefix`, `regex` may be set, found `exact`, `prefix`",
            ),
            (
                "  http:\n  - redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}\n",
                "t.yaml:6:5: error: VirtualService/s/r: spec.http[0].redirect: only one of `port`, `derivePort` may be set, found `port`, `derivePort`",
            ),
            (
                "  http:\n  - timeout: 5\n",
                "t.yaml:6:5: error: VirtualService/s/r: spec.http[0].timeout: invalid type: integer `5`, expected a duration string such as 5s, 1.5s, 100ms or 1m30s",
            ),
            (
                "  http:\n  - timeout: 5 sec\n",
                "t.yaml:6:5: error: VirtualService/s/r: spec.http[0].timeout: duration `5 sec` has unknown unit ` sec` (use ns, us, ms, s, m or h)",
            ),
            (
                "  http:\n  - route:\n    - destination: {host: a, port: {number: \"80\"}}\n",
                "t.yaml:7:37: error: VirtualService/s/r: spec.http[0].route[0].destination.port.number: invalid type: string \"80\", expected an integer from 0 to 4294967295",
            ),
            (
                "  http:\n  - route:\n    - destination: {host: a, port: {number: 5000000000}}\n",
                "t.yaml:7:37: error: VirtualService/s/r: spec.http[0].route[0].destination.port.number: invalid value: integer `5000000000`, expected an integer from 0 to 4294967295",
            ),
            (
                "  http:\n  - route:\n    - weight: 99999999999999999999999\n",
                "t.yaml:7:15: error: integer `99999999999999999999999` is out of range",
            ),
            (
                "  hosts: a\n",
                "t.yaml:5:3: error: VirtualService/s/r: spec.hosts: invalid type: string \"a\", expected a sequence",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(one_diagnostic(&format!("{head}{spec}")), *want, "{spec}");
        }
    }

    #[test]
    fn enum_errors_name_the_valid_values() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec:\n  hosts: [a.com]\n  resolution: dns\n";
        assert_eq!(
            one_diagnostic(text),
            "t.yaml:6:3: error: ServiceEntry/default/e: spec.resolution: unknown Resolution `dns`; did you mean `DNS`?"
        );
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec:\n  resolution: 9\n";
        assert_eq!(
            one_diagnostic(text),
            "t.yaml:5:3: error: ServiceEntry/default/e: spec.resolution: Resolution has no value numbered 9; expected one of `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`"
        );
    }

    #[test]
    fn kinds_and_api_versions() {
        let cases: &[(&str, &str)] = &[
            (
                "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{to: [{operation: {method: [GET]}}]}]}\n",
                "t.yaml:4:35: error: AuthorizationPolicy/default/a: spec.rules[0].to[0].operation.method: unknown field `method`; did you mean `methods`?",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: a}\n",
                "t.yaml:2:1: warning: EnvoyFilter/default/a: kind: kind EnvoyFilter is not supported yet; ignored",
            ),
            (
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: a}\nspec:\n  tracing: [{randomSamplingPercentag: 5}]\n",
                "t.yaml:5:14: error: Telemetry/default/a: spec.tracing[0].randomSamplingPercentag: unknown field `randomSamplingPercentag`; did you mean `randomSamplingPercentage`?",
            ),
            (
                "apiVersion: telemetry.istio.io/v2\nkind: Telemetry\nmetadata: {name: a}\n",
                "t.yaml:1:1: error: Telemetry/default/a: apiVersion: Telemetry needs apiVersion telemetry.istio.io/v1 or v1alpha1, not `telemetry.istio.io/v2`",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\nspec: {egres: []}\n",
                "t.yaml:4:8: error: Sidecar/default/a: spec.egres: unknown field `egres`; did you mean `egress`?",
            ),
            (
                "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n",
                "t.yaml:1:1: error: PeerAuthentication/default/a: apiVersion: PeerAuthentication needs apiVersion security.istio.io/v1 or v1beta1, not `security.istio.io/v1alpha1`",
            ),
            (
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentcation\nmetadata: {name: a}\n",
                "t.yaml:2:1: error: PeerAuthentcation/default/a: kind: unknown kind `PeerAuthentcation` in security.istio.io; did you mean `PeerAuthentication`?",
            ),
            (
                "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: a}\n",
                "t.yaml:1:1: error: Gateway/default/a: apiVersion: Gateway needs apiVersion networking.istio.io/v1, v1beta1 or v1alpha3, not `networking.istio.io/v2`",
            ),
            (
                "apiVersion: v1\nkind: VirtualService\nmetadata: {name: a}\n",
                "t.yaml:1:1: error: VirtualService/default/a: apiVersion: VirtualService needs apiVersion networking.istio.io/v1, v1beta1 or v1alpha3, not `v1`",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: a}\n",
                "t.yaml:2:1: error: VirtualServce/default/a: kind: unknown kind `VirtualServce` in networking.istio.io; did you mean `VirtualService`?",
            ),
            (
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a}\n",
                "t.yaml:2:1: warning: Gateway/default/a: kind: kind Gateway (gateway.networking.k8s.io/v1) is not an Istio networking resource meshgate reads; ignored",
            ),
            (
                "kind: Gateway\nmetadata: {name: a}\n",
                "t.yaml:1:1: error: Gateway/default/a: apiVersion: missing or non-string `apiVersion`",
            ),
            (
                "- a\n- b\n",
                "t.yaml:1:1: error: a document must be a mapping with `apiVersion` and `kind`",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {namespace: x}\n",
                "t.yaml:3:1: error: Gateway/x/: metadata.name: `metadata.name` is required",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Gateway\n",
                "t.yaml:1:1: error: missing field `metadata`",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: \"!!\"}\n",
                "t.yaml:4:8: error: Secret/default/s: data.a: invalid base64: Invalid symbol 33, offset 0.",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(one_diagnostic(text), *want, "{text}");
        }
    }

    #[test]
    fn broken_documents_do_not_stop_the_others() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\n---\nkind: [\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: b}\n";
        let outcome = load_str("t.yaml", text);
        assert_eq!(outcome.config.gateways.len(), 2);
        assert_eq!(outcome.diagnostics.len(), 1, "{:?}", errors(&outcome));
        assert!(
            outcome.diagnostics[0]
                .message
                .starts_with("YAML syntax error")
        );
        assert_eq!(outcome.config.gateways[1].origin.line, 7);
    }

    #[test]
    fn lists_load_their_items() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: a}\n";
        let outcome = load_str("t.yaml", text);
        assert!(outcome.diagnostics.is_empty(), "{:?}", errors(&outcome));
        assert_eq!(outcome.config.gateways[0].origin.line, 4);
    }

    #[test]
    fn bad_bytes_never_panic_and_are_positioned() {
        let outcome = load_bytes("t.yaml", b"a: 1\nb: \xff\n");
        assert_eq!(
            errors(&outcome),
            ["t.yaml:2:4: error: invalid UTF-8 (byte 0xff); configuration files must be UTF-8"]
        );
        let cut = BOOKINFO.find("httpHeaderName").unwrap();
        let outcome = load_str("t.yaml", &BOOKINFO[..cut]);
        assert_eq!(outcome.config.gateways.len(), 1);
        assert_eq!(outcome.config.virtual_services.len(), 1);
        assert_eq!(outcome.diagnostics.len(), 1, "{:?}", errors(&outcome));
        assert!(
            outcome.diagnostics[0]
                .message
                .starts_with("YAML syntax error")
        );
        let huge = vec![b'#'; MAX_FILE_SIZE as usize + 1];
        assert_eq!(
            errors(&load_bytes("t.yaml", &huge)),
            ["t.yaml: error: file is larger than 16 MiB"]
        );
        let deep = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {}\n",
            "[".repeat(5000)
        );
        assert!(load_str("t.yaml", &deep).has_errors());
        let json = r#"{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "j"}}"#;
        let outcome = load_str("t.json", json);
        assert!(outcome.diagnostics.is_empty(), "{:?}", errors(&outcome));
        assert_eq!(outcome.config.gateways.len(), 1);
    }

    #[test]
    fn every_prefix_and_byte_flip_of_a_sample_loads_without_panicking() {
        let full = load_str("t.yaml", BOOKINFO).config.len();
        let bytes = BOOKINFO.as_bytes();
        for cut in (0..bytes.len()).step_by(3) {
            let outcome = load_bytes("t.yaml", &bytes[..cut]);
            let _ = crate::config::validate(&outcome.config);
            assert!(outcome.config.len() <= full, "prefix {cut}");
        }
        for (i, flip) in (0..bytes.len()).step_by(5).zip(
            [b'{', b'[', b':', b'-', b'&', b'*', b'!', b'"', 0xff]
                .iter()
                .cycle(),
        ) {
            let mut mutated = bytes.to_vec();
            mutated[i] = *flip;
            let outcome = load_bytes("t.yaml", &mutated);
            let _ = crate::config::validate(&outcome.config);
            assert!(outcome.config.len() <= full + 1, "flip at {i}");
        }
    }

    #[test]
    fn directories_load_sorted_and_skip_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let gw = |name: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\n"
            )
        };
        std::fs::create_dir_all(dir.path().join("b/nested")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        std::fs::write(dir.path().join("b/nested/z.yml"), gw("third")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), gw("first")).unwrap();
        std::fs::write(dir.path().join("b/a.json"), gw("second")).unwrap();
        std::fs::write(dir.path().join(".hidden/x.yaml"), gw("hidden")).unwrap();
        std::fs::write(dir.path().join(".dot.yaml"), gw("hidden")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let outcome = load(dir.path());
        assert!(outcome.diagnostics.is_empty(), "{:?}", errors(&outcome));
        let names: Vec<&str> = outcome
            .config
            .gateways
            .iter()
            .map(|g| g.meta.name.as_str())
            .collect();
        assert_eq!(names, ["first", "second", "third"]);
        let missing = load(&dir.path().join("nope"));
        assert_eq!(missing.diagnostics.len(), 1);
        assert!(missing.diagnostics[0].message.starts_with("cannot read"));
    }
}
