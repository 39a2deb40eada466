//! usersync-differ: records directory pages, then decides per user what the PBX needs.

mod reconcile;

use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_runtime::init_tracing;
use usersync_service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let service = Service::start("usersync-differ", 8).await?;
    let differ = reconcile::Differ {
        store: service.store.clone(),
        bus: service.bus.clone(),
    };
    let options = ConsumeOptions {
        // A page of users is up to a megabyte or two of JSON, decoded and
        // bound into its statements: the pages in hand decide the peak memory.
        // Recording is the database's work; four at a time keep it busy.
        prefetch: 4,
        max_attempts: 8,
        ..ConsumeOptions::default()
    };
    service.serve(Stage::Differ, options, differ, None).await
}
