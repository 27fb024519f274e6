//! Upstream policies side by side with Envoy 1.40: weighted clusters and load balancing
//! (statistically), retries, per-try timeouts, circuit breakers and outlier detection.
mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
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
        let n = 600;
        let w = upstream_counts(port, n, "/w", &[]);
        let share = *w.get("a").unwrap_or(&0) as f64 / n as f64;
        // 70% +- 9%: five standard deviations at n = 600 (sd = sqrt(n p (1-p)) / n = 1.9%),
        // still far from an even split or a single cluster.
        assert!(
            (0.61..=0.79).contains(&share),
            "{who}: weighted share of a = {share} ({w:?})"
        );
        let rr = upstream_counts(port, 300, "/rr", &[]);
        for name in ["a", "b", "c"] {
            let got = *rr.get(name).unwrap_or(&0);
            assert!((90..=110).contains(&got), "{who}: round robin gave {rr:?}");
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
        // Each try times out: 504 with Envoy's text, after two tries.
        let before = a.requests();
        let t = std::time::Instant::now();
        let r = get(port, "x", "/per-try", &[("x-echo-delay-ms", "1000")]);
        assert_eq!(r.status, 504, "{who}");
        assert_eq!(r.body_str(), "upstream request timeout", "{who}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{who}: took {:?}",
            t.elapsed()
        );
        // Let the delayed requests finish before counting.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(a.requests() - before, 2, "{who}: one try and one retry");
    });
}

#[test]
fn circuit_breaker_overflow_like_envoy() {
    let a = EchoUpstream::start("a");
    let make = |port| {
        config(
            port,
            vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "a"}})],
            vec![static_cluster(
                "a",
                &[a.port()],
                json!({"circuit_breakers": {"thresholds": [{"max_connections": 1, "max_pending_requests": 1, "max_requests": 100}]}}),
            )],
        )
    };
    both(make, |who, port| {
        // Three slow requests at once on one connection each: one in flight, one pending,
        // one over the limit.
        let handles: Vec<_> = (0..3)
            .map(|i| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(i * 100));
                    get(port, "x", "/", &[("x-echo-delay-ms", "800")])
                })
            })
            .collect();
        let results: Vec<RawResponse> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            2,
            "{who}: {statuses:?}"
        );
        let overflow = results
            .iter()
            .find(|r| r.status == 503)
            .unwrap_or_else(|| panic!("{who}: no overflow: {statuses:?}"));
        assert_eq!(
            overflow.body_str(),
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "{who}"
        );
    });
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
        // is ejected, then everything goes to the live one.
        let mut failures = 0;
        for _ in 0..6 {
            if get(port, "x", "/", &[]).status != 200 {
                failures += 1;
            }
        }
        assert!(
            (1..=3).contains(&failures),
            "{who}: {failures} failures before ejection"
        );
        for i in 0..20 {
            let r = get(port, "x", "/", &[]);
            assert_eq!(r.status, 200, "{who}: request {i} after ejection");
        }
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
