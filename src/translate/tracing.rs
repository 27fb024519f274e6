//! The connection manager's `tracing`, as istiod builds it from the mesh's tracing
//! provider (`pilot/pkg/networking/core/tracing.go`, the path without Telemetry
//! resources): MeshConfig `defaultProviders.tracing` names a `zipkin` provider of
//! `extensionProviders`, whose service is looked up in the registry for its cluster
//! `outbound|PORT||HOST`; the sampling percentage comes from `defaultConfig.tracing`
//! (else istiod's `PILOT_TRACE_SAMPLING` default, 1%); the tags are Istio's service
//! tags, its dry-run authorization tags and `defaultConfig.tracing.customTags`, sorted
//! by name. Gateways spawn a span per upstream request (Istio's behaviour since the
//! `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY` switch was removed); sidecars do not.
use super::authz::{DRY_RUN_ALLOW_PREFIX, DRY_RUN_DENY_PREFIX};
use super::scope::Scope;
use crate::config::mesh::{TracingCustomTag, ZipkinProvider};
use crate::xds::pb::envoy::config::trace::v3 as trace_pb;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::r#type::metadata::v3 as metadata_pb;
use crate::xds::pb::envoy::r#type::tracing::v3 as tag_pb;
use crate::xds::pb::envoy::r#type::v3::Percent;
use crate::xds::pb::google::protobuf::{BoolValue, UInt32Value};
use crate::xds::ProxyKind;

/// Envoy's name of the Zipkin tracer.
pub const ZIPKIN: &str = "envoy.tracers.zipkin";
/// istiod's collector path when the provider sets none.
const DEFAULT_ZIPKIN_PATH: &str = "/api/v2/spans";
/// istiod's `PILOT_TRACE_SAMPLING` default.
const DEFAULT_SAMPLING: f64 = 1.0;
/// The RBAC filter whose dry-run results the authorization tags read.
const RBAC_FILTER: &str = "envoy.filters.http.rbac";

/// Checks that the mesh's tracing provider can be used: its service must be in the
/// registry (a Kubernetes Service or ServiceEntry host) with the port.
pub fn check(
    registry: &crate::registry::Registry,
    mesh: &crate::config::mesh::MeshConfig,
) -> Vec<crate::config::Diagnostic> {
    let Some(name) = mesh.tracing.providers.first() else {
        return Vec::new();
    };
    let Some(zipkin) = mesh.extension_provider(name).and_then(|p| p.zipkin()) else {
        // The mesh configuration's own checks reported it.
        return Vec::new();
    };
    match super::ext_authz::lookup_cluster(registry, &zipkin.service, zipkin.port) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let mut d = crate::config::Diagnostic::file_error(
                mesh.source.clone().unwrap_or_else(|| "mesh configuration".into()),
                0,
                0,
                format!("tracing provider {name:?}: {e}"),
            );
            d.resource = Some("MeshConfig".into());
            d.field = Some("defaultProviders.tracing[0]".into());
            vec![d]
        }
    }
}

/// A connection manager's tracing and the service whose cluster it reports to.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltTracing {
    pub tracing: hcm::http_connection_manager::Tracing,
    /// `(hostname, namespace)` of the collector: the proxy must carry its cluster.
    pub service: (String, String),
}

/// The tracing of the proxy's connection managers; `Ok(None)` when the mesh names no
/// tracing provider. An error says why the provider cannot be used (istiod then builds
/// no tracing, and logs it).
pub fn build(scope: &Scope) -> Result<Option<BuiltTracing>, String> {
    let mesh = &scope.tracing;
    // istiod uses the first provider (Envoy takes one tracer per connection manager).
    let Some(name) = mesh.providers.first() else {
        return Ok(None);
    };
    let Some(p) = scope.extension_providers.iter().find(|p| &p.name == name) else {
        return Err(format!(
            "tracing provider {name:?} is not defined in extensionProviders"
        ));
    };
    let Some(zipkin) = p.zipkin() else {
        return Err(format!(
            "tracing provider {name:?} is a `{}` provider; meshgate serves zipkin providers",
            p.kind
        ));
    };
    let (host, namespace, cluster) =
        super::ext_authz::lookup_cluster(scope.registry, &zipkin.service, zipkin.port)
            .map_err(|e| format!("could not find cluster for tracing provider {name:?}: {e}"))?;
    let mut tracing = hcm::http_connection_manager::Tracing {
        provider: Some(zipkin_provider(&host, &cluster, &zipkin)),
        ..Default::default()
    };
    if scope.proxy.kind == ProxyKind::Router {
        tracing.spawn_upstream_span = Some(BoolValue { value: true });
    }
    if zipkin.max_tag_length != 0 {
        tracing.max_path_tag_length = Some(UInt32Value {
            value: zipkin.max_tag_length,
        });
    } else if mesh.max_path_tag_length != 0 {
        tracing.max_path_tag_length = Some(UInt32Value {
            value: mesh.max_path_tag_length,
        });
    }
    // istiod's configureSampling with the ProxyConfig's percentage.
    let sampling = match mesh.sampling.0 {
        s if s == 0.0 => DEFAULT_SAMPLING,
        s if s > 100.0 => 1.0,
        s => s,
    };
    tracing.client_sampling = Some(Percent { value: 100.0 });
    tracing.overall_sampling = Some(Percent { value: 100.0 });
    tracing.random_sampling = Some(Percent { value: sampling });
    tracing.custom_tags = custom_tags(scope);
    Ok(Some(BuiltTracing {
        tracing,
        service: (host, namespace),
    }))
}

fn zipkin_provider(host: &str, cluster: &str, z: &ZipkinProvider) -> trace_pb::tracing::Http {
    let config = trace_pb::ZipkinConfig {
        collector_cluster: cluster.to_string(),
        collector_endpoint: if z.path.is_empty() {
            DEFAULT_ZIPKIN_PATH.to_string()
        } else {
            z.path.clone()
        },
        collector_endpoint_version: trace_pb::zipkin_config::CollectorEndpointVersion::HttpJson
            as i32,
        trace_id_128bit: !z.enable_64bit_trace_id,
        shared_span_context: Some(BoolValue { value: false }),
        collector_hostname: host.to_string(),
        ..Default::default()
    };
    trace_pb::tracing::Http {
        name: ZIPKIN.to_string(),
        config_type: Some(trace_pb::tracing::http::ConfigType::TypedConfig(
            super::pb::any(&config),
        )),
    }
}

fn literal(tag: &str, value: &str) -> tag_pb::CustomTag {
    tag_pb::CustomTag {
        tag: tag.to_string(),
        r#type: Some(tag_pb::custom_tag::Type::Literal(
            tag_pb::custom_tag::Literal {
                value: value.to_string(),
            },
        )),
    }
}

/// istiod's dry-run authorization tag: the RBAC filter's shadow result, when present.
fn dry_run_tag(tag: &str, key: &str) -> tag_pb::CustomTag {
    use metadata_pb::metadata_key::{PathSegment, path_segment::Segment};
    tag_pb::CustomTag {
        tag: tag.to_string(),
        r#type: Some(tag_pb::custom_tag::Type::Metadata(
            tag_pb::custom_tag::Metadata {
                kind: Some(metadata_pb::MetadataKind {
                    kind: Some(metadata_pb::metadata_kind::Kind::Request(
                        metadata_pb::metadata_kind::Request {},
                    )),
                }),
                metadata_key: Some(metadata_pb::MetadataKey {
                    key: RBAC_FILTER.to_string(),
                    path: vec![PathSegment {
                        segment: Some(Segment::Key(key.to_string())),
                    }],
                }),
                default_value: String::new(),
            },
        )),
    }
}

/// istiod's `configureCustomTags` without Telemetry resources.
fn custom_tags(scope: &Scope) -> Vec<tag_pb::CustomTag> {
    let proxy = scope.proxy;
    let mut tags = Vec::new();
    if scope.tracing.enable_istio_tags.unwrap_or(true) {
        let label = |k: &str| {
            proxy
                .labels
                .get(k)
                .filter(|v| !v.is_empty())
                .map(String::as_str)
        };
        let or = |v: &str, d: &'static str| if v.is_empty() { d } else { v }.to_string();
        tags.push(literal(
            "istio.canonical_revision",
            label("service.istio.io/canonical-revision").unwrap_or("latest"),
        ));
        tags.push(literal(
            "istio.canonical_service",
            label("service.istio.io/canonical-name").unwrap_or("unknown"),
        ));
        tags.push(literal("istio.mesh_id", "unknown"));
        tags.push(literal("istio.namespace", &or(&proxy.namespace, "default")));
        tags.push(literal("istio.cluster_id", &or(&proxy.cluster_id, "unknown")));
        for (tag, prefix, key) in [
            (
                "istio.authorization.dry_run.allow_policy.name",
                DRY_RUN_ALLOW_PREFIX,
                "shadow_effective_policy_id",
            ),
            (
                "istio.authorization.dry_run.allow_policy.result",
                DRY_RUN_ALLOW_PREFIX,
                "shadow_engine_result",
            ),
            (
                "istio.authorization.dry_run.deny_policy.name",
                DRY_RUN_DENY_PREFIX,
                "shadow_effective_policy_id",
            ),
            (
                "istio.authorization.dry_run.deny_policy.result",
                DRY_RUN_DENY_PREFIX,
                "shadow_engine_result",
            ),
        ] {
            tags.push(dry_run_tag(tag, &format!("{prefix}{key}")));
        }
    }
    for (name, tag) in &scope.tracing.custom_tags {
        use tag_pb::custom_tag::{Environment, Header, Literal, Type};
        let t = match tag {
            TracingCustomTag::Literal { value } => Type::Literal(Literal {
                value: value.clone(),
            }),
            TracingCustomTag::Environment {
                name,
                default_value,
            } => Type::Environment(Environment {
                name: name.clone(),
                default_value: default_value.clone(),
            }),
            TracingCustomTag::Header {
                name,
                default_value,
            } => Type::RequestHeader(Header {
                name: name.clone(),
                default_value: default_value.clone(),
            }),
        };
        tags.push(tag_pb::CustomTag {
            tag: name.clone(),
            r#type: Some(t),
        });
    }
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    tags
}
