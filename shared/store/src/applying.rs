//! The applier's statements: a batch's users are locked and read in one
//! statement, and its outcomes, failed tries and create answers are each
//! recorded in one statement, all in one transaction per recording step
//! ([`Store::begin_step`]).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::types::Json;
use usersync_contract::Event;
use uuid::Uuid;

use crate::sync_users::finish_run;
use crate::{ChangeRecord, Result, RunState, Store, SyncRow};

/// A user locked for writing, with what the welcome mail needs from the directory.
#[derive(Debug, Clone)]
pub struct LockedUser {
    pub sync: SyncRow,
    /// The outcome of this user's change in the run (`pending` until done).
    pub outcome: String,
    pub mail: Option<String>,
    pub language: Option<String>,
    /// Definite answers (201, 4xx) to this user's creates so far: part of the
    /// next create's Idempotency-Key.
    pub create_generation: i64,
    /// The holder that refused the last create, to check before posting again.
    pub create_conflict: Option<CreateConflict>,
    /// The run listed an unowned PBX user with this user's match value (it
    /// may have been claimed since: claim it to know).
    pub unowned: bool,
}

/// The PBX user that held one of a user's unique values (`alias`,
/// `pstn_fixed`) when its create was refused with 409.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConflict {
    pub holder_id: String,
    pub field: String,
}

/// A change's own failed tries so far, as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailedTries {
    pub tries: u32,
    /// From its first failed try to the latest, by the database's clock.
    pub failing_for: std::time::Duration,
}

/// A user to lock: its object id and, for a create, its adopt-match value.
#[derive(Debug, Clone)]
pub struct UserToLock<'a> {
    pub object_id: &'a str,
    pub match_value: Option<String>,
}

/// How a change ended, to record.
#[derive(Debug, Clone)]
pub struct ChangeEnd<'a> {
    pub object_id: &'a str,
    pub desired_version: i64,
    pub record: ChangeRecord,
}

/// The definite answers (201 or 4xx) the PBX gave a user's creates in one
/// try: each moves its Idempotency-Key on. `conflict`: the holder of a
/// conflict that stands after the last one.
#[derive(Debug, Clone)]
pub struct CreateAnswers<'a> {
    pub object_id: &'a str,
    pub answers: i64,
    pub conflict: Option<CreateConflict>,
}

impl Store {
    /// Begins a recording step's transaction. Its statements touch a batch's
    /// rows, each found by its full primary key in a `LATERAL (… OFFSET 0)`
    /// lookup of its own (planned alone: a unique index scan) and updated by
    /// its `ctid`. On tables never analysed the planner may guess a tenant's
    /// or a run's rows few and scan them all instead (a cost that grows with
    /// the tenant), so the step also plans without sequential or bitmap scans
    /// and hash or merge joins: each statement costs the same at any size,
    /// whatever the planner knows.
    pub async fn begin_step(
        client: &mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'_>> {
        let tx = client.transaction().await.context("starting a transaction")?;
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;
             SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
        )
        .await
        .context("planning the step by primary keys")?;
        Ok(tx)
    }

    /// The users' sync rows, locked until the transaction ends, with the
    /// outcome their change in this run already has, by object id. Users
    /// without a change in the run are left out. Locked in object-id order,
    /// so replicas locking overlapping batches never deadlock. Serialises
    /// every write to one user across applier replicas.
    pub async fn lock_users(
        tx: &deadpool_postgres::Transaction<'_>,
        run_id: Uuid,
        tenant_id: &str,
        users: &[UserToLock<'_>],
    ) -> Result<HashMap<String, LockedUser>> {
        let mut users: Vec<&UserToLock> = users.iter().collect();
        users.sort_by_key(|u| u.object_id);
        let ids: Vec<&str> = users.iter().map(|u| u.object_id).collect();
        let values: Vec<Option<&str>> = users.iter().map(|u| u.match_value.as_deref()).collect();
        let rows = tx
            .query(
                "SELECT s.object_id, s.state, s.desired, s.desired_version, s.pbx_id, s.applied,
                        s.applied_version, s.pending_delete_at, s.create_generation, s.create_conflict,
                        c.outcome, d.source->>'mail' AS mail, d.source->>'preferredLanguage' AS language,
                        EXISTS (SELECT 1 FROM run_pbx_unowned u
                                WHERE u.run_id = $1 AND u.match_value = w.match_value) AS unowned
                 FROM unnest($3::text[], $4::text[]) AS w(object_id, match_value)
                 CROSS JOIN LATERAL (SELECT * FROM sync_users
                                     WHERE tenant_id = $2 AND object_id = w.object_id FOR UPDATE) s
                 CROSS JOIN LATERAL (SELECT outcome FROM run_changes
                                     WHERE run_id = $1 AND object_id = w.object_id OFFSET 0) c
                 LEFT JOIN LATERAL (SELECT source FROM directory_users
                                    WHERE tenant_id = $2 AND object_id = w.object_id OFFSET 0) d ON true",
                &[&run_id, &tenant_id, &ids, &values],
            )
            .await
            .context("locking the batch's users")?;
        Ok(rows
            .iter()
            .map(|row| {
                let locked = LockedUser {
                    sync: SyncRow::from_row(row),
                    outcome: row.get("outcome"),
                    mail: row.get("mail"),
                    language: row.get("language"),
                    create_generation: row.get("create_generation"),
                    // A value this code cannot read is no remembered conflict: posting decides afresh.
                    create_conflict: row
                        .get::<_, Option<Json<Value>>>("create_conflict")
                        .and_then(|Json(value)| serde_json::from_value(value).ok()),
                    unowned: row.get("unowned"),
                };
                (row.get("object_id"), locked)
            })
            .collect())
    }

    /// Records a failed try of each change's own write, with its error; the
    /// changes stay pending. A run whose changes are being tried is alive, so
    /// its heartbeat moves on too. Returns the tries of the changes still
    /// pending, by object id.
    pub async fn record_failed_tries(
        tx: &deadpool_postgres::Transaction<'_>,
        run_id: Uuid,
        failed: &[(&str, String)],
    ) -> Result<HashMap<String, FailedTries>> {
        if failed.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = failed.iter().map(|(id, _)| *id).collect();
        let errors: Vec<&str> = failed.iter().map(|(_, error)| error.as_str()).collect();
        let rows = tx
            .query(
                "WITH at AS (SELECT clock_timestamp() AS now)
                 UPDATE run_changes c SET tries = c.tries + 1, detail = f.error,
                        first_failed_at = coalesce(c.first_failed_at, at.now), last_failed_at = at.now
                 FROM at, unnest($2::text[], $3::text[]) AS f(object_id, error)
                 CROSS JOIN LATERAL (SELECT ctid FROM run_changes WHERE run_id = $1 AND object_id = f.object_id
                                       AND outcome = 'pending' OFFSET 0) found
                 WHERE c.ctid = found.ctid
                 RETURNING c.object_id, c.tries, extract(epoch FROM c.last_failed_at - c.first_failed_at)::float8",
                &[&run_id, &ids, &errors],
            )
            .await
            .context("recording failed tries of changes")?;
        // At most one heartbeat a second, however many changes fail.
        tx.execute(
            "UPDATE runs SET heartbeat_at = now() WHERE id = $1 AND finished_at IS NULL
               AND heartbeat_at < clock_timestamp() - interval '1 second'",
            &[&run_id],
        )
        .await
        .context("refreshing the run's heartbeat")?;
        Ok(rows
            .iter()
            .map(|row| {
                let tries = FailedTries {
                    tries: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                    failing_for: std::time::Duration::try_from_secs_f64(row.get::<_, f64>(2))
                        .unwrap_or_default(),
                };
                (row.get(0), tries)
            })
            .collect())
    }

    /// Records that the PBX gave definite answers to the users' creates (201
    /// or 4xx): their next creates use new Idempotency-Keys. Remembers the
    /// holder of a conflict that stands. Call it in the transaction that
    /// records the changes, so a crash before the commit repeats the same keys.
    pub async fn record_create_answers(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant_id: &str,
        answered: &[CreateAnswers<'_>],
    ) -> Result<()> {
        if answered.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = answered.iter().map(|a| a.object_id).collect();
        let answers: Vec<i64> = answered.iter().map(|a| a.answers).collect();
        let conflicts: Vec<Option<Json<&CreateConflict>>> =
            answered.iter().map(|a| a.conflict.as_ref().map(Json)).collect();
        tx.execute(
            "UPDATE sync_users s SET create_generation = s.create_generation + a.answers,
                    create_conflict = a.conflict
             FROM unnest($2::text[], $3::int8[], $4::jsonb[]) AS a(object_id, answers, conflict)
             CROSS JOIN LATERAL (SELECT ctid FROM sync_users
                                 WHERE tenant_id = $1 AND object_id = a.object_id OFFSET 0) found
             WHERE s.ctid = found.ctid",
            &[&tenant_id, &ids, &answers, &conflicts],
        )
        .await
        .context("recording the PBX's answers to creates")?;
        Ok(())
    }

    /// Records how changes ended, in one statement: the users' applied state,
    /// the changes' outcomes (only those still pending), and their counts on
    /// their batches' rows; and the PBX's answers to the step's creates
    /// (`answered`, see [`Store::record_create_answers`]). Whether the run
    /// ended with them is for [`Store::finish_if_done`] to find, after this
    /// step's commit: the run's row is not touched here, so the steps of one
    /// run never wait for one another's commits.
    pub async fn record_changes(
        tx: &deadpool_postgres::Transaction<'_>,
        run_id: Uuid,
        tenant_id: &str,
        ends: &[ChangeEnd<'_>],
        answered: &[CreateAnswers<'_>],
    ) -> Result<()> {
        let columns: Vec<Applied<'_>> = ends.iter().map(|e| Applied::of(&e.record)).collect();
        // A user linked by its create has its answers counted on the same row
        // version as its applied state; the others' answers take a statement
        // of their own (a failed or retried create, a conflict to re-check).
        let linked: HashSet<&str> = ends
            .iter()
            .zip(&columns)
            .filter(|(_, c)| c.effect == Some("linked"))
            .map(|(e, _)| e.object_id)
            .collect();
        let apart: Vec<CreateAnswers<'_>> = answered
            .iter()
            .filter(|a| !linked.contains(a.object_id))
            .cloned()
            .collect();
        Self::record_create_answers(tx, tenant_id, &apart).await?;
        if ends.is_empty() {
            return Ok(());
        }
        let folded: HashMap<&str, i64> = answered
            .iter()
            .filter(|a| linked.contains(a.object_id))
            .map(|a| (a.object_id, a.answers))
            .collect();
        let answers: Vec<i64> = ends
            .iter()
            .map(|e| folded.get(e.object_id).copied().unwrap_or(0))
            .collect();
        let ids: Vec<&str> = ends.iter().map(|e| e.object_id).collect();
        let versions: Vec<i64> = ends.iter().map(|e| e.desired_version).collect();
        let outcomes: Vec<&str> = ends.iter().map(|e| e.record.outcome()).collect();
        let effects: Vec<Option<&str>> = columns.iter().map(|c| c.effect).collect();
        let pbx_ids: Vec<Option<&str>> = columns.iter().map(|c| c.pbx_id).collect();
        let applied: Vec<Option<Json<&usersync_core::SyncedFields>>> =
            columns.iter().map(|c| c.fields.map(Json)).collect();
        let details: Vec<Option<&str>> = columns.iter().map(|c| c.detail).collect();
        let row = tx
            .query_one(
                RECORD_CHANGES,
                &[
                    &run_id, &tenant_id, &ids, &versions, &outcomes, &effects, &pbx_ids, &applied, &details,
                    &answers,
                ],
            )
            .await
            .context("recording the changes' outcomes")?;
        let unnumbered: i64 = row.get("unnumbered");
        anyhow::ensure!(
            unnumbered == 0,
            "{unnumbered} change(s) of run {run_id} have no batch"
        );
        Ok(())
    }

    /// Ends run `run_id` when it is applying and no batch of it has a change
    /// pending; returns its finish event (publish it before committing `tx`).
    /// Call it after a step's commit, and again for a batch redelivered with
    /// nothing left to write: of the steps that finish a run's last batches,
    /// the last to commit finds none pending, whatever the order. Batches
    /// still pending are looked for before any lock is taken, so a run's
    /// row is locked only by the steps that may end it.
    pub async fn finish_if_done(
        tx: &deadpool_postgres::Transaction<'_>,
        run_id: Uuid,
    ) -> Result<Option<Event>> {
        const OPEN: &str = "SELECT EXISTS (SELECT 1 FROM run_batches WHERE run_id = $1 AND pending > 0)";
        if tx
            .query_one(OPEN, &[&run_id])
            .await
            .context("looking for the run's open batches")?
            .get::<_, bool>(0)
        {
            return Ok(None);
        }
        let applying = tx
            .query_opt(
                "SELECT 1 FROM runs WHERE id = $1 AND state = 'applying' FOR UPDATE",
                &[&run_id],
            )
            .await
            .context("locking the run to end it")?
            .is_some();
        if !applying {
            return Ok(None);
        }
        Ok(Some(finish_run(tx, run_id, RunState::Succeeded).await?))
    }
}

/// Records a step's change ends: see [`Store::record_changes`].
const RECORD_CHANGES: &str = "WITH e AS NOT MATERIALIZED (
                     SELECT * FROM unnest($3::text[], $4::int8[], $5::text[], $6::text[], $7::text[],
                                          $8::jsonb[], $9::text[], $10::int8[])
                         AS e(object_id, version, outcome, effect, pbx_id, applied, detail, answers)),
                 ended AS (
                     UPDATE run_changes c SET outcome = e.outcome, detail = e.detail
                     FROM e CROSS JOIN LATERAL (SELECT ctid FROM run_changes
                                                WHERE run_id = $1 AND object_id = e.object_id
                                                  AND outcome = 'pending' OFFSET 0) found
                     WHERE c.ctid = found.ctid
                     RETURNING c.object_id, c.batch, c.outcome),
                 applied AS (
                     UPDATE sync_users s SET
                         pbx_id = CASE e.effect WHEN 'linked' THEN e.pbx_id WHEN 'deleted' THEN NULL
                                  ELSE s.pbx_id END,
                         applied = CASE e.effect WHEN 'deleted' THEN NULL ELSE e.applied END,
                         applied_version = e.version,
                         state = CASE e.effect WHEN 'linked' THEN 'active' WHEN 'deleted' THEN 'deleted'
                                 ELSE s.state END,
                         create_conflict = CASE e.effect WHEN 'linked' THEN NULL ELSE s.create_conflict END,
                         create_generation = s.create_generation + e.answers,
                         pending_delete_at = CASE e.effect WHEN 'deleted' THEN NULL
                                             ELSE s.pending_delete_at END,
                         updated_at = now()
                     FROM e JOIN ended USING (object_id)
                     CROSS JOIN LATERAL (SELECT ctid FROM sync_users
                                         WHERE tenant_id = $2 AND object_id = e.object_id OFFSET 0) found
                     WHERE s.ctid = found.ctid AND e.effect IS NOT NULL
                     RETURNING 1),
                 counted AS (
                     UPDATE run_batches b SET pending = b.pending - n.changes,
                            created = b.created + n.created, updated = b.updated + n.updated,
                            deleted = b.deleted + n.deleted, failed = b.failed + n.failed
                     FROM (SELECT batch, count(*)::int AS changes,
                                  count(*) FILTER (WHERE outcome = 'created')::int AS created,
                                  count(*) FILTER (WHERE outcome = 'updated')::int AS updated,
                                  count(*) FILTER (WHERE outcome = 'deleted')::int AS deleted,
                                  count(*) FILTER (WHERE outcome = 'failed')::int AS failed
                           FROM ended GROUP BY batch) n
                     CROSS JOIN LATERAL (SELECT ctid FROM run_batches
                                         WHERE run_id = $1 AND batch = n.batch OFFSET 0) found
                     WHERE b.ctid = found.ctid
                     RETURNING b.pending)
                 SELECT (SELECT count(*) FROM ended WHERE batch IS NULL) AS unnumbered,
                        (SELECT count(*) FROM applied) AS applied,
                        (SELECT count(*) FROM counted) AS counted";

/// What a change's end writes to its user's sync row.
struct Applied<'a> {
    /// `linked` (created or adopted: the PBX id is the user's now),
    /// `updated`, `deleted`, or None when the row stays as it is.
    effect: Option<&'static str>,
    pbx_id: Option<&'a str>,
    fields: Option<&'a usersync_core::SyncedFields>,
    detail: Option<&'a str>,
}

impl Applied<'_> {
    fn of(record: &ChangeRecord) -> Applied<'_> {
        let nothing = Applied {
            effect: None,
            pbx_id: None,
            fields: None,
            detail: None,
        };
        match record {
            ChangeRecord::Created { pbx_id, fields } | ChangeRecord::Adopted { pbx_id, fields } => Applied {
                effect: Some("linked"),
                pbx_id: Some(pbx_id),
                fields: Some(fields),
                ..nothing
            },
            ChangeRecord::Updated { fields } => Applied {
                effect: Some("updated"),
                fields: Some(fields),
                ..nothing
            },
            ChangeRecord::Deleted => Applied {
                effect: Some("deleted"),
                ..nothing
            },
            ChangeRecord::Superseded => nothing,
            ChangeRecord::Failed { reason } => Applied {
                detail: Some(reason),
                ..nothing
            },
        }
    }
}
