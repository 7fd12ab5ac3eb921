//! The registry's REST API.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::Router;
use bazaar_discovery::{HeartbeatRequest, Instance, Registration, RegistrationAccepted, Snapshot};
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::{ApiError, ApiResult};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::store::Store;

#[derive(Clone)]
struct AppState {
    store: Store,
    max_watch: Duration,
}

/// The registry's routes.
pub fn router(store: Store, max_watch: Duration) -> Router {
    Router::new()
        .route("/api/v1/instances", post(register))
        .route("/api/v1/instances/{id}/heartbeat", put(heartbeat))
        .route("/api/v1/instances/{id}", delete(deregister))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}", get(service_instances))
        .route("/api/v1/watch", get(watch))
        .with_state(AppState { store, max_watch })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar registry", description = "Service registry: register, heartbeat, list, watch."),
    paths(register, heartbeat, deregister, services, service_instances, watch),
    components(schemas(bazaar_kit::problem::Problem, Registration, RegistrationAccepted, HeartbeatRequest, Instance, Snapshot)),
    tags((name = "registry", description = "Service discovery"))
)]
struct ApiDoc;

/// The registry's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn validate(registration: &Registration) -> ApiResult<()> {
    let name_ok = !registration.service.is_empty()
        && registration.service.len() <= 63
        && registration
            .service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(ApiError::invalid(
            "service",
            "service names are 1-63 characters of a-z, 0-9 and '-'",
        ));
    }
    let address_ok = (registration.address.starts_with("http://")
        || registration.address.starts_with("https://"))
        && registration.address.len() <= 255
        && registration.address.parse::<http::Uri>().is_ok();
    if !address_ok {
        return Err(ApiError::invalid(
            "address",
            "address must be an absolute http(s) URL such as http://127.0.0.1:8082",
        ));
    }
    if let Some(id) = &registration.instance_id {
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ApiError::invalid(
                "instance_id",
                "1-128 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            ));
        }
    }
    if registration.metadata.len() > 32 {
        return Err(ApiError::invalid("metadata", "at most 32 entries"));
    }
    Ok(())
}

/// Register an instance (or re-register it under its id).
#[utoipa::path(post, path = "/api/v1/instances", tag = "registry",
    request_body = Registration,
    responses((status = 201, description = "Registered", body = RegistrationAccepted), (status = 422, body = bazaar_kit::problem::Problem)))]
async fn register(
    State(state): State<AppState>,
    Json(registration): Json<Registration>,
) -> ApiResult<impl IntoResponse> {
    validate(&registration)?;
    let service = registration.service.clone();
    let id = state.store.register(registration);
    tracing::info!(instance = %id, %service, "instance registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(RegistrationAccepted {
            instance_id: id,
            ttl_ms: state.store.ttl().as_millis() as u64,
            heartbeat_interval_ms: state.store.heartbeat_interval().as_millis() as u64,
        }),
    ))
}

/// Heartbeat: the instance is alive and reports its readiness.
#[utoipa::path(put, path = "/api/v1/instances/{id}/heartbeat", tag = "registry",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Recorded"), (status = 404, description = "Unknown instance: register again", body = bazaar_kit::problem::Problem)))]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<HeartbeatRequest>,
) -> ApiResult<StatusCode> {
    if state.store.heartbeat(&id, body.status) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            "Unknown instance",
        )
        .detail(format!("instance {id} is not registered; register again")))
    }
}

/// Deregister an instance.
#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "registry",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Removed"), (status = 404, body = bazaar_kit::problem::Problem)))]
async fn deregister(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state.store.deregister(&id) {
        tracing::info!(instance = %id, "instance deregistered");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            "Unknown instance",
        ))
    }
}

/// Every service and its instances.
#[utoipa::path(get, path = "/api/v1/services", tag = "registry",
    responses((status = 200, description = "Snapshot of the registry", body = Snapshot)))]
async fn services(State(state): State<AppState>) -> axum::Json<Snapshot> {
    axum::Json(state.store.snapshot())
}

/// The instances of one service.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "registry",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "Instances, healthy or not", body = Vec<Instance>)))]
async fn service_instances(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> axum::Json<Vec<Instance>> {
    axum::Json(
        state
            .store
            .snapshot()
            .services
            .remove(&name)
            .unwrap_or_default(),
    )
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    since: u64,
    #[serde(default = "default_wait")]
    wait_ms: u64,
}

fn default_wait() -> u64 {
    20_000
}

/// Long-poll: answers when the registry changes after `since`, or after `wait_ms`.
#[utoipa::path(get, path = "/api/v1/watch", tag = "registry",
    params(("epoch" = Option<String>, Query, description = "Epoch of the caller's snapshot"),
           ("since" = Option<u64>, Query, description = "Version of the caller's snapshot"),
           ("wait_ms" = Option<u64>, Query, description = "Longest wait")),
    responses((status = 200, description = "Snapshot", body = Snapshot), (status = 400, body = bazaar_kit::problem::Problem)))]
async fn watch(
    State(state): State<AppState>,
    Query(query): Query<WatchQuery>,
) -> axum::Json<Snapshot> {
    let wait = Duration::from_millis(query.wait_ms).min(state.max_watch);
    axum::Json(
        state
            .store
            .wait_for_change(&query.epoch, query.since, wait)
            .await,
    )
}
