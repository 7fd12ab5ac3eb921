//! The processor's one integration-test binary: the real router (`Service::app()`, with the
//! kit's layers) driven with `oneshot`. Every scenario is an `async fn` over a database URL,
//! run on a fresh SQLite file always and on a fresh PostgreSQL database when
//! `BAZAAR_TEST_POSTGRES_URL` is set, because idempotency and the state machine are enforced
//! by the database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_processor::Config;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "sk_test_bazaar";

// ---------------------------------------------------------------------------------------------
// helpers

struct TestApp {
    app: Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        self.body
    }
}

async fn spawn(url: &str, config: Config) -> TestApp {
    let mut common = CommonConfig::defaults(bazaar_processor::NAME, 0);
    common.database_url = Some(url.to_owned());
    common.registry_url = String::new();
    let service = bazaar_processor::service(common, config)
        .await
        .expect("service builds");
    TestApp { app: service.app() }
}

fn quick() -> Config {
    Config {
        timeout_delay_ms: 60_000,
        slow_delay_ms: 200,
        ..Config::default()
    }
}

impl TestApp {
    async fn send(&self, request: Request<Body>) -> Answer {
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

    fn request(
        method: Method,
        uri: &str,
        auth: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {auth}"));
        }
        if let Some(key) = idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(Self::request(Method::GET, uri, Some(KEY), None, None))
            .await
    }

    async fn post(&self, uri: &str, key: Option<&str>, body: Option<&Value>) -> Answer {
        self.send(Self::request(Method::POST, uri, Some(KEY), key, body))
            .await
    }

    async fn tokenize(&self, number: &str) -> String {
        let cvc = if number.starts_with("34") || number.starts_with("37") {
            "1234"
        } else {
            "123"
        };
        let body = self
            .post(
                "/v1/tokens",
                None,
                Some(&json!({"number": number, "exp_month": 12, "exp_year": 2099, "cvc": cvc})),
            )
            .await
            .expect(StatusCode::CREATED);
        body["token"].as_str().expect("token").to_owned()
    }

    async fn authorize(&self, key: &str, token: &str, amount: i64, reference: &str) -> Answer {
        self.post(
            "/v1/authorizations",
            Some(key),
            Some(&json!({"token": token, "amount_minor": amount, "currency": "USD", "reference": reference})),
        )
        .await
    }

    async fn action(&self, id: &str, action: &str, key: &str, body: Option<&Value>) -> Answer {
        self.post(
            &format!("/v1/authorizations/{id}/{action}"),
            Some(key),
            body,
        )
        .await
    }

    async fn by_reference(&self, reference: &str) -> Vec<Value> {
        self.get(&format!("/v1/authorizations?reference={reference}"))
            .await
            .expect(StatusCode::OK)["authorizations"]
            .as_array()
            .expect("list")
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios, each over a database URL

/// Only the merchant key opens the API; the test-card list is public.
async fn merchant_key_is_required(url: String) {
    let app = spawn(&url, quick()).await;
    let card =
        json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "123"});
    for auth in [None, Some("sk_wrong"), Some("")] {
        let answer = app
            .send(TestApp::request(
                Method::POST,
                "/v1/tokens",
                auth,
                None,
                Some(&card),
            ))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(answer.body["code"], "unauthorized");
        assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    }
    let answer = app
        .send(TestApp::request(
            Method::GET,
            "/v1/authorizations",
            None,
            None,
            None,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let cards = app
        .send(TestApp::request(
            Method::GET,
            "/v1/test-cards",
            None,
            None,
            None,
        ))
        .await
        .expect(StatusCode::OK);
    assert_eq!(cards["test_cards"].as_array().unwrap().len(), 8);

    // Another configured key replaces the default.
    let other = spawn(
        &url,
        Config {
            merchant_key: "sk_live_other".into(),
            ..quick()
        },
    )
    .await;
    let answer = other.post("/v1/tokens", None, Some(&card)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = other
        .send(TestApp::request(
            Method::POST,
            "/v1/tokens",
            Some("sk_live_other"),
            None,
            Some(&card),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

/// Tokenization checks Luhn, expiry format and CVC, naming the field; it answers brand and last
/// four, never the number.
async fn tokenization_validates_cards(url: String) {
    let app = spawn(&url, quick()).await;
    let cases = [
        (
            json!({"number": "4242424242424241", "exp_month": 1, "exp_year": 2030, "cvc": "123"}),
            "number",
            "incorrect_number",
        ),
        (
            json!({"number": "4242-abcd", "exp_month": 1, "exp_year": 2030, "cvc": "123"}),
            "number",
            "invalid_number",
        ),
        (
            json!({"number": "42", "exp_month": 1, "exp_year": 2030, "cvc": "123"}),
            "number",
            "invalid_number",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 13, "exp_year": 2030, "cvc": "123"}),
            "exp_month",
            "invalid_expiry_month",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 0, "exp_year": 2030, "cvc": "123"}),
            "exp_month",
            "invalid_expiry_month",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 30, "cvc": "123"}),
            "exp_year",
            "invalid_expiry_year",
        ),
        (
            json!({"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "12"}),
            "cvc",
            "invalid_cvc",
        ),
        (
            json!({"number": "378282246310005", "exp_month": 1, "exp_year": 2030, "cvc": "123"}),
            "cvc",
            "invalid_cvc",
        ),
    ];
    for (body, field, code) in cases {
        let answer = app.post("/v1/tokens", None, Some(&body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.body["field"], field, "{body}");
        assert_eq!(answer.body["code"], code, "{body}");
    }
    let answer = app
        .post("/v1/tokens", None, Some(&json!({"number": "4242424242424242", "exp_month": "x", "exp_year": 2030, "cvc": "123"})))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["field"], "exp_month");

    let card = app
        .post(
            "/v1/tokens",
            None,
            Some(&json!({"number": "4242 4242 4242 4242", "exp_month": 7, "exp_year": 2031, "cvc": "123", "holder": "Ada"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert!(card["token"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(card["brand"], "visa");
    assert_eq!(card["last4"], "4242");
    assert_eq!(card["exp_month"], 7);
    assert_eq!(card["exp_year"], 2031);
    assert!(!card.to_string().contains("4242424242424242"));
    let mc = app
        .post(
            "/v1/tokens",
            None,
            Some(&json!({"number": "5555555555554444", "exp_month": 7, "exp_year": 2031, "cvc": "123"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(mc["brand"], "mastercard");
    assert_eq!(mc["last4"], "4444");
}

/// Every card in the published list behaves as its entry says, and so do unlisted numbers.
async fn test_cards_behave_as_documented(url: String) {
    let app = spawn(&url, quick()).await;
    let list = app.get("/v1/test-cards").await.expect(StatusCode::OK);
    let cards = list["test_cards"].as_array().unwrap().clone();
    let numbers: Vec<&str> = cards
        .iter()
        .map(|c| c["number"].as_str().unwrap())
        .collect();
    for wanted in [
        "4242424242424242",
        "4000000000000002",
        "4000000000009995",
        "4000000000000069",
        "4000000000000119",
        "4000000000000259",
        "4000000000003220",
        "5555555555554444",
    ] {
        assert!(numbers.contains(&wanted), "{wanted} is documented");
    }
    for (i, card) in cards.iter().enumerate() {
        let number = card["number"].as_str().unwrap();
        let token = app.tokenize(number).await;
        let reference = format!("order-{i}");
        let key = format!("key-{i}");
        match card["behaviour"].as_str().unwrap() {
            "success" => {
                let auth = app
                    .authorize(&key, &token, 1000, &reference)
                    .await
                    .expect(StatusCode::CREATED);
                assert_eq!(auth["status"], "approved", "{number}");
                assert_eq!(auth["state"], "authorized");
                assert_eq!(auth["brand"], card["brand"]);
                assert!(auth.get("decline_code").is_none());
            }
            "declined" => {
                let auth = app
                    .authorize(&key, &token, 1000, &reference)
                    .await
                    .expect(StatusCode::CREATED);
                assert_eq!(auth["status"], "declined", "{number}");
                assert_eq!(auth["state"], "declined");
                assert_eq!(auth["decline_code"], card["decline_code"]);
            }
            "processor_error" => {
                for _ in 0..2 {
                    let answer = app.authorize(&key, &token, 1000, &reference).await;
                    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
                    assert_eq!(answer.body["code"], "processor_error");
                }
                assert!(
                    app.by_reference(&reference).await.is_empty(),
                    "nothing authorized"
                );
            }
            "timeout" => {
                let pending = tokio::time::timeout(
                    Duration::from_secs(2),
                    app.authorize(&key, &token, 1000, &reference),
                )
                .await;
                assert!(pending.is_err(), "the caller times out");
                let recorded = app.by_reference(&reference).await;
                assert_eq!(recorded.len(), 1, "authorized and recorded");
                assert_eq!(recorded[0]["state"], "authorized");
                // The answer is held for 60 s, but a retry is answered at once.
                let retry = tokio::time::timeout(
                    Duration::from_secs(10),
                    app.authorize(&key, &token, 1000, &reference),
                )
                .await
                .expect("the retry is answered at once");
                assert!(retry.replayed());
                let retry = retry.expect(StatusCode::CREATED);
                assert_eq!(retry["id"], recorded[0]["id"]);
                assert_eq!(retry["status"], "approved");
            }
            "slow" => {
                let started = Instant::now();
                let auth = app
                    .authorize(&key, &token, 1000, &reference)
                    .await
                    .expect(StatusCode::CREATED);
                assert!(started.elapsed() >= Duration::from_millis(200));
                assert_eq!(auth["status"], "approved");
            }
            other => panic!("undocumented behaviour {other}"),
        }
    }

    // Unlisted Luhn-valid numbers are approved, whatever the brand.
    for (i, number) in ["4111111111111111", "378282246310005", "6011111111111117"]
        .iter()
        .enumerate()
    {
        let token = app.tokenize(number).await;
        let auth = app
            .authorize(&format!("other-{i}"), &token, 500, "other")
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(auth["status"], "approved", "{number}");
    }
    // A card past its expiry month is declined as expired.
    let expired = app
        .post(
            "/v1/tokens",
            None,
            Some(&json!({"number": "4111111111111111", "exp_month": 1, "exp_year": 2020, "cvc": "123"})),
        )
        .await
        .expect(StatusCode::CREATED);
    let auth = app
        .authorize("expired", expired["token"].as_str().unwrap(), 500, "x")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(auth["status"], "declined");
    assert_eq!(auth["decline_code"], "expired_card");
}

/// Same key and body → the same answer, once; same key, other body → refused; no key → 400.
async fn authorizations_are_idempotent(url: String) {
    let app = spawn(&url, quick()).await;
    let token = app.tokenize("4242424242424242").await;
    let first = app.authorize("k1", &token, 2500, "order-1").await;
    assert!(!first.replayed());
    let first = first.expect(StatusCode::CREATED);
    assert!(first["id"].as_str().unwrap().starts_with("auth_"));
    assert_eq!(first["amount_minor"], 2500);
    assert_eq!(first["currency"], "USD");
    assert_eq!(first["reference"], "order-1");
    assert_eq!(first["captured_minor"], 0);
    assert_eq!(first["refunded_minor"], 0);
    assert_eq!(first["last4"], "4242");

    let again = app.authorize("k1", &token, 2500, "order-1").await;
    assert!(again.replayed());
    assert_eq!(again.expect(StatusCode::CREATED), first);

    let reused = app.authorize("k1", &token, 9999, "order-1").await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    assert_eq!(reused.body["field"], "Idempotency-Key");

    let no_key = app
        .post(
            "/v1/authorizations",
            None,
            Some(&json!({"token": token, "amount_minor": 1, "currency": "USD", "reference": "r"})),
        )
        .await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.body["field"], "Idempotency-Key");

    assert_eq!(app.by_reference("order-1").await, vec![first.clone()]);

    // A second key is a second authorization.
    let second = app
        .authorize("k2", &token, 2500, "order-1")
        .await
        .expect(StatusCode::CREATED);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(app.by_reference("order-1").await.len(), 2);

    // Validation names the field and stores nothing under the key.
    for (body, field) in [
        (
            json!({"token": token, "amount_minor": 0, "currency": "USD", "reference": "r"}),
            "amount_minor",
        ),
        (
            json!({"token": token, "amount_minor": 1, "currency": "usd", "reference": "r"}),
            "currency",
        ),
        (
            json!({"token": token, "amount_minor": 1, "currency": "USD", "reference": ""}),
            "reference",
        ),
        (
            json!({"token": "tok_nope", "amount_minor": 1, "currency": "USD", "reference": "r"}),
            "token",
        ),
        (
            json!({"amount_minor": 1, "currency": "USD", "reference": "r"}),
            "token",
        ),
    ] {
        let answer = app
            .post("/v1/authorizations", Some("k3"), Some(&body))
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer.body["field"], field, "{body}");
    }
    app.authorize("k3", &token, 1, "r")
        .await
        .expect(StatusCode::CREATED);
}

/// Concurrent requests with one key make exactly one authorization and get the same answer.
async fn concurrent_retries_make_one_authorization(url: String) {
    let app = Arc::new(spawn(&url, quick()).await);
    let token = app.tokenize("4242424242424242").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move { app.authorize("same", &token, 700, "order-c").await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        ids.push(answer.expect(StatusCode::CREATED)["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.by_reference("order-c").await.len(), 1);

    // The same for captures: one capture, the same answer for all.
    let id = ids[0].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            let id = id.clone();
            tokio::spawn(async move { app.action(&id, "capture", "cap", None).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.push(task.await.unwrap().expect(StatusCode::OK));
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(bodies[0]["state"], "captured");
    assert_eq!(bodies[0]["captured_minor"], 700);
}

/// Capture, void and refund follow the state machine; refused transitions are 409 and store
/// nothing; every write is idempotent by key.
async fn state_machine(url: String) {
    let app = spawn(&url, quick()).await;
    let token = app.tokenize("4242424242424242").await;
    let auth = app
        .authorize("a1", &token, 1000, "o1")
        .await
        .expect(StatusCode::CREATED);
    let id = auth["id"].as_str().unwrap();

    // Missing key, unknown id, more than authorized.
    assert_eq!(
        app.post(&format!("/v1/authorizations/{id}/capture"), None, None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.action("auth_nope", "capture", "c0", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/authorizations/auth_nope").await.status,
        StatusCode::NOT_FOUND
    );
    let too_much = app
        .action(id, "capture", "c0", Some(&json!({"amount_minor": 1001})))
        .await;
    assert_eq!(too_much.status, StatusCode::CONFLICT);
    assert_eq!(too_much.body["code"], "invalid_state");
    let bad = app
        .action(id, "capture", "c0", Some(&json!({"amount_minor": -5})))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "amount_minor");

    // Partial capture; "c0" was never stored, so it is free to use now.
    let captured = app
        .action(id, "capture", "c0", Some(&json!({"amount_minor": 800})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(captured["state"], "captured");
    assert_eq!(captured["captured_minor"], 800);
    let replay = app
        .action(id, "capture", "c0", Some(&json!({"amount_minor": 800})))
        .await;
    assert!(replay.replayed());
    assert_eq!(replay.expect(StatusCode::OK), captured);
    // A new capture or a void of a captured authorization is refused.
    assert_eq!(
        app.action(id, "capture", "c1", None).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.action(id, "void", "v1", None).await.status,
        StatusCode::CONFLICT
    );
    // The key is bound to its request.
    let reused = app.action(id, "refund", "c0", None).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency_key_reused");

    // Partial then full refund.
    let partly = app
        .action(id, "refund", "r1", Some(&json!({"amount_minor": 300})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(partly["state"], "captured");
    assert_eq!(partly["refunded_minor"], 300);
    assert_eq!(
        app.action(id, "refund", "r2", Some(&json!({"amount_minor": 501})))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let refunded = app
        .action(id, "refund", "r2", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(refunded["state"], "refunded");
    assert_eq!(refunded["refunded_minor"], 800);
    assert_eq!(
        app.action(id, "refund", "r3", None).await.status,
        StatusCode::CONFLICT
    );
    // Replays answer what was answered then, not the state now.
    assert_eq!(
        app.action(id, "refund", "r1", Some(&json!({"amount_minor": 300})))
            .await
            .expect(StatusCode::OK),
        partly
    );
    assert_eq!(
        app.get(&format!("/v1/authorizations/{id}"))
            .await
            .expect(StatusCode::OK),
        refunded
    );

    // Void, then nothing else.
    let other = app
        .authorize("a2", &token, 400, "o2")
        .await
        .expect(StatusCode::CREATED);
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(
        app.action(other_id, "refund", "r4", None).await.status,
        StatusCode::CONFLICT
    );
    let voided = app
        .action(other_id, "void", "v2", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(voided["state"], "voided");
    assert_eq!(
        app.action(other_id, "void", "v2", None)
            .await
            .expect(StatusCode::OK),
        voided
    );
    assert_eq!(
        app.action(other_id, "void", "v3", None).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.action(other_id, "capture", "c3", None).await.status,
        StatusCode::CONFLICT
    );

    // A declined authorization cannot be captured or voided.
    let declined_token = app.tokenize("4000000000000002").await;
    let declined = app
        .authorize("a3", &declined_token, 400, "o3")
        .await
        .expect(StatusCode::CREATED);
    let declined_id = declined["id"].as_str().unwrap();
    assert_eq!(
        app.action(declined_id, "capture", "c4", None).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.action(declined_id, "void", "v4", None).await.status,
        StatusCode::CONFLICT
    );

    // Listing: by reference, everything, and the limit's bounds.
    assert_eq!(app.by_reference("o2").await, vec![voided]);
    let all = app.get("/v1/authorizations").await.expect(StatusCode::OK);
    assert_eq!(all["authorizations"].as_array().unwrap().len(), 3);
    let last = app
        .get("/v1/authorizations?limit=1")
        .await
        .expect(StatusCode::OK);
    assert_eq!(last["authorizations"][0]["id"], declined["id"]);
    let bad = app.get("/v1/authorizations?limit=0").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["field"], "limit");
}

/// Keys, answers, authorizations and the vault survive a restart.
async fn state_survives_a_restart(url: String) {
    let (token, first, captured) = {
        let app = spawn(&url, quick()).await;
        let token = app.tokenize("5555555555554444").await;
        let first = app
            .authorize("p1", &token, 1200, "order-p")
            .await
            .expect(StatusCode::CREATED);
        let id = first["id"].as_str().unwrap().to_owned();
        let captured = app
            .action(&id, "capture", "pc", None)
            .await
            .expect(StatusCode::OK);
        (token, first, captured)
    };
    let app = spawn(&url, quick()).await;
    let again = app.authorize("p1", &token, 1200, "order-p").await;
    assert!(again.replayed());
    assert_eq!(again.expect(StatusCode::CREATED), first);
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        app.action(id, "capture", "pc", None)
            .await
            .expect(StatusCode::OK),
        captured
    );
    assert_eq!(
        app.get(&format!("/v1/authorizations/{id}"))
            .await
            .expect(StatusCode::OK),
        captured
    );
    // The token still works.
    let second = app
        .authorize("p2", &token, 10, "order-p")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(second["brand"], "mastercard");
    assert_eq!(app.by_reference("order-p").await.len(), 2);
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::sqlite_url(dir.path(), "processor")).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    merchant_key_is_required,
    tokenization_validates_cards,
    test_cards_behave_as_documented,
    authorizations_are_idempotent,
    concurrent_retries_make_one_authorization,
    state_machine,
    state_survives_a_restart,
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

/// Everything logged (at every level) while tokenizing, authorizing, capturing, and refusing a
/// bad number never contains a card number.
#[tokio::test]
async fn card_numbers_are_never_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The current-thread runtime runs every handler on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(&sqlite_url(dir.path(), "processor"), quick()).await;
    let token = app.tokenize("4000000000009995").await;
    app.authorize("l1", &token, 100, "order-l")
        .await
        .expect(StatusCode::CREATED);
    let token = app.tokenize("4111111111111111").await;
    let auth = app
        .authorize("l2", &token, 100, "order-l")
        .await
        .expect(StatusCode::CREATED);
    app.action(auth["id"].as_str().unwrap(), "capture", "l3", None)
        .await
        .expect(StatusCode::OK);
    let token = app.tokenize("4000000000000119").await;
    app.authorize("l4", &token, 100, "order-l").await;
    let bad = app
        .post("/v1/tokens", None, Some(&json!({"number": "4111111111111112", "exp_month": 1, "exp_year": 2030, "cvc": "123"})))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(!bad.body.to_string().contains("4111111111111112"));

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("authorization recorded"),
        "the test saw the logs: {logs}"
    );
    for number in [
        "4000000000009995",
        "4111111111111111",
        "4000000000000119",
        "4111111111111112",
    ] {
        assert!(!logs.contains(number), "{number} was logged");
    }
}

/// The OpenAPI document lists every route.
#[tokio::test]
async fn openapi_lists_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(&sqlite_url(dir.path(), "processor"), quick()).await;
    let doc = app.get("/openapi.json").await.expect(StatusCode::OK);
    for path in [
        "/v1/test-cards",
        "/v1/tokens",
        "/v1/authorizations",
        "/v1/authorizations/{id}",
        "/v1/authorizations/{id}/capture",
        "/v1/authorizations/{id}/void",
        "/v1/authorizations/{id}/refund",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    assert!(doc["components"]["securitySchemes"]
        .get("merchant_key")
        .is_some());
}
