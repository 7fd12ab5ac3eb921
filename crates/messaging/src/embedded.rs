//! The embedded transport's consuming side: for each (group, source) one task holds the lease,
//! long-polls the source's feed from the stored cursor, and applies each event in order, moving
//! the cursor in the same transaction as the handler's effect. An unreachable source only
//! delays delivery (G2): the cursor stays where it was and the reader backs off and retries.

use std::sync::Arc;
use std::time::Duration;

use bazaar_kit::client::ServiceClient;
use bazaar_kit::storage::Database;
use tokio::sync::watch;

use crate::consumer::{self, CursorMove, Handler};
use crate::feed::{FeedPage, FEED_PATH};
use crate::lag::Lag;

/// How long a lease lasts without renewal: the takeover delay after an instance dies.
pub const LEASE_TTL_MS: i64 = 15_000;
/// How long one feed request is held by the source.
const WAIT_MS: u64 = 5_000;
const PAGE: i64 = 100;

pub(crate) struct FeedReader {
    pub db: Database,
    pub client: ServiceClient,
    pub group: String,
    pub source: String,
    pub handler: Arc<dyn Handler>,
    pub holder: String,
    pub lag: Lag,
}

impl FeedReader {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let client = self
            .client
            .clone()
            .with_timeout(Duration::from_millis(WAIT_MS + 5_000));
        let mut backoff = Backoff::default();
        let mut leased = false;
        while !*stop.borrow() {
            match consumer::lease(
                &self.db,
                &self.group,
                &self.source,
                &self.holder,
                LEASE_TTL_MS,
            )
            .await
            {
                Ok(true) => {
                    if !leased {
                        tracing::info!(group = %self.group, source = %self.source, "consuming the feed (lease taken)");
                    }
                    leased = true;
                }
                Ok(false) => {
                    leased = false;
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
            let position = match consumer::cursor(&self.db, &self.group, &self.source).await {
                Ok(position) => position,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the consumer cursor");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                    continue;
                }
            };
            let path = format!("{FEED_PATH}?after={position}&limit={PAGE}&wait_ms={WAIT_MS}");
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
            if position > 0 && page.oldest > position + 1 {
                tracing::error!(source = %self.source, group = %self.group, position, oldest = page.oldest,
                    "events between the cursor and the oldest kept event were pruned before this consumer read them");
            }
            let mut position = position;
            let mut failed = false;
            for event in &page.events {
                let moved = CursorMove {
                    source: &self.source,
                    expected: position,
                };
                match consumer::apply(&self.db, &self.group, &*self.handler, event, Some(moved))
                    .await
                {
                    Ok(_) => position = event.sequence,
                    Err(error) if consumer::is_cursor_moved(&error) => {
                        failed = true;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, event_id = %event.id, event_type = %event.event_type,
                            source = %self.source, group = %self.group, "handler failed; will retry the event");
                        failed = true;
                        break;
                    }
                }
            }
            self.lag
                .set(&self.group, &self.source, (page.latest - position).max(0));
            if failed {
                if wait_or_stop(&mut stop, backoff.next()).await {
                    break;
                }
            } else {
                backoff.reset();
            }
        }
        if leased {
            let _ =
                consumer::release_lease(&self.db, &self.group, &self.source, &self.holder).await;
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
