//! Operating many tenants: the nightly schedule (two schedulers, a DST night,
//! downtime), a resync published by a foreign AMQP client, coalescing with
//! `resync --wait`, dead letters, metrics, and ten tenants on two replicas of
//! every service where a bad and a throttled tenant do not hold up the others.

use std::{path::PathBuf, time::Duration};

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack};

use crate::support::*;

/// The moved clock of a stack: every process reads "now" from this file.
struct Clock(PathBuf);

impl Clock {
    fn new() -> Clock {
        Clock(std::env::temp_dir().join(format!("usersync-clock-{}", uuid::Uuid::new_v4().simple())))
    }

    fn set(&self, instant: &str) {
        usersync_e2e::write_clock_file(&self.0, instant);
    }

    fn env(&self) -> (&'static str, String) {
        ("USERSYNC_CLOCK_FILE", self.0.display().to_string())
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Several stacks with replicas run at once: small pools keep them all under
/// PostgreSQL's default 100 connections.
fn small_pools() -> (&'static str, String) {
    ("DATABASE_POOL_SIZE", "3".to_owned())
}

async fn status(stack: &Stack, id: &str) -> Value {
    stack.cli_json(&["status", id, "--json"]).await[0].clone()
}

fn with_schedule(at: &str) -> String {
    let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
    file["schedule"] = json!({"at": at, "timezone": "Europe/Stockholm"});
    file.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_run_fires_once_with_two_schedulers_on_a_dst_night_and_after_downtime() {
    let clock = Clock::new();
    // The day before spring forward: 02:30 does not exist in Stockholm on 29 March 2026.
    clock.set("2026-03-28T12:00:00Z");
    let mut stack = Stack::start_with(
        "schedule",
        vec![
            clock.env(),
            ("USERSYNC_SCHEDULE_POLL_SECS", "0.5".to_owned()),
            small_pools(),
        ],
    )
    .await;
    stack.start_service("usersync-fetcher").await;
    seed(&stack).await;
    apply(&stack, &with_schedule("02:30")).await;

    // The schedulers computed the due time: when the clock resumes at 03:00 CEST.
    wait_for("the due time to be computed", Duration::from_secs(30), || async {
        (stack.sql(
            "SELECT to_char(next_due AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI') FROM tenant_schedule",
        ) == "2026-03-29T01:00")
            .then_some(())
    })
    .await;
    assert_eq!(
        status(&stack, "acme").await["next_run_at"],
        "2026-03-29T01:00:00Z"
    );

    clock.set("2026-03-29T00:59:00Z");
    clock.set("2026-03-29T01:00:01Z");
    let first = finished_run(&stack, None).await;
    assert_eq!(first["last_run"]["trigger"], "scheduled", "{first:#}");
    assert_eq!(first["last_run"]["state"], "succeeded", "{first:#}");
    assert_eq!(pbx_users(&stack).await.len(), 120);
    // The next night's 02:30 exists again (CEST).
    wait_for("the next due time", Duration::from_secs(30), || async {
        (status(&stack, "acme").await["next_run_at"] == "2026-03-30T00:30:00Z").then_some(())
    })
    .await;
    assert_eq!(logged(&stack, "usersync-fetcher", "nightly run requested"), 1);
    assert_eq!(stack.sql("SELECT count(*) FROM runs"), "1");

    // Down for three nights: one run when time resumes, not three.
    clock.set("2026-04-02T12:00:00Z");
    let first_id = first["last_run"]["id"].as_str().unwrap().to_owned();
    let second = finished_run(&stack, Some(&first_id)).await;
    assert_eq!(second["last_run"]["trigger"], "scheduled");
    wait_for("the due time after downtime", Duration::from_secs(30), || async {
        (status(&stack, "acme").await["next_run_at"] == "2026-04-03T00:30:00Z").then_some(())
    })
    .await;
    assert_eq!(logged(&stack, "usersync-fetcher", "nightly run requested"), 2);
    assert_eq!(
        stack.sql("SELECT count(*) FROM runs WHERE trigger = 'scheduled'"),
        "2"
    );
}

/// The RabbitMQ management plugin's own command-line client, fetched once.
async fn rabbitmqadmin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.ancestors().nth(3).unwrap().join("rabbitmqadmin");
    if !path.exists() {
        let partial = path.with_extension(format!("{}.part", std::process::id()));
        let status = std::process::Command::new("curl")
            .args(["-fsS", "-o"])
            .arg(&partial)
            .arg("http://127.0.0.1:15672/cli/rabbitmqadmin")
            .status()
            .expect("running curl");
        assert!(
            status.success(),
            "downloading rabbitmqadmin from the management plugin"
        );
        std::fs::rename(&partial, &path).expect("placing rabbitmqadmin");
    }
    path
}

/// Publishes a resync request as the README documents it, with rabbitmqadmin.
async fn publish_with_rabbitmqadmin(stack: &Stack, payload: &str) {
    let output = tokio::process::Command::new("/usr/bin/python3")
        .arg(rabbitmqadmin().await)
        .args(["-V", &stack.vhost, "-u", "guest", "-p", "guest", "publish"])
        .args(["exchange=usersync.resync", "routing_key=manual"])
        .arg(format!("payload={payload}"))
        .arg(r#"properties={"delivery_mode":2,"content_type":"application/json"}"#)
        .output()
        .await
        .expect("running rabbitmqadmin");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Message published"),
        "rabbitmqadmin: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn scrape(stack: &Stack) -> String {
    let mut all = String::new();
    for (_, url) in &stack.metrics {
        let text = stack
            .http
            .get(url)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        all.push_str(&text);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_published_by_rabbitmqadmin_runs_and_metrics_and_json_logs_show_it() {
    let stack = Stack::start_with(
        "foreign",
        vec![("USERSYNC_LOG_FORMAT", "json".to_owned()), small_pools()],
    )
    .await;
    seed(&stack).await;
    apply(&stack, &tenant_file()).await;
    publish_with_rabbitmqadmin(&stack, r#"{"tenant_id":"acme"}"#).await;

    let status = finished_run(&stack, None).await;
    assert_eq!(status["last_run"]["state"], "succeeded", "{status:#}");
    assert_eq!(status["last_run"]["trigger"], "manual");
    assert_eq!(pbx_users(&stack).await.len(), 120);

    let metrics = wait_for("the run in the metrics", Duration::from_secs(30), || async {
        let text = scrape(&stack).await;
        (text.contains(r#"usersync_runs_total{outcome="succeeded"} 1"#)
            && text.contains(r#"usersync_mails_total{kind="welcome",result="sent"}"#))
        .then_some(text)
    })
    .await;
    // Every service logs JSON lines, and what a handler logs names its tenant
    // (and its run, once there is one: the applier logs nothing on success).
    let run_id = status["last_run"]["id"].as_str().unwrap().to_owned();
    for (index, service) in usersync_e2e::SERVICES.iter().enumerate() {
        let log = std::fs::read_to_string(stack.logs.join(format!("{service}-{index}.log")))
            .expect("the service's log");
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{service}: not JSON ({err}): {line}"))
            })
            .collect();
        let in_handlers: Vec<&Value> = lines.iter().filter(|line| !line["span"].is_null()).collect();
        assert!(
            in_handlers.iter().all(|line| line["span"]["tenant_id"] == "acme"),
            "{service} logged a handler line without the tenant:\n{log}"
        );
        if *service != "usersync-applier" {
            assert!(
                in_handlers
                    .iter()
                    .any(|line| line["span"]["run_id"] == run_id.as_str()),
                "{service} logged nothing that names the run:\n{log}"
            );
        }
    }
    for series in [
        "usersync_run_duration_seconds_bucket{le=",
        "usersync_run_duration_seconds_count 1",
        r#"usersync_retries_total{stage="fetcher"}"#,
        r#"usersync_retries_total{stage="differ"}"#,
        r#"usersync_retries_total{stage="applier"}"#,
        r#"usersync_retries_total{stage="notifier"}"#,
        r#"usersync_messages_total{stage="applier",outcome="ok"}"#,
        r#"usersync_user_decisions_total{decision="create"}"#,
        r#"usersync_graph_requests_total{status="200"}"#,
        "usersync_graph_request_duration_seconds_bucket{",
        r#"usersync_pbx_requests_total{method="POST",status="201"}"#,
        "usersync_pbx_request_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(series), "/metrics lacks {series}:\n{metrics}");
    }
}

/// `usersync resync acme --wait` in the background: its exit code and output.
fn resync_and_wait(stack: &Stack, extra: &[&str]) -> tokio::task::JoinHandle<(Option<i32>, String)> {
    let stack_env = stack.env();
    let mut args = vec!["resync", "acme", "--wait", "--timeout", "240"];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    tokio::spawn(async move {
        let output = tokio::process::Command::new(usersync_e2e::binary("usersync"))
            .args(args)
            .envs(stack_env)
            .output()
            .await
            .expect("usersync resync --wait");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    })
}

/// The run whose end `resync --wait` printed.
fn ended_run(output: &str) -> String {
    output
        .lines()
        .find_map(|line| {
            line.strip_prefix("run ")?
                .split_once(" ended ")
                .map(|(id, _)| id.to_owned())
        })
        .unwrap_or_else(|| panic!("no run ended in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_before_the_run_reads_its_round_joins_it_and_wait_follows_it_to_the_end() {
    // Graph retries the held token request as long as the test needs.
    let stack = Stack::start_with(
        "coalesce",
        vec![small_pools(), ("GRAPH_RETRY_ATTEMPTS", "1000".to_owned())],
    )
    .await;
    seed(&stack).await;
    apply(&stack, &tenant_file()).await;
    // Entra throttles every token request until the faults are cleared: the run
    // is recorded but has not started reading the directory.
    let faults = format!("/_sim/tenants/{ENTRA_TENANT}/faults");
    stack
        .graph_call(
            Method::POST,
            &faults,
            Some(json!({"kind": "throttle", "retry_after": "0.5", "count": 100000,
                        "path_prefix": format!("/{ENTRA_TENANT}/oauth2")})),
        )
        .await;
    let first = resync_and_wait(&stack, &[]);
    let running = wait_for("the first run to start", Duration::from_secs(30), || async {
        let status = status(&stack, "acme").await;
        (status["state"] == "fetching").then(|| status["last_run"]["id"].as_str().unwrap().to_owned())
    })
    .await;
    // The tenant file changes before the second request: the run reads with
    // the new one (no group filter: every user, not only Telephony's 120).
    let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
    let mut provider: Value = serde_json::from_str(file["provider_settings"].as_str().unwrap()).unwrap();
    provider["user_filter"]["memberOf"] = json!([]);
    file["provider_settings"] = json!(provider.to_string());
    apply(&stack, &file.to_string()).await;
    let second = resync_and_wait(&stack, &[]);
    wait_for("the second request to join", Duration::from_secs(30), || async {
        (stack.sql(&format!(
            "SELECT count(*) FROM run_joins WHERE run_id = '{running}'"
        )) == "1")
            .then_some(())
    })
    .await;
    stack.graph_call(Method::DELETE, &faults, None).await;

    let (code, joined) = second.await.unwrap();
    assert_eq!(code, Some(0), "{joined}");
    assert!(joined.contains(&format!("joined run {running}")), "{joined}");
    assert_eq!(ended_run(&joined), running, "{joined}");
    let (code, first_out) = first.await.unwrap();
    assert_eq!(code, Some(0), "{first_out}");
    assert!(first_out.contains(&format!("run {running} ")), "{first_out}");
    assert!(first_out.contains("pages fetched"), "{first_out}");
    assert!(first_out.contains("users differed"), "{first_out}");
    assert_eq!(ended_run(&first_out), running, "{first_out}");
    assert_eq!(
        stack
            .cli_json(&["runs", "acme", "--json"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "the second request joined the first run: no follow-up"
    );
    let synced = pbx_users(&stack).await.len();
    assert!(
        synced > 120,
        "the run read with the changed tenant file: {synced} users"
    );

    // A failed run ends --wait with exit code 3.
    apply(&stack, &tenant_file_with("not-the-secret")).await;
    let (ok, out, _) = stack.cli(&["resync", "acme", "--wait"], None).await;
    assert!(!ok);
    assert!(out.contains("ended failed"), "{out}");
}

/// Seeds acme and starts its first sync, slowed down so it is still applying
/// (past reading its round) when this returns its id.
async fn first_sync_applying(stack: &Stack) -> String {
    seed(stack).await;
    apply(stack, &tenant_file()).await;
    // Every PBX write takes 100 ms: the first sync's 120 creates keep it applying.
    stack
        .pbx_call(
            Method::POST,
            "/_sim/companies/acme/faults",
            Some(json!({"kind": "latency", "ms": 100})),
        )
        .await;
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    wait_for("the first run to apply", Duration::from_secs(60), || async {
        let status = status(stack, "acme").await;
        (status["state"] == "applying").then(|| status["last_run"]["id"].as_str().unwrap().to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_while_a_run_applies_gets_one_follow_up_that_reads_the_change_and_wait_follows_it() {
    let stack = Stack::start_with(
        "follow_up",
        vec![small_pools(), ("USERSYNC_SCHEDULE_POLL_SECS", "0.5".to_owned())],
    )
    .await;
    let first = first_sync_applying(&stack).await;

    // A member changes in Entra after the first run read its round.
    let (_, members) = telephony_members(&stack).await;
    let changed = members[0].clone();
    stack
        .graph_call(
            Method::PATCH,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users/{changed}"),
            Some(json!({"surname": "Efteråt"})),
        )
        .await;
    let waiting = resync_and_wait(&stack, &[]);
    // More requests meanwhile, one of them for a full read: still one follow-up.
    let (ok, _, stderr) = stack.cli(&["resync", "acme", "--full"], None).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    let queued = wait_for("the follow-up to be queued", Duration::from_secs(30), || async {
        let status = status(&stack, "acme").await;
        let queued = status["queued_run"].as_str()?.to_owned();
        (status["state"] == "applying" && status["last_run"]["id"] == first.as_str()).then_some(queued)
    })
    .await;
    assert_ne!(queued, first);
    let (ok, text, _) = stack.cli(&["status", "acme"], None).await;
    assert!(ok && text.contains(&format!("queued: run {queued}")), "{text}");

    let (code, out) = waiting.await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        ended_run(&out),
        queued,
        "wait follows the follow-up, not the first run:\n{out}"
    );
    let runs = stack.cli_json(&["runs", "acme", "--json"]).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "one follow-up however many requests: {runs:#?}");
    assert_eq!(runs[0]["id"], queued.as_str(), "{runs:#?}");
    assert_eq!(runs[1]["id"], first.as_str(), "{runs:#?}");
    assert_eq!(runs[0]["state"], "succeeded", "{runs:#?}");
    let time = |field: &Value| chrono::DateTime::parse_from_rfc3339(field.as_str().unwrap()).unwrap();
    let gap = time(&runs[0]["started_at"]) - time(&runs[1]["finished_at"]);
    assert!(
        gap >= chrono::TimeDelta::zero(),
        "the follow-up started after the first run ended: {runs:#?}"
    );
    // A figure, not a limit: how soon the follow-up started.
    println!(
        "follow-up started {} ms after the first run ended",
        gap.num_milliseconds()
    );
    assert_eq!(
        stack.sql(&format!("SELECT full_round FROM runs WHERE id = '{queued}'")),
        "t",
        "a --full request made the follow-up read the whole directory"
    );
    assert_eq!(pbx_users(&stack).await[&changed]["surname"], "Efteråt");
    assert_eq!(status(&stack, "acme").await["queued_run"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_queued_before_the_fetcher_dies_is_started_by_the_next_one() {
    let mut stack = Stack::start_with("follow_up_crash", vec![small_pools()]).await;
    let first = first_sync_applying(&stack).await;
    let (ok, out, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    let queued = wait_for("the follow-up to be queued", Duration::from_secs(30), || async {
        status(&stack, "acme").await["queued_run"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(
        out.contains(&queued),
        "the request's own run is the follow-up: {out}"
    );

    // The fetcher dies; the applier ends the first run meanwhile. The
    // follow-up is a row in PostgreSQL, not something a process holds.
    stack.kill_service(0).await;
    wait_for("the first run to end", Duration::from_secs(120), || async {
        (stack.sql(&format!(
            "SELECT finished_at IS NOT NULL FROM runs WHERE id = '{first}'"
        )) == "t")
            .then_some(())
    })
    .await;
    assert_eq!(
        stack.sql(&format!("SELECT state FROM runs WHERE id = '{queued}'")),
        "queued"
    );
    assert_eq!(status(&stack, "acme").await["state"], "queued");
    stack.start_service("usersync-fetcher").await;
    let done = finished_run(&stack, Some(&first)).await;
    assert_eq!(done["last_run"]["id"], queued.as_str(), "{done:#}");
    assert_eq!(done["last_run"]["state"], "succeeded", "{done:#}");
    assert_eq!(stack.sql("SELECT count(*) FROM runs"), "2");
    assert_eq!(
        stack.sql(&format!(
            "SELECT started_by_request FROM runs WHERE id = '{queued}'"
        )),
        "1",
        "one start request published, by the new fetcher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_request_is_listed_with_its_reason_and_replayed_once_fixed() {
    let stack = Stack::start_with("dlq", vec![small_pools()]).await;
    seed(&stack).await;
    // The tenant does not exist yet: the fetcher parks the request.
    publish_with_rabbitmqadmin(&stack, r#"{"tenant_id":"acme","full":true}"#).await;
    let parked = wait_for("the request to be parked", Duration::from_secs(30), || async {
        let list = stack.cli_json(&["dlq", "list", "fetcher", "--json"]).await;
        (list.as_array().is_some_and(|l| l.len() == 1)).then_some(list)
    })
    .await;
    let letter = &parked[0];
    assert_eq!(letter["tenant_id"], "acme");
    assert_eq!(letter["stage"], "fetcher");
    // rabbitmqadmin set no AMQP type, and the park keeps the message as it was.
    assert!(letter["kind"].is_null(), "{letter}");
    assert!(
        letter["reason"].as_str().unwrap().contains("no tenant \"acme\""),
        "{letter}"
    );
    let (ok, text, _) = stack.cli(&["dlq", "list"], None).await;
    assert!(ok && text.contains("no tenant"), "{text}");
    // Listing leaves it parked.
    assert_eq!(
        stack
            .cli_json(&["dlq", "list", "fetcher", "--json"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    apply(&stack, &tenant_file()).await;
    let (ok, out, stderr) = stack.cli(&["dlq", "replay", "fetcher"], None).await;
    assert!(ok, "{stderr}");
    assert!(out.contains("1 message(s) moved"), "{out}");
    let status = finished_run(&stack, None).await;
    assert_eq!(status["last_run"]["state"], "succeeded", "{status:#}");
    assert_eq!(pbx_users(&stack).await.len(), 120);
    assert_eq!(stack.cli_json(&["dlq", "list", "--json"]).await, json!([]));

    let (ok, _, stderr) = stack.cli(&["dlq", "replay", "nowhere"], None).await;
    assert!(!ok);
    assert!(
        stderr.contains("STAGE is one of fetcher, differ, applier, notifier"),
        "{stderr}"
    );
}

const TENANTS: usize = 10;
const BAD_SECRET: usize = 3;
const THROTTLED: usize = 7;
const PBX_THROTTLED: usize = 5;

fn entra_tenant(n: usize) -> String {
    format!("5b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3{n:02x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tenants_on_two_replicas_of_each_service_bad_and_throttled_ones_hold_up_no_one() {
    let mut stack = Stack::start_with("isolation", vec![small_pools()]).await;
    for service in usersync_e2e::SERVICES {
        stack.start_service(service).await;
    }
    for n in 0..TENANTS {
        let id = format!("co{n}");
        stack
            .graph_call(
                Method::POST,
                "/_sim/tenants",
                Some(json!({
                    "tenant_id": entra_tenant(n), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "seed": n, "users": 30, "groups": [{"name": "Telephony", "members": 20}], "page_size": 10
                })),
            )
            .await;
        stack
            .pbx_call(
                Method::PUT,
                &format!("/_sim/companies/{id}"),
                Some(json!({
                    "templates": [{"id": "standard", "name": "Standard"}],
                    "numbers": [{"number": CALLER_ID, "kind": "main"}]
                })),
            )
            .await;
        let secret = if n == BAD_SECRET {
            "not-the-secret"
        } else {
            CLIENT_SECRET
        };
        let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
        file["id"] = json!(id);
        file["pbx_company_id"] = json!(id);
        file["provider_settings"] = json!({
            "tenant_id": entra_tenant(n), "client_id": CLIENT_ID, "client_secret": secret,
            "user_filter": {"memberOf": ["Telephony"]}
        });
        apply(&stack, &file.to_string()).await;
    }
    // One tenant's Graph throttles every call for a long while.
    stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{}/faults", entra_tenant(THROTTLED)),
            Some(json!({"kind": "throttle", "retry_after": "20", "count": 1000})),
        )
        .await;
    // Another tenant's PBX answers only two calls a second (429 with Retry-After beyond).
    stack
        .pbx_call(
            Method::POST,
            &format!("/_sim/companies/co{PBX_THROTTLED}/faults"),
            Some(json!({"kind": "rate_limit", "per_second": 2})),
        )
        .await;
    for n in 0..TENANTS {
        let (ok, _, stderr) = stack.cli(&["resync", &format!("co{n}")], None).await;
        assert!(ok, "{stderr}");
    }

    let others_done = wait_for(
        "every other tenant's run to end",
        Duration::from_secs(180),
        || async {
            let lines = stack.cli_json(&["status", "--json"]).await;
            let lines = lines.as_array().unwrap().clone();
            let done = lines
                .iter()
                .filter(|l| l["id"] != format!("co{THROTTLED}"))
                .all(|l| !l["last_run"]["finished_at"].is_null());
            done.then_some(lines)
        },
    )
    .await;
    for line in &others_done {
        let id = line["id"].as_str().unwrap();
        let state = &line["last_run"]["state"];
        if id == format!("co{BAD_SECRET}") {
            assert_eq!(state, "failed", "{line:#}");
            assert!(line["last_run"]["error"].as_str().unwrap().contains("7000215"));
        } else if id == format!("co{THROTTLED}") {
            assert_ne!(
                state, "succeeded",
                "the throttled tenant is still waiting: {line:#}"
            );
        } else if id == format!("co{PBX_THROTTLED}") {
            // Slowed on its own, and throttling fails no change.
            assert_eq!(state, "succeeded", "{line:#}");
            assert_eq!(line["last_run"]["counts"]["created"], 20, "{line:#}");
        } else {
            assert_eq!(state, "succeeded", "{line:#}");
            let users = stack
                .pbx_call(Method::GET, &format!("/_sim/companies/{id}/users"), None)
                .await;
            assert_eq!(users["items"].as_array().unwrap().len(), 20, "{id}");
        }
    }
    let stats = stack
        .graph_call(
            Method::GET,
            &format!("/_sim/tenants/{}/stats", entra_tenant(THROTTLED)),
            None,
        )
        .await;
    assert!(stats["faults_served"].as_u64().unwrap() >= 1, "{stats}");
    // Both replicas of each stage took work.
    for service in ["usersync-fetcher", "usersync-differ"] {
        for replica in stack
            .metrics
            .iter()
            .filter(|(name, _)| name == service)
            .map(|(_, url)| url)
        {
            let text = stack
                .http
                .get(replica)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                text.lines()
                    .any(|l| l.starts_with("usersync_messages_total") && l.contains(r#"outcome="ok""#)),
                "{service} replica {replica} handled nothing:\n{text}"
            );
        }
    }
}

#[test]
fn the_compose_file_and_the_monitoring_files_parse_and_name_our_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let check = r#"
import json, sys, yaml
compose = yaml.safe_load(open(sys.argv[1] + "/docker-compose.yml"))
for service in ["prometheus", "grafana", "rabbitmq", "fetcher", "differ", "applier", "notifier"]:
    assert service in compose["services"], service
prometheus = yaml.safe_load(open(sys.argv[1] + "/deploy/prometheus.yml"))
assert {job["job_name"] for job in prometheus["scrape_configs"]} == {"usersync", "rabbitmq"}
for name in ["datasources/prometheus.yml", "dashboards/usersync.yml"]:
    yaml.safe_load(open(sys.argv[1] + "/deploy/grafana/provisioning/" + name))
dashboard = json.load(open(sys.argv[1] + "/deploy/grafana/usersync-dashboard.json"))
print("\n".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])))
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", check])
        .arg(&root)
        .output()
        .expect("python3 (with python3-yaml, installed by scripts/services-up)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exprs = String::from_utf8_lossy(&output.stdout);
    for series in [
        "usersync_runs_total",
        "usersync_run_duration_seconds_bucket",
        "usersync_retries_total",
        "usersync_tenant_run_errors_total",
        "rabbitmq_queue_messages_ready",
        r"usersync\\..*\\.dlq",
    ] {
        assert!(
            exprs.contains(series),
            "the dashboard does not show {series}:\n{exprs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_deletion_gets_one_sweep_run_between_nightly_runs() {
    // The clock starts at the real now (deletions are dated from it) and moves on.
    let start = chrono::Utc::now();
    let at = |hours: i64| (start + chrono::TimeDelta::hours(hours)).to_rfc3339();
    let clock = Clock::new();
    clock.set(&at(0));
    let stack = Stack::start_with(
        "sweep",
        vec![
            clock.env(),
            ("USERSYNC_SCHEDULE_POLL_SECS", "0.5".to_owned()),
            small_pools(),
        ],
    )
    .await;
    seed(&stack).await;
    // Nightly runs three hours from the start, and then a day later.
    let nightly = (start + chrono::TimeDelta::hours(3) + chrono::TimeDelta::minutes(1))
        .with_timezone(&chrono_tz::Europe::Stockholm);
    let mut file: Value = serde_json::from_str(&with_schedule(&nightly.format("%H:%M").to_string())).unwrap();
    file["delete_after_days"] = json!(1);
    apply(&stack, &file.to_string()).await;
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    let first = finished_run(&stack, None).await;
    assert_eq!(first["last_run"]["state"], "succeeded", "{first:#}");
    wait_for("the due time to be computed", Duration::from_secs(30), || async {
        (stack.sql("SELECT count(*) FROM tenant_schedule") == "1").then_some(())
    })
    .await;

    // A member leaves an hour in; a manual run finds it and dates its deletion a
    // day ahead (the differ reads the same clock); the nightly run keeps it pending.
    let (_, members) = telephony_members(&stack).await;
    stack
        .graph_call(
            Method::DELETE,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users/{}", members[0]),
            None,
        )
        .await;
    clock.set(&at(1));
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");
    let first_id = first["last_run"]["id"].as_str().unwrap().to_owned();
    let found = finished_run(&stack, Some(&first_id)).await;
    assert_eq!(found["pending_deletions"], 1, "{found:#}");
    clock.set(&at(4));
    let found_id = found["last_run"]["id"].as_str().unwrap().to_owned();
    let nightly_run = finished_run(&stack, Some(&found_id)).await;
    assert_eq!(nightly_run["last_run"]["trigger"], "scheduled", "{nightly_run:#}");
    assert_eq!(nightly_run["pending_deletions"], 1, "{nightly_run:#}");

    // A day after it was found the deletion is due, an hour before the next nightly run.
    clock.set(&at(26));
    let nightly_id = nightly_run["last_run"]["id"].as_str().unwrap().to_owned();
    let sweep = finished_run(&stack, Some(&nightly_id)).await;
    assert_eq!(sweep["last_run"]["trigger"], "sweep", "{sweep:#}");
    assert_eq!(sweep["last_run"]["counts"]["deleted"], 1, "{sweep:#}");
    assert_eq!(sweep["pending_deletions"], 0, "{sweep:#}");
    assert_eq!(
        logged(&stack, "usersync-fetcher", "run requested for due deletions"),
        1
    );
    assert_eq!(
        stack.sql("SELECT count(*) FROM runs WHERE trigger = 'sweep'"),
        "1"
    );
    assert_eq!(
        stack.sql("SELECT count(*) FROM runs WHERE trigger = 'scheduled'"),
        "1"
    );
}

/// SIGTERM stops every service gracefully: it takes no new work, finishes
/// what it has in hand, closes its connection and exits 0 (the fetcher's
/// scheduler stops too).
#[tokio::test]
async fn sigterm_stops_every_service_with_exit_status_0() {
    let mut stack =
        Stack::start_with("graceful_stop", vec![("USERSYNC_SHUTDOWN_SECS", "5".to_owned())]).await;
    for (index, service) in usersync_e2e::SERVICES.iter().enumerate() {
        let status = stack.terminate_service(index, Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "{service} exited with {status}");
        assert_eq!(logged(&stack, service, "stopped consuming"), 1, "{service}");
    }
    assert_eq!(logged(&stack, "usersync-fetcher", "scheduler stopped"), 1);
}

/// Messages ever published to a queue, as the management API last counted them.
async fn queue_published(stack: &Stack, queue: &str) -> u64 {
    let url = format!(
        "{}/queues/{}/{queue}",
        usersync_e2e::RABBITMQ_API,
        urlencode(&stack.vhost)
    );
    let reply: Value = stack
        .http
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("the management API")
        .json()
        .await
        .expect("the management API's answer");
    reply["message_stats"]["publish"].as_u64().unwrap_or(0)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Tenants of the scheduled backlog in the express-lane test.
const BACKLOG_TENANTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_resync_completes_while_a_backlog_of_scheduled_runs_is_stuck_in_the_normal_lane() {
    let mut stack = Stack::start("express_lane").await;
    // The differ is down while the backlog builds up, so it is all in its queue at once.
    stack.kill_service(1).await;
    let backlog: Vec<String> = (0..BACKLOG_TENANTS).map(|n| format!("night{n}")).collect();
    for (n, id) in backlog.iter().map(String::as_str).chain(["acme"]).enumerate() {
        let users = if id == "acme" { 12 } else { 30 };
        stack
            .graph_call(
                Method::POST,
                "/_sim/tenants",
                Some(json!({
                    "tenant_id": entra_tenant(0x40 + n), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "seed": n, "users": users, "page_size": 10
                })),
            )
            .await;
        stack
            .pbx_call(
                Method::PUT,
                &format!("/_sim/companies/{id}"),
                Some(json!({
                    "templates": [{"id": "standard", "name": "Standard"}],
                    "numbers": [{"number": CALLER_ID, "kind": "main"}]
                })),
            )
            .await;
        let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
        file["id"] = json!(id);
        file["pbx_company_id"] = json!(id);
        file["welcome_mail"] = json!(false);
        file["provider_settings"] = json!({
            "tenant_id": entra_tenant(0x40 + n), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "user_filter": {"memberOf": []}
        });
        apply(&stack, &file.to_string()).await;
    }
    // The night's requests, as the scheduler sends them.
    for id in &backlog {
        stack
            .publish(
                usersync_e2e::inject::RESYNC,
                "scheduled",
                &json!({"tenant_id": id, "trigger": "scheduled"}).to_string(),
                json!({"message_id": uuid::Uuid::new_v4().to_string(), "type": "usersync.resync.v1"}),
            )
            .await;
    }
    let differing =
        "SELECT count(*) FROM runs WHERE trigger = 'scheduled' AND state = 'differing' AND tenant_id LIKE 'night%'";
    wait_for(
        "the fetcher to publish every backlog round",
        Duration::from_secs(60),
        || {
            let n = stack.sql(differing);
            async move { (n == BACKLOG_TENANTS.to_string()).then_some(()) }
        },
    )
    .await;
    // A run shows `differing` once the broker confirmed the end of its round:
    // the whole backlog is in the differ's normal queue now.
    // The backlog runs' rows are locked: whatever of theirs the differ takes
    // waits on the lock, so the normal lane is stuck until this test lets go,
    // however fast the machine.
    let (db, connection) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the stack's database");
    tokio::spawn(connection);
    db.batch_execute("BEGIN").await.expect("BEGIN");
    let locked = db
        .query(
            "SELECT id FROM runs WHERE trigger = 'scheduled' AND tenant_id LIKE 'night%' FOR UPDATE",
            &[],
        )
        .await
        .expect("locking the backlog's runs");
    assert_eq!(locked.len(), BACKLOG_TENANTS);
    stack.start_service("usersync-differ").await;

    let (ok, stdout, stderr) = stack
        .cli(&["resync", "acme", "--wait", "--timeout", "120"], None)
        .await;
    assert!(
        ok,
        "the manual resync did not succeed behind the backlog:\n{stdout}\n{stderr}"
    );
    assert_eq!(status(&stack, "acme").await["last_run"]["state"], "succeeded");
    let created = stack.sql("SELECT created FROM runs WHERE tenant_id = 'acme'");
    assert_ne!(created, "0", "the manual run created no user");
    assert_eq!(write_counts(&stack).await["writes"].to_string(), created);
    // The backlog is still where it was: no run of it ended (its pages wait in
    // the normal lane, in the work queue or between its retry tiers).
    let ended = stack.sql(
        "SELECT count(*) FROM runs WHERE tenant_id LIKE 'night%' AND state IN ('succeeded', 'partial', 'failed')",
    );
    assert_eq!(ended, "0", "a backlog run ended while its rows were locked");
    // The manual run's batches took the applier's express queue, none the normal one.
    wait_for(
        "the manual run's batches counted on usersync.applier.express",
        Duration::from_secs(30),
        || {
            let stack = &stack;
            async move { (queue_published(stack, "usersync.applier.express").await > 0).then_some(()) }
        },
    )
    .await;
    assert_eq!(queue_published(&stack, "usersync.applier.changes").await, 0);

    // Let go: the backlog drains and every night run succeeds.
    db.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    let succeeded = "SELECT count(*) FROM runs WHERE tenant_id LIKE 'night%' AND state = 'succeeded'";
    wait_for("the backlog's runs to succeed", Duration::from_secs(120), || {
        let n = stack.sql(succeeded);
        async move { (n == BACKLOG_TENANTS.to_string()).then_some(()) }
    })
    .await;
    let stats = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    for id in &backlog {
        let created = stack.sql(&format!("SELECT created FROM runs WHERE tenant_id = '{id}'"));
        assert_ne!(created, "0", "{id} created no user");
        assert_eq!(
            stats["companies"][id]["writes"].to_string(),
            created,
            "{id}: one PBX write per created user: {stats}"
        );
    }
}
