//! Header values with Envoy's `%COMMAND%` formatters, side by side with Envoy 1.40: the
//! same route configuration adds request headers (seen by the upstream) and response
//! headers (seen by the client) built from the connection, the request and the upstream.
mod support;

use serde_json::{Value, json};
use support::gateway::*;
use support::*;

fn config(listen: u16, up: u16) -> Value {
    let set = |k: &str, v: &str| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
    json!({
        "listeners": [hcm_listener("l", listen, "r", json!({"use_remote_address": true}), vec![])],
        "routes": [{
            "name": "r",
            "request_headers_to_add": [set("x-rc-protocol", "%PROTOCOL%")],
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{
                    "match": {"prefix": "/"},
                    "route": {"cluster": "up"},
                    "request_headers_to_add": [
                        set("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%"),
                        set("x-client-ip", "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                        set("x-local", "%DOWNSTREAM_LOCAL_ADDRESS%"),
                        set("x-local-port", "%DOWNSTREAM_LOCAL_PORT%"),
                        set("x-copy", "%REQ(x-in?x-other)%"),
                        set("x-copy-short", "%REQ(x-in):3%"),
                        set("x-missing", "%REQ(x-absent)%"),
                        set("x-percent", "100%% %REQUESTED_SERVER_NAME%"),
                    ],
                    "response_headers_to_add": [
                        set("x-upstream-addr", "%UPSTREAM_REMOTE_ADDRESS%"),
                        set("x-resp-copy", "%RESP(x-upstream)%"),
                        set("x-proto", "%PROTOCOL%"),
                    ],
                }],
            }],
        }],
        "clusters": [static_cluster("up", &[up], json!({}))],
    })
}

#[test]
fn formatted_header_values_like_envoy() {
    let up = EchoUpstream::start("up");
    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = envoy_with(&config(envoy_port, up.port()), &dir);
    envoy.assert_no_rejections();
    let mesh_port = free_port();
    let _mesh = InProcess::start(&config(mesh_port, up.port()));
    let mut seen = Vec::new();
    for (who, port) in [("envoy", envoy_port), ("meshgate", mesh_port)] {
        let r = get(port, "x", "/", &[("x-in", "hello")]);
        assert_eq!(r.status, 200, "{who}");
        let echo = r.echo();
        let up_header = |n: &str| echo["headers"][n][0].as_str().map(str::to_string);
        let client = up_header("x-client").unwrap_or_default();
        // The client's port differs between the two connections: compare the shape.
        let (ip, cport) = client.rsplit_once(':').expect("ip:port");
        assert_eq!(ip, "127.0.0.1", "{who}: {client}");
        assert!(cport.parse::<u16>().is_ok(), "{who}: {client}");
        let upstream_addr = r.header("x-upstream-addr").unwrap_or("").to_string();
        assert_eq!(upstream_addr, format!("127.0.0.1:{}", up.port()), "{who}");
        let local = up_header("x-local").unwrap_or_default();
        assert_eq!(local, format!("127.0.0.1:{port}"), "{who}");
        seen.push((
            who,
            [
                up_header("x-client-ip"),
                up_header("x-local-port").map(|p| (p == port.to_string()).to_string()),
                up_header("x-rc-protocol"),
                up_header("x-copy"),
                up_header("x-copy-short"),
                up_header("x-missing"),
                up_header("x-percent"),
                r.header("x-resp-copy").map(str::to_string),
                r.header("x-proto").map(str::to_string),
            ],
        ));
    }
    assert_eq!(seen[0].1, seen[1].1, "envoy vs meshgate: {seen:?}");
    assert_eq!(seen[1].1[0].as_deref(), Some("ip=127.0.0.1"));
    assert_eq!(seen[1].1[3].as_deref(), Some("hello"));
}

#[test]
fn unknown_commands_are_refused() {
    let up = EchoUpstream::start("up");
    let mut c = config(free_port(), up.port());
    c["routes"][0]["request_headers_to_add"][0]["header"]["value"] = json!("%NOT_A_COMMAND%");
    let gw = InProcess::start(&config(free_port(), up.port()));
    let err = gw.apply(&c, "2").unwrap_err();
    assert!(
        err.contains("request_headers_to_add[0]") && err.contains("NOT_A_COMMAND"),
        "{err}"
    );
}
