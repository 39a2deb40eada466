//! `usersync plan ID` and `usersync explain ID USER`: the next run's decisions
//! from stored data, through the same planner the differ runs. Nothing is
//! written: claims go to a session's temporary table, approvals are only peeked at.

use anyhow::bail;
use serde_json::{json, Value};
use usersync_core::{Action, TenantConfig};
use usersync_graph::{GraphClient, GraphConfig};
use usersync_planner::{applied_of, fields_list, mapped_fields, plan_line, PlanLine, Planner, Survey};
use usersync_preview::{read_directory, LivePlan, Progress};
use usersync_runtime::clock;
use usersync_store::{Round, SecretKey, Store};

async fn planner_inputs(store: &Store, id: &str) -> anyhow::Result<(TenantConfig, Round, bool)> {
    let tenant = store.require_tenant(id, None).await?.config;
    // Scope is what the last run read; before any run nobody is a member yet.
    let round = store.latest_round(id).await?.unwrap_or(Round {
        run_id: uuid::Uuid::nil(),
        round_id: uuid::Uuid::nil(),
    });
    let scoped = !tenant.provider_settings.user_filter.syncs_everyone();
    Ok((tenant, round, scoped))
}

/// The hold the next run would apply: an open approval lifts it.
async fn next_hold(store: &Store, tenant: &TenantConfig, survey: &Survey) -> anyhow::Result<Option<String>> {
    let approved = store.has_open_deletion_approval(&tenant.id).await?;
    Ok(survey.hold_reason(tenant, approved))
}

pub async fn plan(store: &Store, id: &str, json: bool, all: bool) -> anyhow::Result<()> {
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
    let mut lines = Vec::new();
    let mut summary: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut after = String::new();
    loop {
        let page = planner.plan_page(&survey, hold.as_deref(), &after).await?;
        let Some(last) = page.last() else { break };
        after = last.row.object_id.clone();
        for planned in page {
            let line = plan_line(&planned.row, &planned.user, now);
            *summary.entry(line.decision).or_default() += 1;
            if all || line.decision != "none" {
                lines.push(line);
            }
        }
    }
    let warnings = survey.warnings(hold.as_deref());
    let plan = LivePlan {
        as_of: now,
        summary,
        warnings,
    };
    print_plan(&tenant, "stored", &plan, &lines, json)
}

/// `usersync plan ID --live`: the same plan from the directory as read now.
pub async fn plan_live(store: &Store, id: &str, json: bool, all: bool) -> anyhow::Result<()> {
    let key = SecretKey::from_env()?;
    let tenant = store.require_tenant(id, Some(&key)).await?.config;
    let graph = GraphClient::new(GraphConfig::from_env().map_err(anyhow::Error::msg)?);
    let progress = progress_on_stderr();
    let live = read_directory(&graph, &tenant, &progress)
        .await
        .map_err(|err| anyhow::anyhow!("reading the directory of tenant {id} ({}): {err}", err.code()))?;
    let mut lines = Vec::new();
    let plan =
        usersync_preview::plan_live(store, &tenant, &live, clock::now(), &progress, &mut lines).await?;
    lines.retain(|line| all || line.decision != "none");
    print_plan(&tenant, "live", &plan, &lines, json)
}

/// A progress line now and then, for a big directory.
fn progress_on_stderr() -> impl Fn(Progress) + Send + Sync {
    let shown = std::sync::Mutex::new((0u64, 0u64, 0u64));
    move |step| {
        let Ok(mut shown) = shown.lock() else { return };
        let due = |done: u64, last: &mut u64| {
            let due = done >= *last + PROGRESS_EVERY;
            if due {
                *last = done;
            }
            due
        };
        match step {
            Progress::Members(n) if due(n, &mut shown.0) => eprintln!("read {n} filter-group members"),
            Progress::Users(n) if due(n, &mut shown.1) => eprintln!("read {n} users"),
            Progress::Planned(n, total) if due(n, &mut shown.2) || n == total => {
                eprintln!("planned {n} of {total} users")
            }
            _ => {}
        }
    }
}

/// Users between two progress lines.
const PROGRESS_EVERY: u64 = 5000;

fn print_plan(
    tenant: &TenantConfig,
    source: &str,
    plan: &LivePlan,
    lines: &[PlanLine],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let out = json!({
            "tenant_id": tenant.id,
            "mode": tenant.mode.as_str(),
            "as_of": plan.as_of,
            "source": source,
            "users": lines,
            "summary": plan.summary,
            "warnings": plan.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let from = match source {
        "live" => "from the directory as read now",
        _ => "from stored data",
    };
    println!(
        "plan for {} (mode {}) as of {}, {from}; nothing was changed",
        tenant.id,
        tenant.mode,
        plan.as_of.format("%Y-%m-%d %H:%M UTC")
    );
    for line in lines {
        print_line(line);
    }
    let totals: Vec<String> = plan.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("summary: {}", totals.join(", "));
    for warning in &plan.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}

fn print_line(line: &PlanLine) {
    let head = format!("{:<16} {:<28} {}", line.decision, line.user, line.object_id);
    println!("{head}");
    for change in &line.changes {
        println!(
            "    {}: {} → {}",
            change.field,
            shown(&change.before),
            shown(&change.after)
        );
    }
    if let Some(at) = line.delete_at {
        println!("    deletion due {}", at.format("%Y-%m-%d %H:%M UTC"));
    }
    for reason in &line.reasons {
        println!("    {reason}");
    }
}

fn shown(value: &Option<String>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |v| format!("\"{v}\""))
}

pub async fn explain(store: &Store, id: &str, key: &str, json: bool) -> anyhow::Result<()> {
    let (tenant, round, scoped) = planner_inputs(store, id).await?;
    let mut found = store.find_users(id, round, key).await?;
    let row = match found.len() {
        0 => bail!(
            "no user of tenant {id} matches {key:?}: give an object id, an alias, a mail address or a user principal name"
        ),
        1 => found.remove(0),
        _ => {
            let ids: Vec<&str> = found.iter().map(|r| r.object_id.as_str()).collect();
            bail!(
                "{key:?} matches {} users of tenant {id} ({}); give one of their object ids",
                found.len(),
                ids.join(", ")
            )
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
    let sources: Vec<Value> = tenant
        .field_mapping
        .get("alias")
        .map(|p| ("alias", p))
        .into_iter()
        .chain(
            ["first_name", "surname", "pstn_fixed"]
                .into_iter()
                .filter_map(|f| tenant.field_mapping.get(f).map(|p| (f, p))),
        )
        .map(|(field, path)| json!({"field": field, "path": path.as_str(), "value": path.resolve(&row.source)}))
        .chain(
            tenant
                .user_field_mapping
                .iter()
                .map(|(field, path)| json!({"field": field, "path": path.as_str(), "value": path.resolve(&row.source)})),
        )
        .collect();
    let history = store.change_history(id, &row.object_id, 5).await?;
    let last_applied = history
        .iter()
        .find(|c| matches!(c.outcome.as_str(), "created" | "updated" | "deleted"));
    let applied = applied_of(&row);
    let out = json!({
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
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("user {} ({})", line.user, row.object_id);
    println!("  state: {} (scope: {:?})", planned.state, scope);
    if let Some(at) = planned.pending_delete_at {
        println!("  deletion due {}", at.format("%Y-%m-%d %H:%M UTC"));
    }
    println!("  source values:");
    for source in &sources {
        println!(
            "    {:<20} ← {} = {}",
            source["field"].as_str().unwrap_or_default(),
            source["path"].as_str().unwrap_or_default(),
            source["value"]
        );
    }
    match &mapped {
        Some(Ok(fields)) => {
            println!("  mapped values:");
            for (field, value) in fields_list(fields) {
                println!("    {field:<20} = {}", shown(&value));
            }
        }
        Some(Err(_)) => println!("  mapped values: none (see the reasons below)"),
        None => println!("  mapped values: none (out of scope)"),
    }
    match &applied {
        Some(applied) => println!(
            "  in the PBX as {} (alias {})",
            applied.pbx_id, applied.fields.alias
        ),
        None => println!("  not in the PBX"),
    }
    match last_applied {
        Some(change) => println!(
            "  last change applied: {} ({}) in run {} at {}",
            action_name(&change.action),
            change.outcome,
            change.run_id,
            change.started_at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => println!("  last change applied: none"),
    }
    println!("  next run: {}", line.decision);
    print_line(&line);
    Ok(())
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
