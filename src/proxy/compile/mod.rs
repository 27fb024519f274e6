//! xDS resources -> an immutable runtime [`Snapshot`].
//!
//! Compilation happens off the hot path: every matcher is built here (regexes compiled,
//! domains lowered and sorted, clusters resolved), so that serving a request only walks
//! tables. Anything a resource asks for that meshgate does not implement is a
//! [`CompileError`] naming the resource and the field, and the whole update is rejected
//! (Envoy NACKs an update it cannot apply; the last good snapshot keeps serving).
//!
//! Every message meshgate reads is checked with [`fields!`], an exhaustive destructuring
//! of the prost struct: a field Envoy adds to its protos fails the build until it is
//! classified as supported, ignored (no effect on traffic) or unsupported.
use crate::proxy::snapshot::Snapshot;
use crate::proxy::tls::TlsRuntime;
use crate::xds::ResourceSet;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod cluster;
pub(crate) mod listener;
pub(crate) mod route;
pub(crate) mod tracing;

/// Why an update was rejected: which resource, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// `listener "http.8080"`, `route_configuration "http.8080"`, `cluster "..."`.
    pub resource: String,
    /// The field path inside the resource, e.g. `virtual_hosts[0].routes[2].match.safe_regex`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.path, self.message)
        }
    }
}

/// Where compilation is inside a resource, for precise errors.
pub(crate) struct Cx {
    resource: String,
    path: Vec<String>,
}

impl Cx {
    pub(crate) fn new(kind: &str, name: &str) -> Cx {
        Cx {
            resource: format!("{kind} \"{name}\""),
            path: Vec::new(),
        }
    }

    /// Runs `f` with `seg` appended to the path (`routes[3]`, `match`).
    pub(crate) fn at<T>(
        &mut self,
        seg: impl fmt::Display,
        f: impl FnOnce(&mut Cx) -> Result<T, CompileError>,
    ) -> Result<T, CompileError> {
        self.path.push(seg.to_string());
        let out = f(self);
        self.path.pop();
        out
    }

    fn path_with(&self, field: &str) -> String {
        let mut p = self.path.join(".");
        let field = field.trim_start_matches("r#");
        if !field.is_empty() {
            if !p.is_empty() {
                p.push('.');
            }
            p.push_str(field);
        }
        p
    }

    /// An error about `field` (relative to the current path; "" for the current node).
    pub(crate) fn err(&self, field: &str, message: impl Into<String>) -> CompileError {
        CompileError {
            resource: self.resource.clone(),
            path: self.path_with(field),
            message: message.into(),
        }
    }

    /// The standard rejection of a field meshgate does not implement.
    pub(crate) fn unsupported(&self, field: &str) -> CompileError {
        self.err(
            field,
            "field not supported by meshgate (see docs/xds-support.md)",
        )
    }
}

/// Classifies every field of a prost message: `supported` ones are read by the caller,
/// `ignored` ones are accepted without effect on traffic, `unsupported` ones must be
/// unset (their default) or the resource is rejected. The destructuring is exhaustive.
macro_rules! fields {
    ($cx:expr, $msg:expr, $($ty:ident)::+ {
        supported: [$($s:ident),* $(,)?],
        ignored: [$($i:ident),* $(,)?],
        unsupported: [$($u:ident),* $(,)?] $(,)?
    }) => {{
        #[allow(deprecated)]
        let $($ty)::+ { $($s: _,)* $($i: _,)* $($u,)* } = $msg;
        #[allow(deprecated)]
        {
            $( if !$crate::proxy::compile::is_default($u) { return Err($cx.unsupported(stringify!($u))); } )*
        }
    }};
}
pub(crate) use fields;

/// Whether a field holds its proto3 default (unset).
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A protobuf Duration as a std Duration (negative durations are invalid).
pub(crate) fn duration(
    cx: &Cx,
    field: &str,
    d: &Option<crate::xds::pb::google::protobuf::Duration>,
) -> Result<Option<Duration>, CompileError> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => {
            Err(cx.err(field, "invalid duration"))
        }
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

/// Compiles a whole resource set. `previous` lends the state that must survive an update
/// (cluster counters, outlier detection, DNS answers) to clusters whose config is
/// unchanged, and its TLS state (secret store, sessions) to the new snapshot; without a
/// previous snapshot a fresh TLS state is made. The set's `Secret`s are checked (see
/// [`validate_secrets`]) but not published.
pub fn compile(
    set: &ResourceSet,
    version: &str,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, CompileError> {
    validate_secrets(set, previous)?;
    let tls = tls_of(previous)?;
    compile_with(set, version, previous, &tls)
}

/// Checks that a set compiles, as [`compile`] does, without building a snapshot (nor
/// copying the set): how an update is checked before it is applied.
pub fn check(set: &ResourceSet, previous: Option<&Snapshot>) -> Result<(), CompileError> {
    validate_secrets(set, previous)?;
    let tls = tls_of(previous)?;
    compile_parts(set, previous, &tls).map(|_| ())
}

fn tls_of(previous: Option<&Snapshot>) -> Result<Arc<TlsRuntime>, CompileError> {
    match previous.and_then(|p| p.tls.clone()) {
        Some(t) => Ok(t),
        None => TlsRuntime::new(Default::default()).map_err(|e| CompileError {
            resource: "tls".into(),
            path: String::new(),
            message: e.to_string(),
        }),
    }
}

/// Compiles a set without reading its secrets' material (their files may live on
/// another host): how the control plane and `meshgate validate` check that a gateway can
/// serve a configuration. The result is dropped.
pub fn check_without_secret_material(set: &ResourceSet) -> Result<(), CompileError> {
    let tls = TlsRuntime::new(Default::default()).map_err(|e| CompileError {
        resource: "tls".into(),
        path: String::new(),
        message: e.to_string(),
    })?;
    // The parts alone: the check keeps nothing, not even a copy of the set.
    compile_parts(set, None, &tls).map(|_| ())
}

/// Compiles a set into a snapshot without reading its secrets' material (which may be
/// redacted, as in a config dump, or live on another host): for looking at how a
/// configuration routes (`meshgate explain`), never for serving.
pub fn compile_without_secret_material(
    set: &ResourceSet,
    version: &str,
) -> Result<Snapshot, CompileError> {
    let tls = TlsRuntime::new(Default::default()).map_err(|e| CompileError {
        resource: "tls".into(),
        path: String::new(),
        message: e.to_string(),
    })?;
    let (listeners, clusters) = compile_parts(set, None, &tls)?;
    Ok(Snapshot::new(version, set.clone(), listeners, clusters))
}

/// Checks the set's `Secret`s: certificates and keys parse and match, CA bundles parse,
/// files are readable. Secrets equal to the previous snapshot's are not parsed again.
pub fn validate_secrets(
    set: &ResourceSet,
    previous: Option<&Snapshot>,
) -> Result<(), CompileError> {
    let before: HashMap<
        &str,
        &crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    > = previous
        .map(|p| {
            p.resources
                .secrets
                .iter()
                .map(|s| (s.name.as_str(), s))
                .collect()
        })
        .unwrap_or_default();
    for s in &set.secrets {
        if before.get(s.name.as_str()).is_some_and(|b| *b == s) {
            continue;
        }
        crate::proxy::tls::validate_secret(s).map_err(|e| secret_error(&s.name, &e))?;
    }
    Ok(())
}

/// A secret that cannot be used, as a compile error naming it.
pub(crate) fn secret_error(name: &str, e: &crate::tls::TlsError) -> CompileError {
    CompileError {
        resource: format!("secret \"{name}\""),
        path: String::new(),
        message: e.to_string(),
    }
}

/// The compiled parts of a set: its listeners and clusters.
pub(crate) type Compiled = (
    Vec<Arc<crate::proxy::listener::Listener>>,
    HashMap<String, Arc<crate::proxy::upstream::cluster::Cluster>>,
);

/// Compiles clusters, routes and listeners with the gateway's TLS state.
pub(crate) fn compile_parts(
    set: &ResourceSet,
    previous: Option<&Snapshot>,
    tls: &Arc<TlsRuntime>,
) -> Result<Compiled, CompileError> {
    let clusters = cluster::compile_clusters(set, previous, tls)?;
    let routes = route::compile_route_configs(set, &clusters)?;
    let listeners = listener::compile_listeners(set, &routes, &clusters, tls)?;
    Ok((listeners, clusters))
}

/// Compiles with the gateway's TLS state, whose secret store already holds the set's
/// secrets (TLS contexts read them at handshake time).
pub fn compile_with(
    set: &ResourceSet,
    version: &str,
    previous: Option<&Snapshot>,
    tls: &Arc<TlsRuntime>,
) -> Result<Snapshot, CompileError> {
    let (listeners, clusters) = compile_parts(set, previous, tls)?;
    let mut snap = Snapshot::new(version, set.clone(), listeners, clusters);
    snap.tls = Some(tls.clone());
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::route::v3::Route;

    fn check(r: &Route) -> Result<(), CompileError> {
        let mut cx = Cx::new("route_configuration", "rc");
        cx.at("routes[0]", |cx| {
            fields!(
                cx,
                r,
                Route {
                    supported: [name, r#match, action],
                    ignored: [metadata, decorator, stat_prefix],
                    unsupported: [
                        tracing,
                        typed_per_filter_config,
                        request_headers_to_add,
                        request_headers_to_remove,
                        response_headers_to_add,
                        response_headers_to_remove,
                        per_request_buffer_limit_bytes,
                        request_body_buffer_limit,
                        route_specifiers
                    ],
                }
            );
            Ok(())
        })
    }

    #[test]
    fn fields_rejects_set_unsupported_fields_with_path() {
        assert!(check(&Route::default()).is_ok());
        #[allow(deprecated)]
        let r = Route {
            per_request_buffer_limit_bytes: Some(crate::xds::pb::google::protobuf::UInt32Value {
                value: 5,
            }),
            ..Default::default()
        };
        let e = check(&r).unwrap_err();
        assert_eq!(e.resource, "route_configuration \"rc\"");
        assert_eq!(e.path, "routes[0].per_request_buffer_limit_bytes");
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
