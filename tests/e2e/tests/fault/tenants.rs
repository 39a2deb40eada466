//! A hundred small tenants synced at once, one of them with a wrong client
//! secret: its run fails and its error mail arrives, every other tenant is
//! synced and passes the audit.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{
    wait_for, workspace_target, Audit, AuditReport, Backends, CaseRecord, PrivateRabbit, Stack,
};

use crate::case::{tenant_file, CALLER_ID, CLIENT_ID, CLIENT_SECRET};

const TENANTS: usize = 100;
/// The tenant whose client secret is wrong.
const BAD: usize = 37;
/// Users per tenant in the scope group (and a few more outside it).
const MEMBERS: u64 = 20;
const SCOPE_GROUP: &str = "Telephony";
/// Audits at once: each runs the CLI and reads both simulators.
const AUDITS_AT_ONCE: usize = 20;
const RUNS_DEADLINE: Duration = Duration::from_secs(600);

pub fn id(n: usize) -> String {
    format!("t{n:03}")
}

fn entra(n: usize) -> String {
    format!("7b0c2d1e-3f4a-4b5c-8d6e-7f8091a2{n:04x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn a_hundred_tenants_one_with_wrong_credentials() {
    let started = Instant::now();
    let logs = workspace_target()
        .join("e2e-logs")
        .join("hundred_tenants-servers");
    std::fs::create_dir_all(&logs).expect("the servers' log folder");
    let rabbit = PrivateRabbit::start(&logs).await;
    let stack = Stack::start_on("hundred_tenants", rabbit.backends(Backends::shared()), Vec::new()).await;
    for n in 0..TENANTS {
        let secret = if n == BAD { "not-the-secret" } else { CLIENT_SECRET };
        add_tenant(&stack, n, secret).await;
    }
    for n in 0..TENANTS {
        let (ok, _, stderr) = stack.cli(&["resync", &id(n)], None).await;
        assert!(ok, "resync {} failed: {stderr}", id(n));
    }
    let lines = wait_for("every tenant's run to end", RUNS_DEADLINE, || async {
        let lines = stack.cli_json(&["status", "--json"]).await;
        let lines = lines.as_array()?.clone();
        let done = lines.len() == TENANTS && lines.iter().all(|l| !l["last_run"]["finished_at"].is_null());
        done.then_some(lines)
    })
    .await;

    let mut problems = Vec::new();
    let bad = lines
        .iter()
        .find(|l| l["id"] == id(BAD))
        .expect("the bad tenant's status");
    let error = bad["last_run"]["error"].as_str().unwrap_or("");
    if bad["last_run"]["state"] != "failed" || !error.contains("7000215") {
        problems.push(format!(
            "{}'s run did not fail on its wrong secret: {bad}",
            id(BAD)
        ));
    }
    let error_to = format!("it@{}.example", id(BAD));
    let mailed = usersync_e2e::poll_until(Duration::from_secs(60), || async {
        stack
            .mails()
            .iter()
            .any(|m| {
                m.lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("To: {error_to}")))
            })
            .then_some(())
    })
    .await;
    if mailed.is_none() {
        problems.push(format!("no error mail to {error_to}"));
    }

    let good: Vec<usize> = (0..TENANTS).filter(|n| *n != BAD).collect();
    let mut reports: Vec<(String, AuditReport)> = Vec::new();
    for chunk in good.chunks(AUDITS_AT_ONCE) {
        let audits = chunk.iter().map(|n| audit(&stack, *n));
        reports.extend(join_all(audits).await);
    }
    let mut total = AuditReport::default();
    for (tenant, report) in &reports {
        total.users_expected += report.users_expected;
        total.users_present += report.users_present;
        total.user_duplicates += report.user_duplicates;
        total.user_losses += report.user_losses;
        total.wrong_values += report.wrong_values;
        total.not_deleted += report.not_deleted;
        total.mails_expected += report.mails_expected;
        total.mail_duplicates += report.mail_duplicates;
        total.mail_losses += report.mail_losses;
        total.runs.extend(report.runs.iter().cloned());
        total
            .problems
            .extend(report.problems.iter().map(|p| format!("{tenant}: {p}")));
        // Queue figures are the vhost's: the same in every report.
        total.left_in_queues = report.left_in_queues.clone();
        total.dead_lettered = report.dead_lettered;
        total.redelivered = report.redelivered;
    }
    total.mails_received = reports.first().map_or(0, |(_, r)| r.mails_received);
    total.problems.extend(problems);
    let record = CaseRecord {
        case: "hundred_tenants_one_bad".to_owned(),
        injected: format!(
            "a wrong client secret for 1 of {TENANTS} tenants ({} users each)",
            MEMBERS
        ),
        when: "from the start: all tenants' runs at once".to_owned(),
        passed: total.passed(),
        recover_secs: None,
        redelivered: Some(total.redelivered),
        duplicates: Some(total.duplicates()),
        losses: Some(total.losses()),
        wall_secs: started.elapsed().as_secs_f64().round(),
        users: (MEMBERS as usize) * good.len(),
        report: total.clone(),
    };
    let path = record.write();
    assert!(
        total.passed(),
        "the audit failed (record in {}, logs in {}): {:#?}",
        path.display(),
        stack.logs.display(),
        total.problems
    );
}

/// The Graph tenant, the PBX company and the tenant file (with `secret`) of
/// tenant `n` (each with its own mail domain and addresses).
pub async fn add_tenant(stack: &Stack, n: usize, secret: &str) {
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": entra(n), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "seed": n, "users": MEMBERS + 5, "groups": [{"name": SCOPE_GROUP, "members": MEMBERS}],
                "page_size": 10, "domain": format!("{}.example", id(n))
            })),
        )
        .await;
    stack
        .pbx_call(
            Method::PUT,
            &format!("/_sim/companies/{}", id(n)),
            Some(json!({
                "templates": [{"id": "standard", "name": "Standard"}],
                "numbers": [{"number": CALLER_ID, "kind": "main"}]
            })),
        )
        .await;
    let mut file: Value = serde_json::from_str(&tenant_file()).expect("the sample tenant file");
    file["id"] = json!(id(n));
    file["pbx_company_id"] = json!(id(n));
    file["error_notification_email"] = json!(format!("it@{}.example", id(n)));
    file["welcome_mail_copy_to"] = json!(format!("admin@{}.example", id(n)));
    file["provider_settings"] = json!({
        "tenant_id": entra(n), "client_id": CLIENT_ID, "client_secret": secret,
        "user_filter": {"memberOf": [SCOPE_GROUP]}
    })
    .to_string()
    .into();
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    assert!(ok, "tenant apply {} failed: {stderr}", id(n));
}

/// The audit of tenant `n` after its one run.
pub async fn audit(stack: &Stack, n: usize) -> (String, AuditReport) {
    let tenant = id(n);
    let entra = entra(n);
    let admin = format!("admin@{tenant}.example");
    let report = Audit {
        stack,
        tenant: &tenant,
        pbx_company: &tenant,
        entra_tenant: &entra,
        scope_group: Some(SCOPE_GROUP),
        caller_id: CALLER_ID,
        template: "standard",
        removed: &[],
        admin_copy_to: Some(&admin),
        runs: 1,
        expect_dlq: false,
        expected_failures: &[],
        foreign: &[],
        settle: Duration::from_secs(60),
    }
    .run()
    .await;
    (tenant, report)
}
