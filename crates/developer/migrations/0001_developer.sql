-- The developer service's tables. Portable on purpose: the same file runs on SQLite and
-- PostgreSQL, so only TEXT and BIGINT columns, times as Unix milliseconds, days as
-- 'YYYY-MM-DD' text (which sorts and prefix-matches by month on both engines), and ids chosen
-- by the service. The audit table is created by `bazaar_kit::audit::AuditLog::open`.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    -- The user (token `sub`) the key belongs to.
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    -- `bzr_<id>`: displayable, identifies the key to its owner without revealing it.
    prefix      TEXT NOT NULL,
    -- SHA-256 hex of the whole key. The key itself is never stored.
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    -- NULL: never expires (plans without a trial).
    expires_at  BIGINT,
    -- NULL: not revoked.
    revoked_at  BIGINT,
    -- Who created it (the owner, or an admin issuing a partner key for themselves).
    created_by  TEXT NOT NULL
);

CREATE INDEX api_keys_owner ON api_keys (owner);

-- Requests counted by the gateway, per key and UTC day; month totals are sums over the days.
CREATE TABLE usage_daily (
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    day    TEXT NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);

-- Usage reports already applied, so a gateway retrying a report changes nothing.
CREATE TABLE usage_reports (
    report_id   TEXT PRIMARY KEY,
    gateway     TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
