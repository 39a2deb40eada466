//! Windowed dispatch of a run's changes: the batches are numbered as the plan
//! is stored, the differ sends the first [`DISPATCH_WINDOW`]; the applier, finishing batch `n`,
//! sends batch `n + DISPATCH_WINDOW`. A run never has more than the window in
//! the applier's queue, so a huge first sync cannot bury a small tenant's run.

use anyhow::Context;
use tokio_postgres::types::Json;
use usersync_contract::Change;
use uuid::Uuid;

use crate::{Result, Store};

/// Batches of one run in the applier's queue (or in hand) at once.
pub const DISPATCH_WINDOW: u32 = 8;

/// Changes per batch: batch `n` of a run holds its changes `n * BATCH_SIZE`
/// to `(n + 1) * BATCH_SIZE - 1` in object-id order, numbered as the plan is
/// stored ([`Store::save_plan`]).
pub const BATCH_SIZE: u64 = 100;

impl Store {
    /// How many batches the run's plan has (0 until planning completed).
    pub async fn batch_count(&self, run_id: Uuid) -> Result<u32> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT batches FROM runs WHERE id = $1", &[&run_id])
            .await
            .context("counting the run's change batches")?;
        Ok(row.map_or(0, |row| u32::try_from(row.get::<_, i32>(0)).unwrap_or(0)))
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
