//! Graph's change notifications: `POST /graph/notifications` and
//! `POST /graph/lifecycle`, and the background task that checks and
//! coalesces them.
//!
//! The routes carry no bearer token (Graph cannot send one) and sit outside
//! the per-token rate limit (Graph sends from many addresses): they only
//! echo a validation token or parse the body and hand it to a bounded
//! channel, so a storm costs a parse per request, never a query or a run.
//! The [`Coalescer`] checks each item's `clientState` against the stored
//! subscription and turns a window of notifications into one resync request
//! per tenant.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{de::DeserializeOwned, Deserialize};
use tokio::{sync::mpsc, time::Instant};
use usersync_bus::Bus;
use usersync_contract::ResyncRequest;
use usersync_store::{SecretKey, Store, SubscriptionAction};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ErrorBody};

/// Longest validation token echoed, in characters; Graph's are about 100.
pub const VALIDATION_TOKEN_LIMIT: usize = 1024;
/// Request bodies waiting for the coalescer; beyond it Graph is asked to
/// redeliver (503), which bounds the memory a storm takes.
pub const QUEUE_CAPACITY: usize = 256;
/// Seconds Graph is asked to wait when the queue is full.
const RETRY_AFTER_SECS: u64 = 5;
/// How long a looked-up subscription is trusted, so a storm costs no query
/// per item.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Shorter for an unknown id: a subscription Graph just created may be
/// recorded a moment after its first notification.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Entries at most, so forged ids cannot grow the cache without bound.
const CACHE_LIMIT: usize = 10_000;

// ---------------------------------------------------------------------------
// The bodies Graph sends (the document's shapes; unknown fields tolerated)
// ---------------------------------------------------------------------------

/// Graph's change notification collection.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangeNotificationCollection {
    pub value: Vec<ChangeNotification>,
}

/// One change notification; only `subscriptionId` is required, the rest is
/// read as Graph sends it (other fields are ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Fields besides the id and clientState are parsed to check the shape and documented.
pub struct ChangeNotification {
    pub subscription_id: String,
    /// The secret the subscription was created with; a mismatch is dropped.
    #[serde(default)]
    pub client_state: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    /// `updated` or `deleted`.
    #[serde(default)]
    pub change_type: Option<String>,
    /// Such as `Users/{id}`.
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub subscription_expiration_date_time: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub resource_data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Graph's lifecycle notification collection.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LifecycleNotificationCollection {
    pub value: Vec<LifecycleNotification>,
}

/// One lifecycle notification.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // As for ChangeNotification.
pub struct LifecycleNotification {
    pub subscription_id: String,
    /// `reauthorizationRequired`, `subscriptionRemoved` or `missed`; other
    /// events are logged and ignored.
    pub lifecycle_event: String,
    #[serde(default)]
    pub client_state: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub subscription_expiration_date_time: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ValidationQuery {
    /// Sent by Graph when a subscription is created: echoed as `text/plain`,
    /// nothing else is done.
    #[serde(rename = "validationToken")]
    #[param(max_length = 1024)]
    pub validation_token: Option<String>,
}

// ---------------------------------------------------------------------------
// What the routes hand to the coalescer
// ---------------------------------------------------------------------------

/// What a notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A change notification: the tenant's directory changed.
    Changed,
    /// A lifecycle notification, with Graph's event name.
    Lifecycle(String),
}

/// One notification, as the coalescer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub subscription_id: String,
    pub client_state: Option<String>,
    pub event: Event,
}

impl From<ChangeNotification> for Item {
    fn from(n: ChangeNotification) -> Item {
        Item {
            subscription_id: n.subscription_id,
            client_state: n.client_state,
            event: Event::Changed,
        }
    }
}

impl From<LifecycleNotification> for Item {
    fn from(n: LifecycleNotification) -> Item {
        Item {
            subscription_id: n.subscription_id,
            client_state: n.client_state,
            event: Event::Lifecycle(n.lifecycle_event),
        }
    }
}

/// The routes' state: where accepted bodies go. Without a secret key no
/// clientState can be checked, so bodies are refused (503) with the reason.
#[derive(Clone)]
pub struct Intake {
    sender: Option<mpsc::Sender<Vec<Item>>>,
}

impl Intake {
    /// An intake and the receiver the [`Coalescer`] runs on.
    pub fn channel(capacity: usize) -> (Intake, mpsc::Receiver<Vec<Item>>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (Intake { sender: Some(sender) }, receiver)
    }

    /// Refuses every notification: USERSYNC_SECRET_KEY is not set.
    pub fn without_key() -> Intake {
        Intake { sender: None }
    }
}

/// The two routes, with their document.
pub fn router() -> OpenApiRouter<Intake> {
    OpenApiRouter::new()
        .routes(routes!(notifications))
        .routes(routes!(lifecycle))
}

/// Graph's change notifications for the tenants' `/users` and `/groups`
/// subscriptions. No bearer token: the `clientState` of each item is the
/// check (done in the background). With `validationToken`, the token is
/// echoed and nothing else happens.
#[utoipa::path(post, path = "/graph/notifications", tag = "graph",
    security(()),
    params(ValidationQuery),
    request_body(content = ChangeNotificationCollection, content_type = "application/json",
        description = "ignored when `validationToken` is given"),
    responses(
        (status = 200, description = "the validation token, as sent", body = String, content_type = "text/plain"),
        (status = 202, description = "queued; checked and coalesced in the background"),
        (status = 400, description = "the body is not a notification collection, or the validation token is over 1024 characters", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "the queue is full (`Retry-After`; Graph redelivers) or USERSYNC_SECRET_KEY is not set",
         body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn notifications(
    State(intake): State<Intake>,
    Query(query): Query<ValidationQuery>,
    body: Bytes,
) -> Response {
    receive::<ChangeNotificationCollection, _>(&intake, query, &body, |c| {
        c.value.into_iter().map(Item::from).collect()
    })
}

/// Graph's lifecycle notifications: `reauthorizationRequired` (the
/// subscription is reauthorised), `subscriptionRemoved` (it is created
/// again), `missed` (a full round is requested). No bearer token; the
/// `clientState` is checked as for change notifications.
#[utoipa::path(post, path = "/graph/lifecycle", tag = "graph",
    security(()),
    params(ValidationQuery),
    request_body(content = LifecycleNotificationCollection, content_type = "application/json",
        description = "ignored when `validationToken` is given"),
    responses(
        (status = 200, description = "the validation token, as sent", body = String, content_type = "text/plain"),
        (status = 202, description = "queued; checked and acted on in the background"),
        (status = 400, description = "the body is not a lifecycle notification collection, or the validation token is over 1024 characters", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "the queue is full (`Retry-After`; Graph redelivers) or USERSYNC_SECRET_KEY is not set",
         body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn lifecycle(
    State(intake): State<Intake>,
    Query(query): Query<ValidationQuery>,
    body: Bytes,
) -> Response {
    receive::<LifecycleNotificationCollection, _>(&intake, query, &body, |c| {
        c.value.into_iter().map(Item::from).collect()
    })
}

fn receive<T: DeserializeOwned, F: FnOnce(T) -> Vec<Item>>(
    intake: &Intake,
    query: ValidationQuery,
    body: &[u8],
    items: F,
) -> Response {
    if let Some(token) = query.validation_token {
        return echo(token);
    }
    // axum's JSON reading names the path of a wrong field (`value[0].subscriptionId: ...`).
    let parsed = match Json::<T>::from_bytes(body) {
        Ok(Json(parsed)) => parsed,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_notification",
                format!(
                    "the body is not Graph's notification collection {{\"value\": [{{\"subscriptionId\": ..., ...}}]}}: {}",
                    rejection.body_text()
                ),
            )
            .into_response()
        }
    };
    // After the shape check: a malformed body is a 400 whatever the setup.
    let Some(sender) = &intake.sender else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret_key",
            "USERSYNC_SECRET_KEY is not set for usersync-api, so no clientState can be checked; the operator sets it",
        )
        .into_response();
    };
    match sender.try_send(items(parsed)) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(err) => {
            let reason = match err {
                mpsc::error::TrySendError::Full(_) => "the notification queue is full",
                mpsc::error::TrySendError::Closed(_) => "the notification queue is shutting down",
            };
            tracing::warn!(reason, "refused a notification body; Graph redelivers it");
            ApiError::Plain {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                message: format!("{reason}; send it again in {RETRY_AFTER_SECS} s"),
                retry_after: Some(RETRY_AFTER_SECS),
            }
            .into_response()
        }
    }
}

/// Graph's validation: the decoded token, as `text/plain` only, so it can
/// never be read as a page.
fn echo(token: String) -> Response {
    // Characters, as the document's maxLength counts them.
    let length = token.chars().count();
    if length > VALIDATION_TOKEN_LIMIT {
        // The token is not repeated in the refusal.
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_validation_token",
            format!(
                "validationToken is {length} characters, over the {VALIDATION_TOKEN_LIMIT} echoed; Graph's tokens are far shorter"
            ),
        )
        .into_response();
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        token,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// The coalescer
// ---------------------------------------------------------------------------

/// Where resync requests go: the bus; tests record them.
pub trait ResyncPublisher: Send + Sync {
    fn publish_resync(
        &self,
        request: &ResyncRequest,
        message_id: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl ResyncPublisher for Bus {
    fn publish_resync(
        &self,
        request: &ResyncRequest,
        message_id: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.request_resync(request, message_id)
    }
}

/// A looked-up subscription: its tenant and clientState, or unknown.
struct Cached {
    until: Instant,
    found: Option<(String, String)>,
}

/// What became of an item (the metric's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    WrongClientState,
    UnknownSubscription,
    /// The store did not answer; the item is dropped (the nightly run covers it).
    LookupFailed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::WrongClientState => "wrong_client_state",
            Outcome::UnknownSubscription => "unknown_subscription",
            Outcome::LookupFailed => "lookup_failed",
        }
    }
}

/// Checks notifications and turns each window of them into one resync
/// request per tenant (trigger `notification`).
pub struct Coalescer<P> {
    store: Store,
    key: SecretKey,
    publisher: P,
    window: Duration,
    cache: HashMap<String, Cached>,
    /// When the open window closes; `None` while nothing is pending.
    closes_at: Option<Instant>,
    /// When the open window opened (ms since the epoch, the services' clock).
    opened_ms: i64,
    /// Tenants to request a round for, with the window start (ms) their
    /// request is named by: kept when publishing fails, so the retry next
    /// window has the same id.
    marked: BTreeMap<String, i64>,
    /// `missed` events: (tenant, subscription id) and when it came (ms).
    missed: BTreeMap<(String, String), i64>,
    /// Tenants with accepted change notifications in the open window.
    notified: BTreeSet<String>,
}

impl<P: ResyncPublisher> Coalescer<P> {
    pub fn new(store: Store, key: SecretKey, publisher: P, window: Duration) -> Coalescer<P> {
        // Every outcome is on /metrics from the start, so a rate of 0 shows as 0.
        for outcome in [
            Outcome::Accepted,
            Outcome::WrongClientState,
            Outcome::UnknownSubscription,
            Outcome::LookupFailed,
        ] {
            metrics::counter!("usersync_api_notifications_total", "outcome" => outcome.as_str()).increment(0);
        }
        Coalescer {
            store,
            key,
            publisher,
            window,
            cache: HashMap::new(),
            closes_at: None,
            opened_ms: 0,
            marked: BTreeMap::new(),
            missed: BTreeMap::new(),
            notified: BTreeSet::new(),
        }
    }

    /// Takes bodies until the channel closes, flushing each window when it
    /// closes (and once more at the end).
    pub async fn run(mut self, mut bodies: mpsc::Receiver<Vec<Item>>) {
        loop {
            let closes_at = self.closes_at;
            // A disabled branch's future is still built, so it needs some instant.
            let wake = tokio::time::sleep_until(
                closes_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                body = bodies.recv() => match body {
                    Some(items) => self.take(items).await,
                    None => {
                        self.flush().await;
                        return;
                    }
                },
                () = wake, if closes_at.is_some() => self.flush().await,
            }
        }
    }

    /// Checks each item and marks what it asks for; opens a window when
    /// something is pending and none is open.
    pub async fn take(&mut self, items: Vec<Item>) {
        for item in items {
            let (outcome, tenant) = self.check(&item).await;
            metrics::counter!("usersync_api_notifications_total", "outcome" => outcome.as_str()).increment(1);
            let Some(tenant) = tenant else {
                continue;
            };
            match &item.event {
                Event::Changed => {
                    self.open_window();
                    self.marked.entry(tenant.clone()).or_insert(self.opened_ms);
                    self.notified.insert(tenant);
                }
                Event::Lifecycle(event) => self.lifecycle(&tenant, &item.subscription_id, event).await,
            }
        }
    }

    async fn lifecycle(&mut self, tenant: &str, subscription_id: &str, event: &str) {
        let action = match event {
            "reauthorizationRequired" => SubscriptionAction::Reauthorize,
            "subscriptionRemoved" => SubscriptionAction::Recreate,
            "missed" => {
                self.open_window();
                let at = usersync_runtime::clock::now().timestamp_millis();
                self.missed
                    .entry((tenant.to_owned(), subscription_id.to_owned()))
                    .or_insert(at);
                return;
            }
            other => {
                tracing::warn!(
                    tenant,
                    subscription_id,
                    event = other,
                    "ignored a lifecycle event of a kind usersync does not act on"
                );
                return;
            }
        };
        if let Err(err) = self
            .store
            .request_graph_subscription_action(subscription_id, action)
            .await
        {
            tracing::error!(tenant, subscription_id, event, error = format!("{err:#}"),
                "could not record a lifecycle event for the scheduler; the subscription is renewed on its schedule");
        }
    }

    /// The item's tenant when its clientState matches the stored one.
    async fn check(&mut self, item: &Item) -> (Outcome, Option<String>) {
        let id = &item.subscription_id;
        let now = Instant::now();
        let cached = match self.cache.get(id) {
            Some(entry) if entry.until > now => entry.found.clone(),
            _ => match self.store.graph_subscription_by_id(id, &self.key).await {
                Ok(row) => {
                    let found = row.and_then(|s| s.client_state.map(|state| (s.tenant_id, state)));
                    self.remember(id, found.clone(), now);
                    found
                }
                Err(err) => {
                    tracing::error!(subscription_id = %id, error = format!("{err:#}"),
                        "could not look up a notification's subscription; it is dropped");
                    return (Outcome::LookupFailed, None);
                }
            },
        };
        let Some((tenant, expected)) = cached else {
            tracing::warn!(subscription_id = %id, "dropped a notification for a subscription that is not recorded");
            return (Outcome::UnknownSubscription, None);
        };
        let sent = item.client_state.as_deref().unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
            tracing::warn!(tenant, subscription_id = %id, "dropped a notification whose clientState does not match its subscription's");
            return (Outcome::WrongClientState, None);
        }
        (Outcome::Accepted, Some(tenant))
    }

    fn remember(&mut self, id: &str, found: Option<(String, String)>, now: Instant) {
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.retain(|_, entry| entry.until > now);
            if self.cache.len() >= CACHE_LIMIT {
                return;
            }
        }
        let ttl = if found.is_some() { CACHE_TTL } else { UNKNOWN_TTL };
        self.cache.insert(
            id.to_owned(),
            Cached {
                until: now + ttl,
                found,
            },
        );
    }

    fn open_window(&mut self) {
        if self.closes_at.is_none() {
            self.closes_at = Some(Instant::now() + self.window);
            self.opened_ms = usersync_runtime::clock::now().timestamp_millis();
        }
    }

    /// Closes the window: one request per marked tenant, one per `missed`
    /// event, and the tenants' last notification recorded. What could not
    /// be published stays for the next window.
    pub async fn flush(&mut self) {
        self.closes_at = None;
        let marked = std::mem::take(&mut self.marked);
        for (tenant, start) in marked {
            let request = ResyncRequest {
                tenant_id: tenant.clone(),
                full: false,
                trigger: "notification".to_owned(),
            };
            let id = format!("notification:{tenant}:{start}");
            if !self.publish(&request, &id).await {
                self.marked.insert(tenant, start);
            }
        }
        let missed = std::mem::take(&mut self.missed);
        for ((tenant, subscription_id), at) in missed {
            let request = ResyncRequest {
                tenant_id: tenant.clone(),
                full: true,
                trigger: "notification".to_owned(),
            };
            let id = format!("missed:{tenant}:{subscription_id}:{at}");
            if !self.publish(&request, &id).await {
                self.missed.insert((tenant, subscription_id), at);
            }
        }
        if !self.notified.is_empty() {
            let tenants: Vec<String> = std::mem::take(&mut self.notified).into_iter().collect();
            if let Err(err) = self
                .store
                .record_notifications(&tenants, usersync_runtime::clock::now())
                .await
            {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "could not record the tenants' last change notification"
                );
            }
        }
        if !self.marked.is_empty() || !self.missed.is_empty() {
            self.open_window();
        }
        let now = Instant::now();
        self.cache.retain(|_, entry| entry.until > now);
    }

    async fn publish(&self, request: &ResyncRequest, id: &str) -> bool {
        match self.publisher.publish_resync(request, id).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(tenant = %request.tenant_id, message_id = id, error = format!("{err:#}"),
                    "could not publish the resync request of change notifications; trying again next window");
                false
            }
        }
    }
}

/// Equal bytes, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
