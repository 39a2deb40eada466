//! The PBX misbehaving in the middle of the first run's creates: throttling,
//! bursts of 503s, 2-second answers, connections cut after the write, and
//! users whose alias a foreign PBX user holds.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Instant;

use crate::case::{after, Case, Expect, ENTRA_TENANT};
use crate::kills::Probe;
use crate::strike::{clear_pbx_faults, mid_run, pbx_counter_reaches, pbx_fault, pbx_stats};

/// The throttle stays on until the PBX has answered this many 429s.
const THROTTLED: u64 = 10;
/// Creates made while every call takes 2 s, before the latency is cleared.
const SLOW_CREATES: u64 = 40;
/// POSTs whose connection is cut after the PBX committed them.
const DROPPED: u64 = 5;
/// Users whose alias a foreign PBX user takes mid-run.
const CONFLICTS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn pbx_throttles_every_50th_create_mid_run() {
    mid_run(
        "pbx_429_throttle",
        Probe::Creates,
        30,
        Probe::Creates,
        "PBX 429 (Retry-After 1) on every 50th POST",
        async |case| {
            pbx_fault(
                case,
                json!({"kind": "throttle", "every": 50, "retry_after": 1, "method": "POST"}),
            )
            .await;
            let problems = pbx_counter_reaches(case, "throttled", THROTTLED).await;
            clear_pbx_faults(case).await;
            (
                format!(", until {THROTTLED} were throttled"),
                Expect::problems(problems),
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn pbx_503_bursts_mid_run() {
    mid_run(
        "pbx_503_bursts",
        Probe::Creates,
        30,
        Probe::Creates,
        "PBX 503 on 20 POSTs in a row, three times (at 30%, 50%, 70% of creates)",
        async |case| {
            pbx_fault(
                case,
                json!({"kind": "status", "status": 503, "count": 20, "method": "POST"}),
            )
            .await;
            for percent in [50, 70] {
                Probe::Creates.wait_percent(case, percent).await;
                pbx_fault(
                    case,
                    json!({"kind": "status", "status": 503, "count": 20, "method": "POST"}),
                )
                .await;
            }
            (String::new(), Expect::default())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn pbx_answers_in_2_seconds_for_a_while_mid_run() {
    mid_run(
        "pbx_latency_2s",
        Probe::Creates,
        30,
        Probe::Creates,
        "PBX latency 2000 ms on every call",
        async |case| {
            let before = case.created().await;
            pbx_fault(case, json!({"kind": "latency", "ms": 2000})).await;
            let problems = pbx_counter_reaches(case, "created", before + SLOW_CREATES).await;
            clear_pbx_faults(case).await;
            (
                format!(", for {SLOW_CREATES} creates, then cleared"),
                Expect::problems(problems),
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn pbx_connection_dropped_after_commit_mid_run() {
    mid_run(
        "pbx_drop_after_commit",
        Probe::Creates,
        30,
        Probe::Creates,
        "PBX connection cut after the POST committed, 5 times",
        async |case| {
            let replays = pbx_stats(case).await["idempotent_replays"].as_u64().unwrap_or(0);
            pbx_fault(case, json!({"kind": "drop", "count": DROPPED, "method": "POST"})).await;
            // Each cut create is sent again under its Idempotency-Key and answered from the record.
            let problems = pbx_counter_reaches(case, "idempotent_replays", replays + DROPPED).await;
            (String::new(), Expect::problems(problems))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn pbx_409_conflicts_fail_only_their_users() {
    let mut case = Case::start("pbx_409_conflicts", false).await;
    case.resync().await;
    let seen = Probe::Creates.wait_percent(&case, 30).await;
    let struck = Instant::now();
    case.struck(
        &format!("{CONFLICTS} users' aliases taken by foreign PBX users (external id of no directory user)"),
        after(seen, case.members, Probe::Creates.noun()),
    );
    let taken = take_aliases(&case).await;
    let back = case.created().await;
    let resumed = case.wait_progress("PBX creates", back, || case.created()).await;
    case.wait_runs_ended().await;
    let mut problems = Vec::new();
    for (object_id, alias, holder) in &taken {
        let explained = case
            .stack
            .cli_json(&["explain", "acme", object_id, "--json"])
            .await;
        let text = explained.to_string();
        if !(text.contains(holder.as_str()) && text.contains("remove or rename that PBX user")) {
            problems.push(format!(
                "user {object_id} (alias {alias}) does not fail naming its holder {holder}: {explained}"
            ));
        }
    }
    let expect = Expect {
        failures: taken.iter().map(|(id, _, _)| id.clone()).collect(),
        foreign: taken.iter().map(|(_, _, holder)| holder.clone()).collect(),
        problems,
        ..Expect::default()
    };
    case.finish_with(Some(resumed - struck), expect).await;
}

/// Creates foreign PBX users (owned by no directory user) holding the
/// aliases of [`CONFLICTS`] in-scope users the run has not created yet,
/// taken from the end of the group (the case removes users from its start);
/// returns (object id, alias, holder's PBX id).
async fn take_aliases(case: &Case) -> Vec<(String, String, String)> {
    let base = format!("/_sim/tenants/{ENTRA_TENANT}");
    let users = case
        .stack
        .graph_call(Method::GET, &format!("{base}/users"), None)
        .await;
    let groups = case
        .stack
        .graph_call(Method::GET, &format!("{base}/groups"), None)
        .await;
    let members: Vec<String> = groups["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|g| g["name"] == "Telephony")
        .expect("the scope group")["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let pbx = case
        .stack
        .pbx_call(Method::GET, "/_sim/companies/acme/users", None)
        .await;
    let created: BTreeSet<&str> = pbx["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["external_id"].as_str())
        .collect();
    let source = |id: &str| -> Value {
        users["value"]
            .as_array()
            .expect("value")
            .iter()
            .find(|u| u["id"] == id)
            .cloned()
            .expect("a member in the user list")
    };
    let mut taken = Vec::new();
    for id in members.iter().rev().filter(|id| !created.contains(id.as_str())) {
        if taken.len() == CONFLICTS {
            break;
        }
        let Some(alias) = source(id)["mailNickname"].as_str().map(str::to_lowercase) else {
            continue;
        };
        // The run may create this user meanwhile: then the alias is taken (409) and the next is tried.
        let response = case
            .stack
            .http
            .post(format!("{}/_sim/companies/acme/users", case.stack.pbx.url))
            .json(&json!({
                "alias": alias, "first_name": "Foreign", "surname": "Holder",
                "pstn_fixed": format!("4699900000{}", taken.len()),
                "external_id": format!("foreign-{}", taken.len())
            }))
            .send()
            .await
            .expect("the PBX sim answers");
        if response.status() == reqwest::StatusCode::CONFLICT {
            continue;
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "creating a foreign PBX user: {status} {body}"
        );
        let holder = body["id"].as_str().expect("the new PBX user's id").to_owned();
        taken.push((id.clone(), alias, holder));
    }
    assert_eq!(
        taken.len(),
        CONFLICTS,
        "enough users not yet created to take the aliases of"
    );
    taken
}
