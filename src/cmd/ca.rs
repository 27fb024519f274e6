//! `meshgate ca rotate-root`: the three steps of a root rotation of a self-signed CA
//! directory, for a control plane that takes the changes up without a restart.
use clap::{Args, Subcommand, ValueEnum};
use meshgate::ca::authority::rotation;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// One step of a root rotation (wait after each until every proxy has the pushed
    /// secrets).
    RotateRoot(RotateArgs),
}

/// The steps, in order.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Step {
    /// Make a new root and add it to root-cert.pem: proxies trust both, the old key signs.
    Add,
    /// The new root's key signs: every proxy gets a certificate of the new root.
    Sign,
    /// Remove the old root from root-cert.pem.
    Retire,
}

#[derive(Args)]
pub struct RotateArgs {
    /// The control plane's CA directory (self-signed layout).
    #[arg(long)]
    pub ca_dir: PathBuf,
    #[arg(long, value_enum)]
    pub step: Step,
    /// The trust domain the new root names (`O=`), as given to the control plane.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

pub fn run(args: CaArgs) -> ExitCode {
    let CaCommand::RotateRoot(a) = args.command;
    let done = match a.step {
        Step::Add => rotation::add_root(&a.ca_dir, &a.trust_domain)
            .map(|_| "added a new root to root-cert.pem; the current key still signs".to_string()),
        Step::Sign => rotation::sign_with_new_root(&a.ca_dir)
            .map(|()| "the new root's key signs from now on".to_string()),
        Step::Retire => rotation::retire_old_roots(&a.ca_dir)
            .map(|n| format!("removed {n} old root(s) from root-cert.pem")),
    };
    match done {
        Ok(message) => {
            eprintln!("meshgate ca rotate-root: {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate ca rotate-root: {e}");
            ExitCode::from(1)
        }
    }
}
