//! Storage: a service's database, queried with `sqlx` over its `Any` types, so the same
//! migrations and queries run on SQLite (the embedded default, in WAL mode, one connection run
//! on the calling thread by [`sqlite`]) and PostgreSQL (scale-out, `sqlx`'s driver, connections
//! lent out of a `sqlx` pool). [`Connection`] and [`Transaction`] are this module's own, so that
//! one executor type serves both engines.
//!
//! Queries use `$1`-style placeholders, which both engines accept, and only portable types:
//! `TEXT`, `BIGINT` (times as Unix milliseconds), `DOUBLE PRECISION`. A `BOOLEAN` column can be
//! written and filtered on both, but the `Any` driver cannot *read* one from SQLite: select it as
//! `CASE WHEN flag THEN 1 ELSE 0 END`, or store flags as `BIGINT` 0/1.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use sqlx::any::{
    AnyConnectOptions, AnyPoolOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTransactionManager,
    AnyTypeInfo,
};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{
    Any, AnyConnection, AnyPool, ConnectOptions, Connection as _, Either, Executor,
    TransactionManager,
};

pub(crate) mod checkpoint;
mod sqlite;
use sqlite::Sqlite;

/// Which engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Engine::Postgres)
        } else {
            Err(format!(
                "unsupported database URL scheme in `{}`: use sqlite:// or postgres://",
                redact(url)
            ))
        }
    }
}

/// A service's database.
#[derive(Clone, Debug)]
pub struct Database {
    access: Access,
    engine: Engine,
    /// Whose turn it is to write (SQLite only), shared by every clone: see
    /// [`Database::write_turn`].
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// How long a query waits for a connection before failing.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`Database`] reaches its engine.
#[derive(Clone, Debug)]
enum Access {
    /// PostgreSQL: `sqlx`'s pool of network connections, lent out without its ping per use.
    Pool(Arc<Lender>),
    /// SQLite: one connection. SQLite runs one writer at a time anyway, and in WAL mode a
    /// connection drops its whole page cache whenever another connection has committed since its
    /// last transaction, so with several connections under load nearly every transaction began by
    /// reading its pages again from the file (a system call each). One connection keeps its cache,
    /// and a service pinned to one CPU (`bazaar up`) gained nothing from running statements on
    /// several threads: a checkout took about 9% less CPU with one (docs/performance.md).
    ///
    /// That connection is held behind an async mutex, not in `sqlx`'s pool (whose ping of every
    /// connection returned to it cost as much CPU as the statement it followed), and runs its
    /// statements on the thread that calls it, not on a thread of its own as `sqlx`'s driver
    /// does (see [`sqlite`]; `crates/kit/tests/sqlite_round_trip.rs` measures both). Code must
    /// never query the database while it holds a transaction or a [`Connection`]: with one
    /// connection it would wait for itself until the checkout times out.
    ///
    /// Taken in turn (tokio's mutex is fair: first come, first served); `None` once
    /// [closed](Database::close).
    Held(Arc<tokio::sync::Mutex<Option<Sqlite>>>),
}

/// Connections per PostgreSQL database: ten services' pools fill the server's default 100.
const POSTGRES_CONNECTIONS: usize = 10;

/// How long a PostgreSQL connection may be lent out again and again before it goes back to
/// `sqlx`'s pool, which tests it (and replaces it if the server went away).
const RECYCLE_AFTER: Duration = Duration::from_secs(1);

/// PostgreSQL connections taken from `sqlx`'s pool and lent to one user at a time between
/// visits to it.
///
/// `sqlx` pings a connection before lending it and after it comes back (not configurable in
/// sqlx 0.8): network round trips per use that cost the service and the server as much as the
/// statement in between (`crates/kit/tests/sqlite_round_trip.rs`, PostgreSQL variant). Kept out
/// of the pool, a connection serves use after use. At each checkout every idle connection taken
/// [`RECYCLE_AFTER`] ago or earlier goes back (to be tested, and closed if broken, or closed by
/// the pool's idle timeout once the service is quiet) and the checkout takes a fresh one, so a
/// connection the server dropped fails for about that long at most.
///
/// The other thing sqlx's ping on return does, sending the `ROLLBACK` that a transaction
/// dropped without commit left queued in the connection's buffer, must not wait for the
/// connection's next use (its locks would be held meanwhile): such a connection goes straight
/// back to the pool, whose ping sends it.
#[derive(Debug)]
struct Lender {
    pool: AnyPool,
    /// One permit per connection the pool may open: a checkout holds one, so a connection is
    /// always lent or idle here, or obtainable from the pool without waiting for this lender.
    turns: Arc<tokio::sync::Semaphore>,
    /// The idle connections, most recently returned last; `None` once closed (checked and set
    /// under this lock, so a connection cannot be put back after [`Lender::close`] emptied it).
    idle: std::sync::Mutex<Option<Vec<Lent>>>,
}

/// A connection taken out of `sqlx`'s pool, and when it was taken.
#[derive(Debug)]
struct Lent {
    connection: PoolConnection<Any>,
    taken: std::time::Instant,
}

impl Lender {
    fn idle(&self) -> std::sync::MutexGuard<'_, Option<Vec<Lent>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lend(self: &Arc<Self>) -> Result<LentConnection, sqlx::Error> {
        let turn = tokio::time::timeout(CHECKOUT_TIMEOUT, self.turns.clone().acquire_owned())
            .await
            .map_err(|_elapsed| sqlx::Error::PoolTimedOut)?
            .map_err(|_closed| sqlx::Error::PoolClosed)?;
        let (fresh, stale) = {
            let mut idle = self.idle();
            let Some(idle) = idle.as_mut() else {
                return Err(sqlx::Error::PoolClosed);
            };
            let stale: Vec<Lent> = idle
                .extract_if(.., |lent| lent.taken.elapsed() >= RECYCLE_AFTER)
                .collect();
            // The most recently returned connection first: its buffers are warm.
            (idle.pop(), stale)
        };
        // Back to the pool (which tests them) before asking it for one: they count against
        // its size until then.
        drop(stale);
        let lent = match fresh {
            Some(lent) => lent,
            None => Lent {
                connection: self.pool.acquire().await?,
                taken: std::time::Instant::now(),
            },
        };
        Ok(LentConnection {
            lent: Some(lent),
            lender: self.clone(),
            _turn: turn,
        })
    }

    async fn close(&self) {
        self.turns.close();
        let idle = self.idle().take();
        drop(idle);
        self.pool.close().await;
    }
}

/// A PostgreSQL connection lent by a [`Lender`]; it goes back to the lender when dropped.
pub struct LentConnection {
    lent: Option<Lent>,
    lender: Arc<Lender>,
    /// Released after `drop` has put the connection back (fields drop after the body).
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for LentConnection {
    fn drop(&mut self) {
        let Some(lent) = self.lent.take() else {
            return;
        };
        // A transaction dropped without commit queued its ROLLBACK in the connection's buffer:
        // the pool's ping sends it now (dropping the `Lent` returns it to the pool).
        if sqlx::Connection::should_flush(&*lent.connection) {
            return;
        }
        if let Some(idle) = self.lender.idle().as_mut() {
            idle.push(lent);
        }
    }
}

/// A connection taken from a [`Database`] for a transaction or several statements; it goes
/// back when dropped. `&mut connection` is an executor; [`Connection::begin`] starts a
/// [`Transaction`].
pub struct Connection {
    inner: Inner,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self.inner {
            Inner::Pooled(_) => Engine::Postgres,
            Inner::Held(_) => Engine::Sqlite,
        };
        f.debug_struct("Connection")
            .field("engine", &engine)
            .finish_non_exhaustive()
    }
}

enum Inner {
    Pooled(LentConnection),
    Held(tokio::sync::OwnedMappedMutexGuard<Option<Sqlite>, Sqlite>),
}

impl Connection {
    /// Begins a transaction on this connection; it rolls back if dropped uncommitted.
    pub async fn begin(&mut self) -> Result<Transaction<'_>, sqlx::Error> {
        match &mut self.inner {
            Inner::Pooled(connection) => {
                AnyTransactionManager::begin(lent_mut(&mut connection.lent), None).await?
            }
            Inner::Held(sqlite) => sqlite.begin()?,
        }
        Ok(Transaction {
            connection: self,
            open: true,
        })
    }

    /// Whether a transaction (or savepoint) is open on this connection.
    pub fn in_transaction(&self) -> bool {
        match &self.inner {
            Inner::Pooled(connection) => connection.lent.as_ref().is_some_and(|lent| {
                AnyTransactionManager::get_transaction_depth(&lent.connection) > 0
            }),
            Inner::Held(sqlite) => sqlite.in_transaction(),
        }
    }

    /// Runs `query` on SQLite, here and now, keeping at most `max_rows` rows.
    fn run_sqlite<'q, E>(
        sqlite: &mut Sqlite,
        mut query: E,
        max_rows: usize,
    ) -> Result<Vec<Either<AnyQueryResult, AnyRow>>, sqlx::Error>
    where
        E: 'q + sqlx::Execute<'q, Any>,
    {
        let sql = query.sql();
        let persistent = query.persistent();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        sqlite.run(sql, arguments, persistent, max_rows)
    }
}

/// A transaction on a [`Connection`]: dereferences to it, so `&mut *transaction` is an
/// executor. Rolled back when dropped without [`Transaction::commit`].
pub struct Transaction<'c> {
    connection: &'c mut Connection,
    open: bool,
}

impl Transaction<'_> {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match &mut self.connection.inner {
            Inner::Pooled(connection) => {
                AnyTransactionManager::commit(lent_mut(&mut connection.lent)).await?
            }
            Inner::Held(sqlite) => sqlite.commit()?,
        }
        self.open = false;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        match &mut self.connection.inner {
            Inner::Pooled(connection) => {
                AnyTransactionManager::rollback(lent_mut(&mut connection.lent)).await?
            }
            Inner::Held(sqlite) => sqlite.rollback()?,
        }
        self.open = false;
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        match &mut self.connection.inner {
            // Queues the ROLLBACK in the connection's buffer, as sqlx's own transaction does:
            // the lender sends such a connection back to the pool, whose ping sends it.
            Inner::Pooled(connection) => {
                AnyTransactionManager::start_rollback(lent_mut(&mut connection.lent))
            }
            // A local call, so done at once. If it fails, the next checkout rolls back what is
            // left open (see `Database::connection`).
            Inner::Held(sqlite) => {
                if let Err(error) = sqlite.rollback() {
                    tracing::warn!(%error, "rolling back a dropped transaction");
                }
            }
        }
    }
}

impl Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
    }
}

fn lent_mut(lent: &mut Option<Lent>) -> &mut AnyConnection {
    &mut lent.as_mut().expect("lent until dropped").connection
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Url(String),
    #[error("cannot create the data directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Database {
    /// Opens (creating if needed) the database at `url` and applies `migrator`.
    pub async fn open(url: &str, migrator: &Migrator) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let engine: Engine = url.parse().map_err(StorageError::Url)?;
        if engine == Engine::Sqlite {
            if let Some(parent) = sqlite_path(url).and_then(|p| p.parent().map(|p| p.to_owned())) {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(&parent).map_err(|source| StorageError::Directory {
                        path: parent.display().to_string(),
                        source,
                    })?;
                }
            }
        }
        let connect_error = |source| StorageError::Connect {
            url: redact(url),
            source,
        };
        let access = match engine {
            Engine::Sqlite => {
                if sqlite_path(url).is_none() {
                    return Err(StorageError::Url(format!(
                        "`{}` names no file: in-memory SQLite databases are not supported",
                        redact(url)
                    )));
                }
                // sqlx creates the file (honouring the URL's options) and migrates it, then
                // the connection the service uses opens it (see [`sqlite`]).
                let mut migrating = AnyConnectOptions::from_str(url)
                    .map_err(connect_error)?
                    .connect()
                    .await
                    .map_err(connect_error)?;
                // WAL lets readers in other processes (`bazaar reconcile`) proceed during a
                // write, and is kept in the file. A new file gets 1 KiB pages (set before its
                // first table; an existing file keeps its own): a commit writes every page it
                // changed to the log whole, and the services' writes change a few rows in
                // several tables and indexes, so smaller pages halve the bytes written per
                // checkout (docs/performance.md, tenth round).
                migrating
                    .execute(
                        "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; \
                         PRAGMA busy_timeout = 5000;",
                    )
                    .await
                    .map_err(connect_error)?;
                migrator.run_direct(&mut migrating).await?;
                migrating.close().await.map_err(connect_error)?;
                // The file sqlx opened (it decodes the URL's path).
                let file = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .map_err(connect_error)?
                    .get_filename()
                    .to_owned();
                let connection = Sqlite::open(&file).map_err(connect_error)?;
                Access::Held(Arc::new(tokio::sync::Mutex::new(Some(connection))))
            }
            Engine::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS as u32)
                    .acquire_timeout(CHECKOUT_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(connect_error)?;
                migrator.run(&pool).await?;
                Access::Pool(Arc::new(Lender {
                    pool,
                    turns: Arc::new(tokio::sync::Semaphore::new(POSTGRES_CONNECTIONS)),
                    idle: std::sync::Mutex::new(Some(Vec::new())),
                }))
            }
        };
        let writer = (engine == Engine::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(Self {
            access,
            engine,
            writer,
        })
    }

    /// Waits for this process's turn to write, on SQLite; held until dropped (on PostgreSQL,
    /// which locks rows, writers run side by side and this returns at once).
    ///
    /// SQLite lets one writer in at a time. With several connections, a transaction that read
    /// and then wanted to write while another wrote failed with "database is locked" (and ran
    /// again) or polled with growing sleeps; queued here instead, each write transaction
    /// started the moment the previous one committed. Since the one connection is held outside
    /// a pool (see `Access::Held`), this process's transactions already run one at a time, so
    /// the turn is an uncontended lock in front of the connection's; it still marks every write
    /// path. Take it before the connection and hold it to the commit; never while holding the
    /// connection or another turn, so it cannot deadlock.
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writer {
            Some(writer) => Some(writer.lock().await),
            None => None,
        }
    }

    /// A connection of this database for a transaction or several statements in a row, waiting
    /// for one to be free; for a single statement, pass `&database` as the executor instead.
    pub async fn connection(&self) -> Result<Connection, sqlx::Error> {
        match &self.access {
            Access::Pool(lender) => lender.lend().await.map(|lent| Connection {
                inner: Inner::Pooled(lent),
            }),
            Access::Held(connection) => {
                // Bounded like the pool's checkout, so a task that asks while it holds the
                // connection (a bug) fails loudly instead of waiting forever.
                let held = tokio::time::timeout(CHECKOUT_TIMEOUT, connection.clone().lock_owned())
                    .await
                    .map_err(|_elapsed| sqlx::Error::PoolTimedOut)?;
                let mut held = tokio::sync::OwnedMutexGuard::try_map(held, Option::as_mut)
                    .map_err(|_closed| sqlx::Error::PoolClosed)?;
                // A transaction the last user left open (a `BEGIN` outside `Transaction`, or a
                // rollback that failed) must not swallow this user's statements.
                if held.in_transaction() {
                    tracing::warn!("rolling back a transaction left open on the connection");
                    while held.in_transaction() {
                        held.rollback()?;
                    }
                }
                Ok(Connection {
                    inner: Inner::Held(held),
                })
            }
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(self)
            .await
            .map(|_: AnyQueryResult| ())
            .map_err(|e| format!("database unreachable: {e}"))
    }

    /// Closes the database (every clone): the pool's connections, or the held connection once
    /// its current user is done. Queries afterwards fail with `PoolClosed`.
    pub async fn close(&self) {
        match &self.access {
            Access::Pool(lender) => lender.close().await,
            // Dropping the connection closes it (rusqlite finalizes its statements first).
            Access::Held(connection) => drop(connection.lock().await.take()),
        }
    }
}

/// `&mut connection` runs statements on that connection: PostgreSQL's through `sqlx`, SQLite's
/// on the calling thread (see [`sqlite`]), each when the returned future is first polled.
impl<'c> Executor<'c> for &'c mut Connection {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => lent_mut(&mut connection.lent).fetch_many(query),
            Inner::Held(sqlite) => {
                stream::once(async move { Connection::run_sqlite(sqlite, query, usize::MAX) })
                    .map_ok(|results| stream::iter(results.into_iter().map(Ok)))
                    .try_flatten()
                    .boxed()
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => lent_mut(&mut connection.lent).fetch_optional(query),
            Inner::Held(sqlite) => Box::pin(async move {
                let results = Connection::run_sqlite(sqlite, query, 1)?;
                Ok(results.into_iter().find_map(Either::right))
            }),
        }
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<AnyQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => lent_mut(&mut connection.lent).execute(query),
            Inner::Held(sqlite) => Box::pin(async move {
                let results = Connection::run_sqlite(sqlite, query, usize::MAX)?;
                Ok(results.into_iter().filter_map(Either::left).fold(
                    AnyQueryResult::default(),
                    |mut total, result| {
                        total.extend(Some(result));
                        total
                    },
                ))
            }),
        }
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => lent_mut(&mut connection.lent).fetch_all(query),
            Inner::Held(sqlite) => Box::pin(async move {
                let results = Connection::run_sqlite(sqlite, query, usize::MAX)?;
                Ok(results.into_iter().filter_map(Either::right).collect())
            }),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => {
                lent_mut(&mut connection.lent).prepare_with(sql, parameters)
            }
            Inner::Held(_) => Box::pin(async { Err(unsupported_on_sqlite("prepare")) }),
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.inner {
            Inner::Pooled(connection) => lent_mut(&mut connection.lent).describe(sql),
            Inner::Held(_) => Box::pin(async { Err(unsupported_on_sqlite("describe")) }),
        }
    }
}

/// Statements are prepared and cached by the SQLite connection itself; nothing in bazaar
/// prepares or describes one by hand.
fn unsupported_on_sqlite(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "{what} is not offered on the embedded SQLite connection"
    ))
}

/// `&database` runs a single statement, on a connection taken for that statement alone (like
/// `&pool` in `sqlx`, without the pool's ping when the connection goes back).
impl<'d> Executor<'d> for &'d Database {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        // The results are gathered while the connection is held, then streamed: a stream that
        // held the connection would keep it from every other statement until fully read.
        self.connection()
            .and_then(|mut connection| async move {
                (&mut connection)
                    .fetch_many(query)
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_ok(|results| stream::iter(results.into_iter().map(Ok)))
            .try_flatten_stream()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        Box::pin(async move { (&mut self.connection().await?).fetch_optional(query).await })
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<AnyQueryResult, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        Box::pin(async move { (&mut self.connection().await?).execute(query).await })
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<AnyRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        Box::pin(async move { (&mut self.connection().await?).fetch_all(query).await })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'd: 'e,
    {
        Box::pin(async move {
            (&mut self.connection().await?)
                .prepare_with(sql, parameters)
                .await
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'd: 'e,
    {
        Box::pin(async move { (&mut self.connection().await?).describe(sql).await })
    }
}

fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Unix time in milliseconds, the portable timestamp stored in every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Whether `error` means a concurrent writer got there first (a unique violation on a
/// sequence, or SQLite's busy/locked answers): the transaction should be rolled back and run
/// again from the start.
pub fn is_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("UNIQUE")
                || db.message().contains("database is locked")
                || db.message().contains("database table is locked")
                // PostgreSQL serialization failure and deadlock: both ask for a retry.
                || matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

/// Runs `transaction` (which begins, works and commits) again while it fails with a
/// [conflict](is_conflict), up to 20 times with a short growing pause. Use it around every
/// transaction that appends to a sequence (outbox, audit log) or reads then writes on SQLite.
pub async fn retry_conflicts<T, F, Fut>(mut transaction: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt: u64 = 0;
    loop {
        match transaction().await {
            Err(error) if attempt < 20 && is_conflict(&error) => {
                attempt += 1;
                // Jitter keeps two retrying writers from colliding in lockstep.
                let pause = attempt.min(10) * 2 + fastrand::u64(0..=attempt.min(10) * 2);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            other => return other,
        }
    }
}

/// Helpers for tests that prove the PostgreSQL profile.
pub mod testing {
    use super::*;

    /// Environment variable naming the PostgreSQL server tests may use.
    pub const POSTGRES_ENV: &str = "BAZAAR_TEST_POSTGRES_URL";

    /// Creates a fresh, uniquely named database on the server `BAZAAR_TEST_POSTGRES_URL` points
    /// at and returns its URL; `None` (after saying so) when the variable is unset.
    pub async fn fresh_postgres_database(label: &str) -> Option<String> {
        let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
            eprintln!("{POSTGRES_ENV} is not set: skipping the PostgreSQL variant of {label}");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!(
            "bazaar_test_{}_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        )
        .to_lowercase();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is set but unreachable: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await;
        let base = match admin_url.rfind('/') {
            Some(slash) if slash > admin_url.find("://").map_or(0, |i| i + 2) => {
                &admin_url[..slash]
            }
            _ => admin_url.as_str(),
        };
        Some(format!("{base}/{name}"))
    }

    /// A fresh SQLite database file in `dir`.
    pub fn sqlite_url(dir: &std::path::Path, name: &str) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            dir.join(format!("{name}.db")).display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://bob:secret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn rejects_unknown_schemes() {
        assert!("mysql://x".parse::<Engine>().is_err());
        assert_eq!("sqlite://a".parse::<Engine>(), Ok(Engine::Sqlite));
    }
}
