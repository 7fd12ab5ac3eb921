//! Rate limits and quotas.
//!
//! - An API key gets its plan's per-second rate (`rate_per_second`, with `burst`) and its day
//!   and month quotas (`quota_per_day`, `quota_per_month`, UTC calendar windows). Only accepted
//!   requests count toward a quota; a request refused for its rate does not.
//! - Anonymous traffic (no key, no token) gets `anonymous_rate_per_second` /
//!   `anonymous_burst` per client address.
//!
//! Two backends:
//! - `memory`: GCRA (`governor`), keyed by key id or address, and quota counters in this
//!   process; seeded from the developer service on first sight of a key. Each gateway instance
//!   enforces the limits on its own, so N instances allow up to N times the rate.
//! - `redis://...`: fixed windows in Redis, one Lua script per request (atomic INCR+EXPIRE
//!   and the quota check), so every gateway sharing the Redis shares one budget. The rate
//!   window is `ceil(burst / rate)` seconds (at least 1) allowing `rate x window` requests,
//!   which keeps the plan's average rate and lets a burst through at a window's start. If
//!   Redis cannot be reached the request is let through (fail open) and a warning logged.
//!
//! Answers carry the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-09), one list item per policy:
//! `RateLimit-Policy: "rate";q=20;w=2, "day";q=1000;w=86400, "month";q=20000;w=2678400` and
//! `RateLimit: "rate";r=19;t=1, "day";r=998;t=41230, "month";r=19998;t=1234567`
//! (`q` quota units per window of `w` seconds; `r` units remaining, `t` seconds until the
//! window restarts).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bazaar_kit::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::calendar;
use crate::error;
use crate::keys::{KeyRecord, Plan};
use crate::usage::Usage;

/// Rate limiters of API keys, one per plan shape `(rate, burst)`.
type PlanLimiters = Mutex<HashMap<(u32, u32), Arc<Keyed<String>>>>;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// One limit as published in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    /// Units allowed per window.
    pub quota: u64,
    /// Window length in seconds.
    pub window: u64,
    pub remaining: u64,
    /// Seconds until the window restarts.
    pub reset: u64,
}

/// Every limit that applied to a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateInfo(pub Vec<Window>);

impl RateInfo {
    /// `RateLimit-Policy` and `RateLimit` for these windows.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let policy = self
            .0
            .iter()
            .map(|w| format!("\"{}\";q={};w={}", w.name, w.quota, w.window))
            .collect::<Vec<_>>()
            .join(", ");
        let state = self
            .0
            .iter()
            .map(|w| format!("\"{}\";r={};t={}", w.name, w.remaining, w.reset))
            .collect::<Vec<_>>()
            .join(", ");
        [(RATELIMIT_POLICY, policy), (RATELIMIT, state)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, HeaderValue::from_str(&value).ok()?)))
            .collect()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// The plan's burst (at least its rate: a burst below the rate would lower the rate).
fn burst_of(rate: u32, burst: u32) -> u32 {
    burst.max(rate).max(1)
}

/// Length of the fixed rate window (Redis) and of the published rate window.
fn rate_window(rate: u32, burst: u32) -> u64 {
    u64::from(burst_of(rate, burst)).div_ceil(u64::from(rate.max(1)))
}

/// Counts of one key in this process (memory backend).
#[derive(Debug, Default)]
struct QuotaCount {
    day: String,
    day_count: u64,
    month: String,
    month_count: u64,
    seeded: bool,
}

impl QuotaCount {
    fn roll(&mut self, day: &str, month: &str) {
        if self.day != day {
            self.day = day.to_owned();
            self.day_count = 0;
        }
        if self.month != month {
            self.month = month.to_owned();
            self.month_count = 0;
        }
    }
}

struct Memory {
    /// One keyed limiter per (rate, burst) shape, keyed by key id.
    plans: PlanLimiters,
    quotas: Mutex<HashMap<String, QuotaCount>>,
    anonymous: Keyed<IpAddr>,
}

struct Redis {
    client: redis::Client,
    namespace: String,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// After a failed connect, no new attempt before this instant (requests pass meanwhile).
    quiet_until: Mutex<Option<Instant>>,
    seeded: Mutex<HashSet<String>>,
    key_script: redis::Script,
    rate_script: redis::Script,
}

/// Checks a key's plan and quotas: the quota first (read-only), then the rate, and only a
/// request passing both is counted. `{0,...}` accepted, `{1,...}` over the rate, `{2,...}` over
/// the day quota, `{3,...}` over the month quota; then the rate window's count and the day and
/// month counts.
const KEY_SCRIPT: &str = r"
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
local month = tonumber(redis.call('GET', KEYS[3]) or '0')
local day_quota = tonumber(ARGV[3])
local month_quota = tonumber(ARGV[4])
if day_quota >= 0 and day >= day_quota then return {2, 0, day, month} end
if month_quota >= 0 and month >= month_quota then return {3, 0, day, month} end
local used = 0
local limit = tonumber(ARGV[1])
if limit > 0 then
  used = redis.call('INCR', KEYS[1])
  if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  if used > limit then return {1, used, day, month} end
end
day = redis.call('INCR', KEYS[2])
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
month = redis.call('INCR', KEYS[3])
if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
return {0, used, day, month}
";

/// A fixed-window counter: the window's count after this request.
const RATE_SCRIPT: &str = r"
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
";

enum Backend {
    Memory(Memory),
    Redis(Redis),
}

/// The limits of one gateway.
pub struct Limits {
    backend: Backend,
    anonymous_rate: u32,
    anonymous_burst: u32,
    usage: Arc<Usage>,
}

impl Limits {
    /// `backend` is `memory` or a `redis://` URL (refused otherwise).
    pub fn new(
        backend: &str,
        namespace: &str,
        anonymous_rate: u32,
        anonymous_burst: u32,
        usage: Arc<Usage>,
    ) -> anyhow::Result<Self> {
        let backend = if backend.is_empty() || backend == "memory" {
            Backend::Memory(Memory {
                plans: Mutex::new(HashMap::new()),
                quotas: Mutex::new(HashMap::new()),
                anonymous: RateLimiter::keyed(
                    Quota::per_second(nonzero(anonymous_rate))
                        .allow_burst(nonzero(burst_of(anonymous_rate, anonymous_burst))),
                )
                .with_middleware::<StateInformationMiddleware>(),
            })
        } else if backend.starts_with("redis://") {
            let client = redis::Client::open(backend)
                .map_err(|e| anyhow::anyhow!("limits_backend: not a usable Redis URL ({e})"))?;
            Backend::Redis(Redis {
                client,
                namespace: namespace.to_owned(),
                connection: tokio::sync::OnceCell::new(),
                quiet_until: Mutex::new(None),
                seeded: Mutex::new(HashSet::new()),
                key_script: redis::Script::new(KEY_SCRIPT),
                rate_script: redis::Script::new(RATE_SCRIPT),
            })
        } else {
            anyhow::bail!("limits_backend: `{backend}` is neither `memory` nor a redis:// URL");
        };
        Ok(Self {
            backend,
            anonymous_rate,
            anonymous_burst,
            usage,
        })
    }

    /// Drops the in-memory state of keys and addresses not seen for a while.
    pub fn housekeeping(&self) {
        if let Backend::Memory(memory) = &self.backend {
            memory.anonymous.retain_recent();
            for limiter in memory.plans.lock().expect("plans lock").values() {
                limiter.retain_recent();
            }
        }
    }

    /// Admits one request of `key` (an active key) or refuses it with a 429 problem; counts
    /// an admitted one for usage.
    pub async fn check_key(&self, key: &KeyRecord) -> Result<RateInfo, ApiError> {
        let now = calendar::now_secs();
        let day = calendar::day(now);
        let outcome = match &self.backend {
            Backend::Memory(memory) => self.check_key_memory(memory, key, now, &day).await,
            Backend::Redis(redis) => self.check_key_redis(redis, key, now, &day).await,
        };
        if outcome.is_ok() {
            self.usage.record(&key.key_id, &day);
        }
        outcome
    }

    async fn check_key_memory(
        &self,
        memory: &Memory,
        key: &KeyRecord,
        now: u64,
        day: &str,
    ) -> Result<RateInfo, ApiError> {
        let plan = &key.plan;
        let has_quota = plan.quota_per_day.is_some() || plan.quota_per_month.is_some();
        let needs_seed = has_quota
            && !memory
                .quotas
                .lock()
                .expect("quota lock")
                .get(&key.key_id)
                .is_some_and(|q| q.seeded);
        let seed = if needs_seed {
            Some(self.usage.seed(&key.key_id).await.unwrap_or_default())
        } else {
            None
        };
        let month = calendar::month(now);
        let limiter = (plan.rate_per_second > 0).then(|| {
            let shape = (
                plan.rate_per_second,
                burst_of(plan.rate_per_second, plan.burst),
            );
            memory
                .plans
                .lock()
                .expect("plans lock")
                .entry(shape)
                .or_insert_with(|| {
                    Arc::new(
                        RateLimiter::keyed(
                            Quota::per_second(nonzero(shape.0)).allow_burst(nonzero(shape.1)),
                        )
                        .with_middleware::<StateInformationMiddleware>(),
                    )
                })
                .clone()
        });

        // The quota check, the rate check and the count happen under one lock so two
        // concurrent requests cannot both take the last unit.
        let mut quotas = memory.quotas.lock().expect("quota lock");
        let count = quotas.entry(key.key_id.clone()).or_default();
        count.roll(day, &month);
        if let Some(seed) = seed.filter(|_| !count.seeded) {
            count.seeded = true;
            if seed.day == day {
                count.day_count += seed.day_count;
            }
            if seed.month == month {
                count.month_count += seed.month_count;
            }
        }
        let mut info = RateInfo::default();
        let rate_window = rate_window(plan.rate_per_second, plan.burst);
        let burst = u64::from(burst_of(plan.rate_per_second, plan.burst));
        let quota_windows =
            |day_count: u64, month_count: u64| quota_windows(plan, now, day_count, month_count);
        if let Some(refusal) = quota_refusal(plan, now, count.day_count, count.month_count) {
            return Err(refusal(&quota_windows(count.day_count, count.month_count)));
        }
        if let Some(limiter) = &limiter {
            match limiter.check_key(&key.key_id) {
                Ok(snapshot) => {
                    let remaining = u64::from(snapshot.remaining_burst_capacity());
                    let reset = ((burst - remaining.min(burst)) as f64
                        / f64::from(plan.rate_per_second.max(1)))
                    .ceil() as u64;
                    info.0.push(Window {
                        name: "rate",
                        quota: burst,
                        window: rate_window,
                        remaining,
                        reset,
                    });
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                    let mut windows = quota_windows(count.day_count, count.month_count);
                    windows.0.insert(
                        0,
                        Window {
                            name: "rate",
                            quota: burst,
                            window: rate_window,
                            remaining: 0,
                            reset: retry_after,
                        },
                    );
                    return Err(error::rate_limited(retry_after, &windows));
                }
            }
        }
        count.day_count += 1;
        count.month_count += 1;
        info.0
            .extend(quota_windows(count.day_count, count.month_count).0);
        Ok(info)
    }

    async fn check_key_redis(
        &self,
        redis: &Redis,
        key: &KeyRecord,
        now: u64,
        day: &str,
    ) -> Result<RateInfo, ApiError> {
        let Some(mut connection) = redis.connection().await else {
            return Ok(RateInfo::default());
        };
        let plan = &key.plan;
        let month = calendar::month(now);
        let ns = &redis.namespace;
        let id = &key.key_id;
        let day_key = format!("{ns}:day:{id}:{day}");
        let month_key = format!("{ns}:month:{id}:{month}");
        let window = rate_window(plan.rate_per_second, plan.burst);
        let limit = u64::from(plan.rate_per_second) * window;
        let index = now / window;
        let rate_key = format!("{ns}:rate:{id}:{index}");
        let reset = ((index + 1) * window).saturating_sub(now).max(1);

        let has_quota = plan.quota_per_day.is_some() || plan.quota_per_month.is_some();
        let first_sight = has_quota && redis.seeded.lock().expect("seeded lock").insert(id.clone());
        if first_sight {
            if let Some(seed) = self.usage.seed(id).await {
                // Only where Redis has nothing yet: its own counts are newer than reports.
                let mut pipe = redis::pipe();
                if seed.day == day {
                    pipe.cmd("SET")
                        .arg(&day_key)
                        .arg(seed.day_count)
                        .arg("NX")
                        .arg("EX")
                        .arg(2 * 86_400)
                        .ignore();
                }
                if seed.month == month {
                    pipe.cmd("SET")
                        .arg(&month_key)
                        .arg(seed.month_count)
                        .arg("NX")
                        .arg("EX")
                        .arg(32 * 86_400)
                        .ignore();
                }
                if let Err(error) = pipe.query_async::<()>(&mut connection).await {
                    tracing::warn!(%error, "cannot seed quota counters in redis");
                }
            }
        }

        let signed =
            |quota: Option<u64>| quota.map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX));
        let answer: Result<(u8, u64, u64, u64), _> = redis
            .key_script
            .key(&rate_key)
            .key(&day_key)
            .key(&month_key)
            .arg(limit)
            .arg(window + 1)
            .arg(signed(plan.quota_per_day))
            .arg(signed(plan.quota_per_month))
            .arg(2 * 86_400)
            .arg(32 * 86_400)
            .invoke_async(&mut connection)
            .await;
        let (status, used, day_count, month_count) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, "redis limits unavailable; letting the request through");
                return Ok(RateInfo::default());
            }
        };
        let mut windows = quota_windows(plan, now, day_count, month_count);
        if plan.rate_per_second > 0 {
            windows.0.insert(
                0,
                Window {
                    name: "rate",
                    quota: limit,
                    window,
                    remaining: limit.saturating_sub(used),
                    reset,
                },
            );
        }
        match status {
            0 => Ok(windows),
            1 => Err(error::rate_limited(reset, &windows)),
            _ => match quota_refusal(plan, now, day_count, month_count) {
                Some(refusal) => Err(refusal(&windows)),
                None => Ok(windows),
            },
        }
    }

    /// Admits one anonymous request from `address` or refuses it with a 429 problem.
    pub async fn check_anonymous(&self, address: IpAddr) -> Result<(), ApiError> {
        let rate = self.anonymous_rate.max(1);
        let burst = u64::from(burst_of(rate, self.anonymous_burst));
        let window = rate_window(rate, self.anonymous_burst);
        match &self.backend {
            Backend::Memory(memory) => match memory.anonymous.check_key(&address) {
                Ok(_) => Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(memory.anonymous.clock().now());
                    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                    Err(error::rate_limited(
                        retry_after,
                        &RateInfo(vec![Window {
                            name: "anonymous",
                            quota: burst,
                            window,
                            remaining: 0,
                            reset: retry_after,
                        }]),
                    ))
                }
            },
            Backend::Redis(redis) => {
                let Some(mut connection) = redis.connection().await else {
                    return Ok(());
                };
                let now = calendar::now_secs();
                let index = now / window;
                let limit = u64::from(rate) * window;
                let key = format!("{}:anon:{address}:{index}", redis.namespace);
                let used: u64 = match redis
                    .rate_script
                    .key(&key)
                    .arg(window + 1)
                    .invoke_async(&mut connection)
                    .await
                {
                    Ok(used) => used,
                    Err(error) => {
                        tracing::warn!(%error, "redis limits unavailable; letting the request through");
                        return Ok(());
                    }
                };
                if used <= limit {
                    return Ok(());
                }
                let reset = ((index + 1) * window).saturating_sub(now).max(1);
                Err(error::rate_limited(
                    reset,
                    &RateInfo(vec![Window {
                        name: "anonymous",
                        quota: limit,
                        window,
                        remaining: 0,
                        reset,
                    }]),
                ))
            }
        }
    }
}

impl Redis {
    /// The shared connection, made on first use; `None` while Redis is unreachable (then
    /// retried at most once a second).
    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Some(connection.clone());
        }
        if self
            .quiet_until
            .lock()
            .expect("quiet lock")
            .is_some_and(|until| until > Instant::now())
        {
            return None;
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let made = self
            .connection
            .get_or_try_init(|| async {
                self.client.get_connection_manager_with_config(config).await
            })
            .await;
        match made {
            Ok(connection) => Some(connection.clone()),
            Err(error) => {
                tracing::warn!(%error, "cannot connect to the limits redis; letting requests through");
                *self.quiet_until.lock().expect("quiet lock") =
                    Some(Instant::now() + Duration::from_secs(1));
                None
            }
        }
    }
}

/// The day and month windows of a plan with its counts.
fn quota_windows(plan: &Plan, now: u64, day_count: u64, month_count: u64) -> RateInfo {
    let mut windows = Vec::new();
    if let Some(quota) = plan.quota_per_day {
        windows.push(Window {
            name: "day",
            quota,
            window: 86_400,
            remaining: quota.saturating_sub(day_count),
            reset: calendar::until_next_day(now),
        });
    }
    if let Some(quota) = plan.quota_per_month {
        windows.push(Window {
            name: "month",
            quota,
            window: calendar::month_length(now),
            remaining: quota.saturating_sub(month_count),
            reset: calendar::until_next_month(now),
        });
    }
    RateInfo(windows)
}

type Refusal = Box<dyn FnOnce(&RateInfo) -> ApiError>;

/// The 429 for a used-up quota, if one is.
fn quota_refusal(plan: &Plan, now: u64, day_count: u64, month_count: u64) -> Option<Refusal> {
    if plan.quota_per_day.is_some_and(|quota| day_count >= quota) {
        let reset = calendar::until_next_day(now);
        return Some(Box::new(move |info: &RateInfo| {
            error::quota_exceeded("day", reset, info)
        }));
    }
    if plan
        .quota_per_month
        .is_some_and(|quota| month_count >= quota)
    {
        let reset = calendar::until_next_month(now);
        return Some(Box::new(move |info: &RateInfo| {
            error::quota_exceeded("month", reset, info)
        }));
    }
    None
}
