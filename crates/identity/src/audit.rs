//! The audit trail: every security-relevant action (logins, token issuance and revocation,
//! code and refresh-token reuse, client registration, key rotation, password changes) goes
//! through [`audit`] into the kit's hash-chained, append-only `audit_log` table in identity's
//! own database (`bazaar_kit::audit`), so `bazaar audit verify` can prove nothing was changed.
//!
//! Records never contain a secret: no passwords, tokens or codes, only ids, client ids,
//! addresses and key ids. Appending is best effort: a failure is logged as an error but does
//! not fail the request, because refusing logins whenever the audit table is contended would
//! turn an audit hiccup into an outage (the log line still records the event). The exception is
//! `token.issued`: built with [`event`], it commits with the token's record in the batch of
//! `issuance`, and the token is answered only after that commit.

use bazaar_kit::audit::{AuditEvent, AuditLog};
use serde_json::{Map, Value};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    Logout,
    UserRegistered,
    PasswordChanged,
    CodeIssued,
    TokenIssued,
    TokenRevoked,
    CodeReused,
    RefreshReused,
    RefreshRetried,
    ClientCreated,
    KeyRotated,
}

impl Event {
    /// The dotted action name stored in the audit log.
    pub fn action(self) -> &'static str {
        match self {
            Event::LoginSucceeded | Event::LoginFailed => "login",
            Event::LoginThrottled => "login.throttled",
            Event::Logout => "logout",
            Event::UserRegistered => "user.registered",
            Event::PasswordChanged => "password.changed",
            Event::CodeIssued => "code.issued",
            Event::TokenIssued => "token.issued",
            Event::TokenRevoked => "token.revoked",
            Event::CodeReused => "code.reused",
            Event::RefreshReused => "refresh_token.reused",
            Event::RefreshRetried => "refresh_token.retried",
            Event::ClientCreated => "client.created",
            Event::KeyRotated => "key.rotated",
        }
    }

    /// Attempts refused or attacks detected are failures; everything else succeeded.
    pub fn failed(self) -> bool {
        matches!(
            self,
            Event::LoginFailed
                | Event::LoginThrottled
                | Event::CodeReused
                | Event::RefreshReused
                | Event::RefreshRetried
        )
    }
}

/// Records `event` by `actor` (a user id, client id or email). In `details`, `address` becomes
/// the record's source and `target` its target; the rest is kept as JSON details.
pub async fn audit(log: &AuditLog, event: Event, actor: &str, details: &[(&str, &str)]) {
    if let Err(error) = log.append(self::event(event, actor, details)).await {
        tracing::error!(%error, action = event.action(), actor, "writing the audit record failed");
    }
}

/// The record [`audit`] appends, for a caller that appends it inside its own transaction.
pub fn event(event: Event, actor: &str, details: &[(&str, &str)]) -> AuditEvent {
    let mut record = AuditEvent::new(actor, event.action());
    if event.failed() {
        record = record.failed();
    }
    let mut extra = Map::new();
    for (key, value) in details {
        match *key {
            "address" => record = record.source(*value),
            "target" => record = record.target(*value),
            _ => {
                extra.insert((*key).to_owned(), Value::String((*value).to_owned()));
            }
        }
    }
    if !extra.is_empty() {
        record = record.details(Value::Object(extra));
    }
    record
}
