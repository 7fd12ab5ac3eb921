//! The shipping service's wire contract (docs/shop.md, "shipping"): DTOs, event payloads and
//! input validation, which names the field at fault.

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::postal::valid_point;

/// Longest order, user, product or warehouse id, in characters.
pub const MAX_ID_CHARS: usize = 200;
/// Longest product id (the inventory's and catalog's limit), in characters.
pub const MAX_PRODUCT_ID_CHARS: usize = 128;
/// Most parcels in one quote or shipment.
pub const MAX_PARCELS: usize = 50;
/// Most items in one public quote.
pub const MAX_ITEMS: usize = 100;
/// Most units of one item.
pub const MAX_QUANTITY: i64 = 10_000;
/// Heaviest parcel, in grams (100 t: far beyond any real parcel, well inside `i64` sums).
pub const MAX_PARCEL_GRAMS: i64 = 100_000_000;
/// Most shipments a listing answers.
pub const LIST_LIMIT: i64 = 100;

/// Event types this service publishes.
pub mod events {
    pub const SHIPMENT_CREATED: &str = "shipment.created";
    pub const SHIPMENT_STATUS_CHANGED: &str = "shipment.status_changed";
}

/// Shipment statuses, in the order a shipment goes through them.
pub mod status {
    pub const LABEL_CREATED: &str = "label_created";
    pub const IN_TRANSIT: &str = "in_transit";
    pub const DELIVERED: &str = "delivered";
}

/// An amount of money in integer minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    #[schema(example = 2819)]
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

impl Money {
    pub fn usd(amount_minor: i64) -> Self {
        Self {
            amount_minor,
            currency: crate::quote::FEE_CURRENCY.to_owned(),
        }
    }
}

/// Where to ship: a postal address (`country` and `postal_code`, resolved through the postal
/// table; `name`, `line1` and `city` are carried along) or a point (`lat` and `lon`, which win
/// when both forms are given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "US")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "10001")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
}

impl Destination {
    /// Checks the shape; whether the place can be shipped to is the quoter's question.
    pub fn validate(&self) -> Result<(), ApiError> {
        text(&self.name, "destination.name", 100)?;
        text(&self.line1, "destination.line1", 200)?;
        text(&self.city, "destination.city", 100)?;
        text(&self.postal_code, "destination.postal_code", 16)?;
        text(&self.country, "destination.country", 2)?;
        match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => {
                if !valid_point(lat, 0.0) {
                    return Err(ApiError::invalid(
                        "destination.lat",
                        "lat must be -90 to 90",
                    ));
                }
                if !valid_point(0.0, lon) {
                    return Err(ApiError::invalid(
                        "destination.lon",
                        "lon must be -180 to 180",
                    ));
                }
                Ok(())
            }
            (Some(_), None) => Err(ApiError::invalid(
                "destination.lon",
                "lon is required with lat",
            )),
            (None, Some(_)) => Err(ApiError::invalid(
                "destination.lat",
                "lat is required with lon",
            )),
            (None, None) => {
                if self.country.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(ApiError::invalid(
                        "destination.country",
                        "give country and postal_code, or lat and lon",
                    ));
                }
                if self
                    .postal_code
                    .as_deref()
                    .is_none_or(|c| c.trim().is_empty())
                {
                    return Err(ApiError::invalid(
                        "destination.postal_code",
                        "give country and postal_code, or lat and lon",
                    ));
                }
                Ok(())
            }
        }
    }
}

fn text(value: &Option<String>, field: &str, max: usize) -> Result<(), ApiError> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        Some(v) if v.chars().any(char::is_control) => Err(ApiError::invalid(
            field,
            "must not contain control characters",
        )),
        _ => Ok(()),
    }
}

/// An id: non-empty, bounded, printable, no `/` or `,` (ids travel in paths and lists).
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    check_id_max(field, id, MAX_ID_CHARS)
}

fn check_id_max(field: &str, id: &str, max: usize) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if id.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if id.chars().any(|c| c.is_control() || c == '/' || c == ',') {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters, '/' or ','",
        ));
    }
    Ok(())
}

/// What leaves one warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParcelInput {
    #[schema(example = "columbus")]
    pub warehouse_id: String,
    /// The warehouse's location.
    pub lat: f64,
    pub lon: f64,
    pub weight_grams: i64,
}

impl ParcelInput {
    /// `at` is the parcel's path (`parcels[2]`).
    pub fn validate(&self, at: &str) -> Result<(), ApiError> {
        check_id(&format!("{at}.warehouse_id"), &self.warehouse_id)?;
        if !valid_point(self.lat, 0.0) {
            return Err(ApiError::invalid(
                format!("{at}.lat"),
                "lat must be -90 to 90",
            ));
        }
        if !valid_point(0.0, self.lon) {
            return Err(ApiError::invalid(
                format!("{at}.lon"),
                "lon must be -180 to 180",
            ));
        }
        if !(0..=MAX_PARCEL_GRAMS).contains(&self.weight_grams) {
            return Err(ApiError::invalid(
                format!("{at}.weight_grams"),
                format!("weight_grams must be 0 to {MAX_PARCEL_GRAMS}"),
            ));
        }
        Ok(())
    }
}

fn check_parcel_count(parcels: &[ParcelInput]) -> Result<(), ApiError> {
    if parcels.is_empty() {
        return Err(ApiError::invalid(
            "parcels",
            "at least one parcel is required",
        ));
    }
    if parcels.len() > MAX_PARCELS {
        return Err(ApiError::invalid(
            "parcels",
            format!("at most {MAX_PARCELS} parcels"),
        ));
    }
    Ok(())
}

/// `POST /internal/v1/quotes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuoteRequest {
    pub destination: Destination,
    pub parcels: Vec<ParcelInput>,
}

impl QuoteRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_parcel_count(&self.parcels)
    }
}

/// One line of a public quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ItemInput {
    pub product_id: String,
    pub quantity: i64,
}

/// `POST /api/v1/shipping/quote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublicQuoteRequest {
    pub destination: Destination,
    pub items: Vec<ItemInput>,
}

impl PublicQuoteRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.items.is_empty() {
            return Err(ApiError::invalid("items", "at least one item is required"));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(ApiError::invalid(
                "items",
                format!("at most {MAX_ITEMS} items"),
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            check_id_max(
                &format!("items[{i}].product_id"),
                &item.product_id,
                MAX_PRODUCT_ID_CHARS,
            )?;
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(ApiError::invalid(
                    format!("items[{i}].quantity"),
                    format!("quantity must be 1 to {MAX_QUANTITY}"),
                ));
            }
        }
        Ok(())
    }
}

/// The price of one parcel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParcelQuote {
    pub warehouse_id: String,
    pub distance_km: f64,
    pub weight_grams: i64,
    /// Whether the parcel crosses a border (and pays the surcharge).
    pub international: bool,
    pub estimated_days: i64,
    pub amount: Money,
}

/// A shipping price (both quote endpoints answer this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Quote {
    /// The total, in USD.
    pub amount: Money,
    /// The farthest parcel's great-circle distance, to 0.1 km.
    #[schema(example = 3941.2)]
    pub distance_km: f64,
    /// The farthest parcel's warehouse.
    #[schema(example = "columbus")]
    pub origin_warehouse_id: String,
    /// The slowest parcel's estimate.
    #[schema(example = 5)]
    pub estimated_days: i64,
    /// The price of each parcel.
    pub parcels: Vec<ParcelQuote>,
}

/// `POST /internal/v1/shipments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipmentRequest {
    /// The idempotency key: one shipment per order.
    pub order_id: String,
    pub user_id: String,
    pub destination: Destination,
    pub parcels: Vec<ParcelInput>,
}

impl ShipmentRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_id("order_id", &self.order_id)?;
        check_id("user_id", &self.user_id)?;
        check_parcel_count(&self.parcels)
    }
}

/// Where a shipment goes: the destination as given, with the country and point it resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipmentDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// The postal table's place name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    pub lat: f64,
    pub lon: f64,
}

/// One status a shipment had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    #[schema(example = "label_created")]
    pub status: String,
    /// RFC 3339.
    pub at: String,
}

/// A shipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Shipment {
    pub shipment_id: String,
    pub order_id: String,
    pub user_id: String,
    /// UPU S10 format: `BZ`, 8 digits, a check digit, `US`.
    #[schema(example = "BZ123456785US")]
    pub tracking_number: String,
    /// `label_created`, `in_transit` or `delivered`.
    pub status: String,
    pub fee: Money,
    pub distance_km: f64,
    pub estimated_days: i64,
    pub destination: ShipmentDestination,
    pub parcels: Vec<ParcelInput>,
    pub history: Vec<HistoryEntry>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

/// A list of shipments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipmentList {
    pub shipments: Vec<Shipment>,
}

/// `?order_id=` of the listings.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShipmentQuery {
    pub order_id: Option<String>,
}

/// `GET /internal/v1/locate` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocateQuery {
    #[param(example = "US")]
    pub country: Option<String>,
    #[param(example = "10001")]
    pub postal_code: Option<String>,
}

/// Where a postal address is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    pub country: String,
    pub postal_code: String,
    pub place: String,
    pub lat: f64,
    pub lon: f64,
}

/// Payload of `shipment.created` (v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipmentCreated {
    pub shipment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub tracking_number: String,
    pub fee: Money,
}

/// Payload of `shipment.status_changed` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentStatusChanged {
    pub shipment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub tracking_number: String,
    pub status: String,
}

/// RFC 3339 (UTC, milliseconds) for Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
