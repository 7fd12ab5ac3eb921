-- Orders and the state of each order's checkout saga. Times are Unix milliseconds.
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- pending | confirmed | cancelled
    status TEXT NOT NULL,
    -- Why the order is cancelled, or what a pending order waits for.
    status_reason TEXT NOT NULL,
    -- The saga step to run next (see saga.rs).
    step TEXT NOT NULL,
    currency TEXT NOT NULL,
    subtotal_minor BIGINT NOT NULL,
    shipping_minor BIGINT NOT NULL,
    total_minor BIGINT NOT NULL,
    -- JSON: the shipping address, the lines, and what the saga learned on the way.
    address TEXT NOT NULL,
    lines TEXT NOT NULL,
    saga TEXT NOT NULL,
    card_token TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_until_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_due ON orders (status, next_attempt_at_ms);
CREATE INDEX orders_user ON orders (user_id, created_at_ms);

CREATE TABLE order_history (
    order_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    step TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (order_id, seq)
);
