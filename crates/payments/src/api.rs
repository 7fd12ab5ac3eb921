//! The payments REST API (docs/shop.md, "payments"): saved cards for users, authorization,
//! capture, void and refund for the orders service, and read access for owners and admins.
//!
//! Every processor write follows the same write-ahead pattern, which is what makes G4 (never a
//! double charge) hold across timeouts and crashes:
//! 1. record the intent (a `pending` payment, or a not-done operation) with the processor
//!    idempotency key it will use, keyed by the caller's idempotency key;
//! 2. call the processor with that key;
//! 3. store the answer and its event in one transaction.
//!
//! A retry with the caller's key finds the record: finished → the stored answer; unfinished
//! (we timed out or crashed between 1 and 3) → step 2 again with the *same* processor key, so
//! the processor answers with what it recorded instead of charging again.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::{Caller, RequireService};
use bazaar_kit::extract::{Json, Path, Query};
use bazaar_kit::problem::Problem;
use bazaar_kit::storage::now_ms;
use bazaar_kit::{ApiError, ApiResult};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use crate::model::{
    card_error, AuthorizeInput, Card, CardInput, CardList, ListQuery, Money, Operation,
    OperationInput, Payment, PaymentList, Status, StoredCard, StoredOperation, StoredPayment,
};
use crate::processor::{is_conflict, AuthorizeRequest, ProcessorError};
use crate::repository::{AuthorizationResult, Inserted, RepoError};
use crate::AppState;

/// Most payments one listing returns.
pub const MAX_LIST: i64 = 500;

/// The payments routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/payments/cards", post(create_card).get(list_cards))
        .route("/api/v1/payments/test-cards", get(test_cards))
        .route("/api/v1/payments", get(list_payments))
        .route("/api/v1/payments/{id}", get(get_payment))
        .route("/internal/v1/payments", get(internal_list_payments))
        .route("/internal/v1/payments/authorize", post(authorize))
        .route("/internal/v1/payments/{id}", get(internal_get_payment))
        .route("/internal/v1/payments/{id}/capture", post(capture))
        .route("/internal/v1/payments/{id}/void", post(void))
        .route("/internal/v1/payments/{id}/refund", post(refund))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bazaar payments",
        description = "Saved cards (tokens from the card processor) and payments: \
                       authorization, capture, void and refund, idempotent by key. \
                       Chaos hook for tests: setting `crash_after_processor_call` to \
                       `authorize` (or `capture`, `void`, `refund`) makes the process exit \
                       with status 86 right after the processor answered and before the answer \
                       is stored."
    ),
    paths(create_card, list_cards, test_cards, list_payments, get_payment,
          internal_list_payments, internal_get_payment, authorize, capture, void, refund),
    components(schemas(CardInput, Card, CardList, AuthorizeInput, OperationInput, Payment,
                       PaymentList, Money, Status, Problem)),
    tags((name = "payments", description = "Cards and payments"))
)]
struct ApiDoc;

/// The payments OpenAPI document.
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

/// A processor failure as a retryable problem: 504 when it may have acted (timeout), 502
/// otherwise. Either way the caller retries with the same idempotency key.
fn processor_failure(error: &ProcessorError) -> ApiError {
    let retry = |e: ApiError| e.header(header::RETRY_AFTER, HeaderValue::from_static("1"));
    match error {
        ProcessorError::Timeout(after) => retry(
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "processor_timeout",
                "The card processor did not answer in time",
            )
            .detail(format!(
                "no answer within {} ms; retry with the same idempotency key",
                after.as_millis()
            )),
        ),
        ProcessorError::Unavailable(_) => retry(
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "processor_unavailable",
                "The card processor is unreachable",
            )
            .detail("retry with the same idempotency key"),
        ),
        ProcessorError::Status { status, .. } if *status == 401 || *status == 403 => {
            tracing::error!(
                status,
                "the processor refused our merchant key: check payments.merchant_key"
            );
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "processor_rejected",
                "The card processor refused the request",
            )
        }
        ProcessorError::Status { status, .. } if *status >= 500 => retry(
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "processor_error",
                "The card processor failed",
            )
            .detail("retry with the same idempotency key"),
        ),
        ProcessorError::Status { status, .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "processor_rejected",
            "The card processor refused the request",
        )
        .detail(format!(
            "the processor answered {status} ({})",
            error.code().unwrap_or("no code")
        )),
        ProcessorError::Decode(_) => retry(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "processor_error",
            "The card processor answered something unexpected",
        )),
    }
}

/// The chaos hook: exits the process at `point` when configured to (see `Config`).
fn chaos_point(state: &AppState, point: &str) {
    if !state.crash_after.is_empty() && state.crash_after == point {
        tracing::error!(
            point,
            "chaos hook crash_after_processor_call: exiting with status 86 before storing \
             the processor's answer"
        );
        bazaar_kit::telemetry::flush_logs();
        std::process::exit(86);
    }
}

/// The `Idempotency-Key` payments sends the processor for an authorization: derived from the
/// caller's key (and stored with the payment), so every retry sends the same one.
pub fn processor_key_for_authorization(idempotency_key: &str) -> String {
    format!(
        "bazaar-pay-authorize-{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

/// The processor key of a capture, void or refund of `payment_id` under the caller's key.
pub fn processor_key_for_operation(
    operation: Operation,
    payment_id: &str,
    idempotency_key: &str,
) -> String {
    format!(
        "bazaar-pay-{}-{}",
        operation.as_str(),
        hex::encode(Sha256::digest(
            format!("{payment_id}\n{idempotency_key}").as_bytes()
        ))
    )
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "Idempotency key reused",
    )
    .field("idempotency_key")
    .detail("this idempotency_key was used for a different request")
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("there is no payment {id}"))
}

// ---------------------------------------------------------------------------------------------
// cards

/// Save a card: it is tokenized by the processor; only the token, brand and last four digits
/// are kept.
#[utoipa::path(post, path = "/api/v1/payments/cards", tag = "payments",
    request_body = CardInput,
    responses(
        (status = 201, description = "Saved", body = Card),
        (status = 400, description = "The card data is invalid (e.g. Luhn); `field` names it", body = Problem),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 403, description = "Not a user's token", body = Problem),
        (status = 502, description = "The processor failed or is unreachable", body = Problem),
        (status = 504, description = "The processor did not answer in time", body = Problem),
    ))]
async fn create_card(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Json(input): Json<CardInput>,
) -> ApiResult<(StatusCode, axum::Json<Card>)> {
    if !claims.is_user() {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail("cards are saved by signed-in users"),
        );
    }
    let input = input.validate()?;
    let tokenized = state.processor.tokenize(&input).await.map_err(|error| {
        match &error {
            // The processor's own card checks are stricter in places (e.g. amex CVC length):
            // its verdict goes back to the user as a 400 naming the same field.
            ProcessorError::Status {
                status: 400,
                problem: Some(problem),
            } => card_error(
                "card_rejected",
                problem["field"].as_str().unwrap_or("number"),
                problem["detail"]
                    .as_str()
                    .unwrap_or("the processor refused the card")
                    .to_owned(),
            ),
            _ => {
                tracing::warn!(%error, "tokenization failed");
                processor_failure(&error)
            }
        }
    })?;
    let card = Card {
        card_token: tokenized.token,
        brand: tokenized.brand,
        last4: tokenized.last4,
        exp_month: tokenized.exp_month,
        exp_year: tokenized.exp_year,
    };
    state
        .repository
        .save_card(&StoredCard {
            card: card.clone(),
            user_id: claims.sub.clone(),
            created_at_ms: now_ms(),
        })
        .await?;
    tracing::info!(user = %claims.sub, brand = %card.brand, last4 = %card.last4, "card saved");
    Ok((StatusCode::CREATED, axum::Json(card)))
}

/// The caller's saved cards.
#[utoipa::path(get, path = "/api/v1/payments/cards", tag = "payments",
    responses(
        (status = 200, description = "The caller's cards", body = CardList),
        (status = 401, description = "Not signed in", body = Problem),
    ))]
async fn list_cards(
    State(state): State<AppState>,
    Caller(claims): Caller,
) -> ApiResult<axum::Json<CardList>> {
    Ok(axum::Json(CardList {
        cards: state.repository.cards_of(&claims.sub).await?,
    }))
}

/// The card processor's test cards and what each one does (fetched from the processor).
#[utoipa::path(get, path = "/api/v1/payments/test-cards", tag = "payments",
    responses(
        (status = 200, description = "The processor's test cards", body = Object),
        (status = 502, description = "The processor is unreachable", body = Problem),
        (status = 504, description = "The processor did not answer in time", body = Problem),
    ))]
async fn test_cards(State(state): State<AppState>) -> ApiResult<axum::Json<serde_json::Value>> {
    state
        .processor
        .test_cards()
        .await
        .map(axum::Json)
        .map_err(|error| processor_failure(&error))
}

// ---------------------------------------------------------------------------------------------
// reads

/// Payments of the caller (all payments for an admin), optionally of one order.
#[utoipa::path(get, path = "/api/v1/payments", tag = "payments",
    params(ListQuery),
    responses(
        (status = 200, description = "Oldest first", body = PaymentList),
        (status = 401, description = "Not signed in", body = Problem),
    ))]
async fn list_payments(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<PaymentList>> {
    let owner = (!claims.is_admin()).then_some(claims.sub.as_str());
    let payments = state
        .repository
        .payments(query.order_id.as_deref(), owner, MAX_LIST)
        .await?;
    Ok(axum::Json(PaymentList { payments }))
}

/// One payment (its owner's or any for an admin; another user's is a 404).
#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 404, description = "No such payment (or not the caller's)", body = Problem),
    ))]
async fn get_payment(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Payment>> {
    match state.repository.payment(&id).await? {
        Some(stored) if claims.is_admin() || stored.payment.user_id == claims.sub => {
            Ok(axum::Json(stored.payment))
        }
        _ => Err(not_found(&id)),
    }
}

/// Payments of an order (or the most recent ones), for the orders service and reconciliation.
#[utoipa::path(get, path = "/internal/v1/payments", tag = "payments",
    params(ListQuery),
    responses(
        (status = 200, description = "Oldest first", body = PaymentList),
        (status = 401, description = "No service token", body = Problem),
        (status = 403, description = "Not a service", body = Problem),
    ))]
async fn internal_list_payments(
    State(state): State<AppState>,
    _service: RequireService,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<PaymentList>> {
    let payments = state
        .repository
        .payments(query.order_id.as_deref(), None, MAX_LIST)
        .await?;
    Ok(axum::Json(PaymentList { payments }))
}

/// One payment, for services.
#[utoipa::path(get, path = "/internal/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 404, description = "No such payment", body = Problem),
    ))]
async fn internal_get_payment(
    State(state): State<AppState>,
    _service: RequireService,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Payment>> {
    state
        .repository
        .payment(&id)
        .await?
        .map(|stored| axum::Json(stored.payment))
        .ok_or_else(|| not_found(&id))
}

// ---------------------------------------------------------------------------------------------
// writes

fn same_request(stored: &StoredPayment, input: &AuthorizeInput) -> bool {
    let p = &stored.payment;
    p.order_id == input.order_id
        && p.user_id == input.user_id
        && p.amount == input.amount
        && p.card_token == input.card_token
}

/// Authorize a payment. A decline is a success with `status: "declined"`; a processor failure
/// is a 502/504 to retry with the same key (the payment stays `pending` until then).
#[utoipa::path(post, path = "/internal/v1/payments/authorize", tag = "payments",
    request_body = AuthorizeInput,
    responses(
        (status = 201, description = "Authorized or declined (this request created the payment)", body = Payment),
        (status = 200, description = "Authorized or declined (a retry of an earlier request)", body = Payment),
        (status = 401, description = "No service token", body = Problem),
        (status = 403, description = "Not a service", body = Problem),
        (status = 422, description = "A field is invalid, the card is not the user's (`card_token`), or the key was used for another request", body = Problem),
        (status = 502, description = "The processor failed or is unreachable: retry with the same key", body = Problem),
        (status = 504, description = "The processor did not answer in time: retry with the same key", body = Problem),
    ))]
async fn authorize(
    State(state): State<AppState>,
    _service: RequireService,
    Json(input): Json<AuthorizeInput>,
) -> ApiResult<(StatusCode, axum::Json<Payment>)> {
    input.validate()?;
    let repository = &state.repository;
    let (stored, created) = match repository.payment_by_key(&input.idempotency_key).await? {
        Some(stored) => (stored, false),
        None => {
            let card = repository
                .card(&input.card_token)
                .await?
                .filter(|card| card.user_id == input.user_id)
                .ok_or_else(|| {
                    ApiError::invalid("card_token", "the card is not one of this user's cards")
                })?;
            let now = now_ms();
            let pending = StoredPayment {
                payment: Payment {
                    payment_id: uuid::Uuid::now_v7().to_string(),
                    order_id: input.order_id.clone(),
                    user_id: input.user_id.clone(),
                    status: Status::Pending,
                    decline_code: None,
                    amount: input.amount.clone(),
                    last4: card.card.last4,
                    card_token: input.card_token.clone(),
                    processor_authorization_id: None,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
                idempotency_key: input.idempotency_key.clone(),
                processor_key: processor_key_for_authorization(&input.idempotency_key),
            };
            match repository.insert_pending(&pending).await? {
                Inserted::New(stored) => (stored, true),
                Inserted::Existing(stored) => (stored, false),
            }
        }
    };
    if !same_request(&stored, &input) {
        return Err(key_reused());
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if stored.payment.status != Status::Pending {
        return Ok((status, axum::Json(stored.payment)));
    }

    let payment = &stored.payment;
    let answer = state
        .processor
        .authorize(
            &stored.processor_key,
            &AuthorizeRequest {
                token: &payment.card_token,
                amount_minor: payment.amount.amount_minor,
                currency: &payment.amount.currency,
                reference: &payment.order_id,
            },
        )
        .await
        .map_err(|error| {
            tracing::warn!(payment = %payment.payment_id, order = %payment.order_id, %error,
                "authorization not answered; the payment stays pending");
            processor_failure(&error)
        })?;
    chaos_point(&state, "authorize");
    let decline_code = match answer.status.as_str() {
        "approved" => None,
        "declined" => Some(
            answer
                .decline_code
                .clone()
                .unwrap_or_else(|| "card_declined".to_owned()),
        ),
        other => {
            tracing::error!(payment = %payment.payment_id, status = other, "unknown authorization status");
            return Err(processor_failure(&ProcessorError::Decode(format!(
                "authorization status {other}"
            ))));
        }
    };
    let stored = repository
        .record_authorization(
            &payment.payment_id,
            &AuthorizationResult {
                processor_id: answer.id,
                decline_code,
            },
        )
        .await?;
    tracing::info!(
        payment = %stored.payment.payment_id,
        order = %stored.payment.order_id,
        status = stored.payment.status.as_str(),
        last4 = %stored.payment.last4,
        "authorization stored"
    );
    Ok((status, axum::Json(stored.payment)))
}

/// Capture, void or refund: the same write-ahead pattern as authorize.
async fn operate(
    state: &AppState,
    id: &str,
    input: &OperationInput,
    operation: Operation,
) -> ApiResult<axum::Json<Payment>> {
    input.validate()?;
    let repository = &state.repository;
    let stored = repository.payment(id).await?.ok_or_else(|| not_found(id))?;
    let mine = |op: &StoredOperation| op.payment_id == id && op.operation == operation;
    let recorded = match repository.operation(&input.idempotency_key).await? {
        Some(op) => op,
        None => {
            let status = stored.payment.status;
            if status == operation.to_status() {
                // Done already (under another key): the effect is what the caller wants.
                return Ok(axum::Json(stored.payment));
            }
            if status != operation.from_status() {
                return Err(ApiError::conflict(
                    "invalid_payment_state",
                    format!(
                        "cannot {} a payment that is {}",
                        operation.as_str(),
                        status.as_str()
                    ),
                ));
            }
            let op = StoredOperation {
                idempotency_key: input.idempotency_key.clone(),
                payment_id: id.to_owned(),
                operation,
                processor_key: processor_key_for_operation(operation, id, &input.idempotency_key),
                done: false,
            };
            match repository.insert_operation(&op).await? {
                Inserted::New(op) | Inserted::Existing(op) => op,
            }
        }
    };
    if !mine(&recorded) {
        return Err(key_reused());
    }
    if recorded.done {
        let current = repository.payment(id).await?.ok_or_else(|| not_found(id))?;
        return Ok(axum::Json(current.payment));
    }

    let processor_id = stored
        .payment
        .processor_authorization_id
        .clone()
        .ok_or_else(|| {
            ApiError::internal(format!("payment {id} has no processor authorization"))
        })?;
    let failure = |error: ProcessorError| {
        tracing::warn!(payment = %id, operation = operation.as_str(), %error,
            "processor call not answered; the operation stays pending");
        processor_failure(&error)
    };
    match state
        .processor
        .act(&processor_id, operation.as_str(), &recorded.processor_key)
        .await
    {
        Ok(answer) if answer.state == operation.processor_state() => {}
        Ok(answer) => {
            return Err(failure(ProcessorError::Decode(format!(
                "{} left the authorization {}",
                operation.as_str(),
                answer.state
            ))))
        }
        Err(error) if is_conflict(&error) => {
            // The processor refuses the change: if it is because it already happened (a call
            // whose answer we lost), that is success; otherwise the payment cannot do it.
            let current = state
                .processor
                .authorization(&processor_id)
                .await
                .map_err(failure)?;
            if current.state != operation.processor_state() {
                return Err(ApiError::conflict(
                    "invalid_payment_state",
                    format!(
                        "the processor refuses to {}: its authorization is {}",
                        operation.as_str(),
                        current.state
                    ),
                ));
            }
        }
        Err(error) => return Err(failure(error)),
    }
    chaos_point(state, operation.as_str());
    let stored = repository.record_operation(&recorded).await?;
    tracing::info!(payment = %id, status = stored.payment.status.as_str(), "payment {}", operation.as_str());
    Ok(axum::Json(stored.payment))
}

/// Capture an authorized payment.
#[utoipa::path(post, path = "/internal/v1/payments/{id}/capture", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    request_body = OperationInput,
    responses(
        (status = 200, description = "Captured (also on a retry)", body = Payment),
        (status = 404, description = "No such payment", body = Problem),
        (status = 409, description = "`invalid_payment_state`: not authorized", body = Problem),
        (status = 422, description = "The key was used for another request", body = Problem),
        (status = 502, description = "The processor failed: retry with the same key", body = Problem),
        (status = 504, description = "The processor timed out: retry with the same key", body = Problem),
    ))]
async fn capture(
    State(state): State<AppState>,
    _service: RequireService,
    Path(id): Path<String>,
    Json(input): Json<OperationInput>,
) -> ApiResult<axum::Json<Payment>> {
    operate(&state, &id, &input, Operation::Capture).await
}

/// Void an authorized payment (release the hold).
#[utoipa::path(post, path = "/internal/v1/payments/{id}/void", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    request_body = OperationInput,
    responses(
        (status = 200, description = "Voided (also on a retry)", body = Payment),
        (status = 404, description = "No such payment", body = Problem),
        (status = 409, description = "`invalid_payment_state`: not authorized", body = Problem),
        (status = 422, description = "The key was used for another request", body = Problem),
        (status = 502, description = "The processor failed: retry with the same key", body = Problem),
        (status = 504, description = "The processor timed out: retry with the same key", body = Problem),
    ))]
async fn void(
    State(state): State<AppState>,
    _service: RequireService,
    Path(id): Path<String>,
    Json(input): Json<OperationInput>,
) -> ApiResult<axum::Json<Payment>> {
    operate(&state, &id, &input, Operation::Void).await
}

/// Refund a captured payment (in full).
#[utoipa::path(post, path = "/internal/v1/payments/{id}/refund", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    request_body = OperationInput,
    responses(
        (status = 200, description = "Refunded (also on a retry)", body = Payment),
        (status = 404, description = "No such payment", body = Problem),
        (status = 409, description = "`invalid_payment_state`: not captured", body = Problem),
        (status = 422, description = "The key was used for another request", body = Problem),
        (status = 502, description = "The processor failed: retry with the same key", body = Problem),
        (status = 504, description = "The processor timed out: retry with the same key", body = Problem),
    ))]
async fn refund(
    State(state): State<AppState>,
    _service: RequireService,
    Path(id): Path<String>,
    Json(input): Json<OperationInput>,
) -> ApiResult<axum::Json<Payment>> {
    operate(&state, &id, &input, Operation::Refund).await
}
