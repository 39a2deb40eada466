//! Graph change-notification subscriptions and the notifications they bring.
//!
//! Rows are worked on by the fetcher's scheduler (create, renew, recreate,
//! delete: one replica at a time per row, by a lease) and read by the API's
//! notification endpoint (the clientState check, lifecycle requests).

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::{Result, SecretKey, Store};

/// A lifecycle event's request for the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAction {
    /// `reauthorizationRequired`: reauthorise the subscription.
    Reauthorize,
    /// `subscriptionRemoved`: Graph dropped it; create it again.
    Recreate,
}

impl SubscriptionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reauthorize => "reauthorize",
            Self::Recreate => "recreate",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "reauthorize" => Some(Self::Reauthorize),
            "recreate" => Some(Self::Recreate),
            _ => None,
        }
    }
}

/// One tenant's subscription on one resource, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSubscription {
    pub tenant_id: String,
    /// `/users` or `/groups`.
    pub resource: String,
    /// Graph's id; `None` until created, or after Graph lost it.
    pub subscription_id: Option<String>,
    /// The clientState, decrypted; `None` when read without a key or not created.
    pub client_state: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub action: Option<SubscriptionAction>,
    /// Why the last create or renewal failed (cleared when one succeeds).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the scheduler tries again after a failure.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Failures in a row.
    pub attempts: i32,
}

const COLUMNS: &str = "tenant_id, resource, subscription_id, client_state_enc, expires_at, action,
    last_error, last_error_at, next_attempt_at, attempts";

fn subscription(row: &Row, key: Option<&SecretKey>) -> Result<GraphSubscription> {
    let client_state = match (key, row.get::<_, Option<String>>("client_state_enc")) {
        (Some(key), Some(sealed)) => Some(key.decrypt(&sealed)?),
        _ => None,
    };
    Ok(GraphSubscription {
        tenant_id: row.get("tenant_id"),
        resource: row.get("resource"),
        subscription_id: row.get("subscription_id"),
        client_state,
        expires_at: row.get("expires_at"),
        action: row
            .get::<_, Option<String>>("action")
            .as_deref()
            .and_then(SubscriptionAction::parse),
        last_error: row.get("last_error"),
        last_error_at: row.get("last_error_at"),
        next_attempt_at: row.get("next_attempt_at"),
        attempts: row.get("attempts"),
    })
}

impl Store {
    /// The recorded subscriptions (of one tenant, or of all), by tenant and
    /// resource; clientStates are decrypted only when `key` is given.
    pub async fn graph_subscriptions(
        &self,
        tenant_id: Option<&str>,
        key: Option<&SecretKey>,
    ) -> Result<Vec<GraphSubscription>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM graph_subscriptions
                     WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, resource"
                ),
                &[&tenant_id],
            )
            .await
            .context("listing Graph subscriptions")?;
        rows.iter().map(|row| subscription(row, key)).collect()
    }

    /// The subscription Graph knows by `subscription_id`, with its clientState.
    pub async fn graph_subscription_by_id(
        &self,
        subscription_id: &str,
        key: &SecretKey,
    ) -> Result<Option<GraphSubscription>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM graph_subscriptions WHERE subscription_id = $1"),
                &[&subscription_id],
            )
            .await
            .context("looking up a Graph subscription")?;
        row.map(|row| subscription(&row, Some(key))).transpose()
    }

    /// Ids of the tenants that have `change_notifications` on.
    pub async fn notification_tenants(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM tenants WHERE (config->>'change_notifications')::boolean ORDER BY id",
                &[],
            )
            .await
            .context("listing tenants with change notifications")?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Takes the tenant's subscription on `resource` for `lease` (recording
    /// the row when it is new): true for one scheduler replica at a time.
    pub async fn claim_graph_subscription(
        &self,
        tenant_id: &str,
        resource: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool> {
        let until = now + chrono::Duration::from_std(lease).context("a lease that fits a date")?;
        let client = self.client().await?;
        let claimed = client
            .execute(
                "INSERT INTO graph_subscriptions (tenant_id, resource, claimed_until) VALUES ($1, $2, $4)
                 ON CONFLICT (tenant_id, resource) DO UPDATE SET claimed_until = $4
                 WHERE graph_subscriptions.claimed_until IS NULL OR graph_subscriptions.claimed_until < $3",
                &[&tenant_id, &resource, &now, &until],
            )
            .await
            .context("claiming a Graph subscription")?;
        Ok(claimed == 1)
    }

    /// Graph created the subscription: its id, clientState (stored
    /// encrypted) and expiry; any failure, action and claim are cleared.
    pub async fn graph_subscription_created(
        &self,
        tenant_id: &str,
        resource: &str,
        subscription_id: &str,
        client_state: &str,
        expires_at: DateTime<Utc>,
        key: &SecretKey,
    ) -> Result<()> {
        let sealed = key.encrypt(client_state);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO graph_subscriptions (tenant_id, resource, subscription_id, client_state_enc, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id, resource) DO UPDATE SET subscription_id = $3, client_state_enc = $4,
                     expires_at = $5, action = NULL, last_error = NULL, last_error_at = NULL,
                     next_attempt_at = NULL, attempts = 0, claimed_until = NULL, created_at = now(), renewed_at = NULL",
                &[&tenant_id, &resource, &subscription_id, &sealed, &expires_at],
            )
            .await
            .context("recording a created Graph subscription")?;
        Ok(())
    }

    /// Graph renewed (or reauthorised) the subscription until `expires_at`.
    pub async fn graph_subscription_renewed(
        &self,
        tenant_id: &str,
        resource: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE graph_subscriptions SET expires_at = $3, renewed_at = now(), action = NULL,
                     last_error = NULL, last_error_at = NULL, next_attempt_at = NULL, attempts = 0,
                     claimed_until = NULL
                 WHERE tenant_id = $1 AND resource = $2",
                &[&tenant_id, &resource, &expires_at],
            )
            .await
            .context("recording a renewed Graph subscription")?;
        Ok(())
    }

    /// Graph no longer has the subscription (404, removed): forget its id so
    /// the next pass creates it again.
    pub async fn graph_subscription_lost(&self, tenant_id: &str, resource: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE graph_subscriptions SET subscription_id = NULL, client_state_enc = NULL,
                     expires_at = NULL, action = NULL
                 WHERE tenant_id = $1 AND resource = $2",
                &[&tenant_id, &resource],
            )
            .await
            .context("forgetting a lost Graph subscription")?;
        Ok(())
    }

    /// Creating or renewing failed: the reason, and when to try again; the claim is released.
    pub async fn graph_subscription_failed(
        &self,
        tenant_id: &str,
        resource: &str,
        error: &str,
        at: DateTime<Utc>,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE graph_subscriptions SET last_error = $3, last_error_at = $4, next_attempt_at = $5,
                     attempts = attempts + 1, claimed_until = NULL
                 WHERE tenant_id = $1 AND resource = $2",
                &[&tenant_id, &resource, &error, &at, &next_attempt_at],
            )
            .await
            .context("recording a failed Graph subscription")?;
        Ok(())
    }

    /// Releases a claim without changing anything else.
    pub async fn release_graph_subscription(&self, tenant_id: &str, resource: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE graph_subscriptions SET claimed_until = NULL WHERE tenant_id = $1 AND resource = $2",
                &[&tenant_id, &resource],
            )
            .await
            .context("releasing a Graph subscription")?;
        Ok(())
    }

    /// Forgets the tenant's subscription on `resource` (deleted at Graph, or
    /// the tenant turned notifications off).
    pub async fn remove_graph_subscription(&self, tenant_id: &str, resource: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM graph_subscriptions WHERE tenant_id = $1 AND resource = $2",
                &[&tenant_id, &resource],
            )
            .await
            .context("removing a Graph subscription")?;
        Ok(())
    }

    /// A lifecycle event asks the scheduler to act on the subscription;
    /// returns its tenant, or `None` when no such subscription is recorded.
    pub async fn request_graph_subscription_action(
        &self,
        subscription_id: &str,
        action: SubscriptionAction,
    ) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE graph_subscriptions SET action = $2 WHERE subscription_id = $1 RETURNING tenant_id",
                &[&subscription_id, &action.as_str()],
            )
            .await
            .context("asking for work on a Graph subscription")?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Change notifications arrived for these tenants at `at`.
    pub async fn record_notifications(&self, tenant_ids: &[String], at: DateTime<Utc>) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE tenants SET last_notification_at = greatest(last_notification_at, $2)
                 WHERE id = ANY($1)",
                &[&tenant_ids, &at],
            )
            .await
            .context("recording change notifications")?;
        Ok(())
    }

    /// When the tenant's last change notification arrived.
    pub async fn last_notification_at(&self, tenant_id: &str) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT last_notification_at FROM tenants WHERE id = $1",
                &[&tenant_id],
            )
            .await
            .context("reading the last change notification")?;
        Ok(row.and_then(|row| row.get(0)))
    }

    /// When each tenant's last change notification arrived, of the tenants
    /// that had one (every tenant, or only `tenant_id`).
    pub async fn last_notifications(
        &self,
        tenant_id: Option<&str>,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, last_notification_at FROM tenants
                 WHERE last_notification_at IS NOT NULL AND ($1::text IS NULL OR id = $1)",
                &[&tenant_id],
            )
            .await
            .context("reading the last change notifications")?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}
