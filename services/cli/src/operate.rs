//! Operating commands: a resync that follows its run to the end, and the
//! dead-letter queues.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use usersync_bus::Bus;
use usersync_contract::topology::Stage;
use usersync_runtime::amqp_url;
use usersync_store::{RunState, Store};

use crate::output;

/// Exit codes of `usersync resync --wait`, by the run's outcome.
pub const EXIT_PARTIAL: i32 = 2;
pub const EXIT_FAILED: i32 = 3;

/// Publishes a resync request; with `wait`, follows the run it started or
/// joined (the run in progress, or the follow-up queued after it) and returns
/// the exit code for its outcome.
pub async fn resync(store: &Store, id: &str, full: bool, wait: Option<Duration>) -> anyhow::Result<i32> {
    let bus = Bus::connect(&amqp_url(), "usersync-cli").await?;
    let request_id = usersync_admin::resync::request(store, &bus, id, full).await?;
    println!(
        "resync of {id} requested{}: run {request_id}, or the run in progress it joins, or the follow-up queued after it",
        if full { " with a full read" } else { "" }
    );
    let Some(timeout) = wait else {
        return Ok(0);
    };
    let started = Instant::now();
    let overdue = || -> anyhow::Result<()> {
        if started.elapsed() > timeout {
            bail!("gave up waiting after {timeout:?}; the run goes on: follow it with `usersync runs {id}`");
        }
        Ok(())
    };
    let run_id = loop {
        if let Some(run_id) = store.run_for_request(request_id).await? {
            break run_id;
        }
        overdue()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let queued = store
        .run(run_id)
        .await?
        .is_some_and(|run| run.state == RunState::Queued.as_str());
    match (run_id == request_id, queued) {
        (false, false) => println!("joined run {run_id}, already in progress"),
        (false, true) => println!("joined run {run_id}, queued to start when the run in progress ends"),
        (true, true) => println!(
            "run {run_id} queued: the run in progress read the directory before this request; this one starts when it ends"
        ),
        (true, false) => {}
    }
    let mut shown = None;
    loop {
        let (run, progress) = store
            .run_with_progress(run_id)
            .await?
            .ok_or_else(|| anyhow!("run {run_id} disappeared"))?;
        if shown != Some((run.state.clone(), progress)) {
            println!("{}", output::progress_line(&run, &progress));
            shown = Some((run.state.clone(), progress));
        }
        if run.finished_at.is_some() {
            output::run_outcome(&run);
            return Ok(match RunState::parse(&run.state) {
                Some(RunState::Succeeded | RunState::Paused) => 0,
                Some(RunState::Partial) => EXIT_PARTIAL,
                _ => EXIT_FAILED,
            });
        }
        overdue()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn stages(stage: Option<&str>) -> anyhow::Result<Vec<Stage>> {
    match stage {
        None => Ok(Stage::ALL.to_vec()),
        Some(name) => Stage::parse(name).map(|stage| vec![stage]).ok_or_else(|| {
            let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            anyhow!("no stage {name:?}: STAGE is one of {}", names.join(", "))
        }),
    }
}

pub async fn dlq_list(stage: Option<&str>, json: bool) -> anyhow::Result<()> {
    let stages = stages(stage)?;
    let bus = Bus::connect(&amqp_url(), "usersync-cli").await?;
    let mut letters = Vec::new();
    for stage in stages {
        letters.extend(bus.dead_letters(stage).await?);
    }
    output::dead_letters(&letters, json, chrono::Utc::now())
}

pub async fn dlq_replay(stage: &str) -> anyhow::Result<()> {
    let [stage] = stages(Some(stage))?[..] else {
        unreachable!("one stage by name")
    };
    let bus = Bus::connect(&amqp_url(), "usersync-cli").await?;
    let moved = bus.replay_dead_letters(stage).await?;
    println!(
        "{moved} message(s) moved from {} back to work",
        stage.dead_letter_queue()
    );
    Ok(())
}
