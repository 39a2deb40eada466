//! Prints how long planning one tenant takes against a real PostgreSQL:
//! the survey (conflicts and the guard), the per-user decisions, and storing
//! them with their change batches numbered, for N synthetic users (default
//! 20,000), plus the process's peak memory. The tables are never analysed,
//! as on a fresh database with autovacuum off.
//!
//! `cargo run --release -p usersync-planner --example plan_figures -- 100000`
//!
//! With `PLAN_FIGURES_OLD_NUMBERING=1` it also times the single statement
//! that numbered the batches after planning before they were numbered as
//! the plan is stored (for comparison; cut off after
//! `PLAN_FIGURES_OLD_TIMEOUT_SECS`, default 600).

use std::time::Instant;

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::NoTls;
use usersync_core::parse_tenant_file;
use usersync_planner::Planner;
use usersync_store::{Round, SecretKey, Store};
use uuid::Uuid;

const SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = std::env::args().nth(1).map_or(Ok(20_000), |n| n.parse())?;
    let name = format!("usersync_figures_{}", Uuid::new_v4().simple());
    let result = measure(&format!("{SERVER_URL}/{name}"), users).await;
    if std::env::var_os("PLAN_FIGURES_KEEP").is_some() {
        println!("kept database {name}");
        return result;
    }
    let (admin, connection) = tokio_postgres::connect(&format!("{SERVER_URL}/postgres"), NoTls).await?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    result
}

async fn measure(url: &str, users: usize) -> anyhow::Result<()> {
    let store = Store::connect(url, 4).await?;
    let tenant = parse_tenant_file(
        &json!({
            "id": "figures", "name": "Figures AB", "type": "ad_sync", "mode": "user_sync",
            "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s", "user_filter": {"memberOf": [""]}},
            "pbx_company_id": "figures",
            "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
            "user_field_mapping": {"email": "mail", "attributes.title": "jobTitle"}
        })
        .to_string(),
    )
    .map_err(|problems| anyhow::anyhow!("{problems:?}"))?;
    store
        .upsert_tenant(
            &tenant,
            &SecretKey::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")?,
        )
        .await?;
    let round = Round {
        run_id: Uuid::new_v4(),
        round_id: Uuid::new_v4(),
    };
    store.start_run(round.run_id, "figures", "manual", true).await?;
    let started = Instant::now();
    for (page, chunk) in (0..users).collect::<Vec<_>>().chunks(1000).enumerate() {
        let page_users: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"id": format!("{i:08}"), "mailNickname": format!("user.{i}"), "givenName": "Anna",
                       "surname": "Berg", "businessPhones": [format!("08-{:07}", 1_000_000 + i % 8_000_000)],
                       "mail": format!("user.{i}@figures.example"), "jobTitle": "Engineer", "accountEnabled": true})
            })
            .collect();
        store
            .record_users_page(round, "figures", u32::try_from(page)?, &page_users)
            .await?;
    }
    let recorded = started.elapsed();

    let planner = Planner {
        store: &store,
        tenant: &tenant,
        round,
        scoped: false,
        now: Utc::now(),
    };
    let started = Instant::now();
    let survey = planner.survey().await?;
    let surveyed = started.elapsed();
    let started = Instant::now();
    let mut after = String::new();
    let mut planned_users = 0usize;
    let mut saving = std::time::Duration::ZERO;
    let mut numbered = 0;
    loop {
        let page = planner.plan_page(&survey, None, &after).await?;
        let Some(last) = page.last() else { break };
        after = last.row.object_id.clone();
        planned_users += page.len();
        let planned: Vec<_> = page.into_iter().map(|p| p.user).collect();
        let saved = Instant::now();
        numbered += store
            .save_plan(round.run_id, "figures", &planned, numbered)
            .await?;
        saving += saved.elapsed();
    }
    let planned = started.elapsed();
    let rate = |d: std::time::Duration| users as f64 / d.as_secs_f64();
    println!(
        "users: {users} (planned {planned_users}, conflicts {})",
        survey.conflicts.len()
    );
    println!("record pages:       {:>8.2} s", recorded.as_secs_f64());
    println!(
        "survey (pass 1):    {:>8.2} s  {:>9.0} users/s",
        surveyed.as_secs_f64(),
        rate(surveyed)
    );
    println!(
        "plan + save (pass 2): {:>6.2} s  {:>9.0} users/s (saving {:.2} s)",
        planned.as_secs_f64(),
        rate(planned),
        saving.as_secs_f64()
    );
    println!(
        "changes planned and numbered: {numbered} in {} batches",
        numbered.div_ceil(usersync_store::BATCH_SIZE)
    );
    if std::env::var_os("PLAN_FIGURES_OLD_NUMBERING").is_some() {
        old_numbering(&store, round.run_id).await?;
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .unwrap_or_default();
    println!("peak memory: {}", peak.trim_start_matches("VmHWM:").trim());
    Ok(())
}

/// Times the statement that numbered a run's batches after planning, before
/// they were numbered as the plan is stored. It ran right after the changes
/// were inserted, so it runs here on a fresh, never-analysed copy of them:
/// there the planner may join the changes with themselves in a nested loop.
async fn old_numbering(store: &Store, run_id: Uuid) -> anyhow::Result<()> {
    let timeout: u64 = std::env::var("PLAN_FIGURES_OLD_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let client = store.client().await?;
    client
        .batch_execute(
            "CREATE TABLE numbering_before (LIKE run_changes INCLUDING ALL)
               WITH (autovacuum_enabled = false)",
        )
        .await?;
    client
        .execute(
            "INSERT INTO numbering_before (run_id, object_id, desired_version, action)
             SELECT run_id, object_id, desired_version, action FROM run_changes WHERE run_id = $1",
            &[&run_id],
        )
        .await?;
    client
        .batch_execute(&format!("SET statement_timeout = '{timeout}s'"))
        .await?;
    let started = Instant::now();
    let numbered = client
        .execute(
            "UPDATE numbering_before c SET batch = n.batch
             FROM (SELECT object_id, ((row_number() OVER (ORDER BY object_id)) - 1) / 100 AS batch
                   FROM numbering_before WHERE run_id = $1) n
             WHERE c.run_id = $1 AND c.object_id = n.object_id AND c.batch IS NULL",
            &[&run_id],
        )
        .await;
    let took = started.elapsed().as_secs_f64();
    client
        .batch_execute("RESET statement_timeout; DROP TABLE numbering_before")
        .await?;
    match numbered {
        Ok(rows) => println!("old numbering statement: {rows} changes in {took:.2} s"),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            println!("old numbering statement: not done after {timeout} s (cancelled)");
        }
        Err(err) => return Err(err.into()),
    }
    Ok(())
}
