//! `tcp_proxy` chains served by `meshgate gateway --config DIR`, compared with a real
//! Envoy 1.40 on what `meshgate translate` makes of the same Istio YAML: PASSTHROUGH by
//! SNI (the client's TLS reaches the backend untouched) with weights, an SNI no route
//! claims, TLS terminated to TCP, plain TCP, and AUTO_PASSTHROUGH by Istio's SNI names
//! with the mesh ALPN required.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::collections::BTreeMap;
use support::gateway::GatewayProcess;
use support::*;
use translating::*;

struct Ports {
    pass: u16,
    term: u16,
    tcp: u16,
    auto: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            pass: free_port(),
            term: free_port(),
            tcp: free_port(),
            auto: free_port(),
        }
    }
}

/// What a client saw: the upstream that answered and the path it saw, or `refused`.
fn outcome(resp: &str) -> String {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => format!("{} {}", v["upstream"].as_str().unwrap_or("?"), v["path"]),
        Err(_) => "refused".into(),
    }
}

async fn over_tls(port: u16, sni: &str, alpn: &[&str], ca: Option<&str>, path: &str) -> String {
    match tls_connect(port, sni, alpn, ca).await {
        Ok(mut s) => outcome(&http1_over(&mut s, sni, path).await.unwrap_or_default()),
        Err(_) => "refused".into(),
    }
}

async fn observe(ports: &Ports, ca: &TestCa) -> BTreeMap<&'static str, String> {
    let mut o = BTreeMap::new();
    let ca = Some(ca.pem.as_str());
    o.insert(
        "passthrough one",
        over_tls(ports.pass, "one.pass.example.com", &[], ca, "/one").await,
    );
    o.insert(
        "passthrough unclaimed sni",
        over_tls(ports.pass, "nope.pass.example.com", &[], ca, "/").await,
    );
    o.insert(
        "passthrough outside the hosts",
        over_tls(ports.pass, "one.example.org", &[], None, "/").await,
    );
    // Plain text on a passthrough port: no chain (Envoy resets).
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", ports.pass))
        .await
        .unwrap();
    o.insert(
        "passthrough plain text",
        outcome(&http1_over(&mut plain, "x", "/").await.unwrap_or_default()),
    );
    // 70/30 per connection, within five standard deviations (n = 400: 280 ± 46), which
    // an even split (200) or a single backend (400) falls outside of.
    let n = 400;
    let mut first = 0;
    for _ in 0..n {
        let seen = over_tls(ports.pass, "split.pass.example.com", &[], ca, "/s").await;
        match seen.as_str() {
            "echo \"/s\"" => first += 1,
            "second \"/s\"" => {}
            other => panic!("split: {other}"),
        }
    }
    assert_binomial(
        "passthrough to the first at weight 70",
        first,
        n,
        0.7,
        &[0.5, 1.0],
    );
    o.insert("passthrough weight 70", "within bounds".to_string());
    o.insert(
        "terminated to tcp",
        over_tls(ports.term, "term.example.com", &[], ca, "/term").await,
    );
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.tcp))
        .await
        .unwrap();
    o.insert(
        "plain tcp",
        outcome(&http1_over(&mut tcp, "anything", "/tcp").await.unwrap()),
    );
    let sni = "outbound_.8443_._.app.ns.svc.cluster.local";
    o.insert(
        "auto passthrough",
        over_tls(ports.auto, sni, &["istio"], None, "/auto").await,
    );
    o.insert(
        "auto passthrough subset",
        over_tls(
            ports.auto,
            "outbound_.8443_.v1_.app.ns.svc.cluster.local",
            &["istio-http/1.1"],
            None,
            "/v1",
        )
        .await,
    );
    o.insert(
        "auto passthrough non-mesh alpn",
        over_tls(ports.auto, sni, &["h2"], None, "/").await,
    );
    o.insert(
        "auto passthrough unknown service",
        over_tls(
            ports.auto,
            "outbound_.8443_._.nope.ns.svc.cluster.local",
            &["istio"],
            None,
            "/",
        )
        .await,
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tcp_and_auto_passthrough_match_envoy() {
    let ca = TestCa::new("passthrough CA");
    let echo = EchoUpstream::start("echo");
    let second = EchoUpstream::start("second");
    let pass_1 = TlsFront::start(
        &ca.issue(&["one.pass.example.com", "split.pass.example.com"]),
        None,
        echo.port(),
    );
    let pass_2 = TlsFront::start(&ca.issue(&["split.pass.example.com"]), None, second.port());
    let app = TlsFront::start(&ca.issue(&["app.ns.svc.cluster.local"]), None, echo.port());
    let term = ca.issue(&["term.example.com"]);
    let render_for = |p: &Ports| {
        render(
            &std::fs::read_to_string(
                repo_root().join("tests/testdata/gateway_tls/passthrough.yaml"),
            )
            .unwrap(),
            &[
                ("PASS_PORT", p.pass.to_string()),
                ("TERM_PORT", p.term.to_string()),
                ("TCP_PORT", p.tcp.to_string()),
                ("AUTO_PORT", p.auto.to_string()),
                ("ECHO", echo.port().to_string()),
                ("PASS_1", pass_1.port.to_string()),
                ("PASS_2", pass_2.port.to_string()),
                ("APP_TLS", app.port.to_string()),
                ("T_CERT_PEM", yaml_block(&term.cert, 4)),
                ("T_KEY_PEM", yaml_block(&term.key, 4)),
            ],
        )
    };

    let mg_ports = Ports::new();
    let dir = TempDir::new();
    std::fs::write(dir.path().join("config.yaml"), render_for(&mg_ports)).unwrap();
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            dir.path().to_str().unwrap(),
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    for p in [mg_ports.pass, mg_ports.term, mg_ports.tcp, mg_ports.auto] {
        wait_for_port(p, std::time::Duration::from_secs(10));
    }
    let meshgate = observe(&mg_ports, &ca).await;
    assert!(
        pass_1.snis().contains(&Some("one.pass.example.com".into())),
        "the backend terminated the client's TLS"
    );
    assert!(!pass_2.snis().is_empty());

    let ev_ports = Ports::new();
    let envoy = TranslatedEnvoy::start(&render_for(&ev_ports), "istio=ingressgateway", 4);
    let envoy_seen = observe(&ev_ports, &ca).await;
    envoy.envoy.assert_no_rejections();

    let expected: &[(&str, &str)] = &[
        ("passthrough one", "echo \"/one\""),
        ("passthrough unclaimed sni", "refused"),
        ("passthrough outside the hosts", "refused"),
        ("passthrough plain text", "refused"),
        ("passthrough weight 70", "within bounds"),
        ("terminated to tcp", "echo \"/term\""),
        ("plain tcp", "echo \"/tcp\""),
        ("auto passthrough", "echo \"/auto\""),
        ("auto passthrough subset", "echo \"/v1\""),
        ("auto passthrough non-mesh alpn", "refused"),
        ("auto passthrough unknown service", "refused"),
    ];
    for (case, want) in expected {
        assert_eq!(meshgate[case], *want, "meshgate: {case}\n{}", gw.stderr());
    }
    assert_eq!(
        meshgate, envoy_seen,
        "meshgate (left) and Envoy (right) differ"
    );

    let (_, stats) = gw.admin("/stats");
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{stats}"))
    };
    assert!(stat("tcp.downstream_cx_total") >= 405, "{stats}");
    assert!(stat("tcp.downstream_cx_rx_bytes_total") > 0, "{stats}");
    assert!(stat("listener.no_filter_chain_match") >= 4, "{stats}");
}
