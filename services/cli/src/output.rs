//! What the read commands print: aligned text for people, JSON for scripts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use usersync_bus::DeadLetter;
use usersync_contract::RunCounts;
use usersync_core::{schedule::next_due, Schedule, TenantConfig};
use usersync_store::{RunProgress, RunRow, RunState, TenantOverview, TenantSummary};

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn time(value: Option<DateTime<Utc>>) -> String {
    value.map_or_else(
        || "never".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn counts_text(c: &RunCounts) -> String {
    let text = format!(
        "created {} updated {} deleted {} skipped {} failed {}",
        c.created, c.updated, c.deleted, c.skipped, c.failed
    );
    // Deletions held by the mass-deletion guard are named only when there are some.
    if c.held > 0 {
        format!(
            "{text} held {} (see `usersync plan`, `usersync approve-deletions`)",
            c.held
        )
    } else {
        text
    }
}

pub fn tenant_list(tenants: &[TenantSummary], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<_> = tenants
            .iter()
            .map(|t| json!({"id": t.config.id, "name": t.config.name, "mode": t.config.mode.as_str()}))
            .collect();
        return print_json(&list);
    }
    println!("{:<24} {:<16} NAME", "ID", "MODE");
    for t in tenants {
        println!(
            "{:<24} {:<16} {}",
            t.config.id,
            t.config.mode.as_str(),
            t.config.name
        );
    }
    Ok(())
}

pub fn tenant_show(config: &TenantConfig, _json: bool) -> anyhow::Result<()> {
    // The tenant file format is JSON either way; secrets are stored masked.
    print_json(&config.masked())
}

#[derive(Debug, Serialize)]
pub struct StatusLine {
    pub id: String,
    pub mode: String,
    /// The run in progress (`fetching`, `differing`, `applying`), `queued`
    /// when only a follow-up waits to start, or `idle`.
    pub state: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run: Option<RunSummary>,
    /// The follow-up run queued to start when the run in progress ends.
    pub queued_run: Option<String>,
    pub pending_deletions: i64,
    pub next_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub state: String,
    pub trigger: String,
    /// None while the run is queued.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// So far while the run is in progress; final once it ended.
    pub counts: RunCounts,
    /// Planned changes not applied yet (while the run is in progress).
    pub changes_pending: i64,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

impl From<&RunRow> for RunSummary {
    fn from(run: &RunRow) -> Self {
        RunSummary {
            id: run.id.to_string(),
            state: run.state.clone(),
            trigger: run.trigger.clone(),
            started_at: (run.state != RunState::Queued.as_str()).then_some(run.started_at),
            finished_at: run.finished_at,
            counts: run.counts,
            changes_pending: run.changes_pending.into(),
            error: run.error.clone(),
            error_code: run.error_code.clone(),
        }
    }
}

impl StatusLine {
    /// `schedule` is the tenant's schedule, for a tenant the scheduler has not seen yet.
    pub fn new(tenant: TenantOverview, schedule: Option<&Schedule>, now: DateTime<Utc>) -> StatusLine {
        let state = match (&tenant.last_run, tenant.queued_run) {
            (Some(run), _) if run.finished_at.is_none() => run.state.clone(),
            // The run it waited for has ended; the scheduler starts it next.
            (_, Some(_)) => "queued".to_owned(),
            _ => "idle".to_owned(),
        };
        StatusLine {
            next_run_at: tenant
                .next_due
                .or_else(|| schedule.map(|schedule| next_due(schedule, now))),
            id: tenant.tenant_id,
            mode: tenant.mode,
            state,
            last_success_at: tenant.last_success_at,
            last_run: tenant.last_run.as_ref().map(RunSummary::from),
            queued_run: tenant.queued_run.map(|id| id.to_string()),
            pending_deletions: tenant.pending_deletions,
        }
    }
}

fn short_time(value: Option<DateTime<Utc>>) -> String {
    value.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// All tenants, one line each.
pub fn status(lines: &[StatusLine], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&lines);
    }
    if lines.is_empty() {
        println!("no tenants yet: create one with `usersync tenant apply FILE`");
        return Ok(());
    }
    println!(
        "{:<24} {:<14} {:<10} {:<16} {:<10} {:>7} {:<16}",
        "ID", "MODE", "STATE", "LAST SUCCESS", "LAST RUN", "PENDING", "NEXT RUN (UTC)"
    );
    for line in lines {
        println!(
            "{:<24} {:<14} {:<10} {:<16} {:<10} {:>7} {:<16}",
            line.id,
            line.mode,
            line.state,
            short_time(line.last_success_at),
            line.last_run.as_ref().map_or("-", |run| run.state.as_str()),
            line.pending_deletions,
            short_time(line.next_run_at),
        );
    }
    Ok(())
}

/// One tenant in detail.
pub fn status_detail(line: &StatusLine, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&[line]);
    }
    println!("{} ({}, {})", line.id, line.mode, line.state);
    println!("  last successful sync: {}", time(line.last_success_at));
    match &line.last_run {
        Some(run) => {
            println!(
                "  last run: {} ({}, started {})",
                run.state,
                run.trigger,
                time(run.started_at)
            );
            println!("    {}", counts_text(&run.counts));
            if run.finished_at.is_none() {
                println!("    {} changes still to do", run.changes_pending);
            }
            if let Some(error) = &run.error {
                println!("    error: {error}");
            }
        }
        None => println!("  last run: none yet"),
    }
    if let Some(queued) = &line.queued_run {
        println!("  queued: run {queued}, starts when the run in progress ends");
    }
    println!("  pending deletions: {}", line.pending_deletions);
    println!("  next scheduled run: {}", time(line.next_run_at));
    Ok(())
}

/// What `resync --wait` prints whenever a run moves on: the counts so far
/// and the changes still to do.
pub fn progress_line(run: &RunRow, progress: &RunProgress) -> String {
    let c = &run.counts;
    format!(
        "run {} {}: {} pages fetched, {} users differed ({} skipped), {} of them applied \
         (created {} updated {} deleted {} failed {}), {} to do, {} mails sent",
        run.id,
        run.state,
        progress.pages,
        progress.planned + progress.skipped,
        progress.skipped,
        progress.applied,
        c.created,
        c.updated,
        c.deleted,
        c.failed,
        progress.planned - progress.applied,
        progress.mails
    )
}

pub fn run_outcome(run: &RunRow) {
    println!("run {} ended {}: {}", run.id, run.state, counts_text(&run.counts));
    if let Some(error) = &run.error {
        println!("  error: {error}");
    }
}

pub fn dead_letters(letters: &[DeadLetter], json: bool, now: DateTime<Utc>) -> anyhow::Result<()> {
    if json {
        return print_json(&letters);
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    println!(
        "{:<9} {:<28} {:<16} {:>8}  REASON",
        "STAGE", "TYPE", "TENANT", "AGE"
    );
    for letter in letters {
        let age = letter
            .parked_at
            .and_then(|at| DateTime::from_timestamp(i64::try_from(at).ok()?, 0))
            .map_or_else(|| "?".to_owned(), |at| age_text(now - at));
        println!(
            "{:<9} {:<28} {:<16} {:>8}  {}",
            letter.stage,
            letter.kind.as_deref().unwrap_or("?"),
            letter.tenant_id.as_deref().unwrap_or("?"),
            age,
            letter.reason
        );
    }
    Ok(())
}

fn age_text(age: chrono::TimeDelta) -> String {
    let secs = age.num_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub fn runs(runs: &[RunRow], json: bool) -> anyhow::Result<()> {
    let summaries: Vec<RunSummary> = runs.iter().map(RunSummary::from).collect();
    if json {
        return print_json(&summaries);
    }
    println!(
        "{:<36} {:<10} {:<10} {:<24} COUNTS",
        "RUN", "STATE", "TRIGGER", "STARTED"
    );
    for run in &summaries {
        println!(
            "{:<36} {:<10} {:<10} {:<24} {}",
            run.id,
            run.state,
            run.trigger,
            run.started_at
                .map_or_else(|| "not yet".to_owned(), |at| time(Some(at))),
            counts_text(&run.counts)
        );
        if let Some(error) = &run.error {
            println!("  error: {error}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!(age_text(chrono::TimeDelta::seconds(42)), "42s");
        assert_eq!(age_text(chrono::TimeDelta::minutes(5)), "5m");
        assert_eq!(age_text(chrono::TimeDelta::hours(30)), "30h");
        assert_eq!(age_text(chrono::TimeDelta::days(3)), "3d");
    }

    #[test]
    fn a_progress_line_shows_the_counts_so_far_and_the_changes_to_do() {
        let run = RunRow {
            id: uuid::Uuid::nil(),
            tenant_id: "acme".into(),
            trigger: "manual".into(),
            full_round: true,
            state: "applying".into(),
            started_at: Utc::now(),
            finished_at: None,
            counts: RunCounts {
                created: 40,
                updated: 2,
                failed: 1,
                ..RunCounts::default()
            },
            changes_pending: 57,
            error: None,
            error_code: None,
        };
        let progress = RunProgress {
            pages: 3,
            planned: 100,
            applied: 43,
            skipped: 5,
            mails: 40,
        };
        assert!(
            progress_line(&run, &progress).ends_with(
                "applying: 3 pages fetched, 105 users differed (5 skipped), 43 of them applied \
                 (created 40 updated 2 deleted 0 failed 1), 57 to do, 40 mails sent"
            ),
            "{}",
            progress_line(&run, &progress)
        );
    }

    #[test]
    fn held_deletions_are_named_only_when_there_are_some() {
        let clean = RunCounts {
            created: 2,
            ..RunCounts::default()
        };
        assert_eq!(
            counts_text(&clean),
            "created 2 updated 0 deleted 0 skipped 0 failed 0"
        );
        let held = RunCounts { held: 12, ..clean };
        assert!(counts_text(&held)
            .ends_with("failed 0 held 12 (see `usersync plan`, `usersync approve-deletions`)"));
    }
}
