//! The deletions the mass-deletion guard holds back, and their approval:
//! the next run carries them out, and that run is asked for now.

use serde::Serialize;
use usersync_bus::Bus;
use usersync_store::Store;

use crate::{require_tenant, AdminResult};

/// One held deletion.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldDeletion {
    pub object_id: String,
    pub pbx_id: Option<String>,
    /// The alias the user has in the PBX.
    pub alias: Option<String>,
}

pub async fn held(store: &Store, id: &str) -> AdminResult<Vec<HeldDeletion>> {
    require_tenant(store, id).await?;
    Ok(store
        .held_users(id)
        .await?
        .into_iter()
        .map(|u| HeldDeletion {
            object_id: u.object_id,
            pbx_id: u.pbx_id,
            alias: u.alias,
        })
        .collect())
}

/// What an approval did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// Deletions held when approved; 0: nothing was approved.
    pub held: i64,
    pub approved: bool,
    /// The resync request made to carry the deletions out.
    pub run_id: Option<String>,
    pub message: String,
}

pub async fn approve_deletions(store: &Store, bus: &Bus, id: &str) -> AdminResult<Approval> {
    require_tenant(store, id).await?;
    let held = store.held_deletions(id).await?;
    if held == 0 {
        // An approval left lying around would wave through a later mass deletion.
        return Ok(Approval {
            held,
            approved: false,
            run_id: None,
            message: format!("no deletions of {id} are held: nothing to approve"),
        });
    }
    store.approve_deletions(id).await?;
    let run_id = crate::resync::request(store, bus, id, false).await?;
    Ok(Approval {
        held,
        approved: true,
        run_id: Some(run_id.to_string()),
        message: format!(
            "approved: the next run of {id} deletes the users the guard held ({held} held now); \
             users back in the directory by then are kept; run {run_id} was requested"
        ),
    })
}
