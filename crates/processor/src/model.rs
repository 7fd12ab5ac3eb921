//! The processor's wire contract (what merchants send and get back), input validation, the
//! card rules (Luhn, brand, expiry) and the table of test cards with their scripted behaviour.
//!
//! The authorization state machine lives here too ([`Authorization::apply`]), as a pure
//! function, so the repository only has to store what it decides.

use axum::http::StatusCode;
use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Largest amount one authorization may carry, in minor units (a sanity bound, like a real
/// processor's per-transaction limit).
pub const MAX_AMOUNT_MINOR: i64 = 100_000_000_000;
/// Longest idempotency key or reference accepted, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// A 400 naming `field`, with a Stripe-like `code`: card data that cannot be a card.
pub fn card_error(code: &'static str, field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, "The card data is invalid")
        .field(field)
        .detail(detail)
}

/// `POST /v1/tokens`: a card to keep in the vault.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CardInput {
    /// The primary account number; spaces and dashes are ignored.
    #[schema(example = "4242 4242 4242 4242")]
    pub number: String,
    /// 1 to 12.
    #[schema(example = 12)]
    pub exp_month: i64,
    /// Four digits.
    #[schema(example = 2030)]
    pub exp_year: i64,
    /// Three digits (four for American Express). Checked, never stored.
    #[schema(example = "123")]
    pub cvc: String,
    #[serde(default)]
    pub holder: Option<String>,
}

/// A card as the vault keeps it. `number` never leaves the processor.
#[derive(Clone, PartialEq, Eq)]
pub struct Card {
    pub token: String,
    pub number: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub holder: Option<String>,
}

impl std::fmt::Debug for Card {
    // The number must never reach a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("token", &self.token)
            .field("brand", &self.brand)
            .field("last4", &self.last4)
            .finish_non_exhaustive()
    }
}

/// The answer to `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CardToken {
    /// `tok_...`: what authorizations name the card by.
    pub token: String,
    /// `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

impl CardInput {
    /// Checks the card and returns it normalised (digits only), ready for the vault.
    pub fn validate(&self) -> Result<Card, ApiError> {
        let number = normalize_number(&self.number)?;
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
        let brand = brand_of(&number);
        let cvc_len = if brand == "amex" { 4 } else { 3 };
        if self.cvc.len() != cvc_len || !self.cvc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(card_error(
                "invalid_cvc",
                "cvc",
                format!("cvc must be {cvc_len} digits"),
            ));
        }
        let holder = match self.holder.as_deref().map(str::trim) {
            Some(h) if h.chars().count() > 200 => {
                return Err(ApiError::invalid(
                    "holder",
                    "holder is at most 200 characters",
                ))
            }
            Some("") | None => None,
            Some(h) => Some(h.to_owned()),
        };
        Ok(Card {
            token: format!("tok_{}", uuid::Uuid::new_v4().simple()),
            last4: number[number.len() - 4..].to_owned(),
            brand: brand.to_owned(),
            number,
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            holder,
        })
    }
}

/// The digits of a card number: spaces and dashes dropped, 12 to 19 digits, Luhn-valid.
pub fn normalize_number(number: &str) -> Result<String, ApiError> {
    let digits: String = number.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(card_error(
            "invalid_number",
            "number",
            "the card number must contain only digits",
        ));
    }
    if !(12..=19).contains(&digits.len()) {
        return Err(card_error(
            "invalid_number",
            "number",
            "the card number must have 12 to 19 digits",
        ));
    }
    if !luhn_valid(&digits) {
        return Err(card_error(
            "incorrect_number",
            "number",
            "the card number fails the Luhn check",
        ));
    }
    Ok(digits)
}

/// The Luhn (mod 10) check every card number passes.
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

/// The card network, from the number's prefix.
pub fn brand_of(digits: &str) -> &'static str {
    let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
    match (prefix(1), prefix(2), prefix(4)) {
        (Some(4), _, _) => "visa",
        (_, Some(34 | 37), _) => "amex",
        (_, Some(51..=55), _) | (_, _, Some(2221..=2720)) => "mastercard",
        (_, Some(65), _) | (_, _, Some(6011)) => "discover",
        _ => "unknown",
    }
}

/// What a test card makes the processor do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Approved.
    Success,
    /// Declined with the card's `decline_code`.
    Declined,
    /// A 500 problem; nothing is authorized or recorded.
    ProcessorError,
    /// Approved and recorded, but the answer is held for `timeout_delay_ms`: the caller times
    /// out, and a retry with the same `Idempotency-Key` gets the recorded answer at once.
    Timeout,
    /// Approved, answered after `slow_delay_ms`.
    Slow,
}

/// One documented test card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestCard {
    pub number: String,
    pub brand: String,
    pub behaviour: Behaviour,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub description: String,
}

/// `GET /v1/test-cards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestCardList {
    pub test_cards: Vec<TestCard>,
    /// What any other Luhn-valid number does.
    pub other_numbers: String,
}

/// The scripted cards: (number, behaviour, decline code, description).
const TEST_CARDS: &[(&str, Behaviour, Option<&str>, &str)] = &[
    ("4242424242424242", Behaviour::Success, None, "Approved."),
    (
        "5555555555554444",
        Behaviour::Success,
        None,
        "Approved (Mastercard).",
    ),
    (
        "4000000000000002",
        Behaviour::Declined,
        Some("card_declined"),
        "Declined: card_declined.",
    ),
    (
        "4000000000009995",
        Behaviour::Declined,
        Some("insufficient_funds"),
        "Declined: insufficient_funds.",
    ),
    (
        "4000000000000069",
        Behaviour::Declined,
        Some("expired_card"),
        "Declined: expired_card.",
    ),
    (
        "4000000000000119",
        Behaviour::ProcessorError,
        None,
        "Processor error: a 500 problem, nothing authorized.",
    ),
    (
        "4000000000000259",
        Behaviour::Timeout,
        None,
        "Approved and recorded, but the answer is held for timeout_delay_ms (default 30 s): \
         the caller times out; a retry with the same Idempotency-Key gets the recorded answer \
         at once.",
    ),
    (
        "4000000000003220",
        Behaviour::Slow,
        None,
        "Approved after slow_delay_ms (default 1.5 s).",
    ),
];

/// Every documented test card.
pub fn test_cards() -> TestCardList {
    TestCardList {
        test_cards: TEST_CARDS
            .iter()
            .map(|(number, behaviour, code, description)| TestCard {
                number: (*number).to_owned(),
                brand: brand_of(number).to_owned(),
                behaviour: *behaviour,
                decline_code: code.map(str::to_owned),
                description: (*description).to_owned(),
            })
            .collect(),
        other_numbers: "Any other Luhn-valid number is approved (a card whose expiry month is \
                        past is declined with expired_card)."
            .to_owned(),
    }
}

/// What `number` does when authorized, and the decline code if it is declined.
pub fn behaviour_of(number: &str) -> (Behaviour, Option<&'static str>) {
    TEST_CARDS
        .iter()
        .find(|(n, ..)| *n == number)
        .map_or((Behaviour::Success, None), |(_, b, code, _)| (*b, *code))
}

/// Whether a card expiring at the end of `exp_month`/`exp_year` has expired at `now_ms`.
pub fn is_expired(exp_month: i64, exp_year: i64, now_ms: i64) -> bool {
    let (year, month) = year_month(now_ms);
    (exp_year, exp_month) < (year, month)
}

/// The UTC calendar year and month of a Unix time in milliseconds (Howard Hinnant's
/// days-to-civil algorithm; no date library needed for one comparison).
pub fn year_month(now_ms: i64) -> (i64, i64) {
    let days = now_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// `POST /v1/authorizations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeInput {
    /// A `tok_...` from `POST /v1/tokens`.
    pub token: String,
    /// Minor units, more than 0.
    #[schema(example = 2499)]
    pub amount_minor: i64,
    /// ISO 4217, three uppercase letters.
    #[schema(example = "USD")]
    pub currency: String,
    /// The merchant's reference (the order id), to find authorizations for reconciliation.
    pub reference: String,
}

impl AuthorizeInput {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.token.trim().is_empty() {
            return Err(ApiError::invalid("token", "token is required"));
        }
        validate_amount("amount_minor", self.amount_minor)?;
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "currency",
                "currency must be an ISO 4217 code: three uppercase letters",
            ));
        }
        if self.reference.trim().is_empty() || self.reference.chars().count() > MAX_KEY_CHARS {
            return Err(ApiError::invalid(
                "reference",
                format!("reference must have 1 to {MAX_KEY_CHARS} characters"),
            ));
        }
        Ok(())
    }
}

fn validate_amount(field: &str, amount: i64) -> Result<(), ApiError> {
    if amount <= 0 || amount > MAX_AMOUNT_MINOR {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be between 1 and {MAX_AMOUNT_MINOR}"),
        ));
    }
    Ok(())
}

/// Optional body of capture and refund: a partial amount (the whole remainder by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AmountInput {
    #[serde(default)]
    pub amount_minor: Option<i64>,
}

impl AmountInput {
    pub fn validate(&self) -> Result<(), ApiError> {
        match self.amount_minor {
            Some(amount) => validate_amount("amount_minor", amount),
            None => Ok(()),
        }
    }
}

/// Whether the processor approved the authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Declined,
}

/// Where an authorization is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Authorized,
    Captured,
    Voided,
    Refunded,
    Declined,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Authorized => "authorized",
            State::Captured => "captured",
            State::Voided => "voided",
            State::Refunded => "refunded",
            State::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "authorized" => State::Authorized,
            "captured" => State::Captured,
            "voided" => State::Voided,
            "refunded" => State::Refunded,
            "declined" => State::Declined,
            _ => return None,
        })
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approved" => Some(Outcome::Approved),
            "declined" => Some(Outcome::Declined),
            _ => None,
        }
    }
}

/// An authorization, as answered and as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Authorization {
    /// `auth_...`.
    pub id: String,
    pub status: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub reference: String,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub state: State,
    /// The card's token, brand and last four digits.
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `GET /v1/authorizations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizationList {
    /// Oldest first.
    pub authorizations: Vec<Authorization>,
}

/// Query of `GET /v1/authorizations`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only authorizations with this reference (order id).
    pub reference: Option<String>,
    /// At most this many (default and maximum 500), the most recent ones.
    pub limit: Option<u32>,
}

/// A change to an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Capture this much (default: everything authorized).
    Capture(Option<i64>),
    /// Release the hold.
    Void,
    /// Give back this much (default: everything captured and not yet refunded).
    Refund(Option<i64>),
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::Capture(_) => "capture",
            Transition::Void => "void",
            Transition::Refund(_) => "refund",
        }
    }
}

/// Why a transition is refused (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTransition(pub String);

impl Authorization {
    /// The authorization after `transition` at `now_ms`, or why it cannot happen. Captures are
    /// single (one capture of up to the authorized amount, the rest released); refunds may be
    /// partial and repeated until everything captured is given back.
    pub fn apply(&self, transition: Transition, now_ms: i64) -> Result<Self, InvalidTransition> {
        let refuse = |what: &str| {
            Err(InvalidTransition(format!(
                "cannot {what} authorization {} in state {}",
                self.id,
                self.state.as_str()
            )))
        };
        let mut next = self.clone();
        next.updated_at_ms = now_ms;
        match transition {
            Transition::Capture(amount) => {
                if self.state != State::Authorized {
                    return refuse("capture");
                }
                let amount = amount.unwrap_or(self.amount_minor);
                if amount > self.amount_minor {
                    return Err(InvalidTransition(format!(
                        "cannot capture {amount}: only {} is authorized",
                        self.amount_minor
                    )));
                }
                next.captured_minor = amount;
                next.state = State::Captured;
            }
            Transition::Void => {
                if self.state != State::Authorized {
                    return refuse("void");
                }
                next.state = State::Voided;
            }
            Transition::Refund(amount) => {
                if self.state != State::Captured {
                    return refuse("refund");
                }
                let refundable = self.captured_minor - self.refunded_minor;
                let amount = amount.unwrap_or(refundable);
                if amount > refundable {
                    return Err(InvalidTransition(format!(
                        "cannot refund {amount}: only {refundable} is refundable"
                    )));
                }
                next.refunded_minor += amount;
                if next.refunded_minor == self.captured_minor {
                    next.state = State::Refunded;
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_the_test_cards_and_rejects_typos() {
        for card in test_cards().test_cards {
            assert!(luhn_valid(&card.number), "{}", card.number);
        }
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn brands_follow_the_prefixes() {
        assert_eq!(brand_of("4242424242424242"), "visa");
        assert_eq!(brand_of("5555555555554444"), "mastercard");
        assert_eq!(brand_of("2223003122003222"), "mastercard");
        assert_eq!(brand_of("378282246310005"), "amex");
        assert_eq!(brand_of("6011111111111117"), "discover");
        assert_eq!(brand_of("3056930009020004"), "unknown");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(year_month(0), (1970, 1));
        // 2024-02-29T12:00:00Z
        assert_eq!(year_month(1_709_208_000_000), (2024, 2));
        // 2025-12-31T23:59:59Z
        assert_eq!(year_month(1_767_225_599_000), (2025, 12));
        assert!(is_expired(1, 2025, 1_767_225_599_000));
        assert!(!is_expired(12, 2025, 1_767_225_599_000));
    }
}
