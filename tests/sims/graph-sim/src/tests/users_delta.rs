use std::collections::{HashMap, HashSet};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{tenant_body, tenant_path, TestSim};
use crate::seed::COST_CENTER_EXTENSION;

fn by_id(items: Vec<Value>) -> HashMap<String, Value> {
    items
        .into_iter()
        .map(|item| (item["id"].as_str().unwrap().to_owned(), item))
        .collect()
}

async fn user_ids(sim: &TestSim) -> Vec<String> {
    let users = sim.ok(Method::GET, &tenant_path("/users"), None).await;
    let users = users["value"].as_array().unwrap();
    users
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn full_round_pages_every_user_then_hands_out_a_delta_link() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(250, json!({"page_size": 40})))
        .await;
    let token = sim.token().await;
    let select = format!("displayName,accountEnabled,onPremisesExtensionAttributes,{COST_CENTER_EXTENSION}");
    let round = sim
        .round(&token, &format!("/v1.0/users/delta?$select={select}"))
        .await;

    let sizes: Vec<usize> = round
        .pages
        .iter()
        .map(|p| p["value"].as_array().unwrap().len())
        .collect();
    assert!(sizes.len() > 5, "{sizes:?}");
    let (last, full_pages) = sizes.split_last().unwrap();
    assert!(full_pages.iter().all(|s| (20..=40).contains(s)), "{sizes:?}");
    assert!(sizes.iter().any(|s| *s != sizes[0]), "page size never varies");
    assert!(*last > 0, "the last page carries data");
    assert!(round.delta_link.contains("$deltatoken="));

    let items = round.items();
    let ids: HashSet<&str> = items.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 250);
    let expected: HashSet<&str> = [
        "id",
        "displayName",
        "accountEnabled",
        "onPremisesExtensionAttributes",
        COST_CENTER_EXTENSION,
    ]
    .into();
    for user in &items {
        let keys: HashSet<&str> = user.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, expected, "select is kept across nextLinks");
    }
    assert_eq!(
        items[0]["onPremisesExtensionAttributes"]
            .as_object()
            .unwrap()
            .len(),
        15
    );
}

#[tokio::test]
async fn delta_round_returns_exactly_the_changes() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(30, json!({"page_size": 7}))).await;
    let ids = user_ids(&sim).await;
    let token = sim.token().await;
    let select = "displayName,jobTitle,mobilePhone,accountEnabled";
    let first = sim
        .round(&token, &format!("/v1.0/users/delta?$select={select}"))
        .await;

    let (updated, soft, hard, unselected) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let patch = json!({"jobTitle": "Night Operator", "mobilePhone": null});
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{updated}")),
        Some(patch),
    )
    .await;
    let new_user = json!({"displayName": "Zoë Ström", "jobTitle": "Agent", "accountEnabled": false});
    let created = sim.ok(Method::POST, &tenant_path("/users"), Some(new_user)).await;
    let created_id = created["id"].as_str().unwrap();
    sim.ok(Method::DELETE, &tenant_path(&format!("/users/{soft}")), None)
        .await;
    sim.ok(
        Method::DELETE,
        &tenant_path(&format!("/users/{hard}?hard=true")),
        None,
    )
    .await;
    let dept = json!({"department": "Elsewhere"});
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{unselected}")),
        Some(dept),
    )
    .await;

    let second = sim.round(&token, &first.delta_link).await;
    let changes = by_id(second.items());
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert_eq!(
        changes[updated],
        json!({"id": updated, "jobTitle": "Night Operator", "mobilePhone": null})
    );
    assert_eq!(
        changes[created_id],
        json!({"id": created_id, "displayName": "Zoë Ström", "jobTitle": "Agent", "mobilePhone": null, "accountEnabled": false})
    );
    assert_eq!(
        changes[soft],
        json!({"id": soft, "@removed": {"reason": "changed"}})
    );
    assert_eq!(
        changes[hard],
        json!({"id": hard, "@removed": {"reason": "deleted"}})
    );

    let quiet = sim.round(&token, &second.delta_link).await;
    assert!(quiet.items().is_empty());

    sim.ok(
        Method::POST,
        &tenant_path(&format!("/users/{soft}/restore")),
        None,
    )
    .await;
    let restored = sim.round(&token, &quiet.delta_link).await.items();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["id"], json!(soft));
    assert!(
        restored[0]["displayName"].is_string(),
        "a restored user comes whole"
    );
}

#[tokio::test]
async fn latest_token_starts_tracking_from_now() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(10, json!({}))).await;
    let ids = user_ids(&sim).await;
    let token = sim.token().await;
    let latest = sim.round(&token, "/v1.0/users/delta?$deltatoken=latest").await;
    assert_eq!(latest.pages.len(), 1);
    assert!(latest.items().is_empty());

    let patch = json!({"displayName": "Björn Öberg"});
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{}", ids[4])),
        Some(patch),
    )
    .await;
    let changes = sim.round(&token, &latest.delta_link).await.items();
    assert_eq!(changes, vec![json!({"id": ids[4], "displayName": "Björn Öberg"})]);
}

#[tokio::test]
async fn id_filter_limits_rounds_and_other_filters_are_refused() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(20, json!({"page_size": 1}))).await;
    let ids = user_ids(&sim).await;
    let token = sim.token().await;
    let filter = format!("id eq '{}' or id eq '{}'", ids[3], ids[9]);
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1.0/users/delta", sim.base),
        [("$filter", filter.as_str()), ("$select", "displayName")],
    )
    .unwrap();
    let round = sim.round(&token, url.as_str()).await;
    let found: HashSet<String> = by_id(round.items()).into_keys().collect();
    assert_eq!(found, HashSet::from([ids[3].clone(), ids[9].clone()]));

    for id in [&ids[3], &ids[5]] {
        let patch = json!({"displayName": "Changed"});
        sim.ok(Method::PATCH, &tenant_path(&format!("/users/{id}")), Some(patch))
            .await;
    }
    let changes = sim.round(&token, &round.delta_link).await.items();
    assert_eq!(changes, vec![json!({"id": ids[3], "displayName": "Changed"})]);

    let response = sim
        .graph(&token, "/v1.0/users/delta?$filter=accountEnabled%20eq%20true")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Request_UnsupportedQuery");
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn unknown_select_property_is_a_bad_request() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(1, json!({}))).await;
    let token = sim.token().await;
    let response = sim
        .graph(&token, "/v1.0/users/delta?$select=displayName,shoeSize")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expired_tokens_answer_in_the_configured_style() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(5, json!({"expiry_style": "gone"})))
        .await;
    let token = sim.token().await;
    let round = sim.round(&token, "/v1.0/users/delta?$select=displayName").await;

    sim.ok(Method::POST, &tenant_path("/expire-delta-tokens"), None)
        .await;
    let response = sim.graph(&token, &round.delta_link).await;
    assert_eq!(response.status(), StatusCode::GONE);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("{}/v1.0/users/delta?$select=displayName", sim.base)
    );
    let restarted = sim.round(&token, &location).await;
    assert_eq!(restarted.items().len(), 5);

    let style = json!({"expiry_style": "syncStateNotFound"});
    sim.ok(Method::PATCH, &tenant_path(""), Some(style)).await;
    let week_and_a_day = json!({"seconds": 8 * 24 * 3600});
    sim.ok(Method::POST, &tenant_path("/advance-clock"), Some(week_and_a_day))
        .await;
    let response = sim.graph(&token, &restarted.delta_link).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "syncStateNotFound");

    let garbage = sim.graph(&token, "/v1.0/users/delta?$deltatoken=bogus").await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_replaced_tenant_refuses_old_links_and_access_tokens() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(3, json!({"expiry_style": "resyncRequired"})))
        .await;
    let old_token = sim.token().await;
    let round = sim.round(&old_token, "/v1.0/users/delta").await;
    sim.create_tenant(tenant_body(3, json!({"expiry_style": "resyncRequired"})))
        .await;
    let stale = sim.graph(&old_token, "/v1.0/users/delta").await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let token = sim.token().await;
    let response = sim.graph(&token, &round.delta_link).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resyncRequired");
}
