//! WAL checkpoints on a thread of their own, so that a service's one thread does not stop for
//! them.
//!
//! In WAL mode every commit appends the pages it changed to the log, and a checkpoint copies
//! them back into the database file: an `fsync` of the log, a copy of every page changed since
//! the last checkpoint, an `fsync` of the database file. SQLite's automatic checkpoint runs it
//! inside the commit that crosses the threshold, on the committing thread, and a service runs its
//! statements on its one thread ([`super::sqlite`]): for the 5 to 25 ms it took on the
//! benchmark's machine, every request to that service waited (docs/performance.md, twelfth
//! round).
//!
//! Here a [`Checkpointer`] replaces the automatic checkpoint with a `sqlite3_wal_hook`, called
//! after each commit with the log's length in frames:
//! - every [`Thresholds::background`] frames it wakes a thread that holds a connection of its
//!   own to the same file and runs a `PASSIVE` checkpoint there (it never blocks the writer, and
//!   the writer never waits for it);
//! - at [`Thresholds::writer`] frames the committing thread runs a `PASSIVE` checkpoint itself,
//!   as SQLite would have. The background cannot do it alone: the log starts again from its
//!   beginning only when a write transaction begins with every frame already copied, and
//!   under steady writes new frames arrive while the background copies, so its pass never
//!   catches up. By then it has copied all but the last frames, and the writer's own pass
//!   copies those few, after which the log restarts. The writer thus checkpoints once per
//!   `writer` frames instead of once per 4,000, and copies a fraction of the pages.
//!
//! Durability is SQLite's own: both passes are ordinary checkpoints with the connection's
//! `synchronous` setting, and a crash at any point leaves what a crash during an automatic
//! checkpoint would.
//!
//! The workspace denies `unsafe` code; this module is the exception, because the hook exists
//! only in SQLite's C API: the `rusqlite` that links the same SQLite as `sqlx` 0.8 (0.32) has no
//! safe wrapper for it. The unsafe parts (installing and removing the hook, one checkpoint call,
//! the hook's reference to the shared state) each say why they hold.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use rusqlite::{ffi, OpenFlags};

/// Checkpoint passes run by this process's checkpointer threads.
pub(crate) static BACKGROUND_PASSES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Checkpoint passes run by a committing (service) thread when its log reached the cap.
pub(crate) static WRITER_PASSES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// When checkpoints run, in frames of log (a frame is one page: 1 KiB on a bazaar database).
#[derive(Debug, Clone, Copy)]
pub(super) struct Thresholds {
    /// The background thread checkpoints each time the log has grown by this much.
    pub background: i64,
    /// The committing thread checkpoints once the log is this long, so the log restarts.
    pub writer: i64,
}

impl Default for Thresholds {
    /// A background pass every 2 MiB of log (half SQLite's interval here before, so the writer's
    /// pass finds at most that much left), and the writer's pass at 16 MiB: a log file of a busy
    /// service stays under 17 MiB.
    fn default() -> Self {
        Self {
            background: 2_000,
            writer: 16_000,
        }
    }
}

/// What the hook (on the writer's thread) and the checkpointer thread share.
struct Shared {
    thresholds: Thresholds,
    /// The log length at which the hook next wakes the background.
    next_background: AtomicI64,
    /// The log length the hook saw last (a shorter one means the log restarted).
    last_seen: AtomicI64,
    wake: Mutex<Wake>,
    woken: Condvar,
    /// Passes this checkpointer's thread completed.
    background_passes: AtomicU64,
    /// Passes the writer ran itself.
    writer_passes: AtomicU64,
}

#[derive(Default)]
struct Wake {
    requested: bool,
    stopping: bool,
}

/// Owns the checkpointer thread of one writing connection; stops it when dropped. Its owner
/// calls [`Checkpointer::detach`] before closing the connection; the hook holds a reference of
/// its own to the shared state until then, so whatever the order of drops, the hook never
/// points at freed memory (if `detach` were never called, that reference would leak, nothing
/// worse).
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    /// The hook's reference to `shared` (from `Arc::into_raw`), until `detach` takes it back.
    hook_argument: Option<*const Shared>,
    thread: Option<JoinHandle<()>>,
}

// SAFETY: `hook_argument` is an `Arc<Shared>` in raw form, and `Shared` is `Send + Sync`; the
// pointer is only turned back into that `Arc` (in `detach`), never dereferenced here.
unsafe impl Send for Checkpointer {}

impl Checkpointer {
    /// Starts a checkpointer thread for the database at `path` and installs the hook on
    /// `writer`, the connection that writes it (replacing its automatic checkpoint).
    pub(super) fn start(
        writer: &rusqlite::Connection,
        path: &Path,
        thresholds: Thresholds,
    ) -> std::io::Result<Self> {
        let connection = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            thresholds,
            next_background: AtomicI64::new(thresholds.background),
            last_seen: AtomicI64::new(0),
            wake: Mutex::new(Wake::default()),
            woken: Condvar::new(),
            background_passes: AtomicU64::new(0),
            writer_passes: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("bazaar-checkpoint".into())
            .spawn({
                let shared = shared.clone();
                move || run(&connection, &shared)
            })?;
        let hook_argument = Arc::into_raw(shared.clone());
        // SAFETY: `writer` is a live connection; the hook's argument is a strong reference to
        // `shared`, released only by `detach` after the hook is removed. The hook runs on the
        // thread that commits, the connection's only user.
        unsafe {
            ffi::sqlite3_wal_hook(
                writer.handle(),
                Some(on_commit),
                hook_argument.cast_mut().cast::<c_void>(),
            );
        }
        Ok(Self {
            shared,
            hook_argument: Some(hook_argument),
            thread: Some(thread),
        })
    }

    /// Removes the hook from `writer` (the connection given to [`Checkpointer::start`], still
    /// open) and releases the hook's reference to the shared state.
    pub(super) fn detach(&mut self, writer: &rusqlite::Connection) {
        if let Some(argument) = self.hook_argument.take() {
            // SAFETY: `writer` is open; once the hook is removed SQLite holds no copy of
            // `argument`, which came from `Arc::into_raw` and is turned back exactly once.
            unsafe {
                ffi::sqlite3_wal_hook(writer.handle(), None, std::ptr::null_mut());
                drop(Arc::from_raw(argument));
            }
        }
    }

    /// Passes run so far by (the background thread, the writer).
    #[cfg(test)]
    pub(super) fn passes(&self) -> (u64, u64) {
        (
            self.shared.background_passes.load(Ordering::Relaxed),
            self.shared.writer_passes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared
            .wake
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .stopping = true;
        self.shared.woken.notify_one();
        if let Some(thread) = self.thread.take() {
            // At most one pass to finish: it closes its connection as it leaves.
            let _ = thread.join();
        }
    }
}

/// The WAL hook: called by SQLite on the writer's thread after each commit, with the log's
/// length in frames. Always answers `SQLITE_OK` (the commit is done whatever happens here).
unsafe extern "C" fn on_commit(
    argument: *mut c_void,
    db: *mut ffi::sqlite3,
    schema: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: the argument is the `Shared` installed with the hook, alive while the connection
    // is (see `Checkpointer::start`).
    let shared = unsafe { &*argument.cast::<Shared>() };
    let frames = i64::from(frames);
    if frames < shared.last_seen.swap(frames, Ordering::Relaxed) {
        // The log restarted: count again from its beginning.
        shared
            .next_background
            .store(shared.thresholds.background, Ordering::Relaxed);
    }
    if frames >= shared.thresholds.writer {
        // PASSIVE never waits: if the background holds the checkpoint lock this returns BUSY
        // at once and the next commit tries again.
        // SAFETY: `db` and `schema` are the ones SQLite passed to this hook.
        let outcome = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                schema,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if outcome == ffi::SQLITE_OK {
            shared.writer_passes.fetch_add(1, Ordering::Relaxed);
            WRITER_PASSES.inc();
        }
    } else if frames >= shared.next_background.load(Ordering::Relaxed) {
        shared
            .next_background
            .store(frames + shared.thresholds.background, Ordering::Relaxed);
        shared
            .wake
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .requested = true;
        shared.woken.notify_one();
    }
    ffi::SQLITE_OK
}

/// The checkpointer thread: a `PASSIVE` checkpoint each time the hook asks, until stopped.
fn run(connection: &rusqlite::Connection, shared: &Shared) {
    loop {
        {
            let mut wake = shared
                .wake
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            while !wake.requested && !wake.stopping {
                wake = shared
                    .woken
                    .wait(wake)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if wake.stopping {
                return;
            }
            wake.requested = false;
        }
        // BUSY (the writer is running its own pass) or an I/O error: the writer's pass at the
        // cap still bounds the log, and the next request tries again.
        match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(0) => {
                shared.background_passes.fetch_add(1, Ordering::Relaxed);
                BACKGROUND_PASSES.inc();
            }
            Ok(_busy) => {}
            Err(error) => tracing::warn!(%error, "background checkpoint failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path) -> (std::path::PathBuf, rusqlite::Connection) {
        let path = dir.join("checkpoints.db");
        let connection = rusqlite::Connection::open(&path).expect("create");
        connection
            .execute_batch(
                "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; \
                 CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
            )
            .expect("set up");
        (path, connection)
    }

    /// A fresh database with a checkpointer at `background` / `writer` frames on its writer.
    fn started(
        background: i64,
        writer: i64,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        rusqlite::Connection,
        Checkpointer,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, connection) = database(dir.path());
        let thresholds = Thresholds { background, writer };
        let checkpointer = Checkpointer::start(&connection, &path, thresholds).expect("start");
        (dir, path, connection, checkpointer)
    }

    fn wal_frames(path: &Path) -> u64 {
        let log = path.with_extension("db-wal");
        let bytes = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        // 32-byte header, then frames of a 24-byte header and a 1 KiB page.
        bytes.saturating_sub(32) / (24 + 1024)
    }

    /// Commits `commits` transactions of two ~1.5 KiB rows each (a few pages of log each).
    fn write_rows(writer: &rusqlite::Connection, commits: i64) {
        let body = "x".repeat(1500);
        for id in 0..commits {
            writer
                .execute(
                    "INSERT INTO rows (id, body) VALUES (?1, ?2), (?3, ?2)",
                    rusqlite::params![2 * id, body, 2 * id + 1],
                )
                .expect("insert");
        }
    }

    #[test]
    fn the_writer_restarts_the_log_at_its_cap() {
        // No background passes: the writer's own pass alone must keep the log bounded (the
        // hook replaced SQLite's automatic checkpoint, so nothing else would).
        let (_dir, path, writer, checkpointer) = started(i64::MAX, 400);
        write_rows(&writer, 2_000);
        let (background, writer_passes) = checkpointer.passes();
        assert_eq!(background, 0);
        assert!(
            writer_passes > 0,
            "the writer never checkpointed at its cap"
        );
        // Some 8,000 frames went through the log.
        let frames = wal_frames(&path);
        assert!(frames <= 800, "the log grew to {frames} frames");
    }

    #[test]
    fn with_both_passes_every_row_survives() {
        let (_dir, path, writer, mut checkpointer) = started(50, 400);
        write_rows(&writer, 2_000);
        assert!(
            checkpointer.passes().0 > 0,
            "the background thread never checkpointed"
        );
        // (How far past the cap the log grows here depends on timing: the writer's pass finds
        // the checkpoint lock taken while a background pass runs, and tries again at the next
        // commit.)
        checkpointer.detach(&writer);
        drop(writer);
        drop(checkpointer);
        let reopened = rusqlite::Connection::open(&path).expect("reopen");
        let count: i64 = reopened
            .query_row("SELECT count(*) FROM rows", [], |row| row.get(0))
            .expect("count");
        assert_eq!(count, 4_000);
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_detached_connection_no_longer_calls_the_hook() {
        let (_dir, _, writer, mut checkpointer) = started(i64::MAX, 100);
        checkpointer.detach(&writer);
        write_rows(&writer, 500);
        assert_eq!(checkpointer.passes(), (0, 0));
        // Detaching twice is harmless.
        checkpointer.detach(&writer);
    }

    #[test]
    fn a_quiet_writer_is_checkpointed_by_the_background_alone() {
        let (_dir, _, writer, checkpointer) = started(20, 1_000_000);
        write_rows(&writer, 40);
        // The hook asked for passes (some 160 frames went through the log); wait until the
        // thread has run one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while checkpointer.passes().0 == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background pass within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            checkpointer.passes().1,
            0,
            "the writer checkpointed below its cap"
        );
    }
}
