//! Peer certificate verification from Envoy's `CertificateValidationContext`: the CA
//! bundle and CRLs (webpki, via rustls), then Envoy's extra checks on the leaf — subject
//! alternative name matchers, SPKI pins and certificate hash pins.
//!
//! The verifiers read the validation material from a watch at handshake time, so a
//! rotated CA bundle (an SDS `-cacert` secret or a watched file) applies to the next
//! handshake without rebuilding the TLS configuration.
use crate::tls::error::TlsError;
use crate::tls::material::TrustMaterial;
use crate::tls::stats::TlsStats;
use crate::tls::store::{ValidationWatch, read_data_source};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SubjectAltNameMatcher, certificate_validation_context,
    subject_alt_name_matcher::SanType,
};
use crate::xds::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How a string from a certificate is matched (Envoy's `StringMatcher`, regex compiled once).
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

/// A compiled `StringMatcher`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

impl Matcher {
    /// Compiles an Envoy `StringMatcher`.
    pub fn from_proto(m: &StringMatcher, field: &str) -> Result<Matcher, TlsError> {
        let lower = |s: &str| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(lower(s)),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(lower(s)),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(lower(s)),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(lower(s)),
            Some(MatchPattern::SafeRegex(r)) => {
                // Envoy anchors regexes: the whole value must match.
                let anchored = format!("^(?:{})$", r.regex);
                StringMatch::Regex(
                    regex::RegexBuilder::new(&anchored)
                        .case_insensitive(m.ignore_case)
                        .build()
                        .map_err(|e| TlsError::invalid(field, format!("bad regex: {e}")))?,
                )
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(TlsError::unsupported(
                    field,
                    "custom string matchers are not supported",
                ));
            }
            None => return Err(TlsError::invalid(field, "string matcher has no pattern")),
        };
        Ok(Matcher {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let owned;
        let v = if self.ignore_case && !matches!(self.pattern, StringMatch::Regex(_)) {
            owned = value.to_ascii_lowercase();
            owned.as_str()
        } else {
            value
        };
        match &self.pattern {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }

    /// DNS SANs: an exact matcher also accepts a wildcard SAN covering it
    /// (`*.example.com` matches `a.example.com`), as Envoy's DNS SAN matcher does.
    fn matches_dns(&self, san: &str) -> bool {
        if self.matches(san) {
            return true;
        }
        match (&self.pattern, san.strip_prefix("*.")) {
            (StringMatch::Exact(want), Some(suffix)) => {
                want.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
                })
            }
            _ => false,
        }
    }
}

/// A subject alternative name matcher; `san_type` `None` means any of DNS, URI, email
/// and IP (the legacy `match_subject_alt_names`).
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: Option<SanType>,
    pub matcher: Matcher,
}

/// Envoy's checks on the leaf certificate beyond the chain.
#[derive(Debug, Clone, Default)]
pub struct PeerRules {
    pub san_matchers: Vec<SanMatcher>,
    /// SHA-256 of acceptable SubjectPublicKeyInfo (`verify_certificate_spki`).
    pub spki_pins: Vec<[u8; 32]>,
    /// SHA-256 of acceptable certificates (`verify_certificate_hash`).
    pub hash_pins: Vec<[u8; 32]>,
}

impl PeerRules {
    fn is_empty(&self) -> bool {
        self.san_matchers.is_empty() && self.spki_pins.is_empty() && self.hash_pins.is_empty()
    }

    /// Checks a leaf against every rule set in `rules` taken together (Envoy concatenates
    /// the repeated fields of a combined validation context): hash or SPKI pins (any of
    /// either), then SAN matchers (any matcher against any SAN).
    pub fn check(rules: &[&PeerRules], leaf: &[u8]) -> Result<(), String> {
        let has_pins = rules
            .iter()
            .any(|r| !r.spki_pins.is_empty() || !r.hash_pins.is_empty());
        let has_sans = rules.iter().any(|r| !r.san_matchers.is_empty());
        if !has_pins && !has_sans {
            return Ok(());
        }
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| format!("cannot parse peer certificate: {e}"))?;
        if has_pins {
            let hash: [u8; 32] = Sha256::digest(leaf).into();
            let spki: [u8; 32] = Sha256::digest(cert.public_key().raw).into();
            let pinned = rules
                .iter()
                .any(|r| r.hash_pins.contains(&hash) || r.spki_pins.contains(&spki));
            if !pinned {
                return Err("peer certificate matches neither verify_certificate_hash nor verify_certificate_spki".into());
            }
        }
        if has_sans {
            let mut sans: Vec<(SanType, String)> = Vec::new();
            if let Ok(Some(ext)) = cert.subject_alternative_name() {
                for n in &ext.value.general_names {
                    match n {
                        GeneralName::DNSName(d) => sans.push((SanType::Dns, d.to_string())),
                        GeneralName::URI(u) => sans.push((SanType::Uri, u.to_string())),
                        GeneralName::RFC822Name(e) => sans.push((SanType::Email, e.to_string())),
                        GeneralName::IPAddress(ip) => {
                            if let Some(ip) = ip_to_string(ip) {
                                sans.push((SanType::IpAddress, ip));
                            }
                        }
                        _ => {}
                    }
                }
            }
            let ok = rules.iter().flat_map(|r| &r.san_matchers).any(|m| {
                sans.iter().any(|(ty, value)| {
                    if m.san_type.is_some_and(|want| want != *ty) {
                        return false;
                    }
                    if *ty == SanType::Dns {
                        m.matcher.matches_dns(value)
                    } else {
                        m.matcher.matches(value)
                    }
                })
            });
            if !ok {
                return Err("peer certificate has no subject alternative name matching the validation context".into());
            }
        }
        Ok(())
    }
}

fn ip_to_string(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}

fn hex_pin(s: &str, field: &str) -> Result<[u8; 32], TlsError> {
    let cleaned: String = s.chars().filter(|c| *c != ':').collect();
    let v = hex::decode(&cleaned).map_err(|e| TlsError::invalid(field, format!("`{s}`: {e}")))?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| TlsError::invalid(field, format!("`{s}`: not a SHA-256 hash")))
}

fn b64_pin(s: &str, field: &str) -> Result<[u8; 32], TlsError> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| TlsError::invalid(field, format!("`{s}`: {e}")))?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| TlsError::invalid(field, format!("`{s}`: not a SHA-256 hash")))
}

/// A parsed validation context: trust anchors (optional when pins alone are used) and
/// rules, with verifiers built on first use.
#[derive(Debug)]
pub struct ValidationMaterial {
    pub trust: Option<TrustMaterial>,
    pub rules: PeerRules,
    /// Only the leaf's revocation is checked (`only_verify_leaf_cert_crl`).
    pub only_leaf_crl: bool,
    /// SHA-256 over the inputs, to skip publishing unchanged material.
    pub digest: [u8; 32],
    client_verifier: OnceLock<Result<Arc<dyn ClientCertVerifier>, String>>,
    server_verifier: OnceLock<Result<Arc<rustls::client::WebPkiServerVerifier>, String>>,
}

impl ValidationMaterial {
    /// Parses a `CertificateValidationContext`, reading its data sources. Fields meshgate
    /// does not implement are refused with an error naming them.
    pub fn from_context(
        vc: &CertificateValidationContext,
        name: &str,
    ) -> Result<ValidationMaterial, TlsError> {
        let field = |f: &str| format!("{name}: validation_context.{f}");
        if vc.allow_expired_certificate {
            return Err(TlsError::unsupported(
                &field("allow_expired_certificate"),
                "expired peer certificates are never accepted",
            ));
        }
        if vc.trust_chain_verification
            == certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32
        {
            return Err(TlsError::unsupported(
                &field("trust_chain_verification"),
                "ACCEPT_UNTRUSTED is not supported",
            ));
        }
        if vc.custom_validator_config.is_some() {
            return Err(TlsError::unsupported(
                &field("custom_validator_config"),
                "custom certificate validators are not supported",
            ));
        }
        #[allow(deprecated)]
        if vc.ca_certificate_provider_instance.is_some() {
            return Err(TlsError::unsupported(
                &field("ca_certificate_provider_instance"),
                "certificate providers are not supported",
            ));
        }
        if vc
            .require_signed_certificate_timestamp
            .is_some_and(|b| b.value)
        {
            return Err(TlsError::unsupported(
                &field("require_signed_certificate_timestamp"),
                "not supported",
            ));
        }
        if vc.max_verify_depth.is_some() {
            return Err(TlsError::unsupported(
                &field("max_verify_depth"),
                "not supported",
            ));
        }
        let mut digest = Sha256::new();
        let trust = match &vc.trusted_ca {
            Some(ds) => {
                let ca = read_data_source(ds, &field("trusted_ca"))?;
                let crl = match &vc.crl {
                    Some(ds) => Some(read_data_source(ds, &field("crl"))?),
                    None => None,
                };
                let t = TrustMaterial::from_pem(&ca, crl.as_deref(), &field("trusted_ca"))?;
                digest.update(t.digest);
                Some(t)
            }
            // Without trusted_ca, the platform's roots when asked for.
            None if vc.system_root_certs.is_some() => {
                if vc.crl.is_some() {
                    return Err(TlsError::unsupported(
                        &field("crl"),
                        "a CRL with system roots is not supported",
                    ));
                }
                let t = TrustMaterial::system()?;
                digest.update(t.digest);
                Some(t)
            }
            None => {
                if vc.crl.is_some() {
                    return Err(TlsError::invalid(&field("crl"), "a CRL needs trusted_ca"));
                }
                None
            }
        };
        let mut rules = PeerRules::default();
        for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
            rules.san_matchers.push(typed_san_matcher(
                m,
                &field(&format!("match_typed_subject_alt_names[{i}]")),
            )?);
        }
        #[allow(deprecated)]
        for (i, m) in vc.match_subject_alt_names.iter().enumerate() {
            rules.san_matchers.push(SanMatcher {
                san_type: None,
                matcher: Matcher::from_proto(m, &field(&format!("match_subject_alt_names[{i}]")))?,
            });
        }
        for s in &vc.verify_certificate_spki {
            rules
                .spki_pins
                .push(b64_pin(s, &field("verify_certificate_spki"))?);
        }
        for s in &vc.verify_certificate_hash {
            rules
                .hash_pins
                .push(hex_pin(s, &field("verify_certificate_hash"))?);
        }
        for m in &rules.san_matchers {
            digest.update(format!("{:?}{:?}", m.san_type, m.matcher.pattern).as_bytes());
        }
        for p in rules.spki_pins.iter().chain(&rules.hash_pins) {
            digest.update(p);
        }
        digest.update([vc.only_verify_leaf_cert_crl as u8]);
        Ok(ValidationMaterial {
            trust,
            rules,
            only_leaf_crl: vc.only_verify_leaf_cert_crl,
            digest: digest.finalize().into(),
            client_verifier: OnceLock::new(),
            server_verifier: OnceLock::new(),
        })
    }

    /// Whether there is anything to verify a peer with.
    pub fn is_empty(&self) -> bool {
        self.trust.is_none() && self.rules.is_empty()
    }

    fn client_verifier(&self) -> Option<Result<Arc<dyn ClientCertVerifier>, String>> {
        let trust = self.trust.as_ref()?;
        Some(
            self.client_verifier
                .get_or_init(|| {
                    let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        trust.roots.clone(),
                        crate::tls::provider(),
                    )
                    .with_crls(trust.crls.iter().cloned());
                    if self.only_leaf_crl {
                        b = b.only_check_end_entity_revocation();
                    }
                    b.build().map_err(|e| e.to_string())
                })
                .clone(),
        )
    }

    fn server_verifier(&self) -> Option<Result<Arc<rustls::client::WebPkiServerVerifier>, String>> {
        let trust = self.trust.as_ref()?;
        Some(
            self.server_verifier
                .get_or_init(|| {
                    let mut b = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        trust.roots.clone(),
                        crate::tls::provider(),
                    )
                    .with_crls(trust.crls.iter().cloned());
                    if self.only_leaf_crl {
                        b = b.only_check_end_entity_revocation();
                    }
                    b.build().map_err(|e| e.to_string())
                })
                .clone(),
        )
    }
}

fn typed_san_matcher(m: &SubjectAltNameMatcher, field: &str) -> Result<SanMatcher, TlsError> {
    let san_type = match SanType::try_from(m.san_type) {
        Ok(SanType::Dns) => SanType::Dns,
        Ok(SanType::Uri) => SanType::Uri,
        Ok(SanType::Email) => SanType::Email,
        Ok(SanType::IpAddress) => SanType::IpAddress,
        Ok(SanType::OtherName) => {
            return Err(TlsError::unsupported(
                field,
                "OTHER_NAME SANs are not supported",
            ));
        }
        _ => return Err(TlsError::invalid(field, "san_type is required")),
    };
    let matcher = m
        .matcher
        .as_ref()
        .ok_or_else(|| TlsError::invalid(field, "matcher is required"))?;
    Ok(SanMatcher {
        san_type: Some(san_type),
        matcher: Matcher::from_proto(matcher, field)?,
    })
}

/// Where a verifier gets its validation material: a fixed context from the TLS context
/// itself, an SDS secret by name, or both combined (Envoy's
/// `combined_validation_context`: the secret's CA, both sets of rules, and the default
/// context's CRL for the secret's CA).
#[derive(Clone, Debug)]
pub struct ValidationSource {
    pub default: Option<Arc<ValidationMaterial>>,
    pub dynamic: Option<ValidationWatch>,
    /// A CRL the default context gives for the secret's CA.
    pub default_crls: Option<Arc<DefaultCrls>>,
}

impl ValidationSource {
    /// The CA in force (the secret's, else the default's) and the rule sets to apply.
    fn resolve(
        &self,
    ) -> (
        Option<Arc<ValidationMaterial>>,
        Option<Arc<ValidationMaterial>>,
    ) {
        let dynamic = self.dynamic.as_ref().and_then(|w| w.borrow().clone());
        let dynamic = match (dynamic, &self.default_crls) {
            (Some(d), Some(crls)) => Some(crls.apply(d)),
            (d, _) => d,
        };
        (dynamic, self.default.clone())
    }

    /// Whether SAN matchers or certificate pins are in force: Envoy then requires a peer
    /// certificate even where `require_client_certificate` is false.
    pub fn has_peer_rules(&self) -> bool {
        let dynamic = self
            .dynamic
            .as_ref()
            .is_some_and(|w| w.borrow().as_ref().is_some_and(|m| !m.rules.is_empty()));
        dynamic || self.default.as_ref().is_some_and(|m| !m.rules.is_empty())
    }
}

/// CRLs set in the default part of a combined validation context whose CA comes from an
/// SDS secret (Istio writes a file `caCrl` so, next to a `file-root:` secret). Envoy
/// merges the secret into the default context, so these CRLs apply to the secret's CA
/// unless the secret brings CRLs of its own.
#[derive(Debug)]
pub struct DefaultCrls {
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    only_leaf: bool,
    digest: [u8; 32],
    /// The last secret material merged, and the result (one handshake's lock, no await).
    merged: std::sync::Mutex<Option<(Arc<ValidationMaterial>, Arc<ValidationMaterial>)>>,
}

impl DefaultCrls {
    /// Parses PEM CRLs; `only_leaf` is the default context's `only_verify_leaf_cert_crl`.
    pub fn from_pem(pem: &[u8], only_leaf: bool, what: &str) -> Result<DefaultCrls, TlsError> {
        Ok(DefaultCrls {
            crls: crate::tls::material::parse_crls(pem, what)?,
            only_leaf,
            digest: Sha256::digest(pem).into(),
            merged: std::sync::Mutex::new(None),
        })
    }

    /// The secret's material with these CRLs on its CA (the secret's own CRLs win).
    fn apply(&self, secret: Arc<ValidationMaterial>) -> Arc<ValidationMaterial> {
        let Some(trust) = secret.trust.as_ref().filter(|t| t.crls.is_empty()) else {
            return secret;
        };
        let mut cache = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, merged)) = cache.as_ref()
            && Arc::ptr_eq(from, &secret)
        {
            return merged.clone();
        }
        let digest = |a: &[u8; 32]| -> [u8; 32] {
            let mut d = Sha256::new();
            d.update(a);
            d.update(self.digest);
            d.finalize().into()
        };
        let merged = Arc::new(ValidationMaterial {
            trust: Some(TrustMaterial {
                roots: trust.roots.clone(),
                ca_certificates: trust.ca_certificates.clone(),
                crls: self.crls.clone(),
                digest: digest(&trust.digest),
            }),
            rules: secret.rules.clone(),
            only_leaf_crl: secret.only_leaf_crl || self.only_leaf,
            digest: digest(&secret.digest),
            client_verifier: OnceLock::new(),
            server_verifier: OnceLock::new(),
        });
        *cache = Some((secret, merged.clone()));
        merged
    }
}

fn rejected(stats: &TlsStats, reason: String) -> rustls::Error {
    TlsStats::bump(&stats.peer_certificate_rejected);
    tracing::debug!(%reason, "peer certificate rejected");
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        PeerRejected(reason),
    ))))
}

/// Why a peer certificate was refused by Envoy-style rules (carried inside rustls errors).
#[derive(Debug)]
pub struct PeerRejected(pub String);

impl std::fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PeerRejected {}

/// Verifies client certificates on a downstream TLS context (MUTUAL / OPTIONAL_MUTUAL).
#[derive(Debug)]
pub struct DownstreamClientVerifier {
    pub source: ValidationSource,
    /// `require_client_certificate`: a handshake without a client certificate fails (as
    /// it does whenever the validation context has SAN matchers or pins).
    pub mandatory: bool,
    pub stats: Arc<TlsStats>,
}

impl ClientCertVerifier for DownstreamClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory || self.source.has_peer_rules()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA list can change under a live configuration; rather than pin one, no hints
        // are sent (clients then offer their configured certificate).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (dynamic, default) = self.source.resolve();
        let trust_from = dynamic
            .as_ref()
            .filter(|m| m.trust.is_some())
            .or(default.as_ref().filter(|m| m.trust.is_some()));
        match trust_from.and_then(|m| m.client_verifier()) {
            Some(Ok(v)) => {
                v.verify_client_cert(end_entity, intermediates, now)
                    .map_err(|e| {
                        TlsStats::bump(&self.stats.peer_certificate_rejected);
                        tracing::debug!(error = %e, "client certificate rejected");
                        e
                    })?;
            }
            Some(Err(e)) => {
                return Err(rejected(
                    &self.stats,
                    format!("validation context unusable: {e}"),
                ));
            }
            None => {
                let pinned = [&dynamic, &default]
                    .into_iter()
                    .flatten()
                    .any(|m| !m.rules.spki_pins.is_empty() || !m.rules.hash_pins.is_empty());
                if !pinned {
                    return Err(rejected(
                        &self.stats,
                        "no trusted CA available for client certificates".into(),
                    ));
                }
            }
        }
        let rules: Vec<&PeerRules> = [&dynamic, &default]
            .into_iter()
            .flatten()
            .map(|m| &m.rules)
            .collect();
        PeerRules::check(&rules, end_entity).map_err(|r| rejected(&self.stats, r))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies server certificates on an upstream TLS context. Like Envoy, the chain is
/// verified against the CA and the leaf against the SAN matchers; the host name is only
/// compared with the certificate when `auto_sni_san_validation` asks for it.
#[derive(Debug)]
pub struct UpstreamServerVerifier {
    pub source: ValidationSource,
    pub check_server_name: bool,
    pub stats: Arc<TlsStats>,
}

impl ServerCertVerifier for UpstreamServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (dynamic, default) = self.source.resolve();
        let trust_from = dynamic
            .as_ref()
            .filter(|m| m.trust.is_some())
            .or(default.as_ref().filter(|m| m.trust.is_some()));
        match trust_from.and_then(|m| m.server_verifier()) {
            Some(Ok(v)) => match v.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                // webpki checks the chain before the name: a name error means the chain is good.
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_server_name => {}
                Err(e) => {
                    TlsStats::bump(&self.stats.peer_certificate_rejected);
                    return Err(e);
                }
            },
            Some(Err(e)) => {
                return Err(rejected(
                    &self.stats,
                    format!("validation context unusable: {e}"),
                ));
            }
            None => {
                let pinned = [&dynamic, &default]
                    .into_iter()
                    .flatten()
                    .any(|m| !m.rules.spki_pins.is_empty() || !m.rules.hash_pins.is_empty());
                if !pinned {
                    return Err(rejected(
                        &self.stats,
                        "no trusted CA available for the server certificate".into(),
                    ));
                }
            }
        }
        let rules: Vec<&PeerRules> = [&dynamic, &default]
            .into_iter()
            .flatten()
            .map(|m| &m.rules)
            .collect();
        PeerRules::check(&rules, end_entity).map_err(|r| rejected(&self.stats, r))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(MatchPattern::Exact(s.into())),
            ignore_case: false,
        }
    }

    fn leaf(sans: &[rcgen::SanType]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = sans.to_vec();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn san_rules_table() {
        let spiffe = "spiffe://cluster.local/ns/default/sa/client";
        let cert = leaf(&[
            rcgen::SanType::DnsName("*.example.com".try_into().unwrap()),
            rcgen::SanType::URI(spiffe.try_into().unwrap()),
            rcgen::SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ]);
        let typed = |ty: SanType, m: StringMatcher| SanMatcher {
            san_type: Some(ty),
            matcher: Matcher::from_proto(&m, "t").unwrap(),
        };
        let regex = StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(
                crate::xds::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "spiffe://cluster\\.local/ns/[a-z]+/sa/client".into(),
                    ..Default::default()
                },
            )),
            ignore_case: false,
        };
        let cases: Vec<(&str, SanMatcher, bool)> = vec![
            ("uri exact", typed(SanType::Uri, exact(spiffe)), true),
            (
                "uri other",
                typed(SanType::Uri, exact("spiffe://x/y")),
                false,
            ),
            (
                "dns wildcard covers",
                typed(SanType::Dns, exact("a.example.com")),
                true,
            ),
            (
                "dns wildcard not apex",
                typed(SanType::Dns, exact("example.com")),
                false,
            ),
            (
                "dns not two labels",
                typed(SanType::Dns, exact("a.b.example.com")),
                false,
            ),
            ("wrong type", typed(SanType::Dns, exact(spiffe)), false),
            ("ip", typed(SanType::IpAddress, exact("10.0.0.1")), true),
            ("regex", typed(SanType::Uri, regex), true),
            (
                "untyped any",
                SanMatcher {
                    san_type: None,
                    matcher: Matcher::from_proto(&exact(spiffe), "t").unwrap(),
                },
                true,
            ),
        ];
        for (name, m, want) in cases {
            let rules = PeerRules {
                san_matchers: vec![m],
                ..Default::default()
            };
            assert_eq!(PeerRules::check(&[&rules], &cert).is_ok(), want, "{name}");
        }
    }

    #[test]
    fn pins_accept_either_hash_or_spki() {
        let cert = leaf(&[]);
        let (_, parsed) = X509Certificate::from_der(&cert).unwrap();
        let spki: [u8; 32] = Sha256::digest(parsed.public_key().raw).into();
        let hash: [u8; 32] = Sha256::digest(&cert).into();
        let other = [7u8; 32];
        let check = |h: Vec<[u8; 32]>, s: Vec<[u8; 32]>| {
            PeerRules::check(
                &[&PeerRules {
                    hash_pins: h,
                    spki_pins: s,
                    san_matchers: vec![],
                }],
                &cert,
            )
            .is_ok()
        };
        assert!(check(vec![hash], vec![]));
        assert!(check(vec![other], vec![spki]));
        assert!(!check(vec![other], vec![other]));
        // Envoy's hash format (colon-separated upper-case hex) parses.
        let colon = hash
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(hex_pin(&colon, "f").unwrap(), hash);
        assert!(hex_pin("zz", "f").is_err());
        assert!(b64_pin("AAAA", "f").is_err());
    }

    #[test]
    fn a_default_crl_applies_to_the_secrets_ca() {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
            KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |serial: u64| {
            let mut p = CertificateParams::new(vec!["client.example.com".to_string()]).unwrap();
            p.serial_number = Some(SerialNumber::from(serial));
            p.signed_by(&KeyPair::generate().unwrap(), &issuer)
                .unwrap()
                .der()
                .clone()
        };
        let (good, revoked) = (leaf(1), leaf(2));
        let now = time::OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(2u64),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .pem()
        .unwrap();

        // The secret brings the CA only; the default context the CRL.
        let secret = CertificateValidationContext {
            trusted_ca: Some(crate::xds::pb::envoy::config::core::v3::DataSource {
                specifier: Some(
                    crate::xds::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        ca_pem,
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let material = Arc::new(ValidationMaterial::from_context(&secret, "secret").unwrap());
        let (_tx, rx) = tokio::sync::watch::channel(Some(material));
        let verdicts = |default_crls: Option<Arc<DefaultCrls>>| {
            let source = ValidationSource {
                default: None,
                dynamic: Some(rx.clone()),
                default_crls,
            };
            let (dynamic, _) = source.resolve();
            let again = source.resolve().0.unwrap();
            let dynamic = dynamic.unwrap();
            assert!(Arc::ptr_eq(&dynamic, &again), "merged once, then reused");
            let v = dynamic.client_verifier().unwrap().unwrap();
            let at = UnixTime::now();
            (
                v.verify_client_cert(&good, &[], at).is_ok(),
                v.verify_client_cert(&revoked, &[], at).is_ok(),
            )
        };
        assert_eq!(verdicts(None), (true, true));
        let crls = DefaultCrls::from_pem(crl.as_bytes(), false, "crl").unwrap();
        assert_eq!(verdicts(Some(Arc::new(crls))), (true, false));
    }

    #[test]
    fn system_roots_load() {
        let vc = CertificateValidationContext {
            system_root_certs: Some(certificate_validation_context::SystemRootCerts {}),
            ..Default::default()
        };
        let m = ValidationMaterial::from_context(&vc, "file-root:system").unwrap();
        assert!(m.trust.as_ref().unwrap().roots.len() > 10);
    }

    #[test]
    fn refuses_unsupported_validation_fields() {
        let vc = CertificateValidationContext {
            allow_expired_certificate: true,
            ..Default::default()
        };
        let e = ValidationMaterial::from_context(&vc, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_expired_certificate"), "{e}");
    }
}
