//! `scripts/bench`: the figures of issue 13, each with its floor measured in
//! the same run. Release binaries, the real services over the local RabbitMQ
//! and PostgreSQL, the simulators and an SMTP server, all driven through their
//! documented interfaces (the CLI, the simulators' `/_sim` APIs, the
//! management API, `/proc`). Prints the table and writes docs/performance.md
//! (with `--quick` or `BENCH_ONLY`: target/bench/performance.md; with
//! `--quick` it exits 1 when a figure is more than 10× its floor or could not
//! be measured).
//!
//! The SMTP server of the mail figure (and of the big stack, whose notifier's
//! peak memory at 1,000 users is compared with the mail figure's) is Postfix's
//! smtp-sink, not the tests' aiosmtpd: aiosmtpd takes about 200 mails a
//! second, so with it the figure measured aiosmtpd, and 200,000 mails never
//! ended within the cap (see `usersync_e2e::sink`).
//!
//! Sizes, time caps and the parts to run come from the environment (see
//! [`Config::from_env`], [`PARTS`]).

mod floors;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use futures::{stream, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use usersync_e2e::{
    binary, free_port, poll_every,
    sink::{self, SmtpSink},
    workspace_target, Stack, PBX_TOKEN, RABBITMQ_API,
};

use report::Row;

pub const CALLER_ID: &str = "46812345600";
const CLIENT_ID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const CLIENT_SECRET: &str = "bench~secret";
/// A figure more than this many times its floor fails `--quick`.
const QUICK_GUARD: f64 = 10.0;
/// The mail figure's guard. Its floor is a bare SMTP client against
/// smtp-sink; the notifier records each mail in PostgreSQL three times
/// (claimed, transmitting, sent) and runs beside the rest of the first sync.
/// At the quick size on debug builds it measured 4.7–11.6× its floor on
/// the 2-core machine under load (a floor of 0.3–0.8 s), 3.3× on a quiet
/// one once the marks were planned per run: 10× would fail by chance.
const MAIL_QUICK_GUARD: f64 = 30.0;

struct Config {
    /// N: the big tenant's users (figures 1, 3, 4, 6, 7).
    users: u64,
    /// Users of the welcome-mail tenant (figure 2): 2 mails each.
    mail_users: u64,
    tenants: u64,
    tenant_users: u64,
    /// Users of the small tenants (figure 5's manual resync, figure 6's 1,000).
    small_users: u64,
    rss_users: u64,
    changes: usize,
    page_size: u64,
    /// PBX calls in flight per tenant: the tenant's `max_in_flight` (the default).
    pbx_in_flight: usize,
    /// SMTP connections: the notifier's pool.
    smtp_connections: usize,
    /// Each figure waits at most this long (and never past the whole budget).
    figure_cap: Duration,
    /// The welcome-mail figure's own cap: its 2N mails take longer than the rest.
    mail_cap: Duration,
    budget_end: Instant,
    /// `BENCH_ONLY`: the parts to run (all when unset), of [`PARTS`].
    only: Option<Vec<String>>,
}

/// What `BENCH_ONLY` may name: `big` (figures 1, 3, 4, 4b, 7 and the peak
/// memory at 1,000 users), `mail` (figure 2), `tenants` (figure 5). The
/// peak memory rows need both `big` and `mail`.
const PARTS: [&str; 3] = ["big", "mail", "tenants"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

impl Config {
    /// `BENCH_USERS`, `BENCH_MAIL_USERS`, `BENCH_TENANTS`, `BENCH_TENANT_USERS`,
    /// `BENCH_CHANGES`, `BENCH_PAGE_SIZE`, `BENCH_PBX_IN_FLIGHT`,
    /// `BENCH_SMTP_CONNECTIONS`, `BENCH_FIGURE_CAP_SECS`, `BENCH_MAIL_CAP_SECS`, `BENCH_BUDGET_SECS`, `BENCH_ONLY`.
    fn from_env(quick: bool) -> Config {
        let users = env_or("BENCH_USERS", if quick { 3_000 } else { 100_000 });
        let budget = env_or("BENCH_BUDGET_SECS", if quick { 170 } else { 870 });
        Config {
            users,
            mail_users: env_or("BENCH_MAIL_USERS", if quick { 1_500 } else { users }),
            tenants: env_or("BENCH_TENANTS", if quick { 50 } else { 1_000 }),
            tenant_users: env_or("BENCH_TENANT_USERS", if quick { 20 } else { 100 }),
            small_users: 50,
            rss_users: 1_000,
            changes: env_or("BENCH_CHANGES", if quick { 10 } else { 50 }),
            page_size: env_or("BENCH_PAGE_SIZE", 999),
            pbx_in_flight: env_or("BENCH_PBX_IN_FLIGHT", 8),
            smtp_connections: env_or("BENCH_SMTP_CONNECTIONS", 32),
            figure_cap: Duration::from_secs(env_or("BENCH_FIGURE_CAP_SECS", if quick { 60 } else { 150 })),
            mail_cap: Duration::from_secs(env_or("BENCH_MAIL_CAP_SECS", if quick { 60 } else { 360 })),
            budget_end: Instant::now() + Duration::from_secs(budget),
            only: std::env::var("BENCH_ONLY").ok().map(|parts| {
                let parts: Vec<String> = parts.split(',').map(|part| part.trim().to_owned()).collect();
                for part in &parts {
                    assert!(
                        PARTS.contains(&part.as_str()),
                        "BENCH_ONLY={part:?}: name parts of {PARTS:?}, separated by commas"
                    );
                }
                parts
            }),
        }
    }

    /// Whether this run includes `part` (see [`PARTS`]).
    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| p == part))
    }

    /// How long the next wait may take: the figure's cap, within the budget.
    fn deadline(&self) -> Duration {
        self.deadline_within(self.figure_cap)
    }

    /// How long the next wait may take under `cap`, within the budget.
    fn deadline_within(&self, cap: Duration) -> Duration {
        cap.min(self.budget_end.saturating_duration_since(Instant::now()))
    }
}

/// The workspace: the folder that holds `target/`.
fn workspace_root() -> PathBuf {
    let target = workspace_target();
    target.parent().map_or(target.clone(), Path::to_path_buf)
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Graph directory, a PBX company and the tenant file that joins them.
async fn tenant(stack: &Stack, id: &str, seed: u64, users: u64, page_size: u64, mail: bool) -> String {
    let entra = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()).to_string();
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(
                json!({"tenant_id": entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                        "seed": seed, "users": users, "page_size": page_size}),
            ),
        )
        .await;
    company(stack, id).await;
    let file = tenant_file(id, &entra, mail);
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    assert!(ok, "tenant apply {id}: {stderr}");
    entra
}

/// The bench's tenant file for tenant `id` on Entra tenant `entra`.
fn tenant_file(id: &str, entra: &str, mail: bool) -> Value {
    let mut file = json!({
        "id": id, "name": id, "type": "ad_sync", "mode": "user_sync", "welcome_mail": mail,
        "delete_after_days": 7, "error_notification_email": "it@bench.example",
        "error_notification_level": "error",
        "provider_settings": {"tenant_id": entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                              "user_filter": {"memberOf": []}},
        "pbx_company_id": id, "default_caller_id": CALLER_ID, "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname",
                          "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail"},
        "schedule": {"at": "02:00", "timezone": "Europe/Stockholm"}
    });
    if mail {
        file["welcome_mail_copy_to"] = json!("pbx-admin@bench.example");
    }
    file
}

async fn company(stack: &Stack, id: &str) {
    stack
        .pbx_call(
            Method::PUT,
            &format!("/_sim/companies/{id}"),
            Some(json!({"templates": [{"id": "standard", "name": "Standard"}],
                        "numbers": [{"number": CALLER_ID, "kind": "main"}]})),
        )
        .await;
}

/// What `usersync resync ID --wait` showed.
struct Resync {
    took: Duration,
    /// When its progress first showed the run past `fetching` (±0.5 s, its poll).
    fetched: Option<Duration>,
    /// Exit code 0: the run succeeded.
    succeeded: bool,
    last_line: String,
}

/// Runs `usersync resync ID --wait`, reading its progress lines as they come.
async fn resync_wait(stack: &Stack, tenant: &str, deadline: Duration) -> Result<Resync, String> {
    let started = Instant::now();
    let timeout = deadline.as_secs().max(1).to_string();
    let mut child = tokio::process::Command::new(binary("usersync"))
        .args(["resync", tenant, "--wait", "--timeout", &timeout])
        .envs(stack.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("usersync resync: {err}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut fetched, mut last_line) = (None, String::new());
    while let Ok(Some(line)) = lines.next_line().await {
        let state = line
            .strip_prefix("run ")
            .and_then(|rest| rest.split_whitespace().nth(1));
        if fetched.is_none() && state.is_some_and(|state| state != "fetching:" && state != "queued:") {
            fetched = Some(started.elapsed());
        }
        last_line = line;
    }
    let output = child.wait_with_output().await.map_err(|err| err.to_string())?;
    let took = started.elapsed();
    if output.status.code() == Some(1) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(if took >= deadline {
            format!("not done after {} (the figure's cap)", secs(took))
        } else {
            format!("usersync resync failed: {}", stderr.trim())
        });
    }
    Ok(Resync {
        took,
        fetched,
        succeeded: output.status.success(),
        last_line,
    })
}

/// The tenant's last run from its start (the fetcher taking the request) to its end, in seconds.
async fn run_duration(stack: &Stack, tenant: &str) -> f64 {
    let run = &stack.cli_json(&["status", tenant, "--json"]).await[0]["last_run"];
    let time = |key: &str| {
        run[key]
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
    };
    match (time("started_at"), time("finished_at")) {
        (Some(started), Some(finished)) => (finished - started).as_seconds_f64(),
        _ => f64::NAN,
    }
}

/// Peak RSS (VmHWM) of each running service process, in bytes.
fn peak_rss(stack: &Stack) -> Vec<(String, u64)> {
    stack
        .service_pids()
        .into_iter()
        .filter_map(|(name, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
            let kib: u64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some((name, kib * 1024))
        })
        .collect()
}

fn pbx_counter(stats: &Value, company: &str, counter: &str) -> u64 {
    stats["companies"][company][counter].as_u64().unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Peak memory of the services at the small and the big size.
#[derive(Default)]
struct Memory {
    small: Vec<(String, u64)>,
    big: Vec<(String, u64)>,
    /// A run of N users was cut off by its cap: its peak so far.
    unfinished: bool,
}

impl Memory {
    fn add_big(&mut self, peaks: Vec<(String, u64)>) {
        for (name, bytes) in peaks {
            match self.big.iter_mut().find(|(n, _)| *n == name) {
                Some((_, peak)) => *peak = (*peak).max(bytes),
                None => self.big.push((name, bytes)),
            }
        }
    }
}

const NOTIFIED_FIGURE: &str = "directory change to PBX write through a notification";
const NOTIFIED_TARGET: &str = "p50 ≤ 2 s";

/// Updates the PBX has counted for the big tenant.
async fn updated_in_big(stack: &Stack) -> u64 {
    pbx_counter(
        &stack.pbx_call(Method::GET, "/_sim/stats", None).await,
        "big",
        "updated",
    )
}

/// How long after `since` the big tenant's PBX counted an update past
/// `before`; `None` if not within `left`.
async fn written_after(stack: &Stack, before: u64, since: Instant, left: Duration) -> Option<Duration> {
    poll_every(left, Duration::from_millis(20), || async {
        (updated_in_big(stack).await > before).then(|| since.elapsed())
    })
    .await
}

/// A latency figure over `config.changes` changes: p50 and p95 of those
/// written within the cap; `passes(p50, p95)` judges a complete set.
fn latency_row(
    mut row: Row,
    mut latencies: Vec<f64>,
    config: &Config,
    passes: impl Fn(f64, f64) -> bool,
) -> Row {
    if latencies.is_empty() {
        return row.missed(format!("no change written within {}", secs(config.deadline())));
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&latencies, 50.0), percentile(&latencies, 95.0));
    let all = latencies.len() == config.changes;
    row.measured = format!(
        "p50 {p50:.2} s, p95 {p95:.2} s{}",
        if all {
            String::new()
        } else {
            format!(
                " ({} of {} changes within the cap)",
                latencies.len(),
                config.changes
            )
        }
    );
    row.pass = Some(all && passes(p50, p95));
    row
}

/// Figure 4b: the big tenant's notifications turned on, then `ids` changed
/// one at a time in the directory, each timed from the change to its PBX write.
async fn notified_changes(stack: &Stack, entra: &str, ids: &[String], config: &Config) -> Row {
    let row = Row::new(
        format!("{NOTIFIED_FIGURE} ({} changes)", config.changes),
        NOTIFIED_TARGET,
    );
    let mut file = tenant_file("big", entra, false);
    file["change_notifications"] = json!(true);
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    if !ok {
        return row.missed(format!("turning notifications on: {}", stderr.trim()));
    }
    let listing = format!("/_sim/tenants/{entra}/subscriptions");
    let subscribed = poll_every(config.deadline(), Duration::from_millis(200), || async {
        let listed = stack.graph_call(Method::GET, &listing, None).await;
        listed["value"]
            .as_array()?
            .iter()
            .any(|s| s["resource"] == "/users" && s["status"] == "active")
            .then_some(())
    })
    .await;
    if subscribed.is_none() {
        return row.missed(format!(
            "no subscription on /users at Graph within {}",
            secs(config.deadline())
        ));
    }
    let mut latencies = Vec::new();
    let changes_end = Instant::now() + config.deadline();
    for (index, id) in ids.iter().enumerate() {
        let left = changes_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let before = updated_in_big(stack).await;
        let changed = Instant::now();
        stack
            .graph_call(
                Method::PATCH,
                &format!("/_sim/tenants/{entra}/users/{id}"),
                Some(json!({"surname": format!("Notified{index}")})),
            )
            .await;
        match written_after(stack, before, changed, left).await {
            Some(latency) => latencies.push(latency.as_secs_f64()),
            None => eprintln!("notified change {index}: not written within {}", secs(left)),
        }
    }
    latency_row(row, latencies, config, |p50, _| p50 <= 2.0)
}

/// Figures 1, 3, 4, 4b and 7 on the big tenant, and the services' memory at both sizes.
async fn big_tenant(config: &mut Config, rows: &mut Vec<Row>, memory: &mut Memory) {
    let n = count(config.users);
    // The API's port is chosen first: the fetcher registers its address with Graph.
    let api_port = free_port();
    // On smtp-sink, as the mail figure's stack: the notifier's peak memory at
    // 1,000 users (here) and at N (there) is taken against the same server.
    let mut stack = Stack::start_with_sink(
        "bench_big",
        vec![
            ("RUST_LOG", "warn".into()),
            ("USERSYNC_PUBLIC_URL", format!("http://127.0.0.1:{api_port}")),
            ("USERSYNC_SUBSCRIPTION_POLL_SECS", "1".into()),
        ],
    )
    .await;
    stack.start_api_at(api_port, &[]).await;
    let small = tenant(&stack, "small", 2, config.rss_users, config.page_size, true).await;
    let entra = tenant(&stack, "big", 1, config.users, config.page_size, false).await;
    company(&stack, "floor").await;

    let run = resync_wait(&stack, "small", config.deadline()).await;
    // The notifier's peak includes its mails, which go out after the run
    // ends; they are done before the figures below start.
    let mails = 2 * config.rss_users;
    let mut counter = sink::DumpCounter::new(&stack.maildir);
    let mailed = poll_every(config.deadline(), Duration::from_millis(100), || {
        std::future::ready((counter.count() >= mails).then_some(()))
    })
    .await;
    memory.small = peak_rss(&stack);
    match run {
        Ok(run) if run.succeeded => {}
        Ok(run) => eprintln!("the {} users' first sync: {}", config.rss_users, run.last_line),
        Err(why) => {
            memory.unfinished = true;
            eprintln!("the {} users' first sync: {why}", config.rss_users);
        }
    }
    if mailed.is_none() {
        memory.unfinished = true;
        eprintln!(
            "the {} users' first sync: {} of {mails} mails",
            config.rss_users,
            counter.count()
        );
    }

    let mut first = Row::new(
        format!("first sync, {n} users, four stages, welcome mail off"),
        "≤ 60 s and ≤ 2× floor",
    );
    let graph = floors::GraphTenant {
        sim: &stack.graph.url,
        tenant_id: &entra,
        client_id: CLIENT_ID,
        secret: CLIENT_SECRET,
    };
    let floor = floors::pipeline(
        &stack.http,
        &graph,
        &stack.pbx.url,
        PBX_TOKEN,
        "floor",
        config.pbx_in_flight,
        config.changes,
    )
    .await
    .expect("the pipeline floor");
    assert_eq!(floor.posted as u64, config.users, "the floor posted every user");
    first.floor = format!(
        "{:.1} s (page {}, POST {} in flight)",
        floor.secs, config.page_size, config.pbx_in_flight
    );
    let run = resync_wait(&stack, "big", config.deadline()).await;
    // The peak while handling N users, even if the run did not end in time.
    memory.add_big(peak_rss(&stack));
    let run = match run {
        Ok(run) if run.succeeded => run,
        Ok(run) => return rows.push(first.missed(run.last_line)),
        Err(why) => {
            memory.unfinished = true;
            rows.push(first.missed(why));
            let skipped = "the first sync did not end";
            rows.push(Row::new("next nightly run, nothing changed", "≤ 3 s").missed(skipped));
            rows.push(
                Row::new("one user changed, resync: request to PBX write", "p50 ≤ 1 s").missed(skipped),
            );
            rows.push(Row::new(NOTIFIED_FIGURE, NOTIFIED_TARGET).missed(skipped));
            return;
        }
    };
    let took = run.took.as_secs_f64();
    first.measured = secs(run.took);
    first.ratio = Some(took / floor.secs);
    first.pass = Some(took <= 60.0 && took <= 2.0 * floor.secs);
    rows.push(first);
    let fetched = run.fetched;

    // 3. The next run, nothing changed.
    let stats_path = format!("/_sim/tenants/{entra}/stats");
    let graph_stats = || stack.graph_call(Method::GET, &stats_path, None);
    let (graph_before, pbx_before) = (
        graph_stats().await,
        stack.pbx_call(Method::GET, "/_sim/stats", None).await,
    );
    let mut nightly = Row::new(
        "next nightly run, nothing changed",
        "≤ 3 s, 0 PBX writes, Graph: token, groups delta, users delta",
    );
    match resync_wait(&stack, "big", config.deadline()).await {
        Ok(run) => {
            let (graph_after, pbx_after) = (
                graph_stats().await,
                stack.pbx_call(Method::GET, "/_sim/stats", None).await,
            );
            let delta = |path: &[&str]| {
                let get = |v: &Value| {
                    path.iter()
                        .fold(v.clone(), |v, key| v[key].clone())
                        .as_u64()
                        .unwrap_or(0)
                };
                get(&graph_after) - get(&graph_before)
            };
            let (token, groups_delta, users_delta) = (
                delta(&["token_requests"]),
                delta(&["requests", "groups_delta"]),
                delta(&["requests", "users_delta"]),
            );
            let other = delta(&["requests", "groups"]) + delta(&["requests", "members"]);
            let writes = pbx_counter(&pbx_after, "big", "writes") - pbx_counter(&pbx_before, "big", "writes");
            let run_secs = run_duration(&stack, "big").await;
            nightly.measured = format!(
                "{run_secs:.1} s ({} with `resync --wait`), {writes} PBX writes, Graph: {token} token, \
                 {groups_delta} groups delta, {users_delta} users delta, {other} other",
                secs(run.took)
            );
            nightly.pass = Some(
                run.succeeded
                    && run_secs <= 3.0
                    && writes == 0
                    && token <= 1
                    && groups_delta <= 1
                    && users_delta <= 1
                    && other == 0,
            );
            rows.push(nightly);
        }
        Err(why) => rows.push(nightly.missed(why)),
    }

    // 4. One user changed, then a resync: request to PBX write.
    let change = Row::new(
        format!(
            "one user changed, resync: request to PBX write ({} changes)",
            config.changes
        ),
        "p50 ≤ 1 s, p95 ≤ 2 s",
    );
    let mut latencies = Vec::new();
    let changes_end = Instant::now() + config.deadline();
    for (index, id) in floor.first_ids.iter().enumerate() {
        let left = changes_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stack
            .graph_call(
                Method::PATCH,
                &format!("/_sim/tenants/{entra}/users/{id}"),
                Some(json!({"givenName": format!("Changed{index}")})),
            )
            .await;
        let before = updated_in_big(&stack).await;
        let requested = Instant::now();
        let mut resync = std::pin::pin!(resync_wait(&stack, "big", left));
        let mut written = std::pin::pin!(written_after(&stack, before, requested, left));
        // A run that ended without the write stops the wait (after one more look).
        let (resync, written) = tokio::select! {
            written = &mut written => (resync.await, written),
            resync = &mut resync => {
                let written = tokio::time::timeout(Duration::from_secs(1), written).await;
                (resync, written.ok().flatten())
            }
        };
        match (resync, written) {
            (Ok(run), Some(latency)) if run.succeeded => latencies.push(latency.as_secs_f64()),
            (Ok(run), _) => eprintln!("change {index}: {}", run.last_line),
            (Err(why), _) => eprintln!("change {index}: {why}"),
        }
    }
    rows.push(latency_row(change, latencies, config, |p50, p95| {
        p50 <= 1.0 && p95 <= 2.0
    }));

    // 4b. One user changed in the directory, no resync asked for: Graph's
    // change notification to usersync-api starts the round.
    // Its time is added to the budget, as the SDK's install is: the figures
    // after it keep the time they had before it was added.
    let notified_started = Instant::now();
    rows.push(notified_changes(&stack, &entra, &floor.first_ids, config).await);
    config.budget_end += notified_started.elapsed();

    // 7. The fetch stage vs Microsoft's Python Graph SDK paging the same users.
    let mut sdk = Row::new(
        format!("fetch stage vs Python Graph SDK, {n} users"),
        "for context",
    );
    let sdk_check = |tenant: &str, users: u64| {
        let mut command = tokio::process::Command::new(workspace_root().join("scripts/msgraph-sdk-check"));
        command
            .args([
                &stack.graph.url,
                tenant,
                CLIENT_ID,
                CLIENT_SECRET,
                &users.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    // The first use installs the SDK: neither timed nor counted in the budget.
    let installing = Instant::now();
    let installed = sdk_check(&small, config.rss_users).output().await;
    config.budget_end += installing.elapsed();
    let started = Instant::now();
    let paged = tokio::time::timeout(config.deadline(), sdk_check(&entra, config.users).output()).await;
    match (installed, paged, fetched) {
        (Ok(_), Ok(Ok(out)), Some(fetched)) if out.status.success() => {
            sdk.measured = format!("fetch stage {}", secs(fetched));
            sdk.floor = format!("SDK {}", secs(started.elapsed()));
            sdk.ratio = Some(fetched.as_secs_f64() / started.elapsed().as_secs_f64());
            rows.push(sdk);
        }
        (_, Ok(Ok(out)), _) if !out.status.success() => rows.push(sdk.missed(format!(
            "the SDK failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        (_, Err(_), Some(fetched)) => {
            sdk.measured = format!("fetch stage {}", secs(fetched));
            sdk.floor = format!("SDK not done after {}", secs(started.elapsed()));
            rows.push(sdk);
        }
        _ => rows.push(sdk.missed("no fetch stage time or no SDK")),
    }
}

/// Figure 2: the first sync with the welcome mail and admin copy on, to
/// smtp-sink; its floor sends the very mails it stored again, to a second
/// smtp-sink, and both are timed from the first mail stored to the last.
async fn mail_tenant(config: &Config, rows: &mut Vec<Row>, memory: &mut Memory) {
    let stack = Stack::start_with_sink("bench_mail", vec![("RUST_LOG", "warn".into())]).await;
    tenant(&stack, "mail", 3, config.mail_users, config.page_size, true).await;
    let mails = 2 * config.mail_users;
    let mut row = Row::new(
        format!(
            "first sync, {} users, welcome mail and admin copy ({} mails)",
            count(config.mail_users),
            count(mails)
        ),
        "mails done ≤ 2× floor",
    );
    row.guard = MAIL_QUICK_GUARD;
    let requested = SystemTime::now();
    let started = Instant::now();
    let deadline = config.deadline_within(config.mail_cap);
    let resync = resync_wait(&stack, "mail", deadline);
    let mut counter = sink::DumpCounter::new(&stack.maildir);
    let counted = poll_every(deadline, Duration::from_millis(250), || {
        std::future::ready((counter.count() >= mails).then_some(()))
    });
    let (resync, counted) = tokio::join!(resync, counted);
    memory.add_big(peak_rss(&stack));
    if counted.is_none() {
        memory.unfinished = true;
        rows.push(row.missed(format!(
            "{} of {} mails after {} ({})",
            counter.count(),
            mails,
            secs(started.elapsed()),
            resync.map_or_else(|why| why, |run| run.last_line)
        )));
        return;
    }
    let stored = match sink::stored_mails(&stack.maildir, Duration::from_secs(10)) {
        Ok(stored) => stored,
        Err(err) => return rows.push(row.missed(format!("reading smtp-sink's dump: {err:#}"))),
    };
    let (first, last) = stored_span(&stored);
    let done = last.duration_since(requested).unwrap_or_default();
    let mail_stage = last.duration_since(first).unwrap_or_default().as_secs_f64();

    let floor_sink = SmtpSink::start(&stack.logs.join("smtp-floor.log")).await;
    let sent = floors::smtp(&stored, floor_sink.port, config.smtp_connections)
        .await
        .expect("the SMTP floor");
    let floor_stored =
        sink::stored_mails(&floor_sink.dump, Duration::from_secs(10)).expect("the floor's mails, stored");
    assert!(
        sent == stored.len() && same_mails(&stored, &floor_stored),
        "the floor's smtp-sink stored the very mails the notifier's did"
    );
    let (floor_first, floor_last) = stored_span(&floor_stored);
    let floor = floor_last
        .duration_since(floor_first)
        .unwrap_or_default()
        .as_secs_f64();
    row.measured = format!(
        "mails done {} after the request, {mail_stage:.1} s from first to last mail ({:.0} mails/s){}",
        secs(done),
        stored.len() as f64 / mail_stage,
        if stored.len() as u64 == mails {
            String::new()
        } else {
            format!(", {} mails stored", stored.len())
        }
    );
    row.floor = format!(
        "{floor:.1} s ({sent} mails, {} connections, {:.0} mails/s)",
        config.smtp_connections,
        sent as f64 / floor
    );
    row.ratio = Some(mail_stage / floor);
    row.pass = Some(mail_stage <= 2.0 * floor);
    rows.push(row);
}

/// Whether `a` and `b` hold the same envelopes and messages, in any order.
fn same_mails(a: &[sink::StoredMail], b: &[sink::StoredMail]) -> bool {
    fn sorted(mails: &[sink::StoredMail]) -> Vec<(&String, &Option<String>, &Vec<String>)> {
        let mut keys: Vec<_> = mails
            .iter()
            .map(|mail| (&mail.message, &mail.from, &mail.to))
            .collect();
        keys.sort_unstable();
        keys
    }
    sorted(a) == sorted(b)
}

/// When the first and the last of `mails` were stored.
fn stored_span(mails: &[sink::StoredMail]) -> (SystemTime, SystemTime) {
    let times = mails.iter().map(|mail| mail.stored_at);
    (
        times.clone().min().unwrap_or(SystemTime::UNIX_EPOCH),
        times.max().unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

/// Figure 5: many small tenants' first syncs at once, and a manual resync meanwhile.
async fn many_tenants(config: &Config, rows: &mut Vec<Row>) {
    let stack = Stack::start_with("bench_tenants", vec![("RUST_LOG", "warn".into())]).await;
    let ids: Vec<String> = (0..config.tenants).map(|i| format!("t{i:04}")).collect();
    stream::iter(ids.iter().enumerate())
        .for_each_concurrent(4, |(i, id)| {
            let stack = &stack;
            async move {
                tenant(
                    stack,
                    id,
                    100 + i as u64,
                    config.tenant_users,
                    config.page_size,
                    false,
                )
                .await;
            }
        })
        .await;
    tenant(&stack, "manual", 4, config.small_users, config.page_size, false).await;
    let mut all = Row::new(
        format!(
            "{} tenants × {} users, all first syncs at once (nightly requests)",
            count(config.tenants),
            config.tenant_users
        ),
        "≤ 90 s",
    );
    let mut manual = Row::new(
        format!("a {}-user tenant's manual resync meanwhile", config.small_users),
        "≤ 5 s",
    );
    let started = Instant::now();
    let publish = format!("{RABBITMQ_API}/exchanges/{}/usersync.resync/publish", stack.vhost);
    stream::iter(&ids)
        .for_each_concurrent(16, |id| {
            let (http, publish) = (&stack.http, &publish);
            async move {
                let reply: Value = http
                    .post(publish)
                    .basic_auth("guest", Some("guest"))
                    .json(&json!({
                        "routing_key": "scheduled", "payload_encoding": "string",
                        "payload": json!({"tenant_id": id, "trigger": "scheduled"}).to_string(),
                        "properties": {"delivery_mode": 2, "content_type": "application/json",
                                       "message_id": uuid::Uuid::new_v4().to_string()}
                    }))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .expect("publishing a resync request")
                    .json()
                    .await
                    .expect("the management API's answer");
                assert_eq!(reply["routed"], true, "resync request for {id}: {reply}");
            }
        })
        .await;
    match resync_wait(&stack, "manual", config.deadline()).await {
        Ok(run) if run.succeeded => {
            manual.measured = secs(run.took);
            manual.pass = Some(run.took.as_secs_f64() <= 5.0);
        }
        Ok(run) => manual = manual.missed(run.last_line),
        Err(why) => manual = manual.missed(why),
    }
    let left = config.deadline().saturating_sub(started.elapsed());
    let ended = poll_every(left, Duration::from_secs(1), || async {
        let status = stack.cli_json(&["status", "--json"]).await;
        let lines = status.as_array().cloned().unwrap_or_default();
        let (mut done, mut succeeded) = (0, 0);
        for line in lines
            .iter()
            .filter(|line| line["id"].as_str().is_some_and(|id| id.starts_with('t')))
        {
            if !line["last_run"]["finished_at"].is_null() {
                done += 1;
                succeeded += u64::from(line["last_run"]["state"] == "succeeded");
            }
        }
        (done == config.tenants).then_some(succeeded)
    })
    .await;
    match ended {
        Some(succeeded) => {
            let took = started.elapsed();
            all.measured = format!("{} ({succeeded} succeeded)", secs(took));
            all.pass = Some(took.as_secs_f64() <= 90.0 && succeeded == config.tenants);
        }
        None => all = all.missed(format!("not all ended after {}", secs(started.elapsed()))),
    }
    rows.push(all);
    rows.push(manual);
}

fn memory_rows(config: &Config, memory: &Memory) -> Vec<Row> {
    const MB: f64 = 1_000_000.0;
    let services = [
        "usersync-fetcher",
        "usersync-differ",
        "usersync-applier",
        "usersync-notifier",
    ];
    services
        .iter()
        .map(|service| {
            let mut row = Row::new(
                format!("peak RSS, {service}"),
                "≤ 128 MB, flat (at N within 25 % of at 1,000)",
            );
            let find = |peaks: &[(String, u64)]| {
                peaks
                    .iter()
                    .find(|(name, _)| name == service)
                    .map(|(_, b)| *b as f64 / MB)
            };
            match (find(&memory.small), find(&memory.big)) {
                (Some(small), Some(big)) => {
                    row.measured = format!(
                        "{small:.1} MB at {}, {big:.1} MB at {}{}",
                        count(config.rss_users),
                        count(config.users),
                        if memory.unfinished {
                            " (so far: a run was cut off)"
                        } else {
                            ""
                        }
                    );
                    row.pass = Some(small.max(big) <= 128.0 && big <= small * 1.25);
                    row
                }
                _ => row.missed("a size did not complete"),
            }
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let mut config = Config::from_env(quick);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut memory = Memory::default();
    if config.runs("big") {
        big_tenant(&mut config, &mut rows, &mut memory).await;
    }
    if config.runs("mail") {
        mail_tenant(&config, &mut rows, &mut memory).await;
    }
    if config.runs("tenants") {
        many_tenants(&config, &mut rows).await;
    }
    // The notifier's memory at N comes from the mail figure, at 1,000 from the big stack.
    if config.runs("big") && config.runs("mail") {
        rows.extend(memory_rows(&config, &memory));
    }

    let http = reqwest::Client::new();
    let machine = report::machine(&http, RABBITMQ_API, usersync_e2e::POSTGRES_ADMIN_URL).await;
    let table = report::table(&rows);
    let took = started.elapsed();
    println!("\n{table}\n{machine}- whole run: {}", secs(took));
    let generated = format!(
        "# Performance\n\nWritten by `scripts/bench{}` ({}): {} builds, the four services \
         over the local RabbitMQ and PostgreSQL, the Graph and PBX simulators and Postfix's \
         smtp-sink (aiosmtpd for the many tenants, who get no welcome mail). \
         Each floor is measured in the same run; the ratio is measured / floor. The machine \
         is shared with other builds and tests while this runs: figures are noisy.\n\n{table}\n\
         The machine:\n\n{machine}- whole run: {}\n",
        if quick { " --quick" } else { "" },
        match (quick, &config.only) {
            (true, _) => "a small configuration".to_owned(),
            (false, Some(parts)) => format!("only {}", parts.join(", ")),
            (false, None) => "the full configuration".to_owned(),
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        secs(took)
    );
    // Only the full configuration, every part, writes docs/performance.md.
    let path: PathBuf = if quick || config.only.is_some() {
        workspace_target().join("bench/performance.md")
    } else {
        workspace_root().join("docs/performance.md")
    };
    report::write(&path, &generated).expect("writing the report");
    println!("written to {}", path.display());

    if quick {
        let guarded = rows.iter().filter(|row| row.floor != "—" && row.pass.is_some());
        let mut failed = false;
        for row in guarded {
            match row.ratio {
                Some(ratio) if ratio > row.guard => {
                    eprintln!("{}: {ratio:.1}× its floor, more than {}×", row.figure, row.guard);
                    failed = true;
                }
                None => {
                    eprintln!("{}: {}", row.figure, row.measured);
                    failed = true;
                }
                _ => {}
            }
        }
        if failed {
            std::process::exit(1);
        }
    }
}
