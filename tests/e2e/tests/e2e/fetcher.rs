//! The fetcher against everything the Graph simulator can do: membership
//! tracked with the groups delta, field discovery, token and consent errors,
//! throttling and outages, lost delta state and a fetcher killed mid-round.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack};

use crate::support::*;

/// The simulator's seeded directory extension (`extension_{appId}_costCenter`).
const COST_CENTER: &str = "extension_b7a1c3d2e4f54a6b8c9d0e1f2a3b4c5d_costCenter";

/// An extra tenant next to the sample one: its own Entra tenant, PBX company and error address.
struct Extra {
    id: &'static str,
    entra: &'static str,
}

impl Extra {
    fn error_address(&self) -> String {
        format!("it@{}.example", self.id)
    }

    /// Creates the simulated Entra tenant (`sim` adds to or overrides the defaults),
    /// the PBX company, and applies the tenant file (`changes` merged into the sample's).
    async fn setup(&self, stack: &Stack, sim: Value, member_of: Value, changes: Value) {
        let mut body = json!({
            "tenant_id": self.entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "seed": 11, "users": 40, "page_size": 15
        });
        merge(&mut body, sim);
        stack.graph_call(Method::POST, "/_sim/tenants", Some(body)).await;
        stack
            .pbx_call(
                Method::PUT,
                &format!("/_sim/companies/{}", self.id),
                Some(json!({
                    "templates": [{"id": "standard", "name": "Standard"}],
                    "numbers": [{"number": CALLER_ID, "kind": "main"}]
                })),
            )
            .await;
        let mut file: Value = serde_json::from_str(&tenant_file()).expect("the sample tenant file");
        let provider = json!({
            "tenant_id": self.entra, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "user_filter": {"memberOf": member_of}
        });
        merge(
            &mut file,
            json!({
                "id": self.id, "name": self.id, "pbx_company_id": self.id,
                "error_notification_email": self.error_address(), "error_notification_level": "error",
                "welcome_mail": false, "provider_settings": provider.to_string()
            }),
        );
        merge(&mut file, changes);
        let (ok, _, stderr) = stack
            .cli(&["tenant", "apply", "-"], Some(&file.to_string()))
            .await;
        assert!(ok, "tenant apply {} failed: {stderr}", self.id);
    }

    fn sim_path(&self, rest: &str) -> String {
        format!("/_sim/tenants/{}{rest}", self.entra)
    }
}

fn merge(target: &mut Value, changes: Value) {
    if let (Some(target), Value::Object(changes)) = (target.as_object_mut(), changes) {
        target.extend(changes);
    }
}

/// Requests a resync and returns the id of the run it started.
async fn request_resync(stack: &Stack, tenant: &str, full: bool) -> String {
    let mut args = vec!["resync", tenant];
    if full {
        args.push("--full");
    }
    let (ok, stdout, stderr) = stack.cli(&args, None).await;
    assert!(ok, "resync {tenant} failed: {stderr}");
    stdout
        .split("run ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no run id in {stdout:?}"))
        .to_owned()
}

/// The run as `usersync runs --json` shows it.
async fn run(stack: &Stack, tenant: &str, run_id: &str) -> Option<Value> {
    let runs = stack.cli_json(&["runs", tenant, "--json"]).await;
    runs.as_array()?.iter().find(|r| r["id"] == run_id).cloned()
}

async fn finished(stack: &Stack, tenant: &str, run_id: &str, deadline: Duration) -> Value {
    wait_for(
        &format!("run {run_id} of {tenant} to finish"),
        deadline,
        || async {
            run(stack, tenant, run_id)
                .await
                .filter(|r| !r["finished_at"].is_null())
        },
    )
    .await
}

/// Resyncs and waits for the run's end; returns it.
async fn sync(stack: &Stack, tenant: &str, full: bool) -> Value {
    let run_id = request_resync(stack, tenant, full).await;
    finished(stack, tenant, &run_id, Duration::from_secs(120)).await
}

fn assert_counts(run: &Value, created: u64, updated: u64, deleted: u64) {
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let counts = &run["counts"];
    assert_eq!(
        (&counts["created"], &counts["updated"], &counts["deleted"]),
        (&json!(created), &json!(updated), &json!(deleted)),
        "{run:#}"
    );
}

async fn sim_stats(stack: &Stack, entra: &str) -> Value {
    stack
        .graph_call(Method::GET, &format!("/_sim/tenants/{entra}/stats"), None)
        .await
}

/// External ids of a PBX company's users.
async fn company_users(stack: &Stack, company: &str) -> Vec<String> {
    let users = stack
        .pbx_call(Method::GET, &format!("/_sim/companies/{company}/users"), None)
        .await;
    users["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["external_id"].as_str().expect("external_id").to_owned())
        .collect()
}

async fn add_member(stack: &Stack, group: &str, member: &str) {
    stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/groups/{group}/members"),
            Some(json!({"id": member})),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_the_groups_delta_including_nested_groups() {
    let stack = Stack::start("groups").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    assert_counts(&sync(&stack, "acme", false).await, 120, 0, 0);
    let (group, members) = telephony_members(&stack).await;
    let outsiders: Vec<String> = graph_users(&stack)
        .await
        .into_keys()
        .filter(|id| !members.contains(id))
        .collect();
    assert!(!stack
        .sql("SELECT delta_link FROM tenant_groups WHERE tenant_id = 'acme'")
        .is_empty());

    // Joining the filter group brings a user in whose own object did not change.
    add_member(&stack, &group, &outsiders[0]).await;
    assert_counts(&sync(&stack, "acme", false).await, 1, 0, 0);
    assert!(pbx_users(&stack).await.contains_key(&outsiders[0]));

    // Leaving it takes a user out (grace period 0 days).
    stack
        .graph_call(
            Method::DELETE,
            &format!(
                "/_sim/tenants/{ENTRA_TENANT}/groups/{group}/members/{}",
                members[0]
            ),
            None,
        )
        .await;
    assert_counts(&sync(&stack, "acme", false).await, 0, 0, 1);
    assert!(!pbx_users(&stack).await.contains_key(&members[0]));

    // A nested group counts, and so does a change inside it later.
    let nested = stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/groups"),
            Some(json!({"name": "Telephony Stockholm"})),
        )
        .await;
    let nested = nested["id"].as_str().expect("group id").to_owned();
    add_member(&stack, &nested, &outsiders[1]).await;
    add_member(&stack, &group, &nested).await;
    assert_counts(&sync(&stack, "acme", false).await, 1, 0, 0);
    add_member(&stack, &nested, &outsiders[2]).await;
    assert_counts(&sync(&stack, "acme", false).await, 1, 0, 0);
    let pbx = pbx_users(&stack).await;
    assert!(pbx.contains_key(&outsiders[1]) && pbx.contains_key(&outsiders[2]));
    assert_eq!(pbx.len(), 122);

    // A second group with the filter's name: its members count too, and the run warns.
    let twin = stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/groups"),
            Some(json!({"name": "Telephony"})),
        )
        .await;
    add_member(&stack, twin["id"].as_str().expect("group id"), &outsiders[4]).await;
    let run = sync(&stack, "acme", false).await;
    assert_counts(&run, 1, 0, 0);
    let warning = stack.sql(&format!(
        "SELECT warning FROM run_warnings WHERE run_id = '{}'",
        run["id"].as_str().expect("id")
    ));
    assert!(
        warning.starts_with("2 groups are named \"Telephony\""),
        "{warning}"
    );
    assert_eq!(pbx_users(&stack).await.len(), 123);

    // No membership change: the stored membership holds, nobody is listed again.
    let before = sim_stats(&stack, ENTRA_TENANT).await["requests"].clone();
    stack
        .graph_call(
            Method::PATCH,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users/{}", outsiders[3]),
            Some(json!({"jobTitle": "Outside the filter"})),
        )
        .await;
    assert_counts(&sync(&stack, "acme", false).await, 0, 0, 0);
    let after = sim_stats(&stack, ENTRA_TENANT).await["requests"].clone();
    assert_eq!(after["members"], before["members"], "members were listed again");
    assert!(after["groups_delta"].as_u64() > before["groups_delta"].as_u64());
    assert_eq!(pbx_users(&stack).await.len(), 123);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_discovered_and_an_incomplete_mapping_creates_nobody() {
    let stack = Stack::start("fields").await;
    let tenant = Extra {
        id: "fieldco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c5",
    };
    tenant
        .setup(
            &stack,
            json!({"users": 30}),
            json!([""]),
            json!({
                "field_mapping": {"first_name": "givenName"},
                "user_field_mapping": {"attributes.cost": COST_CENTER}
            }),
        )
        .await;
    let (ok, stdout, _) = stack.cli(&["fields", "fieldco"], None).await;
    assert!(ok && stdout.contains("no fields discovered"), "{stdout}");

    let run = sync(&stack, "fieldco", false).await;
    assert_counts(&run, 0, 0, 0);
    assert_eq!(run["counts"]["failed"], 0, "{run:#}");
    let companies = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    assert_eq!(companies["companies"]["fieldco"]["writes"], 0, "{companies}");

    let fields = stack.cli_json(&["fields", "fieldco", "--json"]).await;
    let by_name = |name: &str| {
        fields
            .as_array()
            .expect("a list")
            .iter()
            .find(|f| f["field"] == name)
            .unwrap_or_else(|| panic!("{name} not discovered: {fields:#}"))
            .clone()
    };
    for name in [
        "mail",
        "accountEnabled",
        "businessPhones[0]",
        "onPremisesExtensionAttributes.extensionAttribute1",
        COST_CENTER,
    ] {
        assert_eq!(by_name(name)["users"], 30, "{name}");
    }
    assert!(by_name("mail")["example"]
        .as_str()
        .is_some_and(|mail| mail.contains('@')));
    let (ok, table, stderr) = stack.cli(&["fields", "fieldco"], None).await;
    assert!(ok, "{stderr}");
    assert!(table.starts_with("FIELD"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("mail ") && l.contains(" 30 ")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_consent_and_unknown_group_errors_fail_only_their_tenant_and_reach_the_notifier() {
    let stack = Stack::start("tokens").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let wrong = Extra {
        id: "wrongco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c6",
    };
    let expired = Extra {
        id: "expiredco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c7",
    };
    let consent = Extra {
        id: "consentco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c8",
    };
    wrong
        .setup(
            &stack,
            json!({"client_secret": "the-real-one"}),
            json!([""]),
            json!({}),
        )
        .await;
    expired
        .setup(&stack, json!({"secret_expired": true}), json!([""]), json!({}))
        .await;
    consent
        .setup(&stack, json!({"consent_missing": true}), json!([""]), json!({}))
        .await;
    let nogroup = Extra {
        id: "nogroupco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3d2",
    };
    nogroup
        .setup(
            &stack,
            json!({"groups": [{"name": "Sales", "members": 5}]}),
            json!(["Sales", "Växel O'Brien"]),
            json!({}),
        )
        .await;

    let mut runs = Vec::new();
    for tenant in ["wrongco", "expiredco", "consentco", "nogroupco", "acme"] {
        runs.push((tenant, request_resync(&stack, tenant, false).await));
    }
    let expected = [
        (
            "wrongco",
            "entra.7000215",
            "client secret is wrong (AADSTS7000215)",
        ),
        (
            "expiredco",
            "entra.7000222",
            "client secret expired (AADSTS7000222)",
        ),
        ("consentco", "graph.consent_missing", "admin consent"),
        (
            "nogroupco",
            "graph.group_not_found",
            "no group named \"Växel O'Brien\"",
        ),
    ];
    for ((tenant, run_id), (_, code, message)) in runs.iter().zip(expected) {
        let run = finished(&stack, tenant, run_id, Duration::from_secs(120)).await;
        assert_eq!(run["state"], "failed", "{run:#}");
        assert!(
            run["error"].as_str().is_some_and(|e| e.contains(message)),
            "{run:#}"
        );
        assert_eq!(
            stack.sql(&format!("SELECT error_code FROM runs WHERE id = '{run_id}'")),
            code
        );
        let (ok, text, _) = stack.cli(&["runs", tenant], None).await;
        assert!(ok && text.contains(message), "{text}");
    }
    let (_, acme_run) = &runs[4];
    assert_counts(
        &finished(&stack, "acme", acme_run, Duration::from_secs(120)).await,
        120,
        0,
        0,
    );

    for tenant in [&wrong, &expired, &consent, &nogroup] {
        let address = format!("To: {}", tenant.error_address());
        wait_for(
            &format!("the error report to {}", tenant.error_address()),
            Duration::from_secs(60),
            || async { stack.mails().into_iter().find(|mail| mail.contains(&address)) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_tenant_waits_alone_and_a_long_outage_fails_the_run() {
    let mut stack = Stack::start("throttle").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let slow = Extra {
        id: "slowco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c9",
    };
    slow.setup(&stack, json!({}), json!([""]), json!({})).await;
    // A fractional Retry-After, long enough for the other tenant to finish meanwhile.
    stack
        .graph_call(
            Method::POST,
            &slow.sim_path("/faults"),
            Some(json!({"kind": "throttle", "retry_after": "20.5", "path_prefix": "/v1.0/users/delta"})),
        )
        .await;

    let requested = std::time::Instant::now();
    let slow_run = request_resync(&stack, "slowco", false).await;
    wait_for("the throttle to be served", Duration::from_secs(30), || async {
        (sim_stats(&stack, slow.entra).await["faults_served"] == 1).then_some(())
    })
    .await;
    let acme_run = request_resync(&stack, "acme", false).await;
    assert_counts(
        &finished(&stack, "acme", &acme_run, Duration::from_secs(120)).await,
        120,
        0,
        0,
    );
    let waiting = run(&stack, "slowco", &slow_run).await.expect("the slow run");
    assert!(
        waiting["finished_at"].is_null(),
        "slowco did not wait: {waiting:#}"
    );

    let done = finished(&stack, "slowco", &slow_run, Duration::from_secs(120)).await;
    assert_counts(&done, 40, 0, 0);
    assert!(requested.elapsed() >= Duration::from_millis(20_500), "{done:#}");

    // A fetcher that gives up after 3 s of waiting: a 503 that does not end fails the run.
    stack.kill_service(0).await;
    stack
        .start_service_with("usersync-fetcher", &[("GRAPH_RETRY_MAX_WAIT_SECS", "3")])
        .await;
    stack
        .graph_call(
            Method::POST,
            &slow.sim_path("/faults"),
            Some(json!({"kind": "unavailable", "count": 1000})),
        )
        .await;
    let down_run = request_resync(&stack, "slowco", false).await;
    let down = finished(&stack, "slowco", &down_run, Duration::from_secs(60)).await;
    assert_eq!(down["state"], "failed", "{down:#}");
    let error = down["error"].as_str().expect("a reason");
    assert!(error.contains("Microsoft Graph unavailable after"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert_eq!(
        stack.sql(&format!("SELECT error_code FROM runs WHERE id = '{down_run}'")),
        "graph.unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_delta_state_and_disabling_lose_no_deletion_and_paging_quirks_no_user() {
    let stack = Stack::start("expiry").await;
    let tenant = Extra {
        id: "openco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3d0",
    };
    // Every user is in scope, so only the full round can tell who is gone.
    tenant
        .setup(&stack, json!({"users": 30}), json!([""]), json!({}))
        .await;
    // Graph's paging quirks on the first round: an empty page with a next link,
    // then pages out of order with a user sent twice.
    for quirk in [
        json!({"kind": "empty_page"}),
        json!({"kind": "reorder", "count": 3}),
    ] {
        let mut fault = quirk;
        fault["path_prefix"] = json!("/v1.0/users/delta");
        stack
            .graph_call(Method::POST, &tenant.sim_path("/faults"), Some(fault))
            .await;
    }
    assert_counts(&sync(&stack, "openco", false).await, 30, 0, 0);
    assert_eq!(sim_stats(&stack, tenant.entra).await["faults_served"], 4);
    let mut users: Vec<String> = stack
        .graph_call(Method::GET, &tenant.sim_path("/users"), None)
        .await["value"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect();

    for style in ["gone", "syncStateNotFound", "syncStateInvalid", "resyncRequired"] {
        let gone = users.pop().expect("a user to delete");
        stack
            .graph_call(
                Method::PATCH,
                &tenant.sim_path(""),
                Some(json!({"expiry_style": style})),
            )
            .await;
        stack
            .graph_call(
                Method::DELETE,
                &tenant.sim_path(&format!("/users/{gone}?hard=true")),
                None,
            )
            .await;
        stack
            .graph_call(Method::POST, &tenant.sim_path("/expire-delta-tokens"), None)
            .await;
        let run = sync(&stack, "openco", false).await;
        assert_counts(&run, 0, 0, 1);
        let id = run["id"].as_str().expect("id");
        assert_eq!(
            stack.sql(&format!("SELECT full_round FROM runs WHERE id = '{id}'")),
            "t",
            "{style}"
        );
        assert!(!company_users(&stack, "openco").await.contains(&gone), "{style}");
    }

    // Asked for: a full read with a valid link removes who it did not return.
    let gone = users.pop().expect("a user to delete");
    stack
        .graph_call(
            Method::DELETE,
            &tenant.sim_path(&format!("/users/{gone}?hard=true")),
            None,
        )
        .await;
    let run = sync(&stack, "openco", true).await;
    assert_counts(&run, 0, 0, 1);
    let id = run["id"].as_str().expect("id");
    assert_eq!(
        stack.sql(&format!("SELECT full_round FROM runs WHERE id = '{id}'")),
        "t"
    );
    assert_eq!(company_users(&stack, "openco").await.len(), 25);

    // Disabled is out of scope; enabled again is back (a delta round: the
    // change carries only accountEnabled, which is always selected).
    let disabled = users.pop().expect("a user to disable");
    let enabled = |on: bool| json!({"accountEnabled": on});
    let path = tenant.sim_path(&format!("/users/{disabled}"));
    stack.graph_call(Method::PATCH, &path, Some(enabled(false))).await;
    assert_counts(&sync(&stack, "openco", false).await, 0, 0, 1);
    assert!(!company_users(&stack, "openco").await.contains(&disabled));
    stack.graph_call(Method::PATCH, &path, Some(enabled(true))).await;
    assert_counts(&sync(&stack, "openco", false).await, 1, 0, 0);
    assert!(company_users(&stack, "openco").await.contains(&disabled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetcher_killed_mid_round_loses_nothing() {
    let mut stack = Stack::start("killed").await;
    let tenant = Extra {
        id: "bigco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3d1",
    };
    tenant
        .setup(
            &stack,
            json!({"users": 600, "page_size": 20}),
            json!([""]),
            json!({}),
        )
        .await;
    // After ten pages the fetcher is told to wait five minutes: it is killed then.
    stack
        .graph_call(
            Method::POST,
            &tenant.sim_path("/faults"),
            Some(json!({"kind": "throttle", "retry_after": "300", "skip": 10, "path_prefix": "/v1.0/users/delta"})),
        )
        .await;
    let run_id = request_resync(&stack, "bigco", false).await;
    wait_for(
        "the fetcher to stop mid-round",
        Duration::from_secs(60),
        || async { (sim_stats(&stack, tenant.entra).await["faults_served"] == 1).then_some(()) },
    )
    .await;
    let pages = wait_for(
        "the differ to record the ten pages",
        Duration::from_secs(30),
        || async {
            let pages = stack.sql(&format!(
                "SELECT count(*) FROM round_pages WHERE run_id = '{run_id}'"
            ));
            (pages == "10").then_some(pages)
        },
    )
    .await;
    assert_eq!(pages, "10");
    assert_eq!(
        stack.sql("SELECT delta_link IS NULL FROM tenants WHERE id = 'bigco'"),
        "t"
    );
    stack.kill_service(0).await;
    stack.start_service("usersync-fetcher").await;

    // The request comes back to the new fetcher, which reads the round again from the start.
    let done = finished(&stack, "bigco", &run_id, Duration::from_secs(240)).await;
    assert_counts(&done, 600, 0, 0);
    assert_eq!(
        stack.sql("SELECT delta_link IS NOT NULL FROM tenants WHERE id = 'bigco'"),
        "t"
    );
    let writes = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    assert_eq!(writes["companies"]["bigco"]["created"], 600, "{writes}");
    assert_eq!(
        stack.sql("SELECT count(*) FROM directory_users WHERE tenant_id = 'bigco' AND NOT removed"),
        "600"
    );
}

/// Answers that are not what Graph documents, on page 2 of a delta round: the
/// run fails naming what was wrong, the stored delta link stays where it was,
/// and once the fault is gone the next round brings every change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_graph_answers_mid_round_fail_the_run_and_keep_the_delta_link() {
    // A proxy page that does not go away is retried for 2 s of waiting, not 600.
    let stack = Stack::start_with("badanswers", vec![("GRAPH_RETRY_MAX_WAIT_SECS", "2".to_owned())]).await;
    let tenant = Extra {
        id: "proxyco",
        entra: "6b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3d2",
    };
    tenant
        .setup(
            &stack,
            json!({"users": 30, "page_size": 5}),
            json!([""]),
            json!({}),
        )
        .await;
    assert_counts(&sync(&stack, "proxyco", false).await, 30, 0, 0);
    let users: Vec<String> = stack
        .graph_call(Method::GET, &tenant.sim_path("/users"), None)
        .await["value"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect();
    let delta_link = || stack.sql("SELECT delta_link FROM tenants WHERE id = 'proxyco'");

    let cases = [
        (
            json!({"kind": "html_page", "count": 1000}),
            "graph.invalid_response",
            vec!["HTTP 200", "not JSON", "text/html", "attempt(s)"],
        ),
        (
            json!({"kind": "missing_value"}),
            "graph.invalid_response",
            vec!["HTTP 200", "no `value` key"],
        ),
        (
            json!({"kind": "truncated", "count": 1000}),
            "graph.invalid_response",
            vec!["HTTP 200", "cut short", "attempt(s)"],
        ),
        (
            json!({"kind": "item_without_id"}),
            "graph.invalid_response",
            vec!["item 0 of `value` has no `id`"],
        ),
        (
            json!({"kind": "foreign_link", "origin": "http://graph.example.invalid"}),
            "graph.invalid_link",
            vec!["`@odata.nextLink`", "http://graph.example.invalid"],
        ),
    ];
    for (case, (mut fault, code, named)) in cases.into_iter().enumerate() {
        // Twelve changed users: a delta round of three pages of five.
        let title = format!("Title {case}");
        for user in &users[..12] {
            let path = tenant.sim_path(&format!("/users/{user}"));
            stack
                .graph_call(Method::PATCH, &path, Some(json!({"jobTitle": title})))
                .await;
        }
        let link_before = delta_link();
        assert!(link_before.contains("/v1.0/users/delta"), "{link_before}");
        fault["path_prefix"] = json!("/v1.0/users/delta");
        fault["skip"] = json!(1);
        stack
            .graph_call(Method::POST, &tenant.sim_path("/faults"), Some(fault.clone()))
            .await;

        let failed = sync(&stack, "proxyco", false).await;
        assert_eq!(failed["state"], "failed", "{fault}: {failed:#}");
        let error = failed["error"].as_str().expect("a reason");
        for part in named.iter().chain(&["/v1.0/users/delta"]) {
            assert!(error.contains(part), "{fault}: {part:?} in {error}");
        }
        assert!(!error.contains("token="), "{fault}: no delta token in {error}");
        let id = failed["id"].as_str().expect("id");
        assert_eq!(
            stack.sql(&format!("SELECT error_code FROM runs WHERE id = '{id}'")),
            code,
            "{fault}"
        );
        assert_eq!(delta_link(), link_before, "{fault}: the delta link moved");

        stack
            .graph_call(Method::DELETE, &tenant.sim_path("/faults"), None)
            .await;
        assert_counts(&sync(&stack, "proxyco", false).await, 0, 12, 0);
        assert_ne!(
            delta_link(),
            link_before,
            "{fault}: the good round moves the link"
        );
        let pbx = stack
            .pbx_call(Method::GET, "/_sim/companies/proxyco/users", None)
            .await;
        let items = pbx["items"].as_array().expect("items");
        let ids: std::collections::BTreeSet<_> = items
            .iter()
            .map(|u| u["external_id"].as_str().expect("external_id"))
            .collect();
        assert_eq!((items.len(), ids.len()), (30, 30), "{fault}: every user once");
        let retitled = items
            .iter()
            .filter(|u| u["attributes"]["title"] == json!(title))
            .count();
        assert_eq!(retitled, 12, "{fault}");
    }
}
