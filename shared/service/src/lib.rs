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

/// Every stage allocates with jemalloc, in one arena, handing freed pages
/// back to the system after a second (a background thread does it). With
/// glibc's malloc a stage's peak memory grew with the tenant, as the freed
/// buffers of page bodies and statements stayed spread over the threads'
/// arenas: the differ peaked at 39 MB for 1,000 users and 89 MB for 100,000.
/// jemalloc with its defaults (an arena per thread, pages kept ten seconds)
/// kept as much. `_RJEM_MALLOC_CONF` in the environment overrides this.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start (a C string).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static u8> =
    Some(&b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

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
