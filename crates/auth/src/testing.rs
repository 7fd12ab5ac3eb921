//! A token issuer for tests: signs EdDSA access tokens exactly as the identity service does and
//! builds a [`Verifier`] that trusts it, so a service's tests exercise its real authorization
//! code without running the identity service.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::verifier::Verifier;

/// The issuer test tokens claim.
pub const TEST_ISSUER: &str = "http://127.0.0.1:8080";

/// Signs test tokens with a fresh Ed25519 key.
pub struct TestIssuer {
    signing: SigningKey,
    kid: String,
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    pub fn new() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand_core::OsRng),
            kid: "test-key".into(),
        }
    }

    /// The JWKS publishing this issuer's key.
    pub fn jwks(&self) -> serde_json::Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.signing.verifying_key().as_bytes());
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]})
    }

    /// A verifier accepting this issuer's tokens for `audiences`.
    pub fn verifier(&self, audiences: &[&str]) -> Arc<Verifier> {
        let set: JwkSet = serde_json::from_value(self.jwks()).expect("valid jwks");
        Verifier::new(
            TEST_ISSUER,
            audiences,
            Arc::new(move || {
                let set = set.clone();
                Box::pin(async move { Ok(set) })
            }),
        )
    }

    /// Signs arbitrary claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let der = self.signing.to_pkcs8_der().expect("pkcs8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("sign")
    }

    /// A token with the given subject, client, audience, scope and roles.
    pub fn token(
        &self,
        sub: &str,
        client_id: &str,
        aud: &str,
        scope: &str,
        roles: &[&str],
    ) -> String {
        self.sign(&Self::claims(sub, client_id, aud, scope, roles))
    }

    fn claims(
        sub: &str,
        client_id: &str,
        aud: &str,
        scope: &str,
        roles: &[&str],
    ) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        json!({"iss": TEST_ISSUER, "sub": sub, "aud": aud, "exp": now + 300, "iat": now, "nbf": now,
               "jti": format!("jti-{sub}-{now}"), "client_id": client_id, "scope": scope, "roles": roles})
    }

    /// A signed-in customer's token.
    pub fn customer(&self, user_id: &str) -> String {
        self.sign(&Self::claims(
            user_id,
            "storefront",
            "bazaar",
            "openid",
            &["customer"],
        ))
    }

    /// An administrator's token.
    pub fn admin(&self, user_id: &str) -> String {
        self.sign(&Self::claims(
            user_id,
            "storefront",
            "bazaar",
            "openid",
            &["customer", "admin"],
        ))
    }

    /// A service's client-credentials token for `audience`.
    pub fn service(&self, audience: &str) -> String {
        self.sign(&Self::claims(
            "bazaar-services",
            "bazaar-services",
            audience,
            "internal",
            &["service"],
        ))
    }

    /// A partner's client-credentials token.
    pub fn partner(&self) -> String {
        self.sign(&Self::claims(
            "demo-partner",
            "demo-partner",
            "bazaar",
            "partner",
            &[],
        ))
    }
}
