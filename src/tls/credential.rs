//! Istio's `credentialName` convention: a Kubernetes `Secret` turned into the SDS
//! `Secret` resources gateways fetch as `kubernetes://NAME` (certificate and key) and
//! `kubernetes://NAME-cacert` (CA bundle for MUTUAL), the names istiod uses.
use crate::tls::error::TlsError;
use crate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use std::collections::BTreeMap;

/// The SDS name of the certificate of credential `name`.
pub fn certificate_sds_name(name: &str) -> String {
    format!("kubernetes://{name}")
}

/// The SDS name of the CA bundle of credential `name`.
pub fn ca_sds_name(name: &str) -> String {
    format!("kubernetes://{name}-cacert")
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// The SDS secrets a Kubernetes Secret named `name` provides, from its decoded `data`
/// (and `stringData`) keys, the way istiod reads them:
/// - `tls.crt` + `tls.key` (type `kubernetes.io/tls`), or `cert` + `key` (generic):
///   `kubernetes://NAME`;
/// - `ca.crt` or `cacert` (optionally with `ca.crl`): `kubernetes://NAME-cacert`. A
///   Secret that itself ends in `-cacert` and holds only a CA provides that name.
pub fn secrets_from_kubernetes(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<Secret>, TlsError> {
    let get = |keys: &[&str]| keys.iter().find_map(|k| data.get(*k));
    let cert = get(&["tls.crt", "cert"]);
    let key = get(&["tls.key", "key"]);
    let ca = get(&["ca.crt", "cacert"]);
    let crl = get(&["ca.crl"]);
    let mut out = Vec::new();
    match (cert, key) {
        (Some(c), Some(k)) => out.push(Secret {
            name: certificate_sds_name(name),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(c),
                private_key: inline(k),
                ..Default::default()
            })),
        }),
        (Some(_), None) => {
            return Err(TlsError::invalid(
                &format!("Secret {name}"),
                "has tls.crt but no tls.key",
            ));
        }
        (None, Some(_)) => {
            return Err(TlsError::invalid(
                &format!("Secret {name}"),
                "has tls.key but no tls.crt",
            ));
        }
        (None, None) => {}
    }
    if let Some(ca) = ca {
        let sds_name = if cert.is_none() && name.ends_with("-cacert") {
            certificate_sds_name(name)
        } else {
            ca_sds_name(name)
        };
        out.push(Secret {
            name: sds_name,
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca),
                    crl: crl.and_then(|c| inline(c)),
                    ..Default::default()
                },
            )),
        });
    }
    if out.is_empty() {
        return Err(TlsError::invalid(
            &format!("Secret {name}"),
            "has none of tls.crt/tls.key, cert/key, ca.crt or cacert",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_secret_keys_table() {
        let d = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        let names = |s: Vec<Secret>| s.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(
            names(
                secrets_from_kubernetes(
                    "gw",
                    &d(&[("tls.crt", "c"), ("tls.key", "k"), ("ca.crt", "a")])
                )
                .unwrap()
            ),
            vec!["kubernetes://gw", "kubernetes://gw-cacert"]
        );
        assert_eq!(
            names(secrets_from_kubernetes("gw", &d(&[("cert", "c"), ("key", "k")])).unwrap()),
            vec!["kubernetes://gw"]
        );
        assert_eq!(
            names(secrets_from_kubernetes("gw-cacert", &d(&[("cacert", "a")])).unwrap()),
            vec!["kubernetes://gw-cacert"]
        );
        assert!(secrets_from_kubernetes("gw", &d(&[("tls.crt", "c")])).is_err());
        assert!(secrets_from_kubernetes("gw", &d(&[("other", "c")])).is_err());
    }
}
