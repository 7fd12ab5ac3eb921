//! `GroupedWrites`: commands waiting together share one commit on SQLite, each rolled back
//! alone, each answered with its own outcome; on PostgreSQL (when `BAZAAR_TEST_POSTGRES_URL`
//! is set) each is a transaction of its own with the same outcomes.

use std::sync::atomic::{AtomicUsize, Ordering};

use bazaar_kit::group_commit::GroupedWrites;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_kit::storage::{Connection, Database};

async fn open(url: &str) -> Database {
    let db = Database::open(url, &sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("opens");
    sqlx::query("CREATE TABLE numbers (n BIGINT PRIMARY KEY)")
        .execute(&db)
        .await
        .expect("table");
    db
}

/// Inserts `n` in a transaction of its own and answers it; an odd `n` is inserted, then
/// refused (its transaction dropped uncommitted), as a command refused half-way would be.
async fn insert_even(
    connection: &mut Connection,
    n: i64,
) -> Result<Result<i64, String>, sqlx::Error> {
    let mut tx = connection.begin().await?;
    sqlx::query("INSERT INTO numbers (n) VALUES ($1)")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    if n % 2 == 1 {
        return Ok(Err(format!("{n} is odd")));
    }
    tx.commit().await?;
    Ok(Ok(n))
}

/// Runs `insert_even` for each of `numbers` at once, each from its own task.
async fn run_all(
    writes: &GroupedWrites,
    numbers: std::ops::Range<i64>,
) -> Vec<Result<i64, String>> {
    let tasks: Vec<_> = numbers
        .map(|n| {
            let writes = writes.clone();
            tokio::spawn(async move {
                writes
                    .run(n, |n, connection| Box::pin(insert_even(connection, *n)))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("joins").expect("no database error"));
    }
    outcomes
}

async fn stored(db: &Database) -> Vec<i64> {
    sqlx::query_scalar("SELECT n FROM numbers ORDER BY n")
        .fetch_all(db)
        .await
        .expect("reads")
}

/// What both engines must do: every caller answered with its own outcome, what it committed
/// kept, what it refused undone.
async fn each_command_keeps_its_own_outcome(db: &Database, writes: &GroupedWrites) {
    let outcomes = run_all(writes, 0..60).await;
    for (n, outcome) in (0..60).zip(&outcomes) {
        if n % 2 == 0 {
            assert_eq!(outcome, &Ok(n));
        } else {
            assert_eq!(outcome, &Err(format!("{n} is odd")));
        }
    }
    let evens: Vec<i64> = (0..60).filter(|n| n % 2 == 0).collect();
    assert_eq!(
        stored(db).await,
        evens,
        "the refused inserts are undone, no other"
    );
}

// On this single-threaded test runtime the 60 tasks all queue their commands before the
// writer runs again, so they cannot all go one per transaction.
#[tokio::test]
async fn on_sqlite_commands_waiting_together_share_commits_and_roll_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "numbers")).await;
    let writes = GroupedWrites::start(db.clone());
    each_command_keeps_its_own_outcome(&db, &writes).await;
    let batches = writes.batches();
    assert!(
        (1..=3).contains(&batches),
        "60 commands queued together took {batches} commits"
    );
    // A command alone is a transaction of its own, and the writer goes on after refusals.
    assert_eq!(run_all(&writes, 100..101).await, vec![Ok(100)]);
    assert_eq!(writes.batches(), batches + 1);
    assert!(stored(&db).await.contains(&100));
}

#[tokio::test]
async fn on_postgres_each_command_is_its_own_transaction() {
    let Some(url) = fresh_postgres_database("grouped_writes").await else {
        return;
    };
    let db = open(&url).await;
    let writes = GroupedWrites::start(db.clone());
    each_command_keeps_its_own_outcome(&db, &writes).await;
    assert_eq!(writes.batches(), 0, "no writer task on PostgreSQL");
}

/// Inserts 1 on the first attempt (taken: a unique violation, a conflict) and 2 on the next.
async fn insert_taken_then_free(
    connection: &mut Connection,
    attempts: &AtomicUsize,
) -> Result<i64, sqlx::Error> {
    let n = if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
        1
    } else {
        2
    };
    let mut tx = connection.begin().await?;
    sqlx::query("INSERT INTO numbers (n) VALUES ($1)")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

#[tokio::test]
async fn a_command_that_conflicts_runs_again_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "numbers")).await;
    let writes = GroupedWrites::start(db.clone());
    writes
        .run((), |(), connection| {
            Box::pin(async move {
                sqlx::query("INSERT INTO numbers (n) VALUES (1)")
                    .execute(&mut *connection)
                    .await
                    .map(|_| ())
            })
        })
        .await
        .expect("inserts 1");
    let attempts = AtomicUsize::new(0);
    let inserted = writes
        .run(attempts, |attempts, connection| {
            Box::pin(insert_taken_then_free(connection, attempts))
        })
        .await
        .expect("the second attempt inserts");
    assert_eq!(inserted, 2);
    assert_eq!(stored(&db).await, vec![1, 2]);
}

#[tokio::test]
async fn a_command_that_fails_is_answered_its_error_and_the_others_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "numbers")).await;
    let writes = GroupedWrites::start(db.clone());
    let failing = {
        let writes = writes.clone();
        tokio::spawn(async move {
            writes
                .run((), |(), connection| {
                    Box::pin(async move {
                        let mut tx = connection.begin().await?;
                        sqlx::query("INSERT INTO numbers (n) VALUES (7)")
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("INSERT INTO no_such_table (n) VALUES (7)")
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await
                    })
                })
                .await
        })
    };
    let others = run_all(&writes, 10..13).await;
    let error = failing.await.expect("joins").expect_err("no such table");
    assert!(error.to_string().contains("no_such_table"), "{error}");
    assert_eq!(others, vec![Ok(10), Err("11 is odd".into()), Ok(12)]);
    assert_eq!(
        writes.batches(),
        1,
        "the four commands shared one transaction"
    );
    assert_eq!(
        stored(&db).await,
        vec![10, 12],
        "the failed command's insert is undone"
    );
}
