//! Change-notification subscriptions: create, renew, reauthorise, delete.
//!
//! Same token, retries and error classification as the directory reads; a
//! 404 is [`GraphError::SubscriptionNotFound`] (the caller creates the
//! subscription again) and Graph failing to validate the notification URL is
//! [`GraphError::NotificationUrlRejected`], worded for the operator.

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;
use usersync_core::TenantConfig;

use crate::retry::{transport_error, AttemptError};
use crate::{response, urls, Credentials, GraphClient, GraphError};

/// The resources a tenant with change notifications subscribes to: its users
/// always, its groups only when `memberOf` names groups (membership decides scope).
pub fn subscription_resources(tenant: &TenantConfig) -> Vec<&'static str> {
    if tenant.provider_settings.user_filter.member_of.is_empty() {
        vec![USERS_RESOURCE]
    } else {
        vec![USERS_RESOURCE, GROUPS_RESOURCE]
    }
}

pub const USERS_RESOURCE: &str = "/users";
pub const GROUPS_RESOURCE: &str = "/groups";

/// What a new subscription asks Graph for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    /// `/users` or `/groups`.
    pub resource: String,
    /// e.g. `updated,deleted`.
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: String,
    /// Sent back with every notification: the endpoint's proof it is Graph.
    pub client_state: String,
    pub expires_at: DateTime<Utc>,
}

/// A subscription as Graph answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    /// The expiry Graph granted (it may shorten what was asked for).
    pub expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionBody {
    id: String,
    expiration_date_time: DateTime<Utc>,
}

/// Graph's code when its validation request to the notification URL failed.
const VALIDATION_ERROR_CODE: &str = "ValidationError";

impl GraphClient {
    /// `POST /subscriptions`. Graph validates both URLs before it answers.
    pub async fn create_subscription(
        &self,
        creds: &Credentials,
        new: &NewSubscription,
    ) -> Result<Subscription, GraphError> {
        let body = json!({
            "changeType": new.change_type,
            "resource": new.resource,
            "notificationUrl": new.notification_url,
            "lifecycleNotificationUrl": new.lifecycle_notification_url,
            "clientState": new.client_state,
            "expirationDateTime": graph_time(new.expires_at),
        });
        let url = self.subscription_url(None, "")?;
        let answer = self
            .send_json(creds, Method::POST, &url, Some(&body))
            .await
            .map_err(|error| validation_reason(error, &new.notification_url))?;
        subscription_of(answer, &url)
    }

    /// `PATCH /subscriptions/{id}` with a new `expirationDateTime`.
    pub async fn renew_subscription(
        &self,
        creds: &Credentials,
        subscription_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Subscription, GraphError> {
        let url = self.subscription_url(Some(subscription_id), "")?;
        let body = json!({ "expirationDateTime": graph_time(expires_at) });
        let answer = self
            .send_json(creds, Method::PATCH, &url, Some(&body))
            .await
            .map_err(|error| not_found(error, subscription_id))?;
        subscription_of(answer, &url)
    }

    /// `POST /subscriptions/{id}/reauthorize`, as a `reauthorizationRequired`
    /// lifecycle event asks.
    pub async fn reauthorize_subscription(
        &self,
        creds: &Credentials,
        subscription_id: &str,
    ) -> Result<(), GraphError> {
        let url = self.subscription_url(Some(subscription_id), "/reauthorize")?;
        self.send_json(creds, Method::POST, &url, None)
            .await
            .map_err(|error| not_found(error, subscription_id))?;
        Ok(())
    }

    /// `DELETE /subscriptions/{id}`; a 404 is [`GraphError::SubscriptionNotFound`]
    /// (for the caller, usually as good as deleted).
    pub async fn delete_subscription(
        &self,
        creds: &Credentials,
        subscription_id: &str,
    ) -> Result<(), GraphError> {
        let url = self.subscription_url(Some(subscription_id), "")?;
        self.send_json(creds, Method::DELETE, &url, None)
            .await
            .map_err(|error| not_found(error, subscription_id))?;
        Ok(())
    }

    fn subscription_url(&self, id: Option<&str>, tail: &str) -> Result<Url, GraphError> {
        let link = urls::subscription(&self.config().graph_base_url, id, tail);
        urls::trusted_link(&self.config().graph_base_url, &link)
    }

    /// One JSON call with the client's retries and token refresh; the body of
    /// the answer, `None` for an empty one (204).
    async fn send_json(
        &self,
        creds: &Credentials,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Option<Value>, GraphError> {
        self.with_fresh_token(creds, || async {
            let token = self.token(creds).await?;
            let mut request = self
                .http()
                .request(method.clone(), url.clone())
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = self.timed_send(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(transport_error)?;
            if !status.is_success() {
                return Err(response::failure(url, status, &headers, &bytes));
            }
            if bytes.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(&bytes).map(Some).map_err(|error| {
                AttemptError::Stop(GraphError::InvalidResponse {
                    reason: format!(
                        "HTTP {status} to {method} {}: the body is not JSON ({error})",
                        url.path()
                    ),
                })
            })
        })
        .await
    }
}

/// Graph's `expirationDateTime` form.
fn graph_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn subscription_of(answer: Option<Value>, url: &Url) -> Result<Subscription, GraphError> {
    let invalid = |reason: String| GraphError::InvalidResponse {
        reason: format!("the answer to {}: {reason}", url.path()),
    };
    let body = answer.ok_or_else(|| invalid("no body, where a subscription was expected".to_owned()))?;
    let body: SubscriptionBody = serde_json::from_value(body).map_err(|error| {
        invalid(format!(
            "not a subscription with `id` and `expirationDateTime` ({error})"
        ))
    })?;
    Ok(Subscription {
        id: body.id,
        expires_at: body.expiration_date_time,
    })
}

fn not_found(error: GraphError, subscription_id: &str) -> GraphError {
    match error {
        GraphError::Http {
            status: 404, message, ..
        } => GraphError::SubscriptionNotFound {
            subscription_id: subscription_id.to_owned(),
            message,
        },
        other => other,
    }
}

fn validation_reason(error: GraphError, notification_url: &str) -> GraphError {
    match error {
        GraphError::Http {
            status: 400,
            code,
            message,
        } if code.eq_ignore_ascii_case(VALIDATION_ERROR_CODE) => GraphError::NotificationUrlRejected {
            url: notification_url.to_owned(),
            message,
        },
        other => other,
    }
}
