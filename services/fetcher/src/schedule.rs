//! The scheduler: asks for each tenant's nightly run when it is due, for a
//! run when a tenant's deletions fall due, and starts a queued follow-up run
//! once the tenant's run in progress has ended (whichever service ended it).
//! Every fetcher replica runs it; a due run is claimed in PostgreSQL
//! (compare-and-swap on its due time, or on a follow-up's start request
//! count), so it fires once however many replicas run. A run missed while
//! nothing was running is due at once when a replica starts. Beside it, on
//! its own interval, the subscription manager keeps the tenants' Graph
//! change-notification subscriptions (see `subscriptions.rs`): a slow Graph
//! never delays a nightly run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use usersync_bus::Bus;
use usersync_contract::ResyncRequest;
use usersync_core::{schedule::next_due, Schedule};
use usersync_runtime::{clock, env_or, CancellationToken};
use usersync_store::{RunEnd, RunEnds, Store};

use crate::round::follow_up_message_id;
use crate::subscriptions;

/// Seconds from the variable `name`, or `default` when unset or not a positive number.
fn interval_from_env(name: &str, default: u64) -> Duration {
    env_or(name, &default.to_string())
        .parse::<f64>()
        .ok()
        .filter(|secs| *secs > 0.0)
        .map_or(Duration::from_secs(default), Duration::from_secs_f64)
}

/// Runs until `stop` is cancelled; a failed poll is logged and tried again.
/// The subscription manager runs beside it and is waited for at the end.
pub async fn run(store: Store, bus: Bus, manager: subscriptions::Manager, stop: CancellationToken) {
    let every = interval_from_env("USERSYNC_SUBSCRIPTION_POLL_SECS", 60);
    let manager = tokio::spawn(subscriptions::run(manager, every, stop.clone()));
    schedule(store, bus, stop).await;
    if let Err(err) = manager.await {
        tracing::warn!(error = %err, "the subscription manager ended abnormally");
    }
}

async fn schedule(store: Store, bus: Bus, stop: CancellationToken) {
    let poll = interval_from_env("USERSYNC_SCHEDULE_POLL_SECS", 5);
    tracing::info!(poll_s = poll.as_secs_f64(), "scheduler started");
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut run_ends = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                tracing::info!("scheduler stopped");
                return;
            }
            _ = ticks.tick() => {
                // Listening before the poll: a run that ends after the poll
                // read the tables is heard.
                if run_ends.is_none() {
                    run_ends = store
                        .run_ends()
                        .await
                        .inspect_err(|err| tracing::warn!(error = %format!("{err:#}"), "not told when runs end; follow-ups start on the next poll"))
                        .ok();
                }
                if let Err(err) = poll_once(&store, &bus, clock::now()).await {
                    tracing::warn!(error = %format!("{err:#}"), "scheduler poll failed; trying again");
                }
            }
            ended = next_end(&mut run_ends) => match ended {
                // A run ended: its tenant's follow-up may be due now. Or the
                // listener is back after losing its connection: runs may have
                // ended unheard meanwhile, so look as if one had.
                Some(RunEnd::Ended(_) | RunEnd::Resumed) => {
                    if let Err(err) = start_follow_ups(&store, &bus).await {
                        tracing::warn!(error = %format!("{err:#}"), "starting follow-up runs failed; trying again");
                    }
                }
                None => run_ends = None,
            },
        }
    }
}

/// The next run that ends; pending forever while not listening (the first
/// LISTEN failed: tried again at the next tick; once listening, the store
/// reconnects on its own).
async fn next_end(run_ends: &mut Option<RunEnds>) -> Option<RunEnd> {
    match run_ends {
        Some(ends) => ends.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_once(store: &Store, bus: &Bus, now: DateTime<Utc>) -> anyhow::Result<()> {
    // New tenants and changed schedules: the next due time from now on (a new
    // tenant's first run is the next night, not this instant).
    for row in store.schedules_to_compute().await? {
        match serde_json::from_value::<Schedule>(row.schedule.clone()) {
            Ok(schedule) => {
                store
                    .set_next_due(&row.tenant_id, &row.schedule, next_due(&schedule, now))
                    .await?;
            }
            Err(err) => {
                tracing::warn!(tenant_id = %row.tenant_id, error = %err, "tenant has no valid schedule")
            }
        }
    }
    for row in store.due_schedules(now).await? {
        let (Some(due), Ok(schedule)) = (row.next_due, serde_json::from_value::<Schedule>(row.schedule))
        else {
            continue;
        };
        // After downtime several nights may be missed: one run, then the next night.
        let next = next_due(&schedule, now);
        if !store.claim_due(&row.tenant_id, due, next).await? {
            continue; // another replica took it
        }
        // Deterministic id: a request published twice resumes one run.
        let id = format!("scheduled:{}:{}", row.tenant_id, due.to_rfc3339());
        if let Err(err) = request(bus, &row.tenant_id, "scheduled", &id).await {
            store.unclaim_due(&row.tenant_id, due, next).await?;
            return Err(err);
        }
        tracing::info!(tenant_id = %row.tenant_id, %due, %next, "nightly run requested");
    }
    start_follow_ups(store, bus).await?;
    for (tenant_id, earliest) in store.due_sweeps(now).await? {
        if !store.claim_sweep(&tenant_id, earliest).await? {
            continue;
        }
        let id = format!("sweep:{tenant_id}:{}", earliest.to_rfc3339());
        request(bus, &tenant_id, "sweep", &id).await?;
        tracing::info!(%tenant_id, %earliest, "run requested for due deletions");
    }
    Ok(())
}

/// Publishes the start request of every queued follow-up whose run before it
/// has ended; each is claimed first, so one replica publishes it.
async fn start_follow_ups(store: &Store, bus: &Bus) -> anyhow::Result<()> {
    for due in store.due_follow_ups().await? {
        let Some(number) = store.claim_follow_up(&due).await? else {
            continue; // another replica took it
        };
        let request = ResyncRequest {
            tenant_id: due.tenant_id.clone(),
            full: due.full_round,
            trigger: due.trigger.clone(),
        };
        let id = follow_up_message_id(due.run_id, number);
        if let Err(err) = bus.request_resync(&request, &id).await {
            store.release_follow_up(due.run_id, number).await?;
            return Err(err);
        }
        tracing::info!(tenant_id = %due.tenant_id, run_id = %due.run_id, "follow-up run requested");
    }
    Ok(())
}

async fn request(bus: &Bus, tenant_id: &str, trigger: &str, id: &str) -> anyhow::Result<()> {
    let request = ResyncRequest {
        tenant_id: tenant_id.to_owned(),
        full: false,
        trigger: trigger.to_owned(),
    };
    bus.request_resync(&request, id).await
}
