//! The inventory's one integration-test binary.
//!
//! Every test drives the complete application (`Service::app()`, so the kit's layers and
//! fallbacks are included) with `oneshot`, and inspects the database through a second handle
//! on it (`bazaar_inventory::open`): stock levels, the outbox, the audit log, and the expiry
//! sweep, which tests run at a chosen time instead of waiting. Scenarios that stress storage
//! are written once over an engine and run on a fresh SQLite file always and on PostgreSQL
//! when `BAZAAR_TEST_POSTGRES_URL` is set.
//!
//! Expectations about the seed are computed from the seed itself, so the data files can grow.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bazaar_inventory::model::REASON_EXPIRED;
use bazaar_inventory::{seed, Config, Repository};
use bazaar_kit::audit::AuditLog;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::now_ms;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_messaging::EventEnvelope;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers

/// Where a scenario runs.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Sqlite,
    Postgres,
}

struct TestApp {
    app: Router,
    /// A second handle on the service's database, for looking behind the API.
    repo: Repository,
    issuer: Arc<bazaar_auth::testing::TestIssuer>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

/// The app on `engine`, or `None` when that engine is not available (PostgreSQL unset).
async fn app_on(engine: Engine, label: &str) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match engine {
        Engine::Sqlite => sqlite_url(dir.path(), label),
        Engine::Postgres => fresh_postgres_database(label).await?,
    };
    let mut common = CommonConfig::defaults(bazaar_inventory::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    common.database_url = Some(url.clone());
    let issuer = Arc::new(bazaar_auth::testing::TestIssuer::new());
    let config = Config {
        // Tests sweep expiries themselves, at the time they choose.
        sweep_interval_ms: 0,
        ..Config::default()
    };
    let service = bazaar_inventory::service(
        common,
        config.clone(),
        issuer.verifier(&["bazaar", bazaar_inventory::NAME]),
    )
    .await
    .expect("service builds");
    let repo = bazaar_inventory::open(
        &url,
        &Config {
            seed: false,
            ..config
        },
    )
    .await
    .expect("second handle");
    Some(TestApp {
        app: service.app(),
        repo,
        issuer,
        _dir: dir,
    })
}

async fn spawn_app(label: &str) -> TestApp {
    app_on(Engine::Sqlite, label).await.expect("sqlite")
}

impl TestApp {
    fn service_token(&self) -> String {
        self.issuer.service(bazaar_inventory::NAME)
    }

    fn admin_token(&self) -> String {
        self.issuer.admin("admin-1")
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
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
        Answer { status, body }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, None).await
    }

    /// An internal call with a service token.
    async fn internal(&self, method: Method, uri: &str, body: Option<&Value>) -> Answer {
        let token = self.service_token();
        self.call(method, uri, Some(&token), body).await
    }

    async fn reserve(&self, key: &str, lines: Value, destination: (f64, f64)) -> Answer {
        let body = json!({"key": key, "lines": lines,
                          "destination": {"lat": destination.0, "lon": destination.1}});
        self.internal(Method::POST, "/internal/v1/reservations", Some(&body))
            .await
    }

    async fn commit(&self, key: &str) -> Answer {
        self.internal(
            Method::POST,
            &format!("/internal/v1/reservations/{key}/commit"),
            None,
        )
        .await
    }

    async fn release(&self, key: &str) -> Answer {
        self.internal(
            Method::POST,
            &format!("/internal/v1/reservations/{key}/release"),
            None,
        )
        .await
    }

    async fn adjust(&self, product_id: &str, warehouse_id: &str, delta: i64) -> Answer {
        let token = self.admin_token();
        let body = json!({"warehouse_id": warehouse_id, "delta": delta, "reason": "test"});
        self.call(
            Method::POST,
            &format!("/api/v1/inventory/{product_id}/adjustments"),
            Some(&token),
            Some(&body),
        )
        .await
    }

    /// `(on_hand, reserved)` of a product at a warehouse, read behind the API.
    async fn levels(&self, product_id: &str, warehouse_id: &str) -> (i64, i64) {
        let item = self
            .repo
            .item(product_id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{product_id} is stocked"));
        let w = item
            .warehouses
            .iter()
            .find(|w| w.warehouse_id == warehouse_id)
            .expect("warehouse listed");
        assert_eq!(w.available, w.on_hand - w.reserved);
        (w.on_hand, w.reserved)
    }

    /// Sets the units on hand of a product at each warehouse, through admin adjustments.
    async fn set_stock(&self, product_id: &str, targets: &[(&str, i64)]) {
        for (warehouse_id, target) in targets {
            let (on_hand, _) = self.levels(product_id, warehouse_id).await;
            if on_hand != *target {
                let answer = self
                    .adjust(product_id, warehouse_id, target - on_hand)
                    .await;
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            }
        }
    }

    /// Every event in the outbox so far.
    async fn events(&self) -> Vec<EventEnvelope> {
        self.repo
            .outbox()
            .read_after(0, 10_000)
            .await
            .expect("outbox")
    }

    async fn events_of(&self, event_type: &str) -> Vec<EventEnvelope> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }
}

/// A product of the seed with at least `min` units at every warehouse.
fn seeded_product(min: i64) -> String {
    let seed = seed::builtin().expect("seed");
    let mut by_product: std::collections::BTreeMap<&str, i64> = Default::default();
    for s in &seed.stock {
        let entry = by_product.entry(&s.product_id).or_insert(i64::MAX);
        *entry = (*entry).min(s.quantity);
    }
    let found = by_product
        .into_iter()
        .find(|(_, q)| *q >= min)
        .map(|(p, _)| p.to_owned());
    found.expect("a well-stocked product")
}

const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
const SAN_FRANCISCO: (f64, f64) = (37.7749, -122.4194);
const AMSTERDAM: (f64, f64) = (52.3676, 4.9041);

fn allocations(body: &Value) -> Vec<(String, String, i64)> {
    body["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| {
            (
                a["product_id"].as_str().unwrap().to_owned(),
                a["warehouse_id"].as_str().unwrap().to_owned(),
                a["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// public reads

#[tokio::test]
async fn api_lists_the_seeded_warehouses() {
    let app = spawn_app("warehouses").await;
    let answer = app.get("/api/v1/warehouses").await;
    assert_eq!(answer.status, StatusCode::OK);
    let seed = seed::builtin().unwrap();
    let listed = answer.body["warehouses"].as_array().unwrap();
    assert_eq!(listed.len(), seed.warehouses.len());
    assert!(listed.len() >= 3);
    let reno = listed.iter().find(|w| w["id"] == "reno").expect("reno");
    assert_eq!(reno["lat"], json!(39.5296));
    assert_eq!(reno["lon"], json!(-119.8138));
    assert_eq!(reno["country"], "US");
    assert!(listed.iter().any(|w| w["country"] == "NL"));
}

#[tokio::test]
async fn api_reads_seeded_stock() {
    let app = spawn_app("reads").await;
    let seed = seed::builtin().unwrap();
    let product = seeded_product(5);
    let answer = app.get(&format!("/api/v1/inventory/{product}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["product_id"], product.as_str());
    let mut total = 0;
    for w in answer.body["warehouses"].as_array().unwrap() {
        let expected = seed
            .stock
            .iter()
            .find(|s| s.product_id == product && w["warehouse_id"] == s.warehouse_id.as_str())
            .unwrap()
            .quantity;
        assert_eq!(w["on_hand"], expected);
        assert_eq!(w["reserved"], 0);
        assert_eq!(w["available"], expected);
        assert!(w["lat"].is_f64() && w["lon"].is_f64() && w["name"].is_string());
        total += expected;
    }
    assert_eq!(answer.body["available"], total);

    // The deliberately scarce product: out of stock in both US warehouses.
    let answer = app.get("/api/v1/inventory/electronics-e-ink-reader").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["available"], 3);

    // Unknown product: 404 alone, zeros in a batch.
    let answer = app.get("/api/v1/inventory/no-such-product").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["code"], "not_found");
    let answer = app
        .get(&format!(
            "/api/v1/inventory?product_ids={product},no-such-product,{product}"
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let items = answer.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "distinct ids, in order");
    assert_eq!(items[0]["product_id"], product.as_str());
    assert_eq!(items[0]["available"], total);
    assert_eq!(items[1]["available"], 0);
    assert_eq!(
        items[1]["warehouses"].as_array().unwrap().len(),
        seed.warehouses.len()
    );

    let answer = app.get("/api/v1/inventory").await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["field"], "product_ids");
}

// ---------------------------------------------------------------------------------------------
// allocation

#[tokio::test]
async fn api_reserves_from_the_nearest_warehouse_that_has_it() {
    let app = spawn_app("nearest").await;
    let product = seeded_product(5);
    let (reno_before, _) = app.levels(&product, "reno").await;

    let answer = app
        .reserve(
            "near-ny",
            json!([{"product_id": product, "quantity": 2}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["status"], "reserved");
    assert_eq!(
        allocations(&answer.body),
        vec![(product.clone(), "columbus".to_owned(), 2)]
    );
    let allocation = &answer.body["allocations"][0];
    assert_eq!(allocation["lat"], json!(39.9612));
    assert_eq!(allocation["lon"], json!(-82.9988));
    let expires = answer.body["expires_at_ms"].as_i64().unwrap();
    let ttl = i64::try_from(Config::default().reservation_ttl_ms).unwrap();
    assert!((expires - now_ms() - ttl).abs() < 60_000, "{expires}");

    let answer = app
        .reserve(
            "near-sf",
            json!([{"product_id": product, "quantity": 1}]),
            SAN_FRANCISCO,
        )
        .await;
    assert_eq!(allocations(&answer.body)[0].1, "reno");
    let answer = app
        .reserve(
            "near-ams",
            json!([{"product_id": product, "quantity": 1}]),
            AMSTERDAM,
        )
        .await;
    assert_eq!(allocations(&answer.body)[0].1, "rotterdam");

    assert_eq!(app.levels(&product, "reno").await, (reno_before, 1));
    let answer = app.get(&format!("/api/v1/inventory/{product}")).await;
    let reno = answer.body["warehouses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["warehouse_id"] == "reno")
        .unwrap()
        .clone();
    assert_eq!(reno["available"], reno_before - 1);

    // The nearest warehouse without it is skipped: the e-ink reader is only in Rotterdam.
    let answer = app
        .reserve(
            "eink",
            json!([{"product_id": "electronics-e-ink-reader", "quantity": 2}]),
            SAN_FRANCISCO,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(allocations(&answer.body)[0].1, "rotterdam");
}

#[tokio::test]
async fn api_splits_a_line_only_when_no_warehouse_has_it_all() {
    let app = spawn_app("split").await;
    let product = seeded_product(5);
    app.set_stock(&product, &[("columbus", 3), ("reno", 4), ("rotterdam", 10)])
        .await;

    // Columbus (nearest) has 3 of 4, Reno has all 4: no split, Reno it is.
    let answer = app
        .reserve(
            "whole",
            json!([{"product_id": product, "quantity": 4}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(
        allocations(&answer.body),
        vec![(product.clone(), "reno".into(), 4)]
    );
    let answer = app.release("whole").await;
    assert_eq!(answer.status, StatusCode::OK);

    // 12: nobody has it all. The nearest with some gives its 3, and the remaining 9 go by the
    // same rule: Reno's 4 are not enough, Rotterdam has all 9.
    let answer = app
        .reserve(
            "split",
            json!([{"product_id": product, "quantity": 12}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(
        allocations(&answer.body),
        vec![
            (product.clone(), "columbus".into(), 3),
            (product.clone(), "rotterdam".into(), 9)
        ]
    );
    assert_eq!(app.levels(&product, "columbus").await, (3, 3));
    assert_eq!(app.levels(&product, "reno").await, (4, 0));
    assert_eq!(app.levels(&product, "rotterdam").await, (10, 9));
}

#[tokio::test]
async fn api_refuses_what_no_warehouse_combination_has_and_reserves_nothing() {
    let app = spawn_app("insufficient").await;
    let plenty = seeded_product(5);
    let before = app.levels(&plenty, "columbus").await;
    let answer = app
        .reserve(
            "too-many",
            json!([{"product_id": plenty, "quantity": 1},
                   {"product_id": "electronics-e-ink-reader", "quantity": 4}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.body["code"], "insufficient_stock");
    assert_eq!(answer.body["field"], "lines[1].quantity");
    // Line 0 was reservable, but nothing is held, and the key is free again.
    assert_eq!(app.levels(&plenty, "columbus").await, before);
    assert_eq!(
        app.levels("electronics-e-ink-reader", "rotterdam").await,
        (3, 0)
    );
    let answer = app
        .internal(Method::GET, "/internal/v1/reservations/too-many", None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // A product the inventory never stocked is simply not available.
    let answer = app
        .reserve(
            "unknown",
            json!([{"product_id": "nope", "quantity": 1}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["field"], "lines[0].quantity");
}

#[tokio::test]
async fn api_validates_reservations_and_requires_a_service_token() {
    let app = spawn_app("validation").await;
    let cases = [
        (
            json!({"key": "bad key", "lines": [{"product_id": "p", "quantity": 1}],
                "destination": {"lat": 1, "lon": 1}}),
            "key",
        ),
        (
            json!({"key": "k", "lines": [], "destination": {"lat": 1, "lon": 1}}),
            "lines",
        ),
        (
            json!({"key": "k", "lines": [{"product_id": "p", "quantity": 0}],
                "destination": {"lat": 1, "lon": 1}}),
            "lines[0].quantity",
        ),
        (
            json!({"key": "k", "lines": [{"product_id": "p", "quantity": 1}],
                "destination": {"lat": 100, "lon": 1}}),
            "destination.lat",
        ),
        (
            json!({"key": "k", "lines": [{"product_id": "p", "quantity": 1}],
                "destination": {"lat": 1}}),
            "destination",
        ),
        (
            json!({"key": "k", "lines": [{"product_id": "p", "quantity": 1}],
                "destination": {"lat": 1, "lon": 1}, "ttl_ms": -5}),
            "ttl_ms",
        ),
    ];
    for (body, field) in cases {
        let answer = app
            .internal(Method::POST, "/internal/v1/reservations", Some(&body))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.body["field"], field, "{body}");
    }

    let body = json!({"key": "k", "lines": [{"product_id": "p", "quantity": 1}],
                      "destination": {"lat": 1, "lon": 1}});
    let answer = app
        .call(Method::POST, "/internal/v1/reservations", None, Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let customer = app.issuer.customer("user-1");
    for (method, uri) in [
        (Method::POST, "/internal/v1/reservations"),
        (Method::GET, "/internal/v1/reservations"),
        (Method::GET, "/internal/v1/reservations/k"),
        (Method::POST, "/internal/v1/reservations/k/commit"),
        (Method::POST, "/internal/v1/reservations/k/release"),
    ] {
        let answer = app.call(method, uri, Some(&customer), Some(&body)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{uri}");
    }
    let answer = app
        .internal(Method::GET, "/internal/v1/reservations?status=lost", None)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["field"], "status");
}

// ---------------------------------------------------------------------------------------------
// idempotency and the reservation life cycle (run on both engines)

async fn scenario_idempotent_reserve(engine: Engine) {
    let Some(app) = app_on(engine, "idem_reserve").await else {
        return;
    };
    let product = seeded_product(5);
    let before = app.levels(&product, "columbus").await;
    let lines = json!([{"product_id": product, "quantity": 2}]);
    let first = app.reserve("order-1", lines.clone(), NEW_YORK).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = app.reserve("order-1", lines, NEW_YORK).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        again.body, first.body,
        "a repeat returns the same reservation"
    );
    assert_eq!(
        app.levels(&product, "columbus").await,
        (before.0, before.1 + 2)
    );
    assert_eq!(
        app.repo.reservations(None).await.unwrap().len(),
        1,
        "one reservation"
    );

    // The same key for other lines is a caller bug, not a repeat.
    let answer = app
        .reserve(
            "order-1",
            json!([{"product_id": product, "quantity": 3}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "idempotency_key_reused");
    assert_eq!(answer.body["field"], "key");
    assert_eq!(
        app.levels(&product, "columbus").await,
        (before.0, before.1 + 2)
    );
}

#[tokio::test]
async fn api_reserve_is_idempotent_by_key() {
    scenario_idempotent_reserve(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_reserve_is_idempotent_by_key() {
    scenario_idempotent_reserve(Engine::Postgres).await;
}

async fn scenario_release_tombstone(engine: Engine) {
    let Some(app) = app_on(engine, "tombstone").await else {
        return;
    };
    let product = seeded_product(5);
    let before = app.levels(&product, "columbus").await;

    // The release overtakes the reserve it compensates.
    let answer = app.release("order-2").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "released");
    assert_eq!(answer.body["allocations"], json!([]));
    let again = app.release("order-2").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, answer.body);

    let late = app
        .reserve(
            "order-2",
            json!([{"product_id": product, "quantity": 1}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
    assert_eq!(late.body["code"], "reservation_released");
    assert_eq!(
        app.levels(&product, "columbus").await,
        before,
        "nothing held"
    );
    assert!(
        app.events_of("reservation.released").await.is_empty(),
        "a tombstone released nothing"
    );
    let answer = app.commit("order-2").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "reservation_released");
}

#[tokio::test]
async fn api_release_before_reserve_leaves_a_tombstone() {
    scenario_release_tombstone(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_release_before_reserve_leaves_a_tombstone() {
    scenario_release_tombstone(Engine::Postgres).await;
}

async fn scenario_commit(engine: Engine) {
    let Some(app) = app_on(engine, "commit").await else {
        return;
    };
    let product = seeded_product(5);
    let (on_hand, _) = app.levels(&product, "columbus").await;
    let reserved = app
        .reserve(
            "order-3",
            json!([{"product_id": product, "quantity": 2}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(reserved.status, StatusCode::CREATED);

    let first = app.commit("order-3").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["status"], "committed");
    assert!(first.body["committed_at_ms"].is_i64());
    assert_eq!(first.body["allocations"], reserved.body["allocations"]);
    let second = app.commit("order-3").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, first.body, "a repeat changes nothing");
    assert_eq!(app.levels(&product, "columbus").await, (on_hand - 2, 0));

    let committed = app.events_of("reservation.committed").await;
    assert_eq!(committed.len(), 1, "one commit, one event");
    assert_eq!(committed[0].aggregate_id, "order-3");
    assert_eq!(committed[0].source, "inventory");
    assert_eq!(
        committed[0].payload,
        json!({"key": "order-3", "lines": [{"product_id": product, "warehouse_id": "columbus", "quantity": 2}]})
    );

    // A repeat of the reserve reports it as it stands; it cannot be released any more.
    let answer = app
        .reserve(
            "order-3",
            json!([{"product_id": product, "quantity": 2}]),
            NEW_YORK,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "committed");
    let answer = app.release("order-3").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "reservation_committed");
    assert_eq!(app.levels(&product, "columbus").await, (on_hand - 2, 0));

    let answer = app.commit("never-reserved").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_commit_ships_units_once() {
    scenario_commit(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_commit_ships_units_once() {
    scenario_commit(Engine::Postgres).await;
}

async fn scenario_release_and_expiry(engine: Engine) {
    let Some(app) = app_on(engine, "expiry").await else {
        return;
    };
    let product = seeded_product(5);
    let before = app.levels(&product, "columbus").await;
    let line = json!([{"product_id": product, "quantity": 1}]);

    // Released on request, with the caller's reason.
    app.reserve("order-4", line.clone(), NEW_YORK).await;
    let answer = app
        .internal(
            Method::POST,
            "/internal/v1/reservations/order-4/release",
            Some(&json!({"reason": "payment_declined"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "released");
    assert_eq!(answer.body["reason"], "payment_declined");
    assert_eq!(app.levels(&product, "columbus").await, before);
    let again = app.release("order-4").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["reason"], "payment_declined",
        "the first release stands"
    );
    let answer = app.reserve("order-4", line.clone(), NEW_YORK).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "reservation_released");

    // Expired by the sweep, at a time the test chooses.
    let body = json!({"key": "order-5", "lines": line, "destination": {"lat": NEW_YORK.0, "lon": NEW_YORK.1}, "ttl_ms": 60_000});
    let answer = app
        .internal(Method::POST, "/internal/v1/reservations", Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let expires = answer.body["expires_at_ms"].as_i64().unwrap();
    assert_eq!(app.repo.release_expired(expires - 1).await.unwrap(), 0);
    assert_eq!(
        app.levels(&product, "columbus").await,
        (before.0, before.1 + 1)
    );
    assert_eq!(app.repo.release_expired(expires).await.unwrap(), 1);
    assert_eq!(app.repo.release_expired(expires + 1).await.unwrap(), 0);
    assert_eq!(app.levels(&product, "columbus").await, before);
    let answer = app
        .internal(Method::GET, "/internal/v1/reservations/order-5", None)
        .await;
    assert_eq!(answer.body["status"], "released");
    assert_eq!(answer.body["reason"], REASON_EXPIRED);
    let answer = app.commit("order-5").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "reservation_released");

    let released: Vec<Value> = app
        .events_of("reservation.released")
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(
        released,
        vec![
            json!({"key": "order-4", "reason": "payment_declined"}),
            json!({"key": "order-5", "reason": "expired"}),
        ]
    );

    // Expired but not swept yet: too late to commit, and the units go back at once.
    let body = json!({"key": "order-7", "lines": line, "destination": {"lat": NEW_YORK.0, "lon": NEW_YORK.1}, "ttl_ms": 1});
    let answer = app
        .internal(Method::POST, "/internal/v1/reservations", Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let expires = answer.body["expires_at_ms"].as_i64().unwrap();
    while now_ms() < expires {
        tokio::task::yield_now().await;
    }
    let answer = app.commit("order-7").await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.body["code"], "reservation_released");
    assert_eq!(app.levels(&product, "columbus").await, before);
    let answer = app
        .internal(Method::POST, "/internal/v1/reservations", Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "reservation_released");
    let answer = app
        .internal(Method::GET, "/internal/v1/reservations/order-7", None)
        .await;
    assert_eq!(answer.body["reason"], REASON_EXPIRED);

    // The reconciliation listing.
    app.reserve("order-6", line, NEW_YORK).await;
    let answer = app
        .internal(
            Method::GET,
            "/internal/v1/reservations?status=released",
            None,
        )
        .await;
    let keys: Vec<&str> = answer.body["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["order-4", "order-5", "order-7"]);
    let answer = app
        .internal(
            Method::GET,
            "/internal/v1/reservations?status=reserved",
            None,
        )
        .await;
    assert_eq!(answer.body["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(answer.body["reservations"][0]["key"], "order-6");
    assert_eq!(
        answer.body["reservations"][0]["allocations"][0]["warehouse_id"],
        "columbus"
    );
    let answer = app
        .internal(Method::GET, "/internal/v1/reservations", None)
        .await;
    assert_eq!(answer.body["reservations"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn api_release_and_expiry_return_units() {
    scenario_release_and_expiry(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_release_and_expiry_return_units() {
    scenario_release_and_expiry(Engine::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// stock.low

#[tokio::test]
async fn api_publishes_stock_low_once_per_crossing() {
    let app = spawn_app("low").await;
    let product = seeded_product(5);
    let threshold = i64::from(Config::default().low_stock_threshold);
    app.set_stock(
        &product,
        &[("columbus", threshold + 2), ("reno", 20), ("rotterdam", 20)],
    )
    .await;
    let low_events = || async { app.events_of("stock.low").await };
    assert!(low_events().await.is_empty());

    let one = |key: &'static str, quantity: i64| {
        let product = product.clone();
        let app = &app;
        async move {
            let answer = app
                .reserve(
                    key,
                    json!([{"product_id": product, "quantity": quantity}]),
                    NEW_YORK,
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
            assert_eq!(allocations(&answer.body)[0].1, "columbus");
        }
    };
    one("a", 2).await; // available = threshold: not below
    assert!(low_events().await.is_empty());
    one("b", 1).await; // threshold - 1: crossed
    let events = low_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].payload,
        json!({"product_id": product, "warehouse_id": "columbus",
               "available": threshold - 1, "threshold": threshold})
    );
    one("c", 1).await; // still below: no news
    assert_eq!(low_events().await.len(), 1);

    // Back above, then below again: a second crossing.
    app.release("b").await;
    app.release("c").await;
    app.adjust(&product, "columbus", 5).await;
    assert_eq!(low_events().await.len(), 1);
    one("d", 3 + 5).await;
    assert_eq!(low_events().await.len(), 2);

    // An admin taking stock down crosses too.
    app.adjust(&product, "reno", -(20 - threshold + 1)).await;
    let events = low_events().await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].payload["warehouse_id"], "reno");
}

// ---------------------------------------------------------------------------------------------
// admin adjustments

#[tokio::test]
async fn api_adjustments_are_admin_only_audited_and_never_below_zero() {
    let app = spawn_app("adjust").await;
    let product = seeded_product(5);
    let (on_hand, _) = app.levels(&product, "reno").await;
    let uri = format!("/api/v1/inventory/{product}/adjustments");
    let body = json!({"warehouse_id": "reno", "delta": 7, "reason": "delivery PO-1"});

    let answer = app.call(Method::POST, &uri, None, Some(&body)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let customer = app.issuer.customer("user-1");
    let answer = app
        .call(Method::POST, &uri, Some(&customer), Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    let admin = app.admin_token();
    let answer = app
        .call(Method::POST, &uri, Some(&admin), Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["product_id"], product.as_str());
    let reno = answer.body["warehouses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["warehouse_id"] == "reno")
        .unwrap()
        .clone();
    assert_eq!(reno["on_hand"], on_hand + 7);

    // Never below zero, nor below what is reserved.
    let answer = app.adjust(&product, "reno", -(on_hand + 8)).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.body["code"], "insufficient_stock");
    assert_eq!(answer.body["field"], "delta");
    let answer = app
        .reserve(
            "hold",
            json!([{"product_id": product, "quantity": 2}]),
            SAN_FRANCISCO,
        )
        .await;
    assert_eq!(allocations(&answer.body)[0].1, "reno");
    let answer = app.adjust(&product, "reno", -(on_hand + 6)).await;
    assert_eq!(
        answer.status,
        StatusCode::CONFLICT,
        "would leave 1 on hand, 2 reserved"
    );
    let answer = app.adjust(&product, "reno", -(on_hand + 5)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(app.levels(&product, "reno").await, (2, 2));

    for (body, field) in [
        (
            json!({"warehouse_id": "atlantis", "delta": 1, "reason": "r"}),
            "warehouse_id",
        ),
        (
            json!({"warehouse_id": "reno", "delta": 0, "reason": "r"}),
            "delta",
        ),
        (
            json!({"warehouse_id": "reno", "delta": 1, "reason": " "}),
            "reason",
        ),
        (json!({"warehouse_id": "reno", "delta": 1}), "reason"),
    ] {
        let answer = app
            .call(Method::POST, &uri, Some(&admin), Some(&body))
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer.body["field"], field, "{body}");
    }

    // A product new to the inventory is stocked by its first delivery; not by a removal.
    let answer = app.adjust("brand-new", "rotterdam", -1).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let answer = app.adjust("brand-new", "rotterdam", 12).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["available"], 12);
    assert_eq!(
        app.get("/api/v1/inventory/brand-new").await.status,
        StatusCode::OK
    );

    let audit = AuditLog::open(app.repo.database(), bazaar_inventory::NAME)
        .await
        .unwrap();
    let records = audit.records(0, 100).await.unwrap();
    let adjustments: Vec<_> = records
        .iter()
        .filter(|r| r.action == "stock.adjusted")
        .collect();
    assert_eq!(adjustments.len(), 3, "refused adjustments leave no record");
    assert_eq!(adjustments[0].actor, "admin-1");
    assert_eq!(adjustments[0].target, product);
    let details: Value = serde_json::from_str(&adjustments[0].details).unwrap();
    assert_eq!(
        details,
        json!({"warehouse_id": "reno", "delta": 7, "reason": "delivery PO-1", "on_hand": on_hand + 7})
    );
    bazaar_kit::audit::verify_chain(&records).expect("intact chain");
}

// ---------------------------------------------------------------------------------------------
// concurrency

/// 200 concurrent single-unit reservations of a product with 50 units: exactly 50 succeed.
async fn scenario_concurrent_reservations(engine: Engine) {
    let Some(app) = app_on(engine, "concurrency").await else {
        return;
    };
    let app = Arc::new(app);
    let product = seeded_product(5);
    app.set_stock(
        &product,
        &[("columbus", 20), ("reno", 20), ("rotterdam", 10)],
    )
    .await;
    let low_before = app.events_of("stock.low").await.len();

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            let product = product.clone();
            tokio::spawn(async move {
                let answer = app
                    .reserve(
                        &format!("burst-{i}"),
                        json!([{"product_id": product, "quantity": 1}]),
                        NEW_YORK,
                    )
                    .await;
                (answer.status, answer.body)
            })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for task in futures::future::join_all(tasks).await {
        let (status, body) = task.expect("task");
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["code"], "insufficient_stock", "{body}");
                assert_eq!(body["field"], "lines[0].quantity");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (50, 150));
    for (warehouse, units) in [("columbus", 20), ("reno", 20), ("rotterdam", 10)] {
        assert_eq!(
            app.levels(&product, warehouse).await,
            (units, units),
            "{warehouse}"
        );
    }
    let reservations = app.repo.reservations(None).await.unwrap();
    assert_eq!(
        reservations.len(),
        50,
        "refused reserves leave no reservation"
    );
    let held: i64 = reservations
        .iter()
        .flat_map(|r| &r.allocations)
        .map(|a| a.quantity)
        .sum();
    assert_eq!(held, 50);
    // Each warehouse crossed the threshold once.
    assert_eq!(app.events_of("stock.low").await.len() - low_before, 3);

    // Committing them all ships exactly the 50 units.
    for r in &reservations {
        let answer = app.commit(&r.key).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    for warehouse in ["columbus", "reno", "rotterdam"] {
        assert_eq!(app.levels(&product, warehouse).await, (0, 0), "{warehouse}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_concurrent_reservations_never_oversell() {
    scenario_concurrent_reservations(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_reservations_never_oversell() {
    scenario_concurrent_reservations(Engine::Postgres).await;
}

/// The database itself refuses negative stock, whatever a statement forgets to check.
async fn scenario_constraints(engine: Engine) {
    let Some(app) = app_on(engine, "constraints").await else {
        return;
    };
    let product = seeded_product(5);
    let pool = app.repo.database();
    for sql in [
        "UPDATE stock SET on_hand = -1 WHERE product_id = $1",
        "UPDATE stock SET reserved = -1 WHERE product_id = $1",
        "UPDATE stock SET reserved = on_hand + 1 WHERE product_id = $1",
    ] {
        let result = sqlx::query(sql).bind(&product).execute(pool).await;
        assert!(result.is_err(), "{sql} was accepted");
    }
}

#[tokio::test]
async fn storage_check_constraints_refuse_negative_stock() {
    scenario_constraints(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_check_constraints_refuse_negative_stock() {
    scenario_constraints(Engine::Postgres).await;
}

#[tokio::test]
async fn storage_seeds_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path(), "seed");
    let repo = bazaar_inventory::open(&url, &Config::default())
        .await
        .unwrap();
    let seed = seed::builtin().unwrap();
    assert_eq!(
        repo.seed(&seed.warehouses, &seed.stock).await.unwrap(),
        0,
        "already seeded"
    );
    let ids: Vec<String> = seed.stock.iter().map(|s| s.product_id.clone()).collect();
    let mut ids = ids;
    ids.dedup();
    let items = repo.items(&ids).await.unwrap();
    assert!(items.iter().all(|(_, known)| *known));
    let on_hand: i64 = items
        .iter()
        .flat_map(|(item, _)| &item.warehouses)
        .map(|w| w.on_hand)
        .sum();
    assert_eq!(on_hand, seed.stock.iter().map(|s| s.quantity).sum::<i64>());

    let dir = tempfile::tempdir().unwrap();
    let empty = bazaar_inventory::open(
        &sqlite_url(dir.path(), "noseed"),
        &Config {
            seed: false,
            ..Config::default()
        },
    )
    .await
    .unwrap();
    assert!(empty.warehouses().await.unwrap().is_empty());
}

#[tokio::test]
async fn api_publishes_openapi_readiness_and_the_event_feed() {
    let app = spawn_app("openapi").await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/api/v1/inventory",
        "/api/v1/inventory/{product_id}",
        "/api/v1/inventory/{product_id}/adjustments",
        "/api/v1/warehouses",
        "/internal/v1/reservations",
        "/internal/v1/reservations/{key}",
        "/internal/v1/reservations/{key}/commit",
        "/internal/v1/reservations/{key}/release",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} documented");
    }
    for schema in [
        "InventoryItem",
        "Reservation",
        "ReservationRequest",
        "Problem",
    ] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    // The outbox is served to subscribers (service tokens only).
    let product = seeded_product(5);
    app.reserve(
        "feed-1",
        json!([{"product_id": product, "quantity": 1}]),
        NEW_YORK,
    )
    .await;
    app.commit("feed-1").await;
    let answer = app
        .internal(Method::GET, "/internal/v1/events?after=0&wait_ms=0", None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let served = answer.body.to_string();
    assert!(served.contains("reservation.committed"), "{served}");
}
