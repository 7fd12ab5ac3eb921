//! The gateway's own settings (the `[gateway]` table of `bazaar.toml`, or
//! `BAZAAR_GATEWAY__...`): the route table with each route's access policy, the storefront
//! origins allowed by CORS, how long the merged OpenAPI document is cached, the token issuer,
//! and the API-key, rate-limit and quota settings.
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
    /// The `iss` of access tokens: the identity service's public base URL. Its JWKS is fetched
    /// from the `identity` service through the registry.
    pub issuer: String,
    /// Requests with neither an API key nor a token: sustained requests per second allowed per
    /// client address...
    pub anonymous_rate_per_second: u32,
    /// ...and how many may come at once.
    pub anonymous_burst: u32,
    /// CIDRs (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`) of proxies in front of the gateway whose
    /// `X-Forwarded-For` is believed. Empty: the client address is always the TCP peer.
    pub trusted_proxies: Vec<String>,
    /// Where rate and quota counters live: `memory` (per gateway instance) or a `redis://` URL
    /// (shared by every gateway using it).
    pub limits_backend: String,
    /// Prefix of every Redis key the gateway writes, so several deployments can share a Redis.
    pub limits_namespace: String,
    /// How long a found API key is reused before it is looked up again, in milliseconds (so a
    /// revocation takes effect within this time).
    pub key_cache_ms: u64,
    /// How long an unknown API key is remembered as unknown, in milliseconds.
    pub key_negative_cache_ms: u64,
    /// How often usage counts are reported to the developer service, in milliseconds.
    pub usage_flush_ms: u64,
    /// This gateway's name in usage reports; empty: `gateway-<pid>-<random>`.
    pub instance_name: String,
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
            issuer: "http://127.0.0.1:8080".to_owned(),
            anonymous_rate_per_second: 50,
            anonymous_burst: 100,
            trusted_proxies: Vec::new(),
            limits_backend: "memory".to_owned(),
            limits_namespace: "bazaar:gateway".to_owned(),
            key_cache_ms: 30_000,
            key_negative_cache_ms: 5_000,
            usage_flush_ms: 2_000,
            instance_name: String::new(),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Anyone; a bearer token that is sent must still be valid.
    #[default]
    Public,
    /// Any valid access token.
    User,
    /// A valid access token with the `admin` role.
    Admin,
    /// A valid client-credentials token with the `partner` scope.
    Partner,
    /// An active API key in `x-api-key` (a token is not enough).
    ApiKey,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Public => "public",
            Policy::User => "user",
            Policy::Admin => "admin",
            Policy::Partner => "partner",
            Policy::ApiKey => "api_key",
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
    /// Who may call the route.
    pub policy: Policy,
    /// Who may call it with a method other than GET, HEAD and OPTIONS; default: `policy`.
    pub write_policy: Option<Policy>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            service: None,
            upstream: None,
            rewrite: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            policy: Policy::Public,
            write_policy: None,
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

    /// Sets who may call the route.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets who may call it with a writing method.
    pub fn write_policy(mut self, policy: Policy) -> Self {
        self.write_policy = Some(policy);
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
    let identity = |prefix: &str| RouteConfig::service(prefix, "identity");
    vec![
        RouteConfig::service("/api/v1/products", "catalog").write_policy(Policy::Admin),
        RouteConfig::service("/api/v1/categories", "catalog").write_policy(Policy::Admin),
        RouteConfig::service("/api/v1/registry", "registry")
            .rewrite("/api/v1")
            .policy(Policy::Admin),
        // The identity provider checks its own credentials (client secrets, passwords).
        identity("/.well-known/openid-configuration"),
        identity("/oauth2"),
        identity("/login"),
        identity("/logout"),
        identity("/api/v1/users"),
        identity("/api/v1/identity"),
        RouteConfig::service("/api/v1/developer/plans", "developer"),
        RouteConfig::service("/api/v1/developer", "developer").policy(Policy::User),
        RouteConfig::service("/api/v1/admin/usage", "developer").policy(Policy::Admin),
        // The commercial product feed, for API-key holders within their plan.
        RouteConfig::service("/api/v1/feed/products", "catalog")
            .rewrite("/api/v1/products")
            .policy(Policy::ApiKey)
            .write_policy(Policy::Admin),
        // The partner feed, for partners' own systems (client-credentials tokens).
        RouteConfig::service("/api/v1/partner/products", "catalog")
            .rewrite("/api/v1/products")
            .policy(Policy::Partner)
            .write_policy(Policy::Admin),
        // The shop. Stock and prices are public; adjustments are admin writes.
        RouteConfig::service("/api/v1/inventory", "inventory").write_policy(Policy::Admin),
        RouteConfig::service("/api/v1/warehouses", "inventory"),
        // The cart serves anonymous sessions too, and checks a token itself when one is sent.
        RouteConfig::service("/api/v1/cart", "cart"),
        RouteConfig::service("/api/v1/currencies", "currency"),
        RouteConfig::service("/api/v1/payments/test-cards", "payments"),
        RouteConfig::service("/api/v1/payments", "payments").policy(Policy::User),
        RouteConfig::service("/api/v1/shipping", "shipping"),
        RouteConfig::service("/api/v1/shipments", "shipping").policy(Policy::User),
        RouteConfig::service("/api/v1/orders", "orders").policy(Policy::User),
        RouteConfig::service("/api/v1/admin/orders", "orders").policy(Policy::Admin),
        RouteConfig::service("/api/v1/notifications", "notifications").policy(Policy::User),
        RouteConfig::service("/api/v1/admin/notifications", "notifications").policy(Policy::Admin),
        // The pages (storefront, admin console, developer portal): the web service signs people
        // in itself and calls the services with their tokens, so the route is public.
        RouteConfig::service("/", "web"),
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
             [[gateway.routes]]\nprefix = \"/legacy\"\nupstream = \"http://127.0.0.1:9\"\n\
             [[gateway.routes]]\nprefix = \"/feed\"\nservice = \"catalog\"\n\
             policy = \"api_key\"\nwrite_policy = \"admin\"\n",
        )
        .expect("write");
        let (_, config): (_, Config) = Sources::default()
            .with_file(Some(file))
            .load(CommonConfig::defaults("gateway", 8080))
            .expect("loads");
        assert_eq!(
            config.routes,
            vec![
                RouteConfig::upstream("/legacy", "http://127.0.0.1:9"),
                RouteConfig::service("/feed", "catalog")
                    .policy(Policy::ApiKey)
                    .write_policy(Policy::Admin),
            ]
        );
        assert_eq!(config.routes[0].policy, Policy::Public, "public by default");
        assert_eq!(config.routes[0].timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(config.cors_origins, vec!["https://shop.example".to_owned()]);
        assert_eq!(config.openapi_cache_ms, 10_000, "unset keys keep defaults");
        assert_eq!(config.limits_backend, "memory");
        assert_eq!(config.anonymous_rate_per_second, 50);
        assert_eq!(config.anonymous_burst, 100);
    }
}
