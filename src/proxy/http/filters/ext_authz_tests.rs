use super::*;
use serde_json::json;

fn config(v: serde_json::Value) -> pb::ExtAuthz {
    crate::xds::json::from_json::<pb::ExtAuthz>(&v).expect("valid ExtAuthz JSON")
}

fn compile(v: serde_json::Value) -> Result<ExtAuthz, CompileError> {
    let mut cx = Cx::new("listener", "l");
    compile_config(
        &mut cx,
        "envoy.filters.http.ext_authz",
        &config(v),
        &HashMap::new(),
    )
}

fn http(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"server_uri": {"uri": "http://a", "cluster": "authz", "timeout": "1s"}});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!({"http_service": s})
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let mut c = http(json!({}));
    c["with_request_body"] = json!({"max_request_bytes": 100});
    let e = compile(c).unwrap_err();
    assert_eq!(e.path, "with_request_body");
    let mut c = http(json!({}));
    c["clear_route_cache"] = json!(true);
    assert_eq!(compile(c).unwrap_err().path, "clear_route_cache");
    let e = compile(http(json!({"path_override": "/x"}))).unwrap_err();
    assert_eq!(e.path, "http_service.path_override");
    let e =
        compile(json!({"grpc_service": {"google_grpc": {"target_uri": "a", "stat_prefix": "s"}}}))
            .unwrap_err();
    assert_eq!(e.path, "grpc_service.google_grpc");
    let e = compile(
        json!({"grpc_service": {"envoy_grpc": {"cluster_name": "a"}},
        "transport_api_version": "V2"}),
    )
    .unwrap_err();
    assert_eq!(e.path, "transport_api_version");
    let e = compile(json!({})).unwrap_err();
    assert_eq!(e.path, "services");
    let e = compile(http(json!({"path_prefix": "check"}))).unwrap_err();
    assert_eq!(e.path, "http_service.path_prefix");
    let mut c = http(json!({}));
    c["http_service"]["server_uri"]
        .as_object_mut()
        .unwrap()
        .remove("timeout");
    assert_eq!(
        compile(c).unwrap_err().path,
        "http_service.server_uri.timeout"
    );
}

#[test]
fn defaults_are_envoys() {
    let f = compile(json!({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}})).unwrap();
    assert_eq!(f.status_on_error, StatusCode::FORBIDDEN);
    let Service::Grpc(g) = &f.service else {
        panic!("grpc")
    };
    assert_eq!(g.target.timeout, DEFAULT_GRPC_TIMEOUT);
    assert_eq!(g.authority, "authz");
    // The cluster is not in the (empty) snapshot: every call is then an error.
    assert!(g.target.cluster.is_none());
    let mut c = http(json!({}));
    c["status_on_error"] = json!({"code": 503});
    assert_eq!(
        compile(c).unwrap().status_on_error,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn which_request_headers_reach_the_authorizer() {
    let grpc = compile(
        json!({"grpc_service": {"envoy_grpc": {"cluster_name": "a"}},
        "disallowed_headers": {"patterns": [{"exact": "cookie"}]}}),
    )
    .unwrap();
    assert!(grpc.header_allowed("x-anything", false));
    assert!(grpc.header_allowed(":path", false));
    assert!(!grpc.header_allowed("cookie", false));
    let mut c = http(json!({}));
    c["allowed_headers"] = json!({"patterns": [{"prefix": "x-allowed-"}]});
    let h = compile(c).unwrap();
    for always in [":method", ":path", ":authority", "authorization"] {
        assert!(h.header_allowed(always, true), "{always}");
    }
    assert!(h.header_allowed("x-allowed-one", true));
    assert!(!h.header_allowed("x-other", true));
    let plain = compile(http(json!({}))).unwrap();
    assert!(!plain.header_allowed("x-other", true));
}

fn http_service(response: serde_json::Value) -> HttpService {
    let f = compile(http(json!({"authorization_response": response}))).unwrap();
    match f.service {
        Service::Http(s) => s,
        Service::Grpc(_) => unreachable!(),
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers: h,
        body: Bytes::from(body.to_string()),
        trailers: None,
    }
}

#[test]
fn http_answers_allow_deny_or_fail_as_envoy_reads_them() {
    let s = http_service(json!({
        "allowed_upstream_headers": {"patterns": [{"exact": "x-up"}]},
        "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-add"}]},
        "allowed_client_headers_on_success": {"patterns": [{"exact": "x-client"}]},
        "dynamic_metadata_from_headers": {"patterns": [{"prefix": "x-md-"}]},
    }));
    let Outcome::Ok(ok) = s.outcome(answer(
        200,
        &[
            ("x-up", "1"),
            ("x-add", "2"),
            ("x-client", "3"),
            ("x-md-user", "alice"),
            ("x-other", "4"),
            ("x-envoy-auth-headers-to-remove", "a, B"),
        ],
        "",
    )) else {
        panic!("allowed")
    };
    assert_eq!(
        ok.set,
        [(
            HeaderName::from_static("x-up"),
            HeaderValue::from_static("1")
        )]
    );
    assert_eq!(
        ok.add,
        [(
            HeaderName::from_static("x-add"),
            HeaderValue::from_static("2")
        )]
    );
    assert_eq!(
        ok.remove,
        [HeaderName::from_static("a"), HeaderName::from_static("b")]
    );
    assert_eq!(ok.response.len(), 1);
    assert_eq!(ok.metadata["x-md-user"], json!("alice"));
    assert!(matches!(s.outcome(answer(503, &[], "")), Outcome::Error));
    let Outcome::Denied(d) = s.outcome(answer(
        401,
        &[
            ("www-authenticate", "Basic"),
            ("host", "h"),
            ("x-other", "o"),
        ],
        "no",
    )) else {
        panic!("denied")
    };
    // Without allowed_client_headers every header but the host goes to the client.
    assert_eq!(d.status, StatusCode::UNAUTHORIZED);
    let names: Vec<&str> = d.set.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["www-authenticate", "x-other"]);
    let listed =
        http_service(json!({"allowed_client_headers": {"patterns": [{"exact": "x-reason"}]}}));
    let Outcome::Denied(d) = listed.outcome(answer(
        403,
        &[("x-reason", "r"), ("location", "/l"), ("x-other", "o")],
        "",
    )) else {
        panic!("denied")
    };
    let names: Vec<&str> = d.set.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-reason", "location"]);
}

#[test]
fn denial_answer_takes_the_authorizers_headers_and_body() {
    let resp = denied_response(Denied {
        status: StatusCode::UNAUTHORIZED,
        body: Bytes::from_static(b"nope"),
        set: vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::SET_COOKIE, HeaderValue::from_static("a=1")),
            (header::SET_COOKIE, HeaderValue::from_static("b=2")),
            (header::CONTENT_LENGTH, HeaderValue::from_static("999")),
        ],
        metadata: Default::default(),
    });
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    assert_eq!(h["content-length"], "4");
}

fn hvo(key: &str, value: &str, append: Option<bool>) -> core_pb::HeaderValueOption {
    #[allow(deprecated)]
    core_pb::HeaderValueOption {
        header: Some(core_pb::HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| protobuf_pb::BoolValue { value }),
        ..Default::default()
    }
}

fn rpc_status(code: i32) -> Option<crate::xds::pb::google::rpc::Status> {
    Some(crate::xds::pb::google::rpc::Status {
        code,
        ..Default::default()
    })
}

#[test]
fn grpc_check_responses_as_envoy_reads_them() {
    use auth_pb::check_response::HttpResponse;
    let ok = auth_pb::CheckResponse {
        status: rpc_status(0),
        http_response: Some(HttpResponse::OkResponse(auth_pb::OkHttpResponse {
            headers: vec![hvo("x-set", "s", None), hvo("x-app", "a", Some(true))],
            headers_to_remove: vec!["x-gone".into(), ":path".into()],
            response_headers_to_add: vec![hvo("x-resp", "r", Some(false))],
            query_parameters_to_set: vec![core_pb::QueryParameter {
                key: "q".into(),
                value: "1".into(),
            }],
            query_parameters_to_remove: vec!["drop".into()],
            ..Default::default()
        })),
        dynamic_metadata: Some(json_to_struct(
            json!({"user": "alice"}).as_object().unwrap(),
        )),
    };
    let Outcome::Ok(ok) = check_response_outcome(ok) else {
        panic!("ok")
    };
    assert_eq!(ok.set[0].0, "x-set");
    assert_eq!(ok.append[0].0, "x-app");
    assert_eq!(ok.remove, [HeaderName::from_static("x-gone")]);
    assert_eq!(ok.response[0].2, ResponseAction::Set);
    assert_eq!(ok.metadata["user"], json!("alice"));
    assert_eq!(ok.query_set, [("q".to_string(), "1".to_string())]);

    let plain = auth_pb::CheckResponse {
        status: rpc_status(7),
        ..Default::default()
    };
    let Outcome::Denied(d) = check_response_outcome(plain) else {
        panic!("denied")
    };
    assert_eq!((d.status, d.body.len()), (StatusCode::FORBIDDEN, 0));
    let detailed = auth_pb::CheckResponse {
        status: rpc_status(16),
        http_response: Some(HttpResponse::DeniedResponse(auth_pb::DeniedHttpResponse {
            status: Some(crate::xds::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
            headers: vec![hvo("x-a", "1", None), hvo("x-b", "2", Some(true))],
            body: "b".into(),
        })),
        ..Default::default()
    };
    let Outcome::Denied(d) = check_response_outcome(detailed) else {
        panic!("denied")
    };
    assert_eq!(d.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&d.body[..], b"b");
    // Headers to append are not applied to a denial.
    assert_eq!(d.set.len(), 1);
}

#[test]
fn grpc_framing_and_status() {
    let msg = auth_pb::CheckResponse {
        status: Some(crate::xds::pb::google::rpc::Status {
            code: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
    msg.encode(&mut body).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let ok = Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from(body.clone()),
        trailers: Some(trailers.clone()),
    };
    assert!(matches!(grpc_outcome(ok), Outcome::Ok(_)));
    // A failed call (UNAVAILABLE in the trailers-only answer) is an error.
    let mut failed = HeaderMap::new();
    failed.insert("grpc-status", HeaderValue::from_static("14"));
    let e = Answer {
        status: StatusCode::OK,
        headers: failed,
        body: Bytes::new(),
        trailers: None,
    };
    assert!(matches!(grpc_outcome(e), Outcome::Error));
    let truncated = Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from(body[..body.len() - 1].to_vec()),
        trailers: Some(trailers),
    };
    assert!(matches!(grpc_outcome(truncated), Outcome::Error));
}

#[test]
fn query_parameters_are_set_and_removed() {
    let mut req = Request::new(());
    *req.uri_mut() = "/p?a=1&drop=2&b".parse().unwrap();
    mutate_query(
        &mut req,
        &[("a".into(), "9".into()), ("c".into(), "3".into())],
        &["drop".into()],
    );
    assert_eq!(req.uri().to_string(), "/p?a=9&b&c=3");
}

#[test]
fn filter_enabled_metadata_reads_the_rbac_shadow_result() {
    let c = compile({
        let mut c = http(json!({}));
        c["filter_enabled_metadata"] = json!({
            "filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}},
        });
        c
    })
    .unwrap();
    let m = c.enabled_metadata.as_ref().unwrap();
    let mut md = DynamicMetadata::default();
    assert!(!m.matches(&md));
    md.namespace_mut("envoy.filters.http.rbac").insert(
        "istio_ext_authz_shadow_effective_policy_id".into(),
        json!("istio-ext-authz-ns[foo]-policy[ext]-rule[0]"),
    );
    assert!(m.matches(&md));
    let mut other = DynamicMetadata::default();
    other.namespace_mut("envoy.filters.http.rbac").insert(
        "istio_ext_authz_shadow_effective_policy_id".into(),
        json!("ns[foo]-policy[x]-rule[0]"),
    );
    assert!(!m.matches(&other));
    let e = compile({
        let mut c = http(json!({}));
        c["filter_enabled_metadata"] = json!({"filter": "f", "path": [{"key": "k"}], "value": {"double_match": {"exact": 1.0}}});
        c
    })
    .unwrap_err();
    assert_eq!(e.path, "filter_enabled_metadata.value.double_match");
}

#[test]
fn per_route_configs() {
    let mut cx = Cx::new("route_configuration", "r");
    let any = |v: &pb::ExtAuthzPerRoute| protobuf_pb::Any {
        type_url: PER_ROUTE_TYPE_URL.into(),
        value: v.encode_to_vec(),
    };
    let disabled = per_route(
        &mut cx,
        &any(&pb::ExtAuthzPerRoute {
            r#override: Some(pb::ext_authz_per_route::Override::Disabled(true)),
        }),
    )
    .unwrap();
    assert!(
        disabled
            .downcast_ref::<ExtAuthzPerRoute>()
            .unwrap()
            .disabled
    );
    let settings = pb::CheckSettings {
        context_extensions: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let ctx = per_route(
        &mut cx,
        &any(&pb::ExtAuthzPerRoute {
            r#override: Some(pb::ext_authz_per_route::Override::CheckSettings(settings)),
        }),
    )
    .unwrap();
    let ctx = ctx.downcast_ref::<ExtAuthzPerRoute>().unwrap();
    assert_eq!(ctx.context_extensions["k"], "v");
    let body = pb::CheckSettings {
        with_request_body: Some(pb::BufferSettings::default()),
        ..Default::default()
    };
    let e = per_route(
        &mut cx,
        &any(&pb::ExtAuthzPerRoute {
            r#override: Some(pb::ext_authz_per_route::Override::CheckSettings(body)),
        }),
    )
    .unwrap_err();
    assert_eq!(e.path, "check_settings.with_request_body");
}
