//! What the applier learns about a tenant's PBX once per run: the checked
//! template, and the PBX users without an owner that creates may adopt.

use anyhow::Context;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::{Result, Store};

/// The outcome of a run's PBX pre-check, once it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxCheck {
    /// The PBX id of the tenant's default template, when it has one.
    pub template_id: Option<String>,
}

impl Store {
    /// The run's passed pre-check, when one is recorded.
    pub async fn pbx_check(&self, run_id: Uuid) -> Result<Option<PbxCheck>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT template_id FROM run_pbx_checks WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .context("loading the run's PBX check")?;
        Ok(row.map(|row| PbxCheck {
            template_id: row.get(0),
        }))
    }

    /// Records a passed pre-check (after its unowned users are stored).
    pub async fn save_pbx_check(&self, run_id: Uuid, check: &PbxCheck) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO run_pbx_checks (run_id, template_id) VALUES ($1, $2)
                 ON CONFLICT (run_id) DO NOTHING",
                &[&run_id, &check.template_id],
            )
            .await
            .context("recording the run's PBX check")?;
        Ok(())
    }

    /// Stores one page of unowned PBX users by their match value; the first
    /// user seen with a value keeps it.
    pub async fn save_unowned(&self, run_id: Uuid, users: &[(String, Value)]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let values: Vec<&str> = users.iter().map(|(value, _)| value.as_str()).collect();
        let bodies: Vec<Json<&Value>> = users.iter().map(|(_, user)| Json(user)).collect();
        client
            .execute(
                "INSERT INTO run_pbx_unowned (run_id, match_value, pbx_user)
                 SELECT $1, u.value, u.body FROM unnest($2::text[], $3::jsonb[]) AS u(value, body)
                 ON CONFLICT DO NOTHING",
                &[&run_id, &values, &bodies],
            )
            .await
            .context("storing unowned PBX users")?;
        Ok(())
    }

    /// Takes the unowned PBX user with this match value for adoption, inside the
    /// applier's transaction: if the transaction ends without a commit, the
    /// user is there for the next try.
    pub async fn claim_unowned(
        tx: &deadpool_postgres::Transaction<'_>,
        run_id: Uuid,
        match_value: &str,
    ) -> Result<Option<Value>> {
        let row = tx
            .query_opt(
                "DELETE FROM run_pbx_unowned WHERE run_id = $1 AND match_value = $2 RETURNING pbx_user",
                &[&run_id, &match_value],
            )
            .await
            .context("claiming an unowned PBX user")?;
        Ok(row.map(|row| row.get::<_, Json<Value>>(0).0))
    }

    /// Drops what a finished run listed of the PBX: no change of it adopts any more.
    pub async fn forget_unowned(&self, run_id: Uuid) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM run_pbx_unowned WHERE run_id = $1", &[&run_id])
            .await
            .context("forgetting the run's unowned PBX users")?;
        Ok(())
    }
}
