//! The developer service's REST API: thin handlers that authorize, validate, call the
//! repository and shape the response.
//!
//! Three audiences: anyone (the plan list), developers with a user token (their own keys and
//! usage; admins see everyone's), and the gateway with a service token (`/internal/...`, which
//! the gateway never routes from outside; the token check here is the second lock).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bazaar_auth::{AuthError, Caller, Claims, RequireAdmin, RequireService};
use bazaar_kit::audit::{AuditEvent, AuditQuery, AuditView, ADMIN_AUDIT_PATH};
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::keys::{self, GeneratedKey};
use crate::model::{
    day_of, month_of, ApiKey, CreatedKey, KeyCounters, KeyList, KeyLookup, KeyStatus, KeyUsage,
    LookupInput, NewKeyInput, Plan, PlanEntry, PlanList, StoredKey, UsageCount, UsageList,
    UsageReport, DAY_MS,
};
use crate::repository::{Counts, NewKey, RepoError, UsageScope};
use crate::AppState;

/// The developer service's routes (without the kit's common routes and fallbacks, which
/// `bazaar_kit::server::Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/developer/plans", get(list_plans))
        .route("/api/v1/developer/keys", get(list_keys).post(create_key))
        .route("/api/v1/developer/keys/{id}", delete(revoke_key))
        .route("/api/v1/developer/usage", get(own_usage))
        .route("/api/v1/admin/usage", get(all_usage))
        .route(ADMIN_AUDIT_PATH, get(audit_log))
        .route("/internal/v1/keys/lookup", post(lookup_key))
        .route("/internal/v1/usage", post(report_usage))
        .route("/internal/v1/usage/{key_id}", get(key_counters))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar developer", description = "API keys on plans, and their usage."),
    paths(list_plans, create_key, list_keys, revoke_key, own_usage, all_usage, lookup_key,
          report_usage, key_counters, bazaar_kit::audit::admin_view),
    components(schemas(Plan, PlanEntry, PlanList, NewKeyInput, CreatedKey, ApiKey, KeyList,
                       KeyStatus, KeyUsage, UsageList, LookupInput, KeyLookup, UsageReport,
                       UsageCount, KeyCounters, Problem)),
    tags((name = "developer", description = "Plans, API keys and usage for developers"),
         (name = "internal", description = "Called by the gateway with a service token"))
)]
struct ApiDoc;

/// The developer service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The one place repository errors become answers.
impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Database(error) => error.into(),
        }
    }
}

/// A caller acting as a user (a token from a login, not a client's own token): keys belong to
/// people, so a client-credentials token cannot own any.
struct User(Claims);

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if !claims.is_user() {
            return Err(
                AuthError::Forbidden("API keys belong to users: use a user token".into()).into(),
            );
        }
        Ok(User(claims))
    }
}

/// The plans keys can be issued on.
#[utoipa::path(get, path = "/api/v1/developer/plans", tag = "developer",
    responses((status = 200, description = "Every plan with its limits", body = PlanList)))]
async fn list_plans(State(state): State<AppState>) -> axum::Json<PlanList> {
    axum::Json(PlanList {
        items: state
            .plans
            .iter()
            .map(|(name, plan)| PlanEntry {
                name: name.clone(),
                plan: plan.clone(),
            })
            .collect(),
    })
}

/// Create an API key. The answer is the only time the key is shown.
#[utoipa::path(post, path = "/api/v1/developer/keys", tag = "developer",
    request_body = NewKeyInput,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedKey,
            headers(("Location" = String, description = "Where the key is listed"))),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a user token, or the plan needs an admin", body = Problem),
        (status = 422, description = "A field is invalid; `field` names it", body = Problem),
    ))]
async fn create_key(
    State(state): State<AppState>,
    User(claims): User,
    headers: HeaderMap,
    Json(mut input): Json<NewKeyInput>,
) -> ApiResult<Response> {
    input.validate()?;
    let plan = state
        .plans
        .get(&input.plan)
        .ok_or_else(|| ApiError::invalid("plan", format!("there is no plan {}", input.plan)))?;
    if !plan.self_service && !claims.is_admin() {
        return Err(AuthError::Forbidden(format!(
            "plan {} is issued by an administrator only",
            input.plan
        ))
        .into());
    }
    let now = state.clock.now_ms();
    let generated = GeneratedKey::generate();
    let new = NewKey {
        id: generated.id.clone(),
        owner: claims.sub.clone(),
        name: input.name.clone(),
        plan: input.plan.clone(),
        prefix: generated.prefix(),
        secret_hash: generated.hash(),
        created_at_ms: now,
        expires_at_ms: plan
            .trial_days
            .map(|days| now.saturating_add(i64::from(days) * DAY_MS)),
        created_by: claims.sub.clone(),
    };
    let event = AuditEvent::new(&claims.sub, "api_key.created")
        .target(&new.id)
        .source(source(&headers))
        .details(serde_json::json!({
            "owner": new.owner, "plan": new.plan, "name": new.name, "prefix": new.prefix,
        }));
    let stored = state.repository.create_key(&new, event).await?;
    tracing::info!(key = %stored.id, owner = %stored.owner, plan = %stored.plan, "api key created");
    let api = stored.to_api(now);
    let body = CreatedKey {
        id: api.id,
        name: api.name,
        plan: api.plan,
        key: generated.key,
        prefix: api.prefix,
        created_at: api.created_at,
        expires_at: api.expires_at,
        status: api.status,
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/api/v1/developer/keys"),
    );
    // The body holds a secret: no cache anywhere may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The caller's own keys (never their secrets).
#[utoipa::path(get, path = "/api/v1/developer/keys", tag = "developer",
    responses(
        (status = 200, description = "The caller's keys, oldest first", body = KeyList),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a user token", body = Problem),
    ))]
async fn list_keys(
    State(state): State<AppState>,
    User(claims): User,
) -> ApiResult<axum::Json<KeyList>> {
    let now = state.clock.now_ms();
    let keys = state.repository.list_keys(Some(&claims.sub)).await?;
    Ok(axum::Json(KeyList {
        items: keys.iter().map(|key| key.to_api(now)).collect(),
    }))
}

/// Revoke a key: its owner or an admin. Repeating it changes nothing.
#[utoipa::path(delete, path = "/api/v1/developer/keys/{id}", tag = "developer",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 401, description = "No valid token", body = Problem),
        (status = 404, description = "No such key among the caller's", body = Problem),
    ))]
async fn revoke_key(
    State(state): State<AppState>,
    User(claims): User,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // Someone else's key answers exactly like a missing one, so ids are never confirmed to
    // strangers.
    let key = state
        .repository
        .get_key(&id)
        .await?
        .filter(|key| key.owner == claims.sub || claims.is_admin())
        .ok_or_else(|| ApiError::not_found(format!("you have no key with id {id}")))?;
    let event = AuditEvent::new(&claims.sub, "api_key.revoked")
        .target(&key.id)
        .source(source(&headers))
        .details(serde_json::json!({
            "owner": key.owner, "plan": key.plan, "by_admin": key.owner != claims.sub,
        }));
    let now = state.clock.now_ms();
    if state.repository.revoke_key(&key.id, now, event).await? {
        tracing::info!(key = %key.id, owner = %key.owner, by = %claims.sub, "api key revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Today's and this month's usage of each of the caller's keys.
#[utoipa::path(get, path = "/api/v1/developer/usage", tag = "developer",
    responses(
        (status = 200, description = "Usage and remaining quota per key", body = UsageList),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a user token", body = Problem),
    ))]
async fn own_usage(
    State(state): State<AppState>,
    User(claims): User,
) -> ApiResult<axum::Json<UsageList>> {
    usage_list(&state, Some(&claims.sub)).await.map(axum::Json)
}

/// Usage of every key, with its owner (admins).
#[utoipa::path(get, path = "/api/v1/admin/usage", tag = "developer",
    responses(
        (status = 200, description = "Usage and remaining quota of every key", body = UsageList),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not an admin", body = Problem),
    ))]
async fn all_usage(
    State(state): State<AppState>,
    _admin: RequireAdmin,
) -> ApiResult<axum::Json<UsageList>> {
    usage_list(&state, None).await.map(axum::Json)
}

/// The audit log, newest first, with its whole chain's check (admins; for the admin console).
async fn audit_log(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditView>> {
    bazaar_kit::audit::admin_view(state.repository.audit(), &query).await
}

async fn usage_list(state: &AppState, owner: Option<&str>) -> ApiResult<UsageList> {
    let now = state.clock.now_ms();
    let day = day_of(now);
    let keys = state.repository.list_keys(owner).await?;
    let scope = owner.map_or(UsageScope::All, UsageScope::Owner);
    let counts: HashMap<String, Counts> = state.repository.usage(scope, &day).await?;
    let items = keys
        .iter()
        .map(|key| {
            key_usage(
                state,
                key,
                counts.get(&key.id).copied().unwrap_or_default(),
                now,
            )
        })
        .collect();
    Ok(UsageList {
        month: month_of(&day).to_owned(),
        day,
        items,
    })
}

fn key_usage(state: &AppState, key: &StoredKey, counts: Counts, now: i64) -> KeyUsage {
    // A key whose plan was removed from the configuration shows no quotas rather than failing
    // the whole listing.
    let plan = state.plans.get(&key.plan);
    let quota_per_day = plan.and_then(|p| p.quota_per_day);
    let quota_per_month = plan.and_then(|p| p.quota_per_month);
    KeyUsage {
        key_id: key.id.clone(),
        owner: key.owner.clone(),
        name: key.name.clone(),
        prefix: key.prefix.clone(),
        plan: key.plan.clone(),
        status: key.status(now),
        day_count: counts.day,
        month_count: counts.month,
        quota_per_day,
        quota_per_month,
        day_remaining: quota_per_day.map(|q| q.saturating_sub(counts.day)),
        month_remaining: quota_per_month.map(|q| q.saturating_sub(counts.month)),
    }
}

/// Look a key up by its full text (the gateway, on a cache miss).
#[utoipa::path(post, path = "/internal/v1/keys/lookup", tag = "internal",
    request_body = LookupInput,
    responses(
        (status = 200, description = "The key, its status and its plan's limits", body = KeyLookup),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a service token", body = Problem),
        (status = 404, description = "No such key", body = Problem),
    ))]
async fn lookup_key(
    State(state): State<AppState>,
    _service: RequireService,
    Json(input): Json<LookupInput>,
) -> ApiResult<axum::Json<KeyLookup>> {
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_key", "Unknown API key");
    if !keys::is_well_formed(&input.key) {
        return Err(unknown());
    }
    // Looking up by the hash means the presented key is never compared with a stored secret,
    // so there is no comparison whose timing could leak one: a constant-time compare would
    // protect nothing here.
    let key = state
        .repository
        .find_by_hash(&keys::hash(&input.key))
        .await?
        .ok_or_else(unknown)?;
    let plan = state.plans.get(&key.plan).cloned().ok_or_else(|| {
        // Our configuration lost a plan keys still use: the gateway must fail closed.
        ApiError::internal(format!(
            "key {} is on plan {}, which is not configured",
            key.id, key.plan
        ))
    })?;
    Ok(axum::Json(KeyLookup {
        status: key.status(state.clock.now_ms()),
        expires_at: key.expires_at_ms.map(crate::model::rfc3339),
        key_id: key.id,
        owner: key.owner,
        name: key.name,
        plan_name: key.plan,
        plan,
    }))
}

/// Report requests counted by a gateway. Idempotent per `report_id`.
#[utoipa::path(post, path = "/internal/v1/usage", tag = "internal",
    request_body = UsageReport,
    responses(
        (status = 204, description = "Applied, or applied before"),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a service token", body = Problem),
        (status = 422, description = "A field is invalid; `field` names it", body = Problem),
    ))]
async fn report_usage(
    State(state): State<AppState>,
    _service: RequireService,
    Json(report): Json<UsageReport>,
) -> ApiResult<StatusCode> {
    report.validate()?;
    let applied = state
        .repository
        .record_usage(&report, state.clock.now_ms())
        .await?;
    if !applied {
        tracing::debug!(report = %report.report_id, gateway = %report.gateway,
            "usage report seen before; ignored");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// One key's counters for today and this month (a gateway seeding its own after a restart).
#[utoipa::path(get, path = "/internal/v1/usage/{key_id}", tag = "internal",
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Today's and this month's counts", body = KeyCounters),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a service token", body = Problem),
        (status = 404, description = "No such key", body = Problem),
    ))]
async fn key_counters(
    State(state): State<AppState>,
    _service: RequireService,
    Path(key_id): Path<String>,
) -> ApiResult<axum::Json<KeyCounters>> {
    if state.repository.get_key(&key_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "there is no key with id {key_id}"
        )));
    }
    let day = day_of(state.clock.now_ms());
    let counts = state
        .repository
        .usage(UsageScope::Key(&key_id), &day)
        .await?
        .remove(&key_id)
        .unwrap_or_default();
    Ok(axum::Json(KeyCounters {
        month: month_of(&day).to_owned(),
        day,
        day_count: counts.day,
        month_count: counts.month,
    }))
}

/// The client address for the audit record, as the gateway forwarded it: the *last* entry of
/// `X-Forwarded-For`, which the gateway appends from the TCP peer. Entries to its left come from
/// the client and could be anything. Empty when called directly.
fn source(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().chars().take(64).collect())
        .unwrap_or_default()
}
