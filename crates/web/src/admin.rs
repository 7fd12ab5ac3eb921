//! The admin console (operators): topology, per-service metrics, orders and sagas, catalog and
//! inventory management, users, the audit log, and chaos controls. Admin-only: every page needs
//! a signed-in user with the `admin` role, and every service re-checks the token itself.
//!
//! Code map:
//! - [`topology`]: `/admin`, every service and instance from the registry, and the picture of
//!   who calls whom (the declared dependency table lives there);
//! - [`services`]: `/admin/services/{name}`, one service's traffic over the last minute;
//! - [`metrics`]: the [`MetricsSampler`] those numbers come from, and their math;
//! - [`orders`]: `/admin/orders` and one order's saga, payments, shipment and events;
//! - [`catalog`]: `/admin/catalog`, products and stock, with the admin writes;
//! - [`people`]: `/admin/users`, `/admin/audit`, `/admin/chaos`.

mod catalog;
mod metrics;
mod orders;
mod people;
mod services;
mod topology;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use metrics::MetricsSampler;

use crate::backend::{BackendError, BackendResult};
use crate::pages::PageError;
use crate::visitor::Visitor;
use crate::AppState;

/// This module's templates, by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "admin/layout.html",
        include_str!("../templates/admin/layout.html"),
    ),
    (
        "admin/overview.html",
        include_str!("../templates/admin/overview.html"),
    ),
    (
        "admin/service.html",
        include_str!("../templates/admin/service.html"),
    ),
    (
        "admin/orders.html",
        include_str!("../templates/admin/orders.html"),
    ),
    (
        "admin/order.html",
        include_str!("../templates/admin/order.html"),
    ),
    (
        "admin/catalog.html",
        include_str!("../templates/admin/catalog.html"),
    ),
    (
        "admin/product.html",
        include_str!("../templates/admin/product.html"),
    ),
    (
        "admin/users.html",
        include_str!("../templates/admin/users.html"),
    ),
    (
        "admin/audit.html",
        include_str!("../templates/admin/audit.html"),
    ),
    (
        "admin/chaos.html",
        include_str!("../templates/admin/chaos.html"),
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(topology::overview))
        .route("/admin/services/{name}", get(services::page))
        .route("/admin/orders", get(orders::list))
        .route("/admin/orders/{id}", get(orders::detail))
        .route("/admin/catalog", get(catalog::list))
        .route("/admin/catalog/products", post(catalog::create))
        .route(
            "/admin/catalog/products/{id}",
            get(catalog::product).post(catalog::update),
        )
        .route(
            "/admin/catalog/products/{id}/adjustments",
            post(catalog::adjust),
        )
        .route("/admin/users", get(people::users))
        .route("/admin/audit", get(people::audit))
        .route("/admin/chaos", get(people::chaos))
}

/// A request from a signed-in admin: handlers of the console take this instead of a
/// [`Visitor`]. Anyone else is answered before the handler runs: a redirect to sign in, or a
/// 403 page. The services check the token again; this only spares a non-admin a page of
/// refusals.
pub struct Admin(pub Visitor);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let visitor = Visitor::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if let Some(signin) = visitor.signin_redirect() {
            return Err(signin);
        }
        if !visitor.is_admin() {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "The admin console is for operators: your account does not have the admin role.",
            )
            .with_chrome(&visitor.chrome_with_count(state, 0))
            .into_response());
        }
        Ok(Admin(visitor))
    }
}

/// A number from a query string: `default` when absent or not a number, else kept within
/// `min..=max` (links are typed by hand, and a page beats an error for a bad one).
fn number(text: &str, default: u32, min: u32, max: u32) -> u32 {
    text.trim()
        .parse::<u32>()
        .map_or(default, |n| n.clamp(min, max))
}

/// What a page shows instead of a part whose service did not answer.
fn unavailable<T>(result: &BackendResult<T>) -> Option<String> {
    result.as_ref().err().map(BackendError::message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_numbers_fall_back_and_stay_in_range() {
        assert_eq!(super::number("", 50, 1, 200), 50);
        assert_eq!(super::number("abc", 50, 1, 200), 50);
        assert_eq!(super::number(" 20 ", 50, 1, 200), 20);
        assert_eq!(super::number("0", 50, 1, 200), 1);
        assert_eq!(super::number("9999", 50, 1, 200), 200);
    }
}
