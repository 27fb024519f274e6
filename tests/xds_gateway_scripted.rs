//! `meshgate gateway --xds` against a scripted minimal ADS server that is not meshgate's:
//! versions and nonces of its own choosing, inline and named resources, a NACK for what
//! the data plane cannot apply, and a dropped stream the gateway comes back to with what
//! it holds, serving its last configuration meanwhile.
mod support;
#[path = "support/translate.rs"]
mod translating;
use support::xds_mesh;

use meshgate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use meshgate::xds::pb::google::protobuf::Any;
use meshgate::xds::pb::google::protobuf::value::Kind;
use meshgate::xds::{ResourceSet, TypeUrl};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::gateway::{hcm_listener, resource_set, static_cluster};
use support::scripted_ads::*;
use support::*;
use xds_mesh::XdsGateway;

fn set(v: Value) -> ResourceSet {
    resource_set(&v)
}

fn route_to(cluster: &str) -> Value {
    json!({"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]})
}

/// GET / through `port`: the answering upstream.
fn upstream_via(port: u16) -> Option<String> {
    let (status, body) = blocking_http_get(("127.0.0.1", port), "/").ok()?;
    let echo: Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| echo["upstream"].as_str().unwrap_or("").to_string())
}

fn wait_upstream(port: u16, upstream: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_via(port).as_deref() != Some(upstream) {
        assert!(Instant::now() < deadline, "not routed to {upstream}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metadata_string<'a>(
    node: &'a meshgate::xds::pb::envoy::config::core::v3::Node,
    key: &str,
) -> Option<&'a str> {
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_gateway_with_a_scripted_server() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let mut server = ScriptedServer::start().await;
    let work = TempDir::new();
    let port = free_port();
    let mut gw = XdsGateway::spawn(
        "scripted",
        &server.addr.to_string(),
        "app=edge,istio=ingressgateway",
        "edge",
        false,
        work.path(),
    );
    let (mut reqs, out) = accept(&mut server.sotw).await;
    let send = |t: TypeUrl, version: &str, nonce: &str, resources: Vec<Any>| {
        out.try_send(Ok(DiscoveryResponse {
            type_url: t.as_str().into(),
            version_info: version.into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        }))
        .unwrap()
    };

    // The node, as Istio's agent would present a gateway.
    let first = until(&mut reqs, |_| true).await;
    let node = first.node.expect("the node on the first request");
    assert_eq!(
        node.id,
        "router~127.0.0.1~scripted.edge~edge.svc.cluster.local"
    );
    assert_eq!(node.user_agent_name, "meshgate");
    assert_eq!(metadata_string(&node, "NAMESPACE"), Some("edge"));
    assert_eq!(metadata_string(&node, "CLUSTER_ID"), Some("Kubernetes"));
    let labels = match node.metadata.as_ref().unwrap().fields["LABELS"]
        .kind
        .as_ref()
    {
        Some(Kind::StructValue(s)) => s.clone(),
        other => panic!("LABELS: {other:?}"),
    };
    assert!(
        matches!(labels.fields["app"].kind.as_ref(), Some(Kind::StringValue(s)) if s == "edge")
    );

    let up = set(json!({"clusters": [static_cluster("up", &[a.addr.port()], json!({}))]}));
    let listener =
        set(json!({"listeners": [hcm_listener("front", port, "routes", json!({}), vec![])]}));
    send(TypeUrl::Cluster, "1", "c1", vec![any(&up.clusters[0])]);
    send(
        TypeUrl::Listener,
        "1",
        "l1",
        vec![any(&listener.listeners[0])],
    );
    let rds = until(&mut reqs, |r| r.type_url == TypeUrl::Route.as_str()).await;
    assert_eq!(rds.resource_names, vec!["routes".to_string()]);
    assert_eq!(gw.health(), Some(503), "not ready before the routes arrive");
    let routes = set(json!({"routes": [route_to("up")]}));
    send(TypeUrl::Route, "1", "r1", vec![any(&routes.routes[0])]);
    gw.wait_ready(Duration::from_secs(10));
    wait_upstream(port, "echo-a");

    // An update in two types: the new cluster first, then the route to it.
    let both = set(json!({"clusters": [
        static_cluster("up", &[a.addr.port()], json!({})),
        static_cluster("up2", &[b.addr.port()], json!({})),
    ]}));
    send(
        TypeUrl::Cluster,
        "2",
        "c2",
        both.clusters.iter().map(any).collect(),
    );
    let ack = until(&mut reqs, |r| r.response_nonce == "c2").await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("2", None));
    send(
        TypeUrl::Route,
        "2",
        "r2",
        vec![any(&set(json!({"routes": [route_to("up2")]})).routes[0])],
    );
    let ack = until(&mut reqs, |r| r.response_nonce == "r2").await;
    assert_eq!(ack.version_info, "2");
    assert_eq!(ack.resource_names, vec!["routes".to_string()]);
    wait_upstream(port, "echo-b");

    // What the data plane cannot apply is NACKed with the resource and the field; the
    // NACK names the last accepted version and the gateway keeps serving.
    let mut bad = both.clone();
    bad.clusters.extend(
        set(
            json!({"clusters": [static_cluster("bad", &[a.addr.port()], json!({
                "lb_policy": "ROUND_ROBIN",
                "round_robin_lb_config": {},
                "lb_subset_config": {"fallback_policy": "ANY_ENDPOINT"},
            }))]}),
        )
        .clusters,
    );
    send(
        TypeUrl::Cluster,
        "3",
        "c3",
        bad.clusters.iter().map(any).collect(),
    );
    let nack = until(&mut reqs, |r| r.response_nonce == "c3").await;
    assert_eq!(nack.version_info, "2");
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.code, 13);
    assert_eq!(
        detail.message,
        "cds bad: lb_subset_config: field not supported by meshgate (see docs/xds-support.md)"
    );
    wait_upstream(port, "echo-b");

    // The server goes away: the gateway serves on, comes back, and says what it holds.
    drop(out);
    drop(reqs);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gw.log().contains("xDS stream ended") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(upstream_via(port).as_deref(), Some("echo-b"));
    assert_eq!(gw.health(), Some(200));
    let (mut reqs, _out) = accept(&mut server.sotw).await;
    let cds = until(&mut reqs, |r| r.type_url == TypeUrl::Cluster.as_str()).await;
    assert_eq!(
        cds.version_info, "2",
        "the reconnecting gateway names its version"
    );
    let rds = until(&mut reqs, |r| r.type_url == TypeUrl::Route.as_str()).await;
    assert_eq!(
        (rds.version_info.as_str(), rds.resource_names.as_slice()),
        ("2", &["routes".to_string()][..])
    );
    assert_eq!(upstream_via(port).as_deref(), Some("echo-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_gateway_with_a_scripted_server() {
    let a = EchoUpstream::start("echo-a");
    let b = EchoUpstream::start("echo-b");
    let mut server = ScriptedServer::start().await;
    let work = TempDir::new();
    let port = free_port();
    let mut gw = XdsGateway::spawn(
        "scripted-delta",
        &server.addr.to_string(),
        "istio=ingressgateway",
        "edge",
        true,
        work.path(),
    );
    let (mut reqs, out) = accept(&mut server.delta).await;
    let send = |t: TypeUrl, nonce: &str, resources: Vec<Resource>, removed: Vec<String>| {
        out.try_send(Ok(DeltaDiscoveryResponse {
            type_url: t.as_str().into(),
            system_version_info: format!("sys-{nonce}"),
            nonce: nonce.into(),
            resources,
            removed_resources: removed,
            ..Default::default()
        }))
        .unwrap()
    };
    let res = |name: &str, version: &str, any: Any| Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    };
    let cla = |port: u16| {
        set(
            json!({"endpoints": [{"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}]}),
        )
    };

    let first = until(&mut reqs, |_| true).await;
    assert!(first.node.is_some());
    let eds_cluster = set(
        json!({"clusters": [{"name": "svc", "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}]}),
    );
    send(
        TypeUrl::Cluster,
        "d1",
        vec![res("svc", "c-1", any(&eds_cluster.clusters[0]))],
        vec![],
    );
    let eds = until(&mut reqs, |r| {
        r.type_url == TypeUrl::Endpoint.as_str() && !r.resource_names_subscribe.is_empty()
    })
    .await;
    assert_eq!(eds.resource_names_subscribe, vec!["svc".to_string()]);
    send(
        TypeUrl::Endpoint,
        "d2",
        vec![res("svc", "e-1", any(&cla(a.addr.port()).endpoints[0]))],
        vec![],
    );
    let listener =
        set(json!({"listeners": [hcm_listener("front", port, "routes", json!({}), vec![])]}));
    send(
        TypeUrl::Listener,
        "d3",
        vec![res("front", "l-1", any(&listener.listeners[0]))],
        vec![],
    );
    let rds = until(&mut reqs, |r| {
        r.type_url == TypeUrl::Route.as_str() && !r.resource_names_subscribe.is_empty()
    })
    .await;
    assert_eq!(rds.resource_names_subscribe, vec!["routes".to_string()]);
    send(
        TypeUrl::Route,
        "d4",
        vec![res(
            "routes",
            "r-1",
            any(&set(json!({"routes": [route_to("svc")]})).routes[0]),
        )],
        vec![],
    );
    gw.wait_ready(Duration::from_secs(10));
    wait_upstream(port, "echo-a");

    // An endpoint-only update.
    send(
        TypeUrl::Endpoint,
        "d5",
        vec![res("svc", "e-2", any(&cla(b.addr.port()).endpoints[0]))],
        vec![],
    );
    let ack = until(&mut reqs, |r| r.response_nonce == "d5").await;
    assert!(ack.error_detail.is_none());
    wait_upstream(port, "echo-b");

    // A listener the data plane refuses, next to one it takes: one NACK naming it; the
    // good one is applied.
    let port2 = free_port();
    let mut broken = listener.listeners[0].clone();
    broken.name = "broken".into();
    broken.filter_chains.clear();
    let mut second =
        set(json!({"listeners": [hcm_listener("second", port2, "routes", json!({}), vec![])]}))
            .listeners;
    send(
        TypeUrl::Listener,
        "d6",
        vec![
            res("broken", "l-x", any(&broken)),
            res("second", "l-2", any(&second.remove(0))),
        ],
        vec![],
    );
    let nack = until(&mut reqs, |r| r.response_nonce == "d6").await;
    let message = nack.error_detail.expect("NACK").message;
    assert!(
        message.starts_with("lds broken: filter_chains:"),
        "{message}"
    );
    wait_upstream(port2, "echo-b");
    wait_upstream(port, "echo-b");

    // Removing the second listener closes its port.
    send(TypeUrl::Listener, "d7", vec![], vec!["second".into()]);
    until(&mut reqs, |r| r.response_nonce == "d7").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port2)).is_ok() {
        assert!(Instant::now() < deadline, "removed listener still bound");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Reconnecting, the gateway lists the versions it holds, and the server need only
    // confirm; what was refused is not among them.
    drop(out);
    drop(reqs);
    let (mut reqs, out) = accept(&mut server.delta).await;
    let mut held = std::collections::BTreeMap::new();
    while held.len() < 4 {
        let r = until(&mut reqs, |r| r.response_nonce.is_empty()).await;
        held.insert(r.type_url.clone(), r.initial_resource_versions);
    }
    assert_eq!(
        held[TypeUrl::Cluster.as_str()],
        [("svc".to_string(), "c-1".to_string())].into()
    );
    assert_eq!(
        held[TypeUrl::Endpoint.as_str()],
        [("svc".to_string(), "e-2".to_string())].into()
    );
    assert_eq!(
        held[TypeUrl::Listener.as_str()],
        [("front".to_string(), "l-1".to_string())].into()
    );
    assert_eq!(
        held[TypeUrl::Route.as_str()],
        [("routes".to_string(), "r-1".to_string())].into()
    );
    // Empty answers: nothing changed while away.
    for (t, nonce) in [(TypeUrl::Cluster, "e1"), (TypeUrl::Listener, "e2")] {
        out.try_send(Ok(DeltaDiscoveryResponse {
            type_url: t.as_str().into(),
            nonce: nonce.into(),
            ..Default::default()
        }))
        .unwrap();
        until(&mut reqs, |r| r.response_nonce == nonce).await;
    }
    assert_eq!(upstream_via(port).as_deref(), Some("echo-b"));
    assert_eq!(gw.health(), Some(200));
}

/// The initial fetch timeout these tests give the gateway.
const INITIAL_FETCH: Duration = Duration::from_secs(1);

/// Polls until the gateway is ready; returns when, and the status of GET / through `port`
/// then.
fn ready_and_answering(gw: &mut XdsGateway, port: u16) -> (Instant, u16) {
    gw.wait_ready(Duration::from_secs(10));
    let ready_at = Instant::now();
    let (status, _) = blocking_http_get(("127.0.0.1", port), "/").expect("the listener is bound");
    (ready_at, status)
}

/// The gateway's warnings about the initial fetch timeout.
fn timeout_warnings(gw: &XdsGateway) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|l| l.contains("initial fetch timeout"))
        .map(str::to_string)
        .collect()
}

/// A route configuration that never comes: after the initial fetch timeout the first
/// sync completes without it, the listener binds and answers 404 (an empty route table,
/// as Envoy's), and the route is applied when it finally arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_first_sync_gives_up_on_a_route_that_never_comes() {
    let a = EchoUpstream::start("echo-a");
    let mut server = ScriptedServer::start().await;
    let work = TempDir::new();
    let port = free_port();
    let mut gw = XdsGateway::spawn_with(
        "late-route",
        &server.addr.to_string(),
        "istio=ingressgateway",
        "edge",
        true,
        work.path(),
        &["--xds-initial-fetch-timeout", "1"],
    );
    let (mut reqs, out) = accept(&mut server.delta).await;
    let send = |t: TypeUrl, nonce: &str, resources: Vec<Resource>| {
        out.try_send(Ok(DeltaDiscoveryResponse {
            type_url: t.as_str().into(),
            system_version_info: nonce.into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        }))
        .unwrap()
    };
    until(&mut reqs, |r| r.type_url == TypeUrl::Listener.as_str()).await;
    let up = set(json!({"clusters": [static_cluster("up", &[a.addr.port()], json!({}))]}));
    send(
        TypeUrl::Cluster,
        "c1",
        vec![res("up", "1", &up.clusters[0])],
    );
    let listener =
        set(json!({"listeners": [hcm_listener("front", port, "routes", json!({}), vec![])]}));
    // The route's timer starts when the gateway subscribes to it, after this.
    let lds_sent = Instant::now();
    send(
        TypeUrl::Listener,
        "l1",
        vec![res("front", "1", &listener.listeners[0])],
    );
    let rds = until(&mut reqs, |r| {
        r.type_url == TypeUrl::Route.as_str() && !r.resource_names_subscribe.is_empty()
    })
    .await;
    assert_eq!(rds.resource_names_subscribe, vec!["routes".to_string()]);

    let (ready_at, status) = ready_and_answering(&mut gw, port);
    let waited = ready_at - lds_sent;
    assert!(
        waited >= INITIAL_FETCH,
        "ready after {waited:?}, before the timeout"
    );
    assert_eq!(status, 404, "no route table yet");
    let warnings = timeout_warnings(&gw);
    eprintln!("ready after {waited:?}; {warnings:?}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("rds/routes") && !warnings[0].contains("cds"),
        "{warnings:?}"
    );

    // The route comes late, and is applied as any update.
    send(
        TypeUrl::Route,
        "r1",
        vec![res(
            "routes",
            "1",
            &set(json!({"routes": [route_to("up")]})).routes[0],
        )],
    );
    let ack = until(&mut reqs, |r| r.response_nonce == "r1").await;
    assert!(ack.error_detail.is_none());
    wait_upstream(port, "echo-a");
    assert_eq!(gw.health(), Some(200));
}

/// A server that never answers CDS: after the initial fetch timeout the gateway serves
/// its listener and routes, with no cluster behind them (503), and takes the clusters
/// when they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_first_sync_gives_up_on_clusters_that_never_come() {
    let a = EchoUpstream::start("echo-a");
    let mut server = ScriptedServer::start().await;
    let work = TempDir::new();
    let port = free_port();
    let spawned = Instant::now();
    let mut gw = XdsGateway::spawn_with(
        "late-clusters",
        &server.addr.to_string(),
        "istio=ingressgateway",
        "edge",
        false,
        work.path(),
        &["--xds-initial-fetch-timeout", "1"],
    );
    let (mut reqs, out) = accept(&mut server.sotw).await;
    let send = |t: TypeUrl, version: &str, resources: Vec<Any>| {
        out.try_send(Ok(DiscoveryResponse {
            type_url: t.as_str().into(),
            version_info: version.into(),
            nonce: format!("{}-{version}", t.short()),
            resources,
            ..Default::default()
        }))
        .unwrap()
    };
    until(&mut reqs, |r| r.type_url == TypeUrl::Listener.as_str()).await;
    let listener =
        set(json!({"listeners": [hcm_listener("front", port, "routes", json!({}), vec![])]}));
    send(TypeUrl::Listener, "1", vec![any(&listener.listeners[0])]);
    until(&mut reqs, |r| r.type_url == TypeUrl::Route.as_str()).await;
    send(
        TypeUrl::Route,
        "1",
        vec![any(&set(json!({"routes": [route_to("up")]})).routes[0])],
    );

    let (ready_at, status) = ready_and_answering(&mut gw, port);
    // The CDS timer started when the stream did, after the process started.
    let waited = ready_at - spawned;
    assert!(
        waited >= INITIAL_FETCH,
        "ready after {waited:?}, before the timeout"
    );
    assert_eq!(status, 503, "no cluster yet");
    // Envoy's answer for a route to a cluster it does not have: 503, empty body (NC).
    let resp = http_client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.text().await.unwrap(),
        "",
        "cluster not found has no body"
    );
    let warnings = timeout_warnings(&gw);
    eprintln!("ready after {waited:?}; {warnings:?}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("subscriptions=cds") && !warnings[0].contains("rds"),
        "{warnings:?}"
    );

    // The clusters come late and traffic flows.
    let up = set(json!({"clusters": [static_cluster("up", &[a.addr.port()], json!({}))]}));
    send(TypeUrl::Cluster, "1", vec![any(&up.clusters[0])]);
    let ack = until(&mut reqs, |r| r.response_nonce == "cds-1").await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("1", None));
    wait_upstream(port, "echo-a");
    assert_eq!(gw.health(), Some(200));
}

/// The initial fetch timers start when the connection does: a gateway started long
/// before its server waits for it, then gives the server the full timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_fetch_timer_starts_with_the_connection() {
    let xds_port = free_port();
    let work = TempDir::new();
    let port = free_port();
    let mut gw = XdsGateway::spawn_with(
        "before-server",
        &format!("127.0.0.1:{xds_port}"),
        "istio=ingressgateway",
        "edge",
        true,
        work.path(),
        &["--xds-initial-fetch-timeout", "1"],
    );
    // Longer than the timeout, with no server.
    tokio::time::sleep(INITIAL_FETCH + Duration::from_millis(500)).await;
    assert_eq!(gw.health(), Some(503), "not ready without a server");
    assert!(timeout_warnings(&gw).is_empty());

    let mut server = ScriptedServer::start_on(([127, 0, 0, 1], xds_port).into()).await;
    let (mut reqs, out) = accept(&mut server.delta).await;
    let connected = Instant::now();
    until(&mut reqs, |r| r.type_url == TypeUrl::Listener.as_str()).await;
    // Listeners come, clusters never do.
    let direct = set(
        json!({"listeners": [hcm_listener("front", port, "routes", json!({}), vec![])],
        "routes": [{"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 204}}]}]}]}),
    );
    out.try_send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Listener.as_str().into(),
        nonce: "l1".into(),
        resources: vec![res("front", "1", &direct.listeners[0])],
        ..Default::default()
    }))
    .unwrap();
    until(&mut reqs, |r| r.type_url == TypeUrl::Route.as_str()).await;
    out.try_send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Route.as_str().into(),
        nonce: "r1".into(),
        resources: vec![res("routes", "1", &direct.routes[0])],
        ..Default::default()
    }))
    .unwrap();
    let (ready_at, status) = ready_and_answering(&mut gw, port);
    // Had the timer started with the process, CDS would have been given up on as soon
    // as the routes came.
    let waited = ready_at - connected;
    let warnings = timeout_warnings(&gw);
    eprintln!("ready {waited:?} after the connection; {warnings:?}");
    assert!(
        waited >= INITIAL_FETCH / 2,
        "ready {waited:?} after connecting: the timer ran before the connection"
    );
    assert_eq!(status, 204);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("subscriptions=cds"), "{warnings:?}");
}

#[test]
fn the_initial_fetch_timeout_is_a_number_of_seconds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args([
            "gateway",
            "--xds",
            "127.0.0.1:1",
            "--xds-initial-fetch-timeout=-1",
        ])
        .output()
        .expect("meshgate");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--xds-initial-fetch-timeout"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["gateway", "--xds-initial-fetch-timeout", "3"])
        .output()
        .expect("meshgate");
    assert_eq!(
        out.status.code(),
        Some(2),
        "--xds-initial-fetch-timeout needs --xds"
    );
}

#[test]
fn config_and_xds_are_mutually_exclusive() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args([
            "gateway",
            "--config",
            "gateway-config/quickstart",
            "--xds",
            "127.0.0.1:15010",
        ])
        .output()
        .expect("meshgate");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["gateway", "--xds-sotw"])
        .output()
        .expect("meshgate");
    assert_eq!(out.status.code(), Some(2), "--xds-sotw needs --xds");
}

/// An HTTPS listener on `port` with one filter chain per (SNI, SDS secret), each
/// terminating TLS with that secret from ADS.
fn tls_listener(name: &str, port: u16, chains: &[(&str, &str)], stat_prefix: &str) -> Value {
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "rds": {"route_config_name": "routes", "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    });
    let chains: Vec<Value> = chains
        .iter()
        .map(|(sni, secret)| {
            json!({
                "filter_chain_match": {"server_names": [sni]},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [
                        {"name": secret, "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}}},
            })
        })
        .collect();
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": chains,
    })
}

/// A TLS certificate secret for `host` (self-signed, made now): the resource and the
/// certificate's DER.
fn tls_secret(
    name: &str,
    host: &str,
) -> (
    meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    Vec<u8>,
) {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let der = ck.cert.der().to_vec();
    let secret = set(json!({"secrets": [{"name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": ck.cert.pem()},
        "private_key": {"inline_string": ck.signing_key.serialize_pem()}}}]}))
    .secrets
    .remove(0);
    (secret, der)
}

/// The certificate served for `sni` on a new connection to `port` (None: no handshake).
async fn served(port: u16, sni: &str) -> Option<Vec<u8>> {
    let s = translating::tls_connect(port, sni, &[], None).await.ok()?;
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

/// A counter of the gateway's `/stats`.
fn gw_stat(gw: &XdsGateway, name: &str) -> u64 {
    let (_, body) = gw.admin("/stats").expect("admin answers");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}:\n{body}"))
}

/// A TLS listener whose SDS secrets have not arrived warms, as Envoy's does: the first
/// sync waits for them (not ready, the port not bound) until the initial fetch timeout;
/// then the listener serves the chains it has certificates for, and resets the others,
/// with ONE log line per missing secret however often the listener is pushed again.
/// Secrets that come later, and new versions of them, reach the next handshakes
/// without any listener being compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_tls_listener_warms_for_its_secrets_and_secrets_rotate_without_a_rebuild() {
    let a = EchoUpstream::start("echo-a");
    let mut server = ScriptedServer::start().await;
    let work = TempDir::new();
    let port = free_port();
    let mut gw = XdsGateway::spawn_with(
        "warming",
        &server.addr.to_string(),
        "istio=ingressgateway",
        "edge",
        true,
        work.path(),
        &["--xds-initial-fetch-timeout", "3"],
    );
    let (mut reqs, out) = accept(&mut server.delta).await;
    let send = |t: TypeUrl, nonce: &str, resources: Vec<Resource>| {
        out.try_send(Ok(DeltaDiscoveryResponse {
            type_url: t.as_str().into(),
            system_version_info: nonce.into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        }))
        .unwrap()
    };
    until(&mut reqs, |r| r.type_url == TypeUrl::Listener.as_str()).await;
    let up = set(json!({"clusters": [static_cluster("up", &[a.addr.port()], json!({}))]}));
    send(
        TypeUrl::Cluster,
        "c1",
        vec![res("up", "1", &up.clusters[0])],
    );
    let chains = [("a.example.com", "cert-a"), ("b.example.com", "cert-b")];
    let listener = |prefix: &str| {
        set(json!({"listeners": [tls_listener("https", port, &chains, prefix)]}))
            .listeners
            .remove(0)
    };
    // cert-b's initial fetch timer starts when the gateway subscribes, after this.
    let lds_sent = Instant::now();
    send(
        TypeUrl::Listener,
        "l1",
        vec![res("https", "1", &listener("v1"))],
    );
    let mut subscribed = std::collections::BTreeSet::new();
    let mut routes_asked = false;
    while subscribed.len() < 2 || !routes_asked {
        let r = next(&mut reqs).await;
        if r.type_url == TypeUrl::Secret.as_str() {
            subscribed.extend(r.resource_names_subscribe);
        } else if r.type_url == TypeUrl::Route.as_str() && !r.resource_names_subscribe.is_empty() {
            routes_asked = true;
        }
    }
    assert_eq!(
        subscribed.into_iter().collect::<Vec<_>>(),
        vec!["cert-a".to_string(), "cert-b".to_string()]
    );
    send(
        TypeUrl::Route,
        "r1",
        vec![res(
            "routes",
            "1",
            &set(json!({"routes": [route_to("up")]})).routes[0],
        )],
    );
    let ack = until(&mut reqs, |r| r.response_nonce == "r1").await;
    assert!(ack.error_detail.is_none());
    let (secret_a, der_a) = tls_secret("cert-a", "a.example.com");
    send(TypeUrl::Secret, "s1", vec![res("cert-a", "1", &secret_a)]);
    let ack = until(&mut reqs, |r| r.response_nonce == "s1").await;
    assert!(ack.error_detail.is_none());
    // Everything but cert-b is here: the listener is still warming.
    if lds_sent.elapsed() < INITIAL_FETCH * 3 {
        assert_ne!(gw.health(), Some(200), "ready while a secret is awaited");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the listener is bound while warming"
        );
    }
    // The initial fetch timeout gives up on cert-b: the listener serves a.example.com
    // and resets b.example.com.
    gw.wait_ready(Duration::from_secs(10));
    assert!(
        lds_sent.elapsed() >= INITIAL_FETCH * 3,
        "ready before the timeout"
    );
    assert_eq!(served(port, "a.example.com").await, Some(der_a.clone()));
    assert_eq!(served(port, "b.example.com").await, None);
    // The listener pushed twice more (each compiled): still one line about cert-b.
    for (nonce, prefix) in [("l2", "v2"), ("l3", "v3")] {
        send(
            TypeUrl::Listener,
            nonce,
            vec![res("https", nonce, &listener(prefix))],
        );
        let ack = until(&mut reqs, |r| r.response_nonce == nonce).await;
        assert!(ack.error_detail.is_none());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw_stat(&gw, "meshgate.config_updates") < 3 {
        assert!(
            Instant::now() < deadline,
            "listener updates not applied:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing_lines = |gw: &XdsGateway| {
        gw.log()
            .lines()
            .filter(|l| l.contains("no certificate yet") && l.contains("cert-b"))
            .count()
    };
    assert_eq!(missing_lines(&gw), 1, "{}", gw.log());
    assert!(
        !gw.log()
            .lines()
            .any(|l| l.contains("no certificate yet") && l.contains("cert-a")),
        "{}",
        gw.log()
    );

    // cert-b arrives, then a new cert-a: both reach new handshakes; no listener is
    // compiled for them.
    let builds = gw_stat(&gw, "meshgate.config_updates");
    let (secret_b, der_b) = tls_secret("cert-b", "b.example.com");
    send(TypeUrl::Secret, "s2", vec![res("cert-b", "1", &secret_b)]);
    until(&mut reqs, |r| r.response_nonce == "s2").await;
    assert_eq!(served(port, "b.example.com").await, Some(der_b));
    let (secret_a2, der_a2) = tls_secret("cert-a", "a.example.com");
    send(TypeUrl::Secret, "s3", vec![res("cert-a", "2", &secret_a2)]);
    let ack = until(&mut reqs, |r| r.response_nonce == "s3").await;
    assert!(ack.error_detail.is_none());
    assert_eq!(served(port, "a.example.com").await, Some(der_a2.clone()));
    assert_eq!(gw_stat(&gw, "meshgate.config_updates"), builds);
    assert_eq!(missing_lines(&gw), 1);
    // A secret that cannot be used is NACKed with its name; the old one keeps serving.
    let mut broken = tls_secret("cert-a", "a.example.com").0;
    if let Some(meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(tc)) = &mut broken.r#type {
        tc.private_key = secret_b.r#type.as_ref().and_then(|t| match t {
            meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(b) => b.private_key.clone(),
            _ => None,
        });
    }
    send(TypeUrl::Secret, "s4", vec![res("cert-a", "3", &broken)]);
    let nack = until(&mut reqs, |r| r.response_nonce == "s4").await;
    let message = nack.error_detail.expect("NACK").message;
    assert!(message.starts_with("sds cert-a:"), "{message}");
    assert_eq!(served(port, "a.example.com").await, Some(der_a2));
    assert_eq!(gw_stat(&gw, "meshgate.config_updates"), builds);
}
