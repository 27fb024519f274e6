//! Control-plane convergence benchmark (not a test): N simulated delta-ADS proxies
//! against meshgate's control plane serving M services; measures the time from a
//! config change until every proxy has ACKed it, plus the control plane's CPU and RSS.
//!
//!     cargo bench --bench controlplane_convergence -- --proxies 1000 --services 1000
//!
//! The control plane runs in a child process (this same binary with `--serve`), so its
//! CPU and memory are measured alone (from /proc); the simulated proxies run here. Both
//! share the machine's cores, so the convergence times include the proxies' own work.
//! Its source computes each group's resources when asked, as the translator does, so
//! the times include that work too. `--groups G` spreads the proxies over G identities
//! whose route configurations differ (G snapshots; clusters and endpoints equal).
//! `BENCH_SERVER_WRAPPER="heaptrack -o FILE"` runs the control plane under a tool.
use meshgate::controlplane::node::istio_metadata;
use meshgate::controlplane::sample::{SampleGateway, SampleService, cluster_name};
use meshgate::controlplane::{
    Change, ControlPlane, Options, ProxyScope, SnapshotSource, SourceError, TypeSet,
};
use meshgate::xds::pb::envoy::config::core::v3::Node;
use meshgate::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use meshgate::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshgate::xds::{ProxyIdentity, ResourceSet, TypeUrl};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

struct Args {
    proxies: usize,
    services: usize,
    groups: usize,
    rounds: usize,
    serve: bool,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    bench: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        proxies: 1000,
        services: 1000,
        groups: 1,
        rounds: 3,
        serve: false,
        bench: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--proxies" => a.proxies = num(),
            "--services" => a.services = num(),
            "--groups" => a.groups = num(),
            "--rounds" => a.rounds = num(),
            "--serve" => a.serve = true,
            "--bench" => a.bench = true,
            // cargo bench passes --bench; ignore anything else of the harness.
            _ => {}
        }
    }
    a
}

/// The resources of the benchmark mesh: one gateway listener routing M hosts to M
/// EDS clusters of 3 endpoints each, plus `extra` added services. Groups route
/// different host names (`svc-I.gG.example.com`) to the same services: their route
/// configurations differ, their clusters and endpoints are equal.
fn mesh(services: usize, state: &MeshState, group: usize) -> ResourceSet {
    let service = |name: String, endpoints: Vec<SocketAddr>| {
        let mut s = SampleService::new(&name, endpoints);
        s.domains = vec![format!("{name}.g{group}.example.com")];
        s
    };
    let mut list: Vec<SampleService> = (0..services)
        .map(|i| {
            let base = state.moved.get(&i).copied().unwrap_or(10000);
            service(
                format!("svc-{i}"),
                (0..3)
                    .map(|k| SocketAddr::from(([127, 0, 1, (i % 250) as u8 + 1], base + k)))
                    .collect(),
            )
        })
        .collect();
    for j in 0..state.extra {
        list.push(service(
            format!("new-{j}"),
            vec![SocketAddr::from(([127, 0, 2, 1], 10000))],
        ));
    }
    SampleGateway::new(8080, list).resources()
}

/// The benchmark's configuration: which services' endpoints moved, how many were added.
#[derive(Debug, Clone, Default)]
struct MeshState {
    moved: BTreeMap<usize, u16>,
    extra: usize,
}

fn group_labels(g: usize) -> BTreeMap<String, String> {
    [
        ("istio".to_string(), "ingressgateway".to_string()),
        ("group".to_string(), g.to_string()),
    ]
    .into()
}

/// Computes each group's resources on demand from the small configuration state, as
/// the translator does from Istio configuration: nothing but the snapshots holds them.
struct BenchSource {
    services: usize,
    state: Mutex<MeshState>,
    tx: broadcast::Sender<Change>,
}

impl SnapshotSource for BenchSource {
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let group = proxy
            .labels
            .get("group")
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        Ok(Arc::new(mesh(self.services, &state, group)))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// The control plane process: serves, then applies changes told on stdin.
fn serve(args: &Args) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let source = Arc::new(BenchSource {
            services: args.services,
            state: Mutex::new(MeshState::default()),
            tx: broadcast::channel(64).0,
        });
        let cp = ControlPlane::new(source.clone(), Options::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "port {} pid {}",
            listener.local_addr().expect("addr").port(),
            std::process::id()
        );
        let serving = cp.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let (line_tx, mut lines) = mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if line_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut next = MeshState::default();
        let mut types = TypeSet::ALL;
        while let Some(line) = lines.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["prepare", "eds", k] => {
                    let k: usize = k.parse().unwrap_or(0);
                    let port = next.moved.get(&k).copied().unwrap_or(10000) + 10;
                    next.moved.insert(k, port);
                    types = TypeSet::of(&[TypeUrl::Endpoint]);
                }
                ["prepare", "add"] => {
                    next.extra += 1;
                    types = TypeSet::ALL;
                }
                ["go"] => {
                    *source.state.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
                    let _ = source.tx.send(Change {
                        scope: ProxyScope::All,
                        types,
                    });
                }
                _ => {}
            }
            println!("ok");
        }
        eprintln!(
            "control plane: {} distinct resources interned for {} snapshots",
            cp.interned_resources(),
            cp.snapshot_keys()
        );
    });
}

/// What the simulated proxies report to the driver.
#[derive(Default)]
struct Shared {
    synced: AtomicUsize,
    converged: AtomicUsize,
    notify: Notify,
    /// Resources (type, name) whose arrival completes the current round.
    markers: Mutex<Vec<(TypeUrl, String)>>,
    round: AtomicUsize,
    errors: AtomicUsize,
    retries: AtomicUsize,
    /// Set when the run is over (the control plane is stopped; errors are expected).
    finished: std::sync::atomic::AtomicBool,
}

/// One simulated proxy; like a real one, it reconnects (a few times, with back-off) when
/// its stream fails.
async fn proxy(i: usize, groups: usize, addr: String, shared: Arc<Shared>) {
    let synced = std::sync::atomic::AtomicBool::new(false);
    for attempt in 0..6u32 {
        match proxy_stream(i, groups, &addr, &shared, &synced).await {
            Ok(()) => return,
            Err(e) => {
                if shared.finished.load(Ordering::Relaxed) {
                    return;
                }
                if attempt == 5 {
                    if shared.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("proxy {i}: {e}");
                    }
                    shared.notify.notify_one();
                    return;
                }
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100u64 << attempt)).await;
            }
        }
    }
}

async fn proxy_stream(
    i: usize,
    groups: usize,
    addr: &str,
    shared: &Shared,
    synced_once: &std::sync::atomic::AtomicBool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let run = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
        let identity = ProxyIdentity {
            namespace: "bench".into(),
            labels: group_labels(i % groups),
            ..Default::default()
        };
        let node = Node {
            id: format!("router~127.0.0.1~gw-{i}.bench~bench.svc.cluster.local"),
            metadata: Some(istio_metadata(&identity, "")),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(16);
        for (n, t) in [TypeUrl::Cluster, TypeUrl::Listener]
            .into_iter()
            .enumerate()
        {
            tx.send(DeltaDiscoveryRequest {
                node: (n == 0).then(|| node.clone()),
                type_url: t.as_str().into(),
                ..Default::default()
            })
            .await?;
        }
        let mut inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut seen_types = 0u8;
        let mut round_seen: (usize, Vec<bool>) = (0, Vec::new());
        let mut synced = false;
        while let Some(resp) = inbound.message().await? {
            let Some(t) = TypeUrl::parse(&resp.type_url) else {
                continue;
            };
            tx.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await?;
            match t {
                TypeUrl::Cluster if !resp.resources.is_empty() => {
                    tx.send(DeltaDiscoveryRequest {
                        type_url: TypeUrl::Endpoint.as_str().into(),
                        resource_names_subscribe: resp
                            .resources
                            .iter()
                            .map(|r| r.name.clone())
                            .collect(),
                        ..Default::default()
                    })
                    .await?;
                }
                TypeUrl::Listener if seen_types & 0b100 == 0 => {
                    tx.send(DeltaDiscoveryRequest {
                        type_url: TypeUrl::Route.as_str().into(),
                        resource_names_subscribe: vec!["http.8080".into()],
                        ..Default::default()
                    })
                    .await?;
                }
                _ => {}
            }
            seen_types |= match t {
                TypeUrl::Cluster => 1,
                TypeUrl::Endpoint => 2,
                TypeUrl::Listener => 4,
                TypeUrl::Route => 8,
                TypeUrl::Secret => 0,
            };
            if !synced && seen_types == 0b1111 {
                synced = true;
                if !synced_once.swap(true, Ordering::Relaxed) {
                    shared.synced.fetch_add(1, Ordering::Relaxed);
                    shared.notify.notify_one();
                }
            }
            let round = shared.round.load(Ordering::Relaxed);
            if round > 0 {
                let markers = shared.markers.lock().unwrap().clone();
                if round_seen.0 != round {
                    round_seen = (round, vec![false; markers.len()]);
                }
                let before = round_seen.1.iter().all(|s| *s);
                for (k, (mt, mn)) in markers.iter().enumerate() {
                    if *mt == t && resp.resources.iter().any(|r| &r.name == mn) {
                        round_seen.1[k] = true;
                    }
                }
                if !before && round_seen.1.iter().all(|s| *s) {
                    shared.converged.fetch_add(1, Ordering::Relaxed);
                    shared.notify.notify_one();
                }
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    run.await
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of stat; after ")" they are 12, 13.
    (ticks(11) + ticks(12)) / 100.0
}

fn proc_mem_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn wait_count(
    shared: &Shared,
    counter: &AtomicUsize,
    n: usize,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if counter.load(Ordering::Relaxed) >= n {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout || shared.errors.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), shared.notify.notified()).await;
    }
}

fn main() {
    let args = parse_args();
    if args.serve {
        serve(&args);
        return;
    }
    if !args.bench {
        // Built and started by `cargo test --all-targets`: benchmarks are not tests.
        println!(
            "controlplane_convergence: a benchmark; run it with `cargo bench --bench controlplane_convergence`"
        );
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    // BENCH_SERVER_WRAPPER runs the control plane under a tool (a heap profiler, say):
    // `BENCH_SERVER_WRAPPER="heaptrack -o /tmp/cp"`.
    let wrapper = std::env::var("BENCH_SERVER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let mut child = command
        .args([
            "--serve",
            "--services",
            &args.services.to_string(),
            "--groups",
            &args.groups.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the control plane");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    // "port P pid N": the pid is the control plane's own, even under a wrapper (whose
    // own lines come first and are skipped).
    let (port, pid): (u16, u32) = loop {
        let line = stdout
            .next()
            .and_then(|l| l.ok())
            .expect("control plane port");
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["port", port, "pid", pid] = words.as_slice() {
            break (
                port.parse().expect("control plane port"),
                pid.parse().expect("control plane pid"),
            );
        }
    };
    let addr = format!("127.0.0.1:{port}");
    println!(
        "meshgate control plane: {} delta proxies x {} services ({} distinct identities), {} rounds",
        args.proxies, args.services, args.groups, args.rounds
    );
    let idle_rss = proc_mem_mib(pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut command = |cmd: &str| {
        writeln!(stdin, "{cmd}").expect("control plane stdin");
        stdin.flush().expect("flush");
        let reply = stdout.next().and_then(|l| l.ok()).unwrap_or_default();
        assert_eq!(reply, "ok", "control plane said {reply:?}");
    };
    rt.block_on(async {
        let shared = Arc::new(Shared::default());
        let cpu0 = proc_cpu_seconds(pid);
        let start = Instant::now();
        // Proxies arrive in waves of 100 (a real fleet never connects in the same
        // millisecond; a thousand SYNs at once overflow the kernel's queue).
        for i in 0..args.proxies {
            if i > 0 && i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::spawn(proxy(i, args.groups.max(1), addr.clone(), shared.clone()));
        }
        let initial = wait_count(&shared, &shared.synced, args.proxies, Duration::from_secs(300)).await;
        let cpu1 = proc_cpu_seconds(pid);
        match initial {
            Some(d) => println!(
                "initial sync: all {} proxies have CDS+EDS+LDS+RDS after {:.2} s (control plane CPU {:.2} s, RSS {:.0} MiB, peak {:.0} MiB)",
                args.proxies,
                d.as_secs_f64(),
                cpu1 - cpu0,
                proc_mem_mib(pid, "VmRSS:"),
                proc_mem_mib(pid, "VmHWM:")
            ),
            None => {
                eprintln!(
                    "initial sync failed: {} of {} synced, {} errors",
                    shared.synced.load(Ordering::Relaxed),
                    args.proxies,
                    shared.errors.load(Ordering::Relaxed)
                );
                let _ = child.kill();
                std::process::exit(1);
            }
        }
        let _ = start;
        println!("| change | pushed types | all ACKed after | control plane CPU | RSS after |");
        println!("|---|---|---|---|---|");
        for round in 1..=args.rounds * 2 {
            let eds_only = round % 2 == 1;
            let k = round % args.services.max(1);
            let markers = if eds_only {
                vec![(TypeUrl::Endpoint, cluster_name(&format!("svc-{k}")))]
            } else {
                let j = round / 2 - 1;
                let name = cluster_name(&format!("new-{j}"));
                vec![(TypeUrl::Cluster, name.clone()), (TypeUrl::Endpoint, name), (TypeUrl::Route, "http.8080".to_string())]
            };
            let prepare = if eds_only { format!("prepare eds {k}") } else { "prepare add".to_string() };
            command(&prepare);
            *shared.markers.lock().unwrap() = markers;
            shared.converged.store(0, Ordering::Relaxed);
            shared.round.store(round, Ordering::Relaxed);
            let cpu_before = proc_cpu_seconds(pid);
            command("go");
            let took = wait_count(&shared, &shared.converged, args.proxies, Duration::from_secs(120)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let cpu = proc_cpu_seconds(pid) - cpu_before;
            let rss = proc_mem_mib(pid, "VmRSS:");
            println!(
                "| {} | {} | {} | {:.2} s | {:.0} MiB |",
                if eds_only { format!("endpoints of svc-{k}") } else { "new service (cluster, endpoints, route)".to_string() },
                if eds_only { "EDS" } else { "CDS, EDS, RDS" },
                took.map(|d| format!("{:.3} s", d.as_secs_f64())).unwrap_or_else(|| "did not converge".into()),
                cpu,
                rss
            );
        }
        println!(
            "control plane memory: {:.0} MiB before proxies, {:.0} MiB now, {:.0} MiB peak; connection retries: {}, errors: {}",
            idle_rss,
            proc_mem_mib(pid, "VmRSS:"),
            proc_mem_mib(pid, "VmHWM:"),
            shared.retries.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed)
        );
        shared.finished.store(true, Ordering::Relaxed);
    });
    rt.shutdown_background();
    // The control plane exits when its stdin closes, so that a wrapper sees a clean end.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
