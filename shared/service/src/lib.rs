//! How a stage's binary starts and stops. `/healthz` answers first (503
//! naming what is not connected yet); then PostgreSQL and RabbitMQ are waited
//! for while unreachable (a configuration error stops the start with a clear
//! message) and watched for as long as the process runs; SIGTERM stops the
//! consumers, lets the messages in hand finish within `USERSYNC_SHUTDOWN_SECS`,
//! returns the rest to the queue and ends with exit status 0.

use std::{future::Future, time::Duration};

use usersync_bus::{Bus, ConsumeOptions, Handler};
use usersync_contract::{topology::Stage, Message};
use usersync_runtime::{
    amqp_url, database_url, serve_metrics, shutdown_timeout, shutdown_token, CancellationToken, Dependency,
    Health,
};
use usersync_store::Store;

/// A started stage: its connections, its health and its stop signal.
pub struct Service {
    pub store: Store,
    pub bus: Bus,
    pub health: Health,
    /// Cancelled on SIGTERM or SIGINT.
    pub stop: CancellationToken,
    /// `USERSYNC_SHUTDOWN_SECS`: how long the work in hand may take to finish.
    pub shutdown_timeout: Duration,
}

impl Service {
    /// Serves `/healthz` and `/metrics`, then connects to PostgreSQL (with
    /// `pool_size` connections, capped by `DATABASE_POOL_SIZE`) and RabbitMQ.
    pub async fn start(name: &'static str, pool_size: usize) -> anyhow::Result<Service> {
        let shutdown_timeout = shutdown_timeout()?;
        let health = Health::new(&[Dependency::Database, Dependency::Broker]);
        serve_metrics(health.clone()).await?;
        let store = Store::connect_waiting(&database_url(), pool_size, &health).await?;
        health.up(Dependency::Database);
        health.watch(Dependency::Database, store.probe());
        let bus = Bus::start(&amqp_url(), name, &health).await?;
        // Installed once connected: until then SIGTERM ends the process at once.
        let stop = shutdown_token();
        Ok(Service {
            store,
            bus,
            health,
            stop,
            shutdown_timeout,
        })
    }

    /// Consumes the stage's queues with `handler` until SIGTERM, then waits
    /// for `also` (another task of the stage, within the same bound) and
    /// closes the broker connection.
    pub async fn serve<M, H>(
        self,
        stage: Stage,
        options: ConsumeOptions,
        handler: H,
        also: Option<tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<()>
    where
        M: Message + Send + 'static,
        H: Handler<M>,
    {
        let options = ConsumeOptions {
            shutdown_timeout: self.shutdown_timeout,
            ..options
        };
        self.bus
            .serve(stage, options, handler, self.stop.clone().cancelled_owned())
            .await?;
        if let Some(task) = also {
            finish_within(self.shutdown_timeout, task).await;
        }
        self.bus.close().await;
        Ok(())
    }
}

/// Waits for a task of a stopping service for at most `bound`.
async fn finish_within(bound: Duration, task: impl Future<Output = Result<(), tokio::task::JoinError>>) {
    match tokio::time::timeout(bound, task).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "a task of the service failed while stopping"),
        Err(_) => tracing::warn!("a task did not finish within USERSYNC_SHUTDOWN_SECS; stopping anyway"),
    }
}
