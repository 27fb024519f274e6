//! meshgate's ADS client against meshgate's control plane (delta and SotW) and against a
//! scripted server that does what other conforming servers may do.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;

use cp_support::*;
use meshgate::controlplane::sample::{
    SampleGateway, SampleService, cluster_name, eds_cluster, load_assignment,
};
use meshgate::controlplane::{StaticSource, TypeSet};
use meshgate::xds::client::{ClientOptions, ConfigConsumer, Rejection, XdsClient};
use meshgate::xds::pb::envoy::config::core::v3::Node;
use meshgate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use meshgate::xds::pb::google::protobuf::Any;
use meshgate::xds::{ProxyIdentity, ResourceSet, TypeUrl};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::scripted_ads::*;

/// A consumer that records what it is given and rejects clusters whose name contains
/// `reject`.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<Arc<ResourceSet>>>,
}

impl ConfigConsumer for Recorder {
    fn check(&self, candidate: &ResourceSet) -> Vec<Rejection> {
        candidate
            .clusters
            .iter()
            .filter(|c| c.name.contains("reject"))
            .map(|c| Rejection {
                type_url: TypeUrl::Cluster,
                name: c.name.clone(),
                message: "cluster names containing `reject` are not supported".into(),
            })
            .collect()
    }
    fn apply(&self, set: Arc<ResourceSet>) {
        self.applied.lock().unwrap().push(set);
    }
}

impl Recorder {
    fn last(&self) -> Option<Arc<ResourceSet>> {
        self.applied.lock().unwrap().last().cloned()
    }
    fn count(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

fn node(name: &str) -> Node {
    let mut identity = ProxyIdentity {
        namespace: "edge".into(),
        ..Default::default()
    };
    identity.labels.insert("proxy".into(), name.into());
    Node {
        id: format!("router~127.0.0.1~{name}.edge~edge.svc.cluster.local"),
        metadata: Some(meshgate::controlplane::node::istio_metadata(&identity, "")),
        ..Default::default()
    }
}

fn gateway(services: &[(&str, u16)]) -> ResourceSet {
    SampleGateway::new(
        8080,
        services
            .iter()
            .map(|(n, p)| SampleService::new(n, vec![SocketAddr::from(([127, 0, 0, 1], *p))]))
            .collect(),
    )
    .resources()
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast(mut o: ClientOptions, delta: bool) -> ClientOptions {
    o.delta = delta;
    o.backoff_initial = Duration::from_millis(50);
    o.backoff_max = Duration::from_millis(400);
    o
}

async fn against_meshgate(delta: bool) {
    let source = Arc::new(StaticSource::new(ResourceSet::default()));
    let name = if delta { "client-delta" } else { "client-sotw" };
    let sel = labels(&[("proxy", name)]);
    source.set_for(
        sel.clone(),
        gateway(&[("a", 9001), ("b", 9002)]),
        TypeSet::ALL,
    );
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let xds_port = cp.xds_port;

    let recorder = Arc::new(Recorder::default());
    let client = XdsClient::new(
        fast(ClientOptions::new(&cp.xds_addr(), node(name)), delta),
        recorder.clone(),
    );
    let mut handle = client.handle();
    let task = tokio::spawn(client.run());
    tokio::time::timeout(Duration::from_secs(5), handle.wait_ready())
        .await
        .expect("ready");
    // The first applied set is the complete one.
    assert_eq!(
        *recorder.last().unwrap(),
        gateway(&[("a", 9001), ("b", 9002)])
    );
    assert_eq!(recorder.count(), 1);
    cp.wait_synced(1, Duration::from_secs(5));

    // A change converges.
    source.set_for(
        sel.clone(),
        gateway(&[("a", 9001), ("c", 9003)]),
        TypeSet::ALL,
    );
    eventually("the change", Duration::from_secs(3), || {
        recorder
            .last()
            .is_some_and(|s| *s == gateway(&[("a", 9001), ("c", 9003)]))
    })
    .await;
    cp.wait_synced(1, Duration::from_secs(5));

    // A cluster the consumer cannot apply: ONE NACK naming it, the rest applied, the
    // rejected cluster never recorded.
    let mut with_bad = gateway(&[("a", 9001), ("c", 9003)]);
    with_bad.clusters.push(eds_cluster("reject-me"));
    with_bad.endpoints.push(load_assignment(
        "reject-me",
        &[SocketAddr::from(([127, 0, 0, 1], 9009))],
    ));
    with_bad.clusters.push(eds_cluster("also-reject"));
    with_bad.endpoints.push(load_assignment(
        "also-reject",
        &[SocketAddr::from(([127, 0, 0, 1], 9010))],
    ));
    with_bad.sort();
    source.set_for(sel.clone(), with_bad.clone(), TypeSet::ALL);
    eventually("the NACK", Duration::from_secs(3), || {
        cp.syncz()
            .first()
            .is_some_and(|p| p["states"]["cds"] == "NACKED")
    })
    .await;
    let syncz = cp.syncz();
    let err = syncz[0]["types"]["cds"]["nacked"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cds reject-me: cluster names containing `reject`"),
        "{err}"
    );
    assert!(err.contains("cds also-reject:"), "{err}");
    assert_eq!(handle.status().types["cds"].nacks, 1);
    let last = recorder.last().unwrap();
    assert!(last.clusters.iter().all(|c| !c.name.contains("reject")));
    assert!(last.cluster(&cluster_name("a")).is_some());
    // Not re-sent in a loop: a later change (a's endpoint moves) reaches the client on
    // the same stream after any re-sent clusters would have, and is applied with no
    // second NACK.
    let mut moved = with_bad.clone();
    moved
        .endpoints
        .retain(|e| e.cluster_name != cluster_name("a"));
    moved.endpoints.push(load_assignment(
        &cluster_name("a"),
        &[SocketAddr::from(([127, 0, 0, 1], 9011))],
    ));
    moved.sort();
    source.set_for(sel.clone(), moved, TypeSet::ALL);
    eventually("the moved endpoint", Duration::from_secs(5), || {
        recorder.last().is_some_and(|s| {
            s.endpoints
                .iter()
                .any(|e| e.cluster_name == cluster_name("a") && format!("{e:?}").contains("9011"))
        })
    })
    .await;
    assert_eq!(handle.status().types["cds"].nacks, 1);
    assert_eq!(cp.metric("pilot_total_xds_rejects{type=\"cds\"}"), 1.0);

    // The control plane goes away: the last configuration stays; it comes back: the
    // client reconnects and re-subscribes with what it holds.
    let applied_before = recorder.count();
    cp.kill();
    eventually("the client notices", Duration::from_secs(5), || {
        !handle.status().connected
    })
    .await;
    assert!(handle.is_ready());
    source.set_for(
        sel.clone(),
        gateway(&[("a", 9001), ("d", 9004)]),
        TypeSet::ALL,
    );
    let cp = TestControlPlane::start(source.clone(), xds_port, 0, test_options());
    eventually("reconnect", Duration::from_secs(5), || {
        handle.status().connects >= 2
    })
    .await;
    eventually(
        "the change made while disconnected",
        Duration::from_secs(5),
        || {
            recorder
                .last()
                .is_some_and(|s| *s == gateway(&[("a", 9001), ("d", 9004)]))
        },
    )
    .await;
    assert!(recorder.count() > applied_before);
    cp.wait_synced(1, Duration::from_secs(5));
    if delta {
        // Only differences were sent: the listener did not change, so the new wildcard
        // LDS subscription was confirmed with an empty response.
        let syncz = cp.syncz();
        assert_eq!(syncz[0]["types"]["lds"]["sent_resources"], 0, "{syncz:?}");
        assert_eq!(syncz[0]["states"]["lds"], "SYNCED", "{syncz:?}");
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_client_against_meshgate() {
    against_meshgate(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_client_against_meshgate() {
    against_meshgate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_client_edge_cases_with_a_scripted_server() {
    let mut server = ScriptedServer::start().await;
    let recorder = Arc::new(Recorder::default());
    let client = XdsClient::new(
        fast(
            ClientOptions::new(&server.addr.to_string(), node("x")),
            true,
        ),
        recorder.clone(),
    );
    let handle = client.handle();
    let task = tokio::spawn(client.run());

    let (mut reqs, out) = accept(&mut server.delta).await;
    let first = next(&mut reqs).await;
    assert_eq!(first.type_url, TypeUrl::Cluster.as_str());
    assert!(first.node.is_some(), "the node goes on the first request");
    assert!(
        first.resource_names_subscribe.is_empty(),
        "CDS is a wildcard subscription"
    );
    let lds = next(&mut reqs).await;
    assert_eq!(lds.type_url, TypeUrl::Listener.as_str());
    assert!(lds.node.is_none());

    let set = gateway(&[("a", 9001)]);
    let ca = cluster_name("a");
    // CDS with a good cluster, a garbage one and one of the wrong type: one NACK names both bad ones.
    let garbage = Resource {
        name: "garbage".into(),
        version: "g1".into(),
        resource: Some(Any {
            type_url: TypeUrl::Cluster.as_str().into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    };
    let wrong = res("wrong", "w1", &set.listeners[0]);
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Cluster.as_str().into(),
        nonce: "n1".into(),
        resources: vec![res(&ca, "c1", &set.clusters[0]), garbage, wrong],
        ..Default::default()
    }))
    .await
    .unwrap();
    let nack = until(&mut reqs, |r| r.response_nonce == "n1").await;
    let detail = nack.error_detail.expect("NACK");
    assert_eq!(detail.code, 13);
    assert!(
        detail.message.contains("cds garbage: cannot decode"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains(
            "cds wrong: resource is a type.googleapis.com/envoy.config.listener.v3.Listener"
        ),
        "{}",
        detail.message
    );
    // The good cluster was accepted: its endpoints are subscribed to.
    let eds = until(&mut reqs, |r| r.type_url == TypeUrl::Endpoint.as_str()).await;
    assert_eq!(eds.resource_names_subscribe, vec![ca.clone()]);

    // An unknown type is refused, not fatal.
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into(),
        nonce: "n2".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let refused = until(&mut reqs, |r| r.response_nonce == "n2").await;
    assert!(refused.error_detail.is_some());

    // LDS, then EDS for a name not subscribed (ignored) plus the real one; RDS answered
    // as not existing via removed_resources: the client is ready without it.
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Listener.as_str().into(),
        nonce: "n3".into(),
        resources: vec![res(&set.listeners[0].name, "l1", &set.listeners[0])],
        ..Default::default()
    }))
    .await
    .unwrap();
    let rds = until(&mut reqs, |r| {
        r.type_url == TypeUrl::Route.as_str() && !r.resource_names_subscribe.is_empty()
    })
    .await;
    assert_eq!(rds.resource_names_subscribe, vec!["http.8080".to_string()]);
    assert!(
        !handle.is_ready(),
        "ready before endpoints and routes arrived"
    );
    let stray = load_assignment("stray", &[SocketAddr::from(([127, 0, 0, 1], 1))]);
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Endpoint.as_str().into(),
        nonce: "n4".into(),
        resources: vec![
            res(&ca, "e1", &set.endpoints[0]),
            res("stray", "s1", &stray),
        ],
        ..Default::default()
    }))
    .await
    .unwrap();
    until(&mut reqs, |r| {
        r.response_nonce == "n4" && r.error_detail.is_none()
    })
    .await;
    assert!(!handle.is_ready());
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: TypeUrl::Route.as_str().into(),
        nonce: "n5".into(),
        removed_resources: vec!["http.8080".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    until(&mut reqs, |r| r.response_nonce == "n5").await;
    eventually("ready", Duration::from_secs(3), || handle.is_ready()).await;
    let applied = recorder.last().unwrap();
    assert_eq!(applied.clusters.len(), 1);
    assert_eq!(applied.endpoints.len(), 1, "the stray assignment was kept");
    assert!(applied.routes.is_empty());

    // The server goes away: the client reconnects with what it accepted, never the
    // rejected resources.
    drop(out);
    drop(reqs);
    let (mut reqs, _out) = accept(&mut server.delta).await;
    let mut initial = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let r = next(&mut reqs).await;
        initial.insert(
            r.type_url.clone(),
            (
                r.resource_names_subscribe.clone(),
                r.initial_resource_versions.clone(),
            ),
        );
    }
    let (_, cds_versions) = &initial[TypeUrl::Cluster.as_str()];
    assert_eq!(cds_versions.len(), 1);
    assert_eq!(cds_versions[&ca], "c1");
    let (eds_names, eds_versions) = &initial[TypeUrl::Endpoint.as_str()];
    assert_eq!(eds_names, &vec![ca.clone()]);
    assert_eq!(eds_versions[&ca], "e1");
    assert!(initial.contains_key(TypeUrl::Listener.as_str()));
    assert!(handle.is_ready());
    assert_eq!(recorder.count(), 1, "nothing applied by reconnecting");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_client_acks_nacks_and_versions_with_a_scripted_server() {
    let mut server = ScriptedServer::start().await;
    let recorder = Arc::new(Recorder::default());
    let client = XdsClient::new(
        fast(
            ClientOptions::new(&server.addr.to_string(), node("x")),
            false,
        ),
        recorder.clone(),
    );
    let handle = client.handle();
    let task = tokio::spawn(client.run());
    let (mut reqs, out) = accept(&mut server.sotw).await;
    let set = gateway(&[("a", 9001)]);
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
    send(TypeUrl::Cluster, "v1", "n1", vec![any(&set.clusters[0])]);
    let ack = until(&mut reqs, |r| r.response_nonce == "n1").await;
    assert_eq!(ack.version_info, "v1");
    assert!(ack.error_detail.is_none());
    let eds = until(&mut reqs, |r| r.type_url == TypeUrl::Endpoint.as_str()).await;
    assert_eq!(eds.resource_names, vec![cluster_name("a")]);
    send(TypeUrl::Endpoint, "e1", "n2", vec![any(&set.endpoints[0])]);
    send(TypeUrl::Listener, "l1", "n3", vec![any(&set.listeners[0])]);
    let rds = until(&mut reqs, |r| {
        r.type_url == TypeUrl::Route.as_str() && r.response_nonce.is_empty()
    })
    .await;
    assert_eq!(rds.resource_names, vec!["http.8080".to_string()]);
    send(TypeUrl::Route, "r1", "n4", vec![any(&set.routes[0])]);
    until(&mut reqs, |r| r.response_nonce == "n4").await;
    eventually("ready", Duration::from_secs(3), || handle.is_ready()).await;
    assert_eq!(*recorder.last().unwrap(), set);

    // A bad CDS update: NACK carries the last accepted version and the same nonce.
    let bad = eds_cluster("reject-this");
    send(
        TypeUrl::Cluster,
        "v2",
        "n5",
        vec![any(&set.clusters[0]), any(&bad)],
    );
    let nack = until(&mut reqs, |r| r.response_nonce == "n5").await;
    assert_eq!(nack.version_info, "v1");
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("cds reject-this")
    );
    // A CDS list that leaves the cluster out removes it (and its endpoints subscription).
    send(TypeUrl::Cluster, "v3", "n6", vec![]);
    let ack = until(&mut reqs, |r| r.response_nonce == "n6").await;
    assert_eq!(ack.version_info, "v3");
    let eds = until(&mut reqs, |r| r.type_url == TypeUrl::Endpoint.as_str()).await;
    assert!(eds.resource_names.is_empty());
    eventually("the removal", Duration::from_secs(3), || {
        recorder
            .last()
            .is_some_and(|s| s.clusters.is_empty() && s.endpoints.is_empty())
    })
    .await;
    task.abort();
}
