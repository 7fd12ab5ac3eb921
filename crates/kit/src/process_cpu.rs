//! CPU time of a process, read from Linux's `/proc/<pid>/stat`: what benchmarks divide by the
//! work done. One parser for `bench checkout` (every process of the system) and the crates'
//! benchmark tests (their own process).

use std::time::Duration;

/// The unit of `/proc/<pid>/stat`'s times: `USER_HZ`, which Linux's ABI fixes at 100 whatever
/// the kernel's own tick rate.
pub const TICKS_PER_SECOND: u64 = 100;

/// User plus system clock ticks from the contents of `/proc/<pid>/stat` (fields 14 and 15,
/// counted after the command name, which may itself hold spaces and parentheses).
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// CPU time (user plus system) this process has used so far; zero where `/proc` is missing.
pub fn own() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_ticks(&stat))
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_past_an_awkward_name() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 1524 0 0 0 \
                    731 269 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(1000));
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x) S 1 2"), None);
    }

    /// Busy work shows up as this process's CPU time (a tick is 10 ms; a starved thread may
    /// need longer than that to earn one, hence the generous limit).
    #[test]
    fn own_time_grows_with_work() {
        let before = own();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while own() <= before && started.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(
            own() > before,
            "no CPU time counted after {:?}",
            started.elapsed()
        );
    }
}
