//! Microsoft Graph misbehaving in the middle of the first round: a storm of
//! 429s with a fractional `Retry-After`, bursts of 503s, and a 410 that
//! sends the fetcher back to the start of the round.

use serde_json::json;

use crate::case::Expect;
use crate::kills::Probe;
use crate::strike::{graph_fault, graph_faults_met, mid_run};

const USERS_DELTA: &str = "/v1.0/users/delta";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn graph_429_storm_with_fractional_retry_after_mid_round() {
    mid_run(
        "graph_429_storm",
        Probe::Pages,
        25,
        Probe::Pages,
        "Graph 429 on 30 users-delta requests in a row, Retry-After 0.5",
        async |case| {
            graph_fault(
                case,
                json!({"kind": "throttle", "retry_after": "0.5", "count": 30, "path_prefix": USERS_DELTA}),
            )
            .await;
            let problems = graph_faults_met(case, 30).await;
            (String::new(), Expect::problems(problems))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn graph_503_bursts_mid_round() {
    mid_run(
        "graph_503_bursts",
        Probe::Pages,
        20,
        Probe::Pages,
        "Graph 503 in 3 bursts of 3 users-delta requests, 4 requests apart",
        async |case| {
            // Queued one after the other: each burst skips 4 requests after the one before it.
            for skip in [0, 4, 4] {
                graph_fault(
                    case,
                    json!({"kind": "unavailable", "count": 3, "skip": skip, "path_prefix": USERS_DELTA}),
                )
                .await;
            }
            let problems = graph_faults_met(case, 9).await;
            (String::new(), Expect::problems(problems))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn graph_410_gone_mid_round_restarts_the_round() {
    mid_run(
        "graph_410_gone",
        Probe::Pages,
        25,
        Probe::Pages,
        "Graph 410 Gone on a users-delta next link (3 pages later)",
        async |case| {
            graph_fault(
                case,
                json!({"kind": "gone", "skip": 3, "path_prefix": USERS_DELTA}),
            )
            .await;
            let problems = graph_faults_met(case, 1).await;
            (String::new(), Expect::problems(problems))
        },
    )
    .await;
}
