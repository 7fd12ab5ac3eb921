//! The cryptographic primitives, in one place so each is chosen once: argon2id for passwords
//! and client secrets, 256-bit random opaque tokens stored as SHA-256, PKCE S256, Ed25519 keys.
//!
//! Password hashing is deliberately slow (that is its point), so callers run it on the
//! blocking pool through [`hash_password`] and [`verify_password`], never on the async
//! runtime's worker threads.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Hashes a secret as an argon2id PHC string (the crate's default parameters, which are
/// OWASP's recommended minimum).
pub fn hash_password_blocking(secret: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// Verifies a secret against a PHC string; a malformed hash is a mismatch, not a panic.
pub fn verify_password_blocking(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// [`hash_password_blocking`] on the blocking pool.
pub async fn hash_password(secret: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&secret)).await?
}

/// [`verify_password_blocking`] on the blocking pool.
pub async fn verify_password(secret: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || verify_password_blocking(&secret, &phc))
        .await
        .unwrap_or(false)
}

/// A fresh opaque token: 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How opaque tokens are stored: SHA-256, hex. A fast hash is enough because the tokens have
/// 256 bits of entropy (nothing to brute-force), unlike passwords.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// PKCE S256: `BASE64URL(SHA256(verifier)) == challenge`, compared in constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// RFC 7636: a verifier is 43-128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Byte comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new Ed25519 key: (kid, base64 PKCS#8 DER private key, base64url public key).
pub fn generate_ed25519() -> anyhow::Result<(String, String, String)> {
    let signing = SigningKey::generate(&mut OsRng);
    let der = signing
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("cannot encode the key as PKCS#8: {e}"))?;
    let public = signing.verifying_key().to_bytes();
    let x = URL_SAFE_NO_PAD.encode(public);
    // The kid is derived from the public key (a short thumbprint), so it is stable and
    // unique without coordination between instances.
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
    Ok((kid, STANDARD.encode(der.as_bytes()), x))
}

/// OIDC `at_hash` for an EdDSA (Ed25519) token: the left half of SHA-512 of the access
/// token, base64url (the hash matching the curve, per the OpenID Connect errata).
pub fn at_hash(access_token: &str) -> String {
    let digest = sha2::Sha512::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..32])
}

/// Decodes a stored private key.
pub fn decode_private_key(stored: &str) -> anyhow::Result<Vec<u8>> {
    STANDARD
        .decode(stored)
        .map_err(|e| anyhow::anyhow!("stored key is not base64: {e}"))
}

/// Base64url without padding (JWT and PKCE encoding).
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes standard base64 (HTTP Basic credentials).
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert!(pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
    }

    #[test]
    fn passwords_round_trip() {
        let hash = hash_password_blocking("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password_blocking("correct horse", &hash));
        assert!(!verify_password_blocking("wrong horse", &hash));
        assert!(!verify_password_blocking("x", "not a hash"));
    }

    #[test]
    fn keys_generate() {
        let (kid, private, x) = generate_ed25519().unwrap();
        assert!(!kid.is_empty());
        assert!(decode_private_key(&private).is_ok());
        assert_eq!(x.len(), 43);
    }
}
