//! The notifications service's one integration-test binary.
//!
//! Events are applied as the consumer applies them (`bazaar_messaging::deliver`: inbox check,
//! handler and commit in one transaction); the mailbox is read back through the repository and
//! through the complete application (`Service::app()` with `oneshot`). Tests that store are
//! written once as an `async fn` over a database URL and run on SQLite always and on
//! PostgreSQL when `BAZAAR_TEST_POSTGRES_URL` is set.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use bazaar_auth::testing::TestIssuer;
use bazaar_discovery::{Discovery, Snapshot};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_messaging::{deliver, EventEnvelope};
use bazaar_notifications::repository::StoredEmail;
use bazaar_notifications::{Config, Mailer, Repository, NAME};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers

struct TestApp {
    app: Router,
    repository: Repository,
    issuer: TestIssuer,
    _dir: tempfile::TempDir,
}

/// The service on `database_url` (a fresh SQLite file when `None`), and the repository of the
/// same database to deliver events through.
async fn spawn_app(database_url: Option<String>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database_url.unwrap_or_else(|| sqlite_url(dir.path(), "notifications"));
    let mut common = CommonConfig::defaults(NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    common.database_url = Some(url.clone());
    let issuer = TestIssuer::new();
    // No other service is reachable: the background feed readers find no instance and wait,
    // and the tests apply events themselves.
    let client = ServiceClient::new(Discovery::fixed(Snapshot::default()));
    let service = bazaar_notifications::service(
        common,
        Config::default(),
        issuer.verifier(&["bazaar", NAME]),
        client,
    )
    .await
    .expect("service builds");
    let repository = bazaar_notifications::open(&url).await.expect("open");
    TestApp {
        app: service.app(),
        repository,
        issuer,
        _dir: dir,
    }
}

impl TestApp {
    /// Applies `event` as the consumer would; `true` when it took effect.
    async fn deliver(&self, event: &EventEnvelope) -> bool {
        deliver(self.repository.database(), NAME, &Mailer, event)
            .await
            .expect("event applies")
    }

    async fn email_for(&self, event: &EventEnvelope) -> StoredEmail {
        self.repository
            .by_event(&event.id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("no email for {}", event.event_type))
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }
}

fn usd(amount_minor: i64) -> Value {
    json!({"amount_minor": amount_minor, "currency": "USD"})
}

fn order_placed(order: &str, user: &str, email: &str, total: Value) -> EventEnvelope {
    EventEnvelope::for_test(
        "orders",
        "order.placed",
        order,
        json!({"order_id": order, "user_id": user, "email": email, "total": total, "lines": []}),
    )
}

fn order_confirmed(order: &str, user: &str, email: &str, total: Value) -> EventEnvelope {
    EventEnvelope::for_test(
        "orders",
        "order.confirmed",
        order,
        json!({"order_id": order, "user_id": user, "email": email, "total": total,
               "lines": [{"product_id": "cup", "quantity": 2}, {"product_id": "pot", "quantity": 1}],
               "shipment_id": "ship-1"}),
    )
}

fn payment(kind: &str, order: &str, user: &str, amount: Value) -> EventEnvelope {
    EventEnvelope::for_test(
        "payments",
        kind,
        "pay-1",
        json!({"payment_id": "pay-1", "order_id": order, "user_id": user, "amount": amount}),
    )
}

fn status_changed(order: &str, user: &str, status: &str) -> EventEnvelope {
    EventEnvelope::for_test(
        "shipping",
        "shipment.status_changed",
        "ship-1",
        json!({"shipment_id": "ship-1", "order_id": order, "user_id": user,
               "tracking_number": "BZ123456789", "status": status}),
    )
}

// ---------------------------------------------------------------------------------------------
// events, on both engines

/// Every event type becomes the email it should.
async fn each_event_writes_its_email(url: Option<String>) {
    let t = spawn_app(url).await;

    // As in the orders feed, the order's placement comes first and gives the address.
    let placed = order_placed("1234", "u1", "ann@example.com", usd(123_456));
    assert!(t.deliver(&placed).await);
    let confirmed = order_confirmed("1234", "u1", "ann@example.com", usd(123_456));
    assert!(t.deliver(&confirmed).await);
    let email = t.email_for(&confirmed).await;
    assert_eq!(email.subject, "Your order 1234 is confirmed");
    assert!(email.body.contains("Total: $1,234.56"), "{}", email.body);
    assert!(email.body.contains("Items: 3 items"), "{}", email.body);
    assert_eq!(email.user_id, "u1");
    assert_eq!(email.email.as_deref(), Some("ann@example.com"));
    assert_eq!(email.order_id.as_deref(), Some("1234"));
    assert_eq!(email.event_type, "order.confirmed");
    assert_eq!(email.event_id, confirmed.id);

    let cancelled = EventEnvelope::for_test(
        "orders",
        "order.cancelled",
        "1235",
        json!({"order_id": "1235", "user_id": "u1", "email": "ann@example.com",
               "reason": "payment_declined"}),
    );
    assert!(t.deliver(&cancelled).await);
    let email = t.email_for(&cancelled).await;
    assert_eq!(email.subject, "Your order 1235 was cancelled");
    assert!(
        email.body.contains("because your payment was declined"),
        "{}",
        email.body
    );

    // Payment and shipping events carry no address: the one orders gave is used.
    let captured = payment("payment.captured", "1234", "u1", usd(5797));
    assert!(t.deliver(&captured).await);
    let email = t.email_for(&captured).await;
    assert_eq!(email.subject, "Payment received for order 1234");
    assert!(email.body.contains("$57.97"), "{}", email.body);
    assert_eq!(email.email.as_deref(), Some("ann@example.com"));
    assert_eq!(email.order_id.as_deref(), Some("1234"));

    let refunded = payment(
        "payment.refunded",
        "1234",
        "u1",
        json!({"amount_minor": 1200, "currency": "JPY"}),
    );
    assert!(t.deliver(&refunded).await);
    let email = t.email_for(&refunded).await;
    assert_eq!(email.subject, "Refund issued for order 1234");
    assert!(
        email.body.contains("refunded ¥1,200 for order 1234"),
        "{}",
        email.body
    );

    let created = EventEnvelope::for_test(
        "shipping",
        "shipment.created",
        "ship-1",
        json!({"shipment_id": "ship-1", "order_id": "1234", "user_id": "u1",
               "tracking_number": "BZ123456789", "fee": usd(899)}),
    );
    assert!(t.deliver(&created).await);
    let email = t.email_for(&created).await;
    assert_eq!(email.subject, "Your order 1234 is ready to ship");
    assert!(
        email.body.contains("Tracking number: BZ123456789"),
        "{}",
        email.body
    );
    assert!(email.body.contains("Shipping: $8.99"), "{}", email.body);

    for (status, subject) in [
        (
            "label_created",
            "A shipping label was created for your order 1234",
        ),
        ("in_transit", "Your order 1234 is on its way"),
        ("delivered", "Your order 1234 was delivered"),
    ] {
        let event = status_changed("1234", "u1", status);
        assert!(t.deliver(&event).await);
        let email = t.email_for(&event).await;
        assert_eq!(email.subject, subject);
        assert!(email.body.contains("BZ123456789"), "{}", email.body);
        assert_eq!(email.event_type, "shipment.status_changed");
    }

    // A user no order event has named yet: the email is written, without an address.
    let stranger = payment("payment.captured", "9999", "u2", usd(100));
    assert!(t.deliver(&stranger).await);
    assert_eq!(t.email_for(&stranger).await.email, None);

    // Events that call for no email write none.
    let placed = order_placed("1236", "u2", "bo@example.com", usd(1));
    let authorized = payment("payment.authorized", "1236", "u2", usd(1));
    for event in [&placed, &authorized] {
        assert!(t.deliver(event).await);
        assert!(t.repository.by_event(&event.id).await.unwrap().is_none());
    }
    // ...but order.placed told us u2's address.
    let later = payment("payment.captured", "1236", "u2", usd(1));
    assert!(t.deliver(&later).await);
    assert_eq!(
        t.email_for(&later).await.email.as_deref(),
        Some("bo@example.com")
    );
    // The confirmation of an older order, with the address it was placed with, is mailed
    // there but leaves the newer address remembered.
    let older = order_confirmed("1230", "u2", "old@example.com", usd(1));
    assert!(t.deliver(&older).await);
    assert_eq!(
        t.email_for(&older).await.email.as_deref(),
        Some("old@example.com")
    );
    let after = payment("payment.captured", "1237", "u2", usd(1));
    assert!(t.deliver(&after).await);
    assert_eq!(
        t.email_for(&after).await.email.as_deref(),
        Some("bo@example.com")
    );

    // A payload that does not match its type is an error (retried), not a silent success.
    let broken = EventEnvelope::for_test("payments", "payment.captured", "p", json!({"x": 1}));
    assert!(deliver(t.repository.database(), NAME, &Mailer, &broken)
        .await
        .is_err());
}

#[tokio::test]
async fn events_each_type_writes_its_email_sqlite() {
    each_event_writes_its_email(None).await;
}

#[tokio::test]
async fn events_each_type_writes_its_email_postgres() {
    if let Some(url) = fresh_postgres_database("notifications_events").await {
        each_event_writes_its_email(Some(url)).await;
    }
}

/// A redelivered event writes nothing: neither through the consumer's inbox, nor through
/// another consumer group (the mailbox's unique `event_id`).
async fn duplicates_write_one_email(url: Option<String>) {
    let t = spawn_app(url).await;
    let event = order_confirmed("77", "u1", "ann@example.com", usd(500));
    assert!(t.deliver(&event).await);
    assert!(!t.deliver(&event).await, "the inbox knows it");
    assert!(
        deliver(t.repository.database(), "another-group", &Mailer, &event)
            .await
            .expect("applies"),
        "a group with its own inbox runs the handler again"
    );
    let token = t.issuer.customer("u1");
    let (status, page) = t.get("/api/v1/notifications", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn events_duplicates_write_one_email_sqlite() {
    duplicates_write_one_email(None).await;
}

#[tokio::test]
async fn events_duplicates_write_one_email_postgres() {
    if let Some(url) = fresh_postgres_database("notifications_dupes").await {
        duplicates_write_one_email(Some(url)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// api

fn subjects(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn api_customers_read_their_own_mailbox_newest_first() {
    let t = spawn_app(None).await;
    for n in 1..=5 {
        let order = format!("A{n}");
        t.deliver(&order_confirmed(&order, "ann", "ann@example.com", usd(n)))
            .await;
    }
    t.deliver(&order_confirmed("B1", "bob", "bob@example.com", usd(1)))
        .await;

    let ann = t.issuer.customer("ann");
    let (status, page) = t.get("/api/v1/notifications", Some(&ann)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        subjects(&page),
        (1..=5)
            .rev()
            .map(|n| format!("Your order A{n} is confirmed"))
            .collect::<Vec<_>>()
    );
    assert!(page["next_before"].is_null());
    let item = &page["items"][0];
    assert_eq!(item["user_id"], "ann");
    assert_eq!(item["email"], "ann@example.com");
    assert_eq!(item["event_type"], "order.confirmed");
    assert_eq!(item["order_id"], "A5");
    assert!(
        item["created_at"].as_str().unwrap().ends_with('Z'),
        "{item}"
    );

    // Paging: two at a time, following next_before.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/notifications?limit=2".to_owned();
    loop {
        let (status, page) = t.get(&uri, Some(&ann)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page["items"].as_array().unwrap().len() <= 2);
        seen.extend(subjects(&page));
        match page["next_before"].as_str() {
            Some(before) => uri = format!("/api/v1/notifications?limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        subjects(&t.get("/api/v1/notifications", Some(&ann)).await.1)
    );

    let bob = t.issuer.customer("bob");
    let (_, page) = t.get("/api/v1/notifications", Some(&bob)).await;
    assert_eq!(subjects(&page), vec!["Your order B1 is confirmed"]);
    // `user_id` is not a customer's to choose: the admin query is ignored here.
    let (_, page) = t.get("/api/v1/notifications?user_id=ann", Some(&bob)).await;
    assert_eq!(subjects(&page), vec!["Your order B1 is confirmed"]);

    let (status, page) = t.get("/api/v1/notifications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
    let (status, page) = t
        .get(
            "/api/v1/notifications",
            Some(&t.issuer.service("notifications")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("before=nope", "before"),
    ] {
        let (status, page) = t
            .get(&format!("/api/v1/notifications?{query}"), Some(&ann))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {page}");
        assert_eq!(page["field"], field, "{query}: {page}");
    }
}

#[tokio::test]
async fn api_admins_read_every_mailbox() {
    let t = spawn_app(None).await;
    t.deliver(&order_confirmed("A1", "ann", "ann@example.com", usd(1)))
        .await;
    t.deliver(&order_confirmed("B1", "bob", "bob@example.com", usd(1)))
        .await;
    t.deliver(&payment("payment.captured", "B1", "bob", usd(1)))
        .await;

    let admin = t.issuer.admin("root");
    let (status, page) = t.get("/api/v1/admin/notifications", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        subjects(&page),
        vec![
            "Payment received for order B1",
            "Your order B1 is confirmed",
            "Your order A1 is confirmed"
        ]
    );
    let (_, page) = t
        .get(
            "/api/v1/admin/notifications?user_id=bob&limit=1",
            Some(&admin),
        )
        .await;
    assert_eq!(subjects(&page), vec!["Payment received for order B1"]);
    let before = page["next_before"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page) = t
        .get(
            &format!("/api/v1/admin/notifications?user_id=bob&before={before}"),
            Some(&admin),
        )
        .await;
    assert_eq!(subjects(&page), vec!["Your order B1 is confirmed"]);

    let (status, page) = t
        .get(
            "/api/v1/admin/notifications",
            Some(&t.issuer.customer("ann")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let (status, _) = t.get("/api/v1/admin/notifications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
