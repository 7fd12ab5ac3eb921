//! The orders REST API: place an order from the cart (idempotent by `Idempotency-Key`), read
//! one's own orders, and the admin and internal listings.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::{AuthError, Caller, RequireAdmin, RequireService};
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::storage::now_ms;
use bazaar_kit::{ApiError, ApiResult};
use bazaar_messaging::NewEvent;
use serde_json::json;
use utoipa::OpenApi;

use crate::model::{
    Address, HistoryEntry, ListQuery, Money, Order, OrderLine, OrderList, OrderQuery, PlaceOrder,
    Placed, SagaState,
};
use crate::remote::StepError;
use crate::repository::{Placement, StoredOrder};
use crate::saga::{record_destination, step};
use crate::{finishes, AppState};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/orders", post(place_order).get(my_orders))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/admin/orders", get(all_orders))
        .route("/internal/v1/orders", get(internal_orders))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar orders", description = "Checkout from the cart and the order's saga."),
    paths(place_order, my_orders, get_order, all_orders),
    components(schemas(PlaceOrder, Placed, Order, OrderList, OrderLine, Address, Money, HistoryEntry, Problem)),
    tags((name = "orders", description = "Orders and checkout"))
)]
struct ApiDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// How long a placement waits for the destination it looks up beside the cart read. Finding it
/// there saves the saga a step, but a slow or frozen shipping service must not hold up placing
/// orders (its calls time out only after seconds): past this, the saga looks it up itself.
const LOCATE_AT_PLACEMENT: std::time::Duration = std::time::Duration::from_millis(100);

fn db(error: sqlx::Error) -> ApiError {
    ApiError::internal(error)
}

/// The idempotency key of a placement: required, printable, at most 128 characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<String> {
    let value = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "a checkout needs an Idempotency-Key header (e.g. a UUID) so a retry never places a second order",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII"))?
        .trim()
        .to_owned();
    if value.is_empty() || value.len() > 128 {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 128 characters",
        ));
    }
    Ok(value)
}

/// The request header a client states preferences in (RFC 7240).
const PREFER: http::HeaderName = http::HeaderName::from_static("prefer");
/// The answer's header naming the preferences that were honoured.
const PREFERENCE_APPLIED: http::HeaderName = http::HeaderName::from_static("preference-applied");

/// The `wait` preference of a `Prefer` header (`Prefer: wait=5`, RFC 7240), in whole seconds,
/// capped at [`OrderQuery::MAX_WAIT_SECONDS`] (a preference is a hint, so more is not an error).
/// Other preferences are ignored; a `wait` that is not a whole number is a 400 naming the header.
fn preferred_wait(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let mut wait = None;
    for value in headers.get_all(PREFER) {
        let value = value
            .to_str()
            .map_err(|_| unreadable_prefer("must be printable ASCII"))?;
        for preference in value.split(',') {
            let Some((name, seconds)) = preference.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let seconds: u64 = seconds
                .trim()
                .trim_matches('"')
                .parse()
                .map_err(|_| unreadable_prefer("`wait` must be a whole number of seconds"))?;
            wait = Some(seconds.min(OrderQuery::MAX_WAIT_SECONDS));
        }
    }
    Ok(wait)
}

/// 400 naming the `Prefer` header: a value that cannot be read, as a `?wait=` that is not a
/// number is.
fn unreadable_prefer(detail: &str) -> ApiError {
    ApiError::bad_request("invalid_header", detail).field("Prefer")
}

/// The answer to a placement: `order` as it stands, where to follow it, and the wait honoured.
fn placement_answer(order: &StoredOrder, status: StatusCode, waited: Option<u64>) -> Response {
    let mut response = (
        status,
        [(
            http::header::LOCATION,
            format!("/api/v1/orders/{}", order.id),
        )],
        axum::Json(placed(order)),
    )
        .into_response();
    if let Some(seconds) = waited {
        if let Ok(value) = http::HeaderValue::from_str(&format!("wait={seconds}")) {
            response.headers_mut().insert(PREFERENCE_APPLIED, value);
        }
    }
    response
}

fn placed(order: &StoredOrder) -> Placed {
    Placed {
        order_id: order.id.clone(),
        status: order.status.clone(),
        status_reason: order.status_reason.clone(),
        updated_at_ms: order.updated_at_ms,
        status_url: format!("/api/v1/orders/{}", order.id),
    }
}

/// Checks out the caller's cart. Answers 202 at once; the saga runs in the background. The
/// same `Idempotency-Key` returns the same order (200) and never places a second one. With
/// `Prefer: wait=N` (RFC 7240, N at most 5) the answer waits up to N seconds for the order to be
/// confirmed or cancelled: 201 with its outcome if it was, 202 with `pending` if not (the
/// status URL then tells the rest), so a client that wants the outcome asks once.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = String, Header, description = "Unique per checkout attempt"),
        ("Prefer" = Option<String>, Header,
            description = "`wait=N`: wait up to N seconds (at most 5) for the outcome")),
    responses(
        (status = 201, description = "Order placed and finished while the request waited \
            (`Prefer: wait`): its status is `confirmed` or `cancelled`", body = Placed),
        (status = 202, description = "Order accepted", body = Placed),
        (status = 200, description = "The order this key already placed", body = Placed),
        (status = 400, description = "Invalid input", body = Problem),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 422, description = "The cart is empty", body = Problem),
        (status = 503, description = "The cart cannot be read now", body = Problem)))]
async fn place_order(
    State(state): State<AppState>,
    Caller(claims): Caller,
    headers: HeaderMap,
    Json(mut input): Json<PlaceOrder>,
) -> ApiResult<Response> {
    if !claims.is_user() {
        return Err(AuthError::Forbidden("orders are placed by signed-in users".into()).into());
    }
    let key = idempotency_key(&headers)?;
    let wait = preferred_wait(&headers)?;
    input.validate()?;
    if let Some(existing) = state
        .repository
        .find_by_key(&claims.sub, &key)
        .await
        .map_err(db)?
    {
        return answer_existing(&state, &claims, existing, wait).await;
    }
    // The destination is looked up while the cart is read (two reads, sent side by side), so
    // the saga can start at the reservation. If it cannot be found now (an unknown postal
    // code, shipping down or slow), the saga's first step looks again and cancels or waits,
    // as it does for any step.
    let (cart, location) = tokio::join!(
        state.remote.cart(&claims.sub),
        tokio::time::timeout(
            LOCATE_AT_PLACEMENT,
            state.remote.locate(&input.shipping_address)
        )
    );
    let location = location.ok().and_then(Result::ok);
    let cart = cart.map_err(|error| match error {
        StepError::Unavailable { reason, .. } => ApiError::unavailable(
            "cart_unavailable",
            format!("your cart cannot be read right now ({reason}); please try again shortly"),
        ),
        StepError::Rejected { detail, .. } => ApiError::unavailable("cart_unavailable", detail),
    })?;
    if cart.lines.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_cart",
            "The cart is empty",
        )
        .field("cart")
        .detail("add products to the cart before checking out"));
    }
    let lines: Vec<OrderLine> = cart
        .lines
        .into_iter()
        .map(|l| OrderLine {
            product_id: l.product_id,
            sku: l.sku,
            name: l.name,
            quantity: l.quantity,
            unit_price: l.unit_price,
            weight_grams: l.weight_grams,
        })
        .collect();
    let line_currency = lines[0].unit_price.currency.clone();
    if lines.iter().any(|l| l.unit_price.currency != line_currency) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "mixed_currencies",
            "The cart mixes currencies",
        )
        .field("cart"));
    }
    let subtotal: i64 = lines
        .iter()
        .map(|l| l.unit_price.amount_minor.saturating_mul(l.quantity))
        .sum();
    let now = now_ms();
    let mut saga = SagaState::default();
    let mut ran = Vec::new();
    let first_step = match location {
        Some(location) => {
            ran.push(HistoryEntry {
                at_ms: now,
                step: step::LOCATE.into(),
                outcome: "ok".into(),
                detail: format!(
                    "{}, found while the order was placed",
                    record_destination(&mut saga, &location)
                ),
            });
            step::RESERVE
        }
        None => step::LOCATE,
    };
    let order = StoredOrder {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: claims.sub.clone(),
        email: claims.email.clone().unwrap_or_default(),
        idempotency_key: key.clone(),
        status: "pending".into(),
        status_reason: format!("in progress: {}", first_step.replace('_', " ")),
        step: first_step.into(),
        currency: input
            .currency
            .clone()
            .unwrap_or_else(|| line_currency.clone()),
        subtotal_minor: subtotal,
        shipping_minor: 0,
        total_minor: subtotal,
        address: input.shipping_address.clone(),
        lines,
        saga,
        card_token: input.card_token.clone(),
        attempts: 0,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let event = NewEvent::new(
        "order.placed",
        &order.id,
        &json!({
            "order_id": order.id,
            "user_id": order.user_id,
            "email": order.email,
            "total": Money::new(order.total_minor, &order.currency),
            "lines": order.lines.iter().map(|l| json!({"product_id": l.product_id, "quantity": l.quantity})).collect::<Vec<_>>(),
        }),
    );
    let (worker, claimed_until_ms) = state.saga.placement_claim();
    let placement = Placement {
        order: order.clone(),
        ran,
        event,
        claim: (worker.to_owned(), claimed_until_ms),
    };
    let inserted = state
        .saga
        .place(placement)
        .await
        .map_err(ApiError::internal)?;
    if !inserted {
        // A concurrent request with the same key won the race: answer with its order.
        let existing = state
            .repository
            .find_by_key(&claims.sub, &key)
            .await
            .map_err(db)?
            .ok_or_else(|| ApiError::internal("order vanished after a key conflict"))?;
        return answer_existing(&state, &claims, existing, wait).await;
    }
    let Some(seconds) = wait.filter(|seconds| *seconds > 0) else {
        let answer = placement_answer(&order, StatusCode::ACCEPTED, wait);
        state.saga.adopt(order);
        return Ok(answer);
    };
    // Watched from before the saga starts, so its finish cannot slip past.
    let watch = state.saga.finishes().watch(&order.id);
    let id = order.id.clone();
    state.saga.adopt(order);
    let order = read_until_finished(
        &state,
        &claims,
        &id,
        Some(&watch),
        tokio::time::Instant::now() + std::time::Duration::from_secs(seconds),
    )
    .await?;
    let status = if order.status == "pending" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok(placement_answer(&order, status, wait))
}

/// The answer (200) to a placement whose key already placed `existing`: the order as it
/// stands, or, asked to wait, once it finishes or the wait passes.
async fn answer_existing(
    state: &AppState,
    claims: &bazaar_auth::Claims,
    existing: StoredOrder,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let order = match wait {
        Some(seconds) => until_finished(state, claims, &existing.id, seconds).await?,
        None => existing,
    };
    Ok(placement_answer(&order, StatusCode::OK, wait))
}

/// Order `id` once it is confirmed or cancelled, or as it stands after `seconds`.
async fn until_finished(
    state: &AppState,
    claims: &bazaar_auth::Claims,
    id: &str,
    seconds: u64,
) -> ApiResult<StoredOrder> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    // Watched only when the caller waits, from before the first read: one read answers a
    // finished order, and a pending one is read again only when it may have finished.
    let watch = (seconds > 0).then(|| state.saga.finishes().watch(id));
    read_until_finished(state, claims, id, watch.as_ref(), deadline).await
}

/// Reads order `id` (as [`visible_order`]) until it is no longer pending or `deadline` passes,
/// woken by `watch` when this instance finishes it; without a watch, reads it once.
async fn read_until_finished(
    state: &AppState,
    claims: &bazaar_auth::Claims,
    id: &str,
    watch: Option<&finishes::Watch<'_>>,
    deadline: tokio::time::Instant,
) -> ApiResult<StoredOrder> {
    loop {
        // Taken before the read, so a finish between the read and the wait is not missed.
        let finished = watch.map(finishes::Watch::next_announcement);
        let order = visible_order(state, claims, id).await?;
        let now = tokio::time::Instant::now();
        match finished {
            Some(finished) if order.status == "pending" && now < deadline => {
                // Woken when this instance finishes the order; read again now and then in case
                // another instance does.
                let _ =
                    tokio::time::timeout_at(deadline.min(now + finishes::RECHECK), finished).await;
            }
            _ => return Ok(order),
        }
    }
}

async fn with_history(state: &AppState, orders: Vec<StoredOrder>) -> ApiResult<Vec<Order>> {
    let mut out = Vec::with_capacity(orders.len());
    for order in orders {
        let history = state.repository.history(&order.id).await.map_err(db)?;
        out.push(order.into_order(history));
    }
    Ok(out)
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", params(ListQuery),
    responses((status = 200, description = "The caller's orders", body = OrderList),
        (status = 401, description = "Not signed in", body = Problem)))]
async fn my_orders(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<OrderList>> {
    let orders = state
        .repository
        .list(Some(&claims.sub), query.status()?, query.limit()?)
        .await
        .map_err(db)?;
    Ok(axum::Json(OrderList {
        orders: with_history(&state, orders).await?,
    }))
}

/// One order with its saga's steps; only its owner (or an admin) sees it. With `wait`, a
/// pending order's answer waits until the order is confirmed or cancelled (or `wait` seconds
/// pass), so a client learns the outcome with one request instead of polling.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id"), OrderQuery),
    responses((status = 200, description = "The order", body = Order),
        (status = 400, description = "`wait` is not a whole number", body = Problem),
        (status = 422, description = "`wait` is over 5 seconds", body = Problem),
        (status = 404, description = "No such order (or not yours)", body = Problem)))]
async fn get_order(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
    Query(query): Query<OrderQuery>,
) -> ApiResult<axum::Json<Order>> {
    let wait = query.wait()?;
    let order = until_finished(&state, &claims, &id, wait.as_secs()).await?;
    let history = state.repository.history(&id).await.map_err(db)?;
    Ok(axum::Json(order.into_order(history)))
}

/// Order `id` if the caller may see it (its owner or an admin); 404 otherwise, as if it did not
/// exist.
async fn visible_order(
    state: &AppState,
    claims: &bazaar_auth::Claims,
    id: &str,
) -> ApiResult<StoredOrder> {
    let not_found = || ApiError::not_found(format!("there is no order with id {id}"));
    let order = state
        .repository
        .get(id)
        .await
        .map_err(db)?
        .ok_or_else(not_found)?;
    if order.user_id != claims.sub && !claims.is_admin() {
        return Err(not_found());
    }
    Ok(order)
}

/// Every order (admins).
#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "orders", params(ListQuery),
    responses((status = 200, description = "Orders, newest first", body = OrderList),
        (status = 403, description = "Not an admin", body = Problem)))]
async fn all_orders(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<OrderList>> {
    let orders = state
        .repository
        .list(query.user_id.as_deref(), query.status()?, query.limit()?)
        .await
        .map_err(db)?;
    Ok(axum::Json(OrderList {
        orders: with_history(&state, orders).await?,
    }))
}

/// Every order, for other services and `bazaar reconcile`.
async fn internal_orders(
    State(state): State<AppState>,
    _service: RequireService,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<OrderList>> {
    let limit = query.limit.unwrap_or(10_000).clamp(1, 100_000);
    let orders = state
        .repository
        .list(query.user_id.as_deref(), query.status()?, limit)
        .await
        .map_err(db)?;
    Ok(axum::Json(OrderList {
        orders: with_history(&state, orders).await?,
    }))
}
