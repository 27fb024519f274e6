//! The control plane's xDS protocol, request by request, from a scripted proxy: SotW and
//! delta subscriptions, ACK/NACK, stale nonces, reconnection with known versions, and
//! hostile input (no node, no type, unknown types, huge name lists, oversized messages,
//! a proxy that never reads).
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;

use cp_support::*;
use meshgate::controlplane::sample::{SampleGateway, SampleService, cluster_name};
use meshgate::controlplane::snapshot::{Interner, Snapshot};
use meshgate::controlplane::{Options, StaticSource, TypeSet};
use meshgate::xds::pb::envoy::config::core::v3::Node;
use meshgate::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshgate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshgate::xds::pb::google::rpc::Status as RpcStatus;
use meshgate::xds::{ProxyIdentity, ResourceSet, TypeUrl};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

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

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(addr: &str) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }
    async fn send(&self, t: TypeUrl, names: &[&str], version: &str, nonce: &str, first: bool) {
        self.tx
            .send(DiscoveryRequest {
                node: if first { node("sotw-proxy") } else { None },
                type_url: t.as_str().into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    async fn nack(&self, t: TypeUrl, names: &[&str], version: &str, nonce: &str) {
        self.tx
            .send(DiscoveryRequest {
                type_url: t.as_str().into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                error_detail: Some(RpcStatus {
                    code: 13,
                    message: "nope".into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("a response")
    }
    async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("in time")
        {
            Err(s) => s,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    let t = TypeUrl::parse(&r.type_url).unwrap();
    r.resources
        .iter()
        .map(|a| meshgate::xds::client::decode(t, a).unwrap().0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_subscriptions_acks_nacks_and_stale_nonces() {
    let source = Arc::new(StaticSource::new(gateway(&[("a", 9001), ("b", 9002)])));
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let (ca, cb) = (cluster_name("a"), cluster_name("b"));

    let mut p = Sotw::open(&cp.xds_addr()).await;
    p.send(TypeUrl::Cluster, &[], "", "", true).await;
    let cds = p.recv().await;
    assert_eq!(names(&cds), vec![ca.clone(), cb.clone()]);
    assert!(!cds.nonce.is_empty() && !cds.version_info.is_empty());

    // Unknown types are ignored (no answer), the stream lives on.
    p.send_raw("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig")
        .await;

    // EDS by name: exactly the named ones. (Its answer is the next message on the
    // stream: the unknown type got none.)
    p.send(TypeUrl::Endpoint, &[&ca], "", "", false).await;
    let eds = p.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(names(&eds), vec![ca.clone()]);
    assert_eq!(cp.metric("meshgate_xds_unknown_types_total"), 1.0);
    // CDS ACK.
    p.send(TypeUrl::Cluster, &[], &cds.version_info, &cds.nonce, false)
        .await;

    // A request with a stale nonce that changes the names is ignored...
    p.send(
        TypeUrl::Endpoint,
        &[&ca, &cb],
        "",
        "stale-or-garbage",
        false,
    )
    .await;
    // A first LDS subscription is answered; that answer comes next, so the stale
    // request got none.
    p.send(TypeUrl::Listener, &[], "", "", false).await;
    let lds = p.recv().await;
    assert_eq!(
        lds.type_url,
        TypeUrl::Listener.as_str(),
        "the stale request was answered"
    );
    p.send(TypeUrl::Listener, &[], &lds.version_info, &lds.nonce, false)
        .await;
    assert!(cp.metric("meshgate_xds_stale_nonces_total") >= 1.0);
    // ...but the ACK that follows carries the full list, which is compared again.
    p.send(
        TypeUrl::Endpoint,
        &[&ca, &cb],
        &eds.version_info,
        &eds.nonce,
        false,
    )
    .await;
    let eds2 = p.recv().await;
    assert_eq!(names(&eds2), vec![ca.clone(), cb.clone()]);
    assert_ne!(eds2.version_info, eds.version_info);

    // NACK: recorded, never re-sent; a change elsewhere pushes nothing for EDS.
    p.nack(
        TypeUrl::Endpoint,
        &[&ca, &cb],
        &eds.version_info,
        &eds2.nonce,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cp.syncz()[0]["states"]["eds"] != "NACKED" {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", cp.syncz());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let syncz = cp.syncz();
    assert_eq!(syncz[0]["states"]["eds"], "NACKED");
    assert_eq!(syncz[0]["types"]["eds"]["nacked"]["error"], "nope");
    assert_eq!(
        syncz[0]["types"]["eds"]["nacked"]["version"],
        eds2.version_info.as_str()
    );
    let mut with_c = gateway(&[("a", 9001), ("b", 9002), ("c", 9003)]);
    with_c.sort();
    source.set_default(with_c, TypeSet::ALL);
    // The next message is the new CDS: the NACKed endpoints were not sent again.
    let cds2 = p.recv().await;
    assert_eq!(cds2.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&cds2).len(), 3);
    p.send(
        TypeUrl::Cluster,
        &[],
        &cds2.version_info,
        &cds2.nonce,
        false,
    )
    .await;
    assert_eq!(cp.metric("pilot_total_xds_rejects{type=\"eds\"}"), 1.0);

    // Changing a NACKed resource pushes it again; that is the next message (the change
    // of clusters alone pushed no endpoints).
    source.set_default(
        gateway(&[("a", 9101), ("b", 9002), ("c", 9003)]),
        TypeSet::of(&[TypeUrl::Endpoint]),
    );
    let eds3 = p.recv().await;
    assert_eq!(eds3.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(names(&eds3), vec![ca.clone(), cb.clone()]);
    assert_ne!(
        eds3.version_info, eds2.version_info,
        "the endpoints pushed are the changed ones"
    );
}

impl Sotw {
    async fn send_raw(&self, type_url: &str) {
        self.tx
            .send(DiscoveryRequest {
                type_url: type_url.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_removals_come_after_the_other_types() {
    let source = Arc::new(StaticSource::new(gateway(&[("a", 9001), ("b", 9002)])));
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let mut p = Sotw::open(&cp.xds_addr()).await;
    p.send(TypeUrl::Cluster, &[], "", "", true).await;
    let cds = p.recv().await;
    p.send(TypeUrl::Listener, &[], "", "", false).await;
    let lds = p.recv().await;
    p.send(TypeUrl::Route, &["http.8080"], "", "", false).await;
    let rds = p.recv().await;
    for r in [&cds, &lds, &rds] {
        p.send(
            TypeUrl::parse(&r.type_url).unwrap(),
            if r.type_url == rds.type_url {
                &["http.8080"]
            } else {
                &[]
            },
            &r.version_info,
            &r.nonce,
            false,
        )
        .await;
    }
    // Service b goes away and c arrives: CDS first keeps b, routes change, then CDS drops b.
    source.set_default(gateway(&[("a", 9001), ("c", 9003)]), TypeSet::ALL);
    let first = p.recv().await;
    assert_eq!(first.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(
        names(&first),
        vec![cluster_name("a"), cluster_name("b"), cluster_name("c")]
    );
    let second = p.recv().await;
    assert_eq!(second.type_url, TypeUrl::Route.as_str());
    let third = p.recv().await;
    assert_eq!(third.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&third), vec![cluster_name("a"), cluster_name("c")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_grpc_errors_and_do_not_disturb_others() {
    let source = Arc::new(StaticSource::new(gateway(&[("a", 9001)])));
    let options = Options {
        max_resource_names: 1000,
        ..test_options()
    };
    let cp = TestControlPlane::start(source.clone(), 0, 0, options);
    let addr = cp.xds_addr();

    let mut healthy = Sotw::open(&addr).await;
    healthy.send(TypeUrl::Cluster, &[], "", "", true).await;
    healthy.recv().await;

    // No node on the first request.
    let mut p = Sotw::open(&addr).await;
    p.send(TypeUrl::Cluster, &[], "", "", false).await;
    assert_eq!(p.recv_status().await.code(), Code::InvalidArgument);

    // No type URL on an aggregated stream.
    let mut p = Sotw::open(&addr).await;
    p.tx.send(DiscoveryRequest {
        node: node("x"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(p.recv_status().await.code(), Code::InvalidArgument);

    // Too many names in one subscription.
    let mut p = Sotw::open(&addr).await;
    let many: Vec<String> = (0..1001).map(|i| format!("n{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    p.send(TypeUrl::Endpoint, &many, "", "", true).await;
    assert_eq!(p.recv_status().await.code(), Code::ResourceExhausted);

    // A request over the 4 MiB limit.
    let mut p = Sotw::open(&addr).await;
    let huge = "x".repeat(5 << 20);
    p.send(TypeUrl::Endpoint, &[&huge], "", "", true).await;
    // The gRPC decoder refuses it; the status goes back to the proxy.
    assert_eq!(p.recv_status().await.code(), Code::OutOfRange);

    // Garbage nonces are stale nonces: ignored.
    healthy
        .send(TypeUrl::Cluster, &[], "v", "\u{0}\u{fffd}garbage", false)
        .await;

    // The healthy stream still gets pushes (the next message: the garbage got none).
    source.set_default(gateway(&[("a", 9001), ("b", 9002)]), TypeSet::ALL);
    let cds = healthy.recv().await;
    assert_eq!(names(&cds).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_reads_is_dropped_without_slowing_others() {
    // Large CDS responses (2,000 clusters) fill flow-control windows quickly.
    let big = |tag: u16| {
        let services: Vec<(String, u16)> = (0..2000)
            .map(|i| (format!("svc-{tag}-{i}"), 9000))
            .collect();
        let s: Vec<(&str, u16)> = services.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        gateway(&s)
    };
    let source = Arc::new(StaticSource::new(big(0)));
    // The stuck stream is dropped only after this: every push the reader gets before
    // that was not held up by it.
    let options = Options {
        send_queue: 1,
        send_timeout: Duration::from_secs(5),
        ..test_options()
    };
    let cp = TestControlPlane::start(source.clone(), 0, 0, options);
    let addr = cp.xds_addr();
    let stuck = Sotw::open(&addr).await;
    stuck.send(TypeUrl::Cluster, &[], "", "", true).await;
    let mut reader = Sotw::open(&addr).await;
    reader.send(TypeUrl::Cluster, &[], "", "", true).await;
    let first = reader.recv().await;
    reader
        .send(
            TypeUrl::Cluster,
            &[],
            &first.version_info,
            &first.nonce,
            false,
        )
        .await;
    for round in 1..=4u16 {
        let next = big(round);
        source.set_default(next, TypeSet::ALL);
        let r = reader.recv().await;
        assert_eq!(
            cp.metric("pilot_xds_write_timeout"),
            0.0,
            "push {round} reached the reader only after the stuck stream timed out"
        );
        reader
            .send(TypeUrl::Cluster, &[], &r.version_info, &r.nonce, false)
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cp.metric("pilot_xds_write_timeout") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The timeout is counted before the stream is taken off the books.
    while cp.syncz().len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only the reading proxy remains: {} streams",
            cp.syncz().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stuck);
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(addr: &str) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }
    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }
    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("a response")
    }
    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_only_differences_and_announces_missing_names() {
    let set = gateway(&[("a", 9001), ("b", 9002)]);
    let source = Arc::new(StaticSource::new(set.clone()));
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let snap = Snapshot::build(
        ProxyIdentity::default(),
        &set,
        1,
        None,
        &Interner::default(),
    )
    .unwrap();
    let (ca, cb) = (cluster_name("a"), cluster_name("b"));
    let version_of = |name: &str| {
        snap.of(TypeUrl::Cluster)
            .get(name)
            .unwrap()
            .version()
            .to_string()
    };

    let mut p = Delta::open(&cp.xds_addr()).await;
    // Reconnecting with: a current, b outdated, and one the server no longer has.
    p.send(DeltaDiscoveryRequest {
        node: node("delta-proxy"),
        type_url: TypeUrl::Cluster.as_str().into(),
        initial_resource_versions: [
            (ca.clone(), version_of(&ca)),
            (cb.clone(), "an-old-version".to_string()),
            (
                "outbound|80||gone.default.svc.cluster.local".to_string(),
                "x".to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    })
    .await;
    let upserts = p.recv().await;
    let got: Vec<&str> = upserts.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, vec![cb.as_str()], "only the outdated cluster is sent");
    assert!(
        upserts.removed_resources.is_empty(),
        "removals come after updates"
    );
    assert_eq!(upserts.resources[0].version, version_of(&cb));
    p.ack(&upserts).await;
    let removals = p.recv().await;
    assert_eq!(
        removals.removed_resources,
        vec!["outbound|80||gone.default.svc.cluster.local".to_string()]
    );
    assert!(removals.resources.is_empty());
    p.ack(&removals).await;

    // EDS by name, one of them missing: answered as not existing, once.
    p.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: vec![ca.clone(), "missing".into()],
        ..Default::default()
    })
    .await;
    let eds = p.recv().await;
    assert_eq!(
        eds.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec![ca.as_str()]
    );
    assert_eq!(eds.removed_resources, vec!["missing".to_string()]);
    // NACK it: nothing is re-sent.
    p.send(DeltaDiscoveryRequest {
        type_url: eds.type_url.clone(),
        response_nonce: eds.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 13,
            message: "bad endpoints".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cp.syncz()[0]["states"]["eds"] != "NACKED" {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", cp.syncz());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cp.syncz()[0]["states"]["cds"], "SYNCED");

    // An endpoint change of a subscribed cluster pushes only that assignment.
    source.set_default(
        gateway(&[("a", 9101), ("b", 9002)]),
        TypeSet::of(&[TypeUrl::Endpoint]),
    );
    // The next message is that change (not the NACKed assignment again).
    let eds2 = p.recv().await;
    assert_eq!(eds2.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(eds2.resources.len(), 1);
    assert_ne!(eds2.resources[0].version, eds.resources[0].version);
    p.ack(&eds2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cp.syncz()[0]["states"]["eds"] != "SYNCED" {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", cp.syncz());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unsubscribing drops the name: later changes to it are not sent.
    p.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_unsubscribe: vec![ca.clone()],
        ..Default::default()
    })
    .await;
    let generation = || cp.syncz()[0]["snapshot_generation"].as_u64().unwrap();
    let before = generation();
    source.set_default(
        gateway(&[("a", 9201), ("b", 9002)]),
        TypeSet::of(&[TypeUrl::Endpoint]),
    );
    // The stream has taken the change (while a was unsubscribed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while generation() == before {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", cp.syncz());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Subscribing again sends it again (the proxy dropped it), and so does a second name
    // that was never held. That is the next message: the change made while
    // unsubscribed was not sent.
    p.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: vec![ca.clone(), cb.clone()],
        ..Default::default()
    })
    .await;
    let again = p.recv().await;
    let mut got: Vec<&str> = again.resources.iter().map(|r| r.name.as_str()).collect();
    got.sort();
    assert_eq!(got, vec![ca.as_str(), cb.as_str()]);
    p.ack(&again).await;
    // In sync: a change of b alone sends b alone.
    source.set_default(
        gateway(&[("a", 9201), ("b", 9302)]),
        TypeSet::of(&[TypeUrl::Endpoint]),
    );
    let only_b = p.recv().await;
    assert_eq!(
        only_b
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec![cb.as_str()]
    );
    p.ack(&only_b).await;
    // Then a change of a alone: the next message is a at its new version (nothing else
    // was sent after b).
    source.set_default(
        gateway(&[("a", 9401), ("b", 9302)]),
        TypeSet::of(&[TypeUrl::Endpoint]),
    );
    let only_a = p.recv().await;
    assert_eq!(
        only_a
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec![ca.as_str()]
    );
    let a_before = again.resources.iter().find(|r| r.name == ca).unwrap();
    assert_ne!(only_a.resources[0].version, a_before.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_sds_serves_secrets_by_name() {
    use meshgate::controlplane::sample::tls_secret;
    use meshgate::xds::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let mut set = gateway(&[("a", 9001)]);
    set.secrets.push(tls_secret("gw-cert", "cert-1", "key-1"));
    set.secrets.push(tls_secret("other", "cert-2", "key-2"));
    let source = Arc::new(StaticSource::new(set));
    let cp = TestControlPlane::start(source.clone(), 0, 0, test_options());
    let mut client = SecretDiscoveryServiceClient::connect(format!("http://{}", cp.xds_addr()))
        .await
        .unwrap();

    // FetchSecrets: one answer.
    let fetched = client
        .fetch_secrets(DiscoveryRequest {
            node: node("sds-proxy"),
            resource_names: vec!["gw-cert".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&DiscoveryResponse {
            type_url: TypeUrl::Secret.as_str().into(),
            ..fetched
        }),
        vec!["gw-cert".to_string()]
    );

    // StreamSecrets: the named secret, and a push when it changes.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node("sds-proxy"),
        resource_names: vec!["gw-cert".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(names(&first), vec!["gw-cert".to_string()]);
    tx.send(DiscoveryRequest {
        type_url: TypeUrl::Secret.as_str().into(),
        resource_names: vec!["gw-cert".into()],
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut rotated = gateway(&[("a", 9001)]);
    rotated
        .secrets
        .push(tls_secret("gw-cert", "cert-3", "key-3"));
    rotated.secrets.push(tls_secret("other", "cert-2", "key-2"));
    source.set_default(rotated, TypeSet::of(&[TypeUrl::Secret]));
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(second.version_info, first.version_info);

    // Other types are refused on the SDS service.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node("sds-proxy"),
        type_url: TypeUrl::Cluster.as_str().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
