use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use usersync_contract::{Event, RunCounts};
use uuid::Uuid;

use crate::sync_users::BATCH_TOTALS;
use crate::{Result, Store};

/// Where a run is. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Fetching,
    Differing,
    Applying,
    Succeeded,
    /// Finished, but some users failed.
    Partial,
    Failed,
    /// The tenant is paused: nothing was changed.
    Paused,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Fetching => "fetching",
            RunState::Differing => "differing",
            RunState::Applying => "applying",
            RunState::Succeeded => "succeeded",
            RunState::Partial => "partial",
            RunState::Failed => "failed",
            RunState::Paused => "paused",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        [
            RunState::Fetching,
            RunState::Differing,
            RunState::Applying,
            RunState::Succeeded,
            RunState::Partial,
            RunState::Failed,
            RunState::Paused,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Partial | RunState::Failed | RunState::Paused
        )
    }
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub trigger: String,
    pub full_round: bool,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: RunCounts,
    pub changes_pending: i32,
    pub error: Option<String>,
    /// Stable key of the failure's cause, when the run failed.
    pub error_code: Option<String>,
}

impl RunRow {
    pub(crate) fn from_row(row: &Row) -> RunRow {
        RunRow {
            id: row.get("id"),
            tenant_id: row.get("tenant_id"),
            trigger: row.get("trigger"),
            full_round: row.get("full_round"),
            state: row.get("state"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            counts: RunCounts {
                created: row.get::<_, i32>("created").into(),
                updated: row.get::<_, i32>("updated").into(),
                deleted: row.get::<_, i32>("deleted").into(),
                skipped: row.get::<_, i32>("skipped").into(),
                failed: row.get::<_, i32>("failed").into(),
                held: row.get::<_, i32>("held").into(),
            },
            changes_pending: row.get("changes_pending"),
            error: row.get("error"),
            error_code: row.get("error_code"),
        }
    }
}

/// A run's columns, over `runs r` joined with [`LIVE_COUNTS`]: an open run's
/// counts and pending changes are the sums of its batches so far, a finished
/// run's are those recorded when it ended.
pub(crate) const RUN_COLUMNS: &str = "r.id, r.tenant_id, r.trigger, r.full_round, r.state, r.started_at,
    r.finished_at, coalesce(live.created, r.created) AS created, coalesce(live.updated, r.updated) AS updated,
    coalesce(live.deleted, r.deleted) AS deleted, r.skipped, coalesce(live.failed, r.failed) AS failed, r.held,
    coalesce(live.pending, r.changes_pending) AS changes_pending, r.error, r.error_code";

/// The open run's sums over its batches (one row per batch: a read that
/// grows with the run's size / 100, and no row any change has to wait for).
pub(crate) const LIVE_COUNTS: &str = "LEFT JOIN LATERAL
    (SELECT sum(b.created)::int4 AS created, sum(b.updated)::int4 AS updated,
            sum(b.deleted)::int4 AS deleted, sum(b.failed)::int4 AS failed, sum(b.pending)::int4 AS pending
     FROM run_batches b WHERE b.run_id = r.id AND r.finished_at IS NULL) live ON true";

/// What asking for a run led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new run was recorded.
    Started,
    /// This run was started before (a redelivered request) and has not finished: go on with it.
    Resumed,
    /// This run's round was already read (or the run has finished): nothing to do.
    AlreadyFetched,
    /// Another run of the tenant is in progress; this request joins it.
    Coalesced(Uuid),
}

/// A run that has made no progress (no page recorded, no change planned or
/// applied) for this many minutes no longer blocks new ones. Override with
/// `USERSYNC_STALE_RUN_MINUTES`.
pub const DEFAULT_STALE_RUN_MINUTES: i32 = 15;

fn stale_run_minutes() -> i32 {
    std::env::var("USERSYNC_STALE_RUN_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| m > 0)
        .unwrap_or(DEFAULT_STALE_RUN_MINUTES)
}

/// Counts a finished run by outcome, and how long it took from its request.
/// Failed and partial runs are also counted per tenant (only tenants in
/// trouble get a series), for the dashboard's errors by tenant.
pub(crate) fn record_finished(
    tenant_id: &str,
    outcome: &str,
    error_code: Option<&str>,
    requested_at: DateTime<Utc>,
) {
    metrics::counter!("usersync_runs_total", "outcome" => outcome.to_owned()).increment(1);
    if outcome == RunState::Failed.as_str() || outcome == RunState::Partial.as_str() {
        metrics::counter!(
            "usersync_tenant_run_errors_total",
            "tenant_id" => tenant_id.to_owned(),
            "outcome" => outcome.to_owned(),
            "error_code" => error_code.unwrap_or("").to_owned()
        )
        .increment(1);
    }
    let seconds = (Utc::now() - requested_at).as_seconds_f64().max(0.0);
    metrics::histogram!("usersync_run_duration_seconds").record(seconds);
}

impl Store {
    /// Records the start of a run, unless the tenant already has one in progress.
    pub async fn start_run(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        trigger: &str,
        full_round: bool,
    ) -> Result<RunStart> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Serialises run starts of one tenant.
        tx.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", &[&tenant_id])
            .await
            .context("locking the tenant")?;
        if let Some(row) = tx
            .query_opt("SELECT state FROM runs WHERE id = $1", &[&run_id])
            .await?
        {
            let state: String = row.get(0);
            return Ok(if state == RunState::Fetching.as_str() {
                RunStart::Resumed
            } else {
                RunStart::AlreadyFetched
            });
        }
        let stale_minutes = stale_run_minutes();
        let active = tx
            .query_opt(
                "SELECT id FROM runs WHERE tenant_id = $1 AND finished_at IS NULL
                   AND heartbeat_at > now() - make_interval(mins => $2)
                 ORDER BY started_at DESC LIMIT 1",
                &[&tenant_id, &stale_minutes],
            )
            .await?;
        if let Some(row) = active {
            let active: Uuid = row.get(0);
            // Whoever asked can follow the run this request joined.
            tx.execute(
                "INSERT INTO run_joins (request_id, run_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&run_id, &active],
            )
            .await
            .context("recording the joined run")?;
            tx.commit().await?;
            return Ok(RunStart::Coalesced(active));
        }
        // Runs that stopped making progress end here, so they do not stay "in progress" forever.
        let stale = tx
            .query(
                "UPDATE runs SET state = 'failed', error_code = 'run.stale', finished_at = now(),
                        error = format('no progress for %s minutes; superseded by run %s', $2::int, $3::uuid)
                 WHERE tenant_id = $1 AND finished_at IS NULL
                 RETURNING requested_at",
                &[&tenant_id, &stale_minutes, &run_id],
            )
            .await
            .context("ending stale runs")?;
        for row in &stale {
            record_finished(
                tenant_id,
                RunState::Failed.as_str(),
                Some("run.stale"),
                row.get(0),
            );
        }
        tx.execute(
            "INSERT INTO runs (id, tenant_id, trigger, full_round, state) VALUES ($1, $2, $3, $4, 'fetching')",
            &[&run_id, &tenant_id, &trigger, &full_round],
        )
        .await
        .context("recording the run")?;
        tx.commit().await?;
        Ok(RunStart::Started)
    }

    /// Moves a run to a non-final state.
    pub async fn set_run_state(&self, run_id: Uuid, state: RunState) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE runs SET state = $2 WHERE id = $1 AND finished_at IS NULL",
                &[&run_id, &state.as_str()],
            )
            .await
            .context("updating the run state")?;
        Ok(())
    }

    /// Ends a run as failed with a reason for the operator and a stable code for
    /// its cause (see `Event::RunFinished::error_code`). Returns the event that
    /// tells the notifier, or nothing when the run had already ended.
    pub async fn fail_run(&self, run_id: Uuid, code: &str, error: &str) -> Result<Option<Event>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE runs r SET state = 'failed', error = $2, error_code = $3, finished_at = now(),
                            created = totals.created, updated = totals.updated, deleted = totals.deleted,
                            failed = totals.failed, changes_pending = totals.pending
                     FROM {BATCH_TOTALS}
                     WHERE r.id = $1 AND r.finished_at IS NULL
                     RETURNING r.tenant_id, r.requested_at"
                ),
                &[&run_id, &error, &code],
            )
            .await
            .context("recording the run's failure")?;
        if let Some(row) = &row {
            record_finished(row.get(0), RunState::Failed.as_str(), Some(code), row.get(1));
        }
        Ok(row.map(|row| Event::RunFinished {
            tenant_id: row.get(0),
            run_id,
            outcome: RunState::Failed.as_str().to_owned(),
            counts: RunCounts::default(),
            error: Some(error.to_owned()),
            error_code: Some(code.to_owned()),
            warnings: Vec::new(),
            problems: Vec::new(),
        }))
    }

    pub async fn run(&self, run_id: Uuid) -> Result<Option<RunRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM runs r {LIVE_COUNTS} WHERE r.id = $1"),
                &[&run_id],
            )
            .await
            .context("loading the run")?;
        Ok(row.as_ref().map(RunRow::from_row))
    }

    /// The tenant's runs, newest first.
    pub async fn runs(&self, tenant_id: &str, limit: i64) -> Result<Vec<RunRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r {LIVE_COUNTS}
                     WHERE r.tenant_id = $1 ORDER BY r.started_at DESC LIMIT $2"
                ),
                &[&tenant_id, &limit],
            )
            .await
            .context("listing runs")?;
        Ok(rows.iter().map(RunRow::from_row).collect())
    }
}
