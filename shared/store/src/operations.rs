//! What operating many tenants needs: the schedule's claimable due times, the
//! tenants with due deletions, one status line per tenant, and a run's progress.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::runs::{LIVE_COUNTS, RUN_COLUMNS};
use crate::{Result, RunRow, Store};

/// A tenant's schedule as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub tenant_id: String,
    /// The tenant's `schedule` object (`{"at": …, "timezone": …}`).
    pub schedule: Value,
    /// None when the due time has not been computed yet (new tenant, changed schedule).
    pub next_due: Option<DateTime<Utc>>,
}

/// One line of `usersync status`.
#[derive(Debug, Clone)]
pub struct TenantOverview {
    pub tenant_id: String,
    pub mode: String,
    pub last_success_at: Option<DateTime<Utc>>,
    /// The tenant's latest run that is not queued.
    pub last_run: Option<RunRow>,
    /// The follow-up queued to start when the run in progress ends.
    pub queued_run: Option<Uuid>,
    pub pending_deletions: i64,
    pub next_due: Option<DateTime<Utc>>,
}

/// How far a run has got, for `usersync resync --wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunProgress {
    /// Directory pages the differ has recorded.
    pub pages: i64,
    /// Users the run decided a change for.
    pub planned: i64,
    /// Users whose change is done (applied, failed or superseded).
    pub applied: i64,
    /// Users skipped for invalid source data.
    pub skipped: i64,
    /// Mails sent for the tenant since the run started.
    pub mails: i64,
}

impl Store {
    /// Tenants whose due time is missing or was computed from another schedule.
    pub async fn schedules_to_compute(&self) -> Result<Vec<ScheduleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT t.id, t.config->'schedule' AS schedule
                 FROM tenants t LEFT JOIN tenant_schedule s ON s.tenant_id = t.id
                 WHERE s.tenant_id IS NULL OR s.schedule IS DISTINCT FROM t.config->'schedule'",
                &[],
            )
            .await
            .context("listing schedules to compute")?;
        Ok(rows
            .iter()
            .map(|row| ScheduleRow {
                tenant_id: row.get(0),
                schedule: row
                    .get::<_, Option<Json<Value>>>(1)
                    .map_or(Value::Null, |Json(v)| v),
                next_due: None,
            })
            .collect())
    }

    /// Records a tenant's next due time for the schedule it was computed from.
    /// Replicas computing the same thing at once change nothing twice.
    pub async fn set_next_due(
        &self,
        tenant_id: &str,
        schedule: &Value,
        next_due: DateTime<Utc>,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO tenant_schedule (tenant_id, schedule, next_due)
                 SELECT id, $2, $3 FROM tenants WHERE id = $1
                 ON CONFLICT (tenant_id) DO UPDATE SET schedule = EXCLUDED.schedule, next_due = EXCLUDED.next_due
                 WHERE tenant_schedule.schedule IS DISTINCT FROM EXCLUDED.schedule",
                &[&tenant_id, &Json(schedule), &next_due],
            )
            .await
            .context("storing the next due time")?;
        Ok(())
    }

    /// Schedules due at `now` (a missed one after downtime included).
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<ScheduleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT tenant_id, schedule, next_due FROM tenant_schedule
                 WHERE next_due <= $1 ORDER BY next_due",
                &[&now],
            )
            .await
            .context("listing due schedules")?;
        Ok(rows
            .iter()
            .map(|row| ScheduleRow {
                tenant_id: row.get(0),
                schedule: row.get::<_, Json<Value>>(1).0,
                next_due: Some(row.get(2)),
            })
            .collect())
    }

    /// Claims a due run: moves the due time from `due` to `next` only if no
    /// other replica did first. True for exactly one claimant.
    pub async fn claim_due(&self, tenant_id: &str, due: DateTime<Utc>, next: DateTime<Utc>) -> Result<bool> {
        let client = self.client().await?;
        let claimed = client
            .execute(
                "UPDATE tenant_schedule SET next_due = $3 WHERE tenant_id = $1 AND next_due = $2",
                &[&tenant_id, &due, &next],
            )
            .await
            .context("claiming a due run")?;
        Ok(claimed == 1)
    }

    /// Gives a claimed run back (its request could not be published), so the
    /// next poll tries again.
    pub async fn unclaim_due(&self, tenant_id: &str, due: DateTime<Utc>, next: DateTime<Utc>) -> Result<()> {
        self.claim_due(tenant_id, next, due).await.map(|_| ())
    }

    /// Tenants with a deletion due at `now` and no run in progress, with the
    /// earliest due deletion, not yet swept for it.
    pub async fn due_sweeps(&self, now: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT d.tenant_id, d.earliest
                 FROM (SELECT tenant_id, min(pending_delete_at) AS earliest FROM sync_users
                        WHERE pending_delete_at <= $1 AND pbx_id IS NOT NULL
                        GROUP BY tenant_id) d
                 JOIN tenant_schedule s ON s.tenant_id = d.tenant_id
                 WHERE s.swept_for IS DISTINCT FROM d.earliest
                   AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.tenant_id = d.tenant_id AND r.finished_at IS NULL)",
                &[&now],
            )
            .await
            .context("listing due deletions")?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Claims the sweep of a tenant's deletions due from `earliest`: true for one claimant.
    pub async fn claim_sweep(&self, tenant_id: &str, earliest: DateTime<Utc>) -> Result<bool> {
        let client = self.client().await?;
        let claimed = client
            .execute(
                "UPDATE tenant_schedule SET swept_for = $2
                 WHERE tenant_id = $1 AND swept_for IS DISTINCT FROM $2",
                &[&tenant_id, &earliest],
            )
            .await
            .context("claiming a sweep")?;
        Ok(claimed == 1)
    }

    /// One line per tenant (or only `tenant_id`), ordered by id: in one query,
    /// so it stays quick with thousands of tenants.
    pub async fn tenant_overview(&self, tenant_id: Option<&str>) -> Result<Vec<TenantOverview>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT t.id AS tenant, t.config->>'mode' AS mode, t.last_success_at, s.next_due,
                        (SELECT count(*) FROM sync_users u
                          WHERE u.tenant_id = t.id AND u.pending_delete_at IS NOT NULL
                            AND u.pbx_id IS NOT NULL) AS pending_deletions,
                        {RUN_COLUMNS},
                        (SELECT q.id FROM runs q WHERE q.tenant_id = t.id AND q.state = 'queued') AS queued_run
                 FROM tenants t
                 LEFT JOIN tenant_schedule s ON s.tenant_id = t.id
                 LEFT JOIN LATERAL (SELECT * FROM runs WHERE runs.tenant_id = t.id AND runs.state <> 'queued'
                                     ORDER BY started_at DESC LIMIT 1) r ON true
                 {LIVE_COUNTS}
                 WHERE $1::text IS NULL OR t.id = $1
                 ORDER BY t.id"
                ),
                &[&tenant_id],
            )
            .await
            .context("loading the tenants' status")?;
        Ok(rows
            .iter()
            .map(|row| TenantOverview {
                tenant_id: row.get("tenant"),
                mode: row.get::<_, Option<String>>("mode").unwrap_or_default(),
                last_success_at: row.get("last_success_at"),
                last_run: row.get::<_, Option<Uuid>>("id").map(|_| RunRow::from_row(row)),
                queued_run: row.get("queued_run"),
                pending_deletions: row.get("pending_deletions"),
                next_due: row.get("next_due"),
            })
            .collect())
    }

    /// The run a resync request led to: its own, or the one it joined.
    pub async fn run_for_request(&self, request_id: Uuid) -> Result<Option<Uuid>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id FROM runs WHERE id = $1
                 UNION ALL SELECT run_id FROM run_joins WHERE request_id = $1
                 LIMIT 1",
                &[&request_id],
            )
            .await
            .context("looking up the request's run")?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The run and its progress read in one snapshot, so the counts and the
    /// changes done always agree (two reads could straddle a batch's end).
    pub async fn run_with_progress(&self, run_id: Uuid) -> Result<Option<(RunRow, RunProgress)>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .context("starting a read of the run")?;
        let Some(row) = tx
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM runs r {LIVE_COUNTS} WHERE r.id = $1"),
                &[&run_id],
            )
            .await
            .context("loading the run")?
        else {
            return Ok(None);
        };
        let progress = progress_of(&tx, run_id).await?;
        tx.commit().await.context("ending the read of the run")?;
        Ok(Some((RunRow::from_row(&row), progress)))
    }
}

async fn progress_of(client: &deadpool_postgres::Transaction<'_>, run_id: Uuid) -> Result<RunProgress> {
    let row = client
        .query_one(
            // Changes from the run's batch counters: one row per 100 changes.
            "SELECT (SELECT count(*) FROM round_pages WHERE run_id = $1) AS pages,
                    b.planned, b.applied,
                    coalesce((SELECT skipped::int8 FROM runs WHERE id = $1), 0) AS skipped,
                    (SELECT count(*) FROM mails WHERE run_id = $1 AND state = 'sent') AS mails
             FROM (SELECT coalesce(sum(changes), 0)::int8 AS planned,
                          coalesce(sum(changes - pending), 0)::int8 AS applied
                   FROM run_batches WHERE run_id = $1) b",
            &[&run_id],
        )
        .await
        .context("loading the run's progress")?;
    Ok(RunProgress {
        pages: row.get("pages"),
        planned: row.get("planned"),
        applied: row.get("applied"),
        skipped: row.get("skipped"),
        mails: row.get("mails"),
    })
}
