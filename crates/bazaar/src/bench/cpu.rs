//! CPU time of the system under load, per process, read from `/proc` (Linux): what
//! `bench checkout` divides by the orders confirmed to report milliseconds of CPU per order.
//!
//! Throughput alone is a poor guide to whether a change made a checkout cheaper (it falls
//! whenever the offered load or the machine's spare capacity does); CPU per order says it more
//! directly, though on a virtual machine it still moves with the host's speed.
//!
//! Counted: every `bazaar … serve <service>` process on this machine (by service name,
//! instances of one service summed), PostgreSQL's processes and `nats-server`; the bench itself
//! is not. So it is meaningful when the bench runs on the system's machine and no other bazaar
//! system is busy there. A process that ends inside the window takes its time with it (a
//! service killed during the run is undercounted); one that starts inside it counts whole.

use std::collections::BTreeMap;
use std::time::Instant;

use bazaar_kit::process_cpu::{stat_ticks, TICKS_PER_SECOND};

/// CPU time used so far by each counted process group, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// Clock ticks (user + system) by process group.
    ticks: BTreeMap<String, u64>,
}

/// Reads the CPU time of the counted processes now (empty where `/proc` cannot be read).
pub fn snapshot() -> Snapshot {
    let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let dir = entry.path();
            // A process may end between the listing and these reads: skip it.
            let (Ok(cmdline), Ok(stat)) = (
                std::fs::read(dir.join("cmdline")),
                std::fs::read_to_string(dir.join("stat")),
            ) else {
                continue;
            };
            if let (Some(group), Some(used)) = (process_group(&cmdline), stat_ticks(&stat)) {
                *ticks.entry(group).or_default() += used;
            }
        }
    }
    Snapshot {
        at: Instant::now(),
        ticks,
    }
}

/// Milliseconds of CPU per confirmed order of each process group between two snapshots, given
/// the confirmation rate over the same period; empty when nothing was counted or confirmed.
pub fn per_order(
    start: &Snapshot,
    end: &Snapshot,
    confirmed_per_second: f64,
) -> BTreeMap<String, f64> {
    let seconds = (end.at - start.at).as_secs_f64();
    let orders = confirmed_per_second * seconds;
    if orders <= 0.0 {
        return BTreeMap::new();
    }
    let ms_per_tick = 1000.0 / TICKS_PER_SECOND as f64;
    end.ticks
        .iter()
        .map(|(group, &ticks)| {
            let used = ticks.saturating_sub(start.ticks.get(group).copied().unwrap_or(0));
            (group.clone(), used as f64 * ms_per_tick / orders)
        })
        .collect()
}

/// Which group a process counts in, from its `/proc/<pid>/cmdline`: the service a
/// `bazaar … serve <service>` process runs, `postgres` or `nats-server`; `None` for the rest.
fn process_group(cmdline: &[u8]) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args.first()?;
    // PostgreSQL's backends rename themselves ("postgres: bazaar bench_orders ... idle").
    let program_name = program
        .split_whitespace()
        .next()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or_default();
    if program_name.starts_with("postgres") {
        return Some("postgres".to_owned());
    }
    if program_name == "nats-server" {
        return Some("nats-server".to_owned());
    }
    if !program_name.starts_with("bazaar") {
        return None;
    }
    let serve = args.iter().position(|a| a == "serve")?;
    args.get(serve + 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_services_by_name_and_knows_the_servers() {
        let group = |args: &[&str]| process_group(args.join("\0").as_bytes());
        assert_eq!(
            group(&["/opt/bazaar/bazaar", "--log-files", "serve", "orders"]).as_deref(),
            Some("orders")
        );
        assert_eq!(
            group(&[
                "./target/release/bazaar",
                "serve",
                "catalog",
                "--port",
                "8082"
            ])
            .as_deref(),
            Some("catalog")
        );
        assert_eq!(
            group(&["postgres: postgres bench_orders 127.0.0.1(5000) idle"]).as_deref(),
            Some("postgres")
        );
        assert_eq!(
            group(&["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg"]).as_deref(),
            Some("postgres")
        );
        assert_eq!(
            group(&["/usr/sbin/nats-server", "-js"]).as_deref(),
            Some("nats-server")
        );
        // The supervisor and the bench itself are not the system's services.
        assert_eq!(group(&["bazaar", "up", "--port", "18080"]), None);
        assert_eq!(group(&["bazaar", "bench", "checkout"]), None);
        assert_eq!(group(&["/usr/bin/python3", "serve", "orders"]), None);
        assert_eq!(group(&[]), None);
    }

    #[test]
    fn divides_the_time_used_between_snapshots_by_the_orders_confirmed() {
        let at = Instant::now();
        let start = Snapshot {
            at,
            ticks: BTreeMap::from([("orders".to_owned(), 100), ("cart".to_owned(), 50)]),
        };
        let end = Snapshot {
            at: at + std::time::Duration::from_secs(2),
            ticks: BTreeMap::from([
                ("orders".to_owned(), 100 + 4 * TICKS_PER_SECOND),
                ("cart".to_owned(), 50),
                ("shipping".to_owned(), TICKS_PER_SECOND),
            ]),
        };
        // 50 orders a second for 2 s: 100 orders; orders used 4 s of CPU, so 40 ms each.
        let per = per_order(&start, &end, 50.0);
        assert!((per["orders"] - 40.0).abs() < 1e-9, "{per:?}");
        assert_eq!(per["cart"], 0.0);
        // A process first seen at the end counts all its time (it started in the window).
        assert!((per["shipping"] - 10.0).abs() < 1e-9, "{per:?}");
        assert!(per_order(&start, &end, 0.0).is_empty());
    }
}
