//! API keys: `bzr_<id>_<secret>`, where `id` is 12 and `secret` 32 random base62 characters
//! from the operating system's CSPRNG.
//!
//! Only the SHA-256 of the whole key is stored. A fast hash is enough here, unlike for
//! passwords: the secret has ~190 bits of entropy, so there is nothing to brute-force, and a
//! fast hash keeps the gateway's lookup cheap. The `id` is not secret: it is the handle owners
//! and admins use, and `bzr_<id>` (the prefix) is shown so people can recognise their keys.

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

/// What every key starts with, so leaked keys are easy to spot (secret scanners).
pub const KEY_PREFIX: &str = "bzr_";
/// Characters of a key id.
pub const ID_CHARS: usize = 12;
/// Characters of a key secret.
pub const SECRET_CHARS: usize = 32;

/// A freshly generated key. The full key must leave the service exactly once.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub id: String,
    /// `bzr_<id>_<secret>`.
    pub key: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, even in a debug log.
        write!(f, "GeneratedKey({})", prefix(&self.id))
    }
}

impl GeneratedKey {
    pub fn generate() -> Self {
        let id = random_base62(ID_CHARS);
        let secret = random_base62(SECRET_CHARS);
        let key = format!("{KEY_PREFIX}{id}_{secret}");
        Self { id, key }
    }

    pub fn hash(&self) -> String {
        hash(&self.key)
    }

    pub fn prefix(&self) -> String {
        prefix(&self.id)
    }
}

fn random_base62(len: usize) -> String {
    // `Alphanumeric` samples uniformly from [A-Za-z0-9]: base62.
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The displayable prefix of key `id`.
pub fn prefix(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// SHA-256 hex of a key, as stored.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether `key` has the shape of a bazaar key (cheap rejection before touching the database).
pub fn is_well_formed(key: &str) -> bool {
    let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return false;
    };
    id.len() == ID_CHARS
        && secret.len() == SECRET_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = GeneratedKey::generate();
        let b = GeneratedKey::generate();
        assert!(is_well_formed(&a.key), "{}", a.key);
        assert_eq!(a.key.len(), 4 + 12 + 1 + 32);
        assert!(a.key.starts_with(&a.prefix()));
        assert_ne!(a.key, b.key);
        assert_ne!(a.id, b.id);
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(&a.key));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "bzr_",
            "sk_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345",
            "bzr_abcdefghijk_abcdefghijklmnopqrstuvwxyz012345",
            "bzr_abcdefghijkl_abcdefghijklmnopqrstuvwxyz01234!",
            "bzr_abcdefghijkl-abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
        assert!(is_well_formed(
            "bzr_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345"
        ));
    }
}
