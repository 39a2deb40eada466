//! The differ's handler: record pages; at the end of a round decide the users
//! that may need it (everyone when what planning depends on changed), store
//! the verdicts and hand the changes to the applier.

use std::time::Duration;

use usersync_bus::{Bus, Failure, Handler, Incoming};
use usersync_contract::{
    topology::{Lane, Stage},
    ChangeBatch, DirectoryPage, PageBody,
};
use usersync_core::Mode;
use usersync_store::{PageOutcome, Round as StoreRound, RoundEnd, RunState, Store};

use usersync_planner::Planner;
use usersync_runtime::clock;

pub struct Differ {
    pub store: Store,
    pub bus: Bus,
}

impl Handler<DirectoryPage> for Differ {
    async fn handle(&self, incoming: Incoming<DirectoryPage>) -> Result<(), Failure> {
        let page = &incoming.message;
        let round = StoreRound {
            run_id: page.run_id,
            round_id: page.round_id,
        };
        match &page.body {
            PageBody::Users { page: number, users } => {
                let outcome = self
                    .store
                    .record_users_page(round, &page.tenant_id, *number, users)
                    .await?;
                log_unrecorded(outcome, &page.tenant_id, round, *number);
                Ok(())
            }
            PageBody::Members {
                page: number,
                member_ids,
            } => {
                let outcome = self
                    .store
                    .record_members_page(round, &page.tenant_id, *number, member_ids)
                    .await?;
                log_unrecorded(outcome, &page.tenant_id, round, *number);
                Ok(())
            }
            PageBody::RoundComplete {
                pages,
                full_round,
                scoped,
                delta_link,
                groups,
            } => {
                let ids = round;
                let round = Round {
                    ids,
                    pages: *pages,
                    tenant_id: &page.tenant_id,
                    full_round: *full_round,
                    scoped: *scoped,
                    delta_link,
                    groups: groups.as_ref(),
                };
                // A superseded round's pages are not all recorded and never
                // will be: the run goes on with the round that superseded it.
                if !self.store.is_current_round(&page.tenant_id, ids).await? {
                    tracing::debug!(tenant_id = page.tenant_id, run_id = %ids.run_id, round_id = %ids.round_id,
                        "the end of a superseded round: nothing to plan");
                    return self.complete_superseded(&round).await.map_err(Failure::from);
                }
                let round = ids;
                let recorded = self.pages_recorded(round, i64::from(*pages)).await?;
                if recorded < i64::from(*pages) {
                    let reason = format!("{recorded} of {pages} pages recorded so far");
                    if incoming.is_last_attempt() {
                        let reason = format!("the round could not be recorded: {reason}");
                        if let Some(event) = self
                            .store
                            .fail_run(page.run_id, "differ.round_incomplete", &reason)
                            .await?
                        {
                            self.bus
                                .send(Stage::Notifier, &event, &event.message_id())
                                .await?;
                        }
                        return Err(Failure::reject(reason));
                    }
                    return Err(Failure::Retry {
                        reason,
                        after: Some(Duration::from_secs(1)),
                    });
                }
                let round = Round {
                    ids: round,
                    pages: *pages,
                    tenant_id: &page.tenant_id,
                    full_round: *full_round,
                    scoped: *scoped,
                    delta_link,
                    groups: groups.as_ref(),
                };
                self.complete_round(&round).await.map_err(Failure::from)
            }
        }
    }
}

/// How long the end of a round waits in-process for its pages. They were
/// published before it and are mostly being recorded right now, by this
/// replica or another (the queue hands out several messages at once): a trip
/// through the retry tier would add a second or more to every run. A page
/// that failed, or a replica that died holding one, takes longer: then the
/// end of the round goes through the retry tier as before.
const PAGES_WAIT: Duration = Duration::from_secs(3);

impl Differ {
    /// The round's pages recorded so far, once all `expected` are or
    /// [`PAGES_WAIT`] has passed.
    async fn pages_recorded(&self, round: StoreRound, expected: i64) -> anyhow::Result<i64> {
        let deadline = tokio::time::Instant::now() + PAGES_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let recorded = self.store.pages_recorded(round).await?;
            if recorded >= expected || tokio::time::Instant::now() + pause > deadline {
                return Ok(recorded);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// A redelivered end of a round that planned its run before it was
    /// superseded may still have its changes to publish; any other changes nothing.
    async fn complete_superseded(&self, round: &Round<'_>) -> anyhow::Result<()> {
        let Some(run) = self.store.run(round.ids.run_id).await? else {
            return Ok(());
        };
        if RunState::parse(&run.state) == Some(RunState::Applying) {
            self.publish_changes(round, Lane::for_trigger(&run.trigger))
                .await?;
        }
        Ok(())
    }

    async fn complete_round(&self, round: &Round<'_>) -> anyhow::Result<()> {
        let Some(run) = self.store.run(round.ids.run_id).await? else {
            anyhow::bail!("run {} is not recorded", round.ids.run_id);
        };
        match RunState::parse(&run.state) {
            Some(RunState::Fetching | RunState::Differing) => {
                // What an earlier attempt stored goes: the batches are numbered from the start.
                self.store.restart_plan(round.ids.run_id).await?;
                if !self.plan(round).await? {
                    return Ok(());
                }
            }
            // A redelivered end of round: the plan is stored, only publishing may be missing.
            Some(RunState::Applying) => {}
            _ => return Ok(()),
        }
        self.publish_changes(round, Lane::for_trigger(&run.trigger)).await
    }

    /// Plans the run from its round; false when a newer round superseded
    /// this one first (then nothing is stored).
    async fn plan(&self, round: &Round<'_>) -> anyhow::Result<bool> {
        self.store
            .set_run_state(round.ids.run_id, RunState::Differing)
            .await?;
        let tenant = self.store.require_tenant(round.tenant_id, None).await?;
        if !self
            .store
            .settle_membership(round.tenant_id, round.ids, round.groups)
            .await?
        {
            tracing::debug!(tenant_id = round.tenant_id, round_id = %round.ids.round_id,
                "superseded while planning: the newer round plans the run");
            return Ok(false);
        }
        if round.full_round {
            let Some(gone) = self
                .store
                .mark_unseen_removed(round.tenant_id, round.ids, round.pages)
                .await?
            else {
                tracing::debug!(tenant_id = round.tenant_id, round_id = %round.ids.round_id,
                    "superseded while planning: the newer round plans the run");
                return Ok(false);
            };
            if gone > 0 {
                tracing::info!(
                    tenant_id = round.tenant_id,
                    gone,
                    "users not returned by the full round are removed"
                );
            }
        }
        let planner = Planner {
            store: &self.store,
            tenant: &tenant.config,
            round: round.ids,
            scoped: round.scoped,
            // The injectable clock: grace periods are tested by moving it.
            now: clock::now(),
        };
        // A relisted membership may have moved anyone in or out of scope.
        let everyone = round.full_round || round.groups.is_some_and(|g| g.relisted);
        let survey = planner.survey_run(round.ids.run_id, everyone).await?;
        // An approval covers the next run only: one left open would wave
        // through a later, unrelated mass deletion.
        let approval = self
            .store
            .use_deletion_approval(round.tenant_id, round.ids.run_id)
            .await?;
        let approved = survey.guard_trips && approval;
        let hold = survey.hold_reason(&tenant.config, approved);
        let stored = planner
            .store_plan(round.ids.run_id, &survey, hold.as_deref(), |decision| {
                metrics::counter!("usersync_user_decisions_total", "decision" => decision).increment(1);
            })
            .await?;
        tracing::info!(
            tenant_id = round.tenant_id,
            run_id = %round.ids.run_id,
            everyone = survey.decides_everyone(),
            users = stored.users,
            changes = stored.changes,
            "planned"
        );
        let mut warnings = survey.warnings(hold.as_deref());
        if approved {
            warnings.push(format!(
                "{} deletions approved by the operator are carried out",
                survey.deletions
            ));
        }
        for warning in &warnings {
            tracing::warn!(tenant_id = round.tenant_id, run_id = %round.ids.run_id, "{warning}");
        }
        self.store
            .record_plan_outcome(round.ids.run_id, i64::try_from(stored.held)?, &warnings)
            .await?;
        let paused = tenant.config.mode == Mode::Pause;
        if let Some(event) = self
            .store
            .complete_planning(
                round.ids.run_id,
                round.tenant_id,
                &RoundEnd {
                    delta_link: round.delta_link,
                    full_round: round.full_round,
                    paused,
                    basis: &planner.basis()?,
                    planned_everyone: survey.decides_everyone(),
                    planned_at: planner.now,
                },
            )
            .await?
        {
            self.bus
                .send(Stage::Notifier, &event, &event.message_id())
                .await?;
        }
        Ok(true)
    }

    /// Sends the first [`DISPATCH_WINDOW`] of the run's batches (numbered as
    /// the plan was stored); the applier sends each next one as it finishes
    /// one (windowed dispatch, so one run cannot bury the others). A batch
    /// already done is not sent again.
    /// All in the run's lane: the applier sends the next ones in the same.
    async fn publish_changes(&self, round: &Round<'_>, lane: Lane) -> anyhow::Result<()> {
        let run_id = round.ids.run_id;
        let batches = self.store.batch_count(run_id).await?;
        for batch in 0..batches.min(usersync_store::DISPATCH_WINDOW) {
            let changes = self.store.pending_batch(run_id, batch).await?;
            if changes.is_empty() {
                continue;
            }
            let message = ChangeBatch {
                run_id,
                tenant_id: round.tenant_id.to_owned(),
                batch,
                changes,
            };
            self.bus
                .send_in(Stage::Applier, lane, &message, &message.message_id())
                .await?;
        }
        tracing::info!(tenant_id = round.tenant_id, run_id = %run_id, batches, "changes handed to the applier");
        Ok(())
    }
}

/// A page that changed nothing is acknowledged; the log says why.
fn log_unrecorded(outcome: PageOutcome, tenant_id: &str, round: StoreRound, page: u32) {
    match outcome {
        PageOutcome::Recorded => {}
        PageOutcome::AlreadyRecorded => {
            tracing::debug!(tenant_id, round_id = %round.round_id, page, "page recorded before: skipped");
        }
        PageOutcome::StaleRound => {
            tracing::debug!(tenant_id, round_id = %round.round_id, page, "page of a superseded round: skipped");
        }
    }
}

struct Round<'a> {
    ids: StoreRound,
    /// Pages the round published (users and members).
    pages: u32,
    tenant_id: &'a str,
    full_round: bool,
    scoped: bool,
    delta_link: &'a str,
    groups: Option<&'a usersync_contract::GroupsRound>,
}
