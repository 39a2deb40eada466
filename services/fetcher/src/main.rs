//! usersync-fetcher: turns resync requests into pages of directory data.

mod groups;
mod round;
mod schedule;
mod subscriptions;

use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_graph::{GraphClient, GraphConfig};
use usersync_runtime::init_tracing;
use usersync_service::Service;
use usersync_store::SecretKey;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let key = SecretKey::from_env()?;
    let service = Service::start("usersync-fetcher", 8).await?;
    let graph = GraphClient::new(GraphConfig::from_env().map_err(anyhow::Error::msg)?);
    let manager = subscriptions::Manager {
        store: service.store.clone(),
        graph: graph.clone(),
        key: key.clone(),
        public_url: subscriptions::public_url_from_env(),
    };
    let scheduler = tokio::spawn(schedule::run(
        service.store.clone(),
        service.bus.clone(),
        manager,
        service.stop.clone(),
    ));
    let fetcher = round::Fetcher {
        store: service.store.clone(),
        bus: service.bus.clone(),
        graph,
        key,
    };
    // Rounds are long and mostly wait on Graph: several tenants at once per replica.
    let options = ConsumeOptions {
        prefetch: 8,
        max_attempts: 5,
        ..ConsumeOptions::default()
    };
    // A scheduler poll in progress finishes too (its claims are published
    // before the connection closes), within the same bound.
    service
        .serve(Stage::Fetcher, options, fetcher, Some(scheduler))
        .await
}
