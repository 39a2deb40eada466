//! Applier throughput against the PBX simulator, and the simulator's own raw
//! POST rate measured the same way in the same run (one stack, same client
//! library, same calls in flight). Run through `scripts/bench-applier`, which
//! builds everything in release first. Prints figures; asserts nothing about speed.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use reqwest::Method;
use serde_json::json;
use usersync_e2e::{wait_for, Stack, PBX_TOKEN};
use usersync_pbx::{NewUser, PbxClient};

const CALLER_ID: &str = "46812345600";

#[tokio::main]
async fn main() {
    let users: u64 = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let in_flight = usersync_core::PbxLimits::DEFAULT_MAX_IN_FLIGHT as usize;
    let stack = Stack::start("bench_applier").await;

    // The raw rate: POSTs straight to the simulator, as the applier sends them.
    company(&stack, "raw").await;
    let client = PbxClient::new(&stack.pbx.url, PBX_TOKEN).expect("a PBX client");
    let started = Instant::now();
    let created = stream::iter(0..users)
        .map(|index| {
            let client = client.clone();
            async move {
                let user = NewUser {
                    alias: format!("raw.user{index}"),
                    first_name: "Raw".into(),
                    surname: format!("User{index}"),
                    pstn_fixed: format!("46{}", 700_000_000 + index),
                    email: Some(format!("raw.user{index}@raw.example")),
                    caller_id: Some(CALLER_ID.into()),
                    template: Some("standard".into()),
                    external_id: Some(format!("raw-{index}")),
                    attributes: [("title".to_owned(), "Bench".to_owned())].into(),
                };
                client
                    .create_user("raw", &user, &format!("raw:{index}"))
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(in_flight)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let raw_secs = started.elapsed().as_secs_f64();
    assert_eq!(created as u64, users, "every raw POST succeeded");

    // The applier: a first sync of a directory of the same size.
    let entra = uuid::Uuid::new_v4().to_string();
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": entra, "client_id": "bench-client", "client_secret": "s3cret",
                "seed": 3, "users": users, "page_size": 999
            })),
        )
        .await;
    company(&stack, "bench").await;
    let file = json!({
        "id": "bench", "name": "Bench AB", "type": "ad_sync", "mode": "user_sync",
        "provider_settings": {"tenant_id": entra, "client_id": "bench-client", "client_secret": "s3cret",
                              "user_filter": {"memberOf": [""]}},
        "pbx_company_id": "bench", "default_caller_id": CALLER_ID, "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail", "attributes.title": "jobTitle"}
    });
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    assert!(ok, "{stderr}");
    let requested = Instant::now();
    let (ok, _, stderr) = stack.cli(&["resync", "bench"], None).await;
    assert!(ok, "{stderr}");
    let first_write = wait_for("the first create", Duration::from_secs(600), || async {
        let stats = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
        (stats["companies"]["bench"]["created"].as_u64().unwrap_or(0) > 0).then(Instant::now)
    })
    .await;
    let run = wait_for("the run to finish", Duration::from_secs(1800), || async {
        let status = stack.cli_json(&["status", "bench", "--json"]).await;
        let run = status[0]["last_run"].clone();
        (!run["finished_at"].is_null()).then_some(run)
    })
    .await;
    let finished = Instant::now();
    assert_eq!(run["counts"]["created"].as_u64(), Some(users), "{run:#}");
    let apply_secs = (finished - first_write).as_secs_f64();
    let run_secs = (finished - requested).as_secs_f64();

    println!("users: {users}, PBX calls in flight per tenant: {in_flight}, one applier replica");
    println!(
        "pbx-sim raw POST rate:   {:>8.0} POST/s  ({users} in {raw_secs:.1} s)",
        users as f64 / raw_secs
    );
    println!(
        "applier create rate:     {:>8.0} users/s ({users} in {apply_secs:.1} s, first create to run end)",
        users as f64 / apply_secs
    );
    println!(
        "whole first sync:        {:>8.0} users/s ({run_secs:.1} s from resync to run end: fetch, diff, apply)",
        users as f64 / run_secs
    );
}

async fn company(stack: &Stack, id: &str) {
    stack
        .pbx_call(
            Method::PUT,
            &format!("/_sim/companies/{id}"),
            Some(json!({
                "templates": [{"id": "standard", "name": "Standard"}],
                "numbers": [{"number": CALLER_ID, "kind": "main"}]
            })),
        )
        .await;
}
