//! The shipping service's one integration-test binary.
//!
//! Every test drives the complete application (`Service::app()`, with the kit's layers) with
//! `oneshot`, and looks behind the API through a second handle on the same database
//! (`bazaar_shipping::open`): the outbox, and tracking, which tests advance at a chosen time
//! instead of waiting. The public quote runs against small in-test servers implementing the
//! inventory and catalog contracts, found through `Discovery::fixed`. Storage scenarios run on
//! a fresh SQLite file always and on PostgreSQL when `BAZAAR_TEST_POSTGRES_URL` is set.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Snapshot};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::now_ms;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_messaging::EventEnvelope;
use bazaar_shipping::quote::haversine_km;
use bazaar_shipping::{Config, Repository};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers

#[derive(Clone, Copy, Debug)]
enum Engine {
    Sqlite,
    Postgres,
}

struct TestApp {
    app: Router,
    /// A second handle on the service's database.
    repo: Repository,
    issuer: Arc<bazaar_auth::testing::TestIssuer>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

const NYC: (f64, f64) = (40.7128, -74.0060);
const LA: (f64, f64) = (34.0522, -118.2437);
const COLUMBUS: (f64, f64) = (39.9612, -82.9988);
const RENO: (f64, f64) = (39.5296, -119.8138);
const ROTTERDAM: (f64, f64) = (51.9244, 4.4777);
/// Postal code 10001 in the table.
const NYC_10001: (f64, f64) = (40.7506, -73.9972);

/// Tests advance tracking themselves.
fn test_config() -> Config {
    Config {
        tracking_interval_ms: 0,
        ..Config::default()
    }
}

async fn app_with(
    engine: Engine,
    label: &str,
    config: Config,
    discovery: Discovery,
) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match engine {
        Engine::Sqlite => sqlite_url(dir.path(), label),
        Engine::Postgres => fresh_postgres_database(label).await?,
    };
    let mut common = CommonConfig::defaults(bazaar_shipping::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    common.database_url = Some(url.clone());
    let issuer = Arc::new(bazaar_auth::testing::TestIssuer::new());
    let service = bazaar_shipping::service(
        common,
        config.clone(),
        issuer.verifier(&["bazaar", bazaar_shipping::NAME]),
        discovery,
    )
    .await
    .expect("service builds");
    let repo = bazaar_shipping::open(&url, &config)
        .await
        .expect("second handle");
    Some(TestApp {
        app: service.app(),
        repo,
        issuer,
        _dir: dir,
    })
}

async fn app_on(engine: Engine, label: &str) -> Option<TestApp> {
    app_with(
        engine,
        label,
        test_config(),
        Discovery::fixed(Snapshot::default()),
    )
    .await
}

async fn spawn_app(label: &str) -> TestApp {
    app_on(Engine::Sqlite, label).await.expect("sqlite")
}

impl TestApp {
    fn service_token(&self) -> String {
        self.issuer.service(bazaar_shipping::NAME)
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
        }
        .unwrap();
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

    async fn internal_quote(&self, body: &Value) -> Answer {
        let token = self.service_token();
        self.call(
            Method::POST,
            "/internal/v1/quotes",
            Some(&token),
            Some(body),
        )
        .await
    }

    async fn create_shipment(&self, body: &Value) -> Answer {
        let token = self.service_token();
        self.call(
            Method::POST,
            "/internal/v1/shipments",
            Some(&token),
            Some(body),
        )
        .await
    }

    async fn events(&self) -> Vec<EventEnvelope> {
        self.repo
            .outbox()
            .read_after(0, 1000)
            .await
            .expect("outbox")
    }
}

fn assert_problem(answer: &Answer, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["field"].as_str(), field, "{}", answer.body);
}

fn parcel(warehouse: &str, at: (f64, f64), grams: i64) -> Value {
    json!({"warehouse_id": warehouse, "lat": at.0, "lon": at.1, "weight_grams": grams})
}

fn shipment_request(order: &str, user: &str) -> Value {
    json!({
        "order_id": order,
        "user_id": user,
        "destination": {"name": "Ada", "line1": "1 Main St", "city": "New York", "country": "US", "postal_code": "10001"},
        "parcels": [parcel("columbus", COLUMBUS, 1200)],
    })
}

/// The documented formula, written out independently of the crate.
fn expected_fee(km: f64, grams: i64, international: bool) -> i64 {
    let blocks_km = (km / 100.0).ceil() as i64;
    let blocks_g = (grams + 499) / 500;
    (499 + 50 * blocks_km + 80 * blocks_g).min(7500) + if international { 1500 } else { 0 }
}

// ---------------------------------------------------------------------------------------------
// quotes

#[tokio::test]
async fn quote_math_follows_the_documented_formula() {
    // Distance sanity: New York to Los Angeles is about 3936 km.
    let km = haversine_km(NYC, LA);
    assert!((km - 3936.0).abs() <= 39.36, "NYC-LA {km} km");

    let app = spawn_app("quote_math").await;
    // A parcel leaving New York for the Los Angeles postal code 90012.
    let answer = app
        .internal_quote(&json!({
            "destination": {"country": "US", "postal_code": "90012"},
            "parcels": [parcel("nyc", NYC, 2000)],
        }))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let distance = answer.body["distance_km"].as_f64().unwrap();
    assert!((distance - 3936.0).abs() <= 39.36, "{distance}");
    assert_eq!(answer.body["amount"]["currency"], "USD");
    assert_eq!(
        answer.body["amount"]["amount_minor"],
        expected_fee(distance, 2000, false)
    );
    assert_eq!(
        answer.body["amount"]["amount_minor"],
        499 + 40 * 50 + 4 * 80
    );
    assert_eq!(answer.body["origin_warehouse_id"], "nyc");
    assert_eq!(answer.body["estimated_days"], 5);

    // Two parcels, one crossing the Atlantic: fees add up, the surcharge applies to that one,
    // distance, origin and days are the farthest parcel's.
    let answer = app
        .internal_quote(&json!({
            "destination": {"lat": NYC_10001.0, "lon": NYC_10001.1},
            "parcels": [parcel("columbus", COLUMBUS, 800), parcel("rotterdam", ROTTERDAM, 2600)],
        }))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let near = haversine_km(COLUMBUS, NYC_10001);
    let far = haversine_km(ROTTERDAM, NYC_10001);
    let parcels = answer.body["parcels"].as_array().unwrap();
    assert_eq!(parcels[0]["international"], false);
    assert_eq!(parcels[1]["international"], true);
    assert_eq!(
        answer.body["amount"]["amount_minor"],
        expected_fee(near, 800, false) + expected_fee(far, 2600, true)
    );
    assert_eq!(answer.body["origin_warehouse_id"], "rotterdam");
    assert!((answer.body["distance_km"].as_f64().unwrap() - far).abs() < 0.06);
    assert_eq!(
        answer.body["estimated_days"],
        2 + (far / 1000.0).floor() as i64 + 3
    );

    // The cap: a heavy parcel to the other side of the world.
    let answer = app
        .internal_quote(&json!({
            "destination": {"country": "AU", "postal_code": "2000"},
            "parcels": [parcel("rotterdam", ROTTERDAM, 40_000)],
        }))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["amount"]["amount_minor"], 7500 + 1500);

    // Postal codes are normalised: case, spaces, ZIP+4, full GB and CA codes.
    for (country, code) in [
        ("us", "10001-1234"),
        ("GB", "sw1a 1aa"),
        ("CA", "M5V 3L9"),
        ("NL", "3011 AB"),
        ("JP", "100-0005"),
    ] {
        let answer = app
            .internal_quote(&json!({
                "destination": {"country": country, "postal_code": code},
                "parcels": [parcel("columbus", COLUMBUS, 100)],
            }))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{country} {code}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn unshippable_destinations_are_422_naming_the_field() {
    let app = spawn_app("unshippable").await;
    let quote = |destination: Value| {
        let app = &app;
        async move {
            app.internal_quote(&json!({"destination": destination, "parcels": [parcel("columbus", COLUMBUS, 100)]}))
                .await
        }
    };
    // A postal code the table does not know.
    assert_problem(
        &quote(json!({"country": "US", "postal_code": "00000"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.postal_code"),
    );
    // A country the table has nothing for.
    assert_problem(
        &quote(json!({"country": "BR", "postal_code": "01000-000"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.postal_code"),
    );
    // Antarctica (south of 60°S) is not served by default.
    assert_problem(
        &quote(json!({"lat": -77.85, "lon": 166.67})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination"),
    );
    // Malformed destinations are validation problems, not unshippable ones.
    assert_problem(
        &quote(json!({"country": "US"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("destination.postal_code"),
    );
    assert_problem(
        &quote(json!({"lat": 95.0, "lon": 0.0})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("destination.lat"),
    );
    assert_problem(
        &quote(json!({"country": "USA", "postal_code": "10001"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("destination.country"),
    );
    let bad_parcel = app
        .internal_quote(
            &json!({"destination": {"country": "US", "postal_code": "10001"},
            "parcels": [parcel("columbus", COLUMBUS, -1)]}),
        )
        .await;
    assert_problem(
        &bad_parcel,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("parcels[0].weight_grams"),
    );
    let no_parcels = app
        .internal_quote(
            &json!({"destination": {"country": "US", "postal_code": "10001"}, "parcels": []}),
        )
        .await;
    assert_problem(
        &no_parcels,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("parcels"),
    );
    // Internal endpoints need a service token.
    let customer = app.issuer.customer("u1");
    let answer = app
        .call(Method::POST, "/internal/v1/quotes", Some(&customer),
            Some(&json!({"destination": {"country": "US", "postal_code": "10001"}, "parcels": [parcel("c", COLUMBUS, 1)]})))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);

    // The limits come from configuration: a short reach and an unserved country.
    let config = Config {
        max_distance_km: 1_000.0,
        unserved_countries: vec!["jp".into(), "AQ".into()],
        ..test_config()
    };
    let strict = app_with(
        Engine::Sqlite,
        "unshippable_strict",
        config,
        Discovery::fixed(Snapshot::default()),
    )
    .await
    .unwrap();
    let far = strict
        .internal_quote(
            &json!({"destination": {"country": "US", "postal_code": "90012"},
            "parcels": [parcel("columbus", COLUMBUS, 100)]}),
        )
        .await;
    assert_problem(
        &far,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.postal_code"),
    );
    let near = strict
        .internal_quote(
            &json!({"destination": {"country": "US", "postal_code": "10001"},
            "parcels": [parcel("columbus", COLUMBUS, 100)]}),
        )
        .await;
    assert_eq!(near.status, StatusCode::OK, "{}", near.body);
    let japan = strict
        .internal_quote(
            &json!({"destination": {"country": "JP", "postal_code": "1000005"},
            "parcels": [parcel("columbus", COLUMBUS, 100)]}),
        )
        .await;
    assert_problem(
        &japan,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.country"),
    );
}

#[tokio::test]
async fn locate_resolves_postal_addresses_for_services() {
    let app = spawn_app("locate").await;
    let token = app.service_token();
    let answer = app
        .call(
            Method::GET,
            "/internal/v1/locate?country=us&postal_code=10001",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["country"], "US");
    assert_eq!(answer.body["postal_code"], "10001");
    assert!((answer.body["lat"].as_f64().unwrap() - NYC_10001.0).abs() < 1e-9);
    let unknown = app
        .call(
            Method::GET,
            "/internal/v1/locate?country=US&postal_code=00000",
            Some(&token),
            None,
        )
        .await;
    assert_problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("postal_code"),
    );
    let anonymous = app
        .call(
            Method::GET,
            "/internal/v1/locate?country=US&postal_code=10001",
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// shipments

async fn idempotent_shipment_creation(engine: Engine) {
    let Some(app) = app_on(engine, "idempotent_shipment").await else {
        return;
    };
    let request = shipment_request("order-1", "user-1");
    let first = app.create_shipment(&request).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let shipment = &first.body;
    assert_eq!(shipment["order_id"], "order-1");
    assert_eq!(shipment["status"], "label_created");
    let tracking = shipment["tracking_number"].as_str().unwrap();
    assert!(
        tracking.starts_with("BZ") && tracking.ends_with("US") && tracking.len() == 13,
        "{tracking}"
    );
    let km = haversine_km(COLUMBUS, NYC_10001);
    assert_eq!(
        shipment["fee"],
        json!({"amount_minor": expected_fee(km, 1200, false), "currency": "USD"})
    );
    assert_eq!(shipment["destination"]["name"], "Ada");
    assert_eq!(shipment["destination"]["country"], "US");
    assert_eq!(shipment["history"].as_array().unwrap().len(), 1);

    // The same order again: the same shipment, 200, nothing new.
    let again = app.create_shipment(&request).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body, first.body);
    // Even with a different body (the first answer stands).
    let mut changed = request.clone();
    changed["parcels"] = json!([parcel("reno", RENO, 9000)]);
    let changed = app.create_shipment(&changed).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["shipment_id"], first.body["shipment_id"]);
    assert_eq!(changed.body["fee"], first.body["fee"]);
    // Another user claiming the order is a conflict.
    let stolen = app
        .create_shipment(&shipment_request("order-1", "user-2"))
        .await;
    assert_problem(
        &stolen,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("user_id"),
    );

    // Concurrent first requests for one order make one shipment.
    let racing = shipment_request("order-2", "user-1");
    let answers = futures::future::join_all((0..4).map(|_| app.create_shipment(&racing))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| {
            assert!(
                a.status == StatusCode::CREATED || a.status == StatusCode::OK,
                "{}",
                a.body
            );
            a.body["shipment_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::CREATED)
            .count(),
        1
    );

    // One shipment.created per order, with the contract's payload.
    let events = app.events().await;
    let created: Vec<&EventEnvelope> = events
        .iter()
        .filter(|e| e.event_type == "shipment.created")
        .collect();
    assert_eq!(created.len(), 2, "{events:?}");
    let event = created[0];
    assert_eq!(event.source, "shipping");
    assert_eq!(
        event.aggregate_id,
        first.body["shipment_id"].as_str().unwrap()
    );
    assert_eq!(
        event.payload,
        json!({
            "shipment_id": first.body["shipment_id"],
            "order_id": "order-1",
            "user_id": "user-1",
            "tracking_number": tracking,
            "fee": first.body["fee"],
        })
    );

    // The internal listing by order.
    let token = app.service_token();
    let listed = app
        .call(
            Method::GET,
            "/internal/v1/shipments?order_id=order-1",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["shipments"].as_array().unwrap().len(), 1);
    assert_eq!(
        listed.body["shipments"][0]["shipment_id"],
        first.body["shipment_id"]
    );
    let none = app
        .call(
            Method::GET,
            "/internal/v1/shipments?order_id=nope",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(none.body["shipments"], json!([]));
    let missing = app
        .call(Method::GET, "/internal/v1/shipments", Some(&token), None)
        .await;
    assert_problem(
        &missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("order_id"),
    );
}

#[tokio::test]
async fn shipment_creation_is_idempotent_by_order_sqlite() {
    idempotent_shipment_creation(Engine::Sqlite).await;
}

#[tokio::test]
async fn shipment_creation_is_idempotent_by_order_postgres() {
    idempotent_shipment_creation(Engine::Postgres).await;
}

#[tokio::test]
async fn unshippable_shipments_are_refused_and_publish_nothing() {
    let app = spawn_app("unshippable_shipment").await;
    let mut request = shipment_request("order-x", "user-1");
    request["destination"]["postal_code"] = json!("99999");
    let answer = app.create_shipment(&request).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.postal_code"),
    );
    assert!(app.events().await.is_empty());
    let bad = app.create_shipment(&json!({"order_id": "", "user_id": "u", "destination": {"country": "US", "postal_code": "10001"}, "parcels": [parcel("c", COLUMBUS, 1)]})).await;
    assert_problem(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("order_id"),
    );
}

async fn tracking_advances(engine: Engine) {
    let Some(app) = app_on(engine, "tracking").await else {
        return;
    };
    let before = now_ms();
    let created = app
        .create_shipment(&shipment_request("order-t", "user-t"))
        .await;
    let after = now_ms();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["shipment_id"].as_str().unwrap().to_owned();
    let tracking = created.body["tracking_number"].as_str().unwrap().to_owned();

    // Not yet: in transit 20 s after creation.
    assert_eq!(app.repo.advance_tracking(before + 19_999).await.unwrap(), 0);
    assert_eq!(app.repo.advance_tracking(after + 20_000).await.unwrap(), 1);
    let shipment = app.repo.get(&id).await.unwrap().unwrap();
    assert_eq!(shipment.status, "in_transit");
    // Nothing more until delivery is due; repeats change nothing.
    assert_eq!(app.repo.advance_tracking(after + 20_000).await.unwrap(), 0);
    assert_eq!(app.repo.advance_tracking(before + 59_999).await.unwrap(), 0);
    assert_eq!(app.repo.advance_tracking(after + 60_000).await.unwrap(), 1);
    assert_eq!(
        app.repo.advance_tracking(after + 600_000).await.unwrap(),
        0,
        "delivered is final"
    );

    let owner = app.issuer.customer("user-t");
    let answer = app
        .call(
            Method::GET,
            &format!("/api/v1/shipments/{id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "delivered");
    let statuses: Vec<&str> = answer.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["label_created", "in_transit", "delivered"]);

    // Each transition is in the outbox, in order, with the contract's payload.
    let changes: Vec<Value> = app
        .events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "shipment.status_changed")
        .map(|e| {
            assert_eq!(e.aggregate_id, id);
            e.payload
        })
        .collect();
    assert_eq!(
        changes,
        ["in_transit", "delivered"]
            .iter()
            .map(
                |s| json!({"shipment_id": id, "order_id": "order-t", "user_id": "user-t",
                "tracking_number": tracking, "status": s})
            )
            .collect::<Vec<_>>()
    );
    let sequences: Vec<i64> = app.events().await.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);

    // A shipment overdue for both steps makes both transitions in one pass, each recorded.
    let late = app
        .create_shipment(&shipment_request("order-late", "user-t"))
        .await;
    let late_id = late.body["shipment_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.repo
            .advance_tracking(now_ms() + 3_600_000)
            .await
            .unwrap(),
        2
    );
    let late = app.repo.get(&late_id).await.unwrap().unwrap();
    assert_eq!(late.status, "delivered");
    assert_eq!(late.history.len(), 3);
    let late_events = app
        .events()
        .await
        .into_iter()
        .filter(|e| e.aggregate_id == late_id && e.event_type == "shipment.status_changed")
        .count();
    assert_eq!(late_events, 2);
}

#[tokio::test]
async fn tracking_advances_with_events_sqlite() {
    tracking_advances(Engine::Sqlite).await;
}

#[tokio::test]
async fn tracking_advances_with_events_postgres() {
    tracking_advances(Engine::Postgres).await;
}

#[tokio::test]
async fn concurrent_trackers_record_each_transition_once() {
    let app = spawn_app("concurrent_trackers").await;
    for i in 0..5 {
        let answer = app
            .create_shipment(&shipment_request(&format!("order-{i}"), "u"))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let later = now_ms() + 30_000;
    let other = app.repo.clone();
    let (a, b) = tokio::join!(
        app.repo.advance_tracking(later),
        other.advance_tracking(later)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 5);
    let changes = app
        .events()
        .await
        .iter()
        .filter(|e| e.event_type == "shipment.status_changed")
        .count();
    assert_eq!(changes, 5);
}

async fn ownership(engine: Engine) {
    let Some(app) = app_on(engine, "ownership").await else {
        return;
    };
    let mine = app
        .create_shipment(&shipment_request("order-a", "alice"))
        .await;
    app.create_shipment(&shipment_request("order-b", "bob"))
        .await;
    let id = mine.body["shipment_id"].as_str().unwrap();
    let alice = app.issuer.customer("alice");
    let bob = app.issuer.customer("bob");
    let admin = app.issuer.admin("root");
    let uri = format!("/api/v1/shipments/{id}");

    let answer = app.call(Method::GET, &uri, Some(&alice), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["order_id"], "order-a");
    // Another user's shipment is a 404, exactly like an unknown one.
    assert_problem(
        &app.call(Method::GET, &uri, Some(&bob), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_problem(
        &app.call(
            Method::GET,
            "/api/v1/shipments/does-not-exist",
            Some(&alice),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(
        app.call(Method::GET, &uri, Some(&admin), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, &uri, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Listings: by order, own only; an admin sees all.
    let list = |token: String, query: &'static str| {
        let app = &app;
        async move {
            let answer = app
                .call(
                    Method::GET,
                    &format!("/api/v1/shipments{query}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            answer.body["shipments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["order_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(alice.clone(), "?order_id=order-a").await, ["order-a"]);
    assert!(list(bob.clone(), "?order_id=order-a").await.is_empty());
    assert_eq!(list(bob.clone(), "").await, ["order-b"]);
    assert_eq!(list(admin.clone(), "?order_id=order-a").await, ["order-a"]);
    assert_eq!(list(admin.clone(), "").await.len(), 2);
}

#[tokio::test]
async fn customers_see_only_their_own_shipments_sqlite() {
    ownership(Engine::Sqlite).await;
}

#[tokio::test]
async fn customers_see_only_their_own_shipments_postgres() {
    ownership(Engine::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// the public quote, against stand-ins for inventory and catalog

/// Units available at one warehouse (id, location, units).
type Stock = (&'static str, (f64, f64), i64);

/// Stock per product per warehouse, and weights, served as inventory and catalog would.
#[derive(Clone, Default)]
struct World {
    stock: BTreeMap<String, Vec<Stock>>,
    weights: BTreeMap<String, i64>,
}

const WAREHOUSES: [(&str, (f64, f64)); 3] = [
    ("columbus", COLUMBUS),
    ("reno", RENO),
    ("rotterdam", ROTTERDAM),
];

async fn spawn_world(world: World) -> u16 {
    let world = Arc::new(world);
    let inventory_world = world.clone();
    let catalog_world = world.clone();
    let app = Router::new()
        .route(
            "/api/v1/inventory",
            get(move |Query(query): Query<BTreeMap<String, String>>| {
                let world = inventory_world.clone();
                async move {
                    let ids = query.get("product_ids").cloned().unwrap_or_default();
                    let items: Vec<Value> = ids
                        .split(',')
                        .map(|id| {
                            // Like inventory: a product never stocked has zero everywhere.
                            let rows = world.stock.get(id).cloned().unwrap_or_else(|| {
                                WAREHOUSES.iter().map(|(w, at)| (*w, *at, 0)).collect()
                            });
                            let warehouses: Vec<Value> = rows
                                .iter()
                                .map(|(w, at, available)| json!({"warehouse_id": w, "name": w,
                                    "lat": at.0, "lon": at.1, "on_hand": available, "reserved": 0, "available": available}))
                                .collect();
                            let total: i64 = rows.iter().map(|r| r.2).sum();
                            json!({"product_id": id, "available": total, "warehouses": warehouses})
                        })
                        .collect();
                    axum::Json(json!({ "items": items }))
                }
            }),
        )
        .route(
            "/api/v1/products/{id}",
            get(move |Path(id): Path<String>| {
                let world = catalog_world.clone();
                async move {
                    match world.weights.get(&id) {
                        Some(grams) => (StatusCode::OK, axum::Json(json!({"id": id, "weight_grams": grams}))),
                        None => (StatusCode::NOT_FOUND, axum::Json(json!({"code": "not_found", "status": 404}))),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn instance(service: &str, port: u16) -> Instance {
    Instance {
        id: format!("{service}-1"),
        service: service.into(),
        address: format!("http://127.0.0.1:{port}"),
        version: "1".into(),
        metadata: Default::default(),
        status: InstanceStatus::Up,
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
    }
}

fn discovery(inventory_port: u16, catalog_port: u16) -> Discovery {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    snapshot.services.insert(
        "inventory".into(),
        vec![instance("inventory", inventory_port)],
    );
    snapshot
        .services
        .insert("catalog".into(), vec![instance("catalog", catalog_port)]);
    Discovery::fixed(snapshot)
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn public_quote(app: &TestApp, items: Value) -> Answer {
    app.call(
        Method::POST,
        "/api/v1/shipping/quote",
        None,
        Some(&json!({"destination": {"country": "US", "postal_code": "10001"}, "items": items})),
    )
    .await
}

#[tokio::test]
async fn public_quote_picks_warehouses_from_inventory_and_weights_from_catalog() {
    let mut world = World::default();
    world.stock.insert(
        "mug".into(),
        vec![
            ("columbus", COLUMBUS, 10),
            ("reno", RENO, 10),
            ("rotterdam", ROTTERDAM, 0),
        ],
    );
    world.stock.insert(
        "lamp".into(),
        vec![
            ("columbus", COLUMBUS, 0),
            ("reno", RENO, 0),
            ("rotterdam", ROTTERDAM, 5),
        ],
    );
    world.weights.insert("mug".into(), 400);
    world.weights.insert("lamp".into(), 2600);
    let port = spawn_world(world).await;
    let app = app_with(
        Engine::Sqlite,
        "public_quote",
        test_config(),
        discovery(port, port),
    )
    .await
    .unwrap();

    // Everything at the nearest warehouse: one parcel from Columbus.
    let answer = public_quote(&app, json!([{"product_id": "mug", "quantity": 2}])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let columbus_km = haversine_km(COLUMBUS, NYC_10001);
    assert_eq!(answer.body["origin_warehouse_id"], "columbus");
    assert_eq!(
        answer.body["amount"],
        json!({"amount_minor": expected_fee(columbus_km, 800, false), "currency": "USD"})
    );
    assert!((answer.body["distance_km"].as_f64().unwrap() - columbus_km).abs() < 0.06);
    assert_eq!(answer.body["estimated_days"], 2);

    // No warehouse has both: each item from the nearest that has it.
    let answer = public_quote(&app, json!([{"product_id": "mug", "quantity": 1}, {"product_id": "lamp", "quantity": 1}, {"product_id": "mug", "quantity": 1}])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let rotterdam_km = haversine_km(ROTTERDAM, NYC_10001);
    assert_eq!(
        answer.body["amount"]["amount_minor"],
        expected_fee(columbus_km, 800, false) + expected_fee(rotterdam_km, 2600, true)
    );
    assert_eq!(answer.body["origin_warehouse_id"], "rotterdam");
    assert_eq!(answer.body["parcels"].as_array().unwrap().len(), 2);

    // More than any one warehouse has: split over the nearest ones.
    let answer = public_quote(&app, json!([{"product_id": "mug", "quantity": 15}])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let reno_km = haversine_km(RENO, NYC_10001);
    assert_eq!(
        answer.body["amount"]["amount_minor"],
        expected_fee(columbus_km, 4000, false) + expected_fee(reno_km, 2000, false)
    );
    assert_eq!(answer.body["origin_warehouse_id"], "reno");

    // Not enough anywhere.
    let answer = public_quote(
        &app,
        json!([{"product_id": "mug", "quantity": 1}, {"product_id": "lamp", "quantity": 6}]),
    )
    .await;
    assert_problem(
        &answer,
        StatusCode::CONFLICT,
        "insufficient_stock",
        Some("items[1].quantity"),
    );
    // A product the catalog does not know.
    let answer = public_quote(
        &app,
        json!([{"product_id": "mug", "quantity": 1}, {"product_id": "ghost", "quantity": 1}]),
    )
    .await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("items[1].product_id"),
    );
    // Bad input.
    let answer = public_quote(&app, json!([{"product_id": "mug", "quantity": 0}])).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("items[0].quantity"),
    );
    let answer = public_quote(&app, json!([])).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("items"),
    );
    // An unshippable destination.
    let answer = app
        .call(Method::POST, "/api/v1/shipping/quote", None,
            Some(&json!({"destination": {"country": "US", "postal_code": "00000"}, "items": [{"product_id": "mug", "quantity": 1}]})))
        .await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        Some("destination.postal_code"),
    );
}

#[tokio::test]
async fn public_quote_is_503_when_a_dependency_is_down() {
    let mut world = World::default();
    world
        .stock
        .insert("mug".into(), vec![("columbus", COLUMBUS, 10)]);
    world.weights.insert("mug".into(), 400);
    let up = spawn_world(world).await;
    let items = json!([{"product_id": "mug", "quantity": 1}]);

    for (label, inventory, catalog) in [
        ("inventory_down", dead_port(), up),
        ("catalog_down", up, dead_port()),
    ] {
        let app = app_with(
            Engine::Sqlite,
            label,
            test_config(),
            discovery(inventory, catalog),
        )
        .await
        .unwrap();
        let answer = public_quote(&app, items.clone()).await;
        assert_problem(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            None,
        );
    }
    // Not registered at all.
    let app = app_on(Engine::Sqlite, "nothing_registered").await.unwrap();
    let answer = public_quote(&app, items).await;
    assert_problem(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
        None,
    );
}
