//! API keys: looked up at the `developer` service (`POST /internal/v1/keys/lookup`), cached.
//!
//! A found key is reused for `key_cache_ms` (30 s by default), an unknown one is remembered as
//! unknown for `key_negative_cache_ms` (5 s): a revocation or a plan change therefore takes
//! effect within 30 s, and a flood of made-up keys costs one lookup per key per 5 s. The cache
//! is keyed by the SHA-256 of the key, so raw keys are not kept in memory longer than a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use bazaar_kit::client::{CallError, ServiceClient};
use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error;

/// The service that owns keys, plans and usage.
pub const DEVELOPER_SERVICE: &str = "developer";
/// Most entries kept; past it, expired ones are dropped, and if that is not enough, all.
const MAX_CACHED: usize = 100_000;

/// A plan's limits, as the developer service describes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    #[serde(default)]
    pub title: String,
    pub rate_per_second: u32,
    pub burst: u32,
    #[serde(default)]
    pub quota_per_day: Option<u64>,
    #[serde(default)]
    pub quota_per_month: Option<u64>,
    #[serde(default)]
    pub trial_days: Option<u32>,
    #[serde(default)]
    pub self_service: bool,
}

/// What a key lookup returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub key_id: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub name: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    pub plan_name: String,
    pub plan: Plan,
    /// When the key (its trial) ends: Unix milliseconds or an RFC 3339 string; none: never.
    #[serde(default)]
    pub expires_at: Option<serde_json::Value>,
}

impl KeyRecord {
    /// Whether the key has run out: the developer service says so, or its end is past (a
    /// trial may end while the record sits in the cache).
    pub fn is_expired(&self) -> bool {
        if self.status == "expired" {
            return true;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ends_ms = match &self.expires_at {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(at)) => {
                crate::calendar::parse_rfc3339(at).map(|s| s * 1000)
            }
            _ => None,
        };
        ends_ms.is_some_and(|at| at <= now_ms)
    }

    /// `expires_at` for people.
    pub fn ended_on(&self) -> String {
        match &self.expires_at {
            Some(serde_json::Value::String(at)) => at.clone(),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(|ms| crate::calendar::rfc3339(ms / 1000))
                .unwrap_or_else(|| n.to_string()),
            _ => "an earlier date".to_owned(),
        }
    }
}

#[derive(Serialize)]
struct LookupRequest<'a> {
    key: &'a str,
}

type Entry = (Instant, Option<Arc<KeyRecord>>);

/// The cached key lookup.
pub struct KeyStore {
    services: ServiceClient,
    positive: Duration,
    negative: Duration,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
}

impl KeyStore {
    pub fn new(services: ServiceClient, positive: Duration, negative: Duration) -> Self {
        Self {
            services,
            positive,
            negative,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key's record, or `None` for an unknown key. Fails (503) only when the developer
    /// service cannot answer and nothing is cached.
    pub async fn lookup(&self, key: &str) -> Result<Option<Arc<KeyRecord>>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some((until, record)) = self.cache.lock().expect("key cache").get(&digest) {
            if *until > Instant::now() {
                return Ok(record.clone());
            }
        }
        let answer = self
            .services
            .send(
                DEVELOPER_SERVICE,
                Method::POST,
                "/internal/v1/keys/lookup",
                Some(&LookupRequest { key }),
                Default::default(),
            )
            .await;
        let record = match answer {
            Ok(response) => match response.json::<KeyRecord>().await {
                Ok(record) => Some(Arc::new(record)),
                Err(cause) => {
                    tracing::warn!(error = %cause, "undecodable key lookup answer");
                    return Err(error::key_lookup_unavailable());
                }
            },
            Err(CallError::Status { status: 404, .. }) => None,
            Err(cause) => {
                tracing::warn!(error = %cause, "api key lookup failed");
                return Err(error::key_lookup_unavailable());
            }
        };
        let ttl = if record.is_some() {
            self.positive
        } else {
            self.negative
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(digest, (now + ttl, record.clone()));
        Ok(record)
    }
}
