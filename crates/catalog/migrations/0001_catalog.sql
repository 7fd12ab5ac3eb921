-- The catalog's tables. Portable on purpose: the same file runs on SQLite and PostgreSQL, so
-- only TEXT, BIGINT and BOOLEAN columns, JSON kept as TEXT, times as Unix milliseconds, and no
-- engine-specific key generation (ids are chosen by the service).

CREATE TABLE categories (
    slug        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Display order (the order of the seed file); listing sorts by it.
    position    BIGINT NOT NULL
);

CREATE TABLE products (
    id           TEXT PRIMARY KEY,
    sku          TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    -- Hex of the lowercased UTF-8 name: sorting on it gives the same byte order on every engine
    -- and under every collation (PostgreSQL's en_US would otherwise ignore spaces and
    -- punctuation while SQLite compares bytes).
    name_key     TEXT NOT NULL,
    description  TEXT NOT NULL,
    category     TEXT NOT NULL REFERENCES categories (slug),
    amount_minor BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    weight_grams BIGINT NOT NULL,
    -- JSON array of logical asset paths or absolute URLs, as given.
    images       TEXT NOT NULL,
    -- JSON object of string to string.
    attributes   TEXT NOT NULL,
    featured     BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    version      BIGINT NOT NULL
);

CREATE INDEX products_category ON products (category);
CREATE INDEX products_name_key ON products (name_key);
CREATE INDEX products_amount_minor ON products (amount_minor);
CREATE INDEX products_created_at ON products (created_at);
