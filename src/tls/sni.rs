//! Choosing by server name: a table of exact and wildcard names (for filter-chain
//! `server_names` and for certificate selection), and the rustls certificate resolver of
//! a TLS context that holds several certificates.
use crate::tls::store::CertificateWatch;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Exact and wildcard server names mapped to values, looked up in Envoy's order: the
/// exact name, then wildcard suffixes from the longest (`*.b.example.com` before
/// `*.example.com`), then the catch-all. Case-insensitive. Lookups cost one or a few
/// hash probes whatever the number of names, so 10,000 entries cost what 10 do.
#[derive(Debug, Clone)]
pub struct ServerNameTable<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, T>,
    any: Option<T>,
    /// Whether `*.example.com` also covers `a.b.example.com` (filter chains: yes;
    /// certificate SANs: no, one label only).
    multi_label: bool,
}

impl<T> ServerNameTable<T> {
    /// An empty table. `multi_label`: see the field.
    pub fn new(multi_label: bool) -> ServerNameTable<T> {
        ServerNameTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
            multi_label,
        }
    }

    /// Adds a name (`a.example.com`, `*.example.com`, or `*` for any). An existing entry
    /// for the same name is kept (first wins, like Envoy's first filter chain).
    pub fn insert(&mut self, name: &str, value: T) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name == "*" || name.is_empty() {
            if self.any.is_none() {
                self.any = Some(value);
            }
        } else if let Some(suffix) = name.strip_prefix("*.") {
            self.wildcard.entry(suffix.into()).or_insert(value);
        } else {
            self.exact.entry(name.into()).or_insert(value);
        }
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + self.any.is_some() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for `sni` (`None` SNI only matches the catch-all).
    pub fn lookup(&self, sni: Option<&str>) -> Option<&T> {
        let Some(sni) = sni else {
            return self.any.as_ref();
        };
        let mut buf = [0u8; 253];
        let lower: &str = if sni.len() <= buf.len() {
            buf[..sni.len()].copy_from_slice(sni.as_bytes());
            buf[..sni.len()].make_ascii_lowercase();
            std::str::from_utf8(&buf[..sni.len()]).unwrap_or(sni)
        } else {
            return self.any.as_ref();
        };
        if let Some(v) = self.exact.get(lower) {
            return Some(v);
        }
        if !self.wildcard.is_empty() {
            let mut rest = lower;
            while let Some((_, suffix)) = rest.split_once('.') {
                if suffix.is_empty() {
                    break;
                }
                if let Some(v) = self.wildcard.get(suffix) {
                    return Some(v);
                }
                if !self.multi_label {
                    break;
                }
                rest = suffix;
            }
        }
        self.any.as_ref()
    }
}

/// The certificate resolver of one TLS context. With a single certificate it is served
/// whatever the SNI (Envoy's behaviour); with several, the one whose SANs match the SNI
/// and whose key suits the client's signature schemes, else the first. Material is read
/// from the secret watches at each handshake, so rotation needs nothing more.
#[derive(Debug)]
pub struct SniCertResolver {
    certs: Vec<CertificateWatch>,
    /// SAN index for large sets, built from the material present at construction.
    index: Option<ServerNameTable<Vec<usize>>>,
    require_sni: bool,
}

/// Above this many certificates the resolver indexes SANs instead of scanning.
const SCAN_LIMIT: usize = 8;

impl SniCertResolver {
    pub fn new(certs: Vec<CertificateWatch>, require_sni: bool) -> SniCertResolver {
        let index = (certs.len() > SCAN_LIMIT).then(|| {
            let mut t: ServerNameTable<Vec<usize>> = ServerNameTable::new(false);
            let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, w) in certs.iter().enumerate() {
                if let Some(m) = w.borrow().as_ref() {
                    for n in &m.leaf.dns_names {
                        by_name.entry(n.clone()).or_default().push(i);
                    }
                }
            }
            for (n, v) in by_name {
                t.insert(&n, v);
            }
            t
        });
        SniCertResolver {
            certs,
            index,
            require_sni,
        }
    }

    /// Whether at least one certificate currently has material.
    pub fn any_ready(&self) -> bool {
        self.certs.iter().any(|w| w.borrow().is_some())
    }

    fn suits(ck: &CertifiedKey, hello: &ClientHello<'_>) -> bool {
        ck.key.choose_scheme(hello.signature_schemes()).is_some()
    }

    /// The certificate for a ClientHello's SNI and signature schemes.
    pub fn pick(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if self.require_sni && sni.is_none() {
            return None;
        }
        if self.certs.len() == 1 {
            return self.certs[0]
                .borrow()
                .as_ref()
                .map(|m| m.certified_key.clone());
        }
        if let Some(sni) = sni {
            let candidates: Box<dyn Iterator<Item = usize>> = match &self.index {
                Some(t) => Box::new(t.lookup(Some(sni)).into_iter().flatten().copied()),
                None => Box::new(0..self.certs.len()),
            };
            let mut fallback = None;
            for i in candidates {
                let Some(m) = self.certs[i].borrow().clone() else {
                    continue;
                };
                if self.index.is_none() && !m.leaf.dns_names.iter().any(|n| san_matches(n, sni)) {
                    continue;
                }
                if Self::suits(&m.certified_key, hello) {
                    return Some(m.certified_key.clone());
                }
                fallback.get_or_insert(m.certified_key.clone());
            }
            if fallback.is_some() {
                return fallback;
            }
        }
        // No SAN matched: the first certificate that suits, else the first (Envoy's default).
        let mut first = None;
        for w in &self.certs {
            if let Some(m) = w.borrow().as_ref() {
                if Self::suits(&m.certified_key, hello) {
                    return Some(m.certified_key.clone());
                }
                first.get_or_insert(m.certified_key.clone());
            }
        }
        first
    }
}

/// Whether a certificate DNS SAN (`a.example.com` or `*.example.com`, lower-case) covers
/// `sni`: exact, or a wildcard standing for exactly one label.
pub fn san_matches(san: &str, sni: &str) -> bool {
    if san.eq_ignore_ascii_case(sni) {
        return true;
    }
    match (san.strip_prefix("*."), sni.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

impl ResolvesServerCert for SniCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(&hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_table_order() {
        let mut t = ServerNameTable::new(true);
        t.insert("a.example.com", "exact");
        t.insert("*.example.com", "wild");
        t.insert("*.b.example.com", "wild-b");
        t.insert("A.EXAMPLE.COM", "dup-ignored");
        let cases = [
            (Some("a.example.com"), Some("exact")),
            (Some("A.Example.Com"), Some("exact")),
            (Some("x.example.com"), Some("wild")),
            (Some("x.b.example.com"), Some("wild-b")),
            (Some("x.y.example.com"), Some("wild")),
            (Some("example.com"), None),
            (Some("other.org"), None),
            (None, None),
        ];
        for (sni, want) in cases {
            assert_eq!(t.lookup(sni).copied(), want, "{sni:?}");
        }
        t.insert("*", "any");
        assert_eq!(t.lookup(Some("other.org")).copied(), Some("any"));
        assert_eq!(t.lookup(None).copied(), Some("any"));

        let mut single = ServerNameTable::new(false);
        single.insert("*.example.com", 1);
        assert_eq!(single.lookup(Some("a.example.com")), Some(&1));
        assert_eq!(single.lookup(Some("a.b.example.com")), None);
        let long = "a".repeat(300);
        assert_eq!(single.lookup(Some(&long)), None);
    }

    #[test]
    fn san_matching() {
        let cases = [
            ("a.example.com", "A.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("a.example.com", "b.example.com", false),
        ];
        for (san, sni, want) in cases {
            assert_eq!(san_matches(san, sni), want, "{san} vs {sni}");
        }
    }
}
