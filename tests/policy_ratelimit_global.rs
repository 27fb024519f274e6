//! Global rate limits shared through Redis: meshgate's rate-limit service
//! (`envoy.service.ratelimit.v3.RateLimitService`) on a real `redis-server`, called by
//! meshgate gateway replicas and by real Envoy 1.40 with the same `ratelimit` filter.
//!
//! - the token bucket script in Redis against the reference arithmetic;
//! - two `meshgate gateway` replicas and an Envoy share one limit: across all of them,
//!   exactly the limit is admitted; the 429s are Envoy's;
//! - Redis killed: `failure_mode_deny: false` lets requests through, `true` answers 500
//!   (RLSE) as Envoy does; Redis back: the circuit breaker closes and the limit holds.
mod support;

use meshgate::ratelimit::{
    Check, Limit, LimitTable, LimiterOptions, RateLimitServer, RedisLimiter, ServerOptions,
};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::gateway::{
    GatewayProcess, RawResponse, envoy_with, get, hcm_listener, static_cluster,
};
use support::{EchoUpstream, TempDir, free_port, peer_bin, wait_for_port, wait_until};

const RULE: &str = "default/global/0";

/// A `redis-server` on 127.0.0.1, nothing on disk; killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        Self::start_on(free_port(), dir)
    }

    fn start_on(port: u16, dir: &Path) -> Redis {
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new(peer_bin("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning redis-server");
        wait_for_port(port, Duration::from_secs(10));
        Redis {
            child: Some(child),
            port,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis goes away without a word, as a crashed server does.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh Redis on the same port (empty: nothing was persisted).
    fn restart(&mut self) {
        self.kill();
        let parent = self.dir.parent().unwrap().to_path_buf();
        *self = Redis::start_on(self.port, &parent);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn limit(requests: u64, per: Duration) -> Limit {
    Limit {
        requests,
        per,
        burst: 0,
    }
}

/// The `ratelimit` filter as meshgate's translation configures it.
fn ratelimit_filter(failure_mode_deny: bool) -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "meshgate",
            "failure_mode_deny": failure_mode_deny,
            // Generous for a loaded test machine; the default is Envoy's 20 ms.
            "timeout": "2s",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "meshgate-ratelimit"}},
            },
        },
    })
}

/// Listeners (name, port, failure_mode_deny) sharing one route to `backend`, whose
/// `rate_limits` send the descriptor of rule [`RULE`] per client address and `x-user`
/// (as a RateLimitPolicy with those selectors translates); `meshgate-ratelimit` at `rls`.
/// A request without `x-user` makes no descriptor and is not limited.
fn resources(listeners: &[(&str, u16, bool)], backend: u16, rls: u16) -> Value {
    let route = json!({"name": "rl", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "backend", "rate_limits": [{"actions": [
            {"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": RULE}},
            {"remote_address": {}},
            {"request_headers": {"header_name": "x-user", "descriptor_key": "header:x-user"}}]}]}}]}]});
    json!({
        "listeners": listeners.iter().map(|(n, p, deny)| hcm_listener(n, *p, "rl", json!({}), vec![ratelimit_filter(*deny)])).collect::<Vec<_>>(),
        "routes": [route],
        "clusters": [
            static_cluster("backend", &[backend], json!({})),
            static_cluster("meshgate-ratelimit", &[rls], json!({
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            })),
        ],
    })
}

/// A `meshgate gateway` serving `resources` with its own rate-limit service on `rls`.
fn gateway(
    dir: &Path,
    name: &str,
    resources: &Value,
    redis: &Redis,
    rls: u16,
    limits: &Path,
) -> GatewayProcess {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("resources.json");
    std::fs::write(&file, serde_json::to_string_pretty(resources).unwrap()).unwrap();
    let rls_addr = format!("127.0.0.1:{rls}");
    let url = redis.url();
    let gw = GatewayProcess::start(
        &file,
        &dir,
        &[
            "--ratelimit-redis",
            &url,
            "--ratelimit-address",
            &rls_addr,
            "--ratelimit-limits",
            limits.to_str().unwrap(),
            "--access-log",
            "json",
        ],
    );
    wait_for_port(rls, Duration::from_secs(10));
    gw
}

fn limits_file(dir: &Path, requests: u64, per: &str) -> std::path::PathBuf {
    let path = dir.join("limits.json");
    std::fs::write(
        &path,
        json!({RULE: {"requests": requests, "per": per}}).to_string(),
    )
    .unwrap();
    path
}

/// An in-process rate-limit service (the library's) with a table the test builds.
fn service(redis: &Redis, limits: LimitTable) -> RateLimitServer {
    let s = RateLimitServer::start(ServerOptions {
        redis_url: redis.url(),
        listen: "127.0.0.1:0".parse().unwrap(),
        inherited: None,
        limiter: LimiterOptions::default(),
    })
    .expect("rate-limit service starts");
    s.set_limits(limits);
    s
}

fn table(requests: u64, per: Duration) -> LimitTable {
    LimitTable::from([(RULE.to_string(), limit(requests, per))])
}

/// What must be the same in meshgate's and Envoy's rate-limit answers.
fn shape(r: &RawResponse) -> Value {
    json!({
        "status": r.status,
        "x-envoy-ratelimited": r.header("x-envoy-ratelimited"),
        "x-ratelimit-limit": r.header("x-ratelimit-limit"),
        "x-ratelimit-remaining": r.header("x-ratelimit-remaining"),
        "x-ratelimit-reset": r.header("x-ratelimit-reset").is_some(),
        "content-type": r.header("content-type"),
        "content-length": r.header("content-length"),
        "body": r.body_str(),
    })
}

#[tokio::test]
async fn the_bucket_script_in_redis_matches_the_reference() {
    let dir = TempDir::new();
    let redis = Redis::start(dir.path());
    let limiter = RedisLimiter::new(&redis.url(), LimiterOptions::default()).unwrap();
    let hour = Duration::from_secs(3600);
    let a: &[(&str, &str)] = &[("meshgate.io/rule", "a"), ("remote_address", "10.0.0.1")];
    let b: &[(&str, &str)] = &[("meshgate.io/rule", "b")];
    let check = |entries, requests| Check {
        domain: "meshgate",
        entries,
        limit: limit(requests, hour),
        hits: 1,
    };
    // A fresh bucket admits its capacity at once, counting down; then refuses.
    for want in (0..5).rev() {
        let o = limiter.check(&[check(a, 5)]).await.unwrap();
        assert!(o[0].allowed);
        assert_eq!(o[0].remaining, want);
    }
    let o = limiter.check(&[check(a, 5)]).await.unwrap();
    assert!(!o[0].allowed);
    assert_eq!(o[0].remaining, 0);
    // 5 per hour: the next token in 12 minutes, full again in an hour.
    assert!(
        o[0].retry_after > Duration::from_secs(719) && o[0].retry_after <= Duration::from_secs(720)
    );
    assert!(o[0].reset > Duration::from_secs(3599) && o[0].reset <= hour);
    // The key expires when the bucket would be full again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = limiter.key("meshgate", a);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 3_590_000 && pttl <= 3_600_001, "PTTL {pttl}");
    // All or none: `b` (1 per hour) refuses its second request, and `c` is then not
    // charged for it.
    let c: &[(&str, &str)] = &[("meshgate.io/rule", "c")];
    let o = limiter.check(&[check(c, 10), check(b, 1)]).await.unwrap();
    assert!(o[0].allowed && o[1].allowed);
    assert_eq!(o[0].remaining, 9);
    let o = limiter.check(&[check(c, 10), check(b, 1)]).await.unwrap();
    assert!(o[0].allowed && !o[1].allowed);
    assert_eq!(
        o[0].remaining, 9,
        "not charged when another descriptor refuses"
    );
    let o = limiter.check(&[check(c, 10)]).await.unwrap();
    assert_eq!(o[0].remaining, 8);
    // A limit of zero refuses everything.
    assert!(!limiter.check(&[check(&[("k", "z")], 0)]).await.unwrap()[0].allowed);
}

#[test]
fn two_gateways_and_envoy_share_one_limit() {
    let dir = TempDir::new();
    let redis = Redis::start(dir.path());
    let backend = EchoUpstream::start("backend");
    const LIMIT: u64 = 30;
    let limits = limits_file(dir.path(), LIMIT, "1h");
    let (rls1, rls2) = (free_port(), free_port());
    let (p1, p2, pe) = (free_port(), free_port(), free_port());
    let gw1 = gateway(
        dir.path(),
        "gw1",
        &resources(&[("rl", p1, false)], backend.port(), rls1),
        &redis,
        rls1,
        &limits,
    );
    let gw2 = gateway(
        dir.path(),
        "gw2",
        &resources(&[("rl", p2, false)], backend.port(), rls2),
        &redis,
        rls2,
        &limits,
    );
    let rls = service(&redis, table(LIMIT, Duration::from_secs(3600)));
    let envoy_dir = TempDir::new();
    let envoy = envoy_with(
        &resources(
            &[("rl", pe, false)],
            backend.port(),
            rls.local_addr().port(),
        ),
        &envoy_dir,
    );

    // Three clients at once, each sending 40 requests round-robin over the three proxies.
    let ports = [p1, p2, pe];
    let results: Vec<(u16, RawResponse)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|t| {
                s.spawn(move || {
                    (0..40)
                        .map(|i| {
                            let port = ports[(i + t) % 3];
                            (port, get(port, "example.com", "/", &[("x-user", "alice")]))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let admitted = results.iter().filter(|(_, r)| r.status == 200).count() as u64;
    let limited = results.iter().filter(|(_, r)| r.status == 429).count() as u64;
    assert_eq!(
        admitted + limited,
        120,
        "only 200 and 429: {:?}",
        results.iter().map(|(_, r)| r.status).collect::<Vec<_>>()
    );
    // 30 per hour: one more token comes back every two minutes, so the bound allows one.
    assert!(
        (LIMIT..=LIMIT + 1).contains(&admitted),
        "admitted {admitted} of 120 against a shared limit of {LIMIT}"
    );
    for port in ports {
        assert!(
            results.iter().any(|(p, r)| *p == port && r.status == 200),
            "every proxy admitted some requests (port {port})"
        );
    }
    // meshgate's answers are Envoy's, admitted and refused.
    let from = |port: u16, status: u16| {
        results
            .iter()
            .rev()
            .find(|(p, r)| *p == port && r.status == status)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no {status} from port {port}"))
    };
    let envoy_429 = from(pe, 429);
    assert_eq!(
        envoy_429.header("x-envoy-ratelimited"),
        Some("true"),
        "{envoy_429:?}"
    );
    assert_eq!(envoy_429.header("x-ratelimit-limit"), Some("30, 30;w=3600"));
    for port in [p1, p2] {
        assert_eq!(
            shape(&from(port, 429)),
            shape(&envoy_429),
            "429 from port {port}"
        );
    }
    let envoy_200 = from(pe, 200);
    assert!(
        envoy_200.header("x-ratelimit-remaining").is_some(),
        "{envoy_200:?}"
    );
    let mine = from(p1, 200);
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-reset",
        "x-envoy-ratelimited",
    ] {
        assert_eq!(
            mine.header(h).is_some(),
            envoy_200.header(h).is_some(),
            "{h} on a 200"
        );
    }
    assert_eq!(
        mine.header("x-ratelimit-limit"),
        envoy_200.header("x-ratelimit-limit")
    );
    // The bucket is alice's: bob has his own, and a request without `x-user` makes no
    // descriptor. Envoy and meshgate make the same descriptors (they share buckets).
    for port in ports {
        assert_eq!(
            get(port, "example.com", "/", &[("x-user", "bob")]).status,
            200
        );
        let plain = get(port, "example.com", "/", &[]);
        assert_eq!(plain.status, 200);
        assert_eq!(
            plain.header("x-ratelimit-limit"),
            None,
            "no call, no headers"
        );
        assert_eq!(
            get(port, "example.com", "/", &[("x-user", "alice")]).status,
            429
        );
    }
    // The access log says RL for the refused ones (written by the log's own thread:
    // waited for, boundedly).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw1.stdout().contains("\"response_flags\":\"RL\"")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw1.stdout();
    assert!(log.contains("\"response_flags\":\"RL\""), "{log}");
    drop((gw1, gw2, envoy));
}

#[test]
fn redis_down_fails_open_or_closed_and_the_breaker_recovers() {
    let dir = TempDir::new();
    let mut redis = Redis::start(dir.path());
    let backend = EchoUpstream::start("backend");
    const LIMIT: u64 = 20;
    let limits = limits_file(dir.path(), LIMIT, "1h");
    let rls_port = free_port();
    let (open, closed) = (free_port(), free_port());
    let (e_open, e_closed) = (free_port(), free_port());
    let gw = gateway(
        dir.path(),
        "gw",
        &resources(
            &[("open", open, false), ("closed", closed, true)],
            backend.port(),
            rls_port,
        ),
        &redis,
        rls_port,
        &limits,
    );
    let rls = service(&redis, table(LIMIT, Duration::from_secs(3600)));
    let envoy_dir = TempDir::new();
    let envoy = envoy_with(
        &resources(
            &[("open", e_open, false), ("closed", e_closed, true)],
            backend.port(),
            rls.local_addr().port(),
        ),
        &envoy_dir,
    );
    let ask = |port| get(port, "example.com", "/", &[("x-user", "alice")]);
    for port in [open, closed, e_open, e_closed] {
        assert_eq!(ask(port).status, 200, "Redis up, port {port}");
    }

    redis.kill();
    // Fail open: the request goes on. Fail closed: Envoy's 500.
    for _ in 0..5 {
        assert_eq!(ask(open).status, 200);
        assert_eq!(ask(e_open).status, 200);
    }
    let envoy_500 = ask(e_closed);
    assert_eq!(envoy_500.status, 500, "{envoy_500:?}");
    let mine = ask(closed);
    assert_eq!(shape(&mine), shape(&envoy_500));
    let envoy_allowed = ask(e_open);
    let mine_allowed = ask(open);
    assert_eq!(
        mine_allowed.header("x-envoy-ratelimited"),
        envoy_allowed.header("x-envoy-ratelimited"),
        "fail-open answers"
    );
    // The breaker is open now: answers come at once, not after a Redis timeout.
    let t = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(ask(closed).status, 500);
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "fail fast: {:?}",
        t.elapsed()
    );
    wait_until("the access log says RLSE", Duration::from_secs(5), || {
        gw.stdout().contains("\"response_flags\":\"RLSE\"")
    });

    // Redis back (empty): within the breaker's back-off the limit is enforced again,
    // from a full bucket shared by both proxies.
    redis.restart();
    wait_until(
        "meshgate admits again after Redis restarts",
        Duration::from_secs(20),
        || ask(closed).status == 200,
    );
    wait_until(
        "Envoy's service admits again",
        Duration::from_secs(20),
        || ask(e_closed).status == 200,
    );
    let statuses: Vec<u16> = (0..LIMIT + 5)
        .map(|i| ask(if i % 2 == 0 { closed } else { e_closed }).status)
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // The two requests that saw the service back took a token each.
    assert!((LIMIT - 2..=LIMIT - 1).contains(&admitted), "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429, 429]), "{statuses:?}");
    drop((gw, envoy));
}

/// A descriptor of `rule` (and `extra` entries) for `ShouldRateLimit`.
fn descriptor(
    rule: &str,
    extra: &[(&str, &str)],
) -> meshgate::xds::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
    use meshgate::xds::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    let mut entries = vec![Entry {
        key: "meshgate.io/rule".into(),
        value: rule.into(),
    }];
    entries.extend(extra.iter().map(|(k, v)| Entry {
        key: k.to_string(),
        value: v.to_string(),
    }));
    meshgate::xds::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
        entries,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_control_plane_serves_the_rate_limit_service() {
    use meshgate::xds::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use meshgate::xds::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        Code, rate_limit::Unit,
    };
    use meshgate::xds::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    let dir = TempDir::new();
    let mut redis = Redis::start(dir.path());
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("gateway.yaml"),
        support::gateway::istio_http_gateway("edge", 8080),
    )
    .unwrap();
    let limits = limits_file(dir.path(), 3, "1h");
    let rls = free_port();
    let mut cp = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["control-plane", "--config"])
        .arg(&config)
        .args(["--xds-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .args(["--ratelimit-redis", &redis.url()])
        .args(["--ratelimit-address", &format!("127.0.0.1:{rls}")])
        .arg("--ratelimit-limits")
        .arg(&limits)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("cp.stderr")).unwrap())
        .spawn()
        .expect("spawn meshgate control-plane");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _cp = Kill(&mut cp);
    wait_for_port(rls, Duration::from_secs(20));
    let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{rls}"))
        .await
        .expect("connect to the rate-limit service");
    let ask = |descriptors, domain: &str| RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    };
    // Three per hour for each client address; the fourth is over the limit.
    for remaining in (0..3).rev() {
        let r = client
            .should_rate_limit(ask(
                vec![descriptor(RULE, &[("remote_address", "10.0.0.1")])],
                "meshgate",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!(s.limit_remaining, remaining);
        let l = s.current_limit.as_ref().unwrap();
        assert_eq!((l.requests_per_unit, l.unit), (3, Unit::Hour as i32));
    }
    let r = client
        .should_rate_limit(ask(
            vec![
                descriptor("default/unknown/0", &[]),
                descriptor(RULE, &[("remote_address", "10.0.0.1")]),
            ],
            "meshgate",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    // An unconfigured descriptor: OK, no limit.
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    assert!(r.statuses[0].current_limit.is_none());
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    let reset = r.statuses[1].duration_until_reset.unwrap();
    assert!((3590..=3600).contains(&reset.seconds), "{reset:?}");
    // Another client has its own bucket; another domain has no limits.
    let r = client
        .should_rate_limit(ask(
            vec![descriptor(RULE, &[("remote_address", "10.0.0.2")])],
            "meshgate",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = client
        .should_rate_limit(ask(
            vec![descriptor(RULE, &[("remote_address", "10.0.0.1")])],
            "other",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    // Redis gone: an error the proxy's failure_mode_deny decides on.
    redis.kill();
    let e = client
        .should_rate_limit(ask(
            vec![descriptor(RULE, &[("remote_address", "10.0.0.3")])],
            "meshgate",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

#[test]
fn virtual_host_rate_limits_and_per_route_options_as_envoy() {
    let dir = TempDir::new();
    let redis = Redis::start(dir.path());
    let backend = EchoUpstream::start("backend");
    let rule = |id: &str| json!({"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": id}});
    let path = json!({"request_headers": {"header_name": ":path", "descriptor_key": "path"}});
    let route = |prefix: &str, extra: Value| {
        let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "backend"}});
        for (k, v) in extra.as_object().unwrap() {
            if k == "typed_per_filter_config" {
                r[k] = v.clone();
            } else {
                r["route"][k] = v.clone();
            }
        }
        r
    };
    let route_limit = json!([{"actions": [rule("route"), path.clone()]}]);
    let per_route = |options: Value| {
        let mut c = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"});
        for (k, v) in options.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"envoy.filters.http.ratelimit": c})
    };
    let config = |listener: u16, rls: u16| {
        let mut r = resources(&[("rl", listener, true)], backend.port(), rls);
        r["routes"] = json!([{"name": "rl", "virtual_hosts": [{"name": "all", "domains": ["*"],
        "rate_limits": [{"actions": [rule("vh"), path.clone()]}],
        "routes": [
            route("/override", json!({"rate_limits": route_limit})),
            route("/include", json!({"rate_limits": route_limit, "include_vh_rate_limits": true})),
            route("/vh-only", json!({})),
            route("/ignore", json!({"typed_per_filter_config": per_route(json!({"vh_rate_limits": "IGNORE"}))})),
            route("/own", json!({"rate_limits": route_limit, "typed_per_filter_config": per_route(json!({
                "rate_limits": [{"actions": [rule("vh"), {"generic_key": {"descriptor_value": "own"}}]}]}))})),
        ]}]}]);
        r
    };
    // One bucket per path for rule "vh" (1 per hour), a roomy one for "route"; meshgate
    // and Envoy each get their own service, with their own keys in the same Redis.
    let limits = LimitTable::from([
        ("vh".to_string(), limit(1, Duration::from_secs(3600))),
        ("route".to_string(), limit(100, Duration::from_secs(3600))),
    ]);
    let start = |prefix: &str| {
        let s = RateLimitServer::start(ServerOptions {
            redis_url: redis.url(),
            listen: "127.0.0.1:0".parse().unwrap(),
            inherited: None,
            limiter: LimiterOptions {
                key_prefix: prefix.into(),
                ..Default::default()
            },
        })
        .unwrap();
        s.set_limits(limits.clone());
        s
    };
    let (mine_rls, envoy_rls) = (start("meshgate-test"), start("envoy-test"));
    let (mine, theirs) = (free_port(), free_port());
    let gw = support::gateway::InProcess::start(&config(mine, mine_rls.local_addr().port()));
    let envoy_dir = TempDir::new();
    let envoy = envoy_with(&config(theirs, envoy_rls.local_addr().port()), &envoy_dir);
    let statuses = |port: u16| -> Vec<(&str, Vec<u16>)> {
        ["/override", "/include", "/vh-only", "/ignore", "/own"]
            .into_iter()
            .map(|p| {
                (
                    p,
                    (0..2)
                        .map(|_| get(port, "example.com", p, &[]).status)
                        .collect(),
                )
            })
            .collect()
    };
    let got = statuses(mine);
    assert_eq!(got, statuses(theirs), "meshgate (left) and Envoy (right)");
    // The virtual host's limit applies where Envoy applies it.
    assert_eq!(
        got,
        vec![
            ("/override", vec![200, 200]),
            ("/include", vec![200, 429]),
            ("/vh-only", vec![200, 429]),
            ("/ignore", vec![200, 200]),
            ("/own", vec![200, 429]),
        ]
    );
    drop((gw, envoy));
}
