//! The verdict on one user: the pure core decides, this only gathers its inputs
//! from a stored row and shapes its answer for storage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use usersync_contract::Change;
use usersync_core::{
    decide, map_user, Action, Applied, Decision, Mode, Policy, Problem, Scope, SyncedFields, TenantConfig,
    UserView,
};
use usersync_store::{PlannedUser, ReconcileRow};

/// What every user of one plan is decided against.
pub struct PlanContext<'a> {
    pub tenant: &'a TenantConfig,
    /// Only filter-group members are in scope.
    pub scoped: bool,
    pub now: DateTime<Utc>,
}

impl PlanContext<'_> {
    pub fn policy(&self) -> Policy {
        Policy {
            mode: self.tenant.mode,
            delete_after_days: self.tenant.delete_after_days,
            mapping_complete: self.tenant.field_mapping.is_complete(),
            now: self.now,
        }
    }
}

/// Tenant-wide facts that overrule a user's own verdict.
#[derive(Debug, Default)]
pub struct Overrides<'a> {
    /// Users who lost a conflict on a unique value, with why.
    pub losers: Option<&'a BTreeMap<String, Vec<Problem>>>,
    /// Why due deletions are held back by the mass-deletion guard.
    pub hold: Option<&'a str>,
}

pub fn scope_of(row: &ReconcileRow, scoped: bool) -> Scope {
    if row.removed {
        Scope::Removed
    } else if row.source.get("accountEnabled") == Some(&Value::Bool(false)) {
        Scope::Disabled
    } else if scoped && !row.member {
        Scope::NotInGroups
    } else {
        Scope::In
    }
}

/// The user's mapped fields, when in scope (`None` out of scope).
pub fn mapped_fields(
    row: &ReconcileRow,
    context: &PlanContext,
) -> (Scope, Option<Result<SyncedFields, Vec<Problem>>>) {
    let scope = scope_of(row, context.scoped);
    let mapped = matches!(scope, Scope::In).then(|| map_user(&row.source, context.tenant));
    (scope, mapped)
}

/// What the PBX was last told about the user, if it has a PBX user.
pub fn applied_of(row: &ReconcileRow) -> Option<Applied> {
    row.sync.as_ref().and_then(|s| match (&s.pbx_id, &s.applied) {
        (Some(pbx_id), Some(fields)) => Some(Applied {
            pbx_id: pbx_id.clone(),
            fields: fields.clone(),
        }),
        _ => None,
    })
}

/// The core's decision from the user's own data alone.
pub fn own_decision(
    row: &ReconcileRow,
    scope: Scope,
    mapped: Option<&Result<SyncedFields, Vec<Problem>>>,
    applied: Option<&Applied>,
    context: &PlanContext,
) -> Decision {
    decide(
        &UserView {
            scope,
            desired: mapped,
            applied,
            pending_delete_at: row.sync.as_ref().and_then(|s| s.pending_delete_at),
        },
        &context.policy(),
    )
}

pub fn plan_user(row: &ReconcileRow, context: &PlanContext, overrides: &Overrides) -> PlannedUser {
    let (scope, mut mapped) = mapped_fields(row, context);
    // A user who lost a conflict is skipped like an invalid one, so it
    // overwrites nobody.
    if let (Some(Ok(_)), Some(lost)) = (&mapped, overrides.losers.and_then(|l| l.get(&row.object_id))) {
        mapped = Some(Err(lost.clone()));
    }
    let sync = row.sync.as_ref();
    let applied = applied_of(row);
    let mut decision = own_decision(row, scope, mapped.as_ref(), applied.as_ref(), context);
    if let Some(reason) = overrides.hold {
        decision = decision.hold_deletion(reason);
    }

    let previous_desired = sync.and_then(|s| s.desired.clone());
    // An invalid user keeps its last good desired state: nothing in the PBX moves.
    let desired = match &mapped {
        Some(Ok(fields)) => Some(fields.clone()),
        Some(Err(_)) => previous_desired.clone(),
        None => None,
    };
    let previous_version = sync.map_or(0, |s| s.desired_version);
    let desired_version = if desired != previous_desired || sync.is_none() {
        previous_version + 1
    } else {
        previous_version
    };
    let state = state_label(
        scope,
        &decision,
        applied.is_some(),
        sync.map(|s| s.state.as_str()),
    );
    let change = (decision.action != Action::None).then(|| Change {
        object_id: row.object_id.clone(),
        desired_version,
        action: decision.action.clone(),
    });
    let skipped = if context.tenant.mode == Mode::Pause {
        Vec::new()
    } else {
        decision.skipped
    };
    PlannedUser {
        object_id: row.object_id.clone(),
        state,
        desired,
        desired_version,
        problems: skipped,
        held: decision.held,
        pending_delete_at: decision.pending_delete_at,
        change,
    }
}

/// The decision in one word, as counted by `usersync_user_decisions_total`
/// and shown by `usersync plan`: create, update, delete, skip, held or none.
pub fn decision_label(planned: &PlannedUser) -> &'static str {
    match planned.change.as_ref().map(|c| &c.action) {
        Some(Action::Create { .. }) => "create",
        Some(Action::Update { .. }) => "update",
        Some(Action::Delete { .. }) => "delete",
        Some(Action::None) | None if planned.held.is_some() => "held",
        Some(Action::None) | None if !planned.problems.is_empty() => "skip",
        Some(Action::None) | None => "none",
    }
}

/// The user's visible state: `active` (in the PBX, or being created),
/// `not_synced` (in scope, but the tenant is paused or its mapping incomplete),
/// `skipped`, `pending_deletion`, `held`, `deleted`, or `out_of_scope` (never synced).
fn state_label(
    scope: Scope,
    decision: &Decision,
    has_pbx_user: bool,
    previous: Option<&str>,
) -> &'static str {
    match (scope, &decision.action) {
        (_, Action::Delete { .. }) => "pending_deletion",
        _ if decision.held.is_some() => "held",
        (Scope::In, _) if !decision.skipped.is_empty() => "skipped",
        (Scope::In, Action::Create { .. }) => "active",
        (Scope::In, _) if has_pbx_user => "active",
        (Scope::In, _) => "not_synced",
        _ if decision.pending_delete_at.is_some() => "pending_deletion",
        _ if has_pbx_user => "active",
        _ if previous == Some("deleted") => "deleted",
        _ => "out_of_scope",
    }
}
