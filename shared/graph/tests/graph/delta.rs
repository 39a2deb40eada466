use axum::Router;
use serde_json::json;
use usersync_graph::{GraphError, PageLink};

use crate::support::{creds, graph_with, scripted, token_ok, Fake, Reply, TOKEN_PATH};

const DELTA_PATH: &str = "/v1.0/users/delta";

#[tokio::test]
async fn a_round_follows_next_links_to_the_delta_link() {
    let fake = Fake::start(|base| {
        let page_one = json!({
            "value": [{"id": "u1", "displayName": "Ada", "accountEnabled": true}],
            "@odata.nextLink": format!("{base}/v1.0/users/delta?$skiptoken=page-2"),
        });
        let empty_page = json!({
            "value": [],
            "@odata.nextLink": format!("{base}/v1.0/users/delta?$skiptoken=page-3"),
        });
        let last_page = json!({
            "value": [{"id": "u2", "@removed": {"reason": "deleted"}}],
            "@odata.deltaLink": format!("{base}/v1.0/users/delta?$deltatoken=next-round"),
        });
        Router::new().route(TOKEN_PATH, token_ok()).route(
            DELTA_PATH,
            scripted(vec![
                Reply::json(200, page_one),
                Reply::json(200, empty_page),
                Reply::json(200, last_page),
            ]),
        )
    })
    .await;
    let client = fake.client();
    let select = ["displayName".to_string(), "mail".to_string()];

    let mut link = PageLink::Next(client.users_delta_start_url(&select));
    let mut users = Vec::new();
    while let PageLink::Next(url) = link {
        let page = client.users_delta_page(&creds(), &url).await.expect("page");
        users.extend(page.users);
        link = page.next;
    }

    assert_eq!(
        link,
        PageLink::Delta(format!("{}/v1.0/users/delta?$deltatoken=next-round", fake.base))
    );
    assert_eq!(users.len(), 2);
    assert_eq!(users[1]["@removed"]["reason"], "deleted");
    let queries: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|seen| seen.path == DELTA_PATH)
        .map(|seen| seen.query)
        .collect();
    assert_eq!(
        queries,
        [
            "$select=id,accountEnabled,displayName,mail",
            "$skiptoken=page-2",
            "$skiptoken=page-3"
        ]
    );
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn gone_with_a_location_restarts_from_there() {
    let fake = graph_with(
        DELTA_PATH,
        vec![
            Reply::graph_error(410, "syncStateNotFound", "The sync state is no longer valid.")
                .header("Location", "/v1.0/users/delta?$select=id"),
        ],
    )
    .await;
    let client = fake.client();
    let stale = format!("{}/v1.0/users/delta?$deltatoken=week-old", fake.base);

    let outcome = client.users_delta_page(&creds(), &stale).await;

    let Err(GraphError::ResyncRequired { code, restart_url }) = outcome else {
        panic!("expected ResyncRequired, got {outcome:?}");
    };
    assert_eq!(code, "syncStateNotFound");
    assert_eq!(
        restart_url,
        Some(format!("{}/v1.0/users/delta?$select=id", fake.base))
    );
    assert_eq!(fake.requests_to(DELTA_PATH), 1, "not retried");
}

#[tokio::test]
async fn bad_request_with_a_sync_state_code_asks_for_a_full_round() {
    for code in ["syncStateNotFound", "syncStateInvalid", "resyncRequired"] {
        let fake = graph_with(
            DELTA_PATH,
            vec![Reply::graph_error(400, code, "Resync required.")],
        )
        .await;
        let client = fake.client();

        let outcome = client
            .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
            .await;

        assert!(
            matches!(&outcome, Err(GraphError::ResyncRequired { code: got, restart_url: None }) if got == code),
            "{code}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn other_errors_keep_graph_code_and_message() {
    let fake = graph_with(
        DELTA_PATH,
        vec![Reply::graph_error(
            400,
            "Request_UnsupportedQuery",
            "Unsupported query.",
        )],
    )
    .await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    let Err(GraphError::Http {
        status,
        code,
        message,
    }) = outcome
    else {
        panic!("expected Http, got {outcome:?}");
    };
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (400, "Request_UnsupportedQuery", "Unsupported query.")
    );
}

#[tokio::test]
async fn links_to_another_host_never_get_the_token() {
    let fake = graph_with(DELTA_PATH, vec![Reply::json(200, json!({"value": []}))]).await;

    let outcome = fake
        .client()
        .users_delta_page(&creds(), "https://elsewhere.example/v1.0/users/delta")
        .await;

    assert!(
        matches!(outcome, Err(GraphError::InvalidLink { .. })),
        "{outcome:?}"
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_page_without_any_link_is_rejected() {
    let fake = graph_with(DELTA_PATH, vec![Reply::json(200, json!({"value": []}))]).await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    assert!(
        matches!(outcome, Err(GraphError::InvalidResponse { .. })),
        "{outcome:?}"
    );
}
