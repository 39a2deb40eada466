use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{tenant_body, tenant_path, TestSim, TENANT};

const USERS: &str = "/v1.0/users/delta";

async fn inject(sim: &TestSim, fault: Value) {
    sim.ok(Method::POST, &tenant_path("/faults"), Some(fault)).await;
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_fault_kind_is_served_once_in_order() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(3, json!({}))).await;
    let token = sim.token().await;

    inject(
        &sim,
        json!({"kind": "throttle", "retry_after": "2.128", "count": 2, "path_prefix": USERS}),
    )
    .await;
    inject(&sim, json!({"kind": "unavailable", "retry_after": "1"})).await;
    inject(&sim, json!({"kind": "gateway_timeout"})).await;
    inject(&sim, json!({"kind": "sync_state", "code": "syncStateNotFound"})).await;
    inject(&sim, json!({"kind": "gone"})).await;
    inject(&sim, json!({"kind": "drop"})).await;

    // A request outside the throttle's prefix skips it and takes the next fault.
    let groups = sim.graph(&token, "/v1.0/groups").await;
    assert_eq!(groups.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(groups.headers()["retry-after"], "1");

    for _ in 0..2 {
        let throttled = sim.graph(&token, USERS).await;
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()["retry-after"], "2.128");
        assert_eq!(error_code(throttled).await, "TooManyRequests");
    }
    let timeout = sim.graph(&token, USERS).await;
    assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(timeout.headers().get("retry-after").is_none());

    let sync_state = sim.graph(&token, USERS).await;
    assert_eq!(sync_state.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(sync_state).await, "syncStateNotFound");

    let gone = sim.graph(&token, "/v1.0/users/delta?$deltatoken=whatever").await;
    assert_eq!(gone.status(), StatusCode::GONE);
    assert_eq!(
        gone.headers()["location"],
        format!("{}{USERS}", sim.base).as_str()
    );

    let dropped = sim
        .http
        .get(format!("{}{USERS}", sim.base))
        .bearer_auth(&token)
        .send()
        .await;
    let error = dropped.expect_err("the connection closes without a response");
    assert!(error.is_request(), "{error:?}");

    assert_eq!(sim.graph(&token, USERS).await.status(), StatusCode::OK);

    let stats = sim.ok(Method::GET, &tenant_path("/stats"), None).await;
    assert_eq!(stats["faults_served"], 7);
    assert_eq!(stats["requests"]["users_delta"], 7);
    assert_eq!(stats["requests"]["groups"], 1);
}

#[tokio::test]
async fn token_endpoint_faults_and_fault_validation() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(0, json!({}))).await;
    let prefix = format!("/{TENANT}/oauth2");
    inject(
        &sim,
        json!({"kind": "throttle", "retry_after": null, "path_prefix": prefix}),
    )
    .await;
    let form = [("grant_type", "client_credentials")];
    let throttled = sim.token_response(TENANT, &form).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(throttled.headers().get("retry-after").is_none());
    sim.token().await;

    let (status, _) = sim
        .control(
            Method::POST,
            &tenant_path("/faults"),
            Some(json!({"kind": "throttle", "retry_after": "soon"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = sim
        .control(
            Method::POST,
            &tenant_path("/faults"),
            Some(json!({"kind": "meteor"})),
        )
        .await;
    assert!(status.is_client_error());
}

#[tokio::test]
async fn paging_quirks_empty_pages_disorder_and_repeats_lose_no_user() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(25, json!({"page_size": 10}))).await;
    let token = sim.token().await;
    let start = "/v1.0/users/delta?$select=displayName";
    let plain = sim.round(&token, start).await;

    inject(&sim, json!({"kind": "empty_page", "path_prefix": USERS})).await;
    inject(&sim, json!({"kind": "reorder", "count": 5, "path_prefix": USERS})).await;
    let quirky = sim.round(&token, start).await;

    assert!(quirky.pages[0]["value"].as_array().unwrap().is_empty());
    assert!(quirky.pages[0]["@odata.nextLink"]
        .as_str()
        .unwrap()
        .ends_with(start));
    let ids = |round: &super::Collected| {
        round
            .items()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (plain_ids, quirky_ids) = (ids(&plain), ids(&quirky));
    assert_eq!(
        quirky_ids.len(),
        plain_ids.len() + quirky.pages.len() - 1,
        "one repeat per page"
    );
    assert_ne!(quirky_ids[..plain_ids.len()], plain_ids[..], "the order differs");
    let distinct: std::collections::BTreeSet<_> = quirky_ids.iter().collect();
    assert_eq!(distinct, plain_ids.iter().collect());
}

#[tokio::test]
async fn clearing_the_faults_drops_those_not_yet_served() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(3, json!({}))).await;
    let token = sim.token().await;
    inject(
        &sim,
        json!({"kind": "throttle", "retry_after": "1", "count": 1000, "path_prefix": USERS}),
    )
    .await;
    assert_eq!(
        sim.graph(&token, USERS).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    sim.ok(Method::DELETE, &tenant_path("/faults"), None).await;
    assert_eq!(sim.graph(&token, USERS).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_answers_replace_or_break_the_real_page() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(6, json!({"page_size": 2}))).await;
    let token = sim.token().await;
    let start = "/v1.0/users/delta?$select=displayName";
    let real = sim.graph_json(&token, start).await;
    let real_next = real["@odata.nextLink"].as_str().unwrap().to_owned();

    inject(&sim, json!({"kind": "html_page", "path_prefix": USERS})).await;
    let html = sim.graph(&token, start).await;
    assert_eq!(html.status(), StatusCode::OK);
    assert!(html.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text().await.unwrap().starts_with("<html>"));

    inject(&sim, json!({"kind": "missing_value", "path_prefix": USERS})).await;
    let page = sim.graph_json(&token, start).await;
    assert!(page.get("value").is_none(), "{page}");
    assert!(page["@odata.nextLink"].as_str().unwrap().ends_with(start));

    inject(&sim, json!({"kind": "value_not_array", "path_prefix": USERS})).await;
    assert!(sim.graph_json(&token, start).await["value"].is_object());

    inject(&sim, json!({"kind": "item_without_id", "path_prefix": USERS})).await;
    let page = sim.graph_json(&token, start).await;
    let items = page["value"].as_array().unwrap();
    assert!(items[0].get("id").is_none(), "{page}");
    assert_eq!(items[1]["id"], real["value"][1]["id"]);

    inject(
        &sim,
        json!({"kind": "foreign_link", "origin": "http://127.0.0.1:9", "path_prefix": USERS}),
    )
    .await;
    let page = sim.graph_json(&token, start).await;
    let moved = page["@odata.nextLink"].as_str().unwrap();
    let path = &real_next[real_next.find("/v1.0/").unwrap()..];
    assert_eq!(moved, format!("http://127.0.0.1:9{path}"));
    assert_eq!(page["value"], real["value"]);

    inject(&sim, json!({"kind": "truncated", "path_prefix": USERS})).await;
    let cut = sim.graph(&token, start).await;
    assert_eq!(cut.status(), StatusCode::OK);
    let promised: usize = cut.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(promised > 0);
    assert!(
        cut.bytes().await.is_err(),
        "the body must end short of {promised} bytes"
    );

    // Every fault was used once: the next answer is the real page again.
    assert_eq!(sim.graph_json(&token, start).await["value"], real["value"]);
}
