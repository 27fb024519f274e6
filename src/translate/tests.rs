//! Tables of Istio snippets and the Envoy fields they must become.
use super::*;
use crate::xds::json;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9001}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 9002}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: default}
spec:
  hosts: [other.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: http, protocol: HTTP}, {number: 7001, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

fn translate_yaml(yaml: &str) -> Translation {
    let loaded = crate::config::load_str("test.yaml", yaml);
    assert!(
        !loaded.has_errors(),
        "test config has errors: {:#?}",
        loaded.diagnostics
    );
    let (registry, mut diags) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity::gateway(
        "default",
        BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
    );
    let mut t = gateway(&loaded.config, &registry, &proxy);
    diags.append(&mut t.diagnostics);
    t.diagnostics = diags;
    t
}

/// The translation of SE (services + gateway) plus one VirtualService's `http` list.
fn with_routes(http: &str) -> Translation {
    translate_yaml(&format!(
        "{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{http}"
    ))
}

fn route_json(t: &Translation, name: &str) -> Value {
    json::to_json(t.resources.route(name).expect("route config")).expect("json")
}

/// The routes of the only virtual host of `http.8080`.
fn routes(t: &Translation) -> Vec<Value> {
    let rc = route_json(t, "http.8080");
    rc["virtual_hosts"][0]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn cluster_json(t: &Translation, name: &str) -> Value {
    json::to_json(t.resources.cluster(name).unwrap_or_else(|| {
        panic!(
            "cluster {name} in {:?}",
            t.resources.names(crate::xds::TypeUrl::Cluster)
        )
    }))
    .expect("json")
}

#[test]
fn gateway_listener_and_connection_manager_are_istios() {
    let t = with_routes("  - route: [{destination: {host: backend.internal}}]\n");
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Listener),
        vec!["0.0.0.0_8080"]
    );
    let l = json::to_json(&t.resources.listeners[0]).unwrap();
    assert_eq!(l["address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
    assert_eq!(l["traffic_direction"], "OUTBOUND");
    let chain = &l["filter_chains"][0];
    assert_eq!(chain["transport_socket_connect_timeout"], "15s");
    let hcm = &chain["filters"][0]["typed_config"];
    assert_eq!(
        chain["filters"][0]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    let expect = json!({
        "stat_prefix": "outbound_0.0.0.0_8080;",
        "server_name": "istio-envoy",
        "use_remote_address": true,
        "forward_client_cert_details": "SANITIZE_SET",
        "normalize_path": true,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "stream_idle_timeout": "0s",
        "proxy_100_continue": true,
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&hcm[k], v, "{k}");
    }
    assert_eq!(hcm["rds"]["route_config_name"], "http.8080");
    assert_eq!(hcm["rds"]["config_source"]["ads"], json!({}));
    assert_eq!(hcm["upgrade_configs"][0]["upgrade_type"], "websocket");
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        vec![
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(
        hcm["set_current_client_cert_details"],
        json!({"subject": true, "cert": true, "dns": true, "uri": true})
    );
    assert_eq!(
        hcm["request_id_extension"]["typed_config"]["use_request_id_for_trace_sampling"],
        true
    );

    let rc = route_json(&t, "http.8080");
    assert_eq!(rc["ignore_port_in_host_matching"], true);
    assert_eq!(rc["validate_clusters"], false);
    assert_eq!(rc["max_direct_response_body_size_bytes"], 1048576);
    let vh = &rc["virtual_hosts"][0];
    assert_eq!(vh["name"], "*:8080");
    assert_eq!(vh["domains"], json!(["*"]));
    assert_eq!(vh["include_request_attempt_count"], true);
    let r = &vh["routes"][0];
    assert_eq!(r["match"], json!({"prefix": "/"}));
    assert_eq!(r["route"]["cluster"], "outbound|8000||backend.internal");
    assert_eq!(r["route"]["timeout"], "0s");
    assert_eq!(
        r["route"]["retry_policy"]["retry_on"],
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(r["route"]["retry_policy"]["num_retries"], 2);
    assert_eq!(r["decorator"]["operation"], "backend.internal:8000/*");
    assert_eq!(
        r["metadata"]["filter_metadata"]["istio"]["config"],
        "/apis/networking.istio.io/v1/namespaces/default/virtual-service/vs"
    );

    // Only the referenced service gets clusters, with its endpoints by EDS.
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Cluster),
        vec!["outbound|8000||backend.internal"]
    );
    let c = cluster_json(&t, "outbound|8000||backend.internal");
    assert_eq!(c["type"], "EDS");
    assert_eq!(
        c["eds_cluster_config"]["service_name"],
        "outbound|8000||backend.internal"
    );
    assert_eq!(c["connect_timeout"], "10s");
    assert_eq!(c["lb_policy"], "LEAST_REQUEST");
    assert_eq!(c["alt_stat_name"], "outbound|8000||backend.internal;");
    assert_eq!(
        c["circuit_breakers"]["thresholds"][0]["max_connections"],
        4294967295u64
    );
    let cla = json::to_json(
        t.resources
            .endpoint("outbound|8000||backend.internal")
            .unwrap(),
    )
    .unwrap();
    let eps = &cla["endpoints"][0]["lb_endpoints"];
    assert_eq!(
        eps[0]["endpoint"]["address"]["socket_address"]["port_value"],
        9001
    );
    assert_eq!(
        eps[1]["endpoint"]["address"]["socket_address"]["address"],
        "127.0.0.2"
    );
    assert_eq!(
        eps[0]["metadata"]["filter_metadata"]["istio"]["labels"]["version"],
        "v1"
    );
}

#[test]
fn route_matches() {
    // (http entry, expected match JSON of the first route)
    let cases: Vec<(&str, Value)> = vec![
        (
            "  - match: [{uri: {exact: /a}}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"path": "/a", "case_sensitive": true}),
        ),
        (
            "  - match: [{uri: {prefix: /a}, ignoreUriCase: true}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"prefix": "/a", "case_sensitive": false}),
        ),
        (
            "  - match: [{uri: {regex: '/a/[0-9]+'}}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"safe_regex": {"regex": "/a/[0-9]+"}, "case_sensitive": true}),
        ),
        (
            "  - match: [{headers: {x-b: {exact: v}, x-a: {prefix: p}, x-c: {}}, method: {exact: GET}, authority: {exact: a.com}, scheme: {exact: http}}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"prefix": "/", "case_sensitive": true, "headers": [
                {"name": "x-a", "string_match": {"prefix": "p"}},
                {"name": "x-b", "string_match": {"exact": "v"}},
                {"name": "x-c", "present_match": true},
                {"name": ":method", "string_match": {"exact": "GET"}},
                {"name": ":authority", "string_match": {"exact": "a.com"}},
                {"name": ":scheme", "string_match": {"exact": "http"}},
            ]}),
        ),
        (
            "  - match: [{withoutHeaders: {x-deny: {exact: yes}, x-any: {}}}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"prefix": "/", "case_sensitive": true, "headers": [
                {"name": "x-any", "present_match": true, "invert_match": true},
                {"name": "x-deny", "string_match": {"exact": "yes"}, "invert_match": true, "treat_missing_header_as_empty": true},
            ]}),
        ),
        (
            "  - match: [{queryParams: {v: {exact: '1'}, r: {regex: 'a.*'}, p: {}}}]\n    route: [{destination: {host: backend.internal}}]\n",
            json!({"prefix": "/", "case_sensitive": true, "query_parameters": [
                {"name": "p", "present_match": true},
                {"name": "r", "string_match": {"safe_regex": {"regex": "a.*"}}},
                {"name": "v", "string_match": {"exact": "1"}},
            ]}),
        ),
    ];
    for (http, want) in cases {
        let t = with_routes(http);
        assert_eq!(routes(&t)[0]["match"], want, "{http}");
    }
}

#[test]
fn matches_that_do_not_apply_to_this_gateway_are_left_out() {
    let t = with_routes(
        "  - name: r
    match:
    - {name: other-port, port: 9999, uri: {prefix: /p}}
    - {name: other-gw, gateways: [other], uri: {prefix: /g}}
    - {name: this-gw, gateways: [default/gw], uri: {prefix: /t}}
    - {name: labels, sourceLabels: {app: nope}, uri: {prefix: /l}}
    route: [{destination: {host: backend.internal}}]
",
    );
    let names: Vec<String> = routes(&t)
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, vec!["r.this-gw"]);
}

#[test]
fn actions() {
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "  - redirect: {uri: /new, authority: b.com, redirectCode: 302}\n",
            "redirect",
            json!({"host_redirect": "b.com", "path_redirect": "/new", "response_code": "FOUND"}),
        ),
        (
            "  - redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}\n",
            "redirect",
            json!({"scheme_redirect": "https", "port_redirect": 8080}),
        ),
        ("  - redirect: {port: 80}\n", "redirect", json!({})),
        (
            "  - redirect: {prefixRewrite: /v2}\n",
            "redirect",
            json!({"prefix_rewrite": "/v2"}),
        ),
        (
            "  - directResponse: {status: 418, body: {string: teapot}}\n",
            "direct_response",
            json!({"status": 418, "body": {"inline_string": "teapot"}}),
        ),
        (
            "  - directResponse: {status: 200, body: {bytes: aGk=}}\n",
            "direct_response",
            json!({"status": 200, "body": {"inline_bytes": "aGk="}}),
        ),
    ];
    for (http, key, want) in cases {
        let t = with_routes(http);
        assert_eq!(routes(&t)[0][key], want, "{http}");
    }

    let t = with_routes(
        "  - rewrite: {uri: /v2/, authority: new.host}
    timeout: 1.5s
    route: [{destination: {host: backend.internal}}]
  - rewrite: {uriRegexRewrite: {match: '^/a/(.*)$', rewrite: '/b/\\1'}}
    headers:
      request: {set: {x-set: s, ':authority': auth.example}, add: {x-add: a}, remove: [x-rm, host]}
      response: {set: {x-rs: '1'}, remove: [server]}
    route:
    - destination: {host: backend.internal}
      headers: {request: {set: {x-dest: d}}}
",
    );
    let r = routes(&t);
    assert_eq!(r[0]["route"]["prefix_rewrite"], "/v2/");
    assert_eq!(r[0]["route"]["host_rewrite_literal"], "new.host");
    assert_eq!(r[0]["route"]["timeout"], "1.500s");
    assert_eq!(r[0]["route"]["max_grpc_timeout"], "1.500s");
    // The first route matches everything: the second one can never match and is dropped.
    assert_eq!(r.len(), 1);

    let t = with_routes(
        "  - match: [{uri: {prefix: /x}}]
    rewrite: {uriRegexRewrite: {match: '^/a/(.*)$', rewrite: '/b/\\1'}}
    headers:
      request: {set: {x-set: s, ':authority': auth.example}, add: {x-add: a}, remove: [x-rm, host]}
      response: {set: {x-rs: '1'}, remove: [server]}
    route:
    - destination: {host: backend.internal}
      headers: {request: {set: {x-dest: d}}}
",
    );
    let r = &routes(&t)[0];
    assert_eq!(
        r["route"]["regex_rewrite"],
        json!({"pattern": {"regex": "^/a/(.*)$"}, "substitution": "/b/\\1"})
    );
    assert_eq!(r["route"]["host_rewrite_literal"], "auth.example");
    assert_eq!(
        r["request_headers_to_add"],
        json!([
            {"header": {"key": "x-set", "value": "s"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-add", "value": "a"}},
            {"header": {"key": "x-dest", "value": "d"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        ])
    );
    assert_eq!(r["request_headers_to_remove"], json!(["x-rm"]));
    assert_eq!(r["response_headers_to_remove"], json!(["server"]));
}

#[test]
fn weighted_destinations_subsets_mirrors_and_filters() {
    let t = translate_yaml(&format!(
        "{SE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend.internal
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - route:
    - {{destination: {{host: backend.internal, subset: v1}}, weight: 80, headers: {{response: {{set: {{x-v: '1'}}}}}}}}
    - {{destination: {{host: backend.internal, subset: v2}}, weight: 20}}
    - {{destination: {{host: other.internal, port: {{number: 7000}}}}, weight: 0}}
    mirror: {{host: other.internal, port: {{number: 7000}}}}
    mirrorPercentage: {{value: 12.5}}
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: '5xx,reset'}}
    fault:
      delay: {{fixedDelay: 100ms, percentage: {{value: 50}}}}
      abort: {{httpStatus: 503, percentage: {{value: 10}}}}
    corsPolicy:
      allowOrigins: [{{exact: https://a.com}}, {{regex: 'https://.*\\.b\\.com'}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-e]
      maxAge: 24h
      allowCredentials: true
"
    ));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let r = &routes(&t)[0];
    let wc = &r["route"]["weighted_clusters"]["clusters"];
    assert_eq!(wc[0]["name"], "outbound|8000|v1|backend.internal");
    assert_eq!(wc[0]["weight"], 80);
    assert_eq!(wc[0]["response_headers_to_add"][0]["header"]["key"], "x-v");
    assert_eq!(wc[1]["name"], "outbound|8000|v2|backend.internal");
    assert_eq!(wc.as_array().unwrap().len(), 2, "zero weights are dropped");
    assert_eq!(
        r["route"]["request_mirror_policies"][0],
        json!({"cluster": "outbound|7000||other.internal",
               "runtime_fraction": {"default_value": {"numerator": 125000, "denominator": "MILLION"}},
               "trace_sampled": false})
    );
    let retry = &r["route"]["retry_policy"];
    assert_eq!(retry["num_retries"], 3);
    assert_eq!(retry["retry_on"], "5xx,reset");
    assert_eq!(retry["per_try_timeout"], "2s");
    let fault = &r["typed_per_filter_config"]["envoy.filters.http.fault"];
    assert_eq!(
        fault["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    );
    assert_eq!(fault["delay"]["fixed_delay"], "0.100s");
    assert_eq!(
        fault["delay"]["percentage"],
        json!({"numerator": 500000, "denominator": "MILLION"})
    );
    assert_eq!(fault["abort"]["http_status"], 503);
    assert_eq!(
        fault["abort"]["percentage"],
        json!({"numerator": 100000, "denominator": "MILLION"})
    );
    let cors = &r["typed_per_filter_config"]["envoy.filters.http.cors"];
    assert_eq!(
        cors["allow_origin_string_match"],
        json!([{"exact": "https://a.com"}, {"safe_regex": {"regex": "https://.*\\.b\\.com"}}])
    );
    assert_eq!(cors["allow_methods"], "GET,POST");
    assert_eq!(cors["max_age"], "86400");
    assert_eq!(cors["allow_credentials"], true);
    assert_eq!(cors["forward_not_matching_preflights"], true);
    assert_eq!(cors["filter_enabled"]["default_value"]["numerator"], 100);

    // Every port and subset of the referenced services; subsets filter endpoints.
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Cluster),
        vec![
            "outbound|7000||other.internal",
            "outbound|7001||other.internal",
            "outbound|8000|v1|backend.internal",
            "outbound|8000|v2|backend.internal",
            "outbound|8000||backend.internal",
        ]
    );
    let v2 = t
        .resources
        .endpoint("outbound|8000|v2|backend.internal")
        .unwrap();
    assert_eq!(v2.endpoints[0].lb_endpoints.len(), 1);
    let c = cluster_json(&t, "outbound|7001||other.internal");
    assert_eq!(
        c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"],
        json!({"http2_protocol_options": {}})
    );
    let c = cluster_json(&t, "outbound|8000|v1|backend.internal");
    assert_eq!(c["metadata"]["filter_metadata"]["istio"]["subset"], "v1");
}

#[test]
fn destination_rule_policies() {
    let t = translate_yaml(&format!(
        "{SE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend.internal
  trafficPolicy:
    loadBalancer: {{consistentHash: {{httpHeaderName: x-user, maglev: {{tableSize: 1009}}}}}}
    connectionPool:
      tcp: {{maxConnections: 7, connectTimeout: 250ms, tcpKeepalive: {{probes: 3, time: 60s}}}}
      http: {{http1MaxPendingRequests: 5, http2MaxRequests: 9, maxRequestsPerConnection: 1, idleTimeout: 30s, maxRetries: 2, h2UpgradePolicy: UPGRADE}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
  subsets:
  - name: rr
    labels: {{version: v1}}
    trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: other, namespace: default}}
spec:
  host: other.internal
  trafficPolicy:
    loadBalancer: {{simple: RANDOM}}
    portLevelSettings:
    - port: {{number: 7001}}
      loadBalancer: {{consistentHash: {{useSourceIp: true}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /b}}}}]
    route: [{{destination: {{host: backend.internal}}}}]
  - route: [{{destination: {{host: other.internal, port: {{number: 7001}}}}}}]
"
    ));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let r = routes(&t);
    assert_eq!(
        r[0]["route"]["hash_policy"],
        json!([{"header": {"header_name": "x-user"}}])
    );
    // Consistent hashing keeps retries on the hashed host.
    assert!(r[0]["route"]["retry_policy"]["retry_host_predicate"].is_null());
    assert_eq!(
        r[1]["route"]["hash_policy"],
        json!([{"connection_properties": {"source_ip": true}}])
    );

    let c = cluster_json(&t, "outbound|8000||backend.internal");
    assert_eq!(c["lb_policy"], "MAGLEV");
    assert_eq!(c["maglev_lb_config"]["table_size"], "1009");
    assert_eq!(c["connect_timeout"], "0.250s");
    let th = &c["circuit_breakers"]["thresholds"][0];
    assert_eq!(th["max_connections"], 7);
    assert_eq!(th["max_pending_requests"], 5);
    assert_eq!(th["max_requests"], 9);
    assert_eq!(th["max_retries"], 2);
    assert_eq!(
        c["upstream_connection_options"]["tcp_keepalive"],
        json!({"keepalive_probes": 3, "keepalive_time": 60})
    );
    let opts = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        opts["common_http_protocol_options"],
        json!({"idle_timeout": "30s", "max_requests_per_connection": 1})
    );
    assert_eq!(
        opts["explicit_http_config"],
        json!({"http2_protocol_options": {}})
    );
    assert_eq!(
        c["outlier_detection"],
        json!({"consecutive_5xx": 2, "interval": "1s", "base_ejection_time": "30s",
               "max_ejection_percent": 50, "enforcing_consecutive_5xx": 100, "enforcing_success_rate": 0})
    );
    assert_eq!(c["common_lb_config"]["healthy_panic_threshold"], json!({}));
    assert_eq!(
        c["metadata"]["filter_metadata"]["istio"]["config"],
        "/apis/networking.istio.io/v1/namespaces/default/destination-rule/backend"
    );
    // The subset overrides the load balancer only.
    let c = cluster_json(&t, "outbound|8000|rr|backend.internal");
    // ROUND_ROBIN is the enum's default: proto3 JSON leaves it out.
    assert!(c["lb_policy"].is_null() && c["maglev_lb_config"].is_null());
    assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_connections"], 7);
    // Port-level settings replace the rule's for that port.
    assert_eq!(
        cluster_json(&t, "outbound|7000||other.internal")["lb_policy"],
        "RANDOM"
    );
    let c = cluster_json(&t, "outbound|7001||other.internal");
    assert_eq!(c["lb_policy"], "RING_HASH");
    assert_eq!(c["ring_hash_lb_config"]["minimum_ring_size"], "1024");
}

#[test]
fn cluster_types_follow_resolution() {
    let t = translate_yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [dns.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-rr}
spec:
  hosts: [rr.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none}
spec:
  hosts: [none.example.com]
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: dns.example.com}}]
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: rr.example.com}}]
  - route: [{destination: {host: none.example.com}}]
"#,
    );
    let c = cluster_json(&t, "outbound|443||dns.example.com");
    assert_eq!(c["type"], "STRICT_DNS");
    assert_eq!(c["dns_lookup_family"], "V4_ONLY");
    // istiod's DNS settings: meshConfig's refresh rate with the TTL respected, jitter,
    // and the c-ares resolver with its UDP query cap.
    assert_eq!(c["dns_refresh_rate"], "60s");
    assert_eq!(c["respect_dns_ttl"], true);
    assert_eq!(c["dns_jitter"], "0.100s");
    assert_eq!(
        c["typed_dns_resolver_config"],
        json!({"name": "envoy.network.dns_resolver.cares", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "udp_max_queries": 100}})
    );
    assert_eq!(
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
        json!({"address": "dns.example.com", "port_value": 443})
    );
    assert!(
        c["typed_extension_protocol_options"].is_null(),
        "TLS ports are not HTTP"
    );
    assert_eq!(
        cluster_json(&t, "outbound|80||rr.example.com")["type"],
        "LOGICAL_DNS"
    );
    assert_eq!(
        cluster_json(&t, "outbound|80||none.example.com")["type"],
        "EDS"
    );
    // DNS clusters carry their endpoints; only EDS clusters have a ClusterLoadAssignment.
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Endpoint),
        vec!["outbound|80||none.example.com"]
    );
}

#[test]
fn virtual_hosts_per_host_and_404_without_routes() {
    let t = translate_yaml(&format!(
        "{SE}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw2, namespace: other}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9090, name: http, protocol: HTTP}}
    hosts: [\"default/a.example.com\", \"b.example.com\", \"*.c.example.com\"]
  - port: {{number: 9191, name: http, protocol: HTTP}}
    hosts: [\"nothing.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.example.com, b.example.com, x.c.example.com, y.c.example.com]
  gateways: [other/gw2]
  http: [{{route: [{{destination: {{host: backend.internal}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: b, namespace: other}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [gw2]
  http: [{{match: [{{uri: {{prefix: /b}}}}], directResponse: {{status: 204}}}}]
"
    ));
    let rc = route_json(&t, "http.9090");
    let vhosts: Vec<(String, Value, usize)> = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["domains"].clone(),
                v["routes"].as_array().map_or(0, |r| r.len()),
            )
        })
        .collect();
    assert_eq!(
        vhosts,
        vec![
            // a.example.com is restricted to namespace default: only VirtualService a;
            // the wildcard's hosts have the same routes and collapse into it.
            (
                "a.example.com:9090".into(),
                json!(["a.example.com", "x.c.example.com", "y.c.example.com"]),
                1
            ),
            // b.example.com gets both; the catch-all route of `a` moves after `b`'s.
            ("b.example.com:9090".into(), json!(["b.example.com"]), 2),
        ]
    );
    let b = &rc["virtual_hosts"][1]["routes"];
    assert_eq!(b[0]["match"]["prefix"], "/b");
    assert_eq!(b[1]["match"]["prefix"], "/");

    let rc = route_json(&t, "http.9191");
    assert_eq!(
        rc["virtual_hosts"],
        json!([{"name": "blackhole:9191", "domains": ["*"]}])
    );
}

#[test]
fn gateways_select_by_labels_and_ports_conflict() {
    let t = translate_yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: [a.com]}
  - {port: {number: 8080, name: http2, protocol: HTTP}, hosts: [b.com]}
  - {port: {number: 8080, name: tcp, protocol: TCP}, hosts: [c.com]}
  - {port: {number: 8081, name: http, protocol: HTTP}, bind: 127.0.0.1, hosts: [d.com]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 9000, name: http, protocol: HTTP}, hosts: ["*"]}]
"#,
    );
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Listener),
        vec!["0.0.0.0_8080", "127.0.0.1_8081"]
    );
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Route),
        vec!["http.8080", "http.8081.127.0.0.1"]
    );
    let errors: Vec<&str> = t
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.field.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(errors, vec!["spec.servers[2].port"]);
}

#[test]
fn unknown_destinations_are_reported() {
    let t = with_routes("  - route: [{destination: {host: nowhere.internal}}]\n");
    assert_eq!(
        routes(&t)[0]["route"]["cluster"],
        "outbound|8080||nowhere.internal"
    );
    assert_eq!(t.diagnostics.len(), 1);
    assert_eq!(
        t.diagnostics[0].field.as_deref(),
        Some("spec.http[0].route[0].destination.host")
    );
    assert!(t.resources.clusters.is_empty());
}

#[test]
fn translation_is_deterministic() {
    let yaml = format!(
        "{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - fault: {{abort: {{httpStatus: 500}}}}\n    corsPolicy: {{allowOrigins: [{{exact: a}}]}}\n    route: [{{destination: {{host: backend.internal}}}}]\n"
    );
    let a = translate_yaml(&yaml);
    let b = translate_yaml(&yaml);
    assert_eq!(a.resources, b.resources);
}

#[test]
fn delegate_virtual_services_merge_into_the_root() {
    let t = translate_yaml(&format!(
        "{SE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - name: team
    match: [{{uri: {{prefix: /team/}}}}]
    timeout: 3s
    delegate: {{name: team-routes, namespace: team}}
  - name: missing
    delegate: {{name: nope}}
  - route: [{{destination: {{host: other.internal, port: {{number: 7000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: team-svc, namespace: team}}
spec:
  hosts: [svc.team.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team-routes, namespace: team}}
spec:
  http:
  - name: v2
    match: [{{uri: {{prefix: /team/v2}}, headers: {{x-v: {{exact: '2'}}}}}}]
    route: [{{destination: {{host: svc}}}}]
  - name: outside
    match: [{{uri: {{prefix: /elsewhere}}}}]
    route: [{{destination: {{host: svc}}}}]
  - name: rest
    route: [{{destination: {{host: svc}}}}]
"
    ));
    let r = routes(&t);
    let summary: Vec<(String, Value, Value)> = r
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["match"]["prefix"].clone(),
                r["route"]["cluster"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            // Delegate matches narrow the root's; short hosts resolve in the delegate's namespace.
            (
                "team-v2".into(),
                json!("/team/v2"),
                json!("outbound|80||svc.team.svc.cluster.local")
            ),
            (
                "team-rest".into(),
                json!("/team/"),
                json!("outbound|80||svc.team.svc.cluster.local")
            ),
            (
                "".into(),
                json!("/"),
                json!("outbound|7000||other.internal")
            ),
        ]
    );
    assert_eq!(r[0]["match"]["headers"][0]["name"], "x-v");
    // The root's timeout applies where the delegate sets none.
    assert_eq!(r[0]["route"]["timeout"], "3s");
    let fields: Vec<(&str, &str)> = t
        .diagnostics
        .iter()
        .map(|d| {
            (
                d.resource.as_deref().unwrap_or(""),
                d.field.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            ("VirtualService/team/team-routes", "spec.http[1].match"),
            ("VirtualService/default/root", "spec.http[1].delegate"),
        ]
    );
}

const TLS_BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: default}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA}
---
apiVersion: v1
kind: Secret
metadata: {name: cert-cacert, namespace: default}
stringData: {cacert: OTHER-CA}
"#;

fn listener_json(t: &Translation, name: &str) -> Value {
    json::to_json(t.resources.listener(name).expect("listener")).expect("json")
}

#[test]
fn tls_termination_from_credentials_and_files() {
    let t = translate_yaml(&format!(
        "{TLS_BASE}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-a, protocol: HTTPS}}
    name: a-server
    hosts: [a.example.com, \"default/c.example.com\"]
    tls: {{mode: SIMPLE, credentialName: cert, minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]}}
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: /certs/b.crt
      privateKey: /certs/b.key
      caCertificates: /certs/ca.crt
      subjectAltNames: [spiffe://x/client]
      verifyCertificateSpki: [aGVsbG8=]
      verifyCertificateHash: [\"AB:CD\"]
  - port: {{number: 443, name: https-c, protocol: HTTPS}}
    hosts: [m.example.com]
    tls: {{mode: MUTUAL, credentialName: cert}}
  - port: {{number: 443, name: https-d, protocol: HTTPS}}
    hosts: [missing.example.com]
    tls: {{mode: SIMPLE, credentialName: nope}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*.example.com\"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: backend.internal, port: {{number: 80}}}}}}]}}]
"
    ));
    // The server whose Secret is missing is left out, with a warning at its tls.
    let fields: Vec<&str> = t
        .diagnostics
        .iter()
        .map(|d| d.field.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(fields, vec!["spec.servers[3].tls"], "{:?}", t.diagnostics);
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Route),
        vec![
            "https.443.https-a.gw.default",
            "https.443.https-b.gw.default",
            "https.443.https-c.gw.default"
        ]
    );
    let l = listener_json(&t, "0.0.0.0_443");
    assert_eq!(
        l["listener_filters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    assert_eq!(
        l["listener_filters"][0]["typed_config"]["initial_read_buffer_size"],
        512
    );
    let chains = l["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 3);

    let a = &chains[0];
    assert_eq!(
        a["filter_chain_match"]["server_names"],
        json!(["a.example.com", "c.example.com"])
    );
    let hcm = &a["filters"][0]["typed_config"];
    assert_eq!(hcm["stat_prefix"], "a-server");
    assert_eq!(
        hcm["rds"]["route_config_name"],
        "https.443.https-a.gw.default"
    );
    let ctx = &a["transport_socket"]["typed_config"];
    assert_eq!(a["transport_socket"]["name"], "envoy.transport_sockets.tls");
    assert_eq!(ctx["require_client_certificate"], false);
    let common = &ctx["common_tls_context"];
    assert_eq!(common["alpn_protocols"], json!(["h2", "http/1.1"]));
    assert_eq!(
        common["tls_certificate_sds_secret_configs"],
        json!([{"name": "kubernetes://cert", "sds_config": {"ads": {}, "resource_api_version": "V3"}}])
    );
    assert_eq!(
        common["tls_params"],
        json!({"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
               "cipher_suites": ["ECDHE-ECDSA-AES128-GCM-SHA256"]})
    );
    assert!(common["combined_validation_context"].is_null());

    let b = &chains[1]["transport_socket"]["typed_config"];
    assert_eq!(b["require_client_certificate"], true);
    assert_eq!(
        b["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "file-cert:/certs/b.crt~/certs/b.key"
    );
    let v = &b["common_tls_context"]["combined_validation_context"];
    assert_eq!(
        v["validation_context_sds_secret_config"]["name"],
        "file-root:/certs/ca.crt"
    );
    let d = &v["default_validation_context"];
    assert_eq!(d["verify_certificate_spki"], json!(["aGVsbG8="]));
    assert_eq!(d["verify_certificate_hash"], json!(["AB:CD"]));
    assert_eq!(
        d["match_typed_subject_alt_names"],
        json!([{"san_type": "DNS", "matcher": {"exact": "spiffe://x/client"}},
               {"san_type": "URI", "matcher": {"exact": "spiffe://x/client"}}])
    );
    let c = &chains[2]["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(
        c["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
        "kubernetes://cert-cacert"
    );

    // Secrets: Kubernetes ones inline (the -cacert companion wins over ca.crt), files by name.
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Secret),
        vec![
            "file-cert:/certs/b.crt~/certs/b.key",
            "file-root:/certs/ca.crt",
            "kubernetes://cert",
            "kubernetes://cert-cacert"
        ]
    );
    let s = json::to_json(t.resources.secret("kubernetes://cert").unwrap()).unwrap();
    assert_eq!(
        s["tls_certificate"]["certificate_chain"]["inline_bytes"],
        "Q0VSVA=="
    );
    let s = json::to_json(t.resources.secret("kubernetes://cert-cacert").unwrap()).unwrap();
    assert_eq!(
        s["validation_context"]["trusted_ca"]["inline_bytes"],
        "T1RIRVItQ0E="
    );
    let s = json::to_json(
        t.resources
            .secret("file-cert:/certs/b.crt~/certs/b.key")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        s["tls_certificate"]["private_key"]["filename"],
        "/certs/b.key"
    );
}

#[test]
fn passthrough_tcp_and_auto_passthrough() {
    let t = translate_yaml(&format!(
        "{TLS_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend.internal
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: tls, protocol: TLS}}
    hosts: [\"*.example.com\"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: [\"*\"]
  - port: {{number: 15443, name: tls-auto, protocol: TLS}}
    hosts: [\"*.internal\"]
    tls: {{mode: AUTO_PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*.example.com\"]
  gateways: [gw]
  tls:
  - match: [{{sniHosts: [a.example.com, b.example.com]}}]
    route: [{{destination: {{host: backend.internal, port: {{number: 443}}}}}}]
  - match: [{{sniHosts: [b.example.com]}}]
    route: [{{destination: {{host: backend.internal, port: {{number: 443}}}}}}]
  - match: [{{sniHosts: [w.example.com]}}]
    route:
    - {{destination: {{host: backend.internal, port: {{number: 443}}, subset: v1}}, weight: 25}}
    - {{destination: {{host: backend.internal, port: {{number: 443}}}}, weight: 75}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  tcp: [{{match: [{{port: 9000}}], route: [{{destination: {{host: backend.internal, port: {{number: 443}}}}}}]}}]
"
    ));
    // The second match claims b.example.com again: left out, with a warning.
    let fields: Vec<&str> = t
        .diagnostics
        .iter()
        .map(|d| d.field.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        vec!["spec.tls[1].match[0].sniHosts"],
        "{:?}",
        t.diagnostics
    );

    let l = listener_json(&t, "0.0.0.0_8443");
    let chains = l["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(
        chains[0]["filter_chain_match"]["server_names"],
        json!(["a.example.com", "b.example.com"])
    );
    assert!(
        chains[0]["transport_socket"].is_null(),
        "passthrough: no TLS context"
    );
    let proxy = &chains[0]["filters"][0];
    assert_eq!(proxy["name"], "envoy.filters.network.tcp_proxy");
    assert_eq!(
        proxy["typed_config"]["cluster"],
        "outbound|443||backend.internal"
    );
    assert_eq!(
        proxy["typed_config"]["stat_prefix"],
        "outbound|443||backend.internal"
    );
    assert_eq!(
        chains[1]["filters"][0]["typed_config"]["weighted_clusters"]["clusters"],
        json!([{"name": "outbound|443|v1|backend.internal", "weight": 25},
               {"name": "outbound|443||backend.internal", "weight": 75}])
    );
    assert_eq!(
        chains[1]["filters"][0]["typed_config"]["stat_prefix"],
        "vs.default"
    );

    let l = listener_json(&t, "0.0.0.0_9000");
    assert!(l["listener_filters"].is_null());
    assert!(l["filter_chains"][0]["filter_chain_match"].is_null());
    assert_eq!(
        l["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        "outbound|443||backend.internal"
    );

    let l = listener_json(&t, "0.0.0.0_15443");
    let names: Vec<Value> = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["filter_chain_match"]["server_names"][0].clone())
        .collect();
    assert_eq!(
        names,
        vec![
            json!("outbound_.443_._.backend.internal"),
            json!("outbound_.443_.v1_.backend.internal"),
            json!("outbound_.80_._.backend.internal"),
            json!("outbound_.80_.v1_.backend.internal"),
        ]
    );
    assert_eq!(
        l["filter_chains"][0]["filter_chain_match"]["application_protocols"],
        json!([
            "istio",
            "istio-peer-exchange",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2"
        ])
    );
    // Both cluster families exist: routed (outbound|...) and SNI-routed (outbound_....).
    let clusters = t.resources.names(crate::xds::TypeUrl::Cluster);
    assert!(
        clusters.contains(&"outbound_.443_.v1_.backend.internal"),
        "{clusters:?}"
    );
    assert!(
        clusters.contains(&"outbound|443|v1|backend.internal"),
        "{clusters:?}"
    );
    let sni = cluster_json(&t, "outbound_.443_._.backend.internal");
    assert!(sni["transport_socket"].is_null());
}

#[test]
fn upstream_tls_origination() {
    let t = translate_yaml(&format!(
        "{TLS_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend.internal
  trafficPolicy:
    tls: {{mode: SIMPLE}}
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: cert, sni: backend.internal, subjectAltNames: [backend.internal]}}
  subsets:
  - name: files
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: MUTUAL, clientCertificate: /c.crt, privateKey: /c.key, caCertificates: /ca.crt}}
  - name: plain
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: DISABLE}}
  - name: mesh
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: [\"*\"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: backend.internal, port: {{number: 80}}}}}}]}}]
"
    ));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let ctx = |name: &str| cluster_json(&t, name)["transport_socket"]["typed_config"].clone();
    // SIMPLE without CA: the system's roots, SNI from the Host.
    let simple = ctx("outbound|80||backend.internal");
    assert_eq!(
        simple["common_tls_context"]["combined_validation_context"]["validation_context_sds_secret_config"]
            ["name"],
        "file-root:system"
    );
    assert_eq!(
        simple["common_tls_context"]["tls_params"],
        json!({"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"})
    );
    let opts = &cluster_json(&t, "outbound|80||backend.internal")["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        opts["upstream_http_protocol_options"],
        json!({"auto_sni": true, "auto_san_validation": true})
    );
    // Port-level MUTUAL with a credential: kubernetes:// names, SNI and SAN as given.
    let mutual = ctx("outbound|443||backend.internal");
    assert_eq!(mutual["sni"], "backend.internal");
    assert_eq!(
        mutual["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "kubernetes://cert"
    );
    let v = &mutual["common_tls_context"]["combined_validation_context"];
    assert_eq!(
        v["validation_context_sds_secret_config"]["name"],
        "kubernetes://cert-cacert"
    );
    assert_eq!(
        v["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "backend.internal"
    );
    // A subset's files.
    let files = ctx("outbound|80|files|backend.internal");
    assert_eq!(
        files["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "file-cert:/c.crt~/c.key"
    );
    assert!(cluster_json(&t, "outbound|80|plain|backend.internal")["transport_socket"].is_null());
    // A subset's ISTIO_MUTUAL: the mesh secrets, SNI with the subset's name.
    let mesh = ctx("outbound|80|mesh|backend.internal");
    assert_eq!(mesh["sni"], "outbound_.80_.mesh_.backend.internal");
    assert_eq!(
        mesh["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "default"
    );
    let secrets = t.resources.names(crate::xds::TypeUrl::Secret);
    assert!(secrets.contains(&"file-root:system") && secrets.contains(&"file-root:/ca.crt"));
    let s = json::to_json(t.resources.secret("file-root:system").unwrap()).unwrap();
    assert_eq!(s["validation_context"]["system_root_certs"], json!({}));
}

/// The mesh service of the ISTIO_MUTUAL tests: two endpoints with service accounts,
/// one labelled for mesh mTLS; an HTTP/2 port and an HTTP/1.1 one.
const MESH_BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc, protocol: GRPC}]
  endpoints:
  - {address: 10.0.0.1, serviceAccount: reviews, labels: {version: v1, security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.2, serviceAccount: reviews-v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /grpc}}]
    route: [{destination: {host: reviews.shop.svc.cluster.local, port: {number: 9090}}}]
  - route: [{destination: {host: reviews.shop.svc.cluster.local, port: {number: 9080}}}]
"#;

fn tls_context(t: &Translation, cluster: &str) -> Value {
    cluster_json(t, cluster)["transport_socket"]["typed_config"].clone()
}

#[test]
fn istio_mutual_origination_is_istios() {
    let t = translate_yaml(&format!(
        "{MESH_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
    portLevelSettings:
    - port: {{number: 9090}}
      tls: {{mode: ISTIO_MUTUAL, sni: reviews.mesh, subjectAltNames: [\"spiffe://other.td/ns/shop/sa/x\"]}}
  subsets:
  - name: v1
    labels: {{version: v1}}
"
    ));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let ctx = tls_context(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert_eq!(
        ctx,
        json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "tls_certificate_sds_secret_configs": [
                    {"name": "default", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                ],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/reviews"}},
                        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/reviews-v2"}}
                    ]},
                    "validation_context_sds_secret_config":
                        {"name": "ROOTCA", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                },
                "alpn_protocols": ["istio-peer-exchange", "istio"]
            },
            "sni": "outbound_.9080_._.reviews.shop.svc.cluster.local"
        })
    );
    // A subset's SNI names it; the mesh secrets are not Secret resources of the
    // translation (they are the proxy's own, from its CA).
    let v1 = tls_context(&t, "outbound|9080|v1|reviews.shop.svc.cluster.local");
    assert_eq!(
        v1["sni"],
        "outbound_.9080_.v1_.reviews.shop.svc.cluster.local"
    );
    assert!(t.resources.secrets.is_empty());
    // Port level: SNI and SANs as given (any trust domain); HTTP/2 adds `h2` to ALPN.
    let grpc = tls_context(&t, "outbound|9090||reviews.shop.svc.cluster.local");
    assert_eq!(grpc["sni"], "reviews.mesh");
    assert_eq!(
        grpc["common_tls_context"]["alpn_protocols"],
        json!(["istio-peer-exchange", "istio", "h2"])
    );
    assert_eq!(
        grpc["common_tls_context"]["combined_validation_context"]["default_validation_context"],
        json!({"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "spiffe://other.td/ns/shop/sa/x"}}
        ]})
    );
    // ISTIO_MUTUAL from a DestinationRule is not auto mTLS.
    assert!(
        cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local")
            ["transport_socket_matches"]
            .is_null()
    );
}

#[test]
fn istio_mutual_spiffe_ids_follow_the_trust_domain() {
    let config = crate::config::load_str(
        "t.yaml",
        &format!(
            "{MESH_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"
        ),
    )
    .config;
    let (registry, _) = crate::registry::Registry::from_config(&config);
    let proxy = ProxyIdentity::gateway(
        "shop",
        BTreeMap::from([("istio".into(), "ingressgateway".into())]),
    );
    let mesh = crate::config::mesh::MeshConfig {
        trust_domain: "corp.example".into(),
        ..Default::default()
    };
    let t = super::gateway_in_mesh(&config, &registry, &proxy, &mesh);
    let ctx = tls_context(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert_eq!(
        ctx["common_tls_context"]["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
            [0]["matcher"]["exact"],
        "spiffe://corp.example/ns/shop/sa/reviews"
    );
}

#[test]
fn auto_mtls_by_the_endpoints_tls_mode_label() {
    let t = translate_yaml(MESH_BASE);
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let c = cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert!(c["transport_socket"].is_null());
    let matches = c["transport_socket_matches"].as_array().expect("matches");
    assert_eq!(matches.len(), 2);
    assert_eq!(matches[0]["name"], "tlsMode-istio");
    assert_eq!(matches[0]["match"], json!({"tlsMode": "istio"}));
    let ctx = &matches[0]["transport_socket"]["typed_config"];
    assert_eq!(
        ctx["sni"],
        "outbound_.9080_._.reviews.shop.svc.cluster.local"
    );
    assert_eq!(
        ctx["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "default"
    );
    assert_eq!(matches[1]["name"], "tlsMode-disabled");
    assert_eq!(matches[1]["match"], json!({}));
    assert_eq!(
        matches[1]["transport_socket"]["name"],
        "envoy.transport_sockets.raw_buffer"
    );
    // Endpoint metadata as istiod sets it: only the labelled endpoint has one.
    let cla = t
        .resources
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|9080||reviews.shop.svc.cluster.local")
        .expect("endpoints");
    let cla = json::to_json(cla).unwrap();
    let eps = cla["endpoints"][0]["lb_endpoints"].as_array().unwrap();
    let socket_match = |addr: &str| {
        eps.iter()
            .find(|e| e["endpoint"]["address"]["socket_address"]["address"] == addr)
            .map(|e| e["metadata"]["filter_metadata"]["envoy.transport_socket_match"].clone())
            .expect("endpoint")
    };
    assert_eq!(socket_match("10.0.0.1"), json!({"tlsMode": "istio"}));
    assert!(socket_match("10.0.0.2").is_null());

    // TLS DISABLE in a DestinationRule turns auto mTLS off; a MESH_EXTERNAL service
    // never gets it.
    let t = translate_yaml(&format!(
        "{MESH_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"
    ));
    let c = cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert!(c["transport_socket_matches"].is_null() && c["transport_socket"].is_null());
    let t = translate_yaml(&MESH_BASE.replace("MESH_INTERNAL", "MESH_EXTERNAL"));
    let c = cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    assert!(c["transport_socket_matches"].is_null());

    // A PeerAuthentication DISABLE for the service's namespace, or for the mesh without
    // the namespace saying otherwise, turns it off (istiod's
    // `BestEffortInferServiceMTLSMode`); one selecting workloads does not.
    let pa = |ns: &str, selector: &str, mode: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa-{ns}, namespace: {ns}}}\nspec: {{{selector}mtls: {{mode: {mode}}}}}\n"
        )
    };
    let auto = |extra: &str| {
        let t = translate_yaml(&format!("{MESH_BASE}{extra}"));
        !cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local")
            ["transport_socket_matches"]
            .is_null()
    };
    assert!(!auto(&pa("shop", "", "DISABLE")));
    assert!(!auto(&pa("istio-system", "", "DISABLE")));
    assert!(auto(&format!(
        "{}{}",
        pa("istio-system", "", "DISABLE"),
        pa("shop", "", "STRICT")
    )));
    assert!(auto(&pa(
        "shop",
        "selector: {matchLabels: {app: reviews}}, ",
        "DISABLE"
    )));
    assert!(auto(&pa("other", "", "DISABLE")));
}

#[test]
fn istio_mutual_gateway_server_is_istios() {
    let t = translate_yaml(&format!(
        "{MESH_BASE}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mtls, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 15443, name: https-mesh, protocol: HTTPS}}
    hosts: [\"*\"]
    tls: {{mode: ISTIO_MUTUAL}}
"
    ));
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    let l = listener_json(&t, "0.0.0.0_15443");
    let chain = &l["filter_chains"][0];
    assert_eq!(
        chain["transport_socket"]["typed_config"],
        json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [
                    {"name": "default", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                ],
                "combined_validation_context": {
                    "default_validation_context": {},
                    "validation_context_sds_secret_config":
                        {"name": "ROOTCA", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                },
                "alpn_protocols": ["h2", "http/1.1"]
            },
            "require_client_certificate": true
        })
    );
    let hcm = &chain["filters"][0]["typed_config"];
    assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
    assert_eq!(
        hcm["set_current_client_cert_details"],
        json!({"subject": true, "cert": true, "dns": true, "uri": true})
    );
}

#[test]
fn credentials_are_looked_up_in_the_gateways_namespace_unless_the_proxy_has_one() {
    let mut yaml = String::new();
    for ns in ["a", "b"] {
        yaml.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw-{ns}, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-{ns}, protocol: HTTPS}}
    hosts: [{ns}.example.com]
    tls: {{mode: SIMPLE, credentialName: cert}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: {ns}}}
stringData: {{tls.crt: CERT-{ns}, tls.key: KEY-{ns}}}
"
        ));
    }
    let loaded = crate::config::load_str("test.yaml", &yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);

    // No proxy namespace: each Gateway's own; the first Gateway's namespace is the default.
    let mut proxy = ProxyIdentity::gateway("a", labels.clone());
    proxy.namespace.clear();
    let t = gateway(&loaded.config, &registry, &proxy);
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Secret),
        vec!["kubernetes://b/cert", "kubernetes://cert"]
    );
    let s = json::to_json(t.resources.secret("kubernetes://b/cert").unwrap()).unwrap();
    assert_eq!(
        s["tls_certificate"]["certificate_chain"]["inline_bytes"],
        "Q0VSVC1i"
    );

    // A proxy namespace: every credential is looked up there (Istio's rule).
    let proxy = ProxyIdentity::gateway("b", labels);
    let t = gateway(&loaded.config, &registry, &proxy);
    assert_eq!(
        t.resources.names(crate::xds::TypeUrl::Secret),
        vec!["kubernetes://cert"]
    );
    let s = json::to_json(t.resources.secret("kubernetes://cert").unwrap()).unwrap();
    assert_eq!(
        s["tls_certificate"]["certificate_chain"]["inline_bytes"],
        "Q0VSVC1i"
    );
}

#[test]
fn outlier_detection_alone_fails_over_by_locality_as_istiods_mesh_default() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, locality: r1/z1}
  - {address: 127.0.0.2, locality: r1/z2}
  - {address: 127.0.0.3, locality: r2/z1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: od, namespace: default}
spec:
  host: backend.internal
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
  - name: off
    trafficPolicy:
      loadBalancer: {localityLbSetting: {enabled: false}}
      outlierDetection: {consecutive5xxErrors: 3}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /off}}]
    route: [{destination: {host: backend.internal, subset: off}}]
  - route: [{destination: {host: backend.internal}}]
"#;
    let loaded = crate::config::load_str("test.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let priorities = |labels: &[(&str, &str)], cluster: &str| -> Vec<(String, u32)> {
        let proxy = ProxyIdentity::gateway(
            "default",
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let t = gateway(&loaded.config, &registry, &proxy);
        let cla = t.resources.endpoint(cluster).expect("endpoints");
        let mut out: Vec<(String, u32)> = cla
            .endpoints
            .iter()
            .map(|g| {
                let l = g.locality.clone().unwrap_or_default();
                (format!("{}/{}", l.region, l.zone), g.priority)
            })
            .collect();
        out.sort();
        out
    };
    let located = [
        ("istio", "ingressgateway"),
        ("topology.kubernetes.io/region", "r1"),
        ("topology.kubernetes.io/zone", "z1"),
    ];
    assert_eq!(
        priorities(&located, "outbound|80||backend.internal"),
        vec![
            ("r1/z1".into(), 0),
            ("r1/z2".into(), 1),
            ("r2/z1".into(), 2)
        ]
    );
    // `enabled: false`, or a proxy without a locality: one priority.
    assert_eq!(
        priorities(&located, "outbound|80|off|backend.internal"),
        vec![
            ("r1/z1".into(), 0),
            ("r1/z2".into(), 0),
            ("r2/z1".into(), 0)
        ]
    );
    assert_eq!(
        priorities(
            &[("istio", "ingressgateway")],
            "outbound|80||backend.internal"
        ),
        vec![
            ("r1/z1".into(), 0),
            ("r1/z2".into(), 0),
            ("r2/z1".into(), 0)
        ]
    );
}

#[test]
fn mesh_config_turns_auto_mtls_off_and_sets_the_connect_timeout() {
    let config = crate::config::load_str("t.yaml", MESH_BASE).config;
    let (registry, _) = crate::registry::Registry::from_config(&config);
    let proxy = ProxyIdentity::gateway(
        "shop",
        BTreeMap::from([("istio".into(), "ingressgateway".into())]),
    );
    let name = "outbound|9080||reviews.shop.svc.cluster.local";
    let default = super::gateway(&config, &registry, &proxy);
    assert_eq!(cluster_json(&default, name)["connect_timeout"], "10s");
    let mesh = crate::config::mesh::parse_mesh_config(
        "mesh.yaml",
        "enableAutoMtls: false\nconnectTimeout: 2.5s\n",
    )
    .unwrap();
    let t = super::gateway_in_mesh(&config, &registry, &proxy, &mesh);
    let c = cluster_json(&t, name);
    assert!(c["transport_socket_matches"].is_null(), "{c}");
    assert!(c["transport_socket"].is_null(), "{c}");
    assert_eq!(c["connect_timeout"], "2.500s");
}

#[test]
fn gateway_topology_sets_trusted_hops_xfcc_and_the_proxy_protocol_filter() {
    let config = crate::config::load_str("t.yaml", MESH_BASE).config;
    let (registry, _) = crate::registry::Registry::from_config(&config);
    let mut proxy = ProxyIdentity::gateway(
        "shop",
        BTreeMap::from([("istio".into(), "ingressgateway".into())]),
    );
    let hcm = |t: &Translation| {
        listener_json(t, "0.0.0.0_8080")["filter_chains"][0]["filters"][0]["typed_config"].clone()
    };
    // Istio's gateway defaults: the peer is the client, XFCC sanitised and set.
    let t = super::gateway(&config, &registry, &proxy);
    let l = listener_json(&t, "0.0.0.0_8080");
    assert!(l["listener_filters"].is_null(), "{l}");
    let h = hcm(&t);
    assert_eq!(h["use_remote_address"], true);
    assert!(h["xff_num_trusted_hops"].is_null(), "{h}");
    assert_eq!(h["forward_client_cert_details"], "SANITIZE_SET");
    assert_eq!(h["set_current_client_cert_details"]["uri"], true);

    let mesh = crate::config::mesh::parse_mesh_config(
        "mesh.yaml",
        "defaultConfig:\n  gatewayTopology: {numTrustedProxies: 2, forwardClientCertDetails: FORWARD_ONLY, proxyProtocol: {}}\n",
    )
    .unwrap();
    let t = super::gateway_in_mesh(&config, &registry, &proxy, &mesh);
    let l = listener_json(&t, "0.0.0.0_8080");
    assert_eq!(
        l["listener_filters"][0]["name"],
        "envoy.filters.listener.proxy_protocol"
    );
    assert_eq!(
        l["listener_filters"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
    );
    let h = hcm(&t);
    assert_eq!(h["xff_num_trusted_hops"], 2);
    assert_eq!(h["use_remote_address"], true);
    assert_eq!(h["forward_client_cert_details"], "FORWARD_ONLY");
    // istiod sets the current client's details only when they are forwarded.
    assert!(h["set_current_client_cert_details"].is_null(), "{h}");

    // A node's own topology (PROXY_CONFIG) replaces the mesh's for that node.
    proxy.gateway_topology = Some(crate::config::mesh::GatewayTopology {
        num_trusted_proxies: 1,
        ..Default::default()
    });
    let t = super::gateway_in_mesh(&config, &registry, &proxy, &mesh);
    assert!(listener_json(&t, "0.0.0.0_8080")["listener_filters"].is_null());
    let h = hcm(&t);
    assert_eq!(h["xff_num_trusted_hops"], 1);
    assert_eq!(h["forward_client_cert_details"], "SANITIZE_SET");
}

#[test]
fn destination_rule_proxy_protocol_wraps_the_transport_sockets() {
    let t = translate_yaml(&format!(
        "{MESH_BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    proxyProtocol: {{version: V2}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: ISTIO_MUTUAL}}
      proxyProtocol: {{}}
"
    ));
    // Auto mTLS: each transport_socket_match is wrapped.
    let c = cluster_json(&t, "outbound|9080||reviews.shop.svc.cluster.local");
    for m in c["transport_socket_matches"].as_array().expect("matches") {
        let ts = &m["transport_socket"];
        assert_eq!(
            ts["name"], "envoy.transport_sockets.upstream_proxy_protocol",
            "{c}"
        );
        assert_eq!(ts["typed_config"]["config"]["version"], "V2", "{c}");
        assert!(
            ts["typed_config"]["transport_socket"]["name"].is_string(),
            "{c}"
        );
    }
    // The subset: its own policy (V1, the default) around its TLS socket.
    let c = cluster_json(&t, "outbound|9080|v1|reviews.shop.svc.cluster.local");
    let ts = &c["transport_socket"];
    assert_eq!(
        ts["name"], "envoy.transport_sockets.upstream_proxy_protocol",
        "{c}"
    );
    assert!(ts["typed_config"]["config"]["version"].is_null(), "{c}");
    assert_eq!(
        ts["typed_config"]["transport_socket"]["name"], "envoy.transport_sockets.tls",
        "{c}"
    );
}
