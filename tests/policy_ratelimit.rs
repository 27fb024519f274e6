//! `RateLimitPolicy` in `Local` mode, end to end: the same Istio configuration served by
//! meshgate's own data plane and by real Envoy 1.40 on what `meshgate translate` makes
//! of it. Deterministic bursts (N admitted, then 429) must be answered identically by
//! both, headers included; a bounded load must be admitted at the configured rate.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::*;
use translating::*;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: {{ECHO}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{GW_PORT}}, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{EDGE_PORT}}, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: load, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{LOAD_PORT}}, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [ip.example.com, route.example.com, header.example.com, sel.example.com]
  gateways: [gw]
  http:
  - name: login
    match: [{uri: {prefix: /login}}]
    route: [{destination: {host: echo.internal}}]
  - name: rest
    route: [{destination: {host: echo.internal}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge, load]
  http:
  - route: [{destination: {host: echo.internal}}]
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-ip, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: gw, hostname: ip.example.com}]
  local:
    rules:
    - name: client
      clientSelectors: [{sourceCIDR: {type: Distinct}}]
      limit: {requests: 1, unit: Minute, burst: 3}
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: login, namespace: default}
spec:
  targetRefs: [{kind: VirtualService, name: shop, route: login}]
  local:
    rules:
    - limit: {requests: 1, unit: Minute, burst: 2}
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-user, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: gw, hostname: header.example.com}]
  local:
    rules:
    - name: user
      clientSelectors: [{headers: [{name: x-user, type: Distinct}]}]
      limit: {requests: 1, unit: Minute, burst: 2}
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: selectors, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: gw, hostname: sel.example.com}]
  local:
    rules:
    - name: gold-api
      clientSelectors:
      - headers: [{name: x-tier, value: gold}, {name: x-user, type: Distinct}]
        sourceCIDR: {value: 127.0.0.0/8}
        path: {type: PathPrefix, value: /api}
      limit: {requests: 1, unit: Minute, burst: 2}
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: edge, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: edge}]
  local:
    rules:
    - limit: {requests: 1, unit: Minute, burst: 4}
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: load, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: load}]
  local:
    rules:
    - limit: {requests: 100, unit: Second, burst: 10}
"#;

fn start(echo: &EchoUpstream) -> BothGateways {
    BothGateways::start(
        &["GW_PORT", "EDGE_PORT", "LOAD_PORT"],
        "istio=ingressgateway",
        3,
        |side| {
            let mut vars = side.vars();
            vars.push(("ECHO", echo.port().to_string()));
            render(CONFIG, &vars)
        },
    )
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(ip.parse::<IpAddr>().expect("ip")))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// (status, x-ratelimit-remaining) of each answer; x-ratelimit-reset is checked on
/// the way: 0 while a token is left, else about the minute a token takes.
fn pattern(replies: &[Reply]) -> Vec<(u16, Option<String>)> {
    replies
        .iter()
        .map(|r| {
            let remaining = r.header("x-ratelimit-remaining");
            let reset = r.header("x-ratelimit-reset");
            match remaining.as_deref() {
                None => assert_eq!(reset, None),
                Some("0") => assert_eq!(about_a_minute(reset), Some(true), "{r:?}"),
                Some(_) => assert_eq!(reset.as_deref(), Some("0"), "{r:?}"),
            }
            (r.status, remaining)
        })
        .collect()
}

/// Whether a seconds value is the minute the next token takes, less the time the test
/// itself took (a slow machine may cross a whole second between two requests).
fn about_a_minute(v: Option<String>) -> Option<bool> {
    v.map(|v| matches!(v.parse::<u64>(), Ok(55..=60)))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

async fn bursts(t: &mut Transcript) {
    let who = t.who();
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));

    // Per client address: 3 each, then 429; another address has its own bucket.
    let mut from_a = Vec::new();
    for _ in 0..4 {
        from_a.push(
            t.send_via(&a, "GET", "GW_PORT", "ip.example.com", "/x", &[])
                .await,
        );
    }
    assert_eq!(
        pattern(&from_a),
        [
            (200, some("2")),
            (200, some("1")),
            (200, some("0")),
            (429, some("0"))
        ],
        "{who}"
    );
    let limited = &from_a[3];
    assert_eq!(limited.body, "local_rate_limited", "{who}");
    assert_eq!(
        limited.header("x-ratelimit-limit").as_deref(),
        Some("3"),
        "{who}"
    );
    assert_eq!(
        limited.header("x-ratelimit-reset").as_deref(),
        Some("60"),
        "{who}"
    );
    assert_eq!(
        limited.header("retry-after").as_deref(),
        Some("60"),
        "{who}"
    );
    assert_eq!(
        limited.header("ratelimit-policy").as_deref(),
        Some("\"default/per-ip/client\";q=1;w=60"),
        "{who}"
    );
    assert_eq!(
        limited.header("ratelimit").as_deref(),
        Some("\"default/per-ip/client\";r=0"),
        "{who}"
    );
    assert_eq!(
        from_a[2].header("x-ratelimit-reset").as_deref(),
        Some("60"),
        "{who}"
    );
    assert_eq!(
        from_a[0].header("x-ratelimit-reset").as_deref(),
        Some("0"),
        "{who}"
    );
    let other = t
        .send_via(&b, "GET", "GW_PORT", "ip.example.com", "/x", &[])
        .await;
    assert_eq!(pattern(&[other]), [(200, some("2"))], "{who}");

    // A route's own limit: /login twice, then 429; the other route is not limited.
    let mut login = Vec::new();
    let mut rest = Vec::new();
    for _ in 0..3 {
        login.push(t.get("GW_PORT", "route.example.com", "/login").await);
        rest.push(t.get("GW_PORT", "route.example.com", "/other").await);
    }
    assert_eq!(
        pattern(&login),
        [(200, some("1")), (200, some("0")), (429, some("0"))],
        "{who}"
    );
    assert_eq!(
        pattern(&rest),
        [(200, None), (200, None), (200, None)],
        "{who}"
    );

    // A header's distinct values: one bucket per user; no header, no limit.
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(
            t.send(
                "GET",
                "GW_PORT",
                "header.example.com",
                "/",
                &[("x-user", "alice")],
            )
            .await,
        );
    }
    assert_eq!(
        pattern(&alice),
        [(200, some("1")), (200, some("0")), (429, some("0"))],
        "{who}"
    );
    let bob = t
        .send(
            "GET",
            "GW_PORT",
            "header.example.com",
            "/",
            &[("x-user", "bob")],
        )
        .await;
    // Without the header the rule does not apply; the host's config then counts the
    // request in its default bucket, which Envoy requires and which admits everything.
    let nobody = t.get("GW_PORT", "header.example.com", "/").await;
    assert_eq!(
        pattern(&[bob, nobody]),
        [(200, some("1")), (200, some("4294967295"))],
        "{who}"
    );

    // Conditions together: an exact header, a header's distinct values, a CIDR and a
    // path prefix (whole segments; the query does not matter).
    let gold = |user: &'static str| [("x-tier", "gold"), ("x-user", user)];
    let mut sel = Vec::new();
    for (path, headers) in [
        ("/api/x", gold("u")),
        ("/api/y", gold("u")),
        ("/apix", gold("u")),
        ("/api?q=1", gold("u")),
        ("/api", gold("v")),
        ("/api/x", [("x-tier", "silver"), ("x-user", "u")]),
    ] {
        sel.push(
            t.send("GET", "GW_PORT", "sel.example.com", path, &headers)
                .await,
        );
    }
    assert_eq!(
        pattern(&sel),
        [
            (200, some("1")),
            (200, some("0")),
            (200, some("4294967295")),
            (429, some("0")),
            (200, some("1")),
            (200, some("4294967295"))
        ],
        "{who}"
    );

    // A Gateway's limit covers all its routes: 4, then 429.
    let mut edge = Vec::new();
    for path in ["/a", "/b", "/c", "/d", "/e"] {
        edge.push(t.get("EDGE_PORT", "any.example.com", path).await);
    }
    assert_eq!(
        pattern(&edge),
        [
            (200, some("3")),
            (200, some("2")),
            (200, some("1")),
            (200, some("0")),
            (429, some("0"))
        ],
        "{who}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_admitted_and_refused_identically_by_meshgate_and_envoy() {
    let echo = EchoUpstream::start("echo");
    let both = start(&echo);
    let mut transcripts = Vec::new();
    for side in &both.sides {
        let mut t = Transcript::new(side);
        bursts(&mut t).await;
        transcripts.push(t);
    }
    both.envoy.envoy.assert_no_rejections();
    // Not a rate limit matter: for a loopback client other than 127.0.0.1 meshgate
    // appends this host's address to x-forwarded-for where Envoy appends the client's
    // (the requests from 127.0.0.2 and .3 are the only ones on ip.example.com).
    let xff = Deliberate {
        label: "ip.example.com",
        field: "upstream header x-forwarded-for",
        meshgate: Expect::Any,
        envoy: Expect::Any,
    };
    // Seconds until the next token: asserted on each side above (about a minute), and
    // they may differ by one when a whole second passes between the two sides' requests.
    let seconds = |field| Deliberate {
        label: "GET",
        field,
        meshgate: Expect::Any,
        envoy: Expect::Any,
    };
    assert_same_answers(
        &transcripts[0],
        &transcripts[1],
        &[
            xff,
            seconds("response x-ratelimit-reset"),
            seconds("response retry-after"),
        ],
    );
    let mesh = &both.sides[0];
    let limited = both
        .stat(
            mesh,
            "meshgate_local_rate_limit.http_local_rate_limit.rate_limited",
        )
        .unwrap_or_default();
    assert_eq!(limited, 5, "one 429 per scenario");
    assert_eq!(
        both.stat(
            mesh,
            "meshgate_local_rate_limit.http_local_rate_limit.rule.default/login/0.rate_limited"
        ),
        Some(1)
    );
}

/// Requests as fast as `clients` loops can send for `window`; returns (admitted,
/// refused, seconds between the first request and the last answer).
async fn offer(port: u16, clients: usize, window: Duration) -> (u64, u64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let (mut ok, mut refused) = (0u64, 0u64);
            // Bounded in time and in count.
            for _ in 0..200_000 {
                if start.elapsed() >= window {
                    break;
                }
                let r = get(&client, port, "load.example.com", "/").await;
                match r.status {
                    200 => ok += 1,
                    429 => refused += 1,
                    s => panic!("unexpected status {s}: {}", r.body),
                }
            }
            (ok, refused)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, refused) = t.await.expect("client task");
        total.0 += ok;
        total.1 += refused;
    }
    (total.0, total.1, start.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_load_is_admitted_at_the_configured_rate() {
    let echo = EchoUpstream::start("echo");
    let both = start(&echo);
    for side in &both.sides {
        let (ok, refused, secs) = offer(side.port("LOAD_PORT"), 4, Duration::from_secs(3)).await;
        // 10 at once, then 100 per second.
        let expected = 10.0 + 100.0 * secs;
        let offered = (ok + refused) as f64 / secs;
        assert!(
            offered > 300.0,
            "{}: the load must exceed the limit to test it ({offered:.0}/s offered)",
            side.who
        );
        let error = (ok as f64 - expected).abs() / expected;
        assert!(
            error < 0.03,
            "{}: admitted {ok} in {secs:.2}s, expected {expected:.0} (±3%); refused {refused}",
            side.who
        );
    }
}

fn stat(gw: &support::gateway::GatewayProcess, name: &str) -> Option<u64> {
    let (_, body) = gw.admin("/stats");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_updates_that_keep_their_limit() {
    let echo = EchoUpstream::start("echo");
    let dir = TempDir::new();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let side = Side {
        who: "meshgate",
        ports: vec![
            ("GW_PORT", free_port()),
            ("EDGE_PORT", free_port()),
            ("LOAD_PORT", free_port()),
        ],
    };
    let mut vars = side.vars();
    vars.push(("ECHO", echo.port().to_string()));
    let yaml = render(CONFIG, &vars);
    std::fs::write(config.join("config.yaml"), &yaml).expect("write config");
    let gw = support::gateway::GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--labels",
            "istio=ingressgateway",
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    let port = side.port("GW_PORT");
    wait_for_port(port, Duration::from_secs(20));
    let client = http_client();
    let login = || get(&client, port, "route.example.com", "/login");
    let statuses = |rs: Vec<Reply>| rs.iter().map(|r| r.status).collect::<Vec<_>>();
    assert_eq!(
        statuses(vec![login().await, login().await, login().await]),
        [200, 200, 429]
    );

    // An unrelated change: the route's bucket is still empty.
    let updates = stat(&gw, "meshgate.config_updates").unwrap_or_default();
    let other = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: other, namespace: default}\nspec:\n  hosts: [other.example.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: echo.internal}}]\n";
    std::fs::write(config.join("other.yaml"), other).expect("write");
    wait_until("the update is applied", Duration::from_secs(20), || {
        stat(&gw, "meshgate.config_updates").unwrap_or_default() > updates
    });
    assert_eq!(
        get(&client, port, "other.example.com", "/").await.status,
        200,
        "the new route serves"
    );
    assert_eq!(login().await.status, 429, "the bucket kept its state");

    // A new limit is a new bucket.
    let updates = stat(&gw, "meshgate.config_updates").unwrap_or_default();
    let raised = yaml.replace(
        "    - limit: {requests: 1, unit: Minute, burst: 2}",
        "    - limit: {requests: 1, unit: Minute, burst: 3}",
    );
    assert_ne!(raised, yaml);
    std::fs::write(config.join("config.yaml"), raised).expect("write");
    wait_until("the update is applied", Duration::from_secs(20), || {
        stat(&gw, "meshgate.config_updates").unwrap_or_default() > updates
    });
    let r = login().await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-limit").as_deref()),
        (200, Some("3"))
    );
}

/// A `redis-server` on 127.0.0.1, nothing on disk; killed when dropped.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start(dir: &std::path::Path) -> Redis {
        let port = free_port();
        let log = std::fs::File::create(dir.join("redis.log")).expect("redis log");
        let child = std::process::Command::new(peer_bin("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning redis-server");
        wait_for_port(port, Duration::from_secs(10));
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GLOBAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: {{ECHO}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{GW_PORT}}, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: echo.internal}}]
---
apiVersion: meshgate.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: shared, namespace: default}
spec:
  targetRefs: [{kind: Gateway, name: gw}]
  type: Global
  global:
    rules:
    - name: per-client
      clientSelectors: [{sourceCIDR: {type: Distinct}}]
      limit: {requests: 1, unit: Minute, burst: {{BURST}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_policy_is_counted_by_the_gateways_rate_limit_service() {
    let echo = EchoUpstream::start("echo");
    let dir = TempDir::new();
    let redis = Redis::start(dir.path());
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let port = free_port();
    let render_with = |burst: u32| {
        render(
            GLOBAL,
            &[
                ("ECHO", echo.port().to_string()),
                ("GW_PORT", port.to_string()),
                ("BURST", burst.to_string()),
            ],
        )
    };
    std::fs::write(config.join("config.yaml"), render_with(2)).expect("write config");
    let rls = format!("127.0.0.1:{}", free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let gw = support::gateway::GatewayProcess::start_with(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--labels",
            "istio=ingressgateway",
            "--access-log",
            "off",
            "--ratelimit-redis",
            &redis_url,
            "--ratelimit-address",
            &rls,
        ],
        dir.path(),
    );
    wait_for_port(port, Duration::from_secs(20));
    let client = client_from("127.0.0.4");
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(get(&client, port, "shop.example.com", "/").await);
    }
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 429], "{:?}", gw.stderr());
    assert!(replies[2].header("x-ratelimit-limit").is_some());
    // Another client has its own bucket.
    let other = get(&client_from("127.0.0.5"), port, "shop.example.com", "/").await;
    assert_eq!(other.status, 200);

    // A raised limit reaches the service with the next configuration load.
    let updates = stat(&gw, "meshgate.config_updates").unwrap_or_default();
    std::fs::write(config.join("config.yaml"), render_with(5)).expect("write config");
    wait_until("the update is applied", Duration::from_secs(20), || {
        stat(&gw, "meshgate.config_updates").unwrap_or_default() > updates
    });
    assert_eq!(
        get(&client, port, "shop.example.com", "/").await.status,
        200,
        "the bucket now holds 5"
    );
}

/// The control plane runs the rate-limit service, gives it the Global policies' limits,
/// and points the `meshgate-ratelimit` cluster of every gateway it configures at it: two
/// gateways joined over xDS share one limit, and a changed limit reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_policy_through_the_control_plane_limits_every_gateway_it_configures() {
    let echo = EchoUpstream::start("echo");
    let dir = TempDir::new();
    let redis = Redis::start(dir.path());
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let port = free_port();
    let render_with = |burst: u32| {
        render(
            GLOBAL,
            &[
                ("ECHO", echo.port().to_string()),
                ("GW_PORT", port.to_string()),
                ("BURST", burst.to_string()),
            ],
        )
    };
    std::fs::write(config.join("config.yaml"), render_with(3)).expect("write config");
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let rls = format!("127.0.0.1:{}", free_port());
    let cp = support::xds_mesh::ControlPlaneProcess::start_with_args(
        &config,
        dir.path(),
        &["--ratelimit-redis", &redis_url, "--ratelimit-address", &rls],
    );
    // The replicas serve the same Gateway port, so they run one after the other; what
    // they share is the control plane's service and its Redis.
    let client = client_from("127.0.0.6");
    let mut statuses = Vec::new();
    for replica in ["gw-a", "gw-b"] {
        let gw = support::xds_mesh::XdsGateway::start(
            replica,
            &cp.xds_addr(),
            "istio=ingressgateway",
            "default",
            true,
            dir.path(),
        );
        wait_for_port(port, Duration::from_secs(20));
        for _ in 0..2 {
            statuses.push(get(&client, port, "shop.example.com", "/").await.status);
        }
        drop(gw);
        wait_until(
            "the replica's port is free",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        );
    }
    // One bucket of 3 for this client across both replicas.
    assert_eq!(statuses, [200, 200, 200, 429], "{}", cp.log());
    let other = {
        let gw = support::xds_mesh::XdsGateway::start(
            "gw-c",
            &cp.xds_addr(),
            "istio=ingressgateway",
            "default",
            true,
            dir.path(),
        );
        wait_for_port(port, Duration::from_secs(20));
        let s = get(&client_from("127.0.0.7"), port, "shop.example.com", "/")
            .await
            .status;
        drop(gw);
        s
    };
    assert_eq!(other, 200, "another client has its own bucket");
}

/// A Global limit with no rate-limit service to count it is refused, never served as if
/// absent: the gateway and the control plane do not start on it.
#[test]
fn a_global_policy_without_a_rate_limit_service_is_refused() {
    let dir = TempDir::new();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let text = render(
        GLOBAL,
        &[
            ("ECHO", "9".to_string()),
            ("GW_PORT", free_port().to_string()),
            ("BURST", "2".to_string()),
        ],
    );
    std::fs::write(config.join("config.yaml"), text).expect("write config");
    let exits = |args: &[&str]| -> (bool, String) {
        let err = dir.path().join("stderr");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn meshgate");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        (status.is_some_and(|s| !s.success()), stderr)
    };
    let config = config.to_str().expect("utf-8 path");
    let (failed, stderr) = exits(&[
        "gateway",
        "--config",
        config,
        "--labels",
        "istio=ingressgateway",
        "--admin-address",
        "127.0.0.1:0",
        "--health-address",
        "127.0.0.1:0",
        "--prometheus-address",
        "127.0.0.1:0",
    ]);
    assert!(failed, "the gateway must not start: {stderr}");
    assert!(stderr.contains("--ratelimit-redis"), "{stderr}");
    let (failed, stderr) = exits(&[
        "control-plane",
        "--config",
        config,
        "--xds-addr",
        "127.0.0.1:0",
        "--debug-addr",
        "127.0.0.1:0",
    ]);
    assert!(failed, "the control plane must not start: {stderr}");
    assert!(
        stderr.contains("RateLimitPolicy/default/shared") && stderr.contains("spec.type"),
        "{stderr}"
    );
}
