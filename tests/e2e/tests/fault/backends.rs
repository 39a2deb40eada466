//! Restarts of RabbitMQ and PostgreSQL, and a PostgreSQL that refuses new
//! connections, in the middle of a run, on a private node and cluster. The
//! services are not restarted: they must ride it out on their own.

use std::time::{Duration, Instant};

use crate::case::{after, Case};
use crate::kills::Probe;

/// How long the full PostgreSQL turns clients away: the fault itself, not a wait for something.
const REFUSAL: Duration = Duration::from_secs(10);

/// Starts the first run, waits for 30% of its creates, runs `fault` and
/// times until creates move again after it.
async fn mid_run<F>(name: &'static str, private_postgres: bool, injected: &str, fault: F)
where
    F: AsyncFnOnce(&mut Case) -> String,
{
    let mut case = Case::start(name, private_postgres).await;
    case.resync().await;
    let seen = Probe::Creates.wait_percent(&case, 30).await;
    let struck = Instant::now();
    let when = after(seen, case.members, Probe::Creates.noun());
    case.struck(injected, when.clone());
    let detail = fault(&mut case).await;
    case.struck(&format!("{injected}{detail}"), when);
    let back = case.created().await;
    let resumed = case.wait_progress("PBX creates", back, || case.created()).await;
    case.finish(Some(resumed - struck)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_run() {
    mid_run(
        "rabbitmq_restart",
        false,
        "RabbitMQ node stopped and started",
        async |case| {
            case.rabbit.restart().await;
            String::new()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() {
    mid_run(
        "postgres_restart",
        true,
        "PostgreSQL restarted (pg_ctl restart -m fast)",
        async |case| {
            case.postgres.as_ref().expect("a private PostgreSQL").restart();
            String::new()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite (CI's time goes to the restarts, which it shares its recovery path with)"]
async fn postgres_refusing_connections_mid_run() {
    mid_run(
        "postgres_too_many_clients",
        true,
        "PostgreSQL full (`too many clients`)",
        async |case| {
            let postgres = case.postgres.as_ref().expect("a private PostgreSQL");
            let refusal = postgres.refuse_connections().await;
            let held = refusal.held();
            tokio::time::sleep(REFUSAL).await;
            refusal.release();
            format!(
                " for {} s, every slot held ({held}), services' backends ended",
                REFUSAL.as_secs()
            )
        },
    )
    .await;
}
