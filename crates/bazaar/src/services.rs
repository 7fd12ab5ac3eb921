//! The table of services this binary can run: name, default port, and how to build it.
//! Adding a service means adding one line here (and to `up`'s start order).

use std::future::Future;
use std::pin::Pin;

use bazaar_kit::config::{CommonConfig, Sources};
use bazaar_kit::server::Service;

type BuildFuture = Pin<Box<dyn Future<Output = anyhow::Result<Service>> + Send>>;

/// One runnable service.
pub struct ServiceSpec {
    pub name: &'static str,
    /// Whether `up` starts `--replicas` instances of it (business services) or exactly one.
    pub replicable: bool,
    /// Loads its configuration and builds it.
    pub build: fn(Sources) -> BuildFuture,
}

fn boxed<C, F, Fut>(name: &'static str, port: u16, sources: Sources, build: F) -> BuildFuture
where
    C: serde::Serialize + serde::de::DeserializeOwned + Default + Send + 'static,
    F: FnOnce(CommonConfig, C) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<Service>> + Send + 'static,
{
    Box::pin(async move {
        let (common, config) = sources.load::<C>(CommonConfig::defaults(name, port))?;
        bazaar_kit::telemetry::init_logging(
            common.log_format,
            &common.log_level,
            common.log_file.as_deref(),
        );
        build(common, config).await
    })
}

/// Every service, in start order: the registry first, the gateway last.
pub const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: bazaar_registry::NAME,
        replicable: false,
        build: |s| {
            boxed(
                bazaar_registry::NAME,
                bazaar_registry::DEFAULT_PORT,
                s,
                bazaar_registry::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_catalog::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_catalog::NAME,
                bazaar_catalog::DEFAULT_PORT,
                s,
                bazaar_catalog::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_identity::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_identity::NAME,
                bazaar_identity::DEFAULT_PORT,
                s,
                bazaar_identity::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_developer::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_developer::NAME,
                bazaar_developer::DEFAULT_PORT,
                s,
                bazaar_developer::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_inventory::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_inventory::NAME,
                bazaar_inventory::DEFAULT_PORT,
                s,
                bazaar_inventory::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_cart::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_cart::NAME,
                bazaar_cart::DEFAULT_PORT,
                s,
                bazaar_cart::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_currency::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_currency::NAME,
                bazaar_currency::DEFAULT_PORT,
                s,
                bazaar_currency::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_payments::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_payments::NAME,
                bazaar_payments::DEFAULT_PORT,
                s,
                bazaar_payments::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_processor::NAME,
        replicable: false,
        build: |s| {
            boxed(
                bazaar_processor::NAME,
                bazaar_processor::DEFAULT_PORT,
                s,
                bazaar_processor::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_shipping::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_shipping::NAME,
                bazaar_shipping::DEFAULT_PORT,
                s,
                bazaar_shipping::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_orders::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_orders::NAME,
                bazaar_orders::DEFAULT_PORT,
                s,
                bazaar_orders::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_notifications::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_notifications::NAME,
                bazaar_notifications::DEFAULT_PORT,
                s,
                bazaar_notifications::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_web::NAME,
        replicable: true,
        build: |s| {
            boxed(
                bazaar_web::NAME,
                bazaar_web::DEFAULT_PORT,
                s,
                bazaar_web::build,
            )
        },
    },
    ServiceSpec {
        name: bazaar_gateway::NAME,
        replicable: false,
        build: |s| {
            boxed(
                bazaar_gateway::NAME,
                bazaar_gateway::DEFAULT_PORT,
                s,
                bazaar_gateway::build,
            )
        },
    },
];

pub fn find(name: &str) -> Option<&'static ServiceSpec> {
    SERVICES.iter().find(|s| s.name == name)
}

pub fn names() -> Vec<&'static str> {
    SERVICES.iter().map(|s| s.name).collect()
}
