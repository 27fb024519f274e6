//! `meshgate bootstrap envoy`: the Envoy bootstrap of a proxy managed by meshgate's
//! control plane (what Istio's pilot-agent writes before starting Envoy).
//! `meshgate bootstrap grpc`: the xDS bootstrap file of a proxyless gRPC client (what
//! the agent writes to `GRPC_XDS_BOOTSTRAP`).
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use meshgate::config::mesh::load_proxy_config;
use meshgate::controlplane::bootstrap::{EnvoyBootstrap, GrpcBootstrap, XdsTlsFiles};
use meshgate::xds::{ProxyIdentity, ProxyKind};
use std::path::PathBuf;
use std::process::ExitCode;

/// `meshgate bootstrap ...`
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum Target {
    /// Print (or write) the bootstrap for an Envoy proxy.
    Envoy(EnvoyArgs),
    /// Print (or write) the xDS bootstrap file of a proxyless gRPC client (point
    /// GRPC_XDS_BOOTSTRAP at it and dial xds:///HOST:PORT).
    Grpc(GrpcArgs),
}

#[derive(ClapArgs, Debug)]
struct GrpcArgs {
    /// The control plane's plain-text xDS address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    /// Node id: Istio's sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local, or a pod
    /// name that is expanded into it.
    #[arg(long, default_value = "grpc-client")]
    node_id: String,
    /// Workload labels, k=v,k2=v2 (matched against sourceLabels and workloadSelectors).
    #[arg(long, default_value = "")]
    labels: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Workload IP when --node-id is a plain name.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Router,
    Sidecar,
}

#[derive(ClapArgs, Debug)]
struct EnvoyArgs {
    /// The control plane's xDS address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    /// Node id: Istio's TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local, or a pod name
    /// that is expanded into it.
    #[arg(long, default_value = "meshgate-gateway")]
    node_id: String,
    /// Workload labels, k=v,k2=v2 (matched against Gateway selectors).
    #[arg(long, default_value = "istio=ingressgateway")]
    labels: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Proxy type when --node-id is a plain name.
    #[arg(long, value_enum, default_value_t = Kind::Router)]
    kind: Kind,
    /// Workload IP when --node-id is a plain name.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Incremental xDS (the default).
    #[arg(long, conflicts_with = "sotw")]
    delta: bool,
    /// State-of-the-world xDS.
    #[arg(long)]
    sotw: bool,
    /// Envoy's admin port (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// `node.cluster` (defaults to istio-ingressgateway.NAMESPACE for gateways).
    #[arg(long)]
    cluster: Option<String>,
    /// Reach the control plane over TLS (its 15012 port), verifying it with this mesh
    /// root (the CA directory's root-cert.pem).
    #[arg(long)]
    xds_root_cert: Option<PathBuf>,
    /// The proxy's certificate chain from the mesh CA, for mutual TLS (with --xds-key).
    #[arg(long, requires_all = ["xds_key", "xds_root_cert"])]
    xds_cert_chain: Option<PathBuf>,
    /// The key of that certificate.
    #[arg(long, requires = "xds_cert_chain")]
    xds_key: Option<PathBuf>,
    /// The name the control plane's certificate must carry.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    xds_server_name: String,
    /// The proxy's own ProxyConfig (YAML or JSON, what Istio's `proxy.istio.io/config`
    /// annotation holds), sent as the `PROXY_CONFIG` node metadata: the control plane
    /// translates for this gateway with its `gatewayTopology`.
    #[arg(long, value_name = "FILE")]
    proxy_config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let a = match args.target {
        Target::Envoy(a) => a,
        Target::Grpc(a) => return run_grpc(a),
    };
    let labels = match ProxyIdentity::parse_labels(&a.labels) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshgate bootstrap: --labels: {e}");
            return ExitCode::from(2);
        }
    };
    let proxy_config = match a.proxy_config.as_deref().map(load_proxy_config) {
        None => None,
        Some(Ok(pc)) => Some(pc.document),
        Some(Err(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("meshgate bootstrap: --proxy-config: the proxy configuration is refused");
            return ExitCode::from(2);
        }
    };
    let b = EnvoyBootstrap {
        proxy_config,
        xds_address: a.xds,
        node_id: a.node_id,
        kind: match a.kind {
            Kind::Router => ProxyKind::Router,
            Kind::Sidecar => ProxyKind::Sidecar,
        },
        namespace: a.namespace,
        labels,
        ip: a.ip,
        delta: !a.sotw,
        admin_port: a.admin_port,
        cluster: a.cluster,
        xds_tls: a.xds_root_cert.map(|root_cert| XdsTlsFiles {
            root_cert,
            cert_chain: a.xds_cert_chain,
            private_key: a.xds_key,
            agent_certificate: false,
            server_name: a.xds_server_name,
        }),
        ..Default::default()
    };
    let text = match a.format {
        Format::Yaml => b.to_yaml(),
        Format::Json => b
            .to_json()
            .map(|j| serde_json::to_string_pretty(&j).unwrap_or_default() + "\n"),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meshgate bootstrap: {e}");
            return ExitCode::from(2);
        }
    };
    write_out(a.out, text)
}

fn run_grpc(a: GrpcArgs) -> ExitCode {
    let labels = match ProxyIdentity::parse_labels(&a.labels) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshgate bootstrap: --labels: {e}");
            return ExitCode::from(2);
        }
    };
    let b = GrpcBootstrap {
        xds_address: a.xds,
        node_id: a.node_id,
        namespace: a.namespace,
        labels,
        ip: a.ip,
        ..Default::default()
    };
    match b.to_json() {
        Ok(j) => write_out(
            a.out,
            serde_json::to_string_pretty(&j).unwrap_or_default() + "\n",
        ),
        Err(e) => {
            eprintln!("meshgate bootstrap: {e}");
            ExitCode::from(2)
        }
    }
}

fn write_out(out: Option<PathBuf>, text: String) -> ExitCode {
    match out {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("meshgate bootstrap: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}
