//! Group commit: many concurrent writers share one database transaction.
//!
//! One transaction per request caps a service at its database's commit rate, and on SQLite
//! every commit (and every statement: sqlx runs each SQLite connection on its own thread, so a
//! statement is a hand-off between threads) is paid for in full. A [`GroupCommit`] runs one
//! writer task instead: it takes every item waiting in its queue (up to its batch size), hands
//! them to the service's [`BatchWrite`], which writes them all in ONE transaction, and only
//! after the commit answers each waiting caller with its own outcome. Batches form by
//! themselves under load, because items queue while the previous batch commits; a lone item is
//! a batch of one and waits for no timer.
//!
//! Guarantees, given a [`BatchWrite`] that writes the whole batch in one transaction:
//! - no caller hears "done" before its write is committed;
//! - a batch that fails fails every caller in it, with the same error, and commits nothing;
//! - each item keeps the request context (request id, `traceparent`) of the caller that queued
//!   it, for whatever it records (audit records, events).
//!
//! A caller that goes away before its answer leaves its write committed or not, exactly as if it
//! had stayed; the writer only skips answering it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::context::{self, RequestContext};
use crate::storage::{retry_conflicts, Connection, Database, Engine};

/// Writes a batch of items in one transaction.
pub trait BatchWrite: Send + Sync + 'static {
    /// What a caller asks to have written.
    type Item: Send + 'static;
    /// What each caller is answered after the commit (one per item, in order).
    type Output: Send + 'static;

    /// Writes `batch` in one transaction and returns one output per item, in order; an error
    /// means nothing of the batch is committed.
    fn write(
        &self,
        batch: &[Queued<Self::Item>],
    ) -> impl Future<Output = Result<Vec<Self::Output>, sqlx::Error>> + Send;
}

/// An item in a batch, with the request context of the caller that queued it.
pub struct Queued<I> {
    pub item: I,
    pub context: Option<RequestContext>,
}

impl<I> Queued<I> {
    /// Runs `future` in the item's request context (as its caller would have).
    pub async fn in_context<F: Future>(&self, future: F) -> F::Output {
        match &self.context {
            Some(request) => context::scope(request.clone(), future).await,
            None => future.await,
        }
    }
}

/// Why a queued write was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupCommitError {
    #[error("the batch failed: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("the writer has stopped")]
    Stopped,
}

struct Pending<I, O> {
    queued: Queued<I>,
    done: oneshot::Sender<Result<O, GroupCommitError>>,
}

/// The queue to a writer task; clones share it. The task ends when the last clone is dropped.
pub struct GroupCommit<W: BatchWrite> {
    queue: mpsc::Sender<Pending<W::Item, W::Output>>,
    batches: Arc<AtomicU64>,
}

impl<W: BatchWrite> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            batches: self.batches.clone(),
        }
    }
}

impl<W: BatchWrite> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("batches", &self.batches())
            .finish()
    }
}

impl<W: BatchWrite> GroupCommit<W> {
    /// Starts the writer task (on the current Tokio runtime): at most `max_batch` items per
    /// transaction, and up to four batches' worth may wait (past that, callers wait to enqueue:
    /// back-pressure instead of unbounded memory).
    pub fn start(writer: W, max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let (queue, pending) = mpsc::channel(4 * max_batch);
        let batches = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(writer, pending, max_batch, batches.clone()));
        Self { queue, batches }
    }

    /// Batches (transactions) written so far: items per batch is what the grouping buys.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `item` and returns its output once its batch is committed, or why it was not.
    pub async fn write(&self, item: W::Item) -> Result<W::Output, GroupCommitError> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            queued: Queued {
                item,
                context: context::current(),
            },
            done,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| GroupCommitError::Stopped)?;
        answer.await.map_err(|_| GroupCommitError::Stopped)?
    }
}

/// Transactions written by every writer of this process, and the items in them (items per
/// transaction is what the grouping buys): `bazaar_group_commits_total` and
/// `bazaar_group_committed_items_total` in each service's `/metrics`.
pub(crate) static COMMITS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub(crate) static COMMITTED_ITEMS: LazyLock<Counter> = LazyLock::new(Counter::default);

async fn run<W: BatchWrite>(
    writer: W,
    mut queue: mpsc::Receiver<Pending<W::Item, W::Output>>,
    max_batch: usize,
    batches: Arc<AtomicU64>,
) {
    let mut pending = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut pending, max_batch).await > 0 {
        // The first item's arrival woke this task, and tokio runs a task woken that way next,
        // before the tasks already waiting to run (its "LIFO slot"): cut at once, nearly every
        // batch would be that one item, while the requests that arrived with it (the items of
        // one batched request, say) had not yet had their turn to queue theirs. One yield lets
        // them; with nothing else ready to run it costs one turn of the scheduler.
        if pending.len() < max_batch {
            tokio::task::yield_now().await;
            while pending.len() < max_batch {
                match queue.try_recv() {
                    Ok(more) => pending.push(more),
                    Err(_) => break,
                }
            }
        }
        batches.fetch_add(1, Ordering::Relaxed);
        COMMITS.inc();
        COMMITTED_ITEMS.inc_by(pending.len() as u64);
        let (batch, answers): (Vec<_>, Vec<_>) =
            pending.drain(..).map(|p| (p.queued, p.done)).unzip();
        match writer.write(&batch).await {
            Ok(outputs) if outputs.len() == batch.len() => {
                for (output, done) in outputs.into_iter().zip(answers) {
                    // A receiver that is gone was a caller that went away: nothing to answer.
                    let _ = done.send(Ok(output));
                }
            }
            Ok(outputs) => {
                // A BatchWrite bug; the batch is committed, but callers cannot be told what
                // each got, so none is told it succeeded.
                tracing::error!(
                    items = batch.len(),
                    outputs = outputs.len(),
                    "a batch writer answered the wrong number of outputs"
                );
                let error = GroupCommitError::Database(Arc::new(sqlx::Error::Protocol(
                    "the batch writer answered the wrong number of outputs".into(),
                )));
                for done in answers {
                    let _ = done.send(Err(error.clone()));
                }
            }
            Err(error) => {
                tracing::error!(%error, items = batch.len(), "a group-committed batch failed");
                let error = GroupCommitError::Database(Arc::new(error));
                for done in answers {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Write transactions of concurrent callers committed together, each still rolled back alone.
///
/// [`GroupCommit`] needs a [`BatchWrite`] per kind of write; this is the general form for a
/// repository whose commands are each a transaction of their own (reserve, commit, record a
/// payment...): [`GroupedWrites::run`] takes a command's transaction as a function of a
/// connection. On SQLite one writer task runs every command waiting at that moment inside ONE
/// database transaction, each in its own savepoint (the function's own
/// [`Connection::begin`] nests as one), and commits once, so a batch of commands pays for one
/// commit (the WAL frames of each changed page, written once for the batch) instead of one
/// each. A command that rolls back (or fails) undoes only its own savepoint; a command of a
/// single statement needs no transaction of its own (a failed statement undoes itself). On PostgreSQL, whose
/// writers run side by side on their own connections, each command is its own transaction, as
/// if it were run directly.
///
/// A command function:
/// - begins its own transaction on the connection it is given ([`Connection::begin`]) and
///   commits or drops it, exactly as if it had taken the connection itself: what it commits is
///   committed once [`GroupedWrites::run`] returns `Ok` (never before: a failed shared commit
///   fails every command in it), what it leaves uncommitted is undone;
/// - must not touch the database any other way (no query on the `Database`, no
///   `write_turn`: the writer holds both, so that would wait for itself);
/// - may run again after a [conflict](crate::storage::is_conflict), so it must start from
///   scratch each time (as under [`retry_conflicts`]).
///
/// Commands that arrive together share a transaction only if they arrive while the writer is
/// busy or in the same turn of the runtime; a lone command is a transaction of its own, with no
/// savepoint and no timer.
#[derive(Clone)]
pub struct GroupedWrites {
    db: Database,
    /// The writer task, on SQLite only.
    writer: Option<GroupCommit<SharedTransaction>>,
}

impl std::fmt::Debug for GroupedWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedWrites")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// Commands one shared transaction takes at most.
const GROUPED_WRITES_PER_COMMIT: usize = 64;

/// A command's transaction: a function of the connection it runs on, and the state it reads.
pub type Command<S, T> =
    for<'c> fn(&'c S, &'c mut Connection) -> BoxFuture<'c, Result<T, sqlx::Error>>;

impl GroupedWrites {
    /// Groups the commands run on `db`: through a writer task (started on the current Tokio
    /// runtime) on SQLite, one transaction each elsewhere.
    pub fn start(db: Database) -> Self {
        let writer = (db.engine() == Engine::Sqlite).then(|| {
            GroupCommit::start(
                SharedTransaction { db: db.clone() },
                GROUPED_WRITES_PER_COMMIT,
            )
        });
        Self { db, writer }
    }

    /// Shared transactions committed so far (0 where commands are not grouped).
    pub fn batches(&self) -> u64 {
        self.writer.as_ref().map_or(0, GroupCommit::batches)
    }

    /// Runs `command` with `state` in a transaction of its own or shared with the commands
    /// queued beside it, again from the start after a conflict (see [`retry_conflicts`]), and
    /// answers what it returned once what it committed is committed.
    pub async fn run<S, T>(&self, state: S, command: Command<S, T>) -> Result<T, sqlx::Error>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
    {
        let queued = Arc::new(QueuedCommand {
            state,
            command,
            outcome: std::sync::Mutex::new(None),
        });
        retry_conflicts(|| self.run_once(queued.clone())).await
    }

    async fn run_once<S, T>(&self, queued: Arc<QueuedCommand<S, T>>) -> Result<T, sqlx::Error>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
    {
        let Some(writer) = &self.writer else {
            let _turn = self.db.write_turn().await;
            let mut connection = self.db.connection().await?;
            return (queued.command)(&queued.state, &mut connection).await;
        };
        writer
            .write(queued.clone())
            .await
            .map_err(|error| match error {
                GroupCommitError::Database(error) => sqlx::Error::Protocol(format!(
                    "the transaction this write shared failed: {error}"
                )),
                GroupCommitError::Stopped => sqlx::Error::PoolClosed,
            })?;
        queued.take_outcome().unwrap_or_else(|| {
            Err(sqlx::Error::Protocol(
                "a grouped write was committed without running".into(),
            ))
        })
    }
}

/// A command waiting for (or run by) the writer, and what it returned.
struct QueuedCommand<S, T> {
    state: S,
    command: Command<S, T>,
    outcome: std::sync::Mutex<Option<Result<T, sqlx::Error>>>,
}

impl<S, T> QueuedCommand<S, T> {
    fn take_outcome(&self) -> Option<Result<T, sqlx::Error>> {
        self.outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// A queued command with its types erased, so commands of every kind share the writer.
trait GroupedCommand: Send + Sync {
    /// Runs the command on `connection`, keeping what it returned for its caller.
    fn run<'c>(&'c self, connection: &'c mut Connection) -> BoxFuture<'c, ()>;
}

impl<S: Send + Sync + 'static, T: Send + 'static> GroupedCommand for QueuedCommand<S, T> {
    fn run<'c>(&'c self, connection: &'c mut Connection) -> BoxFuture<'c, ()> {
        Box::pin(async move {
            let outcome = (self.command)(&self.state, connection).await;
            *self
                .outcome
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
        })
    }
}

/// The writer's [`BatchWrite`]: every command of the batch in one transaction.
struct SharedTransaction {
    db: Database,
}

impl BatchWrite for SharedTransaction {
    type Item = Arc<dyn GroupedCommand>;
    type Output = ();

    async fn write(
        &self,
        batch: &[Queued<Arc<dyn GroupedCommand>>],
    ) -> Result<Vec<()>, sqlx::Error> {
        let _turn = self.db.write_turn().await;
        let mut connection = self.db.connection().await?;
        if let [alone] = batch {
            // Its own transaction is the whole transaction: no savepoint needed.
            alone.in_context(alone.item.run(&mut connection)).await;
            return Ok(vec![()]);
        }
        let mut shared = connection.begin().await?;
        for queued in batch {
            queued.in_context(queued.item.run(&mut shared)).await;
            // After some errors (a full disk) SQLite rolls the whole transaction back: what
            // the earlier commands did is gone, so none may be told it is committed.
            if !shared.in_transaction() {
                return Err(sqlx::Error::Protocol(
                    "the database rolled back a shared transaction".into(),
                ));
            }
        }
        shared.commit().await?;
        Ok(vec![(); batch.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::testing::sqlite_url;
    use crate::storage::Database;

    /// Inserts each item's number; fails the whole batch when it holds a negative one.
    struct Numbers {
        db: Database,
    }

    impl BatchWrite for Numbers {
        type Item = i64;
        type Output = usize;

        async fn write(&self, batch: &[Queued<i64>]) -> Result<Vec<usize>, sqlx::Error> {
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            for queued in batch {
                sqlx::query("INSERT INTO numbers (n) VALUES ($1)")
                    .bind(queued.item)
                    .execute(&mut *tx)
                    .await?;
            }
            if batch.iter().any(|q| q.item < 0) {
                return Err(sqlx::Error::Protocol("a negative number".into()));
            }
            tx.commit().await?;
            Ok(vec![batch.len(); batch.len()])
        }
    }

    async fn setup(dir: &tempfile::TempDir) -> (Database, GroupCommit<Numbers>) {
        let db = Database::open(
            &sqlite_url(dir.path(), "numbers"),
            &sqlx::migrate::Migrator::DEFAULT,
        )
        .await
        .expect("opens");
        sqlx::query("CREATE TABLE numbers (n BIGINT NOT NULL)")
            .execute(&db)
            .await
            .expect("table");
        let writer = GroupCommit::start(Numbers { db: db.clone() }, 64);
        (db, writer)
    }

    /// Queues `items` at once. On this single-threaded runtime every task enqueues before the
    /// writer runs again, so they cannot all go one per transaction.
    async fn write_all(
        writer: &GroupCommit<Numbers>,
        items: Vec<i64>,
    ) -> Vec<Result<usize, GroupCommitError>> {
        let tasks: Vec<_> = items
            .into_iter()
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(n).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("joins"));
        }
        outcomes
    }

    async fn stored(db: &Database) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM numbers")
            .fetch_one(db)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn concurrent_writes_share_transactions_and_all_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, writer) = setup(&dir).await;
        let outcomes = write_all(&writer, (0..200).collect()).await;
        let mut batch_sizes = 0;
        for outcome in outcomes {
            batch_sizes += outcome.expect("written");
        }
        assert_eq!(stored(&db).await, 200);
        assert!(
            writer.batches() <= 200 / 2,
            "200 queued writes took {} transactions",
            writer.batches()
        );
        assert!(batch_sizes > 200, "some callers shared a batch");
    }

    // As services run: a multi-threaded runtime with one worker, the callers' tasks spawned by
    // a task on that worker (as a server spawns its connections' tasks), so all twenty are
    // ready before any runs. There tokio runs the writer, woken by the first item, before the
    // other tasks ready to run; without the writer's yield every item would be a batch of its
    // own. (Spawned from the test's own thread instead, the worker starts on the first tasks
    // while the rest are still being spawned, and how many share a batch depends on timing.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn items_of_tasks_ready_together_share_a_batch_on_the_services_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, writer) = setup(&dir).await;
        let outcomes = {
            let writer = writer.clone();
            tokio::spawn(async move { write_all(&writer, (0..20).collect()).await })
                .await
                .expect("joins")
        };
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(stored(&db).await, 20);
        assert!(
            writer.batches() <= 3,
            "20 items ready together took {} transactions",
            writer.batches()
        );
    }

    #[tokio::test]
    async fn a_failing_batch_fails_every_caller_in_it_and_commits_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, writer) = setup(&dir).await;
        let mut items: Vec<i64> = (0..50).collect();
        items.push(-1);
        let outcomes = write_all(&writer, items).await;
        // Items queued together with the negative one fail with it; on a single-threaded
        // runtime all 51 are queued before the writer's first batch.
        assert!(writer.batches() < 51, "the writes shared transactions");
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(GroupCommitError::Database(_))),
                "{outcome:?}"
            );
        }
        assert_eq!(
            stored(&db).await,
            0,
            "no write of a failed batch is committed"
        );
        // The writer goes on after a failed batch.
        assert_eq!(write_all(&writer, vec![7]).await[0].as_ref().ok(), Some(&1));
        assert_eq!(stored(&db).await, 1);
    }
}
