-- The identity provider's tables. Portable on purpose: the same file runs on SQLite and
-- PostgreSQL, so only TEXT and BIGINT columns, lists kept as JSON TEXT, times as Unix
-- milliseconds, flags as BIGINT 0/1 (sqlx's Any driver cannot read BOOLEAN from SQLite).
-- Every secret (password, client secret, session, code, refresh token) is stored hashed.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    -- Lowercased and trimmed, so uniqueness ignores case.
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    -- argon2id PHC string.
    password_hash TEXT NOT NULL,
    -- JSON array of role names.
    roles         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE clients (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    -- argon2id PHC string; empty for a public client.
    secret_hash    TEXT NOT NULL,
    redirect_uris  TEXT NOT NULL,
    grant_types    TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    audiences      TEXT NOT NULL,
    roles          TEXT NOT NULL,
    require_pkce   BIGINT NOT NULL,
    may_introspect BIGINT NOT NULL,
    first_party    BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE sessions (
    -- SHA-256 of the cookie value.
    id_hash    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    auth_time  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE login_failures (
    -- `account:<email>` or `address:<ip>`.
    throttle_key TEXT NOT NULL,
    failed_at    BIGINT NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (throttle_key, failed_at);

CREATE TABLE authorization_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    nonce          TEXT,
    code_challenge TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    -- Set on the first redemption; a second one finds it set and revokes what the first issued.
    used_at        BIGINT,
    -- The token family the redemption started (refresh tokens and access tokens).
    family_id      TEXT
);

-- A grant: every refresh and access token issued from one code redemption (or one client
-- credentials request) shares a family, so a reuse can revoke all of them at once.
CREATE TABLE token_families (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    revoked    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES token_families (id),
    client_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    scope      TEXT NOT NULL,
    auth_time  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Set when this token was exchanged for its successor.
    rotated_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Every access token issued, until it expires: introspection and revocation look here.
CREATE TABLE access_tokens (
    jti        TEXT PRIMARY KEY,
    family_id  TEXT,
    client_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked    BIGINT NOT NULL
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);
CREATE INDEX access_tokens_expires ON access_tokens (expires_at);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    -- `next` (published, not yet signing), `current` (signing), `retired` (published until
    -- every token it signed has expired).
    state        TEXT NOT NULL,
    -- Base64 of the PKCS#8 DER private key.
    private_key  TEXT NOT NULL,
    -- Base64url of the raw 32-byte public key (the JWK `x`).
    public_x     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activated_at BIGINT,
    retired_at   BIGINT
);
