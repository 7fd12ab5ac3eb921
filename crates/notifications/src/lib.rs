//! The notifications service: turns what happens to an order (confirmed, cancelled, paid,
//! refunded, shipped, delivered) into emails to the customer, kept in a mailbox that the
//! customer and admins read through the API.
//!
//! Delivery is off: no SMTP server is configured or needed, and nothing leaves the service.
//! The mailbox is the record of what would have been sent (and what a demo shows).
//!
//! Code map:
//! - [`messages`]: the subject and body each event calls for, and money formatting;
//! - [`events`]: the consumer of `orders`, `payments` and `shipping`;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - [`model`]: the API's DTOs and paging validation;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: one email per event at most (the consumer's inbox, and a unique `event_id` in
//! the mailbox); emails are written only in the consumer's transaction; a customer reads only
//! their own mailbox.

mod api;
pub mod events;
pub mod messages;
pub mod model;
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

pub use api::{openapi, router};
pub use events::Mailer;
pub use repository::Repository;

/// Notifications name in the registry (and its consumer group).
pub const NAME: &str = "notifications";
/// Default port.
pub const DEFAULT_PORT: u16 = 8092;

/// The service's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Notifications-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Issuer of the access tokens (the gateway's public URL).
    pub issuer: String,
    /// Largest page (`limit`) a listing accepts; more is a 400 naming `limit`.
    pub max_limit: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            max_limit: 100,
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
    pub max_limit: u32,
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

/// Builds the notifications service: tokens verified with the identity service's published
/// keys, the feeds of `orders`, `payments` and `shipping` reached through the registry.
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

/// Builds the service with a given token verifier and service client (tests pass a verifier
/// trusting a test issuer, and apply events with `bazaar_messaging::deliver`).
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
    client: ServiceClient,
) -> anyhow::Result<Service> {
    let repository = open(&common.database_url()).await?;
    let db = repository.database().clone();
    let metrics = Metrics::new();
    let messaging = Messaging::start(&common, &db, client, verifier.clone(), &metrics).await?;
    let mut consumer = messaging.consumer(NAME);
    for source in events::SOURCES {
        consumer = consumer.subscribe(source, Mailer);
    }
    consumer.spawn();
    let state = AppState::from(Shared {
        repository,
        verifier,
        // A cap of 0 would refuse every listing: treat it as 1.
        max_limit: config.max_limit.max(1),
    });
    Ok(
        Service::new(common, router(state).merge(messaging.feed_router()))
            .with_openapi(openapi())
            .with_metrics(metrics)
            .ready_when("database", move || {
                let db = db.clone();
                async move { db.ping().await }
            }),
    )
}
