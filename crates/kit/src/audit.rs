//! The audit log: an append-only record of security-relevant actions (logins, tokens issued and
//! revoked, keys created and revoked, admin writes, key rotations), kept in each service's own
//! database. Each record carries the hash of the previous one, so changing, removing or
//! reordering any record breaks the chain, which [`verify_chain`] (and `bazaar audit verify`)
//! detects.
//!
//! Append inside the same transaction as the action ([`AuditLog::append_in`]) when there is
//! one, so an action and its audit record commit together.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::context;
use crate::storage::{now_ms, Database};

/// DDL of the audit table, portable across SQLite and PostgreSQL.
pub const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    service TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    source TEXT NOT NULL,
    request_id TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)";

/// The hash the first record chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the caller describes it.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Who: a user id, a client id, or `anonymous`.
    pub actor: String,
    /// What: a dotted verb such as `login.failure` or `api_key.created`.
    pub action: String,
    /// On what: a user, key, client or product id (may be empty).
    pub target: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// From where: the client address.
    pub source: String,
    /// Anything else worth keeping (never secrets).
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            outcome: "success".into(),
            details: serde_json::Value::Null,
            ..Self::default()
        }
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }
    pub fn failed(mut self) -> Self {
        self.outcome = "failure".into();
        self
    }
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// One stored record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub service: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source: String,
    pub request_id: String,
    /// JSON text.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// SHA-256 over every field but `hash`, length-prefixed so no two records collide by
    /// shifting text between fields.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for field in [
            self.seq.to_string().as_str(),
            self.at_ms.to_string().as_str(),
            &self.service,
            &self.actor,
            &self.action,
            &self.target,
            &self.outcome,
            &self.source,
            &self.request_id,
            &self.details,
            &self.prev_hash,
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at record {seq}: {reason}")]
pub struct ChainError {
    pub seq: i64,
    pub reason: String,
}

/// Checks that `records` (in `seq` order, from the first) form an unbroken chain.
pub fn verify_chain(records: &[AuditRecord]) -> Result<(), ChainError> {
    let mut previous = GENESIS.to_owned();
    for (expected_seq, record) in (1_i64..).zip(records) {
        if record.seq != expected_seq {
            return Err(ChainError {
                seq: record.seq,
                reason: format!("expected record {expected_seq} (a record is missing)"),
            });
        }
        if record.prev_hash != previous {
            return Err(ChainError {
                seq: record.seq,
                reason: "does not chain to the record before it".into(),
            });
        }
        if record.compute_hash() != record.hash {
            return Err(ChainError {
                seq: record.seq,
                reason: "its content does not match its hash (modified)".into(),
            });
        }
        previous = record.hash.clone();
    }
    Ok(())
}

/// A service's audit log.
#[derive(Clone, Debug)]
pub struct AuditLog {
    db: Database,
    service: String,
}

impl AuditLog {
    /// Creates the table if needed.
    pub async fn open(db: &Database, service: &str) -> Result<Self, sqlx::Error> {
        sqlx::query(TABLE_SQL).execute(db.pool()).await?;
        Ok(Self {
            db: db.clone(),
            service: service.to_owned(),
        })
    }

    /// Appends in its own transaction, retrying when a concurrent append took the next `seq`.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord, sqlx::Error> {
        let mut attempts = 0;
        loop {
            let mut tx = self.db.pool().begin().await?;
            match self.append_in(&mut tx, event.clone()).await {
                Ok(record) => {
                    tx.commit().await?;
                    return Ok(record);
                }
                Err(error) if attempts < 10 && crate::storage::is_conflict(&error) => {
                    attempts += 1;
                    drop(tx);
                    tokio::time::sleep(std::time::Duration::from_millis(2 * attempts)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Appends inside the caller's transaction, so the record commits with the action. A
    /// concurrent append makes the insert fail with a unique violation; the caller's transaction
    /// then rolls back and may be retried.
    pub async fn append_in(
        &self,
        connection: &mut AnyConnection,
        event: AuditEvent,
    ) -> Result<AuditRecord, sqlx::Error> {
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *connection)
            .await?;
        let (prev_seq, prev_hash) = match last {
            Some(row) => (
                row.try_get::<i64, _>("seq")?,
                row.try_get::<String, _>("hash")?,
            ),
            None => (0, GENESIS.to_owned()),
        };
        let mut record = AuditRecord {
            seq: prev_seq + 1,
            at_ms: now_ms(),
            service: self.service.clone(),
            actor: event.actor,
            action: event.action,
            target: event.target,
            outcome: event.outcome,
            source: event.source,
            request_id: context::current().map(|c| c.request_id).unwrap_or_default(),
            details: if event.details.is_null() {
                "{}".to_owned()
            } else {
                event.details.to_string()
            },
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, service, actor, action, target, outcome, source, \
             request_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(record.seq)
        .bind(record.at_ms)
        .bind(&record.service)
        .bind(&record.actor)
        .bind(&record.action)
        .bind(&record.target)
        .bind(&record.outcome)
        .bind(&record.source)
        .bind(&record.request_id)
        .bind(&record.details)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .execute(&mut *connection)
        .await?;
        tracing::info!(target: "audit", seq = record.seq, actor = %record.actor, action = %record.action,
            target_id = %record.target, outcome = %record.outcome, "audit record");
        Ok(record)
    }

    /// Records with `seq > after`, oldest first, at most `limit`.
    pub async fn records(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>, sqlx::Error> {
        read_records(self.db.pool(), after, limit).await
    }
}

/// Reads records straight from a pool (also used by `bazaar audit verify` on a database file).
pub async fn read_records(
    pool: &sqlx::AnyPool,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, service, actor, action, target, outcome, source, request_id, \
         details, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRecord {
                seq: row.try_get("seq")?,
                at_ms: row.try_get("at_ms")?,
                service: row.try_get("service")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                outcome: row.try_get("outcome")?,
                source: row.try_get("source")?,
                request_id: row.try_get("request_id")?,
                details: row.try_get("details")?,
                prev_hash: row.try_get("prev_hash")?,
                hash: row.try_get("hash")?,
            })
        })
        .collect()
}
