//! usersync-differ: records directory pages, then decides per user what the PBX needs.

mod reconcile;

use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_runtime::init_tracing;
use usersync_service::Service;

/// Bytes of pages decoded and recorded at once, per lane. A full page message
/// of a big tenant (250 users, see the fetcher) takes most of it and so is
/// handled about alone: one tenant's pages take turns on its directory lock
/// anyway, so more in hand would only add memory (with 2 MiB and 999-user
/// pages, a 100,000-user first sync peaked at 98 MB; with this, 76 MB, both
/// with jemalloc's defaults). Small tenants' pages still go several at once.
const PAGE_BYTES_IN_HAND: usize = 256 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let service = Service::start("usersync-differ", 8).await?;
    let differ = reconcile::Differ {
        store: service.store.clone(),
        bus: service.bus.clone(),
    };
    let options = ConsumeOptions {
        // Per lane (express and standard, each its own queue): recording is
        // the database's work, and four at a time keep it busy.
        prefetch: 4,
        // A page of users is up to a megabyte or two of JSON, decoded and
        // bound into its statements several times its size: the bodies in
        // hand decide the peak memory, so they are bounded by bytes too.
        bytes_in_hand: Some(PAGE_BYTES_IN_HAND),
        max_attempts: 8,
        ..ConsumeOptions::default()
    };
    service.serve(Stage::Differ, options, differ, None).await
}
