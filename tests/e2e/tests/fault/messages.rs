//! Bad and repeated messages in the middle of a run: a poison message on
//! each stage's work queue, and a second copy of every message type.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use usersync_e2e::inject::{Captured, PIPELINE, RESYNC, ROUTES};
use usersync_e2e::wait_for;

use crate::case::{after, Case, Expect};
use crate::kills::Probe;
use crate::strike::{mid_run, pbx_stats};

/// One poison message per stage: (stage, exchange, routing key, AMQP type, body).
/// Each is not a valid message of that stage's type: wrong JSON types, not
/// JSON at all, JSON of the wrong shape, and a list.
const POISON: [(&str, &str, &str, &str, &str); 4] = [
    ("fetcher", RESYNC, "manual", "usersync.resync.v1", r#"{"tenant_id": 42, "full": "yes"}"#),
    ("differ", PIPELINE, "usersync.differ.pages", "usersync.directory-page.v1", "this is not JSON"),
    ("applier", PIPELINE, "usersync.applier.changes", "usersync.change-batch.v1", r#"{"run_id": "poison"}"#),
    ("notifier", PIPELINE, "usersync.notifier.events", "usersync.event.v1", "[]"),
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
        let here: Vec<&Value> = letters.iter().filter(|l| l["message_id"] == id.as_str()).collect();
        match here.as_slice() {
            [letter] if letter["stage"] == stage && letter["reason"].as_str().is_some_and(|r| !r.is_empty()) => {}
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
    let expect = Expect {
        problems,
        ..Expect::default()
    };
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
    wait_for("one captured message of each type", Duration::from_secs(60), || async {
        let taken = case.stack.take_captured(CAPTURE, 200).await;
        let mut found = found.borrow_mut();
        for message in taken {
            if kinds.contains(&message.kind()) && !found.contains_key(message.kind()) {
                found.insert(message.kind().to_owned(), message);
            }
        }
        (found.len() == kinds.len()).then_some(())
    })
    .await;
    found.into_inner()
}
