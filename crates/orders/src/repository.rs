//! Every SQL statement of the orders service, portable across SQLite and PostgreSQL. An order
//! row holds the saga's state (`step`, `saga` JSON, retry bookkeeping and the claim that lets
//! one worker drive it at a time); `order_history` records each step's outcome.
//!
//! On SQLite the writes of this process take turns (kit's `Database::write_turn`): SQLite has one
//! writer at a time and makes the others poll with growing sleeps (its busy handler waits up to
//! 100 ms between tries), which under load cost far more than the writes themselves. Queued in
//! memory instead, each write starts the moment the previous one commits. PostgreSQL locks rows, so its writers run side by side.

use bazaar_kit::group_commit::{BatchWrite, Queued};
use bazaar_kit::storage::{now_ms, Database};
use bazaar_messaging::{NewEvent, Outbox};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{Address, HistoryEntry, Money, Order, OrderLine, SagaState};

/// An order as stored.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub idempotency_key: String,
    pub status: String,
    pub status_reason: String,
    pub step: String,
    pub currency: String,
    pub subtotal_minor: i64,
    pub shipping_minor: i64,
    pub total_minor: i64,
    pub address: Address,
    pub lines: Vec<OrderLine>,
    pub saga: SagaState,
    pub card_token: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl StoredOrder {
    /// The catalogue currency the lines are priced in.
    pub fn line_currency(&self) -> String {
        self.lines
            .first()
            .map(|l| l.unit_price.currency.clone())
            .unwrap_or_else(|| "USD".to_owned())
    }

    pub fn into_order(self, history: Vec<HistoryEntry>) -> Order {
        let line_currency = self.line_currency();
        Order {
            subtotal: Money::new(self.subtotal_minor, &line_currency),
            shipping: Money::new(self.shipping_minor, "USD"),
            total: Money::new(self.total_minor, &self.currency),
            payment_id: self.saga.payment_id.clone(),
            shipment_id: self.saga.shipment_id.clone(),
            tracking_number: self.saga.tracking_number.clone(),
            id: self.id,
            user_id: self.user_id,
            status: self.status,
            status_reason: self.status_reason,
            step: self.step,
            currency: self.currency,
            lines: self.lines,
            shipping_address: self.address,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            history,
        }
    }
}

/// A saga step's outcome, to record if `worker` still holds the order's claim.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub id: String,
    pub worker: String,
    pub update: StepUpdate,
}

/// A new order, as its placement made it, to insert.
#[derive(Debug, Clone)]
pub struct Placement {
    pub order: StoredOrder,
    /// Saga steps already run while it was placed: its history after `placed`.
    pub ran: Vec<HistoryEntry>,
    /// `order.placed`.
    pub event: NewEvent,
    /// The worker that will drive it, and until when, so no other worker starts it meanwhile.
    pub claim: (String, i64),
}

/// One write of the saga's writer.
#[derive(Debug, Clone)]
pub enum SagaWrite {
    /// Insert a placed order (answered `false` when the user already has an order with its
    /// idempotency key).
    Place(Box<Placement>),
    /// Record a step (answered `false` when the claim was lost).
    Record(Box<StepRecord>),
}

/// Group commit of the saga's writes: the placements arriving and the records of every order
/// being driven at that moment are written in one transaction (kit's `group_commit`), instead
/// of a transaction each. Each write is still committed before its caller hears of it (an
/// order's placement before the 202, a record before its order goes on: G6, G8); writes of
/// different orders only share the commit.
pub struct StepBatch {
    pub repository: Repository,
    pub outbox: Outbox,
}

impl BatchWrite for StepBatch {
    type Item = SagaWrite;
    /// Whether the order was inserted, or the step recorded.
    type Output = bool;

    async fn write(&self, batch: &[Queued<SagaWrite>]) -> Result<Vec<bool>, sqlx::Error> {
        let mut placements = Vec::new();
        let mut steps = Vec::new();
        for queued in batch {
            match &queued.item {
                SagaWrite::Place(placement) => placements.push(&**placement),
                SagaWrite::Record(step) => steps.push(&**step),
            }
        }
        let (inserted, recorded) = self
            .repository
            .write(&self.outbox, &placements, &steps)
            .await?;
        let (mut inserted, mut recorded) = (inserted.into_iter(), recorded.into_iter());
        Ok(batch
            .iter()
            .map(|queued| match queued.item {
                SagaWrite::Place(_) => inserted.next(),
                SagaWrite::Record(_) => recorded.next(),
            })
            .map(|done| done.unwrap_or(false))
            .collect())
    }
}

/// What a saga step changes in an order.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    pub step: String,
    pub status: String,
    pub status_reason: String,
    pub saga: SagaState,
    pub shipping_minor: i64,
    pub total_minor: i64,
    /// Retry bookkeeping: 0 after progress.
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    /// What happened, in order: one entry per step run (several when steps share a record).
    pub history: Vec<HistoryEntry>,
    /// An event to publish with the change (terminal states).
    pub event: Option<NewEvent>,
    /// The worker's claim after this step: renewed (a time) when it goes straight on to the
    /// next step, 0 (released) when the order now waits or is done. Moving the claim in the
    /// step's own write saves a write per step.
    pub claimed_until_ms: i64,
}

impl StoredOrder {
    /// The order as [`Repository::record_steps`] left it after recording `update` at `now`.
    pub fn with_update(mut self, update: &StepUpdate, now: i64) -> Self {
        self.step = update.step.clone();
        self.status = update.status.clone();
        self.status_reason = update.status_reason.clone();
        self.saga = update.saga.clone();
        self.shipping_minor = update.shipping_minor;
        self.total_minor = update.total_minor;
        self.attempts = update.attempts;
        self.updated_at_ms = now;
        self
    }
}

const COLUMNS: &str =
    "id, user_id, email, idempotency_key, status, status_reason, step, currency, \
    subtotal_minor, shipping_minor, total_minor, address, lines, saga, card_token, attempts, \
    created_at_ms, updated_at_ms";

#[derive(Clone)]
pub struct Repository {
    db: Database,
}

impl Repository {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The order a user placed with `key`, if any.
    pub async fn find_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<StoredOrder>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM orders WHERE user_id = $1 AND idempotency_key = $2"
        ))
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.db)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    /// Inserts a new order and its `order.placed` event in one transaction of its own (the
    /// service places orders through the saga's writer, [`StepBatch`], which shares it).
    /// `Ok(false)` when the user already has an order with this idempotency key.
    pub async fn insert(
        &self,
        outbox: &Outbox,
        placement: &Placement,
    ) -> Result<bool, sqlx::Error> {
        let (inserted, _) = self.write(outbox, &[placement], &[]).await?;
        Ok(inserted.first().copied().unwrap_or(false))
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredOrder>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT at_ms, step, outcome, detail FROM order_history WHERE order_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    at_ms: r.try_get("at_ms")?,
                    step: r.try_get("step")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Orders, newest first, optionally one user's and/or one status, before a creation time.
    pub async fn list(
        &self,
        user_id: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredOrder>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM orders WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR status = $2) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $3"
        ))
        .bind(user_id.unwrap_or(""))
        .bind(status.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Pending orders due for their next step and not claimed by a live worker.
    pub async fn due(&self, now: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM orders WHERE status = 'pending' AND next_attempt_at_ms <= $1 \
             AND claimed_until_ms < $1 ORDER BY next_attempt_at_ms LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db)
        .await
    }

    /// Earliest time an unclaimed pending order is due (to sleep until then). Read through the
    /// `(status, next_attempt_at_ms)` index in order, stopping at the first unclaimed row, so
    /// it costs the same with ten pending orders or ten thousand; an order claimed by a worker
    /// that died is found by the worker loop's periodic look once the claim has run out.
    pub async fn next_due_at(&self, now: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT next_attempt_at_ms FROM orders WHERE status = 'pending' \
             AND claimed_until_ms < $1 ORDER BY next_attempt_at_ms LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.db)
        .await
    }

    /// Claims a pending order for `worker` until `until_ms`; `None` when another worker holds it
    /// or it is no longer pending.
    pub async fn claim(
        &self,
        id: &str,
        worker: &str,
        until_ms: i64,
    ) -> Result<Option<StoredOrder>, sqlx::Error> {
        let now = now_ms();
        let claimed = bazaar_kit::storage::retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            sqlx::query(
                "UPDATE orders SET claimed_by = $1, claimed_until_ms = $2 WHERE id = $3 \
                 AND status = 'pending' AND (claimed_until_ms < $4 OR claimed_by = $1)",
            )
            .bind(worker)
            .bind(until_ms)
            .bind(id)
            .bind(now)
            .execute(&self.db)
            .await
        })
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        self.get(id).await
    }

    /// Lets go of every claim `worker` holds (see `Saga::run`); how many there were.
    pub async fn release_claims(&self, worker: &str) -> Result<u64, sqlx::Error> {
        let released = bazaar_kit::storage::retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            sqlx::query(
                "UPDATE orders SET claimed_until_ms = 0 \
                 WHERE claimed_by = $1 AND status = 'pending' AND claimed_until_ms > 0",
            )
            .bind(worker)
            .execute(&self.db)
            .await
        })
        .await?;
        Ok(released.rows_affected())
    }

    /// Lets go of a claim (the order waits for `next_attempt_at_ms`).
    pub async fn unclaim(&self, id: &str, worker: &str) -> Result<(), sqlx::Error> {
        bazaar_kit::storage::retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            sqlx::query("UPDATE orders SET claimed_until_ms = 0 WHERE id = $1 AND claimed_by = $2")
                .bind(id)
                .bind(worker)
                .execute(&self.db)
                .await
        })
        .await?;
        Ok(())
    }

    /// Records a batch of saga records' outcomes (and their events) in ONE transaction; see
    /// [`Repository::write`].
    pub async fn record_steps(
        &self,
        outbox: &Outbox,
        steps: &[&StepRecord],
    ) -> Result<Vec<bool>, sqlx::Error> {
        Ok(self.write(outbox, &[], steps).await?.1)
    }

    /// Writes placements and saga records (and their events) in ONE transaction (see
    /// [`StepBatch`]). Each placement inserts its order (unless the user already has one with
    /// its idempotency key), the order's history (`placed`, then the steps it ran) and
    /// `order.placed`. Each record whose worker still holds its order's claim changes the
    /// order, appends its history rows (one per step run) and its event, and renews or releases
    /// the claim as `update.claimed_until_ms` says. Returns, per placement, whether it was
    /// inserted, and per record, whether it was written (`false`: the claim was lost and
    /// nothing of that record was written).
    pub async fn write(
        &self,
        outbox: &Outbox,
        placements: &[&Placement],
        steps: &[&StepRecord],
    ) -> Result<(Vec<bool>, Vec<bool>), sqlx::Error> {
        let (inserted, recorded) = bazaar_kit::storage::retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let mut inserted = Vec::with_capacity(placements.len());
            for placement in placements {
                inserted.push(insert_in(&mut tx, outbox, placement).await?);
            }
            let now = now_ms();
            // The batched statements match steps to orders by id: a batch holds one step per
            // order (an order's task waits for its step's commit), but should one ever hold
            // two, they are written one after the other.
            let mut recorded = vec![false; steps.len()];
            let mut remaining: Vec<usize> = (0..steps.len()).collect();
            while !remaining.is_empty() {
                let mut ids = std::collections::HashSet::new();
                let (round, later): (Vec<usize>, Vec<usize>) =
                    remaining.iter().partition(|&&i| ids.insert(&steps[i].id));
                let batch: Vec<&StepRecord> = round.iter().map(|&i| steps[i]).collect();
                let written = record_steps_in(&mut tx, outbox, &batch, now).await?;
                for (i, written) in round.into_iter().zip(written) {
                    recorded[i] = written;
                }
                remaining = later;
            }
            tx.commit().await?;
            Ok((inserted, recorded))
        })
        .await?;
        let published = inserted.contains(&true)
            || steps
                .iter()
                .zip(&recorded)
                .any(|(record, recorded)| *recorded && record.update.event.is_some());
        if published {
            outbox.notify();
        }
        Ok((inserted, recorded))
    }

    /// Counts by status, for metrics and the admin console.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}

/// Inserts a placed order, its history and `order.placed` in `tx`; `false` (and nothing
/// written) when the user already has an order with its idempotency key.
async fn insert_in(
    tx: &mut bazaar_kit::storage::Connection,
    outbox: &Outbox,
    placement: &Placement,
) -> Result<bool, sqlx::Error> {
    let order = &placement.order;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, email, idempotency_key, status, status_reason, step, \
         currency, subtotal_minor, shipping_minor, total_minor, address, lines, saga, card_token, \
         attempts, next_attempt_at_ms, claimed_by, claimed_until_ms, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, $16, $17, $18, $16, $16) \
         ON CONFLICT (user_id, idempotency_key) DO NOTHING",
    )
    .bind(&order.id)
    .bind(&order.user_id)
    .bind(&order.email)
    .bind(&order.idempotency_key)
    .bind(&order.status)
    .bind(&order.status_reason)
    .bind(&order.step)
    .bind(&order.currency)
    .bind(order.subtotal_minor)
    .bind(order.shipping_minor)
    .bind(order.total_minor)
    .bind(json(&order.address))
    .bind(json(&order.lines))
    .bind(json(&order.saga))
    .bind(&order.card_token)
    .bind(order.created_at_ms)
    .bind(&placement.claim.0)
    .bind(placement.claim.1)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    let placed = HistoryEntry {
        at_ms: order.created_at_ms,
        step: "placed".into(),
        outcome: "ok".into(),
        detail: "order accepted; checkout started".into(),
    };
    let entries: Vec<(&str, i64, &HistoryEntry)> = std::iter::once(&placed)
        .chain(&placement.ran)
        .enumerate()
        .map(|(offset, entry)| (order.id.as_str(), offset as i64, entry))
        .collect();
    insert_histories(tx, &entries).await?;
    outbox.append_in(tx, placement.event.clone()).await?;
    Ok(true)
}

/// Writes `steps` (of distinct orders) in `tx`: one `UPDATE … FROM (VALUES …) RETURNING` for
/// all the orders whose claim still holds and one multi-row insert for their history, instead
/// of two statements per step. Each statement costs a round trip to PostgreSQL, or on SQLite
/// its own parse-or-cache lookup and b-tree work, which is what a group commit of many steps
/// is for saving.
async fn record_steps_in(
    tx: &mut bazaar_kit::storage::Connection,
    outbox: &Outbox,
    steps: &[&StepRecord],
    now: i64,
) -> Result<Vec<bool>, sqlx::Error> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    // VALUES columns are named column1, column2… on both engines. The commit time is a
    // column of each row too, so the VALUES hold every parameter.
    const COLUMNS_PER_STEP: usize = 12;
    let rows = padded_rows(steps.len());
    let values = placeholders(rows, COLUMNS_PER_STEP);
    let sql = format!(
        "UPDATE orders SET step = v.column3, status = v.column4, status_reason = v.column5, \
         saga = v.column6, shipping_minor = v.column7, total_minor = v.column8, \
         attempts = v.column9, next_attempt_at_ms = v.column10, claimed_until_ms = v.column11, \
         updated_at_ms = v.column12 \
         FROM (VALUES {values}) AS v \
         WHERE orders.id = v.column1 AND orders.claimed_by = v.column2 \
         AND orders.status = 'pending' RETURNING id"
    );
    let mut update = sqlx::query(&sql);
    for record in steps {
        let step = &record.update;
        update = update
            .bind(&record.id)
            .bind(&record.worker)
            .bind(&step.step)
            .bind(&step.status)
            .bind(&step.status_reason)
            .bind(json(&step.saga))
            .bind(step.shipping_minor)
            .bind(step.total_minor)
            .bind(step.attempts)
            .bind(step.next_attempt_at_ms)
            .bind(step.claimed_until_ms)
            .bind(now);
    }
    for _ in steps.len()..rows {
        // A row of NULLs matches no order (`orders.id = NULL` is never true).
        for _ in 0..6 {
            update = update.bind(None::<String>);
        }
        for _ in 6..COLUMNS_PER_STEP {
            update = update.bind(None::<i64>);
        }
    }
    let changed: std::collections::HashSet<String> = update
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let recorded: Vec<bool> = steps.iter().map(|r| changed.contains(&r.id)).collect();

    let written: Vec<&StepRecord> = steps
        .iter()
        .zip(&recorded)
        .filter(|(_, recorded)| **recorded)
        .map(|(record, _)| *record)
        .collect();
    if !written.is_empty() {
        let entries: Vec<(&str, i64, &HistoryEntry)> = written
            .iter()
            .flat_map(|record| {
                (0i64..)
                    .zip(&record.update.history)
                    .map(|(offset, entry)| (record.id.as_str(), offset, entry))
            })
            .collect();
        insert_histories(tx, &entries).await?;
    }
    for record in written {
        if let Some(event) = &record.update.event {
            outbox.append_in(tx, event.clone()).await?;
        }
    }
    Ok(recorded)
}

/// Rows a batched statement is written with for `needed` rows: the next power of two, the rest
/// padded with NULL rows the statement skips. So the batched statements have a handful of
/// texts (7 for up to 64 steps), each prepared once and kept: preparing a statement of many
/// `VALUES` rows each time cost as much as running it (on SQLite, parsing these statements was
/// a third of the step records' database time; docs/performance.md, tenth round).
fn padded_rows(needed: usize) -> usize {
    needed.max(1).next_power_of_two()
}

/// `rows` groups of `columns` numbered placeholders from `$1`: `($1, $2), ($3, $4)`.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (0..columns)
                .map(|column| format!("${}", 1 + row * columns + column))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One history row for each `(order id, offset, entry)`, numbered in the insert itself as the
/// order's last row before the statement plus 1 plus `offset` (an order's several entries carry
/// offsets 0, 1, 2…): one statement, however many rows, and no read first. Both engines
/// evaluate the `MAX` against the table as it was before the statement.
async fn insert_histories(
    tx: &mut bazaar_kit::storage::Connection,
    entries: &[(&str, i64, &HistoryEntry)],
) -> Result<(), sqlx::Error> {
    let rows = padded_rows(entries.len());
    let values = placeholders(rows, 6);
    let sql = format!(
        "INSERT INTO order_history (order_id, seq, at_ms, step, outcome, detail) \
         SELECT v.column1, \
         (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM order_history h WHERE h.order_id = v.column1) \
         + v.column2, v.column3, v.column4, v.column5, v.column6 FROM (VALUES {values}) AS v \
         WHERE v.column1 IS NOT NULL"
    );
    let mut insert = sqlx::query(&sql);
    for (order_id, offset, entry) in entries {
        insert = insert
            .bind(*order_id)
            .bind(*offset)
            .bind(entry.at_ms)
            .bind(&entry.step)
            .bind(&entry.outcome)
            .bind(&entry.detail);
    }
    for _ in entries.len()..rows {
        // Padding, skipped by the `WHERE`.
        insert = insert
            .bind(None::<String>)
            .bind(None::<i64>)
            .bind(None::<i64>)
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(None::<String>);
    }
    insert.execute(&mut *tx).await?;
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn parse<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn decode(row: &AnyRow) -> Result<StoredOrder, sqlx::Error> {
    Ok(StoredOrder {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        step: row.try_get("step")?,
        currency: row.try_get("currency")?,
        subtotal_minor: row.try_get("subtotal_minor")?,
        shipping_minor: row.try_get("shipping_minor")?,
        total_minor: row.try_get("total_minor")?,
        address: parse(row, "address")?,
        lines: parse(row, "lines")?,
        saga: parse(row, "saga")?,
        card_token: row.try_get("card_token")?,
        attempts: row.try_get("attempts")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}
