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
    let b = build(&mesh(mesh_yaml), &registry(), name).expect("provider builds");
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
    let err = |name: &str| build(&m, &r, name).unwrap_err().to_string();
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
    let b = build(&m, &r, "a").unwrap();
    assert_eq!(
        b.service,
        ("twice.example.com".to_string(), "b".to_string())
    );
}

fn shadow() -> http_rbac::Rbac {
    http_rbac::Rbac {
        shadow_rules: Some(rbac::Rbac {
            action: rbac::rbac::Action::Deny as i32,
            policies: [(
                "istio-ext-authz-ns[foo]-policy[ext]-rule[0]".to_string(),
                rbac::Policy::default(),
            )]
            .into(),
            ..Default::default()
        }),
        shadow_rules_stat_prefix: "istio_ext_authz_".into(),
        ..Default::default()
    }
}

#[test]
fn custom_filters_are_shadow_rbac_then_ext_authz_or_a_deny() {
    let m = mesh(
        "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}\n",
    );
    let r = registry();
    let mut errors = Vec::new();
    let (filters, service) =
        custom_http_filters(shadow(), &["a".to_string()], &m, &r, |e| errors.push(e));
    assert!(errors.is_empty(), "{errors:?}");
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [RBAC_FILTER_NAME, FILTER_NAME]);
    assert_eq!(
        service,
        Some(("ext-authz.foo.svc.cluster.local".into(), "foo".into()))
    );

    for providers in [vec!["unknown".to_string()], vec!["a".into(), "b".into()]] {
        let mut errors = Vec::new();
        let (filters, service) =
            custom_http_filters(shadow(), &providers, &m, &r, |e| errors.push(e));
        assert_eq!(errors.len(), 1, "{providers:?}");
        assert_eq!(service, None);
        let [f] = filters.as_slice() else {
            panic!("one filter")
        };
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("typed")
        };
        let v = json::any_to_json(any).unwrap();
        assert_eq!(v["rules"]["action"], "DENY");
        assert!(
            v["rules"]["policies"]
                ["istio-ext-authz-ns[foo]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"]
                .is_object(),
            "{v}"
        );
    }
}
