//! RabbitMQ: the topology, publishing with confirms, and consuming with manual
//! acks, delayed retries through TTL queues and a dead-letter queue per stage.

mod consume;
mod dead_letters;
mod topology;

use std::time::Duration;

use anyhow::{bail, Context};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use usersync_contract::{
    topology::{Stage, MANUAL_ROUTING_KEY, PIPELINE_EXCHANGE, RESYNC_EXCHANGE, SCHEDULED_ROUTING_KEY},
    Message, ResyncRequest,
};

pub use consume::{ConsumeOptions, Failure, Handler, Incoming};
pub use dead_letters::DeadLetter;

/// Header carrying how many times a message has been tried.
pub const ATTEMPT_HEADER: &str = "x-usersync-attempt";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-usersync-reason";
/// Header carrying when a message was dead-lettered (AMQP timestamp).
pub const PARKED_AT_HEADER: &str = "x-usersync-parked-at";

/// A connection with a publisher-confirms channel. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    connection: std::sync::Arc<Connection>,
    publisher: Channel,
}

impl Bus {
    /// Connects and declares the whole topology (idempotent).
    pub async fn connect(url: &str, service: &str) -> anyhow::Result<Bus> {
        let properties = ConnectionProperties::default().with_connection_name(service.into());
        let connection = Connection::connect(url, properties)
            .await
            .with_context(|| format!("connecting to RabbitMQ at {} (AMQP_URL)", redact(url)))?;
        let publisher = connection.create_channel().await.context("opening a channel")?;
        topology::declare(&publisher)
            .await
            .context("declaring the RabbitMQ topology")?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Bus {
            connection: std::sync::Arc::new(connection),
            publisher,
        })
    }

    /// Publishes a message to a stage's work queue and waits for the broker's confirm.
    pub async fn send<M: Message>(&self, stage: Stage, message: &M, message_id: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message).context("encoding the message")?;
        self.publish_raw(
            PIPELINE_EXCHANGE,
            &stage.queue(),
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
        let routing_key = if matches!(request.trigger.as_str(), "scheduled" | "sweep") {
            SCHEDULED_ROUTING_KEY
        } else {
            MANUAL_ROUTING_KEY
        };
        self.publish_raw(
            RESYNC_EXCHANGE,
            routing_key,
            &body,
            properties(ResyncRequest::TYPE, message_id, FieldTable::default()),
        )
        .await
    }

    /// Publishes bytes as a persistent, mandatory message and waits for the confirm.
    /// An unroutable message is an error, not a silent loss.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let confirm = self
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
        self.connection
            .create_channel()
            .await
            .context("opening a channel")
    }

    /// Messages waiting for delivery in a queue (passive declare); messages
    /// delivered but not yet acknowledged are not counted.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        topology::depth(&self.channel().await?, queue).await
    }
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
    fn redact_hides_credentials() {
        assert_eq!(
            redact("amqp://guest:guest@host:5672/%2f"),
            "amqp://****@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }
}
