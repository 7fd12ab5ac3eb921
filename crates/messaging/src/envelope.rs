//! The event envelope: what every event looks like on every transport, and the value a
//! publisher hands to the outbox.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::consumer::HandlerError;

/// One event, as stored in an outbox, served by a feed, or carried by a JetStream message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventEnvelope {
    /// UUID v7; the deduplication key everywhere (`Nats-Msg-Id`, consumer inboxes).
    pub id: String,
    /// E.g. `order.confirmed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of `payload`, starting at 1.
    pub version: i64,
    /// The publishing service.
    pub source: String,
    /// The entity the event is about.
    pub aggregate_id: String,
    /// Position in the source's outbox: increasing, gap-free in commit order.
    pub sequence: i64,
    /// Unix milliseconds.
    pub occurred_at_ms: i64,
    /// W3C trace context of the request that caused the event.
    #[serde(default)]
    pub traceparent: Option<String>,
    pub payload: serde_json::Value,
}

impl EventEnvelope {
    /// Decodes the payload; a payload that does not match is a handler error naming the event.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_value(self.payload.clone()).map_err(|error| {
            HandlerError::new(format!(
                "{} event {} (v{}) has an unexpected payload: {error}",
                self.event_type, self.id, self.version
            ))
        })
    }

    /// An event as a publisher would have written it, for tests of consumers.
    pub fn for_test(
        source: &str,
        event_type: &str,
        aggregate_id: &str,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.to_owned(),
            version: 1,
            source: source.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: 1,
            occurred_at_ms: bazaar_kit::storage::now_ms(),
            traceparent: None,
            payload,
        }
    }
}

/// An event to append to the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub version: i64,
    pub aggregate_id: String,
    pub payload: serde_json::Value,
}

impl NewEvent {
    /// Version 1 of `event_type` about `aggregate_id`.
    pub fn new(event_type: &str, aggregate_id: &str, payload: &impl Serialize) -> Self {
        Self {
            event_type: event_type.to_owned(),
            version: 1,
            aggregate_id: aggregate_id.to_owned(),
            // Serializing a plain DTO cannot fail; a map with non-string keys would, and is a
            // programming error worth surfacing loudly in the payload rather than a panic.
            payload: serde_json::to_value(payload)
                .unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() })),
        }
    }

    /// Another schema version.
    pub fn version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }
}
