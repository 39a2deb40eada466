//! A whole stack with usersync-api for tools that test the API from outside
//! (scripts/api-check runs schemathesis against it): seeds the simulators,
//! creates tenant `acme` through the API, prints `API_URL=…` and
//! `API_TOKEN=…` (an operator token) on standard output, then runs until
//! standard input closes.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;
use usersync_e2e::{wait_for, Stack};

#[tokio::main]
async fn main() {
    let mut stack = Stack::start("api_check").await;
    stack
        .graph_call(
            reqwest::Method::POST,
            "/_sim/tenants",
            Some(json!({
                "tenant_id": "5b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c4", "client_id": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
                "client_secret": "s3cret~value", "seed": 7, "users": 40,
                "groups": [{"name": "Telephony", "members": 20}], "page_size": 20
            })),
        )
        .await;
    stack
        .pbx_call(
            reqwest::Method::PUT,
            "/_sim/companies/acme",
            Some(json!({
                "templates": [{"id": "standard", "name": "Standard"}],
                "numbers": [{"number": "46812345600", "kind": "main"}]
            })),
        )
        .await;
    // A rate high enough for a property-based tester's burst.
    let api = stack
        .start_api_with(&[("API_RATE_PER_MINUTE", "100000"), ("API_RATE_BURST", "10000")])
        .await;
    let provider = json!({
        "tenant_id": "5b0c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c4", "client_id": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
        "client_secret": "s3cret~value", "user_filter": {"memberOf": ["Telephony"]}
    });
    let file = json!({
        "name": "Acme AB", "type": "ad_sync", "mode": "user_sync", "welcome_mail": false,
        "delete_after_days": 0, "provider_settings": provider.to_string(), "pbx_company_id": "acme",
        "default_caller_id": "46812345600", "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"}
    });
    let created = stack
        .http
        .put(format!("{}/v1/tenants/acme", api.url))
        .bearer_auth(&api.token)
        .json(&file)
        .send()
        .await
        .expect("creating the tenant");
    assert!(
        created.status().is_success(),
        "creating acme: {}",
        created.status()
    );
    // One finished sync, so runs, fields and users have something to show.
    let (ok, _, stderr) = stack
        .cli(&["resync", "acme", "--wait", "--timeout", "120"], None)
        .await;
    assert!(ok, "the first sync: {stderr}");
    wait_for("the API to answer", Duration::from_secs(10), || async {
        stack
            .http
            .get(format!("{}/healthz", api.url))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    println!("API_URL={}", api.url);
    println!("API_TOKEN={}", api.token);
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
}
