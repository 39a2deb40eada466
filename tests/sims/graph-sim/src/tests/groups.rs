use std::collections::{BTreeSet, HashMap};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{tenant_body, tenant_path, TestSim};
use crate::seed::{guid, IdStream};

const MEMBERS_PATH: &str = "transitiveMembers/microsoft.graph.user";

async fn members_page(sim: &TestSim, token: &str, url: &str) -> reqwest::Response {
    sim.http
        .get(url)
        .bearer_auth(token)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn transitive_members_include_nested_groups_once() {
    let sim = TestSim::start().await;
    let groups = json!([{"name": "Outer", "members": 3}, {"name": "Inner", "members": 6}]);
    let body = tenant_body(20, json!({"groups": groups, "page_size": 4}));
    let created = sim.create_tenant(body).await;
    let outer = created["groups"][0]["id"].as_str().unwrap().to_owned();
    let inner = created["groups"][1]["id"].as_str().unwrap().to_owned();
    sim.ok(
        Method::POST,
        &tenant_path(&format!("/groups/{outer}/members")),
        Some(json!({"id": inner})),
    )
    .await;
    let token = sim.token().await;

    let mut url = format!(
        "{}/v1.0/groups/{outer}/{MEMBERS_PATH}?$count=true&$select=displayName",
        sim.base
    );
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    loop {
        let response = members_page(&sim, &token, &url).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        for user in page["value"].as_array().unwrap() {
            assert!(user["displayName"].is_string());
            ids.push(user["id"].as_str().unwrap().to_owned());
        }
        let next = page["@odata.nextLink"].as_str().map(str::to_owned);
        pages.push(page);
        match next {
            Some(next) => url = next,
            None => break,
        }
    }
    let expected: BTreeSet<String> = (0..6).map(|i| guid(42, IdStream::User, i)).collect();
    assert_eq!(ids.len(), 6, "no duplicates");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0]["@odata.count"], json!(6));
    assert!(pages[1].get("@odata.count").is_none());

    let gone = guid(42, IdStream::User, 5);
    sim.ok(Method::DELETE, &tenant_path(&format!("/users/{gone}")), None)
        .await;
    let first = format!("{}/v1.0/groups/{outer}/{MEMBERS_PATH}?$count=true", sim.base);
    let page: Value = members_page(&sim, &token, &first).await.json().await.unwrap();
    assert_eq!(
        page["@odata.count"],
        json!(5),
        "soft-deleted users are not members"
    );
}

#[tokio::test]
async fn transitive_members_insist_on_advanced_query_options() {
    let sim = TestSim::start().await;
    let created = sim
        .create_tenant(tenant_body(2, json!({"groups": [{"name": "G", "members": 2}]})))
        .await;
    let group = created["groups"][0]["id"].as_str().unwrap();
    let token = sim.token().await;
    let without_header = sim
        .graph(
            &token,
            &format!("/v1.0/groups/{group}/{MEMBERS_PATH}?$count=true"),
        )
        .await;
    assert_eq!(without_header.status(), StatusCode::BAD_REQUEST);
    let url = format!("{}/v1.0/groups/{group}/{MEMBERS_PATH}", sim.base);
    let without_count = members_page(&sim, &token, &url).await;
    assert_eq!(without_count.status(), StatusCode::BAD_REQUEST);
    let body: Value = without_count.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Request_BadRequest");
    let unknown = format!("{}/v1.0/groups/nope/{MEMBERS_PATH}?$count=true", sim.base);
    assert_eq!(
        members_page(&sim, &token, &unknown).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn group_filter_unescapes_quotes_and_returns_every_match() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(0, json!({}))).await;
    for name in ["O'Brien's team", "Sales", "O'Brien's team"] {
        sim.ok(Method::POST, &tenant_path("/groups"), Some(json!({"name": name})))
            .await;
    }
    let token = sim.token().await;
    let search = |name: &str| {
        let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
        reqwest::Url::parse_with_params(&format!("{}/v1.0/groups", sim.base), [("$filter", filter)]).unwrap()
    };
    let found = sim.graph_json(&token, search("O'Brien's team").as_str()).await;
    let found = found["value"].as_array().unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|g| g["displayName"] == "O'Brien's team"));
    assert_ne!(found[0]["id"], found[1]["id"]);

    let none = sim.graph_json(&token, search("Nobody").as_str()).await;
    assert_eq!(none["value"], json!([]));

    let bad = sim
        .graph(&token, "/v1.0/groups?$filter=startswith(displayName,'S')")
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// Merges the `members@delta` entries of every group object, by group.
fn members_by_group(items: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut merged: HashMap<String, Vec<Value>> = HashMap::new();
    for group in items {
        let id = group["id"].as_str().unwrap().to_owned();
        let entries = group["members@delta"].as_array().cloned().unwrap_or_default();
        merged.entry(id).or_default().extend(entries);
    }
    merged
}

#[tokio::test]
async fn groups_delta_splits_large_groups_and_then_reports_membership_changes() {
    let sim = TestSim::start().await;
    let groups = json!([{"name": "Telephony", "members": 25}, {"name": "Small", "members": 2}]);
    let created = sim
        .create_tenant(tenant_body(30, json!({"groups": groups, "page_size": 10})))
        .await;
    let telephony = created["groups"][0]["id"].as_str().unwrap().to_owned();
    let token = sim.token().await;

    let first = sim
        .round(&token, "/v1.0/groups/delta?$select=displayName,members")
        .await;
    let items = first.items();
    let appearances = items.iter().filter(|g| g["id"] == json!(telephony)).count();
    assert!(appearances > 1, "a 25-member group spans pages of at most 10");
    let merged = members_by_group(&items);
    assert_eq!(merged[&telephony].len(), 25);
    assert!(merged[&telephony]
        .iter()
        .all(|m| m["@odata.type"] == "#microsoft.graph.user"));
    assert_eq!(merged.len(), 2);

    let leaver = guid(42, IdStream::User, 0);
    let deleted = guid(42, IdStream::User, 3);
    let joiner = guid(42, IdStream::User, 29);
    let members = tenant_path(&format!("/groups/{telephony}/members"));
    sim.ok(Method::DELETE, &format!("{members}/{leaver}"), None).await;
    sim.ok(Method::POST, &members, Some(json!({"id": joiner}))).await;
    sim.ok(Method::DELETE, &tenant_path(&format!("/users/{deleted}")), None)
        .await;

    let second = sim.round(&token, &first.delta_link).await;
    let merged = members_by_group(&second.items());
    let removed = json!({"reason": "deleted"});
    let mut entries = merged[&telephony].clone();
    entries.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
    let mut expected = vec![
        json!({"@odata.type": "#microsoft.graph.user", "id": leaver, "@removed": removed}),
        json!({"@odata.type": "#microsoft.graph.user", "id": deleted, "@removed": removed}),
        json!({"@odata.type": "#microsoft.graph.user", "id": joiner}),
    ];
    expected.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
    assert_eq!(entries, expected);
    assert_eq!(merged.len(), 1, "the untouched group is not reported");
}
