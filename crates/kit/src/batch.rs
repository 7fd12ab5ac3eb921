//! Batched internal calls: several service-to-service requests to one service carried by one
//! HTTP request, so that a caller with many calls in flight to the same service (the checkout
//! saga driving many orders) pays for one round trip, one connection's reads and writes and one
//! request parse instead of one each.
//!
//! Server side: every service answers `POST /internal/v1/batch` ([`BATCH_PATH`], added by
//! [`crate::server::build_app`]). Each item names a method, an `/internal/...` path, a few
//! per-item headers (its own `traceparent` and request id, an idempotency key) and a JSON body;
//! it is dispatched through the service's whole application (request context, access log,
//! metrics, its route's own authentication with the batch's `Authorization`) exactly as if it
//! had come alone, each item in a task of its own, concurrently. The answer lists each item's
//! status and body in order. An item that has not finished when the batch stops waiting
//! ([`wait_header`], default [`DEFAULT_WAIT`]) is answered `503 batch_item_unfinished` and goes
//! on in the background: the internal commands are idempotent by key, so the caller's retry
//! finds its result. Items cannot be batches themselves, and only `/internal/` paths are
//! accepted, so a batch reaches nothing a single internal call could not.
//!
//! What a batch does not carry, by design: an item's response headers other than its content
//! type (the internal commands answer in their bodies), and a token of its own (the batch's
//! `Authorization` is every item's; the route itself needs none, as each item's route checks
//! it). The items of a batch are answered together, so a slow one (a payment held by a slow
//! card processor) delays the others' answers up to the batch's wait.
//!
//! Client side: [`crate::client::ServiceClient::send_coalesced`] sends a call on its own while
//! no other call to that service is out, and otherwise queues it; when the call out returns,
//! everything queued for the service leaves as one batch, or after 25 ms if it has not returned
//! by then (so a slow request holds up nobody for longer). Batches therefore form only under
//! load, and a lone call waits for nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tower::ServiceExt;

use crate::extract::Json;
use crate::metrics::Metrics;
use crate::problem::ApiError;

/// Where every service accepts a batch.
pub const BATCH_PATH: &str = "/internal/v1/batch";
/// Most items in one batch.
pub const MAX_ITEMS: usize = 64;
/// Largest body of one item's answer carried back, in bytes.
pub const MAX_ITEM_RESPONSE_BYTES: usize = 1024 * 1024;
/// Request header: how long the caller lets the batch wait for its items, in milliseconds
/// (it should be less than the caller's own timeout, so that finished items are not lost to it).
pub fn wait_header() -> HeaderName {
    HeaderName::from_static("bazaar-batch-wait-ms")
}
/// How long a batch waits for its items when the caller does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(4);
/// Bounds on the wait a caller may ask for.
const WAIT_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// Per-item headers a batch may carry; everything else (above all `Authorization`) is the
/// batch's own, shared by its items.
pub const ITEM_HEADERS: [&str; 5] = [
    crate::context::TRACEPARENT,
    crate::context::REQUEST_ID,
    "idempotency-key",
    "if-match",
    "if-none-match",
];

/// `POST /internal/v1/batch`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    /// 1 to 64 internal requests, answered in this order.
    pub requests: Vec<BatchItem>,
}

/// One request of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchItem {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// An `/internal/...` path, with its query string if any.
    pub path: String,
    /// Per-item headers: `traceparent`, `x-request-id`, `idempotency-key`, `if-match`,
    /// `if-none-match`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, sent as `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Box<RawValue>>,
}

/// The answer to a batch: one entry per item, in order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub responses: Vec<ItemResponse>,
}

/// What one item was answered.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemResponse {
    pub status: u16,
    /// The answer's content type, when it had a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The answer's body when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Box<RawValue>>,
    /// The answer's body when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ItemResponse {
    /// The item's body as the bytes it was answered with.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.text) {
            (Some(json), _) => json.get().as_bytes().to_vec(),
            (None, Some(text)) => text.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        }
    }
}

/// The batch route's OpenAPI description, merged into every service's document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    #[derive(OpenApi)]
    #[openapi(
        paths(batch_route),
        components(schemas(BatchRequest, BatchItem, BatchResponse, ItemResponse))
    )]
    struct BatchApi;
    BatchApi::openapi()
}

/// Several internal requests in one: each item is dispatched as if it came alone (with the
/// batch's `Authorization`), side by side, and answered in order.
#[utoipa::path(
    post,
    path = "/internal/v1/batch",
    tag = "internal",
    request_body = BatchRequest,
    params(("bazaar-batch-wait-ms" = Option<u64>, Header,
        description = "how long to wait for the items (100 to 30000, default 4000)")),
    responses(
        (status = 200, description = "each item's answer, in order", body = BatchResponse),
        (status = 422, description = "an item is not batchable (the field names it)",
            body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn batch_route() {}

/// An item checked and ready to dispatch.
struct Dispatch {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Box<RawValue>>,
}

/// Checks one item, naming the field at fault.
fn check(index: usize, item: BatchItem) -> Result<Dispatch, ApiError> {
    let field = |name: &str| format!("requests[{index}].{name}");
    let method = match item.method.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        other => {
            return Err(ApiError::invalid(
                field("method"),
                format!("`{other}` is not one of GET, POST, PUT, PATCH, DELETE"),
            ))
        }
    };
    let uri: Uri = item
        .path
        .parse()
        .ok()
        .filter(|uri: &Uri| uri.scheme().is_none() && uri.authority().is_none())
        .ok_or_else(|| ApiError::invalid(field("path"), "not a path with an optional query"))?;
    let path = uri.path();
    if !path.starts_with("/internal/") || path.split('/').any(|s| s == ".." || s == ".") {
        return Err(ApiError::invalid(
            field("path"),
            "only /internal/ paths, without `.` or `..` segments, can be batched",
        ));
    }
    if path == BATCH_PATH {
        return Err(ApiError::invalid(
            field("path"),
            "a batch cannot contain a batch",
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &item.headers {
        let lower = name.to_ascii_lowercase();
        if !ITEM_HEADERS.contains(&lower.as_str()) {
            return Err(ApiError::invalid(
                field(&format!("headers.{name}")),
                format!("an item may carry only {}", ITEM_HEADERS.join(", ")),
            ));
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            ApiError::invalid(
                field(&format!("headers.{name}")),
                "not a valid header value",
            )
        })?;
        headers.insert(HeaderName::from_static(header_name(&lower)), value);
    }
    Ok(Dispatch {
        method,
        uri,
        headers,
        body: item.body,
    })
}

/// The static name of an allowed per-item header.
fn header_name(lower: &str) -> &'static str {
    ITEM_HEADERS
        .iter()
        .find(|allowed| **allowed == lower)
        .copied()
        .unwrap_or("x-unknown")
}

/// How long this batch waits for its items.
fn wait_of(headers: &HeaderMap) -> Duration {
    headers
        .get(wait_header())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .map_or(DEFAULT_WAIT, |wait| {
            wait.clamp(WAIT_BOUNDS.0, WAIT_BOUNDS.1)
        })
}

/// `POST /internal/v1/batch`: dispatches each item through `app` (the service's application
/// without this route) and answers their outcomes in order.
pub async fn handle(app: Router, metrics: Metrics, request: Request) -> Response {
    match run(app, &metrics, request).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn run(app: Router, metrics: &Metrics, request: Request) -> Result<BatchResponse, ApiError> {
    let shared = request.headers().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .copied();
    let Json(batch) = Json::<BatchRequest>::from_request(request, &()).await?;
    if batch.requests.is_empty() || batch.requests.len() > MAX_ITEMS {
        return Err(ApiError::invalid(
            "requests",
            format!("a batch holds 1 to {MAX_ITEMS} requests"),
        ));
    }
    let items = batch
        .requests
        .into_iter()
        .enumerate()
        .map(|(index, item)| check(index, item))
        .collect::<Result<Vec<_>, _>>()?;
    metrics.observe_batch(items.len());
    let deadline = tokio::time::Instant::now() + wait_of(&shared);
    let tasks: Vec<_> = items
        .into_iter()
        .map(|item| {
            let has_body = item.body.is_some();
            let mut request = http::Request::builder()
                .method(item.method)
                .uri(item.uri)
                .body(match item.body {
                    Some(json) => Body::from(json.get().to_owned()),
                    None => Body::empty(),
                })
                .expect("a checked method and path always build a request");
            let headers = request.headers_mut();
            for name in [header::AUTHORIZATION, header::USER_AGENT] {
                if let Some(value) = shared.get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            headers.extend(item.headers);
            if has_body {
                request.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Some(peer) = peer {
                request.extensions_mut().insert(peer);
            }
            // A task per item: items run side by side, and one that outlives the batch's wait
            // finishes anyway (its caller's retry finds its result by key).
            tokio::spawn(answer(app.clone(), request))
        })
        .collect();
    let mut responses = Vec::with_capacity(tasks.len());
    for task in tasks {
        let response = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(response)) => response,
            Ok(Err(_panicked)) => unanswered(
                StatusCode::INTERNAL_SERVER_ERROR,
                "batch_item_failed",
                "the item's handler failed",
            ),
            Err(_elapsed) => unanswered(
                StatusCode::SERVICE_UNAVAILABLE,
                "batch_item_unfinished",
                "the item did not finish while the batch waited; it goes on: retry it with its key",
            ),
        };
        responses.push(response);
    }
    Ok(BatchResponse { responses })
}

/// Runs one item through the application and keeps its status and body.
async fn answer(app: Router, request: Request) -> ItemResponse {
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = match axum::body::to_bytes(response.into_body(), MAX_ITEM_RESPONSE_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return unanswered(
                StatusCode::BAD_GATEWAY,
                "batch_item_too_large",
                "the item's answer is too large to batch",
            )
        }
    };
    let is_json = content_type.as_deref().is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime == "application/json" || mime.ends_with("+json")
    });
    let (body, text) = if bytes.is_empty() {
        (None, None)
    } else if is_json {
        match serde_json::from_slice::<Box<RawValue>>(&bytes) {
            Ok(json) => (Some(json), None),
            Err(_) => (None, Some(String::from_utf8_lossy(&bytes).into_owned())),
        }
    } else {
        (None, Some(String::from_utf8_lossy(&bytes).into_owned()))
    };
    ItemResponse {
        status,
        content_type,
        body,
        text,
    }
}

/// An item answered by the batch itself, as a problem document.
fn unanswered(status: StatusCode, code: &'static str, detail: &'static str) -> ItemResponse {
    let problem = ApiError::new(status, code, "The batch could not answer this item")
        .detail(detail)
        .to_problem();
    ItemResponse {
        status: status.as_u16(),
        content_type: Some("application/problem+json".to_owned()),
        body: serde_json::to_string(&problem)
            .ok()
            .and_then(|json| RawValue::from_string(json).ok()),
        text: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(method: &str, path: &str) -> BatchItem {
        BatchItem {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: BTreeMap::new(),
            body: None,
        }
    }

    #[test]
    fn only_internal_paths_of_known_methods_pass() {
        assert!(check(0, item("POST", "/internal/v1/reservations")).is_ok());
        assert!(check(
            0,
            item("GET", "/internal/v1/locate?country=US&postal_code=1")
        )
        .is_ok());
        for (index, (method, path, field)) in [
            ("POST", "/api/v1/orders", "requests[1].path"),
            ("POST", "/internal/../api/v1/orders", "requests[1].path"),
            ("POST", "http://elsewhere/internal/v1/x", "requests[1].path"),
            ("POST", BATCH_PATH, "requests[1].path"),
            ("TRACE", "/internal/v1/x", "requests[1].method"),
        ]
        .into_iter()
        .enumerate()
        {
            let error = check(1, item(method, path))
                .err()
                .unwrap_or_else(|| panic!("case {index} ({method} {path}) passed"));
            assert_eq!(
                error.to_problem().field.as_deref(),
                Some(field),
                "case {index}"
            );
        }
    }

    #[test]
    fn an_item_cannot_carry_its_own_authorization() {
        let mut smuggler = item("POST", "/internal/v1/reservations");
        smuggler
            .headers
            .insert("Authorization".into(), "Bearer someone-else".into());
        let error = check(2, smuggler).err().expect("refused");
        assert_eq!(
            error.to_problem().field.as_deref(),
            Some("requests[2].headers.Authorization")
        );
        let mut keyed = item("POST", "/internal/v1/reservations");
        keyed
            .headers
            .insert("Idempotency-Key".into(), "order-1".into());
        let dispatch = check(0, keyed).expect("allowed");
        assert_eq!(dispatch.headers["idempotency-key"], "order-1");
    }

    #[test]
    fn the_wait_is_bounded() {
        let mut headers = HeaderMap::new();
        assert_eq!(wait_of(&headers), DEFAULT_WAIT);
        headers.insert(wait_header(), HeaderValue::from_static("1500"));
        assert_eq!(wait_of(&headers), Duration::from_millis(1500));
        headers.insert(wait_header(), HeaderValue::from_static("999999999"));
        assert_eq!(wait_of(&headers), WAIT_BOUNDS.1);
        headers.insert(wait_header(), HeaderValue::from_static("1"));
        assert_eq!(wait_of(&headers), WAIT_BOUNDS.0);
    }
}
