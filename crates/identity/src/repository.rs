//! Every SQL statement of the identity provider, so handlers never see SQL.
//!
//! The statements run unchanged on SQLite and PostgreSQL through `sqlx::Any`: `$n`
//! placeholders, `TEXT`/`BIGINT` columns, lists as JSON `TEXT`, flags as `BIGINT` 0/1, times
//! as Unix milliseconds.
//!
//! The security-critical state changes are single conditional statements whose row count
//! says who won: a code is redeemed by `UPDATE ... WHERE used_at IS NULL`, a refresh token is
//! rotated by `UPDATE ... WHERE rotated_at IS NULL`. Two concurrent redemptions therefore
//! cannot both succeed, on either engine, without any read-then-write window.

use bazaar_kit::storage::{now_ms, Database};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{
    KeyState, NewUser, StoredClient, StoredCode, StoredKey, StoredRefresh, StoredSession,
    StoredUser,
};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("email {0} is already registered")]
    EmailTaken(String),
    #[error("client id {0} is already taken")]
    ClientIdTaken(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || db.message().to_lowercase().contains("unique")
        }
        _ => false,
    }
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

fn from_json(row: &AnyRow, column: &str) -> Result<Vec<String>, RepoError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| RepoError::Corrupt(format!("{column}: {e}")))
}

fn flag(row: &AnyRow, column: &str) -> Result<bool, RepoError> {
    let value: i64 = row.try_get(column)?;
    Ok(value != 0)
}

const USER_COLUMNS: &str = "id, email, name, password_hash, roles, created_at";

fn user_from_row(row: &AnyRow) -> Result<StoredUser, RepoError> {
    Ok(StoredUser {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        roles: from_json(row, "roles")?,
        created_at: row.try_get("created_at")?,
    })
}

const CLIENT_COLUMNS: &str = "id, name, secret_hash, redirect_uris, grant_types, scopes, \
     audiences, roles, require_pkce, may_introspect, first_party, created_at";

fn client_from_row(row: &AnyRow) -> Result<StoredClient, RepoError> {
    Ok(StoredClient {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: from_json(row, "redirect_uris")?,
        grant_types: from_json(row, "grant_types")?,
        scopes: from_json(row, "scopes")?,
        audiences: from_json(row, "audiences")?,
        roles: from_json(row, "roles")?,
        require_pkce: flag(row, "require_pkce")?,
        may_introspect: flag(row, "may_introspect")?,
        first_party: flag(row, "first_party")?,
        created_at: row.try_get("created_at")?,
    })
}

const KEY_COLUMNS: &str = "kid, state, private_key, public_x, created_at, retired_at";

fn key_from_row(row: &AnyRow) -> Result<StoredKey, RepoError> {
    let state: String = row.try_get("state")?;
    Ok(StoredKey {
        kid: row.try_get("kid")?,
        state: KeyState::parse(&state)
            .ok_or_else(|| RepoError::Corrupt(format!("key state {state}")))?,
        private_key: row.try_get("private_key")?,
        public_x: row.try_get("public_x")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

/// A new refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefresh<'a> {
    pub token_hash: &'a str,
    pub family_id: &'a str,
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub scope: &'a str,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// An issued access token's record (its jti makes revocation and introspection exact).
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedAccess {
    pub jti: String,
    /// The grant it belongs to (none for client credentials).
    pub family_id: Option<String>,
    pub client_id: String,
    pub subject: String,
    pub expires_at: i64,
}

/// A refresh token issued beside an access token (stored as its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedRefresh {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// Access-token rows per `INSERT`: a batch is written in chunks of these sizes (largest first),
/// so a batch of any size costs a few statements and only these few shapes are prepared and
/// cached. 64 rows of 5 values stay far below every engine's bound-parameter limit.
const ACCESS_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

fn access_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO access_tokens (jti, family_id, client_id, subject, expires_at, revoked) VALUES ",
    );
    for row in 0..rows {
        let n = row * 5;
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, 0)",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5
        ));
    }
    sql
}

/// What a rotation attempt found.
#[derive(Debug, Clone, PartialEq)]
pub enum RotateOutcome {
    /// The token was live and is now rotated; its successor is stored.
    Rotated(StoredRefresh),
    /// No such token.
    Unknown,
    /// The token was already rotated at this time (a reuse).
    AlreadyRotated { token: StoredRefresh, at: i64 },
    /// The token or its family is revoked, or it has expired.
    Dead,
}

/// The identity provider's data access.
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

    // -----------------------------------------------------------------------------------------
    // users

    /// Stores a new user; `password_hash` is the argon2id PHC string of `user.password`.
    pub async fn create_user(
        &self,
        user: &NewUser,
        password_hash: &str,
    ) -> Result<StoredUser, RepoError> {
        let now = now_ms();
        let stored = StoredUser {
            id: uuid::Uuid::now_v7().to_string(),
            email: user.email.clone(),
            name: user.name.clone(),
            password_hash: password_hash.to_owned(),
            roles: user.roles.clone(),
            created_at: now,
        };
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, roles, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(&stored.id)
        .bind(&stored.email)
        .bind(&stored.name)
        .bind(&stored.password_hash)
        .bind(to_json(&stored.roles))
        .bind(now)
        .execute(&self.db)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                RepoError::EmailTaken(stored.email.clone())
            } else {
                e.into()
            }
        })?;
        Ok(stored)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<StoredUser>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<StoredUser>, RepoError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Every user, oldest first.
    pub async fn list_users(&self) -> Result<Vec<StoredUser>, RepoError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"
        ))
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn set_password(&self, user_id: &str, password_hash: &str) -> Result<(), RepoError> {
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(password_hash)
            .bind(now_ms())
            .bind(user_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // clients

    /// Inserts or replaces a client (the configured ones, at every start).
    pub async fn upsert_client(&self, client: &StoredClient) -> Result<(), RepoError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO clients ({CLIENT_COLUMNS}, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             secret_hash = excluded.secret_hash, redirect_uris = excluded.redirect_uris, \
             grant_types = excluded.grant_types, scopes = excluded.scopes, \
             audiences = excluded.audiences, roles = excluded.roles, \
             require_pkce = excluded.require_pkce, may_introspect = excluded.may_introspect, \
             first_party = excluded.first_party, updated_at = excluded.updated_at"
        );
        bind_client(sqlx::query(&sql), client, now)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Registers a new client; its id must be free.
    pub async fn create_client(&self, client: &StoredClient) -> Result<StoredClient, RepoError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO clients ({CLIENT_COLUMNS}, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)"
        );
        bind_client(sqlx::query(&sql), client, now)
            .execute(&self.db)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    RepoError::ClientIdTaken(client.id.clone())
                } else {
                    e.into()
                }
            })?;
        Ok(StoredClient {
            created_at: now,
            ..client.clone()
        })
    }

    pub async fn client(&self, id: &str) -> Result<Option<StoredClient>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(client_from_row).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<StoredClient>, RepoError> {
        let rows = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY id"))
            .fetch_all(&self.db)
            .await?;
        rows.iter().map(client_from_row).collect()
    }

    // -----------------------------------------------------------------------------------------
    // sessions

    pub async fn create_session(
        &self,
        id_hash: &str,
        user_id: &str,
        auth_time: i64,
        expires_at: i64,
    ) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, auth_time, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(auth_time)
        .bind(expires_at)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// The live session with this hash, if any.
    pub async fn session(&self, id_hash: &str) -> Result<Option<StoredSession>, RepoError> {
        let row = sqlx::query(
            "SELECT user_id, auth_time, expires_at FROM sessions \
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            Ok(StoredSession {
                user_id: row.try_get("user_id")?,
                auth_time: row.try_get("auth_time")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Ends every session of a user (after a password change).
    pub async fn delete_user_sessions(&self, user_id: &str) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // login throttling

    pub async fn record_failure(&self, key: &str, at: i64) -> Result<(), RepoError> {
        sqlx::query("INSERT INTO login_failures (throttle_key, failed_at) VALUES ($1, $2)")
            .bind(key)
            .bind(at)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// How many failures `key` has since `since`, and when the last one was.
    pub async fn failures_since(&self, key: &str, since: i64) -> Result<(i64, i64), RepoError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(failed_at), 0) AS last FROM login_failures \
             WHERE throttle_key = $1 AND failed_at > $2",
        )
        .bind(key)
        .bind(since)
        .fetch_one(&self.db)
        .await?;
        Ok((row.try_get("n")?, row.try_get("last")?))
    }

    pub async fn clear_failures(&self, key: &str) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM login_failures WHERE throttle_key = $1")
            .bind(key)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // authorization codes

    pub async fn insert_code(&self, code_hash: &str, code: &StoredCode) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri, \
             scope, nonce, code_challenge, auth_time, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(code_hash)
        .bind(&code.client_id)
        .bind(&code.user_id)
        .bind(&code.redirect_uri)
        .bind(&code.scope)
        .bind(code.nonce.clone())
        .bind(&code.code_challenge)
        .bind(code.auth_time)
        .bind(code.expires_at)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    pub async fn code(&self, code_hash: &str) -> Result<Option<StoredCode>, RepoError> {
        let row = sqlx::query(
            "SELECT client_id, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, \
             expires_at, used_at, family_id FROM authorization_codes WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            Ok(StoredCode {
                client_id: row.try_get("client_id")?,
                user_id: row.try_get("user_id")?,
                redirect_uri: row.try_get("redirect_uri")?,
                scope: row.try_get("scope")?,
                nonce: row.try_get("nonce")?,
                code_challenge: row.try_get("code_challenge")?,
                auth_time: row.try_get("auth_time")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
                family_id: row.try_get("family_id")?,
            })
        })
        .transpose()
    }

    /// Marks the code used and records the family it starts; false when it was already used
    /// (the caller lost the race or this is a replay).
    pub async fn redeem_code(
        &self,
        code_hash: &str,
        family_id: &str,
        client_id: &str,
        subject: &str,
    ) -> Result<bool, RepoError> {
        let now = now_ms();
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let redeemed = sqlx::query(
            "UPDATE authorization_codes SET used_at = $1, family_id = $2 \
             WHERE code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(family_id)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if redeemed {
            sqlx::query(
                "INSERT INTO token_families (id, client_id, subject, revoked, created_at) \
                 VALUES ($1, $2, $3, 0, $4)",
            )
            .bind(family_id)
            .bind(client_id)
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(redeemed)
    }

    /// Drops codes that expired more than a day ago (kept that long so a late replay is still
    /// recognized as a reuse rather than an unknown code).
    pub async fn purge_codes(&self, now: i64) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
            .bind(now - 86_400_000)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // token families, refresh and access tokens

    /// Revokes a family: its refresh tokens stop working and its access tokens introspect as
    /// inactive. True when the family existed and was live.
    pub async fn revoke_family(&self, family_id: &str) -> Result<bool, RepoError> {
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let changed =
            sqlx::query("UPDATE token_families SET revoked = 1 WHERE id = $1 AND revoked = 0")
                .bind(family_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE family_id = $1")
            .bind(family_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    pub async fn insert_refresh(&self, token: &NewRefresh<'_>) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, client_id, user_id, scope, \
             auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.token_hash)
        .bind(token.family_id)
        .bind(token.client_id)
        .bind(token.user_id)
        .bind(token.scope)
        .bind(token.auth_time)
        .bind(now_ms())
        .bind(token.expires_at)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    pub async fn refresh(&self, token_hash: &str) -> Result<Option<StoredRefresh>, RepoError> {
        let row = sqlx::query(
            "SELECT r.family_id, r.client_id, r.user_id, r.scope, r.auth_time, r.expires_at, \
             r.rotated_at, f.revoked FROM refresh_tokens r \
             JOIN token_families f ON f.id = r.family_id WHERE r.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            Ok(StoredRefresh {
                family_id: row.try_get("family_id")?,
                client_id: row.try_get("client_id")?,
                user_id: row.try_get("user_id")?,
                scope: row.try_get("scope")?,
                auth_time: row.try_get("auth_time")?,
                expires_at: row.try_get("expires_at")?,
                rotated_at: row.try_get("rotated_at")?,
                family_revoked: flag(&row, "revoked")?,
            })
        })
        .transpose()
    }

    /// Exchanges the refresh token `token_hash` for its successor `next_hash`, atomically: the
    /// old one is marked rotated only if it was not already, and the new one is stored in the
    /// same transaction.
    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        next_hash: &str,
        next_expires_at: i64,
    ) -> Result<RotateOutcome, RepoError> {
        let Some(token) = self.refresh(token_hash).await? else {
            return Ok(RotateOutcome::Unknown);
        };
        let now = now_ms();
        if let Some(at) = token.rotated_at {
            return Ok(RotateOutcome::AlreadyRotated { token, at });
        }
        if token.family_revoked || token.expires_at <= now {
            return Ok(RotateOutcome::Dead);
        }
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let won = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1 \
             WHERE token_hash = $2 AND rotated_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            // Someone rotated it between our read and our write: a concurrent reuse.
            tx.rollback().await?;
            return Ok(RotateOutcome::AlreadyRotated { token, at: now });
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, client_id, user_id, scope, \
             auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(next_hash)
        .bind(&token.family_id)
        .bind(&token.client_id)
        .bind(&token.user_id)
        .bind(&token.scope)
        .bind(token.auth_time)
        .bind(now)
        .bind(next_expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RotateOutcome::Rotated(token))
    }

    /// Starts a family for tokens not issued from a code (client credentials).
    pub async fn create_family(
        &self,
        family_id: &str,
        client_id: &str,
        subject: &str,
    ) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO token_families (id, client_id, subject, revoked, created_at) \
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(family_id)
        .bind(client_id)
        .bind(subject)
        .bind(now_ms())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    pub async fn record_access_token(
        &self,
        jti: &str,
        family_id: Option<&str>,
        client_id: &str,
        subject: &str,
        expires_at: i64,
    ) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO access_tokens (jti, family_id, client_id, subject, expires_at, revoked) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(jti)
        .bind(family_id.map(str::to_owned))
        .bind(client_id)
        .bind(subject)
        .bind(expires_at)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Records issued tokens on the caller's transaction (the group commit of `issuance`):
    /// the access tokens in multi-row inserts, then the refresh tokens. Returns the driver's
    /// error as is, so the caller can tell a conflict (retry the batch) from a failure.
    pub async fn record_issued_in(
        connection: &mut bazaar_kit::storage::Connection,
        access: &[&IssuedAccess],
        refresh: &[&IssuedRefresh],
    ) -> Result<(), sqlx::Error> {
        let mut rest = access;
        while !rest.is_empty() {
            let size = ACCESS_CHUNKS
                .into_iter()
                .find(|size| *size <= rest.len())
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(size);
            let sql = access_insert_sql(size);
            let mut query = sqlx::query(&sql);
            for token in chunk {
                query = query
                    .bind(&token.jti)
                    .bind(token.family_id.clone())
                    .bind(&token.client_id)
                    .bind(&token.subject)
                    .bind(token.expires_at);
            }
            query.execute(&mut *connection).await?;
            rest = tail;
        }
        for token in refresh {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, client_id, user_id, scope, \
                 auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&token.token_hash)
            .bind(&token.family_id)
            .bind(&token.client_id)
            .bind(&token.user_id)
            .bind(&token.scope)
            .bind(token.auth_time)
            .bind(now_ms())
            .bind(token.expires_at)
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }

    /// True when the access token `jti` is revoked, or its family is. Unknown jtis (tokens this
    /// database never issued, or purged after expiry) count as revoked: a valid signature alone
    /// is not enough for introspection to call a token active.
    pub async fn access_token_revoked(&self, jti: &str) -> Result<bool, RepoError> {
        let row = sqlx::query(
            "SELECT a.revoked, COALESCE(f.revoked, 0) AS family_revoked FROM access_tokens a \
             LEFT JOIN token_families f ON f.id = a.family_id WHERE a.jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.db)
        .await?;
        match row {
            None => Ok(true),
            Some(row) => Ok(flag(&row, "revoked")? || flag(&row, "family_revoked")?),
        }
    }

    pub async fn revoke_access_token(&self, jti: &str) -> Result<(), RepoError> {
        sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE jti = $1")
            .bind(jti)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets what can no longer matter: expired access tokens, refresh tokens, sessions and
    /// login failures older than `failures_before`.
    pub async fn purge(&self, now: i64, failures_before: i64) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM access_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.db)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.db)
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE failed_at < $1")
            .bind(failures_before)
            .execute(&self.db)
            .await?;
        self.purge_codes(now).await
    }

    // -----------------------------------------------------------------------------------------
    // signing keys

    /// Every stored key, newest first.
    pub async fn keys(&self) -> Result<Vec<StoredKey>, RepoError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid"
        ))
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn insert_key(&self, key: &StoredKey) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, state, private_key, public_x, created_at, \
             activated_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&key.kid)
        .bind(key.state.as_str())
        .bind(&key.private_key)
        .bind(&key.public_x)
        .bind(key.created_at)
        .bind(if key.state == KeyState::Current {
            Some(key.created_at)
        } else {
            None
        })
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Rotates in one transaction: current → retired, next → current, `new_next` stored as the
    /// next key. Returns the kids (current, retired).
    pub async fn rotate_keys(
        &self,
        next_kid: &str,
        new_next: &StoredKey,
    ) -> Result<Option<String>, RepoError> {
        let now = now_ms();
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let retired = sqlx::query("SELECT kid FROM signing_keys WHERE state = 'current'")
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<String, _>("kid"))
            .transpose()?;
        sqlx::query(
            "UPDATE signing_keys SET state = 'retired', retired_at = $1 WHERE state = 'current'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE signing_keys SET state = 'current', activated_at = $1 WHERE kid = $2")
            .bind(now)
            .bind(next_kid)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, state, private_key, public_x, created_at, \
             activated_at, retired_at) VALUES ($1, 'next', $2, $3, $4, NULL, NULL)",
        )
        .bind(&new_next.kid)
        .bind(&new_next.private_key)
        .bind(&new_next.public_x)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(retired)
    }
}

/// Binds a client's columns in `CLIENT_COLUMNS` order, then `now`: one place for the mapping the
/// upsert and the insert share.
fn bind_client<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    client: &'q StoredClient,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&client.id)
        .bind(&client.name)
        .bind(&client.secret_hash)
        .bind(to_json(&client.redirect_uris))
        .bind(to_json(&client.grant_types))
        .bind(to_json(&client.scopes))
        .bind(to_json(&client.audiences))
        .bind(to_json(&client.roles))
        .bind(i64::from(client.require_pkce))
        .bind(i64::from(client.may_introspect))
        .bind(i64::from(client.first_party))
        .bind(now)
}
