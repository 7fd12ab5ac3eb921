//! Who may pass: each route's policy, checked before the body is read or anything is
//! forwarded, then the caller's limits.
//!
//! 1. A bearer token, if one is sent, must be valid on every route (a bad token is a 401, never
//!    silently ignored). Other `Authorization` schemes (Basic to `/oauth2/token`) pass
//!    through untouched for the service to check.
//! 2. An `x-api-key`, if one is sent, must be active on every route (unknown or revoked: 401;
//!    trial over: 403), and it is held to its plan's rate and quotas.
//! 3. The route's policy for the method: `public` anyone; `user` a valid token; `admin` a token
//!    with the `admin` role; `partner` a client-credentials token with the `partner` scope;
//!    `api_key` a key (a token is not enough).
//! 4. Anonymous callers (neither a key nor a token) are held to the per-address rate.
//!
//! What the upstream learns: the `Authorization` header unchanged (services verify again), and
//! `x-bazaar-subject`, `x-bazaar-client-id`, `x-bazaar-roles` for a verified token,
//! `x-bazaar-api-key-id` and `x-bazaar-plan` for a key. Any `x-bazaar-*` header the client sent
//! is removed first, and the key itself is not forwarded.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use bazaar_auth::{AuthError, Claims, Verifier};
use bazaar_kit::ApiError;

use crate::client_ip::{self, Cidr};
use crate::config::Policy;
use crate::error;
use crate::headers::{
    X_API_KEY, X_BAZAAR_API_KEY_ID, X_BAZAAR_CLIENT_ID, X_BAZAAR_PLAN, X_BAZAAR_ROLES,
    X_BAZAAR_SUBJECT,
};
use crate::keys::KeyStore;
use crate::limits::Limits;
use crate::usage::FlushOnDrop;

/// Everything the checks need. Shared by all requests.
pub struct Security {
    pub verifier: Arc<Verifier>,
    pub keys: KeyStore,
    pub limits: Arc<Limits>,
    pub trusted_proxies: Vec<Cidr>,
    /// Sends the last usage counts when the gateway goes away.
    pub _flush: FlushOnDrop,
}

/// A request that may pass.
#[derive(Debug, Default)]
pub struct Admission {
    /// Added to the forwarded request.
    pub upstream: Vec<(HeaderName, HeaderValue)>,
    /// Added to the response.
    pub response: Vec<(HeaderName, HeaderValue)>,
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// Checks `parts` against `policy` and the caller's limits.
pub async fn admit(
    security: &Security,
    policy: Policy,
    parts: &Parts,
) -> Result<Admission, ApiError> {
    let mut admission = Admission::default();

    let claims: Option<Claims> = match bazaar_auth::bearer_token(&parts.headers) {
        Some(token) => Some(security.verifier.verify(token).await?),
        None => None,
    };
    let key = match parts.headers.get(X_API_KEY) {
        None => None,
        Some(raw) => {
            let raw = raw.to_str().map_err(|_| error::invalid_api_key())?.trim();
            if raw.is_empty() {
                return Err(error::invalid_api_key());
            }
            let record = security
                .keys
                .lookup(raw)
                .await?
                .filter(|record| record.status != "revoked")
                .ok_or_else(error::invalid_api_key)?;
            if record.is_expired() {
                return Err(error::plan_expired(format!(
                    "the {} plan of key {} ended on {}; choose a paid plan",
                    if record.plan.title.is_empty() {
                        &record.plan_name
                    } else {
                        &record.plan.title
                    },
                    record.key_id,
                    record.ended_on()
                )));
            }
            if record.status != "active" {
                return Err(error::invalid_api_key());
            }
            Some(record)
        }
    };

    match policy {
        Policy::Public => {}
        Policy::User => {
            claims.as_ref().ok_or(AuthError::Missing)?;
        }
        Policy::Admin => {
            let claims = claims.as_ref().ok_or(AuthError::Missing)?;
            if !claims.is_admin() {
                return Err(AuthError::Forbidden("this route needs the admin role".into()).into());
            }
        }
        Policy::Partner => {
            let claims = claims.as_ref().ok_or(AuthError::Missing)?;
            if claims.is_user() || !claims.has_scope("partner") {
                return Err(AuthError::Forbidden(
                    "this route needs a partner's client-credentials token (scope `partner`)"
                        .into(),
                )
                .into());
            }
        }
        Policy::ApiKey => {
            if key.is_none() {
                return Err(error::api_key_required());
            }
        }
    }

    if let Some(record) = &key {
        let info = security.limits.check_key(record).await?;
        admission.response.extend(info.headers());
        admission
            .upstream
            .extend(value(&record.key_id).map(|v| (X_BAZAAR_API_KEY_ID, v)));
        admission
            .upstream
            .extend(value(&record.plan_name).map(|v| (X_BAZAAR_PLAN, v)));
    } else if claims.is_none() {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        if let Some(address) =
            client_ip::client_address(peer, &parts.headers, &security.trusted_proxies)
        {
            security.limits.check_anonymous(address).await?;
        }
    }

    if let Some(claims) = &claims {
        admission
            .upstream
            .extend(value(&claims.sub).map(|v| (X_BAZAAR_SUBJECT, v)));
        admission
            .upstream
            .extend(value(&claims.client_id).map(|v| (X_BAZAAR_CLIENT_ID, v)));
        admission
            .upstream
            .extend(value(&claims.roles.join(",")).map(|v| (X_BAZAAR_ROLES, v)));
    }
    Ok(admission)
}
