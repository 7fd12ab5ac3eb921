//! The orders repository's batched saga write, on SQLite and (with `BAZAAR_TEST_POSTGRES_URL`)
//! PostgreSQL: the steps of many orders recorded by one `UPDATE … FROM (VALUES …)` and one
//! multi-row history insert, and placements in the same transaction, must act exactly as one
//! write each did.

use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_kit::storage::Database;
use bazaar_messaging::{NewEvent, Outbox};
use bazaar_orders::model::{Address, HistoryEntry, Money, OrderLine, SagaState};
use bazaar_orders::repository::{Placement, StepRecord, StepUpdate, StoredOrder};
use bazaar_orders::{Repository, MIGRATOR};

const WORKER: &str = "worker-a";

fn order(id: &str) -> StoredOrder {
    StoredOrder {
        id: id.to_owned(),
        user_id: format!("user-{id}"),
        email: format!("{id}@example.test"),
        idempotency_key: format!("key-{id}"),
        status: "pending".into(),
        status_reason: String::new(),
        step: "reserve_stock".into(),
        currency: "USD".into(),
        subtotal_minor: 1000,
        shipping_minor: 0,
        total_minor: 1000,
        address: Address {
            name: "A Shopper".into(),
            line1: "1 Main Street".into(),
            city: "New York".into(),
            country: "US".into(),
            postal_code: "10001".into(),
        },
        lines: vec![OrderLine {
            product_id: "p1".into(),
            sku: "SKU-1".into(),
            name: "A thing".into(),
            quantity: 1,
            unit_price: Money::new(1000, "USD"),
            weight_grams: 100,
        }],
        saga: SagaState::default(),
        card_token: "tok".into(),
        attempts: 0,
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
    }
}

fn step(id: &str, worker: &str, to_step: &str, detail: &str, event: bool) -> StepRecord {
    let saga = SagaState {
        payment_id: Some(format!("pay-{id}")),
        ..SagaState::default()
    };
    StepRecord {
        id: id.to_owned(),
        worker: worker.to_owned(),
        update: StepUpdate {
            step: to_step.to_owned(),
            status: if event { "confirmed" } else { "pending" }.to_owned(),
            status_reason: format!("reason-{id}"),
            saga,
            shipping_minor: 250,
            total_minor: 1250,
            attempts: 0,
            next_attempt_at_ms: 5_000,
            history: vec![HistoryEntry {
                at_ms: 2_000,
                step: to_step.to_owned(),
                outcome: "ok".into(),
                detail: detail.to_owned(),
            }],
            event: event.then(|| {
                NewEvent::new("order.confirmed", id, &serde_json::json!({"order_id": id}))
            }),
            claimed_until_ms: 9_000,
        },
    }
}

async fn setup(url: &str) -> (Repository, Outbox) {
    let db = Database::open(url, &MIGRATOR).await.expect("database");
    let outbox = Outbox::open(&db, "orders").await.expect("outbox");
    let repository = Repository::new(db);
    for id in ["o1", "o2", "o3", "o4", "o5"] {
        let placed = NewEvent::new("order.placed", id, &serde_json::json!({"order_id": id}));
        let claim = if id == "o3" { "worker-b" } else { WORKER };
        // o5 had a step run while it was placed: its history carries it after `placed`.
        let ran = if id == "o5" {
            vec![HistoryEntry {
                at_ms: 1_000,
                step: "quote".into(),
                outcome: "ok".into(),
                detail: "ran at placement".into(),
            }]
        } else {
            Vec::new()
        };
        let placement = Placement {
            order: order(id),
            ran,
            event: placed,
            claim: (claim.to_owned(), 60_000),
        };
        assert!(repository
            .insert(&outbox, &placement)
            .await
            .expect("insert"));
    }
    (repository, outbox)
}

async fn batched_steps_record_each_claimed_order_once(url: String) {
    let (repository, outbox) = setup(&url).await;
    let events_before = outbox.read_after(0, 100).await.expect("events").len();

    // o3 is claimed by another worker: its step must not be recorded, the others must.
    let o1 = step("o1", WORKER, "authorize_payment", "reserved o1", false);
    let o2 = step("o2", WORKER, "done", "confirmed o2", true);
    let o3 = step("o3", WORKER, "authorize_payment", "reserved o3", false);
    let o4 = step("o4", WORKER, "price", "reserved o4", false);
    // Five steps and five history rows: both statements are padded to eight rows, and the
    // padding changes nothing.
    let mut o5 = step("o5", WORKER, "price", "reserved o5", false);
    o5.update.history.insert(
        0,
        HistoryEntry {
            at_ms: 1_500,
            step: "locate".into(),
            outcome: "ok".into(),
            detail: "located o5".into(),
        },
    );
    let recorded = repository
        .record_steps(&outbox, &[&o1, &o2, &o3, &o4, &o5])
        .await
        .expect("record");
    assert_eq!(recorded, vec![true, true, false, true, true]);
    let o5_history: Vec<(i64, String)> = repository
        .history("o5")
        .await
        .expect("history")
        .into_iter()
        .map(|h| (h.at_ms, h.detail))
        .collect();
    assert_eq!(o5_history.len(), 4, "{o5_history:?}");
    assert_eq!(o5_history[1].1, "ran at placement");
    assert_eq!(o5_history[2].1, "located o5");
    assert_eq!(o5_history[3].1, "reserved o5");

    let stored = repository.get("o1").await.expect("get").expect("o1");
    assert_eq!(stored.step, "authorize_payment");
    assert_eq!(stored.status, "pending");
    assert_eq!(stored.status_reason, "reason-o1");
    assert_eq!(stored.shipping_minor, 250);
    assert_eq!(stored.total_minor, 1250);
    assert_eq!(stored.saga.payment_id.as_deref(), Some("pay-o1"));
    let o2_stored = repository.get("o2").await.expect("get").expect("o2");
    assert_eq!(
        (o2_stored.step.as_str(), o2_stored.status.as_str()),
        ("done", "confirmed")
    );
    assert_eq!(
        o2_stored.updated_at_ms, stored.updated_at_ms,
        "one commit time"
    );
    let untouched = repository.get("o3").await.expect("get").expect("o3");
    assert_eq!(untouched.step, "reserve_stock");
    assert_eq!(untouched.saga.payment_id, None);
    assert_eq!(
        repository.get("o4").await.expect("get").expect("o4").step,
        "price"
    );

    // Each recorded order got one history row after its "placed" row; o3 none.
    for (id, detail) in [
        ("o1", "reserved o1"),
        ("o2", "confirmed o2"),
        ("o4", "reserved o4"),
    ] {
        let history = repository.history(id).await.expect("history");
        assert_eq!(history.len(), 2, "{id}: {history:?}");
        assert_eq!(history[1].detail, detail);
    }
    assert_eq!(repository.history("o3").await.expect("history").len(), 1);

    // Only the recorded terminal step published its event.
    let events = outbox.read_after(0, 100).await.expect("events");
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events.last().expect("event").event_type, "order.confirmed");
    assert_eq!(events.last().expect("event").aggregate_id, "o2");

    // Two steps of one order in one batch are written one after the other, in order, and
    // each numbered after the last.
    let first = step("o1", WORKER, "create_shipment", "authorized o1", false);
    let second = step("o1", WORKER, "commit_stock", "shipped o1", false);
    let recorded = repository
        .record_steps(&outbox, &[&first, &second])
        .await
        .expect("record");
    assert_eq!(recorded, vec![true, true]);
    assert_eq!(
        repository.get("o1").await.expect("get").expect("o1").step,
        "commit_stock"
    );
    let details: Vec<String> = repository
        .history("o1")
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.detail)
        .collect();
    assert_eq!(
        details,
        [
            "order accepted; checkout started",
            "reserved o1",
            "authorized o1",
            "shipped o1"
        ]
    );

    // Steps that share a record write all their history rows at once, numbered in order after
    // the order's last, beside another order's single row in the same statement.
    let mut shared = step("o4", WORKER, "done", "captured o4", true);
    shared.update.history = ["committed o4", "captured o4", "confirmed o4"]
        .into_iter()
        .map(|detail| HistoryEntry {
            at_ms: 3_000,
            step: "step".into(),
            outcome: "ok".into(),
            detail: detail.to_owned(),
        })
        .collect();
    let single = step("o1", WORKER, "capture_payment", "committed o1", false);
    let recorded = repository
        .record_steps(&outbox, &[&shared, &single])
        .await
        .expect("record");
    assert_eq!(recorded, vec![true, true]);
    let details = |id: &'static str| {
        let repository = repository.clone();
        async move {
            let history = repository.history(id).await.expect("history");
            history.into_iter().map(|h| h.detail).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        details("o4").await,
        [
            "order accepted; checkout started",
            "reserved o4",
            "committed o4",
            "captured o4",
            "confirmed o4"
        ]
    );
    assert_eq!(
        details("o1").await.last().map(String::as_str),
        Some("committed o1")
    );

    // A finished order takes no further step.
    let late = step("o2", WORKER, "done", "again", false);
    assert_eq!(
        repository
            .record_steps(&outbox, &[&late])
            .await
            .expect("record"),
        vec![false]
    );
}

/// Placements and step records written together (the saga's writer): a new order is
/// inserted with its history and `order.placed`, a placement whose idempotency key the user
/// already used inserts nothing, and the record beside them is written, all in one commit.
async fn placements_and_records_share_one_write(url: String) {
    let (repository, outbox) = setup(&url).await;
    let events_before = outbox.read_after(0, 100).await.expect("events").len();
    let placement = |id: &str, key_of: &str| Placement {
        order: StoredOrder {
            idempotency_key: format!("key-{key_of}"),
            user_id: format!("user-{key_of}"),
            ..order(id)
        },
        ran: Vec::new(),
        event: NewEvent::new("order.placed", id, &serde_json::json!({"order_id": id})),
        claim: (WORKER.to_owned(), 60_000),
    };
    let (fresh, again) = (placement("o6", "o6"), placement("o7", "o1"));
    let record = step("o1", WORKER, "price", "reserved o1", false);
    let (inserted, recorded) = repository
        .write(&outbox, &[&fresh, &again], &[&record])
        .await
        .expect("write");
    assert_eq!(inserted, vec![true, false]);
    assert_eq!(recorded, vec![true]);
    let o6 = repository
        .get("o6")
        .await
        .expect("get")
        .expect("o6 inserted");
    assert_eq!(o6.step, "reserve_stock");
    assert_eq!(repository.history("o6").await.expect("history").len(), 1);
    assert!(repository.get("o7").await.expect("get").is_none());
    assert_eq!(
        repository.get("o1").await.expect("get").expect("o1").step,
        "price"
    );
    let events = outbox.read_after(0, 100).await.expect("events");
    assert_eq!(events.len(), events_before + 1, "only o6's order.placed");
    assert_eq!(events.last().expect("event").aggregate_id, "o6");
}

#[tokio::test]
async fn sqlite_placements_and_records_share_one_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    placements_and_records_share_one_write(sqlite_url(dir.path(), "orders")).await;
}

#[tokio::test]
async fn postgres_placements_and_records_share_one_write() {
    if let Some(url) = fresh_postgres_database("orders_placements").await {
        placements_and_records_share_one_write(url).await;
    }
}

#[tokio::test]
async fn sqlite_batched_steps_record_each_claimed_order_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    batched_steps_record_each_claimed_order_once(sqlite_url(dir.path(), "orders")).await;
}

#[tokio::test]
async fn postgres_batched_steps_record_each_claimed_order_once() {
    if let Some(url) = fresh_postgres_database("orders_steps").await {
        batched_steps_record_each_claimed_order_once(url).await;
    }
}
