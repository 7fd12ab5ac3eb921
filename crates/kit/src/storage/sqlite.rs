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
//! binds them as `sqlx`'s SQLite driver does (`$n` / `?n` name the n-th argument, others take
//! the next one), and builds `AnyRow`s the way that driver's `Any` mapping does (an integer as
//! `BIGINT`, a real as `DOUBLE`, text, blob or null, decided by the value, not the column).
//! Those row types' fields are public but hidden in `sqlx-core`'s docs, which is why
//! `sqlx-core` is pinned to sqlx's exact version.

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

/// Prepared statements kept per connection: every distinct query text of a service fits.
const STATEMENT_CACHE: usize = 256;

/// One SQLite connection, used from one task at a time.
pub(super) struct Sqlite {
    connection: rusqlite::Connection,
    /// Column names and positions per query text, shared by every row that query returns.
    columns: std::collections::HashMap<Box<str>, Arc<Columns>>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").finish_non_exhaustive()
    }
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
        // busy_timeout makes a writer in another process (`bazaar` commands, a second
        // instance) wait instead of failing; NORMAL sync in WAL mode is durable across process
        // crashes; WAL itself is a property of the file, set when it was created.
        connection
            .execute_batch(
                "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(into_sqlx)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            connection,
            columns: std::collections::HashMap::new(),
        })
    }

    /// Runs `sql` with `arguments` and returns what `sqlx`'s `fetch_many` would: each row (the
    /// first `max_rows` of them) and, after each statement's rows, its result.
    pub(super) fn run(
        &mut self,
        sql: &str,
        arguments: Option<AnyArguments<'_>>,
        max_rows: usize,
    ) -> Result<Vec<Either<AnyQueryResult, AnyRow>>, sqlx::Error> {
        let values = arguments
            .map(|arguments| arguments.values.0)
            .unwrap_or_default();
        let mut results = Vec::new();
        if may_hold_several_statements(sql) {
            // Set-up scripts and the like: each statement in turn, none of them cached.
            let mut batch = rusqlite::Batch::new(&self.connection, sql);
            let mut next_value = 0;
            while let Some(mut statement) = batch.next().map_err(into_sqlx)? {
                next_value = bind(&mut statement, &values, next_value)?;
                let columns = Arc::new(Columns::of(&statement));
                read(&mut statement, &columns, max_rows, &mut results)?;
                results.push(Either::Left(self.outcome()));
            }
            return Ok(results);
        }
        let mut statement = self.connection.prepare_cached(sql).map_err(into_sqlx)?;
        bind(&mut statement, &values, 0)?;
        let columns = match self.columns.get(sql) {
            Some(columns) => columns.clone(),
            None => {
                let columns = Arc::new(Columns::of(&statement));
                self.columns.insert(sql.into(), columns.clone());
                columns
            }
        };
        read(&mut statement, &columns, max_rows, &mut results)?;
        drop(statement);
        results.push(Either::Left(self.outcome()));
        Ok(results)
    }

    /// The result of the statement that just finished. As in sqlx: the changes of the last
    /// INSERT, UPDATE or DELETE, which for a SELECT is whatever ran before it.
    fn outcome(&self) -> AnyQueryResult {
        AnyQueryResult {
            rows_affected: self.connection.changes(),
            last_insert_id: Some(self.connection.last_insert_rowid()),
        }
    }

    /// Runs a statement without arguments or rows (`BEGIN`, `COMMIT`, `ROLLBACK`).
    pub(super) fn command(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.connection.execute_batch(sql).map_err(into_sqlx)
    }

    /// Whether a transaction is open on this connection.
    pub(super) fn in_transaction(&self) -> bool {
        !self.connection.is_autocommit()
    }
}

impl Columns {
    fn of(statement: &rusqlite::Statement<'_>) -> Self {
        let names = statement.column_names();
        let columns: Vec<AnyColumn> = names
            .iter()
            .enumerate()
            .map(|(ordinal, name)| AnyColumn {
                ordinal,
                name: UStr::new(name),
                // Row values carry their own type (as with sqlx's SQLite driver); nothing reads
                // the column's declared one.
                type_info: AnyTypeInfo {
                    kind: AnyTypeInfoKind::Null,
                },
            })
            .collect();
        let by_name = columns
            .iter()
            .map(|column| (column.name.clone(), column.ordinal))
            .collect();
        Self {
            by_name: Arc::new(by_name),
            columns,
        }
    }
}

/// Whether `sql` may be more than one statement (a `;` before its end; perhaps only inside a
/// string, which the statement-by-statement path handles as well, just without the cache).
fn may_hold_several_statements(sql: &str) -> bool {
    sql.trim_end().trim_end_matches(';').contains(';')
}

/// Steps `statement` to its end, appending its rows (while fewer than `max_rows` are gathered)
/// to `results` as `AnyRow`s.
fn read(
    statement: &mut rusqlite::Statement<'_>,
    columns: &Arc<Columns>,
    max_rows: usize,
    results: &mut Vec<Either<AnyQueryResult, AnyRow>>,
) -> Result<(), sqlx::Error> {
    let mut rows = statement.raw_query();
    let mut gathered = results.iter().filter(|result| result.is_right()).count();
    while let Some(row) = rows.next().map_err(into_sqlx)? {
        if gathered >= max_rows {
            // Like sqlx's fetch_optional: the rest of the rows are not read.
            break;
        }
        let mut values = Vec::with_capacity(columns.columns.len());
        for index in 0..columns.columns.len() {
            values.push(AnyValue {
                kind: any_value(row.get_ref(index).map_err(into_sqlx)?),
            });
        }
        results.push(Either::Right(AnyRow {
            column_names: columns.by_name.clone(),
            columns: columns.columns.clone(),
            values,
        }));
        gathered += 1;
    }
    Ok(())
}

/// Binds `values` to `statement`'s parameters the way `sqlx`'s SQLite driver does: a parameter
/// named `$n` or `?n` takes the n-th value (so `$2` before `$1` and a repeated `$1` work),
/// any other the value after the previous one, starting at `next` (where the statement before
/// it in the same text stopped). Returns where the next statement starts.
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    values: &[AnyValueKind<'_>],
    mut next: usize,
) -> Result<usize, sqlx::Error> {
    for parameter in 1..=statement.parameter_count() {
        let numbered = statement
            .parameter_name(parameter)
            .and_then(|name| name.strip_prefix('$').or_else(|| name.strip_prefix('?')))
            .and_then(|number| number.parse::<usize>().ok());
        let position = match numbered {
            Some(number) => number.checked_sub(1).ok_or_else(|| {
                sqlx::Error::Protocol(format!("parameter {parameter} is numbered 0"))
            })?,
            None => next,
        };
        next = position + 1;
        let value = values.get(position).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "the query has a parameter ${} but only {} arguments",
                position + 1,
                values.len()
            ))
        })?;
        statement
            .raw_bind_parameter(parameter, sqlite_value(value)?)
            .map_err(into_sqlx)?;
    }
    Ok(next)
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
/// the `Any` driver.
fn any_value(value: ValueRef<'_>) -> AnyValueKind<'static> {
    match value {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(i) => AnyValueKind::BigInt(i),
        ValueRef::Real(r) => AnyValueKind::Double(r),
        // SQLite hands back the bytes it was given; text written through sqlx is UTF-8.
        ValueRef::Text(text) => {
            AnyValueKind::Text(Cow::Owned(String::from_utf8_lossy(text).into_owned()))
        }
        ValueRef::Blob(blob) => AnyValueKind::Blob(Cow::Owned(blob.to_vec())),
    }
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
