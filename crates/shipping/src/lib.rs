//! The shipping service: what shipping costs, the shipments orders create, and their tracking.
//!
//! Code map:
//! - [`postal`]: the compiled-in postal-code table (`data/postal_codes.csv`) and its lookups;
//! - [`quote`]: distances, the price formula (documented there), unshippable destinations;
//! - [`upstream`]: the public quote's calls to inventory and catalog, and warehouse choice;
//! - [`model`]: the wire contract, event payloads and input validation;
//! - [`repository`]: every SQL statement, shipment creation and tracking;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Price, per parcel, in USD cents: `min(499 + 50 × ⌈km / 100⌉ + 80 × ⌈g / 500⌉, 7500)`, plus
//! 1500 when the parcel crosses a border; a quote is the sum over its parcels.
//!
//! Invariants: one shipment per order (creation is idempotent by `order_id`); every shipment
//! change commits with its event (`shipment.created`, `shipment.status_changed`) through the
//! transactional outbox; tracking only moves forward (`label_created → in_transit →
//! delivered`), each step recorded once in the history; a customer sees only their own
//! shipments (another's id is a 404).

mod api;
pub mod model;
pub mod postal;
pub mod quote;
pub mod repository;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;
use bazaar_kit::storage::{now_ms, Database};
use bazaar_messaging::{Messaging, Outbox};
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use postal::PostalTable;
pub use quote::Quoter;
pub use repository::{Repository, Settings};
pub use upstream::Upstream;

/// Name in the registry.
pub const NAME: &str = "shipping";
/// Default port.
pub const DEFAULT_PORT: u16 = 8090;

/// The shipping service's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Shipping-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Issuer of the access tokens callers carry (the gateway's public URL).
    pub issuer: String,
    /// Farther than this from its warehouse, a destination is unshippable.
    pub max_distance_km: f64,
    /// ISO 3166-1 alpha-2 codes of countries not shipped to.
    pub unserved_countries: Vec<String>,
    /// A shipment goes in transit this long after its creation.
    pub in_transit_after_ms: u64,
    /// A shipment is delivered this long after its creation.
    pub delivered_after_ms: u64,
    /// How often the tracker advances shipments; 0 turns it off (tests drive
    /// [`Repository::advance_tracking`] themselves).
    pub tracking_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            max_distance_km: 20_000.0,
            unserved_countries: vec!["AQ".to_owned()],
            in_transit_after_ms: 20_000,
            delivered_after_ms: 60_000,
            tracking_interval_ms: 1_000,
        }
    }
}

impl Config {
    /// What the repository applies.
    pub fn settings(&self) -> Settings {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Settings {
            in_transit_after_ms: ms(self.in_transit_after_ms),
            delivered_after_ms: ms(self.delivered_after_ms),
        }
    }

    /// The quoter these settings describe, over `postal`.
    pub fn quoter(&self, postal: Arc<PostalTable>) -> Quoter {
        Quoter::new(postal, self.max_distance_km, &self.unserved_countries)
    }
}

bazaar_kit::request_state! {
    /// What the handlers share.
    pub struct AppState(Shared);
}

/// The fields every request of this service reaches through [`AppState`].
pub struct Shared {
    pub repository: Repository,
    pub quoter: Quoter,
    pub upstream: Upstream,
    /// Verifies customer, admin and service tokens: shipping checks them itself, even behind
    /// the gateway.
    pub verifier: Arc<Verifier>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Opens (and migrates) the database at `url` with its own outbox handle. For tools and tests
/// (e.g. to drive [`Repository::advance_tracking`]); the service shares its messaging's outbox.
pub async fn open(url: &str, config: &Config) -> anyhow::Result<Repository> {
    let db = Database::open(url, &MIGRATOR).await?;
    let outbox = Outbox::open(&db, NAME).await?;
    Ok(Repository::new(db, outbox, config.settings()))
}

/// Builds the shipping service, verifying tokens with the identity service's published keys
/// and finding inventory and catalog through the registry.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", NAME],
        Verifier::service_fetcher(ServiceClient::new(discovery.clone())),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    service(common, config, verifier, discovery).await
}

/// Builds the shipping service with a given token verifier and view of the other services
/// (tests pass one trusting a test issuer, and `Discovery::fixed` pointing at stand-ins).
pub async fn service(
    common: CommonConfig,
    config: Config,
    verifier: Arc<Verifier>,
    discovery: Discovery,
) -> anyhow::Result<Service> {
    // Parse the table before touching the database, so a bad data file fails fast.
    let postal = Arc::new(PostalTable::builtin()?);
    let db = Database::open(&common.database_url(), &MIGRATOR).await?;
    let metrics = Metrics::new();
    let messaging = Messaging::start(
        &common,
        &db,
        ServiceClient::for_service(&common, discovery.clone()),
        verifier.clone(),
        &metrics,
    )
    .await?;
    let repository = Repository::new(db.clone(), messaging.outbox().clone(), config.settings());
    if config.tracking_interval_ms > 0 {
        spawn_tracker(
            repository.clone(),
            Duration::from_millis(config.tracking_interval_ms),
        );
    }
    let state = AppState::from(Shared {
        repository,
        quoter: config.quoter(postal),
        // The quote reads public endpoints only: no credentials, so no dependency on identity.
        upstream: Upstream::new(ServiceClient::new(discovery)),
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

/// Advances tracking every `every`, for as long as the runtime lives.
pub fn spawn_tracker(repository: Repository, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match repository.advance_tracking(now_ms()).await {
                Ok(0) => {}
                Ok(transitions) => tracing::info!(transitions, "shipments advanced"),
                Err(error) => tracing::warn!(%error, "cannot advance shipment tracking"),
            }
        }
    });
}
