//! Subscription calls: what is sent, what Graph's answers become (404 to
//! recreate, a failed URL validation worded for the operator, consent),
//! and the same throttling and token refresh as the directory reads.

use axum::routing::MethodFilter;
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use usersync_graph::{GraphError, NewSubscription};

use crate::support::{creds, scripted_on, token_ok, Fake, Reply, TOKEN_PATH};

const COLLECTION: &str = "/v1.0/subscriptions";
const ONE: &str = "/v1.0/subscriptions/sub-1";
const REAUTHORIZE: &str = "/v1.0/subscriptions/sub-1/reauthorize";

fn expiry() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 31, 10, 0, 0)
        .single()
        .expect("a date")
}

fn subscription_body(id: &str) -> Value {
    json!({"id": id, "resource": "/users", "changeType": "updated,deleted",
           "expirationDateTime": "2026-12-31T10:00:00Z", "clientState": null})
}

fn new_subscription() -> NewSubscription {
    NewSubscription {
        resource: "/users".into(),
        change_type: "updated,deleted".into(),
        notification_url: "https://sync.example.com/graph/notifications".into(),
        lifecycle_notification_url: "https://sync.example.com/graph/lifecycle".into(),
        client_state: "state-never-logged".into(),
        expires_at: expiry(),
    }
}

/// A fake Graph answering `path` for `method` with `replies` in order.
async fn fake(method: MethodFilter, path: &str, replies: Vec<Reply>) -> Fake {
    let path = path.to_owned();
    Fake::start(|_| {
        Router::new()
            .route(TOKEN_PATH, token_ok())
            .route(&path, scripted_on(method, replies))
    })
    .await
}

#[tokio::test]
async fn create_posts_the_subscription_and_reads_graphs_answer() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![Reply::json(201, subscription_body("sub-1"))],
    )
    .await;

    let created = fake
        .client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect("created");

    assert_eq!((created.id.as_str(), created.expires_at), ("sub-1", expiry()));
    let sent = fake
        .requests()
        .into_iter()
        .find(|seen| seen.path == COLLECTION)
        .expect("the create request");
    assert_eq!(sent.headers["authorization"], "Bearer token-1");
    let body: Value = serde_json::from_str(&sent.body).expect("a JSON body");
    assert_eq!(
        body,
        json!({"changeType": "updated,deleted", "resource": "/users",
               "notificationUrl": "https://sync.example.com/graph/notifications",
               "lifecycleNotificationUrl": "https://sync.example.com/graph/lifecycle",
               "clientState": "state-never-logged",
               "expirationDateTime": "2026-12-31T10:00:00.000Z"})
    );
}

#[tokio::test]
async fn a_failed_validation_names_the_url_graphs_message_and_the_setting() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![Reply::graph_error(
            400,
            "ValidationError",
            "Subscription validation request timed out.",
        )],
    )
    .await;

    let error = fake
        .client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect_err("refused");

    assert_eq!(error.code(), "graph.notification_url_rejected");
    let message = error.to_string();
    for part in [
        "Graph could not validate the notification URL https://sync.example.com/graph/notifications",
        "Subscription validation request timed out.",
        "check that USERSYNC_PUBLIC_URL reaches usersync-api from the internet",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert!(!message.contains("state-never-logged"), "{message}");
    assert_eq!(fake.requests_to(COLLECTION), 1, "not retried");
}

#[tokio::test]
async fn missing_consent_keeps_its_classification() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![Reply::graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )],
    )
    .await;

    let error = fake
        .client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect_err("refused");

    assert!(matches!(error, GraphError::ConsentMissing { .. }), "{error:?}");
}

#[tokio::test]
async fn throttling_and_outages_are_retried() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![
            Reply::graph_error(429, "TooManyRequests", "Slow down.").header("Retry-After", "0.05"),
            Reply::empty(503),
            Reply::json(201, subscription_body("sub-2")),
        ],
    )
    .await;

    let created = fake
        .client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect("created after the retries");

    assert_eq!(created.id, "sub-2");
    assert_eq!(fake.requests_to(COLLECTION), 3);
}

#[tokio::test]
async fn a_stale_token_is_replaced_once() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![
            Reply::graph_error(401, "InvalidAuthenticationToken", "Access token has expired."),
            Reply::json(201, subscription_body("sub-1")),
        ],
    )
    .await;

    fake.client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect("created with a fresh token");

    assert_eq!(fake.token_requests(), 2);
    let last = fake
        .requests()
        .into_iter()
        .rev()
        .find(|seen| seen.path == COLLECTION)
        .expect("a request");
    assert_eq!(last.headers["authorization"], "Bearer token-2");
}

#[tokio::test]
async fn renew_patches_the_expiry() {
    let fake = fake(
        MethodFilter::PATCH,
        ONE,
        vec![Reply::json(200, subscription_body("sub-1"))],
    )
    .await;

    let renewed = fake
        .client()
        .renew_subscription(&creds(), "sub-1", expiry())
        .await
        .expect("renewed");

    assert_eq!(renewed.expires_at, expiry());
    let sent = fake
        .requests()
        .into_iter()
        .find(|seen| seen.path == ONE)
        .expect("the PATCH");
    assert_eq!(sent.method, axum::http::Method::PATCH);
    assert_eq!(
        serde_json::from_str::<Value>(&sent.body).expect("JSON"),
        json!({"expirationDateTime": "2026-12-31T10:00:00.000Z"})
    );
}

#[tokio::test]
async fn a_subscription_graph_lost_is_not_found_for_every_call() {
    let lost = || {
        vec![Reply::graph_error(
            404,
            "ResourceNotFound",
            "The object was not found.",
        )]
    };
    let renew = fake(MethodFilter::PATCH, ONE, lost()).await;
    let delete = fake(MethodFilter::DELETE, ONE, lost()).await;
    let reauthorize = fake(MethodFilter::POST, REAUTHORIZE, lost()).await;

    let outcomes = [
        renew
            .client()
            .renew_subscription(&creds(), "sub-1", expiry())
            .await
            .map(|_| ()),
        delete.client().delete_subscription(&creds(), "sub-1").await,
        reauthorize
            .client()
            .reauthorize_subscription(&creds(), "sub-1")
            .await,
    ];

    for outcome in outcomes {
        let error = outcome.expect_err("not found");
        assert!(
            matches!(&error, GraphError::SubscriptionNotFound { subscription_id, .. } if subscription_id == "sub-1"),
            "{error:?}"
        );
        assert_eq!(error.code(), "graph.subscription_not_found");
    }
}

#[tokio::test]
async fn delete_and_reauthorize_accept_an_empty_answer() {
    let delete = fake(MethodFilter::DELETE, ONE, vec![Reply::empty(204)]).await;
    let reauthorize = fake(MethodFilter::POST, REAUTHORIZE, vec![Reply::empty(204)]).await;

    delete
        .client()
        .delete_subscription(&creds(), "sub-1")
        .await
        .expect("deleted");
    reauthorize
        .client()
        .reauthorize_subscription(&creds(), "sub-1")
        .await
        .expect("reauthorized");

    assert_eq!(delete.requests_to(ONE), 1);
    assert_eq!(reauthorize.requests_to(REAUTHORIZE), 1);
}

#[tokio::test]
async fn a_create_answer_without_an_expiry_is_an_invalid_response() {
    let fake = fake(
        MethodFilter::POST,
        COLLECTION,
        vec![Reply::json(201, json!({"id": "sub-1"}))],
    )
    .await;

    let error = fake
        .client()
        .create_subscription(&creds(), &new_subscription())
        .await
        .expect_err("refused");

    assert_eq!(error.code(), "graph.invalid_response");
    assert!(error.to_string().contains("expirationDateTime"), "{error}");
}
