//! Browser sessions of the backend-for-frontend, in the web service's own database: who is
//! signed in behind a session cookie (with the user's tokens, which never reach the browser),
//! and the sign-ins in progress (PKCE verifier, nonce, where to return).
//!
//! A session id is 32 random bytes, base64url in the cookie; only its SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bazaar_kit::storage::{now_ms, Database};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A signed-in user, as a session holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub user_id: String,
    pub email: String,
    pub roles: Vec<String>,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub access_expires_at_ms: i64,
}

impl SignedIn {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// A sign-in started but not yet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSignin {
    pub state: String,
    pub code_verifier: String,
    pub nonce: String,
    pub return_to: String,
}

/// How long a started sign-in may take before its state is refused.
const PENDING_TTL_MS: i64 = 10 * 60 * 1000;

/// A fresh random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(session_id: &str) -> String {
    hex::encode(Sha256::digest(session_id.as_bytes()))
}

/// The session store.
#[derive(Clone, Debug)]
pub struct Sessions {
    db: Database,
    ttl_ms: i64,
}

impl Sessions {
    pub fn new(db: Database, ttl_ms: i64) -> Self {
        Self { db, ttl_ms }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a new session for `user` and returns its id (the cookie value).
    pub async fn create(&self, user: &SignedIn) -> Result<String, sqlx::Error> {
        let id = random_token();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, email, roles, access_token, refresh_token, \
             access_expires_at, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(hash(&id))
        .bind(&user.user_id)
        .bind(&user.email)
        .bind(user.roles.join(" "))
        .bind(&user.access_token)
        .bind(&user.refresh_token)
        .bind(user.access_expires_at_ms)
        .bind(now)
        .bind(now + self.ttl_ms)
        .execute(&self.db)
        .await?;
        Ok(id)
    }

    /// The user behind a session id, if it exists and has not expired.
    pub async fn find(&self, session_id: &str) -> Result<Option<SignedIn>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT user_id, email, roles, access_token, refresh_token, access_expires_at \
             FROM sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(hash(session_id))
        .bind(now_ms())
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            let roles: String = row.try_get("roles")?;
            Ok(SignedIn {
                user_id: row.try_get("user_id")?,
                email: row.try_get("email")?,
                roles: roles.split_whitespace().map(str::to_owned).collect(),
                access_token: row.try_get("access_token")?,
                refresh_token: row.try_get("refresh_token")?,
                access_expires_at_ms: row.try_get("access_expires_at")?,
            })
        })
        .transpose()
    }

    /// Replaces a session's tokens after a refresh.
    pub async fn update_tokens(
        &self,
        session_id: &str,
        access_token: &str,
        refresh_token: Option<&str>,
        access_expires_at_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sessions SET access_token = $1, refresh_token = $2, access_expires_at = $3 \
             WHERE id_hash = $4",
        )
        .bind(access_token)
        .bind(refresh_token)
        .bind(access_expires_at_ms)
        .bind(hash(session_id))
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Ends a session; returns its refresh token so the caller can revoke it.
    pub async fn delete(&self, session_id: &str) -> Result<Option<String>, sqlx::Error> {
        let refresh: Option<Option<String>> =
            sqlx::query_scalar("SELECT refresh_token FROM sessions WHERE id_hash = $1")
                .bind(hash(session_id))
                .fetch_optional(&self.db)
                .await?;
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(hash(session_id))
            .execute(&self.db)
            .await?;
        Ok(refresh.flatten())
    }

    /// Records a sign-in in progress.
    pub async fn start_signin(&self, pending: &PendingSignin) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pending_signins (state, code_verifier, nonce, return_to, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&pending.state)
        .bind(&pending.code_verifier)
        .bind(&pending.nonce)
        .bind(&pending.return_to)
        .bind(now_ms())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Takes (single use) the sign-in with `state`, if it was started recently.
    pub async fn take_signin(&self, state: &str) -> Result<Option<PendingSignin>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT code_verifier, nonce, return_to, created_at FROM pending_signins \
             WHERE state = $1",
        )
        .bind(state)
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let deleted = sqlx::query("DELETE FROM pending_signins WHERE state = $1")
            .bind(state)
            .execute(&self.db)
            .await?;
        // Two callbacks racing with one state: only the one that deleted the row proceeds.
        if deleted.rows_affected() != 1 {
            return Ok(None);
        }
        let created_at: i64 = row.try_get("created_at")?;
        if now_ms() - created_at > PENDING_TTL_MS {
            return Ok(None);
        }
        Ok(Some(PendingSignin {
            state: state.to_owned(),
            code_verifier: row.try_get("code_verifier")?,
            nonce: row.try_get("nonce")?,
            return_to: row.try_get("return_to")?,
        }))
    }

    /// Deletes expired sessions and stale sign-ins.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let now = now_ms();
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.db)
            .await?;
        let pending = sqlx::query("DELETE FROM pending_signins WHERE created_at <= $1")
            .bind(now - PENDING_TTL_MS)
            .execute(&self.db)
            .await?;
        Ok(sessions.rows_affected() + pending.rows_affected())
    }
}
