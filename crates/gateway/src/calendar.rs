//! UTC calendar arithmetic for quota windows (days and months) without a date library:
//! days from the civil date and back (H. Hinnant's algorithms).

use std::time::{SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn date(secs: u64) -> (i64, u32, u32) {
    civil_from_days((secs / DAY) as i64)
}

/// `YYYY-MM-DD` of the UTC day containing `secs`.
pub fn day(secs: u64) -> String {
    let (y, m, d) = date(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM` of the UTC month containing `secs`.
pub fn month(secs: u64) -> String {
    let (y, m, _) = date(secs);
    format!("{y:04}-{m:02}")
}

/// Seconds from `secs` to the next UTC midnight (at least 1).
pub fn until_next_day(secs: u64) -> u64 {
    (DAY - secs % DAY).max(1)
}

fn month_bounds(secs: u64) -> (u64, u64) {
    let (y, m, _) = date(secs);
    let start = days_from_civil(y, m, 1);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = days_from_civil(ny, nm, 1);
    ((start as u64) * DAY, (end as u64) * DAY)
}

/// Seconds from `secs` to the first second of the next UTC month (at least 1).
pub fn until_next_month(secs: u64) -> u64 {
    (month_bounds(secs).1 - secs).max(1)
}

/// Length in seconds of the UTC month containing `secs`.
pub fn month_length(secs: u64) -> u64 {
    let (start, end) = month_bounds(secs);
    end - start
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let rest = secs % DAY;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        day(secs),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Seconds since the epoch of a UTC `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what the developer service
/// writes); `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date = date.splitn(3, '-').map(str::parse::<u32>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let time = time.split('.').next()?;
    let mut time = time.splitn(3, ':').map(str::parse::<u64>);
    let (h, m, s) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(year), month, day)).ok()?;
    Some(days * DAY + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes() {
        for secs in [0, 1_709_251_199, 1_704_024_000] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.250Z"),
            Some(1_709_251_199)
        );
        assert_eq!(parse_rfc3339("2024-02-29"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn dates_and_windows() {
        assert_eq!(day(0), "1970-01-01");
        // 2024-02-29T23:59:59Z, a leap day.
        let leap = 1_709_251_199;
        assert_eq!(day(leap), "2024-02-29");
        assert_eq!(month(leap), "2024-02");
        assert_eq!(until_next_day(leap), 1);
        assert_eq!(until_next_month(leap), 1);
        assert_eq!(month_length(leap), 29 * DAY);
        assert_eq!(rfc3339(leap), "2024-02-29T23:59:59Z");
        assert_eq!(day(leap + 1), "2024-03-01");
        assert_eq!(month_length(leap + 1), 31 * DAY);
        // 2023-12-31T12:00:00Z: the month rolls into the next year.
        let eve = 1_704_024_000;
        assert_eq!(day(eve), "2023-12-31");
        assert_eq!(until_next_month(eve), 12 * 3600);
    }
}
