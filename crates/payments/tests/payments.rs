//! The payments service's one integration-test binary.
//!
//! Payments talks to the card processor over HTTP, and may not depend on the processor crate,
//! so these tests run a small fake processor (an axum server on a local port) that implements
//! the processor's contract minimally: merchant key, tokens, approve/decline/fail/hold by card
//! number, capture/void/refund, and answers stored by `Idempotency-Key`. It counts effects and
//! replays, which is what the no-double-charge assertions look at. (The multi-process test with
//! both real binaries lives with the `bazaar` crate.)
//!
//! Scenarios are `async fn`s over a database URL, run on SQLite always and on PostgreSQL when
//! `BAZAAR_TEST_POSTGRES_URL` is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bazaar_auth::testing::TestIssuer;
use bazaar_kit::config::{CommonConfig, Secret};
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_payments::Config;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const MERCHANT_KEY: &str = "sk_test_fake";

// ---------------------------------------------------------------------------------------------
// the fake processor

#[derive(Default)]
struct Fake {
    /// token → card number (the fake's vault).
    cards: HashMap<String, String>,
    /// Idempotency-Key → (request fingerprint, status, body).
    answers: HashMap<String, (String, u16, Value)>,
    authorizations: HashMap<String, Value>,
    /// Authorizations, captures, voids and refunds that took effect (not replays).
    effects: Vec<(String, String)>,
    /// Requests answered from `answers`.
    replays: usize,
    tokenize_calls: usize,
}

#[derive(Clone, Default)]
struct FakeProcessor {
    state: Arc<Mutex<Fake>>,
    url: String,
}

fn fake_test_cards() -> Value {
    json!({"test_cards": [
        {"number": "4242424242424242", "brand": "visa", "behaviour": "success", "description": "Approved."},
        {"number": "4000000000000002", "brand": "visa", "behaviour": "declined", "decline_code": "card_declined", "description": "Declined."},
        {"number": "4000000000000119", "brand": "visa", "behaviour": "processor_error", "description": "500."},
        {"number": "4000000000000259", "brand": "visa", "behaviour": "timeout", "description": "Held."}
    ], "other_numbers": "approved"})
}

fn problem(status: StatusCode, code: &str, field: Option<&str>) -> Response {
    let mut body = json!({"type": "x", "title": code, "status": status.as_u16(), "code": code});
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    (status, axum::Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == format!("Bearer {MERCHANT_KEY}").as_str())
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl FakeProcessor {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(Fake::default()));
        let router = Router::new()
            .route(
                "/v1/test-cards",
                get(|| async { axum::Json(fake_test_cards()) }),
            )
            .route("/v1/tokens", post(fake_tokenize))
            .route("/v1/authorizations", post(fake_authorize))
            .route("/v1/authorizations/{id}", get(fake_get))
            .route("/v1/authorizations/{id}/{action}", post(fake_act))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { state, url }
    }

    fn effects(&self, kind: &str) -> usize {
        let fake = self.state.lock().unwrap();
        fake.effects.iter().filter(|(k, _)| k == kind).count()
    }

    fn replays(&self) -> usize {
        self.state.lock().unwrap().replays
    }

    fn tokenize_calls(&self) -> usize {
        self.state.lock().unwrap().tokenize_calls
    }

    /// Does `action` on `id` directly, as if an earlier call's answer had been lost.
    fn act_directly(&self, id: &str, state: &str) {
        let mut fake = self.state.lock().unwrap();
        fake.authorizations.get_mut(id).unwrap()["state"] = json!(state);
    }
}

type Shared = Arc<Mutex<Fake>>;

async fn fake_tokenize(State(fake): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&headers) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    let card: Value = serde_json::from_str(&body).unwrap();
    let mut fake = fake.lock().unwrap();
    fake.tokenize_calls += 1;
    // The fake's own stricter rule, to see its 400s reach the user: CVC 000 is refused.
    if card["cvc"] == "000" {
        return problem(StatusCode::BAD_REQUEST, "invalid_cvc", Some("cvc"));
    }
    let number = card["number"].as_str().unwrap().to_owned();
    let token = format!("tok_{}", uuid::Uuid::new_v4().simple());
    let last4 = number[number.len() - 4..].to_owned();
    fake.cards.insert(token.clone(), number);
    (
        StatusCode::CREATED,
        axum::Json(json!({"token": token, "brand": "visa", "last4": last4,
            "exp_month": card["exp_month"], "exp_year": card["exp_year"]})),
    )
        .into_response()
}

async fn fake_authorize(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&headers) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    let Some(key) = key_of(&headers) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            Some("Idempotency-Key"),
        );
    };
    let request: Value = serde_json::from_str(&body).unwrap();
    let request_fingerprint = request.to_string();
    let hold = {
        let mut fake = shared.lock().unwrap();
        if let Some((fingerprint, status, body)) = fake.answers.get(&key).cloned() {
            if fingerprint != request_fingerprint {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    None,
                );
            }
            fake.replays += 1;
            return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
        }
        let Some(number) = fake.cards.get(request["token"].as_str().unwrap()).cloned() else {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("token"),
            );
        };
        if number == "4000000000000119" {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "processor_error", None);
        }
        let declined = number == "4000000000000002";
        let id = format!("auth_{}", uuid::Uuid::new_v4().simple());
        let mut auth = json!({"id": id, "status": if declined {"declined"} else {"approved"},
            "state": if declined {"declined"} else {"authorized"},
            "amount_minor": request["amount_minor"], "currency": request["currency"],
            "reference": request["reference"], "captured_minor": 0, "refunded_minor": 0});
        if declined {
            auth["decline_code"] = json!("card_declined");
        }
        fake.authorizations.insert(id.clone(), auth.clone());
        fake.answers
            .insert(key.clone(), (request_fingerprint.clone(), 201, auth));
        fake.effects.push(("authorize".into(), key));
        number == "4000000000000259"
    };
    if hold {
        // Recorded; the answer never comes in time (the caller gives up first).
        std::future::pending::<()>().await;
    }
    let fake = shared.lock().unwrap();
    let (_, _, body) = fake.answers.get(&key_of(&headers).unwrap()).unwrap();
    (StatusCode::CREATED, axum::Json(body.clone())).into_response()
}

async fn fake_get(
    State(shared): State<Shared>,
    headers: HeaderMap,
    AxPath(id): AxPath<String>,
) -> Response {
    if !authorized(&headers) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    match shared.lock().unwrap().authorizations.get(&id) {
        Some(auth) => axum::Json(auth.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not_found", None),
    }
}

async fn fake_act(
    State(shared): State<Shared>,
    headers: HeaderMap,
    AxPath((id, action)): AxPath<(String, String)>,
) -> Response {
    if !authorized(&headers) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    let Some(key) = key_of(&headers) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            Some("Idempotency-Key"),
        );
    };
    let mut fake = shared.lock().unwrap();
    let fingerprint = format!("{action} {id}");
    if let Some((stored, status, body)) = fake.answers.get(&key).cloned() {
        if stored != fingerprint {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                None,
            );
        }
        fake.replays += 1;
        return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    }
    let Some(auth) = fake.authorizations.get_mut(&id) else {
        return problem(StatusCode::NOT_FOUND, "not_found", None);
    };
    let (from, to) = match action.as_str() {
        "capture" => ("authorized", "captured"),
        "void" => ("authorized", "voided"),
        "refund" => ("captured", "refunded"),
        _ => return problem(StatusCode::NOT_FOUND, "route_not_found", None),
    };
    if auth["state"] != from {
        return problem(StatusCode::CONFLICT, "invalid_state", None);
    }
    auth["state"] = json!(to);
    let body = auth.clone();
    fake.answers
        .insert(key.clone(), (fingerprint, 200, body.clone()));
    fake.effects.push((action, key));
    axum::Json(body).into_response()
}

// ---------------------------------------------------------------------------------------------
// the payments app

struct TestApp {
    app: Router,
    issuer: Arc<TestIssuer>,
    url: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    #[track_caller]
    fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        self.body
    }
}

fn config(processor: &FakeProcessor) -> Config {
    Config {
        processor_url: processor.url.clone(),
        merchant_key: Secret(MERCHANT_KEY.into()),
        processor_timeout_ms: 500,
        ..Config::default()
    }
}

async fn spawn_with(url: &str, config: Config, issuer: Arc<TestIssuer>) -> TestApp {
    let mut common = CommonConfig::defaults(bazaar_payments::NAME, 0);
    common.database_url = Some(url.to_owned());
    common.registry_url = String::new();
    let service =
        bazaar_payments::service(common, config, issuer.verifier(&["bazaar", "payments"]))
            .await
            .expect("service builds");
    TestApp {
        app: service.app(),
        issuer,
        url: url.to_owned(),
    }
}

async fn spawn(url: &str, processor: &FakeProcessor) -> TestApp {
    spawn_with(url, config(processor), Arc::new(TestIssuer::new())).await
}

impl TestApp {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    fn service_token(&self) -> String {
        self.issuer.service("payments")
    }

    async fn save_card(&self, user: &str, number: &str) -> Answer {
        self.send(
            Method::POST,
            "/api/v1/payments/cards",
            Some(&self.issuer.customer(user)),
            Some(&json!({"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"})),
        )
        .await
    }

    async fn card(&self, user: &str, number: &str) -> String {
        self.save_card(user, number)
            .await
            .expect(StatusCode::CREATED)["card_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn authorize(
        &self,
        key: &str,
        order: &str,
        user: &str,
        amount: i64,
        card: &str,
    ) -> Answer {
        self.send(
            Method::POST,
            "/internal/v1/payments/authorize",
            Some(&self.service_token()),
            Some(
                &json!({"idempotency_key": key, "order_id": order, "user_id": user,
                "amount": {"amount_minor": amount, "currency": "EUR"}, "card_token": card}),
            ),
        )
        .await
    }

    async fn operate(&self, id: &str, operation: &str, key: &str) -> Answer {
        self.send(
            Method::POST,
            &format!("/internal/v1/payments/{id}/{operation}"),
            Some(&self.service_token()),
            Some(&json!({"idempotency_key": key})),
        )
        .await
    }

    async fn internal_list(&self, order: &str) -> Vec<Value> {
        self.send(
            Method::GET,
            &format!("/internal/v1/payments?order_id={order}"),
            Some(&self.service_token()),
            None,
        )
        .await
        .expect(StatusCode::OK)["payments"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The events in the outbox, as (type, payload).
    async fn events(&self) -> Vec<(String, Value)> {
        let repository = bazaar_payments::open(&self.url).await.unwrap();
        let events = repository.outbox().read_after(0, 1000).await.unwrap();
        repository.database().close().await;
        events
            .into_iter()
            .map(|e| {
                assert_eq!(e.source, "payments");
                assert_eq!(e.aggregate_id, e.payload["payment_id"].as_str().unwrap());
                (e.event_type, e.payload)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios

/// Cards are checked locally, tokenized by the processor, owned by the user who saved them.
async fn cards_are_tokenized_and_owned(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;

    let card = app
        .save_card("user-1", "4242 4242 4242 4242")
        .await
        .expect(StatusCode::CREATED);
    assert!(card["card_token"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(card["last4"], "4242");
    assert_eq!(card["brand"], "visa");
    assert_eq!(card["exp_month"], 12);
    assert_eq!(card["exp_year"], 2030);

    // A bad Luhn is refused here, without a processor call.
    let calls = processor.tokenize_calls();
    let bad = app.save_card("user-1", "4242424242424241").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["field"], "number");
    assert_eq!(processor.tokenize_calls(), calls);
    for (body, field) in [
        (
            json!({"number": "4242424242424242", "exp_month": 13, "exp_year": 2030, "cvc": "123"}),
            "exp_month",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 30, "cvc": "123"}),
            "exp_year",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "1"}),
            "cvc",
        ),
    ] {
        let answer = app
            .send(
                Method::POST,
                "/api/v1/payments/cards",
                Some(&app.issuer.customer("user-1")),
                Some(&body),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.body["field"], field);
    }
    // The processor's own refusal reaches the user as a 400 naming its field.
    let refused = app
        .send(
            Method::POST,
            "/api/v1/payments/cards",
            Some(&app.issuer.customer("user-1")),
            Some(&json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "000"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["field"], "cvc");

    // Signed-in users only.
    let body =
        json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "123"});
    assert_eq!(
        app.send(Method::POST, "/api/v1/payments/cards", None, Some(&body))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(
            Method::POST,
            "/api/v1/payments/cards",
            Some(&app.service_token()),
            Some(&body)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    // Each user sees their own cards.
    app.card("user-2", "5555555555554444").await;
    let mine = app
        .send(
            Method::GET,
            "/api/v1/payments/cards",
            Some(&app.issuer.customer("user-1")),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(mine["cards"].as_array().unwrap().len(), 1);
    assert_eq!(mine["cards"][0], card);
}

/// The test-card list is the processor's; a processor outage is a 502.
async fn test_cards_come_from_the_processor(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;
    let cards = app
        .send(Method::GET, "/api/v1/payments/test-cards", None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(cards, fake_test_cards());

    let down = spawn_with(
        &url,
        Config {
            processor_url: "http://127.0.0.1:9".into(),
            ..config(&processor)
        },
        Arc::new(TestIssuer::new()),
    )
    .await;
    let answer = down
        .send(Method::GET, "/api/v1/payments/test-cards", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.body["code"], "processor_unavailable");
}

/// Authorize: approved and declined outcomes, events, retries with the same key, key reuse,
/// card ownership, and who may call.
async fn authorization_is_idempotent(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;
    let card = app.card("user-1", "4242424242424242").await;

    let first = app
        .authorize("order-1:pay", "order-1", "user-1", 2599, &card)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first["status"], "authorized");
    assert_eq!(first["order_id"], "order-1");
    assert_eq!(first["user_id"], "user-1");
    assert_eq!(
        first["amount"],
        json!({"amount_minor": 2599, "currency": "EUR"})
    );
    assert_eq!(first["last4"], "4242");
    assert!(first.get("decline_code").is_none());
    assert!(first["processor_authorization_id"]
        .as_str()
        .unwrap()
        .starts_with("auth_"));

    let again = app
        .authorize("order-1:pay", "order-1", "user-1", 2599, &card)
        .await
        .expect(StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(
        processor.effects("authorize"),
        1,
        "the retry did not reach the processor"
    );

    let reused = app
        .authorize("order-1:pay", "order-1", "user-1", 1, &card)
        .await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    assert_eq!(reused.body["field"], "idempotency_key");

    // The card must be the user's.
    let theirs = app.card("user-2", "4242424242424242").await;
    for token in [theirs.as_str(), "tok_unknown"] {
        let answer = app
            .authorize("order-2:pay", "order-2", "user-1", 100, token)
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.body["field"], "card_token");
    }
    assert!(
        app.internal_list("order-2").await.is_empty(),
        "nothing recorded"
    );
    // Validation names the field.
    let answer = app
        .send(
            Method::POST,
            "/internal/v1/payments/authorize",
            Some(&app.service_token()),
            Some(
                &json!({"idempotency_key": "k", "order_id": "o", "user_id": "u",
                "amount": {"amount_minor": 0, "currency": "EUR"}, "card_token": card}),
            ),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["field"], "amount.amount_minor");
    // Services only.
    let body = json!({"idempotency_key": "k", "order_id": "o", "user_id": "user-1",
        "amount": {"amount_minor": 1, "currency": "EUR"}, "card_token": card});
    let customer = app.issuer.customer("user-1");
    assert_eq!(
        app.send(
            Method::POST,
            "/internal/v1/payments/authorize",
            None,
            Some(&body)
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(
            Method::POST,
            "/internal/v1/payments/authorize",
            Some(&customer),
            Some(&body)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    // A decline is an answer, with its event.
    let declining = app.card("user-1", "4000000000000002").await;
    let declined = app
        .authorize("order-3:pay", "order-3", "user-1", 700, &declining)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(declined["status"], "declined");
    assert_eq!(declined["decline_code"], "card_declined");
    assert_eq!(
        app.authorize("order-3:pay", "order-3", "user-1", 700, &declining)
            .await
            .expect(StatusCode::OK),
        declined
    );

    let events = app.events().await;
    assert_eq!(
        events,
        vec![
            (
                "payment.authorized".to_owned(),
                json!({"payment_id": first["payment_id"], "order_id": "order-1",
                "user_id": "user-1", "amount": {"amount_minor": 2599, "currency": "EUR"}, "last4": "4242"})
            ),
            (
                "payment.declined".to_owned(),
                json!({"payment_id": declined["payment_id"], "order_id": "order-3",
                "user_id": "user-1", "amount": {"amount_minor": 700, "currency": "EUR"}, "last4": "0002",
                "decline_code": "card_declined"})
            ),
        ]
    );
}

/// G4 at the unit level: a processor timeout leaves the payment pending; the retry asks the
/// processor again with the same processor key and gets its recorded answer, so the card is
/// charged once. A processor error is a retryable 502.
async fn timeouts_resolve_without_double_charge(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;
    let holding = app.card("user-1", "4000000000000259").await;

    let timed_out = app
        .authorize("order-t:pay", "order-t", "user-1", 1500, &holding)
        .await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(timed_out.body["code"], "processor_timeout");
    assert!(timed_out.headers.contains_key(header::RETRY_AFTER));
    let pending = app.internal_list("order-t").await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(
        processor.effects("authorize"),
        1,
        "the processor authorized it"
    );
    assert!(app.events().await.is_empty());

    let retried = app
        .authorize("order-t:pay", "order-t", "user-1", 1500, &holding)
        .await
        .expect(StatusCode::OK);
    assert_eq!(retried["status"], "authorized");
    assert_eq!(retried["payment_id"], pending[0]["payment_id"]);
    assert_eq!(processor.effects("authorize"), 1, "charged once");
    assert_eq!(
        processor.replays(),
        1,
        "the retry got the processor's recorded answer"
    );
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "payment.authorized");
    // Settled now: further retries do not call the processor.
    app.authorize("order-t:pay", "order-t", "user-1", 1500, &holding)
        .await
        .expect(StatusCode::OK);
    assert_eq!(processor.replays(), 1);

    let failing = app.card("user-1", "4000000000000119").await;
    let failed = app
        .authorize("order-e:pay", "order-e", "user-1", 10, &failing)
        .await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.body["code"], "processor_error");
    assert_eq!(app.internal_list("order-e").await[0]["status"], "pending");
}

/// Capture, void and refund: state rules, idempotency by key, events, and an answer the
/// processor gave but we lost.
async fn capture_void_refund(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;
    let card = app.card("user-1", "4242424242424242").await;
    let payment = app
        .authorize("o1:pay", "o1", "user-1", 1000, &card)
        .await
        .expect(StatusCode::CREATED);
    let id = payment["payment_id"].as_str().unwrap();

    assert_eq!(
        app.operate(id, "refund", "o1:refund").await.status,
        StatusCode::CONFLICT
    );
    let captured = app
        .operate(id, "capture", "o1:capture")
        .await
        .expect(StatusCode::OK);
    assert_eq!(captured["status"], "captured");
    assert_eq!(
        app.operate(id, "capture", "o1:capture")
            .await
            .expect(StatusCode::OK),
        captured
    );
    assert_eq!(processor.effects("capture"), 1);
    // Capturing a captured payment under another key changes nothing and succeeds.
    assert_eq!(
        app.operate(id, "capture", "o1:capture-2")
            .await
            .expect(StatusCode::OK)["status"],
        "captured"
    );
    assert_eq!(processor.effects("capture"), 1);
    let void = app.operate(id, "void", "o1:void").await;
    assert_eq!(void.status, StatusCode::CONFLICT);
    assert_eq!(void.body["code"], "invalid_payment_state");
    // A key is bound to its operation and payment.
    let reused = app.operate(id, "refund", "o1:capture").await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["field"], "idempotency_key");

    let refunded = app
        .operate(id, "refund", "o1:refund")
        .await
        .expect(StatusCode::OK);
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(
        app.operate(id, "refund", "o1:refund")
            .await
            .expect(StatusCode::OK),
        refunded
    );
    assert_eq!(processor.effects("refund"), 1);

    // Void of an authorized payment; capture after that is refused.
    let second = app
        .authorize("o2:pay", "o2", "user-1", 300, &card)
        .await
        .expect(StatusCode::CREATED);
    let second_id = second["payment_id"].as_str().unwrap();
    assert_eq!(
        app.operate(second_id, "void", "o2:void")
            .await
            .expect(StatusCode::OK)["status"],
        "voided"
    );
    assert_eq!(
        app.operate(second_id, "capture", "o2:capture").await.status,
        StatusCode::CONFLICT
    );

    // The processor captured (an earlier call whose answer was lost); our capture learns it.
    let third = app
        .authorize("o3:pay", "o3", "user-1", 300, &card)
        .await
        .expect(StatusCode::CREATED);
    let third_id = third["payment_id"].as_str().unwrap();
    processor.act_directly(
        third["processor_authorization_id"].as_str().unwrap(),
        "captured",
    );
    assert_eq!(
        app.operate(third_id, "capture", "o3:capture")
            .await
            .expect(StatusCode::OK)["status"],
        "captured"
    );

    // Declined payments cannot be captured; unknown payments are 404.
    let declining = app.card("user-1", "4000000000000002").await;
    let declined = app
        .authorize("o4:pay", "o4", "user-1", 300, &declining)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(
        app.operate(
            declined["payment_id"].as_str().unwrap(),
            "capture",
            "o4:capture"
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.operate("nope", "capture", "x").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.operate(id, "capture", "").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let types: Vec<String> = app.events().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        [
            "payment.authorized",
            "payment.captured",
            "payment.refunded",
            "payment.authorized",
            "payment.voided",
            "payment.authorized",
            "payment.captured",
            "payment.declined",
        ]
    );
    let events = app.events().await;
    assert_eq!(
        events[1].1,
        json!({"payment_id": id, "order_id": "o1", "user_id": "user-1", "amount": {"amount_minor": 1000, "currency": "EUR"}})
    );
}

/// Owners and admins read payments; other users get 404s; internal reads need a service.
async fn reads_are_owner_or_admin(url: String) {
    let processor = FakeProcessor::start().await;
    let app = spawn(&url, &processor).await;
    let card = app.card("user-1", "4242424242424242").await;
    let payment = app
        .authorize("o1:pay", "o1", "user-1", 1000, &card)
        .await
        .expect(StatusCode::CREATED);
    let id = payment["payment_id"].as_str().unwrap();
    let owner = app.issuer.customer("user-1");
    let other = app.issuer.customer("user-2");
    let admin = app.issuer.admin("admin-1");

    assert_eq!(
        app.send(
            Method::GET,
            &format!("/api/v1/payments/{id}"),
            Some(&owner),
            None
        )
        .await
        .expect(StatusCode::OK),
        payment
    );
    assert_eq!(
        app.send(
            Method::GET,
            &format!("/api/v1/payments/{id}"),
            Some(&admin),
            None
        )
        .await
        .expect(StatusCode::OK),
        payment
    );
    assert_eq!(
        app.send(
            Method::GET,
            &format!("/api/v1/payments/{id}"),
            Some(&other),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send(Method::GET, "/api/v1/payments/nope", Some(&owner), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send(Method::GET, &format!("/api/v1/payments/{id}"), None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let list = |token: String| {
        let app = &app;
        async move {
            app.send(
                Method::GET,
                "/api/v1/payments?order_id=o1",
                Some(&token),
                None,
            )
            .await
            .expect(StatusCode::OK)["payments"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(list(owner.clone()).await, 1);
    assert_eq!(list(admin.clone()).await, 1);
    assert_eq!(list(other.clone()).await, 0);
    // Without an order filter: the caller's own payments (everyone's for an admin).
    let other_card = app.card("user-2", "4242424242424242").await;
    app.authorize("o2:pay", "o2", "user-2", 10, &other_card)
        .await
        .expect(StatusCode::CREATED);
    for (token, expected) in [
        (&owner, vec!["o1"]),
        (&other, vec!["o2"]),
        (&admin, vec!["o1", "o2"]),
    ] {
        let all = app
            .send(Method::GET, "/api/v1/payments", Some(token), None)
            .await
            .expect(StatusCode::OK);
        let orders: Vec<&str> = all["payments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["order_id"].as_str().unwrap())
            .collect();
        assert_eq!(orders, expected);
    }

    assert_eq!(app.internal_list("o1").await, vec![payment.clone()]);
    assert_eq!(
        app.send(
            Method::GET,
            &format!("/internal/v1/payments/{id}"),
            Some(&app.service_token()),
            None
        )
        .await
        .expect(StatusCode::OK),
        payment
    );
    assert_eq!(
        app.send(
            Method::GET,
            "/internal/v1/payments?order_id=o1",
            Some(&owner),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::sqlite_url(dir.path(), "payments")).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(url) = super::fresh_postgres_database(stringify!($name)).await {
                        super::$name(url).await;
                    }
                }
            )*
        }
    };
}

on_both_engines!(
    cards_are_tokenized_and_owned,
    test_cards_come_from_the_processor,
    authorization_is_idempotent,
    timeouts_resolve_without_double_charge,
    capture_void_refund,
    reads_are_owner_or_admin,
);

// ---------------------------------------------------------------------------------------------
// SQLite only

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// After saving cards and paying with them, no file of the database (nor the WAL) and no log
/// line holds a card number.
#[tokio::test]
async fn card_numbers_are_never_stored_or_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let processor = FakeProcessor::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(&sqlite_url(dir.path(), "payments"), &processor).await;
    let numbers = ["4242424242424242", "4000000000000002", "4000000000000119"];
    for (i, number) in numbers.iter().enumerate() {
        let card = app.card("user-1", number).await;
        app.authorize(&format!("k{i}"), &format!("o{i}"), "user-1", 100, &card)
            .await;
    }
    let bad = app.save_card("user-1", "4242424242424241").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(!bad.body.to_string().contains("4242424242424241"));

    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        for number in numbers.iter().chain(["4242424242424241"].iter()) {
            assert!(
                !bytes.windows(number.len()).any(|w| w == number.as_bytes()),
                "{number} is in a database file"
            );
        }
    }
    assert!(files >= 1);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("authorization stored"),
        "the test saw the logs"
    );
    for number in numbers {
        assert!(!logs.contains(number), "{number} was logged");
    }
}

/// The OpenAPI document lists the routes and documents the chaos hook.
#[tokio::test]
async fn openapi_lists_the_routes() {
    let processor = FakeProcessor::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(&sqlite_url(dir.path(), "payments"), &processor).await;
    let doc = app
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .expect(StatusCode::OK);
    for path in [
        "/api/v1/payments/cards",
        "/api/v1/payments/test-cards",
        "/api/v1/payments",
        "/api/v1/payments/{id}",
        "/internal/v1/payments",
        "/internal/v1/payments/authorize",
        "/internal/v1/payments/{id}",
        "/internal/v1/payments/{id}/capture",
        "/internal/v1/payments/{id}/void",
        "/internal/v1/payments/{id}/refund",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    assert!(doc["info"]["description"]
        .as_str()
        .unwrap()
        .contains("crash_after_processor_call"));
}

/// A configuration naming an unknown chaos point is refused at start-up.
#[tokio::test]
async fn unknown_chaos_points_are_refused() {
    let processor = FakeProcessor::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut common = CommonConfig::defaults(bazaar_payments::NAME, 0);
    common.database_url = Some(sqlite_url(dir.path(), "payments"));
    let config = Config {
        crash_after_processor_call: "autorize".into(),
        ..config(&processor)
    };
    let error = bazaar_payments::service(common, config, TestIssuer::new().verifier(&["payments"]))
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("crash_after_processor_call"));
}

const CHILD_ENV: &str = "BAZAAR_PAYMENTS_TEST_CRASH_CHILD";

/// The child half of `crash_after_authorize_then_retry_charges_once`: runs payments with the
/// chaos hook armed and authorizes; the process must exit inside that call.
#[tokio::test]
#[ignore = "run as a child process by crash_after_authorize_then_retry_charges_once"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (url, processor_url, card) = (parts[0], parts[1], parts[2]);
    let processor = FakeProcessor {
        url: processor_url.to_owned(),
        ..FakeProcessor::default()
    };
    let app = spawn_with(
        url,
        Config {
            crash_after_processor_call: "authorize".into(),
            ..config(&processor)
        },
        Arc::new(TestIssuer::new()),
    )
    .await;
    app.authorize("order-x:pay", "order-x", "user-1", 4200, card)
        .await;
    panic!("the chaos hook did not exit");
}

/// G4 across a crash: the process dies after the processor authorized and before the answer
/// was stored; the retry after the restart gets the processor's recorded answer, so the card is
/// charged once and one event is published.
#[tokio::test]
async fn crash_after_authorize_then_retry_charges_once() {
    let processor = FakeProcessor::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path(), "payments");
    let card = {
        let app = spawn(&url, &processor).await;
        app.card("user-1", "4242424242424242").await
    };

    // The fake processor runs on this runtime, so wait for the child without blocking it.
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{url}|{}|{card}", processor.url))
        .output()
        .await
        .unwrap();
    assert_eq!(
        child.status.code(),
        Some(86),
        "the chaos hook exits with 86; the child said:\n{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(
        processor.effects("authorize"),
        1,
        "the processor authorized before the crash"
    );

    let app = spawn(&url, &processor).await;
    let pending = app.internal_list("order-x").await;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0]["status"], "pending",
        "the answer was never stored"
    );
    assert!(app.events().await.is_empty());

    let retried = app
        .authorize("order-x:pay", "order-x", "user-1", 4200, &card)
        .await
        .expect(StatusCode::OK);
    assert_eq!(retried["status"], "authorized");
    assert_eq!(retried["payment_id"], pending[0]["payment_id"]);
    assert_eq!(processor.effects("authorize"), 1, "charged once");
    assert_eq!(processor.replays(), 1);
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "payment.authorized");
}
