//! The tower layers the gateway puts around its own routes: CORS for the storefront's origins
//! (so a browser app on another port may call the API) and response compression.
//!
//! Compression negotiates gzip or br from `Accept-Encoding`; tower-http leaves a response that
//! already has a `Content-Encoding` (an upstream compressed it) alone, never compressing twice,
//! and skips tiny bodies and images where it would not pay.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// CORS for `origins` (`*` allows any origin, without credentials).
pub fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/'))
                    .map_err(|_| anyhow::anyhow!("cors_origins: `{origin}` is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::ACCEPT,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static(bazaar_kit::context::REQUEST_ID),
            HeaderName::from_static(bazaar_kit::context::TRACEPARENT),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            // Rate limits and quotas (draft-ietf-httpapi-ratelimit-headers), for API-key clients.
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
            HeaderName::from_static(bazaar_kit::context::REQUEST_ID),
        ])
        .max_age(Duration::from_secs(600)))
}

/// gzip and br, as the client asks.
pub fn compression() -> CompressionLayer {
    CompressionLayer::new()
}
