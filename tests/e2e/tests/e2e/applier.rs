//! The applier against the PBX simulator: every write exactly once, in order,
//! under faults, a killed process, several replicas and several tenants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack, PBX_TOKEN, RABBITMQ_API};

use crate::support::CALLER_ID;

const TEMPLATE_ID: &str = "tpl-standard";
const TEMPLATE_NAME: &str = "Standard";
/// Index of the first applier among the stack's processes.
const APPLIER: usize = 2;

/// A tenant of its own: an Entra tenant in the Graph simulator with `users`
/// users (everyone in scope), a PBX company of the same id, and the tenant file
/// (changed by `edit` before it is applied). Returns the Entra tenant id.
async fn add_tenant(stack: &Stack, id: &str, users: u64, edit: impl FnOnce(&mut Value)) -> String {
    let entra = uuid::Uuid::new_v4().to_string();
    let client_id = uuid::Uuid::new_v4().to_string();
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": entra, "client_id": client_id, "client_secret": "s3cret",
                "seed": users + 11, "users": users, "page_size": 500
            })),
        )
        .await;
    stack
        .pbx_call(
            Method::PUT,
            &format!("/_sim/companies/{id}"),
            Some(json!({
                "templates": [{"id": TEMPLATE_ID, "name": TEMPLATE_NAME}, {"id": "tpl-reception", "name": "Reception"}],
                "numbers": [{"number": CALLER_ID, "kind": "main"}, {"number": "46812345601", "kind": "fixed"}]
            })),
        )
        .await;
    let provider = json!({
        "tenant_id": entra, "client_id": client_id, "client_secret": "s3cret",
        "user_filter": {"memberOf": [""]}
    });
    let mut file = json!({
        "id": id, "name": format!("{id} AB"), "type": "ad_sync", "mode": "user_sync",
        "delete_after_days": 0,
        "error_notification_email": format!("it@{id}.example"),
        "error_notification_level": "error",
        "provider_settings": provider,
        "pbx_company_id": id,
        "default_caller_id": CALLER_ID,
        // By name: the applier maps it to the template's id.
        "default_template": TEMPLATE_NAME,
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail", "attributes.title": "jobTitle"}
    });
    edit(&mut file);
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
        .await;
    assert!(ok, "tenant apply {id}: {stderr}");
    entra
}

async fn resync(stack: &Stack, id: &str) {
    let (ok, _, stderr) = stack.cli(&["resync", id], None).await;
    assert!(ok, "resync {id}: {stderr}");
}

/// The tenant's newest run, once it is not `previous` and has finished.
async fn finished_run(stack: &Stack, id: &str, previous: Option<&str>, deadline: Duration) -> Value {
    wait_for(&format!("a finished run of {id}"), deadline, || async {
        let status = stack.cli_json(&["status", id, "--json"]).await;
        let run = status[0]["last_run"].clone();
        let is_new = run["id"].as_str().is_some_and(|run| Some(run) != previous);
        (is_new && !run["finished_at"].is_null()).then_some(run)
    })
    .await
}

fn run_id(run: &Value) -> String {
    run["id"].as_str().expect("run id").to_owned()
}

/// The company's PBX users, by external id (None for unowned users).
async fn pbx_users(stack: &Stack, company: &str) -> Vec<Value> {
    let users = stack
        .pbx_call(Method::GET, &format!("/_sim/companies/{company}/users"), None)
        .await;
    users["items"].as_array().expect("items").clone()
}

/// Each owned PBX user by external id; panics when one is there twice.
fn by_owner(users: &[Value]) -> BTreeMap<String, Value> {
    let mut owned = BTreeMap::new();
    for user in users {
        if let Some(owner) = user["external_id"].as_str() {
            let before = owned.insert(owner.to_owned(), user.clone());
            assert!(before.is_none(), "directory user {owner} is in the PBX twice");
        }
    }
    owned
}

async fn directory(stack: &Stack, entra: &str) -> BTreeMap<String, Value> {
    let users = stack
        .graph_call(Method::GET, &format!("/_sim/tenants/{entra}/users"), None)
        .await;
    users["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|u| (u["id"].as_str().expect("id").to_owned(), u.clone()))
        .collect()
}

async fn pbx_stats(stack: &Stack, company: &str) -> Value {
    let stats = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    stats["companies"][company].clone()
}

/// Deletes a PBX user through the PBX's own API, as an administrator would.
async fn pbx_delete(stack: &Stack, company: &str, pbx_id: &str) {
    let response = stack
        .http
        .delete(format!("{}/v1/companies/{company}/users/{pbx_id}", stack.pbx.url))
        .bearer_auth(PBX_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "deleting PBX user {pbx_id}");
}

async fn add_fault(stack: &Stack, company: &str, fault: Value) {
    stack
        .pbx_call(
            Method::POST,
            &format!("/_sim/companies/{company}/faults"),
            Some(fault),
        )
        .await;
}

async fn clear_faults(stack: &Stack, company: &str) {
    stack
        .pbx_call(Method::DELETE, &format!("/_sim/companies/{company}/faults"), None)
        .await;
}

async fn set_surname(stack: &Stack, entra: &str, object_id: &str, surname: &str) {
    stack
        .graph_call(
            Method::PATCH,
            &format!("/_sim/tenants/{entra}/users/{object_id}"),
            Some(json!({ "surname": surname })),
        )
        .await;
}

/// The run's failed changes: object id → reason.
async fn failures(stack: &Stack, run: &str) -> BTreeMap<String, String> {
    stack
        .sql(&format!(
            "SELECT object_id, detail FROM run_changes WHERE run_id = '{run}' AND outcome = 'failed'"
        ))
        .lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(id, reason)| (id.to_owned(), reason.to_owned()))
        .collect()
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not a count: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_with_defaults_then_patches_only_the_difference_and_deletes_once() {
    let stack = Stack::start("applier_basics").await;
    let entra = add_tenant(&stack, "basics", 30, |_| {}).await;
    resync(&stack, "basics").await;
    let run = finished_run(&stack, "basics", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 30, "{run:#}");

    let source = directory(&stack, &entra).await;
    let pbx = by_owner(&pbx_users(&stack, "basics").await);
    assert_eq!(pbx.len(), 30);
    for (id, user) in &pbx {
        assert!(source.contains_key(id), "{user}");
        assert_eq!(user["caller_id"], CALLER_ID, "{user}");
        assert_eq!(
            user["template"], TEMPLATE_ID,
            "the template's name maps to its id: {user}"
        );
        assert_eq!(user["version"], 1, "{user}");
    }
    let stats = pbx_stats(&stack, "basics").await;
    assert_eq!(stats["posts"], 30, "one POST per user: {stats}");
    assert_eq!(stats["writes"], 30, "{stats}");

    // One rename, one user gone from the directory who was already removed
    // from the PBX by hand (its DELETE answers 404), everyone else unchanged.
    let ids: Vec<&String> = pbx.keys().collect();
    let (renamed, gone) = (ids[0].clone(), ids[1].clone());
    set_surname(&stack, &entra, &renamed, "Lindqvist-Berg").await;
    stack
        .graph_call(
            Method::DELETE,
            &format!("/_sim/tenants/{entra}/users/{gone}?hard=true"),
            None,
        )
        .await;
    pbx_delete(&stack, "basics", pbx[&gone]["id"].as_str().unwrap()).await;
    stack.pbx_call(Method::POST, "/_sim/stats/reset", None).await;

    resync(&stack, "basics").await;
    let run = finished_run(&stack, "basics", Some(&run_id(&run)), Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["updated"], 1, "{run:#}");
    assert_eq!(
        run["counts"]["deleted"], 1,
        "a 404 on DELETE counts as done: {run:#}"
    );
    let stats = pbx_stats(&stack, "basics").await;
    assert_eq!(
        (
            count(&stats["patches"]),
            count(&stats["deletes"]),
            count(&stats["posts"])
        ),
        (1, 1, 0),
        "unchanged users cost no call: {stats}"
    );
    let after = by_owner(&pbx_users(&stack, "basics").await);
    assert_eq!(after.len(), 29);
    let user = &after[&renamed];
    assert_eq!(user["surname"], "Lindqvist-Berg");
    assert_eq!(user["version"], 2, "one PATCH: {user}");
    let before = &pbx[&renamed];
    for field in [
        "alias",
        "first_name",
        "pstn_fixed",
        "email",
        "caller_id",
        "template",
        "attributes",
    ] {
        assert_eq!(user[field], before[field], "{field} must not change");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applier_killed_after_the_post_never_creates_a_user_twice() {
    let mut stack = Stack::start("applier_killed").await;
    let entra = add_tenant(&stack, "killed", 40, |_| {}).await;
    // The PBX handles each request at once but answers only after 3 s.
    add_fault(
        &stack,
        "killed",
        json!({"kind": "latency", "ms": 3000, "after": true}),
    )
    .await;
    resync(&stack, "killed").await;
    let stats = wait_for(
        "the PBX to have created users",
        Duration::from_secs(120),
        || async {
            let stats = pbx_stats(&stack, "killed").await;
            (stats["created"].as_u64().unwrap_or(0) >= 1).then_some(stats)
        },
    )
    .await;
    stack.kill_service(APPLIER).await;
    let unrecorded = stack.sql("SELECT count(*) FROM sync_users WHERE pbx_id IS NOT NULL");
    assert!(count(&stats["created"]) >= 1);
    assert_eq!(unrecorded, "0", "the killed applier recorded nothing yet");
    clear_faults(&stack, "killed").await;
    stack.start_service("usersync-applier").await;

    let run = finished_run(&stack, "killed", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 40, "{run:#}");
    let pbx = by_owner(&pbx_users(&stack, "killed").await);
    let source = directory(&stack, &entra).await;
    assert_eq!(
        pbx.keys().collect::<BTreeSet<_>>(),
        source.keys().collect::<BTreeSet<_>>(),
        "every directory user exactly once"
    );
    let stats = pbx_stats(&stack, "killed").await;
    assert_eq!(stats["created"], 40, "{stats}");
    assert!(
        count(&stats["idempotent_replays"]) >= 1,
        "the new applier repeated a POST the PBX had handled: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_users_are_adopted_and_a_foreign_owner_or_a_422_fails_only_that_user() {
    let stack = Stack::start("applier_adopt").await;
    let entra = add_tenant(&stack, "adopt", 20, |_| {}).await;
    let source = directory(&stack, &entra).await;
    // Users whose nickname is an alias as it is (lower-cased).
    let ids: Vec<&String> = source
        .keys()
        .filter(|id| {
            let nickname = source[*id]["mailNickname"].as_str().unwrap();
            nickname.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        })
        .collect();
    assert!(ids.len() >= 7, "the seed gives enough plain nicknames");
    let alias = |id: &str| source[id]["mailNickname"].as_str().unwrap().to_lowercase();
    // Six users are in the PBX already, by alias, without an owner and with an
    // outdated first name; a seventh's alias belongs to another directory user.
    for (index, id) in ids[..6].iter().enumerate() {
        stack
            .pbx_call(
                Method::POST,
                "/_sim/companies/adopt/users",
                Some(json!({
                    "alias": alias(id), "first_name": "Old", "surname": source[*id]["surname"],
                    "pstn_fixed": format!("4631000000{index}"),
                })),
            )
            .await;
    }
    let foreign = ids[6];
    stack
        .pbx_call(
            Method::POST,
            "/_sim/companies/adopt/users",
            Some(json!({
                "alias": alias(foreign), "first_name": "Some", "surname": "One",
                "pstn_fixed": "46310000009", "external_id": "another-directory-user"
            })),
        )
        .await;

    resync(&stack, "adopt").await;
    let run = finished_run(&stack, "adopt", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(run["counts"]["updated"], 6, "adoptions count as updates: {run:#}");
    assert_eq!(run["counts"]["created"], 13, "{run:#}");
    assert_eq!(run["counts"]["failed"], 1, "{run:#}");
    let failed = failures(&stack, &run_id(&run)).await;
    let reason = &failed[foreign.as_str()];
    assert!(
        reason.contains("another-directory-user") && reason.contains(&alias(foreign)),
        "{reason}"
    );
    let stats = pbx_stats(&stack, "adopt").await;
    assert_eq!(
        stats["posts"], 14,
        "no POST for an adopted user, so no 409 storm: {stats}"
    );
    assert_eq!(stats["patches"], 6, "{stats}");
    let all = pbx_users(&stack, "adopt").await;
    assert_eq!(all.len(), 20, "6 adopted + 13 created + the foreign holder");
    let pbx = by_owner(&all);
    for id in &ids[..6] {
        let user = &pbx[id.as_str()];
        assert_eq!(user["first_name"], source[*id]["givenName"], "{user}");
        assert_eq!(user["version"], 2, "adopted with one PATCH: {user}");
    }

    // A 422 fails the user with the PBX's field and message, with no retry.
    // (The user held by another owner leaves the directory, so only the
    // newcomer is written.)
    stack
        .graph_call(
            Method::DELETE,
            &format!("/_sim/tenants/{entra}/users/{foreign}?hard=true"),
            None,
        )
        .await;
    let newcomer = add_asa_oberg(&stack, &entra, "adopt").await;
    add_fault(
        &stack,
        "adopt",
        json!({"kind": "status", "status": 422, "method": "POST", "field": "pstn_fixed",
               "message": "46855512345 is outside the company's number plan"}),
    )
    .await;
    stack.pbx_call(Method::POST, "/_sim/stats/reset", None).await;
    resync(&stack, "adopt").await;
    let run = finished_run(&stack, "adopt", Some(&run_id(&run)), Duration::from_secs(120)).await;
    let failed = failures(&stack, &run_id(&run)).await;
    let reason = &failed[&newcomer];
    assert!(
        reason.contains("pstn_fixed") && reason.contains("outside the company's number plan"),
        "{reason}"
    );
    let stats = pbx_stats(&stack, "adopt").await;
    assert_eq!(stats["posts"], 1, "one POST, not retried: {stats}");
    assert_eq!(run["counts"]["failed"], 1, "{run:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_or_wrong_settings_stop_only_that_tenant() {
    let stack = Stack::start("applier_tenants").await;
    add_tenant(&stack, "good", 12, |_| {}).await;
    add_tenant(&stack, "badtpl", 12, |file| {
        file["default_template"] = "Premium".into()
    })
    .await;
    add_tenant(&stack, "badcaller", 12, |file| {
        file["default_caller_id"] = "46899999999".into()
    })
    .await;
    add_tenant(&stack, "locked", 40, |_| {}).await;
    // The PBX refuses the token from the first POST on.
    add_fault(
        &stack,
        "locked",
        json!({"kind": "status", "status": 401, "method": "POST", "count": 1000}),
    )
    .await;
    for id in ["good", "badtpl", "badcaller", "locked"] {
        resync(&stack, id).await;
    }
    let good = finished_run(&stack, "good", None, Duration::from_secs(120)).await;
    assert_eq!(good["state"], "succeeded", "{good:#}");
    assert_eq!(good["counts"]["created"], 12);
    assert_eq!(by_owner(&pbx_users(&stack, "good").await).len(), 12);

    for (id, code, named) in [
        ("badtpl", "pbx.bad_template", "\"Premium\""),
        ("badcaller", "pbx.bad_caller_id", "\"46899999999\""),
        ("locked", "pbx.unauthorized", "token"),
    ] {
        let run = finished_run(&stack, id, None, Duration::from_secs(120)).await;
        assert_eq!(run["state"], "failed", "{id}: {run:#}");
        let row = stack.sql(&format!(
            "SELECT error_code, error FROM runs WHERE id = '{}'",
            run_id(&run)
        ));
        let (found_code, error) = row.split_once('|').expect("code|error");
        assert_eq!(found_code, code, "{id}: {error}");
        assert!(error.contains(named), "{id}: {error}");
        assert_eq!(pbx_users(&stack, id).await.len(), 0, "{id}: nothing written");
    }
    assert!(
        count(&pbx_stats(&stack, "locked").await["posts"]) <= 8,
        "writes stop at the 401, apart from those already in flight"
    );
    for id in ["badtpl", "badcaller"] {
        assert_eq!(
            pbx_stats(&stack, id).await["writes"],
            0,
            "{id}: checked before any write"
        );
    }
    // The failure is reported at level error.
    let report = wait_for(
        "the report to it@locked.example",
        Duration::from_secs(60),
        || async {
            stack
                .mails()
                .into_iter()
                .find(|mail| mail.contains("To: it@locked.example"))
        },
    )
    .await;
    assert!(!report.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_outages_drops_and_slowness_are_retried_to_exactly_one_write_each() {
    let stack = Stack::start("applier_faults").await;
    let entra = add_tenant(&stack, "faulty", 24, |_| {}).await;
    add_fault(
        &stack,
        "faulty",
        json!({"kind": "status", "status": 429, "retry_after": 2, "method": "POST"}),
    )
    .await;
    add_fault(
        &stack,
        "faulty",
        json!({"kind": "status", "status": 503, "count": 6, "method": "POST"}),
    )
    .await;
    add_fault(
        &stack,
        "faulty",
        json!({"kind": "drop", "count": 2, "method": "POST"}),
    )
    .await;
    add_fault(
        &stack,
        "faulty",
        json!({"kind": "drop_before", "count": 1, "method": "POST"}),
    )
    .await;
    resync(&stack, "faulty").await;
    let run = finished_run(&stack, "faulty", None, Duration::from_secs(180)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 24, "{run:#}");
    let stats = pbx_stats(&stack, "faulty").await;
    assert_eq!(stats["created"], 24, "{stats}");
    assert!(count(&stats["posts"]) >= 24 + 10, "every fault was met: {stats}");
    assert_eq!(
        stats["idempotent_replays"], 2,
        "the two answers lost after the write were replayed: {stats}"
    );
    assert_eq!(by_owner(&pbx_users(&stack, "faulty").await).len(), 24);
    let retried = stack.sql("SELECT count(*) FROM run_changes WHERE outcome = 'failed'");
    assert_eq!(retried, "0");

    // A PBX that takes 2 s per call is slow, not broken.
    add_fault(&stack, "faulty", json!({"kind": "latency", "ms": 2000})).await;
    let renamed: Vec<String> = directory(&stack, &entra).await.into_keys().take(5).collect();
    for id in &renamed {
        set_surname(&stack, &entra, id, "Långsam").await;
    }
    resync(&stack, "faulty").await;
    let run = finished_run(&stack, "faulty", Some(&run_id(&run)), Duration::from_secs(180)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["updated"], 5, "{run:#}");
    let pbx = by_owner(&pbx_users(&stack, "faulty").await);
    for id in &renamed {
        assert_eq!(pbx[id]["surname"], "Långsam");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_leave_every_user_in_its_latest_state() {
    let mut stack = Stack::start("applier_replicas").await;
    stack.start_service("usersync-applier").await;
    stack.start_service("usersync-applier").await;
    let entra = add_tenant(&stack, "order", 500, |_| {}).await;
    add_fault(&stack, "order", json!({"kind": "latency", "ms": 20})).await;
    resync(&stack, "order").await;
    let last = finished_run(&stack, "order", None, Duration::from_secs(180)).await;
    assert_eq!(last["counts"]["created"], 500, "{last:#}");

    // The same users change again and again while runs are under way.
    let ids: Vec<String> = directory(&stack, &entra).await.into_keys().collect();
    for round in 0..4 {
        for (index, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 != round % 3) {
            set_surname(&stack, &entra, id, &format!("Round{round}-{index}")).await;
        }
        resync(&stack, "order").await;
    }
    // Then a run that read the directory after the last change.
    let edits_done = stack.sql("SELECT now()");
    wait_for("the runs under way to end", Duration::from_secs(180), || async {
        let open = stack.sql("SELECT count(*) FROM runs WHERE tenant_id = 'order' AND finished_at IS NULL");
        (open == "0").then_some(())
    })
    .await;
    resync(&stack, "order").await;
    let state = wait_for(
        "a run after the last change",
        Duration::from_secs(180),
        || async {
            let state = stack.sql(&format!(
                "SELECT state FROM runs WHERE tenant_id = 'order' AND started_at > '{edits_done}'
                 AND finished_at IS NOT NULL ORDER BY started_at DESC LIMIT 1"
            ));
            (!state.is_empty()).then_some(state)
        },
    )
    .await;
    assert_eq!(state, "succeeded");
    let superseded = stack.sql("SELECT count(*) FROM run_changes WHERE outcome = 'failed'");
    assert_eq!(superseded, "0", "no change failed");

    let source = directory(&stack, &entra).await;
    let pbx = by_owner(&pbx_users(&stack, "order").await);
    assert_eq!(pbx.len(), 500);
    for (id, user) in &source {
        assert_eq!(
            pbx[id]["surname"], user["surname"],
            "{id}: the PBX holds an older state than the directory"
        );
    }
    // Every replica took its share.
    for replica in [APPLIER, 4, 5] {
        let log = std::fs::read_to_string(stack.logs.join(format!("usersync-applier-{replica}.log")))
            .expect("the replica's log");
        assert!(
            log.contains("change batch handled"),
            "replica {replica} handled no batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_first_sync_does_not_hold_up_a_small_tenant() {
    let stack = Stack::start("applier_fairness").await;
    add_tenant(&stack, "big", 3000, |_| {}).await;
    add_tenant(&stack, "small", 5, |_| {}).await;
    // 3,000 creates at 60 ms each, 8 at a time: about 25 s of work.
    add_fault(&stack, "big", json!({"kind": "latency", "ms": 60})).await;
    resync(&stack, "big").await;
    wait_for(
        "the big tenant's creates to flow",
        Duration::from_secs(180),
        || async {
            let created = pbx_stats(&stack, "big").await["created"].as_u64().unwrap_or(0);
            (created >= 100).then_some(())
        },
    )
    .await;
    resync(&stack, "small").await;
    let small = finished_run(&stack, "small", None, Duration::from_secs(120)).await;
    assert_eq!(small["state"], "succeeded", "{small:#}");
    assert_eq!(small["counts"]["created"], 5);
    let big_created = pbx_stats(&stack, "big").await["created"].as_u64().unwrap_or(0);
    let big = stack.cli_json(&["status", "big", "--json"]).await;
    // Without windowed dispatch the small run waits behind every batch of the
    // big one and finishes near its end.
    assert!(
        big[0]["last_run"]["finished_at"].is_null() && big_created < 1500,
        "the small tenant waited for most of the big one ({big_created} of 3000 created): {big:#}"
    );
    let big = finished_run(&stack, "big", None, Duration::from_secs(600)).await;
    assert_eq!(big["counts"]["created"], 3000, "{big:#}");
}

/// A stack whose applier gives a change up after `secs` seconds of its own failures.
async fn stack_giving_up_after(test: &str, secs: &str) -> Stack {
    let mut stack = Stack::start(test).await;
    stack.kill_service(APPLIER).await;
    stack
        .start_service_with("usersync-applier", &[("APPLIER_GIVE_UP_AFTER_SECS", secs)])
        .await;
    stack
}

/// The run's changes by outcome: (outcome, changes, changes with a detail, their own failed tries).
fn change_summary(stack: &Stack, run: &str) -> Vec<(String, u64, u64, u64)> {
    stack
        .sql(&format!(
            "SELECT outcome, count(*), count(detail), coalesce(sum(tries), 0) FROM run_changes
             WHERE run_id = '{run}' GROUP BY outcome ORDER BY outcome"
        ))
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('|').collect();
            let n = |i: usize| cols[i].parse::<u64>().expect("a count");
            (cols[0].to_owned(), n(1), n(2), n(3))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_throttling_one_write_in_ten_slows_a_300_user_first_sync_and_fails_nothing() {
    let stack = Stack::start("applier_throttled").await;
    add_tenant(&stack, "throttled", 300, |_| {}).await;
    for fault in [
        json!({"kind": "throttle", "every": 10, "retry_after": 1, "method": "POST"}),
        json!({"kind": "status", "status": 503, "count": 3, "method": "POST"}),
        json!({"kind": "drop", "count": 2, "method": "POST"}),
        json!({"kind": "drop_before", "count": 1, "method": "POST"}),
    ] {
        add_fault(&stack, "throttled", fault).await;
    }
    resync(&stack, "throttled").await;
    let run = finished_run(&stack, "throttled", None, Duration::from_secs(600)).await;
    let stats = pbx_stats(&stack, "throttled").await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{stats}");
    assert_eq!(run["counts"]["created"], 300, "{run:#}");
    assert_eq!(run["counts"]["failed"], 0, "{run:#}");
    assert_eq!(stats["created"], 300, "each user created once: {stats}");
    assert_eq!(
        stats["idempotent_replays"], 2,
        "the answers lost after the write were replayed: {stats}"
    );
    let throttled = count(&stats["throttled"]);
    assert!(throttled >= 30, "one POST in ten was throttled: {stats}");
    assert_eq!(by_owner(&pbx_users(&stack, "throttled").await).len(), 300);
    // Every refused or lost POST is a failed try of the change that sent it,
    // and of no other; a created change carries no reason.
    let failed_posts = count(&stats["posts"]) - 300;
    assert_eq!(failed_posts, throttled + 3 + 2 + 1, "{stats}");
    assert_eq!(
        change_summary(&stack, &run_id(&run)),
        [("created".to_owned(), 300, 0, failed_posts)]
    );
    let took = stack.sql(&format!(
        "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 1) FROM runs WHERE id = '{}'",
        run_id(&run)
    ));
    eprintln!(
        "300 users against a PBX throttling one POST in ten: {throttled} answers 429 \
         (Retry-After 1 s each), {} POSTs; the run took {took} s",
        stats["posts"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbours_429_never_fails_a_change() {
    // Changes give up after 3 s of their own failures; the pauses of the
    // run below add up to 14 s.
    let stack = stack_giving_up_after("applier_neighbours", "3").await;
    // One call at a time, and every second POST throttled for 2 s: every user
    // but the first is answered 429 once, and all others wait each time.
    add_tenant(&stack, "polite", 8, |file| {
        file["pbx_limits"] = json!({"max_in_flight": 1});
    })
    .await;
    add_fault(
        &stack,
        "polite",
        json!({"kind": "throttle", "every": 2, "retry_after": 2, "method": "POST"}),
    )
    .await;
    resync(&stack, "polite").await;
    let run = finished_run(&stack, "polite", None, Duration::from_secs(180)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 8, "{run:#}");
    let stats = pbx_stats(&stack, "polite").await;
    assert_eq!(stats["throttled"], 7, "{stats}");
    assert_eq!(stats["posts"], 15, "{stats}");
    // Each 429 was charged to the change that got it; none carries a reason.
    assert_eq!(
        change_summary(&stack, &run_id(&run)),
        [("created".to_owned(), 8, 0, 7)]
    );
    let tries = stack.sql(&format!(
        "SELECT string_agg(tries::text, ',' ORDER BY tries) FROM run_changes WHERE run_id = '{}'",
        run_id(&run)
    ));
    assert_eq!(tries, "0,1,1,1,1,1,1,1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_whose_own_writes_keep_failing_fail_once_the_bound_passed_and_the_next_run_writes_them() {
    let stack = stack_giving_up_after("applier_dlq", "3").await;
    add_tenant(&stack, "down", 5, |_| {}).await;
    add_fault(
        &stack,
        "down",
        json!({"kind": "status", "status": 503, "method": "POST", "count": 1000}),
    )
    .await;
    resync(&stack, "down").await;
    let run = finished_run(&stack, "down", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(run["counts"]["failed"], 5, "{run:#}");
    for reason in failures(&stack, &run_id(&run)).await.values() {
        assert!(
            reason.contains("503") && reason.contains("tried"),
            "its own last error and how long it was tried: {reason}"
        );
    }
    // Each change failed only after three or more of its own tries spanned the bound.
    let early = stack.sql(&format!(
        "SELECT count(*) FROM run_changes WHERE run_id = '{}'
           AND (tries < 3 OR last_failed_at - first_failed_at < interval '3 seconds')",
        run_id(&run)
    ));
    assert_eq!(
        early, "0",
        "a change was given up before three of its own tries spanned the bound"
    );
    let posts = count(&pbx_stats(&stack, "down").await["posts"]);
    assert_eq!(
        change_summary(&stack, &run_id(&run)),
        [("failed".to_owned(), 5, 5, posts)],
        "every POST is a try of its own change"
    );

    let dead = wait_for(
        "the batch in the applier's DLQ",
        Duration::from_secs(30),
        || async {
            let response = stack
                .http
                .post(format!(
                    "{RABBITMQ_API}/queues/{}/usersync.applier.dlq/get",
                    stack.vhost
                ))
                .basic_auth("guest", Some("guest"))
                .json(&json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}))
                .send()
                .await
                .ok()?;
            let messages: Value = response.json().await.ok()?;
            messages.as_array()?.first().cloned()
        },
    )
    .await;
    let reason = dead["properties"]["headers"]["x-usersync-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("still failing") && reason.contains("503"),
        "{dead:#}"
    );

    // Level-triggered: the next run plans the failed users again.
    clear_faults(&stack, "down").await;
    resync(&stack, "down").await;
    let run = finished_run(&stack, "down", Some(&run_id(&run)), Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 5, "{run:#}");
    assert_eq!(by_owner(&pbx_users(&stack, "down").await).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_held_by_a_foreign_pbx_user_is_rechecked_by_reads_and_created_once_it_is_free() {
    let stack = Stack::start("applier_held").await;
    let entra = add_tenant(&stack, "held", 5, |_| {}).await;
    let newcomer = add_asa_oberg(&stack, &entra, "held").await;
    // Put into the PBX by hand: nobody owns it, and its alias differs, so it
    // is not adoptable.
    let holder = stack
        .pbx_call(
            Method::POST,
            "/_sim/companies/held/users",
            Some(json!({
                "alias": "reception", "first_name": "Front", "surname": "Desk",
                "pstn_fixed": "46855512345"
            })),
        )
        .await;
    let holder_id = holder["id"].as_str().unwrap().to_owned();

    resync(&stack, "held").await;
    let run = finished_run(&stack, "held", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(run["counts"]["created"], 5, "{run:#}");
    assert_eq!(run["counts"]["failed"], 1, "{run:#}");
    let reason = failures(&stack, &run_id(&run)).await[&newcomer].clone();
    for part in [
        "pstn_fixed \"46855512345\"",
        holder_id.as_str(),
        "reception",
        "no directory user of this tenant owns",
    ] {
        assert!(reason.contains(part), "{part} missing: {reason}");
    }
    assert!(!reason.contains("two directory users"), "{reason}");

    // Nothing changed: the conflict is checked with reads, nothing is written.
    stack.pbx_call(Method::POST, "/_sim/stats/reset", None).await;
    resync(&stack, "held").await;
    let run = finished_run(&stack, "held", Some(&run_id(&run)), Duration::from_secs(120)).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(run["counts"]["failed"], 1, "{run:#}");
    assert_eq!(
        failures(&stack, &run_id(&run)).await[&newcomer],
        reason,
        "reported again with the same reason"
    );
    let stats = pbx_stats(&stack, "held").await;
    assert_eq!(
        stats["writes"], 0,
        "a run with nothing changed writes nothing: {stats}"
    );

    // The holder goes: the next run creates the user, once.
    pbx_delete(&stack, "held", &holder_id).await;
    resync(&stack, "held").await;
    let run = finished_run(&stack, "held", Some(&run_id(&run)), Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 1, "{run:#}");
    let numbered: Vec<Value> = pbx_users(&stack, "held")
        .await
        .into_iter()
        .filter(|user| user["pstn_fixed"] == "46855512345")
        .collect();
    assert_eq!(numbered.len(), 1, "{numbered:#?}");
    assert_eq!(numbered[0]["external_id"], newcomer.as_str(), "{numbered:#?}");
    assert_eq!(by_owner(&pbx_users(&stack, "held").await).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_mid_way_shows_its_counts_so_far_in_status_and_resync_wait() {
    let stack = Stack::start("applier_live_counts").await;
    add_tenant(&stack, "slow", 120, |_| {}).await;
    // Every PBX call takes 1.5 s, 8 at a time: the 120 creates take 20 s at
    // the very least, however fast the machine.
    add_fault(&stack, "slow", json!({"kind": "latency", "ms": 1500})).await;
    // The run is asked for and followed by `resync --wait`, while `status`
    // is read beside it.
    let follow = stack.cli(&["resync", "slow", "--wait", "--timeout", "300"], None);
    let watch = async {
        let run = wait_for(
            "status to show creates while the run goes on",
            Duration::from_secs(120),
            || async {
                let status = stack.cli_json(&["status", "slow", "--json"]).await;
                let run = status[0]["last_run"].clone();
                let created = run["counts"]["created"].as_u64().unwrap_or(0);
                (run["finished_at"].is_null() && created > 0).then_some(run)
            },
        )
        .await;
        let (ok, text, stderr) = stack.cli(&["status", "slow"], None).await;
        (run, ok, text, stderr)
    };
    let ((ok, out, stderr), (run, status_ok, text, status_stderr)) = tokio::join!(follow, watch);
    assert_eq!(run["state"], "applying", "{run:#}");
    // Read in one statement: what is done and what is to do add up to the plan.
    let created = count(&run["counts"]["created"]);
    let to_do = count(&run["changes_pending"]);
    assert!(to_do > 0, "{run:#}");
    assert_eq!(created + to_do, 120, "{run:#}");
    assert!(status_ok, "{status_stderr}");
    assert!(text.contains("changes still to do"), "{text}");

    assert!(ok, "resync --wait: {out}{stderr}");
    let live: Vec<(u64, u64)> = out
        .lines()
        .filter(|line| line.contains(" applying: "))
        .filter_map(|line| Some((number_after(line, "(created ")?, number_after(line, "), ")?)))
        .collect();
    assert!(
        live.iter().any(|&(created, to_do)| created > 0 && to_do > 0),
        "no progress line with creates so far and changes to do:\n{out}"
    );
    assert!(
        out.lines()
            .any(|line| line.contains("ended succeeded: created 120 ")),
        "{out}"
    );
}

/// The number right after `marker` in `line`.
fn number_after(line: &str, marker: &str) -> Option<u64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Adds Åsa Öberg (alias asa.oberg, number 46855512345) to the directory;
/// returns her object id.
async fn add_asa_oberg(stack: &Stack, entra: &str, domain: &str) -> String {
    let user = stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{entra}/users"),
            Some(json!({
                "displayName": "Åsa Öberg", "givenName": "Åsa", "surname": "Öberg",
                "mailNickname": "asa.oberg", "userPrincipalName": format!("asa.oberg@{domain}.example"),
                "mail": format!("asa.oberg@{domain}.example"), "businessPhones": ["08-555 123 45"],
                "accountEnabled": true
            })),
        )
        .await;
    user["id"].as_str().expect("the new user's id").to_owned()
}

/// The run's error code and reason, as recorded on its row.
fn run_error(stack: &Stack, run: &Value) -> (String, String) {
    let row = stack.sql(&format!(
        "SELECT error_code, error FROM runs WHERE id = '{}'",
        run_id(run)
    ));
    let (code, error) = row.split_once('|').expect("code|error");
    (code.to_owned(), error.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_answering_garbage_after_its_writes_and_html_to_reads_creates_each_user_once() {
    let stack = Stack::start("applier_garbage").await;
    let entra = add_tenant(&stack, "garbled", 300, |_| {}).await;
    // Counted faults are used up oldest first: the pre-check's first two reads
    // get a proxy's page, then 23 POSTs are written but answered unreadably
    // (their outcome unknown to the applier), and two are answered 418.
    let spoilt_posts = 10 + 5 + 3 + 5;
    for fault in [
        json!({"kind": "html", "count": 2, "method": "GET"}),
        json!({"kind": "html", "after": true, "count": 10, "method": "POST"}),
        json!({"kind": "reshape", "field": "id", "count": 5, "method": "POST"}),
        json!({"kind": "reshape", "field": "version", "value": "one", "count": 3, "method": "POST"}),
        json!({"kind": "truncate", "count": 5, "method": "POST"}),
        json!({"kind": "unlisted", "status": 418, "count": 2, "method": "POST"}),
    ] {
        add_fault(&stack, "garbled", fault).await;
    }
    resync(&stack, "garbled").await;
    let run = finished_run(&stack, "garbled", None, Duration::from_secs(600)).await;
    let stats = pbx_stats(&stack, "garbled").await;
    // An unknown status fails its change (never success, never a new key);
    // every unreadable answer was asked again with the same key.
    assert_eq!(run["state"], "partial", "{run:#}\n{stats}");
    assert_eq!(run["counts"]["created"], 298, "{run:#}");
    assert_eq!(run["counts"]["failed"], 2, "{run:#}");
    let failed = failures(&stack, &run_id(&run)).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for reason in failed.values() {
        assert!(
            reason.starts_with(
                "PBX answered 418 to POST /v1/companies/garbled/users, a status the contract does not list"
            ),
            "{reason}"
        );
    }
    assert_eq!(
        stats["created"], 298,
        "every user was written once, the 418s not at all: {stats}"
    );
    assert!(
        count(&stats["idempotent_replays"]) >= spoilt_posts,
        "each unreadable answer was replayed: {stats}"
    );
    let retried = stack.sql(&format!(
        "SELECT count(*) FROM run_changes WHERE run_id = '{}' AND outcome = 'created' AND tries > 0",
        run_id(&run)
    ));
    eprintln!(
        "garbage answers: {} POSTs, {} replays, {retried} creates needed more than one try",
        stats["posts"], stats["idempotent_replays"]
    );

    // A later run finishes the job: the two failed users, with the key they had.
    resync(&stack, "garbled").await;
    let run = finished_run(&stack, "garbled", Some(&run_id(&run)), Duration::from_secs(180)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["created"], 2, "{run:#}");
    let stats = pbx_stats(&stack, "garbled").await;
    assert_eq!(stats["created"], 300, "{stats}");
    let pbx = by_owner(&pbx_users(&stack, "garbled").await);
    assert_eq!(pbx.len(), 300);
    assert_eq!(
        count(&stats["posts"]),
        300 + count(&stats["idempotent_replays"]) + 2,
        "every POST created, replayed or was the 418s: {stats}"
    );

    // Updates: unreadable answers to PATCH are tried again; a redirect fails
    // its change with the target named, and the next run writes it.
    let renamed: Vec<String> = directory(&stack, &entra).await.into_keys().take(6).collect();
    for id in &renamed {
        set_surname(&stack, &entra, id, "Skräp").await;
    }
    for fault in [
        json!({"kind": "html", "after": true, "count": 2, "method": "PATCH"}),
        json!({"kind": "reshape", "field": "version", "value": "x", "method": "PATCH"}),
        json!({"kind": "truncate", "method": "PATCH"}),
        json!({"kind": "unlisted", "status": 302, "location": "http://elsewhere.invalid/login", "method": "PATCH"}),
    ] {
        add_fault(&stack, "garbled", fault).await;
    }
    resync(&stack, "garbled").await;
    let run = finished_run(&stack, "garbled", Some(&run_id(&run)), Duration::from_secs(180)).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(run["counts"]["updated"], 5, "{run:#}");
    let failed = failures(&stack, &run_id(&run)).await;
    let (object_id, reason) = failed.iter().next().expect("one failed update");
    let pbx_id = pbx[object_id]["id"].as_str().expect("pbx id");
    assert_eq!(
        reason,
        &format!(
            "PBX answered 302 to PATCH /v1/companies/garbled/users/{pbx_id}, a redirect to http://elsewhere.invalid/login that the contract does not have; it was not followed (check the PBX API URL)"
        )
    );
    resync(&stack, "garbled").await;
    let run = finished_run(&stack, "garbled", Some(&run_id(&run)), Duration::from_secs(180)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["counts"]["updated"], 1, "{run:#}");
    let pbx = by_owner(&pbx_users(&stack, "garbled").await);
    for id in &renamed {
        assert_eq!(pbx[id]["surname"], "Skräp", "{id}");
    }
    assert_eq!(pbx_stats(&stack, "garbled").await["created"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_check_read_answered_with_a_redirect_or_html_fails_the_run_naming_it_and_the_next_run_syncs() {
    let mut stack = Stack::start("applier_portal").await;
    // Three tries of a batch whose pre-check gets no usable answer, not six.
    stack.kill_service(APPLIER).await;
    stack
        .start_service_with("usersync-applier", &[("APPLIER_MAX_ATTEMPTS", "3")])
        .await;
    add_tenant(&stack, "portal", 10, |_| {}).await;
    // A login portal in front of the PBX: a redirect is not followed, and
    // is no status the contract has, so the run stops at once.
    add_fault(
        &stack,
        "portal",
        json!({"kind": "unlisted", "status": 302, "location": "https://sso.invalid/login", "method": "GET"}),
    )
    .await;
    resync(&stack, "portal").await;
    let run = finished_run(&stack, "portal", None, Duration::from_secs(120)).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let (code, error) = run_error(&stack, &run);
    assert_eq!(code, "pbx.check_failed", "{error}");
    assert!(
        error.contains(
            "PBX answered 302 to GET /v1/companies/portal/templates, a redirect to https://sso.invalid/login"
        ),
        "{error}"
    );

    // A page with 200 is retried like an outage, then fails the run saying what came.
    add_fault(
        &stack,
        "portal",
        json!({"kind": "html", "count": 1000, "method": "GET"}),
    )
    .await;
    resync(&stack, "portal").await;
    let run = finished_run(&stack, "portal", Some(&run_id(&run)), Duration::from_secs(180)).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let (code, error) = run_error(&stack, &run);
    assert_eq!(code, "pbx.unavailable", "{error}");
    assert!(
        error.contains(
            "gave no usable answer in 3 attempts: PBX answered 200 to GET /v1/companies/portal/templates with a body that is not JSON (text/html"
        ),
        "{error}"
    );
    assert!(error.contains("Session expired"), "the page is quoted: {error}");
    let stats = pbx_stats(&stack, "portal").await;
    assert_eq!(stats["writes"], 0, "nothing was written: {stats}");
    assert!(
        count(&stats["requests"]) >= 3,
        "the read was tried again: {stats}"
    );

    clear_faults(&stack, "portal").await;
    resync(&stack, "portal").await;
    let run = finished_run(&stack, "portal", Some(&run_id(&run)), Duration::from_secs(120)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(by_owner(&pbx_users(&stack, "portal").await).len(), 10);
}
