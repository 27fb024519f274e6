//! Mesh identity for a gateway that has none of its own: which translated resources
//! need the SDS secrets `default` (the workload certificate) and `ROOTCA` (the mesh's
//! trust bundle), blamed on the Istio field that asked for them, and the Secret
//! resources that serve them from Istio's file-mounted layout.
//!
//! A standalone gateway has no control plane to issue it a certificate: ISTIO_MUTUAL
//! there needs `--mesh-certs DIR`, and without it the configuration is refused (never
//! served in plain text, never with a handshake that cannot succeed).
use super::serve_check::{self, Source};
use crate::config::types::destination_rule::{ClientTlsMode, TrafficPolicy};
use crate::config::types::gateway::ServerTlsMode;
use crate::config::{Config, Diagnostic, Severity};
use crate::xds::ResourceSet;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use prost::Message as _;
use std::path::Path;

pub use crate::translate::{MESH_CERT_SECRET, MESH_ROOT_SECRET};
/// Files of Istio's mounted mesh certificates (`/etc/certs`): chain, key, roots.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// Whether a common TLS context names `default` or `ROOTCA`.
fn names_mesh_secrets(common: Option<&tls::CommonTlsContext>) -> bool {
    use tls::common_tls_context::ValidationContextType;
    let Some(c) = common else { return false };
    let mesh = |n: &str| n == MESH_CERT_SECRET || n == MESH_ROOT_SECRET;
    c.tls_certificate_sds_secret_configs
        .iter()
        .any(|s| mesh(&s.name))
        || match &c.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => mesh(&s.name),
            Some(ValidationContextType::CombinedValidationContext(cv)) => cv
                .validation_context_sds_secret_config
                .as_ref()
                .is_some_and(|s| mesh(&s.name)),
            _ => false,
        }
}

fn socket_needs_mesh(ts: Option<&core::TransportSocket>) -> bool {
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) =
        ts.and_then(|t| t.config_type.as_ref())
    else {
        return false;
    };
    match any.type_url.as_str() {
        DOWNSTREAM_TLS => tls::DownstreamTlsContext::decode(any.value.as_slice())
            .is_ok_and(|c| names_mesh_secrets(c.common_tls_context.as_ref())),
        UPSTREAM_TLS => tls::UpstreamTlsContext::decode(any.value.as_slice())
            .is_ok_and(|c| names_mesh_secrets(c.common_tls_context.as_ref())),
        _ => false,
    }
}

/// The first `...tls.mode: ISTIO_MUTUAL` field of a DestinationRule.
fn istio_mutual_field(dr: &crate::config::types::DestinationRule) -> Option<String> {
    fn in_policy(p: &TrafficPolicy, at: &str) -> Option<String> {
        let mutual = |t: &Option<crate::config::types::destination_rule::ClientTlsSettings>| {
            t.as_ref().and_then(|t| t.mode) == Some(ClientTlsMode::IstioMutual)
        };
        if mutual(&p.tls) {
            return Some(format!("{at}.tls.mode"));
        }
        p.port_level_settings
            .iter()
            .position(|s| mutual(&s.tls))
            .map(|i| format!("{at}.portLevelSettings[{i}].tls.mode"))
    }
    dr.traffic_policy
        .as_ref()
        .and_then(|p| in_policy(p, "spec.trafficPolicy"))
        .or_else(|| {
            dr.subsets.iter().enumerate().find_map(|(i, s)| {
                s.traffic_policy
                    .as_ref()
                    .and_then(|p| in_policy(p, &format!("spec.subsets[{i}].trafficPolicy")))
            })
        })
}

/// Errors, one per resource, for what in `set` needs the gateway's mesh identity:
/// Gateway servers with `tls.mode: ISTIO_MUTUAL`, DestinationRules with ISTIO_MUTUAL,
/// and services whose endpoints are labelled `security.istio.io/tlsMode: istio`.
pub fn needs_mesh_identity(config: &Config, set: &ResourceSet, remedy: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut push = |d: Diagnostic| {
        if !out.contains(&d) {
            out.push(d);
        }
    };
    for l in &set.listeners {
        if !l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.iter())
            .any(|c| socket_needs_mesh(c.transport_socket.as_ref()))
        {
            continue;
        }
        let message = format!(
            "listener {}: ISTIO_MUTUAL serves the gateway's mesh certificate, which it does not have; {remedy}",
            l.name
        );
        let port = serve_check::port_of_listener(&l.name);
        let found = config.gateways.iter().find_map(|g| {
            let i = g.spec.servers.iter().position(|s| {
                s.port.as_ref().map(|p| p.number) == port
                    && s.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::IstioMutual)
            })?;
            Some((g, i))
        });
        match found {
            Some((g, i)) => push(g.error(&format!("spec.servers[{i}].tls.mode"), message)),
            None => push(serve_check::unplaced(config, message)),
        }
    }
    for c in &set.clusters {
        let direct = socket_needs_mesh(c.transport_socket.as_ref());
        let auto = c
            .transport_socket_matches
            .iter()
            .any(|m| socket_needs_mesh(m.transport_socket.as_ref()));
        if !direct && !auto {
            continue;
        }
        let what = if direct {
            "ISTIO_MUTUAL"
        } else {
            "auto mTLS (endpoints labelled `security.istio.io/tlsMode: istio`)"
        };
        let message = format!(
            "cluster {}: {what} presents the gateway's mesh certificate, which it does not have; {remedy}",
            c.name
        );
        match serve_check::cluster_source(config, set, &c.name) {
            Some(Source::DestinationRule(i)) => {
                let dr = &config.destination_rules[i];
                let field = istio_mutual_field(&dr.spec).unwrap_or_else(|| "spec".into());
                push(dr.error(&field, message));
            }
            Some(Source::ServiceEntry(i)) => {
                push(config.service_entries[i].diagnostic(Severity::Error, "spec", message))
            }
            _ => push(serve_check::unplaced(config, message)),
        }
    }
    out
}

/// The Secret resources `default` and `ROOTCA` read from Istio's file-mounted layout in
/// `dir` (`cert-chain.pem`, `key.pem`, `root-cert.pem`); file-based, so the gateway
/// watches the files and rotates without a restart.
pub fn mesh_cert_secrets(dir: &Path) -> Vec<tls::Secret> {
    let file = |name: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(
            dir.join(name).to_string_lossy().into_owned(),
        )),
        ..Default::default()
    };
    vec![
        tls::Secret {
            name: MESH_CERT_SECRET.into(),
            r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: Some(file(CERT_CHAIN_FILE)),
                private_key: Some(file(KEY_FILE)),
                ..Default::default()
            })),
        },
        tls::Secret {
            name: MESH_ROOT_SECRET.into(),
            r#type: Some(tls::secret::Type::ValidationContext(
                tls::CertificateValidationContext {
                    trusted_ca: Some(file(ROOT_CERT_FILE)),
                    ..Default::default()
                },
            )),
        },
    ]
}
