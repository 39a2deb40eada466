//! Who is in the filter groups: the membership a scoped round read, kept per
//! tenant with the groups delta link, so a round whose groups delta reports no
//! change that matters need not list the members again.

use anyhow::Context;
use usersync_contract::GroupsRound;

use crate::rounds::{lock_if_current, retry_conflicts};
use crate::{Result, Round, Store};

/// The stored groups delta state of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsState {
    pub delta_link: String,
    pub filter_group_ids: Vec<String>,
    pub nested_group_ids: Vec<String>,
}

impl Store {
    /// The tenant's groups delta state; `None` until a scoped round was planned.
    pub async fn groups_state(&self, tenant_id: &str) -> Result<Option<GroupsState>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT delta_link, filter_group_ids, nested_group_ids FROM tenant_groups WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await
            .context("loading the groups delta state")?;
        Ok(row.map(|row| GroupsState {
            delta_link: row.get("delta_link"),
            filter_group_ids: row.get("filter_group_ids"),
            nested_group_ids: row.get("nested_group_ids"),
        }))
    }

    /// Makes the round's members the ones the differ reads (`tenant_members`,
    /// with the groups delta link): a relisting round replaces the stored
    /// membership with the members it listed, any other scoped round keeps
    /// it. An unscoped round drops the state. Idempotent: a redelivered end
    /// of round does the same again. Only for the tenant's current round:
    /// false (nothing changed) for a superseded one.
    pub async fn settle_membership(
        &self,
        tenant_id: &str,
        round: Round,
        groups: Option<&GroupsRound>,
    ) -> Result<bool> {
        retry_conflicts(|| self.settle_membership_once(tenant_id, round, groups)).await
    }

    async fn settle_membership_once(
        &self,
        tenant_id: &str,
        round: Round,
        groups: Option<&GroupsRound>,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_if_current(&tx, tenant_id, round).await? {
            return Ok(false);
        }
        let Some(groups) = groups else {
            tx.execute("DELETE FROM tenant_groups WHERE tenant_id = $1", &[&tenant_id])
                .await?;
            tx.execute("DELETE FROM tenant_members WHERE tenant_id = $1", &[&tenant_id])
                .await?;
            tx.commit().await?;
            return Ok(true);
        };
        if groups.relisted {
            // Anyone may have moved in or out of scope: until a plan is
            // stored, the tenant's next plan decides everyone.
            tx.execute("DELETE FROM tenant_plans WHERE tenant_id = $1", &[&tenant_id])
                .await
                .context("forgetting the last plan's basis")?;
            tx.execute("DELETE FROM tenant_members WHERE tenant_id = $1", &[&tenant_id])
                .await?;
            tx.execute(
                "INSERT INTO tenant_members (tenant_id, object_id)
                 SELECT $1, object_id FROM round_members WHERE round_id = $2",
                &[&tenant_id, &round.round_id],
            )
            .await
            .context("storing the listed members")?;
        }
        tx.execute(
            "INSERT INTO tenant_groups (tenant_id, delta_link, filter_group_ids, nested_group_ids)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE
               SET delta_link = EXCLUDED.delta_link, filter_group_ids = EXCLUDED.filter_group_ids,
                   nested_group_ids = EXCLUDED.nested_group_ids, updated_at = now()",
            &[
                &tenant_id,
                &groups.delta_link,
                &groups.filter_group_ids,
                &groups.nested_group_ids,
            ],
        )
        .await
        .context("storing the groups delta state")?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets the groups delta state: the next scoped round lists every member.
    pub async fn drop_groups_state(&self, tenant_id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM tenant_groups WHERE tenant_id = $1", &[&tenant_id])
            .await?;
        Ok(())
    }
}

impl Store {
    /// Records a warning for the run (once, however often a redelivered request repeats it).
    pub async fn add_run_warning(&self, run_id: uuid::Uuid, warning: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO run_warnings (run_id, warning) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&run_id, &warning],
            )
            .await
            .context("recording a run warning")?;
        Ok(())
    }
}

/// The run's warnings, in the order of their text.
pub(crate) async fn run_warnings(
    client: &impl deadpool_postgres::GenericClient,
    run_id: uuid::Uuid,
) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT warning FROM run_warnings WHERE run_id = $1 ORDER BY warning",
            &[&run_id],
        )
        .await
        .context("loading the run's warnings")?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
