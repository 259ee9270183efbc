//! Member access tokens: EdDSA (Ed25519) JWTs that only auth can sign and
//! that task verifies locally with public keys, with no call to auth on the
//! request path.
//!
//! Each token names its key in the header (`kid`, the key's RFC 7638 JWK
//! thumbprint), so several keys can be trusted at once and a key can be
//! rotated without downtime. HS256 (or any other algorithm) is refused: a
//! shared secret would let every verifier mint tokens.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const ISSUER: &str = "memberflow-auth";
const AUDIENCE: &str = "memberflow";
/// Clock skew tolerated on `exp` and `iat`, in seconds.
const LEEWAY_SECS: i64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    /// The member's version when the token was issued: task serves this
    /// caller from a replica at least this fresh, and a token older than the
    /// member's last session revocation is refused.
    #[serde(default)]
    ver: i64,
    /// The session (one login, one device) the token belongs to. Tokens
    /// issued before sessions existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<Uuid>,
}

/// A verified access token: who, the version they had seen at login, when
/// it was issued and the session it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub member_id: Uuid,
    pub version: i64,
    pub issued_at: DateTime<Utc>,
    /// The `sid` claim; `None` on tokens issued before sessions existed,
    /// which only an all-sessions revocation ends.
    pub session: Option<Uuid>,
}

/// The base64url (no padding) SHA-256 of a session id's canonical text:
/// what `auth.v1.MemberSessionEnded.session_hash` carries and what a
/// verifier computes from a token's `sid` to look the session up. Events
/// and replicas hold only this, never the id an access token carries.
pub fn session_hash(session_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(session_id.to_string().as_bytes()))
}

/// When a member's sessions were last ended (Logout, ChangePassword): the
/// instant, and the member version that ending produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionsRevoked {
    pub not_before: Option<DateTime<Utc>>,
    pub version: i64,
}

impl Verified {
    /// Whether this token was issued before the member's sessions were
    /// ended: its version claim is older than the revocation's version.
    /// Exact and clock-free: a Login reads the member's version, and every
    /// revocation raises it, so a token from before one is older and a
    /// token from after one is not. (Until 2026-12-03 an `iat` second before
    /// `not_before` refused a token too; that compared auth's clock with
    /// PostgreSQL's, and an auth instance lagging PostgreSQL by a second
    /// issued fresh tokens that were refused for their whole life. The
    /// nemesis found it under clock skew.)
    pub fn revoked_by(&self, revoked: &SessionsRevoked) -> bool {
        self.version < revoked.version
    }
}

/// Why a token was refused. Every variant maps to `UNAUTHENTICATED`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the access token's header names no key")]
    NoKeyId,
    #[error("the access token is signed with a key this service does not trust")]
    UnknownKey(String),
    #[error("the access token is issued in the future")]
    IssuedInFuture,
    #[error("the access token's subject is not a member id")]
    BadSubject,
}

/// A key that could not be read from configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
    Private(String),
    #[error("not an Ed25519 public key in SPKI PEM: {0}")]
    Public(String),
    #[error("not a JWK Ed25519 public key: {0}")]
    Jwk(String),
}

/// An Ed25519 public key and its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    kid: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.kid)
    }
}

impl PublicKey {
    fn new(key: ed25519_dalek::VerifyingKey) -> Self {
        Self {
            kid: thumbprint(&key),
            key,
        }
    }

    /// Every `-----BEGIN PUBLIC KEY-----` block in `bundle` (SPKI PEM, as
    /// `openssl pkey -pubout` writes), in order. Empty text is no keys.
    pub fn parse_bundle(bundle: &str) -> Result<Vec<Self>, KeyError> {
        const END: &str = "-----END PUBLIC KEY-----";
        let mut keys = Vec::new();
        let mut rest = bundle;
        while let Some(start) = rest.find("-----BEGIN") {
            let end = rest[start..]
                .find(END)
                .ok_or_else(|| KeyError::Public("a PEM block is not closed".into()))?
                + start
                + END.len();
            let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&rest[start..end])
                .map_err(|e| KeyError::Public(e.to_string()))?;
            keys.push(Self::new(key));
            rest = &rest[end..];
        }
        if !rest.trim().is_empty() {
            return Err(KeyError::Public("text outside the PEM blocks".into()));
        }
        Ok(keys)
    }

    /// The key of a JWK (`kty` OKP, `crv` Ed25519, `x`), as auth's
    /// GetPublicKeys serves it. The `kid` must be the key's thumbprint.
    pub fn from_jwk(kid: &str, crv: &str, x: &str) -> Result<Self, KeyError> {
        if crv != "Ed25519" {
            return Err(KeyError::Jwk(format!("curve {crv}")));
        }
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(x)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::Jwk("x is not 32 bytes of base64url".into()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| KeyError::Jwk(e.to_string()))?;
        let key = Self::new(key);
        if key.kid != kid {
            return Err(KeyError::Jwk(format!(
                "kid {kid} is not the key's thumbprint"
            )));
        }
        Ok(key)
    }

    /// The key id: the RFC 7638 JWK thumbprint, base64url.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK `x` member: the 32 key bytes, base64url.
    pub fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.as_bytes())
    }

    /// SPKI PEM, for `token.public_keys`.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(Default::default())
            .expect("encoding a valid key cannot fail")
    }
}

/// RFC 7638: SHA-256 over the required JWK members in lexical order.
fn thumbprint(key: &ed25519_dalek::VerifyingKey) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// The private key auth signs with. Only auth holds one.
#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    public: PublicKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public.kid)
    }
}

impl Signer {
    /// From a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| KeyError::Private(e.to_string()))?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &ed25519_dalek::SigningKey) -> Self {
        let der = key
            .to_pkcs8_der()
            .expect("encoding a valid key cannot fail");
        Self {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public: PublicKey::new(key.verifying_key()),
        }
    }

    /// A new random key and its PKCS#8 PEM (`memberflow-admin keygen`, tests).
    pub fn generate() -> (Self, String) {
        let seed: [u8; 32] = rand::random();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .expect("encoding a valid key cannot fail")
            .to_string();
        (Self::from_key(&key), pem)
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs a token for `member_id`, who has seen their member at `version`,
    /// with no session: as tokens were before sessions existed.
    pub fn issue(&self, member_id: Uuid, version: i64, expires_at: DateTime<Utc>) -> String {
        self.issue_at(member_id, version, Utc::now(), expires_at)
    }

    /// Signs a token for `member_id` in session `session` (the `sid` claim).
    pub fn issue_in_session(
        &self,
        member_id: Uuid,
        version: i64,
        session: Uuid,
        expires_at: DateTime<Utc>,
    ) -> String {
        self.sign(member_id, version, Some(session), Utc::now(), expires_at)
    }

    /// [`Self::issue`] with a chosen issue time (tests of revocation).
    pub fn issue_at(
        &self,
        member_id: Uuid,
        version: i64,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> String {
        self.sign(member_id, version, None, issued_at, expires_at)
    }

    fn sign(
        &self,
        member_id: Uuid,
        version: i64,
        sid: Option<Uuid>,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> String {
        let claims = Claims {
            sid,
            ver: version,
            sub: member_id.to_string(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: issued_at.timestamp(),
            exp: expires_at.timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.public.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("Ed25519 signing with a valid in-memory key cannot fail")
    }
}

/// The public keys a service trusts, by id. Cloning shares the set, so a
/// refresh is seen by every handler at once.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<RwLock<HashMap<String, DecodingKey>>>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kids()).finish()
    }
}

impl Verifier {
    /// Trusts exactly `keys`.
    pub fn new(keys: &[PublicKey]) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS as u64;
        let v = Self {
            keys: Arc::default(),
            validation,
        };
        v.replace(keys);
        v
    }

    /// Trusts exactly `keys` from now on (a refresh, a rotation).
    pub fn replace(&self, keys: &[PublicKey]) {
        let map = keys
            .iter()
            .map(|k| (k.kid.clone(), DecodingKey::from_ed_der(k.key.as_bytes())))
            .collect();
        *self.keys.write().expect("key set lock poisoned") = map;
    }

    /// Whether the key `kid` is trusted.
    pub fn trusts(&self, kid: &str) -> bool {
        self.keys
            .read()
            .expect("key set lock poisoned")
            .contains_key(kid)
    }

    /// Ids of the trusted keys, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<_> = self
            .keys
            .read()
            .expect("key set lock poisoned")
            .keys()
            .cloned()
            .collect();
        kids.sort();
        kids
    }

    /// Checks algorithm (EdDSA only), key id, signature, issuer, audience,
    /// expiry and issue time.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into(),
            ));
        }
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let data = {
            let keys = self.keys.read().expect("key set lock poisoned");
            let key = keys
                .get(&kid)
                .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
            jsonwebtoken::decode::<Claims>(token, key, &self.validation)
        }
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e),
        })?;
        let claims = data.claims;
        if claims.iat > Utc::now().timestamp() + LEEWAY_SECS {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(Verified {
            member_id: Uuid::parse_str(&claims.sub).map_err(|_| TokenError::BadSubject)?,
            version: claims.ver,
            issued_at: DateTime::from_timestamp(claims.iat, 0).ok_or(TokenError::BadSubject)?,
            session: claims.sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    const RFC8037_PUBLIC: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC8037_KID: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

    #[test]
    fn key_id_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of its example key.
        let key = PublicKey::from_jwk(RFC8037_KID, "Ed25519", RFC8037_PUBLIC).unwrap();
        assert_eq!(key.kid(), RFC8037_KID);
        assert!(PublicKey::from_jwk("other", "Ed25519", RFC8037_PUBLIC).is_err());
        assert!(PublicKey::from_jwk(RFC8037_KID, "X25519", RFC8037_PUBLIC).is_err());
    }

    #[test]
    fn round_trips_and_refuses_other_keys_and_expiry() {
        let id = Uuid::new_v4();
        let (signer, pem) = Signer::generate();
        assert_eq!(
            Signer::from_pem(&pem).unwrap().public_key(),
            signer.public_key()
        );
        let verifier = Verifier::new(std::slice::from_ref(signer.public_key()));
        let token = signer.issue(id, 3, Utc::now() + Duration::minutes(5));
        let ok = verifier.verify(&token).unwrap();
        assert_eq!((ok.member_id, ok.version), (id, 3));

        let (other, _) = Signer::generate();
        let foreign = other.issue(id, 3, Utc::now() + Duration::minutes(5));
        assert!(matches!(
            verifier.verify(&foreign),
            Err(TokenError::UnknownKey(_))
        ));
        let old = signer.issue(id, 3, Utc::now() - Duration::minutes(5));
        assert!(matches!(verifier.verify(&old), Err(TokenError::Expired)));
        let future = signer.issue_at(
            id,
            3,
            Utc::now() + Duration::minutes(5),
            Utc::now() + Duration::minutes(10),
        );
        assert!(matches!(
            verifier.verify(&future),
            Err(TokenError::IssuedInFuture)
        ));
    }

    #[test]
    fn several_keys_are_trusted_at_once_and_pem_bundles_parse() {
        let (a, _) = Signer::generate();
        let (b, _) = Signer::generate();
        let bundle = format!("{}\n{}", a.public_key().to_pem(), b.public_key().to_pem());
        let keys = PublicKey::parse_bundle(&bundle).unwrap();
        assert_eq!(keys, vec![a.public_key().clone(), b.public_key().clone()]);
        assert!(PublicKey::parse_bundle("").unwrap().is_empty());
        assert!(PublicKey::parse_bundle("junk").is_err());
        let verifier = Verifier::new(&keys);
        let exp = Utc::now() + Duration::minutes(5);
        for s in [&a, &b] {
            assert!(verifier.verify(&s.issue(Uuid::new_v4(), 1, exp)).is_ok());
        }
        verifier.replace(std::slice::from_ref(b.public_key()));
        assert!(verifier.verify(&a.issue(Uuid::new_v4(), 1, exp)).is_err());
    }

    #[test]
    fn hs256_and_unsigned_tokens_are_refused() {
        let (signer, _) = Signer::generate();
        let verifier = Verifier::new(std::slice::from_ref(signer.public_key()));
        let claims = Claims {
            sub: Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: Utc::now().timestamp(),
            exp: Utc::now().timestamp() + 300,
            ver: 1,
            sid: None,
        };
        // Even an HS256 token "signed" with the public key bytes, the
        // classic algorithm-confusion attack, and naming a trusted kid.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.public_key().kid().to_owned());
        let secret = EncodingKey::from_secret(signer.public_key().key.as_bytes());
        let hs = jsonwebtoken::encode(&header, &claims, &secret).unwrap();
        assert!(matches!(verifier.verify(&hs), Err(TokenError::Invalid(_))));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json_like(&claims))
        );
        assert!(verifier.verify(&unsigned).is_err());
    }

    fn serde_json_like(c: &Claims) -> String {
        format!(
            r#"{{"sub":"{}","iss":"{}","aud":"{}","iat":{},"exp":{},"ver":{}}}"#,
            c.sub, c.iss, c.aud, c.iat, c.exp, c.ver
        )
    }

    #[test]
    fn session_tokens_carry_their_sid_and_old_ones_none() {
        let (signer, _) = Signer::generate();
        let verifier = Verifier::new(std::slice::from_ref(signer.public_key()));
        let (id, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let exp = Utc::now() + Duration::minutes(5);
        let with = verifier
            .verify(&signer.issue_in_session(id, 1, sid, exp))
            .unwrap();
        assert_eq!(with.session, Some(sid));
        let without = verifier.verify(&signer.issue(id, 1, exp)).unwrap();
        assert_eq!(without.session, None);
    }

    #[test]
    fn session_hash_is_base64url_sha256_of_the_id_text() {
        let sid = Uuid::parse_str("0190b8f2-6d4e-7c3a-9a1b-2c3d4e5f6a7b").unwrap();
        let hash = session_hash(sid);
        assert_eq!(hash.len(), 43);
        assert_eq!(
            hash,
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"0190b8f2-6d4e-7c3a-9a1b-2c3d4e5f6a7b"))
        );
        assert!(!hash.contains(&sid.to_string()));
    }

    #[test]
    fn revocation_refuses_older_versions_and_earlier_seconds() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let token = |version, iat| Verified {
            member_id: Uuid::nil(),
            version,
            issued_at: at(iat),
            session: None,
        };
        let revoked = SessionsRevoked {
            not_before: Some(at(1_000) + Duration::milliseconds(400)),
            version: 5,
        };
        // Before the revocation: an older version, whatever its `iat`.
        assert!(token(4, 1_000).revoked_by(&revoked));
        assert!(token(4, 2_000).revoked_by(&revoked));
        // After it: a login reads version 5 or later, whatever the clock of
        // the instance that signed it said (one lagging PostgreSQL's).
        assert!(!token(5, 1_000).revoked_by(&revoked));
        assert!(!token(5, 999).revoked_by(&revoked));
        assert!(!token(6, 1_001).revoked_by(&revoked));
        // Never revoked.
        assert!(!token(1, 0).revoked_by(&SessionsRevoked::default()));
    }
}
