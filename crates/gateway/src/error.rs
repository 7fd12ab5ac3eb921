//! The gateway's own problem documents, in one table so their codes stay stable:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_path` | the path has `.`/`..` segments, which an upstream could resolve outside the route |
//! | 404 | `route_not_found` | no route (the kit's fallback) |
//! | 404 | `asset_not_found` | no such static file |
//! | 413 | `payload_too_large` | the body is over `max_body_bytes` |
//! | 502 | `upstream_unreachable` | the upstream failed in transit and the request cannot be retried |
//! | 502 | `bad_upstream_address` | a registered address does not form a valid URL |
//! | 503 | `no_healthy_upstream` | no routable, non-ejected instance is left |
//! | 504 | `upstream_timeout` | the upstream did not answer within the route's timeout |
//! | 401 | `unauthenticated` | the route needs a token and none was sent (`WWW-Authenticate`) |
//! | 401 | `invalid_token` | a bearer token was sent and is not valid, on any route (`WWW-Authenticate`) |
//! | 403 | `forbidden` | the token lacks the role (`admin`) or scope (`partner`) the route needs |
//! | 401 | `api_key_required` | the route needs an `x-api-key` and none was sent |
//! | 401 | `invalid_api_key` | the API key is unknown or revoked |
//! | 403 | `plan_expired` | the key's plan (a free trial) has ended |
//! | 429 | `rate_limited` | over the key's per-second rate, or the anonymous per-address rate (`Retry-After`, `RateLimit`) |
//! | 429 | `quota_exceeded` | the key's day or month quota is used up (`Retry-After`, `RateLimit`) |
//! | 503 | `key_lookup_unavailable` | the developer service could not be asked about the key (`Retry-After`) |

use axum::http::{header, HeaderValue, StatusCode};
use bazaar_kit::ApiError;

use crate::limits::RateInfo;

/// `WWW-Authenticate` for API-key failures (a 401 must name a scheme, RFC 9110 §15.5.2).
const API_KEY_CHALLENGE: &str = "ApiKey realm=\"bazaar\", header=\"x-api-key\"";

pub fn api_key_required() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "api_key_required",
        "API key required",
    )
    .detail("this route needs an API key: send it as x-api-key: <key>")
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(API_KEY_CHALLENGE),
    )
}

pub fn invalid_api_key() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "Invalid API key",
    )
    .detail("the API key is unknown or has been revoked")
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(API_KEY_CHALLENGE),
    )
}

pub fn plan_expired(detail: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "plan_expired", "The plan has ended").detail(detail)
}

fn too_many(
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: u64,
    info: &RateInfo,
) -> ApiError {
    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, title)
        .detail(detail)
        .header(header::RETRY_AFTER, HeaderValue::from(retry_after));
    for (name, value) in info.headers() {
        error = error.header(name, value);
    }
    error
}

pub fn rate_limited(retry_after: u64, info: &RateInfo) -> ApiError {
    too_many(
        "rate_limited",
        "Too many requests",
        format!("the request rate is over the limit; retry in {retry_after} s"),
        retry_after,
        info,
    )
}

pub fn quota_exceeded(period: &str, retry_after: u64, info: &RateInfo) -> ApiError {
    too_many(
        "quota_exceeded",
        "Quota exceeded",
        format!("the key's {period} quota is used up; it renews in {retry_after} s"),
        retry_after,
        info,
    )
}

pub fn key_lookup_unavailable() -> ApiError {
    ApiError::unavailable(
        "key_lookup_unavailable",
        "the API key cannot be checked right now",
    )
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

pub fn invalid_path() -> ApiError {
    ApiError::bad_request("invalid_path", "paths may not contain '.' or '..' segments")
}

pub fn asset_not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "asset_not_found",
        "No such static file",
    )
    .detail(format!("no static file named {path}"))
}

pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "Request body too large",
    )
    .detail(format!("the request body exceeds {limit} bytes"))
}

pub fn unreadable_body() -> ApiError {
    ApiError::bad_request("unreadable_body", "the request body could not be read")
}

pub fn upstream_unreachable(target: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        "The upstream could not be reached",
    )
    .detail(format!("{target} failed before answering"))
}

pub fn bad_upstream_address(target: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_upstream_address",
        "The upstream address is invalid",
    )
    .detail(format!(
        "{target} is registered with an address that is not a valid URL"
    ))
}

/// 503 with `Retry-After: 1`: ejections are short and instances come back, so a client may
/// reasonably retry soon.
pub fn no_healthy_upstream(target: &str) -> ApiError {
    ApiError::unavailable(
        "no_healthy_upstream",
        format!("no healthy instance of {target} is available"),
    )
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

pub fn upstream_timeout(target: &str, timeout_ms: u128) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        "The upstream did not answer in time",
    )
    .detail(format!("{target} did not answer within {timeout_ms} ms"))
}

/// Whether a request is a browser navigation (it prefers HTML), which should see a page rather
/// than a problem document when the gateway cannot reach the upstream.
pub fn wants_html(method: &http::Method, headers: &http::HeaderMap) -> bool {
    (*method == http::Method::GET || *method == http::Method::HEAD)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// `error` as a small HTML page (same status and headers), for a browser: a person sees what
/// is wrong and that it is temporary, instead of a JSON document or a blank page.
pub fn as_html_page(error: ApiError) -> axum::response::Response {
    use axum::response::IntoResponse;
    let problem = error.to_problem();
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let detail = problem.detail.as_deref().unwrap_or(&problem.title);
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · bazaar</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;\
         padding:0 1rem;line-height:1.5;color:#1f2328}}.detail{{color:#b42318}}</style></head>\
         <body><main><h1>{title}</h1><p class=\"detail\">{detail}</p>\
         <p>This is usually temporary: please try again in a moment.</p>\
         <p class=\"muted\">Status {status} · request {request_id}</p></main></body></html>",
        title = escape(&problem.title),
        detail = escape(detail),
        status = problem.status,
        request_id = escape(problem.request_id.as_deref().unwrap_or("-")),
    );
    let status = error.status;
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response();
    for (name, value) in error.headers {
        response.headers_mut().insert(name, value);
    }
    response
}
