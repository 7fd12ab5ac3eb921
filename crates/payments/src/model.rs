//! The payments service's wire contract (docs/shop.md, "payments"), event payloads, and the
//! validation of what clients send.
//!
//! Card numbers pass through this service on their way to the processor's vault and nowhere
//! else: [`CardInput`] has a redacting `Debug`, and nothing here is ever stored with a number.

use axum::http::StatusCode;
use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest idempotency key, order id, user id or card token accepted, in characters.
pub const MAX_ID_CHARS: usize = 200;
/// Largest amount accepted, in minor units (the processor's per-transaction bound).
pub const MAX_AMOUNT_MINOR: i64 = 100_000_000_000;

/// Money: integer minor units and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    #[schema(example = 2499)]
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

impl Money {
    fn validate(&self, field: &str) -> Result<(), ApiError> {
        if self.amount_minor <= 0 || self.amount_minor > MAX_AMOUNT_MINOR {
            return Err(ApiError::invalid(
                format!("{field}.amount_minor"),
                format!("amount_minor must be between 1 and {MAX_AMOUNT_MINOR}"),
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                format!("{field}.currency"),
                "currency must be an ISO 4217 code: three uppercase letters",
            ));
        }
        Ok(())
    }
}

/// A 400 naming `field`: card data that cannot be a card.
pub fn card_error(code: &'static str, field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, "The card data is invalid")
        .field(field)
        .detail(detail)
}

/// `POST /api/v1/payments/cards`: the card to tokenize. Forwarded to the processor, never kept.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CardInput {
    /// Spaces and dashes are ignored.
    #[schema(example = "4242 4242 4242 4242")]
    pub number: String,
    #[schema(example = 12)]
    pub exp_month: i64,
    #[schema(example = 2030)]
    pub exp_year: i64,
    #[schema(example = "123")]
    pub cvc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl std::fmt::Debug for CardInput {
    // Card numbers and CVCs must never reach a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardInput")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish_non_exhaustive()
    }
}

impl CardInput {
    /// Checks the card locally (so an obvious typo never costs a processor call) and returns
    /// it with the number reduced to its digits.
    pub fn validate(&self) -> Result<CardInput, ApiError> {
        let number: String = self
            .number
            .chars()
            .filter(|c| *c != ' ' && *c != '-')
            .collect();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(card_error(
                "invalid_number",
                "number",
                "the card number must contain only digits",
            ));
        }
        if !(12..=19).contains(&number.len()) {
            return Err(card_error(
                "invalid_number",
                "number",
                "the card number must have 12 to 19 digits",
            ));
        }
        if !luhn_valid(&number) {
            return Err(card_error(
                "incorrect_number",
                "number",
                "the card number fails the Luhn check",
            ));
        }
        if !(1..=12).contains(&self.exp_month) {
            return Err(card_error(
                "invalid_expiry_month",
                "exp_month",
                "exp_month must be between 1 and 12",
            ));
        }
        if !(2000..=2099).contains(&self.exp_year) {
            return Err(card_error(
                "invalid_expiry_year",
                "exp_year",
                "exp_year must be a four-digit year (2000 to 2099)",
            ));
        }
        if !(3..=4).contains(&self.cvc.len()) || !self.cvc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(card_error(
                "invalid_cvc",
                "cvc",
                "cvc must be 3 or 4 digits",
            ));
        }
        if self
            .holder
            .as_ref()
            .is_some_and(|h| h.chars().count() > 200)
        {
            return Err(ApiError::invalid(
                "holder",
                "holder is at most 200 characters",
            ));
        }
        Ok(CardInput {
            number,
            ..self.clone()
        })
    }
}

/// The Luhn (mod 10) check.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// A saved card: the processor's token and what may be shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Card {
    /// The processor's token; what `authorize` takes.
    pub card_token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

/// A saved card and its owner, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCard {
    pub card: Card,
    pub user_id: String,
    pub created_at_ms: i64,
}

/// `GET /api/v1/payments/cards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CardList {
    pub cards: Vec<Card>,
}

/// `POST /internal/v1/payments/authorize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeInput {
    /// The caller's key: a retry with it returns the same payment and never charges twice.
    pub idempotency_key: String,
    pub order_id: String,
    /// The paying user; the card must be theirs.
    pub user_id: String,
    pub amount: Money,
    pub card_token: String,
}

fn validate_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > MAX_ID_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("{field} must have 1 to {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

impl AuthorizeInput {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_id("idempotency_key", &self.idempotency_key)?;
        validate_id("order_id", &self.order_id)?;
        validate_id("user_id", &self.user_id)?;
        self.amount.validate("amount")?;
        validate_id("card_token", &self.card_token)
    }
}

/// `POST /internal/v1/payments/{id}/capture`, `/void`, `/refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperationInput {
    pub idempotency_key: String,
}

impl OperationInput {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_id("idempotency_key", &self.idempotency_key)
    }
}

/// Where a payment is. `pending` is internal: the processor has been (or is being) asked and
/// its answer is not stored yet; a retry of the authorization with the same key resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Authorized,
    Declined,
    Captured,
    Voided,
    Refunded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Authorized => "authorized",
            Status::Declined => "declined",
            Status::Captured => "captured",
            Status::Voided => "voided",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "authorized" => Status::Authorized,
            "declined" => Status::Declined,
            "captured" => Status::Captured,
            "voided" => Status::Voided,
            "refunded" => Status::Refunded,
            _ => return None,
        })
    }
}

/// A payment, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub amount: Money,
    pub last4: String,
    pub card_token: String,
    /// The processor's authorization id (`auth_...`), once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_authorization_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A payment as stored: the answer plus what only the service needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayment {
    pub payment: Payment,
    pub idempotency_key: String,
    /// The `Idempotency-Key` sent to the processor for the authorization; the same on every
    /// retry, so the processor answers a retry with what it recorded.
    pub processor_key: String,
}

/// `GET .../payments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentList {
    pub payments: Vec<Payment>,
}

/// Query of the payment listings.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the payments of this order.
    pub order_id: Option<String>,
}

/// A capture, void or refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Capture,
    Void,
    Refund,
}

impl Operation {
    /// Its name: the processor's path segment and the `crash_after_processor_call` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "capture" => Some(Operation::Capture),
            "void" => Some(Operation::Void),
            "refund" => Some(Operation::Refund),
            _ => None,
        }
    }

    /// The status a payment must have for this operation.
    pub fn from_status(self) -> Status {
        match self {
            Operation::Capture | Operation::Void => Status::Authorized,
            Operation::Refund => Status::Captured,
        }
    }

    /// The status it leaves the payment in.
    pub fn to_status(self) -> Status {
        match self {
            Operation::Capture => Status::Captured,
            Operation::Void => Status::Voided,
            Operation::Refund => Status::Refunded,
        }
    }

    /// The processor authorization state that means it happened.
    pub fn processor_state(self) -> &'static str {
        self.to_status().as_str()
    }

    /// The event it publishes.
    pub fn event_type(self) -> &'static str {
        match self {
            Operation::Capture => "payment.captured",
            Operation::Void => "payment.voided",
            Operation::Refund => "payment.refunded",
        }
    }
}

/// A capture, void or refund request, recorded under the caller's key before the processor is
/// called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOperation {
    pub idempotency_key: String,
    pub payment_id: String,
    pub operation: Operation,
    pub processor_key: String,
    /// Whether the processor's answer was stored (the payment's status changed).
    pub done: bool,
}

/// Payload of `payment.authorized`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedEvent {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: Money,
    pub last4: String,
}

/// Payload of `payment.declined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclinedEvent {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: Money,
    pub last4: String,
    pub decline_code: String,
}

/// Payload of `payment.captured`, `payment.voided` and `payment.refunded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: Money,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("5555555555554444"));
        assert!(luhn_valid("4000000000000259"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn card_input_debug_hides_the_number() {
        let card = CardInput {
            number: "4242424242424242".into(),
            exp_month: 1,
            exp_year: 2030,
            cvc: "123".into(),
            holder: None,
        };
        let debug = format!("{card:?}");
        assert!(!debug.contains("4242424242424242"));
        assert!(!debug.contains("123"));
    }
}
