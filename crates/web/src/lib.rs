//! The web service: the pages people use, rendered on the server, served behind the gateway at
//! `/`. It is the backend-for-frontend of the storefront, the admin console and the developer
//! portal: it signs people in through the identity provider (authorization code + PKCE), keeps
//! their tokens in its own session store, and calls the shop's services on their behalf with
//! their own access token, so every service still decides what that user may do.
//!
//! No JavaScript build: templates (minijinja) in `templates/`, a stylesheet and a small script
//! in the repository's `assets/web/`, served by the gateway under content-hashed names.
//!
//! Code map:
//! - [`sessions`]: the session store (the only SQL here);
//! - [`visitor`]: cookies, the signed-in user behind a request, cross-site write refusal;
//! - [`signin`]: sign-in, callback, refresh, sign-out, registration;
//! - [`backend`]: calls to the services, and what a failure means for a page;
//! - [`pages`]: templates, filters, the error page;
//! - [`storefront`]: the shop's pages; [`admin`]: the operators' console; [`portal`]: the
//!   developer portal.
//!
//! Invariants: a page whose backing service is down still renders, saying what is unavailable;
//! tokens never reach the browser; a POST from another origin is refused; pages are `no-store`.

pub mod admin;
pub mod backend;
pub mod pages;
pub mod portal;
pub mod sessions;
pub mod signin;
pub mod storefront;
pub mod visitor;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use bazaar_kit::storage::Database;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::sessions::Sessions;

/// The web service's name in the registry.
pub const NAME: &str = "web";
/// Default port.
pub const DEFAULT_PORT: u16 = 8093;

/// The service's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Web-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The public base URL (the gateway's), also the identity provider's issuer.
    pub issuer: String,
    /// This relying party's OAuth client (public, PKCE).
    pub client_id: String,
    /// How long a browser stays signed in without coming back.
    pub session_ttl_secs: i64,
    /// Currency prices are shown in until a visitor chooses another.
    pub default_currency: String,
    /// Currencies offered in the currency menu.
    pub display_currencies: Vec<String>,
    /// Products per search page.
    pub page_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            client_id: "storefront".to_owned(),
            session_ttl_secs: 7 * 24 * 3600,
            default_currency: "USD".to_owned(),
            display_currencies: ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF"]
                .map(str::to_owned)
                .to_vec(),
            page_size: 12,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub sessions: Sessions,
    pub backend: Backend,
    /// Calls made as the relying party itself (token, revocation): no user token attached.
    pub identity: ServiceClient,
    /// Verifies access tokens (audience `bazaar`) to learn who signed in.
    pub verifier: Arc<Verifier>,
    /// Verifies ID tokens (audience: this client).
    pub id_verifier: Arc<Verifier>,
    /// One token refresh at a time (see [`signin::refresh`]).
    pub refreshing: Arc<tokio::sync::Mutex<()>>,
    /// Samples of every instance's metrics, for the admin console.
    pub metrics: admin::MetricsSampler,
}

impl AppState {
    /// Where the identity provider sends the browser back.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.config.issuer)
    }

    /// The public URL's origin (`http://127.0.0.1:8080`), as browsers send it in `Origin`.
    pub fn public_origin(&self) -> &str {
        let issuer = self.config.issuer.as_str();
        match issuer.find("://") {
            Some(scheme_end) => match issuer[scheme_end + 3..].find('/') {
                Some(path) => &issuer[..scheme_end + 3 + path],
                None => issuer,
            },
            None => issuer,
        }
    }

    pub fn secure_cookies(&self) -> bool {
        self.config.issuer.starts_with("https://")
    }

    /// Whether `id_token` verifies for this client and carries `nonce`.
    pub async fn id_token_matches(&self, id_token: &str, nonce: &str) -> bool {
        if self.id_verifier.verify(id_token).await.is_err() {
            return false;
        }
        // Verified above; read the nonce from the payload.
        use base64::Engine as _;
        let payload = id_token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        payload
            .as_ref()
            .and_then(|claims| claims.get("nonce"))
            .and_then(serde_json::Value::as_str)
            == Some(nonce)
    }
}

/// Every page and form.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(storefront::routes())
        .merge(admin::routes())
        .merge(portal::routes())
        .route("/signin", get(signin::signin))
        .route("/auth/callback", get(signin::callback))
        .route("/signout", post(signin::signout))
        .route(
            "/account/register",
            get(signin::register_page).post(signin::register),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            visitor::browser_guard,
        ))
        .with_state(state)
}

/// Builds the web service: services found through the registry, tokens verified with the
/// identity service's published keys.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    let fetcher = || Verifier::service_fetcher(ServiceClient::new(discovery.clone()));
    let verifier = Verifier::new(&config.issuer, &["bazaar"], fetcher());
    verifier.spawn_refresh(Duration::from_secs(60));
    let id_verifier = Verifier::new(&config.issuer, &[config.client_id.as_str()], fetcher());
    id_verifier.spawn_refresh(Duration::from_secs(60));
    service(common, config, discovery, verifier, id_verifier).await
}

/// Builds the service with given verifiers (tests pass ones trusting a test issuer).
pub async fn service(
    common: CommonConfig,
    config: Config,
    discovery: Discovery,
    verifier: Arc<Verifier>,
    id_verifier: Arc<Verifier>,
) -> anyhow::Result<Service> {
    let db = Database::open(&common.database_url(), &MIGRATOR).await?;
    let sessions = Sessions::new(db.clone(), config.session_ttl_secs.max(60) * 1000);
    let purge = sessions.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            if let Err(error) = purge.purge_expired().await {
                tracing::warn!(%error, "purging expired sessions failed");
            }
        }
    });
    let backend = Backend::new(discovery.clone());
    let state = AppState {
        config: Arc::new(config),
        sessions,
        identity: ServiceClient::new(discovery.clone()).with_timeout(Duration::from_secs(5)),
        backend,
        verifier,
        id_verifier,
        refreshing: Arc::default(),
        metrics: admin::MetricsSampler::start(discovery),
    };
    Ok(Service::new(common, router(state))
        .with_openapi(openapi())
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}

/// The web service's OpenAPI document: it serves pages, not an API, so the document has no
/// operations; publishing it tells the gateway's merged document that nothing is missing.
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("bazaar web")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "HTML pages (storefront, admin console, developer portal); no JSON API.",
                ))
                .build(),
        )
        .build()
}
