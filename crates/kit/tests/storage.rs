//! `Database` outside sqlx's pool: SQLite's one held connection (run on the calling thread) and
//! PostgreSQL's lent ones serve statements and transactions, read and write values alike, report
//! constraint violations alike, close for good, and (PostgreSQL) recover when the server drops
//! every connection and release the locks of a transaction dropped without commit.

use std::time::{Duration, Instant};

use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use bazaar_kit::storage::Database;
use sqlx::migrate::Migrator;
use sqlx::Row;

async fn open(url: &str) -> Database {
    let db = Database::open(url, &Migrator::DEFAULT)
        .await
        .expect("database");
    sqlx::query("CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&db)
        .await
        .expect("table");
    db
}

async fn insert<'e>(executor: impl sqlx::Executor<'e, Database = sqlx::Any>, id: i64, body: &str) {
    sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
        .bind(id)
        .bind(body)
        .execute(executor)
        .await
        .expect("insert");
}

async fn count(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(db)
        .await
        .expect("count")
}

/// Statements through `&Database` and transactions on `Database::connection` see each other's
/// committed writes, a rolled-back transaction leaves nothing, and a closed database refuses
/// work instead of hanging.
async fn statements_transactions_and_close(db: Database) {
    insert(&db, 1, "one").await;
    {
        let mut connection = db.connection().await.expect("connection");
        let mut tx = connection.begin().await.expect("begin");
        insert(&mut *tx, 2, "two").await;
        tx.commit().await.expect("commit");
    }
    {
        let mut connection = db.connection().await.expect("connection");
        let mut tx = connection.begin().await.expect("begin");
        insert(&mut *tx, 3, "three").await;
        tx.rollback().await.expect("rollback");
    }
    {
        // A transaction dropped without commit (a failed request) rolls back too.
        let mut connection = db.connection().await.expect("connection");
        let mut tx = connection.begin().await.expect("begin");
        insert(&mut *tx, 4, "four").await;
    }
    assert_eq!(count(&db).await, 2);
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&db)
        .await
        .expect("rows");
    assert_eq!(bodies, ["one", "two"]);

    db.close().await;
    let after = sqlx::query("SELECT 1").execute(&db).await;
    assert!(
        matches!(after, Err(sqlx::Error::PoolClosed)),
        "a closed database refuses statements: {after:?}"
    );
    assert!(matches!(
        db.connection().await.map(|_| ()),
        Err(sqlx::Error::PoolClosed)
    ));
}

#[tokio::test]
async fn sqlite_statements_transactions_and_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    statements_transactions_and_close(open(&sqlite_url(dir.path(), "notes")).await).await;
}

#[tokio::test]
async fn postgres_statements_transactions_and_close() {
    let Some(url) = fresh_postgres_database("storage_close").await else {
        return;
    };
    statements_transactions_and_close(open(&url).await).await;
}

/// What the services rely on, the same on both engines: `$n` placeholders bind the n-th
/// argument wherever and however often they appear; integers, reals, text, nulls and blobs come
/// back as written; `fetch_optional` takes the first row; a duplicate key is a unique violation
/// that `is_conflict` recognises; a text of several statements runs them all.
async fn values_placeholders_and_errors(db: Database) {
    sqlx::query(
        "CREATE TABLE kinds (id BIGINT PRIMARY KEY, label TEXT, amount DOUBLE PRECISION, \
         data BYTEA_OR_BLOB, copy TEXT)"
            .replace(
                "BYTEA_OR_BLOB",
                match db.engine() {
                    bazaar_kit::storage::Engine::Sqlite => "BLOB",
                    bazaar_kit::storage::Engine::Postgres => "BYTEA",
                },
            )
            .as_str(),
    )
    .execute(&db)
    .await
    .expect("table");
    // `$2` before `$1`, and `$2` twice.
    let written = sqlx::query(
        "INSERT INTO kinds (label, id, amount, data, copy) VALUES ($2, $1, $3, $4, $2)",
    )
    .bind(7_i64)
    .bind("seven ✓")
    .bind(2.5_f64)
    .bind(vec![0_u8, 255, 1])
    .execute(&db)
    .await
    .expect("insert");
    assert_eq!(written.rows_affected(), 1);
    sqlx::query(
        "INSERT INTO kinds (id, label, amount, data, copy) VALUES ($1, NULL, NULL, NULL, NULL)",
    )
    .bind(8_i64)
    .execute(&db)
    .await
    .expect("insert nulls");

    let row: (i64, String, f64, Vec<u8>, String) =
        sqlx::query_as("SELECT id, label, amount, data, copy FROM kinds WHERE id = $1")
            .bind(7_i64)
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(
        row,
        (7, "seven ✓".into(), 2.5, vec![0, 255, 1], "seven ✓".into())
    );
    let nulls: (Option<String>, Option<f64>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT label, amount, data FROM kinds WHERE id = 8")
            .fetch_one(&db)
            .await
            .expect("nulls");
    assert_eq!(nulls, (None, None, None));
    let by_name: String = Row::get(
        &sqlx::query("SELECT copy AS duplicate FROM kinds WHERE id = 7")
            .fetch_one(&db)
            .await
            .expect("named"),
        "duplicate",
    );
    assert_eq!(by_name, "seven ✓");
    let first: Option<i64> = sqlx::query_scalar("SELECT id FROM kinds ORDER BY id DESC")
        .fetch_optional(&db)
        .await
        .expect("first");
    assert_eq!(first, Some(8));
    let none: Option<i64> = sqlx::query_scalar("SELECT id FROM kinds WHERE id = 99")
        .fetch_optional(&db)
        .await
        .expect("none");
    assert_eq!(none, None);
    let missing = sqlx::query("SELECT id FROM kinds WHERE id = 99")
        .fetch_one(&db)
        .await
        .map(|_| ());
    assert!(
        matches!(missing, Err(sqlx::Error::RowNotFound)),
        "{missing:?}"
    );

    let duplicate = sqlx::query("INSERT INTO kinds (id) VALUES (7)")
        .execute(&db)
        .await
        .expect_err("duplicate key");
    match &duplicate {
        sqlx::Error::Database(error) => assert!(error.is_unique_violation(), "{error}"),
        other => panic!("a database error, not {other:?}"),
    }
    assert!(bazaar_kit::storage::is_conflict(&duplicate));
    let bad = sqlx::query("SELECT no_such_column FROM kinds")
        .fetch_all(&db)
        .await
        .map(|rows| rows.len())
        .expect_err("unknown column");
    assert!(matches!(bad, sqlx::Error::Database(_)), "{bad:?}");

    sqlx::raw_sql("INSERT INTO kinds (id) VALUES (20); INSERT INTO kinds (id) VALUES (21);")
        .execute(&db)
        .await
        .expect("two statements");
    let updated = sqlx::query("UPDATE kinds SET copy = 'x' WHERE id >= $1")
        .bind(20_i64)
        .execute(&db)
        .await
        .expect("update");
    assert_eq!(updated.rows_affected(), 2);
    db.close().await;
}

#[tokio::test]
async fn sqlite_values_placeholders_and_errors() {
    let dir = tempfile::tempdir().expect("dir");
    values_placeholders_and_errors(open(&sqlite_url(dir.path(), "kinds")).await).await;
}

#[tokio::test]
async fn postgres_values_placeholders_and_errors() {
    let Some(url) = fresh_postgres_database("kinds").await else {
        return;
    };
    values_placeholders_and_errors(open(&url).await).await;
}

/// A transaction begun inside another is a savepoint on both engines: rolling it back keeps
/// the outer transaction's work, committing it leaves the outer one to decide; statements that
/// opt out of the statement cache (`persistent(false)`) run like any other.
async fn nested_transactions_and_uncached_statements(db: Database) {
    {
        let mut connection = db.connection().await.expect("connection");
        let mut outer = connection.begin().await.expect("begin");
        insert(&mut *outer, 1, "outer").await;
        {
            let mut inner = outer.begin().await.expect("savepoint");
            insert(&mut *inner, 2, "rolled back").await;
            inner.rollback().await.expect("rollback to savepoint");
        }
        {
            let mut inner = outer.begin().await.expect("savepoint");
            insert(&mut *inner, 3, "kept").await;
            inner.commit().await.expect("release savepoint");
        }
        {
            // Dropped without commit: rolled back to its savepoint.
            let mut inner = outer.begin().await.expect("savepoint");
            insert(&mut *inner, 4, "dropped").await;
        }
        outer.commit().await.expect("commit");
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM notes ORDER BY id")
        .persistent(false)
        .fetch_all(&db)
        .await
        .expect("ids");
    assert_eq!(ids, [1, 3]);
    {
        let mut connection = db.connection().await.expect("connection");
        let mut outer = connection.begin().await.expect("begin");
        insert(&mut *outer, 5, "outer, rolled back").await;
        let mut inner = outer.begin().await.expect("savepoint");
        insert(&mut *inner, 6, "inner, committed").await;
        inner.commit().await.expect("release savepoint");
        outer.rollback().await.expect("rollback");
    }
    assert_eq!(
        count(&db).await,
        2,
        "the outer rollback undoes the inner commit"
    );
    db.close().await;
}

#[tokio::test]
async fn sqlite_nested_transactions_and_uncached_statements() {
    let dir = tempfile::tempdir().expect("dir");
    nested_transactions_and_uncached_statements(open(&sqlite_url(dir.path(), "nested")).await)
        .await;
}

#[tokio::test]
async fn postgres_nested_transactions_and_uncached_statements() {
    let Some(url) = fresh_postgres_database("nested").await else {
        return;
    };
    nested_transactions_and_uncached_statements(open(&url).await).await;
}

/// On SQLite, as through sqlx's SQLite driver: a column declared `BOOLEAN` cannot be read
/// (the `Any` types have no room for it there; select `CASE WHEN flag THEN 1 ELSE 0 END`), a
/// placeholder without a value is NULL, and `?` placeholders take the values in order.
#[tokio::test]
async fn sqlite_reads_and_binds_as_sqlx_did() {
    let dir = tempfile::tempdir().expect("dir");
    let db = open(&sqlite_url(dir.path(), "like_sqlx")).await;
    sqlx::query("CREATE TABLE flags (id BIGINT PRIMARY KEY, flag BOOLEAN NOT NULL, note TEXT)")
        .execute(&db)
        .await
        .expect("table");
    sqlx::query("INSERT INTO flags (id, flag, note) VALUES (?, ?, $3)")
        .bind(1_i64)
        .bind(true)
        .execute(&db)
        .await
        .expect("insert with an unbound $3");
    let flag = sqlx::query("SELECT flag FROM flags")
        .fetch_one(&db)
        .await
        .map(|_| ());
    assert!(
        matches!(&flag, Err(sqlx::Error::ColumnDecode { index, .. }) if index == "flag"),
        "{flag:?}"
    );
    let row: (i64, i64, Option<String>) =
        sqlx::query_as("SELECT id, CASE WHEN flag THEN 1 ELSE 0 END AS flag, note FROM flags")
            .fetch_one(&db)
            .await
            .expect("flag as a number");
    assert_eq!(row, (1, 1, None));
    db.close().await;
}

/// A new SQLite file gets 1 KiB pages and the write-ahead log, and the service's connection
/// keeps statement journals in memory (the settings that halve the bytes a checkout writes:
/// docs/performance.md, tenth round), and SQLite's automatic checkpoint is replaced by
/// `kit::storage::checkpoint` (twelfth round).
/// A kept statement with hundreds of numbered placeholders, taken out of order, binds each run's
/// own arguments where they belong (SQLite works out which argument each parameter takes once
/// per statement text and keeps it).
async fn many_numbered_placeholders_bind_each_run_alike(db: Database) {
    const ROWS: i64 = 150;
    let values: Vec<String> = (0..ROWS)
        .map(|row| format!("(${}, ${})", 2 * row + 2, 2 * row + 1))
        .collect();
    let sql = format!(
        "SELECT v.column1 AS a, v.column2 AS b FROM (VALUES {}) AS v",
        values.join(", ")
    );
    for run in [1_000i64, 2_000] {
        let mut query = sqlx::query(&sql);
        for argument in 0..2 * ROWS {
            query = query.bind(run + argument);
        }
        let rows = query.fetch_all(&db).await.expect("rows");
        let got: Vec<(i64, i64)> = rows
            .iter()
            .map(|row| (row.get::<i64, _>("a"), row.get::<i64, _>("b")))
            .collect();
        let expected: Vec<(i64, i64)> = (0..ROWS)
            .map(|row| (run + 2 * row + 1, run + 2 * row))
            .collect();
        assert_eq!(got, expected, "run {run}");
    }
}

#[tokio::test]
async fn sqlite_many_numbered_placeholders_bind_each_run_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    many_numbered_placeholders_bind_each_run_alike(open(&sqlite_url(dir.path(), "many")).await)
        .await;
}

#[tokio::test]
async fn postgres_many_numbered_placeholders_bind_each_run_alike() {
    if let Some(url) = fresh_postgres_database("kit_many_placeholders").await {
        many_numbered_placeholders_bind_each_run_alike(open(&url).await).await;
    }
}

#[tokio::test]
async fn sqlite_files_are_set_up_for_small_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let db = open(&sqlite_url(dir.path(), "settings")).await;
    let number = |pragma: &'static str| {
        let db = &db;
        async move {
            sqlx::query_scalar::<_, i64>(pragma)
                .fetch_one(db)
                .await
                .expect(pragma)
        }
    };
    assert_eq!(number("PRAGMA page_size").await, 1024);
    // 0: SQLite's automatic checkpoint is replaced by the checkpointer's WAL hook (it would
    // read 1000, SQLite's default, without it).
    assert_eq!(number("PRAGMA wal_autocheckpoint").await, 0);
    assert_eq!(number("PRAGMA temp_store").await, 2, "2 is MEMORY");
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&db)
        .await
        .expect("journal mode");
    assert_eq!(journal, "wal");
    db.close().await;
}

/// On SQLite, a transaction left open on the one connection (a `BEGIN` sent outside
/// `Transaction`) is rolled back at the next checkout instead of swallowing its statements.
#[tokio::test]
async fn sqlite_transaction_left_open_is_rolled_back_at_the_next_checkout() {
    let dir = tempfile::tempdir().expect("dir");
    let db = open(&sqlite_url(dir.path(), "left_open")).await;
    {
        let mut connection = db.connection().await.expect("connection");
        sqlx::query("BEGIN")
            .execute(&mut connection)
            .await
            .expect("begin");
        insert(&mut connection, 1, "never committed").await;
    }
    insert(&db, 2, "committed").await;
    assert_eq!(
        count(&db).await,
        1,
        "only the statement after the checkout counts"
    );
    db.close().await;
}

/// Every connection the server drops (a restart, an administrator) is replaced: statements and
/// transactions work again once the lent connections have gone back to sqlx's pool.
#[tokio::test]
async fn postgres_connections_the_server_dropped_are_replaced() {
    let Some(url) = fresh_postgres_database("storage_dropped").await else {
        return;
    };
    let db = open(&url).await;
    // Several connections out at once, so more than one sits idle in the lender afterwards.
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| db.connection())).await;
    drop(held);
    assert_eq!(count(&db).await, 0);

    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("side connection");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&side)
    .await
    .expect("terminate");
    assert!(terminated >= 1, "the database's connections were dropped");

    // Lent connections go back to sqlx's pool (and the broken ones are replaced) a second
    // after they were taken; the rest of the bound is for reconnecting on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut failures = 0;
    loop {
        let statement = sqlx::query(
            "INSERT INTO notes (id, body) VALUES (1000, 'after') ON CONFLICT (id) DO NOTHING",
        )
        .execute(&db)
        .await;
        let transaction = async {
            let mut connection = db.connection().await?;
            let mut tx = connection.begin().await?;
            sqlx::query("UPDATE notes SET body = 'again' WHERE body = 'after'")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        if statement.is_ok() && transaction.is_ok() {
            break;
        }
        failures += 1;
        assert!(
            Instant::now() < deadline,
            "still failing after {failures} tries: {statement:?} {transaction:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&db).await, 1);
    db.close().await;
    side.close().await;
}

/// On SQLite a task that asks for the connection while it holds it (a bug) gets an error after
/// the checkout timeout instead of waiting forever.
#[tokio::test]
async fn sqlite_checkout_while_holding_the_connection_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(&sqlite_url(dir.path(), "notes")).await;
    let held = db.connection().await.expect("connection");
    let nested = sqlx::query("SELECT 1").execute(&db).await;
    assert!(
        matches!(nested, Err(sqlx::Error::PoolTimedOut)),
        "{nested:?}"
    );
    drop(held);
    assert_eq!(
        count(&db).await,
        0,
        "the connection serves again once released"
    );
}

/// A transaction dropped without commit (an error or a cancelled request) releases its row
/// locks at once on PostgreSQL, though its connection is not used again: another session can
/// update the row it had updated.
#[tokio::test]
async fn postgres_transaction_dropped_without_commit_releases_its_locks() {
    let Some(url) = fresh_postgres_database("storage_rollback").await else {
        return;
    };
    let db = open(&url).await;
    insert(&db, 1, "one").await;
    {
        let mut connection = db.connection().await.expect("connection");
        let mut tx = connection.begin().await.expect("begin");
        sqlx::query("UPDATE notes SET body = 'locked' WHERE id = 1")
            .execute(&mut *tx)
            .await
            .expect("update in a transaction");
    }
    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("side connection");
    let mut other = side.acquire().await.expect("other session");
    sqlx::query("SET lock_timeout = '3s'")
        .execute(&mut *other)
        .await
        .expect("lock timeout");
    let updated = sqlx::query("UPDATE notes SET body = 'other' WHERE id = 1")
        .execute(&mut *other)
        .await
        .expect("the dropped transaction's row lock is released")
        .rows_affected();
    assert_eq!(updated, 1);
    drop(other);
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&db)
        .await
        .expect("body");
    assert_eq!(
        body, "other",
        "the dropped transaction's update was rolled back"
    );
    side.close().await;
    db.close().await;
}
