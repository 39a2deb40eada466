use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;

use super::{tenant_body, TestSim};

#[tokio::test]
async fn hundred_thousand_users_full_round() {
    let sim = TestSim::start().await;
    let started = Instant::now();
    sim.create_tenant(tenant_body(100_000, json!({"page_size": 500})))
        .await;
    let seeded = started.elapsed();
    let token = sim.token().await;

    let started = Instant::now();
    let round = sim
        .round(&token, "/v1.0/users/delta?$select=displayName,accountEnabled")
        .await;
    let paged = started.elapsed();
    let items = round.items();
    let ids: HashSet<&str> = items.iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(ids.len(), 100_000);
    println!(
        "100,000 users: seeded in {seeded:?}, full round of {} pages in {paged:?}",
        round.pages.len()
    );
}
