//! API documentation: the gateway's own OpenAPI document, the merged document of every routed
//! service (`GET /api/openapi.json`) and the page that renders it (`GET /api/docs`).
//!
//! Merging: each distinct route target publishes `/openapi.json`; of its paths only those a
//! route actually exposes are kept, rewritten to their public form (and only when that public
//! path really resolves to the same route, so a more specific route shadowing it is honoured);
//! components are merged by name, first one wins. A target that cannot be fetched is skipped and
//! named under `x-bazaar-unavailable`, so one service being down never hides the others' docs.
//! The result is cached for `openapi_cache_ms` (shorter while something is missing, so a
//! recovered service appears soon) and served with an ETag.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bazaar_kit::context;
use bazaar_kit::ApiError;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use utoipa::OpenApi;

use crate::error;
use crate::routes::{Route, Target};
use crate::state::Gateway;
use crate::static_files::{self, REVALIDATE};

/// How long fetching one service's document may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest document accepted from a service.
const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
/// Cache lifetime while some service's document is missing.
const DEGRADED_CACHE: Duration = Duration::from_secs(2);

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar gateway", description = "The single entry point: routing, load balancing, static content, API documentation."),
    paths(
        merged_openapi,
        docs_page,
        crate::static_files::static_file,
        crate::static_files::favicon,
        crate::landing::landing
    ),
    components(schemas(bazaar_kit::problem::Problem)),
    tags((name = "gateway", description = "The gateway's own endpoints"))
)]
struct ApiDoc;

/// The gateway's own OpenAPI document (also served by the kit at `/openapi.json`).
pub fn own_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The merged document, rebuilt at most once per cache period.
pub struct OpenApiCache {
    ttl: Duration,
    // An async mutex held while rebuilding: concurrent requests wait for one rebuild instead of
    // each fetching every service.
    cached: tokio::sync::Mutex<Option<(Instant, Duration, Arc<Value>)>>,
}

impl OpenApiCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self, gateway: &Gateway) -> Arc<Value> {
        let mut cached = self.cached.lock().await;
        if let Some((built, ttl, document)) = cached.as_ref() {
            if built.elapsed() < *ttl {
                return document.clone();
            }
        }
        let (document, complete) = build(gateway).await;
        let document = Arc::new(document);
        let ttl = if complete {
            self.ttl
        } else {
            self.ttl.min(DEGRADED_CACHE)
        };
        *cached = Some((Instant::now(), ttl, document.clone()));
        document
    }
}

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "gateway",
    responses((status = 200, description = "The merged OpenAPI document of every routed service"),
              (status = 304, description = "Not modified")))]
pub async fn merged_openapi(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let document = gateway.openapi.get(&gateway).await;
    bazaar_kit::etag::json(&headers, &*document)
}

/// `GET /api/docs`: the documentation page (it loads `/api/openapi.json` itself).
#[utoipa::path(get, path = "/api/docs", tag = "gateway",
    responses((status = 200, description = "HTML documentation page", content_type = "text/html"),
              (status = 404, description = "The page is not built in", body = bazaar_kit::problem::Problem)))]
pub async fn docs_page(headers: HeaderMap) -> Result<Response, ApiError> {
    let (asset, _) = bazaar_assets::assets()
        .lookup("docs/index.html")
        .ok_or_else(|| error::asset_not_found("docs/index.html"))?;
    Ok(static_files::serve(asset, REVALIDATE, &headers))
}

/// Fetches every target's document and merges them; the flag says nothing was missing.
async fn build(gateway: &Gateway) -> (Value, bool) {
    // Distinct targets, each with the routes that lead to it.
    let mut targets: Vec<(&Target, Vec<&Route>)> = Vec::new();
    for route in gateway.routes.routes() {
        match targets
            .iter_mut()
            .find(|(target, _)| **target == route.target)
        {
            Some((_, routes)) => routes.push(route),
            None => targets.push((&route.target, vec![route])),
        }
    }
    let fetched =
        futures::future::join_all(targets.iter().map(|(_, routes)| fetch(gateway, routes[0])))
            .await;
    let own = serde_json::to_value(own_document()).unwrap_or_else(|_| json!({}));
    let documents = targets
        .iter()
        .zip(fetched)
        .map(|((target, routes), document)| (target.name(), routes.as_slice(), document));
    merge(own, documents, |path| gateway.routes.resolve(path))
}

/// One target's `/openapi.json`, or why it could not be had.
async fn fetch(gateway: &Gateway, route: &Route) -> Result<Value, String> {
    let instances = route.instances(&gateway.discovery);
    // The guard is dropped without an outcome on purpose: a missing document says nothing about
    // whether the instance serves traffic, so it must not count towards ejection.
    let endpoint = gateway
        .balancer
        .pick(&instances, &[])
        .ok_or_else(|| "no healthy instance".to_owned())?;
    let uri: http::Uri = format!(
        "{}/openapi.json",
        endpoint.instance.address.trim_end_matches('/')
    )
    .parse()
    .map_err(|_| "invalid address".to_owned())?;
    let mut request = hyper::Request::new(Full::default());
    *request.uri_mut() = uri;
    request.headers_mut().insert(
        header::ACCEPT,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(current) = context::current() {
        current.inject(request.headers_mut());
    }
    let response = tokio::time::timeout(FETCH_TIMEOUT, gateway.client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|cause| format!("unreachable: {cause}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status().as_u16()));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES);
    let bytes = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|cause| format!("unreadable: {cause}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|cause| format!("not JSON: {cause}"))
}

/// Merges the targets' documents into the gateway's own. `resolve` maps a public path to the
/// route that serves it.
fn merge<'a, I, R>(mut merged: Value, documents: I, resolve: R) -> (Value, bool)
where
    I: IntoIterator<Item = (&'a str, &'a [&'a Route], Result<Value, String>)>,
    R: Fn(&str) -> Option<&'a Route>,
{
    let mut paths = take_object(&mut merged, "paths");
    let mut components = take_object(&mut merged, "components");
    let mut tags = match merged.get_mut("tags").map(Value::take) {
        Some(Value::Array(tags)) => tags,
        _ => Vec::new(),
    };
    let mut unavailable = Vec::new();
    let mut merged_from = Vec::new();

    for (name, routes, document) in documents {
        let mut document = match document {
            Ok(document) => document,
            Err(reason) => {
                tracing::warn!(target = name, %reason, "openapi document unavailable");
                unavailable.push(json!({ "target": name, "reason": reason }));
                continue;
            }
        };
        merged_from.push(name.to_owned());
        for (path, item) in take_object(&mut document, "paths") {
            for route in routes {
                let Some(public) = route.public_path(&path) else {
                    continue;
                };
                let served_here = resolve(&public).is_some_and(|r| std::ptr::eq(r, *route));
                if served_here && !paths.contains_key(&public) {
                    // Who may call it, as the gateway enforces it (the developer portal shows it).
                    let mut item = item.clone();
                    if let Value::Object(fields) = &mut item {
                        fields.insert("x-bazaar-policy".to_owned(), json!(route.policy.as_str()));
                        fields.insert(
                            "x-bazaar-write-policy".to_owned(),
                            json!(route.write_policy.as_str()),
                        );
                    }
                    paths.insert(public, item);
                }
            }
        }
        for (kind, entries) in take_object(&mut document, "components") {
            let Value::Object(entries) = entries else {
                continue;
            };
            let slot = components
                .entry(kind)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(slot) = slot {
                for (entry, value) in entries {
                    slot.entry(entry).or_insert(value);
                }
            }
        }
        if let Some(Value::Array(more)) = document.get_mut("tags").map(Value::take) {
            for tag in more {
                if !tags.iter().any(|t| t.get("name") == tag.get("name")) {
                    tags.push(tag);
                }
            }
        }
    }

    let complete = unavailable.is_empty();
    if let Value::Object(root) = &mut merged {
        root.insert(
            "info".to_owned(),
            json!({
                "title": "bazaar API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": format!(
                    "Every service behind the bazaar gateway, at its public paths. Merged from: {}.",
                    if merged_from.is_empty() { "the gateway only".to_owned() } else { merged_from.join(", ") }
                ),
            }),
        );
        root.insert("paths".to_owned(), Value::Object(paths));
        root.insert("components".to_owned(), Value::Object(components));
        root.insert("tags".to_owned(), Value::Array(tags));
        root.insert("x-bazaar-unavailable".to_owned(), Value::Array(unavailable));
    }
    (merged, complete)
}

/// Removes `document[key]` and returns it as a map (empty when absent or not an object).
fn take_object(document: &mut Value, key: &str) -> Map<String, Value> {
    match document.get_mut(key).map(Value::take) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Policy, RouteConfig};
    use crate::routes::RouteTable;

    #[test]
    fn keeps_only_routed_paths_in_public_form_and_names_missing_services() {
        let table = RouteTable::new(&[
            RouteConfig::service("/api/v1/registry", "registry")
                .rewrite("/api/v1")
                .policy(Policy::Admin),
            RouteConfig::service("/api/v1/registry/secret", "other"),
            RouteConfig::service("/api/v1/products", "catalog"),
        ])
        .expect("routes");
        let registry = table.resolve("/api/v1/registry").expect("route");
        let catalog = table.resolve("/api/v1/products").expect("route");
        let registry_doc = json!({
            "paths": {
                "/api/v1/services": {"get": {}},
                "/api/v1/secret": {"get": {}},
                "/internal": {"get": {}}
            },
            "components": {"schemas": {"Problem": {"type": "object"}, "Snapshot": {}}},
            "tags": [{"name": "registry"}]
        });
        let own = json!({"paths": {"/api/docs": {"get": {}}}, "components": {"schemas": {"Problem": {"own": true}}}});
        let registry_routes = [registry];
        let catalog_routes = [catalog];
        let (merged, complete) = merge(
            own,
            [
                ("registry", &registry_routes[..], Ok(registry_doc)),
                (
                    "catalog",
                    &catalog_routes[..],
                    Err("no healthy instance".to_owned()),
                ),
            ],
            |path| table.resolve(path),
        );
        assert!(!complete);
        let paths = merged["paths"].as_object().expect("paths");
        assert!(paths.contains_key("/api/docs"));
        assert!(paths.contains_key("/api/v1/registry/services"));
        // Each routed path says who may call it, as the gateway enforces it.
        assert_eq!(
            paths["/api/v1/registry/services"]["x-bazaar-policy"],
            "admin"
        );
        assert_eq!(
            paths["/api/v1/registry/services"]["x-bazaar-write-policy"],
            "admin"
        );
        assert!(
            !paths.contains_key("/api/v1/registry/secret"),
            "shadowed by a more specific route"
        );
        assert!(!paths.contains_key("/internal"), "not exposed by any route");
        assert_eq!(merged["components"]["schemas"]["Problem"]["own"], true);
        assert!(merged["components"]["schemas"].get("Snapshot").is_some());
        assert_eq!(merged["tags"][0]["name"], "registry");
        assert_eq!(merged["x-bazaar-unavailable"][0]["target"], "catalog");
    }
}
