//! DNS clusters against a DNS server the test controls (tests/support/dns.rs): answers
//! followed within their TTL with `respect_dns_ttl`, not asked again before a long TTL
//! expires, asked every `dns_refresh_rate` without it, and the last good hosts kept while
//! the name server fails, retried on `dns_failure_refresh_rate`. Scenarios marked so
//! run the same resources through Envoy 1.40 too.
mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::dns::{DnsServer, Mode};
use support::gateway::*;
use support::*;

/// Echo servers "a" on 127.0.0.1:P and "b" on 127.0.0.2:P: a DNS answer picks one.
struct Upstreams {
    _a: EchoUpstream,
    _b: EchoUpstream,
    port: u16,
}

fn upstreams() -> Upstreams {
    let a = EchoUpstream::start("a");
    let b = EchoUpstream::start_on(format!("127.0.0.2:{}", a.port()).parse().unwrap(), "b");
    let port = a.port();
    Upstreams { _a: a, _b: b, port }
}

/// The c-ares resolver config Envoy accepts, pointing at the test's DNS server.
fn cares(dns: &DnsServer) -> Value {
    json!({"name": "envoy.network.dns_resolver.cares", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns.addr.port()}}],
        "dns_resolver_options": {"no_default_search_domain": true},
    }})
}

/// A DNS cluster for `host:port` with `extra` fields merged in.
fn dns_cluster(name: &str, ty: &str, host: &str, port: u16, extra: Value) -> Value {
    let mut c = json!({
        "name": name, "type": ty, "connect_timeout": "1s", "dns_lookup_family": "V4_ONLY",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// A listener on `listen` routing `/<cluster>` to each cluster.
fn config(listen: u16, clusters: Vec<Value>) -> Value {
    let routes: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let n = c["name"].as_str().unwrap();
            json!({"match": {"prefix": format!("/{n}")}, "route": {"cluster": n}})
        })
        .collect();
    json!({
        "listeners": [hcm_listener("l", listen, "r", json!({}), vec![])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}],
        "clusters": clusters,
    })
}

/// The echo server that answered `path` ("none" for a non-200 answer).
fn upstream_of(port: u16, path: &str) -> String {
    let r = get(port, "x", path, &[]);
    if r.status != 200 {
        return format!("none ({})", r.status);
    }
    r.echo()["upstream"].as_str().unwrap_or("none").to_string()
}

/// Polls `f` every 50 ms until it holds; returns how long that took. Panics after
/// `timeout`, naming `what`.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A proxy under test: meshgate in process or a real Envoy, with its stats.
enum Proxy {
    Meshgate(Box<InProcess>),
    /// Envoy and the folder holding its config (kept until Envoy stops).
    Envoy(Envoy, #[allow(dead_code)] TempDir),
}

impl Proxy {
    fn start(who: &str, resources: &Value) -> Proxy {
        match who {
            "meshgate" => Proxy::Meshgate(Box::new(InProcess::start(resources))),
            _ => {
                let dir = TempDir::new();
                let envoy = envoy_with(resources, &dir);
                envoy.assert_no_rejections();
                Proxy::Envoy(envoy, dir)
            }
        }
    }

    fn stat(&self, name: &str) -> u64 {
        match self {
            Proxy::Meshgate(m) => m.stat(name),
            Proxy::Envoy(e, _) => e.stat(name),
        }
        .unwrap_or_else(|| panic!("no stat {name}"))
    }
}

const PROXIES: [&str; 2] = ["meshgate", "envoy"];

/// `dns_refresh_rate` where a test proves that something else (a TTL, the failure
/// refresh rate) made the proxy ask again: it must happen well within this.
const REFRESH_RATE: Duration = Duration::from_secs(60);

/// Envoy too: with `respect_dns_ttl` and a 1 s TTL, a changed record is followed within
/// about a second although `dns_refresh_rate` is a minute.
#[test]
fn respect_dns_ttl_follows_a_changed_record_within_its_ttl() {
    let up = upstreams();
    for who in PROXIES {
        let dns = DnsServer::start();
        dns.set("app.test", &["127.0.0.1"], 1);
        let listen = free_port();
        let extra = json!({"respect_dns_ttl": true, "dns_refresh_rate": format!("{}s", REFRESH_RATE.as_secs()), "typed_dns_resolver_config": cares(&dns)});
        let proxy = Proxy::start(
            who,
            &config(
                listen,
                vec![dns_cluster(
                    "strict",
                    "STRICT_DNS",
                    "app.test",
                    up.port,
                    extra,
                )],
            ),
        );
        wait_until(Duration::from_secs(20), "the first answer", || {
            upstream_of(listen, "/strict") == "a"
        });
        // Without the TTL the next question would come after the minute-long refresh
        // rate: a bound of a third of that proves the TTL without timing it.
        dns.set("app.test", &["127.0.0.2"], 1);
        wait_until(REFRESH_RATE / 3, "the new record", || {
            upstream_of(listen, "/strict") == "b"
        });
        // Re-asked by the TTL since, not once a minute.
        let q = dns.queries("app.test");
        wait_until(REFRESH_RATE / 3, "two more queries", || {
            dns.queries("app.test") >= q + 2
        });
        assert!(proxy.stat("cluster.strict.update_attempt") >= 3, "{who}");
        assert!(proxy.stat("cluster.strict.update_success") >= 3, "{who}");
    }
}

/// Envoy too: a 5-minute TTL with `respect_dns_ttl` is not asked again while a cluster
/// without it is asked every `dns_refresh_rate` (500 ms) despite the same TTL; the
/// latter uses the deprecated `dns_resolvers` field.
#[test]
fn long_ttl_is_not_asked_again_and_refresh_rate_applies_without_respect() {
    let up = upstreams();
    for who in PROXIES {
        let dns = DnsServer::start();
        dns.set("long.test", &["127.0.0.1"], 300);
        dns.set("fixed.test", &["127.0.0.1"], 300);
        let listen = free_port();
        let resolvers =
            json!([{"socket_address": {"address": "127.0.0.1", "port_value": dns.addr.port()}}]);
        let proxy = Proxy::start(
            who,
            &config(
                listen,
                vec![
                    dns_cluster(
                        "long",
                        "STRICT_DNS",
                        "long.test",
                        up.port,
                        json!({"respect_dns_ttl": true, "dns_refresh_rate": "0.5s", "typed_dns_resolver_config": cares(&dns)}),
                    ),
                    dns_cluster(
                        "fixed",
                        "STRICT_DNS",
                        "fixed.test",
                        up.port,
                        json!({"respect_dns_ttl": false, "dns_refresh_rate": "0.5s", "dns_resolvers": resolvers}),
                    ),
                ],
            ),
        );
        assert_eq!(upstream_of(listen, "/long"), "a", "{who}");
        assert_eq!(upstream_of(listen, "/fixed"), "a", "{who}");
        let first = dns.queries("fixed.test");
        let took = wait_until(Duration::from_secs(20), "four refreshes", || {
            dns.queries("fixed.test") >= first + 4
        });
        assert!(
            took >= Duration::from_millis(1400),
            "{who}: four 500 ms refreshes in {took:?}"
        );
        assert_eq!(
            dns.queries("long.test"),
            1,
            "{who}: asked again before the TTL"
        );
        assert_eq!(proxy.stat("cluster.long.update_attempt"), 1, "{who}");
        assert!(proxy.stat("cluster.fixed.update_attempt") >= 5, "{who}");
        assert!(proxy.stat("cluster.fixed.update_no_rebuild") >= 4, "{who}");
    }
}

/// Envoy too: while the name server answers SERVFAIL the last hosts keep serving and
/// the name is retried on `dns_failure_refresh_rate` (not the minute-long refresh
/// rate); the next answer is followed.
#[test]
fn failing_resolver_keeps_the_last_hosts_and_retries_on_the_failure_rate() {
    let up = upstreams();
    for who in PROXIES {
        let dns = DnsServer::start();
        dns.set("flaky.test", &["127.0.0.1"], 1);
        let listen = free_port();
        let extra = json!({
            "respect_dns_ttl": true, "dns_refresh_rate": format!("{}s", REFRESH_RATE.as_secs()),
            "dns_failure_refresh_rate": {"base_interval": "0.2s", "max_interval": "0.4s"},
            "typed_dns_resolver_config": cares(&dns),
        });
        let proxy = Proxy::start(
            who,
            &config(
                listen,
                vec![dns_cluster(
                    "flaky",
                    "STRICT_DNS",
                    "flaky.test",
                    up.port,
                    extra,
                )],
            ),
        );
        assert_eq!(upstream_of(listen, "/flaky"), "a", "{who}");
        dns.mode(Mode::ServFail);
        let failures = proxy.stat("cluster.flaky.update_failure");
        // TTL 1 s, then failures at most 400 ms apart (the minute-long refresh rate would
        // not retry within the bound).
        wait_until(REFRESH_RATE / 3, "three failed refreshes", || {
            proxy.stat("cluster.flaky.update_failure") >= failures + 3
        });
        assert_eq!(upstream_of(listen, "/flaky"), "a", "{who}: last hosts kept");
        dns.set("flaky.test", &["127.0.0.2"], 1);
        dns.mode(Mode::Answer);
        wait_until(REFRESH_RATE / 3, "the answer after failures", || {
            upstream_of(listen, "/flaky") == "b"
        });
    }
}

/// A name whose answer loses its addresses leaves a STRICT_DNS cluster without hosts, as in
/// Envoy; a LOGICAL_DNS cluster keeps its host.
#[test]
fn vanished_name_empties_strict_dns_and_keeps_logical_dns() {
    let up = upstreams();
    let dns = DnsServer::start();
    dns.set("gone.test", &["127.0.0.1"], 1);
    let listen = free_port();
    let extra = || {
        json!({"respect_dns_ttl": true, "dns_refresh_rate": "60s", "typed_dns_resolver_config": cares(&dns),
            "dns_failure_refresh_rate": {"base_interval": "0.2s"}})
    };
    let mesh = InProcess::start(&config(
        listen,
        vec![
            dns_cluster("strict", "STRICT_DNS", "gone.test", up.port, extra()),
            dns_cluster("logical", "LOGICAL_DNS", "gone.test", up.port, extra()),
        ],
    ));
    assert_eq!(upstream_of(listen, "/strict"), "a");
    assert_eq!(upstream_of(listen, "/logical"), "a");
    dns.set("gone.test", &[], 1);
    // An empty answer (no address): STRICT_DNS has no host left.
    wait_until(REFRESH_RATE / 3, "the strict cluster emptied", || {
        upstream_of(listen, "/strict") == "none (503)"
    });
    assert_eq!(upstream_of(listen, "/logical"), "a");
    assert!(mesh.stat("cluster.logical.update_failure").unwrap() >= 1);
    // LOGICAL_DNS retries on the failure rate and follows the next address it gets.
    dns.set("gone.test", &["127.0.0.2"], 1);
    wait_until(REFRESH_RATE / 3, "the logical cluster moved", || {
        upstream_of(listen, "/logical") == "b"
    });
    // The empty answer had no TTL: STRICT_DNS waits for dns_refresh_rate (a minute).
    assert_eq!(upstream_of(listen, "/strict"), "none (503)");
}

/// `localhost` (from /etc/hosts or the loopback rule) still resolves, with no name server
/// reachable, and an IP literal in a DNS cluster is used as it is.
#[test]
fn hosts_file_names_and_literals_resolve_without_a_name_server() {
    let up = upstreams();
    let listen = free_port();
    // A name server nobody answers at: nothing may be sent there.
    let silent = DnsServer::start();
    silent.mode(Mode::Silent);
    let extra = json!({"typed_dns_resolver_config": cares(&silent), "respect_dns_ttl": true});
    let _mesh = InProcess::start(&config(
        listen,
        vec![
            dns_cluster("local", "STRICT_DNS", "localhost", up.port, extra.clone()),
            dns_cluster("literal", "LOGICAL_DNS", "127.0.0.2", up.port, extra),
        ],
    ));
    assert_eq!(upstream_of(listen, "/local"), "a");
    assert_eq!(upstream_of(listen, "/literal"), "b");
    assert_eq!(silent.queries("localhost"), 0);
}

/// Resolver options meshgate does not implement are rejected with the field's path.
#[test]
fn unsupported_resolver_options_are_rejected_by_name() {
    let dns = DnsServer::start();
    let mut cfg = cares(&dns);
    cfg["typed_config"]["filter_unroutable_families"] = json!(true);
    let c = dns_cluster(
        "c",
        "STRICT_DNS",
        "app.test",
        80,
        json!({"typed_dns_resolver_config": cfg}),
    );
    let mesh = InProcess::start(&config(free_port(), vec![]));
    let err = mesh
        .apply(&config(free_port(), vec![c]), "2")
        .expect_err("rejected");
    assert!(
        err.contains("typed_dns_resolver_config") && err.contains("filter_unroutable_families"),
        "{err}"
    );
}
