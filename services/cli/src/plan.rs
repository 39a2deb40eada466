//! `usersync plan ID` and `usersync explain ID USER`: printed from the
//! shared admin functions (the API serves the same data).

use usersync_admin::plan::{fields_list, Explanation, PlanLine, PlanReport};

pub fn print_plan(report: &PlanReport, json: bool) -> anyhow::Result<()> {
    if json {
        let out = serde_json::json!({
            "tenant_id": report.tenant_id,
            "mode": report.mode,
            "as_of": report.as_of,
            "users": report.users,
            "summary": report.summary,
            "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "plan for {} (mode {}) as of {}, from stored data; nothing was changed",
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
