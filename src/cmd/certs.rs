//! `meshgate certs dev`: a local development CA and leaf certificates (the mkcert
//! experience), optionally as a Kubernetes Secret for `credentialName` examples.
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use meshgate::tls::dev::{DevCa, file_stem, kubernetes_secret_yaml, write_private, write_public};
use std::path::PathBuf;
use std::process::ExitCode;

/// Prints a line; a closed stdout (e.g. `| head`) is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a local CA (once) and ECDSA P-256 leaf certificates for development.
    Dev(DevArgs),
}

#[derive(Args)]
pub struct DevArgs {
    /// Host names (comma-separated; `*.example.com` wildcards and IP addresses allowed).
    #[arg(long, value_delimiter = ',', required = true)]
    pub hosts: Vec<String>,
    /// Where the leaf certificates and keys are written.
    #[arg(long, default_value = "certs/dev")]
    pub out: PathBuf,
    /// Where the CA lives (created if missing, reused otherwise).
    /// Default: $MESHGATE_CA_DIR, else $XDG_DATA_HOME/meshgate/dev-ca, else ~/.local/share/meshgate/dev-ca.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Validity of the leaf certificates in days.
    #[arg(long, default_value_t = 825)]
    pub days: i64,
    /// Also write a Kubernetes `kind: Secret` (tls.crt, tls.key, ca.crt) with this name,
    /// for a Gateway's `credentialName`; its certificate covers every host.
    #[arg(long)]
    pub secret: Option<String>,
    /// Namespace of that Secret (the gateway's namespace).
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
}

fn default_ca_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHGATE_CA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("meshgate/dev-ca");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/meshgate/dev-ca")
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Dev(dev) => run_dev(dev),
    }
}

fn run_dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        bail!("--hosts names no host");
    }
    if args.days <= 0 {
        bail!("--days must be positive");
    }
    let ca_dir = args.ca_dir.unwrap_or_else(default_ca_dir);
    let (ca, created) =
        DevCa::load_or_create(&ca_dir).with_context(|| format!("CA in {}", ca_dir.display()))?;
    if created {
        say!("created a new development CA in {}", ca_dir.display());
    } else {
        say!("using the development CA in {}", ca_dir.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ca_copy = args.out.join("ca.crt");
    write_public(&ca_copy, ca.cert_pem.as_bytes())?;
    for host in &hosts {
        let (cert, key) = ca.issue(&[host.as_str()], args.days)?;
        let stem = file_stem(host);
        let cert_path = args.out.join(format!("{stem}.crt"));
        let key_path = args.out.join(format!("{stem}.key"));
        write_public(&cert_path, cert.as_bytes())?;
        write_private(&key_path, key.as_bytes())?;
        say!(
            "wrote {} and {} (key 0600) for {host}",
            cert_path.display(),
            key_path.display()
        );
    }
    if let Some(name) = &args.secret {
        let all: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let (cert, key) = ca.issue(&all, args.days)?;
        let path = args.out.join(format!("{name}.secret.yaml"));
        let yaml = kubernetes_secret_yaml(name, &args.namespace, &cert, &key, Some(&ca.cert_pem));
        write_private(&path, yaml.as_bytes())?;
        say!(
            "wrote {} (kind: Secret {}/{name}; holds the private key, mode 0600): use `credentialName: {name}`",
            path.display(),
            args.namespace
        );
    }
    say!(
        "the CA certificate is {} (copy: {})",
        ca.cert_path.display(),
        ca_copy.display()
    );
    let host = hosts[0].replace("*.", "www.");
    say!("trust it per request, e.g.:");
    say!(
        "  curl --cacert {} --resolve {host}:8443:127.0.0.1 https://{host}:8443/",
        ca_copy.display()
    );
    Ok(ExitCode::SUCCESS)
}
