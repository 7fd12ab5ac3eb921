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

use axum::http::{header, HeaderValue, StatusCode};
use bazaar_kit::ApiError;

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
