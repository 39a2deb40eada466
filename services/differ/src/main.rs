//! usersync-differ: records directory pages, then decides per user what the PBX needs.

mod reconcile;

use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_runtime::{
    amqp_url, database_url, init_tracing, serve_metrics, shutdown_signal, Dependency, Health,
};
use usersync_store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // `/healthz` answers from the start: 503 naming what is not connected yet.
    let health = Health::new(&[Dependency::Database, Dependency::Broker]);
    serve_metrics(health.clone()).await?;
    let store = Store::connect_waiting(&database_url(), 8, &health).await?;
    health.up(Dependency::Database);
    health.watch(Dependency::Database, store.probe());
    let bus = Bus::connect(&amqp_url(), "usersync-differ").await?;
    health.up(Dependency::Broker);
    let differ = reconcile::Differ {
        store,
        bus: bus.clone(),
    };
    let options = ConsumeOptions {
        prefetch: 8,
        max_attempts: 8,
    };
    bus.serve(Stage::Differ, options, differ, shutdown_signal()).await
}
