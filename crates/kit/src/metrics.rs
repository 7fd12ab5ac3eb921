//! Prometheus metrics: one registry per service instance, with request count, errors and a
//! latency histogram per route, rendered in the text exposition format at `/metrics`.
//! Services and the gateway register their own metrics in the same registry.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// A service's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    errors: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    batches: Counter,
    batched_items: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bazaar");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests handled, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_errors",
            "HTTP requests answered with a 5xx status, by route and method",
            errors.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response head, by route and method",
            latency.clone(),
        );
        let batches = Counter::default();
        let batched_items = Counter::default();
        registry.register(
            "batches",
            "Batches of internal requests received (POST /internal/v1/batch)",
            batches.clone(),
        );
        registry.register(
            "batched_items",
            "Internal requests received inside batches (each also counted under its route)",
            batched_items.clone(),
        );
        registry.register(
            "group_commits",
            "Transactions written by this process's group-commit writers (kit::group_commit)",
            crate::group_commit::COMMITS.clone(),
        );
        registry.register(
            "group_committed_items",
            "Writes committed by those transactions (writes per transaction is what grouping buys)",
            crate::group_commit::COMMITTED_ITEMS.clone(),
        );
        registry.register(
            "sqlite_checkpoints_background",
            "WAL checkpoint passes run by this process's checkpointer threads (kit::storage)",
            crate::storage::checkpoint::BACKGROUND_PASSES.clone(),
        );
        registry.register(
            "sqlite_checkpoints_writer",
            "WAL checkpoint passes a service thread ran itself, its log at the cap (kit::storage)",
            crate::storage::checkpoint::WRITER_PASSES.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            errors,
            latency,
            batches,
            batched_items,
        }
    }

    /// The registry, to register a service's own metrics.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("metrics registry lock")
    }

    /// Records one handled request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RouteLabels {
            route: route.to_owned(),
            method: method.to_owned(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: labels.route.clone(),
                method: labels.method.clone(),
                status,
            })
            .inc();
        if status >= 500 {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// Records a batch of `items` internal requests (items per batch is what batching buys).
    pub fn observe_batch(&self, items: usize) {
        self.batches.inc();
        self.batched_items.inc_by(items as u64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware recording every request under its matched route (`unmatched` otherwise, so that
/// arbitrary paths cannot blow up the label space).
pub async fn middleware(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
pub async fn handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
