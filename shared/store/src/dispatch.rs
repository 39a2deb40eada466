//! Windowed dispatch of a run's changes: the differ numbers the batches and
//! sends the first [`DISPATCH_WINDOW`]; the applier, finishing batch `n`,
//! sends batch `n + DISPATCH_WINDOW`. A run never has more than the window in
//! the applier's queue, so a huge first sync cannot bury a small tenant's run.

use anyhow::Context;
use tokio_postgres::types::Json;
use usersync_contract::Change;
use uuid::Uuid;

use crate::{Result, Store};

/// Batches of one run in the applier's queue (or in hand) at once.
pub const DISPATCH_WINDOW: u32 = 4;

impl Store {
    /// Puts every planned change of the run into a batch of `size`, by object
    /// id, once: a second call changes nothing. Returns how many batches the run has.
    pub async fn assign_batches(&self, run_id: Uuid, size: i64) -> Result<u32> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE run_changes c SET batch = n.batch
                 FROM (SELECT object_id, ((row_number() OVER (ORDER BY object_id)) - 1) / $2 AS batch
                       FROM run_changes WHERE run_id = $1) n
                 WHERE c.run_id = $1 AND c.object_id = n.object_id AND c.batch IS NULL",
                &[&run_id, &size.max(1)],
            )
            .await
            .context("numbering the run's change batches")?;
        let row = client
            .query_one(
                "SELECT coalesce(max(batch) + 1, 0) FROM run_changes WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .context("counting the run's change batches")?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    /// The changes of one batch still waiting for the applier, by object id.
    /// Empty when the batch does not exist or is done.
    pub async fn pending_batch(&self, run_id: Uuid, batch: u32) -> Result<Vec<Change>> {
        let client = self.client().await?;
        let batch = i32::try_from(batch).unwrap_or(i32::MAX);
        let rows = client
            .query(
                "SELECT object_id, desired_version, action FROM run_changes
                 WHERE run_id = $1 AND batch = $2 AND outcome = 'pending'
                 ORDER BY object_id",
                &[&run_id, &batch],
            )
            .await
            .context("loading a batch of changes")?;
        Ok(rows
            .iter()
            .map(|row| {
                let Json(action) = row.get("action");
                Change {
                    object_id: row.get("object_id"),
                    desired_version: row.get("desired_version"),
                    action,
                }
            })
            .collect())
    }

    /// Whether the run has not ended (in any outcome, failed included).
    pub async fn run_is_open(&self, run_id: Uuid) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM runs WHERE id = $1 AND finished_at IS NULL",
                &[&run_id],
            )
            .await
            .context("loading the run's state")?;
        Ok(row.is_some())
    }
}
