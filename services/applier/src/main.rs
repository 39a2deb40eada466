//! usersync-applier: writes planned changes to the PBX, each exactly once.

mod apply;
mod limits;
mod precheck;
mod retry;

use std::time::Duration;

use anyhow::Context;
use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_runtime::{amqp_url, database_url, env_opt, init_tracing, serve_metrics, shutdown_signal};
use usersync_store::{SecretKey, Store};

/// Database connections of one applier replica.
const POOL_SIZE: usize = 16;
/// Change batches in hand at once per replica.
const PREFETCH: u16 = 4;
/// Tries of a change batch before its failing changes are given up.
const DEFAULT_MAX_ATTEMPTS: u32 = 6;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let store = Store::connect(&database_url(), POOL_SIZE).await?;
    let bus = Bus::connect(&amqp_url(), "usersync-applier").await?;
    // Healthy only once the database and the broker are reachable.
    serve_metrics().await?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let applier = apply::Applier {
        store,
        bus: bus.clone(),
        http,
        default_pbx: apply::PbxTarget {
            api_url: env_opt("PBX_API_URL"),
            api_token: env_opt("PBX_API_TOKEN"),
        },
        // Only tenants with their own PBX token need the key.
        key: SecretKey::from_env().ok(),
        gates: limits::TenantGates::default(),
        prechecks: precheck::Prechecks::default(),
    };
    // Each change holds a connection while it writes; a few batches in hand
    // (of different tenants, with windowed dispatch) keep every tenant moving,
    // and changes beyond the pool wait for a connection.
    let options = ConsumeOptions {
        prefetch: PREFETCH,
        max_attempts: max_attempts()?,
    };
    bus.serve(Stage::Applier, options, applier, shutdown_signal())
        .await
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
