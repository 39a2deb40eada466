//! The bus against a real RabbitMQ (amqp on 127.0.0.1:5672, management API on
//! 127.0.0.1:15672, guest/guest). Every test runs in a vhost of its own that is
//! deleted afterwards, so tests run in parallel and leave nothing behind.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use lapin::{
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use serde_json::Value;
use tokio::sync::mpsc;
use usersync_bus::{Bus, ConsumeOptions, Failure, Handler, Incoming, ATTEMPT_HEADER, REASON_HEADER};
use usersync_contract::{
    topology::{Lane, Stage, PIPELINE_EXCHANGE, RETRY_DELAYS_SECS, SCHEDULED_REQUESTS_QUEUE},
    Message, ResyncRequest,
};
use usersync_runtime::{Dependency, Health};

const AMQP_BASE: &str = "amqp://guest:guest@127.0.0.1:5672";
const MANAGEMENT_API: &str = "http://127.0.0.1:15672/api";
/// Long enough for a pass through the 1-second retry tier on a busy machine.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Vhost per test
// ---------------------------------------------------------------------------

/// A vhost of one test, with the management API client to inspect it.
#[derive(Clone)]
struct Vhost {
    name: String,
    http: reqwest::Client,
}

/// Runs `rabbitmqctl` (the broker on this machine) and returns its output.
async fn rabbitmqctl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["--quiet"])
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Vhost {
    async fn create() -> Vhost {
        let vhost = Vhost {
            name: format!("usersync-bus-test-{}", uuid::Uuid::new_v4().simple()),
            http: reqwest::Client::new(),
        };
        vhost
            .management(
                reqwest::Method::PUT,
                &format!("vhosts/{}", vhost.name),
                Some(serde_json::json!({})),
            )
            .await;
        vhost.grant().await;
        vhost
    }

    /// Lets guest use the vhost.
    async fn grant(&self) {
        let all = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        self.management(
            reqwest::Method::PUT,
            &format!("permissions/{}/guest", self.name),
            Some(all),
        )
        .await;
    }

    /// Takes guest's permissions away: every connection attempt is refused
    /// until [`Vhost::grant`], an outage that lasts as long as the test wants.
    async fn revoke(&self) {
        self.management(
            reqwest::Method::DELETE,
            &format!("permissions/{}/guest", self.name),
            None,
        )
        .await;
    }

    /// Force-closes the connections to this vhost named `connection_name`
    /// (as the broker does when an operator or a failover ends them); the
    /// number closed. By `rabbitmqctl`: it sees connections at once, while
    /// the management API lists them only after its next statistics round.
    async fn close_connections(&self, connection_name: &str) -> usize {
        let listed = rabbitmqctl(&["list_connections", "-p", &self.name, "pid", "client_properties"]).await;
        let pids: Vec<&str> = listed
            .lines()
            .filter(|line| line.contains(&format!("\"{connection_name}\"")))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for pid in &pids {
            rabbitmqctl(&["close_connection", pid, "closed by the test"]).await;
        }
        pids.len()
    }

    /// A bus connected to this vhost (its topology declared).
    async fn bus(&self) -> Bus {
        Bus::connect(&self.amqp_url(), "bus-test").await.expect("connect")
    }

    fn amqp_url(&self) -> String {
        format!("{AMQP_BASE}/{}", self.name)
    }

    /// One call to the management API; panics unless it succeeds.
    async fn management(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{MANAGEMENT_API}/{path}"))
            .basic_auth("guest", Some("guest"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .expect("the RabbitMQ management API on 127.0.0.1:15672 (scripts/services-up enables it)");
        let status = response.status();
        assert!(status.is_success(), "{method} {path}: {status}");
        response.json().await.unwrap_or(Value::Null)
    }

    async fn management_get(&self, path: &str) -> Value {
        self.management(reqwest::Method::GET, path, None).await
    }

    /// Every queue of the vhost as the management API lists it.
    async fn queues(&self) -> Vec<Value> {
        match self.management_get(&format!("queues/{}", self.name)).await {
            Value::Array(queues) => queues,
            other => panic!("the queue list is not an array: {other}"),
        }
    }

    /// How many acknowledgements the broker has counted for a queue. A counter
    /// only grows, so a stale statistics sample can never claim an ack too early.
    async fn acks_counted(&self, queue: &str) -> u64 {
        let details = self
            .management_get(&format!("queues/{}/{queue}", self.name))
            .await;
        details["message_stats"]["ack"].as_u64().unwrap_or(0)
    }

    /// The queue's ready and unacknowledged messages as the queue itself last
    /// reported them (every few seconds); None before its first report.
    async fn messages_held(&self, queue: &str) -> Option<(u64, u64)> {
        let details = self
            .management_get(&format!("queues/{}/{queue}", self.name))
            .await;
        Some((
            details["messages_ready"].as_u64()?,
            details["messages_unacknowledged"].as_u64()?,
        ))
    }

    async fn delete(&self) {
        self.management(reqwest::Method::DELETE, &format!("vhosts/{}", self.name), None)
            .await;
    }
}

/// Runs a test in a fresh vhost and deletes the vhost afterwards, also when the test fails.
async fn in_fresh_vhost<F, Fut>(test: F)
where
    F: FnOnce(Vhost) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let vhost = Vhost::create().await;
    let outcome = tokio::spawn(test(vhost.clone())).await;
    vhost.delete().await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a handler saw of one delivery.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    message: ResyncRequest,
    message_id: Option<String>,
    attempt: u32,
}

impl Seen {
    fn of(incoming: &Incoming<ResyncRequest>) -> Seen {
        Seen {
            message: incoming.message.clone(),
            message_id: incoming.message_id.clone(),
            attempt: incoming.attempt,
        }
    }
}

/// Next delivery the handler reported, failing the test after [`DEADLINE`].
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .expect("timed out waiting for the handler")
        .expect("the handler is gone")
}

/// Consumes a stage in the background. The handler reports every delivery it
/// sees, then answers with `decide(attempt)`.
fn consume_in_background<D>(
    bus: &Bus,
    stage: Stage,
    max_attempts: u32,
    decide: D,
) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<Seen>)
where
    D: Fn(u32) -> Result<(), Failure> + Send + Sync + 'static,
{
    let (report, seen) = mpsc::unbounded_channel();
    let bus = bus.clone();
    let options = ConsumeOptions {
        prefetch: 4,
        max_attempts,
        ..ConsumeOptions::default()
    };
    let decide = std::sync::Arc::new(decide);
    let consumer = tokio::spawn(async move {
        let outcome = bus
            .consume(stage, options, move |incoming: Incoming<ResyncRequest>| {
                let report = report.clone();
                let decide = std::sync::Arc::clone(&decide);
                async move {
                    let _ = report.send(Seen::of(&incoming));
                    decide(incoming.attempt)
                }
            })
            .await;
        panic!("the consumer stopped: {outcome:?}");
    });
    (consumer, seen)
}

fn resync_request(tenant_id: &str, trigger: &str) -> ResyncRequest {
    ResyncRequest {
        tenant_id: tenant_id.to_owned(),
        full: true,
        trigger: trigger.to_owned(),
    }
}

async fn open_channel(vhost: &Vhost) -> (Connection, Channel) {
    let connection = Connection::connect(&vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connecting to RabbitMQ");
    let channel = connection.create_channel().await.expect("opening a channel");
    (connection, channel)
}

/// Takes (and acks) the next message of a queue, polling until one is there.
async fn get_next(channel: &Channel, queue: &str) -> lapin::message::Delivery {
    let delivery = eventually(&format!("a message on {queue}"), || async {
        channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
            .map(|message| message.delivery)
    })
    .await;
    delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("acking a fetched message");
    delivery
}

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn header_text(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match header(delivery, name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

fn header_number(delivery: &lapin::message::Delivery, name: &str) -> Option<i64> {
    match *header(delivery, name)? {
        AMQPValue::LongUInt(n) => Some(i64::from(n)),
        AMQPValue::LongInt(n) => Some(i64::from(n)),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::ShortUInt(n) => Some(i64::from(n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(n)),
        _ => None,
    }
}

fn message_id(delivery: &lapin::message::Delivery) -> Option<String> {
    delivery.properties.message_id().as_ref().map(|id| id.to_string())
}

async fn assert_queue_empty(bus: &Bus, queue: &str) {
    assert_eq!(
        bus.queue_depth(queue).await.expect("queue depth"),
        0,
        "{queue} is not empty"
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn declaring_the_topology_twice_gives_quorum_work_and_dead_letter_queues() {
    in_fresh_vhost(|vhost| async move {
        Bus::connect(&vhost.amqp_url(), "bus-test-first")
            .await
            .expect("first declaration");
        Bus::connect(&vhost.amqp_url(), "bus-test-second")
            .await
            .expect("second declaration of the same topology");

        let queues = vhost.queues().await;
        let type_of = |name: &str| {
            queues
                .iter()
                .find(|queue| queue["name"] == name)
                .map(|queue| queue["type"].as_str().unwrap_or_default().to_owned())
        };
        let work_queues = [
            "usersync.fetcher.requests",
            "usersync.differ.pages",
            "usersync.applier.changes",
            "usersync.notifier.events",
        ];
        for (stage, work) in Stage::ALL.into_iter().zip(work_queues) {
            assert_eq!(stage.queue(), work);
            for quorum in [work.to_owned(), format!("usersync.{}.dlq", stage.name())] {
                assert_eq!(type_of(&quorum).as_deref(), Some("quorum"), "queue {quorum}");
            }
            for delay in RETRY_DELAYS_SECS {
                let retry = format!("usersync.{}.retry.{delay}s", stage.name());
                assert!(type_of(&retry).is_some(), "retry tier {retry} is missing");
            }
        }
        assert_eq!(
            type_of(SCHEDULED_REQUESTS_QUEUE).as_deref(),
            Some("quorum"),
            "the scheduled requests' queue"
        );
        // Every lane's work queue is quorum and has retry tiers of its own.
        for stage in Stage::ALL {
            for work in stage.consumed_queues() {
                assert_eq!(type_of(&work).as_deref(), Some("quorum"), "queue {work}");
                for delay in RETRY_DELAYS_SECS {
                    let retry = stage.retry_queue_of(&work, delay);
                    assert!(type_of(&retry).is_some(), "retry tier {retry} is missing");
                }
            }
        }
        for express in ["usersync.differ.express", "usersync.applier.express"] {
            assert!(type_of(express).is_some(), "{express} is missing");
        }
        let work_queues: usize = Stage::ALL.iter().map(|stage| stage.consumed_queues().len()).sum();
        assert_eq!(
            queues.len(),
            Stage::ALL.len() + work_queues * (1 + RETRY_DELAYS_SECS.len())
        );
    })
    .await;
}

#[tokio::test]
async fn a_sent_message_is_handled_once_and_acked() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Fetcher, 6, |_| Ok(()));
        let request = resync_request("acme", "manual");
        bus.send(Stage::Fetcher, &request, "msg-once")
            .await
            .expect("send");

        let first = next_seen(&mut seen).await;
        assert_eq!(
            first,
            Seen {
                message: request,
                message_id: Some("msg-once".into()),
                attempt: 1,
            }
        );
        let work = Stage::Fetcher.queue();
        eventually("the broker to count the ack", || async {
            (vhost.acks_counted(&work).await >= 1).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &work).await;
        assert!(seen.try_recv().is_err(), "the message was handled twice");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn a_retried_message_comes_back_through_the_shortest_tier_and_then_succeeds() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Differ, 6, |attempt| {
            if attempt == 1 {
                Err(Failure::retry("the directory is busy"))
            } else {
                Ok(())
            }
        });
        let request = resync_request("acme", "manual");
        bus.send(Stage::Differ, &request, "msg-retry")
            .await
            .expect("send");

        let first = next_seen(&mut seen).await;
        let retried_at = Instant::now();
        let second = next_seen(&mut seen).await;
        assert_eq!((first.attempt, second.attempt), (1, 2));
        assert_eq!(second.message, request);
        assert_eq!(second.message_id.as_deref(), Some("msg-retry"));
        // It waited out the 1-second tier rather than being requeued at once.
        assert!(
            retried_at.elapsed() >= Duration::from_millis(900),
            "came back after {:?}",
            retried_at.elapsed()
        );

        let work = Stage::Differ.queue();
        eventually("both deliveries to be acked", || async {
            (vhost.acks_counted(&work).await >= 2).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &work).await;
        assert_queue_empty(&bus, &Stage::Differ.retry_queue(1)).await;
        assert_queue_empty(&bus, &Stage::Differ.dead_letter_queue()).await;
        assert!(seen.try_recv().is_err(), "a third delivery after success");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn a_message_put_off_comes_back_without_using_up_its_attempts() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        // Two attempts at most, and put off three times: only failures count.
        let deliveries = std::sync::atomic::AtomicU32::new(0);
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Applier, 2, move |_| {
            if deliveries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
                Err(Failure::Later {
                    reason: "the PBX asked for a pause".into(),
                    after: Duration::from_millis(300),
                })
            } else {
                Ok(())
            }
        });
        let request = resync_request("acme", "manual");
        bus.send(Stage::Applier, &request, "msg-later")
            .await
            .expect("send");
        let mut attempts = Vec::new();
        for _ in 0..4 {
            attempts.push(next_seen(&mut seen).await.attempt);
        }
        assert_eq!(attempts, [1, 1, 1, 1]);
        let work = Stage::Applier.queue();
        eventually("every delivery to be acked", || async {
            (vhost.acks_counted(&work).await >= 4).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &Stage::Applier.dead_letter_queue()).await;
        assert!(seen.try_recv().is_err(), "a fifth delivery after success");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_ends_in_the_dead_letter_queue_with_its_reason() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Applier, 2, |_| {
            Err(Failure::retry("the PBX is down"))
        });
        let request = resync_request("acme", "manual");
        bus.send(Stage::Applier, &request, "msg-doomed")
            .await
            .expect("send");

        let attempts = [
            next_seen(&mut seen).await.attempt,
            next_seen(&mut seen).await.attempt,
        ];
        assert_eq!(attempts, [1, 2]);

        let (_connection, channel) = open_channel(&vhost).await;
        let parked = get_next(&channel, &Stage::Applier.dead_letter_queue()).await;
        let reason = header_text(&parked, REASON_HEADER).expect("the reason header");
        assert!(reason.contains("the PBX is down"), "reason: {reason}");
        assert_eq!(header_number(&parked, ATTEMPT_HEADER), Some(2));
        assert_eq!(message_id(&parked).as_deref(), Some("msg-doomed"));
        let body: ResyncRequest = serde_json::from_slice(&parked.data).expect("the original body");
        assert_eq!(body, request);

        assert_queue_empty(&bus, &Stage::Applier.queue()).await;
        assert!(seen.try_recv().is_err(), "handled again after the last attempt");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn an_express_lane_message_retries_parks_and_replays_in_its_own_lane() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Applier, 2, |_| {
            Err(Failure::retry("the PBX is down"))
        });
        let request = resync_request("acme", "manual");
        bus.send_in(Stage::Applier, Lane::Express, &request, "msg-express")
            .await
            .expect("send");
        let attempts = [
            next_seen(&mut seen).await.attempt,
            next_seen(&mut seen).await.attempt,
        ];
        assert_eq!(attempts, [1, 2]);

        let express = Stage::Applier.lane_queue(Lane::Express);
        assert_eq!(express, "usersync.applier.express");
        // Both tries were taken from the express queue: the retry came back to it.
        eventually("both deliveries acked on the express queue", || async {
            (vhost.acks_counted(&express).await >= 2).then_some(())
        })
        .await;
        assert_eq!(vhost.acks_counted(&Stage::Applier.queue()).await, 0);
        assert_queue_empty(&bus, &Stage::Applier.retry_queue_of(&express, 1)).await;
        eventually("the message parked", || async {
            (bus.queue_depth(&Stage::Applier.dead_letter_queue()).await.ok()? == 1).then_some(())
        })
        .await;
        let listed = bus.dead_letters(Stage::Applier).await.expect("dlq list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].message_id.as_deref(), Some("msg-express"));
        consumer.abort();

        // Listing returns what it read to the queue as its channel closes; the
        // quorum queue counts it again a moment later.
        eventually("the listed message back in the DLQ", || async {
            (bus.queue_depth(&Stage::Applier.dead_letter_queue()).await.ok()? == 1).then_some(())
        })
        .await;
        // Replay puts it back in the lane it came from, not the standard queue.
        assert_eq!(bus.replay_dead_letters(Stage::Applier).await.expect("replay"), 1);
        let (_connection, channel) = open_channel(&vhost).await;
        let replayed = get_next(&channel, &express).await;
        assert_eq!(message_id(&replayed).as_deref(), Some("msg-express"));
        assert_queue_empty(&bus, &Stage::Applier.queue()).await;
        assert_queue_empty(&bus, &Stage::Applier.dead_letter_queue()).await;
    })
    .await;
}

#[tokio::test]
async fn a_rejected_message_goes_straight_to_the_dead_letter_queue() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Notifier, 6, |_| {
            Err(Failure::reject("no such tenant"))
        });
        bus.send(
            Stage::Notifier,
            &resync_request("ghost", "manual"),
            "msg-rejected",
        )
        .await
        .expect("send");

        assert_eq!(next_seen(&mut seen).await.attempt, 1);
        let (_connection, channel) = open_channel(&vhost).await;
        let parked = get_next(&channel, &Stage::Notifier.dead_letter_queue()).await;
        assert_eq!(message_id(&parked).as_deref(), Some("msg-rejected"));
        assert_eq!(header_number(&parked, ATTEMPT_HEADER), Some(1));
        let reason = header_text(&parked, REASON_HEADER).expect("the reason header");
        assert!(reason.contains("no such tenant"), "reason: {reason}");

        assert_queue_empty(&bus, &Stage::Notifier.queue()).await;
        assert!(seen.try_recv().is_err(), "a rejected message was retried");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn an_undecodable_message_goes_straight_to_the_dead_letter_queue() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (consumer, mut seen) = consume_in_background(&bus, Stage::Fetcher, 6, |_| Ok(()));

        let (_connection, channel) = open_channel(&vhost).await;
        let garbage: &[u8] = b"{not json";
        channel
            .basic_publish(
                PIPELINE_EXCHANGE.into(),
                Stage::Fetcher.queue().as_str().into(),
                BasicPublishOptions::default(),
                garbage,
                BasicProperties::default()
                    .with_message_id("msg-garbage".into())
                    .with_headers(FieldTable::default()),
            )
            .await
            .expect("publishing garbage");

        let parked = get_next(&channel, &Stage::Fetcher.dead_letter_queue()).await;
        assert_eq!(parked.data, garbage);
        assert_eq!(message_id(&parked).as_deref(), Some("msg-garbage"));
        assert_eq!(header_number(&parked, ATTEMPT_HEADER), Some(1));
        let reason = header_text(&parked, REASON_HEADER).expect("the reason header");
        assert!(reason.contains(ResyncRequest::TYPE), "reason: {reason}");

        assert_queue_empty(&bus, &Stage::Fetcher.queue()).await;
        assert!(seen.try_recv().is_err(), "the handler saw an undecodable message");
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn manual_and_scheduled_resync_requests_wait_in_separate_queues() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let manual = resync_request("acme", "manual");
        let scheduled = resync_request("globex", "scheduled");
        bus.request_resync(&manual, "resync-manual")
            .await
            .expect("manual resync");
        bus.request_resync(&scheduled, "resync-scheduled")
            .await
            .expect("scheduled resync");

        let (_connection, channel) = open_channel(&vhost).await;
        for (expected, id, queue) in [
            (manual, "resync-manual", Stage::Fetcher.queue()),
            (scheduled, "resync-scheduled", SCHEDULED_REQUESTS_QUEUE.to_owned()),
        ] {
            let delivery = get_next(&channel, &queue).await;
            let request: ResyncRequest = serde_json::from_slice(&delivery.data).expect("a resync request");
            assert_eq!(request, expected);
            assert_eq!(message_id(&delivery).as_deref(), Some(id));
            assert_eq!(
                delivery
                    .properties
                    .kind()
                    .as_ref()
                    .map(|kind| kind.to_string())
                    .as_deref(),
                Some(ResyncRequest::TYPE)
            );
        }
        assert_queue_empty(&bus, &Stage::Fetcher.queue()).await;
        assert_queue_empty(&bus, SCHEDULED_REQUESTS_QUEUE).await;
    })
    .await;
}

/// Holds every message until told to let go, and says when it has one.
struct Gate {
    started: mpsc::UnboundedSender<()>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler<ResyncRequest> for Gate {
    async fn handle(&self, _incoming: Incoming<ResyncRequest>) -> Result<(), Failure> {
        let _ = self.started.send(());
        self.release.notified().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_stopping_service_finishes_the_message_in_hand_before_it_returns() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let (started, mut has_one) = mpsc::unbounded_channel();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let gate = Gate {
            started,
            release: std::sync::Arc::clone(&release),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut serving = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                bus.serve(Stage::Fetcher, ConsumeOptions::default(), gate, shutdown)
                    .await
            })
        };
        bus.send(Stage::Fetcher, &resync_request("acme", "manual"), "msg-drain")
            .await
            .expect("send");
        tokio::time::timeout(DEADLINE, has_one.recv())
            .await
            .expect("the handler to get the message");

        // The queue reports the message in hand before the service is told to stop.
        let work = Stage::Fetcher.queue();
        eventually("the queue to report the message in hand", || async {
            (vhost.messages_held(&work).await == Some((0, 1))).then_some(())
        })
        .await;
        stop.send(()).expect("the service is running");
        // Still draining: serve must not return while the message is in hand.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut serving).await;
        assert!(early.is_err(), "serve returned with a message in hand: {early:?}");
        release.notify_one();
        let result = tokio::time::timeout(DEADLINE, serving)
            .await
            .expect("serve to return after draining")
            .expect("the serve task");
        assert!(result.is_ok(), "{result:?}");
        // Acknowledged, not returned: the queue itself (not a channel's
        // statistics, which may close with it) reports nothing ready or in hand.
        eventually("the queue to report the message acknowledged", || async {
            (vhost.messages_held(&work).await == Some((0, 0))).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &work).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Operations: reserved capacity for manual requests, dead letters
// ---------------------------------------------------------------------------

/// Holds scheduled requests until released; reports manual ones at once.
struct Priorities {
    scheduled_in_hand: mpsc::UnboundedSender<String>,
    manual_done: mpsc::UnboundedSender<String>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler<ResyncRequest> for Priorities {
    async fn handle(&self, incoming: Incoming<ResyncRequest>) -> Result<(), Failure> {
        let request = incoming.message;
        if request.trigger == "scheduled" {
            let _ = self.scheduled_in_hand.send(request.tenant_id);
            self.release.notified().await;
        } else {
            let _ = self.manual_done.send(request.tenant_id);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_manual_request_is_served_while_scheduled_ones_fill_their_capacity() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        for n in 0..6 {
            bus.request_resync(
                &resync_request(&format!("night-{n}"), "scheduled"),
                &format!("s{n}"),
            )
            .await
            .expect("scheduled resync");
        }
        let (scheduled_in_hand, mut scheduled) = mpsc::unbounded_channel();
        let (manual_done, mut manual) = mpsc::unbounded_channel();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let handler = Priorities {
            scheduled_in_hand,
            manual_done,
            release: std::sync::Arc::clone(&release),
        };
        let serving = {
            let bus = bus.clone();
            let options = ConsumeOptions {
                prefetch: 2,
                max_attempts: 3,
                ..ConsumeOptions::default()
            };
            tokio::spawn(async move {
                bus.serve(Stage::Fetcher, options, handler, std::future::pending())
                    .await
            })
        };
        // Every scheduled slot is taken and stays taken.
        for _ in 0..2 {
            tokio::time::timeout(DEADLINE, scheduled.recv())
                .await
                .expect("two scheduled requests in hand");
        }
        bus.request_resync(&resync_request("urgent", "manual"), "m1")
            .await
            .expect("manual resync");
        let served = tokio::time::timeout(DEADLINE, manual.recv())
            .await
            .expect("the manual request is served while scheduled ones block");
        assert_eq!(served.as_deref(), Some("urgent"));
        assert!(
            scheduled.try_recv().is_err(),
            "a third scheduled request was taken beyond its capacity"
        );
        assert_eq!(bus.queue_depth(SCHEDULED_REQUESTS_QUEUE).await.unwrap(), 4);
        serving.abort();
        release.notify_waiters();
    })
    .await;
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_reason_and_replayed_to_work() {
    in_fresh_vhost(|vhost| async move {
        let bus = vhost.bus().await;
        let accept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (consumer, mut seen) = {
            let accept = std::sync::Arc::clone(&accept);
            consume_in_background(&bus, Stage::Fetcher, 3, move |_| {
                if accept.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(Failure::reject("no tenant \"ghost\": create it first"))
                }
            })
        };
        bus.request_resync(&resync_request("ghost", "manual"), "msg-ghost")
            .await
            .expect("resync");
        next_seen(&mut seen).await;
        let dlq = Stage::Fetcher.dead_letter_queue();
        eventually("the message to be parked", || async {
            (bus.queue_depth(&dlq).await.ok()? == 1).then_some(())
        })
        .await;

        let letters = bus.dead_letters(Stage::Fetcher).await.expect("listing");
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter.tenant_id.as_deref(), Some("ghost"));
        assert_eq!(letter.message_id.as_deref(), Some("msg-ghost"));
        assert_eq!(letter.kind.as_deref(), Some(ResyncRequest::TYPE));
        assert!(letter.reason.contains("no tenant"), "{letter:?}");
        assert!(letter.parked_at.is_some(), "{letter:?}");
        // Listing leaves them parked.
        eventually("the listed message to be back in the DLQ", || async {
            (bus.queue_depth(&dlq).await.ok()? == 1).then_some(())
        })
        .await;

        accept.store(true, std::sync::atomic::Ordering::SeqCst);
        let moved = bus.replay_dead_letters(Stage::Fetcher).await.expect("replay");
        assert_eq!(moved, 1);
        let again = next_seen(&mut seen).await;
        assert_eq!(again.message.tenant_id, "ghost");
        assert_eq!(again.message_id.as_deref(), Some("msg-ghost"));
        assert_eq!(again.attempt, 1, "a replayed message starts its tries afresh");
        assert_queue_empty(&bus, &dlq).await;
        consumer.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------
// Outages: a lost connection, a lost database, bad configuration
// ---------------------------------------------------------------------------

/// A port on which nothing listens, held while the socket lives: bound but not
/// listening (a connection is refused) and without SO_REUSEADDR (no server
/// started meanwhile is given the port).
fn closed_port() -> (u16, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a free local port");
    (socket.local_addr().expect("its address").port(), socket)
}

#[tokio::test]
async fn a_lost_connection_is_reconnected_and_every_message_is_handled_once_it_is_back() {
    in_fresh_vhost(|vhost| async move {
        let health = Health::new(&[Dependency::Broker]);
        let name = "bus-test-outage";
        let bus = Bus::start(&vhost.amqp_url(), name, &health).await.expect("start");
        assert!(health.is_up(Dependency::Broker));
        // Each message is held until released, so some are in hand when the connection goes.
        let (started, mut in_hand) = mpsc::unbounded_channel::<String>();
        let (finished, mut done) = mpsc::unbounded_channel::<String>();
        let (release, released) = tokio::sync::watch::channel(false);
        let consumer = tokio::spawn({
            let bus = bus.clone();
            let options = ConsumeOptions {
                prefetch: 4,
                max_attempts: 2,
                ..ConsumeOptions::default()
            };
            async move {
                let outcome = bus
                    .consume(
                        Stage::Differ,
                        options,
                        move |incoming: Incoming<ResyncRequest>| {
                            let (started, finished) = (started.clone(), finished.clone());
                            let mut released = released.clone();
                            async move {
                                let tenant = incoming.message.tenant_id;
                                let _ = started.send(tenant.clone());
                                let _ = released.wait_for(|open| *open).await;
                                let _ = finished.send(tenant);
                                Ok(())
                            }
                        },
                    )
                    .await;
                panic!("the consumer stopped: {outcome:?}");
            }
        });
        for n in 0..10 {
            bus.send(
                Stage::Differ,
                &resync_request(&format!("before-{n}"), "manual"),
                &format!("before-{n}"),
            )
            .await
            .expect("send before the outage");
        }
        for _ in 0..4 {
            tokio::time::timeout(DEADLINE, in_hand.recv())
                .await
                .expect("four messages in hand")
                .expect("the handler");
        }

        // The outage: the broker ends the connection and refuses new ones.
        vhost.revoke().await;
        assert!(
            vhost.close_connections(name).await >= 1,
            "no connection named {name}"
        );
        eventually("the broker to be reported down", || async {
            (!health.is_up(Dependency::Broker)).then_some(())
        })
        .await;
        assert_eq!(health.report().1["status"], "unavailable");
        let refused = eventually("publishing to fail fast", || async {
            bus.send(Stage::Differ, &resync_request("during", "manual"), "during")
                .await
                .err()
                .filter(|err| format!("{err:#}").contains("not connected to RabbitMQ"))
        })
        .await;
        assert!(format!("{refused:#}").contains("try again"), "{refused:#}");
        // The messages in hand finish, but their channel is gone: they come back.
        release.send_replace(true);

        vhost.grant().await;
        tokio::time::timeout(DEADLINE, health.wait_up(Dependency::Broker))
            .await
            .expect("the bus to reconnect on its own");
        for n in 0..10 {
            bus.send(
                Stage::Differ,
                &resync_request(&format!("after-{n}"), "manual"),
                &format!("after-{n}"),
            )
            .await
            .expect("send after the outage");
        }
        let mut handled = std::collections::BTreeSet::new();
        while handled.len() < 20 {
            let tenant = tokio::time::timeout(DEADLINE, done.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of 20 handled: {handled:?}", handled.len()))
                .expect("the handler");
            handled.insert(tenant);
        }
        assert!(
            !handled.contains("during"),
            "a refused message was sent after all"
        );
        let work = Stage::Differ.queue();
        eventually("every message to be acknowledged", || async {
            (vhost.messages_held(&work).await == Some((0, 0))).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &Stage::Differ.dead_letter_queue()).await;
        consumer.abort();
    })
    .await;
}

#[tokio::test]
async fn a_database_outage_neither_uses_attempts_nor_dead_letters_a_message() {
    in_fresh_vhost(|vhost| async move {
        // A real "connection refused" from PostgreSQL, as a handler sees it.
        let (port, _held) = closed_port();
        let database_down = move || async move {
            let config = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=5");
            let err = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .err()
                .expect("nothing listens on the port");
            anyhow::Error::new(err).context("taking a PostgreSQL connection from the pool")
        };
        let failure = Failure::from(database_down().await);
        assert!(
            matches!(
                failure,
                Failure::Unavailable {
                    dependency: Dependency::Database,
                    ..
                }
            ),
            "{failure:?}"
        );

        let health = Health::new(&[Dependency::Broker, Dependency::Database]);
        health.up(Dependency::Database);
        // The database itself answers: each report of an outage is undone by the probe.
        let probe = health.watch(Dependency::Database, || async { Ok(()) });
        let bus = Bus::start(&vhost.amqp_url(), "bus-test-database-outage", &health)
            .await
            .expect("start");
        const OUTAGES: u32 = 20;
        let (report, mut seen) = mpsc::unbounded_channel();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let options = ConsumeOptions {
            prefetch: 4,
            // Any counted attempt would park it after the second.
            max_attempts: 2,
            ..ConsumeOptions::default()
        };
        let consumer = tokio::spawn({
            let bus = bus.clone();
            async move {
                let outcome = bus
                    .consume(
                        Stage::Applier,
                        options,
                        move |incoming: Incoming<ResyncRequest>| {
                            let report = report.clone();
                            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            async move {
                                let _ = report.send(Seen::of(&incoming));
                                if n < OUTAGES {
                                    return Err(database_down().await.into());
                                }
                                Ok(())
                            }
                        },
                    )
                    .await;
                panic!("the consumer stopped: {outcome:?}");
            }
        });
        bus.send(Stage::Applier, &resync_request("acme", "manual"), "msg-db-down")
            .await
            .expect("send");
        let mut attempts = Vec::new();
        for _ in 0..=OUTAGES {
            attempts.push(next_seen(&mut seen).await.attempt);
        }
        assert_eq!(attempts, vec![1; OUTAGES as usize + 1]);
        let work = Stage::Applier.queue();
        eventually("the last delivery to be acknowledged", || async {
            (vhost.messages_held(&work).await == Some((0, 0))).then_some(())
        })
        .await;
        assert_queue_empty(&bus, &Stage::Applier.dead_letter_queue()).await;
        assert!(seen.try_recv().is_err(), "a delivery after success");
        assert!(health.is_healthy());
        consumer.abort();
        probe.abort();
    })
    .await;
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_messages_in_hand_and_returns_the_prefetched_ones() {
    in_fresh_vhost(|vhost| async move {
        let health = Health::new(&[Dependency::Broker, Dependency::Database]);
        health.up(Dependency::Database);
        let bus = Bus::start(&vhost.amqp_url(), "bus-test-graceful", &health)
            .await
            .expect("start");
        let (started, mut has_one) = mpsc::unbounded_channel();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let gate = Gate {
            started,
            release: std::sync::Arc::clone(&release),
        };
        let options = ConsumeOptions {
            prefetch: 5,
            max_attempts: 2,
            shutdown_timeout: Duration::from_secs(10),
            bytes_in_hand: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut serving = tokio::spawn({
            let bus = bus.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                bus.serve(Stage::Notifier, options, gate, shutdown).await
            }
        });
        let send = |n: u32| {
            let bus = bus.clone();
            async move {
                bus.send(
                    Stage::Notifier,
                    &resync_request(&format!("t-{n}"), "manual"),
                    &format!("m-{n}"),
                )
                .await
                .expect("send");
            }
        };
        for n in 0..3 {
            send(n).await;
        }
        for _ in 0..3 {
            tokio::time::timeout(DEADLINE, has_one.recv())
                .await
                .expect("three messages in hand");
        }
        // Unhealthy: the consumer takes nothing more, but the broker still
        // sends up to the prefetch (2 more), which wait unacked.
        health.down(Dependency::Database, "test: the database is away");
        for n in 3..7 {
            send(n).await;
        }
        let work = Stage::Notifier.queue();
        eventually("3 in hand and 2 prefetched, 2 ready", || async {
            (vhost.messages_held(&work).await == Some((2, 5))).then_some(())
        })
        .await;
        assert!(
            has_one.try_recv().is_err(),
            "work was taken while the database was down"
        );

        stop.send(()).expect("the service is running");
        let asked = Instant::now();
        let early = tokio::time::timeout(Duration::from_millis(500), &mut serving).await;
        assert!(early.is_err(), "serve returned with messages in hand: {early:?}");
        release.notify_waiters();
        let result = tokio::time::timeout(DEADLINE, serving)
            .await
            .expect("serve to return")
            .expect("the serve task");
        assert!(result.is_ok(), "{result:?}");
        let took = asked.elapsed();
        assert!(took < options.shutdown_timeout, "the stop took {took:?}");
        assert_eq!(health.report().1["status"], "stopping");
        assert!(
            has_one.try_recv().is_err(),
            "a prefetched message was started while stopping"
        );
        // The three in hand were acknowledged; the four others are ready again.
        eventually("the four not started to be back in the queue", || async {
            (vhost.messages_held(&work).await == Some((4, 0))).then_some(())
        })
        .await;
        assert_eq!(bus.queue_depth(&work).await.expect("queue depth"), 4);
        bus.close().await;
        let closed = bus
            .send(Stage::Notifier, &resync_request("late", "manual"), "late")
            .await;
        assert!(closed.is_err(), "published on a closed bus");
    })
    .await;
}

#[tokio::test]
async fn a_bad_amqp_url_stops_at_start_and_an_unreachable_broker_is_waited_for() {
    in_fresh_vhost(|vhost| async move {
        let health = Health::new(&[Dependency::Broker]);
        let wrong_password = vhost.amqp_url().replace("guest:guest", "guest:wrong");
        let no_vhost = format!(
            "{AMQP_BASE}/usersync-no-such-vhost-{}",
            uuid::Uuid::new_v4().simple()
        );
        for url in [wrong_password.as_str(), no_vhost.as_str(), "rabbitmq, please"] {
            let err = tokio::time::timeout(DEADLINE, Bus::start(url, "bus-test-config", &health))
                .await
                .unwrap_or_else(|_| panic!("{url}: retried a configuration error"))
                .err()
                .unwrap_or_else(|| panic!("{url}: connected"));
            let text = format!("{err:#}");
            assert!(text.contains("AMQP_URL"), "{url}: {text}");
            assert!(!text.contains(":wrong@"), "the password is shown: {text}");
        }

        // Nothing listens: the bus keeps trying and /healthz says why.
        let (port, _held) = closed_port();
        let refused = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let waiting = tokio::time::timeout(
            Duration::from_millis(1500),
            Bus::start(&refused, "bus-test-refused", &health),
        )
        .await;
        assert!(waiting.is_err(), "gave up on an unreachable broker");
        let (healthy, report) = health.report();
        assert!(!healthy);
        let reason = report["down"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains("connecting to RabbitMQ"), "{report}");
    })
    .await;
}
