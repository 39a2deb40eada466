//! The whole pipeline over real RabbitMQ, PostgreSQL and SMTP, with the four
//! services as separate processes against the Graph and PBX simulators.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use usersync_e2e::{wait_for, Stack};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_tenant_syncs_and_then_follows_three_changes() {
    let stack = Stack::start("pipeline").await;
    seed(&stack).await;
    let (ok, stdout, stderr) = stack.cli(&["tenant", "apply", "-"], Some(&tenant_file())).await;
    assert!(ok, "tenant apply failed: {stderr}");
    assert!(stdout.contains("acme created"), "{stdout}");

    // First sync: exactly the 120 members of Telephony.
    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "resync failed: {stderr}");
    let status = finished_run(&stack, None).await;
    let run = &status["last_run"];
    assert_eq!(run["state"], "succeeded", "{status:#}");
    assert_eq!(run["counts"]["created"], 120, "{status:#}");
    assert_eq!(run["counts"]["failed"], 0, "{status:#}");
    assert!(!status["last_success_at"].is_null());

    let directory = graph_users(&stack).await;
    let (group_id, members) = telephony_members(&stack).await;
    assert_eq!(members.len(), 120);
    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 120);
    for id in &members {
        let user = pbx
            .get(id)
            .unwrap_or_else(|| panic!("member {id} missing from the PBX"));
        let source = &directory[id];
        let nickname = source["mailNickname"].as_str().unwrap();
        assert_eq!(user["alias"], nickname.to_lowercase(), "{user}");
        assert_eq!(user["first_name"], source["givenName"]);
        assert_eq!(user["surname"], source["surname"]);
        assert_eq!(user["email"], source["mail"]);
        assert_eq!(user["attributes"]["title"], source["jobTitle"]);
        assert_eq!(user["caller_id"], CALLER_ID);
        assert_eq!(user["template"], "standard");
        let number = user["pstn_fixed"].as_str().unwrap();
        assert!(
            number.starts_with("468") && number.chars().all(|c| c.is_ascii_digit()),
            "{number}"
        );
    }

    // Welcome mails to each user, and a separate copy to the admin address.
    let mails = wait_for("240 mails", Duration::from_secs(60), || async {
        let mails = stack.mails();
        (mails.len() >= 240).then_some(mails)
    })
    .await;
    let to = recipients(&mails);
    assert_eq!(to.get("pbx-admin@acme.example"), Some(&120), "{to:?}");
    let welcomed: usize = members
        .iter()
        .map(|id| {
            to.get(directory[id]["mail"].as_str().unwrap())
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(welcomed, 120, "{to:?}");
    assert!(
        !to.contains_key("it@acme.example"),
        "a clean run sends no report at level warning"
    );

    // Three changes in the directory.
    let renamed = &members[0];
    let deleted = &members[1];
    stack
        .graph_call(
            Method::PATCH,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users/{renamed}"),
            Some(json!({"surname": "Lindqvist-Berg"})),
        )
        .await;
    stack
        .graph_call(
            Method::DELETE,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users/{deleted}?hard=true"),
            None,
        )
        .await;
    let created = stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/users"),
            Some(json!({
                "displayName": "Åsa Öberg", "givenName": "Åsa", "surname": "Öberg",
                "mailNickname": "asa.oberg", "userPrincipalName": "asa.oberg@acme.example",
                "mail": "asa.oberg@acme.example", "businessPhones": ["08-555 123 45"],
                "jobTitle": "Telefonist", "accountEnabled": true, "preferredLanguage": "sv-SE"
            })),
        )
        .await;
    let created_id = created["id"].as_str().expect("new user id").to_owned();
    stack
        .graph_call(
            Method::POST,
            &format!("/_sim/tenants/{ENTRA_TENANT}/groups/{group_id}/members"),
            Some(json!({"id": created_id})),
        )
        .await;
    stack.pbx_call(Method::POST, "/_sim/stats/reset", None).await;

    let (ok, _, stderr) = stack.cli(&["resync", "acme"], None).await;
    assert!(ok, "resync failed: {stderr}");
    let previous = run["id"].as_str().map(str::to_owned);
    let status = finished_run(&stack, previous.as_deref()).await;
    let run = &status["last_run"];
    assert_eq!(run["state"], "succeeded", "{status:#}");
    assert_eq!(run["counts"]["created"], 1, "{status:#}");
    assert_eq!(run["counts"]["updated"], 1, "{status:#}");
    assert_eq!(run["counts"]["deleted"], 1, "{status:#}");

    let pbx = pbx_users(&stack).await;
    assert_eq!(pbx.len(), 120);
    assert_eq!(pbx[renamed]["surname"], "Lindqvist-Berg");
    assert!(!pbx.contains_key(deleted), "the deleted user is still in the PBX");
    let newcomer = &pbx[&created_id];
    assert_eq!(newcomer["alias"], "asa.oberg");
    assert_eq!(newcomer["pstn_fixed"], "46855512345");
    let writes = write_counts(&stack).await;
    assert_eq!(
        writes["writes"], 3,
        "exactly three PBX writes for three changes: {writes}"
    );

    // The newcomer's welcome mail is in Swedish.
    let welcome = wait_for("the newcomer's welcome mail", Duration::from_secs(30), || async {
        stack
            .mails()
            .into_iter()
            .find(|m| m.contains("To: asa.oberg@acme.example"))
    })
    .await;
    assert!(
        welcome.contains("Subject: =?utf-8?") || welcome.contains("Subject: =?UTF-8?"),
        "{welcome}"
    );
}
