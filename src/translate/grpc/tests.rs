//! What a proxyless gRPC client is served, field by field.
use super::*;
use crate::xds::ProxyKind;
use crate::xds::json;
use serde_json::{Value, json};

const HOST: &str = "echo.mesh.internal";

/// A gRPC service with two versions, its subsets, and `extra` documents.
fn config(extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 7070, name: grpc, protocol: GRPC}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: 9001}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{grpc: 9002}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{extra}"#
    )
}

fn translate(yaml: &str) -> Translation {
    let loaded = crate::config::load_str("test.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity {
        id: "sidecar~10.0.0.9~client.default~default.svc.cluster.local".into(),
        kind: ProxyKind::Grpc,
        namespace: "default".into(),
        domain_suffix: "cluster.local".into(),
        ..Default::default()
    };
    proxyless_grpc(
        &loaded.config,
        &registry,
        &proxy,
        &crate::config::mesh::MeshConfig::default(),
    )
}

fn to_json<M: prost::Message + prost::Name>(m: &M) -> Value {
    json::to_json(m).expect("json")
}

fn routes(t: &Translation) -> Vec<Value> {
    let rc = t
        .resources
        .route(&format!("outbound|7070||{HOST}"))
        .expect("route configuration");
    to_json(rc)["virtual_hosts"][0]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn warnings(t: &Translation) -> String {
    t.diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const SPLIT: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.mesh.internal]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: echo.mesh.internal, subset: v2}}]
    timeout: 1.5s
    retries: {attempts: 3, retryOn: unavailable}
    fault: {abort: {grpcStatus: PERMISSION_DENIED, percentage: {value: 100}}}
    corsPolicy: {allowOrigins: [{exact: "https://x"}]}
  - route:
    - {destination: {host: echo.mesh.internal, subset: v1}, weight: 80}
    - {destination: {host: echo.mesh.internal, subset: v2}, weight: 20}
"#;

#[test]
fn a_service_port_is_a_listener_a_route_configuration_and_clusters() {
    let t = translate(&config(SPLIT));
    let listeners: Vec<&str> = t
        .resources
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(listeners, vec![format!("{HOST}:7070")]);
    let l = to_json(&t.resources.listeners[0]);
    let hcm = &l["api_listener"]["api_listener"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(
        hcm["rds"]["route_config_name"],
        format!("outbound|7070||{HOST}")
    );
    assert_eq!(hcm["rds"]["config_source"]["ads"], json!({}));
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        vec!["envoy.filters.http.fault", "envoy.filters.http.router"]
    );
    // Nothing of an Envoy listener: no filter chains.
    assert!(l.get("filter_chains").is_none(), "{l}");

    let rc = to_json(
        t.resources
            .route(&format!("outbound|7070||{HOST}"))
            .unwrap(),
    );
    assert_eq!(rc["virtual_hosts"].as_array().unwrap().len(), 1);
    assert_eq!(
        rc["virtual_hosts"][0]["domains"],
        json!([format!("{HOST}:7070"), HOST])
    );
    let clusters: Vec<&str> = t
        .resources
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        clusters,
        vec![
            format!("outbound|7070|v1|{HOST}"),
            format!("outbound|7070|v2|{HOST}"),
            format!("outbound|7070||{HOST}"),
        ]
    );
    let v1 = to_json(
        t.resources
            .cluster(&format!("outbound|7070|v1|{HOST}"))
            .unwrap(),
    );
    assert_eq!(v1["type"], "EDS");
    assert_eq!(
        v1["eds_cluster_config"]["service_name"],
        format!("outbound|7070|v1|{HOST}")
    );
    assert_eq!(v1["eds_cluster_config"]["eds_config"]["ads"], json!({}));
    // ROUND_ROBIN is the default, so the field is absent; nothing Envoy-only is there.
    for absent in [
        "lb_policy",
        "transport_socket",
        "transport_socket_matches",
        "typed_extension_protocol_options",
        "common_lb_config",
        "connect_timeout",
        "outlier_detection",
    ] {
        assert!(v1.get(absent).is_none(), "{absent}: {v1}");
    }
    let cla = to_json(
        t.resources
            .endpoint(&format!("outbound|7070|v1|{HOST}"))
            .unwrap(),
    );
    assert_eq!(cla["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(
        cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": 9001})
    );
    let all = to_json(
        t.resources
            .endpoint(&format!("outbound|7070||{HOST}"))
            .unwrap(),
    );
    assert_eq!(
        all["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn routes_carry_what_grpc_reads_and_nothing_it_rejects() {
    let t = translate(&config(SPLIT));
    let r = routes(&t);
    assert_eq!(r.len(), 2, "{r:#?}");
    let header = &r[0];
    assert_eq!(
        header["match"]["headers"][0]["name"], "x-version",
        "{header}"
    );
    assert_eq!(
        header["route"]["cluster"],
        format!("outbound|7070|v2|{HOST}")
    );
    // The timeout as gRPC reads it (gRFC A31), and not as Envoy does.
    assert_eq!(
        header["route"]["max_stream_duration"],
        json!({"max_stream_duration": "1.500s"})
    );
    assert!(header["route"].get("timeout").is_none(), "{header}");
    assert!(
        header["route"].get("max_grpc_timeout").is_none(),
        "{header}"
    );
    // Retries as gRPC reads them, nothing of Envoy's host predicates.
    assert_eq!(
        header["route"]["retry_policy"],
        json!({"retry_on": "unavailable", "num_retries": 3})
    );
    for absent in ["decorator", "metadata", "request_headers_to_add"] {
        assert!(header.get(absent).is_none(), "{absent}: {header}");
    }
    // The fault's per-route configuration stays, the CORS one (no such filter in gRPC:
    // the whole route configuration would be rejected) goes.
    let per_filter: Vec<&String> = header["typed_per_filter_config"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(per_filter, vec!["envoy.filters.http.fault"]);
    assert_eq!(
        header["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["grpc_status"],
        7
    );
    assert!(warnings(&t).contains("corsPolicy"), "{}", warnings(&t));

    let split = &r[1]["route"]["weighted_clusters"]["clusters"];
    assert_eq!(
        split,
        &json!([
            {"name": format!("outbound|7070|v1|{HOST}"), "weight": 80},
            {"name": format!("outbound|7070|v2|{HOST}"), "weight": 20},
        ])
    );
    // No timeout set: no stream duration either (zero would be read as none anyway).
    assert!(r[1]["route"].get("max_stream_duration").is_none());
}

#[test]
fn without_a_mesh_virtual_service_the_default_route_is_served() {
    let gateway_only = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [echo.mesh.internal]
  gateways: [edge-gw]
  http:
  - route: [{destination: {host: echo.mesh.internal, subset: v2}}]
"#;
    for extra in ["", gateway_only] {
        let t = translate(&config(extra));
        let r = routes(&t);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0]["match"], json!({"prefix": "/"}));
        assert_eq!(r[0]["route"]["cluster"], format!("outbound|7070||{HOST}"));
        assert_eq!(r[0]["route"]["retry_policy"]["num_retries"], 2);
    }
    // `mesh` among the gateways makes it a mesh VirtualService.
    let both = gateway_only.replace("gateways: [edge-gw]", "gateways: [edge-gw, mesh]");
    let r = routes(&translate(&config(&both)));
    assert_eq!(r[0]["route"]["cluster"], format!("outbound|7070|v2|{HOST}"));
}

#[test]
fn destination_rule_policies_as_grpc_knows_them() {
    let hashed = r#"  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user, minimumRingSize: 2048}}
    connectionPool: {http: {http2MaxRequests: 50}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.mesh.internal]
  http:
  - route: [{destination: {host: echo.mesh.internal, subset: v1}}]
"#;
    let t = translate(&config(hashed));
    let c = to_json(
        t.resources
            .cluster(&format!("outbound|7070||{HOST}"))
            .unwrap(),
    );
    assert_eq!(c["lb_policy"], "RING_HASH");
    assert_eq!(c["ring_hash_lb_config"]["minimum_ring_size"], "2048");
    assert_eq!(
        c["circuit_breakers"]["thresholds"][0],
        json!({"max_requests": 50})
    );
    let r = routes(&t);
    assert_eq!(
        r[0]["route"]["hash_policy"][0]["header"]["header_name"],
        "x-user"
    );

    // What gRPC has not: LEAST_REQUEST and Maglev fall back, with a warning.
    for (policy, want) in [
        ("{simple: LEAST_REQUEST}", None),
        ("{simple: RANDOM}", None),
        ("{simple: ROUND_ROBIN}", None),
        (
            "{consistentHash: {maglev: {tableSize: 65537}, useSourceIp: true}}",
            Some("RING_HASH"),
        ),
    ] {
        let t = translate(&config(&format!(
            "  trafficPolicy: {{loadBalancer: {policy}}}\n"
        )));
        let c = to_json(
            t.resources
                .cluster(&format!("outbound|7070||{HOST}"))
                .unwrap(),
        );
        assert_eq!(c["lb_policy"].as_str(), want, "{policy}: {c}");
        let warned = !t.diagnostics.is_empty();
        assert_eq!(
            warned,
            !policy.contains("ROUND_ROBIN"),
            "{policy}: {}",
            warnings(&t)
        );
    }
}

#[test]
fn tls_origination_leaves_the_clusters_out() {
    let t = translate(&config("  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"));
    assert!(
        t.resources.clusters.is_empty(),
        "{:#?}",
        t.resources.clusters
    );
    assert!(t.resources.endpoints.is_empty());
    // The listener and routes are still there: calls fail (no cluster), never in the
    // clear.
    assert_eq!(t.resources.listeners.len(), 1);
    assert!(warnings(&t).contains("ISTIO_MUTUAL"), "{}", warnings(&t));
    // A subset that turns TLS off gets its cluster.
    let t = translate(&config(
        "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: other, namespace: default}\nspec:\n  host: other.internal\n",
    ));
    assert!(t.resources.clusters.is_empty());
}

#[test]
fn endpoints_are_what_grpc_accepts() {
    // The same address twice (gRPC rejects duplicates), and a Unix socket (it has none).
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: twice, namespace: default}
spec:
  hosts: [twice.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: grpc, protocol: GRPC}, {number: 81, name: udp, protocol: UDP}]
  endpoints:
  - {address: 10.0.0.1}
  - {address: 10.0.0.1}
  - {address: "unix:///tmp/sock"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns, namespace: default}
spec:
  hosts: [one.dns.internal, "*.wild.internal"]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: grpc, protocol: GRPC}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-many, namespace: default}
spec:
  hosts: [many.dns.internal]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: grpc, protocol: GRPC}]
  endpoints: [{address: a.example}, {address: b.example}]
"#;
    let t = translate(yaml);
    let cla = to_json(t.resources.endpoint("outbound|80||twice.internal").unwrap());
    assert_eq!(
        cla["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{cla}"
    );
    // No UDP listener, and no listener for a wildcard host.
    let listeners: Vec<&str> = t
        .resources
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        listeners,
        vec![
            "many.dns.internal:443",
            "one.dns.internal:443",
            "twice.internal:80"
        ]
    );
    // A DNS host with one address is gRPC's LOGICAL_DNS; with two it cannot be served.
    let one = to_json(
        t.resources
            .cluster("outbound|443||one.dns.internal")
            .unwrap(),
    );
    assert_eq!(one["type"], "LOGICAL_DNS");
    assert_eq!(
        one["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
        json!({"address": "one.dns.internal", "port_value": 443})
    );
    assert!(
        t.resources
            .cluster("outbound|443||many.dns.internal")
            .is_none()
    );
    assert!(warnings(&t).contains("2 endpoints"), "{}", warnings(&t));
}

#[test]
fn priorities_stay_contiguous_when_localities_are_dropped() {
    let l = |priority: u32, weight: u32, addr: &str| endpoint::LocalityLbEndpoints {
        locality: Some(core::Locality::default()),
        priority,
        load_balancing_weight: Some(pb::u32v(weight)),
        lb_endpoints: vec![endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(pb::socket_address(addr, 80)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let out = grpc_localities(vec![
        l(0, 0, "10.0.0.1"),
        l(1, 5, "10.0.0.2"),
        l(2, 5, "10.0.0.2"),
        l(3, 5, "10.0.0.3"),
    ]);
    let got: Vec<u32> = out.iter().map(|l| l.priority).collect();
    assert_eq!(got, vec![0, 1]);
}

#[test]
fn the_snapshot_is_consistent_and_names_what_the_client_asks_for() {
    let t = translate(&config(SPLIT));
    let refs = crate::xds::references::references(&t.resources.listeners, &t.resources.clusters);
    assert_eq!(
        refs.routes.into_iter().collect::<Vec<_>>(),
        vec![format!("outbound|7070||{HOST}")]
    );
    assert_eq!(refs.endpoints.len(), 3);
    crate::controlplane::Snapshot::build(
        ProxyIdentity::default(),
        &t.resources,
        1,
        None,
        &Default::default(),
    )
    .expect("a consistent snapshot");
}

#[test]
fn one_virtual_service_per_host() {
    let second = SPLIT
        .replace("name: echo, namespace", "name: zz-echo, namespace")
        .replace("subset: v1}, weight: 80", "subset: v1}, weight: 10")
        .replace("subset: v2}, weight: 20", "subset: v2}, weight: 90");
    let t = translate(&config(&format!("{SPLIT}{second}")));
    let r = routes(&t);
    assert_eq!(
        r[1]["route"]["weighted_clusters"]["clusters"][0]["weight"],
        80
    );
    assert!(warnings(&t).contains("already routed"), "{}", warnings(&t));
}
