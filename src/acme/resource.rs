//! The `AcmeCertificate` resource: which hostnames to get a certificate for, from which
//! ACME directory, and under which `credentialName` to publish it.
//!
//! ```yaml
//! apiVersion: meshgate.io/v1alpha1
//! kind: AcmeCertificate
//! metadata:
//!   name: shop
//!   namespace: istio-system
//! spec:
//!   hosts: [shop.example.com, www.shop.example.com]
//!   directory: letsencrypt-staging      # letsencrypt | letsencrypt-staging | https://...
//!   email: ops@example.com
//!   acceptTermsOfService: true
//!   credentialName: shop-cert           # Gateways say `credentialName: shop-cert`
//!   challenge: http-01                  # or tls-alpn-01
//!   renewalFraction: 0.6667             # renew after 2/3 of the lifetime (default)
//!   storage: /var/lib/meshgate/acme     # account and certificates, files 0600
//!   directoryCaCertificates: /etc/meshgate/acme-ca.pem   # optional: CA of the directory's HTTPS
//!   profile: shortlived                 # optional ACME profile
//! ```
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The API version of meshgate's own resources.
pub const API_VERSION: &str = "meshgate.io/v1alpha1";
/// The kind name.
pub const KIND: &str = "AcmeCertificate";
/// Let's Encrypt's production directory.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Where accounts and certificates are kept unless `storage` says otherwise.
pub const DEFAULT_STORAGE: &str = "/var/lib/meshgate/acme";

/// A meshgate `AcmeCertificate` resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AcmeCertificate {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AcmeCertificateSpec,
}

/// The usual Kubernetes object metadata (only what meshgate reads).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The challenge type used to prove control of the hostnames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Challenge {
    /// Answered on the gateway's HTTP port (80 in production) at
    /// `/.well-known/acme-challenge/TOKEN`.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// Answered on the gateway's TLS port (443) for ALPN `acme-tls/1`.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// What to ask for and where to publish it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AcmeCertificateSpec {
    /// DNS names the certificate covers (no wildcards: they need DNS-01).
    pub hosts: Vec<String>,
    /// `letsencrypt`, `letsencrypt-staging`, or a directory URL.
    pub directory: String,
    /// Contact address registered with the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Agreement to the directory's terms of service; ACME servers require it.
    #[serde(default)]
    pub accept_terms_of_service: bool,
    /// The name Gateways use in `credentialName`; published as `kubernetes://NAME`.
    pub credential_name: String,
    #[serde(default)]
    pub challenge: Challenge,
    /// Renew once this fraction of the certificate's lifetime has passed (0 < f < 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_fraction: Option<f64>,
    /// Directory for the account key and issued certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<PathBuf>,
    /// PEM file with the CA certificate of the directory's HTTPS endpoint, for private
    /// ACME servers (step-ca, pebble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca_certificates: Option<PathBuf>,
    /// An ACME profile to request (servers that support profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// One problem with a resource: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}/{name}: {field}: {message}")]
pub struct ValidationError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl AcmeCertificate {
    /// The resource as loaded from a configuration folder.
    pub fn from_config(r: &crate::config::Resource<AcmeCertificateSpec>) -> AcmeCertificate {
        AcmeCertificate {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: r.meta.name.clone(),
                namespace: Some(r.meta.namespace.clone()),
                labels: r.meta.labels.clone(),
                annotations: r.meta.annotations.clone(),
            },
            spec: r.spec.clone(),
        }
    }

    /// The directory URL, with the Let's Encrypt shorthands expanded.
    pub fn directory_url(&self) -> &str {
        match self.spec.directory.as_str() {
            "letsencrypt" => LETSENCRYPT,
            "letsencrypt-staging" => LETSENCRYPT_STAGING,
            other => other,
        }
    }

    /// The renewal fraction in force (default two thirds).
    pub fn renewal_fraction(&self) -> f64 {
        self.spec.renewal_fraction.unwrap_or(2.0 / 3.0)
    }

    /// The storage directory in force.
    pub fn storage(&self) -> PathBuf {
        self.spec
            .storage
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE))
    }

    /// The SDS name the certificate is published under.
    pub fn sds_name(&self) -> String {
        crate::tls::credential::certificate_sds_name(&self.spec.credential_name)
    }

    /// Every problem with the resource (empty when valid).
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(ValidationError {
                kind: KIND,
                name: self.metadata.name.clone(),
                field: field.to_string(),
                message,
            })
        };
        if self.api_version != API_VERSION {
            err("apiVersion", format!("must be {API_VERSION}"));
        }
        if self.kind != KIND {
            err("kind", format!("must be {KIND}"));
        }
        if !is_k8s_name(&self.metadata.name) {
            err(
                "metadata.name",
                "must be a lower-case DNS label or subdomain".into(),
            );
        }
        let s = &self.spec;
        if s.hosts.is_empty() {
            err("spec.hosts", "at least one host is required".into());
        }
        for (i, h) in s.hosts.iter().enumerate() {
            if h.starts_with("*.") {
                err(
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "`{h}`: wildcard names need the DNS-01 challenge, which is not supported"
                    ),
                );
            } else if !is_dns_name(h) {
                err(
                    &format!("spec.hosts[{i}]"),
                    format!("`{h}` is not a valid DNS name"),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for h in &s.hosts {
            if !seen.insert(h.to_ascii_lowercase()) {
                err("spec.hosts", format!("`{h}` is listed twice"));
            }
        }
        let url = self.directory_url();
        if !url.starts_with("https://") {
            err(
                "spec.directory",
                format!(
                    "`{}`: use letsencrypt, letsencrypt-staging or an https:// URL",
                    s.directory
                ),
            );
        } else if url.parse::<http::Uri>().is_err() {
            err("spec.directory", format!("`{url}` is not a valid URL"));
        }
        if let Some(e) = &s.email
            && (e.is_empty() || !e.contains('@') || e.contains(char::is_whitespace))
        {
            err("spec.email", format!("`{e}` is not an email address"));
        }
        if !s.accept_terms_of_service {
            err(
                "spec.acceptTermsOfService",
                "must be true: ACME directories require agreeing to their terms of service".into(),
            );
        }
        if !is_k8s_name(&s.credential_name) {
            err(
                "spec.credentialName",
                "must be a lower-case DNS subdomain (a Secret name)".into(),
            );
        }
        if let Some(f) = s.renewal_fraction
            && !(f > 0.0 && f < 1.0)
        {
            err(
                "spec.renewalFraction",
                format!("{f} must be between 0 and 1 (exclusive)"),
            );
        }
        if let Some(p) = &s.storage
            && !p.is_absolute()
        {
            err("spec.storage", "must be an absolute path".into());
        }
        if let Some(p) = &s.profile
            && p.is_empty()
        {
            err("spec.profile", "is empty".into());
        }
        errors
    }
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').count() >= 2
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_k8s_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "apiVersion": "meshgate.io/v1alpha1",
        "kind": "AcmeCertificate",
        "metadata": {"name": "shop", "namespace": "istio-system"},
        "spec": {
            "hosts": ["shop.example.com"],
            "directory": "letsencrypt-staging",
            "email": "ops@example.com",
            "acceptTermsOfService": true,
            "credentialName": "shop-cert",
            "challenge": "tls-alpn-01"
        }
    }"#;

    #[test]
    fn parses_and_validates() {
        let r: AcmeCertificate = serde_json::from_str(GOOD).unwrap();
        assert!(r.validate().is_empty(), "{:?}", r.validate());
        assert_eq!(r.directory_url(), LETSENCRYPT_STAGING);
        assert_eq!(r.spec.challenge, Challenge::TlsAlpn01);
        assert!((r.renewal_fraction() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.sds_name(), "kubernetes://shop-cert");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let bad = GOOD.replace("\"challenge\"", "\"chalenge\"");
        let e = serde_json::from_str::<AcmeCertificate>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `chalenge`"), "{e}");
    }

    #[test]
    fn validation_table() {
        let base: AcmeCertificate = serde_json::from_str(GOOD).unwrap();
        type Edit = fn(&mut AcmeCertificate);
        let cases: Vec<(Edit, &str)> = vec![
            (|r| r.spec.hosts.clear(), "spec.hosts"),
            (|r| r.spec.hosts = vec!["*.example.com".into()], "DNS-01"),
            (
                |r| r.spec.hosts = vec!["bad host".into()],
                "not a valid DNS name",
            ),
            (
                |r| r.spec.hosts = vec!["a.example.com".into(), "A.example.com".into()],
                "listed twice",
            ),
            (
                |r| r.spec.directory = "http://insecure/dir".into(),
                "spec.directory",
            ),
            (|r| r.spec.email = Some("nope".into()), "spec.email"),
            (
                |r| r.spec.accept_terms_of_service = false,
                "acceptTermsOfService",
            ),
            (
                |r| r.spec.credential_name = "Bad_Name".into(),
                "spec.credentialName",
            ),
            (
                |r| r.spec.renewal_fraction = Some(1.5),
                "spec.renewalFraction",
            ),
            (|r| r.spec.storage = Some("relative".into()), "spec.storage"),
            (|r| r.api_version = "v1".into(), "apiVersion"),
        ];
        for (edit, want) in cases {
            let mut r = base.clone();
            edit(&mut r);
            let errs = r.validate();
            assert!(
                errs.iter().any(|e| e.to_string().contains(want)),
                "{want}: {errs:?}"
            );
        }
    }
}
