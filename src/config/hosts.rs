//! Host names as Istio reads them: short-name resolution and wildcard matching.

/// The Kubernetes cluster domain suffix Istio assumes by default.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// Resolves a host as Istio does for a resource in `namespace`: a name without a dot
/// (`reviews`) becomes `reviews.NAMESPACE.svc.DOMAIN_SUFFIX`; names with a dot, `*` and IP
/// addresses are unchanged.
pub fn resolve_short_name(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.is_empty()
        || host == "*"
        || host.contains('.')
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return host.to_string();
    }
    let mut out = String::with_capacity(host.len() + namespace.len() + domain_suffix.len() + 6);
    out.push_str(host);
    if !namespace.is_empty() {
        out.push('.');
        out.push_str(namespace);
    }
    if !domain_suffix.is_empty() {
        out.push_str(".svc.");
        out.push_str(domain_suffix);
    }
    out
}

/// Whether a host is a wildcard (`*` or `*.example.com`).
pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// Whether two hosts, either possibly a wildcard, have names in common (Istio's
/// `host.Name.Matches`): `*.example.com` and `a.example.com` do, and so do `*.com` and
/// `*.example.com`.
pub fn matches(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => {
            let (a, b) = (&a[1..], &b[1..]);
            if a.len() < b.len() {
                b.ends_with(a)
            } else {
                a.ends_with(b)
            }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Whether every name `a` covers is also covered by `b` (Istio's `host.Name.SubsetOf`).
pub fn is_subset_of(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_like_istio() {
        let cases = [
            ("reviews", "shop", "reviews.shop.svc.cluster.local"),
            ("reviews.shop", "default", "reviews.shop"),
            (
                "reviews.shop.svc.cluster.local",
                "x",
                "reviews.shop.svc.cluster.local",
            ),
            ("*", "shop", "*"),
            ("*.example.com", "shop", "*.example.com"),
            ("10.0.0.1", "shop", "10.0.0.1"),
            ("::1", "shop", "::1"),
            ("", "shop", ""),
        ];
        for (host, ns, want) in cases {
            assert_eq!(
                resolve_short_name(host, ns, DEFAULT_DOMAIN_SUFFIX),
                want,
                "{host} in {ns}"
            );
        }
    }

    #[test]
    fn wildcard_matching() {
        let cases = [
            ("a.example.com", "a.example.com", true, true),
            ("a.example.com", "b.example.com", false, false),
            ("*.example.com", "a.example.com", true, false),
            ("a.example.com", "*.example.com", true, true),
            ("*.example.com", "*.com", true, true),
            ("*.com", "*.example.com", true, false),
            ("*", "a.example.com", true, false),
            ("a.example.com", "*", true, true),
            ("*.example.com", "example.com", false, false),
        ];
        for (a, b, m, subset) in cases {
            assert_eq!(matches(a, b), m, "matches({a}, {b})");
            assert_eq!(is_subset_of(a, b), subset, "is_subset_of({a}, {b})");
        }
    }
}
