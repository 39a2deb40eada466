//! What to do with one directory user, given what the directory wants, what
//! the PBX was last told and the tenant's policy. Deterministic: the clock is
//! an input.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::tenant::Mode;
use crate::user::{diff, FieldPatch, SyncedFields};

/// Why a directory user is (or is not) in sync scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    In,
    /// Deleted from the directory.
    Removed,
    /// The account is disabled.
    Disabled,
    /// Not a member of any filter group.
    NotInGroups,
}

/// Everything known about one user when deciding.
#[derive(Debug, Clone)]
pub struct UserView<'a> {
    pub scope: Scope,
    /// The mapped fields, or why they could not be mapped; `None` when out of scope.
    pub desired: Option<&'a Result<SyncedFields, Vec<Problem>>>,
    /// What the PBX was last told.
    pub applied: Option<&'a Applied>,
    pub pending_delete_at: Option<DateTime<Utc>>,
}

/// A PBX user that usersync created or adopted, as last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub pbx_id: String,
    pub fields: SyncedFields,
}

/// The tenant settings that shape a decision, and the time to decide at.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub delete_after_days: u32,
    pub mapping_complete: bool,
    pub now: DateTime<Utc>,
}

/// The change to make in the PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    None,
    Create { fields: SyncedFields },
    Update { pbx_id: String, patch: FieldPatch },
    Delete { pbx_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// The pending-deletion time to store from now on.
    pub pending_delete_at: Option<DateTime<Utc>>,
    /// Why the user is skipped; empty unless it is.
    pub skipped: Vec<Problem>,
    /// Why a due deletion was held back by the mass-deletion guard.
    pub held: Option<Problem>,
}

impl Decision {
    fn nothing(pending_delete_at: Option<DateTime<Utc>>) -> Self {
        Decision {
            action: Action::None,
            pending_delete_at,
            skipped: Vec::new(),
            held: None,
        }
    }

    /// The same decision with a deletion held back: nothing happens, the
    /// grace period stays as it was, and the reason is kept for the operator.
    pub fn hold_deletion(self, reason: &str) -> Decision {
        if !matches!(self.action, Action::Delete { .. }) {
            return self;
        }
        Decision {
            action: Action::None,
            held: Some(Problem::new(
                "deletion",
                format!("held by the mass-deletion guard: {reason}"),
            )),
            ..self
        }
    }
}

/// Decides what to do with one user.
pub fn decide(view: &UserView, policy: &Policy) -> Decision {
    // Paused, or unable to build users: change nothing, not even the clock
    // of a pending deletion.
    if policy.mode == Mode::Pause || !policy.mapping_complete {
        return Decision::nothing(view.pending_delete_at);
    }
    match view.scope {
        Scope::In => decide_in_scope(view, policy),
        Scope::Removed | Scope::Disabled | Scope::NotInGroups => decide_out_of_scope(view, policy),
    }
}

/// A user in scope is never pending deletion: it came back in time.
fn decide_in_scope(view: &UserView, policy: &Policy) -> Decision {
    let desired = match view.desired {
        None => return Decision::nothing(None),
        Some(Err(problems)) => {
            return Decision {
                skipped: problems.clone(),
                ..Decision::nothing(None)
            }
        }
        Some(Ok(desired)) => desired,
    };
    let action = match view.applied {
        None => Action::Create {
            fields: desired.clone(),
        },
        Some(applied) if policy.mode == Mode::UserSync => {
            let patch = diff(&applied.fields, desired);
            if patch.is_empty() {
                Action::None
            } else {
                Action::Update {
                    pbx_id: applied.pbx_id.clone(),
                    patch,
                }
            }
        }
        Some(_) => Action::None,
    };
    Decision {
        action,
        ..Decision::nothing(None)
    }
}

fn decide_out_of_scope(view: &UserView, policy: &Policy) -> Decision {
    let Some(applied) = view.applied else {
        return Decision::nothing(None);
    };
    // Users already synced are never touched in new-users-only mode, so no
    // grace period runs; one starts afresh if the mode goes back.
    if policy.mode != Mode::UserSync {
        return Decision::nothing(None);
    }
    let delete_at = view.pending_delete_at.unwrap_or_else(|| grace_period_end(policy));
    let action = if delete_at <= policy.now {
        Action::Delete {
            pbx_id: applied.pbx_id.clone(),
        }
    } else {
        Action::None
    };
    Decision {
        action,
        ..Decision::nothing(Some(delete_at))
    }
}

/// `now + delete_after_days`, saturating at the latest representable time.
fn grace_period_end(policy: &Policy) -> DateTime<Utc> {
    TimeDelta::try_days(i64::from(policy.delete_after_days))
        .and_then(|grace| policy.now.checked_add_signed(grace))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T02:00:00Z")
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            mode,
            delete_after_days: 7,
            mapping_complete: true,
            now: now(),
        }
    }

    fn fields(first_name: &str) -> SyncedFields {
        SyncedFields {
            alias: "asa.oberg".into(),
            first_name: first_name.into(),
            surname: "Öberg".into(),
            pstn_fixed: "46812345678".into(),
            email: None,
            attributes: BTreeMap::new(),
        }
    }

    fn applied(first_name: &str) -> Applied {
        Applied {
            pbx_id: "pbx-1".into(),
            fields: fields(first_name),
        }
    }

    fn in_scope<'a>(
        desired: &'a Result<SyncedFields, Vec<Problem>>,
        applied: Option<&'a Applied>,
    ) -> UserView<'a> {
        UserView {
            scope: Scope::In,
            desired: Some(desired),
            applied,
            pending_delete_at: None,
        }
    }

    fn gone(applied: Option<&Applied>, pending: Option<DateTime<Utc>>) -> UserView<'_> {
        UserView {
            scope: Scope::Removed,
            desired: None,
            applied,
            pending_delete_at: pending,
        }
    }

    fn days(n: i64) -> TimeDelta {
        TimeDelta::days(n)
    }

    #[test]
    fn pause_changes_nothing_and_keeps_the_pending_time() {
        let desired = Ok(fields("Åsa"));
        let pending = Some(now() - days(1));
        let mut view = in_scope(&desired, None);
        view.pending_delete_at = pending;
        let decision = decide(&view, &policy(Mode::Pause));
        assert_eq!(decision, Decision::nothing(pending));
        let old = applied("Åsa");
        let decision = decide(&gone(Some(&old), pending), &policy(Mode::Pause));
        assert_eq!(decision, Decision::nothing(pending));
    }

    #[test]
    fn incomplete_mapping_creates_and_deletes_nobody() {
        let mut incomplete = policy(Mode::UserSync);
        incomplete.mapping_complete = false;
        let desired = Ok(fields("Åsa"));
        assert_eq!(
            decide(&in_scope(&desired, None), &incomplete),
            Decision::nothing(None)
        );
        let old = applied("Åsa");
        let overdue = Some(now() - days(30));
        assert_eq!(
            decide(&gone(Some(&old), overdue), &incomplete),
            Decision::nothing(overdue)
        );
    }

    #[test]
    fn a_new_user_is_created_in_both_active_modes() {
        let desired = Ok(fields("Åsa"));
        for mode in [Mode::UserSync, Mode::NewUsersOnly] {
            let decision = decide(&in_scope(&desired, None), &policy(mode));
            assert_eq!(
                decision.action,
                Action::Create {
                    fields: fields("Åsa")
                },
                "{mode}"
            );
            assert!(decision.skipped.is_empty());
        }
    }

    #[test]
    fn a_changed_user_is_updated_with_the_minimal_patch() {
        let desired = Ok(fields("Åsa-Lena"));
        let old = applied("Åsa");
        let decision = decide(&in_scope(&desired, Some(&old)), &policy(Mode::UserSync));
        let expected_patch = FieldPatch {
            first_name: Some("Åsa-Lena".into()),
            ..FieldPatch::default()
        };
        assert_eq!(
            decision.action,
            Action::Update {
                pbx_id: "pbx-1".into(),
                patch: expected_patch
            }
        );
    }

    #[test]
    fn new_users_only_leaves_a_synced_user_as_it_is() {
        let desired = Ok(fields("Åsa-Lena"));
        let old = applied("Åsa");
        let decision = decide(&in_scope(&desired, Some(&old)), &policy(Mode::NewUsersOnly));
        assert_eq!(decision.action, Action::None);
    }

    #[test]
    fn an_unchanged_user_needs_nothing() {
        let desired = Ok(fields("Åsa"));
        let old = applied("Åsa");
        assert_eq!(
            decide(&in_scope(&desired, Some(&old)), &policy(Mode::UserSync)),
            Decision::nothing(None)
        );
    }

    #[test]
    fn coming_back_in_scope_clears_the_pending_deletion() {
        let desired = Ok(fields("Åsa"));
        let old = applied("Åsa");
        let mut view = in_scope(&desired, Some(&old));
        view.pending_delete_at = Some(now() + days(3));
        assert_eq!(decide(&view, &policy(Mode::UserSync)).pending_delete_at, None);
    }

    #[test]
    fn an_invalid_user_is_skipped_and_left_as_it_is() {
        let problems = vec![Problem::new("pstn_fixed", "businessPhones[0] is missing")];
        let desired = Err(problems.clone());
        let old = applied("Åsa");
        for applied in [None, Some(&old)] {
            let decision = decide(&in_scope(&desired, applied), &policy(Mode::UserSync));
            assert_eq!(decision.action, Action::None);
            assert_eq!(decision.skipped, problems);
        }
    }

    #[test]
    fn leaving_scope_starts_the_grace_period() {
        let old = applied("Åsa");
        for scope in [Scope::Removed, Scope::Disabled, Scope::NotInGroups] {
            let mut view = gone(Some(&old), None);
            view.scope = scope;
            let decision = decide(&view, &policy(Mode::UserSync));
            assert_eq!(decision.action, Action::None, "{scope:?}");
            assert_eq!(decision.pending_delete_at, Some(now() + days(7)), "{scope:?}");
        }
    }

    #[test]
    fn a_running_grace_period_is_kept_until_due() {
        let old = applied("Åsa");
        let pending = Some(now() + days(2));
        let decision = decide(&gone(Some(&old), pending), &policy(Mode::UserSync));
        assert_eq!(decision, Decision::nothing(pending));
    }

    #[test]
    fn a_due_user_is_deleted() {
        let old = applied("Åsa");
        for pending in [now(), now() - days(1)] {
            let decision = decide(&gone(Some(&old), Some(pending)), &policy(Mode::UserSync));
            assert_eq!(
                decision.action,
                Action::Delete {
                    pbx_id: "pbx-1".into()
                }
            );
            assert_eq!(decision.pending_delete_at, Some(pending));
        }
    }

    #[test]
    fn zero_grace_days_deletes_in_the_run_that_finds_it_gone() {
        let old = applied("Åsa");
        let mut immediate = policy(Mode::UserSync);
        immediate.delete_after_days = 0;
        let decision = decide(&gone(Some(&old), None), &immediate);
        assert_eq!(
            decision.action,
            Action::Delete {
                pbx_id: "pbx-1".into()
            }
        );
        assert_eq!(decision.pending_delete_at, Some(now()));
    }

    #[test]
    fn new_users_only_never_deletes() {
        let old = applied("Åsa");
        let overdue = Some(now() - days(1));
        let decision = decide(&gone(Some(&old), overdue), &policy(Mode::NewUsersOnly));
        assert_eq!(decision, Decision::nothing(None));
    }

    #[test]
    fn out_of_scope_and_never_synced_needs_nothing() {
        let decision = decide(&gone(None, Some(now())), &policy(Mode::UserSync));
        assert_eq!(decision, Decision::nothing(None));
    }

    #[test]
    fn a_huge_grace_period_saturates_instead_of_overflowing() {
        let old = applied("Åsa");
        let mut forever = policy(Mode::UserSync);
        forever.delete_after_days = u32::MAX;
        let decision = decide(&gone(Some(&old), None), &forever);
        assert_eq!(decision.action, Action::None);
        assert_eq!(decision.pending_delete_at, Some(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn a_held_deletion_does_nothing_and_keeps_the_due_time() {
        let old = applied("Åsa");
        let due = Some(now() - days(1));
        let decision = decide(&gone(Some(&old), due), &policy(Mode::UserSync)).hold_deletion("too many");
        assert_eq!(decision.action, Action::None);
        assert_eq!(decision.pending_delete_at, due);
        let held = decision.held.expect("a reason");
        assert_eq!(held.field, "deletion");
        assert!(held.message.contains("mass-deletion guard: too many"), "{held}");
    }

    #[test]
    fn holding_leaves_other_actions_alone() {
        let desired = Ok(fields("Åsa"));
        let decision = decide(&in_scope(&desired, None), &policy(Mode::UserSync));
        assert_eq!(decision.clone().hold_deletion("x"), decision);
    }

    #[test]
    fn actions_serialise_with_an_op_tag() {
        let delete = Action::Delete {
            pbx_id: "pbx-1".into(),
        };
        assert_eq!(
            serde_json::to_value(&delete).expect("serialise"),
            serde_json::json!({"op": "delete", "pbx_id": "pbx-1"})
        );
        assert_eq!(
            serde_json::to_value(Action::None).expect("serialise"),
            serde_json::json!({"op": "none"})
        );
    }

    fn arb_fields() -> impl Strategy<Value = SyncedFields> {
        (
            "[ab]{1,2}",
            "[ab]{1,2}",
            proptest::option::of("[ab]{1,2}"),
            proptest::collection::btree_map("[ab]", "[ab]", 0..3),
        )
            .prop_map(|(alias, first_name, email, attributes)| SyncedFields {
                alias,
                first_name,
                surname: "S".into(),
                pstn_fixed: "46812345678".into(),
                email,
                attributes,
            })
    }

    fn arb_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Pause), Just(Mode::UserSync), Just(Mode::NewUsersOnly)]
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            Just(Scope::In),
            Just(Scope::Removed),
            Just(Scope::Disabled),
            Just(Scope::NotInGroups)
        ]
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (arb_mode(), 0u32..30, any::<bool>(), -1000i64..1000).prop_map(
            |(mode, delete_after_days, mapping_complete, offset)| Policy {
                mode,
                delete_after_days,
                mapping_complete,
                now: now() + TimeDelta::hours(offset),
            },
        )
    }

    proptest! {
        #[test]
        fn decide_is_deterministic(
            scope in arb_scope(),
            desired in arb_fields(),
            applied_fields in proptest::option::of(arb_fields()),
            pending_hours in proptest::option::of(-500i64..500),
            policy in arb_policy(),
        ) {
            let desired = Ok(desired);
            let applied = applied_fields.map(|fields| Applied { pbx_id: "p".into(), fields });
            let view = UserView {
                scope,
                desired: (scope == Scope::In).then_some(&desired),
                applied: applied.as_ref(),
                pending_delete_at: pending_hours.map(|h| now() + TimeDelta::hours(h)),
            };
            prop_assert_eq!(decide(&view, &policy), decide(&view.clone(), &policy.clone()));
        }

        #[test]
        fn carrying_out_a_create_or_update_settles_the_user(
            desired in arb_fields(),
            applied_fields in proptest::option::of(arb_fields()),
            policy in arb_policy(),
        ) {
            let desired = Ok(desired);
            let applied = applied_fields.map(|fields| Applied { pbx_id: "p".into(), fields });
            let view = in_scope(&desired, applied.as_ref());
            let first = decide(&view, &policy);
            let after = match (first.action, &applied, &desired) {
                (Action::Create { fields }, _, _) => Applied { pbx_id: "new".into(), fields },
                (Action::Update { pbx_id, patch }, Some(before), _) => {
                    let mut fields = before.fields.clone();
                    patch.apply_to(&mut fields);
                    Applied { pbx_id, fields }
                }
                (Action::None, _, _) => return Ok(()),
                (other, _, _) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            };
            let second = decide(&in_scope(&desired, Some(&after)), &policy);
            prop_assert_eq!(second.action, Action::None);
        }
    }
}
