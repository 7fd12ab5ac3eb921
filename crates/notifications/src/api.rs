//! The notifications REST API: a customer reads their own mailbox, an admin reads anyone's.
//! Read-only: emails are written by the event consumer alone.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bazaar_auth::{AuthError, Caller, RequireAdmin};
use bazaar_kit::extract::Query;
use bazaar_kit::problem::Problem;
use bazaar_kit::ApiResult;
use utoipa::OpenApi;

use crate::model::{page_request, AdminListQuery, ListQuery, Notification, NotificationPage};
use crate::repository::PageRequest;
use crate::AppState;

/// The service's routes (without the kit's common routes, which `Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/notifications", get(own_notifications))
        .route("/api/v1/admin/notifications", get(all_notifications))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar notifications", description = "The emails the shop has written to customers."),
    paths(own_notifications, all_notifications),
    components(schemas(Notification, NotificationPage, Problem)),
    tags((name = "notifications", description = "Customer emails"))
)]
struct ApiDoc;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The caller's own emails, newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of the caller's mailbox", body = NotificationPage),
        (status = 400, description = "`limit` or `before` is invalid", body = Problem),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 403, description = "A client's token: only users have a mailbox", body = Problem),
    ))]
async fn own_notifications(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<NotificationPage>> {
    if !claims.is_user() {
        return Err(AuthError::Forbidden(
            "only users have a mailbox; this token is a client's".into(),
        )
        .into());
    }
    let request = page_request(Some(claims.sub), query.limit, query.before, state.max_limit)?;
    page(&state, &request).await
}

/// Every customer's emails (or one customer's), newest first.
#[utoipa::path(get, path = "/api/v1/admin/notifications", tag = "notifications",
    params(AdminListQuery),
    responses(
        (status = 200, description = "One page of the mailbox", body = NotificationPage),
        (status = 400, description = "`limit` or `before` is invalid", body = Problem),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 403, description = "Not an admin", body = Problem),
    ))]
async fn all_notifications(
    State(state): State<AppState>,
    RequireAdmin(_admin): RequireAdmin,
    Query(query): Query<AdminListQuery>,
) -> ApiResult<axum::Json<NotificationPage>> {
    let request = page_request(query.user_id, query.limit, query.before, state.max_limit)?;
    page(&state, &request).await
}

async fn page(state: &AppState, request: &PageRequest) -> ApiResult<axum::Json<NotificationPage>> {
    let (emails, more) = state.repository.page(request).await?;
    let next_before = if more {
        emails.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(axum::Json(NotificationPage {
        items: emails.into_iter().map(Notification::from).collect(),
        next_before,
    }))
}
