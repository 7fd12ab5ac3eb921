//! `/admin/orders`: every order with its state, filtered by status (and user); and
//! `/admin/orders/{id}`: one order's saga steps and history, its payments, its shipment, and
//! the events about it that reached the notifications service.
//!
//! The detail page asks payments and shipping by the order id from the URL, so it still shows
//! them while the orders service is down.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::unavailable;
use super::Admin;
use crate::backend::query_value;
use crate::pages::{render_status, WebQuery};
use crate::AppState;

/// The saga's forward steps, in order (crates/orders/src/saga.rs).
const FORWARD: &[&str] = &[
    "locate",
    "reserve_stock",
    "price",
    "authorize_payment",
    "create_shipment",
    "commit_stock",
    "capture_payment",
    "confirm",
];
/// Its compensation, run when a step before the pivot (create_shipment) says no.
const COMPENSATION: &[&str] = &["void_payment", "release_stock", "cancel"];
/// Statuses the filter offers (the orders service's).
const STATUSES: &[&str] = &["pending", "confirmed", "cancelled"];

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    limit: String,
}

/// `GET /admin/orders`.
pub async fn list(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    WebQuery(query): WebQuery<ListQuery>,
) -> Response {
    let limit = super::number(&query.limit, 50, 1, 200);
    let mut path = format!("/api/v1/admin/orders?limit={limit}");
    if !query.status.is_empty() {
        path.push_str(&format!("&status={}", query_value(&query.status)));
    }
    if !query.user_id.trim().is_empty() {
        path.push_str(&format!("&user_id={}", query_value(query.user_id.trim())));
    }
    let caller = visitor.caller();
    let (chrome, orders) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "orders", &path),
    );
    // A refusal (a bad filter) names the field; unavailability is a notice.
    let (orders_error, filter_error, filter_field) = match &orders {
        Err(error) => match error.problem() {
            Some(problem) => (None, Some(error.message()), problem.field.clone()),
            None => (unavailable(&orders), None, None),
        },
        Ok(_) => (None, None, None),
    };
    let status = if filter_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render_status(
        status,
        "admin/orders.html",
        minijinja::context! {
            chrome,
            section => "orders",
            query,
            limit,
            statuses => STATUSES,
            orders => orders.ok().and_then(|o| o.get("orders").cloned()),
            orders_error,
            filter_error,
            filter_field,
        },
    )
}

/// One saga step as the page shows it.
#[derive(Debug, Serialize, PartialEq)]
struct Step {
    name: &'static str,
    /// `done`, `failed`, `retrying`, `current`, `skipped` or `todo`.
    state: &'static str,
    /// Retries recorded for it.
    retries: usize,
    /// The last recorded detail.
    detail: String,
}

/// The saga's steps with what the order's history says of each. `current` is the order's next
/// step (`done` when finished).
fn steps(order: &Value) -> (Vec<Step>, Vec<Step>) {
    let history: Vec<&Value> = order
        .get("history")
        .and_then(Value::as_array)
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    let current = order.get("step").and_then(Value::as_str).unwrap_or("");
    let status = order.get("status").and_then(Value::as_str).unwrap_or("");
    let compensating = COMPENSATION.contains(&current)
        || history.iter().any(|h| {
            h.get("step")
                .and_then(Value::as_str)
                .is_some_and(|s| COMPENSATION.contains(&s))
        });
    let step = |name: &'static str, compensation: bool| {
        let entries: Vec<&&Value> = history
            .iter()
            .filter(|h| h.get("step").and_then(Value::as_str) == Some(name))
            .collect();
        fn outcome<'a>(h: &&&'a Value) -> &'a str {
            h.get("outcome").and_then(Value::as_str).unwrap_or("")
        }
        let retries = entries.iter().filter(|h| outcome(h) == "retry").count();
        let last = entries.last();
        let state = match last.map(outcome) {
            Some("ok") => "done",
            Some("failed") => "failed",
            _ if name == current && retries > 0 => "retrying",
            _ if name == current => "current",
            // Never needed: the saga finished, or turned to compensation before reaching it.
            _ if current == "done"
                || (!compensation && (compensating || status == "cancelled")) =>
            {
                "skipped"
            }
            _ => "todo",
        };
        Step {
            name,
            state,
            retries,
            detail: last
                .and_then(|h| h.get("detail").and_then(Value::as_str))
                .unwrap_or("")
                .to_owned(),
        }
    };
    let forward = FORWARD.iter().map(|name| step(name, false)).collect();
    let compensation = if compensating {
        COMPENSATION.iter().map(|name| step(name, true)).collect()
    } else {
        Vec::new()
    };
    (forward, compensation)
}

/// `GET /admin/orders/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    Path(id): Path<String>,
) -> Response {
    let caller = visitor.caller();
    let order_path = format!("/api/v1/orders/{}", query_value(&id));
    let payments_path = format!("/api/v1/payments?order_id={}", query_value(&id));
    let shipments_path = format!("/api/v1/shipments?order_id={}", query_value(&id));
    let (chrome, order, payments, shipments) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "orders", &order_path),
        state.backend.get(&caller, "payments", &payments_path),
        state.backend.get(&caller, "shipping", &shipments_path),
    );
    let order_missing = order
        .as_ref()
        .err()
        .and_then(|e| e.status())
        .is_some_and(|s| s == 404);
    let orders_error = if order_missing {
        None
    } else {
        unavailable(&order)
    };
    let order = order.ok();
    // The emails written for this order are the events notifications consumed about it; they
    // are found by the order's user, so only once the order is known.
    let user_id = order
        .as_ref()
        .and_then(|o| o.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (emails, notifications_error) = match &user_id {
        Some(user) => {
            let path = format!(
                "/api/v1/admin/notifications?user_id={}&limit=100",
                query_value(user)
            );
            let mail = state.backend.get(&caller, "notifications", &path).await;
            let error = unavailable(&mail);
            let emails: Vec<Value> = mail
                .ok()
                .and_then(|m| m.get("items").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.get("order_id").and_then(Value::as_str) == Some(id.as_str()))
                .collect();
            (Some(emails), error)
        }
        None => (None, None),
    };
    let (forward, compensation) = order.as_ref().map(steps).unwrap_or_default();
    render_status(
        if order_missing {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        },
        "admin/order.html",
        minijinja::context! {
            chrome,
            section => "orders",
            id,
            order,
            order_missing,
            orders_error,
            forward,
            compensation,
            payments => payments.as_ref().ok().and_then(|p| p.get("payments").cloned()),
            payments_error => unavailable(&payments),
            shipments => shipments.as_ref().ok().and_then(|s| s.get("shipments").cloned()),
            shipping_error => unavailable(&shipments),
            emails,
            notifications_error,
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn states(steps: &[Step]) -> Vec<(&str, &str)> {
        steps.iter().map(|s| (s.name, s.state)).collect()
    }

    #[test]
    fn a_pending_order_shows_done_retrying_and_todo_steps() {
        let order = json!({
            "status": "pending",
            "step": "authorize_payment",
            "history": [
                {"step": "placed", "outcome": "ok", "detail": ""},
                {"step": "locate", "outcome": "ok", "detail": ""},
                {"step": "reserve_stock", "outcome": "ok", "detail": ""},
                {"step": "price", "outcome": "ok", "detail": ""},
                {"step": "authorize_payment", "outcome": "retry", "detail": "payments is unreachable"},
                {"step": "authorize_payment", "outcome": "retry", "detail": "payments timed out"},
            ]
        });
        let (forward, compensation) = steps(&order);
        assert_eq!(
            states(&forward)[..5],
            [
                ("locate", "done"),
                ("reserve_stock", "done"),
                ("price", "done"),
                ("authorize_payment", "retrying"),
                ("create_shipment", "todo"),
            ]
        );
        assert_eq!(forward[3].retries, 2);
        assert_eq!(forward[3].detail, "payments timed out");
        assert!(compensation.is_empty());
    }

    #[test]
    fn a_declined_order_shows_the_failure_and_its_compensation() {
        let order = json!({
            "status": "cancelled",
            "step": "done",
            "history": [
                {"step": "locate", "outcome": "ok", "detail": ""},
                {"step": "reserve_stock", "outcome": "ok", "detail": ""},
                {"step": "price", "outcome": "ok", "detail": ""},
                {"step": "authorize_payment", "outcome": "failed", "detail": "card declined"},
                {"step": "release_stock", "outcome": "ok", "detail": ""},
                {"step": "cancel", "outcome": "ok", "detail": "card declined"},
            ]
        });
        let (forward, compensation) = steps(&order);
        assert_eq!(forward[3].state, "failed");
        assert_eq!(forward[4].state, "skipped");
        // Nothing was authorized, so there was nothing to void.
        assert_eq!(
            states(&compensation),
            [
                ("void_payment", "skipped"),
                ("release_stock", "done"),
                ("cancel", "done")
            ]
        );
    }
}
