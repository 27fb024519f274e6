//! The gateway's status page (`/` and `/status` on the admin port): listeners and their
//! filter chains with TLS and certificate expiry, routes, clusters with endpoints,
//! health and request rates, the xDS connection when a control plane configures the
//! gateway, and the secrets held. Server-rendered from the running snapshot, the TLS
//! store and the counters (rates from [`super::rates`]); nothing is kept for it but the
//! counter samples.
use crate::html::{self, Page, Tone, badge, escape, lines, muted, table, tiles, when};
use crate::proxy::listener::{ChainAction, FilterChain, TransportProtocol};
use crate::proxy::rates::{Measured, Rate};
use crate::proxy::runtime::Shared;
use crate::proxy::tcp::TcpClusters;
use crate::tls::server::ClientAuth;
use crate::xds::pb::envoy::config::route::v3 as route;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

/// Certificates expiring sooner than this are shown as a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

fn rate_cells(r: Option<&Rate>) -> [String; 3] {
    match r {
        None => [muted("—"), muted("—"), muted("—")],
        Some(r) => {
            let errors = match r.error_ratio {
                None => muted("—"),
                Some(e) if e > 0.05 => badge(Tone::Bad, &format!("{:.1}%", e * 100.0)),
                Some(e) if e > 0.0 => badge(Tone::Warn, &format!("{:.1}%", e * 100.0)),
                Some(_) => "0%".to_string(),
            };
            [
                format!("{:.2}", r.rps),
                format!("{:.2}", r.errors_ps),
                errors,
            ]
        }
    }
}

/// An expiry: when, and a badge if close or past.
fn expiry(not_after: SystemTime, now: SystemTime) -> String {
    match not_after.duration_since(now) {
        Err(_) => format!(
            "{} {}",
            badge(Tone::Bad, "expired"),
            muted(&html::utc(not_after))
        ),
        Ok(left) => {
            let tone = if left < EXPIRY_WARNING {
                Tone::Warn
            } else {
                Tone::Good
            };
            format!(
                "{}<br>{}",
                badge(tone, &format!("in {}", html::duration(left.as_secs()))),
                muted(&html::utc(not_after))
            )
        }
    }
}

fn chain_tls(shared: &Shared, chain: &FilterChain, now: SystemTime) -> (String, String) {
    match &chain.tls {
        Some(tls) => {
            let mode = match tls.client_auth {
                ClientAuth::None => "terminate (SIMPLE)",
                ClientAuth::Optional => "terminate (OPTIONAL_MUTUAL)",
                ClientAuth::Required => "terminate (MUTUAL)",
            };
            let certs: Vec<String> = tls
                .certificate_secrets()
                .map(|name| match shared.tls.store.current_certificate(name) {
                    Some(m) => format!(
                        "<span class=\"mono\">{}</span> {}",
                        escape(name),
                        expiry(m.leaf.not_after, now)
                    ),
                    None => format!(
                        "<span class=\"mono\">{}</span> {}",
                        escape(name),
                        badge(Tone::Bad, "no material")
                    ),
                })
                .collect();
            (
                badge(Tone::Good, mode),
                if certs.is_empty() {
                    muted("inline")
                } else {
                    certs.join("<br>")
                },
            )
        }
        None if chain.matcher.transport_protocol == Some(TransportProtocol::Tls) => {
            (badge(Tone::Neutral, "passthrough"), muted("—"))
        }
        None => (escape("plaintext"), muted("—")),
    }
}

fn chain_target(chain: &FilterChain) -> String {
    match &chain.action {
        ChainAction::Http(h) => format!(
            "HTTP → routes <span class=\"mono\">{}</span>",
            escape(&h.routes.name)
        ),
        ChainAction::Tcp(t) => match &t.clusters {
            TcpClusters::One(c) => format!("TCP → <span class=\"mono\">{}</span>", escape(c)),
            TcpClusters::Weighted(cs, total) => {
                let parts: Vec<String> = cs
                    .iter()
                    .map(|(c, w)| {
                        format!(
                            "<span class=\"mono\">{}</span> {}",
                            escape(c),
                            badge(
                                Tone::Neutral,
                                &format!("{:.0}%", *w as f64 * 100.0 / (*total).max(1) as f64)
                            )
                        )
                    })
                    .collect();
                format!("TCP → {}", parts.join("<br>"))
            }
        },
    }
}

fn path_match(m: Option<&route::RouteMatch>) -> String {
    use route::route_match::PathSpecifier;
    let Some(m) = m else {
        return String::new();
    };
    let mut parts = vec![match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => format!("prefix {p}"),
        Some(PathSpecifier::Path(p)) => format!("path {p}"),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("path prefix {p}"),
        Some(PathSpecifier::ConnectMatcher(_)) => "CONNECT".to_string(),
        Some(PathSpecifier::PathMatchPolicy(_)) => "path template".to_string(),
        None => "any".to_string(),
    }];
    for h in &m.headers {
        parts.push(format!("header {}", h.name));
    }
    for q in &m.query_parameters {
        parts.push(format!("query {}", q.name));
    }
    parts.join(", ")
}

/// Where a route goes: (cluster, weight percent) pairs, or what it does instead.
fn route_targets(r: &route::Route) -> Result<Vec<(String, Option<u32>)>, String> {
    use route::route::Action;
    use route::route_action::ClusterSpecifier;
    match &r.action {
        Some(Action::Route(a)) => match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => Ok(vec![(c.clone(), None)]),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let weights: Vec<u32> = w
                    .clusters
                    .iter()
                    .map(|c| c.weight.map(|v| v.value).unwrap_or(0))
                    .collect();
                let total: u32 = weights.iter().sum::<u32>().max(1);
                Ok(w.clusters
                    .iter()
                    .zip(weights)
                    .map(|(c, wt)| (c.name.clone(), Some(wt * 100 / total)))
                    .collect())
            }
            Some(ClusterSpecifier::ClusterHeader(h)) => Err(format!("cluster from header {h}")),
            _ => Err("cluster plugin".into()),
        },
        Some(Action::Redirect(_)) => Err("redirect".into()),
        Some(Action::DirectResponse(d)) => Err(format!("direct response {}", d.status)),
        _ => Err("no forwarding".into()),
    }
}

/// The page.
pub fn render(shared: &Shared, query: &str) -> String {
    let now = SystemTime::now();
    let refresh = html::refresh_param(query);
    let snap = shared.snapshot.load_full();
    let current = crate::proxy::rates::sample(shared);
    let minute: Option<Measured> = shared.rates.rates(&current, Duration::from_secs(60));
    let five: Option<Measured> = shared.rates.rates(&current, crate::proxy::rates::WINDOW);

    let state = if shared.draining.load(Relaxed) {
        badge(Tone::Warn, "draining")
    } else if shared.ready.load(Relaxed) {
        badge(Tone::Good, "ready")
    } else {
        badge(Tone::Warn, "not ready")
    };
    let mut subtitle = format!(
        "meshgate {} · {} UTC · {state} · config version <code>{}</code>",
        escape(env!("CARGO_PKG_VERSION")),
        escape(html::utc(now).trim_end_matches(" UTC")),
        escape(&snap.version)
    );
    subtitle.push_str(match refresh {
        Some(_) => " · <a href=\"?\">stop auto-refresh</a>",
        None => " · <a href=\"?refresh=5\">auto-refresh</a>",
    });
    subtitle.push_str(
        " · <a href=\"/stats\">stats</a> · <a href=\"/clusters\">clusters</a> · <a href=\"/config_dump\">config_dump</a>",
    );
    let mut page = Page::new("meshgate gateway", &subtitle, refresh);

    // Summary.
    let fmt_rate = |m: &Option<Measured>, f: &dyn Fn(&Rate) -> String| {
        m.as_ref()
            .map(|m| f(&m.downstream))
            .unwrap_or_else(|| "—".into())
    };
    let hosts: Vec<_> = snap
        .clusters
        .values()
        .flat_map(|c| c.endpoints().hosts.clone())
        .collect();
    let healthy = hosts.iter().filter(|h| h.healthy()).count();
    page.section(
        "summary",
        "Summary",
        "downstream requests, local replies included",
        &tiles(&[
            (
                fmt_rate(&minute, &|r| format!("{:.2}", r.rps)),
                "requests/s (1 min)",
            ),
            (
                fmt_rate(&minute, &|r| format!("{:.2}", r.errors_ps)),
                "5xx/s (1 min)",
            ),
            (
                fmt_rate(&minute, &|r| {
                    r.error_ratio
                        .map(|e| format!("{:.1}%", e * 100.0))
                        .unwrap_or_else(|| "—".into())
                }),
                "5xx share (1 min)",
            ),
            (
                fmt_rate(&five, &|r| format!("{:.2}", r.rps)),
                "requests/s (5 min)",
            ),
            (
                shared.stats.downstream_rq_total.load(Relaxed).to_string(),
                "requests total",
            ),
            (
                shared.stats.downstream_cx_active.load(Relaxed).to_string(),
                "connections open",
            ),
            (snap.listeners.len().to_string(), "listeners"),
            (snap.clusters.len().to_string(), "clusters"),
            (format!("{healthy}/{}", hosts.len()), "endpoints healthy"),
        ]),
    );

    // xDS.
    if let Some(client) = shared.xds.get() {
        let st = client.status();
        let conn = if st.connected {
            badge(Tone::Good, "connected")
        } else {
            badge(Tone::Bad, "disconnected")
        };
        let mut head = format!(
            "<p>{conn} to <code>{}</code> over {} · ",
            escape(&st.server),
            if st.delta {
                "delta xDS"
            } else {
                "state-of-the-world xDS"
            }
        );
        if let Some(since) = st.connected_since {
            head.push_str(&format!("since {} ago · ", escape(&html::ago(since))));
        }
        head.push_str(&format!(
            "{} connection(s) · {} update(s) applied · first sync {}</p>",
            st.connects,
            st.applies,
            if st.ready { "done" } else { "pending" }
        ));
        if let (false, Some(e)) = (st.connected, &st.last_error) {
            head.push_str(&format!(
                "<p>last error: <span class=\"err\">{}</span></p>",
                escape(e)
            ));
        }
        let rows: Vec<Vec<String>> = crate::xds::TypeUrl::ALL
            .iter()
            .map(|t| {
                let ts = st.types.get(t.short()).cloned().unwrap_or_default();
                let state = match (&ts.last_nack_at, &ts.last_ack_at) {
                    (Some(n), a) if a.is_none_or(|a| a < *n) => badge(Tone::Bad, "NACK"),
                    (_, Some(_)) => badge(Tone::Good, "ACK"),
                    _ => badge(Tone::Neutral, "nothing yet"),
                };
                vec![
                    escape(&t.short().to_uppercase()),
                    state,
                    ts.resources.to_string(),
                    format!("<span class=\"mono\">{}</span>", escape(&ts.version)),
                    ts.last_ack_at.map(when).unwrap_or_else(|| muted("never")),
                    ts.acks.to_string(),
                    ts.nacks.to_string(),
                    match (&ts.last_nack, ts.last_nack_at) {
                        (Some(m), Some(at)) => format!(
                            "<span class=\"err mono\">{}</span><br>{}",
                            escape(m),
                            muted(&format!("{} ago", html::ago(at)))
                        ),
                        _ => muted("none"),
                    },
                ]
            })
            .collect();
        page.section(
            "xds",
            "xDS",
            "the control plane this gateway follows",
            &format!(
                "{head}{}",
                table(
                    &[
                        "type",
                        "state",
                        "#resources",
                        "version",
                        "last ACK",
                        "#ACKs",
                        "#NACKs",
                        "last NACK"
                    ],
                    &rows,
                    ""
                )
            ),
        );
    }

    // Listeners and filter chains.
    let mut rows = Vec::new();
    for l in &snap.listeners {
        let chains = l.chains.iter().chain(l.default_chain.iter());
        for (i, chain) in chains.enumerate() {
            let (tls, certs) = chain_tls(shared, chain, now);
            let sni = if chain.matcher.server_names.is_empty() {
                muted("any")
            } else {
                format!(
                    "<span class=\"mono\">{}</span>",
                    lines(&chain.matcher.server_names)
                )
            };
            let head = if i == 0 {
                vec![
                    format!("<b class=\"mono\">{}</b>", escape(&l.name)),
                    format!(
                        "<span class=\"mono\">{}</span>",
                        escape(&l.addr.to_string())
                    ),
                ]
            } else {
                vec![String::new(), String::new()]
            };
            let mut row = head;
            row.push(if chain.name.is_empty() {
                muted("(unnamed)")
            } else {
                format!("<span class=\"mono\">{}</span>", escape(&chain.name))
            });
            row.push(sni);
            row.push(tls);
            row.push(certs);
            row.push(chain_target(chain));
            rows.push(row);
        }
    }
    page.section(
        "listeners",
        "Listeners",
        &format!("{} listeners", snap.listeners.len()),
        &table(
            &[
                "listener",
                "address",
                "filter chain",
                "SNI",
                "TLS",
                "certificate (expiry)",
                "to",
            ],
            &rows,
            "No listeners.",
        ),
    );

    // Routes, from the route configurations the snapshot was compiled from.
    let resources = snap.resources.unpack();
    let mut rows = Vec::new();
    for rc in &resources.routes {
        for vh in &rc.virtual_hosts {
            for (i, r) in vh.routes.iter().enumerate() {
                let head = if i == 0 {
                    vec![
                        format!("<span class=\"mono\">{}</span>", escape(&rc.name)),
                        format!(
                            "<b class=\"mono\">{}</b><br>{}",
                            escape(&vh.name),
                            muted(&vh.domains.join(" "))
                        ),
                    ]
                } else {
                    vec![String::new(), String::new()]
                };
                let (target, rate) = match route_targets(r) {
                    Ok(clusters) => {
                        let first = clusters.first().map(|c| c.0.clone());
                        let text: Vec<String> = clusters
                            .iter()
                            .map(|(c, w)| match w {
                                Some(w) => format!(
                                    "<span class=\"mono\">{}</span> {}",
                                    escape(c),
                                    badge(Tone::Neutral, &format!("{w}%"))
                                ),
                                None => format!("<span class=\"mono\">{}</span>", escape(c)),
                            })
                            .collect();
                        // One cluster: its rate is the route's (there are no per-route
                        // counters); weighted routes show each cluster's in Clusters.
                        let rate = match (clusters.len(), first) {
                            (1, Some(c)) => minute.as_ref().and_then(|m| m.clusters.get(&c)),
                            _ => None,
                        };
                        (text.join("<br>"), rate)
                    }
                    Err(what) => (muted(&what), None),
                };
                let [rps, eps, share] = rate_cells(rate);
                let mut row = head;
                row.push(format!(
                    "<span class=\"mono\">{}</span>",
                    escape(&path_match(r.r#match.as_ref()))
                ));
                row.push(target);
                row.push(rps);
                row.push(eps);
                row.push(share);
                rows.push(row);
            }
        }
    }
    page.section(
        "routes",
        "Routes",
        "rates are the route's cluster's over 1 min (no per-route counters; weighted routes: see Clusters)",
        &table(
            &[
                "route config",
                "virtual host",
                "match",
                "cluster",
                "#rq/s",
                "#5xx/s",
                "#5xx share",
            ],
            &rows,
            "No routes.",
        ),
    );

    // Clusters.
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let rows: Vec<Vec<String>> = names
        .into_iter()
        .map(|name| {
            let c = &snap.clusters[name];
            let set = c.endpoints();
            let eps: Vec<String> = set
                .hosts
                .iter()
                .take(20)
                .map(|h| {
                    let health = if !h.eds_healthy {
                        badge(Tone::Bad, "unhealthy")
                    } else if h.ejected.load(Relaxed) {
                        badge(Tone::Warn, "ejected")
                    } else {
                        badge(Tone::Good, "healthy")
                    };
                    format!(
                        "<span class=\"mono\">{}</span> {health}",
                        escape(&h.addr.to_string())
                    )
                })
                .collect();
            let mut endpoints = if eps.is_empty() {
                badge(Tone::Bad, "no endpoints")
            } else {
                eps.join("<br>")
            };
            if set.hosts.len() > 20 {
                endpoints.push_str(&format!(
                    "<br>{}",
                    muted(&format!("and {} more", set.hosts.len() - 20))
                ));
            }
            let discovery = match &c.discovery {
                crate::proxy::upstream::cluster::Discovery::Static => "STATIC",
                crate::proxy::upstream::cluster::Discovery::Eds => "EDS",
                crate::proxy::upstream::cluster::Discovery::StrictDns(_) => "STRICT_DNS",
                crate::proxy::upstream::cluster::Discovery::LogicalDns(_) => "LOGICAL_DNS",
            };
            let [rps, eps1, share] = rate_cells(minute.as_ref().and_then(|m| m.clusters.get(name)));
            let [rps5, _, _] = rate_cells(five.as_ref().and_then(|m| m.clusters.get(name)));
            vec![
                format!("<b class=\"mono\">{}</b>", escape(name)),
                escape(discovery),
                endpoints,
                rps,
                eps1,
                share,
                rps5,
                c.state.rq_active.load(Relaxed).to_string(),
                c.state.stats.upstream_rq_total.load(Relaxed).to_string(),
            ]
        })
        .collect();
    page.section(
        "clusters",
        "Clusters",
        "rates from upstream_rq_total and upstream_rq_5xx; 5xx share of upstream responses",
        &table(
            &[
                "cluster",
                "type",
                "endpoints (health)",
                "#rq/s 1m",
                "#5xx/s 1m",
                "#5xx share",
                "#rq/s 5m",
                "#active",
                "#total",
            ],
            &rows,
            "No clusters.",
        ),
    );

    // Secrets.
    let mut rows: Vec<Vec<String>> = shared
        .tls
        .store
        .certificate_names()
        .into_iter()
        .filter_map(|name| {
            let m = shared.tls.store.current_certificate(&name)?;
            let mut sans = m.leaf.dns_names.clone();
            sans.extend(m.leaf.uri_names.iter().cloned());
            Some(vec![
                format!("<b class=\"mono\">{}</b>", escape(&name)),
                format!("<span class=\"mono\">{}</span>", escape(&m.leaf.subject)),
                format!("<span class=\"mono\">{}</span>", lines(&sans)),
                muted(&html::utc(m.leaf.not_before)),
                expiry(m.leaf.not_after, now),
            ])
        })
        .collect();
    if let Some(cert) = shared.identity.load_full().and_then(|s| s.current()) {
        rows.push(vec![
            format!("<b>{}</b>", escape("workload identity")),
            String::new(),
            format!(
                "<span class=\"mono\">{}</span>",
                escape(&cert.identity.to_string())
            ),
            muted(&html::utc(cert.not_before)),
            expiry(cert.not_after, now),
        ]);
    }
    page.section(
        "secrets",
        "Certificates",
        "certificate secrets held (SDS, files, ACME) and the workload certificate",
        &table(
            &["secret", "subject", "SANs", "valid from", "expires"],
            &rows,
            "No certificates.",
        ),
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(v: serde_json::Value) -> route::Route {
        crate::xds::json::from_json(&v).expect("a route")
    }

    #[test]
    fn route_targets_give_weights_in_percent() {
        let r = route(serde_json::json!({
            "match": {"prefix": "/"},
            "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 3},
                {"name": "b", "weight": 1},
            ]}},
        }));
        assert_eq!(
            route_targets(&r),
            Ok(vec![("a".into(), Some(75)), ("b".into(), Some(25))])
        );
        assert_eq!(path_match(r.r#match.as_ref()), "prefix /");
        let r = route(serde_json::json!({
            "match": {"path": "/x", "headers": [{"name": "x-canary", "present_match": true}]},
            "direct_response": {"status": 503},
        }));
        assert_eq!(route_targets(&r), Err("direct response 503".into()));
        assert_eq!(path_match(r.r#match.as_ref()), "path /x, header x-canary");
    }

    #[test]
    fn expiry_warns_before_it_is_due() {
        let now = SystemTime::now();
        let soon = expiry(now + Duration::from_secs(3 * 86_400), now);
        assert!(soon.contains("badge warn\">in 3 d<"), "{soon}");
        let later = expiry(now + Duration::from_secs(60 * 86_400), now);
        assert!(later.contains("badge good\">in 60 d<"), "{later}");
        let past = expiry(now - Duration::from_secs(60), now);
        assert!(past.contains("badge bad\">expired<"), "{past}");
    }
}
