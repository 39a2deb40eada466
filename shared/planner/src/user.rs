//! The verdict on one user: the pure core decides, this only gathers its inputs
//! from a stored row and shapes its answer for storage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use usersync_contract::Change;
use usersync_core::{
    claims_of, decide, map_user, Action, Applied, Claim, Decision, Mode, Policy, Problem, Scope,
    SyncedFields, TenantConfig, UserView,
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

    /// Users are written to the PBX: not paused, and the mapping can build them.
    /// Otherwise nothing is written and nothing conflicts.
    pub fn writes(&self) -> bool {
        self.tenant.mode != Mode::Pause && self.tenant.field_mapping.is_complete()
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

/// The user's claims on unique values: what it wants (when its mapping
/// succeeds) and what it holds in the PBX.
pub fn claims(
    row: &ReconcileRow,
    mapped: Option<&Result<SyncedFields, Vec<Problem>>>,
    applied: Option<&Applied>,
    context: &PlanContext,
) -> Vec<Claim> {
    if !context.writes() {
        return Vec::new();
    }
    let desired = match mapped {
        Some(Ok(fields)) => Some(fields),
        _ => None,
    };
    claims_of(&row.object_id, desired, applied.map(|a| &a.fields))
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
    let sync = row.sync.as_ref();
    let applied = applied_of(row);
    let claims = claims(row, mapped.as_ref(), applied.as_ref(), context);
    // A user who lost a conflict is skipped like an invalid one, so it
    // overwrites nobody.
    if let (Some(Ok(_)), Some(lost)) = (&mapped, overrides.losers.and_then(|l| l.get(&row.object_id))) {
        mapped = Some(Err(lost.clone()));
    }
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
    // Skips, holds and pending deletions are decided again by every run (a
    // grace period runs out by time alone); a change settles once applied.
    let settled_version =
        if !skipped.is_empty() || decision.held.is_some() || decision.pending_delete_at.is_some() {
            None
        } else {
            Some(change.as_ref().map_or(0, |c| c.desired_version))
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
        settled_version,
        claims,
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

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use serde_json::json;
    use usersync_core::parse_tenant_file;
    use usersync_store::SyncRow;

    use super::*;

    fn tenant(mode: &str) -> TenantConfig {
        let file = json!({
            "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": mode, "delete_after_days": 7,
            "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s", "user_filter": {"memberOf": ["Telephony"]}},
            "pbx_company_id": "acme",
            "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"}
        });
        parse_tenant_file(&file.to_string()).expect("tenant")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-10T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn row(sync: Option<SyncRow>) -> ReconcileRow {
        ReconcileRow {
            object_id: "u1".into(),
            source: json!({"mailNickname": "Anna.Berg", "givenName": "Anna", "surname": "Berg",
                           "businessPhones": ["08-123 456 78"], "accountEnabled": true}),
            removed: false,
            member: true,
            sync,
        }
    }

    fn synced(state: &str, in_pbx: bool) -> SyncRow {
        let fields = SyncedFields {
            alias: "anna.berg".into(),
            first_name: "Anna".into(),
            surname: "Berg".into(),
            pstn_fixed: "46812345678".into(),
            email: None,
            attributes: Default::default(),
        };
        SyncRow {
            state: state.into(),
            desired: Some(fields.clone()),
            desired_version: 3,
            pbx_id: in_pbx.then(|| "pbx-1".into()),
            applied: in_pbx.then_some(fields),
            applied_version: 3,
            pending_delete_at: None,
        }
    }

    fn plan(row: &ReconcileRow, mode: &str, overrides: &Overrides) -> PlannedUser {
        let tenant = tenant(mode);
        let context = PlanContext {
            tenant: &tenant,
            scoped: true,
            now: now(),
        };
        plan_user(row, &context, overrides)
    }

    #[test]
    fn a_new_member_is_created_with_version_one() {
        let planned = plan(&row(None), "user_sync", &Overrides::default());
        assert_eq!(decision_label(&planned), "create");
        assert_eq!(planned.state, "active");
        assert_eq!(planned.desired_version, 1);
    }

    #[test]
    fn an_unchanged_user_keeps_its_version_and_needs_nothing() {
        let planned = plan(
            &row(Some(synced("active", true))),
            "user_sync",
            &Overrides::default(),
        );
        assert_eq!(decision_label(&planned), "none");
        assert_eq!(planned.desired_version, 3);
    }

    #[test]
    fn a_paused_tenant_shows_members_as_not_synced_and_reports_no_skips() {
        let mut invalid = row(None);
        invalid.source["businessPhones"] = json!(["call me"]);
        let planned = plan(&invalid, "pause", &Overrides::default());
        assert_eq!(planned.state, "not_synced");
        assert!(planned.problems.is_empty());
        assert!(planned.change.is_none());
    }

    #[test]
    fn a_conflict_loser_is_skipped_and_keeps_its_last_desired_state() {
        let losers = BTreeMap::from([(
            "u1".to_owned(),
            vec![Problem::new("alias", "\"anna.berg\" is also claimed by user u0")],
        )]);
        let overrides = Overrides {
            losers: Some(&losers),
            hold: None,
        };
        let mut renamed = row(Some(synced("active", true)));
        renamed.source["surname"] = json!("Lind");
        let planned = plan(&renamed, "user_sync", &overrides);
        assert_eq!(decision_label(&planned), "skip");
        assert_eq!(planned.state, "skipped");
        assert_eq!(planned.desired.as_ref().map(|d| d.surname.as_str()), Some("Berg"));
        assert_eq!(planned.desired_version, 3);
    }

    #[test]
    fn a_user_leaving_the_groups_is_pending_then_held_or_deleted() {
        let mut gone = row(Some(synced("active", true)));
        gone.member = false;
        let planned = plan(&gone, "user_sync", &Overrides::default());
        assert_eq!(planned.state, "pending_deletion");
        assert_eq!(planned.pending_delete_at, Some(now() + TimeDelta::days(7)));

        let mut due = synced("pending_deletion", true);
        due.pending_delete_at = Some(now() - TimeDelta::hours(1));
        gone.sync = Some(due);
        let planned = plan(&gone, "user_sync", &Overrides::default());
        assert_eq!(decision_label(&planned), "delete");
        let held = plan(
            &gone,
            "user_sync",
            &Overrides {
                losers: None,
                hold: Some("too many"),
            },
        );
        assert_eq!(decision_label(&held), "held");
        assert_eq!(held.state, "held");
        assert_eq!(held.pending_delete_at, planned.pending_delete_at);
        assert!(held.problems.is_empty(), "a hold is not a skip");
    }

    #[test]
    fn a_deleted_user_stays_deleted_and_a_disabled_one_is_out_of_scope() {
        let mut deleted = row(Some(synced("deleted", false)));
        deleted.removed = true;
        assert_eq!(
            plan(&deleted, "user_sync", &Overrides::default()).state,
            "deleted"
        );
        let mut disabled = row(None);
        disabled.source["accountEnabled"] = json!(false);
        assert_eq!(scope_of(&disabled, true), Scope::Disabled);
        assert_eq!(
            plan(&disabled, "user_sync", &Overrides::default()).state,
            "out_of_scope"
        );
    }
}
