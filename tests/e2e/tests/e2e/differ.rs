//! The differ's decisions end to end: modes, the grace period on the stack's
//! clock, the mass-deletion guard and its approval, a mapping change, and
//! conflicts between users, with `usersync plan` and `usersync explain`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack};

use crate::support::{apply, graph_users, pbx_users, CALLER_ID, CLIENT_ID, CLIENT_SECRET, ENTRA_TENANT};

/// A tenant syncing every user of the directory, with `edit` applied.
fn tenant(edit: impl FnOnce(&mut Value)) -> String {
    let mut file = json!({
        "id": "acme",
        "name": "Acme AB",
        "type": "ad_sync",
        "mode": "user_sync",
        "delete_after_days": 0,
        "error_notification_email": "it@acme.example",
        "error_notification_level": "warning",
        "provider_settings": {"tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                              "user_filter": {"memberOf": [""]}},
        "pbx_company_id": "acme",
        "default_caller_id": CALLER_ID,
        "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail", "attributes.title": "jobTitle"}
    });
    edit(&mut file);
    file.to_string()
}

/// A stack with `users` directory users, the PBX company and the tenant applied.
async fn stack_with(test: &str, users: u64, file: &str) -> Stack {
    let stack = Stack::start(test).await;
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "seed": 11, "users": users, "groups": [], "page_size": 25
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
    apply(&stack, file).await;
    stack
}

/// The newest run of acme once it has finished, when it is not `previous`.
async fn finished_after(stack: &Stack, previous: &Option<String>) -> Value {
    wait_for("the run to finish", Duration::from_secs(120), || async {
        let runs = stack.cli_json(&["runs", "acme", "--json", "--limit", "1"]).await;
        let run = runs.get(0)?.clone();
        let is_new = run["id"].as_str().map(str::to_owned) != *previous;
        (is_new && !run["finished_at"].is_null()).then_some(run)
    })
    .await
}

/// Requests a resync and waits for the run that reads the directory for it
/// (the one it started, joined, or was queued after); `last` becomes that run.
/// Following the request, not the newest run: the scheduler's sweep of a due
/// deletion may start a run of its own at any moment.
async fn sync(stack: &Stack, last: &mut Option<String>) -> Value {
    let (_, stdout, stderr) = stack
        .cli(&["resync", "acme", "--wait", "--timeout", "120"], None)
        .await;
    let id = stdout
        .lines()
        .find_map(|line| Some(line.strip_prefix("run ")?.split_once(" ended ")?.0.to_owned()))
        .unwrap_or_else(|| panic!("resync --wait named no run that ended:\n{stdout}{stderr}"));
    let runs = stack.cli_json(&["runs", "acme", "--json", "--limit", "20"]).await;
    let run = runs
        .as_array()
        .and_then(|runs| runs.iter().find(|run| run["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("run {id} is not among the tenant's runs: {runs:#}"))
        .clone();
    *last = Some(id);
    run
}

/// Users deleted by the runs started after `previous`: a due deletion may be
/// carried out by the scheduler's run (a sweep, the nightly run) as well as by
/// the one a test asked for, which then runs after it as its follow-up.
fn deleted_since(stack: &Stack, previous: &Option<String>) -> String {
    let previous = previous.as_deref().expect("a previous run");
    stack.sql(&format!(
        "SELECT sum(deleted) FROM runs WHERE started_at > (SELECT started_at FROM runs WHERE id = '{previous}')"
    ))
}

fn counts(run: &Value) -> [i64; 5] {
    let c = &run["counts"];
    ["created", "updated", "deleted", "skipped", "held"].map(|k| c[k].as_i64().unwrap_or(-1))
}

async fn graph(stack: &Stack, method: Method, path: &str, body: Option<Value>) -> Value {
    stack
        .graph_call(method, &format!("/_sim/tenants/{ENTRA_TENANT}{path}"), body)
        .await
}

async fn plan(stack: &Stack) -> Value {
    stack.cli_json(&["plan", "acme", "--json"]).await
}

/// The plan's line for one user.
fn plan_entry<'a>(plan: &'a Value, object_id: &str) -> Option<&'a Value> {
    plan["users"]
        .as_array()?
        .iter()
        .find(|u| u["object_id"] == object_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_changes_nothing_new_users_only_only_creates_user_sync_does_all() {
    let stack = stack_with("modes", 12, &tenant(|t| t["mode"] = "pause".into())).await;
    let mut last = None;

    let run = sync(&stack, &mut last).await;
    assert_eq!(run["state"], "paused", "{run:#}");
    assert_eq!(counts(&run), [0, 0, 0, 0, 0], "{run:#}");
    assert!(pbx_users(&stack).await.is_empty(), "a paused tenant adds nobody");

    apply(&stack, &tenant(|t| t["mode"] = "new_users_only".into())).await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(counts(&run), [12, 0, 0, 0, 0], "{run:#}");

    let ids: Vec<String> = graph_users(&stack).await.into_keys().collect();
    let (renamed, removed) = (&ids[0], &ids[1]);
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{renamed}"),
        Some(json!({"surname": "Lindqvist"})),
    )
    .await;
    graph(
        &stack,
        Method::DELETE,
        &format!("/users/{removed}?hard=true"),
        None,
    )
    .await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(
        counts(&run),
        [0, 0, 0, 0, 0],
        "new_users_only never updates or deletes: {run:#}"
    );
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 12);
    assert_ne!(pbx[renamed]["surname"], "Lindqvist");

    // Back to user_sync: the stored directory says what changed; the next run does it.
    apply(&stack, &tenant(|_| {})).await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 1, 1, 0, 0], "{run:#}");
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 11);
    assert_eq!(pbx[renamed]["surname"], "Lindqvist");
    assert!(!pbx.contains_key(removed));

    // Pause again: a change in the directory stays out of the PBX, and the run says paused.
    apply(&stack, &tenant(|t| t["mode"] = "pause".into())).await;
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{renamed}"),
        Some(json!({"surname": "Ek"})),
    )
    .await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(run["state"], "paused", "{run:#}");
    assert_eq!(pbx_users(&stack).await[renamed]["surname"], "Lindqvist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_is_deleted_after_the_grace_period_and_one_back_in_time_is_kept() {
    let stack = stack_with("grace", 10, &tenant(|t| t["delete_after_days"] = 7.into())).await;
    let start = chrono::Utc::now();
    stack.set_clock(&start.to_rfc3339());
    let mut last = None;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [10, 0, 0, 0, 0], "{run:#}");

    let ids: Vec<String> = graph_users(&stack).await.into_keys().collect();
    let (disabled, deleted) = (&ids[2], &ids[3]);
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{disabled}"),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    graph(
        &stack,
        Method::DELETE,
        &format!("/users/{deleted}?hard=true"),
        None,
    )
    .await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(
        counts(&run),
        [0, 0, 0, 0, 0],
        "nothing is deleted before the grace period ends: {run:#}"
    );
    assert_eq!(pbx_users(&stack).await.len(), 10);

    let explained = stack.cli_json(&["explain", "acme", deleted, "--json"]).await;
    assert_eq!(explained["state"], "pending_deletion", "{explained:#}");
    let due: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(explained["pending_delete_at"].clone()).expect("a due time");
    // Seven days on the stack's clock (PostgreSQL keeps microseconds).
    let off = (due - start - chrono::TimeDelta::days(7)).num_milliseconds();
    assert_eq!(off, 0, "due {due}, started {start}");
    let status = stack.cli_json(&["status", "acme", "--json"]).await;
    assert_eq!(status[0]["pending_deletions"], 2, "{status:#}");

    // The disabled user comes back in time: its deletion is cancelled.
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{disabled}"),
        Some(json!({"accountEnabled": true})),
    )
    .await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 0, 0, 0, 0], "{run:#}");
    let explained = stack.cli_json(&["explain", "acme", disabled, "--json"]).await;
    assert_eq!(explained["state"], "active", "{explained:#}");
    assert!(explained["pending_delete_at"].is_null(), "{explained:#}");

    // Eight days later the plan shows the due deletion, and any run carries it out.
    stack.set_clock(&(start + chrono::TimeDelta::days(8)).to_rfc3339());
    let planned = plan(&stack).await;
    // The scheduler's own run for the due deletion may have made it already.
    if let Some(entry) = plan_entry(&planned, deleted) {
        assert_eq!(entry["decision"], "delete", "{planned:#}");
        assert_eq!(planned["summary"]["delete"], 1, "{planned:#}");
    } else {
        let explained = stack.cli_json(&["explain", "acme", deleted, "--json"]).await;
        assert_eq!(
            explained["state"], "deleted",
            "not in the plan, so deleted already: {explained:#} {planned:#}"
        );
    }
    // Eight days on, the nightly run is due too.
    let before = last.clone();
    sync(&stack, &mut last).await;
    assert_eq!(deleted_since(&stack, &before), "1");
    let pbx = pbx_users(&stack).await;
    assert!(!pbx.contains_key(deleted));
    assert!(pbx.contains_key(disabled));
    let explained = stack.cli_json(&["explain", "acme", deleted, "--json"]).await;
    assert_eq!(explained["state"], "deleted", "{explained:#}");
    assert_eq!(
        explained["last_change_applied"]["outcome"], "deleted",
        "{explained:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_deletion_is_held_until_approved_while_creations_flow() {
    let stack = stack_with("guard", 40, &tenant(|_| {})).await;
    let mut last = None;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [40, 0, 0, 0, 0], "{run:#}");

    // 12 of 40 (30%, at least 10) leave, softly: the guard holds them.
    let ids: Vec<String> = graph_users(&stack).await.into_keys().collect();
    let leaving = &ids[..12];
    for id in leaving {
        graph(&stack, Method::DELETE, &format!("/users/{id}"), None).await;
    }
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 0, 0, 0, 12], "{run:#}");
    assert_eq!(pbx_users(&stack).await.len(), 40, "nothing may be deleted");
    let explained = stack.cli_json(&["explain", "acme", &leaving[0], "--json"]).await;
    assert_eq!(explained["state"], "held", "{explained:#}");
    let held = explained["held"].as_str().unwrap_or_default();
    assert!(held.contains("usersync approve-deletions acme"), "{explained:#}");

    // They come back: the hold dissolves, nobody is deleted.
    for id in leaving {
        graph(&stack, Method::POST, &format!("/users/{id}/restore"), None).await;
    }
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 0, 0, 0, 0], "{run:#}");
    let explained = stack.cli_json(&["explain", "acme", &leaving[0], "--json"]).await;
    assert_eq!(explained["state"], "active", "{explained:#}");
    let (ok, stdout, _) = stack.cli(&["approve-deletions", "acme"], None).await;
    assert!(ok && stdout.contains("nothing to approve"), "{stdout}");

    // They leave for good, while a newcomer arrives: the newcomer is created, the deletions held.
    for id in leaving {
        graph(&stack, Method::DELETE, &format!("/users/{id}?hard=true"), None).await;
    }
    let newcomer = graph(
        &stack,
        Method::POST,
        "/users",
        Some(json!({
            "displayName": "Nils Nyman", "givenName": "Nils", "surname": "Nyman",
            "mailNickname": "nils.nyman", "userPrincipalName": "nils.nyman@acme.example",
            "mail": "nils.nyman@acme.example", "businessPhones": ["08-555 700 01"], "accountEnabled": true
        })),
    )
    .await;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [1, 0, 0, 0, 12], "{run:#}");
    let planned = plan(&stack).await;
    assert_eq!(planned["summary"]["held"], 12, "{planned:#}");
    assert!(
        planned["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("deletions held"),
        "{planned:#}"
    );
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 41);
    assert!(pbx.contains_key(newcomer["id"].as_str().expect("id")));

    // Approval: the command asks for the run that deletes them.
    let (ok, stdout, stderr) = stack.cli(&["approve-deletions", "acme"], None).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("12 held now"), "{stdout}");
    // The approved deletions are due: the scheduler's sweep may carry them out
    // before the run asked for, or a sweep that read the hold may end first.
    wait_for(
        "the approved deletions to be made",
        Duration::from_secs(120),
        || async {
            let deleted: i64 = deleted_since(&stack, &last).parse().unwrap_or(0);
            (deleted >= 12).then_some(())
        },
    )
    .await;
    finished_after(&stack, &last).await;
    assert_eq!(deleted_since(&stack, &last), "12");
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 29);
    assert!(leaving.iter().all(|id| !pbx.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_mapping_updates_every_user_from_the_stored_directory() {
    let stack = stack_with("mapping", 15, &tenant(|_| {})).await;
    let mut last = None;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [15, 0, 0, 0, 0], "{run:#}");
    let directory = graph_users(&stack).await;

    let remapped = tenant(|t| t["user_field_mapping"]["attributes.title"] = "department".into());
    let (ok, stdout, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&remapped)).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("`usersync plan acme` shows what it will change"),
        "{stdout}"
    );
    // The dry run already knows, from stored data alone, what each user gets.
    let planned = plan(&stack).await;
    assert_eq!(planned["summary"]["update"], 15, "{planned:#}");
    for (id, source) in &directory {
        let entry = plan_entry(&planned, id).expect("every user is updated");
        let change = &entry["changes"][0];
        assert_eq!(change["field"], "attributes.title", "{entry:#}");
        assert_eq!(change["before"], source["jobTitle"], "{entry:#}");
        assert_eq!(change["after"], source["department"], "{entry:#}");
    }

    let (ok, text, stderr) = stack.cli(&["plan", "acme"], None).await;
    assert!(ok, "{stderr}");
    let (_, source) = directory.iter().next().expect("a user");
    let line = format!(
        "attributes.title: {} → {}",
        source["jobTitle"], source["department"]
    );
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    assert!(text.contains("nothing was changed"), "{text}");

    // The next run is an ordinary delta round (the directory did not change), and applies them.
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 15, 0, 0, 0], "{run:#}");
    let pbx = pbx_users(&stack).await;
    for (id, source) in &directory {
        assert_eq!(pbx[id]["attributes"]["title"], source["department"]);
    }
    // Applied once: nothing is left to do.
    let planned = plan(&stack).await;
    assert_eq!(planned["summary"].get("update"), None, "{planned:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_claiming_one_alias_or_number_never_overwrite_each_other() {
    let stack = stack_with("conflicts", 8, &tenant(|_| {})).await;
    let mut last = None;
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [8, 0, 0, 0, 0], "{run:#}");
    let directory = graph_users(&stack).await;
    let before = pbx_users(&stack).await;
    let (holder_id, holder) = directory.iter().next().expect("a user");

    let add = |nickname: String, phone: String| {
        let stack = &stack;
        async move {
            let user = graph(
                stack,
                Method::POST,
                "/users",
                Some(json!({
                    "displayName": "New User", "givenName": "New", "surname": "User",
                    "mailNickname": nickname, "userPrincipalName": format!("{nickname}@acme.example"),
                    "businessPhones": [phone], "accountEnabled": true
                })),
            )
            .await;
            user["id"].as_str().expect("id").to_owned()
        }
    };
    // Same alias as a synced user (only the case differs): the synced user keeps it.
    let holder_nickname = holder["mailNickname"].as_str().expect("nickname").to_uppercase();
    let alias_thief = add(holder_nickname, "08-555 800 01".into()).await;
    // Same number as a synced user.
    let number_thief = add(
        "number.thief".into(),
        holder["businessPhones"][0].as_str().unwrap().into(),
    )
    .await;
    // Two newcomers wanting one alias: the lower object id wins.
    let twin_a = add("kim.twin".into(), "08-555 800 02".into()).await;
    let twin_b = add("kim.twin".into(), "08-555 800 03".into()).await;
    let (winner, loser) = if twin_a < twin_b {
        (twin_a, twin_b)
    } else {
        (twin_b, twin_a)
    };

    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [1, 0, 0, 3, 0], "{run:#}");
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 9);
    assert_eq!(
        pbx[holder_id], before[holder_id],
        "the synced user was not touched"
    );
    assert_eq!(pbx[&winner]["alias"], "kim.twin");
    for id in [&alias_thief, &number_thief, &loser] {
        assert!(!pbx.contains_key(id), "{id} must not be synced");
    }

    // Each loser is skipped with a reason that names the other user.
    let expected: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        (alias_thief.as_str(), ("alias", holder_id.as_str())),
        (number_thief.as_str(), ("pstn_fixed", holder_id.as_str())),
        (loser.as_str(), ("alias", winner.as_str())),
    ]);
    for (id, (field, other)) in expected {
        let explained = stack.cli_json(&["explain", "acme", id, "--json"]).await;
        assert_eq!(explained["state"], "skipped", "{explained:#}");
        let problem = explained["problems"][0].as_str().unwrap_or_default();
        assert!(problem.starts_with(&format!("{field}:")), "{explained:#}");
        assert!(problem.contains(other), "{problem} should name {other}");
    }
    // A user can be named by mail; a name two users share is refused with both ids.
    let by_mail = stack
        .cli_json(&[
            "explain",
            "acme",
            holder["mail"].as_str().expect("mail"),
            "--json",
        ])
        .await;
    assert_eq!(by_mail["object_id"], holder_id.as_str(), "{by_mail:#}");
    let (ok, _, stderr) = stack.cli(&["explain", "acme", "kim.twin"], None).await;
    assert!(!ok, "an ambiguous name must fail");
    assert!(stderr.contains(&winner) && stderr.contains(&loser), "{stderr}");

    // The winner is reported too: the plan's warnings name both sides.
    let planned = plan(&stack).await;
    let warnings = planned["warnings"].to_string();
    assert!(
        warnings.contains(&format!("{winner} keeps it, {loser} skipped")),
        "{warnings}"
    );
    assert!(
        warnings.contains(&format!("{holder_id} keeps it, {alias_thief} skipped")),
        "{warnings}"
    );

    // A rerun changes nothing: the outcome is stable.
    let run = sync(&stack, &mut last).await;
    assert_eq!(counts(&run), [0, 0, 0, 3, 0], "{run:#}");
}
