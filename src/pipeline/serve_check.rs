//! The serve check: meshgate's data plane compiles what the translator made, so that a
//! configuration it cannot serve is refused where the user wrote it, not at start time.
//!
//! A [`CompileError`] names an Envoy resource and a field inside it; the diagnostic is
//! attached to the Istio resource that produced it, found through the `istio.config`
//! metadata istiod (and meshgate) put on routes and clusters, else through names.
use crate::config::types::{Gateway, Resource};
use crate::config::{Config, Diagnostic, Severity};
use crate::proxy::compile::{self, CompileError};
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::core::v3::Metadata;
use crate::xds::pb::google::protobuf::value::Kind as ValueKind;

/// Compiles `set` as the gateway would; an error becomes a diagnostic on the Istio
/// resource it came from.
pub(super) fn check(config: &Config, set: &ResourceSet, secret_material: bool) -> Vec<Diagnostic> {
    let compiled = if secret_material {
        compile::check(set, None)
    } else {
        compile::check_without_secret_material(set)
    };
    match compiled {
        Ok(()) => Vec::new(),
        Err(e) => vec![attribute(config, set, &e)],
    }
}

fn attribute(config: &Config, set: &ResourceSet, e: &CompileError) -> Diagnostic {
    let message = format!("meshgate's data plane cannot serve this: {e}");
    let (kind, name) = split_resource(&e.resource);
    let found = match kind {
        "route_configuration" => route_source(config, set, name, &e.path),
        "cluster" => cluster_source(config, set, name),
        "listener" => port_of_listener(name).and_then(|p| gateway_with_port(config, p)),
        _ => None,
    };
    match found {
        Some(Source::VirtualService(i, field)) => {
            config.virtual_services[i].diagnostic(Severity::Error, &field, message)
        }
        Some(Source::DestinationRule(i)) => {
            config.destination_rules[i].diagnostic(Severity::Error, "spec", message)
        }
        Some(Source::ServiceEntry(i)) => {
            config.service_entries[i].diagnostic(Severity::Error, "spec", message)
        }
        Some(Source::Gateway(g, field)) => g.diagnostic(Severity::Error, &field, message),
        None => unplaced(config, message),
    }
}

/// An error that no Istio field explains: on the first Gateway, else on no file.
pub(super) fn unplaced(config: &Config, message: String) -> Diagnostic {
    match config.gateways.first() {
        Some(g) => g.diagnostic(Severity::Error, "spec", message),
        None => Diagnostic {
            file: String::new(),
            line: 0,
            column: 0,
            severity: Severity::Error,
            resource: None,
            field: None,
            message,
        },
    }
}

pub(super) enum Source<'a> {
    VirtualService(usize, String),
    DestinationRule(usize),
    ServiceEntry(usize),
    Gateway(&'a Resource<Gateway>, String),
}

/// `route_configuration "http.8080"` -> ("route_configuration", "http.8080").
fn split_resource(resource: &str) -> (&str, &str) {
    match resource.split_once(' ') {
        Some((kind, name)) => (kind, name.trim_matches('"')),
        None => (resource, ""),
    }
}

/// `virtual_hosts[2].routes[9].match...` -> (2, 9).
fn route_index(path: &str) -> Option<(usize, usize)> {
    let rest = path.strip_prefix("virtual_hosts[")?;
    let (vh, rest) = rest.split_once(']')?;
    let rest = rest.strip_prefix(".routes[")?;
    let (r, _) = rest.split_once(']')?;
    Some((vh.parse().ok()?, r.parse().ok()?))
}

/// The Istio resource named by `istio.config` metadata: (kind path segment, ns, name).
fn config_ref(metadata: Option<&Metadata>) -> Option<(String, String, String)> {
    let fields = &metadata?.filter_metadata.get("istio")?.fields;
    let ValueKind::StringValue(path) = fields.get("config")?.kind.as_ref()? else {
        return None;
    };
    // /apis/networking.istio.io/v1/namespaces/NS/KIND/NAME
    let mut parts = path.rsplit('/');
    let name = parts.next()?.to_string();
    let kind = parts.next()?.to_string();
    let ns = parts.next()?.to_string();
    Some((kind, ns, name))
}

fn route_source<'a>(
    config: &'a Config,
    set: &ResourceSet,
    name: &str,
    path: &str,
) -> Option<Source<'a>> {
    let rc = set.routes.iter().find(|r| r.name == name)?;
    if let Some((vh, r)) = route_index(path) {
        let route = rc.virtual_hosts.get(vh)?.routes.get(r)?;
        if let Some((kind, ns, vs_name)) = config_ref(route.metadata.as_ref())
            && kind == "virtual-service"
            && let Some(i) = config
                .virtual_services
                .iter()
                .position(|v| v.meta.namespace == ns && v.meta.name == vs_name)
        {
            // The Envoy route is named after the HTTP route (and its match).
            let http = &config.virtual_services[i].spec.http;
            let field = http
                .iter()
                .position(|h| {
                    !h.name.is_empty()
                        && (route.name == h.name || route.name.starts_with(&format!("{}.", h.name)))
                })
                .map(|k| format!("spec.http[{k}]"))
                .unwrap_or_else(|| "spec.http".to_string());
            return Some(Source::VirtualService(i, field));
        }
    }
    // A route table is per port: blame a Gateway server on it.
    let port = name.split('.').nth(1).and_then(|p| p.parse().ok())?;
    gateway_with_port(config, port)
}

pub(super) fn cluster_source<'a>(
    config: &'a Config,
    set: &ResourceSet,
    name: &str,
) -> Option<Source<'a>> {
    let cluster = set.clusters.iter().find(|c| c.name == name)?;
    if let Some((kind, ns, dr_name)) = config_ref(cluster.metadata.as_ref())
        && kind == "destination-rule"
        && let Some(i) = config
            .destination_rules
            .iter()
            .position(|d| d.meta.namespace == ns && d.meta.name == dr_name)
    {
        return Some(Source::DestinationRule(i));
    }
    // outbound|PORT|SUBSET|HOST
    let host = name.rsplit('|').next()?;
    config
        .service_entries
        .iter()
        .position(|se| se.spec.hosts.iter().any(|h| h == host))
        .map(Source::ServiceEntry)
}

/// `0.0.0.0_8080` -> 8080.
pub(super) fn port_of_listener(name: &str) -> Option<u32> {
    name.rsplit('_').next()?.parse().ok()
}

fn gateway_with_port(config: &Config, port: u32) -> Option<Source<'_>> {
    config.gateways.iter().find_map(|g| {
        let i = g
            .spec
            .servers
            .iter()
            .position(|s| s.port.as_ref().is_some_and(|p| p.number == port))?;
        Some(Source::Gateway(g, format!("spec.servers[{i}]")))
    })
}
