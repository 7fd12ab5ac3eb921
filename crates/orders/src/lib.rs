//! The orders service: checkout from the cart and the saga that carries each order through
//! stock, payment and shipping (see `saga` for the steps and guarantees).
//!
//! Code map:
//! - [`model`]: the wire contract and validation, and the saga's stored state;
//! - [`repository`]: every SQL statement (orders, their history, the outbox writes);
//! - [`remote`]: typed calls to cart, inventory, payments, shipping and currency;
//! - [`saga`]: the worker that drives pending orders, its state persisted as it goes;
//! - [`finishes`]: wakes the status requests waiting for an order to finish (`?wait=`);
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: one order per (user, idempotency key); an order is `pending` until its saga ends
//! in `confirmed` or `cancelled`, and every step's outcome is in its history; `order.placed`,
//! `order.confirmed` and `order.cancelled` commit with the state change they announce.

mod api;
pub mod finishes;
pub mod model;
pub mod remote;
pub mod repository;
pub mod saga;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;
use bazaar_kit::storage::Database;
use bazaar_messaging::Messaging;
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use repository::Repository;
pub use saga::Saga;

pub const NAME: &str = "orders";
pub const DEFAULT_PORT: u16 = 8091;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Orders-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Issuer of the access tokens (the gateway's public URL).
    pub issuer: String,
    /// Longest pause between retries of a saga step, in milliseconds.
    pub max_backoff_ms: i64,
    /// Chaos hook for tests and demos: `locate`, `reserve_stock`, `price`, `authorize_payment`,
    /// `create_shipment`, `commit_stock`, `capture_payment` or `confirm` makes the process exit
    /// right after that step's remote call succeeded and before recording it, once per data
    /// directory (a marker file `crashed-<step>` remembers it). Empty: off.
    pub crash_after_step: String,
    /// Per-call timeout to other services, in milliseconds.
    pub call_timeout_ms: u64,
    /// Whether the saga's commands to one service share requests under load
    /// (`ServiceClient::send_coalesced`, `kit::batch`). Unset: on when this service's database
    /// is SQLite, off on PostgreSQL, as measured (docs/performance.md, eighth round): on SQLite
    /// a callee runs a batch's items one after another on its thread and batching saves the
    /// orders service a fifth of its CPU per order; on PostgreSQL the items of a batch start
    /// their transactions together and queue on the callee's outbox lock, which cost 10% of
    /// throughput.
    pub coalesce_calls: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            max_backoff_ms: 5_000,
            crash_after_step: String::new(),
            call_timeout_ms: 5_000,
            coalesce_calls: None,
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
    pub remote: remote::Remote,
    pub messaging: Messaging,
    pub saga: Saga,
    pub verifier: Arc<Verifier>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Builds the orders service against the registry and the identity service.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let client = ServiceClient::for_service(&common, discovery.clone())
        .with_timeout(Duration::from_millis(config.call_timeout_ms));
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", NAME],
        Verifier::service_fetcher(ServiceClient::new(discovery)),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    service(common, config, verifier, client).await
}

/// Builds the orders service with a given verifier and client (tests).
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
    client: ServiceClient,
) -> anyhow::Result<Service> {
    let db = Database::open(&common.database_url(), &MIGRATOR).await?;
    let metrics = Metrics::new();
    let messaging =
        Messaging::start(&common, &db, client.clone(), verifier.clone(), &metrics).await?;
    let repository = Repository::new(db.clone());
    let coalesce = config
        .coalesce_calls
        .unwrap_or(db.engine() == bazaar_kit::storage::Engine::Sqlite);
    let remote = remote::Remote::new(client, coalesce);
    let crash_after = (!config.crash_after_step.is_empty()).then(|| {
        (
            config.crash_after_step.clone(),
            common
                .data_dir
                .join(format!("crashed-{}", config.crash_after_step)),
        )
    });
    // The worker's name is its address: a restarted instance (same address) takes back the
    // claims of its previous life (`Saga::run`). An instance on a port picked at random has no
    // stable address, so its name is unique to this process instead.
    let worker = if common.port == 0 {
        format!(
            "{}@{}:0/{}",
            NAME,
            common.host,
            uuid::Uuid::new_v4().simple()
        )
    } else {
        format!("{}@{}:{}", NAME, common.host, common.port)
    };
    let saga = Saga::new(
        repository.clone(),
        remote.clone(),
        messaging.outbox().clone(),
        worker,
        saga::SagaSettings {
            max_backoff_ms: config.max_backoff_ms,
            crash_after,
        },
    );
    tokio::spawn(saga.clone().run());
    let state = AppState::from(Shared {
        repository,
        remote,
        messaging: messaging.clone(),
        saga,
        verifier,
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
