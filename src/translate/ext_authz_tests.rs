use super::*;
use crate::config::mesh::parse_mesh_config;
use crate::xds::json;
use serde_json::{Value, json};

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-authz, namespace: foo}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}, {number: 9000, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: twice, namespace: a}
spec:
  hosts: [twice.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: twice, namespace: b}
spec:
  hosts: [twice.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.3}]
"#;

fn registry() -> Registry {
    let loaded = crate::config::load_str("services.yaml", SERVICES);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    Registry::from_config(&loaded.config).0
}

fn mesh(yaml: &str) -> MeshConfig {
    parse_mesh_config("mesh.yaml", yaml).expect("valid mesh config")
}

fn built_json(mesh_yaml: &str, name: &str) -> Value {
    let b =
        build(&mesh(mesh_yaml).extension_providers, &registry(), name).expect("provider builds");
    json::to_json(&b.config).unwrap()
}

#[test]
fn http_provider_becomes_istiods_filter() {
    let v = built_json(
        r#"
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    failOpen: true
    statusOnError: "503"
    includeRequestHeadersInCheck: [x-ext-authz, "x-prefix-*", "*-suffix"]
    includeAdditionalHeadersInCheck: {x-b: two, x-a: one}
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnDeny: [x-reason]
    headersToDownstreamOnAllow: [set-cookie]
"#,
        "http-authz",
    );
    assert_eq!(
        v,
        json!({
            "transport_api_version": "V3",
            "failure_mode_allow": true,
            "status_on_error": {"code": "ServiceUnavailable"},
            "http_service": {
                "server_uri": {"uri": "http://ext-authz.foo.svc.cluster.local",
                    "cluster": "outbound|8000||ext-authz.foo.svc.cluster.local", "timeout": "2s"},
                "path_prefix": "/check",
                "authorization_request": {"headers_to_add": [
                    {"key": "x-a", "value": "one"}, {"key": "x-b", "value": "two"}]},
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"exact": "x-user", "ignore_case": true}]},
                    "allowed_client_headers": {"patterns": [{"exact": "x-reason", "ignore_case": true}]},
                    "allowed_client_headers_on_success": {"patterns": [{"exact": "set-cookie", "ignore_case": true}]},
                },
            },
            "filter_enabled_metadata": {
                "filter": "envoy.filters.http.rbac",
                "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": "istio-ext-authz"}},
            },
            "allowed_headers": {"patterns": [
                {"exact": "x-ext-authz", "ignore_case": true},
                {"prefix": "x-prefix-", "ignore_case": true},
                {"suffix": "-suffix", "ignore_case": true}]},
        })
    );
}

#[test]
fn grpc_provider_becomes_istiods_filter() {
    let v = built_json(
        r#"
extensionProviders:
- name: grpc-authz
  envoyExtAuthzGrpc:
    service: foo/ext-authz.foo.svc.cluster.local
    port: 9000
    includeRequestBodyInCheck: {maxRequestBytes: 1000, allowPartialMessage: true}
"#,
        "grpc-authz",
    );
    assert_eq!(
        v,
        json!({
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "outbound|9000||ext-authz.foo.svc.cluster.local",
                    "authority": "ext-authz.foo.svc.cluster.local"},
                "timeout": "600s",
            },
            "with_request_body": {"max_request_bytes": 1000, "allow_partial_message": true},
            "filter_enabled_metadata": {
                "filter": "envoy.filters.http.rbac",
                "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": "istio-ext-authz"}},
            },
        })
    );
}

#[test]
fn providers_that_cannot_serve_are_errors() {
    let m = mesh(
        r#"
extensionProviders:
- name: prom
  prometheus: {}
- name: nowhere
  envoyExtAuthzHttp: {service: missing.example.com, port: 80}
- name: ambiguous
  envoyExtAuthzHttp: {service: twice.example.com, port: 80}
- name: no-port
  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 7777}
"#,
    );
    let r = registry();
    let err = |name: &str| {
        build(&m.extension_providers, &r, name)
            .unwrap_err()
            .to_string()
    };
    assert!(err("missing").contains("not defined"), "{}", err("missing"));
    assert!(
        err("missing").contains("prom, nowhere"),
        "{}",
        err("missing")
    );
    assert!(
        err("prom").contains("`prometheus` provider"),
        "{}",
        err("prom")
    );
    assert!(
        err("nowhere").contains("could not find service"),
        "{}",
        err("nowhere")
    );
    assert!(
        err("ambiguous").contains("multiple namespaces"),
        "{}",
        err("ambiguous")
    );
    assert!(
        err("no-port").contains("has no port 7777"),
        "{}",
        err("no-port")
    );
    // With the namespace the ambiguity is gone.
    let m = mesh(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: b/twice.example.com, port: 80}\n",
    );
    let b = build(&m.extension_providers, &r, "a").unwrap();
    assert_eq!(
        b.service,
        ("twice.example.com".to_string(), "b".to_string())
    );
}

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: twice.example.com}}]}]
"#;

fn custom(provider: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{paths: [\"/admin/*\"]}}}}]}}]\n"
    )
}

/// Translates the gateway with the services, a CUSTOM policy naming `provider` and the
/// mesh's providers; returns the HTTP filter names, the first RBAC filter's JSON, the
/// cluster names and the diagnostics.
fn gateway_with(provider: &str, mesh_yaml: &str) -> (Vec<String>, Value, Vec<String>, Vec<String>) {
    let yaml = format!("{SERVICES}---\n{GATEWAY}{}", custom(provider)).replace(
        "twice.example.com]",
        "twice.example.com]\n  exportTo: [\"*\"]",
    );
    let loaded = crate::config::load_str("t.yaml", &yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (registry, _) = Registry::from_config(&loaded.config);
    let proxy = crate::xds::ProxyIdentity::gateway(
        "istio-system",
        [("istio".to_string(), "ingressgateway".to_string())].into(),
    );
    let t = crate::translate::gateway_in_mesh(&loaded.config, &registry, &proxy, &mesh(mesh_yaml));
    let l = json::to_json(&t.resources.listeners[0]).unwrap();
    let filters = &l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let names = filters
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let clusters = t
        .resources
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let diags = t.diagnostics.iter().map(|d| d.to_string()).collect();
    (names, filters[0]["typed_config"].clone(), clusters, diags)
}

#[test]
fn custom_policies_put_shadow_rbac_and_ext_authz_first_and_the_authorizer_cluster_in() {
    let (names, rbac, clusters, diags) = gateway_with(
        "authz",
        "extensionProviders:\n- name: authz\n  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(names[..2], [RBAC_FILTER_NAME, FILTER_NAME]);
    assert_eq!(rbac["shadow_rules_stat_prefix"], "istio_ext_authz_");
    assert!(
        rbac["shadow_rules"]["policies"]["istio-ext-authz-ns[istio-system]-policy[ext]-rule[0]"]
            .is_object(),
        "{rbac}"
    );
    assert!(
        clusters.contains(&"outbound|9000||ext-authz.foo.svc.cluster.local".to_string()),
        "{clusters:?}"
    );
}

#[test]
fn a_provider_that_cannot_serve_denies_what_the_custom_policy_matches() {
    for (provider, mesh_yaml, want) in [
        ("missing", "", "is not defined"),
        (
            "prom",
            "extensionProviders:\n- name: prom\n  prometheus: {}\n",
            "`prometheus` provider",
        ),
        (
            "gone",
            "extensionProviders:\n- name: gone\n  envoyExtAuthzHttp: {service: gone.example.com, port: 80}\n",
            "could not find service",
        ),
    ] {
        let (names, rbac, _, diags) = gateway_with(provider, mesh_yaml);
        assert!(
            diags
                .iter()
                .any(|d| d.contains("spec.provider.name") && d.contains(want)),
            "{provider}: {diags:?}"
        );
        assert_eq!(names[0], RBAC_FILTER_NAME);
        assert_ne!(names[1], FILTER_NAME);
        assert_eq!(rbac["rules"]["action"], "DENY", "{rbac}");
        assert!(
            rbac["rules"]["policies"]
                ["istio-ext-authz-ns[istio-system]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"]
                .is_object(),
            "{rbac}"
        );
    }
}

#[test]
fn policies_naming_unknown_providers_are_errors_on_the_field() {
    let loaded = crate::config::load_str("t.yaml", &format!("{GATEWAY}{}", custom("nope")));
    let m = mesh("extensionProviders:\n- name: z\n  zipkin: {service: z, port: 9411}\n");
    let d = check_policies(&loaded.config, &m);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field.as_deref(), Some("spec.provider.name"));
    assert!(d[0].message.contains("defined: [z]"), "{}", d[0].message);
    let d = check_policies(&loaded.config.clone(), &mesh(""));
    assert!(d[0].is_error());
    let loaded = crate::config::load_str("t.yaml", &format!("{GATEWAY}{}", custom("z")));
    assert!(
        check_policies(&loaded.config, &m)[0]
            .message
            .contains("`zipkin` provider")
    );
}
