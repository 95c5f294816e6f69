//! Passwords and tokens: argon2id hashing on the blocking pool (bounded, so a
//! login storm queues instead of starving message delivery), random bearer
//! tokens kept only as SHA-256 hashes, and name/password validation.

use std::sync::Arc;

use argon2::Algorithm;
use argon2::Argon2;
use argon2::Params;
use argon2::PasswordHasher;
use argon2::PasswordVerifier;
use argon2::Version;
use base64::Engine as _;
use rand::RngCore;
use sha2::Digest;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::meta::TokenHash;

/// OWASP's argon2id minimum: 19 MiB, two passes, one lane.
const MEMORY_KIB: u32 = 19_456;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Why a password operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// argon2 refused its inputs (never expected with validated input).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task died or the pool shut down.
    #[error("password worker unavailable")]
    Worker,
}

/// Hashes and verifies passwords off the async workers.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash of a random password: verifying against it for unknown
    /// users makes "no such user" take as long as "wrong password".
    dummy: Arc<str>,
}

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> Result<String, AuthError> {
    let hash = hasher()?.hash_password(password.as_bytes()).map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn verify_now(hash: &str, password: &str) -> bool {
    hasher().is_ok_and(|h| h.verify_password(password.as_bytes(), hash).is_ok())
}

impl Passwords {
    /// Prepares the hasher; at most `parallel` hashes run at once.
    pub fn new(parallel: usize) -> Result<Self, AuthError> {
        let dummy = hash_now(&random_token())?;
        Ok(Self { permits: Arc::new(Semaphore::new(parallel.max(1))), dummy: dummy.into() })
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let _permit = self.permits.acquire().await.map_err(|_| AuthError::Worker)?;
        tokio::task::spawn_blocking(move || hash_now(&password)).await.map_err(|_| AuthError::Worker)?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user) it
    /// spends the same time and answers false.
    pub async fn verify(&self, hash: Option<String>, password: String) -> Result<bool, AuthError> {
        let _permit = self.permits.acquire().await.map_err(|_| AuthError::Worker)?;
        let dummy = self.dummy.clone();
        tokio::task::spawn_blocking(move || match hash {
            Some(h) => verify_now(&h, &password),
            None => {
                verify_now(&dummy, &password);
                false
            }
        })
        .await
        .map_err(|_| AuthError::Worker)
    }
}

/// A new 256-bit random token, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a token or ticket.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a username against `^[a-z0-9_.-]{3,32}$`.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a room id against `^[a-z0-9_-]{1,64}$`.
pub fn valid_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Checks a password's length: 8 to 128 characters.
pub fn valid_password(password: &str) -> bool {
    (8..=128).contains(&password.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_protocol() {
        for ok in ["abc", "a_b.c-d", "0123456789012345678901234567890x"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["ab", "ABC", "a b", "ab:c", "", "x".repeat(33).as_str(), "é12"] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_room_id("a"));
        assert!(valid_room_id(&"r".repeat(64)));
        for bad in ["", "a.b", "A", "dm:a:b", &"r".repeat(65)] {
            assert!(!valid_room_id(bad), "{bad}");
        }
        assert!(valid_password("12345678"));
        assert!(!valid_password("1234567"));
        assert!(valid_password(&"é".repeat(128)));
        assert!(!valid_password(&"x".repeat(129)));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let pw = Passwords::new(2).expect("hasher");
        let hash = pw.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(pw.verify(Some(hash.clone()), "correct horse".into()).await.expect("verify"));
        assert!(!pw.verify(Some(hash), "wrong horse".into()).await.expect("verify"));
        assert!(!pw.verify(None, "correct horse".into()).await.expect("verify"));
    }
}
