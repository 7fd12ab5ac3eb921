//! The embedded transport's publishing side: `GET /internal/v1/events` serves a service's
//! outbox as an ordered feed. A reader passes the last sequence it has (`after`); when nothing
//! is newer the request is held (long poll, up to `wait_ms`) and answered as soon as an event
//! commits, so subscribers see new events at once without busy polling.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::Router;
use bazaar_auth::{RequireService, Verifier};
use bazaar_kit::extract::Query;
use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};

use crate::envelope::EventEnvelope;
use crate::outbox::Outbox;

/// Path of the feed on every publishing service.
pub const FEED_PATH: &str = "/internal/v1/events";
/// Longest a feed request is held.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most events in one page.
pub const MAX_PAGE: i64 = 500;
/// How often a held request re-reads the outbox, for events committed by another instance of
/// the service (the in-process notification only covers this one).
const RECHECK: Duration = Duration::from_millis(250);

/// Query of a feed request.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Last sequence the reader has; 0 for the beginning.
    #[serde(default)]
    pub after: i64,
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// How long to hold the request when nothing is newer.
    #[serde(default)]
    pub wait_ms: u64,
}

fn default_limit() -> i64 {
    100
}

/// A page of the feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedPage {
    pub events: Vec<EventEnvelope>,
    /// Newest sequence in the outbox (for consumer lag).
    pub latest: i64,
    /// Oldest sequence still kept (retention); a reader behind it has missed events.
    pub oldest: i64,
}

#[derive(Clone)]
struct FeedState {
    outbox: Outbox,
    verifier: Arc<Verifier>,
}

impl FromRef<FeedState> for Arc<Verifier> {
    fn from_ref(state: &FeedState) -> Self {
        state.verifier.clone()
    }
}

/// The feed route, to merge into the service's router.
pub fn router(outbox: Outbox, verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route(FEED_PATH, get(feed))
        .with_state(FeedState { outbox, verifier })
}

async fn feed(
    State(state): State<FeedState>,
    _service: RequireService,
    Query(query): Query<FeedQuery>,
) -> Result<axum::Json<FeedPage>, ApiError> {
    if query.after < 0 {
        return Err(query_error("after", "after must be 0 or a sequence number"));
    }
    if !(1..=MAX_PAGE).contains(&query.limit) {
        return Err(query_error(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    loop {
        // Register interest before reading, so an append between the read and the wait is not
        // missed.
        let woken = state.outbox.appended();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (events, bounds) = state
            .outbox
            .read_page(query.after, query.limit)
            .await
            .map_err(ApiError::internal)?;
        let now = tokio::time::Instant::now();
        if !events.is_empty() || now >= deadline {
            let (oldest, latest) = match bounds {
                Some(bounds) => bounds,
                None => state.outbox.bounds().await.map_err(ApiError::internal)?,
            };
            return Ok(axum::Json(FeedPage {
                events,
                latest,
                oldest,
            }));
        }
        let pause = (deadline - now).min(RECHECK);
        let _ = tokio::time::timeout(pause, woken).await;
    }
}

/// 400 about a query parameter, in the same shape as the kit's `Query` rejections (a value out
/// of range is as much a bad query as one that does not parse).
fn query_error(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "invalid_query",
        "A query parameter is invalid",
    )
    .field(field)
    .detail(detail)
}
