//! The consuming side, common to both transports: applying events exactly once in effect (G3),
//! and the lease that lets one instance of a subscriber group read a source at a time.
//!
//! **Applying, in batches.** [`apply_batch`] applies a run of events of one source in ONE
//! transaction of the subscriber's own database: on the feed, one compare-and-set moves the
//! group's cursor from the position before the batch to the batch's last sequence (so the cursor
//! always moves with the effects, and a second reader that got there first makes the whole batch
//! fail with [`Failure::CursorMoved`]); one statement records every event id in the inbox and
//! returns the ids it had not seen; the handler runs for each of those, in the order given
//! (sequence order), all through the same transaction; one commit. An event the inbox already
//! had takes no second effect, however often it is delivered.
//!
//! When the handler fails on the k-th event, nothing of the batch commits: the transaction is
//! rolled back, and the events before the failing one are applied again as a smaller batch, so
//! they keep their progress while neither the failing event nor anything after it takes effect.
//! The caller then retries from the failing event with backoff. A conflict (SQLite busy, a
//! PostgreSQL serialization failure or deadlock) reruns the same batch, up to
//! [`CONFLICT_RETRIES`] times. [`deliver`] is the one-event case.
//!
//! **Lease.** [`Lease`] is a row per (group, source) naming the holder and an expiry
//! ([`LEASE_TTL_MS`] after its last write). The holder does not write it on every poll: only once
//! a third of the TTL has passed since its last write (or when asked to check, after the cursor
//! moved under it), and otherwise answers from memory. On the feed the lease keeps a second
//! instance from reading; the cursor's compare-and-set is what guarantees that no event is
//! applied by two readers, so an instance that lost the lease without knowing it yet cannot do
//! harm. Another instance takes a lease over once it lapsed (its holder died) or was released
//! (its holder stopped).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bazaar_kit::context::{self, RequestContext};
use bazaar_kit::storage::{is_conflict, now_ms, retry_conflicts, Database};

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
///
/// Several events may be applied in one transaction, one call per event in sequence order; when
/// a call fails, the whole transaction is rolled back and the events before it are applied again
/// in a new one. So do nothing outside `tx` that must not happen twice.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        tx: &'a mut bazaar_kit::storage::Connection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a>;
}

/// How long a lease lasts without renewal: the takeover delay after an instance dies.
pub const LEASE_TTL_MS: i64 = 15_000;

/// How many times a batch that conflicted is run again before the conflict is reported.
pub(crate) const CONFLICT_RETRIES: u64 = 20;

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
        retry_conflicts(|| sqlx::query(sql).execute(db)).await?;
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
    let applied = apply_batch(db, group, handler, std::slice::from_ref(event), None).await;
    match applied.failure {
        None => Ok(applied.fresh == 1),
        Some(Failure::Handler(error)) => Err(error),
        Some(Failure::Database(error)) => Err(error.into()),
        // Only a feed batch moves a cursor.
        Some(Failure::CursorMoved) => Err(HandlerError::new("cursor moved by another consumer")),
    }
}

/// The cursor a feed batch moves: the batch only applies if the group's cursor for `source` is
/// still at `expected` (another instance that moved it wins), and leaves it at the batch's last
/// sequence.
pub(crate) struct CursorMove<'a> {
    pub source: &'a str,
    pub expected: i64,
}

/// What [`apply_batch`] did.
#[derive(Debug)]
pub(crate) struct Applied {
    /// How many events, from the first, are applied now (by this call, or earlier as the inbox
    /// says). On the feed, the cursor is at the last of them.
    pub count: usize,
    /// How many of those the handler ran for in this call.
    pub fresh: usize,
    /// Why `events[count]` and those after it were not applied.
    pub failure: Option<Failure>,
}

/// Why a batch stopped short.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The handler failed on `events[count]`: retry from it later.
    Handler(HandlerError),
    /// The cursor was not at the expected position: another instance moved it.
    CursorMoved,
    /// The database failed (or a conflict outlasted the retries).
    Database(sqlx::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Handler(error) => write!(f, "handler failed: {error}"),
            Failure::CursorMoved => f.write_str("cursor moved by another consumer"),
            Failure::Database(error) => write!(f, "database: {error}"),
        }
    }
}

/// Applies `events` (of one source, in sequence order) for `group` in one transaction, or, when
/// the handler fails on one of them, the events before it (see the module documentation).
pub(crate) async fn apply_batch(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    events: &[EventEnvelope],
    cursor: Option<CursorMove<'_>>,
) -> Applied {
    let mut end = events.len();
    let mut handler_failure = None;
    while end > 0 {
        match apply_retrying_conflicts(db, group, handler, &events[..end], cursor.as_ref()).await {
            Ok(fresh) => {
                return Applied {
                    count: end,
                    fresh,
                    failure: handler_failure,
                }
            }
            Err(Attempt::Handler { index, error }) => {
                // Everything was rolled back; the events before the failing one go again on
                // their own, so they are not held up by it.
                handler_failure = Some(Failure::Handler(error));
                end = index;
            }
            Err(Attempt::CursorMoved) => return stopped_at_start(Failure::CursorMoved),
            Err(Attempt::Conflict(error) | Attempt::Database(error)) => {
                return stopped_at_start(Failure::Database(error))
            }
        }
    }
    Applied {
        count: 0,
        fresh: 0,
        failure: handler_failure,
    }
}

fn stopped_at_start(failure: Failure) -> Applied {
    Applied {
        count: 0,
        fresh: 0,
        failure: Some(failure),
    }
}

enum Attempt {
    Conflict(sqlx::Error),
    Database(sqlx::Error),
    CursorMoved,
    Handler { index: usize, error: HandlerError },
}

impl From<sqlx::Error> for Attempt {
    fn from(error: sqlx::Error) -> Self {
        if is_conflict(&error) {
            Attempt::Conflict(error)
        } else {
            Attempt::Database(error)
        }
    }
}

async fn apply_retrying_conflicts(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    events: &[EventEnvelope],
    cursor: Option<&CursorMove<'_>>,
) -> Result<usize, Attempt> {
    let mut attempt = 0u64;
    loop {
        match apply_once(db, group, handler, events, cursor).await {
            Err(Attempt::Conflict(error)) if attempt < CONFLICT_RETRIES => {
                attempt += 1;
                tracing::debug!(%error, attempt, "consumer transaction conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(2 * attempt)).await;
            }
            outcome => return outcome,
        }
    }
}

/// One transaction over `events`; how many the handler ran for. Dropping `tx` on an early
/// return rolls everything back.
async fn apply_once(
    db: &Database,
    group: &str,
    handler: &dyn Handler,
    events: &[EventEnvelope],
    cursor: Option<&CursorMove<'_>>,
) -> Result<usize, Attempt> {
    let Some(last) = events.last() else {
        return Ok(0);
    };
    // On SQLite, in turn with the service's own writers (a shared database).
    let _turn = db.write_turn().await;
    let mut connection = db.connection().await?;
    let mut tx = connection.begin().await?;
    let now = now_ms();
    if let Some(cursor) = cursor {
        // The write comes first so SQLite takes its write lock before anything is read.
        let moved = sqlx::query(
            "UPDATE consumer_cursors SET position = $1, updated_at_ms = $2 \
             WHERE grp = $3 AND source = $4 AND position = $5",
        )
        .bind(last.sequence)
        .bind(now)
        .bind(group)
        .bind(cursor.source)
        .bind(cursor.expected)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(Attempt::CursorMoved);
        }
    }
    let mut fresh = record_in_inbox(&mut tx, group, events, now).await?;
    let mut ran = 0;
    for (index, event) in events.iter().enumerate() {
        // `remove`: should a batch carry two copies of an event (a redelivery next to the
        // original), the handler runs for the first only.
        if !fresh.remove(event.id.as_str()) {
            continue;
        }
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
            return Err(Attempt::Handler { index, error });
        }
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

/// Records every event of the batch in the inbox with one statement; returns the ids it had not
/// seen, which are the ones to apply.
async fn record_in_inbox(
    tx: &mut bazaar_kit::storage::Connection,
    group: &str,
    events: &[EventEnvelope],
    now: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut sql =
        String::from("INSERT INTO consumer_inbox (grp, event_id, source, handled_at_ms) VALUES ");
    for i in 0..events.len() {
        let separator = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{separator}($1, ${}, ${}, $2)", 3 + 2 * i, 4 + 2 * i);
    }
    sql.push_str(" ON CONFLICT (grp, event_id) DO NOTHING RETURNING event_id");
    // One statement text per batch size: keep only the common small ones in each connection's
    // statement cache, rather than let large one-off sizes evict the service's own statements.
    let mut query = sqlx::query_scalar::<_, String>(&sql)
        .persistent(events.len() <= 8)
        .bind(group)
        .bind(now);
    for event in events {
        query = query.bind(&event.id).bind(&event.source);
    }
    Ok(query.fetch_all(&mut *tx).await?.into_iter().collect())
}

/// Forgets inbox records older than `older_than_ms` (Unix ms), so the inbox does not grow
/// forever. Safe once no copy of those events can still arrive: JetStream drops messages past
/// the retention and the feed transport's cursor never goes back.
pub(crate) async fn prune_inbox(db: &Database, older_than_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM consumer_inbox WHERE handled_at_ms < $1")
        .bind(older_than_ms)
        .execute(db)
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
    .execute(db)
    .await?;
    sqlx::query_scalar("SELECT position FROM consumer_cursors WHERE grp = $1 AND source = $2")
        .bind(group)
        .bind(source)
        .fetch_one(db)
        .await
}

/// Whether this instance holds a lease, as [`Lease::keep`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// This instance holds the lease. `acquired`: it did not before this call (so anything it
    /// remembered about the source, like the cursor, may be stale). `taken_over`: it was taken
    /// from another holder whose lease had lapsed rather than been released, so that holder may
    /// have died with work in flight.
    Held { acquired: bool, taken_over: bool },
    /// Another live holder has it.
    NotHeld,
}

/// The lease on (group, source) for one holder (see the module documentation).
pub(crate) struct Lease {
    db: Database,
    group: String,
    source: String,
    holder: String,
    /// The expiry this instance last wrote, while it believes it holds the lease.
    expires_at_ms: Option<i64>,
    /// Write at the next [`keep`](Self::keep) even if a renewal is not due yet.
    check: bool,
}

impl Lease {
    pub fn new(db: &Database, group: &str, source: &str, holder: &str) -> Self {
        Self {
            db: db.clone(),
            group: group.to_owned(),
            source: source.to_owned(),
            holder: holder.to_owned(),
            expires_at_ms: None,
            check: false,
        }
    }

    /// Takes the lease if free or lapsed, renews it if a third of its TTL has passed since this
    /// instance last wrote it, and otherwise answers from memory without touching the database.
    pub async fn keep(&mut self) -> Result<Holding, sqlx::Error> {
        let now = now_ms();
        if let Some(expires_at) = self.expires_at_ms {
            let written_at = expires_at - LEASE_TTL_MS;
            if !self.check && now < written_at + LEASE_TTL_MS / 3 {
                return Ok(Holding::Held {
                    acquired: false,
                    taken_over: false,
                });
            }
        }
        // Until the write below succeeds, the next call writes again.
        self.check = true;
        let acquiring = self.expires_at_ms.is_none();
        let previous: Option<String> = if acquiring {
            sqlx::query_scalar("SELECT holder FROM consumer_leases WHERE grp = $1 AND source = $2")
                .bind(&self.group)
                .bind(&self.source)
                .fetch_optional(&self.db)
                .await?
        } else {
            None
        };
        let taken = sqlx::query(
            "INSERT INTO consumer_leases (grp, source, holder, expires_at_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (grp, source) DO UPDATE SET holder = excluded.holder, \
             expires_at_ms = excluded.expires_at_ms \
             WHERE consumer_leases.holder = excluded.holder OR consumer_leases.expires_at_ms < $5",
        )
        .bind(&self.group)
        .bind(&self.source)
        .bind(&self.holder)
        .bind(now + LEASE_TTL_MS)
        .bind(now)
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        self.check = false;
        if taken {
            self.expires_at_ms = Some(now + LEASE_TTL_MS);
            Ok(Holding::Held {
                acquired: acquiring,
                // The write only replaces another holder's row once that lease lapsed.
                taken_over: previous.is_some_and(|holder| holder != self.holder),
            })
        } else {
            self.expires_at_ms = None;
            Ok(Holding::NotHeld)
        }
    }

    /// Makes the next [`keep`](Self::keep) write, to find out whether this instance still holds
    /// the lease (another instance moved the cursor).
    pub fn check(&mut self) {
        self.check = true;
    }

    /// Gives the lease up (on shutdown), so another instance takes over at once.
    pub async fn release(&mut self) -> Result<(), sqlx::Error> {
        if self.expires_at_ms.take().is_none() {
            return Ok(());
        }
        sqlx::query("DELETE FROM consumer_leases WHERE grp = $1 AND source = $2 AND holder = $3")
            .bind(&self.group)
            .bind(&self.source)
            .bind(&self.holder)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

    async fn database(dir: &tempfile::TempDir) -> Database {
        let url = bazaar_kit::storage::testing::sqlite_url(dir.path(), "leases");
        let db = Database::open(&url, &NO_MIGRATIONS).await.expect("open");
        create_tables(&db).await.expect("tables");
        db
    }

    async fn row(db: &Database) -> Option<(String, i64)> {
        sqlx::query_as("SELECT holder, expires_at_ms FROM consumer_leases")
            .fetch_optional(db)
            .await
            .expect("read the lease")
    }

    /// Puts the lease in `holder`'s hands directly, expiring at `expires_at_ms`.
    async fn set_row(db: &Database, holder: &str, expires_at_ms: i64) {
        sqlx::query("UPDATE consumer_leases SET holder = $1, expires_at_ms = $2")
            .bind(holder)
            .bind(expires_at_ms)
            .execute(db)
            .await
            .expect("set the lease");
    }

    const HELD: Holding = Holding::Held {
        acquired: false,
        taken_over: false,
    };

    #[tokio::test]
    async fn a_lease_is_written_when_taken_and_then_only_when_a_third_of_its_ttl_passed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = database(&dir).await;
        let mut lease = Lease::new(&db, "cart", "orders", "me");
        assert_eq!(
            lease.keep().await.expect("keep"),
            Holding::Held {
                acquired: true,
                taken_over: false
            }
        );
        let (holder, expires_at) = row(&db).await.expect("a lease row");
        assert_eq!(holder, "me");

        // Not due: answered from memory. (Had it written, it would have found the other holder.)
        set_row(&db, "other", now_ms() + LEASE_TTL_MS).await;
        assert_eq!(lease.keep().await.expect("keep"), HELD);
        assert_eq!(row(&db).await.expect("row").0, "other", "nothing written");

        // Due (as if a third of the TTL had passed since the write): written, and found lost.
        lease.expires_at_ms = Some(expires_at - LEASE_TTL_MS / 3);
        assert_eq!(lease.keep().await.expect("keep"), Holding::NotHeld);
        assert_eq!(row(&db).await.expect("row").0, "other");
    }

    #[tokio::test]
    async fn a_due_renewal_moves_the_expiry_and_a_check_forces_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = database(&dir).await;
        let mut lease = Lease::new(&db, "cart", "orders", "me");
        lease.keep().await.expect("take");
        let (_, first_expiry) = row(&db).await.expect("row");
        // Renewal due: the row gets a new expiry, a TTL from now.
        lease.expires_at_ms = Some(first_expiry - LEASE_TTL_MS / 3);
        set_row(&db, "me", first_expiry - LEASE_TTL_MS / 2).await;
        let renewing_at = now_ms();
        assert_eq!(lease.keep().await.expect("renew"), HELD);
        let (_, renewed) = row(&db).await.expect("row");
        assert!(renewed >= renewing_at + LEASE_TTL_MS, "renewed: {renewed}");

        // Not due, but asked to check (the cursor moved under the reader): written.
        set_row(&db, "other", now_ms() + LEASE_TTL_MS).await;
        assert_eq!(lease.keep().await.expect("keep"), HELD, "not due yet");
        lease.check();
        assert_eq!(lease.keep().await.expect("check"), Holding::NotHeld);
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_over_and_a_released_one_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = database(&dir).await;
        let mut other = Lease::new(&db, "cart", "orders", "other");
        let mut me = Lease::new(&db, "cart", "orders", "me");
        other.keep().await.expect("other takes it");
        assert_eq!(
            me.keep().await.expect("keep"),
            Holding::NotHeld,
            "live holder"
        );

        // The other holder died: its lease lapses, and taking it is a takeover.
        set_row(&db, "other", now_ms() - 1).await;
        assert_eq!(
            me.keep().await.expect("keep"),
            Holding::Held {
                acquired: true,
                taken_over: true
            }
        );
        assert_eq!(row(&db).await.expect("row").0, "me");

        // Released on stop: the next holder takes it at once, and it is no takeover.
        me.release().await.expect("release");
        assert_eq!(row(&db).await, None);
        let mut third = Lease::new(&db, "cart", "orders", "third");
        assert_eq!(
            third.keep().await.expect("keep"),
            Holding::Held {
                acquired: true,
                taken_over: false
            }
        );
    }
}
