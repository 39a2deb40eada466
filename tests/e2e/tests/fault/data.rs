//! What the data does to a run: a directory emptied after the first sync
//! (the mass-deletion guard), and the tenant's secrets, which must appear
//! nowhere but encrypted in their column.

use reqwest::Method;
use usersync_e2e::inject::ROUTES;
use usersync_e2e::{poll_until, PBX_TOKEN, SECRET_KEY};

use crate::case::{after, Case, Expect, CLIENT_SECRET, ENTRA_TENANT};
use crate::kills::Probe;

/// How long a run's report mail may take after the run ended.
const REPORT_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Every message of the run is copied here.
const CAPTURE: &str = "capture.secrets";

/// What an operator types: every read command, in text and JSON.
const CLI_READS: [&[&str]; 11] = [
    &["tenant", "show", "acme"],
    &["tenant", "show", "acme", "--json"],
    &["tenant", "list"],
    &["tenant", "list", "--json"],
    &["status"],
    &["status", "--json"],
    &["status", "acme"],
    &["status", "acme", "--json"],
    &["runs", "acme"],
    &["runs", "acme", "--json"],
    &["dlq", "list", "--json"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_appear_nowhere_but_encrypted_in_their_column() {
    let mut case = Case::start("secrets_nowhere", false).await;
    case.stack.capture(CAPTURE, &ROUTES).await;
    case.resync().await;
    let seen = Probe::Creates.wait_percent(&case, 30).await;
    case.struck(
        "a search for the client secret and the PBX token in every log, message, CLI output, mail and table",
        after(seen, case.members, Probe::Creates.noun()),
    );
    // The CLI mid-run (live counts) and after it.
    let mut places: Vec<(String, String)> = Vec::new();
    read_cli(&case, "mid-run", &mut places).await;
    case.wait_runs_ended().await;
    read_cli(&case, "after the run", &mut places).await;
    // Every mail is searched, however far the notifier had got when the run ended.
    case.wait_mails().await;

    for message in case.stack.drain_captured(CAPTURE).await {
        let place = format!("message {} on {}", message.kind(), message.routing_key);
        places.push((place, format!("{} {}", message.properties, message.payload)));
    }
    for entry in std::fs::read_dir(&case.stack.logs).expect("the stack's logs") {
        let path = entry.expect("a log file").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // The simulators stand in for Entra and the PBX, which see the secrets by design.
        if name.contains("-sim") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        places.push((format!("log {name}"), text));
    }
    // Raw (as sent) and decoded (as read): a base64 body hides its text from a raw search.
    for (index, mail) in case.stack.mails().into_iter().enumerate() {
        places.push((format!("mail {index}"), mail));
    }
    for mail in case.stack.decoded_mails() {
        places.push((format!("mail {} (decoded)", mail["message_id"]), mail.to_string()));
    }
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "--no-owner", &case.stack.database_url])
        .output()
        .expect("running pg_dump");
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    places.push((
        "the database (pg_dump --data-only)".to_owned(),
        String::from_utf8_lossy(&dump.stdout).into_owned(),
    ));

    let mut problems = Vec::new();
    for (secret, what) in [(CLIENT_SECRET, "the client secret"), (PBX_TOKEN, "the PBX token")] {
        let found: Vec<&str> = places
            .iter()
            .filter(|(_, text)| text.contains(secret))
            .map(|(place, _)| place.as_str())
            .collect();
        if !found.is_empty() {
            problems.push(format!(
                "{what} in plaintext in {} places: {}",
                found.len(),
                found.join(", ")
            ));
        }
    }
    let searched = places.len();
    problems.extend(secret_stored_encrypted(&case));
    case.struck(
        &format!("a search for the client secret and the PBX token in {searched} logs, messages, CLI outputs, mails and the database dump"),
        after(seen, case.members, Probe::Creates.noun()),
    );
    case.finish_with(None, Expect::problems(problems)).await;
}

/// Runs every read command of [`CLI_READS`]; each output is a place to search.
async fn read_cli(case: &Case, when: &str, places: &mut Vec<(String, String)>) {
    for args in CLI_READS {
        let (ok, stdout, stderr) = case.stack.cli(args, None).await;
        assert!(ok, "usersync {args:?} failed: {stderr}");
        places.push((
            format!("`usersync {}` {when}", args.join(" ")),
            format!("{stdout}{stderr}"),
        ));
    }
}

/// The tenant's `client_secret_enc` holds ciphertext that the stack's key opens to the secret.
fn secret_stored_encrypted(case: &Case) -> Vec<String> {
    let sealed = case
        .stack
        .sql("SELECT client_secret_enc FROM tenants WHERE id = 'acme'");
    let key = usersync_store::SecretKey::from_base64(SECRET_KEY).expect("the test key");
    match key.decrypt(&sealed) {
        Ok(plain) if plain == CLIENT_SECRET && !sealed.contains(CLIENT_SECRET) => Vec::new(),
        Ok(plain) => vec![format!(
            "tenants.client_secret_enc decrypts to {} characters, not the client secret",
            plain.len()
        )],
        Err(err) => vec![format!(
            "tenants.client_secret_enc is no ciphertext of the stack's key: {err}"
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite"]
async fn an_emptied_directory_is_held_until_approved() {
    let mut case = Case::start("directory_emptied", false).await;
    case.resync().await;
    case.wait_runs_ended().await;
    let base = format!("/_sim/tenants/{ENTRA_TENANT}");
    let in_scope = case.in_scope_users().await;
    let users = case
        .stack
        .graph_call(Method::GET, &format!("{base}/users"), None)
        .await;
    let ids: Vec<String> = users["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    case.struck(
        &format!("every directory user deleted ({})", ids.len()),
        format!("after the first sync of {} users", case.members),
    );
    for id in &ids {
        case.stack
            .graph_call(Method::DELETE, &format!("{base}/users/{id}?hard=true"), None)
            .await;
    }
    case.resync().await;
    case.wait_runs_ended().await;

    let mut problems = Vec::new();
    let stats = case.stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    if stats["companies"]["acme"]["deleted"] != 0 {
        problems.push(format!(
            "the guard let deletions through before approval: {stats}"
        ));
    }
    let runs = case.stack.cli_json(&["runs", "acme", "--json"]).await;
    let held = runs
        .as_array()
        .expect("`usersync runs --json` prints a list")
        .iter()
        .filter_map(|run| run["counts"]["held"].as_u64())
        .max()
        .unwrap_or(0);
    if held != case.members {
        problems.push(format!(
            "the run after emptying held {held} deletions, expected {}: {runs}",
            case.members
        ));
    }
    let report_line = format!("Held:     {held} deletions held back by the mass-deletion guard");
    // The run's report is mailed after the run ended.
    let warned = poll_until(REPORT_WITHIN, || async {
        case.stack
            .decoded_mails()
            .iter()
            .any(|mail| {
                mail["to"]
                    .as_str()
                    .is_some_and(|to| to.contains("it@acme.example"))
                    && mail["text"]
                        .as_str()
                        .is_some_and(|text| text.contains(&report_line))
            })
            .then_some(())
    })
    .await;
    if warned.is_none() {
        problems.push("no run report says the mass-deletion guard held the deletions".to_owned());
    }
    let (ok, _, stderr) = case.stack.cli(&["approve-deletions", "acme"], None).await;
    assert!(ok, "approve-deletions failed: {stderr}");
    case.requested_run();
    let recover = std::time::Instant::now();
    let deleted = case
        .wait_progress("PBX deletes", 0, || async {
            let stats = case.stack.pbx_call(Method::GET, "/_sim/stats", None).await;
            stats["companies"]["acme"]["deleted"].as_u64().unwrap_or(0)
        })
        .await;
    case.finish_with(
        Some(deleted - recover),
        Expect {
            problems,
            removed: in_scope,
            ..Expect::default()
        },
    )
    .await;
}
