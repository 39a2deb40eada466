mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::{error_json, serve, user_json, Reply};
use usersync_pbx::{NewUser, PbxClient, PbxErrorKind, UserFilter};

const TOKEN: &str = "secret-token-123";

fn client_for(base_url: &str) -> PbxClient {
    PbxClient::new(base_url, TOKEN).unwrap()
}

fn new_user() -> NewUser {
    NewUser {
        alias: "anna.berg".into(),
        first_name: "Anna".into(),
        surname: "Berg".into(),
        pstn_fixed: "46812345678".into(),
        email: Some("anna@example.com".into()),
        caller_id: None,
        template: Some("tpl-1".into()),
        external_id: Some("obj-1".into()),
        attributes: BTreeMap::from([("department".to_string(), "Sales".to_string())]),
    }
}

#[tokio::test]
async fn every_documented_status_maps_to_its_kind() {
    let cases = [
        (400, PbxErrorKind::BadRequest, false),
        (401, PbxErrorKind::Unauthorized, false),
        (404, PbxErrorKind::NotFound, false),
        (409, PbxErrorKind::Conflict, false),
        (412, PbxErrorKind::Stale, false),
        (422, PbxErrorKind::Validation, false),
        (429, PbxErrorKind::RateLimited { retry_after: None }, true),
        (500, PbxErrorKind::Unavailable, true),
        (502, PbxErrorKind::Unavailable, true),
        (503, PbxErrorKind::Unavailable, true),
        (504, PbxErrorKind::Unavailable, true),
        (418, PbxErrorKind::Unexpected, false),
    ];
    for (status, expected_kind, transient) in cases {
        let server = serve(move |_| Reply::json(status, error_json("x", "nope", None, None))).await;
        let err = client_for(&server.base_url)
            .update_user("acme", "u1", &json!({"surname": "B"}), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, expected_kind, "status {status}");
        assert_eq!(err.status, Some(status));
        assert_eq!(err.message, "nope");
        assert_eq!(err.is_transient(), transient, "status {status}");
    }
}

#[tokio::test]
async fn rate_limit_carries_fractional_retry_after() {
    let server = serve(|_| {
        Reply::json(429, error_json("rate_limited", "slow down", None, None))
            .with_header("retry-after", "1.5")
    })
    .await;
    let err = client_for(&server.base_url)
        .list_templates("acme")
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    assert!(err.is_transient());
}

#[tokio::test]
async fn conflict_and_validation_keep_field_and_holder() {
    let server = serve(|r| {
        if r.method == "POST" {
            Reply::json(
                409,
                error_json("conflict", "alias taken", Some("alias"), Some("u-9")),
            )
        } else {
            Reply::json(
                422,
                error_json("validation", "bad number", Some("pstn_fixed"), None),
            )
        }
    })
    .await;
    let client = client_for(&server.base_url);

    let conflict = client.create_user("acme", &new_user(), "k1").await.unwrap_err();
    assert_eq!(conflict.kind, PbxErrorKind::Conflict);
    assert_eq!(conflict.existing_id.as_deref(), Some("u-9"));
    assert_eq!(conflict.field.as_deref(), Some("alias"));

    let invalid = client
        .update_user("acme", "u1", &json!({"pstn_fixed": "x"}), None)
        .await
        .unwrap_err();
    assert_eq!(invalid.kind, PbxErrorKind::Validation);
    assert_eq!(
        invalid.to_string(),
        "PBX refused field pstn_fixed (422 validation): bad number"
    );
}

#[tokio::test]
async fn undocumented_error_body_still_gives_a_sensible_error() {
    let server = serve(|_| Reply {
        status: 502,
        headers: vec![("content-type", "text/html".into())],
        body: "<html>Bad gateway from proxy</html>".into(),
    })
    .await;
    let err = client_for(&server.base_url)
        .list_numbers("acme")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unavailable);
    assert_eq!(err.message, "<html>Bad gateway from proxy</html>");
    assert_eq!(err.field, None);
}

#[tokio::test]
async fn undecodable_success_body_is_a_transport_error() {
    let server = serve(|_| Reply {
        status: 200,
        headers: Vec::new(),
        body: "{\"items\": [trunc".into(),
    })
    .await;
    let err = client_for(&server.base_url)
        .list_templates("acme")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Transport);
    assert!(err.is_transient());
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = client_for(&format!("http://127.0.0.1:{closed_port}"))
        .get_user("acme", "u1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Transport);
    assert_eq!(err.status, None);
    assert!(err.is_transient());
}

#[tokio::test]
async fn create_sends_token_idempotency_key_and_body() {
    let server = serve(|_| Reply::json(201, user_json("u1", "anna.berg", 1))).await;
    let created = client_for(&server.base_url)
        .create_user("acme", &new_user(), "create-obj-1-v3")
        .await
        .unwrap();
    assert_eq!(created.id, "u1");
    assert_eq!(created.version, 1);
    assert_eq!(
        created.attributes.get("department").map(String::as_str),
        Some("Sales")
    );

    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/companies/acme/users");
    assert_eq!(request.header("authorization"), Some("Bearer secret-token-123"));
    assert_eq!(request.header("idempotency-key"), Some("create-obj-1-v3"));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["alias"], "anna.berg");
    assert_eq!(body["template"], "tpl-1");
    assert_eq!(body["attributes"]["department"], "Sales");
    assert!(body.get("id").is_none() && body.get("version").is_none());
}

#[tokio::test]
async fn update_sends_if_match_only_when_asked() {
    let server = serve(|_| Reply::json(200, user_json("u1", "anna.berg", 8))).await;
    let client = client_for(&server.base_url);
    let patch = json!({"surname": "Lind", "attributes": {"old": null}});

    let updated = client.update_user("acme", "u1", &patch, Some(7)).await.unwrap();
    assert_eq!(updated.version, 8);
    client.update_user("acme", "u1", &patch, None).await.unwrap();

    let requests = server.requests();
    assert_eq!(requests[0].method, "PATCH");
    assert_eq!(requests[0].target, "/v1/companies/acme/users/u1");
    assert_eq!(requests[0].header("if-match"), Some("7"));
    assert_eq!(requests[1].header("if-match"), None);
    let sent: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(sent, patch);
}

#[tokio::test]
async fn stale_version_is_reported_as_stale() {
    let server = serve(|_| Reply::json(412, error_json("stale", "version 7 is old", None, None))).await;
    let err = client_for(&server.base_url)
        .update_user("acme", "u1", &json!({}), Some(7))
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Stale);
    assert!(!err.is_transient());
}

#[tokio::test]
async fn delete_treats_404_as_already_done() {
    let server = serve(|r| match r.target.as_str() {
        "/v1/companies/acme/users/present" => Reply::empty(204),
        "/v1/companies/acme/users/gone" => {
            Reply::json(404, error_json("not_found", "no such user", None, None))
        }
        _ => Reply::json(503, error_json("unavailable", "busy", None, None)),
    })
    .await;
    let client = client_for(&server.base_url);
    assert!(client.delete_user("acme", "present").await.unwrap());
    assert!(!client.delete_user("acme", "gone").await.unwrap());
    let err = client.delete_user("acme", "other").await.unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unavailable);
    assert!(server.requests().iter().all(|r| r.method == "DELETE"));
}

#[tokio::test]
async fn get_user_returns_none_when_absent() {
    let server = serve(|r| {
        if r.target.ends_with("/u1") {
            Reply::json(200, user_json("u1", "anna.berg", 3))
        } else {
            Reply::json(404, error_json("not_found", "no such user", None, None))
        }
    })
    .await;
    let client = client_for(&server.base_url);
    let found = client.get_user("acme", "u1").await.unwrap().unwrap();
    assert_eq!(found.alias, "anna.berg");
    assert_eq!(found.external_id.as_deref(), Some("obj-1"));
    assert_eq!(client.get_user("acme", "u2").await.unwrap(), None);
}

#[tokio::test]
async fn ids_and_query_values_are_percent_encoded() {
    let server = serve(|_| Reply::json(200, json!({"items": [], "next_cursor": null}))).await;
    let client = client_for(&server.base_url);
    client
        .find_users("acme/x", UserFilter::Alias("a b&c=d".into()))
        .await
        .unwrap();
    client.get_user("acme", "id?/..#1").await.unwrap_err();

    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        "/v1/companies/acme%2Fx/users?alias=a%20b%26c%3Dd&limit=1000"
    );
    assert_eq!(requests[1].target, "/v1/companies/acme/users/id%3F%2F..%231");
}

#[tokio::test]
async fn dot_segments_are_refused_before_sending() {
    let server = serve(|_| Reply::empty(204)).await;
    let err = client_for(&server.base_url)
        .delete_user("acme", "..")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::BadRequest);
    assert!(server.requests().is_empty());
}

/// Five users served two per page; the cursor is the offset of the next page.
fn paged_users(r: &support::Recorded) -> Reply {
    let limit: usize = r.query_value("limit").unwrap().parse().unwrap();
    let offset: usize = r.query_value("cursor").map_or(0, |c| c.parse().unwrap());
    let all: Vec<_> = (0..5)
        .map(|i| user_json(&format!("u{i}"), &format!("user{i}"), 1))
        .collect();
    let end = (offset + limit).min(all.len());
    let next = (end < all.len()).then(|| end.to_string());
    Reply::json(200, json!({"items": all[offset..end], "next_cursor": next}))
}

#[tokio::test]
async fn paging_follows_next_cursor_to_the_end() {
    let server = serve(paged_users).await;
    let client = client_for(&server.base_url);
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list_users_page("acme", 2, cursor.as_deref())
            .await
            .unwrap();
        ids.extend(page.items.into_iter().map(|u| u.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(ids, ["u0", "u1", "u2", "u3", "u4"]);
    let cursors: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.query_value("cursor"))
        .collect();
    assert_eq!(cursors, [None, Some("2".into()), Some("4".into())]);
}

#[tokio::test]
async fn page_limit_is_kept_within_the_contract() {
    let server = serve(paged_users).await;
    let client = client_for(&server.base_url);
    client.list_users_page("acme", 5000, None).await.unwrap();
    client.list_users_page("acme", 0, None).await.unwrap();
    let limits: Vec<_> = server.requests().iter().map(|r| r.query_value("limit")).collect();
    assert_eq!(limits, [Some("1000".into()), Some("1".into())]);
}

#[tokio::test]
async fn find_users_filters_by_external_id_across_pages() {
    let server = serve(paged_users).await;
    let found = client_for(&server.base_url)
        .find_users("acme", UserFilter::ExternalId("obj-1".into()))
        .await
        .unwrap();
    assert_eq!(found.len(), 5, "all pages are collected");
    assert!(server
        .requests()
        .iter()
        .all(|r| r.query_value("external_id").as_deref() == Some("obj-1")));
}

#[tokio::test]
async fn templates_and_numbers_are_listed() {
    let server = serve(|r| {
        if r.target.ends_with("/templates") {
            Reply::json(200, json!({"items": [{"id": "t1", "name": "Standard"}]}))
        } else {
            Reply::json(200, json!({"items": [{"number": "4681000000", "kind": "main"}]}))
        }
    })
    .await;
    let client = client_for(&format!("{}/", server.base_url));
    let templates = client.list_templates("acme").await.unwrap();
    assert_eq!(
        (templates[0].id.as_str(), templates[0].name.as_str()),
        ("t1", "Standard")
    );
    let numbers = client.list_numbers("acme").await.unwrap();
    assert_eq!(
        (numbers[0].number.as_str(), numbers[0].kind.as_str()),
        ("4681000000", "main")
    );
    let targets: Vec<_> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/v1/companies/acme/templates", "/v1/companies/acme/numbers"]
    );
}

#[test]
fn debug_output_hides_the_token() {
    let client = PbxClient::new("http://127.0.0.1:1", TOKEN).unwrap();
    let printed = format!("{client:?}");
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(printed.contains("127.0.0.1:1"));
}

#[test]
fn invalid_base_url_is_refused() {
    let err = PbxClient::new("not a url", TOKEN).unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unexpected);
    assert!(PbxClient::new("ftp://pbx.example", TOKEN).is_err());
}
