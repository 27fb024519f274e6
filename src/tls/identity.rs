//! The verified peer of a TLS connection, as routing, access logs and authorization see
//! it, and Envoy's `x-forwarded-client-cert` (XFCC) header built from it.
use crate::tls::material::LeafInfo;
use rustls_pki_types::CertificateDer;
use std::fmt::Write;

/// The peer certificate chain of a connection and the facts drawn from its leaf.
/// Computed once per connection, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The chain as presented, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Subject in RFC 2253 form.
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// The first `spiffe://` URI SAN: the workload identity in a mesh.
    pub spiffe_id: Option<String>,
    /// Lower-case hex SHA-256 of the leaf's DER (Envoy's `Hash`).
    pub sha256_hex: String,
}

impl PeerIdentity {
    /// Builds the identity from a peer chain (rustls' `peer_certificates()`); `None` when
    /// there is no certificate or the leaf cannot be parsed.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
        let leaf = chain.first()?;
        let info = LeafInfo::from_der(leaf, "peer").ok()?;
        let spiffe_id = info
            .uri_names
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .cloned();
        Some(PeerIdentity {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            subject: info.subject,
            dns_sans: info.dns_names,
            uri_sans: info.uri_names,
            spiffe_id,
            sha256_hex: hex::encode(info.sha256),
        })
    }
}

/// Which details go into this proxy's XFCC element (Envoy's
/// `set_current_client_cert_details`; `Hash` is always present).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

impl ClientCertDetails {
    /// What Istio configures on gateways: Subject, Cert, URI and DNS.
    pub const ISTIO: ClientCertDetails = ClientCertDetails {
        subject: true,
        cert: true,
        chain: false,
        dns: true,
        uri: true,
    };
}

/// Envoy's `forward_client_cert_details`: what happens to an incoming XFCC header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Remove it (Envoy's default).
    #[default]
    Sanitize,
    /// Forward it unchanged when the connection is mutual TLS, else remove it.
    ForwardOnly,
    /// On mutual TLS, append this proxy's element; else remove it.
    AppendForward,
    /// On mutual TLS, replace it with this proxy's element; else remove it.
    SanitizeSet,
    /// Always forward it unchanged.
    AlwaysForwardOnly,
}

impl ForwardClientCert {
    /// From the proto enum value of `HttpConnectionManager.forward_client_cert_details`.
    pub fn from_proto(v: i32) -> Option<ForwardClientCert> {
        Some(match v {
            0 => ForwardClientCert::Sanitize,
            1 => ForwardClientCert::ForwardOnly,
            2 => ForwardClientCert::AppendForward,
            3 => ForwardClientCert::SanitizeSet,
            4 => ForwardClientCert::AlwaysForwardOnly,
            _ => return None,
        })
    }
}

impl PeerIdentity {
    /// The leaf certificate as URL-encoded PEM (Envoy's `%DOWNSTREAM_PEER_CERT%` and the
    /// ext_authz `certificate` attribute).
    pub fn leaf_pem_url_encoded(&self) -> Option<String> {
        self.chain.first().map(|leaf| url_encode(&pem(leaf)))
    }
}

/// This proxy's XFCC element for `peer`: `By=` (each URI SAN of the local certificate),
/// `Hash=`, then the selected details in Envoy's order (Cert, Chain, Subject, URI, DNS).
pub fn xfcc_element(
    peer: &PeerIdentity,
    local_uri_sans: &[String],
    details: ClientCertDetails,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for by in local_uri_sans {
        parts.push(format!("By={by}"));
    }
    parts.push(format!("Hash={}", peer.sha256_hex));
    if details.cert
        && let Some(leaf) = peer.chain.first()
    {
        parts.push(format!("Cert=\"{}\"", url_encode(&pem(leaf))));
    }
    if details.chain {
        let all: String = peer.chain.iter().map(|c| pem(c)).collect();
        parts.push(format!("Chain=\"{}\"", url_encode(&all)));
    }
    if details.subject {
        parts.push(format!("Subject=\"{}\"", peer.subject));
    }
    if details.uri {
        if peer.uri_sans.is_empty() {
            parts.push("URI=".to_string());
        }
        for u in &peer.uri_sans {
            parts.push(format!("URI={u}"));
        }
    }
    if details.dns {
        for d in &peer.dns_sans {
            parts.push(format!("DNS={d}"));
        }
    }
    parts.join(";")
}

/// The XFCC header value to send upstream: `None` removes the header.
/// `element` is this proxy's element when the connection is mutual TLS (a verified peer
/// certificate), `None` otherwise.
pub fn xfcc_header(
    mode: ForwardClientCert,
    incoming: Option<&str>,
    element: Option<&str>,
) -> Option<String> {
    match (mode, element) {
        (ForwardClientCert::Sanitize, _) => None,
        (ForwardClientCert::AlwaysForwardOnly, _) => incoming.map(str::to_string),
        (_, None) => None,
        (ForwardClientCert::ForwardOnly, Some(_)) => incoming.map(str::to_string),
        (ForwardClientCert::SanitizeSet, Some(e)) => Some(e.to_string()),
        (ForwardClientCert::AppendForward, Some(e)) => Some(match incoming {
            Some(prev) if !prev.is_empty() => format!("{prev},{e}"),
            _ => e.to_string(),
        }),
    }
}

fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["client.example.com".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        ));
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "client");
        let cert = p.self_signed(&key).unwrap();
        PeerIdentity::from_chain(&[cert.der().clone()]).unwrap()
    }

    #[test]
    fn identity_fields() {
        let p = peer();
        assert_eq!(
            p.spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(p.dns_sans, vec!["client.example.com"]);
        assert!(p.subject.contains("CN=client"), "{}", p.subject);
        assert_eq!(p.sha256_hex.len(), 64);
    }

    #[test]
    fn xfcc_element_and_modes() {
        let p = peer();
        let e = xfcc_element(&p, &["spiffe://gw".to_string()], ClientCertDetails::ISTIO);
        assert!(
            e.starts_with(&format!(
                "By=spiffe://gw;Hash={};Cert=\"-----BEGIN%20CERTIFICATE-----%0A",
                p.sha256_hex
            )),
            "{e}"
        );
        assert!(
            e.ends_with(";URI=spiffe://cluster.local/ns/a/sa/b;DNS=client.example.com"),
            "{e}"
        );
        assert!(e.contains(&format!(";Subject=\"{}\";", p.subject)), "{e}");
        let hash_only = xfcc_element(&p, &[], ClientCertDetails::default());
        assert_eq!(hash_only, format!("Hash={}", p.sha256_hex));

        use ForwardClientCert::*;
        let cases = [
            (Sanitize, Some("x"), Some("e"), None),
            (ForwardOnly, Some("x"), Some("e"), Some("x")),
            (ForwardOnly, Some("x"), None, None),
            (AppendForward, Some("x"), Some("e"), Some("x,e")),
            (AppendForward, None, Some("e"), Some("e")),
            (SanitizeSet, Some("x"), Some("e"), Some("e")),
            (SanitizeSet, Some("x"), None, None),
            (AlwaysForwardOnly, Some("x"), None, Some("x")),
        ];
        for (mode, incoming, element, want) in cases {
            assert_eq!(
                xfcc_header(mode, incoming, element).as_deref(),
                want,
                "{mode:?}"
            );
        }
    }
}
