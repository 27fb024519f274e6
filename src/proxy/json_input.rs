//! A resource set written as Envoy JSON, for feeding the data plane without a control
//! plane (tests, debugging): `{"listeners": [...], "routes": [...], "clusters": [...],
//! "endpoints": [...]}`, each resource in Envoy's JSON form (snake_case or camelCase).
use crate::xds::ResourceSet;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::Value;

/// The same descriptor set `xds::json` renders with. A pool is decoded per call and
/// dropped afterwards: the gateway keeps no descriptors (about 20 MiB) in memory.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

fn from_json<M: prost::Message + prost::Name + Default>(
    pool: &DescriptorPool,
    v: &Value,
) -> Result<M, String> {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("unknown message type {}", M::full_name()))?;
    let dynamic = DynamicMessage::deserialize_with_options(
        desc,
        v.clone(),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| e.to_string())?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// Parses a resource set from its JSON form.
pub fn resource_set_from_json(v: &Value) -> Result<ResourceSet, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "listeners" | "routes" | "clusters" | "endpoints" | "secrets"
        ) {
            return Err(format!(
                "unknown key {k:?} (listeners, routes, clusters, endpoints, secrets)"
            ));
        }
    }
    let owned = DescriptorPool::decode(DESCRIPTORS).map_err(|e| format!("descriptor set: {e}"))?;
    let pool = &owned;
    fn list<M: prost::Message + prost::Name + Default>(
        pool: &DescriptorPool,
        obj: &serde_json::Map<String, Value>,
        key: &str,
    ) -> Result<Vec<M>, String> {
        let Some(v) = obj.get(key) else {
            return Ok(Vec::new());
        };
        let arr = v
            .as_array()
            .ok_or_else(|| format!("{key}: expected an array"))?;
        arr.iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                if let Some(o) = r.as_object_mut() {
                    o.remove("@type");
                }
                from_json::<M>(pool, &r).map_err(|e| format!("{key}[{i}]: {e}"))
            })
            .collect()
    }
    let mut set = ResourceSet {
        listeners: list(pool, obj, "listeners")?,
        routes: list(pool, obj, "routes")?,
        clusters: list(pool, obj, "clusters")?,
        endpoints: list(pool, obj, "endpoints")?,
        secrets: list(pool, obj, "secrets")?,
    };
    set.sort();
    drop(owned);
    crate::proxy::malloc::release_freed_memory();
    Ok(set)
}
