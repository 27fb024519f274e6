//! Upstream policies side by side with Envoy 1.40: weighted clusters and load balancing
//! (statistically), retries, per-try timeouts, circuit breakers and outlier detection.
mod support;

use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use support::gateway::*;
use support::*;

fn routes(vhost_routes: Vec<Value>) -> Value {
    json!([{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": vhost_routes}]}])
}

fn config(listen: u16, route_list: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "listeners": [hcm_listener("l", listen, "r", json!({"use_remote_address": true}), vec![])],
        "routes": routes(route_list),
        "clusters": clusters,
    })
}

/// Runs `f` against Envoy and meshgate serving `make(port)`.
fn both(make: impl Fn(u16) -> Value, mut f: impl FnMut(&str, u16)) {
    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = envoy_with(&make(envoy_port), &dir);
    envoy.assert_no_rejections();
    f("envoy", envoy_port);
    let mesh_port = free_port();
    let _mesh = InProcess::start(&make(mesh_port));
    f("meshgate", mesh_port);
}

fn upstream_counts(
    port: u16,
    n: usize,
    path: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = get(port, "x", path, extra);
        let name = r.echo()["upstream"].as_str().unwrap_or("none").to_string();
        *out.entry(name).or_default() += 1;
    }
    out
}

#[test]
fn weighted_clusters_and_round_robin_like_envoy() {
    let (a, b, c) = (
        EchoUpstream::start("a"),
        EchoUpstream::start("b"),
        EchoUpstream::start("c"),
    );
    let make = |port| {
        config(
            port,
            vec![
                json!({"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 70}, {"name": "b", "weight": 30}]}}}),
                json!({"match": {"prefix": "/rr"}, "route": {"cluster": "abc"}}),
            ],
            vec![
                static_cluster("a", &[a.port()], json!({})),
                static_cluster("b", &[b.port()], json!({})),
                static_cluster(
                    "abc",
                    &[a.port(), b.port(), c.port()],
                    json!({"lb_policy": "ROUND_ROBIN"}),
                ),
            ],
        )
    };
    both(make, |who, port| {
        // 70/30 within five standard deviations (n = 600: 420 ± 56), which an even split
        // or a single cluster falls outside of.
        let n = 600;
        let w = upstream_counts(port, n, "/w", &[]);
        let to_a = *w.get("a").unwrap_or(&0);
        assert_binomial(
            &format!("{who}: to a at weight 70 ({w:?})"),
            to_a,
            n,
            0.7,
            &[0.5, 1.0],
        );
        // Round robin over three hosts (one worker): every three requests in a row go to
        // three different hosts, in the same order each time; a random pick would not.
        let order: Vec<String> = (0..30)
            .map(|_| {
                get(port, "x", "/rr", &[]).echo()["upstream"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string()
            })
            .collect();
        let first: BTreeSet<&String> = order[..3].iter().collect();
        assert_eq!(first.len(), 3, "{who}: round robin order {order:?}");
        for (i, name) in order.iter().enumerate() {
            assert_eq!(name, &order[i % 3], "{who}: round robin order {order:?}");
        }
    });
}

#[test]
fn consistent_hash_on_header_sticks_like_envoy() {
    let (a, b, c) = (
        EchoUpstream::start("a"),
        EchoUpstream::start("b"),
        EchoUpstream::start("c"),
    );
    let make = |port| {
        config(
            port,
            vec![
                json!({"match": {"prefix": "/"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": "x-user"}}]}}),
            ],
            vec![static_cluster(
                "ring",
                &[a.port(), b.port(), c.port()],
                json!({"lb_policy": "RING_HASH"}),
            )],
        )
    };
    both(make, |who, port| {
        let mut seen = HashMap::new();
        for user in 0..30 {
            let key = format!("user-{user}");
            let first = get(port, "x", "/", &[("x-user", &key)]).echo()["upstream"]
                .as_str()
                .unwrap()
                .to_string();
            for _ in 0..3 {
                let again = get(port, "x", "/", &[("x-user", &key)]).echo()["upstream"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert_eq!(first, again, "{who}: {key} moved");
            }
            *seen.entry(first).or_insert(0) += 1;
        }
        assert!(
            seen.len() >= 2,
            "{who}: 30 keys all hashed to one host: {seen:?}"
        );
    });
}

#[test]
fn retries_and_timeouts_like_envoy() {
    let a = EchoUpstream::start("a");
    let make = |port| {
        config(
            port,
            vec![
                json!({"match": {"prefix": "/retry"}, "route": {"cluster": "a", "retry_policy": {"retry_on": "5xx", "num_retries": 2}}}),
                json!({"match": {"prefix": "/codes"}, "route": {"cluster": "a", "retry_policy": {"retry_on": "retriable-status-codes", "num_retries": 1, "retriable_status_codes": [418]}}}),
                json!({"match": {"prefix": "/per-try"}, "route": {"cluster": "a", "timeout": "5s", "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s"}}}),
            ],
            vec![static_cluster("a", &[a.port()], json!({}))],
        )
    };
    let mut round = 0;
    both(make, |who, port| {
        round += 1;
        // Two failures, then success: the client sees 200 after two retries.
        let key = format!("{who}-{round}-two");
        let r = get(
            port,
            "x",
            "/retry",
            &[("x-echo-fail-first", "2"), ("x-echo-fail-key", &key)],
        );
        assert_eq!(r.status, 200, "{who}: {r:?}");
        // Three failures: retries exhausted, the upstream's own 503 comes back.
        let key = format!("{who}-{round}-three");
        let r = get(
            port,
            "x",
            "/retry",
            &[("x-echo-fail-first", "3"), ("x-echo-fail-key", &key)],
        );
        assert_eq!(r.status, 503, "{who}");
        assert_eq!(
            r.echo()["upstream"],
            "a",
            "{who}: the upstream's body passes through"
        );
        // Only listed codes are retried.
        let r = get(port, "x", "/codes", &[("x-echo-status", "418")]);
        assert_eq!(r.status, 418, "{who}");
        // Each try times out (the upstream would answer 200 after 1 s, within the route's
        // 5 s): 504 with Envoy's text, after two tries, each counted when it arrived.
        let before = a.requests();
        let r = get(port, "x", "/per-try", &[("x-echo-delay-ms", "1000")]);
        assert_eq!(r.status, 504, "{who}");
        assert_eq!(r.body_str(), "upstream request timeout", "{who}");
        assert_eq!(a.requests() - before, 2, "{who}: one try and one retry");
    });
}

#[test]
fn circuit_breaker_overflow_like_envoy() {
    let make = |port, upstream: u16| {
        config(
            port,
            vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "0s"}})],
            vec![static_cluster(
                "a",
                &[upstream],
                json!({"circuit_breakers": {"thresholds": [{"max_connections": 1, "max_pending_requests": 1, "max_requests": 100}]}}),
            )],
        )
    };
    // Each side gets its own upstream that holds its answers until released.
    let (mesh_held, envoy_held) = (HeldUpstream::start(), HeldUpstream::start());
    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = envoy_with(&make(envoy_port, envoy_held.port), &dir);
    envoy.assert_no_rejections();
    let mesh_port = free_port();
    let mesh = InProcess::start(&make(mesh_port, mesh_held.port));
    let mesh_stat = |name: &str| mesh.stat(name);
    let envoy_stat = |name: &str| envoy.stat(name);
    type Stat<'a> = &'a dyn Fn(&str) -> Option<u64>;
    let sides: [(&str, u16, &HeldUpstream, Stat); 2] = [
        ("meshgate", mesh_port, &mesh_held, &mesh_stat),
        ("envoy", envoy_port, &envoy_held, &envoy_stat),
    ];
    for (who, port, held, stat) in sides {
        // One request in flight on the only connection (held at the upstream)...
        let first = std::thread::spawn(move || get(port, "x", "/1", &[]));
        wait_until(
            "the first request at the upstream",
            Duration::from_secs(10),
            || held.arrived() == 1,
        );
        // ...one waiting for it...
        let pending = || stat("cluster.a.upstream_rq_pending_total").unwrap_or(0);
        let before = pending();
        let second = std::thread::spawn(move || get(port, "x", "/2", &[]));
        wait_until(
            "the second request pending",
            Duration::from_secs(10),
            || pending() > before,
        );
        // ...and a third over max_pending_requests, refused at once.
        let third = get(port, "x", "/3", &[]);
        assert_eq!(third.status, 503, "{who}");
        assert_eq!(
            third.body_str(),
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "{who}"
        );
        held.release();
        for (which, r) in [
            ("first", first.join().unwrap()),
            ("second", second.join().unwrap()),
        ] {
            assert_eq!(
                (r.status, r.body_str().as_str()),
                (200, "held"),
                "{who}: the {which} request"
            );
        }
        assert_eq!(held.arrived(), 2, "{who}");
    }
}

#[test]
fn outlier_detection_ejects_a_dead_host_like_envoy() {
    let a = EchoUpstream::start("a");
    let dead = free_port();
    let make = |port| {
        config(
            port,
            vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}})],
            vec![static_cluster(
                "a",
                &[a.port(), dead],
                json!({"outlier_detection": {"consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s",
                    "max_ejection_percent": 100, "enforcing_success_rate": 0}}),
            )],
        )
    };
    both(make, |who, port| {
        // Round robin alternates; connect failures to the dead host count as 5xx until it
        // is ejected, then everything goes to the live one. Envoy ejects on its main
        // thread, after the worker reports the second failure, so on a busy machine one
        // more request may still reach the dead host.
        let statuses: Vec<u16> = (0..26).map(|_| get(port, "x", "/", &[]).status).collect();
        let failures = statuses.iter().filter(|s| **s != 200).count();
        assert!(
            (1..=4).contains(&failures),
            "{who}: {failures} failures before ejection: {statuses:?}"
        );
        assert!(
            statuses[12..].iter().all(|s| *s == 200),
            "{who}: a request failed after ejection: {statuses:?}"
        );
    });
}

#[test]
fn clusters_admin_shows_ejection() {
    let a = EchoUpstream::start("a");
    let dead = free_port();
    let port = free_port();
    let mesh = InProcess::start(&config(
        port,
        vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}})],
        vec![static_cluster(
            "a",
            &[a.port(), dead],
            json!({"outlier_detection": {"consecutive_5xx": 1, "max_ejection_percent": 100, "enforcing_success_rate": 0}}),
        )],
    ));
    for _ in 0..4 {
        get(port, "x", "/", &[]);
    }
    let (status, body) = mesh.admin("/clusters");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!(
            "a::127.0.0.1:{dead}::health_flags::/failed_outlier_check"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!("a::127.0.0.1:{}::health_flags::healthy", a.port())),
        "{body}"
    );
    assert_eq!(
        mesh.stat("cluster.a.outlier_detection.ejections_enforced_total"),
        Some(1)
    );
    assert!(mesh.stat("cluster.a.upstream_cx_connect_fail").unwrap() >= 1);
}

#[test]
fn dns_clusters_resolve_like_envoy() {
    let a = EchoUpstream::start("a");
    let make = |port| {
        let dns = |name: &str, ty: &str| {
            json!({"name": name, "type": ty, "connect_timeout": "1s", "dns_lookup_family": "V4_ONLY", "dns_refresh_rate": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": a.port()}}}}]}]}})
        };
        config(
            port,
            vec![
                json!({"match": {"prefix": "/strict"}, "route": {"cluster": "strict", "auto_host_rewrite": true}}),
                json!({"match": {"prefix": "/logical"}, "route": {"cluster": "logical"}}),
            ],
            vec![dns("strict", "STRICT_DNS"), dns("logical", "LOGICAL_DNS")],
        )
    };
    both(make, |who, port| {
        let r = get(port, "x", "/strict", &[]);
        assert_eq!(r.status, 200, "{who}: {r:?}");
        assert_eq!(
            r.echo()["headers"]["host"][0],
            "localhost",
            "{who}: auto_host_rewrite uses the DNS name"
        );
        assert_eq!(get(port, "x", "/logical", &[]).status, 200, "{who}");
    });
}

/// Retry budgets: a budget replaces max_retries (here 0) as the bound on concurrent
/// retries, `max(budget_percent × (active + pending requests), min_retry_concurrency)`.
/// Every upstream attempt is counted at the upstream; each answer says how many attempts
/// it took (`x-envoy-attempt-count`).
#[test]
fn retry_budget_bounds_concurrent_retries_like_envoy() {
    let a = EchoUpstream::start("a");
    let retry = json!({"retry_on": "5xx", "num_retries": 1});
    let make = |port| {
        let mut c = config(
            port,
            vec![
                json!({"match": {"prefix": "/plain"}, "route": {"cluster": "plain", "retry_policy": retry}}),
                json!({"match": {"prefix": "/floor"}, "route": {"cluster": "floor", "retry_policy": retry}}),
                json!({"match": {"prefix": "/share"}, "route": {"cluster": "share", "retry_policy": retry}}),
            ],
            vec![
                static_cluster(
                    "plain",
                    &[a.port()],
                    json!({"circuit_breakers": {"thresholds": [{"max_retries": 0}]}}),
                ),
                // No share at all: only the minimum concurrency of two.
                static_cluster(
                    "floor",
                    &[a.port()],
                    json!({"circuit_breakers": {"thresholds": [{"max_retries": 0,
                        "retry_budget": {"budget_percent": {"value": 0}, "min_retry_concurrency": 2}}]}}),
                ),
                // No minimum: a quarter of the active requests.
                static_cluster(
                    "share",
                    &[a.port()],
                    json!({"circuit_breakers": {"thresholds": [{"max_retries": 0,
                        "retry_budget": {"budget_percent": {"value": 25}, "min_retry_concurrency": 0}}]}}),
                ),
            ],
        );
        c["routes"][0]["virtual_hosts"][0]["include_attempt_count_in_response"] = json!(true);
        c
    };
    let attempts = |r: &RawResponse| -> u32 {
        r.header("x-envoy-attempt-count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // `n` requests failing after `delay_ms`, the i-th sent `i × stagger_ms` after the
    // first; answers in sending order.
    let failing = |port: u16, path: &'static str, n: u64, delay_ms: u64, stagger_ms: u64| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(i * stagger_ms));
                    get(
                        port,
                        "x",
                        path,
                        &[
                            ("x-echo-status", "503"),
                            ("x-echo-delay-ms", &delay_ms.to_string()),
                        ],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<RawResponse>>()
    };
    let run = |who: &str, port: u16, stat: &dyn Fn(&str) -> Option<u64>| {
        // max_retries 0 without a budget: no retry.
        let before = a.requests();
        let r = get(port, "x", "/plain", &[("x-echo-status", "503")]);
        assert_eq!((r.status, attempts(&r)), (503, 1), "{who}");
        assert_eq!(a.requests() - before, 1, "{who}");
        assert_eq!(
            stat("cluster.plain.upstream_rq_retry_overflow"),
            Some(1),
            "{who}"
        );
        // With a budget max_retries is ignored: one request alone is retried.
        let before = a.requests();
        let r = get(port, "x", "/floor", &[("x-echo-status", "503")]);
        assert_eq!((r.status, attempts(&r)), (503, 2), "{who}");
        assert_eq!(a.requests() - before, 2, "{who}");

        // Five failing at once under a floor of two: two retried, three not.
        let before = a.requests();
        let answers = failing(port, "/floor", 5, 800, 0);
        let mut counts: Vec<u32> = answers.iter().map(attempts).collect();
        counts.sort();
        assert_eq!(counts, vec![1, 1, 1, 2, 2], "{who}");
        assert!(answers.iter().all(|r| r.status == 503), "{who}");
        assert_eq!(
            a.requests() - before,
            7,
            "{who}: five tries and two retries"
        );
        assert_eq!(
            stat("cluster.floor.upstream_rq_retry_overflow"),
            Some(3),
            "{who}"
        );
        assert_eq!(stat("cluster.floor.upstream_rq_retry"), Some(3), "{who}");

        // A quarter of the active requests: eight slow successful requests hold the
        // load, then four failing ones fail 250 ms apart, each retry outliving the
        // next decision. Every decision sees 8 + 4 active requests (the deciding one's
        // answered attempt included): three retries, the fourth refused.
        let before = a.requests();
        let holders: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || get(port, "x", "/share", &[("x-echo-delay-ms", "4000")]))
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while a.requests() - before < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "{who}: holders not upstream"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let answers = failing(port, "/share", 4, 1000, 250);
        let counts: Vec<u32> = answers.iter().map(attempts).collect();
        assert_eq!(counts, vec![2, 2, 2, 1], "{who}");
        for h in holders {
            assert_eq!(h.join().unwrap().status, 200, "{who}");
        }
        assert_eq!(a.requests() - before, 8 + 4 + 3, "{who}");
        assert_eq!(
            stat("cluster.share.upstream_rq_retry_overflow"),
            Some(1),
            "{who}"
        );
        assert_eq!(stat("cluster.share.upstream_rq_retry"), Some(3), "{who}");
    };

    let dir = TempDir::new();
    let envoy_port = free_port();
    let envoy = envoy_with(&make(envoy_port), &dir);
    envoy.assert_no_rejections();
    run("envoy", envoy_port, &|name| envoy.stat(name));
    drop(envoy);
    let mesh_port = free_port();
    let mesh = InProcess::start(&make(mesh_port));
    run("meshgate", mesh_port, &|name| mesh.stat(name));
}

/// Hash policies on pseudo-headers (`:authority`, `:path` with its query): each value
/// sticks to one host, values spread over the hosts, and both proxies pick the same host
/// for the same value.
#[test]
fn consistent_hash_on_pseudo_headers_like_envoy() {
    let (a, b, c) = (
        EchoUpstream::start("a"),
        EchoUpstream::start("b"),
        EchoUpstream::start("c"),
    );
    let make = |port| {
        config(
            port,
            vec![
                json!({"match": {"prefix": "/auth"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": ":authority"}}]}}),
                json!({"match": {"prefix": "/host"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": "Host"}}]}}),
                json!({"match": {"prefix": "/path"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": ":path"}}]}}),
            ],
            vec![static_cluster(
                "ring",
                &[a.port(), b.port(), c.port()],
                json!({"lb_policy": "RING_HASH"}),
            )],
        )
    };
    let mut choices: Vec<Vec<String>> = Vec::new();
    both(make, |who, port| {
        let upstream = |host: &str, path: &str| {
            get(port, host, path, &[]).echo()["upstream"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        };
        let mut mine = Vec::new();
        for (kind, i) in (0..20).flat_map(|i| [("auth", i), ("host", i), ("path", i)]) {
            let (host, path) = match kind {
                "path" => ("x".to_string(), format!("/path/{i}?q={i}")),
                _ => (format!("h{i}.example.com"), format!("/{kind}")),
            };
            let first = upstream(&host, &path);
            for _ in 0..2 {
                assert_eq!(upstream(&host, &path), first, "{who}: {host}{path} moved");
            }
            mine.push(first);
        }
        for kind in 0..3 {
            let hosts: std::collections::HashSet<&String> =
                mine.iter().skip(kind).step_by(3).collect();
            assert!(
                hosts.len() >= 2,
                "{who}: one host for every value: {mine:?}"
            );
        }
        // `host` and `:authority` are the same value.
        for i in 0..20 {
            assert_eq!(
                mine[3 * i],
                mine[3 * i + 1],
                "{who}: host and :authority differ"
            );
        }
        choices.push(mine);
    });
    assert_eq!(choices[0], choices[1], "envoy, then meshgate");
}
