//! `meshgate token create`: a single-use join token that entitles its bearer to one
//! SPIFFE identity's certificate from the control plane's CA (see `ca::token`).
use clap::{Args, Subcommand};
use meshgate::ca::SpiffeId;
use meshgate::ca::token::create_token;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a join token for spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The control plane's CA directory (its `token-key` signs the token; made if
    /// missing).
    #[arg(long)]
    pub ca_dir: PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// How long the token may be used (Go duration: 30m, 1h, 24h; at most 720h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The trust domain, as given to the control plane.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

/// Parses a Go-style duration flag (`30s`, `1h`, `24h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    meshgate::config::duration::Duration::parse(s)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

pub fn run(args: TokenArgs) -> ExitCode {
    match args.command {
        TokenCommand::Create(a) => {
            let id = match SpiffeId::new(&a.trust_domain, &a.namespace, &a.service_account) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("meshgate token create: {e}");
                    return ExitCode::from(2);
                }
            };
            match create_token(&a.ca_dir, &id, a.ttl) {
                Ok(token) => {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stdout(), "{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshgate token create: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
