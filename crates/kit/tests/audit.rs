//! The audit chain holds under concurrent appends and detects any modified or removed record,
//! on SQLite and on PostgreSQL; the admin read API answers the newest records and the whole
//! chain's check.

use bazaar_kit::audit::{admin_view, verify_chain, AuditEvent, AuditLog, AuditQuery};
use bazaar_kit::storage::{testing, Database};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

async fn chain_detects_tampering(url: &str) {
    let db = Database::open(url, &MIGRATOR).await.expect("open");
    let log = AuditLog::open(&db, "identity").await.expect("audit table");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(
                AuditEvent::new(format!("user-{i}"), "login.success")
                    .source("127.0.0.1")
                    .details(serde_json::json!({"attempt": i})),
            )
            .await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("append");
    }
    let intact = log.records(0, 1000).await.expect("records");
    assert_eq!(intact.len(), 12);
    verify_chain(&intact).expect("intact chain verifies");

    // A removed record is found where the sequence jumps.
    let mut missing = intact.clone();
    missing.remove(7);
    let error = verify_chain(&missing).expect_err("removed");
    assert_eq!(error.seq, 9, "{error}");

    // A record modified in the database is found by its hash.
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 5")
        .execute(&db)
        .await
        .expect("tamper");
    let error = verify_chain(&log.records(0, 1000).await.expect("records")).expect_err("modified");
    assert_eq!(error.seq, 5, "{error}");

    // Recomputing the tampered record's own hash does not help: the next one no longer chains.
    let mut rehashed = log.records(0, 1000).await.expect("records");
    rehashed[4].hash = rehashed[4].compute_hash();
    let error = verify_chain(&rehashed).expect_err("re-hashed");
    assert_eq!(error.seq, 6, "{error}");
    db.close().await;
}

#[tokio::test]
async fn audit_chain_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    chain_detects_tampering(&testing::sqlite_url(dir.path(), "audit")).await;
}

#[tokio::test]
async fn audit_chain_on_postgres() {
    if let Some(url) = testing::fresh_postgres_database("audit").await {
        chain_detects_tampering(&url).await;
    }
}

/// The admin view: newest records first, limited, with the check of the whole chain (read in
/// pages, so more than one page of records is checked), and a tampered record reported.
#[tokio::test]
async fn admin_view_answers_the_newest_records_and_the_whole_chain_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&testing::sqlite_url(dir.path(), "view"), &MIGRATOR)
        .await
        .expect("open");
    let log = AuditLog::open(&db, "catalog").await.expect("audit table");
    // More than one page of the chain check (1000 records per page).
    let total = 1_003;
    for i in 1..=total {
        log.append(AuditEvent::new("admin", "product.replaced").target(format!("p-{i}")))
            .await
            .expect("append");
    }

    let axum::Json(view) = admin_view(&log, &AuditQuery { limit: Some(3) })
        .await
        .expect("view");
    assert_eq!(view.service, "catalog");
    assert!(view.chain.ok, "{:?}", view.chain);
    assert_eq!(view.chain.records, total);
    assert_eq!(view.chain.error, None);
    let seqs: Vec<i64> = view.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1_003, 1_002, 1_001], "newest first, limited");
    assert_eq!(view.records[0].target, "p-1003");
    let json = serde_json::to_value(&view).expect("json");
    assert_eq!(
        json["chain"],
        serde_json::json!({"ok": true, "records": 1_003})
    );

    // The default limit is 50.
    let axum::Json(view) = admin_view(&log, &AuditQuery::default())
        .await
        .expect("view");
    assert_eq!(view.records.len(), 50);

    // A limit out of range is refused, naming the field.
    for bad in [0, 501, -1] {
        let error = admin_view(&log, &AuditQuery { limit: Some(bad) })
            .await
            .expect_err("refused");
        let problem = error.to_problem();
        assert_eq!(problem.status, 422, "{bad}");
        assert_eq!(problem.field.as_deref(), Some("limit"), "{bad}");
    }

    // A record modified in the database (in the first page, far from the newest ones shown)
    // breaks the chain, and the answer says where.
    sqlx::query("UPDATE audit_log SET target = 'forged' WHERE seq = 7")
        .execute(&db)
        .await
        .expect("tamper");
    let axum::Json(view) = admin_view(&log, &AuditQuery { limit: Some(2) })
        .await
        .expect("view");
    assert!(!view.chain.ok);
    assert_eq!(view.chain.records, total, "every record is still counted");
    let error = view.chain.error.as_deref().expect("an error");
    assert!(
        error.contains("record 7") && error.contains("modified"),
        "{error}"
    );
    assert_eq!(
        view.records.len(),
        2,
        "the newest records are still answered"
    );
    let json = serde_json::to_value(&view).expect("json");
    assert_eq!(json["chain"]["ok"], false);
    assert!(json["chain"]["error"].is_string());

    // A record removed past the first page is found too.
    sqlx::query("UPDATE audit_log SET target = 'p-7' WHERE seq = 7")
        .execute(&db)
        .await
        .expect("restore");
    let axum::Json(view) = admin_view(&log, &AuditQuery::default())
        .await
        .expect("view");
    assert!(view.chain.ok, "restored: {:?}", view.chain);
    sqlx::query("DELETE FROM audit_log WHERE seq = 1002")
        .execute(&db)
        .await
        .expect("remove");
    let axum::Json(view) = admin_view(&log, &AuditQuery::default())
        .await
        .expect("view");
    assert!(!view.chain.ok);
    assert_eq!(view.chain.records, total - 1);
    assert!(
        view.chain
            .error
            .as_deref()
            .is_some_and(|e| e.contains("record 1003") && e.contains("missing")),
        "{:?}",
        view.chain.error
    );
    db.close().await;
}
