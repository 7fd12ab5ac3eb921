//! Who is behind a browser request: the cookies the web service sets, the signed-in user they
//! lead to (with an access token refreshed when it is about to expire), the anonymous cart
//! session, and the chosen currency. Handlers take a [`Visitor`] and never read cookies.
//!
//! Cookies (all `HttpOnly; SameSite=Lax; Path=/`, `Secure` when the public URL is https):
//! - `bazaar_web_session`: the session id (see [`crate::sessions`]);
//! - `bazaar_cart`: a UUID naming the anonymous cart, set on the first visit;
//! - `bazaar_currency`: the currency prices are shown and charged in.
//!
//! Writes are protected from cross-site forgery by `SameSite=Lax` (the cookies are not sent on
//! a cross-site POST) and by refusing a POST whose `Origin` is not the public URL's.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bazaar_kit::storage::now_ms;
use cookie::{Cookie, SameSite};

use crate::backend::Caller;
use crate::pages::{Chrome, PageError};
use crate::sessions::SignedIn;
use crate::AppState;

pub const SESSION_COOKIE: &str = "bazaar_web_session";
pub const CART_COOKIE: &str = "bazaar_cart";
pub const CURRENCY_COOKIE: &str = "bazaar_currency";

/// Refresh an access token this long before it expires, so it never dies during a page.
const REFRESH_MARGIN_MS: i64 = 30_000;

/// The value of cookie `name` in the request.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value for one of our cookies (`max_age_secs` 0 deletes it).
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let cookie = Cookie::build((name.to_owned(), value.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.secure_cookies())
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The anonymous cart session chosen for a request that arrived without one.
#[derive(Debug, Clone)]
struct NewCartSession(String);

/// Middleware: gives every browser an anonymous cart session on its first visit, and refuses a
/// cross-origin write.
pub async fn browser_guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let same = origin
                .to_str()
                .is_ok_and(|origin| origin.eq_ignore_ascii_case(state.public_origin()));
            if !same {
                return PageError::new(
                    StatusCode::FORBIDDEN,
                    "Not allowed",
                    "This form was sent from another site, so it was refused.",
                )
                .into_response();
            }
        }
    }
    let existing =
        cookie_value(request.headers(), CART_COOKIE).filter(|v| uuid::Uuid::parse_str(v).is_ok());
    let fresh = existing.is_none().then(|| uuid::Uuid::new_v4().to_string());
    if let Some(fresh) = &fresh {
        request
            .extensions_mut()
            .insert(NewCartSession(fresh.clone()));
    }
    let mut response = next.run(request).await;
    if let Some(fresh) = fresh {
        // A year: an anonymous cart should survive a browser restart.
        let cookie = set_cookie(&state, CART_COOKIE, &fresh, 365 * 24 * 3600);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The browser behind a request.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The session cookie's value, when it leads to a session.
    pub session_id: Option<String>,
    pub user: Option<SignedIn>,
    /// The anonymous cart session (also kept while signed in, for the merge at sign-in).
    pub cart_session: String,
    pub currency: String,
    /// Path and query of this request (where to come back to).
    pub path: String,
}

impl Visitor {
    /// How backend calls identify this visitor.
    pub fn caller(&self) -> Caller {
        match &self.user {
            Some(user) => Caller::user(&user.access_token),
            None => Caller {
                token: None,
                cart_session: Some(self.cart_session.clone()),
            },
        }
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(SignedIn::is_admin)
    }

    /// The page chrome, with the cart's size (0 when the cart service cannot say).
    pub async fn chrome(&self, state: &AppState) -> Chrome {
        let cart_count = state
            .backend
            .get(&self.caller(), "cart", "/api/v1/cart")
            .await
            .ok()
            .and_then(|cart| cart.get("item_count").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        self.chrome_with_count(state, cart_count)
    }

    /// The page chrome without asking the cart.
    pub fn chrome_with_count(&self, state: &AppState, cart_count: u64) -> Chrome {
        Chrome {
            user: self.user.as_ref().map(|u| u.email.clone()),
            is_admin: self.is_admin(),
            cart_count,
            currency: self.currency.clone(),
            currencies: state.config.display_currencies.clone(),
            path: self.path.clone(),
        }
    }

    /// For a page that needs a signed-in user: `None` when there is one, else a redirect to
    /// sign in (and back here afterwards).
    pub fn signin_redirect(&self) -> Option<Response> {
        self.user
            .is_none()
            .then(|| crate::signin::redirect_to_signin(&self.path))
    }
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let cart_session = cookie_value(&parts.headers, CART_COOKIE)
            .filter(|v| uuid::Uuid::parse_str(v).is_ok())
            .or_else(|| {
                parts
                    .extensions
                    .get::<NewCartSession>()
                    .map(|n| n.0.clone())
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let currency = cookie_value(&parts.headers, CURRENCY_COOKIE)
            .filter(|c| state.config.display_currencies.iter().any(|d| d == c))
            .unwrap_or_else(|| state.config.default_currency.clone());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let mut visitor = Visitor {
            session_id: None,
            user: None,
            cart_session,
            currency,
            path,
        };
        let Some(session_id) = cookie_value(&parts.headers, SESSION_COOKIE) else {
            return Ok(visitor);
        };
        let Some(user) = state.sessions.find(&session_id).await? else {
            return Ok(visitor);
        };
        let user = if user.access_expires_at_ms - REFRESH_MARGIN_MS <= now_ms() {
            match crate::signin::refresh(state, &session_id, &user).await {
                Some(user) => user,
                // The refresh token is gone (revoked, expired, reused): signed out.
                None => return Ok(visitor),
            }
        } else {
            user
        };
        visitor.session_id = Some(session_id);
        visitor.user = Some(user);
        Ok(visitor)
    }
}
