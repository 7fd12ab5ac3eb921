//! The identity service: bazaar's OAuth 2.0 / OpenID Connect provider (users, clients, tokens,
//! signing keys).
//!
//! Code map:
//! - [`model`]: the JSON wire contract of the users and admin APIs, stored records, validation;
//! - [`repository`]: every SQL statement, portable across SQLite and PostgreSQL;
//! - [`crypto`]: argon2id, opaque tokens and their hashes, PKCE, Ed25519 key generation;
//! - [`tokens`]: JWT signing and verification, the key ring and its rotation, the JWKS;
//! - [`throttle`]: brute-force protection and the client address it counts by;
//! - [`audit`]: the one function every security-relevant action goes through, into the
//!   kit's hash-chained audit log;
//! - [`issuance`]: the group commit that records every issued token with its audit record,
//!   many grants per transaction, before the grant is answered;
//! - `oauth`: discovery, JWKS, authorize, token, revoke, introspect, userinfo;
//! - `login`: the server-rendered login form, sessions and logout;
//! - `api`: the users and admin REST APIs, the router and the OpenAPI document.
//!
//! Invariants: no secret is stored in clear (passwords and client secrets as argon2id, session
//! ids, codes and refresh tokens as SHA-256); a code is redeemed at most once and a replay
//! revokes what it issued; a rotated refresh token reused after the grace window revokes its
//! family; there is always a published `next` signing key; an unknown client or an
//! unregistered redirect URI never causes a redirect.

mod api;
pub mod audit;
mod client_cache;
pub mod crypto;
pub mod issuance;
mod login;
pub mod model;
mod oauth;
pub mod repository;
mod secret_cache;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use bazaar_kit::audit::AuditLog;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use bazaar_kit::storage::{now_ms, Database};
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use repository::Repository;

use crate::model::{NewUser, StoredClient, ROLE_ADMIN, ROLE_CUSTOMER};
use crate::tokens::Signer;

/// Identity's name in the registry.
pub const NAME: &str = "identity";
/// Default port.
pub const DEFAULT_PORT: u16 = 8083;

/// The audience of user access tokens, and the default one of client credentials tokens.
pub const DEFAULT_AUDIENCE: &str = "bazaar";

/// The seeded customer (email, password), printed by `bazaar up`.
pub const DEMO_CUSTOMER: (&str, &str) = ("shopper@bazaar.test", "shopper-pass-1");
/// The seeded admin (email, password), printed by `bazaar up`.
pub const DEMO_ADMIN: (&str, &str) = ("admin@bazaar.test", "admin-pass-1");

/// The migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Identity-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The public base URL (the gateway's): the `iss` of every token and the base of the
    /// discovery document's endpoints.
    pub issuer: String,
    pub access_token_ttl_secs: u64,
    pub id_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub code_ttl_secs: u64,
    /// A rotated refresh token presented again within this many seconds is taken for a
    /// concurrent retry: refused, but its family is not revoked.
    pub refresh_reuse_grace_secs: u64,
    /// Clients upserted at every start.
    pub clients: Vec<ClientConfig>,
    /// Create the demo customer and admin when absent.
    pub seed_users: bool,
    /// Peers whose rightmost `X-Forwarded-For` entry is believed (networks or addresses).
    pub trusted_proxies: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            access_token_ttl_secs: 300,
            id_token_ttl_secs: 300,
            refresh_token_ttl_secs: 2_592_000,
            code_ttl_secs: 60,
            refresh_reuse_grace_secs: 10,
            clients: default_clients(),
            seed_users: true,
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
        }
    }
}

/// A client declared in configuration. Its `Debug` hides the secret (configuration may be
/// logged; secrets never are).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClientConfig {
    pub client_id: String,
    pub name: String,
    /// Empty for a public client. Stored only as an argon2id hash.
    pub secret: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub roles: Vec<String>,
    pub may_introspect: bool,
    /// First-party clients get implicit consent.
    pub first_party: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("redirect_uris", &self.redirect_uris)
            .field("grant_types", &self.grant_types)
            .field("scopes", &self.scopes)
            .field("audiences", &self.audiences)
            .field("roles", &self.roles)
            .field("may_introspect", &self.may_introspect)
            .field("first_party", &self.first_party)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            name: String::new(),
            secret: String::new(),
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
            scopes: Vec::new(),
            audiences: vec![DEFAULT_AUDIENCE.into()],
            roles: Vec::new(),
            may_introspect: false,
            first_party: true,
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The built-in clients (see the crate's contract).
pub fn default_clients() -> Vec<ClientConfig> {
    let user_scopes = ["openid", "profile", "email", "offline_access"];
    vec![
        ClientConfig {
            client_id: "storefront".into(),
            name: "bazaar storefront".into(),
            // The web service's callback, wherever the gateway listens (see ISSUER_PLACEHOLDER).
            redirect_uris: strings(&[
                "{issuer}/auth/callback",
                "http://127.0.0.1:8080/auth/callback",
                "http://localhost:8080/auth/callback",
            ]),
            grant_types: strings(&["authorization_code", "refresh_token"]),
            scopes: strings(&user_scopes),
            ..ClientConfig::default()
        },
        ClientConfig {
            client_id: "bazaar-cli".into(),
            name: "bazaar command line".into(),
            // No port: any loopback port matches (RFC 8252 §7.3), the CLI binds an ephemeral one.
            redirect_uris: strings(&["http://127.0.0.1/callback"]),
            grant_types: strings(&["authorization_code", "refresh_token"]),
            scopes: strings(&user_scopes),
            ..ClientConfig::default()
        },
        ClientConfig {
            client_id: "demo-partner".into(),
            name: "demo partner".into(),
            secret: "demo-partner-secret".into(),
            grant_types: strings(&["client_credentials"]),
            scopes: strings(&["partner", "catalog:read"]),
            may_introspect: true,
            ..ClientConfig::default()
        },
        ClientConfig {
            client_id: "test-rp".into(),
            name: "conformance test relying party".into(),
            secret: "test-rp-secret".into(),
            redirect_uris: strings(&["http://127.0.0.1:8799/callback"]),
            grant_types: strings(&["authorization_code", "refresh_token", "client_credentials"]),
            scopes: strings(&["openid", "profile", "email", "offline_access", "partner"]),
            may_introspect: true,
            ..ClientConfig::default()
        },
        ClientConfig {
            client_id: "bazaar-services".into(),
            name: "bazaar services".into(),
            secret: "bazaar-services-secret".into(),
            grant_types: strings(&["client_credentials"]),
            scopes: strings(&["internal"]),
            audiences: strings(&[
                "bazaar",
                "catalog",
                "identity",
                "developer",
                "gateway",
                "registry",
                "inventory",
                "cart",
                "currency",
                "payments",
                "shipping",
                "orders",
                "notifications",
            ]),
            roles: strings(&["service"]),
            ..ClientConfig::default()
        },
    ]
}

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub repository: Repository,
    pub signer: Signer,
    pub config: Arc<Config>,
    /// The hash-chained audit log in identity's database.
    pub audit: AuditLog,
    trusted: Arc<Vec<ipnet::IpNet>>,
    /// A hash verified against when the account does not exist, so a login for an unknown
    /// email takes as long as one for a known email (no account enumeration by timing).
    dummy_hash: Arc<String>,
    /// Client secrets that recently passed argon2id, so grants are not bound by its cost.
    secrets: Arc<secret_cache::SecretCache>,
    /// Records issued tokens with their audit records, many grants per transaction.
    issuance: issuance::TokenWriter,
    /// Client records read within the last second, so grants do not read them each time.
    clients: Arc<client_cache::ClientCache>,
}

impl AppState {
    pub async fn new(repository: Repository, config: Config) -> anyhow::Result<Self> {
        let audit = AuditLog::open(repository.database(), NAME).await?;
        let issuance = issuance::TokenWriter::start(repository.clone(), audit.clone());
        let trusted = throttle::parse_networks(&config.trusted_proxies)?;
        let signer = Signer::new(
            repository.clone(),
            config.issuer.trim_end_matches('/').to_owned(),
            config.access_token_ttl_secs.max(config.id_token_ttl_secs),
        );
        Ok(Self {
            repository,
            signer,
            config: Arc::new(config),
            audit,
            trusted: Arc::new(trusted),
            dummy_hash: Arc::new(crypto::hash_password_blocking(
                "no such account, only a timing decoy",
            )?),
            secrets: Arc::default(),
            issuance,
            clients: Arc::default(),
        })
    }

    /// The issuer, without a trailing slash.
    pub fn issuer(&self) -> &str {
        self.signer.issuer()
    }

    pub(crate) fn clients(&self) -> &client_cache::ClientCache {
        &self.clients
    }

    pub(crate) fn issuance(&self) -> &issuance::TokenWriter {
        &self.issuance
    }

    pub(crate) fn secrets(&self) -> &secret_cache::SecretCache {
        &self.secrets
    }

    pub(crate) fn trusted(&self) -> &[ipnet::IpNet] {
        &self.trusted
    }

    pub(crate) fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }

    /// Cookies get `Secure` when the public URL is https (not in local http development,
    /// where browsers would drop them).
    pub(crate) fn secure_cookies(&self) -> bool {
        self.issuer().starts_with("https://")
    }
}

/// Opens (and migrates) the database at `url`, upserts the configured clients, seeds the demo
/// users when asked, and makes sure the signing keys exist.
pub async fn open(url: &str, config: &Config) -> anyhow::Result<Repository> {
    let db = Database::open(url, &MIGRATOR).await?;
    let repository = Repository::new(db);
    for client in &config.clients {
        repository
            .upsert_client(&stored_client(client, &config.issuer).await?)
            .await?;
    }
    if config.seed_users {
        seed_user(&repository, DEMO_CUSTOMER, "Demo Shopper", &[ROLE_CUSTOMER]).await?;
        seed_user(
            &repository,
            DEMO_ADMIN,
            "Demo Admin",
            &[ROLE_CUSTOMER, ROLE_ADMIN],
        )
        .await?;
    }
    let signer = Signer::new(repository.clone(), config.issuer.clone(), 0);
    signer.ensure_keys().await?;
    Ok(repository)
}

/// Stands for the issuer (the gateway's public URL) in a configured redirect URI, so a
/// first-party client's callback follows the gateway to whatever address it is given.
pub const ISSUER_PLACEHOLDER: &str = "{issuer}";

async fn stored_client(client: &ClientConfig, issuer: &str) -> anyhow::Result<StoredClient> {
    if client.client_id.is_empty() {
        anyhow::bail!("clients: a client has an empty client_id");
    }
    let secret_hash = if client.secret.is_empty() {
        String::new()
    } else {
        crypto::hash_password(client.secret.clone()).await?
    };
    Ok(StoredClient {
        id: client.client_id.clone(),
        name: if client.name.is_empty() {
            client.client_id.clone()
        } else {
            client.name.clone()
        },
        secret_hash,
        redirect_uris: client
            .redirect_uris
            .iter()
            .map(|uri| uri.replace(ISSUER_PLACEHOLDER, issuer.trim_end_matches('/')))
            .collect(),
        grant_types: client.grant_types.clone(),
        scopes: client.scopes.clone(),
        audiences: client.audiences.clone(),
        roles: client.roles.clone(),
        require_pkce: true,
        may_introspect: client.may_introspect && !client.secret.is_empty(),
        first_party: client.first_party,
        created_at: now_ms(),
    })
}

async fn seed_user(
    repository: &Repository,
    (email, password): (&str, &str),
    name: &str,
    roles: &[&str],
) -> anyhow::Result<()> {
    if repository.user_by_email(email).await?.is_some() {
        return Ok(());
    }
    let user = NewUser {
        email: email.to_owned(),
        name: name.to_owned(),
        password: password.to_owned(),
        roles: strings(roles),
    };
    let hash = crypto::hash_password(password.to_owned()).await?;
    match repository.create_user(&user, &hash).await {
        // Another instance seeded it first: fine.
        Ok(_) | Err(repository::RepoError::EmailTaken(_)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Builds the identity service.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let repository = open(&common.database_url(), &config).await?;
    let state = AppState::new(repository.clone(), config).await?;
    let db = repository.database().clone();
    // Expired rows are useless and some tables grow per request: sweep them now and then.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            let now = now_ms();
            if let Err(error) = repository.purge(now, now - throttle::WINDOW_MS).await {
                tracing::warn!(%error, "purging expired identity rows failed");
            }
        }
    });
    Ok(Service::new(common, router(state))
        .with_openapi(openapi())
        .ready_when("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        }))
}
