//! The developer portal: what the public, partner and commercial APIs are and the plans keys are
//! issued on; API keys (created and shown once, revoked); usage against quota; the API
//! documentation rendered from the gateway's merged OpenAPI document; and "try a call".
//!
//! Pages (all under `/developers`, behind the gateway's `/` route to the web service):
//! - `GET /developers`: the APIs, the plans (public), a call to action;
//! - `GET|POST /developers/keys`, `POST /developers/keys/{id}/revoke`: the signed-in user's keys;
//! - `GET /developers/usage`: each key's usage against its plan's quotas;
//! - `GET /developers/docs`: the merged OpenAPI document as a page;
//! - `GET /developers/try`: a form whose script calls the commercial feed from the browser.
//!
//! Secrets: a created key is in the developer service's answer to the POST and is rendered into
//! that POST's response page only (no redirect carrying it, no session, no log). The "try a call"
//! request goes from the browser straight to the gateway, so the key's plan limits and usage
//! counting apply exactly as for any client; the web service never sees that key.

mod docs;
mod quota;

pub use docs::{curl_example, from_openapi, ApiDocs, Tier};
pub use quota::{percent_used, Meter, Plan, PlanView};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::backend::{query_value, BackendError, BackendResult, Caller};
use crate::pages::{render, render_status, WebForm, WebQuery};
use crate::visitor::Visitor;
use crate::AppState;

/// This module's templates, by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "portal/layout.html",
        include_str!("../templates/portal/layout.html"),
    ),
    (
        "portal/home.html",
        include_str!("../templates/portal/home.html"),
    ),
    (
        "portal/keys.html",
        include_str!("../templates/portal/keys.html"),
    ),
    (
        "portal/usage.html",
        include_str!("../templates/portal/usage.html"),
    ),
    (
        "portal/docs.html",
        include_str!("../templates/portal/docs.html"),
    ),
    (
        "portal/try.html",
        include_str!("../templates/portal/try.html"),
    ),
    (
        "portal/try_form.html",
        include_str!("../templates/portal/try_form.html"),
    ),
];

/// The developer service (plans, keys, usage).
const DEVELOPER: &str = "developer";
/// The gateway, for its merged OpenAPI document.
const GATEWAY: &str = "gateway";
const PLANS_PATH: &str = "/api/v1/developer/plans";
const KEYS_PATH: &str = "/api/v1/developer/keys";
const USAGE_PATH: &str = "/api/v1/developer/usage";
/// The commercial feed: the only paths "try a call" sends a key to.
pub const FEED_PREFIX: &str = "/api/v1/feed/";
/// What "try a call" calls unless told otherwise.
pub const DEFAULT_TRY_PATH: &str = "/api/v1/feed/products?per_page=2";
/// Longest path "try a call" accepts.
const MAX_TRY_PATH: usize = 2_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/developers", get(home))
        .route("/developers/keys", get(keys_page).post(create_key))
        .route("/developers/keys/{id}/revoke", post(revoke_key))
        .route("/developers/usage", get(usage))
        .route("/developers/docs", get(api_docs))
        .route("/developers/try", get(try_page))
}

/// What a page shows instead of a part whose service did not answer.
fn unavailable<T>(result: &BackendResult<T>) -> Option<String> {
    result.as_ref().err().map(BackendError::message)
}

/// The gateway's public base URL, which every example and call uses.
fn public_url(state: &AppState) -> &str {
    state.config.issuer.trim_end_matches('/')
}

/// `GET /developers`: the APIs, the plans with their limits, and where to start.
async fn home(State(state): State<AppState>, visitor: Visitor) -> Response {
    let anonymous = Caller::anonymous();
    let (chrome, plans) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&anonymous, DEVELOPER, PLANS_PATH),
    );
    let plans_error = unavailable(&plans);
    let plans: Vec<PlanView> = plans
        .map(|list| quota::plans(&list).iter().map(Plan::view).collect())
        .unwrap_or_default();
    render(
        "portal/home.html",
        minijinja::context! {
            chrome,
            section => "home",
            plans,
            plans_error,
            public_url => public_url(&state),
            feed_example => curl_example(
                public_url(&state), "get", "/api/v1/feed/products", Tier::ApiKey, "per_page=2", false,
            ),
            public_example => curl_example(
                public_url(&state), "get", "/api/v1/products", Tier::Public, "per_page=2", false,
            ),
            partner_example => curl_example(
                public_url(&state), "get", "/api/v1/partner/products", Tier::Partner, "per_page=2", false,
            ),
        },
    )
}

/// The key creation form's fields.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    plan: String,
}

#[derive(Debug, Default, Deserialize)]
struct KeysQuery {
    /// The key just revoked (set by the revoke form's redirect).
    revoked: Option<String>,
}

/// What the keys page shows besides the list.
#[derive(Debug, Default)]
struct KeysOutcome {
    /// The developer service's answer to creating a key: holds the key, shown this once.
    created: Option<Value>,
    /// The key id just revoked.
    revoked: Option<String>,
    error: Option<String>,
    /// The form field the error is about.
    field: Option<String>,
    form: KeyForm,
}

/// `GET /developers/keys`: the user's keys, the creation form.
async fn keys_page(
    State(state): State<AppState>,
    visitor: Visitor,
    WebQuery(query): WebQuery<KeysQuery>,
) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let outcome = KeysOutcome {
        revoked: query.revoked.filter(|id| !id.is_empty()),
        ..KeysOutcome::default()
    };
    render_keys(&state, &visitor, StatusCode::OK, outcome).await
}

/// `POST /developers/keys`: creates a key and shows it in this response, once.
async fn create_key(
    State(state): State<AppState>,
    visitor: Visitor,
    WebForm(form): WebForm<KeyForm>,
) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let body = json!({"name": form.name.trim(), "plan": form.plan});
    let created = state
        .backend
        .call(
            &visitor.caller(),
            DEVELOPER,
            Method::POST,
            KEYS_PATH,
            Some(&body),
        )
        .await;
    match created {
        Ok(created) => {
            let outcome = KeysOutcome {
                created: Some(created),
                ..KeysOutcome::default()
            };
            render_keys(&state, &visitor, StatusCode::CREATED, outcome).await
        }
        Err(error) => {
            let status = refusal_status(&error);
            let outcome = KeysOutcome {
                field: error.problem().and_then(|p| p.field.clone()),
                error: Some(error.message()),
                form,
                ..KeysOutcome::default()
            };
            render_keys(&state, &visitor, status, outcome).await
        }
    }
}

/// `POST /developers/keys/{id}/revoke`: revokes the key, then shows the list saying so.
async fn revoke_key(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let path = format!("{KEYS_PATH}/{}", query_value(&id));
    let revoked = state
        .backend
        .call::<()>(&visitor.caller(), DEVELOPER, Method::DELETE, &path, None)
        .await;
    match revoked {
        // Post/redirect/get: a reload does not repeat the revocation, and nothing secret is in
        // the URL (only the key's id).
        Ok(_) => {
            Redirect::to(&format!("/developers/keys?revoked={}", query_value(&id))).into_response()
        }
        Err(error) => {
            let status = refusal_status(&error);
            let outcome = KeysOutcome {
                error: Some(error.message()),
                ..KeysOutcome::default()
            };
            render_keys(&state, &visitor, status, outcome).await
        }
    }
}

/// The status a page answers with when a service refused (its own 4xx) or was unavailable.
fn refusal_status(error: &BackendError) -> StatusCode {
    match error.status() {
        Some(status) => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        None => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn render_keys(
    state: &AppState,
    visitor: &Visitor,
    status: StatusCode,
    outcome: KeysOutcome,
) -> Response {
    let caller = visitor.caller();
    let (chrome, keys, plans) = tokio::join!(
        visitor.chrome(state),
        state.backend.get(&caller, DEVELOPER, KEYS_PATH),
        state.backend.get(&caller, DEVELOPER, PLANS_PATH),
    );
    let keys_error = unavailable(&keys);
    let plans_error = unavailable(&plans);
    let keys: Vec<Value> = keys
        .ok()
        .and_then(|k| k.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    // Plans a developer may choose; the others (partner) are issued by an administrator.
    let is_admin = visitor.is_admin();
    let plans: Vec<PlanView> = plans
        .map(|list| quota::plans(&list))
        .unwrap_or_default()
        .iter()
        .filter(|plan| plan.self_service || is_admin)
        .map(Plan::view)
        .collect();
    let revoked_key = outcome.revoked.as_ref().map(|id| {
        keys.iter()
            .find(|k| k.get("id").and_then(Value::as_str) == Some(id))
            .cloned()
            .unwrap_or_else(|| json!({"id": id}))
    });
    let created = outcome.created;
    let try_key = created
        .as_ref()
        .and_then(|c| c.get("key"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    render_status(
        status,
        "portal/keys.html",
        minijinja::context! {
            chrome,
            section => "keys",
            keys,
            keys_error,
            plans,
            plans_error,
            created,
            revoked_key,
            error => outcome.error,
            field => outcome.field,
            form => outcome.form,
            try_path => DEFAULT_TRY_PATH,
            try_key,
            try_curl => try_curl(public_url(state), DEFAULT_TRY_PATH),
        },
    )
}

/// `GET /developers/usage`: each key's requests today and this month against its plan.
async fn usage(State(state): State<AppState>, visitor: Visitor) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let caller = visitor.caller();
    let (chrome, usage, plans) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, DEVELOPER, USAGE_PATH),
        state.backend.get(&caller, DEVELOPER, PLANS_PATH),
    );
    let usage_error = unavailable(&usage);
    let plans = plans.map(|list| quota::plans(&list)).unwrap_or_default();
    let usage = usage.unwrap_or(Value::Null);
    render(
        "portal/usage.html",
        minijinja::context! {
            chrome,
            section => "usage",
            rows => quota::usage_rows(&usage, &plans),
            day => usage.get("day").cloned(),
            month => usage.get("month").cloned(),
            usage_error,
        },
    )
}

/// `GET /developers/docs`: the gateway's merged OpenAPI document as a page.
async fn api_docs(State(state): State<AppState>, visitor: Visitor) -> Response {
    let anonymous = Caller::anonymous();
    let (chrome, document) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&anonymous, GATEWAY, "/api/openapi.json"),
    );
    let docs_error = document.as_ref().err().map(|_| {
        "The API documentation could not be fetched from the gateway right now. Please try again \
         in a moment."
            .to_owned()
    });
    let docs = document.ok().map(|document| {
        let mut docs = from_openapi(&document, public_url(&state));
        // The gateway's `/` route leads here, and pages publish no OpenAPI document, so the
        // gateway lists this service as missing; that is not something a developer misses.
        docs.unavailable
            .retain(|entry| !entry.starts_with(&format!("{} (answered 404)", crate::NAME)));
        docs
    });
    render(
        "portal/docs.html",
        minijinja::context! {
            chrome,
            section => "docs",
            docs,
            docs_error,
            public_url => public_url(&state),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
struct TryQuery {
    path: Option<String>,
}

/// `GET /developers/try`: the "try a call" form. Its script calls the gateway from the browser;
/// without the script, submitting the form (the key field has no `name`, so the key never leaves
/// the browser) shows the curl command for the chosen path.
async fn try_page(
    State(state): State<AppState>,
    visitor: Visitor,
    WebQuery(query): WebQuery<TryQuery>,
) -> Response {
    let chrome = visitor.chrome(&state).await;
    let (path, error) = match query.path.as_deref() {
        None => (DEFAULT_TRY_PATH.to_owned(), None),
        Some(candidate) => match feed_path(candidate) {
            Ok(path) => (path, None),
            Err(reason) => (DEFAULT_TRY_PATH.to_owned(), Some(reason)),
        },
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render_status(
        status,
        "portal/try.html",
        minijinja::context! {
            chrome,
            section => "try",
            try_curl => try_curl(public_url(&state), &path),
            try_path => path,
            try_error => error,
            try_key => Option::<String>::None,
        },
    )
}

/// The curl command equivalent to "try a call" on `path`.
fn try_curl(public_url: &str, path: &str) -> String {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    curl_example(public_url, "get", path, Tier::ApiKey, query, false)
}

/// Checks a "try a call" path: under the commercial feed, no `.`/`..` segment or encoded dot
/// (which a browser would resolve to somewhere else), only plain path characters, no fragment.
/// The script applies the same rule; this one guards the page that renders the curl command.
pub fn feed_path(candidate: &str) -> Result<String, String> {
    let candidate = candidate.trim();
    if candidate.len() > MAX_TRY_PATH {
        return Err(format!(
            "The path is longer than {MAX_TRY_PATH} characters."
        ));
    }
    let (path, query) = candidate.split_once('?').unwrap_or((candidate, ""));
    let under_feed = path.starts_with(FEED_PREFIX) && path.len() > FEED_PREFIX.len();
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.~/".contains(c));
    let dotted = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    let query_ok = query.chars().all(|c| c.is_ascii_graphic() && c != '#');
    if !under_feed || !plain || dotted || path.contains("//") || !query_ok {
        return Err(format!(
            "Try a path under the commercial feed, such as {DEFAULT_TRY_PATH}."
        ));
    }
    Ok(candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_a_call_accepts_only_plain_paths_under_the_feed() {
        assert_eq!(feed_path(DEFAULT_TRY_PATH).as_deref(), Ok(DEFAULT_TRY_PATH));
        assert!(feed_path("/api/v1/feed/products/kit-0001").is_ok());
        assert!(feed_path(" /api/v1/feed/products?q=lamp&sort=-price ").is_ok());
        for refused in [
            "/api/v1/products",
            "/api/v1/feed/",
            "/api/v1/feedx/products",
            "/api/v1/feed/../admin/usage",
            "/api/v1/feed/./products",
            "/api/v1/feed/%2e%2e/admin",
            "/api/v1/feed//products",
            "/api/v1/feed/products#x",
            "/api/v1/feed/products?q=a b",
            "https://elsewhere.example/api/v1/feed/products",
            "//elsewhere.example/api/v1/feed/products",
        ] {
            assert!(feed_path(refused).is_err(), "{refused} must be refused");
        }
    }

    #[test]
    fn the_try_curl_command_calls_the_gateway_with_the_key_header() {
        assert_eq!(
            try_curl("http://127.0.0.1:8080", DEFAULT_TRY_PATH),
            "curl -H 'x-api-key: YOUR_KEY' 'http://127.0.0.1:8080/api/v1/feed/products?per_page=2'"
        );
    }
}
