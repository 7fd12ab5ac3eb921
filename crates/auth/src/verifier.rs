//! The JWKS cache and token validation.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use bazaar_kit::ApiError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use crate::claims::Claims;

type FetchFuture = Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send>>;
/// Fetches the current JWKS (over HTTP from the identity service, or from a fixture in tests).
pub type JwksFetcher = Arc<dyn Fn() -> FetchFuture + Send + Sync>;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// Most verified tokens remembered at once.
const VERIFIED_CAPACITY: usize = 10_000;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    Issuer,
    #[error("the token is not meant for this API")]
    Audience,
    #[error("{0}")]
    Forbidden(String),
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match &error {
            AuthError::Forbidden(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                    .detail(why.clone())
                    .header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Bearer realm=\"bazaar\", error=\"insufficient_scope\"",
                        ),
                    )
            }
            AuthError::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            )
            .detail("send an access token: Authorization: Bearer <token>")
            .header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bazaar\""),
            ),
            other => {
                let value = format!(
                    "Bearer realm=\"bazaar\", error=\"invalid_token\", error_description=\"{other}\""
                );
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "Invalid token")
                    .detail(other.to_string())
                    .header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_str(&value)
                            .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
                    )
            }
        }
    }
}

/// Verifies tokens against a cached JWKS. Share it in an `Arc`.
pub struct Verifier {
    issuer: String,
    audiences: Vec<String>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Tokens that passed every check, by the SHA-256 of the token, until their `exp`: the same
    /// bytes always verify the same way, so a client sending its token on every request pays
    /// for the signature check once.
    verified: Mutex<HashMap<[u8; 32], Claims>>,
    fetcher: JwksFetcher,
    /// When the last fetch ended, and whether it succeeded.
    last_fetch: Mutex<Option<(Instant, bool)>>,
    min_refetch: Duration,
}

impl Verifier {
    /// A verifier accepting tokens from `issuer` whose `aud` is one of `audiences`.
    pub fn new(issuer: &str, audiences: &[&str], fetcher: JwksFetcher) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            keys: RwLock::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            fetcher,
            last_fetch: Mutex::new(None),
            min_refetch: Duration::from_secs(10),
        })
    }

    /// Fetches the JWKS from a URL.
    pub fn http_fetcher(url: String) -> JwksFetcher {
        let http = reqwest::Client::new();
        Arc::new(move || {
            let http = http.clone();
            let url = url.clone();
            Box::pin(async move {
                http.get(&url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .error_for_status()
                    .map_err(|e| e.to_string())?
                    .json::<JwkSet>()
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// Fetches the JWKS from the identity service through the registry.
    pub fn service_fetcher(client: bazaar_kit::client::ServiceClient) -> JwksFetcher {
        Arc::new(move || {
            let client = client.clone();
            Box::pin(async move {
                client
                    .get_json::<JwkSet>("identity", "/oauth2/jwks.json")
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// How long at least between two refetches triggered by unknown key ids.
    pub fn with_min_refetch(mut self: Arc<Self>, every: Duration) -> Arc<Self> {
        if let Some(this) = Arc::get_mut(&mut self) {
            this.min_refetch = every;
        }
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Replaces the cached keys with the fetched set; on failure keeps the cached keys.
    pub async fn refresh(&self) -> Result<usize, String> {
        let fetched = (self.fetcher)().await;
        *self.last_fetch.lock().expect("fetch lock") = Some((Instant::now(), fetched.is_ok()));
        let set = fetched?;
        let mut fresh = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Only Ed25519 keys: a symmetric or other key in the set must never verify anything.
            let AlgorithmParameters::OctetKeyPair(params) = &jwk.algorithm else {
                continue;
            };
            if params.curve != EllipticCurve::Ed25519 {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                fresh.insert(kid, key);
            }
        }
        let count = fresh.len();
        *self.keys.write().expect("keys lock") = fresh;
        Ok(count)
    }

    /// Refreshes every `every` for as long as the verifier lives; after a failure (the identity
    /// service not started yet, or down) it retries sooner, backing off up to `every`.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut retry = Duration::from_millis(250);
            loop {
                let Some(verifier) = weak.upgrade() else {
                    return;
                };
                let pause = match verifier.refresh().await {
                    Ok(_) => {
                        retry = Duration::from_millis(250);
                        every
                    }
                    Err(error) => {
                        tracing::debug!(%error, "jwks refresh failed; keeping cached keys");
                        retry = (retry * 2).min(every);
                        retry
                    }
                };
                drop(verifier);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Whether a key id is cached.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.read().expect("keys lock").contains_key(kid)
    }

    async fn key_for(&self, kid: &str) -> Option<DecodingKey> {
        if let Some(key) = self.keys.read().expect("keys lock").get(kid) {
            return Some(key.clone());
        }
        // Unknown kids are rate-limited after a successful fetch, so garbage tokens cannot turn
        // into a fetch each. A failed last fetch (identity not reachable yet) taught us nothing,
        // so it does not hold the next one back; such fetches fail fast.
        let may_refetch = self
            .last_fetch
            .lock()
            .expect("fetch lock")
            .is_none_or(|(at, ok)| !ok || at.elapsed() >= self.min_refetch);
        if may_refetch {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "jwks refetch for an unknown key failed");
            }
        }
        self.keys.read().expect("keys lock").get(kid).cloned()
    }

    /// Validates a token: EdDSA only, a known key, signature, `exp`/`nbf`, `iss`, `aud`.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(claims) = self.verified.lock().expect("verified lock").get(&digest) {
            // The same bound as the full check: valid until `exp` plus the leeway.
            if claims.exp + LEEWAY_SECS > now {
                return Ok(claims.clone());
            }
        }
        let claims = self.verify_uncached(token).await?;
        let mut verified = self.verified.lock().expect("verified lock");
        if verified.len() >= VERIFIED_CAPACITY {
            // Bounded memory: drop what has expired, and everything if that is not enough.
            verified.retain(|_, c| c.exp + LEEWAY_SECS > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
            _ => AuthError::Malformed,
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = self.key_for(&kid).await.ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::InvalidSignature => AuthError::Signature,
                    ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                    _ => AuthError::Malformed,
                }
            })
    }
}
