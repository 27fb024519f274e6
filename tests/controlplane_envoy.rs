//! meshgate's control plane configuring real Envoy 1.40 proxies, state-of-the-world and
//! delta at once: routing, convergence after changes, invalid changes, NACKs, a killed
//! and restarted control plane, and an Envoy that starts before its control plane.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;

use cp_support::*;
use meshgate::controlplane::sample::{SampleGateway, SampleService, cluster_name};
use meshgate::controlplane::{StaticSource, TypeSet};
use meshgate::xds::{ResourceSet, TypeUrl};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

fn gateway(port: u16, services: &[(&str, SocketAddr)]) -> ResourceSet {
    SampleGateway::new(
        port,
        services
            .iter()
            .map(|(n, a)| SampleService::new(n, vec![*a]))
            .collect(),
    )
    .resources()
}

/// One Envoy joining the control plane with `proxy=NAME` labels.
struct Proxy {
    envoy: Envoy,
    port: u16,
    name: &'static str,
    _dir: TempDir,
}

fn start_proxy(name: &'static str, xds_addr: &str, port: u16, delta: bool) -> Proxy {
    let dir = TempDir::new();
    let admin = free_port();
    let bootstrap = write_bootstrap(
        dir.path(),
        name,
        xds_addr,
        labels(&[("proxy", name)]),
        delta,
        admin,
    );
    let envoy = Envoy::start(&bootstrap, admin, dir.path());
    Proxy {
        envoy,
        port,
        name,
        _dir: dir,
    }
}

/// Only against a hang: a change reaches the proxies well within this.
const CONVERGED: Duration = Duration::from_secs(20);

fn pushes(cp: &TestControlPlane, t: TypeUrl) -> f64 {
    cp.metric(&format!("pilot_xds_pushes{{type=\"{}\"}}", t.short()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_and_delta_route_and_follow_changes() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let c = EchoUpstream::start("echo-c");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let ports = [("sotw", free_port()), ("delta", free_port())];
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", a.addr), ("b", b.addr)]),
            TypeSet::ALL,
        );
    }
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let proxies = [
        start_proxy("sotw", &cp.xds_addr(), ports[0].1, false),
        start_proxy("delta", &cp.xds_addr(), ports[1].1, true),
    ];
    let client = http_client();
    for p in &proxies {
        assert_eq!(
            get_via(&client, p.port, "a.example.com").await.unwrap(),
            (200, "echo-a".into()),
            "{}",
            p.name
        );
        assert_eq!(
            get_via(&client, p.port, "b.example.com").await.unwrap(),
            (200, "echo-b".into()),
            "{}",
            p.name
        );
        assert_eq!(
            get_via(&client, p.port, "nope.example.com")
                .await
                .unwrap()
                .0,
            404
        );
    }
    cp.wait_synced(2, Duration::from_secs(5));
    let syncz = cp.syncz();
    let modes: Vec<&str> = syncz.iter().map(|p| p["mode"].as_str().unwrap()).collect();
    assert!(
        modes.contains(&"sotw") && modes.contains(&"delta"),
        "{modes:?}"
    );
    // Both proxies have their own snapshot (different labels, different listeners).
    assert_eq!(cp.cp.snapshot_keys(), 2);

    // Endpoint-only change: service a now lives on echo-b. Only EDS is pushed.
    let before: Vec<f64> = TypeUrl::ALL.iter().map(|t| pushes(&cp, *t)).collect();
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", b.addr), ("b", b.addr)]),
            TypeSet::of(&[TypeUrl::Endpoint]),
        );
    }
    for p in &proxies {
        wait_routed(&client, p.port, "a.example.com", "echo-b", CONVERGED).await;
    }
    cp.wait_synced(2, Duration::from_secs(5));
    for (i, t) in TypeUrl::ALL.iter().enumerate() {
        let after = pushes(&cp, *t);
        if *t == TypeUrl::Endpoint {
            assert!(
                after >= before[i] + 2.0,
                "eds pushes {} -> {after}",
                before[i]
            );
        } else {
            assert_eq!(
                after,
                before[i],
                "{} pushed on an endpoint-only change",
                t.short()
            );
        }
    }

    // A new service with its own host: clusters, endpoints and routes change.
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", b.addr), ("b", b.addr), ("c", c.addr)]),
            TypeSet::ALL,
        );
    }
    for p in &proxies {
        wait_routed(&client, p.port, "c.example.com", "echo-c", CONVERGED).await;
    }
    cp.wait_synced(2, Duration::from_secs(5));
    assert!(cp.metric("pilot_proxy_convergence_time_count") >= 4.0);

    // Removing service b: the cluster goes away after the routes stopped using it.
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", b.addr), ("c", c.addr)]),
            TypeSet::ALL,
        );
    }
    for p in &proxies {
        let deadline = std::time::Instant::now() + CONVERGED;
        while get_via(&client, p.port, "b.example.com").await.unwrap().0 != 404 {
            assert!(
                std::time::Instant::now() < deadline,
                "b.example.com still routed via {}",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, clusters) = p.envoy.admin_get("/clusters").unwrap();
        assert!(
            !clusters.contains(&cluster_name("b")),
            "{}: cluster b not removed",
            p.name
        );
        assert!(clusters.contains(&cluster_name("c")));
    }

    // An invalid change (a listener whose route configuration is missing) changes nothing.
    let errors_before = cp.metric("meshgate_xds_snapshot_errors_total");
    let pushes_before: Vec<f64> = TypeUrl::ALL.iter().map(|t| pushes(&cp, *t)).collect();
    for (name, port) in ports {
        let mut broken = gateway(port, &[("a", a.addr)]);
        broken.routes.clear();
        source.set_for(labels(&[("proxy", name)]), broken, TypeSet::ALL);
    }
    let deadline = std::time::Instant::now() + CONVERGED;
    while cp.metric("meshgate_xds_snapshot_errors_total") < errors_before + 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "invalid change not detected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in &proxies {
        assert_eq!(
            get_via(&client, p.port, "a.example.com").await.unwrap(),
            (200, "echo-b".into())
        );
        assert_eq!(
            get_via(&client, p.port, "c.example.com").await.unwrap(),
            (200, "echo-c".into())
        );
    }
    let syncz = cp.syncz();
    assert!(
        syncz.iter().all(|p| p["snapshot_error"]
            .as_str()
            .is_some_and(|e| e.contains("http."))),
        "{syncz:?}"
    );
    // The last good configuration again, with a's endpoint moved: once the proxies
    // route by it, anything the invalid change had pushed would have reached them
    // before. Only endpoints were pushed since the last good snapshot.
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", a.addr), ("c", c.addr)]),
            TypeSet::of(&[TypeUrl::Endpoint]),
        );
    }
    for p in &proxies {
        wait_routed(&client, p.port, "a.example.com", "echo-a", CONVERGED).await;
    }
    for (i, t) in TypeUrl::ALL.iter().enumerate() {
        let after = pushes(&cp, *t);
        if *t == TypeUrl::Endpoint {
            assert!(
                after >= pushes_before[i] + 2.0,
                "eds pushes {} -> {after}",
                pushes_before[i]
            );
        } else {
            assert_eq!(
                after,
                pushes_before[i],
                "an invalid change pushed {}",
                t.short()
            );
        }
    }

    // Config dump by Istio proxy id (POD.NAMESPACE).
    let (status, dump) = cp.debug_get("/debug/config_dump?proxyID=sotw.edge");
    assert_eq!(status, 200, "{dump}");
    assert!(dump.contains(&cluster_name("c")));
    assert_eq!(cp.debug_get("/debug/config_dump?proxyID=nobody").0, 404);
    assert_eq!(cp.debug_get("/ready").0, 200);

    for p in &proxies {
        p.envoy.assert_no_rejections();
    }
}

/// A route Envoy refuses (RE2 rejects the regex).
fn with_bad_route(mut set: ResourceSet) -> ResourceSet {
    let route = &mut set.routes[0];
    let vh = &mut route.virtual_hosts[0];
    let mut bad = vh.routes[0].clone();
    bad.r#match = Some(
        meshgate::xds::json::from_json(&serde_json::json!({"safe_regex": {"regex": "(unclosed"}}))
            .unwrap(),
    );
    vh.routes.insert(0, bad);
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacking_proxy_does_not_stall_others_and_is_not_pushed_again() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let ports = [
        ("good", free_port()),
        ("bad-sotw", free_port()),
        ("bad-delta", free_port()),
    ];
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", a.addr)]),
            TypeSet::ALL,
        );
    }
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let proxies = [
        start_proxy("good", &cp.xds_addr(), ports[0].1, true),
        start_proxy("bad-sotw", &cp.xds_addr(), ports[1].1, false),
        start_proxy("bad-delta", &cp.xds_addr(), ports[2].1, true),
    ];
    cp.wait_synced(3, Duration::from_secs(5));

    // The bad proxies get a route configuration Envoy rejects, together with new
    // endpoints; the good one gets the new endpoints only.
    for (name, port) in ports {
        let set = gateway(port, &[("a", b.addr)]);
        let set = if name == "good" {
            set
        } else {
            with_bad_route(set)
        };
        source.set_for(labels(&[("proxy", name)]), set, TypeSet::ALL);
    }
    let client = http_client();
    for p in &proxies {
        // Endpoints are accepted everywhere; the bad route is not.
        wait_routed(&client, p.port, "a.example.com", "echo-b", CONVERGED).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cp.metric("pilot_total_xds_rejects{type=\"rds\"}") < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no NACKs seen: {:?}",
            cp.syncz()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let syncz = cp.syncz();
    for p in &syncz {
        let node = p["proxy_id"].as_str().unwrap();
        let rds = &p["types"]["rds"];
        if node.starts_with("bad") {
            assert_eq!(p["states"]["rds"], "NACKED", "{p}");
            let err = rds["nacked"]["error"].as_str().unwrap();
            assert!(!err.is_empty(), "{p}");
        } else {
            assert_eq!(p["states"]["rds"], "SYNCED", "{p}");
        }
    }

    // Another change for everyone (endpoints back to echo-a): the good proxy follows,
    // the bad ones take the endpoints too, and the rejected route is not sent again.
    let rds_pushes = pushes(&cp, TypeUrl::Route);
    for (name, port) in ports {
        let set = gateway(port, &[("a", a.addr)]);
        let set = if name == "good" {
            set
        } else {
            with_bad_route(set)
        };
        source.set_for(
            labels(&[("proxy", name)]),
            set,
            TypeSet::of(&[TypeUrl::Endpoint]),
        );
    }
    for p in &proxies {
        wait_routed(&client, p.port, "a.example.com", "echo-a", CONVERGED).await;
    }
    // A second endpoint change: it reaches each proxy after anything the first one
    // pushed (in ADS order, routes after endpoints) on the same stream.
    for (name, port) in ports {
        let set = gateway(port, &[("a", b.addr)]);
        let set = if name == "good" {
            set
        } else {
            with_bad_route(set)
        };
        source.set_for(
            labels(&[("proxy", name)]),
            set,
            TypeSet::of(&[TypeUrl::Endpoint]),
        );
    }
    for p in &proxies {
        wait_routed(&client, p.port, "a.example.com", "echo-b", CONVERGED).await;
    }
    assert_eq!(
        pushes(&cp, TypeUrl::Route),
        rds_pushes,
        "the rejected route was pushed again"
    );
    assert_eq!(cp.metric("pilot_total_xds_rejects{type=\"rds\"}"), 2.0);
    proxies[0].envoy.assert_no_rejections();

    // Fixing the route clears the NACK.
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", a.addr)]),
            TypeSet::ALL,
        );
    }
    cp.wait_synced(3, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_the_control_plane_fails_no_request() {
    let a = EchoUpstream::start("echo-a");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let ports = [("sotw", free_port()), ("delta", free_port())];
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            gateway(port, &[("a", a.addr)]),
            TypeSet::ALL,
        );
    }
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let xds_port = cp.xds_port;
    let xds_addr = cp.xds_addr();
    let proxies = [
        start_proxy("sotw", &xds_addr, ports[0].1, false),
        start_proxy("delta", &xds_addr, ports[1].1, true),
    ];
    cp.wait_synced(2, Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = http_client();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (_, port) in ports {
                    match get_via(&client, port, "a.example.com").await {
                        Ok((200, u)) if u == "echo-a" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        })
    };
    // Traffic before the kill, while both proxies know the control plane is gone, and
    // after it is back in sync.
    let grows = |by: usize, what: &str| {
        let from = ok.load(Ordering::Relaxed);
        wait_until(what, CONVERGED, || ok.load(Ordering::Relaxed) >= from + by);
    };
    grows(20, "traffic before the kill");
    cp.kill();
    wait_until("both proxies lost the control plane", CONVERGED, || {
        proxies
            .iter()
            .all(|p| p.envoy.stat("control_plane.connected_state") == Some(0))
    });
    let before_outage = ok.load(Ordering::Relaxed);
    grows(20, "traffic during the outage");
    let during_outage = ok.load(Ordering::Relaxed) - before_outage;
    let cp = TestControlPlane::start(source.clone(), xds_port, 0, test_options());
    cp.wait_synced(2, CONVERGED);
    grows(20, "traffic after the restart");
    stop.store(true, Ordering::Relaxed);
    let errors = traffic.await.unwrap();
    assert!(
        errors.is_empty(),
        "{} requests failed: {errors:?}",
        errors.len()
    );
    assert!(during_outage >= 20, "{during_outage}");

    // The delta proxy told the new control plane what it holds: no resource needed
    // sending. Its new wildcard subscriptions (CDS, LDS) are confirmed by an empty
    // response each, as go-control-plane and istiod answer them.
    let syncz = cp.syncz();
    let delta = syncz.iter().find(|p| p["mode"] == "delta").unwrap();
    for (t, state) in delta["states"].as_object().unwrap() {
        if matches!(t.as_str(), "cds" | "lds") {
            assert_eq!(state, "SYNCED", "{t}: {delta}");
            assert_eq!(
                delta["types"][t]["sent_resources"], 0,
                "delta proxy was sent {t} again after reconnecting: {delta}"
            );
        } else {
            assert_eq!(
                state, "NOT SENT",
                "delta proxy was sent {t} again after reconnecting: {delta}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_started_while_the_control_plane_is_down_becomes_ready() {
    let a = EchoUpstream::start("echo-a");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let port = free_port();
    source.set_for(
        labels(&[("proxy", "late")]),
        gateway(port, &[("a", a.addr)]),
        TypeSet::ALL,
    );
    let xds_port = free_port();
    let xds_addr = format!("127.0.0.1:{xds_port}");
    let dir = TempDir::new();
    let admin = free_port();
    let bootstrap = write_bootstrap(
        dir.path(),
        "late",
        &xds_addr,
        labels(&[("proxy", "late")]),
        true,
        admin,
    );
    let work = dir.path().to_path_buf();
    let starting = tokio::task::spawn_blocking(move || Envoy::start(&bootstrap, admin, &work));
    // Envoy is up and has tried the control plane (and failed to connect): it is not
    // ready, and waits.
    let stat = |name: &str| {
        blocking_http_get(("127.0.0.1", admin), "/stats")
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
    };
    wait_until("envoy tried the control plane", CONVERGED, || {
        stat("cluster.xds-grpc.upstream_cx_connect_fail").is_some_and(|n| n >= 1)
    });
    assert_eq!(stat("control_plane.connected_state"), Some(0));
    assert_ne!(
        blocking_http_get(("127.0.0.1", admin), "/ready").unwrap().0,
        200,
        "envoy became ready without a control plane"
    );
    assert!(!starting.is_finished());
    let cp = TestControlPlane::start(source, xds_port, 0, test_options());
    let envoy = starting.await.unwrap();
    let client = http_client();
    assert_eq!(
        get_via(&client, port, "a.example.com").await.unwrap(),
        (200, "echo-a".into())
    );
    cp.wait_synced(1, Duration::from_secs(5));
    envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_arrive_by_sds_on_the_ads_stream_and_rotate() {
    use meshgate::controlplane::sample::tls_secret;
    let a = EchoUpstream::start("echo-a");
    let cert = |cn: &str| {
        let ck =
            rcgen::generate_simple_self_signed(vec!["a.example.com".to_string(), cn.to_string()])
                .unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    };
    let tls_set = |port: u16, (c, k): &(String, String)| {
        let mut g = SampleGateway::new(port, vec![SampleService::new("a", vec![a.addr])]);
        g.tls_secret = Some("gw-cert".into());
        let mut set = g.resources();
        set.secrets.push(tls_secret("gw-cert", c, k));
        set
    };
    let first = cert("first.example.com");
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let ports = [("tls-sotw", free_port()), ("tls-delta", free_port())];
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            tls_set(port, &first),
            TypeSet::ALL,
        );
    }
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let proxies = [
        start_proxy("tls-sotw", &cp.xds_addr(), ports[0].1, false),
        start_proxy("tls-delta", &cp.xds_addr(), ports[1].1, true),
    ];
    cp.wait_synced(2, Duration::from_secs(5));
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .unwrap();
    for p in &proxies {
        let resp = client
            .get(format!("https://127.0.0.1:{}/", p.port))
            .header("host", "a.example.com")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", p.name));
        assert_eq!(resp.status(), 200, "{}", p.name);
        let (_, certs) = p.envoy.admin_get("/certs").unwrap();
        assert!(certs.contains("first.example.com"), "{}: {certs}", p.name);
    }
    assert!(cp.syncz().iter().all(|p| p["states"]["sds"] == "SYNCED"));

    // A new certificate: only the secret is pushed, and Envoy serves it.
    let sds_before = pushes(&cp, TypeUrl::Secret);
    let lds_before = pushes(&cp, TypeUrl::Listener);
    let second = cert("second.example.com");
    for (name, port) in ports {
        source.set_for(
            labels(&[("proxy", name)]),
            tls_set(port, &second),
            TypeSet::of(&[TypeUrl::Secret]),
        );
    }
    for p in &proxies {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let (_, certs) = p.envoy.admin_get("/certs").unwrap();
            if certs.contains("second.example.com") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: certificate not rotated: {certs}",
                p.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(pushes(&cp, TypeUrl::Secret), sds_before + 2.0);
    assert_eq!(pushes(&cp, TypeUrl::Listener), lds_before);
    for p in &proxies {
        p.envoy.assert_no_rejections();
    }
}
