//! `bazaar audit verify` reads each service's audit log from its database and fails, naming the
//! record, when the chain was tampered with.

use std::process::Command;

use bazaar_kit::audit::{AuditEvent, AuditLog};
use bazaar_kit::storage::Database;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

fn verify(data_dir: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bazaar"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test]
async fn verify_passes_on_an_intact_chain_and_names_a_tampered_record() {
    let data = tempfile::tempdir().expect("tempdir");
    let service_dir = data.path().join("identity");
    let url = format!(
        "sqlite://{}?mode=rwc",
        service_dir.join("identity.db").display()
    );
    let db = Database::open(&url, &MIGRATOR).await.expect("open");
    let log = AuditLog::open(&db, "identity").await.expect("table");
    for action in ["login.failure", "login.success", "token.issued"] {
        log.append(AuditEvent::new("user-1", action).source("127.0.0.1"))
            .await
            .expect("append");
    }

    let (ok, out) = verify(data.path());
    assert!(ok, "{out}");
    assert!(out.contains("identity") && out.contains("intact"), "{out}");

    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
        .execute(&db)
        .await
        .expect("tamper");
    db.close().await;
    let (ok, out) = verify(data.path());
    assert!(!ok, "a tampered chain must fail: {out}");
    assert!(out.contains("BROKEN at record 1"), "{out}");
}
