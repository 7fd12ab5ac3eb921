//! The catalog service: product data (categories, products, search) for the storefront, the
//! admin console and the other services.
//!
//! Code map:
//! - [`model`]: the wire contract (DTOs) and input validation;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - [`seed`]: the compiled-in seed catalogue, loaded on first start;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: SKUs are unique; every product's category exists; `version` grows by one per
//! update; images are stored as given (logical asset paths or absolute URLs) and only turned
//! into hashed public URLs on the way out, so a changed asset never needs a data migration.

mod api;
pub mod model;
pub mod repository;
pub mod seed;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::audit::AuditLog;
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use bazaar_kit::storage::Database;
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use repository::Repository;

/// Catalog name in the registry.
pub const NAME: &str = "catalog";
/// Default port.
pub const DEFAULT_PORT: u16 = 8082;

/// The catalog's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Catalog-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Load the built-in catalogue when the products table is empty.
    pub seed: bool,
    /// Largest `per_page` a listing accepts; more is a 400 naming `per_page`.
    pub max_per_page: u32,
    /// Issuer of the access tokens writes must carry (the gateway's public URL).
    pub issuer: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: true,
            max_per_page: 100,
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
    pub max_per_page: u32,
    /// Verifies the admin tokens writes need: the catalog checks them itself, even behind the
    /// gateway, which checks them too.
    pub verifier: Arc<Verifier>,
    /// Admin writes are security-relevant: each one is audited.
    pub audit: AuditLog,
}

impl AppState {
    pub async fn new(
        repository: Repository,
        config: &Config,
        verifier: Arc<Verifier>,
    ) -> anyhow::Result<Self> {
        let audit = AuditLog::open(repository.database(), NAME).await?;
        Ok(Shared {
            repository,
            // A cap of 0 would refuse every listing: treat it as 1.
            max_per_page: config.max_per_page.max(1),
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

/// Opens (and migrates) the database at `url`, seeding it when `config.seed` says so.
pub async fn open(url: &str, config: &Config) -> anyhow::Result<Repository> {
    // Parse the seed before touching the database, so a bad data file fails fast.
    let seed = if config.seed {
        Some(seed::builtin()?)
    } else {
        None
    };
    let db = Database::open(url, &MIGRATOR).await?;
    let repository = Repository::new(db);
    if let Some(seed) = seed {
        seed::load(&repository, &seed).await?;
    }
    Ok(repository)
}

/// Builds the catalog service, verifying tokens with the identity service's published keys.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", NAME],
        Verifier::service_fetcher(ServiceClient::new(discovery)),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    service(common, config, verifier).await
}

/// Builds the catalog service with a given token verifier (tests pass one trusting a test
/// issuer).
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
) -> anyhow::Result<Service> {
    let repository = open(&common.database_url(), &config).await?;
    let db = repository.database().clone();
    let router = router(AppState::new(repository, &config, verifier).await?);
    Ok(Service::new(common, router)
        .with_openapi(openapi())
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
