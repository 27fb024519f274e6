//! Retry policies: Istio's default when a route sets none, and `retries` translated.
use super::pb;
use crate::config::types::virtual_service::HttpRetry;
use crate::xds::pb::envoy::config::route::v3 as route;
use crate::xds::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use crate::xds::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;

/// Istio's default `retryOn` conditions.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries.
pub const DEFAULT_ATTEMPTS: u32 = 2;

fn previous_hosts() -> route::retry_policy::RetryHostPredicate {
    route::retry_policy::RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(
            route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pb::any(
                &PreviousHostsPredicate {},
            )),
        ),
    }
}

/// The retry policy of a route. `None` when retries are disabled (`attempts: 0`).
/// With consistent hashing the retry does not avoid the host already tried (it would
/// defeat the hash), as in Istio.
pub fn policy(retry: Option<&HttpRetry>, consistent_hash: bool) -> Option<route::RetryPolicy> {
    let mut out = route::RetryPolicy {
        num_retries: Some(pb::u32v(DEFAULT_ATTEMPTS)),
        retry_on: DEFAULT_RETRY_ON.to_string(),
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: if consistent_hash {
            Vec::new()
        } else {
            vec![previous_hosts()]
        },
        ..Default::default()
    };
    let Some(r) = retry else {
        return Some(out);
    };
    let attempts = u32::try_from(r.attempts).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    out.num_retries = Some(pb::u32v(attempts));
    if !r.retry_on.is_empty() {
        let (on, codes) = parse_retry_on(&r.retry_on);
        out.retry_on = on;
        out.retriable_status_codes = codes;
        if !out.retriable_status_codes.is_empty()
            && !out.retry_on.contains("retriable-status-codes")
        {
            if !out.retry_on.is_empty() {
                out.retry_on.push(',');
            }
            out.retry_on.push_str("retriable-status-codes");
        }
    }
    if let Some(t) = r.per_try_timeout {
        out.per_try_timeout = Some(pb::duration(t.get()));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts()]
        } else {
            Vec::new()
        };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(route::retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(
                route::retry_policy::retry_priority::ConfigType::TypedConfig(pb::any(
                    &PreviousPrioritiesConfig {
                        update_frequency: 2,
                    },
                )),
            ),
        });
    }
    if let Some(b) = r.backoff {
        out.retry_back_off = Some(route::retry_policy::RetryBackOff {
            base_interval: Some(pb::duration(b.get())),
            max_interval: None,
        });
    }
    Some(out)
}

/// Splits `retryOn` into Envoy conditions and HTTP status codes (numbers in 100..=599).
fn parse_retry_on(s: &str) -> (String, Vec<u32>) {
    let mut on = Vec::new();
    let mut codes = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if (100..=599).contains(&code) => codes.push(code),
            _ => on.push(part),
        }
    }
    (on.join(","), codes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;

    #[test]
    fn retry_policies_like_istio() {
        let default = policy(None, false).unwrap();
        assert_eq!(default.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(default.num_retries.unwrap().value, 2);
        assert_eq!(default.retry_host_predicate.len(), 1);
        assert!(policy(None, true).unwrap().retry_host_predicate.is_empty());

        let off = HttpRetry {
            attempts: 0,
            ..Default::default()
        };
        assert!(policy(Some(&off), false).is_none());

        let custom = HttpRetry {
            attempts: 4,
            retry_on: "5xx,503, gateway-error,429".into(),
            per_try_timeout: Some(Duration(std::time::Duration::from_millis(250))),
            retry_remote_localities: Some(true),
            retry_ignore_previous_hosts: Some(false),
            ..Default::default()
        };
        let p = policy(Some(&custom), false).unwrap();
        assert_eq!(p.num_retries.unwrap().value, 4);
        assert_eq!(p.retry_on, "5xx,gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![503, 429]);
        assert_eq!(p.per_try_timeout.unwrap().nanos, 250_000_000);
        assert!(p.retry_priority.is_some());
        assert!(p.retry_host_predicate.is_empty());
    }
}
