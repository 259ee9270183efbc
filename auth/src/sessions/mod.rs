//! Sessions: one per login (one device), kept alive by a refresh token that
//! rotates on every use (RFC 9700). [`decide`] says what a presented refresh
//! token gets, as a pure function; [`store`] keeps sessions and the hashes
//! of their refresh tokens; the RPCs in `grpc` carry decisions out.
pub mod decide;
pub mod store;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// A refresh token as the client holds it: 256 random bits, base64url.
/// Never logged (no `Debug` that shows it), never stored: auth keeps
/// [`Self::hash`] only.
pub struct RefreshToken(String);

impl RefreshToken {
    /// A new token from the operating system's CSPRNG (through `rand`'s
    /// thread-local generator, reseeded from it).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token a client presented.
    pub fn presented(raw: String) -> Self {
        Self(raw)
    }

    /// The SHA-256 of the token: the key it is stored and looked up by.
    ///
    /// Why this is the constant-time comparison: the presented token is
    /// never compared with a stored token. Its hash is looked up through
    /// the primary-key index, so what a timing difference could reveal is
    /// how many leading bytes of a SHA-256 matched some stored hash, and
    /// an attacker cannot steer a hash's bytes to learn a token from that.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }

    /// The token, to put in a response.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

/// How long sessions and their refresh tokens live (`token.refresh_*`).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// From the login, however often it is refreshed.
    pub absolute: chrono::Duration,
    /// From the last refresh (or the login).
    pub idle: chrono::Duration,
    /// After a rotation, a second presentation of the rotated token within
    /// this answers ABORTED instead of counting as reuse.
    pub reuse_grace: chrono::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_hashed_and_hidden_from_debug() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.0).unwrap().len(), 32);
        assert_ne!(a.0, b.0);
        assert_eq!(a.hash().len(), 32);
        assert_eq!(a.hash(), RefreshToken::presented(a.0.clone()).hash());
        assert!(!format!("{a:?}").contains(&a.0));
    }
}
