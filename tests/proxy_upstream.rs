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
