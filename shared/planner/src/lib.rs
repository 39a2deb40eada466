//! Planning one tenant's run from stored data: the directory users recorded by
//! the differ and each user's desired and applied state. The pure core makes
//! every decision; this crate gathers its inputs page by page.
//!
//! Two passes, both in pages so memory does not grow with the tenant:
//! 1. the survey: the claims on unique values (alias, fixed number) of the
//!    users decided go to a temporary table, and the deletions the run would
//!    make are counted; from that come the conflicts and the mass-deletion guard;
//! 2. the plan: each user decided with those tenant-wide facts.
//!
//! A run decides everyone only when what planning depends on may have
//! changed ([`Planner::survey_run`]); otherwise it decides the users its round
//! returned, those not settled yet (a change not applied, skipped, held,
//! pending deletion) and those sharing a unique value with them. Everyone
//! else would be decided as before: nothing about them or their tenant
//! changed, and their claims, stored with their last decision, still count
//! for conflicts.
//!
//! The differ stores the plan; `usersync plan` and `usersync explain` decide
//! everyone and change nothing.

mod lines;
mod user;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

use chrono::{DateTime, TimeDelta, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use usersync_core::conflict::losers;
use usersync_core::{resolve_conflicts, Action, Claim, Conflict, Problem, Scope, TenantConfig};
use usersync_store::{ClaimSession, PlannedUser, ReconcileRow, Round, Store};
use uuid::Uuid;

pub use lines::{field_changes, fields_list, plan_line, FieldChange, PlanLine};
pub use user::{applied_of, decision_label, mapped_fields, plan_user, scope_of, Overrides, PlanContext};

/// Users read per page.
pub const PLAN_PAGE: i64 = 500;

/// Pages of a plan stored at once, each in its own transaction (and on its
/// own database connection), while the next page is read and decided. A
/// page's statements keep one PostgreSQL backend busy; one at a time, the
/// database used one core of two while the rest waited on it.
pub const SAVES_AT_ONCE: usize = 3;

/// The longest a tenant goes without a run that decides everyone: a
/// safety net for anything that changed outside what planning tracks.
pub const FULL_PLAN_EVERY: TimeDelta = TimeDelta::days(7);

/// One tenant's plan in the making.
pub struct Planner<'a> {
    pub store: &'a Store,
    pub tenant: &'a TenantConfig,
    /// The round planned: the users it returned are decided.
    pub round: Round,
    pub scoped: bool,
    pub now: DateTime<Utc>,
}

/// What the first pass found over the whole tenant.
#[derive(Debug, Default)]
pub struct Survey {
    /// The run that decides only the users it chose; `None`: everyone.
    pub chosen: Option<Uuid>,
    pub conflicts: Vec<Conflict>,
    losers: BTreeMap<String, Vec<Problem>>,
    /// Deletions due in this run, before the guard.
    pub deletions: u64,
    /// Users with a PBX account.
    pub synced: u64,
    /// The deletions are more than the tenant's guard allows.
    pub guard_trips: bool,
}

/// What [`Planner::store_plan`] stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoredPlan {
    /// Users decided.
    pub users: u64,
    pub changes: u64,
    /// Due deletions the guard held back.
    pub held: u64,
}

/// A user and its verdict.
pub struct Planned {
    pub row: ReconcileRow,
    pub user: PlannedUser,
}

impl Planner<'_> {
    pub fn context(&self) -> PlanContext<'_> {
        PlanContext {
            tenant: self.tenant,
            scoped: self.scoped,
            now: self.now,
        }
    }

    /// What the plan depends on besides the stored users: the tenant file
    /// as planned and the planner's version. Only its digest is stored.
    pub fn basis(&self) -> anyhow::Result<String> {
        Ok(format!(
            "{} {}",
            env!("CARGO_PKG_VERSION"),
            serde_json::to_string(self.tenant)?
        ))
    }

    /// The first pass of run `run_id`: over everyone when `everyone` (a full
    /// round, a relisted membership) or when the tenant's last plan had
    /// another basis or decided everyone too long ago; otherwise over the
    /// users the round returned and those not settled.
    pub async fn survey_run(&self, run_id: Uuid, everyone: bool) -> anyhow::Result<Survey> {
        let last = self.store.last_plan(&self.tenant.id, &self.basis()?).await?;
        let current =
            last.is_some_and(|last| last.same_basis && self.now - last.full_planned_at < FULL_PLAN_EVERY);
        if everyone || !current {
            return self.survey().await;
        }
        self.store
            .choose_plan_users(run_id, &self.tenant.id, self.round)
            .await?;
        self.survey_of(Some(run_id)).await
    }

    /// The first pass over everyone: conflicts and the deletion count.
    pub async fn survey(&self) -> anyhow::Result<Survey> {
        self.survey_of(None).await
    }

    /// The first pass over the users run `chosen` decides (everyone when `None`).
    ///
    /// Each page is mapped in a task of its own while the next page is read:
    /// in turn, the database and the differ each waited for the other.
    async fn survey_of(&self, chosen: Option<Uuid>) -> anyhow::Result<Survey> {
        let mut pass = SurveyPass::start(self, chosen).await?;
        let tenant = Arc::new(self.tenant.clone());
        let mut rows = pass
            .claims
            .reconcile_rows(&self.tenant.id, chosen, "", PLAN_PAGE)
            .await?;
        while let Some(last) = rows.last() {
            let after = last.object_id.clone();
            let (scoped, now) = (self.scoped, self.now);
            let tenant = Arc::clone(&tenant);
            let mapping = tokio::spawn(async move {
                let context = PlanContext {
                    tenant: &tenant,
                    scoped,
                    now,
                };
                survey_page(&rows, &context)
            });
            let next = pass
                .claims
                .reconcile_rows(&self.tenant.id, chosen, &after, PLAN_PAGE)
                .await;
            // Awaited whatever the read gave, so no mapping outlives the pass.
            let page = mapping.await.context("mapping a page of the survey")?;
            rows = next?;
            pass.add_page(page).await?;
        }
        pass.finish().await
    }

    /// A page of verdicts after `after` (by object id); empty at the end.
    /// `hold` is why due deletions are held, when they are.
    pub async fn plan_page(
        &self,
        survey: &Survey,
        hold: Option<&str>,
        after: &str,
    ) -> anyhow::Result<Vec<Planned>> {
        let context = self.context();
        let overrides = Overrides {
            losers: Some(&survey.losers),
            hold,
        };
        let rows = self.page(survey.chosen, after).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let user = plan_user(&row, &context, &overrides);
                Planned { row, user }
            })
            .collect())
    }

    /// The second pass of run `run_id`: decides the users of `survey` page by
    /// page and stores each page's verdicts with its changes numbered into
    /// batches. `decided` hears each decision's label.
    ///
    /// Pages are stored while the next ones are read and decided, up to
    /// [`SAVES_AT_ONCE`] at a time, each in its own transaction: a page's
    /// changes are numbered on from the changes decided before it, which is
    /// known as soon as those pages are decided. Every save has ended when
    /// this returns, also on an error, so a plan started again after a
    /// failure never meets a save of the failed attempt still going on.
    pub async fn store_plan(
        &self,
        run_id: Uuid,
        survey: &Survey,
        hold: Option<&str>,
        mut decided: impl FnMut(&'static str),
    ) -> anyhow::Result<StoredPlan> {
        let mut stored = StoredPlan::default();
        let mut saves = FuturesUnordered::new();
        let outcome = async {
            let mut after = String::new();
            loop {
                let page = until_done(self.plan_page(survey, hold, &after), &mut saves).await?;
                let Some(last) = page.last() else { break };
                after = last.row.object_id.clone();
                let planned: Vec<_> = page.into_iter().map(|p| p.user).collect();
                for user in &planned {
                    let decision = decision_label(user);
                    stored.held += u64::from(decision == "held");
                    decided(decision);
                }
                stored.users += planned.len() as u64;
                // Changes decided so far: this page's are numbered on from there.
                let numbered = stored.changes;
                stored.changes += planned.iter().filter(|user| user.change.is_some()).count() as u64;
                while saves.len() >= SAVES_AT_ONCE {
                    saves.next().await.expect("saves are in flight")?;
                }
                saves.push(self.save_page(run_id, planned, numbered));
            }
            anyhow::Ok(())
        }
        .await;
        // On an error too: the saves in flight end before this returns.
        let mut failure = outcome.err();
        while let Some(saved) = saves.next().await {
            if let Err(err) = saved {
                failure.get_or_insert(err);
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(stored),
        }
    }

    async fn save_page(&self, run_id: Uuid, planned: Vec<PlannedUser>, numbered: u64) -> anyhow::Result<()> {
        let changes = self
            .store
            .save_plan(run_id, &self.tenant.id, &planned, numbered)
            .await?;
        debug_assert_eq!(
            changes,
            planned.iter().filter(|user| user.change.is_some()).count() as u64
        );
        Ok(())
    }

    /// The verdict on one user, with the tenant-wide facts of `survey`.
    pub fn plan_one(&self, survey: &Survey, hold: Option<&str>, row: &ReconcileRow) -> PlannedUser {
        let overrides = Overrides {
            losers: Some(&survey.losers),
            hold,
        };
        plan_user(row, &self.context(), &overrides)
    }

    async fn page(&self, chosen: Option<Uuid>, after: &str) -> anyhow::Result<Vec<ReconcileRow>> {
        self.store
            .reconcile_rows(&self.tenant.id, chosen, after, PLAN_PAGE)
            .await
    }
}

/// Awaits `work` while the saves in flight go on; the first save that
/// fails ends it with that save's error.
async fn until_done<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    saves: &mut FuturesUnordered<impl Future<Output = anyhow::Result<()>>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            Some(saved) = saves.next(), if !saves.is_empty() => saved?,
        }
    }
}

/// The first pass over rows from any source, page by page: the stored
/// directory (the differ, `usersync plan`) or the directory as read now (the
/// live preview). Claims on unique values go to the session's temporary table.
pub struct SurveyPass<'a> {
    context: PlanContext<'a>,
    tenant: &'a TenantConfig,
    pub claims: ClaimSession,
    survey: Survey,
}

impl<'a> SurveyPass<'a> {
    /// A pass over the users run `chosen` decides, or over everyone (`None`).
    pub async fn start(planner: &'a Planner<'a>, chosen: Option<Uuid>) -> anyhow::Result<SurveyPass<'a>> {
        Ok(SurveyPass {
            context: planner.context(),
            tenant: planner.tenant,
            claims: planner.store.claim_session().await?,
            survey: Survey {
                chosen,
                ..Survey::default()
            },
        })
    }

    /// One page of rows, in object id order.
    pub async fn add(&mut self, rows: &[ReconcileRow]) -> anyhow::Result<()> {
        let page = survey_page(rows, &self.context);
        self.add_page(page).await
    }

    /// One page's findings (see [`survey_page`]).
    async fn add_page(&mut self, page: SurveyedPage) -> anyhow::Result<()> {
        self.survey.synced += page.synced;
        self.survey.deletions += page.deletions;
        self.claims.add(&page.claims).await
    }

    /// The tenant-wide facts, once every row was added.
    pub async fn finish(self) -> anyhow::Result<Survey> {
        let mut survey = self.survey;
        let contested = self.claims.contested(&self.tenant.id, survey.chosen).await?;
        if let Some(run_id) = survey.chosen {
            // Everyone in a conflict is decided, whichever side they were on.
            let involved: Vec<&str> = contested.iter().map(|c| c.object_id.as_str()).collect();
            self.claims.choose(run_id, &involved).await?;
            // Everyone not decided is settled: no deletion of theirs is due.
            survey.synced = self.claims.synced_users(&self.tenant.id).await?;
        }
        self.claims.finish().await?;
        survey.conflicts = resolve_conflicts(&contested);
        survey.losers = losers(&survey.conflicts);
        survey.guard_trips = self.tenant.deletion_guard.trips(survey.deletions, survey.synced);
        Ok(survey)
    }
}

/// What the survey finds in one page of rows.
struct SurveyedPage {
    claims: Vec<Claim>,
    /// Users with a PBX account.
    synced: u64,
    /// Deletions the run would make.
    deletions: u64,
}

/// Maps one page of rows for the survey: their claims on unique values and
/// the deletions due among them.
fn survey_page(rows: &[ReconcileRow], context: &PlanContext<'_>) -> SurveyedPage {
    let mut page = SurveyedPage {
        claims: Vec::new(),
        synced: 0,
        deletions: 0,
    };
    for row in rows {
        let (scope, mapped) = mapped_fields(row, context);
        let applied = applied_of(row);
        page.synced += u64::from(applied.is_some());
        page.claims
            .extend(user::claims(row, mapped.as_ref(), applied.as_ref(), context));
        if context.writes() && scope != Scope::In {
            let decision = user::own_decision(row, scope, mapped.as_ref(), applied.as_ref(), context);
            page.deletions += u64::from(matches!(decision.action, Action::Delete { .. }));
        }
    }
    page
}

impl Survey {
    /// The plan decides everyone (not only the users it chose).
    pub fn decides_everyone(&self) -> bool {
        self.chosen.is_none()
    }

    /// Why deletions are held: the guard tripped and no approval covers it.
    pub fn hold_reason(&self, tenant: &TenantConfig, approved: bool) -> Option<String> {
        (self.guard_trips && !approved).then(|| {
            tenant
                .deletion_guard
                .reason(&tenant.id, self.deletions, self.synced)
        })
    }

    /// Run-level lines for the report: each conflict, and a hold.
    pub fn warnings(&self, hold: Option<&str>) -> Vec<String> {
        let mut lines: Vec<String> = self.conflicts.iter().map(Conflict::warning).collect();
        if let Some(reason) = hold {
            lines.push(format!("deletions held: {reason}"));
        }
        lines
    }
}
