//! Every SQL statement of the payments service, portable across SQLite and PostgreSQL through
//! `sqlx::Any`.
//!
//! The write-ahead discipline that makes G4 (never a double charge) hold lives here with the
//! handlers in `api`: a payment row is inserted as `pending` (with the processor idempotency
//! key it will use) *before* the processor is called, and the processor's answer is stored
//! together with its event (transactional outbox) in one transaction. A status only moves
//! forward through conditional updates (`WHERE status = <expected>`), so a concurrent retry
//! can neither apply an answer twice nor publish an event twice.
//!
//! On SQLite the writes of this process take turns (kit's `Database::write_turn`): SQLite has one
//! writer at a time and makes the others poll with growing sleeps (its busy handler waits up to
//! 100 ms between tries), which under load cost far more than the writes; queued in memory,
//! each write starts the moment the previous one commits. PostgreSQL locks rows, so its writers run side by side.
//!
//! The payment and operation writes of the checkout (pending payment, authorization result,
//! pending operation, operation result) go through kit's `GroupedWrites`: on SQLite the ones
//! waiting at the same moment (the items of one batched request from the orders saga) share
//! one commit, each in its own savepoint. Each write is still committed before its caller
//! goes on, so the write-ahead order above holds.

use bazaar_kit::group_commit::GroupedWrites;
use bazaar_kit::storage::{now_ms, Connection, Database};
use bazaar_messaging::{NewEvent, Outbox};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{
    AuthorizedEvent, Card, DeclinedEvent, Money, Operation, Payment, PaymentEvent, Status,
    StoredCard, StoredOperation, StoredPayment,
};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The result of an insert keyed by an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted<T> {
    /// Written now.
    New(T),
    /// The key was taken: what is stored under it.
    Existing(T),
}

/// The processor's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationResult {
    pub processor_id: String,
    /// `None` when approved.
    pub decline_code: Option<String>,
}

const PAYMENT_COLUMNS: &str = "id, idempotency_key, order_id, user_id, card_token, last4, \
     amount_minor, currency, status, decline_code, processor_key, processor_id, created_at, \
     updated_at";

fn payment_from_row(row: &AnyRow) -> Result<StoredPayment, RepoError> {
    let status: String = row.try_get("status")?;
    Ok(StoredPayment {
        payment: Payment {
            payment_id: row.try_get("id")?,
            order_id: row.try_get("order_id")?,
            user_id: row.try_get("user_id")?,
            status: Status::parse(&status)
                .ok_or_else(|| RepoError::Corrupt(format!("unknown payment status {status}")))?,
            decline_code: row.try_get("decline_code")?,
            amount: Money {
                amount_minor: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
            },
            last4: row.try_get("last4")?,
            card_token: row.try_get("card_token")?,
            processor_authorization_id: row.try_get("processor_id")?,
            created_at_ms: row.try_get("created_at")?,
            updated_at_ms: row.try_get("updated_at")?,
        },
        idempotency_key: row.try_get("idempotency_key")?,
        processor_key: row.try_get("processor_key")?,
    })
}

fn operation_from_row(row: &AnyRow) -> Result<StoredOperation, RepoError> {
    let operation: String = row.try_get("operation")?;
    let done: i64 = row.try_get("done")?;
    Ok(StoredOperation {
        idempotency_key: row.try_get("idempotency_key")?,
        payment_id: row.try_get("payment_id")?,
        operation: Operation::parse(&operation)
            .ok_or_else(|| RepoError::Corrupt(format!("unknown operation {operation}")))?,
        processor_key: row.try_get("processor_key")?,
        done: done != 0,
    })
}

/// The payments service's data access.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    outbox: Outbox,
    /// Payment and operation writes, committed together under load.
    writes: GroupedWrites,
}

impl Repository {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self {
            writes: GroupedWrites::start(db.clone()),
            db,
            outbox,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Saves a tokenized card for its owner.
    pub async fn save_card(&self, card: &StoredCard) -> Result<(), RepoError> {
        let _turn = self.db.write_turn().await;
        sqlx::query(
            "INSERT INTO cards (token, user_id, brand, last4, exp_month, exp_year, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&card.card.card_token)
        .bind(&card.user_id)
        .bind(&card.card.brand)
        .bind(&card.card.last4)
        .bind(card.card.exp_month)
        .bind(card.card.exp_year)
        .bind(card.created_at_ms)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// A saved card.
    pub async fn card(&self, token: &str) -> Result<Option<StoredCard>, RepoError> {
        let row = sqlx::query(
            "SELECT token, user_id, brand, last4, exp_month, exp_year, created_at FROM cards \
             WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(card_from_row).transpose()
    }

    /// A user's saved cards, oldest first.
    pub async fn cards_of(&self, user_id: &str) -> Result<Vec<Card>, RepoError> {
        let rows = sqlx::query(
            "SELECT token, user_id, brand, last4, exp_month, exp_year, created_at FROM cards \
             WHERE user_id = $1 ORDER BY created_at, token",
        )
        .bind(user_id)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| card_from_row(row).map(|c| c.card))
            .collect()
    }

    /// Inserts a `pending` payment, or returns the one already stored under its idempotency
    /// key (a retry, or a concurrent request with the same key).
    pub async fn insert_pending(
        &self,
        payment: &StoredPayment,
    ) -> Result<Inserted<StoredPayment>, RepoError> {
        Ok(self
            .writes
            .run(payment.clone(), |payment, connection| {
                Box::pin(insert_pending_in(connection, payment))
            })
            .await?)
    }

    /// A payment by id.
    pub async fn payment(&self, id: &str) -> Result<Option<StoredPayment>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// The payment created under the caller's idempotency key.
    pub async fn payment_by_key(&self, key: &str) -> Result<Option<StoredPayment>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idempotency_key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// Payments, oldest first: of one order and/or one user; at most `limit`, the most recent.
    pub async fn payments(
        &self,
        order_id: Option<&str>,
        user_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Payment>, RepoError> {
        // Unset filters bind as NULL and match everything, so one statement serves all cases.
        let rows = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments \
             WHERE ($1 IS NULL OR order_id = $1) AND ($2 IS NULL OR user_id = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(order_id.map(str::to_owned))
        .bind(user_id.map(str::to_owned))
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        let mut payments = rows
            .iter()
            .map(|row| payment_from_row(row).map(|p| p.payment))
            .collect::<Result<Vec<_>, _>>()?;
        payments.reverse();
        Ok(payments)
    }

    /// Stores the processor's answer to a pending payment's authorization and its event
    /// (`payment.authorized` or `payment.declined`) in one transaction. A payment that is no
    /// longer pending (a concurrent retry stored the answer first) is left as it is, with no
    /// second event. Returns the payment as stored.
    pub async fn record_authorization(
        &self,
        payment_id: &str,
        result: &AuthorizationResult,
    ) -> Result<StoredPayment, RepoError> {
        let status = match result.decline_code {
            None => Status::Authorized,
            Some(_) => Status::Declined,
        };
        let command = (
            self.outbox.clone(),
            payment_id.to_owned(),
            result.clone(),
            status,
        );
        let recorded = self
            .writes
            .run(
                command,
                |(outbox, payment_id, result, status), connection| {
                    Box::pin(record_authorization_in(
                        connection, outbox, payment_id, result, *status,
                    ))
                },
            )
            .await?;
        match recorded {
            Some(stored) => {
                self.outbox.notify();
                Ok(stored)
            }
            // No longer pending (recorded by an earlier call): as it is now.
            None => self
                .payment(payment_id)
                .await?
                .ok_or_else(|| RepoError::Corrupt(format!("payment {payment_id} vanished"))),
        }
    }

    /// A capture, void or refund recorded under the caller's key.
    pub async fn operation(&self, key: &str) -> Result<Option<StoredOperation>, RepoError> {
        let row = sqlx::query(
            "SELECT idempotency_key, payment_id, operation, processor_key, done \
             FROM payment_operations WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    /// Records an operation before the processor is called, or returns the one already stored
    /// under its key.
    pub async fn insert_operation(
        &self,
        operation: &StoredOperation,
    ) -> Result<Inserted<StoredOperation>, RepoError> {
        Ok(self
            .writes
            .run(operation.clone(), |operation, connection| {
                Box::pin(insert_operation_in(connection, operation))
            })
            .await?)
    }

    /// Stores that the processor did `operation`: the payment moves to the operation's status
    /// (if it is still in the status the operation starts from) with its event, and the
    /// operation is marked done, in one transaction. Returns the payment as stored.
    pub async fn record_operation(
        &self,
        operation: &StoredOperation,
    ) -> Result<StoredPayment, RepoError> {
        let recorded = self
            .writes
            .run(
                (self.outbox.clone(), operation.clone()),
                |(outbox, operation), connection| {
                    Box::pin(record_operation_in(connection, outbox, operation))
                },
            )
            .await?;
        match recorded {
            Some(stored) => {
                self.outbox.notify();
                Ok(stored)
            }
            // Not in the status the operation starts from (done by an earlier call, or under
            // another key): as it is now.
            None => self.payment(&operation.payment_id).await?.ok_or_else(|| {
                RepoError::Corrupt(format!("payment {} vanished", operation.payment_id))
            }),
        }
    }
}

/// The transaction of [`Repository::insert_pending`], on the connection its writer gives: one
/// statement, so no transaction of its own.
async fn insert_pending_in(
    connection: &mut Connection,
    payment: &StoredPayment,
) -> Result<Inserted<StoredPayment>, sqlx::Error> {
    let p = &payment.payment;
    let inserted = sqlx::query(&format!(
        "INSERT INTO payments ({PAYMENT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (idempotency_key) DO NOTHING"
    ))
    .bind(&p.payment_id)
    .bind(&payment.idempotency_key)
    .bind(&p.order_id)
    .bind(&p.user_id)
    .bind(&p.card_token)
    .bind(&p.last4)
    .bind(p.amount.amount_minor)
    .bind(&p.amount.currency)
    .bind(Status::Pending.as_str())
    .bind(None::<String>)
    .bind(&payment.processor_key)
    .bind(None::<String>)
    .bind(p.created_at_ms)
    .bind(p.updated_at_ms)
    .execute(&mut *connection)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(Inserted::New(payment.clone()));
    }
    let row = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idempotency_key = $1"
    ))
    .bind(&payment.idempotency_key)
    .fetch_one(&mut *connection)
    .await?;
    let existing = payment_from_row(&row).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(Inserted::Existing(existing))
}

/// The transaction of [`Repository::record_authorization`], on the connection its writer
/// gives: the payment as stored, or `None` when it was no longer pending.
async fn record_authorization_in(
    connection: &mut Connection,
    outbox: &Outbox,
    payment_id: &str,
    result: &AuthorizationResult,
    status: Status,
) -> Result<Option<StoredPayment>, sqlx::Error> {
    let mut tx = connection.begin().await?;
    // RETURNING: the payment as stored, without reading it back.
    let updated = sqlx::query(&format!(
        "UPDATE payments SET status = $1, decline_code = $2, processor_id = $3, \
         updated_at = $4 WHERE id = $5 AND status = $6 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(status.as_str())
    .bind(result.decline_code.clone())
    .bind(&result.processor_id)
    .bind(now_ms())
    .bind(payment_id)
    .bind(Status::Pending.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = updated else {
        tx.rollback().await?;
        return Ok(None);
    };
    let stored = payment_from_row(&row).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let p = &stored.payment;
    let event = match &result.decline_code {
        None => NewEvent::new(
            "payment.authorized",
            &p.payment_id,
            &AuthorizedEvent {
                payment_id: p.payment_id.clone(),
                order_id: p.order_id.clone(),
                user_id: p.user_id.clone(),
                amount: p.amount.clone(),
                last4: p.last4.clone(),
            },
        ),
        Some(code) => NewEvent::new(
            "payment.declined",
            &p.payment_id,
            &DeclinedEvent {
                payment_id: p.payment_id.clone(),
                order_id: p.order_id.clone(),
                user_id: p.user_id.clone(),
                amount: p.amount.clone(),
                last4: p.last4.clone(),
                decline_code: code.clone(),
            },
        ),
    };
    outbox.append_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Some(stored))
}

/// The transaction of [`Repository::insert_operation`], on the connection its writer gives:
/// one statement, so no transaction of its own.
async fn insert_operation_in(
    connection: &mut Connection,
    operation: &StoredOperation,
) -> Result<Inserted<StoredOperation>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payment_operations (idempotency_key, payment_id, operation, \
         processor_key, done, created_at, updated_at) VALUES ($1, $2, $3, $4, 0, $5, $5) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&operation.idempotency_key)
    .bind(&operation.payment_id)
    .bind(operation.operation.as_str())
    .bind(&operation.processor_key)
    .bind(now_ms())
    .execute(&mut *connection)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(Inserted::New(operation.clone()));
    }
    let row = sqlx::query(
        "SELECT idempotency_key, payment_id, operation, processor_key, done \
         FROM payment_operations WHERE idempotency_key = $1",
    )
    .bind(&operation.idempotency_key)
    .fetch_one(&mut *connection)
    .await?;
    let existing = operation_from_row(&row).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(Inserted::Existing(existing))
}

/// The transaction of [`Repository::record_operation`], on the connection its writer gives:
/// the payment as stored, or `None` when it was not in the status the operation starts from.
async fn record_operation_in(
    connection: &mut Connection,
    outbox: &Outbox,
    operation: &StoredOperation,
) -> Result<Option<StoredPayment>, sqlx::Error> {
    let op = operation.operation;
    let mut tx = connection.begin().await?;
    let now = now_ms();

    // RETURNING: the payment as stored, without reading it back.
    let updated = sqlx::query(&format!(
        "UPDATE payments SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4 \
         RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(op.to_status().as_str())
    .bind(now)
    .bind(&operation.payment_id)
    .bind(op.from_status().as_str())
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE payment_operations SET done = 1, updated_at = $1 \
         WHERE idempotency_key = $2",
    )
    .bind(now)
    .bind(&operation.idempotency_key)
    .execute(&mut *tx)
    .await?;
    let stored = match updated {
        Some(row) => {
            let stored = payment_from_row(&row).map_err(|e| sqlx::Error::Decode(e.into()))?;
            let p = &stored.payment;
            let payload = PaymentEvent {
                payment_id: p.payment_id.clone(),
                order_id: p.order_id.clone(),
                user_id: p.user_id.clone(),
                amount: p.amount.clone(),
            };
            outbox
                .append_in(
                    &mut tx,
                    NewEvent::new(op.event_type(), &p.payment_id, &payload),
                )
                .await?;
            Some(stored)
        }
        None => None,
    };
    tx.commit().await?;
    Ok(stored)
}

fn card_from_row(row: &AnyRow) -> Result<StoredCard, RepoError> {
    Ok(StoredCard {
        card: Card {
            card_token: row.try_get("token")?,
            brand: row.try_get("brand")?,
            last4: row.try_get("last4")?,
            exp_month: row.try_get("exp_month")?,
            exp_year: row.try_get("exp_year")?,
        },
        user_id: row.try_get("user_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}
