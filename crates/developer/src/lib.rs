//! The developer service: the backend of bazaar's commercial API. Developers (users of the
//! identity service) create API keys tied to plans; the gateway looks keys up here, enforces
//! each plan's rate limit and quotas, and reports the requests it counted back here.
//!
//! Code map:
//! - [`model`]: the wire contract (DTOs), plans, validation and calendar helpers;
//! - [`keys`]: generating, parsing and hashing API keys;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - `api`: the handlers and the OpenAPI document.
//!
//! Invariants: a key's secret is shown once, in the answer that creates it, and stored only as
//! its SHA-256; a key's status (`active`, `revoked`, `expired`) is computed at read time from
//! its row and the clock, so expiry needs no job; a usage report is applied at most once (its
//! `report_id` is recorded in the same transaction as its counts); key creation and revocation
//! commit together with their audit record.

mod api;
pub mod keys;
pub mod model;
pub mod repository;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use model::Plan;
pub use repository::Repository;

/// The developer service's name in the registry.
pub const NAME: &str = "developer";
/// Default port.
pub const DEFAULT_PORT: u16 = 8084;

/// The developer service's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Developer-service settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The identity service's issuer URL: tokens must carry it as `iss`.
    pub issuer: String,
    /// The plans keys can be issued on, by name. A key keeps its plan's name; changing a plan
    /// here changes the limits of every key on it at the gateway's next lookup.
    pub plans: BTreeMap<String, Plan>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            plans: model::default_plans(),
        }
    }
}

/// Where "now" comes from. Handlers never read the system clock directly, so tests can move
/// time forward (a trial expiring, a new day starting) without sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(bazaar_kit::storage::now_ms))
    }

    /// A clock answering `now` (Unix milliseconds) as the function says.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub repository: Repository,
    pub plans: Arc<BTreeMap<String, Plan>>,
    pub verifier: Arc<Verifier>,
    pub clock: Clock,
}

impl AppState {
    pub fn new(repository: Repository, config: &Config, verifier: Arc<Verifier>) -> Self {
        Self {
            repository,
            plans: Arc::new(config.plans.clone()),
            verifier,
            clock: Clock::system(),
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("repository", &self.repository)
            .field("plans", &self.plans)
            .field("issuer", &self.verifier.issuer())
            .field("clock", &self.clock)
            .finish()
    }
}

/// The auth extractors find the verifier through this.
impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Builds the developer service.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    model::validate_plans(&config.plans)?;
    let repository = Repository::open(&common.database_url()).await?;
    let verifier = Verifier::new(
        &config.issuer,
        &["bazaar", "developer"],
        Verifier::service_fetcher(ServiceClient::new(Discovery::start(RegistryClient::new(
            &common.registry_url,
        )))),
    );
    verifier.spawn_refresh(Duration::from_secs(60));
    let db = repository.database().clone();
    let router = router(AppState::new(repository, &config, verifier));
    Ok(Service::new(common, router)
        .with_openapi(openapi())
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
