//! usersync-fetcher: turns resync requests into pages of directory data.

mod groups;
mod round;
mod schedule;

use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_graph::{GraphClient, GraphConfig, RetryPolicy};
use usersync_runtime::{env_or, init_tracing};
use usersync_service::Service;
use usersync_store::SecretKey;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let key = SecretKey::from_env()?;
    let service = Service::start("usersync-fetcher", 8).await?;
    let graph = GraphClient::new(GraphConfig {
        graph_base_url: env_or("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        login_base_url: env_or("ENTRA_LOGIN_URL", "https://login.microsoftonline.com"),
        retry: retry_policy()?,
    });
    let scheduler = tokio::spawn(schedule::run(
        service.store.clone(),
        service.bus.clone(),
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
