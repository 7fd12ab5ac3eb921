//! Every SQL statement of the developer service, so handlers never see SQL and the portable
//! subset is kept in one place.
//!
//! The statements run unchanged on SQLite and PostgreSQL through `sqlx::Any`: `$n`
//! placeholders, `TEXT`/`BIGINT` columns, times as Unix milliseconds, sums cast back to
//! `BIGINT` (PostgreSQL's `SUM(bigint)` is `NUMERIC`, which `Any` cannot read), upserts with
//! `ON CONFLICT`, which both engines support.
//!
//! Transactions always start with a write, so on SQLite they take the write lock first and wait
//! for it (busy timeout) instead of failing with "database is locked" on a read-to-write
//! upgrade.

use std::collections::HashMap;

use bazaar_kit::audit::{AuditEvent, AuditLog};
use bazaar_kit::storage::Database;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{StoredKey, UsageReport};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A key to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub plan: String,
    pub prefix: String,
    /// SHA-256 hex of the full key.
    pub secret_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub created_by: String,
}

/// Which keys a usage query covers.
#[derive(Debug, Clone, Copy)]
pub enum UsageScope<'a> {
    All,
    Owner(&'a str),
    Key(&'a str),
}

/// Requests counted for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub day: u64,
    pub month: u64,
}

const KEY_SELECT: &str =
    "id, owner, name, plan, prefix, created_at, expires_at, revoked_at, created_by";

/// How often a write that lost an audit-sequence race is retried.
const MAX_ATTEMPTS: u32 = 10;

/// The developer service's data access.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    audit: AuditLog,
}

impl Repository {
    /// Opens (creating and migrating if needed) the database at `url`, audit table included.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let db = Database::open(url, &crate::MIGRATOR).await?;
        let audit = AuditLog::open(&db, crate::NAME).await?;
        Ok(Self { db, audit })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The service's audit log (security events: keys created and revoked).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Inserts a key and its audit record in one transaction.
    pub async fn create_key(
        &self,
        key: &NewKey,
        event: AuditEvent,
    ) -> Result<StoredKey, RepoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let result = async {
                sqlx::query(
                    "INSERT INTO api_keys (id, owner, name, plan, prefix, secret_hash, \
                     created_at, expires_at, revoked_at, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)",
                )
                .bind(&key.id)
                .bind(&key.owner)
                .bind(&key.name)
                .bind(&key.plan)
                .bind(&key.prefix)
                .bind(&key.secret_hash)
                .bind(key.created_at_ms)
                .bind(key.expires_at_ms)
                .bind(&key.created_by)
                .execute(&mut *tx)
                .await?;
                self.audit.append_in(&mut tx, event.clone()).await
            }
            .await;
            match result {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(StoredKey {
                        id: key.id.clone(),
                        owner: key.owner.clone(),
                        name: key.name.clone(),
                        plan: key.plan.clone(),
                        prefix: key.prefix.clone(),
                        created_at_ms: key.created_at_ms,
                        expires_at_ms: key.expires_at_ms,
                        revoked_at_ms: None,
                        created_by: key.created_by.clone(),
                    });
                }
                // A concurrent audit append took our sequence number: the whole transaction
                // rolled back, so doing it again is safe.
                Err(error) if attempt < MAX_ATTEMPTS && is_conflict(&error) => {
                    drop(tx);
                    drop(connection);
                    backoff(attempt).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// One key by id.
    pub async fn get_key(&self, id: &str) -> Result<Option<StoredKey>, RepoError> {
        let row = sqlx::query(&format!("SELECT {KEY_SELECT} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        Ok(row.as_ref().map(key_from_row).transpose()?)
    }

    /// The key whose full text hashes to `secret_hash`.
    pub async fn find_by_hash(&self, secret_hash: &str) -> Result<Option<StoredKey>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_SELECT} FROM api_keys WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.db)
        .await?;
        Ok(row.as_ref().map(key_from_row).transpose()?)
    }

    /// Keys, oldest first: one owner's, or everyone's.
    pub async fn list_keys(&self, owner: Option<&str>) -> Result<Vec<StoredKey>, RepoError> {
        let rows = match owner {
            Some(owner) => {
                sqlx::query(&format!(
                    "SELECT {KEY_SELECT} FROM api_keys WHERE owner = $1 ORDER BY created_at, id"
                ))
                .bind(owner)
                .fetch_all(&self.db)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {KEY_SELECT} FROM api_keys ORDER BY created_at, id"
                ))
                .fetch_all(&self.db)
                .await?
            }
        };
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    /// Revokes key `id` at `at_ms`, with its audit record in the same transaction. `false`
    /// when it was already revoked (nothing changes and nothing is recorded, so a repeated
    /// DELETE is harmless).
    pub async fn revoke_key(
        &self,
        id: &str,
        at_ms: i64,
        event: AuditEvent,
    ) -> Result<bool, RepoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let result = async {
                let changed = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(at_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                self.audit.append_in(&mut tx, event.clone()).await?;
                Ok(true)
            }
            .await;
            match result {
                Ok(changed) => {
                    tx.commit().await?;
                    return Ok(changed);
                }
                Err(error) if attempt < MAX_ATTEMPTS && is_conflict(&error) => {
                    drop(tx);
                    drop(connection);
                    backoff(attempt).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Sets (or clears) when a key expires: for operators extending a trial.
    pub async fn set_expires_at(&self, id: &str, at_ms: Option<i64>) -> Result<bool, RepoError> {
        let changed = sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(&self.db)
            .await?
            .rows_affected();
        Ok(changed > 0)
    }

    /// Applies a usage report once: `false` when its `report_id` was applied before (nothing
    /// changes). The report id and the counts commit together, so a crash in between cannot
    /// lose counts nor count them twice on the gateway's retry. Counts for key ids that do not
    /// exist are skipped: keys are never deleted, so such a line is a gateway bug, and refusing
    /// the whole report would make the gateway retry it forever.
    pub async fn record_usage(
        &self,
        report: &UsageReport,
        received_at_ms: i64,
    ) -> Result<bool, RepoError> {
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO usage_reports (report_id, gateway, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (report_id) DO NOTHING",
        )
        .bind(report.report_id.to_string())
        .bind(&report.gateway)
        .bind(received_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(false);
        }
        for line in &report.counts {
            if line.count == 0 {
                continue;
            }
            // `SELECT ... FROM api_keys WHERE` skips unknown keys; the WHERE also resolves
            // SQLite's parsing ambiguity between a join and the upsert clause.
            let applied = sqlx::query(
                "INSERT INTO usage_daily (key_id, day, count) \
                 SELECT id, $2, CAST($3 AS BIGINT) FROM api_keys WHERE id = $1 \
                 ON CONFLICT (key_id, day) DO UPDATE SET count = usage_daily.count + excluded.count",
            )
            .bind(&line.key_id)
            .bind(&line.day)
            .bind(i64::try_from(line.count).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if applied == 0 {
                tracing::warn!(key_id = %line.key_id, gateway = %report.gateway,
                    "usage reported for an unknown key; skipped");
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Counts on `day` (`YYYY-MM-DD`) and in its month, per key id, for the keys in `scope`
    /// that have any usage this month (absent keys have none).
    pub async fn usage(
        &self,
        scope: UsageScope<'_>,
        day: &str,
    ) -> Result<HashMap<String, Counts>, RepoError> {
        let month_pattern = format!("{}-%", crate::model::month_of(day));
        let base = "SELECT u.key_id AS key_id, \
             CAST(SUM(CASE WHEN u.day = $1 THEN u.count ELSE 0 END) AS BIGINT) AS day_count, \
             CAST(SUM(u.count) AS BIGINT) AS month_count \
             FROM usage_daily u JOIN api_keys k ON k.id = u.key_id \
             WHERE u.day LIKE $2";
        let query = match scope {
            UsageScope::All => format!("{base} GROUP BY u.key_id"),
            UsageScope::Owner(_) => format!("{base} AND k.owner = $3 GROUP BY u.key_id"),
            UsageScope::Key(_) => format!("{base} AND u.key_id = $3 GROUP BY u.key_id"),
        };
        let mut query = sqlx::query(&query).bind(day).bind(month_pattern);
        if let UsageScope::Owner(value) | UsageScope::Key(value) = scope {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.db).await?;
        rows.iter()
            .map(|row| {
                let day: i64 = row.try_get("day_count")?;
                let month: i64 = row.try_get("month_count")?;
                Ok((
                    row.try_get("key_id")?,
                    Counts {
                        day: day.max(0) as u64,
                        month: month.max(0) as u64,
                    },
                ))
            })
            .collect()
    }
}

fn key_from_row(row: &AnyRow) -> Result<StoredKey, sqlx::Error> {
    Ok(StoredKey {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        plan: row.try_get("plan")?,
        prefix: row.try_get("prefix")?,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
        created_by: row.try_get("created_by")?,
    })
}

/// A lost race worth retrying: the audit sequence number taken by a concurrent append, or
/// SQLite's lock still held after the busy timeout.
fn is_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("UNIQUE")
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(2 * u64::from(attempt))).await;
}
