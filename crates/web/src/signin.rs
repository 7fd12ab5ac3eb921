//! Signing in and out through the identity provider, as an OpenID Connect relying party: the
//! authorization code flow with PKCE (S256), `state` and `nonce`, the code exchanged
//! server-side (the tokens stay in the web service's session store), refresh with rotation,
//! and sign-out that revokes the refresh token and ends the identity provider's session too.
//!
//! Also the registration page: identity offers registration as an API only, so the form lives
//! here and posts to it, then sends the new customer to sign in.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bazaar_kit::storage::now_ms;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::{query_value, Caller};
use crate::pages::{render, render_status, PageError, WebForm, WebQuery};
use crate::sessions::{random_token, PendingSignin, SignedIn};
use crate::visitor::{cookie_value, set_cookie, Visitor, CART_COOKIE, SESSION_COOKIE};
use crate::AppState;

/// Only local paths may be returned to after signing in (no open redirect).
pub fn safe_return_to(candidate: Option<&str>) -> String {
    match candidate {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.contains(['\r', '\n']) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A redirect to the sign-in start, coming back to `return_to` afterwards.
pub fn redirect_to_signin(return_to: &str) -> Response {
    Redirect::to(&format!("/signin?return_to={}", query_value(return_to))).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SigninQuery {
    return_to: Option<String>,
    login_hint: Option<String>,
}

/// `GET /signin`: starts the authorization code flow.
pub async fn signin(
    State(state): State<AppState>,
    WebQuery(query): WebQuery<SigninQuery>,
) -> Result<Response, PageError> {
    let code_verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()));
    let pending = PendingSignin {
        state: random_token(),
        code_verifier,
        nonce: random_token(),
        return_to: safe_return_to(query.return_to.as_deref()),
    };
    state.sessions.start_signin(&pending).await?;
    let mut url = format!(
        "{issuer}/oauth2/authorize?response_type=code&client_id={client}&redirect_uri={redirect}\
         &scope={scope}&state={state}&nonce={nonce}&code_challenge={challenge}\
         &code_challenge_method=S256",
        issuer = state.config.issuer,
        client = query_value(&state.config.client_id),
        redirect = query_value(&state.redirect_uri()),
        scope = query_value("openid profile email offline_access"),
        state = pending.state,
        nonce = pending.nonce,
    );
    if let Some(hint) = query.login_hint.filter(|h| !h.is_empty()) {
        url.push_str(&format!("&login_hint={}", query_value(&hint)));
    }
    Ok(Redirect::to(&url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    expires_in: Option<i64>,
}

/// `GET /auth/callback`: the identity provider's answer. Exchanges the code, checks the ID
/// token's nonce, opens a session, and merges the anonymous cart into the user's.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    WebQuery(query): WebQuery<CallbackQuery>,
) -> Result<Response, PageError> {
    if let Some(error) = query.error {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "Sign-in did not complete",
            query.error_description.unwrap_or(error),
        ));
    }
    let refused = |why: &str| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "Sign-in did not complete",
            format!("{why} Please sign in again."),
        )
    };
    let (Some(code), Some(state_param)) = (query.code, query.state) else {
        return Err(refused("The identity provider's answer was incomplete."));
    };
    let Some(pending) = state.sessions.take_signin(&state_param).await? else {
        return Err(refused(
            "This sign-in link has expired or was already used.",
        ));
    };
    let redirect_uri = state.redirect_uri();
    let answer = token_request(
        &state,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("client_id", &state.config.client_id),
            ("code_verifier", &pending.code_verifier),
        ],
    )
    .await
    .ok_or_else(|| refused("The identity provider did not accept the sign-in."))?;
    let id_token = answer
        .id_token
        .as_deref()
        .ok_or_else(|| refused("The identity provider sent no ID token."))?;
    if !state.id_token_matches(id_token, &pending.nonce).await {
        return Err(refused(
            "The identity provider's ID token did not check out.",
        ));
    }
    let user = signed_in(&state, &answer)
        .await
        .ok_or_else(|| refused("The access token did not check out."))?;
    let session_id = state.sessions.create(&user).await?;

    // The anonymous cart joins the user's; a failure here must not block signing in (the lines
    // stay in the anonymous cart, which is merged at the next sign-in).
    if let Some(anonymous) = cookie_value(&headers, CART_COOKIE) {
        let body = serde_json::json!({ "session_id": anonymous });
        if let Err(error) = state
            .backend
            .call(
                &Caller::user(&user.access_token),
                "cart",
                http::Method::POST,
                "/api/v1/cart/merge",
                Some(&body),
            )
            .await
        {
            tracing::warn!(%error, "merging the anonymous cart at sign-in failed");
        }
    }

    let mut response = Redirect::to(&pending.return_to).into_response();
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            SESSION_COOKIE,
            &session_id,
            state.config.session_ttl_secs,
        ),
    );
    // A new anonymous cart for after sign-out: the old one was merged.
    cookies.append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            CART_COOKIE,
            &uuid::Uuid::new_v4().to_string(),
            365 * 24 * 3600,
        ),
    );
    Ok(response)
}

/// Calls identity's token endpoint; `None` when it refuses or cannot be reached.
async fn token_request(state: &AppState, form: &[(&str, &str)]) -> Option<TokenAnswer> {
    let response = state
        .identity
        .post_form("identity", "/oauth2/token", form, Default::default())
        .await;
    match response {
        Ok(response) => response.json().await.ok(),
        Err(error) => {
            tracing::warn!(%error, "token request failed");
            None
        }
    }
}

/// The session's user, from a token answer whose access token verifies.
async fn signed_in(state: &AppState, answer: &TokenAnswer) -> Option<SignedIn> {
    let claims = state.verifier.verify(&answer.access_token).await.ok()?;
    Some(SignedIn {
        user_id: claims.sub.clone(),
        email: claims.email.clone().unwrap_or_else(|| claims.sub.clone()),
        roles: claims.roles.clone(),
        access_token: answer.access_token.clone(),
        refresh_token: answer.refresh_token.clone(),
        access_expires_at_ms: now_ms() + answer.expires_in.unwrap_or(60) * 1000,
    })
}

/// Renews the session's access token with its refresh token (rotation: the new refresh token
/// replaces the old). Serialised, so two pages loading at once do not both present the same
/// refresh token (which identity would take for a replay). `None`: the user must sign in again.
pub async fn refresh(state: &AppState, session_id: &str, user: &SignedIn) -> Option<SignedIn> {
    let _one_at_a_time = state.refreshing.lock().await;
    // Another request may have refreshed while this one waited.
    if let Ok(Some(current)) = state.sessions.find(session_id).await {
        if current.access_token != user.access_token {
            return Some(current);
        }
    }
    let refresh_token = user.refresh_token.as_deref()?;
    let answer = token_request(
        state,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &state.config.client_id),
        ],
    )
    .await;
    let Some(answer) = answer else {
        if let Err(error) = state.sessions.delete(session_id).await {
            tracing::warn!(%error, "ending a session whose refresh failed");
        }
        return None;
    };
    let renewed = signed_in(state, &answer).await?;
    let refresh_token = renewed.refresh_token.as_deref().or(Some(refresh_token));
    state
        .sessions
        .update_tokens(
            session_id,
            &renewed.access_token,
            refresh_token,
            renewed.access_expires_at_ms,
        )
        .await
        .ok()?;
    Some(SignedIn {
        refresh_token: refresh_token.map(str::to_owned),
        ..renewed
    })
}

/// `POST /signout`: ends the web session and revokes its refresh token, then hands the same
/// POST (307 keeps method and body, `return_to=/`) to identity's `/logout`, which ends the
/// single sign-on session so the next sign-in asks for the password again.
pub async fn signout(
    State(state): State<AppState>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    if let Some(session_id) = &visitor.session_id {
        if let Some(refresh_token) = state.sessions.delete(session_id).await? {
            let revoked = state
                .identity
                .post_form(
                    "identity",
                    "/oauth2/revoke",
                    &[
                        ("token", &refresh_token),
                        ("token_type_hint", "refresh_token"),
                        ("client_id", &state.config.client_id),
                    ],
                    Default::default(),
                )
                .await;
            if let Err(error) = revoked {
                tracing::warn!(%error, "revoking a refresh token at sign-out failed");
            }
        }
    }
    let mut response = (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("/logout"))],
    )
        .into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(response)
}

#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub struct RegistrationForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// `GET /account/register`: the registration form.
pub async fn register_page(State(state): State<AppState>, visitor: Visitor) -> Response {
    let chrome = visitor.chrome(&state).await;
    render(
        "register.html",
        minijinja::context! { chrome, form => RegistrationForm::default() },
    )
}

/// `POST /account/register`: creates the account at identity, then signs in.
pub async fn register(
    State(state): State<AppState>,
    visitor: Visitor,
    WebForm(form): WebForm<RegistrationForm>,
) -> Response {
    let created = state
        .backend
        .call(
            &Caller::anonymous(),
            "identity",
            http::Method::POST,
            "/api/v1/users",
            Some(&form),
        )
        .await;
    match created {
        Ok(_) => Redirect::to(&format!(
            "/signin?return_to=%2F&login_hint={}",
            query_value(&form.email)
        ))
        .into_response(),
        Err(error) => {
            let chrome = visitor.chrome(&state).await;
            let field = error.problem().and_then(|p| p.field.clone());
            let status = if error.problem().is_some() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            render_status(
                status,
                "register.html",
                minijinja::context! {
                    chrome,
                    form => RegistrationForm { password: String::new(), ..form },
                    error => error.message(),
                    field,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_return_to(Some("/cart?x=1")), "/cart?x=1");
        assert_eq!(safe_return_to(Some("//evil.example/")), "/");
        assert_eq!(safe_return_to(Some("/\\evil.example")), "/");
        assert_eq!(safe_return_to(Some("https://evil.example/")), "/");
        assert_eq!(safe_return_to(None), "/");
    }
}
