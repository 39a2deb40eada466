//! What an operator sees: refusals that name the problem, masked secrets, and a
//! run that fails with a reason that says what to do.

use std::time::Duration;

use serde_json::Value;
use usersync_e2e::{wait_for, Stack};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_tenant_file_is_refused_whole_and_a_valid_one_is_shown_masked() {
    let stack = Stack::start("operator").await;

    let mut broken: Value = serde_json::from_str(&tenant_file()).unwrap();
    broken["mode"] = "sync_everything".into();
    broken["delete_after_days"] = (-1).into();
    broken["default_caller_id"] = "0812345600".into();
    broken["field_mapping"]["surname"] = "surname[".into();
    let (ok, _, stderr) = stack
        .cli(&["tenant", "apply", "-"], Some(&broken.to_string()))
        .await;
    assert!(!ok, "an invalid file must fail");
    for field in [
        "mode",
        "delete_after_days",
        "default_caller_id",
        "field_mapping.surname",
    ] {
        assert!(
            stderr.lines().any(|line| line.starts_with(&format!("{field}:"))),
            "no line names {field}:\n{stderr}"
        );
    }
    assert!(stderr.contains("nothing was saved"), "{stderr}");
    let tenants = stack.cli_json(&["tenant", "list", "--json"]).await;
    assert_eq!(tenants, Value::Array(vec![]), "nothing may be saved");

    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "{stderr}");
    let (ok, shown, stderr) = stack.cli(&["tenant", "show", "acme"], None).await;
    assert!(ok, "{stderr}");
    assert!(!shown.contains(CLIENT_SECRET), "the secret leaked: {shown}");
    let shown: Value = serde_json::from_str(&shown).expect("tenant show prints JSON");
    assert_eq!(shown["provider_settings"]["client_secret"], "********");
    assert_eq!(
        shown["provider_settings"]["user_filter"]["memberOf"][0],
        "Telephony"
    );

    let (ok, _, stderr) = stack.cli(&["resync", "nobody"], None).await;
    assert!(!ok);
    assert!(stderr.contains("no tenant \"nobody\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_fails_the_run_with_what_to_do_and_mails_the_error_address() {
    let stack = Stack::start("badsecret").await;
    seed(&stack).await;
    let (ok, _, stderr) = stack
        .cli(
            &["tenant", "apply", "-"],
            Some(&tenant_file_with("not-the-secret")),
        )
        .await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "{stderr}");

    let status = finished_run(&stack, None).await;
    let run = &status["last_run"];
    assert_eq!(run["state"], "failed", "{status:#}");
    let error = run["error"].as_str().expect("a failed run has a reason");
    assert!(error.contains("7000215"), "{error}");
    assert!(error.contains("provider_settings.client_secret"), "{error}");
    assert!(!error.contains("not-the-secret"), "the secret leaked: {error}");
    assert!(status["last_success_at"].is_null(), "a failed run is no success");
    assert!(pbx_users(&stack).await.is_empty());

    let report = wait_for("the error report", Duration::from_secs(30), || async {
        stack
            .mails()
            .into_iter()
            .find(|mail| mail.contains("To: it@acme.example"))
    })
    .await;
    assert!(
        report.contains("7000215"),
        "the report carries the reason: {report}"
    );
}
