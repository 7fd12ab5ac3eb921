//! The consumer: every event of `orders`, `payments` and `shipping` goes through [`Mailer`],
//! which writes the email [`compose`](crate::messages::compose) makes of it.
//!
//! It writes only through the consumer's transaction, which also records the event id in the
//! inbox, and the mailbox is unique on `event_id` besides: a redelivered event writes nothing.

use bazaar_messaging::{EventEnvelope, Handler, HandlerFuture};

use crate::messages::{compose, Outcome};
use crate::repository;

/// The sources whose events become emails.
pub const SOURCES: [&str; 3] = ["orders", "payments", "shipping"];

/// Writes the email an event calls for; ignores events that call for none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mailer;

impl Handler for Mailer {
    fn handle<'a>(
        &'a self,
        tx: &'a mut bazaar_kit::storage::Connection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            match compose(event)? {
                Outcome::Ignore => {}
                Outcome::Address { user_id, email } => {
                    repository::remember_address(tx, &user_id, &email).await?;
                }
                Outcome::Email(message) => {
                    // An email that carries its address (an order's confirmation or
                    // cancellation) is not remembered: that order's `order.placed`, earlier in
                    // the same feed, gave the same address, and a later order may have given a
                    // newer one since.
                    let written =
                        repository::write_email(tx, &event.id, &event.event_type, &message).await?;
                    if written {
                        tracing::info!(
                            event = %event.id, kind = %event.event_type, user = %message.user_id,
                            "email written"
                        );
                    }
                }
            }
            Ok(())
        })
    }
}
