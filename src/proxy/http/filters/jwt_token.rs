//! JSON Web Tokens and key sets as Envoy's JWT library reads and checks them
//! (`source/common/jwt`: `jwt.cc`, `jwks.cc`, `verify.cc`, `check_audience.cc`), with
//! its status codes and their exact texts, which Envoy answers in 401 bodies.
//!
//! Signatures are checked with `jsonwebtoken`'s primitives (RSA PKCS#1 and PSS, ECDSA
//! P-256/P-384, HMAC, Ed25519).
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// base64url with or without padding, as absl's `WebSafeBase64Unescape` accepts it.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// base64url as absl's `WebSafeBase64Unescape` reads it: ASCII whitespace is skipped.
fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    if s.bytes().any(|c| c.is_ascii_whitespace()) {
        let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        B64URL.decode(clean)
    } else {
        B64URL.decode(s)
    }
}

/// Why a token (or key set) is not accepted: Envoy's `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksParseError,
    JwksNoKeys,
    JwksBadKeys,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
    JwksFetchFail,
}

macro_rules! status_texts {
    ($($v:ident => $text:literal),* $(,)?) => {
        impl Status {
            /// Envoy's text for the status: the body of its 401/403.
            pub fn message(self) -> &'static str {
                match self { $(Status::$v => $text,)* }
            }

            /// Envoy's response code details: `jwt_authn_access_denied{TEXT}` with spaces
            /// as underscores.
            pub fn details(self) -> &'static str {
                match self {
                    $(Status::$v => const_format_details($text),)*
                }
            }
        }
    };
}

/// `jwt_authn_access_denied{...}` for a text, computed once per status.
fn const_format_details(text: &'static str) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static DETAILS: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let mut map = DETAILS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(text).or_insert_with(|| {
        let s = format!("jwt_authn_access_denied{{{}}}", text.replace(' ', "_"));
        // Bounded: one per status text, made once for the process.
        Box::leak(s.into_boxed_str())
    })
}

status_texts! {
    Ok => "OK",
    JwtMissed => "Jwt is missing",
    JwtNotYetValid => "Jwt not yet valid",
    JwtExpired => "Jwt is expired",
    JwtBadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
    JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
    JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
    JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
    JwtHeaderBadKid => "Jwt header [kid] field is not a string",
    JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
    JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
    JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
    JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
    JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
    JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
    JwtPayloadParseErrorIatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
    JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
    JwtPayloadParseErrorNbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
    JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
    JwtPayloadParseErrorExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
    JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
    JwtPayloadParseErrorAudNotString => "Jwt payload [aud] field is not a string or string list",
    JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
    JwtUnknownIssuer => "Jwt issuer is not configured",
    JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
    JwtVerificationFail => "Jwt verification fails",
    JwksParseError => "Jwks is an invalid JSON",
    JwksNoKeys => "Jwks does not have [keys] field",
    JwksBadKeys => "[keys] in Jwks is not an array",
    JwksNoValidKeys => "Jwks doesn't have any valid public key",
    JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
    JwksFetchFail => "Jwks remote fetch is failed",
}

/// A parsed (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: String,
    pub kid: String,
    pub iss: String,
    pub nbf: u64,
    pub exp: u64,
    pub audiences: Vec<String>,
    /// The payload as received (base64url), for `forward_payload_header`.
    pub payload_b64: String,
    pub payload: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    signed: String,
    signature_b64: String,
    signature_len: usize,
}

const IMPLEMENTED_ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

enum Field<T> {
    Missing,
    WrongType,
    OutOfRange,
    Ok(T),
}

fn get_string(m: &Map<String, Value>, k: &str) -> Field<String> {
    match m.get(k) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Ok(s.clone()),
        Some(_) => Field::WrongType,
    }
}

fn get_u64(m: &Map<String, Value>, k: &str) -> Field<u64> {
    match m.get(k) {
        None => Field::Missing,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Field::Ok(v),
            (None, Some(f)) if f >= 0.0 && f < u64::MAX as f64 && f.fract() == 0.0 => {
                Field::Ok(f as u64)
            }
            _ => Field::OutOfRange,
        },
        Some(_) => Field::WrongType,
    }
}

impl Jwt {
    /// Parses a token as Envoy does (`Jwt::parseFromString`).
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(Status::JwtBadFormat);
        };
        let header_bytes = b64_decode(h).map_err(|_| Status::JwtHeaderParseErrorBadBase64)?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
        let alg = match get_string(&header, "alg") {
            Field::Ok(a) => a,
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        if !IMPLEMENTED_ALGS.contains(&alg.as_str()) {
            return Err(Status::JwtHeaderNotImplementedAlg);
        }
        let kid = match get_string(&header, "kid") {
            Field::Ok(k) => k,
            Field::WrongType => return Err(Status::JwtHeaderBadKid),
            _ => String::new(),
        };
        let payload_bytes = b64_decode(p).map_err(|_| Status::JwtPayloadParseErrorBadBase64)?;
        let payload: Map<String, Value> = serde_json::from_slice(&payload_bytes)
            .map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
        let iss = match get_string(&payload, "iss") {
            Field::Ok(s) => s,
            Field::WrongType => return Err(Status::JwtPayloadParseErrorIssNotString),
            _ => String::new(),
        };
        if let Field::WrongType = get_string(&payload, "sub") {
            return Err(Status::JwtPayloadParseErrorSubNotString);
        }
        let int = |k: &str, not_int: Status, range: Status| match get_u64(&payload, k) {
            Field::Ok(v) => Ok(v),
            Field::Missing => Ok(0),
            Field::WrongType => Err(not_int),
            Field::OutOfRange => Err(range),
        };
        int(
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = int(
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = int(
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        if let Field::WrongType = get_string(&payload, "jti") {
            return Err(Status::JwtPayloadParseErrorJtiNotString);
        }
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = b64_decode(s).map_err(|_| Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            iss,
            nbf,
            exp,
            audiences,
            payload_b64: p.to_string(),
            payload,
            signed: format!("{h}.{p}"),
            signature_b64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&signature),
            signature_len: signature.len(),
        })
    }

    /// `nbf` and `exp` against `now`, with `skew` seconds of tolerance.
    pub fn check_time(&self, now: u64, skew: u64) -> Status {
        if now.saturating_add(skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }

    /// The signature against a key set (`verifyJwtWithoutTimeChecking`): keys whose `kid`
    /// or `alg` differ from the token's are skipped.
    pub fn verify(&self, jwks: &Jwks) -> Status {
        let mut matched = false;
        for key in &jwks.keys {
            if !self.kid.is_empty() && !key.kid.is_empty() && key.kid != self.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != self.alg {
                continue;
            }
            matched = true;
            let alg = match (&key.material, self.alg.as_str()) {
                (KeyMaterial::Ec { .. }, "ES256") => Some(Algorithm::ES256),
                (KeyMaterial::Ec { .. }, "ES384") => Some(Algorithm::ES384),
                (KeyMaterial::Rsa, "RS256") => Some(Algorithm::RS256),
                (KeyMaterial::Rsa, "RS384") => Some(Algorithm::RS384),
                (KeyMaterial::Rsa, "RS512") => Some(Algorithm::RS512),
                (KeyMaterial::Rsa, "PS256") => Some(Algorithm::PS256),
                (KeyMaterial::Rsa, "PS384") => Some(Algorithm::PS384),
                (KeyMaterial::Rsa, "PS512") => Some(Algorithm::PS512),
                (KeyMaterial::Hmac, "HS256") => Some(Algorithm::HS256),
                (KeyMaterial::Hmac, "HS384") => Some(Algorithm::HS384),
                (KeyMaterial::Hmac, "HS512") => Some(Algorithm::HS512),
                (KeyMaterial::Ed25519, _) => {
                    if self.signature_len != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    Some(Algorithm::EdDSA)
                }
                _ => None,
            };
            let Some(alg) = alg else { continue };
            if let KeyMaterial::Ec { p384 } = key.material
                && (alg == Algorithm::ES384) != p384
            {
                continue;
            }
            if jsonwebtoken::crypto::verify(
                &self.signature_b64,
                self.signed.as_bytes(),
                &key.key,
                alg,
            )
            .unwrap_or(false)
            {
                return Status::Ok;
            }
        }
        if matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        }
    }
}

/// Configured audiences, compared as Envoy does: an `http://` or `https://` prefix and
/// one trailing `/` are ignored. Empty: every token is allowed.
#[derive(Debug, Clone, Default)]
pub struct Audiences(Vec<String>);

fn sanitize_audience(aud: &str) -> &str {
    let a = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}

impl Audiences {
    pub fn new(configured: &[String]) -> Audiences {
        Audiences(
            configured
                .iter()
                .map(|a| sanitize_audience(a).to_string())
                .collect(),
        )
    }

    pub fn allows(&self, token: &[String]) -> bool {
        self.0.is_empty()
            || token
                .iter()
                .any(|a| self.0.iter().any(|c| c == sanitize_audience(a)))
    }
}

/// What kind of key a JWK holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMaterial {
    Rsa,
    Ec { p384: bool },
    Hmac,
    Ed25519,
}

/// One usable key of a set.
#[derive(Clone)]
pub struct Jwk {
    pub kid: String,
    pub alg: String,
    material: KeyMaterial,
    key: DecodingKey,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("material", &self.material)
            .finish()
    }
}

/// A key set: its usable keys (keys Envoy cannot use are left out, as it does).
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document (`Jwks::createFrom(..., JWKS)`).
    pub fn parse(doc: &[u8]) -> Result<Jwks, Status> {
        let v: Value = serde_json::from_slice(doc).map_err(|_| Status::JwksParseError)?;
        let obj = v.as_object().ok_or(Status::JwksParseError)?;
        let keys = obj.get("keys").ok_or(Status::JwksNoKeys)?;
        let keys = keys.as_array().ok_or(Status::JwksBadKeys)?;
        let keys: Vec<Jwk> = keys
            .iter()
            .filter_map(|k| k.as_object().and_then(jwk))
            .collect();
        if keys.is_empty() {
            return Err(Status::JwksNoValidKeys);
        }
        Ok(Jwks { keys })
    }

    /// Whether a key of this set could verify a token with this `kid` and `alg`.
    pub fn has_key_for(&self, kid: &str, alg: &str) -> bool {
        self.keys.iter().any(|k| {
            (kid.is_empty() || k.kid.is_empty() || k.kid == kid)
                && (k.alg.is_empty() || k.alg == alg)
        })
    }
}

fn b64_big_endian(s: &str) -> Option<Vec<u8>> {
    b64_decode(s).ok()
}

/// One JWK, or None when Envoy would skip it.
fn jwk(k: &Map<String, Value>) -> Option<Jwk> {
    let kty = k.get("kty")?.as_str()?;
    let kid = k
        .get("kid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let alg = k
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let s = |f: &str| k.get(f).and_then(Value::as_str);
    let (material, key) = match kty {
        "RSA" => {
            if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
                return None;
            }
            let n = b64_big_endian(s("n")?)?;
            let e = b64_big_endian(s("e")?)?;
            let e_trimmed: Vec<u8> = e.iter().copied().skip_while(|b| *b == 0).collect();
            if e_trimmed != [3] && e_trimmed != [1, 0, 1] {
                return None;
            }
            if n.iter().all(|b| *b == 0) {
                return None;
            }
            (
                KeyMaterial::Rsa,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return None;
            }
            let crv = match k.get("crv") {
                None => "",
                Some(Value::String(c)) => c.as_str(),
                Some(_) => return None,
            };
            if !alg.is_empty()
                && !crv.is_empty()
                && !matches!(
                    (alg.as_str(), crv),
                    ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
                )
            {
                return None;
            }
            let p384 = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
                false
            } else if alg == "ES384" || crv == "P-384" {
                true
            } else {
                // P-521 is Envoy's too, not jsonwebtoken's: such keys verify nothing.
                return None;
            };
            let width = if p384 { 48 } else { 32 };
            let pad = |v: Vec<u8>| -> Option<Vec<u8>> {
                let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
                if v.len() > width {
                    return None;
                }
                let mut out = vec![0u8; width - v.len()];
                out.extend(v);
                Some(out)
            };
            let x = pad(b64_big_endian(s("x")?)?)?;
            let y = pad(b64_big_endian(s("y")?)?)?;
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            (KeyMaterial::Ec { p384 }, DecodingKey::from_ec_der(&point))
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return None;
            }
            let secret = b64_big_endian(s("k")?)?;
            if secret.is_empty() {
                return None;
            }
            (KeyMaterial::Hmac, DecodingKey::from_secret(&secret))
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return None;
            }
            if s("crv")? != "Ed25519" {
                return None;
            }
            let x = b64_big_endian(s("x")?)?;
            if x.len() != 32 {
                return None;
            }
            (KeyMaterial::Ed25519, DecodingKey::from_ed_der(&x))
        }
        _ => return None,
    };
    Some(Jwk {
        kid,
        alg,
        material,
        key,
    })
}

/// The value at a `.`-separated claim path.
pub fn claim<'a>(payload: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = payload.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A claim as a header value (`addJWTClaimToHeader`): strings as they are, numbers as
/// integers when whole, booleans as `true`/`false`; None for anything else.
pub fn claim_header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Some(u.to_string());
            }
            let f = n.as_f64()?;
            if f >= 0.0 && f < u64::MAX as f64 && f.fract() == 0.0 {
                Some((f as u64).to_string())
            } else {
                // std::to_string(double): six decimals.
                Some(format!("{f:.6}"))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn hs_token(claims: Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"secret")).unwrap()
    }

    fn hs_jwks(kid: &str) -> Jwks {
        Jwks::parse(
            format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","k":"c2VjcmV0"}}]}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn tokens_parse_with_envoys_statuses() {
        let cases: &[(&str, Status)] = &[
            ("abc", Status::JwtBadFormat),
            ("a.b", Status::JwtBadFormat),
            ("a.b.c.d", Status::JwtBadFormat),
            ("!!.e30.c2ln", Status::JwtHeaderParseErrorBadBase64),
            ("bm90anNvbg.e30.c2ln", Status::JwtHeaderParseErrorBadJson),
            ("e30.e30.c2ln", Status::JwtHeaderBadAlg),
            (
                "eyJhbGciOiJub25lIn0.e30.c2ln",
                Status::JwtHeaderNotImplementedAlg,
            ),
            (
                "eyJhbGciOiJIUzI1NiIsImtpZCI6MX0.e30.c2ln",
                Status::JwtHeaderBadKid,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.!!.c2ln",
                Status::JwtPayloadParseErrorBadBase64,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOjF9.c2ln",
                Status::JwtPayloadParseErrorIssNotString,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOiJ4In0.c2ln",
                Status::JwtPayloadParseErrorExpNotInteger,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOi0xfQ.c2ln",
                Status::JwtPayloadParseErrorExpOutOfRange,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOjF9.c2ln",
                Status::JwtPayloadParseErrorAudNotString,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.e30.!!",
                Status::JwtSignatureParseErrorBadBase64,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(Jwt::parse(token).err(), Some(*want), "{token}");
        }
        let t = Jwt::parse("eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOlsiYSIsImIiXX0.c2ln").unwrap();
        assert_eq!(t.audiences, ["a", "b"]);
    }

    #[test]
    fn time_and_audience_checks_follow_envoy() {
        let t = Jwt::parse(&hs_token(json_claims(100, 200), None)).unwrap();
        assert_eq!(t.check_time(150, 0), Status::Ok);
        assert_eq!(t.check_time(99, 0), Status::JwtNotYetValid);
        assert_eq!(t.check_time(40, 60), Status::Ok);
        assert_eq!(t.check_time(201, 0), Status::JwtExpired);
        assert_eq!(t.check_time(260, 60), Status::Ok);
        let aud = Audiences::new(&["https://api.example/".to_string()]);
        assert!(aud.allows(&["api.example".to_string()]));
        assert!(aud.allows(&["http://api.example".to_string()]));
        assert!(!aud.allows(&["other".to_string()]));
        assert!(Audiences::new(&[]).allows(&[]));
    }

    fn json_claims(nbf: u64, exp: u64) -> Value {
        serde_json::json!({"iss": "i", "nbf": nbf, "exp": exp})
    }

    #[test]
    fn signatures_are_checked_against_the_key_with_the_tokens_kid() {
        let t = Jwt::parse(&hs_token(json_claims(0, 0), Some("a"))).unwrap();
        assert_eq!(t.verify(&hs_jwks("a")), Status::Ok);
        assert_eq!(t.verify(&hs_jwks("b")), Status::JwksKidAlgMismatch);
        let wrong = Jwks::parse(br#"{"keys":[{"kty":"oct","kid":"a","k":"b3RoZXI"}]}"#).unwrap();
        assert_eq!(t.verify(&wrong), Status::JwtVerificationFail);
        // A token without kid tries every key.
        let t = Jwt::parse(&hs_token(json_claims(0, 0), None)).unwrap();
        assert_eq!(t.verify(&hs_jwks("z")), Status::Ok);
    }

    #[test]
    fn key_sets_keep_only_usable_keys() {
        assert_eq!(Jwks::parse(b"nope").err(), Some(Status::JwksParseError));
        assert_eq!(Jwks::parse(b"{}").err(), Some(Status::JwksNoKeys));
        assert_eq!(
            Jwks::parse(br#"{"keys":1}"#).err(),
            Some(Status::JwksBadKeys)
        );
        assert_eq!(
            Jwks::parse(br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"Aw0"}]}"#).err(),
            Some(Status::JwksNoValidKeys)
        );
        let set = Jwks::parse(
            br#"{"keys":[{"kty":"RSA","alg":"ES256","n":"AQAB","e":"AQAB"},{"kty":"oct","k":"c2VjcmV0"}]}"#,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 1);
    }

    #[test]
    fn claims_become_header_values_as_envoy_prints_them() {
        let p: Map<String, Value> =
            serde_json::from_str(r#"{"s":"x","n":42,"f":1.5,"b":true,"o":{"in":"deep"},"l":[1]}"#)
                .unwrap();
        let v = |path| claim(&p, path).and_then(claim_header_value);
        assert_eq!(v("s").as_deref(), Some("x"));
        assert_eq!(v("n").as_deref(), Some("42"));
        assert_eq!(v("f").as_deref(), Some("1.500000"));
        assert_eq!(v("b").as_deref(), Some("true"));
        assert_eq!(v("o.in").as_deref(), Some("deep"));
        assert_eq!(v("l"), None);
        assert_eq!(v("missing"), None);
    }

    #[test]
    fn details_name_the_status_without_spaces() {
        assert_eq!(
            Status::JwtMissed.details(),
            "jwt_authn_access_denied{Jwt_is_missing}"
        );
    }
}
