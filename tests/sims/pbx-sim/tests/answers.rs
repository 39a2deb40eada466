//! Faults that spoil the answer rather than refuse the request: an HTML page
//! with a success status, a body cut mid-way, JSON missing a field or with
//! one of the wrong type, and statuses the contract does not list.

mod common;

use common::{user_body, Sim};
use reqwest::{redirect, Client, Method, StatusCode};
use serde_json::{json, Value};

/// A POST with an Idempotency-Key, as the applier sends it.
async fn post(sim: &Sim, key: &str, n: u32) -> reqwest::Result<reqwest::Response> {
    sim.v1(Method::POST, "/users")
        .header("Idempotency-Key", key)
        .json(&user_body(n))
        .send()
        .await
}

#[tokio::test]
async fn html_after_a_post_creates_the_user_and_a_repeat_of_the_key_gets_its_json() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "html", "after": true, "method": "POST"}))
        .await;
    let spoilt = post(&sim, "k-1", 1).await.expect("an answer");
    assert_eq!(
        spoilt.status(),
        StatusCode::CREATED,
        "the handler's status is kept"
    );
    assert!(spoilt.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = spoilt.text().await.expect("text");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_eq!(sim.all_users().await.len(), 1, "the write happened");

    let replay = post(&sim, "k-1", 1).await.expect("an answer");
    assert_eq!(replay.status(), StatusCode::CREATED);
    let user: Value = replay.json().await.expect("the real answer is JSON");
    assert_eq!(sim.all_users().await, vec![user]);
    assert_eq!(sim.stats().await["idempotent_replays"], 1);
}

#[tokio::test]
async fn html_in_place_of_a_read_is_a_200_page_and_nothing_is_handled() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "html", "count": 2, "method": "GET"}))
        .await;
    for path in ["/templates", "/users?limit=10"] {
        let page = sim.v1(Method::GET, path).send().await.expect("an answer");
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert!(page.text().await.unwrap().contains("Session expired"), "{path}");
    }
    // Not before the request: a POST in place would not be written.
    sim.add_fault(json!({"kind": "html", "method": "POST"})).await;
    let page = post(&sim, "k-2", 2).await.expect("an answer");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(sim.all_users().await.is_empty());
    let templates = sim.v1(Method::GET, "/templates").send().await.unwrap();
    let templates: Value = templates.json().await.expect("JSON again once used up");
    assert_eq!(templates["items"][0]["id"], "standard");
}

#[tokio::test]
async fn truncate_sends_half_the_body_then_cuts_the_connection() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "truncate", "method": "POST"})).await;
    let response = post(&sim, "k-3", 3).await.expect("the headers arrive");
    assert_eq!(response.status(), StatusCode::CREATED);
    let announced = response.content_length().expect("the whole length is announced");
    let body = response.bytes().await;
    assert!(body.is_err(), "reading the body must fail, got {body:?}");
    assert!(announced > 100, "{announced}");
    assert_eq!(sim.all_users().await.len(), 1, "the write happened");
}

#[tokio::test]
async fn reshape_removes_or_retypes_a_top_level_field() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "reshape", "field": "id", "method": "POST"}))
        .await;
    sim.add_fault(json!({"kind": "reshape", "field": "version", "value": "one", "method": "POST"}))
        .await;
    sim.add_fault(json!({"kind": "reshape", "field": "items", "method": "GET"}))
        .await;
    let without_id: Value = post(&sim, "k-4", 4).await.unwrap().json().await.unwrap();
    assert!(
        without_id.get("id").is_none() && without_id["alias"] == "user.4",
        "{without_id}"
    );
    let retyped: Value = post(&sim, "k-5", 5).await.unwrap().json().await.unwrap();
    assert_eq!(retyped["version"], "one");
    let list: Value = sim
        .v1(Method::GET, "/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({"next_cursor": null}));
    assert_eq!(sim.all_users().await.len(), 2, "both writes happened");
}

#[tokio::test]
async fn unlisted_statuses_are_answered_without_handling_the_request() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "unlisted", "status": 418, "method": "POST"}))
        .await;
    sim.add_fault(json!({
        "kind": "unlisted", "status": 302, "method": "GET",
        "location": "http://elsewhere.invalid/login"
    }))
    .await;
    let teapot = post(&sim, "k-6", 6).await.unwrap();
    assert_eq!(teapot.status(), StatusCode::IM_A_TEAPOT);
    assert!(sim.all_users().await.is_empty(), "nothing was handled");
    let client = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let moved = client
        .get(format!("{}/v1/companies/acme/users", sim.base))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::FOUND);
    assert_eq!(moved.headers()["location"], "http://elsewhere.invalid/login");
}

#[tokio::test]
async fn spoiling_faults_with_bad_settings_are_refused() {
    let sim = Sim::start().await;
    for fault in [
        json!({"kind": "unlisted", "status": 100}),
        json!({"kind": "unlisted", "status": 600}),
        json!({"kind": "reshape", "field": ""}),
        json!({"kind": "html", "count": 0}),
        json!({"kind": "truncate", "bytes": 3}),
    ] {
        let response = sim
            .control(Method::POST, "/companies/acme/faults")
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{fault}");
    }
}
