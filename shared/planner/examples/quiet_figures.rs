//! Prints how long the differ's planning of a tenant's next runs takes
//! against a real PostgreSQL, after a first sync of N synthetic users
//! (default 20,000) whose creates are all applied: a run with nothing
//! changed, one with one user changed, and a quiet one again. Tables are
//! never analysed, as on a fresh database with autovacuum off.
//!
//! `cargo run --release -p usersync-planner --example quiet_figures -- 100000`

use std::time::Instant;

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::NoTls;
use usersync_core::{parse_tenant_file, TenantConfig};
use usersync_planner::Planner;
use usersync_store::{Round, RoundEnd, SecretKey, Store};
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

fn page_users(ids: std::ops::Range<usize>, surname: &str) -> Vec<Value> {
    ids.map(|i| {
        json!({"id": format!("{i:08}"), "mailNickname": format!("user.{i}"), "givenName": "Anna",
               "surname": surname, "businessPhones": [format!("08-{:07}", 1_000_000 + i % 8_000_000)],
               "mail": format!("user.{i}@figures.example"), "jobTitle": "Engineer", "accountEnabled": true})
    })
    .collect()
}

/// What the differ does at the end of a round (without the guard's approval).
async fn plan(
    store: &Store,
    tenant: &TenantConfig,
    round: Round,
    everyone: bool,
) -> anyhow::Result<(u64, u64)> {
    let planner = Planner {
        store,
        tenant,
        round,
        scoped: false,
        now: Utc::now(),
    };
    let survey = planner.survey_run(round.run_id, everyone).await?;
    let hold = survey.hold_reason(tenant, false);
    let stored = planner
        .store_plan(round.run_id, &survey, hold.as_deref(), |_| {})
        .await?;
    store.record_plan_outcome(round.run_id, 0, &[]).await?;
    let end = RoundEnd {
        delta_link: "https://graph/users/delta?$deltatoken=1",
        full_round: everyone,
        paused: false,
        basis: &planner.basis()?,
        planned_everyone: survey.decides_everyone(),
        planned_at: planner.now,
    };
    store.complete_planning(round.run_id, &tenant.id, &end).await?;
    Ok((stored.users, stored.changes))
}

/// What the applier records once every change is applied.
async fn apply_everything(store: &Store) -> anyhow::Result<()> {
    store
        .client()
        .await?
        .batch_execute(
            "UPDATE sync_users SET pbx_id = 'pbx-' || object_id, applied = desired, applied_version = desired_version
             WHERE applied_version < desired_version;
             UPDATE runs SET state = 'succeeded', finished_at = now() WHERE finished_at IS NULL",
        )
        .await?;
    Ok(())
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
    let first = Round {
        run_id: Uuid::new_v4(),
        round_id: Uuid::new_v4(),
    };
    store.start_run(first.run_id, "figures", "manual", true).await?;
    let started = Instant::now();
    for (page, start) in (0..users).step_by(1000).enumerate() {
        let ids = start..(start + 1000).min(users);
        store
            .record_users_page(first, "figures", u32::try_from(page)?, &page_users(ids, "Berg"))
            .await?;
    }
    println!("record pages:      {:>7.2} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let (decided, changes) = plan(&store, &tenant, first, true).await?;
    println!(
        "first sync:        {:>7.2} s  ({decided} users decided, {changes} changes)",
        started.elapsed().as_secs_f64()
    );
    apply_everything(&store).await?;
    for (label, changed) in [
        ("nothing changed", false),
        ("one user changed", true),
        ("nothing changed", false),
    ] {
        let round = Round {
            run_id: Uuid::new_v4(),
            round_id: Uuid::new_v4(),
        };
        store
            .start_run(round.run_id, "figures", "scheduled", false)
            .await?;
        let started = Instant::now();
        if changed {
            store
                .record_users_page(round, "figures", 0, &page_users(7..8, "Lind"))
                .await?;
        }
        let (decided, changes) = plan(&store, &tenant, round, false).await?;
        println!(
            "{label:<18} {:>7.3} s  ({decided} users decided, {changes} changes)",
            started.elapsed().as_secs_f64()
        );
        apply_everything(&store).await?;
    }
    Ok(())
}
