//! The /v1 user contract: CRUD, paging, filters, validation, conflicts,
//! auth and idempotency.

mod common;

use std::collections::HashSet;

use common::{expect_error, user_body, Sim, COMPANY, MAIN_NUMBER, TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn create_then_get_returns_the_stored_user() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    assert_eq!(created["alias"], "user.1", "alias is lower-cased");
    assert_eq!(created["version"], 1);
    assert_eq!(created["attributes"], json!({"department": "Sales"}));
    assert_eq!(created["created_at"], created["updated_at"]);
    let created_at = created["created_at"].as_str().expect("timestamp");
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());

    let id = created["id"].as_str().expect("id");
    let fetched: Value = sim
        .v1(Method::GET, &format!("/users/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn nullable_fields_may_be_omitted() {
    let sim = Sim::start().await;
    let created = sim
        .create_ok(json!({"alias": "a", "first_name": "A", "surname": "B", "pstn_fixed": "4412345678"}))
        .await;
    for field in ["email", "caller_id", "template", "external_id"] {
        assert!(created[field].is_null(), "{field} should be null");
    }
    assert_eq!(created["attributes"], json!({}));
}

#[tokio::test]
async fn listing_pages_through_every_user_once() {
    let sim = Sim::start().await;
    for n in 0..7 {
        sim.create_ok(user_body(n)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = sim.v1(Method::GET, "/users").query(&[("limit", "3")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await.expect("list").json().await.expect("json");
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|user| user["alias"].clone()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<Value> = (0..7).map(|n| json!(format!("user.{n}"))).collect();
    assert_eq!(seen, expected, "creation order, no duplicates, no gaps");
}

#[tokio::test]
async fn default_page_size_is_100_and_limit_is_bounded() {
    let sim = Sim::start().await;
    for n in 0..101 {
        sim.create_ok(user_body(n)).await;
    }
    let page: Value = sim
        .v1(Method::GET, "/users")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(100));
    assert!(page["next_cursor"].is_string());

    for limit in ["0", "1001", "ten"] {
        let response = sim
            .v1(Method::GET, "/users")
            .query(&[("limit", limit)])
            .send()
            .await
            .expect("list");
        expect_error(response, StatusCode::BAD_REQUEST, "bad_request", Some("limit")).await;
    }
    let response = sim
        .v1(Method::GET, "/users")
        .query(&[("cursor", "bogus")])
        .send()
        .await
        .expect("list");
    expect_error(response, StatusCode::BAD_REQUEST, "bad_request", Some("cursor")).await;
}

#[tokio::test]
async fn listing_filters_by_external_id_and_alias() {
    let sim = Sim::start().await;
    for n in 0..3 {
        sim.create_ok(user_body(n)).await;
    }
    let by_external: Value = sim
        .v1(Method::GET, "/users")
        .query(&[("external_id", "ext-1")])
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(by_external["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_external["items"][0]["alias"], "user.1");
    assert!(by_external["next_cursor"].is_null());

    let by_alias: Value = sim
        .v1(Method::GET, "/users")
        .query(&[("alias", "USER.2")])
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(by_alias["items"][0]["external_id"], "ext-2");

    let none: Value = sim
        .v1(Method::GET, "/users")
        .query(&[("external_id", "missing")])
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn patch_replaces_given_keys_and_null_removes_attributes() {
    let sim = Sim::start().await;
    let mut body = user_body(1);
    body["attributes"] = json!({"department": "Sales", "office": "Malmö"});
    let created = sim.create_ok(body).await;
    let id = created["id"].as_str().expect("id");

    let response = sim
        .v1(Method::PATCH, &format!("/users/{id}"))
        .json(&json!({"surname": "Renamed", "email": null, "attributes": {"office": null, "floor": "3"}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.expect("json");
    assert_eq!(patched["surname"], "Renamed");
    assert!(patched["email"].is_null());
    assert_eq!(
        patched["first_name"], created["first_name"],
        "untouched field kept"
    );
    assert_eq!(
        patched["attributes"],
        json!({"department": "Sales", "floor": "3"})
    );
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["created_at"], created["created_at"]);
    assert_ne!(patched["updated_at"], created["updated_at"]);
}

#[tokio::test]
async fn patch_that_changes_nothing_keeps_the_version() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    let id = created["id"].as_str().expect("id");
    let patched: Value = sim
        .v1(Method::PATCH, &format!("/users/{id}"))
        .json(&json!({"alias": "USER.1", "surname": "User 1"}))
        .send()
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    assert_eq!(patched, created);
}

#[tokio::test]
async fn if_match_with_an_old_version_is_stale() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    let path = format!("/users/{}", created["id"].as_str().expect("id"));

    let first = sim
        .v1(Method::PATCH, &path)
        .header("If-Match", "1")
        .json(&json!({"first_name": "Second"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(first.status(), StatusCode::OK);

    let stale = sim
        .v1(Method::PATCH, &path)
        .header("If-Match", "1")
        .json(&json!({"first_name": "Third"}))
        .send()
        .await
        .expect("patch");
    expect_error(stale, StatusCode::PRECONDITION_FAILED, "stale", None).await;

    let current: Value = sim
        .v1(Method::GET, &path)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(current["first_name"], "Second");
    assert_eq!(current["version"], 2);
}

#[tokio::test]
async fn delete_answers_204_then_404() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    let path = format!("/users/{}", created["id"].as_str().expect("id"));

    let deleted = sim.v1(Method::DELETE, &path).send().await.expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let again = sim.v1(Method::DELETE, &path).send().await.expect("delete");
    expect_error(again, StatusCode::NOT_FOUND, "not_found", None).await;
    let get = sim.v1(Method::GET, &path).send().await.expect("get");
    expect_error(get, StatusCode::NOT_FOUND, "not_found", None).await;

    // The unique values are free again.
    sim.create_ok(user_body(1)).await;
}

#[tokio::test]
async fn each_unique_field_conflicts_and_names_the_holder() {
    let sim = Sim::start().await;
    let holder = sim.create_ok(user_body(1)).await;
    let cases = [
        ("alias", json!("USER.1")),
        ("pstn_fixed", holder["pstn_fixed"].clone()),
        ("external_id", holder["external_id"].clone()),
    ];
    for (field, taken) in cases {
        let mut body = user_body(2);
        body[field] = taken;
        let error = expect_error(
            sim.create(body).await,
            StatusCode::CONFLICT,
            "conflict",
            Some(field),
        )
        .await;
        assert_eq!(error["existing_id"], holder["id"], "field {field}");
    }
    assert_eq!(sim.all_users().await.len(), 1, "no conflicting user was created");
}

#[tokio::test]
async fn patch_into_a_taken_value_conflicts() {
    let sim = Sim::start().await;
    let holder = sim.create_ok(user_body(1)).await;
    let other = sim.create_ok(user_body(2)).await;
    let response = sim
        .v1(
            Method::PATCH,
            &format!("/users/{}", other["id"].as_str().expect("id")),
        )
        .json(&json!({"external_id": "ext-1"}))
        .send()
        .await
        .expect("patch");
    let error = expect_error(response, StatusCode::CONFLICT, "conflict", Some("external_id")).await;
    assert_eq!(error["existing_id"], holder["id"]);
}

#[tokio::test]
async fn invalid_values_are_422_naming_the_field() {
    let sim = Sim::start().await;
    let cases = [
        ("alias", json!("anna björk")),
        ("alias", json!("a".repeat(65))),
        ("first_name", json!(" ")),
        ("surname", json!(null)),
        ("pstn_fixed", json!("+46812345678")),
        ("pstn_fixed", json!("46812")),
        ("caller_id", json!("46899999999")),
        ("template", json!("premium")),
    ];
    for (field, value) in cases {
        let mut body = user_body(1);
        body[field] = value;
        expect_error(
            sim.create(body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            Some(field),
        )
        .await;
    }
    assert!(sim.all_users().await.is_empty());
}

#[tokio::test]
async fn patch_validates_references_too() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    let response = sim
        .v1(
            Method::PATCH,
            &format!("/users/{}", created["id"].as_str().expect("id")),
        )
        .json(&json!({"caller_id": "4611111111"}))
        .send()
        .await
        .expect("patch");
    expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        Some("caller_id"),
    )
    .await;
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let sim = Sim::start().await;
    let mut unknown = user_body(1);
    unknown["nickname"] = json!("Annie");
    expect_error(
        sim.create(unknown).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("nickname"),
    )
    .await;

    let mut wrong_type = user_body(1);
    wrong_type["attributes"] = json!({"floor": 3});
    expect_error(
        sim.create(wrong_type).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("attributes"),
    )
    .await;

    let not_json = sim
        .v1(Method::POST, "/users")
        .body("{alias")
        .send()
        .await
        .expect("post");
    expect_error(not_json, StatusCode::BAD_REQUEST, "bad_request", None).await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_and_companies_may_have_their_own() {
    let sim = Sim::start().await;
    let url = format!("{}/v1/companies/{COMPANY}/users", sim.base);
    let missing = sim.client.get(&url).send().await.expect("get");
    expect_error(missing, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let wrong = sim
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .expect("get");
    expect_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized", None).await;

    sim.configure("globex", json!({"token": "globex-secret"})).await;
    let globex = format!("{}/v1/companies/globex/users", sim.base);
    let default_token = sim
        .client
        .get(&globex)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    expect_error(default_token, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let own_token = sim
        .client
        .get(&globex)
        .bearer_auth("globex-secret")
        .send()
        .await
        .expect("get");
    assert_eq!(own_token.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_company_is_404() {
    let sim = Sim::start().await;
    let response = sim
        .client
        .get(format!("{}/v1/companies/initech/users", sim.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
}

#[tokio::test]
async fn templates_and_numbers_are_listed() {
    let sim = Sim::start().await;
    let templates: Value = sim
        .v1(Method::GET, "/templates")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        templates,
        json!({"items": [{"id": "standard", "name": "Standard"}]})
    );
    let numbers: Value = sim
        .v1(Method::GET, "/numbers")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        numbers,
        json!({"items": [{"number": MAIN_NUMBER, "kind": "main"}]})
    );
}

#[tokio::test]
async fn idempotent_repeat_replays_the_first_answer_and_creates_nothing() {
    let sim = Sim::start().await;
    let post = |body: Value| {
        sim.v1(Method::POST, "/users")
            .header("Idempotency-Key", "key-1")
            .json(&body)
            .send()
    };
    let first = post(user_body(1)).await.expect("post");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.text().await.expect("body");

    let repeat = post(user_body(1)).await.expect("post");
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(repeat.text().await.expect("body"), first_body);
    assert_eq!(sim.all_users().await.len(), 1);

    let reused = post(user_body(2)).await.expect("post");
    expect_error(reused, StatusCode::BAD_REQUEST, "bad_request", None).await;
    assert_eq!(sim.all_users().await.len(), 1);
    assert_eq!(sim.stats().await["idempotent_replays"], 1);
}

#[tokio::test]
async fn an_idempotent_repeat_of_a_refusal_replays_the_refusal() {
    let sim = Sim::start().await;
    let holder = sim.create_ok(user_body(1)).await;
    let mut body = user_body(2);
    body["pstn_fixed"] = holder["pstn_fixed"].clone();
    let post = || {
        sim.v1(Method::POST, "/users")
            .header("Idempotency-Key", "key-409")
            .json(&body)
            .send()
    };
    let first = post().await.expect("post");
    let refusal = expect_error(first, StatusCode::CONFLICT, "conflict", Some("pstn_fixed")).await;
    assert_eq!(refusal["existing_id"], holder["id"]);

    // The number is free now, but the key already has its answer.
    let path = format!("/users/{}", holder["id"].as_str().unwrap());
    let deleted = sim.v1(Method::DELETE, &path).send().await.expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let repeat = post().await.expect("post");
    assert_eq!(
        expect_error(repeat, StatusCode::CONFLICT, "conflict", Some("pstn_fixed")).await,
        refusal
    );
    assert!(sim.all_users().await.is_empty());
    assert_eq!(sim.stats().await["idempotent_replays"], 1);
}

#[tokio::test]
async fn concurrent_creations_are_all_kept() {
    let sim = Sim::start().await;
    let creations = (0..200).map(|n| sim.create(user_body(n)));
    let responses = futures::future::join_all(creations).await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::CREATED));
    let users = sim.all_users().await;
    let ids: HashSet<&str> = users.iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(ids.len(), 200);
}
