//! Fixtures shared by the end-to-end tests: a sample directory, PBX company and tenant.

use std::{collections::BTreeMap, time::Duration};

use reqwest::Method;
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Stack};

pub const ENTRA_TENANT: &str = "5b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c4";
pub const CLIENT_ID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
pub const CLIENT_SECRET: &str = "s3cret~value";
pub const CALLER_ID: &str = "46812345600";

pub fn tenant_file() -> String {
    tenant_file_with(CLIENT_SECRET)
}

/// The sample tenant file with another client secret.
pub fn tenant_file_with(client_secret: &str) -> String {
    let provider = json!({
        "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": client_secret,
        "user_filter": {"memberOf": ["Telephony"]}
    });
    json!({
        "id": "acme",
        "name": "Acme AB",
        "type": "ad_sync",
        "mode": "user_sync",
        "welcome_mail": true,
        "welcome_mail_copy_to": "pbx-admin@acme.example",
        "delete_after_days": 0,
        "error_notification_email": "it@acme.example",
        "error_notification_level": "warning",
        // As pasted into the portal's box: JSON in a string.
        "provider_settings": provider.to_string(),
        "pbx_company_id": "acme",
        "default_caller_id": CALLER_ID,
        "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail", "attributes.title": "jobTitle"},
        "schedule": {"at": "02:00", "timezone": "Europe/Stockholm"}
    })
    .to_string()
}

pub async fn seed(stack: &Stack) -> Value {
    seed_sized(stack, 200, 120).await
}

/// The sample directory with `users` users, `members` of them in Telephony, and the PBX company.
pub async fn seed_sized(stack: &Stack, users: u64, members: u64) -> Value {
    stack
        .graph_call(
            Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "seed": 7, "users": users, "groups": [{"name": "Telephony", "members": members}], "page_size": 60
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
        .await
}

/// Applies a tenant file with `usersync tenant apply`; fails the test when it is refused.
pub async fn apply(stack: &Stack, file: &str) {
    let (ok, _, stderr) = stack.cli(&["tenant", "apply", "-"], Some(file)).await;
    assert!(ok, "tenant apply failed: {stderr}");
}

pub async fn pbx_users(stack: &Stack) -> BTreeMap<String, Value> {
    let users = stack
        .pbx_call(Method::GET, "/_sim/companies/acme/users", None)
        .await;
    users["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| {
            (
                u["external_id"].as_str().expect("external_id set").to_owned(),
                u.clone(),
            )
        })
        .collect()
}

pub async fn graph_users(stack: &Stack) -> BTreeMap<String, Value> {
    let users = stack
        .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/users"), None)
        .await;
    users["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|u| (u["id"].as_str().expect("id").to_owned(), u.clone()))
        .collect()
}

pub async fn telephony_members(stack: &Stack) -> (String, Vec<String>) {
    let groups = stack
        .graph_call(Method::GET, &format!("/_sim/tenants/{ENTRA_TENANT}/groups"), None)
        .await;
    let group = groups["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|g| g["name"] == "Telephony")
        .expect("the Telephony group")
        .clone();
    let members = group["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("member id").to_owned())
        .collect();
    (group["id"].as_str().expect("id").to_owned(), members)
}

/// Waits until the tenant's newest run other than `previous` has finished; returns its status line.
pub async fn finished_run(stack: &Stack, previous: Option<&str>) -> Value {
    wait_for("the run to finish", Duration::from_secs(120), || async {
        let status = stack.cli_json(&["status", "acme", "--json"]).await;
        let run = status[0]["last_run"].clone();
        let is_new = run["id"].as_str().is_some_and(|id| Some(id) != previous);
        (is_new && !run["finished_at"].is_null()).then(|| status[0].clone())
    })
    .await;
    // `status` reads the tenant before its last run: the read that saw the run
    // finish may have seen the tenant just before; this one sees both after.
    stack.cli_json(&["status", "acme", "--json"]).await[0].clone()
}

pub async fn write_counts(stack: &Stack) -> Value {
    let stats = stack.pbx_call(Method::GET, "/_sim/stats", None).await;
    stats["companies"]["acme"].clone()
}

pub fn recipients(mails: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for mail in mails {
        let to = mail
            .lines()
            .find_map(|line| line.strip_prefix("To: "))
            .unwrap_or("?")
            .trim()
            .to_owned();
        *counts.entry(to).or_insert(0) += 1;
    }
    counts
}

/// How many times a line containing `needle` was logged by a service's replicas.
pub fn logged(stack: &Stack, service: &str, needle: &str) -> usize {
    std::fs::read_dir(&stack.logs)
        .expect("the log folder")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(service))
        .map(|entry| {
            std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}
