//! The developer service's wire contract (request and response DTOs), its plans, the
//! validation of what clients send, and the UTC calendar helpers usage is counted by. Validation
//! lives here, next to the types, so every handler applies the same rules.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most count lines in one usage report: a gateway flushes far fewer; more is a bug or abuse.
pub const MAX_REPORT_COUNTS: usize = 10_000;
/// Longest gateway instance id, in characters.
pub const MAX_GATEWAY_CHARS: usize = 128;
/// Longest key id accepted in a usage report, in characters.
pub const MAX_KEY_ID_CHARS: usize = 64;
/// One day in milliseconds.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A plan: the limits the gateway enforces for every key on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Plan {
    /// Display name.
    #[schema(example = "Standard")]
    pub title: String,
    /// Sustained requests per second (token bucket refill rate).
    pub rate_per_second: u32,
    /// Requests allowed at once above the sustained rate (token bucket size).
    pub burst: u32,
    /// Requests per UTC day; `null`: unlimited.
    pub quota_per_day: Option<u64>,
    /// Requests per UTC calendar month; `null`: unlimited.
    pub quota_per_month: Option<u64>,
    /// Keys on this plan expire this many days after creation; `null`: never.
    pub trial_days: Option<u32>,
    /// Whether a developer may issue a key on it; otherwise only an admin can.
    pub self_service: bool,
}

/// The built-in plans.
pub fn default_plans() -> BTreeMap<String, Plan> {
    BTreeMap::from([
        (
            "free-trial".to_owned(),
            Plan {
                title: "Free trial".to_owned(),
                rate_per_second: 5,
                burst: 10,
                quota_per_day: Some(1_000),
                quota_per_month: None,
                trial_days: Some(14),
                self_service: true,
            },
        ),
        (
            "standard".to_owned(),
            Plan {
                title: "Standard".to_owned(),
                rate_per_second: 50,
                burst: 100,
                quota_per_day: Some(100_000),
                quota_per_month: Some(2_000_000),
                trial_days: None,
                self_service: true,
            },
        ),
        (
            "partner".to_owned(),
            Plan {
                title: "Partner".to_owned(),
                rate_per_second: 200,
                burst: 400,
                quota_per_day: None,
                quota_per_month: Some(10_000_000),
                trial_days: None,
                self_service: false,
            },
        ),
    ])
}

/// Refuses plan tables the gateway could not enforce, at start-up rather than at a lookup.
pub fn validate_plans(plans: &BTreeMap<String, Plan>) -> anyhow::Result<()> {
    for (name, plan) in plans {
        if name.is_empty() || name.len() > 64 {
            anyhow::bail!("plan name `{name}` must be 1 to 64 characters");
        }
        if plan.rate_per_second == 0 || plan.burst == 0 {
            anyhow::bail!("plan `{name}`: rate_per_second and burst must be at least 1");
        }
        if plan.trial_days == Some(0) {
            anyhow::bail!("plan `{name}`: trial_days must be at least 1 (or absent)");
        }
    }
    Ok(())
}

/// A plan as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PlanEntry {
    /// The name keys refer to it by.
    #[schema(example = "standard")]
    pub name: String,
    #[serde(flatten)]
    pub plan: Plan,
}

/// Every plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PlanList {
    pub items: Vec<PlanEntry>,
}

/// What a developer sends to create a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NewKeyInput {
    /// 1 to 64 characters, to tell keys apart.
    #[schema(example = "my storefront")]
    pub name: String,
    /// A plan name from `GET /api/v1/developer/plans`.
    #[schema(example = "free-trial")]
    pub plan: String,
}

impl NewKeyInput {
    /// Checks the name (the plan is checked against the configured plans by the handler).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.name = self.name.trim().to_owned();
        let chars = self.name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(ApiError::invalid(
                "name",
                format!("the name must be 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "name",
                "the name must not contain control characters",
            ));
        }
        Ok(())
    }
}

/// A key's state, computed at read time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

/// An API key as its owner sees it: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ApiKey {
    #[schema(example = "Xq3b9TzK0aLm")]
    pub id: String,
    pub name: String,
    pub plan: String,
    /// `bzr_<id>`: how the key starts, to recognise it.
    #[schema(example = "bzr_Xq3b9TzK0aLm")]
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; `null`: never expires.
    pub expires_at: Option<String>,
    pub status: KeyStatus,
}

/// The answer to creating a key: the only time the key is ever shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    pub plan: String,
    /// The full key. Shown once: store it now, it cannot be retrieved again.
    #[schema(example = "bzr_Xq3b9TzK0aLm_4fGh7JkL9mNpQrStUvWxYz0123456789Ab")]
    pub key: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub status: KeyStatus,
}

/// The caller's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

/// One key's usage against its plan's quotas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub owner: String,
    pub name: String,
    pub prefix: String,
    pub plan: String,
    pub status: KeyStatus,
    /// Requests counted today (UTC).
    pub day_count: u64,
    /// Requests counted this calendar month (UTC).
    pub month_count: u64,
    /// `null`: unlimited (or the plan is no longer configured).
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
    /// What is left today; `null`: unlimited.
    pub day_remaining: Option<u64>,
    /// What is left this month; `null`: unlimited.
    pub month_remaining: Option<u64>,
}

/// Usage of several keys for the current day and month.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageList {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub items: Vec<KeyUsage>,
}

/// What the gateway sends to look a key up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LookupInput {
    /// The full key as the client presented it.
    pub key: String,
}

/// What the gateway needs to enforce a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct KeyLookup {
    pub key_id: String,
    pub owner: String,
    pub name: String,
    pub status: KeyStatus,
    pub plan_name: String,
    pub plan: Plan,
    /// RFC 3339; `null`: never expires.
    pub expires_at: Option<String>,
}

/// One line of a usage report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct UsageCount {
    pub key_id: String,
    /// `YYYY-MM-DD` (UTC).
    #[schema(example = "2025-01-31")]
    pub day: String,
    /// Requests counted since the gateway's previous report.
    pub count: u64,
}

/// A gateway's usage report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageReport {
    /// Chosen by the gateway per report and kept across its retries: a report id seen before
    /// changes nothing.
    #[schema(value_type = String, example = "0190c2a4-7f3e-7c1a-9a52-6b1f0e2d3c4b")]
    pub report_id: uuid::Uuid,
    /// The reporting gateway instance.
    pub gateway: String,
    pub counts: Vec<UsageCount>,
}

impl UsageReport {
    /// Checks every line, naming the one at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        let gateway_chars = self.gateway.chars().count();
        if gateway_chars == 0 || gateway_chars > MAX_GATEWAY_CHARS {
            return Err(ApiError::invalid(
                "gateway",
                format!("the gateway id must be 1 to {MAX_GATEWAY_CHARS} characters"),
            ));
        }
        if self.counts.len() > MAX_REPORT_COUNTS {
            return Err(ApiError::invalid(
                "counts",
                format!("a report holds at most {MAX_REPORT_COUNTS} counts"),
            ));
        }
        for (i, line) in self.counts.iter().enumerate() {
            if line.key_id.is_empty() || line.key_id.chars().count() > MAX_KEY_ID_CHARS {
                return Err(ApiError::invalid(
                    format!("counts[{i}].key_id"),
                    format!("a key id is 1 to {MAX_KEY_ID_CHARS} characters"),
                ));
            }
            if !is_day(&line.day) {
                return Err(ApiError::invalid(
                    format!("counts[{i}].day"),
                    "the day must be a calendar date YYYY-MM-DD",
                ));
            }
            // Stored as BIGINT; anything near this is a corrupt counter, not traffic.
            if line.count > i64::MAX as u64 / 2 {
                return Err(ApiError::invalid(
                    format!("counts[{i}].count"),
                    "the count is out of range",
                ));
            }
        }
        Ok(())
    }
}

/// One key's counters, for a gateway seeding its own after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct KeyCounters {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub day_count: u64,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub month_count: u64,
}

/// RFC 3339 (UTC, seconds) for Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// The UTC day (`YYYY-MM-DD`) of Unix milliseconds.
pub fn day_of(ms: i64) -> String {
    rfc3339(ms)[..10].to_owned()
}

/// The UTC month (`YYYY-MM`) of a day.
pub fn month_of(day: &str) -> &str {
    day.get(..7).unwrap_or(day)
}

/// Whether `text` is a real calendar date written `YYYY-MM-DD` (so `2025-02-30` is not).
pub fn is_day(text: &str) -> bool {
    text.len() == 10
        && text.is_ascii()
        && humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
            .is_ok_and(|time| humantime::format_rfc3339_seconds(time).to_string()[..10] == *text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_helpers() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(DAY_MS * 365 - 1), "1970-12-31");
        assert_eq!(month_of("2025-03-09"), "2025-03");
        assert!(is_day("2024-02-29"));
        assert!(!is_day("2025-02-29"));
        assert!(!is_day("2025-1-01"));
        assert!(!is_day("2025-01-01T00"));
        assert!(!is_day("yesterday!"));
    }

    #[test]
    fn default_plans_are_valid() {
        let plans = default_plans();
        validate_plans(&plans).expect("valid");
        assert!(!plans["partner"].self_service);
        assert_eq!(plans["free-trial"].trial_days, Some(14));
    }
}

/// A key as stored (the secret's hash never leaves the repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub plan: String,
    pub prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub created_by: String,
}

impl StoredKey {
    /// The key's status at `now_ms`: revocation wins over expiry, because it is what someone
    /// decided and it is permanent.
    pub fn status(&self, now_ms: i64) -> KeyStatus {
        if self.revoked_at_ms.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at_ms.is_some_and(|at| at <= now_ms) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn to_api(&self, now_ms: i64) -> ApiKey {
        ApiKey {
            id: self.id.clone(),
            name: self.name.clone(),
            plan: self.plan.clone(),
            prefix: self.prefix.clone(),
            created_at: rfc3339(self.created_at_ms),
            expires_at: self.expires_at_ms.map(rfc3339),
            status: self.status(now_ms),
        }
    }
}
