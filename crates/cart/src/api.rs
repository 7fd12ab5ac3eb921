//! The cart's REST API: thin handlers that resolve whose cart it is, validate, call the
//! catalog and the repository, and answer with the priced cart.
//!
//! Whose cart: a bearer token (verified here, even behind the gateway, which routes
//! `/api/v1/cart` publicly and passes the header through) selects the user's cart; without one,
//! an `X-Cart-Session: <uuid>` header selects an anonymous cart. The token wins when both are
//! sent.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::Router;
use bazaar_auth::{bearer_token, AuthError, Caller, Claims, RequireService};
use bazaar_kit::extract::{Json, Path};
use bazaar_kit::problem::Problem;
use bazaar_kit::{ApiError, ApiResult};
use utoipa::OpenApi;

use crate::catalog::Lookup;
use crate::model::{
    parse_session, validate_product_id, validate_quantity, AddLine, Cart, CartLine, MergeRequest,
    Money, Owner, SetQuantity,
};
use crate::pricing::{priced_cart, priced_cart_knowing};
use crate::repository::RepoError;
use crate::AppState;

/// The header naming an anonymous cart.
pub const SESSION_HEADER: &str = "X-Cart-Session";

/// The cart's routes (without the kit's common routes, which `Service` adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/cart", get(get_cart))
        .route("/api/v1/cart/lines", post(add_line))
        .route(
            "/api/v1/cart/lines/{product_id}",
            put(set_line).delete(remove_line),
        )
        .route("/api/v1/cart/merge", post(merge))
        .route("/internal/v1/carts/{user_id}", get(internal_cart))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "bazaar cart", description = "Shopping carts of signed-in users and anonymous sessions."),
    paths(get_cart, add_line, set_line, remove_line, merge, internal_cart),
    components(schemas(Cart, CartLine, Money, AddLine, SetQuantity, MergeRequest, Problem)),
    tags((name = "cart", description = "The shopping cart"))
)]
struct ApiDoc;

/// The cart's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The one place repository errors become answers.
impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::NotInCart(id) => {
                ApiError::not_found(format!("product {id} is not in the cart")).field("product_id")
            }
            RepoError::CartFull(lines) => ApiError::conflict(
                "cart_full",
                format!("the cart already holds {lines} different products, the most it may"),
            )
            .field("product_id"),
            RepoError::QuantityTooLarge {
                product_id,
                wanted,
                max,
            } => ApiError::invalid(
                "quantity",
                format!(
                    "product {product_id} would reach {wanted} units; a line holds at most {max}"
                ),
            ),
            RepoError::CurrencyMismatch {
                product_id,
                cart,
                product,
            } => ApiError::conflict(
                "currency_mismatch",
                format!("product {product_id} is priced in {product}, the cart in {cart}"),
            )
            .field("product_id"),
            RepoError::Database(error) => error.into(),
        }
    }
}

/// Whose cart a request is about (see the module documentation).
pub struct CartOwner(pub Owner);

impl FromRequestParts<AppState> for CartOwner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        resolve_owner(state, &parts.headers).await.map(CartOwner)
    }
}

async fn resolve_owner(state: &AppState, headers: &HeaderMap) -> ApiResult<Owner> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        // A malformed or invalid token is refused, never silently ignored in favour of the
        // session: the client meant to be signed in.
        let token = bearer_token(headers).ok_or(AuthError::Malformed)?;
        let claims = state.verifier.verify(token).await?;
        return Ok(Owner::User(user_of(claims)?));
    }
    if let Some(value) = headers.get(SESSION_HEADER) {
        let session = value
            .to_str()
            .ok()
            .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("{SESSION_HEADER} must be a UUID such as 0191e1a2-7c3e-7b4a-9f00-1c2d3e4f5a6b"),
                )
                .field(SESSION_HEADER)
            })?;
        return Ok(Owner::Session(session));
    }
    Err(ApiError::from(AuthError::Missing).detail(format!(
        "a cart belongs to a signed-in user (Authorization: Bearer <token>) or to an anonymous \
         session ({SESSION_HEADER}: <uuid>); send one of them"
    )))
}

/// The user a token speaks for; client-credentials tokens have no cart.
fn user_of(claims: Claims) -> ApiResult<String> {
    if !claims.is_user() {
        return Err(
            AuthError::Forbidden("carts belong to users; this token is a client's".into()).into(),
        );
    }
    Ok(claims.sub)
}

/// The caller's cart.
#[utoipa::path(get, path = "/api/v1/cart", tag = "cart",
    params(("X-Cart-Session" = Option<String>, Header, description = "Anonymous session (a UUID), when not signed in")),
    responses(
        (status = 200, description = "The cart, priced by the catalog now (or with `prices_stale`)", body = Cart),
        (status = 400, description = "`X-Cart-Session` is not a UUID", body = Problem),
        (status = 401, description = "Neither a valid token nor a session", body = Problem),
    ))]
async fn get_cart(
    State(state): State<AppState>,
    CartOwner(owner): CartOwner,
) -> ApiResult<axum::Json<Cart>> {
    Ok(axum::Json(priced_cart(&state, &owner.key()).await?))
}

/// Add units of a product (to its line, if it has one).
#[utoipa::path(post, path = "/api/v1/cart/lines", tag = "cart",
    params(("X-Cart-Session" = Option<String>, Header, description = "Anonymous session (a UUID), when not signed in")),
    request_body = AddLine,
    responses(
        (status = 200, description = "The cart after adding", body = Cart),
        (status = 409, description = "`cart_full` (50 products) or `currency_mismatch`", body = Problem),
        (status = 422, description = "`product_id` unknown or malformed, or `quantity` out of 1..=99", body = Problem),
        (status = 503, description = "The catalog cannot confirm the product now", body = Problem),
    ))]
async fn add_line(
    State(state): State<AppState>,
    CartOwner(owner): CartOwner,
    Json(input): Json<AddLine>,
) -> ApiResult<axum::Json<Cart>> {
    validate_product_id("product_id", &input.product_id)?;
    validate_quantity(input.quantity, 1, state.limits.max_quantity)?;
    let snapshot = match state.catalog.product(&input.product_id).await {
        Lookup::Found(snapshot) => snapshot,
        Lookup::Missing => {
            return Err(ApiError::invalid(
                "product_id",
                format!("there is no product {}", input.product_id),
            ))
        }
        Lookup::Unavailable(error) => return Err(catalog_unavailable(error)),
    };
    let key = owner.key();
    state
        .repository
        .add(
            &key,
            &input.product_id,
            input.quantity,
            &snapshot,
            state.limits,
        )
        .await?;
    // The catalog was just asked about this product: no second lookup for the answer.
    let known = Some((input.product_id.as_str(), &snapshot));
    Ok(axum::Json(priced_cart_knowing(&state, &key, known).await?))
}

/// Set a line's quantity; 0 removes the line. A product not yet in the cart is added.
#[utoipa::path(put, path = "/api/v1/cart/lines/{product_id}", tag = "cart",
    params(("product_id" = String, Path, description = "Product id"),
           ("X-Cart-Session" = Option<String>, Header, description = "Anonymous session (a UUID), when not signed in")),
    request_body = SetQuantity,
    responses(
        (status = 200, description = "The cart after the change", body = Cart),
        (status = 404, description = "No such product in the catalog", body = Problem),
        (status = 409, description = "`cart_full` or `currency_mismatch`", body = Problem),
        (status = 422, description = "`quantity` out of 0..=99", body = Problem),
    ))]
async fn set_line(
    State(state): State<AppState>,
    CartOwner(owner): CartOwner,
    Path(product_id): Path<String>,
    Json(input): Json<SetQuantity>,
) -> ApiResult<axum::Json<Cart>> {
    validate_product_id("product_id", &product_id)?;
    validate_quantity(input.quantity, 0, state.limits.max_quantity)?;
    let key = owner.key();
    if input.quantity == 0 {
        // Setting an absent line to 0 already holds: nothing to do, and not an error.
        match state.repository.remove(&key, &product_id).await {
            Ok(()) | Err(RepoError::NotInCart(_)) => {}
            Err(error) => return Err(error.into()),
        }
        return Ok(axum::Json(priced_cart(&state, &key).await?));
    }
    let mut looked_up = None;
    match state
        .repository
        .set(&key, &product_id, input.quantity, None, state.limits)
        .await
    {
        Ok(()) => {}
        Err(RepoError::NotInCart(_)) => {
            // A new line: only for a product the catalog knows.
            let snapshot = match state.catalog.product(&product_id).await {
                Lookup::Found(snapshot) => snapshot,
                Lookup::Missing => {
                    return Err(
                        ApiError::not_found(format!("there is no product {product_id}"))
                            .field("product_id"),
                    )
                }
                Lookup::Unavailable(error) => return Err(catalog_unavailable(error)),
            };
            state
                .repository
                .set(
                    &key,
                    &product_id,
                    input.quantity,
                    Some(&snapshot),
                    state.limits,
                )
                .await?;
            looked_up = Some(snapshot);
        }
        Err(error) => return Err(error.into()),
    }
    // A new line's product was just read from the catalog: no second lookup for the answer.
    let known = looked_up.as_ref().map(|s| (product_id.as_str(), s));
    Ok(axum::Json(priced_cart_knowing(&state, &key, known).await?))
}

/// Remove a line.
#[utoipa::path(delete, path = "/api/v1/cart/lines/{product_id}", tag = "cart",
    params(("product_id" = String, Path, description = "Product id"),
           ("X-Cart-Session" = Option<String>, Header, description = "Anonymous session (a UUID), when not signed in")),
    responses(
        (status = 200, description = "The cart after removing the line", body = Cart),
        (status = 404, description = "The product is not in the cart", body = Problem),
    ))]
async fn remove_line(
    State(state): State<AppState>,
    CartOwner(owner): CartOwner,
    Path(product_id): Path<String>,
) -> ApiResult<axum::Json<Cart>> {
    let key = owner.key();
    state.repository.remove(&key, &product_id).await?;
    Ok(axum::Json(priced_cart(&state, &key).await?))
}

/// Merge an anonymous session's cart into the signed-in user's (at sign-in). Quantities of a
/// product in both are summed (capped at 99); the anonymous cart is deleted, so merging the
/// same session again changes nothing.
#[utoipa::path(post, path = "/api/v1/cart/merge", tag = "cart",
    request_body = MergeRequest,
    responses(
        (status = 200, description = "The user's cart after the merge", body = Cart),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 422, description = "`session_id` is not a UUID", body = Problem),
    ))]
async fn merge(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Json(input): Json<MergeRequest>,
) -> ApiResult<axum::Json<Cart>> {
    let user = Owner::User(user_of(claims)?).key();
    let session = Owner::Session(parse_session("session_id", &input.session_id)?).key();
    let outcome = state
        .repository
        .merge(&session, &user, state.limits)
        .await?;
    if !outcome.dropped.is_empty() {
        tracing::info!(dropped = ?outcome.dropped, "anonymous lines left out of a full cart at merge");
    }
    Ok(axum::Json(priced_cart(&state, &user).await?))
}

/// A user's cart, for the orders service (an unknown user has an empty cart).
#[utoipa::path(get, path = "/internal/v1/carts/{user_id}", tag = "cart",
    params(("user_id" = String, Path, description = "The user (token `sub`)")),
    responses(
        (status = 200, description = "The cart, priced by the catalog now (or with `prices_stale`)", body = Cart),
        (status = 401, description = "No valid token", body = Problem),
        (status = 403, description = "Not a service token", body = Problem),
    ))]
async fn internal_cart(
    State(state): State<AppState>,
    RequireService(_service): RequireService,
    Path(user_id): Path<String>,
) -> ApiResult<axum::Json<Cart>> {
    Ok(axum::Json(
        priced_cart(&state, &Owner::User(user_id).key()).await?,
    ))
}

/// 503 when the catalog cannot confirm a product: the client may retry.
fn catalog_unavailable(error: bazaar_kit::client::CallError) -> ApiError {
    tracing::warn!(%error, "catalog unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "catalog_unavailable",
        "Service temporarily unavailable",
    )
    .detail("the catalog cannot confirm the product right now; try again shortly")
}
