//! The catalog's REST API: thin handlers that validate, call the repository and shape the
//! response. Reads answer with an `ETag` (304 on `If-None-Match`); replace and delete honour
//! `If-Match` with an ETag or a version number, so admins never overwrite a change they have
//! not seen.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bazaar_auth::RequireAdmin;
use bazaar_kit::audit::{AuditEvent, AuditQuery, AuditView, ADMIN_AUDIT_PATH};
use bazaar_kit::etag;
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::model::{
    Category, CategoryList, ListQuery, Money, Product, ProductInput, ProductPage, Sort,
    StoredProduct,
};
use crate::repository::RepoError;
use crate::AppState;

/// The catalog's routes (without the kit's common routes and fallbacks, which
/// `bazaar_kit::server::Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/products", get(list_products).post(create_product))
        .route(
            "/api/v1/products/{id}",
            get(get_product).put(replace_product).delete(delete_product),
        )
        .route("/api/v1/categories", get(list_categories))
        .route(ADMIN_AUDIT_PATH, get(audit_log))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar catalog", description = "Product data: categories, products, search."),
    paths(list_products, get_product, list_categories, create_product, replace_product, delete_product,
        bazaar_kit::audit::admin_view),
    components(schemas(Product, ProductInput, Money, Category, CategoryList, ProductPage, Sort, Problem)),
    tags((name = "catalog", description = "Products and categories"))
)]
struct ApiDoc;

/// The catalog's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The one place repository errors become answers.
impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::NotFound(id) => {
                ApiError::not_found(format!("there is no product with id {id}"))
            }
            RepoError::UnknownCategory(slug) => {
                ApiError::invalid("category", format!("there is no category {slug}"))
            }
            RepoError::SkuTaken(sku) => ApiError::conflict(
                "sku_taken",
                format!("sku {sku} is already used by another product"),
            )
            .field("sku"),
            RepoError::IdTaken(id) => ApiError::conflict(
                "id_taken",
                format!("id {id} is already used by another product"),
            )
            .field("id"),
            RepoError::VersionMismatch {
                expected, actual, ..
            } => precondition_failed(format!(
                "the product is at version {actual}, not {expected}"
            )),
            RepoError::Corrupt(what) => ApiError::internal(what),
            RepoError::Database(error) => error.into(),
        }
    }
}

fn precondition_failed(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "Precondition failed",
    )
    .detail(detail)
}

/// List products, filtered, sorted and paged.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of products", body = ProductPage,
            headers(("ETag" = String, description = "Entity tag of the page"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "A query parameter is invalid (e.g. per_page over the maximum)", body = Problem),
    ))]
async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter = query.into_filter(state.max_per_page)?;
    let (items, total) = state.repository.list_products(&filter).await?;
    let page = ProductPage {
        items: items.iter().map(StoredProduct::to_api).collect(),
        page: filter.page,
        per_page: filter.per_page,
        total,
        total_pages: total.div_ceil(u64::from(filter.per_page)),
    };
    Ok(etag::json(&headers, &page))
}

/// One product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product,
            headers(("ETag" = String, description = "Entity tag, usable in If-Match"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such product", body = Problem),
    ))]
async fn get_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let product = find(&state, &id).await?;
    Ok(etag::json(&headers, &product.to_api()))
}

/// Every category with its product count.
#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog",
    responses(
        (status = 200, description = "Categories in display order", body = CategoryList),
        (status = 304, description = "Not modified (If-None-Match)"),
    ))]
async fn list_categories(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let items = state.repository.list_categories().await?;
    Ok(etag::json(&headers, &CategoryList { items }))
}

/// Create a product.
#[utoipa::path(post, path = "/api/v1/products", tag = "catalog",
    request_body = ProductInput,
    responses(
        (status = 201, description = "Created", body = Product,
            headers(("Location" = String, description = "URL of the new product"),
                    ("ETag" = String, description = "Entity tag"))),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 409, description = "`sku_taken` or `id_taken`", body = Problem),
        (status = 422, description = "A field is invalid; `field` names it", body = Problem),
    ))]
async fn create_product(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Json(mut input): Json<ProductInput>,
) -> ApiResult<Response> {
    input.validate()?;
    let product = state.repository.create_product(&input).await?;
    audit_write(&state, &admin.sub, "product.created", &product.id).await?;
    tracing::info!(product = %product.id, sku = %product.sku, "product created");
    let location = HeaderValue::from_str(&format!("/api/v1/products/{}", product.id))
        .map_err(ApiError::internal)?;
    let mut response = product_response(StatusCode::CREATED, &product.to_api());
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Replace a product (every client-settable field).
#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id"),
           ("If-Match" = Option<String>, Header, description = "The product's ETag or version")),
    request_body = ProductInput,
    responses(
        (status = 200, description = "Replaced", body = Product),
        (status = 404, description = "No such product", body = Problem),
        (status = 409, description = "`sku_taken`", body = Problem),
        (status = 412, description = "If-Match does not match the current product", body = Problem),
        (status = 422, description = "A field is invalid; `field` names it", body = Problem),
    ))]
async fn replace_product(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(mut input): Json<ProductInput>,
) -> ApiResult<Response> {
    if input.id.as_deref().is_some_and(|given| given != id) {
        return Err(ApiError::invalid(
            "id",
            "the id in the body differs from the id in the path",
        ));
    }
    input.validate()?;
    let expected = expected_version(&state, &headers, &id).await?;
    let product = state
        .repository
        .replace_product(&id, &input, expected)
        .await?;
    audit_write(&state, &admin.sub, "product.replaced", &product.id).await?;
    tracing::info!(product = %product.id, version = product.version, "product replaced");
    Ok(product_response(StatusCode::OK, &product.to_api()))
}

/// Delete a product.
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id"),
           ("If-Match" = Option<String>, Header, description = "The product's ETag or version")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such product", body = Problem),
        (status = 412, description = "If-Match does not match the current product", body = Problem),
    ))]
async fn delete_product(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&state, &headers, &id).await?;
    state.repository.delete_product(&id, expected).await?;
    audit_write(&state, &admin.sub, "product.deleted", &id).await?;
    tracing::info!(product = %id, "product deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first, with its whole chain's check (admins; for the admin console).
async fn audit_log(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditView>> {
    bazaar_kit::audit::admin_view(&state.audit, &query).await
}

async fn find(state: &AppState, id: &str) -> ApiResult<StoredProduct> {
    state
        .repository
        .get_product(id)
        .await?
        .ok_or_else(|| RepoError::NotFound(id.to_owned()).into())
}

/// Evaluates `If-Match` against the current product: `None` when absent, the version to hold
/// the write to when it matches, 412 when it does not. Candidates are the strong ETag a read
/// returned, the version number (bare or quoted), or `*`; weak tags never match (RFC 9110
/// strong comparison).
async fn expected_version(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> ApiResult<Option<i64>> {
    let values: Vec<&str> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let current = find(state, id).await?;
    let current_etag = representation_etag(&current.to_api());
    let version = current.version.to_string();
    let matches = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || candidate == current_etag || candidate.trim_matches('"') == version
        });
    if matches {
        Ok(Some(current.version))
    } else {
        Err(precondition_failed(format!(
            "If-Match does not match the current product (version {version}, ETag {current_etag})"
        )))
    }
}

/// The ETag a read of `product` answers with (the same hash `etag::json` takes).
fn representation_etag(product: &Product) -> String {
    etag::etag_for(&serde_json::to_vec(product).expect("products serialize"))
}

/// A write's answer: the product with its ETag, never a 304 (preconditions on writes are
/// `If-Match`, handled before).
fn product_response(status: StatusCode, product: &Product) -> Response {
    let body = serde_json::to_vec(product).expect("products serialize");
    let etag = HeaderValue::from_str(&etag::etag_for(&body)).expect("hex etag is a valid header");
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

/// Records an admin write in the audit log. The write has committed by now; a failure to audit
/// is reported as an error so it is never silently lost.
async fn audit_write(state: &AppState, admin: &str, action: &str, product: &str) -> ApiResult<()> {
    state
        .audit
        .append(AuditEvent::new(admin, action).target(product))
        .await?;
    Ok(())
}
