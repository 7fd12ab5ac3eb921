//! SQLite on the calling thread: the embedded profile's one connection per service, opened with
//! `rusqlite` and driven by the same `sqlx` queries as PostgreSQL.
//!
//! `sqlx`'s SQLite driver runs each connection on a thread of its own and hands every statement
//! to it over a channel, and the rows back: two thread switches per statement, about 69
//! statements per checkout. Every service runs pinned to one CPU, so that thread bought no
//! parallelism, and under the checkout benchmark it took a third of the services' CPU, mostly in
//! the kernel switching to it and back (docs/performance.md, seventh round). Here a statement
//! runs where it is called, between two awaits: SQLite statements on a local file take
//! microseconds, and the service could not run another statement meanwhile anyway (one
//! connection).
//!
//! Queries stay `sqlx::query(...)` with `$n` placeholders and `AnyRow` results, so call sites
//! and the PostgreSQL profile are unchanged: this module takes a query's SQL and arguments,
//! binds them by the rules of `sqlx`'s SQLite driver (`$n` / `?n` name the n-th argument, a bare
//! `?` takes the next, a placeholder without a value is NULL), honours `.persistent(false)`, and
//! builds `AnyRow`s the way that driver's `Any` mapping does (a value's type decided by the
//! value: integer as `BIGINT`, real as `DOUBLE`, text, blob or null; a column declared with a
//! type `Any` cannot hold, such as `BOOLEAN`, refused). `crates/kit/tests/storage.rs` holds both
//! engines to the same results. Those row types' fields are public but hidden in `sqlx-core`'s
//! docs, which is why `sqlx-core` is pinned to sqlx's exact version.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::OpenFlags;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind, AnyValue};
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::Either;
use sqlx_core::any::{AnyColumn, AnyValueKind};
use sqlx_core::ext::ustr::UStr;

use super::checkpoint::{Checkpointer, Thresholds};

/// Prepared statements kept per connection: every distinct query text of a service fits.
const STATEMENT_CACHE: usize = 256;

/// One SQLite connection, used from one task at a time.
pub(super) struct Sqlite {
    connection: rusqlite::Connection,
    /// Per cached query text: its column names and positions, shared by every row that query
    /// returns, and which argument each of its parameters takes; emptied when it holds as many
    /// texts as the statement cache.
    shapes: std::collections::HashMap<Box<str>, Shape>,
    /// Savepoints open inside the current transaction (a transaction begun inside another).
    savepoints: usize,
    /// Checkpoints the log off this connection's thread (detached from the connection when
    /// this is dropped).
    checkpointer: Checkpointer,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.checkpointer.detach(&self.connection);
    }
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").finish_non_exhaustive()
    }
}

/// What a cached query text's runs share.
#[derive(Clone)]
struct Shape {
    columns: Arc<Columns>,
    /// The argument (1-based) each parameter takes, in parameter order (see [`positions`]).
    positions: Arc<[usize]>,
}

/// A query's result columns, in `AnyRow`'s shape.
struct Columns {
    by_name: Arc<sqlx_core::HashMap<UStr, usize>>,
    columns: Vec<AnyColumn>,
}

impl Sqlite {
    /// Opens the database file at `path` (which must exist: `sqlx` created it and ran the
    /// migrations) with the settings every service's database uses.
    pub(super) fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let connection = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(into_sqlx)?;
        // busy_timeout makes a writer wait for a writer in another process instead of failing;
        // that wait blocks the service's thread (statements run on it), but only another
        // instance of the same service on the same file writes to it (`bazaar up` runs one;
        // `bazaar` commands only read), for microseconds per transaction. NORMAL sync in WAL
        // mode is durable across process crashes; WAL itself is a property of the file, set
        // when it was created. Statement and savepoint journals stay in memory: a grouped
        // write's savepoints otherwise spill them to temporary files. Checkpoints (an fsync of
        // the log and of the database file, and a copy of every page changed since the last)
        // run mostly on a thread of their own ([`Checkpointer`]), which replaces SQLite's
        // automatic checkpoint.
        connection
            .execute_batch(
                "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
            )
            .map_err(into_sqlx)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let checkpointer = Checkpointer::start(&connection, path, Thresholds::default())?;
        Ok(Self {
            connection,
            shapes: std::collections::HashMap::new(),
            savepoints: 0,
            checkpointer,
        })
    }

    /// Runs `sql` with `arguments` and returns what `sqlx`'s `fetch_many` would: each
    /// statement's rows and then its result, stopping once `max_rows` rows are gathered (like
    /// sqlx's `fetch_optional`, the rest is not run). `persistent` statements (sqlx's default)
    /// are prepared once and kept; others (`.persistent(false)`: texts that vary with their
    /// input) are prepared for this run only.
    pub(super) fn run(
        &mut self,
        sql: &str,
        arguments: Option<AnyArguments<'_>>,
        persistent: bool,
        max_rows: usize,
    ) -> Result<Vec<Either<AnyQueryResult, AnyRow>>, sqlx::Error> {
        let values = arguments
            .map(|arguments| arguments.values.0)
            .unwrap_or_default();
        let mut results = Vec::new();
        if may_hold_several_statements(sql) {
            // Set-up scripts and the like: each statement in turn, none of them cached.
            let mut batch = rusqlite::Batch::new(&self.connection, sql);
            let mut unnamed_bound = 0;
            while let Some(mut statement) = batch.next().map_err(into_sqlx)? {
                unnamed_bound += bind(&mut statement, &values, unnamed_bound)?;
                let columns = Arc::new(Columns::of(&statement)?);
                let finished = read(&mut statement, &columns, max_rows, &mut results)?;
                results.push(Either::Left(outcome(&self.connection)));
                if !finished {
                    break;
                }
            }
            return Ok(results);
        }
        if !persistent {
            let mut statement = self.connection.prepare(sql).map_err(into_sqlx)?;
            bind(&mut statement, &values, 0)?;
            let columns = Arc::new(Columns::of(&statement)?);
            read(&mut statement, &columns, max_rows, &mut results)?;
            results.push(Either::Left(outcome(&self.connection)));
            return Ok(results);
        }
        let mut statement = self.connection.prepare_cached(sql).map_err(into_sqlx)?;
        // The cached shape is that of the same text, checked against the statement's counts
        // (SQLite prepares a statement again by itself if the schema changed, and bazaar changes
        // schemas only when it opens the database). Parameter positions come from parameter
        // names, and SQLite finds a name by searching from the first parameter, so working
        // them out per run was quadratic in the parameters: 8% of the orders service's CPU
        // for its batched statements of several hundred (docs/performance.md, eleventh round).
        let shape = match self.shapes.get(sql) {
            Some(shape)
                if shape.columns.columns.len() == statement.column_count()
                    && shape.positions.len() == statement.parameter_count() =>
            {
                shape.clone()
            }
            _ => {
                let shape = Shape {
                    columns: Arc::new(Columns::of(&statement)?),
                    positions: positions(&statement, 0)?.0.into(),
                };
                if self.shapes.len() >= STATEMENT_CACHE {
                    self.shapes.clear();
                }
                self.shapes.insert(sql.into(), shape.clone());
                shape
            }
        };
        bind_at(&mut statement, &values, &shape.positions)?;
        read(&mut statement, &shape.columns, max_rows, &mut results)?;
        results.push(Either::Left(outcome(&self.connection)));
        Ok(results)
    }

    /// Begins a transaction, or a savepoint inside the one open (as sqlx does when a
    /// transaction begins another).
    pub(super) fn begin(&mut self) -> Result<(), sqlx::Error> {
        if !self.in_transaction() {
            self.savepoints = 0;
            return self.command("BEGIN");
        }
        self.savepoints += 1;
        self.command(&format!("SAVEPOINT bazaar_{}", self.savepoints))
    }

    /// Commits the innermost transaction or savepoint.
    pub(super) fn commit(&mut self) -> Result<(), sqlx::Error> {
        if self.savepoints == 0 {
            return self.command("COMMIT");
        }
        self.command(&format!("RELEASE SAVEPOINT bazaar_{}", self.savepoints))?;
        self.savepoints -= 1;
        Ok(())
    }

    /// Rolls the innermost transaction or savepoint back; nothing to do if SQLite already
    /// rolled the whole transaction back (after some errors, such as a full disk, it does).
    pub(super) fn rollback(&mut self) -> Result<(), sqlx::Error> {
        if !self.in_transaction() {
            self.savepoints = 0;
            return Ok(());
        }
        if self.savepoints == 0 {
            return self.command("ROLLBACK");
        }
        let savepoint = self.savepoints;
        self.command(&format!("ROLLBACK TO SAVEPOINT bazaar_{savepoint}"))?;
        self.command(&format!("RELEASE SAVEPOINT bazaar_{savepoint}"))?;
        self.savepoints -= 1;
        Ok(())
    }

    /// Runs one statement without parameters or rows, prepared once and kept: every
    /// transaction and savepoint begins and ends with one, which `execute_batch` would parse
    /// again each time.
    fn command(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(into_sqlx)
    }

    /// Whether a transaction is open on this connection.
    pub(super) fn in_transaction(&self) -> bool {
        !self.connection.is_autocommit()
    }
}

/// The result of the statement that just finished, as sqlx's `Any` driver gives it: the changes
/// of the last INSERT, UPDATE or DELETE (for a SELECT, whatever ran before it, as in sqlx) and
/// no insert id (sqlx's `Any` driver gives none for SQLite, so code that used one would work
/// on SQLite alone).
fn outcome(connection: &rusqlite::Connection) -> AnyQueryResult {
    AnyQueryResult {
        rows_affected: connection.changes(),
        last_insert_id: None,
    }
}

impl Columns {
    fn of(statement: &rusqlite::Statement<'_>) -> Result<Self, sqlx::Error> {
        let columns = statement
            .columns()
            .iter()
            .enumerate()
            .map(|(ordinal, column)| {
                let kind = declared_kind(column.decl_type()).map_err(|source| {
                    sqlx::Error::ColumnDecode {
                        index: column.name().to_owned(),
                        source: source.into(),
                    }
                })?;
                Ok(AnyColumn {
                    ordinal,
                    name: UStr::new(column.name()),
                    type_info: AnyTypeInfo { kind },
                })
            })
            .collect::<Result<Vec<AnyColumn>, sqlx::Error>>()?;
        let by_name = columns
            .iter()
            .map(|column| (column.name.clone(), column.ordinal))
            .collect();
        Ok(Self {
            by_name: Arc::new(by_name),
            columns,
        })
    }
}

/// A column's type for the `Any` driver, from its declared type, as `sqlx`'s SQLite driver
/// decides it: the types `Any` has no room for (`BOOLEAN`, dates and times) are refused, so that
/// reading such a column fails on SQLite just as it would on PostgreSQL (module docs of
/// `kit::storage`); an expression, or a type sqlx does not know, has none (`NULL`). Row values
/// carry their own type regardless, which is what decoding looks at.
fn declared_kind(declared: Option<&str>) -> Result<AnyTypeInfoKind, String> {
    let Some(declared) = declared else {
        return Ok(AnyTypeInfoKind::Null);
    };
    let lower = declared.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "int4" => AnyTypeInfoKind::Integer,
        "int8" => AnyTypeInfoKind::BigInt,
        "boolean" | "bool" | "date" | "time" | "datetime" | "timestamp" => {
            return Err(format!(
                "Any driver does not support the SQLite type {declared}"
            ))
        }
        _ if lower.contains("int") => AnyTypeInfoKind::BigInt,
        _ if lower.contains("char") || lower.contains("clob") || lower.contains("text") => {
            AnyTypeInfoKind::Text
        }
        _ if lower.contains("blob") => AnyTypeInfoKind::Blob,
        _ if lower.contains("real") || lower.contains("floa") || lower.contains("doub") => {
            AnyTypeInfoKind::Double
        }
        _ => AnyTypeInfoKind::Null,
    })
}

/// Whether `sql` may be more than one statement (a `;` before its end; perhaps only inside a
/// string, which the statement-by-statement path handles as well, just without the cache).
fn may_hold_several_statements(sql: &str) -> bool {
    sql.trim_end().trim_end_matches(';').contains(';')
}

/// Steps `statement` to its end, appending its rows to `results` as `AnyRow`s, unless
/// `results` holds `max_rows` rows first: then it stops without stepping further and returns
/// `false`.
fn read(
    statement: &mut rusqlite::Statement<'_>,
    columns: &Arc<Columns>,
    max_rows: usize,
    results: &mut Vec<Either<AnyQueryResult, AnyRow>>,
) -> Result<bool, sqlx::Error> {
    let mut gathered = results.iter().filter(|result| result.is_right()).count();
    let mut rows = statement.raw_query();
    loop {
        if gathered >= max_rows {
            return Ok(false);
        }
        let Some(row) = rows.next().map_err(into_sqlx)? else {
            return Ok(true);
        };
        let mut values = Vec::with_capacity(columns.columns.len());
        for column in &columns.columns {
            let value = row.get_ref(column.ordinal).map_err(into_sqlx)?;
            values.push(AnyValue {
                kind: any_value(value).map_err(|source| sqlx::Error::ColumnDecode {
                    index: column.name.to_string(),
                    source: source.into(),
                })?,
            });
        }
        results.push(Either::Right(AnyRow {
            column_names: columns.by_name.clone(),
            columns: columns.columns.clone(),
            values,
        }));
        gathered += 1;
    }
}

/// Binds `values` to `statement`'s parameters as `sqlx`'s SQLite driver does: `?NNN` or `$NNN`
/// takes the NNN-th value (so `$2` before `$1`, and `$1` twice, work), a bare `?` the value
/// after the last bare one (counting from `unnamed_before`, the bare ones of the statements
/// before it in the same text), any other name is refused, and a parameter beyond the values
/// is left unbound, which SQLite reads as NULL. Returns how many bare parameters it bound.
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    values: &[AnyValueKind<'_>],
    unnamed_before: usize,
) -> Result<usize, sqlx::Error> {
    let (positions, unnamed) = positions(statement, unnamed_before)?;
    bind_at(statement, values, &positions)?;
    Ok(unnamed)
}

/// Binds each parameter to the argument `positions` names for it; a parameter without one
/// (and every one after it) stays NULL, as in `sqlx`'s driver.
fn bind_at(
    statement: &mut rusqlite::Statement<'_>,
    values: &[AnyValueKind<'_>],
    positions: &[usize],
) -> Result<(), sqlx::Error> {
    for (parameter, position) in (1..).zip(positions) {
        let Some(value) = values.get(position - 1) else {
            break;
        };
        statement
            .raw_bind_parameter(parameter, sqlite_value(value)?)
            .map_err(into_sqlx)?;
    }
    Ok(())
}

/// The argument (1-based) each parameter of `statement` takes, by `sqlx`'s SQLite rules: `$n`
/// and `?n` the n-th, a bare `?` the next after the `unnamed_before` taken by earlier
/// statements of the same text; and how many bare ones it has.
fn positions(
    statement: &rusqlite::Statement<'_>,
    unnamed_before: usize,
) -> Result<(Vec<usize>, usize), sqlx::Error> {
    let mut unnamed = unnamed_before;
    let mut positions = Vec::with_capacity(statement.parameter_count());
    for parameter in 1..=statement.parameter_count() {
        let position = match statement.parameter_name(parameter) {
            Some(name) => {
                let number = name
                    .strip_prefix('?')
                    .or_else(|| name.strip_prefix('$'))
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!("unsupported SQL parameter format: {name}"))
                    })?;
                number
                    .parse::<usize>()
                    .ok()
                    .filter(|number| *number > 0)
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!(
                            "parameters with non-integer names are not supported: {name}"
                        ))
                    })?
            }
            None => {
                unnamed += 1;
                unnamed
            }
        };
        positions.push(position);
    }
    Ok((positions, unnamed - unnamed_before))
}

/// An argument as SQLite stores it (as `sqlx`'s SQLite driver maps it).
fn sqlite_value<'a>(value: &'a AnyValueKind<'_>) -> Result<ToSqlOutput<'a>, sqlx::Error> {
    let value = match value {
        AnyValueKind::Null(_) => ValueRef::Null,
        AnyValueKind::Bool(b) => ValueRef::Integer(i64::from(*b)),
        AnyValueKind::SmallInt(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::Integer(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::BigInt(i) => ValueRef::Integer(*i),
        AnyValueKind::Real(r) => ValueRef::Real(f64::from(*r)),
        AnyValueKind::Double(d) => ValueRef::Real(*d),
        AnyValueKind::Text(text) => ValueRef::Text(text.as_bytes()),
        AnyValueKind::Blob(blob) => ValueRef::Blob(blob),
        other => {
            return Err(sqlx::Error::Protocol(format!(
                "cannot bind {other:?} to a SQLite statement"
            )))
        }
    };
    Ok(ToSqlOutput::Borrowed(value))
}

/// A value read from SQLite, typed by the value itself as `sqlx`'s SQLite driver types it for
/// the `Any` driver; text that is not UTF-8 is an error there as here.
fn any_value(value: ValueRef<'_>) -> Result<AnyValueKind<'static>, std::str::Utf8Error> {
    Ok(match value {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(i) => AnyValueKind::BigInt(i),
        ValueRef::Real(r) => AnyValueKind::Double(r),
        ValueRef::Text(text) => {
            AnyValueKind::Text(Cow::Owned(std::str::from_utf8(text)?.to_owned()))
        }
        ValueRef::Blob(blob) => AnyValueKind::Blob(Cow::Owned(blob.to_vec())),
    })
}

/// A `rusqlite` error as the `sqlx` error the SQLite driver would have returned, so callers'
/// checks (unique violations, "database is locked") see the same thing.
fn into_sqlx(error: rusqlite::Error) -> sqlx::Error {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                message: message.unwrap_or_else(|| failure.to_string()),
                extended_code: failure.extended_code,
            }))
        }
        // A statement SQLite could not prepare (with where in it, when SQLite says).
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                message: msg,
                extended_code: error.extended_code,
            }))
        }
        other => sqlx::Error::Protocol(format!("SQLite: {other}")),
    }
}

/// An error SQLite returned.
#[derive(Debug)]
struct SqliteFailure {
    message: String,
    extended_code: std::os::raw::c_int,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
