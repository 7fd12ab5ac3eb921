-- The web service's tables: browser sessions of the backend-for-frontend. Portable on purpose
-- (SQLite and PostgreSQL): only TEXT and BIGINT columns, times as Unix milliseconds.

-- A signed-in browser. The cookie carries a random id; only its SHA-256 is stored, so a copy of
-- this table cannot be replayed as cookies. The tokens are the user's, obtained by the
-- authorization code flow; they never reach the browser.
CREATE TABLE sessions (
    id_hash          TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    email            TEXT NOT NULL,
    roles            TEXT NOT NULL,
    access_token     TEXT NOT NULL,
    refresh_token    TEXT,
    access_expires_at BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL
);

CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- A sign-in in progress: the PKCE verifier and nonce kept here (not in the browser) until the
-- identity provider redirects back with the state.
CREATE TABLE pending_signins (
    state         TEXT PRIMARY KEY,
    code_verifier TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
