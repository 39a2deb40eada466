//! `/v1.0/subscriptions`: create (with Graph's validation handshake), list,
//! read, renew, delete and reauthorize, for the tenant of the app token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use super::delivery::{self, ValidationFailure};
use super::{parse_change_types, NewSubscription, Removal, Scope, MAX_EXPIRATION_MINUTES};
use crate::errors::GraphError;
use crate::server::{lock, Sim, TenantHandle};

const MAX_CLIENT_STATE_CHARS: usize = 128;
const DEFAULT_TLS_VERSION: &str = "v1_2";

type Reply = Result<Response, GraphError>;

fn invalid(message: &str) -> GraphError {
    GraphError::bad_request("InvalidRequest", message)
}

fn not_found(id: &str) -> GraphError {
    let message = format!("Subscription '{id}' not found: it expired, was deleted or never existed.");
    GraphError::new(StatusCode::NOT_FOUND, "ResourceNotFound", &message)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    change_type: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
    latest_supported_tls_version: Option<String>,
    #[serde(default)]
    include_resource_data: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewBody {
    expiration_date_time: Option<String>,
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, GraphError> {
    serde_json::from_slice(body)
        .map_err(|e| invalid(&format!("The request body is not a valid subscription: {e}.")))
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, GraphError> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| invalid(&format!("{field} is required.")))
}

/// Real Graph wants https; the simulator takes http too, for local receivers.
fn check_url(url: &str, field: &str) -> Result<(), GraphError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        _ => Err(invalid(&format!(
            "{field} '{url}' is not a valid notification URL: use an absolute https (or, here, http) URL."
        ))),
    }
}

/// Parses `expirationDateTime` and checks it lies in (now, now + 29 days].
fn check_expiration(text: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, GraphError> {
    let text = text
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| invalid("expirationDateTime is required."))?;
    let expiration = DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            invalid(&format!(
                "expirationDateTime '{text}' is not an RFC 3339 date and time ({e}), e.g. 2026-12-05T06:00:00Z."
            ))
        })?
        .with_timezone(&Utc);
    if expiration <= now {
        return Err(invalid(&format!(
            "Subscription expiration must be in the future: expirationDateTime {text} is not after now ({}).",
            super::format_time(now)
        )));
    }
    if expiration - now > Duration::minutes(MAX_EXPIRATION_MINUTES) {
        return Err(invalid(&format!(
            "Subscription expiration can only be {MAX_EXPIRATION_MINUTES} minutes in the future."
        )));
    }
    Ok(expiration)
}

fn validation_error(url: &str, failure: ValidationFailure) -> GraphError {
    // Graph's message is fixed; the cause goes to the log.
    let message = match failure {
        ValidationFailure::TimedOut => {
            tracing::info!(%url, "subscription validation timed out");
            "Subscription validation request timed out."
        }
        ValidationFailure::Failed(cause) => {
            tracing::info!(%cause, "subscription validation failed");
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
        }
    };
    GraphError::bad_request("ValidationError", message)
}

pub async fn create(
    State(sim): State<Arc<Sim>>,
    Extension(tenant): Extension<TenantHandle>,
    body: Bytes,
) -> Reply {
    let body: CreateBody = parse_body(&body)?;
    let change_types =
        parse_change_types(required(&body.change_type, "changeType")?).map_err(|e| invalid(&e))?;
    let notification_url = required(&body.notification_url, "notificationUrl")?.to_owned();
    check_url(&notification_url, "notificationUrl")?;
    if let Some(url) = &body.lifecycle_notification_url {
        check_url(url, "lifecycleNotificationUrl")?;
    }
    let resource = required(&body.resource, "resource")?.to_owned();
    let scope = Scope::parse(&resource).ok_or_else(|| {
        invalid(&format!(
            "resource '{resource}' is not supported: use /users, /groups or /groups/{{id}}."
        ))
    })?;
    if let Some(state) = &body.client_state {
        if state.chars().count() > MAX_CLIENT_STATE_CHARS {
            return Err(invalid(&format!(
                "clientState is longer than {MAX_CLIENT_STATE_CHARS} characters."
            )));
        }
    }
    if body.include_resource_data {
        return Err(invalid(
            "includeResourceData true needs an encryptionCertificate, which the simulator does not support; send false.",
        ));
    }
    let now = lock(&tenant).now_utc();
    let expiration = check_expiration(body.expiration_date_time.as_deref(), now)?;

    // Validation happens without the tenant lock: it may take up to 10 s.
    let urls = std::iter::once(&notification_url).chain(body.lifecycle_notification_url.as_ref());
    let mut validations = 0;
    for url in urls {
        delivery::validate(&sim.http, url)
            .await
            .map_err(|failure| validation_error(url, failure))?;
        validations += 1;
    }

    let new = NewSubscription {
        resource,
        scope,
        change_types,
        client_state: body.client_state,
        notification_url,
        lifecycle_url: body.lifecycle_notification_url,
        expiration,
        tls_version: body
            .latest_supported_tls_version
            .unwrap_or_else(|| DEFAULT_TLS_VERSION.to_owned()),
        validations,
    };
    let mut tenant = lock(&tenant);
    let application_id = tenant.settings.client_id.clone();
    let created = tenant.subscriptions.create(new, &application_id, &sim.http);
    tracing::info!(id = %created.id, resource = %created.resource, "subscription created");
    let mut resource = created.to_graph();
    resource["@odata.context"] = json!(format!("{}/v1.0/$metadata#subscriptions/$entity", sim.base_url));
    Ok((StatusCode::CREATED, Json(resource)).into_response())
}

pub async fn list(State(sim): State<Arc<Sim>>, Extension(tenant): Extension<TenantHandle>) -> Reply {
    let tenant = lock(&tenant);
    let now = tenant.now_utc();
    let value: Vec<_> = tenant
        .subscriptions
        .all()
        .filter(|s| s.is_live(now))
        .map(|s| s.to_graph())
        .collect();
    let context = format!("{}/v1.0/$metadata#subscriptions", sim.base_url);
    Ok(Json(json!({"@odata.context": context, "value": value})).into_response())
}

pub async fn get_one(Extension(tenant): Extension<TenantHandle>, Path(id): Path<String>) -> Reply {
    let tenant = lock(&tenant);
    let subscription = tenant
        .subscriptions
        .live(&id, tenant.now_utc())
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(subscription.to_graph()).into_response())
}

/// Renewal: a new `expirationDateTime`, with the same limits as on creation.
pub async fn renew(Extension(tenant): Extension<TenantHandle>, Path(id): Path<String>, body: Bytes) -> Reply {
    let body: RenewBody = parse_body(&body)?;
    let mut tenant = lock(&tenant);
    let now = tenant.now_utc();
    let subscription = tenant
        .subscriptions
        .live_mut(&id, now)
        .ok_or_else(|| not_found(&id))?;
    subscription.expiration = check_expiration(body.expiration_date_time.as_deref(), now)?;
    Ok(Json(subscription.to_graph()).into_response())
}

pub async fn delete(Extension(tenant): Extension<TenantHandle>, Path(id): Path<String>) -> Reply {
    let mut tenant = lock(&tenant);
    let now = tenant.now_utc();
    let subscription = tenant
        .subscriptions
        .live_mut(&id, now)
        .ok_or_else(|| not_found(&id))?;
    subscription.remove(Removal::Deleted);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Answers a `reauthorizationRequired` lifecycle event.
pub async fn reauthorize(Extension(tenant): Extension<TenantHandle>, Path(id): Path<String>) -> Reply {
    let mut tenant = lock(&tenant);
    let now = tenant.now_utc();
    let subscription = tenant
        .subscriptions
        .live_mut(&id, now)
        .ok_or_else(|| not_found(&id))?;
    subscription.reauthorization_pending = false;
    Ok(StatusCode::NO_CONTENT.into_response())
}
