//! The next run's decisions from stored data, through the same planner the
//! differ runs (`usersync plan`, `usersync explain`, the API's user view).
//! Nothing is written: claims go to a session's temporary table, approvals
//! are only peeked at.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use usersync_core::{Action, SyncedFields, TenantConfig};
use usersync_graph::GraphClient;
use usersync_planner::{applied_of, mapped_fields, Planner, Survey};
// The lines are the planner's: stored and live plans print the same.
pub use usersync_planner::{field_changes, fields_list, plan_line, FieldChange, PlanLine};
use usersync_preview::Progress;
use usersync_runtime::clock;
use usersync_store::{Round, Store};

use crate::{require_tenant, AdminError, AdminResult};

async fn planner_inputs(store: &Store, id: &str) -> AdminResult<(TenantConfig, Round, bool)> {
    let tenant = require_tenant(store, id).await?.config;
    // Scope is what the last run read; before any run nobody is a member yet.
    let round = store.latest_round(id).await?.unwrap_or(Round {
        run_id: uuid::Uuid::nil(),
        round_id: uuid::Uuid::nil(),
    });
    let scoped = !tenant.provider_settings.user_filter.syncs_everyone();
    Ok((tenant, round, scoped))
}

/// The hold the next run would apply: an open approval lifts it.
async fn next_hold(store: &Store, tenant: &TenantConfig, survey: &Survey) -> AdminResult<Option<String>> {
    let approved = store.has_open_deletion_approval(&tenant.id).await?;
    Ok(survey.hold_reason(tenant, approved))
}

/// The whole plan of the next run.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub tenant_id: String,
    pub mode: String,
    /// `stored`: from the directory data the last run stored; `live`: read from Graph now.
    pub source: &'static str,
    pub as_of: DateTime<Utc>,
    pub users: Vec<PlanLine>,
    /// Users per decision.
    pub summary: BTreeMap<&'static str, u64>,
    pub warnings: Vec<String>,
}

/// What the next run would do to each user; `all` keeps the users it would leave as they are.
pub async fn plan(store: &Store, id: &str, all: bool) -> AdminResult<PlanReport> {
    let (tenant, round, scoped) = planner_inputs(store, id).await?;
    let now = clock::now();
    let planner = Planner {
        store,
        tenant: &tenant,
        round,
        scoped,
        now,
    };
    let survey = planner.survey().await?;
    let hold = next_hold(store, &tenant, &survey).await?;
    let mut users = Vec::new();
    let mut summary: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = planner.plan_page(&survey, hold.as_deref(), &after).await?;
        let Some(last) = page.last() else { break };
        after = last.row.object_id.clone();
        for planned in page {
            let line = plan_line(&planned.row, &planned.user, now);
            *summary.entry(line.decision).or_default() += 1;
            if all || line.decision != "none" {
                users.push(line);
            }
        }
    }
    let warnings = survey.warnings(hold.as_deref());
    Ok(PlanReport {
        tenant_id: tenant.id.clone(),
        mode: tenant.mode.as_str().to_owned(),
        source: "stored",
        as_of: now,
        users,
        summary,
        warnings,
    })
}

/// The same plan from the directory as read from Graph now (see
/// `usersync-preview`); nothing is stored, no delta link moves. `tenant`
/// carries its secrets in clear.
pub async fn plan_live(
    store: &Store,
    graph: &GraphClient,
    tenant: &TenantConfig,
    all: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> AdminResult<PlanReport> {
    let live = usersync_preview::read_directory(graph, tenant, progress)
        .await
        .map_err(|err| {
            AdminError::Upstream(format!(
                "reading the directory of tenant {} ({}): {err}",
                tenant.id,
                err.code()
            ))
        })?;
    let mut users = Vec::new();
    let plan = usersync_preview::plan_live(store, tenant, &live, clock::now(), progress, &mut users).await?;
    users.retain(|line: &PlanLine| all || line.decision != "none");
    Ok(PlanReport {
        tenant_id: tenant.id.clone(),
        mode: tenant.mode.as_str().to_owned(),
        source: "live",
        as_of: plan.as_of,
        users,
        summary: plan.summary,
        warnings: plan.warnings,
    })
}

/// One mapped field's source: the path it reads and the value found there.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceValue {
    pub field: String,
    pub path: String,
    /// `null` when the user has no value there.
    pub value: Option<String>,
}

/// One user, explained: `json` is `usersync explain --json`'s document (and
/// the API's body); the rest is what the text form prints from.
#[derive(Debug)]
pub struct Explanation {
    pub json: Value,
    pub object_id: String,
    pub line: PlanLine,
    pub state: &'static str,
    pub scope: String,
    pub sources: Vec<SourceValue>,
    /// `None`: out of scope; `Some(None)`: could not be mapped (see the reasons).
    pub mapped: Option<Option<SyncedFields>>,
    /// PBX id and alias, when the user is in the PBX.
    pub in_pbx: Option<(String, String)>,
    /// The last change that reached the PBX: action, outcome, run, when.
    pub last_applied: Option<(String, String, uuid::Uuid, DateTime<Utc>)>,
}

/// One user's state, source and mapped values, last change and the next
/// run's decision. `key`: object id, alias, mail or user principal name.
pub async fn explain(store: &Store, id: &str, key: &str) -> AdminResult<Explanation> {
    let (tenant, round, scoped) = planner_inputs(store, id).await?;
    let mut found = store.find_users(id, round, key).await?;
    let row = match found.len() {
        0 => {
            return Err(AdminError::NotFound(format!(
                "no user of tenant {id} matches {key:?}: give an object id, an alias, a mail address or a user principal name"
            )))
        }
        1 => found.remove(0),
        _ => {
            let ids: Vec<&str> = found.iter().map(|r| r.object_id.as_str()).collect();
            return Err(AdminError::Conflict(format!(
                "{key:?} matches {} users of tenant {id} ({}); give one of their object ids",
                found.len(),
                ids.join(", ")
            )));
        }
    };
    let now = clock::now();
    let planner = Planner {
        store,
        tenant: &tenant,
        round,
        scoped,
        now,
    };
    let survey = planner.survey().await?;
    let hold = next_hold(store, &tenant, &survey).await?;
    let planned = planner.plan_one(&survey, hold.as_deref(), &row);
    let line = plan_line(&row, &planned, now);
    let context = planner.context();
    let (scope, mapped) = mapped_fields(&row, &context);
    let source = |field: &str, path: &usersync_core::mapping::SourcePath| SourceValue {
        field: field.to_owned(),
        path: path.as_str().to_owned(),
        value: path.resolve(&row.source),
    };
    let sources: Vec<SourceValue> = ["alias", "first_name", "surname", "pstn_fixed"]
        .into_iter()
        .filter_map(|f| tenant.field_mapping.get(f).map(|p| source(f, p)))
        .chain(
            tenant
                .user_field_mapping
                .iter()
                .map(|(field, path)| source(field, path)),
        )
        .collect();
    let history = store.change_history(id, &row.object_id, 5).await?;
    let last_applied = history
        .iter()
        .find(|c| matches!(c.outcome.as_str(), "created" | "updated" | "deleted"));
    let applied = applied_of(&row);
    let json = json!({
        "object_id": row.object_id,
        "user": line.user,
        "stored_state": row.sync.as_ref().map(|s| s.state.clone()),
        "state": planned.state,
        "scope": scope,
        "sources": sources,
        "mapped": mapped.as_ref().map(|m| m.as_ref().ok()),
        "problems": planned.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "held": planned.held.as_ref().map(ToString::to_string),
        "pbx_id": applied.as_ref().map(|a| a.pbx_id.clone()),
        "applied": applied.as_ref().map(|a| &a.fields),
        "pending_delete_at": planned.pending_delete_at,
        "next_run": line,
        "last_change_applied": last_applied.map(|c| json!({
            "run_id": c.run_id, "at": c.started_at, "action": c.action, "outcome": c.outcome,
        })),
        "recent_changes": history.iter().map(|c| json!({
            "run_id": c.run_id, "at": c.started_at, "op": action_name(&c.action), "outcome": c.outcome, "detail": c.detail,
        })).collect::<Vec<_>>(),
    });
    Ok(Explanation {
        json,
        object_id: row.object_id.clone(),
        state: planned.state,
        scope: format!("{scope:?}"),
        sources,
        mapped: mapped.map(|m| m.ok()),
        in_pbx: applied.map(|a| (a.pbx_id, a.fields.alias)),
        last_applied: last_applied.map(|c| {
            (
                action_name(&c.action).to_owned(),
                c.outcome.clone(),
                c.run_id,
                c.started_at,
            )
        }),
        line,
    })
}

/// What an operator should know after a change of the decision rules: the
/// next run recomputes every user from the stored directory, no full read.
pub fn after_apply_note(old: &TenantConfig, new: &TenantConfig) -> Option<String> {
    let rules_changed = old.field_mapping != new.field_mapping
        || old.user_field_mapping != new.user_field_mapping
        || old.allowed_country_prefixes != new.allowed_country_prefixes
        || old.mode != new.mode
        || old.delete_after_days != new.delete_after_days;
    rules_changed.then(|| {
        format!(
            "the next run decides every user again under the new settings, from the directory data \
             already stored; `usersync plan {id}` shows what it will change, `usersync resync {id}` runs it",
            id = new.id
        )
    })
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::None => "none",
        Action::Create { .. } => "create",
        Action::Update { .. } => "update",
        Action::Delete { .. } => "delete",
    }
}
