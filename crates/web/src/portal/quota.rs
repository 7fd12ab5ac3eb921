//! Plans and usage as the developer portal shows them: a plan's limits in words, and a key's
//! use of its quota as a meter (a percentage that never divides by zero, says "unlimited" for a
//! plan without a quota, and reads 100% only when the quota is really used up).
//!
//! Pure functions of the developer service's answers (`GET /api/v1/developer/plans` and
//! `GET /api/v1/developer/usage`), unit-tested here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A plan as `GET /api/v1/developer/plans` lists it (read leniently: a missing field is a
/// default, not a failed page).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Plan {
    pub name: String,
    pub title: String,
    pub rate_per_second: u32,
    pub burst: u32,
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
    pub trial_days: Option<u32>,
    pub self_service: bool,
}

/// A plan with its limits in words, for the templates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanView {
    pub name: String,
    pub title: String,
    pub rate_per_second: u32,
    pub burst: u32,
    /// `5 requests/s, bursts of 10`.
    pub rate: String,
    /// `1,000 requests` or `unlimited`.
    pub day_quota: String,
    pub month_quota: String,
    /// `14-day trial` or `no expiry`.
    pub term: String,
    pub self_service: bool,
}

impl Plan {
    pub fn view(&self) -> PlanView {
        let title = if self.title.is_empty() {
            self.name.clone()
        } else {
            self.title.clone()
        };
        PlanView {
            name: self.name.clone(),
            title,
            rate_per_second: self.rate_per_second,
            burst: self.burst,
            rate: rate_text(self.rate_per_second, self.burst),
            day_quota: quota_text(self.quota_per_day),
            month_quota: quota_text(self.quota_per_month),
            term: match self.trial_days {
                Some(1) => "1-day trial".to_owned(),
                Some(days) => format!("{days}-day trial"),
                None => "no expiry".to_owned(),
            },
            self_service: self.self_service,
        }
    }
}

/// The plans in a `PlanList` answer (`{"items": [...]}`), in its order.
pub fn plans(list: &Value) -> Vec<Plan> {
    list.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| serde_json::from_value(item.clone()).ok())
        .collect()
}

/// `5 requests/s, bursts of 10`.
pub fn rate_text(per_second: u32, burst: u32) -> String {
    let unit = if per_second == 1 {
        "request"
    } else {
        "requests"
    };
    format!(
        "{} {unit}/s, bursts of {}",
        group(u64::from(per_second)),
        group(u64::from(burst))
    )
}

/// `1,000 requests` or `unlimited`.
pub fn quota_text(quota: Option<u64>) -> String {
    match quota {
        None => "unlimited".to_owned(),
        Some(1) => "1 request".to_owned(),
        Some(n) => format!("{} requests", group(n)),
    }
}

/// Digits grouped by thousands: `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// How much of `quota` `used` is, in whole percent for a meter; `None` for no quota
/// (unlimited). A quota of 0 allows nothing, so it is full. Any use shows at least 1% and
/// anything short of the quota at most 99%, so the meter never looks empty while requests
/// were counted nor full while some remain.
pub fn percent_used(used: u64, quota: Option<u64>) -> Option<u8> {
    let quota = quota?;
    if used >= quota {
        return Some(100);
    }
    // u128: `used * 100` cannot overflow.
    let percent = (u128::from(used) * 100 / u128::from(quota)) as u8;
    Some(if used == 0 { 0 } else { percent.clamp(1, 99) })
}

/// One meter: a count against an optional quota.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Meter {
    pub used: u64,
    pub quota: Option<u64>,
    pub remaining: Option<u64>,
    /// `remaining` with grouped digits.
    pub remaining_text: Option<String>,
    /// Whole percent for the bar; `None`: unlimited.
    pub percent: Option<u8>,
    /// The quota is used up: the gateway answers 429 until the window ends.
    pub exhausted: bool,
    /// `12 of 1,000 requests (1%)` or `12 requests (unlimited)`.
    pub text: String,
}

impl Meter {
    pub fn new(used: u64, quota: Option<u64>) -> Self {
        let percent = percent_used(used, quota);
        let text = match (quota, percent) {
            (Some(quota), Some(percent)) => {
                format!(
                    "{} of {} ({percent}%)",
                    group(used),
                    quota_text(Some(quota))
                )
            }
            _ => format!("{} (unlimited)", quota_text(Some(used))),
        };
        Self {
            used,
            quota,
            remaining: quota.map(|q| q.saturating_sub(used)),
            remaining_text: quota.map(|q| group(q.saturating_sub(used))),
            percent,
            exhausted: quota.is_some_and(|q| used >= q),
            text,
        }
    }
}

/// One key's line on the usage page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageRow {
    pub key_id: String,
    pub name: String,
    pub prefix: String,
    pub status: String,
    pub plan: String,
    /// The plan's title, or its name when the plan list is unavailable.
    pub plan_title: String,
    /// The plan's rate limit in words; `None` when the plan list is unavailable.
    pub rate: Option<String>,
    pub day: Meter,
    pub month: Meter,
}

/// The usage page's rows from the developer service's `UsageList` and the plan list.
pub fn usage_rows(usage: &Value, plans: &[Plan]) -> Vec<UsageRow> {
    let text = |item: &Value, key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    usage
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|item| {
            let count = |key: &str| item.get(key).and_then(Value::as_u64).unwrap_or(0);
            let quota = |key: &str| item.get(key).and_then(Value::as_u64);
            let plan_name = text(item, "plan");
            let plan = plans.iter().find(|p| p.name == plan_name).map(Plan::view);
            UsageRow {
                key_id: text(item, "key_id"),
                name: text(item, "name"),
                prefix: text(item, "prefix"),
                status: text(item, "status"),
                plan_title: plan
                    .as_ref()
                    .map_or_else(|| plan_name.clone(), |p| p.title.clone()),
                rate: plan.map(|p| p.rate),
                plan: plan_name,
                day: Meter::new(count("day_count"), quota("quota_per_day")),
                month: Meter::new(count("month_count"), quota("quota_per_month")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn percentages_handle_zero_and_unlimited_quotas_without_dividing_by_zero() {
        assert_eq!(percent_used(0, None), None, "unlimited has no percentage");
        assert_eq!(percent_used(5_000, None), None);
        assert_eq!(
            percent_used(0, Some(0)),
            Some(100),
            "a zero quota allows nothing"
        );
        assert_eq!(percent_used(3, Some(0)), Some(100));
        assert_eq!(percent_used(0, Some(1_000)), Some(0));
        assert_eq!(percent_used(250, Some(1_000)), Some(25));
        assert_eq!(percent_used(1, Some(100_000)), Some(1), "any use shows");
        assert_eq!(
            percent_used(999, Some(1_000)),
            Some(99),
            "not full while some remain"
        );
        assert_eq!(percent_used(1_000, Some(1_000)), Some(100));
        assert_eq!(percent_used(1_500, Some(1_000)), Some(100), "capped");
        assert_eq!(
            percent_used(u64::MAX - 1, Some(u64::MAX)),
            Some(99),
            "no overflow"
        );
    }

    #[test]
    fn meters_say_what_remains_and_when_the_quota_is_used_up() {
        let meter = Meter::new(12, Some(1_000));
        assert_eq!(meter.remaining, Some(988));
        assert_eq!(
            Meter::new(0, Some(100_000)).remaining_text.as_deref(),
            Some("100,000")
        );
        assert!(!meter.exhausted);
        assert_eq!(meter.text, "12 of 1,000 requests (1%)");
        let full = Meter::new(1_000, Some(1_000));
        assert!(full.exhausted);
        assert_eq!(full.remaining, Some(0));
        let over = Meter::new(1_200, Some(1_000));
        assert_eq!(over.remaining, Some(0), "never negative");
        let zero = Meter::new(0, Some(0));
        assert!(zero.exhausted);
        assert_eq!(zero.percent, Some(100));
        let unlimited = Meter::new(7, None);
        assert_eq!(unlimited.percent, None);
        assert_eq!(unlimited.remaining, None);
        assert!(!unlimited.exhausted);
        assert_eq!(unlimited.text, "7 requests (unlimited)");
    }

    #[test]
    fn plans_read_from_the_developer_service_are_described_in_words() {
        let list = json!({"items": [
            {"name": "free-trial", "title": "Free trial", "rate_per_second": 5, "burst": 10,
             "quota_per_day": 1000, "quota_per_month": null, "trial_days": 14, "self_service": true},
            {"name": "partner", "rate_per_second": 200, "burst": 400,
             "quota_per_day": null, "quota_per_month": 10000000, "self_service": false},
            "not a plan"
        ]});
        let plans = plans(&list);
        assert_eq!(plans.len(), 2, "a malformed entry is skipped");
        let trial = plans[0].view();
        assert_eq!(trial.rate, "5 requests/s, bursts of 10");
        assert_eq!(trial.day_quota, "1,000 requests");
        assert_eq!(trial.month_quota, "unlimited");
        assert_eq!(trial.term, "14-day trial");
        let partner = plans[1].view();
        assert_eq!(partner.title, "partner", "the name when there is no title");
        assert_eq!(partner.month_quota, "10,000,000 requests");
        assert_eq!(partner.term, "no expiry");
        assert!(!partner.self_service);
        assert_eq!(rate_text(1, 1), "1 request/s, bursts of 1");
    }

    #[test]
    fn usage_rows_join_each_key_with_its_plan() {
        let plans = plans(&json!({"items": [
            {"name": "standard", "title": "Standard", "rate_per_second": 50, "burst": 100,
             "quota_per_day": 100000, "quota_per_month": 2000000, "self_service": true}
        ]}));
        let usage = json!({"day": "2025-01-31", "month": "2025-01", "items": [
            {"key_id": "k1", "name": "shop", "prefix": "bzr_k1", "plan": "standard",
             "status": "active", "day_count": 50000, "month_count": 50000,
             "quota_per_day": 100000, "quota_per_month": 2000000},
            {"key_id": "k2", "name": "old", "prefix": "bzr_k2", "plan": "gone",
             "status": "revoked", "day_count": 3, "month_count": 9,
             "quota_per_day": null, "quota_per_month": null}
        ]});
        let rows = usage_rows(&usage, &plans);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].plan_title, "Standard");
        assert_eq!(
            rows[0].rate.as_deref(),
            Some("50 requests/s, bursts of 100")
        );
        assert_eq!(rows[0].day.percent, Some(50));
        assert_eq!(rows[0].month.percent, Some(2));
        assert_eq!(
            rows[1].plan_title, "gone",
            "an unconfigured plan shows its name"
        );
        assert_eq!(rows[1].rate, None);
        assert_eq!(rows[1].day.percent, None);
        assert_eq!(rows[1].month.used, 9);
        assert!(usage_rows(&json!(null), &plans).is_empty());
    }
}
