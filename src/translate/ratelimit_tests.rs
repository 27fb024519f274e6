use super::*;
use crate::registry::Registry;
use crate::xds::{ProxyIdentity, json};
use serde_json::Value;

const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
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
  hosts: [a.example.com, b.example.com]
  gateways: [gw]
  http:
  - name: login
    match: [{uri: {prefix: /login}}]
    route: [{destination: {host: backend.internal}}]
  - name: rest
    route: [{destination: {host: backend.internal}}]
"#;

fn translate(policy: &str) -> crate::translate::Translation {
    let text = format!(
        "{BASE}---\napiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n{policy}"
    );
    let loaded = crate::config::load_str("t.yaml", &text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert!(
        !crate::config::validate(&loaded.config)
            .iter()
            .any(|d| d.is_error()),
        "{:?}",
        crate::config::validate(&loaded.config)
    );
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity::gateway(
        "default",
        std::collections::BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
    );
    crate::translate::gateway(&loaded.config, &registry, &proxy)
}

/// The rule ids of a local config (its descriptors' first entries).
fn config_rules(any: &crate::xds::pb::google::protobuf::Any) -> Vec<String> {
    let l = LocalRateLimit::decode(any.value.as_slice()).unwrap();
    l.descriptors
        .iter()
        .map(|d| d.entries[0].value.clone())
        .collect()
}

/// (virtual host, route name, host config rules, route config rules).
fn route_rules(
    t: &crate::translate::Translation,
) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let rc = t.resources.route("http.8080").unwrap();
    let mut out = Vec::new();
    for vh in &rc.virtual_hosts {
        let host = vh
            .typed_per_filter_config
            .get(LOCAL_RATELIMIT_HOST_FILTER)
            .map(config_rules)
            .unwrap_or_default();
        for r in &vh.routes {
            let own = r
                .typed_per_filter_config
                .get(LOCAL_RATELIMIT_ROUTE_FILTER)
                .map(config_rules)
                .unwrap_or_default();
            out.push((vh.name.clone(), r.name.clone(), host.clone(), own));
        }
    }
    out
}

fn http_filters(t: &crate::translate::Translation) -> Vec<Value> {
    let l = json::to_json(t.resources.listener("0.0.0.0_8080").unwrap()).unwrap();
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .clone()
}

const RULE: &str = "  local:\n    rules:\n    - name: r\n      clientSelectors: [{sourceCIDR: {type: Distinct}}]\n      limit: {requests: 10, unit: Second, burst: 20}\n";

#[test]
fn a_gateway_policy_covers_every_route_and_adds_the_filter_before_the_router() {
    let t = translate(&format!(
        "  targetRefs: [{{kind: Gateway, name: gw}}]\n{RULE}"
    ));
    for (_, _, host, own) in route_rules(&t) {
        assert!(host.is_empty() && own.is_empty());
    }
    let filters = http_filters(&t);
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[names.len() - 2..],
        [LOCAL_RATELIMIT_FILTER, "envoy.filters.http.router"]
    );
    let cfg = &filters[names.len() - 2]["typed_config"];
    assert_eq!(
        cfg["rate_limits"][0]["actions"],
        serde_json::json!([
            {"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": "default/p/r"}},
            {"remote_address": {}}
        ])
    );
    assert_eq!(cfg["enable_x_ratelimit_headers"], "DRAFT_VERSION_03");
    assert_eq!(cfg["enable_retry_after_header"], true);
    assert!(cfg.get("token_bucket").is_none());
    assert_eq!(
        cfg["descriptors"][0],
        serde_json::json!({
            "entries": [{"key": "meshgate.io/rule", "value": "default/p/r"}, {"key": "remote_address"}],
            "token_bucket": {"max_tokens": 20, "tokens_per_fill": 10, "fill_interval": "1s"}
        })
    );
    assert_eq!(
        cfg["response_headers_to_add"][0]["header"],
        serde_json::json!({"key": "ratelimit-policy", "value": "\"default/p/r\";q=10;w=1"})
    );
}

#[test]
fn a_route_policy_covers_only_that_route_and_a_host_policy_only_that_host() {
    let t = translate(&format!(
        "  targetRefs: [{{kind: VirtualService, name: vs, route: login}}]\n{RULE}"
    ));
    for (_, name, host, own) in route_rules(&t) {
        let want: &[&str] = if name == "login" {
            &["default/p/r"]
        } else {
            &[]
        };
        assert_eq!(own, want, "{name}");
        assert!(host.is_empty());
    }
    let names: Vec<String> = http_filters(&t)
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&LOCAL_RATELIMIT_ROUTE_FILTER.to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&LOCAL_RATELIMIT_FILTER.to_string()),
        "{names:?}"
    );
    let t = translate(&format!(
        "  targetRefs: [{{kind: Gateway, name: gw, hostname: b.example.com}}]\n{RULE}"
    ));
    let rules = route_rules(&t);
    assert!(
        rules
            .iter()
            .any(|(vh, _, host, _)| vh.starts_with("b.example.com") && host == &["default/p/r"]),
        "{:?}",
        rules.iter().map(|r| (&r.0, &r.2)).collect::<Vec<_>>()
    );
    assert!(
        rules
            .iter()
            .any(|(vh, _, host, _)| vh.starts_with("a.example.com") && host.is_empty())
    );
}

#[test]
fn selectors_become_envoy_actions_and_descriptor_entries() {
    let rules = translate(
        "  targetRefs: [{kind: Gateway, name: gw}]\n  local:\n    rules:\n    - clientSelectors:\n      - headers: [{name: X-Tier, value: gold}, {name: x-user, type: Distinct}]\n        sourceCIDR: {value: 10.1.2.3/16}\n        path: {type: PathPrefix, value: /api}\n        principal: {type: Distinct}\n        jwtClaim: {issuer: https://iss, claim: sub, type: Distinct}\n      limit: {requests: 1, per: 500ms}\n",
    );
    let filters = http_filters(&rules);
    let rl = &filters[filters.len() - 2]["typed_config"]["rate_limits"][0];
    let keys: Vec<String> = rl["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_object().unwrap().keys().next().unwrap().clone())
        .collect();
    assert_eq!(
        keys,
        [
            "generic_key",
            "header_value_match",
            "request_headers",
            "masked_remote_address",
            "header_value_match",
            "extension",
            "metadata"
        ]
    );
    let d = &filters[filters.len() - 2]["typed_config"]["descriptors"][0];
    assert_eq!(
        d["entries"],
        serde_json::json!([
            {"key": "meshgate.io/rule", "value": "default/p/0"},
            {"key": "header:x-tier", "value": "gold"},
            {"key": "header:x-user"},
            {"key": "masked_remote_address", "value": "10.1.0.0/16"},
            {"key": "path", "value": "/api"},
            {"key": "principal"},
            {"key": "claim:sub"},
        ])
    );
    assert_eq!(d["token_bucket"]["fill_interval"], "0.500s");
    assert_eq!(
        rl["actions"][6]["metadata"]["metadata_key"],
        serde_json::json!({"key": "envoy.filters.http.jwt_authn", "path": [{"key": "https://iss"}, {"key": "sub"}]})
    );
}

#[test]
fn global_policies_use_stage_zero_the_service_and_the_limit_table() {
    let t = translate(
        "  targetRefs: [{kind: Gateway, name: gw}]\n  type: Global\n  global:\n    failureMode: Closed\n    rules:\n    - name: all\n      limit: {requests: 100, unit: Minute, burst: 150}\n",
    );
    let filters = http_filters(&t);
    let g = &filters[filters.len() - 2];
    assert_eq!(g["name"], RATELIMIT_FILTER);
    assert_eq!(g["typed_config"]["domain"], "meshgate");
    assert_eq!(g["typed_config"]["failure_mode_deny"], true);
    assert_eq!(
        g["typed_config"]["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"],
        RATELIMIT_CLUSTER
    );
    let rc = json::to_json(t.resources.route("http.8080").unwrap()).unwrap();
    let rl = &rc["virtual_hosts"][0]["routes"][0]["route"]["rate_limits"][0];
    assert!(rl.get("stage").is_none());
    let text = format!(
        "{BASE}---\napiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  targetRefs: [{{kind: Gateway, name: gw}}]\n  type: Global\n  global:\n    rules:\n    - name: all\n      limit: {{requests: 100, unit: Minute, burst: 150}}\n"
    );
    let loaded = crate::config::load_str("t.yaml", &text);
    assert_eq!(
        limit_table(&loaded.config),
        crate::ratelimit::LimitTable::from([(
            "default/p/all".to_string(),
            crate::ratelimit::Limit {
                requests: 100,
                per: Duration::from_secs(60),
                burst: 150,
            },
        )])
    );
}

#[test]
fn a_workload_policy_limits_the_sidecar_inbound() {
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: shop}\nspec:\n  hosts: [a.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 8080, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {app: a}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a1, namespace: shop}\nspec: {address: 10.0.0.1, labels: {app: a}}\n---\napiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: a}}\n  local:\n    rules: [{limit: {requests: 5, unit: Second}}]\n";
    let loaded = crate::config::load_str("t.yaml", text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let mut proxy = ProxyIdentity::gateway(
        "shop",
        std::collections::BTreeMap::from([("app".to_string(), "a".to_string())]),
    );
    proxy.kind = crate::xds::ProxyKind::Sidecar;
    proxy.ip_addresses = vec!["10.0.0.1".into()];
    let t = crate::translate::sidecar(&loaded.config, &registry, &proxy, &Default::default());
    let l = json::to_json(t.resources.listener("virtualInbound").unwrap()).unwrap();
    let mut limited = 0;
    for chain in l["filter_chains"].as_array().unwrap() {
        let hcm = &chain["filters"][0]["typed_config"];
        let Some(filters) = hcm["http_filters"].as_array() else {
            continue;
        };
        if filters.iter().any(|f| f["name"] == LOCAL_RATELIMIT_FILTER) {
            limited += 1;
            let f = filters
                .iter()
                .find(|f| f["name"] == LOCAL_RATELIMIT_FILTER)
                .unwrap();
            assert_eq!(
                f["typed_config"]["rate_limits"][0]["actions"][0]["generic_key"]["descriptor_value"],
                "shop/p/0"
            );
        }
    }
    assert!(limited > 0, "{l:#}");
}

#[test]
fn rate_limits_run_after_jwt_and_authorization_so_claims_are_verified() {
    let text = format!(
        "{BASE}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  jwtRules:\n  - issuer: https://iss\n    jwks: '{{\"keys\":[{{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"alg\":\"HS256\",\"kid\":\"a\"}}]}}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny, namespace: default}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/admin], ports: [\"8080\"]}}}}]}}]\n---\napiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  targetRefs: [{{kind: Gateway, name: gw}}]\n  local:\n    rules:\n    - clientSelectors: [{{jwtClaim: {{issuer: https://iss, claim: sub, type: Distinct}}}}]\n      limit: {{requests: 1, unit: Minute}}\n"
    );
    let loaded = crate::config::load_str("t.yaml", &text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = ProxyIdentity::gateway(
        "default",
        std::collections::BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
    );
    let t = crate::translate::gateway(&loaded.config, &registry, &proxy);
    let names: Vec<String> = http_filters(&t)
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(
        at("envoy.filters.http.jwt_authn") < at(LOCAL_RATELIMIT_FILTER),
        "{names:?}"
    );
    assert!(
        at("envoy.filters.http.rbac") < at(LOCAL_RATELIMIT_FILTER),
        "{names:?}"
    );
    assert_eq!(
        at(LOCAL_RATELIMIT_FILTER) + 1,
        at("envoy.filters.http.router")
    );
}
