//! TLS: downstream contexts for Gateway servers, upstream contexts for DestinationRule
//! `tls`, and the SDS secrets they name — istiod's names and shapes:
//!
//! - `credentialName` -> `kubernetes://NAME` (certificate and key from the Kubernetes
//!   Secret NAME), and for client verification `kubernetes://NAME-cacert` (the CA of the
//!   Secret `NAME-cacert`, else the `ca.crt` of NAME), read from `kind: Secret` resources
//!   in the gateway's namespace, inlined into Secret resources;
//! - certificate files -> `file-cert:CERT~KEY` and `file-root:CA`, Secret resources whose
//!   data sources are the file names, so that Envoy re-reads them when they change;
//! - no CA for an upstream -> `file-root:system`, the system's trusted roots.
use super::pb;
use crate::config::types::destination_rule::{ClientTlsMode, ClientTlsSettings};
use crate::config::types::gateway::{ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::config::{Config, Resource, Secret as K8sSecret};
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use std::collections::BTreeMap;

/// Name of Envoy's TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// Suffix of the CA companion of a credential.
pub const CA_SUFFIX: &str = "-cacert";
/// ALPN offered by gateways terminating TLS (Istio's `ALPNHttp`).
pub const ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];
/// The SDS secret of the proxy's own mesh certificate and key (Istio's
/// `SDSDefaultResourceName`).
pub const MESH_CERT_SECRET: &str = "default";
/// The SDS secret of the mesh's trust bundle (Istio's `SDSRootResourceName`).
pub const MESH_ROOT_SECRET: &str = "ROOTCA";
/// ALPN of mesh mTLS to an HTTP/1.1 or TCP upstream (Istio's `ALPNInMeshWithMxc`).
pub const ALPN_IN_MESH_WITH_MXC: [&str; 2] = ["istio-peer-exchange", "istio"];
/// ALPN of mesh mTLS to an HTTP/2 upstream (Istio's `ALPNInMeshH2WithMxc`).
pub const ALPN_IN_MESH_H2_WITH_MXC: [&str; 3] = ["istio-peer-exchange", "istio", "h2"];
/// ALPN a sidecar's inbound mTLS offers on TCP chains (Istio's `ALPNDownstreamWithMxc`).
pub const ALPN_DOWNSTREAM_WITH_MXC: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// The cipher suites of a sidecar's inbound mTLS (Istio's `SupportedCiphers`).
pub const INBOUND_MTLS_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// Where a secret's content comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A certificate and key, inline.
    Inline { cert: Vec<u8>, key: Vec<u8> },
    /// A CA bundle (and CRL), inline.
    InlineCa { ca: Vec<u8>, crl: Option<Vec<u8>> },
    /// Certificate and key files.
    FileCert { cert: String, key: String },
    /// A CA bundle file.
    FileRoot { ca: String },
    /// The system's trusted roots.
    SystemRoot,
}

/// The secrets named while translating, by resource name.
pub struct SecretBook {
    secrets: BTreeMap<String, Source>,
    /// The proxy's namespace: credentials found there are `kubernetes://NAME`; found in
    /// another namespace (a Gateway's own, when no proxy namespace was given) they are
    /// `kubernetes://NAMESPACE/NAME`, so that equal names never collide.
    namespace: String,
    /// The configuration's Secrets by (namespace, name), made at the first look-up:
    /// a Gateway with thousands of credentials finds each in one probe.
    index: Option<std::collections::HashMap<(String, String), usize>>,
}

impl SecretBook {
    pub fn new(namespace: &str) -> SecretBook {
        SecretBook {
            secrets: BTreeMap::new(),
            namespace: namespace.to_string(),
            index: None,
        }
    }

    /// The Secret `name` in `namespace` (the first, if several).
    fn find<'a>(
        &mut self,
        config: &'a Config,
        namespace: &str,
        name: &str,
    ) -> Option<&'a Resource<K8sSecret>> {
        let index = self.index.get_or_insert_with(|| {
            let mut m = std::collections::HashMap::with_capacity(config.secrets.len());
            for (i, s) in config.secrets.iter().enumerate() {
                m.entry((s.meta.namespace.clone(), s.meta.name.clone()))
                    .or_insert(i);
            }
            m
        });
        index
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|&i| config.secrets.get(i))
    }

    /// The SDS resource name of the Secret `name` in `namespace`.
    fn resource_name(&self, namespace: &str, name: &str) -> String {
        if namespace == self.namespace {
            format!("kubernetes://{name}")
        } else {
            format!("kubernetes://{namespace}/{name}")
        }
    }
}

/// The first non-empty value of `keys`.
fn value<'a>(secret: &'a K8sSecret, keys: &[&str]) -> Option<&'a [u8]> {
    keys.iter()
        .filter_map(|k| secret.get(k))
        .find(|v| !v.is_empty())
}

impl SecretBook {
    /// A certificate credential (`credentialName`): `kubernetes://NAME`.
    pub fn credential(
        &mut self,
        config: &Config,
        namespace: &str,
        name: &str,
    ) -> Result<String, String> {
        let plain = name.strip_prefix("kubernetes://").unwrap_or(name);
        if plain.contains("://") {
            return Err(format!(
                "credential `{name}`: only Kubernetes Secrets (`NAME` or `kubernetes://NAME`) are supported"
            ));
        }
        // A credential an AcmeCertificate issues is published by the gateway's ACME
        // issuer into its secret store under this name; no Secret resource is emitted.
        if config
            .acme_certificates
            .iter()
            .any(|a| a.meta.namespace == namespace && a.spec.credential_name == plain)
        {
            return Ok(crate::tls::credential::certificate_sds_name(plain));
        }
        let resource = self.resource_name(namespace, plain);
        let secret = self
            .find(config, namespace, plain)
            .ok_or_else(|| format!("no Secret {namespace}/{plain} holds credential `{name}`"))?;
        let cert = value(&secret.spec, &["tls.crt", "cert"]);
        let key = value(&secret.spec, &["tls.key", "key"]);
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(format!(
                "Secret {namespace}/{plain} has no certificate and key (`tls.crt`/`tls.key` or `cert`/`key`)"
            ));
        };
        self.secrets.insert(
            resource.clone(),
            Source::Inline {
                cert: cert.to_vec(),
                key: key.to_vec(),
            },
        );
        Ok(resource)
    }

    /// The CA of a credential: `kubernetes://NAME-cacert`, from the Secret `NAME-cacert`,
    /// else from NAME itself (`ca.crt` or `cacert`, with `ca.crl`/`crl`).
    pub fn credential_ca(
        &mut self,
        config: &Config,
        namespace: &str,
        name: &str,
    ) -> Result<String, String> {
        let plain = name.strip_prefix("kubernetes://").unwrap_or(name);
        let ca_name = if plain.ends_with(CA_SUFFIX) {
            plain.to_string()
        } else {
            format!("{plain}{CA_SUFFIX}")
        };
        let resource = self.resource_name(namespace, &ca_name);
        let stripped = ca_name.trim_end_matches(CA_SUFFIX);
        let secret = self
            .find(config, namespace, &ca_name)
            .or_else(|| self.find(config, namespace, stripped))
            .ok_or_else(|| {
                format!("no Secret {namespace}/{ca_name} (or {namespace}/{stripped}) holds the CA for `{name}`")
            })?;
        let ca = value(&secret.spec, &["cacert", "ca.crt"]).ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no CA certificate (`ca.crt` or `cacert`)",
                secret.meta.name
            )
        })?;
        let crl = value(&secret.spec, &["crl", "ca.crl"]).map(<[u8]>::to_vec);
        self.secrets.insert(
            resource.clone(),
            Source::InlineCa {
                ca: ca.to_vec(),
                crl,
            },
        );
        Ok(resource)
    }

    /// A CA-only credential named as such (`caCertCredentialName`).
    pub fn ca_credential(
        &mut self,
        config: &Config,
        namespace: &str,
        name: &str,
    ) -> Result<String, String> {
        let plain = name.strip_prefix("kubernetes://").unwrap_or(name);
        let secret = self
            .find(config, namespace, plain)
            .ok_or_else(|| format!("no Secret {namespace}/{plain} holds CA credential `{name}`"))?;
        let ca = value(&secret.spec, &["cacert", "ca.crt"])
            .ok_or_else(|| format!("Secret {namespace}/{plain} has no `ca.crt` or `cacert`"))?;
        let crl = value(&secret.spec, &["crl", "ca.crl"]).map(<[u8]>::to_vec);
        let resource = self.resource_name(namespace, plain);
        self.secrets.insert(
            resource.clone(),
            Source::InlineCa {
                ca: ca.to_vec(),
                crl,
            },
        );
        Ok(resource)
    }

    /// Certificate and key files: `file-cert:CERT~KEY`.
    pub fn file_cert(&mut self, cert: &str, key: &str) -> String {
        let name = format!("file-cert:{cert}~{key}");
        self.secrets.insert(
            name.clone(),
            Source::FileCert {
                cert: cert.to_string(),
                key: key.to_string(),
            },
        );
        name
    }

    /// A CA file: `file-root:CA`.
    pub fn file_root(&mut self, ca: &str) -> String {
        let name = format!("file-root:{ca}");
        self.secrets
            .insert(name.clone(), Source::FileRoot { ca: ca.to_string() });
        name
    }

    /// The system's trusted roots: `file-root:system`.
    pub fn system_root(&mut self) -> String {
        let name = "file-root:system".to_string();
        self.secrets.insert(name.clone(), Source::SystemRoot);
        name
    }

    /// The Secret resources, by name.
    pub fn into_secrets(self) -> Vec<tls::Secret> {
        use tls::secret::Type;
        let inline = |b: Vec<u8>| core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineBytes(b)),
            ..Default::default()
        };
        let file = |f: &str| core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(f.to_string())),
            ..Default::default()
        };
        self.secrets
            .into_iter()
            .map(|(name, source)| {
                let r#type = match source {
                    Source::Inline { cert, key } => Type::TlsCertificate(tls::TlsCertificate {
                        certificate_chain: Some(inline(cert)),
                        private_key: Some(inline(key)),
                        ..Default::default()
                    }),
                    Source::InlineCa { ca, crl } => {
                        Type::ValidationContext(tls::CertificateValidationContext {
                            trusted_ca: Some(inline(ca)),
                            crl: crl.map(inline),
                            ..Default::default()
                        })
                    }
                    Source::FileCert { cert, key } => Type::TlsCertificate(tls::TlsCertificate {
                        certificate_chain: Some(file(&cert)),
                        private_key: Some(file(&key)),
                        ..Default::default()
                    }),
                    Source::FileRoot { ca } => {
                        Type::ValidationContext(tls::CertificateValidationContext {
                            trusted_ca: Some(file(&ca)),
                            ..Default::default()
                        })
                    }
                    Source::SystemRoot => {
                        Type::ValidationContext(tls::CertificateValidationContext {
                            system_root_certs: Some(
                                tls::certificate_validation_context::SystemRootCerts {},
                            ),
                            ..Default::default()
                        })
                    }
                };
                tls::Secret {
                    name,
                    r#type: Some(r#type),
                }
            })
            .collect()
    }
}

/// An SDS reference to a secret served on the ADS stream.
pub fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// The TLS transport socket around a context.
pub fn transport_socket<M: prost::Message + prost::Name>(ctx: &M) -> core::TransportSocket {
    core::TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pb::any(
            ctx,
        ))),
    }
}

/// Subject alternative names as Envoy's typed matchers: each name is accepted as a DNS
/// name or a URI (and as an IP address or e-mail when it looks like one), which is what
/// the untyped matcher Istio writes did.
pub fn san_matchers(names: &[String]) -> Vec<tls::SubjectAltNameMatcher> {
    use tls::subject_alt_name_matcher::SanType;
    let mut out = Vec::new();
    for n in names {
        let mut types = vec![SanType::Dns, SanType::Uri];
        if n.parse::<std::net::IpAddr>().is_ok() {
            types.push(SanType::IpAddress);
        }
        if n.contains('@') {
            types.push(SanType::Email);
        }
        for t in types {
            out.push(tls::SubjectAltNameMatcher {
                san_type: t as i32,
                matcher: Some(matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(n.clone())),
                    ignore_case: false,
                }),
                ..Default::default()
            });
        }
    }
    out
}

/// SAN matchers of mesh mTLS: a SPIFFE id is a URI SAN and nothing else; other names
/// keep [`san_matchers`]' reading.
pub fn mesh_san_matchers(names: &[String]) -> Vec<tls::SubjectAltNameMatcher> {
    use tls::subject_alt_name_matcher::SanType;
    let mut out = Vec::new();
    for n in names {
        if n.starts_with("spiffe://") {
            out.push(tls::SubjectAltNameMatcher {
                san_type: SanType::Uri as i32,
                matcher: Some(matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(n.clone())),
                    ignore_case: false,
                }),
                ..Default::default()
            });
        } else {
            out.extend(san_matchers(std::slice::from_ref(n)));
        }
    }
    out
}

/// Where a proxy gets the mesh's own secrets (`default`, `ROOTCA`) from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeshSecrets {
    /// On the ADS stream: gateways (meshgate's own feeds them locally; an Envoy gateway
    /// gets them from the control plane over its mutual-TLS stream).
    #[default]
    Ads,
    /// From the local agent over the `sds-grpc` cluster (a Unix socket in the pod), as
    /// Istio's sidecars get them: the key never leaves the pod.
    Agent,
}

/// The cluster of the local agent's SDS server, defined in a sidecar's bootstrap.
pub const AGENT_SDS_CLUSTER: &str = "sds-grpc";

impl MeshSecrets {
    /// The SDS reference to mesh secret `name` from this source.
    pub fn sds(self, name: &str) -> tls::SdsSecretConfig {
        match self {
            MeshSecrets::Ads => sds(name),
            MeshSecrets::Agent => tls::SdsSecretConfig {
                name: name.to_string(),
                sds_config: Some(core::ConfigSource {
                    config_source_specifier: Some(
                        core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                            core::ApiConfigSource {
                                api_type: core::api_config_source::ApiType::Grpc as i32,
                                transport_api_version: core::ApiVersion::V3 as i32,
                                set_node_on_first_message_only: true,
                                grpc_services: vec![core::GrpcService {
                                    target_specifier: Some(
                                        core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                            core::grpc_service::EnvoyGrpc {
                                                cluster_name: AGENT_SDS_CLUSTER.into(),
                                                ..Default::default()
                                            },
                                        ),
                                    ),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        ),
                    ),
                    initial_fetch_timeout: Some(pb::duration(std::time::Duration::ZERO)),
                    resource_api_version: core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
            },
        }
    }
}

/// The validation of mesh mTLS (Istio's `ApplyToCommonTLSContext`): the trust bundle
/// `ROOTCA` by SDS, and the peer's SANs when any are known (else the chain alone).
pub fn mesh_validation(
    sans: &[String],
    source: MeshSecrets,
) -> tls::common_tls_context::ValidationContextType {
    tls::common_tls_context::ValidationContextType::CombinedValidationContext(
        tls::common_tls_context::CombinedCertificateValidationContext {
            default_validation_context: Some(tls::CertificateValidationContext {
                match_typed_subject_alt_names: mesh_san_matchers(sans),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(source.sds(MESH_ROOT_SECRET)),
            ..Default::default()
        },
    )
}

/// The UpstreamTlsContext of ISTIO_MUTUAL (istiod's `buildIstioMutualTLS` and
/// `buildUpstreamClusterTLSContext`): the workload certificate `default` and the trust
/// bundle `ROOTCA` by SDS, the peer's SPIFFE ids, SNI `outbound_.PORT_.SUBSET_.HOST`,
/// and the in-mesh ALPN (`h2` added for HTTP/2 upstreams).
pub fn istio_mutual_upstream_context(
    sans: &[String],
    sni: &str,
    h2: bool,
    source: MeshSecrets,
) -> tls::UpstreamTlsContext {
    let alpn: &[&str] = if h2 {
        &ALPN_IN_MESH_H2_WITH_MXC
    } else {
        &ALPN_IN_MESH_WITH_MXC
    };
    tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![source.sds(MESH_CERT_SECRET)],
            validation_context_type: Some(mesh_validation(sans, source)),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        sni: sni.to_string(),
        ..Default::default()
    }
}

/// The DownstreamTlsContext of a sidecar's inbound mutual TLS (istiod's
/// `BuildInboundTLS`): the workload certificate `default`, clients required and verified
/// against `ROOTCA` with no SAN restriction (authorization, not authentication, says who
/// may call), TLS 1.2 to 1.3 with Istio's ciphers, and ALPN `h2`/`http/1.1` (TCP chains
/// add `istio-peer-exchange` first).
pub fn istio_mutual_downstream_context(
    http: bool,
    source: MeshSecrets,
) -> tls::DownstreamTlsContext {
    let alpn: &[&str] = if http {
        &ALPN_HTTP
    } else {
        &ALPN_DOWNSTREAM_WITH_MXC
    };
    tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                cipher_suites: INBOUND_MTLS_CIPHERS.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![source.sds(MESH_CERT_SECRET)],
            validation_context_type: Some(mesh_validation(&[], source)),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        require_client_certificate: Some(pb::boolv(true)),
        ..Default::default()
    }
}

fn tls_version(p: Option<TlsProtocol>) -> i32 {
    use tls::tls_parameters::TlsProtocol as Envoy;
    (match p.unwrap_or(TlsProtocol::Auto) {
        TlsProtocol::Auto => Envoy::TlsAuto,
        TlsProtocol::V1_0 => Envoy::TlSv10,
        TlsProtocol::V1_1 => Envoy::TlSv11,
        TlsProtocol::V1_2 => Envoy::TlSv12,
        TlsProtocol::V1_3 => Envoy::TlSv13,
    }) as i32
}

/// The DownstreamTlsContext of a server that terminates TLS (SIMPLE, MUTUAL,
/// OPTIONAL_MUTUAL), istiod's way. `namespace` is where credentials are looked up.
pub fn downstream_context(
    settings: &ServerTlsSettings,
    config: &Config,
    namespace: &str,
    book: &mut SecretBook,
) -> Result<tls::DownstreamTlsContext, String> {
    let mode = settings.mode.unwrap_or(ServerTlsMode::Passthrough);
    let validate_client = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let mut common = tls::CommonTlsContext {
        alpn_protocols: ALPN_HTTP.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut default_validation = tls::CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(&settings.subject_alt_names),
        ..Default::default()
    };
    if validate_client {
        default_validation.verify_certificate_spki = settings.verify_certificate_spki.clone();
        default_validation.verify_certificate_hash = settings.verify_certificate_hash.clone();
        if settings.insecure_skip_verify == Some(true) {
            default_validation.trust_chain_verification =
                tls::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
        }
    }

    let ca_resource;
    if mode == ServerTlsMode::IstioMutual {
        // istiod's ApplyToCommonTLSContext: the gateway's own mesh certificate, clients
        // verified against the mesh's trust bundle and required.
        common.tls_certificate_sds_secret_configs = vec![sds(MESH_CERT_SECRET)];
        common.validation_context_type = Some(mesh_validation(
            &settings.subject_alt_names,
            MeshSecrets::Ads,
        ));
        apply_tls_params(&mut common, settings);
        return Ok(tls::DownstreamTlsContext {
            common_tls_context: Some(common),
            require_client_certificate: Some(pb::boolv(true)),
            ..Default::default()
        });
    }
    if !settings.credential_names.is_empty() || !settings.credential_name.is_empty() {
        let names: Vec<&String> = if settings.credential_names.is_empty() {
            vec![&settings.credential_name]
        } else {
            settings.credential_names.iter().collect()
        };
        for n in &names {
            let r = book.credential(config, namespace, n)?;
            common.tls_certificate_sds_secret_configs.push(sds(&r));
        }
        ca_resource = if !validate_client {
            None
        } else if !settings.ca_cert_credential_name.is_empty() {
            Some(book.ca_credential(config, namespace, &settings.ca_cert_credential_name)?)
        } else {
            Some(book.credential_ca(config, namespace, names[0])?)
        };
    } else {
        let pairs: Vec<(&str, &str)> = if settings.tls_certificates.is_empty() {
            vec![(&settings.server_certificate, &settings.private_key)]
        } else {
            settings
                .tls_certificates
                .iter()
                .map(|c| (c.server_certificate.as_str(), c.private_key.as_str()))
                .collect()
        };
        for (cert, key) in pairs {
            if cert.is_empty() || key.is_empty() {
                return Err(
                    "needs `credentialName`, or `serverCertificate` and `privateKey`".into(),
                );
            }
            let r = book.file_cert(cert, key);
            common.tls_certificate_sds_secret_configs.push(sds(&r));
        }
        ca_resource = if !validate_client {
            None
        } else if settings.ca_certificates.is_empty() {
            return Err(format!(
                "mode {mode} needs `caCertificates` to verify clients"
            ));
        } else {
            Some(book.file_root(&settings.ca_certificates))
        };
        if validate_client && !settings.ca_crl.is_empty() {
            default_validation.crl = Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::Filename(
                    settings.ca_crl.clone(),
                )),
                ..Default::default()
            });
        }
    }
    if let Some(ca) = ca_resource {
        common.validation_context_type = Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(default_validation),
                    validation_context_sds_secret_config: Some(sds(&ca)),
                    ..Default::default()
                },
            ),
        );
    } else if !settings.subject_alt_names.is_empty() {
        common.validation_context_type = Some(
            tls::common_tls_context::ValidationContextType::ValidationContext(default_validation),
        );
    }

    apply_tls_params(&mut common, settings);
    Ok(tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(pb::boolv(mode == ServerTlsMode::Mutual)),
        ..Default::default()
    })
}

/// TLS versions and ciphers of a server, when not the defaults.
fn apply_tls_params(common: &mut tls::CommonTlsContext, settings: &ServerTlsSettings) {
    if settings
        .min_protocol_version
        .is_some_and(|p| p != TlsProtocol::Auto)
        || settings
            .max_protocol_version
            .is_some_and(|p| p != TlsProtocol::Auto)
        || !settings.cipher_suites.is_empty()
    {
        common.tls_params = Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls_version(settings.min_protocol_version),
            tls_maximum_protocol_version: tls_version(settings.max_protocol_version),
            cipher_suites: settings.cipher_suites.clone(),
            ..Default::default()
        });
    }
}

/// The UpstreamTlsContext of a DestinationRule's SIMPLE or MUTUAL `tls`, istiod's way.
/// `default_sans` are the ServiceEntry's `subjectAltNames`, used when the rule names
/// none. `h2` clusters offer only `h2` by ALPN.
pub fn upstream_context(
    settings: &ClientTlsSettings,
    config: &Config,
    namespace: &str,
    default_sans: &[String],
    h2: bool,
    book: &mut SecretBook,
) -> Result<tls::UpstreamTlsContext, String> {
    let mutual = settings.mode == Some(ClientTlsMode::Mutual);
    let mut common = tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let sans = if settings.subject_alt_names.is_empty() {
        default_sans.to_vec()
    } else {
        settings.subject_alt_names.clone()
    };
    let insecure = settings.insecure_skip_verify == Some(true);
    let mut validation = tls::CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(&sans),
        ..Default::default()
    };
    if !settings.credential_name.is_empty() {
        if mutual {
            let r = book.credential(config, namespace, &settings.credential_name)?;
            common.tls_certificate_sds_secret_configs.push(sds(&r));
        }
        if !insecure {
            let ca = book.credential_ca(config, namespace, &settings.credential_name)?;
            common.validation_context_type = Some(combined(validation, &ca));
        }
    } else {
        if mutual {
            if settings.client_certificate.is_empty() || settings.private_key.is_empty() {
                return Err(
                    "mode MUTUAL needs `clientCertificate` and `privateKey` (or `credentialName`)"
                        .into(),
                );
            }
            let r = book.file_cert(&settings.client_certificate, &settings.private_key);
            common.tls_certificate_sds_secret_configs.push(sds(&r));
        }
        if insecure {
            common.validation_context_type = Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext::default(),
                ),
            );
        } else {
            if !settings.ca_crl.is_empty() {
                validation.crl = Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::Filename(
                        settings.ca_crl.clone(),
                    )),
                    ..Default::default()
                });
            }
            let ca = if settings.ca_certificates.is_empty() {
                book.system_root()
            } else {
                book.file_root(&settings.ca_certificates)
            };
            common.validation_context_type = Some(combined(validation, &ca));
        }
    }
    if h2 {
        common.alpn_protocols = vec!["h2".into()];
    }
    Ok(tls::UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: settings.sni.clone(),
        ..Default::default()
    })
}

fn combined(
    default: tls::CertificateValidationContext,
    ca: &str,
) -> tls::common_tls_context::ValidationContextType {
    tls::common_tls_context::ValidationContextType::CombinedValidationContext(
        tls::common_tls_context::CombinedCertificateValidationContext {
            default_validation_context: Some(default),
            validation_context_sds_secret_config: Some(sds(ca)),
            ..Default::default()
        },
    )
}
