//! Prints how long planning one tenant takes against a real PostgreSQL:
//! the survey (conflicts and the guard), the per-user decisions, and storing
//! them, for N synthetic users (default 20,000), plus the process's peak memory.
//!
//! `cargo run --release -p usersync-planner --example plan_figures -- 100000`

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
    // As the differ does after a large round.
    store.refresh_statistics().await?;
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
    loop {
        let page = planner.plan_page(&survey, None, &after).await?;
        let Some(last) = page.last() else { break };
        after = last.row.object_id.clone();
        planned_users += page.len();
        let planned: Vec<_> = page.into_iter().map(|p| p.user).collect();
        let saved = Instant::now();
        store.save_plan(round.run_id, "figures", &planned).await?;
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
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .unwrap_or_default();
    println!("peak memory: {}", peak.trim_start_matches("VmHWM:").trim());
    Ok(())
}
