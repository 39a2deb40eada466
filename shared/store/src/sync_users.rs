//! The sync side: desired and applied state per user, what each run planned,
//! and how each planned change ended.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::Json;
use usersync_contract::{Change, Event, RunCounts, UserProblem};
use usersync_core::{Problem, SyncedFields};
use uuid::Uuid;

use crate::{Result, RunState, Store, BATCH_SIZE};

/// A user's sync state as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRow {
    pub state: String,
    pub desired: Option<SyncedFields>,
    pub desired_version: i64,
    pub pbx_id: Option<String>,
    pub applied: Option<SyncedFields>,
    pub applied_version: i64,
    pub pending_delete_at: Option<DateTime<Utc>>,
}

impl SyncRow {
    /// From a row that has the `sync_users` columns under their own names.
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> SyncRow {
        SyncRow {
            state: row.get("state"),
            desired: row
                .get::<_, Option<Json<SyncedFields>>>("desired")
                .map(|Json(f)| f),
            desired_version: row.get("desired_version"),
            pbx_id: row.get("pbx_id"),
            applied: row
                .get::<_, Option<Json<SyncedFields>>>("applied")
                .map(|Json(f)| f),
            applied_version: row.get("applied_version"),
            pending_delete_at: row.get("pending_delete_at"),
        }
    }
}

/// The differ's verdict on one user in one run, to store.
#[derive(Debug, Clone)]
pub struct PlannedUser {
    pub object_id: String,
    pub state: &'static str,
    pub desired: Option<SyncedFields>,
    pub desired_version: i64,
    pub problems: Vec<Problem>,
    /// Why a due deletion was held back (state `held`); not a skip.
    pub held: Option<Problem>,
    pub pending_delete_at: Option<DateTime<Utc>>,
    pub change: Option<Change>,
    /// The user needs no decision once its applied version reaches this
    /// (`None`: every run decides it).
    pub settled_version: Option<i64>,
    /// Its claims on unique values, which later runs check theirs against.
    pub claims: Vec<usersync_core::Claim>,
}

impl PlannedUser {
    /// What the user's row shows as its reasons: skip problems, or the hold.
    fn reasons(&self) -> Vec<&Problem> {
        self.problems.iter().chain(self.held.as_ref()).collect()
    }
}

/// What the end of a planned round records.
#[derive(Debug, Clone, Copy)]
pub struct RoundEnd<'a> {
    /// Where the next round starts.
    pub delta_link: &'a str,
    /// The round read the whole directory (asked for, or after lost delta state).
    pub full_round: bool,
    /// The tenant is paused: the run ends as such when nothing is pending.
    pub paused: bool,
    /// What the plan was based on (see `Store::last_plan`).
    pub basis: &'a str,
    /// The plan decided everyone, as of `planned_at`.
    pub planned_everyone: bool,
    pub planned_at: DateTime<Utc>,
}

/// How a change ended, as the applier records it.
#[derive(Debug, Clone)]
pub enum ChangeRecord {
    Created {
        pbx_id: String,
        fields: SyncedFields,
    },
    Updated {
        fields: SyncedFields,
    },
    /// An existing PBX user without an owner was linked to this directory
    /// user and brought in line; counted as an update.
    Adopted {
        pbx_id: String,
        fields: SyncedFields,
    },
    Deleted,
    /// Nothing left to write: a newer desired state exists (a later change
    /// carries it), or this one was already applied through another run.
    Superseded,
    Failed {
        reason: String,
    },
}

impl ChangeRecord {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            ChangeRecord::Created { .. } => "created",
            ChangeRecord::Updated { .. } | ChangeRecord::Adopted { .. } => "updated",
            ChangeRecord::Deleted => "deleted",
            ChangeRecord::Superseded => "superseded",
            ChangeRecord::Failed { .. } => "failed",
        }
    }
}

/// Most user problems one digest carries; the rest are counted, not listed.
const MAX_PROBLEMS_IN_EVENT: i64 = 200;

impl Store {
    /// Stores the differ's verdicts for a page of users, with the run's planned
    /// changes and skips, in one transaction. The pages come in object-id
    /// order; `numbered` is how many changes the run's earlier pages held, so
    /// each change is put in its batch ([`BATCH_SIZE`]) as it is stored, with
    /// no statement over the whole run. Returns how many changes this page
    /// holds. Storing a page again (same `numbered`) changes nothing.
    pub async fn save_plan(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        planned: &[PlannedUser],
        numbered: u64,
    ) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ids: Vec<&str> = planned.iter().map(|p| p.object_id.as_str()).collect();
        let states: Vec<&str> = planned.iter().map(|p| p.state).collect();
        let desired: Vec<Option<Json<&SyncedFields>>> =
            planned.iter().map(|p| p.desired.as_ref().map(Json)).collect();
        let versions: Vec<i64> = planned.iter().map(|p| p.desired_version).collect();
        let reasons: Vec<Vec<&Problem>> = planned.iter().map(PlannedUser::reasons).collect();
        let problems: Vec<Json<&Vec<&Problem>>> = reasons.iter().map(Json).collect();
        let pending: Vec<Option<DateTime<Utc>>> = planned.iter().map(|p| p.pending_delete_at).collect();
        let settled: Vec<Option<i64>> = planned.iter().map(|p| p.settled_version).collect();
        tx.execute(
            "INSERT INTO sync_users AS s (tenant_id, object_id, state, desired, desired_version,
                                          problems, pending_delete_at, settled_version, updated_at)
             SELECT $1, u.id, u.state, u.desired, u.version, u.problems, u.pending, u.settled, now()
             FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::jsonb[], $7::timestamptz[],
                         $8::int8[])
                  AS u(id, state, desired, version, problems, pending, settled)
             ON CONFLICT (tenant_id, object_id) DO UPDATE
               SET state = EXCLUDED.state, desired = EXCLUDED.desired,
                   desired_version = EXCLUDED.desired_version, problems = EXCLUDED.problems,
                   pending_delete_at = EXCLUDED.pending_delete_at,
                   settled_version = EXCLUDED.settled_version, updated_at = now()",
            &[
                &tenant_id, &ids, &states, &desired, &versions, &problems, &pending, &settled,
            ],
        )
        .await
        .context("storing desired state")?;
        store_claims(&tx, tenant_id, &ids, planned).await?;

        let changes: Vec<&Change> = planned.iter().filter_map(|p| p.change.as_ref()).collect();
        let change_ids: Vec<&str> = changes.iter().map(|c| c.object_id.as_str()).collect();
        let change_versions: Vec<i64> = changes.iter().map(|c| c.desired_version).collect();
        let actions: Vec<Json<&usersync_core::Action>> = changes.iter().map(|c| Json(&c.action)).collect();
        let batches = (numbered..)
            .take(changes.len())
            .map(|position| i32::try_from(position / BATCH_SIZE).context("too many changes in one run"))
            .collect::<Result<Vec<i32>>>()?;
        // Each batch's counters grow by the changes actually inserted, so a
        // page stored twice counts once.
        tx.execute(
            "WITH stored AS (
               INSERT INTO run_changes (run_id, object_id, desired_version, action, batch)
               SELECT $1, c.id, c.version, c.action, c.batch
               FROM unnest($2::text[], $3::int8[], $4::jsonb[], $5::int4[]) AS c(id, version, action, batch)
               ON CONFLICT DO NOTHING
               RETURNING batch)
             INSERT INTO run_batches AS b (run_id, batch, changes, pending)
             SELECT $1, batch, count(*), count(*) FROM stored GROUP BY batch
             ON CONFLICT (run_id, batch) DO UPDATE
               SET changes = b.changes + EXCLUDED.changes, pending = b.pending + EXCLUDED.pending",
            &[&run_id, &change_ids, &change_versions, &actions, &batches],
        )
        .await
        .context("storing planned changes")?;

        let skipped: Vec<&PlannedUser> = planned.iter().filter(|p| !p.problems.is_empty()).collect();
        let skip_ids: Vec<&str> = skipped.iter().map(|p| p.object_id.as_str()).collect();
        let skip_problems: Vec<Json<&Vec<Problem>>> = skipped.iter().map(|p| Json(&p.problems)).collect();
        if !skip_ids.is_empty() {
            tx.execute(
                "WITH stored AS (
                   INSERT INTO run_skips (run_id, object_id, problems)
                   SELECT $1, s.id, s.problems FROM unnest($2::text[], $3::jsonb[]) AS s(id, problems)
                   ON CONFLICT DO NOTHING
                   RETURNING 1)
                 UPDATE runs SET skipped = skipped + (SELECT count(*) FROM stored) WHERE id = $1",
                &[&run_id, &skip_ids, &skip_problems],
            )
            .await
            .context("storing skipped users")?;
        }
        tx.commit().await?;
        Ok(changes.len() as u64)
    }

    /// Forgets what an earlier, unfinished attempt at planning the run stored
    /// (its changes, batches and skips), so planning again numbers the batches
    /// from the start as if it were the first attempt. Only before the run
    /// applies anything; with nothing stored yet it only reads the run's row.
    pub async fn restart_plan(&self, run_id: Uuid) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT skipped > 0 OR EXISTS (SELECT 1 FROM run_batches WHERE run_id = $1)
                 FROM runs WHERE id = $1 AND state IN ('fetching', 'differing') FOR UPDATE",
                &[&run_id],
            )
            .await
            .context("loading the run's plan")?;
        if !row.is_some_and(|row| row.get::<_, bool>(0)) {
            return Ok(());
        }
        tx.execute(
            "UPDATE runs SET skipped = 0, batches = 0, changes_pending = 0 WHERE id = $1",
            &[&run_id],
        )
        .await
        .context("resetting the run's plan")?;
        for table in ["run_batches", "run_changes", "run_skips"] {
            tx.execute(&format!("DELETE FROM {table} WHERE run_id = $1"), &[&run_id])
                .await
                .with_context(|| format!("forgetting the run's earlier plan ({table})"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends the differ's part of a run: the delta link moves on, and the run
    /// waits for `changes` changes (or finishes at once when there are none).
    /// Returns the finish event when the run ended here.
    pub async fn complete_planning(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        end: &RoundEnd<'_>,
    ) -> Result<Option<Event>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one("SELECT state FROM runs WHERE id = $1 FOR UPDATE", &[&run_id])
            .await
            .context("loading the run")?;
        let state: String = row.get("state");
        if state != RunState::Differing.as_str() && state != RunState::Fetching.as_str() {
            return Ok(None);
        }
        // Per batch, not per change: the counters save_plan kept.
        let row = tx
            .query_one(
                "SELECT coalesce(sum(pending), 0)::int4, count(*)::int4 FROM run_batches WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .context("counting the run's batches")?;
        let pending: i32 = row.get(0);
        let batches: i32 = row.get(1);
        tx.execute(
            "UPDATE tenants SET delta_link = $2 WHERE id = $1",
            &[&tenant_id, &end.delta_link],
        )
        .await
        .context("moving the delta state")?;
        tx.execute(
            // The round planned is the tenant's current one: a stale round's end never gets here.
            "INSERT INTO tenant_plans AS p (tenant_id, basis, full_planned_at, run_id, round_id)
             VALUES ($1, md5($2), $3, $5, (SELECT round_id FROM tenant_rounds WHERE tenant_id = $1))
             ON CONFLICT (tenant_id) DO UPDATE
               SET basis = EXCLUDED.basis,
                   full_planned_at = CASE WHEN $4 THEN EXCLUDED.full_planned_at ELSE p.full_planned_at END,
                   run_id = EXCLUDED.run_id, round_id = EXCLUDED.round_id",
            &[
                &tenant_id,
                &end.basis,
                &end.planned_at,
                &end.planned_everyone,
                &run_id,
            ],
        )
        .await
        .context("recording the plan's basis")?;
        tx.execute("DELETE FROM run_plan_users WHERE run_id = $1", &[&run_id])
            .await
            .context("forgetting whom the run decided")?;
        tx.execute(
            "UPDATE runs SET state = 'applying', changes_pending = $2, batches = $3, full_round = $4
             WHERE id = $1",
            &[&run_id, &pending, &batches, &end.full_round],
        )
        .await?;
        let event = if pending == 0 {
            let final_state = if end.paused {
                RunState::Paused
            } else {
                RunState::Succeeded
            };
            Some(finish_run(&tx, run_id, final_state).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(event)
    }

    /// How a directory user of the tenant is called (nickname, else UPN), or
    /// None when the tenant's directory has no such user.
    pub async fn directory_user_name(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant_id: &str,
        object_id: &str,
    ) -> Result<Option<String>> {
        let row = tx
            .query_opt(
                "SELECT coalesce(source->>'mailNickname', source->>'userPrincipalName', object_id)
                 FROM directory_users WHERE tenant_id = $1 AND object_id = $2 AND NOT removed",
                &[&tenant_id, &object_id],
            )
            .await
            .context("looking up a directory user")?;
        Ok(row.map(|row| row.get(0)))
    }
}

/// Replaces the stored claims on unique values of the users `ids` with
/// those of their verdicts.
async fn store_claims(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    ids: &[&str],
    planned: &[PlannedUser],
) -> Result<()> {
    // Found user by user through the index by user (OFFSET 0 keeps the
    // planner from joining the tenant's claims instead), deleted by row id.
    tx.execute(
        "WITH earlier AS (
           SELECT c.at FROM unnest($2::text[]) AS u(id)
           CROSS JOIN LATERAL (SELECT ctid AS at FROM user_claims
                               WHERE tenant_id = $1 AND object_id = u.id OFFSET 0) c
         )
         DELETE FROM user_claims WHERE ctid = ANY(ARRAY(SELECT at FROM earlier))",
        &[&tenant_id, &ids],
    )
    .await
    .context("forgetting earlier claims")?;
    let claims: Vec<&usersync_core::Claim> = planned.iter().flat_map(|p| &p.claims).collect();
    if claims.is_empty() {
        return Ok(());
    }
    let fields: Vec<&str> = claims.iter().map(|c| c.field.as_str()).collect();
    let values: Vec<&str> = claims.iter().map(|c| c.value.as_str()).collect();
    let owners: Vec<&str> = claims.iter().map(|c| c.object_id.as_str()).collect();
    let holds: Vec<bool> = claims.iter().map(|c| c.holds).collect();
    let wants: Vec<bool> = claims.iter().map(|c| c.wants).collect();
    tx.execute(
        "INSERT INTO user_claims (tenant_id, field, value, object_id, holds, wants)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[])
         ON CONFLICT DO NOTHING",
        &[&tenant_id, &fields, &values, &owners, &holds, &wants],
    )
    .await
    .context("storing claims on unique values")?;
    Ok(())
}

/// The run's counts summed over its batches (a row of zeros before it has any).
pub(crate) const BATCH_TOTALS: &str = "(SELECT coalesce(sum(created), 0)::int4 AS created,
        coalesce(sum(updated), 0)::int4 AS updated, coalesce(sum(deleted), 0)::int4 AS deleted,
        coalesce(sum(failed), 0)::int4 AS failed, coalesce(sum(pending), 0)::int4 AS pending
     FROM run_batches WHERE run_id = $1) totals";

/// Ends the run with the counts of its batches (partial when a change failed)
/// and builds its event.
pub(crate) async fn finish_run(client: &impl GenericClient, run_id: Uuid, state: RunState) -> Result<Event> {
    let row = client
        .query_one(
            &format!(
                "UPDATE runs r SET finished_at = now(),
                        state = CASE WHEN $2 = 'succeeded' AND totals.failed > 0 THEN 'partial' ELSE $2 END,
                        created = totals.created, updated = totals.updated, deleted = totals.deleted,
                        failed = totals.failed, changes_pending = totals.pending
                 FROM {BATCH_TOTALS}
                 WHERE r.id = $1
                 RETURNING r.tenant_id, r.state, r.held, r.warnings, r.requested_at,
                           r.created, r.updated, r.deleted, r.skipped, r.failed"
            ),
            &[&run_id, &state.as_str()],
        )
        .await
        .context("ending the run")?;
    let count = |name: &str| i64::from(row.get::<_, i32>(name));
    let mut counts = RunCounts {
        created: count("created"),
        updated: count("updated"),
        deleted: count("deleted"),
        skipped: count("skipped"),
        failed: count("failed"),
        held: 0,
    };
    let state = RunState::parse(row.get("state")).unwrap_or(state);
    let tenant_id: String = row.get(0);
    counts.held = row.get::<_, i32>("held").into();
    let Json(mut warnings): Json<Vec<String>> = row.get("warnings");
    warnings.extend(crate::membership::run_warnings(client, run_id).await?);
    crate::runs::record_finished(&tenant_id, state.as_str(), None, row.get("requested_at"));
    if state != RunState::Failed {
        client
            .execute(
                "UPDATE tenants SET last_success_at = now() WHERE id = $1",
                &[&tenant_id],
            )
            .await?;
    }
    let problems = run_problems(client, run_id).await?;
    Ok(Event::RunFinished {
        tenant_id,
        run_id,
        outcome: state.as_str().to_owned(),
        counts,
        error: None,
        error_code: None,
        warnings,
        problems,
    })
}

/// The users a run skipped or failed, named by their alias or mail where known.
async fn run_problems(client: &impl GenericClient, run_id: Uuid) -> Result<Vec<UserProblem>> {
    let rows = client
        .query(
            "SELECT p.object_id, p.outcome, p.problems,
                    coalesce(d.source->>'mailNickname', d.source->>'userPrincipalName', p.object_id) AS name
             FROM (SELECT object_id, 'skipped' AS outcome, problems FROM run_skips WHERE run_id = $1
                   UNION ALL
                   SELECT object_id, 'failed', jsonb_build_array(jsonb_build_object('field', 'pbx', 'message', detail))
                   FROM run_changes WHERE run_id = $1 AND outcome = 'failed') p
             JOIN runs r ON r.id = $1
             LEFT JOIN directory_users d ON d.tenant_id = r.tenant_id AND d.object_id = p.object_id
             ORDER BY p.outcome, name
             LIMIT $2",
            &[&run_id, &MAX_PROBLEMS_IN_EVENT],
        )
        .await
        .context("listing the run's problems")?;
    let mut problems = Vec::new();
    for row in rows {
        let Json(list): Json<Value> = row.get("problems");
        let list: Vec<Problem> = serde_json::from_value(list).unwrap_or_default();
        for problem in list {
            problems.push(UserProblem {
                user: row.get("name"),
                outcome: row.get("outcome"),
                problem,
            });
        }
    }
    Ok(problems)
}
