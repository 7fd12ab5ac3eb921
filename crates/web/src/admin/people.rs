//! The console's smaller pages: `/admin/users` (identity's user list), `/admin/audit` (each
//! auditing service's newest records and its whole chain's check, from
//! `GET /api/v1/admin/audit`), and `/admin/chaos` (the chaos hooks that exist today, and how to
//! stop an instance by hand).

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::topology::services_health;
use super::unavailable;
use super::Admin;
use crate::pages::{render, WebQuery};
use crate::AppState;

/// The services that keep an audit log (`bazaar_kit::audit::AuditLog`).
pub const AUDITED: &[&str] = &["identity", "catalog", "developer", "inventory"];

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct UsersQuery {
    /// Part of an email or name.
    #[serde(default)]
    q: String,
}

/// `GET /admin/users`.
pub async fn users(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    WebQuery(query): WebQuery<UsersQuery>,
) -> Response {
    let caller = visitor.caller();
    let (chrome, users) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "identity", "/api/v1/users"),
    );
    let identity_error = unavailable(&users);
    let all: Vec<Value> = users
        .ok()
        .and_then(|u| u.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let total = all.len();
    let needle = query.q.trim().to_lowercase();
    let matches = |user: &Value| {
        needle.is_empty()
            || ["email", "name"].iter().any(|key| {
                user.get(key)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.to_lowercase().contains(&needle))
            })
    };
    let shown: Vec<Value> = all.into_iter().filter(|u| matches(u)).collect();
    render(
        "admin/users.html",
        minijinja::context! {
            chrome,
            section => "users",
            query,
            users => shown,
            total,
            identity_error,
        },
    )
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AuditQuery {
    /// Newest records per service (1 to 500).
    #[serde(default)]
    limit: String,
}

/// One service's part of the audit page.
#[derive(Debug, Serialize)]
struct AuditPart {
    service: &'static str,
    view: Option<Value>,
    error: Option<String>,
}

/// `GET /admin/audit`.
pub async fn audit(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    WebQuery(query): WebQuery<AuditQuery>,
) -> Response {
    let limit = super::number(&query.limit, 20, 1, 500);
    let caller = visitor.caller();
    let path = format!("{}?limit={limit}", bazaar_kit::audit::ADMIN_AUDIT_PATH);
    let (chrome, views) = tokio::join!(
        visitor.chrome(&state),
        futures::future::join_all(
            AUDITED
                .iter()
                .map(|service| state.backend.get(&caller, service, &path))
        ),
    );
    let parts: Vec<AuditPart> = AUDITED
        .iter()
        .zip(views)
        .map(|(service, view)| AuditPart {
            service,
            error: view.as_ref().err().map(|e| e.message()),
            view: view.ok(),
        })
        .collect();
    let broken = parts
        .iter()
        .filter(|p| {
            p.view
                .as_ref()
                .and_then(|v| v.pointer("/chain/ok"))
                .and_then(Value::as_bool)
                == Some(false)
        })
        .count();
    render(
        "admin/audit.html",
        minijinja::context! {
            chrome,
            section => "audit",
            parts,
            limit,
            broken,
        },
    )
}

/// A chaos hook that exists in the code today.
#[derive(Debug, Serialize)]
struct Hook {
    service: &'static str,
    setting: &'static str,
    environment: &'static str,
    values: &'static str,
    effect: &'static str,
    example: &'static str,
}

/// The hooks (crates/orders/src/lib.rs `crash_after_step`, crates/payments/src/lib.rs
/// `crash_after_processor_call`). Both are read at start-up only.
const HOOKS: &[Hook] = &[
    Hook {
        service: "orders",
        setting: "orders.crash_after_step",
        environment: "BAZAAR_ORDERS__CRASH_AFTER_STEP",
        values: "locate, reserve_stock, price, authorize_payment, create_shipment, commit_stock, \
                 capture_payment, confirm",
        effect: "The orders process exits (status 87) right after that saga step's remote call \
                 succeeded and before the step is recorded, once per data directory (a marker \
                 file crashed-<step> remembers it). When it restarts, the saga resumes the step \
                 and the idempotency keys make sure nothing is done twice.",
        example: "BAZAAR_ORDERS__CRASH_AFTER_STEP=create_shipment bazaar up",
    },
    Hook {
        service: "payments",
        setting: "payments.crash_after_processor_call",
        environment: "BAZAAR_PAYMENTS__CRASH_AFTER_PROCESSOR_CALL",
        values: "authorize, capture, void, refund",
        effect: "The payments process exits (status 86) right after the card processor \
                 answered that call and before the answer is stored; the retry with the same \
                 idempotency key proves the card is not charged twice. Every such call crashes \
                 while it is set, so use it with one order and then restart without it.",
        example: "BAZAAR_PAYMENTS__CRASH_AFTER_PROCESSOR_CALL=authorize bazaar up",
    },
];

/// `GET /admin/chaos`.
pub async fn chaos(State(state): State<AppState>, Admin(visitor): Admin) -> Response {
    let chrome = visitor.chrome(&state).await;
    let instances: Vec<_> = services_health(&state)
        .into_iter()
        .flat_map(|s| s.instances)
        .collect();
    render(
        "admin/chaos.html",
        minijinja::context! {
            chrome,
            section => "chaos",
            hooks => HOOKS,
            instances,
        },
    )
}
