//! Envoy's `TlsParameters` mapped to rustls: protocol versions, TLS 1.2 cipher suites in
//! OpenSSL/BoringSSL names (bracketed equal-preference groups accepted), ECDH curves.
//!
//! rustls implements TLS 1.2 and 1.3 only, with AEAD suites only. A minimum below
//! TLS 1.2 is raised to 1.2 (there is nothing older to negotiate); a maximum below 1.2, a
//! list with no usable suite, or an unknown name is an error. Known suites rustls lacks
//! (CBC, static RSA) are skipped with a warning when others remain, so that Istio users'
//! usual lists keep working.
use crate::tls::error::TlsError;
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    TlsParameters, tls_parameters::TlsProtocol,
};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite as cs, kx_group};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use std::sync::Arc;

/// Which side the parameters are for: Envoy's defaults differ (upstream connections
/// default to at most TLS 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// Resolved parameters: the provider (suites, groups) and protocol versions to use.
#[derive(Debug, Clone)]
pub struct ResolvedParams {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

/// TLS 1.2 suites by OpenSSL name; `None` for names BoringSSL knows that rustls lacks.
fn tls12_suite(name: &str) -> Result<Option<SupportedCipherSuite>, ()> {
    Ok(Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "AES128-SHA"
        | "AES256-SHA"
        | "DES-CBC3-SHA"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-AES256-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305"
        | "PSK-AES128-CBC-SHA"
        | "PSK-AES256-CBC-SHA" => {
            return Ok(None);
        }
        _ => return Err(()),
    }))
}

fn kx(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    Some(match name {
        "X25519" => kx_group::X25519,
        "P-256" | "prime256v1" | "secp256r1" => kx_group::SECP256R1,
        "P-384" | "secp384r1" => kx_group::SECP384R1,
        "X25519MLKEM768" => kx_group::X25519MLKEM768,
        _ => return None,
    })
}

fn version_number(v: i32) -> u8 {
    match TlsProtocol::try_from(v) {
        Ok(TlsProtocol::TlSv10) => 10,
        Ok(TlsProtocol::TlSv11) => 11,
        Ok(TlsProtocol::TlSv12) => 12,
        Ok(TlsProtocol::TlSv13) => 13,
        _ => 0,
    }
}

/// Resolves `TlsParameters` (absent = Envoy's defaults for `side`).
pub fn resolve(
    params: Option<&TlsParameters>,
    side: Side,
    field: &str,
) -> Result<ResolvedParams, TlsError> {
    let default_max = match side {
        Side::Downstream => 13,
        Side::Upstream => 12,
    };
    let Some(p) = params else {
        return Ok(ResolvedParams {
            provider: crate::tls::provider(),
            versions: versions(12, default_max),
        });
    };
    let mut min = match version_number(p.tls_minimum_protocol_version) {
        0 => 12,
        v => v,
    };
    let max = match version_number(p.tls_maximum_protocol_version) {
        0 => default_max,
        v => v,
    };
    if max < 12 {
        return Err(TlsError::unsupported(
            &format!("{field}.tls_maximum_protocol_version"),
            "TLS 1.0 and 1.1 are not supported; the maximum must be TLSv1_2 or TLSv1_3",
        ));
    }
    if min < 12 {
        tracing::info!(
            field,
            "TLS minimum below 1.2 raised to 1.2 (older versions are not implemented)"
        );
        min = 12;
    }
    if min > max {
        return Err(TlsError::invalid(
            &format!("{field}.tls_minimum_protocol_version"),
            "is above tls_maximum_protocol_version",
        ));
    }
    if !p.signature_algorithms.is_empty() {
        return Err(TlsError::unsupported(
            &format!("{field}.signature_algorithms"),
            "not supported",
        ));
    }
    if !p.compliance_policies.is_empty() {
        return Err(TlsError::unsupported(
            &format!("{field}.compliance_policies"),
            "not supported",
        ));
    }
    let base = crate::tls::provider();
    let mut provider = (*base).clone();
    if !p.cipher_suites.is_empty() {
        let mut tls12 = Vec::new();
        for entry in &p.cipher_suites {
            // `[A|B]` is an equal-preference group; rustls has no such notion, order kept.
            for name in entry.trim_matches(|c| c == '[' || c == ']').split('|') {
                let name = name.trim();
                match tls12_suite(name) {
                    Ok(Some(s)) => {
                        if !tls12
                            .iter()
                            .any(|x: &SupportedCipherSuite| x.suite() == s.suite())
                        {
                            tls12.push(s);
                        }
                    }
                    Ok(None) => tracing::warn!(
                        field,
                        suite = name,
                        "cipher suite not implemented by rustls; skipped"
                    ),
                    Err(()) => {
                        return Err(TlsError::invalid(
                            &format!("{field}.cipher_suites"),
                            format!("unknown cipher suite `{name}`"),
                        ));
                    }
                }
            }
        }
        if tls12.is_empty() && min <= 12 {
            return Err(TlsError::invalid(
                &format!("{field}.cipher_suites"),
                "none of the listed cipher suites is supported (rustls implements ECDHE with AES-GCM or CHACHA20-POLY1305)",
            ));
        }
        // TLS 1.3 suites are not configurable in Envoy either.
        let mut suites: Vec<SupportedCipherSuite> = base
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        suites.extend(tls12);
        provider.cipher_suites = suites;
    }
    if !p.ecdh_curves.is_empty() {
        let mut groups = Vec::new();
        for name in &p.ecdh_curves {
            match kx(name.trim()) {
                Some(g) => groups.push(g),
                None => {
                    return Err(TlsError::invalid(
                        &format!("{field}.ecdh_curves"),
                        format!(
                            "unsupported curve `{name}` (X25519, P-256, P-384, X25519MLKEM768)"
                        ),
                    ));
                }
            }
        }
        provider.kx_groups = groups;
    }
    Ok(ResolvedParams {
        provider: if p.cipher_suites.is_empty() && p.ecdh_curves.is_empty() {
            base
        } else {
            Arc::new(provider)
        },
        versions: versions(min, max),
    })
}

fn versions(min: u8, max: u8) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::new();
    if min <= 13 && max >= 13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= 12 && max >= 12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        min: TlsProtocol,
        max: TlsProtocol,
        suites: &[&str],
        curves: &[&str],
    ) -> TlsParameters {
        TlsParameters {
            tls_minimum_protocol_version: min as i32,
            tls_maximum_protocol_version: max as i32,
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            ecdh_curves: curves.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_table() {
        use TlsProtocol::*;
        let cases = [
            (TlsAuto, TlsAuto, Side::Downstream, Some(vec![13, 12])),
            (TlsAuto, TlsAuto, Side::Upstream, Some(vec![12])),
            (TlSv13, TlsAuto, Side::Downstream, Some(vec![13])),
            (TlSv10, TlSv12, Side::Downstream, Some(vec![12])),
            (TlsAuto, TlSv11, Side::Downstream, None),
            (TlSv13, TlSv12, Side::Downstream, None),
        ];
        for (min, max, side, want) in cases {
            let got = resolve(Some(&params(min, max, &[], &[])), side, "t")
                .ok()
                .map(|r| {
                    r.versions
                        .iter()
                        .map(|v| {
                            if v.version == rustls::ProtocolVersion::TLSv1_3 {
                                13
                            } else {
                                12
                            }
                        })
                        .collect::<Vec<_>>()
                });
            assert_eq!(got, want, "{min:?}..{max:?} {side:?}");
        }
    }

    #[test]
    fn cipher_suites_and_curves() {
        use TlsProtocol::*;
        let r = resolve(
            Some(&params(
                TlsAuto,
                TlsAuto,
                &[
                    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                    "ECDHE-RSA-AES128-SHA",
                ],
                &["P-256"],
            )),
            Side::Downstream,
            "t",
        )
        .unwrap();
        let tls12: Vec<_> = r
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 2);
        assert_eq!(r.provider.cipher_suites.len(), 5);
        assert_eq!(r.provider.kx_groups.len(), 1);
        assert!(
            resolve(
                Some(&params(TlsAuto, TlsAuto, &["NOPE"], &[])),
                Side::Downstream,
                "t"
            )
            .is_err()
        );
        assert!(
            resolve(
                Some(&params(TlsAuto, TlsAuto, &["AES128-SHA"], &[])),
                Side::Downstream,
                "t"
            )
            .is_err()
        );
        // Only TLS 1.3: a 1.2-only list does not matter.
        assert!(
            resolve(
                Some(&params(TlSv13, TlsAuto, &["AES128-SHA"], &[])),
                Side::Downstream,
                "t"
            )
            .is_ok()
        );
        assert!(
            resolve(
                Some(&params(TlsAuto, TlsAuto, &[], &["P-521"])),
                Side::Downstream,
                "t"
            )
            .is_err()
        );
    }
}
