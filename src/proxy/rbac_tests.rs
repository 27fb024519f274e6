use super::*;
use crate::xds::json;
use serde_json::json;

fn engine(v: serde_json::Value) -> Result<Engine, CompileError> {
    let r: pb::Rbac = json::from_json(&v).expect("RBAC json");
    Engine::compile(&mut Cx::new("listener", "l"), &r)
}

fn input<'a>(
    headers: &'a http::HeaderMap,
    path: &'a str,
    md: Option<&'a DynamicMetadata>,
) -> Input<'a> {
    static GET: http::Method = http::Method::GET;
    Input {
        direct_remote: "10.0.0.1".parse().unwrap(),
        remote: "192.168.1.9".parse().unwrap(),
        local: "127.0.0.1:8080".parse().unwrap(),
        sni: Some("a.example.com"),
        tls: false,
        peer: None,
        request: Some(RequestView::new(
            &GET,
            b"Example.com",
            path,
            None,
            false,
            headers,
        )),
        metadata: md,
    }
}

fn policy(permission: serde_json::Value, principal: serde_json::Value) -> serde_json::Value {
    json!({"action": "ALLOW", "policies": {"p": {"permissions": [permission], "principals": [principal]}}})
}

#[test]
fn permissions_and_principals_match_as_envoy_does() {
    let h = http::HeaderMap::new();
    let cases: &[(serde_json::Value, serde_json::Value, bool)] = &[
        (json!({"any": true}), json!({"any": true}), true),
        (
            json!({"url_path": {"path": {"exact": "/a"}}}),
            json!({"any": true}),
            true,
        ),
        (
            json!({"url_path": {"path": {"prefix": "/b"}}}),
            json!({"any": true}),
            false,
        ),
        (
            json!({"destination_port": 8080}),
            json!({"any": true}),
            true,
        ),
        (
            json!({"destination_port_range": {"start": 8000, "end": 8080}}),
            json!({"any": true}),
            false,
        ),
        (
            json!({"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}),
            json!({"any": true}),
            true,
        ),
        (
            json!({"requested_server_name": {"suffix": ".example.com"}}),
            json!({"any": true}),
            true,
        ),
        (
            json!({"header": {"name": ":authority", "string_match": {"exact": "example.com", "ignore_case": true}}}),
            json!({"any": true}),
            true,
        ),
        (
            json!({"header": {"name": ":method", "string_match": {"exact": "POST"}}}),
            json!({"any": true}),
            false,
        ),
        (
            json!({"not_rule": {"any": true}}),
            json!({"any": true}),
            false,
        ),
        (
            json!({"any": true}),
            json!({"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 24}}),
            true,
        ),
        (
            json!({"any": true}),
            json!({"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 24}}),
            false,
        ),
        (
            json!({"any": true}),
            json!({"remote_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}}),
            true,
        ),
        (
            json!({"any": true}),
            json!({"source_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}),
            true,
        ),
        // Not a TLS connection: never authenticated.
        (json!({"any": true}), json!({"authenticated": {}}), false),
        (
            json!({"any": true}),
            json!({"header": {"name": "x-a", "present_match": false}}),
            true,
        ),
        (
            json!({"any": true}),
            json!({"header": {"name": "x-a", "string_match": {"exact": "v"}, "invert_match": true}}),
            false,
        ),
        (
            json!({"any": true}),
            json!({"and_ids": {"ids": [{"any": true}, {"not_id": {"any": true}}]}}),
            false,
        ),
        (
            json!({"any": true}),
            json!({"or_ids": {"ids": [{"not_id": {"any": true}}, {"any": true}]}}),
            true,
        ),
    ];
    for (perm, princ, want) in cases {
        let e = engine(policy(perm.clone(), princ.clone())).unwrap();
        let i = input(&h, "/a?q=1", None);
        assert_eq!(e.matching(&i).is_some(), *want, "{perm} {princ}");
    }
}

#[test]
fn several_values_of_a_header_are_joined() {
    let mut h = http::HeaderMap::new();
    h.append("x-a", "1".parse().unwrap());
    h.append("x-a", "2".parse().unwrap());
    let e = engine(policy(
        json!({"any": true}),
        json!({"header": {"name": "x-a", "string_match": {"exact": "1,2"}}}),
    ))
    .unwrap();
    assert!(e.matching(&input(&h, "/", None)).is_some());
}

#[test]
fn metadata_values_match_strings_lists_and_presence() {
    let h = http::HeaderMap::new();
    let mut md = DynamicMetadata::default();
    md.namespace_mut("envoy.filters.http.jwt_authn").insert(
        "iss".into(),
        json!({"sub": "alice", "groups": ["dev", "admin"], "n": 3}),
    );
    let meta = |path: serde_json::Value, value: serde_json::Value| json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path, "value": value}});
    let cases = [
        (
            meta(
                json!([{"key": "iss"}, {"key": "sub"}]),
                json!({"string_match": {"exact": "alice"}}),
            ),
            true,
        ),
        (
            meta(
                json!([{"key": "iss"}, {"key": "groups"}]),
                json!({"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}),
            ),
            true,
        ),
        (
            meta(
                json!([{"key": "iss"}, {"key": "groups"}]),
                json!({"string_match": {"exact": "admin"}}),
            ),
            false,
        ),
        (
            meta(
                json!([{"key": "iss"}, {"key": "n"}]),
                json!({"double_match": {"exact": 3.0}}),
            ),
            true,
        ),
        (
            meta(
                json!([{"key": "iss"}, {"key": "none"}]),
                json!({"present_match": true}),
            ),
            false,
        ),
        (
            meta(
                json!([{"key": "other"}, {"key": "sub"}]),
                json!({"string_match": {"exact": "alice"}}),
            ),
            false,
        ),
    ];
    for (principal, want) in cases {
        let e = engine(policy(json!({"any": true}), principal.clone())).unwrap();
        assert_eq!(
            e.matching(&input(&h, "/", Some(&md))).is_some(),
            want,
            "{principal}"
        );
    }
}

#[test]
fn actions_and_the_first_policy_by_name() {
    let h = http::HeaderMap::new();
    let any = json!({"permissions": [{"any": true}], "principals": [{"any": true}]});
    let e = engine(json!({"action": "DENY", "policies": {"b": any.clone(), "a": any.clone()}}))
        .unwrap();
    let d = e.decide(&input(&h, "/", None));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            policy: Some("a")
        }
    );
    let e = engine(json!({"action": "LOG", "policies": {"a": any}})).unwrap();
    assert!(e.decide(&input(&h, "/", None)).allowed);
    let e = engine(json!({"action": "ALLOW"})).unwrap();
    assert_eq!(
        e.decide(&input(&h, "/", None)),
        Decision {
            allowed: false,
            policy: None
        }
    );
    assert_eq!(
        response_detail(Some("a b")),
        "rbac_access_denied_matched_policy[a_b]"
    );
    assert_eq!(
        response_detail(None),
        "rbac_access_denied_matched_policy[none]"
    );
}

#[test]
fn what_is_not_implemented_is_refused_by_name() {
    let cases = [
        (
            policy(json!({"matcher": {"name": "x"}}), json!({"any": true})),
            "matcher",
        ),
        (
            policy(json!({"any": true}), json!({"filter_state": {"key": "k"}})),
            "filter_state",
        ),
        (
            policy(json!({"and_rules": {"rules": []}}), json!({"any": true})),
            "and_rules.rules",
        ),
        (
            json!({"action": "ALLOW", "policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}], "condition": {"const_expr": {"bool_value": true}}}}}),
            "condition",
        ),
    ];
    for (v, field) in cases {
        let e = engine(v.clone()).expect_err("refused");
        assert!(e.path.ends_with(field), "{e} for {v}");
    }
}

#[test]
fn cidr_ranges_mask_both_families() {
    let c = |a: &str, l: u8| Cidr {
        addr: a.parse().unwrap(),
        len: l,
    };
    assert!(c("10.1.0.0", 16).contains("10.1.2.3".parse().unwrap()));
    assert!(!c("10.1.0.0", 16).contains("10.2.0.1".parse().unwrap()));
    assert!(c("0.0.0.0", 0).contains("8.8.8.8".parse().unwrap()));
    assert!(c("127.0.0.1", 32).contains("::ffff:127.0.0.1".parse().unwrap()));
    assert!(c("fd00::", 8).contains("fd12::1".parse().unwrap()));
    assert!(!c("fd00::", 8).contains("10.0.0.1".parse().unwrap()));
}
