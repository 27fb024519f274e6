//! Certificate signing requests: parsed, their signature verified, and the names they ask
//! for checked against the identity the caller is entitled to.
//!
//! Only the CSR's public key and its subject alternative names matter: the subject and
//! every other requested extension are ignored (the CA writes the leaf's own), as
//! istiod does. The names must be exactly the caller's SPIFFE identity, or none at all
//! (then the leaf carries the caller's identity, as istiod issues it).
use super::spiffe::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 64 * 1024;
/// Smallest RSA key accepted.
const MIN_RSA_BITS: usize = 2048;

/// Why a CSR cannot be used at all (gRPC `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR is not one PEM `CERTIFICATE REQUEST`")]
    Pem,
    #[error("the CSR cannot be parsed: {0}")]
    Parse(String),
    #[error("the CSR's signature does not verify")]
    Signature,
    #[error("the CSR's public key is not accepted: {0}")]
    Key(String),
}

/// Why a CSR asks for names the caller may not have (gRPC `PERMISSION_DENIED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the CSR asks for DNS name `{0}`; only the caller's SPIFFE identity may be requested")]
    Dns(String),
    #[error("the CSR asks for IP address {0}; only the caller's SPIFFE identity may be requested")]
    Ip(String),
    #[error("the CSR asks for {0} URIs; exactly one SPIFFE identity may be requested")]
    ManyUris(usize),
    #[error("the CSR asks for `{requested}`, but the caller is {allowed}")]
    OtherIdentity { requested: String, allowed: String },
    #[error("the CSR asks for a {0} name; only the caller's SPIFFE identity may be requested")]
    Other(&'static str),
}

/// A CSR whose signature verified.
pub struct Csr {
    public_key: rcgen::SubjectPublicKeyInfo,
    uris: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    /// Kinds of other names requested (email, directory name, ...).
    other: Vec<&'static str>,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr")
            .field("uris", &self.uris)
            .field("dns", &self.dns)
            .field("ips", &self.ips)
            .field("other", &self.other)
            .finish_non_exhaustive()
    }
}

impl Csr {
    /// Parses a PEM CSR and verifies its signature.
    pub fn from_pem(pem: &str) -> Result<Csr, CsrError> {
        if pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge);
        }
        let mut der = None;
        for item in rustls_pemfile::read_all(&mut pem.as_bytes()) {
            match item {
                Ok(rustls_pemfile::Item::Csr(c)) if der.is_none() => der = Some(c),
                _ => return Err(CsrError::Pem),
            }
        }
        let der = der.ok_or(CsrError::Pem)?;
        Self::from_der(der.as_ref())
    }

    /// Parses a DER CSR and verifies its signature.
    pub fn from_der(der: &[u8]) -> Result<Csr, CsrError> {
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Parse("trailing bytes after the CSR".into()));
        }
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        let info = &csr.certification_request_info;
        match info.subject_pki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => {
                return Err(CsrError::Key(format!(
                    "an RSA key of {} bits (at least {MIN_RSA_BITS})",
                    rsa.key_size()
                )));
            }
            Ok(PublicKey::RSA(_) | PublicKey::EC(_)) => {}
            Ok(_) => return Err(CsrError::Key("only RSA and ECDSA keys are signed".into())),
            Err(e) => return Err(CsrError::Key(e.to_string())),
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| CsrError::Key(e.to_string()))?;
        let mut out = Csr {
            public_key,
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            other: Vec::new(),
        };
        // Every extension request, not only the first (`requested_extensions()` stops
        // there), so that no requested name goes unchecked.
        let requested = info
            .iter_attributes()
            .filter_map(|a| match a.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(r) => Some(r.extensions.iter()),
                _ => None,
            });
        for ext in requested.flatten().map(|e| e.parsed_extension()) {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        out.add(name);
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Parse(format!("a requested extension: {error}")));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn add(&mut self, name: &GeneralName<'_>) {
        match name {
            GeneralName::URI(u) => self.uris.push(u.to_string()),
            GeneralName::DNSName(d) => self.dns.push(d.to_string()),
            GeneralName::IPAddress(b) => self.ips.push(ip_string(b)),
            GeneralName::RFC822Name(_) => self.other.push("email"),
            GeneralName::DirectoryName(_) => self.other.push("directory"),
            GeneralName::OtherName(..) => self.other.push("other"),
            GeneralName::RegisteredID(_) => self.other.push("registered id"),
            GeneralName::X400Address(_) => self.other.push("X.400"),
            GeneralName::EDIPartyName(_) => self.other.push("EDI party"),
            GeneralName::Invalid(..) => self.other.push("invalid"),
        }
    }

    /// The public key the leaf will carry.
    pub fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }

    /// The URIs requested.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// Checks that the CSR asks for `identity` and nothing else (or for nothing).
    pub fn check_names(&self, identity: &SpiffeId) -> Result<(), NameError> {
        if let Some(d) = self.dns.first() {
            return Err(NameError::Dns(d.chars().take(256).collect()));
        }
        if let Some(ip) = self.ips.first() {
            return Err(NameError::Ip(ip.clone()));
        }
        if let Some(kind) = self.other.first() {
            return Err(NameError::Other(kind));
        }
        match self.uris.as_slice() {
            [] => Ok(()),
            [uri] => match SpiffeId::parse(uri) {
                Ok(id) if id == *identity => Ok(()),
                _ => Err(NameError::OtherIdentity {
                    requested: uri.chars().take(256).collect(),
                    allowed: identity.to_string(),
                }),
            },
            many => Err(NameError::ManyUris(many.len())),
        }
    }
}

fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex::encode(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::tests::{csr_pem, spiffe_san};
    use rcgen::SanType;

    fn edge() -> SpiffeId {
        SpiffeId::new("cluster.local", "edge", "ingress").unwrap()
    }

    #[test]
    fn names_are_checked_against_the_identity() {
        let id = edge();
        let other = SpiffeId::new("cluster.local", "kube-system", "ingress").unwrap();
        let dns = SanType::DnsName("istiod.istio-system.svc".try_into().unwrap());
        let ip = SanType::IpAddress("10.0.0.1".parse().unwrap());
        let cases: Vec<(&str, Vec<SanType>, bool)> = vec![
            ("exactly the identity", vec![spiffe_san(&id)], true),
            ("no names", vec![], true),
            ("another identity", vec![spiffe_san(&other)], false),
            ("two URIs", vec![spiffe_san(&id), spiffe_san(&id)], false),
            (
                "identity and a DNS name",
                vec![spiffe_san(&id), dns.clone()],
                false,
            ),
            ("a DNS name", vec![dns], false),
            ("an IP address", vec![ip], false),
            (
                "an email",
                vec![SanType::Rfc822Name("a@b.c".try_into().unwrap())],
                false,
            ),
            (
                "a non-SPIFFE URI",
                vec![SanType::URI("https://edge/ingress".try_into().unwrap())],
                false,
            ),
        ];
        for (name, sans, ok) in cases {
            let csr = Csr::from_pem(&csr_pem(sans)).unwrap();
            assert_eq!(csr.check_names(&id).is_ok(), ok, "{name}: {csr:?}");
        }
    }

    #[test]
    fn bad_csrs_are_invalid_arguments() {
        let pem = csr_pem(vec![spiffe_san(&edge())]);
        let der = rustls_pemfile::csr(&mut pem.as_bytes()).unwrap().unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert_eq!(Csr::from_der(&bytes).unwrap_err(), CsrError::Signature);
        assert_eq!(Csr::from_pem("hello").unwrap_err(), CsrError::Pem);
        assert_eq!(
            Csr::from_pem(&format!("{pem}{pem}")).unwrap_err(),
            CsrError::Pem,
            "two CSRs"
        );
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()])
            .unwrap()
            .cert
            .pem();
        assert_eq!(Csr::from_pem(&cert).unwrap_err(), CsrError::Pem);
        assert!(matches!(
            Csr::from_der(&der.as_ref()[..der.as_ref().len() / 2]),
            Err(CsrError::Parse(_))
        ));
        assert_eq!(
            Csr::from_pem(&"x".repeat(MAX_CSR_BYTES + 1)).unwrap_err(),
            CsrError::TooLarge
        );
    }
}
