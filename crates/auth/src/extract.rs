//! axum extractors for handlers that need the caller's identity. Services check authorization
//! themselves even behind the gateway: a token is verified again here, and ownership (a
//! customer sees only their own cart) is the handler's job with the [`Caller`] it gets.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use bazaar_kit::ApiError;

use crate::claims::Claims;
use crate::verifier::{AuthError, Verifier};

/// The bearer token of a request, if any.
pub fn bearer_token(parts: &http::HeaderMap) -> Option<&str> {
    let value = parts.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// A verified caller (any valid token).
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let token = bearer_token(&parts.headers).ok_or(AuthError::Missing)?;
        Ok(Caller(verifier.verify(token).await?))
    }
}

/// A verified caller with the `admin` role.
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub Claims);

impl<S> FromRequestParts<S> for RequireAdmin
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if !claims.is_admin() {
            return Err(AuthError::Forbidden("this action needs the admin role".into()).into());
        }
        Ok(RequireAdmin(claims))
    }
}

/// A verified caller with the `service` role: another bazaar service calling an `/internal/...`
/// endpoint with its client-credentials token.
#[derive(Debug, Clone)]
pub struct RequireService(pub Claims);

impl<S> FromRequestParts<S> for RequireService
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if !claims.has_role("service") {
            return Err(AuthError::Forbidden("this endpoint is for bazaar services".into()).into());
        }
        Ok(RequireService(claims))
    }
}
