//! Bad and repeated messages in the middle of a run: a poison message on
//! each stage's work queue, and a second copy of every message type.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use usersync_e2e::inject::{Captured, PIPELINE, RESYNC, ROUTES};
use usersync_e2e::wait_for;

use crate::case::{after, Case, Expect, CLIENT_SECRET};
use crate::kills::Probe;
use crate::strike::{mid_run, pbx_stats};
use crate::tenants;

/// One poison message per stage: (stage, exchange, routing key, AMQP type, body).
/// Each is not a valid message of that stage's type: wrong JSON types, not
/// JSON at all, JSON of the wrong shape, and a list.
const POISON: [(&str, &str, &str, &str, &str); 4] = [
    (
        "fetcher",
        RESYNC,
        "manual",
        "usersync.resync.v1",
        r#"{"tenant_id": 42, "full": "yes"}"#,
    ),
    (
        "differ",
        PIPELINE,
        "usersync.differ.pages",
        "usersync.directory-page.v1",
        "this is not JSON",
    ),
    (
        "applier",
        PIPELINE,
        "usersync.applier.changes",
        "usersync.change-batch.v1",
        r#"{"run_id": "poison"}"#,
    ),
    (
        "notifier",
        PIPELINE,
        "usersync.notifier.events",
        "usersync.event.v1",
        "[]",
    ),
];

/// How long a poison message may take to reach its DLQ.
const PARKED_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_on_each_stage_lands_in_that_stages_dlq() {
    mid_run(
        "poison_each_stage",
        Probe::Creates,
        30,
        Probe::Creates,
        "a body that is no valid message of its type on each of the four work queues",
        async |case| {
            for (stage, exchange, routing_key, kind, body) in POISON {
                let properties = json!({
                    "type": kind, "message_id": format!("poison-{stage}"), "content_type": "application/json"
                });
                case.stack.publish(exchange, routing_key, body, properties).await;
            }
            let parked = wait_for("the four poison messages in the DLQs", PARKED_WITHIN, || async {
                case.assert_alive();
                let letters = case.stack.cli_json(&["dlq", "list", "--json"]).await;
                (letters.as_array().map_or(0, Vec::len) >= POISON.len()).then_some(letters)
            })
            .await;
            let expect = Expect {
                dlq: true,
                problems: dlq_problems(&parked),
                ..Expect::default()
            };
            (String::new(), expect)
        },
    )
    .await;
}

/// What is wrong with the DLQs' content: exactly one message per stage, the
/// poison published to that stage's queue, with a reason.
fn dlq_problems(letters: &Value) -> Vec<String> {
    let letters = letters.as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    if letters.len() != POISON.len() {
        problems.push(format!(
            "{} messages in the DLQs, expected the {} poison ones: {letters:?}",
            letters.len(),
            POISON.len()
        ));
    }
    for (stage, ..) in POISON {
        let id = format!("poison-{stage}");
        let here: Vec<&Value> = letters
            .iter()
            .filter(|l| l["message_id"] == id.as_str())
            .collect();
        match here.as_slice() {
            [letter]
                if letter["stage"] == stage && letter["reason"].as_str().is_some_and(|r| !r.is_empty()) => {}
            other => problems.push(format!(
                "{id} should be parked once in usersync.{stage}.dlq with a reason, found {other:?}"
            )),
        }
    }
    problems
}

/// Where the capture queue gets its copies of the run's messages.
const CAPTURE: &str = "capture.every-message";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn a_second_copy_of_every_message_type_changes_nothing() {
    let mut case = Case::start("duplicate_every_type", false).await;
    case.stack.capture(CAPTURE, &ROUTES).await;
    case.resync().await;
    let seen = Probe::Creates.wait_percent(&case, 30).await;
    let struck = Instant::now();
    case.struck(
        "a second copy of a resync request, a directory page, a change batch and a notifier event",
        after(seen, case.members, Probe::Creates.noun()),
    );
    let copies = one_of_each_type(&case).await;
    for message in copies.values() {
        case.stack.publish_again(message).await;
    }
    let back = case.created().await;
    let resumed = case.wait_progress("PBX creates", back, || case.created()).await;
    case.wait_runs_ended().await;

    let mut problems = Vec::new();
    let runs = case.stack.cli_json(&["runs", "acme", "--json"]).await;
    if runs.as_array().map_or(0, Vec::len) != 1 {
        problems.push(format!("the repeated resync request started another run: {runs}"));
    }
    // Nothing was injected on the PBX: every POST must be a new user's first.
    let stats = pbx_stats(&case).await;
    if stats["posts"] != stats["created"] || stats["idempotent_replays"] != 0 {
        problems.push(format!("a change was written to the PBX twice: {stats}"));
    }
    let expect = Expect::problems(problems);
    case.finish_with(Some(resumed - struck), expect).await;
}

/// Takes the captured messages off the capture queue until it has one of
/// each of the four types (the first of each: by now long since handled).
async fn one_of_each_type(case: &Case) -> BTreeMap<String, Captured> {
    let kinds = [
        "usersync.resync.v1",
        "usersync.directory-page.v1",
        "usersync.change-batch.v1",
        "usersync.event.v1",
    ];
    // Filled across the polls of the wait; borrowed only between its awaits.
    let found: RefCell<BTreeMap<String, Captured>> = RefCell::default();
    wait_for(
        "one captured message of each type",
        Duration::from_secs(60),
        || async {
            let taken = case.stack.take_captured(CAPTURE, 200).await;
            let mut found = found.borrow_mut();
            for message in taken {
                if kinds.contains(&message.kind()) && !found.contains_key(message.kind()) {
                    found.insert(message.kind().to_owned(), message);
                }
            }
            (found.len() == kinds.len()).then_some(())
        },
    )
    .await;
    found.into_inner()
}

/// The tenant a parked resync request asks for before it exists.
const LATE_TENANT: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn a_parked_request_replayed_once_fixed_is_handled_once() {
    let mut case = Case::start("dlq_replay", false).await;
    case.resync().await;
    let seen = Probe::Creates.wait_percent(&case, 30).await;
    let late = tenants::id(LATE_TENANT);
    case.struck(
        &format!("a resync request for tenant {late} before it exists (parked), then the tenant applied and `usersync dlq replay fetcher`"),
        after(seen, case.members, Probe::Creates.noun()),
    );
    let request_id = uuid::Uuid::new_v4().to_string();
    case.stack
        .publish(
            RESYNC,
            "manual",
            &json!({"tenant_id": late}).to_string(),
            json!({"type": "usersync.resync.v1", "message_id": request_id, "content_type": "application/json"}),
        )
        .await;
    let parked = wait_for("the request in usersync.fetcher.dlq", PARKED_WITHIN, || async {
        case.assert_alive();
        let letters = case.stack.cli_json(&["dlq", "list", "fetcher", "--json"]).await;
        (letters.as_array().map_or(0, Vec::len) >= 1).then_some(letters)
    })
    .await;
    let mut problems = Vec::new();
    let reason = parked[0]["reason"].as_str().unwrap_or("");
    if parked.as_array().map_or(0, Vec::len) != 1
        || parked[0]["message_id"] != request_id.as_str()
        || !reason.contains(&late)
    {
        problems.push(format!(
            "expected the one request for {late} parked with a reason naming it: {parked}"
        ));
    }

    // The fix, then the replay.
    tenants::add_tenant(&case.stack, LATE_TENANT, CLIENT_SECRET).await;
    let replayed = Instant::now();
    let (ok, stdout, stderr) = case.stack.cli(&["dlq", "replay", "fetcher"], None).await;
    assert!(ok, "dlq replay fetcher failed: {stderr}");
    if !stdout.contains("1 message(s) moved") {
        problems.push(format!("`usersync dlq replay fetcher` said: {stdout}"));
    }
    let runs = wait_for(
        &format!("{late}'s run to end"),
        Duration::from_secs(300),
        || async {
            case.assert_alive();
            let runs = case.stack.cli_json(&["runs", &late, "--json"]).await;
            let list = runs.as_array()?;
            (!list.is_empty() && list.iter().all(|r| !r["finished_at"].is_null())).then_some(runs)
        },
    )
    .await;
    let handled = replayed.elapsed();
    if runs.as_array().map_or(0, Vec::len) != 1
        || runs[0]["id"] != request_id.as_str()
        || runs[0]["state"] != "succeeded"
    {
        problems.push(format!(
            "the replayed request should make exactly one run {request_id}, succeeded: {runs}"
        ));
    }
    let (tenant, report) = tenants::audit(&case.stack, LATE_TENANT).await;
    problems.extend(report.problems.iter().map(|p| format!("{tenant}: {p}")));
    let left = case.stack.cli_json(&["dlq", "list", "--json"]).await;
    if left != json!([]) {
        problems.push(format!("the DLQs are not empty after the replay: {left}"));
    }
    case.finish_with(Some(handled), Expect::problems(problems)).await;
}
