//! Which round of the fetcher is the tenant's current one, and the tenant's
//! directory lock (see `tenant_rounds` in V14).
//!
//! Round ids are random, so "older" cannot be read from them: a round is
//! current from the moment it begins (the fetcher calls
//! [`Store::begin_round`] before its first page) until the next one begins.
//! Only the current round's pages are recorded and only its end moves
//! per-round state (seen rounds, removals, members); a superseded round's
//! late pages change nothing. Every transaction that writes a tenant's
//! directory users, discovered fields or members takes a key share on the
//! tenant's row and then locks the tenant's round row, before anything else
//! (the run's row, users, fields), so those writes take turns and meet the
//! run and round starts (tenant's row, then run's row) in the same order.

use std::future::Future;

use anyhow::Context;
use tokio_postgres::error::SqlState;

use crate::{Result, Round, Store};

/// What became of a page handed to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOutcome {
    Recorded,
    /// This round's page was recorded before (a redelivery): nothing changed.
    AlreadyRecorded,
    /// The page's round is no longer the tenant's current one: nothing changed.
    StaleRound,
}

impl Store {
    /// Makes `round` the tenant's current round, superseding the one before.
    /// False (and nothing changes) when `round` was current once and has been
    /// superseded since.
    pub async fn begin_round(&self, tenant_id: &str, round: Round) -> Result<bool> {
        retry_conflicts(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let current = enter_round(&tx, tenant_id, round).await?;
            tx.commit().await?;
            Ok(current)
        })
        .await
    }

    /// Whether `round` is the tenant's current round (a snapshot: use it to
    /// skip work early, never as the guard of a write).
    pub async fn is_current_round(&self, tenant_id: &str, round: Round) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT round_id FROM tenant_rounds WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await
            .context("reading the tenant's current round")?;
        Ok(row.is_some_and(|row| row.get::<_, uuid::Uuid>(0) == round.round_id))
    }
}

/// Locks the tenant's directory and tells whether `round` is its current
/// round. A round never seen before becomes current (the fetcher begins each
/// round before publishing it; a page that arrives first does the same);
/// one that was superseded stays stale.
pub(crate) async fn enter_round(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    round: Round,
) -> Result<bool> {
    let current = lock_directory(tx, tenant_id, round).await?;
    if current == round.round_id {
        return Ok(true);
    }
    let known = tx
        .query_opt(
            "SELECT 1 FROM directory_rounds WHERE round_id = $1",
            &[&round.round_id],
        )
        .await
        .context("looking the round up")?
        .is_some();
    if known {
        return Ok(false);
    }
    tx.execute(
        "UPDATE tenant_rounds SET round_id = $2, run_id = $3, begun_at = now() WHERE tenant_id = $1",
        &[&tenant_id, &round.round_id, &round.run_id],
    )
    .await
    .context("making the round the tenant's current one")?;
    remember_round(tx, tenant_id, round).await?;
    Ok(true)
}

/// Locks the tenant's directory and tells whether `round` is its current
/// round, without making any round current.
pub(crate) async fn lock_if_current(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    round: Round,
) -> Result<bool> {
    share_tenant(tx, tenant_id).await?;
    let row = tx
        .query_opt(
            "SELECT round_id FROM tenant_rounds WHERE tenant_id = $1 FOR UPDATE",
            &[&tenant_id],
        )
        .await
        .context("locking the tenant's directory")?;
    Ok(row.is_some_and(|row| row.get::<_, uuid::Uuid>(0) == round.round_id))
}

/// Locks the tenant's round row (creating it with `round` as current when
/// the tenant has none yet); returns the current round's id.
async fn lock_directory(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    round: Round,
) -> Result<uuid::Uuid> {
    share_tenant(tx, tenant_id).await?;
    let created = tx
        .execute(
            "INSERT INTO tenant_rounds (tenant_id, round_id, run_id) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO NOTHING",
            &[&tenant_id, &round.round_id, &round.run_id],
        )
        .await
        .context("recording the tenant's first round")?;
    if created == 1 {
        remember_round(tx, tenant_id, round).await?;
    }
    let row = tx
        .query_one(
            "SELECT round_id FROM tenant_rounds WHERE tenant_id = $1 FOR UPDATE",
            &[&tenant_id],
        )
        .await
        .context("locking the tenant's directory")?;
    Ok(row.get(0))
}

/// The key share on the tenant's row that the transaction's inserts would
/// take anyway (their foreign keys), taken first. Starting a run or a round
/// locks the tenant's row before the run's row; a page's claim locks the
/// run's row (its heartbeat) and its inserts then needed the tenant's: the
/// opposite order, which deadlocked with a fetcher starting its next round.
async fn share_tenant(tx: &deadpool_postgres::Transaction<'_>, tenant_id: &str) -> Result<()> {
    tx.execute("SELECT 1 FROM tenants WHERE id = $1 FOR KEY SHARE", &[&tenant_id])
        .await
        .context("sharing the tenant's row")?;
    Ok(())
}

async fn remember_round(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    round: Round,
) -> Result<()> {
    tx.execute(
        "INSERT INTO directory_rounds (round_id, tenant_id, run_id) VALUES ($1, $2, $3)
         ON CONFLICT (round_id) DO NOTHING",
        &[&round.round_id, &tenant_id, &round.run_id],
    )
    .await
    .context("remembering the round")?;
    Ok(())
}

/// Attempts of a transaction that PostgreSQL aborted as a deadlock victim or
/// a serialisation failure.
const CONFLICT_ATTEMPTS: usize = 5;

/// Runs `attempt` (one whole transaction) again when PostgreSQL aborted it
/// for a deadlock or a serialisation failure: the aborted attempt left
/// nothing behind, so the retry starts from a clean state.
pub(crate) async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(err) if tries < CONFLICT_ATTEMPTS && is_conflict(&err) => {
                tracing::warn!(tries, error = %format!("{err:#}"), "transaction aborted by a conflict: trying it again whole");
            }
            other => return other,
        }
    }
}

fn is_conflict(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| {
                code == &SqlState::T_R_DEADLOCK_DETECTED || code == &SqlState::T_R_SERIALIZATION_FAILURE
            })
    })
}
