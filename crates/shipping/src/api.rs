//! The shipping service's REST API: quotes (public, and internal for the order saga),
//! shipments (created by orders, read by their owners and admins) and address lookup. Handlers
//! validate, call the quoter, the upstream services or the repository, and shape the answer.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::{Caller, RequireService};
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::model::{
    check_id, Destination, HistoryEntry, ItemInput, LocateQuery, Location, Money, ParcelInput,
    ParcelQuote, PublicQuoteRequest, Quote, QuoteRequest, Shipment, ShipmentDestination,
    ShipmentList, ShipmentQuery, ShipmentRequest, LIST_LIMIT,
};
use crate::repository::{ListFilter, NewShipment};
use crate::AppState;

/// The shipping routes (the kit adds the common ones).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/shipping/quote", post(public_quote))
        .route("/api/v1/shipments", get(list_shipments))
        .route("/api/v1/shipments/{id}", get(get_shipment))
        .route("/internal/v1/quotes", post(internal_quote))
        .route(
            "/internal/v1/shipments",
            post(create_shipment).get(internal_shipments),
        )
        .route("/internal/v1/locate", get(locate))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar shipping", description = "Shipping quotes, shipments and tracking."),
    paths(public_quote, list_shipments, get_shipment, internal_quote, create_shipment,
          internal_shipments, locate),
    components(schemas(Destination, ItemInput, PublicQuoteRequest, QuoteRequest, ParcelInput,
        ParcelQuote, Quote, Money, ShipmentRequest, Shipment, ShipmentDestination, HistoryEntry,
        ShipmentList, Location, Problem)),
    tags((name = "shipping", description = "Quotes and shipments"),
         (name = "internal", description = "Service-to-service (service token)"))
)]
struct ApiDoc;

/// The shipping service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// What shipping to a destination costs for a basket: stock and weights come from inventory
/// and catalog; see the crate documentation for the formula.
#[utoipa::path(post, path = "/api/v1/shipping/quote", tag = "shipping",
    request_body = PublicQuoteRequest,
    responses(
        (status = 200, description = "The quote", body = Quote),
        (status = 409, description = "`insufficient_stock`: an item is not in stock in that quantity anywhere", body = Problem),
        (status = 422, description = "`unshippable_destination` (naming `destination.postal_code`, \
            `destination.country` or `destination`), or an invalid field", body = Problem),
        (status = 503, description = "`upstream_unavailable`: inventory or catalog is down", body = Problem),
    ))]
async fn public_quote(
    State(state): State<AppState>,
    Json(input): Json<PublicQuoteRequest>,
) -> ApiResult<axum::Json<Quote>> {
    input.validate()?;
    // Resolve first: an unshippable address needs no call to anyone.
    let destination = state.quoter.resolve(&input.destination)?;
    let parcels = state.upstream.parcels(&input.items, &destination).await?;
    Ok(axum::Json(state.quoter.quote(&destination, &parcels)?))
}

/// Prices parcels the caller has already allocated (the order saga's price step).
#[utoipa::path(post, path = "/internal/v1/quotes", tag = "internal",
    request_body = QuoteRequest,
    responses(
        (status = 200, description = "The quote (USD)", body = Quote),
        (status = 422, description = "`unshippable_destination`, or an invalid field", body = Problem),
    ))]
async fn internal_quote(
    State(state): State<AppState>,
    _service: RequireService,
    Json(input): Json<QuoteRequest>,
) -> ApiResult<axum::Json<Quote>> {
    input.validate()?;
    let destination = state.quoter.resolve(&input.destination)?;
    Ok(axum::Json(
        state.quoter.quote(&destination, &input.parcels)?,
    ))
}

/// Where a postal address is (the order saga's first step).
#[utoipa::path(get, path = "/internal/v1/locate", tag = "internal",
    params(LocateQuery),
    responses(
        (status = 200, description = "The place and its coordinates", body = Location),
        (status = 422, description = "`unshippable_destination` naming `postal_code` or `country`", body = Problem),
    ))]
async fn locate(
    State(state): State<AppState>,
    _service: RequireService,
    Query(query): Query<LocateQuery>,
) -> ApiResult<axum::Json<Location>> {
    let resolved = state.quoter.locate(
        query.country.as_deref().unwrap_or(""),
        query.postal_code.as_deref().unwrap_or(""),
        "country",
        "postal_code",
    )?;
    Ok(axum::Json(Location {
        country: resolved.country,
        postal_code: resolved.postal_code.unwrap_or_default(),
        place: resolved.place.unwrap_or_default(),
        lat: resolved.lat,
        lon: resolved.lon,
    }))
}

/// Creates the shipment of an order: prices it, draws a tracking number, creates the label and
/// publishes `shipment.created`. Idempotent by `order_id`: a repeat answers 200 with the
/// shipment already made and changes nothing.
#[utoipa::path(post, path = "/internal/v1/shipments", tag = "internal",
    request_body = ShipmentRequest,
    responses(
        (status = 201, description = "Created", body = Shipment),
        (status = 200, description = "The order already has this shipment", body = Shipment),
        (status = 409, description = "`idempotency_conflict`: the order's shipment belongs to another user", body = Problem),
        (status = 422, description = "`unshippable_destination`, or an invalid field", body = Problem),
    ))]
async fn create_shipment(
    State(state): State<AppState>,
    _service: RequireService,
    Json(input): Json<ShipmentRequest>,
) -> ApiResult<Response> {
    input.validate()?;
    // A repeat answers what the first call made, even if the rules changed since (a newly
    // unserved country must not turn a shipped order into an error).
    if let Some(existing) = state.repository.by_order(&input.order_id).await? {
        return shipment_answer(StatusCode::OK, existing, &input);
    }
    let resolved = state.quoter.resolve(&input.destination)?;
    let quote = state.quoter.quote(&resolved, &input.parcels)?;
    let new = NewShipment {
        order_id: input.order_id.clone(),
        user_id: input.user_id.clone(),
        fee_minor: quote.amount.amount_minor,
        distance_km: quote.distance_km,
        estimated_days: quote.estimated_days,
        destination: ShipmentDestination {
            name: input.destination.name.clone(),
            line1: input.destination.line1.clone(),
            city: input.destination.city.clone(),
            country: resolved.country,
            postal_code: resolved.postal_code,
            place: resolved.place,
            lat: resolved.lat,
            lon: resolved.lon,
        },
        parcels: input.parcels.clone(),
    };
    let (shipment, created) = state.repository.create_shipment(&new).await?;
    if created {
        tracing::info!(shipment = %shipment.shipment_id, order = %shipment.order_id,
            tracking = %shipment.tracking_number, fee = shipment.fee.amount_minor, "shipment created");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    shipment_answer(status, shipment, &input)
}

fn shipment_answer(
    status: StatusCode,
    shipment: Shipment,
    input: &ShipmentRequest,
) -> ApiResult<Response> {
    if shipment.user_id != input.user_id {
        return Err(ApiError::conflict(
            "idempotency_conflict",
            format!(
                "order {} already has a shipment for another user",
                input.order_id
            ),
        )
        .field("user_id"));
    }
    let location = HeaderValue::from_str(&format!("/api/v1/shipments/{}", shipment.shipment_id))
        .map_err(ApiError::internal)?;
    Ok((status, [(header::LOCATION, location)], axum::Json(shipment)).into_response())
}

/// The shipments of an order, for other services.
#[utoipa::path(get, path = "/internal/v1/shipments", tag = "internal",
    params(ShipmentQuery),
    responses(
        (status = 200, description = "The order's shipments (zero or one)", body = ShipmentList),
        (status = 422, description = "`order_id` missing or invalid", body = Problem),
    ))]
async fn internal_shipments(
    State(state): State<AppState>,
    _service: RequireService,
    Query(query): Query<ShipmentQuery>,
) -> ApiResult<axum::Json<ShipmentList>> {
    let order_id = query.order_id.unwrap_or_default();
    check_id("order_id", &order_id)?;
    let shipments = state
        .repository
        .by_order(&order_id)
        .await?
        .into_iter()
        .collect();
    Ok(axum::Json(ShipmentList { shipments }))
}

/// One shipment with its tracking history: its owner's or any, for an admin.
#[utoipa::path(get, path = "/api/v1/shipments/{id}", tag = "shipping",
    params(("id" = String, Path, description = "Shipment id")),
    responses(
        (status = 200, description = "The shipment", body = Shipment),
        (status = 401, description = "No valid token", body = Problem),
        (status = 404, description = "No such shipment (or not the caller's)", body = Problem),
    ))]
async fn get_shipment(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Shipment>> {
    let not_found = || ApiError::not_found(format!("there is no shipment {id}"));
    let shipment = state.repository.get(&id).await?.ok_or_else(not_found)?;
    // Someone else's shipment is answered exactly like a missing one: ids reveal nothing.
    if !claims.is_admin() && shipment.user_id != claims.sub {
        return Err(not_found());
    }
    Ok(axum::Json(shipment))
}

/// The caller's shipments (an admin's: everyone's), newest first, optionally of one order.
#[utoipa::path(get, path = "/api/v1/shipments", tag = "shipping",
    params(ShipmentQuery),
    responses(
        (status = 200, description = "Shipments, newest first (at most 100)", body = ShipmentList),
        (status = 401, description = "No valid token", body = Problem),
    ))]
async fn list_shipments(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Query(query): Query<ShipmentQuery>,
) -> ApiResult<axum::Json<ShipmentList>> {
    if let Some(order_id) = &query.order_id {
        check_id("order_id", order_id)?;
    }
    let filter = ListFilter {
        user_id: (!claims.is_admin()).then(|| claims.sub.clone()),
        order_id: query.order_id,
        limit: LIST_LIMIT,
    };
    let shipments = state.repository.list(&filter).await?;
    Ok(axum::Json(ShipmentList { shipments }))
}
