//! `meshgate translate` judged by a real Envoy 1.40: each test renders an Istio
//! configuration with its own ports, translates it with the meshgate binary, runs Envoy
//! on the files and checks what real HTTP requests get. Envoy must accept every
//! resource: no rejection in its stats or log.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::time::Duration;
use support::*;
use translating::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_header_query_method_authority_routing() {
    let a = EchoUpstream::start("a");
    let b = EchoUpstream::start("b");
    let port = free_port();
    let yaml = render(
        &testdata("routing.yaml"),
        &[
            ("GW_PORT", port.to_string()),
            ("REDIRECT_PORT", free_port().to_string()),
            ("ECHO_A", a.port().to_string()),
            ("ECHO_B", b.port().to_string()),
        ],
    );
    let gw = TranslatedEnvoy::start(&yaml, "istio=ingressgateway", 2);
    let c = http_client();

    // Hosts.
    assert_eq!(get(&c, port, "a.example.com", "/x").await.upstream(), "a");
    assert_eq!(get(&c, port, "b.example.com", "/x").await.upstream(), "b");
    assert_eq!(get(&c, port, "B.Example.COM", "/x").await.upstream(), "b");
    let unknown = get(&c, port, "nope.example.com", "/").await;
    assert_eq!(unknown.status, 404, "no virtual host: 404 (NR)");
    assert!(unknown.body.is_empty());

    // Paths and conditions, each route naming itself in `x-route`.
    let route = |r: &Reply| r.header("x-route").unwrap_or_default();
    let h = "match.example.com";
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("GET", "/exact", vec![], Some("exact")),
        ("GET", "/exact?with=query", vec![], Some("exact")),
        ("GET", "/exact/more", vec![], None),
        ("GET", "/re/123", vec![], Some("regex")),
        ("GET", "/re/12a", vec![], None),
        ("GET", "/case/x", vec![], Some("ignore-case")),
        ("GET", "/CASE", vec![], Some("ignore-case")),
        ("GET", "/h", vec![("x-user", "alice")], Some("header-exact")),
        ("GET", "/h", vec![("x-user", "Alice")], None),
        ("GET", "/h", vec![("x-user", "bob")], Some("header-regex")),
        ("GET", "/h", vec![("x-user", "bob1")], None),
        ("GET", "/h", vec![("x-any", "")], Some("header-present")),
        ("GET", "/without", vec![], Some("without")),
        ("GET", "/without", vec![("x-block", "0")], Some("without")),
        ("GET", "/without", vec![("x-block", "1")], None),
        ("GET", "/q?v=2", vec![], Some("query")),
        ("GET", "/q?v=3", vec![], None),
        ("GET", "/q?v=2&v=3", vec![], Some("query")),
        ("POST", "/m", vec![], Some("method")),
        ("GET", "/m", vec![], None),
        ("GET", "/scheme", vec![], None),
        ("GET", "/p", vec![], Some("prefix")),
        ("GET", "/pancake", vec![], Some("prefix")),
        ("GET", "/zzz", vec![], None),
    ];
    for (method, path, headers, want) in cases {
        let r = send(&c, method, port, h, path, &headers).await;
        match want {
            Some(name) => {
                assert_eq!(r.status, 200, "{method} {path} {headers:?}: {r:?}");
                assert_eq!(route(&r), name, "{method} {path} {headers:?}");
            }
            None => assert_eq!(r.status, 404, "{method} {path} {headers:?}: {r:?}"),
        }
    }
    // A delegate VirtualService's routes, within the root's match and with its headers.
    let r = get(&c, port, "delegate.example.com", "/team/b1").await;
    assert_eq!(
        (r.upstream(), route(&r)),
        ("b".to_string(), "root-headers".to_string())
    );
    assert_eq!(
        get(&c, port, "delegate.example.com", "/team/x")
            .await
            .upstream(),
        "a"
    );
    assert_eq!(
        get(&c, port, "delegate.example.com", "/other").await.status,
        404
    );
    // Authority matches inside a wildcard virtual host.
    assert_eq!(
        route(&get(&c, port, "one.auth.example.com", "/").await),
        "authority-one"
    );
    assert_eq!(
        route(&get(&c, port, "two.auth.example.com", "/").await),
        "authority-other"
    );
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_rewrites_direct_responses_and_headers() {
    let a = EchoUpstream::start("a");
    let b = EchoUpstream::start("b");
    let port = free_port();
    let redirect_port = free_port();
    let yaml = render(
        &testdata("routing.yaml"),
        &[
            ("GW_PORT", port.to_string()),
            ("REDIRECT_PORT", redirect_port.to_string()),
            ("ECHO_A", a.port().to_string()),
            ("ECHO_B", b.port().to_string()),
        ],
    );
    let gw = TranslatedEnvoy::start(&yaml, "istio=ingressgateway", 2);
    let c = http_client();
    let h = "actions.example.com";

    let r = get(&c, port, h, "/redirect?x=1").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://new.example.com/moved?x=1")
    );
    let r = get(&c, port, h, "/redirect-scheme").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://actions.example.com:8443/redirect-scheme")
    );
    let r = get(&c, port, h, "/redirect-derive").await;
    assert_eq!(
        r.header("location"),
        Some(format!("http://other.example.com:{port}/redirect-derive"))
    );
    let r = get(&c, port, h, "/redirect-prefix/a/b").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://actions.example.com/new-prefix/a/b")
    );
    // httpsRedirect on a plain-text server: 301 to https, the Host's port kept.
    let host = format!("secure.example.com:{redirect_port}");
    let r = send(&c, "POST", redirect_port, &host, "/pay", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://secure.example.com:{redirect_port}/pay"))
    );

    let r = get(&c, port, h, "/direct").await;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout\n"));
    let r = get(&c, port, h, "/direct-bytes").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello bytes"));

    let r = get(&c, port, h, "/rewrite/x?q=1").await;
    assert_eq!(r.echo()["path"], "/rewritten/x?q=1");
    let r = get(&c, port, h, "/regex-rewrite/one/two/three").await;
    assert_eq!(r.echo()["path"], "/two/three/one");
    let r = get(&c, port, h, "/authority").await;
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("backend.example.com")
    );

    let r = send(
        &c,
        "GET",
        port,
        h,
        "/headers",
        &[
            ("x-set", "from-client"),
            ("x-add", "from-client"),
            ("x-remove", "gone"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    assert_eq!(
        echo["headers"]["x-set"],
        serde_json::json!(["from-gateway"])
    );
    let added: Vec<String> = echo["headers"]["x-add"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v.as_str().unwrap().split(',').map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(added, vec!["from-client", "added"]);
    assert!(echo["headers"]["x-remove"].is_null());
    assert_eq!(echo["headers"]["x-dest"], serde_json::json!(["a"]));
    assert_eq!(r.header("x-resp-set").as_deref(), Some("set"));
    assert_eq!(r.header("x-resp-add").as_deref(), Some("added"));
    assert_eq!(r.header("x-dest-resp").as_deref(), Some("a"));
    assert!(
        r.header("x-upstream").is_none(),
        "removed from the response"
    );
    assert_eq!(r.header("server").as_deref(), Some("istio-envoy"));
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_retries_and_timeouts() {
    let echo = EchoUpstream::start("backend");
    let port = free_port();
    let yaml = render(
        &testdata("resilience.yaml"),
        &[
            ("GW_PORT", port.to_string()),
            ("ECHO", echo.port().to_string()),
            ("DEAD_PORT", free_port().to_string()),
        ],
    );
    let gw = TranslatedEnvoy::start(&yaml, "istio=ingressgateway", 1);
    let c = http_client();
    let h = "resilience.example.com";

    // Fixed delay of 400ms, measured (Envoy's timers have millisecond granularity);
    // the same upstream answers at once without the fault.
    let r = get(&c, port, h, "/delay").await;
    assert_eq!(r.status, 200);
    assert!(r.elapsed >= Duration::from_millis(380), "{:?}", r.elapsed);
    let r = get(&c, port, h, "/no-timeout").await;
    assert!(r.elapsed < Duration::from_millis(200), "{:?}", r.elapsed);

    // Aborts: always, by percentage, and without a percentage (Envoy then aborts none:
    // an unset FractionalPercent is 0%, and istiod leaves it unset too).
    let r = get(&c, port, h, "/abort").await;
    assert_eq!((r.status, r.body.as_str()), (418, "fault filter abort"));
    let before = echo.requests();
    let mut aborted = 0;
    for _ in 0..200 {
        let r = get(&c, port, h, "/abort-half").await;
        if r.status == 503 && r.body == "fault filter abort" {
            aborted += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(
        (60..=140).contains(&aborted),
        "{aborted}/200 aborted at 50%"
    );
    assert_eq!(echo.requests() - before, 200 - aborted);
    let r = get(&c, port, h, "/abort-all").await;
    assert_eq!(r.status, 200, "abort without percentage: {r:?}");

    // Retries: 5xx retried up to 3 times; status codes; disabled; Istio's default.
    let fail = |key: &str, n: &str| {
        vec![
            ("x-echo-fail-first", n.to_string()),
            ("x-echo-fail-key", key.to_string()),
        ]
    };
    let send_with = |path: &'static str, hdrs: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&c, "GET", port, h, path, &hdrs).await
        }
    };
    let before = echo.requests();
    let r = send_with("/retry", fail("r1", "2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.requests() - before, 3, "two failures, then success");
    let before = echo.requests();
    let r = send_with("/retry", fail("r2", "9")).await;
    assert_eq!(
        r.status, 503,
        "retries exhausted: the upstream's last answer"
    );
    assert_eq!(echo.requests() - before, 4, "1 try + 3 retries");
    let before = echo.requests();
    let r = send_with("/status-retry", fail("r3", "1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.requests() - before, 2);
    let before = echo.requests();
    let r = send_with("/no-retry", fail("r4", "1")).await;
    assert_eq!(r.status, 503);
    assert_eq!(echo.requests() - before, 1);
    // Istio's default policy does not retry an upstream's 503...
    let before = echo.requests();
    let r = send_with("/default-retry", fail("r5", "1")).await;
    assert_eq!(r.status, 503);
    assert_eq!(echo.requests() - before, 1);
    // ...nor a reset after the request was sent...
    let before = echo.requests();
    let r = send_with("/default-retry", vec![("x-echo-reset", "1".to_string())]).await;
    assert_eq!(r.status, 503);
    assert_eq!(echo.requests() - before, 1);
    // ...but retries a failed connection twice.
    let r = get(&c, port, h, "/dead").await;
    assert_eq!(r.status, 503);
    let (_, stats) = gw.envoy.admin_get("/stats?filter=dead.internal").unwrap();
    let stat = |suffix: &str| {
        stats
            .lines()
            .find(|l| l.contains(suffix))
            .and_then(|l| l.rsplit(": ").next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{suffix} not in:\n{stats}"))
    };
    assert_eq!(stat(".upstream_rq_retry:"), 2, "{stats}");
    assert_eq!(stat(".upstream_cx_connect_fail:"), 3, "{stats}");

    // Timeouts.
    let r = send_with("/timeout", vec![("x-echo-delay-ms", "1500".to_string())]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(r.elapsed < Duration::from_millis(1200), "{:?}", r.elapsed);
    let before = echo.requests();
    let r = send_with("/per-try", vec![("x-echo-delay-ms", "1000".to_string())]).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        echo.requests() - before,
        3,
        "each try times out after 200ms"
    );
    assert!(r.elapsed < Duration::from_millis(1000), "{:?}", r.elapsed);
    // No route timeout by default (Envoy's own default would be 15 s).
    let r = send_with("/no-timeout", vec![("x-echo-delay-ms", "800".to_string())]).await;
    assert_eq!(r.status, 200);
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_subsets_mirrors_cors_and_dns() {
    let v1 = EchoUpstream::start("v1");
    let v2 = EchoUpstream::start("v2");
    let shadow = RecordingUpstream::start();
    let port = free_port();
    let yaml = render(
        &testdata("traffic.yaml"),
        &[
            ("GW_PORT", port.to_string()),
            ("ECHO_V1", v1.port().to_string()),
            ("ECHO_V2", v2.port().to_string()),
            ("SHADOW", shadow.port.to_string()),
        ],
    );
    let gw = TranslatedEnvoy::start(
        &yaml,
        "istio=ingressgateway,topology.kubernetes.io/region=r1,topology.kubernetes.io/zone=z1",
        1,
    );
    let c = http_client();
    let h = "traffic.example.com";

    // 80/20 over 1000 requests: 4.5 standard deviations either side is 743..857.
    let mut to_v1 = 0;
    for _ in 0..1000 {
        let r = get(&c, port, h, "/weights").await;
        assert_eq!(r.status, 200);
        if r.upstream() == "v1" {
            to_v1 += 1;
        }
    }
    assert!(
        (743..=857).contains(&to_v1),
        "{to_v1}/1000 went to v1 at weight 80"
    );

    // A subset sends only to the endpoints with its labels.
    for _ in 0..20 {
        assert_eq!(get(&c, port, h, "/v2").await.upstream(), "v2");
    }
    // Consistent hashing on a header keeps a user on one endpoint.
    for user in ["alice", "bob", "carol"] {
        let first = send(&c, "GET", port, h, "/sticky", &[("x-user", user)])
            .await
            .upstream();
        for _ in 0..10 {
            let again = send(&c, "GET", port, h, "/sticky", &[("x-user", user)]).await;
            assert_eq!(again.upstream(), first, "{user}");
        }
    }

    // Mirroring: the shadow gets a copy with `-shadow` appended to the host.
    let r = get(&c, port, h, "/mirror/x").await;
    assert_eq!(r.upstream(), "v1");
    let seen = shadow.wait_for(1, Duration::from_secs(5));
    assert_eq!(seen[0].path, "/mirror/x");
    assert_eq!(
        seen[0].headers.get("host").map(String::as_str),
        Some("traffic.example.com-shadow")
    );

    // CORS preflight answered by the gateway for an allowed origin...
    let preflight = |origin: &'static str| {
        let c = c.clone();
        async move {
            send(
                &c,
                "OPTIONS",
                port,
                h,
                "/cors",
                &[("origin", origin), ("access-control-request-method", "PUT")],
            )
            .await
        }
    };
    let before = v1.requests();
    let r = preflight("https://allowed.example.org").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://allowed.example.org")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET,PUT")
    );
    assert_eq!(
        r.header("access-control-allow-headers").as_deref(),
        Some("x-custom")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("3600"));
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        v1.requests(),
        before,
        "the preflight never reaches the upstream"
    );
    let r = preflight("https://x.trusted.org").await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://x.trusted.org")
    );
    // ...and forwarded without CORS headers for another origin.
    let r = preflight("https://evil.example.net").await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.upstream(), "v1");
    // A simple cross-origin request gets the exposed headers.
    let r = send(
        &c,
        "GET",
        port,
        h,
        "/cors",
        &[("origin", "https://allowed.example.org")],
    )
    .await;
    assert_eq!(
        r.header("access-control-expose-headers").as_deref(),
        Some("x-exposed")
    );

    // DNS clusters resolve their endpoint names (localhost) themselves.
    assert_eq!(get(&c, port, h, "/dns").await.upstream(), "v1");
    assert_eq!(get(&c, port, h, "/logical-dns").await.upstream(), "v2");

    // HTTP/2 to upstreams whose port says so, or whose DestinationRule upgrades.
    let p = "protocols.example.com";
    assert_eq!(get(&c, port, p, "/h2").await.echo()["version"], "HTTP/2.0");
    assert_eq!(
        get(&c, port, p, "/upgraded").await.echo()["version"],
        "HTTP/2.0"
    );
    assert_eq!(get(&c, port, p, "/").await.echo()["version"], "HTTP/1.1");
    // Locality failover: while the gateway's own locality is healthy, it takes everything.
    for _ in 0..30 {
        assert_eq!(get(&c, port, p, "/local").await.upstream(), "v1");
    }

    // What Envoy holds is what translate wrote: same names, nothing rejected.
    let dump = gw.config_dump();
    let text = dump.to_string();
    for name in [
        "outbound|80|v1|versions.internal",
        "outbound|80|sticky|versions.internal",
        "outbound|80||dns.internal",
        "http.",
    ] {
        assert!(text.contains(name), "{name} missing from config_dump");
    }
    gw.envoy.assert_no_rejections();
}
