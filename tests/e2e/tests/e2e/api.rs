//! usersync-api against the real stack: every endpoint, the scope of a
//! company's token (both directions), stale versions, oversized and
//! malformed bodies, revoked tokens, rate limits.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use usersync_e2e::{wait_for, Api, Stack};

use crate::support::{seed, tenant_file, CALLER_ID};

/// One call: (status, headers, JSON body or `Value::Null`).
async fn call(
    stack: &Stack,
    api: &Api,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<String>,
    if_match: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = stack.http.request(method, format!("{}{path}", api.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tag) = if_match {
        request = request.header("If-Match", tag);
    }
    if let Some(body) = body {
        request = request.header("Content-Type", "application/json").body(body);
    }
    let response = request.send().await.expect("usersync-api answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, value)
}

/// Asserts an error body `{"error": code, "message": …}`.
fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

fn tenant_file_for(id: &str) -> String {
    let mut file: Value = serde_json::from_str(&tenant_file()).expect("the sample file");
    file["id"] = json!(id);
    file["pbx_company_id"] = json!(id);
    file.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_creates_syncs_and_reports_a_tenant_through_every_endpoint() {
    let mut stack = Stack::start("api_flow").await;
    seed(&stack).await;
    let api = stack.start_api().await;
    let (_, acme_token) = stack.api_token(Some("acme")).await;
    let token = Some(acme_token.as_str());

    // No token, an unknown one: 401 with a code.
    let (status, _, body) = call(&stack, &api, None, Method::GET, "/v1/tenants", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");
    let (status, _, body) = call(
        &stack,
        &api,
        Some("usk_unknown"),
        Method::GET,
        "/v1/tenants",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");

    // A file with problems: every one named, nothing saved.
    let mut broken: Value = serde_json::from_str(&tenant_file()).unwrap();
    broken["provider_settings"] = json!("{\"tenant_id\": \"x\", ");
    broken["delete_after_days"] = json!(-1);
    let (status, _, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some(broken.to_string()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.iter().any(|f| f.starts_with("provider_settings")),
        "{body}"
    );
    assert!(fields.contains(&"delete_after_days"), "{body}");
    let (status, _, _) = call(&stack, &api, token, Method::GET, "/v1/tenants/acme", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was saved");
    // Not JSON at all: 400, still as JSON.
    let (status, _, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some("{\"id\": ".into()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    // Oversized: 413 JSON.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(400 * 1024));
    let (status, headers, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some(huge),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, "too_large");
    // Its body was left unread: the server closes the connection and says so,
    // so the next request does not go out on a dead socket.
    assert_eq!(headers["connection"], "close", "{headers:?}");

    // Create (id from the path, provider settings as the pasted string), read back masked.
    let mut file: Value = serde_json::from_str(&tenant_file()).unwrap();
    file.as_object_mut().unwrap().remove("id");
    let (status, headers, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some(file.to_string()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["created"], true);
    let first_tag = headers["etag"].to_str().unwrap().to_owned();
    let (status, headers, shown) =
        call(&stack, &api, token, Method::GET, "/v1/tenants/acme", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"].to_str().unwrap(), first_tag);
    assert_eq!(shown["provider_settings"]["client_secret"], "********");
    // A change from the current version (the masked secret kept as stored) moves the version on...
    let mut changed = shown.clone();
    changed["name"] = json!("Acme Sverige AB");
    let (status, headers, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some(changed.to_string()),
        Some(&first_tag),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second_tag = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(second_tag, first_tag);
    // ...and one from the old version is refused, not merged.
    changed["name"] = json!("Stale AB");
    let (status, _, body) = call(
        &stack,
        &api,
        token,
        Method::PUT,
        "/v1/tenants/acme",
        Some(changed.to_string()),
        Some(&first_tag),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_error(&body, "stale_version");
    let (_, _, shown) = call(&stack, &api, token, Method::GET, "/v1/tenants/acme", None, None).await;
    assert_eq!(shown["name"], "Acme Sverige AB");
    let (_, _, list) = call(&stack, &api, token, Method::GET, "/v1/tenants", None, None).await;
    assert_eq!(
        list,
        json!([{"id": "acme", "name": "Acme Sverige AB", "mode": "user_sync"}])
    );

    // The PBX's choices.
    let (status, _, numbers) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/pbx/numbers",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{numbers}");
    assert_eq!(numbers, json!([{"number": CALLER_ID, "kind": "main"}]));
    let (_, _, templates) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/pbx/templates",
        None,
        None,
    )
    .await;
    assert_eq!(templates, json!([{"id": "standard", "name": "Standard"}]));
    let (_, _, fields) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/fields",
        None,
        None,
    )
    .await;
    assert_eq!(fields, json!([]), "no fields before the first sync");

    // Resync, followed to its end through the run's live view.
    let (status, _, bad) = call(
        &stack,
        &api,
        token,
        Method::POST,
        "/v1/tenants/acme/resync",
        Some("{\"full\": tru".into()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&bad, "malformed_json");
    let (status, _, accepted) = call(
        &stack,
        &api,
        token,
        Method::POST,
        "/v1/tenants/acme/resync",
        Some("{\"full\": false}".into()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/tenants/acme/runs/{run_id}");
    let run = wait_for("the run to finish", Duration::from_secs(120), || async {
        let (status, _, run) = call(&stack, &api, token, Method::GET, &path, None, None).await;
        (status == StatusCode::OK && !run["finished_at"].is_null()).then_some(run)
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["counts"]["created"], 120, "{run}");
    assert_eq!(run["progress"]["to_do"], 0, "{run}");

    let (_, _, status_line) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/status",
        None,
        None,
    )
    .await;
    assert!(status_line["last_success_at"].is_string(), "{status_line}");
    assert_eq!(status_line["last_run"]["id"], run_id.as_str());
    let (_, _, runs) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/runs?limit=5",
        None,
        None,
    )
    .await;
    assert_eq!(runs[0]["id"], run_id.as_str(), "{runs}");
    let (status, _, _) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/runs?limit=0",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, _, fields) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/fields",
        None,
        None,
    )
    .await;
    let mail = fields
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "mail")
        .expect("mail discovered");
    assert!(
        mail["users"].as_i64().unwrap() > 0 && mail["example"].is_string(),
        "{mail}"
    );

    // One user, explained the way `usersync explain --json` does.
    let alias = crate::support::pbx_users(&stack)
        .await
        .into_values()
        .next()
        .unwrap()["alias"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, user) = call(
        &stack,
        &api,
        token,
        Method::GET,
        &format!("/v1/tenants/acme/users/{alias}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let cli = stack.cli_json(&["explain", "acme", &alias, "--json"]).await;
    assert_eq!(user["object_id"], cli["object_id"]);
    assert_eq!(user["pbx_id"], cli["pbx_id"]);
    let (status, _, _) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/users/nobody-here",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing is held, so nothing is approved.
    let (_, _, held) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/held-deletions",
        None,
        None,
    )
    .await;
    assert_eq!(held, json!([]));
    let (status, _, approval) = call(
        &stack,
        &api,
        token,
        Method::POST,
        "/v1/tenants/acme/approve-deletions",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(approval["approved"], false, "{approval}");

    // The document, the reference page, health and metrics.
    let (status, _, document) = call(&stack, &api, None, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    assert!(document["paths"]["/v1/tenants/{id}/runs/{run_id}"]["get"].is_object());
    let docs = stack
        .http
        .get(format!("{}/docs", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        docs.contains("/v1/tenants/{id}/resync") && !docs.contains("<script"),
        "the reference page lists the paths without a script"
    );
    let health = stack
        .http
        .get(format!("{}/healthz", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = stack
        .http
        .get(format!("{}/metrics", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("usersync_api_requests_total"), "{metrics}");
    let page = stack.http.get(&api.url).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // Log lines carry the token's id, never the token.
    let log = std::fs::read_to_string(stack.logs.join("usersync-api-4.log")).unwrap();
    assert!(
        log.contains("token_id") && !log.contains(&acme_token),
        "the API log names token ids only"
    );

    // Delete: a stale version is refused; then the sync stops, PBX users stay.
    let (_, headers, _) = call(&stack, &api, token, Method::GET, "/v1/tenants/acme", None, None).await;
    let current = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, _) = call(
        &stack,
        &api,
        token,
        Method::DELETE,
        "/v1/tenants/acme",
        None,
        Some(&first_tag),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _, deleted) = call(
        &stack,
        &api,
        token,
        Method::DELETE,
        "/v1/tenants/acme",
        None,
        Some(&current),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert!(
        deleted["effect"].as_str().unwrap().contains("left as they are"),
        "{deleted}"
    );
    let (status, _, _) = call(
        &stack,
        &api,
        token,
        Method::GET,
        "/v1/tenants/acme/status",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        crate::support::pbx_users(&stack).await.len(),
        120,
        "the PBX users are left as they are"
    );

    // A revoked token is refused from then on.
    let (id, revoked) = stack.api_token(Some("acme")).await;
    let (status, _, _) = call(
        &stack,
        &api,
        Some(&revoked),
        Method::GET,
        "/v1/tenants",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (ok, _, stderr) = stack.cli(&["api-token", "revoke", &id], None).await;
    assert!(ok, "{stderr}");
    let (status, _, body) = call(
        &stack,
        &api,
        Some(&revoked),
        Method::GET,
        "/v1/tenants",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");
    let listed = stack.cli_json(&["api-token", "list", "--json"]).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["id"] != id.as_str() && t.get("token").is_none()),
        "{listed}"
    );
}

/// Every path of one tenant, with a method and a body that would be accepted.
fn tenant_calls(id: &str) -> Vec<(Method, String, Option<String>)> {
    let base = format!("/v1/tenants/{id}");
    vec![
        (Method::GET, base.clone(), None),
        (Method::PUT, base.clone(), Some(tenant_file_for(id))),
        (
            Method::POST,
            format!("{base}/resync"),
            Some("{\"full\": false}".into()),
        ),
        (Method::GET, format!("{base}/status"), None),
        (Method::GET, format!("{base}/runs"), None),
        (Method::GET, format!("{base}/runs/{}", uuid::Uuid::new_v4()), None),
        (Method::GET, format!("{base}/fields"), None),
        (Method::GET, format!("{base}/pbx/numbers"), None),
        (Method::GET, format!("{base}/pbx/templates"), None),
        (Method::GET, format!("{base}/users/anyone"), None),
        (Method::GET, format!("{base}/held-deletions"), None),
        (Method::POST, format!("{base}/approve-deletions"), None),
        (Method::DELETE, base, None),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_company_token_gets_404_for_every_path_of_another_company_both_ways() {
    let mut stack = Stack::start("api_scope").await;
    for id in ["acme", "beta"] {
        let (ok, _, stderr) = stack
            .cli(&["tenant", "apply", "-"], Some(&tenant_file_for(id)))
            .await;
        assert!(ok, "{stderr}");
    }
    let api = stack.start_api().await;
    let (_, acme) = stack.api_token(Some("acme")).await;
    let (_, beta) = stack.api_token(Some("beta")).await;
    for (own, token, other) in [("acme", &acme, "beta"), ("beta", &beta, "acme")] {
        let (_, _, list) = call(&stack, &api, Some(token), Method::GET, "/v1/tenants", None, None).await;
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [own], "{own}'s token lists its own tenant only");
        for (method, path, body) in tenant_calls(other) {
            let (status, _, refused) =
                call(&stack, &api, Some(token), method.clone(), &path, body, None).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{own}'s token on {method} {path}: {refused}"
            );
            assert_error(&refused, "not_found");
            // The same answer as for a company that does not exist.
            let missing = path.replacen(other, "nosuchco", 1);
            let (_, _, absent) =
                call(&stack, &api, Some(&api.token), Method::GET, &missing, None, None).await;
            if method == Method::GET && !path.contains("/runs/") && !path.contains("/users/") {
                assert_eq!(
                    refused["message"].as_str().unwrap().replace(other, "X"),
                    absent["message"].as_str().unwrap().replace("nosuchco", "X"),
                    "{path}"
                );
            }
        }
        // Nothing of the other company changed.
        let (status, _, shown) = call(
            &stack,
            &api,
            Some(&api.token),
            Method::GET,
            &format!("/v1/tenants/{other}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["name"], "Acme AB");
        // The own company's paths answer.
        let (status, _, _) = call(
            &stack,
            &api,
            Some(token),
            Method::GET,
            &format!("/v1/tenants/{own}/status"),
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // The operator's token sees both.
    let (_, _, list) = call(
        &stack,
        &api,
        Some(&api.token),
        Method::GET,
        "/v1/tenants",
        None,
        None,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    // A company token may create its own company (the admin's first step), not another.
    let (_, gamma) = stack.api_token(Some("gamma")).await;
    let (status, _, _) = call(
        &stack,
        &api,
        Some(&gamma),
        Method::PUT,
        "/v1/tenants/delta",
        Some(tenant_file_for("delta")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &stack,
        &api,
        Some(&gamma),
        Method::PUT,
        "/v1/tenants/gamma",
        Some(tenant_file_for("gamma")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let mut stack = Stack::start("api_rate").await;
    let api = stack
        .start_api_with(&[("API_RATE_PER_MINUTE", "1"), ("API_RATE_BURST", "2")])
        .await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let (status, headers, body) = call(
            &stack,
            &api,
            Some(&api.token),
            Method::GET,
            "/v1/tenants",
            None,
            None,
        )
        .await;
        statuses.push(status);
        last = Some((headers, body));
    }
    // A burst of 2, then one per minute: the third call within a minute is refused.
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
    );
    let (headers, body) = last.unwrap();
    assert_error(&body, "rate_limited");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another token has its own bucket.
    let (_, other) = stack.api_token(None).await;
    let (status, _, _) = call(&stack, &api, Some(&other), Method::GET, "/v1/tenants", None, None).await;
    assert_eq!(status, StatusCode::OK);
}
