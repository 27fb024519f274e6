//! The `meshgate` binary: one subcommand per job, each in `cmd/`.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Service-mesh gateway and control plane, configured with Istio resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version.
    Version,
    /// Write the bootstrap of a proxy that joins meshgate's control plane.
    Bootstrap(cmd::bootstrap::Args),
    /// Serve Istio configuration over xDS (ADS, SDS) to Envoy proxies and gateways.
    ControlPlane(cmd::control_plane::Args),
    /// Join tokens for the control plane's CA (`token create --namespace NS --service-account SA`).
    Token(cmd::token::TokenArgs),
    /// The mesh CA's directory (`ca rotate-root --step add|sign|retire`).
    Ca(cmd::ca::CaArgs),
    /// Certificates for development (`certs dev --hosts ...`).
    Certs(cmd::certs::CertsArgs),
    /// Check Istio configuration files and print one line per problem.
    Validate(cmd::validate::Args),
    /// Translate Istio configuration into Envoy resources for one gateway.
    Translate(cmd::translate::Args),
    /// Why a request gets its answer: the listener, filter chain, route, policies,
    /// cluster and endpoints it goes through (`explain --config DIR 'GET https://host/'`).
    Explain(Box<cmd::explain::Args>),
    /// Run the gateway (meshgate's own data plane).
    Gateway(Box<cmd::gateway::GatewayArgs>),
    /// Redirect this network namespace's TCP traffic to a sidecar (istio-iptables' job).
    Iptables(cmd::iptables::Args),
    /// Run Envoy for one pod as Istio's pilot-agent does: bootstrap, workload certificate
    /// over SDS, restarts, readiness, drain (`agent [FLAGS] -- envoy [ARGS]`).
    Agent(cmd::agent::Args),
    /// Add Istio's sidecar (istio-init, istio-proxy) to Kubernetes workloads (kube-inject).
    Inject(cmd::inject::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("meshgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Bootstrap(args) => cmd::bootstrap::run(args),
        Command::ControlPlane(args) => cmd::control_plane::run(args),
        Command::Certs(args) => match cmd::certs::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("meshgate certs: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Token(args) => cmd::token::run(args),
        Command::Ca(args) => cmd::ca::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Translate(args) => cmd::translate::run(args),
        Command::Explain(args) => cmd::explain::run(*args),
        Command::Gateway(args) => cmd::gateway::run(*args),
        Command::Iptables(args) => cmd::iptables::run(args),
        Command::Inject(args) => cmd::inject::run(args),
        Command::Agent(args) => cmd::agent::run(args),
    }
}
