//! usersync-fetcher: turns resync requests into pages of directory data.

mod groups;
mod round;

use usersync_bus::{Bus, ConsumeOptions};
use usersync_contract::topology::Stage;
use usersync_graph::{GraphClient, GraphConfig, RetryPolicy};
use usersync_runtime::{amqp_url, database_url, env_or, init_tracing, serve_metrics, shutdown_signal};
use usersync_store::{SecretKey, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let key = SecretKey::from_env()?;
    let store = Store::connect(&database_url(), 8).await?;
    let bus = Bus::connect(&amqp_url(), "usersync-fetcher").await?;
    // Healthy only once the database and the broker are reachable.
    serve_metrics().await?;
    let graph = GraphClient::new(GraphConfig {
        graph_base_url: env_or("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        login_base_url: env_or("ENTRA_LOGIN_URL", "https://login.microsoftonline.com"),
        retry: RetryPolicy::default(),
    });
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
