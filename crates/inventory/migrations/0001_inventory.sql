-- The inventory's tables. Portable on purpose: the same file runs on SQLite and PostgreSQL, so
-- only TEXT, BIGINT and DOUBLE PRECISION columns, flags as BIGINT 0/1, times as Unix
-- milliseconds.

CREATE TABLE warehouses (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    city     TEXT NOT NULL,
    country  TEXT NOT NULL,
    lat      DOUBLE PRECISION NOT NULL,
    lon      DOUBLE PRECISION NOT NULL,
    -- Display order (the order of the data file).
    position BIGINT NOT NULL
);

-- Stock of one product at one warehouse. `reserved` units are held by live reservations;
-- what can still be reserved is `on_hand - reserved`. The checks make oversell impossible
-- even for a statement that forgot its guard.
CREATE TABLE stock (
    product_id   TEXT NOT NULL,
    warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
    on_hand      BIGINT NOT NULL,
    reserved     BIGINT NOT NULL,
    -- 1 while `stock.low` has been published for the current dip below the threshold, so the
    -- event goes out once per crossing rather than on every change.
    low          BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (product_id, warehouse_id),
    CHECK (on_hand >= 0),
    CHECK (reserved >= 0),
    CHECK (reserved <= on_hand)
);

-- One row per idempotency key, including release tombstones (a release that arrived before
-- its reserve: status 'released', no allocations).
CREATE TABLE reservations (
    reservation_key TEXT PRIMARY KEY,
    -- 'reserved', 'committed' or 'released'.
    status          TEXT NOT NULL,
    -- Hash of the requested lines, to tell a repeat from a different request under the same
    -- key; empty for tombstones.
    fingerprint     TEXT NOT NULL,
    -- Why it was released ('released', 'expired', a caller's reason); empty otherwise.
    reason          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    committed_at_ms BIGINT,
    released_at_ms  BIGINT,
    CHECK (status IN ('reserved', 'committed', 'released'))
);

CREATE INDEX reservations_status_expiry ON reservations (status, expires_at_ms);

-- Where each reserved unit comes from.
CREATE TABLE reservation_allocations (
    reservation_key TEXT NOT NULL REFERENCES reservations (reservation_key),
    product_id      TEXT NOT NULL,
    warehouse_id    TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    -- Order of allocation, so answers list allocations as they were made.
    position        BIGINT NOT NULL,
    PRIMARY KEY (reservation_key, product_id, warehouse_id),
    CHECK (quantity > 0)
);
