//! SPIFFE identities in Istio's form: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
use std::fmt;

/// A workload identity: a Kubernetes service account in a namespace of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an Istio SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("`{0}` is not of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    Form(String),
    #[error("trust domain `{0}` may hold only lowercase letters, digits, `.`, `-` and `_`")]
    TrustDomain(String),
    #[error("{what} `{value}` may hold only letters, digits, `.`, `-` and `_`")]
    Segment { what: &'static str, value: String },
}

/// Longest trust domain SPIFFE allows.
const MAX_TRUST_DOMAIN: usize = 255;
/// Longest namespace or service account name Kubernetes allows (DNS-1123 subdomain).
const MAX_SEGMENT: usize = 253;

impl SpiffeId {
    /// An identity from its parts, each checked against SPIFFE's character set.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://TD/ns/NS/sa/SA`, exactly (no query, fragment, port or extra path).
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        let form = || SpiffeError::Form(uri.chars().take(300).collect());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(form)?;
        let mut parts = rest.split('/');
        let (td, ns_key, ns, sa_key, sa) = (
            parts.next().ok_or_else(form)?,
            parts.next().ok_or_else(form)?,
            parts.next().ok_or_else(form)?,
            parts.next().ok_or_else(form)?,
            parts.next().ok_or_else(form)?,
        );
        if parts.next().is_some() || ns_key != "ns" || sa_key != "sa" {
            return Err(form());
        }
        SpiffeId::new(td, ns, sa)
    }

    /// The URI, as it goes into a certificate's subject alternative name.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::TrustDomain(td.chars().take(300).collect()))
    }
}

fn check_segment(what: &'static str, s: &str) -> Result<(), SpiffeError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SEGMENT
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::Segment {
            what,
            value: s.chars().take(300).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identities_and_nothing_else() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/edge/sa/ingress").unwrap();
        assert_eq!(
            (
                id.trust_domain.as_str(),
                id.namespace.as_str(),
                id.service_account.as_str()
            ),
            ("cluster.local", "edge", "ingress")
        );
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/edge/sa/ingress");
        for bad in [
            "spiffe://cluster.local/ns/edge/sa/ingress/x",
            "spiffe://cluster.local/ns/edge/sa/",
            "spiffe://cluster.local/ns/edge",
            "spiffe://cluster.local/sa/x/ns/y",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8080/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe:///ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
