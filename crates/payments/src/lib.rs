//! The payments service: the intermediary between the shop and the card processor (an outside
//! system, `bazaar-processor` in development). Users save cards (tokenized by the processor:
//! this service keeps only the token, brand and last four digits); the orders service
//! authorizes, captures, voids and refunds payments, idempotently by key; each change
//! publishes an event (`payment.authorized`, `.declined`, `.captured`, `.voided`,
//! `.refunded`) through the transactional outbox. Payments consumes no events.
//!
//! Code map:
//! - [`model`]: the wire contract, event payloads and validation;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - [`processor`]: the HTTP client of the processor (merchant key, idempotency keys, timeout);
//! - `api`: the handlers, the write-ahead pattern that guarantees no double charge (G4), and
//!   the OpenAPI document.
//!
//! Invariants: a card number or CVC is never stored or logged; a payment row exists (as
//! `pending`, with its processor idempotency key) before the processor is asked to authorize
//! it; every status change commits together with its event; a retry with the same key never
//! makes the processor act twice.
//!
//! Chaos hook (tests only): `crash_after_processor_call = "authorize"` (or `capture`, `void`,
//! `refund`) makes the process exit with status 86 right after the processor answered and
//! before the answer is stored, to prove that a retry after a crash does not charge twice.

mod api;
pub mod model;
pub mod processor;
pub mod repository;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient, Snapshot};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::{CommonConfig, Secret};
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;
use bazaar_kit::storage::Database;
use bazaar_messaging::{Messaging, Outbox};
use serde::{Deserialize, Serialize};

pub use api::{openapi, processor_key_for_authorization, processor_key_for_operation, router};
pub use processor::ProcessorClient;
pub use repository::Repository;

/// Payments name in the registry.
pub const NAME: &str = "payments";
/// Default port.
pub const DEFAULT_PORT: u16 = 8088;

/// The payments migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Payments-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Base URL of the card processor (an outside system: not resolved through the registry).
    pub processor_url: String,
    /// The merchant's secret key at the processor. Never logged.
    pub merchant_key: Secret,
    /// How long to wait for the processor per call, in milliseconds; past it, the caller gets a
    /// 504 and retries with the same idempotency key.
    pub processor_timeout_ms: u64,
    /// Chaos hook for tests: `authorize`, `capture`, `void` or `refund` makes the process exit
    /// (status 86) right after the processor answered that call and before the answer is
    /// stored. Empty (the default) disables it.
    pub crash_after_processor_call: String,
    /// Issuer of the access tokens callers carry (the gateway's public URL).
    pub issuer: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            processor_url: "http://127.0.0.1:8089".to_owned(),
            merchant_key: Secret("sk_test_bazaar".to_owned()),
            processor_timeout_ms: 3_000,
            crash_after_processor_call: String::new(),
            issuer: "http://127.0.0.1:8080".to_owned(),
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
    pub verifier: Arc<Verifier>,
    pub processor: ProcessorClient,
    /// The chaos hook's point (`Config::crash_after_processor_call`).
    pub crash_after: String,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Opens (and migrates) the database at `url` with its own outbox handle. For tools and tests;
/// the service shares its messaging's outbox.
pub async fn open(url: &str) -> anyhow::Result<Repository> {
    let db = Database::open(url, &MIGRATOR).await?;
    let outbox = Outbox::open(&db, NAME).await?;
    Ok(Repository::new(db, outbox))
}

/// Builds the payments service, verifying tokens with the identity service's published keys.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", NAME],
        Verifier::service_fetcher(ServiceClient::new(discovery.clone())),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    assemble(common, config, verifier, discovery).await
}

/// Builds the payments service with a given token verifier (tests pass one trusting a test
/// issuer). Payments consumes no events, so it needs no view of the registry here.
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
) -> anyhow::Result<Service> {
    assemble(
        common,
        config,
        verifier,
        Discovery::fixed(Snapshot::default()),
    )
    .await
}

async fn assemble(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
    discovery: Discovery,
) -> anyhow::Result<Service> {
    if !config.crash_after_processor_call.is_empty()
        && !["authorize", "capture", "void", "refund"]
            .contains(&config.crash_after_processor_call.as_str())
    {
        anyhow::bail!(
            "payments.crash_after_processor_call must be empty, authorize, capture, void or \
             refund, not {:?}",
            config.crash_after_processor_call
        );
    }
    if !config.crash_after_processor_call.is_empty() {
        tracing::warn!(point = %config.crash_after_processor_call,
            "chaos hook armed: the process will exit after that processor call");
    }
    let db = Database::open(&common.database_url(), &MIGRATOR).await?;
    let metrics = Metrics::new();
    let client = ServiceClient::for_service(&common, discovery);
    let messaging = Messaging::start(&common, &db, client, verifier.clone(), &metrics).await?;
    let repository = Repository::new(db.clone(), messaging.outbox().clone());
    let processor = ProcessorClient::new(
        &config.processor_url,
        config.merchant_key.clone(),
        Duration::from_millis(config.processor_timeout_ms.max(1)),
    );
    let state = AppState::from(Shared {
        repository,
        verifier,
        processor,
        crash_after: config.crash_after_processor_call.clone(),
    });
    let router = router(state).merge(messaging.feed_router());
    Ok(Service::new(common, router)
        .with_openapi(openapi())
        .with_metrics(metrics)
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
