//! What the read commands print: aligned text for people, JSON for scripts.

use chrono::{DateTime, Days, Utc};
use serde::Serialize;
use serde_json::json;
use usersync_contract::RunCounts;
use usersync_core::{Schedule, TenantConfig};
use usersync_store::{RunRow, TenantSummary};

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
    format!(
        "created {} updated {} deleted {} skipped {} failed {}",
        c.created, c.updated, c.deleted, c.skipped, c.failed
    )
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
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run: Option<RunSummary>,
    pub pending_deletions: i64,
    pub next_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub state: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: RunCounts,
    pub error: Option<String>,
}

impl From<&RunRow> for RunSummary {
    fn from(run: &RunRow) -> Self {
        RunSummary {
            id: run.id.to_string(),
            state: run.state.clone(),
            trigger: run.trigger.clone(),
            started_at: run.started_at,
            finished_at: run.finished_at,
            counts: run.counts,
            error: run.error.clone(),
        }
    }
}

impl StatusLine {
    pub fn new(tenant: TenantSummary, last_run: Option<RunRow>, now: DateTime<Utc>) -> StatusLine {
        StatusLine {
            next_run_at: next_run(&tenant.config.schedule, now),
            id: tenant.config.id,
            mode: tenant.config.mode.as_str().to_owned(),
            last_success_at: tenant.last_success_at,
            last_run: last_run.as_ref().map(RunSummary::from),
            pending_deletions: tenant.pending_deletions,
        }
    }
}

/// The next time the schedule's wall-clock time comes round in its time zone.
fn next_run(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local_today = now.with_timezone(&schedule.timezone).date_naive();
    (0..3u64).find_map(|days| {
        let date = local_today.checked_add_days(Days::new(days))?;
        let at = date
            .and_time(schedule.at)
            .and_local_timezone(schedule.timezone)
            .earliest()?
            .with_timezone(&Utc);
        (at > now).then_some(at)
    })
}

pub fn status(lines: &[StatusLine], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&lines);
    }
    if lines.is_empty() {
        println!("no tenants yet: create one with `usersync tenant apply FILE`");
    }
    for line in lines {
        println!("{} ({})", line.id, line.mode);
        println!("  last successful sync: {}", time(line.last_success_at));
        match &line.last_run {
            Some(run) => {
                println!(
                    "  last run: {} ({}, started {})",
                    run.state,
                    run.trigger,
                    time(Some(run.started_at))
                );
                println!("    {}", counts_text(&run.counts));
                if let Some(error) = &run.error {
                    println!("    error: {error}");
                }
            }
            None => println!("  last run: none yet"),
        }
        println!("  pending deletions: {}", line.pending_deletions);
        println!("  next scheduled run: {}", time(line.next_run_at));
    }
    Ok(())
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
            time(Some(run.started_at)),
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
    use chrono::{NaiveTime, TimeZone};

    use super::*;

    #[test]
    fn next_run_is_later_today_or_tomorrow_in_the_tenants_zone() {
        let schedule = Schedule {
            at: NaiveTime::from_hms_opt(2, 0, 0).unwrap(),
            timezone: chrono_tz::Europe::Stockholm,
        };
        // 00:30 UTC in winter is 01:30 in Stockholm: the run is at 01:00 UTC the same day.
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 0, 30, 0).unwrap();
        assert_eq!(
            next_run(&schedule, now),
            Some(Utc.with_ymd_and_hms(2026, 1, 10, 1, 0, 0).unwrap())
        );
        // 02:00 Stockholm in summer is 00:00 UTC.
        let now = Utc.with_ymd_and_hms(2026, 7, 10, 12, 0, 0).unwrap();
        assert_eq!(
            next_run(&schedule, now),
            Some(Utc.with_ymd_and_hms(2026, 7, 11, 0, 0, 0).unwrap())
        );
    }
}
