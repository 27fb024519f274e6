//! Who is asking for a certificate: the credentials a CreateCertificate call may carry,
//! and the one identity each entitles its caller to.
//!
//! - `authorization: Bearer TOKEN` with a join token ([`super::token`]): the identity it
//!   names, once.
//! - `authorization: Bearer JWT` from the configured issuer ([`super::jwt`]): the
//!   service account it names.
//! - No bearer token, and a client certificate from this CA on the mutual-TLS
//!   connection: the identity of that certificate (renewal).
//!
//! A bearer token, when sent, decides alone: an invalid one is refused even if the
//! connection also has a valid client certificate, so that a caller never gets an
//! identity other than the one it presented.
use super::jwt::{JwtError, JwtIssuer};
use super::spiffe::SpiffeId;
use super::token::{JoinGrant, JoinTokens, TokenError};

/// Where a caller's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    JoinToken,
    Jwt,
    ClientCertificate,
}

impl AuthSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthSource::JoinToken => "join-token",
            AuthSource::Jwt => "jwt",
            AuthSource::ClientCertificate => "client-certificate",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The one identity the caller may have a certificate for.
    pub identity: SpiffeId,
    pub source: AuthSource,
    /// The join token to mark used when the certificate is issued.
    grant: Option<JoinGrant>,
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all (gRPC `UNAUTHENTICATED`).
    #[error(
        "no credential: send `authorization: Bearer TOKEN` (a join token or a service-account JWT), or a client certificate of this CA"
    )]
    Missing,
    /// A credential that does not hold (gRPC `UNAUTHENTICATED`).
    #[error("{0}")]
    Invalid(String),
    /// The CA could not record what it must (gRPC `UNAVAILABLE`).
    #[error("{0}")]
    Internal(String),
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Record(_) => AuthError::Internal(e.to_string()),
            _ => AuthError::Invalid(e.to_string()),
        }
    }
}

impl From<JwtError> for AuthError {
    fn from(e: JwtError) -> Self {
        AuthError::Invalid(e.to_string())
    }
}

/// Checks the credentials of CreateCertificate calls.
#[derive(Debug)]
pub struct Authenticator {
    join: JoinTokens,
    jwt: Option<JwtIssuer>,
}

/// The bearer token of an `authorization` header value (`Bearer TOKEN`, any case).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Authenticator {
    pub fn new(join: JoinTokens, jwt: Option<JwtIssuer>) -> Authenticator {
        Authenticator { join, jwt }
    }

    /// The join tokens this authenticator accepts.
    pub fn join_tokens(&self) -> &JoinTokens {
        &self.join
    }

    /// Authenticates a call from its bearer token (if any) and the identity of its
    /// verified client certificate (if any).
    pub fn authenticate(
        &self,
        bearer_token: Option<&str>,
        peer: Option<&SpiffeId>,
    ) -> Result<Caller, AuthError> {
        let Some(token) = bearer_token else {
            return match peer {
                Some(id) => Ok(Caller {
                    identity: id.clone(),
                    source: AuthSource::ClientCertificate,
                    grant: None,
                }),
                None => Err(AuthError::Missing),
            };
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("the bearer token is not a JWT".into()))?;
        // Join tokens are the only HMAC tokens: each kind is verified with its own
        // algorithms only, so neither can pass for the other.
        if header.alg == jsonwebtoken::Algorithm::HS256 {
            let grant = self.join.verify(token)?;
            return Ok(Caller {
                identity: grant.identity.clone(),
                source: AuthSource::JoinToken,
                grant: Some(grant),
            });
        }
        let Some(jwt) = &self.jwt else {
            return Err(AuthError::Invalid(
                "the bearer token is not a join token and no JWT issuer is configured (--jwt-issuer, --jwks-file)".into(),
            ));
        };
        Ok(Caller {
            identity: jwt.authenticate(token)?,
            source: AuthSource::Jwt,
            grant: None,
        })
    }

    /// Commits what authentication used up: marks a join token used. Called once the
    /// request is known to be good, right before signing.
    pub fn commit(&self, caller: &Caller) -> Result<(), AuthError> {
        if let Some(grant) = &caller.grant {
            self.join.consume(grant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn credentials_and_their_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let authn =
            Authenticator::new(JoinTokens::open(dir.path(), "cluster.local").unwrap(), None);
        let edge = SpiffeId::new("cluster.local", "edge", "ingress").unwrap();
        let other = SpiffeId::new("cluster.local", "other", "x").unwrap();
        assert_eq!(authn.authenticate(None, None), Err(AuthError::Missing));
        let renewal = authn.authenticate(None, Some(&edge)).unwrap();
        assert_eq!(
            (renewal.identity.clone(), renewal.source),
            (edge.clone(), AuthSource::ClientCertificate)
        );
        let token =
            super::super::token::create_token(dir.path(), &other, Duration::from_secs(60)).unwrap();
        // A token wins over the connection's certificate, and is spent by commit only.
        let caller = authn.authenticate(Some(&token), Some(&edge)).unwrap();
        assert_eq!(caller.identity, other);
        assert!(authn.authenticate(Some(&token), None).is_ok());
        authn.commit(&caller).unwrap();
        assert!(matches!(
            authn.authenticate(Some(&token), Some(&edge)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            authn.authenticate(Some("not-a-jwt"), Some(&edge)),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
