//! `/admin/services/{name}`: one service's instances and its traffic over the last minute
//! (request rate, 5xx share, latency p50/p99, per route), consumer lag, and the routes whose
//! 5xx answers grew, all from the [`super::MetricsSampler`]'s samples.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::metrics::{ServiceMetrics, SCRAPE_INTERVAL};
use super::topology::{services_health, Link, EDGES};
use super::Admin;
use crate::pages::{render, PageError};
use crate::AppState;

/// A dependency of the service, or on it.
#[derive(Debug, Serialize)]
struct Neighbour {
    name: &'static str,
    link: Link,
    what: &'static str,
}

/// Numbers formatted for people (the template only places them).
#[derive(Debug, Default, Serialize)]
struct Figures {
    rate: Option<String>,
    error_share: Option<String>,
    p50: Option<String>,
    p99: Option<String>,
}

/// `0.0042` seconds → `4.2 ms`; `1.5` → `1.50 s`.
pub fn format_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        let ms = seconds * 1000.0;
        if ms < 10.0 {
            format!("{ms:.2} ms")
        } else {
            format!("{ms:.0} ms")
        }
    } else {
        format!("{seconds:.2} s")
    }
}

fn figures(metrics: &ServiceMetrics) -> Figures {
    if metrics.requests <= 0.0 {
        return Figures::default();
    }
    Figures {
        rate: metrics.requests_per_second.map(|r| format!("{r:.2}/s")),
        error_share: metrics.error_share.map(|s| format!("{:.1}%", s * 100.0)),
        p50: metrics.p50.map(format_seconds),
        p99: metrics.p99.map(format_seconds),
    }
}

/// `GET /admin/services/{name}`.
pub async fn page(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    Path(name): Path<String>,
) -> Response {
    let chrome = visitor.chrome(&state).await;
    let Some(service) = services_health(&state).into_iter().find(|s| s.name == name) else {
        return PageError::not_found(&format!("a service named {name}"))
            .with_chrome(&chrome)
            .into_response();
    };
    let metrics = state.metrics.service(&name);
    let figures = figures(&metrics);
    let routes: Vec<_> = metrics
        .routes
        .iter()
        .map(|r| {
            minijinja::context! {
                route => r.route,
                method => r.method,
                requests => r.requests,
                rate => format!("{:.2}/s", r.requests_per_second),
                errors => r.errors,
                p50 => r.p50.map(format_seconds),
                p99 => r.p99.map(format_seconds),
            }
        })
        .collect();
    let calls: Vec<Neighbour> = EDGES
        .iter()
        .filter(|e| e.from == name)
        .map(|e| Neighbour {
            name: e.to,
            link: e.link,
            what: e.what,
        })
        .collect();
    let called_by: Vec<Neighbour> = EDGES
        .iter()
        .filter(|e| e.to == name)
        .map(|e| Neighbour {
            name: e.from,
            link: e.link,
            what: e.what,
        })
        .collect();
    render(
        "admin/service.html",
        minijinja::context! {
            chrome,
            section => "overview",
            service,
            metrics,
            figures,
            routes,
            window_secs => metrics.window_secs.round() as u64,
            interval_secs => SCRAPE_INTERVAL.as_secs(),
            calls,
            called_by,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_milliseconds_below_one_second() {
        assert_eq!(format_seconds(0.0042), "4.20 ms");
        assert_eq!(format_seconds(0.955), "955 ms");
        assert_eq!(format_seconds(1.5), "1.50 s");
    }

    #[test]
    fn a_service_without_requests_has_no_figures() {
        let figures = figures(&ServiceMetrics {
            requests_per_second: Some(0.0),
            ..ServiceMetrics::default()
        });
        assert!(figures.rate.is_none() && figures.p99.is_none());
    }
}
