//! A resource set as files a stock Envoy serves from: a bootstrap (`envoy.yaml`) whose
//! listeners and clusters come from filesystem subscriptions (`lds.yaml`, `cds.yaml`),
//! with every EDS source pointing at one file per resource (`eds/NAME.yaml`) — Envoy's
//! filesystem EDS takes exactly one resource per file. Route tables are written inline
//! into the connection managers that name them (`route_config`): a gateway has one per
//! HTTPS server, and each path-based RDS subscription costs Envoy an inotify instance.
//!
//! Secrets: those whose material is inline (`credentialName` Secrets) are written into
//! the TLS contexts that name them (`tls_certificates`, `validation_context`), so they
//! travel in `lds.yaml`/`cds.yaml` and rotate when those files are replaced. Envoy
//! opens an inotify instance per path-based SDS subscription, and a gateway with
//! thousands of certificates would exceed the default inotify limits that way. Secrets
//! that name files (`file-cert:`, `file-root:`) stay path-based SDS subscriptions
//! (`sds/NAME.yaml`), so that Envoy keeps watching their files. Resource names stay
//! exactly what ADS would serve.
//!
//! Everything is rendered from the prost types through [`crate::xds::json`]; the YAML is
//! that JSON written in block style. Proto maps (per-filter configs, metadata) are
//! rendered in key order so that equal resources give byte-identical files.
//!
//! This module only computes file contents; writing them (atomically, so that a running
//! Envoy picks up changes) is the caller's job.
use super::pb;
use crate::xds::json::{self, JsonError};
use crate::xds::pb::envoy::config::bootstrap::v3 as bootstrap;
use crate::xds::pb::envoy::config::cluster::v3::Cluster;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::config::listener::v3::{Listener, filter};
use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use crate::xds::pb::envoy::service::discovery::v3::DiscoveryResponse;
use crate::xds::pb::google::protobuf as wkt;
use crate::xds::{ProxyIdentity, ResourceSet, TypeUrl};
use prost::{Message, Name};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One file to write, relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyFile {
    pub path: PathBuf,
    pub contents: String,
}

/// The bootstrap file name.
pub const BOOTSTRAP: &str = "envoy.yaml";

/// The file (relative to the output directory) holding one named resource of a type
/// that Envoy fetches by name.
pub fn resource_file(ty: TypeUrl, name: &str) -> PathBuf {
    PathBuf::from(ty.short()).join(format!("{}.yaml", file_stem(name)))
}

/// A file name for a resource name: safe characters kept, anything else replaced, and
/// a short hash appended whenever something was replaced, so that names stay distinct.
fn file_stem(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.').to_string();
    if safe == name && !safe.is_empty() {
        return safe;
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("{safe}-{}", hex::encode(&digest[..4]))
}

fn path_source(out_dir: &Path, file: &Path) -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(
            core::config_source::ConfigSourceSpecifier::PathConfigSource(core::PathConfigSource {
                path: out_dir.join(file).display().to_string(),
                ..Default::default()
            }),
        ),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Renders the resource set as Envoy files under `out_dir` (an absolute path: the
/// bootstrap and the config sources name files by absolute path).
pub fn envoy_files(
    set: &ResourceSet,
    proxy: &ProxyIdentity,
    out_dir: &Path,
    admin_port: u16,
) -> Result<Vec<EnvoyFile>, JsonError> {
    let mut files = Vec::new();
    let inline: HashMap<&str, &tls::Secret> = set
        .secrets
        .iter()
        .filter(|s| !names_files(s))
        .map(|s| (s.name.as_str(), s))
        .collect();
    let routes: HashMap<&str, &RouteConfiguration> =
        set.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let listeners: Vec<Listener> = set
        .listeners
        .iter()
        .map(|l| with_file_sources_listener(l, out_dir, &inline, &routes))
        .collect();
    let clusters: Vec<Cluster> = set
        .clusters
        .iter()
        .map(|c| with_file_sources_cluster(c, out_dir, &inline))
        .collect();
    for e in &set.endpoints {
        files.push(EnvoyFile {
            path: resource_file(TypeUrl::Endpoint, &e.cluster_name),
            contents: discovery_response(TypeUrl::Endpoint, std::slice::from_ref(e))?,
        });
    }
    for s in set.secrets.iter().filter(|s| names_files(s)) {
        files.push(EnvoyFile {
            path: resource_file(TypeUrl::Secret, &s.name),
            contents: discovery_response(TypeUrl::Secret, std::slice::from_ref(s))?,
        });
    }
    files.push(EnvoyFile {
        path: PathBuf::from("cds.yaml"),
        contents: discovery_response(TypeUrl::Cluster, &clusters)?,
    });
    files.push(EnvoyFile {
        path: PathBuf::from("lds.yaml"),
        contents: discovery_response(TypeUrl::Listener, &listeners)?,
    });
    files.push(EnvoyFile {
        path: PathBuf::from(BOOTSTRAP),
        contents: to_yaml(&canonical(json::to_json(&bootstrap_config(
            proxy, out_dir, admin_port,
        ))?)),
    });
    Ok(files)
}

/// The bootstrap: the node, the admin API on loopback, listeners and clusters from files.
pub fn bootstrap_config(
    proxy: &ProxyIdentity,
    out_dir: &Path,
    admin_port: u16,
) -> bootstrap::Bootstrap {
    let mut metadata = HashMap::new();
    metadata.insert("NAMESPACE".to_string(), pb::string_value(&proxy.namespace));
    metadata.insert("LABELS".to_string(), pb::string_map_value(&proxy.labels));
    bootstrap::Bootstrap {
        node: Some(core::Node {
            id: proxy.id.clone(),
            cluster: proxy
                .labels
                .get("app")
                .or_else(|| proxy.labels.get("istio"))
                .cloned()
                .unwrap_or_else(|| "meshgate".into()),
            metadata: Some(wkt::Struct { fields: metadata }),
            ..Default::default()
        }),
        admin: Some(bootstrap::Admin {
            address: Some(pb::socket_address("127.0.0.1", u32::from(admin_port))),
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::bootstrap::DynamicResources {
            lds_config: Some(path_source(out_dir, Path::new("lds.yaml"))),
            cds_config: Some(path_source(out_dir, Path::new("cds.yaml"))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn discovery_response<M: Message + Name>(
    ty: TypeUrl,
    resources: &[M],
) -> Result<String, JsonError> {
    let resources: Vec<wkt::Any> = resources.iter().map(pb::any).collect();
    let mut response = DiscoveryResponse {
        type_url: ty.as_str().to_string(),
        resources,
        ..Default::default()
    };
    // The version is a digest of the canonical rendering: equal content, equal version.
    let body = canonical(json::to_json(&response)?);
    let digest = Sha256::digest(body.to_string().as_bytes());
    response.version_info = hex::encode(&digest[..8]);
    Ok(to_yaml(&canonical(json::to_json(&response)?)))
}

/// Whether a secret's material is read from files (Envoy then watches them).
fn names_files(s: &tls::Secret) -> bool {
    let file = |ds: &Option<core::DataSource>| {
        matches!(
            ds.as_ref().and_then(|d| d.specifier.as_ref()),
            Some(core::data_source::Specifier::Filename(_))
        )
    };
    match &s.r#type {
        Some(tls::secret::Type::TlsCertificate(c)) => {
            file(&c.certificate_chain) || file(&c.private_key)
        }
        Some(tls::secret::Type::ValidationContext(v)) => file(&v.trusted_ca) || file(&v.crl),
        _ => false,
    }
}

/// Whether any TLS context of a listener or cluster file carries inline secret
/// material (the file is then written for its owner only).
pub fn holds_secrets(set: &ResourceSet) -> bool {
    set.secrets.iter().any(|s| !names_files(s))
}

/// Points a listener's RDS sources at files and its SDS secrets at files or inline.
fn with_file_sources_listener(
    l: &Listener,
    out_dir: &Path,
    inline: &HashMap<&str, &tls::Secret>,
    routes: &HashMap<&str, &RouteConfiguration>,
) -> Listener {
    let mut l = l.clone();
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url != hcm::HttpConnectionManager::type_url() {
                continue;
            }
            let Ok(mut manager) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) =
                &mut manager.route_specifier
            {
                match routes.get(rds.route_config_name.as_str()) {
                    // Inline: one path-based RDS subscription per route table would cost
                    // Envoy an inotify instance each (a gateway has one per HTTPS server).
                    Some(rc) => {
                        manager.route_specifier =
                            Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                                (*rc).clone(),
                            ));
                    }
                    None => {
                        rds.config_source = Some(path_source(
                            out_dir,
                            &resource_file(TypeUrl::Route, &rds.route_config_name),
                        ));
                    }
                }
            }
            *any = pb::any(&manager);
        }
        if let Some(ts) = &mut chain.transport_socket {
            rewrite_tls_socket::<tls::DownstreamTlsContext>(ts, out_dir, inline, |c| {
                c.common_tls_context.as_mut()
            });
        }
    }
    l
}

/// Points a cluster's EDS sources at files and its SDS secrets at files or inline.
fn with_file_sources_cluster(
    c: &Cluster,
    out_dir: &Path,
    inline: &HashMap<&str, &tls::Secret>,
) -> Cluster {
    let mut c = c.clone();
    if let Some(eds) = &mut c.eds_cluster_config {
        let name = if eds.service_name.is_empty() {
            c.name.clone()
        } else {
            eds.service_name.clone()
        };
        eds.eds_config = Some(path_source(
            out_dir,
            &resource_file(TypeUrl::Endpoint, &name),
        ));
    }
    if let Some(ts) = &mut c.transport_socket {
        rewrite_tls_socket::<tls::UpstreamTlsContext>(ts, out_dir, inline, |c| {
            c.common_tls_context.as_mut()
        });
    }
    c
}

/// Rewrites the SDS secrets of a TLS transport socket: inline ones are written into the
/// context, file-based ones point at their `sds/` file.
fn rewrite_tls_socket<T: Message + Name + Default>(
    ts: &mut core::TransportSocket,
    out_dir: &Path,
    inline: &HashMap<&str, &tls::Secret>,
    common: impl Fn(&mut T) -> Option<&mut tls::CommonTlsContext>,
) {
    use tls::common_tls_context::ValidationContextType as V;
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &mut ts.config_type else {
        return;
    };
    if any.type_url != T::type_url() {
        return;
    }
    let Ok(mut ctx) = T::decode(any.value.as_slice()) else {
        return;
    };
    let to_file = |sds: &mut tls::SdsSecretConfig| {
        if sds.sds_config.is_some() {
            sds.sds_config = Some(path_source(
                out_dir,
                &resource_file(TypeUrl::Secret, &sds.name),
            ));
        }
    };
    // The inline material of an SDS secret served over ADS.
    let certificate = |sds: &tls::SdsSecretConfig| match inline.get(sds.name.as_str()) {
        Some(s) if sds.sds_config.is_some() => match &s.r#type {
            Some(tls::secret::Type::TlsCertificate(c)) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    };
    let validation = |sds: &tls::SdsSecretConfig| match inline.get(sds.name.as_str()) {
        Some(s) if sds.sds_config.is_some() => match &s.r#type {
            Some(tls::secret::Type::ValidationContext(v)) => Some(v.clone()),
            _ => None,
        },
        _ => None,
    };
    if let Some(common) = common(&mut ctx) {
        let mut kept = Vec::new();
        for mut sds in std::mem::take(&mut common.tls_certificate_sds_secret_configs) {
            match certificate(&sds) {
                Some(c) => common.tls_certificates.push(c),
                None => {
                    to_file(&mut sds);
                    kept.push(sds);
                }
            }
        }
        common.tls_certificate_sds_secret_configs = kept;
        match &mut common.validation_context_type {
            Some(V::ValidationContextSdsSecretConfig(sds)) => match validation(sds) {
                Some(v) => common.validation_context_type = Some(V::ValidationContext(v)),
                None => to_file(sds),
            },
            Some(V::CombinedValidationContext(combined)) => {
                let secret = combined
                    .validation_context_sds_secret_config
                    .as_ref()
                    .and_then(validation);
                match secret {
                    // Envoy merges the SDS context into the default one (protobuf
                    // MergeFrom): so does this.
                    Some(v) => {
                        let mut merged = combined
                            .default_validation_context
                            .clone()
                            .unwrap_or_default();
                        if merged.merge(v.encode_to_vec().as_slice()).is_ok() {
                            common.validation_context_type = Some(V::ValidationContext(merged));
                        }
                    }
                    None => {
                        if let Some(sds) = &mut combined.validation_context_sds_secret_config {
                            to_file(sds);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    *any = pb::any(&ctx);
}

/// Fields whose JSON is a proto map of messages (`Any`s): their keys get sorted.
const MAP_FIELDS: &[&str] = &[
    "typed_per_filter_config",
    "typed_extension_protocol_options",
];
/// Fields holding `Struct`s (or maps of them): sorted all the way down.
const STRUCT_FIELDS: &[&str] = &["metadata", "filter_metadata"];

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A message: fields keep their proto order.
    Message,
    /// A proto map of messages: keys sorted, values are messages.
    Map,
    /// A `Struct` (JSON object): keys sorted at every depth.
    Struct,
}

/// Sorts the keys of every proto map and `Struct`, so that the rendering of equal
/// resources is identical (protobuf leaves map order open). Message fields keep their
/// proto order, as in Envoy's config dump.
pub fn canonical(mut v: Value) -> Value {
    canonicalize(&mut v, Shape::Message);
    v
}

fn sort_keys(map: &mut serde_json::Map<String, Value>) {
    let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    map.extend(entries);
}

fn canonicalize(v: &mut Value, shape: Shape) {
    match v {
        Value::Object(map) => {
            if shape != Shape::Message {
                sort_keys(map);
            }
            for (k, child) in map.iter_mut() {
                let child_shape = match shape {
                    Shape::Struct => Shape::Struct,
                    Shape::Map => Shape::Message,
                    Shape::Message if STRUCT_FIELDS.contains(&k.as_str()) => Shape::Struct,
                    Shape::Message if MAP_FIELDS.contains(&k.as_str()) => Shape::Map,
                    Shape::Message => Shape::Message,
                };
                canonicalize(child, child_shape);
            }
        }
        Value::Array(items) => {
            for item in items {
                canonicalize(
                    item,
                    if shape == Shape::Struct {
                        Shape::Struct
                    } else {
                        Shape::Message
                    },
                );
            }
        }
        _ => {}
    }
}

/// Writes JSON as block-style YAML. Strings and unusual keys are double-quoted (JSON's
/// string escapes are YAML's), so no value can change meaning.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(Value::String(s.clone()).to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        // Words older YAML readers take for booleans or null.
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                match scalar(child) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{}: {s}", key(k));
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{}:", key(k));
                        let child_indent = if child.is_array() { indent } else { indent + 2 };
                        emit(child, child_indent, out);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match scalar(item) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        // The first line of the nested block goes after the dash.
                        let mut nested = String::new();
                        emit(item, indent + 2, &mut nested);
                        let body = nested.get(indent + 2..).unwrap_or_default();
                        let _ = write!(out, "{pad}- {body}");
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                let _ = writeln!(out, "{pad}{s}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_is_the_same_document() {
        let v = json!({
            "name": "outbound|80||a.example.com",
            "@type": "type.googleapis.com/x",
            "n": 1,
            "yes": true,
            "empty": {},
            "list": [],
            "nested": {"a": [1, "two", {"k": "v", "l": [{"x": null}]}]},
            "quote": "a \"b\" \\ c\n",
        });
        let y = to_yaml(&v);
        let expected = "name: \"outbound|80||a.example.com\"\n\"@type\": \"type.googleapis.com/x\"\n\"n\": 1\n\"yes\": true\nempty: {}\nlist: []\nnested:\n  a:\n  - 1\n  - \"two\"\n  - k: \"v\"\n    l:\n    - x: null\nquote: \"a \\\"b\\\" \\\\ c\\n\"\n";
        assert_eq!(y, expected);
        // Round trip through the YAML reader the config layer uses.
        let parsed = crate::config::source::parse(&y);
        let doc = parsed[0].as_ref().expect("parses");
        assert_eq!(
            doc.root.as_ref().expect("a document").to_value(),
            without_nulls(v)
        );
    }

    /// The config reader drops null-valued keys (Kubernetes semantics).
    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
            other => other,
        }
    }

    #[test]
    fn maps_are_sorted_fields_are_not() {
        let v = json!({"name": "r", "typed_per_filter_config": {"b": {"@type": "t", "z": 1, "a": 2}, "a": {}},
                       "metadata": {"filter_metadata": {"istio": {"z": "1", "a": {"y": 1, "b": 2}}}}});
        let c = canonical(v);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&c),
            vec!["name", "typed_per_filter_config", "metadata"]
        );
        assert_eq!(keys(&c["typed_per_filter_config"]), vec!["a", "b"]);
        assert_eq!(
            keys(&c["typed_per_filter_config"]["b"]),
            vec!["@type", "z", "a"]
        );
        assert_eq!(
            keys(&c["metadata"]["filter_metadata"]["istio"]),
            vec!["a", "z"]
        );
        assert_eq!(
            keys(&c["metadata"]["filter_metadata"]["istio"]["a"]),
            vec!["b", "y"]
        );
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(
            resource_file(TypeUrl::Route, "http.8080"),
            PathBuf::from("rds/http.8080.yaml")
        );
        let a = resource_file(TypeUrl::Endpoint, "outbound|80||a.example.com");
        let b = resource_file(TypeUrl::Endpoint, "outbound_80__a.example.com");
        assert!(a.starts_with("eds"));
        assert_ne!(a, b);
        assert!(!a.to_string_lossy().contains('|'));
        assert!(resource_file(TypeUrl::Secret, "kubernetes://x").starts_with("sds"));
        assert!(
            !resource_file(TypeUrl::Secret, "..")
                .to_string_lossy()
                .contains("/../")
        );
    }
}
