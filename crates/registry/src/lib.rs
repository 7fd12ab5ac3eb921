//! The service registry: instances register, heartbeat and expire; anyone can list the
//! instances of a service with their health or long-poll a watch to learn changes at once.
//!
//! Its state is soft and in memory on purpose (like Eureka or a Consul agent): it is rebuilt
//! from heartbeats within one heartbeat interval of a restart, since an instance the registry
//! does not know re-registers under the same instance id. A new `epoch` per process lets
//! watchers tell a restarted registry from an old version number.

mod api;
mod store;

use std::time::Duration;

use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use serde::{Deserialize, Serialize};

pub use api::{openapi, router};
pub use store::Store;

/// Registry name in the registry (it registers with itself so `status` shows it).
pub const NAME: &str = "registry";
/// Default port.
pub const DEFAULT_PORT: u16 = 8081;

/// Registry-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// An instance that has not heartbeated for this long is expired, in milliseconds.
    pub instance_ttl_ms: u64,
    /// Heartbeat interval asked of instances, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Longest a watch request may wait, in milliseconds.
    pub max_watch_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_ttl_ms: 6_000,
            heartbeat_interval_ms: 2_000,
            max_watch_ms: 30_000,
        }
    }
}

/// Builds the registry service and starts its expiry sweeper.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let store = Store::new(
        Duration::from_millis(config.instance_ttl_ms),
        Duration::from_millis(config.heartbeat_interval_ms),
    );
    store.spawn_sweeper();
    let router = router(store, Duration::from_millis(config.max_watch_ms));
    Ok(Service::new(common, router).with_openapi(openapi()))
}
