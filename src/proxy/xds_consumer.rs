//! The data plane as a consumer of an ADS stream (`meshgate gateway --xds ADDR`).
//!
//! [`GatewayConsumer::check`] compiles a candidate update against the snapshot in force
//! and turns every [`CompileError`] into a [`Rejection`] naming the resource, the field
//! path and the reason: the xDS client sends them all in one NACK. [`GatewayConsumer::apply`]
//! publishes a checked set through [`Gateway::apply_without_secrets`], as the standalone
//! gateway publishes its own snapshots, so both modes serve the same way. SDS secrets
//! take their own way, as in Envoy: [`GatewayConsumer::update_secrets`] publishes each
//! into the gateway's secret store as it arrives, where every filter chain naming it
//! reads it at its next handshake; no listener is compiled for a secret.
use crate::proxy::compile::{CompileError, check};
use crate::proxy::runtime::Gateway;
use crate::xds::client::{ConfigConsumer, Rejection};
use crate::xds::pb::envoy::config::core::v3::Node;
use crate::xds::{ResourceSet, TypeUrl};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most errors gathered for one update: each costs a compilation of the rest.
const MAX_REJECTIONS: usize = 64;

/// Feeds a running [`Gateway`] from an xDS client.
pub struct GatewayConsumer {
    gateway: Arc<Gateway>,
    applies: AtomicU64,
}

impl GatewayConsumer {
    pub fn new(gateway: Arc<Gateway>) -> GatewayConsumer {
        GatewayConsumer {
            gateway,
            applies: AtomicU64::new(0),
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }
}

/// The resource type and name a compile error is about (`cluster "x"` -> CDS `x`).
fn resource_of(e: &CompileError) -> Option<(TypeUrl, String)> {
    let (kind, rest) = e.resource.split_once(' ')?;
    let name = rest.strip_prefix('"')?.strip_suffix('"')?;
    let t = match kind {
        "listener" => TypeUrl::Listener,
        "route_configuration" => TypeUrl::Route,
        "cluster" => TypeUrl::Cluster,
        "cluster_load_assignment" => TypeUrl::Endpoint,
        "secret" => TypeUrl::Secret,
        _ => return None,
    };
    Some((t, name.to_string()))
}

/// Removes one resource from a set; false if it was not there.
fn remove(set: &mut ResourceSet, t: TypeUrl, name: &str) -> bool {
    fn drop_named<T>(v: &mut Vec<T>, name: &str, key: impl Fn(&T) -> &str) -> bool {
        let before = v.len();
        v.retain(|x| key(x) != name);
        v.len() != before
    }
    match t {
        TypeUrl::Listener => drop_named(&mut set.listeners, name, |l| &l.name),
        TypeUrl::Route => drop_named(&mut set.routes, name, |r| &r.name),
        TypeUrl::Cluster => drop_named(&mut set.clusters, name, |c| &c.name),
        TypeUrl::Endpoint => drop_named(&mut set.endpoints, name, |c| &c.cluster_name),
        TypeUrl::Secret => drop_named(&mut set.secrets, name, |s| &s.name),
    }
}

fn rejection(t: TypeUrl, name: String, e: &CompileError) -> Rejection {
    Rejection {
        type_url: t,
        name,
        message: if e.path.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.path, e.message)
        },
    }
}

/// Every compile error of `set`, one per resource: compile, set the offending resource
/// aside, compile the rest again, until the rest compiles. Compilation stops at the
/// first error, so this is how one NACK can list them all.
pub fn rejections(set: &ResourceSet, previous: Option<&crate::proxy::Snapshot>) -> Vec<Rejection> {
    let mut out = Vec::new();
    let mut rest: Option<ResourceSet> = None;
    loop {
        let current = rest.as_ref().unwrap_or(set);
        let Err(e) = check(current, previous) else {
            return out;
        };
        let Some((t, name)) = resource_of(&e) else {
            // Not about one resource: the set as a whole is refused (listed under LDS,
            // where the data plane's entry points are).
            out.push(Rejection {
                type_url: TypeUrl::Listener,
                name: String::new(),
                message: e.to_string(),
            });
            return out;
        };
        out.push(rejection(t, name.clone(), &e));
        let next = rest.get_or_insert_with(|| set.clone());
        if !remove(next, t, &name) || out.len() >= MAX_REJECTIONS {
            // A named resource the set does not hold (an inline one, or a
            // cluster_load_assignment named by its service): nothing more to isolate.
            return out;
        }
    }
}

impl ConfigConsumer for GatewayConsumer {
    fn check(&self, candidate: &ResourceSet) -> Vec<Rejection> {
        let previous = self.gateway.shared().snapshot.load_full();
        rejections(candidate, Some(&previous))
    }

    fn apply(&self, set: Arc<ResourceSet>) {
        let n = self.applies.fetch_add(1, Ordering::Relaxed) + 1;
        let version = format!("xds-{n}");
        let set = Arc::try_unwrap(set).unwrap_or_else(|s| (*s).clone());
        match self.gateway.apply_without_secrets(set, &version) {
            Ok(()) => tracing::info!(version, "xDS update applied"),
            // Checked updates still fail when a listener cannot bind: the last good
            // snapshot keeps serving, as after a NACK.
            Err(e) => {
                tracing::error!(version, error = %e, "xDS update not applied; keeping the last good configuration")
            }
        }
    }

    fn update_secrets(
        &self,
        secrets: &[crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
        removed: &[String],
    ) -> Vec<Rejection> {
        self.gateway
            .update_secrets(secrets, removed)
            .into_iter()
            .map(|(name, e)| Rejection {
                type_url: TypeUrl::Secret,
                name,
                message: e.to_string(),
            })
            .collect()
    }
}

impl GatewayConsumer {
    /// How many sets were applied (each one compiles the listeners).
    pub fn applies(&self) -> u64 {
        self.applies.load(Ordering::Relaxed)
    }
}

/// What a meshgate gateway says about itself when it joins a control plane: the same
/// node an Envoy bootstrapped by `meshgate bootstrap envoy` sends (Istio's node id and
/// metadata: `LABELS`, `NAMESPACE`, `CLUSTER_ID`, `INSTANCE_IPS`, ...), with meshgate as
/// the user agent.
pub fn gateway_node(
    bootstrap: &crate::controlplane::bootstrap::EnvoyBootstrap,
) -> Result<Node, crate::controlplane::bootstrap::BootstrapError> {
    use crate::xds::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let mut node = bootstrap.build()?.node.unwrap_or_default();
    node.user_agent_name = "meshgate".into();
    node.user_agent_version_type = Some(UserAgentVersionType::UserAgentVersion(
        env!("CARGO_PKG_VERSION").into(),
    ));
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::sample::{SampleGateway, SampleService};
    use crate::xds::pb::envoy::config::cluster::v3::cluster::{LbConfig, OriginalDstLbConfig};

    fn gw() -> ResourceSet {
        SampleGateway::new(
            8080,
            vec![
                SampleService::new("a", vec!["127.0.0.1:1".parse().unwrap()]),
                SampleService::new("b", vec!["127.0.0.1:2".parse().unwrap()]),
            ],
        )
        .resources()
    }

    /// A field the data plane refuses.
    fn unsupported(c: &mut crate::xds::pb::envoy::config::cluster::v3::Cluster) {
        c.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig::default()));
    }

    #[test]
    fn a_valid_set_has_no_rejections() {
        assert!(rejections(&gw(), None).is_empty());
    }

    #[test]
    fn every_bad_resource_is_rejected_with_its_path() {
        let mut set = gw();
        unsupported(&mut set.clusters[0]);
        unsupported(&mut set.clusters[1]);
        set.listeners[0].filter_chains.clear();
        set.sort();
        let r = rejections(&set, None);
        let names: Vec<(TypeUrl, &str)> = r.iter().map(|r| (r.type_url, r.name.as_str())).collect();
        assert!(
            names.contains(&(TypeUrl::Cluster, set.clusters[0].name.as_str())),
            "{r:?}"
        );
        let listener = set.listeners[0].name.as_str();
        assert!(names.contains(&(TypeUrl::Listener, listener)), "{r:?}");
        assert_eq!(
            r.iter().filter(|r| r.type_url == TypeUrl::Cluster).count(),
            2,
            "{r:?}"
        );
        let refused = r.iter().find(|r| r.type_url == TypeUrl::Cluster).unwrap();
        assert_eq!(
            refused.message,
            "original_dst_lb_config: field not supported by meshgate (see docs/xds-support.md)"
        );
        assert_eq!(
            refused.to_string(),
            format!("cds {}: {}", refused.name, refused.message)
        );
    }

    #[test]
    fn compile_error_resources_map_to_types() {
        let e = |resource: &str| CompileError {
            resource: resource.into(),
            path: String::new(),
            message: "m".into(),
        };
        assert_eq!(
            resource_of(&e("cluster \"outbound|80||a\"")),
            Some((TypeUrl::Cluster, "outbound|80||a".into()))
        );
        assert_eq!(
            resource_of(&e("route_configuration \"http.8080\"")),
            Some((TypeUrl::Route, "http.8080".into()))
        );
        assert_eq!(
            resource_of(&e("cluster_load_assignment \"x\"")),
            Some((TypeUrl::Endpoint, "x".into()))
        );
        assert_eq!(resource_of(&e("something else")), None);
    }

    #[test]
    fn the_node_is_istio_shaped() {
        let b = crate::controlplane::bootstrap::EnvoyBootstrap {
            node_id: "gw-1".into(),
            namespace: "edge".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        };
        let node = gateway_node(&b).unwrap();
        assert_eq!(node.id, "router~127.0.0.1~gw-1.edge~edge.svc.cluster.local");
        assert_eq!(node.user_agent_name, "meshgate");
        let info = crate::controlplane::parse_node(Some(&node)).unwrap();
        assert_eq!(info.identity.namespace, "edge");
        assert_eq!(info.identity.labels["istio"], "ingressgateway");
        assert_eq!(info.identity.cluster_id, "Kubernetes");
        assert_eq!(info.proxy_id, "gw-1.edge");
    }
}
