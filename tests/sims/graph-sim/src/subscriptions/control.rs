//! `/_sim/tenants/{tenant}/subscriptions…`: what tests read and trigger
//! around subscriptions (listing with counters, lifecycle events, a
//! notification with a chosen clientState).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::delivery::{post_json, NOTIFICATION_TIMEOUT};
use super::{format_time, ChangeKind, ChangedObject, Removal, Scope, Subscription};
use crate::control::{tenant_handle, ControlError, Reply};
use crate::server::{lock, Sim};
use crate::tenant::Tenant;

pub fn routes() -> Router<Arc<Sim>> {
    let base = "/_sim/tenants/{tenant}/subscriptions";
    Router::new()
        .route(base, get(list))
        .route(&format!("{base}/{{id}}/lifecycle"), post(lifecycle))
        .route(&format!("{base}/{{id}}/notify"), post(notify))
}

fn view(subscription: &Subscription, now: chrono::DateTime<chrono::Utc>) -> Value {
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counters = &subscription.counters;
    json!({
        "id": subscription.id,
        "resource": subscription.resource,
        "changeType": subscription.change_type_text(),
        "clientState": subscription.client_state,
        "notificationUrl": subscription.notification_url,
        "lifecycleNotificationUrl": subscription.lifecycle_url,
        "expirationDateTime": format_time(subscription.expiration),
        "status": subscription.status(now),
        "removed": !subscription.is_live(now),
        "reauthorization_pending": subscription.reauthorization_pending,
        "validations": subscription.validations,
        "lifecycle_events": subscription.lifecycle_events,
        "delivered": counter(&counters.delivered),
        "failed": counter(&counters.failed),
        "dropped": counter(&counters.dropped),
        "retries": counter(&counters.retries),
    })
}

/// Every subscription of the tenant, gone ones included (`removed: true`).
async fn list(State(sim): State<Arc<Sim>>, Path(tenant): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let tenant = lock(&handle);
    let now = tenant.now_utc();
    let value: Vec<Value> = tenant.subscriptions.all().map(|s| view(s, now)).collect();
    Ok(Json(json!({"now": format_time(now), "value": value})).into_response())
}

fn not_live(id: &str) -> ControlError {
    ControlError(
        StatusCode::NOT_FOUND,
        format!("subscription {id} not found, expired or removed"),
    )
}

/// Posts to a subscriber and answers the status it gave, or 502 naming why not.
async fn send(sim: &Sim, url: &str, body: &Value, what: &str) -> Result<StatusCode, ControlError> {
    post_json(&sim.http, url, body, NOTIFICATION_TIMEOUT)
        .await
        .map_err(|e| {
            let message = format!("{what} to {url} was not answered: {e}; is the receiver listening?");
            ControlError(StatusCode::BAD_GATEWAY, message)
        })
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

#[derive(Deserialize)]
struct LifecycleRequest {
    event: LifecycleEvent,
}

/// Sends a lifecycle event to the subscription's lifecycle URL and answers
/// once the endpoint did. `subscriptionRemoved` removes the subscription first.
async fn lifecycle(
    State(sim): State<Arc<Sim>>,
    Path((tenant, id)): Path<(String, String)>,
    Json(request): Json<LifecycleRequest>,
) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let (url, body) = {
        let mut tenant = lock(&handle);
        let now = tenant.now_utc();
        let tenant_id = tenant.id.clone();
        let subscription = tenant
            .subscriptions
            .live_mut(&id, now)
            .ok_or_else(|| not_live(&id))?;
        let url = subscription.lifecycle_url.clone().ok_or_else(|| {
            let message = format!(
                "subscription {id} has no lifecycleNotificationUrl; create it with one to receive lifecycle events"
            );
            ControlError(StatusCode::BAD_REQUEST, message)
        })?;
        let body = subscription.lifecycle_body(&tenant_id, request.event.as_str());
        subscription.lifecycle_events += 1;
        match request.event {
            LifecycleEvent::ReauthorizationRequired => subscription.reauthorization_pending = true,
            LifecycleEvent::SubscriptionRemoved => subscription.remove(Removal::SubscriptionRemoved),
            LifecycleEvent::Missed => {}
        }
        (url, body)
    };
    let status = send(&sim, &url, &body, "the lifecycle notification").await?;
    Ok(Json(json!({"status": status.as_u16(), "lifecycleEvent": request.event.as_str()})).into_response())
}

#[derive(Deserialize, Default)]
struct NotifyRequest {
    client_state: Option<String>,
}

/// The object a test notification is about: the first user of the directory
/// for `/users`, the subscribed group (or the first group) for groups.
fn first_object(tenant: &Tenant, scope: &Scope) -> Option<ChangedObject> {
    let directory = &tenant.directory;
    match scope {
        Scope::Users => directory
            .active_users_after(None)
            .next()
            .map(|(id, _)| ChangedObject::User(id.to_owned())),
        Scope::Groups => directory
            .groups()
            .next()
            .map(|(id, _)| ChangedObject::Group(id.to_owned())),
        Scope::Group(id) => Some(ChangedObject::Group(id.clone())),
    }
}

/// Sends one `updated` notification at once (outside the queue and its
/// counters), with `client_state` instead of the subscription's when given.
async fn notify(
    State(sim): State<Arc<Sim>>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let request: NotifyRequest = if body.is_empty() {
        NotifyRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ControlError(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"client_state\": \"…\"}} or empty: {e}"),
            )
        })?
    };
    let handle = tenant_handle(&sim, &tenant)?;
    let (url, body) = {
        let tenant = lock(&handle);
        let subscription = tenant
            .subscriptions
            .live(&id, tenant.now_utc())
            .ok_or_else(|| not_live(&id))?;
        let object = first_object(&tenant, &subscription.scope).ok_or_else(|| {
            let message = format!("the directory has no object for subscription {id} to notify about");
            ControlError(StatusCode::CONFLICT, message)
        })?;
        let client_state = request
            .client_state
            .as_deref()
            .or(subscription.client_state.as_deref());
        let item = subscription.notification(&tenant.id, &object, ChangeKind::Updated, client_state);
        (subscription.notification_url.clone(), json!({"value": [item]}))
    };
    let status = send(&sim, &url, &body, "the notification").await?;
    Ok(Json(json!({"status": status.as_u16()})).into_response())
}
