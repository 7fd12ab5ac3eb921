//! The gateway's own settings (the `[gateway]` table of `bazaar.toml`, or
//! `BAZAAR_GATEWAY__...`): the route table, the storefront origins allowed by CORS and how long
//! the merged OpenAPI document is cached.
//!
//! The defaults are complete: a gateway started with no configuration routes the services that
//! exist today. Configured `[[gateway.routes]]` replace the default list as a whole (figment
//! replaces arrays on merge), so an operator never gets a mix of both by accident.

use serde::{Deserialize, Serialize};

/// Default per-route timeout for the upstream's response head, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Gateway-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Routes from public path prefixes to services or external upstreams.
    pub routes: Vec<RouteConfig>,
    /// Origins allowed to call the API from a browser (the storefront).
    pub cors_origins: Vec<String>,
    /// How long the merged OpenAPI document is reused before it is rebuilt, in milliseconds.
    pub openapi_cache_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            routes: default_routes(),
            cors_origins: vec![
                "http://127.0.0.1:8080".to_owned(),
                "http://localhost:8080".to_owned(),
            ],
            openapi_cache_ms: 10_000,
        }
    }
}

/// One `[[routes]]` entry: where requests under `prefix` go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouteConfig {
    /// Public path prefix, matched on segment boundaries (`/api/v1/products` matches
    /// `/api/v1/products/42` but not `/api/v1/productsx`); the longest matching prefix wins.
    pub prefix: String,
    /// Service name resolved through the registry. Exactly one of `service` and `upstream`.
    pub service: Option<String>,
    /// Absolute `http://` base URL of something outside the registry (a legacy monolith).
    pub upstream: Option<String>,
    /// Replaces `prefix` in the forwarded path (`/api/v1/registry` + rewrite `/api/v1` sends
    /// `/api/v1/registry/services` on as `/api/v1/services`).
    pub rewrite: Option<String>,
    /// How long to wait for the upstream's response head, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            service: None,
            upstream: None,
            rewrite: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

impl RouteConfig {
    /// A route to a registered service.
    pub fn service(prefix: &str, service: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            service: Some(service.to_owned()),
            ..Self::default()
        }
    }

    /// A route to an external base URL.
    pub fn upstream(prefix: &str, base_url: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            upstream: Some(base_url.to_owned()),
            ..Self::default()
        }
    }

    /// Sets the replacement for the prefix.
    pub fn rewrite(mut self, rewrite: &str) -> Self {
        self.rewrite = Some(rewrite.to_owned());
        self
    }

    /// Sets the response-head timeout.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }
}

/// The routes used when none are configured. A new service adds its line here.
pub fn default_routes() -> Vec<RouteConfig> {
    vec![
        RouteConfig::service("/api/v1/products", "catalog"),
        RouteConfig::service("/api/v1/categories", "catalog"),
        RouteConfig::service("/api/v1/registry", "registry").rewrite("/api/v1"),
    ]
}

#[cfg(test)]
mod tests {
    use bazaar_kit::config::{CommonConfig, Sources};

    use super::*;

    #[test]
    fn configured_routes_replace_the_defaults_and_fill_in_timeouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bazaar.toml");
        std::fs::write(
            &file,
            "[gateway]\ncors_origins = [\"https://shop.example\"]\n\
             [[gateway.routes]]\nprefix = \"/legacy\"\nupstream = \"http://127.0.0.1:9\"\n",
        )
        .expect("write");
        let (_, config): (_, Config) = Sources::default()
            .with_file(Some(file))
            .load(CommonConfig::defaults("gateway", 8080))
            .expect("loads");
        assert_eq!(
            config.routes,
            vec![RouteConfig::upstream("/legacy", "http://127.0.0.1:9")]
        );
        assert_eq!(config.routes[0].timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(config.cors_origins, vec!["https://shop.example".to_owned()]);
        assert_eq!(config.openapi_cache_ms, 10_000, "unset keys keep defaults");
    }
}
