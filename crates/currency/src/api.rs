//! The currency service's REST API: the rate table and conversions. Both are public reads; the
//! table is answered with an `ETag` so clients can cache it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bazaar_kit::etag;
use bazaar_kit::extract::Query;
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::model::{ConversionResult, ConvertQuery, CurrencyInfo, CurrencyList};
use crate::rates::ConvertError;
use crate::AppState;

/// The currency routes (the kit adds the common ones).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/currencies", get(list_currencies))
        .route("/api/v1/currencies/convert", get(convert))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar currency", description = "Exchange rates and exact money conversion."),
    paths(list_currencies, convert),
    components(schemas(CurrencyList, CurrencyInfo, ConversionResult, Problem)),
    tags((name = "currency", description = "Exchange rates"))
)]
struct ApiDoc;

/// The currency service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

impl From<ConvertError> for ApiError {
    fn from(error: ConvertError) -> Self {
        match &error {
            ConvertError::UnknownCurrency { side, code } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_currency",
                "Unknown currency",
            )
            .field(side.field())
            .detail(format!("{code:?} is not a currency this service knows")),
            ConvertError::Overflow => ApiError::new(
                StatusCode::BAD_REQUEST,
                "amount_overflow",
                "Amount out of range",
            )
            .field("amount_minor")
            .detail(error.to_string()),
        }
    }
}

/// The rate table: base currency, date, source and every currency with its rate.
#[utoipa::path(get, path = "/api/v1/currencies", tag = "currency",
    responses(
        (status = 200, description = "The rate table", body = CurrencyList,
            headers(("ETag" = String, description = "Entity tag of the table"))),
        (status = 304, description = "Not modified (If-None-Match)"),
    ))]
async fn list_currencies(State(state): State<AppState>, headers: HeaderMap) -> Response {
    etag::json(&headers, &CurrencyList::from(&*state.rates))
}

/// Converts an amount in minor units, exactly, rounding once half to even.
#[utoipa::path(get, path = "/api/v1/currencies/convert", tag = "currency",
    params(ConvertQuery),
    responses(
        (status = 200, description = "The converted amount", body = ConversionResult),
        (status = 400, description = "A parameter is missing or malformed, a currency is unknown \
            (`unknown_currency`, `field` is `from` or `to`), or the result does not fit \
            (`amount_overflow`)", body = Problem),
    ))]
async fn convert(
    State(state): State<AppState>,
    Query(query): Query<ConvertQuery>,
) -> ApiResult<axum::Json<ConversionResult>> {
    let conversion = state
        .rates
        .convert(query.amount_minor, &query.from, &query.to)?;
    Ok(axum::Json(ConversionResult {
        amount_minor: conversion.amount_minor,
        currency: conversion.currency,
        rate: conversion.rate,
        rounding: "half-even".to_owned(),
    }))
}
