//! The gateway's Prometheus metrics, registered in the service's kit registry so they appear on
//! the same `/metrics` page as the kit's per-route HTTP metrics:
//!
//! - `gateway_requests{route,status}`: requests per configured route prefix and final status;
//! - `gateway_upstream_requests{service,instance,outcome}`: every attempt at an upstream, with
//!   `outcome` one of `success`, `server_error`, `connect_error`, `timeout`, `error`;
//! - `gateway_upstream_duration_seconds{service}`: time to the upstream's response head.
//!
//! Labels are bounded: routes come from configuration, instances from the registry.

use bazaar_kit::metrics::{latency_histogram, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    service: String,
    instance: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// How one attempt at an upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ServerError,
    ConnectError,
    Timeout,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ServerError => "server_error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// Handles to the gateway's metric families. Cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RouteLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
}

impl GatewayMetrics {
    /// Creates the families and registers them in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
            upstream: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        let mut registry = metrics.registry();
        registry.register(
            "gateway_requests",
            "Requests proxied by the gateway, by route prefix and final status",
            this.requests.clone(),
        );
        registry.register(
            "gateway_upstream_requests",
            "Attempts at an upstream instance, by service, instance and outcome",
            this.upstream.clone(),
        );
        registry.register(
            "gateway_upstream_duration_seconds",
            "Time until the upstream's response head, by service",
            this.duration.clone(),
        );
        this
    }

    /// One proxied request answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// One attempt at an instance.
    pub fn attempt(&self, service: &str, instance: &str, outcome: Outcome, seconds: f64) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                service: service.to_owned(),
                instance: instance.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
        if matches!(outcome, Outcome::Success | Outcome::ServerError) {
            self.duration
                .get_or_create(&ServiceLabels {
                    service: service.to_owned(),
                })
                .observe(seconds);
        }
    }
}
