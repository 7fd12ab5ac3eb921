//! The events the cart consumes: `order.confirmed` from `orders` removes the ordered
//! quantities from the buyer's cart, so a confirmed order no longer sits in it.
//!
//! The handler writes only through the consumer's transaction, which also records the event id
//! in the inbox: a redelivered event finds its id there and changes nothing.

use bazaar_messaging::{EventEnvelope, Handler, HandlerFuture};
use serde::Deserialize;

use crate::model::Owner;
use crate::repository;

/// The source whose events the cart consumes.
pub const ORDERS: &str = "orders";

/// What the cart reads of an `order.confirmed` payload (docs/shop.md; other fields ignored).
#[derive(Debug, Deserialize)]
struct OrderConfirmed {
    user_id: String,
    #[serde(default)]
    lines: Vec<OrderedLine>,
}

#[derive(Debug, Deserialize)]
struct OrderedLine {
    product_id: String,
    quantity: i64,
}

/// Applies `order.confirmed`; ignores every other event of `orders`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnOrderConfirmed;

impl Handler for OnOrderConfirmed {
    fn handle<'a>(
        &'a self,
        tx: &'a mut bazaar_kit::storage::Connection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            if event.event_type != "order.confirmed" {
                return Ok(());
            }
            let order: OrderConfirmed = event.decode()?;
            let lines: Vec<(String, i64)> = order
                .lines
                .into_iter()
                .map(|l| (l.product_id, l.quantity))
                .collect();
            repository::remove_ordered(tx, &Owner::User(order.user_id).key(), &lines).await?;
            tracing::debug!(order = %event.aggregate_id, "ordered items removed from the cart");
            Ok(())
        })
    }
}
