//! One `meshgate control-plane` process configuring, at the same time, real Envoy 1.40
//! (state of the world and delta, bootstrapped by `meshgate bootstrap envoy`) and
//! meshgate gateways (`meshgate gateway --xds`, delta and state of the world): routing,
//! convergence after a change, an invalid file, a change meshgate's gateways could not
//! serve (refused by the control plane, as `meshgate validate` refuses it), a control
//! plane killed and restarted under traffic, and a gateway started before its control
//! plane.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;
use support::xds_mesh;

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

    // A route Envoy could apply but meshgate's gateways cannot (a metadata formatter in a
    // header value): the control plane runs the same serve check as `meshgate validate`,
    // so it refuses the change with the file, the position and the field, and every
    // proxy, Envoy included, keeps the last good configuration.
    let names: Vec<&str> = proxies.iter().map(|(n, _)| *n).collect();
    let b_port = upstreams.iter().find(|(n, _)| *n == "b").unwrap().1;
    let formatted = route_yaml(HOST, &names, "b", b_port).replace(
        "  - route:",
        "  - headers: {request: {set: {x-client: \"%DYNAMIC_METADATA(istio:x)%\"}}}\n    route:",
    );
    let rejected_before = cp.log().matches("configuration change rejected").count();
    write_atomically(&config.join("route.yaml"), &formatted);
    const REFUSED: &str = "DYNAMIC_METADATA";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp.log().matches("configuration change rejected").count() == rejected_before {
        assert!(
            Instant::now() < deadline,
            "the unservable change was not refused:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cp.log();
    assert!(
        log.lines().any(|l| l.contains("route.yaml:")
            && l.contains("VirtualService/edge/route")
            && l.contains("request_headers_to_add")
            && l.contains(REFUSED)),
        "the refusal names the file, the resource and the field:\n{log}"
    );
    for (name, port) in proxies {
        let (status, upstream) = get_via(&client, port, HOST).await.unwrap();
        assert_eq!((status, upstream.as_str()), (200, "echo-b"), "{name}");
    }
    for (envoy, _) in &envoys {
        let (_, routes) = envoy
            .admin_get("/config_dump?resource=dynamic_route_configs")
            .unwrap();
        assert!(
            !routes.contains(REFUSED),
            "Envoy was not sent the refused route"
        );
    }
    let s = cp.syncz();
    assert!(
        s.iter().all(|p| p["types"]["rds"]["nacked"].is_null()),
        "nobody was sent anything to NACK: {s:?}"
    );
    // The next change that can be served converges everywhere.
    write_route(&config, &proxies, &upstreams, "a");
    all_routed(&client, &proxies, "echo-a", CONVERGED).await;
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

/// A VirtualService on `gateways` whose routes all answer by themselves: `/healthz` with
/// a direct response, everything else with a redirect to HTTPS (no destination, so the
/// translation has no cluster at all).
fn self_answering_routes_yaml(gateways: &[&str]) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-https, namespace: edge}}
spec:
  hosts: ["{HOST}"]
  gateways: [{gateways}]
  http:
  - match: [{{uri: {{exact: /healthz}}}}]
    directResponse: {{status: 200, body: {{string: "fine"}}}}
  - redirect: {{scheme: https}}
"#,
        gateways = gateways.join(", ")
    )
}

/// (status, `location`, body) of GET `path` for `HOST` through `port`.
async fn answer_via(client: &reqwest::Client, port: u16, path: &str) -> (u16, String, String) {
    let resp = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", HOST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} via :{port}: {e}"));
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, location, resp.text().await.unwrap_or_default())
}

/// An HTTP-to-HTTPS redirect gateway translates to no cluster at all. Every proxy's
/// wildcard CDS subscription is still answered (an empty set), in delta and in SotW:
/// meshgate gateways become ready and Envoy's CDS update succeeds at once, well before
/// the 15 s initial fetch timeout that would otherwise let them start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_clusters_is_answered_at_once() {
    let proxies = [
        ("envoy-sotw", free_port()),
        ("envoy-delta", free_port()),
        ("mg-delta", free_port()),
        ("mg-sotw", free_port()),
    ];
    let work = TempDir::new();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let gateways: Vec<String> = proxies.iter().map(|(n, p)| gateway_yaml(n, *p)).collect();
    std::fs::write(config.join("gateways.yaml"), gateways.join("---\n")).unwrap();
    let names: Vec<&str> = proxies.iter().map(|(n, _)| *n).collect();
    std::fs::write(
        config.join("routes.yaml"),
        self_answering_routes_yaml(&names),
    )
    .unwrap();
    let cp = ControlPlaneProcess::start(&config, work.path());
    // Ready promptly: well under the initial fetch timeout (15 s) and Envoy's.
    const PROMPTLY: Duration = Duration::from_secs(5);

    let started = Instant::now();
    let mut mg_delta = XdsGateway::spawn(
        "mg-delta",
        &cp.xds_addr(),
        "proxy=mg-delta",
        "edge",
        true,
        work.path(),
    );
    let mut mg_sotw = XdsGateway::spawn(
        "mg-sotw",
        &cp.xds_addr(),
        "proxy=mg-sotw",
        "edge",
        false,
        work.path(),
    );
    mg_delta.wait_ready(PROMPTLY.saturating_sub(started.elapsed()));
    mg_sotw.wait_ready(PROMPTLY.saturating_sub(started.elapsed()));
    eprintln!("meshgate gateways ready after {:?}", started.elapsed());
    for gw in [&mg_delta, &mg_sotw] {
        assert_eq!(gw.admin("/ready").map(|(s, _)| s), Some(200), "{}", gw.name);
    }

    let mut envoys = Vec::new();
    for (name, delta) in [("envoy-sotw", false), ("envoy-delta", true)] {
        let dir = TempDir::new();
        let admin = free_port();
        let boot = bootstrap_envoy(
            dir.path(),
            name,
            &cp.xds_addr(),
            &format!("proxy={name}"),
            "edge",
            delta,
            admin,
        );
        let started = Instant::now();
        let envoy = Envoy::start(&boot, admin, dir.path());
        let took = started.elapsed();
        eprintln!("{name}: ready after {took:?}");
        envoy.wait_for_stat("cluster_manager.cds.update_success", |v| v >= 1, PROMPTLY);
        assert_eq!(
            envoy.stat("control_plane.connected_state"),
            Some(1),
            "{name}"
        );
        assert_eq!(
            envoy.stat("cluster_manager.cds.init_fetch_timeout"),
            Some(0),
            "{name}: CDS was answered, not given up on"
        );
        assert!(took < PROMPTLY, "{name} became ready only after {took:?}");
        envoys.push((envoy, dir));
    }

    // All four answer alike, with nothing upstream.
    let client = http_client();
    for (name, port) in proxies {
        let (status, location, _) = answer_via(&client, port, "/cart?id=7").await;
        assert_eq!(
            (status, location.as_str()),
            (301, "https://shop.example.com/cart?id=7"),
            "{name}"
        );
        let (status, _, body) = answer_via(&client, port, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "fine"), "{name}");
    }
    cp.wait_syncz("all four in sync", Duration::from_secs(10), |s| {
        s.len() == 4
            && s.iter().all(|p| {
                ["cds", "lds", "rds"]
                    .iter()
                    .all(|t| type_state(p, t) == "SYNCED")
            })
    });
    for gw in [&mg_delta, &mg_sotw] {
        assert!(
            !gw.log().contains("initial fetch timeout"),
            "{}: waited for a timeout:\n{}",
            gw.name,
            gw.log()
        );
    }
    for (envoy, _) in &envoys {
        envoy.assert_no_rejections();
    }
}

/// The control plane takes a changed mesh configuration up without a restart (here
/// `connectTimeout`, pushed to a connected gateway), refuses one that does not parse or
/// that changes the CA's trust domain, and keeps the last good one.
#[test]
fn a_changed_mesh_config_is_pushed_and_a_bad_one_is_refused() {
    let work = TempDir::new();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let echo = EchoUpstream::start("echo");
    let gw_port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        [
            gateway_yaml("mc", gw_port),
            service_entry_yaml("echo", echo.port()),
            route_yaml("*", &["mc"], "echo", echo.port()),
        ]
        .join("---\n"),
    )
    .unwrap();
    // Outside the configuration directory, as Istio's mesh ConfigMap is.
    let mesh_file = work.path().join("meshconfig.yaml");
    std::fs::write(&mesh_file, "connectTimeout: 3s\n").unwrap();
    let ca_dir = work.path().join("ca");
    let cp = ControlPlaneProcess::start_with_ca(
        &config,
        work.path(),
        &ca_dir,
        CaPorts::free(),
        &["--mesh-config", mesh_file.to_str().unwrap()],
    );
    let mut gw = XdsGateway::spawn(
        "mc-gw",
        &cp.xds_addr(),
        "proxy=mc",
        "edge",
        true,
        work.path(),
    );
    gw.wait_ready(Duration::from_secs(30));
    let timeout = || {
        let (status, dump) = cp.debug_get("/debug/config_dump?proxyID=mc-gw.edge");
        assert_eq!(status, 200, "{dump}");
        let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
        let mut found = None;
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    if m.get("name")
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| n.contains("echo.internal"))
                        && let Some(t) = m.get("connect_timeout").and_then(|t| t.as_str())
                    {
                        found = Some(t.to_string());
                    }
                    stack.extend(m.into_iter().map(|(_, v)| v));
                }
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        found
    };
    assert_eq!(timeout().as_deref(), Some("3s"));
    // A new value is pushed.
    write_atomically(&mesh_file, "connectTimeout: 2s\n");
    wait_until(
        "the new connect timeout pushed",
        Duration::from_secs(20),
        || timeout().as_deref() == Some("2s"),
    );
    // A file that does not parse, and a trust domain the CA was not started in, are
    // refused: the last good one stays.
    write_atomically(&mesh_file, "connectTimeout: 1s\nconectTimeout: 1s\n");
    wait_until("the broken file reported", Duration::from_secs(20), || {
        cp.log().contains("unknown field `conectTimeout`")
    });
    write_atomically(
        &mesh_file,
        "connectTimeout: 1s\ntrustDomain: other.example\n",
    );
    wait_until(
        "the trust domain change refused",
        Duration::from_secs(20),
        || {
            cp.log()
                .contains("trustDomain cannot change while the control plane runs")
        },
    );
    assert_eq!(timeout().as_deref(), Some("2s"));
    assert!(matches!(
        blocking_http_get(("127.0.0.1", gw_port), "/"),
        Ok((200, _))
    ));
}
