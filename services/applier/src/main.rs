//! usersync-applier: writes planned changes to the PBX, each exactly once.

mod apply;

use std::time::Duration;

use anyhow::Context;
use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_runtime::{amqp_url, database_url, env_opt, init_tracing, serve_metrics, shutdown_signal};
use usersync_store::{SecretKey, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let store = Store::connect(&database_url(), 16).await?;
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
    };
    let options = ConsumeOptions {
        prefetch: 4,
        max_attempts: 6,
    };
    bus.serve(Stage::Applier, options, applier, shutdown_signal())
        .await
}
