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
                s.error(&format!("{field}.header"), "header must be non-empty string");
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
