//! One fault case from start to record: a stack on the given backends, a
//! seeded directory of a few thousand users, the first run (the case injects
//! its fault while it runs), a second run that removes some users, the audit,
//! and the result record.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{
    wait_for, workspace_target, Audit, AuditReport, Backends, CaseRecord, PrivatePostgres, PrivateRabbit,
    Stack,
};

// The sample tenant of the other e2e tests: its file, ids and mapping.
#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

pub use support::{tenant_file, CALLER_ID, CLIENT_ID, CLIENT_SECRET, ENTRA_TENANT};

const TENANT: &str = "acme";
const SCOPE_GROUP: &str = "Telephony";
const ADMIN_COPY_TO: &str = "pbx-admin@acme.example";

/// Users in the directory and in the scope group (`FAULT_USERS` overrides the latter).
fn sizes() -> (u64, u64) {
    let members = std::env::var("FAULT_USERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    (members + members / 4, members)
}
/// Users per Graph page: enough pages that a fault can land mid-fetch.
const PAGE_SIZE: u64 = 50;
/// Users taken out of scope each way before the second run: 9 in all stays
/// under the mass-deletion guard's default `min_users` of 10, at any size.
const REMOVED_EACH: usize = 3;
/// A run of a few thousand users in a debug build on a loaded machine, with a fault.
const RUN_DEADLINE: Duration = Duration::from_secs(600);
/// How long the audit waits for the stack to settle after the second run: a
/// bound, not a pace; the welcome mails of a few thousand users can take
/// minutes on a loaded 2-core machine, and the audit ends as soon as they are in.
const AUDIT_SETTLE: Duration = Duration::from_secs(300);

/// Connection slots of a private PostgreSQL: four services' pools of 8, the
/// CLI and the audit fit with room to spare.
const PRIVATE_MAX_CONNECTIONS: u32 = 60;

pub struct Case {
    pub name: &'static str,
    // Declared before the servers, so the stack stops before they do.
    pub stack: Stack,
    /// Every case runs on a private RabbitMQ node: queue figures from a node
    /// no other test loads, refreshed every second, and a broker it may restart.
    pub rabbit: PrivateRabbit,
    /// A private PostgreSQL cluster, for the cases that restart or fill it.
    pub postgres: Option<PrivatePostgres>,
    pub members: u64,
    started: Instant,
    runs: usize,
    /// What was injected and when, once it was (see [`Case::struck`]).
    injected: String,
    when: String,
    /// Set when the case reached its audit; until then Drop records a failure.
    audited: bool,
}

impl Case {
    /// A stack on a private RabbitMQ node (and a private PostgreSQL when
    /// `private_postgres`, else the shared one) with the seeded directory and
    /// the tenant applied; no run yet.
    pub async fn start(name: &'static str, private_postgres: bool) -> Case {
        Case::start_sized(name, private_postgres, sizes()).await
    }

    /// Like [`Case::start`], with `(users, members)` in the directory and the scope group.
    pub async fn start_sized(
        name: &'static str,
        private_postgres: bool,
        (users, members): (u64, u64),
    ) -> Case {
        let started = Instant::now();
        let logs = workspace_target()
            .join("e2e-logs")
            .join(format!("{name}-servers"));
        std::fs::create_dir_all(&logs).expect("the servers' log folder");
        let rabbit = PrivateRabbit::start(&logs).await;
        let postgres = private_postgres.then(|| PrivatePostgres::start(&logs, PRIVATE_MAX_CONNECTIONS));
        let mut backends = rabbit.backends(Backends::shared());
        if let Some(postgres) = &postgres {
            backends = postgres.backends(backends);
        }
        let stack = Stack::start_on(name, backends, Vec::new()).await;
        stack
            .graph_call(
                Method::POST,
                "/_sim/tenants",
                Some(json!({
                    "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "seed": 11, "users": users, "groups": [{"name": SCOPE_GROUP, "members": members}],
                    "page_size": PAGE_SIZE
                })),
            )
            .await;
        stack
            .pbx_call(
                Method::PUT,
                "/_sim/companies/acme",
                Some(json!({
                    "templates": [{"id": "standard", "name": "Standard"}],
                    "numbers": [{"number": CALLER_ID, "kind": "main"}]
                })),
            )
            .await;
        let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
        assert!(ok, "tenant apply failed: {stderr}");
        Case {
            name,
            stack,
            rabbit,
            postgres,
            members,
            started,
            runs: 0,
            injected: "nothing yet".to_owned(),
            when: "before the fault".to_owned(),
            audited: false,
        }
    }

    /// Asks for a run (`usersync resync`).
    pub async fn resync(&mut self) {
        let (ok, _, stderr) = self.stack.cli(&["resync", TENANT], None).await;
        assert!(ok, "resync failed: {stderr}");
        self.runs += 1;
    }

    /// Counts a run something else asked for (e.g. `usersync approve-deletions`).
    pub fn requested_run(&mut self) {
        self.runs += 1;
    }

    /// Waits until the tenant has `self.runs` runs and all have ended.
    pub async fn wait_runs_ended(&self) {
        wait_for(
            &format!("{} runs of {TENANT} to end", self.runs),
            RUN_DEADLINE,
            || async {
                self.assert_alive();
                self.runs_ended().await.then_some(())
            },
        )
        .await;
    }

    /// Whether the tenant has `self.runs` runs and all have ended.
    async fn runs_ended(&self) -> bool {
        let (ok, stdout, _) = self.stack.cli(&["runs", TENANT, "--json"], None).await;
        let runs: Option<Value> = serde_json::from_str(&stdout).ok().filter(|_| ok);
        runs.as_ref()
            .and_then(Value::as_array)
            .is_some_and(|runs| runs.len() >= self.runs && runs.iter().all(|r| !r["finished_at"].is_null()))
    }

    /// Users created in the PBX so far (the sim's counter).
    pub async fn created(&self) -> u64 {
        let stats = self.stack.pbx_call(Method::GET, "/_sim/stats", None).await;
        stats["companies"]["acme"]["created"].as_u64().unwrap_or(0)
    }

    /// Users-delta pages the Graph sim has served.
    pub async fn pages_served(&self) -> u64 {
        let stats = self
            .stack
            .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/stats"), None)
            .await;
        stats["requests"]["users_delta"].as_u64().unwrap_or(0)
    }

    /// Users-delta pages a full round takes: the fetcher pages the scope
    /// group's members, and the last page carries the delta link.
    pub fn pages(&self) -> u64 {
        self.members.div_ceil(PAGE_SIZE) + 1
    }

    /// Welcome mails and copies received so far.
    pub fn mails(&self) -> u64 {
        self.stack.mail_count()
    }

    /// Waits until the first sync's welcome mails and admin copies have all
    /// arrived (they go on after the run has ended).
    pub async fn wait_mails(&self) {
        let all = 2 * self.members;
        wait_for(
            &format!("{all} welcome mails and copies"),
            RUN_DEADLINE,
            || async {
                self.assert_alive();
                (self.mails() >= all).then_some(())
            },
        )
        .await;
    }

    /// Waits until `progress` exceeds `at`: the first sign of work after a
    /// fault. A run can also finish while the fault lasts (a service works
    /// through what it holds while the broker is away), leaving nothing to
    /// move: then the run's end is the sign.
    pub async fn wait_progress<F, Fut>(&self, what: &str, at: u64, progress: F) -> Instant
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = u64>,
    {
        wait_for(
            &format!("{what} to move past {at}, or the runs to end"),
            RUN_DEADLINE,
            || async {
                self.assert_alive();
                (progress().await > at || self.runs_ended().await).then(Instant::now)
            },
        )
        .await
    }

    /// Fails the case at once when a service ended by itself: no point waiting for it.
    pub fn assert_alive(&self) {
        let exited = self.stack.exited_services();
        assert!(
            exited.is_empty(),
            "{}: services exited on their own: {} (logs in {})",
            self.name,
            exited.join(", "),
            self.stack.logs.display()
        );
    }

    /// A test of the suite itself, not a fault case: no record is written for it.
    pub fn no_record(&mut self) {
        self.audited = true;
    }

    /// Notes the fault for the record: what was injected and when.
    pub fn struck(&mut self, injected: &str, when: String) {
        self.injected = injected.to_owned();
        self.when = when;
    }

    /// The case's record; `audited` false: the report holds only why it stopped.
    fn record(&self, report: &AuditReport, recover: Option<Duration>, audited: bool) -> CaseRecord {
        CaseRecord {
            case: self.name.to_owned(),
            injected: self.injected.clone(),
            when: self.when.clone(),
            passed: audited && report.passed(),
            recover_secs: recover.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            redelivered: audited.then_some(report.redelivered),
            duplicates: audited.then(|| report.duplicates()),
            losses: audited.then(|| report.losses()),
            wall_secs: self.started.elapsed().as_secs_f64().round(),
            users: self.members as usize,
            report: report.clone(),
        }
    }

    /// After the faulty first run: lets it end, removes users three ways
    /// (deleted, disabled, out of the group), runs again, audits, writes
    /// the record and fails the test if the audit did.
    pub async fn finish(self, recover: Option<Duration>) -> AuditReport {
        self.finish_with(recover, Expect::default()).await
    }

    /// [`Case::finish`] for a case that expects failures, foreign PBX users,
    /// parked messages, or found problems of its own (they fail the record too).
    pub async fn finish_with(mut self, recover: Option<Duration>, expect: Expect) -> AuditReport {
        let mut removed = self.second_run().await;
        removed.extend(expect.removed.iter().cloned());
        let mut report = self.audit_expecting(&removed, AUDIT_SETTLE, &expect).await;
        report.problems.extend(expect.problems);
        self.audited = true;
        let path = self.record(&report, recover, true).write();
        assert!(
            report.passed(),
            "{}: the audit failed (record in {}, logs in {}): {:#?}",
            self.name,
            path.display(),
            self.stack.logs.display(),
            report
        );
        report
    }

    /// Lets the first run end, takes 9 users out of scope (3 each way), runs again and
    /// lets that end; returns the removed users' directory objects.
    pub async fn second_run(&mut self) -> Vec<Value> {
        self.wait_runs_ended().await;
        let removed = self.remove_some(REMOVED_EACH).await;
        self.resync().await;
        self.wait_runs_ended().await;
        removed
    }

    /// The audit of this case's tenant, waiting up to `settle` for the stack to settle.
    pub async fn audit(&self, removed: &[Value], settle: Duration) -> AuditReport {
        self.audit_expecting(removed, settle, &Expect::default()).await
    }

    async fn audit_expecting(&self, removed: &[Value], settle: Duration, expect: &Expect) -> AuditReport {
        let audit = Audit {
            stack: &self.stack,
            tenant: TENANT,
            pbx_company: "acme",
            entra_tenant: ENTRA_TENANT,
            scope_group: Some(SCOPE_GROUP),
            caller_id: CALLER_ID,
            template: "standard",
            removed,
            admin_copy_to: Some(ADMIN_COPY_TO),
            runs: self.runs,
            expect_dlq: expect.dlq,
            expected_failures: &expect.failures,
            foreign: &expect.foreign,
            settle,
        };
        audit.run().await
    }

    /// The directory objects of the scope group's members, as they are now.
    pub async fn in_scope_users(&self) -> Vec<Value> {
        let base = format!("/_sim/tenants/{ENTRA_TENANT}");
        let users = self
            .stack
            .graph_call(Method::GET, &format!("{base}/users"), None)
            .await;
        let groups = self
            .stack
            .graph_call(Method::GET, &format!("{base}/groups"), None)
            .await;
        let members: BTreeSet<&str> = groups["value"]
            .as_array()
            .expect("value")
            .iter()
            .find(|g| g["name"] == SCOPE_GROUP)
            .and_then(|g| g["members"].as_array())
            .expect("the scope group's members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        users["value"]
            .as_array()
            .expect("value")
            .iter()
            .filter(|u| u["id"].as_str().is_some_and(|id| members.contains(id)))
            .cloned()
            .collect()
    }

    /// Takes `each` users out of scope each way; returns their directory objects as they were.
    async fn remove_some(&self, each: usize) -> Vec<Value> {
        let users = self
            .stack
            .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/users"), None)
            .await;
        let groups = self
            .stack
            .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/groups"), None)
            .await;
        let group = groups["value"]
            .as_array()
            .expect("value")
            .iter()
            .find(|g| g["name"] == SCOPE_GROUP)
            .expect("the scope group")
            .clone();
        let group_id = group["id"].as_str().expect("group id");
        let members: Vec<&str> = group["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(Value::as_str)
            .take(3 * each)
            .collect();
        let by_id = |id: &str| {
            users["value"]
                .as_array()
                .expect("value")
                .iter()
                .find(|u| u["id"] == id)
                .expect("a member in the user list")
                .clone()
        };
        let base = format!("/_sim/tenants/{ENTRA_TENANT}");
        for (n, id) in members.iter().enumerate() {
            match n / each {
                0 => {
                    self.stack
                        .graph_call(Method::DELETE, &format!("{base}/users/{id}?hard=true"), None)
                        .await
                }
                1 => {
                    self.stack
                        .graph_call(
                            Method::PATCH,
                            &format!("{base}/users/{id}"),
                            Some(json!({"accountEnabled": false})),
                        )
                        .await
                }
                _ => {
                    self.stack
                        .graph_call(
                            Method::DELETE,
                            &format!("{base}/groups/{group_id}/members/{id}"),
                            None,
                        )
                        .await
                }
            };
        }
        members.into_iter().map(by_id).collect()
    }
}

/// What a case expects beyond the plain pass rule (see [`Case::finish_with`]).
#[derive(Default)]
pub struct Expect {
    /// In-scope directory users that must fail (absent from the PBX, no welcome mail).
    pub failures: Vec<String>,
    /// PBX user ids the case placed itself.
    pub foreign: Vec<String>,
    /// Messages parked in DLQs on purpose.
    pub dlq: bool,
    /// Problems the case's own checks found; each fails the record.
    pub problems: Vec<String>,
    /// Directory users (as the Graph simulator listed them) the case itself
    /// took out of scope: the audit expects them deleted, as the ones the
    /// second run removes.
    pub removed: Vec<Value>,
}

impl Expect {
    /// Only the problems the case's own checks found.
    pub fn problems(problems: Vec<String>) -> Expect {
        Expect {
            problems,
            ..Expect::default()
        }
    }
}

impl Drop for Case {
    /// A case that panicked before its audit still leaves a (failed) record.
    fn drop(&mut self) {
        if self.audited {
            return;
        }
        let mut problems = vec!["the case stopped before its audit (see the test's output)".to_owned()];
        let exited = self.stack.exited_services();
        if !exited.is_empty() {
            problems.push(format!("services exited on their own: {}", exited.join(", ")));
        }
        let report = AuditReport {
            problems,
            ..AuditReport::default()
        };
        self.record(&report, None, false).write();
    }
}

/// "after 612 of 2000 creates (31%)".
pub fn after(done: u64, of: u64, what: &str) -> String {
    format!("after {done} of {of} {what} ({}%)", done * 100 / of.max(1))
}
