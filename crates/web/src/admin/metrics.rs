//! The admin console's view of every instance's metrics: a background task scrapes each
//! registered instance's `/metrics` (Prometheus text) every few seconds and keeps its last few
//! samples; request rate, error rate and latency percentiles are computed from the difference
//! of two samples (counter deltas over the elapsed time; percentiles by linear interpolation
//! within the buckets of the histogram delta), so they describe the last minute, not the
//! process's whole life.
//!
//! The metric names are the kit's (`bazaar_kit::metrics`: `bazaar_http_requests_total{route,
//! method,status}`, `bazaar_http_request_duration_seconds{route,method}`) and messaging's
//! (`bazaar_consumer_lag{group,source}`, `bazaar_outbox_unpublished`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bazaar_discovery::Discovery;
use serde::Serialize;
use tokio::time::Instant;

/// How often every instance is scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per instance: a little more than a minute at [`SCRAPE_INTERVAL`].
const KEPT_SAMPLES: usize = 14;
/// The window the console reports on.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Longest wait for one instance's `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest exposition accepted from an instance.
const MAX_EXPOSITION_BYTES: usize = 4 * 1024 * 1024;
/// The console's own scrapes show up under this route; they are not the service's traffic.
const SCRAPE_ROUTE: &str = "/metrics";

const REQUESTS: &str = "bazaar_http_requests_total";
const LATENCY_BUCKET: &str = "bazaar_http_request_duration_seconds_bucket";
const CONSUMER_LAG: &str = "bazaar_consumer_lag";
const OUTBOX_UNPUBLISHED: &str = "bazaar_outbox_unpublished";

// ---------------------------------------------------------------------------------------------
// Parsing the text exposition

/// One line of an exposition: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A line that is not a sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses the Prometheus / OpenMetrics text format: `# ...` lines are skipped, every other
/// non-empty line is `name{label="value",...} value [timestamp]`.
pub fn parse_exposition(text: &str) -> Result<Vec<Series>, ParseError> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: &str| ParseError {
            line: index + 1,
            reason: reason.to_owned(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| error("a sample needs a value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(error("a sample needs a metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            let (parsed, remainder) = parse_labels(after_brace).map_err(|r| error(&r))?;
            labels = parsed;
            rest = remainder;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| error("a sample needs a value"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| error(&format!("`{value}` is not a number")))?;
        out.push(Series {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// A series' labels, in the order written.
type Labels = Vec<(String, String)>;

/// Parses `key="value",...}` and returns the labels and what follows the closing brace.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label needs `=`")?;
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return Err("an unterminated label value".to_owned()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value".to_owned()),
            }
        };
        rest = &rest[end + 1..];
        labels.push((key, value));
    }
}

// ---------------------------------------------------------------------------------------------
// What one scrape says

/// A histogram's cumulative bucket counts, keyed by the upper bound's bits (for non-negative
/// floats, including +Inf, the bit pattern orders like the number).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(BTreeMap<u64, f64>);

impl Buckets {
    pub fn from_pairs(pairs: &[(f64, f64)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|&(le, count)| (le.to_bits(), count))
                .collect(),
        )
    }

    fn insert(&mut self, le: f64, count: f64) {
        self.0.insert(le.to_bits(), count);
    }

    /// `(upper bound, cumulative count)` in increasing bound order.
    pub fn pairs(&self) -> Vec<(f64, f64)> {
        self.0
            .iter()
            .map(|(&bits, &count)| (f64::from_bits(bits), count))
            .collect()
    }

    /// Observations in the histogram (the `+Inf` bucket, or the largest one).
    pub fn total(&self) -> f64 {
        self.0.values().next_back().copied().unwrap_or(0.0)
    }

    /// `self - older`, bucket by bucket; a bucket that went down means the process restarted,
    /// and then everything it has counted since is the delta.
    fn delta(&self, older: Option<&Buckets>) -> Buckets {
        let Some(older) = older else {
            return self.clone();
        };
        let mut out = BTreeMap::new();
        for (bits, &count) in &self.0 {
            let before = older.0.get(bits).copied().unwrap_or(0.0);
            if count < before {
                return self.clone();
            }
            out.insert(*bits, count - before);
        }
        Buckets(out)
    }

    fn add(&mut self, other: &Buckets) {
        for (bits, count) in &other.0 {
            *self.0.entry(*bits).or_insert(0.0) += count;
        }
    }

    /// The `q` quantile (0..=1) of the observations, interpolated linearly within the bucket
    /// it falls in (as Prometheus' `histogram_quantile`): `None` without observations. A rank
    /// in the `+Inf` bucket answers the largest finite bound, the most that can be said.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let pairs = self.pairs();
        let total = pairs.last().map(|&(_, count)| count)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower_bound = 0.0;
        let mut lower_count = 0.0;
        for &(le, count) in &pairs {
            if count >= rank && count > lower_count {
                if le.is_infinite() {
                    return Some(lower_bound);
                }
                let share = (rank - lower_count) / (count - lower_count);
                return Some(lower_bound + (le - lower_bound) * share);
            }
            if le.is_finite() {
                lower_bound = le;
            }
            lower_count = count;
        }
        Some(lower_bound)
    }
}

/// (route, method).
type RouteKey = (String, String);

/// The parts of one instance's exposition the console uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Requests by (route, method, status).
    pub requests: BTreeMap<(String, String, u16), f64>,
    /// Latency histogram by (route, method).
    pub latency: BTreeMap<RouteKey, Buckets>,
    /// Consumer lag by (group, source).
    pub lag: BTreeMap<(String, String), f64>,
    /// Events not yet handed to the broker (nats transport only).
    pub outbox_unpublished: Option<f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Ok(Self::from_series(&parse_exposition(text)?))
    }

    pub fn from_series(series: &[Series]) -> Self {
        let mut scrape = Scrape::default();
        for s in series {
            let route = || s.label("route").unwrap_or("unmatched").to_owned();
            let method = || s.label("method").unwrap_or("").to_owned();
            match s.name.as_str() {
                REQUESTS => {
                    let status = s.label("status").and_then(|v| v.parse().ok()).unwrap_or(0);
                    scrape.requests.insert((route(), method(), status), s.value);
                }
                LATENCY_BUCKET => {
                    let Some(le) = s.label("le").and_then(|v| v.parse::<f64>().ok()) else {
                        continue;
                    };
                    if le.is_sign_negative() || le.is_nan() {
                        continue;
                    }
                    scrape
                        .latency
                        .entry((route(), method()))
                        .or_default()
                        .insert(le, s.value);
                }
                CONSUMER_LAG => {
                    let group = s.label("group").unwrap_or("").to_owned();
                    let source = s.label("source").unwrap_or("").to_owned();
                    scrape.lag.insert((group, source), s.value);
                }
                OUTBOX_UNPUBLISHED => scrape.outbox_unpublished = Some(s.value),
                _ => {}
            }
        }
        scrape
    }
}

// ---------------------------------------------------------------------------------------------
// Rates over a window

/// One route's traffic in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteWindow {
    pub requests: f64,
    pub errors: f64,
    pub latency: Buckets,
}

/// What happened between two scrapes (of one instance, or summed over several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The longest of the summed windows, in seconds.
    pub seconds: f64,
    /// Requests per second (summed over instances, each over its own window).
    pub requests_per_second: f64,
    pub requests: f64,
    /// Requests answered with a 5xx status.
    pub errors: f64,
    pub latency: Buckets,
    pub routes: BTreeMap<RouteKey, RouteWindow>,
    /// 5xx answers by (route, method, status).
    pub errors_by: BTreeMap<(String, String, u16), f64>,
}

/// `newer - older` for a counter; a counter that went down was reset by a restart, and then
/// its whole new value is what was counted since.
fn counter_delta(newer: f64, older: Option<f64>) -> f64 {
    match older {
        Some(older) if newer >= older => newer - older,
        _ => newer,
    }
}

impl Window {
    /// The traffic between `older` and `newer`, `seconds` apart. The console's own scrapes of
    /// `/metrics` are left out.
    pub fn between(older: &Scrape, newer: &Scrape, seconds: f64) -> Window {
        let mut window = Window {
            seconds,
            ..Window::default()
        };
        for (key, &value) in &newer.requests {
            let (route, method, status) = key;
            if route == SCRAPE_ROUTE {
                continue;
            }
            let delta = counter_delta(value, older.requests.get(key).copied());
            if delta <= 0.0 {
                continue;
            }
            let entry = window
                .routes
                .entry((route.clone(), method.clone()))
                .or_default();
            entry.requests += delta;
            window.requests += delta;
            if *status >= 500 {
                entry.errors += delta;
                window.errors += delta;
                *window.errors_by.entry(key.clone()).or_insert(0.0) += delta;
            }
        }
        for (key, buckets) in &newer.latency {
            if key.0 == SCRAPE_ROUTE {
                continue;
            }
            let delta = buckets.delta(older.latency.get(key));
            if delta.total() <= 0.0 {
                continue;
            }
            window.latency.add(&delta);
            window
                .routes
                .entry(key.clone())
                .or_default()
                .latency
                .add(&delta);
        }
        if seconds > 0.0 {
            window.requests_per_second = window.requests / seconds;
        }
        window
    }

    /// Adds another instance's window.
    pub fn add(&mut self, other: &Window) {
        self.seconds = self.seconds.max(other.seconds);
        self.requests_per_second += other.requests_per_second;
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.add(&other.latency);
        for (key, route) in &other.routes {
            let entry = self.routes.entry(key.clone()).or_default();
            entry.requests += route.requests;
            entry.errors += route.errors;
            entry.latency.add(&route.latency);
        }
        for (key, count) in &other.errors_by {
            *self.errors_by.entry(key.clone()).or_insert(0.0) += count;
        }
    }

    /// The share of requests answered with a 5xx, `None` without requests.
    pub fn error_share(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }
}

// ---------------------------------------------------------------------------------------------
// The sampler

/// One scrape of one instance.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    scrape: Scrape,
}

/// What the sampler knows about one instance.
#[derive(Debug, Clone)]
struct History {
    service: String,
    samples: VecDeque<Sample>,
    /// Why the last scrape failed, if it did.
    last_error: Option<String>,
    last_attempt: Option<Instant>,
}

/// Whether an instance's `/metrics` answered the last time it was asked.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScrapeHealth {
    /// `ok`, `failed`, or `pending` (not asked yet).
    pub state: &'static str,
    pub error: Option<String>,
    /// Seconds since the last attempt.
    pub age_secs: Option<u64>,
}

/// Consumer lag as one instance reported it last.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LagRow {
    pub instance: String,
    pub group: String,
    pub source: String,
    pub lag: f64,
}

/// A service's metrics over the last minute, ready for a page.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ServiceMetrics {
    /// Instances with at least two samples (so a window).
    pub instances_measured: usize,
    /// Instances the sampler has seen at all.
    pub instances_sampled: usize,
    /// Length of the window reported, in seconds (0 without one).
    pub window_secs: f64,
    pub requests: f64,
    /// `None` without a window.
    pub requests_per_second: Option<f64>,
    /// Share of 5xx answers, `None` without requests.
    pub error_share: Option<f64>,
    /// Seconds; `None` without requests.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub routes: Vec<RouteRow>,
    pub recent_errors: Vec<ErrorRow>,
    pub lag: Vec<LagRow>,
    /// Summed over instances, when any reports it.
    pub outbox_unpublished: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteRow {
    pub route: String,
    pub method: String,
    pub requests: f64,
    pub requests_per_second: f64,
    pub errors: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorRow {
    pub route: String,
    pub method: String,
    pub status: u16,
    pub count: f64,
}

impl ServiceMetrics {
    /// Turns a (summed) window into rows for the page.
    pub fn from_window(window: &Window) -> Self {
        let mut routes: Vec<RouteRow> = window
            .routes
            .iter()
            .filter(|(_, r)| r.requests > 0.0 || r.latency.total() > 0.0)
            .map(|((route, method), r)| RouteRow {
                route: route.clone(),
                method: method.clone(),
                requests: r.requests,
                requests_per_second: if window.seconds > 0.0 {
                    r.requests / window.seconds
                } else {
                    0.0
                },
                errors: r.errors,
                p50: r.latency.quantile(0.5),
                p99: r.latency.quantile(0.99),
            })
            .collect();
        routes.sort_by(|a, b| b.requests.total_cmp(&a.requests));
        let mut recent_errors: Vec<ErrorRow> = window
            .errors_by
            .iter()
            .map(|((route, method, status), &count)| ErrorRow {
                route: route.clone(),
                method: method.clone(),
                status: *status,
                count,
            })
            .collect();
        recent_errors.sort_by(|a, b| b.count.total_cmp(&a.count));
        ServiceMetrics {
            window_secs: window.seconds,
            requests: window.requests,
            requests_per_second: Some(window.requests_per_second),
            error_share: window.error_share(),
            p50: window.latency.quantile(0.5),
            p99: window.latency.quantile(0.99),
            routes,
            recent_errors,
            ..ServiceMetrics::default()
        }
    }
}

/// Periodic samples of every instance's `/metrics`, from which rates and latency percentiles
/// are computed for the console. Cheap to clone.
#[derive(Clone)]
pub struct MetricsSampler {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    http: reqwest::Client,
    /// By instance id.
    instances: RwLock<HashMap<String, History>>,
}

impl MetricsSampler {
    /// Starts scraping in the background; the task ends when every handle is dropped.
    pub fn start(discovery: Discovery) -> Self {
        let sampler = Self::new(discovery);
        let weak = Arc::downgrade(&sampler.inner);
        tokio::spawn(run(weak));
        sampler
    }

    /// A sampler that scrapes only when asked ([`MetricsSampler::sample_once`]).
    pub fn new(discovery: Discovery) -> Self {
        let http = reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                discovery,
                http,
                instances: RwLock::default(),
            }),
        }
    }

    /// Scrapes every registered instance once (concurrently), and forgets instances the
    /// registry no longer lists.
    pub async fn sample_once(&self) {
        let snapshot = self.inner.discovery.snapshot();
        let targets: Vec<(String, String, String)> = snapshot
            .services
            .values()
            .flatten()
            .map(|i| (i.id.clone(), i.service.clone(), i.address.clone()))
            .collect();
        let results = futures::future::join_all(targets.iter().map(|(_, _, address)| async {
            let result = scrape(&self.inner.http, address).await;
            (result, Instant::now())
        }))
        .await;
        let mut instances = self.inner.instances.write().expect("sampler lock");
        instances.retain(|id, _| targets.iter().any(|(known, _, _)| known == id));
        for ((id, service, _), (result, at)) in targets.into_iter().zip(results) {
            let history = instances.entry(id).or_insert_with(|| History {
                service,
                samples: VecDeque::new(),
                last_error: None,
                last_attempt: None,
            });
            history.last_attempt = Some(at);
            match result {
                Ok(scrape) => {
                    history.last_error = None;
                    if history.samples.len() == KEPT_SAMPLES {
                        history.samples.pop_front();
                    }
                    history.samples.push_back(Sample { at, scrape });
                }
                Err(error) => history.last_error = Some(error),
            }
        }
    }

    /// Whether instance `id`'s metrics answered last time.
    pub fn health(&self, id: &str) -> ScrapeHealth {
        let instances = self.inner.instances.read().expect("sampler lock");
        match instances.get(id) {
            Some(History {
                last_attempt: Some(at),
                last_error,
                ..
            }) => ScrapeHealth {
                state: if last_error.is_some() { "failed" } else { "ok" },
                error: last_error.clone(),
                age_secs: Some(at.elapsed().as_secs()),
            },
            _ => ScrapeHealth {
                state: "pending",
                error: None,
                age_secs: None,
            },
        }
    }

    /// `service`'s metrics over the last minute, summed over its instances.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let instances = self.inner.instances.read().expect("sampler lock");
        let mut total = Window::default();
        let mut measured = 0;
        let mut sampled = 0;
        let mut lag = Vec::new();
        let mut unpublished: Option<f64> = None;
        let mut ids: Vec<&String> = instances
            .iter()
            .filter(|(_, h)| h.service == service)
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        for id in ids {
            let history = &instances[id];
            sampled += 1;
            let Some(newest) = history.samples.back() else {
                continue;
            };
            for ((group, source), value) in &newest.scrape.lag {
                lag.push(LagRow {
                    instance: id.clone(),
                    group: group.clone(),
                    source: source.clone(),
                    lag: *value,
                });
            }
            if let Some(value) = newest.scrape.outbox_unpublished {
                *unpublished.get_or_insert(0.0) += value;
            }
            if let Some(window) = last_minute(&history.samples) {
                measured += 1;
                total.add(&window);
            }
        }
        let mut metrics = if measured > 0 {
            ServiceMetrics::from_window(&total)
        } else {
            ServiceMetrics::default()
        };
        metrics.instances_measured = measured;
        metrics.instances_sampled = sampled;
        metrics.lag = lag;
        metrics.outbox_unpublished = unpublished;
        metrics
    }
}

/// The window from the oldest sample at most a minute (and half an interval of slack) before
/// the newest one, to the newest: `None` with fewer than two samples.
fn last_minute(samples: &VecDeque<Sample>) -> Option<Window> {
    let newest = samples.back()?;
    let limit = WINDOW + SCRAPE_INTERVAL / 2;
    let oldest = samples
        .iter()
        .find(|s| newest.at.duration_since(s.at) <= limit)?;
    let seconds = newest.at.duration_since(oldest.at).as_secs_f64();
    (seconds > 0.0).then(|| Window::between(&oldest.scrape, &newest.scrape, seconds))
}

async fn scrape(http: &reqwest::Client, address: &str) -> Result<Scrape, String> {
    let url = format!("{}/metrics", address.trim_end_matches('/'));
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("/metrics answered {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_EXPOSITION_BYTES as u64)
    {
        return Err("/metrics answered too much".to_owned());
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("reading /metrics failed: {e}"))?;
    if bytes.len() > MAX_EXPOSITION_BYTES {
        return Err("/metrics answered too much".to_owned());
    }
    Scrape::parse(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("unreadable /metrics: {e}"))
}

async fn run(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(SCRAPE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        MetricsSampler { inner }.sample_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a kit service exposes (prometheus-client's OpenMetrics text), 10 s apart.
    const OLDER: &str = r#"# HELP bazaar_http_requests HTTP requests handled, by route, method and status.
# TYPE bazaar_http_requests counter
bazaar_http_requests_total{route="/api/v1/products",method="GET",status="200"} 100
bazaar_http_requests_total{route="/api/v1/products",method="POST",status="500"} 2
bazaar_http_requests_total{route="/metrics",method="GET",status="200"} 7
# TYPE bazaar_http_request_duration_seconds histogram
bazaar_http_request_duration_seconds_sum{route="/api/v1/products",method="GET"} 1.5
bazaar_http_request_duration_seconds_count{route="/api/v1/products",method="GET"} 100
bazaar_http_request_duration_seconds_bucket{le="0.01",route="/api/v1/products",method="GET"} 50
bazaar_http_request_duration_seconds_bucket{le="0.1",route="/api/v1/products",method="GET"} 90
bazaar_http_request_duration_seconds_bucket{le="1.0",route="/api/v1/products",method="GET"} 100
bazaar_http_request_duration_seconds_bucket{le="+Inf",route="/api/v1/products",method="GET"} 100
bazaar_http_request_duration_seconds_bucket{le="0.01",route="/metrics",method="GET"} 7
bazaar_http_request_duration_seconds_bucket{le="+Inf",route="/metrics",method="GET"} 7
# TYPE bazaar_consumer_lag gauge
bazaar_consumer_lag{group="notifications",source="orders"} 4
# EOF
"#;

    /// 10 s later: +200 GETs (of which 100 took ≤ 10 ms, 60 took 10-100 ms, 40 took
    /// 100 ms-1 s), +20 POSTs answered 500, +5 answered 503 on a new route, and 2 more scrapes.
    const NEWER: &str = r#"# TYPE bazaar_http_requests counter
bazaar_http_requests_total{route="/api/v1/products",method="GET",status="200"} 300
bazaar_http_requests_total{route="/api/v1/products",method="POST",status="500"} 22
bazaar_http_requests_total{route="/api/v1/orders/{id}",method="GET",status="503"} 5
bazaar_http_requests_total{route="/metrics",method="GET",status="200"} 9
# TYPE bazaar_http_request_duration_seconds histogram
bazaar_http_request_duration_seconds_bucket{le="0.01",route="/api/v1/products",method="GET"} 150
bazaar_http_request_duration_seconds_bucket{le="0.1",route="/api/v1/products",method="GET"} 250
bazaar_http_request_duration_seconds_bucket{le="1.0",route="/api/v1/products",method="GET"} 300
bazaar_http_request_duration_seconds_bucket{le="+Inf",route="/api/v1/products",method="GET"} 300
bazaar_http_request_duration_seconds_bucket{le="0.01",route="/metrics",method="GET"} 9
bazaar_http_request_duration_seconds_bucket{le="+Inf",route="/metrics",method="GET"} 9
bazaar_consumer_lag{group="notifications",source="orders"} 1
bazaar_outbox_unpublished 3
# EOF
"#;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-9
    }

    #[test]
    fn the_text_format_is_parsed_with_labels_escapes_and_special_values() {
        let text = "# HELP x y\n\
            a_total 3\n\
            b{k=\"v\",path=\"/a\\\"b\\\\c\\nd\"} 1.5e-3 1700000000\n\
            c_bucket{le=\"+Inf\"} +Inf\n\
            \n\
            d{} NaN\n";
        let series = parse_exposition(text).expect("parses");
        assert_eq!(series.len(), 4);
        assert_eq!(series[0].name, "a_total");
        assert!(series[0].labels.is_empty());
        assert!(close(series[0].value, 3.0));
        assert_eq!(series[1].label("k"), Some("v"));
        assert_eq!(series[1].label("path"), Some("/a\"b\\c\nd"));
        assert!(close(series[1].value, 0.0015), "the timestamp is ignored");
        assert_eq!(series[2].label("le"), Some("+Inf"));
        assert!(series[2].value.is_infinite());
        assert!(series[3].value.is_nan());

        let error = parse_exposition("ok 1\nbroken{le=\"1\" 2\n").expect_err("unterminated");
        assert_eq!(error.line, 2, "{error}");
        let error = parse_exposition("x notanumber\n").expect_err("bad value");
        assert_eq!(error.line, 1);
        assert!(error.reason.contains("notanumber"), "{error}");
    }

    #[test]
    fn a_scrape_keeps_requests_latency_and_lag() {
        let scrape = Scrape::parse(OLDER).expect("parses");
        assert_eq!(
            scrape
                .requests
                .get(&("/api/v1/products".into(), "POST".into(), 500)),
            Some(&2.0)
        );
        let buckets = &scrape.latency[&("/api/v1/products".to_owned(), "GET".to_owned())];
        assert_eq!(
            buckets.pairs(),
            vec![
                (0.01, 50.0),
                (0.1, 90.0),
                (1.0, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert_eq!(scrape.lag[&("notifications".into(), "orders".into())], 4.0);
        assert_eq!(scrape.outbox_unpublished, None);
    }

    #[test]
    fn rates_and_errors_come_from_counter_deltas_over_the_elapsed_time() {
        let older = Scrape::parse(OLDER).expect("older");
        let newer = Scrape::parse(NEWER).expect("newer");
        let window = Window::between(&older, &newer, 10.0);
        // 200 GET + 20 POST 500 + 5 GET 503; the console's own /metrics scrapes left out.
        assert!(close(window.requests, 225.0), "{}", window.requests);
        assert!(close(window.requests_per_second, 22.5));
        assert!(close(window.errors, 25.0));
        assert!(close(window.error_share().expect("share"), 25.0 / 225.0));
        assert!(!window
            .routes
            .contains_key(&("/metrics".into(), "GET".into())));

        let metrics = ServiceMetrics::from_window(&window);
        let errors: Vec<(&str, u16, f64)> = metrics
            .recent_errors
            .iter()
            .map(|e| (e.route.as_str(), e.status, e.count))
            .collect();
        assert_eq!(
            errors,
            vec![
                ("/api/v1/products", 500, 20.0),
                ("/api/v1/orders/{id}", 503, 5.0)
            ],
            "routes whose 5xx grew, most first"
        );
        let get = metrics
            .routes
            .iter()
            .find(|r| r.route == "/api/v1/products" && r.method == "GET")
            .expect("GET row");
        assert!(close(get.requests_per_second, 20.0));
        assert!(close(get.errors, 0.0));
    }

    #[test]
    fn percentiles_interpolate_within_the_buckets_of_the_delta() {
        let older = Scrape::parse(OLDER).expect("older");
        let newer = Scrape::parse(NEWER).expect("newer");
        let window = Window::between(&older, &newer, 10.0);
        // The delta: ≤10ms 100, ≤100ms 160, ≤1s 200, +Inf 200 (the older 100 are not in it).
        assert_eq!(
            window.latency.pairs(),
            vec![
                (0.01, 100.0),
                (0.1, 160.0),
                (1.0, 200.0),
                (f64::INFINITY, 200.0)
            ]
        );
        // p50: rank 100 is the top of the first bucket: 0 + 0.01 × 100/100.
        let p50 = window.latency.quantile(0.5).expect("p50");
        assert!(close(p50, 0.01), "{p50}");
        // p99: rank 198 in (0.1, 1.0], 38 of its 40: 0.1 + 0.9 × 38/40 = 0.955.
        let p99 = window.latency.quantile(0.99).expect("p99");
        assert!(close(p99, 0.955), "{p99}");
        // p60: rank 120 in (0.01, 0.1], 20 of its 60: 0.01 + 0.09 × 20/60 = 0.04.
        let p60 = window.latency.quantile(0.6).expect("p60");
        assert!(close(p60, 0.04), "{p60}");
        // A rank in the +Inf bucket answers the largest finite bound.
        let tail = Buckets::from_pairs(&[(0.5, 1.0), (f64::INFINITY, 10.0)]);
        assert!(close(tail.quantile(0.99).expect("tail"), 0.5));
        // The percentiles of the whole lives (not the delta) would differ: p50 of the newer
        // alone is rank 150 → exactly the first bucket's top too, but p99 of it is
        // 0.1 + 0.9 × 47/50; the window must not use it.
        let whole = &newer.latency[&("/api/v1/products".to_owned(), "GET".to_owned())];
        assert!(!close(whole.quantile(0.99).expect("whole"), p99));
    }

    #[test]
    fn no_traffic_means_no_rates_not_nan() {
        let older = Scrape::parse(OLDER).expect("older");
        let window = Window::between(&older, &older, 5.0);
        let metrics = ServiceMetrics::from_window(&window);
        assert!(close(metrics.requests, 0.0));
        assert_eq!(metrics.requests_per_second, Some(0.0));
        assert_eq!(metrics.error_share, None);
        assert_eq!(metrics.p50, None);
        assert_eq!(metrics.p99, None);
        assert!(metrics.routes.is_empty() && metrics.recent_errors.is_empty());
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn a_restarted_process_counts_from_zero_again() {
        let older = Scrape::parse(NEWER).expect("older");
        // After a restart: 4 GETs, counters far below the older sample's.
        let restarted = Scrape::parse(
            "bazaar_http_requests_total{route=\"/api/v1/products\",method=\"GET\",status=\"200\"} 4\n\
             bazaar_http_request_duration_seconds_bucket{le=\"0.01\",route=\"/api/v1/products\",method=\"GET\"} 4\n\
             bazaar_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/api/v1/products\",method=\"GET\"} 4\n",
        )
        .expect("restarted");
        let window = Window::between(&older, &restarted, 5.0);
        assert!(close(window.requests, 4.0));
        assert!(close(window.latency.total(), 4.0));
    }

    #[test]
    fn instances_add_up() {
        let older = Scrape::parse(OLDER).expect("older");
        let newer = Scrape::parse(NEWER).expect("newer");
        let mut total = Window::between(&older, &newer, 10.0);
        // A second instance, measured over 5 s: 50 GETs, all ≤ 10 ms.
        let second_newer = Scrape::parse(
            "bazaar_http_requests_total{route=\"/api/v1/products\",method=\"GET\",status=\"200\"} 50\n\
             bazaar_http_request_duration_seconds_bucket{le=\"0.01\",route=\"/api/v1/products\",method=\"GET\"} 50\n\
             bazaar_http_request_duration_seconds_bucket{le=\"0.1\",route=\"/api/v1/products\",method=\"GET\"} 50\n\
             bazaar_http_request_duration_seconds_bucket{le=\"1.0\",route=\"/api/v1/products\",method=\"GET\"} 50\n\
             bazaar_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/api/v1/products\",method=\"GET\"} 50\n",
        )
        .expect("second");
        total.add(&Window::between(&Scrape::default(), &second_newer, 5.0));
        assert!(close(total.requests, 275.0));
        assert!(close(total.requests_per_second, 22.5 + 10.0));
        assert!(close(total.seconds, 10.0));
        // p50 of 250: rank 125 ≤ 150 in the first bucket: 0.01 × 125/150.
        let p50 = total.latency.quantile(0.5).expect("p50");
        assert!(close(p50, 0.01 * 125.0 / 150.0), "{p50}");
    }
}
