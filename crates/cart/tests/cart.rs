//! The cart's one integration-test binary.
//!
//! - `api_*`: handlers through the complete application (`Service::app()`) with `oneshot`, on a
//!   fresh SQLite file each, with a stand-in catalog (a local axum server the cart finds
//!   through a fixed discovery view) whose products, and whether it is up, each test controls.
//! - `storage_*` and `events_*`: written once as an `async fn` over a database URL and run on
//!   SQLite always and on PostgreSQL when `BAZAAR_TEST_POSTGRES_URL` is set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bazaar_auth::testing::TestIssuer;
use bazaar_cart::events::OnOrderConfirmed;
use bazaar_cart::model::Owner;
use bazaar_cart::{Config, SESSION_HEADER};
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Snapshot};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_messaging::{deliver, EventEnvelope};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// a stand-in catalog

#[derive(Clone, Default)]
struct FakeCatalog {
    products: Arc<Mutex<HashMap<String, Value>>>,
    down: Arc<AtomicBool>,
    /// Product lookups served.
    lookups: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeCatalog {
    fn put(&self, id: &str, sku: &str, amount_minor: i64) {
        self.put_in(id, sku, amount_minor, "USD");
    }

    fn put_in(&self, id: &str, sku: &str, amount_minor: i64, currency: &str) {
        self.products.lock().unwrap().insert(
            id.to_owned(),
            json!({
                "id": id, "sku": sku, "name": format!("Product {sku}"), "description": "",
                "category": "kitchen",
                "price": {"amount_minor": amount_minor, "currency": currency},
                "weight_grams": 250,
                "images": [format!("/static/products/{id}.abc123.svg")],
                "attributes": {}, "featured": false,
                "created_at": "2025-01-01T00:00:00.000Z", "updated_at": "2025-01-01T00:00:00.000Z",
                "version": 1
            }),
        );
    }

    fn remove(&self, id: &str) {
        self.products.lock().unwrap().remove(id);
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Serves `GET /api/v1/products/{id}` on a free port; returns the port.
    async fn serve(&self) -> u16 {
        let catalog = self.clone();
        let app = Router::new().route(
            "/api/v1/products/{id}",
            get(move |Path(id): Path<String>| {
                let catalog = catalog.clone();
                async move {
                    catalog.lookups.fetch_add(1, Ordering::SeqCst);
                    if catalog.down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    match catalog.products.lock().unwrap().get(&id) {
                        Some(product) => axum::Json(product.clone()).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
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
}

/// A client that finds `catalog` at `port` (and nothing else).
fn client_for(port: u16) -> ServiceClient {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    snapshot.services.insert(
        "catalog".into(),
        vec![Instance {
            id: "catalog-1".into(),
            service: "catalog".into(),
            address: format!("http://127.0.0.1:{port}"),
            version: "1".into(),
            metadata: Default::default(),
            status: InstanceStatus::Up,
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
        }],
    );
    ServiceClient::new(Discovery::fixed(snapshot))
}

// ---------------------------------------------------------------------------------------------
// the application

struct TestApp {
    app: Router,
    catalog: FakeCatalog,
    issuer: TestIssuer,
    url: String,
    _dir: tempfile::TempDir,
}

/// Who a request is from.
#[derive(Clone)]
enum As {
    Nobody,
    Session(String),
    Token(String),
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self.body
    }

    /// Asserts a problem document with `status`, `code` and (if given) `field`.
    fn problem(&self, status: StatusCode, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        if let Some(field) = field {
            assert_eq!(self.body["field"], field, "{}", self.body);
        }
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(None, Config::default()).await
}

/// The cart on `database_url` (a fresh SQLite file when `None`) with its own stand-in catalog.
async fn spawn_app_with(database_url: Option<String>, config: Config) -> TestApp {
    let catalog = FakeCatalog::default();
    let port = catalog.serve().await;
    let issuer = TestIssuer::new();
    let (app, url, dir) = start(database_url, config, &issuer, port).await;
    TestApp {
        app,
        catalog,
        issuer,
        url,
        _dir: dir,
    }
}

async fn start(
    database_url: Option<String>,
    config: Config,
    issuer: &TestIssuer,
    catalog_port: u16,
) -> (Router, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database_url.unwrap_or_else(|| sqlite_url(dir.path(), "cart"));
    let mut common = CommonConfig::defaults(bazaar_cart::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    common.database_url = Some(url.clone());
    let service = bazaar_cart::service(
        common,
        config,
        issuer.verifier(&["bazaar", "cart"]),
        client_for(catalog_port),
    )
    .await
    .expect("service builds");
    (service.app(), url, dir)
}

impl TestApp {
    async fn send(&self, method: Method, uri: &str, who: &As, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        match who {
            As::Nobody => {}
            As::Session(id) => request = request.header(SESSION_HEADER, id),
            As::Token(token) => {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"))
            }
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

    async fn cart(&self, who: &As) -> Value {
        self.send(Method::GET, "/api/v1/cart", who, None).await.ok()
    }

    async fn add(&self, who: &As, product_id: &str, quantity: i64) -> Answer {
        self.send(
            Method::POST,
            "/api/v1/cart/lines",
            who,
            Some(json!({"product_id": product_id, "quantity": quantity})),
        )
        .await
    }

    async fn set(&self, who: &As, product_id: &str, quantity: i64) -> Answer {
        self.send(
            Method::PUT,
            &format!("/api/v1/cart/lines/{product_id}"),
            who,
            Some(json!({ "quantity": quantity })),
        )
        .await
    }

    fn customer(&self, user: &str) -> As {
        As::Token(self.issuer.customer(user))
    }
}

fn new_session() -> As {
    As::Session(uuid::Uuid::new_v4().to_string())
}

/// `{product_id: quantity}` of a cart answer.
fn quantities(cart: &Value) -> HashMap<String, i64> {
    cart["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["product_id"].as_str().unwrap().to_owned(),
                l["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn map(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

// ---------------------------------------------------------------------------------------------
// api

#[tokio::test]
async fn api_adding_a_product_asks_the_catalog_once_and_answers_with_its_price() {
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1250);
    t.catalog.put("pot", "KIT-2", 3000);
    let me = new_session();
    let lookups = || t.catalog.lookups.load(Ordering::SeqCst);

    // POST a line: one lookup validates the product and prices the answer.
    let before = lookups();
    let cart = t.add(&me, "cup", 1).await.ok();
    assert_eq!(lookups() - before, 1);
    assert_eq!(cart["lines"][0]["unit_price"]["amount_minor"], 1250);

    // PUT of a product not yet in the cart: one lookup for it, one for the line already there.
    let before = lookups();
    let cart = t.set(&me, "pot", 2).await.ok();
    assert_eq!(lookups() - before, 2);
    assert_eq!(quantities(&cart), map(&[("cup", 1), ("pot", 2)]));
    assert_eq!(cart["lines"][1]["unit_price"]["amount_minor"], 3000);

    // A line already in the cart is priced by a fresh lookup: a price change shows at once.
    t.catalog.put("cup", "KIT-1", 1300);
    let before = lookups();
    let cart = t.set(&me, "cup", 3).await.ok();
    assert_eq!(lookups() - before, 2, "both lines re-read");
    assert_eq!(cart["lines"][0]["unit_price"]["amount_minor"], 1300);
}

#[tokio::test]
async fn api_anonymous_cart_adds_sets_and_removes_lines() {
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1250);
    t.catalog.put("pot", "KIT-2", 3000);
    let me = new_session();

    let empty = t.cart(&me).await;
    assert_eq!(empty["lines"], json!([]));
    assert_eq!(
        empty["subtotal"],
        json!({"amount_minor": 0, "currency": "USD"})
    );
    assert_eq!(empty["item_count"], 0);
    assert_eq!(empty["prices_stale"], false);

    t.add(&me, "cup", 2).await.ok();
    t.add(&me, "pot", 1).await.ok();
    let cart = t.add(&me, "cup", 1).await.ok();
    assert_eq!(quantities(&cart), map(&[("cup", 3), ("pot", 1)]));
    let cup = &cart["lines"][0];
    assert_eq!(
        cup["product_id"], "cup",
        "lines keep the order they were added in"
    );
    assert_eq!(cup["sku"], "KIT-1");
    assert_eq!(cup["name"], "Product KIT-1");
    assert_eq!(cup["image"], "/static/products/cup.abc123.svg");
    assert_eq!(
        cup["unit_price"],
        json!({"amount_minor": 1250, "currency": "USD"})
    );
    assert_eq!(
        cup["line_total"],
        json!({"amount_minor": 3750, "currency": "USD"})
    );
    assert_eq!(cup["weight_grams"], 250);
    assert_eq!(
        cart["subtotal"],
        json!({"amount_minor": 6750, "currency": "USD"})
    );
    assert_eq!(cart["item_count"], 4);
    assert_eq!(cart["prices_stale"], false);

    let cart = t.set(&me, "cup", 5).await.ok();
    assert_eq!(quantities(&cart), map(&[("cup", 5), ("pot", 1)]));
    // PUT of a product not yet in the cart adds it.
    t.catalog.put("pan", "KIT-3", 100);
    let cart = t.set(&me, "pan", 2).await.ok();
    assert_eq!(
        quantities(&cart),
        map(&[("cup", 5), ("pot", 1), ("pan", 2)])
    );
    // 0 removes; again 0 is still fine.
    let cart = t.set(&me, "pot", 0).await.ok();
    assert_eq!(quantities(&cart), map(&[("cup", 5), ("pan", 2)]));
    t.set(&me, "pot", 0).await.ok();

    let cart = t
        .send(Method::DELETE, "/api/v1/cart/lines/pan", &me, None)
        .await
        .ok();
    assert_eq!(quantities(&cart), map(&[("cup", 5)]));
    t.send(Method::DELETE, "/api/v1/cart/lines/pan", &me, None)
        .await
        .problem(StatusCode::NOT_FOUND, "not_found", Some("product_id"));

    // What is read back is what was written.
    assert_eq!(quantities(&t.cart(&me).await), map(&[("cup", 5)]));
}

#[tokio::test]
async fn api_cart_belongs_to_a_user_or_a_session() {
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1250);

    let none = t.send(Method::GET, "/api/v1/cart", &As::Nobody, None).await;
    none.problem(StatusCode::UNAUTHORIZED, "unauthenticated", None);
    assert!(
        none.body["detail"]
            .as_str()
            .unwrap()
            .contains(SESSION_HEADER),
        "the problem says how to name a cart: {}",
        none.body
    );
    t.send(
        Method::GET,
        "/api/v1/cart",
        &As::Session("not-a-uuid".into()),
        None,
    )
    .await
    .problem(
        StatusCode::BAD_REQUEST,
        "invalid_header",
        Some(SESSION_HEADER),
    );
    t.send(
        Method::GET,
        "/api/v1/cart",
        &As::Token("garbage".into()),
        None,
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, "invalid_token", None);
    t.send(
        Method::GET,
        "/api/v1/cart",
        &As::Token(t.issuer.service("cart")),
        None,
    )
    .await
    .problem(StatusCode::FORBIDDEN, "forbidden", None);
    // Authentication comes before the body: no token and a bad body is still a 401.
    t.send(
        Method::POST,
        "/api/v1/cart/lines",
        &As::Nobody,
        Some(json!({})),
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, "unauthenticated", None);

    let alice = t.customer("alice");
    let bob = t.customer("bob");
    let session = new_session();
    t.add(&alice, "cup", 2).await.ok();
    t.add(&session, "cup", 7).await.ok();
    assert_eq!(quantities(&t.cart(&alice).await), map(&[("cup", 2)]));
    assert_eq!(quantities(&t.cart(&bob).await), map(&[]));
    assert_eq!(quantities(&t.cart(&session).await), map(&[("cup", 7)]));
    // The same session in another spelling is the same cart.
    if let As::Session(id) = &session {
        let upper = As::Session(id.to_uppercase());
        assert_eq!(quantities(&t.cart(&upper).await), map(&[("cup", 7)]));
    }
}

#[tokio::test]
async fn api_refuses_bad_lines_naming_the_field() {
    let t = spawn_app_with(
        None,
        Config {
            max_lines: 3,
            ..Config::default()
        },
    )
    .await;
    for (id, sku) in [("a", "A-1"), ("b", "B-1"), ("c", "C-1"), ("d", "D-1")] {
        t.catalog.put(id, sku, 100);
    }
    t.catalog.put_in("e", "E-1", 100, "EUR");
    let me = t.customer("carol");

    for bad in [0, -1, 100] {
        t.add(&me, "a", bad).await.problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("quantity"),
        );
    }
    t.set(&me, "a", 100).await.problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("quantity"),
    );
    t.add(&me, "a", 60).await.ok();
    t.add(&me, "a", 40).await.problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("quantity"),
    );
    t.add(&me, "a", 39).await.ok();

    t.add(&me, "nope", 1).await.problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("product_id"),
    );
    t.add(&me, "bad id/../x", 1).await.problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("product_id"),
    );
    t.set(&me, "nope", 1)
        .await
        .problem(StatusCode::NOT_FOUND, "not_found", Some("product_id"));
    t.send(
        Method::POST,
        "/api/v1/cart/lines",
        &me,
        Some(json!({"product_id": "a", "quantity": "two"})),
    )
    .await
    .problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("quantity"),
    );
    t.send(
        Method::POST,
        "/api/v1/cart/lines",
        &me,
        Some(json!({"quantity": 1})),
    )
    .await
    .problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("product_id"),
    );

    t.add(&me, "e", 1).await.problem(
        StatusCode::CONFLICT,
        "currency_mismatch",
        Some("product_id"),
    );
    t.add(&me, "b", 1).await.ok();
    t.add(&me, "c", 1).await.ok();
    t.add(&me, "d", 1)
        .await
        .problem(StatusCode::CONFLICT, "cart_full", Some("product_id"));
    t.set(&me, "d", 1)
        .await
        .problem(StatusCode::CONFLICT, "cart_full", Some("product_id"));
    // A full cart still takes more of what it holds.
    t.add(&me, "b", 1).await.ok();
    assert_eq!(
        quantities(&t.cart(&me).await),
        map(&[("a", 99), ("b", 2), ("c", 1)])
    );
    assert_eq!(Config::default().max_lines, 50);
    assert_eq!(Config::default().max_quantity, 99);
}

#[tokio::test]
async fn api_reads_prices_from_the_catalog_and_falls_back_to_the_last_known() {
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1000);
    t.catalog.put("gone", "KIT-9", 500);
    let me = t.customer("dave");
    t.add(&me, "cup", 2).await.ok();
    t.add(&me, "gone", 1).await.ok();

    // A price change shows on the next read.
    t.catalog.put("cup", "KIT-1B", 1200);
    let cart = t.cart(&me).await;
    assert_eq!(cart["lines"][0]["unit_price"]["amount_minor"], 1200);
    assert_eq!(cart["lines"][0]["sku"], "KIT-1B");
    assert_eq!(cart["subtotal"]["amount_minor"], 2 * 1200 + 500);
    assert_eq!(cart["prices_stale"], false);

    // A product the catalog no longer has stays visible but is not counted.
    t.catalog.remove("gone");
    let cart = t.cart(&me).await;
    let gone = &cart["lines"][1];
    assert_eq!(gone["product_id"], "gone");
    assert_eq!(gone["available"], false);
    assert_eq!(gone["unit_price"]["amount_minor"], 500);
    assert_eq!(cart["lines"][0]["available"], true);
    assert_eq!(cart["subtotal"]["amount_minor"], 2 * 1200);
    assert_eq!(cart["item_count"], 2);

    // The catalog goes down: the cart answers with the last prices it saw, and says so.
    t.catalog.set_down(true);
    let cart = t.cart(&me).await;
    assert_eq!(cart["prices_stale"], true);
    assert_eq!(cart["lines"][0]["unit_price"]["amount_minor"], 1200);
    assert_eq!(cart["lines"][0]["sku"], "KIT-1B");
    assert_eq!(cart["lines"][0]["line_total"]["amount_minor"], 2400);
    assert_eq!(quantities(&cart), map(&[("cup", 2), ("gone", 1)]));
    // Changing a quantity needs no catalog...
    let cart = t.set(&me, "cup", 3).await.ok();
    assert_eq!(cart["lines"][0]["quantity"], 3);
    assert_eq!(cart["prices_stale"], true);
    // ...but adding a product does: it cannot be confirmed.
    t.add(&me, "cup", 1).await.problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "catalog_unavailable",
        None,
    );
}

#[tokio::test]
async fn api_cart_survives_a_catalog_that_is_not_even_listening() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1000);
    let me = t.customer("erin");
    t.add(&me, "cup", 2).await.ok();

    // Same database, a catalog address where nothing listens.
    let (app, _url, _dir) = start(Some(t.url.clone()), Config::default(), &t.issuer, dead).await;
    let other = TestApp {
        app,
        catalog: FakeCatalog::default(),
        issuer: TestIssuer::new(),
        url: t.url.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let cart = other
        .send(
            Method::GET,
            "/api/v1/cart",
            &As::Token(t.issuer.customer("erin")),
            None,
        )
        .await
        .ok();
    assert_eq!(cart["prices_stale"], true);
    assert_eq!(cart["subtotal"]["amount_minor"], 2000);
}

#[tokio::test]
async fn api_merge_adds_the_anonymous_lines_once() {
    let t = spawn_app().await;
    for (id, sku) in [("cup", "KIT-1"), ("pot", "KIT-2"), ("pan", "KIT-3")] {
        t.catalog.put(id, sku, 100);
    }
    let session_id = uuid::Uuid::new_v4().to_string();
    let session = As::Session(session_id.clone());
    let me = t.customer("frank");
    t.add(&session, "cup", 2).await.ok();
    t.add(&session, "pot", 90).await.ok();
    t.add(&me, "pot", 20).await.ok();
    t.add(&me, "pan", 1).await.ok();

    let merge = |who: As, body: Value| {
        let t = &t;
        async move {
            t.send(Method::POST, "/api/v1/cart/merge", &who, Some(body))
                .await
        }
    };
    let merged = merge(me.clone(), json!({ "session_id": session_id }))
        .await
        .ok();
    assert_eq!(
        quantities(&merged),
        map(&[("pot", 99), ("pan", 1), ("cup", 2)]),
        "quantities summed, capped at 99"
    );
    assert_eq!(
        quantities(&t.cart(&session).await),
        map(&[]),
        "the anonymous cart is gone"
    );

    let again = merge(me.clone(), json!({ "session_id": session_id }))
        .await
        .ok();
    assert_eq!(
        quantities(&again),
        quantities(&merged),
        "a second merge changes nothing"
    );

    merge(me.clone(), json!({"session_id": "nope"}))
        .await
        .problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("session_id"),
        );
    merge(session.clone(), json!({ "session_id": session_id }))
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthenticated", None);
}

#[tokio::test]
async fn api_internal_cart_is_for_services_only() {
    let t = spawn_app().await;
    t.catalog.put("cup", "KIT-1", 1250);
    t.add(&t.customer("gina"), "cup", 3).await.ok();

    let service = As::Token(t.issuer.service("cart"));
    let cart = t
        .send(Method::GET, "/internal/v1/carts/gina", &service, None)
        .await
        .ok();
    assert_eq!(quantities(&cart), map(&[("cup", 3)]));
    assert_eq!(
        cart["subtotal"],
        json!({"amount_minor": 3750, "currency": "USD"})
    );
    assert_eq!(cart["lines"][0]["weight_grams"], 250);
    let empty = t
        .send(Method::GET, "/internal/v1/carts/nobody", &service, None)
        .await
        .ok();
    assert_eq!(empty["lines"], json!([]));

    t.send(
        Method::GET,
        "/internal/v1/carts/gina",
        &t.customer("gina"),
        None,
    )
    .await
    .problem(StatusCode::FORBIDDEN, "forbidden", None);
    t.send(Method::GET, "/internal/v1/carts/gina", &As::Nobody, None)
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthenticated", None);
}

// ---------------------------------------------------------------------------------------------
// storage and events, on both engines

/// A cart written through the API is there after the database is closed and reopened.
async fn cart_survives_a_restart(url: String) {
    let t = spawn_app_with(Some(url.clone()), Config::default()).await;
    t.catalog.put("cup", "KIT-1", 1250);
    t.catalog.put("pot", "KIT-2", 3000);
    let me = t.customer("hank");
    t.add(&me, "cup", 2).await.ok();
    t.add(&me, "pot", 1).await.ok();
    drop(t);

    let repository = bazaar_cart::open(&url).await.expect("reopen");
    let lines = repository
        .lines(&Owner::User("hank".into()).key())
        .await
        .expect("lines");
    let found: Vec<(&str, i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l.product_id.as_str(),
                l.quantity,
                l.snapshot.price.amount_minor,
            )
        })
        .collect();
    assert_eq!(found, vec![("cup", 2, 1250), ("pot", 1, 3000)]);
    repository.database().close().await;

    // And a new process serves it.
    let t = spawn_app_with(Some(url), Config::default()).await;
    t.catalog.put("cup", "KIT-1", 1250);
    t.catalog.put("pot", "KIT-2", 3000);
    let cart = t.cart(&t.customer("hank")).await;
    assert_eq!(quantities(&cart), map(&[("cup", 2), ("pot", 1)]));
}

#[tokio::test]
async fn storage_cart_survives_a_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    cart_survives_a_restart(sqlite_url(dir.path(), "restart")).await;
}

#[tokio::test]
async fn storage_cart_survives_a_restart_postgres() {
    if let Some(url) = fresh_postgres_database("cart_restart").await {
        cart_survives_a_restart(url).await;
    }
}

/// Merging the same session twice at once moves its lines once.
async fn concurrent_merges_move_lines_once(url: String) {
    let repository = bazaar_cart::open(&url).await.expect("open");
    let limits = bazaar_cart::Limits {
        max_lines: 50,
        max_quantity: 99,
    };
    let snapshot = bazaar_cart::model::ProductSnapshot {
        sku: "KIT-1".into(),
        name: "Cup".into(),
        image: String::new(),
        price: bazaar_cart::model::Money {
            amount_minor: 100,
            currency: "USD".into(),
        },
        weight_grams: 1,
    };
    let session = Owner::Session(uuid::Uuid::new_v4()).key();
    let user = Owner::User("ivy".into()).key();
    repository
        .add(&session, "cup", 3, &snapshot, limits)
        .await
        .unwrap();
    repository
        .add(&user, "cup", 1, &snapshot, limits)
        .await
        .unwrap();

    // Polled together, so the transactions really overlap.
    let outcomes =
        futures::future::join_all((0..4).map(|_| repository.merge(&session, &user, limits))).await;
    let merged: usize = outcomes.iter().map(|o| o.as_ref().unwrap().merged).sum();
    assert_eq!(merged, 1, "exactly one merge took the session's line");
    let lines = repository.lines(&user).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].quantity, 4);
    assert!(repository.lines(&session).await.unwrap().is_empty());
}

#[tokio::test]
async fn storage_concurrent_merges_move_lines_once_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_merges_move_lines_once(sqlite_url(dir.path(), "merge")).await;
}

#[tokio::test]
async fn storage_concurrent_merges_move_lines_once_postgres() {
    if let Some(url) = fresh_postgres_database("cart_merge").await {
        concurrent_merges_move_lines_once(url).await;
    }
}

fn order_confirmed(user_id: &str, lines: Value) -> EventEnvelope {
    EventEnvelope::for_test(
        "orders",
        "order.confirmed",
        "order-1",
        json!({
            "order_id": "order-1", "user_id": user_id, "email": "x@example.com",
            "total": {"amount_minor": 1, "currency": "USD"}, "lines": lines,
            "shipment_id": "ship-1"
        }),
    )
}

/// `order.confirmed` removes what was ordered from the buyer's cart, once however often it is
/// delivered.
async fn order_confirmed_empties_the_cart_once(url: String) {
    let t = spawn_app_with(Some(url.clone()), Config::default()).await;
    for (id, sku) in [("cup", "KIT-1"), ("pot", "KIT-2"), ("pan", "KIT-3")] {
        t.catalog.put(id, sku, 100);
    }
    let jill = t.customer("jill");
    let kim = t.customer("kim");
    t.add(&jill, "cup", 3).await.ok();
    t.add(&jill, "pot", 1).await.ok();
    t.add(&jill, "pan", 2).await.ok();
    t.add(&kim, "cup", 3).await.ok();

    let repository = bazaar_cart::open(&url).await.expect("open");
    let db = repository.database();
    let event = order_confirmed(
        "jill",
        json!([{"product_id": "cup", "quantity": 2}, {"product_id": "pot", "quantity": 1},
               {"product_id": "absent", "quantity": 1}]),
    );
    assert!(deliver(db, "cart", &OnOrderConfirmed, &event)
        .await
        .unwrap());
    let expected = map(&[("cup", 1), ("pan", 2)]);
    assert_eq!(quantities(&t.cart(&jill).await), expected);

    // Delivered twice: removed once.
    assert!(!deliver(db, "cart", &OnOrderConfirmed, &event)
        .await
        .unwrap());
    assert_eq!(quantities(&t.cart(&jill).await), expected);
    // Someone else's cart is untouched.
    assert_eq!(quantities(&t.cart(&kim).await), map(&[("cup", 3)]));

    // Other events of orders are ignored.
    let placed = EventEnvelope::for_test(
        "orders",
        "order.placed",
        "order-2",
        json!({"order_id": "order-2", "user_id": "jill", "lines": [{"product_id": "pan", "quantity": 2}]}),
    );
    assert!(deliver(db, "cart", &OnOrderConfirmed, &placed)
        .await
        .unwrap());
    assert_eq!(quantities(&t.cart(&jill).await), expected);

    // An order naming a product on two lines subtracts the sum.
    let split = order_confirmed(
        "jill",
        json!([{"product_id": "pan", "quantity": 1}, {"product_id": "pan", "quantity": 1}]),
    );
    assert!(deliver(db, "cart", &OnOrderConfirmed, &split)
        .await
        .unwrap());
    assert_eq!(quantities(&t.cart(&jill).await), map(&[("cup", 1)]));

    // A payload that does not match is an error (retried later), not a silent success.
    let broken = EventEnvelope::for_test("orders", "order.confirmed", "order-3", json!({"x": 1}));
    assert!(deliver(db, "cart", &OnOrderConfirmed, &broken)
        .await
        .is_err());
}

#[tokio::test]
async fn events_order_confirmed_empties_the_cart_once_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    order_confirmed_empties_the_cart_once(sqlite_url(dir.path(), "events")).await;
}

#[tokio::test]
async fn events_order_confirmed_empties_the_cart_once_postgres() {
    if let Some(url) = fresh_postgres_database("cart_events").await {
        order_confirmed_empties_the_cart_once(url).await;
    }
}
