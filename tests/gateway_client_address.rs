//! The client's real address at the public entrypoint: the PROXY protocol listener filter
//! (v1 and v2 headers written by hand, with TLVs), `xff_num_trusted_hops` on top of it,
//! PROXY headers sent upstream (`upstream_proxy_protocol`), and Istio's
//! `gatewayTopology` / DestinationRule `proxyProtocol` translated. meshgate and real Envoy
//! 1.40 serve the same resources and must agree on what the client, the upstream and
//! authorization see.
mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::gateway::*;
use support::*;

const PP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const UPSTREAM_PP: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

/// A TCP upstream that keeps every connection's bytes (what a PROXY header and the
/// request look like on the wire) and answers HTTP requests with 200 and plain TCP
/// connections with `pong`.
struct CaptureUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CaptureUpstream {
    fn start() -> CaptureUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let store = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let store = store.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let http = loop {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break None,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        let Some(start) = after_proxy_header(&buf) else {
                            continue;
                        };
                        if find(&buf[start..], b"\r\n\r\n").is_some() {
                            break Some(true);
                        }
                        if find(&buf[start..], b"ping").is_some() {
                            break Some(false);
                        }
                    };
                    store.lock().unwrap().push(buf);
                    let _ = match http {
                        Some(true) => s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        ),
                        Some(false) => s.write_all(b"pong"),
                        None => Ok(()),
                    };
                });
            }
        });
        CaptureUpstream { addr, seen }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Where the bytes after a PROXY header start (0 without one; `None`: the header is not
/// complete yet).
fn after_proxy_header(buf: &[u8]) -> Option<usize> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if buf.len() < SIG.len() && SIG.starts_with(buf) {
        return None;
    }
    if buf.starts_with(SIG) {
        if buf.len() < 16 {
            return None;
        }
        let end = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        return (buf.len() >= end).then_some(end);
    }
    if buf.starts_with(b"PROXY ") {
        return find(buf, b"\r\n").map(|i| i + 2);
    }
    Some(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection that starts with `preface`; the answer (`None`: the
/// proxy closed or reset the connection without one).
fn send(port: u16, preface: &[u8], request: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = preface.to_vec();
    out.extend_from_slice(request);
    let _ = s.write_all(&out);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    (!resp.is_empty()).then_some(resp)
}

fn http_get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n{extra}connection: close\r\n\r\n")
        .into_bytes()
}

fn status(resp: &[u8]) -> u16 {
    std::str::from_utf8(&resp[9..12]).unwrap().parse().unwrap()
}

fn header(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let want = format!("{name}:");
    text.split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with(&want))
        .map(|l| l[want.len()..].trim().to_string())
}

/// A PROXY v2 header for TCP over IPv4 with `tlvs`.
fn v2(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&src);
    body.extend_from_slice(&dst);
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&dport.to_be_bytes());
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

fn v1(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n").into_bytes()
}

fn static_cluster(name: &str, addr: SocketAddr, pp: Option<(&str, Value)>) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}}}}]}]},
    });
    if let Some((version, pass)) = pp {
        let mut config = json!({"version": version});
        if !pass.is_null() {
            config["pass_through_tlvs"] = pass;
        }
        c["transport_socket"] = json!({"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
            "@type": UPSTREAM_PP, "config": config,
            "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}},
        }});
    }
    c
}

struct Ports {
    http: u16,
    tcp: u16,
    allow: u16,
    hops: u16,
}

fn ports() -> Ports {
    Ports {
        http: free_port(),
        tcp: free_port(),
        allow: free_port(),
        hops: free_port(),
    }
}

fn hcm(hops: u32) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "in", "use_remote_address": true, "xff_num_trusted_hops": hops,
            "http_filters": [
                {"name": "envoy.filters.http.rbac", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": {"action": "DENY", "policies": {
                        "blocked-client": {"permissions": [{"any": true}], "principals": [{"remote_ip": {"address_prefix": "10.66.0.0", "prefix_len": 16}}]},
                        "blocked-peer": {"permissions": [{"header": {"name": "x-deny-direct", "present_match": true}}], "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}]},
                        "blocked-direct-as-client": {"permissions": [{"header": {"name": "x-deny-direct-client", "present_match": true}}], "principals": [{"direct_remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}}]}
                    }}}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
            ],
            "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "response_headers_to_add": [{"header": {"key": "x-seen", "value": "remote=%DOWNSTREAM_REMOTE_ADDRESS% direct=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% local=%DOWNSTREAM_LOCAL_ADDRESS%"}}],
                "routes": [
                    {"match": {"prefix": "/pp"}, "route": {"cluster": "up_pp"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
                ]}]}
        }
    })
}

fn pp_filter(config: Value) -> Value {
    let mut c = config;
    c["@type"] = json!(PP_TYPE);
    json!({"name": "envoy.filters.listener.proxy_protocol", "typed_config": c})
}

fn resources(p: &Ports, up: &CaptureUpstream) -> Value {
    let listener = |name: &str, port: u16, pp: Value, filters: Value| {
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
               "listener_filters": [pp], "filter_chains": [{"filters": filters}]})
    };
    json!({
        "listeners": [
            listener("http", p.http, pp_filter(json!({"pass_through_tlvs": {"match_type": "INCLUDE", "tlv_type": [0xE0]}})), json!([hcm(0)])),
            listener("allow", p.allow, pp_filter(json!({"allow_requests_without_proxy_protocol": true, "disallowed_versions": ["V1"]})), json!([hcm(0)])),
            listener("hops", p.hops, pp_filter(json!({})), json!([hcm(2)])),
            listener("tcp", p.tcp, pp_filter(json!({})), json!([{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": "tcp_pp"}}])),
        ],
        "clusters": [
            static_cluster("up", up.addr, None),
            static_cluster("up_pp", up.addr, Some(("V2", json!({"match_type": "INCLUDE_ALL"})))),
            static_cluster("tcp_pp", up.addr, Some(("V1", Value::Null))),
        ],
    })
}

/// What one case showed: the client's answer (status, `x-seen`) and what the upstream
/// received (the PROXY header it started with, `x-forwarded-for`,
/// `x-envoy-external-address`).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: Option<u16>,
    seen: Option<String>,
    upstream: Vec<BTreeMap<&'static str, String>>,
}

fn observe(port: u16, preface: &[u8], request: &[u8], up: &CaptureUpstream) -> Seen {
    observed(send(port, preface, request), up)
}

/// What a client's answer `resp` and the upstream showed.
fn observed(resp: Option<Vec<u8>>, up: &CaptureUpstream) -> Seen {
    let (status, seen) = match &resp {
        Some(r) if r.starts_with(b"HTTP/") => (
            Some(status(r)),
            header(r, "x-seen").map(|s| {
                // The direct peer's and a header-less client's port are the test's own.
                s.split(' ')
                    .map(|w| {
                        if w.starts_with("remote=127.0.0.1:") || w.starts_with("local=127.0.0.1:") {
                            w.split(':').next().unwrap().to_string()
                        } else {
                            w.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        ),
        Some(r) => (None, Some(String::from_utf8_lossy(r).into_owned())),
        None => (None, None),
    };
    // A denied or refused request reaches no upstream; give one that did time to land.
    if status == Some(200) || seen.as_deref() == Some("pong") {
        wait_until(
            "the upstream saw the request",
            Duration::from_secs(5),
            || !up.seen.lock().unwrap().is_empty(),
        );
    }
    let upstream = up
        .take()
        .into_iter()
        .map(|raw| {
            let mut m = BTreeMap::new();
            let head_start = if raw.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
                let len = u16::from_be_bytes([raw[14], raw[15]]) as usize;
                m.insert("proxy", format!("v2 {:02x?}", &raw[12..16 + len]));
                16 + len
            } else if raw.starts_with(b"PROXY ") {
                let end = find(&raw, b"\r\n").unwrap() + 2;
                m.insert("proxy", String::from_utf8_lossy(&raw[..end]).into_owned());
                end
            } else {
                0
            };
            let rest = &raw[head_start..];
            for h in ["x-forwarded-for", "x-envoy-external-address"] {
                if let Some(v) = header(rest, h) {
                    m.insert(h, v);
                }
            }
            if rest.starts_with(b"ping") {
                m.insert("tcp", "ping".into());
            }
            m
        })
        .collect();
    Seen {
        status,
        seen,
        upstream,
    }
}

#[test]
fn envoy_and_meshgate_agree_on_the_client_address() {
    let dir = TempDir::new();
    let (up_e, up_m) = (CaptureUpstream::start(), CaptureUpstream::start());
    let (pe, pm) = (ports(), ports());
    let envoy = envoy_with(&resources(&pe, &up_e), &dir);
    let mg = InProcess::start(&resources(&pm, &up_m));
    for port in [pm.http, pm.tcp, pm.allow, pm.hops] {
        wait_for_port(port, Duration::from_secs(10));
    }

    let tlv_e0: &[u8] = b"lb-says-hi";
    let tlv_e1: &[u8] = b"other";
    type Case = (&'static str, fn(&Ports) -> u16, Vec<u8>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "v1 header",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", ""),
        ),
        (
            "v2 header with TLVs",
            |p| p.http,
            v2(
                [10, 1, 2, 3],
                5555,
                [10, 9, 9, 9],
                443,
                &[(0xE0, tlv_e0), (0xE1, tlv_e1)],
            ),
            http_get("/", ""),
        ),
        (
            "v2 LOCAL keeps the peer",
            |p| p.http,
            v2_local(),
            http_get("/", ""),
        ),
        (
            "v1 UNKNOWN keeps the peer",
            |p| p.http,
            b"PROXY UNKNOWN\r\n".to_vec(),
            http_get("/", ""),
        ),
        (
            "client's XFF is not trusted without hops",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-forwarded-for: 192.0.2.7\r\n"),
        ),
        (
            "remote_ip sees the PROXY source",
            |p| p.http,
            v1("10.66.1.1", "10.9.9.9", 5555, 443),
            http_get("/", ""),
        ),
        (
            "direct_remote_ip sees the TCP peer",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-deny-direct: 1\r\n"),
        ),
        (
            "direct_remote_ip does not see the PROXY source",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-deny-direct-client: 1\r\n"),
        ),
        (
            "no header is refused",
            |p| p.http,
            Vec::new(),
            http_get("/", ""),
        ),
        (
            "malformed v1 is refused",
            |p| p.http,
            b"PROXY TCP4 10.1.2.3 nonsense\r\n".to_vec(),
            http_get("/", ""),
        ),
        (
            "upstream PROXY v2 passes TLVs on",
            |p| p.http,
            v2(
                [10, 1, 2, 3],
                5555,
                [10, 9, 9, 9],
                443,
                &[(0xE0, tlv_e0), (0xE1, tlv_e1)],
            ),
            http_get("/pp", ""),
        ),
        (
            "upstream PROXY v2 for a v1 client",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/pp", ""),
        ),
        (
            "allowed without a header",
            |p| p.allow,
            Vec::new(),
            http_get("/", ""),
        ),
        (
            "allowed: v2 still read",
            |p| p.allow,
            v2([10, 1, 2, 4], 6000, [10, 9, 9, 9], 443, &[]),
            http_get("/", ""),
        ),
        (
            "allowed: disallowed v1 passes as bytes",
            |p| p.allow,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", ""),
        ),
        (
            "two trusted hops: the client from XFF",
            |p| p.hops,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-forwarded-for: 203.0.113.9, 10.66.3.3\r\n"),
        ),
        (
            "two trusted hops: XFF too short",
            |p| p.hops,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-forwarded-for: 10.66.3.3\r\n"),
        ),
        (
            "two trusted hops: a denied client in XFF",
            |p| p.hops,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            http_get("/", "x-forwarded-for: 10.66.0.9, 10.1.1.1\r\n"),
        ),
        (
            "tcp_proxy with upstream PROXY v1",
            |p| p.tcp,
            v2([10, 1, 2, 3], 5555, [10, 9, 9, 9], 443, &[]),
            b"ping".to_vec(),
        ),
        (
            "tcp_proxy refuses a header-less connection",
            |p| p.tcp,
            Vec::new(),
            b"ping".to_vec(),
        ),
    ];
    let mut diffs = Vec::new();
    for (name, port, preface, request) in &cases {
        let e = observe(port(&pe), preface, request, &up_e);
        let m = observe(port(&pm), preface, request, &up_m);
        if e != m {
            diffs.push(format!("{name}:\n  envoy:    {e:?}\n  meshgate: {m:?}"));
        }
        // The cases must show what they are named for, not merely agree.
        match *name {
            "v1 header" => {
                assert_eq!(e.status, Some(200), "{name}: {e:?}");
                assert_eq!(
                    e.seen.as_deref(),
                    Some("remote=10.1.2.3:5555 direct=127.0.0.1 local=10.9.9.9:443")
                );
                assert_eq!(e.upstream[0]["x-forwarded-for"], "10.1.2.3");
            }
            "no header is refused" | "tcp_proxy refuses a header-less connection" => {
                assert_eq!((e.status, e.upstream.len()), (None, 0), "{name}: {e:?}")
            }
            "remote_ip sees the PROXY source" | "direct_remote_ip sees the TCP peer" => {
                assert_eq!(e.status, Some(403), "{name}: {e:?}")
            }
            "upstream PROXY v2 passes TLVs on" => {
                assert!(e.upstream[0]["proxy"].starts_with("v2"), "{name}: {e:?}")
            }
            "tcp_proxy with upstream PROXY v1" => assert_eq!(
                e.upstream[0]["proxy"], "PROXY TCP4 10.1.2.3 10.9.9.9 5555 443\r\n",
                "{name}: {e:?}"
            ),
            _ => {}
        }
    }
    assert!(
        diffs.is_empty(),
        "meshgate differs from Envoy:\n{}\nenvoy log: {}",
        diffs.join("\n"),
        envoy.log_path.display()
    );
    assert!(mg.stat("proxy_proto.versions.v1.found").unwrap_or(0) > 0);
    assert!(mg.stat("proxy_proto.not_found_disallowed").unwrap_or(0) > 0);
}

/// Istio YAML end to end: `meshgate translate --proxy-config` (the gateway pod's
/// `proxy.istio.io/config`) over a MeshConfig `defaultConfig.gatewayTopology`, and
/// `meshgate bootstrap envoy --proxy-config` carrying it as `PROXY_CONFIG`.
#[test]
fn translate_and_bootstrap_take_the_gateways_proxy_config() {
    let dir = TempDir::new();
    let d = dir.path();
    std::fs::write(
        d.join("gw.yaml"),
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
",
    )
    .unwrap();
    let mesh = d.join("mesh.yaml");
    std::fs::write(
        &mesh,
        "defaultConfig:\n  gatewayTopology: {numTrustedProxies: 3}\n",
    )
    .unwrap();
    let pc = d.join("proxy-config.yaml");
    std::fs::write(
        &pc,
        "gatewayTopology:\n  numTrustedProxies: 1\n  proxyProtocol: {}\n",
    )
    .unwrap();
    let config = d.join("gw.yaml");
    let translate = |extra: &[&std::path::Path]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"));
        cmd.args(["translate", "--format", "json", "--config"])
            .arg(&config)
            .arg("--mesh-config")
            .arg(&mesh);
        if let Some(p) = extra.first() {
            cmd.arg("--proxy-config").arg(p);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let l = v["configs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["dynamic_listeners"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|l| l["name"] == "0.0.0.0_8080")
            .map(|l| l["active_state"]["listener"].clone())
            .expect("listener");
        let hops =
            l["filter_chains"][0]["filters"][0]["typed_config"]["xff_num_trusted_hops"].clone();
        (l["listener_filters"].clone(), hops)
    };
    let (filters, hops) = translate(&[]);
    assert_eq!((filters, hops), (Value::Null, json!(3)));
    let (filters, hops) = translate(&[&pc]);
    assert_eq!(hops, json!(1));
    assert_eq!(filters[0]["name"], "envoy.filters.listener.proxy_protocol");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "envoy", "--format", "json", "--proxy-config"])
        .arg(&pc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Node metadata is a protobuf Struct: numbers are doubles.
    assert_eq!(
        b["node"]["metadata"]["PROXY_CONFIG"]["gatewayTopology"]["numTrustedProxies"].as_f64(),
        Some(1.0)
    );

    // A field the gateway would not act on is refused by name.
    std::fs::write(&pc, "gatewayTopology: {numTrustedProxys: 1}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["translate", "--format", "json", "--config"])
        .arg(&config)
        .arg("--proxy-config")
        .arg(&pc)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("numTrustedProxies"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// TLS behind a PROXY header
// ---------------------------------------------------------------------------------------

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

fn tls_context(leaf: &certs::Leaf) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": leaf.cert},
            "private_key": {"inline_string": leaf.key}}]}}})
}

struct TlsPorts {
    /// PROXY filter, then the TLS inspector: `www.example.com` terminated,
    /// `pass.example.com` passed through (tcp_proxy) to `term` with a PROXY v1 header.
    front: u16,
    /// PROXY filter, TLS terminated for every name.
    term: u16,
}

fn tls_resources(p: &TlsPorts, up: &CaptureUpstream, leaf: &certs::Leaf) -> Value {
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let tcp_proxy = json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "pass", "cluster": "to_term"}});
    json!({
        "listeners": [
            {"name": "front", "address": addr(p.front),
             "listener_filters": [pp_filter(json!({})), {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}],
             "filter_chains": [
                {"filter_chain_match": {"server_names": ["pass.example.com"]}, "filters": [tcp_proxy]},
                {"filter_chain_match": {"server_names": ["www.example.com"]}, "transport_socket": tls_context(leaf), "filters": [hcm(0)]}
             ]},
            {"name": "term", "address": addr(p.term),
             "listener_filters": [pp_filter(json!({}))],
             "filter_chains": [{"transport_socket": tls_context(leaf), "filters": [hcm(0)]}]},
        ],
        "clusters": [
            static_cluster("up", up.addr, None),
            static_cluster("up_pp", up.addr, None),
            static_cluster("to_term", SocketAddr::from(([127, 0, 0, 1], p.term)), Some(("V1", Value::Null))),
        ],
    })
}

/// One HTTPS request on a fresh connection that starts with `preface` (a PROXY header),
/// then a TLS handshake with `sni` trusting `ca`; the answer (`None`: the handshake
/// failed or the connection closed without one).
fn tls_send(port: u16, preface: &[u8], sni: &str, ca: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(preface).ok()?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(request).ok()?;
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    (!resp.is_empty()).then_some(resp)
}

#[test]
fn tls_behind_a_proxy_header_sees_the_client() {
    let dir = TempDir::new();
    let ca = certs::TestCa::new("edge-ca");
    let leaf = ca.leaf(&["www.example.com", "pass.example.com"]);
    let (up_e, up_m) = (CaptureUpstream::start(), CaptureUpstream::start());
    let tls_ports = || TlsPorts {
        front: free_port(),
        term: free_port(),
    };
    let (pe, pm) = (tls_ports(), tls_ports());
    let envoy = envoy_with(&tls_resources(&pe, &up_e, &leaf), &dir);
    let _mg = InProcess::start(&tls_resources(&pm, &up_m, &leaf));
    for port in [pm.front, pm.term] {
        wait_for_port(port, Duration::from_secs(10));
    }
    let client = v2([10, 1, 2, 3], 5555, [10, 9, 9, 9], 443, &[]);
    type Case = (&'static str, fn(&TlsPorts) -> u16, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "v2 header, TLS terminated",
            |p| p.front,
            client.clone(),
            "www.example.com",
        ),
        (
            "v1 header, TLS terminated",
            |p| p.front,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            "www.example.com",
        ),
        (
            "TLS without a header is refused",
            |p| p.front,
            Vec::new(),
            "www.example.com",
        ),
        (
            "passed through by SNI with an upstream PROXY header, terminated behind",
            |p| p.front,
            client.clone(),
            "pass.example.com",
        ),
    ];
    let mut diffs = Vec::new();
    for (name, port, preface, sni) in &cases {
        let request = http_get("/", "");
        let e = observed(tls_send(port(&pe), preface, sni, &ca.pem, &request), &up_e);
        let m = observed(tls_send(port(&pm), preface, sni, &ca.pem, &request), &up_m);
        if e != m {
            diffs.push(format!("{name}:\n  envoy:    {e:?}\n  meshgate: {m:?}"));
        }
        if name.starts_with("TLS without") {
            assert_eq!((e.status, e.upstream.len()), (None, 0), "{name}: {e:?}");
            continue;
        }
        // Through the pass-through hop the second listener's TCP peer is the gateway
        // itself; the client is still the first header's.
        assert_eq!(e.status, Some(200), "{name}: {e:?}");
        assert_eq!(
            e.seen.as_deref(),
            Some("remote=10.1.2.3:5555 direct=127.0.0.1 local=10.9.9.9:443"),
            "{name}"
        );
        assert_eq!(e.upstream.len(), 1, "{name}: {e:?}");
        assert_eq!(e.upstream[0]["x-forwarded-for"], "10.1.2.3", "{name}");
        assert_eq!(
            e.upstream[0]["x-envoy-external-address"], "10.1.2.3",
            "{name}"
        );
    }
    assert!(
        diffs.is_empty(),
        "meshgate differs from Envoy:\n{}\nenvoy log: {}",
        diffs.join("\n"),
        envoy.log_path.display()
    );
}

// ---------------------------------------------------------------------------------------
// The access log
// ---------------------------------------------------------------------------------------

/// The fields both access logs carry, by request path.
const LOG_FIELDS: &[(&str, &str)] = &[
    ("path", "%REQ(:PATH)%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    (
        "downstream_direct_remote_address",
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// The entries of a JSON-lines log with the fields of [`LOG_FIELDS`], by path; a
/// loopback address's port (the test's own) is left out.
fn log_entries(text: &str) -> BTreeMap<String, BTreeMap<String, Value>> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let path = v["path"].as_str()?.to_string();
            let fields = LOG_FIELDS
                .iter()
                .skip(1)
                .map(|(k, _)| {
                    let mut f = v[*k].clone();
                    if let Some(s) = f.as_str()
                        && s.starts_with("127.0.0.1:")
                    {
                        f = json!("127.0.0.1");
                    }
                    (k.to_string(), f)
                })
                .collect();
            Some((path, fields))
        })
        .collect()
}

#[test]
fn the_access_log_shows_the_client_and_the_load_balancer() {
    let dir = TempDir::new();
    let (up_e, up_m) = (CaptureUpstream::start(), CaptureUpstream::start());
    let (pe, pm) = (ports(), ports());
    let envoy_log = dir.path().join("envoy-access.log");
    let mut for_envoy = resources(&pe, &up_e);
    let format: serde_json::Map<String, Value> = LOG_FIELDS
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    for l in for_envoy["listeners"].as_array_mut().unwrap() {
        let f = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
        if f["@type"]
            .as_str()
            .unwrap()
            .ends_with("HttpConnectionManager")
        {
            f["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": envoy_log.display().to_string(),
                "log_format": {"json_format": format}}}]);
        }
    }
    let envoy = envoy_with(&for_envoy, &dir);
    let mg_dir = TempDir::new();
    let json_file = mg_dir.path().join("resources.json");
    std::fs::write(&json_file, resources(&pm, &up_m).to_string()).unwrap();
    let mg = GatewayProcess::start(&json_file, mg_dir.path(), &["--access-log", "json"]);
    for port in [pm.http, pm.hops] {
        wait_for_port(port, Duration::from_secs(10));
    }

    type Case = (&'static str, fn(&Ports) -> u16, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "/proxy",
            |p| p.http,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            "",
        ),
        ("/local", |p| p.http, v2_local(), ""),
        (
            "/hops",
            |p| p.hops,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            "x-forwarded-for: 203.0.113.9, 10.66.3.3\r\n",
        ),
        (
            "/hops-short",
            |p| p.hops,
            v1("10.1.2.3", "10.9.9.9", 5555, 443),
            "x-forwarded-for: 10.66.3.3\r\n",
        ),
    ];
    for (path, port, preface, extra) in &cases {
        for (p, up) in [(&pe, &up_e), (&pm, &up_m)] {
            let seen = observe(port(p), preface, &http_get(path, extra), up);
            assert_eq!(seen.status, Some(200), "{path}: {seen:?}");
        }
    }
    let complete = |text: &str| {
        let entries = log_entries(text);
        cases.iter().all(|(p, ..)| entries.contains_key(*p))
    };
    wait_until(
        "both access logs have every request",
        Duration::from_secs(15),
        || {
            complete(&std::fs::read_to_string(&envoy_log).unwrap_or_default())
                && complete(&mg.stdout())
        },
    );
    let e = log_entries(&std::fs::read_to_string(&envoy_log).unwrap());
    let m = log_entries(&mg.stdout());
    for (path, ..) in &cases {
        assert_eq!(
            m[*path],
            e[*path],
            "{path}: meshgate's log entry differs from Envoy's (envoy log: {})",
            envoy.log_path.display()
        );
    }
    assert_eq!(e["/proxy"]["downstream_remote_address"], "10.1.2.3:5555");
    assert_eq!(e["/proxy"]["downstream_direct_remote_address"], "127.0.0.1");
    assert_eq!(e["/proxy"]["downstream_local_address"], "10.9.9.9:443");
    assert_eq!(e["/local"]["downstream_remote_address"], "127.0.0.1");
    assert_eq!(e["/hops"]["downstream_remote_address"], "203.0.113.9:0");
    assert_eq!(
        e["/hops-short"]["downstream_remote_address"],
        "10.1.2.3:5555"
    );
}

// ---------------------------------------------------------------------------------------
// Istio configuration: RateLimitPolicy by client CIDR behind a PROXY load balancer
// ---------------------------------------------------------------------------------------

const LIMITED: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: capture, namespace: default}
spec:
  hosts: [capture.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: UP_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: GW_PORT, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: capture.internal}}]
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: lb-range, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: gw}]
  local:
    rules:
    - name: range
      clientSelectors: [{sourceCIDR: {value: 10.66.0.0/16}}]
      limit: {requests: 1, unit: Minute, burst: 2}
"#;

/// The mesh of a gateway behind a PROXY protocol load balancer that also trusts one
/// `x-forwarded-for` hop.
const EDGE_MESH: &str =
    "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 1\n    proxyProtocol: {}\n";

/// One side of an Istio configuration served twice: `meshgate gateway --config` and
/// real Envoy on `meshgate translate`'s output, both with `--mesh-config`.
struct IstioSide {
    port: u16,
    up: CaptureUpstream,
}

fn istio_config(dir: &std::path::Path, side: &IstioSide) -> std::path::PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.yaml"),
        LIMITED
            .replace("GW_PORT", &side.port.to_string())
            .replace("UP_PORT", &side.up.addr.port().to_string()),
    )
    .unwrap();
    std::fs::write(dir.join("mesh.yaml"), EDGE_MESH).unwrap();
    config
}

#[test]
fn rate_limits_by_client_cidr_count_the_proxy_source() {
    let labels = "istio=ingressgateway";
    let (se, sm) = (
        IstioSide {
            port: free_port(),
            up: CaptureUpstream::start(),
        },
        IstioSide {
            port: free_port(),
            up: CaptureUpstream::start(),
        },
    );
    let (de, dm) = (TempDir::new(), TempDir::new());
    let config = istio_config(de.path(), &se);
    let admin = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("translate")
        .arg("--config")
        .arg(&config)
        .arg("--mesh-config")
        .arg(de.path().join("mesh.yaml"))
        .arg("--out")
        .arg(de.path().join("envoy"))
        .args(["--admin-port", &admin.to_string(), "--labels", labels])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start(&de.path().join("envoy/envoy.yaml"), admin, de.path());
    let config = istio_config(dm.path(), &sm);
    let mesh = dm.path().join("mesh.yaml");
    let _mg = GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--mesh-config",
            mesh.to_str().unwrap(),
            "--labels",
            labels,
            "--access-log",
            "off",
        ],
        dm.path(),
    );
    for side in [&se, &sm] {
        wait_for_port(side.port, Duration::from_secs(20));
    }
    envoy.assert_no_rejections();

    let limited = v1("10.66.1.1", "10.9.9.9", 5555, 443);
    let other = v2([10, 1, 2, 3], 5555, [10, 9, 9, 9], 443, &[]);
    // (who, PROXY header, extra request headers)
    let burst: Vec<(&str, &[u8], &str)> = vec![
        ("10.66.1.1", &limited, ""),
        ("10.1.2.3", &other, ""),
        ("10.66.1.1", &limited, ""),
        ("10.1.2.3", &other, ""),
        ("10.66.1.1", &limited, ""),
        ("10.1.2.3", &other, ""),
        ("10.1.2.3", &other, ""),
        // One trusted hop: the client is the load balancer's x-forwarded-for entry, in
        // the limited range.
        (
            "10.1.2.3 for 10.66.7.7",
            &other,
            "x-forwarded-for: 10.66.7.7\r\n",
        ),
        // The range's shared bucket is not the PROXY source's.
        (
            "10.66.1.1 for 10.1.2.9",
            &limited,
            "x-forwarded-for: 10.1.2.9\r\n",
        ),
    ];
    let answers = |side: &IstioSide| -> Vec<String> {
        burst
            .iter()
            .map(|(who, preface, extra)| {
                let resp = send(side.port, preface, &http_get("/", extra));
                side.up.take();
                let resp = resp.unwrap_or_else(|| panic!("{who}: no answer"));
                format!(
                    "{} remaining={:?} ({who})",
                    status(&resp),
                    header(&resp, "x-ratelimit-remaining")
                )
            })
            .collect()
    };
    let (e, m) = (answers(&se), answers(&sm));
    assert_eq!(m, e, "meshgate (left) and Envoy (right) admit differently");
    let statuses: Vec<&str> = e.iter().map(|a| a.split(' ').next().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "200", "200", "200", "200", "429", "200", "200", "429", "200"
        ],
        "{e:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Through the control plane: PROXY_CONFIG node metadata
// ---------------------------------------------------------------------------------------

/// The listener bound to `port` in a config dump (Envoy's or meshgate's admin
/// `/config_dump`): its listener filters' names and the first connection manager's
/// `xff_num_trusted_hops`.
fn listener_in_dump(dump: &Value, port: u16) -> Option<(Vec<String>, Value)> {
    fn walk(v: &Value, port: u16) -> Option<&Value> {
        match v {
            Value::Object(o) => {
                if o.contains_key("filter_chains")
                    && v["address"]["socket_address"]["port_value"].as_u64() == Some(port as u64)
                {
                    return Some(v);
                }
                o.values().find_map(|c| walk(c, port))
            }
            Value::Array(a) => a.iter().find_map(|c| walk(c, port)),
            _ => None,
        }
    }
    let l = walk(dump, port)?;
    let filters = l["listener_filters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let hops = l["filter_chains"][0]["filters"][0]["typed_config"]["xff_num_trusted_hops"].clone();
    Some((filters, hops))
}

#[test]
fn the_control_plane_gives_a_gateways_proxy_config_to_envoy_and_meshgate() {
    use support::xds_mesh::*;
    let work = TempDir::new();
    let up = CaptureUpstream::start();
    let (pe, pm, pp) = (free_port(), free_port(), free_port());
    let gateways = [("pp-envoy", pe), ("pp-meshgate", pm), ("plain", pp)];
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let mut yaml = service_entry_yaml("capture", up.addr.port());
    for (name, port) in &gateways {
        yaml.push_str("---\n");
        yaml.push_str(&gateway_yaml(name, *port));
    }
    yaml.push_str("---\n");
    yaml.push_str(&route_yaml(
        "*",
        &gateways.map(|g| g.0),
        "capture",
        up.addr.port(),
    ));
    std::fs::write(config.join("config.yaml"), yaml).unwrap();
    let pc = work.path().join("edge-proxy-config.yaml");
    std::fs::write(
        &pc,
        "gatewayTopology:\n  numTrustedProxies: 1\n  proxyProtocol: {}\n",
    )
    .unwrap();
    let cp = ControlPlaneProcess::start(&config, work.path());

    let envoy_dir = TempDir::new();
    let admin = free_port();
    let boot = envoy_dir.path().join("bootstrap.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args([
            "bootstrap",
            "envoy",
            "--xds",
            &cp.xds_addr(),
            "--node-id",
            "pp-envoy",
        ])
        .args([
            "--labels",
            "proxy=pp-envoy",
            "--namespace",
            "edge",
            "--delta",
        ])
        .args(["--admin-port", &admin.to_string(), "--proxy-config"])
        .arg(&pc)
        .arg("--out")
        .arg(&boot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start(&boot, admin, envoy_dir.path());
    let mut mg = XdsGateway::spawn_with(
        "pp-meshgate",
        &cp.xds_addr(),
        "proxy=pp-meshgate",
        "edge",
        true,
        work.path(),
        &["--proxy-config", pc.to_str().unwrap()],
    );
    mg.wait_ready(Duration::from_secs(20));
    let plain = XdsGateway::start(
        "plain",
        &cp.xds_addr(),
        "proxy=plain",
        "edge",
        true,
        work.path(),
    );
    for (_, port) in &gateways {
        wait_for_port(*port, Duration::from_secs(20));
    }

    // What each was given.
    let dump = |body: String| -> Value { serde_json::from_str(&body).expect("config dump") };
    let (_, e_dump) = envoy.admin_get("/config_dump").unwrap();
    let pp_filter = vec!["envoy.filters.listener.proxy_protocol".to_string()];
    assert_eq!(
        listener_in_dump(&dump(e_dump), pe),
        Some((pp_filter.clone(), json!(1))),
        "envoy"
    );
    let (_, m_dump) = mg.admin("/config_dump").unwrap();
    assert_eq!(
        listener_in_dump(&dump(m_dump), pm),
        Some((pp_filter, json!(1))),
        "meshgate"
    );
    let (_, p_dump) = plain.admin("/config_dump").unwrap();
    let (filters, hops) = listener_in_dump(&dump(p_dump), pp).expect("plain's listener");
    assert!(filters.is_empty(), "{filters:?}");
    assert!(hops.is_null() || hops == json!(0), "{hops}");

    // What each does with it.
    let proxied = v1("10.1.2.3", "10.9.9.9", 5555, 443);
    let cases: Vec<(&str, &[u8], Vec<u8>)> = vec![
        ("PROXY source", &proxied, http_get("/", "")),
        (
            "one trusted hop",
            &proxied,
            http_get("/", "x-forwarded-for: 203.0.113.9\r\n"),
        ),
        ("no header", &[], http_get("/", "")),
    ];
    for (name, preface, request) in &cases {
        let e = observe(pe, preface, request, &up);
        let m = observe(pm, preface, request, &up);
        assert_eq!(m, e, "{name}: meshgate (left) differs from Envoy (right)");
        match *name {
            "PROXY source" => {
                assert_eq!(e.status, Some(200), "{e:?}");
                assert_eq!(e.upstream[0]["x-forwarded-for"], "10.1.2.3");
            }
            "one trusted hop" => {
                assert_eq!(e.status, Some(200), "{e:?}");
                assert_eq!(e.upstream[0]["x-forwarded-for"], "203.0.113.9,10.1.2.3");
                assert_eq!(e.upstream[0]["x-envoy-external-address"], "203.0.113.9");
            }
            _ => assert_eq!((e.status, e.upstream.len()), (None, 0), "{e:?}"),
        }
    }
    // The gateway without a ProxyConfig serves a client without a header, and takes a
    // header for a (bad) request.
    let served = observe(pp, &[], &http_get("/", ""), &up);
    assert_eq!(served.status, Some(200), "{served:?}");
    let refused = observe(pp, &proxied, &http_get("/", ""), &up);
    assert_ne!(refused.status, Some(200), "{refused:?}");
    assert!(refused.upstream.is_empty(), "{refused:?}");
}
