//! Errors as RFC 9457 `application/problem+json` documents with a stable machine-readable code.
//!
//! Every error a service returns goes through [`ApiError`]; internal errors are logged with
//! their cause and answered with a generic 500 that leaks nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::context;

/// The `type` URIs of problems are `https://bazaar.dev/problems/<code>`.
pub const PROBLEM_BASE: &str = "https://bazaar.dev/problems/";

/// The problem document, as serialized.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// URI identifying the problem type; stable.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code (the last segment of `type`).
    pub code: String,
    /// The input field at fault, as a path (`price.currency`, `per_page`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request id, to find the request in logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: Option<String>,
    pub field: Option<String>,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`...).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            field: None,
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 400 `validation_failed` about one field.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "A field has an invalid value",
        )
        .field(field)
        .detail(detail)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "The request is malformed").detail(detail)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found").detail(what)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict").detail(detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "Service temporarily unavailable",
        )
        .detail(detail)
    }

    /// A failure that is ours, not the client's: logged with its cause, answered with nothing
    /// more than "internal error" and the request id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            kind: format!("{PROBLEM_BASE}{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            field: self.field.clone(),
            request_id: context::current().map(|c| c.request_id),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::error!(%error, "database unavailable");
                ApiError::unavailable("database_unavailable", "the database is unavailable")
            }
            _ => ApiError::internal(error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self.to_problem(), self.headers)
    }
}

/// Serializes a problem with the right content type.
pub fn problem_response(
    problem: &Problem,
    headers: Vec<(header::HeaderName, HeaderValue)>,
) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Fallback for unknown routes.
pub async fn not_found_fallback(uri: http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "No such route")
        .detail(format!("no route for {}", uri.path()))
}

/// Fallback for a known route with the wrong method.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
}
