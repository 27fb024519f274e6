//! `RequestAuthentication` (security.istio.io): which JSON Web Tokens a workload accepts.
//! A request with a token that fails verification is refused (401); a request without
//! one passes on, for an AuthorizationPolicy to decide.
use super::destination_rule::MatchLabelsSelector;
use crate::config::duration::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec of a `RequestAuthentication`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// The workloads (in the policy's namespace, or any namespace for a policy in the
    /// root namespace) it applies to; none: every workload of the namespace (of the
    /// mesh for the root namespace).
    pub selector: Option<MatchLabelsSelector>,
    /// A Kubernetes Gateway API resource the policy applies to (not served: meshgate
    /// selects workloads by labels).
    pub target_ref: Option<PolicyTargetReference>,
    /// Several such resources (not served either).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// One rule per accepted issuer.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// A reference to a Gateway API resource (`targetRef`), read only to refuse it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

/// How tokens of one issuer are found and verified (Istio's `JWTRule`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss`.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (JWKS), fetched by the proxy.
    #[serde(default)]
    pub jwks_uri: String,
    /// The keys inline, as a JWKS document.
    #[serde(default)]
    pub jwks: String,
    /// Headers the token is read from; with no location at all, `Authorization:
    /// Bearer <token>` and the `access_token` query parameter.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header the verified token's payload (base64url) is written to.
    #[serde(default)]
    pub output_payload_to_header: String,
    /// Whether the token is passed on to the upstream (it is removed otherwise).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Headers set from the verified token's claims.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long a JWKS fetch may take (5s when unset).
    pub timeout: Option<Duration>,
    /// Claims whose string value is split on spaces in the verified payload (`scope` and
    /// `permission` always are).
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

/// A header a token is read from, and the prefix before the token in its value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

/// A header set from a claim (`a.b` names a nested claim).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

impl RequestAuthentication {
    /// The labels of its selector (none or empty: namespace-wide or mesh-wide).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// Whether it applies to a workload with these labels (its namespace aside).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels()
            .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// A `jwksUri` taken apart as istiod does (`security.ParseJwksURI`): `http` or `https`,
/// a host, the port (80 / 443 by default), and the rest of the URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUri {
    pub https: bool,
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl JwksUri {
    /// Parses a `jwksUri`.
    pub fn parse(uri: &str) -> Result<JwksUri, String> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| format!("jwksUri `{uri}` is not an absolute http or https URI"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(format!("URI scheme `{scheme}` is not supported")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = path.split('#').next().unwrap_or("");
        if authority.contains('@') {
            return Err(format!("jwksUri `{uri}` must not carry user information"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("jwksUri `{uri}` has an unclosed IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.bytes().any(|c| c.is_ascii_whitespace() || c < 0x21) {
            return Err(format!("jwksUri `{uri}` has no valid host"));
        }
        let port = match port {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("jwksUri `{uri}` has an invalid port `{p}`"))?,
        };
        if path
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(format!("jwksUri `{uri}` has spaces or control characters"));
        }
        let path = if path.is_empty() || path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(JwksUri {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::JwksUri;

    #[test]
    fn jwks_uris_as_istiod_parses_them() {
        let ok = |u: &str, https, host: &str, port, path: &str| {
            assert_eq!(
                JwksUri::parse(u).unwrap(),
                JwksUri {
                    https,
                    host: host.into(),
                    port,
                    path: path.into()
                },
                "{u}"
            );
        };
        ok(
            "https://example.com/jwks.json",
            true,
            "example.com",
            443,
            "/jwks.json",
        );
        ok(
            "http://127.0.0.1:8080/k?x=1",
            false,
            "127.0.0.1",
            8080,
            "/k?x=1",
        );
        ok("http://[::1]:9/", false, "::1", 9, "/");
        ok(
            "HTTPS://Keys.Example.com",
            true,
            "keys.example.com",
            443,
            "/",
        );
        ok("http://h?q", false, "h", 80, "/?q");
        for bad in [
            "ftp://h/",
            "h/jwks",
            "http:///x",
            "http://h:0/",
            "http://h:99999/",
            "http://u@h/",
        ] {
            assert!(JwksUri::parse(bad).is_err(), "{bad}");
        }
    }
}
