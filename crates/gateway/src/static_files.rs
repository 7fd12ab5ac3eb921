//! Static content compiled into the binary (`bazaar_assets`), served CDN-style:
//! a hashed name (`/static/brand/logo.3fa9c2d1e0.svg`) never changes content, so it is cached
//! for a year as immutable; a logical name (`/static/brand/logo.svg`) may change with the next
//! release, so it must be revalidated, which its ETag makes a cheap 304.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bazaar_assets::Asset;
use bazaar_kit::etag::if_none_match;
use bazaar_kit::ApiError;

use crate::error;

/// For content-hashed names.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For logical names (and pages that embed them): always revalidate.
pub const REVALIDATE: &str = "public, max-age=0, must-revalidate";

/// `GET /static/{*path}` (HEAD is answered by axum from the same handler, without the body).
#[utoipa::path(get, path = "/static/{path}", tag = "gateway",
    params(("path" = String, Path, description = "Asset path, hashed or logical")),
    responses(
        (status = 200, description = "The file"),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 404, description = "No such file", body = bazaar_kit::problem::Problem)))]
pub async fn static_file(
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (asset, hashed) = bazaar_assets::assets()
        .lookup(&path)
        .ok_or_else(|| error::asset_not_found(&path))?;
    Ok(serve(
        asset,
        if hashed { IMMUTABLE } else { REVALIDATE },
        &headers,
    ))
}

/// `GET /favicon.ico`: browsers ask for it unprompted; answer with the SVG favicon.
#[utoipa::path(get, path = "/favicon.ico", tag = "gateway",
    responses((status = 200, description = "The favicon (SVG)"),
              (status = 404, description = "No favicon", body = bazaar_kit::problem::Problem)))]
pub async fn favicon(headers: HeaderMap) -> Result<Response, ApiError> {
    let (asset, _) = bazaar_assets::assets()
        .lookup("favicon.svg")
        .ok_or_else(|| error::asset_not_found("favicon.svg"))?;
    Ok(serve(asset, REVALIDATE, &headers))
}

/// Answers `asset` with its validators, or 304 when the client's copy is current.
pub fn serve(asset: &Asset, cache_control: &'static str, request_headers: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    if if_none_match(request_headers, &asset.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let content_type = HeaderValue::from_str(&asset.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    (headers, Body::from(asset.bytes)).into_response()
}
