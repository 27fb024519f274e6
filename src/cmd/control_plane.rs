//! `meshgate control-plane`: serves the Istio configuration at PATH over xDS (ADS and
//! SDS) to Envoy proxies and meshgate gateways, with debug and metrics endpoints.
use clap::Args as ClapArgs;
use meshgate::controlplane::config_source::ConfigSource;
use meshgate::controlplane::{ControlPlane, Debounce, Options, debug};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `meshgate control-plane`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Istio configuration: a YAML/JSON file or a directory of them (watched).
    #[arg(long)]
    config: PathBuf,
    /// Where to serve xDS (ADS, SDS), plaintext gRPC.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Where to serve /ready, /debug/syncz, /debug/config_dump and /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_addr: SocketAddr,
    /// Quiet time that ends a burst of changes before a push, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_after_ms: u64,
    /// Longest a burst of changes can delay a push, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    debounce_max_ms: u64,
    /// Largest xDS request accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_recv_message_size: usize,
}

pub fn run(args: Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate control-plane: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let source = match ConfigSource::load(&args.config) {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            for d in &errors {
                eprintln!("{d}");
            }
            eprintln!(
                "meshgate control-plane: {} has {} error(s); not starting",
                args.config.display(),
                errors.len()
            );
            return ExitCode::from(1);
        }
    };
    // The debounce below merges bursts of changes; the watch only waits for an editor's
    // writes to end.
    let _watch = source.watch(Duration::from_millis(20));
    let options = Options {
        debounce: Debounce {
            after: Duration::from_millis(args.debounce_after_ms),
            max: Duration::from_millis(args.debounce_max_ms),
        },
        max_recv_message_size: args.max_recv_message_size,
        ..Options::default()
    };
    let cp = ControlPlane::new(source, options);
    let debug_listener = match debug::bind(args.debug_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(debug::serve(
        cp.clone(),
        debug_listener,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(xds = %args.xds_addr, debug = %args.debug_addr, config = %args.config.display(), "control plane serving");
    match cp.bind_and_serve(args.xds_addr, stopped(stop_rx)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate control-plane: {e}");
            ExitCode::from(2)
        }
    }
}
