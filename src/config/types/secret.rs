//! Kubernetes `Secret` (v1): certificates and keys referenced by `credentialName`.
use super::common::base64_bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The payload of a Kubernetes Secret: `data` (base64) merged with `stringData`.
///
/// Unlike Istio kinds a Secret has no `spec`; the loader reads these top-level fields.
/// Values are shared (`Arc`): a configuration is cloned as it is loaded and cached, and
/// ten thousand certificates and keys should not be copied each time.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    /// Secret type, e.g. `kubernetes.io/tls` or `Opaque`.
    #[serde(default, rename = "type")]
    pub secret_type: String,
    /// Values decoded from base64.
    #[serde(default, deserialize_with = "base64_map", serialize_with = "bytes_map")]
    pub data: BTreeMap<String, Arc<[u8]>>,
    /// Values given as plain text; they win over `data` entries of the same key.
    #[serde(default, deserialize_with = "string_map", serialize_with = "str_map")]
    pub string_data: BTreeMap<String, Arc<str>>,
    /// Whether the secret is immutable.
    #[serde(default)]
    pub immutable: bool,
}

impl Secret {
    /// The value of a key, from `stringData` first (as Kubernetes merges it), then `data`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.string_data
            .get(key)
            .map(|s| s.as_bytes())
            .or_else(|| self.data.get(key).map(|b| &**b))
    }
}

// Secret values never appear in logs or debug output.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("Secret")
            .field("type", &self.secret_type)
            .field("keys", &keys)
            .finish()
    }
}

fn base64_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Arc<[u8]>>, D::Error> {
    #[derive(Deserialize)]
    struct Value(#[serde(deserialize_with = "base64_bytes::deserialize")] Vec<u8>);
    let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0.into())).collect())
}

fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Arc<str>>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.into())).collect())
}

fn bytes_map<S: Serializer>(map: &BTreeMap<String, Arc<[u8]>>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Value<'a>(#[serde(serialize_with = "base64_bytes::serialize")] &'a [u8]);
    s.collect_map(map.iter().map(|(k, v)| (k, Value(v))))
}

fn str_map<S: Serializer>(map: &BTreeMap<String, Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k, &**v)))
}
