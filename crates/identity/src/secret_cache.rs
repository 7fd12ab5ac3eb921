//! A short-lived memory of client secrets that already passed an argon2id check.
//!
//! Client secrets are stored as argon2id hashes, whose cost (tens of milliseconds) is right for
//! a password but would cap the client-credentials grant, which a service or partner calls
//! constantly, at a few dozen per second. After one successful check the SHA-256 of the secret
//! is remembered together with the stored hash it matched, for [`TTL`]: the next grants compare
//! digests instead. A changed secret (a new stored hash) misses the cache; a wrong secret always
//! falls through to argon2id, so guessing gains nothing. Only digests of high-entropy secrets
//! are kept, never the secrets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a verified secret is remembered.
pub const TTL: Duration = Duration::from_secs(300);

/// A secret verified against a stored hash, as its digest, and when.
struct Verified {
    stored_hash: String,
    digest: [u8; 32],
    at: Instant,
}

#[derive(Default)]
pub struct SecretCache {
    by_client: Mutex<HashMap<String, Verified>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Digests of secrets stay out of logs too.
        f.write_str("SecretCache { .. }")
    }
}

impl SecretCache {
    fn digest(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }

    /// Whether `secret` was verified against `stored_hash` for `client_id` within the TTL.
    pub fn verified(&self, client_id: &str, stored_hash: &str, secret: &str) -> bool {
        let digest = Self::digest(secret);
        let entries = self.by_client.lock().expect("secret cache lock");
        entries.get(client_id).is_some_and(|known| {
            known.stored_hash == stored_hash
                && known.at.elapsed() < TTL
                && constant_time_eq(&known.digest, &digest)
        })
    }

    /// Remembers a secret that just passed the argon2id check.
    pub fn remember(&self, client_id: &str, stored_hash: &str, secret: &str) {
        self.by_client.lock().expect("secret cache lock").insert(
            client_id.to_owned(),
            Verified {
                stored_hash: stored_hash.to_owned(),
                digest: Self::digest(secret),
                at: Instant::now(),
            },
        );
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_the_verified_secret_for_the_same_stored_hash() {
        let cache = SecretCache::default();
        assert!(!cache.verified("c", "$argon2id$h1", "s3cret"));
        cache.remember("c", "$argon2id$h1", "s3cret");
        assert!(cache.verified("c", "$argon2id$h1", "s3cret"));
        assert!(
            !cache.verified("c", "$argon2id$h1", "wrong"),
            "a wrong secret never matches"
        );
        assert!(
            !cache.verified("c", "$argon2id$h2", "s3cret"),
            "a changed secret misses"
        );
        assert!(!cache.verified("other", "$argon2id$h1", "s3cret"));
    }
}
