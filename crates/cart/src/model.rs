//! The cart's wire contract (request and response DTOs, as docs/shop.md fixes them) and the
//! validation of what clients send, plus the two kinds of cart owner.

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest product id accepted, in characters (the catalog's own limit).
pub const MAX_PRODUCT_ID_CHARS: usize = 128;

/// An amount: integer minor units (cents) and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    #[schema(example = 2499)]
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

/// Whose cart a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A signed-in user (the token's `sub`).
    User(String),
    /// An anonymous visitor, identified by the UUID in `X-Cart-Session`.
    Session(uuid::Uuid),
}

impl Owner {
    /// The key the cart is stored under. The prefixes keep a user id that happens to look
    /// like a UUID from ever meeting an anonymous cart.
    pub fn key(&self) -> String {
        match self {
            Owner::User(sub) => format!("user:{sub}"),
            Owner::Session(id) => format!("session:{}", id.hyphenated()),
        }
    }
}

/// One line of a cart, priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CartLine {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    /// Public URL of the product's first image, if it has one.
    pub image: Option<String>,
    pub unit_price: Money,
    pub quantity: i64,
    /// `unit_price × quantity`.
    pub line_total: Money,
    /// Weight of one unit.
    pub weight_grams: i64,
    /// `false` when the catalog says the product no longer exists: the line is shown with its
    /// last known data but left out of `subtotal` and `item_count`, and cannot be ordered.
    pub available: bool,
}

/// A cart as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cart {
    /// In the order the products were first added.
    pub lines: Vec<CartLine>,
    /// Sum of the available lines' totals.
    pub subtotal: Money,
    /// Units over the available lines.
    pub item_count: i64,
    /// `true` when the catalog could not be reached for at least one line, whose price is then
    /// the last one the cart saw.
    pub prices_stale: bool,
}

/// `POST /api/v1/cart/lines`: add units of a product (to the line's quantity if it is there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AddLine {
    #[schema(example = "kitchen-espresso-cup-set")]
    pub product_id: String,
    /// Units to add (default 1); the line's quantity after adding must stay within 1..=99.
    #[serde(default = "one")]
    #[schema(example = 1)]
    pub quantity: i64,
}

fn one() -> i64 {
    1
}

/// `PUT /api/v1/cart/lines/{product_id}`: the line's new quantity; 0 removes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetQuantity {
    #[schema(example = 2)]
    pub quantity: i64,
}

/// `POST /api/v1/cart/merge`: the anonymous session whose cart joins the caller's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MergeRequest {
    #[schema(example = "0191e1a2-7c3e-7b4a-9f00-1c2d3e4f5a6b")]
    pub session_id: String,
}

/// What the cart keeps of a product: enough to show and weigh the line without the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSnapshot {
    pub sku: String,
    pub name: String,
    /// Empty when the product has no image.
    pub image: String,
    pub price: Money,
    pub weight_grams: i64,
}

/// A line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    pub product_id: String,
    pub quantity: i64,
    pub snapshot: ProductSnapshot,
    pub priced_at_ms: i64,
    pub added_at_ms: i64,
}

/// Checks a product id: the catalog's id alphabet, so it can go into a URL path unescaped.
pub fn validate_product_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_PRODUCT_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "a product id: 1-{MAX_PRODUCT_ID_CHARS} characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ),
        ))
    }
}

/// Checks a quantity against `min..=max`.
pub fn validate_quantity(quantity: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if (min..=max).contains(&quantity) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "quantity",
            format!("the quantity must be between {min} and {max}"),
        ))
    }
}

/// Parses an anonymous session id (a UUID), naming `field` when it is not one.
pub fn parse_session(field: &str, value: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(value.trim()).map_err(|_| {
        ApiError::invalid(field, "a UUID such as 0191e1a2-7c3e-7b4a-9f00-1c2d3e4f5a6b")
    })
}
