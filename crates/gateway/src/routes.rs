//! The route table: configured routes validated once at start-up into a form that is cheap to
//! match on every request.
//!
//! Invariants: prefixes start with `/`, have no trailing `/` (except the root), no empty or dot
//! segments and only URL-safe characters, so they can be registered as axum paths verbatim and
//! matched by plain string comparison on segment boundaries; no two routes share a prefix; the
//! table is ordered longest prefix first, so the first match is the most specific one; neither
//! a prefix nor a rewrite lies under `/internal`, which is never routed.

use std::time::Duration;

use axum::http::Method;
use bazaar_discovery::{Instance, InstanceStatus};

use crate::config::{Policy, RouteConfig};

/// Whether `path` lies under `/internal`, the services' private surface that the gateway never
/// exposes. Compared on the percent-decoded path, case-insensitively and ignoring empty
/// segments, so `//Internal/x` and `/%69nternal/x` are caught as well.
pub fn is_internal(path: &str) -> bool {
    let first = path.split('/').find(|segment| !segment.is_empty());
    first.is_some_and(|segment| percent_decode(segment).eq_ignore_ascii_case("internal"))
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a route sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A service resolved through the registry.
    Service(String),
    /// A fixed external base URL (`http://host:port/optional/base`, no trailing `/`).
    Upstream(String),
}

impl Target {
    /// The name used in metrics, logs and the OpenAPI document: the service name or the URL.
    pub fn name(&self) -> &str {
        match self {
            Target::Service(name) | Target::Upstream(name) => name,
        }
    }
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub target: Target,
    /// Replacement for the prefix in the forwarded path; `None` keeps the prefix.
    pub rewrite: Option<String>,
    pub timeout: Duration,
    /// Who may read (GET, HEAD, OPTIONS).
    pub policy: Policy,
    /// Who may call any other method.
    pub write_policy: Policy,
}

/// A route that cannot be used, naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route `{prefix}`: {reason}")]
pub struct RouteError {
    pub prefix: String,
    pub reason: String,
}

/// Whether `prefix` covers `path` on a segment boundary.
fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Replaces `from` (which covers `path`) with `to`.
fn swap_prefix(path: &str, from: &str, to: &str) -> String {
    let rest = if from == "/" {
        path
    } else {
        &path[from.len()..]
    };
    match (to, rest) {
        ("/", "") => "/".to_owned(),
        ("/", rest) => rest.to_owned(),
        (to, rest) => format!("{to}{rest}"),
    }
}

impl Route {
    /// The policy in force for `method`.
    pub fn policy_for(&self, method: &Method) -> Policy {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            self.policy
        } else {
            self.write_policy
        }
    }

    /// The path to request from the upstream for the public `path` (which this route covers).
    pub fn forward_path(&self, path: &str) -> String {
        swap_prefix(path, &self.prefix, self.upstream_prefix())
    }

    /// The inverse of [`Route::forward_path`]: the public form of a path as the upstream names
    /// it, if it lies under the part of the upstream this route exposes.
    pub fn public_path(&self, upstream_path: &str) -> Option<String> {
        let exposed = self.upstream_prefix();
        covers(exposed, upstream_path).then(|| swap_prefix(upstream_path, exposed, &self.prefix))
    }

    fn upstream_prefix(&self) -> &str {
        self.rewrite.as_deref().unwrap_or(&self.prefix)
    }

    /// The instances to balance over: the registry's routable ones for a service, a single
    /// synthetic always-up instance for an external upstream (so the balancer's ejection
    /// protects a dead monolith the same way as a dead instance).
    pub fn instances(&self, discovery: &bazaar_discovery::Discovery) -> Vec<Instance> {
        match &self.target {
            Target::Service(name) => discovery.instances(name),
            Target::Upstream(base) => vec![Instance {
                id: format!("upstream:{base}"),
                service: base.clone(),
                address: base.clone(),
                version: String::new(),
                metadata: Default::default(),
                status: InstanceStatus::Up,
                registered_at_ms: 0,
                last_heartbeat_ms: 0,
            }],
        }
    }
}

/// Every route, most specific first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Validates `configs`.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, RouteError> {
        let mut routes: Vec<Route> = Vec::with_capacity(configs.len());
        for config in configs {
            let route = validate(config)?;
            if routes.iter().any(|r| r.prefix == route.prefix) {
                return Err(RouteError {
                    prefix: route.prefix,
                    reason: "the prefix is configured twice".to_owned(),
                });
            }
            routes.push(route);
        }
        // Longest first: the first covering prefix is then the longest one.
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(Self { routes })
    }

    /// The route for a request path: the longest prefix covering it.
    pub fn resolve(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| covers(&r.prefix, path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether some route takes the root (`/`), which then replaces the landing page.
    pub fn has_root(&self) -> bool {
        self.routes.iter().any(|r| r.prefix == "/")
    }
}

fn validate(config: &RouteConfig) -> Result<Route, RouteError> {
    let fail = |reason: &str| RouteError {
        prefix: config.prefix.clone(),
        reason: reason.to_owned(),
    };
    let prefix = normalize(&config.prefix).map_err(|why| fail(&format!("prefix {why}")))?;
    let rewrite = match &config.rewrite {
        None => None,
        Some(rewrite) if rewrite.is_empty() => Some("/".to_owned()),
        Some(rewrite) => Some(normalize(rewrite).map_err(|why| fail(&format!("rewrite {why}")))?),
    };
    let target = match (&config.service, &config.upstream) {
        (Some(service), None) => {
            let valid = !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(fail("service must be a registry name (a-z, 0-9, '-')"));
            }
            Target::Service(service.clone())
        }
        (None, Some(upstream)) => {
            Target::Upstream(validate_upstream(upstream).map_err(|why| fail(&why))?)
        }
        _ => return Err(fail("set exactly one of `service` and `upstream`")),
    };
    if config.timeout_ms == 0 {
        return Err(fail("timeout_ms must be greater than 0"));
    }
    if is_internal(&prefix) || rewrite.as_deref().is_some_and(is_internal) {
        return Err(fail(
            "/internal is the services' private surface and is never routed",
        ));
    }
    Ok(Route {
        prefix,
        target,
        rewrite,
        timeout: Duration::from_millis(config.timeout_ms),
        policy: config.policy,
        write_policy: config.write_policy.unwrap_or(config.policy),
    })
}

/// Checks a path prefix and drops a trailing `/`.
fn normalize(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("`{prefix}` must start with '/'"));
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    for segment in trimmed[1..].split('/') {
        let valid = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !valid {
            return Err(format!(
                "`{prefix}` must be '/'-separated segments of a-z, A-Z, 0-9, '-', '.', '_', '~'"
            ));
        }
    }
    Ok(trimmed.to_owned())
}

/// Checks an external base URL; only plain HTTP, since the gateway forwards without TLS.
fn validate_upstream(upstream: &str) -> Result<String, String> {
    let uri: http::Uri = upstream
        .parse()
        .map_err(|_| format!("upstream `{upstream}` is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "upstream `{upstream}` must be an absolute http:// URL (TLS upstreams are not supported)"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("upstream `{upstream}` must not have a query"));
    }
    Ok(upstream.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_paths_are_recognized_however_spelled() {
        for path in [
            "/internal",
            "/internal/v1/keys/lookup",
            "//internal/x",
            "/Internal/x",
            "/%69nternal/x",
            "/%69%6E%74ernal",
        ] {
            assert!(is_internal(path), "{path}");
        }
        for path in ["/", "/api/v1/internal", "/internals", "/intern%"] {
            assert!(!is_internal(path), "{path}");
        }
    }

    #[test]
    fn write_policy_applies_to_writing_methods_only() {
        let routes = table(&[RouteConfig::service("/a", "a")
            .policy(Policy::User)
            .write_policy(Policy::Admin)]);
        let route = routes.resolve("/a").expect("route");
        assert_eq!(route.policy_for(&Method::GET), Policy::User);
        assert_eq!(route.policy_for(&Method::HEAD), Policy::User);
        assert_eq!(route.policy_for(&Method::POST), Policy::Admin);
        assert_eq!(route.policy_for(&Method::DELETE), Policy::Admin);
        let routes = table(&[RouteConfig::service("/b", "b").policy(Policy::ApiKey)]);
        let route = routes.resolve("/b").expect("route");
        assert_eq!(
            route.policy_for(&Method::PUT),
            Policy::ApiKey,
            "defaults to policy"
        );
    }

    fn table(configs: &[RouteConfig]) -> RouteTable {
        RouteTable::new(configs).expect("valid routes")
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let routes = table(&[
            RouteConfig::service("/api", "a"),
            RouteConfig::service("/api/v1/products", "catalog"),
        ]);
        let name = |path: &str| routes.resolve(path).map(|r| r.target.name().to_owned());
        assert_eq!(name("/api/v1/products").as_deref(), Some("catalog"));
        assert_eq!(name("/api/v1/products/42").as_deref(), Some("catalog"));
        assert_eq!(name("/api/v1/productsx").as_deref(), Some("a"));
        assert_eq!(name("/apix"), None);
        assert_eq!(name("/"), None);
    }

    #[test]
    fn rewrite_replaces_the_prefix_and_maps_back() {
        let routes = table(&[
            RouteConfig::service("/api/v1/registry/", "registry").rewrite("/api/v1"),
            RouteConfig::upstream("/legacy", "http://old:9000/base/").rewrite(""),
            RouteConfig::service("/api/v1/products", "catalog"),
        ]);
        let forward = |path: &str| routes.resolve(path).map(|r| r.forward_path(path));
        assert_eq!(
            forward("/api/v1/registry/services").as_deref(),
            Some("/api/v1/services")
        );
        assert_eq!(forward("/api/v1/registry").as_deref(), Some("/api/v1"));
        assert_eq!(forward("/legacy/orders/1").as_deref(), Some("/orders/1"));
        assert_eq!(forward("/legacy").as_deref(), Some("/"));
        assert_eq!(
            forward("/api/v1/products/7").as_deref(),
            Some("/api/v1/products/7")
        );

        let registry = routes.resolve("/api/v1/registry").expect("route");
        assert_eq!(
            registry.public_path("/api/v1/services/{name}").as_deref(),
            Some("/api/v1/registry/services/{name}")
        );
        assert_eq!(registry.public_path("/openapi.json"), None);
        let legacy = routes.resolve("/legacy").expect("route");
        assert_eq!(
            legacy.target,
            Target::Upstream("http://old:9000/base".into())
        );
        assert_eq!(
            legacy.public_path("/orders").as_deref(),
            Some("/legacy/orders")
        );
    }

    #[test]
    fn bad_routes_are_refused_with_their_prefix() {
        for (config, needle) in [
            (RouteConfig::service("api", "a"), "start with '/'"),
            (RouteConfig::service("/a/../b", "a"), "segments"),
            (RouteConfig::service("/a/{x}", "a"), "segments"),
            (RouteConfig::service("/a", "A b"), "registry name"),
            (RouteConfig::upstream("/a", "https://x"), "http://"),
            (RouteConfig::upstream("/a", "not a url"), "not a URL"),
            (RouteConfig::service("/a", "a").timeout_ms(0), "timeout_ms"),
            (RouteConfig::default(), "start with '/'"),
            (RouteConfig::service("/internal", "a"), "never routed"),
            (RouteConfig::service("/Internal/v1", "a"), "never routed"),
            (
                RouteConfig::service("/x", "a").rewrite("/internal/v1"),
                "never routed",
            ),
        ] {
            let error = RouteTable::new(&[config]).expect_err(needle);
            assert!(error.to_string().contains(needle), "{error} lacks {needle}");
        }
        let mut both = RouteConfig::service("/a", "a");
        both.upstream = Some("http://x".into());
        assert!(RouteTable::new(&[both]).is_err());
        let twice = [
            RouteConfig::service("/a", "a"),
            RouteConfig::service("/a/", "b"),
        ];
        assert!(RouteTable::new(&twice).is_err());
    }
}
