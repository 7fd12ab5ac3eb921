//! Benchmark (ignored by default; prints figures, asserts nothing about speed): what a SQL
//! statement and a write transaction cost on the embedded profile's SQLite path, through the
//! pool (as the services run them: `fetch_optional(db.pool())`, `db.pool().begin()`) and on a
//! connection held throughout.
//!
//! Every statement is a message to the thread sqlx runs the connection on and a wake-up back;
//! every pool checkout adds sqlx's test of the connection on its release (a ping: one more round
//! trip to that thread). The checkout runs about 69 statements per order, so these figures,
//! times those counts, are the part of the checkout's CPU a different SQLite access path could
//! save (docs/performance.md, fifth round). Run it the way a service runs, on one CPU:
//!
//! ```sh
//! taskset -c 0 cargo test --release -p bazaar-kit --test sqlite_round_trip -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use bazaar_kit::storage::testing::sqlite_url;
use bazaar_kit::storage::Database;
use sqlx::migrate::Migrator;

const STATEMENTS: usize = 20_000;

/// Context switches of all this process's threads so far.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches"))
                .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

struct Sample {
    started: Instant,
    cpu: Duration,
    switches: u64,
}

impl Sample {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: bazaar_kit::process_cpu::own(),
            switches: context_switches(),
        }
    }

    fn report(self, what: &str) {
        let (elapsed, cpu) = (
            self.started.elapsed(),
            bazaar_kit::process_cpu::own() - self.cpu,
        );
        let switches = context_switches() - self.switches;
        println!(
            "{what}: {STATEMENTS} statements in {:.0} ms, {:.1} µs wall and {:.1} µs CPU per \
             statement, {:.2} context switches per statement",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e6 / STATEMENTS as f64,
            cpu.as_secs_f64() * 1e6 / STATEMENTS as f64,
            switches as f64 / STATEMENTS as f64,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_sqlite_statement_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The services' own settings: one connection, WAL, the same pragmas.
    let db = Database::open(&sqlite_url(dir.path(), "bench"), &Migrator::DEFAULT)
        .await
        .expect("database");
    sqlx::raw_sql(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, value TEXT NOT NULL); \
         INSERT INTO items (id, value) VALUES (1, 'one'), (2, 'two'), (3, 'three');",
    )
    .execute(db.pool())
    .await
    .expect("table");

    // As the services run them, each through the pool: a prepared lookup by primary key, and
    // a write transaction (BEGIN, one insert, COMMIT).
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        lookup(db.pool(), i).await;
    }
    sample.report("one statement per round trip, through the pool");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        insert_and_commit(db.pool().begin().await.expect("begin"), 1_000 + i).await;
    }
    sample.report("transactions (BEGIN, INSERT, COMMIT), through the pool");

    // The same on the pool's one connection, held throughout (no checkout per use).
    let mut connection = db.pool().acquire().await.expect("connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        lookup(&mut *connection, i).await;
    }
    sample.report("one statement per round trip, on one connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let tx = sqlx::Connection::begin(&mut *connection)
            .await
            .expect("begin");
        insert_and_commit(tx, 1_000_000 + i).await;
    }
    sample.report("transactions (BEGIN, INSERT, COMMIT), on one connection");
}

/// Reads one of the three rows by primary key, as a service's lookup does.
async fn lookup<'e>(executor: impl sqlx::Executor<'e, Database = sqlx::Any>, i: usize) {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM items WHERE id = $1")
        .bind((i % 3 + 1) as i64)
        .fetch_optional(executor)
        .await
        .expect("lookup");
    assert!(value.is_some());
}

/// Inserts a row in `tx` and commits it.
async fn insert_and_commit(mut tx: sqlx::Transaction<'_, sqlx::Any>, id: usize) {
    sqlx::query("INSERT INTO items (id, value) VALUES ($1, 'new')")
        .bind(id as i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
}
