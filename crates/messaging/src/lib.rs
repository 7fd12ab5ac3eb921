//! Messaging: how services tell each other what happened, on either transport.
//!
//! - Publishing is a **transactional outbox** ([`Outbox`]): a service appends an event in the
//!   same transaction as the state change (G1).
//! - On the **embedded feed** transport (the default), each service serves its outbox at
//!   `GET /internal/v1/events` (long poll, [`feed`]) and subscribers pull it, applying each page
//!   as one batch in their own database: one transaction moves the cursor (compare-and-set),
//!   records the events in the inbox and runs the handler per event, in sequence order. One
//!   instance per subscriber group reads a feed at a time (a lease in the subscriber's
//!   database, renewed every third of its TTL rather than on every poll).
//! - On **NATS JetStream** (scale-out), a relay publishes the outbox with `Nats-Msg-Id` = event
//!   id and marks events published after the ack; one instance per group (the same lease) pulls
//!   a durable consumer with a batch in flight, applies what has arrived as one batch, and
//!   acknowledges each message after the commit ([`nats`]).
//!
//! On both, a handler failing on an event commits the events before it and nothing after it;
//! the failing event is retried with backoff. Service code is the same on both:
//! [`Messaging::start`] reads `event_transport` from the common configuration. Consumers are
//! exactly-once in effect on both (G3) through the inbox ([`deliver`] is the one-event case);
//! consumer lag is a gauge in `/metrics` ([`lag`]).

mod consumer;
mod embedded;
mod envelope;
pub mod feed;
pub mod lag;
pub mod nats;
mod outbox;
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use bazaar_auth::Verifier;
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::{CommonConfig, EventTransport};
use bazaar_kit::metrics::Metrics;
use bazaar_kit::storage::{now_ms, Database};
use tokio::sync::watch;

pub use consumer::{create_tables, deliver, Handler, HandlerError, HandlerFuture, LEASE_TTL_MS};
pub use envelope::{EventEnvelope, NewEvent};
pub use outbox::Outbox;

use crate::embedded::FeedReader;
use crate::lag::Lag;
use crate::nats::NatsTransport;

/// A service's messaging: its outbox, and the consumers it starts. Cheap to clone.
#[derive(Clone)]
pub struct Messaging {
    db: Database,
    outbox: Outbox,
    client: ServiceClient,
    verifier: Arc<Verifier>,
    nats: Option<NatsTransport>,
    lag: Lag,
    /// Identifies this process as a lease holder.
    instance: String,
    /// How long a feed reader lets events gather once caught up (`event_gather_ms`).
    gather: Duration,
    stop: watch::Sender<bool>,
}

/// The longest `event_gather_ms` accepted: ten seconds.
pub const MAX_GATHER_MS: u64 = 10_000;

impl Messaging {
    /// Opens the outbox and consumer tables in `db` and starts the transport's background work
    /// (the relay on NATS, retention on both). An unreachable NATS server does not stop the
    /// start: the relay and the consumers wait for it, retrying (see `NatsTransport::connect`).
    pub async fn start(
        common: &CommonConfig,
        db: &Database,
        client: ServiceClient,
        verifier: Arc<Verifier>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            common.event_gather_ms <= MAX_GATHER_MS,
            "event_gather_ms is {}: at most {MAX_GATHER_MS} (a longer gather would hold every \
             event back that long)",
            common.event_gather_ms
        );
        let outbox = Outbox::open(db, &common.service).await?;
        create_tables(db).await?;
        let retention = Duration::from_secs(common.event_retention_hours.max(1) * 3600);
        let nats = match common.event_transport {
            EventTransport::Feed => None,
            EventTransport::Nats => Some(
                NatsTransport::connect(&common.nats_url, &common.nats_stream, retention).await?,
            ),
        };
        let (stop, _) = watch::channel(false);
        let messaging = Self {
            db: db.clone(),
            outbox,
            client,
            verifier,
            nats,
            lag: Lag::register(metrics),
            instance: format!("{}-{}", common.service, uuid::Uuid::new_v4().simple()),
            gather: Duration::from_millis(common.event_gather_ms),
            stop,
        };
        if let Some(nats) = &messaging.nats {
            tokio::spawn(nats.clone().relay(
                messaging.outbox.clone(),
                messaging.lag.clone(),
                messaging.stop.subscribe(),
            ));
        }
        tokio::spawn(prune_periodically(
            messaging.db.clone(),
            messaging.outbox.clone(),
            retention,
            messaging.nats.is_some(),
            messaging.stop.subscribe(),
        ));
        Ok(messaging)
    }

    /// The outbox to append events to.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The feed route (`GET /internal/v1/events`), to merge into the service's router. Served on
    /// both transports: on NATS it is still handy for inspection.
    pub fn feed_router(&self) -> axum::Router {
        feed::router(self.outbox.clone(), self.verifier.clone())
    }

    /// Starts describing the consumers of subscriber group `group` (usually the service name).
    pub fn consumer(&self, group: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            messaging: self.clone(),
            group: group.to_owned(),
            subscriptions: Vec::new(),
        }
    }

    /// Stops the relay, the consumers and retention (they also stop when the process exits;
    /// dropping every `Messaging` handle does not stop them).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Subscriptions of one group, started together.
pub struct ConsumerBuilder {
    messaging: Messaging,
    group: String,
    subscriptions: Vec<(String, Arc<dyn Handler>)>,
}

impl ConsumerBuilder {
    /// Applies every event of `source` with `handler`.
    pub fn subscribe(mut self, source: &str, handler: impl Handler) -> Self {
        self.subscriptions
            .push((source.to_owned(), Arc::new(handler)));
        self
    }

    /// Starts one background task per subscription.
    pub fn spawn(self) {
        let messaging = self.messaging;
        for (source, handler) in self.subscriptions {
            let stop = messaging.stop.subscribe();
            match &messaging.nats {
                Some(nats) => {
                    tokio::spawn(nats.clone().consume(
                        messaging.db.clone(),
                        self.group.clone(),
                        source,
                        handler,
                        messaging.instance.clone(),
                        messaging.lag.clone(),
                        stop,
                    ));
                }
                None => {
                    let reader = FeedReader {
                        db: messaging.db.clone(),
                        client: messaging.client.clone(),
                        group: self.group.clone(),
                        source,
                        handler,
                        holder: messaging.instance.clone(),
                        lag: messaging.lag.clone(),
                        gather: messaging.gather,
                    };
                    tokio::spawn(reader.run(stop));
                }
            }
        }
    }
}

/// Deletes events past retention, and inbox records well past it, every ten minutes.
async fn prune_periodically(
    db: Database,
    outbox: Outbox,
    retention: Duration,
    require_published: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cutoff = now_ms() - retention.as_millis() as i64;
        match outbox.prune(cutoff, require_published).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned events past retention"),
            Err(error) => tracing::warn!(%error, "cannot prune the outbox"),
        }
        // Twice the retention: a copy of an event can only arrive while the event is retained.
        let inbox_cutoff = now_ms() - 2 * retention.as_millis() as i64;
        match consumer::prune_inbox(&db, inbox_cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned consumer inbox records past retention"),
            Err(error) => tracing::warn!(%error, "cannot prune the consumer inbox"),
        }
        if embedded::wait_or_stop(&mut stop, Duration::from_secs(600)).await {
            return;
        }
    }
}
