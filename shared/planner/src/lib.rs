//! Planning one tenant's run from stored data: the directory users recorded by
//! the differ and each user's desired and applied state. The pure core makes
//! every decision; this crate gathers its inputs page by page.
//!
//! Two passes, both in pages so memory does not grow with the tenant:
//! 1. the survey: every user's claims on unique values (alias, fixed number)
//!    go to a temporary table, and the deletions the run would make are
//!    counted; from that come the conflicts and the mass-deletion guard;
//! 2. the plan: each user decided with those tenant-wide facts.
//!
//! The differ stores the plan; `usersync plan` and `usersync explain` print it
//! and change nothing.

mod lines;
mod user;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use usersync_core::conflict::losers;
use usersync_core::{claims_of, resolve_conflicts, Action, Conflict, Mode, Problem, Scope, TenantConfig};
use usersync_store::{ClaimSession, PlannedUser, ReconcileRow, Round, Store};

pub use lines::{field_changes, fields_list, plan_line, FieldChange, PlanLine};
pub use user::{applied_of, decision_label, mapped_fields, plan_user, scope_of, Overrides, PlanContext};

/// Users read per page.
pub const PLAN_PAGE: i64 = 500;

/// One tenant's plan in the making.
pub struct Planner<'a> {
    pub store: &'a Store,
    pub tenant: &'a TenantConfig,
    /// The round whose filter-group members are in scope.
    pub round: Round,
    pub scoped: bool,
    pub now: DateTime<Utc>,
}

/// What the first pass found over the whole tenant.
#[derive(Debug, Default)]
pub struct Survey {
    pub conflicts: Vec<Conflict>,
    losers: BTreeMap<String, Vec<Problem>>,
    /// Deletions due in this run, before the guard.
    pub deletions: u64,
    /// Users with a PBX account.
    pub synced: u64,
    /// The deletions are more than the tenant's guard allows.
    pub guard_trips: bool,
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

    /// The first pass: conflicts and the deletion count.
    pub async fn survey(&self) -> anyhow::Result<Survey> {
        let mut pass = SurveyPass::start(self).await?;
        let mut after = String::new();
        loop {
            let rows = pass
                .claims
                .reconcile_rows(&self.tenant.id, self.round, &after, PLAN_PAGE)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.object_id.clone();
            pass.add(&rows).await?;
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
        let rows = self.page(after).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let user = plan_user(&row, &context, &overrides);
                Planned { row, user }
            })
            .collect())
    }

    /// The verdict on one user, with the tenant-wide facts of `survey`.
    pub fn plan_one(&self, survey: &Survey, hold: Option<&str>, row: &ReconcileRow) -> PlannedUser {
        let overrides = Overrides {
            losers: Some(&survey.losers),
            hold,
        };
        plan_user(row, &self.context(), &overrides)
    }

    async fn page(&self, after: &str) -> anyhow::Result<Vec<ReconcileRow>> {
        self.store
            .reconcile_rows(&self.tenant.id, self.round, after, PLAN_PAGE)
            .await
    }
}

/// The first pass over rows from any source, page by page: the stored
/// directory (the differ, `usersync plan`) or the directory as read now (the
/// live preview). Claims on unique values go to the session's temporary table.
pub struct SurveyPass<'a> {
    context: PlanContext<'a>,
    tenant: &'a TenantConfig,
    /// Paused or unable to build users: nothing is written, nothing conflicts.
    writes: bool,
    pub claims: ClaimSession,
    survey: Survey,
}

impl<'a> SurveyPass<'a> {
    pub async fn start(planner: &'a Planner<'a>) -> anyhow::Result<SurveyPass<'a>> {
        let tenant = planner.tenant;
        Ok(SurveyPass {
            context: planner.context(),
            tenant,
            writes: tenant.mode != Mode::Pause && tenant.field_mapping.is_complete(),
            claims: planner.store.claim_session().await?,
            survey: Survey::default(),
        })
    }

    /// One page of rows, in object id order.
    pub async fn add(&mut self, rows: &[ReconcileRow]) -> anyhow::Result<()> {
        let context = &self.context;
        let mut page_claims = Vec::new();
        for row in rows {
            let (scope, mapped) = mapped_fields(row, context);
            let applied = applied_of(row);
            self.survey.synced += u64::from(applied.is_some());
            if !self.writes {
                continue;
            }
            let desired = match &mapped {
                Some(Ok(fields)) => Some(fields),
                _ => None,
            };
            page_claims.extend(claims_of(
                &row.object_id,
                desired,
                applied.as_ref().map(|a| &a.fields),
            ));
            if scope != Scope::In {
                let decision = user::own_decision(row, scope, mapped.as_ref(), applied.as_ref(), context);
                self.survey.deletions += u64::from(matches!(decision.action, Action::Delete { .. }));
            }
        }
        self.claims.add(&page_claims).await
    }

    /// The tenant-wide facts, once every row was added.
    pub async fn finish(self) -> anyhow::Result<Survey> {
        let mut survey = self.survey;
        let contested = self.claims.contested().await?;
        self.claims.finish().await?;
        survey.conflicts = resolve_conflicts(&contested);
        survey.losers = losers(&survey.conflicts);
        survey.guard_trips = self.tenant.deletion_guard.trips(survey.deletions, survey.synced);
        Ok(survey)
    }
}

impl Survey {
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
