//! The notifier on its own: events published straight to its queue, a tenant
//! row in its database, and a scripted aiosmtpd (`tests/smtp/usersync_smtp.py`)
//! that accepts, defers (451), refuses (550) or holds mails by recipient, or
//! (`Gated`) freezes every sender at a known point of the SMTP exchange. What
//! the server stored is read back with Python's mail parser.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use tokio::process::{Child, Command};
use usersync_bus::Bus;
use usersync_contract::{topology::Stage, Event, RunCounts, UserProblem};
use usersync_core::{parse_tenant_file, Problem};
use usersync_e2e::{
    binary, free_port, remove_test_resources, test_vhost, wait_for, workspace_target, SECRET_KEY,
};
use usersync_store::{SecretKey, Store};
use uuid::Uuid;

use crate::support::tenant_file;

const MAIL_FROM: &str = "Usersync <noreply@usersync.test>";
const PYTHON: &str = "/usr/bin/python3";
const WAIT: Duration = Duration::from_secs(60);
/// The `application_name` of the notifier's database sessions.
const NOTIFIER_SESSIONS: &str = "usersync-notifier-under-test";

/// A mail as the SMTP server stored it, parsed by Python's `email` package.
#[derive(Debug, Clone, Deserialize)]
struct Mail {
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    raw_subject: Option<String>,
    message_id: Option<String>,
    date: Option<String>,
    content_type: String,
    text: Option<String>,
    html: Option<String>,
}

impl Mail {
    fn to(&self) -> &str {
        self.to.as_deref().unwrap_or_default()
    }
    fn subject(&self) -> &str {
        self.subject.as_deref().unwrap_or_default()
    }
    fn text(&self) -> &str {
        self.text.as_deref().unwrap_or_default()
    }
}

/// The notifier with its own database, vhost, SMTP server and clock file.
struct Mailroom {
    name: String,
    vhost: String,
    database_url: String,
    amqp_url: String,
    smtp_port: u16,
    maildir: PathBuf,
    clock_file: PathBuf,
    logs: PathBuf,
    http: reqwest::Client,
    bus: Bus,
    store: Store,
    notifier: Option<(Child, u16)>,
    starts: usize,
    _smtp: Child,
    _tmp: tempfile::TempDir,
}

impl Mailroom {
    /// Publishes `users` welcome events of `run`: user0.test … with addresses
    /// at acme.example and PBX ids pbx-0 ….
    async fn publish_welcomes(&self, run: Uuid, users: usize) {
        for i in 0..users {
            let (alias, address) = (format!("user{i}.test"), format!("user{i}@acme.example"));
            self.publish(&created(run, &format!("pbx-{i}"), &alias, Some(&address), None))
                .await;
        }
    }

    /// Waits until `count` mails are claimed and their sends wait on the server.
    async fn wait_sends_in_flight(&self, count: usize) {
        wait_for(&format!("{count} sends in flight"), WAIT, || async {
            (self.ids_in("sending").await.len() == count).then_some(())
        })
        .await;
    }

    async fn start(test: &str) -> Mailroom {
        Mailroom::start_with(test, &["Scripted"]).await
    }

    /// With `handler` = a class of `tests/smtp/usersync_smtp.py` and its
    /// arguments after the Maildir.
    async fn start_with(test: &str, handler: &[&str]) -> Mailroom {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let name = format!("{test}_{suffix}");
        let tmp = tempfile::tempdir().expect("a temp dir");
        let logs = workspace_target().join("e2e-logs").join(&name);
        std::fs::create_dir_all(&logs).expect("the log folder");
        let http = reqwest::Client::new();
        let vhost = format!("usersync-e2e-{name}");
        test_vhost(&http, &vhost).await;
        let maildir = tmp.path().join("Maildir");
        let smtp_port = free_port();
        let smtp = start_scripted_smtp(smtp_port, &maildir, &logs, handler).await;
        let database_url = format!("postgres://postgres@127.0.0.1:5432/usersync_e2e_{name}");
        let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let store = Store::connect(&database_url, 2).await.expect("the test database");
        let bus = Bus::connect(&amqp_url, "notifier-test")
            .await
            .expect("the test vhost");
        let mut room = Mailroom {
            name,
            vhost,
            database_url,
            amqp_url,
            smtp_port,
            maildir,
            clock_file: tmp.path().join("clock"),
            logs,
            http,
            bus,
            store,
            notifier: None,
            starts: 0,
            _smtp: smtp,
            _tmp: tmp,
        };
        room.start_notifier().await;
        room
    }

    async fn start_notifier(&mut self) {
        let metrics_port = free_port();
        let log = std::fs::File::create(self.logs.join(format!("usersync-notifier-{}.log", self.starts)))
            .expect("a log file");
        self.starts += 1;
        let child = Command::new(binary("usersync-notifier"))
            // Named, so its sessions can be told from the test's own.
            .env(
                "DATABASE_URL",
                format!("{}?application_name={NOTIFIER_SESSIONS}", self.database_url),
            )
            .env("AMQP_URL", &self.amqp_url)
            .env("SMTP_URL", format!("smtp://127.0.0.1:{}", self.smtp_port))
            .env("MAIL_FROM", MAIL_FROM)
            .env("MAIL_DEFAULT_LANGUAGE", "en")
            .env("USERSYNC_CLOCK_FILE", &self.clock_file)
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting usersync-notifier");
        self.notifier = Some((child, metrics_port));
        let health = format!("http://127.0.0.1:{metrics_port}/healthz");
        wait_for("the notifier to be healthy", WAIT, || async {
            let response = self.http.get(&health).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// SIGKILL: no drain, no goodbye; what it had in hand is redelivered.
    async fn kill_notifier(&mut self) {
        if let Some((mut child, _)) = self.notifier.take() {
            child.kill().await.expect("killing the notifier");
        }
    }

    /// The sample tenant with `edit` applied to its file.
    async fn tenant(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
        edit(file.as_object_mut().unwrap());
        let config = parse_tenant_file(&file.to_string()).expect("a valid tenant file");
        let key = SecretKey::from_base64(SECRET_KEY).unwrap();
        self.store
            .upsert_tenant(&config, &key)
            .await
            .expect("saving the tenant");
    }

    async fn publish(&self, event: &Event) {
        self.bus
            .send(Stage::Notifier, event, &event.message_id())
            .await
            .expect("publishing to the notifier");
    }

    fn set_clock(&self, at: DateTime<Utc>) {
        usersync_e2e::write_clock_file(&self.clock_file, &at.to_rfc3339());
    }

    fn mails(&self) -> Vec<Mail> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smtp/read_maildir.py");
        let output = std::process::Command::new(PYTHON)
            .arg(script)
            .arg(&self.maildir)
            .output()
            .expect("running read_maildir.py");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("read_maildir.py prints JSON")
    }

    async fn wait_mails(&self, count: usize) -> Vec<Mail> {
        wait_for(&format!("{count} mails"), WAIT, || async {
            let mails = self.mails();
            (mails.len() >= count).then_some(mails)
        })
        .await
    }

    async fn scrape(&self) -> Option<String> {
        let (_, port) = self.notifier.as_ref()?;
        let response = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())?;
        response.text().await.ok()
    }

    /// The sum of a counter's series whose labels include every `labels` pair.
    async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.scrape().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until this notifier process has finished `count` events.
    async fn wait_handled(&self, count: usize) {
        wait_for(&format!("{count} events handled"), WAIT, || async {
            let done = self
                .counter(
                    "usersync_messages_total",
                    &[("stage", "notifier"), ("outcome", "ok")],
                )
                .await;
            (done >= count as f64).then_some(())
        })
        .await;
    }

    /// What a `Gated` server let through: (RCPTs admitted, messages stored).
    fn gate(&self) -> Option<(usize, usize)> {
        let state = std::fs::read_to_string(self.maildir.join("gate")).ok()?;
        let (admitted, stored) = state.split_once(' ')?;
        Some((admitted.parse().ok()?, stored.parse().ok()?))
    }

    /// Messages in the Maildir, without parsing them.
    fn mail_count(&self) -> usize {
        std::fs::read_dir(self.maildir.join("new")).map_or(0, |dir| dir.count())
    }

    /// Every mail row's id, by state.
    async fn ids_in(&self, state: &str) -> Vec<String> {
        let client = self.store.client().await.unwrap();
        let rows = client
            .query("SELECT id FROM mails WHERE state = $1 ORDER BY id", &[&state])
            .await
            .unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }

    async fn mail_row(&self, id: &str) -> Option<(String, i32, Option<String>)> {
        let client = self.store.client().await.unwrap();
        client
            .query_opt("SELECT state, attempts, reply FROM mails WHERE id = $1", &[&id])
            .await
            .unwrap()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
    }

    /// The notifier's database sessions, and the most mail claims one of them holds.
    async fn notifier_sessions(&self) -> (i64, i64) {
        let client = self.store.client().await.unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name = $1),
                        (SELECT coalesce(max(n), 0) FROM (
                           SELECT count(*) AS n FROM pg_locks
                           WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           GROUP BY pid) AS per_session)",
                &[&NOTIFIER_SESSIONS],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    async fn wait_state(&self, id: &str, state: &str) -> (String, i32, Option<String>) {
        wait_for(&format!("mail {id} to be {state}"), WAIT, || async {
            self.mail_row(id).await.filter(|row| row.0 == state)
        })
        .await
    }
}

impl Drop for Mailroom {
    fn drop(&mut self) {
        if let Some((child, _)) = self.notifier.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::write(self.maildir.join("release"), "");
        remove_test_resources(&self.vhost, &format!("usersync_e2e_{}", self.name), &self.logs);
    }
}

async fn start_scripted_smtp(port: u16, maildir: &Path, logs: &Path, handler: &[&str]) -> Child {
    let log = std::fs::File::create(logs.join("smtp.log")).expect("a log file");
    let handlers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smtp");
    let child = Command::new(PYTHON)
        .env("PYTHONPATH", handlers)
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .arg("-c")
        .arg(format!("usersync_smtp.{}", handler[0]))
        .arg(maildir)
        .args(&handler[1..])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting aiosmtpd (apt-get install python3-aiosmtpd)");
    wait_for("the SMTP server to listen", WAIT, || async move {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    child
}

fn created(run_id: Uuid, pbx_id: &str, alias: &str, email: Option<&str>, language: Option<&str>) -> Event {
    let (first_name, surname) = alias.split_once('.').unwrap_or((alias, "Test"));
    let capital = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect::<String>())
            .unwrap_or_default()
    };
    Event::UserCreated {
        tenant_id: "acme".into(),
        run_id,
        object_id: format!("obj-{pbx_id}"),
        pbx_id: pbx_id.into(),
        alias: alias.into(),
        first_name: capital(first_name),
        surname: capital(surname),
        pstn_fixed: "46812345678".into(),
        email: email.map(Into::into),
        language: language.map(Into::into),
    }
}

fn finished(tenant_id: &str, run_id: Uuid, outcome: &str, counts: RunCounts) -> Event {
    Event::RunFinished {
        tenant_id: tenant_id.into(),
        run_id,
        outcome: outcome.into(),
        counts,
        error: None,
        error_code: None,
        warnings: Vec::new(),
        problems: Vec::new(),
    }
}

fn failed(tenant_id: &str, run_id: Uuid, code: &str) -> Event {
    Event::RunFinished {
        tenant_id: tenant_id.into(),
        run_id,
        outcome: "failed".into(),
        counts: RunCounts::default(),
        error: Some(
            "client secret expired (AADSTS7000222): create a new secret in Azure and update provider_settings.client_secret"
                .into(),
        ),
        error_code: Some(code.into()),
        warnings: Vec::new(),
        problems: Vec::new(),
    }
}

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 9, 0, 0).unwrap()
}

/// A mail's row id as its Message-ID header.
fn message_id(id: &str) -> String {
    format!("<{}@usersync>", id.replace(':', "."))
}

fn to<'a>(mails: &'a [Mail], address: &str) -> Vec<&'a Mail> {
    mails.iter().filter(|mail| mail.to().contains(address)).collect()
}

#[tokio::test]
async fn welcome_mail_and_admin_copy_in_the_users_language() {
    let room = Mailroom::start("notifier_welcome").await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    room.publish(&created(
        run,
        "pbx-1",
        "åsa.öberg",
        Some("asa.oberg@acme.example"),
        Some("sv-SE"),
    ))
    .await;
    room.publish(&created(
        run,
        "pbx-2",
        "bob.smith",
        Some("bob.smith@acme.example"),
        Some("en-US"),
    ))
    .await;
    room.publish(&created(run, "pbx-3", "cid.nomail", None, None))
        .await;
    // Two welcome mails and three copies; the user without an address gets none.
    let mails = room.wait_mails(5).await;
    room.wait_handled(3).await;

    let asa = to(&mails, "asa.oberg@acme.example");
    assert_eq!(asa.len(), 1, "{mails:#?}");
    let asa = asa[0];
    assert_eq!(asa.subject(), "Välkommen till Infinity, Åsa");
    let raw_subject = asa.raw_subject.as_deref().unwrap();
    assert!(
        raw_subject.is_ascii() && raw_subject.to_ascii_lowercase().starts_with("=?utf-8?"),
        "{raw_subject}"
    );
    assert_eq!(asa.from.as_deref(), Some(MAIL_FROM));
    assert_eq!(asa.message_id.as_deref(), Some("<welcome.acme.pbx-1@usersync>"));
    let date = asa.date.as_deref().expect("a Date header");
    assert!(DateTime::parse_from_rfc2822(date).is_ok(), "{date}");
    assert_eq!(asa.content_type, "multipart/alternative");
    assert!(asa.text().starts_with("Hej Åsa!"), "{}", asa.text());
    assert!(asa.text().contains("åsa.öberg") && asa.text().contains("+46812345678"));
    assert!(asa.html.as_deref().unwrap().contains("<p>Hej Åsa!</p>"));

    let bob = to(&mails, "bob.smith@acme.example");
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].subject(), "Welcome to Infinity, Bob");
    assert!(bob[0].text().starts_with("Hi Bob,"));

    let copies = to(&mails, "pbx-admin@acme.example");
    assert_eq!(copies.len(), 3, "{mails:#?}");
    let cid_copy = copies
        .iter()
        .find(|m| m.subject() == "New user in Infinity: Cid Nomail (cid.nomail)")
        .expect("the copy for the user without an address");
    assert!(cid_copy.text().contains("Phone number:  +46812345678"));
    assert!(cid_copy.text().contains("Email:         (none)"));
    assert_eq!(
        cid_copy.message_id.as_deref(),
        Some("<welcome-copy.acme.pbx-3@usersync>")
    );
    assert_eq!(room.mail_row("welcome:acme:pbx-3").await.unwrap().0, "no_address");

    // The user without an address is a warning in the run's digest, not an error.
    let counts = RunCounts {
        created: 3,
        ..RunCounts::default()
    };
    room.publish(&finished("acme", run, "succeeded", counts)).await;
    let mails = room.wait_mails(6).await;
    let digest = to(&mails, "it@acme.example");
    assert_eq!(digest.len(), 1);
    assert_eq!(digest[0].subject(), "Sync report for Acme AB: succeeded");
    assert!(
        digest[0]
            .text()
            .contains("  - cid.nomail: no mail address in the directory"),
        "{}",
        digest[0].text()
    );
    assert!(digest[0].text().contains("notification level is \"warning\""));
}

#[tokio::test]
async fn one_digest_per_run_at_each_notification_level() {
    let room = Mailroom::start("notifier_levels").await;
    let levels = ["error", "warning", "info"];
    for level in levels {
        room.tenant(|file| {
            file.insert("id".into(), format!("lvl-{level}").into());
            file.insert(
                "error_notification_email".into(),
                format!("it@{level}.example").into(),
            );
            file.insert("error_notification_level".into(), level.into());
        })
        .await;
    }
    let mut runs = Vec::new();
    for level in levels {
        let tenant = format!("lvl-{level}");
        let (clean, troubled, broken) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let counts = RunCounts {
            created: 2,
            updated: 1,
            ..RunCounts::default()
        };
        room.publish(&finished(&tenant, clean, "succeeded", counts)).await;
        let problem = |user: &str, message: &str| UserProblem {
            user: user.into(),
            outcome: "skipped".into(),
            problem: Problem::new("pstn_fixed", message),
        };
        room.publish(&Event::RunFinished {
            tenant_id: tenant.clone(),
            run_id: troubled,
            outcome: "succeeded".into(),
            counts: RunCounts {
                updated: 4,
                skipped: 2,
                held: 40,
                ..RunCounts::default()
            },
            error: None,
            error_code: None,
            warnings: vec!["40 deletions held back: more than 10% of the users would go".into()],
            problems: vec![problem("dan", "not a number"), problem("eva", "missing")],
        })
        .await;
        runs.push((clean, troubled, broken));
    }
    // The failures last: a later success would resolve them (and say so).
    room.wait_handled(6).await;
    for (level, (_, _, broken)) in levels.iter().zip(&runs) {
        room.publish(&failed(&format!("lvl-{level}"), *broken, "entra.7000222"))
            .await;
    }
    room.wait_handled(9).await;
    let mails = room.mails();
    // error: the failed run; warning: also the troubled one; info: every run.
    assert_eq!(to(&mails, "it@error.example").len(), 1, "{mails:#?}");
    assert_eq!(to(&mails, "it@warning.example").len(), 2, "{mails:#?}");
    assert_eq!(to(&mails, "it@info.example").len(), 3, "{mails:#?}");
    assert_eq!(mails.len(), 6);

    let failure = to(&mails, "it@error.example")[0];
    assert_eq!(failure.subject(), "Sync report for Acme AB: failed");
    assert!(failure.text().contains("AADSTS7000222") && failure.text().contains("[entra.7000222]"));

    let (_, troubled, _) = runs[1];
    let warning = to(&mails, "it@warning.example");
    let report = warning
        .iter()
        .find(|m| m.message_id.as_deref() == Some(&format!("<digest.{troubled}@usersync>")))
        .expect("the troubled run's digest");
    let text = report.text();
    assert!(text.contains("Held:     40 deletions held back"), "{text}");
    assert!(text.contains("Warnings:\n  - 40 deletions held back"), "{text}");
    assert!(
        text.contains("Field pstn_fixed:\n  - dan: not a number\n  - eva: missing"),
        "{text}"
    );

    let (clean, _, _) = runs[2];
    let info = to(&mails, "it@info.example");
    let summary = info
        .iter()
        .find(|m| m.message_id.as_deref() == Some(&format!("<digest.{clean}@usersync>")))
        .expect("the clean run's summary");
    assert!(
        summary.text().contains("Created:  2")
            && summary.text().contains("No problems with individual users.")
    );
}

#[tokio::test]
async fn a_standing_error_is_mailed_once_a_day_and_its_end_once() {
    let mut room = Mailroom::start("notifier_standing").await;
    room.tenant(|file| {
        file.insert("error_notification_level".into(), "error".into());
    })
    .await;
    room.set_clock(day(2026, 3, 2));
    let runs: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    room.publish(&failed("acme", runs[0], "entra.7000222")).await;
    let mails = room.wait_mails(1).await;
    assert_eq!(
        mails[0].message_id.as_deref(),
        Some(format!("<error.acme.entra.7000222.{}.2026-03-02@usersync>", runs[0]).as_str())
    );
    // The same error again that day: nothing.
    room.publish(&failed("acme", runs[1], "entra.7000222")).await;
    room.wait_handled(2).await;
    assert_eq!(room.mails().len(), 1);

    // The next day it is mailed again, saying how long it has stood.
    room.set_clock(day(2026, 3, 3));
    room.publish(&failed("acme", runs[2], "entra.7000222")).await;
    let mails = room.wait_mails(2).await;
    let second = mails
        .iter()
        .find(|m| m.message_id.as_deref().unwrap().contains("2026-03-03"))
        .expect("the second day's mail");
    assert!(
        second.text().contains("This error has stood since"),
        "{}",
        second.text()
    );

    // A run succeeds: one mail says it is resolved, even when the event comes twice
    // and the notifier restarts in between.
    let counts = RunCounts {
        updated: 1,
        ..RunCounts::default()
    };
    room.publish(&finished("acme", runs[3], "succeeded", counts))
        .await;
    let mails = room.wait_mails(3).await;
    let resolved: Vec<_> = mails
        .iter()
        .filter(|m| m.subject() == "Resolved: the sync for Acme AB works again")
        .collect();
    assert_eq!(resolved.len(), 1, "{mails:#?}");
    assert!(resolved[0].text().contains("[entra.7000222]"));
    room.wait_handled(4).await;
    room.kill_notifier().await;
    room.start_notifier().await;
    room.publish(&finished("acme", runs[3], "succeeded", counts))
        .await;
    room.publish(&finished("acme", runs[4], "succeeded", counts))
        .await;
    room.wait_handled(2).await;
    assert_eq!(room.mails().len(), 3, "{:#?}", room.mails());
}

#[tokio::test]
async fn an_expiring_client_secret_is_warned_30_14_and_3_days_before_once_each() {
    let room = Mailroom::start("notifier_expiry").await;
    room.tenant(|file| {
        file.insert("error_notification_level".into(), "error".into());
        file.insert("client_secret_expires_at".into(), "2026-04-01".into());
    })
    .await;
    let mut handled = 0;
    let mut run_on = |at: DateTime<Utc>| {
        room.set_clock(at);
        handled += 1;
        let event = finished("acme", Uuid::new_v4(), "succeeded", RunCounts::default());
        let expected = handled;
        let room = &room;
        async move {
            room.publish(&event).await;
            room.wait_handled(expected).await;
            room.mails().len()
        }
    };
    assert_eq!(run_on(day(2026, 3, 1)).await, 0, "32 days left");
    assert_eq!(run_on(day(2026, 3, 2)).await, 1, "30 days left");
    assert_eq!(run_on(day(2026, 3, 10)).await, 1, "22 days left: warned already");
    assert_eq!(run_on(day(2026, 3, 18)).await, 2, "14 days left");
    assert_eq!(run_on(day(2026, 3, 29)).await, 3, "3 days left");
    assert_eq!(run_on(day(2026, 3, 30)).await, 3, "2 days left: warned already");
    let subjects: Vec<String> = room.mails().iter().map(|m| m.subject().to_owned()).collect();
    for days in [30, 14, 3] {
        let subject = format!("The Entra client secret for Acme AB expires in {days} days");
        assert!(subjects.contains(&subject), "{subjects:?}");
    }
    assert!(room.mails().iter().all(|m| m.to() == "it@acme.example"));
}

#[tokio::test]
async fn redelivery_and_restart_send_nothing_twice() {
    let mut room = Mailroom::start("notifier_once").await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    let events: Vec<Event> = (0..10)
        .map(|i| {
            created(
                run,
                &format!("pbx-{i}"),
                &format!("user{i}.test"),
                Some(&format!("user{i}@acme.example")),
                None,
            )
        })
        .collect();
    for event in &events {
        room.publish(event).await;
    }
    room.wait_mails(20).await;
    room.wait_handled(10).await;

    // A restart, then every event again (as a redelivery or a DLQ replay brings them).
    room.kill_notifier().await;
    room.start_notifier().await;
    for event in &events {
        room.publish(event).await;
    }
    room.wait_handled(10).await;
    let duplicates = room
        .counter("usersync_mails_total", &[("result", "duplicate")])
        .await;
    assert_eq!(duplicates, 20.0);
    let mails = room.mails();
    assert_eq!(mails.len(), 20);
    let mut ids: Vec<_> = mails.iter().map(|m| m.message_id.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every Message-ID once");
}

#[tokio::test]
async fn a_send_cut_off_by_a_crash_is_reported_not_repeated() {
    let mut room = Mailroom::start("notifier_cutoff").await;
    room.tenant(|file| {
        file.remove("welcome_mail_copy_to");
    })
    .await;
    let run = Uuid::new_v4();
    room.publish(&hold_user_welcome(run)).await;
    // The server has the mail but has not answered yet: the notifier dies now.
    room.wait_mails(1).await;
    room.wait_state("welcome:acme:pbx-h", "transmitting").await;
    room.kill_notifier().await;
    // The claimant's session is gone and the data had gone out: the
    // redelivered event marks the mail uncertain at once.
    room.start_notifier().await;
    let (_, attempts, reply) = room.wait_state("welcome:acme:pbx-h", "uncertain").await;
    assert_eq!(attempts, 1, "not sent a second time");
    assert!(reply.unwrap().contains("stopped"));
    room.wait_handled(1).await;

    let counts = RunCounts {
        created: 1,
        ..RunCounts::default()
    };
    room.publish(&finished("acme", run, "succeeded", counts)).await;
    let mails = room.wait_mails(2).await;
    assert_eq!(to(&mails, "hold.user@acme.example").len(), 1);
    let digest = to(&mails, "it@acme.example");
    assert_eq!(digest.len(), 1);
    assert!(
        digest[0].text().contains(
            "  - hold.user <hold.user@acme.example>: sending was cut off; the mail may not have arrived"
        ),
        "{}",
        digest[0].text()
    );
}

/// SIGKILLed in the middle of a first sync's welcome mails, the notifier is
/// restarted: every welcome mail and admin copy arrives exactly once, within
/// seconds (not after a lease), and only mails whose data the server had are
/// `uncertain`.
#[tokio::test]
async fn a_notifier_killed_mid_send_loses_no_mail_and_sends_none_twice() {
    const USERS: usize = 300;
    const ADMIT: usize = 200;
    const HOLD: usize = 6;
    let (admit, hold) = (ADMIT.to_string(), HOLD.to_string());
    let mut room = Mailroom::start_with("notifier_sigkill", &["Gated", &admit, &hold]).await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    room.publish_welcomes(run, USERS).await;
    // Frozen mid-send: HOLD messages on the server without their reply, every
    // other send in flight waiting for its RCPT to be answered.
    wait_for("the server to hold the senders", WAIT, || async {
        (room.gate() == Some((ADMIT + HOLD, ADMIT + HOLD))).then_some(())
    })
    .await;
    let on_server: HashSet<String> = room.mails().into_iter().filter_map(|m| m.message_id).collect();
    room.kill_notifier().await;
    let cut_before_data = room.ids_in("sending").await;
    assert!(!cut_before_data.is_empty(), "sends were in flight when it died");

    std::fs::write(room.maildir.join("release"), "").unwrap();
    room.start_notifier().await;
    let expected = 2 * USERS;
    wait_for(&format!("{expected} mails, all settled"), WAIT, || async {
        let mut unsettled = 0;
        for state in ["sending", "transmitting", "pending"] {
            unsettled += room.ids_in(state).await.len();
        }
        (room.mail_count() >= expected && unsettled == 0).then_some(())
    })
    .await;

    let mails = room.mails();
    let mut arrived: HashMap<String, usize> = HashMap::new();
    for id in mails.iter().filter_map(|m| m.message_id.clone()) {
        *arrived.entry(id).or_default() += 1;
    }
    let wanted: Vec<String> = (0..USERS)
        .flat_map(|i| {
            [
                format!("welcome:acme:pbx-{i}"),
                format!("welcome-copy:acme:pbx-{i}"),
            ]
        })
        .collect();
    let lost = wanted
        .iter()
        .filter(|id| !arrived.contains_key(&message_id(id)))
        .count();
    let duplicated: usize = arrived.values().map(|n| n - 1).sum();
    let uncertain = room.ids_in("uncertain").await;
    eprintln!(
        "after SIGKILL: {lost} lost, {duplicated} duplicated, {} resent (cut before the data), {} uncertain",
        cut_before_data.len(),
        uncertain.len()
    );
    assert_eq!((lost, duplicated), (0, 0), "every mail exactly once");
    assert_eq!(mails.len(), expected);
    for id in &uncertain {
        assert!(
            on_server.contains(&message_id(id)),
            "{id} is uncertain but its data never reached the server"
        );
    }
    assert_eq!(
        uncertain.len(),
        HOLD,
        "exactly the mails whose reply was cut off: {uncertain:?}"
    );
}

/// 32 events in hand, each holding a claimed mail whose RCPT the server does
/// not answer: the claims' locks are on one session, so the notifier keeps
/// to its pool (8) plus that one, and every mail still arrives once.
#[tokio::test]
async fn thirty_two_sends_in_flight_hold_no_more_connections_than_the_pool_and_one() {
    const USERS: usize = 40;
    const IN_HAND: usize = 32;
    const POOL: i64 = 8;
    let room = Mailroom::start_with("notifier_connections", &["Gated", "0", "0"]).await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    room.publish_welcomes(run, USERS).await;
    // Every event in hand has claimed its welcome mail and waits for its RCPT.
    room.wait_sends_in_flight(IN_HAND).await;
    let (sessions, claims_on_one) = room.notifier_sessions().await;
    eprintln!("{IN_HAND} sends in flight: {sessions} notifier sessions, {claims_on_one} claims on one");
    assert_eq!(claims_on_one, IN_HAND as i64, "every claim on one session");
    assert!(
        sessions <= POOL + 1,
        "{sessions} sessions for {IN_HAND} sends in flight"
    );

    std::fs::write(room.maildir.join("release"), "").unwrap();
    let mails = room.wait_mails(2 * USERS).await;
    room.wait_handled(USERS).await;
    let ids: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!(
        (ids.len(), room.mails().len()),
        (2 * USERS, 2 * USERS),
        "each once"
    );
}

/// The notifier's lock session ends under it (the database ended it, the
/// connection broke) while 32 sends wait for their RCPT: none of those sends
/// its data, as their locks are gone; each comes back, is claimed on a new
/// session and arrives once. The notifier itself runs on.
#[tokio::test]
async fn a_notifier_that_lost_its_lock_session_sends_nothing_unlocked_and_every_mail_once() {
    const USERS: usize = 40;
    const IN_HAND: usize = 32;
    let room = Mailroom::start_with("notifier_lock_lost", &["Gated", "0", "0"]).await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    room.publish_welcomes(run, USERS).await;
    room.wait_sends_in_flight(IN_HAND).await;
    let client = room.store.client().await.unwrap();
    let ended = client
        .query_one(
            "SELECT count(*) FROM (SELECT DISTINCT pid FROM pg_locks
                                   WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                                     AND database = (SELECT oid FROM pg_database
                                                     WHERE datname = current_database())) AS holders
             WHERE pg_terminate_backend(pid, 10000)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(ended, 1, "one session held the claims");

    std::fs::write(room.maildir.join("release"), "").unwrap();
    let expected = 2 * USERS;
    wait_for(&format!("{expected} mails, all settled"), WAIT, || async {
        let mut unsettled = 0;
        for state in ["sending", "transmitting", "pending"] {
            unsettled += room.ids_in(state).await.len();
        }
        (room.mail_count() >= expected && unsettled == 0).then_some(())
    })
    .await;
    room.wait_handled(USERS).await;
    let lost = room.counter("usersync_mails_total", &[("result", "lost")]).await;
    assert_eq!(lost, IN_HAND as f64, "every send whose lock was gone stopped");
    let mails = room.mails();
    let ids: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!((ids.len(), mails.len()), (expected, expected), "each once");
    assert!(room.ids_in("uncertain").await.is_empty());
    assert_eq!(room.ids_in("sent").await.len(), expected);
}

/// The same event twice at once in one process: the second finds the mail
/// in flight (advisory locks are re-entrant in the process's lock session,
/// so the process itself must know), and the mail is sent once.
#[tokio::test]
async fn two_events_for_one_mail_at_once_in_one_notifier_send_it_once() {
    let room = Mailroom::start("notifier_twice_at_once").await;
    room.tenant(|file| {
        file.remove("welcome_mail_copy_to");
    })
    .await;
    let run = Uuid::new_v4();
    let event = hold_user_welcome(run);
    room.publish(&event).await;
    // The server holds its answer, so the first send stays in flight.
    room.wait_mails(1).await;
    room.publish(&event).await;
    wait_for("the second event to find the mail in flight", WAIT, || async {
        let in_flight = room
            .counter("usersync_mails_total", &[("result", "in_flight")])
            .await;
        (in_flight >= 1.0).then_some(())
    })
    .await;
    std::fs::write(room.maildir.join("release"), "").unwrap();
    let (_, attempts, _) = room.wait_state("welcome:acme:pbx-h", "sent").await;
    // The second event comes back from the retry tier and finds it sent.
    wait_for("the second event to find the mail sent", WAIT, || async {
        let duplicates = room
            .counter("usersync_mails_total", &[("result", "duplicate")])
            .await;
        (duplicates >= 1.0).then_some(())
    })
    .await;
    room.wait_handled(2).await;
    assert_eq!(attempts, 1, "claimed once");
    assert_eq!(room.mails().len(), 1, "sent once");
}

/// A succeeded run with a warning, so a digest at level `warning` is due.
fn finished_with_warning(run_id: Uuid) -> Event {
    let Event::RunFinished {
        tenant_id,
        outcome,
        counts,
        ..
    } = finished("acme", run_id, "succeeded", RunCounts::default())
    else {
        unreachable!()
    };
    Event::RunFinished {
        tenant_id,
        run_id,
        outcome,
        counts,
        error: None,
        error_code: None,
        warnings: vec!["group Telephony matches 2 groups".into()],
        problems: Vec::new(),
    }
}

#[tokio::test]
async fn a_digest_names_welcome_mails_still_being_sent_and_only_once() {
    let room = Mailroom::start("notifier_unsettled").await;
    room.tenant(|file| {
        file.remove("welcome_mail_copy_to");
    })
    .await;
    let run = Uuid::new_v4();
    room.publish(&hold_user_welcome(run)).await;
    // The server holds its answer: the mail is on its way when the run's digest is written.
    room.wait_mails(1).await;
    assert!(room.mail_row("welcome:acme:pbx-h").await.is_some());
    room.publish(&finished_with_warning(run)).await;
    let digest = wait_for("the run's digest", WAIT, || async {
        room.mails()
            .into_iter()
            .find(|m| m.message_id.as_deref() == Some(&message_id(&format!("digest:{run}"))))
    })
    .await;
    let text = digest.text();
    assert!(
        text.contains("Welcome mails still being sent (1); a later report names any that do not arrive:\n  - hold.user <hold.user@acme.example>"),
        "{text}"
    );
    assert!(!text.contains("did not reach"), "not a problem: {text}");
    assert!(digest
        .html
        .as_deref()
        .unwrap()
        .contains("hold.user &lt;hold.user@acme.example&gt;"));

    // It arrives: the next digest does not mention it again.
    std::fs::write(room.maildir.join("release"), "").unwrap();
    room.wait_state("welcome:acme:pbx-h", "sent").await;
    let next = Uuid::new_v4();
    room.publish(&finished_with_warning(next)).await;
    let digest = wait_for("the next run's digest", WAIT, || async {
        room.mails()
            .into_iter()
            .find(|m| m.message_id.as_deref() == Some(&message_id(&format!("digest:{next}"))))
    })
    .await;
    assert!(!digest.text().contains("hold.user"), "{}", digest.text());
}

#[tokio::test]
async fn a_deferred_mail_is_retried_and_a_refused_one_given_up_and_reported() {
    let room = Mailroom::start("notifier_smtp_errors").await;
    room.tenant(|file| {
        file.remove("welcome_mail_copy_to");
    })
    .await;
    let run = Uuid::new_v4();
    room.publish(&created(
        run,
        "pbx-d",
        "defer.user",
        Some("defer.user@acme.example"),
        None,
    ))
    .await;
    room.publish(&created(
        run,
        "pbx-b",
        "bounce.user",
        Some("bounce.user@acme.example"),
        None,
    ))
    .await;

    // 550 at RCPT: recorded with the reply, not retried.
    let (_, attempts, reply) = room.wait_state("welcome:acme:pbx-b", "failed").await;
    assert_eq!(attempts, 1);
    assert!(reply.as_deref().unwrap().contains("550"), "{reply:?}");

    // 451 twice, then accepted through the retry tiers (1 s, then 5 s).
    let (_, attempts, _) = room.wait_state("welcome:acme:pbx-d", "sent").await;
    assert_eq!(attempts, 3);
    room.wait_handled(2).await;
    assert_eq!(
        room.counter(
            "usersync_mails_total",
            &[("kind", "welcome"), ("result", "retry")]
        )
        .await,
        2.0
    );
    assert_eq!(
        room.counter(
            "usersync_mails_total",
            &[("kind", "welcome"), ("result", "failed")]
        )
        .await,
        1.0
    );

    // The refused mail is in the next digest.
    room.publish(&finished("acme", run, "succeeded", RunCounts::default()))
        .await;
    let mails = room.wait_mails(2).await;
    assert_eq!(to(&mails, "defer.user@acme.example").len(), 1);
    assert!(to(&mails, "bounce.user@acme.example").is_empty());
    let digest = to(&mails, "it@acme.example");
    assert_eq!(digest.len(), 1);
    assert!(
        digest[0]
            .text()
            .contains("  - bounce.user <bounce.user@acme.example>: refused: "),
        "{}",
        digest[0].text()
    );
    assert!(digest[0].text().contains("550"));
}

/// One `Event::Batch` of a change batch's events: its welcome mails and
/// copies go out together, each exactly once; a refused one never holds up
/// its neighbours, a deferred one brings the batch back and arrives once, the
/// batch's run digest (last in the batch) reports the refusal, and a
/// redelivery of the batch sends nothing again.
#[tokio::test]
async fn a_batch_of_events_sends_its_mails_together_each_once() {
    const USERS: usize = 100;
    let room = Mailroom::start("notifier_batch").await;
    room.tenant(|_| {}).await;
    let run = Uuid::new_v4();
    let mut events: Vec<Event> = (0..USERS)
        .map(|i| {
            let alias = format!("user{i}.test");
            created(
                run,
                &format!("pbx-{i}"),
                &alias,
                Some(&format!("user{i}@acme.example")),
                None,
            )
        })
        .collect();
    events.push(created(
        run,
        "pbx-b",
        "bounce.user",
        Some("bounce.user@acme.example"),
        None,
    ));
    events.push(created(
        run,
        "pbx-d",
        "defer.user",
        Some("defer.user@acme.example"),
        None,
    ));
    events.push(Event::UserChanged {
        tenant_id: "acme".into(),
        run_id: run,
        object_id: "obj-pbx-0".into(),
        outcome: "updated".into(),
        detail: None,
    });
    let counts = RunCounts {
        created: USERS as i64 + 2,
        ..RunCounts::default()
    };
    events.push(finished("acme", run, "succeeded", counts));
    let batch = Event::Batch {
        tenant_id: "acme".into(),
        run_id: run,
        batch: 1,
        events,
    };
    room.publish(&batch).await;
    // Welcome mails and copies of USERS + 2 users, less the refused welcome; the digest.
    let expected = 2 * (USERS + 2) - 1 + 1;
    room.wait_mails(expected).await;
    room.wait_handled(1).await;
    let (_, attempts, reply) = room.mail_row("welcome:acme:pbx-b").await.unwrap();
    assert_eq!(attempts, 1, "refused for good, not retried");
    assert!(reply.unwrap().contains("550"));
    let (state, attempts, _) = room.mail_row("welcome:acme:pbx-d").await.unwrap();
    assert_eq!((state.as_str(), attempts), ("sent", 3), "451 twice, then sent");
    let mails = room.mails();
    let digest = to(&mails, "it@acme.example");
    assert_eq!(digest.len(), 1);
    assert!(
        digest[0]
            .text()
            .contains("  - bounce.user <bounce.user@acme.example>: refused: "),
        "{}",
        digest[0].text()
    );

    room.publish(&batch).await;
    room.wait_handled(2).await;
    let mails = room.mails();
    let ids: HashSet<_> = mails.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!((ids.len(), mails.len()), (expected, expected), "each once");
    assert_eq!(room.ids_in("sent").await.len(), expected);
}

/// Through the whole pipeline: a wrong secret fails runs; the error is mailed
/// once however often it recurs that day, and once the secret is fixed a mail
/// says it is resolved, next to the welcome mails of the first real sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_pipeline_a_standing_error_is_mailed_once_then_resolved() {
    use crate::support::{finished_run, seed, tenant_file, tenant_file_with};
    use usersync_e2e::Stack;

    let stack = Stack::start("notifier_pipeline").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack
        .cli(
            &["tenant", "apply", "-"],
            Some(&tenant_file_with("not-the-secret")),
        )
        .await;
    assert!(ok, "{stderr}");
    let store = Store::connect(&stack.database_url, 1).await.unwrap();
    let digest_of = |run: String| {
        let store = store.clone();
        async move {
            let run: Uuid = run.parse().unwrap();
            let client = store.client().await.ok()?;
            let row = client
                .query_opt("SELECT mail_id FROM run_digests WHERE run_id = $1", &[&run])
                .await
                .ok()??;
            Some(row.get::<_, String>(0))
        }
    };

    let mut previous: Option<String> = None;
    let mut digests = Vec::new();
    for _ in 0..2 {
        let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
        assert!(ok, "{stderr}");
        let status = finished_run(&stack, previous.as_deref()).await;
        assert_eq!(status["last_run"]["state"], "failed", "{status:#}");
        let run = status["last_run"]["id"].as_str().unwrap().to_owned();
        digests.push(wait_for("the run's digest decision", WAIT, || digest_of(run.clone())).await);
        previous = Some(run);
    }
    assert_eq!(digests[0], digests[1], "one mail for the standing error that day");
    let error_mails = |mails: Vec<String>| {
        mails
            .into_iter()
            .filter(|m| m.contains("To: it@acme.example"))
            .collect::<Vec<_>>()
    };
    let first = wait_for("the error mail", WAIT, || async {
        error_mails(stack.mails()).pop()
    })
    .await;
    assert!(first.contains("7000215"), "{first}");

    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    let status = finished_run(&stack, previous.as_deref()).await;
    assert_eq!(status["last_run"]["state"], "succeeded", "{status:#}");
    let mails = wait_for("the resolved mail and 240 welcome mails", WAIT, || async {
        let mails = stack.mails();
        let resolved = mails
            .iter()
            .any(|m| m.contains("Subject: Resolved: the sync for Acme AB works again"));
        (resolved && mails.len() >= 242).then_some(mails)
    })
    .await;
    assert_eq!(
        error_mails(mails.clone()).len(),
        2,
        "the error once and its end once"
    );
    assert_eq!(mails.len(), 242);
}

/// The welcome event of the user whose mail the holding SMTP handlers keep
/// without an answer (`hold.user`, PBX id pbx-h).
fn hold_user_welcome(run: Uuid) -> Event {
    created(run, "pbx-h", "hold.user", Some("hold.user@acme.example"), None)
}
