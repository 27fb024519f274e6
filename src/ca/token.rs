//! Join tokens: short-lived, single-use credentials that entitle their bearer to one
//! SPIFFE identity, made by `meshgate token create` and checked by the CA offline.
//!
//! A join token is a JWT signed with HMAC-SHA256 (`HS256`) under a 256-bit key kept in
//! the CA directory (`token-key`, mode 0600, made on first use). Its claims:
//! `iss: meshgate`, `aud: meshgate-ca`, `sub: spiffe://TD/ns/NS/sa/SA`, `iat`, `exp`
//! and a random `jti`. The CA refuses a token whose signature, audience or issuer does
//! not match, that has expired (no leeway: the CA and the token's maker share a clock),
//! whose trust domain is not the CA's, or whose `jti` it has seen before.
//!
//! Used tokens are recorded in `used-tokens` (one `JTI EXPIRY` line each, appended and
//! synced before the certificate is signed), so a token stays used across restarts. A
//! record is dropped once its token has expired: the expiry alone refuses it then.
use super::authority::{CaError, check_private, create_private_dir, write_private};
use super::spiffe::SpiffeId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The HMAC key's file in the CA directory.
pub const TOKEN_KEY: &str = "token-key";
/// The record of used tokens in the CA directory.
pub const USED_TOKENS: &str = "used-tokens";
/// `iss` of a join token.
pub const JOIN_ISSUER: &str = "meshgate";
/// `aud` of a join token.
pub const JOIN_AUDIENCE: &str = "meshgate-ca";
/// Longest lifetime of a join token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

const KEY_BYTES: usize = 32;

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is malformed or its signature does not verify")]
    Invalid,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token has been used already")]
    Used,
    #[error("the join token names {0}, which is not in this CA's trust domain")]
    TrustDomain(String),
    #[error("the join token's subject is not a SPIFFE identity: {0}")]
    Subject(String),
    #[error("recording the token's use failed: {0}")]
    Record(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinClaims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// A verified join token: the identity it grants, and what marks it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    pub identity: SpiffeId,
    jti: String,
    exp: u64,
}

/// The CA side of join tokens: the key and the record of used tokens.
pub struct JoinTokens {
    key: DecodingKey,
    trust_domain: String,
    used: Mutex<UsedTokens>,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokens")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the token key from `dir`, making it if it is not there yet.
fn load_or_create_key(dir: &Path) -> Result<Vec<u8>, CaError> {
    let path = dir.join(TOKEN_KEY);
    let invalid = |reason: &str| CaError::Invalid {
        path: path.clone(),
        reason: reason.into(),
    };
    if !path.exists() {
        create_private_dir(dir)?;
        let key: [u8; KEY_BYTES] = rand::random();
        match write_private_new(&path, format!("{}\n", hex::encode(key)).as_bytes()) {
            Ok(()) => return Ok(key.to_vec()),
            // Made by someone else meanwhile (the control plane and `token create`).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CaError::Io { path, source }),
        }
    }
    check_private(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|source| CaError::Io {
        path: path.clone(),
        source,
    })?;
    let key = hex::decode(text.trim()).map_err(|_| invalid("not a hex key"))?;
    if key.len() < KEY_BYTES {
        return Err(invalid("the key is shorter than 256 bits"));
    }
    Ok(key)
}

/// Writes a new secret file; fails with `AlreadyExists` if it is there.
fn write_private_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    // A hard link publishes the file only if the name is free.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Makes a join token for `identity`, valid for `ttl`, with the key in `dir`.
pub fn create_token(dir: &Path, identity: &SpiffeId, ttl: Duration) -> Result<String, CaError> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(CaError::Invalid {
            path: dir.to_path_buf(),
            reason: format!(
                "a join token lives between 1s and {}h",
                MAX_TOKEN_TTL.as_secs() / 3600
            ),
        });
    }
    let key = load_or_create_key(dir)?;
    let now = now_secs();
    let claims = JoinClaims {
        iss: JOIN_ISSUER.into(),
        aud: JOIN_AUDIENCE.into(),
        sub: identity.uri(),
        iat: now,
        exp: now + ttl.as_secs().max(1),
        jti: hex::encode(rand::random::<[u8; 16]>()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key),
    )
    .map_err(|e| CaError::Sign(e.to_string()))
}

impl JoinTokens {
    /// Opens the token key and the used-token record in `dir` (making the key if needed).
    pub fn open(dir: &Path, trust_domain: &str) -> Result<JoinTokens, CaError> {
        let key = load_or_create_key(dir)?;
        let used = UsedTokens::open(dir.join(USED_TOKENS))?;
        Ok(JoinTokens {
            key: DecodingKey::from_secret(&key),
            trust_domain: trust_domain.to_string(),
            used: Mutex::new(used),
        })
    }

    /// Verifies a token: signature, audience, issuer, expiry, trust domain, and that it
    /// has not been used. Does not mark it used: [`JoinTokens::consume`] does, once the
    /// request it came with has been checked.
    pub fn verify(&self, token: &str) -> Result<JoinGrant, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&[JOIN_AUDIENCE]);
        v.set_issuer(&[JOIN_ISSUER]);
        v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        let data = jsonwebtoken::decode::<JoinClaims>(token, &self.key, &v).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        let c = data.claims;
        // jsonwebtoken lets `exp == now` through; a token is spent at its expiry second.
        if c.exp <= now_secs() {
            return Err(TokenError::Expired);
        }
        if c.jti.len() != 32 || !c.jti.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Invalid);
        }
        let identity = SpiffeId::parse(&c.sub).map_err(|e| TokenError::Subject(e.to_string()))?;
        if identity.trust_domain != self.trust_domain {
            return Err(TokenError::TrustDomain(identity.to_string()));
        }
        if self.lock().contains(&c.jti) {
            return Err(TokenError::Used);
        }
        Ok(JoinGrant {
            identity,
            jti: c.jti,
            exp: c.exp,
        })
    }

    /// Marks a verified token used, durably; refuses one used meanwhile.
    pub fn consume(&self, grant: &JoinGrant) -> Result<(), TokenError> {
        self.lock().record(&grant.jti, grant.exp)
    }

    /// Number of used tokens remembered (those not yet expired).
    pub fn used_count(&self) -> usize {
        self.lock().by_jti.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UsedTokens> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The record of used tokens, in memory and in its file.
struct UsedTokens {
    path: PathBuf,
    by_jti: HashMap<String, u64>,
    /// Lines in the file, expired ones included (the file is rewritten when most are).
    lines: usize,
}

impl UsedTokens {
    fn open(path: PathBuf) -> Result<UsedTokens, CaError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(CaError::Io { path, source }),
        };
        let now = now_secs();
        let mut by_jti = HashMap::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            let mut parts = line.split_whitespace();
            let (Some(jti), Some(exp)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(exp) = exp.parse::<u64>()
                && exp > now
            {
                by_jti.insert(jti.to_string(), exp);
            }
        }
        let mut used = UsedTokens {
            path,
            by_jti,
            lines,
        };
        if used.lines > used.by_jti.len() {
            used.rewrite()?;
        }
        Ok(used)
    }

    fn contains(&self, jti: &str) -> bool {
        self.by_jti.get(jti).is_some_and(|exp| *exp > now_secs())
    }

    fn record(&mut self, jti: &str, exp: u64) -> Result<(), TokenError> {
        if self.contains(jti) {
            return Err(TokenError::Used);
        }
        let now = now_secs();
        self.by_jti.retain(|_, e| *e > now);
        // Durable before the certificate goes out: a token whose use cannot be recorded
        // is not honoured.
        let appended = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            f.write_all(format!("{jti} {exp}\n").as_bytes())?;
            f.sync_data()
        })();
        appended.map_err(|e| TokenError::Record(format!("{}: {e}", self.path.display())))?;
        self.by_jti.insert(jti.to_string(), exp);
        self.lines += 1;
        if self.lines > 64 && self.lines > 2 * self.by_jti.len() {
            // Best effort: the appended line already counts.
            if let Err(e) = self.rewrite() {
                tracing::warn!(error = %e, "compacting the used-token record failed");
            }
        }
        Ok(())
    }

    /// Rewrites the file with only the tokens not yet expired.
    fn rewrite(&mut self) -> Result<(), CaError> {
        let mut text = String::new();
        for (jti, exp) in &self.by_jti {
            text.push_str(&format!("{jti} {exp}\n"));
        }
        write_private(&self.path, text.as_bytes())?;
        self.lines = self.by_jti.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, "sa").unwrap()
    }

    #[test]
    fn a_token_grants_its_identity_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let token = create_token(dir.path(), &id("edge"), Duration::from_secs(600)).unwrap();
        let tokens = JoinTokens::open(dir.path(), "cluster.local").unwrap();
        let grant = tokens.verify(&token).unwrap();
        assert_eq!(grant.identity, id("edge"));
        tokens.consume(&grant).unwrap();
        assert_eq!(tokens.verify(&token), Err(TokenError::Used));
        assert_eq!(tokens.consume(&grant), Err(TokenError::Used));
        drop(tokens);
        let reopened = JoinTokens::open(dir.path(), "cluster.local").unwrap();
        assert_eq!(reopened.verify(&token), Err(TokenError::Used));
        // Another token for the same identity is a new credential.
        let other = create_token(dir.path(), &id("edge"), Duration::from_secs(600)).unwrap();
        assert!(reopened.verify(&other).is_ok());
        use std::os::unix::fs::PermissionsExt;
        for f in [TOKEN_KEY, USED_TOKENS] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn forged_foreign_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::open(dir.path(), "cluster.local").unwrap();
        // Signed with another CA directory's key.
        let foreign = create_token(other_dir.path(), &id("edge"), Duration::from_secs(60)).unwrap();
        assert_eq!(tokens.verify(&foreign), Err(TokenError::Invalid));
        // Tampered claims.
        let good = create_token(dir.path(), &id("edge"), Duration::from_secs(60)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let forged = claims.replace("/ns/edge/", "/ns/kube-system/");
        let forged = format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2]);
        assert_eq!(tokens.verify(&forged), Err(TokenError::Invalid));
        // `alg: none`.
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(tokens.verify(&none), Err(TokenError::Invalid));
        // Another trust domain.
        let td = SpiffeId::new("other.domain", "edge", "sa").unwrap();
        let t = create_token(dir.path(), &td, Duration::from_secs(60)).unwrap();
        assert!(matches!(tokens.verify(&t), Err(TokenError::TrustDomain(_))));
        // Expired: made with an expiry already past.
        let key = load_or_create_key(dir.path()).unwrap();
        let now = now_secs();
        let claims = JoinClaims {
            iss: JOIN_ISSUER.into(),
            aud: JOIN_AUDIENCE.into(),
            sub: id("edge").uri(),
            iat: now - 100,
            exp: now - 1,
            jti: hex::encode([7u8; 16]),
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&key),
        )
        .unwrap();
        assert_eq!(tokens.verify(&expired), Err(TokenError::Expired));
        assert!(create_token(dir.path(), &id("edge"), Duration::ZERO).is_err());
    }

    #[test]
    fn expired_records_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USED_TOKENS);
        let now = now_secs();
        std::fs::write(
            &path,
            format!(
                "{} {}\n{} {}\n",
                "a".repeat(32),
                now - 5,
                "b".repeat(32),
                now + 500
            ),
        )
        .unwrap();
        let used = UsedTokens::open(path.clone()).unwrap();
        assert_eq!(used.by_jti.len(), 1);
        assert!(used.contains(&"b".repeat(32)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn a_world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        create_token(dir.path(), &id("edge"), Duration::from_secs(60)).unwrap();
        let key = dir.path().join(TOKEN_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            JoinTokens::open(dir.path(), "cluster.local"),
            Err(CaError::KeyExposed { .. })
        ));
    }
}
