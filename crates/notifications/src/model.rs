//! The notifications API's wire contract: the mailbox as clients read it, and the paging
//! parameters with their validation.

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::repository::{PageRequest, StoredEmail};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 20;

/// One email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// UUID v7; also the paging cursor (`before`).
    pub id: String,
    pub user_id: String,
    /// The address it is for, when an event has told us one.
    pub email: Option<String>,
    #[schema(example = "Your order 0191e1a2-7c3e-7b4a-9f00-1c2d3e4f5a6b is confirmed")]
    pub subject: String,
    /// Plain text.
    pub body: String,
    /// The event it was written for.
    pub event_id: String,
    #[schema(example = "order.confirmed")]
    pub event_type: String,
    pub order_id: Option<String>,
    /// RFC 3339.
    #[schema(example = "2025-01-31T12:00:00.000Z")]
    pub created_at: String,
}

impl From<StoredEmail> for Notification {
    fn from(stored: StoredEmail) -> Self {
        Self {
            created_at: rfc3339(stored.created_at_ms),
            id: stored.id,
            user_id: stored.user_id,
            email: stored.email,
            subject: stored.subject,
            body: stored.body,
            event_id: stored.event_id,
            event_type: stored.event_type,
            order_id: stored.order_id,
        }
    }
}

/// One page of the mailbox, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

/// Query of `GET /api/v1/notifications`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to the configured maximum (default 20).
    pub limit: Option<u32>,
    /// Only emails older than this one (the `next_before` of the previous page).
    pub before: Option<String>,
}

/// Query of `GET /api/v1/admin/notifications`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminListQuery {
    /// Only this user's emails.
    pub user_id: Option<String>,
    /// Page size, 1 to the configured maximum (default 20).
    pub limit: Option<u32>,
    /// Only emails older than this one (the `next_before` of the previous page).
    pub before: Option<String>,
}

/// Checks paging parameters; over-the-cap `limit` is refused rather than clamped, so a client
/// never silently gets fewer items than it asked for.
pub fn page_request(
    user_id: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
    max_limit: u32,
) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT.min(max_limit));
    if limit < 1 || limit > max_limit {
        return Err(query_error(
            "limit",
            format!("limit must be between 1 and {max_limit}"),
        ));
    }
    let before = match before.filter(|b| !b.is_empty()) {
        Some(before) => Some(
            uuid::Uuid::parse_str(&before)
                .map_err(|_| query_error("before", "the id of a notification (a UUID)"))?
                .hyphenated()
                .to_string(),
        ),
        None => None,
    };
    Ok(PageRequest {
        user_id: user_id.filter(|u| !u.is_empty()),
        before,
        limit,
    })
}

/// 400 about a query parameter, in the same shape as the kit's `Query` rejections.
fn query_error(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "invalid_query",
        "A query parameter is invalid",
    )
    .field(field)
    .detail(detail)
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
