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
    let server = serve(|_| Reply::text(502, "text/html", "<html>Bad gateway from proxy</html>")).await;
    let err = client_for(&server.base_url)
        .list_numbers("acme")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unavailable);
    assert_eq!(err.message, "<html>Bad gateway from proxy</html>");
    assert_eq!(err.field, None);
}

#[tokio::test]
async fn undecodable_success_body_is_malformed_and_transient() {
    let server = serve(|_| Reply::text(200, "application/json", "{\"items\": [trunc")).await;
    let err = client_for(&server.base_url)
        .list_templates("acme")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Malformed);
    assert!(err.is_transient());
    assert!(
        err.to_string()
            .starts_with("PBX answered 200 to GET /v1/companies/acme/templates with a body that"),
        "{err}"
    );
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

const PROXY_PAGE: &str = "<!DOCTYPE html><html><head><title>Proxy</title></head><body>Session expired, please sign in</body></html>";

/// Every call of the client, against `server`, with a short label.
async fn every_call(client: &PbxClient) -> Vec<(&'static str, usersync_pbx::PbxError)> {
    let patch = json!({"surname": "B"});
    vec![
        ("templates", client.list_templates("acme").await.unwrap_err()),
        ("numbers", client.list_numbers("acme").await.unwrap_err()),
        (
            "list",
            client.list_users_page("acme", 10, None).await.unwrap_err(),
        ),
        (
            "find",
            client
                .find_users("acme", UserFilter::ExternalId("obj-1".into()))
                .await
                .unwrap_err(),
        ),
        ("get", client.get_user("acme", "u1").await.unwrap_err()),
        (
            "create",
            client.create_user("acme", &new_user(), "k1").await.unwrap_err(),
        ),
        (
            "update",
            client.update_user("acme", "u1", &patch, None).await.unwrap_err(),
        ),
        ("delete", client.delete_user("acme", "u1").await.unwrap_err()),
    ]
}

#[tokio::test]
async fn an_html_page_with_the_success_status_is_malformed_on_every_call() {
    let server = serve(|r| {
        let status = match r.method.as_str() {
            "POST" => 201,
            _ => 200,
        };
        Reply::text(status, "text/html; charset=utf-8", PROXY_PAGE)
    })
    .await;
    for (call, err) in every_call(&client_for(&server.base_url)).await {
        if call == "delete" {
            // DELETE's success is 204: a 200 page is a status the contract does not list.
            assert_eq!(err.kind, PbxErrorKind::Unexpected, "{call}: {err}");
            continue;
        }
        assert_eq!(err.kind, PbxErrorKind::Malformed, "{call}: {err}");
        assert!(err.is_transient(), "{call}");
        let text = err.to_string();
        assert!(
            text.contains(" /v1/companies/acme/")
                && text.contains("with a body that is not JSON (text/html, 105 B)"),
            "{call}: {text}"
        );
        assert!(
            text.contains("Session expired"),
            "{call}: the page is quoted: {text}"
        );
    }
    let err = client_for(&server.base_url)
        .create_user("acme", &new_user(), "k1")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("PBX answered 201 to POST /v1/companies/acme/users with a body that is not JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn a_body_cut_mid_way_is_a_transport_error_saying_how_much_came() {
    let server = serve(|_| Reply::json(201, user_json("u1", "anna.berg", 1)).cut_after(40)).await;
    let err = client_for(&server.base_url)
        .create_user("acme", &new_user(), "k1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Transport);
    assert!(err.is_transient());
    assert_eq!(err.status, Some(201));
    assert!(
        err.to_string().starts_with(
            "PBX answered 201 to POST /v1/companies/acme/users but the connection was cut after 40 bytes of the body"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn json_without_a_required_field_or_with_a_wrong_type_is_malformed() {
    let server = serve(|r| match (r.method.as_str(), r.target.as_str()) {
        ("POST", _) => {
            let mut user = user_json("u1", "anna.berg", 1);
            user.as_object_mut().unwrap().remove("id");
            Reply::json(201, user)
        }
        ("PATCH", _) => {
            let mut user = user_json("u1", "anna.berg", 1);
            user["version"] = json!("2");
            Reply::json(200, user)
        }
        (_, target) if target.contains("/templates") => Reply::json(200, json!({"templates": []})),
        _ => Reply::json(200, json!({"items": {"id": "u1"}, "next_cursor": null})),
    })
    .await;
    let client = client_for(&server.base_url);
    let created = client.create_user("acme", &new_user(), "k1").await.unwrap_err();
    assert_eq!(created.kind, PbxErrorKind::Malformed);
    assert!(
        created
            .to_string()
            .contains("not a user as the contract has it: missing field `id`"),
        "{created}"
    );
    let updated = client
        .update_user("acme", "u1", &json!({"surname": "B"}), None)
        .await
        .unwrap_err();
    assert!(
        updated
            .to_string()
            .contains("invalid type: string \"2\", expected i64"),
        "{updated}"
    );
    let templates = client.list_templates("acme").await.unwrap_err();
    assert!(
        templates.to_string().contains("missing field `items`"),
        "{templates}"
    );
    let page = client.list_users_page("acme", 10, None).await.unwrap_err();
    assert!(page.to_string().contains("not a page of users"), "{page}");
    assert!([created, updated, templates, page]
        .iter()
        .all(|e| e.is_transient()));
}

#[tokio::test]
async fn a_status_the_contract_does_not_list_is_an_error_on_every_call() {
    let server = serve(|_| Reply::text(418, "text/plain", "I'm a teapot")).await;
    for (call, err) in every_call(&client_for(&server.base_url)).await {
        assert_eq!(err.kind, PbxErrorKind::Unexpected, "{call}");
        assert_eq!(err.status, Some(418), "{call}");
        assert!(!err.is_transient(), "{call}");
        let text = err.to_string();
        assert!(
            text.contains("PBX answered 418 to ") && text.contains("a status the contract does not list"),
            "{call}: {text}"
        );
        assert!(text.contains("I'm a teapot"), "{call}: {text}");
    }
    // A 200 where the contract says 201 is not taken for a creation either.
    let server = serve(|_| Reply::json(200, user_json("u1", "anna.berg", 1))).await;
    let err = client_for(&server.base_url)
        .create_user("acme", &new_user(), "k1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unexpected);
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused_and_the_token_stays_home() {
    let elsewhere = serve(|_| Reply::json(200, user_json("u1", "anna.berg", 1))).await;
    // Another host name for the same machine: `localhost` instead of 127.0.0.1.
    let target = elsewhere.base_url.replace("127.0.0.1", "localhost");
    let location = format!("{target}/v1/companies/acme/users/u1");
    let pbx = serve(move |_| Reply::text(302, "text/html", "moved").with_header("location", &location)).await;

    let err = client_for(&pbx.base_url)
        .get_user("acme", "u1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unexpected);
    assert_eq!(err.status, Some(302));
    assert!(
        err.to_string().contains(&format!(
            "PBX answered 302 to GET /v1/companies/acme/users/u1, a redirect to {target}/v1/companies/acme/users/u1"
        )),
        "{err}"
    );
    assert!(elsewhere.requests().is_empty(), "the redirect was not followed");

    // Handed a client that follows redirects, the answer from elsewhere is still refused.
    let following = PbxClient::with_http(reqwest::Client::new(), &pbx.base_url, TOKEN);
    let err = following.get_user("acme", "u1").await.unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Unexpected);
    assert!(
        err.to_string()
            .contains("after a redirect that the contract does not have"),
        "{err}"
    );
    let followed = elsewhere.only_request();
    assert_eq!(followed.header("authorization"), None, "the token went elsewhere");
}

#[tokio::test]
async fn a_repeated_cursor_or_an_empty_one_does_not_loop() {
    let server = serve(|_| Reply::json(200, json!({"items": [], "next_cursor": ""}))).await;
    let err = client_for(&server.base_url)
        .find_users("acme", UserFilter::Alias("a".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, PbxErrorKind::Malformed);
    assert!(
        err.to_string().contains("next_cursor is an empty string"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
}
