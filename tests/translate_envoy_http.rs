//! The Istio configurations of `tests/testdata/translate/` served twice — by real Envoy
//! 1.40 on what `meshgate translate` makes of them, and by meshgate's own data plane
//! (`meshgate gateway --config`) — with the same requests sent to both. Each scenario
//! asserts what the answers must be on each side, and then every answer (status, body,
//! response headers, and what the upstream received) is compared between the two. Envoy
//! must accept every resource: no rejection in its stats or log.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::collections::BTreeSet;
use std::time::Duration;
use support::*;
use translating::*;

/// Where the two sides may answer differently (each asserted in its scenario and listed
/// in docs/xds-support.md, "Differences from Envoy").
const DELIBERATE: &[Deliberate] = &[];

// ---------------------------------------------------------------------------------------
// routing.yaml
// ---------------------------------------------------------------------------------------

fn routing(a: &EchoUpstream, b: &EchoUpstream) -> BothGateways {
    BothGateways::start(
        &["GW_PORT", "REDIRECT_PORT"],
        "istio=ingressgateway",
        2,
        |side| {
            let mut vars = side.vars();
            vars.push(("ECHO_A", a.port().to_string()));
            vars.push(("ECHO_B", b.port().to_string()));
            render(&testdata("routing.yaml"), &vars)
        },
    )
}

async fn host_path_header_query_method_authority(t: &mut Transcript) {
    let who = t.who();
    const GW: &str = "GW_PORT";
    // Hosts.
    assert_eq!(
        t.get(GW, "a.example.com", "/x").await.upstream(),
        "a",
        "{who}"
    );
    assert_eq!(
        t.get(GW, "b.example.com", "/x").await.upstream(),
        "b",
        "{who}"
    );
    assert_eq!(
        t.get(GW, "B.Example.COM", "/x").await.upstream(),
        "b",
        "{who}"
    );
    let unknown = t.get(GW, "nope.example.com", "/").await;
    assert_eq!(unknown.status, 404, "{who}: no virtual host: 404 (NR)");
    assert!(unknown.body.is_empty(), "{who}");

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
        let r = t.send(method, GW, h, path, &headers).await;
        match want {
            Some(name) => {
                assert_eq!(r.status, 200, "{who}: {method} {path} {headers:?}: {r:?}");
                assert_eq!(route(&r), name, "{who}: {method} {path} {headers:?}");
            }
            None => assert_eq!(r.status, 404, "{who}: {method} {path} {headers:?}: {r:?}"),
        }
    }
    // A delegate VirtualService's routes, within the root's match and with its headers.
    let r = t.get(GW, "delegate.example.com", "/team/b1").await;
    assert_eq!(
        (r.upstream(), route(&r)),
        ("b".to_string(), "root-headers".to_string()),
        "{who}"
    );
    let r = t.get(GW, "delegate.example.com", "/team/x").await;
    assert_eq!(r.upstream(), "a", "{who}");
    let r = t.get(GW, "delegate.example.com", "/other").await;
    assert_eq!(r.status, 404, "{who}");
    // Authority matches inside a wildcard virtual host.
    let r = t.get(GW, "one.auth.example.com", "/").await;
    assert_eq!(route(&r), "authority-one", "{who}");
    let r = t.get(GW, "two.auth.example.com", "/").await;
    assert_eq!(route(&r), "authority-other", "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_header_query_method_authority_routing() {
    let (a, b) = (EchoUpstream::start("a"), EchoUpstream::start("b"));
    let gws = routing(&a, &b);
    let mut runs = Vec::new();
    for side in &gws.sides {
        let mut t = Transcript::new(side);
        host_path_header_query_method_authority(&mut t).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], DELIBERATE);
    gws.envoy.envoy.assert_no_rejections();
}

async fn redirects_rewrites_direct_responses_and_header_operations(t: &mut Transcript) {
    let who = t.who();
    const GW: &str = "GW_PORT";
    let port = t.port(GW);
    let redirect_port = t.port("REDIRECT_PORT");
    let h = "actions.example.com";

    let r = t.get(GW, h, "/redirect?x=1").await;
    assert_eq!(r.status, 302, "{who}");
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://new.example.com/moved?x=1"),
        "{who}"
    );
    let r = t.get(GW, h, "/redirect-scheme").await;
    assert_eq!(r.status, 301, "{who}");
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://actions.example.com:8443/redirect-scheme"),
        "{who}"
    );
    let r = t.get(GW, h, "/redirect-derive").await;
    assert_eq!(
        r.header("location"),
        Some(format!("http://other.example.com:{port}/redirect-derive")),
        "{who}"
    );
    let r = t.get(GW, h, "/redirect-prefix/a/b").await;
    assert_eq!(r.status, 308, "{who}");
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://actions.example.com/new-prefix/a/b"),
        "{who}"
    );
    // httpsRedirect on a plain-text server: 301 to https, the Host's port kept.
    let host = format!("secure.example.com:{redirect_port}");
    let r = t.send("POST", "REDIRECT_PORT", &host, "/pay", &[]).await;
    assert_eq!(r.status, 301, "{who}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://secure.example.com:{redirect_port}/pay")),
        "{who}"
    );

    let r = t.get(GW, h, "/direct").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (418, "short and stout\n"),
        "{who}"
    );
    let r = t.get(GW, h, "/direct-bytes").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello bytes"), "{who}");

    let r = t.get(GW, h, "/rewrite/x?q=1").await;
    assert_eq!(r.echo()["path"], "/rewritten/x?q=1", "{who}");
    let r = t.get(GW, h, "/regex-rewrite/one/two/three").await;
    assert_eq!(r.echo()["path"], "/two/three/one", "{who}");
    let r = t.get(GW, h, "/authority").await;
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("backend.example.com"),
        "{who}"
    );

    let r = t
        .send(
            "GET",
            GW,
            h,
            "/headers",
            &[
                ("x-set", "from-client"),
                ("x-add", "from-client"),
                ("x-remove", "gone"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{who}");
    let echo = r.echo();
    assert_eq!(
        echo["headers"]["x-set"],
        serde_json::json!(["from-gateway"]),
        "{who}"
    );
    let added: Vec<String> = echo["headers"]["x-add"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v.as_str().unwrap().split(',').map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(added, vec!["from-client", "added"], "{who}");
    assert!(echo["headers"]["x-remove"].is_null(), "{who}");
    assert_eq!(echo["headers"]["x-dest"], serde_json::json!(["a"]), "{who}");
    assert_eq!(r.header("x-resp-set").as_deref(), Some("set"), "{who}");
    assert_eq!(r.header("x-resp-add").as_deref(), Some("added"), "{who}");
    assert_eq!(r.header("x-dest-resp").as_deref(), Some("a"), "{who}");
    assert!(
        r.header("x-upstream").is_none(),
        "{who}: removed from the response"
    );
    assert_eq!(r.header("server").as_deref(), Some("istio-envoy"), "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_rewrites_direct_responses_and_headers() {
    let (a, b) = (EchoUpstream::start("a"), EchoUpstream::start("b"));
    let gws = routing(&a, &b);
    let mut runs = Vec::new();
    for side in &gws.sides {
        let mut t = Transcript::new(side);
        redirects_rewrites_direct_responses_and_header_operations(&mut t).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], DELIBERATE);
    gws.envoy.envoy.assert_no_rejections();
}

// ---------------------------------------------------------------------------------------
// resilience.yaml
// ---------------------------------------------------------------------------------------

/// `x-echo-fail-first: n` with a key of this side's own: the echo upstream answers 503
/// to the first `n` requests carrying the key, then 200.
fn failing(t: &Transcript, key: &str, n: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-echo-fail-first", n.to_string()),
        ("x-echo-fail-key", format!("{}-{key}", t.who())),
    ]
}

async fn send_owned(t: &mut Transcript, path: &str, headers: &[(&'static str, String)]) -> Reply {
    let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    t.send("GET", "GW_PORT", "resilience.example.com", path, &hdrs)
        .await
}

async fn faults_retries_and_timeouts_scenario(
    t: &mut Transcript,
    gws: &BothGateways,
    echo: &EchoUpstream,
) {
    let who = t.who();
    let side = t.side.clone();
    const GW: &str = "GW_PORT";
    let h = "resilience.example.com";

    // A fixed delay of 400 ms before the request goes upstream (which answers at once):
    // the answer takes at least that long. Envoy's timers run on a clock cached per
    // event-loop pass and fire up to a few milliseconds early; meshgate's do not.
    let slack = if side.is_envoy() {
        Duration::from_millis(10)
    } else {
        Duration::ZERO
    };
    let r = t.get(GW, h, "/delay").await;
    assert_eq!(r.status, 200, "{who}");
    assert!(
        r.elapsed + slack >= Duration::from_millis(400),
        "{who}: a 400 ms fault delay answered after {:?}",
        r.elapsed
    );

    // Aborts: always, by percentage, and without a percentage (Envoy then aborts none:
    // an unset FractionalPercent is 0%, and istiod leaves it unset too).
    let r = t.get(GW, h, "/abort").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (418, "fault filter abort"),
        "{who}"
    );
    assert!(
        r.header("x-meshgate-reason").is_none(),
        "{who}: no extra header"
    );
    let before = echo.requests();
    let n = 200;
    let mut aborted = 0;
    for _ in 0..n {
        let r = get(&t.client, side.port(GW), h, "/abort-half").await;
        if r.status == 503 && r.body == "fault filter abort" {
            aborted += 1;
        } else {
            assert_eq!(r.status, 200, "{who}");
        }
    }
    assert_binomial(
        &format!("{who}: aborted at 50%"),
        aborted,
        n,
        0.5,
        &[0.0, 1.0],
    );
    assert_eq!(echo.requests() - before, n - aborted, "{who}");
    let r = t.get(GW, h, "/abort-all").await;
    assert_eq!(r.status, 200, "{who}: abort without percentage: {r:?}");

    // Retries, counted at the upstream: 503 twice, then 200.
    let before = echo.requests();
    let r = send_owned(t, "/retry", &failing(t, "r1", "2")).await;
    assert_eq!(r.status, 200, "{who}");
    assert_eq!(
        echo.requests() - before,
        3,
        "{who}: two failures, then success"
    );
    let before = echo.requests();
    let r = send_owned(t, "/retry", &failing(t, "r2", "9")).await;
    assert_eq!(
        r.status, 503,
        "{who}: retries exhausted: the upstream's last answer"
    );
    assert_eq!(echo.requests() - before, 4, "{who}: 1 try + 3 retries");
    // retryOn "503": a retriable status code.
    let before = echo.requests();
    let r = send_owned(t, "/status-retry", &failing(t, "r3", "1")).await;
    assert_eq!(r.status, 200, "{who}");
    assert_eq!(echo.requests() - before, 2, "{who}: 503, then 200");
    let before = echo.requests();
    let r = send_owned(t, "/status-retry", &failing(t, "r3b", "9")).await;
    assert_eq!(r.status, 503, "{who}");
    assert_eq!(echo.requests() - before, 3, "{who}: 1 try + 2 retries");
    let before = echo.requests();
    let r = send_owned(t, "/status-retry", &[("x-echo-status", "500".to_string())]).await;
    assert_eq!(r.status, 500, "{who}");
    assert_eq!(echo.requests() - before, 1, "{who}: 500 is not listed");
    let before = echo.requests();
    let r = send_owned(t, "/no-retry", &failing(t, "r4", "1")).await;
    assert_eq!(r.status, 503, "{who}");
    assert_eq!(echo.requests() - before, 1, "{who}");
    // Istio's default policy (no `retries` on the route): istiod's since 1.24 retries
    // connect-failure, refused-stream, unavailable, cancelled and retriable-status-codes
    // with no codes listed (503 was dropped as unsafe), two retries. So an upstream's
    // 503 is not retried...
    let before = echo.requests();
    let r = send_owned(t, "/default-retry", &failing(t, "r5", "1")).await;
    assert_eq!(r.status, 503, "{who}");
    assert_eq!(echo.requests() - before, 1, "{who}");
    // ...nor a reset after the request was sent...
    let before = echo.requests();
    let r = send_owned(t, "/default-retry", &[("x-echo-reset", "1".to_string())]).await;
    assert_eq!(r.status, 503, "{who}");
    assert_eq!(echo.requests() - before, 1, "{who}");
    // ...but a failed connection is tried three times in all; with `attempts: 0`, once.
    let connect_fails = |cluster: &str| {
        // Envoy names cluster stats after Istio's `alt_stat_name` (the name and `;`);
        // meshgate ignores that field (docs/xds-support.md) and uses the cluster's name.
        let stat_name = if side.is_envoy() {
            format!("outbound|80||{cluster};")
        } else {
            format!("outbound|80||{cluster}")
        };
        let name = format!("cluster.{stat_name}.upstream_cx_connect_fail");
        gws.stat(&side, &name)
            .unwrap_or_else(|| panic!("{who}: no stat {name}"))
    };
    let before = connect_fails("dead.internal");
    let r = t.get(GW, h, "/dead").await;
    assert_eq!(r.status, 503, "{who}");
    let after = connect_fails("dead.internal");
    t.note("/dead connection attempts", after - before);
    assert_eq!(after - before, 3, "{who}: 1 connect + 2 retries");
    let before = connect_fails("dead.internal");
    let r = t.get(GW, h, "/dead-no-retry").await;
    assert_eq!(r.status, 503, "{who}");
    let after = connect_fails("dead.internal");
    t.note("/dead-no-retry connection attempts", after - before);
    assert_eq!(after - before, 1, "{who}: retries off");

    // Timeouts. The upstream would answer 200 after 1.5 s; the route's 300 ms ends it.
    let r = send_owned(t, "/timeout", &[("x-echo-delay-ms", "1500".to_string())]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout"),
        "{who}"
    );
    // Each try times out after 200 ms (the upstream would answer after 1 s): three tries,
    // then 504.
    let before = echo.requests();
    let r = send_owned(t, "/per-try", &[("x-echo-delay-ms", "1000".to_string())]).await;
    assert_eq!(r.status, 504, "{who}");
    assert_eq!(
        echo.requests() - before,
        3,
        "{who}: each try times out after 200ms"
    );
    // No route timeout by default.
    let r = send_owned(t, "/no-timeout", &[("x-echo-delay-ms", "800".to_string())]).await;
    assert_eq!(r.status, 200, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_retries_and_timeouts() {
    let echo = EchoUpstream::start("backend");
    let dead = free_port();
    let gws = BothGateways::start(&["GW_PORT"], "istio=ingressgateway", 1, |side| {
        let mut vars = side.vars();
        vars.push(("ECHO", echo.port().to_string()));
        vars.push(("DEAD_PORT", dead.to_string()));
        render(&testdata("resilience.yaml"), &vars)
    });
    let mut runs = Vec::new();
    for side in &gws.sides {
        let mut t = Transcript::new(side);
        faults_retries_and_timeouts_scenario(&mut t, &gws, &echo).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], DELIBERATE);
    gws.envoy.envoy.assert_no_rejections();
}

// ---------------------------------------------------------------------------------------
// traffic.yaml
// ---------------------------------------------------------------------------------------

struct TrafficUpstreams {
    v1: EchoUpstream,
    shadow: RecordingUpstream,
}

/// Sends `n` requests to `path_prefix/i`, then one to `/mirror/sentinel-…` (mirrored at
/// 100%); once the sentinel's shadow arrived, every earlier mirror would have too.
/// Returns how many of the `n` were mirrored.
async fn mirrored_of(
    t: &mut Transcript,
    shadow: &RecordingUpstream,
    path_prefix: &str,
    n: usize,
) -> usize {
    let port = t.port("GW_PORT");
    let h = "traffic.example.com";
    shadow.take();
    for i in 0..n {
        let r = get(&t.client, port, h, &format!("{path_prefix}/{i}")).await;
        assert_eq!(r.status, 200, "{}", t.who());
    }
    let sentinel = format!("/mirror/sentinel-{path_prefix}");
    assert_eq!(get(&t.client, port, h, &sentinel).await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = shadow.seen();
        if seen.iter().any(|r| r.path == sentinel) {
            return seen
                .iter()
                .filter(|r| r.path.starts_with(&format!("{path_prefix}/")) && r.path != sentinel)
                .count();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the sentinel was not mirrored",
            t.who()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends each key three times with `send`; asserts each key stays on one upstream and
/// that the keys spread over more than one. Records key -> upstream.
async fn assert_sticky<F, Fut>(t: &mut Transcript, what: &str, keys: &[String], mut send_key: F)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let who = t.who();
    let mut used = BTreeSet::new();
    for key in keys {
        let first = send_key(key.clone()).await;
        assert_eq!(first.status, 200, "{who}: {what} {key}: {first:?}");
        let upstream = first.upstream();
        for _ in 0..3 {
            let again = send_key(key.clone()).await.upstream();
            assert_eq!(again, upstream, "{who}: {what} {key} moved");
        }
        t.note(format!("{what} {key}"), &upstream);
        used.insert(upstream);
    }
    assert!(
        used.len() >= 2,
        "{who}: {} keys by {what} all hashed to {used:?}",
        keys.len()
    );
}

async fn weights_subsets_mirrors_cors_dns_scenario(t: &mut Transcript, u: &TrafficUpstreams) {
    let who = t.who();
    const GW: &str = "GW_PORT";
    let port = t.port(GW);
    let h = "traffic.example.com";

    // 80/20 over 1000 requests.
    let n = 1000;
    let mut to_v1 = 0;
    for _ in 0..n {
        let r = get(&t.client, port, h, "/weights").await;
        assert_eq!(r.status, 200, "{who}");
        if r.upstream() == "v1" {
            to_v1 += 1;
        }
    }
    assert_binomial(
        &format!("{who}: to v1 at weight 80"),
        to_v1,
        n,
        0.8,
        &[0.5, 1.0],
    );

    // A subset sends only to the endpoints with its labels.
    for _ in 0..20 {
        assert_eq!(
            get(&t.client, port, h, "/v2").await.upstream(),
            "v2",
            "{who}"
        );
    }
    // Consistent hashing on a header keeps a user on one endpoint.
    for user in ["alice", "bob", "carol"] {
        let first = t
            .send("GET", GW, h, "/sticky", &[("x-user", user)])
            .await
            .upstream();
        for _ in 0..10 {
            let again = t.send("GET", GW, h, "/sticky", &[("x-user", user)]).await;
            assert_eq!(again.upstream(), first, "{who}: {user}");
        }
    }
    // The same key always lands on the same one of three endpoints; different keys
    // spread: by header, cookie, query parameter and source address.
    let keys: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let client = t.client.clone();
    assert_sticky(t, "header", &keys, |k| {
        let c = client.clone();
        async move { send(&c, "GET", port, h, "/by-header", &[("x-user", &k)]).await }
    })
    .await;
    assert_sticky(t, "cookie", &keys, |k| {
        let c = client.clone();
        async move {
            let cookie = format!("other=1; session={k}");
            send(&c, "GET", port, h, "/by-cookie", &[("cookie", &cookie)]).await
        }
    })
    .await;
    assert_sticky(t, "query", &keys, |k| {
        let c = client.clone();
        async move { get(&c, port, h, &format!("/by-query?x=1&user={k}")).await }
    })
    .await;
    let addresses: Vec<String> = (2..14).map(|i| format!("127.0.0.{i}")).collect();
    assert_sticky(t, "source ip", &addresses, |ip| async move {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap();
        get(&c, port, h, "/by-ip").await
    })
    .await;

    // Mirroring: the shadow gets a copy with `-shadow` appended to the host, with the
    // same method, path and body, while the client gets the primary's answer.
    u.shadow.take();
    let body = b"mirror me, byte for byte";
    let r = t.send_body("POST", GW, h, "/mirror/x", &[], body).await;
    assert_eq!(r.upstream(), "v1", "{who}");
    assert_eq!(r.echo()["body_len"], body.len(), "{who}");
    let seen = u.shadow.wait_for(1, Duration::from_secs(10));
    assert_eq!(seen.len(), 1, "{who}: {seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/mirror/x"),
        "{who}"
    );
    assert_eq!(
        seen[0].headers.get("host").map(String::as_str),
        Some("traffic.example.com-shadow"),
        "{who}"
    );
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        String::from_utf8_lossy(body),
        "{who}: the shadow's body"
    );
    // mirrorPercentage 100 mirrors every request, 0 none, 50 about half.
    let all = mirrored_of(t, &u.shadow, "/mirror", 30).await;
    t.note("mirrored of 30 at 100%", all);
    assert_eq!(all, 30, "{who}: mirrorPercentage 100");
    let none = mirrored_of(t, &u.shadow, "/mirror-none", 30).await;
    t.note("mirrored of 30 at 0%", none);
    assert_eq!(none, 0, "{who}: mirrorPercentage 0");
    let n = 200;
    let half = mirrored_of(t, &u.shadow, "/mirror-half", n).await;
    assert_binomial(
        &format!("{who}: mirrored at 50%"),
        half,
        n,
        0.5,
        &[0.0, 1.0],
    );

    // CORS preflight answered by the gateway for an allowed origin...
    let preflight = [("access-control-request-method", "PUT")];
    let before = u.v1.requests();
    let r = t
        .send(
            "OPTIONS",
            GW,
            h,
            "/cors",
            &[("origin", "https://allowed.example.org"), preflight[0]],
        )
        .await;
    assert_eq!(r.status, 200, "{who}");
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://allowed.example.org"),
        "{who}"
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET,PUT"),
        "{who}"
    );
    assert_eq!(
        r.header("access-control-allow-headers").as_deref(),
        Some("x-custom"),
        "{who}"
    );
    assert_eq!(
        r.header("access-control-max-age").as_deref(),
        Some("3600"),
        "{who}"
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true"),
        "{who}"
    );
    assert_eq!(
        u.v1.requests(),
        before,
        "{who}: the preflight never reaches the upstream"
    );
    let r = t
        .send(
            "OPTIONS",
            GW,
            h,
            "/cors",
            &[("origin", "https://x.trusted.org"), preflight[0]],
        )
        .await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://x.trusted.org"),
        "{who}"
    );
    // ...and forwarded without CORS headers for another origin.
    let r = t
        .send(
            "OPTIONS",
            GW,
            h,
            "/cors",
            &[("origin", "https://evil.example.net"), preflight[0]],
        )
        .await;
    assert!(r.header("access-control-allow-origin").is_none(), "{who}");
    assert_eq!(r.upstream(), "v1", "{who}");
    // A simple cross-origin request gets the exposed headers.
    let r = t
        .send(
            "GET",
            GW,
            h,
            "/cors",
            &[("origin", "https://allowed.example.org")],
        )
        .await;
    assert_eq!(
        r.header("access-control-expose-headers").as_deref(),
        Some("x-exposed"),
        "{who}"
    );

    // DNS clusters resolve their endpoint names (localhost) themselves.
    assert_eq!(t.get(GW, h, "/dns").await.upstream(), "v1", "{who}");
    assert_eq!(t.get(GW, h, "/logical-dns").await.upstream(), "v2", "{who}");

    // HTTP/2 to upstreams whose port says so, or whose DestinationRule upgrades.
    let p = "protocols.example.com";
    assert_eq!(
        t.get(GW, p, "/h2").await.echo()["version"],
        "HTTP/2.0",
        "{who}"
    );
    assert_eq!(
        t.get(GW, p, "/upgraded").await.echo()["version"],
        "HTTP/2.0",
        "{who}"
    );
    assert_eq!(
        t.get(GW, p, "/").await.echo()["version"],
        "HTTP/1.1",
        "{who}"
    );
    // Locality failover: while the gateway's own locality is healthy, it takes everything.
    for _ in 0..30 {
        assert_eq!(t.get(GW, p, "/local").await.upstream(), "v1", "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_subsets_mirrors_cors_and_dns() {
    let v1 = EchoUpstream::start("v1");
    let v2 = EchoUpstream::start("v2");
    let ring: Vec<EchoUpstream> = (1..=3)
        .map(|i| EchoUpstream::start(&format!("ring-{i}")))
        .collect();
    let shadow = RecordingUpstream::start();
    let gws = BothGateways::start(
        &["GW_PORT"],
        "istio=ingressgateway,topology.kubernetes.io/region=r1,topology.kubernetes.io/zone=z1",
        1,
        |side| {
            let mut vars = side.vars();
            vars.push(("ECHO_V1", v1.port().to_string()));
            vars.push(("ECHO_V2", v2.port().to_string()));
            vars.push(("SHADOW", shadow.port.to_string()));
            for (i, r) in ring.iter().enumerate() {
                vars.push((["RING_1", "RING_2", "RING_3"][i], r.port().to_string()));
            }
            render(&testdata("traffic.yaml"), &vars)
        },
    );
    let u = TrafficUpstreams { v1, shadow };
    let mut runs = Vec::new();
    for side in &gws.sides {
        let mut t = Transcript::new(side);
        weights_subsets_mirrors_cors_dns_scenario(&mut t, &u).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], DELIBERATE);

    // What Envoy holds is what translate wrote: same names, nothing rejected.
    let dump = gws.envoy.config_dump();
    let text = dump.to_string();
    for name in [
        "outbound|80|v1|versions.internal",
        "outbound|80|sticky|versions.internal",
        "outbound|80||dns.internal",
        "http.",
    ] {
        assert!(text.contains(name), "{name} missing from config_dump");
    }
    gws.envoy.envoy.assert_no_rejections();
}
