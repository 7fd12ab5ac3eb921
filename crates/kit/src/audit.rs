//! The audit log: an append-only record of security-relevant actions (logins, tokens issued and
//! revoked, keys created and revoked, admin writes, key rotations), kept in each service's own
//! database. Each record carries the hash of the previous one, so changing, removing or
//! reordering any record breaks the chain, which [`verify_chain`] (and `bazaar audit verify`)
//! detects.
//!
//! Append inside the same transaction as the action ([`AuditLog::append_in`]) when there is
//! one, so an action and its audit record commit together.
//!
//! Each auditing service also answers `GET /api/v1/admin/audit` (admins only) for the admin
//! console: its newest records and the check of its whole chain ([`admin_view`]). The service
//! checks the caller is an admin, then calls [`admin_view`]; everything else is here, so the four
//! services answer the same document the same way.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::context;
use crate::problem::{ApiError, ApiResult};
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
    let mut check = ChainCheck::new();
    records.iter().try_for_each(|record| check.feed(record))
}

/// A chain check fed one record at a time (in `seq` order, from the first), so a long log can
/// be checked page by page without holding it all in memory.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    previous: String,
    expected_seq: i64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCheck {
    pub fn new() -> Self {
        Self {
            previous: GENESIS.to_owned(),
            expected_seq: 1,
        }
    }

    /// Checks the next record against the ones fed before it.
    pub fn feed(&mut self, record: &AuditRecord) -> Result<(), ChainError> {
        if record.seq != self.expected_seq {
            return Err(ChainError {
                seq: record.seq,
                reason: format!(
                    "expected record {} (a record is missing)",
                    self.expected_seq
                ),
            });
        }
        if record.prev_hash != self.previous {
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
        self.previous = record.hash.clone();
        self.expected_seq += 1;
        Ok(())
    }
}

/// Path of every auditing service's read API for the admin console. Not routed by the gateway:
/// the console calls each service directly with the admin's token.
pub const ADMIN_AUDIT_PATH: &str = "/api/v1/admin/audit";
/// Records answered when `limit` is not given.
pub const DEFAULT_VIEW_LIMIT: usize = 50;
/// Most records one answer may carry.
pub const MAX_VIEW_LIMIT: usize = 500;
/// Records read per query while checking the whole chain.
const CHECK_PAGE: i64 = 1_000;

/// Query of `GET /api/v1/admin/audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Newest records to answer, 1 to 500 (default 50). The chain check always covers the whole
    /// log.
    pub limit: Option<i64>,
}

impl AuditQuery {
    /// The validated limit: over the cap is refused rather than clamped, so a client never
    /// silently gets fewer records than it asked for.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_VIEW_LIMIT),
            Some(n) if (1..=MAX_VIEW_LIMIT as i64).contains(&n) => Ok(n as usize),
            Some(_) => Err(ApiError::invalid(
                "limit",
                format!("must be between 1 and {MAX_VIEW_LIMIT}"),
            )),
        }
    }
}

/// The result of checking a whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ChainStatus {
    /// Whether every record chains to the one before it and matches its hash.
    pub ok: bool,
    /// Records in the log.
    pub records: u64,
    /// Where and why the chain breaks, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/admin/audit`: a service's newest audit records and its chain check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AuditView {
    pub service: String,
    /// Newest first, at most `limit`.
    pub records: Vec<AuditRecord>,
    pub chain: ChainStatus,
}

/// The answer of `GET /api/v1/admin/audit`, for a service that has already checked the caller
/// is an admin.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "audit",
    params(("limit" = Option<i64>, Query,
        description = "Newest records to answer, 1 to 500 (default 50); the chain check covers the whole log")),
    responses(
        (status = 200, description = "Newest records first, and the whole chain's check", body = AuditView),
        (status = 401, description = "No valid token", body = crate::problem::Problem),
        (status = 403, description = "Not an admin", body = crate::problem::Problem),
        (status = 422, description = "`limit` out of range", body = crate::problem::Problem),
    ))]
pub async fn admin_view(log: &AuditLog, query: &AuditQuery) -> ApiResult<axum::Json<AuditView>> {
    let limit = query.limit()?;
    Ok(axum::Json(log.view(limit).await?))
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
        sqlx::query(TABLE_SQL).execute(db).await?;
        Ok(Self {
            db: db.clone(),
            service: service.to_owned(),
        })
    }

    /// Appends in its own transaction, retrying when a concurrent append took the next `seq`.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord, sqlx::Error> {
        let mut attempts = 0;
        loop {
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            match self.append_in(&mut tx, event.clone()).await {
                Ok(record) => {
                    tx.commit().await?;
                    return Ok(record);
                }
                Err(error) if attempts < 10 && crate::storage::is_conflict(&error) => {
                    attempts += 1;
                    drop(tx);
                    drop(connection);
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
        connection: &mut crate::storage::Connection,
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
        read_records(&self.db, after, limit).await
    }

    /// The newest `limit` records (newest first) and the check of the whole chain, read in
    /// pages so a long log is never held in memory at once.
    pub async fn view(&self, limit: usize) -> Result<AuditView, sqlx::Error> {
        let mut check = ChainCheck::new();
        let mut broken: Option<ChainError> = None;
        let mut newest: VecDeque<AuditRecord> = VecDeque::with_capacity(limit + 1);
        let mut count: u64 = 0;
        let mut after = 0;
        loop {
            let page = self.records(after, CHECK_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in page {
                count += 1;
                if broken.is_none() {
                    broken = check.feed(&record).err();
                }
                if limit > 0 {
                    if newest.len() == limit {
                        newest.pop_front();
                    }
                    newest.push_back(record);
                }
            }
        }
        Ok(AuditView {
            service: self.service.clone(),
            records: newest.into_iter().rev().collect(),
            chain: ChainStatus {
                ok: broken.is_none(),
                records: count,
                error: broken.map(|e| e.to_string()),
            },
        })
    }
}

/// Reads records through any executor: a service's [`Database`], or the pool `bazaar audit
/// verify` opens on a database file.
pub async fn read_records<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, service, actor, action, target, outcome, source, request_id, \
         details, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
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
