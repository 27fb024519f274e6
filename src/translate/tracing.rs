//! The connection manager's `tracing`, as istiod builds it from the mesh's tracing
//! provider (`pilot/pkg/networking/core/tracing.go`, the path without Telemetry
//! resources): MeshConfig `defaultProviders.tracing` names a `zipkin` provider of
//! `extensionProviders`, whose service is looked up in the registry for its cluster
//! `outbound|PORT||HOST`; the sampling percentage comes from `defaultConfig.tracing`
//! (else istiod's `PILOT_TRACE_SAMPLING` default, 1%); the tags are Istio's service
//! tags, its dry-run authorization tags and `defaultConfig.tracing.customTags`, sorted
//! by name. Gateways spawn a span per upstream request (Istio's behaviour since the
//! `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY` switch was removed); sidecars do not.
//!
//! Telemetry resources (`pilot/pkg/model/telemetry.go`) override that per proxy: the
//! selector-less one of the root namespace, then the proxy's namespace's, then the
//! first one of the proxy's namespace whose selector matches its labels, each field set
//! by a more specific one winning. Gateways and sidecars' outbound listeners take the
//! CLIENT side, sidecars' inbound listeners the SERVER side.
use super::authz::{DRY_RUN_ALLOW_PREFIX, DRY_RUN_DENY_PREFIX};
use super::scope::Scope;
use crate::config::mesh::{TracingCustomTag, ZipkinProvider};
use crate::config::types::telemetry::{Tracing as TelemetryTracing, WorkloadMode};
use crate::xds::ProxyKind;
use crate::xds::pb::envoy::config::trace::v3 as trace_pb;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::r#type::metadata::v3 as metadata_pb;
use crate::xds::pb::envoy::r#type::tracing::v3 as tag_pb;
use crate::xds::pb::envoy::r#type::v3::Percent;
use crate::xds::pb::google::protobuf::{BoolValue, UInt32Value};
use std::collections::BTreeMap;

/// Envoy's name of the Zipkin tracer.
pub const ZIPKIN: &str = "envoy.tracers.zipkin";
/// istiod's collector path when the provider sets none.
const DEFAULT_ZIPKIN_PATH: &str = "/api/v2/spans";
/// istiod's `PILOT_TRACE_SAMPLING` default.
const DEFAULT_SAMPLING: f64 = 1.0;
/// The RBAC filter whose dry-run results the authorization tags read.
const RBAC_FILTER: &str = "envoy.filters.http.rbac";

/// Checks that the tracing providers can be used: the mesh's and those Telemetry
/// resources name must be zipkin extension providers whose service is in the registry
/// (a Kubernetes Service or ServiceEntry host) with the port.
pub fn check(
    registry: &crate::registry::Registry,
    mesh: &crate::config::mesh::MeshConfig,
    config: &crate::config::Config,
) -> Vec<crate::config::Diagnostic> {
    let mut out = Vec::new();
    if let Some(name) = mesh.tracing.providers.first()
        // The mesh configuration's own checks reported a provider that is not zipkin.
        && let Some(zipkin) = mesh.extension_provider(name).and_then(|p| p.zipkin())
        && let Err(e) = super::ext_authz::lookup_cluster(registry, &zipkin.service, zipkin.port)
    {
        let mut d = crate::config::Diagnostic::file_error(
            mesh.source
                .clone()
                .unwrap_or_else(|| "mesh configuration".into()),
            0,
            0,
            format!("tracing provider {name:?}: {e}"),
        );
        d.resource = Some("MeshConfig".into());
        d.field = Some("defaultProviders.tracing[0]".into());
        out.push(d);
    }
    for t in &config.telemetries {
        for (i, tracing) in t.spec.tracing.iter().enumerate() {
            for (j, p) in tracing.providers.iter().enumerate() {
                if p.name.is_empty() {
                    continue; // validation reported it
                }
                let field = format!("spec.tracing[{i}].providers[{j}].name");
                let problem = match mesh.extension_provider(&p.name) {
                    None => Some(format!(
                        "tracing provider {:?} is not defined in extensionProviders",
                        p.name
                    )),
                    Some(provider) => match provider.zipkin() {
                        None => Some(format!(
                            "tracing provider {:?} is a `{}` provider; meshgate serves zipkin providers",
                            p.name, provider.kind
                        )),
                        Some(zipkin) => {
                            super::ext_authz::lookup_cluster(registry, &zipkin.service, zipkin.port)
                                .err()
                                .map(|e| format!("tracing provider {:?}: {e}", p.name))
                        }
                    },
                };
                if let Some(message) = problem {
                    out.push(t.error(&field, message));
                }
            }
        }
    }
    out
}

/// A connection manager's tracing and the service whose cluster it reports to.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltTracing {
    pub tracing: hcm::http_connection_manager::Tracing,
    /// `(hostname, namespace)` of the collector: the proxy must carry its cluster.
    pub service: (String, String),
}

/// The tracing of a proxy as istiod computes it for one side of its traffic
/// (`Telemetries.Tracing`): the mesh's default provider, overridden field by field by
/// the Telemetry resources that apply, least specific first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectiveTracing {
    /// The extension provider spans go to; none: no tracing.
    pub provider: Option<String>,
    /// `disableSpanReporting`.
    pub disabled: bool,
    /// `randomSamplingPercentage`; none: the ProxyConfig's sampling.
    pub sampling: Option<f64>,
    /// `customTags`; none or empty: the ProxyConfig's tags.
    pub custom_tags: Option<BTreeMap<String, TracingCustomTag>>,
}

/// The Telemetry tracing overrides that apply to the proxy, least specific first:
/// the root namespace's selector-less Telemetry, the proxy namespace's, and the first
/// of the proxy's namespace whose selector matches the proxy's labels.
fn applicable<'a>(scope: &Scope<'a>) -> Vec<&'a TelemetryTracing> {
    let config = scope.config;
    let namespace_wide = |ns: &str| {
        config
            .telemetries
            .iter()
            .find(|t| t.meta.namespace == ns && t.spec.match_labels().is_none())
    };
    let mut levels = Vec::new();
    levels.extend(namespace_wide(&scope.root_namespace));
    if scope.namespace != scope.root_namespace {
        levels.extend(namespace_wide(&scope.namespace));
    }
    levels.extend(config.telemetries.iter().find(|t| {
        t.meta.namespace == scope.namespace
            && t.spec
                .match_labels()
                .is_some_and(|m| m.iter().all(|(k, v)| scope.proxy.labels.get(k) == Some(v)))
    }));
    levels.iter().flat_map(|t| t.spec.tracing.iter()).collect()
}

/// The proxy's tracing for `side` (`Client` for gateways and outbound listeners,
/// `Server` for inbound ones).
pub fn effective(scope: &Scope, side: WorkloadMode) -> EffectiveTracing {
    let mut spec = EffectiveTracing {
        provider: scope.tracing.providers.first().cloned(),
        ..Default::default()
    };
    for m in applicable(scope) {
        let mode = m.match_.as_ref().map(|s| s.mode).unwrap_or_default();
        if !mode.covers(side) {
            continue;
        }
        if let Some(p) = m.providers.first() {
            spec.provider = Some(p.name.clone());
        }
        if let Some(d) = m.disable_span_reporting {
            spec.disabled = d;
        }
        if let Some(tags) = &m.custom_tags {
            spec.custom_tags = Some(tags.clone());
        }
        if let Some(p) = m.random_sampling_percentage {
            spec.sampling = Some(p);
        }
    }
    if spec.provider.is_none() {
        spec.disabled = true;
    }
    spec
}

/// The tracing of the proxy's connection managers on `side`; `Ok(None)` when no
/// provider applies or span reporting is disabled. An error says why the provider
/// cannot be used (istiod then builds no tracing, and logs it).
pub fn build(scope: &Scope, side: WorkloadMode) -> Result<Option<BuiltTracing>, String> {
    let mesh = &scope.tracing;
    let spec = effective(scope, side);
    if spec.disabled {
        return Ok(None);
    }
    let Some(name) = &spec.provider else {
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
    // istiod's configureSampling: the Telemetry's percentage, else the ProxyConfig's.
    let configured = mesh.sampling.0;
    let sampling = if let Some(p) = spec.sampling {
        p
    } else if configured == 0.0 {
        DEFAULT_SAMPLING
    } else if configured > 100.0 {
        1.0
    } else {
        configured
    };
    tracing.client_sampling = Some(Percent { value: 100.0 });
    tracing.overall_sampling = Some(Percent { value: 100.0 });
    tracing.random_sampling = Some(Percent { value: sampling });
    tracing.custom_tags = custom_tags(scope, spec.custom_tags.as_ref());
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

/// istiod's `configureCustomTags`: Istio's tags, then the Telemetry's tags, or the
/// ProxyConfig's when the Telemetry sets none.
fn custom_tags(
    scope: &Scope,
    telemetry: Option<&BTreeMap<String, TracingCustomTag>>,
) -> Vec<tag_pb::CustomTag> {
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
        tags.push(literal(
            "istio.cluster_id",
            &or(&proxy.cluster_id, "unknown"),
        ));
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
    let user = telemetry
        .filter(|t| !t.is_empty())
        .unwrap_or(&scope.tracing.custom_tags);
    for (name, tag) in user {
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

#[cfg(test)]
mod tests {
    use crate::config::mesh::parse_mesh_config;
    use crate::registry::Registry;
    use crate::xds::ProxyIdentity;
    use crate::xds::json;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zipkin, namespace: istio-system}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9411, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: backend.internal}}]}]
"#;

    fn translate(mesh_yaml: &str) -> crate::translate::Translation {
        translate_with(mesh_yaml, "", "istio-system")
    }

    /// Translates for the ingress gateway running in `namespace`, with `extra`
    /// resources (Telemetry) next to the base configuration.
    fn translate_with(
        mesh_yaml: &str,
        extra: &str,
        namespace: &str,
    ) -> crate::translate::Translation {
        let loaded = crate::config::load_str("test.yaml", &format!("{CONFIG}{extra}"));
        assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
        let (registry, _) = Registry::from_config(&loaded.config);
        let mesh = parse_mesh_config("mesh.yaml", mesh_yaml).expect("mesh config");
        assert!(super::check(&registry, &mesh, &loaded.config).is_empty());
        let mut proxy = ProxyIdentity::gateway(
            namespace,
            BTreeMap::from([
                ("istio".to_string(), "ingressgateway".to_string()),
                (
                    "service.istio.io/canonical-name".to_string(),
                    "istio-ingressgateway".to_string(),
                ),
            ]),
        );
        proxy.cluster_id = "Kubernetes".into();
        crate::translate::gateway_in_mesh(&loaded.config, &registry, &proxy, &mesh)
    }

    fn hcm(t: &crate::translate::Translation) -> Value {
        let l =
            json::to_json(t.resources.listener("0.0.0.0_8080").expect("listener")).expect("json");
        l["filter_chains"][0]["filters"][0]["typed_config"].clone()
    }

    const MESH: &str = "extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 100}\ndefaultProviders: {tracing: [zipkin]}\ndefaultConfig:\n  tracing:\n    sampling: 25\n    customTags:\n      env: {literal: {value: prod}}\n      user: {header: {name: x-user, defaultValue: anon}}\n";

    #[test]
    fn the_mesh_zipkin_provider_becomes_istiods_tracing() {
        let t = translate(MESH);
        let tracing = &hcm(&t)["tracing"];
        assert_eq!(tracing["random_sampling"], json!({"value": 25.0}));
        assert_eq!(tracing["client_sampling"], json!({"value": 100.0}));
        assert_eq!(tracing["overall_sampling"], json!({"value": 100.0}));
        assert_eq!(tracing["max_path_tag_length"], 100);
        assert_eq!(tracing["spawn_upstream_span"], true);
        let provider = &tracing["provider"];
        assert_eq!(provider["name"], "envoy.tracers.zipkin");
        let z = &provider["typed_config"];
        assert_eq!(
            z["collector_cluster"],
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
        assert_eq!(z["collector_endpoint"], "/api/v2/spans");
        assert_eq!(z["collector_endpoint_version"], "HTTP_JSON");
        assert_eq!(z["trace_id_128bit"], true);
        assert_eq!(z["shared_span_context"], false);
        assert_eq!(
            z["collector_hostname"],
            "zipkin.istio-system.svc.cluster.local"
        );
        // Istio's tags, the dry-run authorization tags and the ProxyConfig's, by name.
        let tags: Vec<&str> = tracing["custom_tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag"].as_str().unwrap())
            .collect();
        assert_eq!(
            tags,
            [
                "env",
                "istio.authorization.dry_run.allow_policy.name",
                "istio.authorization.dry_run.allow_policy.result",
                "istio.authorization.dry_run.deny_policy.name",
                "istio.authorization.dry_run.deny_policy.result",
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.cluster_id",
                "istio.mesh_id",
                "istio.namespace",
                "user",
            ]
        );
        let by_tag = |name: &str| {
            tracing["custom_tags"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["tag"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            by_tag("istio.canonical_service")["literal"]["value"],
            "istio-ingressgateway"
        );
        assert_eq!(
            by_tag("istio.canonical_revision")["literal"]["value"],
            "latest"
        );
        assert_eq!(
            by_tag("istio.namespace")["literal"]["value"],
            "istio-system"
        );
        assert_eq!(by_tag("istio.cluster_id")["literal"]["value"], "Kubernetes");
        assert_eq!(
            by_tag("user")["request_header"],
            json!({"name": "x-user", "default_value": "anon"})
        );
        assert_eq!(
            by_tag("istio.authorization.dry_run.deny_policy.result")["metadata"]["metadata_key"],
            json!({"key": "envoy.filters.http.rbac", "path": [{"key": "istio_dry_run_deny_shadow_engine_result"}]})
        );
        // The gateway carries the collector's cluster.
        assert!(
            t.resources
                .clusters
                .iter()
                .any(|c| c.name == "outbound|9411||zipkin.istio-system.svc.cluster.local")
        );
        // And the data plane takes what the translation gives it.
        crate::proxy::compile(&t.resources, "1", None).expect("the data plane compiles it");
    }

    #[test]
    fn without_a_provider_nothing_traces_and_sampling_defaults_to_istios() {
        assert!(hcm(&translate(""))["tracing"].is_null());
        let t = translate(
            "extensionProviders:\n- name: z\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\ndefaultProviders: {tracing: [z]}\n",
        );
        let tracing = &hcm(&t)["tracing"];
        assert_eq!(tracing["random_sampling"], json!({"value": 1.0}));
        assert!(tracing["max_path_tag_length"].is_null());
    }

    #[test]
    fn a_provider_whose_service_is_unknown_fails_validation() {
        let loaded = crate::config::load_str("test.yaml", CONFIG);
        let (registry, _) = Registry::from_config(&loaded.config);
        let mesh = parse_mesh_config(
            "mesh.yaml",
            "extensionProviders:\n- name: z\n  zipkin: {service: nowhere.example, port: 9411}\ndefaultProviders: {tracing: [z]}\n",
        )
        .unwrap();
        let d = super::check(&registry, &mesh, &loaded.config);
        assert_eq!(d.len(), 1);
        let text = d[0].to_string();
        assert!(
            text.contains("defaultProviders.tracing[0]") && text.contains("nowhere.example"),
            "{text}"
        );
    }

    /// A mesh with two zipkin providers and no default one.
    const PROVIDERS: &str = "extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n- name: other\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, path: /other}\n- name: authz\n  envoyExtAuthzHttp: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\ndefaultConfig:\n  tracing: {sampling: 7}\n";

    fn telemetry(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
        )
    }

    fn sampling(t: &crate::translate::Translation) -> Value {
        hcm(t)["tracing"]["random_sampling"]["value"].clone()
    }

    fn user_tags(t: &crate::translate::Translation) -> Vec<String> {
        hcm(t)["tracing"]["custom_tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag"].as_str().unwrap().to_string())
            .filter(|t| !t.starts_with("istio."))
            .collect()
    }

    #[test]
    fn a_root_namespace_telemetry_enables_tracing_mesh_wide() {
        // No default provider in the mesh: nothing traces without the Telemetry.
        assert!(hcm(&translate_with(PROVIDERS, "", "gw"))["tracing"].is_null());
        let root = telemetry(
            "istio-system",
            "mesh-default",
            "  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 100\n    customTags:\n      team: {literal: {value: edge}}\n      region: {environment: {name: REGION, defaultValue: eu}}\n",
        );
        let t = translate_with(PROVIDERS, &root, "gw");
        assert_eq!(sampling(&t), json!(100.0));
        assert_eq!(user_tags(&t), ["region", "team"]);
        let tracing = &hcm(&t)["tracing"];
        assert_eq!(
            tracing["provider"]["typed_config"]["collector_endpoint"],
            "/api/v2/spans"
        );
        let region = tracing["custom_tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == "region")
            .unwrap();
        assert_eq!(
            region["environment"],
            json!({"name": "REGION", "default_value": "eu"})
        );
        assert!(
            t.resources
                .clusters
                .iter()
                .any(|c| c.name == "outbound|9411||zipkin.istio-system.svc.cluster.local")
        );
        crate::proxy::compile(&t.resources, "1", None).expect("the data plane compiles it");
    }

    #[test]
    fn the_most_specific_telemetry_wins_field_by_field() {
        let root = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 10\n    customTags: {root: {literal: {value: r}}}\n",
        );
        let namespace = telemetry("gw", "ns", "  tracing:\n  - randomSamplingPercentage: 20\n");
        let workload = telemetry(
            "gw",
            "ingress",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  tracing:\n  - providers: [{name: other}]\n    randomSamplingPercentage: 30\n",
        );
        let elsewhere = telemetry(
            "other-ns",
            "ingress",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  tracing:\n  - randomSamplingPercentage: 40\n",
        );
        let unmatched = telemetry(
            "gw",
            "egress",
            "  selector: {matchLabels: {istio: egressgateway}}\n  tracing:\n  - randomSamplingPercentage: 50\n",
        );
        let t = translate_with(PROVIDERS, &root, "gw");
        assert_eq!(sampling(&t), json!(10.0));
        let t = translate_with(PROVIDERS, &format!("{root}{namespace}{elsewhere}"), "gw");
        assert_eq!(sampling(&t), json!(20.0));
        // The root's tags and provider are kept where nothing more specific sets them.
        assert_eq!(user_tags(&t), ["root"]);
        let t = translate_with(
            PROVIDERS,
            &format!("{root}{namespace}{unmatched}{workload}{elsewhere}"),
            "gw",
        );
        assert_eq!(sampling(&t), json!(30.0));
        assert_eq!(user_tags(&t), ["root"]);
        assert_eq!(
            hcm(&t)["tracing"]["provider"]["typed_config"]["collector_endpoint"],
            "/other"
        );
        // A namespace's Telemetry does not reach proxies of other namespaces.
        let t = translate_with(PROVIDERS, &format!("{root}{namespace}"), "elsewhere");
        assert_eq!(sampling(&t), json!(10.0));
    }

    #[test]
    fn without_a_telemetry_percentage_the_proxy_config_sampling_applies() {
        let root = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - providers: [{name: zipkin}]\n",
        );
        let t = translate_with(PROVIDERS, &root, "gw");
        assert_eq!(sampling(&t), json!(7.0));
        // The Telemetry's tags replace the ProxyConfig's; without any, those apply.
        let t = translate_with(MESH, &root, "gw");
        assert_eq!(user_tags(&t), ["env", "user"]);
        let tagged = telemetry(
            "gw",
            "ns",
            "  tracing:\n  - customTags: {only: {header: {name: x-only}}}\n",
        );
        let t = translate_with(MESH, &format!("{root}{tagged}"), "gw");
        assert_eq!(user_tags(&t), ["only"]);
    }

    #[test]
    fn disable_span_reporting_removes_tracing_and_a_more_specific_level_restores_it() {
        let off = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - disableSpanReporting: true\n",
        );
        // The mesh's default provider is switched off mesh-wide.
        assert!(hcm(&translate_with(MESH, &off, "gw"))["tracing"].is_null());
        let on = telemetry(
            "gw",
            "ingress",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  tracing:\n  - disableSpanReporting: false\n",
        );
        let t = translate_with(MESH, &format!("{off}{on}"), "gw");
        assert_eq!(sampling(&t), json!(25.0));
    }

    #[test]
    fn gateways_take_the_client_side_of_match_mode() {
        let server_only = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - match: {mode: SERVER}\n    providers: [{name: zipkin}]\n    randomSamplingPercentage: 60\n",
        );
        assert!(hcm(&translate_with(PROVIDERS, &server_only, "gw"))["tracing"].is_null());
        let client = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - match: {mode: CLIENT}\n    providers: [{name: zipkin}]\n    randomSamplingPercentage: 60\n",
        );
        assert_eq!(
            sampling(&translate_with(PROVIDERS, &client, "gw")),
            json!(60.0)
        );
    }

    #[test]
    fn telemetry_providers_must_be_zipkin_extension_providers() {
        let bad = telemetry(
            "istio-system",
            "mesh",
            "  tracing:\n  - providers: [{name: nope}, {name: authz}]\n",
        );
        let loaded = crate::config::load_str("test.yaml", &format!("{CONFIG}{bad}"));
        let (registry, _) = Registry::from_config(&loaded.config);
        let mesh = parse_mesh_config("mesh.yaml", PROVIDERS).unwrap();
        let d: Vec<String> = super::check(&registry, &mesh, &loaded.config)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(
            d[0].contains("Telemetry/istio-system/mesh: spec.tracing[0].providers[0].name: tracing provider \"nope\" is not defined in extensionProviders"),
            "{}",
            d[0]
        );
        assert!(
            d[1].contains("spec.tracing[0].providers[1].name: tracing provider \"authz\" is a `envoyExtAuthzHttp` provider; meshgate serves zipkin providers"),
            "{}",
            d[1]
        );
    }
}
