//! Previews in the background, for a stateless API with replicas: the
//! replica asked starts the work in a task of its own process and records it
//! in `previews`; any replica answers for it from there. The task beats while
//! it works; a preview whose process died stops beating and is reported
//! failed (`preview.abandoned`) once its heartbeat is
//! [`PREVIEW_STALE_SECS`](usersync_store::PREVIEW_STALE_SECS) old.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use usersync_core::TenantConfig;
use usersync_graph::{GraphClient, GraphError};
use usersync_planner::PlanLine;
use usersync_runtime::clock;
use usersync_store::Store;
use uuid::Uuid;

use crate::{plan::LinePage, plan_live, read_directory, Progress};

/// How often a running preview says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Most lines one GET returns.
pub const MAX_PAGE: i64 = 1000;

/// SHA-256 of the settings previewed, secrets left out, in hex: which
/// settings a preview was made with, without keeping them.
pub fn settings_hash(tenant: &TenantConfig) -> String {
    let mut settings = tenant.clone();
    settings.provider_settings.client_secret = String::new();
    let text = serde_json::to_string(&settings).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Starts a preview of `tenant` (its saved settings or unsaved ones, secrets
/// in clear) in a task of this process; returns its id at once.
pub async fn start_preview(store: &Store, graph: &GraphClient, tenant: TenantConfig) -> anyhow::Result<Uuid> {
    let id = store.create_preview(&tenant.id, &settings_hash(&tenant)).await?;
    let (store, graph) = (store.clone(), graph.clone());
    tokio::spawn(async move {
        let read = Arc::new(AtomicU64::new(0));
        let work = run_preview(&store, &graph, &tenant, id, Arc::clone(&read));
        tokio::pin!(work);
        let mut beats = tokio::time::interval(HEARTBEAT);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break Some(outcome),
                _ = beats.tick() => {
                    let users = i64::try_from(read.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
                    match store.beat_preview(id, users).await {
                        // Reported failed meanwhile (a stall longer than the
                        // stale limit): nobody waits for the rest.
                        Ok(false) => break None,
                        Ok(true) => {}
                        Err(err) => tracing::warn!(%id, error = %format!("{err:#}"), "preview heartbeat not recorded"),
                    }
                }
            }
        };
        let failure = match outcome {
            None | Some(Ok(())) => None,
            Some(Err(PreviewError::Directory(err))) => Some((err.code(), err.to_string())),
            Some(Err(PreviewError::Internal(err))) => {
                tracing::error!(%id, error = %format!("{err:#}"), "preview failed");
                Some((
                    "preview.internal".to_owned(),
                    format!("the preview could not be completed ({err:#}): start a new preview"),
                ))
            }
        };
        if let Some((code, reason)) = failure {
            if let Err(err) = store.fail_preview(id, &code, &reason).await {
                tracing::error!(%id, error = %format!("{err:#}"), "preview failure not recorded");
            }
        }
    });
    Ok(id)
}

/// Why a preview did not complete.
#[derive(Debug)]
pub enum PreviewError {
    /// The directory refused or failed (credentials, consent, a group, an outage).
    Directory(GraphError),
    /// Our own infrastructure failed.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for PreviewError {
    fn from(err: anyhow::Error) -> Self {
        PreviewError::Internal(err)
    }
}

/// The preview's lines to its table, numbered in plan order.
struct StoredLines<'a> {
    store: &'a Store,
    id: Uuid,
    next: i32,
}

impl LinePage for StoredLines<'_> {
    async fn page(&mut self, lines: Vec<PlanLine>) -> anyhow::Result<()> {
        let rows: Vec<(&str, Value)> = lines
            .iter()
            .map(|line| Ok((line.decision, serde_json::to_value(line)?)))
            .collect::<anyhow::Result<_>>()?;
        self.store.add_preview_lines(self.id, self.next, &rows).await?;
        self.next += i32::try_from(rows.len())?;
        Ok(())
    }
}

async fn run_preview(
    store: &Store,
    graph: &GraphClient,
    tenant: &TenantConfig,
    id: Uuid,
    read: Arc<AtomicU64>,
) -> Result<(), PreviewError> {
    let progress = move |step: Progress| {
        if let Progress::Users(users) = step {
            read.store(users, Ordering::Relaxed);
        }
    };
    let live = read_directory(graph, tenant, &progress)
        .await
        .map_err(PreviewError::Directory)?;
    let mut lines = StoredLines { store, id, next: 0 };
    let plan = plan_live(store, tenant, &live, clock::now(), &progress, &mut lines).await?;
    store
        .finish_preview(
            id,
            i64::try_from(live.users.len()).unwrap_or(i64::MAX),
            &plan.summary_json(),
            &serde_json::json!(plan.warnings),
        )
        .await?;
    Ok(())
}

/// A preview as the API answers for it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewReport {
    /// The preview's id, as `POST /v1/tenants/{id}/preview` answers it.
    pub run_id: Uuid,
    pub tenant_id: String,
    /// running, succeeded or failed
    pub state: String,
    pub settings_hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Users read from the directory so far.
    pub users_read: i64,
    /// Users per decision, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Value>,
    /// Run-level warnings (duplicate group names, conflicts, a deletion hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub warnings: Option<Value>,
    /// Why it failed, as for runs: a stable code and the reason with what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A page of the users' lines, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<PreviewPage>,
}

/// One page of a preview's lines.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewPage {
    /// Only lines with this decision, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    pub offset: i64,
    pub limit: i64,
    /// Lines there are in all (of that decision).
    pub total: i64,
    /// The users' lines, as `usersync plan --json` prints them.
    #[schema(value_type = Vec<usersync_planner::PlanLine>)]
    pub items: Vec<Value>,
}

/// The tenant's preview `id` with a page of its lines (`decision`: only
/// those; `limit` at most [`MAX_PAGE`]); `None` when the tenant has no such
/// preview (kept a day).
pub async fn get_preview(
    store: &Store,
    tenant_id: &str,
    id: Uuid,
    decision: Option<&str>,
    offset: i64,
    limit: i64,
) -> anyhow::Result<Option<PreviewReport>> {
    let Some(row) = store.preview(tenant_id, id).await? else {
        return Ok(None);
    };
    let (offset, limit) = (offset.max(0), limit.clamp(1, MAX_PAGE));
    let users = match row.state.as_str() {
        "succeeded" => {
            let (items, total) = store.preview_lines(id, decision, offset, limit).await?;
            Some(PreviewPage {
                decision: decision.map(str::to_owned),
                offset,
                limit,
                total,
                items,
            })
        }
        _ => None,
    };
    Ok(Some(PreviewReport {
        run_id: row.id,
        tenant_id: row.tenant_id,
        state: row.state,
        settings_hash: row.settings_hash,
        created_at: row.created_at,
        finished_at: row.finished_at,
        users_read: row.users_read,
        summary: row.summary,
        warnings: row.warnings,
        error_code: row.error_code,
        error: row.error,
        users,
    }))
}
