//! The verdict on one user: the pure core decides, this only gathers its inputs
//! from a stored row and shapes its answer for storage.

use chrono::{DateTime, Utc};
use serde_json::Value;
use usersync_contract::Change;
use usersync_core::{decide, map_user, Action, Applied, Mode, Policy, Scope, TenantConfig, UserView};
use usersync_store::{PlannedUser, ReconcileRow};

pub struct PlanContext<'a> {
    pub tenant: &'a TenantConfig,
    /// Only filter-group members are in scope.
    pub scoped: bool,
    pub now: DateTime<Utc>,
}

impl PlanContext<'_> {
    fn policy(&self) -> Policy {
        Policy {
            mode: self.tenant.mode,
            delete_after_days: self.tenant.delete_after_days,
            mapping_complete: self.tenant.field_mapping.is_complete(),
            now: self.now,
        }
    }
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

pub fn plan_user(row: &ReconcileRow, context: &PlanContext) -> PlannedUser {
    let scope = scope_of(row, context.scoped);
    let mapped = matches!(scope, Scope::In).then(|| map_user(&row.source, context.tenant));
    let sync = row.sync.as_ref();
    let applied = sync.and_then(|s| match (&s.pbx_id, &s.applied) {
        (Some(pbx_id), Some(fields)) => Some(Applied {
            pbx_id: pbx_id.clone(),
            fields: fields.clone(),
        }),
        _ => None,
    });
    let previous_pending = sync.and_then(|s| s.pending_delete_at);
    let decision = decide(
        &UserView {
            scope,
            desired: mapped.as_ref(),
            applied: applied.as_ref(),
            pending_delete_at: previous_pending,
        },
        &context.policy(),
    );

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
        &decision.skipped,
        applied.is_some(),
        decision.pending_delete_at,
        &decision.action,
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
        pending_delete_at: decision.pending_delete_at,
        change,
    }
}

fn state_label(
    scope: Scope,
    skipped: &[usersync_core::Problem],
    has_pbx_user: bool,
    pending_delete_at: Option<DateTime<Utc>>,
    action: &Action,
) -> &'static str {
    match (scope, action) {
        (_, Action::Delete { .. }) => "pending_deletion",
        (Scope::In, _) if !skipped.is_empty() => "skipped",
        (Scope::In, _) => "active",
        _ if pending_delete_at.is_some() => "pending_deletion",
        _ if has_pbx_user => "active",
        _ => "out_of_scope",
    }
}
