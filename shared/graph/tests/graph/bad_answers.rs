//! Answers that are not what Graph documents: retried when they look passing
//! (a proxy's page, a cut body), refused at once when they are Graph's own
//! (a page without `value`, a link to another host), and named either way.

use axum::Router;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use usersync_graph::{GraphClient, GraphConfig, GraphError};

use crate::support::{creds, fast_policy, graph_with, scripted, token_ok, Fake, Reply, BASE, TOKEN_PATH};

const DELTA_PATH: &str = "/v1.0/users/delta";
/// A query that stands for a delta token: it must never be printed.
const SECRET_QUERY: &str = "$deltatoken=secret-token";
const HTML: &[u8] = b"<html><body><h1>Proxy authentication required</h1></body></html>";

fn delta_link(fake: &Fake) -> String {
    format!("{}{DELTA_PATH}?{SECRET_QUERY}", fake.base)
}

fn last_page() -> Reply {
    Reply::json(
        200,
        json!({"value": [{"id": "u1"}], "@odata.deltaLink": format!("{BASE}{DELTA_PATH}?$deltatoken=n")}),
    )
}

/// The page's outcome and how many times the client asked for it.
async fn outcome_of(replies: Vec<Reply>) -> (Result<usersync_graph::DeltaPage, GraphError>, usize) {
    let fake = graph_with(DELTA_PATH, replies).await;
    let outcome = fake.client().users_delta_page(&creds(), &delta_link(&fake)).await;
    (outcome, fake.requests_to(DELTA_PATH))
}

/// The refusal's code and message; the message never shows the query.
fn refusal(outcome: Result<usersync_graph::DeltaPage, GraphError>) -> (String, String) {
    let error = outcome.expect_err("a refusal");
    let message = error.to_string();
    assert!(!message.contains("secret-token"), "{message}");
    assert!(message.contains(DELTA_PATH), "{message}");
    (error.code(), message)
}

#[tokio::test]
async fn an_html_page_is_retried_then_fails_naming_status_path_and_content_type() {
    let (outcome, requests) = outcome_of(vec![Reply::raw(200, "text/html", HTML)]).await;
    let (code, message) = refusal(outcome);
    assert_eq!(requests, fast_policy().max_attempts);
    assert_eq!(code, "graph.invalid_response");
    for part in ["HTTP 200", "not JSON", "text/html", "4 attempt(s)"] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
}

#[tokio::test]
async fn a_passing_html_page_is_retried_and_the_real_page_read() {
    let (outcome, requests) = outcome_of(vec![Reply::raw(200, "text/html", HTML), last_page()]).await;
    assert_eq!(outcome.expect("the real page").users.len(), 1);
    assert_eq!(requests, 2);
}

#[tokio::test]
async fn a_page_of_the_wrong_shape_fails_at_once_naming_the_key() {
    let cases = [
        (
            json!({"@odata.nextLink": format!("{BASE}{DELTA_PATH}")}),
            "no `value` key",
        ),
        (
            json!({"value": {"id": "u1"}, "@odata.deltaLink": "x"}),
            "`value` is an object, not an array",
        ),
        (
            json!({"value": [{"mail": "a@b"}], "@odata.deltaLink": "x"}),
            "item 0 of `value` has no `id`",
        ),
        (
            json!({"value": [{"id": 7}]}),
            "item 0 of `value` has an `id` that is a number",
        ),
        (
            json!({"value": [], "@odata.nextLink": 3}),
            "`@odata.nextLink` is a number, not a string",
        ),
        (
            json!(["not", "a", "page"]),
            "the body is an array, not a JSON object",
        ),
        (
            json!({"value": []}),
            "neither `@odata.nextLink` nor `@odata.deltaLink`",
        ),
    ];
    for (body, named) in cases {
        let (outcome, requests) = outcome_of(vec![Reply::json(200, body.clone())]).await;
        let (code, message) = refusal(outcome);
        assert_eq!(requests, 1, "{body}: structural answers are not retried");
        assert_eq!(code, "graph.invalid_response", "{body}");
        assert!(message.contains(named), "{named:?} in {message}");
    }
}

#[tokio::test]
async fn a_link_to_another_origin_is_neither_followed_nor_handed_out() {
    for (key, origin) in [
        ("@odata.nextLink", "https://graph.example.invalid"),
        ("@odata.deltaLink", "http://127.0.0.1:9"),
    ] {
        let page =
            json!({"value": [{"id": "u1"}], key: format!("{origin}{DELTA_PATH}?$skiptoken=secret-token")});
        let (outcome, requests) = outcome_of(vec![Reply::json(200, page)]).await;
        let (code, message) = refusal(outcome);
        assert_eq!(requests, 1);
        assert_eq!(code, "graph.invalid_link");
        assert!(message.contains(key), "{key} in {message}");
        assert!(message.contains(origin), "{origin} in {message}");
    }
}

#[tokio::test]
async fn a_members_page_with_a_foreign_next_link_is_refused() {
    let group_path = "/v1.0/groups/g1/transitiveMembers/microsoft.graph.user";
    let page = json!({"value": [{"id": "u1"}], "@odata.nextLink": "https://elsewhere.example/v1.0/groups"});
    let fake = graph_with(group_path, vec![Reply::json(200, page)]).await;
    let client = fake.client();
    let outcome = client
        .members_page(&creds(), &client.members_start_url("g1"))
        .await;
    let message = outcome.expect_err("refused").to_string();
    assert!(message.contains("https://elsewhere.example"), "{message}");
    assert!(message.contains(group_path), "{message}");
}

/// A server that answers every request with a head promising more body than it sends.
async fn cut_short_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&answered);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n";
                let _ = socket
                    .write_all(format!("{head}{{\"value\":[{{\"id\":\"u").as_bytes())
                    .await;
                // Dropping the socket closes the connection mid-body.
            });
        }
    });
    (base, answered)
}

#[tokio::test]
async fn a_body_cut_short_is_retried_then_fails_naming_it() {
    let login = Fake::start(|_| Router::new().route(TOKEN_PATH, token_ok())).await;
    let (graph, answered) = cut_short_server().await;
    let client = GraphClient::new(GraphConfig {
        graph_base_url: format!("{graph}/v1.0"),
        login_base_url: login.base.clone(),
        retry: fast_policy(),
    });
    let link = format!("{graph}{DELTA_PATH}?{SECRET_QUERY}");
    let error = client
        .users_delta_page(&creds(), &link)
        .await
        .expect_err("cut short");
    let message = error.to_string();
    assert_eq!(error.code(), "graph.invalid_response", "{message}");
    assert!(message.contains("cut short"), "{message}");
    assert!(message.contains(DELTA_PATH), "{message}");
    assert!(!message.contains("secret-token"), "{message}");
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::SeqCst),
        fast_policy().max_attempts
    );
}

#[tokio::test]
async fn groups_delta_pages_are_checked_the_same_way() {
    let fake = Fake::start(|_| {
        Router::new().route(TOKEN_PATH, token_ok()).route(
            "/v1.0/groups/delta",
            scripted(vec![Reply::json(200, json!({"value": [{"displayName": "x"}]}))]),
        )
    })
    .await;
    let client = fake.client();
    let outcome = client
        .groups_delta_page(&creds(), &client.groups_delta_start_url())
        .await;
    let message = outcome.expect_err("refused").to_string();
    assert!(message.contains("item 0 of `value` has no `id`"), "{message}");
}
