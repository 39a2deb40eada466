//! What an operator does with parked messages: look at them, and put them back
//! to work once the cause is fixed. Replay is safe because every consumer is
//! idempotent.

use anyhow::Context;
use lapin::{
    options::{BasicAckOptions, BasicGetOptions},
    types::{AMQPValue, FieldTable},
};
use usersync_contract::topology::Stage;

use crate::{header_u32, properties, Bus, ATTEMPT_HEADER, ORIGIN_HEADER, PARKED_AT_HEADER, REASON_HEADER};

/// One message in a stage's dead-letter queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub stage: &'static str,
    pub message_id: Option<String>,
    /// The AMQP `type`: message name and schema version.
    pub kind: Option<String>,
    pub tenant_id: Option<String>,
    pub run_id: Option<String>,
    /// Why it was parked (`x-usersync-reason`), or the broker's reason when it
    /// hit the delivery limit.
    pub reason: String,
    /// Tries before it was parked.
    pub attempts: Option<u32>,
    /// When it was parked, from the broker's `x-death` header (seconds since 1970).
    pub parked_at: Option<u64>,
    pub bytes: usize,
}

impl Bus {
    /// The messages parked in a stage's DLQ, oldest first. They stay parked:
    /// they are taken unacknowledged and returned when the channel closes.
    pub async fn dead_letters(&self, stage: Stage) -> anyhow::Result<Vec<DeadLetter>> {
        let queue = stage.dead_letter_queue();
        let channel = self.channel().await?;
        let count = crate::topology::depth(&channel, &queue).await?;
        let mut letters = Vec::new();
        for _ in 0..count {
            let Some(got) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("reading {queue}"))?
            else {
                break;
            };
            letters.push(describe(stage, &got.delivery));
        }
        // Closing the channel returns every unacknowledged message to the queue.
        let _ = channel.close(200, "listed".into()).await;
        Ok(letters)
    }

    /// Moves every message parked in a stage's DLQ back to the queue it came
    /// from, with a fresh attempt count. Each is published with a confirm before
    /// it is acknowledged, so none is lost. Returns how many were moved.
    pub async fn replay_dead_letters(&self, stage: Stage) -> anyhow::Result<usize> {
        let queue = stage.dead_letter_queue();
        let channel = self.channel().await?;
        // Only what is parked now: a message that fails again is parked again, not looped.
        let count = crate::topology::depth(&channel, &queue).await?;
        let mut moved = 0;
        for _ in 0..count {
            let Some(got) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("reading {queue}"))?
            else {
                break;
            };
            let delivery = got.delivery;
            let target = origin_queue(stage, &delivery.properties.headers().clone().unwrap_or_default());
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            let mut kept = FieldTable::default();
            for (key, value) in headers.inner() {
                let key = key.as_str();
                let bookkeeping = [REASON_HEADER, ATTEMPT_HEADER, PARKED_AT_HEADER, ORIGIN_HEADER]
                    .contains(&key)
                    || key.starts_with("x-death")
                    || key.starts_with("x-first-death")
                    || key.starts_with("x-last-death");
                if !bookkeeping {
                    kept.insert(key.into(), value.clone());
                }
            }
            headers = kept;
            headers.insert("x-usersync-replayed".into(), AMQPValue::Boolean(true));
            let kind = delivery
                .properties
                .kind()
                .as_ref()
                .map(|k| k.to_string())
                .unwrap_or_default();
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            self.publish_raw("", &target, &delivery.data, properties(&kind, &id, headers))
                .await?;
            delivery
                .ack(BasicAckOptions::default())
                .await
                .context("acknowledging the replayed message")?;
            moved += 1;
        }
        let _ = channel.close(200, "replayed".into()).await;
        Ok(moved)
    }
}

/// The work queue a parked message came from, so it goes back to its lane:
/// the broker names it in `x-death` when it parked the message itself (the
/// delivery limit); the consumer names it in [`ORIGIN_HEADER`]. Anything else
/// (a message parked by an older version) goes to the stage's first queue.
fn origin_queue(stage: Stage, headers: &FieldTable) -> String {
    let consumed = stage.consumed_queues();
    let from_broker = first_death(headers).and_then(|death| match death.get("queue") {
        Some(AMQPValue::LongString(queue)) => Some(queue.to_string()),
        _ => None,
    });
    let from_consumer = match headers.inner().get(ORIGIN_HEADER) {
        Some(AMQPValue::LongString(queue)) => Some(queue.to_string()),
        _ => None,
    };
    [from_broker, from_consumer]
        .into_iter()
        .flatten()
        .find(|queue| consumed.contains(queue))
        .unwrap_or_else(|| stage.queue())
}

fn first_death(
    headers: &FieldTable,
) -> Option<&std::collections::BTreeMap<lapin::types::ShortString, AMQPValue>> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death.inner()),
            _ => None,
        },
        _ => None,
    }
}

fn describe(stage: Stage, delivery: &lapin::message::Delivery) -> DeadLetter {
    #[derive(serde::Deserialize)]
    struct Ids {
        tenant_id: Option<String>,
        run_id: Option<String>,
    }
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let ids = serde_json::from_slice::<Ids>(&delivery.data).ok();
    let death = first_death(&headers);
    let reason = match headers.inner().get(REASON_HEADER) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        _ => match death.and_then(|d| d.get("reason")) {
            Some(AMQPValue::LongString(reason)) => format!("parked by the broker: {reason}"),
            _ => "unknown".to_owned(),
        },
    };
    let timestamp = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::Timestamp(t)) => Some(*t),
        _ => None,
    };
    let parked_at = timestamp(headers.inner().get(PARKED_AT_HEADER))
        .or_else(|| timestamp(death.and_then(|d| d.get("time"))));
    DeadLetter {
        stage: stage.name(),
        message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
        kind: delivery.properties.kind().as_ref().map(|k| k.to_string()),
        tenant_id: ids.as_ref().and_then(|ids| ids.tenant_id.clone()),
        run_id: ids.and_then(|ids| ids.run_id),
        reason,
        attempts: header_u32(delivery.properties.headers(), ATTEMPT_HEADER),
        parked_at,
        bytes: delivery.data.len(),
    }
}
