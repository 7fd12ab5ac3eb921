//! The orders wire contract (DTOs) and input validation, plus the saga's stored state.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use bazaar_kit::ApiError;

/// An amount in a currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: &str) -> Self {
        Self {
            amount_minor,
            currency: currency.to_owned(),
        }
    }
}

/// Where an order goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub name: String,
    pub line1: String,
    pub city: String,
    /// ISO 3166-1 alpha-2, e.g. `US`.
    #[schema(example = "US")]
    pub country: String,
    #[schema(example = "10001")]
    pub postal_code: String,
}

impl Address {
    fn validate(&mut self) -> Result<(), ApiError> {
        let text = |value: &str, field: &str, max: usize| -> Result<(), ApiError> {
            let value = value.trim();
            if value.is_empty() {
                return Err(ApiError::invalid(field, "must not be empty"));
            }
            if value.chars().count() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("at most {max} characters"),
                ));
            }
            Ok(())
        };
        text(&self.name, "shipping_address.name", 100)?;
        text(&self.line1, "shipping_address.line1", 200)?;
        text(&self.city, "shipping_address.city", 100)?;
        text(&self.postal_code, "shipping_address.postal_code", 16)?;
        self.country = self.country.trim().to_ascii_uppercase();
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "shipping_address.country",
                "must be a two-letter ISO 3166-1 code, e.g. US",
            ));
        }
        self.postal_code = self.postal_code.trim().to_owned();
        Ok(())
    }
}

/// `POST /api/v1/orders`: check out the caller's cart.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub shipping_address: Address,
    /// From `POST /api/v1/payments/cards`.
    pub card_token: String,
    /// ISO 4217 code to charge in; defaults to the catalogue's currency (USD).
    #[serde(default)]
    pub currency: Option<String>,
}

impl PlaceOrder {
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.shipping_address.validate()?;
        let token = self.card_token.trim();
        if token.is_empty() || token.len() > 200 {
            return Err(ApiError::invalid(
                "card_token",
                "must be a card token from POST /api/v1/payments/cards",
            ));
        }
        self.card_token = token.to_owned();
        if let Some(currency) = &mut self.currency {
            *currency = currency.trim().to_ascii_uppercase();
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ApiError::invalid(
                    "currency",
                    "must be a three-letter ISO 4217 code",
                ));
            }
        }
        Ok(())
    }
}

/// One ordered product, priced when the order was placed (catalogue currency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub product_id: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub name: String,
    pub quantity: i64,
    pub unit_price: Money,
    #[serde(default)]
    pub weight_grams: i64,
}

/// The answer to a placement: the order is accepted and its saga runs in the background (or,
/// when the request waited with `Prefer: wait`, it may have finished).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Placed {
    pub order_id: String,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why a cancelled order was cancelled, or what a pending one is doing or waiting for.
    pub status_reason: String,
    /// When the order last changed (for a confirmed order, its confirmation), Unix ms.
    pub updated_at_ms: i64,
    /// Poll this for progress.
    pub status_url: String,
}

/// One recorded saga step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub step: String,
    /// `ok`, `retry` or `failed`.
    pub outcome: String,
    pub detail: String,
}

/// An order with its saga's progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why it was cancelled, or what a pending order is waiting for.
    pub status_reason: String,
    /// The saga step to run next (`done` when finished).
    pub step: String,
    pub currency: String,
    pub subtotal: Money,
    pub shipping: Money,
    pub total: Money,
    pub lines: Vec<OrderLine>,
    pub shipping_address: Address,
    pub payment_id: Option<String>,
    pub shipment_id: Option<String>,
    pub tracking_number: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub history: Vec<HistoryEntry>,
}

/// A page of orders.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub orders: Vec<Order>,
}

/// Where a reserved line ships from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub product_id: String,
    pub warehouse_id: String,
    pub quantity: i64,
    pub lat: f64,
    pub lon: f64,
}

/// What the saga has learned so far (stored as JSON with the order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub destination: Option<(f64, f64)>,
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    pub payment_id: Option<String>,
    /// Whether the payment is authorized (so a failure must void it).
    #[serde(default)]
    pub payment_authorized: bool,
    pub shipment_id: Option<String>,
    pub tracking_number: Option<String>,
}

/// Query of one order's status.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    /// While the order is `pending`, wait up to this many seconds (at most 5) for it to be
    /// confirmed or cancelled before answering; answers at once when it is not pending.
    #[serde(default)]
    pub wait: Option<u64>,
}

impl OrderQuery {
    /// Longest wait a request may ask for: well inside the gateway's 10 s route timeout.
    pub const MAX_WAIT_SECONDS: u64 = 5;

    pub fn wait(&self) -> Result<std::time::Duration, ApiError> {
        match self.wait {
            None => Ok(std::time::Duration::ZERO),
            Some(seconds) if seconds <= Self::MAX_WAIT_SECONDS => {
                Ok(std::time::Duration::from_secs(seconds))
            }
            Some(_) => Err(ApiError::invalid(
                "wait",
                "must be a whole number of seconds from 0 to 5",
            )),
        }
    }
}

/// Query of the order listings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `confirmed` or `cancelled`.
    #[serde(default)]
    pub status: Option<String>,
    /// At most 200 (default 50).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Admin listing only: one user's orders.
    #[serde(default)]
    pub user_id: Option<String>,
}

impl ListQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=200).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 200")),
        }
    }

    pub fn status(&self) -> Result<Option<&str>, ApiError> {
        match self.status.as_deref() {
            None | Some("") => Ok(None),
            Some(s @ ("pending" | "confirmed" | "cancelled")) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(
                "status",
                "must be pending, confirmed or cancelled",
            )),
        }
    }
}
