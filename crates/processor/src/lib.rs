//! The card-processor simulator: an *outside* system (like Stripe) that the payments service
//! calls over HTTP with a merchant key. It has its own vault (it may keep card numbers; no
//! bazaar service does), authorizations with capture, void and refund, idempotency keys stored
//! in its own database (so retries are safe across restarts), and test cards that approve,
//! decline, fail, time out or answer slowly on purpose (`GET /v1/test-cards`).
//!
//! Code map:
//! - [`model`]: the wire contract, card rules (Luhn, brand, expiry), the test-card table and the
//!   authorization state machine;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - `api`: the handlers (merchant auth, idempotency replay) and the OpenAPI document.
//!
//! Invariants: an answer is stored under its idempotency key in the same transaction as its
//! effect, so a retry never repeats an effect; a key reused for another request is refused;
//! card numbers are never logged; the CVC is never stored.

mod api;
pub mod model;
pub mod repository;

use std::time::Duration;

use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use bazaar_kit::storage::Database;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use api::{openapi, router, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use repository::Repository;

/// The processor's name (its `bazaar serve` target and data directory).
pub const NAME: &str = "processor";
/// Default port.
pub const DEFAULT_PORT: u16 = 8089;

/// The processor's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Processor-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The merchant's secret key, expected as `Authorization: Bearer <key>`.
    pub merchant_key: String,
    /// How long the timeout test card (4000000000000259) holds its answer, in milliseconds.
    pub timeout_delay_ms: u64,
    /// How long the slow test card (4000000000003220) takes to answer, in milliseconds.
    pub slow_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            merchant_key: "sk_test_bazaar".to_owned(),
            timeout_delay_ms: 30_000,
            slow_delay_ms: 1_500,
        }
    }
}

bazaar_kit::request_state! {
    /// What the handlers share.
    pub struct AppState(Shared);
}

/// The fields every request of this service reaches through [`AppState`].
pub struct Shared {
    pub repository: Repository,
    /// SHA-256 of the merchant key: requests are checked against the hash.
    pub merchant_key_hash: Vec<u8>,
    pub slow_delay: Duration,
    pub timeout_delay: Duration,
}

impl AppState {
    pub fn new(repository: Repository, config: &Config) -> Self {
        Shared {
            repository,
            merchant_key_hash: Sha256::digest(config.merchant_key.as_bytes()).to_vec(),
            slow_delay: Duration::from_millis(config.slow_delay_ms),
            timeout_delay: Duration::from_millis(config.timeout_delay_ms),
        }
        .into()
    }
}

/// Opens (and migrates) the processor's database at `url`.
pub async fn open(url: &str) -> anyhow::Result<Repository> {
    Ok(Repository::new(Database::open(url, &MIGRATOR).await?))
}

/// Builds the processor. It verifies no bazaar tokens (merchants authenticate with their key),
/// so it needs neither discovery nor a verifier.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    service(common, config).await
}

/// Builds the processor (the same as [`build`]; named like the other services' test entry).
pub async fn service(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    if config.merchant_key.is_empty() {
        anyhow::bail!("processor.merchant_key must not be empty");
    }
    let repository = open(&common.database_url()).await?;
    let db = repository.database().clone();
    let router = router(AppState::new(repository, &config));
    // The outside card processor has no internal routes for bazaar to batch.
    Ok(Service::new(common, router)
        .without_batches()
        .with_openapi(openapi())
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
