//! Helpers for tests that prove the NATS JetStream profile (the PostgreSQL ones live in
//! `bazaar_kit::storage::testing`).

/// Environment variable naming the NATS server (with JetStream) tests may use.
pub const NATS_ENV: &str = "BAZAAR_TEST_NATS_URL";

/// The NATS URL tests may use; `None` (after saying so) when [`NATS_ENV`] is unset.
pub fn nats_url(label: &str) -> Option<String> {
    match std::env::var(NATS_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{NATS_ENV} is not set: skipping the NATS test {label}");
            None
        }
    }
}

/// A stream name of its own for one test (`TEST_<uuid>`), so tests never see each other's
/// events; set it as `CommonConfig::nats_stream`.
pub fn stream_name() -> String {
    format!("TEST_{}", uuid::Uuid::new_v4().simple()).to_uppercase()
}
