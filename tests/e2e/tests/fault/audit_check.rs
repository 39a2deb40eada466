//! The audit itself: it must see a user created once too often, a lost PBX
//! user and a mail received twice, or the suite's passes mean nothing.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use usersync_e2e::PBX_TOKEN;

use crate::case::Case;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_catches_an_extra_create_a_loss_and_a_mail_twice() {
    let mut case = Case::start_sized("audit_check", false, (150, 100)).await;
    // Not a fault case: no record in target/fault-results, whatever happens.
    case.no_record();
    case.resync().await;
    let removed = case.second_run().await;
    let stack = &case.stack;
    let clean = case.audit(&removed, Duration::from_secs(60)).await;
    assert!(clean.passed(), "a clean sync fails the audit: {clean:#?}");

    let users = stack
        .pbx_call(Method::GET, "/_sim/companies/acme/users", None)
        .await;
    let users = users["items"].as_array().expect("items");
    // One more create through the API, as a double create would be (the sim
    // refuses a second user with the same external id).
    let response = stack
        .http
        .post(format!("{}/v1/companies/acme/users", stack.pbx.url))
        .bearer_auth(PBX_TOKEN)
        .header("Idempotency-Key", "audit-check-twin")
        .json(&json!({
            "alias": "audit.twin", "first_name": "Audit", "surname": "Twin",
            "pstn_fixed": "46855500001", "external_id": "audit-check-twin"
        }))
        .send()
        .await
        .expect("creating a PBX user");
    assert!(response.status().is_success(), "{}", response.status());
    // The first one deleted behind usersync's back.
    // The second one deleted behind usersync's back.
    let lost = &users[0];
    let response = stack
        .http
        .delete(format!(
            "{}/v1/companies/acme/users/{}",
            stack.pbx.url,
            lost["id"].as_str().expect("id")
        ))
        .bearer_auth(PBX_TOKEN)
        .send()
        .await
        .expect("deleting a PBX user");
    assert!(response.status().is_success(), "{}", response.status());
    // A welcome mail delivered twice.
    let new = stack.maildir.join("new");
    let first = std::fs::read_dir(&new)
        .expect("the Maildir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| std::fs::read_to_string(path).is_ok_and(|mail| mail.contains("Message-ID: <welcome.")))
        .expect("a welcome mail");
    std::fs::copy(&first, new.join("audit-check-copy")).expect("copying a mail");

    let report = case.audit(&removed, Duration::from_secs(5)).await;
    assert!(!report.passed(), "{report:#?}");
    assert_eq!(report.extra_creates, 1, "{report:#?}");
    assert_eq!(report.not_deleted, 1, "the stray user: {report:#?}");
    assert_eq!(report.user_losses, 1, "{report:#?}");
    assert_eq!(report.mail_duplicates, 1, "{report:#?}");
    assert_eq!((report.duplicates(), report.losses()), (2, 1), "{report:#?}");
}
