//! The checkout saga, orchestrated here, its state persisted as it goes so that a crash at any
//! step loses nothing (G6):
//!
//! ```text
//! [locate] → [reserve_stock → price → authorize_payment → create_shipment]
//!        → [commit_stock ‖ capture_payment → confirm]                     (order confirmed)
//! any "no" before create_shipment succeeds → [void_payment → release_stock → cancel]
//!                                                                         (order cancelled)
//! ```
//!
//! Each bracket is one record: its steps run one after the other in memory and their outcome is
//! written at once (one history row per step), see [`shares_record`]. The destination is
//! usually looked up while the order is placed (so its record is the placement's own) and the
//! saga starts at the reservation; `‖` marks two commands sent side by side.
//!
//! Every remote command is idempotent by a key derived from the order id, so a step re-run after
//! a crash (between the remote call and the write that records it) finds the first result
//! instead of acting twice (G4, G6). A service that is down or failing leaves the order pending
//! with a reason and the step is retried with backoff; a saga never stops half-way. Creating the
//! shipment is the pivot: after it, steps are only retried, never compensated. Compensation
//! itself is retried until done (G5).
//!
//! One worker drives an order at a time: it claims the row for a while (renewed with each
//! record, in the record's own write), so several orders instances can share the work on
//! PostgreSQL; within a worker, an order already being driven is not started a second time.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazaar_kit::storage::now_ms;
use bazaar_messaging::{NewEvent, Outbox};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::finishes::Finishes;
use crate::model::{HistoryEntry, Money, SagaState};
use crate::remote::{Location, Parcel, Remote, StepError};
use bazaar_kit::group_commit::{GroupCommit, GroupCommitError};

use crate::repository::{
    Placement, Repository, SagaWrite, StepBatch, StepRecord, StepUpdate, StoredOrder,
};

/// How long a claim lasts without renewal (the takeover delay after a worker dies elsewhere).
const CLAIM_MS: i64 = 30_000;
/// Orders driven at once by one worker.
const PARALLEL: usize = 64;
/// At most this many writes share a transaction (the records of the orders being driven, at
/// most one each, and the placements arriving).
const WRITES_PER_COMMIT: usize = 2 * PARALLEL;

/// The saga's steps, as stored in `orders.step`.
pub mod step {
    pub const LOCATE: &str = "locate";
    pub const RESERVE: &str = "reserve_stock";
    pub const PRICE: &str = "price";
    pub const AUTHORIZE: &str = "authorize_payment";
    pub const SHIP: &str = "create_shipment";
    pub const COMMIT_STOCK: &str = "commit_stock";
    pub const CAPTURE: &str = "capture_payment";
    pub const CONFIRM: &str = "confirm";
    pub const VOID: &str = "void_payment";
    pub const RELEASE: &str = "release_stock";
    pub const CANCEL: &str = "cancel";
    pub const DONE: &str = "done";
}

/// Settings of the saga worker.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// Longest pause between retries of a step.
    pub max_backoff_ms: i64,
    /// Chaos hook: exit the process right after this step's remote call succeeded and before
    /// its result is recorded (once per data directory: a marker file remembers it).
    pub crash_after: Option<(String, std::path::PathBuf)>,
}

/// Drives pending orders.
#[derive(Clone)]
pub struct Saga {
    repository: Repository,
    remote: Remote,
    /// Records each step's outcome, sharing transactions between the orders being driven.
    steps: GroupCommit<StepBatch>,
    worker: String,
    settings: SagaSettings,
    wake: Arc<Notify>,
    /// Orders driven at once: [`PARALLEL`] permits shared by the worker loop and [`Saga::adopt`].
    permits: Arc<Semaphore>,
    /// Orders this worker is driving now: `due` still lists an order between its task's start
    /// and its claim, and driving it twice would repeat (idempotent, but costly) steps.
    driving: Arc<Mutex<HashSet<String>>>,
    /// Requests waiting for an order to finish, woken when this worker finishes it.
    finishes: Finishes,
}

/// What a step changed in the order's saga state and amounts.
struct Change {
    saga: SagaState,
    shipping_minor: i64,
    total_minor: i64,
}

/// Whether the step `next` runs straight after the one before it and shares its record.
///
/// A record (an UPDATE and history rows in a group commit) per step costs more than the step's
/// own work and holds the order up while it commits, so steps are recorded only where the
/// saga's shape needs it: after the shipment (the pivot: from there the saga only goes forward,
/// so the record must say it got there) and at the end. Everything before the pivot (the
/// destination, the reservation, the price, the authorization, the shipment) shares one record.
/// A crash inside a run of shared steps repeats the run, which is safe because every remote
/// command is idempotent by the order's key (the reservation, the payment and the shipment are
/// found again, not made twice) and the lookups change nothing (G4, G6). A failure ends the run,
/// recording the steps that succeeded before it, so an order waiting for a service that is down
/// shows that step and its reason.
fn shares_record(next: &str) -> bool {
    matches!(
        next,
        step::RESERVE
            | step::PRICE
            | step::AUTHORIZE
            | step::SHIP
            | step::CAPTURE
            | step::CONFIRM
            | step::RELEASE
            | step::CANCEL
    )
}

/// What running one step decided.
enum Next {
    /// Go on to `step` with the updated state.
    Advance { step: &'static str, detail: String },
    /// Go on to `step`, the step after this one (`also`, with its detail) having run side by
    /// side with it: both are recorded, in saga order.
    AdvanceWith {
        step: &'static str,
        detail: String,
        also: (&'static str, String),
    },
    /// Compensate: the order cannot complete, for `reason`.
    Fail { reason: String },
    /// Terminal: confirmed or cancelled.
    Finish {
        status: &'static str,
        reason: String,
        event: NewEvent,
    },
}

impl Saga {
    pub fn new(
        repository: Repository,
        remote: Remote,
        outbox: Outbox,
        worker: String,
        settings: SagaSettings,
    ) -> Self {
        let steps = GroupCommit::start(
            StepBatch {
                repository: repository.clone(),
                outbox,
            },
            WRITES_PER_COMMIT,
        );
        Self {
            repository,
            remote,
            steps,
            worker,
            settings,
            wake: Arc::new(Notify::new()),
            permits: Arc::new(Semaphore::new(PARALLEL)),
            driving: Arc::new(Mutex::new(HashSet::new())),
            finishes: Finishes::default(),
        }
    }

    /// The requests waiting for orders this worker drives to finish.
    pub fn finishes(&self) -> &Finishes {
        &self.finishes
    }

    /// Wakes the worker (a new order is waiting).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The claim a newly placed order is inserted with: this worker's, so that
    /// [`Saga::adopt`] can drive it at once without a claim of its own (and no other worker
    /// starts it meanwhile; if this process dies first, the claim runs out and any worker
    /// takes the order over).
    pub fn placement_claim(&self) -> (&str, i64) {
        (&self.worker, now_ms() + CLAIM_MS)
    }

    /// Inserts a placed order (claimed with [`Saga::placement_claim`]) through the writer that
    /// records the steps, so that placements share commits with each other and with the
    /// records of the orders being driven; `false` when the user already has an order with its
    /// idempotency key.
    pub async fn place(&self, placement: Placement) -> Result<bool, GroupCommitError> {
        self.steps
            .write(SagaWrite::Place(Box::new(placement)))
            .await
    }

    /// Drives `order`, just inserted with [`Saga::placement_claim`], in the background: the
    /// placement saves the worker loop's look for due orders and the claim's write and read.
    pub fn adopt(&self, order: StoredOrder) {
        let Some(driving) = Driving::start(&self.driving, &order.id) else {
            return;
        };
        let saga = self.clone();
        tokio::spawn(async move {
            let Ok(permit) = saga.permits.clone().acquire_owned().await else {
                return;
            };
            saga.drive_claimed(order).await;
            drop(driving);
            drop(permit);
        });
    }

    /// Runs the worker forever.
    pub async fn run(self) {
        // Claims held under this worker's name belong to an earlier life of this instance
        // (same host and port: that process is gone, since this one has the port): take them
        // back now instead of waiting for them to run out.
        match self.repository.release_claims(&self.worker).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(
                    released,
                    "took back the orders an earlier run of this instance was driving"
                )
            }
            Err(error) => tracing::warn!(%error, "cannot release this worker's earlier claims"),
        }
        let permits = self.permits.clone();
        loop {
            let due = self.repository.due(now_ms(), PARALLEL as i64).await;
            let mut started = 0;
            match due {
                Ok(ids) => {
                    for id in ids {
                        let Some(driving) = Driving::start(&self.driving, &id) else {
                            continue;
                        };
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            break;
                        };
                        started += 1;
                        let saga = self.clone();
                        tokio::spawn(async move {
                            saga.drive(&id).await;
                            // Even if `drive` panicked, the guard's drop lets the order go.
                            drop(driving);
                            drop(permit);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read due orders"),
            }
            if started > 0 {
                // Look again at once: more may be due.
                tokio::task::yield_now().await;
                if permits.available_permits() == 0 {
                    // Every permit is out: look again once an order gives one back.
                    let _ = permits.acquire().await;
                }
                continue;
            }
            let now = now_ms();
            let pause = match self.repository.next_due_at(now).await {
                Ok(Some(at)) => (at - now).clamp(5, 1_000),
                _ => 1_000,
            };
            let _ = tokio::time::timeout(Duration::from_millis(pause as u64), self.wake.notified())
                .await;
        }
    }

    /// Drives one order as far as it can go now. Public so tests can run a saga to completion
    /// without the background worker.
    pub async fn drive(&self, id: &str) {
        let claimed = self
            .repository
            .claim(id, &self.worker, now_ms() + CLAIM_MS)
            .await;
        match claimed {
            Ok(Some(order)) => self.drive_claimed(order).await,
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, order_id = id, "cannot claim the order"),
        }
    }

    /// Drives an order this worker has claimed as far as it can go now.
    async fn drive_claimed(&self, mut order: StoredOrder) {
        let id = order.id.clone();
        loop {
            // Each recorded step renews the claim (or releases it when the order stops) in its
            // own write, and leaves the row as `order` now is, so nothing is read back.
            match self.step(order).await {
                Ok(Some(next)) => order = next,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, order_id = %id, "cannot record a saga step");
                    let _ = self.repository.unclaim(&id, &self.worker).await;
                    // Due again now: the worker loop picks it up.
                    self.wake();
                    return;
                }
            }
        }
    }

    /// Runs the order's current step, and the steps that share its record (see
    /// [`shares_record`]), and records what happened in one write; the order as recorded when
    /// the saga can go on at once (the claim renewed), `None` when it stops for now (the claim
    /// released) or the claim was lost.
    async fn step(&self, order: StoredOrder) -> Result<Option<StoredOrder>, GroupCommitError> {
        let (id, first) = (order.id.clone(), order.step.clone());
        // The order as the steps run so far left it, in memory until the record is written.
        let mut working = order;
        let mut history = Vec::new();
        let (mut update, go_on) = loop {
            let current = working.step.clone();
            let mut saga = working.saga.clone();
            let mut shipping_minor = working.shipping_minor;
            let mut total_minor = working.total_minor;
            let outcome = self
                .run_step(&working, &mut saga, &mut shipping_minor, &mut total_minor)
                .await;
            if let Ok(ref next) = outcome {
                if !matches!(next, Next::Fail { .. }) {
                    self.maybe_crash(&current);
                }
                if let Next::AdvanceWith { also, .. } = next {
                    self.maybe_crash(also.0);
                }
            }
            let chained = matches!(&outcome,
                Ok(Next::Advance { step, .. } | Next::AdvanceWith { step, .. }) if shares_record(step));
            let change = Change {
                saga,
                shipping_minor,
                total_minor,
            };
            let (mut update, go_on) = self.judge(&working, outcome, change);
            history.append(&mut update.history);
            if !chained {
                break (update, go_on);
            }
            working = working.with_update(&update, now_ms());
        };
        update.history = history;
        let now = now_ms();
        if go_on {
            update.claimed_until_ms = now + CLAIM_MS;
        }
        let (next_step, status) = (update.step.clone(), update.status.clone());
        let next = go_on.then(|| working.with_update(&update, now));
        let record = StepRecord {
            id: id.clone(),
            worker: self.worker.clone(),
            update,
        };
        let recorded = self
            .steps
            .write(SagaWrite::Record(Box::new(record)))
            .await?;
        if recorded {
            tracing::info!(order_id = %id, step = %first, next = %next_step,
                status = %status, "saga step recorded");
            if !go_on && status == "pending" {
                // It waits for a retry: the worker loop must know its new due time. (An order
                // that finished needs no look for due orders, which costs two queries.)
                self.wake();
            } else if status != "pending" {
                self.finishes.announce(&id);
            }
        }
        Ok(next.filter(|_| recorded))
    }

    /// What `order`'s current step decided, as the change to record (with one history entry)
    /// and whether the saga goes straight on.
    fn judge(
        &self,
        order: &StoredOrder,
        outcome: Result<Next, StepError>,
        change: Change,
    ) -> (StepUpdate, bool) {
        let current = order.step.clone();
        let now = now_ms();
        let history = |outcome: &str, detail: String| {
            vec![HistoryEntry {
                at_ms: now,
                step: current.clone(),
                outcome: outcome.to_owned(),
                detail,
            }]
        };
        let payment_authorized = change.saga.payment_authorized;
        let mut update = StepUpdate {
            step: current.clone(),
            status: "pending".to_owned(),
            status_reason: String::new(),
            saga: change.saga,
            shipping_minor: change.shipping_minor,
            total_minor: change.total_minor,
            attempts: 0,
            next_attempt_at_ms: now,
            history: Vec::new(),
            event: None,
            claimed_until_ms: 0,
        };
        let go_on = match outcome {
            Ok(Next::Advance { step, detail }) => {
                update.step = step.to_owned();
                update.status_reason = format!("in progress: {}", step.replace('_', " "));
                update.history = history("ok", detail);
                true
            }
            Ok(Next::AdvanceWith { step, detail, also }) => {
                update.step = step.to_owned();
                update.status_reason = format!("in progress: {}", step.replace('_', " "));
                update.history = history("ok", detail);
                update.history.push(HistoryEntry {
                    at_ms: now,
                    step: also.0.to_owned(),
                    outcome: "ok".to_owned(),
                    detail: also.1,
                });
                true
            }
            Ok(Next::Fail { reason }) => {
                // Compensate in reverse: money first, then stock.
                update.step = if payment_authorized {
                    step::VOID
                } else {
                    step::RELEASE
                }
                .to_owned();
                update.status_reason = format!("cancelling: {reason}");
                update.history = history("failed", reason);
                true
            }
            Ok(Next::Finish {
                status,
                reason,
                event,
            }) => {
                update.step = step::DONE.to_owned();
                update.status = status.to_owned();
                update.status_reason = reason.clone();
                update.history = history("ok", reason);
                update.event = Some(event);
                false
            }
            Err(StepError::Unavailable { service, reason }) => {
                let attempts = order.attempts + 1;
                update.attempts = attempts;
                update.next_attempt_at_ms = now + self.backoff_ms(attempts);
                update.status_reason =
                    format!("waiting for {service}: {reason}; retrying (attempt {attempts})");
                update.history = history("retry", reason);
                false
            }
            Err(StepError::Rejected { code, detail }) => {
                // A "no" from a step that only goes forward (after the pivot, or compensation):
                // keep retrying and make it visible; reconciliation reports it if it persists.
                let attempts = order.attempts + 1;
                update.attempts = attempts;
                update.next_attempt_at_ms = now + self.backoff_ms(attempts);
                update.status_reason = format!(
                    "step {current} refused ({code}: {detail}); retrying (attempt {attempts})"
                );
                update.history = history("retry", format!("{code}: {detail}"));
                false
            }
        };
        (update, go_on)
    }

    fn backoff_ms(&self, attempts: i64) -> i64 {
        let base = 200i64.saturating_mul(1 << attempts.clamp(0, 10));
        let capped = base.min(self.settings.max_backoff_ms.max(100));
        capped / 2 + fastrand::i64(0..=capped / 2)
    }

    fn maybe_crash(&self, step: &str) {
        if let Some((crash_step, marker)) = &self.settings.crash_after {
            if crash_step == step && !marker.exists() {
                // The marker makes the crash happen once: a crash that could not leave it would
                // repeat at every restart (on PostgreSQL nothing else creates the data dir).
                let written = marker
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(marker, step));
                if let Err(error) = written {
                    tracing::error!(%error, marker = %marker.display(),
                        "chaos: cannot write the crash marker; not crashing");
                    return;
                }
                tracing::error!(
                    step,
                    "chaos: crashing after the step's remote call, before recording it"
                );
                bazaar_kit::telemetry::flush_logs();
                std::process::exit(87);
            }
        }
    }

    async fn run_step(
        &self,
        order: &StoredOrder,
        saga: &mut SagaState,
        shipping_minor: &mut i64,
        total_minor: &mut i64,
    ) -> Result<Next, StepError> {
        let rejected = |error: StepError, what: &str| match error {
            StepError::Rejected { code, detail } => Ok(Next::Fail {
                reason: format!("{what} ({code}): {detail}"),
            }),
            other => Err(other),
        };
        match order.step.as_str() {
            step::LOCATE => match self.remote.locate(&order.address).await {
                Ok(location) => Ok(Next::Advance {
                    step: step::RESERVE,
                    detail: record_destination(saga, &location),
                }),
                Err(error) => rejected(error, "the address cannot be shipped to"),
            },
            step::RESERVE => {
                let destination = saga.destination.unwrap_or((0.0, 0.0));
                match self
                    .remote
                    .reserve(&order.id, &order.lines, destination)
                    .await
                {
                    Ok(reservation) => {
                        saga.allocations = reservation.allocations;
                        Ok(Next::Advance {
                            step: step::PRICE,
                            detail: format!("stock reserved ({})", reservation.status),
                        })
                    }
                    Err(error) => rejected(error, "out of stock"),
                }
            }
            step::PRICE => {
                let destination = saga.destination.unwrap_or((0.0, 0.0));
                let parcels = parcels(order, saga);
                let quote = match self.remote.quote(destination, &parcels).await {
                    Ok(quote) => quote,
                    Err(error) => return rejected(error, "the address cannot be shipped to"),
                };
                let line_currency = order.line_currency();
                let shipping_in_lines =
                    match self.remote.convert(&quote.amount, &line_currency).await {
                        Ok(amount) => amount,
                        Err(error) => return rejected(error, "shipping cannot be priced"),
                    };
                let due = Money::new(order.subtotal_minor + shipping_in_lines, &line_currency);
                let total = match self.remote.convert(&due, &order.currency).await {
                    Ok(total) => total,
                    Err(error) => return rejected(error, "the currency is not supported"),
                };
                *shipping_minor = shipping_in_lines;
                *total_minor = total;
                Ok(Next::Advance {
                    step: step::AUTHORIZE,
                    detail: format!("total {} {} including shipping", total, order.currency),
                })
            }
            step::AUTHORIZE => {
                let amount = Money::new(order.total_minor, &order.currency);
                match self
                    .remote
                    .authorize(&order.id, &order.user_id, &amount, &order.card_token)
                    .await
                {
                    Ok(payment) if payment.status == "authorized" => {
                        saga.payment_id = Some(payment.payment_id.clone());
                        saga.payment_authorized = true;
                        Ok(Next::Advance {
                            step: step::SHIP,
                            detail: format!("payment {} authorized", payment.payment_id),
                        })
                    }
                    Ok(payment) => {
                        saga.payment_id = Some(payment.payment_id);
                        Ok(Next::Fail {
                            reason: format!(
                                "payment declined ({})",
                                payment
                                    .decline_code
                                    .unwrap_or_else(|| payment.status.clone())
                            ),
                        })
                    }
                    Err(error) => rejected(error, "payment refused"),
                }
            }
            step::SHIP => {
                let parcels = parcels(order, saga);
                match self
                    .remote
                    .create_shipment(&order.id, &order.user_id, &order.address, &parcels)
                    .await
                {
                    Ok(shipment) => {
                        saga.shipment_id = Some(shipment.shipment_id.clone());
                        saga.tracking_number = Some(shipment.tracking_number.clone());
                        Ok(Next::Advance {
                            step: step::COMMIT_STOCK,
                            detail: format!("shipment {} created", shipment.shipment_id),
                        })
                    }
                    Err(error) => rejected(error, "the shipment cannot be created"),
                }
            }
            step::COMMIT_STOCK => {
                // After the pivot both only go forward and neither needs the other's result, so
                // they run side by side: the order waits for the slower, not for both in turn.
                // If either fails the step is retried whole; the one that succeeded is found
                // again by its key (G4).
                let payment_id = saga.payment_id.clone().unwrap_or_default();
                let (committed, captured) = tokio::join!(
                    self.remote.commit_stock(&order.id),
                    self.remote.settle(&order.id, &payment_id, "capture"),
                );
                committed?;
                captured?;
                Ok(Next::AdvanceWith {
                    step: step::CONFIRM,
                    detail: "stock committed".into(),
                    also: (step::CAPTURE, format!("payment {payment_id} captured")),
                })
            }
            // Orders recorded at this step before commit and capture ran together (a saga
            // started by an earlier version) capture alone.
            step::CAPTURE => {
                let payment_id = saga.payment_id.clone().unwrap_or_default();
                self.remote
                    .settle(&order.id, &payment_id, "capture")
                    .await?;
                Ok(Next::Advance {
                    step: step::CONFIRM,
                    detail: format!("payment {payment_id} captured"),
                })
            }
            step::CONFIRM => Ok(Next::Finish {
                status: "confirmed",
                reason: "confirmed".into(),
                event: NewEvent::new(
                    "order.confirmed",
                    &order.id,
                    &json!({
                        "order_id": order.id,
                        "user_id": order.user_id,
                        "email": order.email,
                        "total": Money::new(order.total_minor, &order.currency),
                        "lines": event_lines(order),
                        "shipment_id": saga.shipment_id,
                    }),
                ),
            }),
            step::VOID => {
                let payment_id = saga.payment_id.clone().unwrap_or_default();
                self.remote.settle(&order.id, &payment_id, "void").await?;
                saga.payment_authorized = false;
                Ok(Next::Advance {
                    step: step::RELEASE,
                    detail: format!("payment {payment_id} voided"),
                })
            }
            step::RELEASE => {
                self.remote.release_stock(&order.id).await?;
                Ok(Next::Advance {
                    step: step::CANCEL,
                    detail: "stock released".into(),
                })
            }
            step::CANCEL => {
                let reason = order
                    .status_reason
                    .strip_prefix("cancelling: ")
                    .unwrap_or(&order.status_reason)
                    .to_owned();
                let reason = self.cancel_reason(order, reason).await;
                Ok(Next::Finish {
                    status: "cancelled",
                    reason: reason.clone(),
                    event: NewEvent::new(
                        "order.cancelled",
                        &order.id,
                        &json!({
                            "order_id": order.id,
                            "user_id": order.user_id,
                            "email": order.email,
                            "reason": reason,
                        }),
                    ),
                })
            }
            other => Err(StepError::Rejected {
                code: "unknown_step".into(),
                detail: format!("the order is at an unknown step `{other}`"),
            }),
        }
    }

    /// The reason recorded when compensation began (the status reason changes on the way).
    async fn cancel_reason(&self, order: &StoredOrder, fallback: String) -> String {
        match self.repository.history(&order.id).await {
            Ok(history) => history
                .iter()
                .rev()
                .find(|h| h.outcome == "failed")
                .map(|h| h.detail.clone())
                .unwrap_or(fallback),
            Err(_) => fallback,
        }
    }
}

/// An order this worker is driving, marked in its set until dropped.
struct Driving {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Driving {
    /// Marks `id` as driven; `None` when it already is.
    fn start(set: &Arc<Mutex<HashSet<String>>>, id: &str) -> Option<Self> {
        let fresh = set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_owned());
        fresh.then(|| Self {
            set: set.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

/// Keeps a located destination in the saga's state; the history's detail for it.
pub(crate) fn record_destination(saga: &mut SagaState, location: &Location) -> String {
    saga.destination = Some((location.lat, location.lon));
    format!("destination at {:.4}, {:.4}", location.lat, location.lon)
}

/// One parcel per warehouse the stock comes from, weighed from the order's lines.
fn parcels(order: &StoredOrder, saga: &SagaState) -> Vec<Parcel> {
    let weights: BTreeMap<&str, i64> = order
        .lines
        .iter()
        .map(|l| (l.product_id.as_str(), l.weight_grams))
        .collect();
    let mut by_warehouse: BTreeMap<String, Parcel> = BTreeMap::new();
    for allocation in &saga.allocations {
        let parcel = by_warehouse
            .entry(allocation.warehouse_id.clone())
            .or_insert_with(|| Parcel {
                warehouse_id: allocation.warehouse_id.clone(),
                lat: allocation.lat,
                lon: allocation.lon,
                weight_grams: 0,
            });
        parcel.weight_grams += weights
            .get(allocation.product_id.as_str())
            .copied()
            .unwrap_or(0)
            * allocation.quantity;
    }
    by_warehouse.into_values().collect()
}

fn event_lines(order: &StoredOrder) -> Vec<serde_json::Value> {
    order
        .lines
        .iter()
        .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity}))
        .collect()
}
