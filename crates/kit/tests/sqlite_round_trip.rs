//! Benchmark (ignored by default; prints figures, asserts nothing about speed): what a SQL
//! statement and a write transaction cost on the embedded profile's SQLite path: as the
//! services run them (`fetch_optional(&db)`, `db.connection()` then `begin()`), on a connection
//! held throughout, and through a `sqlx` pool of one connection (as they ran them until the
//! sixth round).
//!
//! Through `sqlx`'s SQLite driver every statement is a message to the thread it runs the
//! connection on and a wake-up back, and every pool checkout adds sqlx's test of the connection
//! on its release (a ping: one more round trip to that thread). `Database` holds its one
//! connection outside the pool (sixth round) and runs its statements on the calling thread
//! (seventh round). The checkout runs about 69 statements per order, so these figures, times
//! those counts, are the part of the checkout's CPU the access path decides
//! (docs/performance.md). Run it the way a service runs, on one CPU (with
//! `BAZAAR_TEST_POSTGRES_URL` set, the PostgreSQL variant runs too):
//!
//! ```sh
//! taskset -c 0 cargo test --release -p bazaar-kit --test sqlite_round_trip -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use bazaar_kit::storage::testing::sqlite_url;
use bazaar_kit::storage::Database;
use sqlx::any::AnyPoolOptions;
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

/// CPU time used so far by every PostgreSQL process on this machine (its backends rename
/// themselves, but keep `postgres` as the command name).
fn postgres_cpu() -> Duration {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = processes
        .filter_map(Result::ok)
        .filter_map(|process| std::fs::read_to_string(process.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| bazaar_kit::process_cpu::stat_ticks(&stat))
        .sum();
    Duration::from_millis(ticks * 1000 / bazaar_kit::process_cpu::TICKS_PER_SECOND)
}

struct Sample {
    started: Instant,
    cpu: Duration,
    switches: u64,
    postgres: Duration,
}

impl Sample {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: bazaar_kit::process_cpu::own(),
            switches: context_switches(),
            postgres: postgres_cpu(),
        }
    }

    /// Prints the figures per statement; with `with_server`, also the PostgreSQL server's CPU
    /// time over the sample.
    fn report(self, what: &str, with_server: bool) {
        let (elapsed, cpu) = (
            self.started.elapsed(),
            bazaar_kit::process_cpu::own() - self.cpu,
        );
        let switches = context_switches() - self.switches;
        let server = postgres_cpu().saturating_sub(self.postgres);
        println!(
            "{what}: {STATEMENTS} statements in {:.0} ms, {:.1} µs wall and {:.1} µs CPU per \
             statement, {:.2} context switches per statement",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e6 / STATEMENTS as f64,
            cpu.as_secs_f64() * 1e6 / STATEMENTS as f64,
            switches as f64 / STATEMENTS as f64,
        );
        if with_server {
            println!(
                "    and {:.1} µs of PostgreSQL's CPU per statement",
                server.as_secs_f64() * 1e6 / STATEMENTS as f64
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_sqlite_statement_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The former pool: one connection, no test before acquire (sqlx still pinged every
    // connection returned to it).
    let former_pool = AnyPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false);
    compare_access_paths("SQLite", &sqlite_url(dir.path(), "bench"), former_pool).await;
}

/// The same on PostgreSQL (when `BAZAAR_TEST_POSTGRES_URL` is set), where `Database` lends its
/// connections out of sqlx's pool between visits to it, and the former pool's pings, before
/// each checkout and after each return, were network round trips; the server's CPU is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: prints figures, asserts nothing about speed"]
async fn bench_postgres_statement_round_trip() {
    let Some(url) = bazaar_kit::storage::testing::fresh_postgres_database("round_trip").await
    else {
        return;
    };
    compare_access_paths(
        "PostgreSQL",
        &url,
        AnyPoolOptions::new().max_connections(10),
    )
    .await;
}

/// A prepared lookup by primary key and a write transaction (BEGIN, one insert, COMMIT), each
/// `STATEMENTS` times: as the services run them (`&Database`, `Database::connection`), on one
/// connection held throughout (no checkout per use), and through a sqlx pool built with
/// `former_pool`, as the services ran them until the sixth round.
async fn compare_access_paths(engine: &str, url: &str, former_pool: AnyPoolOptions) {
    let with_server = engine == "PostgreSQL";
    let report =
        |sample: Sample, what: &str| sample.report(&format!("{engine}: {what}"), with_server);
    // The services' own settings (on SQLite: one connection, WAL, the same pragmas).
    let db = Database::open(url, &Migrator::DEFAULT)
        .await
        .expect("database");
    sqlx::raw_sql(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, value TEXT NOT NULL); \
         INSERT INTO items (id, value) VALUES (1, 'one'), (2, 'two'), (3, 'three');",
    )
    .execute(&db)
    .await
    .expect("table");

    let sample = Sample::start();
    for i in 0..STATEMENTS {
        lookup(&db, i).await;
    }
    report(sample, "one statement per round trip, through `&Database`");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let mut connection = db.connection().await.expect("connection");
        let mut tx = connection.begin().await.expect("begin");
        insert(&mut *tx, 1_000 + i).await;
        tx.commit().await.expect("commit");
    }
    report(sample, "transactions, through `Database::connection`");

    let mut connection = db.connection().await.expect("connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        lookup(&mut connection, i).await;
    }
    report(sample, "one statement per round trip, on one connection");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let mut tx = connection.begin().await.expect("begin");
        insert(&mut *tx, 1_000_000 + i).await;
        tx.commit().await.expect("commit");
    }
    report(sample, "transactions, on one connection");
    drop(connection);

    // `db` stays open until the end: on PostgreSQL, backends that exit during a sample would
    // take their CPU time out of the server's total.
    let pool = former_pool.connect(url).await.expect("pool");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        lookup(&pool, i).await;
    }
    report(sample, "one statement per round trip, through a sqlx pool");
    let sample = Sample::start();
    for i in 0..STATEMENTS {
        let mut tx = pool.begin().await.expect("begin");
        insert(&mut *tx, 2_000_000 + i).await;
        tx.commit().await.expect("commit");
    }
    report(sample, "transactions, through a sqlx pool");
    pool.close().await;
    db.close().await;
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

/// Inserts a row (in the caller's transaction).
async fn insert<'e>(executor: impl sqlx::Executor<'e, Database = sqlx::Any>, id: usize) {
    sqlx::query("INSERT INTO items (id, value) VALUES ($1, 'new')")
        .bind(id as i64)
        .execute(executor)
        .await
        .expect("insert");
}
