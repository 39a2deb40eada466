//! usersync-differ: records directory pages, then decides per user what the PBX needs.

mod reconcile;

use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_runtime::{
    amqp_url, database_url, init_tracing, serve_metrics, shutdown_timeout, shutdown_token, Dependency, Health,
};
use usersync_store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let shutdown_timeout = shutdown_timeout()?;
    // `/healthz` answers from the start: 503 naming what is not connected yet.
    let health = Health::new(&[Dependency::Database, Dependency::Broker]);
    serve_metrics(health.clone()).await?;
    let store = Store::connect(&database_url(), 8).await?;
    health.up(Dependency::Database);
    health.watch_database({
        let store = store.clone();
        move || {
            let store = store.clone();
            async move { store.client().await }
        }
    });
    let bus = Bus::start(&amqp_url(), "usersync-differ", &health).await?;
    // Installed once connected: until then SIGTERM ends the process at once.
    let stop = shutdown_token();
    let differ = reconcile::Differ {
        store,
        bus: bus.clone(),
    };
    let options = ConsumeOptions {
        prefetch: 8,
        max_attempts: 8,
        shutdown_timeout,
    };
    bus.serve(Stage::Differ, options, differ, stop.cancelled_owned())
        .await?;
    bus.close().await;
    Ok(())
}
