//! The connection manager's `tracing` (with the Zipkin provider) -> [`Tracing`].
//! Every field is classified; what the data plane does not do is refused.
use crate::proxy::compile::route::Clusters;
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::trace::{CustomTag, TagValue, Tracing, zipkin};
use crate::xds::pb::envoy::config::trace::v3 as trace_pb;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use crate::xds::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use crate::xds::pb::envoy::r#type::tracing::v3 as tag_pb;
use http::{HeaderName, HeaderValue};
use prost::{Message, Name};
use std::sync::Arc;

/// Envoy's default `max_path_tag_length`.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// A `Percent` as ten-thousandths (Envoy's conversion to a fractional percent), 100%
/// when unset.
fn percent(
    cx: &Cx,
    field: &str,
    p: &Option<crate::xds::pb::envoy::r#type::v3::Percent>,
) -> Result<u32, CompileError> {
    match p {
        None => Ok(10_000),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok((p.value * 100.0).round() as u32),
        Some(_) => Err(cx.err(field, "a percentage from 0 to 100 is expected")),
    }
}

/// Compiles `tracing`; `egress` says the listener's traffic direction is OUTBOUND, and
/// `request_id` is the connection manager's UUID request id extension (if set).
pub fn compile_tracing(
    cx: &mut Cx,
    t: &hcm_pb::http_connection_manager::Tracing,
    request_id: Option<&UuidRequestIdConfig>,
    clusters: &Clusters,
    egress: bool,
) -> Result<Arc<Tracing>, CompileError> {
    fields!(
        cx,
        t,
        hcm_pb::http_connection_manager::Tracing {
            supported: [
                client_sampling,
                random_sampling,
                overall_sampling,
                max_path_tag_length,
                custom_tags,
                provider,
                spawn_upstream_span,
                no_context_propagation
            ],
            ignored: [],
            unsupported: [verbose, operation, upstream_operation],
        }
    );
    if request_id
        .and_then(|r| r.use_request_id_for_trace_sampling)
        .is_some_and(|b| !b.value)
    {
        return Err(cx.err(
            "request_id_extension.use_request_id_for_trace_sampling",
            "tracing samples on the request id only (false is not supported)",
        ));
    }
    let pack_trace_reason = request_id
        .and_then(|r| r.pack_trace_reason)
        .is_none_or(|b| b.value);
    let Some(provider) = &t.provider else {
        return Err(cx.err(
            "provider",
            "a tracing provider is required (meshgate has no bootstrap tracer)",
        ));
    };
    let zipkin = cx.at("provider", |cx| compile_provider(cx, provider, clusters))?;
    let mut custom_tags = Vec::with_capacity(t.custom_tags.len());
    for (i, tag) in t.custom_tags.iter().enumerate() {
        custom_tags.push(cx.at(format_args!("custom_tags[{i}]"), |cx| custom_tag(cx, tag))?);
    }
    Ok(Arc::new(Tracing {
        client_sampling: percent(cx, "client_sampling", &t.client_sampling)?,
        random_sampling: percent(cx, "random_sampling", &t.random_sampling)?,
        overall_sampling: percent(cx, "overall_sampling", &t.overall_sampling)?,
        custom_tags,
        max_path_tag_length: t
            .max_path_tag_length
            .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
        egress,
        spawn_upstream_span: t.spawn_upstream_span.is_some_and(|b| b.value),
        propagate: !t.no_context_propagation,
        pack_trace_reason,
        zipkin,
    }))
}

fn compile_provider(
    cx: &mut Cx,
    p: &trace_pb::tracing::Http,
    clusters: &Clusters,
) -> Result<Arc<zipkin::Collector>, CompileError> {
    use trace_pb::tracing::http::ConfigType;
    let any = match &p.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None => return Err(cx.err("typed_config", "required")),
    };
    if any.type_url != trace_pb::ZipkinConfig::type_url() {
        return Err(cx.err(
            "typed_config",
            format!(
                "tracer {} ({}) is not supported; meshgate serves envoy.tracers.zipkin",
                p.name, any.type_url
            ),
        ));
    }
    let z = trace_pb::ZipkinConfig::decode(any.value.as_slice())
        .map_err(|e| cx.err("typed_config", format!("decoding ZipkinConfig: {e}")))?;
    cx.at("typed_config", |cx| compile_zipkin(cx, &z, clusters))
}

fn compile_zipkin(
    cx: &mut Cx,
    z: &trace_pb::ZipkinConfig,
    clusters: &Clusters,
) -> Result<Arc<zipkin::Collector>, CompileError> {
    fields!(
        cx,
        z,
        trace_pb::ZipkinConfig {
            supported: [
                collector_cluster,
                collector_endpoint,
                trace_id_128bit,
                shared_span_context,
                collector_endpoint_version,
                collector_hostname,
                trace_context_option
            ],
            ignored: [],
            unsupported: [
                split_spans_for_request,
                collector_service,
                timestamp_trace_ids
            ],
        }
    );
    use trace_pb::zipkin_config::{CollectorEndpointVersion as V, TraceContextOption as O};
    match V::try_from(z.collector_endpoint_version) {
        Ok(V::HttpJson) => {}
        _ => {
            return Err(cx.err(
                "collector_endpoint_version",
                "only HTTP_JSON (Zipkin v2 JSON) is supported",
            ));
        }
    }
    match O::try_from(z.trace_context_option) {
        Ok(O::UseB3) => {}
        _ => {
            return Err(cx.err(
                "trace_context_option",
                "only USE_B3 propagation is supported",
            ));
        }
    }
    if z.collector_cluster.is_empty() {
        return Err(cx.err("collector_cluster", "required"));
    }
    let endpoint: http::uri::PathAndQuery = z
        .collector_endpoint
        .parse()
        .ok()
        .filter(|_| z.collector_endpoint.starts_with('/'))
        .ok_or_else(|| cx.err("collector_endpoint", "a path starting with `/` is required"))?;
    let hostname = HeaderValue::from_str(if z.collector_hostname.is_empty() {
        &z.collector_cluster
    } else {
        &z.collector_hostname
    })
    .map_err(|_| cx.err("collector_hostname", "not a valid host"))?;
    Ok(Arc::new(zipkin::Collector::new(
        &z.collector_cluster,
        clusters.get(&z.collector_cluster).cloned(),
        endpoint,
        hostname,
        z.trace_id_128bit,
        z.shared_span_context.is_none_or(|b| b.value),
    )))
}

fn custom_tag(cx: &mut Cx, t: &tag_pb::CustomTag) -> Result<CustomTag, CompileError> {
    use tag_pb::custom_tag::Type;
    if t.tag.is_empty() {
        return Err(cx.err("tag", "a tag name is required"));
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| Box::<str>::from(s));
    let value = match &t.r#type {
        Some(Type::Literal(l)) => TagValue::Literal(l.value.as_str().into()),
        Some(Type::Environment(e)) => {
            // Read once, as Envoy reads it when the configuration is loaded; with no
            // value and no default the tag is not set.
            let v = std::env::var(&e.name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| e.default_value.clone());
            TagValue::Literal(v.into())
        }
        Some(Type::RequestHeader(h)) => TagValue::RequestHeader {
            name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| cx.err("request_header.name", "not a valid header name"))?,
            default: non_empty(&h.default_value),
        },
        Some(Type::Metadata(m)) => {
            use crate::xds::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
            use crate::xds::pb::envoy::r#type::metadata::v3::metadata_kind::Kind;
            if !matches!(
                m.kind.as_ref().and_then(|k| k.kind.as_ref()),
                Some(Kind::Request(_))
            ) {
                return Err(cx.err(
                    "metadata.kind",
                    "only the request's dynamic metadata is supported",
                ));
            }
            let Some(key) = &m.metadata_key else {
                return Err(cx.err("metadata.metadata_key", "required"));
            };
            let mut path = Vec::with_capacity(key.path.len());
            for (i, s) in key.path.iter().enumerate() {
                match &s.segment {
                    Some(Segment::Key(k)) => path.push(Box::<str>::from(k.as_str())),
                    _ => {
                        return Err(cx.err(
                            &format!("metadata.metadata_key.path[{i}]"),
                            "only key segments are supported",
                        ));
                    }
                }
            }
            TagValue::Metadata {
                filter: key.key.as_str().into(),
                path,
                default: non_empty(&m.default_value),
            }
        }
        Some(Type::Value(_)) => {
            return Err(cx.err("value", "formatter custom tags are not supported"));
        }
        None => return Err(cx.err("type", "a tag needs a value source")),
    };
    Ok(CustomTag {
        tag: t.tag.as_str().into(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::google::protobuf::Any;

    fn zipkin_any(z: &trace_pb::ZipkinConfig) -> Any {
        Any {
            type_url: trace_pb::ZipkinConfig::type_url(),
            value: z.encode_to_vec(),
        }
    }

    fn tracing_with(z: trace_pb::ZipkinConfig) -> hcm_pb::http_connection_manager::Tracing {
        hcm_pb::http_connection_manager::Tracing {
            random_sampling: Some(crate::xds::pb::envoy::r#type::v3::Percent { value: 1.0 }),
            provider: Some(trace_pb::tracing::Http {
                name: "envoy.tracers.zipkin".into(),
                config_type: Some(trace_pb::tracing::http::ConfigType::TypedConfig(
                    zipkin_any(&z),
                )),
            }),
            ..Default::default()
        }
    }

    fn istio_zipkin() -> trace_pb::ZipkinConfig {
        trace_pb::ZipkinConfig {
            collector_cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local".into(),
            collector_endpoint: "/api/v2/spans".into(),
            trace_id_128bit: true,
            shared_span_context: Some(crate::xds::pb::google::protobuf::BoolValue { value: false }),
            collector_hostname: "zipkin.istio-system.svc.cluster.local".into(),
            collector_endpoint_version: trace_pb::zipkin_config::CollectorEndpointVersion::HttpJson
                as i32,
            ..Default::default()
        }
    }

    #[test]
    fn istio_zipkin_tracing_compiles() {
        let cx = &mut Cx::new("listener", "l");
        let t = compile_tracing(
            cx,
            &tracing_with(istio_zipkin()),
            None,
            &Clusters::default(),
            true,
        )
        .unwrap();
        assert_eq!(t.random_sampling, 100);
        assert_eq!(t.client_sampling, 10_000);
        assert_eq!(t.max_path_tag_length, 256);
        assert!(t.zipkin.trace_id_128bit && !t.zipkin.shared_span_context);
        assert!(t.pack_trace_reason && t.egress);
        // The cluster is not in this snapshot: reports are skipped, as in Envoy.
        assert!(t.zipkin.cluster.is_none());
    }

    #[test]
    fn what_is_not_served_is_refused() {
        let cx = &mut Cx::new("listener", "l");
        let mut t = tracing_with(istio_zipkin());
        t.verbose = true;
        let e = compile_tracing(cx, &t, None, &Clusters::default(), true).unwrap_err();
        assert!(e.to_string().contains("verbose"), "{e}");
        let mut z = istio_zipkin();
        z.collector_endpoint_version = 2;
        let e =
            compile_tracing(cx, &tracing_with(z), None, &Clusters::default(), true).unwrap_err();
        assert!(e.to_string().contains("HTTP_JSON"), "{e}");
        let mut t = tracing_with(istio_zipkin());
        if let Some(trace_pb::tracing::Http {
            config_type: Some(trace_pb::tracing::http::ConfigType::TypedConfig(a)),
            ..
        }) = t.provider.as_mut()
        {
            a.type_url = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig".into();
        }
        let e = compile_tracing(cx, &t, None, &Clusters::default(), true).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let t = hcm_pb::http_connection_manager::Tracing::default();
        let e = compile_tracing(cx, &t, None, &Clusters::default(), true).unwrap_err();
        assert!(e.to_string().contains("provider"), "{e}");
    }
}
