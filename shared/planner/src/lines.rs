//! A user's planned decision as the operator reads it: create with the fields
//! it sets, update field by field (before → after), delete, a deletion due on
//! a date, skip with the reasons. `usersync plan`, `usersync explain` and the
//! live preview all print these lines.

use chrono::{DateTime, Utc};
use serde::Serialize;
use usersync_core::{Action, FieldPatch, SyncedFields};
use usersync_store::{PlannedUser, ReconcileRow};

use crate::{applied_of, decision_label};

/// One field's change: before → after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One user's line in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlanLine {
    pub object_id: String,
    pub user: String,
    /// create, update, delete, skip, held, pending_deletion or none.
    pub decision: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// The best name for a user: the alias it has or would get, else its directory nickname.
fn user_name(row: &ReconcileRow, planned: &PlannedUser) -> String {
    planned
        .desired
        .as_ref()
        .map(|d| d.alias.clone())
        .or_else(|| applied_of(row).map(|a| a.fields.alias))
        .or_else(|| {
            ["mailNickname", "userPrincipalName"]
                .iter()
                .find_map(|key| row.source.get(*key)?.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| row.object_id.clone())
}

pub fn plan_line(row: &ReconcileRow, planned: &PlannedUser, now: DateTime<Utc>) -> PlanLine {
    let mut decision = decision_label(planned);
    if decision == "none" && planned.pending_delete_at.is_some_and(|at| at > now) {
        decision = "pending_deletion";
    }
    let applied = applied_of(row);
    let changes = match planned.change.as_ref().map(|c| &c.action) {
        Some(Action::Create { fields }) => created_fields(fields),
        Some(Action::Update { patch, .. }) => applied
            .as_ref()
            .map(|a| field_changes(&a.fields, patch))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let reasons = planned
        .problems
        .iter()
        .chain(planned.held.as_ref())
        .map(ToString::to_string)
        .collect();
    PlanLine {
        object_id: row.object_id.clone(),
        user: user_name(row, planned),
        decision,
        state: planned.state,
        changes,
        delete_at: planned.pending_delete_at,
        reasons,
    }
}

pub fn fields_list(fields: &SyncedFields) -> Vec<(String, Option<String>)> {
    let mut list = vec![
        ("alias".to_owned(), Some(fields.alias.clone())),
        ("first_name".to_owned(), Some(fields.first_name.clone())),
        ("surname".to_owned(), Some(fields.surname.clone())),
        ("pstn_fixed".to_owned(), Some(fields.pstn_fixed.clone())),
        ("email".to_owned(), fields.email.clone()),
    ];
    list.extend(
        fields
            .attributes
            .iter()
            .map(|(k, v)| (format!("attributes.{k}"), Some(v.clone()))),
    );
    list
}

fn created_fields(fields: &SyncedFields) -> Vec<FieldChange> {
    fields_list(fields)
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .map(|(field, after)| FieldChange {
            field,
            before: None,
            after,
        })
        .collect()
}

/// Field by field, what a patch changes on the applied fields.
pub fn field_changes(applied: &SyncedFields, patch: &FieldPatch) -> Vec<FieldChange> {
    let mut after = applied.clone();
    patch.apply_to(&mut after);
    let before = fields_list(applied);
    let after = fields_list(&after);
    let changed = patch.changed_fields();
    changed
        .into_iter()
        .map(|field| {
            let find = |list: &[(String, Option<String>)]| {
                list.iter()
                    .find(|(name, _)| *name == field)
                    .and_then(|(_, v)| v.clone())
            };
            FieldChange {
                before: find(&before),
                after: find(&after),
                field,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use usersync_core::diff;

    use super::*;

    fn fields(surname: &str, title: Option<&str>) -> SyncedFields {
        SyncedFields {
            alias: "anna".into(),
            first_name: "Anna".into(),
            surname: surname.into(),
            pstn_fixed: "46811111111".into(),
            email: Some("anna@acme.example".into()),
            attributes: title
                .map(|t| BTreeMap::from([("title".to_owned(), t.to_owned())]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn an_update_shows_each_field_before_and_after() {
        let applied = fields("Berg", Some("CEO"));
        let desired = fields("Lindqvist", None);
        let changes = field_changes(&applied, &diff(&applied, &desired));
        assert_eq!(
            changes,
            [
                FieldChange {
                    field: "surname".into(),
                    before: Some("Berg".into()),
                    after: Some("Lindqvist".into())
                },
                FieldChange {
                    field: "attributes.title".into(),
                    before: Some("CEO".into()),
                    after: None
                },
            ]
        );
    }

    #[test]
    fn a_creation_lists_the_fields_it_sets() {
        let names: Vec<String> = created_fields(&fields("Berg", None))
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(names, ["alias", "first_name", "surname", "pstn_fixed", "email"]);
    }
}
