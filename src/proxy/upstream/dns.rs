//! DNS clusters: STRICT_DNS (every address of every name is a host) and LOGICAL_DNS (the
//! first address), re-resolved every `dns_refresh_rate` (or `dns_failure_refresh_rate`
//! after a failure). The system resolver gives no TTLs, so `respect_dns_ttl` falls back
//! to the refresh rate.
use crate::proxy::compile::cluster::add_host;
use crate::proxy::upstream::cluster::{Cluster, Discovery, DnsConfig, DnsFamily};
use crate::proxy::upstream::host::{EndpointSet, Host};
use crate::xds::pb::envoy::config::endpoint::v3 as ep_pb;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

async fn lookup(host: &str, port: u16, family: DnsFamily) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    match family {
        DnsFamily::V4Only => addrs.retain(|a| a.is_ipv4()),
        DnsFamily::V6Only => addrs.retain(|a| a.is_ipv6()),
        DnsFamily::V4Preferred | DnsFamily::Auto => {
            let want_v4 = family == DnsFamily::V4Preferred;
            if addrs.iter().any(|a| a.is_ipv4() == want_v4) {
                addrs.retain(|a| a.is_ipv4() == want_v4);
            }
        }
        DnsFamily::All => {}
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    Ok(addrs)
}

/// Resolves every target once and builds the endpoint set (hosts reused by address).
async fn resolve(
    dns: &DnsConfig,
    logical: bool,
    prev: &EndpointSet,
) -> Result<EndpointSet, String> {
    let mut levels = Vec::new();
    for t in &dns.targets {
        let mut addrs = lookup(&t.hostname, t.port, dns.family)
            .await
            .map_err(|e| format!("resolving {}: {e}", t.hostname))?;
        if logical {
            addrs.truncate(1);
        }
        let le = ep_pb::LocalityLbEndpoints {
            priority: t.priority,
            load_balancing_weight: Some(crate::xds::pb::google::protobuf::UInt32Value {
                value: t.locality_weight,
            }),
            locality: None,
            ..Default::default()
        };
        for a in addrs {
            let hostname: Option<Arc<str>> = Some(t.hostname.clone());
            let host = match prev.find(a) {
                Some(h) if h.same_endpoint(&hostname, t.weight, true) => h.clone(),
                _ => Arc::new(Host::new(a, hostname, t.weight, true)),
            };
            add_host(&mut levels, &le, host);
        }
    }
    Ok(EndpointSet::new(levels, 1.4))
}

fn config(d: &Discovery) -> Option<(&DnsConfig, bool)> {
    match d {
        Discovery::StrictDns(c) => Some((c, false)),
        Discovery::LogicalDns(c) => Some((c, true)),
        _ => None,
    }
}

/// One resolution for a cluster about to be published.
pub async fn resolve_once(c: &Cluster) {
    let Some((dns, logical)) = config(&c.discovery) else {
        return;
    };
    let prev = c.endpoints.load_full();
    match resolve(dns, logical, &prev).await {
        Ok(set) => c.endpoints.store(Arc::new(set)),
        Err(e) => tracing::warn!(cluster = %c.name, error = %e, "DNS resolution failed"),
    }
}

/// Re-resolves until the endpoint set is dropped (the cluster was removed or changed).
pub async fn run(name: Arc<str>, discovery: Discovery, endpoints: Weak<ArcSwap<EndpointSet>>) {
    let Some((dns, logical)) = config(&discovery) else {
        return;
    };
    let mut wait = dns.refresh;
    loop {
        tokio::time::sleep(wait).await;
        let Some(target) = endpoints.upgrade() else {
            return;
        };
        let prev = target.load_full();
        match resolve(dns, logical, &prev).await {
            Ok(set) => {
                let changed = set.hosts.len() != prev.hosts.len()
                    || set
                        .hosts
                        .iter()
                        .zip(prev.hosts.iter())
                        .any(|(a, b)| a.addr != b.addr);
                if changed {
                    tracing::info!(cluster = %name, hosts = set.hosts.len(), "DNS answer changed");
                    target.store(Arc::new(set));
                }
                wait = dns.refresh;
            }
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "DNS re-resolution failed; keeping the last answer");
                wait = dns.failure_refresh;
            }
        }
    }
}
