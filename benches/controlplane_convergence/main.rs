//! Control-plane convergence benchmark (not a test): N simulated Envoy gateways on ADS
//! against `meshgate control-plane` serving a generated configuration of M services.
//!
//!     cargo bench --bench controlplane_convergence -- --proxies 1000 --services 1000
//!         [--conns 64] [--rounds 3] [--sotw] [--quiet-ms 1000]
//!     cargo bench --bench controlplane_convergence -- --services 1000 --write-config DIR [--mesh-routes]
//!
//! The control plane is the product's binary (Cargo builds it with the benchmark) run as
//! a child process on a directory this benchmark writes (see `mesh.rs`), so its CPU and
//! memory are read from /proc for it alone. The proxies (see `envoy.rs`) run here and
//! share the machine's cores with it, as a load generator must.
//!
//! Measured: the initial sync (every proxy has CDS and LDS ACKed and every endpoint and
//! route name it subscribed to); then, per change (one service's VirtualService file
//! rewritten with new weights, as an operator edits it), the time from the write until
//! each proxy ACKed the first response that changed a resource; the responses per type
//! and proxy in each phase; the control plane's CPU time and peak RSS.
//!
//! `--write-config DIR` only writes the configuration, for running another load tool
//! against the same files; with `--mesh-routes` the VirtualServices are bound to `mesh`
//! for the services' own hosts, which is what sidecars receive. `BENCH_LOG` sets the control plane's log filter (`warn`);
//! `BENCH_SERVER_WRAPPER="heaptrack -o FILE"` runs it under a tool.
mod control_plane;
mod envoy;
mod mesh;

use control_plane::ControlPlaneProcess;
use envoy::{Recorder, TYPE_NAMES};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

// Envoy links tcmalloc; decoding responses with glibc's malloc cost the simulated proxies
// three times the CPU (most of it in malloc), which the control plane's figures then
// carried, as both share the machine's cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The service whose VirtualService the changes rewrite.
const CHANGED_SERVICE: usize = 0;

#[derive(Debug, Clone)]
struct Args {
    proxies: usize,
    services: usize,
    conns: usize,
    rounds: usize,
    sotw: bool,
    /// Quiet time that ends a phase (no response to any proxy for this long).
    quiet: Duration,
    write_config: Option<PathBuf>,
    /// With `--write-config`: VirtualServices bound to `mesh` (for sidecar clients).
    mesh_routes: bool,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    bench: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        proxies: 1000,
        services: 1000,
        conns: 64,
        rounds: 3,
        sotw: false,
        quiet: Duration::from_millis(1000),
        write_config: None,
        mesh_routes: false,
        bench: false,
    };
    let mut unknown = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let mut number = || -> Result<usize, String> {
            let v = value()?;
            v.parse().map_err(|_| format!("{arg}: not a number: {v}"))
        };
        match arg.as_str() {
            "--proxies" => a.proxies = number()?.max(1),
            "--services" => a.services = number()?.max(1),
            "--conns" => a.conns = number()?.max(1),
            "--rounds" => a.rounds = number()?,
            "--quiet-ms" => a.quiet = Duration::from_millis(number()? as u64),
            "--sotw" => a.sotw = true,
            "--write-config" => a.write_config = Some(value()?.into()),
            "--mesh-routes" => a.mesh_routes = true,
            "--bench" => a.bench = true,
            // A harness's name filter (`cargo bench NAME`, `cargo test -- NAME`).
            other if !other.starts_with('-') => {}
            other => unknown.push(other.to_string()),
        }
    }
    // `cargo test -- --nocapture` and the like reach every target: only a benchmark
    // run refuses what it does not know.
    if a.bench && !unknown.is_empty() {
        return Err(format!("unknown argument(s): {}", unknown.join(" ")));
    }
    a.conns = a.conns.min(a.proxies);
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("controlplane_convergence: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.write_config {
        let binding = if args.mesh_routes {
            mesh::Binding::Mesh
        } else {
            mesh::Binding::Gateway
        };
        return match std::fs::create_dir_all(dir)
            .and_then(|_| mesh::write_bound(dir, args.services, binding))
        {
            Ok(()) => {
                println!(
                    "wrote a gateway and {} services to {}; change n rewrites {} with v1 weight 80 (n odd) or 90 (n even)",
                    args.services,
                    dir.display(),
                    mesh::service_path(dir, CHANGED_SERVICE).display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("controlplane_convergence: writing {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let runs = if args.bench {
        vec![args]
    } else {
        // Started by `cargo test --all-targets`: a benchmark is not a test, but a tiny
        // run in both protocols keeps it from rotting.
        println!(
            "controlplane_convergence: a benchmark (`cargo bench --bench controlplane_convergence`); a tiny run:"
        );
        let tiny = Args {
            proxies: 3,
            services: 4,
            conns: 2,
            rounds: 2,
            quiet: Duration::from_millis(200),
            ..args
        };
        vec![tiny.clone(), Args { sotw: true, ..tiny }]
    };
    for args in &runs {
        if let Err(e) = run(args) {
            eprintln!("controlplane_convergence: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Latencies of one phase: per proxy, `None` for those that did not get there.
struct Latencies {
    done: usize,
    total: usize,
    p50: f64,
    p90: f64,
    max: f64,
}

impl Latencies {
    fn of(times: &[Option<Duration>]) -> Latencies {
        let mut v: Vec<f64> = times.iter().flatten().map(|d| d.as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let pct = |q: f64| match v.len() {
            0 => f64::NAN,
            n => v[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
        };
        Latencies {
            done: v.len(),
            total: times.len(),
            p50: pct(0.5),
            p90: pct(0.9),
            max: pct(1.0),
        }
    }

    fn complete(&self) -> bool {
        self.done == self.total
    }
}

/// Responses per proxy and type in one phase: mean and max over the proxies, and the
/// mean bytes of resources.
struct Responses {
    mean: [f64; 4],
    max: [u32; 4],
    bytes: [f64; 4],
}

impl Responses {
    fn of((per_proxy, bytes): (Vec<[u32; 4]>, [u64; 4])) -> Responses {
        let n = per_proxy.len().max(1) as f64;
        Responses {
            mean: std::array::from_fn(|t| per_proxy.iter().map(|r| r[t] as f64).sum::<f64>() / n),
            max: std::array::from_fn(|t| per_proxy.iter().map(|r| r[t]).max().unwrap_or(0)),
            bytes: std::array::from_fn(|t| bytes[t] as f64 / n),
        }
    }

    /// Mean KiB of resources per proxy, per type that had any.
    fn show_bytes(&self) -> String {
        (0..4)
            .filter(|&t| self.bytes[t] > 0.0)
            .map(|t| format!("{} {:.0} KiB", TYPE_NAMES[t], self.bytes[t] / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn show(&self) -> String {
        (0..4)
            .map(|t| {
                let mean = self.mean[t];
                if mean == self.max[t] as f64 {
                    format!("{} {}", TYPE_NAMES[t], self.max[t])
                } else {
                    format!("{} {mean:.2} (max {})", TYPE_NAMES[t], self.max[t])
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One change round's figures.
struct Round {
    latencies: Latencies,
    responses: Responses,
    /// The control plane's CPU time from the change to the end of the phase.
    cpu: f64,
    /// The simulated proxies' (this process's) CPU time in the same span.
    own_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run(args: &Args) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("meshgate-cp-bench")
        .tempdir()
        .map_err(|e| format!("making a scratch directory: {e}"))?;
    mesh::write(dir.path(), args.services)
        .map_err(|e| format!("writing the configuration: {e}"))?;
    let wrapper = std::env::var("BENCH_SERVER_WRAPPER").ok();
    let mut cp = ControlPlaneProcess::start(dir.path(), wrapper.as_deref())?;
    let ready_after = cp.wait_ready(Duration::from_secs(300))?;
    let mode = if args.sotw {
        "state-of-the-world"
    } else {
        "delta"
    };
    println!(
        "meshgate control-plane ({}): {} {mode} ADS proxies on {} connections, {} services, {} changes",
        control_plane::meshgate_binary().display(),
        args.proxies,
        args.conns,
        args.services,
        args.rounds
    );
    println!(
        "control plane ready after {:.2} s (CPU {:.2} s, RSS {:.0} MiB)",
        ready_after.as_secs_f64(),
        cp.cpu_seconds(),
        cp.memory_mib("VmRSS")
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let outcome = runtime.block_on(measure(args, &mut cp, dir.path()));
    let peak = cp.memory_mib("VmHWM");
    let cpu_total = cp.cpu_seconds();
    cp.stop();
    runtime.shutdown_background();
    let (rec, failed) = outcome?;
    println!(
        "control plane: CPU {cpu_total:.2} s in all, peak RSS (VmHWM) {peak:.0} MiB; stream errors {}, undecodable resources {}{}",
        rec.stream_errors.load(std::sync::atomic::Ordering::Relaxed),
        rec.decode_errors.load(std::sync::atomic::Ordering::Relaxed),
        rec.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    match failed {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Waits until `done` holds, the control plane exits or `timeout` passes.
async fn wait_until(
    cp: &mut ControlPlaneProcess,
    timeout: Duration,
    done: impl Fn() -> bool,
) -> Result<bool, String> {
    let start = Instant::now();
    while !done() {
        if !cp.running() {
            return Err("the control plane exited".into());
        }
        if start.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(true)
}

/// Waits until no proxy has received anything for `quiet` (at most a minute), so that a
/// phase's late responses are counted in it.
async fn settle(rec: &Recorder, quiet: Duration) {
    let start = Instant::now();
    while rec.quiet_for() < quiet && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects the proxies, syncs them, makes the changes and prints the figures. Returns
/// the recorder and, if a phase did not complete, why.
async fn measure(
    args: &Args,
    cp: &mut ControlPlaneProcess,
    dir: &std::path::Path,
) -> Result<(Arc<Recorder>, Option<String>), String> {
    // HTTP/2 windows as Envoy's defaults (256 MiB), so that flow control is not the
    // client's bottleneck here more than it is Envoy's.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(256 << 20)
        .initial_connection_window_size(256 << 20);
    let mut channels = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("connecting to {}: {e}", cp.xds))?,
        );
    }
    let rec = Arc::new(Recorder::new(args.proxies));
    let start = rec.now();
    let cpu_start = cp.cpu_seconds();
    let own_cpu_start = control_plane::cpu_seconds("self");
    for i in 0..args.proxies {
        tokio::spawn(envoy::run(
            i,
            channels[i % args.conns].clone(),
            args.sotw,
            rec.clone(),
        ));
    }
    let synced = wait_until(cp, Duration::from_secs(600), || {
        rec.synced_count() == args.proxies
    })
    .await?;
    let sync = Latencies::of(&rec.sync_times(start));
    let sync_cpu = cp.cpu_seconds() - cpu_start;
    let own_sync_cpu = control_plane::cpu_seconds("self") - own_cpu_start;
    let sync_rss = cp.memory_mib("VmRSS");
    settle(&rec, args.quiet).await;
    let sync_responses = Responses::of(rec.take_responses());
    println!(
        "initial sync: {}/{} proxies, p50 {:.2} s, max {:.2} s; control plane CPU {:.2} s, RSS {:.0} MiB; simulated proxies' CPU {:.2} s",
        sync.done, sync.total, sync.p50, sync.max, sync_cpu, sync_rss, own_sync_cpu
    );
    println!(
        "  responses per proxy: {}; resources per proxy: {}",
        sync_responses.show(),
        sync_responses.show_bytes()
    );
    if !synced {
        rec.finish();
        return Ok((rec, Some("the initial sync did not complete".into())));
    }

    println!(
        "| change | all ACKed p50 | p90 | max | responses per proxy | control plane CPU | proxies' CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rounds = Vec::new();
    let mut failed = None;
    for n in 1..=args.rounds {
        let weight = mesh::weight_after(n);
        let cpu_before = cp.cpu_seconds();
        let own_cpu_before = control_plane::cpu_seconds("self");
        rec.arm(rec.now());
        mesh::rewrite_service(dir, CHANGED_SERVICE, weight)
            .map_err(|e| format!("rewriting the service: {e}"))?;
        let converged = wait_until(cp, Duration::from_secs(300), || {
            rec.converged_count() == args.proxies
        })
        .await?;
        let latencies = Latencies::of(&rec.disarm());
        settle(&rec, args.quiet).await;
        let round = Round {
            latencies,
            responses: Responses::of(rec.take_responses()),
            cpu: cp.cpu_seconds() - cpu_before,
            own_cpu: control_plane::cpu_seconds("self") - own_cpu_before,
        };
        let l = &round.latencies;
        println!(
            "| {n}: svc-{CHANGED_SERVICE} v1/v2 {}/{} -> {weight}/{} | {} | {:.3} s | {:.3} s | {} | {:.2} s | {:.2} s |",
            mesh::weight_after(n - 1),
            100 - mesh::weight_after(n - 1),
            100 - weight,
            if l.complete() {
                format!("{:.3} s", l.p50)
            } else {
                format!("{}/{} ACKed, p50 {:.3} s", l.done, l.total, l.p50)
            },
            l.p90,
            l.max,
            round.responses.show(),
            round.cpu,
            round.own_cpu
        );
        if !converged {
            failed = Some(format!("change {n} did not reach every proxy"));
            break;
        }
        rounds.push(round);
    }
    if rounds.len() > 1 {
        let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let mean_responses: [f64; 4] = std::array::from_fn(|t| med(&|r| r.responses.mean[t]));
        println!(
            "| median of {} | {:.3} s | {:.3} s | {:.3} s | {} | {:.2} s | {:.2} s |",
            rounds.len(),
            med(&|r| r.latencies.p50),
            med(&|r| r.latencies.p90),
            med(&|r| r.latencies.max),
            (0..4)
                .map(|t| format!("{} {:.2}", TYPE_NAMES[t], mean_responses[t]))
                .collect::<Vec<_>>()
                .join(", "),
            med(&|r| r.cpu),
            med(&|r| r.own_cpu)
        );
    }
    rec.finish();
    Ok((rec, failed))
}
