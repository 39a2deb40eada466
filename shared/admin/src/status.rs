//! Status, run history and one run with its live counts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use usersync_contract::RunCounts;
use usersync_core::{schedule::next_due, Schedule, TenantConfig};
use usersync_graph::subscription_resources;
use usersync_store::{GraphSubscription, RunProgress, RunRow, RunState, Store, TenantOverview};
use uuid::Uuid;

use crate::{no_tenant, require_tenant, AdminError, AdminResult};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusLine {
    pub id: String,
    pub mode: String,
    /// The run in progress (`fetching`, `differing`, `applying`), `queued`
    /// when only a follow-up waits to start, or `idle`.
    pub state: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run: Option<RunSummary>,
    /// The follow-up run queued to start when the run in progress ends.
    pub queued_run: Option<String>,
    pub pending_deletions: i64,
    pub next_run_at: Option<DateTime<Utc>>,
    pub change_notifications: ChangeNotifications,
}

/// The tenant's Graph change notifications.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ChangeNotifications {
    /// The tenant file's `change_notifications`.
    pub enabled: bool,
    pub last_notification_at: Option<DateTime<Utc>>,
    /// One per resource subscribed (or to subscribe, or still to delete).
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// One subscription of the tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionStatus {
    /// `/users` or `/groups`.
    pub resource: String,
    /// Graph's id; null until created.
    pub subscription_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Why the last create or renewal failed; null while it works.
    pub last_error: Option<String>,
    /// When the scheduler tries again after a failure.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl ChangeNotifications {
    /// From the tenant file, the recorded subscriptions and the last
    /// notification; a resource wanted but not recorded yet is listed empty.
    pub fn new(
        tenant: Option<&TenantConfig>,
        recorded: &[GraphSubscription],
        last_notification_at: Option<DateTime<Utc>>,
    ) -> ChangeNotifications {
        let enabled = tenant.is_some_and(|t| t.change_notifications);
        let mut subscriptions: Vec<SubscriptionStatus> = recorded
            .iter()
            .map(|row| SubscriptionStatus {
                resource: row.resource.clone(),
                subscription_id: row.subscription_id.clone(),
                expires_at: row.expires_at,
                last_error: row.last_error.clone(),
                next_attempt_at: row.next_attempt_at,
            })
            .collect();
        if let (true, Some(tenant)) = (enabled, tenant) {
            for resource in subscription_resources(tenant) {
                if !subscriptions.iter().any(|s| s.resource == resource) {
                    subscriptions.push(SubscriptionStatus {
                        resource: resource.to_owned(),
                        subscription_id: None,
                        expires_at: None,
                        last_error: None,
                        next_attempt_at: None,
                    });
                }
            }
        }
        subscriptions.sort_by(|a, b| b.resource.cmp(&a.resource)); // `/users` first
        ChangeNotifications {
            enabled,
            last_notification_at,
            subscriptions,
        }
    }
}

/// Counts of what a run did (so far, while it goes).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Deletions held back by the mass-deletion guard.
    pub held: i64,
}

impl From<RunCounts> for Counts {
    fn from(c: RunCounts) -> Self {
        Counts {
            created: c.created,
            updated: c.updated,
            deleted: c.deleted,
            skipped: c.skipped,
            failed: c.failed,
            held: c.held,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub state: String,
    pub trigger: String,
    /// None while the run is queued.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// So far while the run is in progress; final once it ended.
    pub counts: Counts,
    /// Planned changes not applied yet (while the run is in progress).
    pub changes_pending: i64,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

impl From<&RunRow> for RunSummary {
    fn from(run: &RunRow) -> Self {
        RunSummary {
            id: run.id.to_string(),
            state: run.state.clone(),
            trigger: run.trigger.clone(),
            started_at: (run.state != RunState::Queued.as_str()).then_some(run.started_at),
            finished_at: run.finished_at,
            counts: run.counts.into(),
            changes_pending: run.changes_pending.into(),
            error: run.error.clone(),
            error_code: run.error_code.clone(),
        }
    }
}

impl StatusLine {
    /// `schedule` is the tenant's schedule, for a tenant the scheduler has not seen yet.
    pub fn new(
        tenant: TenantOverview,
        schedule: Option<&Schedule>,
        change_notifications: ChangeNotifications,
        now: DateTime<Utc>,
    ) -> StatusLine {
        let state = match (&tenant.last_run, tenant.queued_run) {
            (Some(run), _) if run.finished_at.is_none() => run.state.clone(),
            // The run it waited for has ended; the scheduler starts it next.
            (_, Some(_)) => "queued".to_owned(),
            _ => "idle".to_owned(),
        };
        StatusLine {
            next_run_at: tenant
                .next_due
                .or_else(|| schedule.map(|schedule| next_due(schedule, now))),
            id: tenant.tenant_id,
            mode: tenant.mode,
            state,
            last_success_at: tenant.last_success_at,
            last_run: tenant.last_run.as_ref().map(RunSummary::from),
            queued_run: tenant.queued_run.map(|id| id.to_string()),
            pending_deletions: tenant.pending_deletions,
            change_notifications,
        }
    }
}

/// Every tenant's status line, or only `id`'s (an error when it is missing).
pub async fn status(store: &Store, id: Option<&str>) -> AdminResult<Vec<StatusLine>> {
    let tenants = store.tenant_overview(id).await?;
    if let (Some(id), true) = (id, tenants.is_empty()) {
        return Err(no_tenant(id));
    }
    // Tenant files: the next run of a tenant the scheduler has not seen yet
    // (from its schedule), and whether it has change notifications on.
    let configs: HashMap<String, TenantConfig> = store
        .tenants()
        .await?
        .into_iter()
        .map(|t| (t.config.id.clone(), t.config))
        .collect();
    let mut subscriptions: HashMap<String, Vec<GraphSubscription>> = HashMap::new();
    for row in store.graph_subscriptions(id, None).await? {
        subscriptions.entry(row.tenant_id.clone()).or_default().push(row);
    }
    let last_notifications = store.last_notifications(id).await?;
    let now = usersync_runtime::clock::now();
    Ok(tenants
        .into_iter()
        .map(|t| {
            let config = configs.get(&t.tenant_id);
            let notifications = ChangeNotifications::new(
                config,
                subscriptions.get(&t.tenant_id).map_or(&[], Vec::as_slice),
                last_notifications.get(&t.tenant_id).copied(),
            );
            StatusLine::new(t, config.map(|c| &c.schedule), notifications, now)
        })
        .collect())
}

/// The tenant's runs, newest first.
pub async fn runs(store: &Store, id: &str, limit: i64) -> AdminResult<Vec<RunRow>> {
    require_tenant(store, id).await?;
    Ok(store.runs(id, limit).await?)
}

/// How far a run has got.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Directory pages the differ has recorded.
    pub pages: i64,
    /// Users the run decided a change for.
    pub planned: i64,
    /// Of those, the changes done (applied, failed or superseded).
    pub applied: i64,
    pub skipped: i64,
    /// Welcome mails sent.
    pub mails: i64,
    /// Changes still to do.
    pub to_do: i64,
}

impl From<RunProgress> for Progress {
    fn from(p: RunProgress) -> Self {
        Progress {
            pages: p.pages,
            planned: p.planned,
            applied: p.applied,
            skipped: p.skipped,
            mails: p.mails,
            to_do: p.planned - p.applied,
        }
    }
}

/// One run with its live progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    /// The id it was asked for by, when that was a resync request that
    /// joined another run (then `id` is the run it joined).
    pub requested_as: Option<String>,
    pub progress: Progress,
}

/// A tenant's run by its id, or by the id of the resync request that led to
/// it (a request that joined a run in progress, or one queued after it).
pub async fn run(store: &Store, tenant_id: &str, run_id: Uuid) -> AdminResult<RunDetail> {
    let not_found = || {
        AdminError::NotFound(format!(
            "no run {run_id} of tenant {tenant_id:?} (yet): a resync request becomes a run as soon as \
             the fetcher takes it; ask again in a moment, or see the tenant's runs"
        ))
    };
    let resolved = store.run_for_request(run_id).await?.ok_or_else(not_found)?;
    let (row, progress) = store
        .run_with_progress(resolved)
        .await?
        .filter(|(row, _)| row.tenant_id == tenant_id)
        .ok_or_else(not_found)?;
    Ok(RunDetail {
        run: RunSummary::from(&row),
        requested_as: (resolved != run_id).then(|| run_id.to_string()),
        progress: progress.into(),
    })
}

/// One source property seen in the tenant's directory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldInfo {
    /// As a mapping names it, e.g. `mail` or `onPremisesExtensionAttributes.extensionAttribute1`.
    pub field: String,
    /// Users having a value.
    pub users: i64,
    pub example: serde_json::Value,
}

/// The discovered fields (recorded by each successful sync; none before the first).
pub async fn fields(store: &Store, id: &str) -> AdminResult<Vec<FieldInfo>> {
    require_tenant(store, id).await?;
    Ok(store
        .fields(id)
        .await?
        .into_iter()
        .map(|f| FieldInfo {
            field: f.field,
            users: f.users,
            example: f.example,
        })
        .collect())
}
