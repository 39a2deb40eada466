//! `usersync plan ID` and `usersync explain ID USER`: printed from the
//! shared admin functions (the API serves the same data).

use usersync_admin::plan::{fields_list, Explanation, PlanLine, PlanReport};
use usersync_graph::{GraphClient, GraphConfig};
use usersync_preview::Progress;
use usersync_store::{SecretKey, Store};

/// `usersync plan ID --live`: the plan from the directory as read now.
pub async fn live(store: &Store, id: &str, all: bool) -> anyhow::Result<PlanReport> {
    let key = SecretKey::from_env()?;
    let tenant = store.require_tenant(id, Some(&key)).await?.config;
    let graph = GraphClient::new(GraphConfig::from_env().map_err(anyhow::Error::msg)?);
    Ok(usersync_admin::plan::plan_live(store, &graph, &tenant, all, &progress_on_stderr()).await?)
}

/// Users between two progress lines.
const PROGRESS_EVERY: u64 = 5000;

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

pub fn print_plan(report: &PlanReport, json: bool) -> anyhow::Result<()> {
    if json {
        let out = serde_json::json!({
            "tenant_id": report.tenant_id,
            "mode": report.mode,
            "as_of": report.as_of,
            "source": report.source,
            "users": report.users,
            "summary": report.summary,
            "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let from = match report.source {
        "live" => "from the directory as read now",
        _ => "from stored data",
    };
    println!(
        "plan for {} (mode {}) as of {}, {from}; nothing was changed",
        report.tenant_id,
        report.mode,
        report.as_of.format("%Y-%m-%d %H:%M UTC")
    );
    for line in &report.users {
        print_line(line);
    }
    let totals: Vec<String> = report.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("summary: {}", totals.join(", "));
    for warning in &report.warnings {
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

pub fn print_explanation(explained: &Explanation, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&explained.json)?);
        return Ok(());
    }
    let line = &explained.line;
    println!("user {} ({})", line.user, explained.object_id);
    println!("  state: {} (scope: {})", explained.state, explained.scope);
    if let Some(at) = line.delete_at {
        println!("  deletion due {}", at.format("%Y-%m-%d %H:%M UTC"));
    }
    println!("  source values:");
    for source in &explained.sources {
        let value = serde_json::to_value(&source.value)?;
        println!("    {:<20} ← {} = {}", source.field, source.path, value);
    }
    match &explained.mapped {
        Some(Some(fields)) => {
            println!("  mapped values:");
            for (field, value) in fields_list(fields) {
                println!("    {field:<20} = {}", shown(&value));
            }
        }
        Some(None) => println!("  mapped values: none (see the reasons below)"),
        None => println!("  mapped values: none (out of scope)"),
    }
    match &explained.in_pbx {
        Some((pbx_id, alias)) => println!("  in the PBX as {pbx_id} (alias {alias})"),
        None => println!("  not in the PBX"),
    }
    match &explained.last_applied {
        Some((action, outcome, run_id, at)) => println!(
            "  last change applied: {action} ({outcome}) in run {run_id} at {}",
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => println!("  last change applied: none"),
    }
    println!("  next run: {}", line.decision);
    print_line(line);
    Ok(())
}
