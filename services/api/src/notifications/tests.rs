//! The coalescer against a real PostgreSQL (a database per test), with the
//! resync requests recorded instead of published; the routes through the
//! router as served.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use axum::{body::Body, http::Request, Router};
use tower::ServiceExt;
use usersync_store::testing::{in_fresh_database, store_with_minimal_tenant, wait_for, TEST_KEY};

use super::*;

fn key() -> SecretKey {
    SecretKey::from_base64(TEST_KEY).expect("the test key")
}

/// The requests the coalescer published; the first `failures` publishes fail.
#[derive(Clone, Default)]
struct Recorder {
    sent: Arc<Mutex<Vec<(ResyncRequest, String)>>>,
    failures: Arc<AtomicUsize>,
}

impl Recorder {
    fn sent(&self) -> Vec<(ResyncRequest, String)> {
        self.sent.lock().unwrap().clone()
    }
}

impl ResyncPublisher for Recorder {
    fn publish_resync(
        &self,
        request: &ResyncRequest,
        message_id: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let failed = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let result = if failed {
            Err(anyhow::anyhow!("the broker did not confirm"))
        } else {
            self.sent
                .lock()
                .unwrap()
                .push((request.clone(), message_id.to_owned()));
            Ok(())
        };
        std::future::ready(result)
    }
}

/// Tenants `acme` and `beta`, each with a `/users` subscription `sub-{tenant}`
/// whose clientState is `state-{tenant}`; `acme` also has `/groups` as `grp-acme`.
async fn store_with_subscriptions(url: &str) -> Store {
    let store = store_with_minimal_tenant(url, "acme", 4).await;
    store_with_minimal_tenant(url, "beta", 1).await;
    let expires = usersync_runtime::clock::now() + chrono::Duration::days(20);
    for (tenant, resource, id) in [
        ("acme", "/users", "sub-acme"),
        ("beta", "/users", "sub-beta"),
        ("acme", "/groups", "grp-acme"),
    ] {
        store
            .graph_subscription_created(tenant, resource, id, &format!("state-{tenant}"), expires, &key())
            .await
            .expect("recording a subscription");
    }
    store
}

fn change(subscription_id: &str, client_state: &str) -> Item {
    Item {
        subscription_id: subscription_id.to_owned(),
        client_state: Some(client_state.to_owned()),
        event: Event::Changed,
    }
}

fn lifecycle_item(subscription_id: &str, client_state: &str, event: &str) -> Item {
    Item {
        subscription_id: subscription_id.to_owned(),
        client_state: Some(client_state.to_owned()),
        event: Event::Lifecycle(event.to_owned()),
    }
}

fn coalescer(store: Store, recorder: &Recorder) -> Coalescer<Recorder> {
    Coalescer::new(store, key(), recorder.clone(), Duration::from_millis(500))
}

#[tokio::test]
async fn a_storm_for_one_tenant_and_one_notification_for_another_are_one_request_each() {
    in_fresh_database(|url| async move {
        let store = store_with_subscriptions(&url).await;
        let recorder = Recorder::default();
        let mut coalescer = coalescer(store.clone(), &recorder);
        coalescer
            .take((0..1000).map(|_| change("sub-acme", "state-acme")).collect())
            .await;
        coalescer.take(vec![change("sub-beta", "state-beta")]).await;
        assert!(coalescer.closes_at.is_some(), "the notifications opened a window");
        assert!(
            recorder.sent().is_empty(),
            "nothing is published before the window closes"
        );
        coalescer.flush().await;

        let sent = recorder.sent();
        assert_eq!(sent.len(), 2, "one request per tenant: {sent:?}");
        for ((request, id), tenant) in sent.iter().zip(["acme", "beta"]) {
            assert_eq!(
                request,
                &ResyncRequest {
                    tenant_id: tenant.to_owned(),
                    full: false,
                    trigger: "notification".to_owned()
                }
            );
            let ms = id
                .strip_prefix(&format!("notification:{tenant}:"))
                .unwrap_or_else(|| panic!("{id} is not notification:{tenant}:MS"));
            assert_eq!(ms, coalescer.opened_ms.to_string());
            assert!(store.last_notification_at(tenant).await.unwrap().is_some());
        }
        // Nothing pending: no window, and another flush publishes nothing.
        assert!(coalescer.closes_at.is_none());
        coalescer.flush().await;
        assert_eq!(recorder.sent().len(), 2);
        // Within the cache's time the subscription is not read again: with
        // its row gone, a notification is still taken from the cache.
        store.remove_graph_subscription("beta", "/users").await.unwrap();
        coalescer.take(vec![change("sub-beta", "state-beta")]).await;
        coalescer.flush().await;
        assert_eq!(recorder.sent().len(), 3);
        assert_eq!(recorder.sent()[2].0.tenant_id, "beta");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_client_state_or_an_unknown_subscription_requests_nothing() {
    in_fresh_database(|url| async move {
        let store = store_with_subscriptions(&url).await;
        let recorder = Recorder::default();
        let mut coalescer = coalescer(store.clone(), &recorder);
        let mut missing_state = change("sub-acme", "");
        missing_state.client_state = None;
        coalescer
            .take(vec![
                change("sub-acme", "state-beta"),
                change("sub-acme", "state-acm"),
                missing_state,
                change("sub-unknown", "state-acme"),
                lifecycle_item("sub-acme", "forged", "missed"),
                lifecycle_item("sub-acme", "forged", "reauthorizationRequired"),
            ])
            .await;
        assert!(coalescer.closes_at.is_none(), "nothing accepted, no window");
        coalescer.flush().await;
        assert!(recorder.sent().is_empty(), "{:?}", recorder.sent());
        assert_eq!(store.last_notification_at("acme").await.unwrap(), None);
        let subscriptions = store.graph_subscriptions(Some("acme"), None).await.unwrap();
        assert!(
            subscriptions.iter().all(|s| s.action.is_none()),
            "{subscriptions:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn lifecycle_events_ask_the_scheduler_or_request_a_full_round() {
    in_fresh_database(|url| async move {
        let store = store_with_subscriptions(&url).await;
        let recorder = Recorder::default();
        let mut coalescer = coalescer(store.clone(), &recorder);
        coalescer
            .take(vec![
                lifecycle_item("sub-acme", "state-acme", "reauthorizationRequired"),
                lifecycle_item("grp-acme", "state-acme", "subscriptionRemoved"),
                lifecycle_item("sub-beta", "state-beta", "missed"),
                lifecycle_item("sub-beta", "state-beta", "missed"),
                lifecycle_item("sub-beta", "state-beta", "somethingNew"),
            ])
            .await;
        let actions: Vec<(String, Option<SubscriptionAction>)> = store
            .graph_subscriptions(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.subscription_id.unwrap(), s.action))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("grp-acme".to_owned(), Some(SubscriptionAction::Recreate)),
                ("sub-acme".to_owned(), Some(SubscriptionAction::Reauthorize)),
                ("sub-beta".to_owned(), None),
            ]
        );
        coalescer.flush().await;
        let sent = recorder.sent();
        assert_eq!(sent.len(), 1, "one full round for the missed events: {sent:?}");
        let (request, id) = &sent[0];
        assert_eq!(
            request,
            &ResyncRequest {
                tenant_id: "beta".to_owned(),
                full: true,
                trigger: "notification".to_owned()
            }
        );
        assert!(id.starts_with("missed:beta:sub-beta:"), "{id}");
        // Lifecycle events are not change notifications.
        assert_eq!(store.last_notification_at("beta").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_request_that_could_not_be_published_goes_again_next_window_with_its_id() {
    in_fresh_database(|url| async move {
        let store = store_with_subscriptions(&url).await;
        let recorder = Recorder::default();
        recorder.failures.store(1, Ordering::SeqCst);
        let mut coalescer = coalescer(store, &recorder);
        coalescer
            .take(vec![
                change("sub-acme", "state-acme"),
                change("sub-beta", "state-beta"),
            ])
            .await;
        let first_window = coalescer.opened_ms;
        coalescer.flush().await;
        let sent = recorder.sent();
        assert_eq!(sent.len(), 1, "beta went out although acme failed: {sent:?}");
        assert_eq!(sent[0].0.tenant_id, "beta");
        assert!(
            coalescer.closes_at.is_some(),
            "the failed request keeps a window open"
        );

        coalescer.flush().await;
        let sent = recorder.sent();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1].0.tenant_id, "acme");
        assert_eq!(sent[1].1, format!("notification:acme:{first_window}"));
        assert!(coalescer.closes_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn the_running_coalescer_publishes_each_window_when_it_closes() {
    in_fresh_database(|url| async move {
        let store = store_with_subscriptions(&url).await;
        let recorder = Recorder::default();
        let (intake, bodies) = Intake::channel(QUEUE_CAPACITY);
        let worker = tokio::spawn(
            Coalescer::new(store, key(), recorder.clone(), Duration::from_millis(100)).run(bodies),
        );
        let sender = intake.sender.clone().unwrap();
        for _ in 0..10 {
            sender
                .send(vec![change("sub-acme", "state-acme"); 100])
                .await
                .unwrap();
        }
        sender.send(vec![change("sub-beta", "state-beta")]).await.unwrap();
        let sent = wait_for("the window's requests", Duration::from_secs(10), || {
            let sent = recorder.sent();
            std::future::ready((sent.len() >= 2).then_some(sent))
        })
        .await;
        let tenants: BTreeSet<&str> = sent.iter().map(|(r, _)| r.tenant_id.as_str()).collect();
        assert_eq!(tenants, BTreeSet::from(["acme", "beta"]));

        // A notification after the window closed is the next window's.
        sender.send(vec![change("sub-acme", "state-acme")]).await.unwrap();
        drop((sender, intake));
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the coalescer ends when the intake is gone")
            .unwrap();
        let sent = recorder.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[2].0.tenant_id, "acme");
        assert_ne!(sent[2].1, sent[0].1, "a later window's request has its own id");
    })
    .await;
}

// ---------------------------------------------------------------------------
// The routes
// ---------------------------------------------------------------------------

fn routes(intake: Intake) -> Router {
    crate::api().1.with_state(intake)
}

async fn post(router: Router, uri: &str, body: &str) -> (StatusCode, HeaderMap, String) {
    let response = router
        .oneshot(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

use axum::http::HeaderMap;

#[tokio::test]
async fn the_validation_token_is_echoed_decoded_as_plain_text_only() {
    let (intake, mut bodies) = Intake::channel(4);
    for path in ["/graph/notifications", "/graph/lifecycle"] {
        let uri = format!("{path}?validationToken=Validation%3A%20Testing%20client%2Bapp%20reachability");
        let (status, headers, body) = post(routes(intake.clone()), &uri, "not even JSON").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(body, "Validation: Testing client+app reachability");
    }
    // A bare `+` is a space in a query, as Graph encodes it.
    let (_, _, body) = post(
        routes(intake.clone()),
        "/graph/notifications?validationToken=a+b",
        "",
    )
    .await;
    assert_eq!(body, "a b");
    assert!(bodies.try_recv().is_err(), "a validation hands nothing on");
}

#[tokio::test]
async fn a_validation_token_over_the_limit_is_refused_without_repeating_it() {
    let (intake, _bodies) = Intake::channel(4);
    // `<script>`, 200 times: 1600 characters decoded.
    let token = "%3Cscript%3E".repeat(200);
    let (status, headers, body) = post(
        routes(intake),
        &format!("/graph/notifications?validationToken={token}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(!body.contains("script"), "{body}");
    assert!(body.contains("validationToken is 1600 characters"), "{body}");
}

#[tokio::test]
async fn a_notification_collection_is_queued_and_answered_202() {
    let (intake, mut bodies) = Intake::channel(4);
    // Graph's shape, with a field usersync does not know and optional ones left out.
    let body = r##"{"value":[
        {"id":"n1","subscriptionId":"sub-acme","clientState":"state-acme","changeType":"updated",
         "resource":"Users/1","tenantId":"t","subscriptionExpirationDateTime":"2026-12-30T00:00:00Z",
         "resourceData":{"@odata.type":"#Microsoft.Graph.User","id":"1"},"encryptedContent":null},
        {"subscriptionId":"sub-beta"}]}"##;
    let (status, _, text) = post(routes(intake.clone()), "/graph/notifications", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(
        bodies.try_recv().unwrap(),
        vec![
            change("sub-acme", "state-acme"),
            Item {
                subscription_id: "sub-beta".to_owned(),
                client_state: None,
                event: Event::Changed
            }
        ]
    );
    let lifecycle = r#"{"value":[{"subscriptionId":"sub-acme","clientState":"state-acme",
        "lifecycleEvent":"missed","tenantId":"t"}]}"#;
    let (status, _, text) = post(routes(intake), "/graph/lifecycle", lifecycle).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(
        bodies.try_recv().unwrap(),
        vec![lifecycle_item("sub-acme", "state-acme", "missed")]
    );
}

#[tokio::test]
async fn a_body_of_another_shape_is_refused_naming_what_is_wrong() {
    let (intake, mut bodies) = Intake::channel(4);
    for (path, body, named) in [
        ("/graph/notifications", r#"{"values":[]}"#, "`value`"),
        (
            "/graph/notifications",
            r#"{"value":[{"clientState":"x"}]}"#,
            "`subscriptionId`",
        ),
        (
            "/graph/notifications",
            r#"{"value":[{"subscriptionId":5}]}"#,
            "value[0].subscriptionId",
        ),
        (
            "/graph/notifications",
            r#"{"value":[{"subscriptionId":"s","resourceData":3}]}"#,
            "value[0].resourceData",
        ),
        (
            "/graph/lifecycle",
            r#"{"value":[{"subscriptionId":"s"}]}"#,
            "`lifecycleEvent`",
        ),
        ("/graph/notifications", "", "EOF"),
    ] {
        let (status, _, text) = post(routes(intake.clone()), path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"], "invalid_notification");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message} does not name {named}");
    }
    assert!(bodies.try_recv().is_err(), "nothing refused is handed on");
}

#[tokio::test]
async fn a_full_queue_asks_graph_to_redeliver() {
    let (intake, _bodies) = Intake::channel(1);
    let body = r#"{"value":[{"subscriptionId":"s","clientState":"c"}]}"#;
    let (status, _, _) = post(routes(intake.clone()), "/graph/notifications", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, headers, text) = post(routes(intake), "/graph/notifications", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(headers[header::RETRY_AFTER], "5");
    assert!(text.contains("queue is full"), "{text}");
}

#[tokio::test]
async fn without_a_secret_key_notifications_are_refused_but_validation_works() {
    let (status, _, _) = post(routes(Intake::without_key()), "/graph/notifications", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the shape is checked first");
    let body = r#"{"value":[{"subscriptionId":"s","clientState":"c"}]}"#;
    let (status, _, text) = post(routes(Intake::without_key()), "/graph/notifications", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("USERSYNC_SECRET_KEY"), "{text}");
    let (status, _, text) = post(
        routes(Intake::without_key()),
        "/graph/lifecycle?validationToken=ok",
        "",
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
}

#[test]
fn the_document_has_both_routes_without_a_token() {
    let document = serde_json::to_value(crate::openapi_document()).unwrap();
    for path in ["/graph/notifications", "/graph/lifecycle"] {
        let operation = &document["paths"][path]["post"];
        assert_eq!(
            operation["security"],
            serde_json::json!([{}]),
            "{path} needs no token"
        );
        assert_eq!(operation["parameters"][0]["name"], "validationToken");
        let responses = operation["responses"].as_object().unwrap();
        for status in ["200", "202", "400", "503"] {
            assert!(responses.contains_key(status), "{path} documents {status}");
        }
        assert!(operation["responses"]["200"]["content"]["text/plain"].is_object());
    }
    // The /v1 routes keep the bearer token.
    assert_eq!(document["security"], serde_json::json!([{"bearer": []}]));
}
