//! What each event says to the customer: the subject and plain-text body of its email, written
//! for a person ("Your order 1234 is confirmed", "Total: $57.97"), composed from the event alone
//! so it is the same on every delivery and testable without a database.

use bazaar_messaging::{EventEnvelope, HandlerError};
use serde::Deserialize;

/// An email to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub user_id: String,
    /// The address the event gave, if any.
    pub email: Option<String>,
    pub order_id: Option<String>,
    pub subject: String,
    pub body: String,
}

/// An amount as events carry it: integer minor units and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize)]
struct OrderLine {
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct OrderConfirmed {
    order_id: String,
    user_id: String,
    #[serde(default)]
    email: Option<String>,
    total: Money,
    #[serde(default)]
    lines: Vec<OrderLine>,
    #[serde(default)]
    shipment_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OrderCancelled {
    order_id: String,
    user_id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `order.placed`: no email of its own (the confirmation or the cancellation follows), but it
/// tells us the customer's address early.
#[derive(Debug, Deserialize)]
struct OrderPlaced {
    user_id: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PaymentEvent {
    order_id: String,
    user_id: String,
    amount: Money,
}

#[derive(Debug, Deserialize)]
struct ShipmentCreated {
    order_id: String,
    user_id: String,
    tracking_number: String,
    fee: Money,
}

#[derive(Debug, Deserialize)]
struct ShipmentStatusChanged {
    order_id: String,
    user_id: String,
    tracking_number: String,
    status: String,
}

/// The signature every email ends with.
const SIGN_OFF: &str = "Thank you for shopping with bazaar.\n\n-- The bazaar team\n";

/// What an event means for the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Write this email.
    Email(Message),
    /// No email, but the event gives the user's address.
    Address { user_id: String, email: String },
    /// Nothing to do with this event.
    Ignore,
}

/// The email `event` calls for. A payload that does not match its type is an error (the event
/// is retried and, if it never decodes, shows up as consumer lag rather than vanishing).
pub fn compose(event: &EventEnvelope) -> Result<Outcome, HandlerError> {
    let message = match event.event_type.as_str() {
        "order.placed" => {
            let placed: OrderPlaced = event.decode()?;
            return Ok(match address(placed.email) {
                Some(email) => Outcome::Address {
                    user_id: placed.user_id,
                    email,
                },
                None => Outcome::Ignore,
            });
        }
        "order.confirmed" => {
            let order: OrderConfirmed = event.decode()?;
            let units: i64 = order.lines.iter().map(|l| l.quantity).sum();
            let mut body = format!(
                "Hello,\n\nGood news: your order {} is confirmed and we are getting it ready.\n\n\
                 Items: {}\nTotal: {}\n",
                order.order_id,
                plural(units, "item", "items"),
                format_money(&order.total),
            );
            if let Some(shipment) = order.shipment_id.filter(|s| !s.is_empty()) {
                body.push_str(&format!("Shipment: {shipment}\n"));
            }
            body.push_str("\nWe will write again when it is on its way.\n\n");
            body.push_str(SIGN_OFF);
            Message {
                subject: format!("Your order {} is confirmed", order.order_id),
                body,
                email: address(order.email),
                user_id: order.user_id,
                order_id: Some(order.order_id),
            }
        }
        "order.cancelled" => {
            let order: OrderCancelled = event.decode()?;
            let why = order
                .reason
                .as_deref()
                .map(reason_text)
                .unwrap_or_else(|| "it could not be completed".to_owned());
            Message {
                subject: format!("Your order {} was cancelled", order.order_id),
                body: format!(
                    "Hello,\n\nWe are sorry: your order {} was cancelled because {why}.\n\n\
                     If your card was charged, the charge is reversed and we will email you when \
                     the refund is issued. Items held for you have been released.\n\n{SIGN_OFF}",
                    order.order_id,
                ),
                email: address(order.email),
                user_id: order.user_id,
                order_id: Some(order.order_id),
            }
        }
        "payment.captured" => {
            let payment: PaymentEvent = event.decode()?;
            Message {
                subject: format!("Payment received for order {}", payment.order_id),
                body: format!(
                    "Hello,\n\nWe have received your payment of {} for order {}.\n\n{SIGN_OFF}",
                    format_money(&payment.amount),
                    payment.order_id,
                ),
                email: None,
                user_id: payment.user_id,
                order_id: Some(payment.order_id),
            }
        }
        "payment.refunded" => {
            let payment: PaymentEvent = event.decode()?;
            Message {
                subject: format!("Refund issued for order {}", payment.order_id),
                body: format!(
                    "Hello,\n\nWe have refunded {} for order {} to the card you paid with. \
                     Depending on your bank, it can take 5 to 10 business days to appear on \
                     your statement.\n\n{SIGN_OFF}",
                    format_money(&payment.amount),
                    payment.order_id,
                ),
                email: None,
                user_id: payment.user_id,
                order_id: Some(payment.order_id),
            }
        }
        "shipment.created" => {
            let shipment: ShipmentCreated = event.decode()?;
            Message {
                subject: format!("Your order {} is ready to ship", shipment.order_id),
                body: format!(
                    "Hello,\n\nYour order {} has been packed and will ship soon.\n\n\
                     Tracking number: {}\nShipping: {}\n\nWe will write again when it is on \
                     its way.\n\n{SIGN_OFF}",
                    shipment.order_id,
                    shipment.tracking_number,
                    format_money(&shipment.fee),
                ),
                email: None,
                user_id: shipment.user_id,
                order_id: Some(shipment.order_id),
            }
        }
        "shipment.status_changed" => {
            let shipment: ShipmentStatusChanged = event.decode()?;
            let order = &shipment.order_id;
            let (subject, news) = match shipment.status.as_str() {
                "label_created" => (
                    format!("A shipping label was created for your order {order}"),
                    format!("A shipping label was created for your order {order}; the carrier will pick it up shortly."),
                ),
                "in_transit" => (
                    format!("Your order {order} is on its way"),
                    format!("Your order {order} is on its way."),
                ),
                "delivered" => (
                    format!("Your order {order} was delivered"),
                    format!("Your order {order} was delivered. We hope you enjoy it!"),
                ),
                other => (
                    format!("Shipping update for your order {order}"),
                    format!(
                        "The shipment of your order {order} is now: {}.",
                        other.replace('_', " ")
                    ),
                ),
            };
            Message {
                subject,
                body: format!(
                    "Hello,\n\n{news}\n\nTracking number: {}\n\n{SIGN_OFF}",
                    shipment.tracking_number
                ),
                email: None,
                user_id: shipment.user_id,
                order_id: Some(shipment.order_id),
            }
        }
        _ => return Ok(Outcome::Ignore),
    };
    Ok(Outcome::Email(message))
}

/// An address worth keeping: present and plausibly an address.
fn address(email: Option<String>) -> Option<String> {
    email
        .map(|e| e.trim().to_owned())
        .filter(|e| e.contains('@'))
}

fn plural(n: i64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A cancellation reason (a code such as `payment_declined`) as the end of a sentence.
fn reason_text(reason: &str) -> String {
    match reason {
        "payment_declined" => "your payment was declined".to_owned(),
        "insufficient_stock" | "out_of_stock" => "an item is no longer in stock".to_owned(),
        "unshippable_destination" => "we cannot ship to the address given".to_owned(),
        "payment_failed" | "payment_error" => "your payment could not be processed".to_owned(),
        "expired" | "timeout" => "it could not be completed in time".to_owned(),
        "cancelled_by_customer" | "customer_request" => "you asked us to cancel it".to_owned(),
        "" => "it could not be completed".to_owned(),
        other => other.replace('_', " "),
    }
}

/// Digits after the decimal point of a currency (ISO 4217 minor units); 2 unless listed.
pub fn minor_units(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// An amount for people: `$1,234.56`, `€12.00`, `¥1,200`, `CHF 9.90`.
pub fn format_money(money: &Money) -> String {
    let digits = minor_units(&money.currency);
    let scale = 10u64.pow(digits);
    let magnitude = money.amount_minor.unsigned_abs();
    let whole = group_thousands(magnitude / scale);
    let number = if digits == 0 {
        whole
    } else {
        format!(
            "{whole}.{:0width$}",
            magnitude % scale,
            width = digits as usize
        )
    };
    let sign = if money.amount_minor < 0 { "-" } else { "" };
    match money.currency.as_str() {
        "USD" => format!("{sign}${number}"),
        "EUR" => format!("{sign}€{number}"),
        "GBP" => format!("{sign}£{number}"),
        "JPY" => format!("{sign}¥{number}"),
        code => format!("{sign}{code} {number}"),
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money {
            amount_minor,
            currency: currency.to_owned(),
        }
    }

    #[test]
    fn formats_money_with_the_currencys_minor_units() {
        assert_eq!(format_money(&money(5797, "USD")), "$57.97");
        assert_eq!(format_money(&money(123456789, "USD")), "$1,234,567.89");
        assert_eq!(format_money(&money(5, "EUR")), "€0.05");
        assert_eq!(format_money(&money(1200, "JPY")), "¥1,200");
        assert_eq!(format_money(&money(12345, "KWD")), "KWD 12.345");
        assert_eq!(format_money(&money(990, "CHF")), "CHF 9.90");
        assert_eq!(format_money(&money(-250, "GBP")), "-£2.50");
        assert_eq!(format_money(&money(0, "USD")), "$0.00");
    }
}
