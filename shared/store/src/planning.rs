//! What planning needs beyond one user at a time: whom a run decides, the
//! tenant-wide claims on unique values, the deletion guard's approvals, the
//! run's warnings, and the look-ups of `usersync plan` and `usersync explain`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_postgres::types::Json;
use usersync_core::{Action, Claim, UniqueField};
use uuid::Uuid;

use crate::directory::{RECONCILE_COLUMNS, RECONCILE_JOINS};
use crate::{ReconcileRow, Result, Round, Store};

/// Claims on unique values gathered over a whole tenant in a session-local
/// temporary table, so the tenant-wide check holds no directory in memory and
/// writes nothing lasting (`usersync plan` uses it too).
pub struct ClaimSession {
    pub(crate) client: deadpool_postgres::Object,
}

impl ClaimSession {
    /// A page of users to reconcile, read on the session's own connection: a
    /// survey never waits for a second connection while it holds one, so
    /// concurrent surveys cannot starve a small pool.
    pub async fn reconcile_rows(
        &mut self,
        tenant_id: &str,
        chosen: Option<Uuid>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ReconcileRow>> {
        crate::directory::reconcile_page(&mut self.client, tenant_id, chosen, after, limit).await
    }

    /// Adds users to those run `run_id` decides (the users in a conflict
    /// with one it decides).
    pub async fn choose(&self, run_id: Uuid, object_ids: &[&str]) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO run_plan_users (run_id, object_id)
                 SELECT $1, id FROM unnest($2::text[]) AS id ON CONFLICT DO NOTHING",
                &[&run_id, &object_ids],
            )
            .await
            .context("choosing users in a conflict")?;
        Ok(())
    }

    /// The tenant's users with a PBX account (for the mass-deletion guard).
    pub async fn synced_users(&self, tenant_id: &str) -> Result<u64> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM sync_users
                 WHERE tenant_id = $1 AND pbx_id IS NOT NULL AND applied IS NOT NULL",
                &[&tenant_id],
            )
            .await
            .context("counting the users in the PBX")?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    pub async fn add(&self, claims: &[Claim]) -> Result<()> {
        let fields: Vec<&str> = claims.iter().map(|c| c.field.as_str()).collect();
        let values: Vec<&str> = claims.iter().map(|c| c.value.as_str()).collect();
        let ids: Vec<&str> = claims.iter().map(|c| c.object_id.as_str()).collect();
        let holds: Vec<bool> = claims.iter().map(|c| c.holds).collect();
        let wants: Vec<bool> = claims.iter().map(|c| c.wants).collect();
        self.client
            .execute(
                "INSERT INTO plan_claims (field, value, object_id, holds, wants)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[])",
                &[&fields, &values, &ids, &holds, &wants],
            )
            .await
            .context("recording claims on unique values")?;
        Ok(())
    }

    /// Every claim on a value that more than one user claims. With `chosen`
    /// (the run that decides only some users), the claims added are those of
    /// the users it decides, and the stored claims of everyone else on the
    /// same values count too (looked up value by value: OFFSET 0 keeps the
    /// planner from joining the tenant's claims instead).
    pub async fn contested(&self, tenant_id: &str, chosen: Option<Uuid>) -> Result<Vec<Claim>> {
        let rows = self
            .client
            .query(
                "WITH everyone AS (
                   SELECT field, value, object_id, holds, wants FROM plan_claims
                   UNION ALL
                   SELECT u.field, u.value, u.object_id, u.holds, u.wants
                   FROM (SELECT DISTINCT field, value FROM plan_claims WHERE $2::uuid IS NOT NULL) v
                   CROSS JOIN LATERAL (SELECT * FROM user_claims
                                       WHERE tenant_id = $1 AND field = v.field AND value = v.value
                                       OFFSET 0) u
                   WHERE NOT EXISTS (SELECT 1 FROM run_plan_users p
                                     WHERE p.run_id = $2 AND p.object_id = u.object_id)
                 )
                 SELECT c.field, c.value, c.object_id, c.holds, c.wants
                 FROM everyone c
                 JOIN (SELECT field, value FROM everyone GROUP BY field, value
                       HAVING count(DISTINCT object_id) > 1) g
                   ON g.field = c.field AND g.value = c.value
                 ORDER BY c.field, c.value, c.object_id",
                &[&tenant_id, &chosen],
            )
            .await
            .context("finding contested values")?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(Claim {
                    field: UniqueField::parse(row.get("field"))?,
                    value: row.get("value"),
                    object_id: row.get("object_id"),
                    holds: row.get("holds"),
                    wants: row.get("wants"),
                })
            })
            .collect())
    }

    pub async fn finish(self) -> Result<()> {
        self.client
            .batch_execute("DROP TABLE IF EXISTS plan_claims")
            .await
            .context("dropping the claims table")?;
        Ok(())
    }
}

/// What the tenant's last stored plan was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPlan {
    /// It was planned from the same basis (tenant file and planner version).
    pub same_basis: bool,
    /// When it last decided everyone.
    pub full_planned_at: DateTime<Utc>,
}

/// One change planned for a user in a run, and how it ended.
#[derive(Debug, Clone)]
pub struct ChangeHistory {
    pub run_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub action: Action,
    pub outcome: String,
    pub detail: Option<String>,
}

/// A user whose deletion the mass-deletion guard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldUser {
    pub object_id: String,
    pub pbx_id: Option<String>,
    pub alias: Option<String>,
}

impl Store {
    /// Opens a claims session on a connection of its own.
    pub async fn claim_session(&self) -> Result<ClaimSession> {
        let client = self.client().await?;
        // A session that ended without `finish` left its table: start empty.
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS plan_claims
                   (field text NOT NULL, value text NOT NULL, object_id text NOT NULL,
                    holds boolean NOT NULL, wants boolean NOT NULL);
                 TRUNCATE plan_claims;",
            )
            .await
            .context("creating the claims table")?;
        Ok(ClaimSession { client })
    }

    /// The tenant's last stored plan, compared with `basis`; `None` before any.
    pub async fn last_plan(&self, tenant_id: &str, basis: &str) -> Result<Option<LastPlan>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT basis = md5($2) AS same_basis, full_planned_at FROM tenant_plans WHERE tenant_id = $1",
                &[&tenant_id, &basis],
            )
            .await
            .context("loading the last plan's basis")?;
        Ok(row.map(|row| LastPlan {
            same_basis: row.get("same_basis"),
            full_planned_at: row.get("full_planned_at"),
        }))
    }

    /// Chooses whom run `run_id` decides when not everyone: the users its
    /// round returned and those not settled. Forgets an earlier attempt's
    /// choice first. Returns how many.
    pub async fn choose_plan_users(&self, run_id: Uuid, tenant_id: &str, round: Round) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM run_plan_users WHERE run_id = $1", &[&run_id])
            .await
            .context("forgetting an earlier choice")?;
        let chosen = tx
            .execute(
                "INSERT INTO run_plan_users (run_id, object_id)
                 SELECT $1::uuid, object_id FROM directory_users WHERE tenant_id = $2 AND seen_round = $3
                 UNION
                 SELECT $1::uuid, object_id FROM sync_users
                 WHERE tenant_id = $2 AND (settled_version IS NULL OR applied_version < settled_version)",
                &[&run_id, &tenant_id, &round.round_id],
            )
            .await
            .context("choosing the users to decide")?;
        tx.commit().await?;
        Ok(chosen)
    }

    /// How many users' deletions the guard holds now.
    pub async fn held_deletions(&self, tenant_id: &str) -> Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM sync_users WHERE tenant_id = $1 AND state = 'held'",
                &[&tenant_id],
            )
            .await
            .context("counting held deletions")?;
        Ok(row.get(0))
    }

    /// The users whose deletion the guard holds now, by object id: their PBX
    /// id and the alias they have there.
    pub async fn held_users(&self, tenant_id: &str) -> Result<Vec<HeldUser>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT object_id, pbx_id, applied ->> 'alias' AS alias FROM sync_users
                 WHERE tenant_id = $1 AND state = 'held' ORDER BY object_id",
                &[&tenant_id],
            )
            .await
            .context("listing held deletions")?;
        Ok(rows
            .iter()
            .map(|row| HeldUser {
                object_id: row.get("object_id"),
                pbx_id: row.get("pbx_id"),
                alias: row.get("alias"),
            })
            .collect())
    }

    /// Records an operator's approval of held deletions, for the tenant's next run.
    pub async fn approve_deletions(&self, tenant_id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO deletion_approvals (tenant_id) VALUES ($1)",
                &[&tenant_id],
            )
            .await
            .context("recording the approval")?;
        Ok(())
    }

    /// Takes the tenant's open approvals for this run. True when there was one
    /// (or this run took one before: a redelivered round plans the same way).
    pub async fn use_deletion_approval(&self, tenant_id: &str, run_id: Uuid) -> Result<bool> {
        let client = self.client().await?;
        let taken = client
            .query(
                "UPDATE deletion_approvals SET used_by_run = $2
                 WHERE tenant_id = $1 AND (used_by_run IS NULL OR used_by_run = $2)
                 RETURNING id",
                &[&tenant_id, &run_id],
            )
            .await
            .context("taking the deletion approval")?;
        Ok(!taken.is_empty())
    }

    /// Whether an approval waits for the tenant's next run (changes nothing).
    pub async fn has_open_deletion_approval(&self, tenant_id: &str) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deletion_approvals WHERE tenant_id = $1 AND used_by_run IS NULL)",
                &[&tenant_id],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records the deletions a run held back and its run-level warnings, for
    /// the run's counts and its report.
    pub async fn record_plan_outcome(&self, run_id: Uuid, held: i64, warnings: &[String]) -> Result<()> {
        let held = i32::try_from(held).unwrap_or(i32::MAX);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE runs SET held = $2, warnings = $3 WHERE id = $1",
                &[&run_id, &held, &Json(warnings)],
            )
            .await
            .context("recording held deletions and warnings")?;
        Ok(())
    }

    /// The round the tenant's last plan was made from: its filter-group
    /// members say who is in scope for a dry run.
    pub async fn latest_round(&self, tenant_id: &str) -> Result<Option<Round>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                // Plans recorded before V18 name no round: then the last page
                // of the last run past reading.
                "SELECT run_id, round_id FROM (
                     SELECT 0 AS rank, run_id, round_id FROM tenant_plans
                     WHERE tenant_id = $1 AND round_id IS NOT NULL
                     UNION ALL
                     (SELECT 1, p.run_id, p.round_id FROM round_pages p JOIN runs r ON r.id = p.run_id
                      WHERE r.tenant_id = $1 AND r.state NOT IN ('fetching', 'differing')
                      ORDER BY r.started_at DESC, p.page DESC LIMIT 1)) rounds
                 ORDER BY rank LIMIT 1",
                &[&tenant_id],
            )
            .await
            .context("finding the last round")?;
        Ok(row.map(|row| Round {
            run_id: row.get(0),
            round_id: row.get(1),
        }))
    }

    /// The users `key` names: an object id, a synced alias, a mail address or
    /// a user principal name (case-insensitive).
    pub async fn find_users(&self, tenant_id: &str, key: &str) -> Result<Vec<ReconcileRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {RECONCILE_COLUMNS} FROM directory_users d {RECONCILE_JOINS}
                     WHERE d.tenant_id = $1
                       AND (d.object_id = $2
                            OR lower(s.desired->>'alias') = lower($2)
                            OR lower(s.applied->>'alias') = lower($2)
                            OR lower(d.source->>'mailNickname') = lower($2)
                            OR lower(d.source->>'mail') = lower($2)
                            OR lower(d.source->>'userPrincipalName') = lower($2))
                     ORDER BY d.object_id LIMIT 10"
                ),
                &[&tenant_id, &key],
            )
            .await
            .context("looking the user up")?;
        Ok(rows.iter().map(ReconcileRow::from_row).collect())
    }

    /// The user's latest planned changes, newest first.
    pub async fn change_history(
        &self,
        tenant_id: &str,
        object_id: &str,
        limit: i64,
    ) -> Result<Vec<ChangeHistory>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.run_id, r.started_at, c.action, c.outcome, c.detail
                 FROM run_changes c JOIN runs r ON r.id = c.run_id
                 WHERE r.tenant_id = $1 AND c.object_id = $2
                 ORDER BY r.started_at DESC LIMIT $3",
                &[&tenant_id, &object_id, &limit],
            )
            .await
            .context("loading the user's changes")?;
        Ok(rows
            .iter()
            .map(|row| {
                let Json(action) = row.get("action");
                ChangeHistory {
                    run_id: row.get("run_id"),
                    started_at: row.get("started_at"),
                    action,
                    outcome: row.get("outcome"),
                    detail: row.get("detail"),
                }
            })
            .collect())
    }
}
