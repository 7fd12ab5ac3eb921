//! The inventory service: stock per product per warehouse, and the reservations checkout takes
//! against it (reserve, commit, release, expiry), as docs/shop.md specifies.
//!
//! Code map:
//! - [`model`]: the wire contract (DTOs, event payloads) and input validation;
//! - [`repository`]: every SQL statement and the transactions that keep stock right;
//! - [`seed`]: the compiled-in warehouses and initial stock, loaded on first start;
//! - [`geo`]: great-circle distance for the nearest-warehouse rule;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: stock is never negative and never oversold (`0 <= reserved <= on_hand`, by
//! guarded updates and `CHECK` constraints); a reservation key names one reservation forever
//! (repeats return it, a release tombstone refuses it); every change of stock and its events
//! commit together (transactional outbox); admin adjustments are audited in the same
//! transaction.

mod api;
pub mod geo;
pub mod model;
pub mod repository;
pub mod seed;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient, Snapshot};
use bazaar_kit::audit::AuditLog;
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;
use bazaar_kit::storage::{now_ms, Database};
use bazaar_messaging::{Messaging, Outbox};
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use repository::{RepoError, Repository, Settings};

/// Inventory name in the registry.
pub const NAME: &str = "inventory";
/// Default port.
pub const DEFAULT_PORT: u16 = 8085;

/// The inventory's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Inventory-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Load the built-in warehouses and stock when there is no stock yet.
    pub seed: bool,
    /// How long a reservation holds when the request gives no `ttl_ms` (15 minutes).
    pub reservation_ttl_ms: u64,
    /// `stock.low` is published when a warehouse's available units of a product drop below
    /// this.
    pub low_stock_threshold: u32,
    /// How often the sweeper releases expired reservations; 0 turns it off.
    pub sweep_interval_ms: u64,
    /// Issuer of the access tokens writes must carry (the gateway's public URL).
    pub issuer: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: true,
            reservation_ttl_ms: 15 * 60 * 1000,
            low_stock_threshold: 5,
            sweep_interval_ms: 5_000,
            issuer: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

impl Config {
    /// What the repository applies.
    pub fn settings(&self) -> Settings {
        Settings {
            // A zero TTL would expire every reservation at birth: treat it as 1 ms.
            reservation_ttl_ms: i64::try_from(self.reservation_ttl_ms)
                .unwrap_or(i64::MAX)
                .max(1),
            low_stock_threshold: i64::from(self.low_stock_threshold),
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
    /// Verifies admin and service tokens: the inventory checks them itself, even behind the
    /// gateway.
    pub verifier: Arc<Verifier>,
    /// Admin adjustments are audited.
    pub audit: AuditLog,
}

impl AppState {
    pub async fn new(repository: Repository, verifier: Arc<Verifier>) -> anyhow::Result<Self> {
        let audit = AuditLog::open(repository.database(), NAME).await?;
        Ok(Shared {
            repository,
            verifier,
            audit,
        }
        .into())
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Opens (and migrates) the database at `url` with its own outbox handle, seeding it when
/// `config.seed` says so. For tools and tests; the service shares its messaging's outbox.
pub async fn open(url: &str, config: &Config) -> anyhow::Result<Repository> {
    let seed = config.seed.then(seed::builtin).transpose()?;
    let db = Database::open(url, &MIGRATOR).await?;
    let outbox = Outbox::open(&db, NAME).await?;
    let repository = Repository::new(db, outbox, config.settings());
    if let Some(seed) = seed {
        seed::load(&repository, &seed).await?;
    }
    Ok(repository)
}

/// Builds the inventory service, verifying tokens with the identity service's published keys.
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

/// Builds the inventory service with a given token verifier (tests pass one trusting a test
/// issuer). The inventory consumes no events, so it needs no view of the registry here.
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
    // Parse the seed before touching the database, so a bad data file fails fast.
    let seed = config.seed.then(seed::builtin).transpose()?;
    let db = Database::open(&common.database_url(), &MIGRATOR).await?;
    let metrics = Metrics::new();
    let client = ServiceClient::for_service(&common, discovery);
    let messaging = Messaging::start(&common, &db, client, verifier.clone(), &metrics).await?;
    let repository = Repository::new(db.clone(), messaging.outbox().clone(), config.settings());
    if let Some(seed) = seed {
        seed::load(&repository, &seed).await?;
    }
    if config.sweep_interval_ms > 0 {
        spawn_sweeper(
            repository.clone(),
            Duration::from_millis(config.sweep_interval_ms),
        );
    }
    let router = router(AppState::new(repository, verifier).await?).merge(messaging.feed_router());
    Ok(Service::new(common, router)
        .with_openapi(openapi())
        .with_metrics(metrics)
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}

/// Releases expired reservations every `every`, for as long as the runtime lives.
pub fn spawn_sweeper(repository: Repository, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match repository.release_expired(now_ms()).await {
                Ok(0) => {}
                Ok(released) => tracing::info!(released, "released expired reservations"),
                Err(error) => tracing::warn!(%error, "cannot release expired reservations"),
            }
        }
    });
}
