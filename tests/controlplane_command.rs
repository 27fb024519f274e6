//! `meshgate control-plane` as a user runs it: a process serving a folder of Istio YAML
//! to real Envoy 1.40 proxies (one SotW, one delta) bootstrapped by `meshgate bootstrap
//! envoy`; file changes converge, invalid files change nothing, and a killed and
//! restarted control plane fails no request.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;

use cp_support::get_via;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::xds_mesh::ControlPlaneProcess;
use support::*;

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

fn config(ports: (u16, u16), endpoint_port: u16) -> String {
    let gateway = |name: &str, flavor: &str, port: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: edge}}
spec:
  selector: {{istio: ingressgateway, flavor: {flavor}}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
"#
        )
    };
    format!(
        r#"{}{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: edge}}
spec:
  hosts: ["app.example.com"]
  gateways: [gw-sotw, gw-delta]
  http:
  - route:
    - destination: {{host: app.internal, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {endpoint_port}}}
"#,
        gateway("gw-sotw", "sotw", ports.0),
        gateway("gw-delta", "delta", ports.1)
    )
}

fn envoy(dir: &Path, flavor: &str, xds: u16) -> Envoy {
    let work = dir.join(flavor);
    std::fs::create_dir_all(&work).unwrap();
    let admin = free_port();
    let bootstrap = work.join("envoy.yaml");
    let status = meshgate()
        .args([
            "bootstrap",
            "envoy",
            "--xds",
            &format!("127.0.0.1:{xds}"),
            "--node-id",
            &format!("gw-{flavor}"),
        ])
        .args([
            "--namespace",
            "edge",
            "--labels",
            &format!("istio=ingressgateway,flavor={flavor}"),
        ])
        .args([
            "--admin-port",
            &admin.to_string(),
            if flavor == "sotw" {
                "--sotw"
            } else {
                "--delta"
            },
            "--out",
        ])
        .arg(&bootstrap)
        .status()
        .unwrap();
    assert!(status.success());
    Envoy::start(&bootstrap, admin, &work)
}

async fn wait_upstream(client: &reqwest::Client, port: u16, upstream: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok((200, u)) = get_via(client, port, "app.example.com").await
            && u == upstream
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never routed to {upstream}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_command_serves_watches_and_survives_restarts() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let dir = TempDir::new();
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    let ports = (free_port(), free_port());
    std::fs::write(cfg.join("mesh.yaml"), config(ports, a.port())).unwrap();
    let (xds, debug) = (free_port(), free_port());
    let cp = ControlPlaneProcess::start_on(&dir.path().join("config"), dir.path(), xds, debug);
    let sotw = envoy(dir.path(), "sotw", xds);
    let delta = envoy(dir.path(), "delta", xds);
    let client = http_client();
    for port in [ports.0, ports.1] {
        wait_upstream(&client, port, "echo-a").await;
    }

    // A valid change converges on both proxies.
    std::fs::write(cfg.join("mesh.yaml"), config(ports, b.port())).unwrap();
    for port in [ports.0, ports.1] {
        wait_upstream(&client, port, "echo-b").await;
    }
    let generations = |debug: u16| {
        let (_, body) = blocking_http_get(("127.0.0.1", debug), "/debug/syncz").unwrap();
        let syncz: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        syncz
            .iter()
            .map(|p| {
                (
                    p["node_id"].to_string(),
                    p["snapshot_generation"].clone(),
                    p["states"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let served = generations(debug);

    // An invalid change is reported with its position and changes nothing.
    std::fs::write(cfg.join("broken.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: edge}\nspec:\n  hostz: [x]\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cp.log().contains("configuration change rejected") {
        assert!(
            Instant::now() < deadline,
            "invalid change not reported:\n{}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cp.log().contains("broken.yaml:5:"),
        "no position in:\n{}",
        cp.log()
    );
    // The rejection is the end of that change: no new snapshot for either proxy (so
    // nothing is pushed), both still in sync, and both still route as before.
    assert_eq!(
        generations(debug),
        served,
        "snapshots after the rejected change"
    );
    for port in [ports.0, ports.1] {
        assert_eq!(
            get_via(&client, port, "app.example.com").await.unwrap(),
            (200, "echo-b".into())
        );
    }
    std::fs::remove_file(cfg.join("broken.yaml")).unwrap();

    // Kill the control plane while traffic flows, then start it again.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let traffic = {
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            let client = http_client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for port in [ports.0, ports.1] {
                    match get_via(&client, port, "app.example.com").await {
                        Ok((200, u)) if u == "echo-b" => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    // Some traffic before, some while the control plane is gone (both proxies have seen
    // their stream end), then it comes back.
    let traffic_grows = |by: usize, what: &str| {
        let from = answered.load(Ordering::Relaxed);
        wait_until(what, Duration::from_secs(20), || {
            answered.load(Ordering::Relaxed) >= from + by
        });
    };
    traffic_grows(40, "traffic before the kill");
    drop(cp);
    wait_until(
        "both proxies lost the control plane",
        Duration::from_secs(20),
        || {
            [&sotw, &delta]
                .iter()
                .all(|e| e.stat("control_plane.connected_state") == Some(0))
        },
    );
    traffic_grows(40, "traffic without a control plane");
    let cp = ControlPlaneProcess::start_on(&dir.path().join("config"), dir.path(), xds, debug);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = blocking_http_get(("127.0.0.1", debug), "/debug/syncz").unwrap();
        let syncz: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        if syncz.len() == 2
            && syncz.iter().all(|p| {
                p["states"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|s| s == "SYNCED" || s == "NOT SENT"))
            })
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxies did not come back: {body}\n{}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 50, "{ok}");
    let (_, metrics) = blocking_http_get(("127.0.0.1", debug), "/metrics").unwrap();
    assert!(metrics.contains("pilot_xds{mode=\"delta\"} 1"), "{metrics}");
    assert!(metrics.contains("pilot_xds{mode=\"sotw\"} 1"), "{metrics}");
    sotw.assert_no_rejections();
    delta.assert_no_rejections();
}

#[test]
fn control_plane_refuses_to_start_on_invalid_configuration() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers: [{port: {number: 99999, name: http, protocol: HTTP}, hosts: ['*']}]\n").unwrap();
    let out = meshgate()
        .args(["control-plane", "--config"])
        .arg(dir.path())
        .args(["--xds-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("not starting"), "{err}");
}

/// One service with two versions and a weighted split between them: `weights` is
/// (v1, v2). A weight edit changes a route table and nothing else.
fn split_config(ports: (u16, u16), v1: u16, v2: u16, weights: (u32, u32)) -> String {
    let head = config(ports, v1);
    let gateways = &head[..head.find("kind: VirtualService").unwrap()];
    format!(
        r#"{gateways}kind: VirtualService
metadata: {{name: app, namespace: edge}}
spec:
  hosts: ["app.example.com"]
  gateways: [gw-sotw, gw-delta]
  http:
  - route:
    - destination: {{host: app.internal, subset: v1, port: {{number: 80}}}}
      weight: {}
    - destination: {{host: app.internal, subset: v2, port: {{number: 80}}}}
      weight: {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: edge}}
spec:
  host: app.internal
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
"#,
        weights.0, weights.1
    )
}

/// Envoy's own counters of the xDS responses it received, by type.
fn xds_updates(e: &Envoy) -> [u64; 3] {
    let stat = |name: &str| e.stat(name).unwrap_or_else(|| panic!("no stat {name}"));
    [
        stat("cluster_manager.cds.update_attempt"),
        stat("listener_manager.lds.update_attempt"),
        // Every route table's updates (one per gateway here).
        e.admin_get("/stats?filter=^http\\..*\\.rds\\..*\\.update_attempt$")
            .unwrap()
            .1
            .lines()
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_only_change_sends_envoy_no_clusters_or_listeners() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let dir = TempDir::new();
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    let ports = (free_port(), free_port());
    let write = |weights| {
        // Written aside and renamed in, as an editor or a ConfigMap update does.
        let tmp = dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, split_config(ports, a.port(), b.port(), weights)).unwrap();
        std::fs::rename(&tmp, cfg.join("mesh.yaml")).unwrap();
    };
    write((100, 0));
    let (xds, debug) = (free_port(), free_port());
    let cp = ControlPlaneProcess::start_on(&dir.path().join("config"), dir.path(), xds, debug);
    let proxies = [
        envoy(dir.path(), "sotw", xds),
        envoy(dir.path(), "delta", xds),
    ];
    let client = http_client();
    for port in [ports.0, ports.1] {
        wait_upstream(&client, port, "echo-a").await;
    }
    let synced = || {
        let (_, body) = blocking_http_get(("127.0.0.1", debug), "/debug/syncz").unwrap();
        let syncz: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        syncz.len() == 2
            && syncz.iter().all(|p| {
                p["states"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|s| s == "SYNCED" || s == "NOT SENT"))
            })
    };
    wait_until("both proxies synced", Duration::from_secs(20), synced);
    let before: Vec<[u64; 3]> = proxies.iter().map(xds_updates).collect();
    assert!(
        before.iter().all(|u| u[0] >= 1 && u[1] >= 1 && u[2] >= 1),
        "{before:?}"
    );

    // The everyday edit: all traffic to v2.
    write((0, 100));
    for port in [ports.0, ports.1] {
        wait_upstream(&client, port, "echo-b").await;
    }
    wait_until("both proxies synced", Duration::from_secs(20), synced);
    for (p, before) in proxies.iter().zip(&before) {
        let after = xds_updates(p);
        assert_eq!(
            after[0],
            before[0],
            "CDS responses for a route-only change: {cp_log}",
            cp_log = cp.log()
        );
        assert_eq!(after[1], before[1], "LDS responses for a route-only change");
        assert!(
            after[2] > before[2],
            "no RDS update: {before:?} -> {after:?}"
        );
        p.assert_no_rejections();
    }
}
