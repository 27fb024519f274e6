//! RequestAuthentication's translation against istiod's `convertToEnvoyJwtConfig`, on a
//! gateway and on a sidecar's inbound chains.
use crate::registry::Registry;
use crate::translate::Translation;
use crate::xds::json;
use crate::xds::{ProxyIdentity, ProxyKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

fn ra(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n"
    )
}

fn gateway(yaml: &str) -> Translation {
    let loaded = crate::config::load_str("t.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity::gateway(
        "default",
        BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
    );
    super::super::gateway(&loaded.config, &registry, &proxy)
}

/// The HTTP filters of every connection manager of a listener, by name, with configs.
fn http_filters(t: &Translation, listener: &str) -> Vec<Vec<Value>> {
    let l = json::to_json(t.resources.listener(listener).expect("listener")).expect("json");
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["filters"].as_array().unwrap().clone())
        .filter(|f| f["name"] == super::super::listener::HTTP_CONNECTION_MANAGER)
        .map(|f| {
            f["typed_config"]["http_filters"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn names(filters: &[Value]) -> Vec<&str> {
    filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

#[test]
fn one_rule_is_one_provider_with_allow_missing_before_the_other_filters() {
    let t = gateway(&format!(
        "{GATEWAY}{}",
        ra(
            "jwt",
            "default",
            r#"{selector: {matchLabels: {istio: ingressgateway}}, jwtRules: [{issuer: "https://issuer.example", audiences: [api], jwksUri: "http://127.0.0.1:9999/jwks", fromHeaders: [{name: x-token, prefix: "Token "}], fromParams: [tok], fromCookies: [session], outputPayloadToHeader: x-payload, forwardOriginalToken: true, outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: x-nested, claim: a.b}], timeout: 2s}]}"#
        )
    ));
    assert!(t.diagnostics.is_empty(), "{:#?}", t.diagnostics);
    let hcms = http_filters(&t, "0.0.0.0_8080");
    assert_eq!(hcms.len(), 1);
    assert_eq!(
        names(&hcms[0]),
        [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    let config = &hcms[0][0]["typed_config"];
    assert_eq!(
        config["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    );
    assert_eq!(config["bypass_cors_preflight"], true);
    assert_eq!(
        config["rules"],
        json!([{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"allow_missing": {}}
        ]}}}])
    );
    let p = &config["providers"]["origins-0"];
    assert_eq!(p["issuer"], "https://issuer.example");
    assert_eq!(p["audiences"], json!(["api"]));
    assert_eq!(p["payload_in_metadata"], "https://issuer.example");
    assert_eq!(
        p["normalize_payload_in_metadata"],
        json!({"space_delimited_claims": ["permission", "scope"]})
    );
    assert_eq!(
        p["from_headers"],
        json!([{"name": "x-token", "value_prefix": "Token "}])
    );
    assert_eq!(p["from_params"], json!(["tok"]));
    assert_eq!(p["from_cookies"], json!(["session"]));
    assert_eq!(p["forward"], true);
    assert_eq!(p["forward_payload_header"], "x-payload");
    assert_eq!(
        p["claim_to_headers"],
        json!([{"header_name": "x-sub", "claim_name": "sub"}, {"header_name": "x-nested", "claim_name": "a.b"}])
    );
    assert_eq!(
        p["remote_jwks"],
        json!({
            "http_uri": {"uri": "http://127.0.0.1:9999/jwks", "cluster": "jwks|127.0.0.1|9999", "timeout": "2s"},
            "cache_duration": "300s",
            "async_fetch": {"fast_listener": true}
        })
    );
    let c = json::to_json(
        t.resources
            .cluster("jwks|127.0.0.1|9999")
            .expect("jwks cluster"),
    )
    .unwrap();
    assert_eq!(c["type"], "STATIC");
    assert_eq!(
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": 9999})
    );
    assert!(c.get("transport_socket").is_none(), "{c}");
}

#[test]
fn several_rules_are_sorted_by_issuer_and_any_valid_token_or_none_passes() {
    // The mesh-wide policy (root namespace, no selector) and the namespace's both apply;
    // one selecting other workloads does not.
    let t = gateway(&format!(
        "{GATEWAY}{}{}{}",
        ra(
            "mesh",
            "istio-system",
            r#"{jwtRules: [{issuer: zeta, jwks: '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}'}]}"#
        ),
        ra(
            "ns",
            "default",
            r#"{jwtRules: [{issuer: alpha, jwksUri: "https://keys.example.com/jwks.json"}]}"#
        ),
        ra(
            "other",
            "default",
            r#"{selector: {matchLabels: {app: other}}, jwtRules: [{issuer: nope, jwksUri: "http://10.0.0.1/k"}]}"#
        ),
    ));
    assert!(t.diagnostics.is_empty(), "{:#?}", t.diagnostics);
    let hcms = http_filters(&t, "0.0.0.0_8080");
    let config = &hcms[0][0]["typed_config"];
    let providers = config["providers"].as_object().unwrap();
    assert_eq!(providers.len(), 2);
    assert_eq!(providers["origins-0"]["issuer"], "alpha");
    assert_eq!(providers["origins-1"]["issuer"], "zeta");
    assert_eq!(
        providers["origins-1"]["local_jwks"],
        json!({"inline_string": r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#})
    );
    let any = |v: Value| json!({"requires_any": {"requirements": v}});
    assert_eq!(
        config["rules"][0]["requires"],
        any(json!([
            {"provider_name": "origins-0"},
            {"provider_name": "origins-1"},
            {"requires_all": {"requirements": [
                any(json!([{"provider_name": "origins-0"}, {"allow_missing": {}}])),
                any(json!([{"provider_name": "origins-1"}, {"allow_missing": {}}])),
            ]}}
        ]))
    );
    // The https key server: by DNS, TLS with the system's roots and its name checked.
    let c = json::to_json(
        t.resources
            .cluster("jwks|keys.example.com|443")
            .expect("cluster"),
    )
    .unwrap();
    assert_eq!(c["type"], "STRICT_DNS");
    let ctx = &c["transport_socket"]["typed_config"];
    assert_eq!(ctx["sni"], "keys.example.com");
    assert_eq!(
        ctx["common_tls_context"]["validation_context"],
        json!({
            "system_root_certs": {},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "keys.example.com"}}]
        })
    );
    assert!(t.resources.cluster("jwks|10.0.0.1|80").is_none());
}

#[test]
fn no_policy_for_the_workload_means_no_filter_and_the_cache_duration_annotation_is_read() {
    let t = gateway(&format!(
        "{GATEWAY}{}",
        ra(
            "elsewhere",
            "other",
            r#"{jwtRules: [{issuer: x, jwksUri: "http://127.0.0.1:1/k"}]}"#
        )
    ));
    assert_eq!(
        names(&http_filters(&t, "0.0.0.0_8080")[0]),
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    assert!(t.resources.cluster("jwks|127.0.0.1|1").is_none());

    let yaml = format!(
        "{GATEWAY}\n---\napiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: j, namespace: default, annotations: {{meshgate.io/jwks-cache-duration: 2s}}}}\nspec: {{jwtRules: [{{issuer: x, jwksUri: \"http://127.0.0.1:1/k\"}}]}}\n"
    );
    let t = gateway(&yaml);
    let config = &http_filters(&t, "0.0.0.0_8080")[0][0]["typed_config"];
    assert_eq!(
        config["providers"]["origins-0"]["remote_jwks"]["cache_duration"],
        "2s"
    );
}

#[test]
fn a_sidecar_verifies_tokens_on_its_inbound_http_chains_only() {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: 8080}}, {{number: 9090, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 10.0.0.5, labels: {{app: reviews}}}}]
{}"#,
        ra(
            "jwt",
            "shop",
            r#"{selector: {matchLabels: {app: reviews}}, jwtRules: [{issuer: i, jwksUri: "http://127.0.0.1:7/k"}]}"#
        )
    );
    let loaded = crate::config::load_str("t.yaml", &yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity {
        id: "sidecar~10.0.0.5~reviews-1.shop~shop.svc.cluster.local".into(),
        kind: ProxyKind::Sidecar,
        namespace: "shop".into(),
        ip_addresses: vec!["10.0.0.5".into()],
        domain_suffix: "cluster.local".into(),
        ..Default::default()
    };
    let t = crate::translate::sidecar(
        &loaded.config,
        &registry,
        &proxy,
        &crate::config::mesh::MeshConfig::default(),
    );
    let inbound = http_filters(&t, "virtualInbound");
    assert!(!inbound.is_empty());
    for filters in &inbound {
        assert_eq!(names(filters)[0], "envoy.filters.http.jwt_authn");
    }
    assert!(t.resources.cluster("jwks|127.0.0.1|7").is_some());
    for l in &t.resources.listeners {
        if l.name != "virtualInbound" {
            for filters in http_filters(&t, &l.name) {
                assert!(
                    !names(&filters).contains(&"envoy.filters.http.jwt_authn"),
                    "{}",
                    l.name
                );
            }
        }
    }
}
