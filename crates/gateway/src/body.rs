//! Buffering a request body under the size cap. The proxy buffers bodies so that a request can
//! be sent again to another instance; the cap (`max_body_bytes`) bounds the memory this takes.
//! A declared `Content-Length` over the cap is refused before a single byte is read; a body
//! streamed without one is refused as soon as it crosses the cap.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bazaar_kit::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error;

/// Reads `body` whole, or fails with 413 when it is over `limit` bytes.
pub async fn buffer(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(error::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(cause) if cause.downcast_ref::<LengthLimitError>().is_some() => {
            Err(error::payload_too_large(limit))
        }
        Err(cause) => {
            tracing::debug!(error = %cause, "request body could not be read");
            Err(error::unreadable_body())
        }
    }
}
