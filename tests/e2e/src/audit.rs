//! The fault suite's pass rule, checked in one call after a case: the PBX
//! holds every in-scope directory user exactly once with the mapped values,
//! every removed user is deleted, every welcome mail arrived exactly once,
//! every run has an outcome, and no work is left on a queue.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use crate::{poll_until, workspace_target, Stack};

/// What a case expects; the values are those of the e2e sample tenant
/// (alias ← mailNickname, first_name ← givenName, surname, pstn_fixed ←
/// businessPhones[0], email ← mail, attributes.title ← jobTitle).
pub struct Audit<'a> {
    pub stack: &'a Stack,
    /// The usersync tenant id.
    pub tenant: &'a str,
    pub pbx_company: &'a str,
    pub entra_tenant: &'a str,
    /// The group of the tenant's `memberOf` filter; `None`: every enabled user is in scope.
    pub scope_group: Option<&'a str>,
    pub caller_id: &'a str,
    pub template: &'a str,
    /// Directory objects (as read before) of users taken out of scope: their PBX users must be gone,
    /// and they had their welcome mail when they were created.
    pub removed: &'a [Value],
    /// The tenant's `welcome_mail_copy_to`: each created user's copy goes there.
    pub admin_copy_to: Option<&'a str>,
    /// How many runs the case started; each must have ended.
    pub runs: usize,
    /// The case puts messages in a DLQ on purpose (they are reported, not counted against it).
    pub expect_dlq: bool,
    /// In-scope directory users the case makes fail on purpose (e.g. a PBX
    /// conflict): they must be absent from the PBX and get no welcome mail.
    pub expected_failures: &'a [String],
    /// PBX user ids the case placed itself (e.g. the holders of a conflict): not the tenant's.
    pub foreign: &'a [String],
    /// How long to wait for the stack to settle (runs ended, queues empty, mails in).
    pub settle: Duration,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct AuditReport {
    pub users_expected: usize,
    /// In-scope users in the PBX (each counted once).
    pub users_present: usize,
    /// PBX users beyond the first for one external id.
    pub user_duplicates: usize,
    /// Creates the PBX sim counted beyond one per user the case had created
    /// (in scope now or removed): a user created twice, deleted in between or not.
    /// Assumes the case did not reset the sim's stats.
    pub extra_creates: usize,
    /// In-scope users missing from the PBX.
    pub user_losses: usize,
    /// In-scope users whose PBX values differ from the mapped ones.
    pub wrong_values: usize,
    /// Removed users still in the PBX, and PBX users of this company for no in-scope user.
    pub not_deleted: usize,
    pub mails_expected: usize,
    /// Welcome mails and admin copies received (all copies, duplicates included).
    pub mails_received: usize,
    pub mail_duplicates: usize,
    pub mail_losses: usize,
    /// Runs as `usersync runs --json` shows them: (id, state).
    pub runs: Vec<(String, String)>,
    /// Messages on work and retry queues (ready or unacknowledged), by queue.
    pub left_in_queues: BTreeMap<String, u64>,
    /// Messages in the dead-letter queues.
    pub dead_lettered: u64,
    /// The vhost's queues' `message_stats.redeliver` (since each queue last started).
    pub redelivered: u64,
    /// Why the case fails; empty when it passes.
    pub problems: Vec<String>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn duplicates(&self) -> usize {
        self.user_duplicates + self.extra_creates + self.mail_duplicates
    }

    pub fn losses(&self) -> usize {
        self.user_losses + self.mail_losses
    }
}

/// How long the stack must look settled before the audit believes it: the
/// management API's queue figures can be one statistics interval (5 s on the
/// shared node) old.
const SETTLED_FOR: Duration = Duration::from_secs(6);

impl Audit<'_> {
    /// Waits until the stack settles (or `settle` passes), then checks the rule.
    pub async fn run(&self) -> AuditReport {
        let calm_since: Cell<Option<Instant>> = Cell::new(None);
        let settled = poll_until(self.settle, || async {
            let report = self.check().await;
            if !report.passed() {
                calm_since.set(None);
                return None;
            }
            let since = calm_since.get().unwrap_or_else(Instant::now);
            calm_since.set(Some(since));
            (since.elapsed() >= SETTLED_FOR).then_some(report)
        })
        .await;
        match settled {
            Some(report) => report,
            // Never settled: the last look says why.
            None => self.check().await,
        }
    }

    async fn check(&self) -> AuditReport {
        let mut report = AuditReport::default();
        let directory = self.directory().await;
        let mut in_scope = self.in_scope(&directory).await;
        for id in self.expected_failures {
            in_scope.remove(id);
        }
        report.users_expected = in_scope.len();

        // PBX users by external id.
        let pbx = self
            .stack
            .pbx_call(
                Method::GET,
                &format!("/_sim/companies/{}/users", self.pbx_company),
                None,
            )
            .await;
        let mut by_external: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let items = pbx["items"].as_array().expect("the PBX sim's `items`");
        for user in items
            .iter()
            .filter(|u| !self.foreign.iter().any(|f| u["id"] == f.as_str()))
        {
            let id = user["external_id"].as_str().unwrap_or("").to_owned();
            by_external.entry(id).or_default().push(user.clone());
        }
        for (id, users) in &by_external {
            report.user_duplicates += users.len() - 1;
            if users.len() > 1 {
                report
                    .problems
                    .push(format!("{} PBX users for external id {id}", users.len()));
            }
        }
        for id in &in_scope {
            let Some(users) = by_external.get(id) else {
                report.user_losses += 1;
                continue;
            };
            report.users_present += 1;
            let wrong = self.wrong_fields(&directory[id], &users[0]);
            if !wrong.is_empty() {
                report.wrong_values += 1;
                report
                    .problems
                    .push(format!("PBX user {id}: {}", wrong.join(", ")));
            }
        }
        if report.user_losses > 0 {
            report.problems.push(format!(
                "{} of {} in-scope users are missing from the PBX",
                report.user_losses, report.users_expected
            ));
        }
        let stats = self.stack.pbx_call(Method::GET, "/_sim/stats", None).await;
        let created = stats["companies"][self.pbx_company]["created"]
            .as_u64()
            .unwrap_or(0) as usize;
        report.extra_creates = created.saturating_sub(in_scope.len() + self.removed.len());
        if report.extra_creates > 0 {
            report.problems.push(format!(
                "the PBX counted {created} creates for {} users",
                in_scope.len() + self.removed.len()
            ));
        }
        let failed_but_written = self
            .expected_failures
            .iter()
            .filter(|id| by_external.contains_key(*id))
            .count();
        if failed_but_written > 0 {
            report.problems.push(format!(
                "{failed_but_written} of the {} users expected to fail are in the PBX",
                self.expected_failures.len()
            ));
        }
        let stray: Vec<&String> = by_external
            .keys()
            .filter(|id| !in_scope.contains(*id) && !self.expected_failures.contains(*id))
            .collect();
        report.not_deleted = stray.len();
        if !stray.is_empty() {
            report.problems.push(format!(
                "{} PBX users are out of scope but not deleted (e.g. {})",
                stray.len(),
                stray[0]
            ));
        }

        self.check_mails(&directory, &in_scope, &mut report);
        self.check_runs(&mut report).await;
        self.check_queues(&mut report).await;
        report
    }

    async fn directory(&self) -> BTreeMap<String, Value> {
        let users = self
            .stack
            .graph_call(
                Method::GET,
                &format!("/_sim/tenants/{}/users", self.entra_tenant),
                None,
            )
            .await;
        users["value"]
            .as_array()
            .expect("the Graph sim's `value`")
            .iter()
            .map(|u| (u["id"].as_str().expect("a user id").to_owned(), u.clone()))
            .collect()
    }

    /// Enabled directory users in the scope group (direct members, as the sim seeds them).
    async fn in_scope(&self, directory: &BTreeMap<String, Value>) -> BTreeSet<String> {
        let members: Option<BTreeSet<String>> = match self.scope_group {
            None => None,
            Some(name) => {
                let groups = self
                    .stack
                    .graph_call(
                        Method::GET,
                        &format!("/_sim/tenants/{}/groups", self.entra_tenant),
                        None,
                    )
                    .await;
                let group = groups["value"]
                    .as_array()
                    .expect("the Graph sim's `value`")
                    .iter()
                    .find(|g| g["name"] == name)
                    .unwrap_or_else(|| panic!("the scope group {name} is not in the Graph sim"));
                Some(
                    group["members"]
                        .as_array()
                        .expect("members")
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect(),
                )
            }
        };
        directory
            .iter()
            .filter(|(id, user)| {
                user["accountEnabled"] != false && members.as_ref().is_none_or(|m| m.contains(*id))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The fields of `pbx` that differ from the mapping of `source`, named.
    fn wrong_fields(&self, source: &Value, pbx: &Value) -> Vec<String> {
        let phone = source["businessPhones"][0]
            .as_str()
            .and_then(|raw| usersync_core::phone::normalize_phone(raw, &["46".to_owned()]).ok());
        let expected = [
            ("alias", source["mailNickname"].as_str().map(str::to_lowercase)),
            ("first_name", source["givenName"].as_str().map(str::to_owned)),
            ("surname", source["surname"].as_str().map(str::to_owned)),
            ("email", source["mail"].as_str().map(str::to_owned)),
            ("pstn_fixed", phone),
            ("caller_id", Some(self.caller_id.to_owned())),
            ("template", Some(self.template.to_owned())),
        ];
        let mut wrong: Vec<String> = expected
            .into_iter()
            .filter(|(field, want)| pbx[*field].as_str() != want.as_deref())
            .map(|(field, want)| format!("{field} is {} (expected {want:?})", pbx[field]))
            .collect();
        if pbx["attributes"]["title"] != source["jobTitle"] {
            wrong.push(format!(
                "attributes.title is {} (expected {})",
                pbx["attributes"]["title"], source["jobTitle"]
            ));
        }
        wrong
    }

    /// Welcome mails by recipient (each user's own) and admin copies by
    /// message id (one per created user): each exactly once.
    fn check_mails(
        &self,
        directory: &BTreeMap<String, Value>,
        in_scope: &BTreeSet<String>,
        report: &mut AuditReport,
    ) {
        let welcomed: BTreeSet<String> = in_scope
            .iter()
            .filter_map(|id| directory[id]["mail"].as_str())
            .chain(self.removed.iter().filter_map(|u| u["mail"].as_str()))
            .map(str::to_lowercase)
            .collect();
        let per_user = 1 + usize::from(self.admin_copy_to.is_some());
        report.mails_expected = welcomed.len() * per_user;

        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        let mut welcomes_to: BTreeMap<String, usize> = BTreeMap::new();
        for mail in self.stack.mails() {
            let header = |name: &str| {
                mail.lines()
                    .take_while(|line| !line.is_empty())
                    .find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let id = header("Message-ID");
            if id.starts_with("<welcome.") {
                *welcomes_to.entry(header("To").to_lowercase()).or_default() += 1;
            } else if !id.starts_with("<welcome-copy.") {
                continue; // reports and digests are not welcome mails
            }
            report.mails_received += 1;
            *by_id.entry(id).or_default() += 1;
        }
        report.mail_duplicates = by_id.values().map(|n| n - 1).sum();
        if report.mail_duplicates > 0 {
            let twice: Vec<&String> = by_id.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
            report.problems.push(format!(
                "{} welcome mails arrived more than once (e.g. {})",
                twice.len(),
                twice[0]
            ));
        }
        let unwelcomed = welcomed
            .iter()
            .filter(|to| !welcomes_to.contains_key(*to))
            .count();
        let copies = by_id.keys().filter(|id| id.starts_with("<welcome-copy.")).count();
        let missing_copies = if self.admin_copy_to.is_some() {
            welcomed.len().saturating_sub(copies)
        } else {
            0
        };
        report.mail_losses = unwelcomed + missing_copies;
        if report.mail_losses > 0 {
            report.problems.push(format!(
                "{unwelcomed} users got no welcome mail, {missing_copies} admin copies are missing"
            ));
        }
    }

    async fn check_runs(&self, report: &mut AuditReport) {
        let runs = self
            .stack
            .cli_json(&["runs", self.tenant, "--json", "--limit", "1000"])
            .await;
        for run in runs.as_array().expect("`usersync runs --json` prints a list") {
            let id = run["id"].as_str().unwrap_or("?").to_owned();
            let state = run["state"].as_str().unwrap_or("?").to_owned();
            if run["finished_at"].is_null() {
                report
                    .problems
                    .push(format!("run {id} has no outcome (state {state})"));
            }
            report.runs.push((id, state));
        }
        if report.runs.len() < self.runs {
            report.problems.push(format!(
                "{} runs recorded, the case started {}",
                report.runs.len(),
                self.runs
            ));
        }
    }

    async fn check_queues(&self, report: &mut AuditReport) {
        let url = format!(
            "{}/queues/{}",
            self.stack.backends.rabbitmq_api,
            urlencode(&self.stack.vhost)
        );
        let queues: Value = match self
            .stack
            .http
            .get(&url)
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(err) => {
                report
                    .problems
                    .push(format!("reading queue depths at {url}: {err}"));
                return;
            }
        };
        let Some(queues) = queues.as_array() else {
            report.problems.push(format!("{url} answered no list of queues"));
            return;
        };
        for queue in queues {
            let name = queue["name"].as_str().unwrap_or("?").to_owned();
            report.redelivered += queue["message_stats"]["redeliver"].as_u64().unwrap_or(0);
            if !name.starts_with("usersync.") {
                continue;
            }
            let depth = queue["messages"].as_u64().unwrap_or(0);
            if name.ends_with(".dlq") {
                report.dead_lettered += depth;
                if depth > 0 && !self.expect_dlq {
                    report.problems.push(format!("{depth} messages in {name}"));
                }
            } else {
                if depth > 0 {
                    report.problems.push(format!("{depth} messages left in {name}"));
                }
                report.left_in_queues.insert(name, depth);
            }
        }
    }
}

/// `/` as the management API wants a vhost name in a path.
fn urlencode(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2F")
}

/// One fault case's outcome, written to `target/fault-results/<case>.json`;
/// `scripts/fault-suite` makes docs/reliability.md's table from these.
#[derive(Debug, Serialize)]
pub struct CaseRecord {
    pub case: String,
    /// What was injected, e.g. "SIGKILL of usersync-applier, restarted".
    pub injected: String,
    /// When, e.g. "after 30% of creates".
    pub when: String,
    pub passed: bool,
    /// From the fault to the first progress after it, where the case measures it.
    pub recover_secs: Option<f64>,
    /// `None` when the case stopped before its audit (unknown, not zero).
    pub redelivered: Option<u64>,
    pub duplicates: Option<usize>,
    pub losses: Option<usize>,
    pub wall_secs: f64,
    pub users: usize,
    /// The audit's figures and problems; only problems when it did not run.
    pub report: AuditReport,
}

impl CaseRecord {
    pub fn write(&self) -> PathBuf {
        let dir = workspace_target().join("fault-results");
        std::fs::create_dir_all(&dir).expect("target/fault-results");
        let path = dir.join(format!("{}.json", self.case));
        let text = serde_json::to_string_pretty(self).expect("a case record as JSON");
        std::fs::write(&path, text).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }
}
