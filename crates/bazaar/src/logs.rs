//! `bazaar logs <service>`: the log file `bazaar up --log-files` writes for each process
//! (`<data-dir>/logs/<label>.log`, the label being the service name or `<service>-<n>` for
//! replicas): its last lines, then with `--follow` what is appended, like `tail -f`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{Global, LogsArgs};

/// How often `--follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How much is read at a time when looking for the last lines from the end.
const CHUNK: u64 = 64 * 1024;

pub async fn logs(_global: Global, args: LogsArgs) -> anyhow::Result<()> {
    // The name becomes part of a path: only what a label can be, so `../x` reads nothing else.
    let valid = !args.service.is_empty()
        && args
            .service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!(
            "`{}` is not a service name (letters, digits, `-` and `_`, e.g. catalog or catalog-2)",
            args.service
        );
    }
    let path = args
        .data_dir
        .join("logs")
        .join(format!("{}.log", args.service));
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no log file {}: service logs are written there only by `bazaar up --log-files` \
             (with the same --data-dir, here {})",
            path.display(),
            args.data_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (text, end) = last_lines(&mut file, args.lines)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !emit(&text)? {
        return Ok(());
    }
    if args.follow {
        follow(&path, end).await?;
    }
    Ok(())
}

/// Writes to standard output; `false` when the reader went away (`bazaar logs x | head`).
fn emit(bytes: &[u8]) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The last `lines` lines of `file` (all of it for 0) and the file's length, read backwards
/// from the end in chunks so a large log is not read whole.
fn last_lines(file: &mut File, lines: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        let mut all = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.take(len).read_to_end(&mut all)?;
        return Ok((all, len));
    }
    let mut start = len;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        // A trailing newline ends the last line; it does not start another one.
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let newlines = body.iter().filter(|&&b| b == b'\n').count();
        if newlines >= lines || start == 0 {
            let cut = if newlines >= lines {
                // Keep what follows the `lines`-th newline from the end.
                let mut seen = 0;
                let mut cut = 0;
                for (i, &b) in body.iter().enumerate().rev() {
                    if b == b'\n' {
                        seen += 1;
                        if seen == lines {
                            cut = i + 1;
                            break;
                        }
                    }
                }
                cut
            } else {
                0
            };
            return Ok((tail[cut..].to_vec(), len));
        }
        let step = CHUNK.min(start);
        start -= step;
        let mut chunk = Vec::with_capacity(step as usize);
        file.seek(SeekFrom::Start(start))?;
        Read::by_ref(file).take(step).read_to_end(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

/// Prints what is appended after `from`, until interrupted. The file is reopened on every
/// look, so a log that is recreated is followed too; one that shrinks is read from its start.
async fn follow(path: &Path, mut from: u64) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Ok(mut file) = File::open(path) else {
            continue;
        };
        let len = file.seek(SeekFrom::End(0))?;
        if len < from {
            eprintln!("({} was truncated; reading from its start)", path.display());
            from = 0;
        }
        if len == from {
            continue;
        }
        let mut fresh = Vec::new();
        file.seek(SeekFrom::Start(from))?;
        file.take(len - from).read_to_end(&mut fresh)?;
        from = len;
        if !emit(&fresh)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &str, lines: usize) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, content).expect("write");
        let mut file = File::open(&path).expect("open");
        let (text, len) = last_lines(&mut file, lines).expect("tail");
        assert_eq!(len, content.len() as u64);
        String::from_utf8(text).expect("utf8")
    }

    #[test]
    fn the_last_lines_are_found_from_the_end() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 0), "a\nb\nc\n");
        assert_eq!(tail_of("", 3), "");
        // Across chunk boundaries.
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&long, 3), "line 19997\nline 19998\nline 19999\n");
        assert_eq!(tail_of(&long, 20_000), long);
    }
}
