//! Group commit of issued tokens: how every token grant records what it issued.
//!
//! An access token is answered only after its record (the jti, which makes revocation and
//! introspection exact), the refresh token issued beside it if any, and its `token.issued`
//! audit record are committed. One transaction per grant capped grants at the database's commit
//! rate (on SQLite every commit takes the single writer lock), so [`TokenWriter`] goes through
//! kit's group commit (`bazaar_kit::group_commit`): one writer task takes every request waiting
//! in its queue (up to [`MAX_BATCH`]), writes them all in ONE transaction (the token rows, then
//! the audit records chained one after another with `AuditLog::append_in`), commits, and only
//! then answers each request.
//!
//! Guarantees, each kept by the single transaction:
//! - no token is answered before its records are committed, and a failed batch fails every
//!   request in it (each answers 500, none gets a token);
//! - the audit chain stays gap-free: the records are appended in order in the transaction, and a
//!   concurrent append elsewhere (another handler's `AuditLog::append`, another instance on
//!   PostgreSQL) makes the batch conflict and run again from the start (`retry_conflicts`);
//! - each audit record keeps its own request's id (the request context travels with the item).
//!
//! A request that goes away before its answer leaves a recorded token nobody received, which is
//! harmless. Grants whose issuance carries other state (redeeming a code, rotating a refresh
//! token) commit that state first, in its own transaction, then issue through here.

use std::sync::Arc;

use bazaar_kit::audit::{AuditEvent, AuditLog};
use bazaar_kit::group_commit::{BatchWrite, GroupCommit, GroupCommitError, Queued};
use bazaar_kit::storage::retry_conflicts;

use crate::repository::{IssuedAccess, IssuedRefresh, Repository};

/// Most grants written in one transaction. Bounds the transaction's size (and how long it holds
/// the write lock) without limiting throughput: under heavier load batches just follow each
/// other.
pub const MAX_BATCH: usize = 256;

/// What one grant issued, to be recorded before it is answered.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access: IssuedAccess,
    pub refresh: Option<IssuedRefresh>,
    /// Its `token.issued` record.
    pub audit: AuditEvent,
}

/// Why recording failed; the grant must not be answered with its tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("recording issued tokens failed: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("the token writer has stopped")]
    Stopped,
}

impl From<GroupCommitError> for IssueError {
    fn from(error: GroupCommitError) -> Self {
        match error {
            GroupCommitError::Database(error) => IssueError::Database(error),
            GroupCommitError::Stopped => IssueError::Stopped,
        }
    }
}

/// The queue to the writer task (kit's group commit); clones share it.
#[derive(Clone, Debug)]
pub struct TokenWriter {
    commit: GroupCommit<TokenBatch>,
}

impl TokenWriter {
    /// Starts the writer task (on the current Tokio runtime).
    pub fn start(repository: Repository, audit: AuditLog) -> Self {
        Self {
            commit: GroupCommit::start(TokenBatch { repository, audit }, MAX_BATCH),
        }
    }

    /// Batches (transactions) written so far.
    pub fn batches(&self) -> u64 {
        self.commit.batches()
    }

    /// Records `issued` and returns once it is committed, or why it was not.
    pub async fn record(&self, issued: Issued) -> Result<(), IssueError> {
        Ok(self.commit.write(issued).await?)
    }
}

/// Writes a batch of grants' records in one transaction.
struct TokenBatch {
    repository: Repository,
    audit: AuditLog,
}

impl BatchWrite for TokenBatch {
    type Item = Issued;
    type Output = ();

    /// One transaction, run again from the start on a conflict.
    async fn write(&self, batch: &[Queued<Issued>]) -> Result<Vec<()>, sqlx::Error> {
        let access: Vec<&IssuedAccess> = batch.iter().map(|q| &q.item.access).collect();
        let refresh: Vec<&IssuedRefresh> = batch
            .iter()
            .filter_map(|q| q.item.refresh.as_ref())
            .collect();
        let (access, refresh) = (&access, &refresh);
        retry_conflicts(|| async move {
            let mut connection = self.repository.database().connection().await?;
            let mut tx = connection.begin().await?;
            // The token rows first: on SQLite that write takes the writer lock, so the audit
            // log's tail read next cannot be overtaken by another writer before this commits.
            Repository::record_issued_in(&mut tx, access, refresh).await?;
            for queued in batch {
                queued
                    .in_context(self.audit.append_in(&mut tx, queued.item.audit.clone()))
                    .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(vec![(); batch.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bazaar_kit::storage::testing::sqlite_url;

    fn issued(n: usize) -> Issued {
        Issued {
            access: IssuedAccess {
                jti: format!("jti-{n}"),
                family_id: None,
                client_id: "demo-partner".into(),
                subject: "demo-partner".into(),
                expires_at: i64::MAX,
            },
            refresh: None,
            audit: AuditEvent::new("demo-partner", "token.issued"),
        }
    }

    async fn setup(dir: &tempfile::TempDir) -> (Repository, AuditLog, TokenWriter) {
        let repository = crate::open(
            &sqlite_url(dir.path(), "identity"),
            &crate::Config {
                seed_users: false,
                ..crate::Config::default()
            },
        )
        .await
        .expect("opens");
        let log = AuditLog::open(repository.database(), crate::NAME)
            .await
            .expect("audit log");
        let writer = TokenWriter::start(repository.clone(), log.clone());
        (repository, log, writer)
    }

    /// Records `count` grants at once. On this single-threaded runtime every task enqueues
    /// before the writer runs again, so they cannot all go one per transaction.
    async fn record_all(writer: &TokenWriter, count: usize) -> Vec<Result<(), IssueError>> {
        let tasks: Vec<_> = (0..count)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.record(issued(n)).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("joins"));
        }
        outcomes
    }

    #[tokio::test]
    async fn concurrent_grants_share_transactions_and_all_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repository, log, writer) = setup(&dir).await;
        for outcome in record_all(&writer, 300).await {
            outcome.expect("recorded");
        }
        for n in 0..300 {
            assert!(!repository
                .access_token_revoked(&format!("jti-{n}"))
                .await
                .unwrap());
        }
        let records = log.records(0, 1_000).await.unwrap();
        assert_eq!(records.len(), 300);
        bazaar_kit::audit::verify_chain(&records).expect("an unbroken chain");
        assert!(
            writer.batches() <= 300 / 2,
            "300 queued grants took {} transactions",
            writer.batches()
        );
        repository.database().close().await;
    }

    #[tokio::test]
    async fn a_failing_batch_fails_every_grant_waiting_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repository, log, writer) = setup(&dir).await;
        sqlx::query("DROP TABLE access_tokens")
            .execute(repository.database())
            .await
            .expect("drop");
        let outcomes = record_all(&writer, 100).await;
        assert!(writer.batches() < 100, "the grants shared transactions");
        for outcome in outcomes {
            assert!(
                matches!(outcome, Err(IssueError::Database(_))),
                "{outcome:?}"
            );
        }
        assert!(
            log.records(0, 10).await.unwrap().is_empty(),
            "no audit record of a failed batch is committed"
        );
        repository.database().close().await;
    }
}
