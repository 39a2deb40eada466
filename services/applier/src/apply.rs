//! One change batch, in recording steps: the step's users are locked and read
//! in one statement, each change is checked against the current desired
//! version and written to the PBX (concurrently, up to the tenant's calls in
//! flight), then the step's outcomes are recorded together and its events go
//! to the notifier in one message, before the commit. A pause the PBX asks
//! for (429) is waited out, in-process while it is short (the changes it
//! stopped go into the next step), else through the bus's delayed retry, and
//! is never a failure. A change's own transient failure is recorded on the
//! change and tried again after backoff, through the delayed retry; the change
//! is given up once its own failures span the give-up bound. A retried batch
//! writes only its changes still pending.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{stream::FuturesUnordered, StreamExt};
use usersync_bus::{Bus, Failure, Handler, Incoming};
use usersync_contract::{
    topology::{Lane, Stage},
    Change, ChangeBatch, Event,
};
use usersync_core::{diff, Action, AdoptMatch, FieldPatch, SyncedFields, TenantConfig};
use usersync_pbx::{NewUser, PbxClient, PbxError, PbxErrorKind, PbxTarget, PbxUser};
use usersync_store::{
    ChangeEnd, ChangeRecord, CreateAnswers, CreateConflict, LockedUser, PbxCheck, SecretKey, Store,
    UserToLock, DISPATCH_WINDOW,
};
use uuid::Uuid;

use crate::limits::{Gate, TenantGates, DEFAULT_PAUSE};
use crate::precheck::{pbx_match_value, unauthorized_reason, CheckFailure, Prechecks};
use crate::retry::{after_failure, backoff, gave_up_reason, AfterFailure};

/// How long a batch waits for the tenant's pauses in-process, from when it was
/// taken; a change that would wait longer goes back through the delayed retry,
/// so a throttled tenant's batches give the replica's prefetch to others now
/// and then, and a long pause holds no message.
const IN_PROCESS_WAIT: Duration = Duration::from_secs(30);

pub struct Applier {
    pub store: Store,
    pub bus: Bus,
    /// Every tenant's PBX client shares its pool (from [`PbxClient::http`]:
    /// no redirect takes a request elsewhere).
    pub http: reqwest::Client,
    pub default_pbx: PbxTarget,
    pub key: Option<SecretKey>,
    pub gates: TenantGates,
    pub prechecks: Prechecks,
    /// How long a change's own writes may keep failing before it is given up.
    pub give_up_after: Duration,
}

/// What one batch needs to know while its changes are written.
struct BatchContext<'a> {
    run_id: Uuid,
    batch: u32,
    tenant: &'a TenantConfig,
    pbx: PbxClient,
    gate: Arc<Gate>,
    check: Option<PbxCheck>,
    /// When the batch was taken: pauses are waited in-process until [`IN_PROCESS_WAIT`] after it.
    taken: Instant,
    /// The PBX refused the token: no more calls for this tenant in this batch.
    refused: AtomicBool,
}

impl BatchContext<'_> {
    /// Whether a pause of `wait` is waited out here rather than through the bus.
    fn may_wait(&self, wait: Duration) -> bool {
        self.taken.elapsed() + wait <= IN_PROCESS_WAIT
    }
}

/// What became of a batch's changes over its recording steps.
#[derive(Default)]
struct Tally {
    /// Not written yet: to be tried again, not before the duration. Not a
    /// failure of the batch (a pause, or its own failure still within the bound).
    later: Vec<(Duration, String)>,
    /// Own writes failed for the whole bound: recorded as failed, with these reasons.
    gave_up: Vec<String>,
    /// The PBX refused the token: the tenant's run stops.
    refused: Option<PbxError>,
    /// Our side failed (database, broker): the step was not recorded.
    broken: Option<anyhow::Error>,
}

/// How one change's try in a step went, before it is recorded.
struct Tried<'c> {
    change: &'c Change,
    written: Written,
    /// The definite answers its creates got (each uses up a key).
    answers: Answers,
}

/// How a PBX write went, before it is recorded.
enum Written {
    Done(ChangeRecord, Option<Box<Event>>),
    Transient(PbxError),
    Unauthorized(PbxError),
    /// The tenant was paused before the write: not tried, in the next step.
    Paused,
}

/// The definite answers (201, 4xx) a change's creates got in one try, and the
/// conflict that stands after the last: recorded with the step, so a crash
/// before its commit repeats the same Idempotency-Key.
#[derive(Default)]
struct Answers {
    count: i64,
    conflict: Option<CreateConflict>,
}

impl Answers {
    fn answered(&mut self, conflict: Option<CreateConflict>) {
        self.count += 1;
        self.conflict = conflict;
    }
}

/// What one recording step leaves for the batch.
#[derive(Default)]
struct Step<'c> {
    /// Stopped by a pause (their own 429 or another's): tried again after it, in this batch.
    paused: HashSet<&'c String>,
    tally: Tally,
}

impl Handler<ChangeBatch> for Applier {
    async fn handle(&self, incoming: Incoming<ChangeBatch>) -> Result<(), Failure> {
        let batch = &incoming.message;
        // A failed run writes nothing more; the next run plans again.
        if !self.store.run_is_open(batch.run_id).await? {
            return Ok(());
        }
        let tenant = self.tenant(&batch.tenant_id).await?;
        let pbx = match self.pbx_for(&tenant) {
            Ok(pbx) => pbx,
            Err(reason) => {
                self.fail_run(batch.run_id, "pbx.not_configured", &reason).await?;
                return Ok(());
            }
        };
        let has_creates = batch
            .changes
            .iter()
            .any(|c| matches!(c.action, Action::Create { .. }));
        let gate = self.gates.gate(&tenant);
        let taken = Instant::now();
        // A tenant paused for longer than a batch waits in-process: come back then.
        if let Some(wait) = gate.paused_for().filter(|wait| *wait > IN_PROCESS_WAIT) {
            return Err(Failure::Later {
                reason: format!("the PBX asked for a pause (429); {wait:.0?} left"),
                after: wait,
            });
        }
        let check = if has_creates {
            match self
                .prechecks
                .ensure(
                    &self.store,
                    batch.run_id,
                    &tenant,
                    &pbx,
                    &gate,
                    taken + IN_PROCESS_WAIT,
                )
                .await?
            {
                Ok(check) => Some(check),
                Err(CheckFailure::Run { code, reason }) => {
                    tracing::error!(tenant_id = %tenant.id, code, %reason, "the run cannot write to the PBX");
                    self.fail_run(batch.run_id, code, &reason).await?;
                    return Ok(());
                }
                Err(CheckFailure::Transient(err)) if incoming.is_last_attempt() => {
                    let reason = format!(
                        "the PBX of company {} gave no usable answer in {} attempts: {}",
                        tenant.pbx_company_id,
                        incoming.attempt,
                        err.describe()
                    );
                    self.fail_run(batch.run_id, "pbx.unavailable", &reason).await?;
                    return Ok(());
                }
                Err(CheckFailure::Transient(err)) => {
                    return Err(check_retry(&incoming, &err));
                }
            }
        } else {
            None
        };
        let context = BatchContext {
            run_id: batch.run_id,
            batch: batch.batch,
            tenant: &tenant,
            gate,
            pbx,
            check,
            taken,
            refused: AtomicBool::new(false),
        };
        let Tally {
            later,
            gave_up,
            refused,
            broken,
        } = self.apply_batch(&context, &batch.changes).await;
        if let Some(err) = refused {
            let reason = unauthorized_reason(&tenant, &err);
            tracing::error!(tenant_id = %tenant.id, %reason, "stopping writes for the tenant");
            self.fail_run(batch.run_id, "pbx.unauthorized", &reason).await?;
            return Ok(());
        }
        tracing::info!(
            tenant_id = %tenant.id,
            run_id = %batch.run_id,
            batch = batch.batch,
            changes = batch.changes.len(),
            to_retry = later.len(),
            given_up = gave_up.len(),
            "change batch handled"
        );
        // The run's window moves on whatever became of this batch.
        self.send_next_batch(batch).await?;
        if let Some(err) = broken {
            return Err(err.into());
        }
        // Also when this batch wrote nothing (redelivered after its last
        // commit): the run may have ended with it.
        if later.is_empty() {
            self.finish_if_done(batch.run_id).await?;
        }
        // Changes still to write bring the batch back, whatever else became
        // of it; neither a pause nor a failure within the bound is an attempt.
        if let Some(after) = later.iter().map(|(after, _)| *after).min() {
            return Err(Failure::Later {
                reason: format!("{} change(s) not written yet: {}", later.len(), later[0].1),
                after,
            });
        }
        if !gave_up.is_empty() {
            return Err(Failure::reject(format!(
                "{} change(s) still failing after {} of their own failures, recorded as failed; the next run plans them again: {}",
                gave_up.len(),
                crate::retry::whole_seconds(self.give_up_after),
                gave_up.join("; ")
            )));
        }
        Ok(())
    }
}

impl Applier {
    async fn tenant(&self, tenant_id: &str) -> anyhow::Result<TenantConfig> {
        Ok(self
            .store
            .require_tenant(tenant_id, self.key.as_ref())
            .await?
            .config)
    }

    /// The tenant's own PBX, else the one from the environment.
    fn pbx_for(&self, tenant: &TenantConfig) -> Result<PbxClient, String> {
        let own = tenant
            .pbx
            .as_ref()
            .map(|pbx| (pbx.api_url.as_str(), pbx.api_token.as_str()));
        self.default_pbx.client(&self.http, own, "applier")
    }

    /// Ends the run as failed (once, whichever replica gets there first) and tells the notifier.
    async fn fail_run(&self, run_id: Uuid, code: &str, reason: &str) -> anyhow::Result<()> {
        if let Some(event) = self.store.fail_run(run_id, code, reason).await? {
            self.bus
                .send(Stage::Notifier, &event, &event.message_id())
                .await?;
            self.store.forget_unowned(run_id).await?;
        }
        Ok(())
    }

    /// Hands the run's batch one window further on to the applier. Sent again
    /// by a redelivered batch, it is the same message, and its done changes are skipped.
    async fn send_next_batch(&self, batch: &ChangeBatch) -> anyhow::Result<()> {
        let next = batch.batch + DISPATCH_WINDOW;
        let changes = self.store.pending_batch(batch.run_id, next).await?;
        if changes.is_empty() {
            return Ok(());
        }
        let run = self
            .store
            .run(batch.run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("run {} is not recorded", batch.run_id))?;
        let message = ChangeBatch {
            run_id: batch.run_id,
            tenant_id: batch.tenant_id.clone(),
            batch: next,
            changes,
        };
        // The lane the run's first batches took: its batches stay in one queue.
        self.bus
            .send_in(
                Stage::Applier,
                Lane::for_trigger(&run.trigger),
                &message,
                &message.message_id(),
            )
            .await
    }

    /// Writes the batch's changes in recording steps: the first step tries
    /// them all; the changes a pause stopped are tried in the next, once the
    /// pause is waited out (a change that waits for a pause has not failed,
    /// whoever's 429 caused it).
    async fn apply_batch(&self, ctx: &BatchContext<'_>, changes: &[Change]) -> Tally {
        let mut tally = Tally::default();
        let mut to_write: Vec<&Change> = changes.iter().collect();
        while !to_write.is_empty() {
            // Waited before a connection or the users' locks are taken.
            if let Some(wait) = ctx.gate.paused_for() {
                if !ctx.may_wait(wait) {
                    let why = "waiting out the PBX's pause (429)";
                    tally
                        .later
                        .extend(to_write.iter().map(|_| (wait, why.to_owned())));
                    break;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            match self.step(ctx, &to_write).await {
                Ok(step) => {
                    // In the batch's order: a change a 429 stopped goes
                    // before those that waited for it without calling.
                    to_write.retain(|change| step.paused.contains(&change.object_id));
                    tally.later.extend(step.tally.later);
                    tally.gave_up.extend(step.tally.gave_up);
                    tally.refused = tally.refused.or(step.tally.refused);
                }
                Err(err) => {
                    tally.broken = Some(err);
                    break;
                }
            }
            if tally.refused.is_some() {
                break;
            }
        }
        tally
    }

    /// One recording step, in one transaction: lock the users, write their
    /// changes, record the outcomes and failed tries, send the events, commit.
    async fn step<'c>(&self, ctx: &BatchContext<'_>, changes: &[&'c Change]) -> anyhow::Result<Step<'c>> {
        let mut client = self.store.client().await?;
        let tx = Store::begin_step(&mut client).await?;
        let users: Vec<UserToLock> = changes
            .iter()
            .map(|change| UserToLock {
                object_id: &change.object_id,
                match_value: match &change.action {
                    Action::Create { fields } => directory_match_value(ctx.tenant.adopt_match, fields),
                    _ => None,
                },
            })
            .collect();
        let locked = Store::lock_users(&tx, ctx.run_id, &ctx.tenant.id, &users).await?;
        // A change not in the run, or done already (another replica, or an
        // earlier try of this batch), has nothing left to write.
        // Each try is made as a slot frees up, not all at once: a try is a
        // few kilobytes of state (its PBX request's among them), and a whole
        // batch's of them for every batch in hand was the most of the
        // applier's peak memory.
        let pending: Vec<(&Change, &LockedUser)> = changes
            .iter()
            .filter_map(|&change| {
                let user = locked.get(&change.object_id)?;
                (user.outcome == "pending").then_some((change, user))
            })
            .collect();
        let mut pending = pending.into_iter();
        let mut trying = FuturesUnordered::new();
        let mut tried: Vec<anyhow::Result<Tried>> = Vec::with_capacity(pending.len());
        loop {
            while trying.len() < ctx.gate.max_in_flight() {
                let Some((change, user)) = pending.next() else {
                    break;
                };
                trying.push(self.try_change(ctx, &tx, change, user));
            }
            let Some(done) = trying.next().await else { break };
            tried.push(done);
        }
        drop(trying);

        let mut step = Step::default();
        let mut ends = Vec::new();
        let mut events = Vec::new();
        let mut answered = Vec::new();
        let mut failed = Vec::new();
        for tried in tried {
            let Tried {
                change,
                written,
                answers,
            } = tried?;
            if answers.count > 0 {
                answered.push(CreateAnswers {
                    object_id: &change.object_id,
                    answers: answers.count,
                    conflict: answers.conflict,
                });
            }
            match written {
                Written::Done(record, event) => {
                    ends.push(self.ended(ctx, change, record, event, &mut events));
                }
                Written::Paused => {
                    step.paused.insert(&change.object_id);
                }
                Written::Unauthorized(err) => step.tally.refused = Some(err),
                Written::Transient(err) => {
                    let throttled = matches!(err.kind, PbxErrorKind::RateLimited { .. });
                    failed.push((change, err.describe(), throttled));
                }
            }
        }
        let failed_tries: Vec<(&str, String)> = failed
            .iter()
            .map(|(change, describe, _)| (change.object_id.as_str(), describe.clone()))
            .collect();
        let mut tries = Store::record_failed_tries(&tx, ctx.run_id, &failed_tries).await?;
        for (change, describe, throttled) in failed {
            let Some(tried) = tries.remove(&change.object_id) else {
                continue;
            };
            let next = after_failure(
                tried.tries,
                tried.failing_for,
                self.give_up_after,
                &mut rand::thread_rng(),
            );
            match next {
                AfterFailure::TryAgain(after) => {
                    tracing::info!(tenant_id = %ctx.tenant.id, object_id = %change.object_id, tries = tried.tries, error = %describe, "write failed; trying again");
                    // A 429 waits for its pause like every other change.
                    if throttled {
                        step.paused.insert(&change.object_id);
                    } else {
                        step.tally.later.push((after, describe));
                    }
                }
                AfterFailure::GiveUp => {
                    let reason = gave_up_reason(&describe, tried.tries, tried.failing_for);
                    step.tally.gave_up.push(format!("{}: {reason}", change.object_id));
                    let record = ChangeRecord::Failed { reason };
                    ends.push(self.ended(ctx, change, record, None, &mut events));
                }
            }
        }
        // Events are confirmed before the commit: if the commit fails the
        // changes are redone, and the events' deterministic ids keep the mails
        // single. The broker's confirm and the database's recording are
        // waited for together, so the users' locks and the connection are held
        // for the longer of the two, not both.
        let event = (!events.is_empty()).then(|| Event::Batch {
            tenant_id: ctx.tenant.id.clone(),
            run_id: ctx.run_id,
            batch: ctx.batch.into(),
            events,
        });
        let publish = async {
            match &event {
                Some(event) => self.bus.send(Stage::Notifier, event, &event.message_id()).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(
            publish,
            Store::record_changes(&tx, ctx.run_id, &ctx.tenant.id, &ends, &answered)
        )?;
        tx.commit().await.context("recording the changes")?;
        Ok(step)
    }

    /// Ends the run when none of its changes is pending any more, after the
    /// batch's steps committed (see [`Store::finish_if_done`]); the finish
    /// event goes out before the end is committed.
    async fn finish_if_done(&self, run_id: Uuid) -> anyhow::Result<()> {
        let mut client = self.store.client().await?;
        let tx = Store::begin_step(&mut client).await?;
        let Some(event) = Store::finish_if_done(&tx, run_id).await? else {
            return Ok(());
        };
        self.bus
            .send(Stage::Notifier, &event, &event.message_id())
            .await?;
        tx.commit().await.context("ending the run")?;
        self.store.forget_unowned(run_id).await?;
        Ok(())
    }

    /// A change's end to record, its event added to the step's; a failure
    /// tells the notifier too when the write gave no event of its own.
    fn ended<'c>(
        &self,
        ctx: &BatchContext<'_>,
        change: &'c Change,
        record: ChangeRecord,
        event: Option<Box<Event>>,
        events: &mut Vec<Event>,
    ) -> ChangeEnd<'c> {
        let mut event = event.map(|event| *event);
        if let ChangeRecord::Failed { reason } = &record {
            tracing::warn!(tenant_id = %ctx.tenant.id, object_id = %change.object_id, %reason, "change failed");
            event.get_or_insert_with(|| user_changed(ctx, change, "failed", Some(reason.clone())));
        }
        events.extend(event);
        ChangeEnd {
            object_id: &change.object_id,
            desired_version: change.desired_version,
            record,
        }
    }

    /// One try at a change, under its user's lock in the step's transaction.
    async fn try_change<'c>(
        &self,
        ctx: &BatchContext<'_>,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &'c Change,
        locked: &LockedUser,
    ) -> anyhow::Result<Tried<'c>> {
        let mut answers = Answers::default();
        // Another run planned the same change and it is done, or the user has
        // moved on since: either way this change has nothing left to write.
        let stale = locked.sync.desired_version != change.desired_version
            || locked.sync.applied_version >= change.desired_version;
        let written = if stale {
            Written::Done(ChangeRecord::Superseded, None)
        } else if ctx.refused.load(Ordering::Relaxed) {
            // Left pending: the run is failed for the refusal.
            Written::Paused
        } else {
            let _slot = ctx.gate.slot().await;
            if ctx.gate.paused_for().is_some() {
                Written::Paused
            } else {
                self.write(ctx, tx, change, locked, &mut answers).await?
            }
        };
        // At once, so that the step's other changes do not call meanwhile.
        match &written {
            Written::Unauthorized(_) => ctx.refused.store(true, Ordering::Relaxed),
            Written::Transient(err) if matches!(err.kind, PbxErrorKind::RateLimited { .. }) => {
                ctx.gate.pause(err.retry_after().unwrap_or(DEFAULT_PAUSE));
            }
            _ => {}
        }
        Ok(Tried {
            change,
            written,
            answers,
        })
    }

    async fn write(
        &self,
        ctx: &BatchContext<'_>,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
        locked: &LockedUser,
        answers: &mut Answers,
    ) -> anyhow::Result<Written> {
        let company = &ctx.tenant.pbx_company_id;
        Ok(match &change.action {
            Action::None => Written::Done(ChangeRecord::Superseded, None),
            Action::Create { fields } => self.create(ctx, tx, change, fields, locked, answers).await?,
            Action::Update { pbx_id, .. } => {
                // The difference between what the PBX was last told and what is
                // wanted now, under the lock: never more than that.
                let (Some(applied), Some(desired)) = (&locked.sync.applied, &locked.sync.desired) else {
                    return Ok(Written::Done(ChangeRecord::Superseded, None));
                };
                let pbx_id = locked.sync.pbx_id.as_deref().unwrap_or(pbx_id);
                let patch = diff(applied, desired);
                if patch.is_empty() {
                    return Ok(Written::Done(ChangeRecord::Superseded, None));
                }
                ctx.gate.pace().await;
                match ctx
                    .pbx
                    .update_user(company, pbx_id, &patch_body(&patch, None), None)
                    .await
                {
                    Ok(_) => {
                        let detail = format!("changed {}", patch.changed_fields().join(", "));
                        let event = user_changed(ctx, change, "updated", Some(detail));
                        Written::Done(
                            ChangeRecord::Updated {
                                fields: desired.clone(),
                            },
                            Some(Box::new(event)),
                        )
                    }
                    Err(err) if err.kind == PbxErrorKind::NotFound => failed(format!(
                        "PBX user {pbx_id} no longer exists ({}); it was removed in the PBX by hand",
                        err.describe()
                    )),
                    Err(err) => classify(err),
                }
            }
            Action::Delete { pbx_id } => {
                let pbx_id = locked.sync.pbx_id.as_deref().unwrap_or(pbx_id);
                ctx.gate.pace().await;
                // 404: already gone, which is what was wanted.
                match ctx.pbx.delete_user(company, pbx_id).await {
                    Ok(_) => Written::Done(
                        ChangeRecord::Deleted,
                        Some(Box::new(user_changed(ctx, change, "deleted", None))),
                    ),
                    Err(err) => classify(err),
                }
            }
        })
    }

    /// Creates the user, or adopts the PBX user that is already there for it.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        ctx: &BatchContext<'_>,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
        fields: &SyncedFields,
        locked: &LockedUser,
        answers: &mut Answers,
    ) -> anyhow::Result<Written> {
        let by = ctx.tenant.adopt_match;
        // Claimed only when the run listed one: most creates adopt nothing.
        let listed = locked.unowned.then(|| directory_match_value(by, fields));
        if let Some(value) = listed.flatten() {
            if let Some(unowned) = Store::claim_unowned(tx, ctx.run_id, &value).await? {
                if let Ok(user) = serde_json::from_value::<PbxUser>(unowned) {
                    return Ok(self.adopt(ctx, change, fields, user).await);
                }
            }
        }
        if let Some(written) = self.recheck_conflict(ctx, tx, change, fields, locked).await? {
            return Ok(written);
        }
        let template = ctx.check.as_ref().and_then(|c| c.template_id.clone());
        let user = new_user(ctx.tenant, &change.object_id, fields, template);
        let mut generation = locked.create_generation;
        let mut posts = 0;
        loop {
            posts += 1;
            let key = create_key(ctx.tenant, change, generation);
            ctx.gate.pace().await;
            let answer = ctx.pbx.create_user(&ctx.tenant.pbx_company_id, &user, &key).await;
            // An unknown outcome keeps the key, so repeating the POST creates
            // nothing twice; a definite one uses it up. Either way the key's
            // state is committed with the change's record, or not at all.
            let err = match answer {
                Ok(created) => {
                    answers.answered(None);
                    return Ok(created_record(ctx, change, fields, locked, created.id));
                }
                Err(err) if !is_definite(&err) => return Ok(classify(err)),
                Err(err) => err,
            };
            let holder = match (&err.kind, &err.existing_id) {
                (PbxErrorKind::Conflict, Some(holder_id)) => {
                    ctx.gate.pace().await;
                    match ctx.pbx.get_user(&ctx.tenant.pbx_company_id, holder_id).await {
                        Ok(holder) => holder,
                        Err(read) => return Ok(classify(read)),
                    }
                }
                _ => {
                    answers.answered(None);
                    return Ok(failed(err.describe()));
                }
            };
            let field = err.field.as_deref().unwrap_or_default();
            match holder {
                Some(holder) if field.is_empty() || holds(&holder, field, change, fields) => {
                    let remembered = remembered_conflict(field, &holder);
                    let written = self
                        .resolve_conflict(ctx, tx, change, fields, locked, err.field.as_deref(), holder)
                        .await?;
                    let standing = matches!(&written, Written::Done(ChangeRecord::Failed { .. }, _));
                    let conflict = remembered.filter(|_| standing);
                    answers.answered(conflict);
                    return Ok(written);
                }
                // Freed since the 409: post again, with the next key (once;
                // a value that keeps changing hands is tried again later).
                _ if posts < 2 => {
                    answers.answered(None);
                    generation += 1;
                }
                _ => return Ok(Written::Transient(err)),
            }
        }
    }

    /// Refused for a conflict before: while the holder still holds the value,
    /// a POST would only be refused again, so the holder is read, not posted
    /// against. None when it is gone or holds another value now: post.
    async fn recheck_conflict(
        &self,
        ctx: &BatchContext<'_>,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
        fields: &SyncedFields,
        locked: &LockedUser,
    ) -> anyhow::Result<Option<Written>> {
        let Some(conflict) = &locked.create_conflict else {
            return Ok(None);
        };
        ctx.gate.pace().await;
        match ctx
            .pbx
            .get_user(&ctx.tenant.pbx_company_id, &conflict.holder_id)
            .await
        {
            Ok(Some(holder)) if holds(&holder, &conflict.field, change, fields) => {
                let field = Some(conflict.field.as_str());
                self.resolve_conflict(ctx, tx, change, fields, locked, field, holder)
                    .await
                    .map(Some)
            }
            Ok(_) => Ok(None),
            Err(err) => Ok(Some(classify(err))),
        }
    }

    /// A PBX user holds a unique value this user needs: it is ours already,
    /// adoptable, or someone else's (the user fails, the reason says whose and
    /// what to do).
    #[allow(clippy::too_many_arguments)]
    async fn resolve_conflict(
        &self,
        ctx: &BatchContext<'_>,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
        fields: &SyncedFields,
        locked: &LockedUser,
        field: Option<&str>,
        holder: PbxUser,
    ) -> anyhow::Result<Written> {
        let foreign_owner = match holder.external_id.as_deref() {
            Some(owner) if owner != change.object_id => Some((
                owner.to_owned(),
                Store::directory_user_name(tx, &ctx.tenant.id, owner).await?,
            )),
            _ => None,
        };
        let adoptable = holder.external_id.is_none()
            && pbx_match_value(ctx.tenant.adopt_match, &holder)
                == directory_match_value(ctx.tenant.adopt_match, fields);
        Ok(match holder.external_id.as_deref() {
            Some(owner) if owner == change.object_id => {
                // Created for this user before (an earlier desired version):
                // link it and bring it in line.
                let patch = diff(&pbx_fields(&holder), fields);
                if !patch.is_empty() {
                    ctx.gate.pace().await;
                    if let Err(err) = ctx
                        .pbx
                        .update_user(
                            &ctx.tenant.pbx_company_id,
                            &holder.id,
                            &patch_body(&patch, None),
                            None,
                        )
                        .await
                    {
                        return Ok(classify(err));
                    }
                }
                created_record(ctx, change, fields, locked, holder.id)
            }
            None if adoptable => self.adopt(ctx, change, fields, holder).await,
            _ => failed(held_reason(
                ctx.tenant.adopt_match,
                &conflict_field(field, fields),
                &holder,
                foreign_owner
                    .as_ref()
                    .map(|(id, name)| (id.as_str(), name.as_deref())),
            )),
        })
    }

    /// Links an unowned PBX user to this directory user and sends the fields
    /// that differ, only if nobody changed it since it was read.
    async fn adopt(
        &self,
        ctx: &BatchContext<'_>,
        change: &Change,
        fields: &SyncedFields,
        user: PbxUser,
    ) -> Written {
        let company = &ctx.tenant.pbx_company_id;
        let patch = diff(&pbx_fields(&user), fields);
        let body = patch_body(&patch, Some(&change.object_id));
        ctx.gate.pace().await;
        let result = match ctx
            .pbx
            .update_user(company, &user.id, &body, Some(user.version))
            .await
        {
            Err(err) if err.kind == PbxErrorKind::Stale => {
                // Changed since it was listed: read it again and decide afresh.
                ctx.gate.pace().await;
                match ctx.pbx.get_user(company, &user.id).await {
                    Ok(Some(fresh)) if fresh.external_id.is_none() => {
                        let patch = diff(&pbx_fields(&fresh), fields);
                        let body = patch_body(&patch, Some(&change.object_id));
                        ctx.gate.pace().await;
                        ctx.pbx
                            .update_user(company, &fresh.id, &body, Some(fresh.version))
                            .await
                    }
                    Ok(_) => return Written::Transient(err),
                    Err(err) => Err(err),
                }
            }
            other => other,
        };
        match result {
            Ok(adopted) => {
                let detail = format!(
                    "adopted the existing PBX user {} (same {}){}",
                    adopted.id,
                    ctx.tenant.adopt_match,
                    if patch.is_empty() {
                        String::new()
                    } else {
                        format!(", changed {}", patch.changed_fields().join(", "))
                    }
                );
                tracing::info!(tenant_id = %ctx.tenant.id, object_id = %change.object_id, pbx_id = %adopted.id, "adopted");
                Written::Done(
                    ChangeRecord::Adopted {
                        pbx_id: adopted.id,
                        fields: fields.clone(),
                    },
                    Some(Box::new(user_changed(ctx, change, "updated", Some(detail)))),
                )
            }
            Err(err) => classify(err),
        }
    }
}

/// Delayed retry of a pre-check the PBX could not answer: backoff with
/// jitter, counted as an attempt of the batch.
fn check_retry(incoming: &Incoming<ChangeBatch>, err: &PbxError) -> Failure {
    Failure::Retry {
        reason: format!("the PBX pre-check is tried again: {}", err.describe()),
        after: Some(backoff(incoming.attempt, &mut rand::thread_rng())),
    }
}

/// Transient errors are retried, a refused token stops the tenant, anything
/// else fails this user for good (the PBX's field and message in the reason).
fn classify(err: PbxError) -> Written {
    match err.kind {
        PbxErrorKind::Unauthorized => Written::Unauthorized(err),
        _ if err.is_transient() => Written::Transient(err),
        _ => failed(err.describe()),
    }
}

fn failed(reason: String) -> Written {
    Written::Done(ChangeRecord::Failed { reason }, None)
}

fn created_record(
    ctx: &BatchContext<'_>,
    change: &Change,
    fields: &SyncedFields,
    locked: &LockedUser,
    pbx_id: String,
) -> Written {
    let event = welcome_event(ctx.tenant, ctx.run_id, change, &pbx_id, fields, locked);
    Written::Done(
        ChangeRecord::Created {
            pbx_id,
            fields: fields.clone(),
        },
        Some(Box::new(event)),
    )
}

/// The PATCH body: the patch, plus the owner link when adopting.
fn patch_body(patch: &FieldPatch, external_id: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::to_value(patch).unwrap_or_else(|_| serde_json::json!({}));
    if let (Some(id), Some(map)) = (external_id, body.as_object_mut()) {
        map.insert("external_id".into(), id.into());
    }
    body
}

/// "alias \"x\"": the taken field and our value, as the 409 named it.
fn conflict_field(field: Option<&str>, fields: &SyncedFields) -> String {
    match field {
        Some("alias") => format!("alias \"{}\"", fields.alias),
        Some("pstn_fixed") => format!("pstn_fixed \"{}\"", fields.pstn_fixed),
        Some(other) if !other.is_empty() => other.to_owned(),
        _ => "a unique value".to_owned(),
    }
}

/// The Idempotency-Key of a create: the same for every try of one POST whose
/// outcome is unknown, a new one after each definite answer (`generation`).
fn create_key(tenant: &TenantConfig, change: &Change, generation: i64) -> String {
    let key = format!(
        "usersync:{}:{}:{}",
        tenant.id, change.object_id, change.desired_version
    );
    if generation == 0 {
        key
    } else {
        format!("{key}:{generation}")
    }
}

/// The PBX answered the POST for certain (a refusal the contract lists: 400,
/// 404, 409, 412, 422): a repeat with the same key would only replay that
/// answer. Anything else leaves the outcome unknown and the key kept: a
/// dropped connection, 5xx, 429, 401, a status the contract does not list,
/// or a success whose body cannot be read (the user may exist already).
fn is_definite(err: &PbxError) -> bool {
    matches!(
        err.kind,
        PbxErrorKind::BadRequest
            | PbxErrorKind::NotFound
            | PbxErrorKind::Conflict
            | PbxErrorKind::Stale
            | PbxErrorKind::Validation
    ) && err.status.is_some()
}

/// Whether `holder` still has this user's value of the field a 409 named.
fn holds(holder: &PbxUser, field: &str, change: &Change, fields: &SyncedFields) -> bool {
    match field {
        "alias" => holder.alias.eq_ignore_ascii_case(&fields.alias),
        "pstn_fixed" => holder.pstn_fixed == fields.pstn_fixed,
        "external_id" => holder.external_id.as_deref() == Some(change.object_id.as_str()),
        // A field this code does not know: trust the 409.
        _ => true,
    }
}

/// The conflict to check by reads next time, for the fields a read can decide.
fn remembered_conflict(field: &str, holder: &PbxUser) -> Option<CreateConflict> {
    matches!(field, "alias" | "pstn_fixed").then(|| CreateConflict {
        holder_id: holder.id.clone(),
        field: field.to_owned(),
    })
}

/// Why the user cannot be created while `holder` has the value, and what to do.
/// `owner`: the holder's external id and, when it is a directory user of
/// this tenant, that user's name.
fn held_reason(
    adopt_match: AdoptMatch,
    taken: &str,
    holder: &PbxUser,
    owner: Option<(&str, Option<&str>)>,
) -> String {
    let held = format!(
        "{taken} is held by PBX user {} (alias {})",
        holder.id, holder.alias
    );
    match owner {
        Some((id, Some(name))) => format!(
            "{held}, which belongs to directory user {name} ({id}): two directory users of this tenant have the same value; fix it in Entra ID"
        ),
        Some((id, None)) => format!(
            "{held}, which no directory user of this tenant owns (its external_id {id} is no user of this directory); remove or rename that PBX user, or change the value in Entra ID"
        ),
        None => format!(
            "{held}, which no directory user of this tenant owns and whose {adopt_match} differs; remove or rename that PBX user, change the value in Entra ID, or set adopt_match to the field that identifies the user"
        ),
    }
}

/// The synced fields as a PBX user has them.
fn pbx_fields(user: &PbxUser) -> SyncedFields {
    SyncedFields {
        alias: user.alias.clone(),
        first_name: user.first_name.clone(),
        surname: user.surname.clone(),
        pstn_fixed: user.pstn_fixed.clone(),
        email: user.email.clone(),
        attributes: user.attributes.clone(),
    }
}

/// The directory user's value for the adopt-match field, normalised like the PBX side.
fn directory_match_value(by: AdoptMatch, fields: &SyncedFields) -> Option<String> {
    let value = match by {
        AdoptMatch::Alias => Some(fields.alias.to_lowercase()),
        AdoptMatch::Email => fields.email.as_deref().map(str::to_lowercase),
        AdoptMatch::PstnFixed => Some(fields.pstn_fixed.clone()),
    };
    value.filter(|v| !v.is_empty())
}

fn new_user(
    tenant: &TenantConfig,
    object_id: &str,
    fields: &SyncedFields,
    template: Option<String>,
) -> NewUser {
    NewUser {
        alias: fields.alias.clone(),
        first_name: fields.first_name.clone(),
        surname: fields.surname.clone(),
        pstn_fixed: fields.pstn_fixed.clone(),
        email: fields.email.clone(),
        caller_id: tenant.default_caller_id.clone(),
        template: template.or_else(|| tenant.default_template.clone()),
        external_id: Some(object_id.to_owned()),
        attributes: fields.attributes.clone(),
    }
}

fn user_changed(ctx: &BatchContext<'_>, change: &Change, outcome: &str, detail: Option<String>) -> Event {
    Event::UserChanged {
        tenant_id: ctx.tenant.id.clone(),
        run_id: ctx.run_id,
        object_id: change.object_id.clone(),
        outcome: outcome.to_owned(),
        detail,
    }
}

fn welcome_event(
    tenant: &TenantConfig,
    run_id: Uuid,
    change: &Change,
    pbx_id: &str,
    fields: &SyncedFields,
    locked: &LockedUser,
) -> Event {
    Event::UserCreated {
        tenant_id: tenant.id.clone(),
        run_id,
        object_id: change.object_id.clone(),
        pbx_id: pbx_id.to_owned(),
        alias: fields.alias.clone(),
        first_name: fields.first_name.clone(),
        surname: fields.surname.clone(),
        pstn_fixed: fields.pstn_fixed.clone(),
        email: fields.email.clone().or_else(|| locked.mail.clone()),
        language: locked.language.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn tenant_json() -> serde_json::Value {
        serde_json::json!({
            "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
            "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s", "user_filter": {"memberOf": []}},
            "pbx_company_id": "acme", "field_mapping": {}
        })
    }

    fn fields() -> SyncedFields {
        SyncedFields {
            alias: "asa.oberg".into(),
            first_name: "Åsa".into(),
            surname: "Öberg".into(),
            pstn_fixed: "46812345678".into(),
            email: Some("Asa.Oberg@Acme.example".into()),
            attributes: BTreeMap::from([("title".into(), "Telefonist".into())]),
        }
    }

    #[test]
    fn adoption_body_links_the_owner_and_sends_only_the_difference() {
        let mut pbx = fields();
        pbx.surname = "Oberg".into();
        let patch = diff(&pbx, &fields());
        let body = patch_body(&patch, Some("obj-1"));
        assert_eq!(
            body,
            serde_json::json!({"surname": "Öberg", "external_id": "obj-1"})
        );
        let body = patch_body(&FieldPatch::default(), Some("obj-1"));
        assert_eq!(body, serde_json::json!({"external_id": "obj-1"}));
    }

    #[test]
    fn match_values_agree_between_directory_and_pbx() {
        let user = PbxUser {
            id: "p-1".into(),
            alias: "asa.oberg".into(),
            first_name: "Å".into(),
            surname: "Ö".into(),
            pstn_fixed: "46812345678".into(),
            email: Some("asa.oberg@acme.example".into()),
            caller_id: None,
            template: None,
            external_id: None,
            attributes: BTreeMap::new(),
            version: 1,
        };
        for by in AdoptMatch::ALL {
            assert_eq!(
                directory_match_value(by, &fields()),
                pbx_match_value(by, &user),
                "{by}"
            );
        }
        let mut no_mail = fields();
        no_mail.email = None;
        assert_eq!(directory_match_value(AdoptMatch::Email, &no_mail), None);
    }

    fn holder() -> PbxUser {
        PbxUser {
            id: "p-9".into(),
            alias: "reception".into(),
            first_name: "Front".into(),
            surname: "Desk".into(),
            pstn_fixed: "46812345699".into(),
            email: None,
            caller_id: None,
            template: None,
            external_id: None,
            attributes: BTreeMap::new(),
            version: 1,
        }
    }

    fn change(version: i64) -> Change {
        Change {
            object_id: "obj-1".into(),
            desired_version: version,
            action: Action::None,
        }
    }

    #[test]
    fn a_create_key_changes_only_with_a_definite_answer() {
        let tenant: TenantConfig = serde_json::from_value(tenant_json()).unwrap();
        assert_eq!(create_key(&tenant, &change(3), 0), "usersync:acme:obj-1:3");
        assert_eq!(create_key(&tenant, &change(3), 2), "usersync:acme:obj-1:3:2");
        let status = |kind, status| {
            let mut err = PbxError::from_kind(kind, "x");
            err.status = Some(status);
            err
        };
        for definite in [
            status(PbxErrorKind::Conflict, 409),
            status(PbxErrorKind::Validation, 422),
            status(PbxErrorKind::BadRequest, 400),
        ] {
            assert!(is_definite(&definite), "{definite:?}");
        }
        for unknown in [
            status(PbxErrorKind::Unavailable, 503),
            status(PbxErrorKind::RateLimited { retry_after: None }, 429),
            status(PbxErrorKind::Unauthorized, 401),
            status(PbxErrorKind::Unexpected, 418),
            status(PbxErrorKind::Unexpected, 302),
            status(PbxErrorKind::Malformed, 201),
            status(PbxErrorKind::Transport, 201),
            PbxError::from_kind(PbxErrorKind::Transport, "connection dropped"),
        ] {
            assert!(!is_definite(&unknown), "{unknown:?}");
        }
    }

    #[test]
    fn a_holder_holds_the_value_until_it_changes() {
        let mut ours = fields();
        ours.pstn_fixed = holder().pstn_fixed;
        ours.alias = "Reception".into();
        assert!(holds(&holder(), "pstn_fixed", &change(1), &ours));
        assert!(holds(&holder(), "alias", &change(1), &ours));
        assert!(!holds(&holder(), "external_id", &change(1), &ours));
        assert!(!holds(&holder(), "pstn_fixed", &change(1), &fields()));
        assert!(!holds(&holder(), "alias", &change(1), &fields()));
        assert_eq!(remembered_conflict("email", &holder()), None);
        assert_eq!(
            remembered_conflict("pstn_fixed", &holder()).map(|c| c.holder_id),
            Some("p-9".into())
        );
    }

    #[test]
    fn the_reason_names_whose_value_it_is_and_what_to_do() {
        let taken = conflict_field(Some("pstn_fixed"), &fields());
        let unowned = held_reason(AdoptMatch::Alias, &taken, &holder(), None);
        assert_eq!(
            unowned,
            "pstn_fixed \"46812345678\" is held by PBX user p-9 (alias reception), which no directory user of this tenant owns and whose alias differs; remove or rename that PBX user, change the value in Entra ID, or set adopt_match to the field that identifies the user"
        );
        let stranger = held_reason(AdoptMatch::Alias, &taken, &holder(), Some(("ext-7", None)));
        assert!(
            stranger.contains("no directory user of this tenant owns (its external_id ext-7")
                && stranger.contains("remove or rename that PBX user")
                && !stranger.contains("two directory users"),
            "{stranger}"
        );
        let colleague = held_reason(
            AdoptMatch::Alias,
            &taken,
            &holder(),
            Some(("obj-2", Some("bo.ek"))),
        );
        assert!(
            colleague.contains("belongs to directory user bo.ek (obj-2)")
                && colleague.contains("two directory users of this tenant")
                && colleague.contains("fix it in Entra ID"),
            "{colleague}"
        );
    }

    #[test]
    fn errors_are_sorted_into_retry_stop_and_fail() {
        let err = |kind| PbxError::from_kind(kind, "x");
        assert!(matches!(
            classify(err(PbxErrorKind::Unavailable)),
            Written::Transient(_)
        ));
        assert!(matches!(
            classify(err(PbxErrorKind::Transport)),
            Written::Transient(_)
        ));
        assert!(matches!(
            classify(err(PbxErrorKind::Malformed)),
            Written::Transient(_)
        ));
        assert!(matches!(
            classify(err(PbxErrorKind::RateLimited { retry_after: None })),
            Written::Transient(_)
        ));
        assert!(matches!(
            classify(err(PbxErrorKind::Unauthorized)),
            Written::Unauthorized(_)
        ));
        for kind in [
            PbxErrorKind::Validation,
            PbxErrorKind::BadRequest,
            PbxErrorKind::Conflict,
            PbxErrorKind::Unexpected,
        ] {
            assert!(matches!(
                classify(err(kind)),
                Written::Done(ChangeRecord::Failed { .. }, None)
            ));
        }
    }
}
