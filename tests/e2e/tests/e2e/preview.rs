//! The live preview: `usersync plan ID --live` and the background previews
//! of `usersync-preview`, against the Graph simulator. A preview reads the
//! directory now, decides like the run would, and writes nowhere.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack, SECRET_KEY};
use usersync_graph::{GraphClient, GraphConfig};
use usersync_preview::{get_preview, settings_hash, start_preview, PreviewReport};
use usersync_store::{SecretKey, Store};

use crate::support::{
    graph_users, pbx_users, seed, telephony_members, tenant_file, tenant_file_with, ENTRA_TENANT,
};

fn sim(path: &str) -> String {
    format!("/_sim/tenants/{ENTRA_TENANT}{path}")
}

fn entry<'a>(plan: &'a Value, object_id: &str) -> &'a Value {
    plan["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["object_id"] == object_id))
        .unwrap_or_else(|| panic!("no line for {object_id} in {plan:#}"))
}

fn ids_with(plan: &Value, decision: &str) -> BTreeSet<String> {
    plan["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["decision"] == decision)
        .map(|u| u["object_id"].as_str().expect("object_id").to_owned())
        .collect()
}

/// What a preview must leave untouched: the directory and sync tables, the
/// delta state, the PBX and the mailbox.
fn assert_nothing_written(stack: &Stack) {
    for table in [
        "directory_users",
        "sync_users",
        "round_members",
        "run_changes",
        "tenant_groups",
    ] {
        assert_eq!(
            stack.sql(&format!("SELECT count(*) FROM {table}")),
            "0",
            "{table}"
        );
    }
    assert_eq!(
        stack.sql("SELECT count(*) FROM tenants WHERE delta_link IS NOT NULL"),
        "0"
    );
    assert!(stack.mails().is_empty(), "a preview sends no mail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_live_before_the_first_sync_shows_what_the_first_run_then_does() {
    let stack = Stack::start("preview_live").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let (group, members) = telephony_members(&stack).await;
    let invalid = &members[0];
    stack
        .graph_call(
            Method::PATCH,
            &sim(&format!("/users/{invalid}")),
            Some(json!({"businessPhones": ["call me"]})),
        )
        .await;
    // The live read survives what a round survives: throttling, and Graph
    // ending the paging mid-read (the read starts over).
    for fault in [
        json!({"kind": "throttle", "retry_after": "1", "count": 2, "path_prefix": "/v1.0/users/delta"}),
        json!({"kind": "gone", "skip": 1, "path_prefix": "/v1.0/users/delta"}),
    ] {
        stack.graph_call(Method::POST, &sim("/faults"), Some(fault)).await;
    }

    let (ok, stdout, stderr) = stack.cli(&["plan", "acme", "--live", "--json"], None).await;
    assert!(ok, "plan --live failed: {stderr}");
    let plan: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(plan["source"], "live");
    assert_eq!(plan["summary"]["create"], 119, "{:#}", plan["summary"]);
    assert_eq!(plan["summary"]["skip"], 1, "{:#}", plan["summary"]);
    // Everyone outside the filter group is left alone.
    assert_eq!(plan["summary"]["none"], 80, "{:#}", plan["summary"]);
    let skipped = entry(&plan, invalid);
    assert_eq!(skipped["decision"], "skip");
    let reasons = skipped["reasons"].to_string();
    assert!(reasons.contains("pstn_fixed"), "{reasons}");
    let created = entry(&plan, &members[1]);
    let fields: Vec<&str> = created["changes"]
        .as_array()
        .expect("the fields a create sets")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        fields.starts_with(&["alias", "first_name", "surname", "pstn_fixed"]),
        "{fields:?}"
    );
    assert!(
        stderr.contains("planned 200 of 200 users"),
        "progress on stderr: {stderr}"
    );
    let stats = stack.graph_call(Method::GET, &sim("/stats"), None).await;
    assert_eq!(
        stats["faults_served"], 3,
        "the faults hit the live read: {stats:#}"
    );
    assert!(pbx_users(&stack).await.is_empty(), "a preview creates nobody");
    assert_nothing_written(&stack);

    // The human form says where it read from.
    let (ok, text, stderr) = stack.cli(&["plan", "acme", "--live"], None).await;
    assert!(ok, "{stderr}");
    assert!(
        text.contains("from the directory as read now; nothing was changed"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("skip") && l.contains(invalid.as_str())),
        "{text}"
    );

    // The first run does exactly what the preview showed.
    let (ok, out, stderr) = stack
        .cli(&["resync", "acme", "--wait", "--timeout", "300"], None)
        .await;
    assert!(ok, "resync: {out}{stderr}");
    let in_pbx: BTreeSet<String> = pbx_users(&stack).await.into_keys().collect();
    assert_eq!(in_pbx, ids_with(&plan, "create"));

    // After it: a renamed user is an update field by field, a user who left
    // the group or Entra a deletion (grace period 0 days), read live — the stored
    // plan cannot know either before the next run reads the directory.
    let (renamed, leaving, gone) = (&members[1], &members[2], &members[3]);
    let before = graph_users(&stack).await[renamed.as_str()]["surname"].clone();
    stack
        .graph_call(
            Method::PATCH,
            &sim(&format!("/users/{renamed}")),
            Some(json!({"surname": "Lindqvist"})),
        )
        .await;
    stack
        .graph_call(
            Method::DELETE,
            &sim(&format!("/groups/{group}/members/{leaving}")),
            None,
        )
        .await;
    // Gone from Entra altogether: only the stored state knows the user.
    stack
        .graph_call(Method::DELETE, &sim(&format!("/users/{gone}")), None)
        .await;
    let live = stack.cli_json(&["plan", "acme", "--live", "--json"]).await;
    let update = entry(&live, renamed);
    assert_eq!(update["decision"], "update", "{update:#}");
    assert_eq!(
        update["changes"],
        json!([{"field": "surname", "before": before, "after": "Lindqvist"}]),
        "{update:#}"
    );
    assert_eq!(entry(&live, leaving)["decision"], "delete");
    let removed = entry(&live, gone);
    assert_eq!(removed["decision"], "delete", "{removed:#}");
    assert_eq!(
        removed["user"],
        stack.sql(&format!(
            "SELECT applied->>'alias' FROM sync_users WHERE object_id = '{gone}'"
        ))
    );
    assert_eq!(live["summary"].get("create"), None, "{:#}", live["summary"]);
    let stored = stack.cli_json(&["plan", "acme", "--json"]).await;
    assert!(ids_with(&stored, "update").is_empty(), "{stored:#}");
    assert_eq!(pbx_users(&stack).await.len(), 119, "the preview changed nothing");

    // An expired secret is said as such, with what to do.
    stack
        .graph_call(Method::PATCH, &sim(""), Some(json!({"secret_expired": true})))
        .await;
    let (ok, _, stderr) = stack.cli(&["plan", "acme", "--live"], None).await;
    assert!(!ok);
    assert!(stderr.contains("entra.7000222"), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
}

async fn finished(store: &Store, tenant: &str, id: uuid::Uuid) -> PreviewReport {
    wait_for("the preview to end", Duration::from_secs(120), || async {
        let report = get_preview(store, tenant, id, None, 0, 10)
            .await
            .expect("reading the preview")?;
        (report.state != "running").then_some(report)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_preview_plans_unsaved_settings_and_pages_its_lines() {
    let stack = Stack::start("preview_jobs").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let store = Store::connect(&stack.database_url, 4).await.expect("the store");
    let graph = GraphClient::new(GraphConfig {
        graph_base_url: format!("{}/v1.0", stack.graph.url),
        login_base_url: stack.graph.url.clone(),
        ..GraphConfig::default()
    });
    let key = SecretKey::from_base64(SECRET_KEY).expect("the key");
    let saved = store
        .require_tenant("acme", Some(&key))
        .await
        .expect("acme")
        .config;

    // A mapping not saved yet: the title from the department.
    let mut unsaved_file: Value = serde_json::from_str(&tenant_file()).expect("JSON");
    unsaved_file["user_field_mapping"]["attributes.title"] = json!("department");
    let unsaved = usersync_core::parse_tenant_file(&unsaved_file.to_string()).expect("a valid file");
    assert_ne!(settings_hash(&unsaved), settings_hash(&saved));
    let id = start_preview(&store, &graph, unsaved.clone())
        .await
        .expect("started");
    let report = finished(&store, "acme", id).await;
    assert_eq!(report.state, "succeeded", "{report:#?}");
    assert_eq!(report.settings_hash, settings_hash(&unsaved));
    assert_eq!(report.summary.as_ref().expect("summary")["create"], 120);
    assert_eq!(report.users_read, 200);

    // Paged, and filtered by decision.
    let page = |offset, limit, decision: Option<&'static str>| {
        let store = store.clone();
        async move {
            get_preview(&store, "acme", id, decision, offset, limit)
                .await
                .expect("reading")
                .expect("the preview")
                .users
                .expect("lines")
        }
    };
    let all = page(0, 5000, None).await;
    assert_eq!((all.total, all.items.len(), all.limit), (200, 200, 1000));
    let creates = page(100, 50, Some("create")).await;
    assert_eq!((creates.total, creates.items.len()), (120, 20));
    assert!(creates.items.iter().all(|line| line["decision"] == "create"));
    let directory = graph_users(&stack).await;
    let line = &creates.items[0];
    let source = &directory[line["object_id"].as_str().expect("object_id")];
    let title = line["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["field"] == "attributes.title")
        .expect("a title");
    assert_eq!(
        title["after"], source["department"],
        "the unsaved mapping: {line:#}"
    );

    // Previews at once on a pool of one connection: a survey holding its
    // connection never waits for another, so none starves the rest.
    let small = Store::connect(&stack.database_url, 1)
        .await
        .expect("a one-connection store");
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(
            start_preview(&small, &graph, unsaved.clone())
                .await
                .expect("started"),
        );
    }
    for id in started {
        let report = finished(&small, "acme", id).await;
        assert_eq!(report.state, "succeeded", "{report:#?}");
        assert_eq!(report.summary, finished(&store, "acme", id).await.summary);
        assert_eq!(report.summary.as_ref().expect("summary")["create"], 120);
    }

    // Another tenant's id finds nothing.
    assert!(get_preview(&store, "other", id, None, 0, 10)
        .await
        .expect("read")
        .is_none());

    // The directory refuses: the preview fails with Entra's code.
    let wrong: Value = serde_json::from_str(&tenant_file_with("wrong-secret")).expect("JSON");
    let wrong = usersync_core::parse_tenant_file(&wrong.to_string()).expect("a valid file");
    let failed = finished(
        &store,
        "acme",
        start_preview(&store, &graph, wrong).await.expect("started"),
    )
    .await;
    assert_eq!(failed.state, "failed");
    assert_eq!(failed.error_code.as_deref(), Some("entra.7000215"), "{failed:#?}");
    let error = failed.error.expect("a reason");
    assert!(error.contains("client secret"), "{error}");
    assert!(failed.users.is_none());

    // A preview whose process died stops beating: reported failed, not running forever.
    let orphan = store.create_preview("acme", "x").await.expect("created");
    stack.sql(&format!(
        "UPDATE previews SET heartbeat_at = now() - interval '2 minutes' WHERE id = '{orphan}'"
    ));
    let report = get_preview(&store, "acme", orphan, None, 0, 10)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(report.state, "failed");
    assert_eq!(report.error_code.as_deref(), Some("preview.abandoned"));

    assert!(pbx_users(&stack).await.is_empty());
    assert_nothing_written(&stack);
}

/// A running `usersync-api` on the stack, and its base URL.
async fn start_api(stack: &Stack) -> (tokio::process::Child, String) {
    let port = usersync_e2e::free_port();
    let log = std::fs::File::create(stack.logs.join("usersync-api.log")).expect("a log file");
    let child = tokio::process::Command::new(usersync_e2e::binary("usersync-api"))
        .envs(stack.env())
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting usersync-api");
    let url = format!("http://127.0.0.1:{port}");
    wait_for("usersync-api to be healthy", Duration::from_secs(60), || async {
        let answer = stack.http.get(format!("{url}/healthz")).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    (child, url)
}

async fn token_for(stack: &Stack, tenant: &str) -> String {
    let token = stack
        .cli_json(&["api-token", "create", "--tenant", tenant, "--json"])
        .await;
    token["token"].as_str().expect("a token").to_owned()
}

async fn call(stack: &Stack, method: Method, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = stack.http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("the API answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Polls the preview until it has ended; its body.
async fn api_preview(stack: &Stack, url: &str, token: &str, run_id: &str, query: &str) -> Value {
    wait_for("the preview to end", Duration::from_secs(120), || async {
        let (status, body) = call(
            stack,
            Method::GET,
            &format!("{url}/v1/tenants/acme/preview/{run_id}{query}"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body:#}");
        (body["state"] != "running").then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_previews_saved_and_unsaved_settings_writes_nothing_and_hides_other_companies() {
    let stack = Stack::start("preview_api").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let mut other: Value = serde_json::from_str(&tenant_file()).expect("JSON");
    other["id"] = json!("globex");
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&other.to_string()))
        .await;
    assert!(ok, "{stderr}");
    let (_, members) = telephony_members(&stack).await;
    let invalid = &members[0];
    stack
        .graph_call(
            Method::PATCH,
            &sim(&format!("/users/{invalid}")),
            Some(json!({"businessPhones": ["call me"]})),
        )
        .await;
    let (_api, url) = start_api(&stack).await;
    let acme = token_for(&stack, "acme").await;
    let globex = token_for(&stack, "globex").await;
    let pbx_before = stack.pbx_call(Method::GET, "/_sim/stats", None).await;

    // Before the first sync: creates, and the skip with its reason.
    let (status, started) = call(
        &stack,
        Method::POST,
        &format!("{url}/v1/tenants/acme/preview"),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 202, "{started:#}");
    let run_id = started["run_id"].as_str().expect("a run_id").to_owned();
    let saved = api_preview(&stack, &url, &acme, &run_id, "?decision=skip").await;
    assert_eq!(saved["state"], "succeeded", "{saved:#}");
    assert_eq!(saved["summary"]["create"], 119, "{saved:#}");
    assert_eq!(saved["summary"]["skip"], 1, "{saved:#}");
    let skipped = &saved["users"]["items"][0];
    assert_eq!(skipped["object_id"], invalid.as_str(), "{saved:#}");
    assert!(
        skipped["reasons"].to_string().contains("pstn_fixed"),
        "{skipped:#}"
    );
    let (_, page) = call(
        &stack,
        Method::GET,
        &format!("{url}/v1/tenants/acme/preview/{run_id}?decision=create&offset=110&limit=50"),
        &acme,
        None,
    )
    .await;
    assert_eq!(
        (
            page["users"]["total"].as_i64(),
            page["users"]["items"].as_array().map(Vec::len)
        ),
        (Some(119), Some(9))
    );

    // An unsaved mapping, the secret left masked as the page shows it.
    let mut unsaved: Value = serde_json::from_str(&tenant_file()).expect("JSON");
    unsaved["user_field_mapping"]["attributes.title"] = json!("department");
    let mut provider: Value =
        serde_json::from_str(unsaved["provider_settings"].as_str().expect("a string")).expect("JSON");
    provider["client_secret"] = json!("********");
    unsaved["provider_settings"] = json!(provider.to_string());
    let (status, started) = call(
        &stack,
        Method::POST,
        &format!("{url}/v1/tenants/acme/preview"),
        &acme,
        Some(json!({"tenant": unsaved})),
    )
    .await;
    assert_eq!(status, 202, "{started:#}");
    let unsaved_run = started["run_id"].as_str().expect("a run_id").to_owned();
    let preview = api_preview(&stack, &url, &acme, &unsaved_run, "?decision=create&limit=5").await;
    assert_eq!(preview["state"], "succeeded", "{preview:#}");
    let directory = graph_users(&stack).await;
    for line in preview["users"]["items"].as_array().expect("items") {
        let source = &directory[line["object_id"].as_str().expect("id")];
        let title = line["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .find(|c| c["field"] == "attributes.title")
            .expect("a title");
        assert_eq!(title["after"], source["department"], "{line:#}");
    }
    assert_ne!(preview["settings_hash"], saved["settings_hash"]);
    // The saved tenant is untouched.
    let show = stack.cli_json(&["tenant", "show", "acme", "--json"]).await;
    assert_eq!(
        show["user_field_mapping"]["attributes.title"], "jobTitle",
        "{show:#}"
    );

    // An unsaved file with a problem: refused by field, nothing started.
    let mut broken = unsaved.clone();
    broken["field_mapping"]["pstn_fixed"] = json!("businessPhones[");
    let (status, refused) = call(
        &stack,
        Method::POST,
        &format!("{url}/v1/tenants/acme/preview"),
        &acme,
        Some(json!({"tenant": broken})),
    )
    .await;
    assert_eq!(status, 422, "{refused:#}");
    assert!(
        refused.to_string().contains("field_mapping.pstn_fixed"),
        "{refused:#}"
    );

    // Another company's token finds neither the tenant nor its previews.
    for (method, path) in [
        (Method::POST, "/v1/tenants/acme/preview".to_owned()),
        (Method::GET, format!("/v1/tenants/acme/preview/{run_id}")),
    ] {
        let (status, body) = call(&stack, method, &format!("{url}{path}"), &globex, None).await;
        assert_eq!(status, 404, "{path}: {body:#}");
        assert_eq!(body["error"], "not_found", "{body:#}");
    }
    let (status, _) = call(
        &stack,
        Method::GET,
        &format!("{url}/v1/tenants/globex/preview/{run_id}"),
        &globex,
        None,
    )
    .await;
    assert_eq!(status, 404, "a preview belongs to its tenant");

    // Written nowhere: no PBX request at all, no mail, no directory or sync state.
    assert_eq!(stack.pbx_call(Method::GET, "/_sim/stats", None).await, pbx_before);
    assert!(pbx_users(&stack).await.is_empty());
    assert_nothing_written(&stack);
}
