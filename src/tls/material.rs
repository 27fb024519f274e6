//! Certificate material parsed once and checked before it may serve a handshake: a leaf
//! chain with its private key ([`CertificateMaterial`]) and a CA bundle with optional CRLs
//! ([`TrustMaterial`]). Nothing here touches the filesystem; callers hand in bytes.
use crate::tls::error::TlsError;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate chain and its private key, checked (key matches leaf, leaf within its
/// validity period) and loaded into the form rustls signs with.
#[derive(Debug)]
pub struct CertificateMaterial {
    /// What rustls serves: the chain (leaf first) and the signing key.
    pub certified_key: Arc<CertifiedKey>,
    /// Facts about the leaf certificate.
    pub leaf: LeafInfo,
    /// SHA-256 over the PEM inputs: equal digests mean nothing changed.
    pub digest: [u8; 32],
}

/// What meshgate needs to know about a leaf certificate after parsing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Subject in RFC 2253 form (`CN=a.example.com,O=Example`), as Envoy prints it.
    pub subject: String,
    /// DNS subject alternative names, lower-case (wildcards kept as `*.example.com`).
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE identities among them).
    pub uri_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's DER encoding.
    pub sha256: [u8; 32],
}

impl LeafInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8], what: &str) -> Result<LeafInfo, TlsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Certificate {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        let mut dns_names = Vec::new();
        let mut uri_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => uri_names.push((*u).to_string()),
                    _ => {}
                }
            }
        }
        Ok(LeafInfo {
            subject: rfc2253(cert.subject()),
            dns_names,
            uri_names,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            sha256: Sha256::digest(der).into(),
        })
    }

    /// Fails if `now` is outside the validity period.
    pub fn check_validity(&self, what: &str, now: SystemTime) -> Result<(), TlsError> {
        if now > self.not_after {
            return Err(TlsError::Expired {
                what: what.to_string(),
                subject: self.subject.clone(),
                not_after: format_time(self.not_after),
            });
        }
        if now < self.not_before {
            return Err(TlsError::NotYetValid {
                what: what.to_string(),
                subject: self.subject.clone(),
                not_before: format_time(self.not_before),
            });
        }
        Ok(())
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

impl CertificateMaterial {
    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#1, PKCS#8 or SEC1; RSA,
    /// ECDSA or Ed25519) and checks that they belong together and that the leaf is valid
    /// at `now`. `what` names the source in errors (a secret or file name).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        what: &str,
        now: SystemTime,
    ) -> Result<CertificateMaterial, TlsError> {
        let chain = parse_certificates(chain_pem, what)?;
        let key = parse_private_key(key_pem, what)?;
        Self::from_der(chain, key, what, now, pem_digest(chain_pem, key_pem))
    }

    /// Like [`from_pem`](Self::from_pem) for already-decoded DER.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        what: &str,
        now: SystemTime,
        digest: [u8; 32],
    ) -> Result<CertificateMaterial, TlsError> {
        let leaf_der = chain.first().ok_or_else(|| TlsError::Missing {
            what: what.to_string(),
            expected: "certificate",
        })?;
        let leaf = LeafInfo::from_der(leaf_der, what)?;
        leaf.check_validity(what, now)?;
        let signing_key = crate::tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    what: what.to_string(),
                });
            }
            // The key type cannot report its public key: nothing to compare with.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(TlsError::Key {
                    what: what.to_string(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(CertificateMaterial {
            certified_key: Arc::new(certified_key),
            leaf,
            digest,
        })
    }

    /// Attaches an OCSP response to staple (Envoy's `ocsp_staple`).
    pub fn with_ocsp(mut self, ocsp: Vec<u8>) -> CertificateMaterial {
        let mut ck = (*self.certified_key).clone();
        ck.ocsp = Some(ocsp);
        self.certified_key = Arc::new(ck);
        self
    }
}

/// The digest of a certificate's PEM inputs ([`CertificateMaterial::digest`]).
pub fn pem_digest(chain_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update((chain_pem.len() as u64).to_be_bytes());
    digest.update(chain_pem);
    digest.update(key_pem);
    digest.finalize().into()
}

/// A CA bundle (and optional CRLs) that peer certificates are verified against.
#[derive(Debug)]
pub struct TrustMaterial {
    pub roots: Arc<RootCertStore>,
    pub ca_certificates: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// SHA-256 over the PEM inputs.
    pub digest: [u8; 32],
}

impl TrustMaterial {
    /// Parses a PEM CA bundle and optional PEM CRLs. Every certificate must parse and be
    /// usable as a trust anchor; an empty bundle is an error.
    pub fn from_pem(
        ca_pem: &[u8],
        crl_pem: Option<&[u8]>,
        what: &str,
    ) -> Result<TrustMaterial, TlsError> {
        let ca_certificates = parse_certificates(ca_pem, what)?;
        let mut roots = RootCertStore::empty();
        for (i, der) in ca_certificates.iter().enumerate() {
            roots.add(der.clone()).map_err(|e| TlsError::Certificate {
                what: format!("{what} (CA certificate #{})", i + 1),
                reason: e.to_string(),
            })?;
        }
        let crls = match crl_pem {
            Some(pem) => parse_crls(pem, what)?,
            None => Vec::new(),
        };
        let mut digest = Sha256::new();
        digest.update((ca_pem.len() as u64).to_be_bytes());
        digest.update(ca_pem);
        digest.update(crl_pem.unwrap_or_default());
        Ok(TrustMaterial {
            roots: Arc::new(roots),
            ca_certificates,
            crls,
            digest: digest.finalize().into(),
        })
    }
}

impl TrustMaterial {
    /// The operating system's trusted roots (Envoy's `system_root_certs`, Istio's
    /// `file-root:system`), read once per process from the platform's store.
    pub fn system() -> Result<TrustMaterial, TlsError> {
        static SYSTEM: std::sync::OnceLock<Result<Vec<CertificateDer<'static>>, String>> =
            std::sync::OnceLock::new();
        let certs = SYSTEM
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let why = found
                        .errors
                        .first()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "no certificates found".into());
                    return Err(why);
                }
                Ok(found.certs)
            })
            .clone()
            .map_err(|reason| TlsError::Certificate {
                what: "system trust store".into(),
                reason,
            })?;
        let mut roots = RootCertStore::empty();
        // Platform stores hold the odd certificate webpki cannot use; skip those.
        let (_, _) = roots.add_parsable_certificates(certs.iter().cloned());
        let mut digest = Sha256::new();
        digest.update(b"system");
        for c in &certs {
            digest.update(c.as_ref());
        }
        Ok(TrustMaterial {
            roots: Arc::new(roots),
            ca_certificates: certs,
            crls: Vec::new(),
            digest: digest.finalize().into(),
        })
    }
}

/// The PEM sections of `pem`, each checked to be well-formed, in order.
fn pem_items(pem: &[u8], what: &str) -> Result<Vec<rustls_pemfile::Item>, TlsError> {
    let mut items = Vec::new();
    let mut rest = pem;
    loop {
        match rustls_pemfile::read_one_from_slice(rest) {
            Ok(Some((item, next))) => {
                items.push(item);
                rest = next;
            }
            Ok(None) => return Ok(items),
            Err(e) => {
                return Err(TlsError::Pem {
                    what: what.to_string(),
                    reason: pem_error(&e),
                });
            }
        }
    }
}

fn pem_error(e: &rustls_pemfile::Error) -> String {
    match e {
        rustls_pemfile::Error::MissingSectionEnd { end_marker } => format!(
            "truncated: section has no `{}` line",
            String::from_utf8_lossy(end_marker)
        ),
        rustls_pemfile::Error::IllegalSectionStart { line } => format!(
            "malformed section start `{}`",
            String::from_utf8_lossy(line)
        ),
        rustls_pemfile::Error::Base64Decode(msg) => format!("bad base64: {msg}"),
    }
}

/// Every `CERTIFICATE` section of a PEM bundle; each must be a parsable X.509 certificate.
pub fn parse_certificates(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = pem_items(pem, what)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what: what.to_string(),
            expected: "certificate",
        });
    }
    for (i, der) in certs.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| TlsError::Certificate {
            what: format!("{what} (certificate #{})", i + 1),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The one private key of a PEM file (PKCS#1, PKCS#8 or SEC1).
pub fn parse_private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys = pem_items(pem, what)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::Pkcs1Key(k) => Some(PrivateKeyDer::Pkcs1(k)),
            rustls_pemfile::Item::Pkcs8Key(k) => Some(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Sec1Key(k) => Some(PrivateKeyDer::Sec1(k)),
            _ => None,
        });
    let key = keys.next().ok_or_else(|| TlsError::Missing {
        what: what.to_string(),
        expected: "private key",
    })?;
    if keys.next().is_some() {
        return Err(TlsError::ManyKeys {
            what: what.to_string(),
        });
    }
    Ok(key)
}

/// Every `X509 CRL` section of a PEM file, each checked to parse.
pub fn parse_crls(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<_> = pem_items(pem, what)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::Crl(c) => Some(c),
            _ => None,
        })
        .collect();
    if crls.is_empty() {
        return Err(TlsError::Missing {
            what: what.to_string(),
            expected: "X509 CRL",
        });
    }
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl).map_err(|e| TlsError::Crl {
            what: what.to_string(),
            reason: format!("{e:?}"),
        })?;
    }
    Ok(crls)
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// An RFC 3339 UTC timestamp for log lines and errors.
pub fn format_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => {
            let (y, m, d) = (dt.year(), u8::from(dt.month()), dt.day());
            let (hh, mm, ss) = (dt.hour(), dt.minute(), dt.second());
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
        }
        Err(_) => format!("@{secs}"),
    }
}

/// An X.509 name in RFC 2253 form: last RDN first, `,` between RDNs, `+` inside one,
/// short attribute names, and RFC 2253 escaping. This is how Envoy (OpenSSL's
/// `XN_FLAG_RFC2253`) prints subjects in `x-forwarded-client-cert`.
pub fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            let short = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            out.push_str(&short);
            out.push('=');
            match atv.as_str() {
                Ok(value) => escape_rfc2253(value, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(atv.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_rfc2253(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn leaf(
        alg: &'static rcgen::SignatureAlgorithm,
        days_from: i64,
        days_to: i64,
    ) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a.example.com");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days_from);
        params.not_after = now + time::Duration::days(days_to);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn accepts_every_key_type_and_encoding() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let (cert, key) = leaf(alg, -1, 30);
            let m = CertificateMaterial::from_pem(
                cert.as_bytes(),
                key.as_bytes(),
                "t",
                SystemTime::now(),
            )
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(m.leaf.dns_names, vec!["a.example.com"]);
            assert_eq!(m.leaf.subject, "O=Example\\, Inc,CN=a.example.com");
        }
    }

    #[test]
    fn accepts_sec1_and_pkcs1_keys() {
        // SEC1 EC key and PKCS#1 RSA key, as openssl writes them in "traditional" form.
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let sec1 = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            ec.serialized_der(),
        )
        .unwrap();
        let sec1_der =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der>::as_der(
                &sec1.private_key(),
            )
            .unwrap();
        let sec1_pem = pem_encode("EC PRIVATE KEY", sec1_der.as_ref());
        let params = CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        let cert = params.self_signed(&ec).unwrap();
        CertificateMaterial::from_pem(
            cert.pem().as_bytes(),
            sec1_pem.as_bytes(),
            "t",
            SystemTime::now(),
        )
        .unwrap();
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push('\n');
        }
        s.push_str(&format!("-----END {label}-----\n"));
        s
    }

    #[test]
    fn rejects_bad_material_with_clear_errors() {
        let (cert, key) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, -1, 30);
        let (_, other_key) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, -1, 30);
        let (expired, expired_key) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, -30, -1);
        let (future, future_key) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, 2, 30);
        let truncated = &cert[..cert.len() / 2];
        let now = SystemTime::now();
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            ("mismatch", &cert, &other_key, "does not match"),
            ("expired", &expired, &expired_key, "expired at"),
            ("future", &future, &future_key, "not valid before"),
            ("truncated", truncated, &key, "truncated"),
            ("garbage", "hello world", &key, "no certificate found"),
            ("no key", &cert, "", "no private key found"),
            (
                "bad base64",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                &key,
                "bad base64",
            ),
            (
                "not x509",
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                &key,
                "cannot be parsed",
            ),
            (
                "bad key",
                &cert,
                "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
                "unsupported private key",
            ),
        ];
        for (name, c, k, want) in cases {
            let err = CertificateMaterial::from_pem(c.as_bytes(), k.as_bytes(), "secret x", now)
                .expect_err(name)
                .to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.starts_with("secret x"), "{name}: {err}");
        }
    }

    #[test]
    fn trust_bundle_parses_and_rejects_garbage() {
        let (a, _) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, -1, 30);
        let (b, _) = leaf(&rcgen::PKCS_ECDSA_P256_SHA256, -1, 30);
        let bundle = format!("{a}{b}");
        let t = TrustMaterial::from_pem(bundle.as_bytes(), None, "ca").unwrap();
        assert_eq!(t.roots.len(), 2);
        assert!(TrustMaterial::from_pem(b"junk", None, "ca").is_err());
        assert!(TrustMaterial::from_pem(a.as_bytes(), Some(b"junk"), "ca").is_err());
    }
}
