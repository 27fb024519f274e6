//! One `meshgate control-plane` process configuring, at the same time, real Envoy 1.40
//! (state of the world and delta, bootstrapped by `meshgate bootstrap envoy`) and
//! meshgate gateways (`meshgate gateway --xds`, delta and state of the world): routing,
//! convergence after a change, an invalid file, a proxy that NACKs while the others go
//! on, a control plane killed and restarted under traffic, and a gateway started before
//! its control plane.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;
#[path = "support/xds_mesh.rs"]
mod xds_mesh;

use cp_support::{get_via, wait_routed};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use xds_mesh::*;

const HOST: &str = "shop.example.com";

/// Writes the configuration: one Gateway per proxy, ServiceEntries for the upstreams,
/// and the route to `to`.
fn write_config(dir: &Path, proxies: &[(&str, u16)], upstreams: &[(&str, u16)], to: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let gateways: Vec<String> = proxies.iter().map(|(n, p)| gateway_yaml(n, *p)).collect();
    std::fs::write(dir.join("gateways.yaml"), gateways.join("---\n")).unwrap();
    let services: Vec<String> = upstreams
        .iter()
        .map(|(n, p)| service_entry_yaml(n, *p))
        .collect();
    std::fs::write(dir.join("services.yaml"), services.join("---\n")).unwrap();
    write_route(dir, proxies, upstreams, to);
}

fn write_route(dir: &Path, proxies: &[(&str, u16)], upstreams: &[(&str, u16)], to: &str) {
    let names: Vec<&str> = proxies.iter().map(|(n, _)| *n).collect();
    let port = upstreams.iter().find(|(n, _)| *n == to).unwrap().1;
    write_atomically(&dir.join("route.yaml"), &route_yaml(HOST, &names, to, port));
}

/// Only against a hang: a change reaches every proxy well within this.
const CONVERGED: Duration = Duration::from_secs(20);

/// Waits until every proxy port routes `HOST` to `upstream`; returns the slowest time.
async fn all_routed(
    client: &reqwest::Client,
    proxies: &[(&str, u16)],
    upstream: &str,
    timeout: Duration,
) -> Duration {
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    for (name, port) in proxies {
        wait_routed(client, *port, HOST, upstream, timeout).await;
        let t = start.elapsed();
        eprintln!("{name}: routed to {upstream} after {t:?}");
        slowest = slowest.max(t);
    }
    slowest
}

fn type_state<'a>(p: &'a serde_json::Value, t: &str) -> &'a str {
    p["states"][t].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_meshgate_gateways_share_one_control_plane() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let upstreams = [("a", a.addr.port()), ("b", b.addr.port())];
    let proxies = [
        ("envoy-sotw", free_port()),
        ("envoy-delta", free_port()),
        ("mg-delta", free_port()),
        ("mg-sotw", free_port()),
    ];
    let work = TempDir::new();
    let config = work.path().join("config");
    write_config(&config, &proxies, &upstreams, "a");
    let cp = ControlPlaneProcess::start(&config, work.path());

    let mut envoys = Vec::new();
    for (name, delta) in [("envoy-sotw", false), ("envoy-delta", true)] {
        let dir = TempDir::new();
        let admin = free_port();
        let labels = format!("proxy={name}");
        let boot = bootstrap_envoy(
            dir.path(),
            name,
            &cp.xds_addr(),
            &labels,
            "edge",
            delta,
            admin,
        );
        envoys.push((Envoy::start(&boot, admin, dir.path()), dir));
    }
    let mg_delta = XdsGateway::start(
        "mg-delta",
        &cp.xds_addr(),
        "proxy=mg-delta",
        "edge",
        true,
        work.path(),
    );
    let mg_sotw = XdsGateway::start(
        "mg-sotw",
        &cp.xds_addr(),
        "proxy=mg-sotw",
        "edge",
        false,
        work.path(),
    );

    let client = http_client();
    all_routed(&client, &proxies, "echo-a", Duration::from_secs(20)).await;
    cp.wait_syncz("all four in sync", Duration::from_secs(10), |s| {
        s.len() == 4
            && s.iter().all(|p| {
                ["cds", "eds", "lds", "rds"]
                    .iter()
                    .all(|t| type_state(p, t) == "SYNCED")
            })
    });
    for name in ["mg-delta", "mg-sotw"] {
        let p = cp.proxy(name).expect("meshgate gateway connected");
        assert!(
            p["user_agent"].as_str().unwrap().starts_with("meshgate"),
            "{p}"
        );
        assert_eq!(p["labels"]["proxy"], name);
        assert_eq!(p["namespace"], "edge");
        assert_eq!(
            p["mode"],
            if name == "mg-delta" { "delta" } else { "sotw" },
            "{p}"
        );
    }
    // The gateways' admin shows the configuration received.
    let (status, dump) = mg_delta.admin("/config_dump").unwrap();
    assert_eq!(status, 200);
    assert!(
        dump.contains("outbound|") && dump.contains("a.internal"),
        "{dump}"
    );

    // A change converges everywhere and traffic follows.
    write_route(&config, &proxies, &upstreams, "b");
    let took = all_routed(&client, &proxies, "echo-b", CONVERGED).await;
    eprintln!("route change: all four proxies follow within {took:?}");
    let generations = |cp: &ControlPlaneProcess| {
        let mut g: Vec<(String, String)> = cp
            .syncz()
            .iter()
            .map(|p| {
                (
                    p["node_id"].to_string(),
                    p["snapshot_generation"].to_string(),
                )
            })
            .collect();
        g.sort();
        g
    };
    let served = generations(&cp);

    // An invalid file is reported and changes nothing.
    write_atomically(
        &config.join("route.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: route, namespace: edge}\nspec:\n  hosts: [\"shop.example.com\"]\n  http:\n  - route: [{destination: {host: a.internal, port: {number: 70000}}}]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp.log().contains("configuration change rejected") {
        assert!(
            Instant::now() < deadline,
            "invalid file not reported:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cp.log();
    assert!(
        log.contains("route.yaml:"),
        "the error names the file and position:\n{log}"
    );
    // The rejection ends that change: no proxy got a new snapshot, all still route as
    // before.
    assert_eq!(
        generations(&cp),
        served,
        "snapshots after the rejected file"
    );
    for (name, port) in proxies {
        let (status, upstream) = get_via(&client, port, HOST).await.unwrap();
        assert_eq!((status, upstream.as_str()), (200, "echo-b"), "{name}");
    }

    // A route meshgate cannot apply (a metadata formatter in a header value) but Envoy can: the meshgate
    // gateways NACK it, with the field in the error, and Envoy takes it.
    let names: Vec<&str> = proxies.iter().map(|(n, _)| *n).collect();
    let b_port = upstreams.iter().find(|(n, _)| *n == "b").unwrap().1;
    let formatted = route_yaml(HOST, &names, "b", b_port).replace(
        "  - route:",
        "  - headers: {request: {set: {x-client: \"%DYNAMIC_METADATA(istio:x)%\"}}}\n    route:",
    );
    write_atomically(&config.join("route.yaml"), &formatted);
    const REFUSED: &str = "DYNAMIC_METADATA";
    cp.wait_syncz("meshgate NACKs, Envoy ACKs", Duration::from_secs(10), |s| {
        let nacked = |n: &str| {
            s.iter().any(|p| {
                p["node_id"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("~{n}."))
                    && type_state(p, "rds") == "NACKED"
                    && p["types"]["rds"]["nacked"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(REFUSED))
            })
        };
        let synced = |n: &str| {
            s.iter().any(|p| {
                p["node_id"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("~{n}."))
                    && type_state(p, "rds") == "SYNCED"
            })
        };
        nacked("mg-delta") && nacked("mg-sotw") && synced("envoy-sotw") && synced("envoy-delta")
    });
    let p = cp.proxy("mg-delta").unwrap();
    let error = p["types"]["rds"]["nacked"]["error"].as_str().unwrap();
    assert!(
        error.contains("rds ") && error.contains("request_headers_to_add"),
        "the NACK names the resource and the field: {error}"
    );
    for (envoy, _) in &envoys {
        let (_, routes) = envoy
            .admin_get("/config_dump?resource=dynamic_route_configs")
            .unwrap();
        assert!(
            routes.contains("%DYNAMIC_METADATA(istio:x)%"),
            "Envoy applied the route"
        );
    }
    // The gateway keeps serving what it had; a NACKing proxy stalls nobody, and itself
    // takes the next update it can apply.
    write_route(&config, &proxies, &upstreams, "a");
    all_routed(&client, &proxies, "echo-a", CONVERGED).await;
    assert!(mg_sotw.log().contains(REFUSED), "the gateway logs its NACK");
    drop(mg_sotw);
    drop(mg_delta);
}

/// Sends requests through every port in turn until stopped; counts failures.
fn traffic(
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = http_client();
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for &port in &ports {
                match get_via(&client, port, HOST).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(":{port}: {other:?}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        errors
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_under_traffic_and_a_gateway_that_starts_first() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let upstreams = [("a", a.addr.port()), ("b", b.addr.port())];
    let proxies = [
        ("mg-delta", free_port()),
        ("mg-sotw", free_port()),
        ("mg-early", free_port()),
    ];
    let work = TempDir::new();
    let config = work.path().join("config");
    write_config(&config, &proxies, &upstreams, "a");
    let (xds_port, debug_port) = (free_port(), free_port());
    let xds_addr = format!("127.0.0.1:{xds_port}");

    // A gateway whose control plane is not there yet: up, not ready, nothing listening.
    let mut early = XdsGateway::spawn(
        "mg-early",
        &xds_addr,
        "proxy=mg-early",
        "edge",
        true,
        work.path(),
    );
    // Once it has tried the address and failed, it is up but not ready.
    let deadline = Instant::now() + CONVERGED;
    while !early.log().contains("xDS stream ended") {
        assert!(
            Instant::now() < deadline,
            "no connection attempt:\n{}",
            early.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(early.health(), Some(503), "not ready before the first sync");
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxies[2].1)).is_err());

    let mut cp = ControlPlaneProcess::start_on(&config, work.path(), xds_port, debug_port);
    let started = Instant::now();
    early.wait_ready(Duration::from_secs(20));
    eprintln!(
        "the early gateway became ready {:?} after the control plane started",
        started.elapsed()
    );
    let _delta = XdsGateway::start(
        "mg-delta",
        &xds_addr,
        "proxy=mg-delta",
        "edge",
        true,
        work.path(),
    );
    let _sotw = XdsGateway::start(
        "mg-sotw",
        &xds_addr,
        "proxy=mg-sotw",
        "edge",
        false,
        work.path(),
    );
    let client = http_client();
    all_routed(&client, &proxies, "echo-a", Duration::from_secs(20)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ports: Vec<u16> = proxies.iter().map(|(_, p)| *p).collect();
    let load = traffic(ports, stop.clone(), ok.clone(), failed.clone());
    let grows = |by: usize, what: &str| {
        let from = ok.load(Ordering::Relaxed);
        wait_until(what, CONVERGED, || ok.load(Ordering::Relaxed) >= from + by);
    };
    grows(30, "traffic before the kill");

    // Killed: the gateways keep serving their last configuration.
    let ended = |g: &XdsGateway| g.log().matches("xDS stream ended").count();
    let ended_before = [ended(&early), ended(&_delta), ended(&_sotw)];
    cp.kill();
    wait_until("every gateway lost its stream", CONVERGED, || {
        [ended(&early), ended(&_delta), ended(&_sotw)]
            .iter()
            .zip(ended_before)
            .all(|(now, before)| *now > before)
    });
    grows(30, "traffic without a control plane");
    assert!(
        early.health() == Some(200),
        "still ready without a control plane"
    );
    let during_outage = ok.load(Ordering::Relaxed);

    // Restarted on the same address: every gateway reconnects by itself.
    let cp = ControlPlaneProcess::start_on(&config, work.path(), xds_port, debug_port);
    cp.wait_syncz(
        "all three reconnected and in sync",
        Duration::from_secs(30),
        |s| {
            s.len() == 3
                && s.iter().all(|p| {
                    ["cds", "eds", "lds", "rds"]
                        .iter()
                        .all(|t| matches!(type_state(p, t), "SYNCED" | "NOT SENT"))
                })
        },
    );
    // They follow the restarted control plane.
    write_route(&config, &proxies, &upstreams, "b");
    all_routed(&client, &proxies, "echo-b", CONVERGED).await;
    grows(30, "traffic after the restart");
    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests answered ({during_outage} before the restart), {failed} failed");
    assert_eq!(failed, 0, "requests failed: {errors:?}");
    assert!(ok > 100, "traffic flowed ({ok} requests)");
}
