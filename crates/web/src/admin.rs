//! The admin console (operators): topology, per-service metrics, orders and sagas, catalog and
//! inventory management, users, the audit log, and chaos controls. Admin-only: every page needs
//! a signed-in user with the `admin` role, and every service re-checks the token itself.

use axum::Router;
use bazaar_discovery::Discovery;

use crate::AppState;

/// Periodic samples of every instance's `/metrics`, from which rates and latency percentiles are
/// computed for the console.
#[derive(Clone)]
pub struct MetricsSampler {
    #[allow(dead_code)]
    discovery: Discovery,
}

impl MetricsSampler {
    pub fn start(discovery: Discovery) -> Self {
        Self { discovery }
    }
}

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
];

pub fn routes() -> Router<AppState> {
    Router::new()
}
