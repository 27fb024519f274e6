//! Header values with Envoy's substitution formatters (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x?y):N%`, `%START_TIME(...)%`, ...) at every header-mutation level: real Envoy
//! 1.40 and meshgate serve the same resources, and the values the upstream sees and the
//! client gets must match — exactly where both sides see the same thing, by shape where
//! they legitimately differ (each side's own listener port, the client's ephemeral port,
//! the clock).
mod support;

use serde_json::{Value, json};
use support::gateway::*;
use support::*;

fn add(key: &str, value: &str) -> Value {
    json!({"header": {"key": key, "value": value}})
}

fn resources(listen: u16, a: u16, b: u16) -> Value {
    let hcm = json!({"use_remote_address": true, "server_name": "istio-envoy"});
    let fmt_request = vec![
        add("x-remote", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        add("x-remote-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        add("x-remote-port", "%DOWNSTREAM_REMOTE_PORT%"),
        add(
            "x-direct",
            "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        ),
        add("x-local", "%DOWNSTREAM_LOCAL_ADDRESS%"),
        add("x-local-ip", "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"),
        add("x-local-port", "%DOWNSTREAM_LOCAL_PORT%"),
        add("x-up", "%UPSTREAM_HOST%"),
        add("x-up-prefixed", "up=%UPSTREAM_REMOTE_ADDRESS%"),
        json!({"header": {"key": "x-up-kept", "value": "%UPSTREAM_HOST%"}, "keep_empty_value": true}),
        add("x-cluster", "%UPSTREAM_CLUSTER%"),
        add("x-cluster-raw", "%UPSTREAM_CLUSTER_RAW%"),
        add("x-proto", "%PROTOCOL%"),
        add("x-sni", "%REQUESTED_SERVER_NAME%"),
        add("x-peer", "%DOWNSTREAM_PEER_URI_SAN%"),
        add("x-hostname", "%HOSTNAME%"),
        add("x-start", "%START_TIME(%s)%"),
        add("x-start-default", "%START_TIME%"),
        add("x-req", "%REQ(x-in)%"),
        add("x-req-alt", "%REQ(x-missing?X-IN):4%"),
        add("x-path", "%REQ(:PATH)%"),
        add("x-method", "%REQ(:METHOD)%"),
        add("x-authority", "%REQ(:AUTHORITY)%"),
        add("x-pct", "100%% %PROTOCOL%"),
        json!({"header": {"key": "x-in", "value": "replaced"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
        add("x-dup", "1"),
        json!({"header": {"key": "x-dup", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
        json!({"header": {"key": "x-absent", "value": "%PROTOCOL%"}, "append_action": "ADD_IF_ABSENT"}),
        json!({"header": {"key": "x-absent", "value": "second"}, "append_action": "ADD_IF_ABSENT"}),
    ];
    let fmt_response = vec![
        add("x-r-up", "%UPSTREAM_HOST%"),
        add("x-r-up-ip", "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        add("x-r-cluster", "%UPSTREAM_CLUSTER%"),
        add("x-r-req", "%REQ(x-in)%"),
        add("x-r-path", "%REQ(:PATH)%"),
        add("x-r-resp", "%RESP(x-upstream)%"),
        add("x-r-status", "%RESP(:STATUS)%"),
        add("x-r-remote-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        add("x-r-missing", "%RESP(x-nothing)%"),
    ];
    let routes = vec![
        json!({"match": {"prefix": "/fmt"}, "route": {"cluster": "a"},
               "request_headers_to_add": fmt_request,
               "response_headers_to_add": fmt_response}),
        json!({"match": {"prefix": "/rw/"}, "route": {"cluster": "a", "prefix_rewrite": "/", "host_rewrite_literal": "inner.example"},
               "request_headers_to_add": [add("x-path", "%REQ(:PATH)%"), add("x-authority", "%REQ(:AUTHORITY)%")],
               "response_headers_to_add": [add("x-r-path", "%REQ(:PATH)%")]}),
        json!({"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "b", "weight": 100,
                 "request_headers_to_add": [add("x-wc", "%UPSTREAM_CLUSTER%/%PROTOCOL%")],
                 "response_headers_to_add": [add("x-r-wc", "%UPSTREAM_HOST%")]}]}}}),
        json!({"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
               "response_headers_to_add": [add("x-r-req", "%REQ(x-in)%"), add("x-r-status", "%RESP(:STATUS)%"),
                                           add("x-r-up", "%UPSTREAM_HOST%"), add("x-r-proto", "%PROTOCOL%")]}),
        json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}}),
    ];
    json!({
        "listeners": [hcm_listener("http", listen, "http", hcm, vec![])],
        "routes": [{
            "name": "http",
            "request_headers_to_add": [add("x-rc", "%PROTOCOL% %DOWNSTREAM_LOCAL_PORT%")],
            "response_headers_to_add": [add("x-r-rc", "%REQ(:METHOD)%")],
            "virtual_hosts": [{
                "name": "all", "domains": ["*"], "routes": routes,
                "request_headers_to_add": [add("x-vh", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")],
                "response_headers_to_add": [add("x-r-vh", "%UPSTREAM_CLUSTER%")],
            }],
        }],
        "clusters": [
            static_cluster("a", &[a], json!({})),
            static_cluster("b", &[b], json!({})),
        ],
    })
}

fn upstream_header(echo: &Value, name: &str) -> Option<String> {
    echo["headers"][name].as_array().map(|vals| {
        vals.iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn is_port(v: &str) -> bool {
    v.parse::<u16>().is_ok_and(|p| p > 0)
}

/// How a value compares between the two proxies.
enum Expect {
    /// The same on both.
    Same,
    /// Each side's own value (its listener port differs).
    Own(fn(u16) -> String),
    /// Both present and of this shape.
    Shape(fn(&str) -> bool),
}

fn check(
    what: &str,
    name: &str,
    expect: &Expect,
    (e, e_port): (Option<String>, u16),
    (m, m_port): (Option<String>, u16),
    mismatches: &mut Vec<String>,
) {
    let ok = match expect {
        Expect::Same => e == m,
        Expect::Own(f) => e.as_deref() == Some(&f(e_port)) && m.as_deref() == Some(&f(m_port)),
        Expect::Shape(f) => e.as_deref().is_some_and(f) && m.as_deref().is_some_and(f),
    };
    if !ok {
        mismatches.push(format!("[{what}] {name}: envoy={e:?} meshgate={m:?}"));
    }
}

#[test]
fn formatted_header_values_match_envoy() {
    let a = EchoUpstream::start("a");
    let b = EchoUpstream::start("b");
    let (e_port, m_port) = (free_port(), free_port());
    let dir = TempDir::new();
    let envoy = envoy_with(&resources(e_port, a.port(), b.port()), &dir);
    envoy.assert_no_rejections();
    let _mesh = InProcess::start(&resources(m_port, a.port(), b.port()));

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    use Expect::*;
    let request_headers: Vec<(&str, Expect)> = vec![
        (
            "x-remote",
            Shape(|v| v.strip_prefix("127.0.0.1:").is_some_and(is_port)),
        ),
        ("x-remote-ip", Same),
        ("x-remote-port", Shape(is_port)),
        ("x-direct", Same),
        ("x-local", Own(|p| format!("127.0.0.1:{p}"))),
        ("x-local-ip", Same),
        ("x-local-port", Own(|p| p.to_string())),
        ("x-up", Same),
        ("x-up-prefixed", Same),
        ("x-up-kept", Same),
        ("x-cluster", Same),
        ("x-cluster-raw", Same),
        ("x-proto", Same),
        ("x-sni", Same),
        ("x-peer", Same),
        ("x-hostname", Same),
        ("x-start", Shape(|v| v.parse::<u64>().is_ok())),
        (
            "x-start-default",
            // 2024-01-02T03:04:05.678Z
            Shape(|v| v.len() == 24 && v.ends_with('Z') && v.as_bytes()[10] == b'T'),
        ),
        ("x-req", Same),
        ("x-req-alt", Same),
        ("x-path", Same),
        ("x-method", Same),
        ("x-authority", Same),
        ("x-pct", Same),
        ("x-in", Same),
        ("x-dup", Same),
        ("x-absent", Same),
        ("x-rc", Own(|p| format!("HTTP/1.1 {p}"))),
        ("x-vh", Same),
        ("x-wc", Same),
    ];
    let response_headers: Vec<(&str, Expect)> = vec![
        ("x-r-up", Same),
        ("x-r-up-ip", Same),
        ("x-r-cluster", Same),
        ("x-r-req", Same),
        ("x-r-path", Same),
        ("x-r-resp", Same),
        ("x-r-status", Same),
        ("x-r-remote-ip", Same),
        ("x-r-missing", Same),
        ("x-r-rc", Same),
        ("x-r-vh", Same),
        ("x-r-wc", Same),
        ("x-r-proto", Same),
    ];
    let requests: &[(&str, &[(&str, &str)])] = &[
        ("/fmt/a?q=1", &[("x-in", "inbound"), ("x-dup", "0")]),
        ("/fmt/b", &[]),
        ("/rw/deep/path", &[("x-in", "inbound")]),
        ("/split", &[]),
        ("/direct", &[("x-in", "inbound")]),
    ];
    let mut mismatches = Vec::new();
    let mut seen = 0;
    for (path, extra) in requests {
        let e = get(e_port, "shop.example.com", path, extra);
        let m = get(m_port, "shop.example.com", path, extra);
        assert_eq!(e.status, m.status, "{path}");
        let (ee, me) = (e.echo(), m.echo());
        for (name, expect) in &request_headers {
            let (ev, mv) = (upstream_header(&ee, name), upstream_header(&me, name));
            seen += usize::from(ev.is_some());
            // A header neither side added is the same absence: compared exactly.
            let expect = if ev.is_none() && mv.is_none() {
                &Same
            } else {
                expect
            };
            check(
                &format!("{path} upstream"),
                name,
                expect,
                (ev, e_port),
                (mv, m_port),
                &mut mismatches,
            );
        }
        for (name, expect) in &response_headers {
            let (ev, mv) = (
                e.header(name).map(str::to_string),
                m.header(name).map(str::to_string),
            );
            seen += usize::from(ev.is_some());
            let expect = if ev.is_none() && mv.is_none() {
                &Same
            } else {
                expect
            };
            check(
                &format!("{path} response"),
                name,
                expect,
                (ev, e_port),
                (mv, m_port),
                &mut mismatches,
            );
        }
        // The formatted start time is this request's.
        for echo in [&ee, &me] {
            if let Some(t) = upstream_header(echo, "x-start") {
                let t: u64 = t.parse().unwrap();
                assert!((before..=now()).contains(&t), "{path}: start time {t}");
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "meshgate differs from Envoy:\n{}",
        mismatches.join("\n")
    );
    // Most values are present: the comparison is not of absences.
    assert!(seen > 40, "only {seen} formatted values seen");
}

/// Envoy refuses a route configuration with an unknown command or a stray `%`; meshgate
/// refuses it too (a NACK), naming the field and using Envoy's words.
#[test]
fn invalid_formats_are_refused_like_envoy() {
    let a = EchoUpstream::start("a");
    let port = free_port();
    let mesh = InProcess::start(&resources(port, a.port(), a.port()));
    let cases = [
        (
            "%NOT_A_COMMAND%",
            "Not supported field in StreamInfo: NOT_A_COMMAND",
        ),
        (
            "50%",
            "Incorrect configuration: 50%. Couldn't find valid command at position 2",
        ),
        ("%REQ%", "REQ requires parameters"),
        (
            "%PROTOCOL(x)%",
            "PROTOCOL does not take any parameters or length",
        ),
    ];
    for (value, message) in cases {
        let mut bad = resources(port, a.port(), a.port());
        bad["routes"][0]["virtual_hosts"][0]["routes"][0]["request_headers_to_add"][1] =
            add("x-bad", value);
        let err = mesh.apply(&bad, "2").unwrap_err();
        assert!(
            err.contains("virtual_hosts[0].routes[0].request_headers_to_add[1].header.value")
                && err.contains(message),
            "{value}: {err}"
        );
        // Envoy's own validation refuses the same configuration with the same words.
        let envoy_err = envoy_validate(&bad);
        assert!(
            envoy_err.contains(message),
            "{value}: envoy said {envoy_err}"
        );
    }
    // The last good configuration keeps serving.
    assert_eq!(get(port, "x", "/fmt", &[]).status, 200);
}

/// Runs `envoy --mode validate` on a static bootstrap holding the resources' route
/// configuration; returns its output (empty when the configuration is valid).
fn envoy_validate(resources: &Value) -> String {
    let dir = TempDir::new();
    let rc = resources["routes"][0].clone();
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "l",
                    "route_config": rc,
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
            }],
            "clusters": resources["clusters"].clone(),
        }
    });
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let out = std::process::Command::new(peer_bin("envoy"))
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .args(["--log-level", "error", "--base-id"])
        .arg(free_port().to_string())
        .output()
        .expect("envoy runs");
    if out.status.success() {
        return String::new();
    }
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Istio passes VirtualService header values to Envoy unchanged: a formatter written in
/// `headers.request.set` / `headers.response.add` works on both proxies alike.
#[test]
fn istio_virtual_service_formats_reach_the_data_plane() {
    let a = EchoUpstream::start("a");
    let (e_port, m_port) = (free_port(), free_port());
    let yaml = |port: u16| {
        format!(
            r#"{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: ["shop.example.com"]
  gateways: [gw]
  http:
  - headers:
      request:
        set: {{x-client-ip: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", x-orig: "%REQ(x-in?user-agent)%"}}
      response:
        add: {{x-served-by: "%UPSTREAM_CLUSTER_RAW% %%"}}
    route: [{{destination: {{host: a.internal, port: {{number: {a}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {a}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"#,
            gateway = istio_http_gateway("default", port),
            a = a.port()
        )
    };
    let translated = |port: u16| {
        let dir = TempDir::new();
        std::fs::write(dir.path().join("config.yaml"), yaml(port)).unwrap();
        translate_istio(dir.path())
    };
    let dir = TempDir::new();
    let envoy = envoy_with(&resource_json(&translated(e_port)), &dir);
    envoy.assert_no_rejections();
    let _mesh = InProcess::start_set(translated(m_port));
    let mut answers = Vec::new();
    for port in [e_port, m_port] {
        let r = get(port, "shop.example.com", "/", &[("x-in", "from-client")]);
        assert_eq!(r.status, 200, "{port}");
        let echo = r.echo();
        answers.push((
            upstream_header(&echo, "x-client-ip"),
            upstream_header(&echo, "x-orig"),
            r.header("x-served-by").map(str::to_string),
        ));
    }
    assert_eq!(answers[0], answers[1], "envoy vs meshgate");
    assert_eq!(answers[1].0.as_deref(), Some("127.0.0.1"));
    assert_eq!(answers[1].1.as_deref(), Some("from-client"));
    let served_by = answers[1].2.as_deref().unwrap_or_default();
    assert!(
        served_by.ends_with(" %") && served_by.contains(&a.port().to_string()),
        "{served_by}"
    );
}
