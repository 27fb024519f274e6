//! Checks of one `DestinationRule` on its own: host, subsets, traffic policies.
use super::common::{
    Sink, check_duration, check_export_to, check_fqdn, check_labels_map, check_port,
    check_wildcard_host, is_dns1123_label, is_ip,
};
use crate::config::diag::Diagnostic;
use crate::config::types::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, HashAlgorithm,
    HashKey, LbPolicy, LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection,
    SimpleLb, TrafficPolicy,
};
use crate::config::types::{DestinationRule, Resource};
use std::collections::{HashMap, HashSet};

/// Largest Maglev table Envoy accepts (exclusive).
const MAX_MAGLEV_TABLE: u64 = 5_000_011;

/// Validates one DestinationRule.
pub fn validate(dr: &Resource<DestinationRule>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(dr, out);
    let spec = &dr.spec;
    if spec.host.is_empty() {
        s.error("spec.host", "host is required");
    } else if !is_ip(&spec.host) {
        s.check("spec.host", check_wildcard_host(&spec.host));
    }
    if let Some(policy) = &spec.traffic_policy {
        validate_policy(&mut s, "spec.trafficPolicy", policy);
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            s.error(&format!("{path}.name"), "subset name is required");
        } else if !is_dns1123_label(&subset.name) {
            s.error(
                &format!("{path}.name"),
                format!("subset name `{}` must be a DNS-1123 label", subset.name),
            );
        } else if let Some(first) = names.get(subset.name.as_str()) {
            s.error(
                &format!("{path}.name"),
                format!(
                    "subset `{}` is already defined by spec.subsets[{first}]",
                    subset.name
                ),
            );
        } else {
            names.insert(&subset.name, i);
        }
        for (key, message) in check_labels_map(&subset.labels) {
            s.error(&format!("{path}.labels.{key}"), message);
        }
        if let Some(policy) = &subset.traffic_policy {
            validate_policy(&mut s, &format!("{path}.trafficPolicy"), policy);
        }
    }
    for (i, message) in check_export_to(&spec.export_to) {
        s.error(&format!("spec.exportTo[{i}]"), message);
    }
    if let Some(sel) = &spec.workload_selector {
        for (key, message) in check_labels_map(&sel.match_labels) {
            s.error(&format!("spec.workloadSelector.matchLabels.{key}"), message);
        }
    }
}

fn validate_policy(s: &mut Sink<'_, DestinationRule>, path: &str, p: &TrafficPolicy) {
    if p.load_balancer.is_none()
        && p.connection_pool.is_none()
        && p.outlier_detection.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_empty()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none()
    {
        s.error(path, "a traffic policy needs at least one field");
        return;
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        s.error(path, "tunnel and proxyProtocol cannot be set together");
    }
    if let Some(o) = &p.outlier_detection {
        validate_outlier(s, &format!("{path}.outlierDetection"), o);
    }
    if let Some(c) = &p.connection_pool {
        validate_pool(s, &format!("{path}.connectionPool"), c);
    }
    if let Some(lb) = &p.load_balancer {
        validate_lb(
            s,
            &format!("{path}.loadBalancer"),
            lb,
            p.outlier_detection.is_some(),
        );
    }
    if let Some(tls) = &p.tls {
        validate_client_tls(s, &format!("{path}.tls"), tls);
    }
    let mut ports: HashMap<u32, usize> = HashMap::new();
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => s.error(&pp, "a port-level policy needs `port`"),
            Some(port) => {
                s.check(&format!("{pp}.port.number"), check_port(port.number));
                if let Some(first) = ports.insert(port.number, i) {
                    s.error(
                        &format!("{pp}.port.number"),
                        format!(
                            "port {} already has a policy in portLevelSettings[{first}]",
                            port.number
                        ),
                    );
                }
            }
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            s.error(&pp, "a port-level policy needs at least one of loadBalancer, connectionPool, outlierDetection, tls");
        }
        if let Some(o) = &pl.outlier_detection {
            validate_outlier(s, &format!("{pp}.outlierDetection"), o);
        }
        if let Some(c) = &pl.connection_pool {
            validate_pool(s, &format!("{pp}.connectionPool"), c);
        }
        if let Some(lb) = &pl.load_balancer {
            validate_lb(
                s,
                &format!("{pp}.loadBalancer"),
                lb,
                pl.outlier_detection.is_some() || p.outlier_detection.is_some(),
            );
        }
        if let Some(tls) = &pl.tls {
            validate_client_tls(s, &format!("{pp}.tls"), tls);
        }
    }
    if let Some(t) = &p.tunnel {
        let tp = format!("{path}.tunnel");
        if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
            s.error(
                &format!("{tp}.protocol"),
                "tunnel protocol must be CONNECT or POST",
            );
        }
        if !is_ip(&t.target_host) && check_fqdn(&t.target_host).is_err() {
            s.error(
                &format!("{tp}.targetHost"),
                format!(
                    "tunnel target host `{}` must be a FQDN or an IP address",
                    t.target_host
                ),
            );
        }
        s.check(&format!("{tp}.targetPort"), check_port(t.target_port));
    }
    if let Some(b) = &p.retry_budget {
        let bp = format!("{path}.retryBudget");
        if let Some(pct) = b.percent
            && !(0.0..=100.0).contains(&pct)
        {
            s.error(
                &format!("{bp}.percent"),
                format!("percent {pct} is not in the range 0..100"),
            );
        }
        if let Some(i) = b.budget_interval {
            s.check(&format!("{bp}.budgetInterval"), check_duration(i));
        }
    }
}

fn validate_outlier(s: &mut Sink<'_, DestinationRule>, path: &str, o: &OutlierDetection) {
    if o.consecutive_errors != 0 {
        s.warning(
            &format!("{path}.consecutiveErrors"),
            "consecutiveErrors is deprecated; use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if !o.split_external_local_origin_errors
        && o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        s.error(
            &format!("{path}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    for (name, d) in [
        ("interval", o.interval),
        ("baseEjectionTime", o.base_ejection_time),
    ] {
        if let Some(d) = d {
            s.check(&format!("{path}.{name}"), check_duration(d));
        }
    }
    for (name, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if !(0..=100).contains(&v) {
            s.error(
                &format!("{path}.{name}"),
                format!("{name} {v} is not in the range 0..100"),
            );
        }
    }
    for (i, code) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            s.error(
                &format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code"),
            );
        }
    }
}

fn validate_pool(s: &mut Sink<'_, DestinationRule>, path: &str, c: &ConnectionPoolSettings) {
    if c.tcp.is_none() && c.http.is_none() {
        s.error(path, "a connection pool needs tcp and/or http settings");
    }
    if let Some(h) = &c.http {
        let hp = format!("{path}.http");
        for (name, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if v < 0 {
                s.error(
                    &format!("{hp}.{name}"),
                    format!("{name} cannot be negative"),
                );
            }
        }
        if let Some(d) = h.idle_timeout {
            s.check(&format!("{hp}.idleTimeout"), check_duration(d));
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol {
            s.error(
                &format!("{hp}.useClientProtocol"),
                "useClientProtocol cannot be true with h2UpgradePolicy UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = format!("{hp}.http2KeepAlive");
            for (name, d) in [("interval", ka.interval), ("timeout", ka.timeout)] {
                match d {
                    Some(d) => s.check(&format!("{kp}.{name}"), check_duration(d)),
                    None => s.error(&kp, format!("http2KeepAlive needs `{name}`")),
                }
            }
        }
    }
    if let Some(t) = &c.tcp {
        let tp = format!("{path}.tcp");
        if t.max_connections < 0 {
            s.error(
                &format!("{tp}.maxConnections"),
                "maxConnections cannot be negative",
            );
        }
        for (name, d) in [
            ("connectTimeout", t.connect_timeout),
            ("maxConnectionDuration", t.max_connection_duration),
        ] {
            if let Some(d) = d {
                s.check(&format!("{tp}.{name}"), check_duration(d));
            }
        }
        // 0s disables the idle timeout.
        if let Some(d) = t.idle_timeout
            && !d.get().is_zero()
        {
            s.check(&format!("{tp}.idleTimeout"), check_duration(d));
        }
        if let Some(ka) = &t.tcp_keepalive {
            for (name, d) in [("time", ka.time), ("interval", ka.interval)] {
                if let Some(d) = d {
                    s.check(&format!("{tp}.tcpKeepalive.{name}"), check_duration(d));
                }
            }
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    if x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn validate_lb(
    s: &mut Sink<'_, DestinationRule>,
    path: &str,
    lb: &LoadBalancerSettings,
    has_outlier: bool,
) {
    match &lb.lb_policy {
        Some(LbPolicy::Simple(SimpleLb::LeastConn)) => {
            s.warning(
                &format!("{path}.simple"),
                "LEAST_CONN is deprecated; use LEAST_REQUEST",
            );
        }
        Some(LbPolicy::ConsistentHash(ch)) => {
            let cp = format!("{path}.consistentHash");
            match &ch.hash_key {
                None => s.error(
                    &cp,
                    "consistentHash needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
                ),
                Some(HashKey::HttpCookie(cookie)) => {
                    if cookie.name.is_empty() {
                        s.error(&format!("{cp}.httpCookie.name"), "the hash cookie needs a name");
                    }
                    let mut seen = HashSet::new();
                    for (i, attr) in cookie.attributes.iter().enumerate() {
                        let ap = format!("{cp}.httpCookie.attributes[{i}]");
                        if attr.name.is_empty() {
                            s.error(&ap, "a cookie attribute needs a name");
                        } else if !seen.insert(attr.name.as_str()) {
                            s.error(&ap, format!("cookie attribute `{}` is set twice", attr.name));
                        }
                    }
                    if let Some(ttl) = cookie.ttl
                        && !ttl.get().is_zero()
                    {
                        s.check(&format!("{cp}.httpCookie.ttl"), check_duration(ttl));
                    }
                }
                Some(HashKey::HttpHeaderName(name) | HashKey::HttpQueryParameterName(name)) if name.is_empty() => {
                    s.error(&cp, "the hash key name cannot be empty");
                }
                Some(HashKey::UseSourceIp(false)) => {
                    s.warning(&format!("{cp}.useSourceIp"), "useSourceIp: false gives no hash key; every request hashes the same");
                }
                Some(_) => {}
            }
            if ch.minimum_ring_size != 0 {
                s.warning(
                    &format!("{cp}.minimumRingSize"),
                    "minimumRingSize is deprecated; use ringHash.minimumRingSize",
                );
                if ch.hash_algorithm.is_some() {
                    s.error(
                        &format!("{cp}.minimumRingSize"),
                        "minimumRingSize cannot be combined with ringHash or maglev",
                    );
                }
            }
            if let Some(HashAlgorithm::Maglev(m)) = &ch.hash_algorithm {
                let field = format!("{cp}.maglev.tableSize");
                if m.table_size == 0 {
                    s.error(&field, "maglev needs tableSize (a prime, e.g. 65537)");
                } else if m.table_size >= MAX_MAGLEV_TABLE {
                    s.error(
                        &field,
                        format!("tableSize must be below {MAX_MAGLEV_TABLE}"),
                    );
                } else if !is_prime(m.table_size) {
                    s.error(
                        &field,
                        format!("tableSize {} is not a prime number", m.table_size),
                    );
                }
            }
        }
        _ => {}
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        s.error(
            path,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality(s, &format!("{path}.localityLbSetting"), l, has_outlier);
    }
    if let Some(w) = &lb.warmup {
        let wp = format!("{path}.warmup");
        match w.duration {
            None => s.error(&wp, "warmup needs `duration`"),
            Some(d) => s.check(&format!("{wp}.duration"), check_duration(d)),
        }
        if w.minimum_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            s.error(
                &format!("{wp}.minimumPercent"),
                "minimumPercent must be in the range 0..100",
            );
        }
        if w.aggression.is_some_and(|a| a <= 0.0) {
            s.error(
                &format!("{wp}.aggression"),
                "aggression must be greater than 0",
            );
        }
    }
    if let Some(d) = lb.warmup_duration_secs {
        s.check(&format!("{path}.warmupDurationSecs"), check_duration(d));
    }
}

fn validate_locality(
    s: &mut Sink<'_, DestinationRule>,
    path: &str,
    l: &LocalityLoadBalancerSetting,
    has_outlier: bool,
) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        s.error(path, "distribute and failover cannot both be set");
        return;
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = format!("{path}.distribute[{i}]");
        let mut total: u64 = 0;
        for (loc, w) in &d.to {
            if *w == 0 || *w > 100 {
                s.error(
                    &format!("{dp}.to.{loc}"),
                    format!("locality weight {w} must be in the range 1..100"),
                );
            }
            total += u64::from(*w);
        }
        if total != 100 {
            s.error(
                &format!("{dp}.to"),
                format!("locality weights sum to {total}, not 100"),
            );
        }
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        s.warning(
            path,
            "failover needs outlierDetection to notice unhealthy endpoints",
        );
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = format!("{path}.failover[{i}]");
        if f.from == f.to {
            s.error(&fp, "failover from and to must be different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            s.error(&fp, "failover names regions only (no `/`)");
        }
        if f.from.contains('*') || f.to.contains('*') {
            s.error(&fp, "failover regions cannot contain `*`");
        }
    }
}

fn validate_client_tls(s: &mut Sink<'_, DestinationRule>, path: &str, t: &ClientTlsSettings) {
    let mode = t.mode.unwrap_or(ClientTlsMode::Disable);
    let files = !t.client_certificate.is_empty()
        || !t.private_key.is_empty()
        || !t.ca_certificates.is_empty()
        || !t.ca_crl.is_empty();
    match mode {
        ClientTlsMode::Disable => {
            if files
                || !t.credential_name.is_empty()
                || !t.sni.is_empty()
                || !t.subject_alt_names.is_empty()
            {
                s.warning(
                    path,
                    "TLS mode is DISABLE; the other TLS settings are ignored",
                );
            }
        }
        ClientTlsMode::IstioMutual => {
            if files || !t.credential_name.is_empty() {
                s.error(path, "ISTIO_MUTUAL uses mesh certificates; certificate files and credentialName must not be set");
            }
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            if t.insecure_skip_verify == Some(true)
                && (!t.ca_certificates.is_empty()
                    || !t.subject_alt_names.is_empty()
                    || (mode == ClientTlsMode::Simple && !t.credential_name.is_empty()))
            {
                s.error(
                    &format!("{path}.insecureSkipVerify"),
                    "insecureSkipVerify cannot be combined with caCertificates, subjectAltNames or a CA credential",
                );
            }
            if !t.credential_name.is_empty() {
                if files {
                    s.error(
                        &format!("{path}.credentialName"),
                        "credentialName cannot be combined with clientCertificate, privateKey, caCertificates or caCrl",
                    );
                }
            } else if mode == ClientTlsMode::Mutual {
                if t.client_certificate.is_empty() {
                    s.error(
                        path,
                        "MUTUAL TLS needs clientCertificate (or credentialName)",
                    );
                }
                if t.private_key.is_empty() {
                    s.error(path, "MUTUAL TLS needs privateKey (or credentialName)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|n| super::is_prime(*n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(super::is_prime(65537) && !super::is_prime(65536));
    }
}
