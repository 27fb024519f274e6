use super::*;
use crate::xds::json;
use serde_json::{Value, json};

fn config(yaml: &str) -> Config {
    let outcome = crate::config::load_str("ap.yaml", yaml);
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    outcome.config
}

fn ap(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const CX: Context<'static> = Context {
    trust_domain: "cluster.local",
    issuers: &[],
};

/// The JSON of each RBAC filter built for a workload `app: a` in `shop`.
fn http(yaml: &str, cx: Context<'_>) -> Vec<Value> {
    let c = config(yaml);
    let p = for_workload(&c, "istio-system", "shop", &labels(&[("app", "a")]));
    let mut d = Vec::new();
    let out = http_filters(cx, &p, &mut d)
        .iter()
        .map(|f| {
            assert_eq!(f.name, HTTP_RBAC_FILTER);
            let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("typed config")
            };
            let r = <http_rbac::Rbac as prost::Message>::decode(any.value.as_slice()).unwrap();
            json::to_json(&r).unwrap()
        })
        .collect();
    assert!(d.is_empty(), "{d:?}");
    out
}

fn tcp(yaml: &str) -> Vec<Value> {
    let c = config(yaml);
    let p = for_workload(&c, "istio-system", "shop", &labels(&[("app", "a")]));
    let mut d = Vec::new();
    network_filters(CX, &p, &mut d)
        .iter()
        .map(|f| {
            assert_eq!(f.name, NETWORK_RBAC_FILTER);
            let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("typed config")
            };
            let r = <network_rbac::Rbac as prost::Message>::decode(any.value.as_slice()).unwrap();
            json::to_json(&r).unwrap()
        })
        .collect()
}

#[test]
fn policies_apply_by_namespace_root_and_selector() {
    let yaml = [
        ap("mesh", "istio-system", "{action: DENY, rules: [{}]}"),
        ap(
            "mesh-b",
            "istio-system",
            "{selector: {matchLabels: {app: b}}, rules: [{}]}",
        ),
        ap(
            "mesh-a",
            "istio-system",
            "{selector: {matchLabels: {app: a}}, action: AUDIT, rules: [{}]}",
        ),
        ap("ns", "shop", "{rules: [{}]}"),
        ap("other", "other", "{rules: [{}]}"),
        ap(
            "wl-b",
            "shop",
            "{selector: {matchLabels: {app: b}}, rules: [{}]}",
        ),
    ]
    .concat();
    let c = config(&yaml);
    let p = for_workload(
        &c,
        "istio-system",
        "shop",
        &labels(&[("app", "a"), ("v", "1")]),
    );
    let names = |l: &[&Resource<AuthorizationPolicy>]| -> Vec<String> {
        l.iter().map(|r| r.meta.name.clone()).collect()
    };
    assert_eq!(names(&p.deny), ["mesh"]);
    assert_eq!(names(&p.allow), ["ns"]);
    assert_eq!(names(&p.audit), ["mesh-a"]);
    assert!(p.custom.is_empty());
}

#[test]
fn filters_come_audit_deny_allow_and_empty_rules_never_match() {
    let yaml = [
        ap("allow-nothing", "shop", "{}"),
        ap("deny-all", "shop", "{action: DENY, rules: [{}]}"),
        ap(
            "audit",
            "shop",
            "{action: AUDIT, rules: [{to: [{operation: {paths: [/a]}}]}]}",
        ),
    ]
    .concat();
    let f = http(&yaml, CX);
    assert_eq!(f.len(), 3);
    assert_eq!(f[0]["rules"]["action"], "LOG");
    assert_eq!(f[1]["rules"]["action"], "DENY");
    // ALLOW is the proto default, left out of the JSON.
    assert!(f[2]["rules"].get("action").is_none(), "{}", f[2]);
    // ALLOW without rules: a policy that never matches.
    assert_eq!(
        f[2]["rules"]["policies"]["ns[shop]-policy[allow-nothing]-rule[0]"],
        json!({
            "permissions": [{"not_rule": {"any": true}}],
            "principals": [{"not_id": {"any": true}}],
        })
    );
    // `{}`: any permission, any principal.
    assert_eq!(
        f[1]["rules"]["policies"]["ns[shop]-policy[deny-all]-rule[0]"],
        json!({
            "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
            "principals": [{"and_ids": {"ids": [{"any": true}]}}],
        })
    );
}

#[test]
fn a_full_rule_is_translated_as_istiod_does() {
    let yaml = ap(
        "full",
        "shop",
        r#"{rules: [{
          from: [{source: {principals: [cluster.local/ns/x/sa/y, "*/sa/z"], notNamespaces: [bad], ipBlocks: [10.0.0.0/8], remoteIpBlocks: [1.2.3.4]}}],
          to: [{operation: {hosts: [Example.com, "*.example.org"], methods: [GET], paths: ["/api/*", "*.png", "*"], notPorts: ["9090"]}}],
          when: [{key: "request.headers[x-token]", values: [secret]}, {key: destination.port, values: ["8080"]}, {key: connection.sni, notValues: ["*.internal"]}]
        }]}"#,
    );
    let f = http(&yaml, CX);
    let p = &f[0]["rules"]["policies"]["ns[shop]-policy[full]-rule[0]"];
    assert_eq!(
        p["principals"][0]["and_ids"]["ids"],
        json!([
            {"or_ids": {"ids": [
                {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/x/sa/y"}}},
                {"authenticated": {"principal_name": {"safe_regex": {"regex": "spiffe://.*/sa/z"}}}},
            ]}},
            {"not_id": {"or_ids": {"ids": [
                {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/bad/.*"}}}},
            ]}}},
            {"or_ids": {"ids": [{"remote_ip": {"address_prefix": "1.2.3.4", "prefix_len": 32}}]}},
            {"or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}},
            {"or_ids": {"ids": [{"header": {"name": "x-token", "string_match": {"exact": "secret"}}}]}},
        ])
    );
    assert_eq!(
        p["permissions"][0]["and_rules"]["rules"],
        json!([
            {"or_rules": {"rules": [
                {"header": {"name": ":authority", "string_match": {"exact": "Example.com", "ignore_case": true}}},
                {"header": {"name": ":authority", "string_match": {"suffix": ".example.org", "ignore_case": true}}},
            ]}},
            {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}},
            {"or_rules": {"rules": [
                {"url_path": {"path": {"prefix": "/api/"}}},
                {"url_path": {"path": {"suffix": ".png"}}},
                {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
            ]}},
            {"not_rule": {"or_rules": {"rules": [{"destination_port": 9090}]}}},
            {"or_rules": {"rules": [{"destination_port": 8080}]}},
            {"not_rule": {"or_rules": {"rules": [{"requested_server_name": {"suffix": ".internal"}}]}}},
        ])
    );
}

#[test]
fn http_only_fields_on_tcp_drop_allow_rules_and_widen_deny_rules() {
    let rule = r#"[{to: [{operation: {methods: [GET], ports: ["8080"]}}]}, {from: [{source: {ipBlocks: [10.0.0.1]}}]}]"#;
    let yaml = [
        ap("allow", "shop", &format!("{{rules: {rule}}}")),
        ap("deny", "shop", &format!("{{action: DENY, rules: {rule}}}")),
    ]
    .concat();
    let f = tcp(&yaml);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0]["stat_prefix"], "tcp.");
    let deny = &f[0]["rules"]["policies"];
    // DENY: the method is left out, the port stays: the rule denies every connection to 8080.
    assert_eq!(
        deny["ns[shop]-policy[deny]-rule[0]"]["permissions"][0]["and_rules"]["rules"],
        json!([{"or_rules": {"rules": [{"destination_port": 8080}]}}])
    );
    let allow = &f[1]["rules"]["policies"];
    // ALLOW: the rule with a method is left out entirely; the IP rule stays.
    assert!(
        allow.get("ns[shop]-policy[allow]-rule[0]").is_none(),
        "{allow}"
    );
    assert!(
        allow.get("ns[shop]-policy[allow]-rule[1]").is_some(),
        "{allow}"
    );
    // The same policies on HTTP keep both rules.
    let h = http(&yaml, CX);
    assert!(
        h[1]["rules"]["policies"]
            .get("ns[shop]-policy[allow]-rule[0]")
            .is_some()
    );
}

#[test]
fn request_principals_and_claims_read_the_jwt_payload_by_issuer() {
    let issuers = [
        "https://a.example".to_string(),
        "https://b.example".to_string(),
    ];
    let cx = Context {
        trust_domain: "cluster.local",
        issuers: &issuers,
    };
    let yaml = ap(
        "jwt",
        "shop",
        r#"{rules: [{from: [{source: {requestPrincipals: ["https://a.example/alice", "*"]}}], when: [{key: "request.auth.claims[groups]", values: [admin]}]}]}"#,
    );
    let f = http(&yaml, cx);
    let ids = &f[0]["rules"]["policies"]["ns[shop]-policy[jwt]-rule[0]"]["principals"][0]["and_ids"]
        ["ids"];
    let sub = |iss: &str, m: Value| json!({"metadata": {"filter": JWT_AUTHN_FILTER, "path": [{"key": iss}, {"key": "sub"}], "value": {"string_match": m}}});
    assert_eq!(
        ids[0],
        json!({"or_ids": {"ids": [
            sub("https://a.example", json!({"exact": "alice"})),
            {"or_ids": {"ids": [
                sub("https://a.example", json!({"safe_regex": {"regex": ".+"}})),
                sub("https://b.example", json!({"safe_regex": {"regex": ".+"}})),
            ]}},
        ]}})
    );
    let claim = &ids[1]["or_ids"]["ids"][0]["or_ids"]["ids"][1]["metadata"];
    assert_eq!(
        claim["path"],
        json!([{"key": "https://b.example"}, {"key": "groups"}])
    );
    assert_eq!(
        claim["value"]["or_match"]["value_matchers"],
        json!([
            {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}},
            {"string_match": {"exact": "admin"}},
        ])
    );
    // Without issuers a wildcard request principal never matches.
    let f = http(&yaml, CX);
    let ids = &f[0]["rules"]["policies"]["ns[shop]-policy[jwt]-rule[0]"]["principals"][0]["and_ids"]
        ["ids"];
    assert_eq!(ids[0]["or_ids"]["ids"][1], json!({"not_id": {"any": true}}));
}

#[test]
fn dry_run_policies_become_shadow_rules() {
    let yaml = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dry, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n";
    let f = http(yaml, CX);
    assert!(f[0].get("rules").is_none(), "{}", f[0]);
    assert_eq!(f[0]["shadow_rules"]["action"], "DENY");
    assert_eq!(f[0]["shadow_rules_stat_prefix"], DRY_RUN_DENY_PREFIX);
}

#[test]
fn principals_follow_the_mesh_trust_domain() {
    let yaml = ap(
        "td",
        "shop",
        "{rules: [{from: [{source: {principals: [cluster.local/ns/x/sa/y, other.org/ns/x/sa/y]}}]}]}",
    );
    let cx = Context {
        trust_domain: "example.org",
        issuers: &[],
    };
    let f = http(&yaml, cx);
    let ids = &f[0]["rules"]["policies"]["ns[shop]-policy[td]-rule[0]"]["principals"][0]["and_ids"]
        ["ids"][0]["or_ids"]["ids"];
    assert_eq!(
        ids[0]["authenticated"]["principal_name"]["exact"],
        "spiffe://example.org/ns/x/sa/y"
    );
    assert_eq!(
        ids[1]["authenticated"]["principal_name"]["exact"],
        "spiffe://other.org/ns/x/sa/y"
    );
}

#[test]
fn custom_policies_become_shadow_rules_named_for_ext_authz() {
    let p1 = Resource {
        meta: crate::config::types::ObjectMeta::new("shop", "ext"),
        spec: AuthorizationPolicy {
            action: Some(AuthzAction::Custom),
            provider: Some(
                crate::config::types::authorization_policy::ExtensionProvider {
                    name: "opa".into(),
                },
            ),
            rules: vec![Rule::default()],
            ..Default::default()
        },
        origin: crate::config::types::Origin::synthetic("test"),
    };
    let policies = WorkloadPolicies {
        custom: vec![&p1],
        ..Default::default()
    };
    let mut d = Vec::new();
    let (config, providers) = custom_shadow_rbac(CX, &policies, false, &mut d).unwrap();
    assert_eq!(providers, ["opa"]);
    assert!(config.rules.is_none());
    assert_eq!(config.shadow_rules_stat_prefix, EXT_AUTHZ_SHADOW_PREFIX);
    let shadow = config.shadow_rules.unwrap();
    assert_eq!(shadow.action, rbac::rbac::Action::Deny as i32);
    assert!(
        shadow
            .policies
            .contains_key("istio-ext-authz-ns[shop]-policy[ext]-rule[0]")
    );
    assert!(custom_shadow_rbac(CX, &WorkloadPolicies::default(), false, &mut d).is_none());
}

#[test]
fn filters_go_before_fault_and_the_router_stays_last() {
    let mut m = crate::translate::listener::istio_http_connection_manager(
        "s",
        hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds::default()),
    );
    insert_http_filters(
        &mut m,
        vec![http_filter("x", pb::any(&http_rbac::Rbac::default()))],
    );
    let names: Vec<&str> = m.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "x",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
}
