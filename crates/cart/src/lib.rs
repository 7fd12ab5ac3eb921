//! The cart service: a shopping cart per signed-in user and per anonymous session, priced by
//! the catalog on every read, merged into the user's cart at sign-in, and emptied of what an
//! order bought when the order is confirmed.
//!
//! Code map:
//! - [`model`]: the wire contract (DTOs), owners, input validation;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - [`catalog`]: the one call the cart makes (a product by id);
//! - [`pricing`]: stored lines to the priced cart, with last known prices when the catalog is
//!   down;
//! - [`events`]: the `order.confirmed` consumer;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: a line holds 1..=99 units and a cart at most 50 lines, all in one currency;
//! every line keeps the last product data the catalog gave, so a cart can always be shown;
//! a merged anonymous cart is deleted in the merge's transaction.

mod api;
pub mod catalog;
pub mod events;
pub mod model;
pub mod pricing;
pub mod repository;

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

pub use api::{openapi, router, SESSION_HEADER};
pub use repository::{Limits, Repository};

/// Cart name in the registry.
pub const NAME: &str = "cart";
/// Default port.
pub const DEFAULT_PORT: u16 = 8086;

/// The cart's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Cart-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Issuer of the access tokens (the gateway's public URL).
    pub issuer: String,
    /// Most distinct products in one cart.
    pub max_lines: u32,
    /// Most units on one line.
    pub max_quantity: u32,
    /// How long one catalog lookup may take before the cart answers with last known prices.
    pub catalog_timeout_ms: u64,
    /// Currency of an empty cart's subtotal.
    pub currency: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            max_lines: 50,
            max_quantity: 99,
            catalog_timeout_ms: 2_000,
            currency: "USD".to_owned(),
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
    pub catalog: catalog::Catalog,
    /// Verifies bearer tokens: the cart checks them itself, the gateway routes it publicly.
    pub verifier: Arc<Verifier>,
    pub limits: Limits,
    pub currency: String,
}

impl AppState {
    pub fn new(
        repository: Repository,
        client: ServiceClient,
        verifier: Arc<Verifier>,
        config: &Config,
    ) -> Self {
        Shared {
            repository,
            catalog: catalog::Catalog::new(
                client,
                Duration::from_millis(config.catalog_timeout_ms.max(1)),
            ),
            verifier,
            // Limits of 0 would refuse every line: treat them as 1.
            limits: Limits {
                max_lines: config.max_lines.max(1) as usize,
                max_quantity: i64::from(config.max_quantity.max(1)),
            },
            currency: config.currency.clone(),
        }
        .into()
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Opens (and migrates) the database at `url`.
pub async fn open(url: &str) -> anyhow::Result<Repository> {
    Ok(Repository::new(Database::open(url, &MIGRATOR).await?))
}

/// Builds the cart service: tokens verified with the identity service's published keys, the
/// catalog and the orders feed reached through the registry.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", NAME],
        Verifier::service_fetcher(ServiceClient::new(discovery.clone())),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    let client = ServiceClient::for_service(&common, discovery);
    service(common, config, verifier, client).await
}

/// Builds the cart service with a given token verifier and service client (tests pass a
/// verifier trusting a test issuer and a client pointed at a stand-in catalog).
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
    client: ServiceClient,
) -> anyhow::Result<Service> {
    let repository = open(&common.database_url()).await?;
    let db = repository.database().clone();
    let metrics = Metrics::new();
    let messaging =
        Messaging::start(&common, &db, client.clone(), verifier.clone(), &metrics).await?;
    messaging
        .consumer(NAME)
        .subscribe(events::ORDERS, events::OnOrderConfirmed)
        .spawn();
    let router =
        router(AppState::new(repository, client, verifier, &config)).merge(messaging.feed_router());
    Ok(Service::new(common, router)
        .with_openapi(openapi())
        .with_metrics(metrics)
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
