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

/// CPU time of this process so far (user + system), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the command name.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

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
            cpu: process_cpu(),
            switches: context_switches(),
        }
    }

    fn report(self, what: &str) {
        let (elapsed, cpu) = (self.started.elapsed(), process_cpu() - self.cpu);
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
    let lookup = "SELECT value FROM items WHERE id = $1";

    // As a service reads: a prepared lookup by primary key, each through the pool.
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let value: Option<String> = sqlx::query_scalar(lookup)
            .bind((i % 3 + 1) as i64)
            .fetch_optional(db.pool())
            .await
            .expect("lookup");
        assert!(value.is_some());
    }
    sample.report("one statement per round trip, through the pool");

    // The same on one connection held throughout (no pool checkout), as inside a transaction.
    let mut connection = db.pool().acquire().await.expect("connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let value: Option<String> = sqlx::query_scalar(lookup)
            .bind((i % 3 + 1) as i64)
            .fetch_optional(&mut *connection)
            .await
            .expect("lookup");
        assert!(value.is_some());
    }
    sample.report("one statement per round trip, on one connection");
    drop(connection);

    // A write transaction as the services run them (BEGIN, one insert, COMMIT), through the
    // pool, then on a connection held throughout.
    let insert = "INSERT INTO items (id, value) VALUES ($1, 'new')";
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let mut tx = db.pool().begin().await.expect("begin");
        sqlx::query(insert)
            .bind(1_000 + i as i64)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
    }
    sample.report("transactions (BEGIN, INSERT, COMMIT), through the pool");
    let mut connection = db.pool().acquire().await.expect("connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let mut tx = sqlx::Connection::begin(&mut *connection)
            .await
            .expect("begin");
        sqlx::query(insert)
            .bind(1_000_000 + i as i64)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
    }
    sample.report("transactions (BEGIN, INSERT, COMMIT), on one connection");
}
