//! The consuming side, common to both transports: a handler runs inside a transaction of the
//! subscriber's own database that also records the event id in an inbox (and, on the feed
//! transport, advances the cursor), so each event takes effect exactly once (G3) however often
//! it is delivered. Also the lease that lets one instance of a subscriber group read a feed at a
//! time.

use std::future::Future;
use std::pin::Pin;

use bazaar_kit::context::{self, RequestContext};
use bazaar_kit::storage::{is_conflict, now_ms, retry_conflicts, Database};
use sqlx::AnyConnection;

use crate::envelope::EventEnvelope;

/// Why a handler could not apply an event; the event is retried later.
#[derive(Debug)]
pub struct HandlerError(String);

impl HandlerError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self(format!("database: {error}"))
    }
}

impl From<anyhow::Error> for HandlerError {
    fn from(error: anyhow::Error) -> Self {
        Self(format!("{error:#}"))
    }
}

/// What [`Handler::handle`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// Applies events of one source. Write only through `tx`: it commits together with the inbox
/// record, which is what makes a redelivery harmless. Ignore event types you do not handle.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a>;
}

const TABLES_SQL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS consumer_cursors (grp TEXT NOT NULL, source TEXT NOT NULL, \
     position BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL, PRIMARY KEY (grp, source))",
    "CREATE TABLE IF NOT EXISTS consumer_inbox (grp TEXT NOT NULL, event_id TEXT NOT NULL, \
     source TEXT NOT NULL, handled_at_ms BIGINT NOT NULL, PRIMARY KEY (grp, event_id))",
    "CREATE TABLE IF NOT EXISTS consumer_leases (grp TEXT NOT NULL, source TEXT NOT NULL, \
     holder TEXT NOT NULL, expires_at_ms BIGINT NOT NULL, PRIMARY KEY (grp, source))",
];

/// Creates the consumer tables if needed.
pub async fn create_tables(db: &Database) -> Result<(), sqlx::Error> {
    for sql in TABLES_SQL {
        // Concurrent starts race on PostgreSQL's catalog even with IF NOT EXISTS: run it again.
        retry_conflicts(|| sqlx::query(sql).execute(db.pool())).await?;
    }
    Ok(())
}

/// Applies `event` once for `group`: `Ok(true)` when the handler ran and committed, `Ok(false)`
/// when the inbox says it already had.
pub async fn deliver(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    event: &EventEnvelope,
) -> Result<bool, HandlerError> {
    apply(db, group, handler, event, None).await
}

/// The cursor a feed transaction expects to move: the event only applies if the group's cursor
/// for `source` is still at `expected` (another instance that moved it wins).
pub(crate) struct CursorMove<'a> {
    pub source: &'a str,
    pub expected: i64,
}

/// The cursor moved under us: another instance consumed this feed.
const CURSOR_MOVED: &str = "cursor moved by another consumer";

pub(crate) async fn apply(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    event: &EventEnvelope,
    cursor: Option<CursorMove<'_>>,
) -> Result<bool, HandlerError> {
    let mut attempt = 0u64;
    loop {
        match apply_once(db, group, handler, event, cursor.as_ref()).await {
            Err(Attempt::Conflict(error)) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(%error, attempt, "consumer transaction conflicted; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(2 * attempt)).await;
            }
            Err(Attempt::Conflict(error)) => return Err(error.into()),
            Err(Attempt::Failed(error)) => return Err(error),
            Ok(applied) => return Ok(applied),
        }
    }
}

enum Attempt {
    Conflict(sqlx::Error),
    Failed(HandlerError),
}

impl From<sqlx::Error> for Attempt {
    fn from(error: sqlx::Error) -> Self {
        if is_conflict(&error) {
            Attempt::Conflict(error)
        } else {
            Attempt::Failed(error.into())
        }
    }
}

async fn apply_once(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    event: &EventEnvelope,
    cursor: Option<&CursorMove<'_>>,
) -> Result<bool, Attempt> {
    let mut tx = db.pool().begin().await?;
    let now = now_ms();
    if let Some(cursor) = cursor {
        // The write comes first so SQLite takes its write lock before anything is read.
        let moved = sqlx::query(
            "UPDATE consumer_cursors SET position = $1, updated_at_ms = $2 \
             WHERE grp = $3 AND source = $4 AND position = $5",
        )
        .bind(event.sequence)
        .bind(now)
        .bind(group)
        .bind(cursor.source)
        .bind(cursor.expected)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(Attempt::Failed(HandlerError::new(CURSOR_MOVED)));
        }
    }
    let recorded = sqlx::query(
        "INSERT INTO consumer_inbox (grp, event_id, source, handled_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (grp, event_id) DO NOTHING",
    )
    .bind(group)
    .bind(&event.id)
    .bind(&event.source)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let fresh = recorded.rows_affected() == 1;
    if fresh {
        // Continue the publisher's trace, so calls and events the handler makes join it.
        let mut headers = http::HeaderMap::new();
        if let Some(value) = event
            .traceparent
            .as_deref()
            .and_then(|t| http::HeaderValue::from_str(t).ok())
        {
            headers.insert("traceparent", value);
        }
        let mut request_context = RequestContext::from_headers(&headers);
        request_context.request_id = format!("event-{}", event.id);
        let outcome = context::scope(request_context, handler.handle(&mut tx, event)).await;
        if let Err(error) = outcome {
            return Err(Attempt::Failed(error));
        }
    }
    tx.commit().await?;
    Ok(fresh)
}

/// Forgets inbox records older than `older_than_ms` (Unix ms), so the inbox does not grow
/// forever. Safe once no copy of those events can still arrive: JetStream drops messages past
/// the retention and the feed transport's cursor never goes back.
pub(crate) async fn prune_inbox(db: &Database, older_than_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM consumer_inbox WHERE handled_at_ms < $1")
        .bind(older_than_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// The group's cursor for `source` (0 before the first event), created if missing.
pub(crate) async fn cursor(db: &Database, group: &str, source: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO consumer_cursors (grp, source, position, updated_at_ms) VALUES ($1, $2, 0, $3) \
         ON CONFLICT (grp, source) DO NOTHING",
    )
    .bind(group)
    .bind(source)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    sqlx::query_scalar("SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2")
        .bind(group)
        .bind(source)
        .fetch_one(db.pool())
        .await
}

/// Takes or renews the lease on (`group`, `source`) for `holder` until `ttl_ms` from now;
/// `false` when another live holder has it.
pub(crate) async fn lease(
    db: &Database,
    group: &str,
    source: &str,
    holder: &str,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let taken = sqlx::query(
        "INSERT INTO consumer_leases (grp, source, holder, expires_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (grp, source) DO UPDATE SET holder = excluded.holder, \
         expires_at_ms = excluded.expires_at_ms \
         WHERE consumer_leases.holder = excluded.holder OR consumer_leases.expires_at_ms < $5",
    )
    .bind(group)
    .bind(source)
    .bind(holder)
    .bind(now + ttl_ms)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Gives the lease up (on shutdown), so another instance takes over at once.
pub(crate) async fn release_lease(
    db: &Database,
    group: &str,
    source: &str,
    holder: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consumer_leases WHERE grp = $1 AND source = $2 AND holder = $3")
        .bind(group)
        .bind(source)
        .bind(holder)
        .execute(db.pool())
        .await?;
    Ok(())
}

pub(crate) fn is_cursor_moved(error: &HandlerError) -> bool {
    error.0 == CURSOR_MOVED
}
