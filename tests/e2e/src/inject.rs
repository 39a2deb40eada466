//! Message faults through RabbitMQ's management API: a capture queue bound
//! to the stack's exchanges (to copy real messages, or to see every message
//! of a run), and publishing a message of the test's making.

use reqwest::Method;
use serde_json::{json, Value};

use crate::Stack;

/// The exchange between stages (routing key = the work queue's name).
pub const PIPELINE: &str = "usersync.pipeline";
/// The exchange of resync requests (routing keys `manual`, `scheduled`).
pub const RESYNC: &str = "usersync.resync";

/// Every route a message of a run takes: (exchange, routing key).
/// (A run takes one lane: the express queues for manual runs, the others for scheduled ones.)
pub const ROUTES: [(&str, &str); 7] = [
    (RESYNC, "manual"),
    (RESYNC, "scheduled"),
    (PIPELINE, "usersync.differ.pages"),
    (PIPELINE, "usersync.differ.express"),
    (PIPELINE, "usersync.applier.changes"),
    (PIPELINE, "usersync.applier.express"),
    (PIPELINE, "usersync.notifier.events"),
];

/// One message as the management API hands it out.
#[derive(Debug, Clone)]
pub struct Captured {
    pub exchange: String,
    pub routing_key: String,
    pub payload: String,
    pub properties: Value,
}

impl Captured {
    /// The AMQP `type` property, e.g. `usersync.event.v1`.
    pub fn kind(&self) -> &str {
        self.properties["type"].as_str().unwrap_or("")
    }
}

impl Stack {
    /// `path` below the management API, with this stack's vhost encoded in it.
    fn management(&self, path: &str) -> String {
        let vhost = self.vhost.replace('%', "%25").replace('/', "%2F");
        format!(
            "{}/{}",
            self.backends.rabbitmq_api,
            path.replace("{vhost}", &vhost)
        )
    }

    async fn management_call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = self.management(path);
        let response = self
            .http
            .request(method.clone(), &url)
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Declares a classic queue named `queue` (not `usersync.*`: the audit
    /// counts only the product's queues) that gets a copy of every message
    /// published on `routes`.
    pub async fn capture(&self, queue: &str, routes: &[(&str, &str)]) {
        self.management_call(
            Method::PUT,
            &format!("queues/{{vhost}}/{queue}"),
            json!({"durable": true, "auto_delete": false, "arguments": {"x-queue-type": "classic"}}),
        )
        .await;
        for (exchange, routing_key) in routes {
            self.management_call(
                Method::POST,
                &format!("bindings/{{vhost}}/e/{exchange}/q/{queue}"),
                json!({"routing_key": routing_key}),
            )
            .await;
        }
    }

    /// Takes up to `count` messages off a capture queue (they are gone from it after).
    pub async fn take_captured(&self, queue: &str, count: usize) -> Vec<Captured> {
        let got = self
            .management_call(
                Method::POST,
                &format!("queues/{{vhost}}/{queue}/get"),
                json!({"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"}),
            )
            .await;
        got.as_array()
            .unwrap_or_else(|| panic!("the management API answered no list of messages from {queue}: {got}"))
            .iter()
            .map(|message| Captured {
                exchange: message["exchange"].as_str().unwrap_or("").to_owned(),
                routing_key: message["routing_key"].as_str().unwrap_or("").to_owned(),
                payload: match &message["payload"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                },
                properties: message["properties"].clone(),
            })
            .collect()
    }

    /// Every message a capture queue holds, taken off it in chunks.
    pub async fn drain_captured(&self, queue: &str) -> Vec<Captured> {
        let mut all = Vec::new();
        loop {
            let chunk = self.take_captured(queue, 500).await;
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
    }

    /// Publishes `payload` (text) with `properties` (the management API's
    /// form: `type`, `message_id`, `headers`, ...) persistently; panics when
    /// no queue took it.
    pub async fn publish(&self, exchange: &str, routing_key: &str, payload: &str, properties: Value) {
        let mut properties = properties;
        properties["delivery_mode"] = json!(2);
        let answer = self
            .management_call(
                Method::POST,
                &format!("exchanges/{{vhost}}/{exchange}/publish"),
                json!({
                    "routing_key": routing_key, "payload": payload,
                    "payload_encoding": "string", "properties": properties
                }),
            )
            .await;
        assert_eq!(
            answer["routed"], true,
            "publishing to {exchange} with routing key {routing_key}: no queue took it ({answer})"
        );
    }

    /// Publishes a captured message again, as a duplicate delivery of it.
    pub async fn publish_again(&self, message: &Captured) {
        self.publish(
            &message.exchange,
            &message.routing_key,
            &message.payload,
            message.properties.clone(),
        )
        .await;
    }
}
