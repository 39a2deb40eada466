//! What the read commands print: aligned text for people, JSON for scripts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use usersync_admin::status::{ChangeNotifications, Counts, RunSummary, StatusLine};
use usersync_admin::tenants::TenantLine;
use usersync_admin::tokens::{NewToken, TokenInfo};
use usersync_bus::DeadLetter;
use usersync_core::TenantConfig;
use usersync_store::{RunProgress, RunRow};

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

fn counts_text(c: &Counts) -> String {
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

pub fn tenant_list(tenants: &[TenantLine], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&tenants);
    }
    println!("{:<24} {:<16} NAME", "ID", "MODE");
    for t in tenants {
        println!("{:<24} {:<16} {}", t.id, t.mode, t.name);
    }
    Ok(())
}

pub fn tenant_show(config: &TenantConfig, _json: bool) -> anyhow::Result<()> {
    // The tenant file format is JSON either way; secrets are stored masked.
    print_json(&config.masked())
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
    println!("  {}", notifications_text(&line.change_notifications));
    Ok(())
}

/// `change notifications: on, subscriptions /users until <t>, …; last notification <t>`,
/// or `off`; a failing subscription shows its error and next attempt instead of its expiry.
pub fn notifications_text(notifications: &ChangeNotifications) -> String {
    if !notifications.enabled {
        return "change notifications: off".to_owned();
    }
    let subscriptions: Vec<String> = notifications
        .subscriptions
        .iter()
        .map(|s| match (&s.last_error, s.expires_at) {
            (Some(error), _) => format!(
                "{} failing: {error} (next attempt {})",
                s.resource,
                time(s.next_attempt_at)
            ),
            (None, Some(until)) => format!("{} until {}", s.resource, time(Some(until))),
            (None, None) => format!("{} not created yet", s.resource),
        })
        .collect();
    let last = match notifications.last_notification_at {
        Some(at) => time(Some(at)),
        None => "none yet".to_owned(),
    };
    format!(
        "change notifications: on, subscriptions {}; last notification {last}",
        subscriptions.join(", ")
    )
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
    println!(
        "run {} ended {}: {}",
        run.id,
        run.state,
        counts_text(&run.counts.into())
    );
    if let Some(error) = &run.error {
        println!("  error: {error}");
    }
}

pub fn new_token(token: &NewToken, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(token);
    }
    println!(
        "API token {} (scope {}); copy it now, it is not shown again:",
        token.id, token.scope
    );
    println!("{}", token.token);
    Ok(())
}

pub fn tokens(tokens: &[TokenInfo], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&tokens);
    }
    if tokens.is_empty() {
        println!("no API tokens: create one with `usersync api-token create --tenant ID` or `--all`");
        return Ok(());
    }
    println!("{:<18} {:<24} {:<24} LAST USED", "ID", "SCOPE", "CREATED");
    for token in tokens {
        println!(
            "{:<18} {:<24} {:<24} {}",
            token.id,
            token.scope,
            time(Some(token.created_at)),
            time(token.last_used_at)
        );
    }
    Ok(())
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
    use usersync_admin::status::SubscriptionStatus;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a date")
            .with_timezone(&Utc)
    }

    fn subscription(
        resource: &str,
        expires_at: Option<&str>,
        last_error: Option<&str>,
    ) -> SubscriptionStatus {
        SubscriptionStatus {
            resource: resource.into(),
            subscription_id: expires_at.map(|_| "sub".into()),
            expires_at: expires_at.map(at),
            last_error: last_error.map(Into::into),
            next_attempt_at: last_error.map(|_| at("2026-12-02T07:00:00Z")),
        }
    }

    #[test]
    fn the_notifications_line_says_off_expiries_errors_and_the_last_notification() {
        assert_eq!(
            notifications_text(&ChangeNotifications::default()),
            "change notifications: off"
        );
        let on = ChangeNotifications {
            enabled: true,
            last_notification_at: Some(at("2026-12-02T06:30:00Z")),
            subscriptions: vec![
                subscription("/users", Some("2026-12-30T06:00:00Z"), None),
                subscription("/groups", Some("2026-12-29T06:00:00Z"), None),
            ],
        };
        assert_eq!(
            notifications_text(&on),
            "change notifications: on, subscriptions /users until 2026-12-30 06:00:00 UTC, \
             /groups until 2026-12-29 06:00:00 UTC; last notification 2026-12-02 06:30:00 UTC"
        );
        let failing = ChangeNotifications {
            enabled: true,
            last_notification_at: None,
            subscriptions: vec![subscription("/users", None, Some("consent missing"))],
        };
        assert_eq!(
            notifications_text(&failing),
            "change notifications: on, subscriptions /users failing: consent missing \
             (next attempt 2026-12-02 07:00:00 UTC); last notification none yet"
        );
    }

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
            counts: usersync_contract::RunCounts {
                created: 40,
                updated: 2,
                failed: 1,
                ..Default::default()
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
        let clean: Counts = usersync_contract::RunCounts {
            created: 2,
            ..Default::default()
        }
        .into();
        assert_eq!(
            counts_text(&clean),
            "created 2 updated 0 deleted 0 skipped 0 failed 0"
        );
        let held = Counts { held: 12, ..clean };
        assert!(counts_text(&held)
            .ends_with("failed 0 held 12 (see `usersync plan`, `usersync approve-deletions`)"));
    }
}
