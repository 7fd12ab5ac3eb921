//! Every SQL statement of the processor: the vault, authorizations, and the idempotency keys
//! that make retries safe. Portable across SQLite and PostgreSQL through `sqlx::Any`.
//!
//! Idempotency is enforced by the database, not by a read-then-write in the handler: each
//! effect's transaction starts by inserting its key, so of two concurrent requests with one key
//! exactly one inserts it (the other waits for it to commit, then hits the primary key) and the
//! loser answers with what the winner stored. The key row and the effect commit together, so
//! an answer is stored if and only if its effect happened. Those writes go through kit's
//! `GroupedWrites`: on SQLite the ones arriving together share a commit, each in its own
//! savepoint, so a key's rollback undoes only its own request.

use bazaar_kit::group_commit::GroupedWrites;
use bazaar_kit::storage::{now_ms, Connection, Database};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{Authorization, Card, InvalidTransition, Outcome, State, Transition};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An answer stored under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Hash of the request that used the key first.
    pub fingerprint: String,
    pub status: u16,
    /// The JSON body answered.
    pub body: String,
}

/// What an idempotent write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded<T> {
    /// It happened now.
    New(T),
    /// The key was used before: here is what was stored for it.
    Existing(StoredResponse),
}

/// What a capture, void or refund came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    Done(Authorization),
    Existing(StoredResponse),
    NotFound,
    Invalid(InvalidTransition),
}

/// Columns of an authorization joined with its card.
const AUTHORIZATION_SELECT: &str = "SELECT a.id, a.status, a.decline_code, a.amount_minor, \
     a.currency, a.reference, a.captured_minor, a.refunded_minor, a.state, a.token, c.brand, \
     c.last4, a.created_at, a.updated_at FROM authorizations a JOIN cards c ON c.token = a.token";

/// Whether `error` is a primary-key or unique violation (the idempotency key already exists).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("UNIQUE constraint")
                || db.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

fn authorization_from_row(row: &AnyRow) -> Result<Authorization, RepoError> {
    let status: String = row.try_get("status")?;
    let state: String = row.try_get("state")?;
    Ok(Authorization {
        id: row.try_get("id")?,
        status: Outcome::parse(&status)
            .ok_or_else(|| RepoError::Corrupt(format!("unknown status {status}")))?,
        decline_code: row.try_get("decline_code")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        reference: row.try_get("reference")?,
        captured_minor: row.try_get("captured_minor")?,
        refunded_minor: row.try_get("refunded_minor")?,
        state: State::parse(&state)
            .ok_or_else(|| RepoError::Corrupt(format!("unknown state {state}")))?,
        token: row.try_get("token")?,
        brand: row.try_get("brand")?,
        last4: row.try_get("last4")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}

/// The processor's data access.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    /// Authorizations and their transitions: on SQLite those arriving together share a
    /// commit.
    writes: GroupedWrites,
}

impl Repository {
    /// Starts the writer on the current Tokio runtime (see `GroupedWrites`).
    pub fn new(db: Database) -> Self {
        Self {
            writes: GroupedWrites::start(db.clone()),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Puts a card in the vault.
    pub async fn create_card(&self, card: &Card) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO cards (token, number, brand, last4, exp_month, exp_year, holder, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&card.token)
        .bind(&card.number)
        .bind(&card.brand)
        .bind(&card.last4)
        .bind(card.exp_month)
        .bind(card.exp_year)
        .bind(card.holder.clone())
        .bind(now_ms())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// A card from the vault.
    pub async fn card(&self, token: &str) -> Result<Option<Card>, RepoError> {
        let row = sqlx::query(
            "SELECT token, number, brand, last4, exp_month, exp_year, holder FROM cards \
             WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            Ok(Card {
                token: row.try_get("token")?,
                number: row.try_get("number")?,
                brand: row.try_get("brand")?,
                last4: row.try_get("last4")?,
                exp_month: row.try_get("exp_month")?,
                exp_year: row.try_get("exp_year")?,
                holder: row.try_get("holder")?,
            })
        })
        .transpose()
    }

    /// What was answered under `key`, if it was used.
    pub async fn stored_response(&self, key: &str) -> Result<Option<StoredResponse>, RepoError> {
        Ok(stored_response(&mut self.db.connection().await?, key).await?)
    }

    /// Records `authorization` and, in the same transaction, `key` with the answer (`status`
    /// and the authorization as JSON). If the key was used already, nothing is written and the
    /// earlier answer is returned.
    pub async fn create_authorization(
        &self,
        key: &str,
        fingerprint: &str,
        status: u16,
        authorization: &Authorization,
    ) -> Result<Recorded<()>, RepoError> {
        let body =
            serde_json::to_string(authorization).map_err(|e| RepoError::Corrupt(e.to_string()))?;
        let command = (
            key.to_owned(),
            fingerprint.to_owned(),
            status,
            authorization.clone(),
            body,
        );
        let recorded = self
            .writes
            .run(
                command,
                |(key, fingerprint, status, authorization, body), connection| {
                    Box::pin(create_authorization_in(
                        connection,
                        key,
                        fingerprint,
                        *status,
                        authorization,
                        body,
                    ))
                },
            )
            .await?;
        Ok(recorded)
    }

    /// Applies `transition` to authorization `id` under `key`: the key, the new state and the
    /// answer (status 200 and the authorization after the change) commit together. A refused
    /// transition or an unknown id stores nothing, so the key stays free.
    pub async fn transition(
        &self,
        key: &str,
        fingerprint: &str,
        id: &str,
        transition: Transition,
    ) -> Result<TransitionOutcome, RepoError> {
        // A concurrent change between our read and our conditional update (PostgreSQL, read
        // committed) makes the update match nothing: read again and decide again.
        for _ in 0..10 {
            if let Some(outcome) = self
                .try_transition(key, fingerprint, id, transition)
                .await?
            {
                return Ok(outcome);
            }
        }
        Err(RepoError::Database(sqlx::Error::Protocol(format!(
            "authorization {id} kept changing under the {} transition",
            transition.name()
        ))))
    }

    /// One attempt of [`Self::transition`]; `None` when the row changed under it.
    async fn try_transition(
        &self,
        key: &str,
        fingerprint: &str,
        id: &str,
        transition: Transition,
    ) -> Result<Option<TransitionOutcome>, RepoError> {
        let command = (
            key.to_owned(),
            fingerprint.to_owned(),
            id.to_owned(),
            transition,
        );
        let attempt = self
            .writes
            .run(command, |(key, fingerprint, id, transition), connection| {
                Box::pin(try_transition_in(
                    connection,
                    key,
                    fingerprint,
                    id,
                    *transition,
                ))
            })
            .await?;
        match attempt {
            Attempt::Outcome(outcome) => Ok(Some(outcome)),
            Attempt::Stale => Ok(None),
            Attempt::Corrupt(what) => Err(RepoError::Corrupt(what)),
        }
    }

    /// One authorization.
    pub async fn authorization(&self, id: &str) -> Result<Option<Authorization>, RepoError> {
        let row = sqlx::query(&format!("{AUTHORIZATION_SELECT} WHERE a.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        row.as_ref().map(authorization_from_row).transpose()
    }

    /// The `limit` most recent authorizations (with `reference`, if given), oldest first.
    pub async fn authorizations(
        &self,
        reference: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Authorization>, RepoError> {
        let rows = match reference {
            Some(reference) => {
                sqlx::query(&format!(
                    "{AUTHORIZATION_SELECT} WHERE a.reference = $1 \
                     ORDER BY a.created_at DESC, a.id DESC LIMIT $2"
                ))
                .bind(reference)
                .bind(i64::from(limit))
                .fetch_all(&self.db)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{AUTHORIZATION_SELECT} ORDER BY a.created_at DESC, a.id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.db)
                .await?
            }
        };
        let mut list = rows
            .iter()
            .map(authorization_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        list.reverse();
        Ok(list)
    }
}

async fn insert_key(
    connection: &mut Connection,
    key: &str,
    fingerprint: &str,
    status: u16,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, fingerprint, status, body, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(key)
    .bind(fingerprint)
    .bind(i64::from(status))
    .bind(body)
    .bind(now_ms())
    .execute(connection)
    .await?;
    Ok(())
}

async fn stored_response(
    connection: &mut Connection,
    key: &str,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT fingerprint, status, body FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(connection)
    .await?;
    row.map(|row| {
        let status: i64 = row.try_get("status")?;
        Ok(StoredResponse {
            fingerprint: row.try_get("fingerprint")?,
            status: u16::try_from(status).unwrap_or(500),
            body: row.try_get("body")?,
        })
    })
    .transpose()
}

/// The answer stored under `key`, read after our insert of it lost (so it is committed), on the
/// connection whose transaction lost (the database has no other on SQLite).
async fn existing(connection: &mut Connection, key: &str) -> Result<StoredResponse, sqlx::Error> {
    stored_response(connection, key)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// The transaction of [`Repository::create_authorization`], on the connection its writer
/// gives.
async fn create_authorization_in(
    connection: &mut Connection,
    key: &str,
    fingerprint: &str,
    status: u16,
    authorization: &Authorization,
    body: &str,
) -> Result<Recorded<()>, sqlx::Error> {
    let mut tx = connection.begin().await?;
    let inserted = insert_key(&mut tx, key, fingerprint, status, body).await;
    match inserted {
        Err(error) if is_unique_violation(&error) => {
            tx.rollback().await?;
            return Ok(Recorded::Existing(existing(&mut *connection, key).await?));
        }
        other => other?,
    }
    let a = authorization;
    sqlx::query(
        "INSERT INTO authorizations (id, token, reference, amount_minor, currency, \
         status, decline_code, state, captured_minor, refunded_minor, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&a.id)
    .bind(&a.token)
    .bind(&a.reference)
    .bind(a.amount_minor)
    .bind(&a.currency)
    .bind(a.status.as_str())
    .bind(a.decline_code.clone())
    .bind(a.state.as_str())
    .bind(a.captured_minor)
    .bind(a.refunded_minor)
    .bind(a.created_at_ms)
    .bind(a.updated_at_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded::New(()))
}

/// One attempt of [`Repository::transition`], on the connection its writer gives.
async fn try_transition_in(
    connection: &mut Connection,
    key: &str,
    fingerprint: &str,
    id: &str,
    transition: Transition,
) -> Result<Attempt, sqlx::Error> {
    let mut tx = connection.begin().await?;
    // The key first: it serializes requests with the same key before anything is read.
    match insert_key(&mut tx, key, fingerprint, 0, "").await {
        Err(error) if is_unique_violation(&error) => {
            tx.rollback().await?;
            let stored = existing(&mut *connection, key).await?;
            return Ok(Attempt::Outcome(TransitionOutcome::Existing(stored)));
        }
        other => other?,
    };
    let row = sqlx::query(&format!("{AUTHORIZATION_SELECT} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Attempt::Outcome(TransitionOutcome::NotFound));
    };
    let current = match authorization_from_row(&row) {
        Ok(current) => current,
        Err(error) => return Ok(Attempt::Corrupt(error.to_string())),
    };
    let next = match current.apply(transition, now_ms()) {
        Ok(next) => next,
        Err(invalid) => {
            tx.rollback().await?;
            return Ok(Attempt::Outcome(TransitionOutcome::Invalid(invalid)));
        }
    };
    let updated = sqlx::query(
        "UPDATE authorizations SET state = $1, captured_minor = $2, refunded_minor = $3, \
         updated_at = $4 WHERE id = $5 AND state = $6 AND captured_minor = $7 \
         AND refunded_minor = $8",
    )
    .bind(next.state.as_str())
    .bind(next.captured_minor)
    .bind(next.refunded_minor)
    .bind(next.updated_at_ms)
    .bind(id)
    .bind(current.state.as_str())
    .bind(current.captured_minor)
    .bind(current.refunded_minor)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Attempt::Stale);
    }
    let body = match serde_json::to_string(&next) {
        Ok(body) => body,
        Err(error) => return Ok(Attempt::Corrupt(error.to_string())),
    };
    sqlx::query("UPDATE idempotency_keys SET status = 200, body = $1 WHERE idempotency_key = $2")
        .bind(&body)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Attempt::Outcome(TransitionOutcome::Done(next)))
}

/// One try of a transition's transaction.
enum Attempt {
    Outcome(TransitionOutcome),
    /// The authorization changed between the read and the conditional update.
    Stale,
    Corrupt(String),
}
