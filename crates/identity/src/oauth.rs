//! The OAuth 2.0 / OpenID Connect endpoints: discovery, JWKS, authorize, token, revoke,
//! introspect, userinfo.
//!
//! Errors of the token, revocation and introspection endpoints are RFC 6749 JSON
//! (`{error, error_description}`), not problem documents, because that is what OAuth client
//! libraries parse. The authorization endpoint shows an HTML error page, and never redirects,
//! when the client is unknown or the `redirect_uri` is not one of its registered URIs (exact
//! string match, except that a loopback URI registered without a port accepts any port, RFC
//! 8252 §7.3, see `redirect_uri_registered`): redirecting there would make us an open
//! redirector. Once the redirect URI is trusted, errors go back to it as `error` parameters.
//! Configured clients are first-party and get implicit consent; clients registered through the
//! admin API are third-party, and the signed-in user is shown a consent form (CSRF-protected
//! like the login form) each time.
//!
//! Authorization codes are single-use: redeeming marks the code used in the same statement
//! that checks it was not; a second redemption answers `invalid_grant` and revokes the token
//! family the first one started (RFC 6749 §4.1.2: the code was probably stolen).
//!
//! Refresh tokens rotate on every use. Presenting a token that was already rotated means two
//! parties hold it, so the whole family (every refresh and access token of that grant) is
//! revoked. Exception: within `refresh_reuse_grace_secs` after the rotation, the reuse is
//! taken for a concurrent retry by the legitimate client (two tabs refreshing at once, or a
//! retry after a lost response) and only answered `invalid_grant`, without revoking: revoking
//! there would log real users out on a network hiccup, and an attacker gains nothing from it
//! because the rotated token itself is still refused. The trade-off: a thief who races the
//! legitimate client within that window is not detected by that one attempt (a later one is).
//!
//! Every grant answers its tokens only after [`crate::issuance`] has committed what it issued:
//! the access token's record, the refresh token if any, and the `token.issued` audit record,
//! together, in a transaction shared with the other grants waiting at that moment. The
//! authorization code and refresh grants first decide their own state in their own transaction
//! (the code is spent, the refresh token rotated), because that decision, not the issuance, is
//! what a concurrent replay races against.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use bazaar_kit::storage::now_ms;
use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::{self, audit, Event};
use crate::crypto;
use crate::issuance::Issued;
use crate::login::{self, page};
use crate::model::{StoredClient, StoredCode, StoredUser};
use crate::repository::{IssuedAccess, IssuedRefresh, RotateOutcome};
use crate::tokens::{AccessClaims, IdClaims, ACCESS_TOKEN_TYP};
use crate::{AppState, DEFAULT_AUDIENCE};

/// An RFC 6749 error answer.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    fn request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    fn server(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "oauth endpoint failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"bazaar\""),
            );
        }
        response
    }
}

impl From<crate::repository::RepoError> for OAuthError {
    fn from(error: crate::repository::RepoError) -> Self {
        OAuthError::server(error)
    }
}

/// Parses `application/x-www-form-urlencoded` parameters; a repeated parameter is an error
/// (RFC 6749 §3.1), and an empty value counts as absent.
fn parse_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for (key, value) in form_urlencoded::parse(raw) {
        if value.is_empty() {
            continue;
        }
        if params
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(format!("parameter {key} is repeated"));
        }
    }
    Ok(params)
}

fn no_store_json(value: Value) -> Response {
    let mut response = Json(value).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn seconds(ms: i64) -> i64 {
    ms / 1000
}

fn ttl_ms(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

fn scopes_of(scope: &str) -> Vec<&str> {
    scope.split(' ').filter(|s| !s.is_empty()).collect()
}

fn has_scope(scope: &str, wanted: &str) -> bool {
    scopes_of(scope).contains(&wanted)
}

// ---------------------------------------------------------------------------------------------
// discovery and keys

/// `GET /.well-known/openid-configuration`.
pub async fn discovery(State(state): State<AppState>) -> Response {
    let issuer = state.issuer();
    let mut response = Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "userinfo_endpoint": format!("{issuer}/oauth2/userinfo"),
        "jwks_uri": format!("{issuer}/oauth2/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email", "name", "roles"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /oauth2/jwks.json`. Short cache: a rotation publishes the next key before it signs,
/// so a minute-old copy still knows every key that signs.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.signer.jwks().await {
        Ok(jwks) => {
            let mut response = Json(jwks).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
            response
        }
        Err(error) => bazaar_kit::ApiError::internal(error).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// authorize

fn error_page(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        Html(page(
            "Sign-in request refused",
            &format!(
                "<p class=\"error\" role=\"alert\">{}</p><p>Go back to the application and try again.</p>",
                login::escape(message)
            ),
        )),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether `requested` is one of the client's `registered` redirect URIs.
///
/// Exact string match, with one exception from RFC 8252 §7.3 (native apps): a registered
/// `http` URI on a loopback IP literal (`127.0.0.1` or `[::1]`) written *without a port*
/// accepts any port, because a native app binds whatever ephemeral port is free when it signs
/// in. Scheme, host, path and query must still be equal, and the requested URI must already be
/// in canonical form, so what the browser is sent to is exactly what was asked for. A loopback
/// URI registered with a port (the storefront's) stays an exact match, as does everything else.
fn redirect_uri_registered(registered: &[String], requested: &str) -> bool {
    registered
        .iter()
        .any(|r| r == requested || loopback_any_port(r, requested))
}

fn loopback_any_port(registered: &str, requested: &str) -> bool {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use url::Host;
    let (Ok(reg), Ok(req)) = (url::Url::parse(registered), url::Url::parse(requested)) else {
        return false;
    };
    let loopback = match reg.host() {
        Some(Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
        _ => false,
    };
    let plain =
        |u: &url::Url| u.scheme() == "http" && u.username().is_empty() && u.password().is_none();
    loopback
        && plain(&reg)
        && plain(&req)
        && !has_explicit_port(registered)
        && req.as_str() == requested
        && req.host() == reg.host()
        && req.path() == reg.path()
        && req.query() == reg.query()
        && req.fragment().is_none()
}

/// Whether the authority of an absolute URI names a port (`url` drops a default `:80`, so
/// the text is looked at: `http://127.0.0.1:80/cb` is a registration of port 80, not "any").
fn has_explicit_port(uri: &str) -> bool {
    let authority = uri.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    // A colon after the last `]` (or in a host without brackets) starts a port.
    authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'))
}

/// A redirect to the (trusted) redirect URI with `params` added to its query.
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "the redirect uri is not a URL");
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
    }
    let mut response = (StatusCode::FOUND, [(header::LOCATION, url.as_str())]).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /oauth2/authorize`.
pub async fn authorize(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    authorize_request(&state, &headers, uri.query().unwrap_or_default(), None).await
}

/// `POST /oauth2/authorize`: the consent form's answer. It carries the original request,
/// which is validated again from scratch, so the form cannot widen what was asked.
pub async fn consent(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(params) = parse_params(&body) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "the consent form could not be read",
        );
    };
    let csrf_ok = login::cookie(&headers, login::CSRF_COOKIE).is_some_and(|cookie| {
        params
            .get("csrf")
            .is_some_and(|field| crypto::constant_time_eq(cookie.as_bytes(), field.as_bytes()))
    });
    if !csrf_ok {
        return error_page(
            StatusCode::FORBIDDEN,
            "the consent form expired; start the sign-in again",
        );
    }
    let Some(request) = params.get("request") else {
        return error_page(StatusCode::BAD_REQUEST, "the consent form lost its request");
    };
    let allow = params.get("decision").map(String::as_str) == Some("allow");
    authorize_request(&state, &headers, request, Some(allow)).await
}

fn consent_page(state: &AppState, client: &StoredClient, scope: &str, raw_query: &str) -> Response {
    let csrf = crypto::random_token();
    let scopes: String = scopes_of(scope)
        .iter()
        .map(|s| format!("<li>{}</li>", login::escape(s)))
        .collect();
    let body = format!(
        "<p><strong>{name}</strong> asks to access your bazaar account with:</p><ul>{scopes}</ul>\
         <form method=\"post\" action=\"/oauth2/authorize\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        name = login::escape(&client.name),
        csrf = login::escape(&csrf),
        request = login::escape(raw_query),
    );
    let mut response = Html(page("Allow access?", &body)).into_response();
    if let Some(cookie) = login::set_cookie(state, login::CSRF_COOKIE, &csrf, 3600) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The authorization request, from a GET (`consent` = None) or the consent form.
async fn authorize_request(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: &str,
    consent: Option<bool>,
) -> Response {
    let params = match parse_params(raw_query.as_bytes()) {
        Ok(params) => params,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, &message),
    };
    let get = |k: &str| params.get(k).map(String::as_str);

    // 1. The client and its redirect URI: until both are trusted, nothing redirects.
    let Some(client_id) = get("client_id") else {
        return error_page(StatusCode::BAD_REQUEST, "client_id is missing");
    };
    let client = match state.repository.client(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "unknown client"),
        Err(error) => return bazaar_kit::ApiError::internal(error).into_response(),
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing");
    };
    if !redirect_uri_registered(&client.redirect_uris, redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not registered for this client",
        );
    }

    // 2. From here on, errors go back to the client.
    let client_state = get("state");
    let issuer = state.issuer().to_owned();
    let fail = |error: &str, description: &str| {
        let mut out = vec![("error", error), ("error_description", description)];
        if let Some(s) = client_state {
            out.push(("state", s));
        }
        out.push(("iss", issuer.as_str()));
        redirect_with(redirect_uri, &out)
    };
    if get("response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    if !client.allows_grant("authorization_code") {
        return fail(
            "unauthorized_client",
            "this client may not use the authorization code flow",
        );
    }
    match get("code_challenge_method") {
        Some("S256") => {}
        Some(_) => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            )
        }
        None => {
            return fail(
                "invalid_request",
                "PKCE is required: send code_challenge and code_challenge_method=S256",
            )
        }
    }
    let Some(challenge) = get("code_challenge").filter(|c| crypto::valid_verifier(c)) else {
        return fail(
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        );
    };
    let scope = get("scope").unwrap_or("openid");
    let requested = scopes_of(scope);
    if let Some(unknown) = requested
        .iter()
        .find(|s| !client.scopes.iter().any(|c| c == *s))
    {
        return fail(
            "invalid_scope",
            &format!("scope {unknown} is not allowed for this client"),
        );
    }
    let scope = requested.join(" ");

    // 3. Who is signing in.
    let session = match login::current_session(state, headers).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    let Some((session, user)) = session else {
        if get("prompt") == Some("none") {
            return fail("login_required", "the user is not signed in");
        }
        let return_to = format!("/oauth2/authorize?{raw_query}");
        let location = format!(
            "/login?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", &return_to)
                .finish()
        );
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    };

    // 4. Consent is implicit for first-party clients (every configured client); a client
    // registered through the admin API is third-party and the user is asked, every time.
    if !client.first_party {
        match consent {
            None => return consent_page(state, &client, &scope, raw_query),
            Some(false) => return fail("access_denied", "the user denied the request"),
            Some(true) => {}
        }
    }
    // The code is stored hashed and lives `code_ttl_secs`.
    let code = crypto::random_token();
    let now = now_ms();
    let stored = StoredCode {
        client_id: client.id.clone(),
        user_id: user.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        scope,
        nonce: get("nonce").map(str::to_owned),
        code_challenge: challenge.to_owned(),
        auth_time: session.auth_time,
        expires_at: now + ttl_ms(state.config.code_ttl_secs),
        used_at: None,
        family_id: None,
    };
    if let Err(error) = state
        .repository
        .insert_code(&crypto::token_hash(&code), &stored)
        .await
    {
        return bazaar_kit::ApiError::internal(error).into_response();
    }
    audit(
        &state.audit,
        Event::CodeIssued,
        &user.id,
        &[("client_id", &client.id)],
    )
    .await;
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = client_state {
        out.push(("state", s));
    }
    out.push(("iss", issuer.as_str()));
    redirect_with(redirect_uri, &out)
}

// ---------------------------------------------------------------------------------------------
// client authentication

fn decode_form_component(raw: &str) -> String {
    form_urlencoded::parse(format!("v={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Who is calling: `client_secret_basic`, `client_secret_post`, or a public client by
/// `client_id` alone (`none`).
async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Arc<StoredClient>, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        });
    let (client_id, secret) = match basic {
        Some(encoded) => {
            if params.contains_key("client_secret") {
                return Err(OAuthError::request(
                    "use one client authentication method, not two",
                ));
            }
            let decoded = crypto::b64_decode(encoded)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| OAuthError::client("malformed basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::client("malformed basic credentials"))?;
            let (id, secret) = (decode_form_component(id), decode_form_component(secret));
            if params.get("client_id").is_some_and(|p| *p != id) {
                return Err(OAuthError::request(
                    "client_id differs from the authenticated client",
                ));
            }
            (id, Some(secret))
        }
        None => {
            let id = params
                .get("client_id")
                .cloned()
                .ok_or_else(|| OAuthError::client("client authentication is required"))?;
            (id, params.get("client_secret").cloned())
        }
    };
    let client = state.clients().get(&state.repository, &client_id).await?;
    match (client, secret) {
        (Some(client), None) if client.is_public() => Ok(client),
        (Some(client), Some(secret)) if !client.is_public() => {
            if state
                .secrets()
                .verified(&client.id, &client.secret_hash, &secret)
            {
                return Ok(client);
            }
            if crypto::verify_password(secret.clone(), client.secret_hash.clone()).await {
                state
                    .secrets()
                    .remember(&client.id, &client.secret_hash, &secret);
                Ok(client)
            } else {
                Err(OAuthError::client("client authentication failed"))
            }
        }
        (None, Some(secret)) => {
            // Same cost as a real check, so probing for client ids learns nothing from timing.
            let _ = crypto::verify_password(secret, state.dummy_hash().to_owned()).await;
            Err(OAuthError::client("client authentication failed"))
        }
        _ => Err(OAuthError::client("client authentication failed")),
    }
}

// ---------------------------------------------------------------------------------------------
// token

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// `POST /oauth2/token`.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, OAuthError> {
    let params = parse_params(&body).map_err(OAuthError::request)?;
    let client = authenticate_client(&state, &headers, &params).await?;
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::request("grant_type is missing"))?;
    if !client.allows_grant(grant_type) {
        return Err(match grant_type.as_str() {
            "authorization_code" | "refresh_token" | "client_credentials" => OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                format!("this client may not use {grant_type}"),
            ),
            _ => OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant type {grant_type} is not supported"),
            ),
        });
    }
    let answer = match grant_type.as_str() {
        "authorization_code" => authorization_code_grant(&state, &client, &params).await?,
        "refresh_token" => refresh_grant(&state, &client, &params).await?,
        "client_credentials" => client_credentials_grant(&state, &client, &params).await?,
        other => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant type {other} is not supported"),
            ))
        }
    };
    let value = serde_json::to_value(answer).map_err(OAuthError::server)?;
    Ok(no_store_json(value))
}

async fn authorization_code_grant(
    state: &AppState,
    client: &StoredClient,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::request("code is missing"))?;
    let code_hash = crypto::token_hash(code);
    let stored = state
        .repository
        .code(&code_hash)
        .await?
        .filter(|c| c.client_id == client.id)
        .ok_or_else(|| OAuthError::grant("the code is invalid"))?;
    if stored.used_at.is_some() {
        return Err(code_reused(state, &stored).await);
    }
    if stored.expires_at <= now_ms() {
        return Err(OAuthError::grant("the code has expired"));
    }
    if params.get("redirect_uri") != Some(&stored.redirect_uri) {
        return Err(OAuthError::grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    // PKCE is checked before the code is spent, so a party without the verifier cannot burn a
    // stolen code (and cannot guess 256 bits of verifier either).
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| OAuthError::grant("code_verifier is missing"))?;
    if !crypto::valid_verifier(verifier) || !crypto::pkce_matches(verifier, &stored.code_challenge)
    {
        return Err(OAuthError::grant("code_verifier does not match"));
    }
    let family_id = uuid::Uuid::new_v4().to_string();
    let redeemed = state
        .repository
        .redeem_code(&code_hash, &family_id, &client.id, &stored.user_id)
        .await?;
    if !redeemed {
        // Lost a race with another redemption: that is a reuse too.
        let stored = state.repository.code(&code_hash).await?.unwrap_or(stored);
        return Err(code_reused(state, &stored).await);
    }
    let user = state
        .repository
        .user_by_id(&stored.user_id)
        .await?
        .ok_or_else(|| OAuthError::grant("the user no longer exists"))?;
    issue_user_tokens(
        state,
        client,
        &user,
        &stored.scope,
        stored.auth_time,
        stored.nonce.as_deref(),
        &family_id,
        has_scope(&stored.scope, "offline_access") && client.allows_grant("refresh_token"),
    )
    .await
}

async fn code_reused(state: &AppState, stored: &StoredCode) -> OAuthError {
    if let Some(family) = &stored.family_id {
        if let Err(error) = state.repository.revoke_family(family).await {
            return OAuthError::server(error);
        }
    }
    audit(
        &state.audit,
        Event::CodeReused,
        &stored.client_id,
        &[
            ("user_id", &stored.user_id),
            ("family_id", stored.family_id.as_deref().unwrap_or("")),
        ],
    )
    .await;
    OAuthError::grant("the code was already used")
}

#[allow(clippy::too_many_arguments)]
async fn issue_user_tokens(
    state: &AppState,
    client: &StoredClient,
    user: &StoredUser,
    scope: &str,
    auth_time: i64,
    nonce: Option<&str>,
    family_id: &str,
    with_refresh: bool,
) -> Result<TokenResponse, OAuthError> {
    let (access_token, access) = sign_access(
        state,
        &user.id,
        DEFAULT_AUDIENCE,
        &client.id,
        scope,
        user.roles.clone(),
        Some(user.email.clone()),
        Some(family_id),
    )
    .await?;
    let id_token = if has_scope(scope, "openid") {
        let now = seconds(now_ms());
        let claims = IdClaims {
            iss: state.issuer().to_owned(),
            sub: user.id.clone(),
            aud: client.id.clone(),
            exp: now + i64::try_from(state.config.id_token_ttl_secs).unwrap_or(300),
            iat: now,
            auth_time: seconds(auth_time),
            nonce: nonce.map(str::to_owned),
            at_hash: Some(crypto::at_hash(&access_token)),
            email: has_scope(scope, "email").then(|| user.email.clone()),
            name: has_scope(scope, "profile").then(|| user.name.clone()),
        };
        Some(
            state
                .signer
                .sign("JWT", &claims)
                .await
                .map_err(OAuthError::server)?,
        )
    } else {
        None
    };
    let (refresh_token, refresh) = if with_refresh {
        let token = crypto::random_token();
        let record = IssuedRefresh {
            token_hash: crypto::token_hash(&token),
            family_id: family_id.to_owned(),
            client_id: client.id.clone(),
            user_id: user.id.clone(),
            scope: scope.to_owned(),
            auth_time,
            expires_at: now_ms() + ttl_ms(state.config.refresh_token_ttl_secs),
        };
        (Some(token), Some(record))
    } else {
        (None, None)
    };
    let audit = audit::event(
        Event::TokenIssued,
        &user.id,
        &[
            ("client_id", &client.id),
            ("family_id", family_id),
            ("refresh", if with_refresh { "yes" } else { "no" }),
            ("jti", &access.jti),
        ],
    );
    record_issued(
        state,
        Issued {
            access,
            refresh,
            audit,
        },
    )
    .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: state.config.access_token_ttl_secs,
        scope: scope.to_owned(),
        refresh_token,
        id_token,
    })
}

/// Signs an access token; returns it with the record that must be committed (through
/// [`crate::issuance`]) before it is answered.
#[allow(clippy::too_many_arguments)]
async fn sign_access(
    state: &AppState,
    subject: &str,
    audience: &str,
    client_id: &str,
    scope: &str,
    roles: Vec<String>,
    email: Option<String>,
    family_id: Option<&str>,
) -> Result<(String, IssuedAccess), OAuthError> {
    let now_ms = now_ms();
    let now = seconds(now_ms);
    let ttl = i64::try_from(state.config.access_token_ttl_secs).unwrap_or(300);
    let claims = AccessClaims {
        iss: state.issuer().to_owned(),
        sub: subject.to_owned(),
        aud: audience.to_owned(),
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        roles,
        email,
    };
    let token = state
        .signer
        .sign(ACCESS_TOKEN_TYP, &claims)
        .await
        .map_err(OAuthError::server)?;
    let record = IssuedAccess {
        jti: claims.jti,
        family_id: family_id.map(str::to_owned),
        client_id: claims.client_id,
        subject: claims.sub,
        expires_at: claims.exp * 1000,
    };
    Ok((token, record))
}

/// Commits what a grant issued, with its audit record; the grant answers only after this.
async fn record_issued(state: &AppState, issued: Issued) -> Result<(), OAuthError> {
    state
        .issuance()
        .record(issued)
        .await
        .map_err(OAuthError::server)
}

async fn refresh_grant(
    state: &AppState,
    client: &StoredClient,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::request("refresh_token is missing"))?;
    let hash = crypto::token_hash(presented);
    // A token of another client is simply invalid, with no side effect on its family.
    match state.repository.refresh(&hash).await? {
        Some(token) if token.client_id == client.id => {}
        _ => return Err(OAuthError::grant("the refresh token is invalid")),
    }
    let next = crypto::random_token();
    let next_expires = now_ms() + ttl_ms(state.config.refresh_token_ttl_secs);
    let outcome = state
        .repository
        .rotate_refresh(&hash, &crypto::token_hash(&next), next_expires)
        .await?;
    let token = match outcome {
        RotateOutcome::Rotated(token) => token,
        RotateOutcome::Unknown | RotateOutcome::Dead => {
            return Err(OAuthError::grant("the refresh token is invalid"))
        }
        RotateOutcome::AlreadyRotated { token, at } => {
            let grace = ttl_ms(state.config.refresh_reuse_grace_secs);
            if now_ms() - at <= grace {
                audit(
                    &state.audit,
                    Event::RefreshRetried,
                    &token.user_id,
                    &[("client_id", &client.id), ("family_id", &token.family_id)],
                )
                .await;
            } else {
                state.repository.revoke_family(&token.family_id).await?;
                audit(
                    &state.audit,
                    Event::RefreshReused,
                    &token.user_id,
                    &[("client_id", &client.id), ("family_id", &token.family_id)],
                )
                .await;
            }
            return Err(OAuthError::grant("the refresh token was already used"));
        }
    };
    // An optional narrower scope (RFC 6749 §6); never a wider one.
    let scope = match params.get("scope") {
        Some(requested) => {
            let granted = scopes_of(&token.scope);
            if let Some(extra) = scopes_of(requested).iter().find(|s| !granted.contains(s)) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope {extra} was not granted"),
                ));
            }
            scopes_of(requested).join(" ")
        }
        None => token.scope.clone(),
    };
    let user = state
        .repository
        .user_by_id(&token.user_id)
        .await?
        .ok_or_else(|| OAuthError::grant("the user no longer exists"))?;
    let mut answer = issue_user_tokens(
        state,
        client,
        &user,
        &scope,
        token.auth_time,
        None,
        &token.family_id,
        false,
    )
    .await?;
    answer.refresh_token = Some(next);
    Ok(answer)
}

async fn client_credentials_grant(
    state: &AppState,
    client: &StoredClient,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
    if client.is_public() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "public clients cannot use client_credentials",
        ));
    }
    let audience = params
        .get("audience")
        .map(String::as_str)
        .unwrap_or(DEFAULT_AUDIENCE);
    if !client.audiences.iter().any(|a| a == audience) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!("audience {audience} is not allowed for this client"),
        ));
    }
    let scope = match params.get("scope") {
        Some(requested) => {
            let requested = scopes_of(requested);
            if let Some(extra) = requested
                .iter()
                .find(|s| !client.scopes.iter().any(|c| c == *s))
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope {extra} is not allowed for this client"),
                ));
            }
            requested.join(" ")
        }
        None => client.scopes.join(" "),
    };
    let (access_token, access) = sign_access(
        state,
        &client.id,
        audience,
        &client.id,
        &scope,
        client.roles.clone(),
        None,
        None,
    )
    .await?;
    let audit = audit::event(
        Event::TokenIssued,
        &client.id,
        &[
            ("grant", "client_credentials"),
            ("audience", audience),
            ("jti", &access.jti),
        ],
    );
    record_issued(
        state,
        Issued {
            access,
            refresh: None,
            audit,
        },
    )
    .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: state.config.access_token_ttl_secs,
        scope,
        refresh_token: None,
        id_token: None,
    })
}

// ---------------------------------------------------------------------------------------------
// revoke, introspect, userinfo

/// `POST /oauth2/revoke` (RFC 7009): always 200 once the client is authenticated, whether or
/// not the token was known (so it cannot be used to probe for tokens).
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, OAuthError> {
    let params = parse_params(&body).map_err(OAuthError::request)?;
    let client = authenticate_client(&state, &headers, &params).await?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::request("token is missing"))?;
    if let Some(refresh) = state.repository.refresh(&crypto::token_hash(token)).await? {
        if refresh.client_id == client.id {
            // Revoking a refresh token ends the whole grant, access tokens included (§2.1).
            state.repository.revoke_family(&refresh.family_id).await?;
            audit(
                &state.audit,
                Event::TokenRevoked,
                &client.id,
                &[("kind", "refresh_token"), ("family_id", &refresh.family_id)],
            )
            .await;
        }
    } else if let Ok(claims) = state.signer.verify_access(token).await {
        if claims.client_id == client.id {
            state.repository.revoke_access_token(&claims.jti).await?;
            audit(
                &state.audit,
                Event::TokenRevoked,
                &client.id,
                &[("kind", "access_token"), ("jti", &claims.jti)],
            )
            .await;
        }
    }
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /oauth2/introspect` (RFC 7662): for confidential clients allowed to introspect.
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, OAuthError> {
    let params = parse_params(&body).map_err(OAuthError::request)?;
    let client = authenticate_client(&state, &headers, &params).await?;
    if client.is_public() {
        return Err(OAuthError::client(
            "introspection needs an authenticated confidential client",
        ));
    }
    if !client.may_introspect {
        return Err(OAuthError::new(
            StatusCode::FORBIDDEN,
            "unauthorized_client",
            "this client may not introspect tokens",
        ));
    }
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::request("token is missing"))?;
    let inactive = || no_store_json(json!({"active": false}));
    if let Some(refresh) = state.repository.refresh(&crypto::token_hash(token)).await? {
        let live = refresh.rotated_at.is_none()
            && !refresh.family_revoked
            && refresh.expires_at > now_ms();
        if !live {
            return Ok(inactive());
        }
        return Ok(no_store_json(json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": refresh.client_id,
            "sub": refresh.user_id,
            "scope": refresh.scope,
            "exp": seconds(refresh.expires_at),
            "iss": state.issuer(),
        })));
    }
    let Ok(claims) = state.signer.verify_access(token).await else {
        return Ok(inactive());
    };
    if state.repository.access_token_revoked(&claims.jti).await? {
        return Ok(inactive());
    }
    Ok(no_store_json(json!({
        "active": true,
        "token_type": "Bearer",
        "client_id": claims.client_id,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "scope": claims.scope,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "roles": claims.roles,
        "username": claims.email,
    })))
}

fn bearer_error(description: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_token", "error_description": description})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "Bearer realm=\"bazaar\", error=\"invalid_token\", error_description=\"{description}\""
    )) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `GET /oauth2/userinfo` (OpenID Connect Core §5.3).
pub async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = crate::api::bearer_token(&headers) else {
        return bearer_error("a bearer access token is required");
    };
    let claims = match state.signer.verify_access(token).await {
        Ok(claims) => claims,
        Err(_) => return bearer_error("the access token is invalid or expired"),
    };
    match state.repository.access_token_revoked(&claims.jti).await {
        Ok(false) => {}
        Ok(true) => return bearer_error("the access token is revoked"),
        Err(error) => return bazaar_kit::ApiError::internal(error).into_response(),
    }
    if !claims.has_scope("openid") {
        let mut response = bearer_error("the token lacks the openid scope");
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let user = match state.repository.user_by_id(&claims.sub).await {
        Ok(Some(user)) => user,
        Ok(None) => return bearer_error("the token's subject is not a user"),
        Err(error) => return bazaar_kit::ApiError::internal(error).into_response(),
    };
    let mut info = json!({"sub": user.id, "roles": user.roles});
    if claims.has_scope("email") {
        info["email"] = json!(user.email);
        info["email_verified"] = json!(false);
    }
    if claims.has_scope("profile") {
        info["name"] = json!(user.name);
    }
    no_store_json(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registrations_without_a_port_accept_any_port_and_nothing_else() {
        let cli = ["http://127.0.0.1/callback".to_owned()];
        assert!(redirect_uri_registered(&cli, "http://127.0.0.1/callback"));
        assert!(redirect_uri_registered(
            &cli,
            "http://127.0.0.1:49152/callback"
        ));
        for refused in [
            "http://127.0.0.1:49152/callback/",
            "http://127.0.0.1:49152/other",
            "http://127.0.0.1:49152/callback?x=1",
            "http://127.0.0.1:49152/callback#f",
            "http://127.0.0.1:49152/x/../callback",
            "http://localhost:49152/callback",
            "http://[::1]:49152/callback",
            "https://127.0.0.1:49152/callback",
            "http://user@127.0.0.1:49152/callback",
        ] {
            assert!(!redirect_uri_registered(&cli, refused), "{refused}");
        }
        let v6 = ["http://[::1]/cb".to_owned()];
        assert!(redirect_uri_registered(&v6, "http://[::1]:5000/cb"));
        assert!(!redirect_uri_registered(&v6, "http://127.0.0.1:5000/cb"));

        // With a port (even the default one), a loopback URI is an exact match.
        for registered in [
            "http://127.0.0.1:8080/auth/callback",
            "http://127.0.0.1:80/cb",
        ] {
            let list = [registered.to_owned()];
            assert!(redirect_uri_registered(&list, registered));
            let other = registered.replace(":8080", ":8081").replace(":80/", ":81/");
            assert!(!redirect_uri_registered(&list, &other), "{other}");
        }
        // Not loopback: exact only.
        let remote = ["http://shop.test/cb".to_owned()];
        assert!(!redirect_uri_registered(&remote, "http://shop.test:81/cb"));
        assert!(has_explicit_port("http://[::1]:80/x"));
        assert!(!has_explicit_port("http://[::1]/x"));
    }
}
