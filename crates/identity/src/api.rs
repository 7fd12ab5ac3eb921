//! The users and admin REST APIs (problem documents on error), the JSON login, the router of
//! every identity route, and the OpenAPI document.
//!
//! Bearer authentication here accepts only access tokens this provider issued and has not
//! revoked (checked against the database, unlike a plain resource server), because these
//! endpoints change credentials and clients.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bazaar_kit::audit::{AuditQuery, AuditView, ADMIN_AUDIT_PATH};
use bazaar_kit::extract::{Json, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::audit::{audit, Event};
use crate::crypto;
use crate::login::{self, ClientAddress, LoginFailure};
use crate::model::{
    validate_password, Client, ClientList, ClientRegistration, CreatedClient, Credentials,
    PasswordChange, Registration, Rotation, User, UserList, ROLE_ADMIN,
};
use crate::oauth;
use crate::repository::RepoError;
use crate::tokens::AccessClaims;
use crate::AppState;

/// Every identity route (without the kit's common routes and fallbacks, which
/// `bazaar_kit::server::Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/oauth2/jwks.json", get(oauth::jwks))
        .route(
            "/oauth2/authorize",
            get(oauth::authorize).post(oauth::consent),
        )
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route(
            "/oauth2/userinfo",
            get(oauth::userinfo).post(oauth::userinfo),
        )
        .route("/login", get(login::login_page).post(login::login_submit))
        .route("/logout", post(login::logout))
        .route("/api/v1/users", post(register).get(list_users))
        .route("/api/v1/users/me", get(me))
        .route("/api/v1/users/me/password", put(change_password))
        .route("/api/v1/identity/sessions", post(json_login))
        .route(
            "/api/v1/identity/clients",
            get(list_clients).post(create_client),
        )
        .route("/api/v1/identity/keys/rotate", post(rotate_keys))
        .route(ADMIN_AUDIT_PATH, get(audit_log))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar identity", description = "Users, OAuth clients and signing keys. \
        The OAuth 2.0 / OpenID Connect endpoints (/.well-known/openid-configuration, /oauth2/*, \
        /login, /logout) follow their RFCs and are described by the discovery document."),
    paths(register, me, change_password, list_users, json_login, list_clients, create_client, rotate_keys,
        bazaar_kit::audit::admin_view),
    components(schemas(User, UserList, Registration, PasswordChange, Credentials, Client,
        ClientList, ClientRegistration, CreatedClient, Rotation, Problem)),
    tags((name = "identity", description = "Users, clients, keys"))
)]
struct ApiDoc;

/// The identity service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The one place repository errors become answers.
impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::EmailTaken(email) => {
                ApiError::conflict("email_taken", format!("{email} is already registered"))
                    .field("email")
            }
            RepoError::ClientIdTaken(id) => {
                ApiError::conflict("client_id_taken", format!("client id {id} is taken"))
                    .field("client_id")
            }
            RepoError::Corrupt(what) => ApiError::internal(what),
            RepoError::Database(error) => error.into(),
        }
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authentication required",
    )
    .detail(detail)
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"bazaar\""),
    )
}

/// Verifies the request's access token (signature, issuer, lifetime, not revoked).
async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<AccessClaims> {
    let token = bearer_token(headers)
        .ok_or_else(|| unauthorized("send an access token as Authorization: Bearer"))?;
    let claims = state
        .signer
        .verify_access(token)
        .await
        .map_err(|_| unauthorized("the access token is invalid or expired"))?;
    if state.repository.access_token_revoked(&claims.jti).await? {
        return Err(unauthorized("the access token is revoked"));
    }
    Ok(claims)
}

async fn require_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<AccessClaims> {
    let claims = authenticate(state, headers).await?;
    if !claims.has_role(ROLE_ADMIN) {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail("this needs the admin role"),
        );
    }
    Ok(claims)
}

fn throttled(wait: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "Too many failed attempts",
    )
    .detail(format!("try again in {wait} seconds"))
    .header(header::RETRY_AFTER, HeaderValue::from(wait))
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "Wrong email or password",
    )
}

/// Register a customer account.
#[utoipa::path(post, path = "/api/v1/users", tag = "identity",
    request_body = Registration,
    responses(
        (status = 201, description = "Registered", body = User),
        (status = 409, description = "The email is already registered", body = Problem),
        (status = 422, description = "A field is invalid", body = Problem),
    ))]
async fn register(
    State(state): State<AppState>,
    Json(input): Json<Registration>,
) -> ApiResult<Response> {
    let user = input.validate()?;
    let hash = crypto::hash_password(user.password.clone())
        .await
        .map_err(ApiError::internal)?;
    let stored = state.repository.create_user(&user, &hash).await?;
    audit(&state.audit, Event::UserRegistered, &stored.id, &[]).await;
    let location = format!("/api/v1/users/{}", stored.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(stored.to_api()),
    )
        .into_response())
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "identity",
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No valid access token", body = Problem),
    ))]
async fn me(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<axum::Json<User>> {
    let claims = authenticate(&state, &headers).await?;
    let user = state
        .repository
        .user_by_id(&claims.sub)
        .await?
        .ok_or_else(|| ApiError::not_found("the token's subject is not a user"))?;
    Ok(axum::Json(user.to_api()))
}

/// Change the signed-in user's password (ends their browser sessions).
#[utoipa::path(put, path = "/api/v1/users/me/password", tag = "identity",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "No valid token, or the current password is wrong", body = Problem),
        (status = 422, description = "The new password is invalid", body = Problem),
        (status = 429, description = "Too many failed attempts", body = Problem),
    ))]
async fn change_password(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Json(input): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    let claims = authenticate(&state, &headers).await?;
    validate_password("new_password", &input.new_password)?;
    let user = state
        .repository
        .user_by_id(&claims.sub)
        .await?
        .ok_or_else(|| ApiError::not_found("the token's subject is not a user"))?;
    match login::check_credentials(&state, &user.email, &input.current_password, &address).await {
        Ok(_) => {}
        Err(LoginFailure::Throttled(wait)) => return Err(throttled(wait)),
        Err(LoginFailure::Invalid) => {
            return Err(invalid_credentials()
                .field("current_password")
                .detail("the current password is wrong"))
        }
        Err(LoginFailure::Internal(error)) => return Err(error),
    }
    let hash = crypto::hash_password(input.new_password)
        .await
        .map_err(ApiError::internal)?;
    state.repository.set_password(&user.id, &hash).await?;
    state.repository.delete_user_sessions(&user.id).await?;
    audit(
        &state.audit,
        Event::PasswordChanged,
        &user.id,
        &[("address", &address)],
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Every user (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "identity",
    responses(
        (status = 200, description = "The users", body = UserList),
        (status = 401, description = "No valid access token", body = Problem),
        (status = 403, description = "Not an admin", body = Problem),
    ))]
async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<UserList>> {
    require_admin(&state, &headers).await?;
    let items = state
        .repository
        .list_users()
        .await?
        .iter()
        .map(|u| u.to_api())
        .collect();
    Ok(axum::Json(UserList { items }))
}

/// The audit log, newest first, with its whole chain's check (admins; for the admin console).
async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditView>> {
    require_admin(&state, &headers).await?;
    bazaar_kit::audit::admin_view(&state.audit, &query).await
}

/// Sign in with JSON: sets the same session cookie as the login form, under the same
/// brute-force rules.
#[utoipa::path(post, path = "/api/v1/identity/sessions", tag = "identity",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = User),
        (status = 401, description = "Wrong email or password", body = Problem),
        (status = 429, description = "Too many failed attempts", body = Problem),
    ))]
async fn json_login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(input): Json<Credentials>,
) -> ApiResult<Response> {
    match login::check_credentials(&state, &input.email, &input.password, &address).await {
        Ok(user) => {
            let cookie = login::start_session(&state, &user).await?;
            let mut response = axum::Json(user.to_api()).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            Ok(response)
        }
        Err(LoginFailure::Throttled(wait)) => Err(throttled(wait)),
        Err(LoginFailure::Invalid) => Err(invalid_credentials()),
        Err(LoginFailure::Internal(error)) => Err(error),
    }
}

/// Every OAuth client (admin).
#[utoipa::path(get, path = "/api/v1/identity/clients", tag = "identity",
    responses(
        (status = 200, description = "The clients", body = ClientList),
        (status = 403, description = "Not an admin", body = Problem),
    ))]
async fn list_clients(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<ClientList>> {
    require_admin(&state, &headers).await?;
    let items = state
        .repository
        .list_clients()
        .await?
        .iter()
        .map(|c| c.to_api())
        .collect();
    Ok(axum::Json(ClientList { items }))
}

/// Register an OAuth client (admin). A confidential client's secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/identity/clients", tag = "identity",
    request_body = ClientRegistration,
    responses(
        (status = 201, description = "Registered", body = CreatedClient),
        (status = 403, description = "Not an admin", body = Problem),
        (status = 409, description = "The client id is taken", body = Problem),
        (status = 422, description = "A field is invalid", body = Problem),
    ))]
async fn create_client(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(input): Json<ClientRegistration>,
) -> ApiResult<Response> {
    let admin = require_admin(&state, &headers).await?;
    let confidential = input.confidential;
    let mut client = input.validate()?;
    let secret = if confidential {
        let secret = crypto::random_token();
        client.secret_hash = crypto::hash_password(secret.clone())
            .await
            .map_err(ApiError::internal)?;
        Some(secret)
    } else {
        None
    };
    let stored = state.repository.create_client(&client).await?;
    audit(
        &state.audit,
        Event::ClientCreated,
        &admin.sub,
        &[("target", &stored.id)],
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedClient {
            client: stored.to_api(),
            client_secret: secret,
        }),
    )
        .into_response())
}

/// Rotate the signing keys (admin): next → current, current → retired, a new next.
#[utoipa::path(post, path = "/api/v1/identity/keys/rotate", tag = "identity",
    responses(
        (status = 200, description = "Rotated", body = Rotation),
        (status = 403, description = "Not an admin", body = Problem),
    ))]
async fn rotate_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Rotation>> {
    let admin = require_admin(&state, &headers).await?;
    let (current_kid, next_kid, retired_kid) =
        state.signer.rotate().await.map_err(ApiError::internal)?;
    audit(
        &state.audit,
        Event::KeyRotated,
        &admin.sub,
        &[
            ("current_kid", &current_kid),
            ("next_kid", &next_kid),
            ("retired_kid", retired_kid.as_deref().unwrap_or("")),
        ],
    )
    .await;
    Ok(axum::Json(Rotation {
        current_kid,
        next_kid,
        retired_kid,
    }))
}
