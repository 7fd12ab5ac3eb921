//! The developer portal: sign up, choose a plan, create and revoke API keys, see usage against
//! quota, read the API docs and try a call.

use axum::Router;

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
];

pub fn routes() -> Router<AppState> {
    Router::new()
}
