-- The shipping service's tables. Portable on purpose: the same file runs on SQLite and
-- PostgreSQL, so only TEXT, BIGINT and DOUBLE PRECISION columns, times as Unix milliseconds.

-- One shipment per order: `order_id` is the idempotency key of shipment creation.
CREATE TABLE shipments (
    id              TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    -- 'label_created', 'in_transit' or 'delivered'.
    status          TEXT NOT NULL,
    fee_minor       BIGINT NOT NULL,
    fee_currency    TEXT NOT NULL,
    distance_km     DOUBLE PRECISION NOT NULL,
    estimated_days  BIGINT NOT NULL,
    -- The destination as given plus its resolved country and coordinates (JSON).
    destination     TEXT NOT NULL,
    -- The parcels as given (JSON).
    parcels         TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    CHECK (status IN ('label_created', 'in_transit', 'delivered')),
    CHECK (fee_minor >= 0)
);

CREATE INDEX shipments_user ON shipments (user_id, created_at_ms);
-- The tracker's scan: shipments not yet delivered, oldest first.
CREATE INDEX shipments_status ON shipments (status, created_at_ms);

-- Every status a shipment has had, in order.
CREATE TABLE shipment_history (
    shipment_id TEXT NOT NULL REFERENCES shipments (id),
    position    BIGINT NOT NULL,
    status      TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    PRIMARY KEY (shipment_id, position)
);
