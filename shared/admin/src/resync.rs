//! Asking for a run: a resync request on the bus, which the fetcher turns
//! into a run (or joins to the run in progress, or queues after it).

use usersync_bus::Bus;
use usersync_contract::ResyncRequest;
use usersync_store::Store;
use uuid::Uuid;

use crate::{require_tenant, AdminResult};

/// Publishes a manual resync request (with publisher confirms) and returns
/// its id: the id of the run it starts, or of the request that joined one.
pub async fn request(store: &Store, bus: &Bus, id: &str, full: bool) -> AdminResult<Uuid> {
    require_tenant(store, id).await?;
    let request = ResyncRequest {
        tenant_id: id.to_owned(),
        full,
        trigger: "manual".to_owned(),
    };
    let request_id = Uuid::new_v4();
    bus.request_resync(&request, &request_id.to_string()).await?;
    Ok(request_id)
}
