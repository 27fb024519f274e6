//! Checks of `RequestAuthentication`s as Istio's webhook checks them
//! (`ValidateRequestAuthentication`, `validateJwtRule`), plus what meshgate refuses
//! rather than serve half: `targetRef(s)`, rules with no key source, and both key
//! sources at once.
use super::common::{Sink, check_duration, check_header_name, check_labels_map};
use crate::config::diag::Diagnostic;
use crate::config::types::request_authentication::JwksUri;
use crate::config::types::{RequestAuthentication, Resource};

/// Validates one RequestAuthentication.
pub fn validate(ra: &Resource<RequestAuthentication>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(ra, out);
    let spec = &ra.spec;
    if let Some(selector) = &spec.selector {
        if selector.match_labels.is_empty() {
            s.warning(
                "spec.selector",
                "workload selector specified without labels; the policy applies to the whole namespace",
            );
        }
        for (key, message) in check_labels_map(&selector.match_labels) {
            s.error(&format!("spec.selector.matchLabels.{key}"), message);
        }
    }
    if spec.target_ref.is_some() {
        s.error(
            "spec.targetRef",
            "targetRef is not served by meshgate; select the gateway or workload by its labels with `selector`",
        );
    }
    if !spec.target_refs.is_empty() {
        s.error(
            "spec.targetRefs",
            "targetRefs is not served by meshgate; select the gateway or workload by its labels with `selector`",
        );
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        s.error(
            "spec.selector",
            "only one of selector, targetRef or targetRefs can be set",
        );
    }
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        if rule.issuer.is_empty() && rule.jwks_uri.is_empty() {
            s.error(&at("issuer"), "issuer or jwksUri must be non-empty string");
        }
        for (j, aud) in rule.audiences.iter().enumerate() {
            if aud.is_empty() {
                s.error(
                    &format!("spec.jwtRules[{i}].audiences[{j}]"),
                    "audience must be non-empty string",
                );
            }
        }
        match (rule.jwks_uri.is_empty(), rule.jwks.is_empty()) {
            (false, false) => s.error(
                &at("jwks"),
                "jwks and jwksUri cannot both be set; give the keys inline or where to fetch them, not both",
            ),
            (true, true) => s.error(
                &at("jwksUri"),
                "one of jwksUri or jwks is needed: meshgate does not discover keys from the issuer's OpenID configuration",
            ),
            _ => {}
        }
        if !rule.jwks_uri.is_empty()
            && let Err(e) = JwksUri::parse(&rule.jwks_uri)
        {
            s.error(&at("jwksUri"), e);
        }
        if !rule.jwks.is_empty()
            && let Err(e) = check_jwks(&rule.jwks)
        {
            s.error(&at("jwks"), format!("jwks parse error: {e}"));
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            let field = format!("spec.jwtRules[{i}].fromHeaders[{j}].name");
            if h.name.is_empty() {
                s.error(&field, "location header name must be non-empty string");
            } else {
                s.check(&field, check_header_name(&h.name));
            }
        }
        for (j, p) in rule.from_params.iter().enumerate() {
            if p.is_empty() {
                s.error(
                    &format!("spec.jwtRules[{i}].fromParams[{j}]"),
                    "location query must be non-empty string",
                );
            }
        }
        for (j, c) in rule.from_cookies.iter().enumerate() {
            if c.is_empty() {
                s.error(
                    &format!("spec.jwtRules[{i}].fromCookies[{j}]"),
                    "cookie name must be non-empty string",
                );
            }
        }
        if !rule.output_payload_to_header.is_empty() {
            s.check(
                &at("outputPayloadToHeader"),
                check_header_name(&rule.output_payload_to_header),
            );
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let field = format!("spec.jwtRules[{i}].outputClaimToHeaders[{j}]");
            if c.header.is_empty() {
                s.error(
                    &format!("{field}.header"),
                    "header must be non-empty string",
                );
            } else {
                s.check(&format!("{field}.header"), check_header_name(&c.header));
                if c.header.starts_with(':') {
                    s.error(
                        &format!("{field}.header"),
                        format!("`{}` is a pseudo-header and cannot be set", c.header),
                    );
                }
            }
            if c.claim.is_empty() {
                s.error(&format!("{field}.claim"), "claim must be non-empty string");
            }
        }
        if let Some(t) = rule.timeout {
            s.check(&at("timeout"), check_duration(t));
        }
    }
}

/// A JWKS document as the proxy reads it: a JSON object with a `keys` array of objects
/// each naming its `kty`.
fn check_jwks(jwks: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let keys = v
        .get("keys")
        .ok_or("the document has no `keys`")?
        .as_array()
        .ok_or("`keys` is not an array")?;
    if keys.is_empty() {
        return Err("`keys` is empty".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(|t| t.as_str()).is_none() {
            return Err(format!("keys[{i}] has no `kty`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, validate};

    const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: shop}\nspec:\n";

    fn check(spec: &str) -> Vec<String> {
        let loaded = load_str("t.yaml", &format!("{HEAD}{spec}"));
        let mut all: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        all.extend(validate(&loaded.config).iter().map(ToString::to_string));
        all
    }

    #[test]
    fn rules_are_checked_with_positions() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "clean",
                "  selector: {matchLabels: {app: a}}\n  jwtRules:\n  - issuer: i\n    jwksUri: https://k.example/jwks\n    fromHeaders: [{name: x-t, prefix: \"T \"}]\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n    timeout: 2s\n",
                &[],
            ),
            (
                "targetRef",
                "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n  jwtRules: [{issuer: i, jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"a2V5\"}]}'}]\n",
                &[
                    "t.yaml:5:3: error: RequestAuthentication/shop/j: spec.targetRef: targetRef is not served by meshgate; select the gateway or workload by its labels with `selector`",
                ],
            ),
            (
                "targetRefs with selector",
                "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, name: gw}]\n",
                &[
                    "t.yaml:5:3: error: RequestAuthentication/shop/j: spec.selector: only one of selector, targetRef or targetRefs can be set",
                    "t.yaml:6:3: error: RequestAuthentication/shop/j: spec.targetRefs: targetRefs is not served by meshgate; select the gateway or workload by its labels with `selector`",
                ],
            ),
            (
                "both key sources",
                "  jwtRules:\n  - issuer: i\n    jwksUri: http://k/jwks\n    jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"a2V5\"}]}'\n",
                &[
                    "t.yaml:8:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].jwks: jwks and jwksUri cannot both be set; give the keys inline or where to fetch them, not both",
                ],
            ),
            (
                "no key source, no issuer",
                "  jwtRules:\n  - audiences: [\"\"]\n",
                &[
                    "t.yaml:6:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].issuer: issuer or jwksUri must be non-empty string",
                    "t.yaml:6:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].jwksUri: one of jwksUri or jwks is needed: meshgate does not discover keys from the issuer's OpenID configuration",
                    "t.yaml:6:17: error: RequestAuthentication/shop/j: spec.jwtRules[0].audiences[0]: audience must be non-empty string",
                ],
            ),
            (
                "bad values",
                "  jwtRules:\n  - issuer: i\n    jwksUri: ftp://k/jwks\n    fromHeaders: [{name: \"\"}, {name: \"bad header\"}]\n    fromParams: [\"\"]\n    fromCookies: [\"\"]\n    outputPayloadToHeader: \"x y\"\n    outputClaimToHeaders: [{header: \":path\", claim: \"\"}]\n    timeout: 0s\n",
                &[
                    "t.yaml:7:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].jwksUri: URI scheme `ftp` is not supported",
                    "t.yaml:8:20: error: RequestAuthentication/shop/j: spec.jwtRules[0].fromHeaders[0].name: location header name must be non-empty string",
                    "t.yaml:8:32: error: RequestAuthentication/shop/j: spec.jwtRules[0].fromHeaders[1].name: `bad header` is not a valid header name",
                    "t.yaml:9:18: error: RequestAuthentication/shop/j: spec.jwtRules[0].fromParams[0]: location query must be non-empty string",
                    "t.yaml:10:19: error: RequestAuthentication/shop/j: spec.jwtRules[0].fromCookies[0]: cookie name must be non-empty string",
                    "t.yaml:11:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].outputPayloadToHeader: `x y` is not a valid header name",
                    "t.yaml:12:29: error: RequestAuthentication/shop/j: spec.jwtRules[0].outputClaimToHeaders[0].header: `:path` is a pseudo-header and cannot be set",
                    "t.yaml:12:46: error: RequestAuthentication/shop/j: spec.jwtRules[0].outputClaimToHeaders[0].claim: claim must be non-empty string",
                    "t.yaml:13:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].timeout: duration 0s must be at least 1ms",
                ],
            ),
            (
                "bad jwks",
                "  jwtRules:\n  - issuer: i\n    jwks: '{\"nokeys\": 1}'\n",
                &[
                    "t.yaml:7:5: error: RequestAuthentication/shop/j: spec.jwtRules[0].jwks: jwks parse error: the document has no `keys`",
                ],
            ),
        ];
        let mut failures = Vec::new();
        for (name, spec, want) in cases {
            let got = check(spec);
            if got != *want {
                failures.push(format!("== {name}\n{got:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
