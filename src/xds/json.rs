//! Proto3 JSON for Envoy resources, the way Envoy's admin `/config_dump` prints them
//! (original snake_case field names, `@type` on every `Any`, default values omitted).
//!
//! prost has no reflection, so rendering goes through `prost-reflect` with the
//! descriptor pool that `build.rs` extracts from the `envoy-types` crate. The pool is
//! decoded on first use only: a gateway that never renders JSON never pays for it.
use crate::xds::pb::google::protobuf::Any;
use crate::xds::resources::ResourceSet;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use std::sync::LazyLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTORS).expect("descriptor set built by build.rs decodes")
});

/// Errors converting between prost messages and JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("decoding {ty}: {source}")]
    Decode {
        ty: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// The shared descriptor pool (every message meshgate renders and what it imports).
pub fn pool() -> &'static DescriptorPool {
    &POOL
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

fn dynamic_to_json(msg: &DynamicMessage) -> Result<serde_json::Value, JsonError> {
    Ok(msg.serialize_with_options(serde_json::value::Serializer, &serialize_options())?)
}

/// Renders encoded bytes of the message type `full_name` as JSON.
pub fn bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let desc = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| JsonError::Decode {
        ty: full_name.to_string(),
        source,
    })?;
    dynamic_to_json(&msg)
}

/// Renders a prost message as Envoy-style JSON.
pub fn to_json<M: Message + Name>(m: &M) -> Result<serde_json::Value, JsonError> {
    bytes_to_json(&M::full_name(), &m.encode_to_vec())
}

/// Renders a prost message as JSON with its `@type` first, as inside an `Any`.
pub fn to_typed_json<M: Message + Name>(m: &M) -> Result<serde_json::Value, JsonError> {
    any_to_json(&Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    })
}

/// Renders an `Any` (with its `@type`).
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let mut out = serde_json::Map::new();
    out.insert(
        "@type".into(),
        serde_json::Value::String(any.type_url.clone()),
    );
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if let serde_json::Value::Object(fields) = bytes_to_json(name, &any.value)? {
        out.extend(fields);
    }
    Ok(serde_json::Value::Object(out))
}

/// Parses Envoy-style JSON (snake_case or camelCase field names, `@type` in `Any`s)
/// into a prost message. Unknown fields are errors, as in Envoy.
pub fn from_json<M: Message + Name + Default>(v: &serde_json::Value) -> Result<M, JsonError> {
    let full_name = M::full_name();
    let desc = POOL
        .get_message_by_name(&full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.clone()))?;
    let dynamic = DynamicMessage::deserialize_with_options(
        desc,
        v.clone(),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|source| JsonError::Decode {
        ty: full_name,
        source,
    })
}

/// An admin `/config_dump`-shaped document for a resource set, all resources dynamic
/// (delivered by xDS) at `version`.
pub fn config_dump(set: &ResourceSet, version: &str) -> Result<serde_json::Value, JsonError> {
    use crate::xds::pb::envoy::admin::v3 as admin;
    let clusters = admin::ClustersConfigDump {
        version_info: version.to_string(),
        dynamic_active_clusters: set
            .clusters
            .iter()
            .map(|c| admin::clusters_config_dump::DynamicCluster {
                version_info: version.to_string(),
                cluster: Some(pack(c)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        version_info: version.to_string(),
        dynamic_listeners: set
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::DynamicListener {
                name: l.name.clone(),
                active_state: Some(admin::listeners_config_dump::DynamicListenerState {
                    version_info: version.to_string(),
                    listener: Some(pack(l)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = admin::RoutesConfigDump {
        dynamic_route_configs: set
            .routes
            .iter()
            .map(|r| admin::routes_config_dump::DynamicRouteConfig {
                version_info: version.to_string(),
                route_config: Some(pack(r)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let secrets = admin::SecretsConfigDump {
        dynamic_active_secrets: set
            .secrets
            .iter()
            .map(|s| admin::secrets_config_dump::DynamicSecret {
                name: s.name.clone(),
                version_info: version.to_string(),
                secret: Some(pack(&redact_secret(s))),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = admin::EndpointsConfigDump {
        dynamic_endpoint_configs: set
            .endpoints
            .iter()
            .map(|e| admin::endpoints_config_dump::DynamicEndpointConfig {
                version_info: version.to_string(),
                endpoint_config: Some(pack(e)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dump = admin::ConfigDump {
        configs: vec![
            pack(&clusters),
            pack(&listeners),
            pack(&routes),
            pack(&secrets),
            pack(&endpoints),
        ],
    };
    to_json(&dump)
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Envoy never prints private keys in a config dump; neither do we.
fn redact_secret(
    s: &crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    let mut s = s.clone();
    redact_secret_in_place(&mut s);
    s
}

/// Replaces an inline private key by `[redacted]`, as Envoy's config dump shows it.
pub fn redact_secret_in_place(
    s: &mut crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) {
    use crate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    if let Some(Type::TlsCertificate(cert)) = &mut s.r#type
        && let Some(key) = &mut cert.private_key
        && !matches!(key.specifier, Some(Specifier::Filename(_)))
    {
        *key = DataSource {
            specifier: Some(Specifier::InlineString("[redacted]".into())),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::cluster::v3::Cluster;
    use crate::xds::pb::envoy::config::listener::v3::Listener;
    use crate::xds::pb::envoy::extensions::filters::http::router::v3::Router;

    #[test]
    fn renders_snake_case_and_any_type() {
        let c = Cluster {
            name: "outbound|80||a.default.svc.cluster.local".into(),
            connect_timeout: Some(crate::xds::pb::google::protobuf::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let j = to_json(&c).unwrap();
        assert_eq!(j["name"], "outbound|80||a.default.svc.cluster.local");
        assert_eq!(j["connect_timeout"], "10s");
        let typed = to_typed_json(&Router::default()).unwrap();
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
    }

    #[test]
    fn json_round_trip() {
        let v = serde_json::json!({"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}}});
        let l: Listener = from_json(&v).unwrap();
        assert_eq!(l.name, "l");
        assert_eq!(to_json(&l).unwrap(), v);
        let bad = serde_json::json!({"nmae": "l"});
        assert!(from_json::<Listener>(&bad).is_err());
    }
}
