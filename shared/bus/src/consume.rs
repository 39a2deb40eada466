use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use usersync_contract::{topology::Stage, Message};

use crate::{header_u32, properties, retry_tier, Bus, ATTEMPT_HEADER, PARKED_AT_HEADER, REASON_HEADER};

/// How long a stopping service waits for the messages it is handling.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A decoded message with what its consumer needs to know about its delivery.
#[derive(Debug)]
pub struct Incoming<M> {
    pub message: M,
    pub message_id: Option<String>,
    /// 1 on the first try.
    pub attempt: u32,
    pub max_attempts: u32,
}

impl<M> Incoming<M> {
    /// When this try fails too, the message goes to the dead-letter queue.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// Why a handler did not finish a message.
#[derive(Debug)]
pub enum Failure {
    /// Try again later (after `after` when the other side said how long).
    /// Counts as a failed attempt.
    Retry { reason: String, after: Option<Duration> },
    /// Not yet, and not a failure: come back after `after` (rounded up to a
    /// retry tier) with the attempt count unchanged. For waits the other side
    /// asked for (a throttling PBX) and work whose own limits the handler keeps.
    Later { reason: String, after: Duration },
    /// Never going to work: park it in the dead-letter queue.
    Reject { reason: String },
}

impl Failure {
    pub fn retry(reason: impl std::fmt::Display) -> Failure {
        Failure::Retry {
            reason: reason.to_string(),
            after: None,
        }
    }

    pub fn reject(reason: impl std::fmt::Display) -> Failure {
        Failure::Reject {
            reason: reason.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    /// Infrastructure errors (database, broker) are worth another try.
    fn from(err: anyhow::Error) -> Failure {
        Failure::retry(format!("{err:#}"))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions {
    /// Messages handled at once by this replica.
    pub prefetch: u16,
    pub max_attempts: u32,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 16,
            max_attempts: 6,
        }
    }
}

/// What a stage does with each message of its queue.
pub trait Handler<M>: Send + Sync + 'static {
    fn handle(&self, incoming: Incoming<M>) -> impl Future<Output = Result<(), Failure>> + Send;
}

impl Bus {
    /// Runs a stage: consumes its work queue with `handler` until `shutdown`
    /// resolves (the messages in hand are finished first) or the connection ends.
    pub async fn serve<M, H>(
        &self,
        stage: Stage,
        options: ConsumeOptions,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        M: Message + Send + 'static,
        H: Handler<M>,
    {
        let handler = Arc::new(handler);
        let handle = move |incoming| {
            let handler = Arc::clone(&handler);
            async move { handler.handle(incoming).await }
        };
        self.consume_until(stage, options, handle, shutdown).await
    }

    /// Consumes a stage's work queue until the connection ends. Each message is
    /// handled in its own task; it is acknowledged only after the handler
    /// succeeded, or after it was moved to a retry queue or the DLQ.
    pub async fn consume<M, H, Fut>(
        &self,
        stage: Stage,
        options: ConsumeOptions,
        handler: H,
    ) -> anyhow::Result<()>
    where
        M: Message + Send + 'static,
        H: Fn(Incoming<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        self.consume_until(stage, options, handler, std::future::pending())
            .await
    }

    /// Consumes until `shutdown` resolves, then stops taking deliveries and
    /// lets the messages in hand finish (for [`DRAIN_TIMEOUT`] at most; what is
    /// still unfinished then is redelivered after the process ends).
    async fn consume_until<M, H, Fut>(
        &self,
        stage: Stage,
        options: ConsumeOptions,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        M: Message + Send + 'static,
        H: Fn(Incoming<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        // One channel and consumer per queue, each with its own prefetch: the
        // fetcher's scheduled requests can never take the capacity of manual ones.
        let queues = stage.consumed_queues();
        let mut consumers = Vec::with_capacity(queues.len());
        let mut channels = Vec::with_capacity(queues.len());
        for queue in &queues {
            let channel = self.channel().await?;
            channel
                .basic_qos(options.prefetch, BasicQosOptions::default())
                .await
                .context("setting the prefetch")?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("usersync-{}-{}", stage.name(), uuid::Uuid::new_v4()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            tracing::info!(%queue, prefetch = options.prefetch, "consuming");
            channels.push((channel, consumer.tag()));
            consumers.push(consumer);
        }
        // Present from the start, so a dashboard shows 0 rather than nothing.
        metrics::counter!("usersync_retries_total", "stage" => stage.name()).increment(0);
        let queue = queues.join(", ");
        let mut deliveries = futures::stream::select_all(consumers);
        let handler = Arc::new(handler);
        let in_hand = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let delivery = tokio::select! {
                delivery = deliveries.next() => delivery,
                () = &mut shutdown => break,
            };
            let Some(delivery) = delivery else {
                anyhow::bail!("the broker closed the consumer of {queue}");
            };
            let delivery = delivery.with_context(|| format!("receiving from {queue}"))?;
            let bus = self.clone();
            let handler = Arc::clone(&handler);
            in_hand.spawn(async move {
                if let Err(err) = bus.handle(stage, options, delivery, handler).await {
                    tracing::error!(error = %format!("{err:#}"), "could not settle a message; it will be redelivered");
                }
            });
        }
        tracing::info!(%queue, in_hand = in_hand.len(), "shutting down: finishing the messages in hand");
        for (channel, tag) in &channels {
            let _ = channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await;
        }
        in_hand.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, in_hand.wait()).await.is_err() {
            tracing::warn!(%queue, "messages still in hand after {DRAIN_TIMEOUT:?}; they will be redelivered");
        }
        Ok(())
    }

    async fn handle<M, H, Fut>(
        &self,
        stage: Stage,
        options: ConsumeOptions,
        delivery: Delivery,
        handler: Arc<H>,
    ) -> anyhow::Result<()>
    where
        M: Message + Send + 'static,
        H: Fn(Incoming<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let attempt = header_u32(delivery.properties.headers(), ATTEMPT_HEADER).unwrap_or(1);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        let outcome = match serde_json::from_slice::<M>(&delivery.data) {
            Err(err) => Err(Failure::reject(format!("not a valid {} message: {err}", M::TYPE))),
            Ok(message) => {
                let incoming = Incoming {
                    message,
                    message_id,
                    attempt,
                    max_attempts: options.max_attempts,
                };
                // Every log line of the handler carries the tenant and run it works for.
                let span = message_span(stage, &delivery.data);
                // A panicking handler must not leave the message unsettled.
                match tokio::spawn(handler(incoming).instrument(span)).await {
                    Ok(result) => result,
                    Err(panic) => Err(Failure::reject(format!("the handler panicked: {panic}"))),
                }
            }
        };
        let label = match &outcome {
            Ok(()) => "ok",
            Err(Failure::Later { .. }) => "retried",
            Err(Failure::Retry { .. }) if attempt < options.max_attempts => "retried",
            Err(_) => "dead_lettered",
        };
        metrics::counter!("usersync_messages_total", "stage" => stage.name(), "outcome" => label)
            .increment(1);
        match outcome {
            Ok(()) => {}
            Err(Failure::Retry { reason, after }) if attempt < options.max_attempts => {
                let wanted = after.unwrap_or_else(|| backoff(attempt));
                let tier = retry_tier(wanted);
                tracing::warn!(stage = stage.name(), attempt, delay_s = tier, %reason, "will retry");
                metrics::counter!("usersync_retries_total", "stage" => stage.name()).increment(1);
                self.republish(&delivery, &stage.retry_queue(tier), attempt + 1, None)
                    .await?;
            }
            Err(Failure::Later { reason, after }) => {
                let tier = retry_tier(after);
                tracing::info!(stage = stage.name(), attempt, delay_s = tier, %reason, "not yet: will come back");
                metrics::counter!("usersync_retries_total", "stage" => stage.name()).increment(1);
                self.republish(&delivery, &stage.retry_queue(tier), attempt, None)
                    .await?;
            }
            Err(Failure::Retry { reason, .. } | Failure::Reject { reason }) => {
                tracing::error!(stage = stage.name(), attempt, %reason, "moved to the dead-letter queue");
                self.republish(&delivery, &stage.dead_letter_queue(), attempt, Some(&reason))
                    .await?;
            }
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .context("acknowledging")?;
        Ok(())
    }

    /// Copies a delivery to another queue (through the default exchange) with
    /// its attempt count and, for the DLQ, the reason.
    async fn republish(
        &self,
        delivery: &Delivery,
        queue: &str,
        attempt: u32,
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
        if let Some(reason) = reason {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            headers.insert(PARKED_AT_HEADER.into(), AMQPValue::Timestamp(now));
        }
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default();
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let result = self
            .publish_raw("", queue, &delivery.data, properties(&kind, &id, headers))
            .await;
        if result.is_err() {
            // Leave it to the broker: it comes back and is tried again.
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
        result
    }
}

/// The ids every message carries at its top level, read without decoding the rest.
#[derive(serde::Deserialize)]
struct MessageIds {
    tenant_id: Option<String>,
    run_id: Option<String>,
}

/// A span naming the stage, tenant and run of a message (empty where it has none).
fn message_span(stage: Stage, body: &[u8]) -> tracing::Span {
    let ids = serde_json::from_slice::<MessageIds>(body).ok();
    let tenant_id = ids
        .as_ref()
        .and_then(|ids| ids.tenant_id.as_deref())
        .unwrap_or("");
    let run_id = ids.as_ref().and_then(|ids| ids.run_id.as_deref()).unwrap_or("");
    tracing::info_span!("message", stage = stage.name(), tenant_id, run_id)
}

/// Delay before the next try when the other side did not say: grows with the attempt.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(match attempt {
        0 | 1 => 1,
        2 => 5,
        3 | 4 => 30,
        _ => 300,
    })
}
