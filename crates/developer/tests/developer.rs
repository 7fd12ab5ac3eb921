//! The developer service's one integration-test binary.
//!
//! - `api_*`: handlers through the complete application (the kit's `Service` around
//!   `router(state)`, so fallbacks and layers are included) with `oneshot`, on a fresh SQLite
//!   file each, with tokens signed by a test key the verifier's JWKS fixture publishes and a
//!   clock the test moves.
//! - `storage_*`: the repository, each written once as an `async fn` over a database URL and
//!   run on SQLite always and on PostgreSQL when `BAZAAR_TEST_POSTGRES_URL` is set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bazaar_auth::Verifier;
use bazaar_developer::model::{UsageCount, UsageReport, DAY_MS};
use bazaar_developer::repository::{NewKey, UsageScope};
use bazaar_developer::{keys, AppState, Clock, Config, Repository};
use bazaar_kit::audit::{verify_chain, AuditEvent};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// 2025-01-30T12:00:00Z: late in a month, so "this month" and "last month" are both near.
const START_MS: i64 = (20_118 * 86_400 + 12 * 3_600) * 1_000;

// ---------------------------------------------------------------------------------------------
// helpers

/// The identity service as far as tokens go (the auth crate's test issuer), with the callers
/// these tests need.
struct Issuer(bazaar_auth::testing::TestIssuer);

impl Issuer {
    fn new() -> Self {
        Self(bazaar_auth::testing::TestIssuer::new())
    }

    fn verifier(&self) -> Arc<Verifier> {
        self.0.verifier(&["bazaar", "developer"])
    }

    fn sign(&self, sub: &str, client_id: &str, roles: &[&str]) -> String {
        self.0.token(sub, client_id, "bazaar", "openid", roles)
    }

    fn user(&self, sub: &str) -> String {
        self.sign(sub, "storefront", &["customer"])
    }

    fn admin(&self, sub: &str) -> String {
        self.sign(sub, "admin-console", &["admin"])
    }

    /// A client-credentials token of the gateway (sub is the client id).
    fn service(&self) -> String {
        self.sign("gateway", "gateway", &["service"])
    }
}

struct TestApp {
    app: Router,
    repository: Repository,
    issuer: Issuer,
    now: Arc<AtomicI64>,
    db_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let repository = Repository::open(&sqlite_url(dir.path(), "developer"))
        .await
        .expect("open");
    let issuer = Issuer::new();
    let verifier = issuer.verifier();
    verifier.refresh().await.expect("jwks");
    let now = Arc::new(AtomicI64::new(START_MS));
    let clock_now = now.clone();
    let state = AppState::new(repository.clone(), &Config::default(), verifier)
        .with_clock(Clock::from_fn(move || clock_now.load(Ordering::SeqCst)));
    let mut common = CommonConfig::defaults(bazaar_developer::NAME, 0);
    common.registry_url = String::new();
    let app = Service::new(common, bazaar_developer::router(state)).app();
    TestApp {
        app,
        repository,
        issuer,
        now,
        db_file: dir.path().join("developer.db"),
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl TestApp {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .expect("request");
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

    async fn get(&self, uri: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, uri, token, None).await
    }

    async fn post(&self, uri: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(Method::POST, uri, token, Some(body.to_string()))
            .await
    }

    async fn delete(&self, uri: &str, token: Option<&str>) -> Answer {
        self.send(Method::DELETE, uri, token, None).await
    }

    /// Creates a key for `token`'s user, asserting success.
    async fn create(&self, token: &str, name: &str, plan: &str) -> Value {
        let answer = self
            .post(
                "/api/v1/developer/keys",
                Some(token),
                &json!({"name": name, "plan": plan}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }

    async fn lookup(&self, key: &str) -> Answer {
        self.post(
            "/internal/v1/keys/lookup",
            Some(&self.issuer.service()),
            &json!({ "key": key }),
        )
        .await
    }

    async fn report(&self, report_id: &str, counts: Value) -> Answer {
        self.post(
            "/internal/v1/usage",
            Some(&self.issuer.service()),
            &json!({"report_id": report_id, "gateway": "gw-1", "counts": counts}),
        )
        .await
    }

    fn advance_days(&self, days: i64) {
        self.now.fetch_add(days * DAY_MS, Ordering::SeqCst);
    }

    /// Every byte SQLite holds for this database (main file and write-ahead log).
    fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(&self.db_file).expect("db file");
        let wal = self.db_file.with_extension("db-wal");
        if let Ok(more) = std::fs::read(wal) {
            bytes.extend(more);
        }
        bytes
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The item with `id` in a list answer.
fn item<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed in {list}"))
}

fn assert_problem(answer: &Answer, status: StatusCode, field: Option<&str>) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["status"], status.as_u16(), "{}", answer.body);
    assert!(answer.body["code"].is_string(), "{}", answer.body);
    if let Some(field) = field {
        assert_eq!(answer.body["field"], field, "{}", answer.body);
    }
}

// ---------------------------------------------------------------------------------------------
// api

#[tokio::test]
async fn api_plans_are_public_with_their_limits() {
    let app = spawn_app().await;
    let answer = app.get("/api/v1/developer/plans", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let items = answer.body["items"].as_array().expect("items");
    let by_name = |name: &str| {
        items
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("plan {name}"))
            .clone()
    };
    let trial = by_name("free-trial");
    assert_eq!(trial["title"], "Free trial");
    assert_eq!(trial["rate_per_second"], 5);
    assert_eq!(trial["burst"], 10);
    assert_eq!(trial["quota_per_day"], 1000);
    assert_eq!(trial["quota_per_month"], Value::Null);
    assert_eq!(trial["trial_days"], 14);
    assert_eq!(by_name("standard")["quota_per_month"], 2_000_000);
    assert_eq!(by_name("partner")["self_service"], false);
}

#[tokio::test]
async fn api_a_created_key_is_shown_once_and_stored_only_as_its_hash() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let created = app.create(&alice, "my shop", "free-trial").await;
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(keys::is_well_formed(&key), "{key}");
    assert_eq!(created["prefix"], format!("bzr_{id}"));
    assert!(key.starts_with(&format!("bzr_{id}_")));
    assert_eq!(created["name"], "my shop");
    assert_eq!(created["plan"], "free-trial");
    assert_eq!(created["status"], "active");
    assert_eq!(created["created_at"], "2025-01-30T12:00:00Z");
    assert_eq!(
        created["expires_at"], "2025-02-13T12:00:00Z",
        "14-day trial"
    );
    let secret = key.rsplit('_').next().expect("secret").to_owned();

    // A plan without a trial never expires.
    let standard = app.create(&alice, "backend", "standard").await;
    assert_eq!(standard["expires_at"], Value::Null);

    // Listing never shows the key again.
    let list = app.get("/api/v1/developer/keys", Some(&alice)).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(item(&list.body, &id)["prefix"], created["prefix"]);
    assert!(items.iter().all(|item| item.get("key").is_none()));
    assert!(!list.body.to_string().contains(&secret));

    // The database holds the hash, and neither the key nor its secret anywhere (audit
    // included).
    let stored = app
        .repository
        .find_by_hash(&keys::hash(&key))
        .await
        .expect("query")
        .expect("found by hash");
    assert_eq!(stored.id, id);
    assert_eq!(stored.owner, "alice");
    let bytes = app.database_bytes();
    assert!(contains(&bytes, &keys::hash(&key)), "the hash is stored");
    assert!(!contains(&bytes, &secret), "the secret is not stored");

    // Creation is an audit event, and the chain holds.
    let records = app.repository.audit().records(0, 100).await.expect("audit");
    verify_chain(&records).expect("chain");
    let created_records: Vec<_> = records
        .iter()
        .filter(|r| r.action == "api_key.created")
        .collect();
    assert_eq!(created_records.len(), 2);
    assert_eq!(created_records[0].actor, "alice");
    assert_eq!(created_records[0].target, id);
    assert!(records.iter().all(|r| !r.details.contains(&secret)));
}

#[tokio::test]
async fn api_keys_are_private_to_their_owner() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let bob = app.issuer.user("bob");
    let key = app.create(&alice, "alice's", "standard").await;
    let id = key["id"].as_str().expect("id");

    let bobs = app.get("/api/v1/developer/keys", Some(&bob)).await;
    assert_eq!(
        bobs.body["items"],
        json!([]),
        "bob sees none of alice's keys"
    );

    // Bob cannot revoke it, and cannot tell it from a key that does not exist.
    let theirs = app
        .delete(&format!("/api/v1/developer/keys/{id}"), Some(&bob))
        .await;
    assert_problem(&theirs, StatusCode::NOT_FOUND, None);
    let missing = app
        .delete("/api/v1/developer/keys/nosuchkey123", Some(&bob))
        .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, None);
    assert_eq!(theirs.body["code"], missing.body["code"]);
    assert_eq!(
        app.lookup(key["key"].as_str().expect("key")).await.body["status"],
        "active"
    );

    // Alice revokes it; again is harmless; it stays listed as revoked.
    let uri = format!("/api/v1/developer/keys/{id}");
    assert_eq!(
        app.delete(&uri, Some(&alice)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&uri, Some(&alice)).await.status,
        StatusCode::NO_CONTENT
    );
    let list = app.get("/api/v1/developer/keys", Some(&alice)).await;
    assert_eq!(list.body["items"][0]["status"], "revoked");
    let records = app.repository.audit().records(0, 100).await.expect("audit");
    verify_chain(&records).expect("chain");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "api_key.revoked")
            .count(),
        1,
        "one revocation recorded, not one per DELETE"
    );

    // No token at all.
    assert_problem(
        &app.get("/api/v1/developer/keys", None).await,
        StatusCode::UNAUTHORIZED,
        None,
    );
}

#[tokio::test]
async fn api_admins_issue_partner_keys_and_revoke_any_key() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let admin = app.issuer.admin("root");

    let refused = app
        .post(
            "/api/v1/developer/keys",
            Some(&alice),
            &json!({"name": "big", "plan": "partner"}),
        )
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, None);
    assert_eq!(
        app.get("/api/v1/developer/keys", Some(&alice)).await.body["items"],
        json!([]),
        "nothing created"
    );

    let partner = app.create(&admin, "partner feed", "partner").await;
    assert_eq!(partner["plan"], "partner");
    let looked_up = app.lookup(partner["key"].as_str().expect("key")).await;
    assert_eq!(looked_up.body["owner"], "root");
    assert_eq!(looked_up.body["plan"]["rate_per_second"], 200);

    let alices = app.create(&alice, "shop", "standard").await;
    let id = alices["id"].as_str().expect("id");
    let revoked = app
        .delete(&format!("/api/v1/developer/keys/{id}"), Some(&admin))
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/api/v1/developer/keys", Some(&alice)).await.body["items"][0]["status"],
        "revoked"
    );
    let records = app.repository.audit().records(0, 100).await.expect("audit");
    let revocation = records
        .iter()
        .find(|r| r.action == "api_key.revoked")
        .expect("revocation audited");
    assert_eq!(revocation.actor, "root");
    assert_eq!(revocation.target, id);
    assert!(
        revocation.details.contains("\"by_admin\":true"),
        "{}",
        revocation.details
    );
}

#[tokio::test]
async fn api_lookup_reports_status_and_plan_limits() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let trial = app.create(&alice, "trial", "free-trial").await;
    let standard = app.create(&alice, "standard", "standard").await;
    let revoked = app.create(&alice, "gone", "standard").await;
    let key = |v: &Value| v["key"].as_str().expect("key").to_owned();

    let active = app.lookup(&key(&trial)).await;
    assert_eq!(active.status, StatusCode::OK, "{}", active.body);
    assert_eq!(active.body["key_id"], trial["id"]);
    assert_eq!(active.body["owner"], "alice");
    assert_eq!(active.body["name"], "trial");
    assert_eq!(active.body["status"], "active");
    assert_eq!(active.body["plan_name"], "free-trial");
    assert_eq!(active.body["plan"]["rate_per_second"], 5);
    assert_eq!(active.body["plan"]["burst"], 10);
    assert_eq!(active.body["plan"]["quota_per_day"], 1000);
    assert_eq!(active.body["expires_at"], "2025-02-13T12:00:00Z");

    app.delete(
        &format!(
            "/api/v1/developer/keys/{}",
            revoked["id"].as_str().expect("id")
        ),
        Some(&alice),
    )
    .await;
    assert_eq!(app.lookup(&key(&revoked)).await.body["status"], "revoked");

    // Fifteen days on, the trial is over; the standard key is not.
    app.advance_days(15);
    assert_eq!(app.lookup(&key(&trial)).await.body["status"], "expired");
    assert_eq!(app.lookup(&key(&standard)).await.body["status"], "active");
    let list = app.get("/api/v1/developer/keys", Some(&alice)).await;
    assert_eq!(
        item(&list.body, trial["id"].as_str().expect("id"))["status"],
        "expired"
    );

    // An operator extending the trial through the repository brings it back.
    let trial_id = trial["id"].as_str().expect("id");
    let extended = START_MS + 30 * DAY_MS;
    assert!(app
        .repository
        .set_expires_at(trial_id, Some(extended))
        .await
        .expect("update"));
    assert_eq!(app.lookup(&key(&trial)).await.body["status"], "active");

    // Unknown keys: well formed or not, the same 404.
    let unknown = app
        .lookup("bzr_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345")
        .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, None);
    assert_problem(&app.lookup("hello").await, StatusCode::NOT_FOUND, None);
    // A real key with one character changed.
    let mut tampered = key(&standard);
    tampered.pop();
    tampered.push(if key(&standard).ends_with('A') {
        'B'
    } else {
        'A'
    });
    assert_problem(&app.lookup(&tampered).await, StatusCode::NOT_FOUND, None);

    // Only services may look keys up.
    let body = json!({"key": key(&standard)});
    assert_problem(
        &app.post("/internal/v1/keys/lookup", None, &body).await,
        StatusCode::UNAUTHORIZED,
        None,
    );
    assert_problem(
        &app.post("/internal/v1/keys/lookup", Some(&alice), &body)
            .await,
        StatusCode::FORBIDDEN,
        None,
    );
    let admin = app.issuer.admin("root");
    assert_problem(
        &app.post("/internal/v1/keys/lookup", Some(&admin), &body)
            .await,
        StatusCode::FORBIDDEN,
        None,
    );
    assert_problem(
        &app.post("/internal/v1/keys/lookup", Some("not-a-token"), &body)
            .await,
        StatusCode::UNAUTHORIZED,
        None,
    );
}

#[tokio::test]
async fn api_usage_reports_accumulate_once_per_report() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let bob = app.issuer.user("bob");
    let trial = app.create(&alice, "trial", "free-trial").await;
    let standard = app.create(&alice, "standard", "standard").await;
    let bobs = app.create(&bob, "bob's", "standard").await;
    let (t, s, b) = (
        trial["id"].as_str().expect("id"),
        standard["id"].as_str().expect("id"),
        bobs["id"].as_str().expect("id"),
    );

    let first = "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b";
    let counts = json!([
        {"key_id": t, "day": "2025-01-30", "count": 300},
        {"key_id": t, "day": "2025-01-29", "count": 50},
        {"key_id": t, "day": "2024-12-31", "count": 7000},
        {"key_id": s, "day": "2025-01-30", "count": 10},
        {"key_id": b, "day": "2025-01-30", "count": 5},
        {"key_id": "doesnotexist", "day": "2025-01-30", "count": 99},
    ]);
    assert_eq!(
        app.report(first, counts.clone()).await.status,
        StatusCode::NO_CONTENT
    );
    // The gateway retries the same report (its reply was lost): nothing changes.
    assert_eq!(
        app.report(first, counts).await.status,
        StatusCode::NO_CONTENT
    );
    // A later report adds up.
    let second = "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4c";
    let more = json!([{"key_id": t, "day": "2025-01-30", "count": 200}]);
    assert_eq!(
        app.report(second, more).await.status,
        StatusCode::NO_CONTENT
    );

    let service = app.issuer.service();
    let counters = app
        .get(&format!("/internal/v1/usage/{t}"), Some(&service))
        .await;
    assert_eq!(counters.status, StatusCode::OK, "{}", counters.body);
    assert_eq!(
        counters.body,
        json!({"day": "2025-01-30", "day_count": 500, "month": "2025-01", "month_count": 550})
    );
    let none = app
        .get(&format!("/internal/v1/usage/{s}"), Some(&service))
        .await;
    assert_eq!(none.body["day_count"], 10);
    assert_problem(
        &app.get("/internal/v1/usage/doesnotexist", Some(&service))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_problem(
        &app.get(&format!("/internal/v1/usage/{t}"), Some(&alice))
            .await,
        StatusCode::FORBIDDEN,
        None,
    );

    // The developer's view: own keys only, counts and what remains.
    let usage = app.get("/api/v1/developer/usage", Some(&alice)).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    assert_eq!(usage.body["day"], "2025-01-30");
    assert_eq!(usage.body["month"], "2025-01");
    let items = usage.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "only alice's keys");
    let trial_usage = items.iter().find(|i| i["key_id"] == t).expect("trial");
    assert_eq!(trial_usage["day_count"], 500);
    assert_eq!(trial_usage["month_count"], 550);
    assert_eq!(trial_usage["quota_per_day"], 1000);
    assert_eq!(trial_usage["day_remaining"], 500);
    assert_eq!(trial_usage["quota_per_month"], Value::Null);
    assert_eq!(trial_usage["month_remaining"], Value::Null);
    let standard_usage = items.iter().find(|i| i["key_id"] == s).expect("standard");
    assert_eq!(standard_usage["day_remaining"], 100_000 - 10);
    assert_eq!(standard_usage["month_remaining"], 2_000_000 - 10);

    // The next day starts from zero; the month keeps counting.
    app.advance_days(1);
    let tomorrow = app.get("/api/v1/developer/usage", Some(&alice)).await;
    let trial_usage = tomorrow.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["key_id"] == t)
        .expect("trial")
        .clone();
    assert_eq!(trial_usage["day_count"], 0);
    assert_eq!(trial_usage["month_count"], 550);
    assert_eq!(trial_usage["day_remaining"], 1000);

    // The admin's view: every key, with its owner.
    let admin = app.issuer.admin("root");
    let all = app.get("/api/v1/admin/usage", Some(&admin)).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let items = all.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert_eq!(
        items.iter().find(|i| i["key_id"] == b).expect("bob's")["owner"],
        "bob"
    );
    assert_problem(
        &app.get("/api/v1/admin/usage", Some(&alice)).await,
        StatusCode::FORBIDDEN,
        None,
    );
}

#[tokio::test]
async fn api_validation_errors_name_the_field() {
    let app = spawn_app().await;
    let alice = app.issuer.user("alice");
    let create = |body: Value| {
        let alice = alice.clone();
        let app = &app;
        async move {
            app.post("/api/v1/developer/keys", Some(&alice), &body)
                .await
        }
    };
    for (body, field) in [
        (json!({"name": "", "plan": "standard"}), "name"),
        (json!({"name": "   ", "plan": "standard"}), "name"),
        (json!({"name": "x".repeat(65), "plan": "standard"}), "name"),
        (json!({"name": "tab\there", "plan": "standard"}), "name"),
        (json!({"plan": "standard"}), "name"),
        (json!({"name": 5, "plan": "standard"}), "name"),
        (json!({"name": "ok", "plan": "gold"}), "plan"),
        (json!({"name": "ok"}), "plan"),
    ] {
        let answer = create(body.clone()).await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    // 64 characters (not bytes) is fine.
    create(json!({"name": "é".repeat(64), "plan": "standard"})).await;

    let malformed = app
        .send(
            Method::POST,
            "/api/v1/developer/keys",
            Some(&alice),
            Some("{\"name\": ".into()),
        )
        .await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, None);
    assert_eq!(malformed.body["code"], "malformed_json");

    // A client's own token (not a user's) cannot own keys.
    let client = app.issuer.sign("ci-bot", "ci-bot", &[]);
    assert_problem(
        &app.post(
            "/api/v1/developer/keys",
            Some(&client),
            &json!({"name": "x", "plan": "standard"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        None,
    );

    let key = app.create(&alice, "k", "standard").await;
    let id = key["id"].as_str().expect("id");
    for (report, field) in [
        (
            json!({"report_id": "nope", "gateway": "g", "counts": []}),
            "report_id",
        ),
        (
            json!({"report_id": "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b", "gateway": "", "counts": []}),
            "gateway",
        ),
        (
            json!({"report_id": "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b", "gateway": "g",
                   "counts": [{"key_id": id, "day": "2025-02-30", "count": 1}]}),
            "counts[0].day",
        ),
        (
            json!({"report_id": "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b", "gateway": "g",
                   "counts": [{"key_id": id, "day": "2025-01-30", "count": 1},
                              {"key_id": id, "day": "2025-01-30", "count": -1}]}),
            "counts[1].count",
        ),
        (
            json!({"report_id": "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b", "gateway": "g",
                   "counts": [{"key_id": "", "day": "2025-01-30", "count": 1}]}),
            "counts[0].key_id",
        ),
    ] {
        let answer = app
            .post("/internal/v1/usage", Some(&app.issuer.service()), &report)
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    // None of the refused reports was recorded: the same report id still applies.
    let ok = app
        .report(
            "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b",
            json!([{"key_id": id, "day": "2025-01-30", "count": 3}]),
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    let counters = app
        .get(
            &format!("/internal/v1/usage/{id}"),
            Some(&app.issuer.service()),
        )
        .await;
    assert_eq!(counters.body["day_count"], 3);

    assert_problem(
        &app.get("/api/v1/developer/nothing", None).await,
        StatusCode::NOT_FOUND,
        None,
    );
}

#[tokio::test]
async fn api_build_serves_openapi_and_plans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut common = CommonConfig::defaults(bazaar_developer::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    let service = bazaar_developer::build(common, Config::default())
        .await
        .expect("builds");
    let app = service.app();
    let response = app
        .clone()
        .oneshot(
            Request::get("/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    for path in [
        "/api/v1/developer/plans",
        "/api/v1/developer/keys",
        "/api/v1/developer/keys/{id}",
        "/api/v1/developer/usage",
        "/api/v1/admin/usage",
        "/internal/v1/keys/lookup",
        "/internal/v1/usage",
        "/internal/v1/usage/{key_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    let plans = app
        .oneshot(
            Request::get("/api/v1/developer/plans")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(plans.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// storage (SQLite and PostgreSQL)

fn new_key(owner: &str, plan: &str, created_at_ms: i64) -> (NewKey, String) {
    let generated = keys::GeneratedKey::generate();
    (
        NewKey {
            id: generated.id.clone(),
            owner: owner.into(),
            name: format!("{owner}'s key"),
            plan: plan.into(),
            prefix: generated.prefix(),
            secret_hash: generated.hash(),
            created_at_ms,
            expires_at_ms: None,
            created_by: owner.into(),
        },
        generated.key,
    )
}

async fn keys_round_trip(url: String) {
    let repository = Repository::open(&url).await.expect("open");
    let (alice_key, alice_secret) = new_key("alice", "standard", START_MS);
    let (bob_key, _) = new_key("bob", "partner", START_MS + 1);
    for key in [&alice_key, &bob_key] {
        repository
            .create_key(
                key,
                AuditEvent::new(&key.owner, "api_key.created").target(&key.id),
            )
            .await
            .expect("create");
    }
    let found = repository
        .find_by_hash(&keys::hash(&alice_secret))
        .await
        .expect("query")
        .expect("found");
    assert_eq!(found.id, alice_key.id);
    assert_eq!(found.expires_at_ms, None);
    assert_eq!(found.revoked_at_ms, None);
    assert_eq!(
        repository
            .get_key(&bob_key.id)
            .await
            .expect("get")
            .map(|k| k.owner),
        Some("bob".to_owned())
    );
    assert!(repository
        .find_by_hash("00")
        .await
        .expect("query")
        .is_none());
    let alices = repository.list_keys(Some("alice")).await.expect("list");
    assert_eq!(alices.len(), 1);
    assert_eq!(repository.list_keys(None).await.expect("list").len(), 2);

    let event = || AuditEvent::new("alice", "api_key.revoked").target(&alice_key.id);
    assert!(repository
        .revoke_key(&alice_key.id, START_MS + 5, event())
        .await
        .expect("revoke"));
    assert!(!repository
        .revoke_key(&alice_key.id, START_MS + 9, event())
        .await
        .expect("again"));
    let revoked = repository
        .get_key(&alice_key.id)
        .await
        .expect("get")
        .expect("key");
    assert_eq!(
        revoked.revoked_at_ms,
        Some(START_MS + 5),
        "the first revocation stands"
    );

    assert!(repository
        .set_expires_at(&bob_key.id, Some(START_MS + DAY_MS))
        .await
        .expect("expire"));
    assert!(!repository
        .set_expires_at("nosuch", None)
        .await
        .expect("none"));
    assert_eq!(
        repository
            .get_key(&bob_key.id)
            .await
            .expect("get")
            .expect("key")
            .expires_at_ms,
        Some(START_MS + DAY_MS)
    );

    let records = repository.audit().records(0, 100).await.expect("audit");
    assert_eq!(records.len(), 3);
    verify_chain(&records).expect("chain");
    repository.database().close().await;
}

async fn concurrent_creations_keep_the_audit_chain(url: String) {
    let repository = Repository::open(&url).await.expect("open");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let repository = repository.clone();
        tasks.push(tokio::spawn(async move {
            let (key, _) = new_key(&format!("user-{i}"), "standard", START_MS + i);
            repository
                .create_key(
                    &key,
                    AuditEvent::new(&key.owner, "api_key.created").target(&key.id),
                )
                .await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("create");
    }
    assert_eq!(repository.list_keys(None).await.expect("list").len(), 12);
    let records = repository.audit().records(0, 100).await.expect("audit");
    assert_eq!(records.len(), 12);
    verify_chain(&records).expect("chain");
    repository.database().close().await;
}

async fn usage_is_applied_once_and_summed_by_month(url: String) {
    let repository = Repository::open(&url).await.expect("open");
    let (a, _) = new_key("alice", "standard", START_MS);
    let (b, _) = new_key("bob", "standard", START_MS);
    for key in [&a, &b] {
        repository
            .create_key(key, AuditEvent::new(&key.owner, "api_key.created"))
            .await
            .expect("create");
    }
    let line = |key: &NewKey, day: &str, count: u64| UsageCount {
        key_id: key.id.clone(),
        day: day.into(),
        count,
    };
    let report = UsageReport {
        report_id: uuid::Uuid::new_v4(),
        gateway: "gw-1".into(),
        counts: vec![
            line(&a, "2025-01-30", 10),
            line(&a, "2025-01-30", 5),
            line(&a, "2025-01-02", 100),
            line(&a, "2024-12-31", 1000),
            line(&b, "2025-01-30", 1),
            UsageCount {
                key_id: "unknown".into(),
                day: "2025-01-30".into(),
                count: 7,
            },
        ],
    };
    assert!(repository
        .record_usage(&report, START_MS)
        .await
        .expect("record"));
    assert!(!repository
        .record_usage(&report, START_MS)
        .await
        .expect("repeat"));

    // Distinct reports from several gateways at once all count.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let repository = repository.clone();
        let report = UsageReport {
            report_id: uuid::Uuid::new_v4(),
            gateway: format!("gw-{i}"),
            counts: vec![line(&a, "2025-01-30", 1)],
        };
        tasks.push(tokio::spawn(async move {
            repository.record_usage(&report, START_MS).await
        }));
    }
    for task in tasks {
        assert!(task.await.expect("task").expect("record"));
    }

    let mine = repository
        .usage(UsageScope::Owner("alice"), "2025-01-30")
        .await
        .expect("usage");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[&a.id].day, 15 + 8);
    assert_eq!(mine[&a.id].month, 15 + 8 + 100);
    let all = repository
        .usage(UsageScope::All, "2025-01-30")
        .await
        .expect("all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[&b.id].day, 1);
    let december = repository
        .usage(UsageScope::Key(&a.id), "2024-12-31")
        .await
        .expect("key");
    assert_eq!(december[&a.id].day, 1000);
    assert_eq!(december[&a.id].month, 1000);
    let february = repository
        .usage(UsageScope::Key(&a.id), "2025-02-01")
        .await
        .expect("key");
    assert!(february.is_empty());
    repository.database().close().await;
}

async fn data_persists_across_reopen(url: String) {
    let (key, secret) = new_key("alice", "free-trial", START_MS);
    {
        let repository = Repository::open(&url).await.expect("open");
        repository
            .create_key(&key, AuditEvent::new("alice", "api_key.created"))
            .await
            .expect("create");
        repository.database().close().await;
    }
    let repository = Repository::open(&url).await.expect("reopen");
    assert_eq!(
        repository
            .find_by_hash(&keys::hash(&secret))
            .await
            .expect("query")
            .map(|k| k.id),
        Some(key.id)
    );
    verify_chain(&repository.audit().records(0, 10).await.expect("audit")).expect("chain");
    repository.database().close().await;
}

macro_rules! storage_tests {
    ($($name:ident),* $(,)?) => {
        mod storage_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::sqlite_url(dir.path(), "developer")).await;
                }
            )*
        }
        mod storage_postgres {
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

storage_tests!(
    keys_round_trip,
    concurrent_creations_keep_the_audit_chain,
    usage_is_applied_once_and_summed_by_month,
    data_persists_across_reopen,
);
