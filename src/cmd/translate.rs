//! `meshgate translate`: Istio configuration -> the Envoy resources of one gateway,
//! written as files a stock Envoy runs from (`envoy -c OUTDIR/envoy.yaml`), or printed
//! in Envoy's config_dump shape.
//!
//! Exit codes: 0 translated, 1 the configuration has errors, 2 could not run.
use clap::ValueEnum;
use meshgate::config::Diagnostic;
use meshgate::pipeline;
use meshgate::translate::envoy_files;
use meshgate::xds::{ProxyIdentity, TypeUrl, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Files for Envoy under `--out`: a bootstrap plus filesystem xDS subscriptions.
    Envoy,
    /// The resources in Envoy's admin `/config_dump` shape, on stdout.
    Json,
}

/// Arguments of `meshgate translate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A YAML/JSON file, or a directory searched recursively for .yaml, .yml and .json files.
    #[arg(long)]
    pub config: PathBuf,
    /// Labels of the gateway workload, matched against Gateway selectors.
    #[arg(long, default_value = "istio=ingressgateway")]
    pub labels: String,
    /// Namespace of the gateway workload (default: that of the Gateways selecting it).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Directory to write the Envoy files to (created if missing).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Port of Envoy's admin API on 127.0.0.1, written into the bootstrap.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// What to produce.
    #[arg(long, value_enum, default_value_t = Format::Envoy)]
    pub format: Format,
    /// The gateway's mesh identity for ISTIO_MUTUAL, in Istio's file-mounted layout on
    /// Envoy's host (`cert-chain.pem`, `key.pem`, `root-cert.pem`): written as the SDS
    /// secrets `default` and `ROOTCA`. Without it, Envoy files that need mesh mTLS are
    /// refused (Envoy would have no certificate to present).
    #[arg(long, value_name = "DIR")]
    pub mesh_certs: Option<PathBuf>,
    /// Istio MeshConfig (YAML): mesh-wide settings translation follows (`trustDomain`,
    /// `enableAutoMtls`, `connectTimeout`), as the control plane and the gateway read it.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// The gateway's own ProxyConfig (YAML or JSON, what Istio's `proxy.istio.io/config`
    /// annotation holds), laid over --mesh-config's `defaultConfig` (`gatewayTopology`).
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> ExitCode {
    if let Err(e) = std::fs::metadata(&args.config) {
        eprintln!(
            "meshgate translate: cannot read {}: {e}",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    if args.format == Format::Envoy && args.out.is_none() {
        eprintln!(
            "meshgate translate: --out DIR is needed to write Envoy files (or use --format json)"
        );
        return ExitCode::from(2);
    }
    let labels = match ProxyIdentity::parse_labels(&args.labels) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshgate translate: --labels: {e}");
            return ExitCode::from(2);
        }
    };

    // The files a gateway reads (certificates) may live on Envoy's host, not this one:
    // they are named, not read.
    let mesh = match args
        .mesh_config
        .as_deref()
        .map(meshgate::config::mesh::load_mesh_config)
    {
        None => Default::default(),
        Some(Ok(mesh)) => std::sync::Arc::new(mesh),
        Some(Err(errors)) => {
            for d in &errors {
                eprintln!("{d}");
            }
            eprintln!("meshgate translate: --mesh-config: the mesh configuration is refused");
            return ExitCode::from(1);
        }
    };
    let mesh = match args
        .proxy_config
        .as_deref()
        .map(meshgate::config::mesh::load_proxy_config)
    {
        None => mesh,
        Some(Ok(pc)) => std::sync::Arc::new(mesh.with_proxy_config(&pc)),
        Some(Err(errors)) => {
            for d in &errors {
                eprintln!("{d}");
            }
            eprintln!("meshgate translate: --proxy-config: the proxy configuration is refused");
            return ExitCode::from(1);
        }
    };
    let options = pipeline::Options {
        secret_material: false,
        mesh,
        ..pipeline::Options::gateway(labels, args.namespace.clone())
    };
    let mut report = pipeline::run(&args.config, &options);
    print_diagnostics(&mut report.diagnostics);
    let Some((proxy, set)) = report.translation.take() else {
        let errors = report.errors().count();
        eprintln!("meshgate translate: {errors} error(s) in the configuration; nothing translated");
        return ExitCode::from(1);
    };
    let mut set = set;
    match &args.mesh_certs {
        Some(dir) => {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            set.secrets
                .extend(pipeline::mesh_identity::mesh_cert_secrets(&dir));
            set.sort();
        }
        None if args.out.is_some() => {
            let mut needs = pipeline::mesh_identity::needs_mesh_identity(
                &report.config,
                &set,
                "give `--mesh-certs DIR` (cert-chain.pem, key.pem, root-cert.pem)",
            );
            if !needs.is_empty() {
                print_diagnostics(&mut needs);
                eprintln!(
                    "meshgate translate: {} error(s): mesh mTLS needs the gateway's mesh identity; nothing written",
                    needs.len()
                );
                return ExitCode::from(1);
            }
        }
        None => {}
    }
    let set = &set;
    if set.listeners.is_empty() {
        eprintln!(
            "meshgate translate: warning: no Gateway server selects labels {{{}}}; Envoy will have no listener",
            args.labels
        );
    }

    if let Some(out) = &args.out {
        match write_files(set, &proxy, out, args.admin_port) {
            Ok(dir) => eprintln!(
                "meshgate translate: {} listener(s), {} route table(s), {} cluster(s), {} endpoint set(s), {} secret(s) written to {}\n  run: envoy -c {}",
                set.listeners.len(),
                set.routes.len(),
                set.clusters.len(),
                set.endpoints.len(),
                set.secrets.len(),
                dir.display(),
                dir.join(envoy_files::BOOTSTRAP).display()
            ),
            Err(e) => {
                eprintln!("meshgate translate: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.format == Format::Json {
        let dump = match json::config_dump(set, "1") {
            Ok(d) => envoy_files::canonical(d),
            Err(e) => {
                eprintln!("meshgate translate: cannot render JSON: {e}");
                return ExitCode::from(2);
            }
        };
        let text = serde_json::to_string_pretty(&dump).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{text}").is_err() {
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn print_diagnostics(diagnostics: &mut [Diagnostic]) {
    Diagnostic::sort(diagnostics);
    for d in diagnostics.iter() {
        eprintln!("{d}");
    }
}

/// Writes every file atomically (temporary file + rename in the same directory, so a
/// running Envoy never reads a half-written file), the per-resource files before the
/// listener and cluster files that name them, then removes files of resources that are
/// gone (and the per-secret `sds/` files of earlier layouts). Returns the absolute
/// output directory.
fn write_files(
    set: &meshgate::xds::ResourceSet,
    proxy: &ProxyIdentity,
    out: &Path,
    admin_port: u16,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let dir =
        std::fs::canonicalize(out).map_err(|e| format!("cannot resolve {}: {e}", out.display()))?;
    let files = envoy_files::envoy_files(set, proxy, &dir, admin_port)
        .map_err(|e| format!("cannot render Envoy resources: {e}"))?;
    let mut written: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &files {
        let path = dir.join(&f.path);
        // Listener and cluster files may hold private keys inline: owner only.
        let private = envoy_files::holds_secrets(set)
            && (f.path == Path::new("lds.yaml") || f.path == Path::new("cds.yaml"));
        write_atomically(&path, f.contents.as_bytes(), private)?;
        written.insert(path);
    }
    for ty in [TypeUrl::Route, TypeUrl::Endpoint, TypeUrl::Secret] {
        let sub = dir.join(ty.short());
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") && !written.contains(&path) {
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
            }
        }
    }
    Ok(dir)
}

fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<(), String> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        // Unchanged: leave the file alone so Envoy sees no update.
        return Ok(());
    }
    let parent = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(contents)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}
