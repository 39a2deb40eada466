//! The shape of the Graph and PBX cases: the first run starts, the fault is
//! injected once a probe shows the run is well under way, the case times
//! until work moves again after the fault, then finishes with the audit.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use usersync_e2e::{poll_until, wait_for, AuditReport};

use crate::case::{after, Case, Expect, ENTRA_TENANT};
use crate::kills::Probe;

/// How long an injected fault may take to be met in full before the case
/// calls it a problem: the run moved on without meeting it.
const FAULT_MET_WITHIN: Duration = Duration::from_secs(180);

/// How long work may take to move again after a fault.
const RESUME_WITHIN: Duration = Duration::from_secs(600);

/// Starts the first run, waits until `strike` reaches `percent`, runs
/// `fault` (it injects and returns a detail for the record and what the
/// audit expects), times until `resume` moves past its value when `fault`
/// returned, and finishes the case.
pub async fn mid_run<F>(
    name: &'static str,
    strike: Probe,
    percent: u64,
    resume: Probe,
    injected: &str,
    fault: F,
) -> AuditReport
where
    F: AsyncFnOnce(&mut Case) -> (String, Expect),
{
    let mut case = Case::start(name, false).await;
    case.resync().await;
    let seen = strike.wait_percent(&case, percent).await;
    let struck = Instant::now();
    let when = after(seen, strike.total(&case), strike.noun());
    case.struck(injected, when.clone());
    let (detail, mut expect) = fault(&mut case).await;
    case.struck(&format!("{injected}{detail}"), when);
    let back = resume.read(&case).await;
    // Work moves on after the fault, unless the run ended on it: no need to wait then.
    let resumed = wait_for(
        &format!("{} to move past {back}, or the run to end", resume.noun()),
        RESUME_WITHIN,
        || async {
            case.assert_alive();
            if resume.read(&case).await > back {
                return Some(Some(Instant::now()));
            }
            let runs = case.stack.cli_json(&["runs", "acme", "--json"]).await;
            let ended = runs
                .as_array()
                .is_some_and(|r| r.iter().all(|r| !r["finished_at"].is_null()));
            ended.then_some(None)
        },
    )
    .await;
    case.wait_runs_ended().await;
    // A fault the product rides out leaves the run succeeded, not just ended.
    let runs = case.stack.cli_json(&["runs", "acme", "--json"]).await;
    let first = &runs[0];
    if first["state"] != "succeeded" {
        expect.problems.push(format!(
            "the run under the fault ended {} (not succeeded): {}",
            first["state"], first["error"]
        ));
    }
    case.finish_with(resumed.map(|at| at - struck), expect).await
}

/// The Graph sim's counters for the case's tenant.
pub async fn graph_stats(case: &Case) -> Value {
    case.stack
        .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/stats"), None)
        .await
}

/// Injects Graph faults (`POST /_sim/tenants/{t}/faults`).
pub async fn graph_fault(case: &Case, fault: Value) {
    case.stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/faults"),
            Some(fault),
        )
        .await;
}

/// Injects a PBX fault on the case's company.
pub async fn pbx_fault(case: &Case, fault: Value) {
    case.stack
        .pbx_call(Method::POST, "/_sim/companies/acme/faults", Some(fault))
        .await;
}

/// Clears the PBX company's faults (latency and throttles stay until cleared).
pub async fn clear_pbx_faults(case: &Case) {
    case.stack
        .pbx_call(Method::DELETE, "/_sim/companies/acme/faults", None)
        .await;
}

/// The PBX sim's counters for the case's company.
pub async fn pbx_stats(case: &Case) -> Value {
    let stats = case.stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    stats["companies"]["acme"].clone()
}

/// Waits until the Graph sim has served `total` faults; a problem for the
/// record when the run went on without meeting them.
pub async fn graph_faults_met(case: &Case, total: u64) -> Vec<String> {
    let met = poll_until(FAULT_MET_WITHIN, || async {
        case.assert_alive();
        let served = graph_stats(case).await["faults_served"].as_u64().unwrap_or(0);
        (served >= total).then_some(())
    })
    .await;
    if met.is_some() {
        return Vec::new();
    }
    let served = graph_stats(case).await["faults_served"].clone();
    // The rest would hit the next run: cleared, so that run shows what the fault left behind.
    case.stack
        .graph_call(
            Method::DELETE,
            &format!("/_sim/tenants/{ENTRA_TENANT}/faults"),
            None,
        )
        .await;
    vec![format!(
        "the Graph sim served {served} of the {total} injected faults within {FAULT_MET_WITHIN:?} (the rest cleared): the round stopped meeting them"
    )]
}

/// Waits until the PBX sim's counter `field` reaches `at_least`; a problem otherwise.
pub async fn pbx_counter_reaches(case: &Case, field: &str, at_least: u64) -> Vec<String> {
    let met = poll_until(FAULT_MET_WITHIN, || async {
        case.assert_alive();
        let value = pbx_stats(case).await[field].as_u64().unwrap_or(0);
        (value >= at_least).then_some(())
    })
    .await;
    match met {
        Some(()) => Vec::new(),
        None => vec![format!(
            "the PBX sim's `{field}` stayed below {at_least} within {FAULT_MET_WITHIN:?} ({})",
            pbx_stats(case).await
        )],
    }
}
