//! Graph change notifications end to end: the fetcher's scheduler subscribes
//! at the Graph simulator, which validates usersync-api's endpoints and posts
//! notifications to them; the API turns them into delta rounds.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{free_port, poll_until, wait_for, Api, ClosedPort, Stack};

use crate::support::*;

/// A small directory: 20 users, 12 of them in Telephony (the tenant's filter).
const USERS: u64 = 20;
const MEMBERS: u64 = 12;
/// How long a subscription, a notification's round or a clock step may take.
const DEADLINE: Duration = Duration::from_secs(90);

/// The sample tenant (filtered by Telephony, `delete_after_days: 0`) with
/// change notifications `on`, without welcome mails (not under test here).
fn notified_tenant(on: bool) -> String {
    let mut file: Value = serde_json::from_str(&tenant_file()).expect("the sample tenant file");
    file["change_notifications"] = json!(on);
    file["welcome_mail"] = json!(false);
    file.to_string()
}

/// A stack whose fetcher registers `public_url` (default: the API's own
/// address) with Graph and looks at subscriptions every second, the API on
/// that address, the small directory seeded and the notified tenant applied.
async fn notified_stack(
    test: &str,
    public_url: Option<String>,
    more_env: Vec<(&'static str, String)>,
) -> (Stack, Api) {
    let port = free_port();
    let public_url = public_url.unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
    let mut env = vec![
        ("USERSYNC_PUBLIC_URL", public_url),
        ("USERSYNC_SUBSCRIPTION_POLL_SECS", "1".to_owned()),
    ];
    env.extend(more_env);
    let mut stack = Stack::start_with(test, env).await;
    let api = stack.start_api_at(port, &[]).await;
    seed_sized(&stack, USERS, MEMBERS).await;
    apply(&stack, &notified_tenant(true)).await;
    (stack, api)
}

/// The first sync, asked for by hand: it reads a full round and leaves the
/// delta link the notifications' rounds start from.
async fn first_sync(stack: &Stack) -> String {
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "resync failed: {stderr}");
    let status = finished_run(stack, None).await;
    assert_eq!(status["last_run"]["state"], "succeeded", "{status:#}");
    assert_eq!(pbx_users(stack).await.len() as u64, MEMBERS);
    status["last_run"]["id"].as_str().expect("a run id").to_owned()
}

/// The simulator's subscriptions of the tenant, gone ones included.
async fn sim_subscriptions(stack: &Stack) -> Vec<Value> {
    let listed = stack
        .graph_call(
            Method::GET,
            &format!("/_sim/tenants/{ENTRA_TENANT}/subscriptions"),
            None,
        )
        .await;
    listed["value"].as_array().expect("value").clone()
}

/// The simulator's live subscription on `resource`, if any.
fn active<'a>(subscriptions: &'a [Value], resource: &str) -> Option<&'a Value> {
    subscriptions
        .iter()
        .find(|s| s["resource"] == resource && s["status"] == "active")
}

/// The tenant's `change_notifications` status object.
async fn notification_status(stack: &Stack) -> Value {
    stack.cli_json(&["status", "acme", "--json"]).await[0]["change_notifications"].clone()
}

/// The status' line for `resource`.
fn status_of<'a>(notifications: &'a Value, resource: &str) -> Option<&'a Value> {
    notifications["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s["resource"] == resource)
}

/// Waits until Graph and usersync agree on a live subscription for each of
/// `resources`; returns the simulator's entries in that order.
async fn subscribed(stack: &Stack, resources: &[&str]) -> Vec<Value> {
    wait_for(
        "the subscriptions at Graph and in the status",
        DEADLINE,
        || async {
            let at_graph = sim_subscriptions(stack).await;
            let status = notification_status(stack).await;
            resources
                .iter()
                .map(|resource| {
                    let live = active(&at_graph, resource)?;
                    let ours = status_of(&status, resource)?;
                    (ours["subscription_id"] == live["id"] && !ours["expires_at"].is_null())
                        .then(|| live.clone())
                })
                .collect()
        },
    )
    .await
}

/// The tenant's runs (newest first, at most 100).
async fn runs(stack: &Stack) -> Vec<Value> {
    let runs = stack
        .cli_json(&["runs", "acme", "--json", "--limit", "100"])
        .await;
    runs.as_array().expect("a list of runs").clone()
}

/// The tenant's runs not in `seen`.
async fn unseen_runs(stack: &Stack, seen: &BTreeSet<String>) -> Vec<Value> {
    runs(stack)
        .await
        .into_iter()
        .filter(|run| !seen.contains(run["id"].as_str().expect("a run id")))
        .collect()
}

/// The tenant's runs not in `seen`, once none of the tenant's runs is still
/// going (a notification's round may have a follow-up queued); adds them to `seen`.
async fn settled_new_runs(stack: &Stack, seen: &mut BTreeSet<String>) -> Vec<Value> {
    wait_for("the tenant's runs to finish", DEADLINE, || async {
        runs(stack)
            .await
            .iter()
            .all(|run| !run["finished_at"].is_null())
            .then_some(())
    })
    .await;
    let new = unseen_runs(stack, seen).await;
    seen.extend(new.iter().map(|run| run["id"].as_str().unwrap().to_owned()));
    new
}

/// After a directory change: waits until the PBX shows it (`arrived`), then
/// checks that the rounds that brought it were started by notifications only.
async fn arrives_by_notification<F>(stack: &Stack, seen: &mut BTreeSet<String>, what: &str, arrived: F)
where
    F: Fn(&std::collections::BTreeMap<String, Value>) -> bool,
{
    wait_for(&format!("{what} to reach the PBX"), DEADLINE, || async {
        arrived(&pbx_users(stack).await).then_some(())
    })
    .await;
    let runs = settled_new_runs(stack, seen).await;
    assert!(!runs.is_empty(), "{what}: no new run");
    for run in &runs {
        assert_eq!(run["trigger"], "notification", "{what}: {runs:#?}");
        assert_eq!(run["state"], "succeeded", "{what}: {runs:#?}");
    }
}

async fn graph(stack: &Stack, method: Method, path: &str, body: Option<Value>) -> Value {
    stack
        .graph_call(method, &format!("/_sim/tenants/{ENTRA_TENANT}{path}"), body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notified_tenant_follows_a_user_from_creation_to_deletion_without_a_resync() {
    let (stack, _api) = notified_stack("notify_follow", None, Vec::new()).await;
    let first = first_sync(&stack).await;
    let mut seen = BTreeSet::from([first]);

    // The tenant filters by a group: both collections are subscribed, each
    // with its own clientState, and the status shows when they expire.
    let live = subscribed(&stack, &["/users", "/groups"]).await;
    for subscription in &live {
        assert!(
            subscription["clientState"]
                .as_str()
                .is_some_and(|s| s.len() >= 16),
            "{subscription:#}"
        );
        assert_eq!(subscription["changeType"], "updated,deleted", "{subscription:#}");
        assert!(
            subscription["notificationUrl"]
                .as_str()
                .is_some_and(|url| url.ends_with("/graph/notifications")),
            "{subscription:#}"
        );
    }
    assert_ne!(live[0]["clientState"], live[1]["clientState"]);
    let status = notification_status(&stack).await;
    assert_eq!(status["enabled"], true, "{status:#}");

    // Created: a new user joins Telephony.
    let created = graph(
        &stack,
        Method::POST,
        "/users",
        Some(json!({
            "displayName": "Åsa Öberg", "givenName": "Åsa", "surname": "Öberg",
            "mailNickname": "asa.oberg", "userPrincipalName": "asa.oberg@acme.example",
            "mail": "asa.oberg@acme.example", "businessPhones": ["08-555 123 45"],
            "jobTitle": "Telefonist", "accountEnabled": true
        })),
    )
    .await;
    let id = created["id"].as_str().expect("the new user's id").to_owned();
    let (group, members) = telephony_members(&stack).await;
    graph(
        &stack,
        Method::POST,
        &format!("/groups/{group}/members"),
        Some(json!({"id": id})),
    )
    .await;
    arrives_by_notification(&stack, &mut seen, "the new user", |pbx| {
        pbx.get(&id).is_some_and(|u| u["surname"] == "Öberg")
    })
    .await;

    // Updated.
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{id}"),
        Some(json!({"surname": "Lindqvist"})),
    )
    .await;
    arrives_by_notification(&stack, &mut seen, "the changed surname", |pbx| {
        pbx.get(&id).is_some_and(|u| u["surname"] == "Lindqvist")
    })
    .await;

    // Disabled: with no grace period it is deleted from the PBX.
    graph(
        &stack,
        Method::PATCH,
        &format!("/users/{id}"),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    arrives_by_notification(&stack, &mut seen, "the disabled user's deletion", |pbx| {
        !pbx.contains_key(&id)
    })
    .await;

    // Deleted in the directory: the disabled user (already out of the PBX)
    // and a member still in it, who leaves the PBX too.
    let removed = &members[0];
    graph(&stack, Method::DELETE, &format!("/users/{id}?hard=true"), None).await;
    graph(
        &stack,
        Method::DELETE,
        &format!("/users/{removed}?hard=true"),
        None,
    )
    .await;
    arrives_by_notification(&stack, &mut seen, "the deleted member", |pbx| {
        !pbx.contains_key(removed) && !pbx.contains_key(&id) && pbx.len() as u64 == MEMBERS - 1
    })
    .await;

    assert_eq!(
        stack.sql("SELECT count(*) FROM runs WHERE trigger <> 'notification'"),
        "1",
        "only the first sync was asked for"
    );
    let status = notification_status(&stack).await;
    assert!(!status["last_notification_at"].is_null(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_with_a_wrong_client_state_starts_no_run() {
    let (stack, api) = notified_stack("notify_forged", None, Vec::new()).await;
    let first = first_sync(&stack).await;
    let mut seen = BTreeSet::from([first]);
    let live = subscribed(&stack, &["/users"]).await;
    let subscription = live[0]["id"].as_str().expect("a subscription id").to_owned();
    let before = notification_status(&stack).await["last_notification_at"].clone();

    // Forged twice: through the simulator, and straight to the endpoint with
    // the real subscription id but another clientState.
    graph(
        &stack,
        Method::POST,
        &format!("/subscriptions/{subscription}/notify"),
        Some(json!({"client_state": "wrong"})),
    )
    .await;
    let forged = json!({"value": [{
        "id": uuid::Uuid::new_v4().to_string(),
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": live[0]["expirationDateTime"],
        "clientState": "not-the-secret",
        "changeType": "updated",
        "resource": "Users/00000000-0000-0000-0000-000000000001",
        "tenantId": ENTRA_TENANT,
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": "Users/00000000-0000-0000-0000-000000000001",
                         "id": "00000000-0000-0000-0000-000000000001", "organizationId": ENTRA_TENANT}
    }]});
    let answer = stack
        .http
        .post(format!("{}/graph/notifications", api.url))
        .json(&forged)
        .send()
        .await
        .expect("POST /graph/notifications");
    assert!(
        !answer.status().is_server_error(),
        "a forged notification is refused or ignored, not an error: {}",
        answer.status()
    );

    // Well past the coalescing window no run has started (a bounded look,
    // the negative of what the genuine notification below shows).
    let started = poll_until(Duration::from_secs(5), || async {
        let new = unseen_runs(&stack, &seen).await;
        (!new.is_empty()).then_some(new)
    })
    .await;
    assert!(
        started.is_none(),
        "a forged notification started a run: {started:#?}"
    );
    let after = notification_status(&stack).await;
    assert_eq!(after["last_notification_at"], before, "{after:#}");

    // The genuine one (the subscription's own clientState) does start a round.
    graph(
        &stack,
        Method::POST,
        &format!("/subscriptions/{subscription}/notify"),
        None,
    )
    .await;
    let moved = wait_for("the last notification to move", DEADLINE, || async {
        let status = notification_status(&stack).await;
        (status["last_notification_at"] != before && !status["last_notification_at"].is_null())
            .then_some(status)
    })
    .await;
    wait_for("the genuine notification's run", DEADLINE, || async {
        (!unseen_runs(&stack, &seen).await.is_empty()).then_some(())
    })
    .await;
    let runs = settled_new_runs(&stack, &mut seen).await;
    assert!(
        runs.iter().all(|run| run["trigger"] == "notification"),
        "{runs:#?} {moved:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_lifecycle_event_runs_a_full_round() {
    let (stack, _api) = notified_stack("notify_missed", None, Vec::new()).await;
    let first = first_sync(&stack).await;
    let live = subscribed(&stack, &["/users"]).await;
    let subscription = live[0]["id"].as_str().expect("a subscription id");
    // Only the first sync read everything so far.
    assert_eq!(stack.sql("SELECT count(*) FROM runs WHERE full_round"), "1");

    let sent = graph(
        &stack,
        Method::POST,
        &format!("/subscriptions/{subscription}/lifecycle"),
        Some(json!({"event": "missed"})),
    )
    .await;
    assert!(
        sent["status"].as_u64().is_some_and(|s| (200..300).contains(&s)),
        "{sent:#}"
    );
    let full = wait_for("a full round after the missed event", DEADLINE, || async {
        let row = stack.sql(&format!(
            "SELECT id FROM runs WHERE full_round AND id <> '{first}' AND finished_at IS NOT NULL"
        ));
        (!row.is_empty()).then_some(row)
    })
    .await;
    assert_eq!(full.lines().count(), 1, "one full round: {full}");
    let id = full.as_str();
    let listed = runs(&stack).await;
    let run = listed
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("run {id} is not listed: {listed:#?}"));
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"], "notification", "{run:#}");
    assert_eq!(pbx_users(&stack).await.len() as u64, MEMBERS);
}

/// Moves the simulator's clock on by `days`.
async fn advance_graph_clock(stack: &Stack, days: i64) {
    let seconds = chrono::TimeDelta::days(days).num_seconds();
    graph(
        stack,
        Method::POST,
        "/advance-clock",
        Some(json!({ "seconds": seconds })),
    )
    .await;
}

fn expiry(subscription: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = subscription["expirationDateTime"].as_str().expect("an expiry");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("expiry {text}: {err}"))
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_renews_a_subscription_and_recreates_it_once_it_expired() {
    let (stack, _api) = notified_stack("notify_renew", None, Vec::new()).await;
    // The stack's clock starts at the real now, frozen, and moves in steps.
    let start = chrono::Utc::now();
    stack.set_clock(&start.to_rfc3339());
    first_sync(&stack).await;
    let created = subscribed(&stack, &["/users"]).await.remove(0);
    let first_expiry = expiry(&created);
    // Graph's limit for users is 29 days; usersync asks for 5 minutes less.
    let asked = (first_expiry - start).num_minutes();
    assert!(
        (41750..=41760).contains(&asked),
        "expiry {first_expiry} is {asked} min after {start}"
    );

    // 20 days on, less than 14 remain: the scheduler renews the same subscription.
    advance_graph_clock(&stack, 20).await;
    let now = start + chrono::TimeDelta::days(20);
    stack.set_clock(&now.to_rfc3339());
    let renewed = wait_for("the renewal at Graph", DEADLINE, || async {
        let at_graph = sim_subscriptions(&stack).await;
        let live = active(&at_graph, "/users")?.clone();
        (live["id"] == created["id"] && expiry(&live) > first_expiry + chrono::TimeDelta::days(19))
            .then_some(live)
    })
    .await;
    let renewed_expiry = expiry(&renewed);
    wait_for("the renewal in the status", DEADLINE, || async {
        let status = notification_status(&stack).await;
        let ours = status_of(&status, "/users")?;
        let expires = ours["expires_at"].as_str()?;
        let expires = chrono::DateTime::parse_from_rfc3339(expires).ok()?.to_utc();
        ((expires - renewed_expiry).num_seconds().abs() <= 1).then_some(())
    })
    .await;

    // Graph drops it past its expiry while usersync's record still has 13
    // days (as after a lost renewal): the renewal that is due gets 404 and the
    // scheduler creates a new subscription. (Once the record itself says
    // expired, the scheduler creates a new one without asking.)
    advance_graph_clock(&stack, 30).await;
    stack.set_clock(&(now + chrono::TimeDelta::days(16)).to_rfc3339());
    let recreated = wait_for("a new subscription at Graph", DEADLINE, || async {
        let at_graph = sim_subscriptions(&stack).await;
        let live = active(&at_graph, "/users")?.clone();
        (live["id"] != created["id"]).then_some(live)
    })
    .await;
    let at_graph = sim_subscriptions(&stack).await;
    let old = at_graph
        .iter()
        .find(|s| s["id"] == created["id"])
        .expect("the old subscription is still listed");
    assert_eq!(old["status"], "expired", "{old:#}");
    // Both subscriptions (users and groups) took that way; at least ours did.
    assert!(
        logged(&stack, "usersync-fetcher", "Graph no longer has the subscription") >= 1,
        "the new subscription did not come from a renewal's 404 (see the fetcher's log)"
    );
    wait_for("the new subscription in the status", DEADLINE, || async {
        let status = notification_status(&stack).await;
        let ours = status_of(&status, "/users")?;
        (ours["subscription_id"] == recreated["id"] && ours["last_error"].is_null()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_notifications_off_deletes_the_subscriptions_at_graph() {
    let (stack, _api) = notified_stack("notify_off", None, Vec::new()).await;
    let live = subscribed(&stack, &["/users", "/groups"]).await;

    apply(&stack, &notified_tenant(false)).await;
    wait_for("the subscriptions to be deleted at Graph", DEADLINE, || async {
        let at_graph = sim_subscriptions(&stack).await;
        live.iter()
            .all(|ours| {
                at_graph
                    .iter()
                    .any(|s| s["id"] == ours["id"] && s["status"] == "deleted")
            })
            .then_some(())
    })
    .await;
    assert!(active(&sim_subscriptions(&stack).await, "/users").is_none());
    let status = notification_status(&stack).await;
    assert_eq!(status["enabled"], false, "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_address_cannot_be_validated_syncs_nightly_and_the_error_address_is_warned() {
    // Nobody listens on this port: Graph's validation request fails.
    let closed_port = ClosedPort::reserve();
    let closed = format!("http://127.0.0.1:{}", closed_port.port);
    let (stack, _api) = notified_stack(
        "notify_unreachable",
        Some(closed),
        vec![("USERSYNC_SCHEDULE_POLL_SECS", "0.5".to_owned())],
    )
    .await;
    // Frozen at the real now, then moved to the night.
    stack.set_clock(&chrono::Utc::now().to_rfc3339());

    let failed = wait_for("the subscription failure in the status", DEADLINE, || async {
        let status = notification_status(&stack).await;
        let ours = status_of(&status, "/users")?;
        (ours["last_error"].is_string() && !ours["next_attempt_at"].is_null()).then(|| ours.clone())
    })
    .await;
    assert!(failed["subscription_id"].is_null(), "{failed:#}");
    assert!(active(&sim_subscriptions(&stack).await, "/users").is_none());

    // The night comes: the scheduled run syncs the tenant all the same.
    let due = wait_for("the nightly due time", DEADLINE, || async {
        let status = stack.cli_json(&["status", "acme", "--json"]).await;
        status[0]["next_run_at"].as_str().map(str::to_owned)
    })
    .await;
    let due = chrono::DateTime::parse_from_rfc3339(&due)
        .expect("next_run_at")
        .to_utc();
    stack.set_clock(&(due + chrono::TimeDelta::seconds(1)).to_rfc3339());
    let nightly = finished_run(&stack, None).await;
    assert_eq!(nightly["last_run"]["trigger"], "scheduled", "{nightly:#}");
    assert_eq!(nightly["last_run"]["state"], "succeeded", "{nightly:#}");
    assert_eq!(pbx_users(&stack).await.len() as u64, MEMBERS);

    // The run's report at level warning names the problem.
    let warned = wait_for("the warning mail to the error address", DEADLINE, || async {
        stack.decoded_mails().into_iter().find(|mail| {
            mail["to"]
                .as_str()
                .is_some_and(|to| to.contains("it@acme.example"))
                && mail["text"].as_str().is_some_and(|text| {
                    text.contains("change notifications are not working: subscription on /users:")
                })
        })
    })
    .await;
    assert!(
        warned["text"]
            .as_str()
            .unwrap()
            .contains("the tenant syncs on its schedule"),
        "{warned:#}"
    );
}
