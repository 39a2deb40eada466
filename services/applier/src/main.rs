//! usersync-applier: writes planned changes to the PBX, each exactly once.

mod apply;
mod limits;
mod precheck;
mod retry;

use std::time::Duration;

use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_runtime::{env_opt, init_tracing};
use usersync_service::Service;
use usersync_store::SecretKey;

/// Database connections of one applier replica.
const POOL_SIZE: usize = 16;
/// Change batches in hand at once per replica: a whole dispatch window, so
/// one run's batches overlap their database work (4 left PostgreSQL waiting:
/// 100,000 creates took 15.2-16.5 s with 4 in hand, 13.9 s with 8).
const PREFETCH: u16 = 8;
/// Tries of a change batch that fails on our side (database, broker) or in
/// the PBX pre-check before it is parked; the PBX's throttling and a change's
/// own failures within its bound are not counted.
const DEFAULT_MAX_ATTEMPTS: u32 = 6;
/// Longest give-up bound accepted, in seconds (a day).
const MAX_GIVE_UP_SECS: u64 = 86_400;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let service = Service::start("usersync-applier", POOL_SIZE).await?;
    let applier = apply::Applier {
        store: service.store.clone(),
        bus: service.bus.clone(),
        http: usersync_pbx::PbxClient::http()
            .map_err(|err| anyhow::anyhow!("building the PBX HTTP client: {}", err.describe()))?,
        default_pbx: usersync_pbx::PbxTarget::from_env(),
        // Only tenants with their own PBX token need the key.
        key: SecretKey::from_env().ok(),
        gates: limits::TenantGates::default(),
        prechecks: precheck::Prechecks::default(),
        give_up_after: give_up_after()?,
    };
    // Each change holds a connection while it writes; a few batches in hand
    // (of different tenants, with windowed dispatch) keep every tenant moving,
    // and changes beyond the pool wait for a connection.
    let options = ConsumeOptions {
        prefetch: PREFETCH,
        max_attempts: max_attempts()?,
        ..ConsumeOptions::default()
    };
    service.serve(Stage::Applier, options, applier, None).await
}

/// `APPLIER_GIVE_UP_AFTER_SECS`, or the default.
fn give_up_after() -> anyhow::Result<Duration> {
    let default = retry::DEFAULT_GIVE_UP_AFTER.as_secs();
    let Some(text) = env_opt("APPLIER_GIVE_UP_AFTER_SECS") else {
        return Ok(retry::DEFAULT_GIVE_UP_AFTER);
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_GIVE_UP_SECS).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "APPLIER_GIVE_UP_AFTER_SECS={text:?} is not a number of seconds from 1 to {MAX_GIVE_UP_SECS}: it is how long a change's own writes may keep failing before it is recorded as failed; leave it unset for {default}"
            )
        })
}

/// `APPLIER_MAX_ATTEMPTS`, or the default.
fn max_attempts() -> anyhow::Result<u32> {
    let Some(text) = env_opt("APPLIER_MAX_ATTEMPTS") else {
        return Ok(DEFAULT_MAX_ATTEMPTS);
    };
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=20).contains(n))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "APPLIER_MAX_ATTEMPTS={text:?} is not a number of attempts from 1 to 20; leave it unset for {DEFAULT_MAX_ATTEMPTS}"
            )
        })
}
