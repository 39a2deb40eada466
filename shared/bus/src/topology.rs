use anyhow::Context;
use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, ExchangeKind,
};
use usersync_contract::topology::{
    Stage, MANUAL_ROUTING_KEY, PIPELINE_EXCHANGE, RESYNC_EXCHANGE, RETRY_DELAYS_SECS,
    SCHEDULED_REQUESTS_QUEUE, SCHEDULED_ROUTING_KEY,
};

/// How often a work message may be delivered before the broker parks it in the
/// stage's DLQ (a consumer that crashes on it every time).
const DELIVERY_LIMIT: i64 = 10;

/// Declares exchanges, queues and bindings. Safe to run from every replica at every start.
pub(crate) async fn declare(channel: &Channel) -> anyhow::Result<()> {
    for exchange in [RESYNC_EXCHANGE, PIPELINE_EXCHANGE] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {exchange}"))?;
    }
    for stage in Stage::ALL {
        declare_stage(channel, stage).await?;
    }
    // Manual requests to the fetcher's work queue; scheduled ones to a queue of
    // their own that the fetcher consumes with separate capacity.
    let requests = Stage::Fetcher.queue();
    bind(channel, &requests, RESYNC_EXCHANGE, MANUAL_ROUTING_KEY).await?;
    bind(
        channel,
        SCHEDULED_REQUESTS_QUEUE,
        RESYNC_EXCHANGE,
        SCHEDULED_ROUTING_KEY,
    )
    .await?;
    // Earlier versions bound both keys to the work queue; unbinding is a no-op when absent.
    channel
        .queue_unbind(
            requests.as_str().into(),
            RESYNC_EXCHANGE.into(),
            SCHEDULED_ROUTING_KEY.into(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("unbinding {requests} from {RESYNC_EXCHANGE}/{SCHEDULED_ROUTING_KEY}"))?;
    Ok(())
}

/// A work queue: quorum, parked in the stage's DLQ after too many deliveries.
fn work_queue_args(stage: Stage) -> FieldTable {
    let mut args = quorum();
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(PIPELINE_EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(stage.dead_letter_queue().into()),
    );
    args
}

async fn declare_stage(channel: &Channel, stage: Stage) -> anyhow::Result<()> {
    let dlq = stage.dead_letter_queue();
    declare_queue(channel, &dlq, quorum()).await?;
    bind(channel, &dlq, PIPELINE_EXCHANGE, &dlq).await?;
    // Every lane's work queue, each with retry tiers of its own: a message
    // that waits out a tier comes back to the lane it was taken from.
    for work in stage.consumed_queues() {
        declare_queue(channel, &work, work_queue_args(stage)).await?;
        bind(channel, &work, PIPELINE_EXCHANGE, &work).await?;
        for delay in RETRY_DELAYS_SECS {
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::from(delay) * 1000),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(PIPELINE_EXCHANGE.into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(work.clone().into()),
            );
            declare_queue(channel, &stage.retry_queue_of(&work, delay), args).await?;
        }
    }
    Ok(())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> anyhow::Result<()> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .with_context(|| format!("declaring queue {name}"))?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding {queue} to {exchange}/{key}"))
}

pub(crate) async fn depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("inspecting queue {queue}"))?;
    Ok(declared.message_count())
}
