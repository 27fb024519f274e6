//! The inbound side's names and structure, against istiod's, and PeerAuthentication's
//! effect on the chains.
use super::*;
use crate::registry::Registry;
use crate::xds::json;
use crate::xds::{ProxyIdentity, ProxyKind, TypeUrl};
use serde_json::{Value, json};

/// A ServiceEntry `reviews` in `shop` whose workload runs at 10.0.0.5: port 9080 (HTTP,
/// target 8080), 9090 (TCP), 7070 (GRPC), 6060 (no protocol: sniffed).
const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 9090, name: tcp, protocol: TCP}
  - {number: 7070, name: grpc, protocol: GRPC}
  - {number: 6060, name: other}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: shop}
spec:
  address: 10.0.0.5
  labels: {app: reviews, version: v1}
  serviceAccount: reviews
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [elsewhere.other.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.5}]
"#;

fn pa(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n"
    )
}

fn proxy(ip: &str, labels: &[(&str, &str)]) -> ProxyIdentity {
    ProxyIdentity {
        id: format!("sidecar~{ip}~reviews-1.shop~shop.svc.cluster.local"),
        kind: ProxyKind::Sidecar,
        namespace: "shop".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ip_addresses: vec![ip.to_string()],
        domain_suffix: "cluster.local".into(),
        ..Default::default()
    }
}

fn translate(yaml: &str, proxy: &ProxyIdentity) -> Translation {
    let loaded = crate::config::load_str("t.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, diags) = Registry::from_config(&loaded.config);
    assert!(diags.is_empty(), "{diags:?}");
    crate::translate::sidecar(
        &loaded.config,
        &registry,
        proxy,
        &crate::config::mesh::MeshConfig::default(),
    )
}

fn listener(t: &Translation) -> Value {
    let l = t
        .resources
        .listeners
        .iter()
        .find(|l| l.name == VIRTUAL_INBOUND)
        .expect("virtualInbound");
    json::to_json(l).expect("json")
}

fn cluster(t: &Translation, name: &str) -> Value {
    json::to_json(t.resources.cluster(name).unwrap_or_else(|| {
        panic!(
            "cluster {name} in {:?}",
            t.resources.names(TypeUrl::Cluster)
        )
    }))
    .expect("json")
}

/// The chains matching `port` (0: no destination port), as (name, transport, ALPN,
/// first filter, has TLS).
fn chains(l: &Value, port: u64) -> Vec<(String, String, Vec<String>, String, bool)> {
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["filter_chain_match"]["destination_port"]
                .as_u64()
                .unwrap_or(0)
                == port
        })
        .map(|c| {
            let m = &c["filter_chain_match"];
            (
                c["name"].as_str().unwrap_or("").to_string(),
                m["transport_protocol"].as_str().unwrap_or("").to_string(),
                m["application_protocols"]
                    .as_array()
                    .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default(),
                c["filters"][0]["name"].as_str().unwrap().to_string(),
                !c["transport_socket"].is_null(),
            )
        })
        .collect()
}

fn chain<'a>(l: &'a Value, port: u64, transport: &str) -> &'a Value {
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["filter_chain_match"]["destination_port"]
                .as_u64()
                .unwrap_or(0)
                == port
                && c["filter_chain_match"]["transport_protocol"] == transport
        })
        .unwrap_or_else(|| panic!("a {transport} chain for port {port}"))
}

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP: &str = "envoy.filters.network.tcp_proxy";

fn strs(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_virtual_inbound_listener_is_istios() {
    let t = translate(SERVICES, &proxy("10.0.0.5", &[("app", "reviews")]));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let l = listener(&t);
    assert_eq!(l["address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(l["address"]["socket_address"]["port_value"], 15006);
    assert_eq!(l["traffic_direction"], "INBOUND");
    assert_eq!(l["continue_on_listener_filters_timeout"], true);
    assert_eq!(l["listener_filters_timeout"], "0s");
    let filters: Vec<&str> = l["listener_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector",
            "envoy.filters.listener.http_inspector"
        ]
    );
    // TLS is looked for on every port but 15006; HTTP is sniffed only where a chain
    // matches on it: the passthrough chains and the port without a protocol.
    assert_eq!(
        l["listener_filters"][1]["filter_disabled"],
        json!({"destination_port_range": {"start": 15006, "end": 15007}})
    );
    let http_disabled: Vec<i64> = l["listener_filters"][2]["filter_disabled"]["or_match"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["destination_port_range"]["start"].as_i64().unwrap())
        .collect();
    assert_eq!(http_disabled, [7070, 8080, 9090, 15006]);

    // The blackhole chain comes first.
    assert_eq!(
        chains(&l, 15006),
        [(
            "virtualInbound-blackhole".into(),
            String::new(),
            vec![],
            TCP.into(),
            false
        )]
    );
    assert_eq!(
        l["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        "BlackHoleCluster"
    );
    // Names, by the target port.
    let names: BTreeSet<&str> = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "virtualInbound-blackhole",
            "virtualInbound",
            "virtualInbound-catchall-http",
            "0.0.0.0_6060",
            "0.0.0.0_7070",
            "0.0.0.0_8080",
            "0.0.0.0_9090",
        ])
    );
}

#[test]
fn http_ports_route_inline_to_inbound_clusters_with_xfcc_appended() {
    let t = translate(SERVICES, &proxy("10.0.0.5", &[("app", "reviews")]));
    let l = listener(&t);
    let hcm = &chain(&l, 8080, "raw_buffer")["filters"][0]["typed_config"];
    let expect = json!({
        "stat_prefix": "inbound_0.0.0.0_8080;",
        "use_remote_address": false,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": true, "uri": true, "dns": true},
        "server_name": "istio-envoy",
        "normalize_path": true,
        "stream_idle_timeout": "0s",
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&hcm[k], v, "{k}");
    }
    let rc = &hcm["route_config"];
    assert_eq!(rc["name"], "inbound|8080||");
    assert_eq!(rc["validate_clusters"], false);
    let vh = &rc["virtual_hosts"][0];
    assert_eq!(vh["name"], "inbound|http|9080");
    assert_eq!(vh["domains"], json!(["*"]));
    let r = &vh["routes"][0];
    assert_eq!(r["name"], "default");
    assert_eq!(r["match"], json!({"prefix": "/"}));
    assert_eq!(
        r["decorator"]["operation"],
        "reviews.shop.svc.cluster.local:9080/*"
    );
    assert_eq!(r["route"]["cluster"], "inbound|8080||");
    assert_eq!(r["route"]["timeout"], "0s");
    assert_eq!(
        r["route"]["max_stream_duration"],
        json!({"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"})
    );
    assert_eq!(
        r["route"]["retry_policy"],
        json!({"retry_on": "reset-before-request", "num_retries": 2})
    );
    // gRPC: HTTP/2 both sides, no inbound retries.
    let grpc = &chain(&l, 7070, "raw_buffer")["filters"][0]["typed_config"];
    assert_eq!(grpc["http2_protocol_options"], json!({}));
    assert!(
        grpc["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"].is_null()
    );
    // TCP ports end in tcp_proxy to their cluster.
    let tcp = &chain(&l, 9090, "raw_buffer")["filters"][0];
    assert_eq!(tcp["name"], TCP);
    assert_eq!(tcp["typed_config"]["cluster"], "inbound|9090||");
    assert_eq!(tcp["typed_config"]["stat_prefix"], "inbound|9090||");
}

/// The inbound side's clusters (the outbound side's are tested in `tests`).
fn inbound_clusters(t: &Translation) -> Vec<&str> {
    t.resources
        .names(TypeUrl::Cluster)
        .into_iter()
        .filter(|n| *n == "InboundPassthroughCluster" || n.starts_with("inbound|"))
        .collect()
}

#[test]
fn inbound_clusters_are_original_dst_from_127_0_0_6() {
    let t = translate(SERVICES, &proxy("10.0.0.5", &[("app", "reviews")]));
    let mut names = inbound_clusters(&t);
    names.sort();
    assert_eq!(
        names,
        [
            "InboundPassthroughCluster",
            "inbound|6060||",
            "inbound|7070||",
            "inbound|8080||",
            "inbound|9090||"
        ]
    );
    let c = cluster(&t, "inbound|8080||");
    assert_eq!(c["type"], "ORIGINAL_DST");
    assert_eq!(c["lb_policy"], "CLUSTER_PROVIDED");
    assert_eq!(c["connect_timeout"], "10s");
    assert_eq!(c["alt_stat_name"], "inbound|8080||;");
    assert_eq!(c["cleanup_interval"], "9223372035s");
    assert_eq!(
        c["upstream_bind_config"],
        json!({"source_address": {"address": "127.0.0.6", "port_value": 0}})
    );
    assert_eq!(
        c["circuit_breakers"]["thresholds"][0]["max_connections"],
        4294967295u64
    );
    assert!(c["load_assignment"].is_null());
    assert_eq!(
        c["metadata"]["filter_metadata"]["istio"]["services"][0]["host"],
        "reviews.shop.svc.cluster.local"
    );
    let opts = |name: &str| {
        cluster(&t, name)["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            .clone()
    };
    assert!(opts("inbound|8080||").is_null());
    assert_eq!(
        opts("inbound|7070||")["explicit_http_config"],
        json!({"http2_protocol_options": {}})
    );
    assert_eq!(
        opts("inbound|6060||")["use_downstream_protocol_config"],
        json!({"http_protocol_options": {}, "http2_protocol_options": {}})
    );
    let p = cluster(&t, "InboundPassthroughCluster");
    assert_eq!(p["type"], "ORIGINAL_DST");
    assert_eq!(p["lb_policy"], "CLUSTER_PROVIDED");
    assert_eq!(
        p["upstream_bind_config"]["source_address"]["address"],
        "127.0.0.6"
    );
    let po = &p["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(po["common_http_protocol_options"]["idle_timeout"], "300s");
    assert!(!po["use_downstream_protocol_config"].is_null());
}

#[test]
fn instances_are_the_proxys_own_in_its_namespace() {
    // Another IP: no instance, only the passthrough chains and cluster.
    let t = translate(SERVICES, &proxy("10.0.0.9", &[("app", "reviews")]));
    assert_eq!(inbound_clusters(&t), ["InboundPassthroughCluster"]);
    let l = listener(&t);
    assert!(chains(&l, 8080).is_empty());
    // `elsewhere` has an endpoint at 10.0.0.5 too, but lives in another namespace.
    let t = translate(SERVICES, &proxy("10.0.0.5", &[]));
    assert!(t.resources.cluster("inbound|5000||").is_none());
}

#[test]
fn permissive_by_default_gives_mtls_and_plain_text_chains() {
    let t = translate(SERVICES, &proxy("10.0.0.5", &[("app", "reviews")]));
    let l = listener(&t);
    let all_istio = strs(&[
        "istio",
        "istio-peer-exchange",
        "istio-http/1.0",
        "istio-http/1.1",
        "istio-h2",
    ]);
    assert_eq!(
        chains(&l, 8080),
        [
            (
                "0.0.0.0_8080".into(),
                "tls".into(),
                all_istio.clone(),
                HCM.into(),
                true
            ),
            (
                "0.0.0.0_8080".into(),
                "raw_buffer".into(),
                vec![],
                HCM.into(),
                false
            ),
        ]
    );
    assert_eq!(
        chains(&l, 9090),
        [
            (
                "0.0.0.0_9090".into(),
                "tls".into(),
                all_istio,
                TCP.into(),
                true
            ),
            (
                "0.0.0.0_9090".into(),
                "tls".into(),
                vec![],
                TCP.into(),
                false
            ),
            (
                "0.0.0.0_9090".into(),
                "raw_buffer".into(),
                vec![],
                TCP.into(),
                false
            ),
        ]
    );
    // Sniffed ports and the passthrough: Istio's five chains.
    let sniffed = [
        (
            "tls",
            strs(&["istio-http/1.0", "istio-http/1.1", "istio-h2"]),
            HCM,
            true,
        ),
        ("raw_buffer", strs(&["http/1.1", "h2c"]), HCM, false),
        ("tls", strs(&["istio-peer-exchange", "istio"]), TCP, true),
        ("raw_buffer", vec![], TCP, false),
        ("tls", vec![], TCP, false),
    ];
    let shape = |port| -> Vec<(String, Vec<String>, String, bool)> {
        chains(&l, port)
            .into_iter()
            .map(|(_, t, a, f, tls)| (t, a, f, tls))
            .collect()
    };
    let want: Vec<(String, Vec<String>, String, bool)> = sniffed
        .iter()
        .map(|(t, a, f, tls)| (t.to_string(), a.clone(), f.to_string(), *tls))
        .collect();
    assert_eq!(shape(6060), want);
    assert_eq!(shape(0), want);
    let names: Vec<String> = chains(&l, 0).into_iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "virtualInbound-catchall-http",
            "virtualInbound-catchall-http",
            "virtualInbound",
            "virtualInbound",
            "virtualInbound"
        ]
    );
    let pass = &chain(&l, 0, "raw_buffer")["filters"][0]["typed_config"];
    assert_eq!(pass["stat_prefix"], "InboundPassthroughCluster;");
    assert_eq!(
        pass["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
        "InboundPassthroughCluster"
    );
}

#[test]
fn the_mtls_context_requires_a_mesh_client_certificate_from_the_agent() {
    let t = translate(SERVICES, &proxy("10.0.0.5", &[("app", "reviews")]));
    let l = listener(&t);
    let ts = &chain(&l, 8080, "tls")["transport_socket"];
    assert_eq!(ts["name"], "envoy.transport_sockets.tls");
    let ctx = &ts["typed_config"];
    assert_eq!(ctx["require_client_certificate"], true);
    let common = &ctx["common_tls_context"];
    assert_eq!(common["alpn_protocols"], json!(["h2", "http/1.1"]));
    assert_eq!(
        common["tls_params"]["tls_minimum_protocol_version"],
        "TLSv1_2"
    );
    assert_eq!(
        common["tls_params"]["tls_maximum_protocol_version"],
        "TLSv1_3"
    );
    assert_eq!(
        common["tls_params"]["cipher_suites"],
        json!(tls::INBOUND_MTLS_CIPHERS)
    );
    let sds = &common["tls_certificate_sds_secret_configs"][0];
    assert_eq!(sds["name"], "default");
    assert_eq!(
        sds["sds_config"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "sds-grpc"
    );
    let combined = &common["combined_validation_context"];
    assert_eq!(combined["default_validation_context"], json!({}));
    assert_eq!(
        combined["validation_context_sds_secret_config"]["name"],
        "ROOTCA"
    );
    // TCP chains offer the peer exchange ALPN first.
    let tcp = &chain(&l, 9090, "tls")["transport_socket"]["typed_config"];
    assert_eq!(
        tcp["common_tls_context"]["alpn_protocols"],
        json!(["istio-peer-exchange", "h2", "http/1.1"])
    );
}

#[test]
fn strict_keeps_only_tls_chains_and_disable_only_plain_text() {
    let strict = format!(
        "{SERVICES}{}",
        pa("default", "istio-system", "{mtls: {mode: STRICT}}")
    );
    let l = listener(&translate(
        &strict,
        &proxy("10.0.0.5", &[("app", "reviews")]),
    ));
    assert_eq!(
        chains(&l, 8080),
        [(
            "0.0.0.0_8080".into(),
            "tls".into(),
            vec![],
            HCM.into(),
            true
        )]
    );
    assert_eq!(
        chains(&l, 9090),
        [(
            "0.0.0.0_9090".into(),
            "tls".into(),
            vec![],
            TCP.into(),
            true
        )]
    );
    let passthrough: Vec<_> = chains(&l, 0).into_iter().map(|c| (c.1, c.2, c.4)).collect();
    assert_eq!(
        passthrough,
        [
            (
                "tls".into(),
                strs(&["istio-http/1.0", "istio-http/1.1", "istio-h2"]),
                true
            ),
            ("tls".into(), vec![], true),
        ]
    );
    // No chain anywhere accepts plain text (besides the blackhole on 15006).
    assert!(
        l["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] != "virtualInbound-blackhole")
            .all(|c| c["filter_chain_match"]["transport_protocol"] == "tls"
                && !c["transport_socket"].is_null())
    );

    let disable = format!(
        "{SERVICES}{}",
        pa("default", "shop", "{mtls: {mode: DISABLE}}")
    );
    let l = listener(&translate(
        &disable,
        &proxy("10.0.0.5", &[("app", "reviews")]),
    ));
    assert!(
        l["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["transport_socket"].is_null())
    );
    assert_eq!(
        chains(&l, 8080),
        [(
            "0.0.0.0_8080".into(),
            "raw_buffer".into(),
            vec![],
            HCM.into(),
            false
        )]
    );
    // Nothing needs the TLS inspector.
    let filters: Vec<&str> = l["listener_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.http_inspector"
        ]
    );
}

#[test]
fn precedence_and_port_level_overrides_reach_the_chains() {
    let yaml = format!(
        "{SERVICES}{}{}{}",
        pa("default", "istio-system", "{mtls: {mode: DISABLE}}"),
        pa("default", "shop", "{mtls: {mode: STRICT}}"),
        pa(
            "reviews",
            "shop",
            "{selector: {matchLabels: {version: v1}}, mtls: {mode: UNSET}, portLevelMtls: {8080: {mode: PERMISSIVE}, 9090: {mode: DISABLE}, 3000: {mode: DISABLE}}}"
        )
    );
    // The workload policy selects by the registry's labels of the workload (version: v1
    // comes from the WorkloadEntry, not from the proxy).
    let l = listener(&translate(&yaml, &proxy("10.0.0.5", &[("app", "reviews")])));
    let transports = |port| -> Vec<String> { chains(&l, port).into_iter().map(|c| c.1).collect() };
    // UNSET at the workload: the namespace's STRICT.
    assert_eq!(transports(7070), ["tls"]);
    assert_eq!(transports(0), ["tls", "tls"]);
    // Port-level, by workload (target) port.
    assert_eq!(transports(8080), ["tls", "raw_buffer"]);
    assert_eq!(transports(9090), ["raw_buffer"]);
    // A port-level port no service declares gets its own passthrough chains.
    assert_eq!(
        chains(&l, 3000),
        [
            (
                "virtualInbound-catchall-http".into(),
                "raw_buffer".into(),
                strs(&["http/1.1", "h2c"]),
                HCM.into(),
                false
            ),
            (
                "virtualInbound".into(),
                "raw_buffer".into(),
                vec![],
                TCP.into(),
                false
            ),
        ]
    );
    // Another namespace's workload: the mesh's DISABLE.
    let other = ProxyIdentity {
        namespace: "other".into(),
        ..proxy("10.0.0.5", &[])
    };
    let l = listener(&translate(&yaml, &other));
    assert_eq!(chains(&l, 5000).len(), 1);
    assert_eq!(chains(&l, 5000)[0].1, "raw_buffer");
}

#[test]
fn a_gateway_is_not_affected_by_peer_authentication() {
    let gateway = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    let strict = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    let run = |yaml: &str| {
        let loaded = crate::config::load_str("t.yaml", yaml);
        assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
        let (registry, _) = Registry::from_config(&loaded.config);
        let proxy = ProxyIdentity::gateway(
            "shop",
            BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
        );
        crate::translate::gateway(&loaded.config, &registry, &proxy).resources
    };
    let without = run(&format!("{SERVICES}---\n{gateway}"));
    let with = run(&format!("{SERVICES}---\n{gateway}{strict}"));
    assert_eq!(without, with);
    assert!(with.listeners.iter().all(|l| l.name != VIRTUAL_INBOUND
        && l.filter_chains.iter().all(|c| c.transport_socket.is_none())));
}

#[test]
fn authorization_policies_reach_every_inbound_chain() {
    let policies = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: shop}
spec:
  selector: {matchLabels: {version: v1}}
  action: DENY
  rules: [{from: [{source: {namespaces: [bad]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{}]
"#;
    let t = translate(
        &format!("{SERVICES}{policies}"),
        &proxy("10.0.0.5", &[("app", "reviews")]),
    );
    let l = listener(&t);
    // HTTP chains: the RBAC filter before fault, CORS and the router. The selector
    // matched the registry's labels of the workload (`version: v1`).
    for port in [8080, 7070] {
        for transport in ["raw_buffer", "tls"] {
            let hcm = &chain(&l, port, transport)["filters"][0]["typed_config"];
            let names: Vec<&str> = hcm["http_filters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                [
                    "envoy.filters.http.rbac",
                    "envoy.filters.http.fault",
                    "envoy.filters.http.cors",
                    "envoy.filters.http.router"
                ],
                "{port} {transport}"
            );
            let rules = &hcm["http_filters"][0]["typed_config"]["rules"];
            assert_eq!(rules["action"], "DENY");
            assert!(rules["policies"]["ns[shop]-policy[deny-bad]-rule[0]"].is_object());
        }
    }
    // TCP chains (the port's and the catch-all's): network RBAC, then tcp_proxy.
    let passthrough = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"] == VIRTUAL_INBOUND
                && c["filter_chain_match"]["transport_protocol"] == "raw_buffer"
        })
        .expect("the TCP catch-all chain");
    for filters in [
        &chain(&l, 9090, "raw_buffer")["filters"],
        &passthrough["filters"],
    ] {
        assert_eq!(filters[0]["name"], "envoy.filters.network.rbac");
        assert_eq!(filters[0]["typed_config"]["stat_prefix"], "tcp.");
        assert_eq!(filters[1]["name"], TCP);
    }
}
