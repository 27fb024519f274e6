//! The outbound side of a sidecar: Istio's names and structure, routes from mesh
//! VirtualServices, REGISTRY_ONLY, `exportTo`, auto mTLS, and what a Sidecar resource
//! narrows.
use super::*;
use crate::config::mesh::{AccessLogEncoding, OutboundMode};
use crate::xds::{ProxyKind, json};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Services of namespace `shop` (and one of `other`) the tests route to.
const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [10.96.0.5]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1, security.istio.io/tlsMode: istio}, serviceAccount: reviews}
  - {address: 10.1.0.2, labels: {version: v2, security.istio.io/tlsMode: istio}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.96.0.7]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  endpoints: [{address: 10.1.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: shop}
spec:
  hosts: [cache.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: NONE
  ports: [{number: 6379, name: redis, protocol: REDIS}]
  workloadSelector: {labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cache-1, namespace: shop}
spec: {address: 10.1.0.4, labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cache-2, namespace: shop}
spec: {address: 10.1.0.5, labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: other}
spec:
  hosts: [ratings.other.svc.cluster.local]
  addresses: [10.96.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.1.0.6, labels: {security.istio.io/tlsMode: istio}}]
"#;

fn proxy(namespace: &str) -> ProxyIdentity {
    ProxyIdentity {
        id: format!("sidecar~10.1.0.9~productpage.{namespace}~{namespace}.svc.cluster.local"),
        kind: ProxyKind::Sidecar,
        namespace: namespace.to_string(),
        labels: BTreeMap::from([("app".to_string(), "productpage".to_string())]),
        ip_addresses: vec!["10.1.0.9".to_string()],
        domain_suffix: "cluster.local".to_string(),
        ..Default::default()
    }
}

fn translate_in(yaml: &str, namespace: &str, mesh: &MeshConfig) -> Translation {
    let loaded = crate::config::load_str("test.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, diags) = Registry::from_config(&loaded.config);
    assert!(diags.is_empty(), "{diags:#?}");
    sidecar(&loaded.config, &registry, &proxy(namespace), mesh)
}

/// Translates for a sidecar in `shop`, in a mesh that logs (JSON on standard output).
fn translate(extra: &str) -> Translation {
    translate_in(&format!("{SERVICES}{extra}"), "shop", &logging_mesh())
}

fn logging_mesh() -> MeshConfig {
    MeshConfig {
        access_log: Some(Some(AccessLogEncoding::Json)),
        ..MeshConfig::default()
    }
}

fn listener(t: &Translation, name: &str) -> Value {
    let l = t
        .resources
        .listener(name)
        .unwrap_or_else(|| panic!("listener {name} in {:?}", names(t)));
    json::to_json(l).expect("json")
}

fn route(t: &Translation, name: &str) -> Value {
    json::to_json(t.resources.route(name).expect("route")).expect("json")
}

fn cluster(t: &Translation, name: &str) -> Value {
    let c = t.resources.cluster(name).unwrap_or_else(|| {
        panic!(
            "cluster {name} in {:?}",
            t.resources.names(crate::xds::TypeUrl::Cluster)
        )
    });
    json::to_json(c).expect("json")
}

/// Whether a resource belongs to the inbound side (tested in `inbound_tests`).
fn inbound(name: &str) -> bool {
    name == "virtualInbound" || name == "InboundPassthroughCluster" || name.starts_with("inbound|")
}

/// The outbound listeners.
fn names(t: &Translation) -> Vec<String> {
    t.resources
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .filter(|n| !inbound(n))
        .collect()
}

/// The outbound clusters.
fn cluster_names(t: &Translation) -> Vec<String> {
    t.resources
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !inbound(n))
        .collect()
}

/// The virtual host named `name` of a route table.
fn vhost(rc: &Value, name: &str) -> Value {
    rc["virtual_hosts"]
        .as_array()
        .and_then(|v| v.iter().find(|vh| vh["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("virtual host {name} in {rc:#}"))
}

fn vhost_names(rc: &Value) -> Vec<String> {
    rc["virtual_hosts"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|vh| vh["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `tcp_proxy` of the first network filter of a chain.
fn tcp_proxy(chain: &Value) -> &Value {
    assert_eq!(
        chain["filters"][0]["name"],
        "envoy.filters.network.tcp_proxy"
    );
    &chain["filters"][0]["typed_config"]
}

#[test]
fn listeners_routes_and_clusters_have_istios_names_and_shape() {
    let t = translate("");
    assert_eq!(
        names(&t),
        [
            "0.0.0.0_443",
            "0.0.0.0_9080",
            "10.1.0.4_6379",
            "10.1.0.5_6379",
            "10.96.0.7_5432",
            "virtualOutbound",
        ]
    );

    // The virtual listener: original destination, blackhole for 15001 itself, the rest
    // to PassthroughCluster (ALLOW_ANY, the default).
    let v = listener(&t, "virtualOutbound");
    assert_eq!(v["address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(v["address"]["socket_address"]["port_value"], 15001);
    assert_eq!(v["use_original_dst"], true);
    assert_eq!(v["traffic_direction"], "OUTBOUND");
    assert_eq!(v["filter_chains"][0]["name"], "virtualOutbound-blackhole");
    assert_eq!(
        v["filter_chains"][0]["filter_chain_match"]["destination_port"],
        15001
    );
    assert_eq!(
        tcp_proxy(&v["filter_chains"][0])["cluster"],
        "BlackHoleCluster"
    );
    assert_eq!(
        v["filter_chains"][1]["name"],
        "virtualOutbound-catchall-tcp"
    );
    assert_eq!(
        tcp_proxy(&v["filter_chains"][1])["cluster"],
        "PassthroughCluster"
    );
    // Connections no chain takes are logged by the listener.
    assert_eq!(
        v["access_log"][0]["filter"]["response_flag_filter"]["flags"],
        json!(["NR"])
    );

    // HTTP: 0.0.0.0_PORT, not bound, the HTTP chain picked by the HTTP inspector, the
    // rest passes through.
    let http = listener(&t, "0.0.0.0_9080");
    assert_eq!(http["bind_to_port"], false);
    assert_eq!(
        http["listener_filters"][0]["name"],
        "envoy.filters.listener.http_inspector"
    );
    let chain = &http["filter_chains"][0];
    assert_eq!(
        chain["filter_chain_match"],
        json!({"application_protocols": ["http/1.1", "h2c"], "transport_protocol": "raw_buffer"})
    );
    let hcm = &chain["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "9080");
    assert_eq!(hcm["stat_prefix"], "outbound_0.0.0.0_9080;");
    assert_eq!(hcm["use_remote_address"], false);
    assert!(hcm.get("forward_client_cert_details").is_none(), "{hcm:#}");
    assert_eq!(
        http["default_filter_chain"]["name"],
        "PassthroughFilterChain"
    );
    assert_eq!(
        tcp_proxy(&http["default_filter_chain"])["cluster"],
        "PassthroughCluster"
    );

    // TCP on the service's address.
    let db = listener(&t, "10.96.0.7_5432");
    assert_eq!(db["bind_to_port"], false);
    assert_eq!(db["filter_chains"].as_array().map(Vec::len), Some(1));
    let p = tcp_proxy(&db["filter_chains"][0]);
    assert_eq!(p["cluster"], "outbound|5432||db.shop.svc.cluster.local");
    assert_eq!(p["stat_prefix"], "outbound|5432||db.shop.svc.cluster.local");
    assert!(db.get("default_filter_chain").is_none());

    // TLS without an address: on 0.0.0.0, told apart by SNI.
    let tls = listener(&t, "0.0.0.0_443");
    assert_eq!(
        tls["listener_filters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    assert_eq!(
        tls["filter_chains"][0]["filter_chain_match"]["server_names"],
        json!(["api.example.com"])
    );
    assert_eq!(
        tcp_proxy(&tls["filter_chains"][0])["cluster"],
        "outbound|443||api.example.com"
    );
    assert_eq!(
        tls["default_filter_chain"]["name"],
        "PassthroughFilterChain"
    );

    // resolution NONE without an address: a listener per endpoint address, to an
    // ORIGINAL_DST cluster.
    let cache = listener(&t, "10.1.0.4_6379");
    assert_eq!(
        tcp_proxy(&cache["filter_chains"][0])["cluster"],
        "outbound|6379||cache.shop.svc.cluster.local"
    );
    let c = cluster(&t, "outbound|6379||cache.shop.svc.cluster.local");
    assert_eq!(c["type"], "ORIGINAL_DST");
    assert_eq!(c["lb_policy"], "CLUSTER_PROVIDED");

    // Route table 9080: every service on the port, with its names, and allow_any last.
    let rc = route(&t, "9080");
    assert_eq!(rc["validate_clusters"], false);
    assert_eq!(rc["ignore_port_in_host_matching"], true);
    assert_eq!(
        vhost_names(&rc),
        [
            "ratings.other.svc.cluster.local:9080",
            "reviews.shop.svc.cluster.local:9080",
            "allow_any"
        ]
    );
    let reviews = vhost(&rc, "reviews.shop.svc.cluster.local:9080");
    assert_eq!(
        reviews["domains"],
        json!([
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc.cluster.local.",
            "reviews",
            "reviews.shop.svc",
            "reviews.shop",
            "10.96.0.5"
        ])
    );
    assert_eq!(
        vhost(&rc, "ratings.other.svc.cluster.local:9080")["domains"],
        json!([
            "ratings.other.svc.cluster.local",
            "ratings.other.svc.cluster.local.",
            "ratings.other",
            "ratings.other.svc",
            "10.96.0.9"
        ])
    );
    let r = &reviews["routes"][0];
    assert_eq!(r["name"], "default");
    assert_eq!(r["match"]["prefix"], "/");
    assert_eq!(
        r["route"]["cluster"],
        "outbound|9080||reviews.shop.svc.cluster.local"
    );
    assert_eq!(r["route"]["timeout"], "0s");
    assert_eq!(r["route"]["retry_policy"]["num_retries"], 2);
    assert_eq!(
        r["decorator"]["operation"],
        "reviews.shop.svc.cluster.local:9080/*"
    );
    let any = vhost(&rc, "allow_any");
    assert_eq!(any["domains"], json!(["*"]));
    assert_eq!(any["routes"][0]["route"]["cluster"], "PassthroughCluster");

    // Clusters: every service port, EDS ones with endpoints, and Istio's two.
    assert_eq!(
        cluster_names(&t),
        [
            "BlackHoleCluster",
            "PassthroughCluster",
            "outbound|443||api.example.com",
            "outbound|5432||db.shop.svc.cluster.local",
            "outbound|6379||cache.shop.svc.cluster.local",
            "outbound|9080||ratings.other.svc.cluster.local",
            "outbound|9080||reviews.shop.svc.cluster.local",
        ]
    );
    let pass = cluster(&t, "PassthroughCluster");
    assert_eq!(pass["type"], "ORIGINAL_DST");
    assert_eq!(pass["lb_policy"], "CLUSTER_PROVIDED");
    let hole = cluster(&t, "BlackHoleCluster");
    assert_eq!(hole["type"], "STATIC");
    assert!(hole.get("load_assignment").is_none());
    assert!(
        t.resources
            .endpoint("outbound|9080||reviews.shop.svc.cluster.local")
            .is_some()
    );
}

#[test]
fn mesh_virtual_services_route_and_gateway_only_ones_do_not() {
    let t = translate(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - retries: {attempts: 5, retryOn: 5xx}
    timeout: 3s
    route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v2}, weight: 25}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-at-the-edge, namespace: other}
spec:
  hosts: [ratings.other.svc.cluster.local]
  gateways: [istio-system/ingress]
  http:
  - route: [{destination: {host: ratings.other.svc.cluster.local, subset: nope}}]
"#,
    );
    let rc = route(&t, "9080");
    let reviews = vhost(&rc, "reviews.shop.svc.cluster.local:9080");
    let routes = reviews["routes"].as_array().cloned().unwrap_or_default();
    assert_eq!(routes.len(), 2, "{reviews:#}");
    assert_eq!(
        routes[0]["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["http_status"],
        418
    );
    assert_eq!(
        routes[0]["route"]["cluster"],
        "outbound|9080|v2|reviews.shop.svc.cluster.local"
    );
    let weighted = &routes[1]["route"]["weighted_clusters"]["clusters"];
    assert_eq!(
        weighted,
        &json!([
            {"name": "outbound|9080|v1|reviews.shop.svc.cluster.local", "weight": 75},
            {"name": "outbound|9080|v2|reviews.shop.svc.cluster.local", "weight": 25},
        ])
    );
    assert_eq!(routes[1]["route"]["retry_policy"]["num_retries"], 5);
    assert_eq!(routes[1]["route"]["timeout"], "3s");
    // The gateway's VirtualService does not apply to sidecars.
    let ratings = vhost(&rc, "ratings.other.svc.cluster.local:9080");
    assert_eq!(ratings["routes"][0]["name"], "default");
    // Subset clusters exist.
    for subset in ["v1", "v2"] {
        cluster(
            &t,
            &format!("outbound|9080|{subset}|reviews.shop.svc.cluster.local"),
        );
    }
}

#[test]
fn tcp_and_tls_routes_of_mesh_virtual_services() {
    let t = translate(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db2, namespace: shop}
spec:
  hosts: [db2.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.1.0.8}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  gateways: [mesh]
  tcp:
  - route:
    - {destination: {host: db}, weight: 80}
    - {destination: {host: db2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com], port: 443}]
    route: [{destination: {host: api.example.com, port: {number: 443}}}]
"#,
    );
    let db = listener(&t, "10.96.0.7_5432");
    let p = tcp_proxy(&db["filter_chains"][0]);
    assert_eq!(
        p["weighted_clusters"]["clusters"],
        json!([
            {"name": "outbound|5432||db.shop.svc.cluster.local", "weight": 80},
            {"name": "outbound|5432||db2.shop.svc.cluster.local", "weight": 20},
        ])
    );
    assert_eq!(p["stat_prefix"], "db.shop");
    assert_eq!(
        db["filter_chains"][0]["metadata"]["filter_metadata"]["istio"]["config"],
        "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/db"
    );
    // db2 has no address: 0.0.0.0_5432 takes every other connection to 5432.
    let db2 = listener(&t, "0.0.0.0_5432");
    assert_eq!(
        tcp_proxy(&db2["filter_chains"][0])["cluster"],
        "outbound|5432||db2.shop.svc.cluster.local"
    );
    let tls = listener(&t, "0.0.0.0_443");
    assert_eq!(
        tls["filter_chains"][0]["filter_chain_match"]["server_names"],
        json!(["api.example.com"])
    );
    assert_eq!(
        tcp_proxy(&tls["filter_chains"][0])["cluster"],
        "outbound|443||api.example.com"
    );
}

#[test]
fn registry_only_blocks_unknown_destinations() {
    for (mesh_mode, want_cluster, want_vhost) in [
        (OutboundMode::AllowAny, "PassthroughCluster", "allow_any"),
        (OutboundMode::RegistryOnly, "BlackHoleCluster", "block_all"),
    ] {
        let mesh = MeshConfig {
            outbound_traffic_policy: mesh_mode,
            ..MeshConfig::default()
        };
        let t = translate_in(SERVICES, "shop", &mesh);
        let v = listener(&t, "virtualOutbound");
        assert_eq!(tcp_proxy(&v["filter_chains"][1])["cluster"], want_cluster);
        let http = listener(&t, "0.0.0.0_9080");
        assert_eq!(
            tcp_proxy(&http["default_filter_chain"])["cluster"],
            want_cluster
        );
        let rc = route(&t, "9080");
        let last = rc["virtual_hosts"]
            .as_array()
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["name"], want_vhost);
        assert_eq!(last["domains"], json!(["*"]));
        if mesh_mode == OutboundMode::RegistryOnly {
            assert_eq!(last["routes"][0]["direct_response"]["status"], 502);
        }
        // Both clusters are always there.
        cluster(&t, "PassthroughCluster");
        cluster(&t, "BlackHoleCluster");
    }
}

#[test]
fn export_to_hides_services_and_virtual_services() {
    let yaml = format!(
        r#"{SERVICES}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: private, namespace: other}}
spec:
  hosts: [private.other.svc.cluster.local]
  addresses: [10.96.0.10]
  exportTo: ["."]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 7070, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 10.1.0.10}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: other}}
spec:
  hosts: [ratings.other.svc.cluster.local]
  exportTo: ["."]
  http:
  - fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: ratings.other.svc.cluster.local}}}}]
"#
    );
    let from_shop = translate_in(&yaml, "shop", &MeshConfig::default());
    assert!(from_shop.resources.listener("10.96.0.10_7070").is_none());
    assert!(
        from_shop
            .resources
            .cluster("outbound|7070||private.other.svc.cluster.local")
            .is_none()
    );
    let rc = route(&from_shop, "9080");
    assert_eq!(
        vhost(&rc, "ratings.other.svc.cluster.local:9080")["routes"][0]["name"],
        "default"
    );
    // In its own namespace both are seen.
    let from_other = translate_in(&yaml, "other", &MeshConfig::default());
    listener(&from_other, "10.96.0.7_5432");
    listener(&from_other, "10.96.0.10_7070");
    let rc = route(&from_other, "9080");
    let ratings = vhost(&rc, "ratings.other.svc.cluster.local:9080");
    assert!(
        ratings["routes"][0]["typed_per_filter_config"]
            .get("envoy.filters.http.fault")
            .is_some(),
        "{ratings:#}"
    );
    // Seen from `other`, the short names are those of `other`.
    assert_eq!(
        ratings["domains"],
        json!([
            "ratings.other.svc.cluster.local",
            "ratings.other.svc.cluster.local.",
            "ratings",
            "ratings.other.svc",
            "ratings.other",
            "10.96.0.9"
        ])
    );
}

/// The `tlsMode-istio` transport socket match of a cluster, if any.
fn mtls_match(c: &Value) -> Option<Value> {
    c["transport_socket_matches"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "tlsMode-istio"))
        .cloned()
}

#[test]
fn auto_mtls_uses_the_pods_agent_and_a_destination_rule_wins() {
    let t = translate("");
    let c = cluster(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    let m = mtls_match(&c).expect("auto mTLS toward in-mesh endpoints");
    assert_eq!(m["match"], json!({"tlsMode": "istio"}));
    let ctx = &m["transport_socket"]["typed_config"];
    assert_eq!(
        ctx["sni"],
        "outbound_.9080_._.reviews.shop.svc.cluster.local"
    );
    let cert = &ctx["common_tls_context"]["tls_certificate_sds_secret_configs"][0];
    assert_eq!(cert["name"], "default");
    assert_eq!(
        cert["sds_config"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "sds-grpc"
    );
    let sans = &ctx["common_tls_context"]["combined_validation_context"]["default_validation_context"]
        ["match_typed_subject_alt_names"];
    assert_eq!(
        sans[0]["matcher"]["exact"],
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    // Endpoints outside the mesh (no label) get plain text; external services nothing.
    assert_eq!(c["transport_socket_matches"][1]["name"], "tlsMode-disabled");
    assert!(mtls_match(&cluster(&t, "outbound|443||api.example.com")).is_none());
    assert!(
        mtls_match(&cluster(&t, "outbound|5432||db.shop.svc.cluster.local")).is_none(),
        "db's endpoint is not labelled"
    );

    // enableAutoMtls: false turns it off.
    let off = MeshConfig {
        enable_auto_mtls: false,
        ..MeshConfig::default()
    };
    let t = translate_in(SERVICES, "shop", &off);
    let c = cluster(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert!(mtls_match(&c).is_none() && c.get("transport_socket").is_none());

    // A DestinationRule's TLS mode wins: DISABLE is plain text, ISTIO_MUTUAL always.
    let t = translate(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"#,
    );
    let c = cluster(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert!(mtls_match(&c).is_none() && c.get("transport_socket").is_none());
    let c = cluster(&t, "outbound|5432||db.shop.svc.cluster.local");
    let ctx = &c["transport_socket"]["typed_config"];
    assert_eq!(ctx["sni"], "outbound_.5432_._.db.shop.svc.cluster.local");
    assert_eq!(
        ctx["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]["api_config_source"]
            ["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "sds-grpc"
    );
}

#[test]
fn access_log_follows_mesh_config() {
    let log_of = |mesh: &MeshConfig| {
        let t = translate_in(SERVICES, "shop", mesh);
        let v = listener(&t, "virtualOutbound");
        tcp_proxy(&v["filter_chains"][1])["access_log"].clone()
    };
    // Unset: no access log, as in Istio.
    assert!(log_of(&MeshConfig::default()).is_null());
    let json_log = log_of(&logging_mesh());
    let config = &json_log[0]["typed_config"];
    assert_eq!(config["path"], "/dev/stdout");
    assert_eq!(
        config["log_format"]["json_format"]["upstream_cluster"],
        "%UPSTREAM_CLUSTER_RAW%"
    );
    assert_eq!(
        config["log_format"]["json_format"]["response_flags"],
        "%RESPONSE_FLAGS%"
    );
    let text = log_of(&MeshConfig {
        access_log: Some(Some(AccessLogEncoding::Text)),
        ..MeshConfig::default()
    });
    let format = text[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(format.contains("%UPSTREAM_CLUSTER_RAW%") && format.contains("%RESPONSE_FLAGS%"));
    let off = log_of(&MeshConfig {
        access_log: Some(None),
        ..MeshConfig::default()
    });
    assert!(off.is_null(), "{off:#}");
    // The HTTP connection managers log too.
    let t = translate("");
    let http = listener(&t, "0.0.0.0_9080");
    assert_eq!(
        http["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]["name"],
        "envoy.access_loggers.file"
    );
}

#[test]
fn short_names_are_istios() {
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "reviews.shop.svc.cluster.local",
            "shop.svc.cluster.local",
            &[
                "reviews.shop.svc.cluster.local.",
                "reviews",
                "reviews.shop.svc",
                "reviews.shop",
            ],
        ),
        (
            "reviews.shop.svc.cluster.local",
            "other.svc.cluster.local",
            &[
                "reviews.shop.svc.cluster.local.",
                "reviews.shop",
                "reviews.shop.svc",
            ],
        ),
        (
            "api.example.com",
            "shop.svc.cluster.local",
            &["api.example.com."],
        ),
        ("10.0.0.1", "shop.svc.cluster.local", &[]),
    ];
    for (host, domain, want) in cases {
        assert_eq!(
            virtual_hosts::alt_hosts(host, domain),
            want,
            "{host} from {domain}"
        );
    }
}

/// A Sidecar resource `name` in `namespace` with `spec` (indented by two).
fn sidecar_resource(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

fn has_cluster(t: &Translation, name: &str) -> bool {
    t.resources.cluster(name).is_some()
}

#[test]
fn a_sidecar_resource_narrows_services_routes_and_clusters() {
    let mut yaml = String::from(SERVICES);
    yaml += &sidecar_resource(
        "shop",
        "default",
        "  egress:\n  - hosts: [\"./*\", \"~shop/db.shop.svc.cluster.local\"]\n",
    );
    let t = translate_in(&yaml, "shop", &MeshConfig::default());
    // Own namespace only, db left out.
    assert!(t.resources.listener("10.96.0.7_5432").is_none());
    assert!(!has_cluster(&t, "outbound|5432||db.shop.svc.cluster.local"));
    assert!(!has_cluster(
        &t,
        "outbound|9080||ratings.other.svc.cluster.local"
    ));
    assert!(has_cluster(
        &t,
        "outbound|9080||reviews.shop.svc.cluster.local"
    ));
    assert!(has_cluster(&t, "outbound|443||api.example.com"));
    assert_eq!(
        vhost_names(&route(&t, "9080")),
        ["reviews.shop.svc.cluster.local:9080", "allow_any"]
    );
    // A proxy of another namespace is not affected.
    let t = translate_in(&yaml, "other", &MeshConfig::default());
    assert!(has_cluster(&t, "outbound|5432||db.shop.svc.cluster.local"));
}

#[test]
fn sidecar_selection_follows_istio() {
    let mut yaml = String::from(SERVICES);
    // The workload's own Sidecar (by selector) beats the namespace's, which beats the
    // root namespace's.
    yaml += &sidecar_resource(
        "shop",
        "productpage",
        "  workloadSelector: {labels: {app: productpage}}\n  egress:\n  - hosts: [other/*]\n",
    );
    yaml += &sidecar_resource(
        "shop",
        "default",
        "  workloadSelector: {labels: {app: nobody}}\n  egress:\n  - hosts: [./db.shop.svc.cluster.local]\n",
    );
    yaml += &sidecar_resource(
        "istio-system",
        "default",
        "  egress:\n  - hosts: [./*]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    let t = translate_in(&yaml, "shop", &MeshConfig::default());
    assert_eq!(
        cluster_names(&t),
        [
            "BlackHoleCluster",
            "PassthroughCluster",
            "outbound|9080||ratings.other.svc.cluster.local"
        ]
    );
    // Its outbound policy is the mesh's (ALLOW_ANY): it sets none.
    assert_eq!(
        tcp_proxy(&listener(&t, "virtualOutbound")["filter_chains"][1])["cluster"],
        "PassthroughCluster"
    );

    // Another workload of the namespace: no selector matches, no Sidecar without one in
    // the namespace, so the root namespace's applies (`./*` is the proxy's namespace).
    let loaded = crate::config::load_str("test.yaml", &yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let mut other_workload = proxy("shop");
    other_workload.labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
    let t = sidecar(
        &loaded.config,
        &registry,
        &other_workload,
        &MeshConfig::default(),
    );
    assert!(has_cluster(&t, "outbound|5432||db.shop.svc.cluster.local"));
    assert!(!has_cluster(
        &t,
        "outbound|9080||ratings.other.svc.cluster.local"
    ));
    assert_eq!(
        tcp_proxy(&listener(&t, "virtualOutbound")["filter_chains"][1])["cluster"],
        "BlackHoleCluster"
    );
    let rc = route(&t, "9080");
    assert_eq!(
        vhost_names(&rc).last().map(String::as_str),
        Some("block_all")
    );
}

#[test]
fn a_sidecars_outbound_policy_beats_the_meshs() {
    let registry_only = MeshConfig {
        outbound_traffic_policy: OutboundMode::RegistryOnly,
        ..MeshConfig::default()
    };
    for (policy, mesh, want) in [
        ("{mode: ALLOW_ANY}", &registry_only, "PassthroughCluster"),
        (
            "{mode: REGISTRY_ONLY}",
            &MeshConfig::default(),
            "BlackHoleCluster",
        ),
        // An unset mode is REGISTRY_ONLY, the protobuf default, as in Istio.
        ("{}", &MeshConfig::default(), "BlackHoleCluster"),
    ] {
        let yaml = format!(
            "{SERVICES}{}",
            sidecar_resource(
                "shop",
                "default",
                &format!("  outboundTrafficPolicy: {policy}\n")
            )
        );
        let t = translate_in(&yaml, "shop", mesh);
        assert_eq!(
            tcp_proxy(&listener(&t, "virtualOutbound")["filter_chains"][1])["cluster"],
            want,
            "{policy}"
        );
        // No egress: every service is still imported.
        assert!(has_cluster(
            &t,
            "outbound|9080||ratings.other.svc.cluster.local"
        ));
    }
}

#[test]
fn an_egress_port_takes_its_port_and_virtual_service_destinations_get_clusters() {
    let mut yaml = String::from(SERVICES);
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings.other.svc.cluster.local}}]
  - route: [{destination: {host: reviews}}]
"#;
    yaml += &sidecar_resource(
        "shop",
        "default",
        "  egress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    hosts: [./reviews.shop.svc.cluster.local]\n  - hosts: [./*, other/*]\n",
    );
    let t = translate_in(&yaml, "shop", &MeshConfig::default());
    // Port 9080 belongs to the first listener: only reviews, with its VirtualService.
    let rc = route(&t, "9080");
    assert_eq!(
        vhost_names(&rc),
        ["reviews.shop.svc.cluster.local:9080", "allow_any"]
    );
    let reviews = vhost(&rc, "reviews.shop.svc.cluster.local:9080");
    assert_eq!(
        reviews["routes"][0]["route"]["cluster"],
        "outbound|9080||ratings.other.svc.cluster.local"
    );
    // ratings is imported by the catch-all too, and routed to: it has its cluster.
    assert!(has_cluster(
        &t,
        "outbound|9080||ratings.other.svc.cluster.local"
    ));
    listener(&t, "10.96.0.7_5432");

    // Without the catch-all, ratings is not imported, but the VirtualService sends to it,
    // so it still gets a cluster (istiod's sidecar scope does the same) and no route of
    // its own.
    let yaml = yaml.replace("  - hosts: [./*, other/*]\n", "");
    let t = translate_in(&yaml, "shop", &MeshConfig::default());
    assert!(has_cluster(
        &t,
        "outbound|9080||ratings.other.svc.cluster.local"
    ));
    assert!(t.resources.listener("10.96.0.7_5432").is_none());
    assert_eq!(names(&t), ["0.0.0.0_9080", "virtualOutbound"]);
}

#[test]
fn every_connection_manager_traces_to_the_mesh_provider_without_upstream_spans() {
    let mesh = crate::config::mesh::parse_mesh_config(
        "mesh.yaml",
        "extensionProviders:\n- name: z\n  zipkin: {service: reviews.shop.svc.cluster.local, port: 9080}\ndefaultProviders: {tracing: [z]}\n",
    )
    .unwrap();
    let t = translate_in(SERVICES, "shop", &mesh);
    let mut managers = 0;
    for l in &t.resources.listeners {
        let l = json::to_json(l).unwrap();
        let chains = l["filter_chains"].as_array().into_iter().flatten().chain(
            l["default_filter_chain"]
                .as_object()
                .map(|_| &l["default_filter_chain"]),
        );
        for fc in chains {
            for f in fc["filters"].as_array().into_iter().flatten() {
                if f["name"] != "envoy.filters.network.http_connection_manager" {
                    continue;
                }
                managers += 1;
                let tracing = &f["typed_config"]["tracing"];
                assert_eq!(
                    tracing["provider"]["typed_config"]["collector_cluster"],
                    "outbound|9080||reviews.shop.svc.cluster.local",
                    "{}",
                    l["name"]
                );
                // A sidecar and its application are one hop: no upstream spans.
                assert!(tracing["spawn_upstream_span"].is_null());
                assert_eq!(tracing["random_sampling"], json!({"value": 1.0}));
            }
        }
    }
    assert!(
        managers > 0,
        "no HTTP connection manager in {:?}",
        names(&t)
    );
}

#[test]
fn telemetry_match_modes_split_inbound_and_outbound_tracing() {
    let mesh = crate::config::mesh::parse_mesh_config(
        "mesh.yaml",
        "extensionProviders:\n- name: z\n  zipkin: {service: reviews.shop.svc.cluster.local, port: 9080}\ndefaultProviders: {tracing: [z]}\n",
    )
    .unwrap();
    let telemetry = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: pp, namespace: shop}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  tracing:\n  - match: {mode: SERVER}\n    randomSamplingPercentage: 50\n  - match: {mode: CLIENT}\n    randomSamplingPercentage: 5\n";
    let t = translate_in(&format!("{SERVICES}{telemetry}"), "shop", &mesh);
    let (mut server, mut client) = (0, 0);
    for l in &t.resources.listeners {
        let l = json::to_json(l).unwrap();
        let name = l["name"].as_str().unwrap_or_default().to_string();
        let chains = l["filter_chains"].as_array().into_iter().flatten().chain(
            l["default_filter_chain"]
                .as_object()
                .map(|_| &l["default_filter_chain"]),
        );
        for fc in chains {
            for f in fc["filters"].as_array().into_iter().flatten() {
                if f["name"] != "envoy.filters.network.http_connection_manager" {
                    continue;
                }
                let sampling = &f["typed_config"]["tracing"]["random_sampling"]["value"];
                if inbound(&name) {
                    server += 1;
                    assert_eq!(*sampling, json!(50.0), "{name}");
                } else {
                    client += 1;
                    assert_eq!(*sampling, json!(5.0), "{name}");
                }
            }
        }
    }
    assert!(
        server > 0 && client > 0,
        "{server} inbound, {client} outbound"
    );
}
