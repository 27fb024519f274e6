//! Development certificates, the mkcert experience: a local CA kept in a directory
//! (created once, reused after) and ECDSA P-256 leaf certificates signed by it, with
//! private keys written 0600. Used by `meshgate certs dev` and by the examples.
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why development certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid host `{host}`: {reason}")]
    Host { host: String, reason: String },
    #[error("{path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevCertError + '_ {
    move |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A local certificate authority for development.
pub struct DevCa {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// Loads the CA from `dir` (`ca.crt`, `ca.key`) or creates it there. Returns the CA
    /// and whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(DevCa, bool), DevCertError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() || key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| DevCertError::Ca {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| DevCertError::Ca {
                    path: cert_path.clone(),
                    reason: e.to_string(),
                })?;
            // The key must belong to the certificate, or every leaf would be unverifiable.
            let probe = CertificateParams::new(vec!["probe.invalid".to_string()])?;
            let probe_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let leaf = probe.signed_by(&probe_key, &issuer)?;
            let ca_err = |reason: String| DevCertError::Ca {
                path: cert_path.clone(),
                reason,
            };
            let trust =
                crate::tls::material::TrustMaterial::from_pem(cert_pem.as_bytes(), None, "ca.crt")
                    .map_err(|e| ca_err(e.to_string()))?;
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                trust.roots,
                crate::tls::provider(),
            )
            .build()
            .map_err(|e| ca_err(e.to_string()))?;
            let name = rustls_pki_types::ServerName::try_from("probe.invalid")
                .map_err(|e| ca_err(e.to_string()))?;
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                leaf.der(),
                &[],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map_err(|e| DevCertError::Ca {
                path: key_path.clone(),
                reason: format!("ca.key does not belong to ca.crt ({e})"),
            })?;
            return Ok((
                DevCa {
                    cert_pem,
                    cert_path,
                    issuer,
                },
                false,
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshgate development");
        dn.push(
            DnType::CommonName,
            format!("meshgate development CA {}", short_id()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert_pem.as_bytes())?;
        let issuer = Issuer::new(params, key);
        Ok((
            DevCa {
                cert_pem,
                cert_path,
                issuer,
            },
            true,
        ))
    }

    /// Issues an ECDSA P-256 leaf for `hosts` (DNS names, `*.wildcards`, IP addresses;
    /// the first is also the common name), valid for `days`, usable for server and client
    /// authentication. Returns (certificate PEM, private key PEM).
    pub fn issue(&self, hosts: &[&str], days: i64) -> Result<(String, String), DevCertError> {
        let Some(host) = hosts.first().copied() else {
            return Err(DevCertError::Host {
                host: String::new(),
                reason: "no host given".into(),
            });
        };
        let sans = hosts
            .iter()
            .map(|h| host_san(h))
            .collect::<Result<Vec<_>, _>>()?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshgate development certificate");
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn short_id() -> String {
    let b: [u8; 4] = rand::random();
    hex::encode(b)
}

fn host_san(host: &str) -> Result<SanType, DevCertError> {
    let bad = |reason: &str| DevCertError::Host {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let body = host.strip_prefix("*.").unwrap_or(host);
    if body.is_empty() || body.len() > 253 {
        return Err(bad("empty or too long"));
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad(
                "labels may hold letters, digits and inner hyphens; `*.` only as the first label",
            ));
        }
    }
    let name = host
        .to_ascii_lowercase()
        .try_into()
        .map_err(|e: rcgen::Error| bad(&e.to_string()))?;
    Ok(SanType::DnsName(name))
}

/// A file name for a host's files: `*.example.com` becomes `_wildcard.example.com`.
pub fn file_stem(host: &str) -> String {
    host.replace('*', "_wildcard").replace(':', "_")
}

/// Writes a private key readable by its owner only (0600), replacing any old file.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevCertError> {
    let tmp = path.with_extension("tmp-write");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a public file (certificate), replacing it atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), DevCertError> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A Kubernetes `kind: Secret` of type `kubernetes.io/tls` with `tls.crt`, `tls.key`
/// and `ca.crt`, for Gateways that name it with `credentialName`.
pub fn kubernetes_secret_yaml(
    name: &str,
    namespace: &str,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut y = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert_pem),
        b64(key_pem)
    );
    if let Some(ca) = ca_pem {
        y.push_str(&format!("  ca.crt: {}\n", b64(ca)));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_and_leaves_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = DevCa::load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = DevCa::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.cert_pem, ca.cert_pem);
        for host in ["a.example.com", "*.example.com", "127.0.0.1"] {
            let (cert, key) = again.issue(&[host], 30).unwrap();
            let m = crate::tls::CertificateMaterial::from_pem(
                cert.as_bytes(),
                key.as_bytes(),
                host,
                std::time::SystemTime::now(),
            )
            .unwrap();
            let trust =
                crate::tls::TrustMaterial::from_pem(ca.cert_pem.as_bytes(), None, "ca").unwrap();
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                trust.roots,
                crate::tls::provider(),
            )
            .build()
            .unwrap();
            let name = if host.starts_with('*') {
                "x.example.com"
            } else {
                host
            };
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                v.as_ref(),
                &m.certified_key.cert[0],
                &[],
                &rustls_pki_types::ServerName::try_from(name).unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for bad in ["", "a..b", "-a.com", "a.*.com", "a b"] {
            assert!(again.issue(&[bad], 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        DevCa::load_or_create(a.path()).unwrap();
        DevCa::load_or_create(b.path()).unwrap();
        std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
        let err = DevCa::load_or_create(a.path())
            .err()
            .expect("mismatch refused")
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
    }
}
