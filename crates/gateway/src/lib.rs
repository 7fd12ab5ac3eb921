//! The API gateway: the one entry point of bazaar.
//!
//! It routes public path prefixes to services found through the registry (or to external
//! upstreams such as a legacy system), balances across healthy instances with ejection of
//! failing ones, retries where that is safe, propagates the request id and trace, and serves the
//! static assets, the merged OpenAPI document with its docs page, and a landing page.
//!
//! Code map:
//! - [`config`]: settings and the default route list;
//! - [`routes`]: the validated route table (prefix matching, rewriting);
//! - `proxy`: forwarding with balancing, retries and timeouts; `body` buffers request bodies
//!   under the cap, `headers` rewrites hop-by-hop and `X-Forwarded-*` headers, `client` builds
//!   the pooled HTTP client;
//! - `static_files`, `openapi`, `landing`: the gateway's own content;
//! - `layers`: CORS and compression; `metrics`: the gateway's Prometheus families;
//! - `error`: the table of the gateway's problem codes.
//!
//! Invariants: every answer the gateway itself produces is a problem document when it is an
//! error; a request never waits on the registry (the discovery view is local); an instance the
//! balancer has ejected receives no traffic until its ejection ends.

mod body;
mod client;
pub mod config;
mod error;
mod headers;
mod landing;
mod layers;
mod metrics;
mod openapi;
mod proxy;
pub mod routes;
mod state;
mod static_files;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get};
use axum::Router;
use bazaar_discovery::{Balancer, BalancerConfig, Discovery, RegistryClient};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;

pub use config::{default_routes, Config, RouteConfig};
pub use openapi::own_document as openapi;
pub use routes::RouteTable;

use crate::metrics::GatewayMetrics;
use crate::openapi::OpenApiCache;
use crate::state::Gateway;

/// Gateway name in the registry.
pub const NAME: &str = "gateway";
/// Default port: the address people open in a browser.
pub const DEFAULT_PORT: u16 = 8080;

/// Paths the gateway (or the kit around it) serves itself; a route may not take them over.
const RESERVED: [&str; 8] = [
    "/static",
    "/favicon.ico",
    "/api/docs",
    "/api/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// Builds the gateway service: starts watching the registry and wires everything.
pub async fn build(common: CommonConfig, config: Config) -> anyhow::Result<Service> {
    let discovery = Discovery::start(RegistryClient::new(&common.registry_url));
    service(common, config, discovery)
}

/// The gateway service over a given discovery view (tests pass `Discovery::fixed`). It is
/// ready once the view has been loaded from the registry at least once.
pub fn service(
    common: CommonConfig,
    config: Config,
    discovery: Discovery,
) -> anyhow::Result<Service> {
    let metrics = Metrics::new();
    let router = router(
        &config,
        discovery.clone(),
        metrics.clone(),
        common.max_body_bytes,
    )?;
    Ok(Service::new(common, router)
        .with_openapi(openapi::own_document())
        .with_metrics(metrics)
        .ready_when("registry_view", move || {
            let discovery = discovery.clone();
            async move {
                if discovery.ready(Duration::from_millis(1)).await {
                    Ok(())
                } else {
                    Err("the registry view has not been loaded yet".to_owned())
                }
            }
        }))
}

/// The gateway's routes and layers (without the kit's common ones, which [`Service`] adds).
/// Fails on an invalid route table or CORS origin, naming it.
pub fn router(
    config: &Config,
    discovery: Discovery,
    metrics: Metrics,
    max_body_bytes: usize,
) -> anyhow::Result<Router> {
    let table = RouteTable::new(&config.routes)?;
    for route in table.routes() {
        if let Some(reserved) = RESERVED.iter().find(|reserved| {
            route.prefix == **reserved || route.prefix.starts_with(&format!("{reserved}/"))
        }) {
            anyhow::bail!(
                "route `{}`: {reserved} is served by the gateway itself",
                route.prefix
            );
        }
    }
    let balancer = Balancer::new(BalancerConfig::default());
    forget_departed_instances(&discovery, &balancer, &table);

    let gateway = Gateway {
        routes: Arc::new(table),
        discovery,
        balancer,
        client: client::http_client(),
        metrics: GatewayMetrics::register(&metrics),
        max_body_bytes,
        openapi: Arc::new(OpenApiCache::new(Duration::from_millis(
            config.openapi_cache_ms,
        ))),
    };

    let mut router = Router::new()
        .route("/static/{*path}", get(static_files::static_file))
        .route("/favicon.ico", get(static_files::favicon))
        .route("/api/openapi.json", get(openapi::merged_openapi))
        .route("/api/docs", get(openapi::docs_page));
    if !gateway.routes.has_root() {
        router = router.route("/", get(landing::landing));
    }
    for route in gateway.routes.routes() {
        let (exact, below) = if route.prefix == "/" {
            ("/".to_owned(), "/{*rest}".to_owned())
        } else {
            (route.prefix.clone(), format!("{}/{{*rest}}", route.prefix))
        };
        router = router
            .route(&exact, any(proxy::proxy))
            .route(&below, any(proxy::proxy));
    }
    Ok(router
        .with_state(gateway)
        .layer(layers::compression())
        .layer(layers::cors(&config.cors_origins)?))
}

/// Drops the balancer's statistics of instances that left the registry, so they do not pile up
/// as instances come and go.
fn forget_departed_instances(discovery: &Discovery, balancer: &Balancer, table: &RouteTable) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut view = discovery.clone();
    let balancer = balancer.clone();
    let fixed: Vec<String> = table
        .routes()
        .iter()
        .flat_map(|route| match &route.target {
            routes::Target::Upstream(_) => route.instances(discovery),
            routes::Target::Service(_) => Vec::new(),
        })
        .map(|instance| instance.id)
        .collect();
    runtime.spawn(async move {
        while view.changed().await {
            let snapshot = view.snapshot();
            let mut live: Vec<String> = snapshot
                .services
                .values()
                .flatten()
                .map(|instance| instance.id.clone())
                .collect();
            live.extend(fixed.iter().cloned());
            balancer.retain(&live);
        }
    });
}

#[cfg(test)]
mod tests {
    use bazaar_discovery::Snapshot;

    use super::*;

    fn build_router(routes: Vec<RouteConfig>) -> anyhow::Result<Router> {
        let config = Config {
            routes,
            ..Config::default()
        };
        router(
            &config,
            Discovery::fixed(Snapshot::default()),
            Metrics::new(),
            1024,
        )
    }

    #[tokio::test]
    async fn catch_all_routes_coexist_with_the_gateways_own_paths() {
        let defaults = build_router(default_routes()).expect("defaults");
        // The kit merges its own routes in: that must not conflict either.
        let _app = Service::new(CommonConfig::defaults(NAME, 0), defaults).app();
        let _router = build_router(vec![
            RouteConfig::upstream("/", "http://127.0.0.1:9"),
            RouteConfig::service("/api", "a"),
            RouteConfig::service("/api/v1/products", "catalog"),
        ])
        .expect("root, /api and a deeper route next to /api/docs and /static");
    }

    #[tokio::test]
    async fn routes_may_not_take_over_reserved_paths_and_origins_must_parse() {
        for prefix in ["/static", "/static/x", "/healthz", "/api/docs"] {
            let error = build_router(vec![RouteConfig::service(prefix, "a")]).expect_err(prefix);
            assert!(
                error.to_string().contains("served by the gateway"),
                "{error}"
            );
        }
        let config = Config {
            cors_origins: vec!["bad\norigin".into()],
            ..Config::default()
        };
        assert!(router(
            &config,
            Discovery::fixed(Snapshot::default()),
            Metrics::new(),
            1
        )
        .is_err());
    }
}
