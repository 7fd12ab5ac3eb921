//! The processor's REST API, shaped like a real card processor's: merchant bearer keys,
//! `Idempotency-Key` on every write, stored answers replayed on retries (with
//! `Idempotent-Replayed: true`), and a key reused for a different request refused.
//!
//! Card numbers never reach a log line: handlers log tokens, last four digits and references
//! only.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bazaar_kit::extract::{parse_json, Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::storage::now_ms;
use bazaar_kit::{ApiError, ApiResult};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use crate::model::{
    behaviour_of, is_expired, test_cards, AmountInput, Authorization, AuthorizationList,
    AuthorizeInput, Behaviour, CardInput, CardToken, ListQuery, Outcome, State as AuthState,
    TestCard, TestCardList, Transition, MAX_KEY_CHARS,
};
use crate::repository::{Recorded, RepoError, StoredResponse, TransitionOutcome};
use crate::AppState;

/// Header carrying the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header set on an answer replayed from an earlier request with the same key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Most authorizations one listing returns.
pub const MAX_LIST: u32 = 500;

/// The processor's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/test-cards", get(list_test_cards))
        .route("/v1/tokens", post(create_token))
        .route(
            "/v1/authorizations",
            post(create_authorization).get(list_authorizations),
        )
        .route("/v1/authorizations/{id}", get(get_authorization))
        .route("/v1/authorizations/{id}/capture", post(capture))
        .route("/v1/authorizations/{id}/void", post(void))
        .route("/v1/authorizations/{id}/refund", post(refund))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bazaar card processor (simulator)",
        description = "A Stripe-like card processor for development and tests: a card vault, \
                       authorizations with capture, void and refund, idempotency keys, and test \
                       cards that decline, fail, time out or answer slowly on purpose."
    ),
    paths(list_test_cards, create_token, create_authorization, list_authorizations,
          get_authorization, capture, void, refund),
    components(schemas(CardInput, CardToken, AuthorizeInput, AmountInput, Authorization,
                       AuthorizationList, Outcome, AuthState, TestCard, TestCardList, Behaviour,
                       Problem)),
    modifiers(&MerchantKeyScheme),
    tags((name = "processor", description = "Card processor simulator"))
)]
struct ApiDoc;

/// Declares the `merchant_key` bearer scheme the operations refer to.
struct MerchantKeyScheme;

impl utoipa::Modify for MerchantKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "merchant_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("The merchant's secret key (sk_test_...)"))
                        .build(),
                ),
            );
    }
}

/// The processor's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(what) => ApiError::internal(what),
            RepoError::Database(error) => error.into(),
        }
    }
}

/// A request authenticated with the merchant's secret key (`Authorization: Bearer sk_...`).
pub struct Merchant;

impl FromRequestParts<AppState> for Merchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        // Comparing hashes keeps the comparison's timing independent of the secret's bytes.
        match given {
            Some(key) if Sha256::digest(key.as_bytes()).as_slice() == state.merchant_key_hash => {
                Ok(Merchant)
            }
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            )
            .detail("send the merchant's secret key as Authorization: Bearer <key>")
            .header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"processor\""),
            )),
        }
    }
}

/// The `Idempotency-Key` header every write needs.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> ApiResult<Self> {
        let key = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default();
        if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
            return Err(ApiError::bad_request(
                "idempotency_key_required",
                format!("send an Idempotency-Key header of 1 to {MAX_KEY_CHARS} characters"),
            )
            .field("Idempotency-Key"));
        }
        Ok(IdempotencyKey(key.to_owned()))
    }
}

/// Identifies a request, so a key reused for a different one is told apart from a retry.
fn fingerprint(operation: &str, target: &str, body: &impl serde::Serialize) -> String {
    let body = serde_json::to_string(body).unwrap_or_default();
    hex::encode(Sha256::digest(
        format!("{operation}\n{target}\n{body}").as_bytes(),
    ))
}

/// The stored answer for a retry, or 422 when the key was used for another request.
fn replay(stored: StoredResponse, fingerprint: &str) -> ApiResult<Response> {
    if stored.fingerprint != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency key reused",
        )
        .field("Idempotency-Key")
        .detail("this Idempotency-Key was used for a different request"));
    }
    let status = StatusCode::from_u16(stored.status).map_err(ApiError::internal)?;
    Ok((
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            ),
        ],
        stored.body,
    )
        .into_response())
}

/// The test cards and what each one does.
#[utoipa::path(get, path = "/v1/test-cards", tag = "processor",
    responses((status = 200, description = "The test cards", body = TestCardList)))]
async fn list_test_cards() -> axum::Json<TestCardList> {
    axum::Json(test_cards())
}

/// Put a card in the vault and get a token for it.
#[utoipa::path(post, path = "/v1/tokens", tag = "processor",
    request_body = CardInput,
    security(("merchant_key" = [])),
    responses(
        (status = 201, description = "Tokenized", body = CardToken),
        (status = 400, description = "The card data is invalid; `field` names it", body = Problem),
        (status = 401, description = "No or a wrong merchant key", body = Problem),
    ))]
async fn create_token(
    State(state): State<AppState>,
    _merchant: Merchant,
    Json(input): Json<CardInput>,
) -> ApiResult<(StatusCode, axum::Json<CardToken>)> {
    let card = input.validate()?;
    state.repository.create_card(&card).await?;
    tracing::info!(token = %card.token, brand = %card.brand, last4 = %card.last4, "card tokenized");
    Ok((
        StatusCode::CREATED,
        axum::Json(CardToken {
            token: card.token,
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        }),
    ))
}

/// Authorize an amount on a tokenized card.
#[utoipa::path(post, path = "/v1/authorizations", tag = "processor",
    request_body = AuthorizeInput,
    params(("Idempotency-Key" = String, Header, description = "Retries with the same key get the same answer")),
    security(("merchant_key" = [])),
    responses(
        (status = 201, description = "Approved or declined (see `status`)", body = Authorization),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 401, description = "No or a wrong merchant key", body = Problem),
        (status = 422, description = "A field is invalid, or the key was used for another request", body = Problem),
        (status = 500, description = "Processor error (test card 4000000000000119): nothing authorized", body = Problem),
    ))]
async fn create_authorization(
    State(state): State<AppState>,
    _merchant: Merchant,
    IdempotencyKey(key): IdempotencyKey,
    Json(input): Json<AuthorizeInput>,
) -> ApiResult<Response> {
    input.validate()?;
    let fingerprint = fingerprint("authorize", "", &input);
    if let Some(stored) = state.repository.stored_response(&key).await? {
        return replay(stored, &fingerprint);
    }
    let card = state
        .repository
        .card(&input.token)
        .await?
        .ok_or_else(|| ApiError::invalid("token", "there is no card with this token"))?;
    let (behaviour, decline_code) = behaviour_of(&card.number);
    match behaviour {
        Behaviour::ProcessorError => {
            tracing::warn!(reference = %input.reference, last4 = %card.last4, "simulated processor error");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "processor_error",
                "Processor error",
            )
            .detail("the card network failed; nothing was authorized"));
        }
        Behaviour::Slow => tokio::time::sleep(state.slow_delay).await,
        _ => {}
    }
    let now = now_ms();
    let decline_code = decline_code
        .or_else(|| is_expired(card.exp_month, card.exp_year, now).then_some("expired_card"));
    let authorization = Authorization {
        id: format!("auth_{}", uuid::Uuid::now_v7().simple()),
        status: if decline_code.is_some() {
            Outcome::Declined
        } else {
            Outcome::Approved
        },
        decline_code: decline_code.map(str::to_owned),
        amount_minor: input.amount_minor,
        currency: input.currency.clone(),
        reference: input.reference.clone(),
        captured_minor: 0,
        refunded_minor: 0,
        state: if decline_code.is_some() {
            AuthState::Declined
        } else {
            AuthState::Authorized
        },
        token: card.token.clone(),
        brand: card.brand.clone(),
        last4: card.last4.clone(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    let status = StatusCode::CREATED;
    match state
        .repository
        .create_authorization(&key, &fingerprint, status.as_u16(), &authorization)
        .await?
    {
        Recorded::New(()) => {}
        // A concurrent request with the same key won the race: answer what it stored.
        Recorded::Existing(stored) => return replay(stored, &fingerprint),
    }
    tracing::info!(
        authorization = %authorization.id,
        reference = %authorization.reference,
        last4 = %authorization.last4,
        status = authorization.status.as_str(),
        decline_code = authorization.decline_code.as_deref().unwrap_or(""),
        "authorization recorded"
    );
    if behaviour == Behaviour::Timeout {
        // Recorded already: the caller gives up waiting, and its retry gets the stored answer.
        tokio::time::sleep(state.timeout_delay).await;
    }
    Ok((status, axum::Json(authorization)).into_response())
}

/// Authorizations, most recent last; by reference for reconciliation.
#[utoipa::path(get, path = "/v1/authorizations", tag = "processor",
    params(ListQuery),
    security(("merchant_key" = [])),
    responses(
        (status = 200, description = "The authorizations", body = AuthorizationList),
        (status = 400, description = "`limit` is out of range", body = Problem),
        (status = 401, description = "No or a wrong merchant key", body = Problem),
    ))]
async fn list_authorizations(
    State(state): State<AppState>,
    _merchant: Merchant,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<AuthorizationList>> {
    let limit = query.limit.unwrap_or(MAX_LIST);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "A query parameter is invalid",
        )
        .field("limit")
        .detail(format!("limit must be between 1 and {MAX_LIST}")));
    }
    let authorizations = state
        .repository
        .authorizations(query.reference.as_deref(), limit)
        .await?;
    Ok(axum::Json(AuthorizationList { authorizations }))
}

/// One authorization.
#[utoipa::path(get, path = "/v1/authorizations/{id}", tag = "processor",
    params(("id" = String, Path, description = "`auth_...`")),
    security(("merchant_key" = [])),
    responses(
        (status = 200, description = "The authorization", body = Authorization),
        (status = 401, description = "No or a wrong merchant key", body = Problem),
        (status = 404, description = "No such authorization", body = Problem),
    ))]
async fn get_authorization(
    State(state): State<AppState>,
    _merchant: Merchant,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Authorization>> {
    state
        .repository
        .authorization(&id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(&id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("there is no authorization {id}"))
}

/// The optional `{amount_minor}` body of capture and refund: none means "all of it".
fn amount_body(body: &Bytes) -> ApiResult<AmountInput> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(AmountInput::default());
    }
    let input: AmountInput = parse_json(body)?;
    input.validate()?;
    Ok(input)
}

async fn transition(
    state: &AppState,
    key: &str,
    id: &str,
    transition: Transition,
) -> ApiResult<Response> {
    let fingerprint = fingerprint(transition.name(), id, &transition);
    if let Some(stored) = state.repository.stored_response(key).await? {
        return replay(stored, &fingerprint);
    }
    match state
        .repository
        .transition(key, &fingerprint, id, transition)
        .await?
    {
        TransitionOutcome::Done(authorization) => {
            tracing::info!(
                authorization = %authorization.id,
                reference = %authorization.reference,
                state = authorization.state.as_str(),
                "authorization {}", transition.name()
            );
            Ok(axum::Json(authorization).into_response())
        }
        TransitionOutcome::Existing(stored) => replay(stored, &fingerprint),
        TransitionOutcome::NotFound => Err(not_found(id)),
        TransitionOutcome::Invalid(why) => {
            Err(ApiError::conflict("invalid_state", why.to_string()))
        }
    }
}

/// Capture an authorization (all of it, or `amount_minor`; the rest is released).
#[utoipa::path(post, path = "/v1/authorizations/{id}/capture", tag = "processor",
    params(("id" = String, Path, description = "`auth_...`"),
           ("Idempotency-Key" = String, Header, description = "Retries with the same key get the same answer")),
    request_body(content = Option<AmountInput>, description = "Optional partial amount"),
    security(("merchant_key" = [])),
    responses(
        (status = 200, description = "Captured", body = Authorization),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 404, description = "No such authorization", body = Problem),
        (status = 409, description = "`invalid_state`: not authorized, or more than authorized", body = Problem),
        (status = 422, description = "Invalid amount, or the key was used for another request", body = Problem),
    ))]
async fn capture(
    State(state): State<AppState>,
    _merchant: Merchant,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let amount = amount_body(&body)?;
    transition(&state, &key, &id, Transition::Capture(amount.amount_minor)).await
}

/// Void (release) an authorization that was not captured.
#[utoipa::path(post, path = "/v1/authorizations/{id}/void", tag = "processor",
    params(("id" = String, Path, description = "`auth_...`"),
           ("Idempotency-Key" = String, Header, description = "Retries with the same key get the same answer")),
    security(("merchant_key" = [])),
    responses(
        (status = 200, description = "Voided", body = Authorization),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 404, description = "No such authorization", body = Problem),
        (status = 409, description = "`invalid_state`: not in state authorized", body = Problem),
        (status = 422, description = "The key was used for another request", body = Problem),
    ))]
async fn void(
    State(state): State<AppState>,
    _merchant: Merchant,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    transition(&state, &key, &id, Transition::Void).await
}

/// Refund a captured authorization (the whole refundable amount, or `amount_minor`).
#[utoipa::path(post, path = "/v1/authorizations/{id}/refund", tag = "processor",
    params(("id" = String, Path, description = "`auth_...`"),
           ("Idempotency-Key" = String, Header, description = "Retries with the same key get the same answer")),
    request_body(content = Option<AmountInput>, description = "Optional partial amount"),
    security(("merchant_key" = [])),
    responses(
        (status = 200, description = "Refunded (state `refunded` once everything is given back)", body = Authorization),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 404, description = "No such authorization", body = Problem),
        (status = 409, description = "`invalid_state`: not captured, or more than refundable", body = Problem),
        (status = 422, description = "Invalid amount, or the key was used for another request", body = Problem),
    ))]
async fn refund(
    State(state): State<AppState>,
    _merchant: Merchant,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let amount = amount_body(&body)?;
    transition(&state, &key, &id, Transition::Refund(amount.amount_minor)).await
}
