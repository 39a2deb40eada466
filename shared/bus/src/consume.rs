use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use futures::{stream::BoxStream, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use usersync_contract::{topology::Stage, Message};
use usersync_runtime::{health::reconnect_backoff, outage, Dependency};

use crate::{
    header_u32, properties, retry_tier, Bus, Link, ATTEMPT_HEADER, ORIGIN_HEADER, PARKED_AT_HEADER,
    REASON_HEADER,
};

/// How long a stopping service waits for the messages it is handling, unless
/// `USERSYNC_SHUTDOWN_SECS` says otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopping consumer waits for the broker to confirm its cancel and
/// hand over what it had prefetched, before it closes the channels anyway.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The database or the broker is unreachable: not the message's fault.
    /// The dependency is reported down (the service takes no new work until
    /// it is back) and the message comes back with the attempt count
    /// unchanged, so no outage, however long, dead-letters it.
    Unavailable { dependency: Dependency, reason: String },
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
    /// A lost database or broker is [`Failure::Unavailable`]; every other
    /// infrastructure error is worth another (counted) try.
    fn from(err: anyhow::Error) -> Failure {
        let reason = format!("{err:#}");
        match outage::classify(&err) {
            Some(dependency) => Failure::Unavailable { dependency, reason },
            None => Failure::retry(reason),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions {
    /// Messages handled at once by this replica.
    pub prefetch: u16,
    pub max_attempts: u32,
    /// How long a stopping service lets the messages in hand finish
    /// (`USERSYNC_SHUTDOWN_SECS`); what is unfinished then goes back to the
    /// queue when the channels close.
    pub shutdown_timeout: Duration,
    /// Bytes of message bodies handled at once per consumed queue, on top of
    /// `prefetch` (RabbitMQ has no byte prefetch): a delivery waits, not
    /// decoded, until the bodies in hand leave room for it. One larger than
    /// the whole budget is handled alone. `None`: no bound but `prefetch`.
    pub bytes_in_hand: Option<usize>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 16,
            max_attempts: 6,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            bytes_in_hand: None,
        }
    }
}

/// What a stage does with each message of its queue.
pub trait Handler<M>: Send + Sync + 'static {
    fn handle(&self, incoming: Incoming<M>) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// One consumer's next item, with the work queue it consumes: a retried
/// message goes back to that queue's tiers, and so stays in its lane.
type Taken = (Arc<str>, Option<lapin::Result<Delivery>>);

/// The consumers of one connection: a channel per queue and their deliveries
/// merged. A consumer whose stream ends yields `None` once, so the loss of any
/// one of them is seen (not only of all).
struct Subscription {
    channels: Vec<(Channel, ShortString)>,
    deliveries: futures::stream::SelectAll<BoxStream<'static, Taken>>,
}

impl Subscription {
    /// Every channel still open: its deliveries can still be acknowledged.
    fn is_live(&self) -> bool {
        self.channels
            .iter()
            .all(|(channel, _)| channel.status().connected())
    }

    /// Stops the consumers, hands back what they had prefetched but nobody
    /// started (nack with requeue), and returns the channels to close later.
    async fn cancel(mut self, queue: &str) -> Vec<(Channel, ShortString)> {
        for (channel, tag) in &self.channels {
            if let Err(err) = channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %err, %queue, "cancelling a consumer");
            }
        }
        let mut ended = 0;
        let mut returned = 0;
        // After the cancel-ok each consumer yields what it buffered, then ends.
        let drain = async {
            while ended < self.channels.len() {
                match self.deliveries.next().await {
                    Some((_, Some(Ok(delivery)))) => {
                        requeue(&delivery).await;
                        returned += 1;
                    }
                    Some((_, Some(Err(_)))) => {}
                    Some((_, None)) => ended += 1,
                    None => break,
                }
            }
        };
        if tokio::time::timeout(CANCEL_TIMEOUT, drain).await.is_err() {
            tracing::warn!(%queue, "the broker did not confirm the cancel in time; closing the channels returns the rest");
        }
        if returned > 0 {
            tracing::info!(%queue, returned, "returned prefetched messages to the queue");
        }
        self.channels
    }
}

/// Room for message bodies in hand, counted in KiB (a semaphore's permits).
#[derive(Clone)]
struct ByteBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl ByteBudget {
    fn new(bytes: usize) -> ByteBudget {
        let total_kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        ByteBudget {
            kib: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits for room for a body of `bytes`; the room is given back when the
    /// permit drops. A body over the whole budget waits for all of it.
    async fn take(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        Arc::clone(&self.kib)
            .acquire_many_owned(kib)
            .await
            .expect("the budget's semaphore is never closed")
    }
}

/// Puts a delivery back at the head of its queue (not a failed attempt).
async fn requeue(delivery: &Delivery) {
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

impl Bus {
    /// Runs a stage: consumes its work queue with `handler` until `shutdown`
    /// resolves, riding out broker and database outages (see [`Bus::consume`]).
    /// On `shutdown` it stops gracefully: the process is marked stopping, the
    /// consumers are cancelled, the prefetched messages nobody started go back
    /// to the queue, the messages in hand get `options.shutdown_timeout` to
    /// finish, and the channels close (returning whatever is left at once).
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

    /// Consumes a stage's work queue for as long as the process runs. Each
    /// message is handled in its own task; it is acknowledged only after the
    /// handler succeeded, or after it was moved to a retry queue or the DLQ.
    /// A lost connection does not end it: it waits for the bus to reconnect
    /// and consumes again. While a dependency is down it takes no new
    /// delivery (what is prefetched stays unacked with the broker).
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
        let queues = stage.consumed_queues();
        let queue = queues.join(", ");
        // Present from the start, so a dashboard shows 0 rather than nothing.
        metrics::counter!("usersync_retries_total", "stage" => stage.name()).increment(0);
        let handler = Arc::new(handler);
        let in_hand = TaskTracker::new();
        // Per queue, so one lane's big messages never take another lane's room.
        let budgets: std::collections::HashMap<Arc<str>, ByteBudget> = match options.bytes_in_hand {
            Some(bytes) => queues
                .iter()
                .map(|queue| (Arc::from(queue.as_str()), ByteBudget::new(bytes)))
                .collect(),
            None => std::collections::HashMap::new(),
        };
        let health = self.health().clone();
        let mut subscription: Option<Subscription> = None;
        // Spaces out tries to consume again when a fresh connection fails at once.
        let mut delays = reconnect_backoff();
        tokio::pin!(shutdown);
        // Ends with a delivery taken from the broker but not started, if any.
        let held: Option<Delivery> = loop {
            let current = match subscription.as_mut() {
                Some(current) => current,
                None => {
                    let link = tokio::select! {
                        link = self.next_link(0) => link,
                        () = &mut shutdown => break None,
                    };
                    match subscribe(&link, stage, &queues, options).await {
                        Ok(fresh) => {
                            delays = reconnect_backoff();
                            subscription.insert(fresh)
                        }
                        Err(err) if outage::classify(&err) == Some(Dependency::Broker) => {
                            self.lost(format!("{err:#}"));
                            let wait = delays
                                .next()
                                .unwrap_or(usersync_runtime::health::MAX_RECONNECT_DELAY);
                            tokio::select! {
                                () = tokio::time::sleep(wait) => continue,
                                () = &mut shutdown => break None,
                            }
                        }
                        // A missing queue or a refused consume: not an outage.
                        Err(err) => return Err(err),
                    }
                }
            };
            // No new work while the database or the broker is down.
            tokio::select! {
                () = health.wait_healthy() => {}
                () = &mut shutdown => break None,
            }
            let item = tokio::select! {
                item = current.deliveries.next() => item,
                () = &mut shutdown => break None,
            };
            let (source, delivery) = match item {
                Some((source, Some(Ok(delivery)))) if current.is_live() => (source, delivery),
                // Buffered by a channel that has since closed: it cannot be
                // acknowledged, and the broker redelivers it anyway.
                Some((_, Some(Ok(_)))) => {
                    self.lost(format!("the channel consuming {queue} closed"));
                    subscription = None;
                    continue;
                }
                Some((_, Some(Err(err)))) => {
                    self.lost(format!("receiving from {queue}: {err}"));
                    subscription = None;
                    continue;
                }
                Some((_, None)) | None => {
                    self.lost(format!("the broker ended the consumer of {queue}"));
                    subscription = None;
                    continue;
                }
            };
            // It may have gone down while this delivery was awaited.
            if !health.is_healthy() {
                tokio::select! {
                    () = health.wait_healthy() => {}
                    () = &mut shutdown => break Some(delivery),
                }
            }
            let bus = self.clone();
            let handler = Arc::clone(&handler);
            let budget = budgets.get(&source).cloned();
            in_hand.spawn(async move {
                // Waits here, in its own task: the other queues' deliveries go on meanwhile.
                let _room = match &budget {
                    Some(budget) => Some(budget.take(delivery.data.len()).await),
                    None => None,
                };
                if let Err(err) = bus.handle(stage, &source, options, delivery, handler).await {
                    tracing::error!(error = %format!("{err:#}"), "could not settle a message; it will be redelivered");
                }
            });
        };
        health.stopping();
        tracing::info!(%queue, in_hand = in_hand.len(), "shutting down: taking no new work, finishing the messages in hand");
        if let Some(delivery) = held {
            requeue(&delivery).await;
        }
        let channels = match subscription {
            Some(current) => current.cancel(&queue).await,
            None => Vec::new(),
        };
        in_hand.close();
        let timeout = options.shutdown_timeout;
        if tokio::time::timeout(timeout, in_hand.wait()).await.is_err() {
            tracing::warn!(%queue, unfinished = in_hand.len(), "messages still in hand after {timeout:?} (USERSYNC_SHUTDOWN_SECS); closing returns them to the queue");
        }
        for (channel, _) in channels {
            if let Err(err) = channel.close(200, "shutting down".into()).await {
                tracing::debug!(error = %err, %queue, "closing a channel");
            }
        }
        tracing::info!(%queue, "stopped consuming");
        Ok(())
    }

    /// Handles one delivery taken from `source` (one of the stage's work queues).
    async fn handle<M, H, Fut>(
        &self,
        stage: Stage,
        source: &str,
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
            Err(Failure::Unavailable { .. }) => "unavailable",
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
                self.republish(&delivery, &stage.retry_queue_of(source, tier), attempt + 1, None)
                    .await?;
            }
            Err(Failure::Later { reason, after }) => {
                let tier = retry_tier(after);
                tracing::info!(stage = stage.name(), attempt, delay_s = tier, %reason, "not yet: will come back");
                metrics::counter!("usersync_retries_total", "stage" => stage.name()).increment(1);
                self.republish(&delivery, &stage.retry_queue_of(source, tier), attempt, None)
                    .await?;
            }
            Err(Failure::Unavailable { dependency, reason }) => {
                // Wakes the dependency's probe; consumers wait until it is back.
                self.health().down(dependency, &reason);
                let tier = retry_tier(Duration::ZERO);
                tracing::warn!(stage = stage.name(), attempt, dependency = dependency.name(), %reason, "the {dependency} is unavailable: the message comes back without using an attempt");
                self.republish(&delivery, &stage.retry_queue_of(source, tier), attempt, None)
                    .await?;
            }
            Err(Failure::Retry { reason, .. } | Failure::Reject { reason }) => {
                tracing::error!(stage = stage.name(), attempt, %reason, "moved to the dead-letter queue");
                self.republish(
                    &delivery,
                    &stage.dead_letter_queue(),
                    attempt,
                    Some((&reason, source)),
                )
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
    /// its attempt count and, for the DLQ, the reason and the work queue it
    /// was taken from.
    async fn republish(
        &self,
        delivery: &Delivery,
        queue: &str,
        attempt: u32,
        parked: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
        if let Some((reason, origin)) = parked {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
            headers.insert(ORIGIN_HEADER.into(), AMQPValue::LongString(origin.into()));
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

/// Opens a channel per consumed queue on `link`, sets its prefetch and consumes.
async fn subscribe(
    link: &Link,
    stage: Stage,
    queues: &[String],
    options: ConsumeOptions,
) -> anyhow::Result<Subscription> {
    // One channel and consumer per queue, each with its own prefetch: the
    // fetcher's scheduled requests can never take the capacity of manual ones.
    let mut channels = Vec::with_capacity(queues.len());
    let mut deliveries = futures::stream::SelectAll::new();
    for queue in queues {
        let channel = link.channel().await?;
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
        tracing::info!(%queue, prefetch = options.prefetch, generation = link.generation, "consuming");
        channels.push((channel, consumer.tag()));
        let source: Arc<str> = Arc::from(queue.as_str());
        let end = Arc::clone(&source);
        deliveries.push(
            consumer
                .map(move |item| (Arc::clone(&source), Some(item)))
                .chain(futures::stream::once(async move { (end, None) }))
                .boxed(),
        );
    }
    Ok(Subscription { channels, deliveries })
}
