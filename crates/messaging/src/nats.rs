//! The NATS JetStream transport (scale-out profile).
//!
//! **Publishing.** A relay reads the outbox in sequence order and publishes each event with
//! `Nats-Msg-Id` = event id, marking it published only after JetStream acknowledged it; a crash
//! between the two republishes, and the stream's duplicate window drops the copy.
//!
//! **Consuming.** A durable pull consumer per (group, source), with up to [`BATCH`] messages in
//! flight. Only the instance of the group that holds the group's lease on the source (the same
//! [`Lease`] as the feed transport's) pulls, so one instance applies the source's events, in
//! stream order, which is sequence order. It applies the messages that have arrived as one batch
//! ([`consumer::apply_batch`]: one transaction, inbox records, the handler per event in order)
//! and acknowledges each only after the commit, so a redelivery after a crash changes nothing
//! (G3, G7). When the handler fails on a message, the messages before it commit and are
//! acknowledged; the failing one and those after it stay with the consumer (it tells JetStream
//! it is still working on them) and are retried, in order, with backoff. An undecodable message
//! is terminated.
//!
//! Order across holders rests on JetStream serving its redelivery queue before new messages, in
//! stream order. A stopping holder (or one that lost its lease) lets its open pull request run
//! out ([`PULL_EXPIRES`]) so nothing is still on its way to it, hands every message it has not
//! applied back (negative acknowledgement without delay, the last one confirmed) and then
//! releases the lease: the next holder receives those first. A holder that dies cannot hand
//! back: an instance that takes a lapsed lease over (or whose own consumer failed) waits the
//! [`ACK_WAIT`] before pulling, by which time JetStream has queued the dead holder's messages
//! for redelivery. This assumes a batch applies well within the ack wait, as handlers are short
//! transactions. A durable created by an earlier version (one message in flight) has its
//! `max_ack_pending` updated in place, keeping its position.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use bazaar_kit::storage::Database;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::consumer::{self, Handler, Holding, Lease, LEASE_TTL_MS};
use crate::embedded::{stopped, wait_or_stop, Backoff};
use crate::envelope::EventEnvelope;
use crate::lag::Lag;
use crate::outbox::Outbox;

/// A connection to JetStream and the stream every service publishes into.
#[derive(Clone)]
pub struct NatsTransport {
    context: jetstream::Context,
    stream: String,
    /// The stream as it must exist; created (or found) on first use, see [`Self::ensure_stream`].
    stream_config: Arc<jetstream::stream::Config>,
    stream_ready: Arc<tokio::sync::OnceCell<()>>,
}

/// How long start-up waits for NATS before going on without it.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

impl NatsTransport {
    /// Connects and creates the stream if needed, keeping events for `retention`. An unreachable
    /// server does not stop the service from starting: the client keeps connecting in the
    /// background, events wait in the outbox and consumers wait, both retrying with backoff, so
    /// a service restarted during a NATS outage serves its API and catches up when NATS is back.
    /// Only a malformed URL fails.
    pub async fn connect(url: &str, stream: &str, retention: Duration) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("bazaar")
            .connection_timeout(Duration::from_secs(3))
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
        let transport = Self {
            context: jetstream::new(client),
            stream: stream.to_owned(),
            stream_config: Arc::new(jetstream::stream::Config {
                name: stream.to_owned(),
                subjects: vec![format!("{}.>", subject_prefix(stream))],
                max_age: retention,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            }),
            stream_ready: Arc::new(tokio::sync::OnceCell::new()),
        };
        let unready = match tokio::time::timeout(STARTUP_WAIT, transport.ensure_stream()).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {STARTUP_WAIT:?}")),
        };
        if let Some(reason) = unready {
            tracing::warn!(%reason, url,
                "cannot reach NATS; starting without it, events wait until it is back");
        }
        Ok(transport)
    }

    /// Creates the stream if it does not exist yet (once per process; retried by the relay and
    /// the consumers until it succeeds).
    pub async fn ensure_stream(&self) -> anyhow::Result<()> {
        self.stream_ready
            .get_or_try_init(|| async {
                self.context
                    .get_or_create_stream((*self.stream_config).clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        anyhow::anyhow!("cannot create the JetStream stream {}: {e}", self.stream)
                    })
            })
            .await
            .map(|_| ())
    }

    fn subject(&self, event: &EventEnvelope) -> String {
        format!(
            "{}.{}.{}",
            subject_prefix(&self.stream),
            event.source,
            event.event_type
        )
    }

    /// Publishes one event and waits for JetStream's acknowledgement.
    pub async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
        let payload = serde_json::to_vec(event)?;
        self.context
            .publish_with_headers(self.subject(event), headers, payload.into())
            .await?
            .await?;
        Ok(())
    }

    /// Publishes the outbox until `stop`: the relay.
    pub(crate) async fn relay(self, outbox: Outbox, lag: Lag, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        while !*stop.borrow() {
            let woken = outbox.appended();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.relay_once(&outbox).await {
                Ok(published) => {
                    backoff.reset();
                    if let Ok(count) = outbox.unpublished_count().await {
                        lag.set_unpublished(count);
                    }
                    if published > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stopped(&mut stop) => break,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay cannot publish; will retry");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                }
            }
        }
    }

    /// Publishes one batch of unpublished events; how many went out.
    pub async fn relay_once(&self, outbox: &Outbox) -> anyhow::Result<usize> {
        self.ensure_stream().await?;
        let events = outbox.unpublished(100).await?;
        for event in &events {
            self.publish(event).await?;
            outbox.mark_published(event.sequence).await?;
        }
        Ok(events.len())
    }

    /// Consumes `source`'s events for `group` until `stop`, while `holder` holds the lease.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn consume(
        self,
        db: Database,
        group: String,
        source: String,
        handler: Arc<dyn Handler>,
        holder: String,
        lag: Lag,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut lease = Lease::new(&db, &group, &source, &holder);
        let mut backoff = Backoff::default();
        // Pull only from this instant on: until then, messages a previous holder (or this
        // instance, cut short by an error) received and never handed back may still be waiting
        // for their ack wait, and anything pulled before they are queued for redelivery would
        // overtake them.
        let mut pull_from = Instant::now();
        while !*stop.borrow() {
            match lease.keep().await {
                Ok(Holding::Held {
                    acquired,
                    taken_over,
                }) => {
                    if acquired {
                        tracing::info!(%group, %source, "consuming the stream (lease taken)");
                    }
                    if taken_over {
                        tracing::info!(%group, %source, "took a lapsed lease over; waiting the ack wait before pulling");
                        pull_from = pull_from.max(Instant::now() + ACK_WAIT);
                    }
                }
                Ok(Holding::NotHeld) => {
                    // Another instance consumes this source; check again well within its lease.
                    if wait_or_stop(&mut stop, Duration::from_millis(LEASE_TTL_MS as u64 / 3)).await
                    {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, %group, %source, "cannot take the consumer lease");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                    continue;
                }
            }
            let now = Instant::now();
            if pull_from > now {
                // In steps, keeping the lease renewed meanwhile.
                let step = (pull_from - now).min(Duration::from_millis(LEASE_TTL_MS as u64 / 3));
                if wait_or_stop(&mut stop, step).await {
                    break;
                }
                continue;
            }
            let consumer = Consuming {
                db: &db,
                group: &group,
                source: &source,
                handler: &*handler,
                lag: &lag,
            };
            match consumer
                .run(self.durable(&group, &source), &mut lease, &mut stop)
                .await
            {
                Ok(Exit::Stopped) => break,
                Ok(Exit::LeaseLost) => {}
                Ok(Exit::LeaseUnknown(error)) => {
                    tracing::warn!(%error, %group, %source, "cannot renew the consumer lease");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                }
                Err(Cut { error, unreturned }) => {
                    tracing::warn!(%error, %group, %source, "JetStream consumer failed; reconnecting");
                    if unreturned {
                        pull_from = Instant::now() + ACK_WAIT;
                    }
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                }
            }
        }
        if let Err(error) = lease.release().await {
            tracing::debug!(%error, %group, %source, "cannot release the consumer lease");
        }
    }

    /// The group's durable consumer of `source`, created, or updated to this configuration.
    async fn durable(
        &self,
        group: &str,
        source: &str,
    ) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        self.ensure_stream().await?;
        let stream = self.context.get_stream(&self.stream).await?;
        let name = format!("{group}-{source}");
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("{}.{source}.>", subject_prefix(&self.stream)),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: BATCH as i64,
            ..Default::default()
        };
        // Create-or-update: a durable created by an earlier version (one message in flight) gets
        // the new `max_ack_pending` in place and keeps its position.
        match stream.create_consumer(config).await {
            Ok(consumer) => Ok(consumer),
            Err(error) => {
                // A server that refuses the update: the durable as it is still applies every
                // message, in order, only fewer at a time.
                tracing::warn!(%error, consumer = %name, "cannot update the JetStream consumer; using it as it is");
                stream
                    .get_consumer(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
        }
    }
}

/// Most messages in flight to a group's consumer of a source, hence in one transaction.
pub const BATCH: usize = 100;

/// How long a pull request waits for messages. A holder that stops or loses its lease lets its
/// open request run out before handing messages back, so none can still be on its way to it:
/// this bounds how long that takes.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How often an idle holder refreshes the lag gauge from the consumer's info.
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// How the holder's consumer ended.
enum Exit {
    /// Stopped; every message received and not applied was handed back.
    Stopped,
    /// Another instance holds the lease now; every message was handed back.
    LeaseLost,
    /// The lease could not be renewed; every message was handed back.
    LeaseUnknown(sqlx::Error),
}

/// JetStream failed under the holder's consumer.
struct Cut {
    error: anyhow::Error,
    /// Messages received (or on their way) were not handed back: JetStream redelivers them
    /// after their ack wait.
    unreturned: bool,
}

/// Received and not yet applied, in stream order, and the open pull request.
#[derive(Default)]
struct Inflight {
    messages: Vec<jetstream::Message>,
    /// `events[i]` is `messages[i]`'s.
    events: Vec<EventEnvelope>,
    request: Option<pull::Batch>,
}

/// The holder's side of one (group, source).
struct Consuming<'a> {
    db: &'a Database,
    group: &'a str,
    source: &'a str,
    handler: &'a dyn Handler,
    lag: &'a Lag,
}

impl Consuming<'_> {
    /// Pulls and applies until stopped, the lease is gone, or JetStream fails.
    async fn run(
        &self,
        durable: impl std::future::Future<Output = anyhow::Result<jetstream::consumer::PullConsumer>>,
        lease: &mut Lease,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Exit, Cut> {
        let mut consumer = durable.await.map_err(|error| Cut {
            error,
            unreturned: false,
        })?;
        let mut inflight = Inflight::default();
        match self
            .pull_and_apply(&mut consumer, lease, stop, &mut inflight)
            .await
        {
            Ok(exit) => Ok(exit),
            Err(error) => Err(Cut {
                error,
                unreturned: inflight.request.is_some() || !inflight.messages.is_empty(),
            }),
        }
    }

    async fn pull_and_apply(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        lease: &mut Lease,
        stop: &mut watch::Receiver<bool>,
        inflight: &mut Inflight,
    ) -> anyhow::Result<Exit> {
        if let Ok(info) = consumer.info().await {
            self.lag
                .set(self.group, self.source, info.num_pending as i64);
        }
        let mut lag_refreshed = Instant::now();
        let mut failures = Backoff::default();
        loop {
            match lease.keep().await {
                Ok(Holding::Held { .. }) => {}
                Ok(Holding::NotHeld) => {
                    tracing::info!(group = %self.group, source = %self.source, "lost the consumer lease");
                    hand_back(inflight).await;
                    return Ok(Exit::LeaseLost);
                }
                Err(error) => {
                    hand_back(inflight).await;
                    return Ok(Exit::LeaseUnknown(error));
                }
            }
            if inflight.messages.is_empty() {
                // Wait for a message.
                let pull = match &mut inflight.request {
                    Some(pull) => pull,
                    None => inflight.request.insert(
                        consumer
                            .batch()
                            .max_messages(BATCH)
                            .expires(PULL_EXPIRES)
                            .messages()
                            .await?,
                    ),
                };
                let next = tokio::select! {
                    next = pull.next() => next,
                    _ = stopped(stop) => {
                        hand_back(inflight).await;
                        return Ok(Exit::Stopped);
                    }
                };
                match next {
                    None => {
                        // The request ran out: idle.
                        inflight.request = None;
                        if lag_refreshed.elapsed() >= LAG_REFRESH {
                            lag_refreshed = Instant::now();
                            if let Ok(info) = consumer.info().await {
                                self.lag
                                    .set(self.group, self.source, info.num_pending as i64);
                            }
                        }
                        continue;
                    }
                    Some(next) => {
                        let message = next.map_err(|e| anyhow::anyhow!("{e}"))?;
                        receive(message, inflight).await?;
                    }
                }
            }
            // Take whatever else has already arrived.
            while inflight.messages.len() < BATCH {
                let Some(pull) = &mut inflight.request else {
                    break;
                };
                match pull.next().now_or_never() {
                    Some(Some(next)) => {
                        let message = next.map_err(|e| anyhow::anyhow!("{e}"))?;
                        receive(message, inflight).await?;
                    }
                    Some(None) => inflight.request = None,
                    None => break,
                }
            }
            if inflight.events.is_empty() {
                // Only undecodable messages arrived.
                continue;
            }
            // Messages still in the stream behind the last one received, as its delivery says.
            let behind = inflight
                .messages
                .last()
                .and_then(|m| m.info().ok())
                .map_or(0, |info| info.pending as i64);
            self.lag.set(
                self.group,
                self.source,
                behind + inflight.messages.len() as i64,
            );
            let applied = tokio::select! {
                applied = consumer::apply_batch(self.db, self.group, self.handler, &inflight.events, None) => applied,
                _ = stopped(stop) => {
                    // The transaction is abandoned (or, if it had just committed, the inbox
                    // makes the redelivery a no-op).
                    hand_back(inflight).await;
                    return Ok(Exit::Stopped);
                }
            };
            // Acknowledge only what committed.
            inflight.events.drain(..applied.count);
            for message in inflight.messages.drain(..applied.count) {
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            self.lag.set(
                self.group,
                self.source,
                behind + inflight.messages.len() as i64,
            );
            let Some(failure) = applied.failure else {
                failures.reset();
                continue;
            };
            let event = &inflight.events[0];
            tracing::warn!(%failure, event_id = %event.id, event_type = %event.event_type,
                group = %self.group, source = %self.source, "cannot apply the event; will retry it");
            // Keep the failing message and those after it, in order, and retry after a pause;
            // JetStream must not redeliver them meanwhile.
            for message in &inflight.messages {
                message
                    .ack_with(AckKind::Progress)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            if wait_or_stop(stop, failures.next()).await {
                hand_back(inflight).await;
                return Ok(Exit::Stopped);
            }
        }
    }
}

/// Adds a received message to the batch, or terminates it if it is not an event: not ours to
/// understand, and redelivering it forever would stop the source.
async fn receive(message: jetstream::Message, inflight: &mut Inflight) -> anyhow::Result<()> {
    match serde_json::from_slice::<EventEnvelope>(&message.payload) {
        Ok(event) => {
            inflight.messages.push(message);
            inflight.events.push(event);
        }
        Err(error) => {
            tracing::error!(%error, subject = %message.subject, "undecodable event; terminating it");
            message
                .ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}

/// How long JetStream waits for an acknowledgement before redelivering: the delivery delay
/// after a consumer dies without handing its messages back. A batch is a short transaction; one
/// that outlasts this is redelivered and the inbox makes the copy a no-op.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Gives every message this holder received and did not apply back to JetStream, in stream
/// order, so the next holder receives them before anything newer.
async fn hand_back(inflight: &mut Inflight) {
    inflight.events.clear();
    let mut messages = std::mem::take(&mut inflight.messages);
    // The open pull request may still deliver: read it to its end first (the server ends it
    // within PULL_EXPIRES), so that nothing is left on its way to this instance.
    if let Some(mut request) = inflight.request.take() {
        let _ = tokio::time::timeout(PULL_EXPIRES + Duration::from_secs(5), async {
            while let Some(Ok(message)) = request.next().await {
                messages.push(message);
            }
        })
        .await;
    }
    // No delay: no request of this instance is open to receive them again. JetStream handles
    // one connection's acknowledgements in order, so once the last one is confirmed all are in
    // its redelivery queue, before the caller releases the lease.
    let last = messages.len().saturating_sub(1);
    for (index, message) in messages.iter().enumerate() {
        let handed = if index == last {
            message.double_ack_with(AckKind::Nak(None)).await
        } else {
            message.ack_with(AckKind::Nak(None)).await
        };
        if let Err(error) = handed {
            tracing::debug!(%error, "cannot hand a message back; JetStream redelivers it after the ack wait");
        }
    }
}

/// Subjects are `<stream in lowercase>.<source>.<event type>`, so streams with different names
/// (one per test run) never claim the same subjects.
fn subject_prefix(stream: &str) -> String {
    stream.to_lowercase()
}
