//! Outbound calls to a subscriber: the validation handshake, and one worker
//! per subscription that batches, posts and retries change notifications.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Graph waits this long for the answer to a validation request.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// A notification not answered 2xx within this is a failed attempt.
pub const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(3);
/// Changes queued within this window go out in one POST, as Graph batches.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
pub const MAX_BATCH: usize = 100;
/// Notifications waiting per subscription; beyond it new ones are dropped
/// (and counted), so a storm or a dead endpoint cannot eat memory.
pub const QUEUE_CAPACITY: usize = 1000;
/// Pauses before the retries of a failed POST; after the last, the batch is dropped.
pub const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Delivery counters of one subscription, in notifications (not POSTs).
#[derive(Default)]
pub struct Counters {
    /// Answered 2xx.
    pub delivered: AtomicU64,
    /// Given up after the last retry.
    pub failed: AtomicU64,
    /// Refused because the queue was full.
    pub dropped: AtomicU64,
    /// POST attempts after a first one failed.
    pub retries: AtomicU64,
    cancelled: AtomicBool,
}

impl Counters {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The sending end of a subscription's worker; dropping it (subscription
/// removed, tenant replaced) stops the worker.
pub struct Queue {
    sender: mpsc::Sender<Value>,
    counters: Arc<Counters>,
}

impl Queue {
    /// Queues one notification without waiting: a full queue drops it.
    pub fn push(&self, notification: Value) {
        match self.sender.try_send(notification) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => Counters::add(&self.counters.dropped, 1),
            // The worker only ends after the queue is dropped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.counters.cancel();
    }
}

/// Starts the delivery worker of a subscription.
pub fn start(http: reqwest::Client, url: String, counters: Arc<Counters>) -> Queue {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(run(http, url, counters.clone(), receiver));
    Queue { sender, counters }
}

async fn run(http: reqwest::Client, url: String, counters: Arc<Counters>, mut queue: mpsc::Receiver<Value>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let window_end = Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(window_end, queue.recv()).await {
                Ok(Some(notification)) => batch.push(notification),
                Ok(None) | Err(_) => break,
            }
        }
        if counters.is_cancelled() {
            return;
        }
        deliver(&http, &url, &counters, batch).await;
    }
}

async fn deliver(http: &reqwest::Client, url: &str, counters: &Counters, batch: Vec<Value>) {
    let count = batch.len();
    let body = json!({"value": batch});
    let pauses = std::iter::once(Duration::ZERO).chain(RETRY_PAUSES);
    for (attempt, pause) in pauses.enumerate() {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            Counters::add(&counters.retries, 1);
        }
        if counters.is_cancelled() {
            return;
        }
        match post_json(http, url, &body, NOTIFICATION_TIMEOUT).await {
            Ok(status) if status.is_success() => {
                Counters::add(&counters.delivered, count);
                return;
            }
            Ok(status) => tracing::warn!(%url, %status, attempt, "notification refused"),
            Err(error) => tracing::warn!(%url, %error, attempt, "notification not delivered"),
        }
    }
    tracing::warn!(%url, count, "notifications dropped after the last retry");
    Counters::add(&counters.failed, count);
}

/// POSTs a JSON body and returns the status the endpoint answered.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<StatusCode, reqwest::Error> {
    let response = http.post(url).json(body).timeout(timeout).send().await?;
    Ok(response.status())
}

/// Why a notification endpoint failed its validation request.
#[derive(Debug)]
pub enum ValidationFailure {
    TimedOut,
    /// Unreachable, not 200, or not the token: the detail is for the log.
    Failed(String),
}

/// A fresh opaque token, with spaces, `:`, `+`, `/` and `=` that the
/// subscriber must decode from the query (real tokens carry spaces and colons).
pub fn validation_token() -> String {
    let key = STANDARD.encode(rand::random::<[u8; 12]>());
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {} key+{key}",
        uuid::Uuid::new_v4()
    )
}

/// The URL with `validationToken=<token>` added to its query, percent-encoded.
pub fn validation_url(url: &str, token: &str) -> Result<Url, String> {
    let mut url = Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    let encoded = utf8_percent_encode(token, NON_ALPHANUMERIC);
    let query = match url.query() {
        Some(query) if !query.is_empty() => format!("{query}&validationToken={encoded}"),
        _ => format!("validationToken={encoded}"),
    };
    url.set_query(Some(&query));
    Ok(url)
}

/// Graph's handshake: POST `?validationToken=…` with an empty text/plain
/// body; the endpoint must answer 200 with the decoded token as its body.
pub async fn validate(http: &reqwest::Client, url: &str) -> Result<(), ValidationFailure> {
    let token = validation_token();
    let target = validation_url(url, &token).map_err(ValidationFailure::Failed)?;
    let request = http
        .post(target)
        .header(CONTENT_TYPE, "text/plain")
        .body("")
        .timeout(VALIDATION_TIMEOUT);
    let failed = |error: reqwest::Error| {
        if error.is_timeout() {
            ValidationFailure::TimedOut
        } else {
            ValidationFailure::Failed(format!("{url}: {error}"))
        }
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let body = response.text().await.map_err(failed)?;
    if status != StatusCode::OK {
        return Err(ValidationFailure::Failed(format!("{url} answered {status}")));
    }
    if body != token {
        return Err(ValidationFailure::Failed(format!(
            "{url} answered {body:?} instead of the validation token"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_url_percent_encodes_the_token_and_keeps_the_query() {
        let token = "a b+c:d/e=f";
        let url = validation_url("http://127.0.0.1:9/hook?tenant=x", token).unwrap();
        assert_eq!(
            url.query(),
            Some("tenant=x&validationToken=a%20b%2Bc%3Ad%2Fe%3Df")
        );
        let decoded: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(decoded[1], ("validationToken".to_owned(), token.to_owned()));
        assert!(validation_url("not a url", token).is_err());
    }
}
