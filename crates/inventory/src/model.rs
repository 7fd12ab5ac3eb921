//! The inventory's wire contract (request and response DTOs, event payloads) and the
//! validation of what clients send. Rules that need the database (the warehouse exists, there
//! is enough stock) are checked by the repository inside the write transaction.

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest reservation key, in characters.
pub const MAX_KEY_CHARS: usize = 200;
/// Longest product id, in characters (the catalog's limit on ids).
pub const MAX_PRODUCT_ID_CHARS: usize = 128;
/// Most lines in one reservation.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Most product ids in one batch read.
pub const MAX_BATCH_IDS: usize = 100;
/// Longest adjustment or release reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Largest adjustment, either way.
pub const MAX_DELTA: i64 = 1_000_000;
/// Longest reservation a caller may ask for (`ttl_ms`): a day.
pub const MAX_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Event types the inventory publishes.
pub mod events {
    pub const STOCK_LOW: &str = "stock.low";
    pub const RESERVATION_COMMITTED: &str = "reservation.committed";
    pub const RESERVATION_RELEASED: &str = "reservation.released";
}

/// A warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Warehouse {
    #[schema(example = "reno")]
    pub id: String,
    #[schema(example = "Reno Fulfilment Center")]
    pub name: String,
    #[schema(example = "Reno, NV")]
    pub city: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "US")]
    pub country: String,
    /// Decimal degrees, WGS 84.
    #[schema(example = 39.5296)]
    pub lat: f64,
    #[schema(example = -119.8138)]
    pub lon: f64,
}

/// `GET /api/v1/warehouses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WarehouseList {
    pub warehouses: Vec<Warehouse>,
}

/// A product's stock at one warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WarehouseStock {
    pub warehouse_id: String,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Units physically there.
    pub on_hand: i64,
    /// Units held by live reservations.
    pub reserved: i64,
    /// `on_hand - reserved`: what can still be reserved.
    pub available: i64,
}

/// A product's stock everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryItem {
    pub product_id: String,
    /// Sum of `available` over the warehouses.
    pub available: i64,
    /// Every warehouse, in display order.
    pub warehouses: Vec<WarehouseStock>,
}

/// `GET /api/v1/inventory?product_ids=...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryList {
    pub items: Vec<InventoryItem>,
}

/// Query of the batch read.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// Comma-separated product ids (at most 100). Products the inventory has never stocked
    /// are answered with zero stock at every warehouse.
    pub product_ids: Option<String>,
}

impl BatchQuery {
    /// The distinct ids asked for, in the order given.
    pub fn ids(&self) -> Result<Vec<String>, ApiError> {
        let raw = self
            .product_ids
            .as_deref()
            .ok_or_else(|| ApiError::invalid("product_ids", "product_ids is required"))?;
        let mut ids: Vec<String> = Vec::new();
        for id in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            check_product_id("product_ids", id)?;
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
        if ids.len() > MAX_BATCH_IDS {
            return Err(ApiError::invalid(
                "product_ids",
                format!("at most {MAX_BATCH_IDS} product ids per request"),
            ));
        }
        Ok(ids)
    }
}

/// `POST /api/v1/inventory/{product_id}/adjustments`: an admin's correction of the units on
/// hand (a stock count, a delivery, damage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdjustmentInput {
    #[schema(example = "reno")]
    pub warehouse_id: String,
    /// Units added (positive) or removed (negative); never 0.
    #[schema(example = 12)]
    pub delta: i64,
    /// Why, for the audit log.
    #[schema(example = "delivery PO-1042")]
    pub reason: String,
}

impl AdjustmentInput {
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.warehouse_id = self.warehouse_id.trim().to_owned();
        if self.warehouse_id.is_empty() {
            return Err(ApiError::invalid(
                "warehouse_id",
                "warehouse_id is required",
            ));
        }
        if self.delta == 0 {
            return Err(ApiError::invalid("delta", "delta must not be 0"));
        }
        if self.delta.abs() > MAX_DELTA {
            return Err(ApiError::invalid(
                "delta",
                format!("delta must be within ±{MAX_DELTA}"),
            ));
        }
        self.reason = self.reason.trim().to_owned();
        check_reason("reason", &self.reason, true)
    }
}

/// A point on Earth, decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    #[schema(example = 40.7128)]
    pub lat: f64,
    #[schema(example = -74.006)]
    pub lon: f64,
}

/// One line of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineInput {
    pub product_id: String,
    /// 1 to 10,000.
    pub quantity: i64,
}

/// `POST /internal/v1/reservations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReservationRequest {
    /// Idempotency key: the same key returns the same reservation.
    #[schema(example = "order-0190f3a2-7c1e-7d4b-9a51-2f8c1e0b6d73")]
    pub key: String,
    pub lines: Vec<LineInput>,
    /// Where the order ships to: each line comes from the nearest warehouse that has it.
    pub destination: Point,
    /// How long the reservation holds before it expires (default: the service's
    /// `reservation_ttl_ms`; at most a day).
    #[serde(default)]
    pub ttl_ms: Option<i64>,
}

impl ReservationRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_key(&self.key)?;
        if self.lines.is_empty() {
            return Err(ApiError::invalid("lines", "at least one line is required"));
        }
        if self.lines.len() > MAX_LINES {
            return Err(ApiError::invalid(
                "lines",
                format!("at most {MAX_LINES} lines per reservation"),
            ));
        }
        for (i, line) in self.lines.iter().enumerate() {
            check_product_id(&format!("lines[{i}].product_id"), &line.product_id)?;
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(ApiError::invalid(
                    format!("lines[{i}].quantity"),
                    format!("quantity must be between 1 and {MAX_QUANTITY}"),
                ));
            }
        }
        let Point { lat, lon } = self.destination;
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Err(ApiError::invalid(
                "destination.lat",
                "lat must be between -90 and 90",
            ));
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Err(ApiError::invalid(
                "destination.lon",
                "lon must be between -180 and 180",
            ));
        }
        if let Some(ttl) = self.ttl_ms {
            if !(1..=MAX_TTL_MS).contains(&ttl) {
                return Err(ApiError::invalid(
                    "ttl_ms",
                    format!("ttl_ms must be between 1 and {MAX_TTL_MS}"),
                ));
            }
        }
        Ok(())
    }
}

/// Optional body of `POST /internal/v1/reservations/{key}/release`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseInput {
    /// Why (e.g. `payment_declined`); default `released`.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ReleaseInput {
    /// The validated reason.
    pub fn reason(&self) -> Result<String, ApiError> {
        match self.reason.as_deref().map(str::trim) {
            None | Some("") => Ok(REASON_RELEASED.to_owned()),
            Some(reason) => {
                check_reason("reason", reason, true)?;
                Ok(reason.to_owned())
            }
        }
    }
}

/// The reason of a release that gave none.
pub const REASON_RELEASED: &str = "released";
/// The reason of a release by the expiry sweeper.
pub const REASON_EXPIRED: &str = "expired";

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    /// Units held until commit, release or expiry.
    Reserved,
    /// Units shipped out: on hand and reserved both went down.
    Committed,
    /// Units returned to stock (released, expired), or a tombstone of a release that came
    /// before any reserve.
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "reserved" => Some(Self::Reserved),
            "committed" => Some(Self::Committed),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// Units of one product taken from one warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub product_id: String,
    pub warehouse_id: String,
    pub quantity: i64,
    /// The warehouse's position (what shipping needs for a parcel).
    pub lat: f64,
    pub lon: f64,
}

/// A reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub key: String,
    pub status: ReservationStatus,
    /// When a `reserved` reservation expires (Unix ms); 0 for a release tombstone.
    pub expires_at_ms: i64,
    /// Where the units come from; empty for a release tombstone.
    pub allocations: Vec<Allocation>,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<i64>,
    /// Why it was released (`released`, `expired`, or the caller's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /internal/v1/reservations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReservationList {
    pub reservations: Vec<Reservation>,
}

/// Query of the reservation listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReservationQuery {
    /// `reserved`, `committed` or `released`; all when absent.
    #[param(value_type = Option<String>)]
    pub status: Option<ReservationStatus>,
}

/// Payload of `stock.low`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockLow {
    pub product_id: String,
    pub warehouse_id: String,
    pub available: i64,
    pub threshold: i64,
}

/// One line of `reservation.committed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedLine {
    pub product_id: String,
    pub warehouse_id: String,
    pub quantity: i64,
}

/// Payload of `reservation.committed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationCommitted {
    pub key: String,
    pub lines: Vec<CommittedLine>,
}

/// Payload of `reservation.released`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationReleased {
    pub key: String,
    pub reason: String,
}

/// A reservation key: it travels in URL paths, so only characters that need no escaping.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::invalid("key", "key is required"));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(ApiError::invalid(
            "key",
            format!("key must be at most {MAX_KEY_CHARS} characters"),
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '~'))
    {
        return Err(ApiError::invalid(
            "key",
            "key may contain only ASCII letters, digits and - _ . : ~",
        ));
    }
    Ok(())
}

/// A product id: the catalog's rules (non-empty, bounded, no control characters or slashes).
pub fn check_product_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::invalid(field, "product id is required"));
    }
    if id.chars().count() > MAX_PRODUCT_ID_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("product id must be at most {MAX_PRODUCT_ID_CHARS} characters"),
        ));
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::invalid(
            field,
            "product id must not contain control characters or '/'",
        ));
    }
    Ok(())
}

fn check_reason(field: &str, reason: &str, required: bool) -> Result<(), ApiError> {
    if required && reason.is_empty() {
        return Err(ApiError::invalid(field, "a reason is required"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("reason must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "reason must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ReservationRequest {
        ReservationRequest {
            key: "order-1".into(),
            lines: vec![LineInput {
                product_id: "p".into(),
                quantity: 1,
            }],
            destination: Point { lat: 0.0, lon: 0.0 },
            ttl_ms: None,
        }
    }

    fn field_of(result: Result<(), ApiError>) -> String {
        result.expect_err("invalid").field.unwrap_or_default()
    }

    #[test]
    fn reservation_validation_names_the_field() {
        assert!(request().validate().is_ok());
        let mut r = request();
        r.key = "has space".into();
        assert_eq!(field_of(r.validate()), "key");
        let mut r = request();
        r.lines.clear();
        assert_eq!(field_of(r.validate()), "lines");
        let mut r = request();
        r.lines.push(LineInput {
            product_id: "q".into(),
            quantity: 0,
        });
        assert_eq!(field_of(r.validate()), "lines[1].quantity");
        let mut r = request();
        r.lines[0].product_id = " ".into();
        assert_eq!(field_of(r.validate()), "lines[0].product_id");
        let mut r = request();
        r.destination.lat = 91.0;
        assert_eq!(field_of(r.validate()), "destination.lat");
        let mut r = request();
        r.destination.lon = f64::NAN;
        assert_eq!(field_of(r.validate()), "destination.lon");
        let mut r = request();
        r.ttl_ms = Some(0);
        assert_eq!(field_of(r.validate()), "ttl_ms");
    }

    #[test]
    fn adjustment_validation_names_the_field() {
        let ok = AdjustmentInput {
            warehouse_id: " reno ".into(),
            delta: -3,
            reason: " count ".into(),
        };
        let mut a = ok.clone();
        assert!(a.validate().is_ok());
        assert_eq!(
            (a.warehouse_id.as_str(), a.reason.as_str()),
            ("reno", "count")
        );
        let mut a = ok.clone();
        a.delta = 0;
        assert_eq!(field_of(a.validate()), "delta");
        let mut a = ok.clone();
        a.reason = "  ".into();
        assert_eq!(field_of(a.validate()), "reason");
        let mut a = ok;
        a.warehouse_id = String::new();
        assert_eq!(field_of(a.validate()), "warehouse_id");
    }

    #[test]
    fn batch_ids_are_deduplicated_and_bounded() {
        let q = BatchQuery {
            product_ids: Some("a, b,,a".into()),
        };
        assert_eq!(q.ids().unwrap(), vec!["a", "b"]);
        let q = BatchQuery { product_ids: None };
        assert_eq!(field_of(q.ids().map(|_| ())), "product_ids");
        let many = (0..=MAX_BATCH_IDS)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>();
        let q = BatchQuery {
            product_ids: Some(many.join(",")),
        };
        assert_eq!(field_of(q.ids().map(|_| ())), "product_ids");
    }
}
