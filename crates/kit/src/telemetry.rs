//! Structured logging with `tracing`: human-readable text by default, JSON on demand, to
//! standard output or appended to a file.
//!
//! Lines are formatted on the logging thread but written by a background writer thread
//! (`tracing-appender`), in batches: a request's access line costs a channel send, not a write
//! system call, so logging at `info` stays off the request path. The writer never drops a line
//! (it makes the logger wait instead when it falls far behind). [`flush_logs`] drains it before
//! the process exits.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the background writer alive; taken and dropped by [`flush_logs`].
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber once; later calls (tests starting several services in one
/// process) keep the first. With `log_file`, lines are appended to that file (created if
/// missing) instead of standard output.
pub fn init_logging(format: LogFormat, filter: &str, log_file: Option<&Path>) {
    let mut writer_slot = WRITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if writer_slot.is_some() {
        return;
    }
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let file = log_file.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| eprintln!("cannot open the log file {}: {error}", path.display()))
            .ok()
    });
    // Colour only on a terminal: under `bazaar up` output goes through a pipe or to a file.
    let ansi = file.is_none() && std::io::stdout().is_terminal();
    // A buffered sink: the writer thread flushes it each time it has drained its queue, so a
    // burst of lines is one write.
    let sink: Box<dyn Write + Send> = match file {
        Some(file) => Box::new(std::io::BufWriter::new(file)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("bazaar-log-writer")
        .finish(sink);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    if installed.is_ok() {
        *writer_slot = Some(guard);
    }
}

/// Writes out every line logged so far and stops the background writer; call it right before
/// the process exits (later lines are not written).
pub fn flush_logs() {
    let guard = WRITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    drop(guard);
}
