//! The transactional outbox: a service appends events in the same database transaction as
//! the state change they describe (guarantee G1), numbered by a gap-free `sequence` in commit
//! order. The feed serves them from here; the NATS relay publishes them from here.
//!
//! Commit order equals sequence order because appends are serialized until commit and each
//! takes `max(sequence) + 1`: SQLite has one writer at a time (the append's single statement
//! takes the write lock before it reads the last number), and on PostgreSQL an append locks the
//! table against other appenders (not readers) until its transaction ends. So a reader never
//! sees sequence N+1 before N is committed and a cursor never skips an event. The number is
//! also a unique key: should two appends ever compute the same one, the second fails with a
//! unique violation, which `retry_conflicts` runs again.

use std::sync::Arc;

use bazaar_kit::storage::{now_ms, retry_conflicts, Database, Engine};
use sqlx::Row;
use tokio::sync::Notify;

use crate::envelope::{EventEnvelope, NewEvent};

const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS outbox_events (\
    sequence BIGINT PRIMARY KEY, \
    id TEXT NOT NULL UNIQUE, \
    event_type TEXT NOT NULL, \
    version BIGINT NOT NULL, \
    aggregate_id TEXT NOT NULL, \
    occurred_at_ms BIGINT NOT NULL, \
    traceparent TEXT, \
    payload TEXT NOT NULL, \
    published_at_ms BIGINT)";

const INDEX_SQL: &str = "CREATE INDEX IF NOT EXISTS outbox_events_unpublished \
    ON outbox_events (published_at_ms, sequence)";

/// Appends an event numbered `max(sequence) + 1` (see [`Outbox::append_in`]); a macro so that
/// PostgreSQL's statement can add `RETURNING` to the same text.
macro_rules! append_sql {
    () => {
        "INSERT INTO outbox_events (sequence, id, event_type, version, aggregate_id, \
         occurred_at_ms, traceparent, payload) \
         VALUES ((SELECT COALESCE(MAX(sequence), 0) + 1 FROM outbox_events), \
         $1, $2, $3, $4, $5, $6, $7)"
    };
}

const COLUMNS: &str =
    "sequence, id, event_type, version, aggregate_id, occurred_at_ms, traceparent, payload";

/// A service's outbox. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    db: Database,
    source: String,
    appended: Arc<Notify>,
}

impl Outbox {
    /// Creates the table if needed.
    pub async fn open(db: &Database, source: &str) -> Result<Self, sqlx::Error> {
        for sql in [TABLE_SQL, INDEX_SQL] {
            // Instances starting together race on PostgreSQL's catalog even with IF NOT EXISTS
            // (a unique violation on pg_type): run the statement again.
            retry_conflicts(|| sqlx::query(sql).execute(db)).await?;
        }
        Ok(Self {
            db: db.clone(),
            source: source.to_owned(),
            appended: Arc::new(Notify::new()),
        })
    }

    /// The publishing service's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends `event` inside the caller's transaction. Concurrent appenders wait for each
    /// other's commit; run the transaction under `bazaar_kit::storage::retry_conflicts` all the
    /// same (SQLite answers "locked" to a transaction whose earlier reads went stale, and
    /// PostgreSQL may pick it as a deadlock victim).
    pub async fn append_in(
        &self,
        connection: &mut bazaar_kit::storage::Connection,
        event: NewEvent,
    ) -> Result<EventEnvelope, sqlx::Error> {
        let mut envelope = EventEnvelope {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event.event_type,
            version: event.version,
            source: self.source.clone(),
            aggregate_id: event.aggregate_id,
            sequence: 0,
            occurred_at_ms: now_ms(),
            traceparent: bazaar_kit::context::current().map(|c| c.traceparent()),
            payload: event.payload,
        };
        if self.db.engine() == Engine::Postgres {
            // Appenders queue here until the previous one commits, instead of colliding on the
            // same number and redoing their whole transaction; plain reads are not blocked.
            sqlx::query("LOCK TABLE outbox_events IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *connection)
                .await?;
        }
        // One statement that writes while it reads the last number: SQLite takes its write lock
        // (waiting for a concurrent writer) before reading, so the number is never stale; a
        // separate SELECT would read a snapshot another writer can overtake. The number is read
        // in a subquery of a one-row VALUES rather than by `INSERT … SELECT … FROM
        // outbox_events`: SQLite runs a SELECT from the table it inserts into through a
        // temporary table, and answers RETURNING through another, each a B-tree and a page
        // cache opened and closed per event (docs/performance.md, fourteenth round).
        let payload = envelope.payload.to_string();
        let bind = |sql| {
            sqlx::query(sql)
                .bind(&envelope.id)
                .bind(&envelope.event_type)
                .bind(envelope.version)
                .bind(&envelope.aggregate_id)
                .bind(envelope.occurred_at_ms)
                .bind(&envelope.traceparent)
                .bind(&payload)
        };
        envelope.sequence = if self.db.engine() == Engine::Postgres {
            // PostgreSQL's RETURNING needs no temporary table, and saves a round trip.
            bind(concat!(append_sql!(), " RETURNING sequence"))
                .fetch_one(&mut *connection)
                .await?
                .try_get(0)?
        } else {
            bind(append_sql!()).execute(&mut *connection).await?;
            // The event's number, read back by its id in the same transaction: no other
            // appender can have written since (SQLite's write lock is held until commit).
            sqlx::query_scalar("SELECT sequence FROM outbox_events WHERE id = $1")
                .bind(&envelope.id)
                .fetch_one(&mut *connection)
                .await?
        };
        tracing::debug!(event_type = %envelope.event_type, sequence = envelope.sequence,
            aggregate_id = %envelope.aggregate_id, "event appended to the outbox");
        Ok(envelope)
    }

    /// Call after committing a transaction that appended: wakes long-polling feed readers and
    /// the relay at once (they also poll, so a forgotten call only adds latency).
    pub fn notify(&self) {
        self.appended.notify_waiters();
    }

    /// Resolves at the next [`notify`](Self::notify).
    pub(crate) fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Events with `sequence > after`, oldest first, at most `limit`.
    pub async fn read_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventEnvelope>, sqlx::Error> {
        Ok(self.read_page(after, limit).await?.0)
    }

    /// Like [`read_after`](Self::read_after), with the outbox's [`bounds`](Self::bounds) as of
    /// the same read when any event came back (`None` otherwise): a feed page in one statement
    /// instead of two, as a feed answers every long poll with both.
    pub async fn read_page(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<EventEnvelope>, Option<(i64, i64)>), sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, \
             (SELECT MIN(sequence) FROM outbox_events) AS oldest, \
             (SELECT MAX(sequence) FROM outbox_events) AS latest \
             FROM outbox_events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        let bounds = match rows.first() {
            Some(row) => Some((row.try_get("oldest")?, row.try_get("latest")?)),
            None => None,
        };
        let events = rows
            .iter()
            .map(|row| self.decode(row))
            .collect::<Result<_, _>>()?;
        Ok((events, bounds))
    }

    /// Events not yet acknowledged by the broker, oldest first.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<EventEnvelope>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox_events WHERE published_at_ms IS NULL \
             ORDER BY sequence LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    /// Records the broker's acknowledgement of `sequence`.
    pub async fn mark_published(&self, sequence: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE outbox_events SET published_at_ms = $1 WHERE sequence = $2")
            .bind(now_ms())
            .bind(sequence)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// `(oldest kept, latest)` sequence numbers; `(0, 0)` when empty.
    pub async fn bounds(&self) -> Result<(i64, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT COALESCE(MIN(sequence), 0) AS oldest, COALESCE(MAX(sequence), 0) AS latest \
             FROM outbox_events",
        )
        .fetch_one(&self.db)
        .await?;
        Ok((row.try_get("oldest")?, row.try_get("latest")?))
    }

    /// How many events wait for the broker.
    pub async fn unpublished_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE published_at_ms IS NULL")
            .fetch_one(&self.db)
            .await
    }

    /// Deletes events older than `older_than_ms` (Unix ms). With a broker, only events it has
    /// acknowledged go; the newest event always stays so the sequence never restarts.
    pub async fn prune(
        &self,
        older_than_ms: i64,
        require_published: bool,
    ) -> Result<u64, sqlx::Error> {
        let published = if require_published {
            " AND published_at_ms IS NOT NULL"
        } else {
            ""
        };
        let done = sqlx::query(&format!(
            "DELETE FROM outbox_events WHERE occurred_at_ms < $1{published} \
             AND sequence < (SELECT MAX(sequence) FROM outbox_events)"
        ))
        .bind(older_than_ms)
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected())
    }

    fn decode(&self, row: &sqlx::any::AnyRow) -> Result<EventEnvelope, sqlx::Error> {
        let payload: String = row.try_get("payload")?;
        Ok(EventEnvelope {
            sequence: row.try_get("sequence")?,
            id: row.try_get("id")?,
            event_type: row.try_get("event_type")?,
            version: row.try_get("version")?,
            source: self.source.clone(),
            aggregate_id: row.try_get("aggregate_id")?,
            occurred_at_ms: row.try_get("occurred_at_ms")?,
            traceparent: row.try_get("traceparent")?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        })
    }
}
