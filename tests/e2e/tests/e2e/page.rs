//! The company admin's page in a real headless Chromium: each test boots a stack
//! with `usersync-api`, runs one flow of tests/browser (node + playwright-core,
//! Debian's /usr/bin/chromium) against it, and checks the outcome from this side
//! (the PBX simulator's users, the stored tenant). Screenshots of every step land in
//! target/browser-screenshots/<flow>/.

use std::{path::PathBuf, process::Stdio};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::process::Command;
use usersync_e2e::{workspace_target, Api, Stack};

use crate::support::{self, CALLER_ID, CLIENT_ID, CLIENT_SECRET, ENTRA_TENANT};

fn provider_settings() -> String {
    json!({
        "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "user_filter": {"memberOf": ["Telephony"]}
    })
    .to_string()
}

/// A small directory (30 users, 20 in Telephony, and one more member without a
/// phone, whom the sync must skip) and the PBX company with templates and numbers.
/// Returns the phoneless member's object id.
async fn seed_small(stack: &Stack) -> String {
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "seed": 14, "users": 30, "groups": [{"name": "Telephony", "members": 20}], "page_size": 10
            })),
        )
        .await;
    stack
        .pbx_call(
            Method::PUT,
            "/_sim/companies/acme",
            Some(json!({
                "templates": [{"id": "standard", "name": "Standard"}, {"id": "sales", "name": "Sales team"}],
                "numbers": [{"number": CALLER_ID, "kind": "main"}, {"number": "46812345601", "kind": "fixed"}]
            })),
        )
        .await;
    let phoneless = stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users"),
            Some(json!({
                "displayName": "Nils Nummerlös", "givenName": "Nils", "surname": "Nummerlös",
                "mailNickname": "nils.nummerlos", "userPrincipalName": "nils.nummerlos@acme.example",
                "mail": "nils.nummerlos@acme.example", "businessPhones": [], "accountEnabled": true
            })),
        )
        .await["id"]
        .as_str()
        .expect("the new user's id")
        .to_owned();
    let (group, _) = support::telephony_members(stack).await;
    stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/groups/{group}/members"),
            Some(json!({"id": phoneless})),
        )
        .await;
    phoneless
}

/// Runs `node tests/browser/<flow>.mjs` and asserts it passed; returns what it reported.
async fn run_flow(flow: &str, api: &Api, token: &str, extra: &[(&str, String)]) -> Value {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/services-up (it runs npm ci there)"
    );
    let result = tempfile::NamedTempFile::new().expect("a result file");
    let output = Command::new("node")
        .arg(browser_dir.join(format!("{flow}.mjs")))
        .current_dir(&browser_dir)
        .env("BASE_URL", &api.url)
        .env("TOKEN", token)
        .env("TENANT", "acme")
        .env("SCREENSHOTS", workspace_target().join("browser-screenshots"))
        .env("RESULT_FILE", result.path())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("running node (scripts/services-up installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser flow {flow} failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(result.path()).unwrap_or_default();
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("the flow's report is JSON")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_takes_an_empty_company_through_the_portal_flow_and_shows_an_expired_secret() {
    let mut stack = Stack::start("page_flow").await;
    let phoneless = seed_small(&stack).await;
    let api = stack.start_api().await;
    // A company's token, made before its template exists: the admin creates it.
    let (_, token) = stack.api_token(Some("acme")).await;

    let report = run_flow(
        "seed-flow",
        &api,
        &token,
        &[
            ("PROVIDER_SETTINGS", provider_settings()),
            ("PBX_COMPANY", "acme".to_owned()),
            ("CALLER_ID", CALLER_ID.to_owned()),
            ("TEMPLATE_ID", "standard".to_owned()),
        ],
    )
    .await;

    // What the preview promised is what the PBX now holds: Telephony's members only,
    // with the caller id and template picked from the lists.
    let promised = report["preview_create"].as_u64().expect("the preview's count");
    let users = support::pbx_users(&stack).await;
    assert_eq!(
        users.len() as u64,
        promised,
        "PBX users against the preview's creations"
    );
    assert_eq!(
        report["preview_skipped"], 1,
        "the page listed the phoneless member as skipped"
    );
    assert!(
        !users.contains_key(&phoneless),
        "the phoneless member is not in the PBX"
    );
    let (_, members) = support::telephony_members(&stack).await;
    for (object_id, user) in &users {
        assert!(members.contains(object_id), "{object_id} is in Telephony");
        assert_eq!(user["caller_id"], CALLER_ID, "{object_id}'s caller id");
        assert_eq!(user["template"], "standard", "{object_id}'s template");
        assert!(
            user["email"].as_str().is_some_and(|m| m.contains('@')),
            "{object_id}'s mapped mail"
        );
    }
    let tenant = stack.cli_json(&["tenant", "show", "acme"]).await;
    assert_eq!(tenant["welcome_mail_copy_to"], "pbx-admin@acme.example");
    assert_eq!(tenant["field_mapping"]["pstn_fixed"], "businessPhones[0]");

    // Entra now refuses the secret as expired: the page says so and what to do.
    stack
        .graph_call(
            Method::PATCH,
            &format!("/_sim/tenants/{ENTRA_TENANT}"),
            Some(json!({"secret_expired": true})),
        )
        .await;
    // The fetcher keeps its access token until it ages out; revoking it makes the
    // next run ask Entra for a new one, which is when an expired secret shows.
    stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/revoke-tokens"),
            None,
        )
        .await;
    run_flow("expired-secret", &api, &token, &[]).await;
    let status = stack.cli_json(&["status", "acme", "--json"]).await;
    assert_eq!(status[0]["last_run"]["error_code"], "entra.7000222");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_saves_by_keyboard_alone_and_refuses_a_stale_save() {
    let mut stack = Stack::start("page_keyboard").await;
    support::seed(&stack).await;
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&support::tenant_file()))
        .await;
    assert!(ok, "tenant apply: {stderr}");
    let api = stack.start_api().await;
    let (_, token) = stack.api_token(Some("acme")).await;

    run_flow(
        "keyboard-save",
        &api,
        &token,
        &[("PROVIDER_SETTINGS", provider_settings())],
    )
    .await;

    // The keyboard save landed; the stale one did not (the second writer's name stands).
    let tenant = stack.cli_json(&["tenant", "show", "acme"]).await;
    assert_eq!(tenant["error_notification_email"], "helpdesk@acme.example");
    assert_eq!(tenant["name"], "Acme Group AB");
    assert_eq!(tenant["delete_after_days"], 0, "the refused save changed nothing");
}

/// The page's live check of the pasted string and the core's check (the server's
/// 422) flag the same fields, so the page never blocks what the server takes nor
/// lets through what it refuses.
#[tokio::test]
async fn the_pages_provider_settings_check_flags_the_same_fields_as_the_core() {
    let good = provider_settings();
    let cases: Vec<String> = vec![
        good.clone(),
        good.replace(r#"["Telephony"]"#, r#"[""]"#),
        good.replace(r#"["Telephony"]"#, "[]"),
        good.replace(CLIENT_SECRET, &format!("{CLIENT_SECRET} ")),
        format!(" {good}"),
        String::new(),
        "   ".to_owned(),
        good.replace(&format!(r#""client_id":"{CLIENT_ID}","#), ""),
        good.replace("\"client_id\"", "\"clientid\""),
        good.replace("\"client_id\"", "\"colour\""),
        good.replace("memberOf", "memberof"),
        good.replace(r#"["Telephony"]"#, r#""Telephony""#),
        good.replace(r#"["Telephony"]"#, r#"["Telephony",""]"#),
        good.replace(r#"["Telephony"]"#, r#"[" Telephony"]"#),
        good.replace(&format!(r#""{CLIENT_SECRET}""#), "5"),
        good.replace(&format!(r#""{CLIENT_SECRET}""#), "null"),
        good.replace(ENTRA_TENANT, &format!("{ENTRA_TENANT}\\t")),
        good.replace(r#","user_filter":{"memberOf":["Telephony"]}"#, ""),
        good.replace(r#"{"memberOf":["Telephony"]}"#, "[]"),
        good[..good.len() - 1].to_owned(),
        "[1,2]".to_owned(),
    ];
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../browser/check-provider-settings.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running node (scripts/services-up installs it)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(json!(cases).to_string().as_bytes())
            .await
            .expect("writing the cases");
    }
    let output = child.wait_with_output().await.expect("node's output");
    assert!(output.status.success(), "the check script failed");
    let page: Vec<Vec<String>> = serde_json::from_slice(&output.stdout).expect("the page's fields as JSON");
    for (pasted, page_fields) in cases.iter().zip(&page) {
        let mut document: Value =
            serde_json::from_str(&support::tenant_file()).expect("the sample tenant file");
        document["provider_settings"] = json!(pasted);
        let core_fields: std::collections::BTreeSet<String> =
            match usersync_core::parse_tenant_file(&document.to_string()) {
                Ok(_) => Default::default(),
                Err(problems) => problems.into_iter().map(|p| p.field).collect(),
            };
        let page_fields: std::collections::BTreeSet<String> = page_fields.iter().cloned().collect();
        assert_eq!(
            page_fields, core_fields,
            "fields flagged for {pasted:?}: page against core"
        );
    }
}
