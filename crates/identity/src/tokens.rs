//! Signed tokens and the keys that sign them.
//!
//! Access and ID tokens are JWTs signed with Ed25519 (`EdDSA`). The keys live in the database
//! (private key as PKCS#8), so every instance signs with the same key and a rotation made on
//! one instance is seen by all at their next read.
//!
//! Key life cycle: `next` → `current` → `retired` → gone. There is always a `next` key, and it
//! is published in the JWKS before it signs anything, so a resource server that cached the
//! JWKS already knows the key that signs after a rotation. A `retired` key stays published
//! until every token it signed has expired (`retired_at + max(access ttl, id token ttl) +
//! 60 s` of clock-skew margin), then leaves the JWKS.
//!
//! The signing key is read from the database at most once per [`SIGNING_KEY_TTL`] instead of
//! once per token (grants are hot). A rotation here drops the cached key at once; after a
//! rotation on another instance this one signs with the just-retired key for at most that
//! long, which is safe because a retired key stays published 60 s longer than its tokens live.

use bazaar_kit::storage::now_ms;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::model::{KeyState, StoredKey};
use crate::repository::{RepoError, Repository};

/// `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims of an access token (the contract resource servers verify).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl AccessClaims {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Claims of an ID token (OpenID Connect Core §2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Left half of the access token's hash (SHA-512 for Ed25519), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A published key, as in the JWKS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// The JWKS document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Jwks {
    pub keys: Vec<PublicJwk>,
}

/// Why a token did not verify.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// How long the current signing key is used from memory before it is read again.
pub const SIGNING_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The current signing key, as last read. Kept as the expanded Ed25519 key: deriving it from
/// the stored PKCS#8 costs as much as a signature, so it is done once per read, not per token.
struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    read_at: std::time::Instant,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

/// The cached signing key; `generation` counts this instance's rotations, so a read that
/// started before a rotation cannot store the key it retired.
#[derive(Debug, Default)]
struct SigningCache {
    generation: u64,
    key: Option<std::sync::Arc<SigningKey>>,
}

/// Signs and verifies tokens with the keys in the database.
#[derive(Clone, Debug)]
pub struct Signer {
    repository: Repository,
    issuer: String,
    /// How long a retired key stays published, in milliseconds.
    retired_grace_ms: i64,
    signing: std::sync::Arc<std::sync::Mutex<SigningCache>>,
}

impl Signer {
    pub fn new(repository: Repository, issuer: String, longest_token_ttl_secs: u64) -> Self {
        let longest = i64::try_from(longest_token_ttl_secs).unwrap_or(i64::MAX / 2_000);
        Self {
            repository,
            issuer,
            retired_grace_ms: longest.saturating_mul(1000).saturating_add(60_000),
            signing: Default::default(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn new_key(state: KeyState) -> anyhow::Result<StoredKey> {
        let (kid, private_key, public_x) = crypto::generate_ed25519()?;
        Ok(StoredKey {
            kid,
            state,
            private_key,
            public_x,
            created_at: now_ms(),
            retired_at: None,
        })
    }

    /// Makes sure a current and a next key exist (first start, or a database restored
    /// without keys).
    pub async fn ensure_keys(&self) -> anyhow::Result<()> {
        let keys = self.repository.keys().await?;
        if !keys.iter().any(|k| k.state == KeyState::Current) {
            self.repository
                .insert_key(&Self::new_key(KeyState::Current)?)
                .await?;
        }
        if !keys.iter().any(|k| k.state == KeyState::Next) {
            self.repository
                .insert_key(&Self::new_key(KeyState::Next)?)
                .await?;
        }
        Ok(())
    }

    /// Rotates: next → current, current → retired, a new next. Returns (current, next,
    /// retired) kids.
    pub async fn rotate(&self) -> anyhow::Result<(String, String, Option<String>)> {
        self.ensure_keys().await?;
        let keys = self.repository.keys().await?;
        let next = keys
            .iter()
            .find(|k| k.state == KeyState::Next)
            .ok_or_else(|| anyhow::anyhow!("no next key"))?;
        let new_next = Self::new_key(KeyState::Next)?;
        let retired = self.repository.rotate_keys(&next.kid, &new_next).await?;
        {
            let mut cache = self.signing_cache();
            cache.generation += 1;
            cache.key = None;
        }
        Ok((next.kid.clone(), new_next.kid, retired))
    }

    /// Keys that are published now: next, current, and retired ones whose tokens may still be
    /// live.
    async fn published(&self) -> Result<Vec<StoredKey>, RepoError> {
        self.published_at(now_ms()).await
    }

    async fn published_at(&self, now: i64) -> Result<Vec<StoredKey>, RepoError> {
        let grace = self.retired_grace_ms;
        let mut keys: Vec<StoredKey> = self
            .repository
            .keys()
            .await?
            .into_iter()
            .filter(|k| match k.state {
                KeyState::Next | KeyState::Current => true,
                KeyState::Retired => k.retired_at.is_some_and(|at| at + grace > now),
            })
            .collect();
        // Current first: some clients try keys in order.
        keys.sort_by_key(|k| match k.state {
            KeyState::Current => 0,
            KeyState::Next => 1,
            KeyState::Retired => 2,
        });
        Ok(keys)
    }

    /// The JWKS document.
    pub async fn jwks(&self) -> Result<Jwks, RepoError> {
        self.jwks_at(now_ms()).await
    }

    /// The JWKS document as it is (or will be) at `now` (Unix ms); lets tests see a retired
    /// key leave without waiting for it.
    pub async fn jwks_at(&self, now: i64) -> Result<Jwks, RepoError> {
        Ok(Jwks {
            keys: self
                .published_at(now)
                .await?
                .into_iter()
                .map(|k| PublicJwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: k.public_x,
                    kid: k.kid,
                    alg: "EdDSA".into(),
                    use_: "sig".into(),
                })
                .collect(),
        })
    }

    fn signing_cache(&self) -> std::sync::MutexGuard<'_, SigningCache> {
        // Every update leaves the cache consistent, so a poisoned lock is still usable.
        self.signing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn current_key(&self) -> anyhow::Result<std::sync::Arc<SigningKey>> {
        let generation = {
            let cache = self.signing_cache();
            if let Some(key) = cache
                .key
                .as_ref()
                .filter(|key| key.read_at.elapsed() < SIGNING_KEY_TTL)
            {
                return Ok(key.clone());
            }
            cache.generation
        };
        let read_at = std::time::Instant::now();
        let keys = self.repository.keys().await?;
        let key = keys
            .into_iter()
            .find(|k| k.state == KeyState::Current)
            .ok_or_else(|| anyhow::anyhow!("no current signing key"))?;
        let der = crypto::decode_private_key(&key.private_key)?;
        let expanded = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
            .map_err(|e| anyhow::anyhow!("signing key {}: {e}", key.kid))?;
        let signing = std::sync::Arc::new(SigningKey {
            kid: key.kid,
            key: expanded,
            read_at,
        });
        let mut cache = self.signing_cache();
        if cache.generation == generation {
            cache.key = Some(signing.clone());
        }
        Ok(signing)
    }

    /// Signs `claims` with the current key under header type `typ`: a JWS in compact form, the
    /// same bytes `jsonwebtoken::encode` makes, signed with the already expanded key.
    pub async fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        use ed25519_dalek::Signer as _;
        let signing = self.current_key().await?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(signing.kid.clone());
        let mut token = crypto::b64url(&serde_json::to_vec(&header)?);
        token.push('.');
        token.push_str(&crypto::b64url(&serde_json::to_vec(claims)?));
        let signature = signing.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&crypto::b64url(&signature.to_bytes()));
        Ok(token)
    }

    /// Verifies an access token's signature (against a published key), type, issuer, and
    /// lifetime. Revocation is checked by the caller.
    pub async fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid("unexpected algorithm".into()));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            // Stops an ID token (same key, typ JWT) from being replayed as an access token.
            return Err(TokenError::Invalid("not an access token".into()));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        let keys = self.published().await?;
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenError::Invalid("unknown kid".into()))?;
        let decoding = DecodingKey::from_ed_components(&key.public_x)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        // Audiences are the resource server's business; here any of ours is fine.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "nbf"]);
        jsonwebtoken::decode::<AccessClaims>(token, &decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}
