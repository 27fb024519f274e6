//! `Gateway` (networking.istio.io): the load balancer at the edge of the mesh, its ports,
//! hosts and TLS settings.
use super::common::istio_enum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec of a `Gateway`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// The servers (port + hosts + TLS) this gateway exposes.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this configuration applies to.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// One server of a gateway: a port, the hosts it serves and how TLS is handled.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port the proxy listens on.
    pub port: Option<Port>,
    /// The IP or Unix domain socket to bind to (default: all addresses).
    #[serde(default)]
    pub bind: String,
    /// Hosts exposed by this server, optionally as `namespace/host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings for this server.
    pub tls: Option<ServerTlsSettings>,
    /// Where to forward traffic by default (`127.0.0.1:PORT` or a Unix socket).
    #[serde(default)]
    pub default_endpoint: String,
    /// An optional name for the server, unique across the gateway.
    #[serde(default)]
    pub name: String,
}

/// A port the gateway listens on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS.
    #[serde(default)]
    pub protocol: String,
    /// A label for the port.
    #[serde(default)]
    pub name: String,
    /// Deprecated by Istio; only meaningful for Kubernetes Gateway API deployments.
    #[serde(default)]
    pub target_port: u32,
}

istio_enum! {
    /// How a gateway server handles TLS.
    ServerTlsMode {
        /// Forward the connection by SNI without terminating TLS.
        Passthrough = 0 => "PASSTHROUGH",
        /// Terminate TLS with a server certificate.
        Simple = 1 => "SIMPLE",
        /// Terminate TLS and require a client certificate.
        Mutual = 2 => "MUTUAL",
        /// Forward by SNI, routing on the SNI's cluster name (east-west).
        AutoPassthrough = 3 => "AUTO_PASSTHROUGH",
        /// Mutual TLS with mesh certificates.
        IstioMutual = 4 => "ISTIO_MUTUAL",
        /// Mutual TLS if the client presents a certificate, else simple TLS.
        OptionalMutual = 5 => "OPTIONAL_MUTUAL",
    }
}

istio_enum! {
    /// A TLS protocol version bound.
    TlsProtocol {
        /// Automatic choice.
        Auto = 0 => "TLS_AUTO",
        /// TLS 1.0.
        V1_0 = 1 => "TLSV1_0",
        /// TLS 1.1.
        V1_1 = 2 => "TLSV1_1",
        /// TLS 1.2.
        V1_2 = 3 => "TLSV1_2",
        /// TLS 1.3.
        V1_3 = 4 => "TLSV1_3",
    }
}

/// TLS settings of a gateway server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Answer plain HTTP with a redirect to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// How TLS is handled (Istio's default: PASSTHROUGH).
    pub mode: Option<ServerTlsMode>,
    /// Path of the server certificate file.
    #[serde(default)]
    pub server_certificate: String,
    /// Path of the private key file.
    #[serde(default)]
    pub private_key: String,
    /// Path of the CA bundle used to verify client certificates.
    #[serde(default)]
    pub ca_certificates: String,
    /// Path of the certificate revocation list.
    #[serde(default)]
    pub ca_crl: String,
    /// Name of the secret holding the certificate, key (and CA).
    #[serde(default)]
    pub credential_name: String,
    /// Several secrets, e.g. an RSA and an ECDSA certificate.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// Name of the secret holding only the CA certificate.
    #[serde(default)]
    pub ca_cert_credential_name: String,
    /// Several certificate/key pairs given as files.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Subject alternative names accepted in client certificates.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Base64 SPKI hashes accepted for client certificates.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Hex certificate hashes accepted for client certificates.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version accepted.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Highest TLS version accepted.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites, in preference order.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Skip client certificate verification.
    pub insecure_skip_verify: Option<bool>,
}

/// A certificate/key pair given as files.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Path of the certificate file.
    #[serde(default)]
    pub server_certificate: String,
    /// Path of the private key file.
    #[serde(default)]
    pub private_key: String,
    /// Path of the CA bundle.
    #[serde(default)]
    pub ca_certificates: String,
}
