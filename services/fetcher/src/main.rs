//! usersync-fetcher: turns resync requests into pages of directory data.

mod groups;
mod round;
mod schedule;

use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_graph::{GraphClient, GraphConfig, RetryPolicy};
use usersync_runtime::{
    amqp_url, database_url, env_or, init_tracing, serve_metrics, shutdown_signal, Dependency, Health,
};
use usersync_store::{SecretKey, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let key = SecretKey::from_env()?;
    // `/healthz` answers from the start: 503 naming what is not connected yet.
    let health = Health::new(&[Dependency::Database, Dependency::Broker]);
    serve_metrics(health.clone()).await?;
    let store = Store::connect_waiting(&database_url(), 8, &health).await?;
    health.up(Dependency::Database);
    health.watch(Dependency::Database, store.probe());
    let bus = Bus::connect(&amqp_url(), "usersync-fetcher").await?;
    health.up(Dependency::Broker);
    let graph = GraphClient::new(GraphConfig {
        graph_base_url: env_or("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        login_base_url: env_or("ENTRA_LOGIN_URL", "https://login.microsoftonline.com"),
        retry: retry_policy()?,
    });
    tokio::spawn(schedule::run(store.clone(), bus.clone()));
    let fetcher = round::Fetcher {
        store,
        bus: bus.clone(),
        graph,
        key,
    };
    // Rounds are long and mostly wait on Graph: several tenants at once per replica.
    let options = ConsumeOptions {
        prefetch: 8,
        max_attempts: 5,
    };
    bus.serve(Stage::Fetcher, options, fetcher, shutdown_signal())
        .await
}

/// Graph retries; an outage longer than `GRAPH_RETRY_MAX_WAIT_SECS` of waiting
/// (or `GRAPH_RETRY_ATTEMPTS` attempts) fails the run with `graph.unavailable`.
fn retry_policy() -> anyhow::Result<RetryPolicy> {
    let defaults = RetryPolicy::default();
    let number = |name: &str, default: u64| -> anyhow::Result<u64> {
        match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(text) => text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "{name}={text:?} is not a whole number: set it to e.g. {default}, or unset it"
                )
            }),
        }
    };
    let attempts = number("GRAPH_RETRY_ATTEMPTS", defaults.max_attempts as u64)?;
    let max_wait = number("GRAPH_RETRY_MAX_WAIT_SECS", defaults.max_total_wait.as_secs())?;
    Ok(RetryPolicy {
        max_attempts: usize::try_from(attempts.max(1)).unwrap_or(usize::MAX),
        max_total_wait: std::time::Duration::from_secs(max_wait),
        ..defaults
    })
}
