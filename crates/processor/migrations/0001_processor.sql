-- The processor simulator's tables. Portable: the same file runs on SQLite and PostgreSQL
-- (TEXT and BIGINT only, times as Unix milliseconds, ids chosen by the service).

-- The vault. The processor is the one party allowed to keep card numbers; the CVC is checked
-- at tokenization and never stored.
CREATE TABLE cards (
    token      TEXT PRIMARY KEY,
    number     TEXT NOT NULL,
    brand      TEXT NOT NULL,
    last4      TEXT NOT NULL,
    exp_month  BIGINT NOT NULL,
    exp_year   BIGINT NOT NULL,
    holder     TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE authorizations (
    id             TEXT PRIMARY KEY,
    token          TEXT NOT NULL REFERENCES cards (token),
    reference      TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    -- approved | declined
    status         TEXT NOT NULL,
    decline_code   TEXT,
    -- authorized | captured | voided | refunded | declined
    state          TEXT NOT NULL,
    captured_minor BIGINT NOT NULL,
    refunded_minor BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE INDEX authorizations_reference ON authorizations (reference, created_at);

-- One row per Idempotency-Key ever used: the request's fingerprint and the answer given, so a
-- retry gets the same answer (even after a restart) and a reuse with another request is
-- refused. Written in the same transaction as the effect it records.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    fingerprint     TEXT NOT NULL,
    status          BIGINT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
