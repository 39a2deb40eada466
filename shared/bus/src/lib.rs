//! RabbitMQ: the topology, publishing with confirms, and consuming with manual
//! acks, delayed retries through TTL queues and a dead-letter queue per stage.

mod consume;
mod dead_letters;
mod topology;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
    uri::AMQPUri,
    BasicProperties, Channel, Connection, ConnectionProperties, ConnectionState, ErrorKind,
};
use tokio::sync::watch;
use usersync_contract::{
    topology::{Lane, Stage, PIPELINE_EXCHANGE, RESYNC_EXCHANGE},
    Message, ResyncRequest,
};
use usersync_runtime::{health::reconnect_backoff, outage, Dependency, Health};

pub use consume::{ConsumeOptions, Failure, Handler, Incoming, DEFAULT_SHUTDOWN_TIMEOUT};
pub use dead_letters::DeadLetter;

/// Header carrying how many times a message has been tried.
pub const ATTEMPT_HEADER: &str = "x-usersync-attempt";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-usersync-reason";
/// Header carrying the work queue a message was taken from when the consumer
/// parked it: replay returns it there, to its lane.
pub const ORIGIN_HEADER: &str = "x-usersync-origin";
/// Header carrying when a message was dead-lettered (AMQP timestamp).
pub const PARKED_AT_HEADER: &str = "x-usersync-parked-at";

/// A connection with a publisher-confirms channel that survives the loss of
/// the connection: it reports the broker down in the process's [`Health`] and
/// reconnects (new connection, topology, confirms) with backoff, forever.
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    service: String,
    health: Health,
    /// The live link, swapped by the one task that reconnects; `None` while
    /// disconnected. A watch, so consumers can wait for the next link.
    link: watch::Sender<Option<Link>>,
    /// Closed on purpose (shutting down): never reconnect.
    closed: AtomicBool,
}

/// One connection and its publisher channel.
#[derive(Clone)]
pub(crate) struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
    /// Counts connections: tells a consumer whether its channels are of the current one.
    pub(crate) generation: u64,
}

impl Link {
    fn is_alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        self.connection
            .create_channel()
            .await
            .context("opening a channel")
    }
}

impl Bus {
    /// For one-shot clients (the CLI): connects once and fails at once when
    /// the broker cannot be reached. The bus still reconnects if the
    /// connection is lost later.
    pub async fn connect(url: &str, service: &str) -> anyhow::Result<Bus> {
        let health = Health::new(&[Dependency::Broker]);
        let uri = parse_url(url)?;
        let link = open(&uri, service, 1)
            .await
            .with_context(|| connect_failed(url))?;
        Ok(Bus::supervise(uri, service, health, link))
    }

    /// For services: connects, retrying while the broker is unreachable
    /// (forever, with backoff; `/healthz` says "not connected yet"), and
    /// reports the broker up in `health`. A configuration error (an AMQP_URL
    /// that does not parse, wrong credentials, a vhost that does not exist)
    /// fails at once: retrying cannot fix it.
    pub async fn start(url: &str, service: &str, health: &Health) -> anyhow::Result<Bus> {
        let uri = parse_url(url)?;
        let mut delays = reconnect_backoff();
        let mut logged = false;
        let link = loop {
            match open(&uri, service, 1).await {
                Ok(link) => break link,
                Err(err) if is_configuration_error(&err) => {
                    return Err(err).with_context(|| {
                        format!(
                            "{}: the broker refused the login or the vhost; fix the user, password or vhost in AMQP_URL",
                            connect_failed(url)
                        )
                    });
                }
                Err(err) => {
                    let reason = format!("{:#}", err.context(connect_failed(url)));
                    if !logged {
                        tracing::warn!(%reason, "RabbitMQ is not reachable yet; retrying until it is");
                        logged = true;
                    }
                    health.down(Dependency::Broker, &reason);
                    tokio::time::sleep(
                        delays
                            .next()
                            .unwrap_or(usersync_runtime::health::MAX_RECONNECT_DELAY),
                    )
                    .await;
                }
            }
        };
        Ok(Bus::supervise(uri, service, health.clone(), link))
    }

    /// Reports the broker up and starts the one task that reconnects: the
    /// health watch's probe (every few seconds while up, at once when anyone
    /// reports the broker down, with backoff while it is down).
    fn supervise(uri: AMQPUri, service: &str, health: Health, link: Link) -> Bus {
        health.up(Dependency::Broker);
        let bus = Bus {
            inner: Arc::new(Inner {
                uri,
                service: service.to_owned(),
                health: health.clone(),
                link: watch::Sender::new(Some(link)),
                closed: AtomicBool::new(false),
            }),
        };
        // The task holds a weak reference, so it ends with the last clone of the bus.
        let weak = Arc::downgrade(&bus.inner);
        health.watch(Dependency::Broker, move || {
            let weak = weak.clone();
            async move {
                match weak.upgrade() {
                    Some(inner) => Bus { inner }.ensure_connected().await,
                    // Nothing left to reconnect for: report up so the probe idles.
                    None => Ok(()),
                }
            }
        });
        bus
    }

    /// The probe: Ok while the link is alive; otherwise one try at a new one.
    async fn ensure_connected(&self) -> anyhow::Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let current = self.inner.link.borrow().clone();
        if let Some(link) = &current {
            if link.is_alive() {
                return Ok(());
            }
        }
        // Disconnected: publishing fails fast from now on.
        self.inner.link.send_replace(None);
        let generation = current.map_or(0, |link| link.generation) + 1;
        let link = open(&self.inner.uri, &self.inner.service, generation)
            .await
            .context("reconnecting to RabbitMQ (AMQP_URL)")?;
        tracing::info!(generation, "reconnected to RabbitMQ; topology declared");
        self.inner.link.send_replace(Some(link));
        Ok(())
    }

    /// The process's health, as this bus reports the broker in it.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// The current link, or a clear error while reconnecting.
    pub(crate) fn link(&self) -> anyhow::Result<Link> {
        match self.inner.link.borrow().as_ref() {
            Some(link) if link.is_alive() => Ok(link.clone()),
            _ => Err(anyhow::Error::new(lapin::Error::from(ErrorKind::InvalidConnectionState(
                ConnectionState::Closed,
            )))
            .context("not connected to RabbitMQ (reconnecting): nothing was sent; try again once /healthz says the broker is back")),
        }
    }

    /// Waits for a live link newer than `after` (a generation; 0 for any).
    pub(crate) async fn next_link(&self, after: u64) -> Link {
        let mut links = self.inner.link.subscribe();
        loop {
            if let Some(link) = links.borrow_and_update().as_ref() {
                if link.generation > after && link.is_alive() {
                    return link.clone();
                }
            }
            if links.changed().await.is_err() {
                // The sender lives in `self`; this cannot happen.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Someone saw the connection fail: say so, which wakes the reconnecting probe.
    pub(crate) fn lost(&self, reason: impl std::fmt::Display) {
        self.inner.health.down(Dependency::Broker, reason);
    }

    /// Reports the broker down when `err` says the connection is gone.
    fn note_outage(&self, err: &anyhow::Error) {
        if outage::classify(err) == Some(Dependency::Broker) {
            self.lost(format!("{err:#}"));
        }
    }

    /// Publishes a message to a stage's first work queue ([`Stage::queue`])
    /// and waits for the broker's confirm. A run's pages and batches go with
    /// [`Bus::send_in`], in the lane of the run.
    pub async fn send<M: Message>(&self, stage: Stage, message: &M, message_id: &str) -> anyhow::Result<()> {
        self.send_to(&stage.queue(), message, message_id).await
    }

    /// Publishes a message to the work queue of `lane` in `stage` (see
    /// [`Lane::for_trigger`]) and waits for the broker's confirm.
    pub async fn send_in<M: Message>(
        &self,
        stage: Stage,
        lane: Lane,
        message: &M,
        message_id: &str,
    ) -> anyhow::Result<()> {
        self.send_to(&stage.lane_queue(lane), message, message_id).await
    }

    async fn send_to<M: Message>(&self, queue: &str, message: &M, message_id: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message).context("encoding the message")?;
        self.publish_raw(
            PIPELINE_EXCHANGE,
            queue,
            &body,
            properties(M::TYPE, message_id, FieldTable::default()),
        )
        .await
    }

    /// Publishes a resync request to the resync exchange.
    pub async fn request_resync(&self, request: &ResyncRequest, message_id: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(request).context("encoding the resync request")?;
        // The scheduler's own triggers wait in the scheduled queue; anything
        // a person or their tool asks for goes ahead of them.
        let routing_key = Lane::for_trigger(&request.trigger).resync_routing_key();
        self.publish_raw(
            RESYNC_EXCHANGE,
            routing_key,
            &body,
            properties(ResyncRequest::TYPE, message_id, FieldTable::default()),
        )
        .await
    }

    /// Publishes bytes as a persistent, mandatory message and waits for the confirm.
    /// An unroutable message is an error, not a silent loss. While the
    /// connection is down it fails at once.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let result = self
            .publish_on(&self.link()?, exchange, routing_key, body, properties)
            .await;
        if let Err(err) = &result {
            self.note_outage(err);
        }
        result
    }

    async fn publish_on(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .with_context(|| format!("publishing to {exchange}/{routing_key}"))?
            .await
            .with_context(|| format!("waiting for the broker to confirm {exchange}/{routing_key}"))?;
        if confirm.is_nack() {
            bail!("the broker refused a message for {exchange}/{routing_key}");
        }
        if confirm.take_message().is_some() {
            bail!("no queue is bound for {exchange}/{routing_key}: is the topology declared?");
        }
        Ok(())
    }

    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        let result = self.link()?.channel().await;
        if let Err(err) = &result {
            self.note_outage(err);
        }
        result
    }

    /// Messages waiting for delivery in a queue (passive declare); messages
    /// delivered but not yet acknowledged are not counted.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        topology::depth(&self.channel().await?, queue).await
    }

    /// Closes the connection cleanly (at the end of a graceful stop): what
    /// this process still holds unacked goes back to its queues at once. The
    /// bus stays disconnected; publishing fails from then on.
    pub async fn close(&self) {
        // Set first, so the probe does not take the closing for an outage.
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(link) = self.inner.link.send_replace(None) {
            if let Err(err) = link.connection.close(200, "shutting down".into()).await {
                tracing::debug!(error = %err, "closing the RabbitMQ connection");
            }
        }
    }
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A new connection with the topology declared and a confirming publisher channel.
async fn open(uri: &AMQPUri, service: &str, generation: u64) -> anyhow::Result<Link> {
    let properties = ConnectionProperties::default().with_connection_name(service.into());
    // A host that drops packets would otherwise hold the one reconnecting task for minutes.
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri.clone(), properties))
        .await
        .map_err(|_| {
            anyhow::Error::new(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            )))
        })
        .and_then(|connected| connected.map_err(anyhow::Error::new))
        .context("connecting to RabbitMQ")?;
    let publisher = connection.create_channel().await.context("opening a channel")?;
    topology::declare(&publisher)
        .await
        .context("declaring the RabbitMQ topology")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    Ok(Link {
        connection: Arc::new(connection),
        publisher,
        generation,
    })
}

/// The largest AMQP frame asked for when `AMQP_URL` names none
/// (`?frame_max=`). The client keeps a send and a receive buffer of 32 frames
/// each: at the broker's default (128 KiB) that is 8 MiB a connection, which
/// a service fills up only as a big tenant's traffic goes through, so its
/// peak memory grew with the tenant. A message bigger than a frame goes as
/// several, as before.
const FRAME_MAX: u32 = 32 * 1024;

fn parse_url(url: &str) -> anyhow::Result<AMQPUri> {
    let mut uri = url.parse::<AMQPUri>().map_err(|err| {
        anyhow::anyhow!(
            "AMQP_URL={:?} is not an AMQP URL ({err}): set it to e.g. amqp://user:password@host:5672/%2f",
            redact(url)
        )
    })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

fn connect_failed(url: &str) -> String {
    format!("connecting to RabbitMQ at {} (AMQP_URL)", redact(url))
}

/// The broker answered and said no: wrong user or password (403
/// ACCESS_REFUSED), or no such vhost or no permission on it (530 NOT_ALLOWED).
fn is_configuration_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<lapin::Error>()
            .is_some_and(|err| match err.kind() {
                ErrorKind::ProtocolError(amqp) => matches!(amqp.get_id(), 403 | 530),
                ErrorKind::AuthProviderError(_) => true,
                _ => false,
            })
    })
}

pub(crate) fn properties(kind: &str, message_id: &str, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    // A message published without a type or id (by a foreign client) keeps having none.
    if !kind.is_empty() {
        properties = properties.with_type(kind.into());
    }
    if !message_id.is_empty() {
        properties = properties.with_message_id(message_id.into());
    }
    properties
}

pub(crate) fn header_u32(headers: &Option<FieldTable>, name: &str) -> Option<u32> {
    let value = headers.as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

/// Picks the retry tier for a wanted delay: the shortest tier at least that long.
pub(crate) fn retry_tier(wanted: Duration) -> u32 {
    let tiers = usersync_contract::topology::RETRY_DELAYS_SECS;
    tiers
        .into_iter()
        .find(|&secs| Duration::from_secs(u64::from(secs)) >= wanted)
        .unwrap_or(tiers[tiers.len() - 1])
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}****{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tier_is_the_shortest_that_is_long_enough() {
        assert_eq!(retry_tier(Duration::from_millis(200)), 1);
        assert_eq!(retry_tier(Duration::from_secs_f64(2.128)), 5);
        assert_eq!(retry_tier(Duration::from_secs(30)), 30);
        assert_eq!(retry_tier(Duration::from_secs(3600)), 300);
    }

    #[test]
    fn frames_are_small_unless_the_url_names_a_size() {
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").expect("a URL");
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = parse_url("amqp://127.0.0.1/%2f?frame_max=131072").expect("a URL");
        assert_eq!(uri.query.frame_max, Some(131_072));
    }

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(
            redact("amqp://guest:guest@host:5672/%2f"),
            "amqp://****@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }
}
