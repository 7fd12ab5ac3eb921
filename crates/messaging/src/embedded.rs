//! The embedded transport's consuming side: for each (group, source) one task holds the lease,
//! long-polls the source's feed from the group's cursor, and applies each page of events as one
//! batch ([`consumer::apply_batch`]): one transaction that moves the cursor from the position
//! before the page to its last event (compare-and-set), records the events in the inbox and runs
//! the handler for each, in sequence order. A handler failing on an event commits the events
//! before it and nothing after it; the reader retries from the failing event with backoff. An
//! unreachable source only delays delivery (G2): the cursor stays where it was and the reader
//! backs off and retries.
//!
//! Once caught up, the reader lets events gather (`event_gather_ms` in the common
//! configuration) before it asks again, so a busy source costs a page per gather instead of a
//! page per event.
//!
//! Per poll the reader touches its database only to apply what it received: it renews the lease
//! only once a third of [`LEASE_TTL_MS`] has passed since it last wrote it, and it reads the
//! cursor row once when it takes the lease (and again after another reader moved it), keeping
//! the position in memory in between. The cursor's compare-and-set is what keeps two readers
//! from both applying an event, should a lease lapse unnoticed.

use std::sync::Arc;
use std::time::Duration;

use bazaar_kit::client::ServiceClient;
use bazaar_kit::storage::Database;
use tokio::sync::watch;

use crate::consumer::{self, CursorMove, Failure, Handler, Holding, Lease, LEASE_TTL_MS};
use crate::feed::{FeedPage, FEED_PATH};
use crate::lag::Lag;

/// How long one feed request is held by the source.
const WAIT_MS: u64 = 5_000;
/// Most events in one page, hence in one transaction.
const PAGE: i64 = 100;

pub(crate) struct FeedReader {
    pub db: Database,
    pub client: ServiceClient,
    pub group: String,
    pub source: String,
    pub handler: Arc<dyn Handler>,
    pub holder: String,
    pub lag: Lag,
    /// After a page shorter than [`PAGE`] (the reader has caught up), how long the reader lets
    /// events gather before asking again. Without it, a busy source's feed is read and a
    /// transaction is applied for every event or two; with it, a reader makes at most one
    /// request and transaction per gather per source however busy the source, for at most
    /// this much more delay per event.
    pub gather: Duration,
}

impl FeedReader {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let client = self
            .client
            .clone()
            .with_timeout(Duration::from_millis(WAIT_MS + 5_000));
        let mut backoff = Backoff::default();
        let mut lease = Lease::new(&self.db, &self.group, &self.source, &self.holder);
        // The cursor as this reader last read or moved it; `None`: read it from the database.
        let mut position: Option<i64> = None;
        while !*stop.borrow() {
            match lease.keep().await {
                Ok(Holding::Held { acquired, .. }) => {
                    if acquired {
                        tracing::info!(group = %self.group, source = %self.source, "consuming the feed (lease taken)");
                        position = None;
                    }
                }
                Ok(Holding::NotHeld) => {
                    position = None;
                    // Another instance reads this feed; check again well within its lease.
                    if wait_or_stop(&mut stop, Duration::from_millis(LEASE_TTL_MS as u64 / 3)).await
                    {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, group = %self.group, "cannot take the consumer lease");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                    continue;
                }
            }
            let after = match position {
                Some(after) => after,
                None => match consumer::cursor(&self.db, &self.group, &self.source).await {
                    Ok(read) => *position.insert(read),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the consumer cursor");
                        if wait_or_stop(&mut stop, backoff.next()).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let path = format!("{FEED_PATH}?after={after}&limit={PAGE}&wait_ms={WAIT_MS}");
            let page = tokio::select! {
                page = client.get_json::<FeedPage>(&self.source, &path) => page,
                _ = stopped(&mut stop) => break,
            };
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::debug!(%error, source = %self.source, group = %self.group, "feed unavailable; will retry");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                    continue;
                }
            };
            if after > 0 && page.oldest > after + 1 {
                tracing::error!(source = %self.source, group = %self.group, position = after, oldest = page.oldest,
                    "events between the cursor and the oldest kept event were pruned before this consumer read them");
            }
            let applied = consumer::apply_batch(
                &self.db,
                &self.group,
                &*self.handler,
                &page.events,
                Some(CursorMove {
                    source: &self.source,
                    expected: after,
                }),
            )
            .await;
            let now_at = match applied.count {
                0 => after,
                count => page.events[count - 1].sequence,
            };
            position = Some(now_at);
            self.lag
                .set(&self.group, &self.source, (page.latest - now_at).max(0));
            let Some(failure) = applied.failure else {
                backoff.reset();
                let caught_up = (page.events.len() as i64) < PAGE;
                if caught_up
                    && !page.events.is_empty()
                    && wait_or_stop(&mut stop, self.gather).await
                {
                    break;
                }
                continue;
            };
            match &failure {
                Failure::CursorMoved => {
                    // Another instance consumed this feed: read the cursor again, and find out
                    // whether this one still holds the lease.
                    tracing::info!(source = %self.source, group = %self.group, "the cursor moved under this reader");
                    position = None;
                    lease.check();
                }
                Failure::Handler(_) => {
                    let event = &page.events[applied.count];
                    tracing::warn!(%failure, event_id = %event.id, event_type = %event.event_type,
                        source = %self.source, group = %self.group, "handler failed; will retry the event");
                }
                Failure::Database(_) => {
                    tracing::warn!(%failure, source = %self.source, group = %self.group,
                        "cannot apply the page; will retry");
                }
            }
            if wait_or_stop(&mut stop, backoff.next()).await {
                break;
            }
        }
        if let Err(error) = lease.release().await {
            tracing::debug!(%error, group = %self.group, source = %self.source, "cannot release the consumer lease");
        }
    }
}

/// Resolves once [`Messaging::stop`](crate::Messaging::stop) was called. Dropping every
/// `Messaging` handle is *not* a stop: a service typically keeps only the outbox and the feed
/// router, and its consumers and relay must keep running for the life of the process.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps `pause` unless stopped first; `true` when stopped.
pub(crate) async fn wait_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stopped(stop) => true,
    };
    stopped || *stop.borrow()
}

/// Exponential backoff from 100 ms to 5 s with jitter.
#[derive(Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = 100u64.saturating_mul(1 << self.failures.min(6)).min(5_000);
        Duration::from_millis(base / 2 + fastrand::u64(0..=base / 2))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}
