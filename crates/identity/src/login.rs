//! The login form, browser sessions and logout.
//!
//! The form is server-rendered HTML that works without JavaScript. A session is a random
//! cookie value (`HttpOnly`, `SameSite=Lax`, `Secure` behind https) of which only the SHA-256
//! is stored, so a database leak does not hand out sessions.
//!
//! CSRF: before login there is no session to tie a token to, so the form uses a double-submit
//! token: a random value both in an `HttpOnly` cookie and in a hidden field, which must match.
//! A cross-site page can make the browser send the cookie but cannot read it to fill the
//! field. Logout needs no token: its effect needs the session cookie, which `SameSite=Lax`
//! keeps off cross-site POSTs.
//!
//! `return_to` must be a relative path (`/...`, not `//host` nor anything with a backslash or
//! a control character), so a crafted link cannot turn the login into an open redirect.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use bazaar_kit::storage::now_ms;
use bazaar_kit::ApiError;
use serde::Deserialize;

use crate::audit::{audit, Event};
use crate::crypto;
use crate::model::{normalize_email, StoredSession, StoredUser};
use crate::throttle;
use crate::AppState;

/// The session cookie.
pub const SESSION_COOKIE: &str = "bazaar_session";
/// The login form's CSRF cookie.
pub const CSRF_COOKIE: &str = "bazaar_csrf";
/// How long a session lasts.
pub const SESSION_TTL_SECS: i64 = 8 * 3600;

/// The client address of a request (see [`throttle::client_address`]).
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(ClientAddress(throttle::client_address(
            peer,
            &parts.headers,
            state.trusted(),
        )))
    }
}

/// The value of cookie `name`, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

pub(crate) fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    max_age: i64,
) -> Option<HeaderValue> {
    let secure = if state.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The session of a request and its user, if it has a live one.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(StoredSession, StoredUser)>, ApiError> {
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = state
        .repository
        .session(&crypto::token_hash(&value))
        .await
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    let user = state
        .repository
        .user_by_id(&session.user_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(user.map(|user| (session, user)))
}

/// Why a password check did not let someone in.
pub enum LoginFailure {
    /// Too many failures: wait this many seconds.
    Throttled(u64),
    /// Wrong email or password (never which of the two).
    Invalid,
    Internal(ApiError),
}

/// Checks credentials under the brute-force rules; counts failures, clears on success, and
/// audits both.
pub async fn check_credentials(
    state: &AppState,
    email: &str,
    password: &str,
    address: &str,
) -> Result<StoredUser, LoginFailure> {
    let email = normalize_email(email);
    let keys = throttle::keys(&email, address);
    match throttle::locked(&state.repository, &keys).await {
        Ok(Some(wait)) => {
            audit(
                &state.audit,
                Event::LoginThrottled,
                &email,
                &[("address", address), ("retry_after", &wait.to_string())],
            )
            .await;
            return Err(LoginFailure::Throttled(wait));
        }
        Ok(None) => {}
        Err(error) => return Err(LoginFailure::Internal(ApiError::internal(error))),
    }
    let user = state
        .repository
        .user_by_email(&email)
        .await
        .map_err(|e| LoginFailure::Internal(ApiError::internal(e)))?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| state.dummy_hash().to_owned());
    let matches = crypto::verify_password(password.to_owned(), hash).await;
    match user {
        Some(user) if matches => {
            throttle::record_success(&state.repository, &email)
                .await
                .map_err(|e| LoginFailure::Internal(ApiError::internal(e)))?;
            audit(
                &state.audit,
                Event::LoginSucceeded,
                &user.id,
                &[("address", address)],
            )
            .await;
            Ok(user)
        }
        _ => {
            throttle::record_failure(&state.repository, &keys)
                .await
                .map_err(|e| LoginFailure::Internal(ApiError::internal(e)))?;
            audit(
                &state.audit,
                Event::LoginFailed,
                &email,
                &[("address", address)],
            )
            .await;
            Err(LoginFailure::Invalid)
        }
    }
}

/// Starts a session for `user`; returns the `Set-Cookie` value.
pub async fn start_session(state: &AppState, user: &StoredUser) -> Result<HeaderValue, ApiError> {
    let value = crypto::random_token();
    let now = now_ms();
    state
        .repository
        .create_session(
            &crypto::token_hash(&value),
            &user.id,
            now,
            now + SESSION_TTL_SECS * 1000,
        )
        .await
        .map_err(ApiError::internal)?;
    set_cookie(state, SESSION_COOKIE, &value, SESSION_TTL_SECS)
        .ok_or_else(|| ApiError::internal("session cookie is not a header value"))
}

/// `return_to` if it is a safe relative path, else `/`.
pub fn safe_return_to(return_to: Option<&str>) -> String {
    match return_to {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// HTML-escapes text for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A minimal page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · bazaar</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin-top:1rem}}input{{width:100%;padding:.4rem;box-sizing:border-box}}\
         button{{margin-top:1.2rem;padding:.5rem 1rem}}.error{{color:#a00}}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title)
    )
}

fn login_form(return_to: &str, csrf: &str, email: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "{error}<form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"return_to\" value=\"{return_to}\">\
             <label for=\"email\">Email</label>\
             <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" \
             required value=\"{email}\">\
             <label for=\"password\">Password</label>\
             <input id=\"password\" name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            csrf = escape(csrf),
            return_to = escape(return_to),
            email = escape(email),
        ),
    )
}

/// Renders the form with a fresh CSRF token (cookie and field).
fn form_response(
    state: &AppState,
    status: StatusCode,
    return_to: &str,
    email: &str,
    error: Option<&str>,
) -> Response {
    let csrf = crypto::random_token();
    let mut response = (status, Html(login_form(return_to, &csrf, email, error))).into_response();
    if let Some(cookie) = set_cookie(state, CSRF_COOKIE, &csrf, 3600) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /login`.
pub async fn login_page(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let return_to = safe_return_to(query.return_to.as_deref());
    form_response(
        &state,
        StatusCode::OK,
        &return_to,
        &login_hint(&return_to),
        None,
    )
}

/// The `login_hint` (OpenID Connect Core §3.1.2.1) of the authorization request this sign-in
/// returns to, which prefills the email (e.g. just after registering); empty when there is none.
fn login_hint(return_to: &str) -> String {
    let Some((path, query)) = return_to.split_once('?') else {
        return String::new();
    };
    if path != "/oauth2/authorize" {
        return String::new();
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "login_hint")
        .map(|(_, value)| value.chars().take(254).collect())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    return_to: Option<String>,
    #[serde(default)]
    csrf: String,
}

/// `POST /login`.
pub async fn login_submit(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return form_response(
            &state,
            StatusCode::BAD_REQUEST,
            "/",
            "",
            Some("The form could not be read; please try again."),
        );
    };
    let return_to = safe_return_to(form.return_to.as_deref());
    let csrf_ok = cookie(&headers, CSRF_COOKIE).is_some_and(|c| {
        !c.is_empty() && crypto::constant_time_eq(c.as_bytes(), form.csrf.as_bytes())
    });
    if !csrf_ok {
        return form_response(
            &state,
            StatusCode::FORBIDDEN,
            &return_to,
            &form.email,
            Some("Your sign-in form expired; please try again."),
        );
    }
    match check_credentials(&state, &form.email, &form.password, &address).await {
        Ok(user) => match start_session(&state, &user).await {
            Ok(cookie) => {
                let mut response = (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, return_to.as_str())],
                )
                    .into_response();
                response.headers_mut().append(header::SET_COOKIE, cookie);
                no_store(&mut response);
                response
            }
            Err(error) => error.into_response(),
        },
        Err(LoginFailure::Invalid) => form_response(
            &state,
            StatusCode::OK,
            &return_to,
            &form.email,
            Some("Wrong email or password."),
        ),
        Err(LoginFailure::Throttled(wait)) => {
            let mut response = form_response(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                &return_to,
                &form.email,
                Some(&format!(
                    "Too many failed sign-ins. Try again in {wait} seconds."
                )),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            response
        }
        Err(LoginFailure::Internal(error)) => error.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    return_to: Option<String>,
}

/// `POST /logout`: ends the session (if any) and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form =
        serde_urlencoded::from_bytes::<LogoutForm>(&body).unwrap_or(LogoutForm { return_to: None });
    if let Some(value) = cookie(&headers, SESSION_COOKIE) {
        let hash = crypto::token_hash(&value);
        let ended = async {
            let session = state.repository.session(&hash).await?;
            state.repository.delete_session(&hash).await?;
            Ok::<_, crate::repository::RepoError>(session)
        }
        .await;
        match ended {
            Ok(Some(session)) => audit(&state.audit, Event::Logout, &session.user_id, &[]).await,
            Ok(None) => {}
            Err(error) => return ApiError::internal(error).into_response(),
        }
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            safe_return_to(form.return_to.as_deref()).as_str(),
        )],
    )
        .into_response();
    if let Some(cookie) = set_cookie(&state, SESSION_COOKIE, "", 0) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_hint_of_the_authorization_request_prefills_the_email() {
        assert_eq!(
            login_hint("/oauth2/authorize?client_id=storefront&login_hint=a%40b.test&state=x"),
            "a@b.test"
        );
        assert_eq!(login_hint("/oauth2/authorize?client_id=storefront"), "");
        assert_eq!(login_hint("/elsewhere?login_hint=a%40b.test"), "");
        assert_eq!(login_hint("/"), "");
    }

    #[test]
    fn return_to_allows_only_relative_paths() {
        assert_eq!(
            safe_return_to(Some("/oauth2/authorize?x=1")),
            "/oauth2/authorize?x=1"
        );
        assert_eq!(safe_return_to(Some("/account")), "/account");
        for bad in [
            "https://evil.test/",
            "//evil.test/",
            "/\\evil.test",
            "javascript:alert(1)",
            "/\tx",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
