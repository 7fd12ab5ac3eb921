//! The currency service: exchange rates (a compiled-in table of ECB reference rates, re-based
//! on USD) and exact conversion of amounts in minor units between currencies.
//!
//! Code map:
//! - [`rates`]: the rate table, exact decimal arithmetic and half-even rounding;
//! - [`model`]: the wire contract;
//! - `api`: the handlers and the OpenAPI document.
//!
//! The service is stateless: no database, nothing to authorize (both endpoints are public
//! reads). Invariants: no binary floating point in any amount; a result is rounded exactly once,
//! half to even, at the target currency's minor unit; a result that does not fit is refused,
//! never wrapped.

mod api;
pub mod model;
pub mod rates;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use rates::Rates;

/// Name in the registry.
pub const NAME: &str = "currency";
/// Default port.
pub const DEFAULT_PORT: u16 = 8087;

/// Currency-specific settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// A rate table to use instead of the compiled-in `data/currency_rates.json` (same format).
    pub rates_file: Option<PathBuf>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub rates: Arc<Rates>,
}

/// The rate table `config` selects: the file it names, or the compiled-in one. A bad table
/// fails start-up with the entry at fault named.
pub fn load_rates(config: &Config) -> anyhow::Result<Rates> {
    match &config.rates_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the rate table {}", path.display()))?;
            Rates::parse(&text).with_context(|| format!("in {}", path.display()))
        }
        None => Rates::builtin(),
    }
}

/// Builds the currency service. It calls no other service and verifies no tokens, so unlike the
/// database-backed services it needs neither discovery nor a verifier.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    service(common, config)
}

/// Builds the currency service (also what tests use).
pub fn service(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let rates = Arc::new(load_rates(&config)?);
    tracing::info!(currencies = rates.currencies.len(), date = %rates.date, "rate table loaded");
    Ok(Service::new(common, router(AppState { rates })).with_openapi(openapi()))
}
