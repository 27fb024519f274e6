//! `DestinationRule` (networking.istio.io): policies applied to traffic for a service
//! after routing: load balancing, connection pools, outlier detection, TLS, subsets.
use super::common::{PortSelector, check_oneof, istio_enum};
use crate::config::duration::Duration;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The spec of a `DestinationRule`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// The service host (short names resolve in the namespace).
    #[serde(default)]
    pub host: String,
    /// Policies for all of the service's traffic.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets of the service's endpoints, by labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces this rule is visible in.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Workloads (sidecars, gateways) this rule applies to.
    pub workload_selector: Option<MatchLabelsSelector>,
}

/// Kubernetes-style label selector (`matchLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Traffic policies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel the connection through a proxy (HTTP CONNECT).
    pub tunnel: Option<TunnelSettings>,
    /// Send a PROXY protocol header upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Limit on concurrent retries as a share of active requests.
    pub retry_budget: Option<RetryBudget>,
}

/// Policies for one port of the service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port these policies apply to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    pub tls: Option<ClientTlsSettings>,
}

/// Tunnel settings (HTTP CONNECT).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default)]
    pub protocol: String,
    /// Host the tunnel goes to.
    #[serde(default)]
    pub target_host: String,
    /// Port the tunnel goes to.
    #[serde(default)]
    pub target_port: u32,
}

istio_enum! {
    /// PROXY protocol version.
    ProxyProtocolVersion {
        /// Human-readable version 1.
        V1 = 0 => "V1",
        /// Binary version 2.
        V2 = 1 => "V2",
    }
}

/// PROXY protocol settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// The version (default V1).
    pub version: Option<ProxyProtocolVersion>,
}

/// Retry budget.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percentage of active requests that may be retries.
    pub percent: Option<f64>,
    /// Retries always allowed regardless of the percentage.
    #[serde(default)]
    pub min_retry_concurrency: u32,
    /// Interval over which the budget is computed.
    pub budget_interval: Option<Duration>,
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name, referenced by VirtualService destinations.
    #[serde(default)]
    pub name: String,
    /// Endpoint labels that select the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policies overriding the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

istio_enum! {
    /// Simple load balancing algorithms.
    SimpleLb {
        /// Istio picks (LEAST_REQUEST).
        Unspecified = 0 => "UNSPECIFIED",
        /// Deprecated alias of LEAST_REQUEST.
        LeastConn = 1 => "LEAST_CONN",
        /// Random endpoint.
        Random = 2 => "RANDOM",
        /// Forward to the original destination address.
        Passthrough = 3 => "PASSTHROUGH",
        /// Round robin.
        RoundRobin = 4 => "ROUND_ROBIN",
        /// Power of two choices on active requests.
        LeastRequest = 5 => "LEAST_REQUEST",
    }
}

/// The `lb_policy` oneof.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    /// `simple`.
    Simple(SimpleLb),
    /// `consistentHash`.
    ConsistentHash(ConsistentHashLb),
}

/// Load balancing settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// The algorithm (`simple` or `consistentHash`).
    pub lb_policy: Option<LbPolicy>,
    /// Locality-aware load balancing.
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Zone-aware load balancing.
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated slow-start window; use `warmup`.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start for new endpoints.
    pub warmup: Option<WarmupConfiguration>,
}

impl<'de> Deserialize<'de> for LoadBalancerSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            simple: Option<SimpleLb>,
            consistent_hash: Option<ConsistentHashLb>,
            locality_lb_setting: Option<LocalityLoadBalancerSetting>,
            zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
            warmup_duration_secs: Option<Duration>,
            warmup: Option<WarmupConfiguration>,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("simple", f.simple.is_some()),
            ("consistentHash", f.consistent_hash.is_some()),
        ])?;
        Ok(LoadBalancerSettings {
            lb_policy: f
                .simple
                .map(LbPolicy::Simple)
                .or(f.consistent_hash.map(LbPolicy::ConsistentHash)),
            locality_lb_setting: f.locality_lb_setting,
            zone_aware_lb_setting: f.zone_aware_lb_setting,
            warmup_duration_secs: f.warmup_duration_secs,
            warmup: f.warmup,
        })
    }
}

/// The `hash_key` oneof: what the hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// `httpHeaderName`: a request header.
    HttpHeaderName(String),
    /// `httpCookie`: a cookie (generated if absent).
    HttpCookie(HttpCookie),
    /// `useSourceIp`: the client's address.
    UseSourceIp(bool),
    /// `httpQueryParameterName`: a query parameter.
    HttpQueryParameterName(String),
}

/// The `hash_algorithm` oneof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashAlgorithm {
    /// `ringHash`: Ketama ring.
    RingHash(RingHash),
    /// `maglev`: Maglev table.
    Maglev(MagLev),
}

/// Ring hash parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum number of virtual nodes (default 1024).
    #[serde(default)]
    pub minimum_ring_size: u64,
}

/// Maglev parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Table size, a prime (default 65537).
    #[serde(default)]
    pub table_size: u64,
}

/// A cookie used as hash key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    #[serde(default)]
    pub name: String,
    /// Cookie path.
    #[serde(default)]
    pub path: String,
    /// Lifetime of a generated cookie.
    pub ttl: Option<Duration>,
    /// Extra cookie attributes.
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// One cookie attribute.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    #[serde(default)]
    pub name: String,
    /// Attribute value.
    #[serde(default)]
    pub value: String,
}

/// Consistent-hash load balancing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// What is hashed.
    pub hash_key: Option<HashKey>,
    /// How it is hashed.
    pub hash_algorithm: Option<HashAlgorithm>,
    /// Deprecated; use `ringHash.minimumRingSize`.
    pub minimum_ring_size: u64,
}

impl<'de> Deserialize<'de> for ConsistentHashLb {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            http_header_name: Option<String>,
            http_cookie: Option<HttpCookie>,
            use_source_ip: Option<bool>,
            http_query_parameter_name: Option<String>,
            ring_hash: Option<RingHash>,
            maglev: Option<MagLev>,
            #[serde(default)]
            minimum_ring_size: u64,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("httpHeaderName", f.http_header_name.is_some()),
            ("httpCookie", f.http_cookie.is_some()),
            ("useSourceIp", f.use_source_ip.is_some()),
            (
                "httpQueryParameterName",
                f.http_query_parameter_name.is_some(),
            ),
        ])?;
        check_oneof::<D::Error>(&[
            ("ringHash", f.ring_hash.is_some()),
            ("maglev", f.maglev.is_some()),
        ])?;
        let hash_key = if let Some(h) = f.http_header_name {
            Some(HashKey::HttpHeaderName(h))
        } else if let Some(c) = f.http_cookie {
            Some(HashKey::HttpCookie(c))
        } else if let Some(s) = f.use_source_ip {
            Some(HashKey::UseSourceIp(s))
        } else {
            f.http_query_parameter_name
                .map(HashKey::HttpQueryParameterName)
        };
        Ok(ConsistentHashLb {
            hash_key,
            hash_algorithm: f
                .ring_hash
                .map(HashAlgorithm::RingHash)
                .or(f.maglev.map(HashAlgorithm::Maglev)),
            minimum_ring_size: f.minimum_ring_size,
        })
    }
}

/// Slow start for new endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Length of the warm-up window.
    pub duration: Option<Duration>,
    /// Starting share of traffic, in percent.
    pub minimum_percent: Option<f64>,
    /// How fast traffic ramps up.
    pub aggression: Option<f64>,
}

/// Connection pool limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP-level limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP-level limits.
    pub http: Option<HttpSettings>,
}

/// TCP connection pool limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections to the service.
    #[serde(default)]
    pub max_connections: i32,
    /// TCP connect timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keep-alive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of a TCP connection.
    pub idle_timeout: Option<Duration>,
}

/// TCP keep-alive settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    #[serde(default)]
    pub probes: u32,
    /// Idle time before probes start.
    pub time: Option<Duration>,
    /// Interval between probes.
    pub interval: Option<Duration>,
}

istio_enum! {
    /// Whether HTTP/1.1 connections are upgraded to HTTP/2 upstream.
    H2UpgradePolicy {
        /// The mesh-wide default.
        Default = 0 => "DEFAULT",
        /// Do not upgrade.
        DoNotUpgrade = 1 => "DO_NOT_UPGRADE",
        /// Upgrade.
        Upgrade = 2 => "UPGRADE",
    }
}

/// HTTP connection pool limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum queued requests.
    #[serde(default)]
    pub http1_max_pending_requests: i32,
    /// Maximum active requests.
    #[serde(default)]
    pub http2_max_requests: i32,
    /// Maximum requests per connection (0: unlimited, 1: no keep-alive).
    #[serde(default)]
    pub max_requests_per_connection: i32,
    /// Maximum concurrent retries.
    #[serde(default)]
    pub max_retries: i32,
    /// Idle timeout of an upstream connection.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol upstream.
    #[serde(default)]
    pub use_client_protocol: bool,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[serde(default)]
    pub max_concurrent_streams: i32,
    /// HTTP/2 PING keep-alive.
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// HTTP/2 keep-alive settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Interval between PINGs.
    pub interval: Option<Duration>,
    /// Timeout waiting for a PING answer.
    pub timeout: Option<Duration>,
}

/// Ejection of failing endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated; use `consecutive5xxErrors` / `consecutiveGatewayErrors`.
    #[serde(default)]
    pub consecutive_errors: i32,
    /// Track locally originated failures separately.
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures before ejection.
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502/503/504 answers before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx answers before ejection.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// How often endpoints are analysed.
    pub interval: Option<Duration>,
    /// Minimum ejection time.
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected, in percent.
    #[serde(default)]
    pub max_ejection_percent: i32,
    /// Outlier detection stops below this share of healthy endpoints.
    #[serde(default)]
    pub min_health_percent: i32,
    /// Status codes counted as errors.
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

istio_enum! {
    /// TLS mode towards an upstream.
    ClientTlsMode {
        /// Plain text.
        Disable = 0 => "DISABLE",
        /// TLS, verifying the server.
        Simple = 1 => "SIMPLE",
        /// TLS with a client certificate.
        Mutual = 2 => "MUTUAL",
        /// Mesh mTLS with Istio certificates.
        IstioMutual = 3 => "ISTIO_MUTUAL",
    }
}

/// TLS settings towards an upstream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// The mode (Istio's default: DISABLE).
    pub mode: Option<ClientTlsMode>,
    /// Path of the client certificate (MUTUAL).
    #[serde(default)]
    pub client_certificate: String,
    /// Path of the client key (MUTUAL).
    #[serde(default)]
    pub private_key: String,
    /// Path of the CA bundle to verify the server.
    #[serde(default)]
    pub ca_certificates: String,
    /// Secret holding the client certificate/key/CA.
    #[serde(default)]
    pub credential_name: String,
    /// Accepted server identities.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default)]
    pub sni: String,
    /// Skip server verification.
    pub insecure_skip_verify: Option<bool>,
    /// Path of the certificate revocation list.
    #[serde(default)]
    pub ca_crl: String,
}

/// Locality-aware load balancing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    /// Explicit traffic distribution between localities.
    #[serde(default)]
    pub distribute: Vec<Distribute>,
    /// Failover between regions.
    #[serde(default)]
    pub failover: Vec<Failover>,
    /// Labels ordering failover priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Turn locality load balancing on or off.
    pub enabled: Option<bool>,
}

/// Traffic from one locality distributed to others.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Distribute {
    /// Originating locality (`region/zone/subzone`, `*` allowed).
    #[serde(default)]
    pub from: String,
    /// Destination localities and their weights (summing to 100).
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Originating region.
    #[serde(default)]
    pub from: String,
    /// Region to fail over to.
    #[serde(default)]
    pub to: String,
}

/// Zone-aware load balancing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLoadBalancerSetting {
    /// Turn it on or off.
    pub enabled: Option<bool>,
    /// Failover between regions.
    #[serde(default)]
    pub failover: Vec<Failover>,
    /// Labels ordering failover priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone-aware routing.
    pub min_cluster_size: Option<u64>,
}
