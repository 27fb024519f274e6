//! Service-account JWTs from a configured issuer, checked against a JWKS file: the
//! tokens Kubernetes projects into pods (audience `istio-ca`), as istiod's JWT
//! authenticator accepts them when it runs outside the cluster.
//!
//! The identity comes from Kubernetes' claims, `kubernetes.io.namespace` and
//! `kubernetes.io.serviceaccount.name`, or from `sub: system:serviceaccount:NS:SA`;
//! when both are present they must agree. `iss` must be the configured issuer, `aud`
//! must include one of the configured audiences, `exp` is required (60 s of leeway for
//! the issuer's clock, as go-oidc allows). RS256/384/512, PS256/384/512 and ES256/384
//! are accepted, each only with a key of its kind; the JWKS file is read again when it
//! changes, so the issuer's keys rotate without a restart.
use super::spiffe::SpiffeId;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

/// The audience istiod expects on tokens sent to its CA.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// Why a JWT is refused or the JWKS cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("{path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("the JWT is malformed: {0}")]
    Malformed(String),
    #[error("the JWT's algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no key of the JWKS verifies the JWT")]
    Signature,
    #[error("the JWT has expired")]
    Expired,
    #[error("the JWT is not valid: {0}")]
    Claims(String),
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: &'static [Algorithm],
}

struct Keys {
    keys: Vec<Key>,
    modified: Option<SystemTime>,
}

/// Verifies JWTs of one issuer.
pub struct JwtIssuer {
    issuer: String,
    audiences: Vec<String>,
    trust_domain: String,
    jwks_path: PathBuf,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("jwks_path", &self.jwks_path)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct K8sClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<K8sInfo>,
}

#[derive(Deserialize)]
struct K8sInfo {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    serviceaccount: Option<K8sName>,
}

#[derive(Deserialize)]
struct K8sName {
    #[serde(default)]
    name: Option<String>,
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn load_keys(path: &Path) -> Result<Keys, JwtError> {
    let err = |reason: String| JwtError::Jwks {
        path: path.display().to_string(),
        reason,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| err(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithms: &'static [Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA_ALGS,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => continue,
            },
            // Symmetric and Ed25519 keys are not used for service-account tokens.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            err(format!(
                "key {}: {e}",
                jwk.common.key_id.as_deref().unwrap_or("(no kid)")
            ))
        })?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    if keys.is_empty() {
        return Err(err("holds no RSA or EC (P-256, P-384) key".into()));
    }
    Ok(Keys { keys, modified })
}

impl JwtIssuer {
    /// An issuer whose keys are in the JWKS file at `jwks_path`.
    pub fn new(
        issuer: &str,
        jwks_path: &Path,
        audiences: Vec<String>,
        trust_domain: &str,
    ) -> Result<JwtIssuer, JwtError> {
        let keys = load_keys(jwks_path)?;
        Ok(JwtIssuer {
            issuer: issuer.to_string(),
            audiences: if audiences.is_empty() {
                vec![DEFAULT_AUDIENCE.to_string()]
            } else {
                audiences
            },
            trust_domain: trust_domain.to_string(),
            jwks_path: jwks_path.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Reads the JWKS again if the file changed; a bad new file keeps the old keys.
    fn refresh(&self) {
        let modified = std::fs::metadata(&self.jwks_path)
            .and_then(|m| m.modified())
            .ok();
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).modified;
        if modified == current {
            return;
        }
        match load_keys(&self.jwks_path) {
            Ok(keys) => *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys,
            Err(e) => {
                tracing::warn!(error = %e, "the JWKS file changed and cannot be read; keeping its previous keys");
                self.keys
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .modified = modified;
            }
        }
    }

    /// Verifies `token` and returns the identity it grants.
    pub fn authenticate(&self, token: &str) -> Result<SpiffeId, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        self.refresh();
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let candidates = keys.keys.iter().filter(|k| {
            k.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.kid.is_none() || header.kid == k.kid)
        });
        let mut validation = Validation::new(header.alg);
        validation.leeway = 60;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut tried = false;
        let mut last = JwtError::Algorithm(format!("{:?}", header.alg));
        for k in candidates {
            tried = true;
            match jsonwebtoken::decode::<K8sClaims>(token, &k.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => JwtError::Signature,
                        ErrorKind::ExpiredSignature => return Err(JwtError::Expired),
                        ErrorKind::InvalidIssuer => {
                            return Err(JwtError::Claims("wrong issuer".into()));
                        }
                        ErrorKind::InvalidAudience => {
                            return Err(JwtError::Claims(format!(
                                "audience is none of {:?}",
                                self.audiences
                            )));
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(JwtError::Claims(format!("no `{c}` claim")));
                        }
                        ErrorKind::ImmatureSignature => {
                            return Err(JwtError::Claims("not valid yet (nbf)".into()));
                        }
                        other => JwtError::Malformed(format!("{other:?}")),
                    };
                }
            }
        }
        if !tried {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        Err(last)
    }

    fn identity(&self, claims: K8sClaims) -> Result<SpiffeId, JwtError> {
        let from_sub = claims
            .sub
            .as_deref()
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
            .map(|rest| {
                let mut parts = rest.split(':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(ns), Some(sa), None) => Ok((ns.to_string(), sa.to_string())),
                    _ => Err(JwtError::Claims(
                        "sub is not system:serviceaccount:NAMESPACE:NAME".into(),
                    )),
                }
            })
            .transpose()?;
        let from_k8s = claims
            .kubernetes
            .and_then(|k| Some((k.namespace?, k.serviceaccount?.name?)));
        let (ns, sa) = match (from_sub, from_k8s) {
            (Some(a), Some(b)) if a != b => {
                return Err(JwtError::Claims(
                    "sub and kubernetes.io name different service accounts".into(),
                ));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(JwtError::Claims(
                    "no service account: neither kubernetes.io.namespace and kubernetes.io.serviceaccount.name nor sub system:serviceaccount:NS:SA".into(),
                ));
            }
        };
        SpiffeId::new(&self.trust_domain, &ns, &sa).map_err(|e| JwtError::Claims(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    struct Signer {
        encoding: EncodingKey,
        jwk: serde_json::Value,
    }

    /// An ES256 key pair as a JWK and an encoding key.
    fn es256(kid: &str) -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // Uncompressed point: 0x04 || x || y.
        let raw = key.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Signer {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])}),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn issuer_with(signers: &[&Signer]) -> (tempfile::TempDir, JwtIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let keys: Vec<_> = signers.iter().map(|s| s.jwk.clone()).collect();
        std::fs::write(&path, json!({"keys": keys}).to_string()).unwrap();
        let issuer = JwtIssuer::new(
            "https://kubernetes.default.svc",
            &path,
            vec![],
            "cluster.local",
        )
        .unwrap();
        (dir, issuer)
    }

    fn sign(s: &Signer, kid: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, &claims, &s.encoding).unwrap()
    }

    #[test]
    fn kubernetes_service_account_tokens() {
        let s = es256("k1");
        let (_dir, issuer) = issuer_with(&[&s]);
        let base = |extra: serde_json::Value| {
            let mut c = json!({"iss": "https://kubernetes.default.svc", "aud": ["istio-ca"],
                               "exp": now() + 600, "iat": now()});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let want = SpiffeId::new("cluster.local", "edge", "ingress").unwrap();
        // Kubernetes' projected token: both forms, agreeing.
        let t = sign(
            &s,
            "k1",
            base(json!({"sub": "system:serviceaccount:edge:ingress",
                        "kubernetes.io": {"namespace": "edge", "serviceaccount": {"name": "ingress", "uid": "u"}}})),
        );
        assert_eq!(issuer.authenticate(&t), Ok(want.clone()));
        // sub alone, and kubernetes.io alone.
        let t = sign(
            &s,
            "k1",
            base(json!({"sub": "system:serviceaccount:edge:ingress"})),
        );
        assert_eq!(issuer.authenticate(&t), Ok(want.clone()));
        let t = sign(
            &s,
            "k1",
            base(
                json!({"kubernetes.io": {"namespace": "edge", "serviceaccount": {"name": "ingress"}}}),
            ),
        );
        assert_eq!(issuer.authenticate(&t), Ok(want));
        // Disagreeing claims.
        let t = sign(
            &s,
            "k1",
            base(json!({"sub": "system:serviceaccount:edge:ingress",
                        "kubernetes.io": {"namespace": "kube-system", "serviceaccount": {"name": "ingress"}}})),
        );
        assert!(matches!(issuer.authenticate(&t), Err(JwtError::Claims(_))));
        // No identity at all.
        let t = sign(&s, "k1", base(json!({"sub": "alice"})));
        assert!(matches!(issuer.authenticate(&t), Err(JwtError::Claims(_))));
    }

    #[test]
    fn wrong_issuer_audience_key_or_expiry_is_refused() {
        let s = es256("k1");
        let stranger = es256("k1");
        let (_dir, issuer) = issuer_with(&[&s]);
        let claims = |iss: &str, aud: &str, exp: u64| json!({"iss": iss, "aud": aud, "exp": exp, "sub": "system:serviceaccount:a:b"});
        let iss = "https://kubernetes.default.svc";
        let ok = sign(&s, "k1", claims(iss, "istio-ca", now() + 600));
        assert!(issuer.authenticate(&ok).is_ok());
        let cases = [
            (
                "issuer",
                sign(&s, "k1", claims("https://evil", "istio-ca", now() + 600)),
            ),
            (
                "audience",
                sign(&s, "k1", claims(iss, "kubernetes", now() + 600)),
            ),
            (
                "expiry",
                sign(&s, "k1", claims(iss, "istio-ca", now() - 120)),
            ),
            (
                "key",
                sign(&stranger, "k1", claims(iss, "istio-ca", now() + 600)),
            ),
        ];
        for (what, t) in cases {
            assert!(issuer.authenticate(&t).is_err(), "{what}");
        }
        assert_eq!(
            issuer.authenticate(&cases_expired(&s)),
            Err(JwtError::Expired)
        );
        // HS256 signed with the public key's bytes (algorithm confusion).
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(
            &h,
            &claims(iss, "istio-ca", now() + 600),
            &EncodingKey::from_secret(s.jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            issuer.authenticate(&forged),
            Err(JwtError::Algorithm(_))
        ));
    }

    fn cases_expired(s: &Signer) -> String {
        sign(
            s,
            "k1",
            json!({"iss": "https://kubernetes.default.svc", "aud": "istio-ca",
                   "exp": now() - 120, "sub": "system:serviceaccount:a:b"}),
        )
    }

    #[test]
    fn a_rotated_jwks_is_read_again() {
        let old = es256("old");
        let new = es256("new");
        let (dir, issuer) = issuer_with(&[&old]);
        let claims = json!({"iss": "https://kubernetes.default.svc", "aud": "istio-ca",
                            "exp": now() + 600, "sub": "system:serviceaccount:a:b"});
        let t = sign(&new, "new", claims.clone());
        assert!(issuer.authenticate(&t).is_err());
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [new.jwk]}).to_string()).unwrap();
        // Make sure the modification time differs even on coarse file systems.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(issuer.authenticate(&t).is_ok());
        assert!(issuer.authenticate(&sign(&old, "old", claims)).is_err());
    }
}
