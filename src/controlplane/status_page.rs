//! The control plane's status page (`/` and `/status` on the debug port): connected
//! proxies and their sync state per type, the services and routes served, recent
//! errors and push figures, as one server-rendered HTML page. It reads what the debug
//! endpoints and metrics already keep (`/debug/syncz`, `/metrics`) and the source's
//! overview; it holds no state of its own.
use super::errors::{ErrorEvent, ErrorKind};
use super::server::ControlPlane;
use super::status::{ProxyStatus, TypeStatus};
use crate::html::{self, Page, Tone, badge, escape, lines, muted, table, tiles, when};
use crate::xds::TypeUrl;
use std::time::{Duration, SystemTime};

/// Longest NACK or error detail shown in a table cell.
const DETAIL_SHOWN: usize = 400;

/// How one type of one stream is doing, in the page's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Nothing sent on this type (not subscribed, or nothing to send yet).
    NotSent,
    /// The last response was ACKed.
    Acked,
    /// The last response was NACKed.
    Nacked,
    /// Sent and not answered yet, for less than the ACK timeout.
    Awaiting,
    /// Sent and not answered for longer than the ACK timeout.
    Stale,
}

/// The state of `ts` at `now`: a response unanswered for longer than `ack_timeout` is
/// stale (the push budget stops waiting for it then too).
pub fn sync_state(ts: &TypeStatus, now: SystemTime, ack_timeout: Duration) -> SyncState {
    match ts.state() {
        "NOT SENT" => SyncState::NotSent,
        "SYNCED" => SyncState::Acked,
        "NACKED" => SyncState::Nacked,
        _ => {
            let waited = ts
                .sent_at
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if waited > ack_timeout {
                SyncState::Stale
            } else {
                SyncState::Awaiting
            }
        }
    }
}

fn short_version(v: &str) -> String {
    let cut: String = v.chars().take(8).collect();
    if cut.len() < v.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn clipped(s: &str) -> String {
    let cut: String = s.chars().take(DETAIL_SHOWN).collect();
    if cut.len() < s.len() {
        format!("{cut} …")
    } else {
        cut
    }
}

/// One type's cell: a badge, and the version, error or wait under it.
fn type_cell(ts: Option<&TypeStatus>, now: SystemTime, ack_timeout: Duration) -> String {
    let Some(ts) = ts else {
        return muted("—");
    };
    match sync_state(ts, now, ack_timeout) {
        SyncState::NotSent => badge(Tone::Neutral, "not sent"),
        SyncState::Acked => {
            let at = ts.acked_at.map(html::ago).unwrap_or_default();
            format!(
                "<span class=\"nw\">{} <span class=\"mono\" title=\"{}\">{}</span></span><br>{}",
                badge(Tone::Good, "ACK"),
                escape(&ts.acked_version),
                escape(&short_version(&ts.acked_version)),
                muted(&format!("{at} ago · {} res.", ts.sent_resources))
            )
        }
        SyncState::Nacked => {
            let (error, at) = ts
                .nacked
                .as_ref()
                .map(|n| (n.error.as_str(), html::ago(n.at)))
                .unwrap_or_default();
            let acked = if ts.acked_version.is_empty() {
                "nothing ACKed yet".to_string()
            } else {
                format!("still on v {}", short_version(&ts.acked_version))
            };
            format!(
                "{}<br><span class=\"err mono\">{}</span><br>{}",
                badge(Tone::Bad, "NACK"),
                escape(&clipped(error)),
                muted(&format!("{at} ago; {acked}"))
            )
        }
        SyncState::Awaiting => format!(
            "{}<br>{}",
            badge(Tone::Neutral, "awaiting ACK"),
            muted(&format!(
                "sent v {} {} ago",
                short_version(&ts.sent_version),
                ts.sent_at.map(html::ago).unwrap_or_default()
            ))
        ),
        SyncState::Stale => format!(
            "{}<br>{}",
            badge(Tone::Warn, "STALE"),
            muted(&format!(
                "v {} sent {} ago, no ACK",
                short_version(&ts.sent_version),
                ts.sent_at.map(html::ago).unwrap_or_default()
            ))
        ),
    }
}

fn proxy_row(p: &ProxyStatus, now: SystemTime, ack_timeout: Duration) -> Vec<String> {
    let mut id = format!(
        "<div class=\"minw\"><b>{}</b> {}",
        escape(&p.proxy_id),
        badge(Tone::Neutral, p.kind)
    );
    if p.node_id != p.proxy_id {
        id.push_str(&format!(
            "<br><span class=\"mono muted brk\">{}</span>",
            escape(&p.node_id)
        ));
    }
    if !p.user_agent.is_empty() {
        id.push_str(&format!("<br>{}", muted(&p.user_agent)));
    }
    if let Some(e) = &p.snapshot_error {
        id.push_str(&format!(
            "<br>{} <span class=\"err\">{}</span>",
            badge(Tone::Bad, "snapshot error"),
            escape(&clipped(e))
        ));
    }
    id.push_str("</div>");
    let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mode = match p.mode {
        super::metrics::Mode::Sotw => "SotW",
        super::metrics::Mode::Delta => "delta",
    };
    let mut connection = format!(
        "<span class=\"mono\">{}</span> · {mode}<br>{}",
        escape(p.peer.as_deref().unwrap_or("?")),
        muted(&format!(
            "since {} ({} ago)",
            html::utc(p.connected_at),
            html::ago(p.connected_at)
        ))
    );
    if let Some(spiffe) = &p.spiffe_identity {
        connection.push_str(&format!("<br>{}", muted(spiffe)));
    }
    let mut row = vec![
        id,
        if labels.is_empty() {
            muted("none")
        } else {
            format!("<span class=\"mono brk\">{}</span>", lines(&labels))
        },
        connection,
    ];
    for t in TypeUrl::ALL {
        row.push(type_cell(p.types.get(t.short()), now, ack_timeout));
    }
    row
}

/// The page.
pub fn render(cp: &ControlPlane, query: &str) -> String {
    let now = SystemTime::now();
    let ack_timeout = cp.ack_timeout();
    let proxies = cp.syncz();
    let overview = cp.source_overview();
    let metrics = cp.metrics();
    let refresh = html::refresh_param(query);

    let mut subtitle = format!(
        "meshgate {} · {} UTC",
        escape(env!("CARGO_PKG_VERSION")),
        escape(html::utc(now).trim_end_matches(" UTC"))
    );
    if let Some(o) = &overview {
        subtitle.push_str(&format!(
            " · config <code>{}</code> generation {}",
            escape(&o.origin),
            o.generation
        ));
        if let Some(at) = o.loaded_at {
            subtitle.push_str(&format!(", loaded {} ago", escape(&html::ago(at))));
        }
    }
    subtitle.push_str(match refresh {
        Some(_) => " · <a href=\"?\">stop auto-refresh</a>",
        None => " · <a href=\"?refresh=5\">auto-refresh</a>",
    });
    subtitle.push_str(" · <a href=\"/debug/syncz\">syncz</a> · <a href=\"/metrics\">metrics</a>");
    let mut page = Page::new("meshgate control plane", &subtitle, refresh);

    // Summary.
    let nacked_proxies = proxies
        .iter()
        .filter(|p| {
            p.types
                .values()
                .any(|t| sync_state(t, now, ack_timeout) == SyncState::Nacked)
        })
        .count();
    let stale_proxies = proxies
        .iter()
        .filter(|p| {
            p.types
                .values()
                .any(|t| sync_state(t, now, ack_timeout) == SyncState::Stale)
        })
        .count();
    let conv = &metrics.convergence;
    let bound = |q: f64| match conv.quantile_bound(q) {
        Some(b) => format!("≤ {b} s"),
        None if conv.count() > 0 => "> 30 s".to_string(),
        None => "—".to_string(),
    };
    let pushed: u64 = metrics.per_type().iter().map(|(_, p, _)| p).sum();
    let rejected: u64 = metrics.per_type().iter().map(|(_, _, r)| r).sum();
    page.section(
        "summary",
        "Summary",
        "",
        &tiles(&[
            (proxies.len().to_string(), "proxies connected"),
            (nacked_proxies.to_string(), "proxies with a NACK"),
            (stale_proxies.to_string(), "proxies stale"),
            (pushed.to_string(), "responses pushed"),
            (rejected.to_string(), "NACKs received"),
            (bound(0.99), "convergence p99"),
            (
                metrics
                    .last_push()
                    .map(|t| format!("{} ago", html::ago(t)))
                    .unwrap_or_else(|| "none yet".into()),
                "last push",
            ),
        ]),
    );

    // Proxies.
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| proxy_row(p, now, ack_timeout))
        .collect();
    page.section(
        "proxies",
        "Proxies",
        &format!(
            "{} connected · stale = sent and not ACKed for more than {} s",
            proxies.len(),
            ack_timeout.as_secs()
        ),
        &table(
            &[
                "proxy",
                "labels",
                "connection",
                "CDS",
                "EDS",
                "LDS",
                "RDS",
                "SDS",
            ],
            &rows,
            "No proxy is connected.",
        ),
    );

    // Recent errors: the source's and the streams', newest first.
    let mut errors: Vec<ErrorEvent> = cp.recent_errors();
    if let Some(o) = &overview {
        errors.extend(o.errors.iter().cloned());
    }
    errors.sort_by_key(|e| std::cmp::Reverse(e.at));
    let rows: Vec<Vec<String>> = errors
        .iter()
        .map(|e| {
            let tone = match e.kind {
                ErrorKind::Config => Tone::Warn,
                ErrorKind::Snapshot | ErrorKind::Nack => Tone::Bad,
            };
            vec![
                when(e.at),
                badge(tone, e.kind.as_str()),
                format!("<span class=\"mono brk\">{}</span>", escape(&e.subject)),
                format!(
                    "<span class=\"err mono\">{}</span>",
                    escape(&clipped(&e.detail))
                ),
            ]
        })
        .collect();
    page.section(
        "errors",
        "Recent configuration errors",
        &format!(
            "the last {} rejected changes, snapshot errors and NACKs",
            super::errors::KEPT
        ),
        &table(&["when", "kind", "subject", "detail"], &rows, "No errors."),
    );

    // Push figures.
    let mut rows: Vec<Vec<String>> = metrics
        .per_type()
        .into_iter()
        .map(|(t, pushes, nacks)| {
            vec![
                escape(&t.short().to_uppercase()),
                pushes.to_string(),
                if nacks > 0 {
                    badge(Tone::Bad, &nacks.to_string())
                } else {
                    "0".into()
                },
            ]
        })
        .collect();
    rows.push(vec![
        "<b>all</b>".into(),
        format!("<b>{pushed}</b>"),
        format!("<b>{rejected}</b>"),
    ]);
    let per_type = table(&["type", "#responses pushed", "#NACKs"], &rows, "");
    let mean = if conv.count() > 0 {
        format!("{:.3} s", conv.sum() / conv.count() as f64)
    } else {
        "—".into()
    };
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let convergence = tiles(&[
        (g(&metrics.push_rounds).to_string(), "push rounds"),
        (conv.count().to_string(), "changes converged"),
        (mean, "convergence mean"),
        (bound(0.5), "convergence p50"),
        (bound(0.9), "convergence p90"),
        (bound(0.99), "convergence p99"),
        (g(&metrics.push_throttled).to_string(), "pushes throttled"),
        (g(&metrics.write_timeouts).to_string(), "write timeouts"),
        (g(&metrics.snapshot_errors).to_string(), "snapshot errors"),
    ]);
    page.section(
        "pushes",
        "Pushes",
        "convergence: from a configuration change until the proxy ACKed all of it (bounds of pilot_proxy_convergence_time's buckets)",
        &format!("{convergence}<div style=\"height:10px\"></div>{per_type}"),
    );

    match &overview {
        None => page.section(
            "config",
            "Configuration",
            "",
            "<p class=\"empty\">This control plane serves hand-built resources: no services or routes to show.</p>",
        ),
        Some(o) => {
            let rows: Vec<Vec<String>> = o
                .services
                .iter()
                .map(|s| {
                    vec![
                        format!("<b class=\"mono\">{}</b>", escape(&s.host)),
                        escape(&s.source),
                        lines(&s.ports),
                        escape(s.location),
                        escape(s.resolution),
                        if s.endpoints.is_empty() {
                            muted("none")
                        } else {
                            format!("<span class=\"mono\">{}</span>", lines(&s.endpoints))
                        },
                    ]
                })
                .collect();
            page.section(
                "services",
                "Services",
                &format!("{} in the registry (ServiceEntries)", o.services.len()),
                &table(
                    &[
                        "host",
                        "defined by",
                        "ports",
                        "location",
                        "resolution",
                        "endpoints",
                    ],
                    &rows,
                    "No services.",
                ),
            );
            let rows: Vec<Vec<String>> = o
                .gateways
                .iter()
                .map(|g| {
                    vec![
                        format!("<b>{}</b>", escape(&g.name)),
                        format!("<span class=\"mono\">{}</span>", escape(&g.selector)),
                        format!("<span class=\"mono\">{}</span>", lines(&g.servers)),
                    ]
                })
                .collect();
            page.section(
                "gateways",
                "Gateways",
                &format!("{} Gateway resources", o.gateways.len()),
                &table(&["gateway", "selector", "servers"], &rows, "No Gateways."),
            );
            let mut rows = Vec::new();
            for r in &o.routes {
                for (i, rule) in r.rules.iter().enumerate() {
                    let head = if i == 0 {
                        vec![
                            format!("<b>{}</b>", escape(&r.name)),
                            format!("<span class=\"mono\">{}</span>", lines(&r.hosts)),
                            lines(&r.gateways),
                        ]
                    } else {
                        vec![String::new(), String::new(), String::new()]
                    };
                    let matches = if rule.matches.is_empty() {
                        muted("any")
                    } else {
                        format!("<span class=\"mono\">{}</span>", lines(&rule.matches))
                    };
                    let dests: Vec<String> = rule
                        .destinations
                        .iter()
                        .map(|(d, w)| match w {
                            Some(w) => format!(
                                "<span class=\"mono\">{}</span> {}",
                                escape(d),
                                badge(Tone::Neutral, &format!("{w}%"))
                            ),
                            None => format!("<span class=\"mono\">{}</span>", escape(d)),
                        })
                        .collect();
                    let mut row = head;
                    row.push(escape(rule.protocol));
                    row.push(matches);
                    row.push(dests.join("<br>"));
                    rows.push(row);
                }
                if r.rules.is_empty() {
                    rows.push(vec![
                        format!("<b>{}</b>", escape(&r.name)),
                        lines(&r.hosts),
                        lines(&r.gateways),
                        String::new(),
                        muted("no rules"),
                        String::new(),
                    ]);
                }
            }
            page.section(
                "routes",
                "Routes",
                &format!("{} VirtualServices", o.routes.len()),
                &table(
                    &[
                        "virtual service",
                        "hosts",
                        "gateways",
                        "",
                        "match",
                        "destinations (weight)",
                    ],
                    &rows,
                    "No VirtualServices.",
                ),
            );
        }
    }
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::status::Nack;

    fn sent(at: SystemTime) -> TypeStatus {
        TypeStatus {
            sent_version: "v2".into(),
            sent_nonce: "n2".into(),
            sent_at: Some(at),
            acked_version: "v1".into(),
            acked_nonce: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn states_follow_nonces_and_the_ack_timeout() {
        let now = SystemTime::now();
        let timeout = Duration::from_secs(5);
        assert_eq!(
            sync_state(&TypeStatus::default(), now, timeout),
            SyncState::NotSent
        );
        assert_eq!(
            sync_state(&sent(now - Duration::from_secs(1)), now, timeout),
            SyncState::Awaiting
        );
        assert_eq!(
            sync_state(&sent(now - Duration::from_secs(6)), now, timeout),
            SyncState::Stale
        );
        let mut acked = sent(now);
        acked.acked_nonce = "n2".into();
        assert_eq!(sync_state(&acked, now, timeout), SyncState::Acked);
        let mut nacked = sent(now - Duration::from_secs(60));
        nacked.nacked = Some(Nack {
            version: "v2".into(),
            nonce: "n2".into(),
            error: "<bad>".into(),
            at: now,
        });
        assert_eq!(sync_state(&nacked, now, timeout), SyncState::Nacked);
        let cell = type_cell(Some(&nacked), now, timeout);
        assert!(
            cell.contains("&lt;bad&gt;") && !cell.contains("<bad>"),
            "{cell}"
        );
    }
}
