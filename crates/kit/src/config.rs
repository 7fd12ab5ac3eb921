//! Typed, layered configuration.
//!
//! Layers, later wins:
//! 1. built-in defaults (per service: its default port, data directory, ...);
//! 2. `bazaar.toml` (or the file `--config` names): a `[default]` table for every service and a
//!    `[<service>]` table for one;
//! 3. environment: `BAZAAR_<KEY>` for every service (e.g. `BAZAAR_REGISTRY_URL`), then
//!    `BAZAAR_<SERVICE>__<KEY>` for one (e.g. `BAZAAR_CATALOG__DATABASE_URL`).
//!
//! A value of the wrong type fails with an error naming the key and where it came from.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Profile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Default address of the registry.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081";

/// Settings every service has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommonConfig {
    /// Logical service name; also the registry name.
    pub service: String,
    /// Interface to listen on.
    pub host: String,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Host other processes use to reach this instance (defaults to `host`).
    pub advertise_host: Option<String>,
    /// Directory for this service's own files (its SQLite database...).
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; defaults to a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Registry base URL; empty disables registration (a standalone service).
    pub registry_url: String,
    /// How often to heartbeat the registry, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `bazaar_gateway=debug,info`.
    pub log_level: String,
    /// Append the log to this file instead of writing it to standard output (`bazaar up
    /// --log-files` sets it for each process it starts).
    pub log_file: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long to wait for in-flight requests on shutdown, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// OAuth client this service uses for service-to-service calls (client credentials).
    pub client_id: String,
    /// Its secret. Never logged: `Debug` of this struct redacts it.
    #[serde(default)]
    pub client_secret: Secret,
    /// How events travel between services: `feed` (each service serves its own outbox; the
    /// embedded default) or `nats` (NATS JetStream, the scale-out profile).
    pub event_transport: EventTransport,
    /// NATS server for the `nats` transport.
    pub nats_url: String,
    /// JetStream stream holding every service's events (tests give each run its own).
    pub nats_stream: String,
    /// How long published events are kept (in the outbox, and in the JetStream stream).
    pub event_retention_hours: u64,
    /// Embedded transport: once a consumer has caught up with a feed, how long it lets events
    /// gather before reading it again. Bounds each consumer to about 1000 / this many feed
    /// requests and transactions a second per source, for at most this much more delay per
    /// event. At most 10,000 (services refuse to start otherwise).
    pub event_gather_ms: u64,
}

/// The asynchronous transport for events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventTransport {
    #[default]
    Feed,
    Nats,
}

/// A configuration value that must never appear in logs.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl CommonConfig {
    /// Built-in defaults for `service` listening on `port`, data under `./.bazaar/<service>`.
    pub fn defaults(service: &str, port: u16) -> Self {
        Self {
            service: service.to_owned(),
            host: "127.0.0.1".to_owned(),
            port,
            advertise_host: None,
            data_dir: PathBuf::from(".bazaar").join(service),
            database_url: None,
            registry_url: DEFAULT_REGISTRY_URL.to_owned(),
            heartbeat_interval_ms: 2_000,
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            log_file: None,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 10_000,
            // The development default, seeded by the identity service; set a real one outside
            // a laptop (BAZAAR_CLIENT_SECRET).
            client_id: "bazaar-services".to_owned(),
            client_secret: Secret("bazaar-services-secret".to_owned()),
            event_transport: EventTransport::Feed,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_stream: "BAZAAR_EVENTS".to_owned(),
            event_retention_hours: 24 * 7,
            event_gather_ms: 40,
        }
    }

    /// The database URL in force: the configured one, or a SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{}.db", self.service)).display()
            ),
        }
    }

    /// Base URL under which other processes reach this instance once bound to `port`.
    pub fn advertised_url(&self, port: u16) -> String {
        let host = self.advertise_host.as_deref().unwrap_or(&self.host);
        let host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
        format!("http://{host}:{port}")
    }
}

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file; `None` means `bazaar.toml` in the working directory if it exists.
    pub file: Option<PathBuf>,
    /// Explicit overrides (command-line flags), applied last.
    pub overrides: Vec<(String, toml_value::Value)>,
}

/// Re-export of the value type used for overrides.
pub mod toml_value {
    pub use figment::value::Value;
}

impl Sources {
    pub fn with_file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }

    /// Sets `key` to `value` above every other layer.
    pub fn set(mut self, key: &str, value: impl Into<toml_value::Value>) -> Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }

    fn figment<D: Serialize>(&self, service: &str, defaults: &D) -> Figment {
        let file = self
            .file
            .clone()
            .unwrap_or_else(|| PathBuf::from("bazaar.toml"));
        let profile = Profile::new(service);
        let per_service_env = format!("BAZAAR_{}__", service.to_uppercase());
        let mut figment = Figment::new()
            .merge(Serialized::defaults(defaults))
            .merge(Toml::file(&file).nested())
            .merge(
                Env::prefixed("BAZAAR_")
                    .filter(|key| {
                        !key.as_str().contains("__") && !key.as_str().starts_with("test_")
                    })
                    .global(),
            )
            .merge(Env::prefixed(&per_service_env).global())
            .select(profile);
        for (key, value) in &self.overrides {
            figment = figment.merge(Serialized::global(key, value.clone()));
        }
        figment
    }

    /// Loads the common settings and the service's own settings `S` (whose `Default` holds its
    /// built-in defaults). Both read the same layers; keys of one are ignored by the other.
    pub fn load<S>(&self, defaults: CommonConfig) -> Result<(CommonConfig, S), ConfigError>
    where
        S: Serialize + DeserializeOwned + Default,
    {
        let service = defaults.service.clone();
        if let Some(file) = &self.file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    file.display()
                )));
            }
        }
        let common: CommonConfig = self
            .figment(&service, &defaults)
            .extract()
            .map_err(ConfigError::from_figment)?;
        let own: S = self
            .figment(&service, &S::default())
            .extract()
            .map_err(ConfigError::from_figment)?;
        Ok((common, own))
    }
}

/// A configuration error, naming the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn from_figment(error: figment::Error) -> Self {
        let messages: Vec<String> = error
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(src) => format!("{} ({src})", m.name),
                        None => m.name.to_string(),
                    })
                    .unwrap_or_else(|| "unknown source".into());
                let what = e.kind.to_string();
                if key.is_empty() {
                    format!("{what} from {source}")
                } else {
                    format!("key `{key}`: {what} from {source}")
                }
            })
            .collect();
        ConfigError(messages.join("; "))
    }
}

/// Ensures `dir` exists.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, Default, PartialEq)]
    #[serde(default)]
    struct Own {
        page_cap: u32,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn layers_apply_in_order_and_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bazaar.toml");
        std::fs::write(
            &file,
            "[default]\nlog_level = \"debug\"\nport = 9000\n[catalog]\nport = 9100\npage_cap = 7\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("BAZAAR_LOG_FORMAT", "json");
            jail.set_env("BAZAAR_CATALOG__MAX_BODY_BYTES", "99");
            let sources = Sources::default().with_file(Some(file.clone()));
            let (common, own): (CommonConfig, Own) = sources
                .load(CommonConfig::defaults("catalog", 8082))
                .expect("loads");
            assert_eq!(common.port, 9100, "service table beats [default]");
            assert_eq!(common.log_level, "debug", "[default] beats built-in");
            assert_eq!(common.log_format, LogFormat::Json, "env beats file");
            assert_eq!(common.max_body_bytes, 99, "per-service env applies");
            assert_eq!(own.page_cap, 7);
            let (common, _): (CommonConfig, Own) = sources
                .clone()
                .set("port", 1234)
                .load(CommonConfig::defaults("catalog", 8082))
                .expect("loads");
            assert_eq!(common.port, 1234, "overrides beat everything");

            jail.set_env("BAZAAR_CATALOG__PORT", "not-a-port");
            let error = sources
                .load::<Own>(CommonConfig::defaults("catalog", 8082))
                .expect_err("bad port");
            assert!(error.to_string().contains("port"), "{error}");
            Ok(())
        });
    }
}
