//! Liveness and readiness. `/healthz` answers while the process serves at all; `/readyz` runs
//! every registered readiness check (database reachable, registered with the registry...) and
//! answers 503 naming the failing ones.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The set of readiness checks of one service. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check, bool)>,
}

/// Outcome of all checks.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Adds a check. `for_registry` says whether its failure should be reported to the registry
    /// (false for the registration check itself, which would otherwise be circular).
    pub fn add<F, Fut>(&mut self, name: &'static str, for_registry: bool, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check())), for_registry));
    }

    async fn run(&self, only_for_registry: bool) -> ReadinessReport {
        let mut report = ReadinessReport {
            ready: true,
            checks: BTreeMap::new(),
        };
        for (name, check, for_registry) in &self.checks {
            if only_for_registry && !for_registry {
                continue;
            }
            let outcome = tokio::time::timeout(Duration::from_secs(2), check())
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            match outcome {
                Ok(()) => {
                    report.checks.insert(name, "ok".to_owned());
                }
                Err(why) => {
                    report.ready = false;
                    report.checks.insert(name, why);
                }
            }
        }
        report
    }

    /// Every check.
    pub async fn report(&self) -> ReadinessReport {
        self.run(false).await
    }

    /// The checks whose failure makes the instance unroutable.
    pub async fn report_for_registry(&self) -> ReadinessReport {
        self.run(true).await
    }
}

/// `GET /healthz`.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "alive"}))
}

/// `GET /readyz`.
pub async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let report = readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": if report.ready { "ready" } else { "not_ready" },
            "checks": report.checks,
        })),
    )
}
