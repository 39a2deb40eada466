//! The fairness figure: how long a small tenant's manual resync takes while a
//! big tenant's first sync is in flight, on this machine.
//!
//!     cargo build --workspace --bins
//!     cargo run -p usersync-e2e --example fairness            # 100,000 users
//!     FAIRNESS_BIG_USERS=20000 cargo run -p usersync-e2e --example fairness
//!
//! Prints the figures; needs what the end-to-end tests need (scripts/services-up).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack};

const CLIENT_ID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const CLIENT_SECRET: &str = "s3cret~value";
const CALLER_ID: &str = "46812345600";

async fn tenant(stack: &Stack, id: &str, entra: &str, users: u64) {
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(
                json!({"tenant_id": entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                        "seed": users, "users": users, "page_size": 500}),
            ),
        )
        .await;
    stack
        .pbx_call(
            Method::PUT,
            &format!("/_sim/companies/{id}"),
            Some(json!({"templates": [{"id": "standard", "name": "Standard"}],
                        "numbers": [{"number": CALLER_ID, "kind": "main"}]})),
        )
        .await;
    let file = json!({
        "id": id, "name": id, "type": "ad_sync", "mode": "user_sync", "welcome_mail": false,
        "delete_after_days": 7, "error_notification_email": "it@example.com",
        "error_notification_level": "error",
        "provider_settings": {"tenant_id": entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                              "user_filter": {"memberOf": []}},
        "pbx_company_id": id, "default_caller_id": CALLER_ID, "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname",
                          "pstn_fixed": "businessPhones[0]"},
        "schedule": {"at": "02:00", "timezone": "Europe/Stockholm"}
    });
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    assert!(ok, "{stderr}");
}

async fn last_run(stack: &Stack, id: &str) -> Value {
    stack.cli_json(&["status", id, "--json"]).await[0]["last_run"].clone()
}

/// Times `usersync resync small --wait` (10 minutes at most) and prints the figure.
async fn small_resync(stack: &Stack, small: &str, when: &str) {
    let started = Instant::now();
    let (ok, out, stderr) = stack
        .cli(&["resync", small, "--wait", "--timeout", "600"], None)
        .await;
    let took = started.elapsed().as_secs_f64();
    let big = last_run(stack, "big").await;
    let writes = stack.pbx_call(Method::GET, "/_sim/stats", None).await["companies"]["big"]["writes"].clone();
    if ok {
        let outcome = out.lines().last().unwrap_or_default();
        println!("{small} (50 users) first sync {when}: {took:.2} s, request to completion ({outcome})");
    } else {
        println!(
            "{small} (50 users) first sync {when}: not done after {took:.0} s ({})",
            stderr.trim()
        );
    }
    println!(
        "  big run meanwhile: {}, {writes} PBX writes so far",
        big["state"]
    );
}

/// Whether any differ replica logged `needle` for `tenant` (the stack's logs are files).
fn differ_logged(stack: &Stack, needle: &str, tenant: &str) -> bool {
    let tenant = format!("\"{tenant}\"");
    std::fs::read_dir(&stack.logs)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("usersync-differ"))
        .any(|entry| {
            std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains(needle) && line.contains(&tenant))
        })
}

#[tokio::main]
async fn main() {
    let big_users: u64 = std::env::var("FAIRNESS_BIG_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stack = Stack::start("fairness").await;
    tenant(&stack, "big", "00000000-0000-4000-8000-0000000000b1", big_users).await;
    // Two small tenants, so each measurement is a first sync that creates 50 users.
    tenant(&stack, "small1", "00000000-0000-4000-8000-0000000000a1", 50).await;
    tenant(&stack, "small2", "00000000-0000-4000-8000-0000000000a2", 50).await;

    let (ok, _, stderr) = stack.cli(&["resync", "big"], None).await;
    assert!(ok, "{stderr}");
    let big_started = Instant::now();
    // In flight: planning done and changes being applied, the heaviest phase.
    wait_for("the big run to apply", Duration::from_secs(1800), || async {
        (last_run(&stack, "big").await["state"] == "applying").then_some(())
    })
    .await;
    println!(
        "big tenant ({big_users} users): applying after {:.1} s",
        big_started.elapsed().as_secs_f64()
    );

    // 1. While the big run's changes are still being handed to the applier.
    small_resync(&stack, "small1", "while the big run's changes are being queued").await;
    // 2. Once every change of the big run waits in the applier's queue.
    wait_for(
        "the big run's changes to be queued",
        Duration::from_secs(1800),
        || async { differ_logged(&stack, "changes handed to the applier", "big").then_some(()) },
    )
    .await;
    println!(
        "big tenant: all changes queued after {:.1} s",
        big_started.elapsed().as_secs_f64()
    );
    small_resync(&stack, "small2", "with all the big run's changes queued").await;
    if std::env::var("FAIRNESS_WAIT_BIG").is_ok() {
        wait_for("the big run to end", Duration::from_secs(7200), || async {
            (!last_run(&stack, "big").await["finished_at"].is_null()).then_some(())
        })
        .await;
        println!(
            "big tenant's first sync: {:.1} s",
            big_started.elapsed().as_secs_f64()
        );
    }
}
