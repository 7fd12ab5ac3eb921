-- The cart's tables. Portable on purpose: the same file runs on SQLite and PostgreSQL, so only
-- TEXT and BIGINT columns, times as Unix milliseconds, and no engine-specific key generation.

-- One row per cart. `owner` is `user:<sub>` for a signed-in user's cart or `session:<uuid>` for
-- an anonymous one. Every write to a cart first touches this row (an upsert of `updated_at`),
-- which takes the row lock on PostgreSQL and the write lock on SQLite, so the reads that
-- follow in the same transaction (line count, current quantity) cannot go stale.
CREATE TABLE carts (
    owner      TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The lines of a cart, with the last product data the catalog gave us (sku, name, image,
-- price, weight), so a cart can still be shown when the catalog is unreachable.
CREATE TABLE cart_lines (
    owner        TEXT NOT NULL REFERENCES carts (owner),
    product_id   TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    sku          TEXT NOT NULL,
    name         TEXT NOT NULL,
    -- Public URL of the first image; empty when the product has none.
    image        TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    weight_grams BIGINT NOT NULL,
    -- When the snapshot above was taken from the catalog.
    priced_at    BIGINT NOT NULL,
    -- Display order: lines are listed in the order they were first added.
    added_at     BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (owner, product_id)
);
