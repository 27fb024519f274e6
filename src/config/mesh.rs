//! Istio's MeshConfig: the mesh-wide settings (`mesh` in Istio's `istio` ConfigMap),
//! read from `--mesh-config FILE` by the control plane, the standalone gateway and
//! `validate`. It is the one place mesh-wide settings come from.
//!
//! Every field of Istio's `MeshConfig` (and of its `defaultConfig`, a `ProxyConfig`) is
//! known; a field that is not is an error with a did-you-mean hint, as in resources.
//! Fields fall in three groups:
//!
//! - **served**: meshgate acts on them (`trustDomain`, `enableAutoMtls`,
//!   `outboundTrafficPolicy`, `accessLogFile`, `accessLogEncoding`, `connectTimeout`,
//!   `proxyListenPort`,
//!   `rootNamespace` when it is `istio-system`, `extensionProviders` (the external
//!   authorizers `envoyExtAuthzHttp` / `envoyExtAuthzGrpc` of CUSTOM authorization
//!   policies, checked field by field; the other kinds as definitions),
//!   and in `defaultConfig`: `concurrency`, `terminationDrainDuration`,
//!   `discoveryAddress`, `proxyMetadata`, `gatewayTopology`);
//! - **not relevant** to what meshgate serves (settings of Kubernetes Ingress
//!   processing, sidecar capture ports, istiod's own discovery), accepted and listed in
//!   docs/configuration.md;
//! - **would change traffic but are not served yet**: an error naming the field, so a
//!   mesh never believes a setting is in force when it is not.
use super::diag::{Diagnostic, Severity};
use super::duration::Duration;
use super::source::{self, Node};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Istio's default `proxyListenPort`.
pub const DEFAULT_PROXY_LISTEN_PORT: u32 = 15001;
/// Istio's `proxyInboundListenPort`.
pub const DEFAULT_PROXY_INBOUND_LISTEN_PORT: u32 = 15006;

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OutboundMode {
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
}

/// `accessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AccessLogEncoding {
    #[default]
    #[serde(rename = "TEXT")]
    Text,
    #[serde(rename = "JSON")]
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

/// One `extensionProviders` entry: a name and exactly one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionProvider {
    pub name: String,
    /// The provider's kind, as Istio names the field (`envoyExtAuthzHttp`, `zipkin`, ...).
    pub kind: String,
    /// The provider's settings, as written.
    pub settings: Value,
}

impl ExtensionProvider {
    /// The provider's external authorization settings, for the `envoyExtAuthzHttp` and
    /// `envoyExtAuthzGrpc` kinds (checked when the mesh configuration was loaded).
    pub fn ext_authz(&self) -> Option<ExtAuthzProvider> {
        match self.kind.as_str() {
            "envoyExtAuthzHttp" => serde_json::from_value(self.settings.clone())
                .ok()
                .map(ExtAuthzProvider::Http),
            "envoyExtAuthzGrpc" => serde_json::from_value(self.settings.clone())
                .ok()
                .map(ExtAuthzProvider::Grpc),
            _ => None,
        }
    }
}

impl ExtensionProvider {
    /// The provider's Zipkin settings, for the `zipkin` kind (checked when the mesh
    /// configuration was loaded).
    pub fn zipkin(&self) -> Option<ZipkinProvider> {
        (self.kind == "zipkin")
            .then(|| serde_json::from_value(self.settings.clone()).ok())
            .flatten()
    }
}

/// Istio's `ZipkinTracingProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinProvider {
    /// `<namespace>/<hostname>` or a hostname known in one namespace only.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    /// The longest `http.url` tag (0: Envoy's default, 256).
    #[serde(default)]
    pub max_tag_length: u32,
    /// 64-bit trace ids instead of Istio's 128-bit ones.
    #[serde(default, rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: bool,
    /// The collector's path (default `/api/v2/spans`).
    #[serde(default)]
    pub path: String,
    // Not served: W3C propagation beside B3, and the collector request's timeout and
    // headers (Istio 1.29's `collector_service`).
    pub trace_context_option: Option<String>,
    pub timeout: Option<Value>,
    pub headers: Option<Value>,
}

/// A custom tag of ProxyConfig `tracing.customTags` (Istio's `Tracing.CustomTag`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TracingCustomTag {
    Literal {
        #[serde(default)]
        value: String,
    },
    Environment {
        name: String,
        #[serde(default, rename = "defaultValue")]
        default_value: String,
    },
    Header {
        name: String,
        #[serde(default, rename = "defaultValue")]
        default_value: String,
    },
}

/// ProxyConfig `tracing` (Istio's `Tracing`): the sampling and tags of the legacy
/// model, which apply to the tracing providers of the mesh too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyTracing {
    /// Random sampling percentage (0: unset).
    #[serde(default)]
    pub sampling: f64,
    #[serde(default)]
    pub custom_tags: BTreeMap<String, TracingCustomTag>,
    #[serde(default)]
    pub max_path_tag_length: u32,
    pub enable_istio_tags: Option<bool>,
    // The legacy tracers of Envoy's bootstrap: not served.
    zipkin: Option<Value>,
    lightstep: Option<Value>,
    datadog: Option<Value>,
    stackdriver: Option<Value>,
    open_census_agent: Option<Value>,
    tls_settings: Option<Value>,
}

/// A percentage checked to be a number from 0 to 100 (so equality is an equivalence).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percentage(pub f64);

impl Eq for Percentage {}

/// What the mesh says about tracing: the providers and the proxies' settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshTracing {
    /// `enableTracing`.
    pub enabled: bool,
    /// `defaultProviders.tracing`: the extension providers spans go to.
    pub providers: Vec<String>,
    /// `defaultConfig.tracing.sampling` (0: unset).
    pub sampling: Percentage,
    pub custom_tags: BTreeMap<String, TracingCustomTag>,
    pub max_path_tag_length: u32,
    pub enable_istio_tags: Option<bool>,
}

/// `defaultProviders` (Istio's `DefaultProviders`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultProviders {
    #[serde(default)]
    tracing: Vec<String>,
    // Not served yet.
    metrics: Option<Vec<String>>,
    access_logging: Option<Vec<String>>,
}

/// An external authorizer a CUSTOM AuthorizationPolicy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzProvider {
    Http(ExtAuthzHttpProvider),
    Grpc(ExtAuthzGrpcProvider),
}

/// Istio's `EnvoyExternalAuthorizationHttpProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttpProvider {
    /// `<namespace>/<hostname>` or a hostname known in one namespace only.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: String,
    /// Deprecated by Istio for `includeRequestHeadersInCheck`, used when that is empty.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    pub include_request_body_in_check: Option<ExtAuthzRequestBody>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// Istio's `EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpcProvider {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: String,
    pub include_request_body_in_check: Option<ExtAuthzRequestBody>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzRequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// Checks an ext_authz provider's settings as Istio's validation does; `at` is the
/// field path of the settings (`extensionProviders[0].envoyExtAuthzHttp`).
fn check_ext_authz(
    file: &str,
    root: &Node,
    at: &str,
    kind: &str,
    settings: &Value,
    diags: &mut Vec<Diagnostic>,
) {
    let (service, port, status_on_error, path_prefix, header_lists) = match kind {
        "envoyExtAuthzHttp" => {
            match serde_path_to_error::deserialize::<_, ExtAuthzHttpProvider>(settings.clone()) {
                Ok(p) => (
                    p.service,
                    p.port,
                    p.status_on_error,
                    p.path_prefix,
                    vec![
                        ("includeHeadersInCheck", p.include_headers_in_check),
                        (
                            "includeRequestHeadersInCheck",
                            p.include_request_headers_in_check,
                        ),
                        ("headersToUpstreamOnAllow", p.headers_to_upstream_on_allow),
                        ("headersToDownstreamOnDeny", p.headers_to_downstream_on_deny),
                        (
                            "headersToDownstreamOnAllow",
                            p.headers_to_downstream_on_allow,
                        ),
                    ],
                ),
                Err(e) => {
                    diags.push(settings_error(file, root, at, e));
                    return;
                }
            }
        }
        _ => match serde_path_to_error::deserialize::<_, ExtAuthzGrpcProvider>(settings.clone()) {
            Ok(p) => (p.service, p.port, p.status_on_error, String::new(), vec![]),
            Err(e) => {
                diags.push(settings_error(file, root, at, e));
                return;
            }
        },
    };
    if service.is_empty() {
        diags.push(error(file, root, &format!("{at}.service"), "required"));
    }
    if !(1..=65535).contains(&port) {
        diags.push(error(
            file,
            root,
            &format!("{at}.port"),
            format!("port must be in the range [1, 65535], found: {port}"),
        ));
    }
    if !status_on_error.is_empty() && ext_authz_status(&status_on_error).is_none() {
        diags.push(error(
            file,
            root,
            &format!("{at}.statusOnError"),
            format!(
                "unsupported statusOnError {status_on_error:?}: an HTTP status code is expected"
            ),
        ));
    }
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        diags.push(error(
            file,
            root,
            &format!("{at}.pathPrefix"),
            format!("pathPrefix must begin with `/`, found: {path_prefix:?}"),
        ));
    }
    for (field, list) in header_lists {
        if list.iter().any(|h| h == "*") {
            diags.push(error(
                file,
                root,
                &format!("{at}.{field}"),
                "a single wildcard (\"*\") is not supported, change it to either prefix or suffix match",
            ));
        }
    }
}

/// `statusOnError` as an HTTP status code (Envoy's `StatusCode` values).
pub fn ext_authz_status(s: &str) -> Option<u16> {
    let code: u16 = s.parse().ok()?;
    http::StatusCode::from_u16(code)
        .ok()
        .filter(|c| c.canonical_reason().is_some() && code >= 100)
        .map(|c| c.as_u16())
}

fn settings_error(
    file: &str,
    root: &Node,
    at: &str,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> Diagnostic {
    let path = e.path().to_string();
    let field = if path == "." {
        at.to_string()
    } else {
        format!("{at}.{path}")
    };
    error(file, root, &field, e.inner().to_string())
}

/// The provider kinds of Istio's `MeshConfig.ExtensionProvider`.
const PROVIDER_KINDS: &[&str] = &[
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
];

/// `forwardClientCertDetails` of a gateway topology (Istio's `ForwardClientCertDetails`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertDetails {
    /// Not set: Istio's gateway default, `SANITIZE_SET`.
    #[default]
    Undefined,
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// `gatewayTopology.proxyProtocol`: an empty message whose presence turns the PROXY
/// protocol listener filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfiguration {}

/// `defaultConfig.gatewayTopology` (Istio's `Topology`): how a gateway finds the client
/// in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTopology {
    /// Trusted proxies in front of the gateway that append to `x-forwarded-for`
    /// (`xff_num_trusted_hops`).
    #[serde(default)]
    pub num_trusted_proxies: u32,
    /// What the gateway does with `x-forwarded-client-cert`.
    #[serde(default)]
    pub forward_client_cert_details: ForwardClientCertDetails,
    /// Connections start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: Option<ProxyProtocolConfiguration>,
}

/// `defaultConfig` (Istio's `ProxyConfig`), every field known. The fields not acted upon
/// are read only to tell them from unknown ones.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    // Served.
    pub concurrency: Option<u32>,
    pub termination_drain_duration: Option<Duration>,
    pub discovery_address: Option<String>,
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
    pub gateway_topology: Option<GatewayTopology>,
    /// Served in MeshConfig `defaultConfig`; refused in a gateway's own ProxyConfig.
    pub tracing: Option<ProxyTracing>,
    // Not relevant to meshgate (paths and ports of Envoy's own process, sidecar start-up).
    config_path: Option<Value>,
    binary_path: Option<Value>,
    drain_duration: Option<Duration>,
    proxy_admin_port: Option<Value>,
    status_port: Option<Value>,
    custom_config_file: Option<Value>,
    proxy_bootstrap_template_path: Option<Value>,
    interception_mode: Option<Value>,
    hold_application_until_proxy_starts: Option<Value>,
    image: Option<Value>,
    readiness_probe: Option<Value>,
    availability_zone: Option<Value>,
    service_cluster: Option<Value>,
    stat_name_length: Option<Value>,
    file_flush_interval: Option<Value>,
    file_flush_min_size_kb: Option<Value>,
    mesh_id: Option<Value>,
    discovery_refresh_delay: Option<Value>,
    control_plane_auth_policy: Option<Value>,
    // Would change traffic or telemetry; not served yet.
    tracing_service_name: Option<Value>,
    zipkin_address: Option<Value>,
    statsd_udp_address: Option<Value>,
    envoy_metrics_service_address: Option<Value>,
    envoy_access_log_service: Option<Value>,
    envoy_metrics_service: Option<Value>,
    sds: Option<Value>,
    runtime_values: Option<Value>,
    extra_stat_tags: Option<Value>,
    proxy_stats_matcher: Option<Value>,
    ca_certificates_pem: Option<Value>,
    private_key_provider: Option<Value>,
    proxy_headers: Option<Value>,
    stats_compression: Option<Value>,
    connection_settings: Option<Value>,
}

/// Istio's `MeshConfig`, every field known (see [`ProxyConfig`]).
#[allow(dead_code)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMeshConfig {
    // Served.
    trust_domain: Option<String>,
    enable_auto_mtls: Option<bool>,
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    access_log_file: Option<String>,
    access_log_encoding: Option<AccessLogEncoding>,
    connect_timeout: Option<Duration>,
    root_namespace: Option<String>,
    default_config: Option<ProxyConfig>,
    #[serde(default)]
    extension_providers: Vec<serde_json::Map<String, Value>>,
    proxy_listen_port: Option<u32>,
    enable_tracing: Option<bool>,
    default_providers: Option<DefaultProviders>,
    // Not relevant to meshgate: Kubernetes Ingress processing, sidecar capture, istiod's
    // own discovery and certificates, Prometheus scraping of application pods.
    proxy_http_port: Option<Value>,
    ingress_class: Option<Value>,
    ingress_service: Option<Value>,
    ingress_controller_mode: Option<Value>,
    ingress_selector: Option<Value>,
    config_sources: Option<Value>,
    certificates: Option<Value>,
    enable_prometheus_merge: Option<Value>,
    verify_certificate_at_client: Option<Value>,
    discovery_selectors: Option<Value>,
    hbone_idle_timeout: Option<Value>,
    disable_envoy_listener_log: Option<Value>,
    proxy_inbound_listen_port: Option<u32>,
    // Served at Istio's defaults only (a sidecar's inbound side).
    protocol_detection_timeout: Option<Value>,
    inbound_traffic_policy: Option<Value>,
    inbound_cluster_stat_name: Option<Value>,
    // Would change traffic, identity or telemetry; not served yet.
    tcp_keepalive: Option<Value>,
    access_log_format: Option<Value>,
    enable_envoy_access_log_service: Option<Value>,
    trust_domain_aliases: Option<Vec<String>>,
    ca_certificates: Option<Value>,
    default_service_export_to: Option<Value>,
    default_virtual_service_export_to: Option<Value>,
    default_destination_rule_export_to: Option<Value>,
    locality_lb_setting: Option<Value>,
    zone_aware_lb_setting: Option<Value>,
    dns_refresh_rate: Option<Value>,
    h2_upgrade_policy: Option<Value>,
    outbound_cluster_stat_name: Option<Value>,
    service_settings: Option<Value>,
    service_scope_configs: Option<Value>,
    ca: Option<Value>,
    path_normalization: Option<Value>,
    default_http_retry_policy: Option<Value>,
    tls_defaults: Option<Value>,
    default_traffic_policy: Option<Value>,
    service_entry_visibility: Option<Value>,
    mesh_m_t_l_s: Option<Value>,
}

/// The mesh-wide settings meshgate acts on, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Where it was read from (`None`: Istio's defaults).
    pub source: Option<String>,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// Whether endpoints known to be in the mesh get mesh mTLS without a DestinationRule.
    pub enable_auto_mtls: bool,
    /// `outboundTrafficPolicy.mode`. Istio applies it to sidecars; a gateway only ever
    /// forwards to configured destinations.
    pub outbound_traffic_policy: OutboundMode,
    /// `accessLogFile` and `accessLogEncoding`, if `accessLogFile` was set: `None` when
    /// it is empty (Istio: no access log), the encoding when it is `/dev/stdout`.
    pub access_log: Option<Option<AccessLogEncoding>>,
    /// Upstream connect timeout for clusters without a DestinationRule one.
    pub connect_timeout: std::time::Duration,
    /// The root namespace.
    pub root_namespace: String,
    /// `proxyListenPort`: where a sidecar's virtual outbound listener takes the
    /// connections iptables redirects (15001).
    pub proxy_listen_port: u32,
    /// `proxyInboundListenPort`: where a sidecar's virtual inbound listener takes the
    /// connections iptables redirects (15006).
    pub proxy_inbound_listen_port: u32,
    /// `defaultConfig.concurrency`.
    pub concurrency: Option<u32>,
    /// `defaultConfig.terminationDrainDuration`.
    pub termination_drain_duration: Option<std::time::Duration>,
    /// `defaultConfig.discoveryAddress`.
    pub discovery_address: Option<String>,
    /// `defaultConfig.proxyMetadata`.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `defaultConfig.gatewayTopology`, or a gateway's own (`--proxy-config`, the
    /// `PROXY_CONFIG` node metadata).
    pub gateway_topology: Option<GatewayTopology>,
    /// `extensionProviders`, by name, in file order.
    pub extension_providers: Vec<ExtensionProvider>,
    /// `enableTracing`, `defaultProviders.tracing` and `defaultConfig.tracing`.
    pub tracing: MeshTracing,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            source: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            enable_auto_mtls: true,
            outbound_traffic_policy: OutboundMode::AllowAny,
            access_log: None,
            connect_timeout: std::time::Duration::from_secs(10),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            proxy_listen_port: DEFAULT_PROXY_LISTEN_PORT,
            proxy_inbound_listen_port: DEFAULT_PROXY_INBOUND_LISTEN_PORT,
            concurrency: None,
            termination_drain_duration: None,
            discovery_address: None,
            proxy_metadata: BTreeMap::new(),
            gateway_topology: None,
            extension_providers: Vec::new(),
            tracing: MeshTracing::default(),
        }
    }
}

impl MeshConfig {
    /// The provider named `name`.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

/// Reads a settings file and parses it with `parse`; a file that cannot be read is one
/// diagnostic naming `what`.
fn read_settings<T>(
    path: &Path,
    what: &str,
    parse: fn(&str, &str) -> Result<T, Vec<Diagnostic>>,
) -> Result<T, Vec<Diagnostic>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&name, &text),
        Err(e) => Err(vec![Diagnostic::file_error(
            name,
            0,
            0,
            format!("cannot read the {what}: {e}"),
        )]),
    }
}

/// The root of a settings file's one YAML document (`None` when empty); a syntax error or
/// a second document is a diagnostic.
fn one_document(name: &str, text: &str, what: &str) -> Result<Option<Node>, Vec<Diagnostic>> {
    let mut docs = source::parse(text).into_iter();
    match (docs.next(), docs.next()) {
        (Some(Ok(doc)), None) => Ok(doc.root),
        (None, _) => Ok(None),
        (Some(Err(e)), _) => Err(vec![Diagnostic::file_error(
            name,
            e.pos.line,
            e.pos.column,
            e.message,
        )]),
        (Some(Ok(_)), Some(_)) => Err(vec![Diagnostic::file_error(
            name,
            0,
            0,
            format!("a {what} is one YAML document"),
        )]),
    }
}

/// Reads a MeshConfig file. Every problem is a positioned diagnostic; any error refuses
/// the whole file.
pub fn load_mesh_config(path: &Path) -> Result<MeshConfig, Vec<Diagnostic>> {
    read_settings(path, "mesh configuration", parse_mesh_config)
}

/// Parses MeshConfig YAML; `name` stands for the file in diagnostics.
pub fn parse_mesh_config(name: &str, text: &str) -> Result<MeshConfig, Vec<Diagnostic>> {
    let file: Arc<str> = Arc::from(name);
    let root = one_document(name, text, "mesh configuration")?;
    let Some(root) = root else {
        return Ok(MeshConfig {
            source: Some(name.to_string()),
            ..MeshConfig::default()
        });
    };
    let raw: RawMeshConfig = match serde_path_to_error::deserialize(root.to_value()) {
        Ok(raw) => raw,
        Err(e) => return Err(vec![super::load::serde_diagnostic(&file, &root, e)]),
    };
    let mut diags = Vec::new();
    let mesh = settle(name, &root, raw, &mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        Err(diags)
    } else {
        Ok(mesh)
    }
}

fn error(file: &str, root: &Node, field: &str, message: impl Into<String>) -> Diagnostic {
    let pos = root.locate(field);
    Diagnostic {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        severity: Severity::Error,
        resource: Some("MeshConfig".to_string()),
        field: Some(field.to_string()),
        message: message.into(),
    }
}

fn not_served(file: &str, root: &Node, field: &str) -> Diagnostic {
    error(
        file,
        root,
        field,
        "meshgate does not serve this mesh setting yet; the mesh configuration is refused rather than run without it (remove the field)",
    )
}

/// Refuses the `ProxyConfig` fields that would change traffic but are not served;
/// `prefix` is where the ProxyConfig sits in its file (`defaultConfig.`, or nothing).
fn check_proxy_config(
    file: &str,
    root: &Node,
    prefix: &str,
    pc: &ProxyConfig,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(t) = &pc.tracing {
        if prefix.is_empty() {
            // A gateway's own ProxyConfig: its tracing is not laid over the mesh's.
            diags.push(not_served(file, root, "tracing"));
        } else {
            check_proxy_tracing(file, root, &format!("{prefix}tracing"), t, diags);
        }
    }
    let pc_unserved: [(&str, bool); 15] = [
        ("tracingServiceName", pc.tracing_service_name.is_some()),
        ("zipkinAddress", pc.zipkin_address.is_some()),
        ("statsdUdpAddress", pc.statsd_udp_address.is_some()),
        (
            "envoyMetricsServiceAddress",
            pc.envoy_metrics_service_address.is_some(),
        ),
        (
            "envoyAccessLogService",
            pc.envoy_access_log_service.is_some(),
        ),
        ("envoyMetricsService", pc.envoy_metrics_service.is_some()),
        ("sds", pc.sds.is_some()),
        ("runtimeValues", pc.runtime_values.is_some()),
        ("extraStatTags", pc.extra_stat_tags.is_some()),
        ("proxyStatsMatcher", pc.proxy_stats_matcher.is_some()),
        ("caCertificatesPem", pc.ca_certificates_pem.is_some()),
        ("privateKeyProvider", pc.private_key_provider.is_some()),
        ("proxyHeaders", pc.proxy_headers.is_some()),
        ("statsCompression", pc.stats_compression.is_some()),
        ("connectionSettings", pc.connection_settings.is_some()),
    ];
    for (field, set) in pc_unserved {
        if set {
            diags.push(not_served(file, root, &format!("{prefix}{field}")));
        }
    }
}

/// Checks `defaultConfig.tracing`: the legacy bootstrap tracers are not served.
fn check_proxy_tracing(
    file: &str,
    root: &Node,
    at: &str,
    t: &ProxyTracing,
    diags: &mut Vec<Diagnostic>,
) {
    for (field, set) in [
        ("zipkin", t.zipkin.is_some()),
        ("lightstep", t.lightstep.is_some()),
        ("datadog", t.datadog.is_some()),
        ("stackdriver", t.stackdriver.is_some()),
        ("openCensusAgent", t.open_census_agent.is_some()),
        ("tlsSettings", t.tls_settings.is_some()),
    ] {
        if set {
            diags.push(error(
                file,
                root,
                &format!("{at}.{field}"),
                "the bootstrap tracers of the legacy model are not served; name an extensionProviders entry in defaultProviders.tracing instead",
            ));
        }
    }
    if !(0.0..=100.0).contains(&t.sampling) || t.sampling.is_nan() {
        diags.push(error(
            file,
            root,
            &format!("{at}.sampling"),
            "a percentage from 0 to 100 is expected",
        ));
    }
}

/// Checks a `zipkin` provider's settings as Istio's validation does, and refuses what
/// is not served.
fn check_zipkin(file: &str, root: &Node, at: &str, settings: &Value, diags: &mut Vec<Diagnostic>) {
    let p = match serde_path_to_error::deserialize::<_, ZipkinProvider>(settings.clone()) {
        Ok(p) => p,
        Err(e) => {
            diags.push(settings_error(file, root, at, e));
            return;
        }
    };
    if p.service.is_empty() {
        diags.push(error(file, root, &format!("{at}.service"), "required"));
    }
    if !(1..=65535).contains(&p.port) {
        diags.push(error(
            file,
            root,
            &format!("{at}.port"),
            format!("port must be in the range [1, 65535], found: {}", p.port),
        ));
    }
    if !p.path.is_empty() && !p.path.starts_with('/') {
        diags.push(error(
            file,
            root,
            &format!("{at}.path"),
            format!("path must begin with `/`, found: {:?}", p.path),
        ));
    }
    if p.trace_context_option
        .as_deref()
        .is_some_and(|o| o != "USE_B3" && o != "UNSPECIFIED")
    {
        diags.push(error(
            file,
            root,
            &format!("{at}.traceContextOption"),
            "only USE_B3 propagation is served",
        ));
    }
    for (field, set) in [
        ("timeout", p.timeout.is_some()),
        ("headers", p.headers.is_some()),
    ] {
        if set {
            diags.push(not_served(file, root, &format!("{at}.{field}")));
        }
    }
}

/// A gateway's own `ProxyConfig` (the `proxy.istio.io/config` annotation of an Istio
/// gateway pod; meshgate's `--proxy-config FILE` and the `PROXY_CONFIG` node metadata):
/// the fields it sets, to lay over MeshConfig `defaultConfig` with
/// [`MeshConfig::with_proxy_config`].
#[derive(Debug, Clone, Default)]
pub struct ProxyConfigOverlay {
    pub concurrency: Option<u32>,
    pub termination_drain_duration: Option<std::time::Duration>,
    pub discovery_address: Option<String>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub gateway_topology: Option<GatewayTopology>,
    /// The document as written, for the `PROXY_CONFIG` node metadata.
    pub document: Value,
}

impl GatewayTopology {
    /// The `gatewayTopology` of a node's `PROXY_CONFIG` metadata (a ProxyConfig as
    /// JSON, an object or a string): what the control plane translates that gateway
    /// with. The rest of the ProxyConfig is the proxy's own business.
    pub fn from_proxy_config_json(v: &Value) -> Result<Option<GatewayTopology>, String> {
        let parsed;
        let v = match v {
            Value::String(s) => {
                parsed = serde_json::from_str::<Value>(s).map_err(|e| e.to_string())?;
                &parsed
            }
            v => v,
        };
        match v.get("gatewayTopology") {
            None | Some(Value::Null) => Ok(None),
            Some(t) => serde_path_to_error::deserialize(t.clone())
                .map(Some)
                .map_err(|e| format!("gatewayTopology.{e}")),
        }
    }
}

/// Reads a ProxyConfig file (YAML or JSON): every field of Istio's `ProxyConfig` known,
/// those that would change traffic and are not served refused by name.
pub fn load_proxy_config(path: &Path) -> Result<ProxyConfigOverlay, Vec<Diagnostic>> {
    read_settings(path, "proxy configuration", parse_proxy_config)
}

/// Parses ProxyConfig YAML or JSON; `name` stands for the file in diagnostics.
pub fn parse_proxy_config(name: &str, text: &str) -> Result<ProxyConfigOverlay, Vec<Diagnostic>> {
    let file: Arc<str> = Arc::from(name);
    let root = one_document(name, text, "proxy configuration")?;
    let Some(root) = root else {
        return Ok(ProxyConfigOverlay::default());
    };
    let pc: ProxyConfig = match serde_path_to_error::deserialize(root.to_value()) {
        Ok(pc) => pc,
        Err(e) => return Err(vec![super::load::serde_diagnostic(&file, &root, e)]),
    };
    let mut diags = Vec::new();
    check_proxy_config(name, &root, "", &pc, &mut diags);
    for d in &mut diags {
        d.resource = Some("ProxyConfig".to_string());
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(ProxyConfigOverlay {
        concurrency: pc.concurrency,
        termination_drain_duration: pc.termination_drain_duration.map(|t| t.0),
        discovery_address: pc.discovery_address,
        proxy_metadata: pc.proxy_metadata,
        gateway_topology: pc.gateway_topology,
        document: root.to_value(),
    })
}

impl MeshConfig {
    /// These settings with a gateway's own ProxyConfig laid over `defaultConfig` as
    /// Istio merges the `proxy.istio.io/config` annotation: each field the overlay sets
    /// replaces the mesh's whole value (`gatewayTopology` included: a topology naming
    /// only `numTrustedProxies` does not keep the mesh's `proxyProtocol`), and
    /// `proxyMetadata` entries are merged key by key.
    pub fn with_proxy_config(&self, overlay: &ProxyConfigOverlay) -> MeshConfig {
        let mut mesh = self.clone();
        if let Some(c) = overlay.concurrency {
            mesh.concurrency = (c != 0).then_some(c);
        }
        if overlay.termination_drain_duration.is_some() {
            mesh.termination_drain_duration = overlay.termination_drain_duration;
        }
        if overlay.discovery_address.is_some() {
            mesh.discovery_address = overlay.discovery_address.clone();
        }
        for (k, v) in &overlay.proxy_metadata {
            mesh.proxy_metadata.insert(k.clone(), v.clone());
        }
        if overlay.gateway_topology.is_some() {
            mesh.gateway_topology = overlay.gateway_topology;
        }
        mesh
    }
}

fn settle(file: &str, root: &Node, raw: RawMeshConfig, diags: &mut Vec<Diagnostic>) -> MeshConfig {
    let d = MeshConfig::default();
    // The inbound side of sidecars is built with these at Istio's defaults.
    let inbound_default =
        |v: &Option<Value>, defaults: &[Value]| v.as_ref().is_some_and(|v| !defaults.contains(v));
    let unserved: [(&str, bool); 27] = [
        (
            "protocolDetectionTimeout",
            inbound_default(
                &raw.protocol_detection_timeout,
                &[Value::from("0s"), Value::from("0")],
            ),
        ),
        (
            "inboundTrafficPolicy",
            inbound_default(
                &raw.inbound_traffic_policy,
                &[
                    serde_json::json!({}),
                    serde_json::json!({"mode": "PASSTHROUGH"}),
                ],
            ),
        ),
        (
            "inboundClusterStatName",
            inbound_default(&raw.inbound_cluster_stat_name, &[Value::from("")]),
        ),
        ("tcpKeepalive", raw.tcp_keepalive.is_some()),
        ("accessLogFormat", raw.access_log_format.is_some()),
        (
            "enableEnvoyAccessLogService",
            raw.enable_envoy_access_log_service
                .as_ref()
                .is_some_and(|v| v != &Value::Bool(false)),
        ),
        (
            "trustDomainAliases",
            raw.trust_domain_aliases
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        ("caCertificates", raw.ca_certificates.is_some()),
        (
            "defaultServiceExportTo",
            raw.default_service_export_to.is_some(),
        ),
        (
            "defaultVirtualServiceExportTo",
            raw.default_virtual_service_export_to.is_some(),
        ),
        (
            "defaultDestinationRuleExportTo",
            raw.default_destination_rule_export_to.is_some(),
        ),
        ("localityLbSetting", raw.locality_lb_setting.is_some()),
        ("zoneAwareLbSetting", raw.zone_aware_lb_setting.is_some()),
        ("dnsRefreshRate", raw.dns_refresh_rate.is_some()),
        ("h2UpgradePolicy", raw.h2_upgrade_policy.is_some()),
        (
            "outboundClusterStatName",
            raw.outbound_cluster_stat_name.is_some(),
        ),
        ("serviceSettings", raw.service_settings.is_some()),
        ("serviceScopeConfigs", raw.service_scope_configs.is_some()),
        ("ca", raw.ca.is_some()),
        ("pathNormalization", raw.path_normalization.is_some()),
        (
            "defaultHttpRetryPolicy",
            raw.default_http_retry_policy.is_some(),
        ),
        ("tlsDefaults", raw.tls_defaults.is_some()),
        ("defaultTrafficPolicy", raw.default_traffic_policy.is_some()),
        (
            "serviceEntryVisibility",
            raw.service_entry_visibility.is_some(),
        ),
        ("meshMTLS", raw.mesh_m_t_l_s.is_some()),
        (
            "rootNamespace",
            raw.root_namespace
                .as_deref()
                .is_some_and(|ns| ns != DEFAULT_ROOT_NAMESPACE),
        ),
        (
            "accessLogFile",
            raw.access_log_file
                .as_deref()
                .is_some_and(|f| !f.is_empty() && f != "/dev/stdout"),
        ),
    ];
    for (field, set) in unserved {
        if set {
            diags.push(not_served(file, root, field));
        }
    }
    let mut pc = raw.default_config.unwrap_or_default();
    check_proxy_config(file, root, "defaultConfig.", &pc, diags);
    if pc.concurrency == Some(0) {
        // Istio: 0 means one worker per core, as meshgate's own default.
        pc.concurrency = None;
    }
    let trust_domain = match raw.trust_domain {
        Some(td) if td.is_empty() => d.trust_domain.clone(),
        Some(td) => {
            if let Err(e) = crate::ca::SpiffeId::new(&td, "ns", "sa") {
                diags.push(error(
                    file,
                    root,
                    "trustDomain",
                    format!("not a valid trust domain: {e}"),
                ));
            }
            td
        }
        None => d.trust_domain.clone(),
    };
    for (field, port) in [
        ("proxyListenPort", raw.proxy_listen_port),
        ("proxyInboundListenPort", raw.proxy_inbound_listen_port),
    ] {
        if let Some(port) = port
            && !(1..=65535).contains(&port)
        {
            diags.push(error(
                file,
                root,
                field,
                "must be a port number, 1 to 65535",
            ));
        }
    }
    if let Some(t) = raw.connect_timeout
        && t.0 < std::time::Duration::from_millis(1)
    {
        diags.push(error(file, root, "connectTimeout", "must be at least 1ms"));
    }
    let mut providers: Vec<ExtensionProvider> = Vec::new();
    for (i, entry) in raw.extension_providers.into_iter().enumerate() {
        let at = format!("extensionProviders[{i}]");
        let name = entry.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            diags.push(error(
                file,
                root,
                &format!("{at}.name"),
                "a provider needs a name",
            ));
        } else if providers.iter().any(|p| p.name == name) {
            diags.push(error(
                file,
                root,
                &format!("{at}.name"),
                format!("provider `{name}` is defined twice"),
            ));
        }
        let kinds: Vec<(&String, &Value)> = entry.iter().filter(|(k, _)| *k != "name").collect();
        for (k, _) in &kinds {
            if !PROVIDER_KINDS.contains(&k.as_str()) {
                let hint = super::types::common::nearest(k, PROVIDER_KINDS)
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                diags.push(error(
                    file,
                    root,
                    &format!("{at}.{k}"),
                    format!("unknown provider kind `{k}`{hint}"),
                ));
            }
        }
        match kinds.as_slice() {
            [(kind, settings)] => {
                if matches!(kind.as_str(), "envoyExtAuthzHttp" | "envoyExtAuthzGrpc") {
                    check_ext_authz(file, root, &format!("{at}.{kind}"), kind, settings, diags);
                }
                if kind.as_str() == "zipkin" {
                    check_zipkin(file, root, &format!("{at}.zipkin"), settings, diags);
                }
                providers.push(ExtensionProvider {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    settings: (*settings).clone(),
                })
            }
            [] => diags.push(error(
                file,
                root,
                &at,
                "a provider sets exactly one kind (envoyExtAuthzHttp, zipkin, prometheus, ...)",
            )),
            _ => diags.push(error(
                file,
                root,
                &at,
                "a provider sets exactly one kind, not several",
            )),
        }
    }
    let defaults = raw.default_providers.unwrap_or_default();
    for (field, set) in [
        ("defaultProviders.metrics", defaults.metrics.is_some()),
        (
            "defaultProviders.accessLogging",
            defaults.access_logging.is_some(),
        ),
    ] {
        if set {
            diags.push(not_served(file, root, field));
        }
    }
    for (i, name) in defaults.tracing.iter().enumerate() {
        let field = format!("defaultProviders.tracing[{i}]");
        match providers.iter().find(|p| &p.name == name) {
            None => diags.push(error(
                file,
                root,
                &field,
                format!("provider {name:?} is not defined in extensionProviders"),
            )),
            Some(p) if p.kind != "zipkin" => diags.push(error(
                file,
                root,
                &field,
                format!(
                    "provider {name:?} is a `{}` provider; meshgate serves tracing to `zipkin` providers",
                    p.kind
                ),
            )),
            Some(_) => {}
        }
    }
    let pc_tracing = pc.tracing.clone().unwrap_or_default();
    if raw.enable_tracing == Some(true) && defaults.tracing.is_empty() {
        diags.push(error(
            file,
            root,
            "enableTracing",
            "tracing through the legacy bootstrap tracer is not served; name a zipkin provider of extensionProviders in defaultProviders.tracing",
        ));
    }
    MeshConfig {
        tracing: MeshTracing {
            enabled: raw.enable_tracing.unwrap_or(false),
            providers: defaults.tracing,
            sampling: Percentage(if pc_tracing.sampling.is_nan() {
                0.0
            } else {
                pc_tracing.sampling
            }),
            custom_tags: pc_tracing.custom_tags,
            max_path_tag_length: pc_tracing.max_path_tag_length,
            enable_istio_tags: pc_tracing.enable_istio_tags,
        },
        source: Some(file.to_string()),
        trust_domain,
        enable_auto_mtls: raw.enable_auto_mtls.unwrap_or(true),
        outbound_traffic_policy: raw.outbound_traffic_policy.unwrap_or_default().mode,
        access_log: raw
            .access_log_file
            .map(|f| (!f.is_empty()).then(|| raw.access_log_encoding.unwrap_or_default())),
        connect_timeout: raw.connect_timeout.map_or(d.connect_timeout, |t| t.0),
        root_namespace: raw
            .root_namespace
            .filter(|ns| !ns.is_empty())
            .unwrap_or(d.root_namespace),
        proxy_listen_port: raw
            .proxy_listen_port
            .filter(|p| *p != 0)
            .unwrap_or(d.proxy_listen_port),
        proxy_inbound_listen_port: raw
            .proxy_inbound_listen_port
            .filter(|p| *p != 0)
            .unwrap_or(d.proxy_inbound_listen_port),
        concurrency: pc.concurrency,
        termination_drain_duration: pc.termination_drain_duration.map(|t| t.0),
        discovery_address: pc.discovery_address,
        proxy_metadata: pc.proxy_metadata,
        gateway_topology: pc.gateway_topology,
        extension_providers: providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse_mesh_config("mesh.yaml", text)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn tracing_settings_are_read_and_what_is_not_served_is_refused() {
        let m = parse_mesh_config(
            "mesh.yaml",
            "enableTracing: true\nextensionProviders:\n- name: z\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 99, enable64bitTraceId: true, path: /spans}\ndefaultProviders: {tracing: [z]}\ndefaultConfig:\n  tracing: {sampling: 12.5, maxPathTagLength: 64, customTags: {a: {literal: {value: b}}, e: {environment: {name: HOME}}}}\n",
        )
        .unwrap();
        assert!(m.tracing.enabled);
        assert_eq!(m.tracing.providers, ["z"]);
        assert_eq!(m.tracing.sampling, Percentage(12.5));
        assert_eq!(m.tracing.max_path_tag_length, 64);
        assert_eq!(m.tracing.custom_tags.len(), 2);
        let z = m.extension_provider("z").unwrap().zipkin().unwrap();
        assert_eq!(
            (z.port, z.max_tag_length, z.enable_64bit_trace_id),
            (9411, 99, true)
        );
        assert_eq!(z.path, "/spans");

        let e = errors(
            "enableTracing: true\nextensionProviders:\n- name: o\n  opentelemetry: {service: otel, port: 4317}\n- name: z\n  zipkin: {service: '', port: 0, path: spans, traceContextOption: USE_B3_WITH_W3C_PROPAGATION, timeout: 1s}\ndefaultProviders: {tracing: [o], metrics: [prometheus]}\ndefaultConfig:\n  tracing: {sampling: 101, zipkin: {address: zipkin:9411}}\n",
        );
        let has = |field: &str, text: &str| {
            assert!(
                e.iter().any(|d| d.contains(field) && d.contains(text)),
                "no error on {field} ({text}): {e:#?}"
            )
        };
        has("defaultProviders.tracing[0]", "opentelemetry");
        has("defaultProviders.metrics", "does not serve");
        has("extensionProviders[1].zipkin.service", "required");
        has("extensionProviders[1].zipkin.port", "[1, 65535]");
        has("extensionProviders[1].zipkin.path", "begin with");
        has("extensionProviders[1].zipkin.traceContextOption", "USE_B3");
        has("extensionProviders[1].zipkin.timeout", "does not serve");
        has("defaultConfig.tracing.sampling", "0 to 100");
        has("defaultConfig.tracing.zipkin", "legacy");
        // enableTracing alone would rely on the bootstrap tracer.
        let e = errors("enableTracing: true\n");
        assert!(
            e[0].contains("enableTracing") && e[0].contains("defaultProviders.tracing"),
            "{e:?}"
        );
        // A gateway's own ProxyConfig does not lay its tracing over the mesh's.
        let e: Vec<String> = parse_proxy_config("pc.yaml", "tracing: {sampling: 1}\n")
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert!(e[0].contains("tracing"), "{e:?}");
    }

    #[test]
    fn an_empty_file_is_istio_defaults() {
        let m = parse_mesh_config("mesh.yaml", "").unwrap();
        assert_eq!(m.trust_domain, "cluster.local");
        assert!(m.enable_auto_mtls);
        assert_eq!(m.connect_timeout, std::time::Duration::from_secs(10));
        assert_eq!(m.access_log, None);
    }

    #[test]
    fn served_fields_are_read() {
        let m = parse_mesh_config(
            "mesh.yaml",
            "trustDomain: example.org\nenableAutoMtls: false\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\naccessLogFile: /dev/stdout\naccessLogEncoding: JSON\nconnectTimeout: 2s\nrootNamespace: istio-system\ningressClass: istio\nenablePrometheusMerge: true\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  concurrency: 2\n  terminationDrainDuration: 7s\n  proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}\n  holdApplicationUntilProxyStarts: true\nextensionProviders:\n- name: authz\n  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}\n- name: prom\n  prometheus: {}\n",
        )
        .unwrap();
        assert_eq!(m.trust_domain, "example.org");
        assert!(!m.enable_auto_mtls);
        assert_eq!(m.outbound_traffic_policy, OutboundMode::RegistryOnly);
        assert_eq!(m.access_log, Some(Some(AccessLogEncoding::Json)));
        assert_eq!(m.connect_timeout, std::time::Duration::from_secs(2));
        assert_eq!(m.concurrency, Some(2));
        assert_eq!(
            m.termination_drain_duration,
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            m.discovery_address.as_deref(),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(
            m.extension_provider("authz").unwrap().kind,
            "envoyExtAuthzHttp"
        );
        assert_eq!(m.extension_providers.len(), 2);
        let off = parse_mesh_config("mesh.yaml", "accessLogFile: \"\"\n").unwrap();
        assert_eq!(off.access_log, Some(None));
        assert_eq!(m.proxy_listen_port, 15001);
        let port = parse_mesh_config("mesh.yaml", "proxyListenPort: 15101\n").unwrap();
        assert_eq!(port.proxy_listen_port, 15101);
        assert_eq!(m.proxy_inbound_listen_port, 15006);
        let port = parse_mesh_config("mesh.yaml", "proxyInboundListenPort: 15106\n").unwrap();
        assert_eq!(port.proxy_inbound_listen_port, 15106);
    }

    #[test]
    fn unknown_fields_are_positioned_errors_with_hints() {
        assert_eq!(
            errors("trustDomain: a.b\ntrustDomian: x\n"),
            [
                "mesh.yaml:2:1: error: trustDomian: unknown field `trustDomian`; did you mean `trustDomain`?"
            ]
        );
        let e = errors("defaultConfig:\n  concurency: 2\n");
        assert!(
            e[0].contains("mesh.yaml:2:3") && e[0].contains("did you mean `concurrency`"),
            "{e:?}"
        );
    }

    #[test]
    fn settings_not_served_are_refused_by_name() {
        let e = errors(
            "enableTracing: true\ntrustDomainAliases: [old.example]\ndefaultConfig:\n  proxyStatsMatcher: {inclusionPrefixes: [a]}\naccessLogFile: /var/log/a.log\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e.iter().any(|l| l
                .starts_with("mesh.yaml:1:1: error: MeshConfig: enableTracing: tracing through the legacy bootstrap tracer is not served")),
            "{e:?}"
        );
        assert!(e.iter().any(|l| l.contains("trustDomainAliases")));
        assert!(
            e.iter()
                .any(|l| l.contains("mesh.yaml:4:3")
                    && l.contains("defaultConfig.proxyStatsMatcher")),
            "{e:?}"
        );
        assert!(e.iter().any(|l| l.contains("accessLogFile")));
        // Settings that are off, or say what is already so, are accepted.
        parse_mesh_config(
            "mesh.yaml",
            "enableTracing: false\ntrustDomainAliases: []\nrootNamespace: istio-system\n",
        )
        .unwrap();
        // What a sidecar's inbound side is built with: refused unless at its default.
        let e = errors(
            "protocolDetectionTimeout: 5s\ninboundTrafficPolicy: {mode: LOCALHOST}\ninboundClusterStatName: '%SERVICE%'\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        for field in [
            "protocolDetectionTimeout",
            "inboundTrafficPolicy",
            "inboundClusterStatName",
        ] {
            assert!(
                e.iter()
                    .any(|l| l.contains(&format!("{field}: meshgate does not serve"))),
                "{field}: {e:?}"
            );
        }
        parse_mesh_config(
            "mesh.yaml",
            "proxyInboundListenPort: 15006\nprotocolDetectionTimeout: 0s\ninboundTrafficPolicy: {mode: PASSTHROUGH}\n",
        )
        .unwrap();
    }

    #[test]
    fn providers_need_a_unique_name_and_one_kind() {
        let e = errors(
            "extensionProviders:\n- name: a\n  zipkin: {service: z, port: 9411}\n- name: a\n  prometheus: {}\n- name: b\n- name: c\n  zipkn: {}\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("extensionProviders[1].name") && e[0].contains("defined twice"));
        assert!(e[1].contains("extensionProviders[2]") && e[1].contains("exactly one kind"));
        assert!(e[2].contains("did you mean `zipkin`"), "{e:?}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = errors("trustDomain: \"bad domain/\"\n");
        assert!(
            e[0].contains("trustDomain: not a valid trust domain"),
            "{e:?}"
        );
        let e = errors("outboundTrafficPolicy: {mode: DENY}\n");
        assert!(e[0].contains("outboundTrafficPolicy.mode"), "{e:?}");
        let e = errors("proxyListenPort: 70000\n");
        assert!(
            e[0].contains("proxyListenPort: must be a port number"),
            "{e:?}"
        );
        let e = errors("a: 1\n---\nb: 2\n");
        assert!(e[0].contains("one YAML document"), "{e:?}");
    }

    #[test]
    fn ext_authz_providers_are_checked_as_istio_checks_them() {
        let m = parse_mesh_config(
            "mesh.yaml",
            "extensionProviders:\n- name: h\n  envoyExtAuthzHttp: {service: a/b.example.com, port: 80, timeout: 1s, statusOnError: \"503\", pathPrefix: /c, headersToUpstreamOnAllow: [x-a]}\n- name: g\n  envoyExtAuthzGrpc: {service: g.example.com, port: 9000, failOpen: true}\n",
        )
        .unwrap();
        let Some(ExtAuthzProvider::Http(h)) = m.extension_provider("h").unwrap().ext_authz() else {
            panic!("http provider")
        };
        assert_eq!((h.port, h.path_prefix.as_str()), (80, "/c"));
        assert_eq!(
            h.timeout.map(|t| t.0),
            Some(std::time::Duration::from_secs(1))
        );
        let Some(ExtAuthzProvider::Grpc(g)) = m.extension_provider("g").unwrap().ext_authz() else {
            panic!("grpc provider")
        };
        assert!(g.fail_open);
        let e = errors(
            "extensionProviders:\n- name: h\n  envoyExtAuthzHttp: {service: \"\", port: 0, statusOnError: nope, pathPrefix: check, headersToDownstreamOnDeny: [\"*\"]}\n- name: g\n  envoyExtAuthzGrpc: {service: g, port: 1, pathPrefix: /x}\n- name: t\n  envoyExtAuthzGrpc: {service: g, port: 1, timeout: soon}\n",
        );
        let has = |field: &str, text: &str| {
            assert!(
                e.iter().any(|d| d.contains(field) && d.contains(text)),
                "{field} / {text}: {e:#?}"
            )
        };
        has(
            "extensionProviders[0].envoyExtAuthzHttp.service",
            "required",
        );
        has("extensionProviders[0].envoyExtAuthzHttp.port", "[1, 65535]");
        has(
            "extensionProviders[0].envoyExtAuthzHttp.statusOnError",
            "nope",
        );
        has(
            "extensionProviders[0].envoyExtAuthzHttp.pathPrefix",
            "begin with",
        );
        has(
            "extensionProviders[0].envoyExtAuthzHttp.headersToDownstreamOnDeny",
            "wildcard",
        );
        has("extensionProviders[1].envoyExtAuthzGrpc", "pathPrefix");
        has("extensionProviders[2].envoyExtAuthzGrpc.timeout", "");
    }

    #[test]
    fn gateway_topology_is_read_and_a_gateway_proxy_config_replaces_it() {
        let mesh = parse_mesh_config(
            "mesh.yaml",
            "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 2\n    forwardClientCertDetails: APPEND_FORWARD\n    proxyProtocol: {}\n  proxyMetadata: {A: a, B: b}\n",
        )
        .unwrap();
        let topo = mesh.gateway_topology.unwrap();
        assert_eq!(topo.num_trusted_proxies, 2);
        assert_eq!(
            topo.forward_client_cert_details,
            ForwardClientCertDetails::AppendForward
        );
        assert!(topo.proxy_protocol.is_some());

        // Istio's annotation merge: the gateway's topology replaces the mesh's whole.
        let overlay = parse_proxy_config(
            "pc.yaml",
            "gatewayTopology: {numTrustedProxies: 1}\nproxyMetadata: {B: c}\nconcurrency: 2\n",
        )
        .unwrap();
        let merged = mesh.with_proxy_config(&overlay);
        let topo = merged.gateway_topology.unwrap();
        assert_eq!(topo.num_trusted_proxies, 1);
        assert_eq!(
            topo.forward_client_cert_details,
            ForwardClientCertDetails::Undefined
        );
        assert!(topo.proxy_protocol.is_none());
        assert_eq!(merged.concurrency, Some(2));
        assert_eq!(merged.proxy_metadata["A"], "a");
        assert_eq!(merged.proxy_metadata["B"], "c");
        // An overlay without a topology keeps the mesh's.
        let merged = mesh.with_proxy_config(&parse_proxy_config("pc.yaml", "{}").unwrap());
        assert_eq!(merged.gateway_topology, mesh.gateway_topology);
    }

    #[test]
    fn a_proxy_config_file_is_checked_as_defaultconfig() {
        let e: Vec<String> =
            parse_proxy_config("pc.yaml", "gatewayTopology:\n  numTrustedProxys: 1\n")
                .unwrap_err()
                .iter()
                .map(|d| d.to_string())
                .collect();
        assert!(
            e[0].contains("pc.yaml:2:3") && e[0].contains("numTrustedProxies"),
            "{e:?}"
        );
        let e: Vec<String> = parse_proxy_config("pc.yaml", "tracing: {sampling: 1}\n")
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert!(
            e[0].contains("pc.yaml:1:1")
                && e[0].contains("tracing")
                && e[0].contains("does not serve"),
            "{e:?}"
        );
        let e = parse_proxy_config(
            "pc.yaml",
            "gatewayTopology: {forwardClientCertDetails: SOMETIMES}\n",
        )
        .unwrap_err();
        assert!(
            e[0].to_string().contains("forwardClientCertDetails"),
            "{e:?}"
        );
    }
}
