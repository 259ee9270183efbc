//! Member access tokens: HS256 JWTs that auth signs and task verifies locally,
//! with no call to auth on the request path.
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{error::Failure, grpc::bearer};

const ISSUER: &str = "memberflow-auth";
const AUDIENCE: &str = "memberflow";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    /// The member's version when the token was issued: task serves this
    /// caller from a replica at least this fresh. 0 in tokens without it.
    #[serde(default)]
    ver: i64,
}

/// A verified access token: who, and the version they had seen at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub member_id: Uuid,
    pub version: i64,
}

/// Why a token was refused. Every variant maps to `UNAUTHENTICATED`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the access token's subject is not a member id")]
    BadSubject,
}

/// Signing and verification keys derived from one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys for `secret`; the same secret must be configured in both services.
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// Signs a token for `member_id` that expires at `expires_at`.
    pub fn issue(&self, member_id: Uuid, expires_at: DateTime<Utc>) -> String {
        self.issue_at_version(member_id, 0, expires_at)
    }

    /// Signs a token for `member_id`, who has seen their member at `version`.
    pub fn issue_at_version(
        &self,
        member_id: Uuid,
        version: i64,
        expires_at: DateTime<Utc>,
    ) -> String {
        let claims = Claims {
            ver: version,
            sub: member_id.to_string(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: Utc::now().timestamp(),
            exp: expires_at.timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// The member id of the `authorization: Bearer <token>` in `metadata`,
    /// checked as [`Self::verify`] does. Both services authenticate members
    /// with this one rule.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Verified, Failure> {
        let token = bearer(metadata)
            .ok_or_else(|| Failure::Unauthenticated("missing bearer token".into()))?;
        self.verify_claims(token)
            .map_err(|e| Failure::Unauthenticated(e.to_string()))
    }

    /// Checks signature, issuer, audience and expiry; returns the member id.
    pub fn verify(&self, token: &str) -> Result<Uuid, TokenError> {
        Ok(self.verify_claims(token)?.member_id)
    }

    /// [`Self::verify`], with the version claim.
    pub fn verify_claims(&self, token: &str) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e),
            })?;
        Ok(Verified {
            member_id: Uuid::parse_str(&data.claims.sub).map_err(|_| TokenError::BadSubject)?,
            version: data.claims.ver,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn round_trips_and_rejects_forgeries_and_expiry() {
        let id = Uuid::new_v4();
        let good = keys("a-long-enough-secret");
        let token = good.issue(id, Utc::now() + Duration::minutes(5));
        assert_eq!(good.verify(&token).unwrap(), id);
        assert!(matches!(
            keys("another-secret").verify(&token),
            Err(TokenError::Invalid(_))
        ));
        let old = good.issue(id, Utc::now() - Duration::minutes(5));
        assert!(matches!(good.verify(&old), Err(TokenError::Expired)));
    }
}
