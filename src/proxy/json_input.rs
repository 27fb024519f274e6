//! A resource set written as Envoy JSON, for feeding the data plane without a control
//! plane (tests, debugging): `{"listeners": [...], "routes": [...], "clusters": [...],
//! "endpoints": [...]}`, each resource in Envoy's JSON form (snake_case or camelCase).
use crate::xds::ResourceSet;
use crate::xds::json::from_json;
use serde_json::Value;

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
    fn list<M: prost::Message + prost::Name + Default>(
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
                from_json::<M>(&r).map_err(|e| format!("{key}[{i}]: {e}"))
            })
            .collect()
    }
    let mut set = ResourceSet {
        listeners: list(obj, "listeners")?,
        routes: list(obj, "routes")?,
        clusters: list(obj, "clusters")?,
        endpoints: list(obj, "endpoints")?,
        secrets: list(obj, "secrets")?,
    };
    set.sort();
    Ok(set)
}
