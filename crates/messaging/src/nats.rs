//! The NATS JetStream transport (scale-out profile). Publishing: a relay reads the outbox in
//! sequence order and publishes each event with `Nats-Msg-Id` = event id, marking it published
//! only after JetStream acknowledged it; a crash between the two republishes, and the stream's
//! duplicate window drops the copy. Consuming: a durable pull consumer per (group, source) with
//! one message in flight, so events apply in sequence order as on the feed; each message is
//! applied through the inbox transaction and acknowledged after the commit, so a redelivery
//! after a crash changes nothing (G3, G7). A stopping consumer hands its unapplied message back
//! at once; one that dies leaves it to the ack wait ([`ACK_WAIT`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use bazaar_kit::storage::Database;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::consumer::{self, Handler};
use crate::embedded::{stopped, wait_or_stop, Backoff};
use crate::envelope::EventEnvelope;
use crate::lag::Lag;
use crate::outbox::Outbox;

/// A connection to JetStream and the stream every service publishes into.
#[derive(Clone)]
pub struct NatsTransport {
    context: jetstream::Context,
    stream: String,
}

impl NatsTransport {
    /// Connects and creates the stream if needed, keeping events for `retention`.
    pub async fn connect(url: &str, stream: &str, retention: Duration) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("bazaar")
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
        let context = jetstream::new(client);
        context
            .get_or_create_stream(jetstream::stream::Config {
                name: stream.to_owned(),
                subjects: vec![format!("{}.>", subject_prefix(stream))],
                max_age: retention,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream {stream}: {e}"))?;
        Ok(Self {
            context,
            stream: stream.to_owned(),
        })
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
        let events = outbox.unpublished(100).await?;
        for event in &events {
            self.publish(event).await?;
            outbox.mark_published(event.sequence).await?;
        }
        Ok(events.len())
    }

    /// Consumes `source`'s events for `group` until `stop`.
    pub(crate) async fn consume(
        self,
        db: Database,
        group: String,
        source: String,
        handler: Arc<dyn Handler>,
        lag: Lag,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::default();
        while !*stop.borrow() {
            let outcome = self
                .consume_until_error(&db, &group, &source, &*handler, &lag, &mut stop)
                .await;
            match outcome {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, %group, %source, "JetStream consumer failed; reconnecting");
                    if wait_or_stop(&mut stop, backoff.next()).await {
                        break;
                    }
                }
            }
        }
    }

    /// Applies messages until `stop` (`Ok`) or a JetStream error.
    async fn consume_until_error(
        &self,
        db: &Database,
        group: &str,
        source: &str,
        handler: &dyn Handler,
        lag: &Lag,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let stream = self.context.get_stream(&self.stream).await?;
        let name = format!("{group}-{source}");
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{}.{source}.>", subject_prefix(&self.stream)),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    // One message in flight per group: events apply in sequence order, and a
                    // failing event is retried before the next one (as on the feed transport),
                    // whichever instance of the group receives it.
                    max_ack_pending: 1,
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer.messages().await?;
        if let Ok(info) = consumer.info().await {
            lag.set(group, source, info.num_pending as i64);
        }
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_secs(5), messages.next()) => next,
                _ = stopped(stop) => {
                    hand_back(&mut messages).await;
                    return Ok(());
                }
            };
            let message = match next {
                Err(_) => {
                    // Idle: refresh the lag gauge.
                    if let Ok(info) = consumer.info().await {
                        lag.set(group, source, info.num_pending as i64);
                    }
                    continue;
                }
                Ok(None) => anyhow::bail!("message stream ended"),
                Ok(Some(message)) => message.map_err(|e| anyhow::anyhow!("{e}"))?,
            };
            let event: EventEnvelope = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(error) => {
                    // Not ours to understand: terminate it rather than redeliver forever.
                    tracing::error!(%error, subject = %message.subject, "undecodable event; terminating it");
                    message
                        .ack_with(AckKind::Term)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    continue;
                }
            };
            let outcome = tokio::select! {
                outcome = consumer::deliver(db, group, handler, &event) => outcome,
                _ = stopped(stop) => {
                    // The transaction is abandoned (or, if it had just committed, the inbox
                    // makes the redelivery a no-op): give the message back now rather than
                    // after the ack wait.
                    let _ = message.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
                    hand_back(&mut messages).await;
                    return Ok(());
                }
            };
            match outcome {
                Ok(_) => {
                    // Acknowledge only after the effect committed.
                    message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    // The delivery carries how many messages were still pending behind it.
                    if let Ok(info) = message.info() {
                        lag.set(group, source, info.pending as i64);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, event_id = %event.id, event_type = %event.event_type,
                        %group, "handler failed; JetStream will redeliver");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
    }
}

/// How long JetStream waits for an acknowledgement before redelivering: the delivery delay
/// after a consumer dies without handing its message back. Handlers are short transactions;
/// one that outlasts this is redelivered and the inbox makes the copy a no-op.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Redelivery delay of a message handed back on stop: long enough for this subscription to be
/// gone, so the message goes to the next reader instead of back into the closing one.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// On stop: gives back (negatively acknowledges) a message already received but not applied,
/// so another instance, or this one restarted, gets it without waiting the ack wait.
async fn hand_back(messages: &mut pull::Stream) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
    }
}

/// Subjects are `<stream in lowercase>.<source>.<event type>`, so streams with different names
/// (one per test run) never claim the same subjects.
fn subject_prefix(stream: &str) -> String {
    stream.to_lowercase()
}
