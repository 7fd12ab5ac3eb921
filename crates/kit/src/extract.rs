//! Request extractors whose rejections are problem documents naming the offending field:
//! [`Json`], [`Query`] and [`Path`] replace axum's, which answer in plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body. Wrong content type → 415, syntax error → 400 `malformed_json`, a field of the
/// wrong type or missing → 422 naming the field, too large → 413.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected a JSON body",
            )
            .detail("send the body with content-type: application/json"));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    payload_too_large()
                } else {
                    ApiError::bad_request("unreadable_body", rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// 413 problem.
pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "Request body too large",
    )
    .detail("the request body exceeds the size limit")
}

/// Parses JSON, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => Err(ApiError::invalid(
                    if path == "." {
                        missing_field(&inner)
                    } else {
                        path
                    },
                    strip_position(&inner.to_string()),
                )),
                _ => Err(ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON: {inner}"),
                )),
            }
        }
    }
}

/// serde reports a missing field at the parent path; pull its name out of the message.
fn missing_field(error: &serde_json::Error) -> String {
    let message = error.to_string();
    message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("missing field"))
        .unwrap_or(".")
        .to_owned()
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A query string. A parameter of the wrong type → 400 naming it.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = error.inner().to_string();
                let field = if path == "." {
                    message.split('`').nth(1).map(str::to_owned).unwrap_or(path)
                } else {
                    path
                };
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "A query parameter is invalid",
                )
                .field(field)
                .detail(message)
            })
    }
}

/// A path parameter. A value of the wrong type → 400.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "A path parameter is invalid",
                )
                .detail(rejection.body_text())
            })
    }
}
