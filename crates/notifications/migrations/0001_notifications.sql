-- The notifications service's tables. Portable on purpose: the same file runs on SQLite and
-- PostgreSQL, so only TEXT and BIGINT columns, times as Unix milliseconds, and ids chosen by
-- the service.

-- The mailbox: every email the shop has written to a customer. Nothing is sent (no SMTP); the
-- mailbox is what a customer and an admin read back.
CREATE TABLE mailbox (
    -- UUID v7, taken when the email is written: ordering by id is ordering by time, and the
    -- id is the paging cursor (`before`).
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    -- NULL when no event has told us the customer's address yet.
    email      TEXT,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    -- The event the email is about: one email per event, whatever the redeliveries.
    event_id   TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    order_id   TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX mailbox_user_id ON mailbox (user_id, id);

-- The last address an order event gave for each user, so emails about payments and shipments
-- (whose events carry no address) can be addressed too.
CREATE TABLE recipients (
    user_id    TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
