//! The API gateway: the one entry point of bazaar.
//!
//! It routes public path prefixes to services found through the registry (or to external
//! upstreams such as a legacy system), balances across healthy instances with ejection of
//! failing ones, retries where that is safe, propagates the request id and trace, and serves the
//! static assets, the merged OpenAPI document with its docs page, and a landing page.
//!
//! Every routed request is first admitted under its route's policy (public, user, admin,
//! partner, api_key) and the caller's limits (API-key plans, per-address anonymous rate).
//!
//! Code map:
//! - [`config`]: settings and the default route list with each route's policy;
//! - [`routes`]: the validated route table (prefix matching, rewriting, `/internal` refused);
//! - `authorize`: the policies and identity headers; `keys`: the cached API-key lookup;
//!   `limits`: rates and quotas (in memory or Redis) and the `RateLimit` headers; `usage`:
//!   usage reports to the developer service; `client_ip`: the client address behind trusted
//!   proxies; `calendar`: UTC day and month windows;
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

mod authorize;
mod body;
mod calendar;
mod client;
mod client_ip;
pub mod config;
mod error;
mod headers;
pub mod keys;
mod landing;
mod layers;
pub mod limits;
mod metrics;
mod openapi;
mod proxy;
pub mod routes;
mod state;
mod static_files;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get};
use axum::Router;
use bazaar_auth::Verifier;
use bazaar_discovery::{Balancer, BalancerConfig, Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;

pub use config::{default_routes, Config, Policy, RouteConfig};
pub use openapi::own_document as openapi;
pub use routes::RouteTable;

use crate::authorize::Security;
use crate::keys::KeyStore;
use crate::limits::Limits;
use crate::metrics::GatewayMetrics;
use crate::openapi::OpenApiCache;
use crate::state::Gateway;
use crate::usage::{FlushOnDrop, Usage};

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

/// What the gateway calls besides the upstreams it routes to: the token verifier (with its
/// JWKS cache) and the client for the developer service (key lookups, usage reports).
#[derive(Clone)]
pub struct Dependencies {
    pub verifier: Arc<Verifier>,
    pub services: ServiceClient,
}

impl Dependencies {
    /// Production wiring: the JWKS from the `identity` service (refreshed every 60 s) and
    /// `services` for the developer service (carrying client-credentials tokens when it was
    /// made with [`ServiceClient::for_service`]).
    pub fn new(config: &Config, discovery: &Discovery, services: ServiceClient) -> Self {
        let verifier = Verifier::new(
            &config.issuer,
            &["bazaar"],
            Verifier::service_fetcher(ServiceClient::new(discovery.clone())),
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            verifier.spawn_refresh(Duration::from_secs(60));
        }
        Self { verifier, services }
    }
}

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
    let services = ServiceClient::for_service(&common, discovery.clone());
    let dependencies = Dependencies::new(&config, &discovery, services);
    service_with(common, config, discovery, dependencies)
}

/// [`service`] with the given verifier and developer-service client (tests inject a verifier
/// over a test JWKS).
pub fn service_with(
    common: CommonConfig,
    config: Config,
    discovery: Discovery,
    dependencies: Dependencies,
) -> anyhow::Result<Service> {
    let metrics = Metrics::new();
    let router = router_with(
        &config,
        discovery.clone(),
        metrics.clone(),
        common.max_body_bytes,
        dependencies,
    )?;
    // The gateway is the public edge and never routes `/internal`: no batch route.
    Ok(Service::new(common, router)
        .without_batches()
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
/// Fails on an invalid route table, CORS origin, trusted proxy or limits backend, naming it.
/// Calls the developer service without credentials; see [`router_with`].
pub fn router(
    config: &Config,
    discovery: Discovery,
    metrics: Metrics,
    max_body_bytes: usize,
) -> anyhow::Result<Router> {
    let services = ServiceClient::new(discovery.clone());
    let dependencies = Dependencies::new(config, &discovery, services);
    router_with(config, discovery, metrics, max_body_bytes, dependencies)
}

/// [`router`] with the given verifier and developer-service client.
pub fn router_with(
    config: &Config,
    discovery: Discovery,
    metrics: Metrics,
    max_body_bytes: usize,
    dependencies: Dependencies,
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
    let security = Arc::new(security(config, dependencies)?);
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
        security,
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

/// The policies' and limits' machinery, with the usage flusher running.
fn security(config: &Config, dependencies: Dependencies) -> anyhow::Result<Security> {
    let trusted_proxies = client_ip::parse_all(&config.trusted_proxies)?;
    let lookups = dependencies
        .services
        .clone()
        .with_timeout(Duration::from_secs(2));
    let keys = KeyStore::new(
        lookups,
        Duration::from_millis(config.key_cache_ms),
        Duration::from_millis(config.key_negative_cache_ms),
    );
    let instance = if config.instance_name.is_empty() {
        format!("gateway-{}-{:04x}", std::process::id(), fastrand::u16(..))
    } else {
        config.instance_name.clone()
    };
    let usage = Arc::new(Usage::new(dependencies.services, instance));
    let limits = Arc::new(Limits::new(
        &config.limits_backend,
        &config.limits_namespace,
        config.anonymous_rate_per_second,
        config.anonymous_burst,
        usage.clone(),
    )?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let housekeeping = Arc::downgrade(&limits);
    usage::spawn_flusher(
        usage.clone(),
        Duration::from_millis(config.usage_flush_ms.max(10)),
        stopped,
        move || {
            if let Some(limits) = housekeeping.upgrade() {
                limits.housekeeping();
            }
        },
    );
    Ok(Security {
        verifier: dependencies.verifier,
        keys,
        limits,
        trusted_proxies,
        _flush: FlushOnDrop { usage, stop },
    })
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
