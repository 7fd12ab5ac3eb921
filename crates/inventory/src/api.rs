//! The inventory's REST API: thin handlers that validate, call the repository and shape the
//! response. Public reads and admin adjustments under `/api/v1/...`; reservations under
//! `/internal/v1/...`, for services only (checkout in orders, `bazaar reconcile`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::{RequireAdmin, RequireService};
use bazaar_kit::audit::{AuditQuery, AuditView, ADMIN_AUDIT_PATH};
use bazaar_kit::extract::{parse_json, Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::model::{
    check_key, check_product_id, AdjustmentInput, Allocation, BatchQuery, InventoryItem,
    InventoryList, LineInput, Point, ReleaseInput, Reservation, ReservationList, ReservationQuery,
    ReservationRequest, ReservationStatus, Warehouse, WarehouseList, WarehouseStock,
};
use crate::repository::RepoError;
use crate::AppState;

/// The inventory's routes (without the kit's common routes and fallbacks, which
/// `bazaar_kit::server::Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/inventory", get(list_items))
        .route("/api/v1/inventory/{product_id}", get(get_item))
        .route(
            "/api/v1/inventory/{product_id}/adjustments",
            post(adjust_stock),
        )
        .route("/api/v1/warehouses", get(list_warehouses))
        .route(ADMIN_AUDIT_PATH, get(audit_log))
        .route(
            "/internal/v1/reservations",
            get(list_reservations).post(reserve),
        )
        .route("/internal/v1/reservations/{key}", get(get_reservation))
        .route("/internal/v1/reservations/{key}/commit", post(commit))
        .route("/internal/v1/reservations/{key}/release", post(release))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar inventory", description = "Stock per warehouse and reservations."),
    paths(get_item, list_items, list_warehouses, adjust_stock, reserve, get_reservation,
          list_reservations, commit, release, bazaar_kit::audit::admin_view),
    components(schemas(InventoryItem, InventoryList, WarehouseStock, Warehouse, WarehouseList,
        AdjustmentInput, ReservationRequest, LineInput, Point, Reservation, Allocation,
        ReservationStatus, ReservationList, ReleaseInput, Problem)),
    tags((name = "inventory", description = "Stock levels and warehouses"),
         (name = "reservations", description = "Internal: reservations for checkout"))
)]
struct ApiDoc;

/// The inventory's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The one place repository errors become answers.
impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::ProductNotFound(id) => {
                ApiError::not_found(format!("the inventory has no product {id}"))
            }
            RepoError::UnknownWarehouse(id) => {
                ApiError::invalid("warehouse_id", format!("there is no warehouse {id}"))
            }
            RepoError::ReservationNotFound(key) => {
                ApiError::not_found(format!("there is no reservation {key}"))
            }
            error @ RepoError::InsufficientStock { index, .. } => {
                ApiError::conflict("insufficient_stock", error.to_string())
                    .field(format!("lines[{index}].quantity"))
            }
            error @ RepoError::AdjustmentBelowZero { .. } => {
                ApiError::conflict("insufficient_stock", error.to_string()).field("delta")
            }
            RepoError::Released(key) => ApiError::conflict(
                "reservation_released",
                format!("reservation {key} was released or expired"),
            ),
            RepoError::Committed(key) => ApiError::conflict(
                "reservation_committed",
                format!("reservation {key} was committed"),
            ),
            RepoError::KeyReused(key) => ApiError::conflict(
                "idempotency_key_reused",
                format!("reservation key {key} was already used for different lines"),
            )
            .field("key"),
            error @ RepoError::Contended(_) => {
                ApiError::unavailable("stock_contended", error.to_string())
            }
            RepoError::Database(error) => error.into(),
        }
    }
}

/// One product's stock at every warehouse.
#[utoipa::path(get, path = "/api/v1/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product's stock", body = InventoryItem),
        (status = 404, description = "The inventory has never stocked this product", body = Problem),
    ))]
async fn get_item(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
) -> ApiResult<axum::Json<InventoryItem>> {
    let item = state
        .repository
        .item(&product_id)
        .await?
        .ok_or(RepoError::ProductNotFound(product_id))?;
    Ok(axum::Json(item))
}

/// Several products' stock.
#[utoipa::path(get, path = "/api/v1/inventory", tag = "inventory",
    params(BatchQuery),
    responses(
        (status = 200, description = "One item per distinct id, in the order asked; products never stocked show zeros", body = InventoryList),
        (status = 422, description = "`product_ids` missing, too many, or invalid", body = Problem),
    ))]
async fn list_items(
    State(state): State<AppState>,
    Query(query): Query<BatchQuery>,
) -> ApiResult<axum::Json<InventoryList>> {
    let ids = query.ids()?;
    let items = state.repository.items(&ids).await?;
    Ok(axum::Json(InventoryList {
        items: items.into_iter().map(|(item, _)| item).collect(),
    }))
}

/// Every warehouse.
#[utoipa::path(get, path = "/api/v1/warehouses", tag = "inventory",
    responses((status = 200, description = "Warehouses in display order", body = WarehouseList)))]
async fn list_warehouses(State(state): State<AppState>) -> ApiResult<axum::Json<WarehouseList>> {
    Ok(axum::Json(WarehouseList {
        warehouses: state.repository.warehouses().await?,
    }))
}

/// Adjust the units on hand at one warehouse (admin; audited).
#[utoipa::path(post, path = "/api/v1/inventory/{product_id}/adjustments", tag = "inventory",
    params(("product_id" = String, Path, description = "Product id")),
    request_body = AdjustmentInput,
    responses(
        (status = 200, description = "The product's stock after the adjustment", body = InventoryItem),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not an admin", body = Problem),
        (status = 409, description = "`insufficient_stock`: it would leave fewer units than zero (or than reserved)", body = Problem),
        (status = 422, description = "A field is invalid or the warehouse unknown; `field` names it", body = Problem),
    ))]
async fn adjust_stock(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(product_id): Path<String>,
    Json(mut input): Json<AdjustmentInput>,
) -> ApiResult<axum::Json<InventoryItem>> {
    check_product_id("product_id", &product_id)?;
    input.validate()?;
    let item = state
        .repository
        .adjust(
            &state.audit,
            &admin.sub,
            &product_id,
            &input.warehouse_id,
            input.delta,
            &input.reason,
        )
        .await?;
    tracing::info!(product = %product_id, warehouse = %input.warehouse_id, delta = input.delta,
        "stock adjusted");
    Ok(axum::Json(item))
}

/// The audit log, newest first, with its whole chain's check (admins; for the admin console).
async fn audit_log(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditView>> {
    bazaar_kit::audit::admin_view(&state.audit, &query).await
}

/// Reserve stock for an order (idempotent by `key`).
#[utoipa::path(post, path = "/internal/v1/reservations", tag = "reservations",
    request_body = ReservationRequest,
    responses(
        (status = 201, description = "Reserved", body = Reservation),
        (status = 200, description = "A repeat of the same key: the reservation as it stands", body = Reservation),
        (status = 409, description = "`insufficient_stock` (field `lines[i].quantity`, nothing reserved), `reservation_released` (released, expired, or a release came first), or `idempotency_key_reused`", body = Problem),
        (status = 422, description = "A field is invalid; `field` names it", body = Problem),
    ))]
async fn reserve(
    State(state): State<AppState>,
    _service: RequireService,
    Json(request): Json<ReservationRequest>,
) -> ApiResult<Response> {
    request.validate()?;
    let reserved = state
        .repository
        .reserve(
            &request.key,
            &request.lines,
            request.destination,
            request.ttl_ms,
        )
        .await?;
    let status = if reserved.created {
        tracing::info!(key = %request.key, allocations = reserved.reservation.allocations.len(),
            "stock reserved");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(reserved.reservation)).into_response())
}

/// One reservation.
#[utoipa::path(get, path = "/internal/v1/reservations/{key}", tag = "reservations",
    params(("key" = String, Path, description = "Reservation key")),
    responses(
        (status = 200, description = "The reservation", body = Reservation),
        (status = 404, description = "No such reservation", body = Problem),
    ))]
async fn get_reservation(
    State(state): State<AppState>,
    _service: RequireService,
    Path(key): Path<String>,
) -> ApiResult<axum::Json<Reservation>> {
    let reservation = state
        .repository
        .reservation(&key)
        .await?
        .ok_or(RepoError::ReservationNotFound(key))?;
    Ok(axum::Json(reservation))
}

/// Reservations, for reconciliation.
#[utoipa::path(get, path = "/internal/v1/reservations", tag = "reservations",
    params(ReservationQuery),
    responses(
        (status = 200, description = "Reservations (with the status asked), oldest first", body = ReservationList),
        (status = 400, description = "Unknown status", body = Problem),
    ))]
async fn list_reservations(
    State(state): State<AppState>,
    _service: RequireService,
    Query(query): Query<ReservationQuery>,
) -> ApiResult<axum::Json<ReservationList>> {
    Ok(axum::Json(ReservationList {
        reservations: state.repository.reservations(query.status).await?,
    }))
}

/// Commit a reservation: its units ship out (idempotent).
#[utoipa::path(post, path = "/internal/v1/reservations/{key}/commit", tag = "reservations",
    params(("key" = String, Path, description = "Reservation key")),
    responses(
        (status = 200, description = "Committed (now or before)", body = Reservation),
        (status = 404, description = "No such reservation", body = Problem),
        (status = 409, description = "`reservation_released`: released or expired", body = Problem),
    ))]
async fn commit(
    State(state): State<AppState>,
    _service: RequireService,
    Path(key): Path<String>,
) -> ApiResult<axum::Json<Reservation>> {
    check_key(&key)?;
    let reservation = state.repository.commit(&key).await?;
    tracing::info!(key = %key, "reservation committed");
    Ok(axum::Json(reservation))
}

/// Release a reservation: its units return to stock (idempotent). An unknown key is
/// remembered as released, so a reserve arriving later with it is refused.
#[utoipa::path(post, path = "/internal/v1/reservations/{key}/release", tag = "reservations",
    params(("key" = String, Path, description = "Reservation key")),
    request_body(content = Option<ReleaseInput>, description = "Optional: why"),
    responses(
        (status = 200, description = "Released (now or before; a tombstone for an unknown key)", body = Reservation),
        (status = 409, description = "`reservation_committed`", body = Problem),
        (status = 422, description = "Invalid key or reason", body = Problem),
    ))]
async fn release(
    State(state): State<AppState>,
    _service: RequireService,
    Path(key): Path<String>,
    body: Bytes,
) -> ApiResult<axum::Json<Reservation>> {
    check_key(&key)?;
    // The body is optional, so it is parsed only when there is one.
    let input: ReleaseInput = if body.iter().all(u8::is_ascii_whitespace) {
        ReleaseInput::default()
    } else {
        parse_json(&body)?
    };
    let reason = input.reason()?;
    let reservation = state.repository.release(&key, &reason).await?;
    tracing::info!(key = %key, reason = %reason, "reservation released");
    Ok(axum::Json(reservation))
}
