//! Change-notification subscriptions (Graph webhooks) on `/users` and
//! `/groups`: the Graph endpoints ([`graph`]), the `/_sim` hooks for tests
//! ([`control`]) and the delivery of notifications ([`delivery`]).
//!
//! A subscription lives until its `expirationDateTime` passes on the tenant's
//! simulated clock, or until it is deleted or removed by a lifecycle event; a
//! gone subscription stays in the tenant (for the control API's listing) but
//! answers 404 on Graph and gets no notifications.

pub mod control;
pub mod delivery;
pub mod graph;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use delivery::{Counters, Queue};

/// Graph's limit for subscriptions on users and groups (29 days).
pub const MAX_EXPIRATION_MINUTES: i64 = 41760;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(ChangeKind::Created),
            "updated" => Some(ChangeKind::Updated),
            "deleted" => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}

/// The directory object a change is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangedObject {
    User(String),
    Group(String),
}

impl ChangedObject {
    /// `Users/{id}` or `Groups/{id}`, as Graph names it in `resource` and `@odata.id`.
    fn resource(&self) -> String {
        match self {
            ChangedObject::User(id) => format!("Users/{id}"),
            ChangedObject::Group(id) => format!("Groups/{id}"),
        }
    }

    fn odata_type(&self) -> &'static str {
        match self {
            ChangedObject::User(_) => "#Microsoft.Graph.User",
            ChangedObject::Group(_) => "#Microsoft.Graph.Group",
        }
    }

    fn id(&self) -> &str {
        match self {
            ChangedObject::User(id) | ChangedObject::Group(id) => id,
        }
    }
}

/// One directory change, as the control API made it.
#[derive(Clone, Debug)]
pub struct DirectoryChange {
    pub object: ChangedObject,
    pub kind: ChangeKind,
}

impl DirectoryChange {
    pub fn user(id: &str, kind: ChangeKind) -> Self {
        let object = ChangedObject::User(id.to_owned());
        DirectoryChange { object, kind }
    }

    pub fn group(id: &str, kind: ChangeKind) -> Self {
        let object = ChangedObject::Group(id.to_owned());
        DirectoryChange { object, kind }
    }
}

/// What a subscription's `resource` covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Users,
    Groups,
    Group(String),
}

impl Scope {
    /// `/users`, `users`, `/groups`, `groups`, `groups/{id}` or `/groups/{id}`.
    pub fn parse(resource: &str) -> Option<Scope> {
        let path = resource.strip_prefix('/').unwrap_or(resource);
        let (collection, id) = match path.split_once('/') {
            Some((collection, id)) => (collection, Some(id)),
            None => (path, None),
        };
        match (collection.to_ascii_lowercase().as_str(), id) {
            ("users", None) => Some(Scope::Users),
            ("groups", None) => Some(Scope::Groups),
            ("groups", Some(id)) if !id.is_empty() && !id.contains('/') => Some(Scope::Group(id.to_owned())),
            _ => None,
        }
    }

    fn covers(&self, object: &ChangedObject) -> bool {
        match (self, object) {
            (Scope::Users, ChangedObject::User(_)) | (Scope::Groups, ChangedObject::Group(_)) => true,
            (Scope::Group(id), ChangedObject::Group(changed)) => id == changed,
            _ => false,
        }
    }
}

/// Why a subscription is gone before its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Removal {
    /// `DELETE /v1.0/subscriptions/{id}`.
    Deleted,
    /// A `subscriptionRemoved` lifecycle event.
    SubscriptionRemoved,
}

pub struct Subscription {
    pub id: String,
    /// As the client sent it (Graph echoes it).
    pub resource: String,
    pub scope: Scope,
    pub change_types: Vec<ChangeKind>,
    pub client_state: Option<String>,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub expiration: DateTime<Utc>,
    pub tls_version: String,
    pub application_id: String,
    pub creator_id: String,
    pub removed: Option<Removal>,
    /// Set by a `reauthorizationRequired` event, cleared by `reauthorize`.
    pub reauthorization_pending: bool,
    /// Validation requests the subscription passed (notification and lifecycle URL).
    pub validations: u64,
    pub lifecycle_events: u64,
    pub counters: Arc<Counters>,
    /// `None` once removed: nothing more is queued.
    queue: Option<Queue>,
}

/// RFC 3339 in UTC with Graph's fractional seconds, e.g. `2026-12-05T06:00:00.1234567Z`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl Subscription {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.removed.is_none() && self.expiration > now
    }

    /// `active`, `expired`, `deleted` or `subscriptionRemoved`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        match self.removed {
            Some(Removal::Deleted) => "deleted",
            Some(Removal::SubscriptionRemoved) => "subscriptionRemoved",
            None if self.expiration <= now => "expired",
            None => "active",
        }
    }

    /// Stops deliveries; what is already queued is discarded.
    pub fn remove(&mut self, why: Removal) {
        self.removed = Some(why);
        // Dropping the queue stops the worker.
        self.queue = None;
    }

    pub fn change_type_text(&self) -> String {
        let names: Vec<&str> = self.change_types.iter().map(|k| k.as_str()).collect();
        names.join(",")
    }

    /// The change type this subscription is told, if any. A creation is
    /// `created` only to a subscription that asked for it; otherwise it is an
    /// `updated` (a new object is a change to the collection), so a
    /// subscription on `updated` alone still hears of new users and groups.
    fn reported_kind(&self, kind: ChangeKind) -> Option<ChangeKind> {
        let wants = |k| self.change_types.contains(&k);
        match kind {
            ChangeKind::Created if wants(ChangeKind::Created) => Some(ChangeKind::Created),
            ChangeKind::Created | ChangeKind::Updated if wants(ChangeKind::Updated) => {
                Some(ChangeKind::Updated)
            }
            ChangeKind::Deleted if wants(ChangeKind::Deleted) => Some(ChangeKind::Deleted),
            _ => None,
        }
    }

    /// The Graph resource, as `POST`, `GET` and `PATCH` answer it.
    pub fn to_graph(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type_text(),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": format_time(self.expiration),
            "creatorId": self.creator_id,
            "latestSupportedTlsVersion": self.tls_version,
            "includeResourceData": false,
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationQueryOptions": null,
            "notificationUrlAppId": null,
        })
    }

    /// One item of a notification's `value` array.
    pub fn notification(
        &self,
        tenant_id: &str,
        object: &ChangedObject,
        kind: ChangeKind,
        client_state: Option<&str>,
    ) -> Value {
        json!({
            "id": Uuid::new_v4().to_string(),
            "subscriptionId": self.id,
            "subscriptionExpirationDateTime": format_time(self.expiration),
            "clientState": client_state,
            "changeType": kind.as_str(),
            "resource": object.resource(),
            "tenantId": tenant_id,
            "resourceData": {
                "@odata.type": object.odata_type(),
                "@odata.id": object.resource(),
                "id": object.id(),
                "organizationId": tenant_id,
            }
        })
    }

    /// The body of a lifecycle notification.
    pub fn lifecycle_body(&self, tenant_id: &str, event: &str) -> Value {
        json!({"value": [{
            "subscriptionId": self.id,
            "subscriptionExpirationDateTime": format_time(self.expiration),
            "tenantId": tenant_id,
            "clientState": self.client_state,
            "lifecycleEvent": event,
            "resource": self.resource,
        }]})
    }
}

/// What a new subscription is made of, once its URLs passed validation.
pub struct NewSubscription {
    pub resource: String,
    pub scope: Scope,
    pub change_types: Vec<ChangeKind>,
    pub client_state: Option<String>,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub expiration: DateTime<Utc>,
    pub tls_version: String,
    pub validations: u64,
}

/// A tenant's subscriptions, gone ones included, in creation order.
#[derive(Default)]
pub struct Subscriptions(Vec<Subscription>);

impl Subscriptions {
    /// Adds the subscription and starts its delivery worker.
    pub fn create(
        &mut self,
        new: NewSubscription,
        application_id: &str,
        http: &reqwest::Client,
    ) -> &Subscription {
        let counters = Arc::new(Counters::default());
        let queue = delivery::start(http.clone(), new.notification_url.clone(), counters.clone());
        let subscription = Subscription {
            id: Uuid::new_v4().to_string(),
            resource: new.resource,
            scope: new.scope,
            change_types: new.change_types,
            client_state: new.client_state,
            notification_url: new.notification_url,
            lifecycle_url: new.lifecycle_url,
            expiration: new.expiration,
            tls_version: new.tls_version,
            application_id: application_id.to_owned(),
            // The app's service principal in real Graph; stable per app here.
            creator_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, application_id.as_bytes()).to_string(),
            removed: None,
            reauthorization_pending: false,
            validations: new.validations,
            lifecycle_events: 0,
            counters,
            queue: Some(queue),
        };
        self.0.push(subscription);
        &self.0[self.0.len() - 1]
    }

    pub fn all(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter()
    }

    pub fn live(&self, id: &str, now: DateTime<Utc>) -> Option<&Subscription> {
        self.0.iter().find(|s| s.id == id && s.is_live(now))
    }

    pub fn live_mut(&mut self, id: &str, now: DateTime<Utc>) -> Option<&mut Subscription> {
        self.0.iter_mut().find(|s| s.id == id && s.is_live(now))
    }

    /// Queues a notification to every live subscription the change concerns.
    pub fn publish(&self, tenant_id: &str, now: DateTime<Utc>, changes: &[DirectoryChange]) {
        for subscription in self.0.iter().filter(|s| s.is_live(now)) {
            let Some(queue) = &subscription.queue else {
                continue;
            };
            for change in changes.iter().filter(|c| subscription.scope.covers(&c.object)) {
                if let Some(kind) = subscription.reported_kind(change.kind) {
                    let client_state = subscription.client_state.as_deref();
                    queue.push(subscription.notification(tenant_id, &change.object, kind, client_state));
                }
            }
        }
    }
}

/// Parses a `changeType` list such as `created,updated,deleted`.
pub fn parse_change_types(text: &str) -> Result<Vec<ChangeKind>, String> {
    let mut kinds = Vec::new();
    for name in text.split(',').map(str::trim) {
        let kind = ChangeKind::parse(name).ok_or_else(|| {
            format!("changeType '{name}' is not supported; use a comma list of created, updated and deleted.")
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_of_users_and_groups_parse_with_or_without_a_slash() {
        assert_eq!(Scope::parse("/users"), Some(Scope::Users));
        assert_eq!(Scope::parse("users"), Some(Scope::Users));
        assert_eq!(Scope::parse("groups"), Some(Scope::Groups));
        assert_eq!(Scope::parse("/groups/g1"), Some(Scope::Group("g1".into())));
        assert_eq!(Scope::parse("groups/g1"), Some(Scope::Group("g1".into())));
        for refused in ["/me/messages", "users/u1", "groups/", "groups/g1/members", ""] {
            assert_eq!(Scope::parse(refused), None, "{refused}");
        }
    }

    #[test]
    fn change_types_refuse_unknown_names() {
        let kinds = parse_change_types("updated, deleted,updated").unwrap();
        assert_eq!(kinds, vec![ChangeKind::Updated, ChangeKind::Deleted]);
        let error = parse_change_types("updated,moved").unwrap_err();
        assert!(error.contains("'moved'"), "{error}");
    }
}
