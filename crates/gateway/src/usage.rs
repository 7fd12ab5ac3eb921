//! Usage accounting for API keys: every accepted keyed request adds one to its key's count of
//! the UTC day; the deltas are reported to the developer service every `usage_flush_ms` (2 s)
//! and once more when the gateway stops (`POST /internal/v1/usage`, with a `report_id` so the
//! developer service can ignore a report it already has). A report that fails is resent as is,
//! same id, before anything newer, so a timeout that hid a success never counts twice.
//!
//! On the first sight of a key after start, its day and month counts are read back from the
//! developer service (`GET /internal/v1/usage/{key_id}`) to seed the quota counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use bazaar_kit::client::{CallError, ServiceClient};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::keys::DEVELOPER_SERVICE;

/// One line of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub key_id: String,
    pub day: String,
    pub count: u64,
}

/// The body of `POST /internal/v1/usage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub report_id: uuid::Uuid,
    pub gateway: String,
    pub counts: Vec<Count>,
}

/// The answer of `GET /internal/v1/usage/{key_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seed {
    pub day: String,
    pub day_count: u64,
    pub month: String,
    pub month_count: u64,
}

/// Counts not reported yet.
pub struct Usage {
    services: ServiceClient,
    gateway: String,
    pending: Mutex<HashMap<(String, String), u64>>,
    /// A report that failed, resent first; the lock also keeps flushes one at a time.
    unsent: tokio::sync::Mutex<Option<Report>>,
}

impl Usage {
    pub fn new(services: ServiceClient, gateway: String) -> Self {
        Self {
            services,
            gateway,
            pending: Mutex::new(HashMap::new()),
            unsent: tokio::sync::Mutex::new(None),
        }
    }

    /// Counts one accepted request of `key_id` on `day`.
    pub fn record(&self, key_id: &str, day: &str) {
        *self
            .pending
            .lock()
            .expect("usage lock")
            .entry((key_id.to_owned(), day.to_owned()))
            .or_default() += 1;
    }

    /// Reports what is pending (first any report that failed before).
    pub async fn flush(&self) -> Result<(), String> {
        let mut unsent = self.unsent.lock().await;
        if let Some(report) = unsent.as_ref() {
            self.send(report).await?;
            *unsent = None;
        }
        let counts: Vec<Count> = std::mem::take(&mut *self.pending.lock().expect("usage lock"))
            .into_iter()
            .map(|((key_id, day), count)| Count { key_id, day, count })
            .collect();
        if counts.is_empty() {
            return Ok(());
        }
        let report = Report {
            report_id: uuid::Uuid::new_v4(),
            gateway: self.gateway.clone(),
            counts,
        };
        if let Err(error) = self.send(&report).await {
            *unsent = Some(report);
            return Err(error);
        }
        Ok(())
    }

    async fn send(&self, report: &Report) -> Result<(), String> {
        self.services
            .send(
                DEVELOPER_SERVICE,
                Method::POST,
                "/internal/v1/usage",
                Some(report),
                Default::default(),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The counts the developer service has for `key_id`; `None` when it has none or cannot
    /// say (then the quota starts from what this gateway sees).
    pub async fn seed(&self, key_id: &str) -> Option<Seed> {
        match self
            .services
            .get_json::<Seed>(DEVELOPER_SERVICE, &format!("/internal/v1/usage/{key_id}"))
            .await
        {
            Ok(seed) => Some(seed),
            Err(CallError::Status { status: 404, .. }) => None,
            Err(error) => {
                tracing::warn!(%error, key_id, "cannot read usage to seed quota counters");
                None
            }
        }
    }
}

/// Flushes every `every` until `stop` turns true, then once more. `tick` runs on every round
/// too (the limiters' housekeeping).
pub fn spawn_flusher(
    usage: Arc<Usage>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    tick: impl Fn() + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                changed = stop.changed() => changed.is_err() || *stop.borrow(),
            };
            if let Err(error) = usage.flush().await {
                tracing::warn!(%error, "usage report failed; will resend");
            }
            tick();
            if stopping {
                return;
            }
        }
    });
}

/// Held by the gateway's state: when the last copy goes (the server stopped), the flusher
/// sends what is left. On a multi-threaded runtime the final report is also awaited here
/// (up to 2 s), so a process that exits right after `Service::run` still sends it.
pub struct FlushOnDrop {
    pub usage: Arc<Usage>,
    pub stop: watch::Sender<bool>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let usage = self.usage.clone();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(2), usage.flush()).await;
                });
            });
        }));
    }
}
