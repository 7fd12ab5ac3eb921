//! Proves the messaging crate: the transactional outbox (G1; gap-free sequences in commit order
//! under concurrent appenders), the feed endpoint (service tokens, paging, validation, long
//! poll), a caught-up reader's gathering of events into one page, the inbox (G3), the embedded transport end to end over real HTTP with a publisher
//! restart (G2) and the lag gauge, batches (a page is one transaction; a handler failing on the
//! k-th event commits exactly the events before it, then the rest once recovered, each once, in
//! order; an event already in the inbox takes no second effect), the consumer lease on both
//! transports, and the NATS JetStream transport (deduplicated publishing, restart with
//! handed-back and already-applied messages, delivery of events appended while the consumer was
//! down: G7; an earlier durable updated in place). Ignored benchmarks print events/s and CPU per
//! event (`cargo test --release -p bazaar-messaging --test messaging -- --ignored --nocapture
//! bench_`).
//!
//! SQLite always; PostgreSQL variants when `BAZAAR_TEST_POSTGRES_URL` is set; NATS tests when
//! `BAZAAR_TEST_NATS_URL` is set (each with a stream of its own).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use bazaar_auth::testing::TestIssuer;
use bazaar_auth::Verifier;
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Snapshot};
use bazaar_kit::client::{Credentials, ServiceClient};
use bazaar_kit::config::{CommonConfig, EventTransport};
use bazaar_kit::metrics::Metrics;
use bazaar_kit::server::Service;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_kit::storage::{retry_conflicts, Database};
use bazaar_messaging::nats::{NatsTransport, ACK_WAIT, BATCH};
use bazaar_messaging::testing::{nats_url, stream_name};
use bazaar_messaging::{
    create_tables, deliver, EventEnvelope, Handler, HandlerError, HandlerFuture, Messaging,
    NewEvent, Outbox,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::Row;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The publishing service in these tests.
const PUBLISHER: &str = "shop";
/// The subscriber group (and consuming service).
const GROUP: &str = "cart";
/// Longest any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The crate creates its own tables; the tests need no migrations.
static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn open(url: &str) -> Database {
    Database::open(url, &NO_MIGRATIONS)
        .await
        .expect("open the test database")
}

/// Common settings of a standalone service (no registry) that stops quickly.
fn common(service: &str) -> CommonConfig {
    let mut common = CommonConfig::defaults(service, 0);
    common.registry_url = String::new();
    common.shutdown_grace_ms = 200;
    common.event_retention_hours = 1;
    common
}

fn nats_common(service: &str, url: &str, stream: &str) -> CommonConfig {
    let mut common = common(service);
    common.event_transport = EventTransport::Nats;
    common.nats_url = url.to_owned();
    common.nats_stream = stream.to_owned();
    common
}

fn instance(service: &str, address: &str) -> Instance {
    Instance {
        id: format!("{service}-1"),
        service: service.into(),
        address: address.into(),
        version: "1".into(),
        metadata: Default::default(),
        status: InstanceStatus::Up,
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
    }
}

/// A registry view pointing each service name at one address.
fn discovery(entries: &[(&str, &str)]) -> Discovery {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    for (service, address) in entries {
        snapshot
            .services
            .insert((*service).to_owned(), vec![instance(service, address)]);
    }
    Discovery::fixed(snapshot)
}

/// A client for tests that call nothing.
fn no_client() -> ServiceClient {
    ServiceClient::new(discovery(&[]))
}

async fn start(
    common: &CommonConfig,
    db: &Database,
    client: ServiceClient,
    verifier: Arc<Verifier>,
    metrics: &Metrics,
) -> Messaging {
    Messaging::start(common, db, client, verifier, metrics)
        .await
        .expect("messaging starts")
}

/// Appends `count` events, each in its own committed transaction, as a service would.
async fn append(outbox: &Outbox, db: &Database, count: usize) -> Vec<EventEnvelope> {
    let mut appended = Vec::new();
    for _ in 0..count {
        let envelope = retry_conflicts(|| async move {
            let mut connection = db.connection().await?;
            let mut tx = connection.begin().await?;
            let id = uuid::Uuid::new_v4().to_string();
            let event = NewEvent::new("thing.happened", &id, &json!({ "thing_id": id }));
            let envelope = outbox.append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(envelope)
        })
        .await
        .expect("append");
        outbox.notify();
        appended.push(envelope);
    }
    appended
}

/// Awaits `condition`, re-checking every 50 ms, failing the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records, inside the consumer's transaction, every event it applies: the `applied` table is
/// exactly what took effect, in the order it did. Each row also keeps the group's cursor as the
/// transaction saw it (`cursor_seen`): a feed batch moves the cursor to its last event before
/// it runs the handler, so events applied in one transaction all see the same value. It can be
/// told to fail on every event, or on one sequence (after writing, to show the write is rolled
/// back too), and to wait forever on a sequence once it has failed on it.
#[derive(Clone)]
struct Recorder {
    label: String,
    fail: Arc<AtomicBool>,
    /// Fail on the event with this sequence (0: none).
    fail_at: Arc<AtomicI64>,
    /// How many times it failed.
    failures: Arc<AtomicUsize>,
    /// Wait forever on this sequence once it has failed (and say so in `blocked`).
    block_at: Option<i64>,
    blocked: Arc<AtomicBool>,
}

/// Runs a `Recorder` labelled `label` as group `GROUP`'s consumer of `PUBLISHER`'s events
/// on `messaging` (the consumer outlives the handle, as in a service).
fn spawn_recorder(messaging: &Messaging, label: &str) {
    messaging
        .consumer(GROUP)
        .subscribe(PUBLISHER, Recorder::new(label))
        .spawn();
}

impl Recorder {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            fail: Arc::new(AtomicBool::new(false)),
            fail_at: Arc::new(AtomicI64::new(0)),
            failures: Arc::new(AtomicUsize::new(0)),
            block_at: None,
            blocked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fails on `sequence` until told otherwise.
    fn failing_at(label: &str, sequence: i64) -> Self {
        let recorder = Self::new(label);
        recorder.fail_at.store(sequence, Ordering::SeqCst);
        recorder
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }
}

impl Handler for Recorder {
    fn handle<'a>(
        &'a self,
        tx: &'a mut bazaar_kit::storage::Connection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            if self.block_at == Some(event.sequence) && self.failures() > 0 {
                self.blocked.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            let cursor_seen: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2",
            )
            .bind(GROUP)
            .bind(&event.source)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO applied (position, event_id, sequence, applied_by, cursor_seen) \
                 SELECT COALESCE(MAX(position), 0) + 1, $1, $2, $3, $4 FROM applied",
            )
            .bind(&event.id)
            .bind(event.sequence)
            .bind(&self.label)
            .bind(cursor_seen)
            .execute(&mut *tx)
            .await?;
            if self.fail.load(Ordering::SeqCst)
                || self.fail_at.load(Ordering::SeqCst) == event.sequence
            {
                self.failures.fetch_add(1, Ordering::SeqCst);
                return Err(HandlerError::new("this handler was told to fail"));
            }
            Ok(())
        })
    }
}

async fn create_applied_table(db: &Database) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS applied (position BIGINT NOT NULL, event_id TEXT NOT NULL, \
         sequence BIGINT NOT NULL, applied_by TEXT NOT NULL, cursor_seen BIGINT)",
    )
    .execute(db)
    .await
    .expect("create the applied table");
}

/// One application recorded by [`Recorder`].
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    event_id: String,
    sequence: i64,
    applied_by: String,
    cursor_seen: Option<i64>,
}

async fn applied(db: &Database) -> Vec<Applied> {
    sqlx::query("SELECT event_id, sequence, applied_by, cursor_seen FROM applied ORDER BY position")
        .fetch_all(db)
        .await
        .expect("read applied")
        .iter()
        .map(|row| Applied {
            event_id: row.get("event_id"),
            sequence: row.get("sequence"),
            applied_by: row.get("applied_by"),
            cursor_seen: row.get("cursor_seen"),
        })
        .collect()
}

/// Awaits at least `count` applications and returns them all.
async fn await_applied(db: &Database, count: usize) -> Vec<Applied> {
    eventually(&format!("{count} events applied"), || async {
        applied(db).await.len() >= count
    })
    .await;
    applied(db).await
}

/// Asserts that `rows` are exactly `events`, each once, in order.
fn assert_applied_once_in_order(rows: &[Applied], events: &[EventEnvelope]) {
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let expected: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, expected, "every event applied once, in sequence order");
}

/// The value of `bazaar_consumer_lag{group,source}` in `metrics`, if reported.
fn lag(metrics: &Metrics, group: &str, source: &str) -> Option<i64> {
    let prefix = format!("bazaar_consumer_lag{{group=\"{group}\",source=\"{source}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .and_then(|value| value.trim().parse().ok())
}

async fn inbox_count(db: &Database, group: &str, event_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM consumer_inbox WHERE grp = $1 AND event_id = $2")
        .bind(group)
        .bind(event_id)
        .fetch_one(db)
        .await
        .expect("count inbox")
}

/// The group's cursor on the publisher's feed.
async fn cursor_position(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2")
        .bind(GROUP)
        .bind(PUBLISHER)
        .fetch_one(db)
        .await
        .expect("cursor")
}

/// A feed request through `app`: status and JSON body.
async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
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
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

fn page_ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

fn ids(events: &[EventEnvelope]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// A stand-in identity service: issues a service token for the requested audience, as the
/// real one does for client credentials.
async fn spawn_identity(issuer: Arc<TestIssuer>) -> String {
    let app = Router::new().route(
        "/oauth2/token",
        post(
            move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                let issuer = issuer.clone();
                async move {
                    assert_eq!(
                        form.get("grant_type").map(String::as_str),
                        Some("client_credentials")
                    );
                    let audience = form.get("audience").cloned().unwrap_or_default();
                    axum::Json(json!({
                        "access_token": issuer.service(&audience),
                        "expires_in": 300,
                    }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind identity");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A publisher served over real HTTP with `Service::run`.
struct Running {
    port: u16,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Serves `messaging`'s feed on `port` (0: any free port).
    async fn serve(messaging: &Messaging, port: u16) -> Self {
        let mut config = common(PUBLISHER);
        config.port = port;
        let service = Service::new(config, messaging.feed_router());
        let listener = service.bind().await.expect("bind the publisher");
        let port = listener.local_addr().expect("address").port();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(service.run(listener, async move {
            let _ = stop.await;
        }));
        Self {
            port,
            shutdown,
            task,
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the publisher stops")
            .expect("join")
            .expect("served cleanly");
    }
}

/// A consuming service's messaging whose client reaches `publisher` with service tokens from
/// the stand-in identity at `identity`.
async fn start_feed_consumer(
    db: &Database,
    issuer: &TestIssuer,
    publisher: &str,
    identity: &str,
    metrics: &Metrics,
) -> Messaging {
    start_feed_consumer_with(&common(GROUP), db, issuer, publisher, identity, metrics).await
}

async fn start_feed_consumer_with(
    common: &CommonConfig,
    db: &Database,
    issuer: &TestIssuer,
    publisher: &str,
    identity: &str,
    metrics: &Metrics,
) -> Messaging {
    let client = ServiceClient::new(discovery(&[(PUBLISHER, publisher), ("identity", identity)]))
        .with_credentials(Credentials {
            client_id: "bazaar-services".into(),
            client_secret: "test-secret".into(),
        });
    start(
        common,
        db,
        client,
        issuer.verifier(&["bazaar", GROUP]),
        metrics,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Outbox
// ---------------------------------------------------------------------------------------------

async fn outbox_commits_and_rolls_back_with_the_caller(url: String) {
    let db = open(&url).await;
    let outbox = Outbox::open(&db, PUBLISHER).await.expect("outbox");
    // The same outbox seen through another `Database`: a SQLite database has one connection,
    // which the open transactions below hold.
    let elsewhere = Outbox::open(&open(&url).await, PUBLISHER)
        .await
        .expect("outbox");
    sqlx::query("CREATE TABLE things (id TEXT PRIMARY KEY)")
        .execute(&db)
        .await
        .expect("create things");

    // Committed: the state change and its event both exist.
    let mut connection = db.connection().await.expect("connection");
    let mut tx = connection.begin().await.expect("begin");
    sqlx::query("INSERT INTO things (id) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let kept = outbox
        .append_in(
            &mut tx,
            NewEvent::new("thing.created", "kept", &json!({"id": "kept"})),
        )
        .await
        .expect("append");
    assert!(
        elsewhere.read_after(0, 10).await.expect("read").is_empty(),
        "an uncommitted event is not visible"
    );
    tx.commit().await.expect("commit");
    drop(connection);
    let visible = outbox.read_after(0, 10).await.expect("read");
    assert_eq!(visible, vec![kept.clone()]);
    assert_eq!(kept.sequence, 1);
    assert_eq!(kept.source, PUBLISHER);
    assert_eq!(kept.version, 1);
    assert_eq!(kept.payload, json!({"id": "kept"}));

    // Rolled back: neither exists, and the number is not burnt.
    let mut connection = db.connection().await.expect("connection");
    let mut tx = connection.begin().await.expect("begin");
    sqlx::query("INSERT INTO things (id) VALUES ('dropped')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    outbox
        .append_in(
            &mut tx,
            NewEvent::new("thing.created", "dropped", &json!({})),
        )
        .await
        .expect("append");
    tx.rollback().await.expect("rollback");
    drop(connection);
    assert_eq!(outbox.read_after(0, 10).await.expect("read"), vec![kept]);
    let things: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(things, 1);

    let next = append(&outbox, &db, 1).await.remove(0);
    assert_eq!(next.sequence, 2, "no gap after a rollback");
    assert_eq!(outbox.bounds().await.expect("bounds"), (1, 2));
}

#[tokio::test]
async fn outbox_commits_and_rolls_back_with_the_caller_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    outbox_commits_and_rolls_back_with_the_caller(sqlite_url(dir.path(), "shop")).await;
}

#[tokio::test]
async fn outbox_commits_and_rolls_back_with_the_caller_postgres() {
    let Some(url) = fresh_postgres_database("messaging_outbox_g1").await else {
        return;
    };
    outbox_commits_and_rolls_back_with_the_caller(url).await;
}

async fn outbox_sequences_are_gap_free_in_commit_order(url: String) {
    const APPENDERS: i64 = 50;
    let db = open(&url).await;
    let outbox = Outbox::open(&db, PUBLISHER).await.expect("outbox");

    // A reader tails the outbox as a feed reader would while the appenders run: if a number
    // ever became visible before a smaller one, it would skip the smaller one.
    let tailer = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + DEADLINE;
            let mut cursor = 0;
            let mut seen = Vec::new();
            while cursor < APPENDERS {
                for event in outbox.read_after(cursor, 100).await.expect("tail") {
                    assert_eq!(event.sequence, cursor + 1, "the tailer skipped a number");
                    cursor = event.sequence;
                    seen.push(event.id);
                }
                assert!(
                    Instant::now() < deadline,
                    "the tailer saw only {cursor} events"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|i| {
            let db = db.clone();
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let (db, outbox) = (&db, &outbox);
                let envelope = retry_conflicts(|| async move {
                    let mut connection = db.connection().await?;
                    let mut tx = connection.begin().await?;
                    let event =
                        NewEvent::new("thing.happened", &format!("thing-{i}"), &json!({"i": i}));
                    let envelope = outbox.append_in(&mut tx, event).await?;
                    // Hold the transaction open across a scheduling point so that appenders
                    // really interleave.
                    tokio::task::yield_now().await;
                    tx.commit().await?;
                    Ok(envelope)
                })
                .await
                .expect("append under contention");
                outbox.notify();
                // Commit order is sequence order: once this commit returned, every smaller
                // number is committed too.
                let visible: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE sequence <= $1")
                        .bind(envelope.sequence)
                        .fetch_one(db)
                        .await
                        .expect("count");
                assert_eq!(
                    visible, envelope.sequence,
                    "sequence {} committed before a smaller one",
                    envelope.sequence
                );
                envelope
            })
        })
        .collect();
    let mut appended = Vec::new();
    for appender in appenders {
        appended.push(appender.await.expect("appender"));
    }
    appended.sort_by_key(|e| e.sequence);
    let sequences: Vec<i64> = appended.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=APPENDERS).collect::<Vec<_>>(), "gap-free");
    let unique: HashSet<&str> = appended.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique.len(), APPENDERS as usize);

    let seen = tokio::time::timeout(DEADLINE, tailer)
        .await
        .expect("tailer finishes")
        .expect("tailer");
    assert_eq!(seen, ids(&appended), "the tailer saw every event in order");
    let stored = outbox.read_after(0, 500).await.expect("read");
    assert_eq!(stored, appended);
}

#[tokio::test]
async fn outbox_sequences_are_gap_free_in_commit_order_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    outbox_sequences_are_gap_free_in_commit_order(sqlite_url(dir.path(), "shop")).await;
}

#[tokio::test]
async fn outbox_sequences_are_gap_free_in_commit_order_postgres() {
    let Some(url) = fresh_postgres_database("messaging_outbox_order").await else {
        return;
    };
    outbox_sequences_are_gap_free_in_commit_order(url).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Feed endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn feed_requires_a_service_token_pages_and_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "shop")).await;
    let issuer = TestIssuer::new();
    let messaging = start(
        &common(PUBLISHER),
        &db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let app = messaging.feed_router();
    let service = issuer.service(PUBLISHER);
    let events = append(messaging.outbox(), &db, 5).await;

    let (status, body) = get(&app, "/internal/v1/events", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = get(&app, "/internal/v1/events", Some(&issuer.customer("u1"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = get(&app, "/internal/v1/events", Some(&issuer.admin("u1"))).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an admin is not a service: {body}"
    );

    let (status, page) = get(&app, "/internal/v1/events?after=0&limit=2", Some(&service)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page_ids(&page), ids(&events[..2]));
    assert_eq!(page["latest"], 5);
    assert_eq!(page["oldest"], 1);
    let first = &page["events"][0];
    assert_eq!(
        first["type"], "thing.happened",
        "the envelope names its type `type`"
    );
    assert_eq!(first["source"], PUBLISHER);
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["version"], 1);
    assert_eq!(
        first["aggregate_id"].as_str(),
        Some(events[0].aggregate_id.as_str())
    );
    assert_eq!(first["payload"], events[0].payload);
    let decoded: EventEnvelope = serde_json::from_value(first.clone()).expect("an envelope");
    assert_eq!(decoded, events[0]);

    let (_, page) = get(&app, "/internal/v1/events?after=2&limit=2", Some(&service)).await;
    assert_eq!(page_ids(&page), ids(&events[2..4]));
    let (_, page) = get(&app, "/internal/v1/events?after=4", Some(&service)).await;
    assert_eq!(page_ids(&page), ids(&events[4..]));
    let (status, page) = get(&app, "/internal/v1/events?after=5", Some(&service)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page_ids(&page).is_empty(),
        "nothing after the latest: {page}"
    );
    assert_eq!(page["latest"], 5);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-3", "limit"),
        ("limit=many", "limit"),
        ("after=-1", "after"),
        ("wait_ms=soon", "wait_ms"),
    ] {
        let (status, problem) = get(
            &app,
            &format!("/internal/v1/events?{query}"),
            Some(&service),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    // The largest page is accepted.
    let (status, _) = get(&app, "/internal/v1/events?limit=500", Some(&service)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn feed_long_poll_answers_when_an_event_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "shop")).await;
    let issuer = TestIssuer::new();
    let messaging = start(
        &common(PUBLISHER),
        &db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let service = issuer.service(PUBLISHER);
    let existing = append(messaging.outbox(), &db, 2).await;

    // With nothing newer, a short wait is held for its duration and answers an empty page.
    let started = Instant::now();
    let (status, page) = get(
        &messaging.feed_router(),
        "/internal/v1/events?after=2&wait_ms=300",
        Some(&service),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page_ids(&page).is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the request was held"
    );
    // Something newer is answered at once, whatever the wait.
    let started = Instant::now();
    let (_, page) = get(
        &messaging.feed_router(),
        "/internal/v1/events?after=1&wait_ms=10000",
        Some(&service),
    )
    .await;
    assert_eq!(page_ids(&page), ids(&existing[1..]));
    assert!(started.elapsed() < Duration::from_secs(5));

    // The router signals when the held request has reached it.
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let entered = Arc::new(Mutex::new(Some(entered_tx)));
    let app = messaging.feed_router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let entered = entered.clone();
            async move {
                if let Some(signal) = entered.lock().expect("lock").take() {
                    let _ = signal.send(());
                }
                next.run(request).await
            }
        },
    ));
    let (answered_tx, mut answered_rx) = oneshot::channel();
    tokio::spawn(async move {
        let answer = get(
            &app,
            "/internal/v1/events?after=2&wait_ms=10000",
            Some(&service),
        )
        .await;
        let _ = answered_tx.send((answer, Instant::now()));
    });
    tokio::time::timeout(DEADLINE, entered_rx)
        .await
        .expect("the request reaches the feed")
        .expect("signal");
    assert!(
        matches!(
            answered_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ),
        "the request did not return before the append"
    );
    let appended_at = Instant::now();
    let new = append(messaging.outbox(), &db, 1).await;
    let ((status, page), answered_at) = tokio::time::timeout(Duration::from_secs(5), answered_rx)
        .await
        .expect("answered promptly after the append, not at the end of its 10 s wait")
        .expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page_ids(&page),
        ids(&new),
        "the held request returns the new event"
    );
    assert_eq!(page["latest"], 3);
    assert!(answered_at >= appended_at);
}

// ---------------------------------------------------------------------------------------------
// 3. Inbox (G3)
// ---------------------------------------------------------------------------------------------

async fn deliver_applies_each_event_once(url: String) {
    let db = open(&url).await;
    create_tables(&db).await.expect("consumer tables");
    create_applied_table(&db).await;
    let handler = Recorder::new("direct");
    let event = EventEnvelope::for_test(PUBLISHER, "thing.happened", "t-1", json!({"n": 1}));

    assert!(deliver(&db, GROUP, &handler, &event)
        .await
        .expect("first delivery"));
    assert!(
        !deliver(&db, GROUP, &handler, &event)
            .await
            .expect("second delivery"),
        "a repeat is recognised"
    );
    assert_eq!(applied(&db).await.len(), 1, "the effect happened once");
    assert_eq!(inbox_count(&db, GROUP, &event.id).await, 1);
    // The inbox is per group: another group applies the same event on its own.
    assert!(deliver(&db, "notifications", &handler, &event)
        .await
        .expect("other group"));
    assert_eq!(applied(&db).await.len(), 2);

    // A failing handler leaves neither its writes nor an inbox record: a retry applies it.
    let failing = Recorder::new("flaky");
    failing.fail.store(true, Ordering::SeqCst);
    let second = EventEnvelope::for_test(PUBLISHER, "thing.happened", "t-2", json!({"n": 2}));
    let error = deliver(&db, GROUP, &failing, &second)
        .await
        .expect_err("the handler fails");
    assert!(error.to_string().contains("told to fail"), "{error}");
    assert_eq!(
        inbox_count(&db, GROUP, &second.id).await,
        0,
        "no inbox record"
    );
    assert_eq!(
        applied(&db).await.len(),
        2,
        "the failed handler's write was rolled back"
    );
    failing.fail.store(false, Ordering::SeqCst);
    assert!(deliver(&db, GROUP, &failing, &second)
        .await
        .expect("retry applies it"));
    assert!(!deliver(&db, GROUP, &failing, &second)
        .await
        .expect("then it is a duplicate"));
    let rows = applied(&db).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].event_id, second.id);
    assert_eq!(inbox_count(&db, GROUP, &second.id).await, 1);

    // An undecodable payload is a handler error naming the event.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Expected {
        order_id: String,
    }
    let error = event.decode::<Expected>().expect_err("wrong payload");
    assert!(error.to_string().contains(&event.id), "{error}");
}

#[tokio::test]
async fn deliver_applies_each_event_once_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    deliver_applies_each_event_once(sqlite_url(dir.path(), "cart")).await;
}

#[tokio::test]
async fn deliver_applies_each_event_once_postgres() {
    let Some(url) = fresh_postgres_database("messaging_inbox").await else {
        return;
    };
    deliver_applies_each_event_once(url).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Embedded transport end to end (G2)
// ---------------------------------------------------------------------------------------------

async fn feed_delivers_across_a_publisher_restart(publisher_url: String, consumer_url: String) {
    let issuer = Arc::new(TestIssuer::new());
    let identity = spawn_identity(issuer.clone()).await;

    let publisher_db = open(&publisher_url).await;
    let publisher = start(
        &common(PUBLISHER),
        &publisher_db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let running = Running::serve(&publisher, 0).await;
    let port = running.port;

    let consumer_db = open(&consumer_url).await;
    create_applied_table(&consumer_db).await;
    let metrics = Metrics::new();
    let consumer = start_feed_consumer(
        &consumer_db,
        &issuer,
        &running.address(),
        &identity,
        &metrics,
    )
    .await;
    spawn_recorder(&consumer, "consumer");
    // Services keep no handle on their `Messaging`: consumers must outlive it.
    drop(consumer);

    let mut events = append(publisher.outbox(), &publisher_db, 20).await;
    let rows = await_applied(&consumer_db, 20).await;
    assert_applied_once_in_order(&rows, &events);

    // The publisher goes away; events committed meanwhile wait in its outbox.
    running.stop().await;
    events.extend(append(publisher.outbox(), &publisher_db, 10).await);
    // It comes back (a new process: a new `Messaging` on the same database) on the same port.
    let restarted = start(
        &common(PUBLISHER),
        &publisher_db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let running = Running::serve(&restarted, port).await;
    let rows = await_applied(&consumer_db, 30).await;
    assert_applied_once_in_order(&rows, &events);
    let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=30).collect::<Vec<_>>());

    eventually("the consumer lag gauge reads 0", || async {
        lag(&metrics, GROUP, PUBLISHER) == Some(0)
    })
    .await;
    assert!(
        metrics
            .render()
            .contains("bazaar_consumer_lag{group=\"cart\",source=\"shop\"} 0"),
        "{}",
        metrics.render()
    );
    let cursor: i64 =
        sqlx::query_scalar("SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2")
            .bind(GROUP)
            .bind(PUBLISHER)
            .fetch_one(&consumer_db)
            .await
            .expect("cursor");
    assert_eq!(cursor, 30);
    assert_eq!(
        applied(&consumer_db).await.len(),
        30,
        "still applied once each"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_gather_longer_than_ten_seconds_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "consumer")).await;
    let issuer = TestIssuer::new();
    let mut too_long = common(GROUP);
    too_long.event_gather_ms = bazaar_messaging::MAX_GATHER_MS + 1;
    let refused = Messaging::start(
        &too_long,
        &db,
        no_client(),
        issuer.verifier(&["bazaar", GROUP]),
        &Metrics::new(),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        refused.to_string().contains("event_gather_ms is 10001"),
        "{refused}"
    );
}

/// Once caught up, a reader lets events gather for `event_gather_ms` before it reads the feed
/// again: events committed one by one meanwhile arrive in one page, applied in one transaction.
#[tokio::test]
async fn a_caught_up_reader_lets_events_gather_into_one_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gathering = common(GROUP);
    gathering.event_gather_ms = 1_500;
    let FeedSetup {
        running,
        publisher,
        publisher_db,
        consumer,
        consumer_db,
        mut events,
    } = feed_setup_with(
        &gathering,
        &sqlite_url(dir.path(), "publisher"),
        &sqlite_url(dir.path(), "consumer"),
        1,
    )
    .await;
    spawn_recorder(&consumer, "consumer");
    drop(consumer);
    await_applied(&consumer_db, 1).await;
    // The reader has caught up and now waits: ten events committed apart (about 200 ms in
    // all, each its own transaction, as a busy service commits them) all wait for it.
    for _ in 0..10 {
        events.extend(append(publisher.outbox(), &publisher_db, 1).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = await_applied(&consumer_db, 11).await;
    assert_applied_once_in_order(&rows, &events);
    // Each page's transaction moves the cursor to its last event first, so the cursor each
    // event saw names its page.
    let pages: HashSet<Option<i64>> = rows[1..].iter().map(|row| row.cursor_seen).collect();
    assert_eq!(
        pages,
        HashSet::from([Some(11)]),
        "the ten gathered events were one page: {rows:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn feed_delivers_across_a_publisher_restart_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    feed_delivers_across_a_publisher_restart(
        sqlite_url(dir.path(), "shop"),
        sqlite_url(dir.path(), "cart"),
    )
    .await;
}

#[tokio::test]
async fn feed_delivers_across_a_publisher_restart_postgres() {
    let Some(publisher) = fresh_postgres_database("messaging_e2e_shop").await else {
        return;
    };
    let Some(consumer) = fresh_postgres_database("messaging_e2e_cart").await else {
        return;
    };
    feed_delivers_across_a_publisher_restart(publisher, consumer).await;
}

// ---------------------------------------------------------------------------------------------
// 4b. Embedded transport: a page is one batch
// ---------------------------------------------------------------------------------------------

/// A publisher serving its feed over HTTP with `count` events already in its outbox, and a
/// consuming service's messaging (nothing subscribed yet) that reaches it.
struct FeedSetup {
    running: Running,
    publisher: Messaging,
    publisher_db: Database,
    consumer: Messaging,
    consumer_db: Database,
    events: Vec<EventEnvelope>,
}

async fn feed_setup(publisher_url: &str, consumer_url: &str, count: usize) -> FeedSetup {
    feed_setup_with(&common(GROUP), publisher_url, consumer_url, count).await
}

/// A publisher serving its feed with `count` events already committed, and a consumer
/// configured by `consumer_common` (not yet subscribed).
async fn feed_setup_with(
    consumer_common: &CommonConfig,
    publisher_url: &str,
    consumer_url: &str,
    count: usize,
) -> FeedSetup {
    let issuer = Arc::new(TestIssuer::new());
    let identity = spawn_identity(issuer.clone()).await;
    let publisher_db = open(publisher_url).await;
    let publisher = start(
        &common(PUBLISHER),
        &publisher_db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let running = Running::serve(&publisher, 0).await;
    let events = append(publisher.outbox(), &publisher_db, count).await;
    let consumer_db = open(consumer_url).await;
    create_applied_table(&consumer_db).await;
    let consumer = start_feed_consumer_with(
        consumer_common,
        &consumer_db,
        &issuer,
        &running.address(),
        &identity,
        &Metrics::new(),
    )
    .await;
    FeedSetup {
        running,
        publisher,
        publisher_db,
        consumer,
        consumer_db,
        events,
    }
}

async fn feed_page_stops_at_a_failing_event(publisher_url: String, consumer_url: String) {
    // Ten events wait before the consumer starts, so its first page holds them all.
    let FeedSetup {
        running,
        consumer,
        consumer_db: db,
        events,
        ..
    } = feed_setup(&publisher_url, &consumer_url, 10).await;
    let recorder = Recorder::failing_at("consumer", 4);
    consumer
        .consumer(GROUP)
        .subscribe(PUBLISHER, recorder.clone())
        .spawn();

    // The page fails on its fourth event and is rolled back whole; the three events before it
    // are applied again on their own; then the fourth is retried (and fails again).
    eventually("the fourth event is retried", || async {
        recorder.failures() >= 2
    })
    .await;
    let rows = applied(&db).await;
    assert_applied_once_in_order(&rows, &events[..3]);
    assert!(
        rows.iter().all(|r| r.cursor_seen == Some(3)),
        "the three were applied in one transaction that moved the cursor to 3 (the page's \
         transaction, which had moved it to 10, was rolled back): {rows:?}"
    );
    assert_eq!(cursor_position(&db).await, 3);
    for event in &events[3..] {
        assert_eq!(
            inbox_count(&db, GROUP, &event.id).await,
            0,
            "nothing from the failing event on took effect"
        );
    }

    // The handler recovers: the rest is applied, once each, in order, in one transaction.
    recorder.fail_at.store(0, Ordering::SeqCst);
    let rows = await_applied(&db, 10).await;
    assert_applied_once_in_order(&rows, &events);
    assert!(
        rows[3..].iter().all(|r| r.cursor_seen == Some(10)),
        "{rows:?}"
    );
    assert_eq!(cursor_position(&db).await, 10);
    for event in &events {
        assert_eq!(inbox_count(&db, GROUP, &event.id).await, 1);
    }
    consumer.stop();
    running.stop().await;
}

#[tokio::test]
async fn feed_page_stops_at_a_failing_event_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    feed_page_stops_at_a_failing_event(
        sqlite_url(dir.path(), "shop"),
        sqlite_url(dir.path(), "cart"),
    )
    .await;
}

#[tokio::test]
async fn feed_page_stops_at_a_failing_event_postgres() {
    let Some(consumer) = fresh_postgres_database("messaging_page_failure").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    feed_page_stops_at_a_failing_event(sqlite_url(dir.path(), "shop"), consumer).await;
}

async fn feed_page_skips_an_event_already_in_the_inbox(
    publisher_url: String,
    consumer_url: String,
) {
    let FeedSetup {
        running,
        consumer,
        consumer_db: db,
        events,
        ..
    } = feed_setup(&publisher_url, &consumer_url, 10).await;
    // The fifth event was applied before (say, delivered directly), and the cursor is still at 0.
    assert!(deliver(&db, GROUP, &Recorder::new("earlier"), &events[4])
        .await
        .expect("apply the fifth directly"));
    spawn_recorder(&consumer, "consumer");

    let rows = await_applied(&db, 10).await;
    let mut expected = vec![events[4].clone()];
    expected.extend(events[..4].iter().cloned());
    expected.extend(events[5..].iter().cloned());
    assert_applied_once_in_order(&rows, &expected);
    assert_eq!(rows[0].applied_by, "earlier");
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.applied_by == "consumer" && r.cursor_seen == Some(10)),
        "the page was one transaction, and the fifth event took no second effect: {rows:?}"
    );
    assert_eq!(inbox_count(&db, GROUP, &events[4].id).await, 1);
    assert_eq!(cursor_position(&db).await, 10);
    consumer.stop();
    running.stop().await;
}

#[tokio::test]
async fn feed_page_skips_an_event_already_in_the_inbox_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    feed_page_skips_an_event_already_in_the_inbox(
        sqlite_url(dir.path(), "shop"),
        sqlite_url(dir.path(), "cart"),
    )
    .await;
}

#[tokio::test]
async fn feed_page_skips_an_event_already_in_the_inbox_postgres() {
    let Some(consumer) = fresh_postgres_database("messaging_page_inbox").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    feed_page_skips_an_event_already_in_the_inbox(sqlite_url(dir.path(), "shop"), consumer).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Lease
// ---------------------------------------------------------------------------------------------

async fn lease_holder(db: &Database) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM consumer_leases WHERE grp = $1 AND source = $2")
        .bind(GROUP)
        .bind(PUBLISHER)
        .fetch_optional(db)
        .await
        .expect("read the lease")
}

#[tokio::test]
async fn one_instance_of_a_group_reads_a_feed_and_another_takes_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let consumer_url = match fresh_postgres_database("messaging_lease").await {
        Some(url) => url,
        None => sqlite_url(dir.path(), "cart"),
    };
    let issuer = Arc::new(TestIssuer::new());
    let identity = spawn_identity(issuer.clone()).await;
    let publisher_db = open(&sqlite_url(dir.path(), "shop")).await;
    let publisher = start(
        &common(PUBLISHER),
        &publisher_db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let running = Running::serve(&publisher, 0).await;

    // Two instances of the consuming service, each with its own pool on the same database.
    let mut instances = BTreeMap::new();
    for label in ["first", "second"] {
        let db = open(&consumer_url).await;
        create_applied_table(&db).await;
        let messaging =
            start_feed_consumer(&db, &issuer, &running.address(), &identity, &Metrics::new()).await;
        spawn_recorder(&messaging, label);
        instances.insert(label.to_owned(), (messaging, db));
    }
    let db = instances["first"].1.clone();

    let mut events = append(publisher.outbox(), &publisher_db, 10).await;
    let rows = await_applied(&db, 10).await;
    assert_applied_once_in_order(&rows, &events);
    let holder_label = rows[0].applied_by.clone();
    assert!(
        rows.iter().all(|r| r.applied_by == holder_label),
        "one instance applied everything: {rows:?}"
    );
    let other_label = if holder_label == "first" {
        "second"
    } else {
        "first"
    };
    let holder = lease_holder(&db).await.expect("a lease is held");

    // The holder stops: it gives the lease up and the other instance takes over.
    instances[&holder_label].0.stop();
    eventually("the other instance takes the lease", || async {
        lease_holder(&db).await.is_some_and(|h| h != holder)
    })
    .await;
    events.extend(append(publisher.outbox(), &publisher_db, 10).await);
    let rows = await_applied(&db, 20).await;
    assert_applied_once_in_order(&rows, &events);
    assert!(
        rows[10..].iter().all(|r| r.applied_by == other_label),
        "the new holder continued from the cursor: {rows:?}"
    );
    running.stop().await;
    assert_eq!(applied(&db).await.len(), 20, "exactly once overall");
}

// ---------------------------------------------------------------------------------------------
// 6. NATS JetStream (G7)
// ---------------------------------------------------------------------------------------------

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    async_nats::jetstream::new(client)
}

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("the stream exists")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[tokio::test]
async fn nats_relay_publishes_each_event_once_keyed_by_its_id() {
    let Some(url) = nats_url("nats_relay_publishes_each_event_once_keyed_by_its_id") else {
        return;
    };
    let stream = stream_name();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "shop")).await;
    let issuer = TestIssuer::new();
    let metrics = Metrics::new();
    let publisher = start(
        &nats_common(PUBLISHER, &url, &stream),
        &db,
        no_client(),
        issuer.verifier(&[PUBLISHER]),
        &metrics,
    )
    .await;
    let events = append(publisher.outbox(), &db, 3).await;
    eventually("the relay publishes the outbox", || async {
        publisher.outbox().unpublished_count().await.expect("count") == 0
    })
    .await;
    let js = jetstream(&url).await;
    assert_eq!(stream_messages(&js, &stream).await, 3);
    let stored = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .get_raw_message(1)
        .await
        .expect("first message");
    assert_eq!(
        stored
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str()),
        Some(events[0].id.as_str()),
        "Nats-Msg-Id is the event id"
    );
    assert_eq!(
        stored.subject.as_str(),
        format!("{}.shop.thing.happened", stream.to_lowercase())
    );
    let carried: EventEnvelope = serde_json::from_slice(&stored.payload).expect("an envelope");
    assert_eq!(carried, events[0]);
    eventually("the unpublished gauge reads 0", || async {
        metrics.render().contains("bazaar_outbox_unpublished 0")
    })
    .await;

    // Publishing an envelope again (a relay that crashed before marking it) adds nothing.
    let transport = NatsTransport::connect(&url, &stream, Duration::from_secs(3600))
        .await
        .expect("connect");
    transport.publish(&events[0]).await.expect("republish");
    transport.publish(&events[2]).await.expect("republish");
    assert_eq!(
        stream_messages(&js, &stream).await,
        3,
        "duplicates were dropped"
    );
    // A different event does count (the check above is not vacuous).
    let other = EventEnvelope::for_test(PUBLISHER, "thing.happened", "x", json!({}));
    transport.publish(&other).await.expect("publish");
    assert_eq!(stream_messages(&js, &stream).await, 4);

    publisher.stop();
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test]
async fn nats_consumer_applies_once_across_restarts_and_downtime() {
    let Some(url) = nats_url("nats_consumer_applies_once_across_restarts_and_downtime") else {
        return;
    };
    let stream = stream_name();
    let dir = tempfile::tempdir().expect("tempdir");
    let consumer_url = match fresh_postgres_database("messaging_nats_cart").await {
        Some(url) => url,
        None => sqlite_url(dir.path(), "cart"),
    };
    let issuer = TestIssuer::new();
    let publisher_db = open(&sqlite_url(dir.path(), "shop")).await;
    let publisher = start(
        &nats_common(PUBLISHER, &url, &stream),
        &publisher_db,
        no_client(),
        issuer.verifier(&[PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let mut events = append(publisher.outbox(), &publisher_db, 10).await;
    eventually("the relay publishes the first events", || async {
        publisher.outbox().unpublished_count().await.expect("count") == 0
    })
    .await;

    // The first consumer instance may apply only four events: its handler fails on the fifth
    // (so whatever batch held the fifth commits only the events before it), and on the retry it
    // waits on the fifth until the instance is stopped, with the fifth and the events after it
    // received and un-acknowledged.
    let consumer_db = open(&consumer_url).await;
    create_applied_table(&consumer_db).await;
    let first_metrics = Metrics::new();
    let first = start(
        &nats_common(GROUP, &url, &stream),
        &consumer_db,
        no_client(),
        issuer.verifier(&[GROUP]),
        &first_metrics,
    )
    .await;
    let first_recorder = Recorder {
        block_at: Some(5),
        ..Recorder::failing_at("first", 5)
    };
    first
        .consumer(GROUP)
        .subscribe(PUBLISHER, first_recorder.clone())
        .spawn();
    eventually("the first instance waits on the fifth event", || async {
        first_recorder.blocked.load(Ordering::SeqCst)
    })
    .await;
    // Read through a `Database` of its own: the blocked handler holds its transaction, and on
    // SQLite that is the consumer database's only connection.
    let rows = applied(&open(&consumer_url).await).await;
    assert_applied_once_in_order(&rows, &events[..4]);
    eventually("the lag gauge counts the events still to apply", || async {
        lag(&first_metrics, GROUP, PUBLISHER) == Some(6)
    })
    .await;
    first.stop();

    // As if an instance had applied the seventh event and died before acknowledging it.
    assert!(
        deliver(&consumer_db, GROUP, &Recorder::new("crashed"), &events[6])
            .await
            .expect("apply directly")
    );
    // While no consumer runs, more events are published.
    events.extend(append(publisher.outbox(), &publisher_db, 10).await);
    eventually("the relay publishes the later events", || async {
        publisher.outbox().unpublished_count().await.expect("count") == 0
    })
    .await;

    // A new instance (a restarted process) picks up where the first left off.
    let second_metrics = Metrics::new();
    let restarted_at = Instant::now();
    let second = start(
        &nats_common(GROUP, &url, &stream),
        &consumer_db,
        no_client(),
        issuer.verifier(&[GROUP]),
        &second_metrics,
    )
    .await;
    spawn_recorder(&second, "second");
    let rows = await_applied(&consumer_db, 20).await;
    assert!(
        restarted_at.elapsed() < ACK_WAIT,
        "the stopped instance handed its message back instead of leaving it to the ack wait"
    );
    let mut expected: Vec<EventEnvelope> = events[..4].to_vec();
    expected.push(events[6].clone());
    expected.extend(events[4..6].iter().cloned());
    expected.extend(events[7..].iter().cloned());
    assert_applied_once_in_order(&rows, &expected);
    assert!(
        rows[5..].iter().all(|r| r.applied_by == "second"),
        "{rows:?}"
    );
    eventually("the lag gauge reads 0", || async {
        lag(&second_metrics, GROUP, PUBLISHER) == Some(0)
    })
    .await;
    // The seventh event's redelivery was acknowledged without effect: nothing is left pending
    // and nothing was applied twice.
    let js = jetstream(&url).await;
    let mut durable: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .get_consumer(&format!("{GROUP}-{PUBLISHER}"))
        .await
        .expect("the durable consumer");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let info = durable.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages left unacknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied(&consumer_db).await.len(), 20);

    second.stop();
    publisher.stop();
    let _ = js.delete_stream(&stream).await;
}

/// A publisher on its own stream with `count` events published, and a consumer database.
struct NatsSetup {
    url: String,
    stream: String,
    issuer: TestIssuer,
    publisher: Messaging,
    publisher_db: Database,
    consumer_db: Database,
    events: Vec<EventEnvelope>,
    _dir: tempfile::TempDir,
}

async fn nats_setup(url: String, label: &str, count: usize) -> NatsSetup {
    let stream = stream_name();
    let dir = tempfile::tempdir().expect("tempdir");
    let consumer_url = match fresh_postgres_database(label).await {
        Some(url) => url,
        None => sqlite_url(dir.path(), "cart"),
    };
    let issuer = TestIssuer::new();
    let publisher_db = open(&sqlite_url(dir.path(), "shop")).await;
    let publisher = start(
        &nats_common(PUBLISHER, &url, &stream),
        &publisher_db,
        no_client(),
        issuer.verifier(&[PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let events = append(publisher.outbox(), &publisher_db, count).await;
    eventually("the relay publishes the events", || async {
        publisher.outbox().unpublished_count().await.expect("count") == 0
    })
    .await;
    let consumer_db = open(&consumer_url).await;
    create_tables(&consumer_db).await.expect("consumer tables");
    create_applied_table(&consumer_db).await;
    NatsSetup {
        url,
        stream,
        issuer,
        publisher,
        publisher_db,
        consumer_db,
        events,
        _dir: dir,
    }
}

impl NatsSetup {
    /// Starts an instance of the consuming service applying the publisher's events with
    /// `recorder`.
    async fn start_consumer(&self, recorder: Recorder) -> Messaging {
        let messaging = start(
            &nats_common(GROUP, &self.url, &self.stream),
            &self.consumer_db,
            no_client(),
            self.issuer.verifier(&[GROUP]),
            &Metrics::new(),
        )
        .await;
        messaging
            .consumer(GROUP)
            .subscribe(PUBLISHER, recorder)
            .spawn();
        messaging
    }

    async fn durable(&self) -> async_nats::jetstream::consumer::PullConsumer {
        jetstream(&self.url)
            .await
            .get_stream(&self.stream)
            .await
            .expect("stream")
            .get_consumer(&format!("{GROUP}-{PUBLISHER}"))
            .await
            .expect("the durable consumer")
    }

    /// Awaits the durable consumer with nothing left to deliver or acknowledge.
    async fn await_all_acknowledged(&self) {
        let mut durable = self.durable().await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let info = durable.info().await.expect("consumer info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "messages left unacknowledged: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) {
        self.publisher.stop();
        let _ = jetstream(&self.url).await.delete_stream(&self.stream).await;
    }
}

#[tokio::test]
async fn nats_batch_stops_at_a_failing_event_then_applies_the_rest_once_in_order() {
    let Some(url) =
        nats_url("nats_batch_stops_at_a_failing_event_then_applies_the_rest_once_in_order")
    else {
        return;
    };
    let setup = nats_setup(url, "messaging_nats_failure", 10).await;
    let db = setup.consumer_db.clone();
    let events = setup.events.clone();
    let recorder = Recorder::failing_at("consumer", 4);
    let consumer = setup.start_consumer(recorder.clone()).await;

    // Whatever batch held the fourth event committed only the events before it; the fourth is
    // retried (and fails again) without anything after it taking effect.
    eventually("the fourth event is retried", || async {
        recorder.failures() >= 2
    })
    .await;
    assert_applied_once_in_order(&applied(&db).await, &events[..3]);
    for event in &events[3..] {
        assert_eq!(inbox_count(&db, GROUP, &event.id).await, 0);
    }

    recorder.fail_at.store(0, Ordering::SeqCst);
    let rows = await_applied(&db, 10).await;
    assert_applied_once_in_order(&rows, &events);
    setup.await_all_acknowledged().await;
    assert_eq!(applied(&db).await.len(), 10, "nothing applied twice");
    consumer.stop();
    setup.finish().await;
}

#[tokio::test]
async fn nats_updates_an_earlier_durable_and_skips_an_event_already_in_the_inbox() {
    let Some(url) =
        nats_url("nats_updates_an_earlier_durable_and_skips_an_event_already_in_the_inbox")
    else {
        return;
    };
    let setup = nats_setup(url, "messaging_nats_inbox", 10).await;
    let db = setup.consumer_db.clone();
    let events = setup.events.clone();
    // The durable as an earlier version created it: one message in flight.
    let earlier = jetstream(&setup.url)
        .await
        .get_stream(&setup.stream)
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(format!("{GROUP}-{PUBLISHER}")),
            filter_subject: format!("{}.{PUBLISHER}.>", setup.stream.to_lowercase()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 1,
            ..Default::default()
        })
        .await
        .expect("create the earlier durable");
    assert_eq!(earlier.cached_info().config.max_ack_pending, 1);
    // The fifth event was applied before (say, by an instance that died before acknowledging).
    assert!(deliver(&db, GROUP, &Recorder::new("earlier"), &events[4])
        .await
        .expect("apply the fifth directly"));

    let consumer = setup.start_consumer(Recorder::new("consumer")).await;
    let rows = await_applied(&db, 10).await;
    let mut expected = vec![events[4].clone()];
    expected.extend(events[..4].iter().cloned());
    expected.extend(events[5..].iter().cloned());
    assert_applied_once_in_order(&rows, &expected);
    assert!(rows[1..].iter().all(|r| r.applied_by == "consumer"));
    assert_eq!(inbox_count(&db, GROUP, &events[4].id).await, 1);
    setup.await_all_acknowledged().await;
    assert_eq!(applied(&db).await.len(), 10, "nothing applied twice");
    let mut durable = setup.durable().await;
    let info = durable.info().await.expect("consumer info");
    assert_eq!(
        info.config.max_ack_pending, BATCH as i64,
        "the durable was updated in place"
    );
    consumer.stop();
    setup.finish().await;
}

#[tokio::test]
async fn nats_one_instance_of_a_group_consumes_and_another_takes_over() {
    let Some(url) = nats_url("nats_one_instance_of_a_group_consumes_and_another_takes_over") else {
        return;
    };
    let setup = nats_setup(url, "messaging_nats_lease", 10).await;
    let db = setup.consumer_db.clone();
    let mut events = setup.events.clone();
    let mut instances = BTreeMap::new();
    for label in ["first", "second"] {
        let messaging = setup.start_consumer(Recorder::new(label)).await;
        instances.insert(label.to_owned(), messaging);
    }
    let rows = await_applied(&db, 10).await;
    assert_applied_once_in_order(&rows, &events);
    let holder_label = rows[0].applied_by.clone();
    assert!(
        rows.iter().all(|r| r.applied_by == holder_label),
        "one instance applied everything: {rows:?}"
    );
    let other_label = if holder_label == "first" {
        "second"
    } else {
        "first"
    };
    let holder = lease_holder(&db).await.expect("a lease is held");

    // The holder stops: it gives the lease up and the other instance takes over.
    instances[&holder_label].stop();
    eventually("the other instance takes the lease", || async {
        lease_holder(&db).await.is_some_and(|h| h != holder)
    })
    .await;
    events.extend(append(setup.publisher.outbox(), &setup.publisher_db, 10).await);
    let rows = await_applied(&db, 20).await;
    assert_applied_once_in_order(&rows, &events);
    assert!(
        rows[10..].iter().all(|r| r.applied_by == other_label),
        "the new holder continued: {rows:?}"
    );
    setup.await_all_acknowledged().await;
    assert_eq!(applied(&db).await.len(), 20, "exactly once overall");
    instances[other_label].stop();
    setup.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Benchmarks (ignored; run with --ignored --nocapture)
// ---------------------------------------------------------------------------------------------

const BENCH_EVENTS: usize = 5_000;

/// A handler as light as a real one: one insert.
struct Sink;

impl Handler for Sink {
    fn handle<'a>(
        &'a self,
        tx: &'a mut bazaar_kit::storage::Connection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            sqlx::query("INSERT INTO sink (event_id) VALUES ($1)")
                .bind(&event.id)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }
}

async fn create_sink(db: &Database) {
    sqlx::query("CREATE TABLE IF NOT EXISTS sink (event_id TEXT PRIMARY KEY)")
        .execute(db)
        .await
        .expect("create sink");
}

async fn sink_count(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM sink")
        .fetch_one(db)
        .await
        .expect("count sink")
}

/// Appends `count` events in one transaction (the backlog a consumer finds when it starts).
async fn append_backlog(outbox: &Outbox, db: &Database, count: usize) {
    let mut connection = db.connection().await.expect("connection");
    let mut tx = connection.begin().await.expect("begin");
    for i in 0..count {
        let event = NewEvent::new("thing.happened", &format!("t-{i}"), &json!({ "i": i }));
        outbox.append_in(&mut tx, event).await.expect("append");
    }
    tx.commit().await.expect("commit");
    outbox.notify();
}

async fn await_sink(db: &Database, count: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    while sink_count(db).await < count as i64 {
        assert!(Instant::now() < until, "the consumer did not keep up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(what: &str, elapsed: Duration, cpu: Duration) {
    println!(
        "{what}: {BENCH_EVENTS} events in {:.2} s = {:.0} events/s; process CPU {:.0} ms = {:.1} µs/event",
        elapsed.as_secs_f64(),
        BENCH_EVENTS as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / BENCH_EVENTS as f64,
    );
}

/// Makes [`bench_feed_publisher`] run, as the publisher process of a feed benchmark: its value
/// is the benchmark's mode (`backlog` or `trickle`).
const BENCH_PUBLISHER_ENV: &str = "BAZAAR_BENCH_PUBLISHER";

/// The publisher side of a feed benchmark, in a process of its own so that the benchmark's CPU
/// figure is the consumer's alone: a stand-in identity and a publisher serving its feed; with
/// `backlog`, every event is appended first; with `trickle`, they are committed one at a time,
/// 500 a second, once a line arrives on stdin. It prints its addresses, then serves until
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the publisher process of the feed benchmarks"]
async fn bench_feed_publisher() {
    let Ok(mode) = std::env::var(BENCH_PUBLISHER_ENV) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Arc::new(TestIssuer::new());
    let identity = spawn_identity(issuer.clone()).await;
    let publisher_db = open(&sqlite_url(dir.path(), "shop")).await;
    let publisher = start(
        &common(PUBLISHER),
        &publisher_db,
        no_client(),
        issuer.verifier(&["bazaar", PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    let running = Running::serve(&publisher, 0).await;
    if mode == "backlog" {
        append_backlog(publisher.outbox(), &publisher_db, BENCH_EVENTS).await;
    }
    println!("BENCH_ADDRESSES {} {identity}", running.address());
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    if mode == "trickle" {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for _ in 0..BENCH_EVENTS {
            tick.tick().await;
            append(publisher.outbox(), &publisher_db, 1).await;
        }
    }
    std::future::pending::<()>().await;
}

/// A feed consumer (this process) applying with `Sink` what a publisher process serves.
async fn bench_feed(mode: &str) {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--ignored",
            "--nocapture",
            "--exact",
            "bench_feed_publisher",
        ])
        .env(BENCH_PUBLISHER_ENV, mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the publisher process");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (publisher, identity) = loop {
        let line = lines
            .next()
            .expect("the publisher prints its addresses")
            .expect("read");
        if let Some(rest) = line.strip_prefix("BENCH_ADDRESSES ") {
            let (publisher, identity) = rest.split_once(' ').expect("two addresses");
            break (publisher.to_owned(), identity.to_owned());
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let consumer_db = open(&sqlite_url(dir.path(), "cart")).await;
    create_sink(&consumer_db).await;
    let client = ServiceClient::new(discovery(&[
        (PUBLISHER, &publisher),
        ("identity", &identity),
    ]))
    .with_credentials(Credentials {
        client_id: "bazaar-services".into(),
        client_secret: "test-secret".into(),
    });
    let consumer = start(
        &common(GROUP),
        &consumer_db,
        client,
        TestIssuer::new().verifier(&["bazaar", GROUP]),
        &Metrics::new(),
    )
    .await;
    if mode == "trickle" {
        // Idle and long-polling before the events start.
        consumer.consumer(GROUP).subscribe(PUBLISHER, Sink).spawn();
        eventually("the consumer reads the feed", || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM consumer_cursors")
                .fetch_one(&consumer_db)
                .await
                .is_ok_and(|n| n == 1)
        })
        .await;
    }
    let (started, cpu) = (Instant::now(), bazaar_kit::process_cpu::own());
    if mode == "backlog" {
        consumer.consumer(GROUP).subscribe(PUBLISHER, Sink).spawn();
    }
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin).expect("tell the publisher to go");
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2",
        )
        .bind(GROUP)
        .bind(PUBLISHER)
        .fetch_optional(&consumer_db)
        .await
        .expect("cursor");
        if position == Some(BENCH_EVENTS as i64) {
            break;
        }
        assert!(Instant::now() < until, "the consumer did not keep up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let what = if mode == "backlog" {
        "feed, SQLite, backlog (consumer process CPU)"
    } else {
        "feed, SQLite, trickle at 500/s (consumer process CPU)"
    };
    report(
        what,
        started.elapsed(),
        bazaar_kit::process_cpu::own() - cpu,
    );
    assert_eq!(sink_count(&consumer_db).await, BENCH_EVENTS as i64);
    consumer.stop();
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_feed_backlog_sqlite() {
    bench_feed("backlog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_feed_trickle_sqlite() {
    bench_feed("trickle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_nats_consumer_sqlite() {
    let Some(url) = nats_url("bench_nats_consumer_sqlite") else {
        return;
    };
    let stream = stream_name();
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = TestIssuer::new();
    let publisher_db = open(&sqlite_url(dir.path(), "shop")).await;
    let publisher = start(
        &nats_common(PUBLISHER, &url, &stream),
        &publisher_db,
        no_client(),
        issuer.verifier(&[PUBLISHER]),
        &Metrics::new(),
    )
    .await;
    append_backlog(publisher.outbox(), &publisher_db, BENCH_EVENTS).await;
    eventually("the relay publishes the backlog", || async {
        publisher.outbox().unpublished_count().await.expect("count") == 0
    })
    .await;
    let consumer_db = open(&sqlite_url(dir.path(), "cart")).await;
    create_sink(&consumer_db).await;
    let (started, cpu) = (Instant::now(), bazaar_kit::process_cpu::own());
    let consumer = start(
        &nats_common(GROUP, &url, &stream),
        &consumer_db,
        no_client(),
        issuer.verifier(&[GROUP]),
        &Metrics::new(),
    )
    .await;
    consumer.consumer(GROUP).subscribe(PUBLISHER, Sink).spawn();
    await_sink(&consumer_db, BENCH_EVENTS, Duration::from_secs(600)).await;
    report(
        "NATS, SQLite, backlog",
        started.elapsed(),
        bazaar_kit::process_cpu::own() - cpu,
    );
    consumer.stop();
    publisher.stop();
    let _ = jetstream(&url).await.delete_stream(&stream).await;
}
