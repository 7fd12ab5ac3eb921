//! The audit chain holds under concurrent appends and detects any modified or removed record,
//! on SQLite and on PostgreSQL.

use bazaar_kit::audit::{verify_chain, AuditEvent, AuditLog};
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
        .execute(db.pool())
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
