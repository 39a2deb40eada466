//! The differ's handler: record pages; at the end of a round decide every user,
//! store the verdicts and hand the changes to the applier.

use std::time::Duration;

use usersync_bus::{Bus, Failure, Handler, Incoming};
use usersync_contract::{
    topology::{Lane, Stage},
    ChangeBatch, DirectoryPage, PageBody,
};
use usersync_core::Mode;
use usersync_store::{Round as StoreRound, RoundEnd, RunState, Store};

use usersync_planner::{decision_label, Planner};
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
                self.store
                    .record_users_page(round, &page.tenant_id, *number, users)
                    .await?;
                Ok(())
            }
            PageBody::Members {
                page: number,
                member_ids,
            } => {
                self.store.record_members_page(round, *number, member_ids).await?;
                Ok(())
            }
            PageBody::RoundComplete {
                pages,
                full_round,
                scoped,
                delta_link,
                groups,
            } => {
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

    async fn complete_round(&self, round: &Round<'_>) -> anyhow::Result<()> {
        let Some(run) = self.store.run(round.ids.run_id).await? else {
            anyhow::bail!("run {} is not recorded", round.ids.run_id);
        };
        match RunState::parse(&run.state) {
            Some(RunState::Fetching | RunState::Differing) => {
                // What an earlier attempt stored goes: the batches are numbered from the start.
                self.store.restart_plan(round.ids.run_id).await?;
                self.plan(round).await?;
            }
            // A redelivered end of round: the plan is stored, only publishing may be missing.
            Some(RunState::Applying) => {}
            _ => return Ok(()),
        }
        self.publish_changes(round, Lane::for_trigger(&run.trigger)).await
    }

    async fn plan(&self, round: &Round<'_>) -> anyhow::Result<()> {
        self.store
            .set_run_state(round.ids.run_id, RunState::Differing)
            .await?;
        let tenant = self.store.require_tenant(round.tenant_id, None).await?;
        self.store
            .settle_membership(round.tenant_id, round.ids, round.groups)
            .await?;
        if round.full_round {
            let gone = self.store.mark_unseen_removed(round.tenant_id, round.ids).await?;
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
        let survey = planner.survey().await?;
        // An approval covers the next run only: one left open would wave
        // through a later, unrelated mass deletion.
        let approval = self
            .store
            .use_deletion_approval(round.tenant_id, round.ids.run_id)
            .await?;
        let approved = survey.guard_trips && approval;
        let hold = survey.hold_reason(&tenant.config, approved);
        let mut held = 0i64;
        // Changes stored so far: the next page's changes are numbered on from here.
        let mut numbered = 0u64;
        let mut after = String::new();
        loop {
            let page = planner.plan_page(&survey, hold.as_deref(), &after).await?;
            let Some(last) = page.last() else { break };
            after = last.row.object_id.clone();
            let planned: Vec<_> = page.into_iter().map(|p| p.user).collect();
            for user in &planned {
                let decision = decision_label(user);
                held += i64::from(decision == "held");
                metrics::counter!("usersync_user_decisions_total", "decision" => decision).increment(1);
            }
            numbered += self
                .store
                .save_plan(round.ids.run_id, round.tenant_id, &planned, numbered)
                .await?;
        }
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
            .record_plan_outcome(round.ids.run_id, held, &warnings)
            .await?;
        // Before the run can end: once it shows as succeeded, its fields are there.
        self.store.record_fields(round.tenant_id).await?;
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
                },
            )
            .await?
        {
            self.bus
                .send(Stage::Notifier, &event, &event.message_id())
                .await?;
        }
        Ok(())
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

struct Round<'a> {
    ids: StoreRound,
    tenant_id: &'a str,
    full_round: bool,
    scoped: bool,
    delta_link: &'a str,
    groups: Option<&'a usersync_contract::GroupsRound>,
}
