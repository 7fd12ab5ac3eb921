-- The payments service's tables. Portable: the same file runs on SQLite and PostgreSQL (TEXT
-- and BIGINT only, times as Unix milliseconds, ids chosen by the service). No card number or
-- CVC is ever stored: the processor's vault keeps cards, this service keeps its tokens.
-- (The outbox and inbox tables are created by bazaar-messaging.)

CREATE TABLE cards (
    -- The processor's token (tok_...).
    token      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    brand      TEXT NOT NULL,
    last4      TEXT NOT NULL,
    exp_month  BIGINT NOT NULL,
    exp_year   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX cards_user ON cards (user_id, created_at);

CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    -- The caller's key for the authorization: one payment per key.
    idempotency_key TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    card_token      TEXT NOT NULL,
    last4           TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    -- pending | authorized | declined | captured | voided | refunded
    status          TEXT NOT NULL,
    decline_code    TEXT,
    -- The Idempotency-Key sent to the processor; every retry sends the same one.
    processor_key   TEXT NOT NULL,
    -- The processor's authorization id, once it answered.
    processor_id    TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX payments_order ON payments (order_id, created_at);
CREATE INDEX payments_user ON payments (user_id, created_at);
CREATE INDEX payments_status ON payments (status);

-- Captures, voids and refunds, recorded under the caller's key before the processor is called
-- (done = 0), and marked done (1) in the transaction that changes the payment's status.
CREATE TABLE payment_operations (
    idempotency_key TEXT PRIMARY KEY,
    payment_id      TEXT NOT NULL REFERENCES payments (id),
    operation       TEXT NOT NULL,
    processor_key   TEXT NOT NULL,
    done            BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
