//! Every SQL statement of the notifications service, portable across SQLite and PostgreSQL
//! through `sqlx::Any` (`$n` placeholders in order of first use, `TEXT`/`BIGINT` columns,
//! times as Unix milliseconds).
//!
//! Writes happen only in the event consumer's transaction ([`write_email`],
//! [`remember_address`] take its connection); the API only reads.

use bazaar_kit::storage::{now_ms, Database};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::messages::Message;

/// An email as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEmail {
    pub id: String,
    pub user_id: String,
    pub email: Option<String>,
    pub subject: String,
    pub body: String,
    pub event_id: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub created_at_ms: i64,
}

/// A page request: newest first, ids strictly below `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Only this user's emails (`None`: everyone's, for admins).
    pub user_id: Option<String>,
    /// Cursor: the id of the last email of the previous page.
    pub before: Option<String>,
    pub limit: u32,
}

const EMAIL_SELECT: &str =
    "id, user_id, email, subject, body, event_id, event_type, order_id, created_at";

/// The mailbox's data access.
#[derive(Clone, Debug)]
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

    /// One page of emails, newest first, and whether more follow.
    pub async fn page(
        &self,
        request: &PageRequest,
    ) -> Result<(Vec<StoredEmail>, bool), sqlx::Error> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(user_id) = &request.user_id {
            binds.push(user_id.clone());
            conditions.push(format!("user_id = ${}", binds.len()));
        }
        if let Some(before) = &request.before {
            binds.push(before.clone());
            conditions.push(format!("id < ${}", binds.len()));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        // One more than asked tells whether there is a next page without a COUNT.
        let sql = format!(
            "SELECT {EMAIL_SELECT} FROM mailbox{where_clause} ORDER BY id DESC LIMIT ${}",
            binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query
            .bind(i64::from(request.limit) + 1)
            .fetch_all(&self.db)
            .await?;
        let mut emails = rows.iter().map(read_email).collect::<Result<Vec<_>, _>>()?;
        let more = emails.len() > request.limit as usize;
        emails.truncate(request.limit as usize);
        Ok((emails, more))
    }

    /// The email written for `event_id`, if any.
    pub async fn by_event(&self, event_id: &str) -> Result<Option<StoredEmail>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {EMAIL_SELECT} FROM mailbox WHERE event_id = $1"
        ))
        .bind(event_id.to_owned())
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(read_email).transpose()
    }
}

/// Writes `message` for the event `event_id`, on the consumer's connection; `false` when that
/// event already has its email (the unique `event_id` decides, so a redelivery that got past
/// the inbox still writes nothing). Without an address in the message, the user's last known
/// one is used, looked up in the insert itself (a statement fewer per email).
pub async fn write_email(
    tx: &mut bazaar_kit::storage::Connection,
    event_id: &str,
    event_type: &str,
    message: &Message,
) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        "INSERT INTO mailbox (id, user_id, email, subject, body, event_id, event_type, order_id, \
         created_at) VALUES ($1, $2, \
         COALESCE($3, (SELECT email FROM recipients WHERE user_id = $2)), \
         $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(message.user_id.clone())
    .bind(message.email.clone())
    .bind(message.subject.clone())
    .bind(message.body.clone())
    .bind(event_id.to_owned())
    .bind(event_type.to_owned())
    .bind(message.order_id.clone())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// Remembers `email` as the address of `user_id`, on the consumer's connection.
pub async fn remember_address(
    tx: &mut bazaar_kit::storage::Connection,
    user_id: &str,
    email: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO recipients (user_id, email, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, \
         updated_at = excluded.updated_at",
    )
    .bind(user_id.to_owned())
    .bind(email.to_owned())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn read_email(row: &AnyRow) -> Result<StoredEmail, sqlx::Error> {
    Ok(StoredEmail {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        order_id: row.try_get("order_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}
