//! Endpoints of a cluster: grouped by locality with weights and metadata, then shaped by
//! the DestinationRule's locality load balancing (`distribute`, `failover`,
//! `failoverPriority`) the way istiod's EDS does.
use super::pb;
use crate::config::types::destination_rule::LocalityLoadBalancerSetting;
use crate::registry::{Endpoint, Locality, Service};
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::endpoint::v3 as endpoint;
use std::collections::{BTreeMap, HashMap};

/// The endpoints of a service port (restricted to a subset's labels), grouped by
/// locality in locality order, each group weighted by the sum of its endpoints.
pub fn locality_groups(
    service: &Service,
    port: u32,
    subset_labels: &BTreeMap<String, String>,
) -> Vec<Group> {
    let mut by_locality: BTreeMap<Locality, Vec<&Endpoint>> = BTreeMap::new();
    for e in service.endpoints_for(port, subset_labels) {
        by_locality.entry(e.locality.clone()).or_default().push(e);
    }
    by_locality
        .into_iter()
        .map(|(locality, eps)| Group {
            locality,
            endpoints: eps.into_iter().cloned().collect(),
        })
        .collect()
}

/// Endpoints of one locality.
#[derive(Debug, Clone)]
pub struct Group {
    pub locality: Locality,
    pub endpoints: Vec<Endpoint>,
}

/// How the DestinationRule shapes endpoints by locality.
pub struct LocalityPolicy<'a> {
    pub setting: &'a LocalityLoadBalancerSetting,
    /// Failover needs outlier detection (as in Istio) to notice unhealthy endpoints.
    pub failover_enabled: bool,
    pub proxy_locality: &'a Locality,
    pub proxy_labels: &'a BTreeMap<String, String>,
}

/// Builds the Envoy locality endpoints of `groups`, applying `policy` if any.
pub fn locality_lb_endpoints(
    groups: &[Group],
    policy: Option<&LocalityPolicy>,
) -> Vec<endpoint::LocalityLbEndpoints> {
    let mut out: Vec<endpoint::LocalityLbEndpoints> = Vec::new();
    for g in groups {
        // Priorities from failoverPriority split a locality by endpoint labels.
        let split: Vec<(u32, Vec<&Endpoint>)> = match policy {
            Some(p)
                if p.setting.distribute.is_empty()
                    && p.failover_enabled
                    && !p.setting.failover_priority.is_empty()
                    && !p.proxy_labels.is_empty() =>
            {
                failover_priority_split(&g.endpoints, &p.setting.failover_priority, p.proxy_labels)
            }
            _ => vec![(0, g.endpoints.iter().collect())],
        };
        for (priority, eps) in split {
            let lb_endpoints: Vec<endpoint::LbEndpoint> =
                eps.iter().map(|e| lb_endpoint(e)).collect();
            let weight = eps
                .iter()
                .fold(0u32, |acc, e| acc.saturating_add(e.weight.max(1)));
            out.push(endpoint::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: g.locality.region.clone(),
                    zone: g.locality.zone.clone(),
                    sub_zone: g.locality.subzone.clone(),
                }),
                lb_endpoints,
                load_balancing_weight: Some(pb::u32v(weight)),
                priority,
                ..Default::default()
            });
        }
    }
    if let Some(p) = policy {
        if !p.setting.distribute.is_empty() {
            apply_distribute(&mut out, p);
        } else if p.failover_enabled
            && !p.proxy_locality.is_empty()
            && (p.setting.failover_priority.is_empty() || !p.setting.failover.is_empty())
        {
            apply_failover(&mut out, p);
        }
        renumber_priorities(&mut out);
    }
    out
}

/// The workload label saying whether an endpoint speaks mesh mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Its short name, the key of the endpoint's transport socket match metadata.
pub const TLS_MODE_SHORT: &str = "tlsMode";
/// The value of a workload with a mesh proxy.
pub const TLS_MODE_ISTIO: &str = "istio";
/// Envoy's metadata namespace matched by a cluster's `transport_socket_matches`.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Whether an endpoint's workload takes mesh mTLS (label `security.istio.io/tlsMode:
/// istio`).
pub fn is_istio_mtls(e: &Endpoint) -> bool {
    e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
}

/// One Envoy endpoint with Istio's metadata: the workload identity string
/// (`name;namespace;;;cluster`) and, for meshgate's data plane, the labels.
fn lb_endpoint(e: &Endpoint) -> endpoint::LbEndpoint {
    let address = if e.unix {
        pb::pipe_address(&e.address)
    } else {
        pb::socket_address(&e.address, e.port)
    };
    let mut istio = HashMap::new();
    istio.insert(
        "workload".to_string(),
        pb::string_value(&format!("{};{};;;", e.workload_name, e.namespace)),
    );
    if !e.labels.is_empty() {
        istio.insert("labels".to_string(), pb::string_map_value(&e.labels));
    }
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(
        "istio".to_string(),
        crate::xds::pb::google::protobuf::Struct { fields: istio },
    );
    // istiod's AppendLbEndpointMetadata: any tlsMode but `disabled` selects the
    // cluster's transport socket of that name.
    if let Some(mode) = e.labels.get(TLS_MODE_LABEL)
        && !mode.is_empty()
        && mode != "disabled"
    {
        filter_metadata.insert(
            TRANSPORT_SOCKET_MATCH.to_string(),
            crate::xds::pb::google::protobuf::Struct {
                fields: HashMap::from([(TLS_MODE_SHORT.to_string(), pb::string_value(mode))]),
            },
        );
    }
    endpoint::LbEndpoint {
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(address),
                ..Default::default()
            },
        )),
        load_balancing_weight: Some(pb::u32v(e.weight.max(1))),
        metadata: Some(core::Metadata {
            filter_metadata,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_locality(l: Option<&core::Locality>) -> Locality {
    l.map(|l| Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.sub_zone.clone(),
    })
    .unwrap_or_default()
}

/// `distribute`: the first rule whose `from` matches the proxy gives each matching
/// locality its share (scaled by endpoint weight); unmatched localities get nothing.
fn apply_distribute(out: &mut [endpoint::LocalityLbEndpoints], p: &LocalityPolicy) {
    let Some(rule) = p
        .setting
        .distribute
        .iter()
        .find(|d| p.proxy_locality.matches(&d.from))
    else {
        return;
    };
    let mut unmatched: Vec<bool> = vec![true; out.len()];
    for (pattern, share) in &rule.to {
        let mut total: u64 = 0;
        let mut matched: Vec<(usize, u64)> = Vec::new();
        for (i, group) in out.iter().enumerate() {
            if unmatched[i] && to_locality(group.locality.as_ref()).matches(pattern) {
                unmatched[i] = false;
                let w = u64::from(group.load_balancing_weight.as_ref().map_or(1, |w| w.value));
                total += w;
                matched.push((i, w));
            }
        }
        for (i, w) in matched {
            if total > 0 {
                let weight = (w * u64::from(*share)).div_ceil(total);
                if weight > 0 {
                    out[i].load_balancing_weight =
                        Some(pb::u32v(u32::try_from(weight).unwrap_or(u32::MAX)));
                }
            }
        }
    }
    for (i, group) in out.iter_mut().enumerate() {
        if unmatched[i] {
            group.lb_endpoints.clear();
        }
    }
}

/// `failover`: same subzone first, then zone, region, the named failover region, the rest.
fn apply_failover(out: &mut [endpoint::LocalityLbEndpoints], p: &LocalityPolicy) {
    let proxy = p.proxy_locality;
    for group in out.iter_mut() {
        let l = to_locality(group.locality.as_ref());
        let mut priority = if l.region != proxy.region {
            3
        } else if l.zone != proxy.zone {
            2
        } else if l.subzone != proxy.subzone {
            1
        } else {
            0
        };
        if priority == 3
            && let Some(f) = p.setting.failover.iter().find(|f| f.from == proxy.region)
            && l.region != f.to
        {
            priority = 4;
        }
        group.priority = group.priority * 5 + priority;
    }
}

/// `failoverPriority`: endpoints whose labels match the proxy's on more of the listed
/// labels (in order) get a better priority. `label=value` compares with that value.
fn failover_priority_split<'e>(
    endpoints: &'e [Endpoint],
    labels: &[String],
    proxy_labels: &BTreeMap<String, String>,
) -> Vec<(u32, Vec<&'e Endpoint>)> {
    let lowest = labels.len();
    let includes_network = labels
        .first()
        .is_some_and(|l| l == "topology.istio.io/network");
    let mut by_priority: BTreeMap<usize, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        let mut priority = 0;
        let mut adjust = 0;
        for (j, label) in labels.iter().enumerate() {
            let (key, want) = match label.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (label.as_str(), None),
            };
            let want = want.or_else(|| proxy_labels.get(key).map(String::as_str));
            if want != e.labels.get(key).map(String::as_str) {
                if j == 0 && includes_network {
                    adjust = lowest;
                    continue;
                }
                priority = lowest - j;
                break;
            }
        }
        by_priority.entry(priority + adjust).or_default().push(e);
    }
    by_priority
        .into_iter()
        .map(|(p, eps)| (u32::try_from(p).unwrap_or(u32::MAX), eps))
        .collect()
}

/// Envoy wants priorities 0, 1, 2, ... without gaps.
fn renumber_priorities(out: &mut [endpoint::LocalityLbEndpoints]) {
    let mut distinct: Vec<u32> = out.iter().map(|g| g.priority).collect();
    distinct.sort_unstable();
    distinct.dedup();
    for g in out.iter_mut() {
        g.priority =
            u32::try_from(distinct.iter().position(|&p| p == g.priority).unwrap_or(0)).unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::destination_rule::{Distribute, Failover};

    fn ep(addr: &str, locality: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: addr.into(),
            unix: false,
            port: 80,
            service_port: 80,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            locality: Locality::parse(locality),
            weight: 1,
            network: String::new(),
            service_account: String::new(),
            workload_name: "w".into(),
            namespace: "ns".into(),
        }
    }

    fn groups(eps: Vec<Endpoint>) -> Vec<Group> {
        let mut by: BTreeMap<Locality, Vec<Endpoint>> = BTreeMap::new();
        for e in eps {
            by.entry(e.locality.clone()).or_default().push(e);
        }
        by.into_iter()
            .map(|(locality, endpoints)| Group {
                locality,
                endpoints,
            })
            .collect()
    }

    fn summary(out: &[endpoint::LocalityLbEndpoints]) -> Vec<(String, u32, u32, usize)> {
        out.iter()
            .map(|g| {
                let l = g.locality.clone().unwrap_or_default();
                (
                    format!("{}/{}/{}", l.region, l.zone, l.sub_zone),
                    g.priority,
                    g.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                    g.lb_endpoints.len(),
                )
            })
            .collect()
    }

    #[test]
    fn failover_orders_localities_by_proximity() {
        let g = groups(vec![
            ep("1", "r1/z1/s1", &[]),
            ep("2", "r1/z2/s1", &[]),
            ep("3", "r2/z1/s1", &[]),
            ep("4", "r3/z1/s1", &[]),
        ]);
        let setting = LocalityLoadBalancerSetting {
            failover: vec![Failover {
                from: "r1".into(),
                to: "r3".into(),
            }],
            ..Default::default()
        };
        let proxy = Locality::parse("r1/z1/s1");
        let labels = BTreeMap::new();
        let p = LocalityPolicy {
            setting: &setting,
            failover_enabled: true,
            proxy_locality: &proxy,
            proxy_labels: &labels,
        };
        let out = locality_lb_endpoints(&g, Some(&p));
        assert_eq!(
            summary(&out),
            vec![
                ("r1/z1/s1".into(), 0, 1, 1),
                ("r1/z2/s1".into(), 1, 1, 1),
                ("r2/z1/s1".into(), 3, 1, 1),
                ("r3/z1/s1".into(), 2, 1, 1),
            ]
        );
        // Without outlier detection there is no failover.
        let p = LocalityPolicy {
            failover_enabled: false,
            ..p
        };
        assert!(
            locality_lb_endpoints(&g, Some(&p))
                .iter()
                .all(|g| g.priority == 0)
        );
    }

    #[test]
    fn distribute_weights_localities() {
        let g = groups(vec![
            ep("1", "r1/z1/s1", &[]),
            ep("2", "r1/z2/s1", &[]),
            ep("3", "r1/z2/s1", &[]),
            ep("4", "r2/z1/s1", &[]),
        ]);
        let setting = LocalityLoadBalancerSetting {
            distribute: vec![Distribute {
                from: "r1/*".into(),
                to: BTreeMap::from([("r1/z1/*".into(), 80), ("r1/z2/*".into(), 20)]),
            }],
            ..Default::default()
        };
        let proxy = Locality::parse("r1/z1/s1");
        let labels = BTreeMap::new();
        let p = LocalityPolicy {
            setting: &setting,
            failover_enabled: false,
            proxy_locality: &proxy,
            proxy_labels: &labels,
        };
        let out = locality_lb_endpoints(&g, Some(&p));
        assert_eq!(
            summary(&out),
            vec![
                ("r1/z1/s1".into(), 0, 80, 1),
                ("r1/z2/s1".into(), 0, 20, 2),
                ("r2/z1/s1".into(), 0, 1, 0),
            ]
        );
    }

    #[test]
    fn failover_priority_splits_by_labels() {
        let g = groups(vec![
            ep(
                "1",
                "",
                &[("topology.kubernetes.io/region", "a"), ("zone", "1")],
            ),
            ep(
                "2",
                "",
                &[("topology.kubernetes.io/region", "a"), ("zone", "2")],
            ),
            ep(
                "3",
                "",
                &[("topology.kubernetes.io/region", "b"), ("zone", "1")],
            ),
        ]);
        let setting = LocalityLoadBalancerSetting {
            failover_priority: vec!["topology.kubernetes.io/region".into(), "zone".into()],
            ..Default::default()
        };
        let proxy = Locality::default();
        let labels = BTreeMap::from([
            ("topology.kubernetes.io/region".to_string(), "a".to_string()),
            ("zone".to_string(), "1".to_string()),
        ]);
        let p = LocalityPolicy {
            setting: &setting,
            failover_enabled: true,
            proxy_locality: &proxy,
            proxy_labels: &labels,
        };
        let out = locality_lb_endpoints(&g, Some(&p));
        let prio: Vec<(u32, usize)> = out
            .iter()
            .map(|g| (g.priority, g.lb_endpoints.len()))
            .collect();
        assert_eq!(prio, vec![(0, 1), (1, 1), (2, 1)]);
    }
}
